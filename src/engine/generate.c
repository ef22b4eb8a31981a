/* generate.c — the library's batched calls: ia_generate (N prompts -> N completions on the
 * continuous-batching engine) and ia_score (log-likelihood of continuations, many sequences per
 * forward). */
#include "engine.h"
#include "logprobs.h"

#include <math.h>
#include <stdlib.h>

ia_generate_opts ia_generate_opts_default(void) {
    ia_generate_opts o;
    memset(&o, 0, sizeof o);
    o.sampling = ia_sampling_default();
    o.add_special = true;
    o.parse_special = false;
    return o;
}

void ia_completion_clear(ia_completion *c) {
    if (!c) return;
    ia_free(c->text);
    ia_free(c->tokens);
    memset(c, 0, sizeof *c);
}

void ia_score_result_clear(ia_score_result *r) {
    if (!r) return;
    ia_free(r->token_logprobs);
    memset(r, 0, sizeof *r);
}

/* Default parallelism: enough sequences to amortise the weight reads, few enough to bound the KV cache. */
#define GEN_DEFAULT_PARALLEL 32
#define GEN_MIN_BATCH 128

int ia_generate_tokens(ia_model *m, const int32_t *const *prompt_ids, const int *n_prompt_ids, int n,
                       const ia_generate_opts *opts, ia_completion *out, ia_error *err) {
    ia_generate_opts o = opts ? *opts : ia_generate_opts_default();
    for (int i = 0; i < n; i++) memset(&out[i], 0, sizeof out[i]);
    if (n <= 0) return IA_OK;
    int max_prompt = 1;
    for (int i = 0; i < n; i++)
        if (n_prompt_ids[i] > max_prompt) max_prompt = n_prompt_ids[i];
    int n_ctx = o.n_ctx;
    if (n_ctx <= 0) {
        long want = (long)max_prompt + (o.sampling.max_tokens > 0 ? o.sampling.max_tokens : 0) + 1;
        n_ctx = want > ia_model_n_ctx_train(m) ? ia_model_n_ctx_train(m) : (int)want;
        if (n_ctx < max_prompt + 1) n_ctx = max_prompt + 1; /* the prompt must fit; generation stops at the end */
    }
    int n_par = o.n_parallel > 0 ? o.n_parallel : GEN_DEFAULT_PARALLEL;
    if (n_par > n) n_par = n;
    int n_batch = n_par > GEN_MIN_BATCH ? n_par : GEN_MIN_BATCH;
    ia_engine *e = ia_engine_init(m, n_par, n_ctx, n_batch, err);
    if (!e) return err ? err->code : IA_ERR_NOMEM;
    int *ids = ia_malloc(sizeof(int) * (size_t)n);
    if (!ids) {
        ia_engine_free(e);
        return ia_error_set(err, IA_ERR_NOMEM, "out of memory");
    }
    int rc = IA_OK;
    for (int i = 0; i < n; i++) {
        ia_request r = {0};
        r.prompt = prompt_ids[i];
        r.n_prompt = n_prompt_ids[i];
        r.sampling = o.sampling;
        r.sampling.seed = o.sampling.seed + (uint64_t)i;
        ids[i] = ia_engine_submit(e, &r, err);
        if (ids[i] < 0) {
            ia_error_prefix(err, "prompt %d", i + 1);
            rc = err ? err->code : IA_ERR_ARG;
            goto done;
        }
    }
    int done_count = 0;
    while (true) {
        int left = ia_engine_step(e, err);
        if (left < 0) { rc = err ? err->code : IA_ERR_INTERNAL; goto done; }
        if (o.progress) {
            int d = n - left;
            if (d != done_count) o.progress(o.progress_ud, d, n);
            done_count = d;
        }
        if (left == 0) break;
    }
    for (int i = 0; i < n; i++) {
        ia_engine_take(e, ids[i], &out[i]);
        if (!out[i].text) { rc = ia_error_set(err, IA_ERR_NOMEM, "out of memory collecting completions"); goto done; }
    }
done:
    if (rc != IA_OK)
        for (int i = 0; i < n; i++) ia_completion_clear(&out[i]);
    ia_free(ids);
    ia_engine_free(e);
    return rc;
}

