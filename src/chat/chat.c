/* chat.c — chat-template detection (llama.cpp's rules, in its order) and the built-in formatters,
 * written to produce the same bytes as llama.cpp's llm_chat_apply_template for these templates. */
#include "chat.h"

/* Names are llama.cpp's built-in names, so `--chat-template NAME` means the same in both. */
static const char *const template_names[IA_CHAT_TEMPLATE_COUNT_ALL] = {
    [IA_CHAT_TEMPLATE_UNKNOWN] = NULL,
    [IA_CHAT_TEMPLATE_CHATML] = "chatml",
    [IA_CHAT_TEMPLATE_LLAMA2] = "llama2",
    [IA_CHAT_TEMPLATE_LLAMA2_SYS] = "llama2-sys",
    [IA_CHAT_TEMPLATE_LLAMA3] = "llama3",
    [IA_CHAT_TEMPLATE_MISTRAL_V1] = "mistral-v1",
    [IA_CHAT_TEMPLATE_MISTRAL_V3] = "mistral-v3",
    [IA_CHAT_TEMPLATE_MISTRAL_V7] = "mistral-v7",
    [IA_CHAT_TEMPLATE_ZEPHYR] = "zephyr",
    [IA_CHAT_TEMPLATE_GEMMA] = "gemma",
    [IA_CHAT_TEMPLATE_PHI3] = "phi3",
    [IA_CHAT_TEMPLATE_VICUNA] = "vicuna",
    [IA_CHAT_TEMPLATE_LLAMA2_SYS_BOS] = "llama2-sys-bos",
    [IA_CHAT_TEMPLATE_LLAMA2_SYS_STRIP] = "llama2-sys-strip",
    [IA_CHAT_TEMPLATE_MISTRAL_V3_TEKKEN] = "mistral-v3-tekken",
    [IA_CHAT_TEMPLATE_MISTRAL_V7_TEKKEN] = "mistral-v7-tekken",
    [IA_CHAT_TEMPLATE_VICUNA_ORCA] = "vicuna-orca",
};

static bool valid_id(int id) { return id > IA_CHAT_TEMPLATE_UNKNOWN && id < IA_CHAT_TEMPLATE_COUNT_ALL; }

const char *ia_chat_template_name(ia_chat_template_id id) {
    /* "unknown" rather than NULL so a caller can always print the result. */
    return valid_id((int)id) ? template_names[id] : "unknown";
}

ia_chat_template_id ia_chat_template_from_name(const char *name) {
    if (!name) return IA_CHAT_TEMPLATE_UNKNOWN;
    for (int id = 1; id < IA_CHAT_TEMPLATE_COUNT_ALL; id++)
        if (strcmp(name, template_names[id]) == 0) return (ia_chat_template_id)id;
    return IA_CHAT_TEMPLATE_UNKNOWN;
}

const char *ia_chat_template_names(void) {
    /* A literal, not built at run time, so there is nothing to race on; test_chat checks that it
     * lists exactly the table above, in order. */
    return "chatml, llama2, llama2-sys, llama3, mistral-v1, mistral-v3, mistral-v7, zephyr, gemma, phi3, "
           "vicuna, llama2-sys-bos, llama2-sys-strip, mistral-v3-tekken, mistral-v7-tekken, vicuna-orca";
}

/* ---- detection ---------------------------------------------------------------------------------
 * The same tests in the same order as llama.cpp's llm_chat_detect_template. Where llama.cpp picks a
 * formatter this library does not have (phi4, falcon3, glmedge, monarch, gemma-less orion, ...),
 * the answer is UNKNOWN rather than falling through to a later, weaker rule: the result is then
 * always either llama.cpp's own choice or UNKNOWN, never a different guess. Rules after llama3 in
 * llama.cpp's list all lead to formatters not implemented here, so the chain stops there. */

static bool has(const char *s, const char *needle) { return strstr(s, needle) != NULL; }

