/* test_sample.c — sampler: defaults, greedy, penalty arithmetic, top-k/top-p/min-p cuts, the
 * distribution of temperature sampling (chi-squared, fixed seed), determinism, no allocation. */
#include "test_util.h"

#include <math.h>

#include "sample/sample.h"

static ia_sampling params(float temperature, uint64_t seed) {
    ia_sampling p = ia_sampling_default();
    p.temperature = temperature;
    p.seed = seed;
    return p;
}

static ia_sampler *make(const ia_sampling *p, int n_vocab) {
    ia_sampler *s = ia_sampler_init(p, n_vocab);
    assert_non_null(s);
    return s;
}

/* Draws once from a copy of logits (the sampler writes penalties into its argument). */
static int32_t draw(ia_sampler *s, const float *logits, int n, const int32_t *gen, int n_gen) {
    float tmp[64];
    assert_true(n <= 64);
    memcpy(tmp, logits, (size_t)n * sizeof *tmp);
    return ia_sampler_sample(s, tmp, gen, n_gen);
}

static void test_defaults(void **state) {
    (void)state;
    ia_sampling p = ia_sampling_default();
    assert_true(p.temperature == 0.0f);
    assert_int_equal(p.top_k, 0);
    assert_true(p.top_p == 1.0f);
    assert_true(p.min_p == 0.0f);
    assert_true(p.repeat_penalty == 1.0f);
    assert_int_equal(p.repeat_last_n, 64);
    assert_true(p.frequency_penalty == 0.0f);
    assert_true(p.presence_penalty == 0.0f);
    assert_int_equal(p.seed, 0);
    assert_int_equal(p.max_tokens, 256);
    assert_int_equal(p.n_stop, 0);
    assert_false(p.ignore_eos);
    for (int i = 0; i < IA_MAX_STOP; i++) assert_null(p.stop[i]);
    assert_null(ia_sampler_init(&p, 0));
    assert_null(ia_sampler_init(&p, -5));
    /* NULL params: the defaults, i.e. greedy */
    ia_sampler *s = make(NULL, 4);
    const float l[4] = {0.1f, 0.2f, 0.9f, 0.3f};
    for (int i = 0; i < 10; i++) assert_int_equal(draw(s, l, 4, NULL, 0), 2);
    ia_sampler_free(s);
    ia_sampler_free(NULL);
}

static void test_greedy(void **state) {
    (void)state;
    ia_sampling p = params(0.0f, 7);
    ia_sampler *s = make(&p, 5);
    const float a[5] = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f};
    assert_int_equal(draw(s, a, 5, NULL, 0), 1); /* ties: the first */
    const float b[5] = {NAN, -INFINITY, 0.5f, NAN, 0.25f};
    assert_int_equal(draw(s, b, 5, NULL, 0), 2); /* NaN never wins */
    const float c[5] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    assert_int_equal(draw(s, c, 5, NULL, 0), -1); /* nothing possible */
    const float d[5] = {-1e30f, -2e30f, -INFINITY, -3e30f, -1e30f};
    assert_int_equal(draw(s, d, 5, NULL, 0), 0);
    ia_sampler_free(s);
    /* a NaN temperature is not a temperature: greedy */
    p.temperature = NAN;
    s = make(&p, 5);
    for (int i = 0; i < 20; i++) assert_int_equal(draw(s, a, 5, NULL, 0), 1);
    ia_sampler_free(s);
}

static void expect_logits(const float *got, const float *want, int n) {
    for (int i = 0; i < n; i++)
        if (got[i] != want[i]) fail_msg("logit %d: got %.9g want %.9g", i, got[i], want[i]);
}

