/* tokenizer.c — loading a tokenizer from GGUF metadata, splitting special tokens out of the text,
 * encoding (dispatch to spm.c / bpe.c), decoding and the accessors of iteralign.h / tokenizer.h. */
#include "tokenizer/tok_internal.h"

#include <ctype.h>
#include <stdlib.h>

#define KEY_MODEL "tokenizer.ggml.model"
#define KEY_PRE "tokenizer.ggml.pre"
#define KEY_TOKENS "tokenizer.ggml.tokens"
#define KEY_SCORES "tokenizer.ggml.scores"
#define KEY_TYPES "tokenizer.ggml.token_type"
#define KEY_MERGES "tokenizer.ggml.merges"

/* ====================================== loading ======================================= */

static uint32_t pow2_at_least(uint64_t n) {
    uint64_t c = 16;
    while (c < n) c <<= 1;
    return (uint32_t)c;
}

static uint16_t attr_of_type(int64_t type) {
    switch (type) {
    case IA_TOKEN_NORMAL: return IA_TOK_ATTR_NORMAL;
    case IA_TOKEN_UNKNOWN: return IA_TOK_ATTR_UNKNOWN;
    case IA_TOKEN_CONTROL: return IA_TOK_ATTR_CONTROL;
    case IA_TOKEN_USER_DEFINED: return IA_TOK_ATTR_USER_DEFINED;
    case IA_TOKEN_UNUSED: return IA_TOK_ATTR_UNUSED;
    case IA_TOKEN_BYTE: return IA_TOK_ATTR_BYTE;
    default: return 0; /* undefined types render as nothing and never match text, as in llama.cpp */
    }
}

/* Checks that key i is an array of the given element kind with n elements (n = 0: any). */
static int check_array(const gguf_file *f, const char *key, int64_t i, bool strings, uint64_t n, ia_error *err) {
    const char *path = gguf_file_path(f);
    if (gguf_kv_type(f, i) != GGUF_TYPE_ARRAY)
        return ia_error_set(err, IA_ERR_FORMAT, "%s: %s has type %s, expected an array", path, key,
                            gguf_type_name(gguf_kv_type(f, i)));
    gguf_type at = gguf_kv_arr_type(f, i);
    bool ok = strings ? at == GGUF_TYPE_STRING
                      : (at != GGUF_TYPE_STRING && at != GGUF_TYPE_ARRAY && at != GGUF_TYPE_BOOL);
    if (!ok)
        return ia_error_set(err, IA_ERR_FORMAT, "%s: %s is an array of %s, expected %s", path, key, gguf_type_name(at),
                            strings ? "strings" : "numbers");
    if (n && gguf_kv_arr_n(f, i) != n)
        return ia_error_set(err, IA_ERR_FORMAT, "%s: %s has %llu entries but " KEY_TOKENS " has %llu", path, key,
                            (unsigned long long)gguf_kv_arr_n(f, i), (unsigned long long)n);
    return IA_OK;
}

/* Reads a token id key: absent leaves *id alone; -1 / 0xFFFFFFFF mean "none" (converters write
 * that for unset ids). Out of range is an error when `strict` (BOS/EOS, which encoding adds), else
 * the default is kept, as llama.cpp does. */
static int read_token_id(const gguf_file *f, const char *key, int32_t n_vocab, bool strict, int32_t *id,
                         ia_error *err) {
    int64_t i = gguf_kv_find(f, key);
    if (i < 0) return IA_OK;
    int64_t v;
    int rc = gguf_kv_get_i64(f, i, &v, err);
    if (rc != IA_OK) return rc;
    if (v < 0 || v == 0xFFFFFFFFll) { *id = -1; return IA_OK; }
    if (v >= n_vocab && !strict) return IA_OK;
    if (v >= n_vocab)
        return ia_error_set(err, IA_ERR_FORMAT, "%s: %s = %lld is out of range (the vocabulary has %d tokens)",
                            gguf_file_path(f), key, (long long)v, n_vocab);
    *id = (int32_t)v;
    return IA_OK;
}

static int read_flag(const gguf_file *f, const char *key, bool *out, ia_error *err) {
    int r = gguf_find_bool(f, key, out, err);
    return r < 0 ? IA_ERR_FORMAT : IA_OK;
}

