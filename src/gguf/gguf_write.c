/* gguf_write.c — the GGUF v3 writer: unique keys with serialized values, tensors by pointer or
 * fill callback, written to "<path>.tmp" and renamed into place. */
#include "gguf/gguf_internal.h"

#include "tensor/tensor.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <unistd.h>

typedef struct wkv {
    char *key;
    gguf_type type;
    uint8_t *val;   /* the value serialized as in the file (after the type field) */
    size_t val_len;
} wkv;

typedef struct wtensor {
    char *name;
    uint32_t type;
    uint32_t n_dims;
    int64_t ne[GGUF_MAX_DIMS];
    size_t nbytes;
    const void *data;         /* or ... */
    gguf_tensor_fill_fn fill; /* ... produced at write time */
    void *ud;
} wtensor;

struct gguf_writer {
    wkv *kvs;
    size_t n_kv, cap_kv;
    wtensor *tensors;
    size_t n_tensors, cap_tensors;
};

gguf_writer *gguf_writer_init(void) { return ia_calloc(1, sizeof(gguf_writer)); }

void gguf_writer_free(gguf_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_kv; i++) {
        ia_free(w->kvs[i].key);
        ia_free(w->kvs[i].val);
    }
    for (size_t i = 0; i < w->n_tensors; i++) ia_free(w->tensors[i].name);
    ia_free(w->kvs);
    ia_free(w->tensors);
    ia_free(w);
}

/* ====================================== metadata ====================================== */

static int64_t writer_kv_find(const gguf_writer *w, const char *key) {
    for (size_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->kvs[i].key, key) == 0) return (int64_t)i;
    return -1;
}

/* Stores a serialized value under key, taking ownership of val (freed on failure too). A key that
 * is already set keeps its position and gets the new value. */
static int writer_kv_put(gguf_writer *w, const char *key, gguf_type type, uint8_t *val, size_t val_len) {
    if (!w || !key) {
        ia_free(val);
        return IA_ERR_ARG;
    }
    int64_t i = writer_kv_find(w, key);
    if (i >= 0) {
        ia_free(w->kvs[i].val);
        w->kvs[i].type = type;
        w->kvs[i].val = val;
        w->kvs[i].val_len = val_len;
        return IA_OK;
    }
    if (w->n_kv == w->cap_kv) {
        size_t cap = w->cap_kv ? w->cap_kv * 2 : 16;
        wkv *kvs = ia_realloc(w->kvs, cap * sizeof *kvs);
        if (!kvs) {
            ia_free(val);
            return IA_ERR_NOMEM;
        }
        w->kvs = kvs;
        w->cap_kv = cap;
    }
    char *k = ia_strdup(key);
    if (!k) {
        ia_free(val);
        return IA_ERR_NOMEM;
    }
    w->kvs[w->n_kv++] = (wkv){k, type, val, val_len};
    return IA_OK;
}

/* A fixed-size scalar: its little-endian bytes. */
static int writer_set_scalar(gguf_writer *w, const char *key, gguf_type type, uint64_t bits) {
    size_t n = gguf_type_size(type);
    uint8_t *v = ia_malloc(n);
    if (!v) return IA_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) v[i] = (uint8_t)(bits >> (8 * i));
    return writer_kv_put(w, key, type, v, n);
}

int gguf_writer_set_u8(gguf_writer *w, const char *key, uint8_t v) { return writer_set_scalar(w, key, GGUF_TYPE_UINT8, v); }
int gguf_writer_set_i8(gguf_writer *w, const char *key, int8_t v) { return writer_set_scalar(w, key, GGUF_TYPE_INT8, (uint8_t)v); }
int gguf_writer_set_u16(gguf_writer *w, const char *key, uint16_t v) { return writer_set_scalar(w, key, GGUF_TYPE_UINT16, v); }
int gguf_writer_set_i16(gguf_writer *w, const char *key, int16_t v) { return writer_set_scalar(w, key, GGUF_TYPE_INT16, (uint16_t)v); }
int gguf_writer_set_u32(gguf_writer *w, const char *key, uint32_t v) { return writer_set_scalar(w, key, GGUF_TYPE_UINT32, v); }
int gguf_writer_set_i32(gguf_writer *w, const char *key, int32_t v) { return writer_set_scalar(w, key, GGUF_TYPE_INT32, (uint32_t)v); }
int gguf_writer_set_u64(gguf_writer *w, const char *key, uint64_t v) { return writer_set_scalar(w, key, GGUF_TYPE_UINT64, v); }
int gguf_writer_set_i64(gguf_writer *w, const char *key, int64_t v) { return writer_set_scalar(w, key, GGUF_TYPE_INT64, (uint64_t)v); }
int gguf_writer_set_bool(gguf_writer *w, const char *key, bool v) { return writer_set_scalar(w, key, GGUF_TYPE_BOOL, v ? 1 : 0); }