/* vLLM: logit -= frequency_penalty * count; logit -= presence_penalty if count > 0. */
static void test_frequency_presence(void **state) {
    (void)state;
    ia_sampling p = params(0.0f, 0);
    p.frequency_penalty = 0.5f;
    p.presence_penalty = 0.25f;
    ia_sampler *s = make(&p, 3);
    float l[3] = {1.0f, 2.0f, 3.0f};
    const int32_t gen[3] = {2, 2, 1};
    ia_sampler_penalize(s, l, gen, 3);
    /* token 2: 3 - 0.5*2 - 0.25 = 1.75; token 1: 2 - 0.5*1 - 0.25 = 1.25; token 0 untouched */
    expect_logits(l, (const float[]){1.0f, 1.25f, 1.75f}, 3);
    /* the scratch counts are back to zero: the same call gives the same answer */
    float l2[3] = {1.0f, 2.0f, 3.0f};
    ia_sampler_penalize(s, l2, gen, 3);
    expect_logits(l2, (const float[]){1.0f, 1.25f, 1.75f}, 3);
    /* ids outside the vocabulary are ignored */
    float l3[3] = {1.0f, 2.0f, 3.0f};
    const int32_t gen3[6] = {2, -1, 3, 2, 1000, 1};
    ia_sampler_penalize(s, l3, gen3, 6);
    expect_logits(l3, (const float[]){1.0f, 1.25f, 1.75f}, 3);
    /* and through ia_sampler_sample: greedy now picks token 2 (1.75 > 1.25 > 1) */
    float l4[3] = {1.0f, 2.0f, 3.0f};
    assert_int_equal(ia_sampler_sample(s, l4, gen, 3), 2);
    expect_logits(l4, (const float[]){1.0f, 1.25f, 1.75f}, 3);
    ia_sampler_free(s);

    /* negative values encourage; the whole history counts, whatever repeat_last_n says */
    p.frequency_penalty = -0.5f;
    p.presence_penalty = 0.0f;
    p.repeat_last_n = 1;
    s = make(&p, 3);
    float l5[3] = {1.0f, 2.0f, 3.0f};
    ia_sampler_penalize(s, l5, gen, 3);
    expect_logits(l5, (const float[]){1.0f, 2.5f, 4.0f}, 3);
    ia_sampler_free(s);

    /* presence only: once per distinct token */
    p = params(0.0f, 0);
    p.presence_penalty = 1.5f;
    s = make(&p, 4);
    float l6[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const int32_t gen6[5] = {3, 3, 3, 0, 3};
    ia_sampler_penalize(s, l6, gen6, 5);
    expect_logits(l6, (const float[]){-1.5f, 0.0f, 0.0f, -1.5f}, 4);
    ia_sampler_free(s);
}

/* llama.cpp: distinct tokens among the last repeat_last_n: logit > 0 ? logit / p : logit * p. */
static void test_repetition_penalty(void **state) {
    (void)state;
    ia_sampling p = params(0.0f, 0);
    p.repeat_penalty = 2.0f;
    ia_sampler *s = make(&p, 4);
    float l[4] = {2.0f, -2.0f, 1.0f, 0.5f};
    const int32_t gen[3] = {0, 1, 0};
    ia_sampler_penalize(s, l, gen, 3);
    expect_logits(l, (const float[]){1.0f, -4.0f, 1.0f, 0.5f}, 4); /* token 0 once, not twice */
    ia_sampler_free(s);

    /* the window: only the last repeat_last_n ids */
    p.repeat_last_n = 1;
    s = make(&p, 4);
    float l2[4] = {2.0f, -2.0f, 1.0f, 0.5f};
    const int32_t gen2[2] = {0, 1};
    ia_sampler_penalize(s, l2, gen2, 2);
    expect_logits(l2, (const float[]){2.0f, -4.0f, 1.0f, 0.5f}, 4);
    ia_sampler_free(s);
    /* -1: everything generated; 0: off */
    p.repeat_last_n = -1;
    s = make(&p, 4);
    float l3[4] = {2.0f, -2.0f, 1.0f, 0.5f};
    int32_t gen3[70];
    gen3[0] = 3;
    for (int i = 1; i < 70; i++) gen3[i] = 2;
    ia_sampler_penalize(s, l3, gen3, 70);
    expect_logits(l3, (const float[]){2.0f, -2.0f, 0.5f, 0.25f}, 4);
    ia_sampler_free(s);
    p.repeat_last_n = 64; /* token 3 falls out of the window of the same history */
    s = make(&p, 4);
    float l3b[4] = {2.0f, -2.0f, 1.0f, 0.5f};
    ia_sampler_penalize(s, l3b, gen3, 70);
    expect_logits(l3b, (const float[]){2.0f, -2.0f, 0.5f, 0.5f}, 4);
    ia_sampler_free(s);
    p.repeat_last_n = 0;
    s = make(&p, 4);
    float l4[4] = {2.0f, -2.0f, 1.0f, 0.5f};
    ia_sampler_penalize(s, l4, gen, 3);
    expect_logits(l4, (const float[]){2.0f, -2.0f, 1.0f, 0.5f}, 4);
    ia_sampler_free(s);

    /* order: repetition penalty first, then frequency: 4 / 2 - 1 = 1 (not (4 - 1) / 2) */
    p = params(0.0f, 0);
    p.repeat_penalty = 2.0f;
    p.frequency_penalty = 1.0f;
    s = make(&p, 2);
    float l5[2] = {4.0f, 0.0f};
    const int32_t gen5[1] = {0};
    ia_sampler_penalize(s, l5, gen5, 1);
    expect_logits(l5, (const float[]){1.0f, 0.0f}, 2);
    ia_sampler_free(s);

    /* greedy sees the penalised logits */
    p = params(0.0f, 0);
    p.repeat_penalty = 1.1f;
    s = make(&p, 2);
    const float l6[2] = {3.0f, 2.9f};
    assert_int_equal(draw(s, l6, 2, gen5, 1), 1);
    assert_int_equal(draw(s, l6, 2, NULL, 0), 0);
    ia_sampler_free(s);
}

/* top_k = 1 keeps the argmax only: the same as greedy, at any temperature, ties included. */
static void test_top_k_one_is_greedy(void **state) {
    (void)state;
    enum { N = 1000 };
    static float l[N], g[N];
    ia_rng r;
    ia_rng_seed(&r, 99);
    ia_sampling p = params(1.5f, 5);
    p.top_k = 1;
    p.frequency_penalty = 0.3f;
    ia_sampler *s = make(&p, N);
    ia_sampling pg = params(0.0f, 5);
    pg.frequency_penalty = 0.3f;
    ia_sampler *greedy = make(&pg, N);
    int32_t hist[16];
    for (int trial = 0; trial < 200; trial++) {
        for (int i = 0; i < N; i++) l[i] = 4.0f * ia_rng_normal(&r);
        for (int i = 0; i < 16; i++) hist[i] = (int32_t)(ia_rng_next(&r) % N);
        if (trial % 3 == 0) { /* a tie at the top, unpenalised: the lower id */
            l[17] = l[900] = 50.0f;
            for (int i = 0; i < 16; i++)
                if (hist[i] == 17 || hist[i] == 900) hist[i] = 0;
        }
        memcpy(g, l, sizeof l);
        int32_t want = ia_sampler_sample(greedy, g, hist, 16);
        int32_t got = ia_sampler_sample(s, l, hist, 16);
        assert_int_equal(got, want);
        if (trial % 3 == 0) assert_int_equal(got, 17);
    }
    ia_sampler_free(s);
    ia_sampler_free(greedy);
}

/* Probabilities 0.5, 0.3, 0.15, 0.05 at T = 1. */
static const float quad[4] = {-0.69314718f, -1.2039728f, -1.89712f, -2.9957323f};

static void counts_of(ia_sampler *s, const float *l, int n, int draws, int *count) {
    memset(count, 0, (size_t)n * sizeof *count);
    for (int i = 0; i < draws; i++) {
        int32_t t = draw(s, l, n, NULL, 0);
        assert_true(t >= 0 && t < n);
        count[t]++;
    }
}

/* Ties at the top-k border go to the lower id, on both selection paths (small k on a big
 * vocabulary: the heap; otherwise quickselect). */
static void test_top_k_ties(void **state) {
    (void)state;
    ia_sampling p = params(1.0f, 4);
    p.top_k = 1;
    ia_sampler *s = make(&p, 4); /* quickselect */
    const float l[4] = {1.0f, 5.0f, 5.0f, 0.0f};
    for (int i = 0; i < 50; i++) assert_int_equal(draw(s, l, 4, NULL, 0), 1);
    ia_sampler_free(s);
    p.top_k = 2;
    s = make(&p, 16); /* heap: 2 <= 16 / 8 */
    float l2[16] = {0};
    l2[3] = l2[9] = l2[12] = 2.0f;
    int count[16];
    counts_of(s, l2, 16, 400, count);
    assert_int_equal(count[3] + count[9], 400);
    assert_true(count[3] > 100 && count[9] > 100);
    ia_sampler_free(s);
}

/* top-k on a big vocabulary picks only among the true k best (checked against a full sort). */
static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x > y ? -1 : x < y ? 1 : 0;
}

