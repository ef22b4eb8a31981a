/* matmul_avx512.c — AVX-512 matmul kernel: SIMD decoding of weight rows, the FMA dot of IA_MM_ROWS
 * weight rows against the activation rows, and the fused decode+FMA path for one or two rows
 * (compiled for x86-64 only, chosen at run time). */
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

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define INLINE __attribute__((always_inline)) inline

/* Elements decoded per call of a decoder: 4 vectors of 16. */
#define G 64

/* Block scales through F16C: one instruction instead of the bit-twiddling conversion, and the
 * same value for every non-NaN half. */
T512 static INLINE float h2f(uint16_t h) { return _cvtsh_ss(h); }

/* ---- decoders: elements [k, k + 64) of a row (k a multiple of 64) into v[0..3], with the float
 * operations of quant.c in the same order, so the values equal ia_dequantize_row's bit for bit ---- */

T512 static INLINE __m512 cvt_u8(__m128i v) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v)); }
T512 static INLINE __m512 cvt_i8(__m128i v) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v)); }
T512 static INLINE __m128i load16(const void *p) { return _mm_loadu_si128((const __m128i *)p); }

T512 static INLINE void dec_f32(const uint8_t *row, int64_t k, const float *aux, __m512 *v) {
    (void)aux;
    const float *f = (const float *)row + k;
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) v[j] = _mm512_loadu_ps(f + 16 * j);
}

T512 static INLINE void dec_f16(const uint8_t *row, int64_t k, const float *aux, __m512 *v) {
    (void)aux;
    const uint16_t *h = (const uint16_t *)row + k;
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) v[j] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + 16 * j)));
}

T512 static INLINE void dec_bf16(const uint8_t *row, int64_t k, const float *aux, __m512 *v) {
    (void)aux;
    const uint16_t *h = (const uint16_t *)row + k;
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        const __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(h + 16 * j)));
        v[j] = _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
    }
}

T512 static INLINE void dec_q8_0(const uint8_t *row, int64_t k, const float *aux, __m512 *v) {
    (void)aux;
    const ia_block_q8_0 *b = (const ia_block_q8_0 *)row + k / IA_QK8_0;
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++) {
        const __m512 d = _mm512_set1_ps(h2f(b[i].d));
        v[2 * i] = _mm512_mul_ps(cvt_i8(load16(b[i].qs)), d);
        v[2 * i + 1] = _mm512_mul_ps(cvt_i8(load16(b[i].qs + 16)), d);
    }
}

T512 static INLINE void dec_q4_0(const uint8_t *row, int64_t k, const float *aux, __m512 *v) {
    (void)aux;
    const ia_block_q4_0 *b = (const ia_block_q4_0 *)row + k / IA_QK4_0;
    const __m128i m4 = _mm_set1_epi8(0x0F), m8 = _mm_set1_epi8(8);
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++) {
        const __m512 d = _mm512_set1_ps(h2f(b[i].d));
        const __m128i q = load16(b[i].qs);
        /* low nibbles are the first 16 values, high nibbles the next 16 */
        v[2 * i] = _mm512_mul_ps(cvt_i8(_mm_sub_epi8(_mm_and_si128(q, m4), m8)), d);
        v[2 * i + 1] = _mm512_mul_ps(cvt_i8(_mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), m4), m8)), d);
    }
}

/* K-quant scales: once per 256-value block and row, prep_* turns the packed scales into floats in
 * aux[16] (as vectors: scalar int->float conversions merge into a register GCC may take from a live
 * accumulator, and byte fiddling per 64 values cost more than the FMAs); the decoders broadcast
 * them from there. Values are the products quant.c forms: d*sc and dmin*m, or d*scale. */

/* aux[0..8) = d*sc[j], aux[8..16) = dmin*m[j] (get_scale_min_k4 for all j at once, on packed bytes:
 * j >= 4 take their low 4 bits from bytes 8..11 and top 2 bits from bits 6-7 of bytes 0..7). */
