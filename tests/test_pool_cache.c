/*
 * test_pool_cache.c — the pool's cache over the test driver: size classes
 * and alignment, hits and misses, no overlap between live blocks (a
 * randomized run with shadow bookkeeping), the budget with the cache full,
 * trimming (on request, before a refusal, under pressure), reuse ordering
 * (one thread and several), pointer checks of blocks, 16 threads, and a
 * child forked while other threads use the pool.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

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

/* The driver's view of an address: base and size of its allocation. The
 * pool's context (the primary one) is made current for the queries. */
static void driver_range(vg_devptr_t ptr, CUdeviceptr *base, size_t *size)
{
    const vg__driver_t *d = vg__driver();
    CUcontext ctx;
    cr_assert_eq(d->cuDevicePrimaryCtxRetain(&ctx, 0), CUDA_SUCCESS);
    cr_assert_eq(d->cuCtxSetCurrent(ctx), CUDA_SUCCESS);
    cr_assert_eq(d->cuMemGetAddressRange_v2(base, size, ptr), CUDA_SUCCESS);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {0, ms * 1000000L};
    nanosleep(&ts, NULL);
}

Test(pool_cache, size_classes_cover_every_size_and_waste_at_most_a_fifth)
{
    cr_expect_eq(vg__class_of(1), 0);
    cr_expect_eq(vg__class_size(0), 256u);
    cr_expect_eq(vg__class_size(vg__class_of(VG__SMALL_MAX)), VG__SMALL_MAX);
    cr_expect_eq(vg__class_of(VG__SMALL_MAX), VG__CLASSES - 1);
    cr_expect_eq(vg__class_of(VG__SMALL_MAX + 1), -1);
    uint32_t prev = 0;
    for (int c = 0; c < VG__CLASSES; c++) {
        uint32_t sz = vg__class_size(c);
        cr_expect_gt(sz, prev, "classes grow");
        cr_expect_eq(sz % 256u, 0u, "class %d keeps 256-byte alignment", c);
        cr_expect_eq(vg__class_of(sz), c, "class %d holds its own size", c);
        cr_expect_eq(vg__class_of(sz + 1) , c + 1 < VG__CLASSES ? c + 1 : -1);
        prev = sz;
    }
    for (size_t size = 1; size <= VG__SMALL_MAX; size += 1 + size / 64) {
        int c = vg__class_of(size);
        cr_assert_geq(c, 0);
        uint32_t sz = vg__class_size(c);
        cr_assert_geq(sz, size);
        cr_assert(c == 0 || vg__class_size(c - 1) < size, "smallest class for %zu", size);
        if (size > 1024)
            cr_assert_leq((sz - size) * 5, sz, "waste <= 20%% at %zu", size);
    }
}

Test(pool_cache, blocks_are_aligned_distinct_and_inside_a_verified_chunk)
{
    vg_pool_t *p = pool_of(256 * MiB);
    size_t sizes[] = {1, 200, 256, 257, 1000, 4096, 5000, 65536, 100000, 300000, MiB};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        vg_devptr_t a = 0, b = 0;
        cr_assert_eq(vg_pool_alloc(p, sizes[i], NULL, &a), VG_OK);
        cr_assert_eq(vg_pool_alloc(p, sizes[i], NULL, &b), VG_OK);
        cr_expect_eq(a % 256, 0u, "size %zu", sizes[i]);
        cr_expect_eq(b % 256, 0u, "size %zu", sizes[i]);
        uint32_t cls = vg__class_size(vg__class_of(sizes[i]));
        cr_expect(a + cls <= b || b + cls <= a, "blocks of %zu overlap", sizes[i]);
        CUdeviceptr base;
        size_t range;
        driver_range(a, &base, &range);
        cr_expect_geq(range, VG__CHUNK_SMALL, "a chunk, not a per-request allocation");
        cr_expect(base <= a && a + sizes[i] <= base + range);
        /* aligned requests above 256 bytes go direct and honour it */
        vg_alloc_opts_t o = {.align = 4096};
        vg_devptr_t c = 0;
        cr_assert_eq(vg_pool_alloc(p, sizes[i], &o, &c), VG_OK);
        cr_expect_eq(c % 4096, 0u);
        vg_pool_free(p, a);
        vg_pool_free(p, b);
        vg_pool_free(p, c);
    }
    vg_pool_destroy(p, NULL);
}

