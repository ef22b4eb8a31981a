/* test_train.c — the trainer's pieces: finite-difference checks of every backward op, the training
 * forward against the inference pass, thread/accumulation invariance, data formats and loss masks,
 * schedules, checkpoints, adapter loading errors and run-time LoRA.
 *
 * Finite differences: L = sum(R ⊙ op(x)) with a fixed random R, accumulated in double; central
 * differences in f32 inputs with step 1e-2 (1e-3 for the cross-entropy), compared to the backward
 * fed dy = R as max|fd - g| / max|g|. f32 forward rounding bounds what FD can resolve: the measured
 * errors are 1e-5 .. 6e-4; the tolerance is 3e-3, while a dropped term or a transposed index gives
 * errors of order 1. */
#include "test_util.h"

#include <math.h>

#include "chat/chat.h"
#include "model/lora.h"
#include "tensor/tensor.h"
#include "train/kern.h"
#include "train/train_internal.h"

#define STORIES TEST_DATA "/models/stories260K.gguf"
#define FD_TOL 3e-3

static void fill(float *x, size_t n, ia_rng *r, float s) {
    for (size_t i = 0; i < n; i++) x[i] = s * ia_rng_normal(r);
}

static float *falloc(size_t n) {
    float *p = ia_calloc(n ? n : 1, sizeof(float));
    assert_non_null(p);
    return p;
}