T512 static INLINE void prep_q4_K(const uint8_t *row, int64_t k, float *aux) {
    const ia_block_q4_K *b = (const ia_block_q4_K *)row + k / IA_QK_K;
    uint32_t a, m, c, dd;
    memcpy(&a, b->scales, 4);
    memcpy(&m, b->scales + 4, 4);
    memcpy(&c, b->scales + 8, 4);
    memcpy(&dd, &b->d, 4); /* d, dmin */
    const uint32_t sc_lo = a & 0x3F3F3F3Fu, m_lo = m & 0x3F3F3F3Fu;
    const uint32_t sc_hi = (c & 0x0F0F0F0Fu) | ((a >> 2) & 0x30303030u);
    const uint32_t m_hi = ((c >> 4) & 0x0F0F0F0Fu) | ((m >> 2) & 0x30303030u);
    const __m512 q = cvt_u8(_mm_setr_epi32((int)sc_lo, (int)sc_hi, (int)m_lo, (int)m_hi));
    const __m128 f = _mm_cvtph_ps(_mm_cvtsi32_si128((int)dd)); /* {d, dmin, 0, 0} */
    const __m512 mul = _mm512_insertf32x8(_mm512_broadcastss_ps(f), _mm256_permutexvar_ps(_mm256_set1_epi32(1), _mm256_castps128_ps256(f)), 1);
    _mm512_storeu_ps(aux, _mm512_mul_ps(mul, q));
}

/* 64 values of a Q4_K block: the low nibbles of 32 qs bytes (sub-block 2c), then their high nibbles
 * (sub-block 2c+1), each y = (d*sc)*q - dmin*m. */
T512 static INLINE void dec_q4_K(const uint8_t *row, int64_t k, const float *aux, __m512 *v) {
    const ia_block_q4_K *b = (const ia_block_q4_K *)row + k / IA_QK_K;
    const int c = (int)((uint64_t)k % IA_QK_K) / 64;
    const __m512 d1 = _mm512_set1_ps(aux[2 * c]), mm1 = _mm512_set1_ps(aux[8 + 2 * c]);
    const __m512 d2 = _mm512_set1_ps(aux[2 * c + 1]), mm2 = _mm512_set1_ps(aux[9 + 2 * c]);
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const uint8_t *q = b->qs + 32 * c;
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
        const __m128i x = load16(q + 16 * h);
        v[h] = _mm512_sub_ps(_mm512_mul_ps(d1, cvt_u8(_mm_and_si128(x, m4))), mm1);
        v[2 + h] = _mm512_sub_ps(_mm512_mul_ps(d2, cvt_u8(_mm_and_si128(_mm_srli_epi16(x, 4), m4))), mm2);
    }
}

/* aux[i] = d*scales[i] */
T512 static INLINE void prep_q6_K(const uint8_t *row, int64_t k, float *aux) {
    const ia_block_q6_K *b = (const ia_block_q6_K *)row + k / IA_QK_K;
    const __m512 sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load16(b->scales)));
    _mm512_storeu_ps(aux, _mm512_mul_ps(_mm512_set1_ps(h2f(b->d)), sc));
}

/* 64 values of a Q6_K block: in half hf, quarter 0 holds q1 (l < 32) then q2, quarter 1 q3 then
 * q4; values l < 16 and l >= 16 use consecutive scales; y = (d*scale)*(q - 32). */
