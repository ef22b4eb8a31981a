/* test_tokenizer.c — tokenizer tests: llama.cpp's test vectors (data/tokenizer/ggml-vocab-NAME.gguf.inp/.out) run
 * directly, round trips, special tokens, BOS/EOS, decoding, hostile input, broken metadata, OOM. */
#include "test_util.h"

#include <glob.h>
#include <pthread.h>
#include <sys/stat.h>

#include "gguf/gguf.h"
#include "tokenizer/tok_internal.h" /* ia_tok_pretok_name_at */
#include "tokenizer/tokenizer.h"

#define VOCAB_DIR TEST_DATA "/tokenizer"
#define SEP "\n__ggml_vocab_test__\n"

/* ---------------------------------------------------------------- helpers */

static bool file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

static ia_tokenizer *load_path(const char *path, ia_error *err) {
    gguf_file *f = gguf_file_open(path, err);
    if (!f) return NULL;
    ia_tokenizer *t = ia_tokenizer_load(f, err);
    gguf_file_free(f); /* the tokenizer must not keep references into the file */
    return t;
}

/* Loaded once per vocabulary name ("gpt-2", "llama-spm", ...); NULL if the file is absent. */
static struct { char name[64]; ia_tokenizer *t; } cache[16];

static void vocab_free_all(void) {
    for (int i = 0; i < 16; i++) {
        ia_tokenizer_free(cache[i].t);
        cache[i].t = NULL;
    }
}

static ia_tokenizer *vocab(const char *name) {
    for (int i = 0; i < 16; i++) {
        if (cache[i].t && strcmp(cache[i].name, name) == 0) return cache[i].t;
    }
    char path[256];
    snprintf(path, sizeof path, VOCAB_DIR "/ggml-vocab-%s.gguf", name);
    if (!file_exists(path)) return NULL;
    ia_error err = {0};
    ia_tokenizer *t = load_path(path, &err);
    if (!t) fail_msg("loading %s: %s", path, err.msg);
    for (int i = 0; i < 16; i++) {
        if (!cache[i].t) {
            snprintf(cache[i].name, sizeof cache[i].name, "%s", name);
            cache[i].t = t;
            break;
        }
    }
    return t;
}

static int encode(const ia_tokenizer *t, const char *s, size_t n, bool add_special, bool parse_special, int32_t **ids) {
    ia_error err = {0};
    int k = ia_tokenizer_encode(t, s, n, add_special, parse_special, ids, &err);
    if (k < 0) fail_msg("encode failed: %s", err.msg);
    return k;
}

static void assert_ids(const ia_tokenizer *t, const char *s, bool add_special, bool parse_special, const int32_t *want,
                       int n_want) {
    int32_t *ids = NULL;
    int n = encode(t, s, strlen(s), add_special, parse_special, &ids);
    bool same = n == n_want && (n == 0 || memcmp(ids, want, (size_t)n * sizeof *ids) == 0);
    if (!same) {
        fprintf(stderr, "# '%s': got", s);
        for (int i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, ", want");
        for (int i = 0; i < n_want; i++) fprintf(stderr, " %d", want[i]);
        fprintf(stderr, "\n");
    }
    ia_free(ids);
    assert_true(same);
}

static void assert_roundtrip(const ia_tokenizer *t, const char *s, size_t n, bool add_special) {
    int32_t *ids = NULL;
    int k = encode(t, s, n, add_special, false, &ids);
    char *back = ia_tokenizer_decode(t, ids, k, false);
    assert_non_null(back);
    bool same = strlen(back) == n && memcmp(back, s, n) == 0;
    if (!same) fprintf(stderr, "# round trip: '%.*s' came back as '%s'\n", (int)n, s, back);
    ia_free(back);
    ia_free(ids);
    assert_true(same);
}

/* ---------------------------------------------------------------- llama.cpp test vectors */

typedef struct vec_case {
    const char *text; /* points into the .inp buffer */
    size_t len;
    char *want; /* the .out line */
} vec_case;

/* Splits <vocab>.gguf.inp on "\n__ggml_vocab_test__\n" (each case is followed by one) and pairs
 * the cases with the lines of .out. Returns the case count, -1 on a malformed pair of files. */
static int vec_read(const char *inp_path, char **inp_buf, char **out_buf, vec_case *cases, int cap) {
    char out_path[300];
    snprintf(out_path, sizeof out_path, "%.*s.out", (int)(strlen(inp_path) - 4), inp_path);
    size_t ni, no;
    ia_error err = {0};
    *inp_buf = ia_file_read(inp_path, &ni, &err);
    *out_buf = ia_file_read(out_path, &no, &err);
    if (!*inp_buf || !*out_buf) return -1;
    int n = 0;
    const char *p = *inp_buf, *end = *inp_buf + ni;
    while (p < end) {
        const char *s = strstr(p, SEP);
        if (!s || n == cap) return -1;
        cases[n].text = p;
        cases[n].len = (size_t)(s - p);
        n++;
        p = s + strlen(SEP);
    }
    char *line = *out_buf;
    for (int i = 0; i < n; i++) {
        if (!line || line >= *out_buf + no) return -1;
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        cases[i].want = line;
        line = nl ? nl + 1 : NULL;
    }
    return n;
}

