/* loglik.c — batched log-likelihood scoring for evaluations, with a shared prefix (the few-shot
 * primer) decoded once into a spare KV slot and copied into the slot of every request that starts
 * with it. Tokenization and the numbers are those of ia_score (lm-eval semantics). */
#include "engine/logprobs.h"
#include "eval/eval.h"
#include "model/model.h"
#include "util/util.h"

#include <math.h>

typedef struct lseq {
    int32_t *ids;   /* context + continuation tokens */
    int n;
    int n_ctx_tok;  /* tokens before the continuation (>= 1) */
    int start;      /* positions taken from the prefix slot instead of decoded */
    int share;      /* positions that may instead come from the previous request's slot (0: none) */
    int fed;
    int slot;       /* the slot it runs (ran) in, -1 before */
} lseq;

/* lm-eval's _encode_pair, as ia_score does it: trailing spaces of the context move to the
 * continuation; context and context+continuation are tokenized separately (BOS as the model says)
 * and the continuation is whatever follows the context's tokens. An empty context is BOS alone. */
static int encode_pair(const ia_tokenizer *tok, const ia_score_request *r, lseq *s, ia_error *err) {
    const char *ctx = r->context ? r->context : "";
    const char *cont = r->continuation ? r->continuation : "";
    size_t cl = strlen(ctx), nl = strlen(cont), sp = 0;
    while (sp < cl && ctx[cl - 1 - sp] == ' ') sp++;
    size_t ctx_len = cl - sp;
    char *whole = ia_malloc(cl + nl + 1);
    if (!whole) return ia_error_set(err, IA_ERR_NOMEM, "out of memory");
    memcpy(whole, ctx, cl);
    memcpy(whole + cl, cont, nl + 1);
    if (ctx_len == 0) {
        int32_t bos = ia_tokenizer_bos(tok), *cids = NULL;
        if (bos < 0) { ia_free(whole); return ia_error_set(err, IA_ERR_UNSUPPORTED, "empty context and the model has no BOS token"); }
        int nc = ia_tokenizer_encode(tok, whole, cl + nl, false, false, &cids, err);
        ia_free(whole);
        if (nc < 0) return err ? err->code : IA_ERR_FORMAT;
        s->ids = ia_malloc(sizeof(int32_t) * (size_t)(nc + 1));
        if (!s->ids) { ia_free(cids); return ia_error_set(err, IA_ERR_NOMEM, "out of memory"); }
        s->ids[0] = bos;
        memcpy(s->ids + 1, cids, sizeof(int32_t) * (size_t)nc);
        ia_free(cids);
        s->n = nc + 1;
        s->n_ctx_tok = 1;
        return IA_OK;
    }
    int32_t *cids = NULL, *wids = NULL;
    int nc = ia_tokenizer_encode(tok, whole, ctx_len, true, false, &cids, err);
    int nw = nc < 0 ? -1 : ia_tokenizer_encode(tok, whole, cl + nl, true, false, &wids, err);
    ia_free(whole);
    ia_free(cids);
    if (nc < 0 || nw < 0) { ia_free(wids); return err ? err->code : IA_ERR_FORMAT; }
    if (nc < 1) nc = 1;
    if (nw < nc) nw = nc;
    s->ids = wids;
    s->n = nw;
    s->n_ctx_tok = nc;
    return IA_OK;
}

#define LLS_PARALLEL 16
#define LLS_BATCH 256

