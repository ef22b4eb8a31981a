/* fuzz_tokenizer.c — libFuzzer target for the tokenizers: every input is encoded with the GPT-2
 * (byte-level BPE) and Llama (SPM) vocabularies, with and without special-token parsing, decoded,
 * and checked to come back unchanged where a round trip is guaranteed; SPM's word-by-word merging
 * is checked against one pass over the whole text. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf/gguf.h"
#include "tokenizer/tok_internal.h" /* spm_word_split, for the differential check */
#include "tokenizer/tokenizer.h"

static ia_tokenizer *tok_bpe, *tok_spm;

static ia_tokenizer *load(const char *name) {
    const char *dir = getenv("IA_DATA_DIR"); /* tests run from the repository root by default */
    char path[512];
    snprintf(path, sizeof path, "%s/tokenizer/ggml-vocab-%s.gguf", dir ? dir : "data", name);
    ia_error err = {0};
    gguf_file *f = gguf_file_open(path, &err);
    ia_tokenizer *t = f ? ia_tokenizer_load(f, &err) : NULL;
    gguf_file_free(f);
    if (!t) {
        fprintf(stderr, "fuzz_tokenizer: cannot load %s: %s\n", path, err.msg);
        abort();
    }
    return t;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    tok_bpe = load("gpt-2");
    tok_spm = load("llama-spm");
    return 0;
}

static bool contains(const uint8_t *d, size_t n, const char *needle) {
    size_t l = strlen(needle);
    for (size_t i = 0; i + l <= n; i++) {
        if (memcmp(d + i, needle, l) == 0) return true;
    }
    return false;
}

/* Encodes d, decodes the ids and, when `check`, insists on getting d back. */
static void run(const ia_tokenizer *t, const uint8_t *d, size_t n, bool add_special, bool parse_special, bool check) {
    int32_t *ids = NULL;
    ia_error err = {0};
    int k = ia_tokenizer_encode(t, (const char *)d, n, add_special, parse_special, &ids, &err);
    if (k < 0) {
        fprintf(stderr, "fuzz_tokenizer: encode failed: %s\n", err.msg);
        abort();
    }
    int nv = ia_tokenizer_n_vocab(t);
    for (int i = 0; i < k; i++) {
        if (ids[i] < 0 || ids[i] >= nv) abort();
        char piece[64];
        (void)ia_tokenizer_token_to_piece(t, ids[i], piece, (int)sizeof piece, parse_special);
    }
    /* specials are rendered when they were parsed, so that they come back as the text they were */
    char *back = ia_tokenizer_decode(t, ids, k, parse_special);
    if (!back) abort();
    if (check && (strlen(back) != n || memcmp(back, d, n) != 0)) {
        fprintf(stderr, "fuzz_tokenizer: round trip failed (%s, parse_special=%d): %zu bytes in, %zu out\n",
                ia_tokenizer_model_name(t), parse_special, n, strlen(back));
        abort();
    }
    ia_free(back);
    ia_free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* decode returns a C string, so inputs with NUL bytes cannot be compared; SPM turns a literal
     * U+2581 into a space by design (it is its space symbol) */
    bool has_nul = memchr(data, 0, size) != NULL;
    bool has_spm_space = contains(data, size, "\xe2\x96\x81");
    /* the SPM fast path (merging word by word) must equal the plain algorithm */
    if (tok_spm->spm_word_split) {
        int32_t *a = NULL, *b = NULL;
        int na = ia_tokenizer_encode(tok_spm, (const char *)data, size, true, true, &a, NULL);
        tok_spm->spm_word_split = false;
        int nb = ia_tokenizer_encode(tok_spm, (const char *)data, size, true, true, &b, NULL);
        tok_spm->spm_word_split = true;
        if (na != nb || (na > 0 && memcmp(a, b, (size_t)na * sizeof *a) != 0)) {
            fprintf(stderr, "fuzz_tokenizer: word-by-word SPM merging differs from the whole-text pass\n");
            abort();
        }
        ia_free(a);
        ia_free(b);
    }
    static const bool modes[3][2] = {{false, false}, {false, true}, {true, false}}; /* add_special, parse_special */
    for (int m = 0; m < 3; m++) {
        run(tok_bpe, data, size, modes[m][0], modes[m][1], !has_nul);
        run(tok_spm, data, size, modes[m][0], modes[m][1], !has_nul && !has_spm_space);
    }
    return 0;
}
