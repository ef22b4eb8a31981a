/* peft.c — export of an adapter GGUF as a Hugging Face PEFT directory: adapter_config.json and
 * adapter_model.safetensors (f32, HF names, q/k rows un-permuted for llama). */
#include "train/train.h"
#include "model/lora.h"

#include <errno.h>
#include <jansson.h>
#include <sys/stat.h>

static const char *const hf_module[IA_LORA_N] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                                "mlp.down_proj"};

/* GGUF llama q/k rows are in Meta's interleaved order (llama.cpp's converter permuted HF's rotate-half
 * rows): within each head, GGUF row 2j is HF row j and GGUF row 2j+1 is HF row j + D/2. This writes
 * the HF order of B's rows (each row of r floats). */
static void unpermute_rows(float *dst, const float *src, int n_heads, int D, int r) {
    for (int h = 0; h < n_heads; h++)
        for (int j = 0; j < D / 2; j++) {
            memcpy(dst + ((size_t)h * D + j) * r, src + ((size_t)h * D + 2 * j) * r, (size_t)r * sizeof(float));
            memcpy(dst + ((size_t)h * D + j + D / 2) * r, src + ((size_t)h * D + 2 * j + 1) * r, (size_t)r * sizeof(float));
        }
}

typedef struct st_entry {
    char name[160];
    int64_t shape[2];
    const float *data;             /* [shape0][shape1] row-major */
    size_t off;
} st_entry;

static int write_safetensors(const char *path, st_entry *e, int n, ia_error *err) {
    json_t *hdr = json_object();
    json_object_set_new(hdr, "__metadata__", json_pack("{s:s}", "format", "pt"));
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        size_t bytes = (size_t)(e[i].shape[0] * e[i].shape[1]) * sizeof(float);
        e[i].off = off;
        json_object_set_new(hdr, e[i].name,
                            json_pack("{s:s,s:[I,I],s:[I,I]}", "dtype", "F32", "shape", (json_int_t)e[i].shape[0],
                                      (json_int_t)e[i].shape[1], "data_offsets", (json_int_t)off, (json_int_t)(off + bytes)));
        off += bytes;
    }
    char *js = json_dumps(hdr, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(hdr);
    if (!js) return ia_error_set(err, IA_ERR_NOMEM, "out of memory");
    size_t hl = strlen(js), padded = (hl + 7) & ~(size_t)7; /* the buffer starts 8-byte aligned */
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) { free(js); return ia_error_set(err, IA_ERR_IO, "%s: cannot write: %s", tmp, strerror(errno)); }
    uint64_t n8 = padded;
    bool ok = fwrite(&n8, 8, 1, f) == 1 && fwrite(js, 1, hl, f) == hl;
    for (size_t i = hl; ok && i < padded; i++) ok = fputc(' ', f) != EOF;
    free(js);
    for (int i = 0; ok && i < n; i++) {
        size_t cnt = (size_t)(e[i].shape[0] * e[i].shape[1]);
        ok = fwrite(e[i].data, sizeof(float), cnt, f) == cnt;
    }
    if (fclose(f) != 0) ok = false;
    if (!ok || rename(tmp, path) != 0) {
        remove(tmp);
        return ia_error_set(err, IA_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    }
    return IA_OK;
}

