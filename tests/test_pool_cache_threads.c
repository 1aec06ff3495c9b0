/*
 * test_pool_cache_threads.c — the pool's cache over the test driver when
 * blocks change hands: reuse ordering (a freed block comes back only after
 * a synchronisation, with one thread and several), per-thread arenas, 16
 * threads at once, and a child forked while other threads use the pool.
 * The single-threaded behaviour: test_pool_cache.c. Shared helpers:
 * pooltest.h.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pooltest.h"
#include "testutil.h"
#include "vg_driver.h"
#include "vg_pool.h"

/* ---------------------------------------------------- reuse ordering */

static CUresult (*real_sync)(void);
static _Atomic uint64_t syncs_seen;

static CUresult counting_sync(void)
{
    atomic_fetch_add(&syncs_seen, 1);
    return real_sync();
}

#define REUSE_SLOTS 64

/* A block freed at sync count s may be handed out again only once the
 * count has moved past s: a synchronisation began after its free. */
Test(pool_cache, a_freed_block_is_reused_only_after_a_synchronisation)
{
    vg_pool_t *p = pool_of(64 * MiB);
    vg__driver_t *d = (vg__driver_t *)vg__driver();
    real_sync = d->cuCtxSynchronize;
    d->cuCtxSynchronize = counting_sync;
    static struct freed_block { vg_devptr_t ptr; uint64_t freed_at; } freed[8192];
    int nfreed = 0;
    vg_devptr_t live[REUSE_SLOTS] = {0};
    uint64_t seed = 7;
    int reused = 0;
    for (int op = 0; op < 20000; op++) {
        int slot = (int)(test_rand(&seed) % REUSE_SLOTS);
        if (live[slot]) {
            cr_assert_eq(vg_pool_free(p, live[slot]), VG_OK);
            if (nfreed < 8192)
                freed[nfreed++] = (struct freed_block){live[slot], atomic_load(&syncs_seen)};
            live[slot] = 0;
            continue;
        }
        cr_assert_eq(vg_pool_alloc(p, 4096, NULL, &live[slot]), VG_OK);
        /* the newest free of this address decides */
        for (int i = nfreed - 1; i >= 0; i--) {
            if (freed[i].ptr != live[slot])
                continue;
            cr_assert_gt(atomic_load(&syncs_seen), freed[i].freed_at,
                         "block %#llx reused with no sync after its free",
                         (unsigned long long)live[slot]);
            reused++;
            break;
        }
    }
    vg_pool_stats_t s = stats_of(p);
    d->cuCtxSynchronize = real_sync;
    cr_expect_gt(reused, 1000, "blocks were reused (%d)", reused);
    cr_expect_eq(s.reuse_syncs, atomic_load(&syncs_seen));
    cr_expect_lt(s.reuse_syncs * 50, s.hits, "one sync serves a batch (%llu syncs)",
                 (unsigned long long)s.reuse_syncs);
    vg_pool_destroy(p, NULL);
}

/* The same rule with blocks moving between threads: each thread frees into
 * its own magazine, and a block freed by one may come out of another's.
 * The epoch of each free is noted (before the free, under a lock) in a
 * table shared by every thread, keyed by address. */
#define MT_THREADS 4
#define MT_TABLE 4096 /* > every block the run can touch: 64 MiB / 4 KiB */

static struct {
    pthread_mutex_t mu;
    vg_devptr_t ptr[MT_TABLE];
    uint64_t freed_at[MT_TABLE];
    _Atomic int reused, violations;
} mt = {.mu = PTHREAD_MUTEX_INITIALIZER};

static int mt_slot(vg_devptr_t ptr) /* under mt.mu */
{
    unsigned h = (unsigned)((ptr >> 8) * 0x9E3779B1u) % MT_TABLE;
    while (mt.ptr[h] && mt.ptr[h] != ptr)
        h = (h + 1) % MT_TABLE;
    mt.ptr[h] = ptr;
    return (int)h;
}

