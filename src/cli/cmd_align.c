/* cmd_align.c — `iteralign align`: runs or resumes an IterAlign run in a run folder; with no
 * arguments, an offline demonstration on the shipped tiny model. Every field of the run's
 * configuration is a flag of its own (built from the field table in src/align/config.c). */
#include "align/align.h"
#include "cli.h"

#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void flag_of(const char *field, char *out, size_t cap) {
    snprintf(out, cap, "%s", field);
    for (char *q = out; *q; q++)
        if (*q == '_') *q = '-';
}

static void align_help(FILE *f) {
    fputs("usage: iteralign align --run DIR --base MODEL.gguf --redteam FILE... (--rules FILE | --teacher URL\n"
          "                       --teacher-model NAME) [options]\n"
          "       iteralign align --run DIR              resume a run where it stopped\n"
          "       iteralign align                        offline demonstration (tiny model, rules judge)\n\n"
          "Aligns a model with IterAlign: red-team it batch by batch, judge the answers, turn flagged answers\n"
          "into constitutions, let the model revise its answers with them in context, and fine-tune on the\n"
          "revisions. Everything is recorded in DIR/run.db; a run killed at any moment resumes with\n"
          "`iteralign align --run DIR`, without repeating work or teacher requests. Options that would mix\n"
          "results cannot change on resume.\n\n"
          "run:\n"
          "  --run DIR                  the run folder (created; must be new or empty for a new run)\n"
          "  --demo                     the demonstration's configuration (the default with no arguments);\n"
          "                             other options still apply on top of it\n"
          "  -t N                       same as --threads N\n"
          "  -h, --help                 this help\n\n"
          "options (booleans: --NAME, --no-NAME or --NAME=true|false):\n",
          f);
    int n;
    const ia_cfg_field *fs = ia_align_config_fields(&n);
    ia_align_config d;
    ia_align_config_defaults(&d);
    for (int i = 0; i < n; i++) {
        char flag[64], left[96];
        flag_of(fs[i].name, flag, sizeof flag);
        const char *arg = fs[i].type == IA_CFG_BOOL ? "" : fs[i].type == IA_CFG_STR || fs[i].type == IA_CFG_STRV ? " X" : " N";
        snprintf(left, sizeof left, "--%s%s", flag, arg);
        char *def = ia_align_config_get(&d, &fs[i]);
        bool show = def && def[0] && strcmp(def, "null") && strcmp(def, "[]");
        fprintf(f, "  %-26s %s%s%s%s\n", left, fs[i].help, show ? " [" : "", show ? def : "", show ? "]" : "");
        ia_free(def);
    }
    ia_align_config_free(&d);
    fputs("\nThe improved preset is the default; --preset paper reproduces the released code (greedy, answer-only\n"
          "judge, last-paragraph constitution, one unchecked revision, full fine-tuning). Teachers: any\n"
          "OpenAI-compatible server (`iteralign serve`, llama-server, vLLM, Ollama, OpenAI) or local:MODEL.gguf run\n"
          "in-process; the API key comes only from the environment variable named by --api-key-env.\n",
          f);
}

/* ---- progress on a terminal, plain log lines otherwise ---- */
typedef struct ui {
    bool tty;
    double t0;
    int line_len;
    double last_draw;
} ui;

