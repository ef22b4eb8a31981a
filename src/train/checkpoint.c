/* checkpoint.c — resumable training state: parameters and AdamW moments of the flat block, the
 * step, and a fingerprint of everything that must match to resume (written atomically). */
#include "train/train_internal.h"

#include <errno.h>
#include <stdio.h>
#include <unistd.h>

/* Layout (little-endian): "IACKPT\0\1" | u32 version | u64 fingerprint | i32 step | f64 first_loss |
 * f64 last_loss |
 * u32 n_tensors | per tensor: u32 name length, name, i64 ne[2] | u64 n | f32 p[n] | f32 m[n] | f32 v[n] |
 * u64 FNV-1a hash of everything before it. */
static const char CKPT_MAGIC[8] = {'I', 'A', 'C', 'K', 'P', 'T', 0, 1};
#define CKPT_VERSION 1u

typedef struct wctx {
    FILE *f;
    uint64_t h;
    bool bad;
} wctx;

static void wr(wctx *w, const void *p, size_t n) {
    if (w->bad) return;
    if (fwrite(p, 1, n, w->f) != n) w->bad = true;
    w->h = tr_hash(w->h, p, n);
}

int tr_checkpoint_write(const char *path, const tr_params *P, const tr_ckpt_state *st, ia_error *err) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    wctx w = {fopen(tmp, "wb"), 0, false};
    if (!w.f) return ia_error_set(err, IA_ERR_IO, "%s: cannot write: %s", tmp, strerror(errno));
    uint32_t ver = CKPT_VERSION, nt = (uint32_t)P->n_tensors;
    int32_t step = st->step;
    uint64_t n = P->n;
    wr(&w, CKPT_MAGIC, 8);
    wr(&w, &ver, 4);
    wr(&w, &st->fingerprint, 8);
    wr(&w, &step, 4);
    wr(&w, &st->first_loss, 8);
    wr(&w, &st->last_loss, 8);
    wr(&w, &nt, 4);
    for (int i = 0; i < P->n_tensors; i++) {
        uint32_t len = (uint32_t)strlen(P->t[i].name);
        wr(&w, &len, 4);
        wr(&w, P->t[i].name, len);
        wr(&w, P->t[i].ne, 16);
    }
    wr(&w, &n, 8);
    wr(&w, P->p, n * sizeof(float));
    wr(&w, P->m, n * sizeof(float));
    wr(&w, P->v, n * sizeof(float));
    uint64_t h = w.h;
    wr(&w, &h, 8);
    /* flush to disk before the rename, so a crash leaves the old checkpoint or the new one */
    if (fflush(w.f) != 0 || fsync(fileno(w.f)) != 0) w.bad = true;
    if (fclose(w.f) != 0) w.bad = true;
    if (w.bad) {
        remove(tmp);
        return ia_error_set(err, IA_ERR_IO, "%s: write failed: %s", tmp, strerror(errno));
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        remove(tmp);
        return ia_error_set(err, IA_ERR_IO, "%s: cannot rename to %s: %s", tmp, path, strerror(e));
    }
    return IA_OK;
}

int tr_checkpoint_read(const char *path, tr_params *P, tr_ckpt_state *st, ia_error *err) {
    if (access(path, F_OK) != 0) return 0;
    size_t len;
    char *data = ia_file_read(path, &len, err);
    if (!data) return -1;
    size_t pos = 0;
    int rc = -1;
#define NEED(k) do { if (len - pos < (size_t)(k)) { ia_error_set(err, IA_ERR_FORMAT, "%s: checkpoint truncated at byte %zu", path, pos); goto out; } } while (0)
#define GET(dst, k) do { NEED(k); memcpy((dst), data + pos, (k)); pos += (k); } while (0)
    char magic[8];
    uint32_t ver, nt;
    int32_t step;
    uint64_t fp, n;
    double first, last;
    GET(magic, 8);
    if (memcmp(magic, CKPT_MAGIC, 8)) { ia_error_set(err, IA_ERR_FORMAT, "%s: not an iteralign training checkpoint", path); goto out; }
    GET(&ver, 4);
    if (ver != CKPT_VERSION) { ia_error_set(err, IA_ERR_FORMAT, "%s: checkpoint version %u, expected %u", path, ver, CKPT_VERSION); goto out; }
    uint64_t stored;
    NEED(8);
    memcpy(&stored, data + len - 8, 8);
    if (tr_hash(0, data, len - 8) != stored) {
        ia_error_set(err, IA_ERR_FORMAT, "%s: checkpoint is corrupt (hash mismatch)", path);
        goto out;
    }
    GET(&fp, 8);
    if (fp != st->fingerprint) {
        ia_error_set(err, IA_ERR_ARG, "%s: checkpoint is from a different run (base model, data or training "
                     "options differ); delete it or choose another checkpoint path", path);
        goto out;
    }
    GET(&step, 4);
    GET(&first, 8);
    GET(&last, 8);
    GET(&nt, 4);
    if (nt != (uint32_t)P->n_tensors) { ia_error_set(err, IA_ERR_FORMAT, "%s: %u tensors, expected %d", path, nt, P->n_tensors); goto out; }
    for (int i = 0; i < P->n_tensors; i++) {
        uint32_t l;
        int64_t ne[2];
        GET(&l, 4);
        NEED(l);
        if (l != strlen(P->t[i].name) || memcmp(data + pos, P->t[i].name, l)) {
            ia_error_set(err, IA_ERR_FORMAT, "%s: tensor %d is not '%s'", path, i, P->t[i].name);
            goto out;
        }
        pos += l;
        GET(ne, 16);
        if (ne[0] != P->t[i].ne[0] || ne[1] != P->t[i].ne[1]) {
            ia_error_set(err, IA_ERR_FORMAT, "%s: tensor '%s' has another shape", path, P->t[i].name);
            goto out;
        }
    }
    GET(&n, 8);
    if (n != P->n) { ia_error_set(err, IA_ERR_FORMAT, "%s: %llu parameters, expected %zu", path, (unsigned long long)n, P->n); goto out; }
    GET(P->p, n * sizeof(float));
    GET(P->m, n * sizeof(float));
    GET(P->v, n * sizeof(float));
    st->step = step;
    st->first_loss = first;
    st->last_loss = last;
    rc = 1;
#undef GET
#undef NEED
out:
    ia_free(data);
    return rc;
}
