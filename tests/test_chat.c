/* test_chat.c — chat templates: detection by llama.cpp's rules, names, exact formatter bytes
 * (expectations from llama.cpp's tests/test-chat-template.cpp), errors and BOS stripping. */
#include "test_util.h"

#include "chat/chat.h"

#define TDIR "tests/data/chat_templates/"

static char *read_template(const char *file) {
    char path[256];
    snprintf(path, sizeof path, TDIR "%s.jinja", file);
    ia_error err = {0};
    char *s = ia_file_read(path, NULL, &err);
    if (!s) fail_msg("%s", err.msg);
    return s;
}

/* ---- detection --------------------------------------------------------------------------------- */

static void test_detect_shipped_templates(void **state) {
    (void)state;
    static const struct { const char *file; ia_chat_template_id id; } cases[] = {
        {"chatml", IA_CHAT_TEMPLATE_CHATML},
        {"llama2-chat", IA_CHAT_TEMPLATE_LLAMA2_SYS_STRIP}, /* content.strip() wins, as in llama.cpp */
        {"llama3-instruct", IA_CHAT_TEMPLATE_LLAMA3},
        {"mistral-instruct", IA_CHAT_TEMPLATE_LLAMA2},      /* [INST] without <<SYS>> */
        {"mistral-v1", IA_CHAT_TEMPLATE_MISTRAL_V1},
        {"mistral-v3", IA_CHAT_TEMPLATE_MISTRAL_V3},
        {"mistral-v7", IA_CHAT_TEMPLATE_MISTRAL_V7},
        /* <|user|> + <|assistant|> + eos_token: llama.cpp picks glmedge; we format it as Zephyr */
        {"zephyr", IA_CHAT_TEMPLATE_ZEPHYR},
        {"gemma-it", IA_CHAT_TEMPLATE_GEMMA},
        {"phi3", IA_CHAT_TEMPLATE_PHI3},
        {"vicuna", IA_CHAT_TEMPLATE_VICUNA},
        {"vicuna-orca", IA_CHAT_TEMPLATE_VICUNA_ORCA},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *src = read_template(cases[i].file);
        ia_chat_template_id got = ia_chat_template_detect(src);
        if (got != cases[i].id)
            fail_msg("%s: detected %s, want %s", cases[i].file, ia_chat_template_name(got),
                     ia_chat_template_name(cases[i].id));
        ia_free(src);
    }
}