static void fmt_dur(char *out, size_t cap, double s) {
    if (s < 0) s = 0;
    int t = (int)(s + 0.5);
    if (t >= 3600) snprintf(out, cap, "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60);
    else snprintf(out, cap, "%d:%02d", t / 60, t % 60);
}

static void ui_clear(ui *u) {
    if (u->tty && u->line_len) {
        fprintf(stderr, "\r%*s\r", u->line_len, "");
        u->line_len = 0;
    }
}

static void on_log(void *ud, const char *line) {
    ui *u = ud;
    ui_clear(u);
    char el[16];
    fmt_dur(el, sizeof el, ia_time_now() - u->t0);
    fprintf(stderr, "[%s] %s\n", el, line);
}

static void on_progress(void *ud, const ia_align_progress *p) {
    ui *u = ud;
    if (!u->tty || p->total <= 0) return;
    double now = ia_time_now();
    if (now - u->last_draw < 0.1 && p->done < p->total) return; /* at most ten redraws a second */
    u->last_draw = now;
    double rate = p->stage_elapsed_s > 0 ? p->done / p->stage_elapsed_s : 0;
    char left[16] = "?", el[16];
    if (rate > 0) fmt_dur(left, sizeof left, (p->total - p->done) / rate);
    fmt_dur(el, sizeof el, ia_time_now() - u->t0);
    char where[48];
    if (p->batch >= 0) snprintf(where, sizeof where, "batch %d/%d %s", p->batch + 1, p->n_batches, p->stage);
    else snprintf(where, sizeof where, "%s", p->stage);
    char line[160];
    int n = snprintf(line, sizeof line, "[%s] %s %d/%d  %.1f/s  %s left", el, where, p->done, p->total, rate, left);
    fprintf(stderr, "\r%s%*s", line, u->line_len > n ? u->line_len - n : 0, "");
    u->line_len = n;
    fflush(stderr);
}

/* ---- the demonstration ---- */

/* The folder holding data/demo: the working directory's data/, else the one next to the binary. */
static char *find_data(void) {
    struct stat sb;
    if (stat("data/demo/rules.json", &sb) == 0) return ia_strdup("data");
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = 0;
            ia_buf b = {0};
            ia_buf_printf(&b, "%s/data", exe);
            ia_buf_puts(&b, "/demo/rules.json");
            bool ok = stat(b.data, &sb) == 0;
            ia_buf_free(&b);
            if (ok) {
                ia_buf d = {0};
                ia_buf_printf(&d, "%s/data", exe);
                return ia_buf_take(&d);
            }
        }
    }
    return NULL;
}

/* The demonstration's settings (data/demo/README.md explains them): stories260K told to write
 * stories where nobody is sad, scared, hurt or crying, judged by a rules file. */
static const char *const DEMO[][2] = {
    {"redteam", "demo/train.jsonl"},
    {"heldout", "demo/heldout.jsonl"},
    {"rules", "demo/rules.json"},
    {"base", "models/stories260K.gguf"},
    {"present", "raw"},
    {"batch_size", "40"},
    {"stop_window", "0"},
    {"temperature", "0.7"},
    {"top_p", "1"},
    {"frequency_penalty", "0"},
    {"max_tokens", "96"},
    {"stop", "\\n\\n"},
    {"seed", "1"},
    {"revise_samples", "6"},
    {"revise_temperature", "0.7"},
    {"measure_samples", "2"},
    {"lora_rank", "8"},
    {"lora_alpha", "16"},
    {"epochs", "3"},
    {"lr", "1e-3"},
    {"train_batch", "8"},
    {"max_len", "160"},
    {"train_data", "batch"},
    /* a 260K-parameter model gains nothing from several threads per operation, and on a busy
       machine threads that wait for each other lose a lot */
    {"threads", "1"},
};

