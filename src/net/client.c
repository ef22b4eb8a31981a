/* client.c — the teacher client: building OpenAI-compatible requests, running them concurrently
 * with curl_multi under the retry policy described in client.h, the reply cache, usage totals and
 * keeping the API key out of everything handed back. */
#include "net/client_internal.h"

#include <curl/curl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <strings.h>
#include <time.h>

#define CL_DEFAULT_CONCURRENCY 8
#define CL_DEFAULT_RETRIES 4
#define CL_DEFAULT_TIMEOUT 120.0
#define CL_DEFAULT_CONNECT_TIMEOUT 10.0
#define CL_DEFAULT_MAX_RESPONSE ((size_t)32 << 20)
#define CL_REDACTED "[redacted]"

static const char *const EP_CHAT = "chat/completions";
static const char *const EP_COMPLETIONS = "completions";

struct ia_client {
    char *url_chat;           /* base_url + "/chat/completions" */
    char *url_completions;
    char *model;              /* default model (may be NULL) */
    char *user_agent;
    char *key;                /* the API key (NULL: none); wiped on free */
    size_t key_len;
    bool loopback;            /* base_url names this machine: never go through a proxy */
    struct curl_slist *headers; /* shared by every easy handle; holds the Authorization line */
    bool use_mct;
    int max_concurrency, max_retries;
    double backoff_base, backoff_max, retry_after_max;
    double timeout, connect_timeout, budget;
    size_t max_response;
    const ia_client_cache *cache;
    void (*log)(void *, const char *);
    void *log_ud;
    void (*progress)(void *, int, int);
    void *progress_ud;

    pthread_mutex_t lock;     /* guards the fields below: shared by every thread using the client */
    int slots_used;           /* requests in flight (<= max_concurrency) */
    ia_rng rng;               /* back-off jitter */
    ia_client_totals totals;
};

/* ==== small helpers =========================================================================== */

/* Overwrites memory in a way the compiler may not drop (the key must not linger after free). */
static void wipe(void *p, size_t n) {
    volatile unsigned char *v = p;
    while (n--) *v++ = 0;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;
static void curl_init_once(void) { curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

/* A copy of s[0..len) with every occurrence of the key replaced: applied to everything that came
 * from the server (a misconfigured proxy or a test server may echo the Authorization header). */
static char *redact_dup(const ia_client *c, const char *s, size_t len) {
    if (!s) return NULL;
    if (!c->key || c->key_len == 0) return ia_strndup(s, len);
    ia_buf b = {0};
    size_t i = 0;
    while (i < len) {
        const char *hit = NULL;
        if (len - i >= c->key_len) hit = memmem(s + i, len - i, c->key, c->key_len);
        if (!hit) {
            ia_buf_append(&b, s + i, len - i);
            break;
        }
        ia_buf_append(&b, s + i, (size_t)(hit - (s + i)));
        ia_buf_puts(&b, CL_REDACTED);
        i = (size_t)(hit - s) + c->key_len;
    }
    if (!b.data && !b.oom) return ia_strdup("");
    return ia_buf_take(&b);
}

/* Scrubs an error message in place (truncating if the replacement makes it longer). */
static void redact_msg(const ia_client *c, char *msg, size_t cap) {
    if (!c->key || c->key_len == 0 || !memmem(msg, strlen(msg), c->key, c->key_len)) return;
    char *r = redact_dup(c, msg, strlen(msg));
    if (r) {
        snprintf(msg, cap, "%s", r);
        ia_free(r);
    } else { /* no memory for a copy: blank the key out where it stands */
        char *hit;
        while ((hit = memmem(msg, strlen(msg), c->key, c->key_len)) != NULL) memset(hit, '*', c->key_len);
    }
}

static void client_log(const ia_client *c, const char *fmt, ...) IA_PRINTF(2, 3);
static void client_log(const ia_client *c, const char *fmt, ...) {
    if (!c->log) return;
    char line[IA_ERROR_MSG_MAX + 128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    redact_msg(c, line, sizeof line);
    c->log(c->log_ud, line);
}

/* jansson refuses strings that are not UTF-8, and a base model's answers can hold cut multibyte
 * sequences: replace each invalid byte with U+FFFD rather than fail the request. */
static size_t utf8_seq_len(const unsigned char *s, size_t left) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c == 0xE0) { n = 3; lo = 0xA0; }
    else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) n = 3;
    else if (c == 0xED) { n = 3; hi = 0x9F; }
    else if (c == 0xF0) { n = 4; lo = 0x90; }
    else if (c >= 0xF1 && c <= 0xF3) n = 4;
    else if (c == 0xF4) { n = 4; hi = 0x8F; }
    else return 0;
    if (left < n) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (size_t k = 2; k < n; k++)
        if (s[k] < 0x80 || s[k] > 0xBF) return 0;
    return n;
}

static json_t *json_text(const char *s) {
    json_t *j = json_string(s);
    if (j) return j;
    ia_buf b = {0};
    size_t len = strlen(s);
    for (size_t i = 0; i < len;) {
        size_t n = utf8_seq_len((const unsigned char *)s + i, len - i);
        if (n == 0) {
            ia_buf_puts(&b, "\xEF\xBF\xBD");
            i++;
        } else {
            ia_buf_append(&b, s + i, n);
            i += n;
        }
    }
    char *fixed = ia_buf_take(&b);
    if (!fixed) return NULL;
    j = json_string(fixed);
    ia_free(fixed);
    return j;
}

/* ==== client ================================================================================== */

