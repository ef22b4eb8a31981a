/* engine.c — continuous batching: slots, one forward per step for all sequences, sampling, stops. */
#include "engine.h"

#include <stdlib.h>

typedef enum seq_state { SEQ_WAITING = 0, SEQ_ACTIVE, SEQ_DONE, SEQ_FREE } seq_state;

typedef struct eng_seq {
    seq_state state;
    int slot;                 /* KV slot while active, else -1 */
    int32_t *prompt;          /* [n_prompt] */
    int n_prompt;
    int n_fed;                /* prompt tokens already in the cache */
    int32_t *gen;             /* [cap_gen] generated ids */
    int n_gen, cap_gen;
    int32_t next;             /* sampled token not yet fed to the model */
    bool has_next;
    int pos;                  /* next position to write in the slot */
    ia_buf text;              /* generated text so far */
    size_t emitted;           /* bytes of text already passed to on_text */
    size_t cut;               /* when finished by a stop string: the text length before it */
    ia_sampler *sampler;
    ia_sampling sp;
    int stop_maxlen;          /* longest stop string */
    char *stop[IA_MAX_STOP];  /* owned copies */
    ia_finish finish;
    bool cancel;
    int logit_row;            /* row in the context's logits for this step, or -1 */
    int link;                 /* next id in the waiting queue or the free list, or -1 */
    void (*on_text)(void *ud, const char *text, size_t len);
    void (*on_done)(void *ud, int id);
    void *ud;
} eng_seq;

struct ia_engine {
    ia_model *model;
    ia_context *ctx;
    int n_slots, n_ctx, n_batch;
    int *slot_owner;          /* [n_slots] seq id or -1 */
    eng_seq *seqs;            /* [n_seqs] indexed by request id; ids are reused once taken */
    int n_seqs, cap_seqs;
    int wait_head, wait_tail; /* FIFO of waiting ids (-1: empty) */
    int free_head;            /* ids whose results were taken, for reuse (-1: none) */
    int n_unfinished;
    /* batch arrays, sized n_batch */
    int32_t *b_token, *b_pos, *b_slot;
    bool *b_logits;
    int *b_seq;               /* [n_batch] which seq each batch row belongs to */
    pthread_mutex_t mu;
};

ia_engine *ia_engine_init(ia_model *m, int n_slots, int n_ctx, int n_batch, ia_error *err) {
    if (n_slots < 1 || n_ctx < 2 || n_batch < 1) {
        ia_error_set(err, IA_ERR_ARG, "engine: bad sizes (slots %d, ctx %d, batch %d)", n_slots, n_ctx, n_batch);
        return NULL;
    }
    if (n_batch < n_slots) n_batch = n_slots; /* every active sequence must fit one decode token */
    ia_engine *e = ia_calloc(1, sizeof *e);
    if (!e) goto oom;
    e->model = m;
    e->n_slots = n_slots;
    e->n_ctx = n_ctx;
    e->n_batch = n_batch;
    pthread_mutex_init(&e->mu, NULL);
    e->ctx = ia_context_init_f16kv(m, n_slots, n_ctx, n_batch, err); /* generation: f16 cache */
    if (!e->ctx) { ia_engine_free(e); return NULL; }
    e->slot_owner = ia_malloc(sizeof(int) * (size_t)n_slots);
    e->b_token = ia_malloc(sizeof(int32_t) * (size_t)n_batch);
    e->b_pos = ia_malloc(sizeof(int32_t) * (size_t)n_batch);
    e->b_slot = ia_malloc(sizeof(int32_t) * (size_t)n_batch);
    e->b_logits = ia_malloc(sizeof(bool) * (size_t)n_batch);
    e->b_seq = ia_malloc(sizeof(int) * (size_t)n_batch);
    if (!e->slot_owner || !e->b_token || !e->b_pos || !e->b_slot || !e->b_logits || !e->b_seq) {
        ia_engine_free(e);
        goto oom;
    }
    for (int i = 0; i < n_slots; i++) e->slot_owner[i] = -1;
    e->wait_head = e->wait_tail = e->free_head = -1;
    return e;
oom:
    ia_error_set(err, IA_ERR_NOMEM, "engine: out of memory");
    return NULL;
}

static void seq_release(eng_seq *s) {
    ia_free(s->prompt);
    ia_free(s->gen);
    ia_buf_free(&s->text);
    ia_sampler_free(s->sampler);
    for (int i = 0; i < IA_MAX_STOP; i++) ia_free(s->stop[i]);
    s->prompt = NULL;
    s->gen = NULL;
    s->sampler = NULL;
    memset(s->stop, 0, sizeof s->stop);
}

