/*
 * test_api.c — the public API over the test driver: devices, pools,
 * alignment, zeroing, bounds, release, exhaustion, pressure, leaks, and a
 * 16-thread race that must never exceed the budget.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "testutil.h"
#include "vg_account.h"
#include "vg_driver.h"

static vg_pool_t *pool_of(uint64_t limit)
{
    vg_pool_t *p = NULL;
    cr_assert_eq(vg_pool_create(0, limit, &p), VG_OK);
    return p;
}

Test(api, the_test_driver_is_available)
{
    int n = 0;
    cr_assert_eq(vg_available(), VG_OK);
    cr_assert_eq(vg_device_count(&n), VG_OK);
    cr_expect_eq(n, 1);
}

Test(api, a_missing_driver_fails_fast_with_one_clear_message)
{
    setenv("VRAMGUARD_LIBCUDA", "/nonexistent/libcuda.so.1", 1);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    int rc = vg_available();
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ms = (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6;
    cr_expect_eq(rc, VG_ENODRIVER);
    cr_expect_lt(ms, 100.0);
    cr_expect(strstr(vg__engine_error(), "/nonexistent/libcuda.so.1") != NULL,
              "message names the path: %s", vg__engine_error());
    vg_pool_t *p = NULL;
    cr_expect_eq(vg_pool_create(0, MiB, &p), VG_ENODRIVER);
}

Test(api, device_info_reports_the_device)
{
    vg_device_info_t info;
    cr_assert_eq(vg_device_info(0, &info), VG_OK);
    cr_expect_gt(strlen(info.name), 0u);
    cr_expect_eq(strncmp(info.uuid, "GPU-", 4), 0);
    cr_expect_eq(strlen(info.uuid), 40u);
    cr_expect_eq(info.cc_major, 9);
    cr_expect_eq(info.cc_minor, 0);
    cr_expect_eq(info.sm_count, 132);
    cr_expect_eq(info.total_bytes, 80 * GiB);
    cr_expect_eq(info.free_bytes, 80 * GiB);
    cr_expect_eq(vg_device_info(1, &info), VG_ENODEV);
}

Test(api, devices_are_found_by_index_or_uuid)
{
    vg_device_info_t info;
    int ord = -1;
    cr_assert_eq(vg_device_info(0, &info), VG_OK);
    cr_expect_eq(vg_device_find("0", &ord), VG_OK);
    cr_expect_eq(ord, 0);
    ord = -1;
    cr_expect_eq(vg_device_find(info.uuid, &ord), VG_OK);
    cr_expect_eq(ord, 0);
    cr_expect_eq(vg_device_find("7", &ord), VG_ENODEV);
    cr_expect_eq(vg_device_find("GPU-00000000-0000-0000-0000-000000000000", &ord), VG_ENODEV);
    cr_expect_eq(vg_device_find("zero", &ord), VG_EINVAL);
    cr_expect_eq(vg_device_find("-1", &ord), VG_EINVAL);
}

Test(api, alignment_is_honoured_and_bad_alignment_is_einval)
{
    vg_pool_t *p = pool_of(64 * MiB);
    vg_devptr_t ptr = 0;
    size_t aligns[] = {256, 512, 4096, 65536, 1u << 21};
    for (size_t i = 0; i < sizeof aligns / sizeof aligns[0]; i++) {
        vg_alloc_opts_t o = {.align = aligns[i]};
        cr_assert_eq(vg_pool_alloc(p, 1000, &o, &ptr), VG_OK);
        cr_expect_eq(ptr % aligns[i], 0u, "align %zu", aligns[i]);
        cr_expect_eq(vg_pool_free(p, ptr), VG_OK);
    }
    size_t bad[] = {1, 128, 255, 384, 1000};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        vg_alloc_opts_t o = {.align = bad[i]};
        cr_expect_eq(vg_pool_alloc(p, 1000, &o, &ptr), VG_EINVAL, "align %zu", bad[i]);
    }
    vg_alloc_opts_t huge = {.align = 4096};
    cr_expect_eq(vg_pool_alloc(p, SIZE_MAX - 100, &huge, &ptr), VG_EINVAL);
    cr_expect_eq(vg_pool_destroy(p, NULL), VG_OK);
}

Test(api, zero_bytes_and_null_outputs_are_einval)
{
    vg_pool_t *p = pool_of(MiB);
    vg_devptr_t ptr;
    cr_expect_eq(vg_pool_alloc(p, 0, NULL, &ptr), VG_EINVAL);
    cr_expect_eq(vg_pool_alloc(p, 10, NULL, NULL), VG_EINVAL);
    cr_expect_eq(vg_pool_alloc(NULL, 10, NULL, &ptr), VG_EINVAL);
    cr_expect_eq(vg_pool_create(0, 0, &p), VG_EINVAL);
    vg_pool_stats_t s;
    cr_assert_eq(vg_pool_stats(p, &s), VG_OK);
    cr_expect_eq(s.used, 0u);
    vg_pool_destroy(p, NULL);
}

Test(api, zeroed_allocations_read_back_as_zero)
{
    vg_pool_t *p = pool_of(64 * MiB);
    size_t n = 1 << 20;
    unsigned char *junk = malloc(n), *back = malloc(n);
    memset(junk, 0xA5, n);
    /* dirty some memory first so a reused block would show it */
    for (int i = 0; i < 4; i++) {
        vg_buf_t *b = NULL;
        cr_assert_eq(vg_buf_create(p, n, NULL, &b), VG_OK);
        cr_assert_eq(vg_buf_write(b, 0, junk, n), VG_OK);
        vg_buf_destroy(&b);
    }
    vg_alloc_opts_t o = {.flags = VG_ALLOC_ZERO};
    vg_buf_t *b = NULL;
    cr_assert_eq(vg_buf_create(p, n, &o, &b), VG_OK);
    cr_assert_eq(vg_buf_read(b, 0, back, n), VG_OK);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(back[i], 0, "byte %zu", i);
    vg_buf_destroy(&b);
    free(junk);
    free(back);
    vg_pool_destroy(p, NULL);
}

