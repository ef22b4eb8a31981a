/* gguf.h — GGUF v2/v3 reader (memory-mapped, zero-copy, fully validated) and writer.
 *
 * The reader never trusts the file: every count, length, type, dimension, offset and size is checked
 * against the file length before use, and the first problem found is reported as one line naming
 * it (e.g. "model.gguf: tensor 'blk.0.attn_q.weight': data [..] runs past the end of the file").
 */
#ifndef IA_GGUF_H
#define IA_GGUF_H

#include "util/util.h"

#define GGUF_MAGIC 0x46554747u /* "GGUF" as a little-endian u32 */
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4
#define GGUF_MAX_NAME 64       /* tensor names are shorter than this (ggml's GGML_MAX_NAME) */

typedef enum gguf_type {
    GGUF_TYPE_UINT8 = 0,
    GGUF_TYPE_INT8 = 1,
    GGUF_TYPE_UINT16 = 2,
    GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4,
    GGUF_TYPE_INT32 = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8,
    GGUF_TYPE_ARRAY = 9,
    GGUF_TYPE_UINT64 = 10,
    GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12,
    GGUF_TYPE_COUNT
} gguf_type;

const char *gguf_type_name(gguf_type t); /* "u32", "string", "array", ... */

typedef struct gguf_tensor_info {
    const char *name;          /* NUL-terminated (owned by the file object) */
    uint32_t n_dims;           /* 1..4 */
    int64_t ne[GGUF_MAX_DIMS]; /* elements per dim, ne[0] contiguous; unused dims are 1 */
    uint32_t type;             /* ggml type id (see tensor/tensor.h) */
    uint64_t offset;           /* relative to the start of the data section */
    size_t nbytes;             /* bytes of data */
    const void *data;          /* points into the mapping (aligned to the file's alignment) */
} gguf_tensor_info;

typedef struct gguf_file gguf_file;

/* Maps and validates a file. NULL (err set, message starting with the path) on any problem. */
gguf_file *gguf_file_open(const char *path, ia_error *err);
/* Validates a buffer already in memory (not copied: it must outlive the result). `name` is used in
 * messages. */
gguf_file *gguf_file_open_buffer(const void *data, size_t size, const char *name, ia_error *err);
void gguf_file_free(gguf_file *f);

uint32_t gguf_file_version(const gguf_file *f);
size_t gguf_file_alignment(const gguf_file *f);
size_t gguf_file_size(const gguf_file *f);
const char *gguf_file_path(const gguf_file *f);

/* ---- key/value metadata ---- */
int64_t gguf_kv_count(const gguf_file *f);
int64_t gguf_kv_find(const gguf_file *f, const char *key); /* index, or -1 */
const char *gguf_kv_key(const gguf_file *f, int64_t i);
gguf_type gguf_kv_type(const gguf_file *f, int64_t i);
gguf_type gguf_kv_arr_type(const gguf_file *f, int64_t i); /* element type of an array */
uint64_t gguf_kv_arr_n(const gguf_file *f, int64_t i);    /* elements of an array (1 for scalars) */

/* Scalar getters with coercion. Each returns IA_OK, or IA_ERR_FORMAT (err names the key and the
 * stored type) when the value does not fit the requested kind:
 *  - get_u64: any non-negative integer type (and bool);  get_i64: any integer type that fits;
 *  - get_f64: float32/float64 and any integer type;      get_bool: bool (and integers 0/1);
 *  - get_str: a string; *out is NUL-terminated and owned by the file object. */
int gguf_kv_get_u64(const gguf_file *f, int64_t i, uint64_t *out, ia_error *err);
int gguf_kv_get_i64(const gguf_file *f, int64_t i, int64_t *out, ia_error *err);
int gguf_kv_get_f64(const gguf_file *f, int64_t i, double *out, ia_error *err);
int gguf_kv_get_bool(const gguf_file *f, int64_t i, bool *out, ia_error *err);
int gguf_kv_get_str(const gguf_file *f, int64_t i, const char **out, ia_error *err);

/* Array element getters (i: kv index, j: element). Numeric ones coerce like the scalar getters;
 * they are safe for unaligned data. get_arr_str returns a pointer into the mapping that is NOT
 * NUL-terminated, with its length in *len. */
