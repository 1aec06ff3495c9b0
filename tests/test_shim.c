/*
 * test_shim.c — the preload shim seen from outside, as a user meets it: each
 * test starts a client program (tests/clients) with LD_PRELOAD set for that
 * child only, then reads the client's one-line answer and the test driver's
 * exit report (FAKECUDA_REPORT: peak_bytes live_bytes allocs frees failed).
 *
 * The driver's peak is the proof that a budget held: it counts what really
 * reached the (test) driver, whatever the shim believed. Its `failed` count
 * tells a shim refusal (the driver never saw the call, failed=0) from a
 * driver OUT_OF_MEMORY.
 *
 * Needs VG_TEST_BUILD (tests/run-tests.sh exports it): the build folder with
 * libvramguard-preload.so, fakecuda/libcuda.so.1 and clients/.
 */
#include <criterion/criterion.h>

#include <dlfcn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clientrun.h"
#include "testutil.h"

#define BUDGET (2 * GiB)
#define CHUNK (64 * MiB)
#define CHUNK_TEXT "64MiB"
#define OUT_OF_MEMORY 2    /* CUDA_ERROR_OUT_OF_MEMORY */

static const char *const methods[] = {"linked", "dlsym", "default", "cudart"};
static const char *const paths[] = {"plain", "pitch", "managed", "async", "async_ptsz", "pool",
                                    "vmm", "array", "array3d", "mipmap", "graph", "graph_node",
                                    "capture"};
#define NMETHODS (sizeof methods / sizeof methods[0])
#define NPATHS (sizeof paths / sizeof paths[0])

/* Bytes one CHUNK-sized object of `path` holds: a mipmap adds a quarter-size
 * second level (tests/clients/client.h). */
static uint64_t object_bytes(const char *path)
{
    return strcmp(path, "mipmap") ? CHUNK : CHUNK + CHUNK / 4;
}

/* ------------------------------------------------------ reading answers */

typedef struct answer {
    long long allocs, bytes, rc;
    long long peak, live, failed; /* from the test driver's report */
} answer_t;

/* Parses the client's line for `path` and the report; false (after
 * saying why) when either is missing. */
static bool answer_of(const run_result_t *r, const char *what, const char *path, answer_t *a)
{
    const char *l = line_for(r->out, path);
    cr_expect_eq(r->status, 0, "%s: client exited %d\nstdout: %s\nstderr: %s", what, r->status,
                 r->out, r->err);
    cr_expect_null(strstr(r->out, "free_failed="), "%s: a free failed: %s", what, r->out);
    if (l)
        cr_expect_eq(field(l, "dangling"), 0, "%s: a refusal left the caller a pointer: %s",
                     what, l);
    if (!l || !r->report[0]) {
        cr_expect_fail("%s: no answer (line %s, report '%s')\nstdout: %s\nstderr: %s", what,
                       l ? "found" : "missing", r->report, r->out, r->err);
        return false;
    }
    *a = (answer_t){field(l, "allocs"), field(l, "bytes"), field(l, "rc"),
                    field(r->report, "peak_bytes"), field(r->report, "live_bytes"),
                    field(r->report, "failed")};
    return true;
}

static void run_one(const char *method, const char *path, const char *budget, const char *max,
                    run_result_t *r)
{
    run_opts_t o = {.method = method, .path = path, .chunk = CHUNK_TEXT, .max = max,
                    .budget = budget};
    run_client(&o, r);
}

/* ------------------------------------------------ budget on every path */

/* The first thing that must work: a preloaded client starts, reaches the
 * driver and exits cleanly (every other test builds on this). */
Test(shim, a_preloaded_client_starts_and_exits_cleanly)
{
    static run_result_t r;
    for (size_t i = 0; i < NMETHODS; i++) {
        run_opts_t o = {.method = methods[i], .path = "meminfo", .chunk = "1", .max = "1"};
        run_client(&o, &r);
        cr_expect_eq(r.status, 0, "%s: client exited %d\nstdout: %s\nstderr: %s", methods[i],
                     r.status, r.out, r.err);
        cr_expect_not_null(line_for(r.out, "meminfo"), "%s: no answer", methods[i]);
    }
}

