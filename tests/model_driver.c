/* model_driver.c — a small driver for tests/t_model_ref.sh: writes random models with mkmodel and
 * dumps the C forward pass's logits for a token sequence, to compare with tests/ref/forward.py.
 *
 *   model_driver mk ARCH VOCAB TYPE E L H HKV F SEED OUT     write a random model (tied for qwen2)
 *   model_driver run MODEL OUT.f32 CHUNK ID,ID,...           decode the ids in slot 0, CHUNK tokens per
 *                                                            batch, logits for every position ->
 *                                                            [n][V] float32 little-endian
 *   model_driver rope IN OUT FACTOR                          copy IN with linear RoPE scaling FACTOR
 *                                                            and a rope_freqs.weight (Llama 3 style)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"

static int usage(void) {
    fprintf(stderr, "usage: model_driver mk ARCH VOCAB TYPE E L H HKV F SEED OUT\n"
                    "       model_driver run MODEL OUT.f32 CHUNK ID,ID,...\n"
                    "       model_driver rope IN OUT FACTOR\n");
    return 2;
}

static int cmd_mk(char **a) {
    ia_mkmodel_opts o = {0};
    ia_error err = {0};
    o.arch = a[0];
    o.vocab_path = a[1];
    int type = ia_type_from_name(a[2]);
    if (type < 0) { fprintf(stderr, "unknown type %s\n", a[2]); return 1; }
    o.type = (uint32_t)type;
    o.n_embd = atoi(a[3]);
    o.n_layer = atoi(a[4]);
    o.n_head = atoi(a[5]);
    o.n_head_kv = atoi(a[6]);
    o.n_ff = atoi(a[7]);
    o.seed = strtoull(a[8], NULL, 10);
    o.n_ctx = 256;
    o.tied = strcmp(o.arch, "qwen2") == 0;
    if (ia_mkmodel_write(&o, a[9], &err) != IA_OK) { fprintf(stderr, "mk: %s\n", err.msg); return 1; }
    return 0;
}

static int cmd_run(char **a) {
    ia_error err = {0};
    ia_model *m = ia_model_load(a[0], &err);
    if (!m) { fprintf(stderr, "load: %s\n", err.msg); return 1; }
    int chunk = atoi(a[2]);
    int32_t ids[1024];
    int n = 0;
    for (char *s = a[3]; *s && n < 1024;) {
        ids[n++] = (int32_t)strtol(s, &s, 10);
        if (*s == ',') s++;
    }
    if (chunk < 1 || n < 1) return usage();
    ia_context *c = ia_context_init(m, 1, n, chunk, &err);
    if (!c) { fprintf(stderr, "context: %s\n", err.msg); return 1; }
    FILE *f = fopen(a[1], "wb");
    if (!f) { perror(a[1]); return 1; }
    int V = ia_model_n_vocab(m), rc = 0;
    int32_t pos[1024], slot[1024] = {0};
    bool want[1024];
    for (int i = 0; i < n; i++) { pos[i] = i; want[i] = true; }
    for (int i = 0; i < n && !rc; i += chunk) {
        int k = n - i < chunk ? n - i : chunk;
        ia_batch b = {.n_tokens = k, .token = ids + i, .pos = pos + i, .slot = slot + i, .logits = want + i};
        if (ia_context_decode(c, &b, &err) != IA_OK) { fprintf(stderr, "decode: %s\n", err.msg); rc = 1; break; }
        if (fwrite(ia_context_logits(c), sizeof(float), (size_t)k * V, f) != (size_t)k * V) rc = 1;
    }
    if (fclose(f) != 0) rc = 1;
    ia_context_free(c);
    ia_model_free(m);
    return rc;
}

/* Adds rope.scaling.{type,factor} and a rope_freqs.weight of divisors 1, 1.25, 1.5, ... */
static int cmd_rope(char **a) {
    ia_error err = {0};
    gguf_file *f = gguf_file_open(a[0], &err);
    if (!f) { fprintf(stderr, "%s\n", err.msg); return 1; }
    gguf_writer *w = gguf_writer_init();
    for (int64_t i = 0; i < gguf_kv_count(f); i++) gguf_writer_copy_kv(w, f, i);
    const char *arch = NULL;
    gguf_find_str(f, "general.architecture", &arch, &err);
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
    gguf_writer_set_str(w, key, "linear");
    snprintf(key, sizeof key, "%s.rope.scaling.factor", arch);
    gguf_writer_set_f32(w, key, (float)atof(a[2]));
    snprintf(key, sizeof key, "%s.rope.dimension_count", arch);
    uint64_t n_rot = 0;
    gguf_find_u64(f, key, &n_rot, &err);
    float freqs[512];
    for (uint64_t i = 0; i < n_rot / 2 && i < 512; i++) freqs[i] = 1.0f + 0.25f * (float)i;
    int64_t ne[1] = {(int64_t)(n_rot / 2)};
    int rc = gguf_writer_add_tensor(w, "rope_freqs.weight", IA_TYPE_F32, 1, ne, freqs, &err);
    for (int64_t i = 0; i < gguf_tensor_count(f) && !rc; i++) {
        const gguf_tensor_info *t = gguf_tensor_get(f, i);
        rc = gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, &err);
    }
    if (!rc) rc = gguf_writer_write_file(w, a[1], &err);
    if (rc) fprintf(stderr, "rope: %s\n", err.msg);
    gguf_writer_free(w);
    gguf_file_free(f);
    return rc ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc == 12 && strcmp(argv[1], "mk") == 0) return cmd_mk(argv + 2);
    if (argc == 6 && strcmp(argv[1], "run") == 0) return cmd_run(argv + 2);
    if (argc == 5 && strcmp(argv[1], "rope") == 0) return cmd_rope(argv + 2);
    return usage();
}
