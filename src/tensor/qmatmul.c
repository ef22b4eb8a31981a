/* qmatmul.c — the low-precision path of the inference matmul (ia_matmul_infer / ia_matmul_multi): for
 * Q8_0, Q4_0 and Q4_K weights, activations quantised per 32 values to int8 (as llama.cpp does), block
 * dot products in exact integer arithmetic and the scales applied in f32 in one fixed order; for BF16
 * weights, activations rounded to bf16 and products summed as vdpbf16ps does (as llama.cpp's BF16
 * path rounds them). Every kernel family gives the same bits. Holds the activation quantisers, the
 * plain C reference kernel (which reads the GGUF rows directly), the registry of weights repacked for
 * the SIMD kernels, and the driver. */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#include "kernels.h"
#include "pool.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <strings.h>

/* ---- precision -------------------------------------------------------------------------------- */

static _Atomic int g_prec = -1; /* -1: not read from the environment yet */

static const char *const prec_names[] = {"fast", "exact", "bf16"}; /* by IA_PREC_* */

int ia_precision_from_name(const char *s) {
    for (int p = 0; s && p < 3; p++)
        if (strcasecmp(s, prec_names[p]) == 0) return p;
    return -1;
}

const char *ia_precision_name(int prec) { return prec >= 0 && prec < 3 ? prec_names[prec] : "fast"; }

int ia_get_precision(void) {
    int p = atomic_load_explicit(&g_prec, memory_order_relaxed);
    if (p < 0) {
        /* unset or unknown: fast (the CLI refuses an unknown value before it gets here) */
        p = ia_precision_from_name(getenv("IA_PRECISION"));
        if (p < 0) p = IA_PREC_FAST;
        atomic_store_explicit(&g_prec, p, memory_order_relaxed);
    }
    return p;
}

void ia_set_precision(int prec) {
    atomic_store_explicit(&g_prec, prec == IA_PREC_EXACT || prec == IA_PREC_BF16 ? prec : IA_PREC_FAST,
                          memory_order_relaxed);
}

bool ia_q8_type(uint32_t t) {
    return t == IA_TYPE_Q8_0 || t == IA_TYPE_Q4_0 || t == IA_TYPE_Q4_K || t == IA_TYPE_BF16 ||
           ((t == IA_TYPE_F32 || t == IA_TYPE_F16) && ia_get_precision() == IA_PREC_BF16);
}

/* Values per block of the weight type on this path (n_in must be a multiple). */
static int q8_block(uint32_t t) { return t == IA_TYPE_Q4_K ? IA_QK_K : 32; }

/* Whether kernel k takes weights of this type (bf16 activations need a kernel with bf16 support). */
static bool q8_takes(const ia_q8_kernel *k, uint32_t t) {
    return k && ia_q8_type(t) && (!ia_q8_is_bf16(t) || k->quantize_bf16 != NULL);
}

/* Weight i of an F32, F16 or BF16 row as the bf16 the BF16 precision multiplies (rounded to nearest
 * even from F32 or F16: every F16 value is a normal float, so the rounding is vcvtneps2bf16's). */
static uint16_t weight_bf16(uint32_t type, const uint8_t *w, int i) {
    if (type == IA_TYPE_BF16) return ((const uint16_t *)w)[i];
    if (type == IA_TYPE_F16) return ia_fp32_to_bf16_cvtne(ia_fp16_to_fp32(((const uint16_t *)w)[i]));
    float f;
    memcpy(&f, w + (size_t)i * 4, 4);
    return ia_fp32_to_bf16_cvtne(f);
}

/* ---- activation quantisation ------------------------------------------------------------------ */

size_t ia_qact_row_bytes(int n_in) {
    const size_t nb = (size_t)n_in / IA_QA_BLOCK;
    return ((size_t)n_in + nb * (sizeof(float) + sizeof(int32_t)) + 63) & ~(size_t)63;
}

/* Per block of 32: d = max|x| / 127, q = nearest-even(x * (1/d)) (0 when d is 0), s = sum q. SIMD
 * quantisers must give these bytes exactly (the same single operations in the same order). */
