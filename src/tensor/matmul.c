/* matmul.c — Y = X·Wᵀ over any supported weight type: the plain reference, the OpenMP driver that
 * runs the per-ISA kernels, the portable scalar kernel and run-time kernel selection. */
/* Bit-exact results (quantisers equal to ggml's, SIMD decoders equal to the reference) need every
 * a*b+c rounded twice, whatever -std / -march / -ffp-contract the build uses. */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#include "kernels.h"
#include "pool.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <strings.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

/* ==== reference ==== */

void ia_matmul_ref(float *Y, const float *X, const void *W, uint32_t wtype, int n_tok, int n_in,
                   int n_out) {
    /* dequantise a piece of the row (256 is a multiple of every block size), then a plain
     * left-to-right f32 dot; Y[t][o] holds the running sum between pieces */
    float w[IA_QK_K];
    const size_t rs = ia_type_row_size(wtype, n_in);
    const int64_t bs = ia_type_traits_get(wtype)->blck_size;
    for (int o = 0; o < n_out; o++) {
        const uint8_t *row = (const uint8_t *)W + (size_t)o * rs;
        for (int t = 0; t < n_tok; t++) Y[(size_t)t * n_out + o] = 0.0f;
        for (int k0 = 0; k0 < n_in; k0 += IA_QK_K) {
            const int len = n_in - k0 < IA_QK_K ? n_in - k0 : IA_QK_K;
            ia_dequantize_row(wtype, row + (size_t)(k0 / bs) * ia_type_traits_get(wtype)->type_size, w,
                              len);
            for (int t = 0; t < n_tok; t++) {
                const float *x = X + (size_t)t * n_in + k0;
                float s = Y[(size_t)t * n_out + o];
                for (int k = 0; k < len; k++) s += w[k] * x[k];
                Y[(size_t)t * n_out + o] = s;
            }
        }
    }
}

/* ==== scalar kernel (portable; the fallback on non-x86 and old x86) ==== */

static void dequant_scalar(uint32_t type, const void *row, int64_t k0, int len, float *out) {
    const ia_type_traits *tt = ia_type_traits_get(type);
    ia_dequantize_row(type, (const uint8_t *)row + (size_t)(k0 / tt->blck_size) * tt->type_size, out,
                      len);
}

static void dot_scalar(const float *const *w, int len, const float *X, int64_t ldx, int n_tok,
                       float *Y, int64_t ldy, int nr, bool accumulate) {
    /* eight interleaved partial sums (i mod 8) so compilers can vectorise without reassociating */
    const int nv = len & ~7;
    for (int t = 0; t < n_tok; t++) {
        const float *x = X + t * ldx;
        for (int r = 0; r < nr; r++) {
            const float *wr = w[r];
            float a[8] = {0};
            for (int k = 0; k < nv; k += 8)
                for (int l = 0; l < 8; l++) a[l] += wr[k + l] * x[k + l];
            float s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
            for (int k = nv; k < len; k++) s += wr[k] * x[k];
            float *y = Y + t * ldy + r;
            *y = accumulate ? *y + s : s;
        }
    }
}

const ia_mm_kernel ia_mm_kernel_scalar = {"scalar", dequant_scalar, dot_scalar, NULL, NULL, NULL};

/* ==== kernel selection ==== */

#if defined(__x86_64__)
/* clang's __builtin_cpu_supports does not know "f16c"; ask CPUID leaf 1 directly (ECX bit 29). */
static bool cpu_has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}
#endif

