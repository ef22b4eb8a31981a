/* server_api.c — the OpenAI request/response shapes: parsing and validating chat and completions
 * bodies into jobs (prompts tokenized, sampling set), and building responses, SSE chunks and errors. */
#include "server_internal.h"
#include "chat/chat.h"
#include "tokenizer/tokenizer.h"

#include <math.h>
#include <stdlib.h>
#include <time.h>

#define SRV_LP_FLOOR -9999.0 /* what -inf is sent as (JSON has no infinity; vLLM uses the same) */

void srv_err_set(srv_err *e, int status, const char *param, const char *code, const char *fmt, ...) {
    e->status = status;
    e->type = status == 401   ? "authentication_error"
              : status == 404 ? "not_found_error"
              : status >= 500 ? "server_error"
                              : "invalid_request_error";
    e->param = param;
    e->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
}

const char *srv_finish_reason(ia_finish f) {
    return f == IA_FINISH_EOS || f == IA_FINISH_STOP ? "stop" : "length";
}

/* ---- JSON helpers ------------------------------------------------------------------------- */

char *srv_json_dump(const json_t *v, size_t *len) {
    size_t n = json_dumpb(v, NULL, 0, JSON_COMPACT);
    if (n == 0) return NULL;
    char *buf = ia_malloc(n + 1);
    if (!buf) return NULL;
    if (json_dumpb(v, buf, n, JSON_COMPACT) != n) {
        ia_free(buf);
        return NULL;
    }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if the bytes there are not one. */
static size_t utf8_len(const unsigned char *s, size_t left) {
    unsigned char c = s[0];
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || n > left) return 0;
    for (size_t i = 1; i < n; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    if (n == 2 && c < 0xC2) return 0;
    if (n == 3 && c == 0xE0 && s[1] < 0xA0) return 0;
    if (n == 3 && c == 0xED && s[1] >= 0xA0) return 0;
    if (n == 4 && ((c == 0xF0 && s[1] < 0x90) || c > 0xF4 || (c == 0xF4 && s[1] >= 0x90))) return 0;
    return n;
}

json_t *srv_json_text(const char *s, size_t len) {
    json_t *j = json_stringn(s ? s : "", s ? len : 0);
    if (j) return j;
    /* Not valid UTF-8 (a token ending inside a character): bad bytes become U+FFFD. */
    ia_buf b = {0};
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_len(u + i, len - i);
        if (n == 0) { ia_buf_append(&b, "\xEF\xBF\xBD", 3); i++; }
        else { ia_buf_append(&b, s + i, n); i += n; }
    }
    j = json_stringn(b.data ? b.data : "", b.len);
    ia_buf_free(&b);
    return j ? j : json_string("");
}

/* A token's text as OpenAI writes it: the text when it is valid UTF-8, else "bytes:\xNN..." */
static json_t *token_json(const char *p, size_t l) {
    json_t *j = json_stringn(p, l);
    if (j) return j;
    ia_buf b = {0};
    ia_buf_puts(&b, "bytes:");
    for (size_t i = 0; i < l; i++) ia_buf_printf(&b, "\\x%02x", (unsigned char)p[i]);
    j = json_stringn(b.data ? b.data : "", b.len);
    ia_buf_free(&b);
    return j ? j : json_string("");
}

static json_t *lp_json(float v) { return json_real(isfinite(v) ? (double)v : SRV_LP_FLOOR); }

json_t *srv_error_json(const srv_err *e) {
    json_t *err = json_object();
    json_object_set_new(err, "message", json_string(e->msg));
    json_object_set_new(err, "type", json_string(e->type ? e->type : "server_error"));
    json_object_set_new(err, "param", e->param ? json_string(e->param) : json_null());
    json_object_set_new(err, "code", e->code ? json_string(e->code) : json_null());
    json_t *o = json_object();
    json_object_set_new(o, "error", err);
    return o;
}

json_t *srv_models_json(ia_server *s, const char *only_id) {
    json_t *m = json_object();
    json_object_set_new(m, "id", json_string(s->model_id));
    json_object_set_new(m, "object", json_string("model"));
    json_object_set_new(m, "created", json_integer(s->started));
    json_object_set_new(m, "owned_by", json_string("iteralign"));
    json_t *meta = json_object();
    json_object_set_new(meta, "n_ctx", json_integer(s->n_ctx));
    json_object_set_new(meta, "n_ctx_train", json_integer(ia_model_n_ctx_train(s->m)));
    json_object_set_new(meta, "n_vocab", json_integer(s->n_vocab));
    json_object_set_new(meta, "arch", json_string(ia_model_arch(s->m)));
    json_object_set_new(meta, "chat_template", json_string(ia_chat_template_name(s->tmpl)));
    json_object_set_new(m, "meta", meta);
    if (only_id) return m;
    json_t *list = json_object();
    json_object_set_new(list, "object", json_string("list"));
    json_t *data = json_array();
    json_array_append_new(data, m);
    json_object_set_new(list, "data", data);
    return list;
}

bool srv_model_matches(const ia_server *s, const char *name) {
    if (!strcmp(name, s->model_id)) return true;
    if (s->model_path) {
        if (!strcmp(name, s->model_path)) return true;
        const char *base = strrchr(s->model_path, '/');
        base = base ? base + 1 : s->model_path;
        if (!strcmp(name, base)) return true;
    }
    return false;
}

/* ---- special-token texts ------------------------------------------------------------------ */

