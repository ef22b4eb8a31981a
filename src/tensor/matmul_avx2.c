/* matmul_avx2.c — AVX2+FMA+F16C matmul kernel: SIMD decoding of weight rows, the FMA dot of
 * IA_MM_ROWS weight rows against the activation rows, and the fused decode+FMA path for one or two
 * rows (x86-64 only, chosen at run time). Same structure as matmul_avx512.c with 8 lanes. */
/* Bit-exact results (quantisers equal to ggml's, SIMD decoders equal to the reference) need every
 * a*b+c rounded twice, whatever -std / -march / -ffp-contract the build uses. */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#include "kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define T256 __attribute__((target("avx2,fma,f16c")))
#define INLINE __attribute__((always_inline)) inline

/* Elements decoded per call of a decoder: 4 vectors of 8. */
#define G 32

/* Block scales through F16C: one instruction instead of the bit-twiddling conversion, and the
 * same value for every non-NaN half. */
T256 static INLINE float h2f(uint16_t h) { return _cvtsh_ss(h); }

/* ---- decoders: elements [k, k + 32) of a row (k a multiple of 32) into v[0..3], with the float
 * operations of quant.c in the same order, so the values equal ia_dequantize_row's bit for bit ---- */

T256 static INLINE __m128i load16(const void *p) { return _mm_loadu_si128((const __m128i *)p); }
/* the first 8 bytes of v as floats, and the last 8 */
T256 static INLINE __m256 lo_i8(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)); }
T256 static INLINE __m256 hi_i8(__m128i v) { return lo_i8(_mm_srli_si128(v, 8)); }
T256 static INLINE __m256 lo_u8(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)); }
T256 static INLINE __m256 hi_u8(__m128i v) { return lo_u8(_mm_srli_si128(v, 8)); }

T256 static INLINE void dec_f32(const uint8_t *row, int64_t k, const float *aux, __m256 *v) {
    (void)aux;
    const float *f = (const float *)row + k;
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) v[j] = _mm256_loadu_ps(f + 8 * j);
}

T256 static INLINE void dec_f16(const uint8_t *row, int64_t k, const float *aux, __m256 *v) {
    (void)aux;
    const uint16_t *h = (const uint16_t *)row + k;
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) v[j] = _mm256_cvtph_ps(load16(h + 8 * j));
}

T256 static INLINE void dec_bf16(const uint8_t *row, int64_t k, const float *aux, __m256 *v) {
    (void)aux;
    const uint16_t *h = (const uint16_t *)row + k;
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++)
        v[j] = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(load16(h + 8 * j)), 16));
}

T256 static INLINE void dec_q8_0(const uint8_t *row, int64_t k, const float *aux, __m256 *v) {
    (void)aux;
    const ia_block_q8_0 *b = (const ia_block_q8_0 *)row + k / IA_QK8_0;
    const __m256 d = _mm256_set1_ps(h2f(b->d));
    const __m128i q0 = load16(b->qs), q1 = load16(b->qs + 16);
    v[0] = _mm256_mul_ps(lo_i8(q0), d);
    v[1] = _mm256_mul_ps(hi_i8(q0), d);
    v[2] = _mm256_mul_ps(lo_i8(q1), d);
    v[3] = _mm256_mul_ps(hi_i8(q1), d);
}

T256 static INLINE void dec_q4_0(const uint8_t *row, int64_t k, const float *aux, __m256 *v) {
    (void)aux;
    const ia_block_q4_0 *b = (const ia_block_q4_0 *)row + k / IA_QK4_0;
    const __m128i m4 = _mm_set1_epi8(0x0F), m8 = _mm_set1_epi8(8);
    const __m256 d = _mm256_set1_ps(h2f(b->d));
    const __m128i q = load16(b->qs);
    /* low nibbles are the first 16 values, high nibbles the next 16 */
    const __m128i lo = _mm_sub_epi8(_mm_and_si128(q, m4), m8);
    const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), m4), m8);
    v[0] = _mm256_mul_ps(lo_i8(lo), d);
    v[1] = _mm256_mul_ps(hi_i8(lo), d);
    v[2] = _mm256_mul_ps(lo_i8(hi), d);
    v[3] = _mm256_mul_ps(hi_i8(hi), d);
}