static int load_tokens(ia_tokenizer *t, const gguf_file *f, ia_error *err) {
    const char *path = gguf_file_path(f);
    int64_t ki = gguf_kv_find(f, KEY_TOKENS);
    if (ki < 0) return ia_error_set(err, IA_ERR_FORMAT, "%s: " KEY_TOKENS " is missing", path);
    int rc = check_array(f, KEY_TOKENS, ki, true, 0, err);
    if (rc != IA_OK) return rc;
    uint64_t n = gguf_kv_arr_n(f, ki);
    if (n == 0) return ia_error_set(err, IA_ERR_FORMAT, "%s: " KEY_TOKENS " is empty", path);
    if (n > (1u << 26)) return ia_error_set(err, IA_ERR_FORMAT, "%s: " KEY_TOKENS " has %llu entries (too many)", path,
                                            (unsigned long long)n);
    t->n_vocab = (int32_t)n;
    t->tok = ia_calloc(n, sizeof *t->tok);
    if (!t->tok)
        return ia_error_set(err, IA_ERR_NOMEM, "%s: out of memory for %llu tokens", path, (unsigned long long)n);

    /* texts: one arena; an empty token gets a unique placeholder, as llama.cpp does, so that it can
     * neither match text nor collide with another token */
    uint64_t total = 0;
    for (uint64_t j = 0; j < n; j++) {
        size_t l = 0;
        if (!gguf_kv_get_arr_str(f, ki, j, &l))
            return ia_error_set(err, IA_ERR_FORMAT, "%s: " KEY_TOKENS "[%llu] is unreadable", path,
                                (unsigned long long)j);
        total += (l ? l : 24) + 1;
    }
    if (total >= UINT32_MAX) return ia_error_set(err, IA_ERR_FORMAT, "%s: " KEY_TOKENS " holds too much text", path);
    t->text = ia_malloc(total);
    t->piece = ia_malloc(total);
    if (!t->text || !t->piece) return ia_error_set(err, IA_ERR_NOMEM, "%s: out of memory for token texts", path);
    uint32_t off = 0;
    for (uint64_t j = 0; j < n; j++) {
        size_t l = 0;
        const char *s = gguf_kv_get_arr_str(f, ki, j, &l);
        ia_tok_entry *e = &t->tok[j];
        e->text_off = off;
        if (l) {
            memcpy(t->text + off, s, l);
        } else {
            l = (size_t)snprintf(t->text + off, 24, "[EMPTY_%llu]", (unsigned long long)j);
        }
        e->text_len = (uint32_t)l;
        t->text[off + l] = 0;
        off += (uint32_t)l + 1;
        if (l > t->max_text_len) t->max_text_len = (uint32_t)l;
        e->type = IA_TOKEN_NORMAL;
        e->attr = IA_TOK_ATTR_NORMAL;
    }

    int64_t si = gguf_kv_find(f, KEY_SCORES);
    if (si >= 0) {
        rc = check_array(f, KEY_SCORES, si, false, n, err);
        if (rc != IA_OK) return rc;
        for (uint64_t j = 0; j < n; j++) {
            double v;
            rc = gguf_kv_get_arr_f64(f, si, j, &v, err);
            if (rc != IA_OK) return rc;
            t->tok[j].score = (float)v;
        }
    }
    int64_t ti = gguf_kv_find(f, KEY_TYPES);
    if (ti >= 0) {
        rc = check_array(f, KEY_TYPES, ti, false, n, err);
        if (rc != IA_OK) return rc;
        for (uint64_t j = 0; j < n; j++) {
            int64_t v;
            rc = gguf_kv_get_arr_i64(f, ti, j, &v, err);
            if (rc != IA_OK) return rc;
            t->tok[j].type = (int16_t)(v >= INT16_MIN && v <= INT16_MAX ? v : 0);
            t->tok[j].attr = attr_of_type(v);
        }
    }

    /* text -> id */
    t->map_mask = pow2_at_least(2 * n) - 1;
    t->map = ia_malloc(((size_t)t->map_mask + 1) * sizeof *t->map);
    if (!t->map) return ia_error_set(err, IA_ERR_NOMEM, "%s: out of memory", path);
    for (uint32_t i = 0; i <= t->map_mask; i++) t->map[i] = -1;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        const ia_tok_entry *e = &t->tok[id];
        const char *s = t->text + e->text_off;
        uint32_t i = (uint32_t)ia_tok_hash(s, e->text_len) & t->map_mask;
        for (; t->map[i] >= 0; i = (i + 1) & t->map_mask) {
            const ia_tok_entry *o = &t->tok[t->map[i]];
            if (o->text_len == e->text_len && memcmp(t->text + o->text_off, s, e->text_len) == 0)
                return ia_error_set(err, IA_ERR_FORMAT, "%s: " KEY_TOKENS "[%d] '%.40s' duplicates token %d", path,
                                    id, s, t->map[i]);
        }
        t->map[i] = id;
    }
    return IA_OK;
}

