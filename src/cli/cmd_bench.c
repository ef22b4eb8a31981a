/* cmd_bench.c — `iteralign bench`: a model's prefill, decode, batched-generation, scoring and LoRA
 * training speed on this machine and the read bandwidth that bounds decoding; every figure is checked
 * (the fast path against the scalar reference kernels, big batches against small ones) so a wrong
 * kernel cannot post a number. Human-readable lines on stdout, one JSON object per run with --json. */
#include "cli.h"
#include "model/model.h"
#include "tensor/pool.h"
#include "tensor/tensor.h"
#include "train/train.h"

#include <math.h>
#include <stdlib.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#endif

enum { B_BW = 1, B_PP = 2, B_TG = 4, B_BATCH = 8, B_SCORE = 16, B_CHECK = 32, B_TRAIN = 64, B_ALL = 127 };

typedef struct bench_opts {
    const char *model, *json_path, *score_file;
    int threads, pp, tg, npp, ntg, reps, score_ctx, score_chunks, check_tok;
    int train_steps, train_batch, train_len; /* LoRA training: optimizer steps, sequences a step, tokens */
    int npl[16], n_npl;
    unsigned what;
    double tol;       /* reference check: max|Δlogit| / max|logit| allowed (0: the kernel's own) */
    size_t bw_bytes;
} bench_opts;

static void bench_help(FILE *f) {
    fputs("usage: iteralign bench [options] -m MODEL.gguf\n\n"
          "Measures a model on this machine: prefill (pp) and decode (tg) tokens/s, batched generation\n"
          "at several sequence counts, log-likelihood scoring tokens/s (llama-perplexity's protocol) and\n"
          "the memory read bandwidth with the decode speed it allows, and LoRA training tokens/s and peak\n"
          "memory (rank 8 on q,k,v,o,gate,up,down, AdamW). Each figure is checked: logits of\n"
          "the fast kernels against the scalar reference kernels, and big batches against the same tokens\n"
          "decoded in small ones (bit for bit). Tokens are random (seeded), as llama-bench's are.\n\n"
          "options:\n"
          "  -m, --model FILE      model GGUF (not needed for --only bw)\n"
          "  -t, --threads N       threads (default: one per core)\n"
          "  -p, --pp N            prefill prompt length (default 512)\n"
          "  -n, --tg N            tokens decoded one by one (default 128)\n"
          "      --npl LIST        batched generation: sequence counts (default 1,4,16,64)\n"
          "      --npp N           batched generation: prompt tokens per sequence (default 128)\n"
          "      --ntg N           batched generation: new tokens per sequence (default 128)\n"
          "      --score-ctx N     scoring: chunk length; the second half is scored (default 512)\n"
          "      --score-chunks N  scoring: chunks (default 2)\n"
          "      --score-file F    scoring: tokenize this text instead of random tokens\n"
          "  -r, --reps N          repetitions; the median is reported (default 3)\n"
          "      --only LIST       subset of bw,pp,tg,batch,score,check,train (default all)\n"
          "      --train-steps N   training: optimizer steps (default 3; the first is warm-up)\n"
          "      --train-batch N   training: sequences per step (default 2)\n"
          "      --train-len N     training: tokens per sequence (default 256)\n"
          "      --check-tokens N  tokens compared with the reference kernels (default 8)\n"
          "      --tol X           allowed max|dlogit|/max|logit| vs the reference (default 1e-3, the f16\n"
          "                        KV cache's rounding; 5e-2 with int8 or bf16 activations: IA_PRECISION=fast\n"
          "                        on Q8_0/Q4_0/Q4_K/BF16, IA_PRECISION=bf16 on F32/F16 too)\n"
          "      --bw-mib N        bandwidth probe buffer (default 512)\n"
          "      --json FILE       append the results as one JSON object (a line) to FILE\n"
          "  -h, --help            this help\n",
          f);
}

/* ---- helpers ------------------------------------------------------------------------------ */

static int cmp_dbl(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    if (n <= 0) return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_dbl);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int argmax(const float *x, int n) {
    int a = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[a]) a = i;
    return a;
}

/* Threads of this process right now (/proc/self/status), to show the pool does not oversubscribe. */
static int threads_alive(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    int n = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "Threads: %d", &n) == 1) break;
    fclose(f);
    return n;
}

/* Peak resident memory of this process in MiB (VmHWM). */
static double peak_rss_mib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %ld", &kb) == 1) break;
    fclose(f);
    return kb < 0 ? -1 : kb / 1024.0;
}

static bool parse_list(const char *s, int *out, int cap, int *n) {
    *n = 0;
    while (*s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > 4096 || *n >= cap) return false;
        out[(*n)++] = (int)v;
        s = end;
        if (*s == ',') s++;
        else if (*s) return false;
    }
    return *n > 0;
}

/* ---- read bandwidth ------------------------------------------------------------------------- */

/* Sums a slice as `ns` interleaved streams (1: one linear stream; 2-8: several in flight, as the
 * decode kernels read: 8 gave the most here, 52 against 42 GB/s for one), as wide as the CPU allows. */
#if defined(__x86_64__)
__attribute__((target("avx512f"))) static float read_avx512(const float *p, size_t n, int ns) {
    const size_t q = n / (size_t)ns & ~(size_t)63;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < q; i += 64)
        for (int s = 0; s < ns; s++) {
            const float *b = p + (size_t)s * q + i;
            a0 = _mm512_add_ps(a0, _mm512_loadu_ps(b));
            a1 = _mm512_add_ps(a1, _mm512_loadu_ps(b + 16));
            a2 = _mm512_add_ps(a2, _mm512_loadu_ps(b + 32));
            a3 = _mm512_add_ps(a3, _mm512_loadu_ps(b + 48));
        }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}
#endif

static float read_plain(const float *p, size_t n, int ns) {
    (void)ns;
    float a[16] = {0};
    for (size_t i = 0; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) a[j] += p[i + j];
    float s = 0;
    for (int j = 0; j < 16; j++) s += a[j];
    return s;
}