void ia_qact_quantize_ref(const float *x, int n_in, uint8_t *row) {
    int8_t *q = (int8_t *)row;
    float *d = (float *)(row + n_in);
    int32_t *s = (int32_t *)(d + n_in / IA_QA_BLOCK);
    for (int b = 0; b < n_in / IA_QA_BLOCK; b++) {
        const float *xb = x + IA_QA_BLOCK * b;
        float amax = 0;
        for (int i = 0; i < IA_QA_BLOCK; i++) amax = fabsf(xb[i]) > amax ? fabsf(xb[i]) : amax;
        const float db = amax / 127.0f, id = db != 0.0f ? 1.0f / db : 0.0f;
        int32_t sum = 0;
        for (int i = 0; i < IA_QA_BLOCK; i++) {
            const int v = (int)nearbyintf(xb[i] * id);
            q[IA_QA_BLOCK * b + i] = (int8_t)v;
            sum += v;
        }
        d[b] = db;
        s[b] = sum;
    }
}

/* bf16 activations: round to nearest even, inputs that are float subnormals become zero (what
 * vcvtneps2bf16 does; it does not consult MXCSR), NaN stays a quiet NaN. */
size_t ia_qact_row_bytes_bf16(int n_in) { return ((size_t)n_in * 2 + 63) & ~(size_t)63; }

uint16_t ia_fp32_to_bf16_cvtne(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7F800000u) == 0) return (uint16_t)((u >> 16) & 0x8000u);       /* zero, subnormal */
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40u); /* NaN */
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

void ia_qact_bf16_ref(const float *x, int n_in, uint8_t *row) {
    uint16_t *h = (uint16_t *)row;
    for (int i = 0; i < n_in; i++) h[i] = ia_fp32_to_bf16_cvtne(x[i]);
}

/* One vdpbf16ps lane step, acc + a*b for bf16 a, b: an f32 FMA with subnormal inputs read as zero and
 * a subnormal result flushed to zero, rounding to nearest even. */
float ia_bf16_dot_step(float acc, uint16_t a, uint16_t b) {
    if (fpclassify(acc) == FP_SUBNORMAL) acc = copysignf(0.0f, acc);
    float fa = (a & 0x7F80u) ? ia_bf16_to_fp32(a) : copysignf(0.0f, ia_bf16_to_fp32(a));
    float fb = (b & 0x7F80u) ? ia_bf16_to_fp32(b) : copysignf(0.0f, ia_bf16_to_fp32(b));
    float r = fmaf(fa, fb, acc);
    return fpclassify(r) == FP_SUBNORMAL ? copysignf(0.0f, r) : r;
}

/* ---- the reference kernel: one (token, row) from the GGUF blocks --------------------------------- */

/* The arithmetic every kernel reproduces. Per 32-value block j, with integer dot isum_j:
 *   Q8_0: isum = sum qw*qx;            acc = fma((float)isum, dw*dx, acc)
 *   Q4_0: isum = sum (q - 8)*qx;       acc = fma((float)isum, dw*dx, acc)
 *   Q4_K: isum = sum q*qx (q 0..15);   acc = fma((float)isum, (d*sc)*dx, acc);
 *                                      acc = fma(-(float)sx, (dmin*m)*dx, acc)
 * in increasing j, acc starting at 0 (dw*dx, d*sc etc. are single f32 products).
 *   BF16: pairs p = (2i, 2i+1) of weights and bf16 activations go to accumulator i mod 2, each pair as
 *         vdpbf16ps does it (the odd element first, then the even one); the result is acc0 + acc1.
 *         F32 and F16 (BF16 precision): the same, with each weight rounded to bf16 first. */