static int load_merges(ia_tokenizer *t, const gguf_file *f, ia_error *err) {
    const char *path = gguf_file_path(f);
    int64_t mi = gguf_kv_find(f, KEY_MERGES);
    if (mi < 0)
        return ia_error_set(err, IA_ERR_FORMAT, "%s: " KEY_MERGES " is missing (required for gpt2 tokenizers)", path);
    int rc = check_array(f, KEY_MERGES, mi, true, 0, err);
    if (rc != IA_OK) return rc;
    uint64_t n = gguf_kv_arr_n(f, mi);
    if (n > INT32_MAX / 4) return ia_error_set(err, IA_ERR_FORMAT, "%s: " KEY_MERGES " has too many entries", path);
    t->pair_mask = pow2_at_least(2 * n + 1) - 1;
    t->pairs = ia_malloc(((size_t)t->pair_mask + 1) * sizeof *t->pairs);
    char *cat = ia_malloc(2 * (size_t)t->max_text_len + 2);
    if (!t->pairs || !cat) {
        ia_free(cat);
        return ia_error_set(err, IA_ERR_NOMEM, "%s: out of memory for merges", path);
    }
    for (uint32_t i = 0; i <= t->pair_mask; i++) t->pairs[i].key = UINT64_MAX;
    rc = IA_OK;
    for (uint64_t j = 0; j < n && rc == IA_OK; j++) {
        size_t l = 0;
        const char *s = gguf_kv_get_arr_str(f, mi, j, &l);
        /* "left right", split at the first space after position 0 (so a left part may be a space) */
        const char *sp = l > 1 ? memchr(s + 1, ' ', l - 1) : NULL;
        if (!s || !sp) {
            rc = ia_error_set(err, IA_ERR_FORMAT,
                              "%s: " KEY_MERGES "[%llu] = '%.*s' is not two tokens separated by a space", path,
                              (unsigned long long)j, (int)(l > 60 ? 60 : l), s ? s : "");
            break;
        }
        size_t ll = (size_t)(sp - s), rl = l - ll - 1;
        int32_t left = ia_tok_find(t, s, ll), right = ia_tok_find(t, sp + 1, rl);
        if (left < 0 || right < 0) {
            size_t bad_len = left < 0 ? ll : rl;
            rc = ia_error_set(err, IA_ERR_FORMAT, "%s: " KEY_MERGES "[%llu] = '%.*s': '%.*s' is not in " KEY_TOKENS,
                              path, (unsigned long long)j, (int)(l > 60 ? 60 : l), s,
                              (int)(bad_len > 40 ? 40 : bad_len), left < 0 ? s : sp + 1);
            break;
        }
        /* a merge whose result is not a token can never produce output; skip it */
        if (ll + rl > t->max_text_len) continue;
        memcpy(cat, s, ll);
        memcpy(cat + ll, sp + 1, rl);
        int32_t id = ia_tok_find(t, cat, ll + rl);
        if (id < 0) continue;
        uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
        uint64_t h = key;
        h ^= h >> 33;
        h *= 0xff51afd7ed558ccdull;
        h ^= h >> 33;
        uint32_t i = (uint32_t)h & t->pair_mask;
        while (t->pairs[i].key != UINT64_MAX && t->pairs[i].key != key) i = (i + 1) & t->pair_mask;
        if (t->pairs[i].key == key) continue; /* a repeated merge keeps its first (best) rank */
        t->pairs[i].key = key;
        t->pairs[i].rank = (int32_t)j;
        t->pairs[i].id = id;
        t->n_merges++;
    }
    ia_free(cat);
    return rc;
}

static int32_t find_str(const ia_tokenizer *t, const char *s) { return ia_tok_find(t, s, strlen(s)); }

/* True when no token that merges can form holds U+2581 right after a different character (true
 * of SentencePiece vocabularies trained with split_by_whitespace, Llama's among them). */
static bool spm_words_independent(const ia_tokenizer *t) {
    for (int32_t id = 0; id < t->n_vocab; id++) {
        const ia_tok_entry *e = &t->tok[id];
        if (!(e->attr & (IA_TOK_ATTR_NORMAL | IA_TOK_ATTR_USER_DEFINED))) continue;
        const char *s = ia_tok_text(t, id);
        for (uint32_t j = 1; j + 3 <= e->text_len; j++) {
            if (memcmp(s + j, "\xe2\x96\x81", 3) != 0) continue;
            if (j < 3 || memcmp(s + j - 3, "\xe2\x96\x81", 3) != 0) return false;
        }
    }
    return true;
}