Test(api, buffer_copies_are_bounds_checked)
{
    vg_pool_t *p = pool_of(MiB);
    vg_buf_t *b = NULL;
    char in[64] = "hello, device", out[64] = {0};
    cr_assert_eq(vg_buf_create(p, 64, NULL, &b), VG_OK);
    cr_expect_eq(vg_buf_size(b), 64u);
    cr_expect_eq(vg_buf_write(b, 10, in, 54), VG_OK);
    cr_expect_eq(vg_buf_read(b, 10, out, 54), VG_OK);
    cr_expect_str_eq(out, in);
    cr_expect_eq(vg_buf_write(b, 63, in, 2), VG_ERANGE);
    cr_expect_eq(vg_buf_write(b, 65, in, 0), VG_ERANGE);
    cr_expect_eq(vg_buf_write(b, SIZE_MAX, in, 2), VG_ERANGE);
    cr_expect_eq(vg_buf_read(b, 2, out, SIZE_MAX - 1), VG_ERANGE);
    cr_expect_eq(vg_buf_read(b, 64, out, 0), VG_OK);
    cr_expect_eq(vg_buf_write(NULL, 0, in, 1), VG_EINVAL);
    vg_buf_destroy(&b);
    vg_pool_destroy(p, NULL);
}

Test(api, release_hands_the_pointer_over_and_destroy_is_idempotent)
{
    vg_pool_t *p = pool_of(MiB);
    vg_buf_t *b = NULL, *c = NULL;
    vg_devptr_t ptr = 0;
    cr_assert_eq(vg_buf_create(p, 4096, NULL, &b), VG_OK);
    vg_devptr_t expect = vg_buf_ptr(b);
    cr_expect_eq(vg_buf_release(&b, &ptr), VG_OK);
    cr_expect_null(b);
    cr_expect_eq(ptr, expect);
    cr_expect_eq(vg_pool_free(p, ptr), VG_OK);
    cr_expect_eq(vg_pool_free(p, ptr), VG_ENOTFOUND);
    cr_assert_eq(vg_buf_create(p, 4096, NULL, &c), VG_OK);
    cr_expect_eq(vg_buf_destroy(&c), VG_OK);
    cr_expect_null(c);
    cr_expect_eq(vg_buf_destroy(&c), VG_OK);
    cr_expect_eq(vg_buf_destroy(NULL), VG_OK);
    cr_expect_eq(fake_used(0), 0u);
    vg_pool_destroy(p, NULL);
}

Test(api, a_full_pool_refuses_and_charges_nothing)
{
    vg_pool_t *p = pool_of(GiB);
    vg_devptr_t a = 0, b = 0;
    cr_assert_eq(vg_pool_alloc(p, 800 * MiB, NULL, &a), VG_OK);
    cr_expect_eq(vg_pool_alloc(p, 300 * MiB, NULL, &b), VG_ENOMEM);
    vg_pool_stats_t s;
    cr_assert_eq(vg_pool_stats(p, &s), VG_OK);
    cr_expect_eq(s.used, 800 * MiB);
    cr_expect_eq(s.refusals, 1u);
    cr_expect_eq(s.live_count, 1u);
    cr_expect_eq(fake_used(0), 800 * MiB);
    uint64_t avail = 0;
    cr_expect_eq(vg_pool_available(p, &avail), VG_OK);
    cr_expect_eq(avail, 224 * MiB);
    vg_pool_free(p, a);
    cr_expect_eq(vg_pool_alloc(p, 300 * MiB, NULL, &b), VG_OK);
    vg_pool_destroy(p, NULL);
}