int ia_generate(ia_model *m, const char *const *prompts, int n, const ia_generate_opts *opts,
                ia_completion *out, ia_error *err) {
    ia_generate_opts o = opts ? *opts : ia_generate_opts_default();
    const ia_tokenizer *tok = ia_model_tokenizer(m);
    int32_t **ids = ia_calloc((size_t)(n > 0 ? n : 1), sizeof(int32_t *));
    int *lens = ia_calloc((size_t)(n > 0 ? n : 1), sizeof(int));
    int rc = IA_OK;
    if (!ids || !lens) { rc = ia_error_set(err, IA_ERR_NOMEM, "out of memory"); goto done; }
    for (int i = 0; i < n; i++) {
        lens[i] = ia_tokenizer_encode(tok, prompts[i], strlen(prompts[i]), o.add_special, o.parse_special, &ids[i], err);
        if (lens[i] < 0) {
            ia_error_prefix(err, "prompt %d", i + 1);
            rc = err ? err->code : IA_ERR_FORMAT;
            goto done;
        }
    }
    rc = ia_generate_tokens(m, (const int32_t *const *)ids, lens, n, &o, out, err);
done:
    for (int i = 0; ids && i < n; i++) ia_free(ids[i]);
    ia_free(ids);
    ia_free(lens);
    return rc;
}

/* ---- scoring ------------------------------------------------------------------------------ */

typedef struct score_seq {
    int32_t *ids;   /* [n] context + continuation tokens */
    int n;          /* total tokens */
    int n_ctx_tok;  /* tokens before the continuation (>= 1) */
    int fed;        /* tokens already decoded */
    int slot;
} score_seq;

/* lm-eval's _encode_pair: trailing spaces of the context move to the continuation; the pair is
 * tokenized as context and context+continuation, and the continuation is what follows the context's
 * tokens. An empty context conditions on BOS alone. */
static int score_encode(const ia_tokenizer *tok, const ia_score_request *r, score_seq *s, ia_error *err) {
    const char *ctx = r->context ? r->context : "";
    const char *cont = r->continuation ? r->continuation : "";
    size_t cl = strlen(ctx), nl = strlen(cont);
    size_t sp = 0;
    while (sp < cl && ctx[cl - 1 - sp] == ' ') sp++;
    size_t ctx_len = cl - sp;
    char *whole = ia_malloc(cl + nl + 1);
    if (!whole) return ia_error_set(err, IA_ERR_NOMEM, "out of memory");
    memcpy(whole, ctx, cl);
    memcpy(whole + cl, cont, nl + 1);
    int32_t *cids = NULL, *wids = NULL;
    int nc, nw;
    if (ctx_len == 0) {
        int32_t bos = ia_tokenizer_bos(tok);
        if (bos < 0) { ia_free(whole); return ia_error_set(err, IA_ERR_UNSUPPORTED, "empty context and the model has no BOS token"); }
        int32_t *cont_ids = NULL;
        int ncont = ia_tokenizer_encode(tok, whole, cl + nl, false, false, &cont_ids, err);
        ia_free(whole);
        if (ncont < 0) return err ? err->code : IA_ERR_FORMAT;
        s->ids = ia_malloc(sizeof(int32_t) * (size_t)(ncont + 1));
        if (!s->ids) { ia_free(cont_ids); return ia_error_set(err, IA_ERR_NOMEM, "out of memory"); }
        s->ids[0] = bos;
        memcpy(s->ids + 1, cont_ids, sizeof(int32_t) * (size_t)ncont);
        ia_free(cont_ids);
        s->n = ncont + 1;
        s->n_ctx_tok = 1;
        return IA_OK;
    }
    nc = ia_tokenizer_encode(tok, whole, ctx_len, true, false, &cids, err);
    nw = nc < 0 ? -1 : ia_tokenizer_encode(tok, whole, cl + nl, true, false, &wids, err);
    ia_free(whole);
    ia_free(cids);
    if (nc < 0 || nw < 0) { ia_free(wids); return err ? err->code : IA_ERR_FORMAT; }
    if (nc < 1) nc = 1; /* at least one conditioning token */
    if (nw < nc) nw = nc; /* an empty continuation scores 0 */
    s->ids = wids;
    s->n = nw;
    s->n_ctx_tok = nc;
    return IA_OK;
}

#define SCORE_SLOTS 16
#define SCORE_BATCH 256

