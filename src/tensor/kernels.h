/* kernels.h — internal interface between the matmul driver (matmul.c) and its per-ISA kernels. */
#ifndef IA_TENSOR_KERNELS_H
#define IA_TENSOR_KERNELS_H

#include "tensor.h"

/* Output rows handled together: one dequantised chunk of each is FMA'd against every activation
 * row, so a weight row is read (and dequantised) once per call whatever n_tok is. */
#define IA_MM_ROWS 8
/* Elements of a row dequantised at once (a multiple of every block size: 256). 8 rows x 1024 f32
 * = 32 KiB of stack, which stays in L1 (48 KiB on current cores) while all n_tok activation rows
 * stream past it. Each (token, row) pays one horizontal sum per chunk: at 512, the 576-wide rows of
 * a 135M model paid two, and prefill ran 12% slower. */
#define IA_MM_CHUNK 1024

typedef struct ia_mm_kernel {
    const char *name;
    /* Dequantises elements [k0, k0 + len) of the row at `row` (k0 a multiple of IA_MM_CHUNK, len a
     * multiple of the block size) into out; must equal ia_dequantize_row bit for bit. */
    void (*dequant)(uint32_t type, const void *row, int64_t k0, int len, float *out);
    /* For t < n_tok and r < nr: s = dot(w[r][0..len), X[t][0..len)); Y[t*ldy + r] = s, or += s when
     * `accumulate`. w holds IA_MM_ROWS pointers (rows past nr repeat a valid one). The arithmetic
     * for one (t, r) must not depend on n_tok, nr or the other rows: that makes ia_matmul batch- and
     * thread-invariant. */
    void (*dot)(const float *const *w, int len, const float *X, int64_t ldx, int n_tok, float *Y,
                int64_t ldy, int nr, bool accumulate);
    /* Optional (NULL: not provided): dequant + dot in one pass (any type, F32 included), the
     * weights decoded in registers and never stored, for n_tok <= IA_MM_FUSED_MAX_TOK. rows holds
     * IA_MM_ROWS row starts (rows past nr repeat a valid one); k0 and len as for dequant. Must give
     * exactly the bits of dequant followed by dot. pf: NULL, or the IA_MM_ROWS row starts of the
     * block that comes next, whose same elements are prefetched as these are consumed. */
    void (*dot_fused)(uint32_t type, const uint8_t *const *rows, int64_t k0, int len, const float *X,
                      int64_t ldx, int n_tok, float *Y, int64_t ldy, int nr, bool accumulate,
                      const uint8_t *const *pf);
    /* Optional (NULL: dequant row by row): dequant of the same chunk of IA_MM_ROWS rows (rows past
     * nr repeat a valid one) into out[r]. */
    void (*dequant_rows)(uint32_t type, const uint8_t *const *rows, int64_t k0, int len,
                         float (*out)[IA_MM_CHUNK]);
    /* Optional (NULL: dot_fused by blocks): rows o0 .. o1 - 1 of an F32, F16 or BF16 matrix W (rows rs
     * bytes apart), one row at a time, whole (chunks of IA_MM_CHUNK summed into Y as above), for n_tok
     * <= IA_MM_FUSED_MAX_TOK: a single linear stream through the matrix, where eight interleaved rows
     * left a fifth of the bandwidth unused. Must give exactly the bits of dequant followed by dot. */
    void (*dot_rows)(uint32_t type, const uint8_t *W, size_t rs, int n_in, int o0, int o1, const float *X,
                     int64_t ldx, int n_tok, float *Y, int64_t ldy);
} ia_mm_kernel;

/* How far ahead in its stream dot_rows prefetches, in bytes (one prefetch per 64-byte line). The
 * hardware prefetcher alone left SmolLM2-135M F16 decode at 113 tokens/s on one thread (133 with this;
 * two threads 132 -> 139, F32 75 -> 79, Qwen2.5-0.5B F16 52 -> 62); 2, 4, 6, 8, 12 and 16 KiB
 * measured on F16 (8, 12 and 16 on F32), 8 the best on both. */
#define IA_ROWS_PF_DIST 8192

/* A kernel's dot_rows: F(type, ...) instantiated for each of its three types, the type a constant. */
#define IA_MM_ROWS_SWITCH(F, type, ...)                                                            \
    switch (type) {                                                                                \
    case IA_TYPE_F32: F(IA_TYPE_F32, __VA_ARGS__); break;                                          \
    case IA_TYPE_F16: F(IA_TYPE_F16, __VA_ARGS__); break;                                          \
    case IA_TYPE_BF16: F(IA_TYPE_BF16, __VA_ARGS__); break;                                        \
    default: IA_ASSERT(!"dot_rows: F32, F16 or BF16 only");                                       \
    }

