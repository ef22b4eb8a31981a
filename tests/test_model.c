/* test_model.c — model loading (hparams, validation errors), the golden stories260K greedy decode,
 * context bounds, and batch/thread invariance of the forward pass. */
#include "test_util.h"

#include <math.h>

#include "model/model.h"

#define VOCAB_SPM TEST_DATA "/tokenizer/ggml-vocab-llama-spm.gguf"
#define VOCAB_GPT2 TEST_DATA "/tokenizer/ggml-vocab-gpt-2.gguf"

/* MANIFEST.md §1: Karpathy's greedy sample from BOS, first 64 generated ids. */
static const int32_t stories_greedy[64] = {
    403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338,
    401, 396, 267, 337, 410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426, 385,
    328, 432, 358, 394, 261, 370, 432, 352, 266, 268, 388, 426, 338, 391, 266, 267,
    337, 335, 312, 432, 398, 312, 286, 267, 414, 270, 333, 415, 426, 13,  438, 310};

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* Decodes one token for one slot, logits wanted. */
static int decode1(ia_context *c, int32_t tok, int32_t pos, int32_t slot, ia_error *err) {
    ia_batch b = {.n_tokens = 1, .token = &tok, .pos = &pos, .slot = &slot, .logits = NULL};
    return ia_context_decode(c, &b, err);
}

/* ---- small model files ------------------------------------------------------------------- */

/* A tiny random model (written once per name into the test's temp folder). */
static const char *tiny_model(const char *name, const char *preset, uint32_t type, int E, int F) {
    static char paths[8][300];
    static char names[8][64];
    for (int i = 0; i < 8; i++)
        if (names[i][0] && strcmp(names[i], name) == 0) return paths[i];
    int slot = 0;
    while (names[slot][0]) slot++;
    assert_true(slot < 8);
    ia_mkmodel_opts o = {0};
    ia_error err = {0};
    assert_int_equal(ia_mkmodel_preset(preset, &o, &err), IA_OK);
    o.vocab_path = strcmp(o.arch, "qwen2") == 0 ? VOCAB_GPT2 : VOCAB_SPM;
    o.type = type;
    o.seed = 1234;
    if (E) o.n_embd = E;
    if (F) o.n_ff = F;
    test_tmpfile(paths[slot], sizeof paths[slot], name);
    if (ia_mkmodel_write(&o, paths[slot], &err) != IA_OK) fail_msg("mkmodel: %s", err.msg);
    snprintf(names[slot], sizeof names[slot], "%s", name);
    return paths[slot];
}

/* Rewrites `src` into `dst` with one change: a metadata key set to a string (set_key/set_val), an
 * array value for a key (arr_key, arr of n i32), a tensor dropped (drop), a tensor's data and shape
 * taken from another tensor (swap_name <- swap_from), a tensor added (extra: a copy of
 * output_norm.weight under that name), or a norm re-typed to F16 (f16_norm). */
typedef struct rewrite {
    const char *set_key, *set_val;
    const char *arr_key;
    const int32_t *arr;
    int arr_n;
    const char *drop;
    const char *swap_name, *swap_from;
    const char *extra;
    const char *f16_norm;
} rewrite;

static void rewrite_model(const char *src, const char *dst, const rewrite *rw) {
    ia_error err = {0};
    gguf_file *f = gguf_file_open(src, &err);
    if (!f) fail_msg("%s", err.msg);
    gguf_writer *w = gguf_writer_init();
    assert_non_null(w);
    for (int64_t i = 0; i < gguf_kv_count(f); i++) assert_int_equal(gguf_writer_copy_kv(w, f, i), IA_OK);
    if (rw->set_key) assert_int_equal(gguf_writer_set_str(w, rw->set_key, rw->set_val), IA_OK);
    if (rw->arr_key)
        assert_int_equal(gguf_writer_set_arr(w, rw->arr_key, GGUF_TYPE_INT32, rw->arr, (uint64_t)rw->arr_n), IA_OK);
    uint16_t *half = NULL;
    for (int64_t i = 0; i < gguf_tensor_count(f); i++) {
        const gguf_tensor_info *ti = gguf_tensor_get(f, i);
        if (rw->drop && strcmp(ti->name, rw->drop) == 0) continue;
        const gguf_tensor_info *from = ti;
        if (rw->swap_name && strcmp(ti->name, rw->swap_name) == 0) from = gguf_tensor_find(f, rw->swap_from);
        assert_non_null(from);
        if (rw->f16_norm && strcmp(ti->name, rw->f16_norm) == 0) {
            half = malloc((size_t)ti->ne[0] * 2);
            const float *x = ti->data;
            for (int64_t j = 0; j < ti->ne[0]; j++) half[j] = ia_fp32_to_fp16(x[j]);
            assert_int_equal(gguf_writer_add_tensor(w, ti->name, IA_TYPE_F16, 1, ti->ne, half, &err), IA_OK);
            continue;
        }
        if (gguf_writer_add_tensor(w, ti->name, from->type, from->n_dims, from->ne, from->data, &err) != IA_OK)
            fail_msg("%s", err.msg);
    }
    if (rw->extra) {
        const gguf_tensor_info *ti = gguf_tensor_find(f, "output_norm.weight");
        assert_int_equal(gguf_writer_add_tensor(w, rw->extra, ti->type, ti->n_dims, ti->ne, ti->data, &err), IA_OK);
    }
    if (gguf_writer_write_file(w, dst, &err) != IA_OK) fail_msg("%s", err.msg);
    gguf_writer_free(w);
    gguf_file_free(f);
    free(half);
}

