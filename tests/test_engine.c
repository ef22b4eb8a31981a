/* test_engine.c — batched generation and scoring on stories260K: batched == separate, the golden
 * greedy sample, stopping rules, seeds, scoring consistency, bad requests. */
#include "test_util.h"

#include <math.h>

#include "engine/engine.h"

static const int32_t REF_IDS[64] = {403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338,
                                    401, 396, 267, 337, 410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426, 385,
                                    328, 432, 358, 394, 261, 370, 432, 352, 266, 268, 388, 426, 338, 391, 266, 267,
                                    337, 335, 312, 432, 398, 312, 286, 267, 414, 270, 333, 415, 426, 13,  438, 310};
static const char *REF_TEXT = " Once upon a time, there was a little girl named Lily. She loved to play outside in "
                              "the park. One day, she saw a big, red ball. She wanted to play with it, but it was too "
                              "high.\nLily";

static ia_model *model;

static int setup(void **state) {
    ia_error err = {0};
    model = ia_model_load(TEST_STORIES, &err);
    if (!model) fprintf(stderr, "load: %s\n", err.msg);
    return model ? 0 : -1;
}

static int teardown(void **state) {
    ia_model_free(model);
    return 0;
}

static void test_golden_greedy(void **state) {
    ia_generate_opts o = ia_generate_opts_default();
    o.sampling.max_tokens = 64;
    const char *p[1] = {""};
    ia_completion c;
    ia_error err = {0};
    assert_int_equal(ia_generate(model, p, 1, &o, &c, &err), IA_OK);
    assert_int_equal(c.n_tokens, 64);
    assert_memory_equal(c.tokens, REF_IDS, sizeof REF_IDS);
    assert_string_equal(c.text, REF_TEXT);
    assert_int_equal(c.finish, IA_FINISH_LENGTH);
    assert_int_equal(c.n_prompt_tokens, 1); /* BOS alone */
    ia_completion_clear(&c);
}

/* N prompts decoded together (at several parallelism levels) give exactly the tokens of N separate runs. */
static void test_batched_equals_separate(void **state) {
    const char *prompts[] = {"Once upon a time", "Lily and Ben went", "", "The cat", "One day, a little bird",
                             "Tom had a big red", "She", "The sun was shining and"};
    const int n = (int)(sizeof prompts / sizeof prompts[0]);
    ia_error err = {0};
    ia_generate_opts o = ia_generate_opts_default();
    o.sampling.max_tokens = 48;
    ia_completion single[8];
    for (int i = 0; i < n; i++) {
        o.n_parallel = 1;
        assert_int_equal(ia_generate(model, &prompts[i], 1, &o, &single[i], &err), IA_OK);
        assert_true(single[i].n_tokens > 0);
    }
    int pars[] = {2, 3, 8};
    for (int k = 0; k < 3; k++) {
        ia_completion batch[8];
        o.n_parallel = pars[k];
        assert_int_equal(ia_generate(model, prompts, n, &o, batch, &err), IA_OK);
        for (int i = 0; i < n; i++) {
            assert_int_equal(batch[i].n_tokens, single[i].n_tokens);
            assert_memory_equal(batch[i].tokens, single[i].tokens, sizeof(int32_t) * (size_t)single[i].n_tokens);
            assert_string_equal(batch[i].text, single[i].text);
            ia_completion_clear(&batch[i]);
        }
    }
    for (int i = 0; i < n; i++) ia_completion_clear(&single[i]);
}

/* Sampled generation: per-prompt seeds make results independent of batching; same seed, same text. */
static void test_seeded_sampling(void **state) {
    const char *prompts[] = {"Once upon a time", "Once upon a time", "The dog"};
    ia_error err = {0};
    ia_generate_opts o = ia_generate_opts_default();
    o.sampling.max_tokens = 32;
    o.sampling.temperature = 0.9f;
    o.sampling.top_p = 0.95f;
    o.sampling.seed = 1234;
    ia_completion a[3], b[3];
    o.n_parallel = 3;
    assert_int_equal(ia_generate(model, prompts, 3, &o, a, &err), IA_OK);
    o.n_parallel = 1;
    assert_int_equal(ia_generate(model, prompts, 3, &o, b, &err), IA_OK);
    for (int i = 0; i < 3; i++) assert_string_equal(a[i].text, b[i].text);
    /* prompts 0 and 1 are equal but get seeds 1234 and 1235: they should differ */
    assert_string_not_equal(a[0].text, a[1].text);
    for (int i = 0; i < 3; i++) {
        ia_completion_clear(&a[i]);
        ia_completion_clear(&b[i]);
    }
}

