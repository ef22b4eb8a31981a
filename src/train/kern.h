/* kern.h — the trainer's compute kernels (kern.c) and its parallel loops.
 *
 * Every kernel has a plain C reference (`_ref`) and, on x86-64, an AVX-512 version chosen at run
 * time with the tensor kernels' family (ia_cpu_kernel_name() == "avx512"; IA_KERNEL=scalar or
 * ia_kernel_force("scalar") selects the references). The AVX-512 versions use fused multiply-adds
 * where the references round a*b and then the sum: the two agree to rounding, not bit for bit
 * (tests compare them with a tolerance). Within one process the family is fixed, and every kernel's
 * result for one output element depends only on its inputs, never on how the work was tiled or
 * split between threads: training stays bit-identical across thread counts. */
#ifndef IA_TRAIN_KERN_H
#define IA_TRAIN_KERN_H

#include <stddef.h>

#include "util/util.h"

/* ---- parallel loops on the tensor thread pool (src/tensor/pool.h) ---- */

/* Threads the trainer's ops may use at once (scratch buffers are sized for this many). */
int tr_max_threads(void);
/* Threads to use now: ia_get_threads() capped by tr_max_threads(). */
int tr_threads(void);
/* body(arg, i0, i1) over [0, n) split into static contiguous chunks, one per thread; serial when
 * !par or n < 2. Each chunk runs on one thread, so a body that gives every output one writer is
 * thread-count invariant. */
void tr_par_for(int n, bool par, void (*body)(void *arg, int i0, int i1), void *arg);
/* body(arg, tid, nth) on nth threads (tid < nth, nth <= tr_max_threads()): the raw pool call, for
 * dynamic scheduling (an atomic counter in arg) and per-thread scratch (indexed by tid). */
void tr_par_run(int nth, void (*body)(void *arg, int tid, int nth), void *arg);

/* ---- C (+)= A·B ---- */

/* C[m][n] = (acc ? C[m][n] : 0) + sum_k A(m, k) B[k][n] for m < M, n < N, with A(m, k) =
 * A[m*ars + k*acs] (acs = 1: row-major; ars = 1: A stored transposed), B row-major (row stride ldb),
 * C row-major (row stride ldc). Summation: k in blocks of TR_GEMM_KB from 0; each block's products
 * are one chain of multiply-adds from zero in ascending k, and the block sums are added to C in
 * order (blocked summation: the rounding error grows with KB + K/KB, not K). An element's
 * arithmetic depends only on its A row, B column and K: splitting M or N between calls, or K at
 * multiples of TR_GEMM_KB (acc set for the later parts), gives the same bits. */
#define TR_GEMM_KB 128
void tr_gemm(int M, int N, int K, const float *A, ptrdiff_t ars, ptrdiff_t acs, const float *B, ptrdiff_t ldb,
             float *C, ptrdiff_t ldc, bool acc);
void tr_gemm_ref(int M, int N, int K, const float *A, ptrdiff_t ars, ptrdiff_t acs, const float *B,
                 ptrdiff_t ldb, float *C, ptrdiff_t ldc, bool acc);

/* P[k][r] = W[r][k] for r < rows, k < K (a panel of weight rows transposed for tr_gemm: the
 * forward Y = X·Wᵀ becomes X·P); pure data movement. */
void tr_pack_t(float *P, int ldp, const float *W, ptrdiff_t ldw, int rows, int K);
void tr_pack_t_ref(float *P, int ldp, const float *W, ptrdiff_t ldw, int rows, int K);

/* ---- bf16 products (the base-weight matmuls under --compute bf16) ---- */

/* dst[r][k] = src[r][k] rounded to bf16 as vcvtneps2bf16 does (ia_fp32_to_bf16_cvtne) for r < rows,
 * k < K; odd K: dst[r][K] = 0 as well (the pad that completes the last pair). */