static void test_vectors(void **state) {
    const char *inp_path = *state;
    char gguf_path[300];
    snprintf(gguf_path, sizeof gguf_path, "%.*s", (int)(strlen(inp_path) - 4), inp_path);
    if (!file_exists(gguf_path)) { /* the test name carries the TAP "# SKIP" directive */
        printf("# skipped %s: vocabulary %s is not shipped\n", inp_path, gguf_path);
        return;
    }
    ia_error err = {0};
    ia_tokenizer *t = load_path(gguf_path, &err);
    if (!t) fail_msg("%s: %s", gguf_path, err.msg);
    static vec_case cases[512];
    char *ib = NULL, *ob = NULL;
    int n = vec_read(inp_path, &ib, &ob, cases, 512);
    assert_true(n > 0);
    int pass = 0;
    for (int i = 0; i < n; i++) {
        int32_t *ids = NULL;
        int k = encode(t, cases[i].text, cases[i].len, false, false, &ids);
        /* compare with the expected ids of the .out line */
        bool ok = true;
        char *p = cases[i].want;
        int j = 0;
        for (;;) {
            char *e;
            long v = strtol(p, &e, 10);
            if (e == p) break;
            if (j >= k || ids[j] != v) ok = false;
            j++;
            p = e;
        }
        if (j != k) ok = false;
        if (ok) {
            pass++;
        } else {
            fprintf(stderr, "# %s case %d '%.*s': want [%s], got [", gguf_path, i, (int)cases[i].len, cases[i].text,
                    cases[i].want);
            for (int m = 0; m < k; m++) fprintf(stderr, "%s%d", m ? " " : "", ids[m]);
            fprintf(stderr, "]\n");
        }
        ia_free(ids);
    }
    printf("# %s: %d/%d cases pass\n", gguf_path, pass, n);
    ia_free(ib);
    ia_free(ob);
    ia_tokenizer_free(t);
    assert_int_equal(pass, n);
}

/* Every vector case also survives decode(encode(x)) with and without BOS. */
static void test_vectors_roundtrip(void **state) {
    const char *inp_path = *state;
    char gguf_path[300];
    snprintf(gguf_path, sizeof gguf_path, "%.*s", (int)(strlen(inp_path) - 4), inp_path);
    if (!file_exists(gguf_path)) { /* the test name carries the TAP "# SKIP" directive */
        printf("# skipped %s: vocabulary %s is not shipped\n", inp_path, gguf_path);
        return;
    }
    ia_error err = {0};
    ia_tokenizer *t = load_path(gguf_path, &err);
    if (!t) fail_msg("%s: %s", gguf_path, err.msg);
    static vec_case cases[512];
    char *ib = NULL, *ob = NULL;
    int n = vec_read(inp_path, &ib, &ob, cases, 512);
    assert_true(n > 0);
    for (int i = 0; i < n; i++) {
        assert_roundtrip(t, cases[i].text, cases[i].len, false);
        assert_roundtrip(t, cases[i].text, cases[i].len, true);
    }
    ia_free(ib);
    ia_free(ob);
    ia_tokenizer_free(t);
}

/* ---------------------------------------------------------------- behaviour on the shipped vocabs */

static void test_spm_basics(void **state) {
    (void)state;
    ia_tokenizer *t = vocab("llama-spm");
    if (!t) { printf("# skipped: vocabulary absent\n"); return; }
    assert_int_equal(ia_tokenizer_kind_get(t), IA_TOKENIZER_SPM);
    assert_string_equal(ia_tokenizer_model_name(t), "llama");
    assert_int_equal(ia_tokenizer_n_vocab(t), 32000);
    assert_int_equal(ia_tokenizer_bos(t), 1);
    assert_int_equal(ia_tokenizer_eos(t), 2);
    assert_true(ia_tokenizer_add_bos(t));
    assert_false(ia_tokenizer_add_eos(t));
    assert_true(ia_tokenizer_is_eog(t, 2));
    assert_false(ia_tokenizer_is_eog(t, 1));
    assert_false(ia_tokenizer_is_eog(t, -1));
    assert_false(ia_tokenizer_is_eog(t, 32000));
    assert_string_equal(ia_tokenizer_token_text(t, 15043), "\xe2\x96\x81Hello");
    assert_null(ia_tokenizer_token_text(t, 32000));
    assert_int_equal(ia_tokenizer_token_type(t, 1), IA_TOKEN_CONTROL);
    assert_int_equal(ia_tokenizer_token_type(t, 13), IA_TOKEN_BYTE);

    /* BOS with add_special, none without; the empty string is [BOS] / [] */
    assert_ids(t, "Hello world", true, false, (int32_t[]){1, 15043, 3186}, 3);
    assert_ids(t, "Hello world", false, false, (int32_t[]){15043, 3186}, 2);
    assert_ids(t, "", true, false, (int32_t[]){1}, 1);
    assert_ids(t, "", false, false, NULL, 0);

    /* special tokens: parsed only when asked, and the text after one gets the space prefix */
    assert_ids(t, "</s>", false, true, (int32_t[]){2}, 1);
    assert_ids(t, "<s>Hello</s>", true, true, (int32_t[]){1, 1, 15043, 2}, 4);
    int32_t *ids = NULL;
    int n = encode(t, "</s>", 4, false, false, &ids);
    assert_true(n > 1);
    for (int i = 0; i < n; i++) assert_int_not_equal(ids[i], 2);
    ia_free(ids);
    assert_roundtrip(t, "</s>", 4, false);
    assert_roundtrip(t, "<0x0A><s><unk>", 14, true);

    /* pieces */
    char buf[32];
    assert_int_equal(ia_tokenizer_token_to_piece(t, 15043, buf, sizeof buf, false), 6);
    assert_memory_equal(buf, " Hello", 6);
    assert_int_equal(ia_tokenizer_token_to_piece(t, 13, buf, sizeof buf, false), 1); /* <0x0A> */
    assert_int_equal(buf[0], '\n');
    assert_int_equal(ia_tokenizer_token_to_piece(t, 1, buf, sizeof buf, false), 0);
    assert_int_equal(ia_tokenizer_token_to_piece(t, 1, buf, sizeof buf, true), 3);
    assert_memory_equal(buf, "<s>", 3);
    memset(buf, 'x', sizeof buf);
    assert_int_equal(ia_tokenizer_token_to_piece(t, 15043, buf, 2, false), 6); /* too small: count only */
    assert_int_equal(buf[2], 'x');
    assert_int_equal(ia_tokenizer_token_to_piece(t, -5, buf, sizeof buf, true), 0);
    assert_int_equal(ia_tokenizer_token_to_piece(t, 99999, buf, sizeof buf, true), 0);

    /* decoding: the leading space of the first piece goes; specials render only when asked */
    char *s = ia_tokenizer_decode(t, (int32_t[]){1, 15043, 3186, 2}, 4, false);
    assert_string_equal(s, "Hello world");
    ia_free(s);
    s = ia_tokenizer_decode(t, (int32_t[]){1, 15043, 3186, 2}, 4, true);
    assert_string_equal(s, "<s>Hello world</s>");
    ia_free(s);
    s = ia_tokenizer_decode(t, (int32_t[]){3186, -1, 123456}, 3, false); /* bad ids are skipped */
    assert_string_equal(s, "world");
    ia_free(s);
    s = ia_tokenizer_decode(t, NULL, 0, false);
    assert_string_equal(s, "");
    ia_free(s);
}

