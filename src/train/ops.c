/* ops.c — training forward/backward pairs (embedding, RMSNorm, matmul, LoRA, RoPE, attention,
 * SwiGLU, cross-entropy, residual), f32, deterministic whatever the thread count.
 *
 * Parallel loops run on the tensor thread pool (tr_par_for / tr_par_run, kern.h), the same threads
 * ia_matmul uses, so one set of threads shares the cores. The products run through tr_gemm (a
 * register-tiled AVX-512 kernel with a plain C reference, kern.c): every output element is one
 * chain of multiply-adds in a fixed order, computed whole by one thread. */
#include "train/ops.h"

#include <math.h>
#include <stdatomic.h>

#include "train/kern.h"
#include "tensor/simd.h"

/* Threads pay off only past a few hundred thousand operations (a pool hand-off costs microseconds,
 * far more on a loaded machine); the split never changes a result. */
#define PAR_WORK(ops) ((ops) > 3e5)


/* ---- C (+)= A·B over the pool: tiles of rows (or of columns) per thread ---- */

typedef struct {
    int M, N, K;
    const float *A;
    ptrdiff_t ars, acs;
    const float *B;
    ptrdiff_t ldb;
    float *C;
    ptrdiff_t ldc;
    bool acc, split_n;
} gemm_job;

#define GEMM_ROWS 6   /* row tile of the kernel (a split unit that keeps tiles whole) */
#define GEMM_COLS 64  /* column tile */

static void gemm_body(void *p, int i0, int i1) {
    const gemm_job *g = p;
    if (g->split_n) {
        int n0 = i0 * GEMM_COLS, n1 = i1 * GEMM_COLS < g->N ? i1 * GEMM_COLS : g->N;
        tr_gemm(g->M, n1 - n0, g->K, g->A, g->ars, g->acs, g->B + n0, g->ldb, g->C + n0, g->ldc, g->acc);
    } else {
        int m0 = i0 * GEMM_ROWS, m1 = i1 * GEMM_ROWS < g->M ? i1 * GEMM_ROWS : g->M;
        tr_gemm(m1 - m0, g->N, g->K, g->A + m0 * g->ars, g->ars, g->acs, g->B, g->ldb, g->C + m0 * g->ldc, g->ldc,
                g->acc);
    }
}

static void gemm_par(int M, int N, int K, const float *A, ptrdiff_t ars, ptrdiff_t acs, const float *B, ptrdiff_t ldb,
                     float *C, ptrdiff_t ldc, bool acc) {
    gemm_job g = {M, N, K, A, ars, acs, B, ldb, C, ldc, acc, false};
    const int mt = (M + GEMM_ROWS - 1) / GEMM_ROWS, nt = (N + GEMM_COLS - 1) / GEMM_COLS;
    const int nth = tr_threads();
    /* rows unless there are too few row tiles to go round */
    g.split_n = mt < 2 * nth && nt > mt;
    tr_par_for(g.split_n ? nt : mt, PAR_WORK((double)M * N * K), gemm_body, &g);
}

/* ==== embedding =============================================================================== */

void tr_embedding_forward(float *x, const int32_t *tok, const ia_weight *emb, int N, int E) {
    size_t rs = ia_type_row_size(emb->type, E);
    for (int t = 0; t < N; t++)
        ia_dequantize_row(emb->type, (const uint8_t *)emb->data + (size_t)tok[t] * rs, x + (size_t)t * E, E);
}

typedef struct { float *demb; const float *dx; const int32_t *tok; int N, E; } emb_job;
#define EMB_CB 64

static void emb_bwd_body(void *p, int b0, int b1) {
    const emb_job *j = p;
    for (int b = b0; b < b1; b++) {
        int i0 = b * EMB_CB, i1 = i0 + EMB_CB < j->E ? i0 + EMB_CB : j->E;
        for (int t = 0; t < j->N; t++) {
            float *d = j->demb + (size_t)j->tok[t] * j->E;
            const float *g = j->dx + (size_t)t * j->E;
            for (int i = i0; i < i1; i++) d[i] += g[i];
        }
    }
}

void tr_embedding_backward(float *demb, const float *dx, const int32_t *tok, int N, int E) {
    /* column blocks: each element of demb has one writer, rows added in token order */
    emb_job j = {demb, dx, tok, N, E};
    tr_par_for((E + EMB_CB - 1) / EMB_CB, PAR_WORK((double)N * E), emb_bwd_body, &j);
}

/* ==== RMSNorm ================================================================================= */

typedef struct {
    float *y, *rstd, *dx, *dw;
    const float *x, *w, *dy, *rs;
    int N, E;
    float eps;
} rms_job;

static void rms_fwd_body(void *p, int t0, int t1) {
    const rms_job *j = p;
    const int E = j->E;
    for (int t = t0; t < t1; t++) {
        const float *xt = j->x + (size_t)t * E;
        float *yt = j->y + (size_t)t * E;
        const double ss = ia_sumsq8(xt, E);
        float s = (float)(1.0 / sqrt(ss / E + (double)j->eps));
        j->rstd[t] = s;
        for (int i = 0; i < E; i++) yt[i] = xt[i] * s * j->w[i];
    }
}

void tr_rmsnorm_forward(float *y, float *rstd, const float *x, const float *w, int N, int E, float eps) {
    rms_job j = {.y = y, .rstd = rstd, .x = x, .w = w, .N = N, .E = E, .eps = eps};
    tr_par_for(N, PAR_WORK((double)N * E), rms_fwd_body, &j);
}

