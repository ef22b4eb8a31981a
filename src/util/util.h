/* util.h — internal helpers shared by every subsystem: errors, allocation fault injection,
 * half-precision conversion, growable buffers, timing. */
#ifndef IA_UTIL_H
#define IA_UTIL_H

#include "iteralign.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#if defined(__GNUC__)
#define IA_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define IA_PRINTF(a, b)
#endif

/* Sets err (if non-NULL) to code and a formatted one-line message; returns code. */
int ia_error_set(ia_error *err, int code, const char *fmt, ...) IA_PRINTF(3, 4);
/* Prefixes the message already in err with "prefix: " (for adding a file name or line number). */
void ia_error_prefix(ia_error *err, const char *fmt, ...) IA_PRINTF(2, 3);
void ia_error_clear(ia_error *err);

/* Programmer-error tier: abort with file:line. Input errors never use this. */
#define IA_ASSERT(x)                                                                              \
    do {                                                                                          \
        if (!(x)) ia_abort(__FILE__, __LINE__, #x);                                               \
    } while (0)
void ia_abort(const char *file, int line, const char *what) __attribute__((noreturn));

/* Allocation fault injection for tests: the n-th allocation from now (1-based) fails, and every
 * later one too when `persistent`. n = 0 disables. */
void ia_mem_fail_after(long n, bool persistent);
long ia_mem_alloc_count(void); /* allocations made so far (for tests) */

/* Half precision. */
static inline float ia_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(mant & 0x400)) { mant <<= 1; exp--; }
            mant &= 0x3ff;
            bits = sign | (exp << 23) | (mant << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp - 15 + 127) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Round to nearest even, as numpy and ggml do. */
static inline uint16_t ia_fp32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t absx = x & 0x7fffffffu;
    if (absx > 0x7f800000u) return (uint16_t)(sign | 0x7e00); /* NaN */
    if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* overflow to inf */
    if (absx < 0x38800000u) { /* subnormal or zero in fp16 */
        if (absx < 0x33000000u) return (uint16_t)sign;
        uint32_t e = absx >> 23;
        uint32_t m = (absx & 0x7fffff) | 0x800000;
        int shift = 126 - (int)e; /* value / 2^-24 = m * 2^(e-126) */
        uint32_t r = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t e = ((absx >> 23) - 127 + 15);
    uint32_t m = absx & 0x7fffff;
    uint32_t r = (e << 10) | (m >> 13);
    uint32_t rem = m & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;
    return (uint16_t)(sign | r);
}

static inline float ia_bf16_to_fp32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Round to nearest even, NaNs quieted (as ggml). */
static inline uint16_t ia_fp32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 64);
    return (uint16_t)((x + (0x7fff + ((x >> 16) & 1))) >> 16);
}

/* Growable byte buffer (always NUL-terminated). */
typedef struct ia_buf {
    char *data;
    size_t len;
    size_t cap;
    bool oom; /* sticky: an append failed */
} ia_buf;

void ia_buf_append(ia_buf *b, const char *s, size_t n);
void ia_buf_puts(ia_buf *b, const char *s);
void ia_buf_printf(ia_buf *b, const char *fmt, ...) IA_PRINTF(2, 3);
char *ia_buf_take(ia_buf *b); /* returns data (caller ia_frees), resets b; NULL if oom */
void ia_buf_free(ia_buf *b);

/* Reads a whole file; *len receives the size. NULL (err set) on failure. */
char *ia_file_read(const char *path, size_t *len, ia_error *err);

double ia_time_now(void); /* seconds, monotonic */

/* Deterministic RNG (xoshiro256**), seeded with splitmix64. */
typedef struct ia_rng { uint64_t s[4]; } ia_rng;
void ia_rng_seed(ia_rng *r, uint64_t seed);
uint64_t ia_rng_next(ia_rng *r);
double ia_rng_uniform(ia_rng *r);  /* [0, 1) */
float ia_rng_normal(ia_rng *r);    /* standard normal */

#endif /* IA_UTIL_H */