/* A block is about to be freed: note the sync count, for mt_allocated. */
static void mt_freeing(vg_devptr_t ptr)
{
    pthread_mutex_lock(&mt.mu);
    mt.freed_at[mt_slot(ptr)] = atomic_load(&syncs_seen);
    pthread_mutex_unlock(&mt.mu);
}

/* A block just came out of the pool: if it was freed before, a sync must
 * have begun since; it is live again. */
static void mt_allocated(vg_devptr_t ptr)
{
    uint64_t now = atomic_load(&syncs_seen);
    pthread_mutex_lock(&mt.mu);
    int h = mt_slot(ptr);
    bool seen = mt.freed_at[h] != UINT64_MAX;
    if (seen && now <= mt.freed_at[h])
        atomic_fetch_add(&mt.violations, 1);
    if (seen)
        atomic_fetch_add(&mt.reused, 1);
    mt.freed_at[h] = UINT64_MAX;
    pthread_mutex_unlock(&mt.mu);
}

/* Runs MT_THREADS of `worker` on p with the sync counted; returns p's
 * stats after (and after `after`, if any, with the sync still counted). */
static vg_pool_stats_t mt_run(vg_pool_t *p, void *(*worker)(void *), void (*after)(vg_pool_t *))
{
    vg__driver_t *d = (vg__driver_t *)vg__driver();
    real_sync = d->cuCtxSynchronize;
    d->cuCtxSynchronize = counting_sync;
    for (int i = 0; i < MT_TABLE; i++)
        mt.freed_at[i] = UINT64_MAX;
    pthread_t t[MT_THREADS];
    for (int i = 0; i < MT_THREADS; i++)
        pthread_create(&t[i], NULL, worker, p);
    for (int i = 0; i < MT_THREADS; i++)
        pthread_join(t[i], NULL);
    if (after)
        after(p);
    vg_pool_stats_t s = stats_of(p);
    d->cuCtxSynchronize = real_sync;
    return s;
}

static void *mt_worker(void *arg)
{
    vg_pool_t *p = arg;
    uint64_t seed = (uint64_t)(uintptr_t)&seed;
    vg_devptr_t live[16] = {0};
    for (int op = 0; op < 8000; op++) {
        int slot = (int)(test_rand(&seed) % 16);
        if (live[slot]) {
            mt_freeing(live[slot]);
            if (vg_pool_free(p, live[slot]) != VG_OK)
                atomic_fetch_add(&mt.violations, 1);
            live[slot] = 0;
            continue;
        }
        if (vg_pool_alloc(p, 4096, NULL, &live[slot]) != VG_OK) {
            atomic_fetch_add(&mt.violations, 1);
            live[slot] = 0;
            continue;
        }
        mt_allocated(live[slot]);
    }
    for (int i = 0; i < 16; i++)
        if (live[i])
            vg_pool_free(p, live[i]);
    return NULL;
}

Test(pool_cache, a_block_freed_in_one_thread_is_reused_in_any_only_after_a_synchronisation,
     .timeout = 120)
{
    vg_pool_t *p = pool_of(64 * MiB);
    vg_pool_stats_t s = mt_run(p, mt_worker, NULL);
    cr_expect_eq(atomic_load(&mt.violations), 0, "a block came back with no sync after its free");
    cr_expect_gt(atomic_load(&mt.reused), 1000, "blocks were reused (%d)", atomic_load(&mt.reused));
    cr_expect_eq(s.reuse_syncs, atomic_load(&syncs_seen));
    cr_expect_eq(s.live_count, 0u);
    vg_pool_destroy(p, NULL);
}

/* ---------------------------------------------------------- arenas */

/* Each of these tests sets the pool's arena count before any thread uses
 * it, so that they do not depend on the machine's CPU count. */
static vg_pool_t *pool_with_arenas(uint64_t limit, uint32_t arenas)
{
    vg_pool_t *p = pool_of(limit);
    p->cache.arenas = arenas;
    return p;
}

/* One thread's 4 KiB allocation, made while another thread of the test may
 * still hold its own (a thread that has exited leaves its cache, and its
 * arena, to the next new thread). */
