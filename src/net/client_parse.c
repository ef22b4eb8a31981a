/* client_parse.c — reading what OpenAI-compatible servers send back: chat/completion replies,
 * error bodies, Retry-After values, and JSON objects buried in prose or code fences. */
#include "net/client_internal.h"

#include <curl/curl.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>

/* ==== replies ================================================================================= */

static void logprobs_free(ia_client_logprobs *lp) {
    if (!lp) return;
    for (int i = 0; i < lp->n; i++) ia_free(lp->tokens ? lp->tokens[i] : NULL);
    int n_top = lp->top_start ? lp->top_start[lp->n] : 0;
    for (int i = 0; i < n_top; i++) ia_free(lp->top_tokens[i]);
    ia_free(lp->tokens);
    ia_free(lp->token_logprobs);
    ia_free(lp->text_offset);
    ia_free(lp->top_start);
    ia_free(lp->top_tokens);
    ia_free(lp->top_logprobs);
    ia_free(lp);
}

void ia_client_parsed_clear(ia_client_resp *r) {
    for (int i = 0; i < r->n_choices; i++) {
        ia_free(r->choices[i].content);
        ia_free(r->choices[i].finish_reason);
        logprobs_free(r->choices[i].logprobs);
    }
    ia_free(r->choices);
    ia_free(r->model);
    r->choices = NULL;
    r->n_choices = 0;
    r->model = NULL;
    memset(&r->usage, 0, sizeof r->usage);
    r->usage_missing = false;
}

static char *json_strdup(const json_t *s) {
    return ia_strndup(json_string_value(s), json_string_length(s));
}

/* A number the server may send as an integer or a real. */
static bool json_num(const json_t *v, double *out) {
    if (json_is_integer(v)) { *out = (double)json_integer_value(v); return true; }
    if (json_is_real(v)) { *out = json_real_value(v); return true; }
    return false;
}

static int64_t json_count(const json_t *v, bool *present) {
    double d;
    if (!json_num(v, &d) || !(d >= 0) || d > 9e18) { if (present) *present = false; return 0; }
    if (present) *present = true;
    return (int64_t)d;
}

/* Alternatives of one position: a list of {token, logprob} (chat shape) or a {token: logprob} map
 * (legacy completions). Appends to the flat arrays; returns false on allocation failure. */
static bool top_append(ia_client_logprobs *lp, int *cap, const json_t *alts) {
    size_t want = json_is_array(alts) ? json_array_size(alts) : json_is_object(alts) ? json_object_size(alts) : 0;
    int have = lp->top_start[lp->n];
    if ((size_t)have + want > (size_t)*cap) {
        int nc = *cap ? *cap : 16;
        while ((size_t)nc < (size_t)have + want) nc *= 2;
        char **t = ia_realloc(lp->top_tokens, (size_t)nc * sizeof *t);
        if (!t) goto fail;
        lp->top_tokens = t;
        double *v = ia_realloc(lp->top_logprobs, (size_t)nc * sizeof *v);
        if (!v) goto fail;
        lp->top_logprobs = v;
        *cap = nc;
    }
    if (json_is_array(alts)) {
        size_t i;
        json_t *a;
        json_array_foreach(alts, i, a) {
            json_t *tok = json_object_get(a, "token");
            double lv;
            if (!json_is_string(tok) || !json_num(json_object_get(a, "logprob"), &lv)) continue;
            char *t = json_strdup(tok);
            if (!t) goto fail;
            lp->top_tokens[have] = t;
            lp->top_logprobs[have] = lv;
            have++;
        }
    } else if (json_is_object(alts)) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)alts, k, v) {
            double lv;
            if (!json_num(v, &lv)) continue;
            char *t = ia_strdup(k);
            if (!t) goto fail;
            lp->top_tokens[have] = t;
            lp->top_logprobs[have] = lv;
            have++;
        }
    }
    lp->top_start[lp->n + 1] = have;
    return true;
