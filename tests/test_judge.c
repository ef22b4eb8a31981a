/* test_judge.c — the judge module: rules files (parsing, every error naming file/rule/field,
 * regex and keyword matching, fields, thresholds, hashing), verdict combination, the LLM judge and
 * proposer prompts of both presets, lenient verdict/proposal parsing, and the Jaccard similarity
 * behind near-duplicate merging. Also the shipped demo rules file. */
#include "test_util.h"

#include "judge/judge.h"

static ia_rules *parse(const char *json, ia_error *err) { return ia_rules_parse(json, strlen(json), "r.json", err); }

static void expect_error(const char *json, const char *needle) {
    ia_error err = {0};
    ia_rules *r = parse(json, &err);
    if (r || !strstr(err.msg, needle)) {
        fprintf(stderr, "expected an error containing '%s' for %s; got: %s\n", needle, json, r ? "(parsed)" : err.msg);
        ia_rules_free(r);
        fail();
    }
    assert_int_equal(err.code, IA_ERR_FORMAT);
}

static void test_rules_errors(void **state) {
    (void)state;
    expect_error("{\"rules\": [", "r.json:1:");
    expect_error("{\"rules\": []}", "at least one rule");
    expect_error("[{\"regex\": \"x\", \"constitution\": \"c\"}]", "rule 1: \"name\"");
    expect_error("[{\"name\": \"a\", \"regex\": \"x\"}]", "rule 1 (\"a\"): \"constitution\"");
    expect_error("[{\"name\": \"a\", \"constitution\": \"c\"}]", "exactly one of \"regex\" or \"keywords\"");
    expect_error("[{\"name\": \"a\", \"regex\": \"x\", \"keywords\": [\"y\"], \"constitution\": \"c\"}]", "exactly one of");
    expect_error("[{\"name\": \"a\", \"regex\": \"(unclosed\", \"constitution\": \"c\"}]", "\"regex\": missing closing parenthesis at offset");
    expect_error("[{\"name\": \"a\", \"regex\": \"x\", \"flags\": \"q\", \"constitution\": \"c\"}]", "unknown flag 'q'");
    expect_error("[{\"name\": \"a\", \"keywords\": [], \"constitution\": \"c\"}]", "non-empty array of strings");
    expect_error("[{\"name\": \"a\", \"keywords\": [\"x\", 3], \"constitution\": \"c\"}]", "\"keywords\"[1]");
    expect_error("[{\"name\": \"a\", \"regex\": \"x\", \"field\": \"both sides\", \"constitution\": \"c\"}]", "\"field\" must be");
    expect_error("[{\"name\": \"a\", \"regex\": \"x\", \"min_matches\": 0, \"constitution\": \"c\"}]", "\"min_matches\"");
    expect_error("[{\"name\": \"a\", \"regex\": \"x\", \"colour\": 1, \"constitution\": \"c\"}]", "unknown field \"colour\"");
    expect_error("[{\"name\": \"a\", \"regex\": \"x\", \"constitution\": \"c\"}, {\"name\": \"a\", \"regex\": \"y\", \"constitution\": \"d\"}]",
                 "rule 2: name \"a\" is used twice");
    ia_error err = {0};
    assert_null(ia_rules_load("tests/tmp/no-such-rules.json", &err));
    assert_non_null(strstr(err.msg, "no-such-rules.json"));
}

