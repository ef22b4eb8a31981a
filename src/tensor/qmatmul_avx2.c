/* qmatmul_avx2.c — AVX2 kernels of the low-precision inference matmul (qmatmul.c): the int8 activation
 * quantiser and one tile routine per weight type over the 16-row packed panels of ia_qpack (the layout
 * the AVX-512 VNNI kernel reads), each 64-byte group read as two 32-byte halves (rows 0-7, rows 8-15).
 * AVX2 has no vpdpbusd: the weights are split into 4-bit unsigned values (Q4_0 and Q4_K nibbles as
 * they are; Q8_0's stored q + 128 as its two nibbles) and vpmaddubsw multiplies them against 4
 * broadcast activation bytes. A product pair is at most 2 * 15 * 128 = 3840 in magnitude, so up to 8
 * vpmaddubsw results add in int16 without saturating or wrapping (8 * 3840 = 30720 < 32768); one
 * vpmaddwd then widens each row's sum to int32. Block sums are therefore exact integers and the f32
 * scale steps are the reference's (ia_q8_dot_ref), lane by lane: same bits as every other family.
 * No BF16 path (AVX2 has no vdpbf16ps). (x86-64 only, chosen at run time.) */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#include "kernels.h"

#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>

#define TA __attribute__((target("avx2,fma,f16c")))
#define INLINE __attribute__((always_inline)) inline

/* ---- activations ------------------------------------------------------------------------------ */

/* The reference's steps: amax by max (exact, order-free for non-NaN values), d = amax / 127,
 * id = 1 / d, q = cvtps2dq(x * id) (nearest even, as nearbyintf in the default rounding mode). */
TA static void quantize_avx2(const float *x, int n_in, uint8_t *row) {
    int8_t *q = (int8_t *)row;
    float *d = (float *)(row + n_in);
    int32_t *s = (int32_t *)(d + n_in / IA_QA_BLOCK);
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int b = 0; b < n_in / IA_QA_BLOCK; b++) {
        const float *xb = x + 32 * b;
        __m256 v[4], m = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++) {
            v[i] = _mm256_loadu_ps(xb + 8 * i);
            m = _mm256_max_ps(_mm256_and_ps(v[i], abs_mask), m); /* a NaN input is skipped, as in the reference */
        }
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        const float amax = _mm_cvtss_f32(h);
        const float db = amax / 127.0f, id = db != 0.0f ? 1.0f / db : 0.0f;
        const __m256 vid = _mm256_set1_ps(id);
        __m256i iv[4];
        for (int i = 0; i < 4; i++) iv[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], vid));
        /* int32 -> int8 (values within [-127, 127]: the saturating packs are plain conversions); the
         * packs interleave 128-bit lanes, the permute puts the 8 dwords back in order */
        const __m256i p16a = _mm256_packs_epi32(iv[0], iv[1]), p16b = _mm256_packs_epi32(iv[2], iv[3]);
        const __m256i p8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16a, p16b), perm);
        _mm256_storeu_si256((__m256i *)(q + 32 * b), p8);
        const __m256i sv = _mm256_add_epi32(_mm256_add_epi32(iv[0], iv[1]), _mm256_add_epi32(iv[2], iv[3]));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sv), _mm256_extracti128_si256(sv, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
        s[b] = _mm_cvtsi128_si32(s4);
        d[b] = db;
    }
}

/* ---- tiles: H half-panels (8 rows each) x T tokens, all blocks of the row ----------------------- */

typedef struct tile_args {
    const uint8_t *w;        /* panel data */
    const int8_t *qx[4];     /* token activation rows */
    const float *dx[4];
    const int32_t *sx[4];
    float *y[4];             /* output row of each token at the panel's first row */
    int nb;                  /* blocks (32) or super-blocks (256) */
    int h0;                  /* first half-panel of the tile (0: rows 0-7, 1: rows 8-15) */
    int rows[2];             /* valid rows in each half of the tile (8, or fewer at the end) */
} tile_args;

/* Decoding reads each weight once: prefetch this far ahead (decode-sized tiles only), with the
 * offsets spread so every line of a block is touched (as the AVX-512 kernel does). */
#define PF_DIST 2048

/* GCC reassociates a chain of integer vector adds into a tree, computing every vpmaddubsw of a block
 * first: far more live values than the 16 registers, and the tile spills. An empty asm on the running
 * sum after each step keeps the chain a chain. */
