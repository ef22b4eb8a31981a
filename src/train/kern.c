/* kern.c — the trainer's kernels: plain C references, AVX-512 and AVX2 versions (run-time dispatch),
 * and the parallel loops over the tensor thread pool. See kern.h for the contracts. */
#include "train/kern.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "tensor/pool.h"
#include "tensor/simd.h"
#include "tensor/tensor.h"

/* ==== parallel loops ========================================================================== */

int tr_max_threads(void) {
    /* fixed on first use: the scratch buffers sized with it stay big enough whatever
     * ia_set_threads() says later */
    static _Atomic int cached;
    int n = atomic_load_explicit(&cached, memory_order_relaxed);
    if (n > 0) return n;
    long np = sysconf(_SC_NPROCESSORS_ONLN);
    n = np > 0 ? (int)np : 1;
#ifdef _OPENMP
    if (omp_get_num_procs() > n) n = omp_get_num_procs();
    if (omp_get_max_threads() > n) n = omp_get_max_threads();
#endif
    if (ia_get_threads() > n) n = ia_get_threads();
    if (n > 256) n = 256;
    int expect = 0;
    if (!atomic_compare_exchange_strong(&cached, &expect, n)) n = expect;
    return n;
}

int tr_threads(void) {
    int n = ia_get_threads(), mx = tr_max_threads();
    if (n < 1) n = 1;
    return n > mx ? mx : n;
}

typedef struct {
    void (*body)(void *, int, int);
    void *arg;
    int n;
} par_range;

static void par_range_run(void *p, int tid, int nth) {
    const par_range *r = p;
    int i0 = (int)((int64_t)r->n * tid / nth), i1 = (int)((int64_t)r->n * (tid + 1) / nth);
    if (i1 > i0) r->body(r->arg, i0, i1);
}

void tr_par_for(int n, bool par, void (*body)(void *arg, int i0, int i1), void *arg) {
    if (n <= 0) return;
    int nth = par ? tr_threads() : 1;
    if (nth > n) nth = n;
    if (nth <= 1) {
        body(arg, 0, n);
        return;
    }
    par_range r = {body, arg, n};
    ia_pool_run(nth, par_range_run, &r);
}

void tr_par_run(int nth, void (*body)(void *arg, int tid, int nth), void *arg) {
    if (nth > tr_max_threads()) nth = tr_max_threads();
    if (nth <= 1) {
        body(arg, 0, 1);
        return;
    }
    ia_pool_run(nth, body, arg);
}

/* ==== references ============================================================================== */

/* Vector clones of the reference loops (ISO C mode keeps -ffp-contract=off: a*b is rounded, then
 * the sum, in every clone). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define TR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define TR_CLONES
#endif

TR_CLONES void tr_gemm_ref(int M, int N, int K, const float *A, ptrdiff_t ars, ptrdiff_t acs, const float *B,
                           ptrdiff_t ldb, float *C, ptrdiff_t ldc, bool acc) {
    float s[256];
    for (int m = 0; m < M; m++)
        for (int n0 = 0; n0 < N; n0 += 256) {
            const int nn = N - n0 < 256 ? N - n0 : 256;
            float *restrict c = C + m * ldc + n0;
            if (!acc && K == 0)
                for (int n = 0; n < nn; n++) c[n] = 0.0f;
            for (int k0 = 0; k0 < K; k0 += TR_GEMM_KB) {
                const int k1 = K - k0 < TR_GEMM_KB ? K : k0 + TR_GEMM_KB;
                for (int n = 0; n < nn; n++) s[n] = 0.0f;
                for (int k = k0; k < k1; k++) {
                    const float a = A[m * ars + k * acs];
                    const float *restrict b = B + k * ldb + n0;
#pragma omp simd
                    for (int n = 0; n < nn; n++) s[n] += a * b[n];
                }
                if (acc || k0 > 0)
                    for (int n = 0; n < nn; n++) c[n] += s[n];
                else
                    for (int n = 0; n < nn; n++) c[n] = s[n];
            }
        }
}

void tr_pack_t_ref(float *P, int ldp, const float *W, ptrdiff_t ldw, int rows, int K) {
    /* blocks of 64 k: the 64 x rows destination block stays in L1 */
    for (int k0 = 0; k0 < K; k0 += 64) {
        const int k1 = K - k0 < 64 ? K : k0 + 64;
        for (int r = 0; r < rows; r++) {
            const float *w = W + r * ldw;
            for (int k = k0; k < k1; k++) P[(size_t)k * ldp + r] = w[k];
        }
    }
}

static inline uint32_t bf16_pair(float lo, float hi) {
    return (uint32_t)ia_fp32_to_bf16_cvtne(lo) | (uint32_t)ia_fp32_to_bf16_cvtne(hi) << 16;
}

void tr_bf16_rows_ref(uint16_t *dst, ptrdiff_t ldd, const float *src, ptrdiff_t lds, int rows, int K) {
    for (int r = 0; r < rows; r++) {
        for (int k = 0; k < K; k++) dst[r * ldd + k] = ia_fp32_to_bf16_cvtne(src[r * lds + k]);
        if (K % 2) dst[r * ldd + K] = 0;
    }
}

void tr_gemm_bf16_ref(int M, int N, int K, const uint16_t *A, ptrdiff_t lda, const uint32_t *B, ptrdiff_t ldb,
                      float *C, ptrdiff_t ldc, bool acc) {
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            float *c = C + m * ldc + n;
            if (!acc && K == 0) *c = 0.0f;
            for (int k0 = 0; k0 < K; k0 += TR_GEMM_KB) {
                const int k1 = K - k0 < TR_GEMM_KB ? K : k0 + TR_GEMM_KB;
                float sum = 0.0f;
                for (int k = k0; k < k1; k += 2) {
                    const uint32_t b = B[(k / 2) * ldb + n];
                    sum = ia_bf16_dot_step(sum, k + 1 < k1 ? A[m * lda + k + 1] : 0, (uint16_t)(b >> 16));
                    sum = ia_bf16_dot_step(sum, A[m * lda + k], (uint16_t)b);
                }
                *c = acc || k0 > 0 ? *c + sum : sum;
            }
        }
}

void tr_pack_bf16_t_ref(uint32_t *P, int ldp, const float *W, ptrdiff_t ldw, int rows, int K) {
    for (int r = 0; r < rows; r++)
        for (int p = 0; 2 * p < K; p++)
            P[(size_t)p * ldp + r] = bf16_pair(W[r * ldw + 2 * p], 2 * p + 1 < K ? W[r * ldw + 2 * p + 1] : 0.0f);
}

