/* config.c — the alignment run's configuration: one table of fields (type, help, whether a change
 * would mix results), the two presets, text/JSON conversion and validation. */
#include "align/align.h"
#include "util/util.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>

#define F(name, type, res, help) {#name, IA_CFG_##type, offsetof(ia_align_config, name), res, help}

/* The order here is the order of `iteralign align --help` and of the stored JSON. */
static const ia_cfg_field FIELDS[] = {
    F(base, STR, true, "base model GGUF (the model being aligned)"),
    F(redteam, STRV, true, "red-team prompts: JSONL, JSON, CSV or text (repeatable)"),
    F(heldout, STRV, true, "held-out prompts, measured before and after, never trained on (repeatable)"),
    F(format, STR, true, "input format: auto (by extension), jsonl, json, csv, text"),
    F(column, STR, true, "CSV column with the prompt (default: prompt, goal, behavior, question, ...)"),
    F(heldout_frac, FLOAT, true, "without --heldout, hold out this share of the red-team prompts"),
    F(max_prompts, INT, true, "use at most N red-team prompts (0: all)"),
    F(max_heldout, INT, true, "use at most N held-out prompts (0: all)"),
    F(present, STR, true, "how prompts reach the base model: auto, raw, chat (its template), hh (Human:/Assistant:)"),
    F(chat_template, STR, true, "chat template name for --present chat (default: the model's own)"),
    F(system, STR, true, "system message for --present chat"),
    F(preset, STR, true, "improved (default) or paper (the released code)"),
    F(batch_size, INT, true, "red-team prompts per batch"),
    F(max_batches, INT, true, "stop after N batches (0: all)"),
    F(stop_window, INT, true, "stop when N consecutive batches flag nothing (0: never)"),
    F(temperature, FLOAT, true, "red-team decoding: temperature (0 = greedy)"),
    F(top_p, FLOAT, true, "red-team decoding: nucleus sampling (1 = off)"),
    F(top_k, INT, true, "red-team decoding: top-k (0 = off)"),
    F(min_p, FLOAT, true, "red-team decoding: min-p (0 = off)"),
    F(frequency_penalty, FLOAT, true, "red-team decoding: vLLM frequency penalty"),
    F(repeat_penalty, FLOAT, true, "red-team decoding: llama.cpp repetition penalty (1 = off)"),
    F(max_tokens, INT, true, "red-team decoding: new tokens at most"),
    F(stop, STRV, true, "red-team decoding: stop string (repeatable; \\n escapes understood)"),
    F(seed, U64, true, "seed of every sampled generation and of training"),
    F(judge, STR, true, "auto, rules, llm or rules+llm"),
    F(rules, STR, true, "rules file (JSON detectors, each with its constitution)"),
    F(combine, STR, true, "how judges combine: any (flag if any flags) or all"),
    F(judge_style, STR, true, "LLM judge: json (prompt + answer, structured verdict) or paper (answer only, 'Negative')"),
    F(judge_format, STR, true, "response_format for the json judge: json_object, json_schema or none"),
    F(judge_max_tokens, INT, true, "LLM judge reply tokens at most"),
    F(teacher, STR, false, "teacher for judging and proposing: http(s)://HOST/v1 or local:MODEL.gguf"),
    F(teacher_model, STR, true, "teacher model name"),
    F(judge_url, STR, false, "judge endpoint (default: --teacher)"),
    F(judge_model, STR, true, "judge model (default: --teacher-model)"),
    F(proposer_url, STR, false, "proposer endpoint (default: --teacher)"),
    F(proposer_model, STR, true, "proposer model (default: --teacher-model)"),
    F(api_key_env, STR, false, "environment variable holding the API key (never stored)"),
    F(teacher_concurrency, INT, false, "teacher requests in flight at once"),
    F(teacher_retries, INT, false, "retries per teacher request"),
    F(teacher_timeout, FLOAT, false, "seconds per teacher request attempt"),
    F(proposer_style, STR, true, "json (structured list, registry) or paper (last paragraph of free text)"),
    F(proposer_max_tokens, INT, true, "proposer reply tokens at most"),
    F(registry, BOOL, true, "accumulate constitutions across batches, merging near-duplicates"),
    F(merge_threshold, FLOAT, true, "token-set Jaccard at which two constitutions are merged"),
    F(revise_samples, INT, true, "revision candidates per flagged prompt (best of N)"),
    F(revise_temperature, FLOAT, true, "revision temperature (negative: the red-team decoding)"),
    F(revise_style, STR, true, "constitution in context: auto, prefix, insert (released code), system"),
    F(rejudge, BOOL, true, "judge each revision again and train only on one that passes"),
    F(train_method, STR, true, "lora, full or none"),
    F(train_data, STR, true, "train each round on this batch's examples (batch) or all so far (all)"),
    F(train_continue, BOOL, true, "start each round from the last round's weights"),
    F(lora_rank, INT, true, "LoRA rank"),
    F(lora_alpha, FLOAT, true, "LoRA alpha"),
    F(lora_targets, STR, true, "LoRA targets: comma list of q,k,v,o,gate,up,down"),
    F(epochs, INT, true, "training epochs per round"),
    F(train_batch, INT, true, "training sequences per micro-batch"),
    F(grad_accum, INT, true, "micro-batches per optimizer step"),
    F(max_len, INT, true, "training tokens per sequence"),
    F(lr, FLOAT, true, "learning rate"),
    F(weight_decay, FLOAT, true, "AdamW weight decay"),
    F(warmup, FLOAT, true, "warm-up share of the steps"),
    F(schedule, STR, true, "learning-rate schedule: constant, linear, cosine"),
    F(train_compute, STR, true, "products with the base weights in training: f32, or bf16 (~1.5x faster with AVX512_BF16)"),
    F(measure, BOOL, true, "measure the judged violation rate on the held-out prompts before and after"),
    F(measure_samples, INT, true, "samples per held-out prompt in that measurement"),
    F(measure_fluency, BOOL, true, "also measure the base model's log-likelihood of those answers (degeneration check)"),
    F(eval, STR, true, "evaluations run before and after: comma list of truthfulqa_mc1, truthfulqa_mc2, truthfulqa_tf, "
                       "hhh, hhh_mc, harmful_rate, refusal_rate (see iteralign eval)"),
    F(eval_limit, INT, true, "evaluate the first N items of each task (0: all)"),
    F(threads, INT, false, "threads (0: all cores)"),
    F(parallel, INT, false, "sequences decoded together"),
};
#define N_FIELDS (int)(sizeof FIELDS / sizeof FIELDS[0])