static void rms_bwd_dx_body(void *p, int t0, int t1) {
    /* y_i = x_i r w_i, r = (mean(x^2)+eps)^-1/2, dr/dx_j = -r^3 x_j / E:
     * dx_j = r w_j dy_j - (r^3 / E) x_j sum_i dy_i w_i x_i */
    const rms_job *j = p;
    const int E = j->E;
    for (int t = t0; t < t1; t++) {
        const float *xt = j->x + (size_t)t * E, *gt = j->dy + (size_t)t * E;
        float *dxt = j->dx + (size_t)t * E;
        float r = j->rs[t];
        double dot = 0;
        for (int i = 0; i < E; i++) dot += (double)gt[i] * j->w[i] * xt[i];
        float c = (float)((double)r * r * r * dot / E);
        for (int i = 0; i < E; i++) dxt[i] += r * j->w[i] * gt[i] - c * xt[i];
    }
}

#define RMS_CB 64
static void rms_bwd_dw_body(void *p, int b0, int b1) {
    const rms_job *j = p;
    const int E = j->E;
    for (int b = b0; b < b1; b++) {
        int i0 = b * RMS_CB, i1 = i0 + RMS_CB < E ? i0 + RMS_CB : E;
        for (int t = 0; t < j->N; t++) {
            const float *xt = j->x + (size_t)t * E, *gt = j->dy + (size_t)t * E;
            float r = j->rs[t];
            for (int i = i0; i < i1; i++) j->dw[i] += gt[i] * xt[i] * r;
        }
    }
}

void tr_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const float *w,
                         const float *rstd, int N, int E) {
    rms_job j = {.dx = dx, .dw = dw, .x = x, .w = w, .dy = dy, .rs = rstd, .N = N, .E = E};
    tr_par_for(N, PAR_WORK((double)N * E), rms_bwd_dx_body, &j);
    if (dw) tr_par_for((E + RMS_CB - 1) / RMS_CB, PAR_WORK((double)N * E), rms_bwd_dw_body, &j);
}

/* ==== matmul ================================================================================== */

/* Weight rows of a quantised base dequantised together by the backward (a panel of one thread's
 * columns, which stays in cache while every dY row passes over it). */
#define TR_MMB_ROWS 128

/* per thread: a panel of weight rows dequantised (TR_MMB_ROWS) and, for bf16, its pairs (half as many) */
size_t tr_matmul_ws_floats(int n_in) { return (size_t)tr_max_threads() * (TR_MMB_ROWS * 3 / 2) * (size_t)n_in; }

typedef struct {
    float *Y;
    const float *X;
    const ia_weight *W;
    int N, nunit;
    float *ws;
    const uint16_t *a16; /* X in bf16 (row stride a16_ld), or NULL: f32 products */
    int a16_ld;
} mmf_job;

#define TR_MMF_COLS 64 /* output columns (weight rows) per transposed panel */
#define TR_MMF_UNIT 16 /* the thread split's unit of output columns */

/* Y[t][o0:o1] = X[t]·W[o]ᵀ for one thread's output columns: a panel of up to 64 weight rows
 * (dequantised if need be) transposed to [in][64], then tr_gemm: each Y element one chain over i. */
static void mm_fwd_run(void *p, int tid, int nth) {
    const mmf_job *j = p;
    const ia_weight *W = j->W;
    const int in = W->n_in, out = W->n_out;
    int u0 = (int)((int64_t)j->nunit * tid / nth), u1 = (int)((int64_t)j->nunit * (tid + 1) / nth);
    int c0 = u0 * TR_MMF_UNIT, c1 = u1 * TR_MMF_UNIT < out ? u1 * TR_MMF_UNIT : out;
    float *P = j->ws + (size_t)tid * (TR_MMB_ROWS * 3 / 2) * in, *Dq = P + (size_t)TR_MMF_COLS * in;
    const size_t rs = ia_type_row_size(W->type, in);
    for (int o0 = c0; o0 < c1; o0 += TR_MMF_COLS) {
        const int nr = c1 - o0 < TR_MMF_COLS ? c1 - o0 : TR_MMF_COLS;
        const float *rows = (const float *)W->data + (size_t)o0 * in;
        if (W->type != IA_TYPE_F32) {
            for (int r = 0; r < nr; r++)
                ia_dequantize_row_fast(W->type, (const uint8_t *)W->data + (size_t)(o0 + r) * rs, Dq + (size_t)r * in, in);
            rows = Dq;
        }
        if (j->a16) {
            tr_pack_bf16_t((uint32_t *)P, TR_MMF_COLS, rows, in, nr, in);
            tr_gemm_bf16(j->N, nr, in, j->a16, j->a16_ld, (const uint32_t *)P, TR_MMF_COLS, j->Y + o0, out, false);
        } else {
            tr_pack_t(P, TR_MMF_COLS, rows, in, nr, in);
            tr_gemm(j->N, nr, in, j->X, in, 1, P, TR_MMF_COLS, j->Y + o0, out, false);
        }
    }
}

size_t tr_matmul_a16_count(int rows, int K) { return (size_t)rows * (size_t)((K + 1) & ~1); }

typedef struct {
    uint16_t *dst;
    const float *src;
    int K, ld;
} a16_job;

static void a16_body(void *p, int r0, int r1) {
    const a16_job *j = p;
    tr_bf16_rows(j->dst + (size_t)r0 * j->ld, j->ld, j->src + (size_t)r0 * j->K, j->K, r1 - r0, j->K);
}

