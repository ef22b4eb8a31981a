/* test_gguf.c — GGUF reader/writer tests: the shipped files, writer round trips checked by the C
 * reader and by the independent Python reader (tests/ref/gguf.py), one hand-made corrupt file per
 * failure category, truncations, and allocation-failure loops. */
#include "test_util.h"

#include "gguf/gguf.h"
#include "gguf/gguf_internal.h"
#include "tensor/tensor.h"

#include <inttypes.h>
#include <sys/stat.h>

#define GPT2_VOCAB TEST_DATA "/tokenizer/ggml-vocab-gpt-2.gguf"

/* ============================= byte builder for hand-made files ============================= */

typedef struct bb {
    uint8_t *p;
    size_t n, cap;
} bb;

static void bb_bytes(bb *b, const void *s, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}
static void bb_u8(bb *b, uint8_t v) { bb_bytes(b, &v, 1); }
static void bb_u32(bb *b, uint32_t v) {
    uint8_t t[4];
    gguf_put32(t, v);
    bb_bytes(b, t, 4);
}
static void bb_u64(bb *b, uint64_t v) {
    uint8_t t[8];
    gguf_put64(t, v);
    bb_bytes(b, t, 8);
}
static void bb_strn(bb *b, const char *s, size_t n) {
    bb_u64(b, n);
    bb_bytes(b, s, n);
}
static void bb_str(bb *b, const char *s) { bb_strn(b, s, strlen(s)); }
static void bb_pad(bb *b, size_t a) {
    while (b->n % a) bb_u8(b, 0);
}

/* A heap copy of exactly n bytes, so AddressSanitizer sees any read past the end. */
static uint8_t *exact_copy(const void *p, size_t n) {
    uint8_t *c = malloc(n ? n : 1);
    assert_non_null(c);
    if (n) memcpy(c, p, n);
    return c;
}

/* ================================ corrupt-file categories ================================ */

enum variant {
    V_OK, V_VER2, V_ALIGN_64, V_BOOL_OK, V_NESTED_OK, V_NAME_63, V_NO_FINAL_PAD, V_ZERO_DIM, /* valid */
    V_FIRST_BAD,
    V_MAGIC = V_FIRST_BAD, V_SHORT, V_VER0, V_VER1, V_VER4, V_ENDIAN, V_HUGE_T, V_HUGE_KV, V_BAD_KV_TYPE,
    V_BAD_ARR_TYPE, V_BOOL_BAD, V_BOOL_ARR_BAD, V_STR_EOF, V_KEY_EOF, V_ARR_EOF, V_STRARR_EOF, V_KEY_NUL, V_DUP_KEY,
    V_NESTED_DEEP, V_NESTED_BAD_TYPE, V_ALIGN_I32, V_ALIGN_U64, V_ALIGN_NPOT, V_ALIGN_ZERO, V_TNAME_EOF, V_NAME_LONG,
    V_NAME_NUL, V_DUP_NAME, V_NDIMS0, V_NDIMS5, V_NEG_DIM, V_TYPE_UNKNOWN, V_TYPE_REMOVED, V_TYPE_37, V_TYPE_HUGE,
    V_BLOCK, V_NEL_OVERFLOW, V_BYTES_OVERFLOW, V_MISALIGNED, V_OFFSET_SUM, V_OFFSET_FIRST, V_DATA_EOF, V_DATA_HUGE,
    V_NO_DATA_SECTION,
    V_COUNT
};

typedef struct variant_case {
    int v;
    const char *name;
    const char *expect; /* substring of the error message (NULL for valid files) */
} variant_case;

static const variant_case variant_cases[] = {
    {V_OK, "base", NULL},
    {V_VER2, "version_2", NULL},
    {V_ALIGN_64, "alignment_64", NULL},
    {V_BOOL_OK, "bool", NULL},
    {V_NESTED_OK, "nested_array", NULL},
    {V_NAME_63, "tensor_name_63_bytes", NULL},
    {V_NO_FINAL_PAD, "without_final_padding", NULL},
    {V_ZERO_DIM, "zero_sized_dim", NULL},
    {V_MAGIC, "bad_magic", "bad magic"},
    {V_SHORT, "shorter_than_magic", "too short"},
    {V_VER0, "version_0", "version 0 is invalid"},
    {V_VER1, "version_1", "GGUFv1 is no longer supported"},
    {V_VER4, "version_4", "version 4 is newer"},
    {V_ENDIAN, "version_byteswapped", "endianness mismatch"},
    {V_HUGE_T, "huge_tensor_count", "tensor count 1152921504606846976 is implausible"},
    {V_HUGE_KV, "huge_kv_count", "key/value count 1152921504606846976 is implausible"},
    {V_BAD_KV_TYPE, "bad_kv_type", "key 'test.u32' has invalid value type 13"},
    {V_BAD_ARR_TYPE, "bad_array_elem_type", "array of key 'test.arr' has invalid element type 13"},
    {V_BOOL_BAD, "bad_bool_byte", "key 'test.bool' has invalid bool value 2"},
    {V_BOOL_ARR_BAD, "bad_bool_in_array", "invalid bool value 3 in element 2 of array of key 'test.bools'"},
    {V_STR_EOF, "string_past_eof", "string value of key 'general.architecture' at offset 56: string length 1099511627776 runs past the end"},
    {V_KEY_EOF, "key_past_eof", "key 3 of 4 at offset 137: string length 1099511627776 runs past the end"},
    {V_ARR_EOF, "array_past_eof", "array of key 'test.big' of 1099511627776 u32 elements"},
    {V_STRARR_EOF, "string_array_past_eof", "array string of key 'test.strs'"},
    {V_KEY_NUL, "key_with_nul", "contains a NUL byte"},
    {V_DUP_KEY, "duplicate_key", "duplicate key 'general.architecture'"},
    {V_NESTED_DEEP, "nested_array_too_deep", "nested deeper than"},
    {V_NESTED_BAD_TYPE, "nested_array_bad_type", "nested array of key 'test.nested' has invalid element type 77"},
    {V_ALIGN_I32, "alignment_i32", "general.alignment must be u32, not i32"},
    {V_ALIGN_U64, "alignment_u64", "general.alignment must be u32, not u64"},
    {V_ALIGN_NPOT, "alignment_not_pow2", "general.alignment 24 is not a non-zero power of two"},
    {V_ALIGN_ZERO, "alignment_zero", "general.alignment 0 is not a non-zero power of two"},
    {V_TNAME_EOF, "tensor_name_past_eof", "name of tensor 0 of 2"},
    {V_NAME_LONG, "tensor_name_too_long", "name of 64 bytes"},
    {V_NAME_NUL, "tensor_name_with_nul", "name contains a NUL byte"},
    {V_DUP_NAME, "duplicate_tensor_name", "duplicate tensor name 'a'"},
    {V_NDIMS0, "n_dims_0", "tensor 'a' has 0 dimensions"},
    {V_NDIMS5, "n_dims_5", "tensor 'a' has 5 dimensions"},
    {V_NEG_DIM, "negative_dim", "tensor 'a': ne[0] = -1 is negative"},
    {V_TYPE_UNKNOWN, "unknown_type_id", "tensor 'a' has unknown type id 99"},
    {V_TYPE_REMOVED, "removed_type_id", "tensor 'a' has unknown type id 4 (removed"},
    {V_TYPE_37, "removed_type_id_37", "tensor 'a' has unknown type id 37"},
    {V_TYPE_HUGE, "type_id_u32_max", "unknown type id 4294967295"},
    {V_BLOCK, "ne0_not_block_multiple", "tensor 'b' (Q4_0): ne[0] = 33 is not a multiple of the block size 32"},
    {V_NEL_OVERFLOW, "element_count_overflow", "tensor 'b': element count"},
    {V_BYTES_OVERFLOW, "byte_size_overflow", "tensor 'b': byte size"},
    {V_MISALIGNED, "misaligned_offset", "tensor 'b': offset 40 is not a multiple of the alignment 32"},
    {V_OFFSET_SUM, "offset_not_running_sum", "tensor 'b': offset 64, expected 32"},
    {V_OFFSET_FIRST, "first_offset_not_zero", "tensor 'a': offset 32, expected 0"},
    {V_DATA_EOF, "data_past_eof", "tensor 'b': data [256, 280) runs past the end of the file (276 bytes)"},
    {V_DATA_HUGE, "data_far_past_eof", "tensor 'b': data"},
    {V_NO_DATA_SECTION, "data_section_past_eof", "data section would start at offset 224"},
};

