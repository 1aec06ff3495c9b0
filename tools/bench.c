/*
 * bench.c — vg-bench: what the engine's hot paths cost, in ns per operation.
 *
 * Each case runs R rounds of N operations per thread (after one warm-up round
 * that is not counted) and prints the median and the p10/p90 of the rounds.
 * With T threads all threads start together on a barrier and one round's
 * figure is the slowest thread's wall time / N: the latency one thread sees
 * while the others hammer the same structure (not the aggregate throughput).
 * Thread i runs on the i-th CPU the process may use, so on a machine with 16
 * cores a flat column from 1 to 16 threads is perfect scaling; with fewer
 * cores than threads the figure grows with oversubscription too.
 *
 * Run with `make bench` (the test driver first on LD_LIBRARY_PATH).
 */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vg_internal.h"

#define ROUNDS 15
#define MAX_THREADS 16

typedef struct bench_case {
    const char *name;
    int threads;
    uint64_t ops; /* per thread per round */
    /* Runs `ops` operations as thread `tid` of the case. */
    void (*run)(struct bench_case *c, int tid, uint64_t ops);
    void *state;
} bench_case_t;

/* ------------------------------------------------------- cases */

static vg__budget_t bench_budget;

static void run_budget(bench_case_t *c, int tid, uint64_t ops)
{
    (void)c;
    (void)tid;
    for (uint64_t i = 0; i < ops; i++) {
        if (vg__budget_reserve(&bench_budget, 4096) != VG_OK)
            abort(); /* the limit is far above T * 4096 */
        vg__budget_commit(&bench_budget, 4096);
        vg__budget_release(&bench_budget, 4096);
    }
}

static void run_ledger(bench_case_t *c, int tid, uint64_t ops)
{
    (void)c;
    vg__alloc_t a;
    memset(&a, 0, sizeof a);
    a.size = a.charged = 4096;
    a.kind = VG_KIND_PLAIN;
    vg_devptr_t base = ((vg_devptr_t)tid + 1) << 40; /* distinct per thread */
    for (uint64_t i = 0; i < ops; i++) {
        a.ptr = a.base = base + (i & 0xffff) * 4096;
        a.seq = vg__ledger_next_seq();
        if (vg__ledger_insert(&a) != VG_OK ||
            vg__ledger_remove(a.ptr, VG__ANY_OWNER, NULL) != VG_OK)
            abort();
    }
}

/* The process-wide sequence counter alone (one atomic add per commit). */
static void run_seq(bench_case_t *c, int tid, uint64_t ops)
{
    (void)c;
    (void)tid;
    uint64_t sum = 0;
    for (uint64_t i = 0; i < ops; i++)
        sum += vg__ledger_next_seq();
    if (sum == 0)
        abort();
}

/* The public API over the driver: vg_pool_alloc + vg_pool_free of 4 KiB.
 * Measured next to the bare driver pair so the engine's share shows. */
static void run_api(bench_case_t *c, int tid, uint64_t ops)
{
    vg_pool_t *pool = c->state;
    (void)tid;
    for (uint64_t i = 0; i < ops; i++) {
        vg_devptr_t p;
        if (vg_pool_alloc(pool, 4096, NULL, &p) != VG_OK || vg_pool_free(pool, p) != VG_OK)
            abort();
    }
}

static CUcontext bench_ctx;

static void run_driver(bench_case_t *c, int tid, uint64_t ops)
{
    const vg__driver_t *d = vg__driver();
    (void)c;
    (void)tid;
    d->cuCtxSetCurrent(bench_ctx);
    for (uint64_t i = 0; i < ops; i++) {
        CUdeviceptr p;
        if (d->cuMemAlloc_v2(&p, 4096) != CUDA_SUCCESS || d->cuMemFree_v2(p) != CUDA_SUCCESS)
            abort();
    }
}

/* ---------------------------------------------------- harness */

typedef struct worker {
    bench_case_t *c;
    int tid;
    pthread_barrier_t *start;
    uint64_t elapsed_ns;
} worker_t;

static int cpus[CPU_SETSIZE]; /* the CPUs this process may use */
static int ncpus;