T512 static INLINE void dec_q6_K(const uint8_t *row, int64_t k, const float *aux, __m512 *v) {
    const ia_block_q6_K *b = (const ia_block_q6_K *)row + k / IA_QK_K;
    const int hf = (int)((uint64_t)k % IA_QK_K) / 128, quarter = (int)((uint64_t)k % 128) / 64;
    const uint8_t *ql = b->ql + 64 * hf, *qh = b->qh + 32 * hf;
    const float *ds = aux + 8 * hf + 4 * quarter;
    const __m128i m4 = _mm_set1_epi8(0x0F), m3 = _mm_set1_epi8(3), m30 = _mm_set1_epi8(0x30);
    const __m128i m32 = _mm_set1_epi8(32);
#pragma GCC unroll 2
    for (int l = 0; l < 2; l++) {
        const __m128i a = load16(ql + 16 * l), c = load16(ql + 32 + 16 * l), h = load16(qh + 16 * l);
        __m128i qa, qb;
        /* 16-bit shifts are safe: every shifted byte is masked to bits that stay inside it */
        if (quarter == 0) {
            qa = _mm_or_si128(_mm_and_si128(a, m4), _mm_slli_epi16(_mm_and_si128(h, m3), 4));
            qb = _mm_or_si128(_mm_and_si128(c, m4), _mm_and_si128(_mm_slli_epi16(h, 2), m30));
        } else {
            qa = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(a, 4), m4), _mm_and_si128(h, m30));
            qb = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(c, 4), m4), _mm_and_si128(_mm_srli_epi16(h, 2), m30));
        }
        v[l] = _mm512_mul_ps(_mm512_set1_ps(ds[l]), cvt_i8(_mm_sub_epi8(qa, m32)));
        v[2 + l] = _mm512_mul_ps(_mm512_set1_ps(ds[2 + l]), cvt_i8(_mm_sub_epi8(qb, m32)));
    }
}

typedef void (*prep_fn)(const uint8_t *row, int64_t k, float *aux);
typedef void (*dec_fn)(const uint8_t *row, int64_t k, const float *aux, __m512 *v);

/* Whole groups through the decoder, the remainder (< 64: half types with odd lengths, or one
 * 32-block of Q8_0/Q4_0) through the reference; the fused path splits rows the same way. */
T512 static INLINE void dequant_with(prep_fn prep, dec_fn dec, uint32_t type, const uint8_t *row, int64_t k0,
                                     int len, float *out) {
    float aux[16] __attribute__((aligned(64)));
    const int ng = len / G;
    for (int g = 0; g < ng; g++) {
        const int64_t k = k0 + (int64_t)G * g;
        if (prep && k % IA_QK_K == 0) prep(row, k, aux);
        __m512 v[4];
        dec(row, k, aux, v);
        /* four explicit stores: as a loop, GCC turned them into a memcpy from a stack copy */
        _mm512_storeu_ps(out + G * g, v[0]);
        _mm512_storeu_ps(out + G * g + 16, v[1]);
        _mm512_storeu_ps(out + G * g + 32, v[2]);
        _mm512_storeu_ps(out + G * g + 48, v[3]);
    }
    if (len > G * ng) ia_mm_kernel_scalar.dequant(type, row, k0 + (int64_t)G * ng, len - G * ng, out + G * ng);
}

/* decoder pairs per type (prep is NULL where a block carries a single scale) */
#define DECODERS(X)                                                                                \
    X(IA_TYPE_F32, NULL, dec_f32)                                                                  \
    X(IA_TYPE_F16, NULL, dec_f16)                                                                  \
    X(IA_TYPE_BF16, NULL, dec_bf16)                                                                \
    X(IA_TYPE_Q8_0, NULL, dec_q8_0)                                                                \
    X(IA_TYPE_Q4_0, NULL, dec_q4_0)                                                                \
    X(IA_TYPE_Q4_K, prep_q4_K, dec_q4_K)                                                           \
    X(IA_TYPE_Q6_K, prep_q6_K, dec_q6_K)

/* All IA_MM_ROWS rows of a chunk, group by group across the rows: their misses overlap (one row at
 * a time, each row's few cache lines and its page walk were waited for in turn). */
