/* gguf_read.c — the GGUF v2/v3 reader: maps a file (or takes a buffer), validates every field
 * against the bytes that are really there, and serves the metadata and zero-copy tensor views. */
#include "gguf/gguf_internal.h"

#include "tensor/tensor.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Smallest encodings, used to bound counts by the bytes that remain before allocating anything:
 * a KV is a key length (8), a type (4) and at least one value byte; a tensor info is a name
 * length (8), n_dims (4), at least one dim (8), a type (4) and an offset (8). */
#define KV_MIN_BYTES 13u
#define TENSOR_INFO_MIN_BYTES 32u
#define ARRAY_HEADER_BYTES 12u   /* element type (4) + count (8) */
#define MAX_ARRAY_DEPTH 8        /* nested arrays: legal in the spec, bounded so recursion is too */

const char *gguf_type_name(gguf_type t) {
    switch (t) {
    case GGUF_TYPE_UINT8: return "u8";
    case GGUF_TYPE_INT8: return "i8";
    case GGUF_TYPE_UINT16: return "u16";
    case GGUF_TYPE_INT16: return "i16";
    case GGUF_TYPE_UINT32: return "u32";
    case GGUF_TYPE_INT32: return "i32";
    case GGUF_TYPE_FLOAT32: return "f32";
    case GGUF_TYPE_BOOL: return "bool";
    case GGUF_TYPE_STRING: return "string";
    case GGUF_TYPE_ARRAY: return "array";
    case GGUF_TYPE_UINT64: return "u64";
    case GGUF_TYPE_INT64: return "i64";
    case GGUF_TYPE_FLOAT64: return "f64";
    default: return "invalid";
    }
}

size_t gguf_type_size(gguf_type t) {
    switch (t) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: return 1;
    case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: return 2;
    case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: return 4;
    case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
    default: return 0; /* string, array, invalid: variable size */
    }
}

/* ============================== name index (open addressing) ============================== */

