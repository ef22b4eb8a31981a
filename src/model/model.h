/* model.h — Llama-family models from GGUF (architectures llama and qwen2): hyper-parameters,
 * weight views into the mapped file, the KV-cached batched forward pass, and the random-weight
 * model writer.
 *
 * Dimension legend: E n_embd, H n_head, Hkv n_head_kv, D head_dim (E/H unless key_length says),
 * F n_ff, V n_vocab, L n_layer, N tokens in a batch, S slots (sequences), C context per slot.
 */
#ifndef IA_MODEL_H
#define IA_MODEL_H

#include "gguf/gguf.h"
#include "tensor/tensor.h"
#include "tokenizer/tokenizer.h"

typedef enum ia_rope_type { IA_ROPE_NORM = 0, IA_ROPE_NEOX = 2 } ia_rope_type;

typedef struct ia_hparams {
    char arch[16];          /* "llama" or "qwen2" */
    int n_vocab;            /* V: rows of token_embd */
    int n_ctx_train;
    int n_embd;             /* E */
    int n_layer;            /* L */
    int n_head;             /* H */
    int n_head_kv;          /* Hkv (GQA: H % Hkv == 0) */
    int head_dim;           /* D */
    int n_ff;               /* F */
    int n_rot;              /* rotated dims per head (== D for llama) */
    float rms_eps;
    float rope_base;        /* rope.freq_base (10000 default) */
    float rope_freq_scale;  /* 1 / rope.scaling.factor for linear scaling (1 = none) */
    ia_rope_type rope_type; /* NORM for llama (adjacent pairs), NEOX for qwen2 (offset n_rot/2) */
} ia_hparams;

/* A view of a 2-D weight in the mapping: n_out rows of n_in elements of `type`. */
typedef struct ia_weight {
    const void *data;       /* NULL if absent */
    uint32_t type;
    int n_in;               /* ne[0] */
    int n_out;              /* ne[1] */
    const char *name;
} ia_weight;

typedef struct ia_layer {
    const float *attn_norm; /* [E] */
    ia_weight wq;           /* [H*D][E] */
    ia_weight wk;           /* [Hkv*D][E] */
    ia_weight wv;           /* [Hkv*D][E] */
    ia_weight wo;           /* [E][H*D] */
    const float *bq, *bk, *bv; /* [H*D], [Hkv*D], [Hkv*D] (qwen2), else NULL */
    const float *ffn_norm;  /* [E] */
    ia_weight w_gate;       /* [F][E] */
    ia_weight w_up;         /* [F][E] */
    ia_weight w_down;       /* [E][F] */
} ia_layer;

struct ia_model {
    char *path;
    gguf_file *gguf;        /* owns the mapping all weights point into */
    ia_hparams hp;
    ia_weight tok_embd;     /* [V][E] */
    const float *output_norm; /* [E] */
    ia_weight output;       /* [V][E]; == tok_embd when tied (no output.weight) */
    bool tied_output;
    const float *rope_freqs; /* [n_rot/2] divisors (Llama 3), or NULL */
    ia_layer *layers;       /* [L] */
    ia_tokenizer *tok;
    char *chat_template;    /* tokenizer.chat_template or NULL */
    float *owned;           /* one block holding the F16/BF16 (or misaligned F32) norms, biases and
                               rope_freqs converted to f32 at load; the pointers above point into it */
    struct ia_lora_set *lora; /* run-time LoRA adapters (model/lora.h), NULL: none */
    bool packed;            /* the matrices were given to ia_qpack_add (released at free) */
};

/* ---- inference context: KV cache for S slots + workspace for N tokens ---- */
typedef struct ia_context ia_context;

typedef struct ia_batch {
    int n_tokens;           /* N <= n_batch of the context */
    const int32_t *token;   /* [N] */
    const int32_t *pos;     /* [N] position of each token in its slot */
    const int32_t *slot;    /* [N] which sequence (KV cache slot) */
    const bool *logits;     /* [N] compute logits for this token (NULL: only the last token) */
} ia_batch;

