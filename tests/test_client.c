/* test_client.c — the teacher client against a fault-injecting OpenAI-compatible server (libmicrohttpd
 * on 127.0.0.1, an ephemeral port): retries, waits, give-ups, concurrency, cache, usage, secrets,
 * plus the pure helpers (SHA-256, JSON extraction, Retry-After, error summaries). */
#include "test_util.h"

#include "net/client.h"
#include "net/client_internal.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <time.h>

/* The key the secret tests use: long and unlike anything else in a reply. */
#define TEST_KEY_ENV "IA_TEST_TEACHER_KEY"
#define TEST_KEY "sk-test-Zq8vW3xK9pL2mN7rT5yU1"

/* ==== the fault-injecting server =============================================================
 * Each request's behaviour comes from a directive at the start of its last message (or prompt),
 * "fault:<name>", so concurrent mixed batches stay deterministic; without one, from the script
 * (step k for the k-th request, the last step repeating). The server uses plain malloc, never
 * ia_malloc, so allocation fault injection only ever hits the client. */

typedef enum fault {
    FX_OK,          /* 200, a chat completion echoing the last message ("echo:<text>") */
    FX_SLOW,        /* the same after S.delay_ms */
    FX_429,         /* 429 with Retry-After: S.retry_after */
    FX_QUOTA,       /* 429 insufficient_quota (not transient) */
    FX_500,
    FX_503,
    FX_NORETRY,     /* 500 with x-should-retry: false */
    FX_GARBAGE,     /* 200 with an HTML page */
    FX_TRUNC,       /* 200, Content-Length 400, 30 bytes sent, then the connection closes */
    FX_STALL,       /* nothing for S.stall_ms, then the connection closes */
    FX_CLOSE,       /* the connection closes without a reply */
    FX_401,         /* OpenAI error JSON that echoes the Authorization header it got */
    FX_404,         /* unknown model */
    FX_FENCE,       /* the content wraps a JSON object in prose and a ```json fence */
    FX_NOUSAGE,     /* no usage object */
    FX_EMPTY,       /* choices: [] */
    FX_HUGE,        /* a 200 KB reply */
    FX_ECHO_AUTH,   /* 200 whose content and an extra field carry the Authorization header */
    FX_LP,          /* legacy completions reply with logprobs */
    FX_LPCHAT,      /* completions reply with the chat-shaped logprobs llama-server sends */
    FX_COUNT
} fault;

static const char *const fault_names[FX_COUNT] = {
    "ok", "slow", "429", "quota", "500", "503", "noretry", "garbage", "trunc", "stall", "close",
    "401", "404", "fence", "nousage", "empty", "huge", "echo_auth", "lp", "lpchat",
};

static struct server {
    struct MHD_Daemon *d;
    int port;
    pthread_mutex_t lock;
    fault script[32];
    int n_script;
    int requests;          /* complete requests received */
    int inflight, max_inflight;
    int delay_ms, stall_ms;
    char retry_after[64];
    char last_body[16384];
    char last_auth[256];
    char last_url[128];
    atomic_int active;     /* handlers between receiving and answering */
    atomic_int generation; /* bumped by a reset: stalls from an earlier test end at once */
} S = {.lock = PTHREAD_MUTEX_INITIALIZER};

typedef struct conn_ctx {
    char *body;
    size_t len;
} conn_ctx;

/* Sleeps ms in small steps; returns false if a reset cut the sleep short. */
static bool srv_sleep(int ms, int gen) {
    double end = ia_time_now() + ms / 1000.0;
    while (ia_time_now() < end) {
        if (atomic_load(&S.generation) != gen) return false;
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return true;
}

static char *dump_free(json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return s;
}

static char *chat_reply(const char *model, const char *content, int n, bool usage) {
    json_t *choices = json_array();
    for (int i = 0; i < (n > 0 ? n : 1); i++) {
        char text[4096];
        if (n > 1) snprintf(text, sizeof text, "%s#%d", content, i);
        else snprintf(text, sizeof text, "%s", content);
        json_array_append_new(choices, json_pack("{s:i, s:{s:s, s:s}, s:s}", "index", i, "message", "role",
                                                 "assistant", "content", text, "finish_reason", "stop"));
    }
    json_t *r = json_pack("{s:s, s:s, s:i, s:s, s:o}", "id", "chatcmpl-1", "object", "chat.completion",
                          "created", 1, "model", model ? model : "teacher", "choices", choices);
    if (usage)
        json_object_set_new(r, "usage", json_pack("{s:i, s:i, s:i}", "prompt_tokens", 10, "completion_tokens", 5,
                                                  "total_tokens", 15));
    return dump_free(r);
}

typedef struct trunc_state {
    int calls;
} trunc_state;

static ssize_t trunc_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    trunc_state *t = cls;
    (void)pos;
    if (t->calls++ > 0) return MHD_CONTENT_READER_END_WITH_ERROR;
    const char *part = "{\"id\":\"x\",\"choices\":[{\"mes";
    size_t n = strlen(part) < max ? strlen(part) : max;
    memcpy(buf, part, n);
    return (ssize_t)n;
}

static enum MHD_Result queue_text(struct MHD_Connection *conn, unsigned status, char *text, const char *ctype,
                                  const char *hname, const char *hvalue) {
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(r, "Content-Type", ctype);
    if (hname) MHD_add_response_header(r, hname, hvalue);
    enum MHD_Result rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

static char *error_json(const char *message, const char *type, const char *code) {
    return dump_free(json_pack("{s:{s:s, s:s, s:n, s:s}}", "error", "message", message, "type", type, "param",
                               "code", code));
}

static enum MHD_Result srv_handler(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                   const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    (void)cls;
    (void)version;
    conn_ctx *cx = *con_cls;
    if (!cx) {
        *con_cls = calloc(1, sizeof(conn_ctx));
        return *con_cls ? MHD_YES : MHD_NO;
    }
    if (*upload_size) {
        char *nb = realloc(cx->body, cx->len + *upload_size + 1);
        if (!nb) return MHD_NO;
        memcpy(nb + cx->len, upload, *upload_size);
        cx->body = nb;
        cx->len += *upload_size;
        cx->body[cx->len] = 0;
        *upload_size = 0;
        return MHD_YES;
    }
    if (strcmp(method, "POST") != 0) return queue_text(conn, 405, strdup("{}"), "application/json", NULL, NULL);

    /* what was asked */
    json_t *req = cx->body ? json_loads(cx->body, 0, NULL) : NULL;
    const char *model = json_string_value(json_object_get(req, "model"));
    int n = (int)json_integer_value(json_object_get(req, "n"));
    const char *content = "";
    json_t *msgs = json_object_get(req, "messages");
    if (json_array_size(msgs) > 0)
        content = json_string_value(json_object_get(json_array_get(msgs, json_array_size(msgs) - 1), "content"));
    else if (json_is_string(json_object_get(req, "prompt")))
        content = json_string_value(json_object_get(req, "prompt"));
    if (!content) content = "";
    const char *auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");

    pthread_mutex_lock(&S.lock);
    int idx = S.requests++;
    fault f = S.n_script ? S.script[idx < S.n_script ? idx : S.n_script - 1] : FX_OK;
    if (strncmp(content, "fault:", 6) == 0)
        for (int k = 0; k < FX_COUNT; k++) {
            size_t l = strlen(fault_names[k]);
            if (strncmp(content + 6, fault_names[k], l) == 0 && (content[6 + l] == 0 || content[6 + l] == ' '))
                f = (fault)k;
        }
    snprintf(S.last_body, sizeof S.last_body, "%s", cx->body ? cx->body : "");
    snprintf(S.last_auth, sizeof S.last_auth, "%s", auth ? auth : "");
    snprintf(S.last_url, sizeof S.last_url, "%s", url);
    if (++S.inflight > S.max_inflight) S.max_inflight = S.inflight;
    int delay = S.delay_ms, stall = S.stall_ms;
    char ra[64];
    snprintf(ra, sizeof ra, "%s", S.retry_after);
    int gen = atomic_load(&S.generation);
    pthread_mutex_unlock(&S.lock);
    atomic_fetch_add(&S.active, 1);

    if (f == FX_SLOW) srv_sleep(delay, gen);
    char echo[4200];
    snprintf(echo, sizeof echo, "echo:%s", content);
    enum MHD_Result rc = MHD_YES;
    switch (f) {
    case FX_OK:
    case FX_SLOW: rc = queue_text(conn, 200, chat_reply(model, echo, n, true), "application/json", NULL, NULL); break;
    case FX_429:
        rc = queue_text(conn, 429, error_json("Rate limit reached, slow down", "requests", "rate_limit_exceeded"),
                        "application/json", "Retry-After", ra);
        break;
    case FX_QUOTA:
        rc = queue_text(conn, 429, error_json("You exceeded your current quota", "insufficient_quota",
                                              "insufficient_quota"), "application/json", NULL, NULL);
        break;
    case FX_500:
        rc = queue_text(conn, 500, error_json("The server had an error", "server_error", "500"), "application/json",
                        NULL, NULL);
        break;
    case FX_503:
        rc = queue_text(conn, 503, error_json("Loading model", "unavailable_error", "503"), "application/json",
                        NULL, NULL);
        break;
    case FX_NORETRY:
        rc = queue_text(conn, 500, error_json("Do not retry this", "server_error", "500"), "application/json",
                        "x-should-retry", "false");
        break;
    case FX_GARBAGE:
        rc = queue_text(conn, 200, strdup("<html><body><h1>502 Bad Gateway</h1>nginx</body></html>"), "text/html",
                        NULL, NULL);
        break;
    case FX_TRUNC: {
        static trunc_state states[256]; /* one per request; bounded by the tests' request counts */
        trunc_state *t = &states[idx % 256];
        t->calls = 0;
        struct MHD_Response *r = MHD_create_response_from_callback(400, 64, trunc_reader, t, NULL);
        MHD_add_response_header(r, "Content-Type", "application/json");
        rc = MHD_queue_response(conn, 200, r);
        MHD_destroy_response(r);
        break;
    }
    case FX_STALL:
        srv_sleep(stall, gen);
        rc = MHD_NO;
        break;
    case FX_CLOSE: rc = MHD_NO; break;
    case FX_401: {
        char msg[512];
        snprintf(msg, sizeof msg, "Incorrect API key provided: %s. You can find your API key at example.org",
                 auth && strncmp(auth, "Bearer ", 7) == 0 ? auth + 7 : "(none)");
        rc = queue_text(conn, 401, error_json(msg, "invalid_request_error", "invalid_api_key"), "application/json",
                        NULL, NULL);
        break;
    }
    case FX_404: {
        char msg[256];
        snprintf(msg, sizeof msg, "The model `%s` does not exist", model ? model : "?");
        rc = queue_text(conn, 404, error_json(msg, "not_found_error", "model_not_found"), "application/json", NULL,
                        NULL);
        break;
    }
    case FX_FENCE:
        rc = queue_text(conn, 200,
                        chat_reply(model, "Sure! Here is my verdict:\n```json\n{\"verdict\": \"negative\", "
                                          "\"score\": 2}\n```\nLet me know if you need more.", 1, true),
                        "application/json", NULL, NULL);
        break;
    case FX_NOUSAGE: rc = queue_text(conn, 200, chat_reply(model, echo, 1, false), "application/json", NULL, NULL); break;
    case FX_EMPTY:
        rc = queue_text(conn, 200, strdup("{\"id\":\"x\",\"object\":\"chat.completion\",\"choices\":[],"
                                          "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":0,\"total_tokens\":3}}"),
                        "application/json", NULL, NULL);
        break;
    case FX_HUGE: {
        size_t sz = 200 * 1024;
        char *big = malloc(sz + 1);
        memset(big, ' ', sz);
        memcpy(big, "{\"choices\":[]}", 14);
        big[sz] = 0;
        rc = queue_text(conn, 200, big, "application/json", NULL, NULL);
        break;
    }
    case FX_ECHO_AUTH: {
        char text[512];
        snprintf(text, sizeof text, "your header was %s", auth ? auth : "(none)");
        json_t *r = json_pack("{s:s, s:[{s:i, s:{s:s, s:s}, s:s}], s:s}", "id", "x", "choices", "index", 0,
                              "message", "role", "assistant", "content", text, "finish_reason", "stop", "debug",
                              auth ? auth : "");
        rc = queue_text(conn, 200, dump_free(r), "application/json", NULL, NULL);
        break;
    }
    case FX_LP:
        rc = queue_text(conn, 200,
                        strdup("{\"object\":\"text_completion\",\"model\":\"teacher\",\"choices\":[{\"index\":0,"
                               "\"text\":\"The cat sat\",\"finish_reason\":\"length\",\"logprobs\":{"
                               "\"tokens\":[\"The\",\" cat\",\" sat\"],\"token_logprobs\":[null,-2.5,-0.25],"
                               "\"top_logprobs\":[null,{\" cat\":-2.5,\" dog\":-1.0},{\" sat\":-0.25}],"
                               "\"text_offset\":[0,3,7]}}],"
                               "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}"),
                        "application/json", NULL, NULL);
        break;
    case FX_LPCHAT:
        rc = queue_text(conn, 200,
                        strdup("{\"choices\":[{\"index\":0,\"text\":\" yes\",\"finish_reason\":\"length\","
                               "\"logprobs\":{\"content\":[{\"token\":\" yes\",\"logprob\":-0.5,\"top_logprobs\":"
                               "[{\"token\":\" yes\",\"logprob\":-0.5},{\"token\":\" no\",\"logprob\":-1.2}]}]}}],"
                               "\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":1}}"),
                        "application/json", NULL, NULL);
        break;
    default: rc = MHD_NO; break;
    }
    pthread_mutex_lock(&S.lock);
    S.inflight--;
    pthread_mutex_unlock(&S.lock);
    atomic_fetch_sub(&S.active, 1);
    json_decref(req);
    return rc;
}