void tr_pack_bf16_rows_ref(uint32_t *P, int ldp, const float *W, ptrdiff_t ldw, int rows, int width) {
    for (int p = 0; 2 * p < rows; p++)
        for (int n = 0; n < width; n++)
            P[(size_t)p * ldp + n] = bf16_pair(W[2 * p * ldw + n], 2 * p + 1 < rows ? W[(2 * p + 1) * ldw + n] : 0.0f);
}

float tr_softmax_row_ref(float *s, int nv, int nk, float scale, float *mx_scaled) {
    float mx = -INFINITY;
    for (int j = 0; j < nv; j++)
        if (s[j] > mx) mx = s[j];
    const float ms = mx * scale; /* scale > 0: the max of the scaled scores */
    float sum = 0;
    for (int j = 0; j < nv; j++) {
        s[j] = expf(s[j] * scale - ms);
        sum += s[j];
    }
    for (int j = nv; j < nk; j++) s[j] = 0.0f;
    *mx_scaled = ms;
    return sum;
}

void tr_attn_bwd_row_ref(float *s, float *dp, int nv, int nk, float scale, float lse, float delta) {
    for (int j = 0; j < nv; j++) {
        const float p = expf(s[j] * scale - lse);
        s[j] = p;
        dp[j] = p * (dp[j] - delta) * scale;
    }
    for (int j = nv; j < nk; j++) s[j] = dp[j] = 0.0f;
}

void tr_scaled_exp_ref(float *out, const float *x, int n, float sub, float g) {
    for (int i = 0; i < n; i++) out[i] = g * expf(x[i] - sub);
}

void tr_swiglu_bwd_ref(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float sg = 1.0f / (1.0f + expf(-g[i]));
        du[i] += dh[i] * g[i] * sg;
        dg[i] += dh[i] * u[i] * sg * (1.0f + g[i] * (1.0f - sg));
    }
}

TR_CLONES void tr_scale_copy(float *restrict y, const float *restrict x, float a, int n) {
#pragma omp simd
    for (int i = 0; i < n; i++) y[i] = a * x[i];
}

TR_CLONES void tr_add(float *restrict y, const float *restrict x, int n) {
#pragma omp simd
    for (int i = 0; i < n; i++) y[i] += x[i];
}

/* ==== AVX-512 ================================================================================= */

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define TR_AVX512 1
#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#define INLINE __attribute__((always_inline)) inline

/* ---- gemm: 6 rows x 64 columns of C in 24 registers; per k, four B vectors and six broadcasts of
 * A feed 24 FMAs. K runs in blocks of TR_GEMM_KB (the B panel, KB x 64, stays in L1 while all the
 * row tiles pass over it); each block's sum starts from zero and is then added to C. ---- */
#define G_MR 6
#define G_NV 4
#define G_KB TR_GEMM_KB

/* The loops every GEMM kernel shares: K in blocks of G_KB (each block's sums start from zero and are
 * then added to C, in order), columns in tiles of nw, rows in tiles of G_MR; tile(args, m0, mr, n0, w,
 * k0, kb, acc) computes one. Inlined into each kernel with its tile, so the call is direct. */
typedef void (*gemm_tile_fn)(const void *args, int m0, int mr, int n0, int w, int k0, int kb, bool acc);

static inline __attribute__((always_inline)) void gemm_blocked(int M, int N, int K, float *C, ptrdiff_t ldc, bool acc,
                                                               const int nw, const void *args, gemm_tile_fn tile) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        if (!acc)
            for (int m = 0; m < M; m++) memset(C + m * ldc, 0, (size_t)N * sizeof(float));
        return;
    }
    for (int k0 = 0; k0 < K; k0 += G_KB) {
        const int kb = K - k0 < G_KB ? K - k0 : G_KB;
        for (int n0 = 0; n0 < N; n0 += nw) {
            const int w = N - n0 < nw ? N - n0 : nw;
            for (int m0 = 0; m0 < M; m0 += G_MR) tile(args, m0, M - m0 < G_MR ? M - m0 : G_MR, n0, w, k0, kb, acc || k0 > 0);
        }
    }
}

/* a GEMM's operands, as tr_gemm (f32) and tr_gemm_bf16 (A bf16, B pairs) take them */
typedef struct gemm_args {
    const void *A, *B;
    ptrdiff_t ars, acs, ldb;
    float *C;
    ptrdiff_t ldc;
} gemm_args;

/* the first l lanes (none for l <= 0, all for l >= 16) */
static inline __mmask16 tail_mask(int l) {
    return l >= 16 ? (__mmask16)0xFFFF : l > 0 ? (__mmask16)((1u << l) - 1) : (__mmask16)0;
}

/* C (+)= the tile's sums, the lanes of mk only (both GEMM tiles end so) */
T512 static INLINE void tile_store(__m512 (*c)[G_NV], const int mr, const int nv, float *C, ptrdiff_t ldc,
                                   const __mmask16 *mk, bool acc) {
#pragma GCC unroll 6
    for (int m = 0; m < mr; m++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            __m512 r = c[m][v];
            if (acc) r = _mm512_add_ps(_mm512_maskz_loadu_ps(mk[v], C + m * ldc + 16 * v), r);
            _mm512_mask_storeu_ps(C + m * ldc + 16 * v, mk[v], r);
        }
}

T512 static INLINE void gemm_tile(const int mr, const int nv, int K, const float *A, ptrdiff_t ars, ptrdiff_t acs,
                                  const float *B, ptrdiff_t ldb, float *C, ptrdiff_t ldc, const __mmask16 *mk,
                                  bool acc) {
    __m512 c[G_MR][G_NV];
#pragma GCC unroll 6
    for (int m = 0; m < mr; m++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) c[m][v] = _mm512_setzero_ps();
    for (int k = 0; k < K; k++) {
        __m512 b[G_NV];
        const float *bk = B + k * ldb;
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) b[v] = _mm512_maskz_loadu_ps(mk[v], bk + 16 * v);
        const float *ak = A + k * acs;
#pragma GCC unroll 6
        for (int m = 0; m < mr; m++) {
            const __m512 a = _mm512_set1_ps(ak[m * ars]);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) c[m][v] = _mm512_fmadd_ps(a, b[v], c[m][v]);
        }
    }
    tile_store(c, mr, nv, C, ldc, mk, acc);
}

#define TILE_CASE(MR_, NV_)                                                                                \
    case (MR_) * 8 + (NV_):                                                                                \
        gemm_tile(MR_, NV_, K, A, ars, acs, B, ldb, C, ldc, mk, acc);                                      \
        break;
