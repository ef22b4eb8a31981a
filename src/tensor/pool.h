/* pool.h — the tensor kernels' thread pool: run a function on N threads (the caller included), with
 * workers that spin briefly between jobs and then sleep (IA_SPIN_US, default 50 microseconds). */
#ifndef IA_TENSOR_POOL_H
#define IA_TENSOR_POOL_H

#include "util/util.h"

#include <stdatomic.h>

/* fn(ctx, tid, nth) for tid = 0..nth-1, tid 0 on the calling thread; returns when all have returned.
 * Splitting work by tid (or by an atomic counter in ctx) is up to fn. Calls from inside a pool job,
 * from an OpenMP parallel region, or while another thread's job runs, run serially (nth = 1). */
typedef void (*ia_pool_fn)(void *ctx, int tid, int nth);
void ia_pool_run(int nth, ia_pool_fn fn, void *ctx);
/* Threads a kernel should use now (ia_get_threads()). */
int ia_pool_threads(void);
/* Worker threads started so far (for the benchmark's thread count). */
int ia_pool_workers_started(void);
/* Times a spinning thread found itself preempted (another process shares the cores): each switches
 * spinning off and jobs to one thread for a quarter of a second. */
int ia_pool_contention_events(void);

/* Guided self-scheduling over `total` work items counted by *next: claims [*b0, *b1), a 1/(2 nth)
 * share of the items left (at least `min`), so threads take long runs first (few claims, long
 * memory streams) and short ones at the end (a small tail for the others to wait on). False when
 * nothing is left. Which thread takes an item never changes what is computed for it. */
static inline bool ia_pool_claim(_Atomic int *next, int total, int nth, int min, int *b0, int *b1) {
    int cur = atomic_load_explicit(next, memory_order_relaxed);
    for (;;) {
        if (cur >= total) return false;
        int n = (total - cur) / (2 * nth);
        if (n < min) n = min;
        const int end = n < total - cur ? cur + n : total;
        if (atomic_compare_exchange_weak_explicit(next, &cur, end, memory_order_relaxed, memory_order_relaxed)) {
            *b0 = cur;
            *b1 = end;
            return true;
        }
    }
}

#endif