/* Builds the base file (3 KVs, tensors a: F32 {8} and b: F16 {4,3}) with the change `v` makes. */
static void build_variant(bb *b, int v) {
    if (v == V_SHORT) {
        bb_bytes(b, "GG", 2);
        return;
    }
    bb_bytes(b, v == V_MAGIC ? "GGUG" : "GGUF", 4);
    uint32_t ver = v == V_VER0 ? 0 : v == V_VER1 ? 1 : v == V_VER4 ? 4 : v == V_ENDIAN ? 0x03000000u : v == V_VER2 ? 2 : 3;
    bb_u32(b, ver);
    bool extra = v == V_ALIGN_64 || v == V_BOOL_OK || v == V_NESTED_OK || v == V_BOOL_BAD || v == V_BOOL_ARR_BAD ||
                 v == V_KEY_EOF || v == V_ARR_EOF || v == V_STRARR_EOF || v == V_KEY_NUL || v == V_NESTED_DEEP ||
                 v == V_NESTED_BAD_TYPE || v == V_ALIGN_I32 || v == V_ALIGN_U64 || v == V_ALIGN_NPOT ||
                 v == V_ALIGN_ZERO;
    bb_u64(b, v == V_HUGE_T ? 1ull << 60 : 2);
    bb_u64(b, v == V_HUGE_KV ? 1ull << 60 : extra ? 4 : 3);
    size_t align = v == V_ALIGN_64 ? 64 : 32;

    bb_str(b, "general.architecture");
    bb_u32(b, GGUF_TYPE_STRING);
    if (v == V_STR_EOF) bb_u64(b, 1ull << 40);
    bb_str(b, "llama");

    bb_str(b, v == V_DUP_KEY ? "general.architecture" : "test.u32");
    bb_u32(b, v == V_BAD_KV_TYPE ? 13 : GGUF_TYPE_UINT32);
    bb_u32(b, 7);

    bb_str(b, "test.arr");
    bb_u32(b, GGUF_TYPE_ARRAY);
    bb_u32(b, v == V_BAD_ARR_TYPE ? 13 : GGUF_TYPE_INT32);
    bb_u64(b, 3);
    for (int i = 1; i <= 3; i++) bb_u32(b, (uint32_t)-i);

    if (extra) {
        switch (v) {
        case V_ALIGN_64: case V_ALIGN_I32: case V_ALIGN_U64: case V_ALIGN_NPOT: case V_ALIGN_ZERO:
            bb_str(b, "general.alignment");
            if (v == V_ALIGN_U64) {
                bb_u32(b, GGUF_TYPE_UINT64);
                bb_u64(b, 32);
            } else {
                bb_u32(b, v == V_ALIGN_I32 ? GGUF_TYPE_INT32 : GGUF_TYPE_UINT32);
                bb_u32(b, v == V_ALIGN_64 ? 64 : v == V_ALIGN_NPOT ? 24 : v == V_ALIGN_ZERO ? 0 : 32);
            }
            break;
        case V_BOOL_OK: case V_BOOL_BAD:
            bb_str(b, "test.bool");
            bb_u32(b, GGUF_TYPE_BOOL);
            bb_u8(b, v == V_BOOL_OK ? 1 : 2);
            break;
        case V_BOOL_ARR_BAD:
            bb_str(b, "test.bools");
            bb_u32(b, GGUF_TYPE_ARRAY);
            bb_u32(b, GGUF_TYPE_BOOL);
            bb_u64(b, 3);
            bb_u8(b, 0), bb_u8(b, 1), bb_u8(b, 3);
            break;
        case V_NESTED_OK: case V_NESTED_BAD_TYPE:
            bb_str(b, "test.nested");
            bb_u32(b, GGUF_TYPE_ARRAY);
            bb_u32(b, GGUF_TYPE_ARRAY);
            bb_u64(b, 2);
            bb_u32(b, GGUF_TYPE_UINT8), bb_u64(b, 2), bb_u8(b, 1), bb_u8(b, 2);
            bb_u32(b, v == V_NESTED_OK ? GGUF_TYPE_STRING : 77), bb_u64(b, 1), bb_str(b, "x");
            break;
        case V_NESTED_DEEP:
            bb_str(b, "test.deep");
            bb_u32(b, GGUF_TYPE_ARRAY);
            for (int d = 0; d < 20; d++) bb_u32(b, GGUF_TYPE_ARRAY), bb_u64(b, 1);
            bb_u32(b, GGUF_TYPE_UINT8), bb_u64(b, 0);
            break;
        case V_KEY_EOF:
            bb_u64(b, 1ull << 40);
            break;
        case V_ARR_EOF:
            bb_str(b, "test.big");
            bb_u32(b, GGUF_TYPE_ARRAY);
            bb_u32(b, GGUF_TYPE_UINT32);
            bb_u64(b, 1ull << 40);
            break;
        case V_STRARR_EOF:
            bb_str(b, "test.strs");
            bb_u32(b, GGUF_TYPE_ARRAY);
            bb_u32(b, GGUF_TYPE_STRING);
            bb_u64(b, 2);
            bb_str(b, "ok");
            bb_u64(b, 1ull << 40);
            break;
        case V_KEY_NUL:
            bb_strn(b, "te\0st", 5);
            bb_u32(b, GGUF_TYPE_UINT8);
            bb_u8(b, 1);
            break;
        }
    }

    /* tensor a: F32 {8} */
    if (v == V_TNAME_EOF) bb_u64(b, 1ull << 40);
    if (v == V_NAME_LONG || v == V_NAME_63) {
        char name[65];
        memset(name, 'x', sizeof name);
        bb_strn(b, name, v == V_NAME_LONG ? 64 : 63);
    } else if (v == V_NAME_NUL) {
        bb_strn(b, "a\0z", 3);
    } else {
        bb_str(b, "a");
    }
    bb_u32(b, v == V_NDIMS0 ? 0 : v == V_NDIMS5 ? 5 : 1);
    bb_u64(b, v == V_NEG_DIM ? UINT64_MAX : 8);
    if (v == V_NDIMS5) for (int d = 0; d < 4; d++) bb_u64(b, 1);
    bb_u32(b, v == V_TYPE_UNKNOWN ? 99 : v == V_TYPE_REMOVED ? 4 : v == V_TYPE_37 ? 37 : v == V_TYPE_HUGE ? UINT32_MAX : 0);
    bb_u64(b, v == V_OFFSET_FIRST ? 32 : 0);

    /* tensor b: F16 {4,3} */
    bb_str(b, v == V_DUP_NAME ? "a" : "b");
    if (v == V_NEL_OVERFLOW) {
        bb_u32(b, 3), bb_u64(b, 1ull << 32), bb_u64(b, 1ull << 32), bb_u64(b, 4);
        bb_u32(b, 0);
    } else if (v == V_BYTES_OVERFLOW) {
        bb_u32(b, 2), bb_u64(b, 1ull << 31), bb_u64(b, 1ull << 31);
        bb_u32(b, 28 /* F64 */);
    } else if (v == V_BLOCK) {
        bb_u32(b, 2), bb_u64(b, 33), bb_u64(b, 1);
        bb_u32(b, 2 /* Q4_0 */);
    } else if (v == V_DATA_HUGE) {
        bb_u32(b, 2), bb_u64(b, 4), bb_u64(b, 1ull << 40);
        bb_u32(b, 1);
    } else if (v == V_ZERO_DIM) {
        bb_u32(b, 2), bb_u64(b, 4), bb_u64(b, 0);
        bb_u32(b, 1);
    } else {
        bb_u32(b, 2), bb_u64(b, 4), bb_u64(b, 3);
        bb_u32(b, 1);
    }
    bb_u64(b, v == V_MISALIGNED ? 40 : v == V_OFFSET_SUM ? 64 : align == 64 ? 64 : 32);
    if (v == V_NO_DATA_SECTION) return;
    bb_pad(b, align);

    float a[8];
    for (int i = 0; i < 8; i++) a[i] = (float)i * 0.5f - 1.0f;
    bb_bytes(b, a, sizeof a);
    bb_pad(b, align);
    if (v == V_ZERO_DIM) return;
    for (int i = 0; i < 12; i++) {
        uint16_t h = ia_fp32_to_fp16((float)i / 4.0f);
        bb_bytes(b, &h, 2);
    }
    if (v == V_DATA_EOF) b->n -= 4;
    if (v != V_DATA_EOF && v != V_NO_FINAL_PAD) bb_pad(b, align);
}

