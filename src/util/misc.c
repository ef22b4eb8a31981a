/* misc.c — growable buffers, whole-file reads, a monotonic clock, the RNG and thread settings. */
#include "util.h"

#include <errno.h>
#include <math.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

void ia_buf_append(ia_buf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1) cap *= 2;
        char *d = ia_realloc(b->data, cap);
        if (!d) { b->oom = true; return; }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
}

void ia_buf_puts(ia_buf *b, const char *s) { ia_buf_append(b, s, strlen(s)); }

void ia_buf_printf(ia_buf *b, const char *fmt, ...) {
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof small) { ia_buf_append(b, small, (size_t)n); return; }
    char *big = ia_malloc((size_t)n + 1);
    if (!big) { b->oom = true; return; }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    ia_buf_append(b, big, (size_t)n);
    ia_free(big);
}

char *ia_buf_take(ia_buf *b) {
    char *d = b->data;
    if (b->oom) { ia_free(d); d = NULL; }
    else if (!d) d = ia_strdup("");
    b->data = NULL;
    b->len = b->cap = 0;
    b->oom = false;
    return d;
}

void ia_buf_free(ia_buf *b) {
    ia_free(b->data);
    memset(b, 0, sizeof *b);
}

char *ia_file_read(const char *path, size_t *len, ia_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) { ia_error_set(err, IA_ERR_IO, "%s: cannot open: %s", path, strerror(errno)); return NULL; }
    ia_buf b = {0};
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) ia_buf_append(&b, chunk, n);
    int bad = ferror(f);
    fclose(f);
    if (bad) { ia_buf_free(&b); ia_error_set(err, IA_ERR_IO, "%s: read error", path); return NULL; }
    if (b.oom) { ia_buf_free(&b); ia_error_set(err, IA_ERR_NOMEM, "%s: out of memory", path); return NULL; }
    if (len) *len = b.len;
    char *d = ia_buf_take(&b);
    if (!d) ia_error_set(err, IA_ERR_NOMEM, "%s: out of memory", path);
    return d;
}

double ia_time_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void ia_rng_seed(ia_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t ia_rng_next(ia_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double ia_rng_uniform(ia_rng *r) { return (double)(ia_rng_next(r) >> 11) * 0x1.0p-53; }

float ia_rng_normal(ia_rng *r) {
    double u1 = ia_rng_uniform(r), u2 = ia_rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static int threads_n = 0;

void ia_set_threads(int n) {
#ifdef _OPENMP
    if (n <= 0) n = omp_get_num_procs();
    omp_set_num_threads(n);
#endif
    threads_n = n > 0 ? n : 1;
}

int ia_get_threads(void) {
#ifdef _OPENMP
    return threads_n > 0 ? threads_n : omp_get_max_threads();
#else
    return 1;
#endif
}