int ia_score(ia_model *m, const ia_score_request *reqs, int n, ia_score_result *out, ia_error *err) {
    const ia_tokenizer *tok = ia_model_tokenizer(m);
    const int V = ia_model_n_vocab(m);
    const int n_ctx_max = ia_model_n_ctx_train(m);
    for (int i = 0; i < n; i++) memset(&out[i], 0, sizeof out[i]);
    if (n <= 0) return IA_OK;
    score_seq *ss = ia_calloc((size_t)n, sizeof *ss);
    if (!ss) return ia_error_set(err, IA_ERR_NOMEM, "out of memory");
    int rc = IA_OK, longest = 2;
    ia_context *ctx = NULL;
    int32_t *b_tok = NULL, *b_pos = NULL, *b_slot = NULL;
    bool *b_log = NULL;
    int *b_seq = NULL, *slot_owner = NULL;
    for (int i = 0; i < n; i++) {
        rc = score_encode(tok, &reqs[i], &ss[i], err);
        if (rc != IA_OK) { ia_error_prefix(err, "score request %d", i + 1); goto done; }
        /* Left-truncate to the model's context, keeping the continuation (as lm-eval does). */
        if (ss[i].n > n_ctx_max) {
            int drop = ss[i].n - n_ctx_max;
            if (drop >= ss[i].n_ctx_tok) {
                rc = ia_error_set(err, IA_ERR_RANGE, "score request %d: continuation of %d tokens exceeds the context",
                                  i + 1, ss[i].n - ss[i].n_ctx_tok);
                goto done;
            }
            memmove(ss[i].ids, ss[i].ids + drop, sizeof(int32_t) * (size_t)(ss[i].n - drop));
            ss[i].n -= drop;
            ss[i].n_ctx_tok -= drop;
        }
        if (ss[i].n > longest) longest = ss[i].n;
        out[i].n_tokens = ss[i].n - ss[i].n_ctx_tok;
        out[i].token_logprobs = ia_malloc(sizeof(float) * (size_t)(out[i].n_tokens > 0 ? out[i].n_tokens : 1));
        out[i].is_greedy = true;
        if (!out[i].token_logprobs) { rc = ia_error_set(err, IA_ERR_NOMEM, "out of memory"); goto done; }
        ss[i].slot = -1;
    }
    int n_slots = n < SCORE_SLOTS ? n : SCORE_SLOTS;
    ctx = ia_context_init(m, n_slots, longest, SCORE_BATCH, err);
    if (!ctx) { rc = err ? err->code : IA_ERR_NOMEM; goto done; }
    b_tok = ia_malloc(sizeof(int32_t) * SCORE_BATCH);
    b_pos = ia_malloc(sizeof(int32_t) * SCORE_BATCH);
    b_slot = ia_malloc(sizeof(int32_t) * SCORE_BATCH);
    b_log = ia_malloc(sizeof(bool) * SCORE_BATCH);
    b_seq = ia_malloc(sizeof(int) * SCORE_BATCH);
    slot_owner = ia_malloc(sizeof(int) * (size_t)n_slots);
    if (!b_tok || !b_pos || !b_slot || !b_log || !b_seq || !slot_owner) { rc = ia_error_set(err, IA_ERR_NOMEM, "out of memory"); goto done; }
    for (int s = 0; s < n_slots; s++) slot_owner[s] = -1;
    int next = 0, finished = 0;
    while (finished < n) {
        for (int s = 0; s < n_slots && next < n; s++)
            if (slot_owner[s] < 0) { slot_owner[s] = next; ss[next].slot = s; ss[next].fed = 0; next++; }
        int nb = 0;
        for (int s = 0; s < n_slots && nb < SCORE_BATCH; s++) {
            int id = slot_owner[s];
            if (id < 0) continue;
            score_seq *q = &ss[id];
            /* The last token predicts nothing, so sequences feed tokens 0..n-2. */
            int take = (q->n - 1) - q->fed;
            if (take > SCORE_BATCH - nb) take = SCORE_BATCH - nb;
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
            rc = ia_context_decode(ctx, &b, err);
            if (rc != IA_OK) goto done;
            const float *lg = ia_context_logits(ctx);
            int row = 0;
            for (int i = 0; i < nb; i++) {
                if (!b_log[i]) continue;
                const float *l = lg + (size_t)row++ * (size_t)V;
                score_seq *q = &ss[b_seq[i]];
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
        for (int s = 0; s < n_slots; s++) {
            int id = slot_owner[s];
            if (id >= 0 && ss[id].fed >= ss[id].n - 1) { slot_owner[s] = -1; finished++; }
        }
    }
done:
    if (rc != IA_OK)
        for (int i = 0; i < n; i++) ia_score_result_clear(&out[i]);
    for (int i = 0; i < n; i++) ia_free(ss[i].ids);
    ia_free(ss);
    ia_context_free(ctx);
    ia_free(b_tok);
    ia_free(b_pos);
    ia_free(b_slot);
    ia_free(b_log);
    ia_free(b_seq);
    ia_free(slot_owner);
    return rc;
}
