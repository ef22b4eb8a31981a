/* tokenizer.h — tokenizers built from GGUF metadata: SentencePiece-style (`llama`) and byte-level
 * BPE (`gpt2`) with the common pre-tokenizers (PCRE2). Public calls are in iteralign.h. */
#ifndef IA_TOKENIZER_H
#define IA_TOKENIZER_H

#include "gguf/gguf.h"

typedef enum ia_tokenizer_kind { IA_TOKENIZER_SPM = 1, IA_TOKENIZER_BPE = 2 } ia_tokenizer_kind;

/* token_type values (llama.cpp) */
enum { IA_TOKEN_NORMAL = 1, IA_TOKEN_UNKNOWN = 2, IA_TOKEN_CONTROL = 3, IA_TOKEN_USER_DEFINED = 4,
       IA_TOKEN_UNUSED = 5, IA_TOKEN_BYTE = 6 };

/* Builds a tokenizer from tokenizer.ggml.* metadata. Errors name the key that is missing or bad
 * (e.g. an unknown tokenizer.ggml.pre). The tokenizer does not reference `f` after loading.
 * Thread-safe for concurrent encode/decode. */
ia_tokenizer *ia_tokenizer_load(const gguf_file *f, ia_error *err);
void ia_tokenizer_free(ia_tokenizer *t);

ia_tokenizer_kind ia_tokenizer_kind_get(const ia_tokenizer *t);
const char *ia_tokenizer_model_name(const ia_tokenizer *t); /* "llama", "gpt2" */
const char *ia_tokenizer_pre_name(const ia_tokenizer *t);   /* "default", "llama-bpe", "qwen2", ... */
int32_t ia_tokenizer_eot(const ia_tokenizer *t);            /* -1 if none */
bool ia_tokenizer_add_eos(const ia_tokenizer *t);
/* The stored token text (SPM "▁" and GPT-2 byte alphabet as stored), NUL-terminated; NULL if out of range. */
const char *ia_tokenizer_token_text(const ia_tokenizer *t, int32_t id);
int ia_tokenizer_token_type(const ia_tokenizer *t, int32_t id);
/* Bytes a token renders as (after the byte alphabet / "▁" are undone). Specials (control tokens)
 * render as their text only when `special`. Returns the byte count (may exceed cap: then nothing
 * beyond cap is written). */
int ia_tokenizer_token_to_piece(const ia_tokenizer *t, int32_t id, char *buf, int cap, bool special);

#endif /* IA_TOKENIZER_H */
