/*
 * test_async.c — what the shim remembers between stream-ordered
 * allocations follows the program's changes. The shim keeps each device's
 * current pool instead of asking the driver on every cuMemAllocAsync, and
 * asks whether a stream is being captured only while a capture is open
 * (docs/shim.md, "Stream-ordered pools"). A stale memory of either leaves
 * 600 MiB uncharged: each case runs tests/clients/client_async.c under a
 * 1 GiB budget, linked and the way cudart reaches the driver
 * (cuGetProcAddress), and the test driver's high-water mark proves the
 * device never held more than the budget.
 *
 * Needs VG_TEST_BUILD (tests/run-tests.sh exports it).
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clientrun.h"
#include "testutil.h"

#define OUT_OF_MEMORY 2 /* CUDA_ERROR_OUT_OF_MEMORY */

typedef struct async_run {
    run_result_t r;
    const char *line; /* the client's "path=CASE ..." line */
    char what[128];   /* names the run in messages */
} async_run_t;

/* Runs client_async CASE under the shim with `budget`, reaching the
 * driver the way `api` names ("linked" or "cudart"), with `more` set
 * ("NAME=value", or NULL). */
static void run_async_with(async_run_t *a, const char *c, const char *api, const char *budget,
                           const char *const more[2])
{
    char *how = cat3("CLIENT_API=", api, "");
    run_opts_t o = {.method = "async", .path = c, .budget = budget,
                    .env = {how, more ? more[0] : NULL, more ? more[1] : NULL}};
    snprintf(a->what, sizeof a->what, "%s (%s%s%s) under %s", c, api,
             more && more[1] ? ", " : "", more && more[1] ? more[1] : "", budget);
    run_client(&o, &a->r);
    free(how);
    cr_assert_eq(a->r.status, 0, "%s: client exited %d\nstdout: %s\nstderr: %s", a->what,
                 a->r.status, a->r.out, a->r.err);
    a->line = line_for(a->r.out, c);
    cr_assert_not_null(a->line, "%s: no answer\nstdout: %s\nstderr: %s", a->what, a->r.out,
                       a->r.err);
}

static void run_async(async_run_t *a, const char *c, const char *api)
{
    run_async_with(a, c, api, "1GiB", NULL);
}

static long long get(const async_run_t *a, const char *key)
{
    long long v = field(a->line, key);
    cr_assert_neq(v, -1, "%s: no %s in: %s", a->what, key, a->line);
    return v;
}

static void expect_rc(const async_run_t *a, const char *key, long long want)
{
    long long got = get(a, key);
    cr_expect_eq(got, want, "%s: %s=%lld, want %lld\n  %s", a->what, key, got, want, a->line);
}

/* The 600 MiB from the stream-ordered allocator were charged: 600 MiB
 * plain beside them were refused, and the device never held over 1 GiB. */
static void expect_grown_and_charged(const async_run_t *a)
{
    expect_rc(a, "first_rc", 0);
    expect_rc(a, "change_rc", 0);
    expect_rc(a, "grow_rc", 0);
    expect_rc(a, "plain_rc", OUT_OF_MEMORY);
    long long peak = get(a, "peak");
    cr_expect_leq(peak, (long long)GiB, "%s: the device held %lld bytes (%.1f MiB)\n  %s",
                  a->what, peak, (double)peak / MiB, a->line);
}

static const char *const apis[] = {"linked", "cudart"};

/* cuDeviceSetMemPool between two allocations: the second draws from the
 * new pool, and the new pool's growth is what is charged (a remembered
 * default pool did not grow: nothing was). */
Test(async, a_pool_made_current_is_the_one_charged)
{
    static async_run_t a;
    for (size_t i = 0; i < sizeof apis / sizeof apis[0]; i++) {
        run_async(&a, "set_pool", apis[i]);
        expect_grown_and_charged(&a);
    }
}

/* The current pool destroyed: the device's default is current again, and
 * is charged, even when a new pool takes the destroyed one's address. */
Test(async, after_the_current_pool_is_destroyed_the_default_is_charged)
{
    static async_run_t a;
    for (size_t i = 0; i < sizeof apis / sizeof apis[0]; i++) {
        run_async(&a, "destroy_current", apis[i]);
        expect_grown_and_charged(&a);
    }
}

/* A capture begun after the shim's first stream-ordered allocation (which
 * found none open): an allocation on the capturing stream is a graph's
 * node, charged until the graph is destroyed. */
