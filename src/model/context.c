/* context.c — the inference context (KV cache + workspace, all allocated at init) and the batched
 * forward pass: one pass over the weights for every token of a batch. */
#include "model.h"
#include "model/lora.h"
#include "tensor/pool.h"
#include "tensor/simd.h"

#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

struct ia_context {
    const ia_model *m;
    int n_slots;            /* S */
    int n_ctx;              /* C: positions per slot */
    int n_batch;            /* most tokens per decode */
    int kv_dim;             /* Hkv*D */
    void *k_cache;          /* [S][L][C][Hkv*D], f32 or (kv_f16) f16 */
    void *v_cache;          /* [S][L][C][Hkv*D] */
    bool kv_f16;
    float *rope_cos;        /* [C][n_rot/2] cos(theta(pos, i)), computed in double at init */
    float *rope_sin;        /* [C][n_rot/2] */
    float *x;               /* [n_batch][E] residual stream */
    float *xb;              /* [n_batch][max(E, H*D)] normalised input of a matmul / attention output */
    float *q;               /* [n_batch][max(H*D, E)] queries; then the attention projection */
    float *k;               /* [n_batch][Hkv*D] */
    float *v;               /* [n_batch][Hkv*D] */
    float *att;             /* [n_att_thr][C] per-thread attention scores (one (token, head) at a time) */
    int n_att_thr;          /* threads the score rows were sized for */
    float *hb;              /* [n_batch][F] gate, then silu(gate)*up */
    float *hb2;             /* [n_batch][F] up */
    float *xo;              /* [n_batch][E] final-normed rows whose logits are wanted */
    float *logits;          /* [n_batch][V] */
    int n_logits;           /* rows of logits valid after the last decode */
};

/* Bytes per element of the KV cache */
static size_t kv_es(bool kv_f16) { return kv_f16 ? sizeof(uint16_t) : sizeof(float); }

/* a*b, or SIZE_MAX on overflow (which the allocator then refuses: reported as out of memory). */
static size_t mul_sz(size_t a, size_t b) { return (a && b > SIZE_MAX / a) ? SIZE_MAX : a * b; }

static ia_context *context_init(const ia_model *m, int n_slots, int n_ctx, int n_batch, bool kv_f16, ia_error *err);

ia_context *ia_context_init(const ia_model *m, int n_slots, int n_ctx, int n_batch, ia_error *err) {
    return context_init(m, n_slots, n_ctx, n_batch, false, err);
}

ia_context *ia_context_init_f16kv(const ia_model *m, int n_slots, int n_ctx, int n_batch, ia_error *err) {
    return context_init(m, n_slots, n_ctx, n_batch, true, err);
}