#define TILE_ROW(MR_) TILE_CASE(MR_, 1) TILE_CASE(MR_, 2) TILE_CASE(MR_, 3) TILE_CASE(MR_, 4)

T512 static void gemm_tile_any(int mr, int nv, int K, const float *A, ptrdiff_t ars, ptrdiff_t acs, const float *B,
                               ptrdiff_t ldb, float *C, ptrdiff_t ldc, const __mmask16 *mk, bool acc) {
    switch (mr * 8 + nv) {
        TILE_ROW(1) TILE_ROW(2) TILE_ROW(3) TILE_ROW(4) TILE_ROW(5) TILE_ROW(6)
    default: break;
    }
}

T512 static INLINE void gemm_tile_512(const void *p, int m0, int mr, int n0, int w, int k0, int kb, bool acc) {
    const gemm_args *g = p;
    __mmask16 mk[G_NV];
    for (int v = 0; v < G_NV; v++) mk[v] = tail_mask(w - 16 * v);
    gemm_tile_any(mr, (w + 15) / 16, kb, (const float *)g->A + m0 * g->ars + k0 * g->acs, g->ars, g->acs,
                  (const float *)g->B + k0 * g->ldb + n0, g->ldb, g->C + m0 * g->ldc + n0, g->ldc, mk, acc);
}

T512 static void gemm_avx512(int M, int N, int K, const float *A, ptrdiff_t ars, ptrdiff_t acs, const float *B,
                             ptrdiff_t ldb, float *C, ptrdiff_t ldc, bool acc) {
    const gemm_args g = {A, B, ars, acs, ldb, C, ldc};
    gemm_blocked(M, N, K, C, ldc, acc, 16 * G_NV, &g, gemm_tile_512);
}

T512 static float softmax_row_avx512(float *s, int nv, int nk, float scale, float *mx_scaled) {
    const float ms = ia_max16(s, nv) * scale;
    const __m512 sc = _mm512_set1_ps(scale), msv = _mm512_set1_ps(ms);
    __m512 sum = _mm512_setzero_ps();
    int j = 0;
    for (; j < nv; j += 16) {
        const __mmask16 m = tail_mask(nv - j);
        const __m512 e = _mm512_maskz_mov_ps(m, ia_exp512(_mm512_sub_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, s + j), sc), msv)));
        sum = _mm512_add_ps(sum, e);
        _mm512_mask_storeu_ps(s + j, tail_mask(nk - j), e); /* lanes past nv (and before nk) get 0 */
    }
    for (; j < nk; j += 16) _mm512_mask_storeu_ps(s + j, tail_mask(nk - j), _mm512_setzero_ps());
    *mx_scaled = ms;
    return _mm512_reduce_add_ps(sum);
}

T512 static void attn_bwd_row_avx512(float *s, float *dp, int nv, int nk, float scale, float lse, float delta) {
    const __m512 sc = _mm512_set1_ps(scale), l = _mm512_set1_ps(lse), d = _mm512_set1_ps(delta);
    int j = 0;
    for (; j < nv; j += 16) {
        const __mmask16 m = tail_mask(nv - j), mw = tail_mask(nk - j);
        const __m512 p = _mm512_maskz_mov_ps(m, ia_exp512(_mm512_sub_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, s + j), sc), l)));
        const __m512 g = _mm512_mul_ps(_mm512_mul_ps(p, _mm512_sub_ps(_mm512_maskz_loadu_ps(m, dp + j), d)), sc);
        _mm512_mask_storeu_ps(s + j, mw, p);
        _mm512_mask_storeu_ps(dp + j, mw, g);
    }
    for (; j < nk; j += 16) {
        _mm512_mask_storeu_ps(s + j, tail_mask(nk - j), _mm512_setzero_ps());
        _mm512_mask_storeu_ps(dp + j, tail_mask(nk - j), _mm512_setzero_ps());
    }
}

T512 static void scaled_exp_avx512(float *out, const float *x, int n, float sub, float g) {
    const __m512 s = _mm512_set1_ps(sub), gv = _mm512_set1_ps(g);
    for (int i = 0; i < n; i += 16) {
        const __mmask16 k = tail_mask(n - i);
        const __m512 e = ia_exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), s));
        _mm512_mask_storeu_ps(out + i, k, _mm512_mul_ps(gv, e));
    }
}
T512 static void swiglu_bwd_avx512(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n) {
    const __m512 one = _mm512_set1_ps(1.0f);
    for (size_t i = 0; i < n; i += 16) {
        const __mmask16 k = tail_mask((int)(n - i < 16 ? n - i : 16));
        const __m512 gv = _mm512_maskz_loadu_ps(k, g + i), hv = _mm512_maskz_loadu_ps(k, dh + i);
        const __m512 sg = _mm512_div_ps(one, _mm512_add_ps(one, ia_exp512(_mm512_sub_ps(_mm512_setzero_ps(), gv))));
        const __m512 a = _mm512_mul_ps(_mm512_mul_ps(hv, gv), sg);
        const __m512 b = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(hv, _mm512_maskz_loadu_ps(k, u + i)), sg),
                                       _mm512_add_ps(one, _mm512_mul_ps(gv, _mm512_sub_ps(one, sg))));
        _mm512_mask_storeu_ps(du + i, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, du + i), a));
        _mm512_mask_storeu_ps(dg + i, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, dg + i), b));
    }
}
/* 16 x 16 blocks transposed in registers (unpack, then 128-bit lane shuffles); the edges as the
 * reference does them. */
/* Stores the transpose of the 16x16 block r[i] (row i, 16 columns) at P[k0 + j][r0 + i]. */
T512 static INLINE void transpose16_store(float *P, int ldp, int r0, int k0, const __m512 *r) {
    __m512 t[16], u[16];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
#pragma GCC unroll 4
    for (int g = 0; g < 4; g++) { /* rows 4g..4g+3: u[4g + j] holds column 4L + j in lane L */
        u[4 * g + 0] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
        u[4 * g + 1] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0xEE);
        u[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
        u[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        const __m512 v0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88), v1 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xDD);
        const __m512 w0 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88),
                     w1 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xDD);
        _mm512_storeu_ps(P + (size_t)(k0 + j) * ldp + r0, _mm512_shuffle_f32x4(v0, w0, 0x88));
        _mm512_storeu_ps(P + (size_t)(k0 + 4 + j) * ldp + r0, _mm512_shuffle_f32x4(v1, w1, 0x88));
        _mm512_storeu_ps(P + (size_t)(k0 + 8 + j) * ldp + r0, _mm512_shuffle_f32x4(v0, w0, 0xDD));
        _mm512_storeu_ps(P + (size_t)(k0 + 12 + j) * ldp + r0, _mm512_shuffle_f32x4(v1, w1, 0xDD));
    }
}