static void test_spm_byte_fallback(void **state) {
    (void)state;
    ia_tokenizer *t = vocab("llama-spm");
    if (!t) { printf("# skipped: vocabulary absent\n"); return; }
    /* U+1F981 is not in the vocabulary: four byte tokens <0xF0><0x9F><0xA6><0x81> = ids 243 162 169 132 */
    assert_ids(t, "\xf0\x9f\xa6\x81", false, false, (int32_t[]){29871, 243, 162, 169, 132}, 5);
    assert_roundtrip(t, "a \xf0\x9f\xa6\x81 b", 8, true);
    /* ill-formed UTF-8 goes through as bytes and comes back unchanged */
    static const char bad[] = "\xff\xfe x\xc3 \xe2\x82 \xed\xa0\x80 \xf4\x90\x80\x80 \x80\x80 ok";
    assert_roundtrip(t, bad, sizeof bad - 1, false);
    /* NUL bytes are tokens like any other (decode's C string cannot show them, the pieces can) */
    int32_t *ids = NULL;
    int n = encode(t, "\0a\0", 3, false, false, &ids);
    char buf[64];
    int len = 0;
    for (int i = 0; i < n; i++) len += ia_tokenizer_token_to_piece(t, ids[i], buf + len, (int)sizeof buf - len, false);
    assert_int_equal(len, 4);
    assert_memory_equal(buf, " \0a\0", 4);
    ia_free(ids);
}

static void test_phi3_specials(void **state) {
    (void)state;
    ia_tokenizer *t = vocab("phi-3");
    if (!t) { printf("# skipped: vocabulary absent\n"); return; }
    assert_int_equal(ia_tokenizer_eos(t), 32000);
    assert_int_equal(ia_tokenizer_eot(t), 32007); /* <|end|> */
    assert_true(ia_tokenizer_is_eog(t, 32000));
    assert_true(ia_tokenizer_is_eog(t, 32007));
    /* </s> is user-defined in Phi-3: split out even without parse_special (as llama.cpp and HF do) */
    assert_ids(t, "</s>", false, true, (int32_t[]){2}, 1);
    assert_ids(t, "</s>", false, false, (int32_t[]){2}, 1);
    /* control tokens need parse_special; Phi-3's specials eat the whitespace after them */
    assert_ids(t, "<|user|>\nHello<|end|>\n<|assistant|>", true, true, (int32_t[]){1, 32010, 15043, 32007, 32001}, 5);
    int32_t *ids = NULL;
    int n = encode(t, "<|user|>", 8, false, false, &ids);
    assert_true(n > 1);
    ia_free(ids);
    char *s = ia_tokenizer_decode(t, (int32_t[]){1, 32010, 15043, 32007}, 4, true);
    assert_string_equal(s, "<s><|user|>Hello<|end|>");
    ia_free(s);
    s = ia_tokenizer_decode(t, (int32_t[]){1, 32010, 15043, 32007}, 4, false);
    assert_string_equal(s, "Hello");
    ia_free(s);
}