static void cpus_load(void)
{
    cpu_set_t s;
    CPU_ZERO(&s);
    if (sched_getaffinity(0, sizeof s, &s) == 0)
        for (int i = 0; i < CPU_SETSIZE; i++)
            if (CPU_ISSET(i, &s))
                cpus[ncpus++] = i;
}

static void pin(int tid)
{
    if (ncpus == 0)
        return;
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpus[tid % ncpus], &s);
    sched_setaffinity(0, sizeof s, &s);
}

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    pin(w->tid);
    pthread_barrier_wait(w->start);
    uint64_t t0 = vg__mono_ns();
    w->c->run(w->c, w->tid, w->c->ops);
    w->elapsed_ns = vg__mono_ns() - t0;
    return NULL;
}

/* One round: ns per op for the slowest thread. */
static double run_round(bench_case_t *c)
{
    pthread_t th[MAX_THREADS];
    worker_t w[MAX_THREADS];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)c->threads);
    for (int i = 0; i < c->threads; i++) {
        w[i] = (worker_t){.c = c, .tid = i, .start = &start};
        if (pthread_create(&th[i], NULL, worker_main, &w[i]) != 0)
            abort();
    }
    uint64_t worst = 0;
    for (int i = 0; i < c->threads; i++) {
        pthread_join(th[i], NULL);
        if (w[i].elapsed_ns > worst)
            worst = w[i].elapsed_ns;
    }
    pthread_barrier_destroy(&start);
    return (double)worst / (double)c->ops;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of a sorted sample. */
static double pct(const double *sorted, int n, double p)
{
    return sorted[(int)(p * (n - 1) + 0.5)];
}

static void run_case(bench_case_t *c)
{
    double ns[ROUNDS];
    run_round(c); /* warm-up: fills free lists, faults pages in */
    for (int r = 0; r < ROUNDS; r++)
        ns[r] = run_round(c);
    qsort(ns, ROUNDS, sizeof ns[0], cmp_double);
    printf("%-36s | %7d | %12.1f | %6.1f | %6.1f\n", c->name, c->threads,
           pct(ns, ROUNDS, 0.5), pct(ns, ROUNDS, 0.1), pct(ns, ROUNDS, 0.9));
}

int main(void)
{
    cpus_load();
    vg__budget_init(&bench_budget, VG__UNLIMITED - 1, NULL);
    vg_pool_t *pool = NULL;
    if (vg_available() != VG_OK || vg_pool_create(0, 1ull << 30, &pool) != VG_OK ||
        vg__driver()->cuDevicePrimaryCtxRetain(&bench_ctx, 0) != CUDA_SUCCESS) {
        fprintf(stderr, "vg-bench: no driver: %s\n", vg__engine_error());
        return 1;
    }
    bench_case_t cases[] = {
        {"budget reserve+commit+release", 1, 1000000, run_budget, NULL},
        {"budget reserve+commit+release", 2, 1000000, run_budget, NULL},
        {"budget reserve+commit+release", 4, 1000000, run_budget, NULL},
        {"budget reserve+commit+release", 8, 1000000, run_budget, NULL},
        {"budget reserve+commit+release", 16, 1000000, run_budget, NULL},
        {"ledger insert+remove", 1, 500000, run_ledger, NULL},
        {"ledger insert+remove", 2, 500000, run_ledger, NULL},
        {"ledger insert+remove", 4, 500000, run_ledger, NULL},
        {"ledger insert+remove", 8, 500000, run_ledger, NULL},
        {"ledger insert+remove", 16, 500000, run_ledger, NULL},
        {"ledger sequence number", 1, 2000000, run_seq, NULL},
        {"ledger sequence number", 16, 2000000, run_seq, NULL},
        {"driver cuMemAlloc+cuMemFree 4 KiB", 1, 20000, run_driver, NULL},
        {"api vg_pool_alloc+free 4 KiB", 1, 20000, run_api, pool},
        {"api vg_pool_alloc+free 4 KiB", 2, 20000, run_api, pool},
    };
    printf("vg-bench: %d rounds per case, ns per operation (per thread), %d CPUs\n",
           ROUNDS, ncpus);
    printf("%-36s | %7s | %12s | %6s | %6s\n", "case", "threads",
           "median ns/op", "p10", "p90");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        run_case(&cases[i]);
    vg_pool_destroy(pool, NULL);
    return 0;
}