/* Loads a rewritten tiny llama and expects failure with `code` and a message containing `needle`. */
static void expect_load_error(const char *name, const rewrite *rw, int code, const char *needle) {
    char dst[300];
    test_tmpfile(dst, sizeof dst, name);
    rewrite_model(tiny_model("tiny-llama.gguf", "tiny-llama", IA_TYPE_F32, 0, 0), dst, rw);
    ia_error err = {0};
    ia_model *m = ia_model_load(dst, &err);
    if (m) fail_msg("%s: loaded, expected %s", name, ia_result_name(code));
    if (err.code != code || !strstr(err.msg, needle))
        fail_msg("%s: got %s '%s', expected %s containing '%s'", name, ia_result_name(err.code), err.msg,
                 ia_result_name(code), needle);
}

/* ---- stories260K ----------------------------------------------------------------------- */

static void test_stories_hparams(void **state) {
    (void)state;
    ia_error err = {0};
    ia_model *m = ia_model_load(TEST_STORIES, &err);
    if (!m) fail_msg("%s", err.msg);
    const ia_hparams *hp = &m->hp;
    assert_string_equal(ia_model_arch(m), "llama");
    assert_int_equal(ia_model_n_vocab(m), 512);
    assert_int_equal(ia_model_n_ctx_train(m), 2048);
    assert_int_equal(hp->n_embd, 64);
    assert_int_equal(hp->n_layer, 5);
    assert_int_equal(hp->n_head, 8);
    assert_int_equal(hp->n_head_kv, 4);
    assert_int_equal(hp->head_dim, 8);
    assert_int_equal(hp->n_ff, 172);
    assert_int_equal(hp->n_rot, 8);
    assert_true(fabsf(hp->rms_eps - 1e-5f) < 1e-9f);
    assert_true(hp->rope_base == 10000.0f);
    assert_true(hp->rope_freq_scale == 1.0f);
    assert_int_equal(hp->rope_type, IA_ROPE_NORM);
    assert_false(m->tied_output);
    assert_null(m->rope_freqs);
    assert_null(ia_model_chat_template(m));
    assert_non_null(ia_model_tokenizer(m));
    assert_int_equal(ia_tokenizer_bos(ia_model_tokenizer(m)), 1);
    assert_int_equal(m->tok_embd.type, IA_TYPE_F32);
    assert_int_equal(m->layers[4].w_down.n_in, 172);
    assert_int_equal(m->layers[4].w_down.n_out, 64);
    /* zero-copy: weights point into the mapping */
    const gguf_tensor_info *ti = gguf_tensor_find(m->gguf, "blk.2.attn_q.weight");
    assert_ptr_equal(m->layers[2].wq.data, ti->data);
    assert_null(m->owned);
    ia_model_free(m);
    ia_model_free(NULL);
}

static void test_stories_greedy(void **state) {
    (void)state;
    ia_error err = {0};
    ia_model *m = ia_model_load(TEST_STORIES, &err);
    if (!m) fail_msg("%s", err.msg);
    ia_context *c = ia_context_init(m, 1, 128, 1, &err);
    if (!c) fail_msg("%s", err.msg);
    int32_t tok = 1;
    for (int i = 0; i < 64; i++) {
        if (decode1(c, tok, i, 0, &err) != IA_OK) fail_msg("%s", err.msg);
        assert_int_equal(ia_context_n_logits(c), 1);
        tok = argmax(ia_context_logits(c), 512);
        if (tok != stories_greedy[i]) fail_msg("step %d: got %d, expected %d", i, tok, stories_greedy[i]);
    }
    ia_context_free(c);
    ia_model_free(m);
}