/* End-of-generation tokens by text (llama.cpp does the same: converters often leave them unmarked). */
static void detect_eog(ia_tokenizer *t) {
    static const char *const eot_texts[] = {
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>", "_<EOT>",
        /* DeepSeek's <｜end▁of▁sentence｜> */
        "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
        "<end_of_utterance>", NULL};
    static const char *const eog_texts[] = {
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
        "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>", "<end_of_utterance>", NULL};
    if (t->eot < 0) {
        for (int i = 0; eot_texts[i] && t->eot < 0; i++) t->eot = find_str(t, eot_texts[i]);
        if (t->eot >= 0) t->tok[t->eot].attr |= IA_TOK_ATTR_CONTROL;
    }
    if (t->eom < 0) {
        t->eom = find_str(t, "<|eom_id|>");
        if (t->eom >= 0) t->tok[t->eom].attr |= IA_TOK_ATTR_CONTROL;
    }
    for (int i = 0; eog_texts[i]; i++) {
        int32_t id = find_str(t, eog_texts[i]);
        if (id >= 0) t->tok[id].attr |= IA_TOK_ATTR_EOG | IA_TOK_ATTR_CONTROL;
    }
    /* harmony-style vocabularies (gpt-oss, solar-open) use <|end|> between messages, not at the end */
    int32_t end = find_str(t, "<|end|>");
    bool ret = find_str(t, "<|return|>") >= 0, call = find_str(t, "<|call|>") >= 0 || find_str(t, "<|calls|>") >= 0;
    bool flush = find_str(t, "<|flush|>") >= 0;
    if (end >= 0 && ((ret && call) || (call && flush))) {
        t->tok[end].attr &= (uint16_t)~IA_TOK_ATTR_EOG;
        t->tok[end].attr |= IA_TOK_ATTR_USER_DEFINED;
    }
    if (t->eos >= 0) t->tok[t->eos].attr |= IA_TOK_ATTR_EOG;
    if (t->eot >= 0) t->tok[t->eot].attr |= IA_TOK_ATTR_EOG;
    if (t->eom >= 0) t->tok[t->eom].attr |= IA_TOK_ATTR_EOG;
}

/* Phi-3's added tokens eat the whitespace after them (rstrip in its tokenizer.json); llama.cpp
 * recognises the model by name, the GGUF has no per-token flags. */
static void apply_name_quirks(ia_tokenizer *t, const gguf_file *f) {
    const char *name = NULL;
    if (gguf_find_str(f, "general.name", &name, NULL) != 1 || !name) return;
    char low[128];
    size_t i = 0;
    for (; name[i] && i + 1 < sizeof low; i++) low[i] = (char)tolower((unsigned char)name[i]);
    low[i] = 0;
    if (!strstr(low, "phi-3") && !strstr(low, "phi3")) return;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (t->tok[id].attr & IA_TOK_ATTR_SPECIAL) t->tok[id].attr |= IA_TOK_ATTR_RSTRIP;
    }
    int32_t id = find_str(t, "</s>");
    if (id >= 0) t->tok[id].attr |= IA_TOK_ATTR_RSTRIP;
    static const char *const keep[] = {"<unk>", "<s>", "<|endoftext|>"};
    for (int k = 0; k < 3; k++) {
        id = find_str(t, keep[k]);
        if (id >= 0) t->tok[id].attr &= (uint16_t)~IA_TOK_ATTR_RSTRIP;
    }
}

typedef struct special_key {
    uint32_t len;
    int32_t id;
} special_key;

static int special_cmp(const void *a, const void *b) {
    const special_key *x = a, *y = b;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int32_t trie_child(const ia_tokenizer *t, int32_t node, uint8_t c) {
    if (node == 0) return t->trie_root[c];
    for (int32_t k = t->trie[node].child; k >= 0; k = t->trie[k].sibling) {
        if (t->trie[k].byte == c) return k;
    }
    return -1;
}

/* Special tokens are matched longest first (llama.cpp's tokenizer_st_partition order); the trie
 * finds every occurrence in one pass over the text. */
static int build_specials(ia_tokenizer *t, ia_error *err) {
    int32_t n = 0;
    uint64_t bytes = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (t->tok[id].attr & IA_TOK_ATTR_SPECIAL) { n++; bytes += t->tok[id].text_len; }
    }
    for (int c = 0; c < 256; c++) t->trie_root[c] = -1;
    t->special_rank = ia_malloc((size_t)t->n_vocab * sizeof *t->special_rank);
    special_key *order = ia_malloc(((size_t)n + 1) * sizeof *order);
    t->trie = ia_malloc((bytes + 1) * sizeof *t->trie);
    if (!t->special_rank || !order || !t->trie) {
        ia_free(order);
        return ia_error_set(err, IA_ERR_NOMEM, "tokenizer: out of memory");
    }
    n = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        t->special_rank[id] = -1;
        if (t->tok[id].attr & IA_TOK_ATTR_SPECIAL) order[n++] = (special_key){t->tok[id].text_len, id};
    }
    qsort(order, (size_t)n, sizeof *order, special_cmp);
    t->n_trie = 1;
    t->trie[0] = (ia_tok_trie_node){.child = -1, .sibling = -1, .token = -1};
    for (int32_t k = 0; k < n; k++) {
        int32_t id = order[k].id;
        t->special_rank[id] = k;
        if (!(t->tok[id].attr & (IA_TOK_ATTR_CONTROL | IA_TOK_ATTR_UNKNOWN))) t->n_user_defined++;
        const uint8_t *s = (const uint8_t *)ia_tok_text(t, id);
        int32_t node = 0;
        for (uint32_t i = 0; i < t->tok[id].text_len; i++) {
            int32_t c = trie_child(t, node, s[i]);
            if (c < 0) {
                c = t->n_trie++;
                t->trie[c] = (ia_tok_trie_node){.child = -1, .sibling = -1, .token = -1, .byte = s[i]};
                if (node == 0) {
                    t->trie_root[s[i]] = c;
                } else {
                    t->trie[c].sibling = t->trie[node].child;
                    t->trie[node].child = c;
                }
            }
            node = c;
        }
        if (node > 0 && t->trie[node].token < 0) t->trie[node].token = id;
    }
    t->n_special = n;
    ia_free(order);
    return IA_OK;
}