T512 static void pack_t_avx512(float *P, int ldp, const float *W, ptrdiff_t ldw, int rows, int K) {
    const int r16 = rows & ~15, k16 = K & ~15;
    for (int r0 = 0; r0 < r16; r0 += 16)
        for (int k0 = 0; k0 < k16; k0 += 16) {
            __m512 r[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(W + (r0 + i) * ldw + k0);
            transpose16_store(P, ldp, r0, k0, r);
        }
    for (int r = 0; r < rows; r++) {
        const float *w = W + r * ldw;
        for (int k = r < r16 ? k16 : 0; k < K; k++) P[(size_t)k * ldp + r] = w[k];
    }
}

/* ---- bf16: vdpbf16ps tiles of 6 rows x 64 columns, A's pairs broadcast from its bf16 rows ---- */
#define TB __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")))

/* 32 floats to 16 bf16 pairs in order (cvtne2ps puts its second operand in the low half) */
TB static INLINE __m512i cvt_pairs32(const float *x) {
    return (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + 16), _mm512_loadu_ps(x));
}

TB static INLINE void gemm_bf16_tile(const int mr, const int nv, int np, const uint16_t *A, ptrdiff_t lda,
                                     const uint32_t *B, ptrdiff_t ldb, float *C, ptrdiff_t ldc, const __mmask16 *mk,
                                     bool acc) {
    __m512 c[G_MR][G_NV];
#pragma GCC unroll 6
    for (int m = 0; m < mr; m++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) c[m][v] = _mm512_setzero_ps();
    for (int p = 0; p < np; p++) {
        __m512i b[G_NV];
        const uint32_t *bp = B + p * ldb;
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) b[v] = _mm512_maskz_loadu_epi32(mk[v], bp + 16 * v);
#pragma GCC unroll 6
        for (int m = 0; m < mr; m++) {
            int32_t pr;
            memcpy(&pr, A + m * lda + 2 * p, 4); /* the pair (A[m][2p], A[m][2p+1]) */
            const __m512i a = _mm512_set1_epi32(pr);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) c[m][v] = _mm512_dpbf16_ps(c[m][v], (__m512bh)a, (__m512bh)b[v]);
        }
    }
    tile_store(c, mr, nv, C, ldc, mk, acc);
}

#define BTILE_CASE(MR_, NV_)                                                                               \
    case (MR_) * 8 + (NV_):                                                                                \
        gemm_bf16_tile(MR_, NV_, np, A, lda, B, ldb, C, ldc, mk, acc);                                     \
        break;
#define BTILE_ROW(MR_) BTILE_CASE(MR_, 1) BTILE_CASE(MR_, 2) BTILE_CASE(MR_, 3) BTILE_CASE(MR_, 4)

TB static void gemm_bf16_tile_any(int mr, int nv, int np, const uint16_t *A, ptrdiff_t lda, const uint32_t *B,
                                  ptrdiff_t ldb, float *C, ptrdiff_t ldc, const __mmask16 *mk, bool acc) {
    switch (mr * 8 + nv) {
        BTILE_ROW(1) BTILE_ROW(2) BTILE_ROW(3) BTILE_ROW(4) BTILE_ROW(5) BTILE_ROW(6)
    default: break;
    }
}

/* The f32 GEMM's loop order: per block of KB k, the B panel (KB/2 pairs x 64 columns) stays in L1
 * while every 6-row tile passes over it. */
TB static INLINE void gemm_tile_bf16(const void *p, int m0, int mr, int n0, int w, int k0, int kb, bool acc) {
    const gemm_args *g = p;
    __mmask16 mk[G_NV];
    for (int v = 0; v < G_NV; v++) mk[v] = tail_mask(w - 16 * v);
    /* odd K: a last half pair */
    gemm_bf16_tile_any(mr, (w + 15) / 16, (kb + 1) / 2, (const uint16_t *)g->A + m0 * g->ars + k0, g->ars,
                       (const uint32_t *)g->B + (k0 / 2) * g->ldb + n0, g->ldb, g->C + m0 * g->ldc + n0, g->ldc, mk, acc);
}

TB static void gemm_bf16_avx512(int M, int N, int K, const uint16_t *A, ptrdiff_t lda, const uint32_t *B,
                                ptrdiff_t ldb, float *C, ptrdiff_t ldc, bool acc) {
    const gemm_args g = {A, B, lda, 1, ldb, C, ldc};
    gemm_blocked(M, N, K, C, ldc, acc, 16 * G_NV, &g, gemm_tile_bf16);
}

TB static void bf16_rows_avx512(uint16_t *dst, ptrdiff_t ldd, const float *src, ptrdiff_t lds, int rows, int K) {
    for (int r = 0; r < rows; r++) {
        for (int k = 0; k < K; k += 16) {
            const __mmask16 m = tail_mask(K - k);
            _mm256_mask_storeu_epi16(dst + r * ldd + k, m, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + r * lds + k)));
        }
        if (K % 2) dst[r * ldd + K] = 0;
    }
}

/* rows of 16 W rows x 32 k: each row's 32 values to 16 pairs, then the 16x16 block of pairs transposed */
TB static void pack_bf16_t_avx512(uint32_t *P, int ldp, const float *W, ptrdiff_t ldw, int rows, int K) {
    const int r16 = rows & ~15, np = K / 2, p16 = np & ~15;
    for (int r0 = 0; r0 < r16; r0 += 16)
        for (int p0 = 0; p0 < p16; p0 += 16) {
            __m512 r[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) r[i] = (__m512)cvt_pairs32(W + (r0 + i) * ldw + 2 * p0);
            transpose16_store((float *)P, ldp, r0, p0, r); /* 32-bit lanes moved, not computed on */
        }
    for (int r = 0; r < rows; r++) {
        const float *w = W + r * ldw;
        for (int p = r < r16 ? p16 : 0; 2 * p < K; p++)
            P[(size_t)p * ldp + r] = bf16_pair(w[2 * p], 2 * p + 1 < K ? w[2 * p + 1] : 0.0f);
    }
}