Test(api, a_refusal_can_be_explained)
{
    vg_pool_t *p = pool_of(GiB);
    vg_devptr_t a = 0;
    vg_alloc_opts_t o = {.tag = "weights"};
    cr_assert_eq(vg_pool_alloc(p, 800 * MiB, &o, &a), VG_OK);
    vg_refusal_t why;
    char line[256];
    cr_assert_eq(vg_pool_explain(p, 300 * MiB, &why, line, sizeof line), VG_OK);
    cr_expect_eq(why.requested, 300 * MiB);
    cr_expect_eq(why.limit, GiB);
    cr_expect_eq(why.used, 800 * MiB);
    cr_expect_eq(why.driver_free, 80 * GiB - 800 * MiB);
    cr_expect_eq(why.recent_count, 1);
    cr_expect_eq(why.recent[0].ptr, a);
    cr_expect_str_eq(why.recent[0].tag, "weights");
    cr_expect(strstr(line, "over the pool limit") != NULL, "%s", line);
    cr_expect(strstr(line, "300.00 MiB") != NULL, "%s", line);
    vg_pool_destroy(p, NULL);
}

Test(api, ninety_percent_of_the_device_in_one_request)
{
    setenv("FAKECUDA_TOTAL_BYTES", "4294967296", 1);
    vg_device_info_t info;
    cr_assert_eq(vg_device_info(0, &info), VG_OK);
    vg_pool_t *p = pool_of(info.total_bytes);
    vg_devptr_t a = 0;
    cr_expect_eq(vg_pool_alloc(p, info.total_bytes / 10 * 9, NULL, &a), VG_OK);
    cr_expect_eq(vg_pool_free(p, a), VG_OK);
    vg_pool_destroy(p, NULL);
}

Test(api, the_device_budget_caps_every_pool)
{
    setenv("VRAMGUARD_BUDGET", "512MiB", 1);
    vg_pool_t *p = pool_of(GiB), *q = pool_of(GiB);
    vg_devptr_t a = 0, b = 0;
    cr_expect_eq(vg_pool_alloc(p, 600 * MiB, NULL, &a), VG_ENOMEM);
    cr_expect_eq(vg_pool_alloc(p, 300 * MiB, NULL, &a), VG_OK);
    cr_expect_eq(vg_pool_alloc(q, 300 * MiB, NULL, &b), VG_ENOMEM);
    vg_pool_stats_t s;
    vg_pool_stats(q, &s);
    cr_expect_eq(s.used, 0u, "a refusal by the device budget leaves the pool uncharged");
    vg_pool_destroy(p, NULL);
    vg_pool_destroy(q, NULL);
}

Test(api, every_pointer_is_real_device_memory)
{
    vg_pool_t *p = pool_of(64 * MiB);
    const vg__driver_t *d = vg__driver();
    CUcontext ctx;
    cr_assert_eq(d->cuDevicePrimaryCtxRetain(&ctx, 0), CUDA_SUCCESS);
    cr_assert_eq(d->cuCtxSetCurrent(ctx), CUDA_SUCCESS);
    for (size_t sz = 1; sz <= 8 * MiB; sz *= 4) {
        vg_devptr_t a = 0;
        cr_assert_eq(vg_pool_alloc(p, sz, NULL, &a), VG_OK);
        unsigned int type = 0;
        CUdeviceptr base = 0;
        size_t range = 0;
        cr_expect_eq(d->cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, a), CUDA_SUCCESS);
        cr_expect_eq(type, CU_MEMORYTYPE_DEVICE);
        cr_expect_eq(d->cuMemGetAddressRange_v2(&base, &range, a), CUDA_SUCCESS);
        cr_expect_geq(range, sz);
        vg_pool_free(p, a);
    }
    vg_pool_destroy(p, NULL);
}

struct levels { int changes; vg_pressure_t last; };

static void on_level(vg_pool_t *p, vg_pressure_t old_level, vg_pressure_t new_level, void *user)
{
    struct levels *l = user;
    (void)p;
    (void)old_level;
    l->changes++;
    l->last = new_level;
}