static void test_bpe_basics(void **state) {
    (void)state;
    ia_tokenizer *t = vocab("gpt-2");
    if (!t) { printf("# skipped: vocabulary absent\n"); return; }
    assert_int_equal(ia_tokenizer_kind_get(t), IA_TOKENIZER_BPE);
    assert_string_equal(ia_tokenizer_model_name(t), "gpt2");
    assert_string_equal(ia_tokenizer_pre_name(t), "gpt-2");
    assert_int_equal(ia_tokenizer_n_vocab(t), 50257);
    assert_int_equal(ia_tokenizer_bos(t), 50256);
    assert_int_equal(ia_tokenizer_eos(t), 50256);
    assert_int_equal(ia_tokenizer_eot(t), 50256);
    assert_false(ia_tokenizer_add_bos(t));
    assert_true(ia_tokenizer_is_eog(t, 50256));

    assert_ids(t, "Hello world", false, false, (int32_t[]){15496, 995}, 2);
    assert_ids(t, "Hello world", true, false, (int32_t[]){15496, 995}, 2); /* gpt-2 adds no BOS */
    assert_ids(t, "<|endoftext|>", false, true, (int32_t[]){50256}, 1);
    assert_ids(t, "a<|endoftext|>b", false, true, (int32_t[]){64, 50256, 65}, 3);
    int32_t *ids = NULL;
    int n = encode(t, "<|endoftext|>", 13, false, false, &ids);
    assert_true(n > 1);
    for (int i = 0; i < n; i++) assert_int_not_equal(ids[i], 50256);
    ia_free(ids);
    assert_roundtrip(t, "<|endoftext|>", 13, false);

    char buf[16];
    assert_int_equal(ia_tokenizer_token_to_piece(t, 995, buf, sizeof buf, false), 6); /* "Ġworld" */
    assert_memory_equal(buf, " world", 6);
    assert_int_equal(ia_tokenizer_token_to_piece(t, 50256, buf, sizeof buf, false), 0);
    char *s = ia_tokenizer_decode(t, (int32_t[]){15496, 995, 50256}, 3, true);
    assert_string_equal(s, "Hello world<|endoftext|>");
    ia_free(s);
    s = ia_tokenizer_decode(t, (int32_t[]){995}, 1, false); /* no space stripping for BPE */
    assert_string_equal(s, " world");
    ia_free(s);

    /* every byte value round-trips through the byte alphabet, valid UTF-8 or not */
    char all[255];
    for (int i = 0; i < 255; i++) all[i] = (char)(i + 1);
    assert_roundtrip(t, all, sizeof all, false);
    int32_t *ids0 = NULL;
    assert_int_equal(encode(t, "\0", 1, false, false, &ids0), 1);
    assert_int_equal(ia_tokenizer_token_to_piece(t, ids0[0], buf, sizeof buf, false), 1);
    assert_int_equal(buf[0], 0);
    ia_free(ids0);
    static const char bad[] = "\xff\xfe x\xc3 \xe2\x82 \xed\xa0\x80 \xf4\x90\x80\x80 \x80\x80 ok";
    assert_roundtrip(t, bad, sizeof bad - 1, false);
}

/* ---------------------------------------------------------------- long inputs, threads */

static char *make_text(size_t n, unsigned seed) {
    static const char *const words[] = {"the ", "quick ", "brown ", "fox ", "jumps ", "over ", "lazy ", "dog. ",
                                        "\xc3\xa4pfel ", "\xe4\xb8\xad\xe6\x96\x87 ", "123 ", "\n", "  ",
                                        "\xf0\x9f\xa6\x81 "};
    char *s = malloc(n + 1);
    size_t o = 0;
    while (o < n) {
        seed = seed * 1103515245u + 12345u;
        const char *w = words[(seed >> 16) % (sizeof words / sizeof words[0])];
        size_t l = strlen(w);
        if (o + l > n) l = n - o;
        memcpy(s + o, w, l);
        o += l;
    }
    s[n] = 0;
    return s;
}

static void test_long_inputs(void **state) {
    (void)state;
    const char *names[] = {"gpt-2", "llama-spm"};
    for (int v = 0; v < 2; v++) {
        ia_tokenizer *t = vocab(names[v]);
        if (!t) continue;
        size_t n = 1 << 20;
        char *s = make_text(n, 7);
        double t0 = ia_time_now();
        assert_roundtrip(t, s, strlen(s), false); /* strlen: the cut may leave a partial character */
        double dt = ia_time_now() - t0;
        printf("# %s: 1 MiB mixed text encoded and decoded in %.2f s\n", names[v], dt);
        assert_true(dt < 30.0);
        /* one enormous word, one enormous run of spaces, one of newlines */
        const char fill[] = {'a', ' ', '\n', '7'};
        for (int k = 0; k < 4; k++) {
            memset(s, fill[k], n);
            t0 = ia_time_now();
            assert_roundtrip(t, s, n, false);
            dt = ia_time_now() - t0;
            printf("# %s: 1 MiB of 0x%02x in %.2f s\n", names[v], fill[k], dt);
            assert_true(dt < 30.0);
        }
        free(s);
    }
}

/* Merging SPM text word by word (the fast path) gives exactly what one pass over the whole text
 * gives. */
static void test_spm_word_split(void **state) {
    (void)state;
    const char *names[] = {"llama-spm", "phi-3"};
    for (int v = 0; v < 2; v++) {
        ia_tokenizer *t = vocab(names[v]);
        if (!t) continue;
        assert_true(t->spm_word_split);
        char *s = make_text(200000, 11 + (unsigned)v);
        static const char extra[] = "  a  b   c\n \n\t x\xe2\x96\x81\xe2\x96\x81y \xff\xfe z";
        for (int k = 0; k < 2; k++) {
            const char *text = k ? extra : s;
            size_t len = strlen(text);
            int32_t *a = NULL, *b = NULL;
            int na = encode(t, text, len, true, true, &a);
            t->spm_word_split = false;
            int nb = encode(t, text, len, true, true, &b);
            t->spm_word_split = true;
            assert_int_equal(na, nb);
            assert_memory_equal(a, b, (size_t)na * sizeof *a);
            ia_free(a);
            ia_free(b);
        }
        free(s);
    }
}