void ia_engine_free(ia_engine *e) {
    if (!e) return;
    for (int i = 0; i < e->n_seqs; i++) seq_release(&e->seqs[i]);
    ia_free(e->seqs);
    ia_context_free(e->ctx);
    ia_free(e->slot_owner);
    ia_free(e->b_token);
    ia_free(e->b_pos);
    ia_free(e->b_slot);
    ia_free(e->b_logits);
    ia_free(e->b_seq);
    pthread_mutex_destroy(&e->mu);
    ia_free(e);
}

int ia_engine_submit(ia_engine *e, const ia_request *r, ia_error *err) {
    if (!r->prompt || r->n_prompt < 1)
        return ia_error_set(err, IA_ERR_ARG, "empty prompt (the model has no BOS token to start from)"), -1;
    if (r->n_prompt >= e->n_ctx)
        return ia_error_set(err, IA_ERR_RANGE, "prompt of %d tokens does not fit the context of %d tokens",
                            r->n_prompt, e->n_ctx), -1;
    if (r->sampling.n_stop < 0 || r->sampling.n_stop > IA_MAX_STOP)
        return ia_error_set(err, IA_ERR_ARG, "at most %d stop strings", IA_MAX_STOP), -1;
    eng_seq s = {0};
    s.slot = -1;
    s.logit_row = -1;
    s.sp = r->sampling;
    s.prompt = ia_malloc(sizeof(int32_t) * (size_t)r->n_prompt);
    s.cap_gen = 16;
    s.gen = ia_malloc(sizeof(int32_t) * (size_t)s.cap_gen);
    s.sampler = ia_sampler_init(&r->sampling, ia_model_n_vocab(e->model));
    bool ok = s.prompt && s.gen && s.sampler;
    for (int i = 0; ok && i < r->sampling.n_stop; i++) {
        const char *st = r->sampling.stop[i];
        if (!st || !*st) continue;
        s.stop[i] = ia_strdup(st);
        if (!s.stop[i]) ok = false;
        else if ((int)strlen(st) > s.stop_maxlen) s.stop_maxlen = (int)strlen(st);
    }
    if (!ok) {
        seq_release(&s);
        return ia_error_set(err, IA_ERR_NOMEM, "out of memory submitting a request"), -1;
    }
    memcpy(s.prompt, r->prompt, sizeof(int32_t) * (size_t)r->n_prompt);
    s.n_prompt = r->n_prompt;
    s.on_text = r->on_text;
    s.on_done = r->on_done;
    s.ud = r->ud;
    s.link = -1;
    pthread_mutex_lock(&e->mu);
    int id;
    if (e->free_head >= 0) { /* reuse a taken id, so a long-running server's table stays small */
        id = e->free_head;
        e->free_head = e->seqs[id].link;
    } else {
        if (e->n_seqs == e->cap_seqs) {
            int cap = e->cap_seqs ? e->cap_seqs * 2 : 16;
            eng_seq *ns = ia_realloc(e->seqs, sizeof(eng_seq) * (size_t)cap);
            if (!ns) {
                pthread_mutex_unlock(&e->mu);
                seq_release(&s);
                return ia_error_set(err, IA_ERR_NOMEM, "out of memory submitting a request"), -1;
            }
            e->seqs = ns;
            e->cap_seqs = cap;
        }
        id = e->n_seqs++;
    }
    e->seqs[id] = s;
    if (e->wait_tail >= 0) e->seqs[e->wait_tail].link = id;
    else e->wait_head = id;
    e->wait_tail = id;
    e->n_unfinished++;
    pthread_mutex_unlock(&e->mu);
    return id;
}

void ia_engine_cancel(ia_engine *e, int id) {
    pthread_mutex_lock(&e->mu);
    if (id >= 0 && id < e->n_seqs && e->seqs[id].state != SEQ_FREE) e->seqs[id].cancel = true;
    pthread_mutex_unlock(&e->mu);
}

int ia_engine_pending(ia_engine *e) {
    pthread_mutex_lock(&e->mu);
    int n = e->n_unfinished;
    pthread_mutex_unlock(&e->mu);
    return n;
}

/* Passes newly final text to on_text: everything up to the cut when finished, otherwise all but the
 * last (longest stop - 1) bytes, which could still turn out to start a stop string. */