/* Checks the contents every valid variant shares. */
static void check_base_contents(const gguf_file *f, int v) {
    ia_error err = {0};
    const char *s;
    assert_int_equal(gguf_find_str(f, "general.architecture", &s, &err), 1);
    assert_string_equal(s, "llama");
    uint64_t u;
    assert_int_equal(gguf_find_u64(f, "test.u32", &u, &err), 1);
    assert_int_equal(u, 7);
    int64_t ai = gguf_kv_find(f, "test.arr");
    assert_true(ai >= 0);
    assert_int_equal(gguf_kv_arr_type(f, ai), GGUF_TYPE_INT32);
    assert_int_equal(gguf_kv_arr_n(f, ai), 3);
    for (uint64_t j = 0; j < 3; j++) {
        int64_t x;
        assert_int_equal(gguf_kv_get_arr_i64(f, ai, j, &x, &err), IA_OK);
        assert_int_equal(x, -(int64_t)j - 1);
    }
    assert_int_equal(gguf_tensor_count(f), 2);
    const gguf_tensor_info *a = gguf_tensor_get(f, 0);
    assert_int_equal(a->type, 0);
    assert_int_equal(a->n_dims, 1);
    assert_int_equal(a->ne[0], 8);
    assert_int_equal(a->ne[1], 1);
    assert_int_equal(a->nbytes, 32);
    float av[8];
    memcpy(av, a->data, 32);
    for (int i = 0; i < 8; i++) assert_true(av[i] == (float)i * 0.5f - 1.0f);
    const gguf_tensor_info *b = gguf_tensor_find(f, "b");
    assert_non_null(b);
    assert_ptr_equal(b, gguf_tensor_get(f, 1));
    assert_int_equal(b->type, 1);
    if (v == V_ZERO_DIM) {
        assert_int_equal(b->ne[1], 0);
        assert_int_equal(b->nbytes, 0);
    } else {
        assert_int_equal(b->nbytes, 24);
        for (int i = 0; i < 12; i++) {
            uint16_t h;
            memcpy(&h, (const uint8_t *)b->data + 2 * i, 2);
            assert_true(ia_fp16_to_fp32(h) == (float)i / 4.0f);
        }
    }
    assert_int_equal(b->offset, gguf_file_alignment(f) == 64 ? 64 : 32);
}

static void test_variant(void **state) {
    const variant_case *c = *state;
    bb b = {0};
    build_variant(&b, c->v);
    uint8_t *buf = exact_copy(b.p, b.n);
    ia_error err = {0};
    gguf_file *f = gguf_file_open_buffer(buf, b.n, "corrupt.gguf", &err);
    if (!c->expect) {
        if (!f) fail_msg("valid variant %s rejected: %s", c->name, err.msg);
        assert_int_equal(gguf_file_version(f), c->v == V_VER2 ? 2 : 3);
        assert_int_equal(gguf_file_alignment(f), c->v == V_ALIGN_64 ? 64 : 32);
        check_base_contents(f, c->v);
        if (c->v == V_BOOL_OK) {
            bool bv = false;
            assert_int_equal(gguf_find_bool(f, "test.bool", &bv, &err), 1);
            assert_true(bv);
        }
        if (c->v == V_NESTED_OK) {
            int64_t i = gguf_kv_find(f, "test.nested");
            assert_int_equal(gguf_kv_arr_type(f, i), GGUF_TYPE_ARRAY);
            assert_int_equal(gguf_kv_arr_n(f, i), 2);
            int64_t x;
            assert_int_equal(gguf_kv_get_arr_i64(f, i, 0, &x, &err), IA_ERR_FORMAT);
            assert_null(gguf_kv_get_arr_str(f, i, 0, NULL));
            assert_null(gguf_kv_raw(f, i));
        }
        gguf_file_free(f);
    } else {
        if (f) fail_msg("corrupt variant %s accepted", c->name);
        assert_int_equal(err.code, IA_ERR_FORMAT);
        if (strncmp(err.msg, "corrupt.gguf: ", 14) != 0) fail_msg("message does not start with the name: %s", err.msg);
        if (!strstr(err.msg, c->expect)) fail_msg("message '%s' lacks '%s'", err.msg, c->expect);
        assert_null(strchr(err.msg, '\n'));
    }
    free(buf);
    free(b.p);
}

/* Every proper prefix of the base file that cuts into data it needs is refused cleanly. */
static void test_truncated_every_length(void **state) {
    (void)state;
    bb b = {0};
    build_variant(&b, V_OK);
    size_t needed = b.n - 8; /* the final 8 bytes are padding after the last tensor */
    for (size_t len = 0; len < b.n; len++) {
        uint8_t *buf = exact_copy(b.p, len);
        ia_error err = {0};
        gguf_file *f = gguf_file_open_buffer(buf, len, "trunc.gguf", &err);
        if (len < needed) {
            if (f) fail_msg("prefix of %zu bytes accepted", len);
            assert_int_equal(err.code, IA_ERR_FORMAT);
            if (!strstr(err.msg, "end of file") && !strstr(err.msg, "past the end") && !strstr(err.msg, "too short") &&
                !strstr(err.msg, "implausible"))
                fail_msg("prefix of %zu bytes: unexpected message '%s'", len, err.msg);
        } else {
            assert_non_null(f);
            check_base_contents(f, V_OK);
        }
        gguf_file_free(f);
        free(buf);
    }
    free(b.p);
}

/* ==================================== shipped files ==================================== */

static void test_stories260k(void **state) {
    (void)state;
    ia_error err = {0};
    gguf_file *f = gguf_file_open(TEST_STORIES, &err);
    if (!f) fail_msg("%s", err.msg);
    assert_string_equal(gguf_file_path(f), TEST_STORIES);
    assert_int_equal(gguf_file_version(f), 3);
    assert_int_equal(gguf_file_alignment(f), 32);
    assert_int_equal(gguf_file_size(f), 1185376);
    assert_int_equal(gguf_kv_count(f), 19);
    assert_int_equal(gguf_tensor_count(f), 48);
    uint64_t u;
    struct { const char *key; uint64_t v; } ints[] = {
        {"llama.embedding_length", 64}, {"llama.block_count", 5}, {"llama.attention.head_count", 8},
        {"llama.attention.head_count_kv", 4}, {"llama.context_length", 2048}, {"llama.feed_forward_length", 172},
        {"llama.rope.dimension_count", 8}, {"tokenizer.ggml.bos_token_id", 1}, {"tokenizer.ggml.eos_token_id", 2},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        assert_int_equal(gguf_find_u64(f, ints[i].key, &u, &err), 1);
        assert_int_equal(u, ints[i].v);
        assert_int_equal(gguf_kv_type(f, gguf_kv_find(f, ints[i].key)), GGUF_TYPE_UINT32);
    }
    double eps;
    assert_int_equal(gguf_find_f64(f, "llama.attention.layer_norm_rms_epsilon", &eps, &err), 1);
    assert_true(eps == (double)1e-5f);
    const char *s;
    assert_int_equal(gguf_find_str(f, "general.architecture", &s, &err), 1);
    assert_string_equal(s, "llama");
    assert_int_equal(gguf_find_str(f, "tokenizer.ggml.model", &s, &err), 1);
    assert_string_equal(s, "llama");
    int64_t tok = gguf_kv_find(f, "tokenizer.ggml.tokens");
    assert_int_equal(gguf_kv_type(f, tok), GGUF_TYPE_ARRAY);
    assert_int_equal(gguf_kv_arr_type(f, tok), GGUF_TYPE_STRING);
    assert_int_equal(gguf_kv_arr_n(f, tok), 512);
    size_t len;
    const char *t1 = gguf_kv_get_arr_str(f, tok, 1, &len);
    assert_int_equal(len, 3);
    assert_memory_equal(t1, "<s>", 3);
    assert_null(gguf_kv_get_arr_str(f, tok, 512, &len));
    int64_t sc = gguf_kv_find(f, "tokenizer.ggml.scores");
    assert_int_equal(gguf_kv_arr_type(f, sc), GGUF_TYPE_FLOAT32);
    assert_int_equal(gguf_kv_arr_n(f, sc), 512);
    int64_t tt = gguf_kv_find(f, "tokenizer.ggml.token_type");
    int64_t x;
    assert_int_equal(gguf_kv_get_arr_i64(f, tt, 0, &x, &err), IA_OK);
    assert_int_equal(x, 2); /* <unk> is UNKNOWN */
    assert_int_equal(gguf_kv_find(f, "no.such.key"), -1);
    assert_int_equal(gguf_find_u64(f, "no.such.key", &u, &err), 0);

    const uint8_t *base = (const uint8_t *)gguf_tensor_get(f, 0)->data;
    for (int64_t i = 0; i < 48; i++) {
        const gguf_tensor_info *t = gguf_tensor_get(f, i);
        assert_int_equal(t->type, 0);
        assert_int_equal((uintptr_t)t->data % 32, 0);
        assert_ptr_equal((const uint8_t *)t->data, base + t->offset);
        assert_ptr_equal(gguf_tensor_find(f, t->name), t);
        int64_t nel = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
        assert_int_equal(t->nbytes, (size_t)nel * 4);
    }
    assert_null(gguf_tensor_get(f, 48));
    assert_null(gguf_tensor_get(f, -1));
    const gguf_tensor_info *emb = gguf_tensor_find(f, "token_embd.weight");
    assert_non_null(emb);
    assert_int_equal(emb->n_dims, 2);
    assert_int_equal(emb->ne[0], 64);
    assert_int_equal(emb->ne[1], 512);
    assert_non_null(gguf_tensor_find(f, "blk.4.ffn_down.weight"));
    assert_null(gguf_tensor_find(f, "blk.5.ffn_down.weight"));
    const gguf_tensor_info *last = gguf_tensor_get(f, 47);
    assert_true((const uint8_t *)last->data + last->nbytes <= base - 0 + (gguf_file_size(f)));
    gguf_file_free(f);
}

