/* data.c — training data: JSONL lines (OpenAI/TRL messages, FastChat conversations, prompt/completion)
 * rendered with a chat template and tokenized with a per-token loss mask (assistant tokens only),
 * then shuffled and grouped into micro-batches (padding or packing). */
#include "train/train_internal.h"
#include "chat/chat.h"
#include "tokenizer/tokenizer.h"

#include <jansson.h>

/* ---- JSON line -> messages -------------------------------------------------------------------- */

typedef struct msgs {
    ia_chat_msg *m;
    bool *loss;                    /* [n] this message's text carries loss (assistant turns) */
    int n, cap;
    bool prompt_completion;        /* plain {"prompt","completion"} strings */
} msgs;

static int msgs_push(msgs *ms, const char *role, const char *content, bool loss) {
    if (ms->n == ms->cap) {
        int cap = ms->cap ? ms->cap * 2 : 8;
        ia_chat_msg *m = ia_realloc(ms->m, (size_t)cap * sizeof *m);
        if (!m) return IA_ERR_NOMEM;
        ms->m = m;
        bool *l = ia_realloc(ms->loss, (size_t)cap * sizeof *l);
        if (!l) return IA_ERR_NOMEM;
        ms->loss = l;
        ms->cap = cap;
    }
    ms->m[ms->n] = (ia_chat_msg){role, content};
    ms->loss[ms->n] = loss;
    ms->n++;
    return IA_OK;
}

/* FastChat / ShareGPT "from" values. */
static const char *map_role(const char *r) {
    if (!strcmp(r, "system")) return "system";
    if (!strcmp(r, "user") || !strcmp(r, "human")) return "user";
    if (!strcmp(r, "assistant") || !strcmp(r, "gpt") || !strcmp(r, "chatgpt") || !strcmp(r, "bard") ||
        !strcmp(r, "bing") || !strcmp(r, "model"))
        return "assistant";
    return NULL;
}

/* Message content: a string, or OpenAI content parts [{"type":"text","text":...}] joined. Parts
 * joined are kept alive in `keep` (a JSON array owning the strings). */
static const char *content_text(json_t *c, json_t *keep) {
    if (json_is_string(c)) return json_string_value(c);
    if (!json_is_array(c)) return NULL;
    ia_buf b = {0};
    size_t i;
    json_t *part;
    json_array_foreach(c, i, part) {
        json_t *tx = json_object_get(part, "text");
        if (!json_is_string(tx)) { ia_buf_free(&b); return NULL; }
        ia_buf_append(&b, json_string_value(tx), json_string_length(tx));
    }
    char *s = ia_buf_take(&b);
    if (!s) return NULL;
    json_t *js = json_string(s);
    ia_free(s);
    if (!js) return NULL;
    json_array_append_new(keep, js);
    return json_string_value(js);
}

/* A list of {role|from, content|value} objects appended to ms; loss on assistant turns when
 * `loss_ok`. Returns NULL or a message describing the first problem. */
static const char *parse_turns(json_t *arr, const char *kname, const char *rkey, const char *ckey, bool loss_ok,
                               msgs *ms, json_t *keep, char *why, size_t cap) {
    size_t i;
    json_t *it;
    if (!json_is_array(arr)) { snprintf(why, cap, "\"%s\" must be an array", kname); return why; }
    json_array_foreach(arr, i, it) {
        json_t *r = json_object_get(it, rkey), *c = json_object_get(it, ckey);
        if (!json_is_object(it) || !json_is_string(r)) {
            snprintf(why, cap, "%s[%zu]: expected an object with a string \"%s\"", kname, i, rkey);
            return why;
        }
        const char *role = map_role(json_string_value(r));
        if (!role) {
            snprintf(why, cap, "%s[%zu]: unknown role '%.40s' (expected system, user or assistant)", kname, i,
                     json_string_value(r));
            return why;
        }
        const char *text = content_text(c, keep);
        if (!text) {
            snprintf(why, cap, "%s[%zu]: \"%s\" must be a string (or a list of text parts)", kname, i, ckey);
            return why;
        }
        if (msgs_push(ms, role, text, loss_ok && !strcmp(role, "assistant")) != IA_OK) {
            snprintf(why, cap, "out of memory");
            return why;
        }
    }
    return NULL;
}