/* K-quant scales: once per 256-value block and row, prep_* turns the packed scales into floats in
 * aux[16] (as vectors: scalar int->float conversions merge into a register GCC may take from a live
 * accumulator); the decoders broadcast them from there. */

/* aux[0..8) = d*sc[j], aux[8..16) = dmin*m[j] (get_scale_min_k4 for all j at once, on packed bytes:
 * j >= 4 take their low 4 bits from bytes 8..11 and top 2 bits from bits 6-7 of bytes 0..7). */
T256 static INLINE void prep_q4_K(const uint8_t *row, int64_t k, float *aux) {
    const ia_block_q4_K *b = (const ia_block_q4_K *)row + k / IA_QK_K;
    uint32_t a, m, c;
    memcpy(&a, b->scales, 4);
    memcpy(&m, b->scales + 4, 4);
    memcpy(&c, b->scales + 8, 4);
    const uint32_t sc_lo = a & 0x3F3F3F3Fu, m_lo = m & 0x3F3F3F3Fu;
    const uint32_t sc_hi = (c & 0x0F0F0F0Fu) | ((a >> 2) & 0x30303030u);
    const uint32_t m_hi = ((c >> 4) & 0x0F0F0F0Fu) | ((m >> 2) & 0x30303030u);
    const __m128i q = _mm_setr_epi32((int)sc_lo, (int)sc_hi, (int)m_lo, (int)m_hi);
    _mm256_storeu_ps(aux, _mm256_mul_ps(_mm256_set1_ps(h2f(b->d)), lo_u8(q)));
    _mm256_storeu_ps(aux + 8, _mm256_mul_ps(_mm256_set1_ps(h2f(b->dmin)), hi_u8(q)));
}

/* 32 values of a Q4_K block = sub-block j: the low (j even) or high (j odd) nibbles of the 32 qs
 * bytes of chunk j/2; y = (d*sc)*q - dmin*m. */
T256 static INLINE void dec_q4_K(const uint8_t *row, int64_t k, const float *aux, __m256 *v) {
    const ia_block_q4_K *b = (const ia_block_q4_K *)row + k / IA_QK_K;
    const int j = (int)((uint64_t)k % IA_QK_K) / 32;
    const __m256 d1 = _mm256_set1_ps(aux[j]), m1 = _mm256_set1_ps(aux[8 + j]);
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const uint8_t *q = b->qs + 32 * (j / 2);
    __m128i x0 = load16(q), x1 = load16(q + 16);
    if (j & 1) {
        x0 = _mm_srli_epi16(x0, 4);
        x1 = _mm_srli_epi16(x1, 4);
    }
    x0 = _mm_and_si128(x0, m4);
    x1 = _mm_and_si128(x1, m4);
    v[0] = _mm256_sub_ps(_mm256_mul_ps(d1, lo_u8(x0)), m1);
    v[1] = _mm256_sub_ps(_mm256_mul_ps(d1, hi_u8(x0)), m1);
    v[2] = _mm256_sub_ps(_mm256_mul_ps(d1, lo_u8(x1)), m1);
    v[3] = _mm256_sub_ps(_mm256_mul_ps(d1, hi_u8(x1)), m1);
}

/* aux[i] = d*scales[i] */
T256 static INLINE void prep_q6_K(const uint8_t *row, int64_t k, float *aux) {
    const ia_block_q6_K *b = (const ia_block_q6_K *)row + k / IA_QK_K;
    const __m256 d = _mm256_set1_ps(h2f(b->d));
    const __m128i sc = load16(b->scales);
    _mm256_storeu_ps(aux, _mm256_mul_ps(d, lo_i8(sc)));
    _mm256_storeu_ps(aux + 8, _mm256_mul_ps(d, hi_i8(sc)));
}