fail: /* record what was appended so logprobs_free releases it */
    lp->top_start[lp->n + 1] = have;
    return false;
}

/* Parses either logprobs shape; NULL for null/absent/unrecognised (a malformed logprobs object is
 * not worth failing a reply over). *oom is set when an allocation failed. */
static ia_client_logprobs *logprobs_parse(const json_t *j, bool *oom) {
    if (!json_is_object(j)) return NULL;
    const json_t *content = json_object_get(j, "content");
    const json_t *tokens = json_object_get(j, "tokens");
    bool chat_shape = json_is_array(content);
    if (!chat_shape && !json_is_array(tokens)) return NULL;
    size_t n = chat_shape ? json_array_size(content) : json_array_size(tokens);
    if (n > (size_t)INT32_MAX / 2) return NULL;
    ia_client_logprobs *lp = ia_calloc(1, sizeof *lp);
    if (!lp) goto nomem;
    lp->tokens = ia_calloc(n ? n : 1, sizeof *lp->tokens);
    lp->token_logprobs = ia_calloc(n ? n : 1, sizeof *lp->token_logprobs);
    lp->text_offset = ia_calloc(n ? n : 1, sizeof *lp->text_offset);
    lp->top_start = ia_calloc(n + 1, sizeof *lp->top_start);
    if (!lp->tokens || !lp->token_logprobs || !lp->text_offset || !lp->top_start) goto nomem;
    int cap = 0;
    const json_t *tlp = json_object_get(j, "token_logprobs");
    const json_t *tops = json_object_get(j, "top_logprobs");
    const json_t *offs = json_object_get(j, "text_offset");
    for (size_t i = 0; i < n; i++) {
        const json_t *tok, *lpv, *alts, *off;
        if (chat_shape) {
            const json_t *e = json_array_get(content, i);
            tok = json_object_get(e, "token");
            lpv = json_object_get(e, "logprob");
            alts = json_object_get(e, "top_logprobs");
            off = json_object_get(e, "text_offset");
        } else {
            tok = json_array_get(tokens, i);
            lpv = json_array_get(tlp, i);
            alts = json_array_get(tops, i);
            off = json_array_get(offs, i);
        }
        lp->tokens[i] = json_is_string(tok) ? json_strdup(tok) : ia_strdup("");
        if (!lp->tokens[i]) { lp->n = (int)i; goto nomem; }
        double v;
        lp->token_logprobs[i] = json_num(lpv, &v) ? v : NAN;
        lp->text_offset[i] = json_is_integer(off) ? (int32_t)json_integer_value(off) : -1;
        lp->n = (int)i; /* top_append writes top_start[n + 1] */
        if (!top_append(lp, &cap, alts)) { lp->n = (int)i + 1; goto nomem; }
        lp->n = (int)i + 1;
    }
    return lp;
nomem:
    *oom = true;
    logprobs_free(lp);
    return NULL;
}

/* Content may be a string, null, or (some servers) a list of {type:"text", text} parts. */
static char *content_text(const json_t *c) {
    if (json_is_string(c)) return json_strdup(c);
    if (json_is_array(c)) {
        ia_buf b = {0};
        size_t i;
        json_t *part;
        json_array_foreach(c, i, part) {
            json_t *t = json_is_string(part) ? part : json_object_get(part, "text");
            if (json_is_string(t)) ia_buf_append(&b, json_string_value(t), json_string_length(t));
        }
        return ia_buf_take(&b);
    }
    return ia_strdup("");
}