int gguf_kv_get_arr_i64(const gguf_file *f, int64_t i, uint64_t j, int64_t *out, ia_error *err);
int gguf_kv_get_arr_f64(const gguf_file *f, int64_t i, uint64_t j, double *out, ia_error *err);
const char *gguf_kv_get_arr_str(const gguf_file *f, int64_t i, uint64_t j, size_t *len);
/* Raw bytes of a numeric array's elements (may be unaligned) or of a scalar value; for a string
 * scalar its NUL-terminated copy. NULL for arrays of strings or arrays and for a bad index. */
const void *gguf_kv_raw(const gguf_file *f, int64_t i);

/* Convenience lookups by key: return 1 if found and converted, 0 if the key is absent, -1 if it is
 * present with a type that does not convert (err set). */
int gguf_find_u64(const gguf_file *f, const char *key, uint64_t *out, ia_error *err);
int gguf_find_f64(const gguf_file *f, const char *key, double *out, ia_error *err);
int gguf_find_bool(const gguf_file *f, const char *key, bool *out, ia_error *err);
int gguf_find_str(const gguf_file *f, const char *key, const char **out, ia_error *err);

/* ---- tensors ---- */
int64_t gguf_tensor_count(const gguf_file *f);
const gguf_tensor_info *gguf_tensor_get(const gguf_file *f, int64_t i);
const gguf_tensor_info *gguf_tensor_find(const gguf_file *f, const char *name); /* NULL if absent */

/* ---- writer ---- */
typedef struct gguf_writer gguf_writer;

/* Produces a tensor's bytes at write time (for tensors too large to hold all at once): fill `dst`
 * with exactly `nbytes` bytes. Returns IA_OK or an error code (err set). */
typedef int (*gguf_tensor_fill_fn)(void *ud, const char *name, void *dst, size_t nbytes, ia_error *err);

gguf_writer *gguf_writer_init(void);
void gguf_writer_free(gguf_writer *w);

/* Setting a key that is already set replaces its value (keys stay unique, first position kept).
 * Each returns IA_OK or IA_ERR_NOMEM. Writers meant for llama.cpp use u32 for counts, f32 for reals. */
int gguf_writer_set_u8(gguf_writer *w, const char *key, uint8_t v);
int gguf_writer_set_i8(gguf_writer *w, const char *key, int8_t v);
int gguf_writer_set_u16(gguf_writer *w, const char *key, uint16_t v);
int gguf_writer_set_i16(gguf_writer *w, const char *key, int16_t v);
int gguf_writer_set_u32(gguf_writer *w, const char *key, uint32_t v);
int gguf_writer_set_i32(gguf_writer *w, const char *key, int32_t v);
int gguf_writer_set_u64(gguf_writer *w, const char *key, uint64_t v);
int gguf_writer_set_i64(gguf_writer *w, const char *key, int64_t v);
int gguf_writer_set_f32(gguf_writer *w, const char *key, float v);
int gguf_writer_set_f64(gguf_writer *w, const char *key, double v);
int gguf_writer_set_bool(gguf_writer *w, const char *key, bool v);
int gguf_writer_set_str(gguf_writer *w, const char *key, const char *v);
/* Numeric array: n elements of elem_type packed little-endian in `data` (copied). */
int gguf_writer_set_arr(gguf_writer *w, const char *key, gguf_type elem_type, const void *data, uint64_t n);
/* String array: strs[j] with lengths lens[j] (lens NULL: NUL-terminated). Copied. */
int gguf_writer_set_arr_str(gguf_writer *w, const char *key, const char *const *strs, const size_t *lens,
                            uint64_t n);
/* Copies key/value i of an open file verbatim (any type, arrays of strings included). */
int gguf_writer_copy_kv(gguf_writer *w, const gguf_file *src, int64_t i);
int gguf_writer_remove_key(gguf_writer *w, const char *key); /* IA_OK even if absent */

/* Adds a tensor; data is NOT copied and must stay valid until gguf_writer_write_file returns.
 * ne[0] must be a multiple of the type's block size; names must be unique and < GGUF_MAX_NAME. */
int gguf_writer_add_tensor(gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                           const int64_t *ne, const void *data, ia_error *err);
/* Same, the bytes produced by fill() at write time. */
int gguf_writer_add_tensor_fill(gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                                const int64_t *ne, gguf_tensor_fill_fn fill, void *ud, ia_error *err);

/* Writes a GGUF v3 file that ggml's reader accepts (offsets the running sum of padded sizes in
 * tensor order, alignment from general.alignment or 32). Written to "<path>.tmp" then renamed, so
 * a crash never leaves a half-written file under the final name. */
int gguf_writer_write_file(gguf_writer *w, const char *path, ia_error *err);

#endif /* IA_GGUF_H */