static void test_gpt2_vocab(void **state) {
    (void)state;
    ia_error err = {0};
    gguf_file *f = gguf_file_open(GPT2_VOCAB, &err);
    if (!f) fail_msg("%s", err.msg);
    assert_int_equal(gguf_tensor_count(f), 0);
    int64_t tok = gguf_kv_find(f, "tokenizer.ggml.tokens");
    int64_t mer = gguf_kv_find(f, "tokenizer.ggml.merges");
    assert_int_equal(gguf_kv_arr_n(f, tok), 50257);
    assert_int_equal(gguf_kv_arr_n(f, mer), 50000);
    size_t len;
    const char *s = gguf_kv_get_arr_str(f, tok, 0, &len);
    assert_int_equal(len, 1);
    assert_memory_equal(s, "!", 1);
    s = gguf_kv_get_arr_str(f, tok, 50256, &len);
    assert_int_equal(len, 13);
    assert_memory_equal(s, "<|endoftext|>", 13);
    s = gguf_kv_get_arr_str(f, mer, 0, &len);
    assert_int_equal(len, 4);
    assert_memory_equal(s, "\xc4\xa0 t", 4); /* "Ġ t" */
    uint64_t u;
    assert_int_equal(gguf_find_u64(f, "tokenizer.ggml.eos_token_id", &u, &err), 1);
    assert_int_equal(u, 50256);
    const char *pre;
    assert_int_equal(gguf_find_str(f, "tokenizer.ggml.pre", &pre, &err), 1);
    assert_string_equal(pre, "gpt-2");
    gguf_file_free(f);
}

static void test_open_errors(void **state) {
    (void)state;
    ia_error err = {0};
    assert_null(gguf_file_open("tests/tmp/does-not-exist.gguf", &err));
    assert_int_equal(err.code, IA_ERR_IO);
    assert_non_null(strstr(err.msg, "tests/tmp/does-not-exist.gguf: "));
    assert_null(gguf_file_open("tests", &err));
    assert_int_equal(err.code, IA_ERR_IO);
    char path[512];
    test_tmpfile(path, sizeof path, "empty.gguf");
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    fclose(fp);
    assert_null(gguf_file_open(path, &err));
    assert_int_equal(err.code, IA_ERR_FORMAT);
    assert_int_equal(strncmp(err.msg, path, strlen(path)), 0);
    /* a corrupt file on disk: the message starts with its path */
    bb b = {0};
    build_variant(&b, V_DUP_NAME);
    test_tmpfile(path, sizeof path, "dup.gguf");
    fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(b.p, 1, b.n, fp), b.n);
    fclose(fp);
    free(b.p);
    assert_null(gguf_file_open(path, &err));
    assert_int_equal(err.code, IA_ERR_FORMAT);
    char want[600];
    snprintf(want, sizeof want, "%s: duplicate tensor name 'a'", path);
    assert_string_equal(err.msg, want);
    assert_null(gguf_file_open_buffer(NULL, 5, "null", &err));
    assert_int_equal(err.code, IA_ERR_ARG);
    assert_null(gguf_file_open_buffer(NULL, 0, NULL, &err));
    assert_int_equal(err.code, IA_ERR_FORMAT);
    gguf_file_free(NULL);
}

/* stories260K cut at many lengths: always a clean IA_ERR_FORMAT (the whole file loads). */
static void test_stories_truncated(void **state) {
    (void)state;
    ia_error err = {0};
    size_t size;
    char *all = ia_file_read(TEST_STORIES, &size, &err);
    assert_non_null(all);
    const gguf_file *probe = NULL;
    (void)probe;
    size_t step = 1;
    int rejected = 0;
    for (size_t len = 0; len < size; len += step) {
        if (len > 20000) step = 997;
        uint8_t *buf = exact_copy(all, len);
        gguf_file *f = gguf_file_open_buffer(buf, len, "stories-cut", &err);
        if (f) fail_msg("stories260K cut at %zu bytes was accepted", len);
        assert_int_equal(err.code, IA_ERR_FORMAT);
        assert_int_equal(strncmp(err.msg, "stories-cut: ", 13), 0);
        rejected++;
        free(buf);
    }
    assert_true(rejected > 20000);
    /* the last tensor ends exactly at the end of the file: one byte less is refused */
    uint8_t *buf = exact_copy(all, size - 1);
    assert_null(gguf_file_open_buffer(buf, size - 1, "stories-cut", &err));
    assert_non_null(strstr(err.msg, "runs past the end of the file"));
    free(buf);
    buf = exact_copy(all, size);
    gguf_file *f = gguf_file_open_buffer(buf, size, "stories", &err);
    assert_non_null(f);
    gguf_file_free(f);
    free(buf);
    ia_free(all);
}

/* Every allocation the reader makes may fail: the result is IA_ERR_NOMEM and nothing leaks. */
static void alloc_fail_loop(const char *path) {
    ia_error err = {0};
    long n;
    for (n = 1; n < 100000; n++) {
        ia_mem_fail_after(n, false);
        gguf_file *f = gguf_file_open(path, &err);
        ia_mem_fail_after(0, false);
        if (f) {
            gguf_file_free(f);
            break;
        }
        if (err.code != IA_ERR_NOMEM) fail_msg("allocation %ld failing gave %s: %s", n, ia_result_name(err.code), err.msg);
        assert_non_null(strstr(err.msg, "out of memory"));
    }
    assert_true(n > 3 && n < 100000);
}

static void test_alloc_failures_reader(void **state) {
    (void)state;
    alloc_fail_loop(TEST_STORIES);
    alloc_fail_loop(GPT2_VOCAB);
}

/* ==================================== writer round trip ==================================== */

typedef struct fill_ctx {
    int calls;
    bool fail;
} fill_ctx;

static uint8_t pattern_byte(const char *name, size_t i) { return (uint8_t)(i * 7 + (uint8_t)name[0] * 13 + i / 251); }

static int fill_pattern(void *ud, const char *name, void *dst, size_t nbytes, ia_error *err) {
    fill_ctx *c = ud;
    c->calls++;
    if (c->fail) return ia_error_set(err, IA_ERR_INTERNAL, "boom");
    for (size_t i = 0; i < nbytes; i++) ((uint8_t *)dst)[i] = pattern_byte(name, i);
    return IA_OK;
}

static const char *const arr_strs[] = {"alpha", "", "with\0nul", "\xe2\x9c\x93 utf8"};
static const size_t arr_lens[] = {5, 0, 8, 8};

/* Fills w with one key per scalar type, arrays of every fixed type, string arrays and tensors of
 * several types and odd sizes. Tensor data lives in `store` (must outlive the write). */
typedef struct rt_store {
    float f32[21];
    uint16_t f16[5];
    int8_t i8[27];
    fill_ctx fill;
} rt_store;

