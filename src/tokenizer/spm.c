/* spm.c — the SentencePiece-style tokenizer (`tokenizer.ggml.model = llama`): spaces become U+2581,
 * UTF-8 characters are merged pairwise by the score of the merged token (highest first), and
 * characters left without a token fall back to <0xNN> byte tokens. */
#include "tokenizer/tok_internal.h"

#define SPM_SPACE "\xe2\x96\x81" /* U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's space */

/* Only pieces SentencePiece itself would produce take part in merges: control, byte, unknown and
 * unused tokens are never formed from text (so "<s>" or "<0x0A>" typed in a prompt stay text). */
static int32_t spm_piece(const ia_tokenizer *t, const char *s, size_t n) {
    if (n > t->max_text_len) return -1;
    int32_t id = ia_tok_find(t, s, n);
    if (id < 0) return -1;
    return (t->tok[id].attr & (IA_TOK_ATTR_NORMAL | IA_TOK_ATTR_USER_DEFINED)) ? id : -1;
}

static bool spm_is_space(const char *buf, const ia_tok_sym *s) {
    return s->len == 3 && memcmp(buf + s->off, SPM_SPACE, 3) == 0;
}

static bool spm_try_bigram(const ia_tokenizer *t, const char *buf, ia_tok_sym *sym, ia_tok_heap *h, int32_t l,
                           int32_t r) {
    if (l < 0 || r < 0) return true;
    uint32_t size = sym[l].len + sym[r].len;
    int32_t id = spm_piece(t, buf + sym[l].off, size);
    if (id < 0) return true;
    ia_tok_bigram b = {.key = t->tok[id].score, .left = l, .right = r, .id = id, .size = size};
    return ia_tok_heap_push(h, b);
}

int ia_tok_spm_encode(const ia_tokenizer *t, const char *text, size_t len, bool space_prefix, ia_tok_ids *out) {
    size_t n_space = space_prefix ? 1 : 0;
    for (size_t i = 0; i < len; i++) n_space += text[i] == ' ';
    size_t blen = len + (space_prefix ? 1 : 0) + 2 * n_space; /* each space grows from 1 to 3 bytes */
    if (blen == 0) return IA_OK;
    if (blen >= UINT32_MAX / 2) return IA_ERR_RANGE;

    char *buf = ia_malloc(blen);
    ia_tok_sym *sym = NULL;
    ia_tok_heap heap = {0};
    int rc = IA_ERR_NOMEM;
    if (!buf) goto done;
    size_t o = 0;
    if (space_prefix) { memcpy(buf, SPM_SPACE, 3); o = 3; }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') { memcpy(buf + o, SPM_SPACE, 3); o += 3; }
        else buf[o++] = text[i];
    }

    /* One symbol per UTF-8 character; a byte that does not start a well-formed sequence is a
     * symbol of its own (it will come out as a byte token). */
    size_t n_sym = 0;
    for (size_t i = 0; i < blen; n_sym++) {
        int l = ia_tok_utf8_len((const unsigned char *)buf + i, blen - i);
        i += l ? (size_t)l : 1;
    }
    sym = ia_malloc(n_sym * sizeof *sym);
    if (!sym) goto done;
    size_t k = 0;
    for (size_t i = 0; i < blen; k++) {
        int l = ia_tok_utf8_len((const unsigned char *)buf + i, blen - i);
        if (!l) l = 1;
        sym[k].off = (uint32_t)i;
        sym[k].len = (uint32_t)l;
        sym[k].prev = (int32_t)k - 1;
        sym[k].next = k + 1 < n_sym ? (int32_t)k + 1 : -1;
        sym[k].id = spm_piece(t, buf + i, (size_t)l);
        i += (size_t)l;
    }

    /* Merge word by word when no merge can cross a word start (see spm_word_split): the merges
     * of one word never touch another, so the outcome equals one pass over the whole text. */
    for (size_t start = 0; start < n_sym;) {
        size_t end = n_sym;
        if (t->spm_word_split) {
            for (end = start + 1; end < n_sym; end++) {
                if (spm_is_space(buf, &sym[end]) && !spm_is_space(buf, &sym[end - 1])) break;
            }
        }
        for (size_t i = start + 1; i < end; i++) {
            if (!spm_try_bigram(t, buf, sym, &heap, (int32_t)i - 1, (int32_t)i)) goto done;
        }
        while (heap.n > 0) {
            ia_tok_bigram b = ia_tok_heap_pop(&heap);
            ia_tok_sym *ls = &sym[b.left], *rs = &sym[b.right];
            /* a queued pair is stale once either side has been merged into something else */
            if (ls->len == 0 || rs->len == 0 || ls->len + rs->len != b.size) continue;
            ls->len += rs->len;
            ls->id = b.id;
            rs->len = 0;
            ls->next = rs->next;
            if (rs->next >= 0) sym[rs->next].prev = b.left;
            if (!spm_try_bigram(t, buf, sym, &heap, ls->prev, b.left)) goto done;
            if (!spm_try_bigram(t, buf, sym, &heap, b.left, ls->next)) goto done;
        }
        start = end;
    }

    for (int32_t i = 0; i != -1; i = sym[i].next) {
        if (sym[i].id >= 0) {
            if (!ia_tok_ids_push(out, sym[i].id)) goto done;
            continue;
        }
        /* byte fallback; a character whose bytes are not all in the vocabulary is one <unk> */
        bool all_bytes = true;
        for (uint32_t j = 0; j < sym[i].len; j++) all_bytes &= t->byte_tok[(unsigned char)buf[sym[i].off + j]] >= 0;
        if (!all_bytes) {
            if (t->unk >= 0 && !ia_tok_ids_push(out, t->unk)) goto done;
            continue;
        }
        for (uint32_t j = 0; j < sym[i].len; j++) {
            if (!ia_tok_ids_push(out, t->byte_tok[(unsigned char)buf[sym[i].off + j]])) goto done;
        }
    }
    rc = IA_OK;
done:
    ia_free(heap.v);
    ia_free(sym);
    ia_free(buf);
    return rc;
}