int ia_export_peft(const char *adapter_path, const char *base_path, const char *out_dir, const char *base_name,
                   ia_error *err) {
    if (!adapter_path || !base_path || !out_dir) return ia_error_set(err, IA_ERR_ARG, "ia_export_peft: NULL argument");
    ia_model *m = ia_model_load(base_path, err);
    if (!m) return err ? err->code : IA_ERR_IO;
    int rc = IA_OK;
    st_entry *ents = NULL;
    float *perm = NULL;
    json_t *cfg = NULL;
    ia_lora_adapter *a = ia_lora_adapter_load(adapter_path, m, 1.0f, err);
    if (!a) { rc = err ? err->code : IA_ERR_FORMAT; goto out; }
    if (mkdir(out_dir, 0755) != 0 && errno != EEXIST) {
        rc = ia_error_set(err, IA_ERR_IO, "%s: cannot create the directory: %s", out_dir, strerror(errno));
        goto out;
    }
    const ia_hparams *hp = &m->hp;
    bool llama = !strcmp(hp->arch, "llama");
    size_t perm_floats = 0;
    for (int i = 0; i < hp->n_layer * IA_LORA_N; i++) {
        const ia_lora_mat *lm = &a->mats[i];
        int j = i % IA_LORA_N;
        if (lm->A && llama && (j == IA_LORA_Q || j == IA_LORA_K)) perm_floats += (size_t)lm->n_out * lm->r;
    }
    ents = ia_calloc((size_t)a->n_adapted * 2, sizeof *ents);
    perm = ia_malloc((perm_floats ? perm_floats : 1) * sizeof(float));
    cfg = json_object();
    json_t *targets = json_array(), *rank_pattern = json_object(), *alpha_pattern = json_object();
    if (!ents || !perm || !cfg || !targets || !rank_pattern || !alpha_pattern) {
        json_decref(targets); json_decref(rank_pattern); json_decref(alpha_pattern);
        rc = ia_error_set(err, IA_ERR_NOMEM, "out of memory");
        goto out;
    }
    int n = 0;
    float *pcur = perm;
    for (int l = 0; l < hp->n_layer; l++)
        for (int j = 0; j < IA_LORA_N; j++) {
            const ia_lora_mat *lm = &a->mats[(size_t)l * IA_LORA_N + j];
            if (!lm->A) continue;
            const char *mod = hf_module[j];
            st_entry *ea = &ents[n++], *eb = &ents[n++];
            snprintf(ea->name, sizeof ea->name, "base_model.model.model.layers.%d.%s.lora_A.weight", l, mod);
            ea->shape[0] = lm->r;
            ea->shape[1] = lm->n_in;
            ea->data = lm->A;
            snprintf(eb->name, sizeof eb->name, "base_model.model.model.layers.%d.%s.lora_B.weight", l, mod);
            eb->shape[0] = lm->n_out;
            eb->shape[1] = lm->r;
            eb->data = lm->B;
            if (llama && (j == IA_LORA_Q || j == IA_LORA_K)) {
                int nh = j == IA_LORA_Q ? hp->n_head : hp->n_head_kv;
                unpermute_rows(pcur, lm->B, nh, hp->head_dim, lm->r);
                eb->data = pcur;
                pcur += (size_t)lm->n_out * lm->r;
            }
            const char *shortname = strchr(mod, '.') + 1;
            bool seen = false;
            for (size_t k = 0; k < json_array_size(targets); k++)
                if (!strcmp(json_string_value(json_array_get(targets, k)), shortname)) seen = true;
            if (!seen) json_array_append_new(targets, json_string(shortname));
            if (lm->r != a->rank) { /* ranks that differ: PEFT's per-module patterns keep alpha/r */
                char key[160];
                snprintf(key, sizeof key, "model.layers.%d.%s", l, mod);
                json_object_set_new(rank_pattern, key, json_integer(lm->r));
            }
        }
    {
        char path[4200];
        snprintf(path, sizeof path, "%s/adapter_model.safetensors", out_dir);
        if ((rc = write_safetensors(path, ents, n, err)) != IA_OK) {
            json_decref(targets); json_decref(rank_pattern); json_decref(alpha_pattern);
            goto out;
        }
    }
    const char *name = base_name;
    if (!name && gguf_find_str(m->gguf, "general.name", &name, NULL) != 1) name = base_path;
    /* alpha 0 in GGUF means "no alpha": scale 1, i.e. alpha = r */
    double alpha = a->alpha != 0 ? a->alpha : a->rank;
    json_object_set_new(cfg, "peft_type", json_string("LORA"));
    json_object_set_new(cfg, "task_type", json_string("CAUSAL_LM"));
    json_object_set_new(cfg, "base_model_name_or_path", json_string(name));
    json_object_set_new(cfg, "r", json_integer(a->rank));
    json_object_set_new(cfg, "lora_alpha", alpha == (double)(long)alpha ? json_integer((long)alpha) : json_real(alpha));
    json_object_set_new(cfg, "lora_dropout", json_real(0.0));
    json_object_set_new(cfg, "target_modules", targets);
    json_object_set_new(cfg, "bias", json_string("none"));
    json_object_set_new(cfg, "fan_in_fan_out", json_false());
    json_object_set_new(cfg, "inference_mode", json_true());
    json_object_set_new(cfg, "use_rslora", json_false());
    json_object_set_new(cfg, "use_dora", json_false());
    json_object_set_new(cfg, "modules_to_save", json_null());
    json_object_set_new(cfg, "layers_to_transform", json_null());
    json_object_set_new(cfg, "rank_pattern", rank_pattern);
    json_object_set_new(cfg, "alpha_pattern", alpha_pattern);
    json_object_set_new(cfg, "init_lora_weights", json_true());
    json_object_set_new(cfg, "revision", json_null());
    {
        char path[4200];
        snprintf(path, sizeof path, "%s/adapter_config.json", out_dir);
        if (json_dump_file(cfg, path, JSON_INDENT(2) | JSON_SORT_KEYS) != 0)
            rc = ia_error_set(err, IA_ERR_IO, "%s: cannot write", path);
    }
out:
    json_decref(cfg);
    ia_free(ents);
    ia_free(perm);
    ia_lora_adapter_free(a);
    ia_model_free(m);
    return rc;
}