ia_client_opts ia_client_opts_default(void) {
    ia_client_opts o;
    memset(&o, 0, sizeof o);
    o.max_concurrency = CL_DEFAULT_CONCURRENCY;
    o.max_retries = CL_DEFAULT_RETRIES;
    o.backoff_base_s = 0.5;
    o.backoff_max_s = 8.0;
    o.retry_after_max_s = 120.0;
    o.timeout_s = CL_DEFAULT_TIMEOUT;
    o.connect_timeout_s = CL_DEFAULT_CONNECT_TIMEOUT;
    o.budget_s = 600.0;
    o.max_response_bytes = CL_DEFAULT_MAX_RESPONSE;
    o.seed = 0x1a2b3c4d5e6f7081ull;
    return o;
}

static bool host_is_loopback(const char *url) {
    const char *h = strstr(url, "://");
    h = h ? h + 3 : url;
    const char *end = h + strcspn(h, "/?#");
    const char *at = memchr(h, '@', (size_t)(end - h));
    if (at) h = at + 1;
    size_t n = (size_t)(end - h);
    return (n >= 9 && strncasecmp(h, "localhost", 9) == 0 && (n == 9 || h[9] == ':')) ||
           (n >= 4 && strncmp(h, "127.", 4) == 0) || (n >= 5 && strncmp(h, "[::1]", 5) == 0);
}

/* Reads the key from the environment, trimming the newline a `$(cat keyfile)` leaves. Returns
 * IA_OK with *out NULL when there is no key to send. */
static int read_key(const ia_client_opts *o, char **out, ia_error *err) {
    *out = NULL;
    if (!o->api_key_env || !*o->api_key_env) return IA_OK;
    const char *v = getenv(o->api_key_env);
    while (v && (*v == ' ' || *v == '\t' || *v == '\n' || *v == '\r')) v++;
    size_t n = v ? strlen(v) : 0;
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t' || v[n - 1] == '\n' || v[n - 1] == '\r')) n--;
    if (n == 0) {
        if (o->api_key_optional) return IA_OK;
        return ia_error_set(err, IA_ERR_ARG, "teacher client: environment variable %s is not set or empty",
                            o->api_key_env);
    }
    for (size_t i = 0; i < n; i++) /* a header value: anything else could inject headers */
        if ((unsigned char)v[i] <= 0x20 || (unsigned char)v[i] >= 0x7f)
            return ia_error_set(err, IA_ERR_ARG,
                                "teacher client: the key in %s holds a character not allowed in an "
                                "HTTP header (position %zu)", o->api_key_env, i);
    *out = ia_strndup(v, n);
    if (!*out) return ia_error_set(err, IA_ERR_NOMEM, "teacher client: out of memory");
    return IA_OK;
}

static char *join_url(const char *base, const char *endpoint) {
    size_t n = strlen(base);
    while (n > 0 && base[n - 1] == '/') n--;
    ia_buf b = {0};
    ia_buf_append(&b, base, n);
    ia_buf_puts(&b, "/");
    ia_buf_puts(&b, endpoint);
    return ia_buf_take(&b);
}

static void headers_free(struct curl_slist *h) {
    for (struct curl_slist *s = h; s; s = s->next)
        if (s->data) wipe(s->data, strlen(s->data));
    curl_slist_free_all(h);
}

void ia_client_free(ia_client *c) {
    if (!c) return;
    headers_free(c->headers);
    if (c->key) wipe(c->key, c->key_len);
    ia_free(c->key);
    ia_free(c->url_chat);
    ia_free(c->url_completions);
    ia_free(c->model);
    ia_free(c->user_agent);
    pthread_mutex_destroy(&c->lock);
    ia_free(c);
}