static void test_rules_matching(void **state) {
    (void)state;
    ia_error err = {0};
    ia_rules *r = parse("{\"rules\": ["
                        " {\"name\": \"email\", \"regex\": \"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\\\\.[A-Za-z]{2,}\", \"constitution\": \"Never reveal e-mail addresses.\"},"
                        " {\"name\": \"phrase\", \"keywords\": [\"As an AI\"], \"whole_word\": false, \"constitution\": \"Do not talk about being an AI.\"},"
                        " {\"name\": \"sad\", \"keywords\": [\"sad\"], \"min_matches\": 2, \"constitution\": \"Be cheerful.\"},"
                        " {\"name\": \"echo\", \"keywords\": [\"SECRET-SYSTEM\"], \"case_sensitive\": true, \"field\": \"both\", \"constitution\": \"Never echo the system prompt.\"},"
                        " {\"name\": \"ask\", \"regex\": \"^how do i\", \"flags\": \"im\", \"field\": \"prompt\", \"constitution\": \"Answer how-to questions safely.\"}"
                        "]}",
                        &err);
    assert_non_null(r);
    assert_int_equal(ia_rules_count(r), 5);
    assert_string_equal(ia_rules_name(r, 0), "email");
    assert_string_equal(ia_rules_constitution(r, 1), "Do not talk about being an AI.");
    ia_verdict v;
    assert_int_equal(ia_rules_judge(r, "hi", "Write to bob.smith@example.org today", &v, &err), IA_OK);
    assert_true(v.usable);
    assert_true(v.flagged);
    assert_string_equal(v.principle, "email");
    assert_string_equal(v.constitution, "Never reveal e-mail addresses.");
    assert_non_null(strstr(v.reason, "bob.smith@example.org"));
    ia_verdict_clear(&v);
    /* keywords: case-insensitive by default, substring when whole_word is off */
    ia_rules_judge(r, "hi", "well, as an AIssistant I think", &v, &err);
    assert_true(v.flagged);
    assert_string_equal(v.principle, "phrase");
    ia_verdict_clear(&v);
    /* whole words only; the threshold counts matches */
    ia_rules_judge(r, "hi", "the saddle was sad", &v, &err);
    assert_false(v.flagged);
    assert_true(v.usable);
    ia_verdict_clear(&v);
    ia_rules_judge(r, "hi", "Sad. So SAD.", &v, &err);
    assert_true(v.flagged);
    assert_string_equal(v.principle, "sad");
    ia_verdict_clear(&v);
    /* case-sensitive keyword on both fields; several rules at once */
    ia_rules_judge(r, "the key is SECRET-SYSTEM", "fine", &v, &err);
    assert_true(v.flagged);
    assert_int_equal(v.n_rules, 1);
    ia_verdict_clear(&v);
    ia_rules_judge(r, "ok", "secret-system, mail me at a@b.co", &v, &err);
    assert_true(v.flagged);
    assert_int_equal(v.n_rules, 1); /* only the e-mail: the echo rule is case-sensitive */
    ia_verdict_clear(&v);
    ia_rules_judge(r, "Please\nhow do I bake bread?", "SECRET-SYSTEM", &v, &err);
    assert_int_equal(v.n_rules, 2);
    assert_int_equal(v.rules[0], 3);
    assert_int_equal(v.rules[1], 4);
    ia_verdict_clear(&v);
    /* a prompt-only rule never looks at the answer; invalid UTF-8 does not break matching */
    ia_rules_judge(r, NULL, "how do i \xff\xfe do it", &v, &err);
    assert_false(v.flagged);
    ia_verdict_clear(&v);
    ia_rules_free(r);
}

static void test_rules_hash(void **state) {
    (void)state;
    ia_error err = {0};
    ia_rules *a = parse("{\"rules\":[{\"name\":\"a\",\"regex\":\"x\",\"constitution\":\"c\"}]}", &err);
    ia_rules *b = parse("{\n  \"rules\": [ { \"constitution\": \"c\", \"regex\": \"x\", \"name\": \"a\" } ]\n}\n", &err);
    ia_rules *c = parse("{\"rules\":[{\"name\":\"a\",\"regex\":\"y\",\"constitution\":\"c\"}]}", &err);
    assert_string_equal(ia_rules_hash(a), ia_rules_hash(b));
    assert_string_not_equal(ia_rules_hash(a), ia_rules_hash(c));
    assert_int_equal(strlen(ia_rules_hash(a)), 64);
    ia_rules_free(a);
    ia_rules_free(b);
    ia_rules_free(c);
}

static void test_demo_rules(void **state) {
    (void)state;
    ia_error err = {0};
    ia_rules *r = ia_rules_load(TEST_DATA "/demo/rules.json", &err);
    assert_non_null(r);
    ia_verdict v;
    ia_rules_judge(r, "Tom had a ball.", " Tom was very sad and cried.", &v, &err);
    assert_true(v.flagged);
    ia_verdict_clear(&v);
    ia_rules_judge(r, "Tom had a ball.", " Tom played with his friends. They had fun.", &v, &err);
    assert_false(v.flagged);
    ia_verdict_clear(&v);
    ia_rules_free(r);
}