/* rows x K f32 to bf16 rows of an even stride (returned), in parallel */
static int to_a16(uint16_t *dst, const float *src, int rows, int K) {
    a16_job j = {dst, src, K, (K + 1) & ~1};
    tr_par_for(rows, PAR_WORK((double)rows * K * 8), a16_body, &j);
    return j.ld;
}

void tr_matmul_forward(float *Y, const float *X, const ia_weight *W, const float *b, int N, float *ws, uint16_t *a16) {
    if (!ws) {
        ia_matmul(Y, X, W->data, W->type, N, W->n_in, W->n_out);
    } else {
        mmf_job j = {Y, X, W, N, (W->n_out + TR_MMF_UNIT - 1) / TR_MMF_UNIT, ws, a16, 0};
        if (a16) j.a16_ld = to_a16(a16, X, N, W->n_in);
        int nth = tr_threads();
        if (nth > j.nunit) nth = j.nunit;
        if (!PAR_WORK((double)N * W->n_in * W->n_out)) nth = 1;
        tr_par_run(nth, mm_fwd_run, &j);
    }
    if (!b) return;
    for (int t = 0; t < N; t++)
        for (int o = 0; o < W->n_out; o++) Y[(size_t)t * W->n_out + o] += b[o];
}

typedef struct {
    float *dX;
    const float *dY;
    const ia_weight *W;
    int N, nblk, bs, unit;
    float *ws;
    const uint16_t *a16; /* dY in bf16 (row stride a16_ld), or NULL: f32 products */
    int a16_ld;
} mmdx_job;

/* dX[t][i0:i1] += sum_o dY[t][o] W[o][i0:i1] for one thread's column range: tr_gemm sums over o in
 * row order (one chain per element), so the result depends neither on the column split nor on N. */
static void mm_dx_run(void *p, int tid, int nth) {
    const mmdx_job *j = p;
    const ia_weight *W = j->W;
    const int in = W->n_in, out = W->n_out;
    int b0 = (int)((int64_t)j->nblk * tid / nth), b1 = (int)((int64_t)j->nblk * (tid + 1) / nth);
    int i0 = b0 * j->unit, i1 = b1 * j->unit < in ? b1 * j->unit : in;
    if (i1 <= i0) return;
    const int width = i1 - i0;
    if (W->type == IA_TYPE_F32 && !j->a16) {
        tr_gemm(j->N, width, out, j->dY, out, 1, (const float *)W->data + i0, in, j->dX + i0, in, true);
        return;
    }
    const ia_type_traits *tt = ia_type_traits_get(W->type);
    const size_t rs = ia_type_row_size(W->type, in);
    float *ws = j->ws + (size_t)tid * (TR_MMB_ROWS * 3 / 2) * in;
    uint32_t *pairs = (uint32_t *)(ws + (size_t)TR_MMB_ROWS * width);
    /* blocks of TR_MMB_ROWS = TR_GEMM_KB rows: splitting K there gives the bits of one product */
    for (int o0 = 0; o0 < out; o0 += TR_MMB_ROWS) {
        int nr = out - o0 < TR_MMB_ROWS ? out - o0 : TR_MMB_ROWS;
        const float *rows = (const float *)W->data + (size_t)o0 * in + i0;
        ptrdiff_t ld = in;
        if (W->type != IA_TYPE_F32) {
            for (int r = 0; r < nr; r++) {
                const uint8_t *row = (const uint8_t *)W->data + (size_t)(o0 + r) * rs;
                ia_dequantize_row_fast(W->type, row + (size_t)(i0 / tt->blck_size) * tt->type_size,
                                       ws + (size_t)r * width, width);
            }
            rows = ws;
            ld = width;
        }
        if (j->a16) {
            tr_pack_bf16_rows(pairs, width, rows, ld, nr, width);
            tr_gemm_bf16(j->N, width, nr, j->a16 + o0, j->a16_ld, pairs, width, j->dX + i0, in, true);
        } else {
            tr_gemm(j->N, width, nr, j->dY + o0, out, 1, rows, ld, j->dX + i0, in, true);
        }
    }
}

void tr_matmul_backward(float *dX, float *dW, float *db, const float *dY, const float *X, const ia_weight *W,
                        int N, float *ws, uint16_t *a16) {
    const int in = W->n_in, out = W->n_out;
    if (dX) {
        /* the columns in block-aligned ranges (16 columns for f32: whole vectors), one per thread */
        int bs = (int)ia_type_traits_get(W->type)->blck_size;
        int unit = W->type == IA_TYPE_F32 ? 16 : bs;
        int nblk = (in + unit - 1) / unit;
        int nth = tr_threads();
        if (nth > nblk) nth = nblk;
        if (!PAR_WORK((double)N * in * out)) nth = 1;
        mmdx_job j = {dX, dY, W, N, nblk, bs, unit, ws, a16, 0};
        if (a16) j.a16_ld = to_a16(a16, dY, N, out);
        tr_par_run(nth, mm_dx_run, &j);
    }
    if (dW) /* dW[o][i] += sum_t dY[t][o] X[t][i] (A = dYᵀ), t in order */
        gemm_par(out, in, N, dY, 1, out, X, in, dW, in, true);
    if (db) {
        for (int t = 0; t < N; t++)
            for (int o = 0; o < out; o++) db[o] += dY[(size_t)t * out + o];
    }
}

/* ==== LoRA ==================================================================================== */

static inline uint64_t mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

bool tr_dropout_keep(uint64_t key, int t, int i, float p) {
    uint64_t h = mix64(key ^ mix64(((uint64_t)(uint32_t)t << 32) | (uint32_t)i));
    return (double)(h >> 11) * (1.0 / 9007199254740992.0) >= (double)p;
}