static void writer_populate(gguf_writer *w, rt_store *st) {
    ia_error err = {0};
    assert_int_equal(gguf_writer_set_u32(w, "t.replace", 1), IA_OK); /* replaced below, keeps position 0 */
    assert_int_equal(gguf_writer_set_u8(w, "t.u8", 200), IA_OK);
    assert_int_equal(gguf_writer_set_i8(w, "t.i8", -100), IA_OK);
    assert_int_equal(gguf_writer_set_u16(w, "t.u16", 60000), IA_OK);
    assert_int_equal(gguf_writer_set_i16(w, "t.i16", -30000), IA_OK);
    assert_int_equal(gguf_writer_set_u32(w, "t.u32", 4000000000u), IA_OK);
    assert_int_equal(gguf_writer_set_i32(w, "t.i32", -2000000000), IA_OK);
    assert_int_equal(gguf_writer_set_u64(w, "t.u64", UINT64_MAX), IA_OK);
    assert_int_equal(gguf_writer_set_i64(w, "t.i64", INT64_MIN), IA_OK);
    assert_int_equal(gguf_writer_set_f32(w, "t.f32", 1.5f), IA_OK);
    assert_int_equal(gguf_writer_set_f64(w, "t.f64", -2.25e100), IA_OK);
    assert_int_equal(gguf_writer_set_bool(w, "t.true", true), IA_OK);
    assert_int_equal(gguf_writer_set_bool(w, "t.false", false), IA_OK);
    assert_int_equal(gguf_writer_set_str(w, "t.str", "hello \xc3\xa9"), IA_OK);
    assert_int_equal(gguf_writer_set_str(w, "t.empty", ""), IA_OK);
    assert_int_equal(gguf_writer_set_str(w, "t.removed", "gone"), IA_OK);
    uint8_t u8s[] = {1, 2, 255};
    int8_t i8s[] = {-128, 0, 127};
    uint16_t u16s[] = {0, 65535};
    int16_t i16s[] = {-32768, 32767, 5};
    uint32_t u32s[] = {0, 4294967295u};
    int32_t i32s[] = {INT32_MIN, -1, INT32_MAX};
    uint64_t u64s[] = {UINT64_MAX, 0, 42};
    int64_t i64s[] = {INT64_MIN, INT64_MAX};
    float f32s[] = {0.1f, -0.0f, 3e38f};
    double f64s[] = {1e-300, -1.0};
    uint8_t bools[] = {1, 0, 1, 1};
    assert_int_equal(gguf_writer_set_arr(w, "a.u8", GGUF_TYPE_UINT8, u8s, 3), IA_OK);
    assert_int_equal(gguf_writer_set_arr(w, "a.i8", GGUF_TYPE_INT8, i8s, 3), IA_OK);
    assert_int_equal(gguf_writer_set_arr(w, "a.u16", GGUF_TYPE_UINT16, u16s, 2), IA_OK);
    assert_int_equal(gguf_writer_set_arr(w, "a.i16", GGUF_TYPE_INT16, i16s, 3), IA_OK);
    assert_int_equal(gguf_writer_set_arr(w, "a.u32", GGUF_TYPE_UINT32, u32s, 2), IA_OK);
    assert_int_equal(gguf_writer_set_arr(w, "a.i32", GGUF_TYPE_INT32, i32s, 3), IA_OK);
    assert_int_equal(gguf_writer_set_arr(w, "a.u64", GGUF_TYPE_UINT64, u64s, 3), IA_OK);
    assert_int_equal(gguf_writer_set_arr(w, "a.i64", GGUF_TYPE_INT64, i64s, 2), IA_OK);
    assert_int_equal(gguf_writer_set_arr(w, "a.f32", GGUF_TYPE_FLOAT32, f32s, 3), IA_OK);
    assert_int_equal(gguf_writer_set_arr(w, "a.f64", GGUF_TYPE_FLOAT64, f64s, 2), IA_OK);
    assert_int_equal(gguf_writer_set_arr(w, "a.bool", GGUF_TYPE_BOOL, bools, 4), IA_OK);
    assert_int_equal(gguf_writer_set_arr(w, "a.empty", GGUF_TYPE_INT32, NULL, 0), IA_OK);
    assert_int_equal(gguf_writer_set_arr_str(w, "a.str", arr_strs, arr_lens, 4), IA_OK);
    assert_int_equal(gguf_writer_set_arr_str(w, "a.str_nul_terminated", arr_strs, NULL, 2), IA_OK);
    assert_int_equal(gguf_writer_set_str(w, "t.replace", "now a string"), IA_OK);
    assert_int_equal(gguf_writer_remove_key(w, "t.removed"), IA_OK);
    assert_int_equal(gguf_writer_remove_key(w, "t.never.set"), IA_OK);
    /* refused arguments */
    uint8_t badbool = 2;
    assert_int_equal(gguf_writer_set_arr(w, "a.badbool", GGUF_TYPE_BOOL, &badbool, 1), IA_ERR_ARG);
    assert_int_equal(gguf_writer_set_arr(w, "a.strs", GGUF_TYPE_STRING, arr_strs, 1), IA_ERR_ARG);
    assert_int_equal(gguf_writer_set_arr(w, "a.bad", (gguf_type)99, u8s, 1), IA_ERR_ARG);

    for (int i = 0; i < 21; i++) st->f32[i] = (float)i * 1.25f - 3.0f;
    for (int i = 0; i < 5; i++) st->f16[i] = ia_fp32_to_fp16((float)i - 2.5f);
    for (int i = 0; i < 27; i++) st->i8[i] = (int8_t)(i * 9 - 100);
    int64_t ne_f32[] = {7, 3}, ne_f16[] = {5}, ne_q8[] = {64, 3}, ne_q4k[] = {256, 1, 1, 2}, ne_i8[] = {3, 3, 3},
            ne_bf16[] = {1, 1, 1, 5}, ne_zero[] = {0, 4}, ne_q6k[] = {256, 3};
    assert_int_equal(gguf_writer_add_tensor(w, "f32.odd", 0, 2, ne_f32, st->f32, &err), IA_OK);
    assert_int_equal(gguf_writer_add_tensor(w, "f16.vec", 1, 1, ne_f16, st->f16, &err), IA_OK);
    assert_int_equal(gguf_writer_add_tensor_fill(w, "q8_0.mat", 8, 2, ne_q8, fill_pattern, &st->fill, &err), IA_OK);
    assert_int_equal(gguf_writer_add_tensor_fill(w, "q4_k.4d", 12, 4, ne_q4k, fill_pattern, &st->fill, &err), IA_OK);
    assert_int_equal(gguf_writer_add_tensor(w, "i8.cube", 24, 3, ne_i8, st->i8, &err), IA_OK);
    assert_int_equal(gguf_writer_add_tensor_fill(w, "bf16.col", 30, 4, ne_bf16, fill_pattern, &st->fill, &err), IA_OK);
    assert_int_equal(gguf_writer_add_tensor(w, "zero.sized", 0, 2, ne_zero, NULL, &err), IA_OK);
    assert_int_equal(gguf_writer_add_tensor_fill(w, "q6_k.mat", 14, 2, ne_q6k, fill_pattern, &st->fill, &err), IA_OK);
    /* refused tensors */
    char longname[80];
    memset(longname, 'n', sizeof longname);
    longname[64] = 0;
    int64_t ne_bad[] = {33};
    assert_int_equal(gguf_writer_add_tensor(w, longname, 0, 1, ne_f16, st->f32, &err), IA_ERR_ARG);
    assert_non_null(strstr(err.msg, "too long"));
    assert_int_equal(gguf_writer_add_tensor(w, "f16.vec", 0, 1, ne_f16, st->f32, &err), IA_ERR_ARG);
    assert_non_null(strstr(err.msg, "duplicate tensor name 'f16.vec'"));
    assert_int_equal(gguf_writer_add_tensor(w, "q", 2, 1, ne_bad, st->f32, &err), IA_ERR_ARG);
    assert_non_null(strstr(err.msg, "block size"));
    assert_int_equal(gguf_writer_add_tensor(w, "u", 37, 1, ne_f16, st->f32, &err), IA_ERR_ARG);
    assert_non_null(strstr(err.msg, "unknown type id 37"));
    assert_int_equal(gguf_writer_add_tensor(w, "d", 0, 5, ne_q4k, st->f32, &err), IA_ERR_ARG);
    assert_int_equal(gguf_writer_add_tensor(w, "d", 0, 0, ne_q4k, st->f32, &err), IA_ERR_ARG);
}

static void check_pattern(const gguf_tensor_info *t) {
    for (size_t i = 0; i < t->nbytes; i++)
        if (((const uint8_t *)t->data)[i] != pattern_byte(t->name, i)) fail_msg("tensor %s byte %zu differs", t->name, i);
}