float ia_q8_dot_ref(uint32_t type, const uint8_t *w, const uint8_t *qa, int n_in) {
    if (ia_q8_is_bf16(type)) {
        const uint16_t *xh = (const uint16_t *)qa;
        float a[2] = {0.0f, 0.0f};
        for (int i = 0; i < n_in / 2; i++) {
            float *acc = &a[i & 1];
            *acc = ia_bf16_dot_step(*acc, weight_bf16(type, w, 2 * i + 1), xh[2 * i + 1]);
            *acc = ia_bf16_dot_step(*acc, weight_bf16(type, w, 2 * i), xh[2 * i]);
        }
        return a[0] + a[1];
    }
    const int8_t *qx = (const int8_t *)qa;
    const float *dx = (const float *)(qa + n_in);
    const int32_t *sx = (const int32_t *)(dx + n_in / IA_QA_BLOCK);
    float acc = 0;
    if (type == IA_TYPE_Q8_0) {
        const ia_block_q8_0 *b = (const ia_block_q8_0 *)w;
        for (int j = 0; j < n_in / 32; j++) {
            int32_t is = 0;
            for (int i = 0; i < 32; i++) is += (int32_t)b[j].qs[i] * qx[32 * j + i];
            acc = fmaf((float)is, ia_fp16_to_fp32(b[j].d) * dx[j], acc);
        }
    } else if (type == IA_TYPE_Q4_0) {
        const ia_block_q4_0 *b = (const ia_block_q4_0 *)w;
        for (int j = 0; j < n_in / 32; j++) {
            int32_t is = 0;
            for (int i = 0; i < 16; i++) {
                is += ((b[j].qs[i] & 0x0F) - 8) * qx[32 * j + i];
                is += ((b[j].qs[i] >> 4) - 8) * qx[32 * j + 16 + i];
            }
            acc = fmaf((float)is, ia_fp16_to_fp32(b[j].d) * dx[j], acc);
        }
    } else {
        IA_ASSERT(type == IA_TYPE_Q4_K);
        const ia_block_q4_K *b = (const ia_block_q4_K *)w;
        for (int sb = 0; sb < n_in / IA_QK_K; sb++) {
            const float d = ia_fp16_to_fp32(b[sb].d), dmin = ia_fp16_to_fp32(b[sb].dmin);
            for (int j = 0; j < 8; j++) {
                uint8_t sc, m;
                ia_q4k_scale_min(j, b[sb].scales, &sc, &m);
                const uint8_t *q = b[sb].qs + 32 * (j / 2);
                const int jj = 8 * sb + j, sh = (j & 1) * 4;
                int32_t is = 0;
                for (int i = 0; i < 32; i++) is += ((q[i] >> sh) & 0x0F) * qx[32 * jj + i];
                acc = fmaf((float)is, (d * (float)sc) * dx[jj], acc);
                acc = fmaf(-(float)sx[jj], (dmin * (float)m) * dx[jj], acc);
            }
        }
    }
    return acc;
}

/* ---- packing for the SIMD kernels --------------------------------------------------------------- */

/* Panel layouts (IA_QP_ROWS = 16 rows; rows past n_out repeat the last), per 32-value block j, or per
 * 256-value super-block for Q4_K; "[g][r][4]" = for each 4-value group g, 4 bytes of each row r, which
 * is what one vpdpbusd multiplies against 4 broadcast activation bytes:
 *   Q8_0: [8][16][4] u8 (q + 128), then 16 f16 scales                              544 bytes
 *   Q4_0: [4][16][4] bytes qs[4v..4v+3] of each row (low nibbles: group v, high:
 *         group v + 4), then 16 f16 scales                                          288 bytes
 *   Q4_K: [4 pairs c][8][16][4] bytes qs[32c+4g..] (low nibbles: sub-block 2c group g,
 *         high: sub-block 2c+1 group g), 16 f16 d, 16 f16 dmin, [8][16] u8 scales,
 *         [8][16] u8 mins                                                        2368 bytes
 *   BF16: [16 pairs][16][2] bf16: for each pair of values, both of each row (what one vdpbf16ps
 *         multiplies against a broadcast activation pair)                           1024 bytes */
size_t ia_qpack_block_bytes(uint32_t type) {
    switch (type) {
    case IA_TYPE_BF16:
    case IA_TYPE_F16:
    case IA_TYPE_F32: return 1024;
    case IA_TYPE_Q8_0: return 544;
    case IA_TYPE_Q4_0: return 288;
    case IA_TYPE_Q4_K: return 2368;
    default: return 0;
    }
}

