/* test_server_client.c — the project's teacher client (src/net/client.h) against `iteralign serve`'s
 * server started in-process on an ephemeral loopback port with stories260K: chat and completions
 * equal the library's own generation, concurrent requests equal sequential ones, echo logprobs equal
 * ia_score, and errors (bad key, unknown model, bad request) come back with their status. */
#include "test_util.h"

#include "engine/logprobs.h"
#include "net/client.h"
#include "server/server.h"

#include <math.h>

#define KEY_ENV "IA_TEST_SERVER_KEY"
#define KEY "sk-local-test-4Jq7"

static ia_model *M;
static ia_server *S;
static char base_url[64];

static int setup(void **state) {
    (void)state;
    ia_set_threads(1);
    ia_error err = {0};
    M = ia_model_load(TEST_STORIES, &err);
    if (!M) return -1;
    ia_server_opts o = ia_server_opts_default();
    o.port = 0;
    o.api_key = KEY;
    o.model_path = TEST_STORIES;
    o.chat_template = IA_CHAT_TEMPLATE_CHATML;
    o.n_parallel = 4;
    o.shutdown_grace_s = -1;
    S = ia_server_start(M, &o, &err);
    if (!S) return -1;
    snprintf(base_url, sizeof base_url, "http://127.0.0.1:%d/v1", ia_server_port(S));
    setenv(KEY_ENV, KEY, 1);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    ia_server_stop(S);
    ia_model_free(M);
    return 0;
}

static ia_client *client_new(const char *key_env) {
    ia_client_opts o = ia_client_opts_default();
    o.base_url = base_url;
    o.api_key_env = key_env;
    o.model = "stories260K";
    o.max_retries = 0;
    o.timeout_s = 60;
    ia_error err = {0};
    ia_client *c = ia_client_init(&o, &err);
    if (!c) print_error("client: %s\n", err.msg);
    return c;
}

/* Greedy text of a chat (chatml, one user message) through the library, as `generate --chat-template`. */
static char *library_chat(const char *user, int max_tokens) {
    ia_chat_msg m = {"user", user};
    ia_error err = {0};
    char *f = ia_chat_apply(IA_CHAT_TEMPLATE_CHATML, &m, 1, true, &err);
    assert_non_null(f);
    ia_generate_opts go = ia_generate_opts_default();
    go.parse_special = true;
    go.sampling.max_tokens = max_tokens;
    ia_completion c;
    const char *p = f;
    assert_int_equal(ia_generate(M, &p, 1, &go, &c, &err), IA_OK);
    char *text = ia_strdup(c.text);
    ia_completion_clear(&c);
    ia_free(f);
    return text;
}

static void test_chat_equals_library(void **state) {
    (void)state;
    ia_client *c = client_new(KEY_ENV);
    assert_non_null(c);
    ia_chat_msg m = {"user", "Tell me about a dog."};
    ia_client_chat_req r = ia_client_chat_req_default();
    r.messages = &m;
    r.n_messages = 1;
    r.temperature = 0;
    r.max_tokens = 24;
    r.no_cache = true;
    ia_client_resp resp = {0};
    ia_error err = {0};
    assert_int_equal(ia_client_chat(c, &r, &resp, &err), IA_OK);
    assert_int_equal(resp.http_status, 200);
    assert_int_equal(resp.n_choices, 1);
    char *want = library_chat(m.content, 24);
    assert_string_equal(resp.choices[0].content, want);
    assert_false(resp.usage_missing);
    assert_int_equal(resp.usage.completion_tokens, 24);
    assert_int_equal(resp.usage.total_tokens, resp.usage.prompt_tokens + 24);
    assert_string_equal(resp.model, "stories260K");
    ia_free(want);
    ia_client_resp_clear(&resp);
    ia_client_free(c);
}

static void test_chat_many_concurrent(void **state) {
    (void)state;
    ia_client *c = client_new(KEY_ENV);
    assert_non_null(c);
    enum { N = 6 };
    static const char *users[N] = {"Lily and Ben", "The cat", "A red ball", "The sun", "One day", "Tom ran"};
    ia_chat_msg msgs[N];
    ia_client_chat_req reqs[N];
    ia_client_resp resps[N];
    ia_error errs[N];
    memset(resps, 0, sizeof resps);
    memset(errs, 0, sizeof errs);
    for (int i = 0; i < N; i++) {
        msgs[i] = (ia_chat_msg){"user", users[i]};
        reqs[i] = ia_client_chat_req_default();
        reqs[i].messages = &msgs[i];
        reqs[i].n_messages = 1;
        reqs[i].temperature = 0;
        reqs[i].max_tokens = 20;
        reqs[i].no_cache = true;
    }
    assert_int_equal(ia_client_chat_many(c, reqs, N, resps, errs), IA_OK);
    for (int i = 0; i < N; i++) {
        char *want = library_chat(users[i], 20);
        assert_string_equal(resps[i].choices[0].content, want);
        ia_free(want);
        ia_client_resp_clear(&resps[i]);
    }
    ia_client_free(c);
}

/* lm-eval's protocol: echo + logprobs over context+continuation; the continuation's summed logprob
 * must equal ia_score's (same tokenization: the pair splits where the context's tokens end). */
