/* eval.h — model evaluations: TruthfulQA MC1/MC2 (lm-evaluation-harness protocol), TruthfulQA
 * true/false and BIG-bench HHH A/B (the Dromedary protocol IterAlign's paper reports, with the
 * released script's half-candidates scoring as a labelled option), HHH by log-likelihood
 * (lm-eval), harmful_rate and refusal_rate on generated answers; the task-file loaders with
 * located errors; the log-likelihood scorer that computes a shared primer's KV cache once; and the
 * results as JSON for auditing.
 *
 * Protocol details and the numbers they reproduce are in src/eval/README.md. */
#ifndef IA_EVAL_H
#define IA_EVAL_H

#include "iteralign.h"

#include <jansson.h>

/* ---- task data ------------------------------------------------------------------------------ */

/* One multiple-choice item. */
typedef struct ia_mc_item {
    char *input;        /* the question (TruthfulQA) or conversation (HHH) */
    char *subset;       /* HHH subset ("harmless", ...); NULL for TruthfulQA */
    char *source;       /* the file it came from */
    int line;           /* 1-based line where the item starts in that file */
    int index;          /* 0-based position in that file */
    int n_choices;
    char **choices;
    int *labels;        /* 1: true / preferred, 0: false / rejected */
} ia_mc_item;

typedef struct ia_mc_set {
    int n;
    ia_mc_item *items;
    char *sources;      /* the files read, "; "-separated */
    char sha256[65];    /* of the first file (a directory: of its first task.json) */
} ia_mc_set;

void ia_mc_set_free(ia_mc_set *s);

/* TruthfulQA's mc_task.json: a JSON array of {"question", "mc1_targets", "mc2_targets"} where a
 * targets value is {answer: 0|1, ...} (the TruthfulQA repository's file) or {"choices": [...],
 * "labels": [...]} (the Hugging Face dataset's rows). targets: "mc1_targets" (exactly one true
 * answer) or "mc2_targets" (at least one). An item may instead give "choices" and "target" (the true
 * choice's text) for an MC1-style question. Errors name file:line and the question; nothing is
 * returned unless every item is valid. */
int ia_eval_load_truthfulqa(const char *path, const char *targets, ia_mc_set *out, ia_error *err);

/* Two-choice preference data for HHH: a BIG-bench task.json ({"examples": [{"input",
 * "target_scores": {response: 1|0}, "target"?}]}), a folder of them (BIG-bench's hhh_alignment
 * layout <dir>/<subset>/task.json, or <dir>/task.json), or a JSONL file of {"chosen", "rejected"}
 * transcripts (hh-rlhf: "\n\nHuman: ...\n\nAssistant: ..." sharing all but the last assistant turn)
 * or of {"prompt", "chosen", "rejected"} responses. The subset is the task.json's folder name, or a
 * line's "subset" field, or the JSONL file's base name. The preferred response is listed first.
 * exact_choices > 0 requires that many responses per item (2 for the A/B protocol). */
int ia_eval_load_hhh(const char *path, int exact_choices, ia_mc_set *out, ia_error *err);

/* Prompts for generation tasks: JSONL with a string "prompt" per line ("id" optional). */
typedef struct ia_prompt_set {
    int n;
    char **prompts;
    char **ids;         /* "id" field or "<file>:<line>" */
    char *source;
    char sha256[65];
} ia_prompt_set;

int ia_eval_load_prompts(const char *path, ia_prompt_set *out, ia_error *err);
void ia_prompt_set_free(ia_prompt_set *s);

/* Finds a shipped data file: rel as given when it exists (relative to the working directory), else
 * next to the running executable (<exe dir>/rel). Returns out (filled) or NULL. */
const char *ia_eval_data_path(const char *rel, char *out, size_t cap);

/* ---- log-likelihood scoring with a shared prefix -------------------------------------------- */

typedef struct ia_lls_opts {
    const char *prefix;   /* text every context starts with (a few-shot primer), or NULL */
    bool cache_prefix;    /* decode the prefix once and copy its KV into each sequence's slot */
    bool share_contexts;  /* a request that repeats the previous request's context copies its KV */
    int n_parallel;       /* sequences per forward pass (0: 16) */
    int n_batch;          /* tokens per forward pass (0: 256) */
    void (*progress)(void *ud, int done, int total);
    void *progress_ud;
} ia_lls_opts;