static void pack_panel(const ia_qpack *p, int panel, uint8_t *dst) {
    const size_t rs = ia_type_row_size(p->type, p->n_in);
    const uint8_t *src[IA_QP_ROWS];
    for (int r = 0; r < IA_QP_ROWS; r++) {
        int o = panel * IA_QP_ROWS + r;
        if (o >= p->n_out) o = p->n_out - 1;
        src[r] = (const uint8_t *)p->src + (size_t)o * rs;
    }
    if (p->type == IA_TYPE_BF16) {
        for (int j = 0; j < p->n_in / 32; j++, dst += 1024)
            for (int r = 0; r < IA_QP_ROWS; r++)
                for (int g = 0; g < 16; g++) memcpy(dst + (g * IA_QP_ROWS + r) * 4, src[r] + (size_t)(32 * j + 2 * g) * 2, 4);
    } else if (ia_q8_is_bf16(p->type)) { /* F32 or F16 rounded to bf16 (weight_bf16's bits), the BF16 layout */
        float f[32];
        for (int j = 0; j < p->n_in / 32; j++, dst += 1024)
            for (int r = 0; r < IA_QP_ROWS; r++) {
                ia_dequantize_row_fast(p->type, src[r] + ia_type_row_size(p->type, 32 * j), f, 32);
                for (int i = 0; i < 32; i++) {
                    const uint16_t h = ia_fp32_to_bf16_cvtne(f[i]);
                    memcpy(dst + ((i / 2) * IA_QP_ROWS + r) * 4 + (i & 1) * 2, &h, 2);
                }
            }
    } else if (p->type == IA_TYPE_Q8_0) {
        for (int j = 0; j < p->n_in / 32; j++, dst += 544) {
            for (int r = 0; r < IA_QP_ROWS; r++) {
                const ia_block_q8_0 *b = (const ia_block_q8_0 *)src[r] + j;
                for (int g = 0; g < 8; g++)
                    for (int i = 0; i < 4; i++) dst[(g * IA_QP_ROWS + r) * 4 + i] = (uint8_t)(b->qs[4 * g + i] + 128);
                memcpy(dst + 512 + 2 * r, &b->d, 2);
            }
        }
    } else if (p->type == IA_TYPE_Q4_0) {
        for (int j = 0; j < p->n_in / 32; j++, dst += 288) {
            for (int r = 0; r < IA_QP_ROWS; r++) {
                const ia_block_q4_0 *b = (const ia_block_q4_0 *)src[r] + j;
                for (int v = 0; v < 4; v++) memcpy(dst + (v * IA_QP_ROWS + r) * 4, b->qs + 4 * v, 4);
                memcpy(dst + 256 + 2 * r, &b->d, 2);
            }
        }
    } else {
        for (int sb = 0; sb < p->n_in / IA_QK_K; sb++, dst += 2368) {
            for (int r = 0; r < IA_QP_ROWS; r++) {
                const ia_block_q4_K *b = (const ia_block_q4_K *)src[r] + sb;
                for (int c = 0; c < 4; c++)
                    for (int g = 0; g < 8; g++)
                        memcpy(dst + ((c * 8 + g) * IA_QP_ROWS + r) * 4, b->qs + 32 * c + 4 * g, 4);
                memcpy(dst + 2048 + 2 * r, &b->d, 2);
                memcpy(dst + 2080 + 2 * r, &b->dmin, 2);
                for (int j = 0; j < 8; j++) {
                    uint8_t sc, m;
                    ia_q4k_scale_min(j, b->scales, &sc, &m);
                    dst[2112 + j * IA_QP_ROWS + r] = sc;
                    dst[2240 + j * IA_QP_ROWS + r] = m;
                }
            }
        }
    }
}

/* ---- registry ------------------------------------------------------------------------------------ */

/* Packed copies by source pointer; a small open-addressing table (a model has ~200 matrices). */
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static ia_qpack **reg_tab;
static int reg_cap, reg_n;

static unsigned reg_hash(const void *p, int cap) {
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (unsigned)(x & (uint64_t)(cap - 1));
}

static ia_qpack *reg_find_locked(const void *src) {
    if (!reg_cap) return NULL;
    for (unsigned i = reg_hash(src, reg_cap);; i = (i + 1) & (unsigned)(reg_cap - 1)) {
        if (!reg_tab[i]) return NULL;
        if (reg_tab[i]->src == src) return reg_tab[i];
    }
}

