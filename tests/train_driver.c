/* train_driver.c — dumps what the trainer computes, for the independent torch reference
 * (tests/ref/train_ref.py) to check: one micro-batch's tokens, the loss and every trainable
 * tensor with its gradient.
 *
 *   train_driver grad MODEL DATA.jsonl lora|full RANK ALPHA TARGETS OUT.bin [recompute] [max_len]
 *   train_driver eval MODEL DATA.jsonl TEMPLATE [ADAPTER[:SCALE] ...]
 *       the inference pass (run-time adapters) over every example: prints "loss_tokens N mean M
 *       max_non_eos X eos_mean E" (EOS targets apart: stories260K never trained its EOS row)
 *   train_driver logits MODEL DATA.jsonl TEMPLATE OUT.f32 [ADAPTER[:SCALE] ...]
 *       logits of every token of the first example ([n][V] f32)
 *   train_driver cmp A.f32 B.f32 TOL      prints max|a-b| / max|b|, exits 1 above TOL
 *
 * LoRA B matrices are set to small random values (not PEFT's zeros) so that the gradients of A are
 * not all zero. The batch packs every example of DATA (each attends only to itself).
 *
 * Dump (little-endian): "IATRGRD1" | i32 method | i32 rank | f32 alpha | i32 N | i32 tok[N] pos[N]
 * start[N] target[N] | f64 loss_sum | f32 dloss_scale | i32 n_tensors | per tensor: i32 name length,
 * name, i64 ne0, i64 ne1, f32 value[ne0*ne1], f32 grad[ne0*ne1]. */
#include "train/train_internal.h"

#include <math.h>
#include <stdlib.h>

static void w32(FILE *f, int32_t v) { fwrite(&v, 4, 1, f); }