static float read_slice(const float *p, size_t n, int ns) {
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx512f")) return read_avx512(p, n, ns);
#endif
    return read_plain(p, n, ns);
}

/* GB/s of `bytes` read by `nth` threads (each its own contiguous slice) as 1, 2, 4 or 8 streams per
 * thread: the median of `reps` passes for each, and the best of those medians, so the decode limit
 * derived from it is not flattering and one lucky pass (79 against 48-50 GB/s once here) cannot
 * set it. */
static double bw_probe(size_t bytes, int nth, int reps) {
    const size_t n = bytes / sizeof(float);
    float *buf = ia_malloc(n * sizeof(float));
    if (!buf) return 0;
    /* every page different: pages of equal content may be merged by the host (KSM), and reads of
     * one shared page come from cache (a first version of this probe reported 83 GB/s so) */
    for (size_t i = 0; i < n; i++) buf[i] = (float)((i * 2654435761u) >> 8 & 0xFFFFF);
    double best = 0, g[64];
    if (reps > 64) reps = 64;
    volatile float sink = 0;
    for (int ns = 1; ns <= 8; ns *= 2) {
        for (int r = 0; r < reps; r++) {
            float tot = 0;
            const double t0 = ia_time_now();
#ifdef _OPENMP
#pragma omp parallel num_threads(nth) reduction(+ : tot)
            {
                const int nt = omp_get_num_threads(), id = omp_get_thread_num();
                const size_t per = n / (size_t)nt;
                tot += read_slice(buf + per * (size_t)id, per, ns);
            }
#else
            (void)nth;
            tot = read_slice(buf, n, ns);
#endif
            const double dt = ia_time_now() - t0;
            sink += tot;
            g[r] = (double)bytes / dt / 1e9;
        }
        const double m = median(g, reps);
        if (m > best) best = m;
    }
    (void)sink;
    ia_free(buf);
    return best;
}

/* ---- model runs ----------------------------------------------------------------------------- */

typedef struct brun {
    ia_model *m;
    int V;
    int32_t *tok, *pos, *slot; /* batch arrays, sized for the largest batch */
    bool *lg;
    int cap;
} brun;

static bool brun_reserve(brun *r, int n) {
    if (n <= r->cap) return true;
    ia_free(r->tok); ia_free(r->pos); ia_free(r->slot); ia_free(r->lg);
    r->tok = ia_malloc(sizeof(int32_t) * (size_t)n);
    r->pos = ia_malloc(sizeof(int32_t) * (size_t)n);
    r->slot = ia_malloc(sizeof(int32_t) * (size_t)n);
    r->lg = ia_malloc(sizeof(bool) * (size_t)n);
    r->cap = (r->tok && r->pos && r->slot && r->lg) ? n : 0;
    return r->cap > 0;
}

/* Decodes ids[0..n) of one slot from position p0 in batches of `chunk`; logits for every token when
 * all_logits, else only for the last. Returns the context's logits of the last batch. */
static const float *run_seq(brun *r, ia_context *c, int slot, const int32_t *ids, int n, int p0, int chunk,
                            bool all_logits, ia_error *err) {
    if (!brun_reserve(r, chunk)) { ia_error_set(err, IA_ERR_NOMEM, "bench: out of memory"); return NULL; }
    for (int i = 0; i < n; i += chunk) {
        const int nb = n - i < chunk ? n - i : chunk;
        for (int j = 0; j < nb; j++) {
            r->tok[j] = ids[i + j];
            r->pos[j] = p0 + i + j;
            r->slot[j] = slot;
            r->lg[j] = all_logits || i + j == n - 1;
        }
        ia_batch b = {nb, r->tok, r->pos, r->slot, r->lg};
        if (ia_context_decode(c, &b, err) != IA_OK) return NULL;
    }
    return ia_context_logits(c);
}

/* max|a - b| / max|b| over n values */
static double rel_diff(const float *a, const float *b, size_t n) {
    double md = 0, mx = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= md)) md = d; /* NaN sticks */
        if (fabs((double)b[i]) > mx) mx = fabs((double)b[i]);
    }
    return mx > 0 ? md / mx : md;
}

static void rand_ids(ia_rng *g, int32_t *ids, int n, int V) {
    for (int i = 0; i < n; i++) ids[i] = (int32_t)(ia_rng_next(g) % (uint64_t)V);
}

static json_t *jcheck(bool ok, const char *what, double val) {
    return json_pack("{s:b,s:s,s:f}", "ok", ok, "what", what, "value", val);
}

/* ---- the benchmark -------------------------------------------------------------------------- */

typedef struct bres {
    json_t *root;
    bool all_ok;
} bres;

static void add_fig(bres *R, const char *key, json_t *v) { json_object_set_new(R->root, key, v); }

/* Prefill, decode, batched generation and their check run as generation does, with an f16 KV cache
 * (ia_context_init_f16kv, llama.cpp's default too); scoring keeps the f32 cache of the evaluations. */

/* Prefill: pp tokens in one batch, logits for the last (llama-bench pp). Check: the last row equals,
 * bit for bit, the same prompt with its last 8 tokens decoded one at a time (batch invariance at
 * the measured size; the small-batch path itself is checked against the reference separately). */