struct arena_step {
    vg_pool_t *pool;
    bool free_it;            /* free the block before reporting */
    int rc;
    uint32_t arena;
    vg_devptr_t ptr;
    pthread_barrier_t *done; /* reported; the thread waits there to exit */
};

static void *arena_step_main(void *arg)
{
    struct arena_step *a = arg;
    a->rc = vg_pool_alloc(a->pool, 4096, NULL, &a->ptr);
    a->arena = vg__tcache_arena(&a->pool->cache);
    if (a->rc == VG_OK && a->free_it)
        a->rc = vg_pool_free(a->pool, a->ptr);
    pthread_barrier_wait(a->done);
    pthread_barrier_wait(a->done);
    return NULL;
}

/* Runs steps one after another, every thread alive until the last ran. */
static void arena_steps(struct arena_step *steps, int n)
{
    pthread_t t[4];
    pthread_barrier_t done[4];
    cr_assert_leq(n, 4);
    for (int i = 0; i < n; i++) {
        pthread_barrier_init(&done[i], NULL, 2);
        steps[i].done = &done[i];
        pthread_create(&t[i], NULL, arena_step_main, &steps[i]);
        pthread_barrier_wait(&done[i]);
    }
    for (int i = 0; i < n; i++) {
        pthread_barrier_wait(&done[i]);
        pthread_join(t[i], NULL);
        pthread_barrier_destroy(&done[i]);
    }
}

/* Two threads' steps, the first freeing its block if `free_first`; both
 * succeed, in different arenas. */
static void two_arena_steps(vg_pool_t *p, bool free_first, struct arena_step s[2])
{
    s[0] = (struct arena_step){.pool = p, .free_it = free_first};
    s[1] = (struct arena_step){.pool = p};
    arena_steps(s, 2);
    cr_assert_eq(s[0].rc, VG_OK);
    cr_assert_eq(s[1].rc, VG_OK);
    cr_expect_neq(s[0].arena, s[1].arena);
}

static vg_devptr_t chunk_base_of(vg_devptr_t ptr)
{
    vg__chunk_ref_t ref;
    cr_assert(vg__chunk_index_find(ptr, &ref), "%#llx is in no chunk", (unsigned long long)ptr);
    return ref.base;
}

Test(pool_cache, threads_of_different_arenas_carve_different_chunks)
{
    vg_pool_t *p = pool_with_arenas(64 * MiB, 2);
    struct arena_step s[2];
    two_arena_steps(p, false, s);
    cr_expect_neq(chunk_base_of(s[0].ptr), chunk_base_of(s[1].ptr),
                  "two arenas share a chunk");
    cr_expect_eq(stats_of(p).used, 2 * VG__CHUNK_SMALL);
    /* This thread (the third, so arena 0 again) frees both: one block of
     * its own arena, one of the other; each goes back to its own class. */
    cr_assert_eq(vg_pool_free(p, s[0].ptr), VG_OK);
    cr_assert_eq(vg_pool_free(p, s[1].ptr), VG_OK);
    vg_pool_stats_t st = stats_of(p);
    cr_expect_eq(st.live_count, 0u);
    cr_expect_eq(st.cached, st.used);
    cr_assert_eq(vg_pool_trim(p, 0, NULL), VG_OK);
    cr_expect_eq(stats_of(p).used, 0u, "the freed blocks left both chunks empty");
    vg_pool_destroy(p, NULL);
}

Test(pool_cache, near_the_budget_a_thread_takes_another_arenas_blocks)
{
    /* Room for one 2 MiB chunk, not two. */
    vg_pool_t *p = pool_with_arenas(3 * MiB, 2);
    struct arena_step s[2];
    two_arena_steps(p, true, s);
    cr_expect_eq(chunk_base_of(s[1].ptr), chunk_base_of(s[0].ptr),
                 "served from the other arena's chunk");
    vg_pool_stats_t st = stats_of(p);
    cr_expect_eq(st.used, VG__CHUNK_SMALL, "no direct allocation, no second chunk");
    cr_expect_eq(st.live_count, 1u);
    cr_assert_eq(vg_pool_free(p, s[1].ptr), VG_OK);
    vg_pool_destroy(p, NULL);
}