static void seq_emit(eng_seq *s, bool final) {
    if (!s->on_text) return;
    size_t end = s->text.len;
    if (s->finish == IA_FINISH_STOP) end = s->cut;
    else if (!final && s->stop_maxlen > 0) end = end > (size_t)(s->stop_maxlen - 1) ? end - (size_t)(s->stop_maxlen - 1) : 0;
    /* Do not split a UTF-8 character unless final. */
    if (!final)
        while (end > s->emitted && end < s->text.len && ((unsigned char)s->text.data[end] & 0xC0) == 0x80) end--;
    if (end > s->emitted) {
        s->on_text(s->ud, s->text.data + s->emitted, end - s->emitted);
        s->emitted = end;
    }
}

static void seq_finish(ia_engine *e, int id, ia_finish why) {
    eng_seq *s = &e->seqs[id];
    s->finish = why;
    seq_emit(s, true);
    if (s->slot >= 0) e->slot_owner[s->slot] = -1;
    s->slot = -1;
    s->state = SEQ_DONE;
    e->n_unfinished--;
    if (s->on_done) s->on_done(s->ud, id);
}

/* Looks for a stop string that ends in the text appended since `from`; sets the cut. */
static bool seq_check_stop(eng_seq *s, size_t from) {
    if (s->stop_maxlen == 0) return false;
    size_t start = from > (size_t)s->stop_maxlen ? from - (size_t)s->stop_maxlen : 0;
    size_t best = (size_t)-1;
    for (int i = 0; i < IA_MAX_STOP; i++) {
        if (!s->stop[i]) continue;
        const char *hit = memmem(s->text.data + start, s->text.len - start, s->stop[i], strlen(s->stop[i]));
        if (hit && (size_t)(hit - s->text.data) < best) best = (size_t)(hit - s->text.data);
    }
    if (best == (size_t)-1) return false;
    s->cut = best;
    return true;
}

static void seq_push_token(eng_seq *s, int32_t tok) {
    if (s->n_gen == s->cap_gen) {
        int32_t *g = ia_realloc(s->gen, sizeof(int32_t) * (size_t)s->cap_gen * 2);
        if (!g) { s->text.oom = true; return; }
        s->gen = g;
        s->cap_gen *= 2;
    }
    s->gen[s->n_gen++] = tok;
}