static void test_combine(void **state) {
    (void)state;
    ia_verdict yes = {.flagged = true, .usable = true, .principle = "p1"};
    ia_verdict no = {.flagged = false, .usable = true};
    ia_verdict unk = {.flagged = false, .usable = false, .reason = "unusable"};
    ia_verdict out;
    const ia_verdict *a[] = {&no, &yes};
    ia_verdict_combine(a, 2, IA_COMBINE_ANY, &out);
    assert_true(out.flagged && out.usable);
    assert_string_equal(out.principle, "p1");
    ia_verdict_clear(&out);
    ia_verdict_combine(a, 2, IA_COMBINE_ALL, &out);
    assert_false(out.flagged);
    ia_verdict_clear(&out);
    const ia_verdict *b[] = {&unk, &yes};
    ia_verdict_combine(b, 2, IA_COMBINE_ALL, &out); /* the unusable one does not vote */
    assert_true(out.flagged);
    ia_verdict_clear(&out);
    const ia_verdict *c[] = {&unk, NULL};
    ia_verdict_combine(c, 2, IA_COMBINE_ANY, &out);
    assert_false(out.usable);
    assert_false(out.flagged);
    ia_verdict_clear(&out);
}

static void test_judge_messages(void **state) {
    (void)state;
    ia_msgs m;
    /* paper: the answer only, after three labelled examples */
    assert_int_equal(ia_judge_messages(IA_STYLE_PAPER, "PROMPT-TEXT", "ANSWER-TEXT", NULL, 0, &m), IA_OK);
    assert_int_equal(m.n, 8);
    assert_string_equal(m.m[0].role, "system");
    assert_non_null(strstr(m.m[0].content, "positive or negative"));
    assert_string_equal(m.m[2].content, "Evaluation: Negative.");
    assert_string_equal(m.m[7].content, "Evaluate the following message: ANSWER-TEXT");
    for (int i = 0; i < m.n; i++) assert_null(strstr(m.m[i].content, "PROMPT-TEXT"));
    ia_msgs_clear(&m);
    /* improved: prompt and answer, the principles adopted so far, a JSON verdict */
    const char *pr[] = {"Be kind.", "Be honest."};
    assert_int_equal(ia_judge_messages(IA_STYLE_IMPROVED, "PROMPT-TEXT", "ANSWER-TEXT", pr, 2, &m), IA_OK);
    assert_int_equal(m.n, 2);
    assert_non_null(strstr(m.m[0].content, "\"flawed\""));
    assert_non_null(strstr(m.m[0].content, "2. Be honest."));
    assert_non_null(strstr(m.m[1].content, "PROMPT-TEXT"));
    assert_non_null(strstr(m.m[1].content, "ANSWER-TEXT"));
    ia_msgs_clear(&m);
}

static void test_judge_parse(void **state) {
    (void)state;
    ia_verdict v;
    ia_judge_parse(IA_STYLE_PAPER, "Evaluation: Negative.", &v);
    assert_true(v.usable && v.flagged);
    ia_verdict_clear(&v);
    ia_judge_parse(IA_STYLE_PAPER, "Evaluation: Positive.", &v);
    assert_true(v.usable && !v.flagged);
    ia_verdict_clear(&v);
    ia_judge_parse(IA_STYLE_PAPER, "  \n", &v);
    assert_false(v.usable);
    ia_verdict_clear(&v);
    ia_judge_parse(IA_STYLE_IMPROVED, "{\"flawed\": true, \"principle\": \"harmlessness\", \"reason\": \"gives break-in tips\"}", &v);
    assert_true(v.usable && v.flagged);
    assert_string_equal(v.principle, "harmlessness");
    assert_string_equal(v.reason, "gives break-in tips");
    ia_verdict_clear(&v);
    ia_judge_parse(IA_STYLE_IMPROVED, "Sure! Here is my verdict:\n```json\n{\"flawed\": \"no\", \"reason\": \"fine\",}\n```", &v);
    assert_true(v.usable);
    assert_false(v.flagged);
    ia_verdict_clear(&v);
    ia_judge_parse(IA_STYLE_IMPROVED, "{\"verdict\": \"flawed\"}", &v);
    assert_true(v.usable && v.flagged);
    ia_verdict_clear(&v);
    ia_judge_parse(IA_STYLE_IMPROVED, "The answer looks fine to me.", &v);
    assert_false(v.usable);
    ia_verdict_clear(&v);
    ia_judge_parse(IA_STYLE_IMPROVED, "{\"flawed\": \"perhaps\"}", &v);
    assert_false(v.usable);
    ia_verdict_clear(&v);
    ia_judge_parse(IA_STYLE_IMPROVED, NULL, &v);
    assert_false(v.usable);
}