/* The bytes a token stands for. Specials keep their text; SPM pieces turn U+2581 back into
 * spaces; byte-level BPE pieces are mapped back through the byte alphabet; <0xNN> is one byte. */
static void render_pieces(ia_tokenizer *t) {
    uint32_t off = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        ia_tok_entry *e = &t->tok[id];
        const char *s = ia_tok_text(t, id);
        char *out = t->piece + off;
        uint32_t n = 0;
        if (e->attr & IA_TOK_ATTR_SPECIAL) {
            memcpy(out, s, e->text_len);
            n = e->text_len;
        } else if ((e->attr & IA_TOK_ATTR_BYTE) && e->text_len == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' &&
                   isxdigit((unsigned char)s[3]) && isxdigit((unsigned char)s[4])) {
            char hex[3] = {s[3], s[4], 0};
            out[0] = (char)strtol(hex, NULL, 16);
            n = 1;
        } else if (e->attr & (IA_TOK_ATTR_NORMAL | IA_TOK_ATTR_BYTE)) {
            const unsigned char *u = (const unsigned char *)s;
            for (uint32_t i = 0; i < e->text_len;) {
                int l = ia_tok_utf8_len(u + i, e->text_len - i);
                if (t->kind == IA_TOKENIZER_SPM && l == 3 && memcmp(u + i, "\xe2\x96\x81", 3) == 0) {
                    out[n++] = ' ';
                } else if (t->kind == IA_TOKENIZER_BPE && l > 0) {
                    uint32_t cp = l == 1 ? u[i] : l == 2 ? ((u[i] & 0x1Fu) << 6) | (u[i + 1] & 0x3Fu) : 0x110000;
                    int b = ia_tok_cp_to_byte(cp);
                    if (b >= 0) {
                        out[n++] = (char)b;
                    } else { /* not in the alphabet: keep the character itself */
                        memcpy(out + n, u + i, (size_t)l);
                        n += (uint32_t)l;
                    }
                } else {
                    if (!l) l = 1;
                    memcpy(out + n, u + i, (size_t)l);
                    n += (uint32_t)l;
                }
                i += l ? (uint32_t)l : 1;
            }
        }
        e->piece_off = off;
        e->piece_len = n;
        off += n;
    }
}