static ia_context *context_init(const ia_model *m, int n_slots, int n_ctx, int n_batch, bool kv_f16, ia_error *err) {
    if (!m) { ia_error_set(err, IA_ERR_ARG, "ia_context_init: model is NULL"); return NULL; }
    if (n_slots < 1 || n_ctx < 1 || n_batch < 1) {
        ia_error_set(err, IA_ERR_ARG, "ia_context_init: n_slots %d, n_ctx %d, n_batch %d must all be >= 1",
                     n_slots, n_ctx, n_batch);
        return NULL;
    }
    const ia_hparams *hp = &m->hp;
    ia_context *c = ia_calloc(1, sizeof *c);
    if (!c) { ia_error_set(err, IA_ERR_NOMEM, "ia_context_init: out of memory"); return NULL; }
    c->m = m;
    c->n_slots = n_slots;
    c->n_ctx = n_ctx;
    c->n_batch = n_batch;
    c->kv_f16 = kv_f16;
    c->kv_dim = hp->n_head_kv * hp->head_dim;
    size_t E = (size_t)hp->n_embd, Dq = (size_t)hp->n_head * hp->head_dim, F = (size_t)hp->n_ff;
    size_t V = (size_t)hp->n_vocab, NB = (size_t)n_batch, half = (size_t)hp->n_rot / 2;
#ifdef _OPENMP
    /* Score rows for as many threads as can run; decode never uses more than this. */
    c->n_att_thr = omp_get_num_procs();
    if (omp_get_max_threads() > c->n_att_thr) c->n_att_thr = omp_get_max_threads();
    if (ia_get_threads() > c->n_att_thr) c->n_att_thr = ia_get_threads();
#else
    c->n_att_thr = 1;
#endif
    size_t kv = mul_sz(mul_sz(mul_sz((size_t)n_slots, (size_t)hp->n_layer), (size_t)n_ctx), (size_t)c->kv_dim);
    size_t kv_bytes = mul_sz(kv, kv_es(kv_f16));
    if (kv_bytes == SIZE_MAX) goto nomem;
    /* calloc: never-written positions read as zeros (deterministic), and untouched pages of a large
     * cache cost no memory until used. */
    c->k_cache = ia_calloc(kv, kv_es(kv_f16));
    c->v_cache = ia_calloc(kv, kv_es(kv_f16));
    c->rope_cos = ia_malloc(mul_sz(mul_sz((size_t)n_ctx, half ? half : 1), sizeof(float)));
    c->rope_sin = ia_malloc(mul_sz(mul_sz((size_t)n_ctx, half ? half : 1), sizeof(float)));
    c->x = ia_malloc(mul_sz(mul_sz(NB, E), sizeof(float)));
    c->xb = ia_malloc(mul_sz(mul_sz(NB, E > Dq ? E : Dq), sizeof(float)));
    c->q = ia_malloc(mul_sz(mul_sz(NB, E > Dq ? E : Dq), sizeof(float)));
    c->k = ia_malloc(mul_sz(mul_sz(NB, (size_t)c->kv_dim), sizeof(float)));
    c->v = ia_malloc(mul_sz(mul_sz(NB, (size_t)c->kv_dim), sizeof(float)));
    c->att = ia_malloc(mul_sz(mul_sz((size_t)c->n_att_thr, (size_t)n_ctx), sizeof(float)));
    c->hb = ia_malloc(mul_sz(mul_sz(NB, F), sizeof(float)));
    c->hb2 = ia_malloc(mul_sz(mul_sz(NB, F), sizeof(float)));
    c->xo = ia_malloc(mul_sz(mul_sz(NB, E), sizeof(float)));
    c->logits = ia_malloc(mul_sz(mul_sz(NB, V), sizeof(float)));
    if (!c->k_cache || !c->v_cache || !c->rope_cos || !c->rope_sin || !c->x || !c->xb || !c->q || !c->k ||
        !c->v || !c->att || !c->hb || !c->hb2 || !c->xo || !c->logits)
        goto nomem;

    /* RoPE table: theta_i(pos) = pos * freq_scale * base^(-2i/n_rot) / rope_freqs[i], in double so
     * large positions keep full f32 accuracy in cos/sin. */
    for (int p = 0; p < n_ctx; p++)
        for (size_t i = 0; i < half; i++) {
            double inv = pow((double)hp->rope_base, -2.0 * (double)i / (double)hp->n_rot);
            double th = (double)p * (double)hp->rope_freq_scale * inv;
            if (m->rope_freqs) th /= (double)m->rope_freqs[i];
            c->rope_cos[(size_t)p * half + i] = (float)cos(th);
            c->rope_sin[(size_t)p * half + i] = (float)sin(th);
        }
    return c;
nomem:
    ia_error_set(err, IA_ERR_NOMEM, "ia_context_init: out of memory for %d slots x %d positions x %d layers "
                 "(KV cache %.1f MiB) and a batch of %d", n_slots, n_ctx, hp->n_layer,
                 (double)kv * 2 * kv_es(kv_f16) / (1024.0 * 1024.0), n_batch);
    ia_context_free(c);
    return NULL;
}

