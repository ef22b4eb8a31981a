/* qmatmul_avx512.c — AVX-512 kernels of the low-precision inference matmul (qmatmul.c): the activation
 * quantisers and one tile routine per weight type over 16-row packed panels: vpdpbusd (VNNI) against
 * 4 broadcast activation bytes at a time, or vdpbf16ps (AVX512_BF16) against a broadcast bf16 pair.
 * Same bits as the reference ia_q8_dot_ref: the block sums are exact integers and the f32 scale steps
 * are the reference's, lane by lane; the bf16 pairs go through the reference's steps in its order.
 * (x86-64 only, chosen at run time.) */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#include "kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define TV __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))
#define TB __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512bf16,avx2,fma,f16c")))
#define INLINE __attribute__((always_inline)) inline

/* ---- activations ------------------------------------------------------------------------------ */

TV static void quantize_avx512(const float *x, int n_in, uint8_t *row) {
    int8_t *q = (int8_t *)row;
    float *d = (float *)(row + n_in);
    int32_t *s = (int32_t *)(d + n_in / IA_QA_BLOCK);
    const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
    for (int b = 0; b < n_in / IA_QA_BLOCK; b++) {
        const __m512 x0 = _mm512_loadu_ps(x + 32 * b), x1 = _mm512_loadu_ps(x + 32 * b + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_and_ps(x0, abs_mask), _mm512_and_ps(x1, abs_mask)));
        const float db = amax / 127.0f, id = db != 0.0f ? 1.0f / db : 0.0f;
        const __m512 vid = _mm512_set1_ps(id);
        /* cvtps2dq rounds to nearest even, as nearbyintf does in the default mode */
        const __m512i i0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, vid)), i1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, vid));
        _mm_storeu_si128((__m128i *)(q + 32 * b), _mm512_cvtsepi32_epi8(i0));
        _mm_storeu_si128((__m128i *)(q + 32 * b + 16), _mm512_cvtsepi32_epi8(i1));
        s[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
        d[b] = db;
    }
}

/* ---- tiles: P panels (16 rows each) x T tokens, all blocks of the row --------------------------- */

typedef struct tile_args {
    const uint8_t *w[2];     /* panel data */
    const int8_t *qx[4];     /* token activation rows */
    const float *dx[4];
    const int32_t *sx[4];
    float *y[4];             /* output row of each token at the first panel's first row */
    int nb;                  /* blocks (32) or super-blocks (256) */
    int rows[2];             /* valid rows in each panel (16, or fewer in the last) */
    size_t panel_bytes;      /* distance between panels */
} tile_args;

/* Decoding reads each weight once: prefetch this far ahead in each panel's stream (two panels in
 * flight per thread cover the memory latency at full bandwidth). Offsets per step are spread over the
 * block; a stride of 68 or 72 bytes leaves a line in 17 or 9 to the hardware prefetcher (prefetching
 * those too measured no faster). */
#ifndef PF_DIST
#define PF_DIST 2048
#endif

/* Prefetch offset from block j (bs bytes) of a panel: PF_DIST ahead in its stream, and past the panel's
 * end into the panel this stream reads next (P panels on), not into the one beside it, which the other
 * stream is reading: a 576-wide Q4_0 panel is 5 KiB, so the start of each new pair used to be read cold. */
#define PF_OFF(a, j, bs, P) \
    (PF_DIST + ((size_t)(j) * (bs) + PF_DIST >= (a)->panel_bytes ? (size_t)((P) - 1) * (a)->panel_bytes : 0))

/* A weight vector loaded once into a register: GCC otherwise folds the load into both the mask and
 * the shift that split its nibbles, and the tile then issues twice the loads (Q4_0 decode from L2, one
 * thread: 84 -> 115 GB/s). */
TV static INLINE __m512i load_once(const uint8_t *p) {
    __m512i v = _mm512_loadu_si512(p);
    __asm__("" : "+v"(v));
    return v;
}

#define B4(p, off) _mm512_set1_epi32(*(const int32_t *)((p) + (off)))

TV static INLINE void store_rows(float *y, __m512 v, int rows) {
    if (rows >= 16) _mm512_storeu_ps(y, v);
    else _mm512_mask_storeu_ps(y, (__mmask16)((1u << rows) - 1u), v);
}

/* Q8_0 and Q4_0: one f16 scale per row and block, integer offset 128 (Q8_0, stored q + 128) or 8 (Q4_0
 * nibbles) times the activation block sum. */