ia_client *ia_client_init(const ia_client_opts *o, ia_error *err) {
    if (!o || !o->base_url || !*o->base_url)
        return ia_error_set(err, IA_ERR_ARG, "teacher client: no base_url given"), NULL;
    if (strncasecmp(o->base_url, "http://", 7) != 0 && strncasecmp(o->base_url, "https://", 8) != 0)
        return ia_error_set(err, IA_ERR_ARG, "teacher client: base_url must start with http:// or https://"),
               NULL;
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_rc != CURLE_OK)
        return ia_error_set(err, IA_ERR_NET, "teacher client: libcurl initialisation failed: %s",
                            curl_easy_strerror(curl_init_rc)), NULL;
    ia_client *c = ia_calloc(1, sizeof *c);
    if (!c) return ia_error_set(err, IA_ERR_NOMEM, "teacher client: out of memory"), NULL;
    pthread_mutex_init(&c->lock, NULL);
    if (read_key(o, &c->key, err) != IA_OK) {
        ia_client_free(c);
        return NULL;
    }
    c->key_len = c->key ? strlen(c->key) : 0;
    c->url_chat = join_url(o->base_url, EP_CHAT);
    c->url_completions = join_url(o->base_url, EP_COMPLETIONS);
    c->model = o->model ? ia_strdup(o->model) : NULL;
    c->user_agent = ia_strdup(o->user_agent ? o->user_agent : "iteralign/" IA_VERSION);
    if (!c->url_chat || !c->url_completions || (o->model && !c->model) || !c->user_agent) goto nomem;
    c->loopback = host_is_loopback(o->base_url);

    struct curl_slist *h = NULL, *t;
    static const char *const fixed[] = {"Content-Type: application/json", "Accept: application/json",
                                        "Expect:" /* no 100-continue round trip for large bodies */};
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++) {
        if (!(t = curl_slist_append(h, fixed[i]))) { headers_free(h); goto nomem; }
        h = t;
    }
    if (c->key) {
        ia_buf auth = {0};
        ia_buf_puts(&auth, "Authorization: Bearer ");
        ia_buf_puts(&auth, c->key);
        t = auth.oom ? NULL : curl_slist_append(h, auth.data);
        if (auth.data) wipe(auth.data, auth.len);
        ia_buf_free(&auth);
        if (!t) { headers_free(h); goto nomem; }
        h = t;
    }
    c->headers = h;

    c->use_mct = o->use_max_completion_tokens;
    c->max_concurrency = o->max_concurrency > 0 ? o->max_concurrency : CL_DEFAULT_CONCURRENCY;
    c->max_retries = o->max_retries >= 0 ? o->max_retries : CL_DEFAULT_RETRIES;
    c->backoff_base = o->backoff_base_s > 0 ? o->backoff_base_s : 0;
    c->backoff_max = o->backoff_max_s > 0 ? o->backoff_max_s : c->backoff_base;
    c->retry_after_max = o->retry_after_max_s > 0 ? o->retry_after_max_s : 120.0;
    c->timeout = o->timeout_s > 0 ? o->timeout_s : CL_DEFAULT_TIMEOUT;
    c->connect_timeout = o->connect_timeout_s > 0 ? o->connect_timeout_s : CL_DEFAULT_CONNECT_TIMEOUT;
    c->budget = o->budget_s > 0 ? o->budget_s : 0;
    c->max_response = o->max_response_bytes ? o->max_response_bytes : CL_DEFAULT_MAX_RESPONSE;
    c->cache = o->cache;
    c->log = o->log;
    c->log_ud = o->log_ud;
    c->progress = o->progress;
    c->progress_ud = o->progress_ud;
    ia_rng_seed(&c->rng, o->seed);
    return c;
nomem:
    ia_client_free(c);
    ia_error_set(err, IA_ERR_NOMEM, "teacher client: out of memory");
    return NULL;
}

bool ia_client_has_key(const ia_client *c) { return c && c->key; }

void ia_client_totals_get(ia_client *c, ia_client_totals *out) {
    if (!c || !out) return;
    pthread_mutex_lock(&c->lock);
    *out = c->totals;
    pthread_mutex_unlock(&c->lock);
}

void ia_client_totals_reset(ia_client *c) {
    if (!c) return;
    pthread_mutex_lock(&c->lock);
    memset(&c->totals, 0, sizeof c->totals);
    pthread_mutex_unlock(&c->lock);
}

void ia_client_resp_clear(ia_client_resp *r) {
    if (!r) return;
    ia_client_parsed_clear(r);
    ia_free(r->request_json);
    ia_free(r->raw_body);
    memset(r, 0, sizeof *r);
}

/* ==== request bodies ========================================================================== */

ia_client_chat_req ia_client_chat_req_default(void) {
    ia_client_chat_req r;
    memset(&r, 0, sizeof r);
    r.temperature = -1;
    r.top_p = -1;
    r.n = 1;
    return r;
}

ia_client_completion_req ia_client_completion_req_default(void) {
    ia_client_completion_req r;
    memset(&r, 0, sizeof r);
    r.max_tokens = -1;
    r.temperature = -1;
    r.logprobs = -1;
    return r;
}

static int buf_dump_cb(const char *s, size_t n, void *ud) {
    ia_buf *b = ud;
    ia_buf_append(b, s, n);
    return b->oom ? -1 : 0;
}

/* The canonical text of a body: sorted keys and no spaces, so equal requests hash equally; reals
 * with 9 significant digits so 0.7 is sent as 0.7, not 0.69999999999999996. */
static char *json_canonical(const json_t *j) {
    ia_buf b = {0};
    if (json_dump_callback(j, buf_dump_cb, &b, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(9)) != 0) {
        ia_buf_free(&b);
        return NULL;
    }
    return ia_buf_take(&b);
}

/* Sets key to a new value (stolen); false when value is NULL (jansson out of memory or a value
 * it refuses) or the set fails. */
static bool set_new(json_t *o, const char *key, json_t *value) {
    return value && json_object_set_new(o, key, value) == 0;
}

static int add_real(json_t *body, const char *key, double v, ia_error *err) {
    if (!isfinite(v)) return ia_error_set(err, IA_ERR_ARG, "%s is not a finite number", key);
    if (!set_new(body, key, json_real(v))) return ia_error_set(err, IA_ERR_NOMEM, "out of memory");
    return IA_OK;
}

static int add_stop(json_t *body, const char *const *stop, int n_stop, ia_error *err) {
    if (n_stop <= 0) return IA_OK;
    if (!stop) return ia_error_set(err, IA_ERR_ARG, "n_stop is %d but stop is NULL", n_stop);
    json_t *arr = json_array();
    if (!arr) return ia_error_set(err, IA_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n_stop; i++) {
        if (!stop[i]) {
            json_decref(arr);
            return ia_error_set(err, IA_ERR_ARG, "stop[%d] is NULL", i);
        }
        json_t *s = json_text(stop[i]);
        if (!s || json_array_append_new(arr, s) != 0) {
            json_decref(arr);
            return ia_error_set(err, IA_ERR_NOMEM, "out of memory");
        }
    }
    if (!set_new(body, "stop", arr)) return ia_error_set(err, IA_ERR_NOMEM, "out of memory");
    return IA_OK;
}

