/* attention.c — causal multi-head attention over the KV cache (GQA): the plain reference and the
 * AVX-512 and AVX2 kernels (scores 16 or 8 positions at a time, a vectorised exp, V accumulated in
 * registers), run on the tensor thread pool; and log-sum-exp over a row of logits (scoring). Each
 * (token, head) is computed whole by one thread in an order fixed by its position alone, so results
 * do not depend on the batch or the thread count. */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#include "kernels.h"
#include "pool.h"
#include "simd.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* ---- reference ---------------------------------------------------------------------------- */


/* Element i of a K or V cache, as f32 */
static inline float kv_get(const void *c, size_t i, bool f16) {
    return f16 ? ia_fp16_to_fp32(((const uint16_t *)c)[i]) : ((const float *)c)[i];
}

/* ia_dot8 of a and n cache elements from element i0 */
static float dot8_kv(const float *a, const void *c, size_t i0, int n, bool f16) {
    float acc[8] = {0};
    const int nv = n & ~7;
    for (int k = 0; k < nv; k += 8)
        for (int l = 0; l < 8; l++) acc[l] += a[k + l] * kv_get(c, i0 + (size_t)(k + l), f16);
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (int k = nv; k < n; k++) s += a[k] * kv_get(c, i0 + (size_t)k, f16);
    return s;
}

/* One (token t, head h): softmax(q·K^T * scale) · V over positions 0..pos[t] of the token's slot. */
static void attn_one_ref(const ia_attn *a, int t, int h, float *sc) {
    const int D = a->head_dim, KV = a->n_head_kv * D, group = a->n_head / a->n_head_kv;
    const float *qh = a->q + (size_t)t * a->n_head * D + (size_t)h * D;
    const int pos = a->pos[t];
    const size_t base = ((size_t)a->slot[t] * a->n_layer + a->layer) * a->n_ctx * (size_t)KV + (size_t)(h / group) * D;
    float mx = -INFINITY;
    for (int p = 0; p <= pos; p++) {
        float s = dot8_kv(qh, a->k_cache, base + (size_t)p * KV, D, a->kv_f16) * a->scale;
        sc[p] = s;
        if (s > mx) mx = s;
    }
    float sum = 0;
    for (int p = 0; p <= pos; p++) {
        sc[p] = expf(sc[p] - mx);
        sum += sc[p];
    }
    const float inv = 1.0f / sum;
    float *o = a->out + (size_t)t * a->n_head * D + (size_t)h * D;
    for (int d = 0; d < D; d++) o[d] = 0;
    for (int p = 0; p <= pos; p++) {
        const size_t vp = base + (size_t)p * KV;
        const float w = sc[p] * inv;
        for (int d = 0; d < D; d++) o[d] += w * kv_get(a->v_cache, vp + (size_t)d, a->kv_f16);
    }
}

typedef void (*attn_one_fn)(const ia_attn *a, int t, int h, float *sc);

typedef struct attn_job {
    const ia_attn *a;
    attn_one_fn one;
    _Atomic int next;
    int n_work;
} attn_job;

static void attn_worker(void *ctx, int tid, int nth) {
    attn_job *j = ctx;
    const ia_attn *a = j->a;
    float *sc = a->scratch + (size_t)tid * a->n_ctx;
    (void)nth;
    for (;;) {
        const int w = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (w >= j->n_work) break;
        j->one(a, w / a->n_head, w % a->n_head, sc);
    }
}

static void attn_run(const ia_attn *a, attn_one_fn one) {
    attn_job j = {.a = a, .one = one, .n_work = a->n_tok * a->n_head};
    atomic_init(&j.next, 0);
    int nth = ia_pool_threads();
    if (nth > a->n_scratch) nth = a->n_scratch;
    if (nth > j.n_work) nth = j.n_work;
    if (nth < 1) nth = 1;
    ia_pool_run(nth, attn_worker, &j);
}

void ia_attention_ref(const ia_attn *a) { attn_run(a, attn_one_ref); }

/* ---- AVX-512 ------------------------------------------------------------------------------- */

#if defined(__x86_64__)
#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define INLINE __attribute__((always_inline)) inline