int srv_specials_init(ia_server *s, ia_error *err) {
    const ia_tokenizer *t = s->tok;
    char plain[256], full[256];
    int cap = 0;
    for (int32_t id = 0; id < s->n_vocab; id++) {
        int type = ia_tokenizer_token_type(t, id);
        if (type != IA_TOKEN_CONTROL && type != IA_TOKEN_UNKNOWN && !ia_tokenizer_is_eog(t, id)) continue;
        int np = ia_tokenizer_token_to_piece(t, id, plain, (int)sizeof plain, false);
        int nf = ia_tokenizer_token_to_piece(t, id, full, (int)sizeof full, true);
        /* Only tokens that render as text just when `special` is set are matched by parse_special. */
        if (np != 0 || nf <= 0 || nf >= (int)sizeof full) continue;
        if (s->n_special == cap) {
            cap = cap ? cap * 2 : 16;
            char **nt = ia_realloc(s->special_text, sizeof(char *) * (size_t)cap);
            if (!nt) return ia_error_set(err, IA_ERR_NOMEM, "out of memory");
            s->special_text = nt;
        }
        s->special_text[s->n_special] = ia_strndup(full, (size_t)nf);
        if (!s->special_text[s->n_special]) return ia_error_set(err, IA_ERR_NOMEM, "out of memory");
        s->n_special++;
    }
    /* Does the decoder drop the space SPM writes before the first word? (then echo offsets must too) */
    for (int32_t id = 0; id < s->n_vocab; id++) {
        if (ia_tokenizer_token_type(t, id) != IA_TOKEN_NORMAL) continue;
        int np = ia_tokenizer_token_to_piece(t, id, plain, (int)sizeof plain, false);
        if (np < 2 || np >= (int)sizeof plain || plain[0] != ' ') continue;
        char *d = ia_tokenizer_decode(t, &id, 1, false);
        s->spm_strip = d && strlen(d) + 1 == (size_t)np;
        ia_free(d);
        break;
    }
    return IA_OK;
}

void srv_specials_free(ia_server *s) {
    for (int i = 0; i < s->n_special; i++) ia_free(s->special_text[i]);
    ia_free(s->special_text);
    s->special_text = NULL;
    s->n_special = 0;
}

/* ---- job lifetime ------------------------------------------------------------------------- */

void srv_job_free(srv_job *j) {
    if (!j) return;
    for (int i = 0; i < IA_MAX_STOP; i++) ia_free(j->stop[i]);
    for (int i = 0; i < j->n_prompts; i++) {
        if (j->prompt_ids) ia_free(j->prompt_ids[i]);
        if (j->prompt_text) ia_free(j->prompt_text[i]);
    }
    ia_free(j->prompt_ids);
    ia_free(j->n_prompt_ids);
    ia_free(j->prompt_text);
    ia_free(j->prompt_text_len);
    for (int i = 0; j->seqs && i < j->n_seqs; i++) {
        srv_seq *q = &j->seqs[i];
        ia_buf_free(&q->pending);
        ia_completion_clear(&q->out);
        ia_free(q->lp_ids);
        ia_free(q->lp.logprob);
        ia_free(q->lp.top_ids);
        ia_free(q->lp.top_logprobs);
    }
    ia_free(j->seqs);
    ia_buf_free(&j->out);
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    ia_free(j);
}

/* ---- field readers: absent or null keeps the default; a wrong type or range is a 400 ------- */

static bool read_num(json_t *req, const char *key, double lo, double hi, double *out, srv_err *e) {
    json_t *v = json_object_get(req, key);
    if (!v || json_is_null(v)) return true;
    if (!json_is_number(v)) return srv_err_set(e, 400, key, "invalid_type", "'%s' must be a number", key), false;
    double d = json_number_value(v);
    if (!(d >= lo && d <= hi))
        return srv_err_set(e, 400, key, "invalid_value", "'%s' must be between %g and %g, got %g", key, lo, hi, d), false;
    *out = d;
    return true;
}

static bool read_int(json_t *req, const char *key, long long lo, long long hi, long long *out, bool *given,
                     srv_err *e) {
    json_t *v = json_object_get(req, key);
    if (!v || json_is_null(v)) return true;
    long long x;
    if (json_is_integer(v)) x = (long long)json_integer_value(v);
    else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) && fabs(json_real_value(v)) < 9e15)
        x = (long long)json_real_value(v);
    else return srv_err_set(e, 400, key, "invalid_type", "'%s' must be an integer", key), false;
    if (x < lo || x > hi)
        return srv_err_set(e, 400, key, "invalid_value", "'%s' must be between %lld and %lld, got %lld", key, lo, hi, x),
               false;
    *out = x;
    if (given) *given = true;
    return true;
}

static bool read_bool(json_t *req, const char *key, bool *out, srv_err *e) {
    json_t *v = json_object_get(req, key);
    if (!v || json_is_null(v)) return true;
    if (!json_is_boolean(v)) return srv_err_set(e, 400, key, "invalid_type", "'%s' must be a boolean", key), false;
    *out = json_is_true(v);
    return true;
}

/* A JSON string as a C string: NUL bytes inside cannot pass through the C API, so they are refused. */
static const char *cstr(json_t *v, const char *param, srv_err *e) {
    const char *s = json_string_value(v);
    if (strlen(s) != json_string_length(v)) {
        srv_err_set(e, 400, param, "invalid_value", "'%s' contains a NUL character", param);
        return NULL;
    }
    return s;
}

/* ---- sampling fields shared by both endpoints ---------------------------------------------- */