int ia_client_parse_reply(const char *body, size_t len, ia_client_resp *out, bool *retryable,
                          ia_error *err) {
    *retryable = false;
    if (!body) { *retryable = true; return ia_error_set(err, IA_ERR_FORMAT, "unusable reply: empty body"); }
    if (len >= 3 && memcmp(body, "\xEF\xBB\xBF", 3) == 0) { body += 3; len -= 3; } /* a BOM */
    json_error_t je;
    json_t *root = json_loadb(body, len, JSON_ALLOW_NUL, &je);
    if (!root) {
        *retryable = true;
        return ia_error_set(err, IA_ERR_FORMAT, "unusable reply: not JSON (%s at byte %d, %zu bytes)",
                            je.text, je.position, len);
    }
    int rc = IA_OK;
    if (!json_is_object(root)) {
        *retryable = true;
        rc = ia_error_set(err, IA_ERR_FORMAT, "unusable reply: JSON but not an object");
        goto done;
    }
    json_t *jerr = json_object_get(root, "error");
    json_t *choices = json_object_get(root, "choices");
    if (jerr && !json_is_null(jerr) && !json_is_array(choices)) {
        char sum[320];
        ia_client_error_summary(body, len, sum, sizeof sum, NULL);
        rc = ia_error_set(err, IA_ERR_FORMAT, "unusable reply: an error inside a success status: %s", sum);
        goto done;
    }
    if (!json_is_array(choices) || json_array_size(choices) == 0) {
        rc = ia_error_set(err, IA_ERR_FORMAT, "unusable reply: %s",
                          json_is_array(choices) ? "empty choices list" : "no choices list");
        goto done;
    }
    size_t n = json_array_size(choices);
    if (n > 1u << 20) { rc = ia_error_set(err, IA_ERR_FORMAT, "unusable reply: %zu choices", n); goto done; }
    out->choices = ia_calloc(n, sizeof *out->choices);
    if (!out->choices) goto nomem;
    out->n_choices = (int)n;
    bool oom = false;
    for (size_t i = 0; i < n; i++) {
        const json_t *ch = json_array_get(choices, i);
        ia_client_choice *dst = &out->choices[i];
        const json_t *msg = json_object_get(ch, "message");
        const json_t *text = json_object_get(ch, "text");
        /* chat: message.content; completions (and a few chat servers): text; anything else: "" */
        if (json_is_object(msg) && json_object_get(msg, "content"))
            dst->content = content_text(json_object_get(msg, "content"));
        else if (json_is_string(text))
            dst->content = json_strdup(text);
        else
            dst->content = ia_strdup("");
        if (!dst->content) goto nomem;
        const json_t *fr = json_object_get(ch, "finish_reason");
        if (json_is_string(fr) && !(dst->finish_reason = json_strdup(fr))) goto nomem;
        dst->logprobs = logprobs_parse(json_object_get(ch, "logprobs"), &oom);
        if (oom) goto nomem;
    }
    const json_t *usage = json_object_get(root, "usage");
    if (json_is_object(usage)) {
        bool hp = false, hc = false, ht = false;
        out->usage.prompt_tokens = json_count(json_object_get(usage, "prompt_tokens"), &hp);
        out->usage.completion_tokens = json_count(json_object_get(usage, "completion_tokens"), &hc);
        out->usage.total_tokens = json_count(json_object_get(usage, "total_tokens"), &ht);
        if (!ht) out->usage.total_tokens = out->usage.prompt_tokens + out->usage.completion_tokens;
        out->usage_missing = !hp && !hc && !ht;
    } else {
        out->usage_missing = true;
    }
    const json_t *model = json_object_get(root, "model");
    if (json_is_string(model) && !(out->model = json_strdup(model))) goto nomem;
    goto done;
nomem:
    rc = ia_error_set(err, IA_ERR_NOMEM, "out of memory reading a reply");
done:
    if (rc != IA_OK) ia_client_parsed_clear(out);
    json_decref(root);
    return rc;
}

/* ==== error bodies ============================================================================ */

/* Copies printable text into out, turning control characters into spaces. */
static void copy_clean(char *out, size_t cap, const char *s, size_t len) {
    size_t o = strlen(out);
    for (size_t i = 0; i < len && o + 1 < cap; i++) {
        unsigned char ch = (unsigned char)s[i];
        out[o++] = (ch < 0x20 || ch == 0x7f) ? ' ' : (char)ch;
    }
    out[o] = 0;
}

