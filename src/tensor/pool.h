/* pool.h — the tensor kernels' thread pool: run a function on N threads (the caller included), with
 * workers that spin briefly between jobs and then sleep (IA_SPIN_US, default 50 microseconds). */
#ifndef IA_TENSOR_POOL_H
#define IA_TENSOR_POOL_H

#include "util/util.h"

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
 * spinning off and jobs to one thread for a second. */
int ia_pool_contention_events(void);

#endif