static void test_top_k_large_vocab(void **state) {
    (void)state;
    enum { N = 150000, K = 40 };
    float *l = ia_malloc(N * sizeof *l), *work = ia_malloc(N * sizeof *work), *sorted = ia_malloc(N * sizeof *sorted);
    assert_true(l && work && sorted);
    ia_rng r;
    ia_rng_seed(&r, 3);
    for (int i = 0; i < N; i++) l[i] = 3.0f * ia_rng_normal(&r);
    memcpy(sorted, l, N * sizeof *l);
    qsort(sorted, N, sizeof *sorted, cmp_desc);
    float kth = sorted[K - 1];
    ia_sampling p = params(5.0f, 11); /* hot: without the cut, the tail would show up */
    p.top_k = K;
    ia_sampler *s = make(&p, N);
    int seen_not_top = 0;
    for (int i = 0; i < 300; i++) {
        memcpy(work, l, N * sizeof *l);
        int32_t t = ia_sampler_sample(s, work, NULL, 0);
        assert_true(t >= 0 && t < N);
        assert_true(l[t] >= kth);
        seen_not_top += l[t] != sorted[0];
    }
    assert_true(seen_not_top > 0); /* it does sample, not just take the argmax */
    ia_sampler_free(s);
    ia_free(l);
    ia_free(work);
    ia_free(sorted);
}

