/*
 * pool_bench.c — the pool's own microbenchmark (docs/pool.md): alloc+free pairs
 * through the API, cached and direct, against the bare driver pair at the
 * same sizes in the same run, and the cached pair from 1 to 16 threads.
 *
 * Prints one table: ns per pair per thread, median and p10/p90 of 15 rounds.
 * Runs over whichever libcuda.so.1 the loader finds (the test driver in CI,
 * the real one on the GPU machine). Not a test: it never fails on a figure.
 *
 *   LD_LIBRARY_PATH=build/fakecuda build/examples/pool_bench
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vg_account.h"
#include "vg_driver.h"

#define ROUNDS 15

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void report(const char *what, size_t size, int threads, double *r)
{
    qsort(r, ROUNDS, sizeof *r, cmp_d);
    char sz[32];
    vg__fmt_bytes(size, sz, sizeof sz);
    printf("| %s | %s | %d | %.1f | %.1f | %.1f |\n", what, sz, threads,
           r[ROUNDS / 2], r[ROUNDS / 10], r[ROUNDS - 1 - ROUNDS / 10]);
    fflush(stdout);
}

/* ns per pair of cuMemAlloc_v2 + cuMemFree_v2, one allocation held so the
 * driver keeps its chunk (as bench_pairs does on the GPU). */
static double driver_round(size_t size, int n)
{
    const vg__driver_t *d = vg__driver();
    CUdeviceptr p;
    uint64_t t0 = now_ns();
    for (int i = 0; i < n; i++) {
        d->cuMemAlloc_v2(&p, size);
        d->cuMemFree_v2(p);
    }
    return (double)(now_ns() - t0) / n;
}

struct job {
    vg_pool_t *pool;
    size_t size;
    int n;
    double ns;
};

static void *pool_round(void *arg)
{
    struct job *j = arg;
    vg_devptr_t p;
    uint64_t t0 = now_ns();
    for (int i = 0; i < j->n; i++) {
        if (vg_pool_alloc(j->pool, j->size, NULL, &p) != VG_OK)
            abort();
        vg_pool_free(j->pool, p);
    }
    j->ns = (double)(now_ns() - t0) / j->n;
    return NULL;
}

static void bench_pool(vg_pool_t *pool, size_t size, int threads, int n)
{
    double r[ROUNDS];
    struct job jobs[16];
    pthread_t t[16];
    for (int round = 0; round < ROUNDS; round++) {
        for (int i = 0; i < threads; i++) {
            jobs[i] = (struct job){pool, size, n, 0};
            pthread_create(&t[i], NULL, pool_round, &jobs[i]);
        }
        double sum = 0;
        for (int i = 0; i < threads; i++) {
            pthread_join(t[i], NULL);
            sum += jobs[i].ns;
        }
        r[round] = sum / threads;
    }
    report("vg_pool_alloc+vg_pool_free", size, threads, r);
}

int main(void)
{
    if (vg_available() != VG_OK) {
        fprintf(stderr, "no driver: %s\n", vg__engine_error());
        return 1;
    }
    vg_pool_t *pool = NULL;
    if (vg_pool_create(0, 8ull << 30, &pool) != VG_OK)
        return 1;
    CUcontext ctx;
    const vg__driver_t *d = vg__driver();
    d->cuDevicePrimaryCtxRetain(&ctx, 0);
    d->cuCtxSetCurrent(ctx);
    CUdeviceptr hold;
    d->cuMemAlloc_v2(&hold, 4096);
    printf("| case | size | threads | median ns/pair | p10 | p90 |\n|---|---|---|---|---|---|\n");
    size_t sizes[] = {4096, 65536, 1u << 20, 2u << 20, 8u << 20, 64u << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        double r[ROUNDS];
        int n = sizes[i] <= (1u << 20) ? 20000 : 2000;
        for (int k = 0; k < ROUNDS; k++)
            r[k] = driver_round(sizes[i], n);
        report("driver cuMemAlloc+cuMemFree", sizes[i], 1, r);
        bench_pool(pool, sizes[i], 1, n);
    }
    int threads[] = {2, 4, 8, 16};
    for (size_t i = 0; i < sizeof threads / sizeof threads[0]; i++)
        bench_pool(pool, 4096, threads[i], 20000);
    vg_pool_stats_t s;
    vg_pool_stats(pool, &s);
    printf("\nstats: hits %llu misses %llu reuse_syncs %llu trims %llu "
           "cached %llu used %llu\n",
           (unsigned long long)s.hits, (unsigned long long)s.misses,
           (unsigned long long)s.reuse_syncs, (unsigned long long)s.trims,
           (unsigned long long)s.cached, (unsigned long long)s.used);
    d->cuMemFree_v2(hold);
    vg_pool_destroy(pool, NULL);
    return 0;
}