static const char *parse_line(json_t *obj, msgs *ms, json_t *keep, char *why, size_t cap) {
    if (!json_is_object(obj)) return "expected a JSON object";
    json_t *m = json_object_get(obj, "messages"), *cv = json_object_get(obj, "conversations");
    json_t *p = json_object_get(obj, "prompt"), *c = json_object_get(obj, "completion");
    if (m) return parse_turns(m, "messages", "role", "content", true, ms, keep, why, cap);
    if (cv) {
        json_t *sys = json_object_get(obj, "system"); /* FastChat/ShareGPT may carry one at the top */
        if (json_is_string(sys) && json_string_length(sys) && msgs_push(ms, "system", json_string_value(sys), false))
            return "out of memory";
        return parse_turns(cv, "conversations", "from", "value", true, ms, keep, why, cap);
    }
    if (p || c) {
        if (!p || !c) return "\"prompt\" and \"completion\" must both be present";
        if (json_is_string(p) && json_is_string(c)) {
            ms->prompt_completion = true;
            if (msgs_push(ms, "user", json_string_value(p), false) || msgs_push(ms, "assistant", json_string_value(c), true))
                return "out of memory";
            return NULL;
        }
        /* TRL conversational prompt-completion: two message lists, loss on the completion */
        const char *e = parse_turns(p, "prompt", "role", "content", false, ms, keep, why, cap);
        if (e) return e;
        return parse_turns(c, "completion", "role", "content", true, ms, keep, why, cap);
    }
    return "expected \"messages\", \"conversations\" or \"prompt\"/\"completion\"";
}

/* ---- rendering: text + character spans that carry loss ----------------------------------------- */

typedef struct span { size_t a, b; } span;

typedef struct rendered {
    char *text;
    span *sp;
    int n_sp;
    bool eos_at_end;               /* plain format: the example ends with EOS (learned) */
} rendered;

static void rendered_free(rendered *r) {
    ia_free(r->text);
    ia_free(r->sp);
    memset(r, 0, sizeof *r);
}

static int render(const msgs *ms, ia_chat_template_id tid, rendered *out, char *why, size_t cap) {
    memset(out, 0, sizeof *out);
    out->sp = ia_calloc((size_t)ms->n + 1, sizeof *out->sp);
    if (!out->sp) return IA_ERR_NOMEM;
    if (tid == IA_CHAT_TEMPLATE_UNKNOWN) {
        /* plain: the contents one after another (TRL's prompt + completion), EOS after the end */
        ia_buf b = {0};
        for (int i = 0; i < ms->n; i++) {
            size_t a = b.len;
            ia_buf_puts(&b, ms->m[i].content);
            if (ms->loss[i] && b.len > a) out->sp[out->n_sp++] = (span){a, b.len};
        }
        out->text = ia_buf_take(&b);
        out->eos_at_end = true;
        return out->text ? IA_OK : IA_ERR_NOMEM;
    }
    ia_error e = {0};
    out->text = ia_chat_apply(tid, ms->m, ms->n, false, &e);
    if (!out->text) { snprintf(why, cap, "chat template: %.200s", e.msg); return IA_ERR_FORMAT; }
    size_t full = strlen(out->text), last = 0;
    for (int k = 0; k < ms->n; k++) {
        if (!ms->loss[k]) continue;
        /* the assistant turn is what rendering up to it adds after the assistant prefix: its
         * content and the template's end-of-turn text (so the model learns to stop) */
        char *pre = k ? ia_chat_apply(tid, ms->m, k, true, &e) : NULL;
        char *post = ia_chat_apply(tid, ms->m, k + 1, false, &e);
        size_t a = pre ? strlen(pre) : 0, b = post ? strlen(post) : 0;
        bool ok = post && (k == 0 || pre) && a <= b && b <= full && !memcmp(post, out->text, b) &&
                  (!pre || !memcmp(pre, out->text, a)) && a >= last;
        if (!ok) {
            /* templates that do not render turn by turn: fall back to the content itself */
            const char *c = ms->m[k].content, *f = strstr(out->text + last, c);
            if (!f || !*c) {
                ia_free(pre);
                ia_free(post);
                snprintf(why, cap, "cannot locate assistant message %d in the rendered conversation", k);
                return IA_ERR_FORMAT;
            }
            a = (size_t)(f - out->text);
            b = a + strlen(c);
        }
        ia_free(pre);
        ia_free(post);
        if (b > a) out->sp[out->n_sp++] = (span){a, b};
        last = b;
    }
    return IA_OK;
}

/* ---- tokenization with the mask ------------------------------------------------------------------ */

static int lcp(const int32_t *a, int na, const int32_t *b, int nb) {
    int i = 0;
    while (i < na && i < nb && a[i] == b[i]) i++;
    return i;
}

/* Tokens of text[0..len) as a prefix of the full tokenization: the count of leading tokens that
 * agree (a token straddling the boundary belongs to neither side's count). */
