/* attention_kern.h — the AVX-512 attention kernels for one head dimension, included by attention.c
 * once per instance with ATT_NAME(x) (a name suffix), ATT_KV and ATT_LD16 (the cache's element type,
 * f32 or f16, and a load of 16 as f32), ATT_NDMAX (vectors per head, the array size),
 * ATT_ND (the count: a constant for 64 and 128, so accumulators stay in registers; with a run-time
 * count GCC kept them on the stack, a store-forwarding chain per FMA) and ATT_UNROLL. */

/* o[h] = sum_p sc[h][p] v_p for NC heads (rows of sc C apart, outputs D apart; sc already normalised):
 * each V row is loaded once into registers for all NC heads. */
T512 static INLINE void ATT_NAME(av_chunk)(const ATT_KV *V, int KV, int np, const float *sc, int C, float *out,
                                 int D, const int NC, const int ND) {
    __m512 o[4][ATT_NDMAX];
    ATT_UNROLL
    for (int h = 0; h < NC; h++)
        ATT_UNROLL
        for (int j = 0; j < ND; j++) o[h][j] = _mm512_setzero_ps();
    for (int p = 0; p < np; p++) {
        const ATT_KV *vp = V + (size_t)p * KV;
        __m512 v[ATT_NDMAX];
        ATT_UNROLL
        for (int j = 0; j < ND; j++) v[j] = ATT_LD16(vp + 16 * j);
        ATT_UNROLL
        for (int h = 0; h < NC; h++) {
            const __m512 w = _mm512_set1_ps(sc[(size_t)h * C + p]);
            ATT_UNROLL
            for (int j = 0; j < ND; j++) o[h][j] = _mm512_fmadd_ps(w, v[j], o[h][j]);
        }
    }
    ATT_UNROLL
    for (int h = 0; h < NC; h++)
        ATT_UNROLL
        for (int j = 0; j < ND; j++) _mm512_storeu_ps(out + (size_t)h * D + 16 * j, o[h][j]);
}

/* Query heads h0 .. h0 + nh - 1 of one token sharing a KV head (nh = 1: one head, the decode case):
 * per head the same operations whatever nh is (so the same bits), interleaved so each block of 16 K
 * rows and each V row is read from L2 once for the group instead of once per head. Scores for 16
 * positions at a time: each position's dot product accumulates 16 lanes over d, then hsum16. sc holds
 * nh rows of n_ctx scores. */
T512 static INLINE void ATT_NAME(attn_group)(const ia_attn *a, int t, int h0, int nh, float *sc, const int nd_) {
    const int nd = ATT_ND;
    (void)nd_;
    const int D = a->head_dim, KV = a->n_head_kv * D, group = a->n_head / a->n_head_kv, C = a->n_ctx;
    const int pos = a->pos[t], np = pos + 1;
    const size_t base = ((size_t)a->slot[t] * a->n_layer + a->layer) * C * (size_t)KV + (size_t)(h0 / group) * D;
    const ATT_KV *K = (const ATT_KV *)a->k_cache + base, *V = (const ATT_KV *)a->v_cache + base;
    const __m512i idx = _mm512_loadu_si512(g_hperm);
    const __m512 scale = _mm512_set1_ps(a->scale);
    for (int p0 = 0; p0 < np; p0 += 16) {
        const int n = np - p0 < 16 ? np - p0 : 16;
        const __mmask16 m = (__mmask16)((1u << n) - 1u);
        ATT_UNROLL
        for (int h = 0; h < nh; h++) {
            const float *qh = a->q + (size_t)t * a->n_head * D + (size_t)(h0 + h) * D;
            __m512 qv[ATT_NDMAX];
            ATT_UNROLL
            for (int j = 0; j < nd; j++) qv[j] = _mm512_loadu_ps(qh + 16 * j);
            __m512 acc[16];
            ATT_UNROLL
            for (int i = 0; i < 16; i++) {
                const ATT_KV *kp = K + (size_t)(p0 + (i < n ? i : n - 1)) * KV;
                __m512 s = _mm512_mul_ps(qv[0], ATT_LD16(kp));
                ATT_UNROLL
                for (int j = 1; j < nd; j++) s = _mm512_fmadd_ps(qv[j], ATT_LD16(kp + 16 * j), s);
                acc[i] = s;
            }
            const __m512 s = _mm512_mul_ps(_mm512_permutexvar_ps(idx, hsum16(acc)), scale);
            _mm512_mask_storeu_ps(sc + (size_t)h * C + p0, m, s);
        }
    }
    for (int h = 0; h < nh; h++) softmax_row(sc + (size_t)h * C, np);
    /* V in chunks of up to 4 heads (16 accumulators for D = 64) */
    for (int c0 = 0; c0 < nh; c0 += 4) {
        const int nc = nh - c0 < 4 ? nh - c0 : 4;
        const float *s0 = sc + (size_t)c0 * C;
        float *o0 = a->out + (size_t)t * a->n_head * D + (size_t)(h0 + c0) * D;
        switch (nc) {
        case 4: ATT_NAME(av_chunk)(V, KV, np, s0, C, o0, D, 4, nd); break;
        case 3: ATT_NAME(av_chunk)(V, KV, np, s0, C, o0, D, 3, nd); break;
        case 2: ATT_NAME(av_chunk)(V, KV, np, s0, C, o0, D, 2, nd); break;
        default: ATT_NAME(av_chunk)(V, KV, np, s0, C, o0, D, 1, nd); break;
        }
    }
}