T512 static INLINE void dequant_rows_with(prep_fn prep, dec_fn dec, uint32_t type, const uint8_t *const *rows,
                                          int64_t k0, int len, float (*out)[IA_MM_CHUNK]) {
    enum { R = IA_MM_ROWS };
    float aux[R][16] __attribute__((aligned(64)));
    const int ng = len / G;
    for (int g = 0; g < ng; g++) {
        const int64_t k = k0 + (int64_t)G * g;
        if (prep && k % IA_QK_K == 0)
            for (int r = 0; r < R; r++) prep(rows[r], k, aux[r]);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            __m512 v[4];
            dec(rows[r], k, aux[r], v);
            _mm512_storeu_ps(out[r] + G * g, v[0]);
            _mm512_storeu_ps(out[r] + G * g + 16, v[1]);
            _mm512_storeu_ps(out[r] + G * g + 32, v[2]);
            _mm512_storeu_ps(out[r] + G * g + 48, v[3]);
        }
    }
    if (len > G * ng)
        for (int r = 0; r < R; r++)
            ia_mm_kernel_scalar.dequant(type, rows[r], k0 + (int64_t)G * ng, len - G * ng, out[r] + G * ng);
}

T512 static void dequant_rows_avx512(uint32_t type, const uint8_t *const *rows, int64_t k0, int len,
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

T512 static void dequant_avx512(uint32_t type, const void *row, int64_t k0, int len, float *out) {
    switch (type) {
#define CASE(T, P, D) case T: dequant_with(P, D, type, row, k0, len, out); break;
    DECODERS(CASE)
#undef CASE
    default: ia_mm_kernel_scalar.dequant(type, row, k0, len, out); break; /* F32 */
    }
}

/* ---- dot ---- */

T512 static INLINE float hsum512(__m512 v) {
    const __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

T512 static INLINE void store_sum(float *y, __m512 acc, bool accumulate) {
    const float s = hsum512(acc);
    *y = accumulate ? *y + s : s;
}

/* One stage of the transpose-and-add networks below: two shuffles of x and y, added. */
#define NET_F32X4(x, y, lo, hi) _mm512_add_ps(_mm512_shuffle_f32x4(x, y, lo), _mm512_shuffle_f32x4(x, y, hi))
#define NET_PS(x, y, lo, hi) _mm512_add_ps(_mm512_shuffle_ps(x, y, lo), _mm512_shuffle_ps(x, y, hi))

/* The 16 sums of a0[0..7] and a1[0..7] at once: a transpose-and-add network (4 stages of shuffles and
 * adds for all 16 instead of 4 per accumulator: a fifth of the prefill matmul time went to hsum512).
 * Each sum is added in exactly hsum512's tree, ((v[l] + v[l+8]) + (v[l+4] + v[l+12])) then +2, +1,
 * so results are bit-identical to store_sum. The network leaves the sum of its input k in lane
 * 4 (k % 4) + k / 4; inputs are ordered so lane i holds accumulator i (a0 rows, then a1 rows). */
T512 static INLINE void store_sums16(float *y0, float *y1, const __m512 *a0, const __m512 *a1, int nr, bool accumulate) {
    __m512 v[16];
#pragma GCC unroll 16
    for (int k = 0; k < 16; k++) {
        const int i = 4 * (k % 4) + k / 4;
        v[k] = i < 8 ? a0[i] : a1[i - 8];
    }
    __m512 a[8], b[4], c[2];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) a[i] = NET_F32X4(v[2 * i], v[2 * i + 1], 0x44, 0xEE);
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) b[i] = NET_F32X4(a[2 * i], a[2 * i + 1], 0x88, 0xDD);
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++) c[i] = NET_PS(b[2 * i], b[2 * i + 1], 0x44, 0xEE);
    const __m512 s = NET_PS(c[0], c[1], 0x88, 0xDD);
    const __mmask8 m = (__mmask8)((1u << nr) - 1u);
    __m256 s0 = _mm512_castps512_ps256(s), s1 = _mm512_extractf32x8_ps(s, 1);
    if (accumulate) {
        s0 = _mm256_add_ps(_mm256_maskz_loadu_ps(m, y0), s0);
        s1 = _mm256_add_ps(_mm256_maskz_loadu_ps(m, y1), s1);
    }
    _mm256_mask_storeu_ps(y0, m, s0);
    _mm256_mask_storeu_ps(y1, m, s1);
}

/* store_sums16's network for the 8 sums of a[0..7] alone (half its shuffles): after the same four
 * stages, lane 4j holds the sum of a[j] and lane 4j + 1 that of a[j + 4]; one permute puts them in order. */