/* Merges the caller's extra fields under the ones set explicitly; streaming is this client's
 * business, so "stream" and "stream_options" are dropped. */
static int add_extra(json_t *body, const char *extra, ia_error *err) {
    if (!extra || !*extra) return IA_OK;
    json_error_t je;
    json_t *x = json_loads(extra, 0, &je);
    if (!json_is_object(x)) {
        json_decref(x);
        return ia_error_set(err, IA_ERR_ARG, "extra_json is not a JSON object (%s)", x ? "not an object" : je.text);
    }
    int rc = json_object_update_missing(body, x) == 0 ? IA_OK : ia_error_set(err, IA_ERR_NOMEM, "out of memory");
    json_decref(x);
    json_object_del(body, "stream");
    json_object_del(body, "stream_options");
    return rc;
}

static int add_model(const ia_client *c, json_t *body, const char *model, ia_error *err) {
    if (!model) model = c->model;
    if (!model || !*model)
        return ia_error_set(err, IA_ERR_ARG, "no model: set it in the request or in ia_client_opts.model");
    if (!set_new(body, "model", json_text(model))) return ia_error_set(err, IA_ERR_NOMEM, "out of memory");
    return IA_OK;
}

static int chat_body(const ia_client *c, const ia_client_chat_req *r, json_t **out, ia_error *err) {
    *out = NULL;
    json_t *body = json_object();
    if (!body) return ia_error_set(err, IA_ERR_NOMEM, "out of memory");
    int rc = add_model(c, body, r->model, err);
    if (rc) goto fail;
    if (r->n_messages <= 0 || !r->messages) {
        rc = ia_error_set(err, IA_ERR_ARG, "a chat request needs at least one message");
        goto fail;
    }
    json_t *msgs = json_array();
    if (!set_new(body, "messages", msgs)) goto nomem;
    for (int i = 0; i < r->n_messages; i++) {
        const ia_chat_msg *m = &r->messages[i];
        if (!m->role || !*m->role || !m->content) {
            rc = ia_error_set(err, IA_ERR_ARG, "message %d has no %s", i, m->content ? "role" : "content");
            goto fail;
        }
        json_t *jm = json_object();
        if (!jm || json_array_append_new(msgs, jm) != 0) goto nomem;
        if (!set_new(jm, "role", json_text(m->role)) || !set_new(jm, "content", json_text(m->content)))
            goto nomem;
    }
    /* written so that NaN is not "omitted" but reaches add_real and is refused */
    if (!(r->temperature < 0) && (rc = add_real(body, "temperature", r->temperature, err))) goto fail;
    if (!(r->top_p < 0) && (rc = add_real(body, "top_p", r->top_p, err))) goto fail;
    if (r->max_tokens > 0 &&
        !set_new(body, c->use_mct ? "max_completion_tokens" : "max_tokens", json_integer(r->max_tokens)))
        goto nomem;
    if (r->has_seed && !set_new(body, "seed", json_integer((json_int_t)r->seed))) goto nomem;
    if ((rc = add_stop(body, r->stop, r->n_stop, err))) goto fail;
    if (r->n > 1 && !set_new(body, "n", json_integer(r->n))) goto nomem;
    if (r->format == IA_CLIENT_FORMAT_JSON_OBJECT) {
        json_t *rf = json_object();
        if (!set_new(body, "response_format", rf) || !set_new(rf, "type", json_string("json_object"))) goto nomem;
    } else if (r->format == IA_CLIENT_FORMAT_JSON_SCHEMA) {
        json_error_t je;
        json_t *schema = r->json_schema ? json_loads(r->json_schema, 0, &je) : NULL;
        if (!json_is_object(schema)) {
            json_decref(schema);
            rc = ia_error_set(err, IA_ERR_ARG, "json_schema is %s", !r->json_schema ? "missing"
                                                                    : schema ? "not a JSON object" : je.text);
            goto fail;
        }
        json_t *rf = json_object(), *js = json_object();
        if (!set_new(body, "response_format", rf)) { json_decref(js); json_decref(schema); goto nomem; }
        if (!set_new(rf, "json_schema", js)) { json_decref(schema); goto nomem; }
        if (!set_new(rf, "type", json_string("json_schema")) || !set_new(js, "schema", schema) ||
            !set_new(js, "name", json_text(r->json_schema_name ? r->json_schema_name : "response")) ||
            !set_new(js, "strict", json_boolean(r->json_schema_strict)))
            goto nomem;
    } else if (r->format != IA_CLIENT_FORMAT_NONE) {
        rc = ia_error_set(err, IA_ERR_ARG, "unknown response format %d", (int)r->format);
        goto fail;
    }
    if ((rc = add_extra(body, r->extra_json, err))) goto fail;
    *out = body;
    return IA_OK;
nomem:
    rc = ia_error_set(err, IA_ERR_NOMEM, "out of memory building a request");
fail:
    json_decref(body);
    return rc;
}

