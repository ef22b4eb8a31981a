/* train_internal.h — pieces of the trainer shared between the files of src/train/ and the tests: the
 * trainable-parameter block, the training model (views, activations, forward/backward over a
 * micro-batch), data loading, batching, AdamW and schedules, checkpoints, adapter/PEFT/merge writers.
 *
 * Dimension legend as in ops.h: N tokens of a micro-batch, E, H, Hkv, D, Dq = H*D, KV = Hkv*D, F,
 * V, L, r (LoRA rank). GGUF order: a matrix with ne = {in, out} is `out` rows of `in` floats.
 */
#ifndef IA_TRAIN_INTERNAL_H
#define IA_TRAIN_INTERNAL_H

#include "train/ops.h"
#include "train/train.h"

/* ---- the seven adaptable linear layers of a block ---- */
enum { TR_Q = 0, TR_K, TR_V, TR_O, TR_GATE, TR_UP, TR_DOWN, TR_NLIN };
extern const char *const tr_lin_short[TR_NLIN]; /* "q", "k", "v", "o", "gate", "up", "down" */
extern const char *const tr_lin_gguf[TR_NLIN];  /* "attn_q", ..., "ffn_down" */
extern const char *const tr_lin_hf[TR_NLIN];    /* "self_attn.q_proj", ..., "mlp.down_proj" */
/* Parses "q,k,v,o,gate,up,down" (also "all", HF names q_proj ...) into a bit mask (bit TR_Q ...);
 * 0 and err set on an unknown name. */
unsigned tr_parse_targets(const char *list, ia_error *err);

/* ---- the trainable-parameter block (llm.c): one allocation holding params | grads | m | v ---- */
typedef struct tr_tensor {
    char name[GGUF_MAX_NAME + 16]; /* GGUF name: "blk.3.attn_q.weight" (full) or "...weight.lora_a" */
    int64_t ne[2];                 /* GGUF order: ne[0] contiguous, ne[1] rows (1 for vectors) */
    size_t off;                    /* offset in floats within each of the four copies */
    uint32_t base_type;            /* full FT: the base tensor's type (the output is written in it) */
} tr_tensor;

typedef struct tr_params {
    int n_tensors;
    tr_tensor *t;                  /* [n_tensors] */
    size_t n;                      /* floats in one copy */
    float *mem;                    /* [4][n] */
    float *p, *g, *m, *v;          /* parameters, gradients, Adam first and second moments: [n] each */
} tr_params;

void tr_params_zero_grad(tr_params *P);

/* One y = W·x (+ b) (+ s·B·(A·x)). */
typedef struct tr_linear {
    ia_weight w;                   /* frozen base view, or (full FT) an F32 view into the params */
    float *dw;                     /* full FT: [out][in] gradient; else NULL */
    const float *b;                /* bias [out] (qwen2 q/k/v) or NULL */
    float *db;                     /* full FT: [out] or NULL */
    float *A, *dA;                 /* LoRA [r][in] or NULL */
    float *B, *dB;                 /* LoRA [out][r] */
} tr_linear;

typedef struct tr_layer {
    const float *attn_norm, *ffn_norm; /* [E] */
    float *d_attn_norm, *d_ffn_norm;   /* full FT: [E]; else NULL */
    tr_linear lin[TR_NLIN];
} tr_layer;

/* What one layer's forward saves for its backward (all [N][...] for the N of the micro-batch). */
typedef struct tr_acts {
    float *xn1;                    /* [N][E] attn_norm(x) */
    float *rstd1;                  /* [N] */
    float *q;                      /* [N][Dq] after bias and RoPE */
    float *k;                      /* [N][KV] after bias and RoPE */
    float *v;                      /* [N][KV] */
    float *lse;                    /* [N][H] log-sum-exp of each attention row */
    float *y;                      /* [N][Dq] attention output (input of wo) */
    float *xmid;                   /* [N][E] residual after attention */
    float *xn2;                    /* [N][E] ffn_norm(xmid) */
    float *rstd2;                  /* [N] */
    float *g, *u;                  /* [N][F] gate and up projections (silu(g) * u, the input of w_down,
                                      is not kept: the backward recomputes it, same bits) */
    float *lu[TR_NLIN];            /* [N][r] LoRA A·x per adapted matrix, else NULL */
} tr_acts;

/* One micro-batch, every sequence flattened into N tokens. Token t attends to start[t]..t (its own
 * example only), at position pos[t]; target[t] is the next token when it carries loss, else -1. */