typedef struct {
    const float *X;
    float *out;
    const tr_dropout *dr;
    int in;
    float inv;
} drop_job;

static void drop_body(void *p, int t0, int t1) {
    const drop_job *j = p;
    const int in = j->in;
    for (int t = t0; t < t1; t++)
        for (int i = 0; i < in; i++)
            j->out[(size_t)t * in + i] =
                tr_dropout_keep(j->dr->key, t, i, j->dr->p) ? j->X[(size_t)t * in + i] * j->inv : 0.0f;
}

/* xd = drop(X) / (1 - p), or NULL when dropout is off (X is used as is). */
static const float *lora_dropped(const float *X, const tr_dropout *dr, int N, int in, float *xd) {
    if (!dr || dr->p <= 0) return X;
    drop_job j = {X, xd, dr, in, 1.0f / (1.0f - dr->p)};
    tr_par_for(N, PAR_WORK((double)N * in * 4), drop_body, &j);
    return xd;
}

/* d[t][i] += keep(t, i) ? v[t][i] / (1 - p) : 0 */
static void drop_add_body(void *p, int t0, int t1) {
    const drop_job *j = p;
    const int in = j->in;
    for (int t = t0; t < t1; t++)
        for (int i = 0; i < in; i++)
            if (tr_dropout_keep(j->dr->key, t, i, j->dr->p)) j->out[(size_t)t * in + i] += j->X[(size_t)t * in + i] * j->inv;
}

size_t tr_lora_ws_floats(int N, int in, int out, int r) {
    return (size_t)N * r + (size_t)r * (in > out ? in : out) + 32;
}

/* dst[c][rr] = src[rr][c]: a [rows][cols] matrix transposed */
static void transpose(float *dst, const float *src, int rows, int cols) {
    for (int rr = 0; rr < rows; rr++)
        for (int c = 0; c < cols; c++) dst[(size_t)c * rows + rr] = src[(size_t)rr * cols + c];
}

void tr_lora_forward(float *Y, float *U, const float *X, const float *A, const float *B, float s,
                     const tr_dropout *dr, int N, int in, int out, int r, float *xd, float *ws) {
    const float *x = lora_dropped(X, dr, N, in, xd);
    float *sU = ws, *T = ws + (size_t)N * r; /* s·U [N][r]; Aᵀ [in][r], then Bᵀ [r][out] */
    /* U[t][k] = sum_i x[t][i] A[k][i] */
    transpose(T, A, r, in);
    gemm_par(N, r, in, x, in, 1, T, r, U, r, false);
    /* Y[t][o] += sum_k (s U[t][k]) B[o][k] */
    tr_scale_copy(sU, U, s, N * r);
    transpose(T, B, out, r);
    gemm_par(N, out, r, sU, r, 1, T, out, Y, out, true);
}

void tr_lora_backward(float *dX, float *dA, float *dB, const float *dY, const float *X, const float *A,
                      const float *B, const float *U, float s, const tr_dropout *dr, int N, int in,
                      int out, int r, float *dU, float *xd, float *ws) {
    float *sU = ws, *T = ws + (size_t)N * r;
    /* dB[o][k] += sum_t dY[t][o] (s U[t][k]): as Tᵀ = (sU)ᵀ·dY, r rows of `out` columns (full
     * vectors; the [out][r] form has r = 8 columns), then added in */
    tr_scale_copy(sU, U, s, N * r);
    gemm_par(r, out, N, sU, 1, r, dY, out, T, out, false);
    for (int o = 0; o < out; o++)
        for (int k = 0; k < r; k++) dB[(size_t)o * r + k] += T[(size_t)k * out + o];
    /* dU[t][k] = s sum_o dY[t][o] B[o][k] */
    gemm_par(N, r, out, dY, out, 1, B, r, dU, r, false);
    for (size_t i = 0; i < (size_t)N * r; i++) dU[i] *= s;
    /* dA[k][i] += sum_t dU[t][k] drop(X)[t][i]  (A operand = dUᵀ) */
    const float *x = lora_dropped(X, dr, N, in, xd);
    gemm_par(r, in, N, dU, 1, r, x, in, dA, in, true);
    if (!dX) return;
    /* dX[t][i] += mask/(1-p) * sum_k dU[t][k] A[k][i] */
    if (!dr || dr->p <= 0) {
        gemm_par(N, in, r, dU, r, 1, A, in, dX, in, true);
        return;
    }
    gemm_par(N, in, r, dU, r, 1, A, in, xd, in, false); /* xd is free again */
    drop_job j = {xd, dX, dr, in, 1.0f / (1.0f - dr->p)};
    tr_par_for(N, PAR_WORK((double)N * in * 4), drop_add_body, &j);
}

/* ==== RoPE ==================================================================================== */

void tr_rope_tables(float *cs, float *sn, int n_pos, const ia_hparams *hp, const float *rope_freqs) {
    int half = hp->n_rot / 2;
    for (int p = 0; p < n_pos; p++)
        for (int i = 0; i < half; i++) {
            double inv = pow((double)hp->rope_base, -2.0 * (double)i / (double)hp->n_rot);
            double th = (double)p * (double)hp->rope_freq_scale * inv;
            if (rope_freqs) th /= (double)rope_freqs[i];
            cs[(size_t)p * half + i] = (float)cos(th);
            sn[(size_t)p * half + i] = (float)sin(th);
        }
}

typedef struct {
    float *x;
    const int32_t *pos;
    const float *cs, *sn;
    int n_heads, D, n_rot;
    ia_rope_type type;
    float dir;
} rope_job;