typedef struct thread_arg {
    const ia_tokenizer *t;
    const char *text;
    int32_t *ids;
    int n;
} thread_arg;

static void *encode_thread(void *p) {
    thread_arg *a = p;
    for (int rep = 0; rep < 20; rep++) {
        int32_t *ids = NULL;
        int n = ia_tokenizer_encode(a->t, a->text, strlen(a->text), true, true, &ids, NULL);
        if (rep == 0) {
            a->ids = ids;
            a->n = n;
        } else {
            if (n != a->n || memcmp(ids, a->ids, (size_t)n * sizeof *ids) != 0) a->n = -2;
            ia_free(ids);
        }
    }
    return NULL;
}

static void test_threads(void **state) {
    (void)state;
    const char *names[] = {"gpt-2", "llama-spm"};
    for (int v = 0; v < 2; v++) {
        ia_tokenizer *t = vocab(names[v]);
        if (!t) continue;
        char *s = make_text(20000, 3);
        int32_t *want = NULL;
        int nw = encode(t, s, strlen(s), true, true, &want);
        thread_arg args[4];
        pthread_t th[4];
        for (int i = 0; i < 4; i++) {
            args[i] = (thread_arg){.t = t, .text = s};
            assert_int_equal(pthread_create(&th[i], NULL, encode_thread, &args[i]), 0);
        }
        for (int i = 0; i < 4; i++) {
            pthread_join(th[i], NULL);
            assert_int_equal(args[i].n, nw);
            assert_memory_equal(args[i].ids, want, (size_t)nw * sizeof *want);
            ia_free(args[i].ids);
        }
        ia_free(want);
        free(s);
    }
}

/* ---------------------------------------------------------------- synthetic vocabularies */

/* A small byte-level BPE vocabulary: the 256 alphabet characters, a few merges, two specials. */
typedef struct synth {
    const char *tokens[400];
    size_t n_tokens;
    int32_t types[400];
    const char *merges[16];
    size_t n_merges;
} synth;

static void synth_bpe(synth *s) {
    static char alpha[256][4];
    s->n_tokens = 0;
    for (int b = 0; b < 256; b++) {
        /* the GPT-2 byte alphabet */
        unsigned cp = b;
        if (!((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)) {
            unsigned n = 0;
            for (int i = 0; i < b; i++) n += !((i >= 0x21 && i <= 0x7E) || (i >= 0xA1 && i <= 0xAC) || i >= 0xAE);
            cp = 256 + n;
        }
        if (cp < 0x80) { alpha[b][0] = (char)cp; alpha[b][1] = 0; }
        else { alpha[b][0] = (char)(0xC0 | (cp >> 6)); alpha[b][1] = (char)(0x80 | (cp & 0x3F)); alpha[b][2] = 0; }
        s->types[s->n_tokens] = IA_TOKEN_NORMAL;
        s->tokens[s->n_tokens++] = alpha[b];
    }
    static const char *const extra[] = {"he", "ll", "hell", "hello", "\xc4\xa0w", "\xc4\xa0wo"};
    for (size_t i = 0; i < 6; i++) { s->types[s->n_tokens] = IA_TOKEN_NORMAL; s->tokens[s->n_tokens++] = extra[i]; }
    s->types[s->n_tokens] = IA_TOKEN_CONTROL;
    s->tokens[s->n_tokens++] = "<|bos|>";
    s->types[s->n_tokens] = IA_TOKEN_USER_DEFINED;
    s->tokens[s->n_tokens++] = "<tool>";
    static const char *const merges[] = {"h e", "l l", "he ll", "hell o", "\xc4\xa0 w", "\xc4\xa0w o"};
    for (size_t i = 0; i < 6; i++) s->merges[i] = merges[i];
    s->n_merges = 6;
}

/* Writes a vocabulary GGUF from s plus the given tweaks; returns the loaded tokenizer or NULL. */
typedef void (*tweak_fn)(gguf_writer *w, synth *s);

static ia_tokenizer *synth_load(synth *s, const char *model, const char *pre, tweak_fn tweak, ia_error *err) {
    gguf_writer *w = gguf_writer_init();
    assert_non_null(w);
    gguf_writer_set_str(w, "general.architecture", "llama");
    if (model) gguf_writer_set_str(w, "tokenizer.ggml.model", model);
    if (pre) gguf_writer_set_str(w, "tokenizer.ggml.pre", pre);
    gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", s->tokens, NULL, s->n_tokens);
    gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, s->types, s->n_tokens);
    if (s->n_merges) gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", s->merges, NULL, s->n_merges);
    gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)s->n_tokens - 2);
    gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)s->n_tokens - 2);
    if (tweak) tweak(w, s);
    char path[300];
    test_tmpfile(path, sizeof path, "synth.gguf");
    ia_error werr = {0};
    int rc = gguf_writer_write_file(w, path, &werr);
    gguf_writer_free(w);
    if (rc != IA_OK) fail_msg("writing %s: %s", path, werr.msg);
    return load_path(path, err);
}