static void test_top_p_min_p_exclusions(void **state) {
    (void)state;
    int count[8];
    ia_sampling p = params(1.0f, 21);
    p.top_p = 0.75f; /* 0.5 + 0.3 reaches it: {0, 1} */
    ia_sampler *s = make(&p, 4);
    counts_of(s, quad, 4, 5000, count);
    assert_int_equal(count[2] + count[3], 0);
    assert_true(count[0] > 2800 && count[1] > 1600); /* renormalised 0.625 / 0.375 */
    ia_sampler_free(s);

    p.top_p = 0.45f; /* the first token alone reaches it */
    s = make(&p, 4);
    counts_of(s, quad, 4, 2000, count);
    assert_int_equal(count[0], 2000);
    ia_sampler_free(s);
    p.top_p = 0.0f; /* <= 0: the most likely token only */
    s = make(&p, 4);
    counts_of(s, quad, 4, 500, count);
    assert_int_equal(count[0], 500);
    ia_sampler_free(s);

    p = params(1.0f, 22);
    p.min_p = 0.25f; /* threshold 0.125: {0, 1, 2} */
    s = make(&p, 4);
    counts_of(s, quad, 4, 5000, count);
    assert_int_equal(count[3], 0);
    assert_true(count[2] > 500);
    ia_sampler_free(s);
    p.min_p = 0.35f; /* threshold 0.175: {0, 1} */
    s = make(&p, 4);
    counts_of(s, quad, 4, 5000, count);
    assert_int_equal(count[2] + count[3], 0);
    assert_true(count[1] > 1500);
    ia_sampler_free(s);

    /* banned tokens (-INFINITY, and NaN treated alike) are never drawn, even when hot */
    p = params(50.0f, 23);
    s = make(&p, 5);
    const float banned[5] = {0.0f, -INFINITY, 0.0f, NAN, -50.0f};
    counts_of(s, banned, 5, 3000, count);
    assert_int_equal(count[1] + count[3], 0);
    assert_true(count[4] > 0);
    /* all banned: -1; +inf tokens share all the mass */
    const float none[5] = {-INFINITY, NAN, -INFINITY, -INFINITY, NAN};
    assert_int_equal(draw(s, none, 5, NULL, 0), -1);
    const float inf[5] = {0.0f, INFINITY, INFINITY, 5.0f, -INFINITY};
    counts_of(s, inf, 5, 1000, count);
    assert_int_equal(count[0] + count[3], 0);
    assert_true(count[1] > 300 && count[2] > 300);
    ia_sampler_free(s);

    /* a tiny temperature does not produce NaN: it is the argmax */
    p = params(1e-30f, 24);
    s = make(&p, 4);
    counts_of(s, quad, 4, 200, count);
    assert_int_equal(count[0], 200);
    ia_sampler_free(s);
}