/* 32 values of a Q6_K block: in half hf, part p = 0..3 is q1..q4 for l < 32 (q1, q3 from ql[l],
 * q2, q4 from ql[l+32]); l < 16 and l >= 16 use consecutive scales; y = (d*scale)*(q - 32). */
T256 static INLINE void dec_q6_K(const uint8_t *row, int64_t k, const float *aux, __m256 *v) {
    const ia_block_q6_K *b = (const ia_block_q6_K *)row + k / IA_QK_K;
    const int hf = (int)((uint64_t)k % IA_QK_K) / 128, p = (int)((uint64_t)k % 128) / 32;
    const uint8_t *ql = b->ql + 64 * hf + (p & 1) * 32, *qh = b->qh + 32 * hf;
    const float *ds = aux + 8 * hf + 2 * p;
    const __m128i m4 = _mm_set1_epi8(0x0F), m3 = _mm_set1_epi8(3), m30 = _mm_set1_epi8(0x30);
    const __m128i m32 = _mm_set1_epi8(32);
#pragma GCC unroll 2
    for (int l = 0; l < 2; l++) {
        const __m128i a = load16(ql + 16 * l), h = load16(qh + 16 * l);
        __m128i q;
        /* 16-bit shifts are safe: every shifted byte is masked to bits that stay inside it */
        switch (p) {
        case 0: q = _mm_or_si128(_mm_and_si128(a, m4), _mm_slli_epi16(_mm_and_si128(h, m3), 4)); break;
        case 1: q = _mm_or_si128(_mm_and_si128(a, m4), _mm_and_si128(_mm_slli_epi16(h, 2), m30)); break;
        case 2: q = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(a, 4), m4), _mm_and_si128(h, m30)); break;
        default: q = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(a, 4), m4), _mm_and_si128(_mm_srli_epi16(h, 2), m30)); break;
        }
        q = _mm_sub_epi8(q, m32);
        const __m256 s = _mm256_set1_ps(ds[l]);
        v[2 * l] = _mm256_mul_ps(s, lo_i8(q));
        v[2 * l + 1] = _mm256_mul_ps(s, hi_i8(q));
    }
}

typedef void (*prep_fn)(const uint8_t *row, int64_t k, float *aux);
typedef void (*dec_fn)(const uint8_t *row, int64_t k, const float *aux, __m256 *v);

/* decoder pairs per type (prep is NULL where a block carries a single scale) */
#define DECODERS(X)                                                                                \
    X(IA_TYPE_F32, NULL, dec_f32)                                                                  \
    X(IA_TYPE_F16, NULL, dec_f16)                                                                  \
    X(IA_TYPE_BF16, NULL, dec_bf16)                                                                \
    X(IA_TYPE_Q8_0, NULL, dec_q8_0)                                                                \
    X(IA_TYPE_Q4_0, NULL, dec_q4_0)                                                                \
    X(IA_TYPE_Q4_K, prep_q4_K, dec_q4_K)                                                           \
    X(IA_TYPE_Q6_K, prep_q6_K, dec_q6_K)

/* Whole groups through the decoder, the remainder (< 32: half types with odd lengths) through the
 * reference; the fused path splits rows the same way. */
