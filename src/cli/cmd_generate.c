/* cmd_generate.c — `iteralign generate`: completions for one prompt or a JSONL file, decoded in batches. */
#include "cli.h"
#include "model/model.h"

#include <stdlib.h>
#include <unistd.h>

static void generate_help(FILE *f) {
    fputs("usage: iteralign generate -m MODEL (-p TEXT | -f PROMPTS.jsonl) [options]\n\n"
          "Generates a completion for each prompt; all prompts of a file are decoded together in batches\n"
          "(one forward pass per step for every active sequence). BOS is added as the model's metadata says,\n"
          "so an empty prompt means BOS alone.\n\n"
          "input and output:\n"
          "  -m, --model FILE           GGUF model (llama or qwen2 architecture)\n"
          "      --lora FILE[:SCALE]    apply a LoRA adapter at run time (repeatable; scale default 1)\n"
          "  -p, --prompt TEXT          one prompt\n"
          "  -f, --file FILE            JSONL, one object per line with a \"prompt\" field\n"
          "      --json                 one JSON object per completion: index, prompt, text, tokens,\n"
          "                             n_prompt_tokens, finish_reason\n"
          "      --chat                 wrap each prompt as a user message in the model's chat template\n"
          "      --chat-template NAME   use this template (chatml, llama2, llama2-sys, llama3, mistral-v1,\n"
          "                             mistral-v3, mistral-v7, zephyr, gemma, phi3, vicuna); implies --chat\n"
          "      --system TEXT          system message for --chat\n"
          "      --special              parse special-token text in prompts (always on with --chat)\n"
          "sampling:\n"
          "  -n, --max-tokens N         new tokens at most (default 256)\n"
          "      --temp X               temperature (default 0 = greedy)\n"
          "      --top-k N              keep the N most likely tokens (0 = off)\n"
          "      --top-p X              nucleus sampling (1 = off)\n"
          "      --min-p X              drop tokens below X times the top probability (0 = off)\n"
          "      --repeat-penalty X     llama.cpp repetition penalty (1 = off)\n"
          "      --repeat-last-n N      window for --repeat-penalty (default 64, -1 = all)\n"
          "      --frequency-penalty X  logit -= X * count of the token in the generated text (vLLM)\n"
          "      --presence-penalty X   logit -= X if the token occurs in the generated text\n"
          "      --stop TEXT            stop before TEXT (repeatable, up to 8)\n"
          "      --ignore-eos           keep generating past end-of-generation tokens\n"
          "      --seed N               random seed (prompt i uses seed + i; default 0)\n"
          "performance:\n"
          "  -t, --threads N            threads (default: all cores)\n"
          "      --parallel N           sequences decoded together (default 32)\n"
          "      --ctx N                context per sequence (default: longest prompt + max tokens)\n"
          "  -h, --help                 this help\n",
          f);
}

static const char *finish_name(ia_finish f) {
    switch (f) {
    case IA_FINISH_STOP: return "stop";
    case IA_FINISH_EOS: return "eos";
    case IA_FINISH_CONTEXT: return "context";
    default: return "length";
    }
}

/* Reads prompts from a JSONL file; fails naming the line of the first malformed one. */
static char **read_prompts(const char *path, int *n_out, ia_error *err) {
    size_t len;
    char *data = ia_file_read(path, &len, err);
    if (!data) return NULL;
    char **prompts = NULL;
    int n = 0, cap = 0, line = 0;
    char *p = data, *end = data + len;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *le = nl ? nl : end;
        line++;
        char *q = p;
        while (q < le && (*q == ' ' || *q == '\t' || *q == '\r')) q++;
        if (q < le) {
            json_error_t je;
            json_t *obj = json_loadb(p, (size_t)(le - p), 0, &je);
            json_t *pr = obj ? json_object_get(obj, "prompt") : NULL;
            if (!obj || !json_is_object(obj) || !json_is_string(pr)) {
                if (!obj) ia_error_set(err, IA_ERR_FORMAT, "%s:%d: malformed JSON: %s", path, line, je.text);
                else ia_error_set(err, IA_ERR_FORMAT, "%s:%d: expected an object with a string \"prompt\" field", path, line);
                json_decref(obj);
                goto fail;
            }
            if (n == cap) {
                cap = cap ? cap * 2 : 64;
                char **np = ia_realloc(prompts, sizeof(char *) * (size_t)cap);
                if (!np) { json_decref(obj); ia_error_set(err, IA_ERR_NOMEM, "out of memory"); goto fail; }
                prompts = np;
            }
            prompts[n++] = ia_strndup(json_string_value(pr), json_string_length(pr));
            json_decref(obj);
        }
        p = nl ? nl + 1 : end;
    }
    ia_free(data);
    if (n == 0) { ia_error_set(err, IA_ERR_FORMAT, "%s: no prompts", path); ia_free(prompts); return NULL; }
    *n_out = n;
    return prompts;