void ia_context_free(ia_context *c) {
    if (!c) return;
    ia_free(c->k_cache);
    ia_free(c->v_cache);
    ia_free(c->rope_cos);
    ia_free(c->rope_sin);
    ia_free(c->x);
    ia_free(c->xb);
    ia_free(c->q);
    ia_free(c->k);
    ia_free(c->v);
    ia_free(c->att);
    ia_free(c->hb);
    ia_free(c->hb2);
    ia_free(c->xo);
    ia_free(c->logits);
    ia_free(c);
}

int ia_context_n_slots(const ia_context *c) { return c->n_slots; }
int ia_context_n_ctx(const ia_context *c) { return c->n_ctx; }
int ia_context_n_batch(const ia_context *c) { return c->n_batch; }
const float *ia_context_logits(const ia_context *c) { return c->logits; }
int ia_context_n_logits(const ia_context *c) { return c->n_logits; }

/* ---- blocks -------------------------------------------------------------------------------- */

/* y = x / sqrt(mean(x^2) + eps) * w, the sum in double (cheap, and closer to the reference). */
static void rmsnorm(float *y, const float *x, const float *w, int n, float eps) {
    const double ss = ia_sumsq8(x, n);
    float s = (float)(1.0 / sqrt(ss / n + (double)eps));
    for (int i = 0; i < n; i++) y[i] = x[i] * s * w[i];
}

/* Rotates each head of vec ([n_heads][D]) by the angles of one position. NORM pairs (2i, 2i+1);
 * NEOX pairs (i, i + n_rot/2); dims beyond n_rot pass through. */
static void rope(float *vec, int n_heads, int D, int n_rot, ia_rope_type type, const float *cs, const float *sn) {
    const int half = n_rot / 2;
    for (int h = 0; h < n_heads; h++) {
        float *v = vec + (size_t)h * D;
        if (type == IA_ROPE_NEOX) { /* one loop per layout, so each vectorises */
            for (int i = 0; i < half; i++) {
                const float x0 = v[i], x1 = v[i + half];
                v[i] = x0 * cs[i] - x1 * sn[i];
                v[i + half] = x0 * sn[i] + x1 * cs[i];
            }
        } else {
            for (int i = 0; i < half; i++) {
                const float x0 = v[2 * i], x1 = v[2 * i + 1];
                v[2 * i] = x0 * cs[i] - x1 * sn[i];
                v[2 * i + 1] = x0 * sn[i] + x1 * cs[i];
            }
        }
    }
}

static void add_bias(float *y, const float *b, int n_tok, int n) {
    if (!b) return;
    for (int t = 0; t < n_tok; t++)
        for (int i = 0; i < n; i++) y[(size_t)t * n + i] += b[i];
}

/* ---- per-token steps, run over the tokens of a batch on the tensor pool ---------------------- */

/* The element-wise and per-row steps between the matmuls: one thread alone would leave the other
 * cores idle for a quarter of a long prefill. Each row is computed exactly as it would be alone, so
 * splitting the rows changes no bits. */
typedef enum { ROWS_NORM, ROWS_QKV, ROWS_ATTN_OUT, ROWS_FFN_OUT } rows_step;

typedef struct rows_job {
    ia_context *c;
    const ia_batch *b;
    const ia_layer *ly;     /* the layer of the step (ROWS_FFN_OUT: the layer just finished) */
    const ia_layer *next;   /* ROWS_FFN_OUT: the next layer, whose attention norm follows, or NULL */
    const float *norm;      /* ROWS_NORM: the weights */
    int l, N;
    rows_step step;
} rows_job;