static int completion_body(const ia_client *c, const ia_client_completion_req *r, json_t **out,
                           ia_error *err) {
    *out = NULL;
    json_t *body = json_object();
    if (!body) return ia_error_set(err, IA_ERR_NOMEM, "out of memory");
    int rc = add_model(c, body, r->model, err);
    if (rc) goto fail;
    if (r->prompt_ids && r->n_prompt_ids > 0) {
        json_t *ids = json_array();
        if (!set_new(body, "prompt", ids)) goto nomem;
        for (int i = 0; i < r->n_prompt_ids; i++)
            if (json_array_append_new(ids, json_integer(r->prompt_ids[i])) != 0) goto nomem;
    } else if (r->prompt) {
        if (!set_new(body, "prompt", json_text(r->prompt))) goto nomem;
    } else {
        rc = ia_error_set(err, IA_ERR_ARG, "a completion request needs a prompt or prompt ids");
        goto fail;
    }
    if (r->max_tokens >= 0 && !set_new(body, "max_tokens", json_integer(r->max_tokens))) goto nomem;
    if (!(r->temperature < 0) && (rc = add_real(body, "temperature", r->temperature, err))) goto fail;
    if (r->logprobs >= 0 && !set_new(body, "logprobs", json_integer(r->logprobs))) goto nomem;
    if (r->echo && !set_new(body, "echo", json_true())) goto nomem;
    if (r->has_seed && !set_new(body, "seed", json_integer((json_int_t)r->seed))) goto nomem;
    if ((rc = add_stop(body, r->stop, r->n_stop, err))) goto fail;
    if ((rc = add_extra(body, r->extra_json, err))) goto fail;
    *out = body;
    return IA_OK;
nomem:
    rc = ia_error_set(err, IA_ERR_NOMEM, "out of memory building a request");
fail:
    json_decref(body);
    return rc;
}

/* ==== the batch engine ======================================================================== */

typedef enum job_state { JOB_WAIT = 0, JOB_RUN, JOB_DONE } job_state;

typedef struct cl_batch {
    int n, done;
} cl_batch;

typedef struct cl_job {
    ia_client *c;
    cl_batch *batch;
    int index;               /* input position (for log lines) */
    const char *endpoint;    /* EP_CHAT or EP_COMPLETIONS */
    const char *url;
    bool cacheable;
    ia_client_resp *resp;    /* resp->request_json is the body sent */
    ia_error *err;           /* the caller's, or own */
    ia_error own;
    job_state state;
    double t_first;          /* start of the first attempt */
    double t_next;           /* earliest start of the next attempt */
    CURL *easy;
    /* per attempt */
    ia_buf body;
    bool too_big, oom;
    double retry_after;      /* from Retry-After; -1 when absent or not understood */
    double retry_after_ms;   /* from retry-after-ms (seconds); -1 when absent */
    int should_retry;        /* x-should-retry: -1 absent, 0 false, 1 true */
    double attempt_timeout;
    char errbuf[CURL_ERROR_SIZE];
} cl_job;

static bool slot_take(ia_client *c) {
    pthread_mutex_lock(&c->lock);
    bool ok = c->slots_used < c->max_concurrency;
    if (ok) c->slots_used++;
    pthread_mutex_unlock(&c->lock);
    return ok;
}

static void slot_give(ia_client *c) {
    pthread_mutex_lock(&c->lock);
    c->slots_used--;
    pthread_mutex_unlock(&c->lock);
}

/* Full jitter (uniform in [0, cap)): spreads retries of many requests that failed together. */
static double backoff_delay(ia_client *c, int retry) {
    double cap = c->backoff_base * ldexp(1.0, retry > 30 ? 30 : retry);
    if (cap > c->backoff_max) cap = c->backoff_max;
    pthread_mutex_lock(&c->lock);
    double u = ia_rng_uniform(&c->rng);
    pthread_mutex_unlock(&c->lock);
    return cap * u;
}

static void job_finish(cl_job *j, bool ok) {
    ia_client *c = j->c;
    j->state = JOB_DONE;
    if (j->t_first > 0) j->resp->latency_s = ia_time_now() - j->t_first;
    if (!j->resp->raw_body && j->body.data) j->resp->raw_body = redact_dup(c, j->body.data, j->body.len);
    ia_buf_free(&j->body);
    pthread_mutex_lock(&c->lock);
    c->totals.requests++;
    if (ok) {
        c->totals.succeeded++;
        if (j->resp->cache_hit) {
            c->totals.cache_hits++;
        } else {
            c->totals.prompt_tokens += j->resp->usage.prompt_tokens;
            c->totals.completion_tokens += j->resp->usage.completion_tokens;
            c->totals.total_tokens += j->resp->usage.total_tokens;
            if (j->resp->usage_missing) c->totals.usage_missing++;
        }
    } else {
        c->totals.failed++;
    }
    pthread_mutex_unlock(&c->lock);
    j->batch->done++;
    if (c->progress) c->progress(c->progress_ud, j->batch->done, j->batch->n);
}