static void test_synthetic_bpe(void **state) {
    (void)state;
    synth s;
    synth_bpe(&s);
    ia_error err = {0};
    ia_tokenizer *t = synth_load(&s, "gpt2", "gpt-2", NULL, &err);
    if (!t) fail_msg("%s", err.msg);
    int32_t hello = 256 + 3, gwo = 256 + 5, bos = 256 + 6, tool = 256 + 7;
    assert_ids(t, "hello wo", false, false, (int32_t[]){hello, gwo}, 2);
    assert_ids(t, "hello<tool> wo", false, false, (int32_t[]){hello, tool, gwo}, 3); /* user-defined: always */
    assert_ids(t, "<|bos|>", false, true, (int32_t[]){bos}, 1);
    assert_roundtrip(t, "hello<tool><|bos|> wo", 21, false);
    ia_tokenizer_free(t);

    /* ignore_merges (llama-bpe): "hello" is one token even when merges alone would not reach it */
    s.n_merges = 2; /* only "h e" and "l l" */
    t = synth_load(&s, "gpt2", "llama-bpe", NULL, &err);
    if (!t) fail_msg("%s", err.msg);
    assert_true(ia_tokenizer_add_bos(t)); /* llama-bpe defaults add_bos to true */
    assert_ids(t, "hello", false, false, (int32_t[]){hello}, 1);
    assert_ids(t, "hello", true, false, (int32_t[]){bos, hello}, 2);
    ia_tokenizer_free(t);
    t = synth_load(&s, "gpt2", "gpt-2", NULL, &err);
    if (!t) fail_msg("%s", err.msg);
    assert_ids(t, "hello", false, false, (int32_t[]){256 + 0, 256 + 1, 'o'}, 3);
    ia_tokenizer_free(t);
}

/* Every pre-tokenizer name in the table compiles, tokenizes and round-trips. */
static void test_all_pretokenizers(void **state) {
    (void)state;
    synth s;
    synth_bpe(&s);
    static const char text[] = "Hello, y'all! 3333 \xe4\xbd\xa0\xe5\xa5\xbd  world\n\n\t x=1+2 <sentinel:3> IMGIMGABZ";
    int n = 0;
    for (const char *name; (name = ia_tok_pretok_name_at(n)) != NULL; n++) {
        ia_error err = {0};
        ia_tokenizer *t = synth_load(&s, "gpt2", name, NULL, &err);
        if (!t) fail_msg("pre '%s': %s", name, err.msg);
        assert_string_equal(ia_tokenizer_pre_name(t), name);
        assert_roundtrip(t, text, sizeof text - 1, false);
        ia_tokenizer_free(t);
    }
    printf("# %d pre-tokenizer names load\n", n);
    assert_true(n >= 40);
    assert_null(ia_tok_pretok_name_at(-1));
}

/* Word splits of the main pre-tokenizers (checked by hand against the Hugging Face regexes). */
static void test_pretok_splits(void **state) {
    (void)state;
    static const char text[] = "Hello, y'ALL! 12345  \n\n world\tx 3.14 \xc3\x84pfel";
    static const struct { const char *pre, *want; } cases[] = {
        {"llama-bpe", "[Hello][,][ y]['ALL][!][ ][123][45][  \n\n][ world][\tx][ ][3][.][14][ \xc3\x84pfel]"},
        {"qwen2", "[Hello][,][ y]['ALL][!][ ][1][2][3][4][5][  \n\n][ world][\tx][ ][3][.][1][4][ \xc3\x84pfel]"},
        {"gpt-2", "[Hello][,][ y]['][ALL][!][ 12345][  \n\n][ world][\t][x][ 3][.][14][ \xc3\x84pfel]"},
        {"smollm", "[Hello][,][ y]['][ALL][!][ ][1][2][3][4][5][  \n\n][ world][\t][x][ ][3][.][1][4][ \xc3\x84pfel]"},
        {"default", "[Hello][,][ y]['][ALL][!][ ][123][45][  \n\n][ world][\t][x][ ][3][.][14][ \xc3\x84pfel]"},
    };
    synth s;
    synth_bpe(&s);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ia_error err = {0};
        ia_tokenizer *t = synth_load(&s, "gpt2", cases[i].pre, NULL, &err);
        if (!t) fail_msg("%s", err.msg);
        ia_tok_spans sp = {0};
        assert_int_equal(ia_tok_pretok_split(t, text, sizeof text - 1, &sp, &err), IA_OK);
        ia_buf b = {0};
        for (size_t k = 0; k < sp.n; k++) ia_buf_printf(&b, "[%.*s]", (int)sp.v[k].len, text + sp.v[k].off);
        char *got = ia_buf_take(&b);
        if (strcmp(got, cases[i].want) != 0) fail_msg("%s: got %s", cases[i].pre, got);
        ia_free(got);
        ia_free(sp.v);
        ia_tokenizer_free(t);
    }
}

/* ---------------------------------------------------------------- broken metadata */

