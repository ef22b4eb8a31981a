/* lora.c — llama.cpp-format LoRA adapters: load + validate, the run-time term added after each
 * adapted matmul, and the model's adapter list (ia_model_lora_add / ia_model_lora_clear). */
#include "model/lora.h"
#include "tensor/pool.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>

const char *const ia_lora_target_gguf[IA_LORA_N] = {"attn_q", "attn_k", "attn_v", "attn_output",
                                                   "ffn_gate", "ffn_up", "ffn_down"};

static const ia_weight *base_weight(const ia_model *m, int l, int j) {
    const ia_layer *ly = &m->layers[l];
    const ia_weight *ws[IA_LORA_N] = {&ly->wq, &ly->wk, &ly->wv, &ly->wo, &ly->w_gate, &ly->w_up, &ly->w_down};
    return ws[j];
}

/* Parses "blk.N.<target>.weight" into (N, target); false for anything else. */
static bool parse_base_name(const char *s, size_t len, int n_layer, int *l, int *j) {
    if (len < 5 || strncmp(s, "blk.", 4)) return false;
    char *end;
    long v = strtol(s + 4, &end, 10);
    if (end == s + 4 || *end != '.' || v < 0 || v >= n_layer) return false;
    const char *rest = end + 1;
    size_t rl = len - (size_t)(rest - s);
    for (int k = 0; k < IA_LORA_N; k++) {
        size_t tl = strlen(ia_lora_target_gguf[k]);
        if (rl == tl + 7 && !strncmp(rest, ia_lora_target_gguf[k], tl) && !strncmp(rest + tl, ".weight", 7)) {
            *l = (int)v;
            *j = k;
            return true;
        }
    }
    return false;
}

static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* Converts a 2-D adapter tensor to f32 (F32, F16, BF16, Q8_0). */
static int tensor_to_f32(const gguf_tensor_info *ti, float *dst, const char *path, ia_error *err) {
    if (ti->type != IA_TYPE_F32 && ti->type != IA_TYPE_F16 && ti->type != IA_TYPE_BF16 && ti->type != IA_TYPE_Q8_0)
        return ia_error_set(err, IA_ERR_UNSUPPORTED, "%s: tensor '%s' has type %s (expected F32, F16, BF16 or Q8_0)",
                            path, ti->name, ia_type_name(ti->type));
    size_t rs = ia_type_row_size(ti->type, ti->ne[0]);
    for (int64_t r = 0; r < ti->ne[1]; r++)
        ia_dequantize_row(ti->type, (const uint8_t *)ti->data + (size_t)r * rs, dst + (size_t)r * ti->ne[0], ti->ne[0]);
    return IA_OK;
}

