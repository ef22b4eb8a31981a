/* gguf_internal.h — the parsed-file structures and little-endian helpers shared by the GGUF reader
 * and writer (not for use outside src/gguf/). */
#ifndef IA_GGUF_INTERNAL_H
#define IA_GGUF_INTERNAL_H

#include "gguf/gguf.h"

/* Byte-wise little-endian loads and stores: file data is unaligned and the format is LE whatever
 * the host is. */
static inline uint16_t gguf_le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t gguf_le32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t gguf_le64(const uint8_t *p) { return (uint64_t)gguf_le32(p) | ((uint64_t)gguf_le32(p + 4) << 32); }
static inline void gguf_put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline void gguf_put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* Bytes of one element of a fixed-size type; 0 for string, array and invalid ids. */
size_t gguf_type_size(gguf_type t);

/* The serialized value of KV i exactly as stored (everything after its type field). */
const void *gguf_kv_value_bytes(const gguf_file *f, int64_t i, size_t *len);

typedef struct gguf_kv {
    char *key;              /* NUL-terminated copy */
    gguf_type type;
    gguf_type arr_type;     /* arrays: element type */
    uint64_t n;             /* arrays: element count; scalars: 1 */
    const uint8_t *val;     /* the serialized value in the buffer (after the type field) ... */
    size_t val_len;         /* ... and its length: copy_kv writes exactly these bytes */
    const uint8_t *data;    /* scalar value bytes, string bytes, or an array's first element */
    char *str;              /* string scalars: NUL-terminated copy */
    uint64_t *str_off;      /* string arrays: each element's length field, relative to data */
} gguf_kv;

typedef struct gguf_tensor {
    gguf_tensor_info info;
    char name[GGUF_MAX_NAME];
} gguf_tensor;

typedef struct gguf_name_index {
    size_t *slots;          /* index+1, 0 = empty */
    size_t cap;             /* power of two or 0 */
    size_t n;
} gguf_name_index;

struct gguf_file {
    char *path;             /* path or buffer name, first in every message */
    const uint8_t *base;
    size_t size;
    bool mapped;            /* base is our mmap (unmapped on free) */
    uint32_t version;
    size_t alignment;
    size_t data_offset;     /* start of the data section in the file */
    gguf_kv *kvs;
    size_t n_kv;
    gguf_tensor *tensors;
    size_t n_tensors;
    gguf_name_index kv_index;
    gguf_name_index tensor_index;
};

#endif /* IA_GGUF_INTERNAL_H */
