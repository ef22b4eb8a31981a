/* mkmodel.c — the random-weight model writer: presets of real model shapes, a tokenizer copied from
 * a vocabulary GGUF, weights generated tensor by tensor at write time (deterministic per seed). */
#include "model.h"

#include <inttypes.h>
#include <strings.h>

/* ---- presets ------------------------------------------------------------------------------- */

typedef struct mk_preset {
    const char *name, *arch;
    int n_vocab, n_embd, n_layer, n_head, n_head_kv, n_ff, n_ctx;
    float rope_base;
    bool tied;
} mk_preset;

static const mk_preset presets[] = {
    /* name             arch     V       E     L   H   Hkv  F     ctx    base    tied */
    {"smollm2-135m",   "llama",  0,      576,  30, 9,  3,   1536, 8192,  1e5f,   true},
    {"qwen2.5-0.5b",   "qwen2",  151936, 896,  24, 14, 2,   4864, 32768, 1e6f,   true},
    {"tinyllama-1.1b", "llama",  32000,  2048, 22, 32, 4,   5632, 2048,  1e4f,   false},
    {"tiny-llama",     "llama",  0,      64,   2,  4,  2,   128,  256,   1e4f,   false},
    {"tiny-qwen2",     "qwen2",  0,      64,   2,  4,  2,   128,  256,   1e6f,   true},
};

int ia_mkmodel_preset(const char *name, ia_mkmodel_opts *opts, ia_error *err) {
    if (!name || !opts) return ia_error_set(err, IA_ERR_ARG, "ia_mkmodel_preset: NULL argument");
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++) {
        const mk_preset *p = &presets[i];
        if (strcmp(p->name, name) != 0) continue;
        opts->arch = p->arch;
        opts->n_vocab = p->n_vocab;
        opts->n_embd = p->n_embd;
        opts->n_layer = p->n_layer;
        opts->n_head = p->n_head;
        opts->n_head_kv = p->n_head_kv;
        opts->n_ff = p->n_ff;
        opts->n_ctx = p->n_ctx;
        opts->rope_base = p->rope_base;
        opts->tied = p->tied;
        return IA_OK;
    }
    return ia_error_set(err, IA_ERR_ARG, "unknown model preset '%s' (known: smollm2-135m, qwen2.5-0.5b, "
                        "tinyllama-1.1b, tiny-llama, tiny-qwen2)", name);
}

/* ---- tensors generated at write time --------------------------------------------------------- */

typedef enum mk_kind { MK_MATRIX, MK_NORM, MK_BIAS } mk_kind;

typedef struct mk_tensor {
    char name[GGUF_MAX_NAME];
    mk_kind kind;
    uint32_t type;          /* stored type (matrices may fall back, see mk_matrix_type) */
    int64_t n_in, n_out;    /* ne[0], ne[1] (n_out = 1 for vectors) */
    uint64_t seed;          /* this tensor's own stream, so tensors do not depend on write order */
} mk_tensor;

/* The requested type when a row of n_in splits into its blocks; otherwise the nearest type that
 * does (as llama.cpp's quantizer falls back for rows that are not a multiple of 256): a K-quant
 * becomes Q8_0 (rows of 32), and anything that still does not fit becomes F16. */
static uint32_t mk_matrix_type(uint32_t type, int64_t n_in) {
    const ia_type_traits *tr = ia_type_traits_get(type);
    if (n_in % tr->blck_size == 0) return type;
    if (n_in % IA_QK8_0 == 0) return IA_TYPE_Q8_0;
    return IA_TYPE_F16;
}