TB static void pack_bf16_rows_avx512(uint32_t *P, int ldp, const float *W, ptrdiff_t ldw, int rows, int width) {
    for (int p = 0; 2 * p < rows; p++) {
        const float *lo = W + 2 * p * ldw, *hi = lo + ldw;
        const bool last = 2 * p + 1 == rows; /* odd rows: the high halves are zero */
        for (int n = 0; n < width; n += 16) {
            const __mmask16 m = tail_mask(width - n);
            const __m512i a = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, lo + n)));
            const __m512i b = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(last ? 0 : m, hi + n)));
            _mm512_mask_storeu_epi32(P + (size_t)p * ldp + n, m, _mm512_or_si512(a, _mm512_slli_epi32(b, 16)));
        }
    }
}

/* ---- AVX2 gemm: the AVX-512 tile's shape at 8 lanes, 6 rows x 16 columns in 12 registers (with two
 * B vectors and a broadcast of A, 15 of the 16). The same chains (one fused multiply-add per k from
 * zero in each K block, then C + the block sum) as gemm_avx512: the same bits. ---- */
#define T256 __attribute__((target("avx2,fma")))
#define G2_NV 2

/* C (+)= the tile's sums (both AVX2 tiles end so); masked: the lanes of mk only */
T256 static INLINE void tile_store_avx2(__m256 (*c)[G2_NV], const int mr, const int nv, const bool masked, float *C,
                                        ptrdiff_t ldc, const __m256i *mk, bool acc) {
#pragma GCC unroll 6
    for (int m = 0; m < mr; m++)
#pragma GCC unroll 2
        for (int v = 0; v < nv; v++) {
            float *cp = C + m * ldc + 8 * v;
            __m256 r = c[m][v];
            if (acc) r = _mm256_add_ps(masked ? _mm256_maskload_ps(cp, mk[v]) : _mm256_loadu_ps(cp), r);
            if (masked) _mm256_maskstore_ps(cp, mk[v], r);
            else _mm256_storeu_ps(cp, r);
        }
}

/* masked: the last column tile (lanes of mk only); else all 8 NV lanes, plain loads and stores */
T256 static INLINE void gemm_tile_avx2(const int mr, const int nv, const bool masked, int K, const float *A,
                                       ptrdiff_t ars, ptrdiff_t acs, const float *B, ptrdiff_t ldb, float *C,
                                       ptrdiff_t ldc, const __m256i *mk, bool acc) {
    __m256 c[G_MR][G2_NV];
#pragma GCC unroll 6
    for (int m = 0; m < mr; m++)
#pragma GCC unroll 2
        for (int v = 0; v < nv; v++) c[m][v] = _mm256_setzero_ps();
    for (int k = 0; k < K; k++) {
        __m256 b[G2_NV];
        const float *bk = B + k * ldb;
#pragma GCC unroll 2
        for (int v = 0; v < nv; v++) b[v] = masked ? _mm256_maskload_ps(bk + 8 * v, mk[v]) : _mm256_loadu_ps(bk + 8 * v);
        const float *ak = A + k * acs;
#pragma GCC unroll 6
        for (int m = 0; m < mr; m++) {
            const __m256 a = _mm256_broadcast_ss(ak + m * ars);
#pragma GCC unroll 2
            for (int v = 0; v < nv; v++) c[m][v] = _mm256_fmadd_ps(a, b[v], c[m][v]);
        }
    }
    tile_store_avx2(c, mr, nv, masked, C, ldc, mk, acc);
}

/* The constant-shape instances of an AVX2 tile: CALL(MR, NV, MASKED) for the tile's mr rows, nv vectors
 * and whether it is the masked last column tile (full tiles have nv = 2). */
#define TILE2_CASE(CALL, MR_, NV_, MASKED_)                                                                \
    case (MR_) * 8 + (NV_): CALL(MR_, NV_, MASKED_); break;
#define TILE2_ROWS(CALL, NV_, MASKED_)                                                                     \
    TILE2_CASE(CALL, 1, NV_, MASKED_) TILE2_CASE(CALL, 2, NV_, MASKED_) TILE2_CASE(CALL, 3, NV_, MASKED_)  \
    TILE2_CASE(CALL, 4, NV_, MASKED_) TILE2_CASE(CALL, 5, NV_, MASKED_) TILE2_CASE(CALL, 6, NV_, MASKED_)
#define TILE2_SWITCH(CALL, mr, nv, masked)                                                                 \
    do {                                                                                                   \
        if (!(masked)) {                                                                                   \
            switch ((mr) * 8 + 2) { TILE2_ROWS(CALL, 2, false) default: break; }                           \
        } else {                                                                                           \
            switch ((mr) * 8 + (nv)) { TILE2_ROWS(CALL, 1, true) TILE2_ROWS(CALL, 2, true) default: break; } \
        }                                                                                                  \
    } while (0)

T256 static void gemm_tile_any_avx2(int mr, int nv, bool masked, int K, const float *A, ptrdiff_t ars, ptrdiff_t acs,
                                    const float *B, ptrdiff_t ldb, float *C, ptrdiff_t ldc, const __m256i *mk,
                                    bool acc) {
#define CALL(MR_, NV_, MASKED_) gemm_tile_avx2(MR_, NV_, MASKED_, K, A, ars, acs, B, ldb, C, ldc, mk, acc)
    TILE2_SWITCH(CALL, mr, nv, masked);
#undef CALL
}

T256 static INLINE void gemm_tile_256(const void *p, int m0, int mr, int n0, int w, int k0, int kb, bool acc) {
    const gemm_args *g = p;
    __m256i mk[G2_NV];
    for (int v = 0; v < G2_NV; v++) mk[v] = ia_mask8(w - 8 * v);
    gemm_tile_any_avx2(mr, (w + 7) / 8, w < 8 * G2_NV, kb, (const float *)g->A + m0 * g->ars + k0 * g->acs, g->ars,
                       g->acs, (const float *)g->B + k0 * g->ldb + n0, g->ldb, g->C + m0 * g->ldc + n0, g->ldc, mk, acc);
}

T256 static void gemm_avx2(int M, int N, int K, const float *A, ptrdiff_t ars, ptrdiff_t acs, const float *B,
                           ptrdiff_t ldb, float *C, ptrdiff_t ldc, bool acc) {
    const gemm_args g = {A, B, ars, acs, ldb, C, ldc};
    gemm_blocked(M, N, K, C, ldc, acc, 8 * G2_NV, &g, gemm_tile_256);
}

/* The row kernels at 8 lanes: the AVX-512 versions' operations with ia_exp256, lanes past the end
 * masked (maskload reads zeros there). */
