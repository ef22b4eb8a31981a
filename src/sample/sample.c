/* sample.c — per-sequence token sampler: repetition / frequency / presence penalties, greedy, top-k,
 * temperature, softmax, top-p, min-p and a seeded draw; all buffers are sized at init. */
#include "sample.h"

#include <math.h>
#include <stdlib.h>

ia_sampling ia_sampling_default(void) {
    ia_sampling p;
    memset(&p, 0, sizeof p); /* stop[] NULL, n_stop 0, ignore_eos false, seed 0 */
    p.temperature = 0.0f;    /* greedy */
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.repeat_penalty = 1.0f;
    p.repeat_last_n = 64;
    p.frequency_penalty = 0.0f;
    p.presence_penalty = 0.0f;
    p.max_tokens = 256;
    return p;
}

/* A candidate token: logit after penalties, and its unnormalised probability once computed. */
typedef struct cand {
    int32_t id;
    float logit;
    float e; /* exp((logit - max) / T), in (0, 1] */
} cand;

struct ia_sampler {
    ia_sampling p;      /* sanitised copy */
    int n_vocab;
    ia_rng rng;         /* this sequence's own stream */
    int32_t *count;     /* [n_vocab] scratch, all zero between calls */
    uint8_t *mark;      /* [n_vocab] scratch, all zero between calls */
    cand *c;            /* [n_vocab] candidates */
};

/* NaN in a setting means "not set": use the neutral value, so one bad number cannot turn every
 * logit into NaN. */
static float or_default(float v, float dflt) { return isnan(v) ? dflt : v; }

ia_sampler *ia_sampler_init(const ia_sampling *p, int n_vocab) {
    if (n_vocab <= 0) return NULL;
    ia_sampler *s = ia_calloc(1, sizeof *s);
    if (!s) return NULL;
    s->p = p ? *p : ia_sampling_default();
    s->p.top_p = or_default(s->p.top_p, 1.0f);
    s->p.min_p = or_default(s->p.min_p, 0.0f);
    s->p.repeat_penalty = or_default(s->p.repeat_penalty, 1.0f);
    s->p.frequency_penalty = or_default(s->p.frequency_penalty, 0.0f);
    s->p.presence_penalty = or_default(s->p.presence_penalty, 0.0f);
    if (s->p.top_k < 0) s->p.top_k = 0;
    s->n_vocab = n_vocab;
    ia_rng_seed(&s->rng, s->p.seed);
    s->count = ia_calloc((size_t)n_vocab, sizeof *s->count);
    s->mark = ia_calloc((size_t)n_vocab, sizeof *s->mark);
    s->c = ia_malloc((size_t)n_vocab * sizeof *s->c);
    if (!s->count || !s->mark || !s->c) {
        ia_sampler_free(s);
        return NULL;
    }
    return s;
}

void ia_sampler_free(ia_sampler *s) {
    if (!s) return;
    ia_free(s->count);
    ia_free(s->mark);
    ia_free(s->c);
    ia_free(s);
}

/* ---- penalties --------------------------------------------------------------------------------- */

void ia_sampler_penalize(ia_sampler *s, float *logits, const int32_t *generated, int n_generated) {
    if (!s || !logits || !generated || n_generated <= 0) return;
    const int nv = s->n_vocab;
    const ia_sampling *p = &s->p;

    /* llama.cpp's repetition penalty: each distinct token among the last repeat_last_n generated
     * ones once; dividing a positive logit and multiplying a negative one both make it less likely.
     * A penalty <= 0 would flip or zero logits, so it counts as off, like 1. */
    float rp = p->repeat_penalty;
    if (rp > 0.0f && rp != 1.0f && p->repeat_last_n != 0) {
        int start = 0;
        if (p->repeat_last_n > 0 && n_generated > p->repeat_last_n) start = n_generated - p->repeat_last_n;
        for (int i = start; i < n_generated; i++) {
            int32_t t = generated[i];
            if (t < 0 || t >= nv || s->mark[t]) continue; /* ids out of range are not ours: skip */
            s->mark[t] = 1;
            logits[t] = logits[t] > 0.0f ? logits[t] / rp : logits[t] * rp;
        }
        for (int i = start; i < n_generated; i++)
            if (generated[i] >= 0 && generated[i] < nv) s->mark[generated[i]] = 0;
    }

    /* vLLM's frequency and presence penalties, over everything generated so far (not the prompt):
     * logit -= frequency_penalty * count, then -= presence_penalty if count > 0. */
    float fp = p->frequency_penalty, pp = p->presence_penalty;
    if (fp != 0.0f || pp != 0.0f) {
        for (int i = 0; i < n_generated; i++)
            if (generated[i] >= 0 && generated[i] < nv) s->count[generated[i]]++;
        for (int i = 0; i < n_generated; i++) {
            int32_t t = generated[i];
            if (t < 0 || t >= nv || s->count[t] == 0) continue;
            logits[t] -= fp * (float)s->count[t];
            logits[t] -= pp;
            s->count[t] = 0; /* applied once per distinct token; leaves the scratch zeroed */
        }
    }
}