/* Marker strings of templates from llama.cpp's test list, and the rule order. */
static void test_detect_markers(void **state) {
    (void)state;
    static const struct { const char *src; ia_chat_template_id id; } cases[] = {
        /* TheBloke/FusionNet_34Bx2_MoE-AWQ: BOS inside the history */
        {"{{- bos_token + '[INST] ' + messages[idx]['content'] + ' [/INST]' -}}"
         "{{- '[INST] <<SYS>>\\n' + messages[idx]['content'] + '\\n<</SYS>>\\n\\n' -}}",
         IA_CHAT_TEMPLATE_LLAMA2_SYS_BOS},
        {"{{ '[INST] <<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' }}", IA_CHAT_TEMPLATE_LLAMA2_SYS},
        {"{{ '[INST] ' + content.strip() + ' [/INST]' }}", IA_CHAT_TEMPLATE_LLAMA2_SYS_STRIP},
        /* strip beats bos beats <<SYS>> */
        {"{{ bos_token + '[INST] ' + content.strip() + '<<SYS>>' }}", IA_CHAT_TEMPLATE_LLAMA2_SYS_STRIP},
        /* Mistral-Nemo ('v3-tekken'): [AVAILABLE_TOOLS] and a quoted "[INST]" */
        {"{{- \"[AVAILABLE_TOOLS][\" }}{{- \"[INST]\" + message[\"content\"] + \"[/INST]\" }}",
         IA_CHAT_TEMPLATE_MISTRAL_V3_TEKKEN},
        {"{{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}",
         IA_CHAT_TEMPLATE_MISTRAL_V1},
        {"{{ '[SYSTEM_PROMPT]' + m + '[/SYSTEM_PROMPT]' }}{{ '[INST]' }}", IA_CHAT_TEMPLATE_MISTRAL_V7},
        {"mistral-ish template without markers", IA_CHAT_TEMPLATE_LLAMA2}, /* starts with "mistral" */
        /* <|im_start|> is tested before [INST] */
        {"<|im_start|>{{ '[INST]' }}", IA_CHAT_TEMPLATE_CHATML},
        {"<|im_start|>system<|im_sep|>", IA_CHAT_TEMPLATE_UNKNOWN},                 /* phi4 */
        {"<|im_start|>User:<end_of_utterance>", IA_CHAT_TEMPLATE_UNKNOWN},         /* smolvlm */
        /* StableLM-2-zephyr style: literal <|endoftext|>, roles through a variable */
        {"{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|endoftext|>\\n' }}"
         "{% if m == '<|user|>' %}{% endif %}",
         IA_CHAT_TEMPLATE_ZEPHYR},
        {"{{'<|user|>\\n' + c + '<|end|>\\n<|assistant|>\\n'}}", IA_CHAT_TEMPLATE_PHI3},
        {"<|user|>x<|assistant|>y</s>", IA_CHAT_TEMPLATE_UNKNOWN},                  /* falcon3 */
        {"[gMASK]<sop><|user|><|endoftext|>", IA_CHAT_TEMPLATE_UNKNOWN},           /* chatglm4 first */
        {"{{bos_token + message['role'] + '\\n'}}", IA_CHAT_TEMPLATE_UNKNOWN},       /* monarch */
        {"{{ '<start_of_turn>' + role }}", IA_CHAT_TEMPLATE_GEMMA},
        {"GPT4 Correct USER: ASSISTANT: ", IA_CHAT_TEMPLATE_UNKNOWN},                /* openchat first */
        {"{{'USER: ' + c + '\\n'}}{{'ASSISTANT: '}}", IA_CHAT_TEMPLATE_VICUNA},
        {"SYSTEM: USER: ASSISTANT: ", IA_CHAT_TEMPLATE_VICUNA_ORCA},
        {"### Instruction:<|EOT|><|start_header_id|><|end_header_id|>", IA_CHAT_TEMPLATE_UNKNOWN},
        {"<|START_OF_TURN_TOKEN|><|USER_TOKEN|>", IA_CHAT_TEMPLATE_UNKNOWN},         /* command-r */
        {"<|start_header_id|>x<|end_header_id|>", IA_CHAT_TEMPLATE_LLAMA3},
        {"<|header_start|>x<|header_end|>", IA_CHAT_TEMPLATE_UNKNOWN},               /* llama4 */
        {"", IA_CHAT_TEMPLATE_UNKNOWN},
        {"{{ messages }}", IA_CHAT_TEMPLATE_UNKNOWN},
        /* a built-in name is taken as that template */
        {"gemma", IA_CHAT_TEMPLATE_GEMMA},
        {"llama2-sys-bos", IA_CHAT_TEMPLATE_LLAMA2_SYS_BOS},
        {"mistral-v3-tekken", IA_CHAT_TEMPLATE_MISTRAL_V3_TEKKEN},
        {"mistral-v7-tekken", IA_CHAT_TEMPLATE_MISTRAL_V7_TEKKEN},
        {"phi4", IA_CHAT_TEMPLATE_UNKNOWN},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ia_chat_template_id got = ia_chat_template_detect(cases[i].src);
        if (got != cases[i].id)
            fail_msg("case %zu (%s): detected %s, want %s", i, cases[i].src, ia_chat_template_name(got),
                     ia_chat_template_name(cases[i].id));
    }
    assert_int_equal(ia_chat_template_detect(NULL), IA_CHAT_TEMPLATE_UNKNOWN);
}

/* ---- names ------------------------------------------------------------------------------------- */

