/* tok_internal.h — private declarations shared by the src/tokenizer sources (not an API). */
#ifndef IA_TOK_INTERNAL_H
#define IA_TOK_INTERNAL_H

#include "tokenizer/tokenizer.h"

#include <stdint.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

/* Token attribute bits, a superset of the GGUF token type: llama.cpp upgrades some tokens (an
 * end-of-turn token stored as user-defined becomes control) and adds strip flags, so types alone
 * are not enough. */
enum {
    IA_TOK_ATTR_UNKNOWN = 1 << 0,
    IA_TOK_ATTR_UNUSED = 1 << 1,
    IA_TOK_ATTR_NORMAL = 1 << 2,
    IA_TOK_ATTR_CONTROL = 1 << 3,
    IA_TOK_ATTR_USER_DEFINED = 1 << 4,
    IA_TOK_ATTR_BYTE = 1 << 5,
    IA_TOK_ATTR_LSTRIP = 1 << 6, /* whitespace before the token is eaten when it is split out */
    IA_TOK_ATTR_RSTRIP = 1 << 7, /* whitespace after it is eaten */
    IA_TOK_ATTR_EOG = 1 << 8,    /* ends generation */
};
/* Tokens split out of the text before the tokenizer proper runs (control ones only when parsing
 * special tokens). */
#define IA_TOK_ATTR_SPECIAL (IA_TOK_ATTR_CONTROL | IA_TOK_ATTR_USER_DEFINED | IA_TOK_ATTR_UNKNOWN)

typedef struct ia_tok_entry {
    uint32_t text_off, text_len;   /* stored text in t->text (NUL-terminated there) */
    uint32_t piece_off, piece_len; /* rendered bytes (special = true) in t->piece */
    float score;
    uint16_t attr;
    int16_t type; /* as stored in tokenizer.ggml.token_type (1 when absent) */
} ia_tok_entry;

/* Open-addressing map from a pair of token ids to the merge that joins them. */
typedef struct ia_tok_pair_slot {
    uint64_t key; /* (left << 32) | right; UINT64_MAX = empty */
    int32_t rank;
    int32_t id;   /* token the merge produces */
} ia_tok_pair_slot;

/* Byte-trie over the texts of the special tokens (for splitting them out of the input). */
typedef struct ia_tok_trie_node {
    int32_t child;   /* first child, -1 none */
    int32_t sibling; /* next sibling, -1 none */
    int32_t token;   /* token ending here, -1 none */
    uint8_t byte;
} ia_tok_trie_node;

#define IA_TOK_MAX_REGEX 8

struct ia_tokenizer {
    ia_tokenizer_kind kind;
    char model_name[8]; /* "llama" / "gpt2" */
    char *pre_name;
    int32_t n_vocab;
    ia_tok_entry *tok;
    char *text;  /* all token texts, each NUL-terminated */
    char *piece; /* all rendered pieces */

    int32_t *map; /* text -> id, open addressing, -1 empty */
    uint32_t map_mask;
    uint32_t max_text_len; /* longest token text (bounds merge lookups) */

    int32_t bos, eos, eot, eom, unk; /* -1 when none */
    bool add_bos, add_eos, add_space_prefix, ignore_merges;
    /* SPM: no mergeable token has U+2581 right after another character, so a merge can never span
     * the start of a word and words can be merged one at a time (same result, small queues) */
    bool spm_word_split;

    /* SPM: id of "<0xNN>" per byte (byte fallback). BPE: id of the byte-alphabet character. */
    int32_t byte_tok[256];

    /* BPE merges */
    ia_tok_pair_slot *pairs;
    uint32_t pair_mask;
    int32_t n_merges;

    /* BPE pre-tokenizer: regexes applied in sequence */
    int n_regex;
    pcre2_code *regex[IA_TOK_MAX_REGEX];
    pcre2_general_context *gctx; /* routes PCRE2's allocations through ia_malloc/ia_free */

    /* special tokens: trie and priority (longest text first) */
    ia_tok_trie_node *trie; /* node 0 is the root; its children are found through trie_root */
    int32_t n_trie;
    int32_t trie_root[256];
    int32_t *special_rank; /* per token: position in priority order, -1 if not special */
    int32_t n_special;
    int32_t n_user_defined; /* specials that are split out even without parse_special */
};