/* Blocks passed between threads of different arenas: each is freed by
 * whichever thread finds it in a shared table, mostly not its maker, and
 * the reuse rule still holds (the same bookkeeping as mt_worker). */
#define XFER_SLOTS 64
static _Atomic vg_devptr_t xfer[XFER_SLOTS];

static void xfer_free(vg_pool_t *p, vg_devptr_t ptr)
{
    mt_freeing(ptr);
    if (vg_pool_free(p, ptr) != VG_OK)
        atomic_fetch_add(&mt.violations, 1);
}

/* The blocks left in the table, after the threads. */
static void xfer_drain(vg_pool_t *p)
{
    for (int i = 0; i < XFER_SLOTS; i++) {
        vg_devptr_t old = atomic_exchange(&xfer[i], 0);
        if (old)
            xfer_free(p, old);
    }
}

static void *xfer_worker(void *arg)
{
    vg_pool_t *p = arg;
    uint64_t seed = (uint64_t)(uintptr_t)&seed;
    for (int op = 0; op < 8000; op++) {
        int slot = (int)(test_rand(&seed) % XFER_SLOTS);
        vg_devptr_t old = atomic_exchange(&xfer[slot], 0);
        if (old) {
            xfer_free(p, old);
            continue;
        }
        vg_devptr_t ptr;
        if (vg_pool_alloc(p, 4096, NULL, &ptr) != VG_OK) {
            atomic_fetch_add(&mt.violations, 1);
            continue;
        }
        mt_allocated(ptr);
        if ((old = atomic_exchange(&xfer[slot], ptr)) != 0)
            xfer_free(p, old);
    }
    return NULL;
}

Test(pool_cache, blocks_freed_across_arenas_are_reused_only_after_a_synchronisation,
     .timeout = 120)
{
    vg_pool_t *p = pool_with_arenas(64 * MiB, MT_THREADS);
    vg_pool_stats_t s = mt_run(p, xfer_worker, xfer_drain);
    cr_expect_eq(atomic_load(&mt.violations), 0, "a block came back with no sync after its free");
    cr_expect_gt(atomic_load(&mt.reused), 1000, "blocks were reused (%d)", atomic_load(&mt.reused));
    cr_expect_eq(s.live_count, 0u);
    cr_expect_eq(s.used, s.cached);
    cr_expect_eq(vg__ledger_count(), 0u);
    vg_pool_destroy(p, NULL);
}

/* ---------------------------------------------------- threads */

#define THREADS 16
#define THREAD_OPS 3000

/* Each thread stamps its blocks with (thread, op) through the driver and
 * checks the stamp before freeing: two threads holding one block at once
 * would overwrite each other. */
static void *worker(void *arg)
{
    vg_pool_t *p = ((void **)arg)[0];
    uint64_t id = (uint64_t)(uintptr_t)((void **)arg)[1];
    const vg__driver_t *d = vg__driver();
    CUcontext ctx;
    cr_assert_eq(d->cuDevicePrimaryCtxRetain(&ctx, 0), CUDA_SUCCESS);
    cr_assert_eq(d->cuCtxSetCurrent(ctx), CUDA_SUCCESS);
    uint64_t seed = id * 7919 + 1;
    struct { vg_devptr_t ptr; uint64_t stamp; } held[8] = {{0, 0}};
    for (int op = 0; op < THREAD_OPS; op++) {
        int slot = (int)(test_rand(&seed) % 8);
        if (held[slot].ptr) {
            uint64_t got = 0;
            cr_assert_eq(d->cuMemcpyDtoH_v2(&got, held[slot].ptr, sizeof got), CUDA_SUCCESS);
            cr_assert_eq(got, held[slot].stamp, "block shared between threads");
            cr_assert_eq(vg_pool_free(p, held[slot].ptr), VG_OK);
            held[slot].ptr = 0;
            continue;
        }
        size_t size = 8 + test_rand(&seed) % (op % 50 == 0 ? 3 * MiB : 64 * 1024);
        int rc = vg_pool_alloc(p, size, NULL, &held[slot].ptr);
        cr_assert(rc == VG_OK || rc == VG_ENOMEM, "rc %d", rc);
        if (rc != VG_OK) {
            held[slot].ptr = 0;
            continue;
        }
        held[slot].stamp = id << 32 | (uint64_t)op;
        cr_assert_eq(d->cuMemcpyHtoD_v2(held[slot].ptr, &held[slot].stamp, 8), CUDA_SUCCESS);
    }
    for (int s = 0; s < 8; s++)
        if (held[s].ptr)
            vg_pool_free(p, held[s].ptr);
    return NULL;
}

