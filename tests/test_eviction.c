/*
 * test_eviction.c — evictable allocations over the test driver: the order
 * (priority, then least recently used, with vg_pool_touch), the callback's
 * contract, trimming before evicting, no useless evictions, eviction at
 * Critical pressure, frees racing evictions, and threads.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "vg_driver.h"
#include "vg_pool.h"

static vg_pool_t *pool_of(uint64_t limit)
{
    vg_pool_t *p = NULL;
    cr_assert_eq(vg_pool_create(0, limit, &p), VG_OK);
    return p;
}

static vg_pool_stats_t stats_of(vg_pool_t *p)
{
    vg_pool_stats_t s;
    cr_assert_eq(vg_pool_stats(p, &s), VG_OK);
    return s;
}

/* What the callbacks saw, in order. */
static struct {
    int n;
    vg_devptr_t ptr[16];
    size_t size[16];
    void *user[16];
    bool readable[16];
    bool still_live[16];
} seen;

static void on_evict(vg_pool_t *pool, vg_devptr_t ptr, size_t size, void *user)
{
    (void)pool;
    int i = seen.n++;
    seen.ptr[i] = ptr;
    seen.size[i] = size;
    seen.user[i] = user;
    /* The memory is still there during the call: copy out works. */
    const vg__driver_t *d = vg__driver();
    CUcontext ctx;
    d->cuDevicePrimaryCtxRetain(&ctx, 0);
    d->cuCtxSetCurrent(ctx);
    uint64_t word;
    seen.readable[i] = d->cuMemcpyDtoH_v2(&word, ptr, sizeof word) == CUDA_SUCCESS;
    vg__alloc_t rec;
    seen.still_live[i] = vg__ledger_find(ptr, &rec) == VG_OK;
}

static vg_devptr_t evictable(vg_pool_t *p, uint64_t size, int priority, void *user)
{
    vg_alloc_opts_t o = {.flags = VG_ALLOC_EVICTABLE, .priority = priority,
                         .evict = on_evict, .evict_user = user};
    vg_devptr_t ptr = 0;
    cr_assert_eq(vg_pool_alloc(p, size, &o, &ptr), VG_OK);
    return ptr;
}

Test(eviction, evictable_allocations_need_a_callback)
{
    vg_pool_t *p = pool_of(64 * MiB);
    vg_alloc_opts_t o = {.flags = VG_ALLOC_EVICTABLE};
    vg_devptr_t ptr;
    cr_expect_eq(vg_pool_alloc(p, MiB, &o, &ptr), VG_EINVAL);
    cr_expect_eq(vg_pool_touch(NULL, 1), VG_EINVAL);
    cr_expect_eq(vg_pool_touch(p, 0x1000), VG_ENOTFOUND);
    cr_assert_eq(vg_pool_alloc(p, 4096, NULL, &ptr), VG_OK);
    cr_expect_eq(vg_pool_touch(p, ptr), VG_OK, "touching a plain allocation is a no-op");
    vg_pool_destroy(p, NULL);
}

Test(eviction, lowest_priority_goes_first_then_least_recently_used)
{
    vg_pool_t *p = pool_of(100 * MiB);
    int ua, ub, uc;
    vg_devptr_t a = evictable(p, 30 * MiB, 1, &ua);
    vg_devptr_t b = evictable(p, 30 * MiB, 0, &ub);
    vg_devptr_t c = evictable(p, 30 * MiB, 0, &uc);
    cr_assert_eq(vg_pool_touch(p, b), VG_OK); /* now c is the older of prio 0 */
    vg_devptr_t x, y;
    cr_assert_eq(vg_pool_alloc(p, 20 * MiB, NULL, &x), VG_OK);
    cr_assert_eq(seen.n, 1);
    cr_expect_eq(seen.ptr[0], c);
    cr_expect_eq(seen.size[0], 30 * MiB);
    cr_expect_eq(seen.user[0], &uc);
    cr_expect(seen.readable[0], "memory valid during the callback");
    cr_expect_not(seen.still_live[0], "no longer a live allocation during the callback");
    cr_expect_eq(vg_pool_free(p, c), VG_ENOTFOUND, "the pool freed it");
    cr_expect_eq(vg_pool_touch(p, c), VG_ENOTFOUND);
    cr_assert_eq(vg_pool_alloc(p, 40 * MiB, NULL, &y), VG_OK);
    cr_assert_eq(seen.n, 2);
    cr_expect_eq(seen.ptr[1], b);
    vg_pool_stats_t s = stats_of(p);
    cr_expect_eq(s.evictions, 2u);
    cr_expect_eq(s.used, 90 * MiB);
    cr_expect_eq(s.refusals, 0u);
    cr_expect_eq(s.live_count, 3u);
    cr_expect_leq(fake_peak(0), 100 * MiB);
    cr_expect_eq(vg_pool_free(p, a), VG_OK);
    vg_pool_destroy(p, NULL);
}