T256 static float softmax_row_avx2(float *s, int nv, int nk, float scale, float *mx_scaled) {
    const float ms = ia_max8(s, nv) * scale;
    const __m256 sc = _mm256_set1_ps(scale), msv = _mm256_set1_ps(ms);
    __m256 sum = _mm256_setzero_ps();
    int j = 0;
    for (; j < nv; j += 8) {
        const __m256i m = ia_mask8(nv - j);
        const __m256 e = _mm256_and_ps(ia_exp256(_mm256_sub_ps(_mm256_mul_ps(_mm256_maskload_ps(s + j, m), sc), msv)),
                                       _mm256_castsi256_ps(m));
        sum = _mm256_add_ps(sum, e);
        _mm256_maskstore_ps(s + j, ia_mask8(nk - j), e); /* lanes past nv (and before nk) get 0 */
    }
    for (; j < nk; j += 8) _mm256_maskstore_ps(s + j, ia_mask8(nk - j), _mm256_setzero_ps());
    *mx_scaled = ms;
    float l[8];
    _mm256_storeu_ps(l, sum);
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

T256 static void attn_bwd_row_avx2(float *s, float *dp, int nv, int nk, float scale, float lse, float delta) {
    const __m256 sc = _mm256_set1_ps(scale), l = _mm256_set1_ps(lse), d = _mm256_set1_ps(delta);
    int j = 0;
    for (; j < nv; j += 8) {
        const __m256i m = ia_mask8(nv - j), mw = ia_mask8(nk - j);
        const __m256 p = _mm256_and_ps(ia_exp256(_mm256_sub_ps(_mm256_mul_ps(_mm256_maskload_ps(s + j, m), sc), l)),
                                       _mm256_castsi256_ps(m));
        const __m256 g = _mm256_mul_ps(_mm256_mul_ps(p, _mm256_sub_ps(_mm256_maskload_ps(dp + j, m), d)), sc);
        _mm256_maskstore_ps(s + j, mw, p);
        _mm256_maskstore_ps(dp + j, mw, g);
    }
    for (; j < nk; j += 8) {
        _mm256_maskstore_ps(s + j, ia_mask8(nk - j), _mm256_setzero_ps());
        _mm256_maskstore_ps(dp + j, ia_mask8(nk - j), _mm256_setzero_ps());
    }
}

T256 static void scaled_exp_avx2(float *out, const float *x, int n, float sub, float g) {
    const __m256 s = _mm256_set1_ps(sub), gv = _mm256_set1_ps(g);
    for (int i = 0; i < n; i += 8) {
        const __m256i k = ia_mask8(n - i);
        _mm256_maskstore_ps(out + i, k, _mm256_mul_ps(gv, ia_exp256(_mm256_sub_ps(_mm256_maskload_ps(x + i, k), s))));
    }
}

T256 static void swiglu_bwd_avx2(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n) {
    const __m256 one = _mm256_set1_ps(1.0f);
    for (size_t i = 0; i < n; i += 8) {
        const __m256i k = ia_mask8((int)(n - i < 8 ? n - i : 8));
        const __m256 gv = _mm256_maskload_ps(g + i, k), hv = _mm256_maskload_ps(dh + i, k);
        const __m256 sg = _mm256_div_ps(one, _mm256_add_ps(one, ia_exp256(_mm256_sub_ps(_mm256_setzero_ps(), gv))));
        const __m256 a = _mm256_mul_ps(_mm256_mul_ps(hv, gv), sg);
        const __m256 b = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(hv, _mm256_maskload_ps(u + i, k)), sg),
                                       _mm256_add_ps(one, _mm256_mul_ps(gv, _mm256_sub_ps(one, sg))));
        _mm256_maskstore_ps(du + i, k, _mm256_add_ps(_mm256_maskload_ps(du + i, k), a));
        _mm256_maskstore_ps(dg + i, k, _mm256_add_ps(_mm256_maskload_ps(dg + i, k), b));
    }
}

/* ---- bf16 products without AVX512_BF16 (an AVX2 CPU, or AVX-512 without BF16): vdpbf16ps emulated
 * bit for bit. The product of two bf16 values is exact in f32, so each of the instruction's steps (the
 * odd element of a pair, then the even one) is one FMA; its DAZ and FTZ (subnormal inputs and results
 * as signed zeros) come from MXCSR, set around the chains only: the block sums are added to C under
 * the usual rules, as the AVX-512 kernel adds them. Same tile as the f32 one, 6 x 16; B is read again
 * for the even step (both halves kept would take 17 registers). ---- */
T256 static INLINE void gemm_bf16e_tile(const int mr, const int nv, const bool masked, int np, const uint16_t *A,
                                        ptrdiff_t lda, const uint32_t *B, ptrdiff_t ldb, float *C, ptrdiff_t ldc,
                                        const __m256i *mk, bool acc) {
    __m256 c[G_MR][G2_NV];
#pragma GCC unroll 6
    for (int m = 0; m < mr; m++)
#pragma GCC unroll 2
        for (int v = 0; v < nv; v++) c[m][v] = _mm256_setzero_ps();
    const __m256i hi = _mm256_set1_epi32((int)0xFFFF0000u);
    const unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040u); /* FTZ (bit 15), DAZ (bit 6) */
    for (int p = 0; p < np; p++) {
        const int *bp = (const int *)(B + p * ldb);
        for (int half = 1; half >= 0; half--) { /* the odd element first */
            __m256 b[G2_NV];
#pragma GCC unroll 2
            for (int v = 0; v < nv; v++) {
                const __m256i w = masked ? _mm256_maskload_epi32(bp + 8 * v, mk[v]) : _mm256_loadu_si256((const __m256i *)(bp + 8 * v));
                b[v] = _mm256_castsi256_ps(half ? _mm256_and_si256(w, hi) : _mm256_slli_epi32(w, 16));
            }
#pragma GCC unroll 6
            for (int m = 0; m < mr; m++) {
                uint32_t pr;
                memcpy(&pr, A + m * lda + 2 * p, 4); /* the pair (A[m][2p], A[m][2p+1]) */
                const __m256 a = _mm256_castsi256_ps(_mm256_set1_epi32((int)(half ? pr & 0xFFFF0000u : pr << 16)));
#pragma GCC unroll 2
                for (int v = 0; v < nv; v++) c[m][v] = _mm256_fmadd_ps(a, b[v], c[m][v]);
            }
        }
    }
    _mm_setcsr(csr);
    tile_store_avx2(c, mr, nv, masked, C, ldc, mk, acc);
}

