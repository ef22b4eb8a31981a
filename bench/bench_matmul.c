/* bench_matmul.c — micro-benchmark of ia_matmul per weight type and kernel vs ia_matmul_ref, and of
 * the fast-precision path (ia_matmul_infer on packed weights, rows marked "fast"): GFLOP/s and weight
 * GB/s for n_tok = 1 and 16 (or one given count) at small-model shapes; the same matrix is called
 * again and again, so a matrix smaller than the caches measures arithmetic (not run by the tests).
 * Build: cc -std=c11 -D_GNU_SOURCE -O2 -fopenmp -Iinclude -Isrc bench/bench_matmul.c src/tensor/[a-z]*.c \
 *        src/util/[a-z]*.c -lm ; run: ./a.out [threads [n_in n_out [n_tok]]] (defaults 1, 1536, 576) */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "tensor/tensor.h"

/* Seconds per call: the best mean over batches of calls within ~0.3 s. With one thread the clock is
 * the thread's CPU time, so other processes sharing the machine do not inflate the numbers. */
static int g_threads = 1;
static double now(void) {
    if (g_threads != 1) return ia_time_now();
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* mode 0: ia_matmul, 1: ia_matmul_ref, 2: ia_matmul_infer */
static double run(int mode, float *Y, const float *X, const void *W, uint32_t type, int n_tok,
                  int n_in, int n_out) {
    double best = 1e30;
    const double end = ia_time_now() + 0.3;
    do {
        int iters = 0;
        const double t0 = now();
        double t;
        do { /* a batch of at least 2 ms */
            if (mode == 1) ia_matmul_ref(Y, X, W, type, n_tok, n_in, n_out);
            else if (mode == 2) ia_matmul_infer(Y, X, W, type, n_tok, n_in, n_out);
            else ia_matmul(Y, X, W, type, n_tok, n_in, n_out);
            iters++;
            t = now() - t0;
        } while (t < 2e-3);
        if (t / iters < best) best = t / iters;
    } while (ia_time_now() < end);
    return best;
}

int main(int argc, char **argv) {
    const int threads = argc > 1 ? atoi(argv[1]) : 1;
    g_threads = threads;
    const int n_in = argc > 3 ? atoi(argv[2]) : 1536, n_out = argc > 3 ? atoi(argv[3]) : 576;
    ia_set_threads(threads);
    static const uint32_t types[] = {IA_TYPE_F32, IA_TYPE_F16, IA_TYPE_BF16, IA_TYPE_Q8_0,
                                     IA_TYPE_Q4_0, IA_TYPE_Q4_K, IA_TYPE_Q6_K};
    static const char *const kernels[] = {"scalar", "avx2", "avx512"};
    int ntoks[2] = {1, 16}, n_nt = 2;
    if (argc > 4) ntoks[0] = atoi(argv[4]), n_nt = 1;
    const int max_tok = ntoks[n_nt - 1] > ntoks[0] ? ntoks[n_nt - 1] : ntoks[0];
    printf("# ia_matmul %d x %d (n_out x n_in), %d thread(s), default kernel %s\n", n_out, n_in,
           threads, ia_cpu_kernel_name());
    printf("%-5s %-6s %5s %10s %10s %10s\n", "type", "kernel", "n_tok", "us/call", "GFLOP/s", "GB/s(W)");
    ia_rng r;
    ia_rng_seed(&r, 1);
    float *X = malloc(sizeof(float) * max_tok * (size_t)n_in), *Y = malloc(sizeof(float) * max_tok * (size_t)n_out);
    float *wf = malloc(sizeof(float) * (size_t)n_in);
    if (!X || !Y || !wf) return 1;
    for (int i = 0; i < max_tok * n_in; i++) X[i] = ia_rng_normal(&r);
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const uint32_t type = types[ti];
        if (n_in % ia_type_traits_get(type)->blck_size) continue;
        const size_t rs = ia_type_row_size(type, n_in);
        uint8_t *W = malloc(rs * (size_t)n_out);
        if (!W) return 1;
        for (int o = 0; o < n_out; o++) {
            for (int i = 0; i < n_in; i++) wf[i] = ia_rng_normal(&r);
            ia_quantize_row(type, wf, W + (size_t)o * rs, n_in);
        }
        for (int ni = 0; ni < n_nt; ni++) {
            const int nt = ntoks[ni];
            const double flop = 2.0 * nt * n_in * n_out, bytes = (double)rs * n_out;
            for (int k = -1; k < 3; k++) {
                if (k >= 0 && !ia_kernel_force(kernels[k])) continue;
                const double t = run(k < 0, Y, X, W, type, nt, n_in, n_out);
                printf("%-5s %-6s %5d %10.1f %10.2f %10.2f\n", ia_type_name(type), k < 0 ? "ref" : kernels[k],
                       nt, t * 1e6, flop / t * 1e-9, bytes / t * 1e-9);
                if (k >= 0 && ia_matmul_uses_q8(type) && ia_qpack_add(W, type, n_in, n_out) == IA_OK) {
                    const double tf = run(2, Y, X, W, type, nt, n_in, n_out);
                    printf("%-5s %-6s %5d %10.1f %10.2f %10.2f  fast\n", ia_type_name(type), kernels[k], nt, tf * 1e6,
                           flop / tf * 1e-9, bytes / tf * 1e-9);
                    ia_qpack_remove(W);
                }
            }
            ia_kernel_force(NULL);
        }
        free(W);
    }
    free(X); free(Y); free(wf);
    return 0;
}