typedef struct ia_lls_stats {
    int prefix_tokens;    /* tokens of the prefix (decoded once when cached) */
    long tokens_decoded;  /* tokens run through the model, prefix included */
    long tokens_reused;   /* positions copied from the prefix instead of decoded */
    double seconds;
} ia_lls_stats;

/* Log-likelihood of each continuation given its context, with ia_score's (lm-eval) semantics: the
 * pair is tokenized as context and context+continuation, and the continuation is what follows the
 * context's tokens. With cache_prefix, each request reuses the KV of the longest run of leading
 * tokens it shares with the prefix tokenized alone, which gives the same numbers as decoding from
 * scratch (a position's K/V depend only on the tokens up to it). stats may be NULL. */
int ia_eval_loglik(ia_model *m, const ia_score_request *reqs, int n, const ia_lls_opts *opts, ia_score_result *out,
                   ia_lls_stats *stats, ia_error *err);

/* ---- prompts of the protocols (exposed for tests and the reference) ------------------------- */

/* lm-eval's TruthfulQA context: the 6-shot QA primer, "\n\nQ: " question "\nA:". ia_free. */
char *ia_eval_tqa_context(const char *question);
const char *ia_eval_tqa_primer(void);
/* The Dromedary true/false prompt for one candidate answer (ends "Sure! The given answer is"). */
char *ia_eval_tf_context(const char *meta_prompt, const char *assistant_tag, const char *question, const char *answer);
/* The Dromedary HHH prompt with options A) first, B) second (ends "Sure! The correct option would be"). */
char *ia_eval_hhh_context(const char *meta_prompt, const char *assistant_tag, const char *input, const char *first,
                          const char *second);
/* The built-in meta prompt (our own words, shaped like Dromedary's: a header, then "### User"). */
const char *ia_eval_default_meta_prompt(void);

/* Dromedary's argmax: among the maxima of v, the one picked by the SHA-256 of v's float64 bytes
 * modulo their count (a deterministic tie-break). */
int ia_eval_argmax_hash(const double *v, int n);

/* XSTest's string-match refusal rule: the answer, lower-cased and trimmed, starts with a refusal
 * phrase ("sorry", "i cannot", "as an ai", ...). Curly apostrophes count as straight ones. */
bool ia_eval_is_refusal(const char *answer);

/* ---- tasks ---------------------------------------------------------------------------------- */

typedef enum ia_eval_task {
    IA_EVAL_TQA_MC1 = 0, /* truthfulqa_mc1 */
    IA_EVAL_TQA_MC2,     /* truthfulqa_mc2 */
    IA_EVAL_TQA_TF,      /* truthfulqa_tf */
    IA_EVAL_HHH,         /* hhh (A/B, both orders) */
    IA_EVAL_HHH_MC,      /* hhh_mc (lm-eval: log-likelihood of " " + response) */
    IA_EVAL_HARMFUL,     /* harmful_rate */
    IA_EVAL_REFUSAL,     /* refusal_rate */
    IA_EVAL_TASK_COUNT
} ia_eval_task;

const char *ia_eval_task_name(ia_eval_task t);
/* Parses "truthfulqa_mc1,hhh,..." ("all": every task; "mc": the log-likelihood ones) into sel[]. */
int ia_eval_tasks_parse(const char *list, bool sel[IA_EVAL_TASK_COUNT], ia_error *err);

/* A classifier of generated answers: harmful_rate's judge or refusal_rate's detector. */
typedef struct ia_eval_judge {
    const char *name;   /* recorded with the results: "strmatch", "rules:<file>", "llm:<model>" */
    /* Labels n answers: flagged[i] (harmful / a refusal), usable[i] (false: no decision) and
     * reasons[i] (ia_malloc'd, may be left NULL). Returns IA_OK or an error code. */
    int (*classify)(void *ud, const char *const *prompts, const char *const *answers, int n, bool *flagged,
                    bool *usable, char **reasons, ia_error *err);
    void *ud;
} ia_eval_judge;

/* The XSTest-style string-match refusal detector (no state). */
const ia_eval_judge *ia_eval_judge_strmatch(void);

typedef enum ia_eval_format {
    IA_EVAL_FORMAT_AUTO = 0, /* the model's chat template when it has one, else PLAIN */
    IA_EVAL_FORMAT_PLAIN,    /* "\n\nHuman: <prompt>\n\nAssistant:" (hh-rlhf; the paper's base models) */
    IA_EVAL_FORMAT_CHAT,     /* the chat template (chat_template or the model's) */
} ia_eval_format;