const ia_cfg_field *ia_align_config_fields(int *n) {
    *n = N_FIELDS;
    return FIELDS;
}

const ia_cfg_field *ia_align_config_field(const char *name) {
    for (int i = 0; i < N_FIELDS; i++)
        if (!strcmp(FIELDS[i].name, name)) return &FIELDS[i];
    return NULL;
}

/* ---- string vectors ---- */
int ia_strv_push(ia_strv *v, const char *s) {
    char **nv = ia_realloc(v->v, sizeof(char *) * (size_t)(v->n + 1));
    if (!nv) return IA_ERR_NOMEM;
    v->v = nv;
    v->v[v->n] = ia_strdup(s);
    if (!v->v[v->n]) return IA_ERR_NOMEM;
    v->n++;
    return IA_OK;
}

void ia_strv_free(ia_strv *v) {
    for (int i = 0; i < v->n; i++) ia_free(v->v[i]);
    ia_free(v->v);
    v->v = NULL;
    v->n = 0;
}

bool ia_strv_has(const ia_strv *v, const char *s) {
    for (int i = 0; v && i < v->n; i++)
        if (!strcmp(v->v[i], s)) return true;
    return false;
}

/* ---- defaults and presets ---- */
static void set_str(char **dst, const char *v) {
    ia_free(*dst);
    *dst = v ? ia_strdup(v) : NULL;
}