/* With a 2 GiB budget the client fills exactly the budget, and the refusal
 * is the shim's (the driver failed nothing) with the driver's own code. */
static void expect_capped(const char *method)
{
    static run_result_t r;
    for (size_t i = 0; i < NPATHS; i++) {
        const char *p = paths[i];
        char what[64];
        answer_t a;
        snprintf(what, sizeof what, "%s/%s", method, p);
        run_one(method, p, "2GiB", "10000", &r);
        if (!answer_of(&r, what, p, &a))
            continue;
        long long want = (long long)(BUDGET / object_bytes(p));
        cr_expect_eq(a.rc, OUT_OF_MEMORY, "%s: first failure %lld, want OUT_OF_MEMORY", what, a.rc);
        cr_expect_eq(a.allocs, want, "%s: %lld allocations under the budget, want %lld", what,
                     a.allocs, want);
        cr_expect_leq(a.bytes, (long long)BUDGET, "%s: %lld bytes allocated", what, a.bytes);
        cr_expect_leq(a.peak, (long long)BUDGET, "%s: driver peak %lld over budget", what, a.peak);
        cr_expect_eq(a.failed, 0, "%s: the driver refused %lld calls (shim let them through)",
                     what, a.failed);
        cr_expect_eq(a.live, 0, "%s: %lld bytes still live at exit", what, a.live);
    }
}

Test(shim, linked_calls_are_capped_on_every_path) { expect_capped("linked"); }
Test(shim, dlsym_on_the_driver_handle_is_capped_on_every_path) { expect_capped("dlsym"); }
Test(shim, dlsym_rtld_default_is_capped_on_every_path) { expect_capped("default"); }
Test(shim, cudart_get_proc_address_is_capped_on_every_path) { expect_capped("cudart"); }

/* Without a budget the same clients go past 2 GiB: the cap is the shim's. */
static void expect_uncapped(const char *method)
{
    static run_result_t r;
    for (size_t i = 0; i < NPATHS; i++) {
        const char *p = paths[i];
        char what[64];
        answer_t a;
        snprintf(what, sizeof what, "%s/%s (no budget)", method, p);
        run_one(method, p, NULL, "40", &r);
        if (!answer_of(&r, what, p, &a))
            continue;
        cr_expect_eq(a.rc, 0, "%s: refused with %lld", what, a.rc);
        cr_expect_eq(a.allocs, 40, "%s: %lld allocations, want 40", what, a.allocs);
        cr_expect_eq(a.peak, (long long)(40 * object_bytes(p)), "%s: driver peak %lld", what,
                     a.peak);
    }
}

Test(shim, linked_calls_without_budget_are_not_capped) { expect_uncapped("linked"); }
Test(shim, dlsym_without_budget_is_not_capped) { expect_uncapped("dlsym"); }
Test(shim, dlsym_rtld_default_without_budget_is_not_capped) { expect_uncapped("default"); }
Test(shim, cudart_without_budget_is_not_capped) { expect_uncapped("cudart"); }

/* --------------------------------------------------------- single cases */

Test(shim, free_and_reuse_leaves_no_charge_behind)
{
    static run_result_t r;
    run_opts_t o = {.method = "linked", .path = "freeloop", .chunk = "1GiB", .max = "1",
                    .budget = "2GiB"};
    answer_t a;
    run_client(&o, &r);
    if (!answer_of(&r, "freeloop", "freeloop", &a))
        return;
    cr_expect_eq(a.rc, 0, "refused after %lld rounds with %lld", a.allocs, a.rc);
    cr_expect_eq(a.allocs, 1000);
    cr_expect_eq(a.peak, (long long)GiB);
}

/* Out: total, free and cuDeviceTotalMem as the client saw them. */
static void meminfo(const char *method, const char *budget, const char *fake_total,
                    long long seen[3])
{
    static run_result_t r;
    run_opts_t o = {.method = method, .path = "meminfo", .chunk = "1", .max = "1",
                    .budget = budget, .env = {fake_total}};
    run_client(&o, &r);
    const char *l = line_for(r.out, "meminfo");
    cr_assert_eq(r.status, 0, "%s: exited %d: %s", method, r.status, r.err);
    cr_assert_not_null(l, "%s: no answer: %s %s", method, r.out, r.err);
    cr_expect_eq(field(l, "rc"), 0, "%s: %s", method, l);
    seen[0] = field(l, "total");
    seen[1] = field(l, "free");
    seen[2] = field(l, "device_total");
}

