/*
 * test_shared.c — one budget for many processes (lib/shared.c): processes
 * racing for it, giving their share back when they exit or are killed, a
 * live change of the limit, waiting in line; and the region lock under
 * faults (lib/shared_lock.c): a holder that is dead, stale or stopped.
 *
 * Process tests start tests/clients/client_shared with LD_PRELOAD set for
 * that child only and read the region afterwards: its device `peak` is the
 * high-water mark of everything every process reserved, so "peak <= budget"
 * proves no overshoot across processes (each child's own test driver only
 * sees its own share). The lock tests fork the test binary itself, which
 * links the engine statically and so may define the pause point.
 *
 * Slots (test_shared_slots.c) and the region's file (test_shared_region.c)
 * are tested beside it, with the same helpers (sharedrun.h). Every test
 * uses its own region name (pid-based) and removes its files.
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sharedrun.h"

/* ------------------------------------------------------ process tests */

Test(shared, racing_processes_never_overshoot_the_budget)
{
    name_region("race");
    enum { PROCS = 16 };
    const uint64_t chunk = 96 * MiB; /* 2 GiB is not a multiple: an overshoot shows */
    char cs[32];
    snprintf(cs, sizeof cs, "%llu", (unsigned long long)chunk);
    const char *args[] = {"race", "4", "300", cs, NULL};
    const char *env[] = {BUDGET_ENV, NULL};
    child_t c[PROCS];
    for (int i = 0; i < PROCS; i++)
        child_start(&c[i], args, env);
    long ok = 0, refused = 0;
    for (int i = 0; i < PROCS; i++) {
        char err[4096];
        int st = child_finish(&c[i], err, sizeof err);
        cr_assert_eq(st, 0, "child %d exited %d: %s", i, st, err);
        cr_expect_eq(value_of(c[i].out_buf, "other"), 0, "child %d: %s", i, c[i].out_buf);
        ok += value_of(c[i].out_buf, "ok");
        refused += value_of(c[i].out_buf, "refused");
    }
    vg__shm_t *r = snap();
    const vg__shm_device_t *d = dev0(r);
    cr_expect_leq(d->peak, 2 * GiB, "peak %llu over the budget", (unsigned long long)d->peak);
    cr_expect_gt(d->peak, 2 * GiB - chunk, "the budget was never filled (peak %llu)",
                 (unsigned long long)d->peak);
    cr_expect_eq(d->used, 0, "%llu bytes still charged after every process exited",
                 (unsigned long long)d->used);
    cr_expect_gt(ok, 0);
    cr_expect_gt(refused, 0, "no contention: the test proves nothing");
    cr_expect_eq(d->refusals, (uint64_t)refused);
    free(r);
    drop_region();
}

Test(shared, a_normal_exit_releases_its_share_at_once)
{
    name_region("exit");
    const char *env[] = {BUDGET_ENV, NULL};
    child_t h;
    hold_start(&h, 1536 * MiB, env);
    vg__shm_t *r = snap();
    cr_expect_geq(dev0(r)->used, 1536 * MiB);
    free(r);
    cr_expect_eq(try_alloc(1 * GiB, env, NULL, 0), OOM, "the holder's share was not charged");
    cr_assert_eq(child_finish(&h, NULL, 0), 0);
    r = snap();
    cr_expect_eq(dev0(r)->used, 0, "exit left %llu bytes", (unsigned long long)dev0(r)->used);
    for (int s = 0; s < VG__SHM_SLOTS; s++)
        cr_expect_eq(r->slot[s].pid, 0, "slot %d still taken by %d", s, r->slot[s].pid);
    free(r);
    cr_expect_eq(try_alloc(2 * GiB, env, NULL, 0), 0);
    drop_region();
}