static void rope_body(void *p, int t0, int t1) {
    const rope_job *j = p;
    float *x = j->x;
    const int32_t *pos = j->pos;
    const float *cs = j->cs, *sn = j->sn, dir = j->dir;
    const int n_heads = j->n_heads, D = j->D, n_rot = j->n_rot;
    const ia_rope_type type = j->type;
    int half = n_rot / 2;
    for (int t = t0; t < t1; t++) {
        const float *c = cs + (size_t)pos[t] * half, *s = sn + (size_t)pos[t] * half;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + ((size_t)t * n_heads + h) * D;
            for (int i = 0; i < half; i++) {
                int i0 = type == IA_ROPE_NEOX ? i : 2 * i;
                int i1 = type == IA_ROPE_NEOX ? i + half : 2 * i + 1;
                float x0 = v[i0], x1 = v[i1], si = dir * s[i];
                v[i0] = x0 * c[i] - x1 * si;
                v[i1] = x0 * si + x1 * c[i];
            }
        }
    }
}

static void rope_rows(float *x, const int32_t *pos, const float *cs, const float *sn, int N, int n_heads, int D,
                      int n_rot, ia_rope_type type, float dir) {
    rope_job j = {x, pos, cs, sn, n_heads, D, n_rot, type, dir};
    tr_par_for(N, PAR_WORK((double)N * n_heads * n_rot * 3), rope_body, &j);
}

void tr_rope_forward(float *x, const int32_t *pos, const float *cs, const float *sn, int N, int n_heads,
                     int D, int n_rot, ia_rope_type type) {
    rope_rows(x, pos, cs, sn, N, n_heads, D, n_rot, type, 1.0f);
}

void tr_rope_backward(float *dx, const int32_t *pos, const float *cs, const float *sn, int N, int n_heads,
                      int D, int n_rot, ia_rope_type type) {
    /* a rotation's Jacobian is the rotation; its transpose rotates by -theta */
    rope_rows(dx, pos, cs, sn, N, n_heads, D, n_rot, type, -1.0f);
}

/* ==== attention =============================================================================== */

/* multiply-adds of one attention pass (for the threading decision) */
static double attention_work(const int32_t *start, int N, int H, int D) {
    double w = 0;
    for (int t = 0; t < N; t++) w += (double)(t - start[t] + 1);
    return w * H * D * 2;
}

/* Query tokens per block: a block's rows are its tokens times the query heads of one KV head, about
 * 48 rows (the products below are 48 x keys x D). */
static int att_qb(int group) { return group >= 48 ? 1 : 48 / group; }

/* Scratch floats per thread: Kᵀ and Vᵀ of a segment [D][N], scores and their gradient [R][N], three
 * packed [R][D] row blocks and the row scales. */
static size_t att_ws_per(int N, int H, int Hkv, int D) {
    const int group = H / Hkv, R = att_qb(group) * group;
    return 2 * (size_t)D * N + 2 * (size_t)R * N + 3 * (size_t)R * D + (size_t)R + 64;
}

size_t tr_attention_ws_floats(int N, int H, int Hkv, int D) {
    return (size_t)tr_max_threads() * att_ws_per(N > 0 ? N : 1, H, Hkv, D);
}

/* The blocked kernels need segments: tokens with one start form a run beginning at that start. */
static bool att_segments_ok(const int32_t *start, int N) {
    for (int t = 0; t < N; t++)
        if (start[t] != t && (t == 0 || start[t] != start[t - 1])) return false;
    return true;
}

/* end of the segment that starts at s0 */
static int seg_end(const int32_t *start, int N, int s0) {
    int t = s0 + 1;
    while (t < N && start[t] == s0) t++;
    return t;
}

typedef struct {
    float *out, *lse, *dq, *dk, *dv, *delta;
    const float *q, *k, *v, *dout, *o;
    const int32_t *start;
    int N, H, Hkv, D, group, QB;
    float scale;
    float *ws;
    size_t ws_per;
    bool backward;           /* items are segments (backward) or query blocks (forward) */
    _Atomic int next;
} att_job;

/* Kt[d][j] = k row (s0 + j) of head kvh, d < D, j < nk (row stride ld) */
static void att_transpose(float *Kt, int ld, const float *k, int KV, int s0, int nk, int kvh, int D) {
    for (int j = 0; j < nk; j++) {
        const float *kr = k + (size_t)(s0 + j) * KV + (size_t)kvh * D;
        for (int d = 0; d < D; d++) Kt[(size_t)d * ld + j] = kr[d];
    }
}

/* One forward block: query tokens [t0, t1) of one segment, the query heads of KV head kvh. Rows
 * r = (t - t0) * group + hh; S = Q Kᵀ over keys s0 .. t1-1, softmax per row (keys past t are 0),
 * O = P V / sum. */
