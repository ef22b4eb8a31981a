/* ops.c — element-wise steps of the forward passes (inference and training): SwiGLU (the plain
 * reference, AVX-512 and AVX2) and f32 to f16 rows (the KV cache). */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#include "kernels.h"
#include "simd.h"

#include <math.h>

void ia_swiglu_ref(float *h, const float *g, const float *u, size_t n) {
    for (size_t i = 0; i < n; i++) h[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static void swiglu_avx512(float *h, const float *g, const float *u, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(h + i, ia_swiglu512(_mm512_loadu_ps(g + i), _mm512_loadu_ps(u + i)));
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(h + i, m, ia_swiglu512(_mm512_maskz_loadu_ps(m, g + i), _mm512_maskz_loadu_ps(m, u + i)));
    }
}

__attribute__((target("avx2,fma"))) static void swiglu_avx2(float *h, const float *g, const float *u, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(h + i, ia_swiglu256(_mm256_loadu_ps(g + i), _mm256_loadu_ps(u + i)));
    if (i < n) {
        const __m256i m = ia_mask8((int)(n - i));
        _mm256_maskstore_ps(h + i, m, ia_swiglu256(_mm256_maskload_ps(g + i, m), _mm256_maskload_ps(u + i, m)));
    }
}
#endif

void ia_swiglu(float *h, const float *g, const float *u, size_t n) {
#if defined(__x86_64__)
    if (strcmp(ia_cpu_kernel_name(), "avx512") == 0) {
        swiglu_avx512(h, g, u, n);
        return;
    }
    if (strcmp(ia_cpu_kernel_name(), "avx2") == 0) {
        swiglu_avx2(h, g, u, n);
        return;
    }
#endif
    ia_swiglu_ref(h, g, u, n);
}

static void fp16_from_f32_ref(uint16_t *h, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) h[i] = ia_fp32_to_fp16(x[i]);
}

#if defined(__x86_64__)
__attribute__((target("avx2,f16c"))) static void fp16_from_f32_f16c(uint16_t *h, const float *x, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(h + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++) h[i] = ia_fp32_to_fp16(x[i]);
}
#endif

void ia_fp16_from_f32(uint16_t *h, const float *x, size_t n) {
#if defined(__x86_64__)
    /* both families require F16C (ia_kernel_available) */
    if (strcmp(ia_cpu_kernel_name(), "avx512") == 0 || strcmp(ia_cpu_kernel_name(), "avx2") == 0) {
        fp16_from_f32_f16c(h, x, n);
        return;
    }
#endif
    fp16_from_f32_ref(h, x, n);
}