static void expect_meminfo(const char *budget, const char *fake_total, long long want)
{
    for (size_t i = 0; i < NMETHODS; i++) {
        long long s[3];
        meminfo(methods[i], budget, fake_total, s);
        cr_expect_eq(s[0], want, "%s: total %lld, want %lld", methods[i], s[0], want);
        cr_expect_eq(s[1], want, "%s: free %lld, want %lld", methods[i], s[1], want);
        cr_expect_eq(s[2], want, "%s: cuDeviceTotalMem %lld, want %lld", methods[i], s[2], want);
    }
}

Test(shim, meminfo_reports_the_budget_as_the_card)
{
    expect_meminfo("2GiB", NULL, (long long)BUDGET);
}

Test(shim, meminfo_without_budget_reports_the_driver)
{
    expect_meminfo(NULL, NULL, (long long)(80 * GiB));
}

Test(shim, meminfo_total_is_the_smaller_of_budget_and_card)
{
    expect_meminfo("2GiB", "FAKECUDA_TOTAL_BYTES=1073741824", (long long)GiB);
}

/* A budget that does not parse fails closed: every allocation is refused
 * with the driver's OUT_OF_MEMORY and stderr says why, once. */
Test(shim, malformed_budget_refuses_and_names_the_setting_once)
{
    static run_result_t r;
    for (size_t i = 0; i < NMETHODS; i++) {
        answer_t a;
        run_opts_t o = {.method = methods[i], .path = "plain", .chunk = CHUNK_TEXT, .max = "4",
                        .failures = "3", .budget = "8XB"};
        run_client(&o, &r);
        if (!answer_of(&r, methods[i], "plain", &a))
            continue;
        cr_expect_eq(a.rc, OUT_OF_MEMORY, "%s: %lld", methods[i], a.rc);
        cr_expect_eq(a.allocs, 0, "%s: %lld allocations got through", methods[i], a.allocs);
        cr_expect_eq(a.peak, 0, "%s", methods[i]);
        int lines = 0;
        for (const char *p = r.err; (p = strstr(p, "VRAMGUARD_BUDGET='8XB'")); p++)
            lines++;
        cr_expect_eq(lines, 1, "%s: %d lines name the setting:\n%s", methods[i], lines, r.err);
    }
}

/* VRAMGUARD_LIBCUDA names a driver the engine cannot load while the program
 * loads libcuda.so.1 itself: hooked calls return CUDA_ERROR_NOT_INITIALIZED
 * (docs/shim.md) on every way of reaching the driver, so nothing is
 * allocated; a lookup must never hand out the real, unbudgeted function. */
Test(shim, an_unloadable_libcuda_setting_fails_closed_on_every_path)
{
    static run_result_t r;
    for (size_t i = 0; i < NMETHODS; i++) {
        run_opts_t o = {.method = methods[i], .path = "plain", .chunk = CHUNK_TEXT, .max = "4",
                        .budget = "2GiB", .env = {"VRAMGUARD_LIBCUDA=/nonexistent/libcuda.so.1"}};
        run_client(&o, &r);
        const char *l = line_for(r.out, "plain");
        cr_expect(l || r.status == 3, "%s: client exited %d with no answer\nstdout: %s\nstderr: %s",
                  methods[i], r.status, r.out, r.err);
        if (l)
            cr_expect_eq(field(l, "allocs"), 0, "%s: %lld allocations reached the driver: %s",
                         methods[i], field(l, "allocs"), l);
        cr_expect_leq(field(r.report, "peak_bytes"), 0, "%s: driver peak %lld (report '%s')",
                      methods[i], field(r.report, "peak_bytes"), r.report);
        cr_expect_not_null(strstr(r.err, "/nonexistent/libcuda.so.1"),
                           "%s: stderr does not name the path:\n%s", methods[i], r.err);
    }
}