T512 static INLINE void store_sums8(float *y, const __m512 *a, int nr, bool accumulate) {
    __m512 p[4], b[2];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) p[i] = NET_F32X4(a[2 * i], a[2 * i + 1], 0x44, 0xEE);
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++) b[i] = NET_F32X4(p[2 * i], p[2 * i + 1], 0x88, 0xDD);
    const __m512 c = NET_PS(b[0], b[1], 0x44, 0xEE);
    const __m512 d = NET_PS(c, c, 0x88, 0xDD);
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
    const __mmask8 m = (__mmask8)((1u << nr) - 1u);
    __m256 s = _mm512_castps512_ps256(_mm512_permutexvar_ps(order, d));
    if (accumulate) s = _mm256_add_ps(_mm256_maskz_loadu_ps(m, y), s);
    _mm256_mask_storeu_ps(y, m, s);
}

/* NT activation rows (1..3) against the IA_MM_ROWS weight rows: acc[t][r] gets the FMAs in k order,
 * the masked tail last, whatever NT is. */
T512 static INLINE void dot_tile(const int NT, const float *const *w, int nv, __mmask16 tail, const float *x0,
                                 int64_t ldx, __m512 (*acc)[IA_MM_ROWS]) {
    enum { R = IA_MM_ROWS };
#pragma GCC unroll 3
    for (int t = 0; t < NT; t++)
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) acc[t][r] = _mm512_setzero_ps();
    for (int k = 0; k < nv; k += 16) {
        __m512 v[3];
#pragma GCC unroll 3
        for (int t = 0; t < NT; t++) v[t] = _mm512_loadu_ps(x0 + t * ldx + k);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            __m512 wv = _mm512_loadu_ps(w[r] + k);
            __asm__("" : "+v"(wv)); /* one load per weight vector: GCC would fold it into every FMA */
#pragma GCC unroll 3
            for (int t = 0; t < NT; t++) acc[t][r] = _mm512_fmadd_ps(wv, v[t], acc[t][r]);
        }
    }
    if (tail) {
        __m512 v[3];
#pragma GCC unroll 3
        for (int t = 0; t < NT; t++) v[t] = _mm512_maskz_loadu_ps(tail, x0 + t * ldx + nv);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const __m512 wv = _mm512_maskz_loadu_ps(tail, w[r] + nv);
#pragma GCC unroll 3
            for (int t = 0; t < NT; t++) acc[t][r] = _mm512_fmadd_ps(wv, v[t], acc[t][r]);
        }
    }
}

/* One accumulator of 16 lanes per (t, r): lane l sums elements k = l mod 16 in increasing k; the
 * last partial vector is a masked load, so the sequence of operations for a (t, r) is fixed by len
 * alone. Three activation rows share each weight load when n_tok allows; that only interleaves
 * independent accumulators and does not change any of them. */
T512 static void dot_avx512(const float *const *w, int len, const float *X, int64_t ldx, int n_tok,
                            float *Y, int64_t ldy, int nr, bool accumulate) {
    enum { R = IA_MM_ROWS };
    const int nv = len & ~15;
    const __mmask16 tail = (__mmask16)((1u << (len - nv)) - 1u);
    __m512 acc[3][R];
    int t = 0;
    for (; t + 3 <= n_tok; t += 3) {
        dot_tile(3, w, nv, tail, X + t * ldx, ldx, acc);
        store_sums16(Y + t * ldy, Y + (t + 1) * ldy, acc[0], acc[1], nr, accumulate);
        store_sums8(Y + (t + 2) * ldy, acc[2], nr, accumulate);
    }
    if (t + 2 <= n_tok) {
        dot_tile(2, w, nv, tail, X + t * ldx, ldx, acc);
        store_sums16(Y + t * ldy, Y + (t + 1) * ldy, acc[0], acc[1], nr, accumulate);
        t += 2;
    }
    if (t < n_tok) {
        dot_tile(1, w, nv, tail, X + t * ldx, ldx, acc);
        store_sums8(Y + t * ldy, acc[0], nr, accumulate);
    }
}