static void writer_check(const gguf_file *f, const rt_store *st, size_t align) {
    ia_error err = {0};
    assert_int_equal(gguf_file_version(f), 3);
    assert_int_equal(gguf_file_alignment(f), align);
    assert_int_equal(gguf_kv_find(f, "t.replace"), 0);
    assert_int_equal(gguf_kv_type(f, 0), GGUF_TYPE_STRING);
    assert_int_equal(gguf_kv_find(f, "t.removed"), -1);
    const char *s;
    assert_int_equal(gguf_find_str(f, "t.replace", &s, &err), 1);
    assert_string_equal(s, "now a string");
    struct { const char *key; gguf_type type; int64_t v; } ints[] = {
        {"t.u8", GGUF_TYPE_UINT8, 200}, {"t.i8", GGUF_TYPE_INT8, -100}, {"t.u16", GGUF_TYPE_UINT16, 60000},
        {"t.i16", GGUF_TYPE_INT16, -30000}, {"t.u32", GGUF_TYPE_UINT32, 4000000000ll},
        {"t.i32", GGUF_TYPE_INT32, -2000000000}, {"t.i64", GGUF_TYPE_INT64, INT64_MIN},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        int64_t k = gguf_kv_find(f, ints[i].key), v;
        assert_true(k >= 0);
        assert_int_equal(gguf_kv_type(f, k), ints[i].type);
        assert_int_equal(gguf_kv_arr_n(f, k), 1);
        assert_int_equal(gguf_kv_get_i64(f, k, &v, &err), IA_OK);
        assert_true(v == ints[i].v);
        double d;
        assert_int_equal(gguf_kv_get_f64(f, k, &d, &err), IA_OK);
        assert_true(d == (double)ints[i].v);
    }
    uint64_t u;
    int64_t k = gguf_kv_find(f, "t.u64");
    assert_int_equal(gguf_kv_get_u64(f, k, &u, &err), IA_OK);
    assert_true(u == UINT64_MAX);
    int64_t iv;
    assert_int_equal(gguf_kv_get_i64(f, k, &iv, &err), IA_ERR_FORMAT); /* does not fit */
    assert_non_null(strstr(err.msg, "key 't.u64' has type u64 and value 18446744073709551615"));
    k = gguf_kv_find(f, "t.i8");
    assert_int_equal(gguf_kv_get_u64(f, k, &u, &err), IA_ERR_FORMAT); /* negative */
    assert_non_null(strstr(err.msg, "key 't.i8' has type i8 and value -100, not a non-negative integer"));
    double d;
    assert_int_equal(gguf_find_f64(f, "t.f32", &d, &err), 1);
    assert_true(d == 1.5);
    assert_int_equal(gguf_find_f64(f, "t.f64", &d, &err), 1);
    assert_true(d == -2.25e100);
    assert_int_equal(gguf_find_u64(f, "t.f32", &u, &err), -1);
    assert_non_null(strstr(err.msg, "key 't.f32' has type f32"));
    assert_int_equal(gguf_find_f64(f, "t.str", &d, &err), -1);
    assert_non_null(strstr(err.msg, "key 't.str' has type string"));
    assert_int_equal(gguf_find_str(f, "t.u8", &s, &err), -1);
    assert_non_null(strstr(err.msg, "key 't.u8' has type u8, not string"));
    bool bv;
    assert_int_equal(gguf_find_bool(f, "t.true", &bv, &err), 1);
    assert_true(bv);
    assert_int_equal(gguf_find_bool(f, "t.false", &bv, &err), 1);
    assert_false(bv);
    assert_int_equal(gguf_find_u64(f, "t.true", &u, &err), 1);
    assert_int_equal(u, 1);
    assert_int_equal(gguf_find_bool(f, "t.u8", &bv, &err), -1); /* 200 is not 0/1 */
    assert_int_equal(gguf_find_str(f, "t.str", &s, &err), 1);
    assert_string_equal(s, "hello \xc3\xa9");
    assert_int_equal(gguf_find_str(f, "t.empty", &s, &err), 1);
    assert_string_equal(s, "");
    assert_int_equal(gguf_find_u64(f, "a.u8", &u, &err), -1);
    assert_non_null(strstr(err.msg, "is an array of u8"));
    float f32raw;
    memcpy(&f32raw, gguf_kv_raw(f, gguf_kv_find(f, "t.f32")), 4);
    assert_true(f32raw == 1.5f);
    assert_string_equal(gguf_kv_raw(f, gguf_kv_find(f, "t.str")), "hello \xc3\xa9");

    /* arrays */
    struct { const char *key; gguf_type et; uint64_t n; int64_t first, last; } arrs[] = {
        {"a.u8", GGUF_TYPE_UINT8, 3, 1, 255}, {"a.i8", GGUF_TYPE_INT8, 3, -128, 127},
        {"a.u16", GGUF_TYPE_UINT16, 2, 0, 65535}, {"a.i16", GGUF_TYPE_INT16, 3, -32768, 5},
        {"a.u32", GGUF_TYPE_UINT32, 2, 0, 4294967295ll}, {"a.i32", GGUF_TYPE_INT32, 3, INT32_MIN, INT32_MAX},
        {"a.i64", GGUF_TYPE_INT64, 2, INT64_MIN, INT64_MAX}, {"a.u64", GGUF_TYPE_UINT64, 3, -1 /* unused */, 42},
        {"a.bool", GGUF_TYPE_BOOL, 4, 1, 1},
    };
    for (size_t i = 0; i < sizeof arrs / sizeof arrs[0]; i++) {
        k = gguf_kv_find(f, arrs[i].key);
        assert_true(k >= 0);
        assert_int_equal(gguf_kv_type(f, k), GGUF_TYPE_ARRAY);
        assert_int_equal(gguf_kv_arr_type(f, k), arrs[i].et);
        assert_int_equal(gguf_kv_arr_n(f, k), arrs[i].n);
        int64_t v;
        if (arrs[i].et == GGUF_TYPE_UINT64) {
            assert_int_equal(gguf_kv_get_arr_i64(f, k, 0, &v, &err), IA_ERR_FORMAT);
        } else if (arrs[i].et == GGUF_TYPE_BOOL) {
            assert_int_equal(gguf_kv_get_arr_i64(f, k, 0, &v, &err), IA_ERR_FORMAT); /* bools are not integers here */
            assert_int_equal(((const uint8_t *)gguf_kv_raw(f, k))[3], 1);
            continue;
        } else {
            assert_int_equal(gguf_kv_get_arr_i64(f, k, 0, &v, &err), IA_OK);
            assert_true(v == arrs[i].first);
        }
        assert_int_equal(gguf_kv_get_arr_i64(f, k, arrs[i].n - 1, &v, &err), IA_OK);
        assert_true(v == arrs[i].last);
        assert_int_equal(gguf_kv_get_arr_i64(f, k, arrs[i].n, &v, &err), IA_ERR_RANGE);
    }
    k = gguf_kv_find(f, "a.f32");
    assert_int_equal(gguf_kv_get_arr_f64(f, k, 0, &d, &err), IA_OK);
    assert_true(d == (double)0.1f);
    assert_int_equal(gguf_kv_get_arr_f64(f, k, 2, &d, &err), IA_OK);
    assert_true(d == (double)3e38f);
    assert_int_equal(gguf_kv_get_arr_i64(f, k, 0, &iv, &err), IA_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "key 'a.f32' element 0 has type f32"));
    k = gguf_kv_find(f, "a.f64");
    assert_int_equal(gguf_kv_get_arr_f64(f, k, 0, &d, &err), IA_OK);
    assert_true(d == 1e-300);
    k = gguf_kv_find(f, "a.empty");
    assert_int_equal(gguf_kv_arr_n(f, k), 0);
    assert_int_equal(gguf_kv_get_arr_i64(f, k, 0, &iv, &err), IA_ERR_RANGE);
    k = gguf_kv_find(f, "a.str");
    assert_int_equal(gguf_kv_arr_type(f, k), GGUF_TYPE_STRING);
    assert_int_equal(gguf_kv_arr_n(f, k), 4);
    assert_null(gguf_kv_raw(f, k));
    for (uint64_t j = 0; j < 4; j++) {
        size_t len;
        const char *e = gguf_kv_get_arr_str(f, k, j, &len);
        assert_non_null(e);
        assert_int_equal(len, arr_lens[j]);
        assert_memory_equal(e, arr_strs[j], len);
    }
    assert_int_equal(gguf_kv_get_arr_f64(f, k, 0, &d, &err), IA_ERR_FORMAT);
    k = gguf_kv_find(f, "a.str_nul_terminated");
    size_t len;
    assert_non_null(gguf_kv_get_arr_str(f, k, 0, &len));
    assert_int_equal(len, 5);
    assert_null(gguf_kv_get_arr_str(f, gguf_kv_find(f, "a.u8"), 0, &len));
    /* bad indices */
    assert_null(gguf_kv_key(f, -1));
    assert_null(gguf_kv_key(f, gguf_kv_count(f)));
    assert_int_equal(gguf_kv_type(f, 9999), GGUF_TYPE_COUNT);
    assert_int_equal(gguf_kv_get_u64(f, 9999, &u, &err), IA_ERR_ARG);
    assert_int_equal(gguf_kv_get_str(f, -5, &s, &err), IA_ERR_ARG);

    /* tensors */
    assert_int_equal(gguf_tensor_count(f), 8);
    const char *names[] = {"f32.odd", "f16.vec", "q8_0.mat", "q4_k.4d", "i8.cube", "bf16.col", "zero.sized", "q6_k.mat"};
    size_t sizes[] = {84, 10, 2 * 34 * 3, 144 * 2, 27, 10, 0, 210 * 3};
    uint64_t expect_off = 0;
    for (int i = 0; i < 8; i++) {
        const gguf_tensor_info *t = gguf_tensor_get(f, i);
        assert_string_equal(t->name, names[i]);
        assert_int_equal(t->nbytes, sizes[i]);
        assert_int_equal(t->offset, expect_off);
        assert_int_equal((uintptr_t)t->data % align, 0);
        expect_off += (sizes[i] + align - 1) / align * align;
    }
    const gguf_tensor_info *t = gguf_tensor_find(f, "f32.odd");
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->ne[0], 7);
    assert_int_equal(t->ne[1], 3);
    assert_int_equal(t->ne[2], 1);
    assert_memory_equal(t->data, st->f32, sizeof st->f32);
    assert_memory_equal(gguf_tensor_find(f, "f16.vec")->data, st->f16, sizeof st->f16);
    assert_memory_equal(gguf_tensor_find(f, "i8.cube")->data, st->i8, sizeof st->i8);
    t = gguf_tensor_find(f, "q4_k.4d");
    assert_int_equal(t->n_dims, 4);
    assert_int_equal(t->ne[3], 2);
    check_pattern(t);
    check_pattern(gguf_tensor_find(f, "q8_0.mat"));
    check_pattern(gguf_tensor_find(f, "bf16.col"));
    check_pattern(gguf_tensor_find(f, "q6_k.mat"));
    assert_int_equal(gguf_tensor_find(f, "zero.sized")->ne[0], 0);
}