static void test_names(void **state) {
    (void)state;
    static const char *const want[] = {"chatml", "llama2", "llama2-sys", "llama3", "mistral-v1",
                                       "mistral-v3", "mistral-v7", "zephyr", "gemma", "phi3", "vicuna"};
    for (int id = 1; id <= IA_CHAT_TEMPLATE_VICUNA; id++)
        assert_string_equal(ia_chat_template_name((ia_chat_template_id)id), want[id - 1]);
    char list[512] = "";
    for (int id = 1; id < IA_CHAT_TEMPLATE_COUNT_ALL; id++) {
        const char *name = ia_chat_template_name((ia_chat_template_id)id);
        assert_int_equal(ia_chat_template_from_name(name), id);
        assert_int_equal(ia_chat_template_detect(name), id);
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", id > 1 ? ", " : "", name);
    }
    assert_string_equal(ia_chat_template_names(), list);
    assert_string_equal(ia_chat_template_name(IA_CHAT_TEMPLATE_UNKNOWN), "unknown");
    assert_string_equal(ia_chat_template_name((ia_chat_template_id)999), "unknown");
    assert_int_equal(ia_chat_template_from_name("unknown"), IA_CHAT_TEMPLATE_UNKNOWN);
    assert_int_equal(ia_chat_template_from_name("ChatML"), IA_CHAT_TEMPLATE_UNKNOWN); /* exact, as llama.cpp */
    assert_int_equal(ia_chat_template_from_name("phi4"), IA_CHAT_TEMPLATE_UNKNOWN);
    assert_int_equal(ia_chat_template_from_name(""), IA_CHAT_TEMPLATE_UNKNOWN);
    assert_int_equal(ia_chat_template_from_name(NULL), IA_CHAT_TEMPLATE_UNKNOWN);
}

/* ---- formatting -------------------------------------------------------------------------------- */

/* llama.cpp's test conversation (note the spaces around the second answer) */
static const ia_chat_msg conv6[] = {
    {"system", "You are a helpful assistant"}, {"user", "Hello"},
    {"assistant", "Hi there"},                 {"user", "Who are you"},
    {"assistant", "   I am an assistant   "},  {"user", "Another question"},
};
/* a short one ending with the answer */
static const ia_chat_msg conv3[] = {
    {"system", "Be brief."}, {"user", " What is 2+2? "}, {"assistant", "4"},
};

static void expect(ia_chat_template_id id, const ia_chat_msg *m, int n, bool add_ass, const char *want) {
    ia_error err = {0};
    char *got = ia_chat_apply(id, m, n, add_ass, &err);
    if (!got) fail_msg("%s: %s", ia_chat_template_name(id), err.msg);
    if (strcmp(got, want) != 0)
        fail_msg("%s (n=%d add_ass=%d):\n got: \"%s\"\nwant: \"%s\"", ia_chat_template_name(id), n, add_ass,
                 got, want);
    ia_free(got);
}

/* Expected strings for conv6 with add_assistant: llama.cpp's test-chat-template.cpp expectations
 * ("expected_output") where it has one; llama2-sys, mistral-v7-tekken and zephyr are not in that
 * list (any more) and were worked out from llama.cpp's formatter rules. */
