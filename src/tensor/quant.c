/* quant.c — reference (de)quantisation of the supported ggml types: F32 F16 BF16 Q8_0 Q4_0 Q4_K Q6_K
 * (dequantisation bit-exact with ggml; quantisation byte-identical to ggml's quantize_row_*_ref). */
/* Bit-exact results (quantisers equal to ggml's, SIMD decoders equal to the reference) need every
 * a*b+c rounded twice, whatever -std / -march / -ffp-contract the build uses. */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#include "tensor.h"

#include <math.h>

/* ==== dequantisation (bit-exact with ggml's dequantize_row_*: files made by llama.cpp must decode
 * identically, so the float operations are done in the same order as ggml-quants.c) ==== */

static void dequant_q4_0(const ia_block_q4_0 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += IA_QK4_0) {
        const float d = ia_fp16_to_fp32(b[i].d);
        for (int j = 0; j < IA_QK4_0 / 2; j++) {
            /* low nibbles are the first half of the block, high nibbles the second (not interleaved) */
            y[j] = (float)((b[i].qs[j] & 0x0F) - 8) * d;
            y[j + IA_QK4_0 / 2] = (float)((b[i].qs[j] >> 4) - 8) * d;
        }
    }
}

static void dequant_q8_0(const ia_block_q8_0 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += IA_QK8_0) {
        const float d = ia_fp16_to_fp32(b[i].d);
        for (int j = 0; j < IA_QK8_0; j++) y[j] = (float)b[i].qs[j] * d;
    }
}

/* The 12 scale bytes of a Q4_K block hold 8 six-bit scales and 8 six-bit mins: sub-blocks 0-3 in
 * the low 6 bits of bytes 0-3 (scales) and 4-7 (mins); sub-blocks 4-7 put their low 4 bits in
 * bytes 8-11 and their top 2 bits in the spare top bits of bytes 0-7. */
static inline void q4k_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