static double dotd(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* Central differences of loss() w.r.t. x[i] for every i (or `stride` apart), against g. */
static double fd_err(float *x, size_t n, const float *g, double (*loss)(void *), void *ctx, float eps, size_t stride) {
    double maxg = 0, maxe = 0;
    for (size_t i = 0; i < n; i++) if (fabs(g[i]) > maxg) maxg = fabs(g[i]);
    for (size_t i = 0; i < n; i += stride) {
        float s = x[i];
        x[i] = s + eps;
        double lp = loss(ctx);
        x[i] = s - eps;
        double lm = loss(ctx);
        x[i] = s;
        double fd = (lp - lm) / (2.0 * eps);
        if (fabs(fd - g[i]) > maxe) maxe = fabs(fd - g[i]);
    }
    return maxe / (maxg > 1e-12 ? maxg : 1e-12);
}

#define CHECK_FD(name, x, n, g, lossfn, ctx, eps, stride)                                     \
    do {                                                                                      \
        double e_ = fd_err(x, n, g, lossfn, ctx, eps, stride);                               \
        print_message("# %-28s fd rel err %.2e\n", name, e_);                                 \
        assert_true(e_ < FD_TOL);                                                             \
    } while (0)

/* ---- RMSNorm ------------------------------------------------------------------------------ */
typedef struct { int N, E; float *x, *w, *y, *rstd, *R; } rms_ctx;
static double rms_loss(void *p) {
    rms_ctx *c = p;
    tr_rmsnorm_forward(c->y, c->rstd, c->x, c->w, c->N, c->E, 1e-5f);
    return dotd(c->y, c->R, (size_t)c->N * c->E);
}
static void test_fd_rmsnorm(void **st) {
    (void)st;
    ia_rng r;
    ia_rng_seed(&r, 1);
    rms_ctx c = {.N = 3, .E = 24};
    size_t n = (size_t)c.N * c.E;
    c.x = falloc(n); c.w = falloc(c.E); c.y = falloc(n); c.rstd = falloc(c.N); c.R = falloc(n);
    fill(c.x, n, &r, 1); fill(c.w, c.E, &r, 1); fill(c.R, n, &r, 1);
    float *dx = falloc(n), *dw = falloc(c.E);
    rms_loss(&c);
    tr_rmsnorm_backward(dx, dw, c.R, c.x, c.w, c.rstd, c.N, c.E);
    CHECK_FD("rmsnorm dx", c.x, n, dx, rms_loss, &c, 1e-2f, 1);
    CHECK_FD("rmsnorm dw", c.w, c.E, dw, rms_loss, &c, 1e-2f, 1);
    ia_free(c.x); ia_free(c.w); ia_free(c.y); ia_free(c.rstd); ia_free(c.R); ia_free(dx); ia_free(dw);
}

/* ---- matmul (F32 weight: dX, dW, db) and embedding ------------------------------------------- */
typedef struct { int N, in, out; float *x, *w, *b, *y, *R, *ws; ia_weight W; } mm_ctx;
static double mm_loss(void *p) {
    mm_ctx *c = p;
    tr_matmul_forward(c->y, c->x, &c->W, c->b, c->N, c->ws, false);
    return dotd(c->y, c->R, (size_t)c->N * c->out);
}
static void test_fd_matmul(void **st) {
    (void)st;
    ia_rng r;
    ia_rng_seed(&r, 2);
    mm_ctx c = {.N = 5, .in = 40, .out = 24};
    c.x = falloc((size_t)c.N * c.in); c.w = falloc((size_t)c.out * c.in); c.b = falloc(c.out);
    c.y = falloc((size_t)c.N * c.out); c.R = falloc((size_t)c.N * c.out);
    fill(c.x, (size_t)c.N * c.in, &r, 1); fill(c.w, (size_t)c.out * c.in, &r, 0.3f); fill(c.b, c.out, &r, 1);
    fill(c.R, (size_t)c.N * c.out, &r, 1);
    c.W = (ia_weight){c.w, IA_TYPE_F32, c.in, c.out, "w"};
    float *dx = falloc((size_t)c.N * c.in), *dw = falloc((size_t)c.out * c.in), *db = falloc(c.out);
    float *ws = falloc(tr_matmul_ws_floats(c.in));
    c.ws = ws;
    tr_matmul_backward(dx, dw, db, c.R, c.x, &c.W, c.N, ws, false);
    CHECK_FD("matmul dX", c.x, (size_t)c.N * c.in, dx, mm_loss, &c, 1e-2f, 1);
    CHECK_FD("matmul dW", c.w, (size_t)c.out * c.in, dw, mm_loss, &c, 1e-2f, 3);
    CHECK_FD("matmul db", c.b, c.out, db, mm_loss, &c, 1e-2f, 1);
    /* accumulation: a second backward doubles every gradient */
    float *dx2 = falloc((size_t)c.N * c.in);
    memcpy(dx2, dx, (size_t)c.N * c.in * sizeof(float));
    tr_matmul_backward(dx2, NULL, NULL, c.R, c.x, &c.W, c.N, ws, false);
    for (size_t i = 0; i < (size_t)c.N * c.in; i++) assert_float_equal(dx2[i], 2 * dx[i], 1e-5 * (1 + fabs(dx[i])));
    ia_free(c.x); ia_free(c.w); ia_free(c.b); ia_free(c.y); ia_free(c.R); ia_free(dx); ia_free(dw); ia_free(db);
    ia_free(ws); ia_free(dx2);
}

/* dX (and Y) through a quantised weight equal those through its dequantised f32 copy. */
static void test_matmul_backward_quant(void **st) {
    (void)st;
    ia_rng r;
    ia_rng_seed(&r, 3);
    const int N = 7, in = 512, out = 70;
    const uint32_t types[] = {IA_TYPE_Q8_0, IA_TYPE_Q4_0, IA_TYPE_Q4_K, IA_TYPE_Q6_K, IA_TYPE_F16, IA_TYPE_BF16};
    float *wf = falloc((size_t)out * in), *deq = falloc((size_t)out * in), *dy = falloc((size_t)N * out);
    float *d1 = falloc((size_t)N * in), *d2 = falloc((size_t)N * in), *ws = falloc(tr_matmul_ws_floats(in));
    float *y1 = falloc((size_t)N * out), *y2 = falloc((size_t)N * out);
    uint8_t *q = ia_malloc((size_t)out * in * 4);
    fill(wf, (size_t)out * in, &r, 0.1f);
    fill(dy, (size_t)N * out, &r, 1);
    for (size_t k = 0; k < sizeof types / sizeof *types; k++) {
        size_t rs = ia_type_row_size(types[k], in);
        for (int o = 0; o < out; o++) {
            ia_quantize_row(types[k], wf + (size_t)o * in, q + (size_t)o * rs, in);
            ia_dequantize_row(types[k], q + (size_t)o * rs, deq + (size_t)o * in, in);
        }
        ia_weight Wq = {q, types[k], in, out, "q"}, Wf = {deq, IA_TYPE_F32, in, out, "f"};
        memset(d1, 0, (size_t)N * in * sizeof(float));
        memset(d2, 0, (size_t)N * in * sizeof(float));
        tr_matmul_backward(d1, NULL, NULL, dy, NULL, &Wq, N, ws, false);
        tr_matmul_backward(d2, NULL, NULL, dy, NULL, &Wf, N, ws, false);
        assert_memory_equal(d1, d2, (size_t)N * in * sizeof(float));
        /* the forward too (panels of dequantised rows through the same kernel) */
        tr_matmul_forward(y1, d1, &Wq, NULL, N, ws, false);
        tr_matmul_forward(y2, d1, &Wf, NULL, N, ws, false);
        assert_memory_equal(y1, y2, (size_t)N * out * sizeof(float));
    }
    ia_free(wf); ia_free(deq); ia_free(dy); ia_free(d1); ia_free(d2); ia_free(ws); ia_free(q); ia_free(y1); ia_free(y2);
}

static void test_embedding_backward(void **st) {
    (void)st;
    const int E = 4, N = 3;
    int32_t tok[3] = {2, 0, 2};
    float dx[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, demb[12] = {0};
    tr_embedding_backward(demb, dx, tok, N, E);
    float want[12] = {5, 6, 7, 8, 0, 0, 0, 0, 10, 12, 14, 16};
    assert_memory_equal(demb, want, sizeof want);
}

/* ---- LoRA --------------------------------------------------------------------------------- */
typedef struct { int N, in, out, r; float *x, *A, *B, *y, *U, *R, *xd, *ws; tr_dropout dr; } lora_ctx;
static double lora_loss(void *p) {
    lora_ctx *c = p;
    memset(c->y, 0, (size_t)c->N * c->out * sizeof(float));
    tr_lora_forward(c->y, c->U, c->x, c->A, c->B, 0.75f, &c->dr, c->N, c->in, c->out, c->r, c->xd, c->ws);
    return dotd(c->y, c->R, (size_t)c->N * c->out);
}
static void test_fd_lora(void **st) {
    (void)st;
    for (int drop = 0; drop < 2; drop++) {
        ia_rng r;
        ia_rng_seed(&r, 4);
        lora_ctx c = {.N = 4, .in = 20, .out = 12, .r = 3};
        c.dr = (tr_dropout){drop ? 0.3f : 0.0f, 1234};
        c.x = falloc((size_t)c.N * c.in); c.A = falloc((size_t)c.r * c.in); c.B = falloc((size_t)c.out * c.r);
        c.y = falloc((size_t)c.N * c.out); c.U = falloc((size_t)c.N * c.r); c.R = falloc((size_t)c.N * c.out);
        c.xd = falloc((size_t)c.N * c.in);
        c.ws = falloc(tr_lora_ws_floats(c.N, c.in, c.out, c.r));
        fill(c.x, (size_t)c.N * c.in, &r, 1); fill(c.A, (size_t)c.r * c.in, &r, 0.5f);
        fill(c.B, (size_t)c.out * c.r, &r, 0.5f); fill(c.R, (size_t)c.N * c.out, &r, 1);
        float *dx = falloc((size_t)c.N * c.in), *dA = falloc((size_t)c.r * c.in), *dB = falloc((size_t)c.out * c.r);
        float *dU = falloc((size_t)c.N * c.r);
        lora_loss(&c);
        tr_lora_backward(dx, dA, dB, c.R, c.x, c.A, c.B, c.U, 0.75f, &c.dr, c.N, c.in, c.out, c.r, dU, c.xd, c.ws);
        CHECK_FD(drop ? "lora dX (dropout 0.3)" : "lora dX", c.x, (size_t)c.N * c.in, dx, lora_loss, &c, 1e-2f, 1);
        CHECK_FD(drop ? "lora dA (dropout 0.3)" : "lora dA", c.A, (size_t)c.r * c.in, dA, lora_loss, &c, 1e-2f, 1);
        CHECK_FD(drop ? "lora dB (dropout 0.3)" : "lora dB", c.B, (size_t)c.out * c.r, dB, lora_loss, &c, 1e-2f, 1);
        if (drop) { /* the mask really drops about p of the inputs */
            int kept = 0;
            for (int i = 0; i < 10000; i++) kept += tr_dropout_keep(99, i / 100, i % 100, 0.3f);
            assert_true(kept > 6700 && kept < 7300);
        }
        ia_free(c.x); ia_free(c.A); ia_free(c.B); ia_free(c.y); ia_free(c.U); ia_free(c.R); ia_free(c.xd); ia_free(c.ws);
        ia_free(dx); ia_free(dA); ia_free(dB); ia_free(dU);
    }
}

/* ---- RoPE (NORM and NEOX, partial rotation) -------------------------------------------------- */
typedef struct { int N, nh, D, n_rot; ia_rope_type type; float *x, *y, *R, *cs, *sn; int32_t *pos; } rope_ctx;
static double rope_loss(void *p) {
    rope_ctx *c = p;
    size_t n = (size_t)c->N * c->nh * c->D;
    memcpy(c->y, c->x, n * sizeof(float));
    tr_rope_forward(c->y, c->pos, c->cs, c->sn, c->N, c->nh, c->D, c->n_rot, c->type);
    return dotd(c->y, c->R, n);
}
static void test_fd_rope(void **st) {
    (void)st;
    for (int mode = 0; mode < 2; mode++) {
        ia_rng r;
        ia_rng_seed(&r, 5);
        ia_hparams hp = {0};
        hp.n_rot = 6;
        hp.rope_base = 10000;
        hp.rope_freq_scale = 0.5f;
        rope_ctx c = {.N = 4, .nh = 3, .D = 8, .n_rot = 6, .type = mode ? IA_ROPE_NEOX : IA_ROPE_NORM};
        size_t n = (size_t)c.N * c.nh * c.D;
        int32_t pos[4] = {0, 5, 1, 17};
        c.pos = pos;
        c.x = falloc(n); c.y = falloc(n); c.R = falloc(n); c.cs = falloc(20 * 3); c.sn = falloc(20 * 3);
        tr_rope_tables(c.cs, c.sn, 20, &hp, NULL);
        fill(c.x, n, &r, 1); fill(c.R, n, &r, 1);
        float *dx = falloc(n);
        memcpy(dx, c.R, n * sizeof(float));
        tr_rope_backward(dx, c.pos, c.cs, c.sn, c.N, c.nh, c.D, c.n_rot, c.type);
        CHECK_FD(mode ? "rope NEOX dx" : "rope NORM dx", c.x, n, dx, rope_loss, &c, 1e-2f, 1);
        ia_free(c.x); ia_free(c.y); ia_free(c.R); ia_free(c.cs); ia_free(c.sn); ia_free(dx);
    }
}

/* ---- attention: GQA, two segments ------------------------------------------------------------ */
typedef struct { int N, H, Hkv, D; float *q, *k, *v, *o, *lse, *R, *ws; int32_t *start; } att_ctx;
static double att_loss(void *p) {
    att_ctx *c = p;
    tr_attention_forward(c->o, c->lse, c->q, c->k, c->v, c->start, c->N, c->H, c->Hkv, c->D, c->ws);
    return dotd(c->o, c->R, (size_t)c->N * c->H * c->D);
}
static void test_fd_attention(void **st) {
    (void)st;
    ia_rng r;
    ia_rng_seed(&r, 6);
    int32_t start[7] = {0, 0, 0, 0, 4, 4, 4}; /* two examples: 4 and 3 tokens */
    att_ctx c = {.N = 7, .H = 4, .Hkv = 2, .D = 8};
    c.start = start;
    size_t nq = (size_t)c.N * c.H * c.D, nk = (size_t)c.N * c.Hkv * c.D;
    c.q = falloc(nq); c.k = falloc(nk); c.v = falloc(nk); c.o = falloc(nq); c.lse = falloc((size_t)c.N * c.H);
    c.R = falloc(nq); c.ws = falloc(tr_attention_ws_floats(c.N, c.H, c.Hkv, c.D));
    fill(c.q, nq, &r, 1); fill(c.k, nk, &r, 1); fill(c.v, nk, &r, 1); fill(c.R, nq, &r, 1);
    float *dq = falloc(nq), *dk = falloc(nk), *dv = falloc(nk), *delta = falloc((size_t)c.N * c.H);
    att_loss(&c);
    tr_attention_backward(dq, dk, dv, c.R, c.q, c.k, c.v, c.o, c.lse, c.start, c.N, c.H, c.Hkv, c.D, delta, c.ws);
    CHECK_FD("attention dq", c.q, nq, dq, att_loss, &c, 1e-2f, 1);
    CHECK_FD("attention dk", c.k, nk, dk, att_loss, &c, 1e-2f, 1);
    CHECK_FD("attention dv", c.v, nk, dv, att_loss, &c, 1e-2f, 1);
    /* the second example never sees the first: its outputs ignore k/v of tokens 0..3 */
    float o5[32];
    memcpy(o5, c.o + 5 * c.H * c.D, sizeof o5);
    for (size_t i = 0; i < 4 * (size_t)c.Hkv * c.D; i++) c.v[i] += 1;
    att_loss(&c);
    assert_memory_equal(o5, c.o + 5 * c.H * c.D, sizeof o5);
    ia_free(c.q); ia_free(c.k); ia_free(c.v); ia_free(c.o); ia_free(c.lse); ia_free(c.R); ia_free(c.ws);
    ia_free(dq); ia_free(dk); ia_free(dv); ia_free(delta);
}

/* ---- optimised kernels against their plain C references ------------------------------------- */

/* max |a - b| / (max |b| + tiny) */
static double rel_diff(const float *a, const float *b, size_t n) {
    double md = 0, mb = 0;
    for (size_t i = 0; i < n; i++) {
        md = fmax(md, fabs((double)a[i] - b[i]));
        mb = fmax(mb, fabs((double)b[i]));
    }
    return md / (mb + 1e-30);
}

/* tr_gemm of each kernel family the CPU has (scalar: the reference itself) against tr_gemm_ref in
 * every access pattern the trainer uses, at sizes that exercise every row and column tail and the K
 * blocking. The AVX-512 and AVX2 kernels fuse each multiply-add (one rounding) where the float
 * reference rounds twice, so they agree to a tolerance; each must also give the same bits however the
 * work is split (chains in k), and the two give the same bits as each other (the same chains). */
static void test_gemm_vs_ref(void **st) {
    (void)st;
    ia_rng r;
    ia_rng_seed(&r, 11);
    static const char *const fams[] = {"scalar", "avx2", "avx512"};
    const int dims[][3] = {{1, 1, 1}, {7, 13, 5}, {6, 64, 128}, {13, 100, 300}, {33, 200, 129}, {5, 8, 576}, {3, 300, 40}};
    for (size_t d = 0; d < sizeof dims / sizeof *dims; d++) {
        const int M = dims[d][0], N = dims[d][1], K = dims[d][2];
        const size_t nc = (size_t)M * (N + 5);
        float *A = falloc((size_t)M * K), *B = falloc((size_t)K * (N + 3)), *C0 = falloc(nc);
        float *C1 = falloc(nc), *C2 = falloc(nc), *Cf[3] = {falloc(nc), falloc(nc), falloc(nc)};
        fill(A, (size_t)M * K, &r, 1); fill(B, (size_t)K * (N + 3), &r, 1); fill(C0, nc, &r, 1);
        for (int tr = 0; tr < 2; tr++)       /* A row-major, or stored transposed */
            for (int acc = 0; acc < 2; acc++) {
                ptrdiff_t ars = tr ? 1 : K, acs = tr ? M : 1;
                bool had[3] = {false, false, false};
                for (int f = 0; f < 3; f++) {
                    if (!ia_kernel_force(fams[f])) continue;
                    had[f] = true;
                    memcpy(C1, C0, nc * sizeof(float));
                    memcpy(C2, C0, nc * sizeof(float));
                    tr_gemm(M, N, K, A, ars, acs, B, N + 3, C1, N + 5, acc);
                    tr_gemm_ref(M, N, K, A, ars, acs, B, N + 3, C2, N + 5, acc);
                    double e = rel_diff(C1, C2, nc);
                    if (!(e < 1e-5)) fail_msg("%s gemm %dx%dx%d: rel diff %g", fams[f], M, N, K, e);
                    for (int m = 0; m < M; m++) /* the padding columns are never written */
                        for (int n = N; n < N + 5; n++) assert_true(C1[(size_t)m * (N + 5) + n] == C0[(size_t)m * (N + 5) + n]);
                    memcpy(Cf[f], C1, nc * sizeof(float));
                    /* split in rows, columns and k: the same bits */
                    memcpy(C2, C0, nc * sizeof(float));
                    int m1 = M / 2, n1 = N / 3, k1 = K > TR_GEMM_KB ? TR_GEMM_KB : 0; /* K splits at a block edge */
                    for (int part = 0; part < 2; part++) {
                        int ka = part ? k1 : 0, kb = part ? K : k1;
                        bool ac = acc || part;
                        const float *Ak = A + ka * acs, *Bk = B + (size_t)ka * (N + 3);
                        tr_gemm(m1, n1, kb - ka, Ak, ars, acs, Bk, N + 3, C2, N + 5, ac);
                        tr_gemm(m1, N - n1, kb - ka, Ak, ars, acs, Bk + n1, N + 3, C2 + n1, N + 5, ac);
                        tr_gemm(M - m1, N, kb - ka, Ak + m1 * ars, ars, acs, Bk, N + 3, C2 + (size_t)m1 * (N + 5), N + 5, ac);
                    }
                    assert_memory_equal(C1, C2, nc * sizeof(float));
                }
                if (had[1] && had[2] && memcmp(Cf[1], Cf[2], nc * sizeof(float)) != 0)
                    fail_msg("gemm %dx%dx%d: avx2 and avx512 bits differ", M, N, K);
            }
        ia_kernel_force(NULL);
        print_message("# gemm %dx%dx%d: ok\n", M, N, K);
        ia_free(A); ia_free(B); ia_free(C0); ia_free(C1); ia_free(C2);
        for (int f = 0; f < 3; f++) ia_free(Cf[f]);
    }
}

/* The vectorised panel transpose moves the same floats as the reference, tails included. */
static void test_pack_t_vs_ref(void **st) {
    (void)st;
    ia_rng r;
    ia_rng_seed(&r, 14);
    const int shapes[][2] = {{64, 576}, {16, 16}, {37, 50}, {64, 13}, {5, 100}};
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        const int rows = shapes[i][0], K = shapes[i][1];
        float *W = falloc((size_t)rows * (K + 3)), *P1 = falloc((size_t)K * 64), *P2 = falloc((size_t)K * 64);
        fill(W, (size_t)rows * (K + 3), &r, 1);
        tr_pack_t(P1, 64, W, K + 3, rows, K);
        tr_pack_t_ref(P2, 64, W, K + 3, rows, K);
        for (int k = 0; k < K; k++) assert_memory_equal(P1 + (size_t)k * 64, P2 + (size_t)k * 64, (size_t)rows * sizeof(float));
        for (int k = 0; k < K; k++)
            for (int rr = 0; rr < rows; rr++) assert_true(P2[(size_t)k * 64 + rr] == W[(size_t)rr * (K + 3) + k]);
        ia_free(W); ia_free(P1); ia_free(P2);
    }
}

/* bf16 products: the AVX512_BF16 kernel gives the reference's bits (the reference emulates
 * vdpbf16ps lane steps), whatever the split; and the reference is within the blocked-summation bound
 * of the float64 product of the bf16-rounded inputs. Inputs include float subnormals (read as zero),
 * exact rounding ties and values that round up to the next exponent. */
static float bf16_in(ia_rng *r, int i) {
    switch (i % 11) {
    case 3: return 1e-40f;                            /* subnormal: rounds to zero */
    case 5: return 1.0f + 0x1p-8f;                    /* a tie: to even (1.0) */
    case 7: return -(1.0f + 0x1p-8f + 0x1p-9f);       /* rounds away */
    case 9: return 1.9999999f;                        /* rounds up to 2 */
    default: return ia_rng_normal(r);
    }
}

static double bf16_val(float f) { return (double)ia_bf16_to_fp32(ia_fp32_to_bf16_cvtne(f)); }

static const char *const bf16_fams[] = {"scalar", "avx2", "avx512"};

static void test_gemm_bf16_vs_ref(void **st) {
    (void)st;
    ia_rng r;
    ia_rng_seed(&r, 21);
    const int dims[][3] = {{1, 1, 2},     {7, 13, 6},  {6, 64, 128}, {13, 100, 300}, {33, 200, 258},
                           {5, 8, 576},   {3, 300, 40}, {2, 17, 1},  {4, 70, 131},   {7, 5, 257}}; /* odd K too */
    for (size_t d = 0; d < sizeof dims / sizeof *dims; d++) {
        const int M = dims[d][0], N = dims[d][1], K = dims[d][2], ldb = N + 3, ldc = N + 5;
        float *A = falloc((size_t)M * (K + 2)), *W = falloc((size_t)K * ldb), *C0 = falloc((size_t)M * ldc);
        float *C1 = falloc((size_t)M * ldc), *C2 = falloc((size_t)M * ldc);
        uint32_t *B = ia_calloc((size_t)(K + 1) / 2 * ldb, 4);
        assert_non_null(B);
        for (size_t i = 0; i < (size_t)M * (K + 2); i++) A[i] = bf16_in(&r, (int)i);
        for (size_t i = 0; i < (size_t)K * ldb; i++) W[i] = bf16_in(&r, (int)i + 4);
        fill(C0, (size_t)M * ldc, &r, 1);
        tr_pack_bf16_rows_ref(B, ldb, W, ldb, K, N); /* B(k, n) = W[k][n] */
        const int lda = ((K + 1) & ~1) + 2;
        uint16_t *A16 = ia_calloc((size_t)M * lda, 2);
        assert_non_null(A16);
        tr_bf16_rows_ref(A16, lda, A, K + 2, M, K);
        for (int acc = 0; acc < 2; acc++) {
            memcpy(C1, C0, (size_t)M * ldc * sizeof(float));
            memcpy(C2, C0, (size_t)M * ldc * sizeof(float));
            tr_gemm_bf16_ref(M, N, K, A16, lda, B, ldb, C2, ldc, acc);
            for (int f = 0; f < 3; f++) { /* every family: the instruction, its AVX2 emulation, the reference */
                if (!ia_kernel_force(bf16_fams[f])) continue;
                memcpy(C1, C0, (size_t)M * ldc * sizeof(float));
                tr_gemm_bf16(M, N, K, A16, lda, B, ldb, C1, ldc, acc);
                if (memcmp(C1, C2, (size_t)M * ldc * sizeof(float)) != 0)
                    fail_msg("bf16 gemm %dx%dx%d (%s): not the reference's bits", M, N, K, bf16_fams[f]);
            }
            ia_kernel_force(NULL);
            memcpy(C1, C0, (size_t)M * ldc * sizeof(float));
            tr_gemm_bf16(M, N, K, A16, lda, B, ldb, C1, ldc, acc);
            for (int m = 0; m < M; m++) {
                for (int n = N; n < ldc; n++) assert_true(C1[(size_t)m * ldc + n] == C0[(size_t)m * ldc + n]);
                for (int n = 0; n < N; n++) {
                    double ex = acc ? C0[(size_t)m * ldc + n] : 0, ab = fabs(ex);
                    for (int k = 0; k < K; k++) {
                        const double p = bf16_val(A[(size_t)m * (K + 2) + k]) * bf16_val(W[(size_t)k * ldb + n]);
                        ex += p;
                        ab += fabs(p);
                    }
                    /* each step rounds once (2^-24 relative); a chain of up to KB, then K/KB block adds */
                    const double bound = ab * (TR_GEMM_KB + K / TR_GEMM_KB + 2) * 0x1p-24;
                    if (!(fabs(C2[(size_t)m * ldc + n] - ex) <= bound))
                        fail_msg("bf16 gemm %dx%dx%d [%d][%d]: %g vs %g (bound %g)", M, N, K, m, n,
                                 (double)C2[(size_t)m * ldc + n], ex, bound);
                }
            }
            /* split in rows, columns and k (at a block edge): the same bits */
            memcpy(C2, C0, (size_t)M * ldc * sizeof(float));
            int m1 = M / 2, n1 = N / 3, k1 = K > TR_GEMM_KB ? TR_GEMM_KB : 0;
            for (int part = 0; part < 2; part++) {
                int ka = part ? k1 : 0, kb = part ? K : k1;
                bool ac = acc || part;
                const uint16_t *Ak = A16 + ka;
                const uint32_t *Bk = B + (size_t)(ka / 2) * ldb;
                tr_gemm_bf16(m1, n1, kb - ka, Ak, lda, Bk, ldb, C2, ldc, ac);
                tr_gemm_bf16(m1, N - n1, kb - ka, Ak, lda, Bk + n1, ldb, C2 + n1, ldc, ac);
                tr_gemm_bf16(M - m1, N, kb - ka, Ak + (size_t)m1 * lda, lda, Bk, ldb, C2 + (size_t)m1 * ldc, ldc, ac);
            }
            assert_memory_equal(C1, C2, (size_t)M * ldc * sizeof(float));
        }
        print_message("# bf16 gemm %dx%dx%d: ok\n", M, N, K);
        ia_free(A); ia_free(A16); ia_free(W); ia_free(B); ia_free(C0); ia_free(C1); ia_free(C2);
    }
}

/* The bf16 pair packers: the SIMD versions give the reference's words, and the words are the
 * rounded values at the documented places. */
/* vdpbf16ps reads subnormal inputs and writes subnormal results as signed zeros (DAZ, FTZ), which the
 * AVX2 emulation gets from MXCSR: products of order 1e-40 (every step's result subnormal: flushed),
 * and a row of raw subnormal bf16 inputs against large weights (read as zero: the sum is zero). Each family
 * against the reference bit for bit; where the CPU has AVX512_BF16 the instruction itself is among
 * them, so the reference's reading of the instruction is checked too. */
static void test_gemm_bf16_subnormal(void **st) {
    (void)st;
    ia_rng r;
    ia_rng_seed(&r, 23);
    enum { M = 4, N = 20, K = 10, lda = 12, ldb = N, ldc = N };
    uint16_t A16[M * lda];
    float W[K * N], C1[M * ldc], C2[M * ldc];
    uint32_t B[(K / 2) * ldb];
    for (int m = 0; m < M; m++)
        for (int k = 0; k < lda; k++) {
            const float v = m < 2 ? 3e-20f * ia_rng_normal(&r) : ia_rng_normal(&r);
            A16[m * lda + k] = k >= K ? 0 : m == 3 ? (uint16_t)(0x0040u | (k & 1) << 15) : ia_fp32_to_bf16_cvtne(v);
        }
    for (int i = 0; i < K * N; i++) W[i] = (i % 2 ? 2e-20f : 1e10f) * ia_rng_normal(&r);
    tr_pack_bf16_rows_ref(B, ldb, W, N, K, N);
    memset(C2, 0, sizeof C2);
    tr_gemm_bf16_ref(M, N, K, A16, lda, B, ldb, C2, ldc, false);
    int flushed = 0;
    for (int i = 0; i < 2 * ldc; i++) flushed += C2[i] == 0.0f;
    assert_true(flushed > 0); /* the tiny rows' tiny columns */
    for (int n = 0; n < N; n++) assert_true(C2[3 * ldc + n] == 0.0f); /* the subnormal row */
    for (int f = 0; f < 3; f++) {
        if (!ia_kernel_force(bf16_fams[f])) continue;
        for (int acc = 0; acc < 2; acc++) {
            for (int i = 0; i < M * ldc; i++) C1[i] = acc ? 1e-39f : 0.0f; /* a subnormal C: added as is */
            memcpy(C2, C1, sizeof C1);
            tr_gemm_bf16(M, N, K, A16, lda, B, ldb, C1, ldc, acc);
            tr_gemm_bf16_ref(M, N, K, A16, lda, B, ldb, C2, ldc, acc);
            if (memcmp(C1, C2, sizeof C1) != 0) fail_msg("bf16 gemm with subnormals (%s, acc %d): not the reference's bits", bf16_fams[f], acc);
        }
        print_message("# bf16 gemm with subnormals (%s): ok\n", bf16_fams[f]);
    }
    ia_kernel_force(NULL);
}

static void pack_bf16_case(void) {
    ia_rng r;
    ia_rng_seed(&r, 22);
    const int shapes[][2] = {{64, 576}, {16, 32}, {37, 50}, {64, 14}, {5, 100}, {17, 66}, {33, 37}, {16, 1}};
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        const int rows = shapes[i][0], K = shapes[i][1], ldw = K + 3, np = (K + 1) / 2; /* odd K: a half pair */
        float *W = falloc((size_t)rows * ldw);
        for (size_t j = 0; j < (size_t)rows * ldw; j++) W[j] = bf16_in(&r, (int)j);
        W[0] = NAN; /* quieted */
        if (rows * ldw > 9) W[9] = -INFINITY, W[8] = -0.0f;
        uint32_t *P1 = ia_calloc((size_t)np * 64, 4), *P2 = ia_calloc((size_t)np * 64, 4);
        assert_non_null(P1); assert_non_null(P2);
        tr_pack_bf16_t(P1, 64, W, ldw, rows, K);
        tr_pack_bf16_t_ref(P2, 64, W, ldw, rows, K);
        for (int p = 0; p < np; p++) {
            assert_memory_equal(P1 + (size_t)p * 64, P2 + (size_t)p * 64, (size_t)rows * 4);
            for (int rr = 0; rr < rows; rr++) {
                const uint32_t w = P2[(size_t)p * 64 + rr];
                assert_true((uint16_t)w == ia_fp32_to_bf16_cvtne(W[(size_t)rr * ldw + 2 * p]));
                assert_true((uint16_t)(w >> 16) == (2 * p + 1 < K ? ia_fp32_to_bf16_cvtne(W[(size_t)rr * ldw + 2 * p + 1]) : 0));
            }
        }
        /* rows of W as B rows: pairs of rows (odd counts: a zero high half last), K columns */
        const int pairs = (rows + 1) / 2;
        uint32_t *Q1 = ia_calloc((size_t)pairs * ldw + 1, 4), *Q2 = ia_calloc((size_t)pairs * ldw + 1, 4);
        assert_non_null(Q1); assert_non_null(Q2);
        tr_pack_bf16_rows(Q1, ldw, W, ldw, rows, K);
        tr_pack_bf16_rows_ref(Q2, ldw, W, ldw, rows, K);
        assert_memory_equal(Q1, Q2, ((size_t)pairs * ldw + 1) * 4);
        for (int p = 0; p < pairs; p++)
            for (int n = 0; n < K; n++) {
                const uint32_t w = Q2[(size_t)p * ldw + n];
                assert_true((uint16_t)w == ia_fp32_to_bf16_cvtne(W[(size_t)(2 * p) * ldw + n]));
                assert_true((uint16_t)(w >> 16) == (2 * p + 1 < rows ? ia_fp32_to_bf16_cvtne(W[(size_t)(2 * p + 1) * ldw + n]) : 0));
            }
        /* rows to bf16 (odd K: a zero pad after each row) */
        const int ld16 = ((K + 1) & ~1) + 2;
        uint16_t *H1 = ia_malloc((size_t)rows * ld16 * 2), *H2 = ia_malloc((size_t)rows * ld16 * 2);
        assert_non_null(H1); assert_non_null(H2);
        memset(H1, 0x5A, (size_t)rows * ld16 * 2);
        memset(H2, 0x5A, (size_t)rows * ld16 * 2);
        tr_bf16_rows(H1, ld16, W, ldw, rows, K);
        tr_bf16_rows_ref(H2, ld16, W, ldw, rows, K);
        assert_memory_equal(H1, H2, (size_t)rows * ld16 * 2);
        for (int rr = 0; rr < rows; rr++) {
            for (int k = 0; k < K; k++) assert_true(H2[(size_t)rr * ld16 + k] == ia_fp32_to_bf16_cvtne(W[(size_t)rr * ldw + k]));
            if (K % 2) assert_true(H2[(size_t)rr * ld16 + K] == 0);
            assert_true(H2[(size_t)rr * ld16 + ld16 - 1] == 0x5A5A); /* nothing past the row (and its pad) */
        }
        ia_free(H1); ia_free(H2);
        ia_free(W); ia_free(P1); ia_free(P2); ia_free(Q1); ia_free(Q2);
    }
}