Test(pool_cache, a_freed_block_is_reused_without_the_driver)
{
    vg_pool_t *p = pool_of(64 * MiB);
    vg_devptr_t a;
    cr_assert_eq(vg_pool_alloc(p, 4096, NULL, &a), VG_OK);
    vg_pool_stats_t s = stats_of(p);
    cr_expect_eq(s.misses, 1u);
    cr_expect_eq(s.used, VG__CHUNK_SMALL, "the chunk is charged, not the request");
    cr_expect_eq(s.live_bytes, 4096u);
    cr_expect_eq(s.cached, VG__CHUNK_SMALL - 4096);
    cr_expect_float_eq(s.fragmentation, 1.0 - 4096.0 / (double)VG__CHUNK_SMALL, 1e-9);
    uint64_t drv = fake_used(0);
    for (int i = 0; i < 2000; i++) {
        cr_assert_eq(vg_pool_free(p, a), VG_OK);
        cr_assert_eq(vg_pool_alloc(p, 4000, NULL, &a), VG_OK); /* same class */
    }
    s = stats_of(p);
    cr_expect_eq(fake_used(0), drv, "no driver allocation after the first");
    cr_expect_eq(s.misses, 1u);
    cr_expect_eq(s.hits, 2000u);
    cr_expect_eq(s.live_count, 1u);
    cr_expect_eq(s.allocs, 2001u);
    cr_expect_eq(s.frees, 2000u);
    cr_expect_eq(s.live_bytes, 4000u);
    cr_expect_eq(s.used, VG__CHUNK_SMALL);
    vg_leak_report_t leaks;
    cr_assert_eq(vg_pool_destroy(p, &leaks), VG_OK);
    cr_expect_eq(leaks.count, 1u);
    cr_expect_eq(leaks.bytes, 4000u);
    cr_expect_eq(fake_used(0), 0u);
    cr_expect_eq(vg__ledger_count(), 0u);
}

/* ---------------------------------------------------- shadow run */

#define SHADOW_SLOTS 512
#define SHADOW_OPS 30000

struct live { vg_devptr_t ptr; size_t size; };

/* Random sizes, mostly small (every class), some large (direct). */
static size_t random_size(uint64_t *seed)
{
    uint64_t r = test_rand(seed);
    switch (r % 8) {
    case 0: return 1 + (r >> 8) % 256;
    case 1: case 2: case 3: return 1 + (r >> 8) % 8192;
    case 4: case 5: return 1 + (r >> 8) % (256 * 1024);
    case 6: return 1 + (r >> 8) % MiB;
    default: return MiB + (r >> 8) % (4 * MiB);
    }
}

/* Every live range against every other: O(n^2) on 512 slots is fine. */
static void expect_disjoint(const struct live *l, int n, vg_devptr_t ptr, size_t size)
{
    for (int i = 0; i < n; i++) {
        if (!l[i].ptr)
            continue;
        cr_assert(ptr + size <= l[i].ptr || l[i].ptr + l[i].size <= ptr,
                  "[%#llx, +%zu) overlaps live [%#llx, +%zu)",
                  (unsigned long long)ptr, size, (unsigned long long)l[i].ptr,
                  l[i].size);
    }
}

Test(pool_cache, live_blocks_never_overlap_over_many_random_operations, .timeout = 120)
{
    vg_pool_t *p = pool_of(512 * MiB);
    static struct live l[SHADOW_SLOTS];
    memset(l, 0, sizeof l);
    uint64_t seed = 0x5eed, live_bytes = 0, count = 0;
    for (int op = 0; op < SHADOW_OPS; op++) {
        int slot = (int)(test_rand(&seed) % SHADOW_SLOTS);
        if (l[slot].ptr) {
            cr_assert_eq(vg_pool_free(p, l[slot].ptr), VG_OK);
            live_bytes -= l[slot].size;
            count--;
            l[slot].ptr = 0;
            continue;
        }
        size_t size = random_size(&seed);
        vg_devptr_t ptr = 0;
        int rc = vg_pool_alloc(p, size, NULL, &ptr);
        cr_assert(rc == VG_OK || rc == VG_ENOMEM, "rc %d", rc);
        if (rc != VG_OK)
            continue;
        cr_assert_eq(ptr % 256, 0u);
        expect_disjoint(l, SHADOW_SLOTS, ptr, size);
        l[slot] = (struct live){ptr, size};
        live_bytes += size;
        count++;
        if (op % 1000 == 0) {
            vg_pool_stats_t s = stats_of(p);
            cr_assert_eq(s.live_bytes, live_bytes);
            cr_assert_eq(s.live_count, count);
            cr_assert_leq(s.used, 512 * MiB);
            cr_assert_leq(s.live_bytes + s.cached, s.used);
        }
    }
    cr_expect_leq(fake_peak(0), 512 * MiB, "driver high-water %llu",
                  (unsigned long long)fake_peak(0));
    vg_pool_stats_t s = stats_of(p);
    cr_expect_gt(s.hits, s.misses * 10, "the cache serves most small requests");
    vg_pool_destroy(p, NULL);
    cr_expect_eq(fake_used(0), 0u);
}

