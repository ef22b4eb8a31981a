/* attention_kern.h — the AVX-512 attention kernels for one head dimension, included by attention.c
 * once per instance with ATT_NAME(x) (a name suffix), ATT_NDMAX (vectors per head, the array size),
 * ATT_ND (the count: a constant for 64 and 128, so accumulators stay in registers; with a run-time
 * count GCC kept them on the stack, a store-forwarding chain per FMA) and ATT_UNROLL. */

/* sc[0..n) *= inv: the softmax weights, made once before the V pass (which then broadcasts each from
 * memory instead of multiplying per head and position). */
T512 static INLINE void ATT_NAME(normalise)(float *sc, int n, float inv) {
    const __m512 v = _mm512_set1_ps(inv);
    for (int p0 = 0; p0 < n; p0 += 16) {
        const __mmask16 m = (__mmask16)(n - p0 >= 16 ? 0xFFFFu : (1u << (n - p0)) - 1u);
        _mm512_mask_storeu_ps(sc + p0, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, sc + p0), v));
    }
}

/* o[h] = sum_p sc[h][p] v_p for NC heads (rows of sc C apart, outputs D apart; sc already normalised):
 * each V row is loaded once into registers for all NC heads. */
T512 static INLINE void ATT_NAME(av_chunk)(const float *V, int KV, int np, const float *sc, int C, float *out,
                                 int D, const int NC, const int ND) {
    __m512 o[4][ATT_NDMAX];
    ATT_UNROLL
    for (int h = 0; h < NC; h++)
        ATT_UNROLL
        for (int j = 0; j < ND; j++) o[h][j] = _mm512_setzero_ps();
    for (int p = 0; p < np; p++) {
        const float *vp = V + (size_t)p * KV;
        __m512 v[ATT_NDMAX];
        ATT_UNROLL
        for (int j = 0; j < ND; j++) v[j] = _mm512_loadu_ps(vp + 16 * j);
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
    const float *K = a->k_cache + base, *V = a->v_cache + base;
    const __m512i idx = _mm512_loadu_si512(g_hperm);
    const __m512 scale = _mm512_set1_ps(a->scale);
    __m512 mx[8];
    ATT_UNROLL
    for (int h = 0; h < nh; h++) mx[h] = _mm512_set1_ps(-INFINITY);
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
                const float *kp = K + (size_t)(p0 + (i < n ? i : n - 1)) * KV;
                __m512 s = _mm512_mul_ps(qv[0], _mm512_loadu_ps(kp));
                ATT_UNROLL
                for (int j = 1; j < nd; j++) s = _mm512_fmadd_ps(qv[j], _mm512_loadu_ps(kp + 16 * j), s);
                acc[i] = s;
            }
            const __m512 s = _mm512_mul_ps(_mm512_permutexvar_ps(idx, hsum16(acc)), scale);
            _mm512_mask_storeu_ps(sc + (size_t)h * C + p0, m, s);
            mx[h] = _mm512_mask_max_ps(mx[h], m, mx[h], s);
        }
    }
    ATT_UNROLL
    for (int h = 0; h < nh; h++) {
        float *sh = sc + (size_t)h * C;
        const __m512 vmax = _mm512_set1_ps(_mm512_reduce_max_ps(mx[h]));
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
        ATT_NAME(normalise)(sh, np, 1.0f / sum);
    }
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