ia_tokenizer *ia_tokenizer_load(const gguf_file *f, ia_error *err) {
    if (!f) {
        ia_error_set(err, IA_ERR_ARG, "ia_tokenizer_load: no file");
        return NULL;
    }
    const char *path = gguf_file_path(f);
    const char *model = NULL;
    int r = gguf_find_str(f, KEY_MODEL, &model, err);
    if (r == 0) ia_error_set(err, IA_ERR_FORMAT, "%s: " KEY_MODEL " is missing", path);
    if (r != 1) return NULL;
    ia_tokenizer_kind kind;
    if (strcmp(model, "llama") == 0) kind = IA_TOKENIZER_SPM;
    else if (strcmp(model, "gpt2") == 0) kind = IA_TOKENIZER_BPE;
    else {
        ia_error_set(err, IA_ERR_UNSUPPORTED, "%s: " KEY_MODEL " = '%.40s' is not supported (only 'llama' and 'gpt2')",
                     path, model);
        return NULL;
    }
    ia_tokenizer *t = ia_calloc(1, sizeof *t);
    if (!t) {
        ia_error_set(err, IA_ERR_NOMEM, "%s: out of memory", path);
        return NULL;
    }
    t->kind = kind;
    strcpy(t->model_name, kind == IA_TOKENIZER_SPM ? "llama" : "gpt2");
    int rc = load_tokens(t, f, err);
    if (rc != IA_OK) goto fail;

    /* per-model defaults (llama.cpp): SPM bos=1 eos=2 unk=0 with BOS and a space prefix; BPE
     * bos=eos=11 placeholders, no BOS unless the pre-tokenizer says so */
    const char *pre = NULL;
    r = gguf_find_str(f, KEY_PRE, &pre, err);
    if (r < 0) goto fail_fmt;
    if (r == 0 || !pre) pre = "default";
    t->pre_name = ia_strdup(pre);
    if (!t->pre_name) goto fail_nomem;
    t->eot = t->eom = -1;
    if (kind == IA_TOKENIZER_SPM) {
        t->bos = 1; t->eos = 2; t->unk = 0;
        t->add_bos = true; t->add_space_prefix = true;
    } else {
        t->bos = 11; t->eos = 11; t->unk = -1;
        rc = ia_tok_pretok_init(t, pre, err);
        if (rc != IA_OK) {
            ia_error_prefix(err, "%s", path);
            goto fail;
        }
    }
    if (t->bos >= t->n_vocab) t->bos = -1;
    if (t->eos >= t->n_vocab) t->eos = -1;
    if (t->unk >= t->n_vocab) t->unk = -1;
    if ((rc = read_token_id(f, "tokenizer.ggml.bos_token_id", t->n_vocab, true, &t->bos, err)) != IA_OK ||
        (rc = read_token_id(f, "tokenizer.ggml.eos_token_id", t->n_vocab, true, &t->eos, err)) != IA_OK ||
        (rc = read_token_id(f, "tokenizer.ggml.eot_token_id", t->n_vocab, false, &t->eot, err)) != IA_OK ||
        (rc = read_token_id(f, "tokenizer.ggml.eom_token_id", t->n_vocab, false, &t->eom, err)) != IA_OK ||
        (rc = read_token_id(f, "tokenizer.ggml.unknown_token_id", t->n_vocab, false, &t->unk, err)) != IA_OK)
        goto fail;
    if ((rc = read_flag(f, "tokenizer.ggml.add_bos_token", &t->add_bos, err)) != IA_OK ||
        (rc = read_flag(f, "tokenizer.ggml.add_eos_token", &t->add_eos, err)) != IA_OK ||
        (rc = read_flag(f, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix, err)) != IA_OK)
        goto fail;
    if (t->bos < 0) t->add_bos = false; /* nothing to add */
    if (t->eos < 0) t->add_eos = false;

    if (kind == IA_TOKENIZER_BPE && (rc = load_merges(t, f, err)) != IA_OK) goto fail;

    for (int b = 0; b < 256; b++) {
        char s[8];
        if (kind == IA_TOKENIZER_SPM) {
            snprintf(s, sizeof s, "<0x%02X>", b);
            int32_t id = find_str(t, s);
            if (id < 0) { /* vocabularies without byte tokens may hold the byte itself */
                s[0] = (char)b;
                id = b ? ia_tok_find(t, s, 1) : -1;
            }
            t->byte_tok[b] = id;
        } else {
            int l = ia_tok_utf8_put(ia_tok_byte_to_cp((uint8_t)b), s);
            t->byte_tok[b] = ia_tok_find(t, s, (size_t)l);
        }
    }
    if (kind == IA_TOKENIZER_SPM) t->spm_word_split = spm_words_independent(t);
    detect_eog(t);
    apply_name_quirks(t, f);
    if ((rc = build_specials(t, err)) != IA_OK) goto fail;
    render_pieces(t);
    return t;

fail_nomem:
    ia_error_set(err, IA_ERR_NOMEM, "%s: out of memory", path);
    goto fail;
fail_fmt:
fail:
    ia_tokenizer_free(t);
    return NULL;
}

void ia_tokenizer_free(ia_tokenizer *t) {
    if (!t) return;
    ia_tok_pretok_free(t);
    ia_free(t->tok);
    ia_free(t->text);
    ia_free(t->piece);
    ia_free(t->map);
    ia_free(t->pairs);
    ia_free(t->trie);
    ia_free(t->special_rank);
    ia_free(t->pre_name);
    ia_free(t);
}

/* ================================ special-token splitting ================================= */

typedef struct frag {
    size_t off, len;
    int32_t token; /* -1: raw text */
} frag;
typedef struct frags {
    frag *v;
    size_t n, cap;
} frags;

static bool frags_push(frags *a, size_t off, size_t len, int32_t token) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 16;
        frag *v = ia_realloc(a->v, cap * sizeof *v);
        if (!v) return false;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = (frag){off, len, token};
    return true;
}

typedef struct occ {
    size_t pos;
    int32_t token, rank;
} occ;