int gguf_writer_set_f32(gguf_writer *w, const char *key, float v) {
    uint32_t b;
    memcpy(&b, &v, 4);
    return writer_set_scalar(w, key, GGUF_TYPE_FLOAT32, b);
}

int gguf_writer_set_f64(gguf_writer *w, const char *key, double v) {
    uint64_t b;
    memcpy(&b, &v, 8);
    return writer_set_scalar(w, key, GGUF_TYPE_FLOAT64, b);
}

int gguf_writer_set_str(gguf_writer *w, const char *key, const char *v) {
    if (!v) return IA_ERR_ARG;
    size_t len = strlen(v);
    uint8_t *b = ia_malloc(8 + len);
    if (!b) return IA_ERR_NOMEM;
    gguf_put64(b, len);
    memcpy(b + 8, v, len);
    return writer_kv_put(w, key, GGUF_TYPE_STRING, b, 8 + len);
}

int gguf_writer_set_arr(gguf_writer *w, const char *key, gguf_type elem_type, const void *data, uint64_t n) {
    size_t esz = (unsigned)elem_type < GGUF_TYPE_COUNT ? gguf_type_size(elem_type) : 0;
    if (!esz || (n && !data) || n > (SIZE_MAX - 12) / esz) return IA_ERR_ARG; /* strings: use set_arr_str */
    size_t body = (size_t)n * esz;
    if (elem_type == GGUF_TYPE_BOOL) /* never write a file our own reader refuses */
        for (size_t j = 0; j < body; j++)
            if (((const uint8_t *)data)[j] > 1) return IA_ERR_ARG;
    uint8_t *b = ia_malloc(12 + body);
    if (!b) return IA_ERR_NOMEM;
    gguf_put32(b, (uint32_t)elem_type);
    gguf_put64(b + 4, n);
    if (body) memcpy(b + 12, data, body);
    return writer_kv_put(w, key, GGUF_TYPE_ARRAY, b, 12 + body);
}

int gguf_writer_set_arr_str(gguf_writer *w, const char *key, const char *const *strs, const size_t *lens, uint64_t n) {
    if (n && !strs) return IA_ERR_ARG;
    size_t total = 12;
    for (uint64_t j = 0; j < n; j++) {
        if (!strs[j]) return IA_ERR_ARG;
        size_t len = lens ? lens[j] : strlen(strs[j]);
        if (len > SIZE_MAX - 8 - total) return IA_ERR_ARG;
        total += 8 + len;
    }
    uint8_t *b = ia_malloc(total);
    if (!b) return IA_ERR_NOMEM;
    gguf_put32(b, GGUF_TYPE_STRING);
    gguf_put64(b + 4, n);
    size_t pos = 12;
    for (uint64_t j = 0; j < n; j++) {
        size_t len = lens ? lens[j] : strlen(strs[j]);
        gguf_put64(b + pos, len);
        if (len) memcpy(b + pos + 8, strs[j], len);
        pos += 8 + len;
    }
    return writer_kv_put(w, key, GGUF_TYPE_ARRAY, b, total);
}

int gguf_writer_copy_kv(gguf_writer *w, const gguf_file *src, int64_t i) {
    size_t len = 0;
    const void *bytes = src ? gguf_kv_value_bytes(src, i, &len) : NULL;
    if (!bytes) return IA_ERR_ARG;
    uint8_t *v = ia_malloc(len);
    if (!v) return IA_ERR_NOMEM;
    memcpy(v, bytes, len);
    return writer_kv_put(w, gguf_kv_key(src, i), gguf_kv_type(src, i), v, len);
}

int gguf_writer_remove_key(gguf_writer *w, const char *key) {
    if (!w || !key) return IA_ERR_ARG;
    int64_t i = writer_kv_find(w, key);
    if (i < 0) return IA_OK;
    ia_free(w->kvs[i].key);
    ia_free(w->kvs[i].val);
    memmove(&w->kvs[i], &w->kvs[i + 1], (w->n_kv - (size_t)i - 1) * sizeof *w->kvs);
    w->n_kv--;
    return IA_OK;
}

/* ======================================= tensors ======================================= */