static void test_pack_bf16_vs_ref(void **st) {
    (void)st;
    for (int f = 0; f < 3; f++) {
        if (!ia_kernel_force(bf16_fams[f])) continue;
        pack_bf16_case();
        print_message("# bf16 packing (%s): ok\n", bf16_fams[f]);
    }
    ia_kernel_force(NULL);
}

/* The vectorised row kernels of each family the CPU has (exp polynomial: within a few ulp of expf)
 * against the references. */
static void row_kernels_case(void) {
    ia_rng r;
    ia_rng_seed(&r, 12);
    const int nk = 45;
    float s1[45], s2[45], p1[45], p2[45];
    for (int nv = 1; nv <= nk; nv += 11) {
        fill(s1, nk, &r, 3);
        memcpy(s2, s1, sizeof s1);
        float m1, m2;
        float z1 = tr_softmax_row(s1, nv, nk, 0.3f, &m1), z2 = tr_softmax_row_ref(s2, nv, nk, 0.3f, &m2);
        assert_true(m1 == m2);
        assert_float_equal(z1, z2, 1e-5 * z2);
        assert_true(rel_diff(s1, s2, nk) < 1e-6);
        for (int j = nv; j < nk; j++) assert_true(s1[j] == 0);
        fill(s1, nk, &r, 3); fill(p1, nk, &r, 1);
        memcpy(s2, s1, sizeof s1); memcpy(p2, p1, sizeof p1);
        tr_attn_bwd_row(s1, p1, nv, nk, 0.3f, 2.5f, 0.1f);
        tr_attn_bwd_row_ref(s2, p2, nv, nk, 0.3f, 2.5f, 0.1f);
        assert_true(rel_diff(s1, s2, nk) < 1e-6);
        assert_true(rel_diff(p1, p2, nk) < 1e-6);
    }
    enum { V = 1000 };
    float *x = falloc(V), *o1 = falloc(V), *o2 = falloc(V);
    fill(x, V, &r, 20); /* exp down to about -120: underflow handled */
    tr_scaled_exp(o1, x, V, 30.0f, 0.5f);
    tr_scaled_exp_ref(o2, x, V, 30.0f, 0.5f);
    assert_true(rel_diff(o1, o2, V) < 1e-6);
    for (int i = 0; i < V; i++) assert_true(fabsf(o1[i] - o2[i]) <= 1e-6f * o2[i] + 1e-37f);
    /* SwiGLU backward (g over +-40: saturated sigmoids included; the forward is ia_swiglu, test_tensor) */
    float *u = falloc(V), *dh = falloc(V), *dg1 = falloc(V), *dg2 = falloc(V), *du1 = falloc(V), *du2 = falloc(V);
    fill(x, V, &r, 8); fill(u, V, &r, 1); fill(dh, V, &r, 1); fill(dg1, V, &r, 1); fill(du1, V, &r, 1);
    memcpy(dg2, dg1, V * sizeof(float)); memcpy(du2, du1, V * sizeof(float));
    tr_swiglu_bwd(dg1, du1, dh, x, u, V - 3);
    tr_swiglu_bwd_ref(dg2, du2, dh, x, u, V - 3);
    assert_true(rel_diff(dg1, dg2, V) < 1e-6);
    assert_true(rel_diff(du1, du2, V) < 1e-6);
    ia_free(x); ia_free(o1); ia_free(o2); ia_free(u); ia_free(dh); ia_free(dg1); ia_free(dg2); ia_free(du1); ia_free(du2);
}