static void test_format_llamacpp_conversation(void **state) {
    (void)state;
    static const struct { ia_chat_template_id id; const char *want; } cases[] = {
        {IA_CHAT_TEMPLATE_CHATML,
         "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
         "<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n"
         "<|im_start|>assistant\n   I am an assistant   <|im_end|>\n<|im_start|>user\nAnother question<|im_end|>\n"
         "<|im_start|>assistant\n"},
        {IA_CHAT_TEMPLATE_LLAMA2,
         "[INST] You are a helpful assistant\nHello [/INST]Hi there</s>[INST] Who are you [/INST]   I am an "
         "assistant   </s>[INST] Another question [/INST]"},
        {IA_CHAT_TEMPLATE_LLAMA2_SYS,
         "[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\nHello [/INST]Hi there</s>[INST] Who are you "
         "[/INST]   I am an assistant   </s>[INST] Another question [/INST]"},
        {IA_CHAT_TEMPLATE_LLAMA2_SYS_BOS,
         "[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\nHello [/INST]Hi there</s><s>[INST] Who are "
         "you [/INST]   I am an assistant   </s><s>[INST] Another question [/INST]"},
        {IA_CHAT_TEMPLATE_LLAMA2_SYS_STRIP,
         "[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\nHello [/INST]Hi there</s>[INST] Who are you "
         "[/INST]I am an assistant</s>[INST] Another question [/INST]"},
        {IA_CHAT_TEMPLATE_LLAMA3,
         "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant<|eot_id|>"
         "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
         "\n\nHi there<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWho are you<|eot_id|>"
         "<|start_header_id|>assistant<|end_header_id|>\n\nI am an assistant<|eot_id|>"
         "<|start_header_id|>user<|end_header_id|>\n\nAnother question<|eot_id|>"
         "<|start_header_id|>assistant<|end_header_id|>\n\n"},
        {IA_CHAT_TEMPLATE_MISTRAL_V1,
         " [INST] You are a helpful assistant\n\nHello [/INST] Hi there</s> [INST] Who are you [/INST]    I am an "
         "assistant   </s> [INST] Another question [/INST]"},
        {IA_CHAT_TEMPLATE_MISTRAL_V3,
         "[INST] You are a helpful assistant\n\nHello[/INST] Hi there</s>[INST] Who are you[/INST] I am an "
         "assistant</s>[INST] Another question[/INST]"},
        {IA_CHAT_TEMPLATE_MISTRAL_V3_TEKKEN,
         "[INST]You are a helpful assistant\n\nHello[/INST]Hi there</s>[INST]Who are you[/INST]   I am an "
         "assistant   </s>[INST]Another question[/INST]"},
        {IA_CHAT_TEMPLATE_MISTRAL_V7,
         "[SYSTEM_PROMPT] You are a helpful assistant[/SYSTEM_PROMPT][INST] Hello[/INST] Hi there</s>[INST] Who "
         "are you[/INST]    I am an assistant   </s>[INST] Another question[/INST]"},
        {IA_CHAT_TEMPLATE_MISTRAL_V7_TEKKEN,
         "[SYSTEM_PROMPT]You are a helpful assistant[/SYSTEM_PROMPT][INST]Hello[/INST]Hi there</s>[INST]Who are "
         "you[/INST]   I am an assistant   </s>[INST]Another question[/INST]"},
        {IA_CHAT_TEMPLATE_ZEPHYR,
         "<|system|>\nYou are a helpful assistant<|endoftext|>\n<|user|>\nHello<|endoftext|>\n<|assistant|>\nHi "
         "there<|endoftext|>\n<|user|>\nWho are you<|endoftext|>\n<|assistant|>\n   I am an assistant   "
         "<|endoftext|>\n<|user|>\nAnother question<|endoftext|>\n<|assistant|>\n"},
        {IA_CHAT_TEMPLATE_GEMMA,
         "<start_of_turn>user\nYou are a helpful assistant\n\nHello<end_of_turn>\n<start_of_turn>model\nHi "
         "there<end_of_turn>\n<start_of_turn>user\nWho are you<end_of_turn>\n<start_of_turn>model\nI am an "
         "assistant<end_of_turn>\n<start_of_turn>user\nAnother question<end_of_turn>\n<start_of_turn>model\n"},
        {IA_CHAT_TEMPLATE_PHI3,
         "<|system|>\nYou are a helpful assistant<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\nHi "
         "there<|end|>\n<|user|>\nWho are you<|end|>\n<|assistant|>\n   I am an assistant   <|end|>\n<|user|>\n"
         "Another question<|end|>\n<|assistant|>\n"},
        {IA_CHAT_TEMPLATE_VICUNA,
         "You are a helpful assistant\n\nUSER: Hello\nASSISTANT: Hi there</s>\nUSER: Who are you\nASSISTANT:    I "
         "am an assistant   </s>\nUSER: Another question\nASSISTANT:"},
        {IA_CHAT_TEMPLATE_VICUNA_ORCA,
         "SYSTEM: You are a helpful assistant\nUSER: Hello\nASSISTANT: Hi there</s>\nUSER: Who are "
         "you\nASSISTANT:    I am an assistant   </s>\nUSER: Another question\nASSISTANT:"},
    };
    assert_int_equal(sizeof cases / sizeof cases[0], IA_CHAT_TEMPLATE_COUNT_ALL - 1); /* every template */
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) expect(cases[i].id, conv6, 6, true, cases[i].want);
}

