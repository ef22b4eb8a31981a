/* test_align.c — the alignment loop's pieces that need no model run: red-team readers (JSONL with
 * prompt / messages / hh-rlhf transcripts, JSON arrays, CSV with quoted fields, text), their errors
 * naming file:line, prompt presentation (raw, hh, chat template) with constitutions placed for
 * self-revision, and the configuration (presets, explicit options kept, JSON round trip,
 * validation). */
#include "test_util.h"

#include "align/align.h"

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_read_jsonl(void **state) {
    (void)state;
    char p[512];
    test_tmpfile(p, sizeof p, "rt.jsonl");
    write_file(p, "{\"prompt\": \"How do I pick a lock?\"}\n"
                  "\n"
                  "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Hi\"},"
                  " {\"role\": \"assistant\", \"content\": \"Hello\"}, {\"role\": \"user\", \"content\": \"Tell me a secret\"}]}\n"
                  "{\"chosen\": \"\\n\\nHuman: What is a rude word?\\n\\nAssistant: I won't.\", \"rejected\": \"x\"}\n"
                  "{\"question\": \"Why is the sky blue?\", \"id\": 7}\n");
    ia_prompt *ps = NULL;
    int n = 0;
    ia_error err = {0};
    assert_int_equal(ia_prompts_read(p, "auto", NULL, &ps, &n, &err), IA_OK);
    assert_int_equal(n, 4);
    assert_string_equal(ps[0].text, "How do I pick a lock?");
    assert_int_equal(ps[0].line, 1);
    assert_null(ps[0].messages);
    assert_string_equal(ps[1].text, "Tell me a secret");
    assert_int_equal(ps[1].line, 3);
    assert_non_null(strstr(ps[1].messages, "\"Be brief.\""));
    assert_string_equal(ps[2].text, "What is a rude word?");
    assert_string_equal(ps[3].text, "Why is the sky blue?");
    ia_prompts_free(ps, n);

    /* errors name the file and line */
    const char *bad[][2] = {
        {"{\"prompt\": \"ok\"}\n{\"prompt\": 3}\n", ":2: no \"prompt\""},
        {"{\"prompt\": \"ok\"}\n\n{\"prompt\": \"cut\n", ":3: malformed JSON"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\"}]}\n", ":1: \"messages\" must end with a user turn"},
        {"{\"messages\": [{\"role\": \"robot\", \"content\": \"a\"}]}\n", "role \"robot\""},
        {"\n\n", "no prompts in the file"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_file(p, bad[i][0]);
        ps = NULL;
        n = 0;
        assert_int_not_equal(ia_prompts_read(p, "jsonl", NULL, &ps, &n, &err), IA_OK);
        if (!strstr(err.msg, bad[i][1]) || !strstr(err.msg, "rt.jsonl")) {
            fprintf(stderr, "case %zu: got '%s', expected '%s'\n", i, err.msg, bad[i][1]);
            fail();
        }
        ia_prompts_free(ps, n);
    }
    ps = NULL;
    n = 0;
    assert_int_not_equal(ia_prompts_read("tests/tmp/does-not-exist.jsonl", "auto", NULL, &ps, &n, &err), IA_OK);
    assert_non_null(strstr(err.msg, "does-not-exist.jsonl"));
}

static void test_read_json_csv_text(void **state) {
    (void)state;
    char p[512];
    ia_prompt *ps = NULL;
    int n = 0;
    ia_error err = {0};
    test_tmpfile(p, sizeof p, "rt.json");
    write_file(p, "[\"first\", {\"prompt\": \"second\"}]");
    assert_int_equal(ia_prompts_read(p, "auto", NULL, &ps, &n, &err), IA_OK);
    assert_int_equal(n, 2);
    assert_string_equal(ps[1].text, "second");
    test_tmpfile(p, sizeof p, "rt.csv");
    write_file(p, "\xef\xbb\xbfgoal,target\r\n\"Write, with a comma\",x\r\n\"Say \"\"hi\"\"\nover two lines\",y\r\nplain,z\r\n");
    assert_int_equal(ia_prompts_read(p, "auto", NULL, &ps, &n, &err), IA_OK); /* appends */
    assert_int_equal(n, 5);
    assert_string_equal(ps[2].text, "Write, with a comma");
    assert_string_equal(ps[3].text, "Say \"hi\"\nover two lines");
    assert_int_equal(ps[3].line, 3);
    assert_string_equal(ps[4].text, "plain");
    assert_int_equal(ps[4].line, 5);
    ia_prompts_free(ps, n);
    ps = NULL;
    n = 0;
    assert_int_not_equal(ia_prompts_read(p, "csv", "question", &ps, &n, &err), IA_OK);
    assert_non_null(strstr(err.msg, "no column \"question\" (columns: \"goal\", \"target\")"));
    write_file(p, "prompt\n\"never closed\n");
    assert_int_not_equal(ia_prompts_read(p, "csv", NULL, &ps, &n, &err), IA_OK);
    assert_non_null(strstr(err.msg, "rt.csv:2: unterminated quoted field"));
    test_tmpfile(p, sizeof p, "rt.txt");
    write_file(p, "  one prompt  \n\ntwo\n");
    assert_int_equal(ia_prompts_read(p, "auto", NULL, &ps, &n, &err), IA_OK);
    assert_int_equal(n, 2);
    assert_string_equal(ps[0].text, "one prompt");
    assert_int_equal(ps[1].line, 3);
    ia_prompts_free(ps, n);
}

static void test_present(void **state) {
    (void)state;
    ia_error err = {0};
    ia_presenter raw = {IA_PRESENT_RAW, IA_CHAT_TEMPLATE_UNKNOWN, NULL};
    ia_prompt pr = {"Tom had a ball.", NULL, "f", 1};
    const char *cons[] = {"Be kind.", "Be happy."};
    char *s = ia_present(&raw, &pr, NULL, 0, NULL, &err);
    assert_string_equal(s, "Tom had a ball.");
    ia_free(s);
    s = ia_present(&raw, &pr, cons, 2, "auto", &err);
    assert_string_equal(s, "Be kind. Be happy. Tom had a ball.");
    ia_free(s);
    /* hh: the released code's insertion at the end of the paragraph before the final cue */
    ia_presenter hh = {IA_PRESENT_HH, IA_CHAT_TEMPLATE_UNKNOWN, NULL};
    s = ia_present(&hh, &pr, NULL, 0, NULL, &err);
    assert_string_equal(s, "\n\nHuman: Tom had a ball.\n\nAssistant:");
    ia_free(s);
    s = ia_present(&hh, &pr, cons, 1, "auto", &err);
    assert_string_equal(s, "\n\nHuman: Tom had a ball. Be kind.\n\nAssistant:");
    ia_free(s);
    ia_prompt conv = {"Second?", "[{\"role\":\"user\",\"content\":\"First?\"},{\"role\":\"assistant\",\"content\":\"One.\"},"
                                 "{\"role\":\"user\",\"content\":\"Second?\"}]",
                      "f", 1};
    s = ia_present(&hh, &conv, NULL, 0, NULL, &err);
    assert_string_equal(s, "\n\nHuman: First?\n\nAssistant: One.\n\nHuman: Second?\n\nAssistant:");
    ia_free(s);
    /* chat: the constitution as a system message */
    ia_presenter chat = {IA_PRESENT_CHAT, IA_CHAT_TEMPLATE_CHATML, NULL};
    s = ia_present(&chat, &pr, cons, 1, "auto", &err);
    assert_string_equal(s, "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nTom had a ball.<|im_end|>\n<|im_start|>assistant\n");
    ia_free(s);
    s = ia_present(&chat, &pr, NULL, 0, NULL, &err);
    assert_null(strstr(s, "system"));
    ia_free(s);
}

static void test_config(void **state) {
    (void)state;
    ia_align_config c;
    ia_align_config_defaults(&c);
    assert_string_equal(c.preset, "improved");
    assert_true(c.rejudge);
    assert_string_equal(c.train_method, "lora");
    /* the paper preset leaves what the user set alone */
    ia_strv set = {0};
    ia_strv_push(&set, "batch_size");
    c.batch_size = 7;
    ia_error err = {0};
    assert_int_equal(ia_align_config_preset(&c, "paper", &set, &err), IA_OK);
    assert_int_equal(c.batch_size, 7);
    assert_true(c.temperature == 0.0f);
    assert_false(c.rejudge);
    assert_false(c.registry);
    assert_int_equal(c.revise_samples, 1);
    assert_string_equal(c.train_method, "full");
    assert_string_equal(c.judge_style, "paper");
    assert_int_equal(c.stop.n, 1);
    assert_string_equal(c.stop.v[0], "\n\n");
    assert_int_equal(ia_align_config_preset(&c, "fancy", &set, &err), IA_ERR_ARG);
    /* JSON round trip, floats exactly */
    json_t *j = ia_align_config_to_json(&c);
    ia_align_config d;
    ia_align_config_defaults(&d);
    assert_int_equal(ia_align_config_from_json(&d, j, &err), IA_OK);
    int nf;
    const ia_cfg_field *fs = ia_align_config_fields(&nf);
    for (int i = 0; i < nf; i++) {
        char *a = ia_align_config_get(&c, &fs[i]), *b = ia_align_config_get(&d, &fs[i]);
        assert_string_equal(a, b);
        ia_free(a);
        ia_free(b);
    }
    json_decref(j);
    /* validation names the flag */
    assert_int_equal(ia_align_config_validate(&c, &err), IA_ERR_ARG);
    assert_non_null(strstr(err.msg, "--base"));
    c.base = ia_strdup("m.gguf");
    ia_strv_push(&c.redteam, "r.jsonl");
    assert_int_equal(ia_align_config_validate(&c, &err), IA_ERR_ARG);
    assert_non_null(strstr(err.msg, "no judge"));
    const ia_cfg_field *f = ia_align_config_field("teacher");
    assert_int_equal(ia_align_config_set(&c, f, "http://127.0.0.1:1/v1", &err), IA_OK);
    assert_int_equal(ia_align_config_validate(&c, &err), IA_OK);
    bool rules, llm;
    ia_align_judges(&c, &rules, &llm);
    assert_false(rules);
    assert_true(llm);
    assert_int_equal(ia_align_config_set(&c, ia_align_config_field("present"), "sideways", &err), IA_OK);
    assert_int_equal(ia_align_config_validate(&c, &err), IA_ERR_ARG);
    assert_non_null(strstr(err.msg, "--present: 'sideways' is not one of auto, raw, chat, hh"));
    assert_int_equal(ia_align_config_set(&c, ia_align_config_field("batch_size"), "ten", &err), IA_ERR_ARG);
    assert_non_null(strstr(err.msg, "--batch-size expects an integer"));
    assert_int_equal(ia_align_config_set(&c, ia_align_config_field("rejudge"), "maybe", &err), IA_ERR_ARG);
    assert_true(ia_align_config_field("teacher")->results == false); /* an endpoint may move */
    assert_true(ia_align_config_field("teacher_model")->results == true);
    ia_align_config_free(&c);
    ia_align_config_free(&d);
    ia_strv_free(&set);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_jsonl),
        cmocka_unit_test(test_read_json_csv_text),
        cmocka_unit_test(test_present),
        cmocka_unit_test(test_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
