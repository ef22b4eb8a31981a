/* model.c — loading llama/qwen2 GGUF models: hyper-parameters from metadata, validated zero-copy
 * weight views into the mapping, the tokenizer and chat template. */
#include "model.h"

#include <inttypes.h>
#include <math.h>
#include <stdint.h>

/* ---- metadata helpers -------------------------------------------------------------------- */

/* Errors from the GGUF reader and the tokenizer usually name the file already; add it otherwise. */
static void prefix_path(ia_error *err, const char *path) {
    size_t n = strlen(path);
    if (err && strncmp(err->msg, path, n) != 0) ia_error_prefix(err, "%s", path);
}

/* Reads "<arch>.<suffix>" as a positive count that fits an int. The value may be any integer type,
 * or (n_layer > 0) an array with one value per layer, accepted only when all values are equal since
 * the forward pass has one shape for every layer. Returns 1 found, 0 absent (*out untouched),
 * -1 error (err set). */
static int meta_count(const gguf_file *f, const char *path, const char *arch, const char *suffix,
                      int n_layer, int *out, ia_error *err) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int64_t i = gguf_kv_find(f, key);
    if (i < 0) return 0;
    int64_t v = 0;
    if (gguf_kv_type(f, i) == GGUF_TYPE_ARRAY) {
        uint64_t n = gguf_kv_arr_n(f, i);
        if (n_layer <= 0 || n != (uint64_t)n_layer) {
            ia_error_set(err, IA_ERR_FORMAT, "%s: metadata key '%s' is an array of %" PRIu64
                         " values, expected one integer%s", path, key, n,
                         n_layer > 0 ? " or one per layer" : "");
            return -1;
        }
        for (uint64_t j = 0; j < n; j++) {
            int64_t e;
            if (gguf_kv_get_arr_i64(f, i, j, &e, err) != IA_OK) {
                prefix_path(err, path);
                return -1;
            }
            if (j == 0) v = e;
            else if (e != v) {
                ia_error_set(err, IA_ERR_UNSUPPORTED, "%s: metadata key '%s' differs between layers "
                             "(layer 0: %" PRId64 ", layer %" PRIu64 ": %" PRId64
                             "); per-layer shapes are not supported", path, key, v, j, e);
                return -1;
            }
        }
    } else if (gguf_kv_get_i64(f, i, &v, err) != IA_OK) {
        prefix_path(err, path);
        return -1;
    }
    if (v <= 0 || v > INT32_MAX) {
        ia_error_set(err, IA_ERR_FORMAT, "%s: metadata key '%s' = %" PRId64 " is out of range "
                     "(expected 1..%d)", path, key, v, INT32_MAX);
        return -1;
    }
    *out = (int)v;
    return 1;
}

static int meta_count_req(const gguf_file *f, const char *path, const char *arch, const char *suffix,
                          int n_layer, int *out, ia_error *err) {
    int r = meta_count(f, path, arch, suffix, n_layer, out, err);
    if (r == 0) {
        ia_error_set(err, IA_ERR_FORMAT, "%s: required metadata key '%s.%s' is missing", path, arch, suffix);
        return -1;
    }
    return r;
}

/* "<arch>.<suffix>" as a real; 1 found, 0 absent, -1 error. */
static int meta_real(const gguf_file *f, const char *path, const char *arch, const char *suffix,
                     double *out, ia_error *err) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int r = gguf_find_f64(f, key, out, err);
    if (r < 0) prefix_path(err, path);
    return r;
}

