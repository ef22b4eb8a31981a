/* client_cache.c — request keys (SHA-256) and the two reply caches the client ships: in memory and
 * a directory of files. The run store provides its own ia_client_cache. */
#include "net/client.h"
#include "util/util.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <unistd.h>

/* ==== SHA-256 (FIPS 180-4) ====================================================================
 * A plain implementation: keys are computed once per request, so speed does not matter, and this
 * avoids linking a crypto library for one hash. */

typedef struct sha256_ctx {
    uint32_t h[8];
    uint64_t len;      /* bytes hashed so far */
    uint8_t buf[64];
    size_t n;          /* bytes in buf */
} sha256_ctx;

static const uint32_t sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static inline uint32_t ror32(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha256_block(sha256_ctx *c, const uint8_t *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 |
               (uint32_t)p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror32(w[i - 15], 7) ^ ror32(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ror32(w[i - 2], 17) ^ ror32(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = c->h[0], b = c->h[1], cc = c->h[2], d = c->h[3];
    uint32_t e = c->h[4], f = c->h[5], g = c->h[6], h = c->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t S1 = ror32(e, 6) ^ ror32(e, 11) ^ ror32(e, 25);
        uint32_t ch = (e & f) ^ (~e & g);
        uint32_t t1 = h + S1 + ch + sha256_k[i] + w[i];
        uint32_t S0 = ror32(a, 2) ^ ror32(a, 13) ^ ror32(a, 22);
        uint32_t mj = (a & b) ^ (a & cc) ^ (b & cc);
        uint32_t t2 = S0 + mj;
        h = g; g = f; f = e; e = d + t1;
        d = cc; cc = b; b = a; a = t1 + t2;
    }
    c->h[0] += a; c->h[1] += b; c->h[2] += cc; c->h[3] += d;
    c->h[4] += e; c->h[5] += f; c->h[6] += g; c->h[7] += h;
}

static void sha256_init(sha256_ctx *c) {
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, h0, sizeof h0);
    c->len = 0;
    c->n = 0;
}

static void sha256_update(sha256_ctx *c, const void *data, size_t len) {
    const uint8_t *p = data;
    c->len += len;
    while (len > 0) {
        size_t take = 64 - c->n;
        if (take > len) take = len;
        memcpy(c->buf + c->n, p, take);
        c->n += take;
        p += take;
        len -= take;
        if (c->n == 64) {
            sha256_block(c, c->buf);
            c->n = 0;
        }
    }
}

static void sha256_final_hex(sha256_ctx *c, char out[65]) {
    uint64_t bits = c->len * 8;
    uint8_t pad = 0x80;
    sha256_update(c, &pad, 1);
    uint8_t zero = 0;
    while (c->n != 56) sha256_update(c, &zero, 1);
    uint8_t lenbe[8];
    for (int i = 0; i < 8; i++) lenbe[i] = (uint8_t)(bits >> (56 - 8 * i));
    sha256_update(c, lenbe, 8);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 4; j++) {
            uint8_t byte = (uint8_t)(c->h[i] >> (24 - 8 * j));
            out[8 * i + 2 * j] = hex[byte >> 4];
            out[8 * i + 2 * j + 1] = hex[byte & 15];
        }
    out[64] = 0;
}

void ia_client_sha256_hex(const void *data, size_t len, char out[65]) {
    sha256_ctx c;
    sha256_init(&c);
    sha256_update(&c, data, len);
    sha256_final_hex(&c, out);
}

void ia_client_request_key(const char *endpoint, const char *request_json, char out[65]) {
    sha256_ctx c;
    sha256_init(&c);
    sha256_update(&c, endpoint, strlen(endpoint));
    sha256_update(&c, "\n", 1);
    sha256_update(&c, request_json, strlen(request_json));
    sha256_final_hex(&c, out);
}

/* ==== in-memory cache ========================================================================= */

#define MEM_BUCKETS 256

typedef struct mem_entry {
    struct mem_entry *next;
    char key[65];
    char *body;
} mem_entry;

typedef struct mem_cache {
    pthread_mutex_t lock;
    mem_entry *buckets[MEM_BUCKETS];
    long count;
} mem_cache;

/* Keys are SHA-256 hex, so their first two digits are already uniform. */
static unsigned mem_bucket(const char *key) {
    unsigned h = 0;
    for (int i = 0; i < 4 && key[i]; i++) h = h * 31u + (unsigned char)key[i];
    return h % MEM_BUCKETS;
}

static char *mem_get(void *ud, const char *key) {
    mem_cache *m = ud;
    char *out = NULL;
    pthread_mutex_lock(&m->lock);
    for (mem_entry *e = m->buckets[mem_bucket(key)]; e; e = e->next)
        if (strcmp(e->key, key) == 0) {
            out = ia_strdup(e->body);
            break;
        }
    pthread_mutex_unlock(&m->lock);
    return out;
}