/* ---- candidate selection ------------------------------------------------------------------------ */

/* Strict total order: higher logit first, ties to the lower id. Makes top-k a well-defined set and
 * every result independent of how the selection happens to shuffle the array. */
static inline bool before(const cand *a, const cand *b) {
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static int cmp_cand(const void *x, const void *y) {
    const cand *a = x, *b = y;
    return before(a, b) ? -1 : before(b, a) ? 1 : 0;
}

static inline void swap_cand(cand *c, int i, int j) {
    cand t = c[i];
    c[i] = c[j];
    c[j] = t;
}

/* Moves the k best of c[0..n) to the front (in no particular order): quickselect with a
 * median-of-three pivot, O(n) on average, so a 150k vocabulary is not sorted at every step. After
 * too many rounds (an adversarial layout) the rest is sorted instead, bounding it by O(n log n). */
static void select_top(cand *c, int n, int k) {
    if (k <= 0 || k >= n) return;
    int lo = 0, hi = n - 1;
    for (int rounds = 0; lo < hi; rounds++) {
        if (rounds > 64) {
            qsort(c + lo, (size_t)(hi - lo + 1), sizeof *c, cmp_cand);
            return;
        }
        int mid = lo + (hi - lo) / 2;
        if (before(&c[mid], &c[lo])) swap_cand(c, mid, lo);
        if (before(&c[hi], &c[lo])) swap_cand(c, hi, lo);
        if (before(&c[hi], &c[mid])) swap_cand(c, hi, mid);
        /* c[lo] best, c[mid] median, c[hi] worst of the three: the median is the pivot */
        swap_cand(c, mid, hi);
        cand pivot = c[hi];
        int store = lo;
        for (int i = lo; i < hi; i++)
            if (before(&c[i], &pivot)) swap_cand(c, i, store++);
        swap_cand(c, store, hi);
        /* c[lo..store) are better than the pivot, which now sits at its rank `store` */
        if (store == k || store == k - 1) return;
        if (store < k) lo = store + 1;
        else hi = store - 1;
    }
}

static int gather_all(cand *c, const float *logits, int n) {
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (!(logits[i] > -INFINITY)) continue;
        c[m].id = i;
        c[m].logit = logits[i];
        m++;
    }
    return m;
}

/* Restores the heap below i; the heap keeps its worst candidate at the root. */
static void heap_down(cand *c, int n, int i) {
    for (;;) {
        int w = i, l = 2 * i + 1, r = l + 1;
        if (l < n && before(&c[w], &c[l])) w = l;
        if (r < n && before(&c[w], &c[r])) w = r;
        if (w == i) return;
        swap_cand(c, i, w);
        i = w;
    }
}

/* The k best drawable tokens in one pass, kept in a heap whose root is the worst of them: most
 * logits cost one comparison with the root, far cheaper than copying and partitioning the whole
 * vocabulary when k is small. Ids arrive in increasing order, so a later token with the same
 * logit as the root never displaces it: ties go to the lower id, as in select_top. */
static int gather_top_k(cand *c, const float *logits, int n, int k) {
    int m = 0;
    for (int i = 0; i < n; i++) {
        float v = logits[i];
        if (!(v > -INFINITY)) continue;
        if (m < k) {
            int j = m++;
            c[j].id = i;
            c[j].logit = v;
            while (j > 0 && before(&c[(j - 1) / 2], &c[j])) { /* parent better: move the new one up */
                swap_cand(c, j, (j - 1) / 2);
                j = (j - 1) / 2;
            }
        } else if (v > c[0].logit) {
            c[0].id = i;
            c[0].logit = v;
            heap_down(c, m, 0);
        }
    }
    return m;
}