Test(api, pressure_callbacks_follow_the_level)
{
    vg_pool_t *p = pool_of(100 * MiB);
    struct levels l = {0};
    cr_assert_eq(vg_pool_on_pressure(p, on_level, &l), VG_OK);
    vg_devptr_t a, b, c;
    cr_assert_eq(vg_pool_alloc(p, 60 * MiB, NULL, &a), VG_OK);
    cr_expect_eq(vg_pool_pressure(p), VG_PRESSURE_MEDIUM);
    cr_expect_eq(l.last, VG_PRESSURE_MEDIUM);
    cr_assert_eq(vg_pool_alloc(p, 25 * MiB, NULL, &b), VG_OK);
    cr_expect_eq(vg_pool_pressure(p), VG_PRESSURE_HIGH);
    cr_assert_eq(vg_pool_alloc(p, 11 * MiB, NULL, &c), VG_OK);
    cr_expect_eq(vg_pool_pressure(p), VG_PRESSURE_CRITICAL);
    cr_expect_eq(l.changes, 3);
    vg_pool_free(p, c);
    vg_pool_free(p, b);
    vg_pool_free(p, a);
    cr_expect_eq(vg_pool_pressure(p), VG_PRESSURE_LOW);
    cr_expect_eq(l.last, VG_PRESSURE_LOW);
    vg_pool_destroy(p, NULL);
}

Test(api, destroy_frees_everything_and_reports_leaks)
{
    vg_pool_t *p = pool_of(GiB);
    vg_devptr_t a, b, c;
    cr_assert_eq(vg_pool_alloc(p, 10 * MiB, NULL, &a), VG_OK);
    cr_assert_eq(vg_pool_alloc(p, 20 * MiB, NULL, &b), VG_OK);
    cr_assert_eq(vg_pool_alloc(p, 1 * MiB, NULL, &c), VG_OK);
    vg_pool_free(p, c);
    vg_leak_report_t leaks;
    cr_assert_eq(vg_pool_destroy(p, &leaks), VG_OK);
    cr_expect_eq(leaks.count, 2u);
    cr_expect_eq(leaks.bytes, 30 * MiB);
    cr_expect_eq(fake_used(0), 0u);
    cr_expect_eq(vg__ledger_count(), 0u);
    cr_expect_eq(vg_pool_destroy(NULL, &leaks), VG_OK);
    cr_expect_eq(leaks.count, 0u);
}

Test(api, pools_do_not_free_each_others_pointers)
{
    vg_pool_t *p = pool_of(MiB), *q = pool_of(MiB);
    vg_devptr_t a;
    cr_assert_eq(vg_pool_alloc(p, 4096, NULL, &a), VG_OK);
    cr_expect_eq(vg_pool_free(q, a), VG_ENOTFOUND);
    cr_expect_eq(vg_pool_free(p, a), VG_OK);
    vg_pool_destroy(p, NULL);
    vg_pool_destroy(q, NULL);
}

#define RACE_THREADS 16
#define RACE_LIMIT (256 * MiB)

static void *racer(void *arg)
{
    vg_pool_t *p = arg;
    uint64_t seed = (uint64_t)(uintptr_t)&seed | 1;
    vg_devptr_t held[8] = {0};
    for (int i = 0; i < 400; i++) {
        int slot = (int)(test_rand(&seed) % 8);
        if (held[slot]) {
            cr_assert_eq(vg_pool_free(p, held[slot]), VG_OK);
            held[slot] = 0;
            continue;
        }
        size_t sz = 1 + test_rand(&seed) % (32 * MiB);
        int rc = vg_pool_alloc(p, sz, NULL, &held[slot]);
        cr_assert(rc == VG_OK || rc == VG_ENOMEM, "rc %d", rc);
        if (rc != VG_OK)
            held[slot] = 0;
    }
    for (int s = 0; s < 8; s++)
        if (held[s])
            vg_pool_free(p, held[s]);
    return NULL;
}

Test(api, sixteen_threads_never_exceed_the_budget)
{
    vg_pool_t *p = pool_of(RACE_LIMIT);
    pthread_t t[RACE_THREADS];
    for (int i = 0; i < RACE_THREADS; i++)
        pthread_create(&t[i], NULL, racer, p);
    for (int i = 0; i < RACE_THREADS; i++)
        pthread_join(t[i], NULL);
    vg_pool_stats_t s;
    vg_pool_stats(p, &s);
    /* Cached memory counts as used (docs/pool.md): all that is left is cache. */
    cr_expect_eq(s.used, s.cached);
    cr_assert_eq(vg_pool_trim(p, 0, NULL), VG_OK);
    vg_pool_stats(p, &s);
    cr_expect_eq(s.used, 0u);
    cr_expect_eq(s.live_count, 0u);
    cr_expect_leq(s.peak, RACE_LIMIT);
    cr_expect_gt(s.allocs, 100u);
    cr_expect_leq(fake_peak(0), RACE_LIMIT, "driver high-water %llu",
                  (unsigned long long)fake_peak(0));
    cr_expect_eq(fake_used(0), 0u);
    cr_expect_eq(vg__ledger_count(), 0u);
    vg_pool_destroy(p, NULL);
}