static void srv_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                          enum MHD_RequestTerminationCode toe) {
    (void)cls;
    (void)conn;
    (void)toe;
    conn_ctx *cx = *con_cls;
    if (cx) {
        free(cx->body);
        free(cx);
    }
    *con_cls = NULL;
}

/* Ends stalls of earlier tests, waits for their handlers (bounded), loads a script. */
static void srv_reset(const fault *script, int n) {
    atomic_fetch_add(&S.generation, 1);
    for (int i = 0; i < 300 && atomic_load(&S.active) > 0; i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    pthread_mutex_lock(&S.lock);
    S.n_script = n < 32 ? n : 32;
    for (int i = 0; i < S.n_script; i++) S.script[i] = script[i];
    S.requests = 0;
    S.inflight = S.max_inflight = 0;
    S.delay_ms = 50;
    S.stall_ms = 3000;
    snprintf(S.retry_after, sizeof S.retry_after, "1");
    S.last_body[0] = S.last_auth[0] = S.last_url[0] = 0;
    pthread_mutex_unlock(&S.lock);
}

static int srv_requests(void) {
    pthread_mutex_lock(&S.lock);
    int n = S.requests;
    pthread_mutex_unlock(&S.lock);
    return n;
}

static int group_setup(void **state) {
    (void)state;
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = 0; /* ephemeral */
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    S.d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL,
                           srv_handler, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                           MHD_OPTION_NOTIFY_COMPLETED, srv_completed, NULL, MHD_OPTION_CONNECTION_TIMEOUT,
                           (unsigned)10, MHD_OPTION_END);
    if (!S.d) return -1;
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(S.d, MHD_DAEMON_INFO_BIND_PORT);
    if (!info || info->port == 0) return -1;
    S.port = info->port;
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    srv_reset(NULL, 0); /* ends stalls so stopping does not wait for them */
    if (S.d) MHD_stop_daemon(S.d);
    return 0;
}

/* ==== client helpers ========================================================================== */

static char base_url[64];

static ia_client_opts fast_opts(void) {
    ia_client_opts o = ia_client_opts_default();
    snprintf(base_url, sizeof base_url, "http://127.0.0.1:%d/v1", S.port);
    o.base_url = base_url;
    o.model = "teacher";
    o.max_retries = 3;
    o.backoff_base_s = 0.01;
    o.backoff_max_s = 0.05;
    o.timeout_s = 3;
    o.budget_s = 20;
    o.seed = 42;
    return o;
}

static ia_client *mk(const ia_client_opts *o) {
    ia_error err = {0};
    ia_client *c = ia_client_init(o, &err);
    if (!c) print_error("ia_client_init: %s\n", err.msg);
    assert_non_null(c);
    return c;
}

/* One chat request with a single user message. */
static int chat1(ia_client *c, const char *content, double temperature, ia_client_resp *resp, ia_error *err) {
    ia_chat_msg m = {"user", content};
    ia_client_chat_req r = ia_client_chat_req_default();
    r.messages = &m;
    r.n_messages = 1;
    r.temperature = temperature;
    return ia_client_chat(c, &r, resp, err);
}

#define LOG_MAX 64
static struct {
    pthread_mutex_t lock;
    int n;
    char lines[LOG_MAX][IA_ERROR_MSG_MAX + 128];
} LOG = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void log_cb(void *ud, const char *line) {
    (void)ud;
    pthread_mutex_lock(&LOG.lock);
    if (LOG.n < LOG_MAX) snprintf(LOG.lines[LOG.n++], sizeof LOG.lines[0], "%s", line);
    pthread_mutex_unlock(&LOG.lock);
}

/* ==== pure helpers ============================================================================ */