void ia_align_config_defaults(ia_align_config *c) {
    memset(c, 0, sizeof *c);
    set_str(&c->format, "auto");
    set_str(&c->present, "auto");
    set_str(&c->preset, "improved");
    c->batch_size = 20;
    c->stop_window = 5;
    /* the paper reports temperature 0.7, top-p 0.9 for red teaming (the released code: greedy) */
    c->temperature = 0.7f;
    c->top_p = 0.9f;
    c->frequency_penalty = 0.5f;
    c->repeat_penalty = 1.0f;
    c->max_tokens = 256;
    /* no stop string: chat models end their turn themselves (the paper preset stops at "\n\n",
       which suits base models prompted in the Human:/Assistant: form) */
    set_str(&c->judge, "auto");
    set_str(&c->combine, "any");
    set_str(&c->judge_style, "json");
    set_str(&c->judge_format, "json_object");
    c->judge_max_tokens = 256;
    set_str(&c->api_key_env, "OPENAI_API_KEY");
    c->teacher_concurrency = 8;
    c->teacher_retries = 4;
    c->teacher_timeout = 120;
    set_str(&c->proposer_style, "json");
    c->proposer_max_tokens = 512;
    c->registry = true;
    c->merge_threshold = 0.6f;
    c->revise_samples = 4;
    c->revise_temperature = 0.9f;
    set_str(&c->revise_style, "auto");
    c->rejudge = true;
    set_str(&c->train_method, "lora");
    set_str(&c->train_data, "batch");
    c->train_continue = true;
    c->lora_rank = 8;
    c->lora_alpha = 16;
    c->epochs = 3;
    c->train_batch = 4;
    c->grad_accum = 1;
    c->max_len = 512;
    c->lr = 1e-4f;
    c->weight_decay = 0;
    c->warmup = 0.03f;
    set_str(&c->schedule, "cosine");
    set_str(&c->train_compute, "f32");
    c->measure = true;
    c->measure_samples = 1;
    c->measure_fluency = true;
}

/* Sets a field to a preset value unless the user set it. */
static void preset_set(ia_align_config *c, const ia_strv *explicit_set, const char *name, const char *value) {
    if (ia_strv_has(explicit_set, name)) return;
    const ia_cfg_field *f = ia_align_config_field(name);
    IA_ASSERT(f);
    if (f->type == IA_CFG_STRV) ia_strv_free((ia_strv *)((char *)c + f->offset));
    ia_align_config_set(c, f, value, NULL);
}

int ia_align_config_preset(ia_align_config *c, const char *preset, const ia_strv *explicit_set, ia_error *err) {
    if (!strcmp(preset, "improved")) {
        set_str(&c->preset, "improved");
        return IA_OK; /* the defaults are the improved preset */
    }
    if (strcmp(preset, "paper")) return ia_error_set(err, IA_ERR_ARG, "--preset: unknown preset '%s' (improved, paper)", preset);
    set_str(&c->preset, "paper");
    /* The released script (METHOD.md): 20 prompts a batch, greedy, stop at "\n\n", at most 500 new
       tokens, frequency penalty 0.5; the judge sees the answer only and "Negative" flags; flagged
       answers joined for one proposal whose last paragraph is the constitution; one in-context
       revision with the same decoding, not re-judged; full fine-tuning for 3 epochs at 2e-6,
       cosine, warm-up 0.03, global batch 8, from the last checkpoint; no stopping test. */
    static const char *const kv[][2] = {
        {"present", "hh"},          {"batch_size", "20"},       {"stop_window", "0"},
        {"temperature", "0"},       {"top_p", "1"},             {"top_k", "0"},
        {"frequency_penalty", "0.5"}, {"max_tokens", "500"},    {"stop", "\\n\\n"},
        {"judge_style", "paper"},   {"judge_format", "none"},   {"proposer_style", "paper"},
        {"registry", "false"},      {"revise_samples", "1"},    {"revise_temperature", "-1"},
        {"revise_style", "insert"}, {"rejudge", "false"},       {"train_method", "full"},
        {"train_data", "batch"},    {"train_continue", "true"}, {"epochs", "3"},
        {"lr", "2e-6"},             {"schedule", "cosine"},     {"warmup", "0.03"},
        {"weight_decay", "0"},      {"train_batch", "8"},       {"grad_accum", "1"},
        {"max_len", "4096"},
    };
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++) preset_set(c, explicit_set, kv[i][0], kv[i][1]);
    return IA_OK;
}

