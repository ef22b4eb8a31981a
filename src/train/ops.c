/* ops.c — training forward/backward pairs (embedding, RMSNorm, matmul, LoRA, RoPE, attention,
 * SwiGLU, cross-entropy, residual), f32, deterministic whatever the thread count. */
#include "train/ops.h"

#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Threads pay off only past a few hundred thousand operations (forking a team costs microseconds,
 * far more on a loaded machine); the split never changes a result. */
#define PAR_WORK(ops) ((ops) > 3e5)

static int op_threads(void) {
    int n = ia_get_threads();
    return n < 1 ? 1 : n;
}

/* Dot product with eight interleaved partial sums: the same arithmetic as context.c's dot8, so
 * the attention scores match the inference pass bit for bit. */
static inline float dot8(const float *a, const float *b, int n) {
    float acc[8] = {0};
    int nv = n & ~7;
    for (int k = 0; k < nv; k += 8)
        for (int l = 0; l < 8; l++) acc[l] += a[k + l] * b[k + l];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (int k = nv; k < n; k++) s += a[k] * b[k];
    return s;
}

/* ==== embedding =============================================================================== */

void tr_embedding_forward(float *x, const int32_t *tok, const ia_weight *emb, int N, int E) {
    size_t rs = ia_type_row_size(emb->type, E);
    for (int t = 0; t < N; t++)
        ia_dequantize_row(emb->type, (const uint8_t *)emb->data + (size_t)tok[t] * rs, x + (size_t)t * E, E);
}

void tr_embedding_backward(float *demb, const float *dx, const int32_t *tok, int N, int E) {
    /* column blocks: each element of demb has one writer, rows added in token order */
    const int CB = 64, nb = (E + CB - 1) / CB;
#pragma omp parallel for schedule(static) num_threads(op_threads()) if (PAR_WORK((double)N * E))
    for (int b = 0; b < nb; b++) {
        int i0 = b * CB, i1 = i0 + CB < E ? i0 + CB : E;
        for (int t = 0; t < N; t++) {
            float *d = demb + (size_t)tok[t] * E;
            const float *g = dx + (size_t)t * E;
            for (int i = i0; i < i1; i++) d[i] += g[i];
        }
    }
}

/* ==== RMSNorm ================================================================================= */

void tr_rmsnorm_forward(float *y, float *rstd, const float *x, const float *w, int N, int E, float eps) {
#pragma omp parallel for schedule(static) num_threads(op_threads()) if (PAR_WORK((double)N * E))
    for (int t = 0; t < N; t++) {
        const float *xt = x + (size_t)t * E;
        float *yt = y + (size_t)t * E;
        double ss = 0;
        for (int i = 0; i < E; i++) ss += (double)xt[i] * xt[i];
        float s = (float)(1.0 / sqrt(ss / E + (double)eps));
        rstd[t] = s;
        for (int i = 0; i < E; i++) yt[i] = xt[i] * s * w[i];
    }
}

void tr_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const float *w,
                         const float *rstd, int N, int E) {
    /* y_i = x_i r w_i, r = (mean(x^2)+eps)^-1/2, dr/dx_j = -r^3 x_j / E:
     * dx_j = r w_j dy_j - (r^3 / E) x_j sum_i dy_i w_i x_i */
#pragma omp parallel for schedule(static) num_threads(op_threads()) if (PAR_WORK((double)N * E))
    for (int t = 0; t < N; t++) {
        const float *xt = x + (size_t)t * E, *gt = dy + (size_t)t * E;
        float *dxt = dx + (size_t)t * E;
        float r = rstd[t];
        double dot = 0;
        for (int i = 0; i < E; i++) dot += (double)gt[i] * w[i] * xt[i];
        float c = (float)((double)r * r * r * dot / E);
        for (int i = 0; i < E; i++) dxt[i] += r * w[i] * gt[i] - c * xt[i];
    }
    if (!dw) return;
    const int CB = 64, nb = (E + CB - 1) / CB;
#pragma omp parallel for schedule(static) num_threads(op_threads()) if (PAR_WORK((double)N * E))
    for (int b = 0; b < nb; b++) {
        int i0 = b * CB, i1 = i0 + CB < E ? i0 + CB : E;
        for (int t = 0; t < N; t++) {
            const float *xt = x + (size_t)t * E, *gt = dy + (size_t)t * E;
            float r = rstd[t];
            for (int i = i0; i < i1; i++) dw[i] += gt[i] * xt[i] * r;
        }
    }
}