/* Hand-written: system + user + answer, no assistant prefix (trimming shows on the user text). */
static void test_format_three_messages(void **state) {
    (void)state;
    static const struct { ia_chat_template_id id; const char *want; } cases[] = {
        {IA_CHAT_TEMPLATE_CHATML,
         "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n What is 2+2? <|im_end|>\n"
         "<|im_start|>assistant\n4<|im_end|>\n"},
        {IA_CHAT_TEMPLATE_LLAMA2, "[INST] Be brief.\n What is 2+2?  [/INST]4</s>"},
        {IA_CHAT_TEMPLATE_LLAMA2_SYS, "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n What is 2+2?  [/INST]4</s>"},
        {IA_CHAT_TEMPLATE_LLAMA2_SYS_BOS, "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n What is 2+2?  [/INST]4</s>"},
        {IA_CHAT_TEMPLATE_LLAMA2_SYS_STRIP, "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is 2+2? [/INST]4</s>"},
        {IA_CHAT_TEMPLATE_LLAMA3,
         "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user"
         "<|end_header_id|>\n\nWhat is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>"},
        {IA_CHAT_TEMPLATE_MISTRAL_V1, " [INST] Be brief.\n\n What is 2+2?  [/INST] 4</s>"},
        {IA_CHAT_TEMPLATE_MISTRAL_V3, "[INST] Be brief.\n\n What is 2+2? [/INST] 4</s>"},
        {IA_CHAT_TEMPLATE_MISTRAL_V3_TEKKEN, "[INST]Be brief.\n\n What is 2+2? [/INST]4</s>"},
        {IA_CHAT_TEMPLATE_MISTRAL_V7, "[SYSTEM_PROMPT] Be brief.[/SYSTEM_PROMPT][INST]  What is 2+2? [/INST] 4</s>"},
        {IA_CHAT_TEMPLATE_MISTRAL_V7_TEKKEN, "[SYSTEM_PROMPT]Be brief.[/SYSTEM_PROMPT][INST] What is 2+2? [/INST]4</s>"},
        {IA_CHAT_TEMPLATE_ZEPHYR,
         "<|system|>\nBe brief.<|endoftext|>\n<|user|>\n What is 2+2? <|endoftext|>\n<|assistant|>\n4<|endoftext|>\n"},
        {IA_CHAT_TEMPLATE_GEMMA,
         "<start_of_turn>user\nBe brief.\n\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n"},
        {IA_CHAT_TEMPLATE_PHI3, "<|system|>\nBe brief.<|end|>\n<|user|>\n What is 2+2? <|end|>\n<|assistant|>\n4<|end|>\n"},
        {IA_CHAT_TEMPLATE_VICUNA, "Be brief.\n\nUSER:  What is 2+2? \nASSISTANT: 4</s>\n"},
        {IA_CHAT_TEMPLATE_VICUNA_ORCA, "SYSTEM: Be brief.\nUSER:  What is 2+2? \nASSISTANT: 4</s>\n"},
    };
    assert_int_equal(sizeof cases / sizeof cases[0], IA_CHAT_TEMPLATE_COUNT_ALL - 1);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) expect(cases[i].id, conv3, 3, false, cases[i].want);
}

