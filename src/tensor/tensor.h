/* tensor.h — ggml tensor types (ids, block sizes), (de)quantisation and the matmul kernels.
 *
 * Layout legend: a weight matrix W stored in GGUF with ne = {n_in, n_out} is n_out rows of n_in
 * contiguous elements (row o starts at o * ia_type_row_size(type, n_in) bytes). y = W·x means
 * y[o] = sum_i W[o][i] * x[i].
 */
#ifndef IA_TENSOR_H
#define IA_TENSOR_H

#include "util/util.h"

/* ggml type ids (include/ggml.h). Removed ids (4, 5, 31-33, 36-38) are not valid. */
typedef enum ia_type {
    IA_TYPE_F32 = 0,
    IA_TYPE_F16 = 1,
    IA_TYPE_Q4_0 = 2,
    IA_TYPE_Q4_1 = 3,
    IA_TYPE_Q5_0 = 6,
    IA_TYPE_Q5_1 = 7,
    IA_TYPE_Q8_0 = 8,
    IA_TYPE_Q8_1 = 9,
    IA_TYPE_Q2_K = 10,
    IA_TYPE_Q3_K = 11,
    IA_TYPE_Q4_K = 12,
    IA_TYPE_Q5_K = 13,
    IA_TYPE_Q6_K = 14,
    IA_TYPE_Q8_K = 15,
    IA_TYPE_I8 = 24,
    IA_TYPE_I16 = 25,
    IA_TYPE_I32 = 26,
    IA_TYPE_I64 = 27,
    IA_TYPE_F64 = 28,
    IA_TYPE_BF16 = 30,
    IA_TYPE_COUNT = 43,
} ia_type;

typedef struct ia_type_traits {
    const char *name;    /* "Q4_K" */
    int64_t blck_size;   /* elements per block */
    size_t type_size;    /* bytes per block */
    bool supported;      /* iteralign can compute with it (F32 F16 BF16 Q8_0 Q4_0 Q4_K Q6_K) */
} ia_type_traits;

/* Traits of a type id, or NULL for an id that is unknown or removed. */
const ia_type_traits *ia_type_traits_get(uint32_t type);
/* "Q4_K", or "unknown type 37" (a static buffer per thread is NOT used: returns "unknown"). */
const char *ia_type_name(uint32_t type);
/* Type id from its name ("q4_k", "Q4_K", "f16" ...), or -1. */
int ia_type_from_name(const char *name);
/* Bytes of a row of n elements (n must be a multiple of the block size). */
size_t ia_type_row_size(uint32_t type, int64_t n);

/* Block layouts (ggml-common.h). */
#define IA_QK4_0 32
#define IA_QK8_0 32
#define IA_QK_K 256
#define IA_K_SCALE_SIZE 12
typedef struct { uint16_t d; uint8_t qs[IA_QK4_0 / 2]; } ia_block_q4_0;                 /* 18 bytes */
typedef struct { uint16_t d; int8_t qs[IA_QK8_0]; } ia_block_q8_0;                      /* 34 bytes */
typedef struct { uint16_t d, dmin; uint8_t scales[IA_K_SCALE_SIZE]; uint8_t qs[IA_QK_K / 2]; } ia_block_q4_K; /* 144 */
typedef struct { uint8_t ql[IA_QK_K / 2]; uint8_t qh[IA_QK_K / 4]; int8_t scales[IA_QK_K / 16]; uint16_t d; } ia_block_q6_K; /* 210 */

/* Dequantises n elements (a multiple of the block size) of a supported type to f32. */
void ia_dequantize_row(uint32_t type, const void *src, float *dst, int64_t n);
/* Quantises n f32 values into a supported type (reference quantisers, as ggml's *_ref: the bytes are
 * identical to ggml's quantize_row_*_ref output); returns the bytes written. */
size_t ia_quantize_row(uint32_t type, const float *src, void *dst, int64_t n);

/* Y[t][o] = sum_i X[t][i] * W[o][i] for t < n_tok, o < n_out. W has type `wtype` with rows of n_in
 * elements; X is [n_tok][n_in] f32, Y is [n_tok][n_out] f32. Multi-threaded (OpenMP), allocation
 * free; the fastest kernel the CPU supports is chosen at run time. Y[t][o] depends only on X[t], W
 * and the kernel family: bit for bit the same whatever n_tok, whichever rows share the call and
 * whatever the thread count (different families may differ in the last bits). */