T256 static INLINE void dequant_with(prep_fn prep, dec_fn dec, uint32_t type, const uint8_t *row, int64_t k0,
                                     int len, float *out) {
    float aux[16] __attribute__((aligned(32)));
    const int ng = len / G;
    for (int g = 0; g < ng; g++) {
        const int64_t k = k0 + (int64_t)G * g;
        if (prep && k % IA_QK_K == 0) prep(row, k, aux);
        __m256 v[4];
        dec(row, k, aux, v);
        /* four explicit stores: as a loop, GCC may turn them into a memcpy from a stack copy */
        _mm256_storeu_ps(out + G * g, v[0]);
        _mm256_storeu_ps(out + G * g + 8, v[1]);
        _mm256_storeu_ps(out + G * g + 16, v[2]);
        _mm256_storeu_ps(out + G * g + 24, v[3]);
    }
    if (len > G * ng) ia_mm_kernel_scalar.dequant(type, row, k0 + (int64_t)G * ng, len - G * ng, out + G * ng);
}

/* All IA_MM_ROWS rows of a chunk, group by group across the rows: their misses overlap (one row at
 * a time, each row's few cache lines and its page walk were waited for in turn). */
T256 static INLINE void dequant_rows_with(prep_fn prep, dec_fn dec, uint32_t type, const uint8_t *const *rows,
                                          int64_t k0, int len, float (*out)[IA_MM_CHUNK]) {
    enum { R = IA_MM_ROWS };
    float aux[R][16] __attribute__((aligned(32)));
    const int ng = len / G;
    for (int g = 0; g < ng; g++) {
        const int64_t k = k0 + (int64_t)G * g;
        if (prep && k % IA_QK_K == 0)
            for (int r = 0; r < R; r++) prep(rows[r], k, aux[r]);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            __m256 v[4];
            dec(rows[r], k, aux[r], v);
            _mm256_storeu_ps(out[r] + G * g, v[0]);
            _mm256_storeu_ps(out[r] + G * g + 8, v[1]);
            _mm256_storeu_ps(out[r] + G * g + 16, v[2]);
            _mm256_storeu_ps(out[r] + G * g + 24, v[3]);
        }
    }
    if (len > G * ng)
        for (int r = 0; r < R; r++)
            ia_mm_kernel_scalar.dequant(type, rows[r], k0 + (int64_t)G * ng, len - G * ng, out[r] + G * ng);
}

T256 static void dequant_rows_avx2(uint32_t type, const uint8_t *const *rows, int64_t k0, int len,
                                   float (*out)[IA_MM_CHUNK]) {
    switch (type) {
#define CASE(T, P, D) case T: dequant_rows_with(P, D, type, rows, k0, len, out); break;
    DECODERS(CASE)
#undef CASE
    default:
        for (int r = 0; r < IA_MM_ROWS; r++) ia_mm_kernel_scalar.dequant(type, rows[r], k0, len, out[r]);
        break;
    }
}

T256 static void dequant_avx2(uint32_t type, const void *row, int64_t k0, int len, float *out) {
    switch (type) {
#define CASE(T, P, D) case T: dequant_with(P, D, type, row, k0, len, out); break;
    DECODERS(CASE)
#undef CASE
    default: ia_mm_kernel_scalar.dequant(type, row, k0, len, out); break; /* F32 */
    }
}

/* ---- dot ---- */

T256 static INLINE float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

T256 static INLINE void store_sum(float *y, __m256 acc, bool accumulate) {
    const float s = hsum256(acc);
    *y = accumulate ? *y + s : s;
}

