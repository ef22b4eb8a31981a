/* export.c — what training writes: the LoRA adapter GGUF llama.cpp's --lora loads, and (full
 * fine-tuning) the whole model GGUF with the base's metadata and tensor types. */
#include "train/train_internal.h"

int tr_write_adapter(const tr_model *tm, const char *path, ia_error *err) {
    IA_ASSERT(tm->o.method == IA_TRAIN_LORA);
    gguf_writer *w = gguf_writer_init();
    if (!w) return ia_error_set(err, IA_ERR_NOMEM, "out of memory");
    /* exactly what llama_adapter_lora_init reads, nothing else (REFERENCE §2.1: a stray key or
     * tensor has broken loading before) */
    int rc = gguf_writer_set_str(w, "general.architecture", tm->hp.arch);
    if (!rc) rc = gguf_writer_set_str(w, "general.type", "adapter");
    if (!rc) rc = gguf_writer_set_str(w, "adapter.type", "lora");
    if (!rc) rc = gguf_writer_set_f32(w, "adapter.lora.alpha", tm->o.alpha);
    if (rc) {
        gguf_writer_free(w);
        return ia_error_set(err, rc, "%s: out of memory", path);
    }
    for (int i = 0; i < tm->P.n_tensors && rc == IA_OK; i++) {
        const tr_tensor *t = &tm->P.t[i];
        rc = gguf_writer_add_tensor(w, t->name, IA_TYPE_F32, 2, t->ne, tm->P.p + t->off, err);
    }
    if (rc == IA_OK) rc = gguf_writer_write_file(w, path, err);
    gguf_writer_free(w);
    return rc;
}

typedef struct full_fill {
    const tr_model *tm;
    const gguf_file *base;
} full_fill;

/* Writes trained tensor `name` in the type the base file has it. */
static int fill_full(void *ud, const char *name, void *dst, size_t nbytes, ia_error *err) {
    const full_fill *ff = ud;
    const gguf_tensor_info *ti = gguf_tensor_find(ff->base, name);
    int k = tr_params_find(&ff->tm->P, name);
    if (!ti || k < 0) return ia_error_set(err, IA_ERR_INTERNAL, "tensor '%s' is not trained", name);
    const float *src = ff->tm->P.p + ff->tm->P.t[k].off;
    size_t n = (size_t)(ti->ne[0] * ti->ne[1] * ti->ne[2] * ti->ne[3]);
    if (ti->type == IA_TYPE_F32) {
        IA_ASSERT(nbytes == n * 4);
        memcpy(dst, src, nbytes);
        return IA_OK;
    }
    uint16_t *h = dst;
    IA_ASSERT(nbytes == n * 2);
    for (size_t i = 0; i < n; i++) h[i] = ti->type == IA_TYPE_F16 ? ia_fp32_to_fp16(src[i]) : ia_fp32_to_bf16(src[i]);
    return IA_OK;
}

int tr_write_full_model(const tr_model *tm, const char *path, ia_error *err) {
    const gguf_file *base = tm->base->gguf;
    gguf_writer *w = gguf_writer_init();
    if (!w) return ia_error_set(err, IA_ERR_NOMEM, "out of memory");
    int rc = IA_OK;
    /* every key verbatim: tokenizer, pre-tokenizer, chat template, hyper-parameters */
    for (int64_t i = 0; i < gguf_kv_count(base) && rc == IA_OK; i++) rc = gguf_writer_copy_kv(w, base, i);
    if (rc) ia_error_set(err, rc, "%s: copying metadata failed", path);
    full_fill ff = {tm, base};
    for (int64_t i = 0; i < gguf_tensor_count(base) && rc == IA_OK; i++) {
        const gguf_tensor_info *ti = gguf_tensor_get(base, i);
        if (tr_params_find(&tm->P, ti->name) < 0) {
            /* not trained (e.g. rope_freqs): copied as it is */
            rc = gguf_writer_add_tensor(w, ti->name, ti->type, ti->n_dims, ti->ne, ti->data, err);
            continue;
        }
        rc = gguf_writer_add_tensor_fill(w, ti->name, ti->type, ti->n_dims, ti->ne, fill_full, &ff, err);
    }
    if (rc == IA_OK) rc = gguf_writer_write_file(w, path, err);
    gguf_writer_free(w);
    return rc;
}