static void test_sha256(void **state) {
    (void)state;
    char h[65];
    ia_client_sha256_hex("", 0, h);
    assert_string_equal(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    ia_client_sha256_hex("abc", 3, h);
    assert_string_equal(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    ia_client_sha256_hex(m, strlen(m), h);
    assert_string_equal(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    char *million = malloc(1000000);
    memset(million, 'a', 1000000);
    ia_client_sha256_hex(million, 1000000, h);
    free(million);
    assert_string_equal(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    char k1[65], k2[65];
    ia_client_request_key("chat/completions", "{}", k1);
    ia_client_request_key("completions", "{}", k2);
    assert_string_not_equal(k1, k2);
}

static void expect_extract(const char *text, const char *want) {
    char *got = ia_json_extract_object(text);
    if (!want) {
        if (got) print_error("expected nothing from [%s], got [%s]\n", text, got);
        assert_null(got);
        return;
    }
    if (!got) print_error("expected [%s] from [%s], got nothing\n", want, text);
    assert_non_null(got);
    /* compare as JSON values, not text: repairs may change spacing */
    json_t *a = json_loads(got, 0, NULL), *b = json_loads(want, 0, NULL);
    assert_non_null(a);
    assert_non_null(b);
    if (!json_equal(a, b)) print_error("from [%s]: got [%s], want [%s]\n", text, got, want);
    assert_true(json_equal(a, b));
    json_decref(a);
    json_decref(b);
    ia_free(got);
}

static void test_json_extract(void **state) {
    (void)state;
    expect_extract("{\"a\":1}", "{\"a\":1}");
    expect_extract("  {\"a\": [1, 2, {\"b\": null}]}  ", "{\"a\":[1,2,{\"b\":null}]}");
    expect_extract("Sure! Here it is: {\"verdict\": \"negative\"} Hope that helps.", "{\"verdict\":\"negative\"}");
    expect_extract("```json\n{\"score\": 7}\n```", "{\"score\":7}");
    expect_extract("```JSON\n{\"score\": 7}\n```", "{\"score\":7}");
    expect_extract("```\n{\"score\": 7}\n```", "{\"score\":7}");
    expect_extract("```{\"score\": 7}```", "{\"score\":7}");
    expect_extract("Example: {\"score\": 0}\nAnswer:\n```json\n{\"score\": 9}\n```", "{\"score\":9}");
    expect_extract("```python\nprint(1)\n```\nthen {\"x\": true}", "{\"x\":true}");
    expect_extract("text {not json} and {\"ok\": 1}", "{\"ok\":1}");
    expect_extract("{\"s\": \"a } brace and a { brace\", \"n\": 2}", "{\"s\":\"a } brace and a { brace\",\"n\":2}");
    expect_extract("{\"s\": \"quote \\\" and backslash \\\\\"}", "{\"s\":\"quote \\\" and backslash \\\\\"}");
    expect_extract("{\"a\": 1, \"b\": [1, 2,],}", "{\"a\":1,\"b\":[1,2]}");             /* trailing commas */
    expect_extract("{\"reason\": \"line one\nline two\ttab\"}", "{\"reason\":\"line one\\nline two\\ttab\"}");
    expect_extract("{\xE2\x80\x9Cscore\xE2\x80\x9D: 3}", "{\"score\":3}");              /* typographic quotes */
    expect_extract("{\"outer\": {\"inner\": {\"deep\": 1}}} trailing {\"second\": 2}",
                   "{\"outer\":{\"inner\":{\"deep\":1}}}");
    expect_extract("[{\"in\": \"array\"}]", "{\"in\":\"array\"}");
    expect_extract("{\"u\": \"caf\xC3\xA9 \\u00e9\"}", "{\"u\":\"caf\xC3\xA9 \xC3\xA9\"}");
    expect_extract("no json here", NULL);
    expect_extract("", NULL);
    expect_extract("{\"unterminated\": 1", NULL);
    expect_extract("{}", "{}");
    expect_extract("}{", NULL);
    assert_null(ia_json_extract_object(NULL));
}

static void test_json_extract_limits(void **state) {
    (void)state;
    /* an unclosed fence around a cut-off object gives nothing */
    assert_null(ia_json_extract_object("```json\n{\"cut\": \"no end"));
    /* many '{' before the object: still found within the candidate limit */
    char buf[2048] = "";
    for (int i = 0; i < 100; i++) strcat(buf, "{x ");
    strcat(buf, "{\"found\": 1}");
    char *got = ia_json_extract_object(buf);
    assert_non_null(got);
    ia_free(got);
}

static void test_retry_after_parse(void **state) {
    (void)state;
    assert_true(fabs(ia_client_retry_after_parse("1", 0) - 1.0) < 1e-9);
    assert_true(fabs(ia_client_retry_after_parse(" 2.5 ", 0) - 2.5) < 1e-9);
    assert_true(fabs(ia_client_retry_after_parse("0", 0)) < 1e-9);
    /* Wed, 21 Oct 2015 07:28:00 GMT = 1445412480 */
    double d = ia_client_retry_after_parse("Wed, 21 Oct 2015 07:28:00 GMT", 1445412480.0 - 5.0);
    assert_true(fabs(d - 5.0) < 1e-6);
    assert_true(ia_client_retry_after_parse("Wed, 21 Oct 2015 07:28:00 GMT", 1445412480.0 + 100) == 0);
    assert_true(ia_client_retry_after_parse("soon", 0) < 0);
    assert_true(ia_client_retry_after_parse("-3", 0) < 0);
    assert_true(ia_client_retry_after_parse("5s", 0) < 0);
    assert_true(ia_client_retry_after_parse("", 0) < 0);
    assert_true(ia_client_retry_after_parse(NULL, 0) < 0);
}

static void test_error_summary(void **state) {
    (void)state;
    char out[320];
    bool quota;
    const char *nested = "{\"error\":{\"message\":\"Invalid model\",\"type\":\"invalid_request_error\",\"code\":null}}";
    ia_client_error_summary(nested, strlen(nested), out, sizeof out, &quota);
    assert_string_equal(out, "invalid_request_error: Invalid model");
    assert_false(quota);
    const char *flat = "{\"object\":\"error\",\"message\":\"bad\",\"type\":\"BadRequestError\",\"code\":400}";
    ia_client_error_summary(flat, strlen(flat), out, sizeof out, &quota);
    assert_string_equal(out, "BadRequestError: bad");
    const char *q = "{\"error\":{\"message\":\"quota\",\"type\":\"insufficient_quota\",\"code\":\"insufficient_quota\"}}";
    ia_client_error_summary(q, strlen(q), out, sizeof out, &quota);
    assert_true(quota);
    const char *str = "{\"error\":\"model not found\"}";
    ia_client_error_summary(str, strlen(str), out, sizeof out, &quota);
    assert_string_equal(out, "model not found");
    const char *detail = "{\"detail\":[{\"loc\":[\"body\",\"messages\"],\"msg\":\"field required\"}]}";
    ia_client_error_summary(detail, strlen(detail), out, sizeof out, &quota);
    assert_non_null(strstr(out, "field required"));
    const char *dstr = "{\"detail\":\"Not Found\"}";
    ia_client_error_summary(dstr, strlen(dstr), out, sizeof out, &quota);
    assert_string_equal(out, "Not Found");
    const char *html = "<html>\r\n<h1>Bad\tGateway</h1></html>";
    ia_client_error_summary(html, strlen(html), out, sizeof out, &quota);
    assert_null(strchr(out, '\n'));
    assert_non_null(strstr(out, "Bad Gateway"));
    ia_client_error_summary(NULL, 0, out, sizeof out, NULL);
    assert_string_equal(out, "(empty body)");
    char big[1000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    ia_client_error_summary(big, strlen(big), out, 50, NULL);
    assert_int_equal(strlen(out), 49);
}

static void test_parse_reply_shapes(void **state) {
    (void)state;
    ia_client_resp r;
    ia_error err;
    bool again;
    struct { const char *body; int rc; bool retry; } cases[] = {
        {"{\"choices\":[{\"message\":{\"content\":null},\"finish_reason\":\"stop\"}]}", IA_OK, false},
        {"{\"choices\":[{}]}", IA_OK, false},
        {"{\"choices\":[{\"message\":{\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]}}]}",
         IA_OK, false},
        {"\xEF\xBB\xBF{\"choices\":[{\"text\":\"bom\"}]}", IA_OK, false},
        {"{\"choices\":[]}", IA_ERR_FORMAT, false},
        {"{\"id\":\"x\"}", IA_ERR_FORMAT, false},
        {"{\"error\":{\"message\":\"oops\"}}", IA_ERR_FORMAT, false},
        {"[1,2]", IA_ERR_FORMAT, true},
        {"", IA_ERR_FORMAT, true},
        {"{\"choices\":[{\"message\":{\"content\":\"x\"}}]", IA_ERR_FORMAT, true},
        {"{\"choices\":[{\"message\":{\"content\":\"x\"}}],\"usage\":{\"prompt_tokens\":\"seven\"}}", IA_OK, false},
        {"{\"choices\":[{\"message\":{\"content\":\"x\"},\"logprobs\":{\"content\":\"bad\"}}]}", IA_OK, false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        memset(&r, 0, sizeof r);
        int rc = ia_client_parse_reply(cases[i].body, strlen(cases[i].body), &r, &again, &err);
        if (rc != cases[i].rc) print_error("case %zu: rc %d (%s)\n", i, rc, err.msg);
        assert_int_equal(rc, cases[i].rc);
        if (rc == IA_OK) {
            assert_true(r.n_choices >= 1);
            assert_non_null(r.choices[0].content);
        } else {
            assert_int_equal(again, cases[i].retry);
            assert_non_null(strstr(err.msg, "unusable reply"));
            assert_null(r.choices);
        }
        ia_client_resp_clear(&r);
    }
    memset(&r, 0, sizeof r);
    const char *parts = cases[2].body;
    assert_int_equal(ia_client_parse_reply(parts, strlen(parts), &r, &again, &err), IA_OK);
    assert_string_equal(r.choices[0].content, "ab");
    assert_true(r.usage_missing);
    ia_client_resp_clear(&r);
    const char *partial = "{\"choices\":[{\"text\":\"t\"}],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}";
    assert_int_equal(ia_client_parse_reply(partial, strlen(partial), &r, &again, &err), IA_OK);
    assert_false(r.usage_missing);
    assert_int_equal(r.usage.total_tokens, 6);
    ia_client_resp_clear(&r);
}

/* ==== init and request building =============================================================== */

static void test_init_errors(void **state) {
    (void)state;
    ia_error err = {0};
    ia_client_opts o = fast_opts();
    o.base_url = NULL;
    assert_null(ia_client_init(&o, &err));
    assert_int_equal(err.code, IA_ERR_ARG);
    o.base_url = "ftp://127.0.0.1/v1";
    assert_null(ia_client_init(&o, &err));
    assert_int_equal(err.code, IA_ERR_ARG);

    o = fast_opts();
    unsetenv("IA_TEST_NO_SUCH_KEY");
    o.api_key_env = "IA_TEST_NO_SUCH_KEY";
    assert_null(ia_client_init(&o, &err));
    assert_int_equal(err.code, IA_ERR_ARG);
    assert_non_null(strstr(err.msg, "IA_TEST_NO_SUCH_KEY"));
    o.api_key_optional = true;
    ia_client *c = mk(&o);
    assert_false(ia_client_has_key(c));
    ia_client_free(c);

    setenv("IA_TEST_BAD_KEY", "sk-abc\r\nX-Injected: 1", 1);
    o.api_key_env = "IA_TEST_BAD_KEY";
    o.api_key_optional = false;
    assert_null(ia_client_init(&o, &err));
    assert_int_equal(err.code, IA_ERR_ARG);
    assert_null(strstr(err.msg, "sk-abc"));
    assert_null(strstr(err.msg, "Injected"));
    unsetenv("IA_TEST_BAD_KEY");

    /* a key file read with $(cat) leaves a newline: trimmed, and the header is exact */
    setenv("IA_TEST_NL_KEY", "  sk-trimmed-123\n", 1);
    o.api_key_env = "IA_TEST_NL_KEY";
    c = mk(&o);
    assert_true(ia_client_has_key(c));
    srv_reset(NULL, 0);
    ia_client_resp r;
    assert_int_equal(chat1(c, "hi", 0, &r, &err), IA_OK);
    assert_string_equal(S.last_auth, "Bearer sk-trimmed-123");
    ia_client_resp_clear(&r);
    ia_client_free(c);
    unsetenv("IA_TEST_NL_KEY");
    ia_client_free(NULL);
}

static void test_request_json(void **state) {
    (void)state;
    srv_reset(NULL, 0);
    ia_client_opts o = fast_opts();
    ia_client *c = mk(&o);
    ia_chat_msg msgs[2] = {{"system", "be brief"}, {"user", "hello \xC3\xA9 \xFF bad byte"}};
    const char *stops[2] = {"\n\n", "User:"};
    ia_client_chat_req r = ia_client_chat_req_default();
    r.model = "judge-1";
    r.messages = msgs;
    r.n_messages = 2;
    r.temperature = 0.7;
    r.top_p = 0.9;
    r.max_tokens = 64;
    r.has_seed = true;
    r.seed = 1234;
    r.stop = stops;
    r.n_stop = 2;
    r.n = 3;
    r.format = IA_CLIENT_FORMAT_JSON_SCHEMA;
    r.json_schema = "{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"string\"}}}";
    r.json_schema_name = "verdict";
    r.json_schema_strict = true;
    r.extra_json = "{\"top_k\": 40, \"temperature\": 1.5, \"stream\": true}";
    ia_client_resp resp;
    ia_error err = {0};
    assert_int_equal(ia_client_chat(c, &r, &resp, &err), IA_OK);
    assert_string_equal(S.last_url, "/v1/chat/completions");
    assert_string_equal(S.last_body, resp.request_json); /* what is logged is what was sent */
    json_t *b = json_loads(S.last_body, 0, NULL);
    assert_non_null(b);
    assert_string_equal(json_string_value(json_object_get(b, "model")), "judge-1");
    assert_int_equal(json_array_size(json_object_get(b, "messages")), 2);
    const char *sent = json_string_value(json_object_get(json_array_get(json_object_get(b, "messages"), 1), "content"));
    assert_string_equal(sent, "hello \xC3\xA9 \xEF\xBF\xBD bad byte"); /* invalid byte became U+FFFD */
    assert_true(fabs(json_real_value(json_object_get(b, "temperature")) - 0.7) < 1e-9); /* explicit wins */
    assert_true(fabs(json_real_value(json_object_get(b, "top_p")) - 0.9) < 1e-9);
    assert_int_equal(json_integer_value(json_object_get(b, "max_tokens")), 64);
    assert_int_equal(json_integer_value(json_object_get(b, "seed")), 1234);
    assert_int_equal(json_integer_value(json_object_get(b, "n")), 3);
    assert_int_equal(json_integer_value(json_object_get(b, "top_k")), 40);
    assert_null(json_object_get(b, "stream"));
    assert_string_equal(json_string_value(json_array_get(json_object_get(b, "stop"), 1)), "User:");
    json_t *rf = json_object_get(b, "response_format");
    assert_string_equal(json_string_value(json_object_get(rf, "type")), "json_schema");
    assert_string_equal(json_string_value(json_object_get(json_object_get(rf, "json_schema"), "name")), "verdict");
    assert_true(json_is_true(json_object_get(json_object_get(rf, "json_schema"), "strict")));
    assert_string_equal(json_string_value(json_object_get(json_object_get(json_object_get(rf, "json_schema"), "schema"),
                                                          "type")), "object");
    assert_non_null(strstr(resp.request_json, "\"temperature\":0.7,")); /* no 0.69999999999999996 */
    json_decref(b);
    /* n = 3 choices come back in order */
    assert_int_equal(resp.n_choices, 3);
    assert_string_equal(resp.choices[2].content, "echo:hello \xC3\xA9 \xEF\xBF\xBD bad byte#2");
    assert_string_equal(resp.model, "judge-1");
    ia_client_resp_clear(&resp);

    /* json_object, defaults omitted, max_completion_tokens for OpenAI proper */
    ia_client_free(c);
    o.use_max_completion_tokens = true;
    c = mk(&o);
    r = ia_client_chat_req_default();
    r.messages = msgs;
    r.n_messages = 1;
    r.max_tokens = 5;
    r.format = IA_CLIENT_FORMAT_JSON_OBJECT;
    assert_int_equal(ia_client_chat(c, &r, &resp, &err), IA_OK);
    b = json_loads(S.last_body, 0, NULL);
    assert_int_equal(json_integer_value(json_object_get(b, "max_completion_tokens")), 5);
    assert_null(json_object_get(b, "max_tokens"));
    assert_null(json_object_get(b, "temperature"));
    assert_null(json_object_get(b, "top_p"));
    assert_null(json_object_get(b, "seed"));
    assert_null(json_object_get(b, "n"));
    assert_null(json_object_get(b, "stop"));
    assert_string_equal(json_string_value(json_object_get(json_object_get(b, "response_format"), "type")), "json_object");
    json_decref(b);
    ia_client_resp_clear(&resp);

    /* requests that cannot be sent fail before any HTTP request */
    int before = srv_requests();
    r.format = IA_CLIENT_FORMAT_JSON_SCHEMA;
    r.json_schema = "{not json";
    assert_int_equal(ia_client_chat(c, &r, &resp, &err), IA_ERR_ARG);
    assert_non_null(strstr(err.msg, "json_schema"));
    ia_client_resp_clear(&resp);
    r.format = IA_CLIENT_FORMAT_NONE;
    r.extra_json = "[1]";
    assert_int_equal(ia_client_chat(c, &r, &resp, &err), IA_ERR_ARG);
    ia_client_resp_clear(&resp);
    r.extra_json = NULL;
    ia_chat_msg bad = {"user", NULL};
    r.messages = &bad;
    assert_int_equal(ia_client_chat(c, &r, &resp, &err), IA_ERR_ARG);
    ia_client_resp_clear(&resp);
    r.messages = msgs;
    r.n_messages = 0;
    assert_int_equal(ia_client_chat(c, &r, &resp, &err), IA_ERR_ARG);
    ia_client_resp_clear(&resp);
    r.n_messages = 1;
    r.temperature = NAN;
    assert_int_equal(ia_client_chat(c, &r, &resp, &err), IA_ERR_ARG);
    ia_client_resp_clear(&resp);
    r.temperature = 0;
    r.n_stop = 1;
    r.stop = NULL;
    assert_int_equal(ia_client_chat(c, &r, &resp, &err), IA_ERR_ARG);
    ia_client_resp_clear(&resp);
    ia_client_free(c);
    o.model = NULL;
    c = mk(&o);
    r = ia_client_chat_req_default();
    r.messages = msgs;
    r.n_messages = 1;
    assert_int_equal(ia_client_chat(c, &r, &resp, &err), IA_ERR_ARG);
    assert_non_null(strstr(err.msg, "model"));
    ia_client_resp_clear(&resp);
    assert_int_equal(srv_requests(), before);
    assert_int_equal(ia_client_chat(NULL, &r, &resp, &err), IA_ERR_ARG);
    assert_int_equal(ia_client_chat_many(c, &r, 0, &resp, NULL), IA_OK);
    ia_client_free(c);
}

/* ==== replies, retries, waits and give-ups ==================================================== */

static void test_ok_and_usage(void **state) {
    (void)state;
    srv_reset(NULL, 0);
    ia_client_opts o = fast_opts();
    ia_client *c = mk(&o);
    ia_client_resp r;
    ia_error err = {0};
    assert_int_equal(chat1(c, "hi", -1, &r, &err), IA_OK);
    assert_int_equal(err.code, IA_OK);
    assert_int_equal(r.n_choices, 1);
    assert_string_equal(r.choices[0].content, "echo:hi");
    assert_string_equal(r.choices[0].finish_reason, "stop");
    assert_int_equal(r.usage.prompt_tokens, 10);
    assert_int_equal(r.usage.completion_tokens, 5);
    assert_int_equal(r.usage.total_tokens, 15);
    assert_false(r.usage_missing);
    assert_int_equal(r.http_status, 200);
    assert_int_equal(r.attempts, 1);
    assert_false(r.cache_hit);
    assert_non_null(r.raw_body);
    assert_non_null(strstr(r.raw_body, "chat.completion"));
    assert_int_equal(strlen(r.cache_key), 64);
    assert_true(r.latency_s > 0 && r.latency_s < 3);
    assert_string_equal(S.last_auth, ""); /* no key configured: no Authorization header */
    ia_client_resp_clear(&r);
    ia_client_free(c);
}

static void test_429_retry_after(void **state) {
    (void)state;
    const fault script[] = {FX_429, FX_OK};
    srv_reset(script, 2);
    ia_client_opts o = fast_opts();
    o.log = log_cb;
    LOG.n = 0;
    ia_client *c = mk(&o);
    ia_client_resp r;
    ia_error err = {0};
    double t0 = ia_time_now();
    assert_int_equal(chat1(c, "hi", -1, &r, &err), IA_OK);
    double el = ia_time_now() - t0;
    /* back-off alone would wait < 0.05 s: >= 1 s proves Retry-After was honoured */
    assert_true(el >= 1.0);
    assert_true(el < 2.5);
    assert_int_equal(r.attempts, 2);
    assert_int_equal(srv_requests(), 2);
    assert_int_equal(r.http_status, 200);
    assert_true(LOG.n >= 1);
    assert_non_null(strstr(LOG.lines[0], "Retry-After"));
    assert_non_null(strstr(LOG.lines[0], "429"));
    ia_client_resp_clear(&r);

    /* an HTTP date two seconds ahead (whole seconds, so the wait is between 1 and 2 s) */
    srv_reset(script, 2);
    time_t when = time(NULL) + 2;
    struct tm tmv;
    gmtime_r(&when, &tmv);
    strftime(S.retry_after, sizeof S.retry_after, "%a, %d %b %Y %H:%M:%S GMT", &tmv);
    t0 = ia_time_now();
    assert_int_equal(chat1(c, "hi", -1, &r, &err), IA_OK);
    el = ia_time_now() - t0;
    assert_true(el >= 0.9 && el < 3.0);
    assert_int_equal(r.attempts, 2);
    ia_client_resp_clear(&r);

    /* fractional seconds, and a value beyond retry_after_max falls back to back-off */
    srv_reset(script, 2);
    snprintf(S.retry_after, sizeof S.retry_after, "0.3");
    t0 = ia_time_now();
    assert_int_equal(chat1(c, "hi", -1, &r, &err), IA_OK);
    el = ia_time_now() - t0;
    assert_true(el >= 0.3 && el < 1.5);
    ia_client_resp_clear(&r);
    ia_client_free(c);
    o.retry_after_max_s = 2;
    c = mk(&o);
    srv_reset(script, 2);
    snprintf(S.retry_after, sizeof S.retry_after, "3600");
    t0 = ia_time_now();
    assert_int_equal(chat1(c, "hi", -1, &r, &err), IA_OK);
    assert_true(ia_time_now() - t0 < 1.0);
    assert_int_equal(r.attempts, 2);
    ia_client_resp_clear(&r);
    ia_client_free(c);
}

static void test_500_exhausts_retries(void **state) {
    (void)state;
    const fault script[] = {FX_500};
    srv_reset(script, 1);
    ia_client_opts o = fast_opts();
    o.max_retries = 3;
    o.backoff_base_s = 0.05;
    o.backoff_max_s = 0.1;
    ia_client *c = mk(&o);
    ia_client_resp r;
    ia_error err = {0};
    double t0 = ia_time_now();
    assert_int_equal(chat1(c, "hi", -1, &r, &err), IA_ERR_NET);
    double el = ia_time_now() - t0;
    assert_int_equal(r.attempts, 4); /* 1 + max_retries */
    assert_int_equal(srv_requests(), 4);
    assert_int_equal(r.http_status, 500);
    assert_non_null(strstr(err.msg, "gave up after 4 attempt(s)"));
    assert_non_null(strstr(err.msg, "HTTP 500"));
    assert_non_null(strstr(err.msg, "The server had an error"));
    assert_non_null(r.raw_body);
    /* full-jitter back-off: the three waits are at most 0.05 + 0.1 + 0.1 s */
    assert_true(el < 0.25 + 1.0);
    ia_client_resp_clear(&r);

    /* max_retries 0: exactly one attempt */
    ia_client_free(c);
    o.max_retries = 0;
    c = mk(&o);
    srv_reset(script, 1);
    assert_int_equal(chat1(c, "hi", -1, &r, &err), IA_ERR_NET);
    assert_int_equal(r.attempts, 1);
    assert_int_equal(srv_requests(), 1);
    ia_client_resp_clear(&r);
    ia_client_free(c);
}

static void test_backoff_bounds(void **state) {
    (void)state;
    /* 5 retries with base 0.1, cap 0.2: waits in [0, 0.1) [0, 0.2) [0, 0.2) [0, 0.2) [0, 0.2): total < 0.9 s.
     * The schedule comes from the seeded RNG, so two clients with one seed wait alike. */
    const fault script[] = {FX_503};
    ia_client_opts o = fast_opts();
    o.max_retries = 5;
    o.backoff_base_s = 0.1;
    o.backoff_max_s = 0.2;
    double els[2];
    for (int k = 0; k < 2; k++) {
        srv_reset(script, 1);
        ia_client *c = mk(&o);
        ia_client_resp r;
        ia_error err = {0};
        double t0 = ia_time_now();
        assert_int_equal(chat1(c, "hi", -1, &r, &err), IA_ERR_NET);
        els[k] = ia_time_now() - t0;
        assert_int_equal(r.attempts, 6);
        assert_int_equal(srv_requests(), 6);
        assert_true(els[k] < 0.9 + 0.8);
        ia_client_resp_clear(&r);
        ia_client_free(c);
    }
    assert_true(fabs(els[0] - els[1]) < 0.4);
}

static void test_503_then_ok(void **state) {
    (void)state;
    const fault script[] = {FX_503, FX_OK};
    srv_reset(script, 2);
    ia_client_opts o = fast_opts();
    ia_client *c = mk(&o);
    ia_client_resp r;
    ia_error err = {0};
    assert_int_equal(chat1(c, "hi", -1, &r, &err), IA_OK);
    assert_int_equal(r.attempts, 2);
    assert_int_equal(srv_requests(), 2);
    assert_string_equal(r.choices[0].content, "echo:hi");
    ia_client_resp_clear(&r);

    /* connections closed without a reply (each close ends the connection, so every attempt is on a
     * fresh one and counts) */
    const fault closes[] = {FX_CLOSE, FX_CLOSE, FX_OK};
    srv_reset(closes, 3);
    ia_client_free(c);
    c = mk(&o);
    assert_int_equal(chat1(c, "hi", -1, &r, &err), IA_OK);
    assert_int_equal(r.attempts, 3);
    assert_int_equal(srv_requests(), 3);
    ia_client_resp_clear(&r);
    srv_reset(closes, 1);
    o.max_retries = 1;
    ia_client_free(c);
    c = mk(&o);
    assert_int_equal(chat1(c, "hi", -1, &r, &err), IA_ERR_NET);
    assert_int_equal(r.attempts, 2);
    assert_non_null(strstr(err.msg, "Empty reply"));
    ia_client_resp_clear(&r);
    ia_client_free(c);
}

static void test_garbage_body(void **state) {
    (void)state;
    const fault once[] = {FX_GARBAGE, FX_OK};
    srv_reset(once, 2);
    ia_client_opts o = fast_opts();
    o.max_retries = 2;
    ia_client *c = mk(&o);
    ia_client_resp r;
    ia_error err = {0};
    assert_int_equal(chat1(c, "hi", -1, &r, &err), IA_OK);
    assert_int_equal(r.attempts, 2);
    ia_client_resp_clear(&r);

    const fault always[] = {FX_GARBAGE};
    srv_reset(always, 1);
    assert_int_equal(chat1(c, "hi", -1, &r, &err), IA_ERR_FORMAT);
    assert_int_equal(r.attempts, 3);
    assert_int_equal(srv_requests(), 3);
    assert_non_null(strstr(err.msg, "unusable reply"));
    assert_non_null(strstr(err.msg, "gave up after 3"));
    assert_non_null(r.raw_body);
    assert_non_null(strstr(r.raw_body, "502 Bad Gateway")); /* kept for the run store */
    assert_int_equal(r.n_choices, 0);
    ia_client_resp_clear(&r);
    ia_client_free(c);
}

static void test_truncated_body(void **state) {
    (void)state;
    const fault once[] = {FX_TRUNC, FX_OK};
    srv_reset(once, 2);
    ia_client_opts o = fast_opts();
    o.max_retries = 1;
    ia_client *c = mk(&o);
    ia_client_resp r;
    ia_error err = {0};
    assert_int_equal(chat1(c, "hi", -1, &r, &err), IA_OK);
    assert_int_equal(r.attempts, 2);
    ia_client_resp_clear(&r);

    const fault always[] = {FX_TRUNC};
    srv_reset(always, 1);
    assert_int_equal(chat1(c, "hi", -1, &r, &err), IA_ERR_NET);
    assert_int_equal(r.attempts, 2);
    assert_int_equal(srv_requests(), 2);
    assert_non_null(strstr(err.msg, "gave up after 2"));
    ia_client_resp_clear(&r);
    ia_client_free(c);
}

static void test_stall_timeout(void **state) {
    (void)state;
    const fault script[] = {FX_STALL};
    srv_reset(script, 1);
    ia_client_opts o = fast_opts();
    o.timeout_s = 0.3;
    o.max_retries = 1;
    ia_client *c = mk(&o);
    ia_client_resp r;
    ia_error err = {0};
    double t0 = ia_time_now();
    assert_int_equal(chat1(c, "hi", -1, &r, &err), IA_ERR_TIMEOUT);
    double el = ia_time_now() - t0;
    assert_int_equal(r.attempts, 2);
    assert_int_equal(srv_requests(), 2);
    /* two attempts cut at 0.3 s each (the server would stall 3 s) */
    assert_true(el >= 0.55);
    assert_true(el < 1.6);
    assert_non_null(strstr(err.msg, "no complete reply within 0.3 s"));
    assert_int_equal(r.http_status, 0);
    ia_client_resp_clear(&r);
    ia_client_free(c);
}

static void test_budget(void **state) {
    (void)state;
    /* endless 500s and many retries allowed: the budget stops them */
    const fault s500[] = {FX_500};
    srv_reset(s500, 1);
    ia_client_opts o = fast_opts();
    o.max_retries = 1000;
    o.backoff_base_s = 0.05;
    o.backoff_max_s = 0.1;
    o.budget_s = 0.6;
    ia_client *c = mk(&o);
    ia_client_resp r;
    ia_error err = {0};
    double t0 = ia_time_now();
    assert_int_equal(chat1(c, "hi", -1, &r, &err), IA_ERR_TIMEOUT);
    double el = ia_time_now() - t0;
    assert_true(el <= 0.6 + 0.4);
    assert_true(r.attempts >= 2 && r.attempts < 1001);
    assert_int_equal(srv_requests(), r.attempts);
    assert_non_null(strstr(err.msg, "budget"));
    assert_non_null(strstr(err.msg, "HTTP 500"));
    ia_client_resp_clear(&r);
    ia_client_free(c);

    /* a Retry-After longer than what is left of the budget: give up now, do not sleep */
    const fault s429[] = {FX_429, FX_OK};
    srv_reset(s429, 2);
    snprintf(S.retry_after, sizeof S.retry_after, "5");
    o = fast_opts();
    o.budget_s = 2;
    c = mk(&o);
    t0 = ia_time_now();
    assert_int_equal(chat1(c, "hi", -1, &r, &err), IA_ERR_TIMEOUT);
    assert_true(ia_time_now() - t0 < 0.8);
    assert_int_equal(r.attempts, 1);
    assert_non_null(strstr(err.msg, "Retry-After"));
    assert_int_equal(r.http_status, 429);
    ia_client_resp_clear(&r);
    ia_client_free(c);

    /* a stall with a budget shorter than the attempt timeout: cut at the budget */
    const fault stall[] = {FX_STALL};
    srv_reset(stall, 1);
    o = fast_opts();
    o.timeout_s = 5;
    o.budget_s = 0.4;
    c = mk(&o);
    t0 = ia_time_now();
    assert_int_equal(chat1(c, "hi", -1, &r, &err), IA_ERR_TIMEOUT);
    el = ia_time_now() - t0;
    assert_true(el >= 0.35 && el < 1.2);
    ia_client_resp_clear(&r);
    ia_client_free(c);
}

static void test_4xx_not_retried(void **state) {
    (void)state;
    srv_reset(NULL, 0);
    ia_client_opts o = fast_opts();
    ia_client *c = mk(&o);
    ia_client_resp r;
    ia_error err = {0};

    assert_int_equal(chat1(c, "fault:401", -1, &r, &err), IA_ERR_NET);
    assert_int_equal(r.attempts, 1);
    assert_int_equal(srv_requests(), 1);
    assert_int_equal(r.http_status, 401);
    assert_non_null(strstr(err.msg, "HTTP 401 Unauthorized"));
    assert_non_null(strstr(err.msg, "Incorrect API key provided"));
    assert_non_null(strstr(err.msg, "check the API key"));
    assert_non_null(strstr(err.msg, "not retried"));
    ia_client_resp_clear(&r);

    srv_reset(NULL, 0);
    assert_int_equal(chat1(c, "fault:404", -1, &r, &err), IA_ERR_NET);
    assert_int_equal(r.attempts, 1);
    assert_int_equal(srv_requests(), 1);
    assert_non_null(strstr(err.msg, "HTTP 404"));
    assert_non_null(strstr(err.msg, "`teacher` does not exist"));
    ia_client_resp_clear(&r);

    srv_reset(NULL, 0);
    assert_int_equal(chat1(c, "fault:quota", -1, &r, &err), IA_ERR_NET);
    assert_int_equal(r.attempts, 1);
    assert_non_null(strstr(err.msg, "insufficient_quota"));
    ia_client_resp_clear(&r);

    srv_reset(NULL, 0);
    assert_int_equal(chat1(c, "fault:noretry", -1, &r, &err), IA_ERR_NET);
    assert_int_equal(r.attempts, 1);
    ia_client_resp_clear(&r);

    srv_reset(NULL, 0);
    assert_int_equal(chat1(c, "fault:empty", -1, &r, &err), IA_ERR_FORMAT);
    assert_int_equal(r.attempts, 1);
    assert_int_equal(srv_requests(), 1);
    assert_non_null(strstr(err.msg, "unusable reply: empty choices list"));
    assert_non_null(r.raw_body);
    ia_client_resp_clear(&r);
    ia_client_free(c);
}

static void test_tolerant_replies(void **state) {
    (void)state;
    srv_reset(NULL, 0);
    ia_client_opts o = fast_opts();
    ia_client *c = mk(&o);
    ia_client_resp r;
    ia_error err = {0};
    assert_int_equal(chat1(c, "fault:fence", -1, &r, &err), IA_OK);
    char *obj = ia_json_extract_object(r.choices[0].content);
    assert_non_null(obj);
    json_t *j = json_loads(obj, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(j, "verdict")), "negative");
    assert_int_equal(json_integer_value(json_object_get(j, "score")), 2);
    json_decref(j);
    ia_free(obj);
    ia_client_resp_clear(&r);

    ia_client_totals_reset(c);
    assert_int_equal(chat1(c, "fault:nousage", -1, &r, &err), IA_OK);
    assert_true(r.usage_missing);
    assert_int_equal(r.usage.total_tokens, 0);
    assert_string_equal(r.choices[0].content, "echo:fault:nousage");
    ia_client_totals t;
    ia_client_totals_get(c, &t);
    assert_int_equal(t.usage_missing, 1);
    assert_int_equal(t.total_tokens, 0);
    ia_client_resp_clear(&r);
    ia_client_free(c);
}

static void test_connection_refused(void **state) {
    (void)state;
    /* a port that was just free: bind, read the port, close */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t al = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &al);
    close(fd);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1", ntohs(a.sin_port));
    ia_client_opts o = fast_opts();
    o.base_url = url;
    o.max_retries = 2;
    ia_client *c = mk(&o);
    ia_client_resp r;
    ia_error err = {0};
    assert_int_equal(chat1(c, "hi", -1, &r, &err), IA_ERR_NET);
    assert_int_equal(r.attempts, 3);
    assert_non_null(strstr(err.msg, "gave up after 3"));
    assert_int_equal(r.http_status, 0);
    assert_null(r.raw_body);
    ia_client_resp_clear(&r);
    ia_client_free(c);
}

static void test_huge_reply(void **state) {
    (void)state;
    srv_reset(NULL, 0);
    ia_client_opts o = fast_opts();
    o.max_response_bytes = 64 * 1024;
    ia_client *c = mk(&o);
    ia_client_resp r;
    ia_error err = {0};
    assert_int_equal(chat1(c, "fault:huge", -1, &r, &err), IA_ERR_NET);
    assert_int_equal(r.attempts, 1);
    assert_non_null(strstr(err.msg, "larger than 65536 bytes"));
    ia_client_resp_clear(&r);
    ia_client_free(c);
}

/* ==== concurrency ============================================================================= */

static void progress_cb(void *ud, int done, int total) {
    int *p = ud;
    p[0]++;
    if (done == total) p[1] = done;
}

static void test_concurrency_bounded(void **state) {
    (void)state;
    srv_reset(NULL, 0);
    S.delay_ms = 80;
    ia_client_opts o = fast_opts();
    o.max_concurrency = 4;
    int progress[2] = {0, 0};
    o.progress = progress_cb;
    o.progress_ud = progress;
    ia_client *c = mk(&o);
    enum { N = 24 };
    ia_chat_msg msgs[N];
    char texts[N][32];
    ia_client_chat_req reqs[N];
    ia_client_resp resps[N];
    ia_error errs[N];
    for (int i = 0; i < N; i++) {
        snprintf(texts[i], sizeof texts[i], "fault:slow %d", i);
        msgs[i] = (ia_chat_msg){"user", texts[i]};
        reqs[i] = ia_client_chat_req_default();
        reqs[i].messages = &msgs[i];
        reqs[i].n_messages = 1;
    }
    double t0 = ia_time_now();
    assert_int_equal(ia_client_chat_many(c, reqs, N, resps, errs), IA_OK);
    double el = ia_time_now() - t0;
    assert_int_equal(srv_requests(), N);
    assert_true(S.max_inflight <= 4);
    assert_true(S.max_inflight >= 2);
    /* 24 requests of 80 ms, 4 at a time: at least 6 rounds */
    assert_true(el >= 6 * 0.08 - 0.02);
    for (int i = 0; i < N; i++) {
        char want[48];
        snprintf(want, sizeof want, "echo:fault:slow %d", i);
        assert_int_equal(errs[i].code, IA_OK);
        assert_string_equal(resps[i].choices[0].content, want); /* input order */
        ia_client_resp_clear(&resps[i]);
    }
    ia_client_totals t;
    ia_client_totals_get(c, &t);
    assert_int_equal(t.requests, N);
    assert_int_equal(t.succeeded, N);
    assert_int_equal(t.total_tokens, 15 * N);
    assert_int_equal(progress[0], N);   /* called once per request */
    assert_int_equal(progress[1], N);   /* the last call says N of N */
    ia_client_free(c);
}

static void test_many_mixed(void **state) {
    (void)state;
    srv_reset(NULL, 0);
    ia_client_opts o = fast_opts();
    o.max_retries = 1;
    ia_client *c = mk(&o);
    const char *texts[] = {"a", "fault:401", "b", "fault:empty", "fault:garbage", "c", "fault:500", "fault:fence"};
    const int want_rc[] = {IA_OK, IA_ERR_NET, IA_OK, IA_ERR_FORMAT, IA_ERR_FORMAT, IA_OK, IA_ERR_NET, IA_OK};
    const int want_attempts[] = {1, 1, 1, 1, 2, 1, 2, 1};
    enum { N = 8 };
    ia_chat_msg msgs[N];
    ia_client_chat_req reqs[N];
    ia_client_resp resps[N];
    ia_error errs[N];
    for (int i = 0; i < N; i++) {
        msgs[i] = (ia_chat_msg){"user", texts[i]};
        reqs[i] = ia_client_chat_req_default();
        reqs[i].messages = &msgs[i];
        reqs[i].n_messages = 1;
    }
    /* the first failure in input order is the 401 */
    assert_int_equal(ia_client_chat_many(c, reqs, N, resps, errs), IA_ERR_NET);
    for (int i = 0; i < N; i++) {
        if (errs[i].code != want_rc[i]) print_error("request %d: %s\n", i, errs[i].msg);
        assert_int_equal(errs[i].code, want_rc[i]);
        assert_int_equal(resps[i].attempts, want_attempts[i]);
        if (want_rc[i] == IA_OK && i != 7) {
            char want[32];
            snprintf(want, sizeof want, "echo:%s", texts[i]);
            assert_string_equal(resps[i].choices[0].content, want);
        }
        ia_client_resp_clear(&resps[i]);
    }
    ia_client_totals t;
    ia_client_totals_get(c, &t);
    assert_int_equal(t.failed, 4);
    assert_int_equal(t.succeeded, 4);
    assert_int_equal(t.http_attempts, 10);
    /* errs may be NULL */
    assert_int_equal(ia_client_chat_many(c, reqs, 1, resps, NULL), IA_OK);
    ia_client_resp_clear(&resps[0]);
    ia_client_free(c);
}

typedef struct thread_arg {
    ia_client *c;
    int base;
    int rc;
} thread_arg;

static void *thread_batch(void *p) {
    thread_arg *a = p;
    enum { N = 8 };
    char texts[N][32];
    ia_chat_msg msgs[N];
    ia_client_chat_req reqs[N];
    ia_client_resp resps[N];
    for (int i = 0; i < N; i++) {
        snprintf(texts[i], sizeof texts[i], "fault:slow %d", a->base + i);
        msgs[i] = (ia_chat_msg){"user", texts[i]};
        reqs[i] = ia_client_chat_req_default();
        reqs[i].messages = &msgs[i];
        reqs[i].n_messages = 1;
    }
    a->rc = ia_client_chat_many(a->c, reqs, N, resps, NULL);
    for (int i = 0; i < N; i++) ia_client_resp_clear(&resps[i]);
    return NULL;
}

static void test_concurrency_across_threads(void **state) {
    (void)state;
    srv_reset(NULL, 0);
    S.delay_ms = 60;
    ia_client_opts o = fast_opts();
    o.max_concurrency = 3;
    ia_client *c = mk(&o);
    pthread_t th[3];
    thread_arg args[3];
    for (int i = 0; i < 3; i++) {
        args[i] = (thread_arg){c, 100 * i, -1};
        pthread_create(&th[i], NULL, thread_batch, &args[i]);
    }
    for (int i = 0; i < 3; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 3; i++) assert_int_equal(args[i].rc, IA_OK);
    assert_int_equal(srv_requests(), 24);
    assert_true(S.max_inflight <= 3); /* the limit is the client's, not each thread's */
    ia_client_totals t;
    ia_client_totals_get(c, &t);
    assert_int_equal(t.succeeded, 24);
    assert_int_equal(t.prompt_tokens, 240);
    ia_client_free(c);
}

/* ==== cache =================================================================================== */

typedef struct count_cache {
    ia_client_cache *inner;
    int gets, puts;
} count_cache;

static char *cc_get(void *ud, const char *key) {
    count_cache *cc = ud;
    cc->gets++;
    return cc->inner->get(cc->inner->ud, key);
}

static int cc_put(void *ud, const char *key, const char *req, const char *body) {
    count_cache *cc = ud;
    cc->puts++;
    return cc->inner->put(cc->inner->ud, key, req, body);
}

static void test_cache_mem(void **state) {
    (void)state;
    srv_reset(NULL, 0);
    ia_error err = {0};
    ia_client_cache *mem = ia_client_cache_mem_new(&err);
    assert_non_null(mem);
    count_cache cc = {mem, 0, 0};
    ia_client_cache iface = {cc_get, cc_put, NULL, &cc};
    ia_client_opts o = fast_opts();
    o.cache = &iface;
    ia_client *c = mk(&o);
    ia_client_resp r1, r2;

    /* temperature 0: fetched once, then answered from the cache without HTTP */
    assert_int_equal(chat1(c, "judge this", 0, &r1, &err), IA_OK);
    assert_false(r1.cache_hit);
    assert_int_equal(srv_requests(), 1);
    assert_int_equal(cc.puts, 1);
    assert_int_equal(chat1(c, "judge this", 0, &r2, &err), IA_OK);
    assert_true(r2.cache_hit);
    assert_int_equal(r2.attempts, 0);
    assert_int_equal(r2.http_status, 0);
    assert_int_equal(srv_requests(), 1);
    assert_string_equal(r1.choices[0].content, r2.choices[0].content);
    assert_string_equal(r1.cache_key, r2.cache_key);
    assert_string_equal(r1.request_json, r2.request_json);
    assert_int_equal(r2.usage.total_tokens, 15);
    char judged_key[65];
    memcpy(judged_key, r1.cache_key, 65);
    ia_client_resp_clear(&r1);
    ia_client_resp_clear(&r2);

    /* usage totals count only what was paid for */
    ia_client_totals t;
    ia_client_totals_get(c, &t);
    assert_int_equal(t.total_tokens, 15);
    assert_int_equal(t.cache_hits, 1);
    assert_int_equal(t.requests, 2);
    assert_int_equal(t.http_attempts, 1);

    /* sampling without a seed is never cached */
    int gets = cc.gets;
    assert_int_equal(chat1(c, "judge this", 0.7, &r1, &err), IA_OK);
    ia_client_resp_clear(&r1);
    assert_int_equal(chat1(c, "judge this", 0.7, &r1, &err), IA_OK);
    ia_client_resp_clear(&r1);
    assert_int_equal(srv_requests(), 3);
    assert_int_equal(cc.gets, gets);

    /* a seed makes it deterministic */
    ia_chat_msg m = {"user", "seeded"};
    ia_client_chat_req req = ia_client_chat_req_default();
    req.messages = &m;
    req.n_messages = 1;
    req.temperature = 0.9;
    req.has_seed = true;
    req.seed = 7;
    assert_int_equal(ia_client_chat(c, &req, &r1, &err), IA_OK);
    ia_client_resp_clear(&r1);
    assert_int_equal(ia_client_chat(c, &req, &r1, &err), IA_OK);
    assert_true(r1.cache_hit);
    ia_client_resp_clear(&r1);
    assert_int_equal(srv_requests(), 4);
    /* a different seed is a different request */
    req.seed = 8;
    assert_int_equal(ia_client_chat(c, &req, &r1, &err), IA_OK);
    assert_false(r1.cache_hit);
    ia_client_resp_clear(&r1);
    /* no_cache skips it */
    req.seed = 7;
    req.no_cache = true;
    assert_int_equal(ia_client_chat(c, &req, &r1, &err), IA_OK);
    assert_false(r1.cache_hit);
    ia_client_resp_clear(&r1);
    assert_int_equal(srv_requests(), 6);

    /* failures are not cached */
    int puts = cc.puts;
    assert_int_equal(chat1(c, "fault:401", 0, &r1, &err), IA_ERR_NET);
    ia_client_resp_clear(&r1);
    assert_int_equal(chat1(c, "fault:empty", 0, &r1, &err), IA_ERR_FORMAT);
    ia_client_resp_clear(&r1);
    assert_int_equal(chat1(c, "fault:401", 0, &r1, &err), IA_ERR_NET);
    ia_client_resp_clear(&r1);
    assert_int_equal(cc.puts, puts);
    assert_int_equal(srv_requests(), 9);

    /* within a batch: cached ones skip the network, the rest go */
    ia_chat_msg bm[3] = {{"user", "judge this"}, {"user", "new one"}, {"user", "seeded"}};
    ia_client_chat_req br[3];
    ia_client_resp bresp[3];
    for (int i = 0; i < 3; i++) {
        br[i] = ia_client_chat_req_default();
        br[i].messages = &bm[i];
        br[i].n_messages = 1;
        br[i].temperature = 0;
    }
    assert_int_equal(ia_client_chat_many(c, br, 3, bresp, NULL), IA_OK);
    assert_true(bresp[0].cache_hit);
    assert_false(bresp[1].cache_hit);
    assert_false(bresp[2].cache_hit); /* temperature 0 without seed: not the seeded request */
    assert_int_equal(srv_requests(), 11);
    for (int i = 0; i < 3; i++) ia_client_resp_clear(&bresp[i]);
    assert_int_equal(ia_client_cache_mem_count(mem), 5);

    /* a corrupt entry is a miss and is overwritten */
    assert_int_equal(mem->put(mem->ud, judged_key, "", "not json"), IA_OK);
    int before = srv_requests();
    assert_int_equal(chat1(c, "judge this", 0, &r1, &err), IA_OK);
    assert_false(r1.cache_hit);
    ia_client_resp_clear(&r1);
    assert_int_equal(chat1(c, "judge this", 0, &r1, &err), IA_OK);
    assert_true(r1.cache_hit);
    ia_client_resp_clear(&r1);
    assert_int_equal(srv_requests(), before + 1);
    ia_client_free(c);
    ia_client_cache_free(mem);
}

static void test_cache_dir(void **state) {
    (void)state;
    srv_reset(NULL, 0);
    char dir[300];
    test_tmpfile(dir, sizeof dir, "reply-cache");
    ia_error err = {0};
    ia_client_cache *dc = ia_client_cache_dir_new(dir, &err);
    assert_non_null(dc);
    ia_client_opts o = fast_opts();
    o.cache = dc;
    ia_client *c = mk(&o);
    ia_client_resp r;
    assert_int_equal(chat1(c, "persist me", 0, &r, &err), IA_OK);
    assert_false(r.cache_hit);
    char key[65];
    memcpy(key, r.cache_key, 65);
    ia_client_resp_clear(&r);
    ia_client_free(c);
    ia_client_cache_free(dc);
    assert_int_equal(srv_requests(), 1);

    /* a re-run: new cache object and client over the same directory, no HTTP */
    dc = ia_client_cache_dir_new(dir, &err);
    o.cache = dc;
    c = mk(&o);
    assert_int_equal(chat1(c, "persist me", 0, &r, &err), IA_OK);
    assert_true(r.cache_hit);
    assert_string_equal(r.choices[0].content, "echo:persist me");
    ia_client_resp_clear(&r);
    assert_int_equal(srv_requests(), 1);

    /* corrupt the stored file: a miss, fetched again, and repaired */
    char path[400];
    snprintf(path, sizeof path, "%s/%s.json", dir, key);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs("{\"choices\": [", f);
    fclose(f);
    assert_int_equal(chat1(c, "persist me", 0, &r, &err), IA_OK);
    assert_false(r.cache_hit);
    ia_client_resp_clear(&r);
    assert_int_equal(srv_requests(), 2);
    assert_int_equal(chat1(c, "persist me", 0, &r, &err), IA_OK);
    assert_true(r.cache_hit);
    ia_client_resp_clear(&r);

    /* keys that are not 64 hex digits are refused (no path tricks) */
    assert_null(dc->get(dc->ud, "../../etc/passwd"));
    assert_int_equal(dc->put(dc->ud, "../x", "", "{}"), IA_ERR_ARG);
    assert_int_equal(ia_client_cache_mem_count(dc), -1);
    ia_client_free(c);
    ia_client_cache_free(dc);
    assert_null(ia_client_cache_dir_new(NULL, &err));
    assert_null(ia_client_cache_dir_new("/proc/self/definitely/not/here", &err));
}

/* ==== completions ============================================================================= */

static void test_completions(void **state) {
    (void)state;
    srv_reset(NULL, 0);
    ia_client_opts o = fast_opts();
    ia_client *c = mk(&o);
    ia_client_completion_req q = ia_client_completion_req_default();
    const int32_t ids[4] = {1, 450, 6635, 3290};
    q.prompt_ids = ids;
    q.n_prompt_ids = 4;
    q.max_tokens = 0;
    q.temperature = 0;
    q.logprobs = 1;
    q.echo = true;
    q.has_seed = true;
    q.seed = 3;
    ia_client_resp r;
    ia_error err = {0};
    assert_int_equal(ia_client_complete(c, &q, &r, &err), IA_OK);
    assert_string_equal(S.last_url, "/v1/completions");
    json_t *b = json_loads(S.last_body, 0, NULL);
    assert_int_equal(json_array_size(json_object_get(b, "prompt")), 4);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(b, "prompt"), 3)), 3290);
    assert_int_equal(json_integer_value(json_object_get(b, "max_tokens")), 0);
    assert_int_equal(json_integer_value(json_object_get(b, "logprobs")), 1);
    assert_true(json_is_true(json_object_get(b, "echo")));
    json_decref(b);
    ia_client_resp_clear(&r);

    /* the legacy logprobs shape */
    q = ia_client_completion_req_default();
    q.prompt = "fault:lp";
    assert_int_equal(ia_client_complete(c, &q, &r, &err), IA_OK);
    assert_string_equal(r.choices[0].content, "The cat sat");
    assert_string_equal(r.choices[0].finish_reason, "length");
    ia_client_logprobs *lp = r.choices[0].logprobs;
    assert_non_null(lp);
    assert_int_equal(lp->n, 3);
    assert_string_equal(lp->tokens[1], " cat");
    assert_true(isnan(lp->token_logprobs[0]));
    assert_true(fabs(lp->token_logprobs[2] + 0.25) < 1e-12);
    assert_int_equal(lp->text_offset[2], 7);
    assert_int_equal(lp->top_start[0], 0);
    assert_int_equal(lp->top_start[1], 0); /* null alternatives at position 0 */
    assert_int_equal(lp->top_start[2], 2);
    assert_int_equal(lp->top_start[3], 3);
    assert_string_equal(lp->top_tokens[1], " dog");
    assert_true(fabs(lp->top_logprobs[1] + 1.0) < 1e-12);
    assert_int_equal(r.usage.total_tokens, 4);
    ia_client_resp_clear(&r);

    /* the chat-shaped logprobs llama-server sends, and usage without total_tokens */
    q.prompt = "fault:lpchat";
    assert_int_equal(ia_client_complete(c, &q, &r, &err), IA_OK);
    lp = r.choices[0].logprobs;
    assert_non_null(lp);
    assert_int_equal(lp->n, 1);
    assert_string_equal(lp->tokens[0], " yes");
    assert_int_equal(lp->top_start[1], 2);
    assert_string_equal(lp->top_tokens[1], " no");
    assert_int_equal(lp->text_offset[0], -1);
    assert_int_equal(r.usage.total_tokens, 5);
    ia_client_resp_clear(&r);

    /* no prompt at all */
    q = ia_client_completion_req_default();
    assert_int_equal(ia_client_complete(c, &q, &r, &err), IA_ERR_ARG);
    ia_client_resp_clear(&r);
    ia_client_completion_req qs[2] = {ia_client_completion_req_default(), ia_client_completion_req_default()};
    qs[0].prompt = "x";
    qs[1].prompt = "fault:500";
    ia_client_resp rs[2];
    ia_error es[2];
    assert_int_equal(ia_client_complete_many(c, qs, 2, rs, es), IA_ERR_NET);
    assert_int_equal(es[0].code, IA_OK);
    assert_string_equal(rs[0].choices[0].content, "echo:x");
    ia_client_resp_clear(&rs[0]);
    ia_client_resp_clear(&rs[1]);
    ia_client_free(c);
}

/* ==== secrets ================================================================================= */

static void assert_no_key(const char *what, const char *s) {
    if (s && strstr(s, TEST_KEY)) print_error("the API key leaked into %s: %s\n", what, s);
    assert_true(!s || !strstr(s, TEST_KEY));
}

static void assert_resp_clean(const ia_client_resp *r, const ia_error *e) {
    assert_no_key("error message", e->msg);
    assert_no_key("request_json", r->request_json);
    assert_no_key("raw_body", r->raw_body);
    assert_no_key("model", r->model);
    for (int i = 0; i < r->n_choices; i++) {
        assert_no_key("content", r->choices[i].content);
        assert_no_key("finish_reason", r->choices[i].finish_reason);
    }
}

static void test_secret_never_leaks(void **state) {
    (void)state;
    setenv(TEST_KEY_ENV, TEST_KEY, 1);
    srv_reset(NULL, 0);
    ia_error err = {0};
    ia_client_cache *mem = ia_client_cache_mem_new(&err);
    ia_client_opts o = fast_opts();
    o.api_key_env = TEST_KEY_ENV;
    o.max_retries = 1;
    o.log = log_cb;
    o.cache = mem;
    LOG.n = 0;
    ia_client *c = mk(&o);
    assert_true(ia_client_has_key(c));
    ia_client_resp r;

    /* the key travels in the header, exactly */
    assert_int_equal(chat1(c, "hello", 0, &r, &err), IA_OK);
    assert_string_equal(S.last_auth, "Bearer " TEST_KEY);
    assert_no_key("the body sent", S.last_body);
    assert_resp_clean(&r, &err);
    ia_client_resp_clear(&r);

    /* a 401 whose message quotes the key back */
    assert_int_equal(chat1(c, "fault:401", 0, &r, &err), IA_ERR_NET);
    assert_non_null(strstr(err.msg, "[redacted]"));
    assert_resp_clean(&r, &err);
    assert_non_null(strstr(r.raw_body, "[redacted]"));
    ia_client_resp_clear(&r);

    /* a 200 whose content and extra fields carry the key: scrubbed before parsing and caching */
    assert_int_equal(chat1(c, "fault:echo_auth", 0, &r, &err), IA_OK);
    assert_resp_clean(&r, &err);
    assert_string_equal(r.choices[0].content, "your header was Bearer [redacted]");
    char key[65];
    memcpy(key, r.cache_key, 65);
    ia_client_resp_clear(&r);
    char *cached = mem->get(mem->ud, key);
    assert_non_null(cached);
    assert_no_key("the cache", cached);
    ia_free(cached);
    assert_int_equal(chat1(c, "fault:echo_auth", 0, &r, &err), IA_OK);
    assert_true(r.cache_hit);
    assert_resp_clean(&r, &err);
    ia_client_resp_clear(&r);

    /* retries and give-ups with logging on */
    const char *faults[] = {"fault:500", "fault:garbage", "fault:trunc", "fault:404", "fault:quota", "fault:empty"};
    for (size_t i = 0; i < sizeof faults / sizeof *faults; i++) {
        assert_int_not_equal(chat1(c, faults[i], -1, &r, &err), IA_OK);
        assert_resp_clean(&r, &err);
        ia_client_resp_clear(&r);
    }
    assert_true(LOG.n > 0);
    for (int i = 0; i < LOG.n; i++) assert_no_key("a log line", LOG.lines[i]);
    ia_client_free(c);
    ia_client_cache_free(mem);
    unsetenv(TEST_KEY_ENV);
}

/* ==== robustness ============================================================================== */

static void test_chaos(void **state) {
    (void)state;
    /* every fault, drawn at random for 48 concurrent requests: each ends in a result or a clear
     * error within its attempt limit, and nothing crashes */
    srv_reset(NULL, 0);
    S.stall_ms = 2000;
    S.delay_ms = 20;
    snprintf(S.retry_after, sizeof S.retry_after, "0.1");
    ia_client_opts o = fast_opts();
    o.max_retries = 2;
    o.timeout_s = 0.3;
    o.max_concurrency = 8;
    o.max_response_bytes = 100 * 1024;
    ia_client *c = mk(&o);
    enum { N = 48 };
    char texts[N][32];
    ia_chat_msg msgs[N];
    ia_client_chat_req reqs[N];
    ia_client_resp resps[N];
    ia_error errs[N];
    /* every chat fault (all before FX_LP) at least twice, in a seeded random order */
    int order[N];
    for (int i = 0; i < N; i++) order[i] = i % FX_LP;
    ia_rng rng;
    ia_rng_seed(&rng, 99);
    for (int i = N - 1; i > 0; i--) {
        int k = (int)(ia_rng_next(&rng) % (uint64_t)(i + 1));
        int t = order[i];
        order[i] = order[k];
        order[k] = t;
    }
    for (int i = 0; i < N; i++) {
        snprintf(texts[i], sizeof texts[i], "fault:%s", fault_names[order[i]]);
        msgs[i] = (ia_chat_msg){"user", texts[i]};
        reqs[i] = ia_client_chat_req_default();
        reqs[i].messages = &msgs[i];
        reqs[i].n_messages = 1;
    }
    double t0 = ia_time_now();
    ia_client_chat_many(c, reqs, N, resps, errs);
    assert_true(ia_time_now() - t0 < 8.0);
    int ok = 0;
    int attempts[N];
    for (int i = 0; i < N; i++) {
        attempts[i] = resps[i].attempts;
        assert_true(resps[i].attempts >= 1 && resps[i].attempts <= 3);
        if (errs[i].code == IA_OK) {
            ok++;
            assert_true(resps[i].n_choices >= 1);
            assert_non_null(resps[i].choices[0].content);
        } else {
            assert_true(strlen(errs[i].msg) > 0);
            assert_null(strchr(errs[i].msg, '\n'));
        }
        ia_client_resp_clear(&resps[i]);
    }
    assert_true(ok > 0 && ok < N);
    for (int i = 0; i < N; i++) {
        /* the outcome of each fault is fixed by the policy, whatever the interleaving */
        int f = order[i];
        bool want_ok = f == FX_OK || f == FX_SLOW || f == FX_FENCE || f == FX_NOUSAGE || f == FX_ECHO_AUTH;
        if ((errs[i].code == IA_OK) != want_ok) print_error("%s: %s\n", texts[i], errs[i].msg);
        assert_int_equal(errs[i].code == IA_OK, want_ok);
        bool retried = f == FX_429 || f == FX_500 || f == FX_503 || f == FX_GARBAGE || f == FX_TRUNC ||
                       f == FX_STALL || f == FX_CLOSE;
        if (!want_ok) assert_int_equal(attempts[i], retried ? 3 : 1);
        if (f == FX_STALL) assert_int_equal(errs[i].code, IA_ERR_TIMEOUT);
    }
    ia_client_free(c);
}

static void test_oom(void **state) {
    (void)state;
    /* fail the k-th allocation of a whole request (with a cache): an error, never a crash or a leak */
    srv_reset(NULL, 0);
    ia_error err = {0};
    ia_client_cache *mem = ia_client_cache_mem_new(&err);
    ia_client_opts o = fast_opts();
    o.cache = mem;
    o.max_retries = 0;
    ia_client *c = mk(&o);
    int failures = 0;
    bool clean_run = false;
    for (long k = 1; k <= 400 && !clean_run; k++) {
        for (int persistent = 0; persistent < 2; persistent++) {
            ia_client_resp r;
            char text[32];
            snprintf(text, sizeof text, "oom %ld", k); /* a new request each time: no cache hit */
            long before = ia_mem_alloc_count();
            ia_mem_fail_after(k, persistent);
            int rc = chat1(c, text, 0, &r, &err);
            ia_mem_fail_after(0, false);
            bool hit = ia_mem_alloc_count() - before >= k;
            if (rc != IA_OK) {
                failures++;
                assert_true(strlen(err.msg) > 0);
            } else if (!hit) {
                clean_run = true;
            }
            ia_client_resp_clear(&r);
        }
    }
    assert_true(clean_run);
    assert_true(failures > 0);
    /* the client still works afterwards */
    ia_client_resp r;
    assert_int_equal(chat1(c, "after", 0, &r, &err), IA_OK);
    ia_client_resp_clear(&r);
    ia_client_free(c);
    ia_client_cache_free(mem);

    /* init under allocation failure */
    for (long k = 1; k <= 20; k++) {
        ia_mem_fail_after(k, false);
        ia_client *c2 = ia_client_init(&o, &err);
        ia_mem_fail_after(0, false);
        ia_client_free(c2);
    }
}

int main(void) {
    /* the tests talk to loopback only; a proxy from the environment must not get in the way */
    unsetenv("http_proxy");
    unsetenv("HTTP_PROXY");
    unsetenv("all_proxy");
    unsetenv("ALL_PROXY");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256),
        cmocka_unit_test(test_json_extract),
        cmocka_unit_test(test_json_extract_limits),
        cmocka_unit_test(test_retry_after_parse),
        cmocka_unit_test(test_error_summary),
        cmocka_unit_test(test_parse_reply_shapes),
        cmocka_unit_test(test_init_errors),
        cmocka_unit_test(test_request_json),
        cmocka_unit_test(test_ok_and_usage),
        cmocka_unit_test(test_429_retry_after),
        cmocka_unit_test(test_500_exhausts_retries),
        cmocka_unit_test(test_backoff_bounds),
        cmocka_unit_test(test_503_then_ok),
        cmocka_unit_test(test_garbage_body),
        cmocka_unit_test(test_truncated_body),
        cmocka_unit_test(test_stall_timeout),
        cmocka_unit_test(test_budget),
        cmocka_unit_test(test_4xx_not_retried),
        cmocka_unit_test(test_tolerant_replies),
        cmocka_unit_test(test_connection_refused),
        cmocka_unit_test(test_huge_reply),
        cmocka_unit_test(test_concurrency_bounded),
        cmocka_unit_test(test_many_mixed),
        cmocka_unit_test(test_concurrency_across_threads),
        cmocka_unit_test(test_cache_mem),
        cmocka_unit_test(test_cache_dir),
        cmocka_unit_test(test_completions),
        cmocka_unit_test(test_secret_never_leaks),
        cmocka_unit_test(test_chaos),
        cmocka_unit_test(test_oom),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