Test(shared, a_sigkilled_holder_loses_its_share_by_the_next_allocation)
{
    name_region("kill");
    const char *env[] = {BUDGET_ENV, NULL};
    for (int round = 0; round < 3; round++) {
        child_t h;
        hold_start(&h, 1536 * MiB, env);
        kill(h.pid, SIGKILL);
        cr_assert_eq(child_finish(&h, NULL, 0), 128 + SIGKILL);
        char out[256];
        cr_expect_eq(try_alloc(2 * GiB, env, out, sizeof out), 0, "round %d: %s", round, out);
        cr_expect_lt(value_of(out, "ms"), 1000, "took %lld ms", value_of(out, "ms"));
    }
    drop_region();
}

/* The pause point: a forked child of this binary stops here, holding the
 * region lock, until it is killed. */
static int pause_fd = -1;

void vg__shared_test_pause(void)
{
    if (pause_fd < 0)
        return;
    char c = 'p';
    (void)!write(pause_fd, &c, 1);
    for (;;)
        pause();
}

/* Forks a child that reserves `bytes` through the statically linked engine
 * and is SIGKILLed, either inside the critical section (paused) or at a
 * random moment of a reserve/release loop. */
static void kill_child(bool in_lock, unsigned delay_us)
{
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        close(p[0]);
        if (vg_available() != VG_OK)
            _exit(3);
        vg__budget_t *b = vg__engine_budget(0);
        if (!b || !b->shared)
            _exit(4);
        if (in_lock)
            pause_fd = p[1];
        else
            (void)!write(p[1], "r", 1);
        for (;;) {
            if (vg__budget_reserve(b, 512 * MiB) == VG_OK) {
                vg__budget_commit(b, 512 * MiB);
                if (vg__budget_reserve(b, 1 * GiB) == VG_OK)
                    vg__budget_release(b, 1 * GiB);
                vg__budget_release(b, 512 * MiB);
            }
        }
    }
    close(p[1]);
    char c;
    cr_assert_eq(read(p[0], &c, 1), 1, "the child never started");
    close(p[0]);
    usleep(delay_us);
    kill(pid, SIGKILL);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFSIGNALED(st), "child exited %d", WEXITSTATUS(st));
}

/* Reserves n, retrying for up to 200 ms: refusals look for the dead at most
 * once every 10 ms region-wide, so a share freed by a death a moment ago may
 * take that long to come back. */
static int reserve_soon(vg__budget_t *b, uint64_t n)
{
    int rc = VG_ENOMEM;
    for (int i = 0; i < 200 && (rc = vg__budget_reserve(b, n)) != VG_OK; i++)
        usleep(1000);
    return rc;
}

Test(shared, sigkill_inside_the_critical_section_and_at_random_points)
{
    name_region("crit");
    setenv("VRAMGUARD_SHARED", region_name, 1);
    setenv("VRAMGUARD_BUDGET", "2GiB", 1);
    kill_child(true, 0);
    /* The lock's holder is dead: the next taker repairs the region. */
    uint64_t t0 = vg__mono_ns();
    cr_assert_eq(vg_available(), VG_OK);
    vg__budget_t *b = vg__engine_budget(0);
    cr_assert_not_null(b->shared, "not attached to the shared region");
    cr_expect_eq(vg__budget_reserve(b, 2 * GiB), VG_OK, "the dead holder's share is still charged");
    cr_expect_lt(vg__mono_ns() - t0, 1000000000ull);
    vg__budget_release(b, 2 * GiB);
    uint64_t seed = (uint64_t)getpid();
    for (int round = 0; round < 12; round++) {
        kill_child(round % 3 == 0, (unsigned)(test_rand(&seed) % 3000));
        cr_expect_eq(reserve_soon(b, 2 * GiB), VG_OK, "round %d: share not returned", round);
        vg__budget_release(b, 2 * GiB);
    }
    vg__shm_t *r = snap();
    cr_expect_leq(dev0(r)->peak, 2 * GiB);
    cr_expect_eq(dev0(r)->used, 0);
    free(r);
    drop_region();
}