/* top-p on a vocabulary large enough for the chunked partial sort: every draw is in the nucleus
 * computed here independently (full sort, cumulative softmax in double). */
static void test_top_p_large_vocab(void **state) {
    (void)state;
    enum { N = 5000 };
    static float l[N], work[N], sorted[N];
    ia_rng r;
    ia_rng_seed(&r, 8);
    for (int i = 0; i < N; i++) l[i] = 0.7f * ia_rng_normal(&r); /* flat: the nucleus is wide */
    memcpy(sorted, l, sizeof l);
    qsort(sorted, N, sizeof *sorted, cmp_desc);
    const float T = 1.3f, TOP_P = 0.6f;
    double sum = 0, cum = 0;
    for (int i = 0; i < N; i++) sum += exp(((double)sorted[i] - sorted[0]) / T);
    int nucleus = 0;
    while (cum < TOP_P * sum) cum += exp(((double)sorted[nucleus++] - sorted[0]) / T);
    assert_true(nucleus > 200); /* several doubling rounds */
    float cut = sorted[nucleus - 1];
    ia_sampling p = params(T, 31);
    p.top_p = TOP_P;
    ia_sampler *s = make(&p, N);
    int below_cut_margin = 0;
    for (int i = 0; i < 3000; i++) {
        memcpy(work, l, sizeof l);
        int32_t t = ia_sampler_sample(s, work, NULL, 0);
        assert_true(t >= 0 && t < N);
        /* float vs double sums may move the edge by a token or two, never more */
        assert_true(l[t] >= sorted[nucleus + 1]);
        below_cut_margin += l[t] < cut;
    }
    assert_true(below_cut_margin <= 30);
    ia_sampler_free(s);
}

/* Pearson's chi-squared of observed counts against probabilities. */
static double chi2(const int *obs, const double *prob, int n, int draws) {
    double x = 0;
    for (int i = 0; i < n; i++) {
        double e = prob[i] * draws;
        x += (obs[i] - e) * (obs[i] - e) / e;
    }
    return x;
}

static void softmax_ref(const float *l, int n, double t, double *out) {
    double mx = -INFINITY, sum = 0;
    for (int i = 0; i < n; i++) mx = fmax(mx, l[i]);
    for (int i = 0; i < n; i++) sum += out[i] = exp((l[i] - mx) / t);
    for (int i = 0; i < n; i++) out[i] /= sum;
}

/* 20000 draws with a fixed seed follow softmax(logits / T). The seed is fixed, so the statistic
 * is one deterministic number: it cannot flake, and a sampler that is off by a few percent on
 * any token fails it. Critical values at p = 0.001: 24.32 (7 dof), 13.82 (2 dof). */
static void test_temperature_distribution(void **state) {
    (void)state;
    enum { N = 8, DRAWS = 20000 };
    const float l[N] = {1.0f, 2.0f, 0.5f, -1.0f, 3.0f, 0.0f, 1.5f, 2.5f};
    const double temps[3] = {0.7, 1.0, 2.0};
    int count[N];
    double prob[N];
    for (int k = 0; k < 3; k++) {
        ia_sampling p = params((float)temps[k], 1234 + (uint64_t)k);
        ia_sampler *s = make(&p, N);
        counts_of(s, l, N, DRAWS, count);
        softmax_ref(l, N, temps[k], prob);
        double x = chi2(count, prob, N, DRAWS);
        if (!(x < 24.32)) fail_msg("T=%g: chi2 = %g", temps[k], x);
        ia_sampler_free(s);
    }
    /* top-k = 3 renormalises over tokens 4, 7, 1 (logits 3, 2.5, 2) */
    ia_sampling p = params(1.0f, 77);
    p.top_k = 3;
    ia_sampler *s = make(&p, N);
    counts_of(s, l, N, DRAWS, count);
    const float top3[3] = {3.0f, 2.5f, 2.0f};
    double p3[3];
    softmax_ref(top3, 3, 1.0, p3);
    int obs3[3] = {count[4], count[7], count[1]};
    assert_int_equal(obs3[0] + obs3[1] + obs3[2], DRAWS);
    double x = chi2(obs3, p3, 3, DRAWS);
    if (!(x < 13.82)) fail_msg("top-k 3: chi2 = %g", x);
    ia_sampler_free(s);
}