static void test_stop_and_limits(void **state) {
    ia_error err = {0};
    ia_generate_opts o = ia_generate_opts_default();
    o.sampling.max_tokens = 64;
    o.sampling.n_stop = 2;
    o.sampling.stop[0] = "ball";
    o.sampling.stop[1] = "girl";
    const char *p[1] = {""};
    ia_completion c;
    assert_int_equal(ia_generate(model, p, 1, &o, &c, &err), IA_OK);
    assert_int_equal(c.finish, IA_FINISH_STOP);
    assert_string_equal(c.text, " Once upon a time, there was a little ");
    ia_completion_clear(&c);

    o.sampling.n_stop = 0;
    o.sampling.max_tokens = 5;
    assert_int_equal(ia_generate(model, p, 1, &o, &c, &err), IA_OK);
    assert_int_equal(c.n_tokens, 5);
    assert_int_equal(c.finish, IA_FINISH_LENGTH);
    assert_memory_equal(c.tokens, REF_IDS, 5 * sizeof(int32_t));
    ia_completion_clear(&c);

    /* A context that ends mid-generation stops with IA_FINISH_CONTEXT. */
    o.sampling.max_tokens = 100;
    o.n_ctx = 10;
    assert_int_equal(ia_generate(model, p, 1, &o, &c, &err), IA_OK);
    assert_int_equal(c.finish, IA_FINISH_CONTEXT);
    assert_int_equal(c.n_tokens, 10); /* 9 fed after BOS, the 10th sampled from the last position */
    ia_completion_clear(&c);
}

/* The reference greedy sample is greedy under scoring too, and batched scoring equals one-by-one. */
static void test_score(void **state) {
    ia_error err = {0};
    ia_score_request reqs[4] = {
        {"", REF_TEXT + 1}, /* SPM adds the leading space itself (add_space_prefix) */
        {" Once upon a time,", " there was a little girl"},
        {" Once upon a time, there was a", " big green dragon"},
        {"Lily", " liked cake"},
    };
    ia_score_result all[4], one;
    assert_int_equal(ia_score(model, reqs, 4, all, &err), IA_OK);
    assert_true(all[0].is_greedy);
    assert_int_equal(all[0].n_tokens, 64);
    assert_true(all[1].is_greedy);
    assert_false(all[2].is_greedy);
    for (int i = 0; i < 4; i++) {
        double sum = 0;
        for (int k = 0; k < all[i].n_tokens; k++) {
            assert_true(all[i].token_logprobs[k] <= 0.0f);
            sum += all[i].token_logprobs[k];
        }
        assert_true(fabs(sum - all[i].logprob) < 1e-4 * (1 + fabs(sum)));
        assert_int_equal(ia_score(model, &reqs[i], 1, &one, &err), IA_OK);
        assert_int_equal(one.n_tokens, all[i].n_tokens);
        assert_memory_equal(one.token_logprobs, all[i].token_logprobs, sizeof(float) * (size_t)one.n_tokens);
        ia_score_result_clear(&one);
    }
    /* The likely continuation scores higher than the unlikely one. */
    assert_true(all[1].logprob / all[1].n_tokens > all[2].logprob / all[2].n_tokens);
    for (int i = 0; i < 4; i++) ia_score_result_clear(&all[i]);
}

/* Trailing spaces of the context move to the continuation (lm-eval's _encode_pair). */
static void test_score_trailing_space(void **state) {
    ia_error err = {0};
    ia_score_request a = {" Once upon a time, there was a", " little girl"};
    ia_score_request b = {" Once upon a time, there was a ", "little girl"};
    ia_score_result ra, rb;
    assert_int_equal(ia_score(model, &a, 1, &ra, &err), IA_OK);
    assert_int_equal(ia_score(model, &b, 1, &rb, &err), IA_OK);
    assert_int_equal(ra.n_tokens, rb.n_tokens);
    assert_true(fabs(ra.logprob - rb.logprob) < 1e-6);
    ia_score_result_clear(&ra);
    ia_score_result_clear(&rb);
}

