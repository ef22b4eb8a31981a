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

#endif /* IA_TENSOR_H */