void ia_align_config_free(ia_align_config *c) {
    for (int i = 0; i < N_FIELDS; i++) {
        void *p = (char *)c + FIELDS[i].offset;
        if (FIELDS[i].type == IA_CFG_STR) {
            ia_free(*(char **)p);
            *(char **)p = NULL;
        } else if (FIELDS[i].type == IA_CFG_STRV) {
            ia_strv_free(p);
        }
    }
}

/* "\n", "\t", "\\" escapes, so a stop string such as a blank line can be typed on a command line. */
static char *unescape(const char *s) {
    char *o = ia_malloc(strlen(s) + 1), *q = o;
    for (const char *p = s; *p; p++) {
        if (*p == '\\' && p[1]) {
            p++;
            *q++ = *p == 'n' ? '\n' : *p == 't' ? '\t' : *p == 'r' ? '\r' : *p;
        } else {
            *q++ = *p;
        }
    }
    *q = 0;
    return o;
}

int ia_align_config_set(ia_align_config *c, const ia_cfg_field *f, const char *value, ia_error *err) {
    void *p = (char *)c + f->offset;
    char *end;
    char flag[64];
    snprintf(flag, sizeof flag, "--%s", f->name);
    for (char *q = flag; *q; q++)
        if (*q == '_') *q = '-';
    errno = 0;
    switch (f->type) {
    case IA_CFG_STR: set_str(p, value); return IA_OK;
    case IA_CFG_STRV: {
        if (!strcmp(f->name, "stop")) {
            char *u = unescape(value);
            int rc = ia_strv_push(p, u);
            ia_free(u);
            return rc;
        }
        return ia_strv_push(p, value);
    }
    case IA_CFG_INT: {
        long v = strtol(value, &end, 10);
        if (errno || end == value || *end || v < -1000000000L || v > 1000000000L)
            return ia_error_set(err, IA_ERR_ARG, "%s expects an integer, got '%s'", flag, value);
        *(int *)p = (int)v;
        return IA_OK;
    }
    case IA_CFG_FLOAT: {
        float v = strtof(value, &end);
        if (errno || end == value || *end || !isfinite(v))
            return ia_error_set(err, IA_ERR_ARG, "%s expects a number, got '%s'", flag, value);
        *(float *)p = v;
        return IA_OK;
    }
    case IA_CFG_U64: {
        unsigned long long v = strtoull(value, &end, 10);
        if (errno || end == value || *end || *value == '-')
            return ia_error_set(err, IA_ERR_ARG, "%s expects a non-negative integer, got '%s'", flag, value);
        *(uint64_t *)p = v;
        return IA_OK;
    }
    case IA_CFG_BOOL:
        if (!strcmp(value, "true") || !strcmp(value, "1") || !strcmp(value, "yes") || !strcmp(value, "on")) *(bool *)p = true;
        else if (!strcmp(value, "false") || !strcmp(value, "0") || !strcmp(value, "no") || !strcmp(value, "off")) *(bool *)p = false;
        else return ia_error_set(err, IA_ERR_ARG, "%s expects true or false, got '%s'", flag, value);
        return IA_OK;
    }
    return IA_ERR_INTERNAL;
}

static json_t *field_json(const ia_align_config *c, const ia_cfg_field *f) {
    const void *p = (const char *)c + f->offset;
    switch (f->type) {
    case IA_CFG_STR: return *(char *const *)p ? json_string(*(char *const *)p) : json_null();
    case IA_CFG_STRV: {
        json_t *a = json_array();
        const ia_strv *v = p;
        for (int i = 0; i < v->n; i++) json_array_append_new(a, json_string(v->v[i]));
        return a;
    }
    case IA_CFG_INT: return json_integer(*(const int *)p);
    /* floats go through their shortest decimal text so that 0.7f round-trips exactly */
    case IA_CFG_FLOAT: {
        char buf[32];
        snprintf(buf, sizeof buf, "%.9g", (double)*(const float *)p);
        return json_real(strtod(buf, NULL));
    }
    case IA_CFG_U64: {
        char buf[32];
        snprintf(buf, sizeof buf, "%llu", (unsigned long long)*(const uint64_t *)p);
        return json_string(buf); /* JSON integers are signed 64-bit */
    }
    case IA_CFG_BOOL: return json_boolean(*(const bool *)p);
    }
    return json_null();
}