static bool parse_sampling(ia_server *s, srv_job *j, json_t *req, srv_err *e) {
    ia_sampling *sp = &j->sp;
    *sp = ia_sampling_default();
    double d;
    long long x;
    /* OpenAI's defaults: temperature 1, top_p 1 (a client wanting greedy output sends 0). */
    d = 1.0;
    if (!read_num(req, "temperature", 0, 2, &d, e)) return false;
    sp->temperature = (float)d;
    d = 1.0;
    if (!read_num(req, "top_p", 0, 1, &d, e)) return false;
    sp->top_p = (float)d;
    d = 0;
    if (!read_num(req, "min_p", 0, 1, &d, e)) return false;
    sp->min_p = (float)d;
    x = 0;
    if (!read_int(req, "top_k", 0, 1 << 30, &x, NULL, e)) return false;
    sp->top_k = (int)x;
    d = 0;
    if (!read_num(req, "frequency_penalty", -2, 2, &d, e)) return false;
    sp->frequency_penalty = (float)d;
    d = 0;
    if (!read_num(req, "presence_penalty", -2, 2, &d, e)) return false;
    sp->presence_penalty = (float)d;
    d = 1;
    if (!read_num(req, "repeat_penalty", 0, 10, &d, e)) return false; /* llama-server's name */
    if (!read_num(req, "repetition_penalty", 0, 10, &d, e)) return false; /* vLLM's name */
    sp->repeat_penalty = (float)d;
    if (!read_bool(req, "ignore_eos", &sp->ignore_eos, e)) return false;

    /* max_completion_tokens (current) wins over max_tokens (deprecated), as in llama-server. */
    long long mt = -1;
    bool given = false;
    if (!read_int(req, "max_tokens", 0, 1LL << 31, &mt, &given, e)) return false;
    if (!read_int(req, "max_completion_tokens", 0, 1LL << 31, &mt, &given, e)) return false;
    if (given && mt > s->o.max_tokens_cap) {
        const char *k = json_object_get(req, "max_completion_tokens") && !json_is_null(json_object_get(req, "max_completion_tokens"))
                            ? "max_completion_tokens" : "max_tokens";
        srv_err_set(e, 400, k, "invalid_value", "'%s' is %lld; this server allows at most %d", k, mt,
                    s->o.max_tokens_cap);
        return false;
    }
    j->max_tokens_given = given;
    sp->max_tokens = given ? (int)mt : -1; /* -1: the endpoint's default, once the prompt is known */

    long long seed = 0;
    bool has_seed = false;
    json_t *sv = json_object_get(req, "seed");
    if (sv && json_is_integer(sv)) { seed = (long long)json_integer_value(sv); has_seed = true; }
    else if (sv && !json_is_null(sv)) return srv_err_set(e, 400, "seed", "invalid_type", "'seed' must be an integer"), false;
    if (has_seed) sp->seed = (uint64_t)seed;
    else {
        pthread_mutex_lock(&s->mu);
        sp->seed = ia_rng_next(&s->rng); /* unseeded: a fresh draw per request, as OpenAI */
        pthread_mutex_unlock(&s->mu);
    }

    json_t *st = json_object_get(req, "stop");
    if (st && !json_is_null(st)) {
        json_t *one = json_is_string(st) ? st : NULL;
        size_t n = one ? 1 : json_is_array(st) ? json_array_size(st) : (size_t)-1;
        if (n == (size_t)-1) return srv_err_set(e, 400, "stop", "invalid_type", "'stop' must be a string or an array of strings"), false;
        if (n > IA_MAX_STOP) return srv_err_set(e, 400, "stop", "invalid_value", "at most %d stop strings", IA_MAX_STOP), false;
        for (size_t i = 0; i < n; i++) {
            json_t *v = one ? one : json_array_get(st, i);
            if (!json_is_string(v)) return srv_err_set(e, 400, "stop", "invalid_type", "'stop' must be a string or an array of strings"), false;
            const char *str = cstr(v, "stop", e);
            if (!str) return false;
            if (!*str) continue;
            j->stop[sp->n_stop] = ia_strdup(str);
            if (!j->stop[sp->n_stop]) return srv_err_set(e, 500, NULL, NULL, "out of memory"), false;
            sp->stop[sp->n_stop] = j->stop[sp->n_stop];
            sp->n_stop++;
        }
    }

    x = 1;
    if (!read_int(req, "n", 1, s->o.max_n, &x, NULL, e)) return false;
    j->n = (int)x;
    long long best_of = j->n;
    if (!read_int(req, "best_of", 1, s->o.max_n, &best_of, NULL, e)) return false;
    if (best_of != j->n) return srv_err_set(e, 400, "best_of", "unsupported_value", "'best_of' other than 'n' is not supported"), false;

    if (!read_bool(req, "stream", &j->stream, e)) return false;
    json_t *so = json_object_get(req, "stream_options");
    if (so && json_is_object(so) && !read_bool(so, "include_usage", &j->include_usage, e)) return false;

    /* json_object is accepted without constraining the output (documented): the prompt is what asks
     * for JSON. A schema cannot be honoured, so it is refused rather than silently ignored. */
    json_t *rf = json_object_get(req, "response_format");
    if (rf && !json_is_null(rf)) {
        json_t *ty = json_is_object(rf) ? json_object_get(rf, "type") : NULL;
        const char *t = json_string_value(ty);
        if (!t) return srv_err_set(e, 400, "response_format", "invalid_type", "'response_format' must be an object with a 'type'"), false;
        if (strcmp(t, "text") != 0 && strcmp(t, "json_object") != 0)
            return srv_err_set(e, 400, "response_format.type", "unsupported_value",
                               "response_format type '%s' is not supported (use 'text' or 'json_object')", t), false;
    }
    json_t *lb = json_object_get(req, "logit_bias");
    if (lb && !json_is_null(lb) && !(json_is_object(lb) && json_object_size(lb) == 0))
        return srv_err_set(e, 400, "logit_bias", "unsupported_value", "'logit_bias' is not supported"), false;
    json_t *tools = json_object_get(req, "tools");
    if (tools && !json_is_null(tools) && !(json_is_array(tools) && json_array_size(tools) == 0))
        return srv_err_set(e, 400, "tools", "unsupported_value", "tools are not supported"), false;
    json_t *suffix = json_object_get(req, "suffix");
    if (suffix && json_is_string(suffix) && json_string_length(suffix) > 0)
        return srv_err_set(e, 400, "suffix", "unsupported_value", "'suffix' is not supported"), false;
    return true;
}

/* ---- chat prompts ------------------------------------------------------------------------- */

/* Message content: a string, or an array of {"type":"text","text":...} parts (joined). */
static char *content_text(json_t *c, int i, srv_err *e) {
    if (!c || json_is_null(c)) return ia_strdup("");
    if (json_is_string(c)) {
        if (!cstr(c, "messages", e)) return NULL;
        return ia_strdup(json_string_value(c));
    }
    if (!json_is_array(c)) {
        srv_err_set(e, 400, "messages", "invalid_type", "messages[%d].content must be a string or an array of text parts", i);
        return NULL;
    }
    ia_buf b = {0};
    size_t k;
    json_t *part;
    json_array_foreach(c, k, part) {
        const char *ty = json_string_value(json_object_get(part, "type"));
        json_t *tx = json_object_get(part, "text");
        if (!ty || strcmp(ty, "text") != 0 || !json_is_string(tx)) {
            ia_buf_free(&b);
            srv_err_set(e, 400, "messages", "unsupported_value",
                        "messages[%d].content[%zu]: only text parts are supported", i, k);
            return NULL;
        }
        if (!cstr(tx, "messages", e)) { ia_buf_free(&b); return NULL; }
        ia_buf_append(&b, json_string_value(tx), json_string_length(tx));
    }
    if (!b.data) return ia_strdup("");
    return ia_buf_take(&b);
}