#define CHAIN(v) __asm__("" : "+x"(v))

/* A weight vector loaded once into a register: GCC otherwise folds the load into the mask as well as
 * loading it for the shift, and the tile issues twice the loads. */
TA static INLINE __m256i load_once(const uint8_t *p) {
    __m256i v = _mm256_loadu_si256((const __m256i *)p);
    CHAIN(v);
    return v;
}

/* 4 activation bytes broadcast to every dword */
TA static INLINE __m256i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

TA static INLINE void store_rows(float *y, __m256 v, int rows) {
    if (rows >= 8) {
        _mm256_storeu_ps(y, v);
    } else {
        const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_maskstore_ps(y, _mm256_cmpgt_epi32(_mm256_set1_epi32(rows), idx), v);
    }
}

/* 8 f16 scales (one per row of a half panel) */
TA static INLINE __m256 load_f16x8(const uint8_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

/* Q8_0: packed u = q + 128 = 16 hi + lo; isum = 16 sum(hi x) + sum(lo x) - 128 sx. */
TA static INLINE void tile_q8_0(const tile_args *a, const int H, const int T) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1), sixteen = _mm256_set1_epi16(16);
    __m256 acc[2][4];
    for (int h = 0; h < H; h++)
        for (int t = 0; t < T; t++) acc[h][t] = _mm256_setzero_ps();
    for (int j = 0; j < a->nb; j++) {
        const uint8_t *b = a->w + (size_t)j * 544;
        __m256i il[2][4], ih[2][4];
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) il[h][t] = ih[h][t] = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int g = 0; g < 8; g++) {
            __m256i lo[2], hi[2];
            if (T <= 2) _mm_prefetch((const char *)b + PF_DIST + 68 * g, _MM_HINT_T0);
            for (int h = 0; h < H; h++) {
                const __m256i raw = load_once(b + 64 * g + 32 * (a->h0 + h));
                lo[h] = _mm256_and_si256(raw, m4);
                hi[h] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
            }
            for (int t = 0; t < T; t++) {
                const __m256i xb = bcast4(a->qx[t] + 32 * j + 4 * g);
                for (int h = 0; h < H; h++) {
                    il[h][t] = _mm256_add_epi16(il[h][t], _mm256_maddubs_epi16(lo[h], xb));
                    ih[h][t] = _mm256_add_epi16(ih[h][t], _mm256_maddubs_epi16(hi[h], xb));
                    CHAIN(il[h][t]);
                    CHAIN(ih[h][t]);
                }
            }
        }
        __m256 dw[2];
        for (int h = 0; h < H; h++) dw[h] = load_f16x8(b + 512 + 16 * (a->h0 + h));
        for (int t = 0; t < T; t++) {
            const __m256i off = _mm256_set1_epi32(a->sx[t][j] * 128);
            const __m256 dx = _mm256_set1_ps(a->dx[t][j]);
            for (int h = 0; h < H; h++) {
                const __m256i is = _mm256_add_epi32(_mm256_madd_epi16(ih[h][t], sixteen), _mm256_madd_epi16(il[h][t], ones));
                const __m256 f = _mm256_cvtepi32_ps(_mm256_sub_epi32(is, off));
                acc[h][t] = _mm256_fmadd_ps(f, _mm256_mul_ps(dw[h], dx), acc[h][t]);
            }
        }
    }
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++) store_rows(a->y[t] + 8 * (a->h0 + h), acc[h][t], a->rows[h]);
}