static void att_fwd_block(const att_job *J, float *ws, int t0, int kvh) {
    const int D = J->D, group = J->group, H = J->H, Dq = H * D, KV = J->Hkv * D;
    const int s0 = J->start[t0];
    int t1 = t0 + J->QB;
    for (int t = t0 + 1; t < t1; t++)
        if (t >= J->N || J->start[t] != s0) { t1 = t; break; }
    const int nq = t1 - t0, R = nq * group, nk = t1 - s0, GD = group * D;
    float *Kt = ws, *S = Kt + (size_t)D * nk, *Qp = S + (size_t)R * nk, *Op = Qp + (size_t)R * D, *inv = Op + (size_t)R * D;
    for (int i = 0; i < nq; i++)
        memcpy(Qp + (size_t)i * GD, J->q + (size_t)(t0 + i) * Dq + (size_t)kvh * GD, (size_t)GD * sizeof(float));
    att_transpose(Kt, nk, J->k, KV, s0, nk, kvh, D);
    tr_gemm(R, nk, D, Qp, D, 1, Kt, nk, S, nk, false);
    for (int r = 0; r < R; r++) {
        const int t = t0 + r / group, h = kvh * group + r % group;
        float ms;
        const float sum = tr_softmax_row(S + (size_t)r * nk, t - s0 + 1, nk, J->scale, &ms);
        J->lse[(size_t)t * H + h] = ms + logf(sum);
        inv[r] = 1.0f / sum;
    }
    tr_gemm(R, D, nk, S, nk, 1, J->v + (size_t)s0 * KV + (size_t)kvh * D, KV, Op, D, false);
    for (int r = 0; r < R; r++) {
        const int t = t0 + r / group, h = kvh * group + r % group;
        tr_scale_copy(J->out + (size_t)t * Dq + (size_t)h * D, Op + (size_t)r * D, inv[r], D);
    }
}

/* The backward of one segment [s0, s1) and KV head: query blocks in order; per block P and dS
 * (recomputed from q, k and lse once), dq of the block's rows whole, dk and dv of the segment's keys
 * accumulated block after block. One thread does the whole (segment, head): every gradient element
 * has one writer and one order of summation. */
static void att_bwd_seg(const att_job *J, float *ws, int s0, int kvh) {
    const int D = J->D, group = J->group, H = J->H, Dq = H * D, KV = J->Hkv * D, GD = group * D;
    const int s1 = seg_end(J->start, J->N, s0), L = s1 - s0, RB = J->QB * group;
    float *Kt = ws, *Vt = Kt + (size_t)D * L, *S = Vt + (size_t)D * L, *dP = S + (size_t)RB * L;
    float *Qp = dP + (size_t)RB * L, *dOp = Qp + (size_t)RB * D, *dQp = dOp + (size_t)RB * D;
    att_transpose(Kt, L, J->k, KV, s0, L, kvh, D);
    att_transpose(Vt, L, J->v, KV, s0, L, kvh, D);
    const float *kseg = J->k + (size_t)s0 * KV + (size_t)kvh * D;
    float *dkseg = J->dk + (size_t)s0 * KV + (size_t)kvh * D, *dvseg = J->dv + (size_t)s0 * KV + (size_t)kvh * D;
    for (int t0 = s0; t0 < s1; t0 += J->QB) {
        const int t1 = t0 + J->QB < s1 ? t0 + J->QB : s1;
        const int nq = t1 - t0, R = nq * group, nk = t1 - s0;
        for (int i = 0; i < nq; i++) {
            const size_t off = (size_t)(t0 + i) * Dq + (size_t)kvh * GD;
            memcpy(Qp + (size_t)i * GD, J->q + off, (size_t)GD * sizeof(float));
            memcpy(dOp + (size_t)i * GD, J->dout + off, (size_t)GD * sizeof(float));
        }
        tr_gemm(R, nk, D, Qp, D, 1, Kt, L, S, nk, false);   /* raw scores */
        tr_gemm(R, nk, D, dOp, D, 1, Vt, L, dP, nk, false); /* dP = dout · v */
        for (int r = 0; r < R; r++) {
            const int t = t0 + r / group, h = kvh * group + r % group;
            const float dl = ia_dot8(dOp + (size_t)r * D, J->o + (size_t)t * Dq + (size_t)h * D, D);
            J->delta[(size_t)t * H + h] = dl;
            tr_attn_bwd_row(S + (size_t)r * nk, dP + (size_t)r * nk, t - s0 + 1, nk, J->scale,
                            J->lse[(size_t)t * H + h], dl);
        }
        /* S = P, dP = dS (scale included) */
        tr_gemm(R, D, nk, dP, nk, 1, kseg, KV, dQp, D, false);
        for (int i = 0; i < nq; i++)
            tr_add(J->dq + (size_t)(t0 + i) * Dq + (size_t)kvh * GD, dQp + (size_t)i * GD, GD);
        tr_gemm(nk, D, R, dP, 1, nk, Qp, D, dkseg, KV, true); /* dk += dSᵀ q */
        tr_gemm(nk, D, R, S, 1, nk, dOp, D, dvseg, KV, true); /* dv += Pᵀ dout */
    }
}

static void att_bwd_seg(const att_job *J, float *ws, int s0, int kvh);

/* Work items (token, KV head), claimed in order; the tokens that start a query block (forward) or a
 * segment (backward) do the work. */
static void att_run(void *p, int tid, int nth) {
    att_job *J = p;
    float *ws = J->ws + (size_t)tid * J->ws_per;
    const int n = J->N * J->Hkv;
    for (int w; (w = atomic_fetch_add_explicit(&J->next, 1, memory_order_relaxed)) < n;) {
        const int t = w / J->Hkv, kvh = w % J->Hkv;
        if (J->backward) {
            if (J->start[t] == t) att_bwd_seg(J, ws, t, kvh);
        } else if ((t - J->start[t]) % J->QB == 0) {
            att_fwd_block(J, ws, t, kvh);
        }
    }
    (void)nth;
}

static int att_nth(const int32_t *start, int N, int H, int D) {
    int nth = tr_threads();
    if (!PAR_WORK(attention_work(start, N, H, D))) nth = 1;
    return nth;
}