ia_chat_template_id ia_chat_template_detect(const char *src) {
    if (!src) return IA_CHAT_TEMPLATE_UNKNOWN;
    /* 1. the string is a built-in name (llama.cpp's --chat-template NAME) */
    ia_chat_template_id byname = ia_chat_template_from_name(src);
    if (byname != IA_CHAT_TEMPLATE_UNKNOWN) return byname;

    /* 2. ChatML markers; phi4 and SmolVLM reuse <|im_start|> with another layout */
    if (has(src, "<|im_start|>")) {
        if (has(src, "<|im_sep|>") || has(src, "<end_of_utterance>")) return IA_CHAT_TEMPLATE_UNKNOWN;
        return IA_CHAT_TEMPLATE_CHATML;
    }
    /* 3. [INST] family: Mistral's official templates by their marker strings, else llama2 */
    if (strncmp(src, "mistral", 7) == 0 || has(src, "[INST]")) {
        if (has(src, "[SYSTEM_PROMPT]")) return IA_CHAT_TEMPLATE_MISTRAL_V7;
        if (has(src, "' [INST] ' + system_message") || has(src, "[AVAILABLE_TOOLS]")) {
            if (has(src, " [INST]")) return IA_CHAT_TEMPLATE_MISTRAL_V1;
            if (has(src, "\"[INST]\"")) return IA_CHAT_TEMPLATE_MISTRAL_V3_TEKKEN;
            return IA_CHAT_TEMPLATE_MISTRAL_V3;
        }
        if (has(src, "content.strip()")) return IA_CHAT_TEMPLATE_LLAMA2_SYS_STRIP;
        if (has(src, "bos_token + '[INST]")) return IA_CHAT_TEMPLATE_LLAMA2_SYS_BOS;
        if (has(src, "<<SYS>>")) return IA_CHAT_TEMPLATE_LLAMA2_SYS;
        return IA_CHAT_TEMPLATE_LLAMA2;
    }
    /* 4. Phi-3 */
    if (has(src, "<|assistant|>") && has(src, "<|end|>")) return IA_CHAT_TEMPLATE_PHI3;
    /* 5. ChatGLM4 */
    if (has(src, "[gMASK]<sop>")) return IA_CHAT_TEMPLATE_UNKNOWN;
    /* 6. <|user|> + <|assistant|>: llama.cpp says exaone-moe / falcon3 / glmedge. That also
     * catches the HuggingFaceH4 Zephyr and TinyLlama-chat templates (they end turns with the
     * eos_token variable, not a literal), which llama.cpp then formats wrongly as glmedge. We
     * depart from llama.cpp here on purpose: a template that ends turns with eos_token and has
     * neither exaone's tool marker nor falcon3's literal "</s>" is Zephyr, formatted with the
     * model's EOS text (ia_chat_apply_eos). */
    if (has(src, "<|assistant|>") && has(src, "<|user|>")) {
        if (has(src, "eos_token") && !has(src, "<|tool_declare|>") && !has(src, "</s>"))
            return IA_CHAT_TEMPLATE_ZEPHYR;
        return IA_CHAT_TEMPLATE_UNKNOWN;
    }
    if (has(src, "<|{{ item['role'] }}|>") && has(src, "<|begin_of_image|>")) return IA_CHAT_TEMPLATE_UNKNOWN;
    /* 7. Zephyr (StableLM style: literal <|endoftext|>) */
    if (has(src, "<|user|>") && has(src, "<|endoftext|>")) return IA_CHAT_TEMPLATE_ZEPHYR;
    /* 8. Monarch */
    if (has(src, "bos_token + message['role']")) return IA_CHAT_TEMPLATE_UNKNOWN;
    /* 9. Gemma */
    if (has(src, "<start_of_turn>")) return IA_CHAT_TEMPLATE_GEMMA;
    /* 10. Orion ("\n" here is the two characters backslash-n of the Jinja source), OpenChat */
    if (has(src, "'\\n\\nAssistant: ' + eos_token")) return IA_CHAT_TEMPLATE_UNKNOWN;
    if (has(src, "GPT4 Correct ")) return IA_CHAT_TEMPLATE_UNKNOWN;
    /* 11. Vicuna */
    if (has(src, "USER: ") && has(src, "ASSISTANT: "))
        return has(src, "SYSTEM: ") ? IA_CHAT_TEMPLATE_VICUNA_ORCA : IA_CHAT_TEMPLATE_VICUNA;
    /* 12. DeepSeek (coder), Command-R */
    if (has(src, "### Instruction:") && has(src, "<|EOT|>")) return IA_CHAT_TEMPLATE_UNKNOWN;
    if (has(src, "<|START_OF_TURN_TOKEN|>") && has(src, "<|USER_TOKEN|>")) return IA_CHAT_TEMPLATE_UNKNOWN;
    /* 13. Llama 3 */
    if (has(src, "<|start_header_id|>") && has(src, "<|end_header_id|>")) return IA_CHAT_TEMPLATE_LLAMA3;
    return IA_CHAT_TEMPLATE_UNKNOWN;
}