/* ---- load errors --------------------------------------------------------------------------- */

static void test_load_errors(void **state) {
    (void)state;
    ia_error err = {0};
    assert_null(ia_model_load("tests/tmp/does-not-exist.gguf", &err));
    assert_int_equal(err.code, IA_ERR_IO);

    assert_null(ia_model_load(VOCAB_SPM, &err));
    assert_int_equal(err.code, IA_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "vocab-only"));
    assert_null(ia_model_load(VOCAB_GPT2, &err)); /* arch gpt2 too, but vocab-only is the real problem */
    assert_non_null(strstr(err.msg, "vocab-only"));

    expect_load_error("arch.gguf", &(rewrite){.set_key = "general.architecture", .set_val = "gpt2"},
                      IA_ERR_UNSUPPORTED, "architecture 'gpt2' is not supported (supported: llama, qwen2)");
    expect_load_error("missing.gguf", &(rewrite){.drop = "blk.1.ffn_up.weight"}, IA_ERR_FORMAT,
                      "tensor 'blk.1.ffn_up.weight' is missing");
    expect_load_error("noembd.gguf", &(rewrite){.drop = "token_embd.weight"}, IA_ERR_FORMAT,
                      "'token_embd.weight' is missing");
    /* attn_k with attn_q's shape [64, 64]; [64, 32] expected (Hkv 2 x D 16) */
    expect_load_error("shape.gguf", &(rewrite){.swap_name = "blk.0.attn_k.weight", .swap_from = "blk.0.attn_q.weight"},
                      IA_ERR_FORMAT, "'blk.0.attn_k.weight' has shape [64, 64] (F32), expected [64, 32]");
    expect_load_error("shape2.gguf", &(rewrite){.swap_name = "blk.1.ffn_norm.weight", .swap_from = "blk.1.attn_q.weight"},
                      IA_ERR_FORMAT, "'blk.1.ffn_norm.weight' has shape [64, 64]");
    expect_load_error("yarn.gguf", &(rewrite){.set_key = "llama.rope.scaling.type", .set_val = "yarn"},
                      IA_ERR_UNSUPPORTED, "YaRN");
    expect_load_error("extra.gguf", &(rewrite){.extra = "blk.0.attn_output.bias"}, IA_ERR_UNSUPPORTED,
                      "'blk.0.attn_output.bias' is not part of the llama architecture");
    expect_load_error("perlayer.gguf", &(rewrite){.arr_key = "llama.attention.head_count_kv", .arr = (int32_t[]){2, 4},
                      .arr_n = 2}, IA_ERR_UNSUPPORTED, "differs between layers");
    expect_load_error("noeps.gguf", &(rewrite){.set_key = "llama.attention.layer_norm_rms_epsilon", .set_val = "x"},
                      IA_ERR_FORMAT, "layer_norm_rms_epsilon");
}