ia_lora_adapter *ia_lora_adapter_load(const char *path, const ia_model *m, float user_scale, ia_error *err) {
    ia_lora_adapter *a = ia_calloc(1, sizeof *a);
    gguf_file *f = NULL;
    if (!a) { ia_error_set(err, IA_ERR_NOMEM, "%s: out of memory", path); return NULL; }
    a->path = ia_strdup(path);
    a->user_scale = user_scale;
    a->n_layer = m->hp.n_layer;
    a->mats = ia_calloc((size_t)m->hp.n_layer * IA_LORA_N, sizeof *a->mats);
    if (!a->path || !a->mats) { ia_error_set(err, IA_ERR_NOMEM, "%s: out of memory", path); goto fail; }
    f = gguf_file_open(path, err);
    if (!f) goto fail;

    const char *s = NULL;
    int r = gguf_find_str(f, "general.type", &s, err);
    if (r < 0) goto fail;
    if (r == 0 || strcmp(s, "adapter")) {
        ia_error_set(err, IA_ERR_FORMAT, "%s: general.type is %s%s%s, expected 'adapter' (is this a model, not a LoRA "
                     "adapter?)", path, r ? "'" : "missing", r ? s : "", r ? "'" : "");
        goto fail;
    }
    r = gguf_find_str(f, "general.architecture", &s, err);
    if (r < 0) goto fail;
    if (r == 0 || strcmp(s, m->hp.arch)) {
        ia_error_set(err, IA_ERR_FORMAT, "%s: adapter architecture %s%s%s does not match the model's '%s'", path,
                     r ? "'" : "(missing)", r ? s : "", r ? "'" : "", m->hp.arch);
        goto fail;
    }
    r = gguf_find_str(f, "adapter.type", &s, err);
    if (r < 0) goto fail;
    if (r == 0 || strcmp(s, "lora")) {
        ia_error_set(err, IA_ERR_UNSUPPORTED, "%s: adapter.type is %s%s%s, only 'lora' is supported", path,
                     r ? "'" : "missing", r ? s : "", r ? "'" : "");
        goto fail;
    }
    double alpha = 0;
    if (gguf_find_f64(f, "adapter.lora.alpha", &alpha, err) < 0) goto fail;
    a->alpha = (float)alpha;
    if (gguf_kv_find(f, "adapter.alora.invocation_tokens") >= 0) {
        ia_error_set(err, IA_ERR_UNSUPPORTED, "%s: activated LoRA (adapter.alora.invocation_tokens) is not supported", path);
        goto fail;
    }

    /* pass 1: pair up lora_a / lora_b and check names and shapes; pass 2: convert */
    int64_t nt = gguf_tensor_count(f);
    const gguf_tensor_info **ta = ia_calloc((size_t)m->hp.n_layer * IA_LORA_N * 2, sizeof *ta);
    if (!ta) { ia_error_set(err, IA_ERR_NOMEM, "%s: out of memory", path); goto fail; }
    for (int64_t i = 0; i < nt; i++) {
        const gguf_tensor_info *ti = gguf_tensor_get(f, i);
        bool is_a = ends_with(ti->name, ".lora_a"), is_b = ends_with(ti->name, ".lora_b");
        if (!is_a && !is_b) {
            if (ends_with(ti->name, "_norm.weight")) continue; /* llama.cpp accepts and ignores these */
            ia_error_set(err, IA_ERR_FORMAT, "%s: tensor '%s' has an unexpected suffix (expected .lora_a or .lora_b)",
                         path, ti->name);
            ia_free(ta);
            goto fail;
        }
        int l, j;
        if (!parse_base_name(ti->name, strlen(ti->name) - 7, m->hp.n_layer, &l, &j)) {
            ia_error_set(err, IA_ERR_UNSUPPORTED, "%s: tensor '%s' does not adapt a supported base matrix "
                         "(blk.N.{attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down}.weight, N < %d)",
                         path, ti->name, m->hp.n_layer);
            ia_free(ta);
            goto fail;
        }
        const gguf_tensor_info **slot = &ta[((size_t)l * IA_LORA_N + j) * 2 + (is_b ? 1 : 0)];
        if (*slot) {
            ia_error_set(err, IA_ERR_FORMAT, "%s: tensor '%s' appears twice", path, ti->name);
            ia_free(ta);
            goto fail;
        }
        *slot = ti;
    }
    size_t total = 0;
    for (int l = 0; l < m->hp.n_layer; l++)
        for (int j = 0; j < IA_LORA_N; j++) {
            const gguf_tensor_info *A = ta[((size_t)l * IA_LORA_N + j) * 2], *B = ta[((size_t)l * IA_LORA_N + j) * 2 + 1];
            if (!A && !B) continue;
            const ia_weight *w = base_weight(m, l, j);
            if (!A || !B) {
                ia_error_set(err, IA_ERR_FORMAT, "%s: blk.%d.%s.weight has lora_%s but no lora_%s", path, l,
                             ia_lora_target_gguf[j], A ? "a" : "b", A ? "b" : "a");
                ia_free(ta);
                goto fail;
            }
            if (A->n_dims > 2 || B->n_dims > 2 || A->ne[0] != w->n_in || B->ne[1] != w->n_out || A->ne[1] != B->ne[0] ||
                A->ne[1] < 1) {
                ia_error_set(err, IA_ERR_FORMAT, "%s: blk.%d.%s.weight: lora_a [%" PRId64 ", %" PRId64 "] and lora_b [%"
                             PRId64 ", %" PRId64 "] do not fit the base [%d, %d] (expected lora_a [in, r], lora_b [r, out]; "
                             "is lora_a transposed?)", path, l, ia_lora_target_gguf[j], A->ne[0], A->ne[1], B->ne[0],
                             B->ne[1], w->n_in, w->n_out);
                ia_free(ta);
                goto fail;
            }
            total += (size_t)(A->ne[0] * A->ne[1] + B->ne[0] * B->ne[1]);
        }
    float *mem = total ? ia_malloc(total * sizeof(float)) : NULL;
    if (total && !mem) { ia_error_set(err, IA_ERR_NOMEM, "%s: out of memory", path); ia_free(ta); goto fail; }
    a->mem = mem;
    float *cur = mem;
    for (int l = 0; l < m->hp.n_layer; l++)
        for (int j = 0; j < IA_LORA_N; j++) {
            const gguf_tensor_info *A = ta[((size_t)l * IA_LORA_N + j) * 2], *B = ta[((size_t)l * IA_LORA_N + j) * 2 + 1];
            if (!A) continue;
            ia_lora_mat *lm = &a->mats[(size_t)l * IA_LORA_N + j];
            lm->r = (int)A->ne[1];
            lm->n_in = (int)A->ne[0];
            lm->n_out = (int)B->ne[1];
            lm->A = cur;
            cur += A->ne[0] * A->ne[1];
            lm->B = cur;
            cur += B->ne[0] * B->ne[1];
            lm->scale = a->alpha != 0 ? user_scale * a->alpha / (float)lm->r : user_scale;
            if (tensor_to_f32(A, lm->A, path, err) != IA_OK || tensor_to_f32(B, lm->B, path, err) != IA_OK) {
                ia_free(ta);
                goto fail;
            }
            a->n_adapted++;
            if (!a->rank) a->rank = lm->r;
            a->targets |= 1u << j;
        }
    ia_free(ta);
    if (!a->n_adapted) {
        ia_error_set(err, IA_ERR_FORMAT, "%s: the adapter has no lora_a/lora_b tensors", path);
        goto fail;
    }
    gguf_file_free(f);
    return a;
fail:
    gguf_file_free(f);
    ia_lora_adapter_free(a);
    return NULL;
}