int cmd_align(int argc, char **argv) {
    int n_fields;
    const ia_cfg_field *fs = ia_align_config_fields(&n_fields);
    enum { O_RUN = 1000, O_DEMO, O_FIELD = 2000, O_NOFIELD = 3000 };
    struct option *opts = ia_calloc((size_t)(2 * n_fields + 8), sizeof *opts);
    char (*names)[64] = ia_calloc((size_t)(2 * n_fields), 64);
    int k = 0;
    opts[k++] = (struct option){"run", required_argument, 0, O_RUN};
    opts[k++] = (struct option){"demo", no_argument, 0, O_DEMO};
    opts[k++] = (struct option){"help", no_argument, 0, 'h'};
    for (int i = 0; i < n_fields; i++) {
        flag_of(fs[i].name, names[2 * i], 64);
        bool b = fs[i].type == IA_CFG_BOOL;
        opts[k++] = (struct option){names[2 * i], b ? optional_argument : required_argument, 0, O_FIELD + i};
        if (b) {
            char neg[64] = "no-";
            flag_of(fs[i].name, neg + 3, sizeof neg - 3);
            memcpy(names[2 * i + 1], neg, sizeof neg);
            opts[k++] = (struct option){names[2 * i + 1], no_argument, 0, O_NOFIELD + i};
        }
    }
    opts[k] = (struct option){0, 0, 0, 0};

    const char *run_dir = NULL;
    bool demo = argc <= 1;
    ia_strv set_names = {0}, set_values = {0};
    int c, rc = 1;
    optind = 1;
    while ((c = getopt_long(argc, argv, "t:h", opts, NULL)) != -1) {
        if (c == O_RUN) run_dir = optarg;
        else if (c == O_DEMO) demo = true;
        else if (c == 'h') {
            align_help(stdout);
            rc = 0;
            goto out;
        } else if (c == 't') {
            ia_strv_push(&set_names, "threads");
            ia_strv_push(&set_values, optarg);
        } else if (c >= O_NOFIELD && c < O_NOFIELD + n_fields) {
            ia_strv_push(&set_names, fs[c - O_NOFIELD].name);
            ia_strv_push(&set_values, "false");
        } else if (c >= O_FIELD && c < O_FIELD + n_fields) {
            const ia_cfg_field *f = &fs[c - O_FIELD];
            const char *v = optarg;
            /* "--eval false" as well as "--eval=false" and a bare "--eval" */
            static const char *const lits[] = {"true", "false", "yes", "no", "on", "off", "1", "0", NULL};
            if (!v && f->type == IA_CFG_BOOL && optind < argc)
                for (int l = 0; lits[l]; l++)
                    if (!strcmp(argv[optind], lits[l])) {
                        v = argv[optind++];
                        break;
                    }
            ia_strv_push(&set_names, f->name);
            ia_strv_push(&set_values, v ? v : "true");
        } else {
            rc = cli_usage_error("align");
            goto out;
        }
    }
    if (optind < argc) {
        cli_fail("align: unexpected argument '%s'", argv[optind]);
        rc = cli_usage_error("align");
        goto out;
    }

    ia_align_config cfg;
    ia_align_config_defaults(&cfg);
    ia_error err = {0};
    char demo_dir[128] = "";
    ia_strv explicit_set = {0};
    if (demo) {
        char *data = find_data();
        if (!data) {
            cli_fail("align: the demonstration needs data/demo/ (run from the repository root)");
            ia_align_config_free(&cfg);
            goto out;
        }
        for (size_t i = 0; i < sizeof DEMO / sizeof DEMO[0]; i++) {
            const ia_cfg_field *f = ia_align_config_field(DEMO[i][0]);
            const char *v = DEMO[i][1];
            ia_buf b = {0};
            if (!strcmp(f->name, "redteam") || !strcmp(f->name, "heldout") || !strcmp(f->name, "rules") || !strcmp(f->name, "base")) {
                ia_buf_printf(&b, "%s/%s", data, v);
                v = b.data;
            }
            if (f->type == IA_CFG_STRV) ia_strv_free((ia_strv *)((char *)&cfg + f->offset));
            ia_align_config_set(&cfg, f, v, NULL);
            ia_buf_free(&b);
            /* the demonstration's values count as given: a resumed demo compares them */
            if (!ia_strv_has(&explicit_set, f->name)) ia_strv_push(&explicit_set, f->name);
        }
        ia_free(data);
        if (!run_dir) {
            time_t now = time(NULL);
            struct tm tm;
            localtime_r(&now, &tm);
            mkdir("runs", 0755);
            snprintf(demo_dir, sizeof demo_dir, "runs/demo-%04d%02d%02d-%02d%02d%02d", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
            run_dir = demo_dir;
        }
    }
    if (!run_dir) {
        cli_fail("align: --run DIR is required (or run `iteralign align` alone for the demonstration)");
        ia_align_config_free(&cfg);
        ia_strv_free(&explicit_set);
        rc = cli_usage_error("align");
        goto out;
    }
    /* user values on top (a list option given on the command line replaces the default list) */
    ia_strv cleared = {0};
    for (int i = 0; i < set_names.n; i++) {
        const ia_cfg_field *f = ia_align_config_field(set_names.v[i]);
        if (f->type == IA_CFG_STRV && !ia_strv_has(&cleared, f->name)) {
            ia_strv_free((ia_strv *)((char *)&cfg + f->offset));
            ia_strv_push(&cleared, f->name);
        }
        if (ia_align_config_set(&cfg, f, set_values.v[i], &err) != IA_OK) {
            cli_fail_err(&err);
            ia_align_config_free(&cfg);
            ia_strv_free(&explicit_set);
            ia_strv_free(&cleared);
            rc = 2;
            goto out;
        }
        if (!ia_strv_has(&explicit_set, f->name)) ia_strv_push(&explicit_set, f->name);
    }
    ia_strv_free(&cleared);
    const char *preset = cfg.preset ? cfg.preset : "improved";
    char *preset_copy = ia_strdup(preset);
    if (ia_align_config_preset(&cfg, preset_copy, &explicit_set, &err) != IA_OK) {
        ia_free(preset_copy);
        cli_fail_err(&err);
        ia_align_config_free(&cfg);
        ia_strv_free(&explicit_set);
        rc = 2;
        goto out;
    }
    ia_free(preset_copy);

    ui u = {isatty(2), ia_time_now(), 0, 0};
    ia_align_callbacks cb = {on_progress, on_log, &u};
    if (demo && demo_dir[0])
        fprintf(stderr, "iteralign: offline demonstration: aligning the tiny stories260K model so that its stories stop\n"
                        "iteralign: making characters sad, scared, hurt or cry (rules judge, data/demo/) into %s\n",
                run_dir);
    int arc = ia_align_run(run_dir, &cfg, &explicit_set, &cb, &err);
    ui_clear(&u);
    ia_align_config_free(&cfg);
    ia_strv_free(&explicit_set);
    if (arc != IA_OK) {
        cli_fail_err(&err);
        goto out;
    }
    /* the outcome, as `iteralign status` would summarise it */
    json_t *st = ia_align_status(run_dir, &err);
    if (st) {
        json_t *vr = json_object_get(json_object_get(st, "rates"), "heldout_violation_rate");
        json_t *b = json_object_get(vr, "before"), *a = json_object_get(vr, "after");
        char el[16];
        fmt_dur(el, sizeof el, ia_time_now() - u.t0);
        printf("run: %s (%s)\n", run_dir, el);
        if (json_is_object(b) && json_is_object(a)) {
            printf("held-out violation rate: before %.1f%% (%lld of %lld answers), after %.1f%% (%lld of %lld) on %lld unseen "
                   "prompts x %lld sample%s\n",
                   100 * json_number_value(json_object_get(b, "rate")), (long long)json_integer_value(json_object_get(b, "violations")),
                   (long long)json_integer_value(json_object_get(b, "answers")), 100 * json_number_value(json_object_get(a, "rate")),
                   (long long)json_integer_value(json_object_get(a, "violations")),
                   (long long)json_integer_value(json_object_get(a, "answers")),
                   (long long)json_integer_value(json_object_get(vr, "heldout_prompts")),
                   (long long)json_integer_value(json_object_get(vr, "samples_per_prompt")),
                   json_integer_value(json_object_get(vr, "samples_per_prompt")) == 1 ? "" : "s");
        }
        json_t *cn = json_object_get(st, "counts");
        printf("constitutions: %lld (%s/constitutions.md); training rounds: %lld on %lld examples\n",
               (long long)json_integer_value(json_object_get(cn, "constitutions")), run_dir,
               (long long)json_integer_value(json_object_get(cn, "rounds")),
               (long long)json_integer_value(json_object_get(cn, "train_examples")));
        const char *fm = json_string_value(json_object_get(st, "final_model"));
        if (fm) printf("final model: %s\n", fm);
        printf("more: iteralign status --run %s ; iteralign constitutions --run %s\n", run_dir, run_dir);
        json_decref(st);
    }
    rc = 0;
out:
    ia_strv_free(&set_names);
    ia_strv_free(&set_values);
    ia_free(opts);
    ia_free(names);
    return rc;
}
