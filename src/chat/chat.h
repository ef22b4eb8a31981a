/* chat.h — chat templates: detection from tokenizer.chat_template and the built-in formatters
 * (public calls in iteralign.h). */
#ifndef IA_CHAT_H
#define IA_CHAT_H

#include "util/util.h"

/* Every template id, the llama2/mistral/vicuna variants included, is in the public enum. */
#define IA_CHAT_TEMPLATE_COUNT_ALL ((int)IA_CHAT_TEMPLATE_COUNT)

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