T256 static void gemm_bf16e_tile_any(int mr, int nv, bool masked, int np, const uint16_t *A, ptrdiff_t lda,
                                     const uint32_t *B, ptrdiff_t ldb, float *C, ptrdiff_t ldc, const __m256i *mk,
                                     bool acc) {
#define CALL(MR_, NV_, MASKED_) gemm_bf16e_tile(MR_, NV_, MASKED_, np, A, lda, B, ldb, C, ldc, mk, acc)
    TILE2_SWITCH(CALL, mr, nv, masked);
#undef CALL
}

T256 static INLINE void gemm_tile_bf16e(const void *p, int m0, int mr, int n0, int w, int k0, int kb, bool acc) {
    const gemm_args *g = p;
    __m256i mk[G2_NV];
    for (int v = 0; v < G2_NV; v++) mk[v] = ia_mask8(w - 8 * v);
    gemm_bf16e_tile_any(mr, (w + 7) / 8, w < 8 * G2_NV, (kb + 1) / 2, (const uint16_t *)g->A + m0 * g->ars + k0, g->ars,
                        (const uint32_t *)g->B + (k0 / 2) * g->ldb + n0, g->ldb, g->C + m0 * g->ldc + n0, g->ldc, mk, acc);
}

T256 static void gemm_bf16_avx2(int M, int N, int K, const uint16_t *A, ptrdiff_t lda, const uint32_t *B,
                                ptrdiff_t ldb, float *C, ptrdiff_t ldc, bool acc) {
    const gemm_args g = {A, B, lda, 1, ldb, C, ldc};
    gemm_blocked(M, N, K, C, ldc, acc, 8 * G2_NV, &g, gemm_tile_bf16e);
}

/* 8 floats to bf16 as vcvtneps2bf16 rounds them (ia_fp32_to_bf16_cvtne): subnormals to signed zero,
 * NaN quieted, else to nearest even; in the low 16 bits of each lane. */
T256 static INLINE __m256i cvtne8(__m256 x) {
    const __m256i u = _mm256_castps_si256(x), e = _mm256_and_si256(u, _mm256_set1_epi32(0x7F800000));
    const __m256i sign = _mm256_srli_epi32(_mm256_and_si256(u, _mm256_set1_epi32((int)0x80000000u)), 16);
    const __m256i rnd = _mm256_srli_epi32(
        _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1)))), 16);
    const __m256i nan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    const __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF)), _mm256_set1_epi32(0x7F800000));
    const __m256i is_sub = _mm256_cmpeq_epi32(e, _mm256_setzero_si256());
    return _mm256_blendv_epi8(_mm256_blendv_epi8(rnd, nan, is_nan), sign, is_sub);
}

/* pairs (lo | hi << 16) of two vectors of bf16 lanes */
T256 static INLINE __m256i pair8(__m256i lo, __m256i hi) { return _mm256_or_si256(lo, _mm256_slli_epi32(hi, 16)); }

T256 static void bf16_rows_avx2(uint16_t *dst, ptrdiff_t ldd, const float *src, ptrdiff_t lds, int rows, int K) {
    for (int r = 0; r < rows; r++) {
        int k = 0;
        for (; k + 16 <= K; k += 16) { /* 16 values: two vectors packed to 16-bit lanes in order */
            const __m256i a = cvtne8(_mm256_loadu_ps(src + r * lds + k)), b = cvtne8(_mm256_loadu_ps(src + r * lds + k + 8));
            _mm256_storeu_si256((__m256i *)(dst + r * ldd + k), _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xD8));
        }
        for (; k < K; k++) dst[r * ldd + k] = ia_fp32_to_bf16_cvtne(src[r * lds + k]);
        if (K % 2) dst[r * ldd + K] = 0;
    }
}

/* 8 bf16 pairs (x[2p] | x[2p+1] << 16) of 16 consecutive values: the bf16 row itself, read as pairs */
T256 static INLINE __m256 pairs8(const float *x) {
    const __m256i a = cvtne8(_mm256_loadu_ps(x)), b = cvtne8(_mm256_loadu_ps(x + 8));
    return _mm256_castsi256_ps(_mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xD8));
}

/* P[p][r] = the pair (W[r][2p], W[r][2p+1]): 8 rows x 8 pairs converted, then transposed as 32-bit
 * lanes (moved, not computed on) */
T256 static void pack_bf16_t_avx2(uint32_t *P, int ldp, const float *W, ptrdiff_t ldw, int rows, int K) {
    const int r8 = rows & ~7, np = K / 2, p8 = np & ~7;
    for (int r0 = 0; r0 < r8; r0 += 8)
        for (int p0 = 0; p0 < p8; p0 += 8) {
            __m256 v[8], t[8], u[8];
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) v[i] = pairs8(W + (r0 + i) * ldw + 2 * p0);
#pragma GCC unroll 4
            for (int i = 0; i < 8; i += 2) {
                t[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);
                t[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
            }
#pragma GCC unroll 2
            for (int i = 0; i < 8; i += 4) {
                u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
                u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
                u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
                u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
            }
            /* u[j] (j < 4) holds pair j of rows 0-3 and pair j + 4 of the same rows; u[j + 4] rows 4-7 */
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                _mm256_storeu_ps((float *)P + (size_t)(p0 + j) * ldp + r0, _mm256_permute2f128_ps(u[j], u[j + 4], 0x20));
                _mm256_storeu_ps((float *)P + (size_t)(p0 + j + 4) * ldp + r0, _mm256_permute2f128_ps(u[j], u[j + 4], 0x31));
            }
        }
    for (int r = 0; r < rows; r++) {
        const float *w = W + r * ldw;
        for (int p = r < r8 ? p8 : 0; 2 * p < K; p++)
            P[(size_t)p * ldp + r] = bf16_pair(w[2 * p], 2 * p + 1 < K ? w[2 * p + 1] : 0.0f);
    }
}

/* P[p][n] = (W[2p][n], W[2p+1][n]) as a bf16 pair, 8 columns at a time */
T256 static void pack_bf16_rows_avx2(uint32_t *P, int ldp, const float *W, ptrdiff_t ldw, int rows, int width) {
    for (int p = 0; 2 * p < rows; p++) {
        const float *w0 = W + 2 * p * ldw, *w1 = 2 * p + 1 < rows ? W + (2 * p + 1) * ldw : NULL;
        int n = 0;
        for (; n + 8 <= width; n += 8) {
            const __m256i lo = cvtne8(_mm256_loadu_ps(w0 + n)), hi = w1 ? cvtne8(_mm256_loadu_ps(w1 + n)) : _mm256_setzero_si256();
            _mm256_storeu_si256((__m256i *)(P + (size_t)p * ldp + n), pair8(lo, hi));
        }
        for (; n < width; n++)
            P[(size_t)p * ldp + n] = bf16_pair(w0[n], w1 ? w1[n] : 0.0f);
    }
}
#endif /* x86-64 */