static uint64_t name_hash(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

/* Slots hold index+1 (0 = empty); the table is kept at most half full. */
typedef gguf_name_index name_index;

static const char *index_name(const gguf_file *f, bool tensors, size_t i) {
    return tensors ? f->tensors[i].name : f->kvs[i].key;
}

/* Index of `name`, or -1. */
static int64_t index_find(const gguf_file *f, const name_index *ix, bool tensors, const char *name) {
    if (!ix->cap) return -1;
    size_t mask = ix->cap - 1;
    for (size_t s = (size_t)name_hash(name) & mask;; s = (s + 1) & mask) {
        size_t v = ix->slots[s];
        if (!v) return -1;
        if (strcmp(index_name(f, tensors, v - 1), name) == 0) return (int64_t)(v - 1);
    }
}

static void index_put(name_index *ix, const char *name, size_t i) {
    size_t mask = ix->cap - 1;
    size_t s = (size_t)name_hash(name) & mask;
    while (ix->slots[s]) s = (s + 1) & mask;
    ix->slots[s] = i + 1;
    ix->n++;
}

/* Makes room for one more entry; false on allocation failure. */
static bool index_reserve(const gguf_file *f, name_index *ix, bool tensors) {
    if ((ix->n + 1) * 2 <= ix->cap) return true;
    size_t cap = ix->cap ? ix->cap * 2 : 16;
    size_t *slots = ia_calloc(cap, sizeof *slots);
    if (!slots) return false;
    name_index nx = {slots, cap, 0};
    for (size_t s = 0; s < ix->cap; s++)
        if (ix->slots[s]) index_put(&nx, index_name(f, tensors, ix->slots[s] - 1), ix->slots[s] - 1);
    ia_free(ix->slots);
    *ix = nx;
    return true;
}

/* ==================================== reading cursor ==================================== */

typedef struct reader {
    const uint8_t *p;
    size_t size;
    size_t pos;
    const char *name; /* file path or buffer name, first in every message */
    ia_error *err;
} reader;

static int reader_fail(reader *r, int code, const char *fmt, ...) IA_PRINTF(3, 4);
static int reader_fail(reader *r, int code, const char *fmt, ...) {
    char msg[IA_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ia_error_set(r->err, code, "%s: %s", r->name, msg);
}

static int reader_nomem(reader *r) { return reader_fail(r, IA_ERR_NOMEM, "out of memory"); }

static size_t reader_left(const reader *r) { return r->size - r->pos; }

/* Ensures n more bytes exist; `what` names the field for the message. */
static int reader_need(reader *r, size_t n, const char *what, const char *whose) {
    if (n <= reader_left(r)) return IA_OK;
    return reader_fail(r, IA_ERR_FORMAT, "unexpected end of file at offset %zu reading %s%s (file is %zu bytes)",
                       r->pos, what, whose, r->size);
}

static int reader_u32(reader *r, uint32_t *v, const char *what, const char *whose) {
    int rc = reader_need(r, 4, what, whose);
    if (rc) return rc;
    *v = gguf_le32(r->p + r->pos);
    r->pos += 4;
    return IA_OK;
}

static int reader_u64(reader *r, uint64_t *v, const char *what, const char *whose) {
    int rc = reader_need(r, 8, what, whose);
    if (rc) return rc;
    *v = gguf_le64(r->p + r->pos);
    r->pos += 8;
    return IA_OK;
}

/* Reads a gguf_string header and checks its bytes are present; *s points at them. */
static int reader_str(reader *r, const uint8_t **s, size_t *len, const char *what, const char *whose) {
    uint64_t n;
    int rc = reader_u64(r, &n, what, whose);
    if (rc) return rc;
    if (n > reader_left(r))
        return reader_fail(r, IA_ERR_FORMAT,
                           "%s%s at offset %zu: string length %" PRIu64 " runs past the end of the file (%zu bytes left)",
                           what, whose, r->pos - 8, n, reader_left(r));
    *s = r->p + r->pos;
    *len = (size_t)n;
    r->pos += (size_t)n;
    return IA_OK;
}

/* ===================================== key/values ===================================== */

/* "key 'x'" context for messages, truncated so it never crowds out the problem itself. */
static void key_ctx(char *out, size_t cap, const char *key) {
    snprintf(out, cap, " of key '%.80s%s'", key, strlen(key) > 80 ? "..." : "");
}

/* Validates the elements of an array whose header is already read; `offs` (may be NULL) receives
 * each string element's position relative to `data` for string arrays. */
static int reader_array_body(reader *r, gguf_type et, uint64_t n, int depth, const char *kc, uint64_t *offs) {
    size_t esz = gguf_type_size(et);
    if (esz) {
        if (n > reader_left(r) / esz)
            return reader_fail(r, IA_ERR_FORMAT, "array%s of %" PRIu64 " %s elements at offset %zu runs past the end of the file",
                               kc, n, gguf_type_name(et), r->pos);
        if (et == GGUF_TYPE_BOOL)
            for (uint64_t j = 0; j < n; j++) {
                uint8_t b = r->p[r->pos + j];
                if (b > 1)
                    return reader_fail(r, IA_ERR_FORMAT, "invalid bool value %u in element %" PRIu64 " of array%s at offset %zu",
                                       b, j, kc, r->pos + (size_t)j);
            }
        r->pos += (size_t)(n * esz);
        return IA_OK;
    }
    size_t min = et == GGUF_TYPE_STRING ? 8 : ARRAY_HEADER_BYTES;
    if (n > reader_left(r) / min)
        return reader_fail(r, IA_ERR_FORMAT, "array%s of %" PRIu64 " %s elements at offset %zu runs past the end of the file",
                           kc, n, gguf_type_name(et), r->pos);
    size_t start = r->pos;
    for (uint64_t j = 0; j < n; j++) {
        int rc;
        if (et == GGUF_TYPE_STRING) {
            const uint8_t *s;
            size_t len;
            if (offs) offs[j] = r->pos - start;
            rc = reader_str(r, &s, &len, "array string", kc);
        } else {
            uint32_t it;
            uint64_t in;
            if (depth >= MAX_ARRAY_DEPTH)
                return reader_fail(r, IA_ERR_FORMAT, "arrays%s are nested deeper than %d levels", kc, MAX_ARRAY_DEPTH);
            if ((rc = reader_u32(r, &it, "nested array element type", kc))) return rc;
            if (it >= GGUF_TYPE_COUNT)
                return reader_fail(r, IA_ERR_FORMAT, "nested array%s has invalid element type %" PRIu32, kc, it);
            if ((rc = reader_u64(r, &in, "nested array length", kc))) return rc;
            rc = reader_array_body(r, (gguf_type)it, in, depth + 1, kc, NULL);
        }
        if (rc) return rc;
    }
    return IA_OK;
}

/* Reads one KV's value (the type is already read) into kv. */
static int reader_kv_value(reader *r, gguf_kv *kv) {
    char kc[128];
    key_ctx(kc, sizeof kc, kv->key);
    int rc;
    kv->val = r->p + r->pos;
    kv->n = 1;
    switch (kv->type) {
    case GGUF_TYPE_STRING: {
        const uint8_t *s;
        size_t len;
        if ((rc = reader_str(r, &s, &len, "string value", kc))) return rc;
        kv->data = s;
        kv->str = ia_strndup((const char *)s, len);
        if (!kv->str) return reader_nomem(r);
        break;
    }
    case GGUF_TYPE_ARRAY: {
        uint32_t et;
        uint64_t n;
        if ((rc = reader_u32(r, &et, "array element type", kc))) return rc;
        if (et >= GGUF_TYPE_COUNT)
            return reader_fail(r, IA_ERR_FORMAT, "array%s has invalid element type %" PRIu32, kc, et);
        if ((rc = reader_u64(r, &n, "array length", kc))) return rc;
        kv->arr_type = (gguf_type)et;
        kv->n = n;
        kv->data = r->p + r->pos;
        if (et == GGUF_TYPE_STRING) {
            if (n > reader_left(r) / 8) /* checked here too so the offsets table stays bounded */
                return reader_fail(r, IA_ERR_FORMAT, "array%s of %" PRIu64 " strings at offset %zu runs past the end of the file",
                                   kc, n, r->pos);
            kv->str_off = ia_malloc((size_t)n * sizeof *kv->str_off);
            if (!kv->str_off) return reader_nomem(r);
        }
        if ((rc = reader_array_body(r, kv->arr_type, n, 1, kc, kv->str_off))) return rc;
        break;
    }
    default: {
        size_t sz = gguf_type_size(kv->type);
        if ((rc = reader_need(r, sz, "value", kc))) return rc;
        kv->data = r->p + r->pos;
        if (kv->type == GGUF_TYPE_BOOL && kv->data[0] > 1)
            return reader_fail(r, IA_ERR_FORMAT, "key '%s' has invalid bool value %u (must be 0 or 1)", kv->key, kv->data[0]);
        r->pos += sz;
        break;
    }
    }
    kv->val_len = (size_t)(r->p + r->pos - kv->val);
    return IA_OK;
}

static int reader_kvs(reader *r, gguf_file *f, uint64_t n_kv) {
    size_t cap = 0;
    for (uint64_t i = 0; i < n_kv; i++) {
        int rc;
        char what[64];
        snprintf(what, sizeof what, "key %" PRIu64 " of %" PRIu64, i, n_kv);
        /* Arrays grow with what is actually parsed, not with what the header claims. */
        if (f->n_kv == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            gguf_kv *kvs = ia_realloc(f->kvs, ncap * sizeof *kvs);
            if (!kvs) return reader_nomem(r);
            f->kvs = kvs;
            cap = ncap;
        }
        gguf_kv *kv = &f->kvs[f->n_kv];
        memset(kv, 0, sizeof *kv);
        const uint8_t *ks;
        size_t klen;
        if ((rc = reader_str(r, &ks, &klen, what, ""))) return rc;
        if (memchr(ks, 0, klen))
            return reader_fail(r, IA_ERR_FORMAT, "%s at offset %zu contains a NUL byte", what, (size_t)(ks - r->p));
        kv->key = ia_strndup((const char *)ks, klen);
        if (!kv->key) return reader_nomem(r);
        f->n_kv++; /* owned by f from here on, freed with it on any error below */
        char kc[128];
        key_ctx(kc, sizeof kc, kv->key);
        if (index_find(f, &f->kv_index, false, kv->key) >= 0)
            return reader_fail(r, IA_ERR_FORMAT, "duplicate key '%s'", kv->key);
        if (!index_reserve(f, &f->kv_index, false)) return reader_nomem(r);
        index_put(&f->kv_index, kv->key, f->n_kv - 1);
        uint32_t t;
        if ((rc = reader_u32(r, &t, "value type", kc))) return rc;
        if (t >= GGUF_TYPE_COUNT)
            return reader_fail(r, IA_ERR_FORMAT, "key '%s' has invalid value type %" PRIu32, kv->key, t);
        kv->type = (gguf_type)t;
        if ((rc = reader_kv_value(r, kv))) return rc;
    }
    return IA_OK;
}

static int reader_alignment(reader *r, gguf_file *f) {
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    int64_t i = gguf_kv_find(f, "general.alignment");
    if (i < 0) return IA_OK;
    const gguf_kv *kv = &f->kvs[i];
    if (kv->type != GGUF_TYPE_UINT32)
        return reader_fail(r, IA_ERR_FORMAT, "general.alignment must be u32, not %s", gguf_type_name(kv->type));
    uint32_t a = gguf_le32(kv->data);
    if (a == 0 || (a & (a - 1)) != 0)
        return reader_fail(r, IA_ERR_FORMAT, "general.alignment %" PRIu32 " is not a non-zero power of two", a);
    f->alignment = a;
    return IA_OK;
}

/* ======================================= tensors ======================================= */

static const char *type_removed(uint32_t t) {
    return (t == 4 || t == 5 || (t >= 31 && t <= 33) || (t >= 36 && t <= 38)) ? " (removed from ggml)" : "";
}

static int reader_tensor_info(reader *r, gguf_file *f, gguf_tensor *t, uint64_t i, uint64_t n) {
    char what[64];
    snprintf(what, sizeof what, "name of tensor %" PRIu64 " of %" PRIu64, i, n);
    const uint8_t *ns;
    size_t nlen;
    int rc;
    if ((rc = reader_str(r, &ns, &nlen, what, ""))) return rc;
    if (nlen >= GGUF_MAX_NAME)
        return reader_fail(r, IA_ERR_FORMAT, "tensor %" PRIu64 ": name of %zu bytes ('%.40s...') is too long (max %d)", i,
                           nlen, (const char *)ns, GGUF_MAX_NAME - 1);
    if (memchr(ns, 0, nlen))
        return reader_fail(r, IA_ERR_FORMAT, "tensor %" PRIu64 ": name contains a NUL byte", i);
    memcpy(t->name, ns, nlen);
    t->name[nlen] = 0;
    f->n_tensors++; /* the name is now valid for the index */
    if (index_find(f, &f->tensor_index, true, t->name) >= 0)
        return reader_fail(r, IA_ERR_FORMAT, "duplicate tensor name '%s'", t->name);
    if (!index_reserve(f, &f->tensor_index, true)) return reader_nomem(r);
    index_put(&f->tensor_index, t->name, f->n_tensors - 1);

    char tc[96];
    snprintf(tc, sizeof tc, " of tensor '%s'", t->name);
    uint32_t nd;
    if ((rc = reader_u32(r, &nd, "n_dims", tc))) return rc;
    if (nd < 1 || nd > GGUF_MAX_DIMS)
        return reader_fail(r, IA_ERR_FORMAT, "tensor '%s' has %" PRIu32 " dimensions (must be 1 to %d)", t->name, nd,
                           GGUF_MAX_DIMS);
    t->info.n_dims = nd;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) t->info.ne[d] = 1;
    for (uint32_t d = 0; d < nd; d++) {
        uint64_t v;
        if ((rc = reader_u64(r, &v, "dimension", tc))) return rc;
        if (v > (uint64_t)INT64_MAX)
            return reader_fail(r, IA_ERR_FORMAT, "tensor '%s': ne[%" PRIu32 "] = %" PRId64 " is negative", t->name, d,
                               (int64_t)v);
        t->info.ne[d] = (int64_t)v;
    }
    uint32_t type;
    if ((rc = reader_u32(r, &type, "type", tc))) return rc;
    if ((rc = reader_u64(r, &t->info.offset, "offset", tc))) return rc;
    t->info.type = type;
    const ia_type_traits *tr = ia_type_traits_get(type);
    if (!tr)
        return reader_fail(r, IA_ERR_FORMAT, "tensor '%s' has unknown type id %" PRIu32 "%s", t->name, type,
                           type_removed(type));
    const int64_t *ne = t->info.ne;
    if (ne[0] % tr->blck_size != 0)
        return reader_fail(r, IA_ERR_FORMAT, "tensor '%s' (%s): ne[0] = %" PRId64 " is not a multiple of the block size %" PRId64,
                           t->name, tr->name, ne[0], tr->blck_size);
    /* Element count and byte size, each checked for overflow (zero-sized dims are allowed, as ggml does). */
    int64_t nel = 1;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) {
        if (ne[d] != 0 && nel > INT64_MAX / ne[d])
            return reader_fail(r, IA_ERR_FORMAT, "tensor '%s': element count %" PRId64 " x %" PRId64 " x %" PRId64 " x %" PRId64
                               " overflows", t->name, ne[0], ne[1], ne[2], ne[3]);
        nel *= ne[d];
    }
    uint64_t bytes = (uint64_t)(ne[0] / tr->blck_size);
    if (bytes > SIZE_MAX / tr->type_size) goto size_overflow;
    bytes *= tr->type_size;
    for (int d = 1; d < GGUF_MAX_DIMS; d++) {
        if (ne[d] != 0 && bytes > SIZE_MAX / (uint64_t)ne[d]) goto size_overflow;
        bytes *= (uint64_t)ne[d];
    }
    t->info.nbytes = (size_t)bytes;
    if (t->info.offset % f->alignment != 0)
        return reader_fail(r, IA_ERR_FORMAT, "tensor '%s': offset %" PRIu64 " is not a multiple of the alignment %zu", t->name,
                           t->info.offset, f->alignment);
    return IA_OK;
size_overflow:
    return reader_fail(r, IA_ERR_FORMAT, "tensor '%s': byte size of %" PRId64 " x %" PRId64 " x %" PRId64 " x %" PRId64
                       " %s elements overflows", t->name, ne[0], ne[1], ne[2], ne[3], tr->name);
}