static void job_fail(cl_job *j, int code, const char *fmt, ...) IA_PRINTF(3, 4);
static void job_fail(cl_job *j, int code, const char *fmt, ...) {
    char msg[IA_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    redact_msg(j->c, msg, sizeof msg);
    ia_error_set(j->err, code, "%s", msg);
    client_log(j->c, "%s [%d]: failed: %s", j->endpoint, j->index, msg);
    job_finish(j, false);
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud) {
    cl_job *j = ud;
    size_t n = size * nmemb;
    if (j->body.len + n > j->c->max_response) {
        j->too_big = true;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    ia_buf_append(&j->body, p, n);
    if (j->body.oom) {
        j->oom = true;
        return 0;
    }
    return n;
}

static bool header_is(const char *line, size_t n, const char *name, const char **value) {
    size_t k = strlen(name);
    if (n <= k || line[k] != ':' || strncasecmp(line, name, k) != 0) return false;
    *value = line + k + 1;
    return true;
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *ud) {
    cl_job *j = ud;
    size_t n = size * nitems;
    if (n >= 5 && memcmp(buf, "HTTP/", 5) == 0) { /* a new response (after a 100, say) */
        j->retry_after = j->retry_after_ms = -1;
        j->should_retry = -1;
        return n;
    }
    char line[256];
    size_t m = n < sizeof line - 1 ? n : sizeof line - 1;
    memcpy(line, buf, m);
    line[m] = 0;
    while (m > 0 && (line[m - 1] == '\r' || line[m - 1] == '\n' || line[m - 1] == ' ')) line[--m] = 0;
    const char *v;
    if (header_is(line, m, "retry-after-ms", &v)) {
        double ms = ia_client_retry_after_parse(v, 0);
        j->retry_after_ms = ms >= 0 ? ms / 1000.0 : -1;
    } else if (header_is(line, m, "retry-after", &v)) {
        j->retry_after = ia_client_retry_after_parse(v, (double)time(NULL));
    } else if (header_is(line, m, "x-should-retry", &v)) {
        while (*v == ' ') v++;
        j->should_retry = strcasecmp(v, "true") == 0 ? 1 : strcasecmp(v, "false") == 0 ? 0 : -1;
    }
    return n;
}

static int attempt_start(CURLM *m, cl_job *j, double now) {
    ia_client *c = j->c;
    if (j->resp->attempts == 0) j->t_first = now;
    double tmo = c->timeout;
    if (c->budget > 0) {
        double left = j->t_first + c->budget - now;
        if (left < 0.001) {
            job_fail(j, IA_ERR_TIMEOUT, "%s: total budget of %.3g s spent after %d attempt(s)", j->endpoint,
                     c->budget, j->resp->attempts);
            return IA_ERR_TIMEOUT;
        }
        if (left < tmo) tmo = left;
    }
    CURL *e = curl_easy_init();
    if (!e) {
        job_fail(j, IA_ERR_NOMEM, "%s: out of memory starting a request", j->endpoint);
        return IA_ERR_NOMEM;
    }
    ia_buf_free(&j->body);
    ia_free(j->resp->raw_body); /* raw_body and http_status describe the last attempt only */
    j->resp->raw_body = NULL;
    j->resp->http_status = 0;
    j->too_big = j->oom = false;
    j->retry_after = j->retry_after_ms = -1;
    j->should_retry = -1;
    j->errbuf[0] = 0;
    j->attempt_timeout = tmo;
    long tmo_ms = (long)ceil(tmo * 1000.0);
    long ctmo_ms = (long)ceil(c->connect_timeout * 1000.0);
    const char *body = j->resp->request_json;
    curl_easy_setopt(e, CURLOPT_URL, j->url);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->headers);
    curl_easy_setopt(e, CURLOPT_USERAGENT, c->user_agent);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, j);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, j);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, j->errbuf);
    curl_easy_setopt(e, CURLOPT_PRIVATE, j);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L); /* several threads; no SIGALRM games */
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, tmo_ms > 0 ? tmo_ms : 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, ctmo_ms < tmo_ms ? ctmo_ms : tmo_ms);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L); /* a redirect is reported, never followed */
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    if (c->loopback) curl_easy_setopt(e, CURLOPT_NOPROXY, "*");
    if (curl_multi_add_handle(m, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        job_fail(j, IA_ERR_NET, "%s: could not start a transfer", j->endpoint);
        return IA_ERR_NET;
    }
    j->easy = e;
    j->state = JOB_RUN;
    j->resp->attempts++;
    return IA_OK;
}

static const char *status_phrase(long s) {
    switch (s) {
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "";
    }
}

static const char *status_hint(long s) {
    switch (s) {
    case 401: return " (check the API key)";
    case 403: return " (the key may not have access to this model)";
    case 404: return " (unknown model or wrong base URL)";
    default: return "";
    }
}

/* Transport failures that another attempt cannot fix. */
static bool curl_permanent(CURLcode r) {
    switch (r) {
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_NOT_BUILT_IN:
    case CURLE_BAD_FUNCTION_ARGUMENT:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_LOGIN_DENIED:
    case CURLE_UNKNOWN_OPTION:
    case CURLE_TOO_MANY_REDIRECTS: return true;
    default: return false;
    }
}

/* Decides what one finished attempt means. Returns IA_OK (reply parsed into resp) or an error code
 * with *why saying what went wrong and *retry whether another attempt may help. */
static int attempt_classify(cl_job *j, CURLcode res, long status, ia_error *why, bool *retry) {
    ia_client *c = j->c;
    *retry = false;
    if (res != CURLE_OK) {
        if (j->oom || res == CURLE_OUT_OF_MEMORY) return ia_error_set(why, IA_ERR_NOMEM, "out of memory receiving the reply");
        if (j->too_big)
            return ia_error_set(why, IA_ERR_NET, "reply larger than %zu bytes", c->max_response);
        const char *detail = j->errbuf[0] ? j->errbuf : curl_easy_strerror(res);
        if (res == CURLE_OPERATION_TIMEDOUT) {
            *retry = true;
            return ia_error_set(why, IA_ERR_TIMEOUT, "no complete reply within %.3g s (%s)", j->attempt_timeout,
                                detail);
        }
        *retry = !curl_permanent(res);
        return ia_error_set(why, IA_ERR_NET, "%s (curl error %d)", detail, (int)res);
    }
    if (status >= 200 && status < 300) {
        /* parse what the caller will see: the key scrubbed first, so not even the content of a
         * reply can carry it into the run store */
        char *clean = redact_dup(c, j->body.data ? j->body.data : "", j->body.len);
        if (!clean) return ia_error_set(why, IA_ERR_NOMEM, "out of memory reading the reply");
        ia_free(j->resp->raw_body);
        j->resp->raw_body = clean;
        bool again = false;
        int rc = ia_client_parse_reply(clean, strlen(clean), j->resp, &again, why);
        *retry = again && rc == IA_ERR_FORMAT;
        return rc;
    }
    char summary[320];
    bool quota = false;
    ia_client_error_summary(j->body.data, j->body.len, summary, sizeof summary, &quota);
    redact_msg(c, summary, sizeof summary);
    const char *phrase = status_phrase(status);
    ia_error_set(why, IA_ERR_NET, "HTTP %ld%s%s: %s%s", status, *phrase ? " " : "", phrase, summary,
                 status_hint(status));
    if (status == 429) *retry = !quota;
    else if (status == 408 || status == 409) *retry = true;
    else if (status >= 500) *retry = status != 501 && status != 505;
    if (j->should_retry >= 0 && !(status == 429 && quota)) *retry = j->should_retry == 1;
    if (status >= 300 && status < 400) ia_error_prefix(why, "redirect not followed");
    return IA_ERR_NET;
}