static int mk_fill(void *ud, const char *name, void *dst, size_t nbytes, ia_error *err) {
    const mk_tensor *t = ud;
    size_t row = ia_type_row_size(t->type, t->n_in);
    if (row * (size_t)t->n_out != nbytes)
        return ia_error_set(err, IA_ERR_INTERNAL, "mkmodel: tensor '%s': %zu bytes asked, %zu expected", name, nbytes,
                            row * (size_t)t->n_out);
    /* Rows in parallel, each from its own seed (tensor seed, row): the bytes do not depend on the
     * thread count. */
    int nomem = 0;
#pragma omp parallel reduction(| : nomem)
    {
        float *buf = ia_malloc((size_t)t->n_in * sizeof(float));
        if (!buf) nomem = 1;
#pragma omp for schedule(static)
        for (int64_t o = 0; o < t->n_out; o++) {
            if (!buf) continue;
            ia_rng rng;
            ia_rng_seed(&rng, t->seed ^ (0xd1b54a32d192ed03ull * (uint64_t)(o + 1)));
            for (int64_t i = 0; i < t->n_in; i++) {
                float z = ia_rng_normal(&rng);
                buf[i] = t->kind == MK_NORM ? 1.0f + 0.05f * z : 0.02f * z;
            }
            ia_quantize_row(t->type, buf, (uint8_t *)dst + (size_t)o * row, t->n_in);
        }
        ia_free(buf);
    }
    if (nomem) return ia_error_set(err, IA_ERR_NOMEM, "mkmodel: out of memory");
    return IA_OK;
}

/* ---- writer ------------------------------------------------------------------------------- */

static uint32_t mk_file_type(uint32_t type) { /* LLAMA_FTYPE */
    switch (type) {
    case IA_TYPE_F32: return 0;
    case IA_TYPE_F16: return 1;
    case IA_TYPE_Q4_0: return 2;
    case IA_TYPE_Q8_0: return 7;
    case IA_TYPE_Q4_K: return 15; /* Q4_K_M */
    case IA_TYPE_Q6_K: return 18;
    case IA_TYPE_BF16: return 32;
    default: return 0;
    }
}

/* Copies every tokenizer.* key of the vocabulary file; when n_vocab exceeds its token count, the
 * tokens/scores/token_type arrays are rebuilt with "<unused_N>" tokens (type unused, score 0) so
 * every embedding row has a token, as in padded real vocabularies (Qwen2.5). */
static int mk_tokenizer(gguf_writer *w, const gguf_file *vf, const char *vpath, int n_vocab, int n_tok,
                        ia_error *err) {
    for (int64_t i = 0; i < gguf_kv_count(vf); i++)
        if (strncmp(gguf_kv_key(vf, i), "tokenizer.", 10) == 0 && gguf_writer_copy_kv(w, vf, i) != IA_OK)
            return ia_error_set(err, IA_ERR_NOMEM, "mkmodel: out of memory");
    if (n_vocab == n_tok) return IA_OK;

    int n_pad = n_vocab - n_tok, rc = IA_OK;
    const char **strs = ia_malloc((size_t)n_vocab * sizeof *strs);
    size_t *lens = ia_malloc((size_t)n_vocab * sizeof *lens);
    char *names = ia_malloc((size_t)n_pad * 24);    /* "<unused_NNNNNNNNNN>" */
    float *scores = ia_malloc((size_t)n_vocab * sizeof *scores);
    int32_t *types = ia_malloc((size_t)n_vocab * sizeof *types);
    if (!strs || !lens || !names || !scores || !types) { rc = ia_error_set(err, IA_ERR_NOMEM, "mkmodel: out of memory"); goto done; }

    int64_t ki = gguf_kv_find(vf, "tokenizer.ggml.tokens");
    for (int j = 0; j < n_tok; j++) strs[j] = gguf_kv_get_arr_str(vf, ki, (uint64_t)j, &lens[j]);
    for (int j = 0; j < n_pad; j++) {
        char *s = names + (size_t)j * 24;
        lens[n_tok + j] = (size_t)snprintf(s, 24, "<unused_%d>", j);
        strs[n_tok + j] = s;
    }
    if (gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", strs, lens, (uint64_t)n_vocab) != IA_OK) {
        rc = ia_error_set(err, IA_ERR_NOMEM, "mkmodel: out of memory");
        goto done;
    }
    int64_t si = gguf_kv_find(vf, "tokenizer.ggml.scores");
    if (si >= 0) { /* BPE vocabularies may have no scores; then there is nothing to pad */
        for (int j = 0; j < n_vocab; j++) {
            double d = 0;
            if (j < n_tok && gguf_kv_get_arr_f64(vf, si, (uint64_t)j, &d, err) != IA_OK) {
                if (err && strncmp(err->msg, vpath, strlen(vpath)) != 0) ia_error_prefix(err, "%s", vpath);
                rc = err ? err->code : IA_ERR_FORMAT;
                goto done;
            }
            scores[j] = (float)d;
        }
        if (gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores, (uint64_t)n_vocab) != IA_OK) {
            rc = ia_error_set(err, IA_ERR_NOMEM, "mkmodel: out of memory");
            goto done;
        }
    }
    int64_t ti = gguf_kv_find(vf, "tokenizer.ggml.token_type");
    for (int j = 0; j < n_vocab; j++) {
        int64_t v = j < n_tok ? IA_TOKEN_NORMAL : IA_TOKEN_UNUSED;
        if (j < n_tok && ti >= 0 && gguf_kv_get_arr_i64(vf, ti, (uint64_t)j, &v, err) != IA_OK) {
            if (err && strncmp(err->msg, vpath, strlen(vpath)) != 0) ia_error_prefix(err, "%s", vpath);
            rc = err ? err->code : IA_ERR_FORMAT;
            goto done;
        }
        types[j] = (int32_t)v;
    }
    if (gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types, (uint64_t)n_vocab) != IA_OK)
        rc = ia_error_set(err, IA_ERR_NOMEM, "mkmodel: out of memory");