/* Allocates everything up front (KV cache S x L x C x Hkv*D for K and V, workspace for n_batch
 * tokens), so decoding never allocates. The cache holds f32 (ia_context_init: log-likelihoods for
 * scoring and evaluation, exact to a float64 reference) or f16 (ia_context_init_f16kv: generation,
 * as llama.cpp's default cache; decoding reads each sequence's whole cache per token, so half the
 * bytes: SmolLM2-135M at 64 sequences spent 37% of its time in attention with f32). */
ia_context *ia_context_init(const ia_model *m, int n_slots, int n_ctx, int n_batch, ia_error *err);
ia_context *ia_context_init_f16kv(const ia_model *m, int n_slots, int n_ctx, int n_batch, ia_error *err);
void ia_context_free(ia_context *c);
int ia_context_n_slots(const ia_context *c);
int ia_context_n_ctx(const ia_context *c);
int ia_context_n_batch(const ia_context *c);

/* Runs the forward pass over a batch. For each token its K/V are stored in its slot at `pos`, then
 * it attends to that slot's positions 0..pos (so a slot's earlier positions must already be in the
 * cache or earlier in the same batch). Tokens of one slot in a batch must have increasing
 * positions. Logit rows for tokens with logits[i] set are written in batch order and read with
 * ia_context_logits. Errors: IA_ERR_RANGE for a token id >= V, pos >= C, slot >= S, N > n_batch. */
int ia_context_decode(ia_context *c, const ia_batch *b, ia_error *err);
const float *ia_context_logits(const ia_context *c); /* [n_out][V], valid until the next decode */
int ia_context_n_logits(const ia_context *c);

/* ---- random-weight model writer ---- */
typedef struct ia_mkmodel_opts {
    const char *arch;       /* "llama" or "qwen2" */
    const char *vocab_path; /* GGUF whose tokenizer.* metadata is copied (required) */
    int n_vocab;            /* 0: the vocabulary's size; larger: padded with unused tokens */
    int n_embd, n_layer, n_head, n_head_kv, n_ff, n_ctx;
    float rope_base;        /* 0: 10000 (llama) / 1e6 (qwen2) */
    bool tied;              /* no output.weight */
    uint32_t type;          /* matrix type: F32 F16 BF16 Q8_0 Q4_0 Q4_K Q6_K ("Q4_K_M" mixing = Q4_K) */
    uint64_t seed;
    const char *chat_template; /* NULL: keep the vocabulary file's, if any */
} ia_mkmodel_opts;

/* Fills opts from a preset name: "smollm2-135m", "qwen2.5-0.5b", "tinyllama-1.1b", "tiny-llama",
 * "tiny-qwen2". Returns IA_OK or IA_ERR_ARG for an unknown name. vocab_path/type/seed untouched. */
int ia_mkmodel_preset(const char *name, ia_mkmodel_opts *opts, ia_error *err);
/* Writes a random-weight GGUF through the project's own writer (weights ~ N(0, 0.02), norms ~ 1).
 * Matrices whose rows do not split into the type's blocks fall back per tensor (K-quants to Q8_0,
 * then F16), as llama.cpp's quantizer does; norms and biases are F32. Tensors are generated one at a
 * time while writing, so memory stays at one tensor. Same options and seed, same bytes. */
int ia_mkmodel_write(const ia_mkmodel_opts *opts, const char *out_path, ia_error *err);

/* ---- KV prefix sharing ---- */
/* Copies the K/V of positions 0..n_pos-1 of slot src into slot dst (every layer), so a prefix
 * decoded once (a few-shot primer) can be continued in several slots. Errors: IA_ERR_RANGE. */
int ia_context_kv_copy(ia_context *c, int src, int dst, int n_pos, ia_error *err);

#endif /* IA_MODEL_H */