Test(shared, a_live_budget_change_and_a_shrink_below_use)
{
    name_region("live");
    const char *env[] = {BUDGET_ENV, NULL};
    const char *none[] = {NULL};
    child_t h;
    hold_start(&h, 1 * GiB, env);
    vg__shm_t *r = NULL;
    char err[512];
    cr_assert_eq(vg__shm_open(region_file, VG__SHM_ATTACH, false, &r, err, sizeof err), VG_OK);
    cr_assert_eq(vg__shm_set_limit(r, -1, 512 * MiB), VG_OK);
    vg__shm_t *s = snap();
    cr_expect_eq(dev0(s)->limit, 512 * MiB);
    cr_expect_eq(dev0(s)->used, 1 * GiB, "a shrink must not touch live memory");
    cr_expect_eq(dev0(s)->level, VG_PRESSURE_CRITICAL);
    free(s);
    cr_expect_eq(try_alloc(1 * MiB, none, NULL, 0), OOM, "allowed over a shrunk budget");
    cr_assert_eq(vg__shm_set_limit(r, -1, 4 * GiB), VG_OK);
    cr_expect_eq(try_alloc(2 * GiB, none, NULL, 0), 0, "the raised budget is not in effect");
    /* A limit the body check would refuse is refused here, not stored. */
    cr_expect_eq(vg__shm_set_limit(r, -1, VG__SHM_LIMIT_MAX), VG_EINVAL);
    cr_expect_eq(try_alloc(2 * GiB, none, NULL, 0), 0, "an absurd limit bricked the region");
    vg__shm_close(r);
    cr_assert_eq(child_finish(&h, NULL, 0), 0);
    drop_region();
}

Test(shared, a_process_budget_only_tightens_the_shared_limit)
{
    name_region("mismatch");
    const char *two[] = {BUDGET_ENV, NULL};
    const char *one[] = {"VRAMGUARD_BUDGET=1GiB", NULL};
    const char *four[] = {"VRAMGUARD_BUDGET=4GiB", NULL};
    const char *none[] = {NULL};
    cr_expect_eq(try_alloc(64 * MiB, two, NULL, 0), 0);
    vg__shm_t *r = snap();
    cr_expect_eq(dev0(r)->limit, 2 * GiB);
    free(r);
    char b[32];
    snprintf(b, sizeof b, "%llu", (unsigned long long)(1536 * MiB));
    const char *args[] = {"try", b, NULL};
    child_t c;
    child_start(&c, args, one);
    char err[4096];
    cr_assert_eq(child_finish(&c, err, sizeof err), 0);
    cr_expect_eq(value_of(c.out_buf, "rc"), OOM, "1 GiB budget let 1.5 GiB through");
    cr_expect_not_null(strstr(err, "limit changed from 2.00 GiB to 1.00 GiB"), "stderr: %s", err);
    /* A larger own budget does not raise it: the tree's limit holds. */
    child_start(&c, args, four);
    cr_assert_eq(child_finish(&c, err, sizeof err), 0);
    cr_expect_eq(value_of(c.out_buf, "rc"), OOM, "a 4 GiB process raised the shared 1 GiB");
    cr_expect_not_null(strstr(err, "which stays 1.00 GiB (budgets only tighten)"), "stderr: %s",
                       err);
    r = snap();
    cr_expect_eq(dev0(r)->limit, 1 * GiB);
    free(r);
    /* A process without a budget uses the region's. */
    cr_expect_eq(try_alloc(1536 * MiB, none, NULL, 0), OOM);
    cr_expect_eq(try_alloc(512 * MiB, none, NULL, 0), 0);
    drop_region();
}