static int bench_pp(bres *R, brun *r, const bench_opts *o, ia_rng *g, ia_error *err) {
    ia_context *c = ia_context_init_f16kv(r->m, 1, o->pp, o->pp, err);
    if (!c) return -1;
    int32_t *ids = ia_malloc(sizeof(int32_t) * (size_t)o->pp);
    float *last = ia_malloc(sizeof(float) * (size_t)r->V);
    double t[64];
    int rc = -1, reps = o->reps < 64 ? o->reps : 64;
    if (!ids || !last) { ia_error_set(err, IA_ERR_NOMEM, "bench: out of memory"); goto out; }
    rand_ids(g, ids, o->pp, r->V);
    if (!run_seq(r, c, 0, ids, o->pp, 0, o->pp, false, err)) goto out; /* warm-up: pages, caches */
    for (int i = 0; i < reps; i++) {
        const double t0 = ia_time_now();
        const float *lg = run_seq(r, c, 0, ids, o->pp, 0, o->pp, false, err);
        t[i] = ia_time_now() - t0;
        if (!lg) goto out;
        memcpy(last, lg, sizeof(float) * (size_t)r->V);
    }
    double tps = o->pp / median(t, reps);
    json_t *j = json_pack("{s:i,s:f,s:[]}", "n", o->pp, "tps", tps, "reps_s");
    for (int i = 0; i < reps; i++) json_array_append_new(json_object_get(j, "reps_s"), json_real(t[i]));
    if (o->what & B_CHECK) {
        const int tail = o->pp > 8 ? 8 : o->pp - 1;
        if (tail > 0 && (!run_seq(r, c, 0, ids, o->pp - tail, 0, o->pp, false, err) ||
                         !run_seq(r, c, 0, ids + o->pp - tail, tail, o->pp - tail, 1, false, err)))
            goto out;
        const float *lg = ia_context_logits(c);
        const bool ok = tail == 0 || memcmp(lg, last, sizeof(float) * (size_t)r->V) == 0;
        json_object_set_new(j, "check", jcheck(ok, "last row == same prompt with its last 8 tokens one by one (bitwise)",
                                               ok ? 0.0 : rel_diff(lg, last, (size_t)r->V)));
        if (!ok) R->all_ok = false;
        printf("  pp%-4d %9.1f tokens/s   check %s\n", o->pp, tps, ok ? "ok (bitwise)" : "FAILED");
    } else
        printf("  pp%-4d %9.1f tokens/s\n", o->pp, tps);
    add_fig(R, "pp", j);
    rc = 0;
out:
    ia_free(ids);
    ia_free(last);
    ia_context_free(c);
    return rc;
}

/* Decode: tg tokens one at a time from an empty context, random ones as llama-bench tg feeds (no
 * sampling in the figure: an argmax over a 152k vocabulary alone cost 4% of a 0.5B token). The
 * first check_tok rows of logits are kept for the reference check. */
static int bench_tg(bres *R, brun *r, const bench_opts *o, ia_rng *g, float *keep, int32_t *kept_ids,
                    ia_error *err) {
    ia_context *c = ia_context_init_f16kv(r->m, 1, o->tg + 1, 1, err);
    if (!c) return -1;
    double t[64];
    int reps = o->reps < 64 ? o->reps : 64, rc = -1;
    long allocs = 0;
    if (!brun_reserve(r, 1)) { ia_error_set(err, IA_ERR_NOMEM, "bench: out of memory"); goto out; }
    int32_t first;
    rand_ids(g, &first, 1, r->V);
    for (int rep = -1; rep < reps; rep++) { /* rep -1: warm-up */
        int32_t cur = first;
        const long a0 = ia_mem_alloc_count();
        const double t0 = ia_time_now();
        for (int i = 0; i < o->tg; i++) {
            r->tok[0] = cur;
            r->pos[0] = i;
            r->slot[0] = 0;
            r->lg[0] = true;
            ia_batch b = {1, r->tok, r->pos, r->slot, r->lg};
            if (ia_context_decode(c, &b, err) != IA_OK) goto out;
            const float *lg = ia_context_logits(c);
            if (rep == 0 && i < o->check_tok) {
                memcpy(keep + (size_t)i * r->V, lg, sizeof(float) * (size_t)r->V);
                kept_ids[i] = cur;
            }
            rand_ids(g, &cur, 1, r->V);
        }
        if (rep >= 0) t[rep] = ia_time_now() - t0;
        if (rep >= 0) allocs += ia_mem_alloc_count() - a0;
    }
    double tps = o->tg / median(t, reps);
    json_t *j = json_pack("{s:i,s:f,s:I,s:i,s:[]}", "n", o->tg, "tps", tps, "allocs_in_loop", (json_int_t)allocs,
                          "threads_alive", threads_alive(), "reps_s");
    for (int i = 0; i < reps; i++) json_array_append_new(json_object_get(j, "reps_s"), json_real(t[i]));
    add_fig(R, "tg", j);
    if (allocs) R->all_ok = false;
    printf("  tg%-4d %9.1f tokens/s   (%ld allocations in the loop, %d threads alive)\n", o->tg, tps, allocs,
           threads_alive());
    rc = 0;
out:
    ia_context_free(c);
    return rc;
}

/* Batched generation (llama-batched-bench protocol, a KV cache per sequence): npl sequences each get
 * an npp-token prompt, then ntg steps each decode one token of every sequence (random tokens: the
 * peer samples nothing either).
 * Reported: generated tokens/s over the ntg steps. Check: the logits of the last sequence at the
 * first 2 steps equal, bit for bit, the same sequence run alone. */
