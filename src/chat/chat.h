/* chat.h — chat templates: detection from tokenizer.chat_template and the built-in formatters
 * (public calls in iteralign.h). */
#ifndef IA_CHAT_H
#define IA_CHAT_H

#include "util/util.h"

/* Variants that llama.cpp tells apart inside the llama2, mistral and vicuna families but that the
 * public enum does not name yet. The official Llama-2-chat template, for one, is detected as
 * "llama2-sys-strip". They continue after IA_CHAT_TEMPLATE_COUNT so the public values stay put;
 * ia_chat_template_detect / _from_name / _name and ia_chat_apply accept and return them like the
 * public ids. Code that sizes a table by id must use IA_CHAT_TEMPLATE_COUNT_ALL.
 * (To be moved into the public enum of iteralign.h; then this block goes.) */
#define IA_CHAT_TEMPLATE_EXT_(n) ((ia_chat_template_id)(IA_CHAT_TEMPLATE_COUNT + (n)))
#define IA_CHAT_TEMPLATE_LLAMA2_SYS_BOS    IA_CHAT_TEMPLATE_EXT_(0) /* "<s>[INST] " reopens turns */
#define IA_CHAT_TEMPLATE_LLAMA2_SYS_STRIP  IA_CHAT_TEMPLATE_EXT_(1) /* contents trimmed */
#define IA_CHAT_TEMPLATE_MISTRAL_V3_TEKKEN IA_CHAT_TEMPLATE_EXT_(2) /* v3 without the spaces */
#define IA_CHAT_TEMPLATE_MISTRAL_V7_TEKKEN IA_CHAT_TEMPLATE_EXT_(3) /* v7 without the spaces */
#define IA_CHAT_TEMPLATE_VICUNA_ORCA       IA_CHAT_TEMPLATE_EXT_(4) /* "SYSTEM: " prefix */
#define IA_CHAT_TEMPLATE_COUNT_ALL         ((int)IA_CHAT_TEMPLATE_COUNT + 5)

/* Returns a copy (ia_free it) of `formatted` without the BOS text at its start, repeated copies
 * included. Why: the tokenizer adds the BOS token itself when its metadata says so
 * (ia_tokenizer_add_bos), and a template that also writes "<s>" / "<|begin_of_text|>" would give
 * two BOS tokens once special tokens are parsed, which degrades the model's output (llama.cpp
 * PR #7332 warns about it; its Jinja path strips the text since PR #15326). ia_chat_apply never
 * writes a leading BOS, so this is for text from elsewhere (a Jinja renderer, a user-supplied
 * prompt). bos_text NULL or "" means nothing to strip. NULL only when memory runs out. */
char *ia_chat_strip_bos(const char *formatted, const char *bos_text);

/* The names ia_chat_template_from_name accepts, comma-separated ("chatml, llama2, ..."), for
 * error and help messages. Static storage. */
const char *ia_chat_template_names(void);

#endif /* IA_CHAT_H */