Test(pool_cache, sixteen_threads_share_the_cache_safely, .timeout = 120)
{
    const uint64_t limit = 128 * MiB;
    vg_pool_t *p = pool_of(limit);
    pthread_t t[THREADS];
    void *args[THREADS][2];
    for (int i = 0; i < THREADS; i++) {
        args[i][0] = p;
        args[i][1] = (void *)(uintptr_t)(i + 1);
        pthread_create(&t[i], NULL, worker, args[i]);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    vg_pool_stats_t s = stats_of(p);
    cr_expect_eq(s.live_count, 0u);
    cr_expect_eq(s.live_bytes, 0u);
    cr_expect_eq(s.used, s.cached);
    cr_expect_leq(s.peak, limit);
    cr_expect_leq(fake_peak(0), limit);
    cr_expect_gt(s.hits, 1000u);
    cr_assert_eq(vg_pool_trim(p, 0, NULL), VG_OK);
    cr_expect_eq(stats_of(p).used, 0u);
    cr_expect_eq(fake_used(0), 0u);
    cr_expect_eq(vg__ledger_count(), 0u);
    vg_pool_destroy(p, NULL);
}

/* ------------------------------------------------------ fork */

static _Atomic int fork_stop;

/* Small requests and frees in a loop: the thread is nearly always inside
 * its thread cache's fast section or a class lock. */
static void *churn_small(void *arg)
{
    vg_pool_t *p = arg;
    vg_devptr_t held[4] = {0};
    for (unsigned i = 0; !atomic_load(&fork_stop); i++) {
        vg_devptr_t *h = &held[i % 4];
        if (*h) {
            cr_assert_eq(vg_pool_free(p, *h), VG_OK);
            *h = 0;
        } else if (vg_pool_alloc(p, 256 + (i % 7) * 4096, NULL, h) != VG_OK) {
            *h = 0;
        }
    }
    for (int i = 0; i < 4; i++)
        if (held[i])
            vg_pool_free(p, held[i]);
    return NULL;
}

/* Forks while two threads use the pool: each child reads the stats (every
 * thread cache), allocates, frees and trims. A lock, or an owner's fast
 * section, that a thread which did not come along was in at the fork
 * would hang the child (killed by alarm). Before fork took the pools'
 * locks about a third of the children hung. */
Test(pool_cache, a_child_forked_while_threads_use_the_pool_can_use_it, .timeout = 120)
{
    vg_pool_t *p = pool_of(256 * MiB);
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, churn_small, p), 0);
    sleep_ms(20);
    int failed = 0;
    for (int round = 0; round < 20; round++) {
        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
            alarm(2);
            vg_pool_stats_t s;
            vg_devptr_t ptr;
            int ok = vg_pool_stats(p, &s) == VG_OK;
            for (int i = 0; i < 64; i++) {
                ok &= vg_pool_alloc(p, 256 + (i % 7) * 4096, NULL, &ptr) == VG_OK;
                ok &= vg_pool_free(p, ptr) == VG_OK;
            }
            ok &= vg_pool_trim(p, 0, NULL) == VG_OK;
            _exit(ok ? 0 : 3);
        }
        int status = 0;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        failed += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        sleep_ms(2);
    }
    atomic_store(&fork_stop, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    cr_expect_eq(failed, 0, "%d of 20 children hung or failed", failed);
    vg_pool_destroy(p, NULL);
}
