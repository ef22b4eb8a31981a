/* align.h — the IterAlign loop (`iteralign align`): configuration and presets, red-team input,
 * the resumable stage machine over the run store, outputs, and the run summary that `status` and
 * `constitutions` show.
 *
 * Stages, per batch of red-team prompts, each committed in one store transaction before the next
 * begins (so kill -9 anywhere resumes where it stopped):
 *   redteam   the model (base + the latest round's adapter) answers the batch
 *   judge     rules and/or an LLM judge each answer; combined verdicts decide what is flagged
 *   propose   flagged answers become constitutions (a rule's own text, or a teacher's proposal),
 *             registered with provenance; near-duplicates merged (improved)
 *   revise    each flagged prompt is answered again with its constitutions in context (N samples)
 *   rejudge   (improved) every candidate is judged again; the first that passes is chosen
 *   train     the chosen revisions (original prompt -> revision, no constitution) fine-tune the
 *             model, continuing from the last round's adapter
 * Run-level stages: eval_before / eval_after (the judged violation rate on held-out prompts, with
 * the same decoding), finalize (merged GGUF and output files).
 */
#ifndef IA_ALIGN_H
#define IA_ALIGN_H

#include "iteralign.h"
#include "judge/judge.h"
#include "store/store.h"

#include <jansson.h>

/* ---- configuration ---------------------------------------------------------------------- */
typedef struct ia_strv {
    char **v;
    int n;
} ia_strv;

typedef struct ia_align_config {
    /* inputs */
    char *base;             /* base model GGUF */
    ia_strv redteam;        /* red-team prompt files (JSONL, JSON, CSV or text) */
    ia_strv heldout;        /* held-out prompt files (measured before/after, never trained on) */
    char *format;           /* auto | jsonl | json | csv | text */
    char *column;           /* CSV column holding the prompt (NULL: prompt, goal, question, ...) */
    float heldout_frac;     /* without --heldout: this share of the red-team prompts is held out */
    int max_prompts;        /* use at most this many red-team prompts (0: all) */
    int max_heldout;        /* use at most this many held-out prompts (0: all) */
    char *present;          /* auto | raw | chat | hh: how prompts reach the base model */
    char *chat_template;    /* template name for present=chat (NULL: the model's own) */
    char *system;           /* system message for present=chat (NULL: none) */
    /* the loop */
    char *preset;           /* improved | paper */
    int batch_size;
    int max_batches;        /* 0: all */
    int stop_window;        /* stop after this many consecutive batches flag nothing (0: never) */
    /* red-team decoding (also the held-out measurement's) */
    float temperature, top_p, min_p, frequency_penalty, repeat_penalty;
    int top_k, max_tokens;
    ia_strv stop;           /* stop strings (at most IA_MAX_STOP) */
    uint64_t seed;
    /* judges */
    char *judge;            /* auto | rules | llm | rules+llm */
    char *rules;            /* rules file */
    char *combine;          /* any | all */
    char *judge_style;      /* json (improved) | paper (the released code's "Negative" test) */
    char *judge_format;     /* json_object | json_schema | none (response_format for the json style) */
    int judge_max_tokens;
    /* teachers (URL http(s)://.../v1 or local:PATH.gguf) */
    char *teacher, *teacher_model;
    char *judge_url, *judge_model, *proposer_url, *proposer_model;
    char *api_key_env;      /* environment variable holding the API key */
    int teacher_concurrency, teacher_retries;
    float teacher_timeout;
    /* proposals */
    char *proposer_style;   /* json | paper */
    int proposer_max_tokens;
    bool registry;          /* accumulate constitutions across batches (merge near-duplicates) */
    float merge_threshold;  /* token-set Jaccard at or above which two constitutions are one */
    /* revisions */
    int revise_samples;     /* candidates per flagged prompt (best of N) */
    float revise_temperature; /* < 0: the red-team decoding */
    char *revise_style;     /* auto | prefix | insert | system */
    bool rejudge;           /* judge every candidate; train only on one that passes */
    /* training */
    char *train_method;     /* lora | full | none */
    char *train_data;       /* batch (this batch's examples) | all (every example so far) */
    bool train_continue;    /* start each round from the last round's weights */
    int lora_rank;
    float lora_alpha;
    char *lora_targets;
    int epochs, train_batch, grad_accum, max_len;
    float lr, weight_decay, warmup;
    char *schedule;         /* constant | linear | cosine */
    char *train_compute;    /* f32 | bf16: the base-weight products of training (ia_train_opts.bf16) */
    /* measurement */
    bool measure;           /* measure the held-out violation rate before and after */
    int measure_samples;    /* samples per held-out prompt */
    bool measure_fluency;   /* the base model's NLL per token of the answers, before and after */
    char *eval;             /* evaluation tasks run before and after (src/eval: truthfulqa_mc1, hhh,
                               refusal_rate, ...; NULL: none) */
    int eval_limit;         /* the first N items of each task (0: all) */
    /* resources (may change between resumes) */
    int threads, parallel;
} ia_align_config;

/* Defaults of the improved preset. */
void ia_align_config_defaults(ia_align_config *c);
/* Applies a preset's values to the fields not in `explicit_set` (names of fields set by the user;
 * may be NULL). Returns IA_ERR_ARG for an unknown preset. */