static void test_row_kernels_vs_ref(void **st) {
    (void)st;
    static const char *const fams[] = {"scalar", "avx2", "avx512"};
    for (int f = 0; f < 3; f++) {
        if (!ia_kernel_force(fams[f])) continue;
        row_kernels_case();
        print_message("# row kernels (%s): ok\n", fams[f]);
    }
    ia_kernel_force(NULL);
}

/* The blocked attention (tr_gemm + row kernels) against the per-(t, h) reference: forward outputs,
 * lse and every gradient, with segments of several lengths (blocks, tails) and GQA groups. */
static void test_attention_vs_ref(void **st) {
    (void)st;
    ia_rng r;
    ia_rng_seed(&r, 13);
    const int cfg[][3] = {{4, 2, 8}, {9, 3, 64}, {6, 1, 40}, {2, 2, 16}}; /* H, Hkv, D */
    const int N = 150;
    int32_t start[150];
    for (int t = 0; t < N; t++) start[t] = t < 100 ? 0 : t < 103 ? 100 : 103; /* 100, 3 and 47 tokens */
    for (size_t c = 0; c < sizeof cfg / sizeof *cfg; c++) {
        const int H = cfg[c][0], Hkv = cfg[c][1], D = cfg[c][2];
        size_t nq = (size_t)N * H * D, nk = (size_t)N * Hkv * D;
        float *q = falloc(nq), *k = falloc(nk), *v = falloc(nk), *go = falloc(nq), *ws = falloc(tr_attention_ws_floats(N, H, Hkv, D));
        float *o1 = falloc(nq), *o2 = falloc(nq), *l1 = falloc((size_t)N * H), *l2 = falloc((size_t)N * H);
        float *dq1 = falloc(nq), *dq2 = falloc(nq), *dk1 = falloc(nk), *dk2 = falloc(nk), *dv1 = falloc(nk), *dv2 = falloc(nk);
        float *delta = falloc((size_t)N * H);
        fill(q, nq, &r, 1); fill(k, nk, &r, 1); fill(v, nk, &r, 1); fill(go, nq, &r, 1);
        tr_attention_forward(o1, l1, q, k, v, start, N, H, Hkv, D, ws);
        tr_attention_forward_ref(o2, l2, q, k, v, start, N, H, Hkv, D, ws);
        tr_attention_backward(dq1, dk1, dv1, go, q, k, v, o1, l1, start, N, H, Hkv, D, delta, ws);
        tr_attention_backward_ref(dq2, dk2, dv2, go, q, k, v, o2, l2, start, N, H, Hkv, D, delta);
        double e[5] = {rel_diff(o1, o2, nq), rel_diff(l1, l2, (size_t)N * H), rel_diff(dq1, dq2, nq),
                       rel_diff(dk1, dk2, nk), rel_diff(dv1, dv2, nk)};
        print_message("# attention H %d Hkv %d D %d vs reference: o %.1e lse %.1e dq %.1e dk %.1e dv %.1e\n", H, Hkv, D,
                      e[0], e[1], e[2], e[3], e[4]);
        for (int i = 0; i < 5; i++) assert_true(e[i] < 2e-5);
        ia_free(q); ia_free(k); ia_free(v); ia_free(go); ia_free(ws); ia_free(o1); ia_free(o2); ia_free(l1); ia_free(l2);
        ia_free(dq1); ia_free(dq2); ia_free(dk1); ia_free(dk2); ia_free(dv1); ia_free(dv2); ia_free(delta);
    }
}

