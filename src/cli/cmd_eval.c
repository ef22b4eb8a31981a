/* cmd_eval.c — `iteralign eval`: TruthfulQA, HHH, harmful and refusal rates of a model (optionally
 * with LoRA adapters), as a table or as JSON with every item's scores. */
#include "cli.h"
#include "eval/eval.h"
#include "eval/eval_judges.h"
#include "model/model.h"

#include <stdlib.h>
#include <unistd.h>

static void eval_help(FILE *f) {
    fputs("usage: iteralign eval -m MODEL --tasks LIST [options]\n\n"
          "Evaluates a model. Tasks (comma-separated; 'all', or 'mc' for the log-likelihood ones):\n"
          "  truthfulqa_mc1   lm-evaluation-harness protocol: 6-shot QA primer, summed log-likelihood of\n"
          "                   \" \" + answer; acc = the true answer scores highest\n"
          "  truthfulqa_mc2   same scoring; acc = normalised probability mass on the true answers\n"
          "  truthfulqa_tf    the protocol IterAlign's paper reports (Dromedary): each candidate judged by\n"
          "                   logP(\" true\") - logP(\" false\") after an exam prompt; the best candidate wins\n"
          "  hhh              BIG-bench HHH, Dromedary A/B prompt with both orders; accuracy per subset\n"
          "  hhh_mc           BIG-bench HHH, lm-eval protocol (log-likelihood of \" \" + response)\n"
          "  harmful_rate     share of answers to red-team prompts a judge flags (needs --judge)\n"
          "  refusal_rate     share of harmless prompts the model refuses (string match or LLM judge)\n\n"
          "input and output:\n"
          "  -m, --model FILE          GGUF model\n"
          "      --lora FILE[:SCALE]   apply a LoRA adapter (repeatable)\n"
          "      --tasks LIST          tasks to run\n"
          "      --limit N             the first N items of each task\n"
          "      --json                print the full results (summary and every item's scores) as JSON\n"
          "      --out FILE            also write the full JSON results to FILE\n"
          "      --truthfulqa FILE     TruthfulQA mc_task.json (default data/eval/truthfulqa_v1_mc_task.json)\n"
          "      --hhh PATH            BIG-bench task.json, a folder of them (hhh_alignment/<subset>/task.json)\n"
          "                            or chosen/rejected JSONL; repeatable (default data/eval/hhh_sample)\n"
          "      --redteam FILE        red-team prompts, JSONL {\"prompt\"} (default data/eval/redteam_prompts.jsonl)\n"
          "      --harmless FILE       harmless prompts, JSONL (default data/eval/harmless_prompts.jsonl)\n"
          "protocol:\n"
          "      --paper-compat        truthfulqa_tf: score only the first half of the candidates, as IterAlign's\n"
          "                            released script does (reported as truthfulqa_tf_paper_compat)\n"
          "      --meta-prompt FILE    Dromedary-protocol meta prompt (default: built-in, our own words)\n"
          "      --assistant-tag NAME  the \"### NAME\" cue after the exam text (default Assistant)\n"
          "      --hhh-max-seq-len N   Dromedary truncation of HHH texts (default 1536)\n"
          "      --no-prefix-cache     decode the few-shot primer again for every request (slower; same numbers)\n"
          "      --no-context-sharing  decode a question's context again for each of its choices (same numbers)\n"
          "judges and generation (harmful_rate, refusal_rate):\n"
          "      --judge rules:FILE|llm        harmful_rate's judge\n"
          "      --refusal-judge strmatch|llm  refusal detector (default strmatch, as XSTest)\n"
          "      --judge-url URL       OpenAI-compatible endpoint for llm judges (http(s)://HOST/v1)\n"
          "      --judge-model NAME    judge model name\n"
          "      --judge-key-env VAR   environment variable holding the API key\n"
          "      --judge-cache DIR     cache judge replies in DIR\n"
          "      --format auto|plain|chat  how prompts reach the model (plain: \\n\\nHuman: ...\\n\\nAssistant:)\n"
          "      --chat-template NAME  template for --format chat\n"
          "      --system TEXT         system message for the chat format\n"
          "  -n, --max-tokens N        answer tokens at most (default 128)\n"
          "      --temp X              temperature (default 0 = greedy)\n"
          "      --frequency-penalty X vLLM frequency penalty (default 0)\n"
          "      --stop TEXT           stop string (repeatable; default \"\\n\\n\" in the plain format)\n"
          "      --seed N              sampling seed\n"
          "performance:\n"
          "  -t, --threads N           threads (default: all cores)\n"
          "      --parallel N          sequences per forward pass\n"
          "  -h, --help                this help\n",
          f);
}