/* 16 threads allocate until each is refused, then hold: exactly the
 * budget gets allocated, never more. */
Test(shim, racing_threads_never_exceed_the_budget)
{
    static run_result_t r;
    const char *race_methods[] = {"linked", "cudart"};
    for (int round = 0; round < 3; round++)
        for (size_t i = 0; i < 2; i++) {
            answer_t a;
            run_one(race_methods[i], "race", "2GiB", "10000", &r);
            if (!answer_of(&r, race_methods[i], "race", &a))
                continue;
            cr_expect_eq(a.allocs, 32, "%s: %lld allocations", race_methods[i], a.allocs);
            cr_expect_leq(a.bytes, (long long)BUDGET, "%s", race_methods[i]);
            cr_expect_leq(a.peak, (long long)BUDGET, "%s: driver peak %lld", race_methods[i],
                          a.peak);
            cr_expect_eq(a.rc, OUT_OF_MEMORY, "%s", race_methods[i]);
        }
}

/* The parent holds 10 chunks and forks; the child inherits that charge,
 * allocates the rest (22) and frees it; the parent then fills the budget. */
Test(shim, a_forked_child_stays_within_the_budget)
{
    static run_result_t r;
    answer_t a;
    run_one("linked", "fork", "2GiB", "40", &r);
    if (!answer_of(&r, "fork", "fork", &a))
        return;
    const char *child = line_for(r.out, "fork-child");
    const char *parent = line_for(r.out, "fork");
    cr_assert_not_null(child, "no child line: %s %s", r.out, r.err);
    long long first = field(parent, "first_allocs"), child_allocs = field(child, "allocs");
    cr_expect_eq(field(parent, "child_status"), 0, "%s", parent);
    cr_expect_eq(first, 10);
    cr_expect_eq(field(child, "rc"), OUT_OF_MEMORY, "%s", child);
    cr_expect_eq(first + child_allocs, 32, "child allocated %lld beside the parent's %lld",
                 child_allocs, first);
    cr_expect_eq(a.allocs, 32, "parent: %s", parent);
    cr_expect_eq(a.rc, OUT_OF_MEMORY);
    cr_expect_leq(a.peak, (long long)BUDGET, "parent's driver peak %lld", a.peak);
    cr_assert(r.child_report[0], "no child report");
    long long child_peak = field(r.child_report, "peak_bytes");
    cr_expect_leq(child_peak, (long long)BUDGET, "child's driver peak %lld", child_peak);
    cr_expect_eq(field(r.child_report, "live_bytes"), 10 * (long long)CHUNK,
                 "child left %s", r.child_report);
}

/* The driver fails the third allocation (FAKECUDA_FAIL_NTH=3); the run goes
 * on to the budget's refusal. The failed call must leave no charge: the
 * client still gets exactly the budget. */
static void expect_exact_after_driver_failure(const char *method)
{
    static run_result_t r;
    for (size_t i = 0; i < NPATHS; i++) {
        const char *p = paths[i];
        char what[64];
        answer_t a;
        snprintf(what, sizeof what, "%s/%s (fail 3rd)", method, p);
        run_opts_t o = {.method = method, .path = p, .chunk = CHUNK_TEXT, .max = "10000",
                        .failures = "2", .budget = "2GiB", .env = {"FAKECUDA_FAIL_NTH=3"}};
        run_client(&o, &r);
        if (!answer_of(&r, what, p, &a))
            continue;
        const char *l = line_for(r.out, p);
        long long want = (long long)(BUDGET / object_bytes(p));
        cr_expect_eq(a.rc, OUT_OF_MEMORY, "%s: %s", what, l);
        cr_expect_eq(field(l, "last_rc"), OUT_OF_MEMORY, "%s: %s", what, l);
        cr_expect_eq(a.failed, 1, "%s: the driver failed %lld calls", what, a.failed);
        cr_expect_eq(a.allocs, want, "%s: %lld allocations, want %lld", what, a.allocs, want);
        cr_expect_leq(a.peak, (long long)BUDGET, "%s: driver peak %lld", what, a.peak);
    }
}