Test(shared, waiting_is_first_come_first_served_and_times_out)
{
    name_region("wait");
    const char *env[] = {BUDGET_ENV, NULL};
    const char *w300[] = {BUDGET_ENV, "VRAMGUARD_WAIT_MS=300", NULL};
    child_t h;
    hold_start(&h, 2 * GiB, env);
    char out[256];
    cr_expect_eq(try_alloc(1 * GiB, w300, out, sizeof out), OOM, "%s", out);
    cr_expect_geq(value_of(out, "ms"), 290, "gave up early: %s", out);
    cr_expect_lt(value_of(out, "ms"), 3000, "waited far too long: %s", out);

    /* Two waiters for the whole budget: the first in line gets it first. */
    const char *wa[] = {BUDGET_ENV, "VRAMGUARD_WAIT_MS=20000", "HOLD_MS=300", NULL};
    char b[32];
    snprintf(b, sizeof b, "%llu", (unsigned long long)(2 * GiB));
    const char *args[] = {"try", b, NULL};
    child_t first, second;
    child_start(&first, args, wa);
    for (int i = 0; i < 2000; i++) { /* until it stands in line */
        vg__shm_t *r = snap();
        int n = 0;
        for (int w = 0; w < VG__SHM_WAITERS; w++)
            n += r->h.waiters[w].pid == first.pid;
        free(r);
        if (n)
            break;
        usleep(5000);
    }
    child_start(&second, args, wa);
    usleep(200000);
    cr_assert_eq(child_finish(&h, NULL, 0), 0); /* frees the budget */
    char e1[4096], e2[4096];
    cr_assert_eq(child_finish(&first, e1, sizeof e1), 0);
    cr_assert_eq(child_finish(&second, e2, sizeof e2), 0);
    cr_expect_eq(value_of(first.out_buf, "rc"), 0, "first: %s %s", first.out_buf, e1);
    cr_expect_eq(value_of(second.out_buf, "rc"), 0, "second: %s %s", second.out_buf, e2);
    cr_expect_lt(value_of(first.out_buf, "at"), value_of(second.out_buf, "at"),
                 "served out of order: first %s second %s", first.out_buf, second.out_buf);
    drop_region();
}

/* ---------------------------------------------- the lock under faults */

/* A pid that was alive a moment ago and is now gone. */
static pid_t dead_pid(void)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0)
        _exit(0);
    waitpid(pid, NULL, 0);
    return pid;
}

static vg__shm_t *forged;
static int lock_forged(void)
{
    if (vg__shm_lock(forged) != VG_OK)
        return 1;
    vg__shm_unlock(forged);
    return 0;
}

Test(shared, a_stale_owner_in_the_lock_word_is_recovered_not_waited_for)
{
    name_region("stale");
    forged = open_region();
    unsigned *word = (unsigned *)&forged->h.lock.m.__data.__lock;
    /* A dead thread's id, as a crash outside the robust list or a hostile
     * neighbour leaves it; then with the waiters bit; then no owner at all. */
    const unsigned forms[] = {(unsigned)dead_pid(), 0x80000000u | (unsigned)dead_pid(),
                              0x80000000u};
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        *word = forms[i];
        uint64_t t0 = vg__mono_ns();
        cr_expect_eq(bounded(lock_forged, 5000), 0, "form %zu: no lock", i);
        cr_expect_lt(vg__mono_ns() - t0, 1000000000ull, "form %zu: recovery took over 1 s", i);
        cr_expect_eq(lock_forged(), 0);
    }
    vg__shm_close(forged);
    drop_region();
}

/* Forks a child of this binary that takes the region lock through the
 * engine and stays inside it (the pause point); returns its pid. */
static pid_t holder_in_lock(void)
{
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        close(p[0]);
        if (vg_available() != VG_OK)
            _exit(3);
        vg__budget_t *b = vg__engine_budget(0);
        if (!b || !b->shared)
            _exit(4);
        pause_fd = p[1];
        vg__budget_reserve(b, 1 * MiB);
        _exit(5);
    }
    close(p[1]);
    char c;
    cr_assert_eq(read(p[0], &c, 1), 1, "the holder never took the lock");
    close(p[0]);
    return pid;
}

/* The holder dies while another process waits for the lock: the wait ends
 * with the lock (EOWNERDEAD) and the region repaired. Under TSan this path
 * once ended the waiting process (an annotation without its pair). */