/* Q4_0: nibbles q (0..15) of value v in the low nibble and v + 16 in the high one; isum = sum(q x) - 8 sx. */
TA static INLINE void tile_q4_0(const tile_args *a, const int H, const int T) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256 acc[2][4];
    for (int h = 0; h < H; h++)
        for (int t = 0; t < T; t++) acc[h][t] = _mm256_setzero_ps();
    for (int j = 0; j < a->nb; j++) {
        const uint8_t *b = a->w + (size_t)j * 288;
        __m256i is16[2][4];
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) is16[h][t] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) {
            __m256i lo[2], hi[2];
            if (T <= 2) _mm_prefetch((const char *)b + PF_DIST + 72 * v, _MM_HINT_T0);
            for (int h = 0; h < H; h++) {
                const __m256i raw = load_once(b + 64 * v + 32 * (a->h0 + h));
                lo[h] = _mm256_and_si256(raw, m4);
                hi[h] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
            }
            for (int t = 0; t < T; t++) {
                const __m256i xl = bcast4(a->qx[t] + 32 * j + 4 * v), xh = bcast4(a->qx[t] + 32 * j + 16 + 4 * v);
                for (int h = 0; h < H; h++) {
                    is16[h][t] = _mm256_add_epi16(is16[h][t], _mm256_maddubs_epi16(lo[h], xl));
                    CHAIN(is16[h][t]);
                    is16[h][t] = _mm256_add_epi16(is16[h][t], _mm256_maddubs_epi16(hi[h], xh));
                    CHAIN(is16[h][t]);
                }
            }
        }
        __m256 dw[2];
        for (int h = 0; h < H; h++) dw[h] = load_f16x8(b + 256 + 16 * (a->h0 + h));
        for (int t = 0; t < T; t++) {
            const __m256i off = _mm256_set1_epi32(a->sx[t][j] * 8);
            const __m256 dx = _mm256_set1_ps(a->dx[t][j]);
            for (int h = 0; h < H; h++) {
                const __m256 f = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_madd_epi16(is16[h][t], ones), off));
                acc[h][t] = _mm256_fmadd_ps(f, _mm256_mul_ps(dw[h], dx), acc[h][t]);
            }
        }
    }
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++) store_rows(a->y[t] + 8 * (a->h0 + h), acc[h][t], a->rows[h]);
}

/* Q4_K: per sub-block j of a super-block, acc = fma(isum, (d*sc_j)*dx, acc) then fma(-sx, (dmin*m_j)*dx,
 * acc). Sub-blocks 2c and 2c+1 come from the low and high nibbles of the same packed bytes. */
TA static INLINE void tile_q4_K(const tile_args *a, const int H, const int T) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256 acc[2][4];
    for (int h = 0; h < H; h++)
        for (int t = 0; t < T; t++) acc[h][t] = _mm256_setzero_ps();
    for (int sb = 0; sb < a->nb; sb++) {
        const uint8_t *b = a->w + (size_t)sb * 2368;
        __m256 d[2], dm[2];
        for (int h = 0; h < H; h++) {
            d[h] = load_f16x8(b + 2048 + 16 * (a->h0 + h));
            dm[h] = load_f16x8(b + 2080 + 16 * (a->h0 + h));
        }
        for (int c = 0; c < 4; c++) {
            __m256i il[2][4], ih[2][4];
            for (int h = 0; h < H; h++)
                for (int t = 0; t < T; t++) il[h][t] = ih[h][t] = _mm256_setzero_si256();
            const int k0 = 256 * sb + 64 * c; /* activation offset of sub-block 2c */
#pragma GCC unroll 8
            for (int g = 0; g < 8; g++) {
                __m256i lo[2], hi[2];
                if (T <= 2) _mm_prefetch((const char *)b + PF_DIST + 64 * (8 * c + g) + 10 * g, _MM_HINT_T0);
                for (int h = 0; h < H; h++) {
                    const __m256i raw = load_once(b + 64 * (8 * c + g) + 32 * (a->h0 + h));
                    lo[h] = _mm256_and_si256(raw, m4);
                    hi[h] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
                }
                for (int t = 0; t < T; t++) {
                    const __m256i xl = bcast4(a->qx[t] + k0 + 4 * g), xh = bcast4(a->qx[t] + k0 + 32 + 4 * g);
                    for (int h = 0; h < H; h++) {
                        il[h][t] = _mm256_add_epi16(il[h][t], _mm256_maddubs_epi16(lo[h], xl));
                        ih[h][t] = _mm256_add_epi16(ih[h][t], _mm256_maddubs_epi16(hi[h], xh));
                        CHAIN(il[h][t]);
                        CHAIN(ih[h][t]);
                    }
                }
            }
            for (int s = 0; s < 2; s++) {
                const int j = 2 * c + s, jj = 8 * sb + j;
                __m256 A[2], B[2];
                for (int h = 0; h < H; h++) {
                    const int r0 = 8 * (a->h0 + h);
                    const __m256 sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(b + 2112 + 16 * j + r0))));
                    const __m256 mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(b + 2240 + 16 * j + r0))));
                    A[h] = _mm256_mul_ps(d[h], sc);
                    B[h] = _mm256_mul_ps(dm[h], mn);
                }
                for (int t = 0; t < T; t++) {
                    const __m256 dx = _mm256_set1_ps(a->dx[t][jj]), sx = _mm256_set1_ps((float)a->sx[t][jj]);
                    for (int h = 0; h < H; h++) {
                        const __m256 f = _mm256_cvtepi32_ps(_mm256_madd_epi16(s ? ih[h][t] : il[h][t], ones));
                        acc[h][t] = _mm256_fmadd_ps(f, _mm256_mul_ps(A[h], dx), acc[h][t]);
                        acc[h][t] = _mm256_fnmadd_ps(sx, _mm256_mul_ps(B[h], dx), acc[h][t]);
                    }
                }
            }
        }
    }
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++) store_rows(a->y[t] + 8 * (a->h0 + h), acc[h][t], a->rows[h]);
}

