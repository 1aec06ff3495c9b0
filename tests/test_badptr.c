/*
 * test_badptr.c — pointers handed back that vramguard never handed out, seen
 * from outside: every class (fake, double free, host, interior, foreign,
 * unknown handle, NULL pointer and NULL handle) under every VRAMGUARD_ON_BAD_POINTER policy, each in
 * its own client process (tests/clients, path "badptr"), with the test
 * driver's exit report proving nothing leaked. Then vg_verify_all() and
 * VRAMGUARD_VERIFY in-process and under the shim.
 */
#include <criterion/criterion.h>

#include "clientrun.h"
#include "testutil.h"
#include "vg_account.h"
#include "vg_budget.h"

#define INVALID_VALUE 1   /* CUDA_ERROR_INVALID_VALUE */
#define INVALID_HANDLE 400 /* CUDA_ERROR_INVALID_HANDLE */
#define STATUS_ABORT (128 + SIGABRT)

/* What each class looks like: the words of its stderr line, and the code a
 * program gets under warn (the test driver's own) and under reject. A
 * foreign pointer may be real memory, so it is passed on under every
 * policy and reject gives the driver's code too. An array handle the shim
 * never saw cannot be real (every array creation is hooked): refused. */
static const struct bad_case {
    const char *cls;   /* CLIENT_BADPTR */
    const char *named; /* on the stderr line */
    int warn_rc, reject_rc;
    bool driver_called_on_reject;
    bool is_bad;       /* NULL is not */
} cases[] = {
    {"fake", "): fake (unknown to the driver: synthetic stride 0x7f8000000000", INVALID_VALUE,
     INVALID_VALUE, false, true},
    {"freed", "): freed (a double free", INVALID_VALUE, INVALID_VALUE, false, true},
    {"host", "): host (", INVALID_VALUE, INVALID_VALUE, false, true},
    {"interior", "): interior (offset 0x100", INVALID_VALUE, INVALID_VALUE, false, true},
    {"foreign", "): foreign (", INVALID_VALUE, INVALID_VALUE, true, true},
    {"handle", "): unknown handle", INVALID_HANDLE, INVALID_VALUE, false, true},
    {"null", "", 0, 0, true, false},
    {"null_handle", "", INVALID_HANDLE, INVALID_HANDLE, true, false},
};
#define NCASES (sizeof cases / sizeof cases[0])

static const char *const policies[] = {"warn", "reject", "abort"};

static void run_case(const struct bad_case *c, const char *policy, const char *log,
                     run_result_t *r)
{
    char cls[64], pol[64], audit[256];
    snprintf(cls, sizeof cls, "CLIENT_BADPTR=%s", c->cls);
    snprintf(pol, sizeof pol, "VRAMGUARD_ON_BAD_POINTER=%s", policy);
    snprintf(audit, sizeof audit, "VRAMGUARD_AUDIT=%s", log);
    run_opts_t o = {.method = "linked", .path = "badptr", .chunk = "1MiB",
                    .env = {cls, pol, audit}};
    run_client(&o, r);
}

static char *slurp(const char *path)
{
    static char buf[1 << 16];
    read_small_file(path, buf, sizeof buf);
    return buf;
}