/* ==== dispatch ================================================================================ */

/* The kernel when `ok` (and the build has it), else the reference. */
#ifdef TR_AVX512
#define TR_DISPATCH(ok, fast, ref, ...)                                                                   \
    do {                                                                                                   \
        if (ok) fast(__VA_ARGS__);                                                                         \
        else ref(__VA_ARGS__);                                                                             \
    } while (0)
#define TR_DISPATCH_RET(ok, fast, ref, ...) return (ok) ? fast(__VA_ARGS__) : ref(__VA_ARGS__)
/* the AVX-512 kernel, else the AVX2 one, else the reference */
#define TR_DISPATCH2(f512, f256, ref, ...)                                                                 \
    do {                                                                                                   \
        if (tr_kern_avx512()) f512(__VA_ARGS__);                                                           \
        else if (tr_kern_avx2()) f256(__VA_ARGS__);                                                        \
        else ref(__VA_ARGS__);                                                                             \
    } while (0)
#define TR_DISPATCH2_RET(f512, f256, ref, ...)                                                             \
    return tr_kern_avx512() ? f512(__VA_ARGS__) : tr_kern_avx2() ? f256(__VA_ARGS__) : ref(__VA_ARGS__)
#else
#define TR_DISPATCH(ok, fast, ref, ...) ref(__VA_ARGS__)
#define TR_DISPATCH_RET(ok, fast, ref, ...) return ref(__VA_ARGS__)
#define TR_DISPATCH2(f512, f256, ref, ...) ref(__VA_ARGS__)
#define TR_DISPATCH2_RET(f512, f256, ref, ...) return ref(__VA_ARGS__)
#endif

bool tr_kern_avx512(void) {
#ifdef TR_AVX512
    /* the tensor kernels' family: "avx512" only where the CPU has AVX-512 F/BW/VL/DQ */
    const char *k = ia_cpu_kernel_name();
    return strcmp(k, "avx512") == 0;
#else
    return false;
#endif
}

bool tr_kern_avx2(void) {
#ifdef TR_AVX512
    return strcmp(ia_cpu_kernel_name(), "avx2") == 0;
#else
    return false;
#endif
}

void tr_gemm(int M, int N, int K, const float *A, ptrdiff_t ars, ptrdiff_t acs, const float *B, ptrdiff_t ldb,
             float *C, ptrdiff_t ldc, bool acc) {
    TR_DISPATCH2(gemm_avx512, gemm_avx2, tr_gemm_ref, M, N, K, A, ars, acs, B, ldb, C, ldc, acc);
}

bool tr_kern_bf16(void) {
#ifdef TR_AVX512
    return tr_kern_avx512() && ia_cpu_has_bf16_dot();
#else
    return false;
#endif
}

#ifdef TR_AVX512
/* the AVX2 emulation of the bf16 products: where AVX2 kernels run but the CPU has no AVX512_BF16 */
static bool tr_kern_bf16_emulated(void) { return !tr_kern_bf16() && (tr_kern_avx512() || tr_kern_avx2()); }
#endif

void tr_bf16_rows(uint16_t *dst, ptrdiff_t ldd, const float *src, ptrdiff_t lds, int rows, int K) {
#ifdef TR_AVX512
    if (tr_kern_bf16_emulated()) {
        bf16_rows_avx2(dst, ldd, src, lds, rows, K);
        return;
    }
#endif
    TR_DISPATCH(tr_kern_bf16(), bf16_rows_avx512, tr_bf16_rows_ref, dst, ldd, src, lds, rows, K);
}

void tr_gemm_bf16(int M, int N, int K, const uint16_t *A, ptrdiff_t lda, const uint32_t *B, ptrdiff_t ldb, float *C,
                  ptrdiff_t ldc, bool acc) {
#ifdef TR_AVX512
    if (tr_kern_bf16_emulated()) {
        gemm_bf16_avx2(M, N, K, A, lda, B, ldb, C, ldc, acc);
        return;
    }
#endif
    TR_DISPATCH(tr_kern_bf16(), gemm_bf16_avx512, tr_gemm_bf16_ref, M, N, K, A, lda, B, ldb, C, ldc, acc);
}

void tr_pack_bf16_t(uint32_t *P, int ldp, const float *W, ptrdiff_t ldw, int rows, int K) {
#ifdef TR_AVX512
    if (tr_kern_bf16_emulated()) {
        pack_bf16_t_avx2(P, ldp, W, ldw, rows, K);
        return;
    }
#endif
    TR_DISPATCH(tr_kern_bf16(), pack_bf16_t_avx512, tr_pack_bf16_t_ref, P, ldp, W, ldw, rows, K);
}

void tr_pack_bf16_rows(uint32_t *P, int ldp, const float *W, ptrdiff_t ldw, int rows, int width) {
#ifdef TR_AVX512
    if (tr_kern_bf16_emulated()) {
        pack_bf16_rows_avx2(P, ldp, W, ldw, rows, width);
        return;
    }
#endif
    TR_DISPATCH(tr_kern_bf16(), pack_bf16_rows_avx512, tr_pack_bf16_rows_ref, P, ldp, W, ldw, rows, width);
}

float tr_softmax_row(float *s, int nv, int nk, float scale, float *mx_scaled) {
    TR_DISPATCH2_RET(softmax_row_avx512, softmax_row_avx2, tr_softmax_row_ref, s, nv, nk, scale, mx_scaled);
}

void tr_attn_bwd_row(float *s, float *dp, int nv, int nk, float scale, float lse, float delta) {
    TR_DISPATCH2(attn_bwd_row_avx512, attn_bwd_row_avx2, tr_attn_bwd_row_ref, s, dp, nv, nk, scale, lse, delta);
}

void tr_scaled_exp(float *out, const float *x, int n, float sub, float g) {
    TR_DISPATCH2(scaled_exp_avx512, scaled_exp_avx2, tr_scaled_exp_ref, out, x, n, sub, g);
}

void tr_swiglu_bwd(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n) {
    TR_DISPATCH2(swiglu_bwd_avx512, swiglu_bwd_avx2, tr_swiglu_bwd_ref, dg, du, dh, g, u, n);
}

void tr_pack_t(float *P, int ldp, const float *W, ptrdiff_t ldw, int rows, int K) {
    TR_DISPATCH(tr_kern_avx512(), pack_t_avx512, tr_pack_t_ref, P, ldp, W, ldw, rows, K);
}