#if ATT_NDMAX == 4
/* o[h] = sum_p s[h][p] v_p for NC heads of each of two tokens a and b (np_a and np_b positions): each V
 * row is loaded once for both while both need it. Every accumulator gets av_chunk's FMAs in p order. */
T512 static INLINE void ATT_NAME(av_pair)(const ATT_KV *V, int KV, int np_a, int np_b, const float *sa, const float *sb,
                                          int C, float *oa, float *ob, int D, const int NC) {
    __m512 acc_a[3][4], acc_b[3][4];
    ATT_UNROLL
    for (int h = 0; h < NC; h++)
        ATT_UNROLL
        for (int j = 0; j < 4; j++) acc_a[h][j] = acc_b[h][j] = _mm512_setzero_ps();
    const int n_both = np_a < np_b ? np_a : np_b;
    int p = 0;
    for (; p < n_both; p++) {
        const ATT_KV *vp = V + (size_t)p * KV;
        __m512 v[4];
        ATT_UNROLL
        for (int j = 0; j < 4; j++) v[j] = ATT_LD16(vp + 16 * j);
        ATT_UNROLL
        for (int h = 0; h < NC; h++) {
            const __m512 wa = _mm512_set1_ps(sa[(size_t)h * C + p]), wb = _mm512_set1_ps(sb[(size_t)h * C + p]);
            ATT_UNROLL
            for (int j = 0; j < 4; j++) {
                acc_a[h][j] = _mm512_fmadd_ps(wa, v[j], acc_a[h][j]);
                acc_b[h][j] = _mm512_fmadd_ps(wb, v[j], acc_b[h][j]);
            }
        }
    }
    for (int q = p; q < np_a; q++) /* token a alone (it has the later position) */
        ATT_UNROLL
        for (int h = 0; h < NC; h++) {
            const __m512 wa = _mm512_set1_ps(sa[(size_t)h * C + q]);
            ATT_UNROLL
            for (int j = 0; j < 4; j++) acc_a[h][j] = _mm512_fmadd_ps(wa, ATT_LD16(V + (size_t)q * KV + 16 * j), acc_a[h][j]);
        }
    for (int q = p; q < np_b; q++)
        ATT_UNROLL
        for (int h = 0; h < NC; h++) {
            const __m512 wb = _mm512_set1_ps(sb[(size_t)h * C + q]);
            ATT_UNROLL
            for (int j = 0; j < 4; j++) acc_b[h][j] = _mm512_fmadd_ps(wb, ATT_LD16(V + (size_t)q * KV + 16 * j), acc_b[h][j]);
        }
    ATT_UNROLL
    for (int h = 0; h < NC; h++)
        ATT_UNROLL
        for (int j = 0; j < 4; j++) {
            _mm512_storeu_ps(oa + (size_t)h * D + 16 * j, acc_a[h][j]);
            _mm512_storeu_ps(ob + (size_t)h * D + 16 * j, acc_b[h][j]);
        }
}

/* attn_group for two tokens a and b of one slot (head dim 64): per head, the scores of 8 positions
 * of both tokens are 16 dot products sharing each K row load and one hsum16 (decoding one token
 * loads every K row per score). Each (token, head) gets exactly attn_group's operations: the same
 * bits. sc holds 2 nh rows of n_ctx: token a's heads, then token b's. */