/* The shortest decimal text that reads back as the same float ("0.7", not "0.699999988"). */
static void float_text(float v, char *out, size_t cap) {
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(out, cap, "%.*g", prec, (double)v);
        if (strtof(out, NULL) == v) return;
    }
}

char *ia_align_config_get(const ia_align_config *c, const ia_cfg_field *f) {
    if (f->type == IA_CFG_FLOAT) {
        char buf[32];
        float_text(*(const float *)((const char *)c + f->offset), buf, sizeof buf);
        return ia_strdup(buf);
    }
    json_t *v = field_json(c, f);
    char *s;
    if (json_is_string(v)) s = ia_strdup(json_string_value(v));
    else {
        char *d = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        s = ia_strdup(d ? d : "");
        free(d);
    }
    json_decref(v);
    return s;
}

json_t *ia_align_config_to_json(const ia_align_config *c) {
    json_t *o = json_object();
    for (int i = 0; i < N_FIELDS; i++) json_object_set_new(o, FIELDS[i].name, field_json(c, &FIELDS[i]));
    return o;
}

int ia_align_config_from_json(ia_align_config *c, json_t *o, ia_error *err) {
    for (int i = 0; i < N_FIELDS; i++) {
        const ia_cfg_field *f = &FIELDS[i];
        json_t *v = json_object_get(o, f->name);
        if (!v) continue; /* a field added after the run started keeps its default */
        void *p = (char *)c + f->offset;
        switch (f->type) {
        case IA_CFG_STR: set_str(p, json_is_string(v) ? json_string_value(v) : NULL); break;
        case IA_CFG_STRV: {
            ia_strv_free(p);
            size_t k;
            json_t *e;
            json_array_foreach(v, k, e) if (json_is_string(e)) ia_strv_push(p, json_string_value(e));
            break;
        }
        case IA_CFG_INT: *(int *)p = (int)json_integer_value(v); break;
        case IA_CFG_FLOAT: *(float *)p = (float)json_number_value(v); break;
        case IA_CFG_U64: *(uint64_t *)p = json_is_string(v) ? strtoull(json_string_value(v), NULL, 10) : 0; break;
        case IA_CFG_BOOL: *(bool *)p = json_is_true(v); break;
        }
    }
    (void)err;
    return IA_OK;
}

static bool one_of(const char *v, const char *const *allowed) {
    for (int i = 0; allowed[i]; i++)
        if (v && !strcmp(v, allowed[i])) return true;
    return false;
}

