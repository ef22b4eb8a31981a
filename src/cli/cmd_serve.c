/* cmd_serve.c — `iteralign serve`: the OpenAI-compatible HTTP server on a model (src/server/). */
#include "cli.h"
#include "server/server.h"

#include <signal.h>
#include <stdlib.h>
#include <time.h>
#include <pthread.h>

#define SERVE_MAX_LORA 8

static void serve_help(FILE *f) {
    fputs("usage: iteralign serve -m MODEL [options]\n\n"
          "Serves the model over an OpenAI-compatible HTTP API: GET /health, GET /v1/models,\n"
          "POST /v1/chat/completions (streaming with \"stream\": true) and POST /v1/completions (logprobs and\n"
          "echo give prompt log-likelihoods). Concurrent requests are decoded together, one forward pass per\n"
          "step for every active sequence. SIGINT/SIGTERM stop it cleanly (exit 0).\n\n"
          "options:\n"
          "  -m, --model FILE          GGUF model (llama or qwen2 architecture)\n"
          "      --lora FILE[:SCALE]   apply a LoRA adapter (llama.cpp GGUF; repeatable; scale default 1)\n"
          "      --host ADDR           address to bind (default 127.0.0.1: loopback only)\n"
          "      --port N              port (default 8080; 0 = any free port, printed at start)\n"
          "      --api-key-env VAR     require 'Authorization: Bearer <key>' with the key read from the\n"
          "                            environment variable VAR (the key is never logged)\n"
          "      --parallel N          sequences decoded together (default 8)\n"
          "      --ctx N               context per sequence (default: the model's, at most 4096)\n"
          "      --chat-template NAME  chat template (default: detected from the model, else chatml): chatml,\n"
          "                            llama2, llama2-sys, llama3, mistral-v1, mistral-v3, mistral-v7, zephyr,\n"
          "                            gemma, phi3, vicuna, ...\n"
          "      --alias NAME          model id reported and accepted (default: the file name without .gguf)\n"
          "      --max-body BYTES      request body limit (default 1048576)\n"
          "      --max-tokens N        largest max_tokens accepted (default: the context size)\n"
          "      --max-queue N         sequences queued or running before 503 (default 16 x --parallel)\n"
          "      --shutdown-grace S    seconds in-flight requests get to finish at shutdown (default 5)\n"
          "  -t, --threads N           threads for the forward pass (default: all cores)\n"
          "  -q, --quiet               no per-request log lines\n"
          "  -h, --help                this help\n\n"
          "Notes: response_format json_object is accepted but not enforced (no grammar); json_schema, tools\n"
          "and logit_bias are refused with 400. Chat template markers are parsed as special tokens, special-token\n"
          "text inside message contents stays text. Log-probabilities are the raw model's (before temperature\n"
          "and penalties).\n",
          f);
}

static void log_line(void *ud, const char *line) {
    (void)ud;
    time_t now = time(NULL);
    struct tm tmv;
    char ts[32];
    localtime_r(&now, &tmv);
    strftime(ts, sizeof ts, "%H:%M:%S", &tmv);
    fprintf(stderr, "[%s] %s\n", ts, line);
}