static void tw_no_tokens(gguf_writer *w, synth *s) { (void)s; gguf_writer_remove_key(w, "tokenizer.ggml.tokens"); }
static void tw_scores_short(gguf_writer *w, synth *s) {
    float sc[10] = {0};
    (void)s;
    gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, sc, 10);
}
static void tw_types_short(gguf_writer *w, synth *s) {
    (void)s;
    gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, (int32_t[]){1, 1}, 2);
}
static void tw_bos_range(gguf_writer *w, synth *s) {
    gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)s->n_tokens);
}
static void tw_eos_range(gguf_writer *w, synth *s) {
    (void)s; gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 1000000);
}
static void tw_eos_none(gguf_writer *w, synth *s) {
    (void)s; gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 0xFFFFFFFFu);
}
static void tw_eot_range(gguf_writer *w, synth *s) {
    (void)s; gguf_writer_set_u32(w, "tokenizer.ggml.eot_token_id", 1000000);
}
static void tw_bad_merge(gguf_writer *w, synth *s) {
    (void)s;
    const char *m[] = {"h e", "zz q"};
    gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", m, NULL, 2);
}
static void tw_merge_nospace(gguf_writer *w, synth *s) {
    (void)s;
    const char *m[] = {"he"};
    gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", m, NULL, 1);
}
static void tw_no_merges(gguf_writer *w, synth *s) { (void)s; gguf_writer_remove_key(w, "tokenizer.ggml.merges"); }
static void tw_tokens_u32(gguf_writer *w, synth *s) {
    (void)s;
    gguf_writer_set_arr(w, "tokenizer.ggml.tokens", GGUF_TYPE_UINT32, (uint32_t[]){1, 2, 3}, 3);
}
static void tw_dup_token(gguf_writer *w, synth *s) {
    s->tokens[263] = s->tokens[5];
    gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", s->tokens, NULL, s->n_tokens);
}
static void tw_bos_string(gguf_writer *w, synth *s) {
    (void)s; gguf_writer_set_str(w, "tokenizer.ggml.bos_token_id", "1");
}
static void tw_add_bos_str(gguf_writer *w, synth *s) {
    (void)s; gguf_writer_set_str(w, "tokenizer.ggml.add_bos_token", "yes");
}

static void expect_load_error(const char *model, const char *pre, tweak_fn tw, const char *needle) {
    synth s;
    synth_bpe(&s);
    ia_error err = {0};
    ia_tokenizer *t = synth_load(&s, model, pre, tw, &err);
    if (t) fail_msg("loaded although '%s' is wrong", needle);
    if (!strstr(err.msg, needle)) fail_msg("error '%s' does not name '%s'", err.msg, needle);
    assert_int_not_equal(err.code, IA_OK);
}

static void test_bad_metadata(void **state) {
    (void)state;
    expect_load_error("gpt2", "gpt-2", tw_no_tokens, "tokenizer.ggml.tokens");
    expect_load_error("gpt2", "gpt-2", tw_tokens_u32, "tokenizer.ggml.tokens");
    expect_load_error("gpt2", "gpt-2", tw_dup_token, "tokenizer.ggml.tokens[263]");
    expect_load_error("gpt2", "gpt-2", tw_scores_short, "tokenizer.ggml.scores");
    expect_load_error("gpt2", "gpt-2", tw_types_short, "tokenizer.ggml.token_type");
    expect_load_error("gpt2", "gpt-2", tw_bos_range, "tokenizer.ggml.bos_token_id");
    expect_load_error("gpt2", "gpt-2", tw_eos_range, "tokenizer.ggml.eos_token_id");
    expect_load_error("gpt2", "gpt-2", tw_bos_string, "tokenizer.ggml.bos_token_id");
    expect_load_error("gpt2", "gpt-2", tw_add_bos_str, "tokenizer.ggml.add_bos_token");
    expect_load_error("gpt2", "gpt-2", tw_bad_merge, "'zz'");
    expect_load_error("gpt2", "gpt-2", tw_bad_merge, "tokenizer.ggml.merges[1]");
    expect_load_error("gpt2", "gpt-2", tw_merge_nospace, "tokenizer.ggml.merges[0]");
    expect_load_error("gpt2", "gpt-2", tw_no_merges, "tokenizer.ggml.merges");
    expect_load_error("gpt2", "no-such-pre", NULL, "no-such-pre");
    expect_load_error("bert", NULL, NULL, "tokenizer.ggml.model");
    expect_load_error(NULL, NULL, NULL, "tokenizer.ggml.model");
    expect_load_error("llama", NULL, tw_scores_short, "tokenizer.ggml.scores");

    /* -1 (as u32) means "no such token", as converters write it */
    synth s;
    synth_bpe(&s);
    ia_error err = {0};
    ia_tokenizer *t = synth_load(&s, "gpt2", "gpt-2", tw_eos_none, &err);
    if (!t) fail_msg("%s", err.msg);
    assert_int_equal(ia_tokenizer_eos(t), -1);
    ia_tokenizer_free(t);
    /* an end-of-turn id out of range is ignored (llama.cpp keeps its default too); BOS/EOS are not */
    t = synth_load(&s, "gpt2", "gpt-2", tw_eot_range, &err);
    if (!t) fail_msg("%s", err.msg);
    assert_int_equal(ia_tokenizer_eot(t), -1);
    ia_tokenizer_free(t);
    /* a missing pre-tokenizer falls back to "default" */
    t = synth_load(&s, "gpt2", NULL, NULL, &err);
    if (!t) fail_msg("%s", err.msg);
    assert_string_equal(ia_tokenizer_pre_name(t), "default");
    ia_tokenizer_free(t);

    assert_null(ia_tokenizer_load(NULL, &err));
    assert_int_equal(err.code, IA_ERR_ARG);
    int32_t *ids = (int32_t *)&err;
    assert_int_equal(ia_tokenizer_encode(NULL, "x", 1, false, false, &ids, &err), -1);
    assert_null(ids);
    assert_int_equal(ia_tokenizer_n_vocab(NULL), 0);
    assert_null(ia_tokenizer_decode(NULL, NULL, 0, false));
    ia_tokenizer_free(NULL);
}