static void expect_case(const struct bad_case *c, const char *policy)
{
    static run_result_t r;
    char log[] = "/tmp/vg-badptr-log-XXXXXX", line[64], what[96];
    int fd = mkstemp(log);
    cr_assert_geq(fd, 0);
    close(fd);
    run_case(c, policy, log, &r);
    const char *audit = slurp(log);
    snprintf(what, sizeof what, "%s under %s", c->cls, policy);
    snprintf(line, sizeof line, "badptr_%s", c->cls);
    bool aborts = !strcmp(policy, "abort") && c->is_bad;
    if (aborts) {
        cr_expect_eq(r.status, STATUS_ABORT, "%s: exited %d\n%s", what, r.status, r.err);
        cr_expect(strstr(r.err, "VRAMGUARD_ON_BAD_POINTER=abort") && strstr(r.err, "call site:"),
                  "%s: no abort report:\n%s", what, r.err);
        cr_expect_not_null(strstr(r.err, c->named), "%s: class not named:\n%s", what, r.err);
        cr_expect_not_null(strstr(audit, "\"policy\":\"abort\""), "%s: log:\n%s", what, audit);
        /* rc is what the program got: under abort, nothing. */
        const char *ev = strstr(audit, "\"op\":\"bad_ptr\"");
        const char *rc = ev ? strstr(ev, "\"rc\":") : NULL, *eol = ev ? strchr(ev, '\n') : NULL;
        cr_expect(ev && (!rc || (eol && rc > eol)), "%s: rc logged under abort:\n%s", what, audit);
        unlink(log);
        return;
    }
    const char *l = line_for(r.out, line);
    cr_expect_eq(r.status, 0, "%s: exited %d\n%s", what, r.status, r.err);
    cr_assert_not_null(l, "%s: no answer\n%s\n%s", what, r.out, r.err);
    int want = !strcmp(policy, "reject") ? c->reject_rc : c->warn_rc;
    cr_expect_eq(field(l, "rc"), want, "%s: %s", what, l);
    cr_expect_eq(field(r.report, "live_bytes"), 0, "%s: leaked: %s", what, r.report);
    if (!c->is_bad) {
        cr_expect_null(strstr(r.err, "bad pointer"), "%s: %s", what, r.err);
        cr_expect_null(strstr(audit, "\"op\":\"bad_ptr\""), "%s: %s", what, audit);
        unlink(log);
        return;
    }
    cr_expect_eq(count_of(r.err, "bad pointer:"), 1, "%s:\n%s", what, r.err);
    cr_expect_not_null(strstr(r.err, c->named), "%s: class not named:\n%s", what, r.err);
    bool called = strcmp(policy, "reject") || c->driver_called_on_reject;
    cr_expect_not_null(strstr(r.err, called ? "passed to the driver" : "the driver not called"),
                       "%s: %s", what, r.err);
    cr_expect_eq(count_of(audit, "\"op\":\"bad_ptr\""), 1, "%s: log:\n%s", what, audit);
    char pol[64], cls[64];
    snprintf(pol, sizeof pol, "\"policy\":\"%s\"", policy);
    snprintf(cls, sizeof cls, "\"class\":\"%s\"", c->cls);
    const char *ev = strstr(audit, "\"op\":\"bad_ptr\"");
    cr_expect(ev && strstr(ev, pol), "%s: log:\n%s", what, audit);
    cr_expect(ev && strstr(ev, cls), "%s: class not logged:\n%s", what, audit);
    unlink(log);
}

Test(badptr, every_class_under_warn_gets_the_drivers_code_and_leaks_nothing)
{
    for (size_t i = 0; i < NCASES; i++)
        expect_case(&cases[i], "warn");
}

Test(badptr, every_class_under_reject_is_refused_unless_it_may_be_real)
{
    for (size_t i = 0; i < NCASES; i++)
        expect_case(&cases[i], "reject");
}

Test(badptr, every_class_under_abort_reports_the_call_site_and_aborts)
{
    for (size_t i = 0; i < NCASES; i++)
        expect_case(&cases[i], policies[2]);
}

/* All classes in one process: one line each (each class's first line is
 * never rate-limited), and the driver saw every real allocation freed. */