void ia_matmul(float *Y, const float *X, const void *W, uint32_t wtype, int n_tok, int n_in, int n_out);
/* The plain C reference of ia_matmul (dequantise each row, dot in f32). Tests compare against it. */
void ia_matmul_ref(float *Y, const float *X, const void *W, uint32_t wtype, int n_tok, int n_in, int n_out);

/* Which kernel family ia_matmul uses on this CPU ("avx512", "avx2", "scalar"). The environment
 * variable IA_KERNEL=scalar|avx2|avx512 forces a family (ignored if this CPU lacks it). */
const char *ia_cpu_kernel_name(void);
/* Whether a kernel family ("scalar", "avx2", "avx512") can run on this CPU and build. */
bool ia_kernel_available(const char *name);
/* Forces a kernel family for later ia_matmul calls (tests, benchmarks); NULL restores the automatic
 * choice. Returns false, changing nothing, if the family is unavailable. Not to be called while
 * another thread is inside ia_matmul. */
bool ia_kernel_force(const char *name);
/* ia_dequantize_row through the selected family's SIMD dequantiser: the same bits, faster. */
void ia_dequantize_row_fast(uint32_t type, const void *src, float *dst, int64_t n);

/* ---- inference matmuls ------------------------------------------------------------------------- */

/* Precision of the inference matmuls (ia_matmul_infer / ia_matmul_multi) for Q8_0, Q4_0, Q4_K and
 * BF16 weights. FAST (the default): for the quantised types, activations are quantised to int8 per 32
 * values (scale max|x|/127, as llama.cpp does) and the block dot products are exact integer sums:
 * ~0.3% relative error per product vs f32 activations, several times less arithmetic; for BF16,
 * activations are rounded to bf16 (2^-8 relative at most, as llama.cpp does) where the CPU multiplies bf16
 * pairs (AVX512_BF16). EXACT: f32 activations (ia_matmul). BF16 (opt-in): FAST, and F32 and F16 weights
 * multiplied as BF16 ones are, each weight rounded to bf16 (nearest even) where ia_qpack_add packs it
 * (set it before loading the model): an F16 model then runs at a BF16 one's speed with a BF16 one's
 * precision. The environment variable IA_PRECISION=exact|fast|bf16 sets the starting value. Other
 * weight types and ia_matmul itself are always f32. */
enum { IA_PREC_FAST = 0, IA_PREC_EXACT = 1, IA_PREC_BF16 = 2 };
/* "fast", "exact" or "bf16" (any case) to IA_PREC_*, or -1; and back. */
int ia_precision_from_name(const char *s);
const char *ia_precision_name(int prec);
int ia_get_precision(void);
void ia_set_precision(int prec);
/* Whether the type has a low-precision path (Q8_0/Q4_0/Q4_K: int8 activations; BF16: bf16 ones; F32
 * and F16 too in BF16 precision). */
bool ia_q8_type(uint32_t wtype);
/* Whether ia_matmul_infer on this weight type uses int8 or bf16 activations now (FAST or BF16
 * precision, and the selected kernel family has an integer kernel: scalar (the reference), avx2
 * (vpmaddubsw) and avx512 (vpdpbusd with VNNI, else the avx2 one); bf16 products, for BF16 weights
 * and in BF16 precision for F32/F16 ones, need AVX512_BF16 or the scalar reference). */
bool ia_matmul_uses_q8(uint32_t wtype);
/* Bytes of weights per row that ia_matmul_infer reads now: the GGUF row's, but half an F32 row's in
 * BF16 precision (it reads the bf16 pack). */
size_t ia_matmul_infer_row_bytes(uint32_t wtype, int n_in);

/* bf16 arithmetic as the AVX512_BF16 instructions do it (the references of every bf16 kernel):
 * ia_fp32_to_bf16_cvtne rounds as vcvtneps2bf16 (nearest even, float subnormals to signed zero,
 * NaN quieted); ia_bf16_dot_step is one multiply-add of a vdpbf16ps lane, acc + a*b as an f32 FMA
 * with subnormal inputs read as zero and a subnormal result flushed to zero (a lane takes the pair's
 * odd element first, then the even one). */