/* Lanes 0..n-1 set (n <= 8), for masked loads of a row's last partial vector. */
T256 static INLINE __m256i tail_mask(int n) {
    static const int32_t ramp[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256((const __m256i *)(ramp + 8 - n));
}

/* NT activation rows (1..3) against 4 weight rows from w[0]: acc[t][r] gets the FMAs in k order, the
 * masked tail last, whatever NT is. */
T256 static INLINE void dot_tile(const int NT, const float *const *w, int nv, int nt, __m256i tail, const float *x0,
                                 int64_t ldx, __m256 (*acc)[4]) {
#pragma GCC unroll 3
    for (int t = 0; t < NT; t++)
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) acc[t][r] = _mm256_setzero_ps();
    for (int k = 0; k < nv; k += 8) {
        __m256 v[3];
#pragma GCC unroll 3
        for (int t = 0; t < NT; t++) v[t] = _mm256_loadu_ps(x0 + t * ldx + k);
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            __m256 wv = _mm256_loadu_ps(w[r] + k);
            __asm__("" : "+x"(wv)); /* one load per weight vector: GCC would fold it into every FMA */
#pragma GCC unroll 3
            for (int t = 0; t < NT; t++) acc[t][r] = _mm256_fmadd_ps(wv, v[t], acc[t][r]);
        }
    }
    if (nt) {
        __m256 v[3];
#pragma GCC unroll 3
        for (int t = 0; t < NT; t++) v[t] = _mm256_maskload_ps(x0 + t * ldx + nv, tail);
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            const __m256 wv = _mm256_maskload_ps(w[r] + nv, tail);
#pragma GCC unroll 3
            for (int t = 0; t < NT; t++) acc[t][r] = _mm256_fmadd_ps(wv, v[t], acc[t][r]);
        }
    }
}

/* One accumulator of 8 lanes per (t, r), FMAs in k order, the masked tail last, store_sum: fixed by
 * len alone. Tiles of three activation rows by four weight rows share the loads (12 accumulators
 * and 4 operands fill the 16 registers); that only interleaves independent accumulators. */
T256 static void dot_avx2(const float *const *w, int len, const float *X, int64_t ldx, int n_tok,
                          float *Y, int64_t ldy, int nr, bool accumulate) {
    const int nv = len & ~7;
    const int nt = len - nv;
    const __m256i tail = tail_mask(nt);
    __m256 acc[3][4];
    for (int t = 0; t < n_tok;) {
        const int n = n_tok - t >= 3 ? 3 : n_tok - t;
        for (int r0 = 0; r0 < nr; r0 += 4) {
            if (n == 3) dot_tile(3, w + r0, nv, nt, tail, X + t * ldx, ldx, acc);
            else if (n == 2) dot_tile(2, w + r0, nv, nt, tail, X + t * ldx, ldx, acc);
            else dot_tile(1, w + r0, nv, nt, tail, X + t * ldx, ldx, acc);
            for (int i = 0; i < n; i++)
                for (int r = 0; r < 4 && r0 + r < nr; r++) store_sum(Y + (t + i) * ldy + r0 + r, acc[i][r], accumulate);
        }
        t += n;
    }
}

/* ---- decoding F32/F16/BF16 one whole row at a time ---- */

/* 8 weights from element k of a row as f32 (exact widening, as the decoders do). */
T256 static INLINE __m256 load_w8(uint32_t type, const uint8_t *row, int k) {
    if (type == IA_TYPE_F32) return _mm256_loadu_ps((const float *)row + k);
    const __m128i h = load16((const uint16_t *)row + k);
    if (type == IA_TYPE_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); /* BF16 */
}

/* Each (t, r) gets dot_avx2's operations: per chunk one accumulator, FMAs in k order, the tail
 * (zeros past len) last, hsum256, then Y = s or Y + s. */
