/* iteralign.h — the public C API of iteralign: GGUF models, tokenizers, chat templates, sampling,
 * batched generation and log-likelihood scoring (IterAlign alignment runs build on these).
 *
 * Conventions
 *  - Every call that can fail takes an `ia_error *err` (may be NULL) and returns a result code
 *    (IA_OK == 0) or NULL; on failure err->code and err->msg say what went wrong, naming the file,
 *    field or line. Library code never exits the process.
 *  - Objects come in init/free (or load/free) pairs; free(NULL) is a no-op.
 *  - Strings returned to the caller are allocated with ia_malloc and released with ia_free.
 *  - Token ids are int32_t. Lengths are in bytes unless stated.
 */
#ifndef ITERALIGN_H
#define ITERALIGN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define IA_VERSION "0.1.0"

/* ---- result codes and errors ------------------------------------------------------------- */
typedef enum ia_result {
    IA_OK = 0,
    IA_ERR_IO,          /* a file could not be opened, read, mapped or written */
    IA_ERR_FORMAT,      /* input is malformed (corrupt GGUF, bad JSON line, ...) */
    IA_ERR_UNSUPPORTED, /* well-formed but not supported (architecture, tensor type, ...) */
    IA_ERR_NOMEM,       /* an allocation failed */
    IA_ERR_ARG,         /* the caller passed an invalid argument */
    IA_ERR_RANGE,       /* a value is out of range (context full, token id too large, ...) */
    IA_ERR_NET,         /* network / HTTP failure */
    IA_ERR_TIMEOUT,     /* a deadline passed */
    IA_ERR_DB,          /* run store (SQLite) failure */
    IA_ERR_INTERNAL,    /* a bug: an invariant did not hold */
} ia_result;

#define IA_ERROR_MSG_MAX 512
typedef struct ia_error {
    int code;                     /* ia_result */
    char msg[IA_ERROR_MSG_MAX];   /* one line, no trailing newline */
} ia_error;

const char *ia_result_name(int code); /* "IA_ERR_FORMAT", ... */

/* ---- allocation (every allocation in the library goes through these) --------------------- */
void *ia_malloc(size_t n);
void *ia_calloc(size_t count, size_t size);
void *ia_realloc(void *p, size_t n);
void  ia_free(void *p);
char *ia_strdup(const char *s);
char *ia_strndup(const char *s, size_t n);

/* ---- threads -------------------------------------------------------------------------------- */
void ia_set_threads(int n); /* n <= 0: one per core */
int  ia_get_threads(void);

/* ---- models --------------------------------------------------------------------------------- */
typedef struct ia_model ia_model;
typedef struct ia_tokenizer ia_tokenizer;

/* Loads a GGUF model (memory-mapped, zero-copy). Architectures: llama, qwen2. */
ia_model *ia_model_load(const char *path, ia_error *err);
void ia_model_free(ia_model *m);
const ia_tokenizer *ia_model_tokenizer(const ia_model *m);
int ia_model_n_vocab(const ia_model *m);
int ia_model_n_ctx_train(const ia_model *m);
const char *ia_model_arch(const ia_model *m);
const char *ia_model_chat_template(const ia_model *m); /* tokenizer.chat_template or NULL */

/* LoRA adapters applied at run time, without merging: y = W·x + scale·(alpha/rank)·B·(A·x) for
 * every adapted matrix (llama.cpp's adapter GGUF format). Several adapters add up. Contexts made
 * before a change see it at their next decode. */
int  ia_model_lora_add(ia_model *m, const char *adapter_path, float scale, ia_error *err);
void ia_model_lora_clear(ia_model *m);

/* ---- tokenizer ------------------------------------------------------------------------------ */
/* Encodes text. add_special: add BOS/EOS as the model metadata says. parse_special: text such as
 * "<|im_start|>" becomes the special token instead of plain text. On success returns the number of
 * ids and sets *out_ids (free with ia_free); on failure returns -1 and fills err. */
int ia_tokenizer_encode(const ia_tokenizer *t, const char *text, size_t len, bool add_special,
                        bool parse_special, int32_t **out_ids, ia_error *err);
/* Text of the given ids (special tokens rendered only when `special`). Free with ia_free. */
char *ia_tokenizer_decode(const ia_tokenizer *t, const int32_t *ids, int n, bool special);
int  ia_tokenizer_n_vocab(const ia_tokenizer *t);
int32_t ia_tokenizer_bos(const ia_tokenizer *t);  /* -1 if none */
int32_t ia_tokenizer_eos(const ia_tokenizer *t);  /* -1 if none */
bool ia_tokenizer_add_bos(const ia_tokenizer *t);
bool ia_tokenizer_is_eog(const ia_tokenizer *t, int32_t id); /* end of generation: eos, eot, ... */

/* ---- chat templates ------------------------------------------------------------------------- */
typedef enum ia_chat_template_id {
    IA_CHAT_TEMPLATE_UNKNOWN = 0,
    IA_CHAT_TEMPLATE_CHATML,
    IA_CHAT_TEMPLATE_LLAMA2,
    IA_CHAT_TEMPLATE_LLAMA2_SYS,
    IA_CHAT_TEMPLATE_LLAMA3,
    IA_CHAT_TEMPLATE_MISTRAL_V1,
    IA_CHAT_TEMPLATE_MISTRAL_V3,
    IA_CHAT_TEMPLATE_MISTRAL_V7,
    IA_CHAT_TEMPLATE_ZEPHYR,
    IA_CHAT_TEMPLATE_GEMMA,
    IA_CHAT_TEMPLATE_PHI3,
    IA_CHAT_TEMPLATE_VICUNA,
    IA_CHAT_TEMPLATE_LLAMA2_SYS_BOS,    /* "<s>[INST] " reopens turns */
    IA_CHAT_TEMPLATE_LLAMA2_SYS_STRIP,  /* contents trimmed (the real Llama-2-chat template) */
    IA_CHAT_TEMPLATE_MISTRAL_V3_TEKKEN, /* v3 without the spaces */
    IA_CHAT_TEMPLATE_MISTRAL_V7_TEKKEN, /* v7 without the spaces */
    IA_CHAT_TEMPLATE_VICUNA_ORCA,       /* "SYSTEM: " prefix */
    IA_CHAT_TEMPLATE_COUNT
} ia_chat_template_id;