T512 static INLINE void ATT_NAME(attn_pair)(const ia_attn *a, int ta, int tb, int h0, int nh, float *sc) {
    const int D = a->head_dim, KV = a->n_head_kv * D, group = a->n_head / a->n_head_kv, C = a->n_ctx;
    const int np_a = a->pos[ta] + 1, np_b = a->pos[tb] + 1, np = np_a > np_b ? np_a : np_b;
    const size_t base = ((size_t)a->slot[ta] * a->n_layer + a->layer) * C * (size_t)KV + (size_t)(h0 / group) * D;
    const ATT_KV *K = (const ATT_KV *)a->k_cache + base, *V = (const ATT_KV *)a->v_cache + base;
    const __m512i idx = _mm512_loadu_si512(g_hperm);
    const __m512 scale = _mm512_set1_ps(a->scale);
    const float *qa = a->q + (size_t)ta * a->n_head * D + (size_t)h0 * D;
    const float *qb = a->q + (size_t)tb * a->n_head * D + (size_t)h0 * D;
    for (int p0 = 0; p0 < np; p0 += 8) {
        const int n = np - p0 < 8 ? np - p0 : 8;
        const int na = np_a - p0 < 0 ? 0 : np_a - p0 < 8 ? np_a - p0 : 8;
        const int nb = np_b - p0 < 0 ? 0 : np_b - p0 < 8 ? np_b - p0 : 8;
        for (int h = 0; h < nh; h++) {
            __m512 va[4], vb[4], acc[16];
            ATT_UNROLL
            for (int j = 0; j < 4; j++) {
                va[j] = _mm512_loadu_ps(qa + (size_t)h * D + 16 * j);
                vb[j] = _mm512_loadu_ps(qb + (size_t)h * D + 16 * j);
            }
            ATT_UNROLL
            for (int i = 0; i < 8; i++) {
                const ATT_KV *kp = K + (size_t)(p0 + (i < n ? i : n - 1)) * KV;
                __m512 k = ATT_LD16(kp);
                __m512 sa = _mm512_mul_ps(va[0], k), sb = _mm512_mul_ps(vb[0], k);
                ATT_UNROLL
                for (int j = 1; j < 4; j++) {
                    k = ATT_LD16(kp + 16 * j);
                    sa = _mm512_fmadd_ps(va[j], k, sa);
                    sb = _mm512_fmadd_ps(vb[j], k, sb);
                }
                acc[i] = sa;
                acc[8 + i] = sb;
            }
            const __m512 s = _mm512_mul_ps(_mm512_permutexvar_ps(idx, hsum16(acc)), scale);
            _mm256_mask_storeu_ps(sc + (size_t)h * C + p0, (__mmask8)((1u << na) - 1u), _mm512_castps512_ps256(s));
            _mm256_mask_storeu_ps(sc + (size_t)(nh + h) * C + p0, (__mmask8)((1u << nb) - 1u), _mm512_extractf32x8_ps(s, 1));
        }
    }
    for (int h = 0; h < nh; h++) {
        softmax_row(sc + (size_t)h * C, np_a);
        softmax_row(sc + (size_t)(nh + h) * C, np_b);
    }
    /* V in chunks of up to 3 heads per token (24 accumulators) */
    for (int c0 = 0; c0 < nh; c0 += 3) {
        const int nc = nh - c0 < 3 ? nh - c0 : 3;
        const float *sa = sc + (size_t)c0 * C, *sb = sc + (size_t)(nh + c0) * C;
        float *oa = a->out + (size_t)ta * a->n_head * D + (size_t)(h0 + c0) * D;
        float *ob = a->out + (size_t)tb * a->n_head * D + (size_t)(h0 + c0) * D;
        switch (nc) {
        case 3: ATT_NAME(av_pair)(V, KV, np_a, np_b, sa, sb, C, oa, ob, D, 3); break;
        case 2: ATT_NAME(av_pair)(V, KV, np_a, np_b, sa, sb, C, oa, ob, D, 2); break;
        default: ATT_NAME(av_pair)(V, KV, np_a, np_b, sa, sb, C, oa, ob, D, 1); break;
        }
    }
}
#endif