static void test_writer_roundtrip(void **state) {
    (void)state;
    for (int pass = 0; pass < 2; pass++) {
        size_t align = pass ? 64 : 32;
        gguf_writer *w = gguf_writer_init();
        assert_non_null(w);
        rt_store st = {0};
        writer_populate(w, &st);
        if (pass) assert_int_equal(gguf_writer_set_u32(w, "general.alignment", 64), IA_OK);
        char path[512];
        test_tmpfile(path, sizeof path, pass ? "roundtrip64.gguf" : "roundtrip.gguf");
        ia_error err = {0};
        assert_int_equal(gguf_writer_write_file(w, path, &err), IA_OK);
        assert_int_equal(st.fill.calls, 4);
        char tmp[600];
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        assert_int_not_equal(access(tmp, F_OK), 0);
        gguf_writer_free(w);
        gguf_file *f = gguf_file_open(path, &err);
        if (!f) fail_msg("%s", err.msg);
        writer_check(f, &st, align);
        gguf_file_free(f);
    }
}

/* Copying every KV and tensor of a real file reproduces it byte for byte. */
static void test_writer_copy_real(void **state) {
    (void)state;
    ia_error err = {0};
    gguf_file *src = gguf_file_open(TEST_STORIES, &err);
    assert_non_null(src);
    gguf_writer *w = gguf_writer_init();
    for (int64_t i = 0; i < gguf_kv_count(src); i++) assert_int_equal(gguf_writer_copy_kv(w, src, i), IA_OK);
    for (int64_t i = 0; i < gguf_tensor_count(src); i++) {
        const gguf_tensor_info *t = gguf_tensor_get(src, i);
        assert_int_equal(gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, &err), IA_OK);
    }
    assert_int_equal(gguf_writer_copy_kv(w, src, 999), IA_ERR_ARG);
    char path[512];
    test_tmpfile(path, sizeof path, "stories-copy.gguf");
    assert_int_equal(gguf_writer_write_file(w, path, &err), IA_OK);
    gguf_writer_free(w);
    size_t n1, n2;
    char *a = ia_file_read(TEST_STORIES, &n1, &err), *b = ia_file_read(path, &n2, &err);
    assert_int_equal(n1, n2);
    assert_memory_equal(a, b, n1);
    ia_free(a);
    ia_free(b);
    remove(path);

    /* and a copy of the GPT-2 vocabulary's string arrays through copy_kv, plus a replaced key */
    gguf_file *voc = gguf_file_open(GPT2_VOCAB, &err);
    assert_non_null(voc);
    w = gguf_writer_init();
    assert_int_equal(gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 7), IA_OK);
    for (int64_t i = 0; i < gguf_kv_count(voc); i++) assert_int_equal(gguf_writer_copy_kv(w, voc, i), IA_OK);
    test_tmpfile(path, sizeof path, "vocab-copy.gguf");
    assert_int_equal(gguf_writer_write_file(w, path, &err), IA_OK);
    gguf_writer_free(w);
    gguf_file *cp = gguf_file_open(path, &err);
    assert_non_null(cp);
    assert_int_equal(gguf_kv_count(cp), gguf_kv_count(voc));
    assert_string_equal(gguf_kv_key(cp, 0), "tokenizer.ggml.bos_token_id"); /* first position kept */
    for (int64_t i = 0; i < gguf_kv_count(voc); i++) {
        int64_t j = gguf_kv_find(cp, gguf_kv_key(voc, i));
        size_t l1, l2;
        const void *v1 = gguf_kv_value_bytes(voc, i, &l1), *v2 = gguf_kv_value_bytes(cp, j, &l2);
        assert_int_equal(gguf_kv_type(voc, i), gguf_kv_type(cp, j));
        assert_int_equal(l1, l2);
        assert_memory_equal(v1, v2, l1);
    }
    gguf_file_free(cp);
    remove(path);
    gguf_file_free(voc);
    gguf_file_free(src);
}

static void test_writer_errors(void **state) {
    (void)state;
    ia_error err = {0};
    gguf_writer *w = gguf_writer_init();
    assert_int_equal(gguf_writer_set_u32(w, "x", 1), IA_OK);
    assert_int_equal(gguf_writer_write_file(w, "tests/tmp/no-such-dir/x.gguf", &err), IA_ERR_IO);
    assert_non_null(strstr(err.msg, "tests/tmp/no-such-dir/x.gguf"));
    /* a bad alignment is refused before anything is written */
    char path[512];
    test_tmpfile(path, sizeof path, "badalign.gguf");
    assert_int_equal(gguf_writer_set_u32(w, "general.alignment", 48), IA_OK);
    assert_int_equal(gguf_writer_write_file(w, path, &err), IA_ERR_ARG);
    assert_non_null(strstr(err.msg, "general.alignment"));
    assert_int_equal(gguf_writer_set_i32(w, "general.alignment", 32), IA_OK);
    assert_int_equal(gguf_writer_write_file(w, path, &err), IA_ERR_ARG);
    assert_int_equal(gguf_writer_remove_key(w, "general.alignment"), IA_OK);
    /* a failing fill callback: error passed on with the tensor named, no file left behind */
    fill_ctx fc = {0, true};
    int64_t ne[] = {32};
    assert_int_equal(gguf_writer_add_tensor_fill(w, "t.fail", 0, 1, ne, fill_pattern, &fc, &err), IA_OK);
    test_tmpfile(path, sizeof path, "fillfail.gguf");
    assert_int_equal(gguf_writer_write_file(w, path, &err), IA_ERR_INTERNAL);
    assert_non_null(strstr(err.msg, "tensor 't.fail': boom"));
    assert_int_not_equal(access(path, F_OK), 0);
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    assert_int_not_equal(access(tmp, F_OK), 0);
    gguf_writer_free(w);
    gguf_writer_free(NULL);
    w = gguf_writer_init();
    assert_int_equal(gguf_writer_add_tensor_fill(w, "x", 0, 1, ne, NULL, NULL, &err), IA_ERR_ARG);
    gguf_writer_free(w);
}