static int writer_add(gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims, const int64_t *ne,
                      const void *data, gguf_tensor_fill_fn fill, void *ud, ia_error *err) {
    if (!w || !name || !ne) return ia_error_set(err, IA_ERR_ARG, "gguf writer: NULL argument");
    size_t nlen = strlen(name);
    if (nlen >= GGUF_MAX_NAME)
        return ia_error_set(err, IA_ERR_ARG, "gguf writer: tensor name '%s' is too long (%zu bytes, max %d)", name, nlen,
                            GGUF_MAX_NAME - 1);
    for (size_t i = 0; i < w->n_tensors; i++)
        if (strcmp(w->tensors[i].name, name) == 0)
            return ia_error_set(err, IA_ERR_ARG, "gguf writer: duplicate tensor name '%s'", name);
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return ia_error_set(err, IA_ERR_ARG, "gguf writer: tensor '%s' has %" PRIu32 " dimensions (must be 1 to %d)", name,
                            n_dims, GGUF_MAX_DIMS);
    const ia_type_traits *tr = ia_type_traits_get(type);
    if (!tr) return ia_error_set(err, IA_ERR_ARG, "gguf writer: tensor '%s' has unknown type id %" PRIu32, name, type);
    wtensor t = {0};
    t.type = type;
    t.n_dims = n_dims;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) t.ne[d] = (uint32_t)d < n_dims ? ne[d] : 1;
    uint64_t bytes = 0;
    for (int d = 0; d < GGUF_MAX_DIMS; d++)
        if (t.ne[d] < 0)
            return ia_error_set(err, IA_ERR_ARG, "gguf writer: tensor '%s': ne[%d] = %" PRId64 " is negative", name, d,
                                t.ne[d]);
    if (t.ne[0] % tr->blck_size != 0)
        return ia_error_set(err, IA_ERR_ARG, "gguf writer: tensor '%s' (%s): ne[0] = %" PRId64
                            " is not a multiple of the block size %" PRId64, name, tr->name, t.ne[0], tr->blck_size);
    /* The same overflow rules as the reader, so what we write can be read back. */
    int64_t nel = 1;
    bytes = (uint64_t)(t.ne[0] / tr->blck_size);
    bool overflow = bytes > SIZE_MAX / tr->type_size;
    bytes *= tr->type_size;
    for (int d = 0; d < GGUF_MAX_DIMS && !overflow; d++) {
        if (t.ne[d] != 0 && nel > INT64_MAX / t.ne[d]) overflow = true;
        else nel *= t.ne[d];
        if (d > 0 && t.ne[d] != 0 && bytes > SIZE_MAX / (uint64_t)t.ne[d]) overflow = true;
        else if (d > 0) bytes *= (uint64_t)t.ne[d];
    }
    if (overflow) return ia_error_set(err, IA_ERR_ARG, "gguf writer: tensor '%s': size overflows", name);
    t.nbytes = (size_t)bytes;
    if (t.nbytes && !data && !fill)
        return ia_error_set(err, IA_ERR_ARG, "gguf writer: tensor '%s' has no data", name);
    t.data = data;
    t.fill = fill;
    t.ud = ud;
    if (w->n_tensors == w->cap_tensors) {
        size_t cap = w->cap_tensors ? w->cap_tensors * 2 : 16;
        wtensor *ts = ia_realloc(w->tensors, cap * sizeof *ts);
        if (!ts) return ia_error_set(err, IA_ERR_NOMEM, "gguf writer: out of memory");
        w->tensors = ts;
        w->cap_tensors = cap;
    }
    t.name = ia_strdup(name);
    if (!t.name) return ia_error_set(err, IA_ERR_NOMEM, "gguf writer: out of memory");
    w->tensors[w->n_tensors++] = t;
    return IA_OK;
}

int gguf_writer_add_tensor(gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims, const int64_t *ne,
                           const void *data, ia_error *err) {
    return writer_add(w, name, type, n_dims, ne, data, NULL, NULL, err);
}

int gguf_writer_add_tensor_fill(gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims, const int64_t *ne,
                                gguf_tensor_fill_fn fill, void *ud, ia_error *err) {
    if (!fill) return ia_error_set(err, IA_ERR_ARG, "gguf writer: tensor '%s': NULL fill callback", name ? name : "?");
    return writer_add(w, name, type, n_dims, ne, NULL, fill, ud, err);
}

/* ======================================== output ======================================== */

static size_t pad_to(size_t x, size_t a) { return (a - x % a) % a; }

typedef struct wout {
    FILE *fp;
    bool failed;
} wout;

static void out_bytes(wout *o, const void *p, size_t n) {
    if (!o->failed && n && fwrite(p, 1, n, o->fp) != n) o->failed = true;
}

static void out_u32(wout *o, uint32_t v) {
    uint8_t b[4];
    gguf_put32(b, v);
    out_bytes(o, b, 4);
}

static void out_u64(wout *o, uint64_t v) {
    uint8_t b[8];
    gguf_put64(b, v);
    out_bytes(o, b, 8);
}

static void out_zeros(wout *o, size_t n) {
    static const uint8_t zeros[256];
    while (n) {
        size_t k = n < sizeof zeros ? n : sizeof zeros;
        out_bytes(o, zeros, k);
        n -= k;
    }
}