T256 static INLINE void dot_rows_with(const uint32_t type, const uint8_t *W, size_t rs, int n_in, int o0, int o1,
                                      const float *X, int64_t ldx, int n_tok, float *Y, int64_t ldy) {
    const size_t es = type == IA_TYPE_F32 ? 4 : 2; /* bytes per element */
    for (int o = o0; o < o1; o++) {
        const uint8_t *w = W + (size_t)o * rs;
        for (int k0 = 0; k0 < n_in; k0 += IA_MM_CHUNK) {
            const int len = n_in - k0 < IA_MM_CHUNK ? n_in - k0 : IA_MM_CHUNK, nv = len & ~7, nt = len - nv;
            const float *x0 = X + k0, *x1 = X + ldx + k0;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            for (int k = 0; k < nv; k += 8) {
                if (((size_t)k * es & 63) == 0) /* once per 64-byte line */
                    _mm_prefetch((const char *)w + (size_t)(k0 + k) * es + IA_ROWS_PF_DIST, _MM_HINT_T0);
                const __m256 wv = load_w8(type, w, k0 + k);
                a0 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x0 + k), a0);
                if (n_tok == 2) a1 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x1 + k), a1);
            }
            if (nt) {
                float wt[8] = {0};
                for (int i = 0; i < nt; i++) {
                    const int e = k0 + nv + i;
                    wt[i] = type == IA_TYPE_F32 ? ((const float *)w)[e]
                            : type == IA_TYPE_F16 ? ia_fp16_to_fp32(((const uint16_t *)w)[e])
                                                  : ia_bf16_to_fp32(((const uint16_t *)w)[e]);
                }
                const __m256i tail = tail_mask(nt);
                const __m256 wv = _mm256_loadu_ps(wt);
                a0 = _mm256_fmadd_ps(wv, _mm256_maskload_ps(x0 + nv, tail), a0);
                if (n_tok == 2) a1 = _mm256_fmadd_ps(wv, _mm256_maskload_ps(x1 + nv, tail), a1);
            }
            store_sum(Y + o, a0, k0 > 0);
            if (n_tok == 2) store_sum(Y + ldy + o, a1, k0 > 0);
        }
    }
}

T256 static void dot_rows_avx2(uint32_t type, const uint8_t *W, size_t rs, int n_in, int o0, int o1, const float *X,
                               int64_t ldx, int n_tok, float *Y, int64_t ldy) {
    IA_MM_ROWS_SWITCH(dot_rows_with, type, W, rs, n_in, o0, o1, X, ldx, n_tok, Y, ldy);
}

/* ---- fused decode + dot for one or two activation rows ---- */

/* NT (1 or 2) activation rows against RG (8 for one row, 4 for two: 8 accumulators either way)
 * weight rows starting at rows[0], over one chunk. Each accumulator gets exactly the FMAs dot_avx2
 * would give it, so the result does not depend on which path ran. */
T256 static INLINE void fused_tile(prep_fn prep, dec_fn dec, const int NT, const int RG,
                                   const uint8_t *const *rows, int64_t k0, int len, const float (*rest)[G],
                                   const float *x0, const float *x1, float *y0, float *y1, int nr,
                                   bool accumulate, const uint8_t *const *pf, size_t ts, int64_t bs) {
    const int ng = len / G, nrest = len - G * ng, nv = nrest & ~7;
    const __m256i tail = tail_mask(nrest - nv);
    __m256 a0[8], a1[4];
#pragma GCC unroll 8
    for (int r = 0; r < RG; r++) a0[r] = _mm256_setzero_ps();
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) a1[r] = _mm256_setzero_ps();
    float aux[8][16] __attribute__((aligned(32)));
    for (int g = 0; g < ng; g++) {
        const int64_t k = k0 + (int64_t)G * g;
        /* decoding reads each weight once: fetch the same 64 values of the next block's rows, one
         * block (several KiB) ahead, spread over the steps rather than in one burst */
        if (pf) {
            const size_t o0 = (size_t)k * ts / (size_t)bs, o1 = (size_t)(k + G) * ts / (size_t)bs;
            for (int r = 0; r < IA_MM_ROWS; r++)
                for (size_t o = o0 & ~(size_t)63; o < o1; o += 64) _mm_prefetch((const char *)pf[r] + o, _MM_HINT_T0);
        }
        if (prep && k % IA_QK_K == 0)
            for (int r = 0; r < RG; r++) prep(rows[r], k, aux[r]);
        const float *xg0 = x0 + G * g, *xg1 = x1 + G * g;
#pragma GCC unroll 8
        for (int r = 0; r < RG; r++) {
            __m256 v[4];
            dec(rows[r], k, aux[r], v);
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                a0[r] = _mm256_fmadd_ps(v[j], _mm256_loadu_ps(xg0 + 8 * j), a0[r]);
                if (NT == 2) a1[r & 3] = _mm256_fmadd_ps(v[j], _mm256_loadu_ps(xg1 + 8 * j), a1[r & 3]);
            }
        }
    }
    if (nrest) { /* the remainder was decoded by the reference into rest[r] */
        const float *xr0 = x0 + G * ng, *xr1 = x1 + G * ng;
        for (int k = 0; k < nv; k += 8) {
#pragma GCC unroll 8
            for (int r = 0; r < RG; r++) {
                const __m256 wv = _mm256_loadu_ps(rest[r] + k);
                a0[r] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xr0 + k), a0[r]);
                if (NT == 2) a1[r & 3] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xr1 + k), a1[r & 3]);
            }
        }
        if (nrest > nv) {
#pragma GCC unroll 8
            for (int r = 0; r < RG; r++) {
                const __m256 wv = _mm256_maskload_ps(rest[r] + nv, tail);
                a0[r] = _mm256_fmadd_ps(wv, _mm256_maskload_ps(xr0 + nv, tail), a0[r]);
                if (NT == 2) a1[r & 3] = _mm256_fmadd_ps(wv, _mm256_maskload_ps(xr1 + nv, tail), a1[r & 3]);
            }
        }
    }
    for (int r = 0; r < RG && r < nr; r++) {
        store_sum(y0 + r, a0[r], accumulate);
        if (NT == 2) store_sum(y1 + r, a1[r & 3], accumulate);
    }
}