static void append_str(char *out, size_t cap, const char *s) { copy_clean(out, cap, s, strlen(s)); }

static int buf_dump_cb(const char *s, size_t n, void *ud) {
    ia_buf *b = ud;
    ia_buf_append(b, s, n);
    return b->oom ? -1 : 0;
}

static bool says_quota(const json_t *v) {
    return json_is_string(v) && strcmp(json_string_value(v), "insufficient_quota") == 0;
}

void ia_client_error_summary(const char *body, size_t len, char *out, size_t cap,
                             bool *insufficient_quota) {
    if (insufficient_quota) *insufficient_quota = false;
    if (cap == 0) return;
    out[0] = 0;
    if (!body || len == 0) { append_str(out, cap, "(empty body)"); return; }
    json_t *root = json_loadb(body, len, JSON_ALLOW_NUL, NULL);
    if (json_is_object(root)) {
        json_t *e = json_object_get(root, "error");
        /* vLLM's older flat shape has the fields at the top level */
        const json_t *obj = json_is_object(e) ? e : (json_object_get(root, "message") ? root : NULL);
        if (obj) {
            const json_t *type = json_object_get(obj, "type");
            const json_t *code = json_object_get(obj, "code");
            const json_t *msg = json_object_get(obj, "message");
            if (insufficient_quota) *insufficient_quota = says_quota(code) || says_quota(type);
            if (json_is_string(type) && json_string_length(type) > 0) {
                append_str(out, cap, json_string_value(type));
                append_str(out, cap, ": ");
            }
            if (json_is_string(msg))
                copy_clean(out, cap, json_string_value(msg), json_string_length(msg));
            else
                append_str(out, cap, "(no message)");
            json_decref(root);
            return;
        }
        if (json_is_string(e)) {
            copy_clean(out, cap, json_string_value(e), json_string_length(e));
            json_decref(root);
            return;
        }
        json_t *detail = json_object_get(root, "detail");
        if (json_is_string(detail)) {
            copy_clean(out, cap, json_string_value(detail), json_string_length(detail));
            json_decref(root);
            return;
        }
        if (detail) {
            ia_buf d = {0};
            json_dump_callback(detail, buf_dump_cb, &d, JSON_COMPACT | JSON_ENCODE_ANY);
            if (d.data && !d.oom) append_str(out, cap, d.data);
            ia_buf_free(&d);
            json_decref(root);
            return;
        }
    }
    json_decref(root);
    size_t take = len < 200 ? len : 200;
    copy_clean(out, cap, body, take);
    if (take < len) append_str(out, cap, "...");
}

/* ==== Retry-After ============================================================================= */

double ia_client_retry_after_parse(const char *value, double now_epoch) {
    if (!value) return -1;
    while (*value == ' ' || *value == '\t') value++;
    if (!*value) return -1;
    if ((*value >= '0' && *value <= '9') || *value == '.') {
        char *end;
        double d = strtod(value, &end);
        while (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n') end++;
        if (*end || !isfinite(d) || d < 0) return -1;
        return d;
    }
    time_t t = curl_getdate(value, NULL);
    if (t == (time_t)-1) return -1;
    double d = (double)t - now_epoch;
    return d < 0 ? 0 : d;
}

/* ==== lenient JSON object extraction ========================================================== */

/* End of the object starting at s[start] == '{' (braces inside "strings" ignored), or false. */
static bool match_object(const char *s, size_t len, size_t start, size_t *end) {
    int depth = 0;
    bool in_str = false, esc = false;
    for (size_t i = start; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (esc) esc = false;
            else if (c == '\\') esc = true;
            else if (c == '"') in_str = false;
            continue;
        }
        if (c == '"') in_str = true;
        else if (c == '{') depth++;
        else if (c == '}' && --depth == 0) { *end = i; return true; }
    }
    return false;
}

