/* pool.c — the worker threads behind ia_matmul and the other tensor kernels: persistent threads that
 * spin briefly for the next job and then sleep, so a forward pass's hundreds of short parallel steps
 * cost a cache-line handoff each instead of a futex wake-up (OpenMP with OMP_WAIT_POLICY=passive
 * paid 5-20 us per region: 20% of a decoded token). */
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#define POOL_MAX 256 /* threads at most (the caller and POOL_MAX - 1 workers) */

/* The job: fn(ctx, tid, nth) on threads 0..nth-1 (0 is the caller). */
static struct {
    pthread_mutex_t mu;          /* guards sleeping and the condition variables */
    pthread_cond_t wake;         /* workers sleep here for a new generation */
    pthread_cond_t done;         /* the caller sleeps here for pending == 0 */
    _Atomic unsigned gen;        /* bumped once per job */
    _Atomic int pending;         /* workers of the current job not yet finished */
    _Atomic int sleepers;        /* workers asleep on `wake` */
    _Atomic bool caller_sleeps;
    _Atomic int busy;            /* 1 while a job runs: concurrent callers run serially */
    ia_pool_fn fn;
    void *ctx;
    _Atomic int nth;
    int n_workers;               /* threads started (ids 1..n_workers) */
    double spin_s;               /* how long an idle thread spins before sleeping */
} P = {.mu = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER, .done = PTHREAD_COND_INITIALIZER};

static _Thread_local int tl_in_pool; /* this thread is running a pool job (nested calls go serial) */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Set while another process seems to share our cores: spinning is then switched off for a quarter
 * of a second (a second made one passing blip cost a whole second at half speed; persistent
 * contention re-arms it as often as it needs, measured the same either way).
 * A spinning thread stays runnable, so when its core is shared it waits out the other process's time
 * slice instead of being woken at once with a sleeper's priority (measured with one busy process on
 * the other core: decode at 12-70 tokens/s spinning against 150 sleeping). Seen as a gap of over
 * 200 us between two clock reads of a spin loop: the spinner was preempted. */
static _Atomic int64_t nospin_until_us;
static _Atomic int contention_events; /* times that happened (the benchmark reports it) */

static int64_t now_us(void) { return (int64_t)(now_s() * 1e6); }

/* Waits until *a != v (gen: is_int false) or *a == v (pending: is_int true): a few microseconds of
 * pause-spinning (a handoff between busy threads takes well under that), then sched_yield until the
 * spin budget is spent. True if the wait is over; false: go to sleep. */
static bool spin_until_changed(const void *a, unsigned v, bool is_int) {
#define CHANGED() (is_int ? (unsigned)atomic_load_explicit((_Atomic int *)a, memory_order_acquire) == v \
                          : atomic_load_explicit((_Atomic unsigned *)a, memory_order_acquire) != v)
    if (CHANGED()) return true;
    if (P.spin_s <= 0) return false;
    int64_t t = now_us();
    if (t < atomic_load_explicit(&nospin_until_us, memory_order_relaxed)) return false;
    const int64_t pause_end = t + 5, end = t + (int64_t)(P.spin_s * 1e6);
    for (bool yield = false;;) {
        if (yield) sched_yield();
        else
            for (int i = 0; i < 32; i++) {
                cpu_relax();
                if (CHANGED()) return true;
            }
        if (CHANGED()) return true;
        const int64_t t1 = now_us();
        if (t1 - t > 200) { /* preempted while spinning: the cores are shared */
            atomic_store_explicit(&nospin_until_us, t1 + 250000, memory_order_relaxed);
            atomic_fetch_add_explicit(&contention_events, 1, memory_order_relaxed);
            return false;
        }
        if (t1 >= end) return false;
        yield = t1 >= pause_end;
        t = t1;
    }
#undef CHANGED
}

/* The generation current when each worker was created: a worker that started late must still take
 * the job its creator is about to post. */
static unsigned start_gen[POOL_MAX];