static int boundary(const ia_tokenizer *tk, const char *text, size_t len, bool special, const int32_t *full,
                    int n_full, ia_error *err) {
    int32_t *ids = NULL;
    int n = ia_tokenizer_encode(tk, text, len, true, special, &ids, err);
    if (n < 0) return -1;
    int k = lcp(ids, n, full, n_full);
    ia_free(ids);
    return k;
}

typedef struct growbuf {
    int32_t *tok;
    uint8_t *mask;
    size_t n, cap;
} growbuf;

static int grow(growbuf *g, size_t need) {
    if (g->n + need <= g->cap) return IA_OK;
    size_t cap = g->cap ? g->cap : 4096;
    while (cap < g->n + need) cap *= 2;
    int32_t *t = ia_realloc(g->tok, cap * sizeof *t);
    if (!t) return IA_ERR_NOMEM;
    g->tok = t;
    uint8_t *m = ia_realloc(g->mask, cap);
    if (!m) return IA_ERR_NOMEM;
    g->mask = m;
    g->cap = cap;
    return IA_OK;
}

/* Appends one example's tokens and mask; returns tokens appended (before truncation) or -1. */
static int tokenize_example(const ia_tokenizer *tk, const rendered *r, bool special, growbuf *g, ia_error *err) {
    int32_t *ids = NULL;
    int n = ia_tokenizer_encode(tk, r->text, strlen(r->text), true, special, &ids, err);
    if (n < 0) return -1;
    int32_t eos = ia_tokenizer_eos(tk);
    bool add_eos = r->eos_at_end && eos >= 0 && !(n > 0 && ids[n - 1] == eos);
    if (grow(g, (size_t)n + 1) != IA_OK) {
        ia_free(ids);
        ia_error_set(err, IA_ERR_NOMEM, "out of memory");
        return -1;
    }
    memcpy(g->tok + g->n, ids, (size_t)n * sizeof *ids);
    memset(g->mask + g->n, 0, (size_t)n + 1);
    for (int s = 0; s < r->n_sp; s++) {
        int a = boundary(tk, r->text, r->sp[s].a, special, ids, n, err);
        int b = r->sp[s].b >= strlen(r->text) ? n : boundary(tk, r->text, r->sp[s].b, special, ids, n, err);
        if (a < 0 || b < 0) { ia_free(ids); return -1; }
        for (int i = a; i < b; i++) g->mask[g->n + i] = 1;
    }
    if (add_eos) {
        g->tok[g->n + n] = eos;
        g->mask[g->n + n] = 1;
        n++;
    }
    g->n += (size_t)n;
    ia_free(ids);
    return n;
}

/* ---- the dataset -------------------------------------------------------------------------------- */