static void attempt_end(cl_job *j, CURLcode res) {
    ia_client *c = j->c;
    long status = 0;
    curl_easy_getinfo(j->easy, CURLINFO_RESPONSE_CODE, &status);
    j->resp->http_status = status;
    pthread_mutex_lock(&c->lock);
    c->totals.http_attempts++;
    pthread_mutex_unlock(&c->lock);

    ia_error why = {0};
    bool retry = false;
    int rc = attempt_classify(j, res, status, &why, &retry);
    int attempts = j->resp->attempts;
    if (rc == IA_OK) {
        if (j->cacheable && c->cache && c->cache->put)
            c->cache->put(c->cache->ud, j->resp->cache_key, j->resp->request_json, j->resp->raw_body);
        job_finish(j, true);
        return;
    }
    if (!retry) {
        job_fail(j, rc, "%s: %s (not retried)", j->endpoint, why.msg);
        return;
    }
    if (attempts >= 1 + c->max_retries) {
        job_fail(j, rc, "%s: gave up after %d attempt(s): %s", j->endpoint, attempts, why.msg);
        return;
    }
    double ra = j->retry_after_ms > 0 ? j->retry_after_ms : j->retry_after;
    bool use_ra = ra > 0 && ra <= c->retry_after_max;
    double delay = use_ra ? ra : backoff_delay(c, attempts - 1);
    double now = ia_time_now();
    if (c->budget > 0 && now + delay >= j->t_first + c->budget) {
        double left = j->t_first + c->budget - now;
        if (use_ra)
            job_fail(j, IA_ERR_TIMEOUT,
                     "%s: the server asked to wait %.3g s (Retry-After) but %.3g s of the %.3g s budget "
                     "are left; %d attempt(s), last: %s", j->endpoint, delay, left > 0 ? left : 0.0, c->budget,
                     attempts, why.msg);
        else
            job_fail(j, IA_ERR_TIMEOUT, "%s: total budget of %.3g s spent after %d attempt(s); last: %s",
                     j->endpoint, c->budget, attempts, why.msg);
        return;
    }
    client_log(c, "%s [%d]: attempt %d failed: %s; retrying in %.3f s (%s)", j->endpoint, j->index, attempts,
               why.msg, delay, use_ra ? "Retry-After" : "back-off");
    j->t_next = now + delay;
    j->state = JOB_WAIT;
}

static void run_batch(ia_client *c, cl_job *jobs, int n, cl_batch *batch) {
    if (batch->done == n) return;
    CURLM *m = curl_multi_init();
    if (!m) {
        for (int i = 0; i < n; i++)
            if (jobs[i].state != JOB_DONE) job_fail(&jobs[i], IA_ERR_NOMEM, "%s: out of memory", jobs[i].endpoint);
        return;
    }
    curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, (long)c->max_concurrency);
    while (batch->done < n) {
        double now = ia_time_now();
        double wake = now + 0.2;
        bool blocked = false;
        int running = 0;
        for (int i = 0; i < n; i++) { /* start due attempts in input order */
            cl_job *j = &jobs[i];
            if (j->state == JOB_RUN) running++;
            if (j->state != JOB_WAIT || blocked) continue;
            if (j->t_next > now) {
                if (j->t_next < wake) wake = j->t_next;
                continue;
            }
            if (!slot_take(c)) {
                blocked = true;
                continue;
            }
            if (attempt_start(m, j, now) != IA_OK) {
                slot_give(c);
                continue;
            }
            running++;
        }
        if (batch->done == n) break;
        int still = 0;
        curl_multi_perform(m, &still);
        bool finished = false;
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(m, &left)) != NULL) {
            if (msg->msg != CURLMSG_DONE) continue;
            CURL *e = msg->easy_handle;
            CURLcode res = msg->data.result; /* msg is invalid once the handle is removed */
            char *priv = NULL;
            curl_easy_getinfo(e, CURLINFO_PRIVATE, &priv);
            cl_job *j = (cl_job *)priv;
            curl_multi_remove_handle(m, e);
            attempt_end(j, res);
            curl_easy_cleanup(e);
            j->easy = NULL;
            slot_give(c);
            finished = true;
        }
        if (finished) continue; /* start the next ones before sleeping */
        now = ia_time_now();
        double ms = ceil((wake - now) * 1000.0);
        if (ms < 0) ms = 0;
        /* slots held by other threads free up without waking this poll: look again soon */
        if (blocked && ms > (running ? 50 : 10)) ms = running ? 50 : 10;
        curl_multi_poll(m, NULL, 0, (int)ms, NULL);
    }
    curl_multi_cleanup(m);
}

