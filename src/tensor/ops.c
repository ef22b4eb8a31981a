/* ops.c — element-wise steps of the forward pass: SwiGLU (the plain reference and AVX-512). */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#include "kernels.h"
#include "simd.h"

#include <math.h>

void ia_swiglu_ref(float *g, const float *u, size_t n) {
    for (size_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static void swiglu_avx512(float *g, const float *u, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(g + i, ia_swiglu512(_mm512_loadu_ps(g + i), _mm512_loadu_ps(u + i)));
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(g + i, m, ia_swiglu512(_mm512_maskz_loadu_ps(m, g + i), _mm512_maskz_loadu_ps(m, u + i)));
    }
}
#endif

void ia_swiglu(float *g, const float *u, size_t n) {
#if defined(__x86_64__)
    if (strcmp(ia_cpu_kernel_name(), "avx512") == 0) {
        swiglu_avx512(g, u, n);
        return;
    }
#endif
    ia_swiglu_ref(g, u, n);
}