Test(shim, a_driver_failure_leaves_no_charge_linked) { expect_exact_after_driver_failure("linked"); }
Test(shim, a_driver_failure_leaves_no_charge_cudart) { expect_exact_after_driver_failure("cudart"); }

/* The shim is preloaded into clients only, never into the runner. */
Test(shim, the_test_runner_itself_is_not_preloaded)
{
    cr_expect_null(getenv("LD_PRELOAD"), "LD_PRELOAD=%s", getenv("LD_PRELOAD"));
    Dl_info where;
    cr_assert(dladdr((void *)dlsym, &where) && where.dli_fname, "dladdr(dlsym)");
    cr_expect_null(strstr(where.dli_fname, "vramguard"), "dlsym comes from %s", where.dli_fname);
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[4096];
    cr_assert_not_null(maps);
    while (fgets(line, sizeof line, maps))
        cr_expect_null(strstr(line, "libvramguard-preload"), "mapped: %s", line);
    fclose(maps);
}

/* RTLD_NEXT keeps its meaning under the shim: the next dlsym after the
 * program is the shim's own (libc answers relative to the true caller,
 * because the shim hands RTLD_NEXT over as a tail call). */
Test(shim, rtld_next_lookups_keep_their_meaning)
{
    static run_result_t r;
    run_opts_t o = {.method = "linked", .path = "rtldnext", .chunk = "1", .max = "1"};
    run_client(&o, &r);
    cr_assert_eq(r.status, 0, "client exited %d\nstderr: %s", r.status, r.err);
    cr_expect(strstr(r.out, "next_dlsym=libvramguard-preload.so") != NULL, "%s", r.out);
}

/* ------------------------------------------------ policies on one path */

#define NOT_SUPPORTED 801 /* CUDA_ERROR_NOT_SUPPORTED */

static void run_env(const char *path, const char *chunk, const char *max, const char *budget,
                    const char *env, run_result_t *r)
{
    run_opts_t o = {.method = "linked", .path = path, .chunk = chunk, .max = max,
                    .budget = budget, .env = {env}};
    run_client(&o, r);
}

/* VRAMGUARD_MANAGED=deny: the first managed request is refused with the
 * driver's NOT_SUPPORTED, and the driver never sees it. */
Test(shim, managed_deny_refuses_with_not_supported)
{
    static run_result_t r;
    answer_t a;
    run_env("managed", CHUNK_TEXT, "4", "2GiB", "VRAMGUARD_MANAGED=deny", &r);
    if (!answer_of(&r, "deny", "managed", &a))
        return;
    cr_expect_eq(a.rc, NOT_SUPPORTED, "first failure %lld, want NOT_SUPPORTED", a.rc);
    cr_expect_eq(a.allocs, 0, "%lld managed allocations under deny", a.allocs);
    cr_expect_eq(a.peak, 0, "the driver allocated %lld bytes", a.peak);
}

/* VRAMGUARD_MANAGED=ignore: managed memory charges nothing, so eight 64 MiB
 * chunks all succeed under a 128 MiB budget. */
Test(shim, managed_ignore_charges_nothing)
{
    static run_result_t r;
    answer_t a;
    run_env("managed", CHUNK_TEXT, "8", "128MiB", "VRAMGUARD_MANAGED=ignore", &r);
    if (!answer_of(&r, "ignore", "managed", &a))
        return;
    cr_expect_eq(a.rc, 0, "refused with %lld", a.rc);
    cr_expect_eq(a.allocs, 8, "%lld of 8 managed allocations", a.allocs);
    cr_expect_eq(a.peak, (long long)(8 * CHUNK), "driver peak %lld", a.peak);
}

/* Pitch over a driver whose pitch (4096-byte aligned: 40000 -> 40960) is
 * larger than the shim's estimate (512-byte aligned: 40448). */
#define PITCH_ENV "FAKECUDA_PITCH_ALIGN=4096"
#define PITCH_REAL 40960ll
#define PITCH_ESTIMATE 40448ll

/* Charged on the real pitch: a budget of 11 estimates holds 10 real
 * pitches (charged on the estimate, 11 would fit). */