static int load_hparams(const gguf_file *f, const char *path, const char *arch, ia_hparams *hp,
                        ia_error *err) {
    memset(hp, 0, sizeof *hp);
    snprintf(hp->arch, sizeof hp->arch, "%s", arch);
    hp->rope_type = strcmp(arch, "qwen2") == 0 ? IA_ROPE_NEOX : IA_ROPE_NORM;

    if (meta_count_req(f, path, arch, "context_length", 0, &hp->n_ctx_train, err) < 0) return err->code;
    if (meta_count_req(f, path, arch, "embedding_length", 0, &hp->n_embd, err) < 0) return err->code;
    if (meta_count_req(f, path, arch, "block_count", 0, &hp->n_layer, err) < 0) return err->code;
    if (meta_count_req(f, path, arch, "feed_forward_length", hp->n_layer, &hp->n_ff, err) < 0) return err->code;
    if (meta_count_req(f, path, arch, "attention.head_count", hp->n_layer, &hp->n_head, err) < 0) return err->code;
    hp->n_head_kv = hp->n_head;
    if (meta_count(f, path, arch, "attention.head_count_kv", hp->n_layer, &hp->n_head_kv, err) < 0) return err->code;
    if (hp->n_head % hp->n_head_kv != 0)
        return ia_error_set(err, IA_ERR_FORMAT, "%s: head_count %d is not a multiple of head_count_kv %d",
                            path, hp->n_head, hp->n_head_kv);
    int key_len = 0, val_len = 0;
    int rk = meta_count(f, path, arch, "attention.key_length", 0, &key_len, err);
    if (rk < 0) return err->code;
    int rv = meta_count(f, path, arch, "attention.value_length", 0, &val_len, err);
    if (rv < 0) return err->code;
    if (rk == 0) {
        if (hp->n_embd % hp->n_head != 0)
            return ia_error_set(err, IA_ERR_FORMAT, "%s: embedding_length %d is not a multiple of head_count %d "
                                "and no attention.key_length is given", path, hp->n_embd, hp->n_head);
        key_len = hp->n_embd / hp->n_head;
    }
    if (rv == 0) val_len = key_len;
    if (val_len != key_len)
        return ia_error_set(err, IA_ERR_UNSUPPORTED, "%s: attention.key_length %d != value_length %d is not supported",
                            path, key_len, val_len);
    hp->head_dim = key_len;
    hp->n_rot = hp->head_dim;
    if (meta_count(f, path, arch, "rope.dimension_count", 0, &hp->n_rot, err) < 0) return err->code;
    if (hp->n_rot > hp->head_dim || hp->n_rot % 2 != 0)
        return ia_error_set(err, IA_ERR_FORMAT, "%s: rope.dimension_count %d must be even and at most the head size %d",
                            path, hp->n_rot, hp->head_dim);

    double v;
    int r = meta_real(f, path, arch, "attention.layer_norm_rms_epsilon", &v, err);
    if (r < 0) return err->code;
    if (r == 0)
        return ia_error_set(err, IA_ERR_FORMAT, "%s: required metadata key '%s.attention.layer_norm_rms_epsilon' is missing",
                            path, arch);
    if (!(v >= 0 && v < 1))
        return ia_error_set(err, IA_ERR_FORMAT, "%s: layer_norm_rms_epsilon %g is out of range", path, v);
    hp->rms_eps = (float)v;

    hp->rope_base = 10000.0f;
    r = meta_real(f, path, arch, "rope.freq_base", &v, err);
    if (r < 0) return err->code;
    if (r == 1) {
        if (!(v > 0 && isfinite(v)))
            return ia_error_set(err, IA_ERR_FORMAT, "%s: rope.freq_base %g must be positive", path, v);
        hp->rope_base = (float)v;
    }

    /* RoPE scaling: type defaults to linear (as llama.cpp); factor 0/absent means none. */
    char key[128];
    const char *stype = "linear";
    snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
    if (gguf_find_str(f, key, &stype, err) < 0) { prefix_path(err, path); return err->code; }
    hp->rope_freq_scale = 1.0f;
    if (strcmp(stype, "none") == 0) {
        /* nothing */
    } else if (strcmp(stype, "linear") == 0) {
        double factor = 0;
        r = meta_real(f, path, arch, "rope.scaling.factor", &factor, err);
        if (r < 0) return err->code;
        if (r == 0) {
            r = meta_real(f, path, arch, "rope.scale_linear", &factor, err); /* legacy key */
            if (r < 0) return err->code;
        }
        if (factor < 0 || !isfinite(factor))
            return ia_error_set(err, IA_ERR_FORMAT, "%s: rope scaling factor %g is invalid", path, factor);
        if (factor > 0) hp->rope_freq_scale = (float)(1.0 / factor);
    } else if (strcmp(stype, "yarn") == 0) {
        return ia_error_set(err, IA_ERR_UNSUPPORTED, "%s: %s: YaRN RoPE scaling is not supported (only none and linear)",
                            path, key);
    } else {
        return ia_error_set(err, IA_ERR_UNSUPPORTED, "%s: %s = '%s' is not supported (only none and linear)",
                            path, key, stype);
    }
    return IA_OK;
}