typedef struct ia_eval_config {
    const char *truthfulqa_path;  /* NULL: data/eval/truthfulqa_v1_mc_task.json */
    const char *const *hhh_paths; /* NULL: data/eval/hhh_sample */
    int n_hhh_paths;
    const char *redteam_path;     /* NULL: data/eval/redteam_prompts.jsonl */
    const char *harmless_path;    /* NULL: data/eval/harmless_prompts.jsonl */
    int limit;                    /* the first N items of each task (0: all) */
    bool paper_compat;            /* truthfulqa_tf: score the first ceil(k/2) candidates only, as the
                                     released evaluation script does (labelled in every output) */
    bool no_prefix_cache;         /* decode shared primers again for every request (benchmarking) */
    bool no_context_sharing;      /* decode each choice's context again too (benchmarking) */
    const char *meta_prompt;      /* Dromedary-protocol meta prompt (NULL: built-in) */
    const char *assistant_tag;    /* the "### <tag>" cue after it (NULL: "Assistant") */
    int hhh_max_seq_len;          /* Dromedary truncation: inputs/responses keep their last
                                     (max_seq_len - 256) / 3 tokens (0: 1536, as its README runs) */
    int n_parallel;               /* sequences per forward (0: 16 scoring, 32 generation) */
    /* Generation (harmful_rate, refusal_rate). */
    ia_eval_format format;
    ia_chat_template_id chat_template; /* UNKNOWN: detect from the model */
    const char *system;           /* system message for the chat format (NULL: none) */
    ia_sampling sampling;         /* default: greedy, 128 tokens, stop "\n\n" in the plain format */
    const ia_eval_judge *harm_judge;    /* required for harmful_rate */
    const ia_eval_judge *refusal_judge; /* NULL: string match */
    int n_examples;               /* answers kept in the summary's "examples" (default 3) */
    void (*progress)(void *ud, const char *task, int done, int total);
    void *progress_ud;
} ia_eval_config;

ia_eval_config ia_eval_config_default(void);

/* Runs the selected tasks on m and returns the results (jansson; json_decref):
 *   {"format": "iteralign-eval/1", "model": ..., "tasks": {name: {"protocol", "metric", "value", "n",
 *    "data", "data_sha256", ... task-specific summary ..., "items": [per-item scores]}}}
 * Every task file is loaded and checked before anything is scored. */
int ia_eval_run(ia_model *m, const ia_eval_config *cfg, const bool sel[IA_EVAL_TASK_COUNT], json_t **out,
                ia_error *err);

/* The headline numbers of a result: for each task, (metric name, value, n) triples such as
 * ("truthfulqa_mc2/acc", 0.41, 817), ("hhh/acc_harmless", ...). Returns the count; names are
 * ia_malloc'd (free with ia_eval_metrics_free). */
typedef struct ia_eval_metric {
    char *name;
    double value;
    int n;
} ia_eval_metric;
int ia_eval_metrics(const json_t *results, ia_eval_metric **out);
void ia_eval_metrics_free(ia_eval_metric *m, int n);

/* Serialises JSON through the library's allocator (ia_free the result); indent 0: compact. */
char *ia_eval_json_dump(const json_t *v, int indent);

/* ---- for the alignment loop (src/align) ------------------------------------------------------ */
struct ia_store;
/* Records a result's headline numbers in the run store's metrics table: name "<task>/<metric>",
 * phase as given ("before" for the base model, "after" for the model after a round), batch = the
 * round (0 before the first), value and n. Re-recording the same (name, phase, round) replaces it. */
int ia_eval_store_metrics(struct ia_store *s, const char *phase, int round, const json_t *results, ia_error *err);
/* `align --eval LIST` in one call: runs the tasks of task_list on m (cfg may be NULL: defaults),
 * records the headline numbers with ia_eval_store_metrics, and writes the full results (every item)
 * to <run_dir>/eval/<phase>-round-NNN.json. *summary (may be NULL) receives a one-line summary to
 * log ("truthfulqa_mc2/acc 0.3712, hhh/acc 0.5000"; ia_free). */
int ia_eval_for_run(ia_model *m, const ia_eval_config *cfg, const char *task_list, struct ia_store *s,
                    const char *run_dir, const char *phase, int round, char **summary, ia_error *err);

#endif /* IA_EVAL_H */