Test(eviction, the_cache_is_trimmed_before_anything_is_evicted)
{
    vg_pool_t *p = pool_of(100 * MiB);
    evictable(p, 60 * MiB, 0, NULL);
    vg_devptr_t small;
    cr_assert_eq(vg_pool_alloc(p, 300000, NULL, &small), VG_OK);
    vg_pool_free(p, small); /* an empty 8 MiB chunk stays cached */
    cr_expect_eq(stats_of(p).used, 68 * MiB);
    vg_devptr_t x;
    cr_assert_eq(vg_pool_alloc(p, 33 * MiB, NULL, &x), VG_OK);
    vg_pool_stats_t s = stats_of(p);
    cr_expect_eq(seen.n, 0);
    cr_expect_eq(s.evictions, 0u);
    cr_expect_eq(s.trims, 1u);
    cr_expect_eq(s.used, 93 * MiB);
    vg_pool_destroy(p, NULL);
}

Test(eviction, nothing_is_evicted_for_a_request_that_cannot_fit_anyway)
{
    vg_pool_t *p = pool_of(100 * MiB);
    vg_devptr_t pinned, x;
    cr_assert_eq(vg_pool_alloc(p, 60 * MiB, NULL, &pinned), VG_OK);
    evictable(p, 30 * MiB, 0, NULL);
    cr_expect_eq(vg_pool_alloc(p, 50 * MiB, NULL, &x), VG_ENOMEM);
    vg_pool_stats_t s = stats_of(p);
    cr_expect_eq(seen.n, 0);
    cr_expect_eq(s.evictions, 0u);
    cr_expect_eq(s.refusals, 1u);
    cr_expect_eq(s.used, 90 * MiB);
    /* 40 MiB fits once the evictable one is gone: evicted, then served. */
    cr_expect_eq(vg_pool_alloc(p, 40 * MiB, NULL, &x), VG_OK);
    cr_expect_eq(seen.n, 1);
    /* Now nothing is evictable: a refusal. */
    cr_expect_eq(vg_pool_alloc(p, 10 * MiB, NULL, &x), VG_ENOMEM);
    vg_pool_destroy(p, NULL);
}

Test(eviction, critical_pressure_evicts_until_the_level_falls)
{
    vg_pool_t *p = pool_of(100 * MiB);
    vg_devptr_t a = evictable(p, 40 * MiB, 0, NULL);
    vg_devptr_t b = evictable(p, 40 * MiB, 1, NULL);
    vg_devptr_t x;
    cr_assert_eq(vg_pool_alloc(p, 16 * MiB, NULL, &x), VG_OK); /* 96%: Critical */
    cr_expect_eq(seen.n, 1);
    cr_expect_eq(seen.ptr[0], a, "the lower priority");
    cr_expect_lt(vg_pool_pressure(p), VG_PRESSURE_CRITICAL);
    cr_expect_eq(stats_of(p).used, 56 * MiB);
    cr_expect_eq(vg_pool_free(p, b), VG_OK);
    vg_pool_destroy(p, NULL);
}

Test(eviction, a_freed_allocation_is_never_evicted)
{
    vg_pool_t *p = pool_of(100 * MiB);
    vg_devptr_t a = evictable(p, 40 * MiB, 0, NULL);
    vg_devptr_t b = evictable(p, 40 * MiB, 5, NULL);
    cr_assert_eq(vg_pool_free(p, a), VG_OK);
    cr_expect_eq(vg_pool_touch(p, a), VG_ENOTFOUND);
    vg_devptr_t x;
    cr_assert_eq(vg_pool_alloc(p, 70 * MiB, NULL, &x), VG_OK);
    cr_assert_eq(seen.n, 1);
    cr_expect_eq(seen.ptr[0], b);
    vg_leak_report_t leaks;
    vg_pool_destroy(p, &leaks);
    cr_expect_eq(leaks.count, 1u);
    cr_expect_eq(fake_used(0), 0u);
}

static vg_pool_t *nested_pool;
static int nested_rc = -1;