Test(badptr, all_classes_in_one_process_are_each_named_once)
{
    static run_result_t r;
    run_opts_t o = {.method = "cudart", .path = "badptr", .chunk = "1MiB"};
    run_client(&o, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    for (size_t i = 0; i < NCASES; i++) {
        char line[64];
        snprintf(line, sizeof line, "badptr_%s", cases[i].cls);
        const char *l = line_for(r.out, line);
        cr_assert_not_null(l, "%s missing: %s", line, r.out);
        cr_expect_eq(field(l, "rc"), cases[i].warn_rc, "%s", l);
        if (cases[i].is_bad)
            cr_expect_eq(count_of(r.err, cases[i].named), 1, "%s:\n%s", cases[i].cls, r.err);
    }
    cr_expect_eq(field(r.report, "live_bytes"), 0, "%s", r.report);
}

/* A free through the driver's door of memory a vg_pool handed out (one
 * engine serves both doors): it is the pool's to free, so it is never
 * passed to the driver, even under warn, which passes on what may be real;
 * the pool's books and the driver would disagree, and vg_pool_free would
 * free it a second time. */
Test(badptr, a_pools_own_allocation_freed_with_cumemfree_is_never_passed_on)
{
    if (vg_available() != VG_OK)
        cr_skip_test("no test driver");
    vg_pool_t *p;
    vg_devptr_t big;
    cr_assert_eq(vg_pool_create(0, 256 * MiB, &p), VG_OK);
    cr_assert_eq(vg_pool_alloc(p, 64 * MiB, NULL, &big), VG_OK);
    vg__free_t f;
    cr_expect_eq(vg__acct_free_begin(&f, big, "cuMemFree_v2"), VG_ENOTFOUND,
                 "handed to the driver's free");
    cr_expect_eq(f.bad.cls, VG_PTR_LIVE);
    cr_expect_eq(vg_pool_free(p, big), VG_OK, "the pool lost it");
    vg_pool_destroy(p, NULL);
}

/* --------------------------------------------------- verification */

Test(badptr, verify_all_confirms_real_allocations_and_names_fake_ones)
{
    if (vg_available() != VG_OK)
        cr_skip_test("no test driver");
    vg_pool_t *p;
    vg_devptr_t a, b;
    cr_assert_eq(vg_pool_create(0, 64 * MiB, &p), VG_OK);
    cr_assert_eq(vg_pool_alloc(p, MiB, NULL, &a), VG_OK);
    cr_assert_eq(vg_pool_alloc(p, 2 * MiB, NULL, &b), VG_OK);
    vg_verify_report_t rep;
    cr_expect_eq(vg_verify_all(&rep), VG_OK);
    cr_expect_eq(rep.checked, 2);
    cr_expect_eq(rep.bad, 0);
    vg__alloc_t fake = {.ptr = 0x7f8000000000ull, .base = 0x7f8000000000ull, .size = 4096,
                        .device = 0};
    cr_assert_eq(vg__ledger_insert(&fake), VG_OK);
    cr_expect_eq(vg_verify_all(&rep), VG_EBADPTR);
    cr_expect_eq(rep.checked, 3);
    cr_expect_eq(rep.bad, 1);
    cr_expect_eq(rep.shown, 1);
    cr_expect_eq(rep.ptrs[0], 0x7f8000000000ull);
    cr_assert_eq(vg__ledger_remove(fake.ptr, VG__ANY_OWNER, NULL), VG_OK);
    cr_expect_eq(vg_verify_all(&rep), VG_OK);
    cr_expect_eq(vg_pool_free(p, a), VG_OK);
    cr_expect_eq(vg_pool_free(p, b), VG_OK);
    cr_expect_eq(vg_pool_destroy(p, NULL), VG_OK);
    cr_expect_eq(vg_verify_all(NULL), VG_EINVAL);
}

/* VRAMGUARD_VERIFY=1 under the shim: the test driver's allocations are
 * real, so nothing is reported and every path still works. */
Test(badptr, verify_setting_passes_real_allocations_quietly)
{
    static run_result_t r;
    static const char *const paths[] = {"plain", "pitch", "managed", "async", "pool", "vmm",
                                        "array", "graph"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        run_opts_t o = {.method = "linked", .path = paths[i], .chunk = "4MiB", .max = "4",
                        .env = {"VRAMGUARD_VERIFY=1"}};
        run_client(&o, &r);
        const char *l = line_for(r.out, paths[i]);
        cr_assert_not_null(l, "%s: %s %s", paths[i], r.out, r.err);
        cr_expect_eq(field(l, "allocs"), 4, "%s: %s", paths[i], l);
        cr_expect_null(strstr(r.err, "does not confirm"), "%s: %s", paths[i], r.err);
        cr_expect_eq(field(r.report, "live_bytes"), 0, "%s: %s", paths[i], r.report);
    }
}