static int reader_tensors(reader *r, gguf_file *f, uint64_t n) {
    size_t cap = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (f->n_tensors == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            gguf_tensor *ts = ia_realloc(f->tensors, ncap * sizeof *ts);
            if (!ts) return reader_nomem(r);
            f->tensors = ts;
            cap = ncap;
        }
        gguf_tensor *t = &f->tensors[f->n_tensors];
        memset(t, 0, sizeof *t);
        int rc = reader_tensor_info(r, f, t, i, n);
        if (rc) return rc;
    }
    /* The data section starts at the next multiple of the alignment; offsets must be exactly the
     * running sum of padded sizes in tensor-info order (what ggml requires), and data must fit. */
    size_t a = f->alignment;
    size_t hdr = r->pos;
    size_t data_start = hdr + (a - hdr % a) % a;
    if (n == 0) return IA_OK;
    if (data_start > r->size || data_start < hdr)
        return reader_fail(r, IA_ERR_FORMAT, "data section would start at offset %zu, past the end of the file (%zu bytes)",
                           data_start, r->size);
    size_t data_size = r->size - data_start;
    uint64_t expect = 0;
    for (size_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor_info *ti = &f->tensors[i].info;
        ti->name = f->tensors[i].name; /* only now: the array may have moved while growing */
        if (ti->offset != expect)
            return reader_fail(r, IA_ERR_FORMAT,
                               "tensor '%s': offset %" PRIu64 ", expected %" PRIu64 " (the running sum of padded sizes)",
                               ti->name, ti->offset, expect);
        if (ti->offset > data_size || ti->nbytes > data_size - ti->offset)
            return reader_fail(r, IA_ERR_FORMAT,
                               "tensor '%s': data [%zu, %" PRIu64 ") runs past the end of the file (%zu bytes)", ti->name,
                               data_start + (size_t)ti->offset, (uint64_t)data_start + ti->offset + ti->nbytes, r->size);
        ti->data = r->p + data_start + ti->offset;
        expect += ti->nbytes + (a - ti->nbytes % a) % a; /* cannot overflow: nbytes <= file size */
    }
    f->data_offset = data_start;
    return IA_OK;
}

