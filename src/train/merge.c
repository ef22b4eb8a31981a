/* merge.c — base + LoRA adapters -> one model GGUF (f32, f16, bf16 or q8_0), the base's metadata
 * carried over unchanged, written one tensor at a time. */
#include "train/train.h"
#include "model/lora.h"

#include <stdlib.h>

typedef struct merge_ctx {
    const ia_model *m;
    ia_lora_adapter **ad;
    int n_ad;
    float *row;                    /* [max n_in] */
    float *delta;                  /* [max n_in] */
} merge_ctx;

/* (layer, target) of a base matrix name, or false. */
static bool find_target(const ia_model *m, const char *name, int *l, int *j) {
    char buf[GGUF_MAX_NAME + 16];
    if (strncmp(name, "blk.", 4)) return false;
    int layer = atoi(name + 4);
    if (layer < 0 || layer >= m->hp.n_layer) return false;
    for (int k = 0; k < IA_LORA_N; k++) {
        snprintf(buf, sizeof buf, "blk.%d.%s.weight", layer, ia_lora_target_gguf[k]);
        if (!strcmp(buf, name)) {
            *l = layer;
            *j = k;
            return true;
        }
    }
    return false;
}

static uint32_t out_type_for(uint32_t want, int64_t n_in) {
    const ia_type_traits *tt = ia_type_traits_get(want);
    return n_in % tt->blck_size == 0 ? want : IA_TYPE_F16;
}

/* The output type per tensor is fixed before writing; the fill callback gets it through this table. */
typedef struct merge_tensor {
    merge_ctx *mc;
    const gguf_tensor_info *ti;
    uint32_t type;
} merge_tensor;

static int fill_tensor(void *ud, const char *name, void *dst, size_t nbytes, ia_error *err) {
    const merge_tensor *mt = ud;
    const merge_ctx *mc = mt->mc;
    const gguf_tensor_info *ti = mt->ti;
    (void)name;
    int l = -1, j = -1;
    bool adapted = find_target(mc->m, ti->name, &l, &j);
    const int64_t n_in = ti->ne[0], n_out = ti->ne[1];
    const size_t src_rs = ia_type_row_size(ti->type, n_in), dst_rs = ia_type_row_size(mt->type, n_in);
    if (dst_rs * (size_t)n_out != nbytes)
        return ia_error_set(err, IA_ERR_INTERNAL, "tensor '%s': size mismatch while merging", ti->name);
    for (int64_t o = 0; o < n_out; o++) {
        float *row = mc->row;
        ia_dequantize_row(ti->type, (const uint8_t *)ti->data + (size_t)o * src_rs, row, n_in);
        if (adapted)
            for (int a = 0; a < mc->n_ad; a++) {
                const ia_lora_mat *lm = &mc->ad[a]->mats[(size_t)l * IA_LORA_N + j];
                if (!lm->A) continue;
                /* W[o][:] += s * sum_k B[o][k] A[k][:], accumulated in f32 per adapter */
                for (int64_t i = 0; i < n_in; i++) mc->delta[i] = 0;
                for (int k = 0; k < lm->r; k++) {
                    float bk = lm->B[(size_t)o * lm->r + k];
                    const float *ak = lm->A + (size_t)k * n_in;
                    for (int64_t i = 0; i < n_in; i++) mc->delta[i] += bk * ak[i];
                }
                for (int64_t i = 0; i < n_in; i++) row[i] += lm->scale * mc->delta[i];
            }
        uint8_t *d = (uint8_t *)dst + (size_t)o * dst_rs;
        if (mt->type == IA_TYPE_F32) memcpy(d, row, (size_t)n_in * sizeof(float));
        else if (mt->type == IA_TYPE_F16 || mt->type == IA_TYPE_BF16) {
            for (int64_t i = 0; i < n_in; i++) {
                uint16_t h = mt->type == IA_TYPE_F16 ? ia_fp32_to_fp16(row[i]) : ia_fp32_to_bf16(row[i]);
                memcpy(d + 2 * i, &h, 2);
            }
        } else ia_quantize_row(mt->type, row, d, n_in);
    }
    return IA_OK;
}