static void test_bad_requests(void **state) {
    ia_error err = {0};
    ia_engine *e = ia_engine_init(model, 2, 16, 8, &err);
    assert_non_null(e);
    int32_t longp[20] = {1};
    ia_request r = {0};
    r.prompt = longp;
    r.n_prompt = 20;
    r.sampling = ia_sampling_default();
    assert_int_equal(ia_engine_submit(e, &r, &err), -1);
    assert_int_equal(err.code, IA_ERR_RANGE);
    r.n_prompt = 0;
    assert_int_equal(ia_engine_submit(e, &r, &err), -1);
    assert_int_equal(err.code, IA_ERR_ARG);
    /* an out-of-vocabulary prompt token fails the step cleanly */
    int32_t bad[2] = {1, 100000};
    r.prompt = bad;
    r.n_prompt = 2;
    int id = ia_engine_submit(e, &r, &err);
    assert_true(id >= 0);
    assert_int_equal(ia_engine_step(e, &err), -1);
    assert_int_equal(err.code, IA_ERR_RANGE);
    ia_completion c;
    assert_int_equal(ia_engine_take(e, id, &c), 1);
    ia_completion_clear(&c);
    ia_engine_free(e);
}

/* Streaming callbacks deliver exactly the final text, never a prefix of a stop string. */
typedef struct stream_acc { ia_buf b; int done; } stream_acc;
static void on_text(void *ud, const char *t, size_t n) { ia_buf_append(&((stream_acc *)ud)->b, t, n); }
static void on_done(void *ud, int id) { ((stream_acc *)ud)->done++; }

static void test_streaming(void **state) {
    ia_error err = {0};
    ia_engine *e = ia_engine_init(model, 2, 128, 64, &err);
    assert_non_null(e);
    stream_acc acc = {0};
    int32_t bos = 1;
    ia_request r = {0};
    r.prompt = &bos;
    r.n_prompt = 1;
    r.sampling = ia_sampling_default();
    r.sampling.max_tokens = 64;
    r.sampling.n_stop = 1;
    r.sampling.stop[0] = " named Lily";
    r.on_text = on_text;
    r.on_done = on_done;
    r.ud = &acc;
    int id = ia_engine_submit(e, &r, &err);
    while (ia_engine_step(e, &err) > 0) {
    }
    ia_completion c;
    assert_int_equal(ia_engine_take(e, id, &c), 1);
    assert_int_equal(acc.done, 1);
    assert_string_equal(c.text, " Once upon a time, there was a little girl");
    assert_string_equal(acc.b.data, c.text);
    ia_completion_clear(&c);
    ia_buf_free(&acc.b);
    ia_engine_free(e);
}

/* Taken ids are reused, and a reused id carries only the new request's result. */
static void test_id_reuse(void **state) {
    ia_error err = {0};
    ia_engine *e = ia_engine_init(model, 1, 64, 16, &err);
    assert_non_null(e);
    int32_t bos = 1;
    ia_request r = {0};
    r.prompt = &bos;
    r.n_prompt = 1;
    r.sampling = ia_sampling_default();
    r.sampling.max_tokens = 3;
    int a = ia_engine_submit(e, &r, &err), b = ia_engine_submit(e, &r, &err);
    assert_true(a >= 0 && b >= 0 && a != b);
    ia_engine_cancel(e, b); /* a waiting request that is cancelled finishes without a slot */
    while (ia_engine_step(e, &err) > 0) {
    }
    ia_completion c;
    assert_int_equal(ia_engine_take(e, a, &c), 1);
    assert_int_equal(c.n_tokens, 3);
    assert_memory_equal(c.tokens, REF_IDS, 3 * sizeof(int32_t));
    ia_completion_clear(&c);
    assert_int_equal(ia_engine_take(e, b, &c), 1);
    assert_int_equal(c.n_tokens, 0);
    ia_completion_clear(&c);
    assert_int_equal(ia_engine_take(e, a, &c), 0); /* already taken */
    r.sampling.max_tokens = 5;
    int a2 = ia_engine_submit(e, &r, &err);
    assert_true(a2 == a || a2 == b);
    while (ia_engine_step(e, &err) > 0) {
    }
    assert_int_equal(ia_engine_take(e, a2, &c), 1);
    assert_int_equal(c.n_tokens, 5);
    assert_memory_equal(c.tokens, REF_IDS, 5 * sizeof(int32_t));
    ia_completion_clear(&c);
    ia_engine_free(e);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_greedy),     cmocka_unit_test(test_batched_equals_separate),
        cmocka_unit_test(test_seeded_sampling),   cmocka_unit_test(test_stop_and_limits),
        cmocka_unit_test(test_score),             cmocka_unit_test(test_score_trailing_space),
        cmocka_unit_test(test_bad_requests),      cmocka_unit_test(test_streaming),
        cmocka_unit_test(test_id_reuse),
    };
    return cmocka_run_group_tests_name("engine", tests, setup, teardown);
}