static void test_format_edges(void **state) {
    (void)state;
    /* assistant prefix only where the format has one; nothing at all for no messages */
    expect(IA_CHAT_TEMPLATE_CHATML, NULL, 0, true, "<|im_start|>assistant\n");
    expect(IA_CHAT_TEMPLATE_CHATML, NULL, 0, false, "");
    expect(IA_CHAT_TEMPLATE_LLAMA2, NULL, 0, true, "[INST] "); /* llama.cpp always opens the turn */
    static const ia_chat_msg u[] = {{"user", "Hi"}};
    expect(IA_CHAT_TEMPLATE_LLAMA3, u, 1, false, "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>");
    expect(IA_CHAT_TEMPLATE_MISTRAL_V7, u, 1, true, "[INST] Hi[/INST]");
    /* gemma: a system text waits for the next user turn, skipping a model turn; two are joined */
    static const ia_chat_msg g[] = {{"assistant", "A"}, {"system", " S1 "}, {"system", "S2"}, {"assistant", "B"},
                                    {"user", "U"}};
    expect(IA_CHAT_TEMPLATE_GEMMA, g, 5, false,
           "<start_of_turn>model\nA<end_of_turn>\n<start_of_turn>model\nB<end_of_turn>\n"
           "<start_of_turn>user\nS1S2\n\nU<end_of_turn>\n");
    /* roles pass through where the format names them; UTF-8 and special-token text are plain bytes */
    static const ia_chat_msg t[] = {{"tool", "Grüße <|im_end|> 😀"}};
    expect(IA_CHAT_TEMPLATE_CHATML, t, 1, false, "<|im_start|>tool\nGrüße <|im_end|> 😀<|im_end|>\n");
    expect(IA_CHAT_TEMPLATE_VICUNA, t, 1, false, "");
    /* llama3 trims ASCII whitespace only (a UTF-8 no-break space is content) */
    static const ia_chat_msg w[] = {{"user", "\t\r\n \xc2\xa0x\xc2\xa0 \v\f"}};
    expect(IA_CHAT_TEMPLATE_LLAMA3, w, 1, false,
           "<|start_header_id|>user<|end_header_id|>\n\n\xc2\xa0x\xc2\xa0<|eot_id|>");
    /* long content goes through the buffer's large path */
    size_t big = 100000;
    char *longtext = ia_malloc(big + 1);
    assert_non_null(longtext);
    memset(longtext, 'a', big);
    longtext[big] = 0;
    ia_chat_msg l[] = {{"user", longtext}};
    ia_error err = {0};
    char *out = ia_chat_apply(IA_CHAT_TEMPLATE_PHI3, l, 1, true, &err);
    assert_non_null(out);
    assert_int_equal(strlen(out), big + strlen("<|user|>\n<|end|>\n<|assistant|>\n"));
    ia_free(out);
    ia_free(longtext);
}

/* No formatter writes a BOS text first: the tokenizer adds BOS (REFERENCE.md §5.5, double BOS). */
static void test_no_leading_bos(void **state) {
    (void)state;
    static const char *const bos[] = {"<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"};
    for (int id = 1; id < IA_CHAT_TEMPLATE_COUNT_ALL; id++) {
        for (int withsys = 0; withsys < 2; withsys++) {
            ia_error err = {0};
            char *out = ia_chat_apply((ia_chat_template_id)id, conv6 + (withsys ? 0 : 1), withsys ? 6 : 5, true, &err);
            assert_non_null(out);
            for (size_t b = 0; b < sizeof bos / sizeof bos[0]; b++)
                if (strncmp(out, bos[b], strlen(bos[b])) == 0)
                    fail_msg("%s starts with %s", ia_chat_template_name((ia_chat_template_id)id), bos[b]);
            ia_free(out);
        }
    }
}