static void dequant_q4_K(const ia_block_q4_K *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = ia_fp16_to_fp32(b[i].d);
        const float dmin = ia_fp16_to_fp32(b[i].dmin);
        const uint8_t *q = b[i].qs;
        for (int j = 0; j < 8; j += 2, q += 32) {
            uint8_t sc, m;
            q4k_scale_min(j, b[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            q4k_scale_min(j + 1, b[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++) *y++ = d1 * (float)(q[l] & 0x0F) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * (float)(q[l] >> 4) - m2;
        }
    }
}

static void dequant_q6_K(const ia_block_q6_K *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = ia_fp16_to_fp32(b[i].d);
        const uint8_t *ql = b[i].ql, *qh = b[i].qh;
        const int8_t *sc = b[i].scales;
        for (int half = 0; half < 2; half++, y += 128, ql += 64, qh += 32, sc += 8) {
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = (int)((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = (int)((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l + 0] = d * sc[is + 0] * (float)q1;
                y[l + 32] = d * sc[is + 2] * (float)q2;
                y[l + 64] = d * sc[is + 4] * (float)q3;
                y[l + 96] = d * sc[is + 6] * (float)q4;
            }
        }
    }
}

void ia_dequantize_row(uint32_t type, const void *src, float *dst, int64_t n) {
    const ia_type_traits *tt = ia_type_traits_get(type);
    IA_ASSERT(tt && tt->supported && n % tt->blck_size == 0);
    const int64_t nb = n / tt->blck_size;
    switch (type) {
    case IA_TYPE_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    case IA_TYPE_F16: {
#if defined(__aarch64__)
        /* the hardware conversion (exact, like ia_fp16_to_fp32) keeps the portable kernel usable
         * for F16 models on ARM, where it is the only kernel */
        const __fp16 *h = src;
        for (int64_t i = 0; i < n; i++) dst[i] = (float)h[i];
#else
        const uint16_t *h = src;
        for (int64_t i = 0; i < n; i++) dst[i] = ia_fp16_to_fp32(h[i]);
#endif
        break;
    }
    case IA_TYPE_BF16: {
        const uint16_t *h = src;
        for (int64_t i = 0; i < n; i++) dst[i] = ia_bf16_to_fp32(h[i]);
        break;
    }
    case IA_TYPE_Q4_0: dequant_q4_0(src, dst, nb); break;
    case IA_TYPE_Q8_0: dequant_q8_0(src, dst, nb); break;
    case IA_TYPE_Q4_K: dequant_q4_K(src, dst, nb); break;
    case IA_TYPE_Q6_K: dequant_q6_K(src, dst, nb); break;
    default: IA_ASSERT(!"unreachable: supported type without a dequantiser");
    }
}

/* ==== reference quantisers ==== */

/* Round to nearest, ties to even (what ggml's float trick in nearest_int does for |x| < 2^22).
 * The float expressions below keep ggml's operation order (e.g. (w*l)*l), so that our files equal
 * llama.cpp's quantize_row_*_ref output byte for byte (checked against ggml at d99724f2). */
static inline int nearest_int(float x) { return (int)lrintf(x); }

static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

static void quant_q8_0(const float *x, ia_block_q8_0 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += IA_QK8_0) {
        float amax = 0.0f;
        for (int j = 0; j < IA_QK8_0; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = ia_fp32_to_fp16(d);
        /* ggml uses roundf (ties away from zero) here, not nearest-even */
        for (int j = 0; j < IA_QK8_0; j++) y[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

static void quant_q4_0(const float *x, ia_block_q4_0 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += IA_QK4_0) {
        /* the element of largest magnitude maps exactly to -8, using the full asymmetric range */
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < IA_QK4_0; j++) {
            if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); max = x[j]; }
        }
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = ia_fp32_to_fp16(d);
        for (int j = 0; j < IA_QK4_0 / 2; j++) {
            const float x0 = x[j] * id, x1 = x[j + IA_QK4_0 / 2] * id;
            /* +8.5 then truncation: rounds half up; the far side of the range can reach 16 -> 15 */
            const int q0 = (int8_t)(x0 + 8.5f) < 15 ? (int8_t)(x0 + 8.5f) : 15;
            const int q1 = (int8_t)(x1 + 8.5f) < 15 ? (int8_t)(x1 + 8.5f) : 15;
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

/* Affine fit of n values to levels 0..nmax: x ~ scale*L + min, min <= 0. Starts from the plain
 * min/max grid, then tries nstep slightly stretched grids and for each solves the weighted least
 * squares problem for (scale, min) with the levels fixed, keeping the lowest weighted error (the
 * approach of ggml's make_qkx2_quants). Like ggml, later grids are anchored at the best min found
 * so far rather than the data minimum. Returns scale; *neg_min receives -min (>= 0). */
static float fit_affine(int n, int nmax, const float *x, const float *w, uint8_t *L, float *neg_min,
                        float rmin, float rdelta, int nstep) {
    float lo = x[0], hi = x[0];
    float sum_w = 0.0f, sum_x = 0.0f;
    for (int i = 0; i < n; i++) {
        lo = fminf(lo, x[i]);
        hi = fmaxf(hi, x[i]);
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (lo > 0.0f) lo = 0.0f; /* the format subtracts a non-negative min */
    if (hi == lo) {
        memset(L, 0, (size_t)n);
        *neg_min = -lo;
        return 0.0f;
    }
    float iscale = (float)nmax / (hi - lo);
    float scale = 1.0f / iscale, min = lo;
    float best = 0.0f;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)clampi(nearest_int(iscale * (x[i] - lo)), 0, nmax);
        const float diff = scale * L[i] + min - x[i];
        best += w[i] * (diff * diff);
    }
    uint8_t Laux[IA_QK_K];
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * (float)is + (float)nmax) / (hi - min);
        float sum_l = 0.0f, sum_l2 = 0.0f, sum_xl = 0.0f;
        for (int i = 0; i < n; i++) {
            const int l = clampi(nearest_int(iscale * (x[i] - min)), 0, nmax);
            Laux[i] = (uint8_t)l;
            sum_l += w[i] * (float)l;
            sum_l2 += w[i] * (float)l * (float)l;
            sum_xl += w[i] * (float)l * x[i];
        }
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D <= 0.0f) continue;
        float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
        float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
        if (this_min > 0.0f) { /* a positive min is not representable: refit the scale alone */
            this_min = 0.0f;
            this_scale = sum_xl / sum_l2;
        }
        float err = 0.0f;
        for (int i = 0; i < n; i++) {
            const float diff = this_scale * Laux[i] + this_min - x[i];
            err += w[i] * (diff * diff);
        }
        if (err < best) {
            memcpy(L, Laux, (size_t)n);
            best = err;
            scale = this_scale;
            min = this_min;
        }
    }
    *neg_min = -min;
    return scale;
}

static void quant_q4_K(const float *x, ia_block_q4_K *y, int64_t nb) {
    uint8_t L[IA_QK_K];
    float w[32], scales[8], mins[8];
    for (int64_t i = 0; i < nb; i++, x += IA_QK_K) {
        float max_scale = 0.0f, max_min = 0.0f;
        for (int j = 0; j < 8; j++) {
            const float *xs = x + 32 * j;
            /* weight each value by the sub-block rms plus its own magnitude: large values matter more */
            float sum_x2 = 0.0f;
            for (int l = 0; l < 32; l++) sum_x2 += xs[l] * xs[l];
            const float av_x = sqrtf(sum_x2 / 32.0f);
            for (int l = 0; l < 32; l++) w[l] = av_x + fabsf(xs[l]);
            scales[j] = fit_affine(32, 15, xs, w, L + 32 * j, &mins[j], -1.0f, 0.1f, 20);
            if (scales[j] > max_scale) max_scale = scales[j]; /* not fmaxf: keeps +0 over -0 */
            if (mins[j] > max_min) max_min = mins[j];
        }
        /* super-block scales; sub-block scale and min become 6-bit multiples of them */
        const float inv_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
        const float inv_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
        memset(y[i].scales, 0, sizeof y[i].scales);
        for (int j = 0; j < 8; j++) {
            const int ls = clampi(nearest_int(inv_scale * scales[j]), 0, 63);
            const int lm = clampi(nearest_int(inv_min * mins[j]), 0, 63);
            if (j < 4) {
                y[i].scales[j] = (uint8_t)ls;
                y[i].scales[j + 4] = (uint8_t)lm;
            } else {
                y[i].scales[j + 4] = (uint8_t)((ls & 0x0F) | ((lm & 0x0F) << 4));
                y[i].scales[j - 4] |= (uint8_t)((ls >> 4) << 6);
                y[i].scales[j] |= (uint8_t)((lm >> 4) << 6);
            }
        }
        y[i].d = ia_fp32_to_fp16(max_scale / 63.0f);
        y[i].dmin = ia_fp32_to_fp16(max_min / 63.0f);
        /* requantise against the scales actually stored, so the levels fit what decodes */
        const float d = ia_fp16_to_fp32(y[i].d), dmin = ia_fp16_to_fp32(y[i].dmin);
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            q4k_scale_min(j, y[i].scales, &sc, &m);
            const float ds = d * sc;
            if (ds == 0.0f) continue; /* levels from the fit are kept; they decode to -dm anyway */
            const float dm = dmin * m;
            for (int l = 0; l < 32; l++)
                L[32 * j + l] = (uint8_t)clampi(nearest_int((x[32 * j + l] + dm) / ds), 0, 15);
        }
        uint8_t *q = y[i].qs;
        for (int j = 0; j < IA_QK_K; j += 64, q += 32)
            for (int l = 0; l < 32; l++) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
    }
}