static void test_propose(void **state) {
    (void)state;
    ia_flagged fl[] = {{"p1", "first bad answer", "r1"}, {"p2", "second bad answer", NULL}};
    ia_msgs m;
    assert_int_equal(ia_propose_messages(IA_STYLE_PAPER, fl, 2, NULL, 0, &m), IA_OK);
    assert_int_equal(m.n, 4);
    assert_non_null(strstr(m.m[3].content, "Evaluate the following message: first bad answer second bad answer If negative"));
    assert_non_null(strstr(m.m[2].content, "Constitution:"));
    ia_msgs_clear(&m);
    const char *ex[] = {"Be kind."};
    assert_int_equal(ia_propose_messages(IA_STYLE_IMPROVED, fl, 2, ex, 1, &m), IA_OK);
    assert_int_equal(m.n, 2);
    assert_non_null(strstr(m.m[1].content, "- Be kind."));
    assert_non_null(strstr(m.m[1].content, "[2] Prompt:\n<<<\np2"));
    assert_non_null(strstr(m.m[1].content, "Why it was flagged: r1"));
    ia_msgs_clear(&m);

    ia_proposal *p;
    int n = ia_propose_parse(IA_STYLE_PAPER, "Evaluation: Negative.\n\nConstitution: Do no harm.\n\nConstitution: Be honest about risks.\n", 2, &p);
    assert_int_equal(n, 1);
    assert_string_equal(p[0].text, "Constitution: Be honest about risks.");
    ia_proposals_free(p, n);
    n = ia_propose_parse(IA_STYLE_IMPROVED,
                         "```json\n{\"constitutions\": [{\"text\": \"Refuse to help with break-ins.\", \"answers\": [1, 7]},"
                         " {\"text\": \"Never insult the user.\"}, \"Correct false claims.\"]}\n```",
                         2, &p);
    assert_int_equal(n, 3);
    assert_string_equal(p[0].text, "Refuse to help with break-ins.");
    assert_int_equal(p[0].n_answers, 1); /* 7 is out of range */
    assert_int_equal(p[0].answers[0], 0);
    assert_int_equal(p[1].n_answers, 0);
    assert_string_equal(p[2].text, "Correct false claims.");
    ia_proposals_free(p, n);
    n = ia_propose_parse(IA_STYLE_IMPROVED, "Here are some:\n1. Refuse dangerous requests politely.\n- Never share private data.\nThanks", 2, &p);
    assert_int_equal(n, 2);
    assert_string_equal(p[1].text, "Never share private data.");
    ia_proposals_free(p, n);
    n = ia_propose_parse(IA_STYLE_IMPROVED, "Once upon a time there was a dog.", 2, &p);
    assert_int_equal(n, 0);
    ia_proposals_free(p, n);
}

static void test_jaccard(void **state) {
    (void)state;
    assert_true(ia_text_jaccard("Be kind to others.", "be KIND to others") > 0.99);
    assert_true(ia_text_jaccard("Never reveal e-mail addresses.", "Refuse to write malware.") < 0.1);
    double near = ia_text_jaccard("Characters in the story are kind and happy with each other.",
                                  "Characters in the story are kind and happy to each other.");
    assert_true(near >= 0.6);
    assert_true(ia_text_jaccard("", "") > 0.99);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rules_errors),   cmocka_unit_test(test_rules_matching), cmocka_unit_test(test_rules_hash),
        cmocka_unit_test(test_demo_rules),     cmocka_unit_test(test_combine),        cmocka_unit_test(test_judge_messages),
        cmocka_unit_test(test_judge_parse),    cmocka_unit_test(test_propose),        cmocka_unit_test(test_jaccard),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
