/* lora.h — LoRA adapters in llama.cpp's GGUF format: loading with the checks llama.cpp makes
 * (REFERENCE §2.1), the run-time term the forward pass adds after each adapted matmul, and the
 * adapter list of a model (ia_model_lora_add / ia_model_lora_clear in iteralign.h). */
#ifndef IA_MODEL_LORA_H
#define IA_MODEL_LORA_H

#include "model/model.h"

/* The seven adaptable matrices of a block, in this order everywhere (trainer included). */
typedef enum ia_lora_target {
    IA_LORA_Q = 0, IA_LORA_K, IA_LORA_V, IA_LORA_O, IA_LORA_GATE, IA_LORA_UP, IA_LORA_DOWN, IA_LORA_N
} ia_lora_target;

/* GGUF base-name part of each target: "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate",
 * "ffn_up", "ffn_down". */
extern const char *const ia_lora_target_gguf[IA_LORA_N];

typedef struct ia_lora_mat {
    float *A;                  /* [r][in] (GGUF lora_a, ne {in, r}), f32; NULL: not adapted */
    float *B;                  /* [out][r] (GGUF lora_b, ne {r, out}) */
    int r, n_in, n_out;
    float scale;               /* user_scale * (alpha ? alpha / r : 1), as llama.cpp's get_scale */
} ia_lora_mat;

typedef struct ia_lora_adapter {
    char *path;
    float alpha;               /* adapter.lora.alpha (0: none) */
    float user_scale;
    int n_layer;
    ia_lora_mat *mats;         /* [n_layer][IA_LORA_N] */
    int n_adapted;             /* matrices with A/B */
    int rank;                  /* rank of the first adapted matrix (they usually agree) */
    unsigned targets;          /* bit j set if some layer adapts target j */
    float *mem;                /* one block holding every A and B */
} ia_lora_adapter;

struct ia_lora_set {
    int n;
    ia_lora_adapter **a;       /* [n] */
};

/* Loads and validates an adapter against a base model: general.type "adapter", adapter.type "lora",
 * general.architecture equal to the base's, every tensor T.lora_a / T.lora_b with T a base matrix
 * of the seven kinds above (norm tensors are ignored, as llama.cpp does), shapes
 * a.ne = {base.ne[0], r}, b.ne = {r, base.ne[1]}, types F32/F16/BF16/Q8_0 (converted to f32).
 * Errors name the file and the tensor or key. */
ia_lora_adapter *ia_lora_adapter_load(const char *path, const ia_model *m, float user_scale, ia_error *err);
void ia_lora_adapter_free(ia_lora_adapter *a);

/* Y[t] += sum over the model's adapters of scale * B·(A·X[t]) for matrix `which` of `layer`, for
 * t < n_tok. X is [n_tok][n_in], Y [n_tok][n_out]. Each token is computed alone in a fixed order,
 * so the result does not depend on the batch or thread count. No-op without adapters. */
void ia_lora_apply(const ia_model *m, int layer, ia_lora_target which, float *Y, const float *X, int n_tok);

/* The same for one adapter matrix (merge and tests use it). */
void ia_lora_mat_apply(const ia_lora_mat *lm, float *Y, const float *X, int n_tok);

#endif /* IA_MODEL_LORA_H */