/* First index of the largest logit; NaN never wins. -1 if nothing beats -INFINITY. */
static int32_t argmax(const float *logits, int n) {
    int32_t best = -1;
    float bv = -INFINITY;
    for (int i = 0; i < n; i++)
        if (logits[i] > bv) { bv = logits[i]; best = i; }
    return best;
}

int32_t ia_sampler_sample(ia_sampler *s, float *logits, const int32_t *generated, int n_generated) {
    if (!s || !logits) return -1;
    const ia_sampling *p = &s->p;
    ia_sampler_penalize(s, logits, generated, n_generated);

    /* !(T > 0) also sends a NaN temperature to greedy */
    if (!(p->temperature > 0.0f)) return argmax(logits, s->n_vocab);

    /* Candidates: tokens that can still be drawn (-INFINITY is a ban, NaN is treated as one),
     * cut to the top_k best when top_k is on. */
    cand *c = s->c;
    const int k = p->top_k;
    int m = k > 0 && k <= s->n_vocab / 8 ? gather_top_k(c, logits, s->n_vocab, k)
                                         : gather_all(c, logits, s->n_vocab);
    if (k > 0 && k < m) {
        select_top(c, m, k);
        m = k;
    }
    if (m == 0) return -1;
    float vmax = -INFINITY;
    for (int i = 0; i < m; i++)
        if (c[i].logit > vmax) vmax = c[i].logit;
    if (vmax == INFINITY) {
        /* +inf - +inf is NaN: the +inf tokens share the whole mass equally instead */
        int j = 0;
        for (int i = 0; i < m; i++)
            if (c[i].logit == INFINITY) { c[j] = c[i]; c[j].logit = 0.0f; j++; }
        m = j;
        vmax = 0.0f;
    }

    /* Temperature and softmax in one step: exp((l - max) / T) never overflows, whatever T is,
     * where dividing first (l / T) could reach inf for tiny T. The sum stays unnormalised; the
     * cuts below compare against fractions of it. */
    const float t = p->temperature;
    double sum = 0.0;
    for (int i = 0; i < m; i++) {
        c[i].e = expf((c[i].logit - vmax) / t);
        sum += c[i].e;
    }

    if (p->top_p < 1.0f) {
        /* Nucleus: the smallest set of most likely tokens whose mass reaches top_p. Sort only as
         * far as needed: select the next best chunk, sort it, extend the running sum; the chunk
         * doubles, so a flat distribution costs O(m log m) and a peaked one O(m). */
        const double target = (double)p->top_p * sum;
        int sorted = 0, keep = m;
        double cum = 0.0;
        for (int chunk = 64; sorted < m && keep == m; chunk *= 2) {
            int want = m - sorted < chunk ? m : sorted + chunk;
            select_top(c + sorted, m - sorted, want - sorted);
            qsort(c + sorted, (size_t)(want - sorted), sizeof *c, cmp_cand);
            for (int i = sorted; i < want; i++) {
                cum += c[i].e;
                if (cum >= target) { keep = i + 1; break; }
            }
            sorted = want;
            if (chunk > m) chunk = m; /* no overflow of the doubling */
        }
        m = keep;
    }

    if (p->min_p > 0.0f) {
        /* keep tokens at least min_p times as likely as the most likely one (which always stays) */
        float emax = 0.0f;
        for (int i = 0; i < m; i++)
            if (c[i].e > emax) emax = c[i].e;
        const float thr = p->min_p * emax;
        int j = 0;
        for (int i = 0; i < m; i++)
            if (c[i].e >= thr || c[i].e == emax) c[j++] = c[i];
        m = j;
    }

    /* The draw: one uniform number from this sequence's stream per sampled token. */
    double total = 0.0;
    for (int i = 0; i < m; i++) total += c[i].e;
    double u = ia_rng_uniform(&s->rng) * total, acc = 0.0;
    for (int i = 0; i < m; i++) {
        acc += c[i].e;
        if (u < acc) return c[i].id;
    }
    /* rounding left u at the very top: the last token with any mass */
    for (int i = m - 1; i >= 0; i--)
        if (c[i].e > 0.0f) return c[i].id;
    return c[0].id;
}