/* ---- SwiGLU and cross-entropy ---------------------------------------------------------------- */
typedef struct { size_t n; float *g, *u, *h, *R; } glu_ctx;
static double glu_loss(void *p) {
    glu_ctx *c = p;
    tr_swiglu_forward(c->h, c->g, c->u, c->n);
    return dotd(c->h, c->R, c->n);
}
static void test_fd_swiglu(void **st) {
    (void)st;
    ia_rng r;
    ia_rng_seed(&r, 7);
    glu_ctx c = {.n = 50};
    c.g = falloc(c.n); c.u = falloc(c.n); c.h = falloc(c.n); c.R = falloc(c.n);
    fill(c.g, c.n, &r, 2); fill(c.u, c.n, &r, 1); fill(c.R, c.n, &r, 1);
    float *dg = falloc(c.n), *du = falloc(c.n);
    tr_swiglu_backward(dg, du, c.R, c.g, c.u, c.n);
    CHECK_FD("swiglu dg", c.g, c.n, dg, glu_loss, &c, 1e-2f, 1);
    CHECK_FD("swiglu du", c.u, c.n, du, glu_loss, &c, 1e-2f, 1);
    ia_free(c.g); ia_free(c.u); ia_free(c.h); ia_free(c.R); ia_free(dg); ia_free(du);
}