/* ==== matmul ================================================================================== */

/* Weight rows dequantised together by the backward; 64 rows of one thread's columns stay in L2
 * while every dY row streams past them. */
#define TR_MMB_ROWS 64

static int max_threads(void) {
    int n = 1;
#ifdef _OPENMP
    n = omp_get_num_procs();
    if (omp_get_max_threads() > n) n = omp_get_max_threads();
#endif
    if (ia_get_threads() > n) n = ia_get_threads();
    return n;
}

size_t tr_matmul_ws_floats(int n_in) { return (size_t)max_threads() * TR_MMB_ROWS * (size_t)n_in; }

void tr_matmul_forward(float *Y, const float *X, const ia_weight *W, const float *b, int N) {
    ia_matmul(Y, X, W->data, W->type, N, W->n_in, W->n_out);
    if (!b) return;
    for (int t = 0; t < N; t++)
        for (int o = 0; o < W->n_out; o++) Y[(size_t)t * W->n_out + o] += b[o];
}

/* Vector clones of the hot loops, chosen at load time (ifunc). The ISO C mode (-std=c11) keeps
 * -ffp-contract=off, so every clone does the same IEEE operations in the same order: the result
 * does not depend on the CPU's vector width. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define TR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define TR_CLONES
#endif

/* d[i] += a0 w0[i] + ... + a7 w7[i] (eight weight rows per pass over d) */
TR_CLONES static void axpy8(float *restrict d, const float *const *w, const float *a, int n) {
    const float *restrict w0 = w[0], *restrict w1 = w[1], *restrict w2 = w[2], *restrict w3 = w[3];
    const float *restrict w4 = w[4], *restrict w5 = w[5], *restrict w6 = w[6], *restrict w7 = w[7];
    const float a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3], a4 = a[4], a5 = a[5], a6 = a[6], a7 = a[7];
#pragma omp simd
    for (int i = 0; i < n; i++)
        d[i] += ((a0 * w0[i] + a1 * w1[i]) + (a2 * w2[i] + a3 * w3[i])) +
                ((a4 * w4[i] + a5 * w5[i]) + (a6 * w6[i] + a7 * w7[i]));
}

/* The same for four rows of d at once (four tokens): each weight element loaded once feeds four
 * accumulations, which halves the memory traffic of the single-token version. */
TR_CLONES static void axpy8x4(float *restrict d0, float *restrict d1, float *restrict d2, float *restrict d3,
                              const float *const *w, const float *g, int ldg, int n) {
    const float *restrict w0 = w[0], *restrict w1 = w[1], *restrict w2 = w[2], *restrict w3 = w[3];
    const float *restrict w4 = w[4], *restrict w5 = w[5], *restrict w6 = w[6], *restrict w7 = w[7];
    float a[4][8];
    for (int t = 0; t < 4; t++)
        for (int k = 0; k < 8; k++) a[t][k] = g[(size_t)t * ldg + k];
#pragma omp simd
    for (int i = 0; i < n; i++) {
        float x0 = w0[i], x1 = w1[i], x2 = w2[i], x3 = w3[i], x4 = w4[i], x5 = w5[i], x6 = w6[i], x7 = w7[i];
        d0[i] += ((a[0][0] * x0 + a[0][1] * x1) + (a[0][2] * x2 + a[0][3] * x3)) +
                 ((a[0][4] * x4 + a[0][5] * x5) + (a[0][6] * x6 + a[0][7] * x7));
        d1[i] += ((a[1][0] * x0 + a[1][1] * x1) + (a[1][2] * x2 + a[1][3] * x3)) +
                 ((a[1][4] * x4 + a[1][5] * x5) + (a[1][6] * x6 + a[1][7] * x7));
        d2[i] += ((a[2][0] * x0 + a[2][1] * x1) + (a[2][2] * x2 + a[2][3] * x3)) +
                 ((a[2][4] * x4 + a[2][5] * x5) + (a[2][6] * x6 + a[2][7] * x7));
        d3[i] += ((a[3][0] * x0 + a[3][1] * x1) + (a[3][2] * x2 + a[3][3] * x3)) +
                 ((a[3][4] * x4 + a[3][5] * x5) + (a[3][6] * x6 + a[3][7] * x7));
    }
}