/* exp(x) for x <= 0 (scores minus their maximum): ia_exp512, and exactly 0 below -87.3 (no denormals). */
T512 static INLINE __m512 exp512(__m512 x) {
    const __mmask16 under = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.33654f), _CMP_LT_OQ);
    return _mm512_mask_mov_ps(ia_exp512(x), under, _mm512_setzero_ps());
}

/* Sum of each of 16 vectors, result lane i = sum of v[i]'s lanes (a transpose-and-add network whose
 * shape is the same for every i). */
T512 static INLINE __m512 hsum16(__m512 *v) {
    /* stage 1: 8 vectors, each pairing v[2i] and v[2i+1]: lanes of halves added */
    __m512 a[8], b[4], c[2];
    for (int i = 0; i < 8; i++) {
        const __m512 x = v[2 * i], y = v[2 * i + 1];
        /* [x.lo256 | y.lo256] + [x.hi256 | y.hi256] */
        a[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x44), _mm512_shuffle_f32x4(x, y, 0xEE));
    }
    /* a[i] = [x 8 lanes | y 8 lanes] partial sums; stage 2: 128-bit halves of each 256 */
    for (int i = 0; i < 4; i++) {
        const __m512 x = a[2 * i], y = a[2 * i + 1];
        b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x88), _mm512_shuffle_f32x4(x, y, 0xDD));
    }
    /* b[i] lanes (128-bit units): [v4i | v4i+2 | v4i+1 | v4i+3] x 4 partials; stage 3: 64-bit pairs */
    for (int i = 0; i < 2; i++) {
        const __m512 x = b[2 * i], y = b[2 * i + 1];
        c[i] = _mm512_add_ps(_mm512_shuffle_ps(x, y, 0x44), _mm512_shuffle_ps(x, y, 0xEE));
    }
    /* stage 4: adjacent lanes */
    const __m512 x = c[0], y = c[1];
    const __m512 s = _mm512_add_ps(_mm512_shuffle_ps(x, y, 0x88), _mm512_shuffle_ps(x, y, 0xDD));
    return s; /* lane 4q + j holds the sum of v[q + 4j]; callers permute with g_hperm */
}

/* A row of n scores becomes softmax weights: exp(s - max) (ia_max16: exact whatever the
 * order), summed 16 lanes at a time then lane by lane, and each multiplied by 1/sum. */
T512 static INLINE void softmax_row(float *sh, int np) {
    const __m512 vmax = _mm512_set1_ps(ia_max16(sh, np));
    __m512 vsum = _mm512_setzero_ps();
    for (int p0 = 0; p0 < np; p0 += 16) {
        const int n = np - p0 < 16 ? np - p0 : 16;
        const __mmask16 m = (__mmask16)((1u << n) - 1u);
        const __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, sh + p0), vmax));
        _mm512_mask_storeu_ps(sh + p0, m, e);
        vsum = _mm512_add_ps(vsum, _mm512_maskz_mov_ps(m, e));
    }
    float lanes[16];
    _mm512_storeu_ps(lanes, vsum);
    float sum = 0;
    for (int l = 0; l < 16; l++) sum += lanes[l];
    const __m512 inv = _mm512_set1_ps(1.0f / sum);
    for (int p0 = 0; p0 < np; p0 += 16) {
        const __mmask16 m = (__mmask16)(np - p0 >= 16 ? 0xFFFFu : (1u << (np - p0)) - 1u);
        _mm512_mask_storeu_ps(sh + p0, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, sh + p0), inv));
    }
}

/* The permutation hsum16 leaves its sums in, found once by feeding it unit vectors. */
static int g_hperm[16];
static _Atomic int g_hperm_ready;

T512 static void hperm_init(void) {
    __m512 v[16];
    for (int i = 0; i < 16; i++) v[i] = _mm512_set1_ps((float)i / 16.0f); /* sum of lanes = i */
    float out[16];
    _mm512_storeu_ps(out, hsum16(v));
    for (int l = 0; l < 16; l++) g_hperm[(int)lrintf(out[l])] = l; /* sum i sits in lane g_hperm[i] */
    atomic_store(&g_hperm_ready, 1);
}

/* The kernels for an f32 cache and for an f16 one (attention_inst.h: head dims 64, 128 and other
 * multiples of 16 for each). */