/* ---- growable vectors ---- */
typedef struct ia_tok_ids {
    int32_t *v;
    size_t n, cap;
} ia_tok_ids;
bool ia_tok_ids_push(ia_tok_ids *a, int32_t id);

typedef struct ia_tok_span {
    size_t off, len;
} ia_tok_span;
typedef struct ia_tok_spans {
    ia_tok_span *v;
    size_t n, cap;
} ia_tok_spans;
bool ia_tok_spans_push(ia_tok_spans *a, size_t off, size_t len);

/* ---- UTF-8 ---- */
/* Length of the well-formed UTF-8 sequence at s (1..4), or 0 if the bytes there are not one
 * (overlong, surrogate, truncated, > U+10FFFF, stray continuation byte). n > 0. */
int ia_tok_utf8_len(const unsigned char *s, size_t n);
/* Writes cp as UTF-8 into out (4 bytes room); returns the byte count. */
int ia_tok_utf8_put(uint32_t cp, char *out);
bool ia_tok_utf8_valid(const char *s, size_t n);

/* ---- GPT-2 byte alphabet ---- */
uint32_t ia_tok_byte_to_cp(uint8_t b);
int ia_tok_cp_to_byte(uint32_t cp); /* -1 when cp is not in the alphabet */

/* ---- lookups ---- */
uint64_t ia_tok_hash(const char *s, size_t n);
int32_t ia_tok_find(const ia_tokenizer *t, const char *s, size_t n); /* -1 if absent */
static inline const char *ia_tok_text(const ia_tokenizer *t, int32_t id) { return t->text + t->tok[id].text_off; }
/* Merge of (left, right): rank and result id, or rank -1. */
int32_t ia_tok_pair_find(const ia_tokenizer *t, int32_t left, int32_t right, int32_t *out_id);

/* ---- merge queue (binary heap): highest key first, then leftmost ---- */
typedef struct ia_tok_bigram {
    double key; /* SPM: score of the merged token; BPE: -rank */
    int32_t left, right;
    int32_t id;   /* the merged token */
    uint32_t size; /* bytes of left + right when queued; a mismatch later means it is stale */
} ia_tok_bigram;
typedef struct ia_tok_heap {
    ia_tok_bigram *v;
    size_t n, cap;
} ia_tok_heap;
bool ia_tok_heap_push(ia_tok_heap *h, ia_tok_bigram b);
ia_tok_bigram ia_tok_heap_pop(ia_tok_heap *h); /* h->n > 0 */

/* Symbols of the merge loops: a byte span of the working text, linked with its neighbours. */
typedef struct ia_tok_sym {
    uint32_t off, len; /* len 0 = merged away */
    int32_t prev, next;
    int32_t id; /* token of the span, -1 if it is none */
} ia_tok_sym;

/* ---- the tokenizers proper (text is one fragment without special tokens) ---- */
/* SPM: escapes spaces as U+2581 (after an optional leading space), merges by score, falls back to
 * byte tokens. Returns IA_OK or IA_ERR_NOMEM. */
int ia_tok_spm_encode(const ia_tokenizer *t, const char *text, size_t len, bool space_prefix, ia_tok_ids *out);
/* BPE: pre-tokenizes with the regexes, maps bytes to the byte alphabet, merges by rank. */
int ia_tok_bpe_encode(const ia_tokenizer *t, const char *text, size_t len, ia_tok_ids *out, ia_error *err);

/* ---- pre-tokenizers ---- */
/* Looks up tokenizer.ggml.pre, compiles its regexes into t and applies its flags. Errors name the
 * key and value. */
int ia_tok_pretok_init(ia_tokenizer *t, const char *pre, ia_error *err);
void ia_tok_pretok_free(ia_tokenizer *t);
/* Splits text into words (spans relative to text) with t's regexes; text between matches is kept
 * as words of its own, as llama.cpp does. */
int ia_tok_pretok_split(const ia_tokenizer *t, const char *text, size_t len, ia_tok_spans *out, ia_error *err);
/* The i-th name accepted for tokenizer.ggml.pre, NULL past the end (for tests). */
const char *ia_tok_pretok_name_at(int i);

#endif /* IA_TOK_INTERNAL_H */