TV static INLINE void tile_q8_0(const tile_args *a, const int P, const int T) {
    __m512 acc[2][4];
    for (int p = 0; p < P; p++)
        for (int t = 0; t < T; t++) acc[p][t] = _mm512_setzero_ps();
    for (int j = 0; j < a->nb; j++) {
        const uint8_t *b[2] = {a->w[0] + (size_t)j * 544, P > 1 ? a->w[1] + (size_t)j * 544 : NULL};
        const size_t pfo = PF_OFF(a, j, 544, P);
        __m512i is[2][4];
        for (int p = 0; p < P; p++)
            for (int t = 0; t < T; t++) is[p][t] = _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int g = 0; g < 8; g++) {
            __m512i wv[2];
            if (T <= 2)
                for (int p = 0; p < P; p++) _mm_prefetch((const char *)b[p] + pfo + 68 * g, _MM_HINT_T0);
            for (int p = 0; p < P; p++) wv[p] = _mm512_loadu_si512(b[p] + 64 * g);
            for (int t = 0; t < T; t++) {
                const __m512i xb = B4(a->qx[t], 32 * j + 4 * g);
                for (int p = 0; p < P; p++) is[p][t] = _mm512_dpbusd_epi32(is[p][t], wv[p], xb);
            }
        }
        __m512 dw[2];
        for (int p = 0; p < P; p++) dw[p] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(b[p] + 512)));
        for (int t = 0; t < T; t++) {
            const __m512i off = _mm512_set1_epi32(a->sx[t][j] * 128);
            const __m512 dx = _mm512_set1_ps(a->dx[t][j]);
            for (int p = 0; p < P; p++) {
                const __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(is[p][t], off));
                acc[p][t] = _mm512_fmadd_ps(f, _mm512_mul_ps(dw[p], dx), acc[p][t]);
            }
        }
    }
    for (int t = 0; t < T; t++)
        for (int p = 0; p < P; p++) store_rows(a->y[t] + 16 * p, acc[p][t], a->rows[p]);
}

TV static INLINE void tile_q4_0(const tile_args *a, const int P, const int T) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512 acc[2][4];
    for (int p = 0; p < P; p++)
        for (int t = 0; t < T; t++) acc[p][t] = _mm512_setzero_ps();
    for (int j = 0; j < a->nb; j++) {
        const uint8_t *b[2] = {a->w[0] + (size_t)j * 288, P > 1 ? a->w[1] + (size_t)j * 288 : NULL};
        const size_t pfo = PF_OFF(a, j, 288, P);
        __m512i is[2][4];
        for (int p = 0; p < P; p++)
            for (int t = 0; t < T; t++) is[p][t] = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) {
            __m512i lo[2], hi[2];
            if (T <= 2)
                for (int p = 0; p < P; p++) _mm_prefetch((const char *)b[p] + pfo + 72 * v, _MM_HINT_T0);
            for (int p = 0; p < P; p++) {
                const __m512i raw = load_once(b[p] + 64 * v);
                lo[p] = _mm512_and_si512(raw, m4);
                hi[p] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4);
            }
            for (int t = 0; t < T; t++) {
                const __m512i xl = B4(a->qx[t], 32 * j + 4 * v), xh = B4(a->qx[t], 32 * j + 16 + 4 * v);
                for (int p = 0; p < P; p++) {
                    is[p][t] = _mm512_dpbusd_epi32(is[p][t], lo[p], xl);
                    is[p][t] = _mm512_dpbusd_epi32(is[p][t], hi[p], xh);
                }
            }
        }
        __m512 dw[2];
        for (int p = 0; p < P; p++) dw[p] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(b[p] + 256)));
        for (int t = 0; t < T; t++) {
            const __m512i off = _mm512_set1_epi32(a->sx[t][j] * 8);
            const __m512 dx = _mm512_set1_ps(a->dx[t][j]);
            for (int p = 0; p < P; p++) {
                const __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(is[p][t], off));
                acc[p][t] = _mm512_fmadd_ps(f, _mm512_mul_ps(dw[p], dx), acc[p][t]);
            }
        }
    }
    for (int t = 0; t < T; t++)
        for (int p = 0; p < P; p++) store_rows(a->y[t] + 16 * p, acc[p][t], a->rows[p]);
}

/* Q4_K: per sub-block j of a super-block, acc = fma(isum, (d*sc_j)*dx, acc) then fma(-sx, (dmin*m_j)*dx,
 * acc). Sub-blocks 2c and 2c+1 come from the low and high nibbles of the same packed bytes. */