/* ===================================== open / free ===================================== */

static int reader_parse(reader *r, gguf_file *f) {
    int rc;
    if (r->size < 4 || memcmp(r->p, "GGUF", 4) != 0) {
        if (r->size < 4) return reader_fail(r, IA_ERR_FORMAT, "file of %zu bytes is too short for the GGUF magic", r->size);
        return reader_fail(r, IA_ERR_FORMAT, "bad magic %02x %02x %02x %02x (not a GGUF file)", r->p[0], r->p[1], r->p[2],
                           r->p[3]);
    }
    r->pos = 4;
    uint32_t v;
    if ((rc = reader_u32(r, &v, "version", ""))) return rc;
    if (v == 0) return reader_fail(r, IA_ERR_FORMAT, "GGUF version 0 is invalid");
    if ((v & 0xffffu) == 0)
        return reader_fail(r, IA_ERR_FORMAT, "GGUF version 0x%08" PRIx32 " looks byte-swapped (endianness mismatch)", v);
    if (v == 1) return reader_fail(r, IA_ERR_FORMAT, "GGUFv1 is no longer supported");
    if (v > 3) return reader_fail(r, IA_ERR_FORMAT, "GGUF version %" PRIu32 " is newer than supported (3)", v);
    f->version = v;
    uint64_t n_tensors, n_kv;
    if ((rc = reader_u64(r, &n_tensors, "tensor count", ""))) return rc;
    if ((rc = reader_u64(r, &n_kv, "key/value count", ""))) return rc;
    size_t left = reader_left(r);
    if (n_tensors > left / TENSOR_INFO_MIN_BYTES)
        return reader_fail(r, IA_ERR_FORMAT, "tensor count %" PRIu64 " is implausible for the %zu bytes that follow", n_tensors,
                           left);
    if (n_kv > left / KV_MIN_BYTES || n_kv * KV_MIN_BYTES > left - n_tensors * TENSOR_INFO_MIN_BYTES)
        return reader_fail(r, IA_ERR_FORMAT, "key/value count %" PRIu64 " is implausible for the %zu bytes that follow", n_kv,
                           left);
    if ((rc = reader_kvs(r, f, n_kv))) return rc;
    if ((rc = reader_alignment(r, f))) return rc;
    return reader_tensors(r, f, n_tensors);
}