/* Appends ids to a growing array. */
static bool ids_append(int32_t **arr, int *n, int *cap, const int32_t *src, int k) {
    if (*n + k > *cap) {
        int nc = *cap ? *cap : 64;
        while (nc < *n + k) nc *= 2;
        int32_t *na = ia_realloc(*arr, sizeof(int32_t) * (size_t)nc);
        if (!na) return false;
        *arr = na;
        *cap = nc;
    }
    if (k > 0) memcpy(*arr + *n, src, sizeof(int32_t) * (size_t)k);
    *n += k;
    return true;
}

/* Tokenizes a formatted chat. Template text is parsed for special tokens (its markers become control
 * tokens) but special-token text typed into a message must stay text. When no message holds such
 * text the whole string is encoded at once — exactly what `iteralign generate --chat-template` does.
 * Otherwise the chat is formatted a second time with those occurrences replaced by same-length
 * \x01 runs; the bytes where the two renderings differ are the occurrences, encoded without
 * special parsing, and the rest with it (each piece is a separate fragment, as text next to a
 * special token is anyway). */
static int chat_tokenize(ia_server *s, ia_chat_msg *msgs, int n_msgs, int32_t **out, srv_err *e) {
    const ia_tokenizer *t = s->tok;
    ia_error err = {0};
    char *f1 = ia_chat_apply(s->tmpl, msgs, n_msgs, true, &err);
    if (!f1) return srv_err_set(e, 500, NULL, NULL, "chat template: %s", err.msg), -1;
    bool tainted = false;
    for (int i = 0; i < n_msgs && !tainted; i++)
        for (int k = 0; k < s->n_special && !tainted; k++)
            if (strstr(msgs[i].content, s->special_text[k])) tainted = true;
    int n = -1;
    if (!tainted) {
        n = ia_tokenizer_encode(t, f1, strlen(f1), true, true, out, &err);
        ia_free(f1);
        if (n < 0) return srv_err_set(e, 400, "messages", NULL, "tokenizing the chat: %s", err.msg), -1;
        return n;
    }
    /* Mask the special texts in copies of the contents. */
    char **masked = ia_calloc((size_t)n_msgs, sizeof(char *));
    ia_chat_msg *m2 = ia_calloc((size_t)n_msgs, sizeof(ia_chat_msg));
    char *f2 = NULL;
    int32_t *all = NULL;
    int n_all = 0, cap = 0;
    if (!masked || !m2) goto oom;
    for (int i = 0; i < n_msgs; i++) {
        masked[i] = ia_strdup(msgs[i].content);
        if (!masked[i]) goto oom;
        for (int k = 0; k < s->n_special; k++) {
            size_t l = strlen(s->special_text[k]);
            for (char *p = strstr(masked[i], s->special_text[k]); p; p = strstr(p + l, s->special_text[k]))
                memset(p, 1, l);
        }
        m2[i].role = msgs[i].role;
        m2[i].content = masked[i];
    }
    f2 = ia_chat_apply(s->tmpl, m2, n_msgs, true, &err);
    if (!f2) goto oom;
    size_t L = strlen(f1);
    if (strlen(f2) != L) {
        /* Cannot happen with the built-in templates (masking keeps every length); stay safe. */
        srv_err_set(e, 400, "messages", "unsupported_value", "message content holds special-token text this template cannot carry");
        goto fail;
    }
    if (ia_tokenizer_add_bos(t) && ia_tokenizer_bos(t) >= 0) {
        int32_t bos = ia_tokenizer_bos(t);
        if (!ids_append(&all, &n_all, &cap, &bos, 1)) goto oom;
    }
    for (size_t i = 0; i < L;) {
        bool plain = f1[i] != f2[i];
        size_t j = i;
        while (j < L && (f1[j] != f2[j]) == plain) j++;
        int32_t *ids = NULL;
        int k = ia_tokenizer_encode(t, f1 + i, j - i, false, !plain, &ids, &err);
        if (k < 0) {
            srv_err_set(e, 400, "messages", NULL, "tokenizing the chat: %s", err.msg);
            goto fail;
        }
        bool ok = ids_append(&all, &n_all, &cap, ids, k);
        ia_free(ids);
        if (!ok) goto oom;
        i = j;
    }
    if (ia_tokenizer_add_eos(t) && ia_tokenizer_eos(t) >= 0) {
        int32_t eos = ia_tokenizer_eos(t);
        if (!ids_append(&all, &n_all, &cap, &eos, 1)) goto oom;
    }
    if (!all) { all = ia_malloc(sizeof(int32_t)); if (!all) goto oom; }
    n = n_all;
    *out = all;
    all = NULL;
    goto fail; /* shared cleanup */
oom:
    srv_err_set(e, 500, NULL, NULL, "out of memory");
    n = -1;
fail:
    for (int i = 0; masked && i < n_msgs; i++) ia_free(masked[i]);
    ia_free(masked);
    ia_free(m2);
    ia_free(f1);
    ia_free(f2);
    ia_free(all);
    return n;
}