static bool is_smart_quote(const char *s, size_t len, size_t i) {
    return i + 2 < len && (unsigned char)s[i] == 0xE2 && (unsigned char)s[i + 1] == 0x80 &&
           ((unsigned char)s[i + 2] == 0x9C || (unsigned char)s[i + 2] == 0x9D);
}

/* The mistakes models make most when asked for JSON: trailing commas, raw newlines and tabs inside
 * strings, typographic quotes around keys and values. Returns a repaired copy (NULL on OOM). */
static char *json_repair(const char *s, size_t len) {
    ia_buf b = {0};
    bool in_str = false, esc = false, smart = false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (esc) { ia_buf_append(&b, &c, 1); esc = false; }
            else if (c == '\\') { ia_buf_append(&b, &c, 1); esc = true; }
            else if (!smart && c == '"') { ia_buf_append(&b, &c, 1); in_str = false; }
            else if (smart && is_smart_quote(s, len, i)) { ia_buf_puts(&b, "\""); in_str = false; i += 2; }
            else if (smart && c == '"') ia_buf_puts(&b, "\\\"");
            else if (c == '\n') ia_buf_puts(&b, "\\n");
            else if (c == '\r') ia_buf_puts(&b, "\\r");
            else if (c == '\t') ia_buf_puts(&b, "\\t");
            else if ((unsigned char)c < 0x20) ia_buf_printf(&b, "\\u%04x", (unsigned)(unsigned char)c);
            else ia_buf_append(&b, &c, 1);
            continue;
        }
        if (c == '"') { in_str = true; smart = false; ia_buf_append(&b, &c, 1); }
        else if (is_smart_quote(s, len, i)) { in_str = true; smart = true; ia_buf_puts(&b, "\""); i += 2; }
        else if (c == ',') {
            size_t k = i + 1;
            while (k < len && (s[k] == ' ' || s[k] == '\t' || s[k] == '\n' || s[k] == '\r')) k++;
            if (k < len && (s[k] == '}' || s[k] == ']')) continue; /* trailing comma */
            ia_buf_append(&b, &c, 1);
        } else ia_buf_append(&b, &c, 1);
    }
    return ia_buf_take(&b);
}

static bool parses_as_object(const char *s, size_t len) {
    json_t *j = json_loadb(s, len, 0, NULL);
    bool ok = json_is_object(j);
    json_decref(j);
    return ok;
}

/* The first object in s[0..len); *tries counts candidate '{' across calls. */
static char *extract_in(const char *s, size_t len, int *tries) {
    for (size_t i = 0; i < len && *tries < 256; i++) {
        if (s[i] != '{') continue;
        (*tries)++;
        size_t end;
        if (!match_object(s, len, i, &end)) {
            /* a smart-quoted string may hold an unbalanced brace, or the object is cut off: the
             * repair pass below cannot help a cut-off object, so look at the next '{' */
            continue;
        }
        size_t n = end - i + 1;
        if (parses_as_object(s + i, n)) return ia_strndup(s + i, n);
        char *fixed = json_repair(s + i, n);
        if (fixed && parses_as_object(fixed, strlen(fixed))) return fixed;
        ia_free(fixed);
    }
    return NULL;
}

char *ia_json_extract_object(const char *text) {
    if (!text) return NULL;
    size_t len = strlen(text);
    int tries = 0;
    /* Fenced blocks first: a judge that fences its answer often shows an example object in the
     * prose around it. */
    const char *p = text;
    while ((p = strstr(p, "```")) != NULL) {
        /* the info string ("json") holds no '{', so the block can be scanned from the backticks */
        const char *start = p + 3;
        const char *close = strstr(start, "```");
        const char *end = close ? close : text + len; /* an unclosed fence runs to the end */
        char *got = extract_in(start, (size_t)(end - start), &tries);
        if (got) return got;
        if (!close) break;
        p = close + 3;
    }
    return extract_in(text, len, &tries);
}