static int mem_put(void *ud, const char *key, const char *request_json, const char *body) {
    (void)request_json;
    if (strlen(key) != 64) return IA_ERR_ARG;
    mem_cache *m = ud;
    char *copy = ia_strdup(body);
    if (!copy) return IA_ERR_NOMEM;
    pthread_mutex_lock(&m->lock);
    unsigned b = mem_bucket(key);
    for (mem_entry *e = m->buckets[b]; e; e = e->next)
        if (strcmp(e->key, key) == 0) {
            ia_free(e->body);
            e->body = copy;
            pthread_mutex_unlock(&m->lock);
            return IA_OK;
        }
    mem_entry *e = ia_malloc(sizeof *e);
    if (!e) {
        pthread_mutex_unlock(&m->lock);
        ia_free(copy);
        return IA_ERR_NOMEM;
    }
    memcpy(e->key, key, 65);
    e->body = copy;
    e->next = m->buckets[b];
    m->buckets[b] = e;
    m->count++;
    pthread_mutex_unlock(&m->lock);
    return IA_OK;
}

static void mem_destroy(void *ud) {
    mem_cache *m = ud;
    if (!m) return;
    for (int i = 0; i < MEM_BUCKETS; i++) {
        mem_entry *e = m->buckets[i];
        while (e) {
            mem_entry *next = e->next;
            ia_free(e->body);
            ia_free(e);
            e = next;
        }
    }
    pthread_mutex_destroy(&m->lock);
    ia_free(m);
}

ia_client_cache *ia_client_cache_mem_new(ia_error *err) {
    mem_cache *m = ia_calloc(1, sizeof *m);
    ia_client_cache *c = ia_calloc(1, sizeof *c);
    if (!m || !c) {
        ia_free(m);
        ia_free(c);
        ia_error_set(err, IA_ERR_NOMEM, "reply cache: out of memory");
        return NULL;
    }
    pthread_mutex_init(&m->lock, NULL);
    c->get = mem_get;
    c->put = mem_put;
    c->destroy = mem_destroy;
    c->ud = m;
    return c;
}

long ia_client_cache_mem_count(const ia_client_cache *cache) {
    if (!cache || cache->get != mem_get) return -1;
    mem_cache *m = cache->ud;
    pthread_mutex_lock(&m->lock);
    long n = m->count;
    pthread_mutex_unlock(&m->lock);
    return n;
}

/* ==== directory cache ========================================================================= */

typedef struct dir_cache {
    char *dir;
    atomic_ulong tmp_counter; /* makes temporary names unique among this process's threads */
} dir_cache;

/* Keys come from callers too (the interface is public): accept only hex so a key can never
 * name a path outside the directory. */
static bool key_is_hex64(const char *key) {
    size_t i = 0;
    for (; key[i]; i++) {
        char ch = key[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f'))) return false;
    }
    return i == 64;
}

static char *dir_get(void *ud, const char *key) {
    dir_cache *d = ud;
    if (!key_is_hex64(key)) return NULL;
    ia_buf path = {0};
    ia_buf_printf(&path, "%s/%s.json", d->dir, key);
    char *p = ia_buf_take(&path);
    if (!p) return NULL;
    if (access(p, R_OK) != 0) { /* the usual miss: no error to build */
        ia_free(p);
        return NULL;
    }
    char *body = ia_file_read(p, NULL, NULL);
    ia_free(p);
    return body;
}

static int dir_put(void *ud, const char *key, const char *request_json, const char *body) {
    (void)request_json;
    dir_cache *d = ud;
    if (!key_is_hex64(key)) return IA_ERR_ARG;
    unsigned long n = atomic_fetch_add(&d->tmp_counter, 1);
    ia_buf tmp = {0}, fin = {0};
    ia_buf_printf(&tmp, "%s/.%s.%ld.%lu.tmp", d->dir, key, (long)getpid(), n);
    ia_buf_printf(&fin, "%s/%s.json", d->dir, key);
    char *tp = ia_buf_take(&tmp), *fp = ia_buf_take(&fin);
    int rc = IA_OK;
    if (!tp || !fp) {
        rc = IA_ERR_NOMEM;
        goto done;
    }
    FILE *f = fopen(tp, "wb");
    if (!f) {
        rc = IA_ERR_IO;
        goto done;
    }
    size_t len = strlen(body);
    bool ok = fwrite(body, 1, len, f) == len;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tp, fp) != 0) {
        unlink(tp);
        rc = IA_ERR_IO;
    }
done:
    ia_free(tp);
    ia_free(fp);
    return rc;
}

static void dir_destroy(void *ud) {
    dir_cache *d = ud;
    if (!d) return;
    ia_free(d->dir);
    ia_free(d);
}

ia_client_cache *ia_client_cache_dir_new(const char *dir, ia_error *err) {
    if (!dir || !*dir) {
        ia_error_set(err, IA_ERR_ARG, "reply cache: no directory given");
        return NULL;
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        ia_error_set(err, IA_ERR_IO, "reply cache %s: cannot create: %s", dir, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        ia_error_set(err, IA_ERR_IO, "reply cache %s: not a directory", dir);
        return NULL;
    }
    dir_cache *d = ia_calloc(1, sizeof *d);
    ia_client_cache *c = ia_calloc(1, sizeof *c);
    char *copy = ia_strdup(dir);
    if (!d || !c || !copy) {
        ia_free(d);
        ia_free(c);
        ia_free(copy);
        ia_error_set(err, IA_ERR_NOMEM, "reply cache: out of memory");
        return NULL;
    }
    d->dir = copy;
    atomic_init(&d->tmp_counter, 0);
    c->get = dir_get;
    c->put = dir_put;
    c->destroy = dir_destroy;
    c->ud = d;
    return c;
}

void ia_client_cache_free(ia_client_cache *cache) {
    if (!cache) return;
    if (cache->destroy) cache->destroy(cache->ud);
    ia_free(cache);
}