static bool parse_chat(ia_server *s, srv_job *j, json_t *req, srv_err *e) {
    json_t *msgs = json_object_get(req, "messages");
    if (!json_is_array(msgs) || json_array_size(msgs) == 0)
        return srv_err_set(e, 400, "messages", msgs ? "invalid_type" : "missing_required_parameter",
                           "'messages' must be a non-empty array"), false;
    int nm = (int)json_array_size(msgs);
    ia_chat_msg *cm = ia_calloc((size_t)nm, sizeof *cm);
    char **texts = ia_calloc((size_t)nm, sizeof(char *));
    bool ok = cm && texts;
    if (!ok) srv_err_set(e, 500, NULL, NULL, "out of memory");
    for (int i = 0; ok && i < nm; i++) {
        json_t *m = json_array_get(msgs, (size_t)i);
        const char *role = json_string_value(json_object_get(m, "role"));
        if (!json_is_object(m) || !role) {
            srv_err_set(e, 400, "messages", "invalid_type", "messages[%d] must be an object with a 'role'", i);
            ok = false;
            break;
        }
        /* "developer" is the newer name of "system". Tool turns have no place in the built-in
         * templates. */
        if (!strcmp(role, "developer")) role = "system";
        if (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant")) {
            srv_err_set(e, 400, "messages", "unsupported_value", "messages[%d]: role '%s' is not supported (system, developer, user, assistant)", i, role);
            ok = false;
            break;
        }
        json_t *tc = json_object_get(m, "tool_calls");
        if (tc && json_is_array(tc) && json_array_size(tc) > 0) {
            srv_err_set(e, 400, "messages", "unsupported_value", "messages[%d]: tool calls are not supported", i);
            ok = false;
            break;
        }
        texts[i] = content_text(json_object_get(m, "content"), i, e);
        if (!texts[i]) { ok = false; break; }
        cm[i].role = role;
        cm[i].content = texts[i];
    }
    if (ok) {
        j->n_prompts = 1;
        j->prompt_ids = ia_calloc(1, sizeof(int32_t *));
        j->n_prompt_ids = ia_calloc(1, sizeof(int));
        if (!j->prompt_ids || !j->n_prompt_ids) { srv_err_set(e, 500, NULL, NULL, "out of memory"); ok = false; }
    }
    if (ok) {
        int n = chat_tokenize(s, cm, nm, &j->prompt_ids[0], e);
        if (n < 0) ok = false;
        else j->n_prompt_ids[0] = n;
    }
    for (int i = 0; texts && i < nm; i++) ia_free(texts[i]);
    ia_free(texts);
    ia_free(cm);
    return ok;
}

/* ---- completions prompts ------------------------------------------------------------------ */

static bool is_id_array(json_t *a) {
    if (!json_is_array(a) || json_array_size(a) == 0) return false;
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v) if (!json_is_integer(v)) return false;
    return true;
}

static bool add_prompt_ids(ia_server *s, srv_job *j, int k, json_t *arr, srv_err *e) {
    size_t n = json_array_size(arr);
    j->prompt_ids[k] = ia_malloc(sizeof(int32_t) * (n ? n : 1));
    if (!j->prompt_ids[k]) return srv_err_set(e, 500, NULL, NULL, "out of memory"), false;
    for (size_t i = 0; i < n; i++) {
        json_int_t v = json_integer_value(json_array_get(arr, i));
        if (v < 0 || v >= s->n_vocab)
            return srv_err_set(e, 400, "prompt", "invalid_value", "token id %lld is outside the vocabulary (%d tokens)",
                               (long long)v, s->n_vocab), false;
        j->prompt_ids[k][i] = (int32_t)v;
    }
    j->n_prompt_ids[k] = (int)n;
    /* The echo text of a token prompt is its decoding. */
    j->prompt_text[k] = ia_tokenizer_decode(s->tok, j->prompt_ids[k], (int)n, false);
    if (!j->prompt_text[k]) return srv_err_set(e, 500, NULL, NULL, "out of memory"), false;
    j->prompt_text_len[k] = strlen(j->prompt_text[k]);
    return true;
}

static bool add_prompt_text(ia_server *s, srv_job *j, int k, json_t *str, srv_err *e) {
    ia_error err = {0};
    size_t len = json_string_length(str);
    /* Special-token text in a completion prompt stays text, as with `iteralign generate` (no
     * --special): a prompt is data, not markup. */
    int n = ia_tokenizer_encode(s->tok, json_string_value(str), len, true, false, &j->prompt_ids[k], &err);
    if (n < 0) return srv_err_set(e, 400, "prompt", NULL, "tokenizing the prompt: %s", err.msg), false;
    j->n_prompt_ids[k] = n;
    j->prompt_text[k] = ia_strndup(json_string_value(str), len);
    if (!j->prompt_text[k]) return srv_err_set(e, 500, NULL, NULL, "out of memory"), false;
    j->prompt_text_len[k] = len;
    return true;
}

static bool parse_completion(ia_server *s, srv_job *j, json_t *req, srv_err *e) {
    json_t *p = json_object_get(req, "prompt");
    if (!p || json_is_null(p)) return srv_err_set(e, 400, "prompt", "missing_required_parameter", "'prompt' is required"), false;
    /* string | [strings] | [ids] | [[ids]] */
    int np;
    int form; /* 0 string, 1 strings, 2 ids, 3 id arrays */
    if (json_is_string(p)) { form = 0; np = 1; }
    else if (is_id_array(p)) { form = 2; np = 1; }
    else if (json_is_array(p) && json_array_size(p) > 0) {
        json_t *first = json_array_get(p, 0);
        form = json_is_string(first) ? 1 : 3;
        np = (int)json_array_size(p);
        size_t i;
        json_t *v;
        json_array_foreach(p, i, v) if (form == 1 ? !json_is_string(v) : !is_id_array(v))
            return srv_err_set(e, 400, "prompt", "invalid_type", "'prompt' must be a string, an array of strings, an array of token ids or an array of such arrays"), false;
    } else return srv_err_set(e, 400, "prompt", "invalid_type", "'prompt' must be a string, an array of strings, an array of token ids or an array of such arrays"), false;
    if ((long)np * j->n > s->o.max_queue)
        return srv_err_set(e, 400, "prompt", "invalid_value", "%d prompts x n=%d exceed this server's %d sequences per request", np, j->n, s->o.max_queue), false;
    j->n_prompts = np;
    j->prompt_ids = ia_calloc((size_t)np, sizeof(int32_t *));
    j->n_prompt_ids = ia_calloc((size_t)np, sizeof(int));
    j->prompt_text = ia_calloc((size_t)np, sizeof(char *));
    j->prompt_text_len = ia_calloc((size_t)np, sizeof(size_t));
    if (!j->prompt_ids || !j->n_prompt_ids || !j->prompt_text || !j->prompt_text_len)
        return srv_err_set(e, 500, NULL, NULL, "out of memory"), false;
    for (int k = 0; k < np; k++) {
        bool ok = form == 0 ? add_prompt_text(s, j, k, p, e)
                  : form == 1 ? add_prompt_text(s, j, k, json_array_get(p, (size_t)k), e)
                  : form == 2 ? add_prompt_ids(s, j, k, p, e)
                              : add_prompt_ids(s, j, k, json_array_get(p, (size_t)k), e);
        if (!ok) return false;
    }
    if (!read_bool(req, "echo", &j->echo, e)) return false;
    json_t *lp = json_object_get(req, "logprobs");
    if (lp && !json_is_null(lp)) {
        long long k = 0;
        if (json_is_boolean(lp)) k = json_is_true(lp) ? 0 : -1; /* lenient: true = the token's own logprob */
        else if (!read_int(req, "logprobs", 0, IA_LOGPROBS_TOP_MAX, &k, NULL, e)) return false;
        if (k >= 0) { j->want_lp = true; j->top_k = (int)k; }
    }
    return true;
}