void ia_lora_adapter_free(ia_lora_adapter *a) {
    if (!a) return;
    ia_free(a->mem);
    ia_free(a->mats);
    ia_free(a->path);
    ia_free(a);
}

/* ---- the run-time term ------------------------------------------------------------------------ */

/* Y[t] += s·B·(A·X[t]) for tokens [t0, t1): each token alone, so splitting them changes no bits. */
static void lora_rows(const ia_lora_mat *lm, float *Y, const float *X, int t0, int t1) {
    const int r = lm->r, in = lm->n_in, out = lm->n_out;
    const float s = lm->scale;
    for (int t = t0; t < t1; t++) {
        float u[64];
        const float *x = X + (size_t)t * in;
        float *y = Y + (size_t)t * out;
        /* ranks in chunks of 64: u = A·x for the chunk, then y += s·B[:, chunk]·u */
        for (int k0 = 0; k0 < r; k0 += 64) {
            int nk = r - k0 < 64 ? r - k0 : 64;
            for (int k = 0; k < nk; k++) {
                const float *ar = lm->A + (size_t)(k0 + k) * in;
                float acc = 0;
                for (int i = 0; i < in; i++) acc += ar[i] * x[i];
                u[k] = acc;
            }
            for (int o = 0; o < out; o++) {
                const float *br = lm->B + (size_t)o * r + k0;
                float acc = 0;
                for (int k = 0; k < nk; k++) acc += br[k] * u[k];
                y[o] += s * acc;
            }
        }
    }
}

typedef struct lora_job {
    const ia_lora_mat *lm;
    float *Y;
    const float *X;
    int n_tok;
} lora_job;

static void lora_worker(void *ctx, int tid, int nth) {
    const lora_job *j = ctx;
    lora_rows(j->lm, j->Y, j->X, (int)((int64_t)j->n_tok * tid / nth), (int)((int64_t)j->n_tok * (tid + 1) / nth));
}

void ia_lora_mat_apply(const ia_lora_mat *lm, float *Y, const float *X, int n_tok) {
    if (!lm || !lm->A) return;
    /* on the tensor pool (the threads of the rest of the forward pass) when the batch pays for it */
    if (n_tok > 1 && (double)n_tok * (lm->n_in + lm->n_out) * lm->r > 2e5 && ia_pool_threads() > 1) {
        lora_job j = {lm, Y, X, n_tok};
        ia_pool_run(ia_pool_threads() < n_tok ? ia_pool_threads() : n_tok, lora_worker, &j);
    } else {
        lora_rows(lm, Y, X, 0, n_tok);
    }
}

void ia_lora_apply(const ia_model *m, int layer, ia_lora_target which, float *Y, const float *X, int n_tok) {
    const struct ia_lora_set *ls = m->lora;
    if (!ls) return;
    for (int i = 0; i < ls->n; i++) {
        const ia_lora_adapter *a = ls->a[i];
        if (layer < a->n_layer) ia_lora_mat_apply(&a->mats[(size_t)layer * IA_LORA_N + which], Y, X, n_tok);
    }
}

/* ---- the model's list ------------------------------------------------------------------------- */

int ia_model_lora_add(ia_model *m, const char *adapter_path, float scale, ia_error *err) {
    if (!m || !adapter_path) return ia_error_set(err, IA_ERR_ARG, "ia_model_lora_add: NULL argument");
    if (!isfinite(scale)) return ia_error_set(err, IA_ERR_ARG, "%s: LoRA scale must be finite", adapter_path);
    ia_lora_adapter *a = ia_lora_adapter_load(adapter_path, m, scale, err);
    if (!a) return err ? err->code : IA_ERR_FORMAT;
    struct ia_lora_set *ls = m->lora;
    if (!ls) {
        ls = ia_calloc(1, sizeof *ls);
        if (!ls) { ia_lora_adapter_free(a); return ia_error_set(err, IA_ERR_NOMEM, "out of memory"); }
        m->lora = ls;
    }
    ia_lora_adapter **na = ia_realloc(ls->a, (size_t)(ls->n + 1) * sizeof *na);
    if (!na) { ia_lora_adapter_free(a); return ia_error_set(err, IA_ERR_NOMEM, "out of memory"); }
    ls->a = na;
    ls->a[ls->n++] = a;
    return IA_OK;
}

void ia_model_lora_clear(ia_model *m) {
    if (!m || !m->lora) return;
    for (int i = 0; i < m->lora->n; i++) ia_lora_adapter_free(m->lora->a[i]);
    ia_free(m->lora->a);
    ia_free(m->lora);
    m->lora = NULL;
}
