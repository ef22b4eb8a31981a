/* simd.h — small numeric helpers shared by the tensor kernels, the forward pass and the trainer: the
 * plain eight-way dot product of the reference attention, rmsnorm's sum of squares, and for AVX-512
 * and AVX2 a vectorised exp (and SwiGLU) and a row's maximum. */
#ifndef IA_TENSOR_SIMD_H
#define IA_TENSOR_SIMD_H

/* Dot product with eight interleaved partial sums (i mod 8), added in a fixed tree. */
static inline float ia_dot8(const float *a, const float *b, int n) {
    float acc[8] = {0};
    int nv = n & ~7;
    for (int k = 0; k < nv; k += 8)
        for (int l = 0; l < 8; l++) acc[l] += a[k + l] * b[k + l];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (int k = nv; k < n; k++) s += a[k] * b[k];
    return s;
}

/* Sum of x[i]^2 in double, eight interleaved partial sums (i mod 8) added in a fixed tree: compilers
 * vectorise it without reassociating (one running sum was a chain of dependent adds: rmsnorm took a
 * twentieth of a quantised model's prefill). The inference and training forward passes share it. */
static inline double ia_sumsq8(const float *x, int n) {
    /* eight named sums, not an array: GCC -O2 kept an array in memory, a store and reload per step */
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
    const int nv = n & ~7;
    for (int k = 0; k < nv; k += 8) {
        const float *p = x + k;
        a0 += (double)p[0] * p[0], a1 += (double)p[1] * p[1], a2 += (double)p[2] * p[2], a3 += (double)p[3] * p[3];
        a4 += (double)p[4] * p[4], a5 += (double)p[5] * p[5], a6 += (double)p[6] * p[6], a7 += (double)p[7] * p[7];
    }
    double s = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
    for (int k = nv; k < n; k++) s += (double)x[k] * (double)x[k];
    return s;
}

#if defined(__x86_64__)
#include <immintrin.h>
#include <math.h>

/* exp(x): 2^n p(r), x = n ln2 + r, |r| <= ln2/2, Cephes expf's degree-6 polynomial (within 2 ulp of
 * expf); x is clamped to [-103.9, 88.8]: 0 (give or take a denormal) below, +inf above, as expf. */
__attribute__((target("avx512f"), always_inline)) static inline __m512 ia_exp512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-103.9f));
    x = _mm512_min_ps(x, _mm512_set1_ps(88.8f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    const __m512 r2 = _mm512_mul_ps(r, r);
    p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

/* The largest of x[0..n) (-inf for n = 0), 16 lanes at a time (exact whatever the order). */
__attribute__((target("avx512f"), always_inline)) static inline float ia_max16(const float *x, int n) {
    __m512 m = _mm512_set1_ps(-INFINITY);
    for (int i = 0; i < n; i += 16) {
        const __mmask16 k = (__mmask16)(n - i >= 16 ? 0xFFFFu : (1u << (n - i)) - 1u);
        m = _mm512_mask_max_ps(m, k, m, _mm512_maskz_loadu_ps(k, x + i));
    }
    return _mm512_reduce_max_ps(m);
}

/* silu(g) * u = g / (1 + exp(-g)) * u, the reference's operations with ia_exp512 for expf (the
 * inference forward pass and the trainer's share it). */
__attribute__((target("avx512f"), always_inline)) static inline __m512 ia_swiglu512(__m512 g, __m512 u) {
    const __m512 e = ia_exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
    return _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e)), u);
}

/* ia_exp512 for AVX2 (no scalef): the same clamp and polynomial, 2^n applied as two exact power-of-two
 * factors 2^(n>>1) 2^(n-(n>>1)), each a normal number for every n of the clamped range. */
__attribute__((target("avx2,fma"), always_inline)) static inline __m256 ia_exp256(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-103.9f));
    x = _mm256_min_ps(x, _mm256_set1_ps(88.8f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    const __m256 r2 = _mm256_mul_ps(r, r);
    p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i ni = _mm256_cvtps_epi32(n), n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    const __m256i bias = _mm256_set1_epi32(127);
    const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

/* Lanes 0..n-1 set (none for n <= 0, all for n >= 8): a maskload/maskstore mask. */
__attribute__((target("avx2"), always_inline)) static inline __m256i ia_mask8(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* ia_max16 for AVX2. */
__attribute__((target("avx2"), always_inline)) static inline float ia_max8(const float *x, int n) {
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    __m256 m = ninf;
    for (int i = 0; i < n; i += 8) {
        const __m256i k = ia_mask8(n - i);
        m = _mm256_max_ps(m, _mm256_blendv_ps(ninf, _mm256_maskload_ps(x + i, k), _mm256_castsi256_ps(k)));
    }
    float l[8], r = -INFINITY;
    _mm256_storeu_ps(l, m);
    for (int i = 0; i < 8; i++) r = l[i] > r ? l[i] : r;
    return r;
}

/* ia_swiglu512 for AVX2. */
__attribute__((target("avx2,fma"), always_inline)) static inline __m256 ia_swiglu256(__m256 g, __m256 u) {
    const __m256 e = ia_exp256(_mm256_sub_ps(_mm256_setzero_ps(), g));
    return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), u);
}
#endif

#endif /* IA_TENSOR_SIMD_H */