typedef struct tr_batch {
    int N;
    int32_t *tok, *pos, *start, *target; /* [N] each */
    int n_loss;                    /* tokens with target >= 0 */
    int n_seq;                     /* examples in the batch */
} tr_batch;

typedef struct tr_model_opts {
    ia_train_method method;
    int rank;
    float alpha;
    float dropout;
    unsigned targets;              /* bit mask of TR_Q ... */
    int max_tokens;                /* most tokens N in a micro-batch */
    int max_pos;                   /* most positions of one example (RoPE table rows) */
    bool recompute;                /* keep only layer inputs; recompute a layer in its backward */
    bool bf16;                     /* products with the base weights (forward, input gradient) in bf16 */
} tr_model_opts;

typedef struct tr_model {
    const ia_model *base;
    ia_hparams hp;
    tr_model_opts o;
    float scale;                   /* LoRA alpha / rank */
    tr_params P;
    tr_layer *layers;              /* [L] */
    ia_weight tok_embd;            /* base view or F32 view into the params */
    float *d_tok_embd;             /* full FT [V][E] */
    ia_weight output;              /* == tok_embd when tied */
    float *d_output;               /* full FT: [V][E] (== d_tok_embd when tied) */
    const float *output_norm;      /* [E] */
    float *d_output_norm;          /* full FT [E] */
    float *rope_cos, *rope_sin;    /* [max_pos][n_rot/2] */
    /* activations: one block */
    float *act_mem;
    float *x;                      /* [L+1][N][E] residual stream at each layer's input; [L] final */
    tr_acts *acts;                 /* [L], or [1] shared when recompute */
    float *xnf, *rstdf;            /* [N][E], [N] final norm */
    float *fo;                     /* [N][max(E, F)] forward scratch (projection before residual) */
    /* backward scratch */
    float *dx;                     /* [N][E] gradient of the residual stream */
    float *dxn;                    /* [N][E] */
    float *dy;                     /* [N][Dq] */
    float *dq, *dk, *dv;           /* [N][Dq], [N][KV], [N][KV] */
    float *dg, *du, *dh;           /* [N][F] */
    float *dU;                     /* [N][r] */
    float *xd;                     /* [N][max(E, F, Dq)] dropped-out LoRA input */
    float *delta;                  /* [N][H] */
    float *mm_ws;                  /* tr_matmul_ws_floats(max(E, F, Dq)): matmul forward and backward */
    uint16_t *a16;                 /* bf16 products: a matmul's input or output gradient in bf16; else NULL */
    float *att_ws;                 /* tr_attention_ws_floats(N, H, Hkv, D) */
    float *lora_ws;                /* tr_lora_ws_floats(N, max(E, F, Dq), .., r) (LoRA only) */
    int head_chunk;                /* loss tokens whose logits exist at once (tr_head_chunk) */
    float *head_x, *head_dx;       /* [head_chunk][E] */
    float *logits;                 /* [head_chunk][V] */
    float *loss;                   /* [head_chunk] */
    float *dloss;                  /* [head_chunk] */
    int32_t *head_tgt, *head_idx;  /* [head_chunk] */
    size_t act_bytes;              /* activations + scratch */
    uint64_t seed;                 /* dropout stream */
    uint64_t micro;                /* micro-batch counter (dropout masks depend on it) */
} tr_model;

/* Loss tokens whose logits exist at once: about TR_HEAD_LOGITS_MIB of logits, at least 32 and at
 * most 256 rows (and max_tokens). Each chunk streams the whole output matrix twice (forward and
 * backward), so bigger chunks read it less often; results do not depend on the chunk size. */
#define TR_HEAD_LOGITS_MIB 32
int tr_head_chunk(int n_vocab, int max_tokens);

/* Builds the trainable view over a loaded base: LoRA params (A, B per adapted matrix) or full
 * params (every tensor, f32), activations for o->max_tokens tokens. Parameters are NOT
 * initialised: call tr_model_init_params (or load a checkpoint / adapter). */
int tr_model_init(tr_model *tm, const ia_model *base, const tr_model_opts *o, ia_error *err);
void tr_model_free(tr_model *tm);
/* LoRA: A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming_uniform_(a=sqrt(5))), B = 0; full: the base
 * weights converted to f32. Seeded. */
int tr_model_init_params(tr_model *tm, uint64_t seed, ia_error *err);
/* Forward over a micro-batch; returns the SUM of the loss over its loss tokens. When `backward`,
 * gradients of (dloss_scale * that sum) are ADDED to P.g. */