/* Prepares a job from a built body: canonical text, cache key, cache lookup. */
static void job_prepare(cl_job *j, json_t *body, bool deterministic, bool no_cache) {
    ia_client *c = j->c;
    char *text = json_canonical(body);
    json_decref(body);
    if (!text) {
        job_fail(j, IA_ERR_NOMEM, "%s: out of memory serialising the request", j->endpoint);
        return;
    }
    j->resp->request_json = text;
    ia_client_request_key(j->endpoint, text, j->resp->cache_key);
    j->cacheable = deterministic && !no_cache && c->cache != NULL;
    if (!j->cacheable || !c->cache->get) return;
    char *hit = c->cache->get(c->cache->ud, j->resp->cache_key);
    if (!hit) return;
    bool again;
    ia_error ignored;
    if (ia_client_parse_reply(hit, strlen(hit), j->resp, &again, &ignored) == IA_OK) {
        j->resp->cache_hit = true;
        j->resp->raw_body = hit;
        job_finish(j, true);
        return;
    }
    ia_free(hit); /* unreadable entry: fetch again and overwrite it */
}

typedef enum req_kind { REQ_CHAT, REQ_COMPLETION } req_kind;

static int run_many(ia_client *c, req_kind kind, const void *reqs, int n, ia_client_resp *resps,
                    ia_error *errs) {
    if (n <= 0) return n == 0 ? IA_OK : IA_ERR_ARG;
    if (!c || !reqs || !resps) {
        if (errs)
            for (int i = 0; i < n; i++) ia_error_set(&errs[i], IA_ERR_ARG, "teacher client: NULL argument");
        return IA_ERR_ARG;
    }
    for (int i = 0; i < n; i++) {
        memset(&resps[i], 0, sizeof resps[i]);
        if (errs) ia_error_clear(&errs[i]);
    }
    cl_job *jobs = ia_calloc((size_t)n, sizeof *jobs);
    if (!jobs) {
        if (errs)
            for (int i = 0; i < n; i++) ia_error_set(&errs[i], IA_ERR_NOMEM, "teacher client: out of memory");
        return IA_ERR_NOMEM;
    }
    cl_batch batch = {n, 0};
    for (int i = 0; i < n; i++) {
        cl_job *j = &jobs[i];
        j->c = c;
        j->batch = &batch;
        j->index = i;
        j->resp = &resps[i];
        j->err = errs ? &errs[i] : &j->own;
        j->state = JOB_WAIT;
        j->retry_after = j->retry_after_ms = -1;
        j->should_retry = -1;
        json_t *body = NULL;
        ia_error berr = {0};
        bool det, no_cache;
        int rc;
        if (kind == REQ_CHAT) {
            const ia_client_chat_req *r = (const ia_client_chat_req *)reqs + i;
            j->endpoint = EP_CHAT;
            j->url = c->url_chat;
            rc = chat_body(c, r, &body, &berr);
            det = r->temperature == 0 || r->has_seed;
            no_cache = r->no_cache;
        } else {
            const ia_client_completion_req *r = (const ia_client_completion_req *)reqs + i;
            j->endpoint = EP_COMPLETIONS;
            j->url = c->url_completions;
            rc = completion_body(c, r, &body, &berr);
            det = r->temperature == 0 || r->has_seed;
            no_cache = r->no_cache;
        }
        if (rc != IA_OK) {
            job_fail(j, rc, "%s: %s", j->endpoint, berr.msg);
            continue;
        }
        job_prepare(j, body, det, no_cache);
    }
    run_batch(c, jobs, n, &batch);
    int first = IA_OK;
    for (int i = 0; i < n; i++) {
        if (first == IA_OK && jobs[i].err->code != IA_OK) first = jobs[i].err->code;
        ia_buf_free(&jobs[i].body);
    }
    ia_free(jobs);
    return first;
}

int ia_client_chat_many(ia_client *c, const ia_client_chat_req *reqs, int n, ia_client_resp *resps,
                        ia_error *errs) {
    return run_many(c, REQ_CHAT, reqs, n, resps, errs);
}

int ia_client_chat(ia_client *c, const ia_client_chat_req *req, ia_client_resp *resp, ia_error *err) {
    if (!c || !req || !resp) return ia_error_set(err, IA_ERR_ARG, "teacher client: NULL argument");
    ia_error e = {0};
    int rc = run_many(c, REQ_CHAT, req, 1, resp, &e);
    if (rc != IA_OK && err) *err = e;
    else if (err) ia_error_clear(err);
    return rc;
}

int ia_client_complete_many(ia_client *c, const ia_client_completion_req *reqs, int n,
                            ia_client_resp *resps, ia_error *errs) {
    return run_many(c, REQ_COMPLETION, reqs, n, resps, errs);
}

int ia_client_complete(ia_client *c, const ia_client_completion_req *req, ia_client_resp *resp,
                       ia_error *err) {
    if (!c || !req || !resp) return ia_error_set(err, IA_ERR_ARG, "teacher client: NULL argument");
    ia_error e = {0};
    int rc = run_many(c, REQ_COMPLETION, req, 1, resp, &e);
    if (rc != IA_OK && err) *err = e;
    else if (err) ia_error_clear(err);
    return rc;
}