TV static INLINE void tile_q4_K(const tile_args *a, const int P, const int T) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512 acc[2][4];
    for (int p = 0; p < P; p++)
        for (int t = 0; t < T; t++) acc[p][t] = _mm512_setzero_ps();
    for (int sb = 0; sb < a->nb; sb++) {
        const uint8_t *b[2] = {a->w[0] + (size_t)sb * 2368, P > 1 ? a->w[1] + (size_t)sb * 2368 : NULL};
        const size_t pfo = PF_OFF(a, sb, 2368, P);
        __m512 d[2], dm[2];
        for (int p = 0; p < P; p++) {
            d[p] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(b[p] + 2048)));
            dm[p] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(b[p] + 2080)));
        }
        for (int c = 0; c < 4; c++) {
            __m512i il[2][4], ih[2][4];
            for (int p = 0; p < P; p++)
                for (int t = 0; t < T; t++) il[p][t] = ih[p][t] = _mm512_setzero_si512();
            const int k0 = 256 * sb + 64 * c; /* activation offset of sub-block 2c */
#pragma GCC unroll 8
            for (int g = 0; g < 8; g++) {
                __m512i lo[2], hi[2];
                if (T <= 2)
                    for (int p = 0; p < P; p++) _mm_prefetch((const char *)b[p] + pfo + 64 * (8 * c + g) + 10 * g, _MM_HINT_T0);
                for (int p = 0; p < P; p++) {
                    const __m512i raw = load_once(b[p] + 64 * (8 * c + g));
                    lo[p] = _mm512_and_si512(raw, m4);
                    hi[p] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4);
                }
                for (int t = 0; t < T; t++) {
                    const __m512i xl = B4(a->qx[t], k0 + 4 * g), xh = B4(a->qx[t], k0 + 32 + 4 * g);
                    for (int p = 0; p < P; p++) {
                        il[p][t] = _mm512_dpbusd_epi32(il[p][t], lo[p], xl);
                        ih[p][t] = _mm512_dpbusd_epi32(ih[p][t], hi[p], xh);
                    }
                }
            }
            for (int h = 0; h < 2; h++) {
                const int j = 2 * c + h, jj = 8 * sb + j;
                __m512 A[2], B[2];
                for (int p = 0; p < P; p++) {
                    const __m512 sc = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(b[p] + 2112 + 16 * j))));
                    const __m512 mn = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(b[p] + 2240 + 16 * j))));
                    A[p] = _mm512_mul_ps(d[p], sc);
                    B[p] = _mm512_mul_ps(dm[p], mn);
                }
                for (int t = 0; t < T; t++) {
                    const __m512 dx = _mm512_set1_ps(a->dx[t][jj]), sx = _mm512_set1_ps((float)a->sx[t][jj]);
                    for (int p = 0; p < P; p++) {
                        const __m512 f = _mm512_cvtepi32_ps(h ? ih[p][t] : il[p][t]);
                        acc[p][t] = _mm512_fmadd_ps(f, _mm512_mul_ps(A[p], dx), acc[p][t]);
                        acc[p][t] = _mm512_fnmadd_ps(sx, _mm512_mul_ps(B[p], dx), acc[p][t]);
                    }
                }
            }
        }
    }
    for (int t = 0; t < T; t++)
        for (int p = 0; p < P; p++) store_rows(a->y[t] + 16 * p, acc[p][t], a->rows[p]);
}

/* BF16: per pair group g of a 32-value block, one vdpbf16ps per (panel, token) into the accumulator of
 * the pair's parity (two chains per output hide the instruction's latency); the result is acc0 + acc1. */
TB static INLINE void tile_bf16(const tile_args *a, const int P, const int T) {
    __m512 acc[2][2][4];
    for (int h = 0; h < 2; h++)
        for (int p = 0; p < P; p++)
            for (int t = 0; t < T; t++) acc[h][p][t] = _mm512_setzero_ps();
    const uint16_t *x[4];
    for (int t = 0; t < T; t++) x[t] = (const uint16_t *)a->qx[t];
    for (int j = 0; j < a->nb; j++) {
        const uint8_t *b[2] = {a->w[0] + (size_t)j * 1024, P > 1 ? a->w[1] + (size_t)j * 1024 : NULL};
        const size_t pfo = PF_OFF(a, j, 1024, P);
#pragma GCC unroll 16
        for (int g = 0; g < 16; g++) {
            __m512i wv[2];
            if (T <= 2)
                for (int p = 0; p < P; p++) _mm_prefetch((const char *)b[p] + pfo + 64 * g, _MM_HINT_T0);
            for (int p = 0; p < P; p++) wv[p] = _mm512_loadu_si512(b[p] + 64 * g);
            for (int t = 0; t < T; t++) {
                const __m512i xb = _mm512_set1_epi32(*(const int32_t *)(x[t] + 32 * j + 2 * g));
                for (int p = 0; p < P; p++)
                    acc[g & 1][p][t] = _mm512_dpbf16_ps(acc[g & 1][p][t], (__m512bh)wv[p], (__m512bh)xb);
            }
        }
    }
    for (int t = 0; t < T; t++)
        for (int p = 0; p < P; p++) store_rows(a->y[t] + 16 * p, _mm512_add_ps(acc[0][p][t], acc[1][p][t]), a->rows[p]);
}