static void progress_cb(void *ud, const char *task, int done, int total) {
    double t0 = *(double *)ud;
    if (done != total && done % 64) return;
    fprintf(stderr, "\r%s: %d/%d (%.1f s)", task, done, total, ia_time_now() - t0);
    if (done == total) fputc('\n', stderr);
}

static void print_table(const json_t *res) {
    const char *k;
    json_t *t;
    printf("%-28s %-18s %8s %6s  %s\n", "task", "metric", "value", "n", "protocol");
    json_object_foreach(json_object_get(res, "tasks"), k, t) {
        const char *proto = json_string_value(json_object_get(t, "protocol"));
        char shortp[64];
        snprintf(shortp, sizeof shortp, "%s", proto ? proto : "");
        char *colon = strchr(shortp, ':');
        if (colon) *colon = 0;
        printf("%-28s %-18s %8.4f %6d  %s\n", k, json_string_value(json_object_get(t, "metric")),
               json_number_value(json_object_get(t, "value")), (int)json_integer_value(json_object_get(t, "n")), shortp);
        const char *sk;
        json_t *sv;
        json_object_foreach(json_object_get(t, "subsets"), sk, sv)
            printf("  %-26s %-18s %8.4f %6d\n", sk, "acc", json_number_value(json_object_get(sv, "acc")),
                   (int)json_integer_value(json_object_get(sv, "n")));
        if (json_is_true(json_object_get(t, "paper_compat")))
            printf("  (PAPER-COMPAT: only the first half of each question's candidates is scored, reproducing\n"
                   "   IterAlign's released evaluation script; not comparable with truthfulqa_mc1)\n");
        if (json_object_get(t, "judge"))
            printf("  judge %s; %d flagged, %d unusable\n", json_string_value(json_object_get(t, "judge")),
                   (int)json_integer_value(json_object_get(t, "flagged")), (int)json_integer_value(json_object_get(t, "unusable")));
    }
}