static void rows_range(const rows_job *j, int t0, int t1) {
    ia_context *c = j->c;
    const ia_hparams *hp = &c->m->hp;
    const int E = hp->n_embd, H = hp->n_head, Hkv = hp->n_head_kv, D = hp->head_dim;
    const int Dq = H * D, KV = c->kv_dim, L = hp->n_layer, C = c->n_ctx, half = hp->n_rot / 2;
    for (int t = t0; t < t1; t++) {
        float *x = c->x + (size_t)t * E, *xb = c->xb + (size_t)t * E;
        switch (j->step) {
        case ROWS_NORM: /* the first layer's attention norm */
            rmsnorm(xb, x, j->norm, E, hp->rms_eps);
            break;
        case ROWS_QKV: { /* biases, RoPE, and k, v into the cache */
            float *q = c->q + (size_t)t * Dq, *k = c->k + (size_t)t * KV, *v = c->v + (size_t)t * KV;
            add_bias(q, j->ly->bq, 1, Dq);
            add_bias(k, j->ly->bk, 1, KV);
            add_bias(v, j->ly->bv, 1, KV);
            const float *cs = c->rope_cos + (size_t)j->b->pos[t] * half, *sn = c->rope_sin + (size_t)j->b->pos[t] * half;
            rope(q, H, D, hp->n_rot, hp->rope_type, cs, sn);
            rope(k, Hkv, D, hp->n_rot, hp->rope_type, cs, sn);
            size_t off = (((size_t)j->b->slot[t] * L + j->l) * C + j->b->pos[t]) * KV;
            if (c->kv_f16) { /* rounded to nearest even, as ggml stores its f16 cache */
                ia_fp16_from_f32((uint16_t *)c->k_cache + off, k, (size_t)KV);
                ia_fp16_from_f32((uint16_t *)c->v_cache + off, v, (size_t)KV);
            } else {
                memcpy((float *)c->k_cache + off, k, (size_t)KV * sizeof(float));
                memcpy((float *)c->v_cache + off, v, (size_t)KV * sizeof(float));
            }
            break;
        }
        case ROWS_ATTN_OUT: { /* residual, then the feed-forward norm */
            const float *o = c->q + (size_t)t * E;
            for (int i = 0; i < E; i++) x[i] += o[i];
            rmsnorm(xb, x, j->ly->ffn_norm, E, hp->rms_eps);
            break;
        }
        case ROWS_FFN_OUT: /* silu(gate)*up was done before the down projection; residual, next norm */
            for (int i = 0; i < E; i++) x[i] += xb[i];
            if (j->next) rmsnorm(xb, x, j->next->attn_norm, E, hp->rms_eps);
            break;
        }
    }
}

typedef struct swiglu_job {
    float *g;
    const float *u;
    size_t n;
} swiglu_job;

static void swiglu_range(float *g, const float *u, size_t i0, size_t i1) { ia_swiglu(g + i0, g + i0, u + i0, i1 - i0); }

static void swiglu_worker(void *ctx, int tid, int nth) {
    swiglu_job *j = ctx;
    swiglu_range(j->g, j->u, j->n * (size_t)tid / (size_t)nth, j->n * (size_t)(tid + 1) / (size_t)nth);
}

static void rows_worker(void *ctx, int tid, int nth) {
    rows_job *j = ctx;
    rows_range(j, (int)((int64_t)j->N * tid / nth), (int)((int64_t)j->N * (tid + 1) / nth));
}

/* Threads for a per-token step of N rows: the pool's, when the batch is big enough to pay for the
 * hand-off (a decode step of a few tokens runs on the calling thread). */
static int rows_threads(int N) {
    const int nth = N >= 8 ? ia_pool_threads() : 1;
    return nth < N ? nth : N;
}

static void rows_run(rows_job *j) {
    const int nth = rows_threads(j->N);
    if (nth > 1) ia_pool_run(nth, rows_worker, j);
    else rows_range(j, 0, j->N);
}

/* ---- the forward pass -------------------------------------------------------------------- */