fail:
    for (int i = 0; i < n; i++) ia_free(prompts[i]);
    ia_free(prompts);
    ia_free(data);
    return NULL;
}

static void progress_cb(void *ud, int done, int total) {
    double t0 = *(double *)ud;
    double el = ia_time_now() - t0;
    fprintf(stderr, "\rgenerate: %d/%d done, %.1f s elapsed", done, total, el);
    if (done == total) fputc('\n', stderr);
}

int cmd_generate(int argc, char **argv) {
    enum { O_TEMP = 256, O_TOPK, O_TOPP, O_MINP, O_RP, O_RLN, O_FP, O_PP, O_STOP, O_SEED, O_JSON, O_CHAT, O_TMPL,
           O_SYS, O_SPECIAL, O_PAR, O_CTX, O_IGNEOS, O_LORA };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},       {"prompt", required_argument, 0, 'p'},
        {"file", required_argument, 0, 'f'},        {"max-tokens", required_argument, 0, 'n'},
        {"threads", required_argument, 0, 't'},     {"temp", required_argument, 0, O_TEMP},
        {"top-k", required_argument, 0, O_TOPK},    {"top-p", required_argument, 0, O_TOPP},
        {"min-p", required_argument, 0, O_MINP},    {"repeat-penalty", required_argument, 0, O_RP},
        {"repeat-last-n", required_argument, 0, O_RLN}, {"frequency-penalty", required_argument, 0, O_FP},
        {"presence-penalty", required_argument, 0, O_PP}, {"stop", required_argument, 0, O_STOP},
        {"seed", required_argument, 0, O_SEED},     {"json", no_argument, 0, O_JSON},
        {"chat", no_argument, 0, O_CHAT},           {"chat-template", required_argument, 0, O_TMPL},
        {"system", required_argument, 0, O_SYS},    {"special", no_argument, 0, O_SPECIAL},
        {"parallel", required_argument, 0, O_PAR},  {"ctx", required_argument, 0, O_CTX},
        {"ignore-eos", no_argument, 0, O_IGNEOS},   {"lora", required_argument, 0, O_LORA},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *model = NULL, *prompt = NULL, *file = NULL, *tmpl_name = NULL, *system = NULL;
    bool json = false, chat = false;
    const char *loras[16];
    int n_loras = 0;
    int threads = 0;
    ia_generate_opts go = ia_generate_opts_default();
    ia_sampling *sp = &go.sampling;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:p:f:n:t:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'p': prompt = optarg; break;
        case 'f': file = optarg; break;
        case 'n': if (!cli_parse_int("--max-tokens", optarg, 0, 1 << 24, &sp->max_tokens)) return 2; break;
        case 't': if (!cli_parse_int("--threads", optarg, 1, 1024, &threads)) return 2; break;
        case O_TEMP: if (!cli_parse_float("--temp", optarg, &sp->temperature)) return 2; break;
        case O_TOPK: if (!cli_parse_int("--top-k", optarg, 0, 1 << 24, &sp->top_k)) return 2; break;
        case O_TOPP: if (!cli_parse_float("--top-p", optarg, &sp->top_p)) return 2; break;
        case O_MINP: if (!cli_parse_float("--min-p", optarg, &sp->min_p)) return 2; break;
        case O_RP: if (!cli_parse_float("--repeat-penalty", optarg, &sp->repeat_penalty)) return 2; break;
        case O_RLN: if (!cli_parse_int("--repeat-last-n", optarg, -1, 1 << 24, &sp->repeat_last_n)) return 2; break;
        case O_FP: if (!cli_parse_float("--frequency-penalty", optarg, &sp->frequency_penalty)) return 2; break;
        case O_PP: if (!cli_parse_float("--presence-penalty", optarg, &sp->presence_penalty)) return 2; break;
        case O_STOP:
            if (sp->n_stop >= IA_MAX_STOP) return cli_fail("at most %d --stop strings", IA_MAX_STOP), 2;
            sp->stop[sp->n_stop++] = optarg;
            break;
        case O_SEED: if (!cli_parse_u64("--seed", optarg, &sp->seed)) return 2; break;
        case O_JSON: json = true; break;
        case O_CHAT: chat = true; break;
        case O_TMPL: tmpl_name = optarg; chat = true; break;
        case O_SYS: system = optarg; break;
        case O_SPECIAL: go.parse_special = true; break;
        case O_PAR: if (!cli_parse_int("--parallel", optarg, 1, 4096, &go.n_parallel)) return 2; break;
        case O_CTX: if (!cli_parse_int("--ctx", optarg, 2, 1 << 24, &go.n_ctx)) return 2; break;
        case O_IGNEOS: sp->ignore_eos = true; break;
        case O_LORA:
            if (n_loras >= 16) return cli_fail("at most 16 --lora adapters"), 2;
            loras[n_loras++] = optarg;
            break;
        case 'h': generate_help(stdout); return 0;
        default: return cli_usage_error("generate");
        }
    }
    if (!model) return cli_fail("generate: -m MODEL is required"), cli_usage_error("generate");
    if (!prompt == !file) return cli_fail("generate: give exactly one of -p TEXT or -f FILE"), cli_usage_error("generate");
    if (optind < argc) return cli_fail("generate: unexpected argument '%s'", argv[optind]), cli_usage_error("generate");
    ia_set_threads(threads);

    ia_error err = {0};
    int n = 0, rc = 1;
    char **prompts = NULL;
    char **formatted = NULL;
    ia_completion *out = NULL;
    ia_model *m = NULL;
    if (file) {
        prompts = read_prompts(file, &n, &err);
        if (!prompts) return cli_fail_err(&err);
    } else {
        prompts = ia_malloc(sizeof(char *));
        prompts[0] = ia_strdup(prompt);
        n = 1;
    }
    m = ia_model_load(model, &err);
    if (!m) { cli_fail_err(&err); goto out; }
    for (int i = 0; i < n_loras; i++)
        if (cli_lora_apply(m, loras[i], &err) != IA_OK) { cli_fail_err(&err); goto out; }
    const char *const *use = (const char *const *)prompts;
    if (chat) {
        ia_chat_template_id tid;
        if (tmpl_name) {
            tid = ia_chat_template_from_name(tmpl_name);
            if (!tid) { cli_fail("--chat-template: unknown template '%s'", tmpl_name); goto out; }
        } else {
            const char *src = ia_model_chat_template(m);
            if (!src) { cli_fail("%s has no chat template; name one with --chat-template", model); goto out; }
            tid = ia_chat_template_detect(src);
            if (!tid) { cli_fail("%s: chat template not recognised; name one with --chat-template", model); goto out; }
        }
        int32_t eos = ia_tokenizer_eos(ia_model_tokenizer(m));
        char *eos_text = eos >= 0 ? ia_tokenizer_decode(ia_model_tokenizer(m), &eos, 1, true) : NULL;
        formatted = ia_calloc((size_t)n, sizeof(char *));
        for (int i = 0; i < n; i++) {
            ia_chat_msg msgs[2];
            int k = 0;
            if (system) msgs[k++] = (ia_chat_msg){"system", system};
            msgs[k++] = (ia_chat_msg){"user", prompts[i]};
            formatted[i] = ia_chat_apply_eos(tid, msgs, k, true, eos_text, &err);
            if (!formatted[i]) { ia_free(eos_text); cli_fail_err(&err); goto out; }
        }
        ia_free(eos_text);
        use = (const char *const *)formatted;
        go.parse_special = true;
    }
    out = ia_calloc((size_t)n, sizeof *out);
    double t0 = ia_time_now();
    if (n > 1 && isatty(2)) {
        go.progress = progress_cb;
        go.progress_ud = &t0;
    }
    if (ia_generate(m, use, n, &go, out, &err) != IA_OK) { cli_fail_err(&err); goto out; }
    double el = ia_time_now() - t0;
    long total_gen = 0;
    for (int i = 0; i < n; i++) {
        total_gen += out[i].n_tokens;
        if (json) {
            json_t *toks = json_array();
            for (int k = 0; k < out[i].n_tokens; k++) json_array_append_new(toks, json_integer(out[i].tokens[k]));
            json_t *o = json_pack("{s:i,s:o,s:o,s:o,s:i,s:s}", "index", i, "prompt",
                                  cli_json_text(prompts[i], strlen(prompts[i])), "text",
                                  cli_json_text(out[i].text, strlen(out[i].text)), "tokens", toks, "n_prompt_tokens",
                                  out[i].n_prompt_tokens, "finish_reason", finish_name(out[i].finish));
            cli_json_print(o);
            json_decref(o);
        } else if (n == 1) {
            printf("%s\n", out[i].text);
        } else {
            printf("=== %d ===\n%s\n", i, out[i].text);
        }
    }
    fprintf(stderr, "iteralign: %d completion%s, %ld tokens in %.2f s (%.1f tokens/s)\n", n, n == 1 ? "" : "s",
            total_gen, el, el > 0 ? (double)total_gen / el : 0.0);
    rc = 0;
out:
    for (int i = 0; i < n; i++) {
        ia_free(prompts[i]);
        if (formatted) ia_free(formatted[i]);
        if (out) ia_completion_clear(&out[i]);
    }
    ia_free(prompts);
    ia_free(formatted);
    ia_free(out);
    ia_model_free(m);
    return rc;
}
