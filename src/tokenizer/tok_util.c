/* tok_util.c — tokenizer helpers: growable vectors, UTF-8, the GPT-2 byte alphabet, token and
 * merge lookups, and the merge priority queue. */
#include "tokenizer/tok_internal.h"

#include <stdlib.h>

/* ---- vectors ---- */

bool ia_tok_ids_push(ia_tok_ids *a, int32_t id) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        int32_t *v = ia_realloc(a->v, cap * sizeof *v);
        if (!v) return false;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = id;
    return true;
}

bool ia_tok_spans_push(ia_tok_spans *a, size_t off, size_t len) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        ia_tok_span *v = ia_realloc(a->v, cap * sizeof *v);
        if (!v) return false;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n].off = off;
    a->v[a->n].len = len;
    a->n++;
    return true;
}

/* ---- UTF-8 ---- */

int ia_tok_utf8_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    if (c < 0xC2) return 0; /* continuation byte or overlong 2-byte lead */
    if (c < 0xE0) return (n >= 2 && (s[1] & 0xC0) == 0x80) ? 2 : 0;
    if (c < 0xF0) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && s[1] < 0xA0) return 0;  /* overlong */
        if (c == 0xED && s[1] >= 0xA0) return 0; /* UTF-16 surrogate */
        return 3;
    }
    if (c < 0xF5) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80) return 0;
        if (c == 0xF0 && s[1] < 0x90) return 0;  /* overlong */
        if (c == 0xF4 && s[1] >= 0x90) return 0; /* above U+10FFFF */
        return 4;
    }
    return 0;
}

int ia_tok_utf8_put(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) { o[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

bool ia_tok_utf8_valid(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        int l = ia_tok_utf8_len(u + i, n - i);
        if (!l) return false;
        i += (size_t)l;
    }
    return true;
}

/* ---- GPT-2 byte alphabet ----
 * Byte-level BPE stores every byte as a printable character: the printable Latin-1 bytes stand for
 * themselves and the other 68 bytes map, in byte order, to U+0100.. (so space becomes 'Ġ'). */

static bool byte_is_printable(unsigned b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
}

uint32_t ia_tok_byte_to_cp(uint8_t b) {
    if (byte_is_printable(b)) return b;
    unsigned n = 0; /* rank of b among the non-printable bytes */
    for (unsigned i = 0; i < b; i++) n += !byte_is_printable(i);
    return 256 + n;
}

int ia_tok_cp_to_byte(uint32_t cp) {
    if (cp < 256) return byte_is_printable(cp) ? (int)cp : -1;
    if (cp >= 256 + 68) return -1;
    unsigned n = cp - 256;
    for (unsigned b = 0; b < 256; b++) {
        if (!byte_is_printable(b) && n-- == 0) return (int)b;
    }
    return -1;
}

/* ---- lookups ---- */

uint64_t ia_tok_hash(const char *s, size_t n) {
    /* FNV-1a, then a final mix so that the low bits used for the slot index are well spread. */
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    return h;
}

int32_t ia_tok_find(const ia_tokenizer *t, const char *s, size_t n) {
    uint32_t i = (uint32_t)ia_tok_hash(s, n) & t->map_mask;
    for (;;) {
        int32_t id = t->map[i];
        if (id < 0) return -1;
        const ia_tok_entry *e = &t->tok[id];
        if (e->text_len == n && memcmp(t->text + e->text_off, s, n) == 0) return id;
        i = (i + 1) & t->map_mask;
    }
}

static uint64_t pair_hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
}

int32_t ia_tok_pair_find(const ia_tokenizer *t, int32_t left, int32_t right, int32_t *out_id) {
    if (!t->pairs || left < 0 || right < 0) return -1;
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    uint32_t i = (uint32_t)pair_hash(key) & t->pair_mask;
    for (;;) {
        const ia_tok_pair_slot *s = &t->pairs[i];
        if (s->key == UINT64_MAX) return -1;
        if (s->key == key) {
            *out_id = s->id;
            return s->rank;
        }
        i = (i + 1) & t->pair_mask;
    }
}

/* ---- merge queue ---- */

static bool bigram_before(const ia_tok_bigram *a, const ia_tok_bigram *b) {
    if (a->key != b->key) return a->key > b->key;
    return a->left < b->left;
}

bool ia_tok_heap_push(ia_tok_heap *h, ia_tok_bigram b) {
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        ia_tok_bigram *v = ia_realloc(h->v, cap * sizeof *v);
        if (!v) return false;
        h->v = v;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!bigram_before(&b, &h->v[p])) break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = b;
    return true;
}

ia_tok_bigram ia_tok_heap_pop(ia_tok_heap *h) {
    ia_tok_bigram top = h->v[0];
    ia_tok_bigram last = h->v[--h->n];
    size_t n = h->n, i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && bigram_before(&h->v[c + 1], &h->v[c])) c++;
        if (!bigram_before(&h->v[c], &last)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (n > 0) h->v[i] = last;
    return top;
}