done:
    /* The writer copied the arrays, so they can go now. */
    ia_free(strs);
    ia_free(lens);
    ia_free(names);
    ia_free(scores);
    ia_free(types);
    return rc;
}

static int mk_check(const ia_mkmodel_opts *o, ia_error *err) {
    if (!o->arch || (strcmp(o->arch, "llama") != 0 && strcmp(o->arch, "qwen2") != 0))
        return ia_error_set(err, IA_ERR_ARG, "mkmodel: architecture '%s' is not supported (supported: llama, qwen2)",
                            o->arch ? o->arch : "(null)");
    if (!o->vocab_path) return ia_error_set(err, IA_ERR_ARG, "mkmodel: a vocabulary GGUF (vocab_path) is required");
    if (o->n_embd < 1 || o->n_layer < 1 || o->n_head < 1 || o->n_head_kv < 1 || o->n_ff < 1 || o->n_ctx < 1)
        return ia_error_set(err, IA_ERR_ARG, "mkmodel: n_embd %d, n_layer %d, n_head %d, n_head_kv %d, n_ff %d and "
                            "n_ctx %d must all be >= 1", o->n_embd, o->n_layer, o->n_head, o->n_head_kv, o->n_ff, o->n_ctx);
    if (o->n_embd % o->n_head != 0 || (o->n_embd / o->n_head) % 2 != 0)
        return ia_error_set(err, IA_ERR_ARG, "mkmodel: n_embd %d / n_head %d must give an even head size",
                            o->n_embd, o->n_head);
    if (o->n_head % o->n_head_kv != 0)
        return ia_error_set(err, IA_ERR_ARG, "mkmodel: n_head %d is not a multiple of n_head_kv %d", o->n_head,
                            o->n_head_kv);
    const ia_type_traits *tr = ia_type_traits_get(o->type);
    if (!tr || !tr->supported)
        return ia_error_set(err, IA_ERR_ARG, "mkmodel: type %s is not supported (supported: F32 F16 BF16 Q8_0 Q4_0 "
                            "Q4_K Q6_K)", ia_type_name(o->type));
    return IA_OK;
}