typedef struct ia_chat_msg {
    const char *role;    /* "system", "user" or "assistant" */
    const char *content;
} ia_chat_msg;

ia_chat_template_id ia_chat_template_detect(const char *jinja_source); /* UNKNOWN if no match */
ia_chat_template_id ia_chat_template_from_name(const char *name);      /* UNKNOWN if no match */
const char *ia_chat_template_name(ia_chat_template_id id);
/* Formats messages; add_assistant appends the assistant prefix. Returns a string to ia_free,
 * or NULL (err set) for an unknown template. The result never starts with a BOS token text. */
char *ia_chat_apply(ia_chat_template_id id, const ia_chat_msg *msgs, int n_msgs, bool add_assistant,
                    ia_error *err);
/* As ia_chat_apply, with the model's EOS token text (e.g. "</s>") for templates whose turns end
 * with eos_token (zephyr: Zephyr-7B, TinyLlama-chat). NULL: the template's default. */
char *ia_chat_apply_eos(ia_chat_template_id id, const ia_chat_msg *msgs, int n_msgs, bool add_assistant,
                        const char *eos_text, ia_error *err);

/* ---- sampling ------------------------------------------------------------------------------- */
#define IA_MAX_STOP 8
typedef struct ia_sampling {
    float temperature;        /* 0 = greedy */
    int   top_k;              /* 0 = off */
    float top_p;              /* 1 = off */
    float min_p;              /* 0 = off */
    float repeat_penalty;     /* 1 = off; llama.cpp style, over the last repeat_last_n tokens */
    int   repeat_last_n;      /* window for repeat_penalty (-1: whole text), default 64 */
    float frequency_penalty;  /* vLLM semantics: logit -= penalty * count(token in generated text) */
    float presence_penalty;   /* logit -= penalty if the token occurs in the generated text */
    uint64_t seed;            /* same seed, same output */
    int   max_tokens;         /* new tokens at most */
    int   n_stop;
    const char *stop[IA_MAX_STOP]; /* stop strings; the text is cut before the match */
    bool  ignore_eos;
} ia_sampling;

ia_sampling ia_sampling_default(void); /* greedy, max_tokens 256, no penalties */

/* ---- batched generation and scoring --------------------------------------------------------- */
typedef enum ia_finish {
    IA_FINISH_LENGTH = 0, /* max_tokens reached */
    IA_FINISH_STOP,       /* a stop string matched */
    IA_FINISH_EOS,        /* the model produced an end-of-generation token */
    IA_FINISH_CONTEXT,    /* the context window is full */
} ia_finish;

typedef struct ia_completion {
    char    *text;          /* generated text (stop string excluded); ia_free */
    int32_t *tokens;        /* generated ids (including the ones covering a stop string); ia_free */
    int      n_tokens;
    int      n_prompt_tokens;
    ia_finish finish;
} ia_completion;

typedef struct ia_generate_opts {
    ia_sampling sampling;   /* per prompt i the seed used is sampling.seed + i */
    bool add_special;       /* add BOS as the model says (default true) */
    bool parse_special;     /* parse special-token text in prompts (default false) */
    int  n_parallel;        /* sequences decoded together (0 = all) */
    int  n_ctx;             /* context per sequence (0 = min(model, 4096)) */
    void (*progress)(void *ud, int done, int total);
    void *progress_ud;
} ia_generate_opts;

ia_generate_opts ia_generate_opts_default(void);

/* Generates a completion for each of n prompts, decoding the sequences together in batches (one
 * forward per step for all active sequences). out[i] must be released with ia_completion_clear.
 * Greedy results equal n separate single-prompt runs. */
int ia_generate(ia_model *m, const char *const *prompts, int n, const ia_generate_opts *opts,
                ia_completion *out, ia_error *err);
/* As ia_generate, from already tokenized prompts. */
int ia_generate_tokens(ia_model *m, const int32_t *const *prompt_ids, const int *n_prompt_ids, int n,
                       const ia_generate_opts *opts, ia_completion *out, ia_error *err);
void ia_completion_clear(ia_completion *c);

typedef struct ia_score_request {
    const char *context;       /* conditioning text (BOS added as the model says) */
    const char *continuation;  /* scored text */
} ia_score_request;

typedef struct ia_score_result {
    double  logprob;           /* sum of log P(continuation token | preceding) */
    int     n_tokens;          /* continuation tokens */
    float  *token_logprobs;    /* [n_tokens]; ia_free */
    bool    is_greedy;         /* every continuation token was the argmax */
} ia_score_result;

/* Log-likelihood of each continuation given its context (lm-eval-harness semantics: the pair is
 * tokenized as context then context+continuation and split where the context ends). Batched. */
int ia_score(ia_model *m, const ia_score_request *reqs, int n, ia_score_result *out, ia_error *err);
void ia_score_result_clear(ia_score_result *r);

#ifdef __cplusplus
}
#endif
#endif /* ITERALIGN_H */