int ia_engine_step(ia_engine *e, ia_error *err) {
    const ia_tokenizer *tok = ia_model_tokenizer(e->model);
    const int V = ia_model_n_vocab(e->model);

    /* The lock is held except during the forward pass, so submissions from other threads (which may
     * move e->seqs) never race with the bookkeeping. Callbacks run under it. */
    pthread_mutex_lock(&e->mu);
    for (int slot = 0; slot < e->n_slots; slot++) {
        int id = e->slot_owner[slot];
        if (id >= 0 && e->seqs[id].cancel) {
            e->seqs[id].cut = e->seqs[id].text.len;
            seq_finish(e, id, IA_FINISH_STOP);
        }
    }
    /* Admit waiting requests in submission order into free slots; cancelled or empty ones finish
     * without taking a slot. */
    for (int slot = 0; slot < e->n_slots && e->wait_head >= 0;) {
        if (e->slot_owner[slot] >= 0) { slot++; continue; }
        int id = e->wait_head;
        eng_seq *s = &e->seqs[id];
        e->wait_head = s->link;
        if (e->wait_head < 0) e->wait_tail = -1;
        s->link = -1;
        if (s->cancel || s->sp.max_tokens <= 0) {
            seq_finish(e, id, s->cancel ? IA_FINISH_STOP : IA_FINISH_LENGTH);
            continue;
        }
        s->state = SEQ_ACTIVE;
        s->slot = slot;
        s->pos = 0;
        s->n_fed = 0;
        e->slot_owner[slot] = id;
        slot++;
    }

    /* Build one batch: every decoding sequence's next token first, then prompt chunks. */
    int n = 0;
    for (int slot = 0; slot < e->n_slots; slot++) {
        int id = e->slot_owner[slot];
        if (id < 0) continue;
        eng_seq *s = &e->seqs[id];
        s->logit_row = -1;
        if (!s->has_next) continue;
        e->b_token[n] = s->next;
        e->b_pos[n] = s->pos;
        e->b_slot[n] = slot;
        e->b_logits[n] = true;
        e->b_seq[n] = id;
        n++;
    }
    for (int slot = 0; slot < e->n_slots && n < e->n_batch; slot++) {
        int id = e->slot_owner[slot];
        if (id < 0) continue;
        eng_seq *s = &e->seqs[id];
        if (s->has_next || s->n_fed >= s->n_prompt) continue;
        int take = s->n_prompt - s->n_fed;
        if (take > e->n_batch - n) take = e->n_batch - n;
        for (int i = 0; i < take; i++) {
            e->b_token[n] = s->prompt[s->n_fed + i];
            e->b_pos[n] = s->n_fed + i;
            e->b_slot[n] = slot;
            e->b_logits[n] = (s->n_fed + i == s->n_prompt - 1);
            e->b_seq[n] = id;
            n++;
        }
        s->n_fed += take;
        s->pos = s->n_fed;
    }
    if (n == 0) {
        int left = e->n_unfinished;
        pthread_mutex_unlock(&e->mu);
        return left;
    }

    pthread_mutex_unlock(&e->mu);
    ia_batch b = {n, e->b_token, e->b_pos, e->b_slot, e->b_logits};
    int rc = ia_context_decode(e->ctx, &b, err);
    pthread_mutex_lock(&e->mu);
    if (rc != IA_OK) {
        for (int slot = 0; slot < e->n_slots; slot++)
            if (e->slot_owner[slot] >= 0) seq_finish(e, e->slot_owner[slot], IA_FINISH_CONTEXT);
        pthread_mutex_unlock(&e->mu);
        return -1;
    }
    const float *logits = ia_context_logits(e->ctx);
    int row = 0;
    for (int i = 0; i < n; i++) {
        if (!e->b_logits[i]) continue;
        e->seqs[e->b_seq[i]].logit_row = row++;
    }

    /* Sample and apply the stopping rules of each sequence that produced logits. */
    char piece[256];
    for (int slot = 0; slot < e->n_slots; slot++) {
        int id = e->slot_owner[slot];
        if (id < 0) continue;
        eng_seq *s = &e->seqs[id];
        if (s->logit_row < 0) continue;
        if (s->has_next) { s->pos++; s->has_next = false; }
        float *lg = (float *)logits + (size_t)s->logit_row * (size_t)V;
        int32_t t = ia_sampler_sample(s->sampler, lg, s->gen, s->n_gen);
        if (t < 0) { seq_finish(e, id, IA_FINISH_EOS); continue; } /* every logit banned or NaN */
        if (!s->sp.ignore_eos && ia_tokenizer_is_eog(tok, t)) { seq_finish(e, id, IA_FINISH_EOS); continue; }
        seq_push_token(s, t);
        size_t before = s->text.len;
        int np = ia_tokenizer_token_to_piece(tok, t, piece, (int)sizeof piece, false);
        if (np > (int)sizeof piece) np = (int)sizeof piece;
        if (np > 0) ia_buf_append(&s->text, piece, (size_t)np);
        if (s->text.oom) { seq_finish(e, id, IA_FINISH_LENGTH); continue; }
        if (seq_check_stop(s, before)) { seq_finish(e, id, IA_FINISH_STOP); continue; }
        if (s->n_gen >= s->sp.max_tokens) { seq_finish(e, id, IA_FINISH_LENGTH); continue; }
        if (s->pos >= e->n_ctx) { seq_finish(e, id, IA_FINISH_CONTEXT); continue; }
        s->next = t;
        s->has_next = true;
        seq_emit(s, false);
    }
    int left = e->n_unfinished;
    pthread_mutex_unlock(&e->mu);
    return left;
}

int ia_engine_take(ia_engine *e, int id, ia_completion *out) {
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&e->mu);
    bool done = id >= 0 && id < e->n_seqs && e->seqs[id].state == SEQ_DONE;
    if (!done) {
        pthread_mutex_unlock(&e->mu);
        return 0;
    }
    eng_seq *s = &e->seqs[id];
    size_t len = s->finish == IA_FINISH_STOP && s->cut <= s->text.len ? s->cut : s->text.len;
    out->text = ia_strndup(s->text.data ? s->text.data : "", len);
    out->tokens = s->gen;
    s->gen = NULL;
    out->n_tokens = s->n_gen;
    out->n_prompt_tokens = s->n_prompt;
    out->finish = s->finish;
    seq_release(s);
    s->state = SEQ_FREE;
    s->link = e->free_head;
    e->free_head = id;
    pthread_mutex_unlock(&e->mu);
    return 1;
}