int ia_context_decode(ia_context *c, const ia_batch *b, ia_error *err) {
    if (!c || !b) return ia_error_set(err, IA_ERR_ARG, "ia_context_decode: NULL argument");
    const ia_model *m = c->m;
    const ia_hparams *hp = &m->hp;
    const int N = b->n_tokens;
    c->n_logits = 0;
    if (N < 1 || N > c->n_batch)
        return ia_error_set(err, IA_ERR_RANGE, "ia_context_decode: %d tokens in the batch, expected 1..%d (n_batch)",
                            N, c->n_batch);
    if (!b->token || !b->pos || !b->slot) return ia_error_set(err, IA_ERR_ARG, "ia_context_decode: NULL batch array");
    for (int t = 0; t < N; t++) {
        if (b->token[t] < 0 || b->token[t] >= hp->n_vocab)
            return ia_error_set(err, IA_ERR_RANGE, "ia_context_decode: token %d of the batch has id %d, outside "
                                "the vocabulary (0..%d)", t, b->token[t], hp->n_vocab - 1);
        if (b->pos[t] < 0 || b->pos[t] >= c->n_ctx)
            return ia_error_set(err, IA_ERR_RANGE, "ia_context_decode: token %d of the batch is at position %d, "
                                "outside the context (0..%d)", t, b->pos[t], c->n_ctx - 1);
        if (b->slot[t] < 0 || b->slot[t] >= c->n_slots)
            return ia_error_set(err, IA_ERR_RANGE, "ia_context_decode: token %d of the batch is in slot %d, but "
                                "the context has %d slots", t, b->slot[t], c->n_slots);
    }

    const int E = hp->n_embd, H = hp->n_head, Hkv = hp->n_head_kv, D = hp->head_dim, F = hp->n_ff;
    const int Dq = H * D, KV = c->kv_dim, L = hp->n_layer, C = c->n_ctx;
    const float scale = 1.0f / sqrtf((float)D);
    int nth = ia_get_threads();
    if (nth > c->n_att_thr) nth = c->n_att_thr;
    if (nth < 1) nth = 1;

    /* Embeddings: dequantise each token's row. */
    size_t emb_row = ia_type_row_size(m->tok_embd.type, E);
    for (int t = 0; t < N; t++)
        ia_dequantize_row(m->tok_embd.type, (const uint8_t *)m->tok_embd.data + (size_t)b->token[t] * emb_row,
                          c->x + (size_t)t * E, E);

    rows_job rj = {.c = c, .b = b, .N = N, .step = ROWS_NORM, .norm = L > 0 ? m->layers[0].attn_norm : NULL};
    if (L > 0) rows_run(&rj);
    for (int l = 0; l < L; l++) {
        const ia_layer *ly = &m->layers[l];
        rj.ly = ly;
        rj.l = l;
        /* xb holds this layer's normed input. All N rows at once: one pass over each weight matrix. */
        const ia_mm_task qkv[3] = {{c->q, ly->wq.data, ly->wq.type, Dq}, {c->k, ly->wk.data, ly->wk.type, KV},
                                   {c->v, ly->wv.data, ly->wv.type, KV}};
        ia_matmul_multi(c->xb, N, E, qkv, 3); /* one parallel step, xb quantised once (fast precision) */
        if (m->lora) { /* run-time LoRA: y += s·B·(A·x), per token */
            ia_lora_apply(m, l, IA_LORA_Q, c->q, c->xb, N);
            ia_lora_apply(m, l, IA_LORA_K, c->k, c->xb, N);
            ia_lora_apply(m, l, IA_LORA_V, c->v, c->xb, N);
        }
        rj.step = ROWS_QKV;
        rows_run(&rj);

        /* Causal attention (src/tensor/attention.c): each (token, head) is computed by one thread in
         * a fixed order, so it does not depend on the batch or the thread count. Output goes to xb. */
        float *out = c->xb;
        const ia_attn at = {.out = out, .q = c->q, .k_cache = c->k_cache, .v_cache = c->v_cache, .kv_f16 = c->kv_f16,
                            .pos = b->pos, .slot = b->slot, .n_tok = N, .n_head = H, .n_head_kv = Hkv, .head_dim = D, .n_layer = L,
                            .layer = l, .n_ctx = C, .scale = scale, .scratch = c->att, .n_scratch = nth};
        ia_attention(&at);
        /* q is free again: the projection goes there, then into the residual (and the next norm). */
        ia_matmul_infer(c->q, out, ly->wo.data, ly->wo.type, N, Dq, E);
        if (m->lora) ia_lora_apply(m, l, IA_LORA_O, c->q, out, N);
        rj.step = ROWS_ATTN_OUT;
        rows_run(&rj);

        /* SwiGLU feed-forward. */
        const ia_mm_task gu[2] = {{c->hb, ly->w_gate.data, ly->w_gate.type, F}, {c->hb2, ly->w_up.data, ly->w_up.type, F}};
        ia_matmul_multi(c->xb, N, E, gu, 2);
        if (m->lora) {
            ia_lora_apply(m, l, IA_LORA_GATE, c->hb, c->xb, N);
            ia_lora_apply(m, l, IA_LORA_UP, c->hb2, c->xb, N);
        }
        swiglu_job sj = {c->hb, c->hb2, (size_t)N * F};
        if (rows_threads(N) > 1) ia_pool_run(rows_threads(N), swiglu_worker, &sj);
        else swiglu_range(sj.g, sj.u, 0, sj.n);
        ia_matmul_infer(c->xb, c->hb, ly->w_down.data, ly->w_down.type, N, F, E);
        if (m->lora) ia_lora_apply(m, l, IA_LORA_DOWN, c->xb, c->hb, N);
        rj.step = ROWS_FFN_OUT;
        rj.next = l + 1 < L ? &m->layers[l + 1] : NULL;
        rows_run(&rj);
    }

    /* Final norm and logits, only for the rows asked for (by default the last token). */
    int n_out = 0;
    for (int t = 0; t < N; t++) {
        bool want = b->logits ? b->logits[t] : t == N - 1;
        if (!want) continue;
        rmsnorm(c->xo + (size_t)n_out * E, c->x + (size_t)t * E, m->output_norm, E, hp->rms_eps);
        n_out++;
    }
    if (n_out) ia_matmul_infer(c->logits, c->xo, m->output.data, m->output.type, n_out, E, hp->n_vocab);
    c->n_logits = n_out;
    return IA_OK;
}