/* ---- formatters -------------------------------------------------------------------------------- */

/* llama.cpp's trim(): ASCII whitespace as isspace() sees it in the C locale, both ends. Bytes of
 * multi-byte UTF-8 characters are never whitespace here, so non-ASCII spaces are kept, as there. */
static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'; }

static void put_trimmed(ia_buf *b, const char *s) {
    size_t n = strlen(s), i = 0;
    while (i < n && is_space(s[i])) i++;
    while (n > i && is_space(s[n - 1])) n--;
    ia_buf_append(b, s + i, n - i);
}

static void put_content(ia_buf *b, const char *s, bool trim) {
    if (trim) put_trimmed(b, s);
    else ia_buf_puts(b, s);
}

static void fmt_chatml(ia_buf *b, const ia_chat_msg *m, int n, bool add_ass) {
    for (int i = 0; i < n; i++) ia_buf_printf(b, "<|im_start|>%s\n%s<|im_end|>\n", m[i].role, m[i].content);
    if (add_ass) ia_buf_puts(b, "<|im_start|>assistant\n");
}

/* llama2 family. The prompt opens with "[INST] " and no "<s>": the tokenizer adds BOS. An assistant
 * message closes the turn with "</s>" and the next message reopens it. Any role other than
 * system/user is treated as the assistant, as llama.cpp does. */
static void fmt_llama2(ia_buf *b, const ia_chat_msg *m, int n, int id) {
    bool sys_tags = id != IA_CHAT_TEMPLATE_LLAMA2;
    bool bos_in_history = id == IA_CHAT_TEMPLATE_LLAMA2_SYS_BOS;
    bool strip = id == IA_CHAT_TEMPLATE_LLAMA2_SYS_STRIP;
    bool inside_turn = true;
    ia_buf_puts(b, "[INST] ");
    for (int i = 0; i < n; i++) {
        if (!inside_turn) {
            inside_turn = true;
            ia_buf_puts(b, bos_in_history ? "<s>[INST] " : "[INST] ");
        }
        if (strcmp(m[i].role, "system") == 0) {
            /* plain llama2 has no system slot: the text goes in front of the first user message */
            ia_buf_puts(b, sys_tags ? "<<SYS>>\n" : "");
            put_content(b, m[i].content, strip);
            ia_buf_puts(b, sys_tags ? "\n<</SYS>>\n\n" : "\n");
        } else if (strcmp(m[i].role, "user") == 0) {
            put_content(b, m[i].content, strip);
            ia_buf_puts(b, " [/INST]");
        } else {
            put_content(b, m[i].content, strip);
            ia_buf_puts(b, "</s>");
            inside_turn = false;
        }
    }
}

/* Mistral v1 / v3 / v3-tekken: same shape, differing in spaces around [INST] / [/INST] and whether
 * the assistant text is trimmed. A system message goes inside the current [INST] block. */
static void fmt_mistral_v1_v3(ia_buf *b, const ia_chat_msg *m, int n, int id) {
    const char *lead = id == IA_CHAT_TEMPLATE_MISTRAL_V1 ? " " : "";
    const char *trail = id == IA_CHAT_TEMPLATE_MISTRAL_V3_TEKKEN ? "" : " ";
    bool trim_assistant = id == IA_CHAT_TEMPLATE_MISTRAL_V3;
    bool inside_turn = false;
    for (int i = 0; i < n; i++) {
        if (!inside_turn) {
            ia_buf_printf(b, "%s[INST]%s", lead, trail);
            inside_turn = true;
        }
        if (strcmp(m[i].role, "system") == 0) {
            ia_buf_printf(b, "%s\n\n", m[i].content);
        } else if (strcmp(m[i].role, "user") == 0) {
            ia_buf_printf(b, "%s%s[/INST]", m[i].content, lead);
        } else {
            ia_buf_puts(b, trail);
            put_content(b, m[i].content, trim_assistant);
            ia_buf_puts(b, "</s>");
            inside_turn = false;
        }
    }
}