void tr_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                          const int32_t *start, int N, int H, int Hkv, int D, float *ws) {
    if (!att_segments_ok(start, N)) {
        tr_attention_forward_ref(out, lse, q, k, v, start, N, H, Hkv, D, ws);
        return;
    }
    att_job J = {.out = out, .lse = lse, .q = q, .k = k, .v = v, .start = start, .N = N, .H = H, .Hkv = Hkv, .D = D,
                 .group = H / Hkv, .QB = att_qb(H / Hkv), .scale = 1.0f / sqrtf((float)D), .ws = ws,
                 .ws_per = att_ws_per(N, H, Hkv, D)};
    atomic_init(&J.next, 0);
    tr_par_run(att_nth(start, N, H, D), att_run, &J);
}

void tr_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                           const float *v, const float *out, const float *lse, const int32_t *start, int N,
                           int H, int Hkv, int D, float *delta, float *ws) {
    if (!att_segments_ok(start, N)) {
        tr_attention_backward_ref(dq, dk, dv, dout, q, k, v, out, lse, start, N, H, Hkv, D, delta);
        return;
    }
    att_job J = {.dq = dq, .dk = dk, .dv = dv, .delta = delta, .q = q, .k = k, .v = v, .dout = dout, .o = out,
                 .lse = (float *)lse, .start = start, .N = N, .H = H, .Hkv = Hkv, .D = D, .group = H / Hkv,
                 .QB = att_qb(H / Hkv), .scale = 1.0f / sqrtf((float)D), .ws = ws, .ws_per = att_ws_per(N, H, Hkv, D),
                 .backward = true};
    atomic_init(&J.next, 0);
    tr_par_run(att_nth(start, N, H, D), att_run, &J);
}

/* ---- the plain references (one thread): per (t, h) as context.c does it (dot8, expf softmax) ---- */

void tr_attention_forward_ref(float *out, float *lse, const float *q, const float *k, const float *v,
                              const int32_t *start, int N, int H, int Hkv, int D, float *ws) {
    const int Dq = H * D, KV = Hkv * D, group = H / Hkv;
    const float scale = 1.0f / sqrtf((float)D);
    float *sc = ws; /* scores of one (t, h): N bounds any segment */
    for (int w = 0; w < N * H; w++) {
        int t = w / H, h = w % H, kvh = h / group, s0 = start[t];
        const float *qh = q + (size_t)t * Dq + (size_t)h * D;
        float mx = -INFINITY;
        for (int p = s0; p <= t; p++) {
            float s = ia_dot8(qh, k + (size_t)p * KV + (size_t)kvh * D, D) * scale;
            sc[p - s0] = s;
            if (s > mx) mx = s;
        }
        float sum = 0;
        for (int p = s0; p <= t; p++) {
            sc[p - s0] = expf(sc[p - s0] - mx);
            sum += sc[p - s0];
        }
        float inv = 1.0f / sum;
        lse[(size_t)t * H + h] = mx + logf(sum);
        float *o = out + (size_t)t * Dq + (size_t)h * D;
        for (int d = 0; d < D; d++) o[d] = 0;
        for (int p = s0; p <= t; p++) {
            const float *vp = v + (size_t)p * KV + (size_t)kvh * D;
            float a = sc[p - s0] * inv;
            for (int d = 0; d < D; d++) o[d] += a * vp[d];
        }
    }
}

void tr_attention_backward_ref(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                               const float *v, const float *out, const float *lse, const int32_t *start, int N,
                               int H, int Hkv, int D, float *delta) {
    const int Dq = H * D, KV = Hkv * D, group = H / Hkv;
    const float scale = 1.0f / sqrtf((float)D);
    /* P[t,p] = exp(s[t,p] - lse[t]); dP = dout_t . v_p; dS = P (dP - delta_t), delta_t = dout_t . out_t;
     * dq_t = scale sum_p dS k_p; dk_p = scale sum_t dS q_t; dv_p = sum_t P dout_t. */
    /* pass 1: per query (t, h): delta and dq */
    for (int w = 0; w < N * H; w++) {
        int t = w / H, h = w % H, kvh = h / group;
        const float *qh = q + (size_t)t * Dq + (size_t)h * D, *go = dout + (size_t)t * Dq + (size_t)h * D;
        float dl = ia_dot8(go, out + (size_t)t * Dq + (size_t)h * D, D);
        delta[(size_t)t * H + h] = dl;
        float l = lse[(size_t)t * H + h];
        float *dqh = dq + (size_t)t * Dq + (size_t)h * D;
        for (int p = start[t]; p <= t; p++) {
            const float *kp = k + (size_t)p * KV + (size_t)kvh * D, *vp = v + (size_t)p * KV + (size_t)kvh * D;
            float P = expf(ia_dot8(qh, kp, D) * scale - l);
            float dS = P * (ia_dot8(go, vp, D) - dl) * scale;
            for (int d = 0; d < D; d++) dqh[d] += dS * kp[d];
        }
    }
    /* pass 2: per key (p, kv head): dk, dv over the queries that see it (any start[]) */
    for (int w = 0; w < N * Hkv; w++) {
        int p = w / Hkv, kvh = w % Hkv;
        const float *kp = k + (size_t)p * KV + (size_t)kvh * D, *vp = v + (size_t)p * KV + (size_t)kvh * D;
        float *dkp = dk + (size_t)p * KV + (size_t)kvh * D, *dvp = dv + (size_t)p * KV + (size_t)kvh * D;
        for (int t = p; t < N; t++) {
            if (start[t] > p) continue;
            for (int h = kvh * group; h < (kvh + 1) * group; h++) {
                const float *qh = q + (size_t)t * Dq + (size_t)h * D, *go = dout + (size_t)t * Dq + (size_t)h * D;
                float P = expf(ia_dot8(qh, kp, D) * scale - lse[(size_t)t * H + h]);
                float dS = P * (ia_dot8(go, vp, D) - delta[(size_t)t * H + h]) * scale;
                for (int d = 0; d < D; d++) {
                    dvp[d] += P * go[d];
                    dkp[d] += dS * qh[d];
                }
            }
        }
    }
}