double tr_model_step(tr_model *tm, const tr_batch *b, float dloss_scale, bool backward);
/* Forward only, logits of every token: [N][V] (tests compare them with the inference pass). */
void tr_model_logits(tr_model *tm, const tr_batch *b, float *logits);
/* Index of a LoRA/param tensor by name, or -1. */
int tr_params_find(const tr_params *P, const char *name);

/* ---- data: JSONL -> token sequences with loss masks ---- */
typedef struct tr_example {
    size_t off;                    /* into tr_dataset.tok / mask */
    int n;                         /* tokens (after truncation to max_len) */
    int n_loss;                    /* tokens that carry loss */
    int line;                      /* source line (1-based) */
} tr_example;

typedef struct tr_dataset {
    tr_example *ex;
    int n_ex;
    int32_t *tok;                  /* all examples' tokens */
    uint8_t *mask;                 /* 1: the token is predicted with loss (assistant / completion) */
    size_t n_tok;
    int n_truncated;               /* examples cut at max_len */
    int n_skipped;                 /* examples with no loss token left after truncation */
    char template_name[32];        /* "chatml", ..., or "plain" */
} tr_dataset;

/* Reads and tokenizes the whole file. template_name: a built-in name, "plain", or NULL (the
 * model's own template, plain when it has none). Any malformed line fails with "file:line: what". */
int tr_dataset_load(tr_dataset *ds, const char *path, const ia_model *m, const char *template_name, int max_len,
                    ia_error *err);
void tr_dataset_free(tr_dataset *ds);

/* A training plan: the micro-batches of every epoch (a pure function of the data and seed). */
typedef struct tr_plan {
    int n_micro;                   /* micro-batches per epoch */
    int *ex_order;                 /* [epochs][n_ex] shuffled example ids */
    int *mb_first;                 /* [epochs][n_ex + 1]: micro-batch mb of epoch e is ex_order[e][first[mb]
                                      .. first[mb + 1]) (n_micro + 1 entries used) */
    int epochs;
    int n_ex;
    int steps_per_epoch;
    int total_steps;
    int max_tokens;                /* largest micro-batch */
} tr_plan;

int tr_plan_build(tr_plan *pl, const tr_dataset *ds, const ia_train_opts *o, ia_error *err);
void tr_plan_free(tr_plan *pl);
/* Fills b (arrays of pl->max_tokens) with micro-batch `mb` of `epoch`. */
void tr_plan_batch(const tr_plan *pl, const tr_dataset *ds, int epoch, int mb, tr_batch *b);
int tr_batch_alloc(tr_batch *b, int max_tokens);
void tr_batch_free(tr_batch *b);

/* ---- optimizer ---- */
float tr_lr_at(const ia_train_opts *o, int step, int total_steps); /* step 0-based */
/* Global L2 norm of the gradients (double accumulation, fixed order). */
double tr_grad_norm(const tr_params *P);
/* One AdamW update (step 1-based for bias correction); grads scaled by clip_scale first. */
void tr_adamw_update(tr_params *P, const ia_train_opts *o, float lr, int step, float clip_scale);

/* ---- outputs ---- */
/* The adapter GGUF (llama.cpp --lora format): lora_a/lora_b f32 tensors only. */
int tr_write_adapter(const tr_model *tm, const char *path, ia_error *err);
/* Full FT: the base file with every tensor replaced by the trained values (in the base's type). */
int tr_write_full_model(const tr_model *tm, const char *path, ia_error *err);

/* ---- checkpoints ---- */
typedef struct tr_ckpt_state {
    int step;                      /* optimizer steps done */
    uint64_t fingerprint;          /* hash of what must match to resume (data, options, base) */
    double first_loss;             /* loss of step 1 and of the last step done (for the result of a run */
    double last_loss;              /* resumed at its end) */
} tr_ckpt_state;
int tr_checkpoint_write(const char *path, const tr_params *P, const tr_ckpt_state *st, ia_error *err);
/* Returns 1 loaded, 0 no file, -1 error (a file that does not match: err says why). */
int tr_checkpoint_read(const char *path, tr_params *P, tr_ckpt_state *st, ia_error *err);

/* FNV-1a over bytes, chained. */
uint64_t tr_hash(uint64_t h, const void *data, size_t n);

#endif /* IA_TRAIN_INTERNAL_H */