static void test_seed_determinism(void **state) {
    (void)state;
    enum { N = 8, DRAWS = 500 };
    const float l[N] = {1.0f, 2.0f, 0.5f, -1.0f, 3.0f, 0.0f, 1.5f, 2.5f};
    int32_t a[DRAWS], b[DRAWS], c[DRAWS];
    ia_sampling p = params(1.0f, 42);
    p.top_p = 0.95f;
    p.min_p = 0.01f;
    ia_sampler *sa = make(&p, N), *sb = make(&p, N);
    p.seed = 43;
    ia_sampler *sc = make(&p, N);
    /* interleaved: each sequence has its own stream, so neighbours do not disturb it */
    for (int i = 0; i < DRAWS; i++) {
        a[i] = draw(sa, l, N, NULL, 0);
        c[i] = draw(sc, l, N, NULL, 0);
    }
    for (int i = 0; i < DRAWS; i++) b[i] = draw(sb, l, N, NULL, 0);
    assert_memory_equal(a, b, sizeof a);
    int differ = 0;
    for (int i = 0; i < DRAWS; i++) differ += a[i] != c[i];
    assert_true(differ > DRAWS / 4);
    ia_sampler_free(sa);
    ia_sampler_free(sb);
    ia_sampler_free(sc);
}

static void test_no_allocation_when_sampling(void **state) {
    (void)state;
    enum { N = 2000 };
    static float l[N];
    ia_rng r;
    ia_rng_seed(&r, 5);
    ia_sampling p = params(0.9f, 1);
    p.top_k = 50;
    p.top_p = 0.9f;
    p.min_p = 0.05f;
    p.repeat_penalty = 1.1f;
    p.frequency_penalty = 0.2f;
    p.presence_penalty = 0.1f;
    ia_sampler *s = make(&p, N);
    ia_sampling p2 = p;
    p2.top_k = 0; /* the chunked top-p path */
    ia_sampler *s2 = make(&p2, N);
    int32_t hist[100];
    long before = ia_mem_alloc_count();
    for (int i = 0; i < 100; i++) {
        for (int j = 0; j < N; j++) l[j] = ia_rng_normal(&r);
        hist[i] = ia_sampler_sample(i % 2 ? s : s2, l, hist, i);
        assert_true(hist[i] >= 0 && hist[i] < N);
    }
    assert_int_equal(ia_mem_alloc_count(), before);
    ia_sampler_free(s);
    ia_sampler_free(s2);
}

static void test_init_out_of_memory(void **state) {
    (void)state;
    ia_sampling p = params(1.0f, 0);
    for (long n = 1;; n++) {
        ia_mem_fail_after(n, false);
        ia_sampler *s = ia_sampler_init(&p, 100);
        ia_mem_fail_after(0, false);
        if (s) { ia_sampler_free(s); break; }
        assert_true(n < 10);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_greedy),
        cmocka_unit_test(test_frequency_presence),
        cmocka_unit_test(test_repetition_penalty),
        cmocka_unit_test(test_top_k_one_is_greedy),
        cmocka_unit_test(test_top_k_ties),
        cmocka_unit_test(test_top_k_large_vocab),
        cmocka_unit_test(test_top_p_min_p_exclusions),
        cmocka_unit_test(test_top_p_large_vocab),
        cmocka_unit_test(test_temperature_distribution),
        cmocka_unit_test(test_seed_determinism),
        cmocka_unit_test(test_no_allocation_when_sampling),
        cmocka_unit_test(test_init_out_of_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