TR_CLONES static void axpy1(float *restrict d, const float *restrict w, float a, int n) {
#pragma omp simd
    for (int i = 0; i < n; i++) d[i] += a * w[i];
}

/* dX[t][i0:i1] += sum_o dY[t][o] W[o][i0:i1] for one thread's column range. The sum over o runs in
 * row order, eight rows per pass, whatever the column split: thread-count invariant. */
static void mm_backward_dx_cols(float *dX, const float *dY, const ia_weight *W, int N, int i0, int i1, float *ws) {
    const int in = W->n_in, out = W->n_out, width = i1 - i0;
    const ia_type_traits *tt = ia_type_traits_get(W->type);
    const size_t rs = ia_type_row_size(W->type, in);
    const bool f32 = W->type == IA_TYPE_F32;
    const float *rows[TR_MMB_ROWS];
    for (int o0 = 0; o0 < out; o0 += TR_MMB_ROWS) {
        int nr = out - o0 < TR_MMB_ROWS ? out - o0 : TR_MMB_ROWS;
        for (int r = 0; r < nr; r++) {
            const uint8_t *row = (const uint8_t *)W->data + (size_t)(o0 + r) * rs;
            if (f32) {
                rows[r] = (const float *)row + i0;
            } else {
                ia_dequantize_row(W->type, row + (size_t)(i0 / tt->blck_size) * tt->type_size,
                                  ws + (size_t)r * width, width);
                rows[r] = ws + (size_t)r * width;
            }
        }
        int t = 0;
        for (; t + 4 <= N && nr >= 8; t += 4) {
            /* four tokens at a time over the groups of eight rows (same arithmetic per element as
             * axpy8: the grouping is over rows, never over tokens) */
            const float *g = dY + (size_t)t * out + o0;
            float *d = dX + (size_t)t * in + i0;
            int r = 0;
            for (; r + 8 <= nr; r += 8)
                axpy8x4(d, d + in, d + 2 * (size_t)in, d + 3 * (size_t)in, rows + r, g + r, out, width);
            for (int k = 0; k < 4; k++)
                for (int rr = r; rr < nr; rr++)
                    if (g[(size_t)k * out + rr] != 0) axpy1(d + (size_t)k * in, rows[rr], g[(size_t)k * out + rr], width);
        }
        for (; t < N; t++) {
            const float *g = dY + (size_t)t * out + o0;
            float *d = dX + (size_t)t * in + i0;
            int r = 0;
            for (; r + 8 <= nr; r += 8) axpy8(d, rows + r, g + r, width);
            for (; r < nr; r++)
                if (g[r] != 0) axpy1(d, rows[r], g[r], width);
        }
    }
}