static int bench_batch1(bres *R, brun *r, const bench_opts *o, ia_rng *g, int npl, json_t *arr, ia_error *err) {
    const int C = o->npp + o->ntg, V = r->V;
    ia_context *c = ia_context_init_f16kv(r->m, npl, C, npl > o->npp ? npl : o->npp, err);
    if (!c) return -1;
    int rc = -1;
    int32_t *prompts = ia_malloc(sizeof(int32_t) * (size_t)npl * o->npp);
    int32_t *cur = ia_malloc(sizeof(int32_t) * (size_t)npl);
    int32_t *hist = ia_malloc(sizeof(int32_t) * (size_t)(o->npp + 2));
    float *keep = ia_malloc(sizeof(float) * 2 * (size_t)V);
    if (!prompts || !cur || !hist || !keep || !brun_reserve(r, npl > o->npp ? npl : o->npp)) {
        ia_error_set(err, IA_ERR_NOMEM, "bench: out of memory");
        goto out;
    }
    rand_ids(g, prompts, npl * o->npp, V);
    double tp0 = ia_time_now();
    for (int s = 0; s < npl; s++) {
        const float *lg = run_seq(r, c, s, prompts + (size_t)s * o->npp, o->npp, 0, o->npp, false, err);
        if (!lg) goto out;
    }
    rand_ids(g, cur, npl, V);
    const double t_prompt = ia_time_now() - tp0;
    const long a0 = ia_mem_alloc_count();
    const double t0 = ia_time_now();
    for (int i = 0; i < o->ntg; i++) {
        for (int s = 0; s < npl; s++) {
            r->tok[s] = cur[s];
            r->pos[s] = o->npp + i;
            r->slot[s] = s;
            r->lg[s] = true;
        }
        if (i < 2) hist[o->npp + i] = cur[npl - 1];
        ia_batch b = {npl, r->tok, r->pos, r->slot, r->lg};
        if (ia_context_decode(c, &b, err) != IA_OK) goto out;
        const float *lg = ia_context_logits(c);
        if (i < 2) memcpy(keep + (size_t)i * V, lg + (size_t)(npl - 1) * V, sizeof(float) * (size_t)V);
        rand_ids(g, cur, npl, V);
    }
    const double dt = ia_time_now() - t0;
    const long allocs = ia_mem_alloc_count() - a0;
    const double tps = (double)npl * o->ntg / dt;
    json_t *j = json_pack("{s:i,s:i,s:i,s:f,s:f,s:I}", "npl", npl, "npp", o->npp, "ntg", o->ntg, "tps", tps,
                          "prompt_tps", (double)npl * o->npp / t_prompt, "allocs_in_loop", (json_int_t)allocs);
    bool ok = allocs == 0;
    if ((o->what & B_CHECK) && o->ntg >= 2) {
        ia_context_free(c);
        c = ia_context_init_f16kv(r->m, 1, C, o->npp, err);
        if (!c) goto out;
        memcpy(hist, prompts + (size_t)(npl - 1) * o->npp, sizeof(int32_t) * (size_t)o->npp);
        if (!run_seq(r, c, 0, hist, o->npp, 0, o->npp, false, err)) goto out;
        bool same = true;
        for (int i = 0; i < 2; i++) {
            const float *lg = run_seq(r, c, 0, hist + o->npp + i, 1, o->npp + i, 1, false, err);
            if (!lg) goto out;
            if (memcmp(lg, keep + (size_t)i * V, sizeof(float) * (size_t)V) != 0) same = false;
        }
        json_object_set_new(j, "check", jcheck(same, "last sequence == the same sequence alone (bitwise)", 0));
        ok = ok && same;
    }
    if (!ok) R->all_ok = false;
    json_array_append_new(arr, j);
    printf("  batch %2d x (%d+%d) %9.1f generated tokens/s  (prompts %.1f tokens/s)%s\n", npl, o->npp, o->ntg, tps,
           (double)npl * o->npp / t_prompt, (o->what & B_CHECK) ? (ok ? "   check ok (bitwise)" : "   check FAILED") : "");
    rc = 0;
out:
    ia_free(prompts);
    ia_free(cur);
    ia_free(hist);
    ia_free(keep);
    ia_context_free(c);
    return rc;
}

/* Log-likelihood scoring, llama-perplexity's protocol: chunks of score_ctx tokens, each decoded in
 * one batch with logits for its second half, whose next-token log-probabilities are summed. Check:
 * the last row of the first chunk equals the chunk decoded with its last 8 tokens one by one. */
static int bench_score(bres *R, brun *r, const bench_opts *o, ia_rng *g, ia_error *err) {
    const int n = o->score_ctx, V = r->V, first = n / 2;
    int32_t *ids = NULL;
    int n_ids = 0, rc = -1;
    if (o->score_file) {
        FILE *f = fopen(o->score_file, "rb");
        if (!f) { ia_error_set(err, IA_ERR_IO, "bench: cannot open %s", o->score_file); return -1; }
        ia_buf text = {0};
        char buf[65536];
        size_t k;
        while ((k = fread(buf, 1, sizeof buf, f)) > 0) ia_buf_append(&text, buf, k);
        fclose(f);
        n_ids = ia_tokenizer_encode(ia_model_tokenizer(r->m), text.data ? text.data : "", text.len, false, false, &ids, err);
        ia_buf_free(&text);
        if (n_ids < 0) return -1;
    } else {
        n_ids = n * o->score_chunks;
        ids = ia_malloc(sizeof(int32_t) * (size_t)n_ids);
        if (!ids) { ia_error_set(err, IA_ERR_NOMEM, "bench: out of memory"); return -1; }
        rand_ids(g, ids, n_ids, V);
    }
    const int chunks = n_ids / n < o->score_chunks ? n_ids / n : o->score_chunks;
    ia_context *c = NULL;
    float *last = ia_malloc(sizeof(float) * (size_t)V);
    int32_t *chunk = ia_malloc(sizeof(int32_t) * (size_t)n);
    if (!last || !chunk) { ia_error_set(err, IA_ERR_NOMEM, "bench: out of memory"); goto out; }
    if (chunks < 1) { ia_error_set(err, IA_ERR_ARG, "bench: %d tokens of text, less than one chunk of %d", n_ids, n); goto out; }
    c = ia_context_init(r->m, 1, n, n, err);
    if (!c || !brun_reserve(r, n)) goto out;
    const int32_t bos = ia_tokenizer_bos(ia_model_tokenizer(r->m));
    const bool add_bos = ia_tokenizer_add_bos(ia_model_tokenizer(r->m)) && bos >= 0;
    double nll = 0, t_tot = 0;
    int counted = 0;
    for (int ch = -1; ch < chunks; ch++) { /* -1: warm-up on chunk 0 */
        const int cc = ch < 0 ? 0 : ch;
        memcpy(chunk, ids + (size_t)cc * n, sizeof(int32_t) * (size_t)n);
        if (add_bos) chunk[0] = bos; /* as llama-perplexity does */
        const double t0 = ia_time_now();
        for (int j = 0; j < n; j++) {
            r->tok[j] = chunk[j];
            r->pos[j] = j;
            r->slot[j] = 0;
            r->lg[j] = j >= first;
        }
        ia_batch b = {n, r->tok, r->pos, r->slot, r->lg};
        if (ia_context_decode(c, &b, err) != IA_OK) goto out;
        const float *lg = ia_context_logits(c);
        double s = 0;
        for (int j = first; j < n - 1; j++) { /* row j - first predicts token j + 1 */
            const float *l = lg + (size_t)(j - first) * V;
            s += ia_logsumexp(l, V) - (double)l[chunk[j + 1]];
        }
        const double dt = ia_time_now() - t0;
        if (ch == 0) memcpy(last, lg + (size_t)(n - 1 - first) * V, sizeof(float) * (size_t)V);
        if (ch >= 0) {
            nll += s;
            counted += n - 1 - first;
            t_tot += dt;
        }
    }
    const double tps = (double)chunks * n / t_tot, ppl = exp(nll / counted);
    json_t *j = json_pack("{s:i,s:i,s:f,s:f,s:s}", "ctx", n, "chunks", chunks, "tps", tps, "ppl", ppl, "tokens",
                          o->score_file ? "file" : "random");
    bool ok = true;
    if (o->what & B_CHECK) {
        memcpy(chunk, ids, sizeof(int32_t) * (size_t)n);
        if (add_bos) chunk[0] = bos;
        if (!run_seq(r, c, 0, chunk, n - 8, 0, n, false, err) || !run_seq(r, c, 0, chunk + n - 8, 8, n - 8, 1, false, err))
            goto out;
        ok = memcmp(ia_context_logits(c), last, sizeof(float) * (size_t)V) == 0;
        json_object_set_new(j, "check", jcheck(ok, "last row == the chunk with its last 8 tokens one by one (bitwise)", 0));
        if (!ok) R->all_ok = false;
    }
    add_fig(R, "score", j);
    printf("  score ctx %d x %d chunks %9.1f tokens/s  (perplexity %.2f)%s\n", n, chunks, tps, ppl,
           (o->what & B_CHECK) ? (ok ? "   check ok (bitwise)" : "   check FAILED") : "");
    rc = 0;
out:
    ia_free(ids);
    ia_free(last);
    ia_free(chunk);
    ia_context_free(c);
    return rc;
}