int tr_dataset_load(tr_dataset *ds, const char *path, const ia_model *m, const char *template_name, int max_len,
                    ia_error *err) {
    memset(ds, 0, sizeof *ds);
    ia_chat_template_id tid = IA_CHAT_TEMPLATE_UNKNOWN;
    if (template_name && strcmp(template_name, "plain") != 0) {
        tid = ia_chat_template_from_name(template_name);
        if (!tid)
            return ia_error_set(err, IA_ERR_ARG, "unknown chat template '%s' (known: plain, %s)", template_name,
                                ia_chat_template_names());
    } else if (!template_name && ia_model_chat_template(m)) {
        tid = ia_chat_template_detect(ia_model_chat_template(m));
        if (!tid)
            return ia_error_set(err, IA_ERR_UNSUPPORTED, "%s: the model's chat template is not one of the built-in "
                                "formats; name one (%s) or \"plain\"", m->path, ia_chat_template_names());
    }
    snprintf(ds->template_name, sizeof ds->template_name, "%s", tid ? ia_chat_template_name(tid) : "plain");
    if (max_len < 2) return ia_error_set(err, IA_ERR_ARG, "max_len %d must be at least 2", max_len);

    size_t len;
    char *data = ia_file_read(path, &len, err);
    if (!data) return err->code;
    growbuf g = {0};
    int cap = 0, line = 0, rc = IA_OK;
    const ia_tokenizer *tk = ia_model_tokenizer(m);
    char *p = data, *end = data + len;
    char why[256];
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *le = nl ? nl : end;
        line++;
        char *q = p;
        while (q < le && (*q == ' ' || *q == '\t' || *q == '\r')) q++;
        p = nl ? nl + 1 : end;
        if (q == le) continue; /* blank line */
        json_error_t je;
        json_t *obj = json_loadb(q, (size_t)(le - q), 0, &je);
        if (!obj) {
            rc = ia_error_set(err, IA_ERR_FORMAT, "%s:%d: malformed JSON: %s (column %d)", path, line, je.text, je.column);
            break;
        }
        msgs ms = {0};
        json_t *keep = json_array();
        why[0] = 0;
        const char *e = parse_line(obj, &ms, keep, why, sizeof why);
        int n_loss_msgs = 0;
        for (int i = 0; !e && i < ms.n; i++) n_loss_msgs += ms.loss[i] && ms.m[i].content[0];
        if (!e && !n_loss_msgs) e = "no non-empty assistant message (nothing to learn)";
        rendered r = {0};
        if (!e && render(&ms, tid, &r, why, sizeof why) != IA_OK) e = why[0] ? why : "out of memory";
        if (e) {
            rc = ia_error_set(err, IA_ERR_FORMAT, "%s:%d: %s", path, line, e);
            rendered_free(&r);
            ia_free(ms.m);
            ia_free(ms.loss);
            json_decref(keep);
            json_decref(obj);
            break;
        }
        size_t off = g.n;
        int n = tokenize_example(tk, &r, tid != IA_CHAT_TEMPLATE_UNKNOWN, &g, err);
        rendered_free(&r);
        ia_free(ms.m);
        ia_free(ms.loss);
        json_decref(keep);
        json_decref(obj);
        if (n < 0) {
            ia_error_prefix(err, "%s:%d", path, line);
            rc = err->code;
            break;
        }
        if (n > max_len) {
            ds->n_truncated++;
            g.n = off + (size_t)max_len;
            n = max_len;
        }
        int n_loss = 0;
        for (int i = 1; i < n; i++) n_loss += g.mask[off + i]; /* token 0 is never predicted */
        if (!n_loss) {
            ds->n_skipped++;
            g.n = off;
            continue;
        }
        if (ds->n_ex == cap) {
            cap = cap ? cap * 2 : 256;
            tr_example *ex = ia_realloc(ds->ex, (size_t)cap * sizeof *ex);
            if (!ex) { rc = ia_error_set(err, IA_ERR_NOMEM, "out of memory"); break; }
            ds->ex = ex;
        }
        ds->ex[ds->n_ex++] = (tr_example){off, n, n_loss, line};
    }
    ia_free(data);
    ds->tok = g.tok;
    ds->mask = g.mask;
    ds->n_tok = g.n;
    if (rc == IA_OK && ds->n_ex == 0)
        rc = ia_error_set(err, IA_ERR_FORMAT, "%s: no training examples (%d lines%s)", path, line,
                          ds->n_skipped ? ", every one without a loss token after truncation" : "");
    if (rc != IA_OK) tr_dataset_free(ds);
    return rc;
}

void tr_dataset_free(tr_dataset *ds) {
    ia_free(ds->ex);
    ia_free(ds->tok);
    ia_free(ds->mask);
    memset(ds, 0, sizeof *ds);
}

/* ---- the plan: shuffled micro-batches per epoch ---------------------------------------------------- */

static void shuffle(int *a, int n, uint64_t seed) {
    ia_rng rng;
    ia_rng_seed(&rng, seed);
    for (int i = n - 1; i > 0; i--) { /* Fisher-Yates */
        int j = (int)(ia_rng_next(&rng) % (uint64_t)(i + 1));
        int t = a[i]; a[i] = a[j]; a[j] = t;
    }
}