uint16_t ia_fp32_to_bf16_cvtne(float f);
float ia_bf16_dot_step(float acc, uint16_t a, uint16_t b);
/* Whether this CPU and the selected kernel family multiply bf16 pairs in hardware (AVX512_BF16). */
bool ia_cpu_has_bf16_dot(void);

/* Y = X·Wᵀ for the forward pass: ia_matmul, or in FAST precision the integer path. Every kernel
 * family's integer path gives the same bits as the scalar reference; batch- and thread-invariant. */
void ia_matmul_infer(float *Y, const float *X, const void *W, uint32_t wtype, int n_tok, int n_in, int n_out);
/* Several matrices against the same X (q, k and v; gate and up) in one parallel step, X quantised
 * once. Each Y equals its own ia_matmul_infer call. At most 8 tasks. */
typedef struct ia_mm_task {
    float *Y;               /* [n_tok][n_out] */
    const void *W;          /* n_out rows of n_in of wtype */
    uint32_t wtype;
    int n_out;
} ia_mm_task;
void ia_matmul_multi(const float *X, int n_tok, int n_in, const ia_mm_task *tasks, int n_tasks);
/* ia_matmul of each task (f32 activations whatever the precision), in one parallel step. */
void ia_matmul_exact_multi(const float *X, int n_tok, int n_in, const ia_mm_task *tasks, int n_tasks);

/* Weights the SIMD integer kernels will read get a repacked copy (16-row panels), made once: models
 * call ia_qpack_add for each matrix at load and ia_qpack_remove at free (counted: the same W added
 * twice needs two removes). A no-op for other types or where the kernel reads GGUF rows directly.
 * Returns IA_OK or IA_ERR_NOMEM. */
int ia_qpack_add(const void *W, uint32_t type, int n_in, int n_out);
void ia_qpack_remove(const void *W);
size_t ia_qpack_bytes(void); /* bytes of packed copies held */

/* Causal multi-head attention (grouped-query) over a KV cache laid out [slot][layer][pos][Hkv*D]:
 * for each token t and head h, out[t][h] = softmax(scale * q[t][h] · K[0..pos[t]]) · V[0..pos[t]],
 * K and V of the token's slot and of kv head h / (H / Hkv). Multi-threaded; each (t, h) depends only
 * on its own inputs (batch- and thread-invariant). scratch holds n_scratch rows of n_ctx floats
 * (one per thread: at most n_scratch threads run). */
typedef struct ia_attn {
    float *out;                     /* [n_tok][H*D] */
    const float *q;                 /* [n_tok][H*D], rotated */
    const void *k_cache, *v_cache;  /* [S][n_layer][n_ctx][Hkv*D]: f32, or f16 when kv_f16 */
    const int32_t *pos, *slot;      /* [n_tok] */
    int n_tok, n_head, n_head_kv, head_dim, n_layer, layer, n_ctx;
    bool kv_f16;                    /* the caches hold f16 (widened exactly on load) */
    float scale;
    float *scratch;
    int n_scratch;
} ia_attn;
void ia_attention(const ia_attn *a);
/* The plain C reference (what IA_KERNEL=scalar runs). */
void ia_attention_ref(const ia_attn *a);

/* log(sum_i exp(x_i)) over n logits (log p_i = x_i - this): a vectorised exp (within 2 ulp of expf),
 * the sum in double. The reference: expf in a plain loop. */
double ia_logsumexp(const float *x, int n);
double ia_logsumexp_ref(const float *x, int n);

/* h[i] = silu(g[i]) * u[i] = g / (1 + exp(-g)) * u over n values (h may be g): with a vectorised exp
 * (within 2 ulp of expf) on AVX-512 and AVX2; the reference: expf in a plain loop. The inference and
 * the training forward passes share it. */
void ia_swiglu(float *h, const float *g, const float *u, size_t n);
void ia_swiglu_ref(float *h, const float *g, const float *u, size_t n);

/* h[i] = x[i] as f16, rounded to nearest even (ia_fp32_to_fp16's bits for every value but NaNs, which
 * stay NaN): F16C with the AVX-512 and AVX2 families, else ia_fp32_to_fp16 per value. For the f16
 * KV cache. */
void ia_fp16_from_f32(uint16_t *h, const float *x, size_t n);

#endif /* IA_TENSOR_H */