static void test_completion_echo_equals_score(void **state) {
    (void)state;
    ia_client *c = client_new(KEY_ENV);
    assert_non_null(c);
    const char *ctx = "Once upon a time, there was a little girl", *cont = " named Lily";
    char whole[128];
    snprintf(whole, sizeof whole, "%s%s", ctx, cont);
    ia_error err = {0};
    int32_t *ids = NULL;
    int n_ctx_tok = ia_tokenizer_encode(ia_model_tokenizer(M), ctx, strlen(ctx), true, false, &ids, &err);
    ia_free(ids);
    assert_true(n_ctx_tok > 1);
    ia_client_completion_req r = ia_client_completion_req_default();
    r.prompt = whole;
    r.max_tokens = 1;
    r.temperature = 0;
    r.logprobs = 1;
    r.echo = true;
    r.no_cache = true;
    ia_client_resp resp = {0};
    assert_int_equal(ia_client_complete(c, &r, &resp, &err), IA_OK);
    assert_int_equal(resp.n_choices, 1);
    ia_client_logprobs *lp = resp.choices[0].logprobs;
    assert_non_null(lp);
    int np = (int)resp.usage.prompt_tokens;
    assert_int_equal(lp->n, np + 1);
    assert_true(isnan(lp->token_logprobs[0]));
    double sum = 0;
    for (int i = n_ctx_tok; i < np; i++) sum += lp->token_logprobs[i];
    ia_score_request sr = {ctx, cont};
    ia_score_result res;
    assert_int_equal(ia_score(M, &sr, 1, &res, &err), IA_OK);
    assert_int_equal(res.n_tokens, np - n_ctx_tok);
    assert_true(fabs(res.logprob - sum) < 1e-3);
    assert_true(strncmp(resp.choices[0].content, whole, strlen(whole)) == 0);
    ia_score_result_clear(&res);
    ia_client_resp_clear(&resp);
    ia_client_free(c);
}

static void test_errors(void **state) {
    (void)state;
    ia_error err = {0};
    ia_chat_msg m = {"user", "hi"};
    ia_client_chat_req r = ia_client_chat_req_default();
    r.messages = &m;
    r.n_messages = 1;
    r.max_tokens = 4;
    r.no_cache = true;
    ia_client_resp resp = {0};

    /* wrong key: 401, not retried, and the key never shows in what comes back */
    setenv("IA_TEST_SERVER_BADKEY", "wrong-key", 1);
    ia_client *bad = client_new("IA_TEST_SERVER_BADKEY");
    assert_non_null(bad);
    assert_int_not_equal(ia_client_chat(bad, &r, &resp, &err), IA_OK);
    assert_int_equal(resp.http_status, 401);
    assert_int_equal(resp.attempts, 1);
    assert_null(strstr(err.msg, KEY));
    ia_client_resp_clear(&resp);
    ia_client_free(bad);

    ia_client *c = client_new(KEY_ENV);
    assert_non_null(c);
    r.model = "no-such-model";
    memset(&err, 0, sizeof err);
    assert_int_not_equal(ia_client_chat(c, &r, &resp, &err), IA_OK);
    assert_int_equal(resp.http_status, 404);
    ia_client_resp_clear(&resp);

    r.model = NULL;
    r.temperature = 7; /* outside [0, 2] */
    assert_int_not_equal(ia_client_chat(c, &r, &resp, &err), IA_OK);
    assert_int_equal(resp.http_status, 400);
    assert_non_null(strstr(err.msg, "temperature"));
    ia_client_resp_clear(&resp);
    ia_client_free(c);
}

/* The library call behind echo: logprobs of a sequence match ia_score's per-token values. */
static void test_token_logprobs_library(void **state) {
    (void)state;
    ia_error err = {0};
    const char *ctx = "The cat", *cont = " sat on the mat";
    char whole[64];
    snprintf(whole, sizeof whole, "%s%s", ctx, cont);
    int32_t *ids = NULL, *cids = NULL;
    int n = ia_tokenizer_encode(ia_model_tokenizer(M), whole, strlen(whole), true, false, &ids, &err);
    int nc = ia_tokenizer_encode(ia_model_tokenizer(M), ctx, strlen(ctx), true, false, &cids, &err);
    ia_free(cids);
    assert_true(n > nc && nc > 0);
    float lp[64];
    int32_t top_ids[64 * 3];
    float top_lp[64 * 3];
    ia_token_lp_job j = {ids, n, nc, 3, lp, top_ids, top_lp};
    ia_token_lp_job none = {ids, n, n, 0, lp, NULL, NULL}; /* asks for nothing */
    ia_token_lp_job jobs[2] = {none, j};
    assert_int_equal(ia_token_logprobs(M, jobs, 2, 2, &err), IA_OK);
    ia_score_request sr = {ctx, cont};
    ia_score_result res;
    assert_int_equal(ia_score(M, &sr, 1, &res, &err), IA_OK);
    assert_int_equal(res.n_tokens, n - nc);
    for (int i = nc; i < n; i++) {
        assert_true(fabsf(lp[i] - res.token_logprobs[i - nc]) < 1e-4f);
        /* alternatives are sorted and the first is the most likely */
        assert_true(top_lp[i * 3] >= top_lp[i * 3 + 1] && top_lp[i * 3 + 1] >= top_lp[i * 3 + 2]);
        assert_true(lp[i] <= top_lp[i * 3] + 1e-6f);
    }
    int32_t bad = 100000;
    ia_token_lp_job jb = {&bad, 1, 1, 0, lp, NULL, NULL};
    assert_int_equal(ia_token_logprobs(M, &jb, 1, 1, &err), IA_ERR_RANGE);
    ia_score_result_clear(&res);
    ia_free(ids);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chat_equals_library),
        cmocka_unit_test(test_chat_many_concurrent),
        cmocka_unit_test(test_completion_echo_equals_score),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_token_logprobs_library),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