srv_job *srv_job_parse(ia_server *s, srv_kind kind, json_t *req, srv_err *e) {
    if (!json_is_object(req)) return srv_err_set(e, 400, NULL, "invalid_type", "the request body must be a JSON object"), NULL;
    json_t *model = json_object_get(req, "model");
    if (model && !json_is_null(model)) {
        if (!json_is_string(model)) return srv_err_set(e, 400, "model", "invalid_type", "'model' must be a string"), NULL;
        if (!srv_model_matches(s, json_string_value(model))) {
            srv_err_set(e, 404, "model", "model_not_found", "The model '%.200s' does not exist; this server serves '%s'",
                        json_string_value(model), s->model_id);
            return NULL;
        }
    }
    srv_job *j = ia_calloc(1, sizeof *j);
    if (!j) return srv_err_set(e, 500, NULL, NULL, "out of memory"), NULL;
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    j->srv = s;
    j->kind = kind;
    j->fd = -1;
    j->created = (long long)time(NULL);
    if (!parse_sampling(s, j, req, e)) goto fail;
    if (kind == SRV_CHAT) {
        if (!parse_chat(s, j, req, e)) goto fail;
        bool lp = false;
        if (!read_bool(req, "logprobs", &lp, e)) goto fail;
        long long k = 0;
        if (!read_int(req, "top_logprobs", 0, IA_LOGPROBS_TOP_MAX, &k, NULL, e)) goto fail;
        j->want_lp = lp;
        j->top_k = lp ? (int)k : 0;
    } else if (!parse_completion(s, j, req, e)) goto fail;
    if (j->stream && j->want_lp) {
        srv_err_set(e, 400, "logprobs", "unsupported_value", "logprobs are not supported with stream");
        goto fail;
    }
    for (int k = 0; k < j->n_prompts; k++) {
        int np = j->n_prompt_ids[k];
        const char *param = kind == SRV_CHAT ? "messages" : "prompt";
        if (np < 1) {
            srv_err_set(e, 400, param, "invalid_value", "the prompt is empty (and the model has no BOS token to start from)");
            goto fail;
        }
        if (np >= s->n_ctx) {
            srv_err_set(e, 400, param, "context_length_exceeded",
                        "This model's maximum context length is %d tokens; the prompt has %d tokens", s->n_ctx, np);
            goto fail;
        }
        j->prompt_tokens += np;
    }
    if (j->sp.max_tokens < 0) {
        /* Defaults: OpenAI's 16 for completions; chat runs to the end of the context (within the cap). */
        if (kind == SRV_COMPLETION) j->sp.max_tokens = SRV_COMPLETIONS_DEFAULT_MAX;
        else j->sp.max_tokens = s->o.max_tokens_cap;
        if (j->sp.max_tokens > s->o.max_tokens_cap) j->sp.max_tokens = s->o.max_tokens_cap;
    }
    j->n_seqs = j->n_prompts * j->n;
    if (j->n_seqs > s->o.max_queue) {
        srv_err_set(e, 400, "n", "invalid_value", "%d sequences exceed this server's %d per request", j->n_seqs, s->o.max_queue);
        goto fail;
    }
    j->seqs = ia_calloc((size_t)j->n_seqs, sizeof(srv_seq));
    if (!j->seqs) { srv_err_set(e, 500, NULL, NULL, "out of memory"); goto fail; }
    for (int i = 0; i < j->n_seqs; i++) {
        j->seqs[i].job = j;
        j->seqs[i].index = i;
        j->seqs[i].prompt = i / j->n;
        j->seqs[i].engine_id = -1;
    }
    return j;
fail:
    srv_job_free(j);
    return NULL;
}

/* ---- logprobs ----------------------------------------------------------------------------- */

/* Generated tokens whose text reaches the returned text: with a stop string the tokens past the cut
 * are dropped (their text is not returned either). */
static int tokens_in_text(const ia_tokenizer *t, const ia_completion *c) {
    if (c->finish != IA_FINISH_STOP) return c->n_tokens;
    size_t len = strlen(c->text), at = 0;
    char piece[256];
    int k = 0;
    for (; k < c->n_tokens && at < len; k++) {
        int np = ia_tokenizer_token_to_piece(t, c->tokens[k], piece, (int)sizeof piece, false);
        at += (size_t)(np > 0 ? np : 0);
    }
    return k;
}

int srv_job_lp_prepare(srv_job *j) {
    for (int i = 0; i < j->n_seqs; i++) {
        srv_seq *q = &j->seqs[i];
        int np = j->n_prompt_ids[q->prompt];
        q->n_keep = tokens_in_text(j->srv->tok, &q->out);
        int n = np + q->n_keep;
        q->lp_ids = ia_malloc(sizeof(int32_t) * (size_t)n);
        q->lp.logprob = ia_malloc(sizeof(float) * (size_t)n);
        if (j->top_k > 0) {
            q->lp.top_ids = ia_malloc(sizeof(int32_t) * (size_t)n * (size_t)j->top_k);
            q->lp.top_logprobs = ia_malloc(sizeof(float) * (size_t)n * (size_t)j->top_k);
        }
        if (!q->lp_ids || !q->lp.logprob || (j->top_k > 0 && (!q->lp.top_ids || !q->lp.top_logprobs)))
            return IA_ERR_NOMEM;
        memcpy(q->lp_ids, j->prompt_ids[q->prompt], sizeof(int32_t) * (size_t)np);
        if (q->n_keep) memcpy(q->lp_ids + np, q->out.tokens, sizeof(int32_t) * (size_t)q->n_keep);
        for (int k = 0; k < n; k++) q->lp.logprob[k] = -INFINITY;
        q->lp.ids = q->lp_ids;
        q->lp.n = n;
        /* echo: every prompt token but the first (which nothing predicts); else the generated ones */
        q->lp.first = j->echo ? 1 : np;
        q->lp.top_k = j->top_k;
    }
    return IA_OK;
}