int ia_align_config_validate(const ia_align_config *c, ia_error *err) {
    static const struct {
        const char *name;
        const char *const allowed[6];
    } enums[] = {
        {"format", {"auto", "jsonl", "json", "csv", "text", NULL}},
        {"present", {"auto", "raw", "chat", "hh", NULL}},
        {"preset", {"improved", "paper", NULL}},
        {"judge", {"auto", "rules", "llm", "rules+llm", NULL}},
        {"combine", {"any", "all", NULL}},
        {"judge_style", {"json", "paper", NULL}},
        {"judge_format", {"json_object", "json_schema", "none", NULL}},
        {"proposer_style", {"json", "paper", NULL}},
        {"revise_style", {"auto", "prefix", "insert", "system", NULL}},
        {"train_method", {"lora", "full", "none", NULL}},
        {"train_data", {"batch", "all", NULL}},
        {"schedule", {"constant", "linear", "cosine", NULL}},
        {"train_compute", {"f32", "bf16", NULL}},
    };
    for (size_t i = 0; i < sizeof enums / sizeof enums[0]; i++) {
        const ia_cfg_field *f = ia_align_config_field(enums[i].name);
        const char *v = *(char *const *)((const char *)c + f->offset);
        if (!one_of(v, enums[i].allowed)) {
            ia_buf b = {0};
            for (int k = 0; enums[i].allowed[k]; k++) ia_buf_printf(&b, "%s%s", k ? ", " : "", enums[i].allowed[k]);
            char flag[64];
            snprintf(flag, sizeof flag, "%s", enums[i].name);
            for (char *q = flag; *q; q++)
                if (*q == '_') *q = '-';
            ia_error_set(err, IA_ERR_ARG, "--%s: '%s' is not one of %s", flag, v ? v : "(none)", b.data);
            ia_buf_free(&b);
            return IA_ERR_ARG;
        }
    }
    if (!c->base) return ia_error_set(err, IA_ERR_ARG, "--base MODEL.gguf is required");
    if (c->redteam.n == 0) return ia_error_set(err, IA_ERR_ARG, "--redteam FILE is required (at least one)");
    if (c->batch_size < 1) return ia_error_set(err, IA_ERR_ARG, "--batch-size must be at least 1");
    if (c->max_tokens < 1) return ia_error_set(err, IA_ERR_ARG, "--max-tokens must be at least 1");
    if (c->stop.n > IA_MAX_STOP) return ia_error_set(err, IA_ERR_ARG, "at most %d --stop strings", IA_MAX_STOP);
    for (int i = 0; i < c->stop.n; i++)
        if (!c->stop.v[i][0]) return ia_error_set(err, IA_ERR_ARG, "--stop: empty stop string");
    if (c->temperature < 0) return ia_error_set(err, IA_ERR_ARG, "--temperature must be >= 0");
    if (c->top_p <= 0 || c->top_p > 1) return ia_error_set(err, IA_ERR_ARG, "--top-p must be in (0, 1]");
    if (c->heldout_frac < 0 || c->heldout_frac >= 1) return ia_error_set(err, IA_ERR_ARG, "--heldout-frac must be in [0, 1)");
    if (c->revise_samples < 1 || c->revise_samples > 64) return ia_error_set(err, IA_ERR_ARG, "--revise-samples must be in [1, 64]");
    if (c->measure_samples < 1 || c->measure_samples > 64) return ia_error_set(err, IA_ERR_ARG, "--measure-samples must be in [1, 64]");
    if (c->merge_threshold < 0 || c->merge_threshold > 1) return ia_error_set(err, IA_ERR_ARG, "--merge-threshold must be in [0, 1]");
    if (c->max_prompts < 0 || c->max_heldout < 0 || c->max_batches < 0 || c->stop_window < 0)
        return ia_error_set(err, IA_ERR_ARG, "--max-prompts, --max-heldout, --max-batches and --stop-window must be >= 0");
    if (c->lora_rank < 1 || c->epochs < 1 || c->train_batch < 1 || c->grad_accum < 1 || c->max_len < 8)
        return ia_error_set(err, IA_ERR_ARG, "--lora-rank, --epochs, --train-batch, --grad-accum must be >= 1 and --max-len >= 8");
    if (c->eval_limit < 0) return ia_error_set(err, IA_ERR_ARG, "--eval-limit must be >= 0");
    if (c->lr <= 0) return ia_error_set(err, IA_ERR_ARG, "--lr must be > 0");
    if (c->teacher_concurrency < 1) return ia_error_set(err, IA_ERR_ARG, "--teacher-concurrency must be >= 1");
    bool rules, llm;
    ia_align_judges(c, &rules, &llm);
    if (!rules && !llm)
        return ia_error_set(err, IA_ERR_ARG, "no judge: give --rules FILE, or a teacher with --teacher URL (or local:MODEL.gguf)");
    if (rules && !c->rules) return ia_error_set(err, IA_ERR_ARG, "--judge %s needs --rules FILE", c->judge);
    if (llm && !c->judge_url && !c->teacher)
        return ia_error_set(err, IA_ERR_ARG, "--judge %s needs a teacher: --teacher URL (or local:MODEL.gguf) or --judge-url", c->judge);
    if (llm && !c->proposer_url && !c->teacher)
        return ia_error_set(err, IA_ERR_ARG, "the LLM judge needs a proposer: give --teacher or --proposer-url");
    return IA_OK;
}

void ia_align_judges(const ia_align_config *c, bool *rules, bool *llm) {
    const char *j = c->judge ? c->judge : "auto";
    if (!strcmp(j, "auto")) {
        *rules = c->rules != NULL;
        *llm = c->teacher != NULL || c->judge_url != NULL;
    } else {
        *rules = !strcmp(j, "rules") || !strcmp(j, "rules+llm");
        *llm = !strcmp(j, "llm") || !strcmp(j, "rules+llm");
    }
}