static void test_load_variants(void **state) {
    (void)state;
    const char *base = tiny_model("tiny-llama.gguf", "tiny-llama", IA_TYPE_F32, 0, 0);
    ia_error err = {0};
    char dst[300];

    /* per-layer arrays with equal values are accepted */
    test_tmpfile(dst, sizeof dst, "perlayer-ok.gguf");
    rewrite_model(base, dst, &(rewrite){.arr_key = "llama.attention.head_count_kv", .arr = (int32_t[]){2, 2}, .arr_n = 2});
    ia_model *m = ia_model_load(dst, &err);
    if (!m) fail_msg("%s", err.msg);
    assert_int_equal(m->hp.n_head_kv, 2);
    ia_model_free(m);

    /* linear rope scaling */
    test_tmpfile(dst, sizeof dst, "linear.gguf");
    rewrite_model(base, dst, &(rewrite){.set_key = "llama.rope.scaling.type", .set_val = "linear"});
    m = ia_model_load(dst, &err);
    if (!m) fail_msg("%s", err.msg);
    assert_true(m->hp.rope_freq_scale == 1.0f); /* no factor: none */
    ia_model_free(m);

    /* an F16 norm is converted once into an owned f32 buffer */
    test_tmpfile(dst, sizeof dst, "f16norm.gguf");
    rewrite_model(base, dst, &(rewrite){.f16_norm = "blk.1.attn_norm.weight"});
    m = ia_model_load(dst, &err);
    if (!m) fail_msg("%s", err.msg);
    assert_non_null(m->owned);
    assert_ptr_equal(m->layers[1].attn_norm, m->owned);
    ia_model *m32 = ia_model_load(base, &err);
    assert_non_null(m32);
    for (int i = 0; i < 64; i++)
        assert_true(m->layers[1].attn_norm[i] == ia_fp16_to_fp32(ia_fp32_to_fp16(m32->layers[1].attn_norm[i])));
    ia_model_free(m32);
    ia_model_free(m);

    /* mkmodel: tied qwen2 with biases, NEOX, and a padded vocabulary */
    ia_mkmodel_opts o = {0};
    assert_int_equal(ia_mkmodel_preset("tiny-qwen2", &o, &err), IA_OK);
    o.vocab_path = VOCAB_GPT2;
    o.type = IA_TYPE_Q8_0;
    o.n_vocab = 50300;
    o.chat_template = "{{ messages }}";
    test_tmpfile(dst, sizeof dst, "qwen-pad.gguf");
    if (ia_mkmodel_write(&o, dst, &err) != IA_OK) fail_msg("%s", err.msg);
    m = ia_model_load(dst, &err);
    if (!m) fail_msg("%s", err.msg);
    assert_string_equal(ia_model_arch(m), "qwen2");
    assert_int_equal(ia_model_n_vocab(m), 50300);
    assert_int_equal(ia_tokenizer_n_vocab(ia_model_tokenizer(m)), 50300);
    assert_int_equal(ia_tokenizer_token_type(ia_model_tokenizer(m), 50299), IA_TOKEN_UNUSED);
    assert_string_equal(ia_tokenizer_token_text(ia_model_tokenizer(m), 50257), "<unused_0>");
    assert_true(m->tied_output);
    assert_ptr_equal(m->output.data, m->tok_embd.data);
    assert_int_equal(m->hp.rope_type, IA_ROPE_NEOX);
    assert_true(m->hp.rope_base == 1e6f);
    assert_non_null(m->layers[0].bq);
    assert_int_equal(m->layers[1].wq.type, IA_TYPE_Q8_0);
    assert_string_equal(ia_model_chat_template(m), "{{ messages }}");
    uint64_t qv = 0;
    assert_int_equal(gguf_find_u64(m->gguf, "general.quantization_version", &qv, &err), 1);
    assert_int_equal(qv, 2);
    ia_model_free(m);

    /* deterministic for a seed */
    char d2[300];
    test_tmpfile(d2, sizeof d2, "qwen-pad2.gguf");
    assert_int_equal(ia_mkmodel_write(&o, d2, &err), IA_OK);
    size_t n1, n2;
    char *b1 = ia_file_read(dst, &n1, &err), *b2 = ia_file_read(d2, &n2, &err);
    assert_non_null(b1);
    assert_non_null(b2);
    assert_int_equal(n1, n2);
    assert_memory_equal(b1, b2, n1);
    ia_free(b1);
    ia_free(b2);

    /* Q4_K falls back to Q8_0 for rows that are not a multiple of 256 (E = 64) */
    m = ia_model_load(tiny_model("tiny-q4k-64.gguf", "tiny-llama", IA_TYPE_Q4_K, 0, 0), &err);
    if (!m) fail_msg("%s", err.msg);
    assert_int_equal(m->layers[0].wq.type, IA_TYPE_Q8_0);
    ia_model_free(m);
    m = ia_model_load(tiny_model("tiny-q4k.gguf", "tiny-llama", IA_TYPE_Q4_K, 256, 512), &err);
    if (!m) fail_msg("%s", err.msg);
    assert_int_equal(m->layers[0].wq.type, IA_TYPE_Q4_K);
    assert_int_equal(m->layers[0].w_down.type, IA_TYPE_Q4_K);
    ia_model_free(m);

    /* bad options */
    assert_int_equal(ia_mkmodel_preset("gpt-5", &o, &err), IA_ERR_ARG);
    o.arch = "gpt2";
    assert_int_equal(ia_mkmodel_write(&o, dst, &err), IA_ERR_ARG);
    o.arch = "llama";
    o.n_vocab = 100;
    assert_int_equal(ia_mkmodel_write(&o, dst, &err), IA_ERR_ARG);
}

/* Every allocation of a load / context init failing in turn: a clean NOMEM each time (no crash,
 * no leak under ASan), and success once the failure point is past the last allocation. */