void tr_bf16_rows(uint16_t *dst, ptrdiff_t ldd, const float *src, ptrdiff_t lds, int rows, int K);
void tr_bf16_rows_ref(uint16_t *dst, ptrdiff_t ldd, const float *src, ptrdiff_t lds, int rows, int K);
/* C[m][n] = (acc ? C[m][n] : 0) + sum_k A[m][k] B(k, n), with A bf16 row-major (row stride lda, even;
 * odd K: A[m][K] = 0, as tr_bf16_rows leaves it) and B given as bf16 pairs: B[p*ldb + n] holds
 * B(2p, n) in its low and B(2p+1, n) in its high 16 bits (odd K: the last pair's high half 0).
 * Summation: k in blocks of TR_GEMM_KB from 0; within a block one chain from zero over the pairs in
 * ascending order, each pair as a vdpbf16ps lane takes it (ia_bf16_dot_step on the odd element, then
 * the even one); block sums added to C in order. The same split rules as tr_gemm. */
void tr_gemm_bf16(int M, int N, int K, const uint16_t *A, ptrdiff_t lda, const uint32_t *B, ptrdiff_t ldb, float *C,
                  ptrdiff_t ldc, bool acc);
void tr_gemm_bf16_ref(int M, int N, int K, const uint16_t *A, ptrdiff_t lda, const uint32_t *B, ptrdiff_t ldb,
                      float *C, ptrdiff_t ldc, bool acc);
/* The forward's panel: P[p][r] = pair(W[r][2p], W[r][2p+1]) for r < rows, p < ceil(K/2) (odd K: a
 * zero high half last): weight rows become B columns, Y = X·Wᵀ = X·P. */
void tr_pack_bf16_t(uint32_t *P, int ldp, const float *W, ptrdiff_t ldw, int rows, int K);
void tr_pack_bf16_t_ref(uint32_t *P, int ldp, const float *W, ptrdiff_t ldw, int rows, int K);
/* The input gradient's block: P[p][n] = pair(W[2p][n], W[2p+1][n]) for p < ceil(rows/2), n < width
 * (odd rows: a zero high half last): weight rows stay B rows, dX = dY·W. */
void tr_pack_bf16_rows(uint32_t *P, int ldp, const float *W, ptrdiff_t ldw, int rows, int width);
void tr_pack_bf16_rows_ref(uint32_t *P, int ldp, const float *W, ptrdiff_t ldw, int rows, int width);
/* true when the bf16 kernels run on AVX512_BF16 (else the references: same bits, far slower) */
bool tr_kern_bf16(void);

/* ---- attention rows ---- */

/* Forward softmax of one score row s[0..nk) (raw q·k) whose first nv entries are visible: s[j] =
 * exp(s[j]*scale - max) for j < nv, 0 for nv <= j < nk; returns the sum of those exponentials and
 * sets *mx_scaled = max_j<nv s[j]*scale. */
float tr_softmax_row(float *s, int nv, int nk, float scale, float *mx_scaled);
float tr_softmax_row_ref(float *s, int nv, int nk, float scale, float *mx_scaled);
/* Backward of one row: P = exp(s*scale - lse), then s[j] = P, dp[j] = P (dp[j] - delta) scale for
 * j < nv; both 0 for nv <= j < nk. */
void tr_attn_bwd_row(float *s, float *dp, int nv, int nk, float scale, float lse, float delta);
void tr_attn_bwd_row_ref(float *s, float *dp, int nv, int nk, float scale, float lse, float delta);

/* ---- elementwise ---- */

/* y[i] = a * x[i] */
void tr_scale_copy(float *y, const float *x, float a, int n);
/* y[i] += x[i] */
void tr_add(float *y, const float *x, int n);

/* out[i] = g * exp(x[i] - sub) for i < n (pass sub = the row's log-sum-exp, ia_logsumexp: the
 * cross-entropy's softmax times its gradient). */
void tr_scaled_exp(float *out, const float *x, int n, float sub, float g);
void tr_scaled_exp_ref(float *out, const float *x, int n, float sub, float g);

/* SwiGLU's backward over n elements (the forward h = silu(g) u is ia_swiglu): du += dh g sig(g),
 * dg += dh u sig(g) (1 + g (1 - sig(g))). */
void tr_swiglu_bwd(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n);
void tr_swiglu_bwd_ref(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n);

/* true when the AVX-512 kernels are in use; tr_kern_avx2: the AVX2 ones (the GEMM, the row kernels,
 * and the bf16 products emulated, as they are on AVX-512 without AVX512_BF16) */
bool tr_kern_avx512(void);
bool tr_kern_avx2(void);

#endif /* IA_TRAIN_KERN_H */