/* Reference check: the tokens the timed decode fed (or random ones) through the scalar reference
 * kernels in one batch; the decode rows (one token at a time, fast kernels) and the same tokens as
 * one fast batch must be within tol of it (max|Δlogit| / max|logit| per row), with the same argmax. */
static int bench_check(bres *R, brun *r, const bench_opts *o, const float *keep, const int32_t *kept, int nk,
                       ia_error *err) {
    const int V = r->V, K = nk;
    float *ref = ia_malloc(sizeof(float) * (size_t)K * V), *fast = ia_malloc(sizeof(float) * (size_t)K * V);
    ia_context *c = ia_context_init_f16kv(r->m, 1, K, K, err);
    int rc = -1;
    if (!ref || !fast || !c) { if (c) ia_error_set(err, IA_ERR_NOMEM, "bench: out of memory"); goto out; }
    const char *fam = ia_cpu_kernel_name();
    char fam_s[32];
    snprintf(fam_s, sizeof fam_s, "%s", fam);
    /* int8 or bf16 activations (fast precision, quantised or BF16 weights) move logits by ~1e-2 of their range; f32
     * paths differ from the reference by summation order only, but the f16 KV cache rounds K and V to 11
     * significant bits, so a last-bit difference upstream can move one of them by an f16 ulp (2^-11):
     * 1.5e-4 to 2.9e-4 of the logit range at the 135M and 0.5B shapes, against 1e-4 allowed before the
     * cache was f16 */
    const bool q8 = ia_matmul_uses_q8(r->m->layers[0].w_up.type) || ia_matmul_uses_q8(r->m->output.type);
    const double tol = o->tol > 0 ? o->tol : q8 ? 5e-2 : 1e-3;
    if (!run_seq(r, c, 0, kept, K, 0, K, true, err)) goto out;
    memcpy(fast, ia_context_logits(c), sizeof(float) * (size_t)K * V);
    /* the reference: plain C kernels, f32 activations */
    const int prec = ia_get_precision();
    ia_kernel_force("scalar");
    ia_set_precision(IA_PREC_EXACT);
    const double t0 = ia_time_now();
    const float *lg = run_seq(r, c, 0, kept, K, 0, K, true, err);
    const double t_ref = ia_time_now() - t0;
    ia_kernel_force(NULL);
    ia_set_precision(prec);
    if (!lg) goto out;
    memcpy(ref, lg, sizeof(float) * (size_t)K * V);
    double worst_dec = 0, worst_pre = 0;
    int agree_dec = 0, agree_pre = 0;
    for (int k = 0; k < K; k++) {
        const float *rr = ref + (size_t)k * V;
        const double dd = keep ? rel_diff(keep + (size_t)k * V, rr, (size_t)V) : 0;
        const double dp = rel_diff(fast + (size_t)k * V, rr, (size_t)V);
        if (!(dd <= worst_dec)) worst_dec = dd;
        if (!(dp <= worst_pre)) worst_pre = dp;
        const int ar = argmax(rr, V);
        agree_dec += keep ? argmax(keep + (size_t)k * V, V) == ar : 1;
        agree_pre += argmax(fast + (size_t)k * V, V) == ar;
    }
    /* a near-tie may flip under int8 activations; most rows must still agree */
    const int need = q8 ? K - K / 4 : K;
    const bool ok = worst_dec <= tol && worst_pre <= tol && agree_dec >= need && agree_pre >= need;
    /* the decoded logits come from the tg run (keep); without one only the batch is compared */
    json_t *j = json_pack("{s:b,s:s,s:s,s:b,s:i,s:o,s:f,s:o,s:i,s:f,s:f}", "ok", ok, "kernel", fam_s, "reference",
                          "scalar, f32 activations", "int8_activations", q8, "tokens", K, "decode_rel_diff",
                          keep ? json_real(worst_dec) : json_null(), "batch_rel_diff", worst_pre, "decode_argmax_agree",
                          keep ? json_integer(agree_dec) : json_null(), "batch_argmax_agree", agree_pre, "tol", tol,
                          "ref_seconds", t_ref);
    add_fig(R, "check", j);
    if (!ok) R->all_ok = false;
    char dec_s[64];
    if (keep) snprintf(dec_s, sizeof dec_s, "decode %.2e, ", worst_dec);
    else snprintf(dec_s, sizeof dec_s, "decode not compared (no tg run), ");
    printf("  check vs scalar f32 reference (%d tokens%s): %sbatch %.2e (tol %.0e), argmax ", K,
           q8 ? ", int8/bf16 activations" : "", dec_s, worst_pre, tol);
    if (keep) printf("%d/%d, ", agree_dec, K);
    printf("%d/%d  %s\n", agree_pre, K, ok ? "ok" : "FAILED");
    rc = 0;
out:
    ia_free(ref);
    ia_free(fast);
    ia_context_free(c);
    return rc;
}