static bool reg_insert_locked(ia_qpack *p) {
    if (2 * (reg_n + 1) > reg_cap) {
        const int cap = reg_cap ? 2 * reg_cap : 256;
        ia_qpack **t = ia_calloc((size_t)cap, sizeof *t);
        if (!t) return false;
        for (int i = 0; i < reg_cap; i++)
            if (reg_tab[i]) {
                unsigned k = reg_hash(reg_tab[i]->src, cap);
                while (t[k]) k = (k + 1) & (unsigned)(cap - 1);
                t[k] = reg_tab[i];
            }
        ia_free(reg_tab);
        reg_tab = t;
        reg_cap = cap;
    }
    unsigned k = reg_hash(p->src, reg_cap);
    while (reg_tab[k]) k = (k + 1) & (unsigned)(reg_cap - 1);
    reg_tab[k] = p;
    reg_n++;
    return true;
}

static void reg_remove_locked(const void *src) {
    if (!reg_cap) return;
    unsigned i = reg_hash(src, reg_cap);
    while (reg_tab[i] && reg_tab[i]->src != src) i = (i + 1) & (unsigned)(reg_cap - 1);
    if (!reg_tab[i]) return;
    ia_qpack *p = reg_tab[i];
    if (--p->refs > 0) return;
    reg_tab[i] = NULL;
    reg_n--;
    /* re-insert the rest of the cluster so lookups still find them */
    for (unsigned k = (i + 1) & (unsigned)(reg_cap - 1); reg_tab[k]; k = (k + 1) & (unsigned)(reg_cap - 1)) {
        ia_qpack *q = reg_tab[k];
        reg_tab[k] = NULL;
        unsigned h = reg_hash(q->src, reg_cap);
        while (reg_tab[h]) h = (h + 1) & (unsigned)(reg_cap - 1);
        reg_tab[h] = q;
    }
    ia_free(p->data);
    ia_free(p);
}

const ia_q8_kernel *ia_q8_kernel_get(void); /* below */

typedef struct pack_job {
    ia_qpack *p;
    _Atomic int next;
} pack_job;

static void pack_worker(void *ctx, int tid, int nth) {
    pack_job *j = ctx;
    (void)tid, (void)nth;
    for (int i; (i = atomic_fetch_add(&j->next, 1)) < j->p->n_panel;)
        pack_panel(j->p, i, j->p->data + (size_t)i * j->p->panel_bytes);
}

int ia_qpack_add(const void *W, uint32_t type, int n_in, int n_out) {
    const ia_q8_kernel *k = ia_q8_kernel_get();
    if (!W || !q8_takes(k, type) || n_out < 1 || n_in < 1 || !k->needs_pack) return IA_OK;
    if (n_in % q8_block(type)) return IA_OK;
    pthread_mutex_lock(&reg_mu);
    ia_qpack *p = reg_find_locked(W);
    if (p) {
        p->refs++;
        pthread_mutex_unlock(&reg_mu);
        return IA_OK;
    }
    pthread_mutex_unlock(&reg_mu);
    p = ia_calloc(1, sizeof *p);
    if (!p) return IA_ERR_NOMEM;
    p->src = W;
    p->type = type;
    p->n_in = n_in;
    p->n_out = n_out;
    p->n_panel = (n_out + IA_QP_ROWS - 1) / IA_QP_ROWS;
    p->panel_bytes = ia_qpack_block_bytes(type) * (size_t)(n_in / q8_block(type));
    p->refs = 1;
    p->data = ia_malloc(p->panel_bytes * (size_t)p->n_panel);
    if (!p->data) { ia_free(p); return IA_ERR_NOMEM; }
    pack_job j = {.p = p};
    atomic_init(&j.next, 0);
    ia_pool_run(ia_pool_threads(), pack_worker, &j);
    pthread_mutex_lock(&reg_mu);
    ia_qpack *q = reg_find_locked(W); /* another thread packed it meanwhile */
    bool ok = true;
    if (q) q->refs++;
    else ok = reg_insert_locked(p);
    pthread_mutex_unlock(&reg_mu);
    if (q || !ok) {
        ia_free(p->data);
        ia_free(p);
    }
    return ok ? IA_OK : IA_ERR_NOMEM;
}

void ia_qpack_remove(const void *W) {
    if (!W) return;
    pthread_mutex_lock(&reg_mu);
    reg_remove_locked(W);
    pthread_mutex_unlock(&reg_mu);
}

