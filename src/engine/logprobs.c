/* logprobs.c — batched teacher-forced token log-probabilities with top-k alternatives. */
#include "logprobs.h"

#include <math.h>

#define LP_BATCH 256

/* Keeps the k largest (value, id) pairs in descending order; ties keep the lower id first because
 * ids arrive in increasing order and an equal value never displaces an earlier one. */
static void topk_insert(int32_t *ids, float *vals, int *n, int k, int32_t id, float v) {
    if (*n == k && !(v > vals[k - 1])) return;
    int i = *n < k ? (*n)++ : k - 1;
    while (i > 0 && v > vals[i - 1]) {
        ids[i] = ids[i - 1];
        vals[i] = vals[i - 1];
        i--;
    }
    ids[i] = id;
    vals[i] = v;
}

/* Log-softmax of one logit row at `target`, plus the top_k alternatives. NaN logits count as -inf. */
static void row_logprobs(const float *l, int V, int32_t target, int top_k, float *lp_out, int32_t *top_ids,
                         float *top_lp) {
    float mx = -INFINITY;
    for (int v = 0; v < V; v++)
        if (l[v] > mx) mx = l[v];
    double sum = 0;
    if (isfinite(mx))
        for (int v = 0; v < V; v++)
            if (l[v] == l[v]) sum += exp((double)(l[v] - mx));
    double lse = isfinite(mx) && sum > 0 ? (double)mx + log(sum) : INFINITY;
    float t = target >= 0 && target < V ? l[target] : -INFINITY;
    *lp_out = t == t ? (float)((double)t - lse) : -INFINITY;
    if (top_k <= 0) return;
    int n = 0;
    for (int v = 0; v < V; v++)
        if (l[v] == l[v]) topk_insert(top_ids, top_lp, &n, top_k, v, l[v]);
    for (int i = 0; i < n; i++) top_lp[i] = (float)((double)top_lp[i] - lse);
    for (int i = n; i < top_k; i++) { top_ids[i] = -1; top_lp[i] = -INFINITY; }
}

double ia_logits_token_logprob(const float *l, int V, int32_t target, bool *is_argmax) {
    int arg = 0;
    for (int v = 1; v < V; v++)
        if (l[v] > l[arg]) arg = v;
    *is_argmax = arg == target;
    return (double)l[target] - ia_logsumexp(l, V);
}

int ia_token_logprobs(ia_model *m, ia_token_lp_job *jobs, int n_jobs, int n_slots, ia_error *err) {
    if (n_jobs <= 0) return IA_OK;
    const int V = ia_model_n_vocab(m);
    int longest = 1, n_work = 0;
    for (int j = 0; j < n_jobs; j++) {
        ia_token_lp_job *q = &jobs[j];
        if (!q->ids || q->n < 1 || q->first < 1 || q->top_k < 0 || q->top_k > IA_LOGPROBS_TOP_MAX || !q->logprob ||
            (q->top_k > 0 && (!q->top_ids || !q->top_logprobs)))
            return ia_error_set(err, IA_ERR_ARG, "logprobs job %d: bad arguments", j + 1);
        for (int i = 0; i < q->n; i++)
            if (q->ids[i] < 0 || q->ids[i] >= V)
                return ia_error_set(err, IA_ERR_RANGE, "logprobs job %d: token id %d out of range", j + 1, q->ids[i]);
        if (q->first < q->n) {
            n_work++;
            if (q->n > longest) longest = q->n;
        }
    }
    if (n_work == 0) return IA_OK;
    if (n_slots < 1) n_slots = 1;
    if (n_slots > n_work) n_slots = n_work;

    int rc = IA_OK;
    ia_context *ctx = ia_context_init(m, n_slots, longest, LP_BATCH, err);
    int32_t *b_tok = ia_malloc(sizeof(int32_t) * LP_BATCH), *b_pos = ia_malloc(sizeof(int32_t) * LP_BATCH);
    int32_t *b_slot = ia_malloc(sizeof(int32_t) * LP_BATCH);
    bool *b_log = ia_malloc(sizeof(bool) * LP_BATCH);
    int *b_job = ia_malloc(sizeof(int) * LP_BATCH), *owner = ia_malloc(sizeof(int) * (size_t)n_slots);
    int *fed = ia_calloc((size_t)n_jobs, sizeof(int));
    if (!ctx) { rc = err ? err->code : IA_ERR_NOMEM; goto done; }
    if (!b_tok || !b_pos || !b_slot || !b_log || !b_job || !owner || !fed) {
        rc = ia_error_set(err, IA_ERR_NOMEM, "logprobs: out of memory");
        goto done;
    }
    for (int s = 0; s < n_slots; s++) owner[s] = -1;
    int next = 0, finished = 0;
    while (finished < n_work) {
        /* Admit jobs into free slots; jobs with nothing to score are skipped. */
        for (int s = 0; s < n_slots; s++) {
            if (owner[s] >= 0) continue;
            while (next < n_jobs && jobs[next].first >= jobs[next].n) next++;
            if (next >= n_jobs) break;
            owner[s] = next++;
        }
        /* One batch: each slot feeds its next chunk. The last token predicts nothing, so a job feeds
         * tokens 0..n-2; logits are kept from position first-1 on. */
        int nb = 0;
        for (int s = 0; s < n_slots && nb < LP_BATCH; s++) {
            int j = owner[s];
            if (j < 0) continue;
            ia_token_lp_job *q = &jobs[j];
            int take = (q->n - 1) - fed[j];
            if (take > LP_BATCH - nb) take = LP_BATCH - nb;
            for (int t = 0; t < take; t++) {
                int p = fed[j] + t;
                b_tok[nb] = q->ids[p];
                b_pos[nb] = p;
                b_slot[nb] = s;
                b_log[nb] = p >= q->first - 1;
                b_job[nb] = j;
                nb++;
            }
            fed[j] += take;
        }
        if (nb > 0) {
            ia_batch b = {nb, b_tok, b_pos, b_slot, b_log};
            rc = ia_context_decode(ctx, &b, err);
            if (rc != IA_OK) goto done;
            const float *lg = ia_context_logits(ctx);
            int row = 0;
            for (int i = 0; i < nb; i++) {
                if (!b_log[i]) continue;
                ia_token_lp_job *q = &jobs[b_job[i]];
                int p = b_pos[i] + 1; /* the position this row predicts */
                row_logprobs(lg + (size_t)row++ * (size_t)V, V, q->ids[p], q->top_k, &q->logprob[p],
                             q->top_k ? q->top_ids + (size_t)p * (size_t)q->top_k : NULL,
                             q->top_k ? q->top_logprobs + (size_t)p * (size_t)q->top_k : NULL);
            }
        }
        for (int s = 0; s < n_slots; s++) {
            int j = owner[s];
            if (j >= 0 && fed[j] >= jobs[j].n - 1) { owner[s] = -1; finished++; }
        }
    }
done:
    ia_context_free(ctx);
    ia_free(b_tok);
    ia_free(b_pos);
    ia_free(b_slot);
    ia_free(b_log);
    ia_free(b_job);
    ia_free(owner);
    ia_free(fed);
    return rc;
}