static void test_errors(void **state) {
    (void)state;
    ia_error err = {0};
    assert_null(ia_chat_apply(IA_CHAT_TEMPLATE_UNKNOWN, conv6, 6, true, &err));
    assert_int_equal(err.code, IA_ERR_ARG);
    /* the message lists the names a user can pass */
    assert_non_null(strstr(err.msg, "chatml"));
    assert_non_null(strstr(err.msg, "llama2-sys"));
    assert_non_null(strstr(err.msg, "vicuna"));
    ia_error_clear(&err);
    assert_null(ia_chat_apply((ia_chat_template_id)IA_CHAT_TEMPLATE_COUNT_ALL, conv6, 6, true, &err));
    assert_int_equal(err.code, IA_ERR_ARG);
    assert_null(ia_chat_apply((ia_chat_template_id)-3, conv6, 6, true, NULL)); /* err may be NULL */
    ia_error_clear(&err);
    assert_null(ia_chat_apply(IA_CHAT_TEMPLATE_CHATML, conv6, -1, true, &err));
    assert_int_equal(err.code, IA_ERR_ARG);
    ia_error_clear(&err);
    assert_null(ia_chat_apply(IA_CHAT_TEMPLATE_CHATML, NULL, 2, true, &err));
    assert_int_equal(err.code, IA_ERR_ARG);
    static const ia_chat_msg bad[] = {{"user", "ok"}, {"user", NULL}};
    ia_error_clear(&err);
    assert_null(ia_chat_apply(IA_CHAT_TEMPLATE_CHATML, bad, 2, true, &err));
    assert_int_equal(err.code, IA_ERR_ARG);
    assert_non_null(strstr(err.msg, "message 1"));
    static const ia_chat_msg norole[] = {{NULL, "x"}};
    ia_error_clear(&err);
    assert_null(ia_chat_apply(IA_CHAT_TEMPLATE_GEMMA, norole, 1, true, &err));
    assert_int_equal(err.code, IA_ERR_ARG);
}

/* Every allocation failure gives NULL + IA_ERR_NOMEM, never a partial string (ASan: no leaks). */
static void test_out_of_memory(void **state) {
    (void)state;
    for (int id = 1; id < IA_CHAT_TEMPLATE_COUNT_ALL; id++) {
        for (long n = 1;; n++) {
            ia_error err = {0};
            ia_mem_fail_after(n, false);
            char *out = ia_chat_apply((ia_chat_template_id)id, conv6, 6, true, &err);
            ia_mem_fail_after(0, false);
            if (out) { ia_free(out); break; }
            assert_int_equal(err.code, IA_ERR_NOMEM);
            assert_true(n < 100);
        }
    }
}

static void test_strip_bos(void **state) {
    (void)state;
    static const struct { const char *in, *bos, *want; } cases[] = {
        {"<s>[INST] Hi [/INST]", "<s>", "[INST] Hi [/INST]"},
        {"<s><s>[INST] Hi", "<s>", "[INST] Hi"}, /* repeated copies too: one BOS would still be extra */
        {"<|begin_of_text|><|start_header_id|>", "<|begin_of_text|>", "<|start_header_id|>"},
        {"[INST] <s> inside", "<s>", "[INST] <s> inside"}, /* only at the start */
        {" <s>x", "<s>", " <s>x"},
        {"<s", "<s>", "<s"},
        {"<s>", "<s>", ""},
        {"<s>x", "", "<s>x"},
        {"<s>x", NULL, "<s>x"},
        {"", "<s>", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *out = ia_chat_strip_bos(cases[i].in, cases[i].bos);
        assert_non_null(out);
        assert_string_equal(out, cases[i].want);
        ia_free(out);
    }
    assert_null(ia_chat_strip_bos(NULL, "<s>"));
    ia_mem_fail_after(1, false);
    assert_null(ia_chat_strip_bos("<s>x", "<s>"));
    ia_mem_fail_after(0, false);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_detect_shipped_templates),
        cmocka_unit_test(test_detect_markers),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_format_llamacpp_conversation),
        cmocka_unit_test(test_format_three_messages),
        cmocka_unit_test(test_format_edges),
        cmocka_unit_test(test_no_leading_bos),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_out_of_memory),
        cmocka_unit_test(test_strip_bos),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