size_t ia_qpack_bytes(void) {
    size_t n = 0;
    pthread_mutex_lock(&reg_mu);
    for (int i = 0; i < reg_cap; i++)
        if (reg_tab[i]) n += reg_tab[i]->panel_bytes * (size_t)reg_tab[i]->n_panel;
    pthread_mutex_unlock(&reg_mu);
    return n;
}

static const ia_qpack *reg_lookup(const void *W) {
    pthread_mutex_lock(&reg_mu);
    const ia_qpack *p = reg_find_locked(W);
    pthread_mutex_unlock(&reg_mu);
    return p;
}

/* ---- kernel selection ------------------------------------------------------------------------- */

static void gemm_ref(const ia_q8_task *t, int p0, int p1, const uint8_t *qa, size_t qa_stride, int t0, int t1) {
    const size_t rs = ia_type_row_size(t->wtype, t->n_in);
    for (int o = p0 * IA_QP_ROWS; o < p1 * IA_QP_ROWS && o < t->n_out; o++)
        for (int tk = t0; tk < t1; tk++)
            t->Y[(size_t)tk * t->n_out + o] =
                ia_q8_dot_ref(t->wtype, (const uint8_t *)t->W + (size_t)o * rs, qa + (size_t)tk * qa_stride, t->n_in);
}

static const ia_q8_kernel q8_scalar = {"scalar", false, ia_qact_quantize_ref, gemm_ref, ia_qact_bf16_ref};

/* The integer kernel of the current kernel family, or NULL (the family computes f32 activations). */
const ia_q8_kernel *ia_q8_kernel_get(void) {
    const char *fam = ia_cpu_kernel_name();
    if (strcmp(fam, "scalar") == 0) return &q8_scalar;
#if defined(__x86_64__)
    if (strcmp(fam, "avx512") == 0 && ia_q8_kernel_avx512.gemm) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512vnni"))
            return __builtin_cpu_supports("avx512bf16") ? &ia_q8_kernel_avx512_bf16 : &ia_q8_kernel_avx512;
        return &ia_q8_kernel_avx2; /* AVX-512 without VNNI (Skylake-X): the AVX2 integer kernel */
    }
    /* the avx2 family already requires avx2, fma and f16c */
    if (strcmp(fam, "avx2") == 0) return &ia_q8_kernel_avx2;
#endif
    return NULL;
}

bool ia_cpu_has_bf16_dot(void) {
    const ia_q8_kernel *k = ia_q8_kernel_get();
    return k && k->quantize_bf16 != NULL && k != &q8_scalar;
}

bool ia_matmul_uses_q8(uint32_t wtype) {
    return ia_get_precision() != IA_PREC_EXACT && q8_takes(ia_q8_kernel_get(), wtype);
}

size_t ia_matmul_infer_row_bytes(uint32_t wtype, int n_in) {
    return ia_q8_is_bf16(wtype) && ia_matmul_uses_q8(wtype) ? (size_t)n_in * 2 : ia_type_row_size(wtype, n_in);
}

/* ---- driver ---------------------------------------------------------------------------------------- */

/* Quantised activations live in a per-thread buffer that grows to the largest batch seen (the first
 * decode of a given size allocates; later ones do not). Freed when the thread exits. */
static pthread_key_t qa_key;
static pthread_once_t qa_once = PTHREAD_ONCE_INIT;
typedef struct qa_buf { uint8_t *p; size_t cap; } qa_buf;
static void qa_free(void *v) {
    qa_buf *b = v;
    if (b) ia_free(b->p);
    ia_free(b);
}
static void qa_key_init(void) { pthread_key_create(&qa_key, qa_free); }

static uint8_t *qa_get(size_t bytes) {
    pthread_once(&qa_once, qa_key_init);
    qa_buf *b = pthread_getspecific(qa_key);
    if (!b) {
        b = ia_calloc(1, sizeof *b);
        if (!b) return NULL;
        pthread_setspecific(qa_key, b);
    }
    if (b->cap < bytes) {
        uint8_t *p = ia_malloc(bytes);
        if (!p) return NULL;
        ia_free(b->p);
        b->p = p;
        b->cap = bytes;
    }
    return b->p;
}

/* Tokens per work item of a batch: enough that a weight panel is reused from L1 many times, few enough
 * that a big batch still splits into many items. */
