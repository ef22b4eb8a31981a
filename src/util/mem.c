/* mem.c — the one allocation layer: every library allocation goes through here, so tests can
 * inject failures (the n-th allocation, transient or persistent) and count allocations. */
#include "util.h"

#include <stdatomic.h>
#include <stdlib.h>

static atomic_long mem_count;        /* allocations made */
static atomic_long mem_fail_at;      /* fail when count reaches this (0 = never) */
static atomic_bool mem_fail_persist; /* keep failing after the first failure */

void ia_mem_fail_after(long n, bool persistent) {
    atomic_store(&mem_fail_at, n > 0 ? atomic_load(&mem_count) + n : 0);
    atomic_store(&mem_fail_persist, persistent);
}

long ia_mem_alloc_count(void) { return atomic_load(&mem_count); }

static bool mem_should_fail(void) {
    long c = atomic_fetch_add(&mem_count, 1) + 1;
    long at = atomic_load(&mem_fail_at);
    if (at == 0) return false;
    if (c == at) return true;
    return c > at && atomic_load(&mem_fail_persist);
}

void *ia_malloc(size_t n) {
    if (mem_should_fail()) return NULL;
    return malloc(n ? n : 1);
}

void *ia_calloc(size_t count, size_t size) {
    if (mem_should_fail()) return NULL;
    return calloc(count ? count : 1, size ? size : 1);
}

void *ia_realloc(void *p, size_t n) {
    if (mem_should_fail()) return NULL;
    return realloc(p, n ? n : 1);
}

void ia_free(void *p) { free(p); }

char *ia_strdup(const char *s) { return s ? ia_strndup(s, strlen(s)) : NULL; }

char *ia_strndup(const char *s, size_t n) {
    if (!s) return NULL;
    char *d = ia_malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}