/* ---- fused decode + dot for one or two activation rows ---- */

/* NT (1 or 2) activation rows against IA_MM_ROWS weight rows over one chunk. Each accumulator gets
 * exactly the FMAs dot_avx512 would give it (same values, same k order, same masked tail), so the
 * result does not depend on which path ran. */
T512 static INLINE void fused_tile(prep_fn prep, dec_fn dec, const int NT, const uint8_t *const *rows, int64_t k0,
                                   int len, const float (*rest)[G], const float *x0, const float *x1,
                                   float *y0, float *y1, int nr, bool accumulate, const uint8_t *const *pf,
                                   size_t ts, int64_t bs) {
    enum { R = IA_MM_ROWS };
    const int ng = len / G, nrest = len - G * ng, nv = nrest & ~15;
    const __mmask16 tail = (__mmask16)((1u << (nrest - nv)) - 1u);
    __m512 a0[R], a1[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) a0[r] = a1[r] = _mm512_setzero_ps();
    float aux[R][16] __attribute__((aligned(64)));
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
            for (int r = 0; r < R; r++) prep(rows[r], k, aux[r]);
        /* activations are loaded next to each FMA (an array of them here made GCC emit memcpy) */
        const float *xg0 = x0 + G * g, *xg1 = x1 + G * g;
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            __m512 v[4];
            dec(rows[r], k, aux[r], v);
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                a0[r] = _mm512_fmadd_ps(v[j], _mm512_loadu_ps(xg0 + 16 * j), a0[r]);
                if (NT == 2) a1[r] = _mm512_fmadd_ps(v[j], _mm512_loadu_ps(xg1 + 16 * j), a1[r]);
            }
        }
    }
    if (nrest) { /* the remainder was decoded by the reference into rest[r] */
        const float *xr0 = x0 + G * ng, *xr1 = x1 + G * ng;
        for (int k = 0; k < nv; k += 16) {
            const __m512 u0 = _mm512_loadu_ps(xr0 + k), u1 = NT == 2 ? _mm512_loadu_ps(xr1 + k) : u0;
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) {
                const __m512 wv = _mm512_loadu_ps(rest[r] + k);
                a0[r] = _mm512_fmadd_ps(wv, u0, a0[r]);
                if (NT == 2) a1[r] = _mm512_fmadd_ps(wv, u1, a1[r]);
            }
        }
        if (tail) {
            const __m512 u0 = _mm512_maskz_loadu_ps(tail, xr0 + nv);
            const __m512 u1 = NT == 2 ? _mm512_maskz_loadu_ps(tail, xr1 + nv) : u0;
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) {
                const __m512 wv = _mm512_maskz_loadu_ps(tail, rest[r] + nv);
                a0[r] = _mm512_fmadd_ps(wv, u0, a0[r]);
                if (NT == 2) a1[r] = _mm512_fmadd_ps(wv, u1, a1[r]);
            }
        }
    }
    for (int r = 0; r < nr; r++) {
        store_sum(y0 + r, a0[r], accumulate);
        if (NT == 2) store_sum(y1 + r, a1[r], accumulate);
    }
}

T512 static INLINE void fused_with(prep_fn prep, dec_fn dec, uint32_t type, const uint8_t *const *rows, int64_t k0,
                                   int len, const float *X, int64_t ldx, int n_tok, float *Y,
                                   int64_t ldy, int nr, bool accumulate, const uint8_t *const *pf) {
    const ia_type_traits *tt = ia_type_traits_get(type);
    float rest[IA_MM_ROWS][G] __attribute__((aligned(64)));
    const int ng = len / G;
    if (len > G * ng)
        for (int r = 0; r < IA_MM_ROWS; r++)
            ia_mm_kernel_scalar.dequant(type, rows[r], k0 + (int64_t)G * ng, len - G * ng, rest[r]);
    int t = 0;
    for (; t + 2 <= n_tok; t += 2)
        fused_tile(prep, dec, 2, rows, k0, len, (const float(*)[G])rest, X + t * ldx, X + (t + 1) * ldx,
                   Y + t * ldy, Y + (t + 1) * ldy, nr, accumulate, pf, tt->type_size, tt->blck_size);
    if (t < n_tok)
        fused_tile(prep, dec, 1, rows, k0, len, (const float(*)[G])rest, X + t * ldx, X + t * ldx, Y + t * ldy,
                   Y + t * ldy, nr, accumulate, pf, tt->type_size, tt->blck_size);
}

