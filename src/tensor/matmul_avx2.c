/* matmul_avx2.c — AVX2+FMA+F16C matmul kernel: SIMD dequantisation of a row chunk and the FMA dot
 * of IA_MM_ROWS weight rows against all activation rows (x86-64 only, chosen at run time). */
#include "kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define T256 __attribute__((target("avx2,fma,f16c")))

/* Block scales through F16C: one instruction instead of the bit-twiddling conversion, and the
 * same value for every non-NaN half. */
T256 static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

/* ---- dequantisation: the same float operations as quant.c, 8 lanes at a time ---- */

/* out[0..16) = (float)(int8)v[i] * s. */
T256 static inline void put16_i8(float *out, __m128i v, __m256 s) {
    const __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
    const __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v, 8)));
    _mm256_storeu_ps(out, _mm256_mul_ps(lo, s));
    _mm256_storeu_ps(out + 8, _mm256_mul_ps(hi, s));
}

/* out[0..16) = s * (float)(uint8)v[i] - m (the Q4_K form, same operation order as quant.c). */
T256 static inline void put16_u8_affine(float *out, __m128i v, __m256 s, __m256 m) {
    const __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
    const __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(v, 8)));
    _mm256_storeu_ps(out, _mm256_sub_ps(_mm256_mul_ps(s, lo), m));
    _mm256_storeu_ps(out + 8, _mm256_sub_ps(_mm256_mul_ps(s, hi), m));
}

T256 static void dequant_avx2(uint32_t type, const void *row, int64_t k0, int len, float *out) {
    switch (type) {
    case IA_TYPE_F16: {
        const uint16_t *h = (const uint16_t *)row + k0;
        int k = 0;
        for (; k + 8 <= len; k += 8)
            _mm256_storeu_ps(out + k, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + k))));
        for (; k < len; k++) out[k] = ia_fp16_to_fp32(h[k]);
        break;
    }
    case IA_TYPE_BF16: {
        const uint16_t *h = (const uint16_t *)row + k0;
        int k = 0;
        for (; k + 8 <= len; k += 8) {
            const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(h + k)));
            _mm256_storeu_ps(out + k, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
        }
        for (; k < len; k++) out[k] = ia_bf16_to_fp32(h[k]);
        break;
    }
    case IA_TYPE_Q8_0: {
        const ia_block_q8_0 *b = (const ia_block_q8_0 *)row + k0 / IA_QK8_0;
        for (int i = 0; i < len / IA_QK8_0; i++, out += IA_QK8_0) {
            const __m256 d = _mm256_set1_ps(h2f(b[i].d));
            put16_i8(out, _mm_loadu_si128((const __m128i *)b[i].qs), d);
            put16_i8(out + 16, _mm_loadu_si128((const __m128i *)(b[i].qs + 16)), d);
        }
        break;
    }
    case IA_TYPE_Q4_0: {
        const ia_block_q4_0 *b = (const ia_block_q4_0 *)row + k0 / IA_QK4_0;
        const __m128i m4 = _mm_set1_epi8(0x0F), m8 = _mm_set1_epi8(8);
        for (int i = 0; i < len / IA_QK4_0; i++, out += IA_QK4_0) {
            const __m256 d = _mm256_set1_ps(h2f(b[i].d));
            const __m128i q = _mm_loadu_si128((const __m128i *)b[i].qs);
            put16_i8(out, _mm_sub_epi8(_mm_and_si128(q, m4), m8), d);
            put16_i8(out + 16, _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), m4), m8), d);
        }
        break;
    }
    case IA_TYPE_Q4_K: {
        const ia_block_q4_K *b = (const ia_block_q4_K *)row + k0 / IA_QK_K;
        const __m128i m4 = _mm_set1_epi8(0x0F);
        for (int i = 0; i < len / IA_QK_K; i++) {
            const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
            const uint8_t *sc = b[i].scales;
            for (int j = 0; j < 8; j += 2, out += 64) {
                const uint8_t *q = b[i].qs + 16 * j;
                float dd[2], mm[2];
                for (int u = 0; u < 2; u++) { /* get_scale_min_k4 */
                    const int jj = j + u;
                    int s, m;
                    if (jj < 4) {
                        s = sc[jj] & 63;
                        m = sc[jj + 4] & 63;
                    } else {
                        s = (sc[jj + 4] & 0x0F) | ((sc[jj - 4] >> 6) << 4);
                        m = (sc[jj + 4] >> 4) | ((sc[jj] >> 6) << 4);
                    }
                    dd[u] = d * (float)s;
                    mm[u] = dmin * (float)m;
                }
                const __m256 d1 = _mm256_set1_ps(dd[0]), m1 = _mm256_set1_ps(mm[0]);
                const __m256 d2 = _mm256_set1_ps(dd[1]), m2 = _mm256_set1_ps(mm[1]);
                for (int h = 0; h < 32; h += 16) {
                    const __m128i v = _mm_loadu_si128((const __m128i *)(q + h));
                    put16_u8_affine(out + h, _mm_and_si128(v, m4), d1, m1);
                    put16_u8_affine(out + 32 + h, _mm_and_si128(_mm_srli_epi16(v, 4), m4), d2, m2);
                }
            }
        }
        break;
    }
    case IA_TYPE_Q6_K: {
        const ia_block_q6_K *b = (const ia_block_q6_K *)row + k0 / IA_QK_K;
        const __m128i m4 = _mm_set1_epi8(0x0F), m3 = _mm_set1_epi8(3), m30 = _mm_set1_epi8(0x30);
        const __m128i m32 = _mm_set1_epi8(32);
        for (int i = 0; i < len / IA_QK_K; i++) {
            const float d = h2f(b[i].d);
            const uint8_t *ql = b[i].ql, *qh = b[i].qh;
            const int8_t *sc = b[i].scales;
            for (int half = 0; half < 2; half++, out += 128, ql += 64, qh += 32, sc += 8) {
                for (int l = 0; l < 32; l += 16) {
                    const int is = l / 16;
                    const __m128i a = _mm_loadu_si128((const __m128i *)(ql + l));
                    const __m128i c = _mm_loadu_si128((const __m128i *)(ql + l + 32));
                    const __m128i h = _mm_loadu_si128((const __m128i *)(qh + l));
                    /* 16-bit shifts are safe: every shifted byte is masked to bits that stay inside it */
                    const __m128i q1 = _mm_or_si128(_mm_and_si128(a, m4), _mm_slli_epi16(_mm_and_si128(h, m3), 4));
                    const __m128i q2 = _mm_or_si128(_mm_and_si128(c, m4), _mm_and_si128(_mm_slli_epi16(h, 2), m30));
                    const __m128i q3 = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(a, 4), m4), _mm_and_si128(h, m30));
                    const __m128i q4 = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(c, 4), m4),
                                                    _mm_and_si128(_mm_srli_epi16(h, 2), m30));
                    put16_i8(out + l, _mm_sub_epi8(q1, m32), _mm256_set1_ps(d * sc[is + 0]));
                    put16_i8(out + l + 32, _mm_sub_epi8(q2, m32), _mm256_set1_ps(d * sc[is + 2]));
                    put16_i8(out + l + 64, _mm_sub_epi8(q3, m32), _mm256_set1_ps(d * sc[is + 4]));
                    put16_i8(out + l + 96, _mm_sub_epi8(q4, m32), _mm256_set1_ps(d * sc[is + 6]));
                }
            }
        }
        break;
    }
    default: /* F32 and anything else: the reference */
        ia_mm_kernel_scalar.dequant(type, row, k0, len, out);
        break;
    }
}