int ia_eval_loglik(ia_model *m, const ia_score_request *reqs, int n, const ia_lls_opts *opts, ia_score_result *out,
                   ia_lls_stats *stats, ia_error *err) {
    ia_lls_opts o = {0};
    if (opts) o = *opts;
    ia_lls_stats st = {0};
    double t0 = ia_time_now();
    const ia_tokenizer *tok = ia_model_tokenizer(m);
    const int V = ia_model_n_vocab(m), n_ctx_max = ia_model_n_ctx_train(m);
    for (int i = 0; i < n; i++) memset(&out[i], 0, sizeof out[i]);
    if (stats) *stats = st;
    if (n <= 0) return IA_OK;
    lseq *ss = ia_calloc((size_t)n, sizeof *ss);
    if (!ss) return ia_error_set(err, IA_ERR_NOMEM, "out of memory");
    int rc = IA_OK, longest = 2, np = 0, max_start = 0;
    int32_t *pids = NULL, *b_tok = NULL, *b_pos = NULL, *b_slot = NULL;
    bool *b_log = NULL;
    int *b_seq = NULL, *owner = NULL, *holder = NULL;
    ia_context *ctx = NULL;

    if (o.prefix && *o.prefix && o.cache_prefix) {
        np = ia_tokenizer_encode(tok, o.prefix, strlen(o.prefix), true, false, &pids, err);
        if (np < 0) { rc = err ? err->code : IA_ERR_FORMAT; ia_error_prefix(err, "shared prefix"); goto done; }
    }
    for (int i = 0; i < n; i++) {
        lseq *q = &ss[i];
        rc = encode_pair(tok, &reqs[i], q, err);
        if (rc != IA_OK) { ia_error_prefix(err, "score request %d", i + 1); goto done; }
        bool cut = false;
        if (q->n > n_ctx_max) { /* left-truncate, keeping the continuation (lm-eval) */
            int drop = q->n - n_ctx_max;
            if (drop >= q->n_ctx_tok) {
                rc = ia_error_set(err, IA_ERR_RANGE, "score request %d: continuation of %d tokens exceeds the context",
                                  i + 1, q->n - q->n_ctx_tok);
                goto done;
            }
            memmove(q->ids, q->ids + drop, sizeof(int32_t) * (size_t)(q->n - drop));
            q->n -= drop;
            q->n_ctx_tok -= drop;
            cut = true;
        }
        /* Reuse the leading tokens shared with the prefix, but decode at least the last context
         * token: its logits score the continuation's first token. */
        int c = 0;
        if (np > 0 && !cut)
            while (c < np && c < q->n && q->ids[c] == pids[c]) c++;
        if (c > q->n_ctx_tok - 1) c = q->n_ctx_tok - 1;
        q->start = c;
        if (c > max_start) max_start = c;
        if (q->n > longest) longest = q->n;
        out[i].n_tokens = q->n - q->n_ctx_tok;
        out[i].token_logprobs = ia_malloc(sizeof(float) * (size_t)(out[i].n_tokens > 0 ? out[i].n_tokens : 1));
        out[i].is_greedy = true;
        if (!out[i].token_logprobs) { rc = ia_error_set(err, IA_ERR_NOMEM, "out of memory"); goto done; }
    }
    if (np > longest) longest = np;
    st.prefix_tokens = np;
    /* Requests that repeat the previous one's context (the choices of one question, " true" and
     * " false" of one candidate) take its K/V instead of decoding it again: the longest run of
     * leading tokens they share, again keeping the last context token to decode. */
    if (o.share_contexts)
        for (int i = 1; i < n; i++) {
            lseq *q = &ss[i], *p = &ss[i - 1];
            int c = 0;
            while (c < q->n && c < p->n && q->ids[c] == p->ids[c]) c++;
            if (c > q->n_ctx_tok - 1) c = q->n_ctx_tok - 1;
            if (c > p->n - 1) c = p->n - 1; /* the previous request never decodes its last token */
            q->share = c > q->start ? c : 0;
        }
    for (int i = 0; i < n; i++) ss[i].slot = -1;

    int n_par = o.n_parallel > 0 ? o.n_parallel : LLS_PARALLEL;
    if (n_par > n) n_par = n;
    int n_batch = o.n_batch > 0 ? o.n_batch : LLS_BATCH;
    const bool use_prefix = max_start > 0;
    const int pslot = n_par; /* the prefix lives in the extra last slot */
    ctx = ia_context_init(m, n_par + (use_prefix ? 1 : 0), longest, n_batch, err);
    if (!ctx) { rc = err ? err->code : IA_ERR_NOMEM; goto done; }
    b_tok = ia_malloc(sizeof(int32_t) * (size_t)n_batch);
    b_pos = ia_malloc(sizeof(int32_t) * (size_t)n_batch);
    b_slot = ia_malloc(sizeof(int32_t) * (size_t)n_batch);
    b_log = ia_malloc(sizeof(bool) * (size_t)n_batch);
    b_seq = ia_malloc(sizeof(int) * (size_t)n_batch);
    owner = ia_malloc(sizeof(int) * (size_t)n_par);
    holder = ia_malloc(sizeof(int) * (size_t)n_par);
    if (!b_tok || !b_pos || !b_slot || !b_log || !b_seq || !owner || !holder) { rc = ia_error_set(err, IA_ERR_NOMEM, "out of memory"); goto done; }

    /* The prefix, once, without logits: only its K/V are wanted. */
    if (use_prefix) {
        for (int p0 = 0; p0 < max_start; p0 += n_batch) {
            int take = max_start - p0 < n_batch ? max_start - p0 : n_batch;
            for (int t = 0; t < take; t++) {
                b_tok[t] = pids[p0 + t];
                b_pos[t] = p0 + t;
                b_slot[t] = pslot;
                b_log[t] = false;
            }
            ia_batch b = {take, b_tok, b_pos, b_slot, b_log};
            if ((rc = ia_context_decode(ctx, &b, err)) != IA_OK) goto done;
            st.tokens_decoded += take;
        }
    }

    /* owner[s]: the request running in slot s (-1: free); holder[s]: the last request whose K/V the
     * slot holds (kept after it finishes, until the slot is reused). */
    for (int s = 0; s < n_par; s++) owner[s] = holder[s] = -1;
    int next = 0, finished = 0;
    while (finished < n) {
        for (int s = 0; s < n_par && next < n; s++) {
            if (owner[s] >= 0) continue;
            lseq *q = &ss[next];
            int from = -1, ncopy = q->start;
            if (q->share > 0) {
                const lseq *p = &ss[next - 1];
                bool held = p->slot >= 0 && holder[p->slot] == next - 1;
                if (held && p->fed < q->share) break; /* still decoding what we need: wait (FIFO) */
                if (held) { from = p->slot; ncopy = q->share; }
            }
            if (from < 0 && q->start > 0) from = pslot;
            if (from >= 0 && (rc = ia_context_kv_copy(ctx, from, s, ncopy, err)) != IA_OK) goto done;
            if (from < 0) ncopy = 0;
            st.tokens_reused += ncopy;
            q->fed = ncopy;
            q->slot = s;
            owner[s] = holder[s] = next++;
        }
        int nb = 0;
        for (int s = 0; s < n_par && nb < n_batch; s++) {
            int id = owner[s];
            if (id < 0) continue;
            lseq *q = &ss[id];
            /* The last token predicts nothing, so tokens 0..n-2 are fed. */
            int take = (q->n - 1) - q->fed;
            if (take > n_batch - nb) take = n_batch - nb;
            for (int t = 0; t < take; t++) {
                int p = q->fed + t;
                b_tok[nb] = q->ids[p];
                b_pos[nb] = p;
                b_slot[nb] = s;
                b_log[nb] = p >= q->n_ctx_tok - 1;
                b_seq[nb] = id;
                nb++;
            }
            q->fed += take;
        }
        if (nb > 0) {
            ia_batch b = {nb, b_tok, b_pos, b_slot, b_log};
            if ((rc = ia_context_decode(ctx, &b, err)) != IA_OK) goto done;
            st.tokens_decoded += nb;
            const float *lg = ia_context_logits(ctx);
            int row = 0;
            for (int i = 0; i < nb; i++) {
                if (!b_log[i]) continue;
                const float *l = lg + (size_t)row++ * (size_t)V;
                lseq *q = &ss[b_seq[i]];
                int p = b_pos[i];
                int32_t target = q->ids[p + 1];
                bool top;
                double lp = ia_logits_token_logprob(l, V, target, &top);
                ia_score_result *r = &out[b_seq[i]];
                r->token_logprobs[p + 1 - q->n_ctx_tok] = (float)lp;
                r->logprob += lp;
                if (!top) r->is_greedy = false;
            }
        }
        for (int s = 0; s < n_par; s++) {
            int id = owner[s];
            if (id >= 0 && ss[id].fed >= ss[id].n - 1) {
                owner[s] = -1;
                finished++;
                if (o.progress) o.progress(o.progress_ud, finished, n);
            }
        }
    }
done:
    if (rc != IA_OK)
        for (int i = 0; i < n; i++) ia_score_result_clear(&out[i]);
    for (int i = 0; i < n; i++) ia_free(ss[i].ids);
    ia_free(ss);
    ia_free(pids);
    ia_context_free(ctx);
    ia_free(b_tok);
    ia_free(b_pos);
    ia_free(b_slot);
    ia_free(b_log);
    ia_free(b_seq);
    ia_free(owner);
    ia_free(holder);
    st.seconds = ia_time_now() - t0;
    if (stats) *stats = st;
    return rc;
}