int cmd_serve(int argc, char **argv) {
    enum { O_LORA = 256, O_HOST, O_PORT, O_KEYENV, O_PAR, O_CTX, O_TMPL, O_ALIAS, O_BODY, O_MAXTOK, O_QUEUE, O_GRACE };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},          {"lora", required_argument, 0, O_LORA},
        {"host", required_argument, 0, O_HOST},        {"port", required_argument, 0, O_PORT},
        {"api-key-env", required_argument, 0, O_KEYENV}, {"parallel", required_argument, 0, O_PAR},
        {"ctx", required_argument, 0, O_CTX},          {"chat-template", required_argument, 0, O_TMPL},
        {"alias", required_argument, 0, O_ALIAS},      {"max-body", required_argument, 0, O_BODY},
        {"max-tokens", required_argument, 0, O_MAXTOK}, {"max-queue", required_argument, 0, O_QUEUE},
        {"shutdown-grace", required_argument, 0, O_GRACE}, {"threads", required_argument, 0, 't'},
        {"quiet", no_argument, 0, 'q'},                {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    ia_server_opts so = ia_server_opts_default();
    so.port = 8080;
    const char *model = NULL, *key_env = NULL, *tmpl_name = NULL;
    const char *loras[SERVE_MAX_LORA];
    int n_lora = 0, threads = 0, body = 0;
    bool quiet = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:t:qh", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case O_LORA:
            if (n_lora >= SERVE_MAX_LORA) return cli_fail("at most %d --lora adapters", SERVE_MAX_LORA), 2;
            loras[n_lora++] = optarg;
            break;
        case O_HOST: so.host = optarg; break;
        case O_PORT: if (!cli_parse_int("--port", optarg, 0, 65535, &so.port)) return 2; break;
        case O_KEYENV: key_env = optarg; break;
        case O_PAR: if (!cli_parse_int("--parallel", optarg, 1, 1024, &so.n_parallel)) return 2; break;
        case O_CTX: if (!cli_parse_int("--ctx", optarg, 8, 1 << 20, &so.n_ctx)) return 2; break;
        case O_TMPL: tmpl_name = optarg; break;
        case O_ALIAS: so.model_id = optarg; break;
        case O_BODY: if (!cli_parse_int("--max-body", optarg, 1024, 1 << 30, &body)) return 2; break;
        case O_MAXTOK: if (!cli_parse_int("--max-tokens", optarg, 1, 1 << 24, &so.max_tokens_cap)) return 2; break;
        case O_QUEUE: if (!cli_parse_int("--max-queue", optarg, 1, 1 << 20, &so.max_queue)) return 2; break;
        case O_GRACE: {
            float g;
            if (!cli_parse_float("--shutdown-grace", optarg, &g)) return 2;
            so.shutdown_grace_s = g <= 0 ? -1.0 : (double)g; /* -1: none (0 would mean the default) */
            break;
        }
        case 't': if (!cli_parse_int("--threads", optarg, 1, 1024, &threads)) return 2; break;
        case 'q': quiet = true; break;
        case 'h': serve_help(stdout); return 0;
        default: return cli_usage_error("serve");
        }
    }
    if (!model) return cli_fail("serve: -m MODEL is required"), cli_usage_error("serve");
    if (optind < argc) return cli_fail("serve: unexpected argument '%s'", argv[optind]), cli_usage_error("serve");
    if (tmpl_name) {
        so.chat_template = ia_chat_template_from_name(tmpl_name);
        if (!so.chat_template) return cli_fail("--chat-template: unknown template '%s'", tmpl_name), 2;
    }
    if (key_env) {
        const char *k = getenv(key_env);
        /* Asked for auth but no key: refuse to start rather than serve unprotected. The message names
         * the variable, never a value. */
        if (!k || !*k) return cli_fail("--api-key-env: the environment variable %s is not set or empty", key_env), 2;
        so.api_key = k;
    }
    if (body) so.max_body = (size_t)body;
    so.model_path = model;
    so.log = quiet ? NULL : log_line;
    ia_set_threads(threads);

    /* SIGINT/SIGTERM are blocked here, before any thread starts, so every thread inherits the mask
     * and the main thread alone takes them with sigwait. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    ia_error err = {0};
    ia_model *m = ia_model_load(model, &err);
    if (!m) return cli_fail_err(&err);
    for (int i = 0; i < n_lora; i++) {
        /* the FILE[:SCALE] syntax is shared with `train`/`merge` (cli_lora_apply, cmd_merge.c) */
        if (cli_lora_apply(m, loras[i], &err) != IA_OK) {
            ia_model_free(m);
            return cli_fail_err(&err);
        }
        fprintf(stderr, "iteralign: LoRA adapter %s applied\n", loras[i]);
    }
    ia_server *s = ia_server_start(m, &so, &err);
    if (!s) {
        ia_model_free(m);
        return cli_fail_err(&err);
    }
    const char *host = so.host ? so.host : "127.0.0.1";
    bool v6 = strchr(host, ':') != NULL;
    fprintf(stderr, "iteralign: serving %s as '%s' (%d slots)%s\n", model, ia_server_model_id(s),
            so.n_parallel > 0 ? so.n_parallel : 8, key_env ? ", API key required" : "");
    fprintf(stderr, "listening on http://%s%s%s:%d\n", v6 ? "[" : "", host, v6 ? "]" : "", ia_server_port(s));
    fflush(stderr);

    int sig = 0;
    while (sigwait(&sigs, &sig) != 0) {
    }
    fprintf(stderr, "iteralign: %s received, shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    ia_server_stop(s);
    ia_model_free(m);
    fprintf(stderr, "iteralign: server stopped\n");
    return 0;
}