static int occ_cmp(const void *a, const void *b) {
    const occ *x = a, *y = b;
    if (x->rank != y->rank) return x->rank < y->rank ? -1 : 1;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

static int frag_cmp(const void *a, const void *b) {
    const frag *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

static bool is_ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'; }

/* Cuts text into raw fragments and special tokens with llama.cpp's semantics: for each special token
 * in priority order (longest text first), every leftmost non-overlapping occurrence inside text not
 * yet claimed becomes that token. Control/unknown tokens take part only with parse_special;
 * user-defined ones always (as Hugging Face's added tokens do). */
static int partition(const ia_tokenizer *t, const char *text, size_t len, bool parse_special, frags *out) {
    occ *occs = NULL;
    size_t n_occ = 0, cap_occ = 0;
    uint8_t *used = NULL;
    frags taken = {0};
    int rc = IA_ERR_NOMEM;
    bool any = len > 0 && (parse_special ? t->n_special > 0 : t->n_user_defined > 0);
    for (size_t p = 0; any && p < len; p++) {
        int32_t node = t->trie_root[(uint8_t)text[p]];
        for (size_t q = p; node >= 0;) {
            int32_t tok = t->trie[node].token;
            if (tok >= 0 && (parse_special || !(t->tok[tok].attr & (IA_TOK_ATTR_CONTROL | IA_TOK_ATTR_UNKNOWN)))) {
                if (n_occ == cap_occ) {
                    size_t cap = cap_occ ? cap_occ * 2 : 16;
                    occ *v = ia_realloc(occs, cap * sizeof *v);
                    if (!v) goto done;
                    occs = v;
                    cap_occ = cap;
                }
                occs[n_occ++] = (occ){p, tok, t->special_rank[tok]};
            }
            if (++q >= len) break;
            node = trie_child(t, node, (uint8_t)text[q]);
        }
    }
    if (n_occ == 0) {
        if (len > 0 && !frags_push(out, 0, len, -1)) goto done;
        rc = IA_OK;
        goto done;
    }
    qsort(occs, n_occ, sizeof *occs, occ_cmp);
    used = ia_calloc(len, 1);
    if (!used) goto done;
    for (size_t k = 0; k < n_occ; k++) {
        size_t pos = occs[k].pos, l = t->tok[occs[k].token].text_len;
        bool free_span = true;
        for (size_t i = pos; i < pos + l && free_span; i++) free_span = !used[i];
        if (!free_span) continue;
        memset(used + pos, 1, l);
        if (!frags_push(&taken, pos, l, occs[k].token)) goto done;
        uint16_t attr = t->tok[occs[k].token].attr;
        if (attr & IA_TOK_ATTR_LSTRIP) {
            for (size_t i = pos; i > 0 && !used[i - 1] && is_ascii_space(text[i - 1]); i--) used[i - 1] = 2;
        }
        if (attr & IA_TOK_ATTR_RSTRIP) {
            for (size_t i = pos + l; i < len && !used[i] && is_ascii_space(text[i]); i++) used[i] = 2;
        }
    }
    qsort(taken.v, taken.n, sizeof *taken.v, frag_cmp);
    size_t cur = 0;
    for (size_t k = 0; k <= taken.n; k++) {
        size_t end = k < taken.n ? taken.v[k].off : len;
        /* raw runs: unclaimed bytes between cur and the next token (stripped whitespace dropped) */
        for (size_t i = cur; i < end;) {
            if (used[i]) { i++; continue; }
            size_t j = i;
            while (j < end && !used[j]) j++;
            if (!frags_push(out, i, j - i, -1)) goto done;
            i = j;
        }
        if (k < taken.n) {
            if (!frags_push(out, taken.v[k].off, taken.v[k].len, taken.v[k].token)) goto done;
            cur = taken.v[k].off + taken.v[k].len;
        }
    }
    rc = IA_OK;
done:
    ia_free(occs);
    ia_free(used);
    ia_free(taken.v);
    return rc;
}

/* ======================================= encode ======================================= */

int ia_tokenizer_encode(const ia_tokenizer *t, const char *text, size_t len, bool add_special, bool parse_special,
                        int32_t **out_ids, ia_error *err) {
    if (out_ids) *out_ids = NULL;
    if (!t || !out_ids || (!text && len)) {
        ia_error_set(err, IA_ERR_ARG, "ia_tokenizer_encode: missing tokenizer, text or output");
        return -1;
    }
    if (len > (size_t)INT32_MAX / 4) {
        ia_error_set(err, IA_ERR_RANGE, "ia_tokenizer_encode: text of %zu bytes is too long", len);
        return -1;
    }
    ia_tok_ids out = {0};
    frags fr = {0};
    int rc = IA_ERR_NOMEM;
    if (add_special && t->add_bos && !ia_tok_ids_push(&out, t->bos)) goto fail;
    if (partition(t, text, len, parse_special, &fr) != IA_OK) goto fail;
    bool prev_special = true; /* SPM adds its space prefix at the start and after each special token */
    for (size_t i = 0; i < fr.n; i++) {
        const frag *g = &fr.v[i];
        if (g->token >= 0) {
            if (!ia_tok_ids_push(&out, g->token)) goto fail;
            prev_special = true;
            continue;
        }
        if (t->kind == IA_TOKENIZER_SPM) {
            rc = ia_tok_spm_encode(t, text + g->off, g->len, t->add_space_prefix && prev_special, &out);
            if (rc != IA_OK) goto fail;
        } else {
            rc = ia_tok_bpe_encode(t, text + g->off, g->len, &out, err);
            if (rc != IA_OK) goto fail_set;
        }
        prev_special = false;
    }
    rc = IA_ERR_NOMEM;
    if (add_special && t->add_eos && !ia_tok_ids_push(&out, t->eos)) goto fail;
    if (out.n > (size_t)INT32_MAX) {
        rc = IA_ERR_RANGE;
        goto fail;
    }
    if (!out.v && !(out.v = ia_malloc(sizeof *out.v))) goto fail; /* callers may always ia_free the result */
    ia_free(fr.v);
    *out_ids = out.v;
    return (int)out.n;
fail:
    ia_error_set(err, rc, rc == IA_ERR_NOMEM ? "ia_tokenizer_encode: out of memory"
                                              : "ia_tokenizer_encode: text of %zu bytes makes too many tokens", len);
fail_set:
    ia_free(fr.v);
    ia_free(out.v);
    return -1;
}

/* ======================================= decode ======================================= */

int ia_tokenizer_token_to_piece(const ia_tokenizer *t, int32_t id, char *buf, int cap, bool special) {
    if (!t || id < 0 || id >= t->n_vocab) return 0;
    const ia_tok_entry *e = &t->tok[id];
    if (!special && (e->attr & (IA_TOK_ATTR_CONTROL | IA_TOK_ATTR_UNKNOWN))) return 0;
    if (buf && cap > 0) memcpy(buf, t->piece + e->piece_off, e->piece_len < (uint32_t)cap ? e->piece_len : (size_t)cap);
    return (int)e->piece_len;
}

char *ia_tokenizer_decode(const ia_tokenizer *t, const int32_t *ids, int n, bool special) {
    ia_buf b = {0};
    if (!t || (!ids && n > 0)) return NULL;
    /* SPM encoding puts a space before the text and after every special token; take it back off the
     * first piece that follows (llama.cpp removes it from the first token) */
    bool strip = t->kind == IA_TOKENIZER_SPM && t->add_space_prefix;
    for (int i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_vocab) continue;
        const ia_tok_entry *e = &t->tok[id];
        const char *p = t->piece + e->piece_off;
        size_t l = e->piece_len;
        if (e->attr & IA_TOK_ATTR_SPECIAL) {
            if (special || !(e->attr & (IA_TOK_ATTR_CONTROL | IA_TOK_ATTR_UNKNOWN))) ia_buf_append(&b, p, l);
            strip = t->kind == IA_TOKENIZER_SPM && t->add_space_prefix;
            continue;
        }
        if (l == 0) continue;
        if (strip && p[0] == ' ') { p++; l--; }
        strip = false;
        ia_buf_append(&b, p, l);
    }
    return ia_buf_take(&b);
}

/* ===================================== accessors ===================================== */

int ia_tokenizer_n_vocab(const ia_tokenizer *t) { return t ? t->n_vocab : 0; }
int32_t ia_tokenizer_bos(const ia_tokenizer *t) { return t ? t->bos : -1; }
int32_t ia_tokenizer_eos(const ia_tokenizer *t) { return t ? t->eos : -1; }
int32_t ia_tokenizer_eot(const ia_tokenizer *t) { return t ? t->eot : -1; }
bool ia_tokenizer_add_bos(const ia_tokenizer *t) { return t && t->add_bos; }
bool ia_tokenizer_add_eos(const ia_tokenizer *t) { return t && t->add_eos; }
ia_tokenizer_kind ia_tokenizer_kind_get(const ia_tokenizer *t) { return t ? t->kind : (ia_tokenizer_kind)0; }
const char *ia_tokenizer_model_name(const ia_tokenizer *t) { return t ? t->model_name : NULL; }
const char *ia_tokenizer_pre_name(const ia_tokenizer *t) { return t ? t->pre_name : NULL; }

bool ia_tokenizer_is_eog(const ia_tokenizer *t, int32_t id) {
    return t && id >= 0 && id < t->n_vocab && (t->tok[id].attr & IA_TOK_ATTR_EOG);
}

const char *ia_tokenizer_token_text(const ia_tokenizer *t, int32_t id) {
    return t && id >= 0 && id < t->n_vocab ? ia_tok_text(t, id) : NULL;
}

int ia_tokenizer_token_type(const ia_tokenizer *t, int32_t id) {
    return t && id >= 0 && id < t->n_vocab ? t->tok[id].type : 0;
}