typedef struct { int N, V; float *l, *loss; int32_t *tgt; float *w; } ce_ctx;
static double ce_loss(void *p) {
    ce_ctx *c = p;
    tr_crossentropy_forward(c->loss, c->l, c->tgt, c->N, c->V);
    return dotd(c->loss, c->w, (size_t)c->N);
}
static void test_fd_crossentropy(void **st) {
    (void)st;
    ia_rng r;
    ia_rng_seed(&r, 8);
    int32_t tgt[4] = {3, -1, 0, 9};
    float w[4] = {0.5f, 0.5f, 1.5f, 0.25f};
    ce_ctx c = {.N = 4, .V = 10};
    c.tgt = tgt;
    c.w = w;
    c.l = falloc(40); c.loss = falloc(4);
    fill(c.l, 40, &r, 2);
    float *dl = falloc(40);
    memcpy(dl, c.l, 40 * sizeof(float));
    tr_crossentropy_softmax_backward(dl, w, tgt, c.N, c.V);
    CHECK_FD("cross-entropy dlogits", c.l, 40, dl, ce_loss, &c, 1e-3f, 1);
    for (int v = 0; v < 10; v++) assert_float_equal(dl[10 + v], 0, 0); /* no target: no gradient */
    ia_free(c.l); ia_free(c.loss); ia_free(dl);
}

/* ---- the whole model --------------------------------------------------------------------------- */

/* A batch of two examples packed: [1 403 407 261 378] and [1 291 400 428]. */
static void two_examples(tr_batch *b) {
    static const int32_t tok[9] = {1, 403, 407, 261, 378, 1, 291, 400, 428};
    assert_int_equal(tr_batch_alloc(b, 9), IA_OK);
    for (int t = 0; t < 9; t++) {
        b->tok[t] = tok[t];
        b->pos[t] = t < 5 ? t : t - 5;
        b->start[t] = t < 5 ? 0 : 5;
        b->target[t] = (t != 4 && t != 8 && t >= 1) ? tok[t + 1] : -1;
    }
    b->N = 9;
    b->n_loss = 6;
}

/* The training forward computes the inference pass's function: logits of each packed example
 * equal those of decoding it alone through ia_context_decode, to f32 rounding. The trainer's own
 * kernels (tr_gemm for the projections, blocked attention, both with fused multiply-adds) sum in
 * another order than the inference kernels, so the logits (|l| up to ~26 here, where one ulp is
 * 2e-6) differ by several ulps: the bound is 2e-6 of the largest logit (a wrong index or a dropped
 * term gives differences of order 1). */
static void test_train_forward_equals_inference(void **st) {
    (void)st;
    ia_error err = {0};
    ia_model *m = ia_model_load(STORIES, &err);
    assert_non_null(m);
    tr_model tm;
    tr_model_opts mo = {IA_TRAIN_LORA, 4, 8, 0, 127, 9, 16, false, false};
    assert_int_equal(tr_model_init(&tm, m, &mo, &err), IA_OK);
    assert_int_equal(tr_model_init_params(&tm, 1, &err), IA_OK); /* B = 0: the adapter is a no-op */
    tr_batch b;
    two_examples(&b);
    const int V = m->hp.n_vocab;
    float *lt = falloc((size_t)9 * V);
    tr_model_logits(&tm, &b, lt);
    ia_context *c = ia_context_init(m, 1, 16, 16, &err);
    assert_non_null(c);
    for (int e = 0; e < 2; e++) {
        int off = e ? 5 : 0, n = e ? 4 : 5;
        int32_t pos[5], slot[5] = {0};
        bool lg[5];
        for (int i = 0; i < n; i++) { pos[i] = i; lg[i] = true; }
        ia_batch ib = {n, b.tok + off, pos, slot, lg};
        assert_int_equal(ia_context_decode(c, &ib, &err), IA_OK);
        const float *li = ia_context_logits(c);
        double md = 0, ml = 0;
        for (size_t i = 0; i < (size_t)n * V; i++) {
            md = fmax(md, fabs(li[i] - lt[(size_t)off * V + i]));
            ml = fmax(ml, fabs(li[i]));
        }
        print_message("# example %d: max |train - inference| logit %.3g (max |logit| %.3g)\n", e, md, ml);
        assert_true(md <= 2e-6 * ml);
    }
    ia_context_free(c);
    ia_free(lt);
    tr_batch_free(&b);
    tr_model_free(&tm);
    ia_model_free(m);
}

/* One LoRA step of stories260K on two examples (rank 4, dropout 0.1, perturbed parameters, seed 5):
 * the gradients (n of them, ia_free them) and the loss, on `threads` threads and the kernel family
 * `kernel` (NULL: the default). */
static float *model_grads(const ia_model *m, const tr_batch *b, bool recompute, bool bf16, int threads,
                          const char *kernel, size_t *n, float *loss) {
    ia_error err = {0};
    assert_true(ia_kernel_force(kernel));
    tr_model tm;
    tr_model_opts mo = {IA_TRAIN_LORA, 4, 8, 0.1f, 127, 9, 16, recompute, bf16};
    assert_int_equal(tr_model_init(&tm, m, &mo, &err), IA_OK);
    tr_model_init_params(&tm, 1, &err);
    for (size_t i = 0; i < tm.P.n; i++) tm.P.p[i] += 0.01f * (float)((i * 7919) % 13) - 0.06f;
    tm.seed = 5;
    ia_set_threads(threads);
    tr_params_zero_grad(&tm.P);
    const double l = tr_model_step(&tm, b, 1.0f / 6, true);
    if (loss) *loss = (float)l;
    *n = tm.P.n;
    float *g = falloc(*n);
    memcpy(g, tm.P.g, *n * sizeof(float));
    tr_model_free(&tm);
    ia_set_threads(0);
    ia_kernel_force(NULL);
    return g;
}

/* Gradients do not depend on the thread count, and recomputation gives the same bits. */
static void test_model_grad_invariance(void **st) {
    (void)st;
    ia_error err = {0};
    ia_model *m = ia_model_load(STORIES, &err);
    assert_non_null(m);
    tr_batch b;
    two_examples(&b);
    size_t n;
    float *g0 = model_grads(m, &b, false, false, 1, NULL, &n, NULL);
    float *g1 = model_grads(m, &b, false, false, 2, NULL, &n, NULL);
    float *g2 = model_grads(m, &b, true, false, 1, NULL, &n, NULL);
    assert_memory_equal(g0, g1, n * sizeof(float));
    assert_memory_equal(g0, g2, n * sizeof(float));
    ia_free(g0); ia_free(g1); ia_free(g2);
    tr_batch_free(&b);
    ia_model_free(m);
}

/* The whole trainer on the reference kernels (IA_KERNEL=scalar) against the AVX-512 ones: the
 * same gradients to rounding. */
static void test_model_grad_kernels(void **st) {
    (void)st;
    if (!tr_kern_avx512()) skip();
    ia_error err = {0};
    ia_model *m = ia_model_load(STORIES, &err);
    assert_non_null(m);
    tr_batch b;
    two_examples(&b);
    size_t n;
    float *g0 = model_grads(m, &b, false, false, 1, NULL, &n, NULL);
    float *g1 = model_grads(m, &b, false, false, 1, "scalar", &n, NULL);
    double e = rel_diff(g0, g1, n);
    print_message("# model gradients, avx512 vs reference kernels: rel diff %.2e\n", e);
    assert_true(e < 1e-4);
    ia_free(g0); ia_free(g1);
    tr_batch_free(&b);
    ia_model_free(m);
}

/* bf16 products with the base weights: gradients within bf16 rounding of the f32 ones, the same
 * bits at any thread count, and the loss the same to bf16 precision. */
static void test_model_grad_bf16(void **st) {
    (void)st;
    ia_error err = {0};
    ia_model *m = ia_model_load(STORIES, &err);
    assert_non_null(m);
    tr_batch b;
    two_examples(&b);
    size_t n;
    float loss[3];
    float *g0 = model_grads(m, &b, false, false, 1, NULL, &n, &loss[0]);
    float *g1 = model_grads(m, &b, false, true, 1, NULL, &n, &loss[1]);
    float *g2 = model_grads(m, &b, false, true, 2, NULL, &n, &loss[2]);
    const double e = rel_diff(g1, g0, n);
    print_message("# bf16 products (%s): gradient rel diff to f32 %.2e, loss %.6f vs %.6f\n",
                  tr_kern_bf16() ? "avx512-bf16" : "reference", e, (double)loss[1], (double)loss[0]);
    assert_true(e < 3e-2 && e > 0);
    assert_true(fabs(loss[1] - loss[0]) < 1e-2 * fabs(loss[0]));
    assert_memory_equal(g1, g2, n * sizeof(float));
    assert_true(loss[1] == loss[2]);
    ia_free(g0); ia_free(g1); ia_free(g2);
    tr_batch_free(&b);
    ia_model_free(m);
}

/* ---- data ------------------------------------------------------------------------------------ */