#define ATT_KV float
#define ATT_LD16(p) _mm512_loadu_ps(p)
#define ATT_SFX(x, n) x##_##n
#include "attention_inst.h"
#undef ATT_KV
#undef ATT_LD16
#undef ATT_SFX
#define ATT_KV uint16_t
#define ATT_LD16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define ATT_SFX(x, n) x##_##n##h
#include "attention_inst.h"
#undef ATT_KV
#undef ATT_LD16
#undef ATT_SFX

/* Head dims 64 and 128 get their own instances, so the accumulators live in registers (with a run-time
 * count GCC kept them on the stack: a store-forwarding chain per FMA). Same operations either way. */

T512 static void attn_group_avx512(const ia_attn *a, int t, int h0, int nh, float *sc) {
    const int nd = a->head_dim / 16;
    if (a->kv_f16) {
        if (nd == 4) attn_group_4h(a, t, h0, nh, sc, 4);
        else if (nd == 8) attn_group_8h(a, t, h0, nh, sc, 8);
        else attn_group_xh(a, t, h0, nh, sc, nd);
    } else {
        if (nd == 4) attn_group_4(a, t, h0, nh, sc, 4);
        else if (nd == 8) attn_group_8(a, t, h0, nh, sc, 8);
        else attn_group_x(a, t, h0, nh, sc, nd);
    }
}

/* Two tokens of one slot, head dim 64 (attention_kern.h). */
T512 static void attn_pair_avx512(const ia_attn *a, int ta, int tb, int h0, int nh, float *sc) {
    if (a->kv_f16) attn_pair_4h(a, ta, tb, h0, nh, sc);
    else attn_pair_4(a, ta, tb, h0, nh, sc);
}

/* One (token, head): the group kernel for a single head (one score row in sc). */
T512 static void attn_one_avx512(const ia_attn *a, int t, int h, float *sc) { attn_group_avx512(a, t, h, 1, sc); }

/* 16 lanes of exp(x - mx) summed in double (two halves), over n values; lanes are added in a fixed
 * order. */
T512 static double lse_sum_avx512(const float *x, int n, float mx) {
    const __m512 vm = _mm512_set1_ps(mx);
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm));
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(e, 1)));
    }
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        const __m512 e = _mm512_maskz_mov_ps(m, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vm)));
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(e, 1)));
    }
    double l[16];
    _mm512_storeu_pd(l, s0);
    _mm512_storeu_pd(l + 8, s1);
    double s = 0;
    for (int k = 0; k < 16; k++) s += l[k];
    return s;
}

/* log-sum-exp: the maximum, then the sum (a row with no finite maximum: the reference's answer) */
T512 static double lse_avx512(const float *x, int n) {
    const float mx = ia_max16(x, n);
    return isfinite(mx) ? (double)mx + log(lse_sum_avx512(x, n, mx)) : ia_logsumexp_ref(x, n);
}

/* ---- AVX2 (head dims a multiple of 8) ----------------------------------------------------- */

#define T256 __attribute__((target("avx2,fma,f16c")))

/* 8 elements of a K or V cache from element i, as f32 (f16 widened exactly) */
T256 static INLINE __m256 kv_ld8(const void *c, size_t i, const bool f16) {
    return f16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)c + i))) : _mm256_loadu_ps((const float *)c + i);
}

/* exp(x) for x <= 0 (scores minus their maximum): ia_exp256, and exactly 0 below -87.3 (as exp512). */
T256 static INLINE __m256 exp256(__m256 x) {
    const __m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(-87.33654f), _CMP_LT_OQ);
    return _mm256_andnot_ps(under, ia_exp256(x));
}