TB static void quantize_bf16_avx512(const float *x, int n_in, uint8_t *row) {
    uint16_t *h = (uint16_t *)row;
    int i = 0;
    for (; i + 16 <= n_in; i += 16)
        _mm256_storeu_si256((__m256i *)(h + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + i)));
    if (i < n_in) {
        const __mmask16 m = (__mmask16)((1u << (n_in - i)) - 1u);
        _mm256_mask_storeu_epi16(h + i, m, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x + i)));
    }
}

/* The (P, T) instances: P and T are constants inside each, so the arrays above live in registers. */
#define INSTANCES_T(F, TT)                                                                           \
    TT static void F##_2_4(const tile_args *a) { F(a, 2, 4); }                                       \
    TT static void F##_2_3(const tile_args *a) { F(a, 2, 3); }                                       \
    TT static void F##_2_2(const tile_args *a) { F(a, 2, 2); }                                       \
    TT static void F##_2_1(const tile_args *a) { F(a, 2, 1); }                                       \
    TT static void F##_1_4(const tile_args *a) { F(a, 1, 4); }                                       \
    TT static void F##_1_3(const tile_args *a) { F(a, 1, 3); }                                       \
    TT static void F##_1_2(const tile_args *a) { F(a, 1, 2); }                                       \
    TT static void F##_1_1(const tile_args *a) { F(a, 1, 1); }                                       \
    static void (*const F##_fns[2][4])(const tile_args *) = {{F##_1_1, F##_1_2, F##_1_3, F##_1_4},    \
                                                            {F##_2_1, F##_2_2, F##_2_3, F##_2_4}};
#define INSTANCES(F) INSTANCES_T(F, TV)
INSTANCES(tile_q8_0)
INSTANCES(tile_q4_0)
INSTANCES(tile_q4_K)
INSTANCES_T(tile_bf16, TB)

TV static void gemm_avx512(const ia_q8_task *t, int p0, int p1, const uint8_t *qa, size_t qa_stride, int t0, int t1) {
    const ia_qpack *pk = t->pack;
    void (*const(*fns)[4])(const tile_args *) = t->wtype == IA_TYPE_Q8_0   ? tile_q8_0_fns
                                                : t->wtype == IA_TYPE_Q4_0 ? tile_q4_0_fns
                                                : ia_q8_is_bf16(t->wtype)  ? tile_bf16_fns
                                                                           : tile_q4_K_fns;
    const int n_in = t->n_in, nbq = n_in / IA_QA_BLOCK;
    tile_args a;
    a.nb = t->wtype == IA_TYPE_Q4_K ? n_in / IA_QK_K : n_in / 32;
    a.panel_bytes = pk->panel_bytes;
    for (int p = p0; p < p1; p += 2) {
        const int P = p1 - p >= 2 ? 2 : 1;
        for (int i = 0; i < P; i++) {
            a.w[i] = pk->data + (size_t)(p + i) * pk->panel_bytes;
            const int r = t->n_out - (p + i) * IA_QP_ROWS;
            a.rows[i] = r < IA_QP_ROWS ? r : IA_QP_ROWS;
        }
        for (int tk = t0; tk < t1; tk += 4) {
            const int T = t1 - tk >= 4 ? 4 : t1 - tk;
            for (int i = 0; i < T; i++) {
                const uint8_t *row = qa + (size_t)(tk + i) * qa_stride;
                a.qx[i] = (const int8_t *)row; /* bf16 values for BF16 (no scales or sums) */
                a.dx[i] = (const float *)(row + n_in);
                a.sx[i] = (const int32_t *)(a.dx[i] + nbq);
                a.y[i] = t->Y + (size_t)(tk + i) * t->n_out + (size_t)p * IA_QP_ROWS;
            }
            fns[P - 1][T - 1](&a);
        }
    }
}

const ia_q8_kernel ia_q8_kernel_avx512 = {"avx512-vnni", true, quantize_avx512, gemm_avx512, NULL};
const ia_q8_kernel ia_q8_kernel_avx512_bf16 = {"avx512-vnni-bf16", true, quantize_avx512, gemm_avx512, quantize_bf16_avx512};

#endif /* __x86_64__ */