/* The SPM vocabulary of the stories260K model (it stores unset ids as 0xFFFFFFFF). */
static void test_stories_vocab(void **state) {
    (void)state;
    if (!file_exists(TEST_STORIES)) { printf("# skipped: %s absent\n", TEST_STORIES); return; }
    ia_error err = {0};
    ia_tokenizer *t = load_path(TEST_STORIES, &err);
    if (!t) fail_msg("%s", err.msg);
    assert_int_equal(ia_tokenizer_n_vocab(t), 512);
    assert_roundtrip(t, "Once upon a time, there was a little girl named Lily.", 53, true);
    ia_tokenizer_free(t);
}

/* ---------------------------------------------------------------- allocation failures */

static void test_oom(void **state) {
    (void)state;
    synth s;
    synth_bpe(&s);
    ia_error err = {0};
    /* write the file once, then fail each allocation of load + encode + decode in turn */
    ia_tokenizer *t0 = synth_load(&s, "gpt2", "llama-bpe", NULL, &err);
    if (!t0) fail_msg("%s", err.msg);
    ia_tokenizer_free(t0);
    char path[300];
    test_tmpfile(path, sizeof path, "synth.gguf");
    gguf_file *f = gguf_file_open(path, &err);
    assert_non_null(f);
    int ok_at = 0;
    for (long n = 1; n < 2000 && !ok_at; n++) {
        ia_mem_fail_after(n, false);
        ia_tokenizer *t = ia_tokenizer_load(f, &err);
        int32_t *ids = NULL;
        int k = t ? ia_tokenizer_encode(t, "hello <tool> wo, 123!", 21, true, true, &ids, &err) : -1;
        char *d = k >= 0 ? ia_tokenizer_decode(t, ids, k, true) : NULL;
        ia_mem_fail_after(0, false);
        if (!t || k < 0) assert_true(err.code == IA_ERR_NOMEM);
        if (d) ok_at = (int)n;
        ia_free(d);
        ia_free(ids);
        ia_tokenizer_free(t);
    }
    gguf_file_free(f);
    assert_true(ok_at > 0);
    ia_tokenizer *t = vocab("llama-spm");
    if (!t) return;
    for (long n = 1; n < 100; n++) {
        int32_t *ids = NULL;
        ia_mem_fail_after(n, false);
        int k = ia_tokenizer_encode(t, "<s>Hello world</s> \xf0\x9f\xa6\x81", 23, true, true, &ids, &err);
        ia_mem_fail_after(0, false);
        if (k < 0) assert_int_equal(err.code, IA_ERR_NOMEM);
        ia_free(ids);
    }
}

/* ---------------------------------------------------------------- main */

int main(void) {
    /* one vector test and one round-trip test per .inp file, present vocabulary or not (absent ones
     * are reported as skipped) */
    glob_t g;
    size_t n_inp = 0;
    if (glob(VOCAB_DIR "/*.gguf.inp", 0, NULL, &g) == 0) n_inp = g.gl_pathc;
    struct CMUnitTest *tests = calloc(2 * n_inp + 32, sizeof *tests);
    char (*names)[128] = calloc(2 * n_inp + 1, sizeof *names);
    size_t n = 0;
    for (size_t i = 0; i < n_inp; i++) {
        const char *base = strrchr(g.gl_pathv[i], '/') + 1;
        char gguf_path[300];
        snprintf(gguf_path, sizeof gguf_path, "%.*s", (int)(strlen(g.gl_pathv[i]) - 4), g.gl_pathv[i]);
        /* cmocka prints skipped tests as "not ok", which the runner counts as failures; a missing
         * vocabulary is reported with TAP's own "# SKIP" directive in the test name instead */
        const char *skip = file_exists(gguf_path) ? "" : " # SKIP vocabulary not shipped";
        snprintf(names[2 * i], 128, "vectors %s%s", base, skip);
        snprintf(names[2 * i + 1], 128, "round trip %s%s", base, skip);
        tests[n++] = (struct CMUnitTest){names[2 * i], test_vectors, NULL, NULL, g.gl_pathv[i]};
        tests[n++] = (struct CMUnitTest){names[2 * i + 1], test_vectors_roundtrip, NULL, NULL, g.gl_pathv[i]};
    }
    const struct CMUnitTest fixed[] = {
        cmocka_unit_test(test_spm_basics),      cmocka_unit_test(test_spm_byte_fallback),
        cmocka_unit_test(test_phi3_specials),   cmocka_unit_test(test_bpe_basics),
        cmocka_unit_test(test_synthetic_bpe),   cmocka_unit_test(test_all_pretokenizers),
        cmocka_unit_test(test_pretok_splits),
        cmocka_unit_test(test_bad_metadata),    cmocka_unit_test(test_stories_vocab),
        cmocka_unit_test(test_long_inputs),     cmocka_unit_test(test_threads),
        cmocka_unit_test(test_spm_word_split),
        cmocka_unit_test(test_oom),
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) tests[n++] = fixed[i];
    int rc = _cmocka_run_group_tests("test_tokenizer", tests, n, NULL, NULL);
    vocab_free_all();
    char path[300];
    test_tmpfile(path, sizeof path, "synth.gguf");
    remove(path);
    rmdir(test_tmpdir()); /* only if empty: other files are left alone */
    free(tests);
    free(names);
    if (n_inp) globfree(&g);
    return rc;
}