/* Bytes token `id` adds to decoded text, following ia_tokenizer_decode's rules: control tokens add
 * nothing and SPM's leading space is dropped at the start and after a special token. */
static size_t decoded_len(ia_server *s, int32_t id, bool *strip) {
    char piece[256];
    int type = ia_tokenizer_token_type(s->tok, id);
    int np = ia_tokenizer_token_to_piece(s->tok, id, piece, (int)sizeof piece, false);
    if (np < 0) np = 0;
    if (type == IA_TOKEN_CONTROL || type == IA_TOKEN_USER_DEFINED || type == IA_TOKEN_UNKNOWN) {
        *strip = s->spm_strip;
        return (size_t)np;
    }
    if (np == 0) return 0;
    size_t l = (size_t)np;
    if (*strip && piece[0] == ' ') l--;
    *strip = false;
    return l;
}

/* The legacy completions logprobs object: tokens, token_logprobs, top_logprobs, text_offset. */
static json_t *completion_logprobs(srv_job *j, srv_seq *q) {
    ia_server *s = j->srv;
    int np = j->n_prompt_ids[q->prompt];
    int start = j->echo ? 0 : np;
    size_t echo_len = j->echo ? j->prompt_text_len[q->prompt] : 0;
    json_t *toks = json_array(), *lps = json_array(), *tops = json_array(), *offs = json_array();
    char piece[256];
    bool strip = s->spm_strip;
    size_t at = 0;     /* decoded length of the prompt so far */
    size_t gen_at = 0; /* generated text so far */
    for (int i = 0; i < q->lp.n; i++) {
        int32_t id = q->lp.ids[i];
        size_t off;
        if (i < np) {
            off = at < echo_len ? at : echo_len;
            at += decoded_len(s, id, &strip);
        } else {
            off = echo_len + gen_at;
            int g = ia_tokenizer_token_to_piece(s->tok, id, piece, (int)sizeof piece, false);
            gen_at += (size_t)(g > 0 ? g : 0);
        }
        if (i < start) continue;
        int npc = ia_tokenizer_token_to_piece(s->tok, id, piece, (int)sizeof piece, true);
        if (npc < 0) npc = 0;
        if (npc > (int)sizeof piece) npc = (int)sizeof piece;
        json_array_append_new(toks, token_json(piece, (size_t)npc));
        json_array_append_new(offs, json_integer((json_int_t)off));
        if (i < q->lp.first) {
            json_array_append_new(lps, json_null());
            json_array_append_new(tops, json_null());
            continue;
        }
        json_array_append_new(lps, lp_json(q->lp.logprob[i]));
        /* The alternatives, plus the chosen token itself (OpenAI always includes it). */
        json_t *top = json_object();
        for (int k = 0; k < j->top_k; k++) {
            int32_t tid = q->lp.top_ids[(size_t)i * (size_t)j->top_k + (size_t)k];
            if (tid < 0) continue;
            int n = ia_tokenizer_token_to_piece(s->tok, tid, piece, (int)sizeof piece, true);
            if (n < 0) n = 0;
            if (n > (int)sizeof piece) n = (int)sizeof piece;
            json_t *key = token_json(piece, (size_t)n);
            if (!json_object_get(top, json_string_value(key)))
                json_object_set_new(top, json_string_value(key), lp_json(q->lp.top_logprobs[(size_t)i * (size_t)j->top_k + (size_t)k]));
            json_decref(key);
        }
        if (j->top_k > 0) {
            json_t *key = json_array_get(toks, json_array_size(toks) - 1);
            if (!json_object_get(top, json_string_value(key)))
                json_object_set_new(top, json_string_value(key), lp_json(q->lp.logprob[i]));
        }
        json_array_append_new(tops, top);
    }
    json_t *o = json_object();
    json_object_set_new(o, "tokens", toks);
    json_object_set_new(o, "token_logprobs", lps);
    json_object_set_new(o, "top_logprobs", tops);
    json_object_set_new(o, "text_offset", offs);
    return o;
}

static json_t *bytes_json(const char *p, size_t l) {
    json_t *a = json_array();
    for (size_t i = 0; i < l; i++) json_array_append_new(a, json_integer((unsigned char)p[i]));
    return a;
}

/* The chat logprobs object: {"content":[{token, logprob, bytes, top_logprobs:[...]}]} over the
 * generated tokens. */
static json_t *chat_logprobs(srv_job *j, srv_seq *q) {
    ia_server *s = j->srv;
    int np = j->n_prompt_ids[q->prompt];
    json_t *content = json_array();
    char piece[256];
    for (int i = np; i < q->lp.n; i++) {
        int n = ia_tokenizer_token_to_piece(s->tok, q->lp.ids[i], piece, (int)sizeof piece, true);
        if (n < 0) n = 0;
        if (n > (int)sizeof piece) n = (int)sizeof piece;
        json_t *e = json_object();
        json_object_set_new(e, "token", token_json(piece, (size_t)n));
        json_object_set_new(e, "logprob", lp_json(q->lp.logprob[i]));
        json_object_set_new(e, "bytes", bytes_json(piece, (size_t)n));
        json_t *top = json_array();
        for (int k = 0; k < j->top_k; k++) {
            int32_t tid = q->lp.top_ids[(size_t)i * (size_t)j->top_k + (size_t)k];
            if (tid < 0) continue;
            int m = ia_tokenizer_token_to_piece(s->tok, tid, piece, (int)sizeof piece, true);
            if (m < 0) m = 0;
            if (m > (int)sizeof piece) m = (int)sizeof piece;
            json_t *a = json_object();
            json_object_set_new(a, "token", token_json(piece, (size_t)m));
            json_object_set_new(a, "logprob", lp_json(q->lp.top_logprobs[(size_t)i * (size_t)j->top_k + (size_t)k]));
            json_object_set_new(a, "bytes", bytes_json(piece, (size_t)m));
            json_array_append_new(top, a);
        }
        json_object_set_new(e, "top_logprobs", top);
        json_array_append_new(content, e);
    }
    json_t *o = json_object();
    json_object_set_new(o, "content", content);
    json_object_set_new(o, "refusal", json_null());
    return o;
}