static const ia_mm_kernel *kernel_by_name(const char *name) {
    if (!name) return NULL;
    if (strcasecmp(name, "scalar") == 0) return &ia_mm_kernel_scalar;
#if defined(__x86_64__)
    __builtin_cpu_init();
    /* F16C conversions are part of AVX-512F; the AVX2 path needs FMA and F16C besides */
    if (strcasecmp(name, "avx2") == 0 && __builtin_cpu_supports("avx2") &&
        __builtin_cpu_supports("fma") && cpu_has_f16c())
        return &ia_mm_kernel_avx2;
    if (strcasecmp(name, "avx512") == 0 && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq"))
        return &ia_mm_kernel_avx512;
#endif
    return NULL;
}

static const ia_mm_kernel *kernel_auto(void) {
    const ia_mm_kernel *k = kernel_by_name(getenv("IA_KERNEL"));
    if (!k) k = kernel_by_name("avx512");
    if (!k) k = kernel_by_name("avx2");
    if (!k) k = &ia_mm_kernel_scalar;
    return k;
}

/* Resolved on first use; racing first calls store the same pointer. */
static _Atomic(const ia_mm_kernel *) g_kernel;

static const ia_mm_kernel *kernel_get(void) {
    const ia_mm_kernel *k = atomic_load_explicit(&g_kernel, memory_order_acquire);
    if (!k) {
        k = kernel_auto();
        atomic_store_explicit(&g_kernel, k, memory_order_release);
    }
    return k;
}

const char *ia_cpu_kernel_name(void) { return kernel_get()->name; }

bool ia_kernel_available(const char *name) { return kernel_by_name(name) != NULL; }

bool ia_kernel_force(const char *name) {
    const ia_mm_kernel *k = name ? kernel_by_name(name) : kernel_auto();
    if (!k) return false;
    atomic_store_explicit(&g_kernel, k, memory_order_release);
    return true;
}

void ia_dequantize_row_fast(uint32_t type, const void *src, float *dst, int64_t n) {
    const ia_type_traits *tt = ia_type_traits_get(type);
    IA_ASSERT(tt && tt->supported && n % tt->blck_size == 0);
    const ia_mm_kernel *k = kernel_get();
    for (int64_t k0 = 0; k0 < n; k0 += IA_MM_CHUNK) {
        const int len = (int)(n - k0 < IA_MM_CHUNK ? n - k0 : IA_MM_CHUNK);
        k->dequant(type, src, k0, len, dst + k0);
    }
}

/* ==== driver ==== */

/* Asks for the bytes holding elements [k0, k0 + len) of rows o0 .. o0 + nr - 1. A chunk of one row
 * is only a few cache lines (420 bytes of Q6_K), too short for the hardware prefetcher to pick up,
 * so without this, big matrices run at memory latency rather than bandwidth. */
static void prefetch_chunk(const uint8_t *W, size_t rs, const ia_type_traits *tt, int o0, int nr, int k0,
                           int len) {
    const size_t a = (size_t)(k0 / tt->blck_size) * tt->type_size;
    const size_t e = (size_t)((k0 + len + tt->blck_size - 1) / tt->blck_size) * tt->type_size;
    for (int r = 0; r < nr; r++)
        for (size_t off = a; off < e; off += 64) __builtin_prefetch(W + (size_t)(o0 + r) * rs + off, 0, 3);
}

/* One call's arguments, shared by the threads. */
typedef struct mm_job {
    float *Y;
    const float *X;
    const uint8_t *W;
    uint32_t wtype;
    int n_tok, n_in, n_out, n_blk;
    size_t rs;
    const ia_type_traits *tt;
    const ia_mm_kernel *kern;
    bool fused, is_f32, rows; /* rows: F32/F16/BF16 decode through kern->dot_rows */
    _Atomic int next;             /* next block to hand out */
} mm_job;

/* Rows o0 .. o0 + IA_MM_ROWS - 1 (block b) for every token. */
static void mm_block(const mm_job *j, int b, bool prefetch_next) {
    const ia_mm_kernel *kern = j->kern;
    const int n_in = j->n_in, n_out = j->n_out, n_tok = j->n_tok;
    const size_t rs = j->rs;
    float buf[IA_MM_ROWS][IA_MM_CHUNK] __attribute__((aligned(64)));
    const float *w[IA_MM_ROWS];
    const int o0 = b * IA_MM_ROWS;
    const int nr = n_out - o0 < IA_MM_ROWS ? n_out - o0 : IA_MM_ROWS;
    const uint8_t *rows[IA_MM_ROWS];
    for (int r = 0; r < IA_MM_ROWS; r++) rows[r] = j->W + (size_t)(o0 + (r < nr ? r : nr - 1)) * rs;
    const uint8_t *pf_rows[IA_MM_ROWS];
    if (prefetch_next) {
        const int o1 = o0 + IA_MM_ROWS, nr1 = n_out - o1 < IA_MM_ROWS ? n_out - o1 : IA_MM_ROWS;
        for (int r = 0; r < IA_MM_ROWS; r++) pf_rows[r] = j->W + (size_t)(o1 + (r < nr1 ? r : nr1 - 1)) * rs;
    }
    for (int k0 = 0; k0 < n_in; k0 += IA_MM_CHUNK) {
        const int len = n_in - k0 < IA_MM_CHUNK ? n_in - k0 : IA_MM_CHUNK;
        if (j->fused) {
            /* decoding: the kernel prefetches the next block's rows as it goes (issued all at once
             * here, one block ahead, the prefetches of a chunk arrived too late: F32 decode ran at a
             * third of the bandwidth) */
            kern->dot_fused(j->wtype, rows, k0, len, j->X + k0, n_in, n_tok, j->Y + o0, n_out, nr, k0 > 0,
                            prefetch_next ? pf_rows : NULL);
            continue;
        }
        /* batches: the same chunk of the next block's rows (each weight is reused by every token,
         * so the burst is hidden) */
        if (prefetch_next) {
            const int nr1 = n_out - o0 - IA_MM_ROWS < IA_MM_ROWS ? n_out - o0 - IA_MM_ROWS : IA_MM_ROWS;
            prefetch_chunk(j->W, rs, j->tt, o0 + IA_MM_ROWS, nr1, k0, len);
        }
        if (!j->is_f32 && kern->dequant_rows) {
            kern->dequant_rows(j->wtype, rows, k0, len, buf);
            for (int r = 0; r < IA_MM_ROWS; r++) w[r] = buf[r];
            kern->dot(w, len, j->X + k0, n_in, n_tok, j->Y + o0, n_out, nr, k0 > 0);
            continue;
        }
        for (int r = 0; r < IA_MM_ROWS; r++) {
            if (r >= nr) { w[r] = w[nr - 1]; continue; }
            const uint8_t *row = rows[r];
            if (j->is_f32 && n_tok <= IA_MM_FUSED_MAX_TOK) {
                w[r] = (const float *)row + k0; /* f32 rows read once are used in place */
            } else if (j->is_f32) { /* read n_tok/2 times: a contiguous copy stays in L1 */
                memcpy(buf[r], (const float *)row + k0, (size_t)len * sizeof(float));
                w[r] = buf[r];
            } else {
                kern->dequant(j->wtype, row, k0, len, buf[r]);
                w[r] = buf[r];
            }
        }
        kern->dot(w, len, j->X + k0, n_in, n_tok, j->Y + o0, n_out, nr, k0 > 0);
    }
}

/* Blocks b0 .. b1 - 1: decoding F32/F16/BF16, their rows as one stream; else block by block, each
 * prefetching the next one of the range. */
static void mm_range(const mm_job *j, int b0, int b1) {
    if (j->rows) {
        const int o1 = b1 * IA_MM_ROWS < j->n_out ? b1 * IA_MM_ROWS : j->n_out;
        j->kern->dot_rows(j->wtype, j->W, j->rs, j->n_in, b0 * IA_MM_ROWS, o1, j->X, j->n_in, j->n_tok, j->Y, j->n_out);
        return;
    }
    for (int b = b0; b < b1; b++) mm_block(j, b, b + 1 < b1);
}

/* Blocks are handed out in runs from a shared counter (ia_pool_claim): a thread slowed down by
 * another process on its core takes fewer, instead of holding everyone at the end. Which thread
 * computes a block never changes its bits. */
static void mm_worker(void *ctx, int tid, int nth) {
    mm_job *j = ctx;
    (void)tid;
    if (nth == 1) {
        mm_range(j, 0, j->n_blk);
        return;
    }
    for (int b0, b1; ia_pool_claim(&j->next, j->n_blk, nth, 1, &b0, &b1);) mm_range(j, b0, b1);
}

static void mm_job_init(mm_job *j, float *Y, const float *X, const void *W, uint32_t wtype, int n_tok, int n_in,
                        int n_out) {
    const ia_type_traits *tt = ia_type_traits_get(wtype);
    IA_ASSERT(tt && tt->supported && n_in % tt->blck_size == 0 && n_tok >= 0 && n_out >= 0);
    *j = (mm_job){.Y = Y, .X = X, .W = W, .wtype = wtype, .n_tok = n_tok, .n_in = n_in, .n_out = n_out,
                  .rs = ia_type_row_size(wtype, n_in), .tt = tt, .kern = kernel_get()};
    j->n_blk = (n_out + IA_MM_ROWS - 1) / IA_MM_ROWS;
    j->is_f32 = wtype == IA_TYPE_F32;
    j->fused = j->kern->dot_fused && n_tok <= IA_MM_FUSED_MAX_TOK;
    j->rows = (wtype == IA_TYPE_F32 || wtype == IA_TYPE_F16 || wtype == IA_TYPE_BF16) && j->kern->dot_rows &&
              n_tok <= IA_MM_FUSED_MAX_TOK;
    atomic_init(&j->next, 0);
}

void ia_matmul(float *Y, const float *X, const void *W, uint32_t wtype, int n_tok, int n_in,
               int n_out) {
    mm_job j;
    mm_job_init(&j, Y, X, W, wtype, n_tok, n_in, n_out);
    if (n_tok == 0 || n_out == 0) return;
    if (n_in == 0) {
        memset(Y, 0, (size_t)n_tok * n_out * sizeof(float));
        return;
    }
    /* threads only pay off past a few hundred thousand multiply-adds; the split never changes the
     * result, since every (t, o) is computed whole by one thread with the same code */
    int nth = j.n_blk > 1 && (double)n_tok * n_in * n_out > 2e5 ? ia_pool_threads() : 1;
    if (nth > j.n_blk) nth = j.n_blk;
    ia_pool_run(nth, mm_worker, &j);
}

/* Several matrices against one X in one parallel step (the q/k/v and gate/up projections): the blocks
 * of all of them form one list; each block is computed exactly as ia_matmul computes it. */
typedef struct mm_multi {
    mm_job job[8];
    int n, start[9];
    _Atomic int next;
} mm_multi;

static void mm_multi_worker(void *ctx, int tid, int nth) {
    mm_multi *m = ctx;
    (void)tid;
    const int total = m->start[m->n];
    for (int b0, b1; ia_pool_claim(&m->next, total, nth, 1, &b0, &b1);) {
        int ti = 0;
        for (int b = b0; b < b1;) { /* the run, a matrix's part at a time */
            while (b >= m->start[ti + 1]) ti++;
            const int end = b1 < m->start[ti + 1] ? b1 : m->start[ti + 1];
            mm_range(&m->job[ti], b - m->start[ti], end - m->start[ti]);
            b = end;
        }
    }
}

void ia_matmul_exact_multi(const float *X, int n_tok, int n_in, const ia_mm_task *tasks, int n_tasks) {
    IA_ASSERT(n_tasks >= 0 && n_tasks <= 8);
    if (n_tok <= 0) return;
    mm_multi m = {.n = 0};
    double work = 0;
    for (int i = 0; i < n_tasks; i++) {
        const ia_mm_task *t = &tasks[i];
        if (t->n_out <= 0) continue;
        if (n_in == 0) {
            memset(t->Y, 0, (size_t)n_tok * t->n_out * sizeof(float));
            continue;
        }
        mm_job_init(&m.job[m.n], t->Y, X, t->W, t->wtype, n_tok, n_in, t->n_out);
        m.start[m.n + 1] = m.start[m.n] + m.job[m.n].n_blk;
        work += (double)n_tok * n_in * t->n_out;
        m.n++;
    }
    if (m.n == 0) return;
    const int total = m.start[m.n];
    int nth = total > 1 && work > 2e5 ? ia_pool_threads() : 1;
    if (nth > total) nth = total;
    atomic_init(&m.next, 0);
    ia_pool_run(nth, mm_multi_worker, &m);
}
