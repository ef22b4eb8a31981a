/* kernels.h — internal interface between the matmul driver (matmul.c) and its per-ISA kernels. */
#ifndef IA_TENSOR_KERNELS_H
#define IA_TENSOR_KERNELS_H

#include "tensor.h"

/* Output rows handled together: one dequantised chunk of each is FMA'd against every activation
 * row, so a weight row is read (and dequantised) once per call whatever n_tok is. */
#define IA_MM_ROWS 8
/* Elements of a row dequantised at once (a multiple of every block size: 256). 8 rows x 512 f32
 * = 16 KiB of stack, which stays in L1 while all n_tok activation rows stream past it. */
#define IA_MM_CHUNK 512

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
    /* Optional (NULL: not provided): dequant + dot in one pass for a quantised or half type, the
     * weights decoded in registers and never stored, for n_tok <= IA_MM_FUSED_MAX_TOK. rows holds
     * IA_MM_ROWS row starts (rows past nr repeat a valid one); k0 and len as for dequant. Must give
     * exactly the bits of dequant followed by dot. */
    void (*dot_fused)(uint32_t type, const uint8_t *const *rows, int64_t k0, int len, const float *X,
                      int64_t ldx, int n_tok, float *Y, int64_t ldy, int nr, bool accumulate);
    /* Optional (NULL: dequant row by row): dequant of the same chunk of IA_MM_ROWS rows (rows past
     * nr repeat a valid one) into out[r]. */
    void (*dequant_rows)(uint32_t type, const uint8_t *const *rows, int64_t k0, int len,
                         float (*out)[IA_MM_CHUNK]);
} ia_mm_kernel;

/* Up to this many activation rows the fused path decodes each weight row once; past it, decoding
 * once into the stack buffer and streaming every activation row past it is cheaper. */
#define IA_MM_FUSED_MAX_TOK 2

extern const ia_mm_kernel ia_mm_kernel_scalar;
#if defined(__x86_64__)
extern const ia_mm_kernel ia_mm_kernel_avx2;
extern const ia_mm_kernel ia_mm_kernel_avx512;
#endif

#endif