#define Q8_TOK_CHUNK 64
#define Q8_PANELS 2 /* panels per work item */

typedef struct q8_job {
    const ia_q8_kernel *k;
    const ia_q8_task *tasks;
    int n_tasks, n_tok, n_in;
    const float *X;
    void (*quantize)(const float *x, int n_in, uint8_t *row); /* int8 blocks or bf16 */
    uint8_t *qa;
    size_t qa_stride;
    int items_per_task[8], n_tc; /* work items per task, token chunks */
    _Atomic int next_q, next;
    int n_items;
} q8_job;

static void q8_worker(void *ctx, int tid, int nth) {
    q8_job *j = ctx;
    (void)tid, (void)nth;
    /* 1: quantise the activations (rows handed out in runs of 8) */
    for (int r0; (r0 = atomic_fetch_add_explicit(&j->next_q, 8, memory_order_relaxed)) < j->n_tok;)
        for (int r = r0; r < r0 + 8 && r < j->n_tok; r++)
            j->quantize(j->X + (size_t)r * j->n_in, j->n_in, j->qa + (size_t)r * j->qa_stride);
}

static void q8_gemm_worker(void *ctx, int tid, int nth) {
    q8_job *j = ctx;
    (void)tid;
    for (int i0, i1; ia_pool_claim(&j->next, j->n_items, nth, 1, &i0, &i1);) {
        int ti = 0, base = 0; /* task of item it, and that task's first item */
        for (int it = i0; it < i1;) {
            while (it >= base + j->items_per_task[ti]) base += j->items_per_task[ti++];
            const ia_q8_task *t = &j->tasks[ti];
            const int n_panel = (t->n_out + IA_QP_ROWS - 1) / IA_QP_ROWS;
            const int end = i1 < base + j->items_per_task[ti] ? i1 : base + j->items_per_task[ti];
            if (j->n_tc == 1) { /* one token chunk: the run's items are consecutive panels, one stream */
                const int p0 = (it - base) * Q8_PANELS, p1 = (end - base) * Q8_PANELS;
                j->k->gemm(t, p0, p1 < n_panel ? p1 : n_panel, j->qa, j->qa_stride, 0, j->n_tok);
                it = end;
                continue;
            }
            const int pi = (it - base) / j->n_tc, tc = (it - base) % j->n_tc;
            const int p0 = pi * Q8_PANELS, p1 = p0 + Q8_PANELS < n_panel ? p0 + Q8_PANELS : n_panel;
            const int t0 = tc * Q8_TOK_CHUNK, t1 = t0 + Q8_TOK_CHUNK < j->n_tok ? t0 + Q8_TOK_CHUNK : j->n_tok;
            j->k->gemm(t, p0, p1, j->qa, j->qa_stride, t0, t1);
            it++;
        }
    }
}