/* ==== SwiGLU ================================================================================== */

typedef struct { float *h, *dg, *du; const float *g, *u, *dh; size_t n; } glu_job;
#define GLU_CHUNK 4096

static void glu_fwd_body(void *p, int c0, int c1) {
    const glu_job *j = p;
    size_t i1 = (size_t)c1 * GLU_CHUNK < j->n ? (size_t)c1 * GLU_CHUNK : j->n;
    size_t i0 = (size_t)c0 * GLU_CHUNK;
    ia_swiglu(j->h + i0, j->g + i0, j->u + i0, i1 - i0);
}

void tr_swiglu_forward(float *h, const float *g, const float *u, size_t n) {
    glu_job j = {.h = h, .g = g, .u = u, .n = n};
    tr_par_for((int)((n + GLU_CHUNK - 1) / GLU_CHUNK), PAR_WORK((double)n * 8), glu_fwd_body, &j);
}

static void glu_bwd_body(void *p, int c0, int c1) {
    /* silu(g) = g sig(g); silu'(g) = sig(g) (1 + g (1 - sig(g))) */
    const glu_job *j = p;
    size_t i0 = (size_t)c0 * GLU_CHUNK, i1 = (size_t)c1 * GLU_CHUNK < j->n ? (size_t)c1 * GLU_CHUNK : j->n;
    tr_swiglu_bwd(j->dg + i0, j->du + i0, j->dh + i0, j->g + i0, j->u + i0, i1 - i0);
}

void tr_swiglu_backward(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n) {
    glu_job j = {.dg = dg, .du = du, .dh = dh, .g = g, .u = u, .n = n};
    tr_par_for((int)((n + GLU_CHUNK - 1) / GLU_CHUNK), PAR_WORK((double)n * 8), glu_bwd_body, &j);
}

/* ==== cross-entropy =========================================================================== */

/* A row's log-sum-exp is ia_logsumexp (the sum in double), as in the inference's scoring. */
typedef struct { float *loss, *dl; const float *logits, *dloss; const int32_t *target; int V; } ce_job;

static void ce_fwd_body(void *p, int t0, int t1) {
    const ce_job *j = p;
    for (int t = t0; t < t1; t++) {
        const float *l = j->logits + (size_t)t * j->V;
        j->loss[t] = j->target[t] < 0 ? 0.0f : (float)(ia_logsumexp(l, j->V) - l[j->target[t]]);
    }
}

void tr_crossentropy_forward(float *loss, const float *logits, const int32_t *target, int N, int V) {
    ce_job j = {.loss = loss, .logits = logits, .target = target, .V = V};
    tr_par_for(N, PAR_WORK((double)N * V * 8), ce_fwd_body, &j);
}

static void ce_bwd_body(void *p, int t0, int t1) {
    const ce_job *j = p;
    const int V = j->V;
    for (int t = t0; t < t1; t++) {
        float *l = j->dl + (size_t)t * V;
        if (j->target[t] < 0) {
            memset(l, 0, (size_t)V * sizeof(float));
            continue;
        }
        float lse = (float)ia_logsumexp(l, V);
        tr_scaled_exp(l, l, V, lse, j->dloss[t]);
        l[j->target[t]] -= j->dloss[t];
    }
}

void tr_crossentropy_softmax_backward(float *dlogits, const float *dloss, const int32_t *target, int N, int V) {
    ce_job j = {.dl = dlogits, .dloss = dloss, .target = target, .V = V};
    tr_par_for(N, PAR_WORK((double)N * V * 8), ce_bwd_body, &j);
}

/* ==== residual ================================================================================ */

typedef struct { float *y, *db; const float *a, *b; size_t n; } res_job;
#define RES_CHUNK 16384

static void res_fwd_body(void *p, int c0, int c1) {
    const res_job *j = p;
    size_t i1 = (size_t)c1 * RES_CHUNK < j->n ? (size_t)c1 * RES_CHUNK : j->n;
    for (size_t i = (size_t)c0 * RES_CHUNK; i < i1; i++) j->y[i] = j->a[i] + j->b[i];
}

void tr_residual_forward(float *y, const float *a, const float *b, size_t n) {
    res_job j = {.y = y, .a = a, .b = b, .n = n};
    tr_par_for((int)((n + RES_CHUNK - 1) / RES_CHUNK), PAR_WORK((double)n), res_fwd_body, &j);
}

static void res_bwd_body(void *p, int c0, int c1) {
    const res_job *j = p; /* y: da, b: dy */
    size_t i1 = (size_t)c1 * RES_CHUNK < j->n ? (size_t)c1 * RES_CHUNK : j->n;
    for (size_t i = (size_t)c0 * RES_CHUNK; i < i1; i++) {
        j->y[i] += j->b[i];
        j->db[i] += j->b[i];
    }
}

void tr_residual_backward(float *da, float *db, const float *dy, size_t n) {
    res_job j = {.y = da, .db = db, .b = dy, .n = n};
    tr_par_for((int)((n + RES_CHUNK - 1) / RES_CHUNK), PAR_WORK((double)n), res_bwd_body, &j);
}