/* Bytes of weights one decoded token reads: every layer matrix and the output matrix once (the
 * token embedding contributes one row), plus the f32 norm vectors. */
/* ---- LoRA training ---------------------------------------------------------------------------- */

typedef struct train_rec {
    double tps[64];
    float loss[64], gnorm[64];
    int n;
} train_rec;

static void train_progress(void *ud, const ia_train_progress *p) {
    train_rec *t = ud;
    if (t->n < 64) {
        t->tps[t->n] = p->tokens_per_s;
        t->loss[t->n] = p->loss;
        t->gnorm[t->n] = p->grad_norm;
        t->n++;
    }
}

/* A few LoRA steps through the trainer (ia_train) on examples longer than --train-len (truncated to it,
 * so every sequence is full), in a temporary folder that is removed afterwards. Runs before the model
 * is loaded for inference, so the peak resident memory is the trainer's. The check: finite losses and
 * gradient norms (the trainer's arithmetic is checked against PyTorch by the test suite). bf16: the
 * same with the base-weight products in bf16 (--compute bf16), figure "train_bf16". */
static int bench_train(bres *R, const bench_opts *o, bool bf16, ia_error *err) {
    const char *td = getenv("TMPDIR");
    char dir[4096], data[4200], out[4200];
    snprintf(dir, sizeof dir, "%s/iteralign-bench-XXXXXX", td && *td ? td : "/tmp");
    if (!mkdtemp(dir)) return ia_error_set(err, IA_ERR_IO, "bench: cannot create a folder under %s", td && *td ? td : "/tmp");
    snprintf(data, sizeof data, "%s/data.jsonl", dir);
    snprintf(out, sizeof out, "%s/adapter.gguf", dir);
    int rc = IA_OK;
    FILE *f = fopen(data, "w");
    if (!f) { rc = ia_error_set(err, IA_ERR_IO, "bench: cannot write %s", data); goto clean; }
    static const char *words[] = {"the", "a", "cat", "dog", "ran", "over", "under", "big", "small", "red", "blue",
                                  "green", "house", "tree", "river", "mountain", "quickly", "slowly", "happy", "sun"};
    ia_rng g;
    ia_rng_seed(&g, 99);
    for (int i = 0; i < o->train_steps * o->train_batch; i++) {
        fprintf(f, "{\"prompt\":\"Story %d:\",\"completion\":\"", i);
        for (int w = 0; w < o->train_len * 2; w++) fprintf(f, " %s", words[ia_rng_next(&g) % 20]);
        fputs("\"}\n", f);
    }
    if (fclose(f) != 0) { rc = ia_error_set(err, IA_ERR_IO, "bench: cannot write %s", data); goto clean; }
    ia_train_opts t = ia_train_opts_default();
    t.base_path = o->model;
    t.data_path = data;
    t.out_path = out;
    t.method = IA_TRAIN_LORA;
    t.lora_rank = 8;
    t.lora_alpha = 16;
    t.epochs = 1;
    t.batch_size = o->train_batch;
    t.max_len = o->train_len;
    t.schedule = IA_LR_CONSTANT;
    t.warmup_ratio = 0;
    t.bf16 = bf16;
    train_rec rec = {0};
    t.progress = train_progress;
    t.progress_ud = &rec;
    ia_train_result res;
    if ((rc = ia_train(&t, &res, err)) != IA_OK) goto clean;
    bool ok = rec.n > 0;
    for (int i = 0; i < rec.n; i++) ok = ok && isfinite(rec.loss[i]) && isfinite(rec.gnorm[i]);
    const double tps = rec.n > 1 ? median(rec.tps + 1, rec.n - 1) : rec.n ? rec.tps[0] : 0;
    const double mib = (double)res.peak_bytes / (1024.0 * 1024.0);
    add_fig(R, bf16 ? "train_bf16" : "train", json_pack("{s:f,s:f,s:i,s:i,s:i,s:f,s:f,s:b}", "tps", tps, "peak_mib", mib, "steps", rec.n,
                                  "batch", o->train_batch, "len", o->train_len, "first_loss", (double)res.first_loss,
                                  "final_loss", (double)res.final_loss, "ok", ok));
    if (!ok) R->all_ok = false;
    printf("  train%-5s %7.1f tokens/s   LoRA r8 (q,k,v,o,gate,up,down), %d x %d tokens a step, peak %.0f MiB, "
           "loss %.4f -> %.4f  %s\n", bf16 ? " bf16" : "", tps, o->train_batch, o->train_len, mib, (double)res.first_loss,
           (double)res.final_loss, ok ? "check ok (finite)" : "check FAILED (non-finite loss or gradient)");
clean:
    remove(data);
    remove(out);
    rmdir(dir);
    return rc;
}