static void test_oom(void **state) {
    (void)state;
    ia_error err = {0};
    long before = ia_mem_alloc_count();
    ia_model *m = ia_model_load(TEST_STORIES, &err);
    assert_non_null(m);
    ia_model_free(m);
    long n_alloc = ia_mem_alloc_count() - before;
    for (long n = 1; n <= n_alloc + 1; n++) {
        ia_mem_fail_after(n, false);
        m = ia_model_load(TEST_STORIES, &err);
        ia_mem_fail_after(0, false);
        if (m) { ia_model_free(m); assert_true(n > n_alloc - 1); break; }
        if (err.code != IA_ERR_NOMEM) fail_msg("allocation %ld failing: %s %s", n, ia_result_name(err.code), err.msg);
    }
    m = ia_model_load(TEST_STORIES, &err);
    assert_non_null(m);
    for (long n = 1; n < 40; n++) {
        ia_mem_fail_after(n, false);
        ia_context *c = ia_context_init(m, 2, 64, 8, &err);
        ia_mem_fail_after(0, false);
        if (c) { ia_context_free(c); break; }
        assert_int_equal(err.code, IA_ERR_NOMEM);
    }
    ia_model_free(m);
}

/* ---- context bounds ---------------------------------------------------------------------- */

static void test_context_range(void **state) {
    (void)state;
    ia_error err = {0};
    ia_model *m = ia_model_load(TEST_STORIES, &err);
    if (!m) fail_msg("%s", err.msg);
    assert_null(ia_context_init(m, 0, 16, 4, &err));
    assert_int_equal(err.code, IA_ERR_ARG);
    ia_context *c = ia_context_init(m, 2, 16, 4, &err);
    if (!c) fail_msg("%s", err.msg);
    assert_int_equal(ia_context_n_slots(c), 2);
    assert_int_equal(ia_context_n_ctx(c), 16);
    assert_int_equal(ia_context_n_batch(c), 4);
    assert_int_equal(decode1(c, 512, 0, 0, &err), IA_ERR_RANGE);
    assert_non_null(strstr(err.msg, "512"));
    assert_int_equal(decode1(c, -1, 0, 0, &err), IA_ERR_RANGE);
    assert_int_equal(decode1(c, 1, 16, 0, &err), IA_ERR_RANGE);
    assert_non_null(strstr(err.msg, "position 16"));
    assert_int_equal(decode1(c, 1, -1, 0, &err), IA_ERR_RANGE);
    assert_int_equal(decode1(c, 1, 0, 2, &err), IA_ERR_RANGE);
    assert_non_null(strstr(err.msg, "slot 2"));
    int32_t tok[5] = {1, 2, 3, 4, 5}, pos[5] = {0, 1, 2, 3, 4}, slot[5] = {0};
    ia_batch b = {.n_tokens = 5, .token = tok, .pos = pos, .slot = slot};
    assert_int_equal(ia_context_decode(c, &b, &err), IA_ERR_RANGE);
    b.n_tokens = 0;
    assert_int_equal(ia_context_decode(c, &b, &err), IA_ERR_RANGE);
    b.n_tokens = 4;
    assert_int_equal(ia_context_decode(c, &b, &err), IA_OK);
    assert_int_equal(ia_context_n_logits(c), 1);
    assert_int_equal(decode1(c, 1, 15, 1, &err), IA_OK); /* last position of the other slot */
    ia_context_free(c);
    ia_context_free(NULL);
    ia_model_free(m);
}

/* ---- batch and thread invariance --------------------------------------------------------- */

/* Three prompts of different lengths in three slots; then one step with all three slots in one
 * batch must give, for each slot, the very logits of that slot stepped alone (and with another
 * thread count). Also: a prompt prefilled in one batch vs token by token. */