/* The alignment to write with: general.alignment if set (it must be a u32 power of two, or the
 * file would be refused on reading), else the default. 0 on a bad value. */
static size_t writer_alignment(const gguf_writer *w, ia_error *err, const char *path) {
    int64_t i = writer_kv_find(w, "general.alignment");
    if (i < 0) return GGUF_DEFAULT_ALIGNMENT;
    const wkv *kv = &w->kvs[i];
    uint32_t a = kv->type == GGUF_TYPE_UINT32 ? gguf_le32(kv->val) : 0;
    if (a == 0 || (a & (a - 1)) != 0) {
        ia_error_set(err, IA_ERR_ARG, "%s: general.alignment must be a u32 power of two", path);
        return 0;
    }
    return a;
}

int gguf_writer_write_file(gguf_writer *w, const char *path, ia_error *err) {
    if (!w || !path) return ia_error_set(err, IA_ERR_ARG, "gguf writer: NULL argument");
    size_t align = writer_alignment(w, err, path);
    if (!align) return IA_ERR_ARG;

    /* One reusable buffer for every filled tensor, sized to the largest of them. */
    size_t fill_max = 0;
    for (size_t i = 0; i < w->n_tensors; i++)
        if (w->tensors[i].fill && w->tensors[i].nbytes > fill_max) fill_max = w->tensors[i].nbytes;
    void *fill_buf = NULL;
    if (fill_max) {
        fill_buf = ia_malloc(fill_max);
        if (!fill_buf) return ia_error_set(err, IA_ERR_NOMEM, "%s: out of memory for a %zu-byte tensor buffer", path, fill_max);
    }

    size_t plen = strlen(path);
    char *tmp = ia_malloc(plen + 5);
    if (!tmp) {
        ia_free(fill_buf);
        return ia_error_set(err, IA_ERR_NOMEM, "%s: out of memory", path);
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);

    int rc = IA_OK;
    wout o = {fopen(tmp, "wb"), false};
    if (!o.fp) {
        rc = ia_error_set(err, IA_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        goto done;
    }

    out_bytes(&o, "GGUF", 4);
    out_u32(&o, 3);
    out_u64(&o, w->n_tensors);
    out_u64(&o, w->n_kv);
    size_t pos = 24;
    for (size_t i = 0; i < w->n_kv; i++) {
        const wkv *kv = &w->kvs[i];
        size_t klen = strlen(kv->key);
        out_u64(&o, klen);
        out_bytes(&o, kv->key, klen);
        out_u32(&o, (uint32_t)kv->type);
        out_bytes(&o, kv->val, kv->val_len);
        pos += 8 + klen + 4 + kv->val_len;
    }
    uint64_t offset = 0; /* running sum of padded sizes, as readers require */
    for (size_t i = 0; i < w->n_tensors; i++) {
        const wtensor *t = &w->tensors[i];
        size_t nlen = strlen(t->name);
        out_u64(&o, nlen);
        out_bytes(&o, t->name, nlen);
        out_u32(&o, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims; d++) out_u64(&o, (uint64_t)t->ne[d]);
        out_u32(&o, t->type);
        out_u64(&o, offset);
        pos += 8 + nlen + 4 + 8 * (size_t)t->n_dims + 4 + 8;
        offset += t->nbytes + pad_to(t->nbytes, align);
    }
    out_zeros(&o, pad_to(pos, align));
    for (size_t i = 0; i < w->n_tensors && !o.failed; i++) {
        const wtensor *t = &w->tensors[i];
        const void *src = t->data;
        if (t->fill && t->nbytes) {
            rc = t->fill(t->ud, t->name, fill_buf, t->nbytes, err);
            if (rc != IA_OK) {
                ia_error_prefix(err, "%s: tensor '%s'", path, t->name);
                goto done;
            }
            src = fill_buf;
        }
        out_bytes(&o, src, t->nbytes);
        out_zeros(&o, pad_to(t->nbytes, align));
    }
    if (o.failed || fflush(o.fp) != 0 || fsync(fileno(o.fp)) != 0) {
        rc = ia_error_set(err, IA_ERR_IO, "%s: write failed: %s", tmp, strerror(errno));
        goto done;
    }
    int close_rc = fclose(o.fp);
    o.fp = NULL;
    if (close_rc != 0) {
        rc = ia_error_set(err, IA_ERR_IO, "%s: write failed on close: %s", tmp, strerror(errno));
        goto done;
    }
    if (rename(tmp, path) != 0) rc = ia_error_set(err, IA_ERR_IO, "%s: cannot rename %s into place: %s", path, tmp, strerror(errno));

done:
    if (o.fp) fclose(o.fp);
    if (rc != IA_OK) remove(tmp);
    ia_free(tmp);
    ia_free(fill_buf);
    return rc;
}
