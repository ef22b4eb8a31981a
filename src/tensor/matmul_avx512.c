/* matmul_avx512.c — AVX-512 matmul kernel: SIMD dequantisation of a row chunk and the FMA dot of
 * IA_MM_ROWS weight rows against all activation rows (compiled for x86-64 only, chosen at run time). */
#include "kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))

/* Block scales through F16C: one instruction instead of the bit-twiddling conversion, and the
 * same value for every non-NaN half. */
T512 static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

/* ---- dequantisation: the same float operations as quant.c, 16 lanes at a time ---- */

T512 static inline __m512 cvt_u8(__m128i v) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v)); }
T512 static inline __m512 cvt_i8(__m128i v) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v)); }

T512 static void dequant_avx512(uint32_t type, const void *row, int64_t k0, int len, float *out) {
    switch (type) {
    case IA_TYPE_F16: {
        const uint16_t *h = (const uint16_t *)row + k0;
        int k = 0;
        for (; k + 16 <= len; k += 16)
            _mm512_storeu_ps(out + k, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + k))));
        for (; k < len; k++) out[k] = ia_fp16_to_fp32(h[k]);
        break;
    }
    case IA_TYPE_BF16: {
        const uint16_t *h = (const uint16_t *)row + k0;
        int k = 0;
        for (; k + 16 <= len; k += 16) {
            const __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(h + k)));
            _mm512_storeu_ps(out + k, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
        }
        for (; k < len; k++) out[k] = ia_bf16_to_fp32(h[k]);
        break;
    }
    case IA_TYPE_Q8_0: {
        const ia_block_q8_0 *b = (const ia_block_q8_0 *)row + k0 / IA_QK8_0;
        for (int i = 0; i < len / IA_QK8_0; i++, out += IA_QK8_0) {
            const __m512 d = _mm512_set1_ps(h2f(b[i].d));
            const __m128i q0 = _mm_loadu_si128((const __m128i *)b[i].qs);
            const __m128i q1 = _mm_loadu_si128((const __m128i *)(b[i].qs + 16));
            _mm512_storeu_ps(out, _mm512_mul_ps(cvt_i8(q0), d));
            _mm512_storeu_ps(out + 16, _mm512_mul_ps(cvt_i8(q1), d));
        }
        break;
    }
    case IA_TYPE_Q4_0: {
        const ia_block_q4_0 *b = (const ia_block_q4_0 *)row + k0 / IA_QK4_0;
        const __m128i m4 = _mm_set1_epi8(0x0F), m8 = _mm_set1_epi8(8);
        for (int i = 0; i < len / IA_QK4_0; i++, out += IA_QK4_0) {
            const __m512 d = _mm512_set1_ps(h2f(b[i].d));
            const __m128i q = _mm_loadu_si128((const __m128i *)b[i].qs);
            const __m128i lo = _mm_sub_epi8(_mm_and_si128(q, m4), m8);
            const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), m4), m8);
            _mm512_storeu_ps(out, _mm512_mul_ps(cvt_i8(lo), d));
            _mm512_storeu_ps(out + 16, _mm512_mul_ps(cvt_i8(hi), d));
        }
        break;
    }
    case IA_TYPE_Q4_K: {
        const ia_block_q4_K *b = (const ia_block_q4_K *)row + k0 / IA_QK_K;
        const __m128i m4 = _mm_set1_epi8(0x0F);
        for (int i = 0; i < len / IA_QK_K; i++) {
            const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
            const uint8_t *sc = b[i].scales;
            for (int j = 0; j < 8; j += 2) {
                const uint8_t *q = b[i].qs + 16 * j;
                /* get_scale_min_k4 for sub-blocks j (low nibbles) and j+1 (high nibbles) */
                float dd[2], mm[2];
                for (int u = 0; u < 2; u++) {
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
                const __m512 d1 = _mm512_set1_ps(dd[0]), m1 = _mm512_set1_ps(mm[0]);
                const __m512 d2 = _mm512_set1_ps(dd[1]), m2 = _mm512_set1_ps(mm[1]);
                for (int h = 0; h < 32; h += 16) {
                    const __m128i v = _mm_loadu_si128((const __m128i *)(q + h));
                    const __m128i lo = _mm_and_si128(v, m4);
                    const __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
                    _mm512_storeu_ps(out + h, _mm512_sub_ps(_mm512_mul_ps(d1, cvt_u8(lo)), m1));
                    _mm512_storeu_ps(out + 32 + h, _mm512_sub_ps(_mm512_mul_ps(d2, cvt_u8(hi)), m2));
                }
                out += 64;
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
                    _mm512_storeu_ps(out + l, _mm512_mul_ps(_mm512_set1_ps(d * sc[is + 0]), cvt_i8(_mm_sub_epi8(q1, m32))));
                    _mm512_storeu_ps(out + l + 32, _mm512_mul_ps(_mm512_set1_ps(d * sc[is + 2]), cvt_i8(_mm_sub_epi8(q2, m32))));
                    _mm512_storeu_ps(out + l + 64, _mm512_mul_ps(_mm512_set1_ps(d * sc[is + 4]), cvt_i8(_mm_sub_epi8(q3, m32))));
                    _mm512_storeu_ps(out + l + 96, _mm512_mul_ps(_mm512_set1_ps(d * sc[is + 6]), cvt_i8(_mm_sub_epi8(q4, m32))));
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

T512 static inline float hsum512(__m512 v) {
    const __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

T512 static inline void store_sum(float *y, __m512 acc, bool accumulate) {
    const float s = hsum512(acc);
    *y = accumulate ? *y + s : s;
}

/* One accumulator of 16 lanes per (t, r): lane l sums elements k = l mod 16; the last partial
 * vector is a masked load, so the sequence of operations for a (t, r) is fixed by len alone. Two
 * activation rows share each weight load when n_tok allows; that only interleaves independent
 * accumulators and does not change any of them. */
T512 static void dot_avx512(const float *const *w, int len, const float *X, int64_t ldx, int n_tok,
                            float *Y, int64_t ldy, int nr, bool accumulate) {
    enum { R = IA_MM_ROWS };
    const int nv = len & ~15;
    const __mmask16 tail = (__mmask16)((1u << (len - nv)) - 1u);
    int t = 0;
    for (; t + 2 <= n_tok; t += 2) {
        const float *x0 = X + t * ldx, *x1 = x0 + ldx;
        __m512 a0[R], a1[R];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) a0[r] = a1[r] = _mm512_setzero_ps();
        for (int k = 0; k < nv; k += 16) {
            const __m512 v0 = _mm512_loadu_ps(x0 + k), v1 = _mm512_loadu_ps(x1 + k);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) {
                const __m512 wv = _mm512_loadu_ps(w[r] + k);
                a0[r] = _mm512_fmadd_ps(wv, v0, a0[r]);
                a1[r] = _mm512_fmadd_ps(wv, v1, a1[r]);
            }
        }
        if (tail) {
            const __m512 v0 = _mm512_maskz_loadu_ps(tail, x0 + nv), v1 = _mm512_maskz_loadu_ps(tail, x1 + nv);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) {
                const __m512 wv = _mm512_maskz_loadu_ps(tail, w[r] + nv);
                a0[r] = _mm512_fmadd_ps(wv, v0, a0[r]);
                a1[r] = _mm512_fmadd_ps(wv, v1, a1[r]);
            }
        }
        for (int r = 0; r < nr; r++) {
            store_sum(Y + t * ldy + r, a0[r], accumulate);
            store_sum(Y + (t + 1) * ldy + r, a1[r], accumulate);
        }
    }
    for (; t < n_tok; t++) {
        const float *x0 = X + t * ldx;
        __m512 a0[R];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) a0[r] = _mm512_setzero_ps();
        for (int k = 0; k < nv; k += 16) {
            const __m512 v0 = _mm512_loadu_ps(x0 + k);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) a0[r] = _mm512_fmadd_ps(_mm512_loadu_ps(w[r] + k), v0, a0[r]);
        }
        if (tail) {
            const __m512 v0 = _mm512_maskz_loadu_ps(tail, x0 + nv);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++)
                a0[r] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, w[r] + nv), v0, a0[r]);
        }
        for (int r = 0; r < nr; r++) store_sum(Y + t * ldy + r, a0[r], accumulate);
    }
}

const ia_mm_kernel ia_mm_kernel_avx512 = {"avx512", dequant_avx512, dot_avx512};

#endif /* __x86_64__ */