static void check_invariance(const char *path) {
    ia_error err = {0};
    ia_model *m = ia_model_load(path, &err);
    if (!m) fail_msg("%s", err.msg);
    const int V = ia_model_n_vocab(m), S = 3, C = 32;
    const int32_t prompts[3][8] = {{1, 30, 40, 50, 60, 70, 80, 90}, {1, 33, 44}, {1, 99, 98, 97, 96}};
    const int plen[3] = {8, 3, 5};
    const int32_t next[3] = {11, 22, 33};
    float *alone = malloc(sizeof(float) * (size_t)S * V);
    float *step = malloc(sizeof(float) * (size_t)V * 16);

    /* reference: each slot on its own, one token at a time, one thread */
    ia_set_threads(1);
    ia_context *c = ia_context_init(m, S, C, 16, &err);
    if (!c) fail_msg("%s", err.msg);
    for (int s = 0; s < S; s++) {
        for (int i = 0; i < plen[s]; i++) assert_int_equal(decode1(c, prompts[s][i], i, s, &err), IA_OK);
        memcpy(step + (size_t)s * V, ia_context_logits(c), sizeof(float) * V); /* last prompt logits */
        assert_int_equal(decode1(c, next[s], plen[s], s, &err), IA_OK);
        memcpy(alone + (size_t)s * V, ia_context_logits(c), sizeof(float) * V);
    }
    ia_context_free(c);

    /* batched: all prompts prefilled in one batch, then one step for all slots, two threads */
    ia_set_threads(2);
    c = ia_context_init(m, S, C, 16, &err);
    if (!c) fail_msg("%s", err.msg);
    int32_t tok[16], pos[16], slot[16];
    bool want[16];
    int n = 0;
    for (int i = 0; i < 8; i++) /* interleave the slots */
        for (int s = 0; s < S; s++)
            if (i < plen[s]) { tok[n] = prompts[s][i]; pos[n] = i; slot[n] = s; want[n] = i == plen[s] - 1; n++; }
    ia_batch b = {.n_tokens = n, .token = tok, .pos = pos, .slot = slot, .logits = want};
    assert_int_equal(ia_context_decode(c, &b, &err), IA_OK);
    assert_int_equal(ia_context_n_logits(c), S);
    /* prefill in one batch vs token by token: rows come in batch order (slot 1 ends first) */
    const int order[3] = {1, 2, 0};
    for (int r = 0; r < S; r++) {
        const float *got = ia_context_logits(c) + (size_t)r * V, *ref = step + (size_t)order[r] * V;
        float mx = 0, md = 0;
        for (int i = 0; i < V; i++) {
            if (fabsf(ref[i]) > mx) mx = fabsf(ref[i]);
            if (fabsf(got[i] - ref[i]) > md) md = fabsf(got[i] - ref[i]);
        }
        if (md > 1e-5f * mx) fail_msg("%s: prefill row %d differs by %g (max |logit| %g)", path, r, md, mx);
    }
    for (int s = 0; s < S; s++) { tok[s] = next[s]; pos[s] = plen[s]; slot[s] = s; want[s] = true; }
    b.n_tokens = S;
    assert_int_equal(ia_context_decode(c, &b, &err), IA_OK);
    for (int s = 0; s < S; s++)
        if (memcmp(ia_context_logits(c) + (size_t)s * V, alone + (size_t)s * V, sizeof(float) * V) != 0)
            fail_msg("%s: slot %d: logits in a batch differ from the slot decoded alone", path, s);
    ia_context_free(c);
    ia_set_threads(0);
    free(alone);
    free(step);
    ia_model_free(m);
}

static void test_invariance_stories(void **state) { (void)state; check_invariance(TEST_STORIES); }
static void test_invariance_qwen2(void **state) {
    (void)state;
    check_invariance(tiny_model("tiny-qwen2.gguf", "tiny-qwen2", IA_TYPE_F16, 0, 0));
}
static void test_invariance_q4k(void **state) {
    (void)state;
    check_invariance(tiny_model("tiny-q4k.gguf", "tiny-llama", IA_TYPE_Q4_K, 256, 512));
}
static void test_invariance_q8(void **state) {
    (void)state;
    check_invariance(tiny_model("tiny-qwen-q8.gguf", "tiny-qwen2", IA_TYPE_Q8_0, 256, 512));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stories_hparams),
        cmocka_unit_test(test_stories_greedy),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_load_variants),
        cmocka_unit_test(test_oom),
        cmocka_unit_test(test_context_range),
        cmocka_unit_test(test_invariance_stories),
        cmocka_unit_test(test_invariance_qwen2),
        cmocka_unit_test(test_invariance_q4k),
        cmocka_unit_test(test_invariance_q8),
    };
    int failed = cmocka_run_group_tests_name("model", tests, NULL, NULL);
    /* the models written here are tens of MB: remove this run's folder unless something failed */
    if (!failed && strncmp(test_tmpdir(), "tests/tmp/", 10) == 0) {
        char cmd[320];
        snprintf(cmd, sizeof cmd, "rm -rf %s", test_tmpdir());
        if (system(cmd) != 0) return 1;
    }
    return failed;
}