/* ---- KV prefix copy (shared few-shot primers) ---------------------------------------------- */

/* K/V of a position depend only on the tokens up to it, so a prefix decoded once in one slot can be
 * reused by any slot whose sequence starts with the same tokens: copy it, then decode the rest. */
int ia_context_kv_copy(ia_context *c, int src, int dst, int n_pos, ia_error *err) {
    if (!c) return ia_error_set(err, IA_ERR_ARG, "ia_context_kv_copy: context is NULL");
    if (src < 0 || src >= c->n_slots || dst < 0 || dst >= c->n_slots || n_pos < 0 || n_pos > c->n_ctx)
        return ia_error_set(err, IA_ERR_RANGE, "ia_context_kv_copy: slots %d -> %d, %d positions (context has "
                            "%d slots of %d positions)", src, dst, n_pos, c->n_slots, c->n_ctx);
    if (src == dst || n_pos == 0) return IA_OK;
    const int L = c->m->hp.n_layer;
    const size_t row = (size_t)c->kv_dim, layer = (size_t)c->n_ctx * row, es = kv_es(c->kv_f16);
    const size_t bytes = (size_t)n_pos * row * es;
    for (int l = 0; l < L; l++) {
        size_t so = ((size_t)src * L + l) * layer, d = ((size_t)dst * L + l) * layer;
        memcpy((char *)c->k_cache + d * es, (const char *)c->k_cache + so * es, bytes);
        memcpy((char *)c->v_cache + d * es, (const char *)c->v_cache + so * es, bytes);
    }
    return IA_OK;
}