T256 static INLINE void fused_with(prep_fn prep, dec_fn dec, uint32_t type, const uint8_t *const *rows,
                                   int64_t k0, int len, const float *X, int64_t ldx, int n_tok, float *Y,
                                   int64_t ldy, int nr, bool accumulate, const uint8_t *const *pf) {
    const ia_type_traits *tt = ia_type_traits_get(type);
    float rest[IA_MM_ROWS][G] __attribute__((aligned(32)));
    const int ng = len / G;
    if (len > G * ng)
        for (int r = 0; r < IA_MM_ROWS; r++)
            ia_mm_kernel_scalar.dequant(type, rows[r], k0 + (int64_t)G * ng, len - G * ng, rest[r]);
    int t = 0;
    for (; t + 2 <= n_tok; t += 2)
        for (int r0 = 0; r0 < nr; r0 += 4)
            fused_tile(prep, dec, 2, 4, rows + r0, k0, len, (const float(*)[G])rest + r0, X + t * ldx,
                       X + (t + 1) * ldx, Y + t * ldy + r0, Y + (t + 1) * ldy + r0, nr - r0, accumulate, r0 == 0 ? pf : NULL, tt->type_size, tt->blck_size);
    if (t < n_tok)
        fused_tile(prep, dec, 1, 8, rows, k0, len, (const float(*)[G])rest, X + t * ldx, X + t * ldx,
                   Y + t * ldy, Y + t * ldy, nr, accumulate, pf, tt->type_size, tt->blck_size);
}

T256 static void dot_fused_avx2(uint32_t type, const uint8_t *const *rows, int64_t k0, int len,
                                const float *X, int64_t ldx, int n_tok, float *Y, int64_t ldy, int nr,
                                bool accumulate, const uint8_t *const *pf) {
    switch (type) {
#define CASE(T, P, D) case T: fused_with(P, D, type, rows, k0, len, X, ldx, n_tok, Y, ldy, nr, accumulate, pf); break;
    DECODERS(CASE)
#undef CASE
    default: IA_ASSERT(!"dot_fused: type without a decoder");
    }
}

const ia_mm_kernel ia_mm_kernel_avx2 = {"avx2", dequant_avx2, dot_avx2, dot_fused_avx2, dequant_rows_avx2, dot_rows_avx2};

#endif /* __x86_64__ */