static void fmt_mistral_v7(ia_buf *b, const ia_chat_msg *m, int n, int id) {
    const char *sp = id == IA_CHAT_TEMPLATE_MISTRAL_V7 ? " " : "";
    for (int i = 0; i < n; i++) {
        if (strcmp(m[i].role, "system") == 0) ia_buf_printf(b, "[SYSTEM_PROMPT]%s%s[/SYSTEM_PROMPT]", sp, m[i].content);
        else if (strcmp(m[i].role, "user") == 0) ia_buf_printf(b, "[INST]%s%s[/INST]", sp, m[i].content);
        else ia_buf_printf(b, "%s%s</s>", sp, m[i].content);
    }
}

static void fmt_llama3(ia_buf *b, const ia_chat_msg *m, int n, bool add_ass) {
    for (int i = 0; i < n; i++) {
        ia_buf_printf(b, "<|start_header_id|>%s<|end_header_id|>\n\n", m[i].role);
        put_trimmed(b, m[i].content);
        ia_buf_puts(b, "<|eot_id|>");
    }
    if (add_ass) ia_buf_puts(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

/* Zephyr and Phi-3 share the "<|role|>\n" header and differ in the end-of-message marker. */
static void fmt_role_pipes(ia_buf *b, const ia_chat_msg *m, int n, bool add_ass, const char *end) {
    for (int i = 0; i < n; i++) ia_buf_printf(b, "<|%s|>\n%s%s\n", m[i].role, m[i].content, end);
    if (add_ass) ia_buf_puts(b, "<|assistant|>\n");
}

/* Gemma has no system role: system texts (trimmed, concatenated) are put in front of the next
 * non-model turn, separated by a blank line; "assistant" is called "model". */
static void fmt_gemma(ia_buf *b, const ia_chat_msg *m, int n, bool add_ass) {
    ia_buf sys = {0};
    for (int i = 0; i < n; i++) {
        if (strcmp(m[i].role, "system") == 0) {
            put_trimmed(&sys, m[i].content);
            continue;
        }
        bool model = strcmp(m[i].role, "assistant") == 0;
        ia_buf_printf(b, "<start_of_turn>%s\n", model ? "model" : m[i].role);
        if (sys.len > 0 && !model) {
            ia_buf_append(b, sys.data, sys.len);
            ia_buf_puts(b, "\n\n");
            sys.len = 0;
        }
        put_trimmed(b, m[i].content);
        ia_buf_puts(b, "<end_of_turn>\n");
    }
    if (sys.oom) b->oom = true;
    ia_buf_free(&sys);
    if (add_ass) ia_buf_puts(b, "<start_of_turn>model\n");
}

static void fmt_vicuna(ia_buf *b, const ia_chat_msg *m, int n, bool add_ass, bool orca) {
    for (int i = 0; i < n; i++) {
        const char *r = m[i].role, *c = m[i].content;
        if (strcmp(r, "system") == 0) ia_buf_printf(b, orca ? "SYSTEM: %s\n" : "%s\n\n", c);
        else if (strcmp(r, "user") == 0) ia_buf_printf(b, "USER: %s\n", c);
        else if (strcmp(r, "assistant") == 0) ia_buf_printf(b, "ASSISTANT: %s</s>\n", c);
        /* other roles have no place in this format and are left out, as in llama.cpp */
    }
    if (add_ass) ia_buf_puts(b, "ASSISTANT:");
}

char *ia_chat_apply(ia_chat_template_id id, const ia_chat_msg *msgs, int n_msgs, bool add_assistant,
                    ia_error *err) {
    return ia_chat_apply_eos(id, msgs, n_msgs, add_assistant, NULL, err);
}

char *ia_chat_apply_eos(ia_chat_template_id id, const ia_chat_msg *msgs, int n_msgs, bool add_assistant,
                        const char *eos_text, ia_error *err) {
    if (!valid_id((int)id)) {
        ia_error_set(err, IA_ERR_ARG, "unknown chat template (id %d); known templates: %s", (int)id,
                     ia_chat_template_names());
        return NULL;
    }
    if (n_msgs < 0 || (n_msgs > 0 && !msgs)) {
        ia_error_set(err, IA_ERR_ARG, "chat template %s: bad message list (%d messages)",
                     template_names[id], n_msgs);
        return NULL;
    }
    for (int i = 0; i < n_msgs; i++) {
        if (!msgs[i].role || !msgs[i].content) {
            ia_error_set(err, IA_ERR_ARG, "chat template %s: message %d has no %s", template_names[id], i,
                         msgs[i].role ? "content" : "role");
            return NULL;
        }
    }
    ia_buf b = {0};
    /* switch on int: the extension ids are not members of the public enum */
    switch ((int)id) {
    case IA_CHAT_TEMPLATE_CHATML: fmt_chatml(&b, msgs, n_msgs, add_assistant); break;
    case IA_CHAT_TEMPLATE_LLAMA2:
    case IA_CHAT_TEMPLATE_LLAMA2_SYS:
    case IA_CHAT_TEMPLATE_LLAMA2_SYS_BOS:
    case IA_CHAT_TEMPLATE_LLAMA2_SYS_STRIP:
        /* the prompt already ends with "[/INST]": there is no assistant header to add */
        fmt_llama2(&b, msgs, n_msgs, (int)id);
        break;
    case IA_CHAT_TEMPLATE_MISTRAL_V1:
    case IA_CHAT_TEMPLATE_MISTRAL_V3:
    case IA_CHAT_TEMPLATE_MISTRAL_V3_TEKKEN: fmt_mistral_v1_v3(&b, msgs, n_msgs, (int)id); break;
    case IA_CHAT_TEMPLATE_MISTRAL_V7:
    case IA_CHAT_TEMPLATE_MISTRAL_V7_TEKKEN: fmt_mistral_v7(&b, msgs, n_msgs, (int)id); break;
    case IA_CHAT_TEMPLATE_LLAMA3: fmt_llama3(&b, msgs, n_msgs, add_assistant); break;
    case IA_CHAT_TEMPLATE_ZEPHYR:
        /* llama.cpp's zephyr writes StableLM's "<|endoftext|>"; Zephyr-7B and TinyLlama end turns with
         * their EOS token ("</s>"), which the caller passes */
        fmt_role_pipes(&b, msgs, n_msgs, add_assistant, eos_text && *eos_text ? eos_text : "<|endoftext|>");
        break;
    case IA_CHAT_TEMPLATE_PHI3: fmt_role_pipes(&b, msgs, n_msgs, add_assistant, "<|end|>"); break;
    case IA_CHAT_TEMPLATE_GEMMA: fmt_gemma(&b, msgs, n_msgs, add_assistant); break;
    case IA_CHAT_TEMPLATE_VICUNA: fmt_vicuna(&b, msgs, n_msgs, add_assistant, false); break;
    case IA_CHAT_TEMPLATE_VICUNA_ORCA: fmt_vicuna(&b, msgs, n_msgs, add_assistant, true); break;
    default:
        ia_buf_free(&b);
        ia_error_set(err, IA_ERR_INTERNAL, "chat template %d has no formatter", (int)id);
        return NULL;
    }
    char *out = ia_buf_take(&b);
    if (!out) ia_error_set(err, IA_ERR_NOMEM, "chat template %s: out of memory", template_names[id]);
    return out;
}

char *ia_chat_strip_bos(const char *formatted, const char *bos_text) {
    if (!formatted) return NULL;
    const char *s = formatted;
    size_t n = bos_text ? strlen(bos_text) : 0;
    if (n > 0)
        while (strncmp(s, bos_text, n) == 0) s += n;
    return ia_strdup(s);
}