/* Symmetric fit of n values to levels -nmax..nmax-1 with weights x^2: starts from the grid where
 * the largest-magnitude value lands on -nmax, tries grids stretched by +-0.1..0.9 levels and keeps
 * the one with the best least-squares scale (ggml's make_qx_quants with rmse_type 1). L receives
 * levels offset by nmax; returns the scale (may be negative). */
static float fit_symmetric(int n, int nmax, const float *x, int8_t *L) {
    float amax = 0.0f, max = 0.0f;
    for (int i = 0; i < n; i++) {
        if (fabsf(x[i]) > amax) { amax = fabsf(x[i]); max = x[i]; }
    }
    if (amax < 1e-15f) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float iscale = -(float)nmax / max;
    float sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < n; i++) {
        const int l = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)(l + nmax);
        const float w = x[i] * x[i];
        sumlx += w * x[i] * (float)l;
        suml2 += w * (float)l * (float)l;
    }
    float scale = suml2 > 0.0f ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = -((float)nmax + 0.1f * (float)is) / max;
        sumlx = suml2 = 0.0f;
        for (int i = 0; i < n; i++) {
            const int l = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
            const float w = x[i] * x[i];
            sumlx += w * x[i] * (float)l;
            suml2 += w * (float)l * (float)l;
        }
        /* maximising sumlx^2/suml2 minimises the weighted squared error for the optimal scale */
        if (suml2 > 0.0f && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++)
                L[i] = (int8_t)(nmax + clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

static void quant_q6_K(const float *x, ia_block_q6_K *y, int64_t nb) {
    int8_t L[IA_QK_K];
    float scales[16];
    for (int64_t i = 0; i < nb; i++, x += IA_QK_K) {
        float max_scale = 0.0f, max_abs_scale = 0.0f;
        for (int ib = 0; ib < 16; ib++) {
            scales[ib] = fit_symmetric(16, 32, x + 16 * ib, L + 16 * ib);
            if (fabsf(scales[ib]) > max_abs_scale) {
                max_abs_scale = fabsf(scales[ib]);
                max_scale = scales[ib];
            }
        }
        if (max_abs_scale < 1e-15f) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        /* 8-bit sub-block scales relative to d; the largest lands on -128 */
        const float iscale = -128.0f / max_scale;
        y[i].d = ia_fp32_to_fp16(1.0f / iscale);
        for (int ib = 0; ib < 16; ib++) {
            const int v = nearest_int(iscale * scales[ib]);
            y[i].scales[ib] = (int8_t)(v < 127 ? v : 127);
        }
        const float d = ia_fp16_to_fp32(y[i].d);
        for (int j = 0; j < 16; j++) {
            const float ds = d * (float)y[i].scales[j];
            if (ds == 0.0f) continue;
            for (int l = 0; l < 16; l++)
                L[16 * j + l] = (int8_t)(32 + clampi(nearest_int(x[16 * j + l] / ds), -32, 31));
        }
        uint8_t *ql = y[i].ql, *qh = y[i].qh;
        for (int j = 0; j < IA_QK_K; j += 128, ql += 64, qh += 32) {
            for (int l = 0; l < 32; l++) {
                const int q1 = L[j + l], q2 = L[j + l + 32], q3 = L[j + l + 64], q4 = L[j + l + 96];
                ql[l] = (uint8_t)((q1 & 0x0F) | ((q3 & 0x0F) << 4));
                ql[l + 32] = (uint8_t)((q2 & 0x0F) | ((q4 & 0x0F) << 4));
                qh[l] = (uint8_t)((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
            }
        }
    }
}

size_t ia_quantize_row(uint32_t type, const float *src, void *dst, int64_t n) {
    const ia_type_traits *tt = ia_type_traits_get(type);
    IA_ASSERT(tt && tt->supported && n % tt->blck_size == 0);
    const int64_t nb = n / tt->blck_size;
    switch (type) {
    case IA_TYPE_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    case IA_TYPE_F16: {
        uint16_t *h = dst;
        for (int64_t i = 0; i < n; i++) h[i] = ia_fp32_to_fp16(src[i]);
        break;
    }
    case IA_TYPE_BF16: {
        uint16_t *h = dst;
        for (int64_t i = 0; i < n; i++) h[i] = ia_fp32_to_bf16(src[i]);
        break;
    }
    case IA_TYPE_Q4_0: quant_q4_0(src, dst, nb); break;
    case IA_TYPE_Q8_0: quant_q8_0(src, dst, nb); break;
    case IA_TYPE_Q4_K: quant_q4_K(src, dst, nb); break;
    case IA_TYPE_Q6_K: quant_q6_K(src, dst, nb); break;
    default: IA_ASSERT(!"unreachable: supported type without a quantiser");
    }
    return (size_t)nb * tt->type_size;
}