static gguf_file *file_parse(const void *data, size_t size, const char *name, bool mapped, ia_error *err) {
    gguf_file *f = ia_calloc(1, sizeof *f);
    if (!f) {
        ia_error_set(err, IA_ERR_NOMEM, "%s: out of memory", name);
        return NULL;
    }
    f->path = ia_strdup(name);
    if (!f->path) {
        ia_free(f);
        ia_error_set(err, IA_ERR_NOMEM, "%s: out of memory", name);
        return NULL;
    }
    f->base = data;
    f->size = size;
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    reader r = {data, size, 0, name, err};
    if (reader_parse(&r, f) != IA_OK) {
        gguf_file_free(f); /* does not unmap: the caller still owns the mapping */
        return NULL;
    }
    f->mapped = mapped;
    return f;
}

gguf_file *gguf_file_open_buffer(const void *data, size_t size, const char *name, ia_error *err) {
    if (!name) name = "<buffer>";
    if (!data && size) {
        ia_error_set(err, IA_ERR_ARG, "%s: NULL buffer", name);
        return NULL;
    }
    static const uint8_t empty[1];
    return file_parse(size ? data : empty, size, name, false, err);
}

gguf_file *gguf_file_open(const char *path, ia_error *err) {
    if (!path) {
        ia_error_set(err, IA_ERR_ARG, "gguf_file_open: NULL path");
        return NULL;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        ia_error_set(err, IA_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        ia_error_set(err, IA_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        ia_error_set(err, IA_ERR_IO, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    if ((uint64_t)st.st_size > SIZE_MAX) {
        ia_error_set(err, IA_ERR_IO, "%s: file too large to map", path);
        close(fd);
        return NULL;
    }
    size_t size = (size_t)st.st_size;
    if (size == 0) { /* mmap refuses length 0; report it as the format problem it is */
        close(fd);
        return file_parse(NULL, 0, path, false, err) /* always fails */;
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd); /* the mapping keeps the file referenced */
    if (map == MAP_FAILED) {
        ia_error_set(err, IA_ERR_IO, "%s: cannot map %zu bytes: %s", path, size, strerror(map_errno));
        return NULL;
    }
    gguf_file *f = file_parse(map, size, path, true, err);
    if (!f) munmap(map, size);
    return f;
}

void gguf_file_free(gguf_file *f) {
    if (!f) return;
    for (size_t i = 0; i < f->n_kv; i++) {
        ia_free(f->kvs[i].key);
        ia_free(f->kvs[i].str);
        ia_free(f->kvs[i].str_off);
    }
    ia_free(f->kvs);
    ia_free(f->tensors);
    ia_free(f->kv_index.slots);
    ia_free(f->tensor_index.slots);
    if (f->mapped) munmap((void *)f->base, f->size);
    ia_free(f->path);
    ia_free(f);
}

uint32_t gguf_file_version(const gguf_file *f) { return f->version; }
size_t gguf_file_alignment(const gguf_file *f) { return f->alignment; }
size_t gguf_file_size(const gguf_file *f) { return f->size; }
const char *gguf_file_path(const gguf_file *f) { return f->path; }

/* ====================================== KV getters ====================================== */

static const gguf_kv *kv_at(const gguf_file *f, int64_t i) {
    if (!f || i < 0 || (uint64_t)i >= f->n_kv) return NULL;
    return &f->kvs[i];
}

int64_t gguf_kv_count(const gguf_file *f) { return (int64_t)f->n_kv; }

int64_t gguf_kv_find(const gguf_file *f, const char *key) {
    if (!f || !key) return -1;
    return index_find(f, &f->kv_index, false, key);
}

const char *gguf_kv_key(const gguf_file *f, int64_t i) {
    const gguf_kv *kv = kv_at(f, i);
    return kv ? kv->key : NULL;
}

gguf_type gguf_kv_type(const gguf_file *f, int64_t i) {
    const gguf_kv *kv = kv_at(f, i);
    return kv ? kv->type : GGUF_TYPE_COUNT;
}

gguf_type gguf_kv_arr_type(const gguf_file *f, int64_t i) {
    const gguf_kv *kv = kv_at(f, i);
    return kv && kv->type == GGUF_TYPE_ARRAY ? kv->arr_type : GGUF_TYPE_COUNT;
}

uint64_t gguf_kv_arr_n(const gguf_file *f, int64_t i) {
    const gguf_kv *kv = kv_at(f, i);
    return kv ? kv->n : 0;
}

const void *gguf_kv_raw(const gguf_file *f, int64_t i) {
    const gguf_kv *kv = kv_at(f, i);
    if (!kv) return NULL;
    if (kv->type == GGUF_TYPE_STRING) return kv->str; /* the NUL-terminated copy */
    if (kv->type == GGUF_TYPE_ARRAY && gguf_type_size(kv->arr_type) == 0) return NULL; /* not numeric */
    return kv->data;
}

const void *gguf_kv_value_bytes(const gguf_file *f, int64_t i, size_t *len) {
    const gguf_kv *kv = kv_at(f, i);
    if (!kv) return NULL;
    *len = kv->val_len;
    return kv->val;
}

/* A decoded number: which kind it is and its value in the matching field. */
typedef struct num {
    enum { NUM_UNSIGNED, NUM_SIGNED, NUM_FLOAT, NUM_BOOL } kind;
    uint64_t u;
    int64_t i;
    double f;
} num;

static bool num_decode(gguf_type t, const uint8_t *p, num *n) {
    memset(n, 0, sizeof *n);
    switch (t) {
    case GGUF_TYPE_UINT8: n->kind = NUM_UNSIGNED; n->u = p[0]; break;
    case GGUF_TYPE_UINT16: n->kind = NUM_UNSIGNED; n->u = gguf_le16(p); break;
    case GGUF_TYPE_UINT32: n->kind = NUM_UNSIGNED; n->u = gguf_le32(p); break;
    case GGUF_TYPE_UINT64: n->kind = NUM_UNSIGNED; n->u = gguf_le64(p); break;
    case GGUF_TYPE_INT8: n->kind = NUM_SIGNED; n->i = (int8_t)p[0]; break;
    case GGUF_TYPE_INT16: n->kind = NUM_SIGNED; n->i = (int16_t)gguf_le16(p); break;
    case GGUF_TYPE_INT32: n->kind = NUM_SIGNED; n->i = (int32_t)gguf_le32(p); break;
    case GGUF_TYPE_INT64: n->kind = NUM_SIGNED; n->i = (int64_t)gguf_le64(p); break;
    case GGUF_TYPE_BOOL: n->kind = NUM_BOOL; n->u = p[0]; break;
    case GGUF_TYPE_FLOAT32: {
        uint32_t b = gguf_le32(p);
        float v;
        memcpy(&v, &b, 4);
        n->kind = NUM_FLOAT;
        n->f = v;
        break;
    }
    case GGUF_TYPE_FLOAT64: {
        uint64_t b = gguf_le64(p);
        memcpy(&n->f, &b, 8);
        n->kind = NUM_FLOAT;
        break;
    }
    default: return false;
    }
    return true;
}

static void num_text(const num *n, char *out, size_t cap) {
    switch (n->kind) {
    case NUM_UNSIGNED: case NUM_BOOL: snprintf(out, cap, "%" PRIu64, n->u); break;
    case NUM_SIGNED: snprintf(out, cap, "%" PRId64, n->i); break;
    case NUM_FLOAT: snprintf(out, cap, "%g", n->f); break;
    }
}

enum want { WANT_U64, WANT_I64, WANT_F64, WANT_BOOL };

static const char *want_name(enum want w) {
    switch (w) {
    case WANT_U64: return "a non-negative integer";
    case WANT_I64: return "a 64-bit signed integer";
    case WANT_F64: return "a number";
    default: return "a bool";
    }
}

/* Converts an element to the wanted kind; IA_ERR_FORMAT naming the key, the stored type and the value. */
static int num_convert(const gguf_file *f, const gguf_kv *kv, gguf_type t, const uint8_t *p, const char *elem,
                       enum want w, void *out, ia_error *err) {
    num n;
    if (!num_decode(t, p, &n))
        return ia_error_set(err, IA_ERR_FORMAT, "%s: key '%s'%s has type %s, not %s", f->path, kv->key, elem,
                            gguf_type_name(t), want_name(w));
    bool ok = false;
    switch (w) {
    case WANT_U64:
        if (n.kind == NUM_UNSIGNED || n.kind == NUM_BOOL) { *(uint64_t *)out = n.u; ok = true; }
        else if (n.kind == NUM_SIGNED && n.i >= 0) { *(uint64_t *)out = (uint64_t)n.i; ok = true; }
        break;
    case WANT_I64:
        if (n.kind == NUM_SIGNED) { *(int64_t *)out = n.i; ok = true; }
        else if (n.kind == NUM_UNSIGNED && n.u <= (uint64_t)INT64_MAX) { *(int64_t *)out = (int64_t)n.u; ok = true; }
        break;
    case WANT_F64:
        if (n.kind == NUM_FLOAT) { *(double *)out = n.f; ok = true; }
        else if (n.kind == NUM_SIGNED) { *(double *)out = (double)n.i; ok = true; }
        else if (n.kind == NUM_UNSIGNED) { *(double *)out = (double)n.u; ok = true; }
        break;
    case WANT_BOOL:
        if (n.kind == NUM_BOOL || (n.kind == NUM_UNSIGNED && n.u <= 1)) { *(bool *)out = n.u != 0; ok = true; }
        else if (n.kind == NUM_SIGNED && (n.i == 0 || n.i == 1)) { *(bool *)out = n.i != 0; ok = true; }
        break;
    }
    if (ok) return IA_OK;
    char val[48];
    num_text(&n, val, sizeof val);
    return ia_error_set(err, IA_ERR_FORMAT, "%s: key '%s'%s has type %s and value %s, not %s", f->path, kv->key, elem,
                        gguf_type_name(t), val, want_name(w));
}

static int kv_scalar(const gguf_file *f, int64_t i, enum want w, void *out, ia_error *err) {
    const gguf_kv *kv = kv_at(f, i);
    if (!kv) return ia_error_set(err, IA_ERR_ARG, "%s: no key/value #%" PRId64, f ? f->path : "gguf", i);
    if (kv->type == GGUF_TYPE_ARRAY) /* decode refuses arrays; say so with the element type */
        return ia_error_set(err, IA_ERR_FORMAT, "%s: key '%s' is an array of %s, not %s", f->path, kv->key,
                            gguf_type_name(kv->arr_type), want_name(w));
    return num_convert(f, kv, kv->type, kv->data, "", w, out, err);
}

int gguf_kv_get_u64(const gguf_file *f, int64_t i, uint64_t *out, ia_error *err) { return kv_scalar(f, i, WANT_U64, out, err); }
int gguf_kv_get_i64(const gguf_file *f, int64_t i, int64_t *out, ia_error *err) { return kv_scalar(f, i, WANT_I64, out, err); }
int gguf_kv_get_f64(const gguf_file *f, int64_t i, double *out, ia_error *err) { return kv_scalar(f, i, WANT_F64, out, err); }
int gguf_kv_get_bool(const gguf_file *f, int64_t i, bool *out, ia_error *err) { return kv_scalar(f, i, WANT_BOOL, out, err); }

int gguf_kv_get_str(const gguf_file *f, int64_t i, const char **out, ia_error *err) {
    const gguf_kv *kv = kv_at(f, i);
    if (!kv) return ia_error_set(err, IA_ERR_ARG, "%s: no key/value #%" PRId64, f ? f->path : "gguf", i);
    if (kv->type != GGUF_TYPE_STRING)
        return ia_error_set(err, IA_ERR_FORMAT, "%s: key '%s' has type %s, not string", f->path, kv->key,
                            gguf_type_name(kv->type));
    *out = kv->str;
    return IA_OK;
}

static int kv_elem(const gguf_file *f, int64_t i, uint64_t j, enum want w, void *out, ia_error *err) {
    const gguf_kv *kv = kv_at(f, i);
    if (!kv) return ia_error_set(err, IA_ERR_ARG, "%s: no key/value #%" PRId64, f ? f->path : "gguf", i);
    if (kv->type != GGUF_TYPE_ARRAY)
        return ia_error_set(err, IA_ERR_FORMAT, "%s: key '%s' has type %s, not array", f->path, kv->key,
                            gguf_type_name(kv->type));
    if (j >= kv->n)
        return ia_error_set(err, IA_ERR_RANGE, "%s: key '%s': element %" PRIu64 " of an array of %" PRIu64, f->path, kv->key,
                            j, kv->n);
    size_t esz = gguf_type_size(kv->arr_type);
    char elem[48];
    snprintf(elem, sizeof elem, " element %" PRIu64, j);
    if (!esz)
        return ia_error_set(err, IA_ERR_FORMAT, "%s: key '%s' is an array of %s, not of numbers", f->path, kv->key,
                            gguf_type_name(kv->arr_type));
    return num_convert(f, kv, kv->arr_type, kv->data + j * esz, elem, w, out, err);
}

int gguf_kv_get_arr_i64(const gguf_file *f, int64_t i, uint64_t j, int64_t *out, ia_error *err) {
    return kv_elem(f, i, j, WANT_I64, out, err);
}

int gguf_kv_get_arr_f64(const gguf_file *f, int64_t i, uint64_t j, double *out, ia_error *err) {
    return kv_elem(f, i, j, WANT_F64, out, err);
}

const char *gguf_kv_get_arr_str(const gguf_file *f, int64_t i, uint64_t j, size_t *len) {
    const gguf_kv *kv = kv_at(f, i);
    if (!kv || kv->type != GGUF_TYPE_ARRAY || kv->arr_type != GGUF_TYPE_STRING || j >= kv->n) return NULL;
    const uint8_t *p = kv->data + kv->str_off[j];
    if (len) *len = (size_t)gguf_le64(p);
    return (const char *)p + 8;
}

/* Shared by the gguf_find_* helpers: 0 absent, 1 converted, -1 wrong type. */
static int find_any(const gguf_file *f, const char *key, enum want w, void *out, ia_error *err) {
    int64_t i = gguf_kv_find(f, key);
    if (i < 0) return 0;
    return kv_scalar(f, i, w, out, err) == IA_OK ? 1 : -1;
}

int gguf_find_u64(const gguf_file *f, const char *key, uint64_t *out, ia_error *err) { return find_any(f, key, WANT_U64, out, err); }
int gguf_find_f64(const gguf_file *f, const char *key, double *out, ia_error *err) { return find_any(f, key, WANT_F64, out, err); }
int gguf_find_bool(const gguf_file *f, const char *key, bool *out, ia_error *err) { return find_any(f, key, WANT_BOOL, out, err); }

int gguf_find_str(const gguf_file *f, const char *key, const char **out, ia_error *err) {
    int64_t i = gguf_kv_find(f, key);
    if (i < 0) return 0;
    return gguf_kv_get_str(f, i, out, err) == IA_OK ? 1 : -1;
}

/* ======================================= tensors ======================================= */

int64_t gguf_tensor_count(const gguf_file *f) { return (int64_t)f->n_tensors; }

const gguf_tensor_info *gguf_tensor_get(const gguf_file *f, int64_t i) {
    if (!f || i < 0 || (uint64_t)i >= f->n_tensors) return NULL;
    return &f->tensors[i].info;
}

const gguf_tensor_info *gguf_tensor_find(const gguf_file *f, const char *name) {
    if (!f || !name) return NULL;
    int64_t i = index_find(f, &f->tensor_index, true, name);
    return i < 0 ? NULL : &f->tensors[i].info;
}