T512 static void dot_fused_avx512(uint32_t type, const uint8_t *const *rows, int64_t k0, int len,
                                  const float *X, int64_t ldx, int n_tok, float *Y, int64_t ldy, int nr,
                                  bool accumulate, const uint8_t *const *pf) {
    switch (type) {
#define CASE(T, P, D) case T: fused_with(P, D, type, rows, k0, len, X, ldx, n_tok, Y, ldy, nr, accumulate, pf); break;
    DECODERS(CASE)
#undef CASE
    default: IA_ASSERT(!"dot_fused: type without a decoder");
    }
}

/* 16 weights from element k of a row (all 16, or the first `m` lanes, the rest zero) as f32. */
T512 static INLINE __m512 load_w16(uint32_t type, const uint8_t *row, int k, __mmask16 m) {
    if (type == IA_TYPE_F32) return _mm512_maskz_loadu_ps(m, (const float *)row + k);
    const __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)row + k);
    if (type == IA_TYPE_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); /* BF16 */
}

/* Each (t, r) gets dot_avx512's operations: per chunk one accumulator, FMAs in k order, the masked
 * tail last, hsum512, then Y = s or Y + s (F16 and BF16 widen exactly, as their decoders do). */
T512 static INLINE void dot_rows_with(const uint32_t type, const uint8_t *W, size_t rs, int n_in, int o0, int o1,
                                      const float *X, int64_t ldx, int n_tok, float *Y, int64_t ldy) {
    const size_t es = type == IA_TYPE_F32 ? 4 : 2; /* bytes per element */
    for (int o = o0; o < o1; o++) {
        const uint8_t *w = W + (size_t)o * rs;
        for (int k0 = 0; k0 < n_in; k0 += IA_MM_CHUNK) {
            const int len = n_in - k0 < IA_MM_CHUNK ? n_in - k0 : IA_MM_CHUNK, nv = len & ~15;
            const __mmask16 tail = (__mmask16)((1u << (len - nv)) - 1u);
            const float *x0 = X + k0, *x1 = X + ldx + k0;
            __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
            for (int k = 0; k < nv; k += 16) {
                if (((size_t)k * es & 63) == 0) /* once per 64-byte line */
                    _mm_prefetch((const char *)w + (size_t)(k0 + k) * es + IA_ROWS_PF_DIST, _MM_HINT_T0);
                const __m512 wv = load_w16(type, w, k0 + k, 0xFFFF);
                a0 = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x0 + k), a0);
                if (n_tok == 2) a1 = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x1 + k), a1);
            }
            if (tail) {
                const __m512 wv = load_w16(type, w, k0 + nv, tail);
                a0 = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(tail, x0 + nv), a0);
                if (n_tok == 2) a1 = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(tail, x1 + nv), a1);
            }
            store_sum(Y + o, a0, k0 > 0);
            if (n_tok == 2) store_sum(Y + ldy + o, a1, k0 > 0);
        }
    }
}

T512 static void dot_rows_avx512(uint32_t type, const uint8_t *W, size_t rs, int n_in, int o0, int o1, const float *X,
                                 int64_t ldx, int n_tok, float *Y, int64_t ldy) {
    IA_MM_ROWS_SWITCH(dot_rows_with, type, W, rs, n_in, o0, o1, X, ldx, n_tok, Y, ldy);
}

const ia_mm_kernel ia_mm_kernel_avx512 = {"avx512", dequant_avx512, dot_avx512, dot_fused_avx512,
                                           dequant_rows_avx512, dot_rows_avx512};

#endif /* __x86_64__ */