static void evict_and_allocate(vg_pool_t *pool, vg_devptr_t ptr, size_t size, void *user)
{
    (void)ptr;
    (void)size;
    (void)user;
    vg_devptr_t x;
    /* Does not fit without another eviction: refused, not recursed. */
    nested_rc = vg_pool_alloc(pool, 50 * MiB, NULL, &x);
    cr_expect_eq(pool, nested_pool);
}

Test(eviction, a_callback_may_call_the_pool_but_never_evicts_recursively)
{
    vg_pool_t *p = nested_pool = pool_of(100 * MiB);
    vg_alloc_opts_t o = {.flags = VG_ALLOC_EVICTABLE, .evict = evict_and_allocate};
    vg_devptr_t a, b, x;
    cr_assert_eq(vg_pool_alloc(p, 40 * MiB, &o, &a), VG_OK);
    cr_assert_eq(vg_pool_alloc(p, 40 * MiB, &o, &b), VG_OK);
    cr_assert_eq(vg_pool_alloc(p, 30 * MiB, NULL, &x), VG_OK);
    cr_expect_eq(nested_rc, VG_ENOMEM);
    cr_expect_eq(stats_of(p).evictions, 1u);
    cr_expect_eq(stats_of(p).used, 70 * MiB);
    vg_pool_destroy(p, NULL);
}

/* ---------------------------------------------------- threads */

#define THREADS 8
#define SLOTS 4
#define OPS 400

enum { EMPTY = 0, LIVE = 1, EVICTED = 2 };

typedef struct slot {
    _Atomic int state;
    vg_devptr_t ptr; /* the owner's copy; the callback never reads it */
} slot_t;

static _Atomic uint64_t callbacks;

static void mark_evicted(vg_pool_t *pool, vg_devptr_t ptr, size_t size, void *user)
{
    (void)pool;
    (void)size;
    (void)ptr;
    slot_t *s = user;
    atomic_fetch_add(&callbacks, 1);
    atomic_store(&s->state, EVICTED);
}

/* The owner frees; ENOTFOUND means an eviction got there first: wait for
 * its callback before the slot is used again. */
static void drop(vg_pool_t *p, slot_t *s)
{
    if (vg_pool_free(p, s->ptr) != VG_OK)
        while (atomic_load(&s->state) != EVICTED)
            sched_yield();
    atomic_store(&s->state, EMPTY);
}

static void *loader(void *arg)
{
    vg_pool_t *p = arg;
    static _Atomic int next_id;
    int id = atomic_fetch_add(&next_id, 1);
    slot_t slots[SLOTS] = {0};
    uint64_t seed = (uint64_t)id * 31 + 5;
    for (int op = 0; op < OPS; op++) {
        slot_t *s = &slots[test_rand(&seed) % SLOTS];
        int st = atomic_load(&s->state);
        if (st == EVICTED) {
            atomic_store(&s->state, EMPTY);
        } else if (st == LIVE && op % 3 == 0) {
            drop(p, s);
        } else if (st == LIVE) {
            int rc = vg_pool_touch(p, s->ptr);
            cr_assert(rc == VG_OK || rc == VG_ENOTFOUND);
        } else {
            vg_alloc_opts_t o = {.flags = VG_ALLOC_EVICTABLE,
                                 .priority = (int)(test_rand(&seed) % 3),
                                 .evict = mark_evicted, .evict_user = s};
            atomic_store(&s->state, LIVE);
            int rc = vg_pool_alloc(p, (1 + test_rand(&seed) % 8) * MiB, &o, &s->ptr);
            cr_assert(rc == VG_OK || rc == VG_ENOMEM, "rc %d", rc);
            if (rc != VG_OK)
                atomic_store(&s->state, EMPTY);
        }
    }
    for (int i = 0; i < SLOTS; i++)
        if (atomic_load(&slots[i].state) == LIVE)
            drop(p, &slots[i]);
    return NULL;
}

Test(eviction, threads_loading_touching_and_freeing_stay_within_the_budget, .timeout = 120)
{
    const uint64_t limit = 24 * MiB; /* one thread alone needs evictions */
    vg_pool_t *p = pool_of(limit);
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, loader, p);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    vg_pool_stats_t s = stats_of(p);
    cr_expect_gt(s.evictions, 0u);
    cr_expect_eq(s.evictions, atomic_load(&callbacks), "one callback per eviction");
    cr_expect_eq(s.live_count, 0u);
    cr_expect_eq(s.used, 0u);
    cr_expect_leq(s.peak, limit);
    cr_expect_leq(fake_peak(0), limit);
    cr_expect_eq(vg__ledger_count(), 0u);
    vg_pool_destroy(p, NULL);
}