void tr_matmul_backward(float *dX, float *dW, float *db, const float *dY, const float *X, const ia_weight *W,
                        int N, float *ws) {
    const int in = W->n_in, out = W->n_out;
    if (dX) {
        /* split the columns into block-aligned ranges, one per thread */
        int bs = (int)ia_type_traits_get(W->type)->blck_size;
        int nblk = in / bs;
        int nth = op_threads();
        int mt = max_threads();
        if (nth > mt) nth = mt;
        if (nth > nblk) nth = nblk;
        if (!PAR_WORK((double)N * in * out)) nth = 1;
#pragma omp parallel for schedule(static) num_threads(nth)
        for (int j = 0; j < nth; j++) {
            int b0 = (int)((int64_t)nblk * j / nth), b1 = (int)((int64_t)nblk * (j + 1) / nth);
            if (b1 > b0)
                mm_backward_dx_cols(dX, dY, W, N, b0 * bs, b1 * bs, ws + (size_t)j * TR_MMB_ROWS * in);
        }
    }
    if (dW) {
        /* dW[o][i] += sum_t dY[t][o] X[t][i]: blocks of 16 rows, one writer per row, t in order */
        const int RB = 16, nb = (out + RB - 1) / RB;
#pragma omp parallel for schedule(static) num_threads(op_threads()) if (PAR_WORK((double)N * in * out))
        for (int b = 0; b < nb; b++) {
            int o0 = b * RB, nr = out - o0 < RB ? out - o0 : RB;
            for (int t = 0; t < N; t++) {
                const float *x = X + (size_t)t * in;
                const float *g = dY + (size_t)t * out + o0;
                for (int r = 0; r < nr; r++)
                    if (g[r] != 0) axpy1(dW + (size_t)(o0 + r) * in, x, g[r], in);
            }
        }
    }
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

/* xd = drop(X) / (1 - p), or NULL when dropout is off (X is used as is). */
static const float *lora_dropped(const float *X, const tr_dropout *dr, int N, int in, float *xd) {
    if (!dr || dr->p <= 0) return X;
    float inv = 1.0f / (1.0f - dr->p);
#pragma omp parallel for schedule(static) num_threads(op_threads()) if (PAR_WORK((double)N * in * 4))
    for (int t = 0; t < N; t++)
        for (int i = 0; i < in; i++)
            xd[(size_t)t * in + i] = tr_dropout_keep(dr->key, t, i, dr->p) ? X[(size_t)t * in + i] * inv : 0.0f;
    return xd;
}

void tr_lora_forward(float *Y, float *U, const float *X, const float *A, const float *B, float s,
                     const tr_dropout *dr, int N, int in, int out, int r, float *xd) {
    const float *x = lora_dropped(X, dr, N, in, xd);
    ia_matmul(U, x, A, IA_TYPE_F32, N, in, r);
#pragma omp parallel for schedule(static) num_threads(op_threads()) if (PAR_WORK((double)N * out * r))
    for (int t = 0; t < N; t++) {
        const float *u = U + (size_t)t * r;
        float *y = Y + (size_t)t * out;
        for (int o = 0; o < out; o++) {
            const float *b = B + (size_t)o * r;
            float acc = 0;
            for (int k = 0; k < r; k++) acc += b[k] * u[k];
            y[o] += s * acc;
        }
    }
}

void tr_lora_backward(float *dX, float *dA, float *dB, const float *dY, const float *X, const float *A,
                      const float *B, const float *U, float s, const tr_dropout *dr, int N, int in,
                      int out, int r, float *dU, float *xd) {
    /* dB[o][k] += s sum_t dY[t][o] U[t][k] */
#pragma omp parallel for schedule(static) num_threads(op_threads()) if (PAR_WORK((double)N * out * r))
    for (int o = 0; o < out; o++) {
        float *db = dB + (size_t)o * r;
        for (int t = 0; t < N; t++) {
            float g = s * dY[(size_t)t * out + o];
            const float *u = U + (size_t)t * r;
            for (int k = 0; k < r; k++) db[k] += g * u[k];
        }
    }
    /* dU[t][k] = s sum_o dY[t][o] B[o][k] */
#pragma omp parallel for schedule(static) num_threads(op_threads()) if (PAR_WORK((double)N * out * r))
    for (int t = 0; t < N; t++) {
        float *du = dU + (size_t)t * r;
        for (int k = 0; k < r; k++) du[k] = 0;
        const float *g = dY + (size_t)t * out;
        for (int o = 0; o < out; o++) {
            float a = s * g[o];
            const float *b = B + (size_t)o * r;
            for (int k = 0; k < r; k++) du[k] += a * b[k];
        }
    }
    /* dA[k][i] += sum_t dU[t][k] drop(X)[t][i], in column blocks */
    const float *x = lora_dropped(X, dr, N, in, xd);
    const int CB = 64, nb = (in + CB - 1) / CB;
#pragma omp parallel for schedule(static) num_threads(op_threads()) if (PAR_WORK((double)N * in * r))
    for (int b = 0; b < nb; b++) {
        int i0 = b * CB, i1 = i0 + CB < in ? i0 + CB : in;
        for (int t = 0; t < N; t++) {
            const float *xt = x + (size_t)t * in;
            const float *du = dU + (size_t)t * r;
            for (int k = 0; k < r; k++) {
                float g = du[k];
                float *da = dA + (size_t)k * in;
                for (int i = i0; i < i1; i++) da[i] += g * xt[i];
            }
        }
    }
    if (!dX) return;
    /* dX[t][i] += mask/(1-p) * sum_k dU[t][k] A[k][i] */
    float inv = (dr && dr->p > 0) ? 1.0f / (1.0f - dr->p) : 1.0f;
#pragma omp parallel for schedule(static) num_threads(op_threads()) if (PAR_WORK((double)N * in * r))
    for (int t = 0; t < N; t++) {
        const float *du = dU + (size_t)t * r;
        float *d = dX + (size_t)t * in;
        for (int i = 0; i < in; i++) {
            float acc = 0;
            for (int k = 0; k < r; k++) acc += du[k] * A[(size_t)k * in + i];
            if (dr && dr->p > 0) acc = tr_dropout_keep(dr->key, t, i, dr->p) ? acc * inv : 0.0f;
            d[i] += acc;
        }
    }
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

static void rope_rows(float *x, const int32_t *pos, const float *cs, const float *sn, int N, int n_heads, int D,
                      int n_rot, ia_rope_type type, float dir) {
    int half = n_rot / 2;
    for (int t = 0; t < N; t++) {
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

size_t tr_attention_ws_floats(int N) { return (size_t)max_threads() * (size_t)(N > 0 ? N : 1); }

void tr_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                          const int32_t *start, int N, int H, int Hkv, int D, float *ws) {
    const int Dq = H * D, KV = Hkv * D, group = H / Hkv;
    const float scale = 1.0f / sqrtf((float)D);
    int nth = op_threads();
    if (nth > max_threads()) nth = max_threads();
    if (!PAR_WORK(attention_work(start, N, H, D))) nth = 1;
#pragma omp parallel num_threads(nth)
    {
        /* scores of one (t, h): N bounds any segment */
#ifdef _OPENMP
        float *sc = ws + (size_t)omp_get_thread_num() * N;
#else
        float *sc = ws;
#endif
#pragma omp for schedule(dynamic, 4)
        for (int w = 0; w < N * H; w++) {
            int t = w / H, h = w % H, kvh = h / group, s0 = start[t];
            const float *qh = q + (size_t)t * Dq + (size_t)h * D;
            float mx = -INFINITY;
            for (int p = s0; p <= t; p++) {
                float s = dot8(qh, k + (size_t)p * KV + (size_t)kvh * D, D) * scale;
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
}

void tr_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                           const float *v, const float *out, const float *lse, const int32_t *start, int N,
                           int H, int Hkv, int D, float *delta) {
    const int Dq = H * D, KV = Hkv * D, group = H / Hkv;
    const float scale = 1.0f / sqrtf((float)D);
    /* P[t,p] = exp(s[t,p] - lse[t]); dP = dout_t . v_p; dS = P (dP - delta_t), delta_t = dout_t . out_t;
     * dq_t = scale sum_p dS k_p; dk_p = scale sum_t dS q_t; dv_p = sum_t P dout_t. */
    const bool par = PAR_WORK(attention_work(start, N, H, D));
    /* pass 1: per query (t, h): delta and dq */
#pragma omp parallel for schedule(dynamic, 4) num_threads(op_threads()) if (par)
    for (int w = 0; w < N * H; w++) {
        int t = w / H, h = w % H, kvh = h / group;
        const float *qh = q + (size_t)t * Dq + (size_t)h * D, *go = dout + (size_t)t * Dq + (size_t)h * D;
        float dl = dot8(go, out + (size_t)t * Dq + (size_t)h * D, D);
        delta[(size_t)t * H + h] = dl;
        float l = lse[(size_t)t * H + h];
        float *dqh = dq + (size_t)t * Dq + (size_t)h * D;
        for (int p = start[t]; p <= t; p++) {
            const float *kp = k + (size_t)p * KV + (size_t)kvh * D, *vp = v + (size_t)p * KV + (size_t)kvh * D;
            float P = expf(dot8(qh, kp, D) * scale - l);
            float dS = P * (dot8(go, vp, D) - dl) * scale;
            for (int d = 0; d < D; d++) dqh[d] += dS * kp[d];
        }
    }
    /* pass 2: per key (p, kv head): dk, dv over the queries of its segment that see it */
#pragma omp parallel for schedule(dynamic, 4) num_threads(op_threads()) if (par)
    for (int w = 0; w < N * Hkv; w++) {
        int p = w / Hkv, kvh = w % Hkv;
        const float *kp = k + (size_t)p * KV + (size_t)kvh * D, *vp = v + (size_t)p * KV + (size_t)kvh * D;
        float *dkp = dk + (size_t)p * KV + (size_t)kvh * D, *dvp = dv + (size_t)p * KV + (size_t)kvh * D;
        for (int t = p; t < N && start[t] == start[p]; t++)
            for (int h = kvh * group; h < (kvh + 1) * group; h++) {
                const float *qh = q + (size_t)t * Dq + (size_t)h * D, *go = dout + (size_t)t * Dq + (size_t)h * D;
                float P = expf(dot8(qh, kp, D) * scale - lse[(size_t)t * H + h]);
                float dS = P * (dot8(go, vp, D) - delta[(size_t)t * H + h]) * scale;
                for (int d = 0; d < D; d++) {
                    dvp[d] += P * go[d];
                    dkp[d] += dS * qh[d];
                }
            }
    }
}

/* ==== SwiGLU ================================================================================== */

void tr_swiglu_forward(float *h, const float *g, const float *u, size_t n) {
#pragma omp parallel for schedule(static) num_threads(op_threads()) if (PAR_WORK((double)n * 8))
    for (size_t i = 0; i < n; i++) h[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

void tr_swiglu_backward(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n) {
    /* silu(g) = g sig(g); silu'(g) = sig(g) (1 + g (1 - sig(g))) */
#pragma omp parallel for schedule(static) num_threads(op_threads()) if (PAR_WORK((double)n * 8))
    for (size_t i = 0; i < n; i++) {
        float sg = 1.0f / (1.0f + expf(-g[i]));
        du[i] += dh[i] * g[i] * sg;
        dg[i] += dh[i] * u[i] * sg * (1.0f + g[i] * (1.0f - sg));
    }
}

/* ==== cross-entropy =========================================================================== */

/* log-sum-exp of a row: expf of the shifted logits (exact to f32), summed in double */
static double row_lse(const float *l, int V) {
    float mx = -INFINITY;
    for (int i = 0; i < V; i++) if (l[i] > mx) mx = l[i];
    double s = 0;
    for (int i = 0; i < V; i++) s += expf(l[i] - mx);
    return mx + log(s);
}

void tr_crossentropy_forward(float *loss, const float *logits, const int32_t *target, int N, int V) {
#pragma omp parallel for schedule(static) num_threads(op_threads()) if (PAR_WORK((double)N * V * 8))
    for (int t = 0; t < N; t++) {
        const float *l = logits + (size_t)t * V;
        loss[t] = target[t] < 0 ? 0.0f : (float)(row_lse(l, V) - l[target[t]]);
    }
}

void tr_crossentropy_softmax_backward(float *dlogits, const float *dloss, const int32_t *target, int N, int V) {
#pragma omp parallel for schedule(static) num_threads(op_threads()) if (PAR_WORK((double)N * V * 8))
    for (int t = 0; t < N; t++) {
        float *l = dlogits + (size_t)t * V;
        if (target[t] < 0) {
            memset(l, 0, (size_t)V * sizeof(float));
            continue;
        }
        float lse = (float)row_lse(l, V);
        float g = dloss[t];
        for (int i = 0; i < V; i++) l[i] = g * expf(l[i] - lse);
        l[target[t]] -= g;
    }
}

/* ==== residual ================================================================================ */

void tr_residual_forward(float *y, const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}

void tr_residual_backward(float *da, float *db, const float *dy, size_t n) {
    for (size_t i = 0; i < n; i++) {
        da[i] += dy[i];
        db[i] += dy[i];
    }
}