int ia_align_config_preset(ia_align_config *c, const char *preset, const ia_strv *explicit_set, ia_error *err);
void ia_align_config_free(ia_align_config *c);

/* Field table: every option is a field; the CLI builds one flag per field (name with '-'). */
typedef enum ia_cfg_type { IA_CFG_STR, IA_CFG_STRV, IA_CFG_INT, IA_CFG_FLOAT, IA_CFG_BOOL, IA_CFG_U64 } ia_cfg_type;
typedef struct ia_cfg_field {
    const char *name;       /* "batch_size" (flag --batch-size) */
    ia_cfg_type type;
    size_t offset;
    bool results;           /* changing it would mix results: refused on resume */
    const char *help;
} ia_cfg_field;

const ia_cfg_field *ia_align_config_fields(int *n);
const ia_cfg_field *ia_align_config_field(const char *name); /* NULL if unknown */
/* Sets a field from text (strv: appends). err names the field. */
int ia_align_config_set(ia_align_config *c, const ia_cfg_field *f, const char *value, ia_error *err);
/* The value of a field as text (ia_free). */
char *ia_align_config_get(const ia_align_config *c, const ia_cfg_field *f);
json_t *ia_align_config_to_json(const ia_align_config *c);
int ia_align_config_from_json(ia_align_config *c, json_t *o, ia_error *err);
/* Checks values and combinations (no file access). */
int ia_align_config_validate(const ia_align_config *c, ia_error *err);
/* Which judges the configuration uses (judge=auto: rules when --rules is given, an LLM when a
 * teacher is). */
void ia_align_judges(const ia_align_config *c, bool *rules, bool *llm);

/* ---- red-team input --------------------------------------------------------------------- */
typedef struct ia_prompt {
    char *text;             /* the (last) user turn */
    char *messages;         /* JSON array of {role, content} when the input gave a conversation */
    char *source;           /* file name */
    int line;               /* 1-based line (JSONL/text/CSV record start) or array index + 1 */
} ia_prompt;

/* Reads prompts: JSONL ("prompt", or "messages", or an hh-rlhf "chosen" transcript's first Human
 * turn), JSON (an array of strings or such objects), CSV (a header row; `column` or the first of
 * prompt/goal/behavior/question/instruction/text), or text (one prompt per line). format: auto
 * (by extension), jsonl, json, csv, text. Appends to *out / *n. Errors name file:line. */
int ia_prompts_read(const char *path, const char *format, const char *column, ia_prompt **out, int *n, ia_error *err);
void ia_prompts_free(ia_prompt *p, int n);

/* ---- presentation ----------------------------------------------------------------------- */
typedef enum ia_present_mode { IA_PRESENT_RAW = 0, IA_PRESENT_CHAT, IA_PRESENT_HH } ia_present_mode;
typedef struct ia_presenter {
    ia_present_mode mode;
    ia_chat_template_id tmpl;
    const char *system;
} ia_presenter;

/* Resolves the presentation options against the model (auto: chat when it has a recognised
 * template, else raw). */
int ia_presenter_init(ia_presenter *p, const ia_align_config *c, const ia_model *m, ia_error *err);
/* The text the base model sees for a prompt (ia_free). constitutions (may be NULL/0) are added as
 * style says: prefix (before the prompt), insert (the released code: " " + text at the end of the
 * paragraph before the final cue), system (a system message in chat mode). */
char *ia_present(const ia_presenter *p, const ia_prompt *pr, const char *const *constitutions, int n_const,
                 const char *style, ia_error *err);

/* ---- the run ------------------------------------------------------------------------------ */
typedef struct ia_align_progress {
    const char *stage;      /* "redteam", "judge", ..., "eval_before", "finalize" */
    int batch;              /* 0-based; -1 for run-level stages */
    int n_batches;
    int done, total;        /* units of the stage (answers, calls, steps) */
    double stage_elapsed_s;
} ia_align_progress;

typedef struct ia_align_callbacks {
    void (*progress)(void *ud, const ia_align_progress *p);
    void (*log)(void *ud, const char *line); /* one line per stage and notable event */
    void *ud;
} ia_align_callbacks;

/* Runs (or resumes) the run in dir. cfg: the user's options (for a new run, the whole
 * configuration; for a resume, compared with the stored one: a change to a field that would mix
 * results is refused, naming the fields). explicit_set: names of the fields the user gave. Input
 * errors (a missing file, a malformed line, a base model that is not a model) are reported before
 * the run folder is created or touched. */
int ia_align_run(const char *dir, const ia_align_config *cfg, const ia_strv *explicit_set,
                 const ia_align_callbacks *cb, ia_error *err);

/* ---- status ------------------------------------------------------------------------------- */
/* The run's state as JSON: config, stage, counts, rates (before/after), checkpoints. Opens the
 * store read-only-ish (it never writes). */
json_t *ia_align_status(const char *dir, ia_error *err);
/* The constitution registry with provenance, as JSON (what constitutions.json holds). */
json_t *ia_align_constitutions(const char *dir, ia_error *err);

/* ---- string vectors ---- */
int ia_strv_push(ia_strv *v, const char *s);
void ia_strv_free(ia_strv *v);
bool ia_strv_has(const ia_strv *v, const char *s);

#endif /* IA_ALIGN_H */