/* Up to this many activation rows the fused path decodes each weight row once; past it, decoding
 * once into the stack buffer and streaming every activation row past it is cheaper. */
#define IA_MM_FUSED_MAX_TOK 2

extern const ia_mm_kernel ia_mm_kernel_scalar;
#if defined(__x86_64__)
extern const ia_mm_kernel ia_mm_kernel_avx2;
extern const ia_mm_kernel ia_mm_kernel_avx512;
#endif

/* ---- the low-precision inference path: int8 or bf16 activations (qmatmul.c, qmatmul_avx512.c) ---- */

#define IA_QA_BLOCK 32 /* activations are quantised in blocks of this many values */
#define IA_QP_ROWS 16  /* weight rows per packed panel */

/* A weight matrix repacked for the SIMD integer kernels (layouts in qmatmul.c). */
typedef struct ia_qpack {
    const void *src;        /* the GGUF data it was made from (the registry key) */
    uint32_t type;
    int n_in, n_out, n_panel;
    size_t panel_bytes;
    uint8_t *data;          /* n_panel panels */
    int refs;               /* ia_qpack_add calls not yet matched by ia_qpack_remove */
} ia_qpack;

/* One matrix of an integer matmul call. */
typedef struct ia_q8_task {
    float *Y;
    const void *W;
    const ia_qpack *pack;   /* NULL for kernels that read W itself */
    uint32_t wtype;
    int n_in, n_out;
} ia_q8_task;

typedef struct ia_q8_kernel {
    const char *name;
    bool needs_pack;        /* reads ia_qpack panels (else the GGUF rows) */
    /* one activation row of n_in floats -> ia_qact_row_bytes(n_in) bytes: n_in int8, n_in/32 f32
     * scales, n_in/32 int32 sums */
    void (*quantize)(const float *x, int n_in, uint8_t *row);
    /* rows of panels [p0, p1) for tokens [t0, t1): Y[t][o] (the Y of the task, row stride n_out) */
    void (*gemm)(const ia_q8_task *t, int p0, int p1, const uint8_t *qa, size_t qa_stride, int t0, int t1);
    /* NULL when the kernel has no BF16 path; else one activation row of n_in floats ->
     * ia_qact_row_bytes_bf16(n_in) bytes of bf16 (gemm then takes BF16 tasks too) */
    void (*quantize_bf16)(const float *x, int n_in, uint8_t *row);
} ia_q8_kernel;

/* Whether a task of this weight type takes bf16 activations: BF16, and F32/F16 (which reach this path
 * only in BF16 precision, multiplied as their bf16 roundings). */
static inline bool ia_q8_is_bf16(uint32_t t) { return t == IA_TYPE_BF16 || t == IA_TYPE_F16 || t == IA_TYPE_F32; }

size_t ia_qact_row_bytes(int n_in);
void ia_qact_quantize_ref(const float *x, int n_in, uint8_t *row);
size_t ia_qact_row_bytes_bf16(int n_in);
void ia_qact_bf16_ref(const float *x, int n_in, uint8_t *row);
/* The reference: one output value from a GGUF row and a quantised activation row. */
float ia_q8_dot_ref(uint32_t type, const uint8_t *w, const uint8_t *qa, int n_in);
size_t ia_qpack_block_bytes(uint32_t type);
/* The integer kernel of the selected family, or NULL when the family has none. */
const ia_q8_kernel *ia_q8_kernel_get(void);
#if defined(__x86_64__)
extern const ia_q8_kernel ia_q8_kernel_avx512;      /* VNNI */
extern const ia_q8_kernel ia_q8_kernel_avx512_bf16; /* VNNI and BF16 */
extern const ia_q8_kernel ia_q8_kernel_avx2;        /* AVX2 vpmaddubsw, no BF16 (qmatmul_avx2.c) */
#endif

/* The 12 scale bytes of a Q4_K block hold 8 six-bit scales and 8 six-bit mins: sub-blocks 0-3 in
 * the low 6 bits of bytes 0-3 (scales) and 4-7 (mins); sub-blocks 4-7 put their low 4 bits in
 * bytes 8-11 and their top 2 bits in the spare top bits of bytes 0-7. */
static inline void ia_q4k_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

#endif