/* ---- tensor helpers ---------------------------------------------------------------------- */

/* Pending conversion of a 1-D tensor (norm/bias/rope_freqs) to f32 into the owned block. */
typedef struct pending_vec {
    const float **slot;           /* where the converted pointer goes */
    const gguf_tensor_info *ti;
} pending_vec;

typedef struct loader {
    const char *path;
    const gguf_file *f;
    int64_t n_used;               /* tensors consumed (every tensor in the file must be used) */
    bool *used;                   /* [tensor count] */
    pending_vec *pend;            /* [n_pend_cap] */
    int n_pend, n_pend_cap;
    size_t n_owned;               /* floats the owned block needs */
    ia_error *err;
} loader;

static void shape_str(const gguf_tensor_info *ti, char *buf, size_t cap) {
    int o = snprintf(buf, cap, "[");
    for (uint32_t d = 0; d < ti->n_dims && o < (int)cap; d++)
        o += snprintf(buf + o, cap - (size_t)o, "%s%" PRId64, d ? ", " : "", ti->ne[d]);
    if (o < (int)cap) snprintf(buf + o, cap - (size_t)o, "]");
}

static void mark_used(loader *ld, const gguf_tensor_info *ti) {
    int64_t n = gguf_tensor_count(ld->f);
    for (int64_t i = 0; i < n; i++)
        if (gguf_tensor_get(ld->f, i) == ti) {
            if (!ld->used[i]) { ld->used[i] = true; ld->n_used++; }
            return;
        }
}

/* Effective 2-D check: n_dims <= 2 and the given ne (ne1 = 1 for vectors). */
static bool shape_is(const gguf_tensor_info *ti, int64_t ne0, int64_t ne1) {
    if (ti->ne[0] != ne0 || ti->ne[1] != ne1) return false;
    for (int d = 2; d < GGUF_MAX_DIMS; d++)
        if (ti->ne[d] != 1) return false;
    return true;
}

/* A matrix view: ne = {n_in, n_out}, any type the matmul kernels support. */
static int get_weight(loader *ld, const char *name, int64_t n_in, int64_t n_out, const char *what,
                      bool required, ia_weight *w) {
    memset(w, 0, sizeof *w);
    const gguf_tensor_info *ti = gguf_tensor_find(ld->f, name);
    if (!ti) {
        if (!required) return IA_OK;
        return ia_error_set(ld->err, IA_ERR_FORMAT, "%s: tensor '%s' is missing (expected shape [%" PRId64
                            ", %" PRId64 "] = %s)", ld->path, name, n_in, n_out, what);
    }
    char shp[96];
    shape_str(ti, shp, sizeof shp);
    if (!shape_is(ti, n_in, n_out) || ti->n_dims > 2)
        return ia_error_set(ld->err, IA_ERR_FORMAT, "%s: tensor '%s' has shape %s (%s), expected [%" PRId64
                            ", %" PRId64 "] = %s", ld->path, name, shp, ia_type_name(ti->type), n_in, n_out, what);
    const ia_type_traits *tr = ia_type_traits_get(ti->type);
    if (!tr || !tr->supported)
        return ia_error_set(ld->err, IA_ERR_UNSUPPORTED, "%s: tensor '%s' %s has type %s (id %u), which is not "
                            "supported (supported: F32 F16 BF16 Q8_0 Q4_0 Q4_K Q6_K)",
                            ld->path, name, shp, tr ? tr->name : "unknown", ti->type);
    w->data = ti->data;
    w->type = ti->type;
    w->n_in = (int)n_in;
    w->n_out = (int)n_out;
    w->name = ti->name;
    mark_used(ld, ti);
    return IA_OK;
}

/* A vector of n floats (norm weight, bias, rope_freqs). F32 is used in place when aligned; F16,
 * BF16 (and misaligned F32) are converted once into the owned block after validation. */