/* Both steps in one pool job would need a barrier between them; two jobs cost one more handoff. */
/* Every task of one call takes the same activation format (all BF16, or all integer types). */
static void q8_run(const ia_q8_kernel *k, const float *X, int n_tok, int n_in, const ia_q8_task *tasks, int n_tasks) {
    q8_job j = {.k = k, .tasks = tasks, .n_tasks = n_tasks, .n_tok = n_tok, .n_in = n_in, .X = X};
    const bool bf16 = ia_q8_is_bf16(tasks[0].wtype);
    j.quantize = bf16 ? k->quantize_bf16 : k->quantize;
    j.qa_stride = bf16 ? ia_qact_row_bytes_bf16(n_in) : ia_qact_row_bytes(n_in);
    j.qa = qa_get(j.qa_stride * (size_t)n_tok);
    if (!j.qa) {
        /* out of memory for the batch's quantised rows: one row at a time from the stack, which
         * gives the same bits (every row is computed alone anyway) */
        uint8_t row[16384 + 16384 / IA_QA_BLOCK * 8 + 64] __attribute__((aligned(64)));
        IA_ASSERT(j.qa_stride <= sizeof row);
        ia_q8_task one[8];
        for (int r = 0; r < n_tok; r++) {
            for (int i = 0; i < n_tasks; i++) {
                one[i] = tasks[i];
                one[i].Y = tasks[i].Y + (size_t)r * tasks[i].n_out;
            }
            j.quantize(X + (size_t)r * n_in, n_in, row);
            for (int i = 0; i < n_tasks; i++) {
                const int n_panel = (one[i].n_out + IA_QP_ROWS - 1) / IA_QP_ROWS;
                /* Y rows of a single-token call are laid out with stride n_out: t0 = 0, t1 = 1 */
                k->gemm(&one[i], 0, n_panel, row, j.qa_stride, 0, 1);
            }
        }
        return;
    }
    atomic_init(&j.next_q, 0);
    atomic_init(&j.next, 0);
    double work = 0;
    j.n_tc = (n_tok + Q8_TOK_CHUNK - 1) / Q8_TOK_CHUNK;
    for (int i = 0; i < n_tasks; i++) {
        const int n_panel = (tasks[i].n_out + IA_QP_ROWS - 1) / IA_QP_ROWS;
        j.items_per_task[i] = (n_panel + Q8_PANELS - 1) / Q8_PANELS * j.n_tc;
        j.n_items += j.items_per_task[i];
        work += (double)n_tok * n_in * tasks[i].n_out;
    }
    const int nth = work > 2e5 ? ia_pool_threads() : 1;
    if (n_tok <= 8 || nth == 1) {
        for (int r = 0; r < n_tok; r++) j.quantize(X + (size_t)r * n_in, n_in, j.qa + (size_t)r * j.qa_stride);
    } else {
        ia_pool_run(nth < (n_tok + 7) / 8 ? nth : (n_tok + 7) / 8, q8_worker, &j);
    }
    /* items are claimed in runs (ia_pool_claim): one shared counter touched per item cost a
     * cache-line transfer every 16 KiB of weights in decode, and broke each thread's stream */
    ia_pool_run(nth < j.n_items ? nth : j.n_items, q8_gemm_worker, &j);
}

void ia_matmul_multi(const float *X, int n_tok, int n_in, const ia_mm_task *tasks, int n_tasks) {
    IA_ASSERT(n_tasks >= 1 && n_tasks <= 8);
    if (n_tok <= 0) return;
    const ia_q8_kernel *k = ia_get_precision() != IA_PREC_EXACT ? ia_q8_kernel_get() : NULL;
    ia_q8_task qt[8];
    ia_mm_task ft[8];
    int nq = 0, nf = 0;
    for (int i = 0; i < n_tasks; i++) {
        const ia_mm_task *t = &tasks[i];
        if (q8_takes(k, t->wtype) && n_in > 0 && t->n_out > 0 && n_in % q8_block(t->wtype) == 0) {
            const ia_qpack *p = k->needs_pack ? reg_lookup(t->W) : NULL;
            if (!k->needs_pack || (p && p->n_in == n_in && p->n_out == t->n_out && p->type == t->wtype)) {
                qt[nq++] = (ia_q8_task){t->Y, t->W, p, t->wtype, n_in, t->n_out};
                continue;
            }
            if (k->needs_pack) { /* not packed (not a model's weight): the reference gives the same bits */
                qt[nq++] = (ia_q8_task){t->Y, t->W, NULL, t->wtype, n_in, t->n_out};
                continue;
            }
        }
        ft[nf++] = *t;
    }
    if (nf) ia_matmul_exact_multi(X, n_tok, n_in, ft, nf);
    if (nq == 0) return;
    /* unpacked tasks run through the reference kernel, and each activation format is its own call */
    for (int bf = 0; bf < 2; bf++) {
        ia_q8_task packed[8], plain[8];
        int np = 0, nr = 0;
        for (int i = 0; i < nq; i++) {
            if (ia_q8_is_bf16(qt[i].wtype) != bf) continue;
            if (k->needs_pack && !qt[i].pack) plain[nr++] = qt[i];
            else packed[np++] = qt[i];
        }
        if (np) q8_run(k, X, n_tok, n_in, packed, np);
        if (nr) q8_run(&q8_scalar, X, n_tok, n_in, plain, nr);
    }
}

void ia_matmul_infer(float *Y, const float *X, const void *W, uint32_t wtype, int n_tok, int n_in, int n_out) {
    const ia_mm_task t = {Y, W, wtype, n_out};
    ia_matmul_multi(X, n_tok, n_in, &t, 1);
}