/* ---------------------------------------------------- budget and trim */

Test(pool_cache, the_budget_holds_with_the_cache_full)
{
    const uint64_t limit = 32 * MiB;
    vg_pool_t *p = pool_of(limit);
    vg_devptr_t v[1024];
    int n = 0;
    /* Fill the pool with small blocks of several classes until it refuses. */
    for (;;) {
        size_t size = (n % 3 == 0) ? 4096 : (n % 3 == 1) ? 100000 : 700000;
        int rc = vg_pool_alloc(p, size, NULL, &v[n]);
        if (rc != VG_OK) {
            cr_expect_eq(rc, VG_ENOMEM);
            break;
        }
        n++;
        cr_assert_lt(n, 1024);
    }
    vg_pool_stats_t s = stats_of(p);
    cr_expect_leq(s.used, limit);
    for (int i = 0; i < n; i++)
        cr_assert_eq(vg_pool_free(p, v[i]), VG_OK);
    s = stats_of(p);
    cr_expect_eq(s.live_bytes, 0u);
    cr_expect_eq(s.used, s.cached, "what is left is cache, and it counts");
    cr_expect_leq(s.used, limit);
    /* A large request needs the cache's room: it is trimmed, not refused. */
    vg_devptr_t big;
    uint64_t refusals = s.refusals;
    cr_assert_eq(vg_pool_alloc(p, limit - 2 * MiB, NULL, &big), VG_OK);
    s = stats_of(p);
    cr_expect_gt(s.trims, 0u);
    cr_expect_eq(s.refusals, refusals, "a trim that makes room is no refusal");
    cr_expect_leq(fake_peak(0), limit, "driver high-water %llu",
                  (unsigned long long)fake_peak(0));
    cr_expect_leq(s.peak, limit);
    vg_pool_destroy(p, NULL);
}

Test(pool_cache, trim_releases_the_largest_then_least_recently_used_first)
{
    vg_pool_t *p = pool_of(256 * MiB);
    vg_devptr_t small_old, small_new, large;
    /* Two classes with 2 MiB chunks, one with 8 MiB chunks. */
    cr_assert_eq(vg_pool_alloc(p, 4096, NULL, &small_old), VG_OK);
    cr_assert_eq(vg_pool_alloc(p, 8192, NULL, &small_new), VG_OK);
    cr_assert_eq(vg_pool_alloc(p, 512 * 1024, NULL, &large), VG_OK);
    CUdeviceptr c_old, c_new, c_large;
    size_t sz;
    driver_range(small_old, &c_old, &sz);
    driver_range(small_new, &c_new, &sz);
    driver_range(large, &c_large, &sz);
    cr_expect_eq(sz, VG__CHUNK_LARGE);
    /* Empty them in the order large, old, new (coarse clock: 10 ms apart). */
    vg_pool_free(p, large);
    sleep_ms(10);
    vg_pool_free(p, small_old);
    sleep_ms(10);
    vg_pool_free(p, small_new);
    vg_pool_stats_t s = stats_of(p);
    cr_expect_eq(s.used, 2 * VG__CHUNK_SMALL + VG__CHUNK_LARGE);
    const vg__driver_t *d = vg__driver();
    CUdeviceptr b;
    uint64_t released = 0;
    /* keep 12 MiB - 1: one chunk goes, the largest. */
    cr_assert_eq(vg_pool_trim(p, s.cached - 1, &released), VG_OK);
    cr_expect_eq(released, VG__CHUNK_LARGE);
    cr_expect_neq(d->cuMemGetAddressRange_v2(&b, &sz, c_large), CUDA_SUCCESS);
    cr_expect_eq(d->cuMemGetAddressRange_v2(&b, &sz, c_old), CUDA_SUCCESS);
    /* Then the one idle longer. */
    cr_assert_eq(vg_pool_trim(p, VG__CHUNK_SMALL, &released), VG_OK);
    cr_expect_eq(released, VG__CHUNK_SMALL);
    cr_expect_neq(d->cuMemGetAddressRange_v2(&b, &sz, c_old), CUDA_SUCCESS);
    cr_expect_eq(d->cuMemGetAddressRange_v2(&b, &sz, c_new), CUDA_SUCCESS);
    cr_assert_eq(vg_pool_trim(p, 0, &released), VG_OK);
    s = stats_of(p);
    cr_expect_eq(s.used, 0u);
    cr_expect_eq(s.trims, 3u);
    cr_expect_eq(fake_used(0), 0u);
    vg_pool_destroy(p, NULL);
}

