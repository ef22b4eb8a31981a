/* train.h — supervised fine-tuning on the CPU: LoRA (over any supported base type) and full
 * fine-tuning, from JSONL chat/prompt-completion data, with resumable checkpoints. The alignment
 * loop (src/align/) calls ia_train once per round. */
#ifndef IA_TRAIN_H
#define IA_TRAIN_H

#include "model/model.h"

typedef enum ia_train_method { IA_TRAIN_LORA = 0, IA_TRAIN_FULL = 1 } ia_train_method;
typedef enum ia_lr_schedule { IA_LR_CONSTANT = 0, IA_LR_LINEAR, IA_LR_COSINE } ia_lr_schedule;

typedef struct ia_train_progress {
    int step, total_steps;     /* optimizer steps */
    int epoch;
    float loss;                /* mean loss of this step (assistant tokens only) */
    float lr;
    float grad_norm;           /* before clipping */
    double tokens_per_s;
    double elapsed_s;
} ia_train_progress;

typedef struct ia_train_opts {
    const char *base_path;     /* base model GGUF (required) */
    const char *data_path;     /* JSONL: {"messages":[...]}, {"conversations":[{"from","value"}]} or {"prompt","completion"} */
    const char *out_path;      /* LoRA: adapter GGUF (llama.cpp --lora format); full: model GGUF */
    const char *init_adapter;  /* LoRA: continue from this adapter (NULL: fresh A random, B zero) */
    ia_train_method method;
    int lora_rank;             /* default 8 */
    float lora_alpha;          /* default 16 */
    float lora_dropout;        /* default 0 */
    const char *lora_targets;  /* comma list of q,k,v,o,gate,up,down (default all seven) */
    int epochs;                /* default 3 */
    int batch_size;            /* sequences per micro-batch, default 4 */
    int grad_accum;            /* micro-batches per optimizer step, default 1 */
    float lr;                  /* default 1e-4 (LoRA) */
    float weight_decay;        /* AdamW, default 0 */
    float beta1, beta2, eps;   /* AdamW, defaults 0.9, 0.999, 1e-8 */
    ia_lr_schedule schedule;   /* default cosine */
    float warmup_ratio;        /* default 0.03 */
    float grad_clip;           /* max global norm, default 1.0 (0 = off) */
    int max_len;               /* tokens per sequence, default 512 (longer examples are truncated) */
    bool pack;                 /* pack several examples into one sequence (default false: pad) */
    bool recompute;            /* recompute activations in backward to bound memory */
    bool bf16;                 /* products with the base weights (forward and input gradient) in bf16, as
                                  vdpbf16ps computes them (AVX512_BF16; elsewhere the same bits, slowly);
                                  LoRA factors, gradients of trained weights, attention and AdamW stay f32 */
    uint64_t seed;             /* same seed, same result */
    const char *chat_template; /* template name; NULL: the model's own, else a plain "prompt + completion" */
    const char *checkpoint_path; /* optimizer + adapter state, written every checkpoint_every steps; resumed if present */
    int checkpoint_every;      /* default 50 */
    const char *log_path;      /* JSONL training log (step, loss, lr, grad_norm, tokens_per_s); NULL: none */
    void (*progress)(void *ud, const ia_train_progress *p);
    void *progress_ud;
} ia_train_opts;

typedef struct ia_train_result {
    int steps;
    float first_loss, final_loss;
    double tokens_per_s;
    size_t peak_bytes;         /* peak resident memory measured during training */
} ia_train_result;

ia_train_opts ia_train_opts_default(void);
/* Validates the data (a malformed line is reported with its line number and nothing trains),
 * trains, writes out_path atomically. Resumes from checkpoint_path when it exists and matches. */
int ia_train(const ia_train_opts *o, ia_train_result *res, ia_error *err);

/* ---- merging and exporting adapters ---- */
typedef struct ia_merge_opts {
    const char *base_path;     /* base model GGUF */
    const char *const *adapters; /* [n_adapters] adapter GGUF paths (llama.cpp format) */
    const float *scales;       /* [n_adapters] user scales (NULL: all 1) */
    int n_adapters;
    const char *out_path;
    uint32_t type;             /* matrix type of the result: IA_TYPE_F32, F16, BF16 or Q8_0 (rows that do not
                                  split into Q8_0 blocks fall back to F16); norms and biases stay F32 */
} ia_merge_opts;

/* Writes base + sum_i scale_i * (alpha_i/r_i) * B_i·A_i as a model GGUF: every metadata key of the
 * base copied verbatim (tokenizer, pre-tokenizer name, chat template) except general.file_type,
 * which is set to the new type; memory stays at one tensor. */
int ia_merge_lora(const ia_merge_opts *o, ia_error *err);

/* Writes a Hugging Face PEFT adapter directory (adapter_config.json + adapter_model.safetensors,
 * f32, names base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight ...) from an adapter
 * GGUF; for the llama architecture the rows of q/k lora_B are un-permuted back to HF order
 * (REFERENCE §1.7). base_name goes to base_model_name_or_path (NULL: the base's general.name, else
 * its path). The directory is created if needed. */
int ia_export_peft(const char *adapter_path, const char *base_path, const char *out_dir, const char *base_name,
                   ia_error *err);

#endif /* IA_TRAIN_H */