Test(async, a_capture_begun_later_is_charged_as_a_graph_node)
{
    static async_run_t a;
    for (size_t i = 0; i < sizeof apis / sizeof apis[0]; i++) {
        run_async(&a, "capture", apis[i]);
        expect_grown_and_charged(&a);
        expect_rc(&a, "end_rc", 0);
        expect_rc(&a, "destroy_rc", 0);
        expect_rc(&a, "after_rc", 0);
    }
}

/* A cuStreamEndCapture the driver refuses (a stream that is not
 * capturing) closes no capture: the open one is still charged. */
Test(async, a_refused_end_of_capture_leaves_the_capture_charged)
{
    static async_run_t a;
    for (size_t i = 0; i < sizeof apis / sizeof apis[0]; i++) {
        run_async(&a, "capture_unmatched", apis[i]);
        cr_expect_neq(get(&a, "end_other_rc"), 0, "%s: %s", a.what, a.line);
        expect_grown_and_charged(&a);
        expect_rc(&a, "after_rc", 0);
    }
}

/* After 64 pools were used and gave their memory back (all still alive,
 * their entries kept at 0), the 65th pool's 600 MiB are charged. They went
 * uncharged when the shim had 64 places for pools and each was held by a
 * pool charged 0. */
Test(async, pools_that_reserve_nothing_leave_room_for_another_pool)
{
    static async_run_t a;
    for (size_t i = 0; i < sizeof apis / sizeof apis[0]; i++) {
        run_async(&a, "many_pools", apis[i]);
        expect_grown_and_charged(&a);
    }
}

/* Any number of pools holding memory is charged: 70 pools of 15 MiB each
 * (1050 MiB) under 1 GiB, so some are refused and the device never holds
 * more than the budget. The shim once kept charges for 64 pools: pools 65
 * to 70 went uncharged, all 70 were served and the device held 1050 MiB.
 * Then every pool is destroyed with its block out: the charges stay until
 * the blocks are freed (600 MiB plain refused, 900 MiB fit after). */
Test(async, every_pool_that_holds_memory_is_charged_however_many)
{
    static async_run_t a;
    for (size_t i = 0; i < sizeof apis / sizeof apis[0]; i++) {
        run_async(&a, "seventy_pools", apis[i]);
        expect_rc(&a, "made", 70);
        expect_rc(&a, "other_rc", 0);
        cr_expect_geq(get(&a, "refused"), 2, "%s: 70 x 15 MiB fit under 1 GiB\n  %s", a.what,
                      a.line);
        cr_expect_eq(get(&a, "ok") + get(&a, "refused"), 70, "%s: %s", a.what, a.line);
        long long peak = get(&a, "peak");
        cr_expect_leq(peak, (long long)GiB, "%s: the device held %lld bytes (%.1f MiB)\n  %s",
                      a.what, peak, (double)peak / MiB, a.line);
        expect_rc(&a, "destroy_rc", 0);
        expect_rc(&a, "held_rc", OUT_OF_MEMORY);
        expect_rc(&a, "free_rc", 0);
        expect_rc(&a, "after_rc", 0);
    }
}

/* cuMemAllocAsync draws from the current pool of the stream's device, not
 * of the current context's: a stream made in device 1's context and used
 * while device 0's is current is charged to device 1's budget (256 MiB),
 * which refuses what does not fit, and device 0's 1 GiB stays whole. The
 * shim asks cuStreamGetDevice, and without it (a driver before CUDA 12.8)
 * the stream's context (cuStreamGetCtx), made current for the question
 * only: the plain allocation after it is still device 0's. */
Test(async, a_stream_of_another_device_is_charged_to_that_device)
{
    static async_run_t a;
    static const char *const drivers[][2] = {
        {"FAKECUDA_DEVICES=2", NULL},
        {"FAKECUDA_DEVICES=2", "FAKECUDA_NO_STREAM_DEVICE=1"},
    };
    for (size_t d = 0; d < sizeof drivers / sizeof drivers[0]; d++)
        for (size_t i = 0; i < sizeof apis / sizeof apis[0]; i++) {
            run_async_with(&a, "other_device", apis[i], "0=1GiB,1=256MiB", drivers[d]);
            expect_rc(&a, "change_rc", 0);
            expect_rc(&a, "first_rc", 0);
            expect_rc(&a, "more_rc", OUT_OF_MEMORY);
            expect_rc(&a, "plain_rc", 0);
            long long peak1 = get(&a, "peak1");
            cr_expect_leq(peak1, (long long)(256 * MiB), "%s: device 1 held %lld bytes\n  %s", a.what,
                          peak1, a.line);
        }
}