/* ---- responses ---------------------------------------------------------------------------- */

static json_t *usage_json(srv_job *j) {
    json_t *u = json_object();
    json_object_set_new(u, "prompt_tokens", json_integer(j->prompt_tokens));
    json_object_set_new(u, "completion_tokens", json_integer(j->completion_tokens));
    json_object_set_new(u, "total_tokens", json_integer(j->prompt_tokens + j->completion_tokens));
    return u;
}

static json_t *envelope(srv_job *j, const char *object) {
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(j->id));
    json_object_set_new(o, "object", json_string(object));
    json_object_set_new(o, "created", json_integer(j->created));
    json_object_set_new(o, "model", json_string(j->srv->model_id));
    json_object_set_new(o, "system_fingerprint", json_string("iteralign-" IA_VERSION));
    return o;
}

json_t *srv_job_response(srv_job *j) {
    bool chat = j->kind == SRV_CHAT;
    json_t *o = envelope(j, chat ? "chat.completion" : "text_completion");
    json_t *choices = json_array();
    for (int i = 0; i < j->n_seqs; i++) {
        srv_seq *q = &j->seqs[i];
        json_t *c = json_object();
        json_object_set_new(c, "index", json_integer(q->index));
        const char *text = q->out.text ? q->out.text : "";
        if (chat) {
            json_t *msg = json_object();
            json_object_set_new(msg, "role", json_string("assistant"));
            json_object_set_new(msg, "content", srv_json_text(text, strlen(text)));
            json_object_set_new(msg, "refusal", json_null());
            json_object_set_new(c, "message", msg);
            json_object_set_new(c, "logprobs", j->want_lp ? chat_logprobs(j, q) : json_null());
        } else {
            if (j->echo) {
                ia_buf b = {0};
                ia_buf_append(&b, j->prompt_text[q->prompt], j->prompt_text_len[q->prompt]);
                ia_buf_puts(&b, text);
                json_object_set_new(c, "text", srv_json_text(b.data ? b.data : "", b.len));
                ia_buf_free(&b);
            } else json_object_set_new(c, "text", srv_json_text(text, strlen(text)));
            json_object_set_new(c, "logprobs", j->want_lp ? completion_logprobs(j, q) : json_null());
        }
        json_object_set_new(c, "finish_reason", json_string(srv_finish_reason(q->out.finish)));
        json_array_append_new(choices, c);
    }
    json_object_set_new(o, "choices", choices);
    json_object_set_new(o, "usage", usage_json(j));
    return o;
}

/* ---- server-sent events ------------------------------------------------------------------- */

static void sse_put(ia_buf *b, json_t *o) {
    char *txt = srv_json_dump(o, NULL);
    json_decref(o);
    if (!txt) { b->oom = true; return; }
    ia_buf_puts(b, "data: ");
    ia_buf_puts(b, txt);
    ia_buf_puts(b, "\n\n");
    ia_free(txt);
}

/* A chunk with one choice; delta_or_text: the chat delta object, or the completion text. */
static json_t *chunk(srv_job *j, int index, json_t *delta_or_text, const char *finish) {
    bool chat = j->kind == SRV_CHAT;
    json_t *o = envelope(j, chat ? "chat.completion.chunk" : "text_completion");
    json_t *c = json_object();
    json_object_set_new(c, "index", json_integer(index));
    json_object_set_new(c, chat ? "delta" : "text", delta_or_text);
    json_object_set_new(c, "logprobs", json_null());
    json_object_set_new(c, "finish_reason", finish ? json_string(finish) : json_null());
    json_t *choices = json_array();
    json_array_append_new(choices, c);
    json_object_set_new(o, "choices", choices);
    if (j->include_usage) json_object_set_new(o, "usage", json_null());
    return o;
}

void srv_sse_head(srv_job *j, ia_buf *b) {
    for (int i = 0; i < j->n_seqs; i++) {
        srv_seq *q = &j->seqs[i];
        if (j->kind == SRV_CHAT) {
            json_t *d = json_object();
            json_object_set_new(d, "role", json_string("assistant"));
            json_object_set_new(d, "content", json_string(""));
            sse_put(b, chunk(j, q->index, d, NULL));
        } else if (j->echo) {
            sse_put(b, chunk(j, q->index, srv_json_text(j->prompt_text[q->prompt], j->prompt_text_len[q->prompt]), NULL));
        }
    }
}

void srv_sse_text(srv_job *j, const srv_seq *q, const char *text, size_t len, ia_buf *b) {
    if (len == 0) return;
    if (j->kind == SRV_CHAT) {
        json_t *d = json_object();
        json_object_set_new(d, "content", srv_json_text(text, len));
        sse_put(b, chunk(j, q->index, d, NULL));
    } else sse_put(b, chunk(j, q->index, srv_json_text(text, len), NULL));
}

void srv_sse_finish(srv_job *j, const srv_seq *q, ia_buf *b) {
    json_t *d = j->kind == SRV_CHAT ? json_object() : json_string("");
    sse_put(b, chunk(j, q->index, d, srv_finish_reason(q->out.finish)));
}

void srv_sse_end(srv_job *j, ia_buf *b) {
    if (j->include_usage) {
        json_t *o = envelope(j, j->kind == SRV_CHAT ? "chat.completion.chunk" : "text_completion");
        json_object_set_new(o, "choices", json_array());
        json_object_set_new(o, "usage", usage_json(j));
        sse_put(b, o);
    }
    ia_buf_puts(b, "data: [DONE]\n\n");
}

void srv_sse_error(srv_job *j, const srv_err *e, ia_buf *b) {
    (void)j;
    sse_put(b, srv_error_json(e));
}
