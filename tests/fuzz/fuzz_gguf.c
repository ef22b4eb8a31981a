/* fuzz_gguf.c — libFuzzer target for the GGUF reader: validates arbitrary bytes and, when they are
 * accepted, walks every key/value and tensor through the getters so that any pointer the reader
 * hands out is touched. */
#include "gguf/gguf.h"

#include <stdlib.h>

/* Reads every byte of a region, so AddressSanitizer checks it is inside the input. */
static volatile uint8_t sink;
static void touch(const void *p, size_t n) {
    const uint8_t *b = p;
    uint8_t acc = 0;
    for (size_t i = 0; i < n; i++) acc ^= b[i];
    sink = acc;
}

static void walk_kv(const gguf_file *f, int64_t i) {
    ia_error err;
    const char *key = gguf_kv_key(f, i);
    touch(key, strlen(key) + 1);
    if (gguf_kv_find(f, key) != i) abort(); /* keys are unique, so lookup must find this one */
    uint64_t u;
    int64_t s;
    double d;
    bool b;
    const char *str;
    gguf_kv_get_u64(f, i, &u, &err);
    gguf_kv_get_i64(f, i, &s, &err);
    gguf_kv_get_f64(f, i, &d, &err);
    gguf_kv_get_bool(f, i, &b, &err);
    if (gguf_kv_get_str(f, i, &str, &err) == IA_OK) touch(str, strlen(str) + 1);
    gguf_find_u64(f, key, &u, &err);
    gguf_find_str(f, key, &str, &err);
    if (gguf_kv_type(f, i) != GGUF_TYPE_ARRAY) {
        if (gguf_kv_arr_n(f, i) != 1) abort();
        return;
    }
    uint64_t n = gguf_kv_arr_n(f, i);
    gguf_type et = gguf_kv_arr_type(f, i);
    const void *raw = gguf_kv_raw(f, i);
    static const size_t sizes[GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (raw) touch(raw, (size_t)n * sizes[et]);
    for (uint64_t j = 0; j < n; j++) {
        if (et == GGUF_TYPE_STRING) {
            size_t len = 0;
            const char *e = gguf_kv_get_arr_str(f, i, j, &len);
            if (!e) abort();
            touch(e, len);
        } else {
            gguf_kv_get_arr_i64(f, i, j, &s, &err);
            gguf_kv_get_arr_f64(f, i, j, &d, &err);
        }
    }
    gguf_kv_get_arr_i64(f, i, n, &s, &err); /* one past the end must be refused, not read */
    if (gguf_kv_get_arr_str(f, i, n, NULL)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ia_error err;
    gguf_file *f = gguf_file_open_buffer(data, size, "fuzz", &err);
    if (!f) {
        if (err.code == IA_OK || strncmp(err.msg, "fuzz: ", 6) != 0) abort(); /* failures always explain themselves */
        return 0;
    }
    for (int64_t i = 0; i < gguf_kv_count(f); i++) walk_kv(f, i);
    size_t align = gguf_file_alignment(f);
    for (int64_t i = 0; i < gguf_tensor_count(f); i++) {
        const gguf_tensor_info *t = gguf_tensor_get(f, i);
        if (gguf_tensor_find(f, t->name) != t) abort();
        if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS) abort();
        if ((size_t)((const uint8_t *)t->data - data) % align != 0) abort();
        touch(t->data, t->nbytes);
    }
    gguf_file_free(f);
    return 0;
}