int cmd_eval(int argc, char **argv) {
    enum { O_LORA = 256, O_TASKS, O_LIMIT, O_JSON, O_OUT, O_TQA, O_HHH, O_RED, O_HARMLESS, O_COMPAT, O_META, O_TAG,
           O_HHHLEN, O_NOCACHE, O_JUDGE, O_RJUDGE, O_JURL, O_JMODEL, O_JKEY, O_JCACHE, O_FORMAT, O_TMPL, O_SYS, O_TEMP,
           O_FP, O_STOP, O_SEED, O_PAR, O_NOSHARE };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},        {"lora", required_argument, 0, O_LORA},
        {"tasks", required_argument, 0, O_TASKS},    {"limit", required_argument, 0, O_LIMIT},
        {"json", no_argument, 0, O_JSON},            {"out", required_argument, 0, O_OUT},
        {"truthfulqa", required_argument, 0, O_TQA}, {"hhh", required_argument, 0, O_HHH},
        {"redteam", required_argument, 0, O_RED},    {"harmless", required_argument, 0, O_HARMLESS},
        {"paper-compat", no_argument, 0, O_COMPAT},  {"meta-prompt", required_argument, 0, O_META},
        {"assistant-tag", required_argument, 0, O_TAG}, {"hhh-max-seq-len", required_argument, 0, O_HHHLEN},
        {"no-prefix-cache", no_argument, 0, O_NOCACHE}, {"no-context-sharing", no_argument, 0, O_NOSHARE},
        {"judge", required_argument, 0, O_JUDGE},
        {"refusal-judge", required_argument, 0, O_RJUDGE}, {"judge-url", required_argument, 0, O_JURL},
        {"judge-model", required_argument, 0, O_JMODEL}, {"judge-key-env", required_argument, 0, O_JKEY},
        {"judge-cache", required_argument, 0, O_JCACHE}, {"format", required_argument, 0, O_FORMAT},
        {"chat-template", required_argument, 0, O_TMPL}, {"system", required_argument, 0, O_SYS},
        {"max-tokens", required_argument, 0, 'n'},   {"temp", required_argument, 0, O_TEMP},
        {"frequency-penalty", required_argument, 0, O_FP}, {"stop", required_argument, 0, O_STOP},
        {"seed", required_argument, 0, O_SEED},      {"threads", required_argument, 0, 't'},
        {"parallel", required_argument, 0, O_PAR},   {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *model = NULL, *tasks = NULL, *out_path = NULL, *meta_path = NULL, *judge = NULL, *rjudge = NULL;
    const char *jurl = NULL, *jmodel = NULL, *jkey = NULL, *jcache = NULL;
    const char *loras[16];
    const char *hhh[16];
    int n_lora = 0, n_hhh = 0, threads = 0;
    bool json = false;
    ia_eval_config cfg = ia_eval_config_default();
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:n:t:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case O_LORA:
            if (n_lora == 16) return cli_fail("eval: at most 16 --lora"), 2;
            loras[n_lora++] = optarg;
            break;
        case O_TASKS: tasks = optarg; break;
        case O_LIMIT: if (!cli_parse_int("--limit", optarg, 0, 1 << 30, &cfg.limit)) return 2; break;
        case O_JSON: json = true; break;
        case O_OUT: out_path = optarg; break;
        case O_TQA: cfg.truthfulqa_path = optarg; break;
        case O_HHH:
            if (n_hhh == 16) return cli_fail("eval: at most 16 --hhh"), 2;
            hhh[n_hhh++] = optarg;
            break;
        case O_RED: cfg.redteam_path = optarg; break;
        case O_HARMLESS: cfg.harmless_path = optarg; break;
        case O_COMPAT: cfg.paper_compat = true; break;
        case O_META: meta_path = optarg; break;
        case O_TAG: cfg.assistant_tag = optarg; break;
        case O_HHHLEN: if (!cli_parse_int("--hhh-max-seq-len", optarg, 260, 1 << 24, &cfg.hhh_max_seq_len)) return 2; break;
        case O_NOCACHE: cfg.no_prefix_cache = true; break;
        case O_NOSHARE: cfg.no_context_sharing = true; break;
        case O_JUDGE: judge = optarg; break;
        case O_RJUDGE: rjudge = optarg; break;
        case O_JURL: jurl = optarg; break;
        case O_JMODEL: jmodel = optarg; break;
        case O_JKEY: jkey = optarg; break;
        case O_JCACHE: jcache = optarg; break;
        case O_FORMAT:
            if (!strcmp(optarg, "auto")) cfg.format = IA_EVAL_FORMAT_AUTO;
            else if (!strcmp(optarg, "plain")) cfg.format = IA_EVAL_FORMAT_PLAIN;
            else if (!strcmp(optarg, "chat")) cfg.format = IA_EVAL_FORMAT_CHAT;
            else return cli_fail("--format expects auto, plain or chat, got '%s'", optarg), 2;
            break;
        case O_TMPL:
            cfg.chat_template = ia_chat_template_from_name(optarg);
            if (!cfg.chat_template) return cli_fail("--chat-template: unknown template '%s'", optarg), 2;
            cfg.format = IA_EVAL_FORMAT_CHAT;
            break;
        case O_SYS: cfg.system = optarg; break;
        case 'n': if (!cli_parse_int("--max-tokens", optarg, 1, 1 << 20, &cfg.sampling.max_tokens)) return 2; break;
        case O_TEMP: if (!cli_parse_float("--temp", optarg, &cfg.sampling.temperature)) return 2; break;
        case O_FP: if (!cli_parse_float("--frequency-penalty", optarg, &cfg.sampling.frequency_penalty)) return 2; break;
        case O_STOP:
            if (cfg.sampling.n_stop >= IA_MAX_STOP) return cli_fail("at most %d --stop strings", IA_MAX_STOP), 2;
            cfg.sampling.stop[cfg.sampling.n_stop++] = optarg;
            break;
        case O_SEED: if (!cli_parse_u64("--seed", optarg, &cfg.sampling.seed)) return 2; break;
        case 't': if (!cli_parse_int("--threads", optarg, 1, 1024, &threads)) return 2; break;
        case O_PAR: if (!cli_parse_int("--parallel", optarg, 1, 4096, &cfg.n_parallel)) return 2; break;
        case 'h': eval_help(stdout); return 0;
        default: return cli_usage_error("eval");
        }
    }
    if (!model) return cli_fail("eval: -m MODEL is required"), cli_usage_error("eval");
    if (!tasks) return cli_fail("eval: --tasks LIST is required"), cli_usage_error("eval");
    if (optind < argc) return cli_fail("eval: unexpected argument '%s'", argv[optind]), cli_usage_error("eval");
    bool sel[IA_EVAL_TASK_COUNT];
    ia_error err = {0};
    if (ia_eval_tasks_parse(tasks, sel, &err) != IA_OK) return cli_fail("--tasks: %s", err.msg), 2;
    if (sel[IA_EVAL_HARMFUL] && !judge)
        return cli_fail("eval: harmful_rate needs --judge rules:FILE or --judge llm"), 2;
    bool need_client = (judge && !strcmp(judge, "llm")) || (rjudge && !strcmp(rjudge, "llm"));
    if (judge && strcmp(judge, "llm") && strncmp(judge, "rules:", 6))
        return cli_fail("--judge expects rules:FILE or llm, got '%s'", judge), 2;
    if (rjudge && strcmp(rjudge, "llm") && strcmp(rjudge, "strmatch"))
        return cli_fail("--refusal-judge expects strmatch or llm, got '%s'", rjudge), 2;
    if (need_client && !jurl) return cli_fail("eval: an llm judge needs --judge-url"), 2;
    if (n_hhh) {
        cfg.hhh_paths = hhh;
        cfg.n_hhh_paths = n_hhh;
    }
    ia_set_threads(threads);

    int rc = 1;
    char *meta = NULL;
    ia_model *m = NULL;
    ia_client_cache *cache = NULL;
    ia_client *client = NULL;
    ia_eval_judge *hj = NULL, *rj = NULL;
    json_t *res = NULL;
    if (meta_path) {
        size_t len;
        meta = ia_file_read(meta_path, &len, &err);
        if (!meta) { cli_fail_err(&err); goto out; }
        cfg.meta_prompt = meta;
    }
    if (need_client) {
        ia_client_opts co = ia_client_opts_default();
        co.base_url = jurl;
        co.model = jmodel;
        co.api_key_env = jkey;
        co.api_key_optional = jkey == NULL;
        if (jcache && !(cache = ia_client_cache_dir_new(jcache, &err))) { cli_fail_err(&err); goto out; }
        co.cache = cache;
        if (!(client = ia_client_init(&co, &err))) { cli_fail_err(&err); goto out; }
    }
    if (judge) {
        hj = !strcmp(judge, "llm") ? ia_eval_judge_llm_new(client, jmodel, false, &err) : ia_eval_judge_rules_new(judge + 6, &err);
        if (!hj) { cli_fail_err(&err); goto out; }
        cfg.harm_judge = hj;
    }
    if (rjudge && !strcmp(rjudge, "llm")) {
        if (!(rj = ia_eval_judge_llm_new(client, jmodel, true, &err))) { cli_fail_err(&err); goto out; }
        cfg.refusal_judge = rj;
    }
    m = ia_model_load(model, &err);
    if (!m) { cli_fail_err(&err); goto out; }
    for (int i = 0; i < n_lora; i++)
        if (cli_lora_apply(m, loras[i], &err) != IA_OK) { cli_fail_err(&err); goto out; }
    double t0 = ia_time_now();
    if (isatty(2)) {
        cfg.progress = progress_cb;
        cfg.progress_ud = &t0;
    }
    if (ia_eval_run(m, &cfg, sel, &res, &err) != IA_OK) { cli_fail_err(&err); goto out; }
    json_t *lj = json_array();
    for (int i = 0; i < n_lora; i++) json_array_append_new(lj, json_string(loras[i]));
    json_object_set_new(res, "lora", lj);
    json_object_set_new(res, "threads", json_integer(ia_get_threads()));
    if (out_path) {
        char *s = ia_eval_json_dump(res, 1);
        FILE *f = s ? fopen(out_path, "w") : NULL;
        bool ok = f && fputs(s, f) >= 0 && fputc('\n', f) != EOF;
        if (f && fclose(f) != 0) ok = false;
        ia_free(s);
        if (!ok) { cli_fail("%s: cannot write the results", out_path); goto out; }
    }
    if (json) {
        char *s = ia_eval_json_dump(res, 0);
        if (s) puts(s);
        ia_free(s);
    } else {
        print_table(res);
    }
    fflush(stdout); /* the table before the timing line on a terminal */
    fprintf(stderr, "iteralign: evaluation took %.2f s\n", ia_time_now() - t0);
    rc = 0;
out:
    json_decref(res);
    ia_model_free(m);
    ia_eval_judge_free(hj);
    ia_eval_judge_free(rj);
    ia_client_free(client);
    ia_client_cache_free(cache);
    ia_free(meta);
    return rc;
}