/* ---- dot ---- */

T256 static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

T256 static inline void store_sum(float *y, __m256 acc, bool accumulate) {
    const float s = hsum256(acc);
    *y = accumulate ? *y + s : s;
}

/* One accumulator of 8 lanes per (t, r): lane l sums elements k = l mod 8; the last partial vector
 * is a masked load, so the operations for a (t, r) are fixed by len alone. Pairs of activation
 * rows go through 4 weight rows at a time (16 registers hold 8 accumulators plus operands);
 * single rows through all 8. Either way each accumulator sees the same sequence of FMAs. */
T256 static void dot_avx2(const float *const *w, int len, const float *X, int64_t ldx, int n_tok,
                          float *Y, int64_t ldy, int nr, bool accumulate) {
    enum { R = IA_MM_ROWS };
    static const int32_t lane_ramp[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    const int nv = len & ~7;
    const int nt = len - nv;
    const __m256i tail = _mm256_loadu_si256((const __m256i *)(lane_ramp + 8 - nt));
    int t = 0;
    for (; t + 2 <= n_tok; t += 2) {
        const float *x0 = X + t * ldx, *x1 = x0 + ldx;
        for (int r0 = 0; r0 < nr; r0 += 4) {
            __m256 a0[4], a1[4];
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++) a0[r] = a1[r] = _mm256_setzero_ps();
            for (int k = 0; k < nv; k += 8) {
                const __m256 v0 = _mm256_loadu_ps(x0 + k), v1 = _mm256_loadu_ps(x1 + k);
#pragma GCC unroll 4
                for (int r = 0; r < 4; r++) {
                    const __m256 wv = _mm256_loadu_ps(w[r0 + r] + k);
                    a0[r] = _mm256_fmadd_ps(wv, v0, a0[r]);
                    a1[r] = _mm256_fmadd_ps(wv, v1, a1[r]);
                }
            }
            if (nt) {
                const __m256 v0 = _mm256_maskload_ps(x0 + nv, tail), v1 = _mm256_maskload_ps(x1 + nv, tail);
#pragma GCC unroll 4
                for (int r = 0; r < 4; r++) {
                    const __m256 wv = _mm256_maskload_ps(w[r0 + r] + nv, tail);
                    a0[r] = _mm256_fmadd_ps(wv, v0, a0[r]);
                    a1[r] = _mm256_fmadd_ps(wv, v1, a1[r]);
                }
            }
            for (int r = 0; r < 4 && r0 + r < nr; r++) {
                store_sum(Y + t * ldy + r0 + r, a0[r], accumulate);
                store_sum(Y + (t + 1) * ldy + r0 + r, a1[r], accumulate);
            }
        }
    }
    for (; t < n_tok; t++) {
        const float *x0 = X + t * ldx;
        __m256 a0[R];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) a0[r] = _mm256_setzero_ps();
        for (int k = 0; k < nv; k += 8) {
            const __m256 v0 = _mm256_loadu_ps(x0 + k);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) a0[r] = _mm256_fmadd_ps(_mm256_loadu_ps(w[r] + k), v0, a0[r]);
        }
        if (nt) {
            const __m256 v0 = _mm256_maskload_ps(x0 + nv, tail);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++)
                a0[r] = _mm256_fmadd_ps(_mm256_maskload_ps(w[r] + nv, tail), v0, a0[r]);
        }
        for (int r = 0; r < nr; r++) store_sum(Y + t * ldy + r, a0[r], accumulate);
    }
}

const ia_mm_kernel ia_mm_kernel_avx2 = {"avx2", dequant_avx2, dot_avx2, NULL};

#endif /* __x86_64__ */