static int get_vec(loader *ld, const char *name, int64_t n, const char *what, bool required,
                   const float **slot) {
    *slot = NULL;
    const gguf_tensor_info *ti = gguf_tensor_find(ld->f, name);
    if (!ti) {
        if (!required) return IA_OK;
        return ia_error_set(ld->err, IA_ERR_FORMAT, "%s: tensor '%s' is missing (expected shape [%" PRId64
                            "] = %s)", ld->path, name, n, what);
    }
    char shp[96];
    shape_str(ti, shp, sizeof shp);
    if (!shape_is(ti, n, 1) || ti->n_dims > 1)
        return ia_error_set(ld->err, IA_ERR_FORMAT, "%s: tensor '%s' has shape %s (%s), expected [%" PRId64 "] = %s",
                            ld->path, name, shp, ia_type_name(ti->type), n, what);
    if (ti->type != IA_TYPE_F32 && ti->type != IA_TYPE_F16 && ti->type != IA_TYPE_BF16)
        return ia_error_set(ld->err, IA_ERR_UNSUPPORTED, "%s: tensor '%s' %s has type %s, expected F32 "
                            "(or F16/BF16)", ld->path, name, shp, ia_type_name(ti->type));
    mark_used(ld, ti);
    if (ti->type == IA_TYPE_F32 && ((uintptr_t)ti->data % sizeof(float)) == 0) {
        *slot = ti->data;
        return IA_OK;
    }
    IA_ASSERT(ld->n_pend < ld->n_pend_cap);
    ld->pend[ld->n_pend].slot = slot;
    ld->pend[ld->n_pend].ti = ti;
    ld->n_pend++;
    ld->n_owned += (size_t)n;
    return IA_OK;
}

static void convert_vec(const gguf_tensor_info *ti, float *dst) {
    const uint8_t *src = ti->data;
    int64_t n = ti->ne[0];
    for (int64_t i = 0; i < n; i++) {
        if (ti->type == IA_TYPE_F32) {
            memcpy(&dst[i], src + 4 * i, 4);
        } else {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            dst[i] = ti->type == IA_TYPE_F16 ? ia_fp16_to_fp32(h) : ia_bf16_to_fp32(h);
        }
    }
}

