/* bpe.c — the byte-level BPE tokenizer (`tokenizer.ggml.model = gpt2`): each pre-tokenized word is
 * spelled in the GPT-2 byte alphabet, one symbol per byte, and adjacent symbols are merged by the
 * rank of their pair in tokenizer.ggml.merges (lowest rank first, leftmost first on ties). */
#include "tokenizer/tok_internal.h"

static bool bpe_try_bigram(const ia_tokenizer *t, ia_tok_sym *sym, ia_tok_heap *h, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return true;
    int32_t id;
    int32_t rank = ia_tok_pair_find(t, sym[l].id, sym[r].id, &id);
    if (rank < 0) return true;
    ia_tok_bigram b = {.key = -(double)rank, .left = l, .right = r, .id = id, .size = sym[l].len + sym[r].len};
    return ia_tok_heap_push(h, b);
}

/* Merges one word (bytes w[0..n)) and appends its tokens. sym has room for n symbols, enc for 2n
 * bytes. */
static int bpe_word(const ia_tokenizer *t, const unsigned char *w, size_t n, ia_tok_sym *sym, char *enc,
                    ia_tok_heap *heap, ia_tok_ids *out) {
    if (t->ignore_merges) {
        /* llama3-style vocabularies: a word that is itself a token is taken whole, even where the
         * merges would not build it */
        size_t el = 0;
        for (size_t i = 0; i < n; i++) el += (size_t)ia_tok_utf8_put(ia_tok_byte_to_cp(w[i]), enc + el);
        int32_t id = el <= t->max_text_len ? ia_tok_find(t, enc, el) : -1;
        if (id >= 0) return ia_tok_ids_push(out, id) ? IA_OK : IA_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        sym[i].off = (uint32_t)i;
        sym[i].len = 1;
        sym[i].prev = (int32_t)i - 1;
        sym[i].next = i + 1 < n ? (int32_t)i + 1 : -1;
        sym[i].id = t->byte_tok[w[i]];
    }
    heap->n = 0;
    for (size_t i = 1; i < n; i++) {
        if (!bpe_try_bigram(t, sym, heap, (int32_t)i - 1, (int32_t)i)) return IA_ERR_NOMEM;
    }
    while (heap->n > 0) {
        ia_tok_bigram b = ia_tok_heap_pop(heap);
        ia_tok_sym *ls = &sym[b.left], *rs = &sym[b.right];
        /* stale: one side was merged into another symbol since this pair was queued */
        if (ls->len == 0 || rs->len == 0 || ls->len + rs->len != b.size) continue;
        ls->len += rs->len;
        ls->id = b.id;
        rs->len = 0;
        ls->next = rs->next;
        if (rs->next >= 0) sym[rs->next].prev = b.left;
        if (!bpe_try_bigram(t, sym, heap, ls->prev, b.left)) return IA_ERR_NOMEM;
        if (!bpe_try_bigram(t, sym, heap, b.left, ls->next)) return IA_ERR_NOMEM;
    }
    for (int32_t i = 0; i != -1; i = sym[i].next) {
        /* a byte whose alphabet character is missing from the vocabulary becomes <unk>, if any */
        int32_t id = sym[i].id >= 0 ? sym[i].id : t->unk;
        if (id >= 0 && !ia_tok_ids_push(out, id)) return IA_ERR_NOMEM;
    }
    return IA_OK;
}

int ia_tok_bpe_encode(const ia_tokenizer *t, const char *text, size_t len, ia_tok_ids *out, ia_error *err) {
    if (len == 0) return IA_OK;
    if (len >= UINT32_MAX / 4) return ia_error_set(err, IA_ERR_RANGE, "tokenizer: text of %zu bytes is too long", len);
    ia_tok_spans words = {0};
    ia_tok_heap heap = {0};
    ia_tok_sym *sym = NULL;
    char *enc = NULL;
    int rc = ia_tok_pretok_split(t, text, len, &words, err);
    if (rc != IA_OK) goto done;
    size_t maxw = 1;
    for (size_t i = 0; i < words.n; i++) maxw = words.v[i].len > maxw ? words.v[i].len : maxw;
    sym = ia_malloc(maxw * sizeof *sym);
    enc = ia_malloc(2 * maxw);
    rc = IA_ERR_NOMEM;
    if (!sym || !enc) goto done;
    for (size_t i = 0; i < words.n; i++) {
        if (words.v[i].len == 0) continue;
        rc = bpe_word(t, (const unsigned char *)text + words.v[i].off, words.v[i].len, sym, enc, &heap, out);
        if (rc != IA_OK) goto done;
    }
    rc = IA_OK;
done:
    if (rc == IA_ERR_NOMEM) ia_error_set(err, IA_ERR_NOMEM, "tokenizer: out of memory");
    ia_free(words.v);
    ia_free(heap.v);
    ia_free(sym);
    ia_free(enc);
    return rc;
}