int ia_mkmodel_write(const ia_mkmodel_opts *o, const char *out_path, ia_error *err) {
    if (!o || !out_path) return ia_error_set(err, IA_ERR_ARG, "ia_mkmodel_write: NULL argument");
    int rc = mk_check(o, err);
    if (rc) return rc;
    const bool qwen = strcmp(o->arch, "qwen2") == 0;
    const int64_t E = o->n_embd, L = o->n_layer, D = o->n_embd / o->n_head;
    const int64_t Dq = o->n_head * D, Dkv = o->n_head_kv * D, F = o->n_ff;

    gguf_file *vf = gguf_file_open(o->vocab_path, err);
    if (!vf) return err ? err->code : IA_ERR_IO;
    gguf_writer *w = NULL;
    mk_tensor *ts = NULL;
    int64_t ki = gguf_kv_find(vf, "tokenizer.ggml.tokens");
    if (ki < 0 || gguf_kv_type(vf, ki) != GGUF_TYPE_ARRAY || gguf_kv_arr_type(vf, ki) != GGUF_TYPE_STRING) {
        rc = ia_error_set(err, IA_ERR_FORMAT, "%s: no tokenizer.ggml.tokens string array: not a vocabulary file",
                          o->vocab_path);
        goto done;
    }
    uint64_t n_tok64 = gguf_kv_arr_n(vf, ki);
    if (n_tok64 == 0 || n_tok64 > INT32_MAX) {
        rc = ia_error_set(err, IA_ERR_FORMAT, "%s: tokenizer.ggml.tokens has %" PRIu64 " entries", o->vocab_path, n_tok64);
        goto done;
    }
    int n_tok = (int)n_tok64, V = o->n_vocab ? o->n_vocab : n_tok;
    if (V < n_tok) {
        rc = ia_error_set(err, IA_ERR_ARG, "mkmodel: n_vocab %d is smaller than the %d tokens of %s", V, n_tok,
                          o->vocab_path);
        goto done;
    }

    w = gguf_writer_init();
    if (!w) { rc = ia_error_set(err, IA_ERR_NOMEM, "mkmodel: out of memory"); goto done; }
    char key[128], name[128];
#define AKEY(s) (snprintf(key, sizeof key, "%s." s, o->arch), key)
    bool quant = o->type != IA_TYPE_F32 && o->type != IA_TYPE_F16 && o->type != IA_TYPE_BF16;
    snprintf(name, sizeof name, "iteralign random %s E%d L%d H%d/%d F%d %s", o->arch, o->n_embd, o->n_layer,
             o->n_head, o->n_head_kv, o->n_ff, ia_type_name(o->type));
    float base = o->rope_base > 0 ? o->rope_base : (qwen ? 1e6f : 1e4f);
    /* Types as llama.cpp's loader insists: u32 counts, f32 reals. */
    int wr = 0;
    wr |= gguf_writer_set_str(w, "general.architecture", o->arch);
    wr |= gguf_writer_set_str(w, "general.name", name);
    wr |= gguf_writer_set_u32(w, "general.file_type", mk_file_type(o->type));
    if (quant) wr |= gguf_writer_set_u32(w, "general.quantization_version", 2);
    wr |= gguf_writer_set_u32(w, AKEY("vocab_size"), (uint32_t)V);
    wr |= gguf_writer_set_u32(w, AKEY("context_length"), (uint32_t)o->n_ctx);
    wr |= gguf_writer_set_u32(w, AKEY("embedding_length"), (uint32_t)E);
    wr |= gguf_writer_set_u32(w, AKEY("block_count"), (uint32_t)L);
    wr |= gguf_writer_set_u32(w, AKEY("feed_forward_length"), (uint32_t)F);
    wr |= gguf_writer_set_u32(w, AKEY("attention.head_count"), (uint32_t)o->n_head);
    wr |= gguf_writer_set_u32(w, AKEY("attention.head_count_kv"), (uint32_t)o->n_head_kv);
    wr |= gguf_writer_set_f32(w, AKEY("attention.layer_norm_rms_epsilon"), qwen ? 1e-6f : 1e-5f);
    wr |= gguf_writer_set_f32(w, AKEY("rope.freq_base"), base);
    wr |= gguf_writer_set_u32(w, AKEY("rope.dimension_count"), (uint32_t)D);
#undef AKEY
    if (wr) { rc = ia_error_set(err, IA_ERR_NOMEM, "mkmodel: out of memory"); goto done; }
    if ((rc = mk_tokenizer(w, vf, o->vocab_path, V, n_tok, err))) goto done;
    if (o->chat_template && gguf_writer_set_str(w, "tokenizer.chat_template", o->chat_template) != IA_OK) {
        rc = ia_error_set(err, IA_ERR_NOMEM, "mkmodel: out of memory");
        goto done;
    }

    /* The tensor list, in llama.cpp's order. */
    int per_layer = qwen ? 12 : 9, n_t = 0;
    ts = ia_calloc((size_t)(3 + L * per_layer), sizeof *ts);
    if (!ts) { rc = ia_error_set(err, IA_ERR_NOMEM, "mkmodel: out of memory"); goto done; }
#define ADD(kind_, n_in_, n_out_, ...)                                                                     \
    do {                                                                                                  \
        mk_tensor *t_ = &ts[n_t];                                                                         \
        snprintf(t_->name, sizeof t_->name, __VA_ARGS__);                                                 \
        t_->kind = kind_;                                                                                 \
        t_->n_in = n_in_;                                                                                 \
        t_->n_out = n_out_;                                                                               \
        t_->type = kind_ == MK_MATRIX ? mk_matrix_type(o->type, n_in_) : IA_TYPE_F32;                     \
        t_->seed = o->seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)(n_t + 1));                               \
        n_t++;                                                                                            \
    } while (0)
    ADD(MK_MATRIX, E, V, "token_embd.weight");
    ADD(MK_NORM, E, 1, "output_norm.weight");
    if (!o->tied) ADD(MK_MATRIX, E, V, "output.weight");
    for (int l = 0; l < L; l++) {
        ADD(MK_NORM, E, 1, "blk.%d.attn_norm.weight", l);
        ADD(MK_MATRIX, E, Dq, "blk.%d.attn_q.weight", l);
        ADD(MK_MATRIX, E, Dkv, "blk.%d.attn_k.weight", l);
        ADD(MK_MATRIX, E, Dkv, "blk.%d.attn_v.weight", l);
        if (qwen) {
            ADD(MK_BIAS, Dq, 1, "blk.%d.attn_q.bias", l);
            ADD(MK_BIAS, Dkv, 1, "blk.%d.attn_k.bias", l);
            ADD(MK_BIAS, Dkv, 1, "blk.%d.attn_v.bias", l);
        }
        ADD(MK_MATRIX, Dq, E, "blk.%d.attn_output.weight", l);
        ADD(MK_NORM, E, 1, "blk.%d.ffn_norm.weight", l);
        ADD(MK_MATRIX, E, F, "blk.%d.ffn_gate.weight", l);
        ADD(MK_MATRIX, E, F, "blk.%d.ffn_up.weight", l);
        ADD(MK_MATRIX, F, E, "blk.%d.ffn_down.weight", l);
    }
#undef ADD
    for (int i = 0; i < n_t; i++) {
        int64_t ne[2] = {ts[i].n_in, ts[i].n_out};
        rc = gguf_writer_add_tensor_fill(w, ts[i].name, ts[i].type, ts[i].kind == MK_MATRIX ? 2 : 1, ne, mk_fill,
                                         &ts[i], err);
        if (rc) goto done;
    }
    rc = gguf_writer_write_file(w, out_path, err);
done:
    gguf_writer_free(w);
    ia_free(ts);
    gguf_file_free(vf);
    return rc;
}