/* Lane i = the sum of v[i]'s lanes, each added in the same tree ((0+1)+(2+3))+((4+5)+(6+7)). */
T256 static INLINE __m256 hsum8x8(const __m256 *v) {
    const __m256 t0 = _mm256_hadd_ps(v[0], v[1]), t1 = _mm256_hadd_ps(v[2], v[3]);
    const __m256 t2 = _mm256_hadd_ps(v[4], v[5]), t3 = _mm256_hadd_ps(v[6], v[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* softmax_row for AVX2: exp(s - max) (max: 8 lanes, exact whatever the order) summed 8 lanes at a
 * time then lane by lane, times 1/sum. */
T256 static INLINE void softmax_row_avx2(float *sh, int np) {
    const __m256 vmax = _mm256_set1_ps(ia_max8(sh, np));
    __m256 vsum = _mm256_setzero_ps();
    for (int p0 = 0; p0 < np; p0 += 8) {
        const __m256i m = ia_mask8(np - p0);
        const __m256 e = _mm256_and_ps(exp256(_mm256_sub_ps(_mm256_maskload_ps(sh + p0, m), vmax)), _mm256_castsi256_ps(m));
        _mm256_maskstore_ps(sh + p0, m, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, vsum);
    float sum = 0;
    for (int l = 0; l < 8; l++) sum += lanes[l];
    const __m256 inv = _mm256_set1_ps(1.0f / sum);
    for (int p0 = 0; p0 < np; p0 += 8) {
        const __m256i m = ia_mask8(np - p0);
        _mm256_maskstore_ps(sh + p0, m, _mm256_mul_ps(_mm256_maskload_ps(sh + p0, m), inv));
    }
}

/* o[h][0 .. 8W) = sum_p sc[h][p] V[p][0 .. 8W) for NC heads (rows of sc C apart, outputs D apart):
 * NC x W accumulators (at most 3 x 4, with the V vector and the NC weights all 16 registers), each
 * V vector loaded once for the NC heads. Every accumulator gets its FMAs in p order from zero, so a
 * head's bits do not depend on NC. With one head, 8 accumulators, each FMA waited on the last. */
T256 static INLINE void av_heads_avx2(const void *V, size_t v0, int KV, int np, const float *sc, int C, float *out,
                                      int D, const int NC, const int W, const bool f16) {
    __m256 o[3][4];
#pragma GCC unroll 3
    for (int h = 0; h < NC; h++)
#pragma GCC unroll 4
        for (int j = 0; j < W; j++) o[h][j] = _mm256_setzero_ps();
    for (int p = 0; p < np; p++) {
        const size_t vp = v0 + (size_t)p * KV;
        __m256 w[3];
#pragma GCC unroll 3
        for (int h = 0; h < NC; h++) w[h] = _mm256_broadcast_ss(sc + (size_t)h * C + p);
#pragma GCC unroll 4
        for (int j = 0; j < W; j++) {
            const __m256 v = kv_ld8(V, vp + 8 * j, f16);
#pragma GCC unroll 3
            for (int h = 0; h < NC; h++) o[h][j] = _mm256_fmadd_ps(w[h], v, o[h][j]);
        }
    }
#pragma GCC unroll 3
    for (int h = 0; h < NC; h++)
#pragma GCC unroll 4
        for (int j = 0; j < W; j++) _mm256_storeu_ps(out + (size_t)h * D + 8 * j, o[h][j]);
}

/* Query heads h0 .. h0 + nh - 1 of token t sharing a KV head, as attn_group: per head the same
 * operations whatever nh is. Scores 8 positions at a time (each position's dot accumulates 8 lanes over
 * d, then hsum8x8), with the 8 K rows kept in L1 for all nh heads. */
T256 static INLINE void attn_group_avx2_kv(const ia_attn *a, int t, int h0, int nh, float *sc, const bool f16) {
    const int D = a->head_dim, nd = D / 8, KV = a->n_head_kv * D, group = a->n_head / a->n_head_kv, C = a->n_ctx;
    const int np = a->pos[t] + 1;
    const size_t base = ((size_t)a->slot[t] * a->n_layer + a->layer) * C * (size_t)KV + (size_t)(h0 / group) * D;
    const void *K = a->k_cache, *V = a->v_cache; /* rows from element base */
    const __m256 scale = _mm256_set1_ps(a->scale);
    for (int p0 = 0; p0 < np; p0 += 8) {
        const int n = np - p0 < 8 ? np - p0 : 8;
        size_t kp[8];
        for (int i = 0; i < 8; i++) kp[i] = base + (size_t)(p0 + (i < n ? i : n - 1)) * KV;
        for (int h = 0; h < nh; h++) {
            const float *qh = a->q + (size_t)t * a->n_head * D + (size_t)(h0 + h) * D;
            __m256 acc[8];
            const __m256 q0 = _mm256_loadu_ps(qh);
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) acc[i] = _mm256_mul_ps(q0, kv_ld8(K, kp[i], f16));
            for (int j = 1; j < nd; j++) {
                const __m256 qv = _mm256_loadu_ps(qh + 8 * j);
#pragma GCC unroll 8
                for (int i = 0; i < 8; i++) acc[i] = _mm256_fmadd_ps(qv, kv_ld8(K, kp[i] + 8 * j, f16), acc[i]);
            }
            _mm256_maskstore_ps(sc + (size_t)h * C + p0, ia_mask8(n), _mm256_mul_ps(hsum8x8(acc), scale));
        }
    }
    for (int h = 0; h < nh; h++) softmax_row_avx2(sc + (size_t)h * C, np);
    /* V: up to 3 heads at a time, in slices of 4 vectors (32 dims) */
    for (int c0 = 0; c0 < nh; c0 += 3) {
        const int nc = nh - c0 < 3 ? nh - c0 : 3;
        const float *s0 = sc + (size_t)c0 * C;
        float *o0 = a->out + (size_t)t * a->n_head * D + (size_t)(h0 + c0) * D;
        for (int j0 = 0; j0 < nd; j0 += 4) {
            const int w = nd - j0 < 4 ? nd - j0 : 4;
#define AV(NC, W) av_heads_avx2(V, base + 8 * j0, KV, np, s0, C, o0 + 8 * j0, D, NC, W, f16)
#define AV_W(NC) (w == 4 ? AV(NC, 4) : w == 3 ? AV(NC, 3) : w == 2 ? AV(NC, 2) : AV(NC, 1))
            if (nc == 3) AV_W(3);
            else if (nc == 2) AV_W(2);
            else AV_W(1);
#undef AV_W
#undef AV
        }
    }
}

T256 static void attn_group_avx2(const ia_attn *a, int t, int h0, int nh, float *sc) {
    if (a->kv_f16) attn_group_avx2_kv(a, t, h0, nh, sc, true);
    else attn_group_avx2_kv(a, t, h0, nh, sc, false);
}

T256 static void attn_one_avx2(const ia_attn *a, int t, int h, float *sc) { attn_group_avx2(a, t, h, 1, sc); }

/* lse_sum_avx512 for AVX2: 8 lanes of exp(x - mx) summed in double (two halves), then lane by lane. */
T256 static double lse_sum_avx2(const float *x, int n, float mx) {
    const __m256 vm = _mm256_set1_ps(mx);
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    for (int i = 0; i < n; i += 8) {
        const __m256i m = ia_mask8(n - i);
        const __m256 e = _mm256_and_ps(exp256(_mm256_sub_ps(_mm256_maskload_ps(x + i, m), vm)), _mm256_castsi256_ps(m));
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    double l[8];
    _mm256_storeu_pd(l, s0);
    _mm256_storeu_pd(l + 4, s1);
    double s = 0;
    for (int k = 0; k < 8; k++) s += l[k];
    return s;
}

T256 static double lse_avx2(const float *x, int n) {
    const float mx = ia_max8(x, n);
    return isfinite(mx) ? (double)mx + log(lse_sum_avx2(x, n, mx)) : ia_logsumexp_ref(x, n);
}

#endif

double ia_logsumexp_ref(const float *x, int n) {
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)expf(x[i] - mx);
    return (double)mx + log(s);
}

double ia_logsumexp(const float *x, int n) {
#if defined(__x86_64__)
    if (n > 0 && strcmp(ia_cpu_kernel_name(), "avx512") == 0) return lse_avx512(x, n);
    if (n > 0 && strcmp(ia_cpu_kernel_name(), "avx2") == 0) return lse_avx2(x, n);
#endif
    return ia_logsumexp_ref(x, n);
}

#if defined(__x86_64__)
/* Per-thread score rows for the grouped kernel: grown on first need (no allocation once warm). */
static pthread_key_t sc_key;
static pthread_once_t sc_once = PTHREAD_ONCE_INIT;
typedef struct sc_buf { float *p; size_t cap; } sc_buf;
static void sc_free(void *v) {
    sc_buf *b = v;
    if (b) ia_free(b->p);
    ia_free(b);
}
static void sc_key_init(void) { pthread_key_create(&sc_key, sc_free); }
static float *sc_get(size_t n) {
    pthread_once(&sc_once, sc_key_init);
    sc_buf *b = pthread_getspecific(sc_key);
    if (!b) {
        if (!(b = ia_calloc(1, sizeof *b))) return NULL;
        pthread_setspecific(sc_key, b);
    }
    if (b->cap < n) {
        float *p = ia_malloc(n * sizeof(float));
        if (!p) return NULL;
        ia_free(b->p);
        b->p = p;
        b->cap = n;
    }
    return b->p;
}

typedef void (*attn_group_fn)(const ia_attn *a, int t, int h0, int nh, float *sc);
typedef void (*attn_pair_fn)(const ia_attn *a, int ta, int tb, int h0, int nh, float *sc);

typedef struct grp_job {
    const ia_attn *a;
    attn_group_fn group_fn;
    attn_pair_fn pair_fn;   /* NULL: no pair kernel */
    _Atomic int next;
    int n_work, group, per; /* items: (token or token pair, KV head, head chunk of `per`) */
    bool pairs;             /* items take tokens 2i and 2i + 1 (pair_fn, head dim 64) */
} grp_job;

static void grp_worker(void *ctx, int tid, int nth) {
    grp_job *j = ctx;
    const ia_attn *a = j->a;
    (void)nth;
    const int chunks = (j->group + j->per - 1) / j->per;
    float *sc = sc_get((size_t)j->per * a->n_ctx * (j->pairs ? 2 : 1));
    for (int w; (w = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed)) < j->n_work;) {
        const int i = w / (a->n_head_kv * chunks), r = w % (a->n_head_kv * chunks);
        const int h0 = (r / chunks) * j->group + (r % chunks) * j->per;
        const int nh = j->group - (r % chunks) * j->per < j->per ? j->group - (r % chunks) * j->per : j->per;
        const int t0 = j->pairs ? 2 * i : i, t1 = !j->pairs ? i + 1 : 2 * i + 2 < a->n_tok ? 2 * i + 2 : a->n_tok;
        if (!sc) { /* out of memory for the group's scores: head by head in the caller's row (same bits) */
            for (int t = t0; t < t1; t++)
                for (int h = h0; h < h0 + nh; h++) j->group_fn(a, t, h, 1, a->scratch + (size_t)tid * a->n_ctx);
        } else if (t1 - t0 == 2 && a->slot[t0] == a->slot[t0 + 1]) {
            j->pair_fn(a, t0, t0 + 1, h0, nh, sc);
        } else {
            for (int t = t0; t < t1; t++) j->group_fn(a, t, h0, nh, sc);
        }
    }
}

/* A family's kernels over the pool: one token, or heads without grouping, a head per item (keeps both
 * threads busy); else per (token or pair of tokens, KV head) item, the heads of the group together. */
static void attn_run_grouped(const ia_attn *a, attn_one_fn one, attn_group_fn group_fn, attn_pair_fn pair_fn) {
    const int group = a->n_head / a->n_head_kv;
    if (a->n_tok == 1 || group == 1) {
        attn_run(a, one);
        return;
    }
    /* pairs from 8 tokens on: below, halving the items would leave a thread idle (same bits either way) */
    grp_job j = {.a = a, .group_fn = group_fn, .pair_fn = pair_fn, .group = group, .per = group < 8 ? group : 8,
                 .pairs = pair_fn && a->head_dim == 64 && a->n_tok >= 8};
    j.n_work = (j.pairs ? (a->n_tok + 1) / 2 : a->n_tok) * a->n_head_kv * ((group + j.per - 1) / j.per);
    atomic_init(&j.next, 0);
    int nth = ia_pool_threads();
    if (nth > j.n_work) nth = j.n_work;
    if (nth > a->n_scratch) nth = a->n_scratch; /* the fallback uses a scratch row per thread */
    if (nth < 1) nth = 1;
    ia_pool_run(nth, grp_worker, &j);
}
#endif

void ia_attention(const ia_attn *a) {
#if defined(__x86_64__)
    const char *fam = ia_cpu_kernel_name();
    if (a->head_dim % 16 == 0 && a->head_dim <= 256 && strcmp(fam, "avx512") == 0) {
        if (!atomic_load(&g_hperm_ready)) hperm_init();
        attn_run_grouped(a, attn_one_avx512, attn_group_avx512, attn_pair_avx512);
        return;
    }
    if (a->head_dim % 8 == 0 && strcmp(fam, "avx2") == 0) {
        attn_run_grouped(a, attn_one_avx2, attn_group_avx2, NULL);
        return;
    }
#endif
    ia_attention_ref(a);
}