Test(pool_cache, only_empty_chunks_are_trimmed)
{
    vg_pool_t *p = pool_of(64 * MiB);
    vg_devptr_t a, b;
    cr_assert_eq(vg_pool_alloc(p, 4096, NULL, &a), VG_OK);
    cr_assert_eq(vg_pool_alloc(p, 4096, NULL, &b), VG_OK);
    vg_pool_free(p, a);
    uint64_t released = 1;
    cr_assert_eq(vg_pool_trim(p, 0, &released), VG_OK);
    cr_expect_eq(released, 0u, "the chunk still holds a live block");
    cr_expect_eq(stats_of(p).used, VG__CHUNK_SMALL);
    vg_pool_free(p, b);
    cr_assert_eq(vg_pool_trim(p, 0, &released), VG_OK);
    cr_expect_eq(released, VG__CHUNK_SMALL);
    vg_pool_destroy(p, NULL);
}

Test(pool_cache, high_pressure_releases_the_cache_until_the_level_falls)
{
    /* 10 chunks of 2 MiB in a 20 MiB pool: Critical while they are full. */
    vg_pool_t *p = pool_of(20 * MiB);
    enum { PER = 512, CHUNKS = 9 };
    static vg_devptr_t v[PER * CHUNKS];
    for (int i = 0; i < PER * CHUNKS; i++)
        cr_assert_eq(vg_pool_alloc(p, 4096, NULL, &v[i]), VG_OK);
    cr_expect_eq(stats_of(p).used, CHUNKS * VG__CHUNK_SMALL);
    cr_expect_eq(vg_pool_pressure(p), VG_PRESSURE_HIGH);
    /* Free everything: chunks that empty at High are released at once, so
     * the cache gives memory back until the level is below High. */
    for (int i = 0; i < PER * CHUNKS; i++)
        cr_assert_eq(vg_pool_free(p, v[i]), VG_OK);
    vg_pool_stats_t s = stats_of(p);
    cr_expect_lt(vg_pool_pressure(p), VG_PRESSURE_HIGH);
    cr_expect_gt(s.trims, 0u);
    cr_expect_lt(s.used, 16 * MiB, "used %llu", (unsigned long long)s.used);
    cr_expect_eq(fake_used(0), s.used);
    vg_pool_destroy(p, NULL);
}

Test(pool_cache, rising_to_high_trims_cached_chunks_of_other_classes)
{
    vg_pool_t *p = pool_of(20 * MiB);
    vg_devptr_t a, b;
    /* An empty chunk in the 8 KiB class and one in the 300 KB class. */
    cr_assert_eq(vg_pool_alloc(p, 8192, NULL, &a), VG_OK);
    cr_assert_eq(vg_pool_alloc(p, 300000, NULL, &b), VG_OK);
    vg_pool_free(p, a);
    vg_pool_free(p, b);
    cr_expect_eq(stats_of(p).used, VG__CHUNK_SMALL + VG__CHUNK_LARGE);
    /* 6 MiB direct: 16 MiB used = 80% -> High -> the cache is trimmed. */
    vg_devptr_t big;
    cr_assert_eq(vg_pool_alloc(p, 6 * MiB, NULL, &big), VG_OK);
    vg_pool_stats_t s = stats_of(p);
    cr_expect_lt(vg_pool_pressure(p), VG_PRESSURE_HIGH);
    cr_expect_eq(s.trims, 1u, "the 8 MiB chunk sufficed");
    cr_expect_eq(s.used, 6 * MiB + VG__CHUNK_SMALL);
    vg_pool_destroy(p, NULL);
}

/* Every small request is a hit (served from held memory) or a miss (it
 * needed the driver), never both. One whose first try found too few freed
 * blocks to synchronise for, and which near the limit was then served
 * from them after all, counted a miss and a hit. */