/* Every allocation in the writer may fail: IA_ERR_NOMEM, nothing leaks, no file appears. */
static void test_alloc_failures_writer(void **state) {
    (void)state;
    char path[512];
    test_tmpfile(path, sizeof path, "oom.gguf");
    long n;
    for (n = 1; n < 10000; n++) {
        remove(path);
        ia_mem_fail_after(n, false);
        int rc = IA_OK;
        ia_error err = {0};
        gguf_writer *w = gguf_writer_init();
        float data[64] = {0};
        int64_t ne[] = {64};
        fill_ctx fc = {0};
        const char *strs[] = {"a", "bb"};
        if (!w) rc = IA_ERR_NOMEM;
        if (!rc) rc = gguf_writer_set_str(w, "general.architecture", "llama");
        if (!rc) rc = gguf_writer_set_u32(w, "k.u32", 5);
        if (!rc) rc = gguf_writer_set_u32(w, "k.u32", 6);
        if (!rc) rc = gguf_writer_set_arr_str(w, "k.strs", strs, NULL, 2);
        if (!rc) rc = gguf_writer_set_arr(w, "k.arr", GGUF_TYPE_FLOAT32, data, 4);
        if (!rc) rc = gguf_writer_add_tensor(w, "t0", 0, 1, ne, data, &err);
        if (!rc) rc = gguf_writer_add_tensor_fill(w, "t1", 0, 1, ne, fill_pattern, &fc, &err);
        if (!rc) rc = gguf_writer_write_file(w, path, &err);
        ia_mem_fail_after(0, false);
        gguf_writer_free(w);
        if (rc == IA_OK) break;
        assert_int_equal(rc, IA_ERR_NOMEM);
        assert_int_not_equal(access(path, F_OK), 0);
    }
    assert_true(n > 5 && n < 10000);
    ia_error err = {0};
    gguf_file *f = gguf_file_open(path, &err);
    assert_non_null(f);
    assert_int_equal(gguf_tensor_count(f), 2);
    gguf_file_free(f);
}

/* ====================== independent check with the Python reader ====================== */

static uint32_t crc32_bytes(const void *p, size_t n) {
    static uint32_t table[256];
    if (!table[1])
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) c = table[(c ^ ((const uint8_t *)p)[i]) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

static void dump_hex(ia_buf *b, const void *p, size_t n) {
    static const char hx[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        char two[2] = {hx[((const uint8_t *)p)[i] >> 4], hx[((const uint8_t *)p)[i] & 15]};
        ia_buf_append(b, two, 2);
    }
}

/* One element in the canonical notation of gguf.py --dump. */
static void dump_elem(ia_buf *b, gguf_type t, const uint8_t *p) {
    switch (t) {
    case GGUF_TYPE_FLOAT32: ia_buf_printf(b, "f32:%08" PRIx32, gguf_le32(p)); break;
    case GGUF_TYPE_FLOAT64: ia_buf_printf(b, "f64:%016" PRIx64, gguf_le64(p)); break;
    case GGUF_TYPE_UINT8: case GGUF_TYPE_BOOL: ia_buf_printf(b, "%u", p[0]); break;
    case GGUF_TYPE_INT8: ia_buf_printf(b, "%d", (int8_t)p[0]); break;
    case GGUF_TYPE_UINT16: ia_buf_printf(b, "%u", gguf_le16(p)); break;
    case GGUF_TYPE_INT16: ia_buf_printf(b, "%d", (int16_t)gguf_le16(p)); break;
    case GGUF_TYPE_UINT32: ia_buf_printf(b, "%" PRIu32, gguf_le32(p)); break;
    case GGUF_TYPE_INT32: ia_buf_printf(b, "%" PRId32, (int32_t)gguf_le32(p)); break;
    case GGUF_TYPE_UINT64: ia_buf_printf(b, "%" PRIu64, gguf_le64(p)); break;
    case GGUF_TYPE_INT64: ia_buf_printf(b, "%" PRId64, (int64_t)gguf_le64(p)); break;
    default: fail_msg("dump_elem: type %d", t);
    }
}

static char *dump_c(const gguf_file *f) {
    ia_buf b = {0};
    ia_buf_printf(&b, "version %u\nalignment %zu\n", gguf_file_version(f), gguf_file_alignment(f));
    for (int64_t i = 0; i < gguf_kv_count(f); i++) {
        gguf_type t = gguf_kv_type(f, i);
        if (t == GGUF_TYPE_ARRAY)
            ia_buf_printf(&b, "kv %s array:%s ", gguf_kv_key(f, i), gguf_type_name(gguf_kv_arr_type(f, i)));
        else
            ia_buf_printf(&b, "kv %s %s ", gguf_kv_key(f, i), gguf_type_name(t));
        if (t == GGUF_TYPE_STRING) {
            const char *s;
            gguf_kv_get_str(f, i, &s, NULL);
            ia_buf_puts(&b, "s:");
            dump_hex(&b, s, strlen(s));
        } else if (t == GGUF_TYPE_ARRAY) {
            gguf_type et = gguf_kv_arr_type(f, i);
            ia_buf_puts(&b, "[");
            for (uint64_t j = 0; j < gguf_kv_arr_n(f, i); j++) {
                if (j) ia_buf_puts(&b, ",");
                if (et == GGUF_TYPE_STRING) {
                    size_t len;
                    const char *s = gguf_kv_get_arr_str(f, i, j, &len);
                    ia_buf_puts(&b, "s:");
                    dump_hex(&b, s, len);
                } else {
                    dump_elem(&b, et, (const uint8_t *)gguf_kv_raw(f, i) + j * gguf_type_size(et));
                }
            }
            ia_buf_puts(&b, "]");
        } else {
            dump_elem(&b, t, gguf_kv_raw(f, i));
        }
        ia_buf_puts(&b, "\n");
    }
    for (int64_t i = 0; i < gguf_tensor_count(f); i++) {
        const gguf_tensor_info *t = gguf_tensor_get(f, i);
        ia_buf_printf(&b, "tensor %s %u ", t->name, t->type);
        for (uint32_t d = 0; d < t->n_dims; d++) ia_buf_printf(&b, d ? ",%" PRId64 : "%" PRId64, t->ne[d]);
        ia_buf_printf(&b, " %" PRIu64 " %zu %08" PRIx32 "\n", t->offset, t->nbytes, crc32_bytes(t->data, t->nbytes));
    }
    char *s = ia_buf_take(&b);
    assert_non_null(s);
    return s;
}

static bool python_available(void) {
    return access("/usr/bin/python3", X_OK) == 0 && system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0;
}

static void compare_with_python(const char *path) {
    char out[512], cmd[1200];
    test_tmpfile(out, sizeof out, "pydump.txt");
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/ref/gguf.py --dump '%s' > '%s'", path, out);
    if (system(cmd) != 0) fail_msg("gguf.py failed on %s", path);
    ia_error err = {0};
    size_t n;
    char *py = ia_file_read(out, &n, &err);
    assert_non_null(py);
    gguf_file *f = gguf_file_open(path, &err);
    assert_non_null(f);
    char *c = dump_c(f);
    if (strcmp(c, py) != 0) {
        size_t i = 0;
        while (c[i] && c[i] == py[i]) i++;
        size_t from = i > 60 ? i - 60 : 0;
        fail_msg("%s: C and Python dumps differ at byte %zu:\n C: %.120s\n py: %.120s", path, i, c + from, py + from);
    }
    ia_free(c);
    ia_free(py);
    gguf_file_free(f);
    remove(out);
}

static void test_python_oracle(void **state) {
    (void)state;
    if (!python_available()) skip();
    gguf_writer *w = gguf_writer_init();
    rt_store st = {0};
    writer_populate(w, &st);
    assert_int_equal(gguf_writer_set_u32(w, "general.alignment", 64), IA_OK);
    char path[512];
    test_tmpfile(path, sizeof path, "pyoracle.gguf");
    ia_error err = {0};
    assert_int_equal(gguf_writer_write_file(w, path, &err), IA_OK);
    gguf_writer_free(w);
    compare_with_python(path);
    compare_with_python(TEST_STORIES);
    compare_with_python(GPT2_VOCAB);
}

int main(void) {
    enum { NV = sizeof variant_cases / sizeof variant_cases[0] };
    struct CMUnitTest tests[NV + 11];
    size_t n = 0;
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_stories260k);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_gpt2_vocab);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_open_errors);
    for (size_t i = 0; i < NV; i++) {
        static char names[NV][80];
        snprintf(names[i], sizeof names[i], "%s_%s", variant_cases[i].expect ? "corrupt" : "valid", variant_cases[i].name);
        tests[n++] = (struct CMUnitTest){names[i], test_variant, NULL, NULL, (void *)&variant_cases[i]};
    }
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_truncated_every_length);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_stories_truncated);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_alloc_failures_reader);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_writer_roundtrip);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_writer_copy_real);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_writer_errors);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_alloc_failures_writer);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_python_oracle);
    return _cmocka_run_group_tests("test_gguf", tests, n, NULL, NULL);
}