Test(shared, a_holder_that_dies_while_another_waits_hands_the_lock_over, .timeout = 30)
{
    name_region("diewait");
    vg__shm_t *r = NULL;
    char err[512];
    cr_assert_eq(vg__shm_open(region_file, VG__SHM_CREATE, false, &r, err, sizeof err), VG_OK,
                 "%s", err);
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        close(p[0]);
        if (vg__shm_lock(r) != VG_OK)
            _exit(3);
        (void)!write(p[1], "L", 1);
        struct timespec hold = {0, 200 * 1000 * 1000};
        nanosleep(&hold, NULL);
        _exit(0); /* dies holding the lock */
    }
    close(p[1]);
    char c;
    cr_assert_eq(read(p[0], &c, 1), 1, "the holder never took the lock");
    close(p[0]);
    cr_expect_eq(vg__shm_lock(r), VG_OK, "the waiter did not get the dead holder's lock");
    vg__shm_unlock(r);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0, "holder status %d", status);
    cr_expect_eq(vg__shm_lock(r), VG_OK, "the lock is usable again");
    vg__shm_unlock(r);
    vg__shm_close(r);
    drop_region();
}

Test(shared, a_stopped_holder_fails_others_closed_and_the_cli_says_stuck)
{
    name_region("stopped");
    setenv("VRAMGUARD_SHARED", region_name, 1);
    setenv("VRAMGUARD_BUDGET", "2GiB", 1);
    pid_t holder = holder_in_lock();
    cr_assert_eq(kill(holder, SIGSTOP), 0);
    const char *env[] = {BUDGET_ENV, NULL};
    char b[32];
    snprintf(b, sizeof b, "%llu", (unsigned long long)(1 * MiB));
    const char *args[] = {"try", b, NULL};
    child_t c;
    uint64_t t0 = vg__mono_ns();
    child_start(&c, args, env);
    char err[4096];
    cr_assert_eq(child_finish(&c, err, sizeof err), 0);
    cr_expect_lt(vg__mono_ns() - t0, 10000000000ull, "took over 10 s");
    cr_expect_eq(value_of(c.out_buf, "rc"), OOM, "allocated past a stuck region: %s", c.out_buf);
    cr_expect_not_null(strstr(err, region_file), "the line does not name the region: %s", err);
    cr_expect_not_null(strstr(err, "stuck"), "stderr: %s", err);

    cli_result_t *cr = calloc(1, sizeof *cr);
    char **cenv = env_make(NULL, NULL);
    cli_result_of(cr, cenv, ARGS("status", region_name));
    env_free(cenv);
    cr_expect_neq(cr->status, 0);
    cr_expect_not_null(strstr(cr->err, "stuck"), "status said: %s%s", cr->out, cr->err);
    free(cr);

    /* The holder dies: the next taker repairs the region and goes on. */
    kill(holder, SIGKILL);
    waitpid(holder, NULL, 0);
    cr_expect_eq(try_alloc(2 * GiB, env, NULL, 0), 0);
    drop_region();
}

static vg__budget_t *parent_budget;

/* A forked child's first live-count update claims its slot under the lock:
 * while another process holds the lock, it waits (and gives up), it does
 * not write the region behind the holder's back. */
static int child_counts_while_locked(void)
{
    vg__shared_live(parent_budget, 1);
    const vg__shm_t *r = parent_budget->shared;
    for (int s = 0; s < VG__SHM_SLOTS; s++)
        if (__atomic_load_n(&r->slot[s].pid, __ATOMIC_RELAXED) == (int32_t)getpid())
            return 3; /* claimed while another process held the lock */
    return 0;
}

Test(shared, a_first_live_count_claims_its_slot_under_the_lock)
{
    name_region("live1");
    setenv("VRAMGUARD_SHARED", region_name, 1);
    setenv("VRAMGUARD_BUDGET", "2GiB", 1);
    cr_assert_eq(vg_available(), VG_OK);
    parent_budget = vg__engine_budget(0);
    cr_assert_not_null(parent_budget->shared);
    pid_t holder = holder_in_lock();
    cr_expect_eq(bounded(child_counts_while_locked, 5000), 0);
    kill(holder, SIGKILL);
    waitpid(holder, NULL, 0);
    drop_region();
}