static int load_tensors(ia_model *m, loader *ld) {
    const ia_hparams *hp = &m->hp;
    int64_t E = hp->n_embd, Dq = (int64_t)hp->n_head * hp->head_dim, Dkv = (int64_t)hp->n_head_kv * hp->head_dim;
    int64_t F = hp->n_ff;

    /* V comes from the embedding's rows; everything else is checked against it. */
    const gguf_tensor_info *te = gguf_tensor_find(ld->f, "token_embd.weight");
    if (!te)
        return ia_error_set(ld->err, IA_ERR_FORMAT, "%s: tensor 'token_embd.weight' is missing (expected shape "
                            "[%" PRId64 ", n_vocab])", ld->path, E);
    if (te->ne[1] <= 0 || te->ne[1] > INT32_MAX)
        return ia_error_set(ld->err, IA_ERR_FORMAT, "%s: tensor 'token_embd.weight' has %" PRId64 " rows",
                            ld->path, te->ne[1]);
    int64_t V = te->ne[1];
    m->hp.n_vocab = (int)V;
    int rc;
    if ((rc = get_weight(ld, "token_embd.weight", E, V, "(n_embd, n_vocab)", true, &m->tok_embd))) return rc;
    if ((rc = get_vec(ld, "output_norm.weight", E, "(n_embd)", true, &m->output_norm))) return rc;
    if ((rc = get_weight(ld, "output.weight", E, V, "(n_embd, n_vocab)", false, &m->output))) return rc;
    m->tied_output = m->output.data == NULL;
    if (m->tied_output) m->output = m->tok_embd; /* tied embeddings (SmolLM, Qwen2.5-0.5B) */
    if ((rc = get_vec(ld, "rope_freqs.weight", hp->n_rot / 2, "(n_rot/2)", false, &m->rope_freqs))) return rc;

    char name[GGUF_MAX_NAME + 32];
#define LNAME(fmt) (snprintf(name, sizeof name, "blk.%d." fmt, l), name)
    for (int l = 0; l < hp->n_layer; l++) {
        ia_layer *ly = &m->layers[l];
        if ((rc = get_vec(ld, LNAME("attn_norm.weight"), E, "(n_embd)", true, &ly->attn_norm))) return rc;
        if ((rc = get_weight(ld, LNAME("attn_q.weight"), E, Dq, "(n_embd, n_head*head_dim)", true, &ly->wq))) return rc;
        if ((rc = get_weight(ld, LNAME("attn_k.weight"), E, Dkv, "(n_embd, n_head_kv*head_dim)", true, &ly->wk))) return rc;
        if ((rc = get_weight(ld, LNAME("attn_v.weight"), E, Dkv, "(n_embd, n_head_kv*head_dim)", true, &ly->wv))) return rc;
        if ((rc = get_weight(ld, LNAME("attn_output.weight"), Dq, E, "(n_head*head_dim, n_embd)", true, &ly->wo))) return rc;
        /* Q/K/V biases: qwen2 has them; optional for both architectures, as in llama.cpp. */
        if ((rc = get_vec(ld, LNAME("attn_q.bias"), Dq, "(n_head*head_dim)", false, &ly->bq))) return rc;
        if ((rc = get_vec(ld, LNAME("attn_k.bias"), Dkv, "(n_head_kv*head_dim)", false, &ly->bk))) return rc;
        if ((rc = get_vec(ld, LNAME("attn_v.bias"), Dkv, "(n_head_kv*head_dim)", false, &ly->bv))) return rc;
        if ((rc = get_vec(ld, LNAME("ffn_norm.weight"), E, "(n_embd)", true, &ly->ffn_norm))) return rc;
        if ((rc = get_weight(ld, LNAME("ffn_gate.weight"), E, F, "(n_embd, n_ff)", true, &ly->w_gate))) return rc;
        if ((rc = get_weight(ld, LNAME("ffn_up.weight"), E, F, "(n_embd, n_ff)", true, &ly->w_up))) return rc;
        if ((rc = get_weight(ld, LNAME("ffn_down.weight"), F, E, "(n_ff, n_embd)", true, &ly->w_down))) return rc;
    }
#undef LNAME

    /* Like llama.cpp, refuse tensors we would silently ignore (an attention output bias, fused QKV,
     * per-head norms ...): computing without them would give wrong results. */
    int64_t nt = gguf_tensor_count(ld->f);
    if (ld->n_used != nt)
        for (int64_t i = 0; i < nt; i++)
            if (!ld->used[i]) {
                const gguf_tensor_info *ti = gguf_tensor_get(ld->f, i);
                return ia_error_set(ld->err, IA_ERR_UNSUPPORTED, "%s: tensor '%s' is not part of the %s architecture "
                                    "as implemented here (%" PRId64 " of %" PRId64 " tensors unused)",
                                    ld->path, ti->name, hp->arch, nt - ld->n_used, nt);
            }

    if (ld->n_owned) {
        m->owned = ia_malloc(ld->n_owned * sizeof(float));
        if (!m->owned) return ia_error_set(ld->err, IA_ERR_NOMEM, "%s: out of memory", ld->path);
        float *p = m->owned;
        for (int i = 0; i < ld->n_pend; i++) {
            convert_vec(ld->pend[i].ti, p);
            *ld->pend[i].slot = p;
            p += ld->pend[i].ti->ne[0];
        }
    }
    return IA_OK;
}

/* ---- public ------------------------------------------------------------------------------ */

/* Every matrix the forward pass multiplies by, for the tensor module's repacked copies (made for the
 * SIMD integer kernels at load, released at free; a no-op where no such kernel runs). */
static int pack_weights(ia_model *m, bool add) {
    int rc = IA_OK;
#define PW(w) ((w).data ? (add ? (rc = rc ? rc : ia_qpack_add((w).data, (w).type, (w).n_in, (w).n_out)) : (ia_qpack_remove((w).data), 0)) : 0)
    for (int l = 0; m->layers && l < m->hp.n_layer; l++) {
        const ia_layer *ly = &m->layers[l];
        PW(ly->wq), PW(ly->wk), PW(ly->wv), PW(ly->wo), PW(ly->w_gate), PW(ly->w_up), PW(ly->w_down);
    }
    PW(m->output);
#undef PW
    return rc;
}