int ia_merge_lora(const ia_merge_opts *o, ia_error *err) {
    if (!o || !o->base_path || !o->out_path || (o->n_adapters > 0 && !o->adapters))
        return ia_error_set(err, IA_ERR_ARG, "ia_merge_lora: base_path, out_path and the adapters are required");
    if (o->type != IA_TYPE_F32 && o->type != IA_TYPE_F16 && o->type != IA_TYPE_BF16 && o->type != IA_TYPE_Q8_0)
        return ia_error_set(err, IA_ERR_ARG, "merge: output type %s is not one of f32, f16, bf16, q8_0",
                            ia_type_name(o->type));
    int rc = IA_OK;
    merge_ctx mc = {0};
    merge_tensor *mts = NULL;
    gguf_writer *w = NULL;
    ia_model *m = ia_model_load(o->base_path, err);
    if (!m) return err ? err->code : IA_ERR_IO;
    mc.m = m;
    mc.ad = ia_calloc((size_t)(o->n_adapters > 0 ? o->n_adapters : 1), sizeof *mc.ad);
    if (!mc.ad) { rc = ia_error_set(err, IA_ERR_NOMEM, "out of memory"); goto out; }
    for (int i = 0; i < o->n_adapters; i++) {
        mc.ad[i] = ia_lora_adapter_load(o->adapters[i], m, o->scales ? o->scales[i] : 1.0f, err);
        if (!mc.ad[i]) { rc = err ? err->code : IA_ERR_FORMAT; goto out; }
        mc.n_ad = i + 1;
    }
    const gguf_file *base = m->gguf;
    int64_t nt = gguf_tensor_count(base), max_in = 1;
    for (int64_t i = 0; i < nt; i++)
        if (gguf_tensor_get(base, i)->ne[0] > max_in) max_in = gguf_tensor_get(base, i)->ne[0];
    mc.row = ia_malloc((size_t)max_in * sizeof(float));
    mc.delta = ia_malloc((size_t)max_in * sizeof(float));
    mts = ia_calloc((size_t)nt, sizeof *mts);
    w = gguf_writer_init();
    if (!mc.row || !mc.delta || !mts || !w) { rc = ia_error_set(err, IA_ERR_NOMEM, "out of memory"); goto out; }
    for (int64_t i = 0; i < gguf_kv_count(base) && rc == IA_OK; i++) rc = gguf_writer_copy_kv(w, base, i);
    /* llama_ftype: ALL_F32 0, MOSTLY_F16 1, MOSTLY_Q8_0 7, MOSTLY_BF16 32 */
    uint32_t ftype = o->type == IA_TYPE_F32 ? 0 : o->type == IA_TYPE_F16 ? 1 : o->type == IA_TYPE_Q8_0 ? 7 : 32;
    if (rc == IA_OK) rc = gguf_writer_set_u32(w, "general.file_type", ftype);
    if (rc != IA_OK) { ia_error_set(err, rc, "%s: metadata copy failed", o->out_path); goto out; }
    for (int64_t i = 0; i < nt && rc == IA_OK; i++) {
        const gguf_tensor_info *ti = gguf_tensor_get(base, i);
        bool matrix = ti->n_dims == 2 && ti->ne[1] > 1;
        if (!matrix) { /* norms, biases, rope_freqs: unchanged */
            rc = gguf_writer_add_tensor(w, ti->name, ti->type, ti->n_dims, ti->ne, ti->data, err);
            continue;
        }
        mts[i] = (merge_tensor){&mc, ti, out_type_for(o->type, ti->ne[0])};
        rc = gguf_writer_add_tensor_fill(w, ti->name, mts[i].type, ti->n_dims, ti->ne, fill_tensor, &mts[i], err);
    }
    if (rc == IA_OK) rc = gguf_writer_write_file(w, o->out_path, err);
out:
    gguf_writer_free(w);
    ia_free(mts);
    ia_free(mc.row);
    ia_free(mc.delta);
    for (int i = 0; i < mc.n_ad; i++) ia_lora_adapter_free(mc.ad[i]);
    ia_free(mc.ad);
    ia_model_free(m);
    return rc;
}