/* The (H, T) instances: H and T are constants inside each, so the arrays above live in registers. */
#define INSTANCES(F)                                                                                 \
    TA static void F##_2_1(const tile_args *a) { F(a, 2, 1); }                                       \
    TA static void F##_2_2(const tile_args *a) { F(a, 2, 2); }                                       \
    TA static void F##_1_1(const tile_args *a) { F(a, 1, 1); }                                       \
    TA static void F##_1_2(const tile_args *a) { F(a, 1, 2); }                                       \
    TA static void F##_1_3(const tile_args *a) { F(a, 1, 3); }                                       \
    TA static void F##_1_4(const tile_args *a) { F(a, 1, 4); }                                       \
    static void (*const F##_fns[2][4])(const tile_args *) = {{F##_1_1, F##_1_2, F##_1_3, F##_1_4},    \
                                                            {F##_2_1, F##_2_2, NULL, NULL}};
INSTANCES(tile_q8_0)
INSTANCES(tile_q4_0)
INSTANCES(tile_q4_K)

/* Tokens per tile: decode-sized calls (1 or 2 tokens) take both halves of a panel at once, streaming
 * its 64-byte groups whole; batches take one half at a time and up to 4 tokens (the int16 sums of 4
 * tokens, the decoded weights and a broadcast fit the 16 registers; 5 or 6 tokens measured no faster,
 * and both halves x 2 tokens slower). */
TA static void gemm_avx2(const ia_q8_task *t, int p0, int p1, const uint8_t *qa, size_t qa_stride, int t0, int t1) {
    const ia_qpack *pk = t->pack;
    void (*const(*fns)[4])(const tile_args *) = t->wtype == IA_TYPE_Q8_0   ? tile_q8_0_fns
                                                : t->wtype == IA_TYPE_Q4_0 ? tile_q4_0_fns
                                                                           : tile_q4_K_fns;
    const int n_in = t->n_in, nbq = n_in / IA_QA_BLOCK;
    tile_args a;
    a.nb = t->wtype == IA_TYPE_Q4_K ? n_in / IA_QK_K : n_in / 32;
    for (int p = p0; p < p1; p++) {
        a.w = pk->data + (size_t)p * pk->panel_bytes;
        const int rows = t->n_out - p * IA_QP_ROWS < IA_QP_ROWS ? t->n_out - p * IA_QP_ROWS : IA_QP_ROWS;
        const int nh = rows > 8 ? 2 : 1;
        const int n = t1 - t0, TT = n <= 2 ? n : 4; /* tokens per tile */
        for (int tk = t0; tk < t1; tk += TT) {
            const int T = t1 - tk >= TT ? TT : t1 - tk;
            for (int i = 0; i < T; i++) {
                const uint8_t *row = qa + (size_t)(tk + i) * qa_stride;
                a.qx[i] = (const int8_t *)row;
                a.dx[i] = (const float *)(row + n_in);
                a.sx[i] = (const int32_t *)(a.dx[i] + nbq);
                a.y[i] = t->Y + (size_t)(tk + i) * t->n_out + (size_t)p * IA_QP_ROWS;
            }
            if (TT <= 2) { /* both halves in one tile */
                a.h0 = 0;
                a.rows[0] = rows < 8 ? rows : 8;
                a.rows[1] = rows - 8;
                fns[nh - 1][T - 1](&a);
            } else {
                for (int h = 0; h < nh; h++) {
                    a.h0 = h;
                    a.rows[0] = rows - 8 * h < 8 ? rows - 8 * h : 8;
                    fns[0][T - 1](&a);
                }
            }
        }
    }
}

const ia_q8_kernel ia_q8_kernel_avx2 = {"avx2-int8", true, quantize_avx2, gemm_avx2, NULL};

#endif /* __x86_64__ */