static double weight_bytes(const ia_model *m) {
    const ia_hparams *hp = &m->hp;
    double b = 0;
#define WB(w) ((double)ia_matmul_infer_row_bytes((w).type, (w).n_in) * (w).n_out)
    for (int l = 0; l < hp->n_layer; l++) {
        const ia_layer *ly = &m->layers[l];
        b += WB(ly->wq) + WB(ly->wk) + WB(ly->wv) + WB(ly->wo) + WB(ly->w_gate) + WB(ly->w_up) + WB(ly->w_down);
        b += 2.0 * hp->n_embd * sizeof(float);
    }
    b += WB(m->output) + hp->n_embd * sizeof(float);
#undef WB
    return b;
}

int cmd_bench(int argc, char **argv) {
    static const struct option lopts[] = {
        {"model", required_argument, 0, 'm'},      {"threads", required_argument, 0, 't'},
        {"pp", required_argument, 0, 'p'},         {"tg", required_argument, 0, 'n'},
        {"npl", required_argument, 0, 1},          {"npp", required_argument, 0, 2},
        {"ntg", required_argument, 0, 3},          {"score-ctx", required_argument, 0, 4},
        {"score-chunks", required_argument, 0, 5}, {"score-file", required_argument, 0, 6},
        {"reps", required_argument, 0, 'r'},       {"only", required_argument, 0, 7},
        {"check-tokens", required_argument, 0, 8}, {"tol", required_argument, 0, 9},
        {"bw-mib", required_argument, 0, 10},      {"json", required_argument, 0, 11},
        {"train-steps", required_argument, 0, 12}, {"train-batch", required_argument, 0, 13},
        {"train-len", required_argument, 0, 14},   {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    bench_opts o = {0};
    o.pp = 512;
    o.tg = 128;
    o.npp = 128;
    o.ntg = 128;
    o.reps = 3;
    o.score_ctx = 512;
    o.score_chunks = 2;
    o.check_tok = 8;
    o.train_steps = 3;
    o.train_batch = 2;
    o.train_len = 256;
    o.what = B_ALL;
    o.tol = 0;
    o.bw_bytes = (size_t)512 << 20;
    o.npl[0] = 1, o.npl[1] = 4, o.npl[2] = 16, o.npl[3] = 64, o.n_npl = 4;
    int c, mib = 512;
    float tol;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:t:p:n:r:h", lopts, NULL)) != -1) {
        switch (c) {
        case 'm': o.model = optarg; break;
        case 't': if (!cli_parse_int("--threads", optarg, 1, 1024, &o.threads)) return 2; break;
        case 'p': if (!cli_parse_int("--pp", optarg, 2, 1 << 16, &o.pp)) return 2; break;
        case 'n': if (!cli_parse_int("--tg", optarg, 1, 1 << 16, &o.tg)) return 2; break;
        case 1: if (!parse_list(optarg, o.npl, 16, &o.n_npl)) return cli_fail("--npl expects a list like 1,4,16,64"), 2; break;
        case 2: if (!cli_parse_int("--npp", optarg, 1, 1 << 16, &o.npp)) return 2; break;
        case 3: if (!cli_parse_int("--ntg", optarg, 1, 1 << 16, &o.ntg)) return 2; break;
        case 4: if (!cli_parse_int("--score-ctx", optarg, 16, 1 << 16, &o.score_ctx)) return 2; break;
        case 5: if (!cli_parse_int("--score-chunks", optarg, 1, 1 << 16, &o.score_chunks)) return 2; break;
        case 6: o.score_file = optarg; break;
        case 'r': if (!cli_parse_int("--reps", optarg, 1, 64, &o.reps)) return 2; break;
        case 7: {
            o.what = 0;
            char buf[128];
            snprintf(buf, sizeof buf, "%s", optarg);
            for (char *s = strtok(buf, ","); s; s = strtok(NULL, ",")) {
                if (!strcmp(s, "bw")) o.what |= B_BW;
                else if (!strcmp(s, "pp")) o.what |= B_PP;
                else if (!strcmp(s, "tg")) o.what |= B_TG;
                else if (!strcmp(s, "batch")) o.what |= B_BATCH;
                else if (!strcmp(s, "score")) o.what |= B_SCORE;
                else if (!strcmp(s, "check")) o.what |= B_CHECK;
                else if (!strcmp(s, "train")) o.what |= B_TRAIN;
                else return cli_fail("--only: unknown part '%s' (bw,pp,tg,batch,score,check,train)", s), 2;
            }
            break;
        }
        case 8: if (!cli_parse_int("--check-tokens", optarg, 1, 256, &o.check_tok)) return 2; break;
        case 9: if (!cli_parse_float("--tol", optarg, &tol)) return 2; o.tol = tol; break;
        case 10: if (!cli_parse_int("--bw-mib", optarg, 16, 1 << 20, &mib)) return 2; o.bw_bytes = (size_t)mib << 20; break;
        case 11: o.json_path = optarg; break;
        case 12: if (!cli_parse_int("--train-steps", optarg, 1, 64, &o.train_steps)) return 2; break;
        case 13: if (!cli_parse_int("--train-batch", optarg, 1, 256, &o.train_batch)) return 2; break;
        case 14: if (!cli_parse_int("--train-len", optarg, 8, 1 << 16, &o.train_len)) return 2; break;
        case 'h': bench_help(stdout); return 0;
        default: return cli_usage_error("bench");
        }
    }
    if (optind < argc) return cli_fail("unexpected argument '%s'", argv[optind]), 2;
    if (!o.model && (o.what & ~(unsigned)(B_BW | B_CHECK))) return cli_fail("bench: a model is required (-m MODEL.gguf)"), 2;
    ia_set_threads(o.threads);
    const int nth = ia_get_threads();

    bres R = {json_object(), true};
    json_object_set_new(R.root, "tool", json_string("iteralign"));
    json_object_set_new(R.root, "version", json_string(IA_VERSION));
    json_object_set_new(R.root, "threads", json_integer(nth));
    json_object_set_new(R.root, "kernel", json_string(ia_cpu_kernel_name()));
    json_object_set_new(R.root, "precision", json_string(ia_precision_name(ia_get_precision())));
    printf("iteralign bench: %d threads, kernel %s, %s precision\n", nth, ia_cpu_kernel_name(),
           ia_precision_name(ia_get_precision()));
    if (o.what & B_BW) {
        const double bwn = bw_probe(o.bw_bytes, nth, 5), bw1 = nth > 1 ? bw_probe(o.bw_bytes, 1, 5) : bwn;
        /* one core may read as fast as two (it does on this kind of VM): the limit uses the best */
        const double bw = bwn > bw1 ? bwn : bw1;
        json_object_set_new(R.root, "bw_gbs", json_real(bw));
        json_object_set_new(R.root, "bwn_gbs", json_real(bwn));
        json_object_set_new(R.root, "bw1_gbs", json_real(bw1));
        printf("  read bandwidth %.1f GB/s (%d threads), %.1f GB/s (1 thread)\n", bwn, nth, bw1);
    }
    ia_error err = {0};
    int rc = 0;
    brun r = {0};
    float *keep = NULL;
    int32_t *kept = NULL;
    if (o.model && (o.what & B_TRAIN)) { /* first: its peak memory is then the trainer's alone */
        if (bench_train(&R, &o, false, &err)) {
            json_decref(R.root);
            return cli_fail_err(&err);
        }
        /* bf16 products only where the CPU multiplies bf16 (the reference would take minutes) */
        if (!ia_cpu_has_bf16_dot()) {
            printf("  train bf16  not measured: no AVX512_BF16 on this CPU\n");
        } else if (bench_train(&R, &o, true, &err)) {
            json_decref(R.root);
            return cli_fail_err(&err);
        }
    }
    if (o.model && (o.what & ~(unsigned)(B_BW | B_TRAIN))) {
        const double t0 = ia_time_now();
        r.m = ia_model_load(o.model, &err);
        if (!r.m) { json_decref(R.root); return cli_fail_err(&err); }
        const ia_hparams *hp = &r.m->hp;
        r.V = hp->n_vocab;
        const double wb = weight_bytes(r.m);
        json_object_set_new(R.root, "model", json_string(o.model));
        json_object_set_new(R.root, "arch", json_string(hp->arch));
        json_object_set_new(R.root, "type", json_string(ia_type_name(r.m->layers[0].w_up.type)));
        json_object_set_new(R.root, "shape", json_pack("{s:i,s:i,s:i,s:i,s:i,s:i}", "E", hp->n_embd, "L", hp->n_layer,
                                                       "H", hp->n_head, "Hkv", hp->n_head_kv, "F", hp->n_ff, "V", hp->n_vocab));
        json_object_set_new(R.root, "weight_bytes_per_token", json_real(wb));
        printf("  model %s: %s %s, %.1f MB of weights read per token (load %.2f s)\n", o.model, hp->arch,
               ia_type_name(r.m->layers[0].w_up.type), wb / 1e6, ia_time_now() - t0);
        json_t *bwj = json_object_get(R.root, "bw_gbs");
        if (bwj) {
            json_object_set_new(R.root, "tg_limit_tps", json_real(json_real_value(bwj) * 1e9 / wb));
            printf("  decode bandwidth limit %.1f tokens/s\n", json_real_value(bwj) * 1e9 / wb);
        }
        ia_rng g;
        ia_rng_seed(&g, 1234);
        if (o.check_tok > o.tg) o.check_tok = o.tg;
        keep = ia_malloc(sizeof(float) * (size_t)o.check_tok * r.V);
        kept = ia_malloc(sizeof(int32_t) * (size_t)o.check_tok);
        if (!keep || !kept) { rc = cli_fail("bench: out of memory"); goto done; }
        if ((o.what & B_PP) && bench_pp(&R, &r, &o, &g, &err)) goto fail;
        if ((o.what & B_TG) && bench_tg(&R, &r, &o, &g, keep, kept, &err)) goto fail;
        if (o.what & B_CHECK) {
            if (!(o.what & B_TG)) rand_ids(&g, kept, o.check_tok, r.V);
            if (bench_check(&R, &r, &o, (o.what & B_TG) ? keep : NULL, kept, o.check_tok, &err)) goto fail;
        }
        if (o.what & B_SCORE && bench_score(&R, &r, &o, &g, &err)) goto fail;
        if (o.what & B_BATCH) {
            json_t *arr = json_array();
            json_object_set_new(R.root, "batch", arr);
            for (int i = 0; i < o.n_npl; i++)
                if (bench_batch1(&R, &r, &o, &g, o.npl[i], arr, &err)) goto fail;
        }
    }
    json_object_set_new(R.root, "peak_rss_mib", json_real(peak_rss_mib()));
    /* another process taking a core shows here: the pool then ran single-threaded for a while */
    json_object_set_new(R.root, "contention_events", json_integer(ia_pool_contention_events()));
    if (ia_pool_contention_events())
        printf("  note: %d times another process held a core (the pool ran on one thread for a quarter "
               "of a second each time)\n", ia_pool_contention_events());
    json_object_set_new(R.root, "ok", json_boolean(R.all_ok));
    if (!R.all_ok) {
        fprintf(stderr, "iteralign bench: a correctness check FAILED (see above)\n");
        rc = 1;
    }
    goto done;
fail:
    rc = cli_fail_err(&err);
done:
    if (o.json_path) {
        FILE *f = fopen(o.json_path, "a");
        if (!f) rc = cli_fail("bench: cannot write %s", o.json_path);
        else {
            json_dumpf(R.root, f, JSON_COMPACT | JSON_REAL_PRECISION(6));
            fputc('\n', f);
            fclose(f);
        }
    }
    json_decref(R.root);
    ia_free(keep);
    ia_free(kept);
    ia_free(r.tok); ia_free(r.pos); ia_free(r.slot); ia_free(r.lg);
    ia_model_free(r.m);
    return rc;
}