static void *worker(void *arg) {
    const int id = (int)(intptr_t)arg;
    unsigned seen = start_gen[id];
    tl_in_pool = 1;
    for (;;) {
        if (!spin_until_changed(&P.gen, seen, false)) {
            pthread_mutex_lock(&P.mu);
            atomic_fetch_add(&P.sleepers, 1);
            while (atomic_load(&P.gen) == seen) pthread_cond_wait(&P.wake, &P.mu);
            atomic_fetch_sub(&P.sleepers, 1);
            pthread_mutex_unlock(&P.mu);
        }
        seen = atomic_load_explicit(&P.gen, memory_order_acquire);
        const int nth = atomic_load_explicit(&P.nth, memory_order_relaxed);
        if (id < nth) {
            P.fn(P.ctx, id, nth);
            /* seq_cst with the caller's store to caller_sleeps then load of pending: one of us sees the other */
            if (atomic_fetch_sub(&P.pending, 1) == 1 && atomic_load(&P.caller_sleeps)) {
                pthread_mutex_lock(&P.mu);
                pthread_cond_signal(&P.done);
                pthread_mutex_unlock(&P.mu);
            }
        }
    }
    return NULL;
}

/* Starts workers up to n - 1 (called with busy held). Returns how many threads a job can use. */
static int ensure_workers(int n) {
    if (n > POOL_MAX) n = POOL_MAX;
    if (P.n_workers == 0) {
        const char *s = getenv("IA_SPIN_US");
        /* long enough for the next step of a forward pass (a few microseconds of serial work in
         * between); short, because a thread that yields its core away for long loses its wake-up
         * priority to whatever else runs there (measured: 50 us as fast as 200 when the machine is
         * idle, and far less harm when another process holds a core) */
        P.spin_s = (s && *s ? atof(s) : 50.0) * 1e-6;
    }
    while (P.n_workers < n - 1) {
        pthread_t th;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&at, 1 << 20); /* kernels keep at most a few tens of KiB on the stack */
        start_gen[P.n_workers + 1] = atomic_load(&P.gen);
        const int rc = pthread_create(&th, &at, worker, (void *)(intptr_t)(P.n_workers + 1));
        pthread_attr_destroy(&at);
        if (rc != 0) break;
        P.n_workers++;
    }
    return P.n_workers + 1 < n ? P.n_workers + 1 : n;
}

int ia_pool_threads(void) {
    const int n = ia_get_threads();
    return n > 0 ? n : 1;
}

void ia_pool_run(int nth, ia_pool_fn fn, void *ctx) {
    /* another process holds a core (see nospin_until_us): one thread, which then has a core to
     * itself, beats two that wait for each other across time slices (decode 196 vs 132 tokens/s
     * with one busy process on a 2-core machine); results do not depend on the thread count */
    if (nth > 1 && P.spin_s > 0 && now_us() < atomic_load_explicit(&nospin_until_us, memory_order_relaxed)) nth = 1;
    if (nth > 1 && (tl_in_pool || atomic_exchange_explicit(&P.busy, 1, memory_order_acquire))) nth = 1;
#ifdef _OPENMP
    /* inside someone's OpenMP region its threads already occupy the cores */
    if (nth > 1 && omp_in_parallel()) {
        atomic_store_explicit(&P.busy, 0, memory_order_release);
        nth = 1;
    }
#endif
    if (nth <= 1) {
        const int was = tl_in_pool;
        tl_in_pool = 1;
        fn(ctx, 0, 1);
        tl_in_pool = was;
        return;
    }
    nth = ensure_workers(nth);
    P.fn = fn;
    P.ctx = ctx;
    atomic_store_explicit(&P.nth, nth, memory_order_relaxed);
    atomic_store_explicit(&P.pending, nth - 1, memory_order_relaxed);
    /* seq_cst: a worker increments sleepers then reads gen; we bump gen then read sleepers */
    atomic_fetch_add(&P.gen, 1);
    if (atomic_load(&P.sleepers) > 0) {
        pthread_mutex_lock(&P.mu);
        pthread_cond_broadcast(&P.wake);
        pthread_mutex_unlock(&P.mu);
    }
    tl_in_pool = 1;
    fn(ctx, 0, nth);
    tl_in_pool = 0;
    /* wait for the others: spin, then sleep */
    if (atomic_load_explicit(&P.pending, memory_order_acquire) != 0) {
        if (!spin_until_changed(&P.pending, 0, true)) {
            pthread_mutex_lock(&P.mu);
            atomic_store(&P.caller_sleeps, true);
            while (atomic_load(&P.pending) != 0) pthread_cond_wait(&P.done, &P.mu);
            atomic_store_explicit(&P.caller_sleeps, false, memory_order_release);
            pthread_mutex_unlock(&P.mu);
        }
    }
    atomic_store_explicit(&P.busy, 0, memory_order_release);
}

int ia_pool_workers_started(void) { return P.n_workers; }

int ia_pool_contention_events(void) { return atomic_load(&contention_events); }