static int add_adapters(ia_model *m, int argc, char **argv, int from) {
    ia_error err = {0};
    for (int i = from; i < argc; i++) {
        char path[4096];
        float scale = 1.0f;
        snprintf(path, sizeof path, "%s", argv[i]);
        char *c = strrchr(path, ':');
        if (c) { scale = (float)atof(c + 1); *c = 0; }
        if (ia_model_lora_add(m, path, scale, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
    }
    return 0;
}

/* Inference logits of example e ([n][V]); NULL on error. */
static float *example_logits(ia_model *m, const tr_dataset *ds, int e) {
    const tr_example *ex = &ds->ex[e];
    ia_error err = {0};
    ia_context *c = ia_context_init(m, 1, ex->n, ex->n, &err);
    if (!c) { fprintf(stderr, "%s\n", err.msg); return NULL; }
    int32_t *pos = malloc(sizeof(int32_t) * ex->n), *slot = calloc((size_t)ex->n, sizeof(int32_t));
    bool *lg = malloc((size_t)ex->n);
    for (int i = 0; i < ex->n; i++) { pos[i] = i; lg[i] = true; }
    ia_batch b = {ex->n, ds->tok + ex->off, pos, slot, lg};
    float *out = NULL;
    if (ia_context_decode(c, &b, &err) == IA_OK) {
        size_t n = (size_t)ex->n * ia_model_n_vocab(m);
        out = malloc(n * sizeof(float));
        memcpy(out, ia_context_logits(c), n * sizeof(float));
    } else fprintf(stderr, "%s\n", err.msg);
    free(pos); free(slot); free(lg);
    ia_context_free(c);
    return out;
}

static int cmd_eval(int argc, char **argv, bool dump) {
    ia_error err = {0};
    ia_model *m = ia_model_load(argv[2], &err);
    if (!m) { fprintf(stderr, "%s\n", err.msg); return 1; }
    tr_dataset ds;
    const char *tmpl = strcmp(argv[4], "default") ? argv[4] : NULL;
    if (tr_dataset_load(&ds, argv[3], m, tmpl, 4096, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
    if (add_adapters(m, argc, argv, dump ? 6 : 5)) return 1;
    const int V = ia_model_n_vocab(m);
    if (dump) {
        float *L = example_logits(m, &ds, 0);
        if (!L) return 1;
        FILE *f = fopen(argv[5], "wb");
        fwrite(L, sizeof(float), (size_t)ds.ex[0].n * V, f);
        fclose(f);
        free(L);
    } else {
        int32_t eos = ia_tokenizer_eos(ia_model_tokenizer(m));
        double sum = 0, mx = 0, eos_sum = 0;
        int n = 0, n_eos = 0;
        for (int e = 0; e < ds.n_ex; e++) {
            const tr_example *ex = &ds.ex[e];
            float *L = example_logits(m, &ds, e);
            if (!L) return 1;
            for (int i = 1; i < ex->n; i++) {
                if (!ds.mask[ex->off + i]) continue;
                const float *l = L + (size_t)(i - 1) * V;
                double lmx = -1e30, s = 0;
                for (int v = 0; v < V; v++) if (l[v] > lmx) lmx = l[v];
                for (int v = 0; v < V; v++) s += exp(l[v] - lmx);
                int32_t tk = ds.tok[ex->off + i];
                double nll = lmx + log(s) - l[tk];
                sum += nll;
                n++;
                if (tk == eos) { eos_sum += nll; n_eos++; }
                else if (nll > mx) mx = nll;
            }
            free(L);
        }
        printf("loss_tokens %d mean %.6f max_non_eos %.6f eos_mean %.6f\n", n, sum / n, mx, n_eos ? eos_sum / n_eos : 0.0);
    }
    tr_dataset_free(&ds);
    ia_model_free(m);
    return 0;
}

static float *read_f32(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    float *d = malloc((size_t)sz);
    *n = fread(d, sizeof(float), (size_t)sz / sizeof(float), f);
    fclose(f);
    return d;
}

int main(int argc, char **argv) {
    if (argc >= 5 && !strcmp(argv[1], "eval")) return cmd_eval(argc, argv, false);
    if (argc >= 6 && !strcmp(argv[1], "logits")) return cmd_eval(argc, argv, true);
    if (argc == 5 && !strcmp(argv[1], "cmp")) {
        size_t na, nb;
        float *a = read_f32(argv[2], &na), *b = read_f32(argv[3], &nb);
        if (!a || !b || na != nb || !na) {
            fprintf(stderr, "cannot compare %s and %s\n", argv[2], argv[3]);
            free(a);
            free(b);
            return 1;
        }
        double md = 0, mb = 0;
        for (size_t i = 0; i < na; i++) {
            if (fabs(a[i] - b[i]) > md) md = fabs(a[i] - b[i]);
            if (fabs(b[i]) > mb) mb = fabs(b[i]);
        }
        printf("max_abs_diff %.3g max_abs %.3g rel %.3g\n", md, mb, md / mb);
        free(a);
        free(b);
        return md / mb > atof(argv[4]);
    }
    if (argc < 9 || strcmp(argv[1], "grad")) {
        fprintf(stderr, "usage: train_driver grad MODEL DATA lora|full RANK ALPHA TARGETS OUT [recompute] [max_len]\n");
        return 2;
    }
    ia_set_threads(1);
    ia_error err = {0};
    ia_model *m = ia_model_load(argv[2], &err);
    if (!m) { fprintf(stderr, "%s\n", err.msg); return 1; }
    int max_len = argc > 10 ? atoi(argv[10]) : 64;
    tr_dataset ds;
    if (tr_dataset_load(&ds, argv[3], m, NULL, max_len, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
    ia_train_opts o = ia_train_opts_default();
    o.batch_size = 1 << 20;
    o.epochs = 1;
    o.max_len = max_len;
    o.pack = true;
    tr_plan pl;
    if (tr_plan_build(&pl, &ds, &o, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
    tr_model_opts mo = {0};
    mo.method = !strcmp(argv[4], "full") ? IA_TRAIN_FULL : IA_TRAIN_LORA;
    mo.rank = atoi(argv[5]);
    mo.alpha = (float)atof(argv[6]);
    mo.targets = tr_parse_targets(argv[7], &err);
    mo.max_tokens = pl.max_tokens;
    mo.max_pos = max_len;
    mo.recompute = argc > 9 && !strcmp(argv[9], "recompute");
    tr_model tm;
    if (tr_model_init(&tm, m, &mo, &err) || tr_model_init_params(&tm, 7, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
    if (mo.method == IA_TRAIN_LORA) {
        ia_rng r;
        ia_rng_seed(&r, 11);
        for (int i = 0; i < tm.P.n_tensors; i++) {
            tr_tensor *t = &tm.P.t[i];
            if (strstr(t->name, ".lora_b"))
                for (int64_t k = 0; k < t->ne[0] * t->ne[1]; k++) tm.P.p[t->off + k] = 0.05f * ia_rng_normal(&r);
        }
    }
    tr_batch b;
    tr_batch_alloc(&b, pl.max_tokens);
    tr_plan_batch(&pl, &ds, 0, 0, &b);
    float scale = 1.0f / (float)b.n_loss;
    tr_params_zero_grad(&tm.P);
    double loss = tr_model_step(&tm, &b, scale, true);
    FILE *f = fopen(argv[8], "wb");
    if (!f) { perror(argv[8]); return 1; }
    fwrite("IATRGRD1", 1, 8, f);
    w32(f, (int32_t)mo.method);
    w32(f, mo.rank);
    fwrite(&mo.alpha, 4, 1, f);
    w32(f, b.N);
    fwrite(b.tok, 4, (size_t)b.N, f);
    fwrite(b.pos, 4, (size_t)b.N, f);
    fwrite(b.start, 4, (size_t)b.N, f);
    fwrite(b.target, 4, (size_t)b.N, f);
    fwrite(&loss, 8, 1, f);
    fwrite(&scale, 4, 1, f);
    w32(f, tm.P.n_tensors);
    for (int i = 0; i < tm.P.n_tensors; i++) {
        const tr_tensor *t = &tm.P.t[i];
        w32(f, (int32_t)strlen(t->name));
        fwrite(t->name, 1, strlen(t->name), f);
        fwrite(t->ne, 8, 2, f);
        fwrite(tm.P.p + t->off, 4, (size_t)(t->ne[0] * t->ne[1]), f);
        fwrite(tm.P.g + t->off, 4, (size_t)(t->ne[0] * t->ne[1]), f);
    }
    fclose(f);
    printf("N %d loss tokens %d examples %d mean loss %.6f\n", b.N, b.n_loss, b.n_seq, loss / b.n_loss);
    tr_batch_free(&b);
    tr_model_free(&tm);
    tr_plan_free(&pl);
    tr_dataset_free(&ds);
    ia_model_free(m);
    return 0;
}