Test(pool_cache, a_request_served_from_freed_blocks_near_the_limit_is_a_hit_only)
{
    vg_pool_t *p = pool_of(VG__CHUNK_SMALL); /* room for one chunk only */
    const int n = (int)(VG__CHUNK_SMALL / 4096);
    static vg_devptr_t v[VG__CHUNK_SMALL / 4096];
    for (int i = 0; i < n; i++)
        cr_assert_eq(vg_pool_alloc(p, 4096, NULL, &v[i]), VG_OK, "block %d", i);
    uint64_t drv = fake_used(0);
    cr_assert_eq(vg_pool_free(p, v[0]), VG_OK);
    cr_assert_eq(vg_pool_alloc(p, 4096, NULL, &v[0]), VG_OK);
    vg_pool_stats_t s = stats_of(p);
    cr_expect_eq(fake_used(0), drv, "the freed block was reused, the driver not asked");
    cr_expect_eq(s.misses, 1u, "only the first request needed the driver");
    cr_expect_eq(s.hits + s.misses, s.allocs, "%llu hits + %llu misses for %llu requests",
                 (unsigned long long)s.hits, (unsigned long long)s.misses,
                 (unsigned long long)s.allocs);
    for (int i = 0; i < n; i++)
        vg_pool_free(p, v[i]);
    vg_pool_destroy(p, NULL);
}

Test(pool_cache, a_pool_too_small_for_a_chunk_serves_small_requests_directly)
{
    /* Tiny pools cannot hold a chunk: small requests go direct instead. */
    vg_pool_t *p = pool_of(MiB);
    vg_devptr_t a;
    cr_assert_eq(vg_pool_alloc(p, 4096, NULL, &a), VG_OK);
    vg_pool_stats_t s = stats_of(p);
    cr_expect_eq(s.used, 4096u);
    cr_expect_eq(s.misses, 1u);
    vg_pool_free(p, a);
    cr_expect_eq(stats_of(p).used, 0u);
    cr_expect_eq(fake_used(0), 0u);
    vg_pool_destroy(p, NULL);
}

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

/* ---------------------------------------------------- pointer checks */

Test(pool_cache, ptr_check_sees_each_block_as_the_caller_made_it)
{
    vg_pool_t *p = pool_of(64 * MiB);
    vg_devptr_t a, b;
    vg_alloc_opts_t o = {.tag = "block-b"};
    cr_assert_eq(vg_pool_alloc(p, 1000, NULL, &a), VG_OK);
    cr_assert_eq(vg_pool_alloc(p, 1000, &o, &b), VG_OK);
    CUdeviceptr chunk;
    size_t range;
    driver_range(b, &chunk, &range); /* also makes the context current */
    cr_expect_eq(chunk, a, "both blocks in one chunk");
    vg_ptr_info_t info;
    cr_assert_eq(vg_ptr_check(b, &info), VG_OK);
    cr_expect_eq(info.cls, VG_PTR_LIVE);
    cr_expect_eq(info.base, b);
    cr_expect_eq(info.size, 1000u);
    cr_expect_eq(info.kind, VG_KIND_API);
    cr_assert_eq(vg_ptr_check(b + 10, &info), VG_OK);
    cr_expect_eq(info.cls, VG_PTR_INTERIOR);
    cr_expect_eq(info.base, b, "the block, not the chunk or its first block");
    cr_expect_eq(info.offset, 10u);
    cr_expect_eq(info.size, 1000u);
    vg__alloc_t rec;
    cr_assert_eq(vg__ledger_find(b, &rec), VG_OK);
    cr_expect_str_eq(rec.tag, "block-b");
    cr_expect_eq(vg_pool_free(p, b), VG_OK);
    cr_assert_eq(vg_ptr_check(b, &info), VG_OK);
    cr_expect_neq(info.cls, VG_PTR_LIVE);
    cr_expect_eq(vg_pool_free(p, b), VG_ENOTFOUND, "double free");
    cr_expect_eq(vg_pool_free(p, a + 256), VG_ENOTFOUND, "interior free");
    vg_pool_destroy(p, NULL);
}

Test(pool_cache, zeroed_blocks_read_back_as_zero_after_reuse)
{
    vg_pool_t *p = pool_of(64 * MiB);
    unsigned char junk[4096], back[4096];
    memset(junk, 0xA5, sizeof junk);
    for (int i = 0; i < 600; i++) { /* more than one chunk's worth of reuse */
        vg_buf_t *b = NULL;
        cr_assert_eq(vg_buf_create(p, sizeof junk, NULL, &b), VG_OK);
        cr_assert_eq(vg_buf_write(b, 0, junk, sizeof junk), VG_OK);
        vg_buf_destroy(&b);
    }
    vg_alloc_opts_t o = {.flags = VG_ALLOC_ZERO};
    vg_buf_t *b = NULL;
    cr_assert_eq(vg_buf_create(p, sizeof back, &o, &b), VG_OK);
    cr_assert_eq(vg_buf_read(b, 0, back, sizeof back), VG_OK);
    for (size_t i = 0; i < sizeof back; i++)
        cr_assert_eq(back[i], 0, "byte %zu", i);
    vg_buf_destroy(&b);
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