Test(shim, pitch_is_charged_on_the_real_pitch)
{
    static run_result_t r;
    char budget[32];
    answer_t a;
    snprintf(budget, sizeof budget, "%lldB", 11 * PITCH_ESTIMATE);
    run_env("pitch", "40000", "100", budget, PITCH_ENV, &r);
    if (!answer_of(&r, "pitch", "pitch", &a))
        return;
    cr_expect_eq(a.allocs, 10, "%lld pitched allocations in a budget of 10.86 real pitches",
                 a.allocs);
    cr_expect_eq(a.bytes, 10 * PITCH_REAL, "%lld bytes", a.bytes);
    cr_expect_eq(a.rc, OUT_OF_MEMORY, "first failure %lld", a.rc);
    cr_expect_leq(a.peak, 11 * PITCH_ESTIMATE, "driver peak %lld over the budget", a.peak);
}

/* The estimate fits but the real pitch does not: the allocation is undone
 * and refused with OUT_OF_MEMORY. */
Test(shim, pitch_is_refused_when_the_real_pitch_does_not_fit)
{
    static run_result_t r;
    char budget[32];
    answer_t a;
    long long limit = 10 * PITCH_REAL + PITCH_ESTIMATE + 256;
    snprintf(budget, sizeof budget, "%lldB", limit);
    run_env("pitch", "40000", "100", budget, PITCH_ENV, &r);
    if (!answer_of(&r, "pitch", "pitch", &a))
        return;
    cr_expect_eq(a.allocs, 10, "%lld pitched allocations, want 10", a.allocs);
    cr_expect_eq(a.rc, OUT_OF_MEMORY, "first failure %lld", a.rc);
    cr_expect_eq(a.live, 0, "%lld bytes left live: the refused one was not undone", a.live);
}

/* The real driver grows a stream-ordered pool in chunks (32 MiB for a
 * 1 MiB request on an H100). With 32 MiB chunks and a 48 MiB budget the
 * first 1 MiB request's chunk fits and is charged; each later one needs a
 * second chunk, which does not fit: it is freed, the pool trimmed and the
 * request refused with the driver's code, leaving the caller no pointer.
 * The driver itself refuses nothing, and nothing stays reserved. */
Test(shim, a_pool_that_grows_past_the_budget_is_trimmed_and_refused)
{
    static run_result_t r;
    answer_t a;
    run_opts_t o = {.method = "linked", .path = "async", .chunk = "1MiB", .max = "100",
                    .failures = "3", .budget = "48MiB",
                    .env = {"FAKECUDA_POOL_CHUNK=33554432"}};
    run_client(&o, &r);
    if (!answer_of(&r, "pool growth", "async", &a))
        return;
    const char *l = line_for(r.out, "async");
    cr_expect_eq(a.allocs, 1, "%lld allocations with one 32 MiB chunk in 48 MiB", a.allocs);
    cr_expect_eq(a.rc, OUT_OF_MEMORY, "first failure %lld", a.rc);
    cr_expect_eq(field(l, "failures"), 3, "%s", l);
    cr_expect_eq(field(l, "last_rc"), OUT_OF_MEMORY, "%s", l);
    cr_expect_eq(a.failed, 0, "the driver refused %lld calls", a.failed);
    cr_expect_eq(a.live, 0, "%lld bytes still live at exit", a.live);
}

/* A stream-ordered pool keeps what its frees gave back, and that stays
 * charged; a plain request that fits only once the pool is trimmed
 * succeeds, and the driver never holds more than the budget. */
Test(shim, stream_ordered_pools_are_trimmed_before_a_refusal)
{
    static run_result_t r;
    answer_t a;
    run_env("pooltrim", CHUNK_TEXT, "100", "256MiB", NULL, &r);
    if (!answer_of(&r, "pooltrim", "pooltrim", &a))
        return;
    cr_expect_eq(a.allocs, 4, "%lld stream-ordered chunks in 256 MiB", a.allocs);
    cr_expect_eq(a.rc, 0, "the plain request after the frees was refused (%lld)", a.rc);
    cr_expect_leq(a.peak, (long long)(256 * MiB), "driver peak %lld", a.peak);
    cr_expect_eq(a.live, 0, "%lld bytes live at exit", a.live);
}
