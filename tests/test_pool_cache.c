/*
 * test_pool_cache.c — the pool's cache over the test driver, one thread at
 * a time: size classes and alignment, hits and misses, no overlap between
 * live blocks (a randomized run with shadow bookkeeping), the budget with
 * the cache full, trimming (on request, before a refusal, under pressure),
 * and pointer checks of blocks. Reuse ordering, arenas, many threads and
 * fork: test_pool_cache_threads.c. Shared helpers: pooltest.h.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "pooltest.h"
#include "testutil.h"
#include "vg_driver.h"
#include "vg_pool.h"

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