static const char *write_tmp(const char *name, const char *text) {
    static char path[8][256];
    static int k;
    char *p = path[k++ % 8];
    test_tmpfile(p, 256, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return p;
}

/* The masked tokens of each example, decoded: exactly the assistant turns (+ end-of-turn text). */
static char *masked_text(const ia_model *m, const tr_dataset *ds, int e) {
    const tr_example *ex = &ds->ex[e];
    int32_t ids[512];
    int k = 0;
    for (int i = 0; i < ex->n; i++) if (ds->mask[ex->off + i]) ids[k++] = ds->tok[ex->off + i];
    return ia_tokenizer_decode(ia_model_tokenizer(m), ids, k, true);
}

static void test_data_formats(void **st) {
    (void)st;
    ia_error err = {0};
    ia_model *m = ia_model_load(STORIES, &err);
    assert_non_null(m);
    const char *p = write_tmp("fmt.jsonl",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi there\"},{\"role\":\"assistant\",\"content\":\"Hello friend\"}]}\n"
        "\n"
        "{\"conversations\":[{\"from\":\"human\",\"value\":\"Hi there\"},{\"from\":\"gpt\",\"value\":\"Hello friend\"}]}\n"
        "{\"prompt\":\"Hi there\",\"completion\":\" Hello friend\"}\n"
        "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Hi \"},{\"type\":\"text\",\"text\":\"there\"}]},"
        "{\"role\":\"assistant\",\"content\":\"Yes\"},{\"role\":\"user\",\"content\":\"Again\"},{\"role\":\"assistant\",\"content\":\"No\"}]}\n");
    tr_dataset ds;
    assert_int_equal(tr_dataset_load(&ds, p, m, "chatml", 512, &err), IA_OK);
    assert_int_equal(ds.n_ex, 4);
    assert_int_equal(ds.ex[3].line, 5);
    char *t0 = masked_text(m, &ds, 0), *t1 = masked_text(m, &ds, 1), *t3 = masked_text(m, &ds, 3);
    print_message("# chatml masked: '%s' | multi-turn: '%s'\n", t0, t3);
    assert_string_equal(t0, t1); /* OpenAI and FastChat give the same example */
    assert_non_null(strstr(t0, "Hello friend<|im_end|>"));
    assert_null(strstr(t0, "Hi there"));
    assert_non_null(strstr(t3, "Yes")); /* both assistant turns, not the user turns */
    assert_non_null(strstr(t3, "No"));
    assert_null(strstr(t3, "Again"));
    ia_free(t0); ia_free(t1); ia_free(t3);
    tr_dataset_free(&ds);
    /* plain (the model has no template): prompt + completion, EOS learned */
    assert_int_equal(tr_dataset_load(&ds, p, m, NULL, 512, &err), IA_OK);
    assert_string_equal(ds.template_name, "plain");
    const tr_example *ex = &ds.ex[2];
    assert_int_equal(ds.tok[ex->off], 1);             /* BOS */
    assert_int_equal(ds.tok[ex->off + ex->n - 1], 2); /* EOS */
    assert_true(ds.mask[ex->off + ex->n - 1]);
    char *t2 = masked_text(m, &ds, 2);
    assert_string_equal(t2, "Hello friend</s>"); /* (decode drops the SPM leading space) */
    ia_free(t2);
    tr_dataset_free(&ds);
    /* truncation keeps the start; an example left without loss tokens is skipped */
    assert_int_equal(tr_dataset_load(&ds, p, m, "plain", 7, &err), IA_OK);
    print_message("# max_len 7: %d examples, %d truncated, %d skipped\n", ds.n_ex, ds.n_truncated, ds.n_skipped);
    assert_true(ds.n_truncated > 0);
    assert_int_equal(ds.n_ex + ds.n_skipped, 4);
    for (int i = 0; i < ds.n_ex; i++) assert_true(ds.ex[i].n <= 7 && ds.ex[i].n_loss > 0);
    tr_dataset_free(&ds);
    ia_model_free(m);
}

static void test_data_errors(void **st) {
    (void)st;
    ia_error err = {0};
    ia_model *m = ia_model_load(STORIES, &err);
    assert_non_null(m);
    struct { const char *text, *want; } cases[] = {
        {"{\"prompt\":\"a\",\"completion\":\"b\"}\n[1,2]\n", "bad.jsonl:2: expected a JSON object"},
        {"{\"prompt\":\"a\"}\n", "bad.jsonl:1: \"prompt\" and \"completion\" must both be present"},
        {"\n\n{\"messages\":[{\"role\":\"user\",\"content\":5}]}\n", "bad.jsonl:3: messages[0]: \"content\" must be a string"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}\n", "bad.jsonl:1: no non-empty assistant message"},
        {"{\"text\":\"x\"}\n", "bad.jsonl:1: expected \"messages\""},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"assistant\",\"content\":\"y\"}]\n",
         "bad.jsonl:1: malformed JSON"},
        {"", "no training examples"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *p = write_tmp("bad.jsonl", cases[i].text);
        tr_dataset ds;
        assert_int_not_equal(tr_dataset_load(&ds, p, m, NULL, 64, &err), IA_OK);
        if (!strstr(err.msg, cases[i].want)) fail_msg("case %zu: '%s' lacks '%s'", i, err.msg, cases[i].want);
    }
    tr_dataset ds;
    assert_int_equal(tr_dataset_load(&ds, write_tmp("x.jsonl", "{\"prompt\":\"a\",\"completion\":\"b\"}\n"), m, "nope", 64, &err),
                     IA_ERR_ARG);
    ia_model_free(m);
}

/* Packing vs padding: the same examples, different grouping; every example exactly once per epoch. */
static void test_plan(void **st) {
    (void)st;
    tr_dataset ds = {0};
    tr_example ex[10];
    for (int i = 0; i < 10; i++) ex[i] = (tr_example){0, 3 + i, 1, i + 1};
    ds.ex = ex;
    ds.n_ex = 10;
    ia_train_opts o = ia_train_opts_default();
    o.epochs = 2;
    o.batch_size = 3;
    o.max_len = 8;
    ia_error err = {0};
    for (int pack = 0; pack < 2; pack++) {
        o.pack = pack;
        tr_plan pl;
        assert_int_equal(tr_plan_build(&pl, &ds, &o, &err), IA_OK);
        if (!pack) assert_int_equal(pl.n_micro, 4);
        for (int e = 0; e < 2; e++) {
            int seen[10] = {0};
            for (int mb = 0; mb < pl.n_micro; mb++) {
                const int *first = pl.mb_first + (size_t)e * 11;
                long tokens = 0;
                for (int i = first[mb]; i < first[mb + 1]; i++) {
                    seen[pl.ex_order[e * 10 + i]]++;
                    tokens += ex[pl.ex_order[e * 10 + i]].n;
                }
                if (pack) assert_true(tokens <= 24 || first[mb + 1] - first[mb] == 1);
                else assert_true(first[mb + 1] - first[mb] <= 3);
            }
            for (int i = 0; i < 10; i++) assert_int_equal(seen[i], 1);
        }
        tr_plan_free(&pl);
    }
}

/* ---- optimizer and checkpoints ------------------------------------------------------------------ */

static void test_schedules(void **st) {
    (void)st;
    ia_train_opts o = ia_train_opts_default();
    o.lr = 1.0f;
    o.warmup_ratio = 0.1f;
    o.schedule = IA_LR_COSINE;
    assert_float_equal(tr_lr_at(&o, 0, 100), 0.1, 1e-6);   /* warm-up: (step+1)/10 */
    assert_float_equal(tr_lr_at(&o, 9, 100), 1.0, 1e-6);
    assert_float_equal(tr_lr_at(&o, 10, 100), 1.0, 1e-6);  /* decay starts at the peak */
    assert_float_equal(tr_lr_at(&o, 99, 100), 0.0, 1e-6);
    assert_float_equal(tr_lr_at(&o, 10 + 89 / 2, 100), 0.5 * (1 + cos(M_PI * 44.0 / 89)), 1e-6);
    o.schedule = IA_LR_LINEAR;
    assert_float_equal(tr_lr_at(&o, 54, 100), 1.0 - 44.0 / 89, 1e-6);
    o.schedule = IA_LR_CONSTANT;
    assert_float_equal(tr_lr_at(&o, 77, 100), 1.0, 1e-6);
}

/* One AdamW step against the formula (PyTorch's AdamW: decoupled decay, bias correction). */
static void test_adamw(void **st) {
    (void)st;
    tr_tensor t[2] = {{"w", {2, 2}, 0, 0}, {"n", {2, 1}, 16, 0}};
    float mem[4 * 32] = {0};
    tr_params P = {2, t, 32, mem, mem, mem + 32, mem + 64, mem + 96};
    P.p[0] = 1.0f; P.g[0] = 0.5f; P.p[16] = 2.0f; P.g[16] = -1.0f;
    ia_train_opts o = ia_train_opts_default();
    o.weight_decay = 0.1f;
    tr_adamw_update(&P, &o, 0.01f, 1, 0.5f);
    /* g' = 0.25; m = 0.025, v = 6.25e-5; mhat = 0.25, vhat = 0.0625 -> step 0.01 * 0.25/0.25 */
    assert_float_equal(P.p[0], 1.0f * (1 - 0.001f) - 0.01f * 0.25f / (0.25f + 1e-8f), 1e-6);
    assert_float_equal(P.p[16], 2.0f + 0.01f, 1e-6); /* vectors are not decayed */
    assert_float_equal(tr_grad_norm(&P), sqrt(0.25 + 1.0), 1e-6);
}

static void test_checkpoint_roundtrip(void **st) {
    (void)st;
    tr_tensor t[1] = {{"a", {3, 2}, 0, 0}};
    float mem[4 * 16], back[4 * 16];
    for (int i = 0; i < 64; i++) mem[i] = (float)i * 0.5f;
    tr_params P = {1, t, 16, mem, mem, mem + 16, mem + 32, mem + 48};
    tr_ckpt_state s = {7, 0xabc, 1.5, 0.25};
    char path[256];
    test_tmpfile(path, sizeof path, "c.ckpt");
    ia_error err = {0};
    assert_int_equal(tr_checkpoint_write(path, &P, &s, &err), IA_OK);
    memset(back, 0, sizeof back);
    tr_params Q = {1, t, 16, back, back, back + 16, back + 32, back + 48};
    tr_ckpt_state r = {0, 0xabc, 0, 0};
    assert_int_equal(tr_checkpoint_read(path, &Q, &r, &err), 1);
    assert_int_equal(r.step, 7);
    assert_true(r.first_loss == 1.5 && r.last_loss == 0.25);
    assert_memory_equal(back, mem, 16 * sizeof(float));          /* params */
    assert_memory_equal(back + 32, mem + 32, 32 * sizeof(float)); /* m, v */
    r.fingerprint = 0xabd;
    assert_int_equal(tr_checkpoint_read(path, &Q, &r, &err), -1);
    assert_non_null(strstr(err.msg, "different run"));
    /* one flipped byte is caught */
    FILE *f = fopen(path, "r+b");
    fseek(f, 70, SEEK_SET);
    fputc(0x55, f);
    fclose(f);
    r.fingerprint = 0xabc;
    assert_int_equal(tr_checkpoint_read(path, &Q, &r, &err), -1);
    assert_non_null(strstr(err.msg, "corrupt"));
    test_tmpfile(path, sizeof path, "absent.ckpt");
    assert_int_equal(tr_checkpoint_read(path, &Q, &r, &err), 0);
}

static void test_targets(void **st) {
    (void)st;
    ia_error err = {0};
    assert_int_equal(tr_parse_targets(NULL, &err), 127u);
    assert_int_equal(tr_parse_targets("q, v,down", &err), (1u << TR_Q) | (1u << TR_V) | (1u << TR_DOWN));
    assert_int_equal(tr_parse_targets("q_proj,attn_output", &err), (1u << TR_Q) | (1u << TR_O));
    assert_int_equal(tr_parse_targets("q,lm_head", &err), 0u);
    assert_non_null(strstr(err.msg, "lm_head"));
}

/* ---- adapters ------------------------------------------------------------------------------------ */

/* Writes a one-matrix adapter with the given metadata / tensor shapes. */
static const char *make_adapter(const char *name, const char *type, const char *arch, const char *tname, int64_t a0,
                                int64_t a1, int64_t b0, int64_t b1) {
    static char path[256];
    test_tmpfile(path, sizeof path, name);
    gguf_writer *w = gguf_writer_init();
    if (arch) gguf_writer_set_str(w, "general.architecture", arch);
    if (type) gguf_writer_set_str(w, "general.type", type);
    gguf_writer_set_str(w, "adapter.type", "lora");
    gguf_writer_set_f32(w, "adapter.lora.alpha", 4.0f);
    static float data[2][64 * 64];
    for (int i = 0; i < 64 * 64; i++) { data[0][i] = 0.01f * (float)(i % 7); data[1][i] = 0.02f * (float)(i % 5) - 0.04f; }
    char n1[128], n2[128];
    snprintf(n1, sizeof n1, "%s.lora_a", tname);
    snprintf(n2, sizeof n2, "%s.lora_b", tname);
    ia_error err = {0};
    int64_t na[2] = {a0, a1}, nb[2] = {b0, b1};
    assert_int_equal(gguf_writer_add_tensor(w, n1, IA_TYPE_F32, 2, na, data[0], &err), IA_OK);
    assert_int_equal(gguf_writer_add_tensor(w, n2, IA_TYPE_F32, 2, nb, data[1], &err), IA_OK);
    assert_int_equal(gguf_writer_write_file(w, path, &err), IA_OK);
    gguf_writer_free(w);
    return path;
}

static void test_adapter_validation(void **st) {
    (void)st;
    ia_error err = {0};
    ia_model *m = ia_model_load(STORIES, &err);
    assert_non_null(m);
    struct { const char *type, *arch, *t; int64_t a0, a1, b0, b1; const char *want; } cases[] = {
        {"adapter", "llama", "blk.1.attn_q.weight", 64, 2, 2, 64, NULL},
        {"model", "llama", "blk.1.attn_q.weight", 64, 2, 2, 64, "expected 'adapter'"},
        {"adapter", "qwen2", "blk.1.attn_q.weight", 64, 2, 2, 64, "does not match"},
        {"adapter", "llama", "blk.1.attn_q.weight", 2, 64, 2, 64, "transposed"},
        {"adapter", "llama", "blk.1.attn_k.weight", 64, 2, 2, 64, "do not fit"}, /* k has 32 rows */
        {"adapter", "llama", "blk.9.attn_q.weight", 64, 2, 2, 64, "supported base matrix"},
        {"adapter", "llama", "output.weight", 64, 2, 2, 512, "supported base matrix"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *p = make_adapter("ad.gguf", cases[i].type, cases[i].arch, cases[i].t, cases[i].a0, cases[i].a1,
                                     cases[i].b0, cases[i].b1);
        int rc = ia_model_lora_add(m, p, 1.0f, &err);
        if (!cases[i].want) { assert_int_equal(rc, IA_OK); continue; }
        assert_int_not_equal(rc, IA_OK);
        if (!strstr(err.msg, cases[i].want)) fail_msg("case %zu: '%s' lacks '%s'", i, err.msg, cases[i].want);
    }
    /* the valid one was added: scale = alpha / r = 2 */
    assert_non_null(m->lora);
    assert_int_equal(m->lora->n, 1);
    assert_float_equal(m->lora->a[0]->mats[1 * IA_LORA_N + IA_LORA_Q].scale, 2.0, 1e-6);
    ia_model_lora_clear(m);
    assert_null(m->lora);
    ia_model_free(m);
}

/* Run-time LoRA keeps the forward batch-invariant: one token at a time == all at once. */
static void test_runtime_lora_batch_invariance(void **st) {
    (void)st;
    ia_error err = {0};
    ia_model *m = ia_model_load(STORIES, &err);
    assert_non_null(m);
    const char *p = make_adapter("ad2.gguf", "adapter", "llama", "blk.2.ffn_down.weight", 172, 2, 2, 64);
    assert_int_equal(ia_model_lora_add(m, p, 0.5f, &err), IA_OK);
    const int V = m->hp.n_vocab, n = 6;
    int32_t tok[6] = {1, 403, 407, 261, 378, 432}, pos[6], slot[6] = {0};
    bool lg[6];
    for (int i = 0; i < n; i++) { pos[i] = i; lg[i] = true; }
    ia_context *c = ia_context_init(m, 1, 16, 16, &err);
    ia_batch b = {n, tok, pos, slot, lg};
    assert_int_equal(ia_context_decode(c, &b, &err), IA_OK);
    float *all = falloc((size_t)n * V);
    memcpy(all, ia_context_logits(c), (size_t)n * V * sizeof(float));
    ia_context *c1 = ia_context_init(m, 1, 16, 1, &err);
    for (int i = 0; i < n; i++) {
        ia_batch b1 = {1, tok + i, pos + i, slot, lg};
        assert_int_equal(ia_context_decode(c1, &b1, &err), IA_OK);
        assert_memory_equal(ia_context_logits(c1), all + (size_t)i * V, (size_t)V * sizeof(float));
    }
    /* and the adapter changes the logits; clearing restores the base */
    ia_model_lora_clear(m);
    assert_int_equal(ia_context_decode(c, &b, &err), IA_OK);
    assert_memory_not_equal(ia_context_logits(c), all, (size_t)n * V * sizeof(float));
    ia_context_free(c);
    ia_context_free(c1);
    ia_free(all);
    ia_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fd_rmsnorm),
        cmocka_unit_test(test_fd_matmul),
        cmocka_unit_test(test_matmul_backward_quant),
        cmocka_unit_test(test_embedding_backward),
        cmocka_unit_test(test_fd_lora),
        cmocka_unit_test(test_fd_rope),
        cmocka_unit_test(test_fd_attention),
        cmocka_unit_test(test_gemm_vs_ref),
        cmocka_unit_test(test_pack_t_vs_ref),
        cmocka_unit_test(test_gemm_bf16_vs_ref),
        cmocka_unit_test(test_gemm_bf16_subnormal),
        cmocka_unit_test(test_pack_bf16_vs_ref),
        cmocka_unit_test(test_row_kernels_vs_ref),
        cmocka_unit_test(test_attention_vs_ref),
        cmocka_unit_test(test_fd_swiglu),
        cmocka_unit_test(test_fd_crossentropy),
        cmocka_unit_test(test_train_forward_equals_inference),
        cmocka_unit_test(test_model_grad_invariance),
        cmocka_unit_test(test_model_grad_kernels),
        cmocka_unit_test(test_model_grad_bf16),
        cmocka_unit_test(test_data_formats),
        cmocka_unit_test(test_data_errors),
        cmocka_unit_test(test_plan),
        cmocka_unit_test(test_schedules),
        cmocka_unit_test(test_adamw),
        cmocka_unit_test(test_checkpoint_roundtrip),
        cmocka_unit_test(test_targets),
        cmocka_unit_test(test_adapter_validation),
        cmocka_unit_test(test_runtime_lora_batch_invariance),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