int tr_plan_build(tr_plan *pl, const tr_dataset *ds, const ia_train_opts *o, ia_error *err) {
    memset(pl, 0, sizeof *pl);
    int E = o->epochs, n = ds->n_ex;
    if (E < 1 || o->batch_size < 1 || o->grad_accum < 1)
        return ia_error_set(err, IA_ERR_ARG, "epochs %d, batch_size %d and grad_accum %d must all be >= 1", E,
                            o->batch_size, o->grad_accum);
    pl->epochs = E;
    pl->n_ex = n;
    pl->ex_order = ia_malloc((size_t)E * n * sizeof(int));
    pl->mb_first = ia_malloc((size_t)E * (n + 1) * sizeof(int));
    int *base = ia_malloc((size_t)n * sizeof(int)), *gfirst = ia_malloc((size_t)(n + 1) * sizeof(int));
    int *gord = ia_malloc((size_t)(n + 1) * sizeof(int));
    if (!pl->ex_order || !pl->mb_first || !base || !gfirst || !gord) {
        ia_free(base); ia_free(gfirst); ia_free(gord);
        tr_plan_free(pl);
        return ia_error_set(err, IA_ERR_NOMEM, "out of memory");
    }
    /* Padding: every epoch shuffles the examples, then takes batch_size at a time. Packing: the
     * examples are shuffled once and packed greedily (whole examples, at most batch_size * max_len
     * tokens per micro-batch); every epoch then shuffles the packed micro-batches. Either way each
     * example attends only to itself, so packing changes the grouping, never the function. */
    int ng = 0;
    if (o->pack) {
        for (int i = 0; i < n; i++) base[i] = i;
        shuffle(base, n, o->seed * 1000003ull + 0x5eed);
        const long cap_tokens = (long)o->batch_size * o->max_len;
        long tokens = 0;
        for (int i = 0; i < n; i++) {
            int len = ds->ex[base[i]].n;
            if (i == 0 || tokens + len > cap_tokens) { gfirst[ng++] = i; tokens = 0; }
            tokens += len;
        }
    } else {
        for (int i = 0; i < n; i += o->batch_size) gfirst[ng++] = i;
    }
    gfirst[ng] = n;
    for (int e = 0; e < E; e++) {
        int *ord = pl->ex_order + (size_t)e * n, *first = pl->mb_first + (size_t)e * (n + 1);
        if (o->pack) {
            for (int g = 0; g < ng; g++) gord[g] = g;
            shuffle(gord, ng, o->seed * 1000003ull + (uint64_t)e);
            int k = 0;
            for (int g = 0; g < ng; g++) {
                first[g] = k;
                for (int i = gfirst[gord[g]]; i < gfirst[gord[g] + 1]; i++) ord[k++] = base[i];
            }
        } else {
            for (int i = 0; i < n; i++) ord[i] = i;
            shuffle(ord, n, o->seed * 1000003ull + (uint64_t)e);
            for (int g = 0; g < ng; g++) first[g] = gfirst[g];
        }
        first[ng] = n;
        for (int g = 0; g < ng; g++) {
            long tokens = 0;
            for (int i = first[g]; i < first[g + 1]; i++) tokens += ds->ex[ord[i]].n;
            if (tokens > pl->max_tokens) pl->max_tokens = (int)tokens;
        }
    }
    ia_free(base); ia_free(gfirst); ia_free(gord);
    pl->n_micro = ng;
    pl->steps_per_epoch = (ng + o->grad_accum - 1) / o->grad_accum;
    pl->total_steps = pl->steps_per_epoch * E;
    return IA_OK;
}

void tr_plan_free(tr_plan *pl) {
    ia_free(pl->ex_order);
    ia_free(pl->mb_first);
    memset(pl, 0, sizeof *pl);
}

int tr_batch_alloc(tr_batch *b, int max_tokens) {
    memset(b, 0, sizeof *b);
    size_t n = (size_t)(max_tokens > 0 ? max_tokens : 1);
    b->tok = ia_malloc(n * sizeof(int32_t));
    b->pos = ia_malloc(n * sizeof(int32_t));
    b->start = ia_malloc(n * sizeof(int32_t));
    b->target = ia_malloc(n * sizeof(int32_t));
    if (!b->tok || !b->pos || !b->start || !b->target) {
        tr_batch_free(b);
        return IA_ERR_NOMEM;
    }
    return IA_OK;
}

void tr_batch_free(tr_batch *b) {
    ia_free(b->tok);
    ia_free(b->pos);
    ia_free(b->start);
    ia_free(b->target);
    memset(b, 0, sizeof *b);
}

void tr_plan_batch(const tr_plan *pl, const tr_dataset *ds, int epoch, int mb, tr_batch *b) {
    const int *ord = pl->ex_order + (size_t)epoch * pl->n_ex;
    const int *first = pl->mb_first + (size_t)epoch * (pl->n_ex + 1);
    int i0 = first[mb], i1 = first[mb + 1];
    int N = 0, n_loss = 0;
    for (int i = i0; i < i1; i++) {
        const tr_example *ex = &ds->ex[ord[i]];
        const int32_t *tok = ds->tok + ex->off;
        const uint8_t *mask = ds->mask + ex->off;
        int s = N;
        for (int j = 0; j < ex->n; j++, N++) {
            b->tok[N] = tok[j];
            b->pos[N] = j;
            b->start[N] = s;
            b->target[N] = (j + 1 < ex->n && mask[j + 1]) ? tok[j + 1] : -1;
            n_loss += b->target[N] >= 0;
        }
    }
    b->N = N;
    b->n_loss = n_loss;
    b->n_seq = i1 - i0;
}