ia_model *ia_model_load(const char *path, ia_error *err_out) {
    if (!path) { ia_error_set(err_out, IA_ERR_ARG, "ia_model_load: path is NULL"); return NULL; }
    /* Internally err is never NULL, so helpers can return err->code. */
    ia_error local = {0}, *err = &local;
    ia_model *m = ia_calloc(1, sizeof *m);
    if (!m) { ia_error_set(err_out, IA_ERR_NOMEM, "%s: out of memory", path); return NULL; }
    loader ld = {0};
    m->path = ia_strdup(path);
    if (!m->path) { ia_error_set(err, IA_ERR_NOMEM, "%s: out of memory", path); goto fail; }
    m->gguf = gguf_file_open(path, err);
    if (!m->gguf) goto fail;
    const gguf_file *f = m->gguf;

    if (gguf_tensor_count(f) == 0) {
        ia_error_set(err, IA_ERR_FORMAT, "%s: the file has no tensors: it is a vocab-only GGUF (tokenizer "
                     "metadata only), not a model", path);
        goto fail;
    }
    const char *arch = NULL;
    int r = gguf_find_str(f, "general.architecture", &arch, err);
    if (r < 0) { prefix_path(err, path); goto fail; }
    if (r == 0) { ia_error_set(err, IA_ERR_FORMAT, "%s: metadata key 'general.architecture' is missing", path); goto fail; }
    if (strcmp(arch, "llama") != 0 && strcmp(arch, "qwen2") != 0) {
        ia_error_set(err, IA_ERR_UNSUPPORTED, "%s: architecture '%.64s' is not supported (supported: llama, qwen2)",
                     path, arch);
        goto fail;
    }
    if (load_hparams(f, path, arch, &m->hp, err) != IA_OK) goto fail;

    m->layers = ia_calloc((size_t)m->hp.n_layer, sizeof *m->layers);
    ld.path = path;
    ld.f = f;
    ld.err = err;
    ld.used = ia_calloc((size_t)gguf_tensor_count(f), sizeof *ld.used);
    ld.n_pend_cap = 2 + 5 * m->hp.n_layer;
    ld.pend = ia_calloc((size_t)ld.n_pend_cap, sizeof *ld.pend);
    if (!m->layers || !ld.used || !ld.pend) { ia_error_set(err, IA_ERR_NOMEM, "%s: out of memory", path); goto fail; }
    if (load_tensors(m, &ld) != IA_OK) goto fail;
    m->packed = true;
    if (pack_weights(m, true) != IA_OK) { ia_error_set(err, IA_ERR_NOMEM, "%s: out of memory", path); goto fail; }

    m->tok = ia_tokenizer_load(f, err);
    if (!m->tok) { prefix_path(err, path); goto fail; }
    int tv = ia_tokenizer_n_vocab(m->tok);
    if (tv > m->hp.n_vocab) {
        ia_error_set(err, IA_ERR_FORMAT, "%s: the tokenizer has %d tokens but token_embd.weight only %d rows",
                     path, tv, m->hp.n_vocab);
        goto fail;
    }
    const char *tmpl = NULL;
    r = gguf_find_str(f, "tokenizer.chat_template", &tmpl, err);
    if (r < 0) { prefix_path(err, path); goto fail; }
    if (r == 1) {
        m->chat_template = ia_strdup(tmpl);
        if (!m->chat_template) { ia_error_set(err, IA_ERR_NOMEM, "%s: out of memory", path); goto fail; }
    }
    ia_free(ld.used);
    ia_free(ld.pend);
    return m;
fail:
    if (err->code == IA_OK) ia_error_set(err, IA_ERR_INTERNAL, "%s: load failed", path);
    if (err_out) *err_out = local;
    ia_free(ld.used);
    ia_free(ld.pend);
    ia_model_free(m);
    return NULL;
}

void ia_model_free(ia_model *m) {
    if (!m) return;
    ia_model_lora_clear(m);
    if (m->packed) pack_weights(m, false);
    ia_tokenizer_free(m->tok);
    gguf_file_free(m->gguf);
    ia_free(m->layers);
    ia_free(m->owned);
    ia_free(m->chat_template);
    ia_free(m->path);
    ia_free(m);
}

const ia_tokenizer *ia_model_tokenizer(const ia_model *m) { return m ? m->tok : NULL; }
int ia_model_n_vocab(const ia_model *m) { return m ? m->hp.n_vocab : 0; }
int ia_model_n_ctx_train(const ia_model *m) { return m ? m->hp.n_ctx_train : 0; }
const char *ia_model_arch(const ia_model *m) { return m ? m->hp.arch : NULL; }
const char *ia_model_chat_template(const ia_model *m) { return m ? m->chat_template : NULL; }
