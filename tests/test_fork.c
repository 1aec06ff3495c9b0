/*
 * test_fork.c — the one fork sequence (lib/fork.c): a fork while another
 * thread holds any ranked engine lock waits for it, and the child finds
 * every lock free; a fork during devices' first uses leaves a child that
 * can use them; the lock order is checked. Every wait is bounded: a child
 * that would hang is killed by alarm(), a parent waits at most 10 s.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "vg_account.h"
#include "vg_fork.h"

#define HOLD_NS 50000000ll /* how long the other thread holds a lock: 50 ms */

/* waitpid with a deadline: the child's status, or -1 (killed) after 10 s. */
static int wait_bounded(pid_t pid)
{
    for (int i = 0; i < 1000; i++) {
        int status = 0;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return status;
        nanosleep(&(struct timespec){0, 10000000}, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

struct holder {
    const vg__fork_step_t *step;
    _Atomic int holding;  /* 1 once the lock is held */
    _Atomic int released; /* 1 just before it is released */
    _Atomic int forked;   /* 1 once fork returned in the parent */
};

static void *hold_then_release(void *p)
{
    struct holder *h = p;
    h->step->prefork();
    atomic_store(&h->holding, 1);
    nanosleep(&(struct timespec){0, HOLD_NS}, NULL);
    atomic_store(&h->released, 1);
    h->step->postfork_parent();
    /* Alive until fork has returned: a thread that ended unjoined before
     * the fork would be reported as leaked by the child under TSan. */
    while (!atomic_load(&h->forked))
        sched_yield();
    return NULL;
}

/* One fork while another thread holds the step's lock. */
static void fork_while_held(const vg__fork_step_t *step)
{
    struct holder h = {.step = step};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, hold_then_release, &h), 0);
    while (!atomic_load(&h.holding))
        sched_yield();
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        /* Only this thread exists here: a lock left held would hang. */
        alarm(2);
        step->prefork();
        step->postfork_child();
        _exit(0);
    }
    atomic_store(&h.forked, 1);
    /* prepare took the same lock, so fork returned only after the release */
    cr_expect(atomic_load(&h.released), "fork did not wait for %s",
              vg__rank_name(step->rank));
    int status = wait_bounded(pid);
    cr_expect(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "the child found %s held (status 0x%x)", vg__rank_name(step->rank), status);
    pthread_join(t, NULL);
}

Test(fork, a_fork_waits_for_each_lock_held_and_the_child_finds_it_free, .timeout = 60)
{
    size_t n = 0;
    const vg__fork_step_t *steps = vg__fork_steps(&n);
    cr_assert_eq(n, VG__RANK_END - 1, "one step per rank");
    for (size_t i = 0; i < n; i++) {
        if (!steps[i].prefork) { /* the shim's: tests/test_nvml.c forks under it */
            cr_log_info("%s: not in this program (the preload shim's)",
                        vg__rank_name(steps[i].rank));
            continue;
        }
        fork_while_held(&steps[i]);
    }
}

Test(fork, the_steps_are_in_rank_order)
{
    size_t n = 0;
    const vg__fork_step_t *steps = vg__fork_steps(&n);
    for (size_t i = 0; i < n; i++)
        cr_expect_eq(steps[i].rank, (vg__rank_t)(i + 1), "step %zu is %s", i,
                     vg__rank_name(steps[i].rank));
}

/* ------------------------------------------------ first use of devices */

#define DEVICES 16 /* the test driver's most */

/* Each device's first use, then charges on all of them until told to
 * stop (a thread alive at every fork, as in a real program). */
static void *first_uses(void *p)
{
    _Atomic int *stop = p;
    while (!atomic_load(stop)) {
        for (int d = 0; d < DEVICES; d++) {
            vg__ticket_t t = {.device = d, .kind = VG_KIND_PLAIN, .bytes = 4096,
                              .api = "test"};
            if (vg__acct_reserve(&t) == VG_OK)
                vg__budget_rollback(t.budget, t.bytes);
        }
    }
    return NULL;
}

/* Forks while another thread resolves 16 devices' budgets for the first
 * time (driver queries under the resolve lock): every child can still
 * resolve and charge any device. */
Test(fork, a_child_forked_during_first_uses_can_use_every_device, .timeout = 60)
{
    setenv("FAKECUDA_DEVICES", "16", 1);
    setenv("VRAMGUARD_BUDGET", "50%", 1); /* resolving reads each device */
    cr_assert_eq(vg__engine_init(), VG_OK, "%s", vg__engine_error());
    cr_assert_eq(vg__driver()->cuInit(0), CUDA_SUCCESS);
    _Atomic int stop = 0;
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, first_uses, &stop), 0);
    for (int i = 0; i < 16; i++) {
        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
            alarm(5);
            int ok = 1;
            for (int d = DEVICES - 1; d >= 0; d--) {
                vg__ticket_t c = {.device = d, .kind = VG_KIND_PLAIN, .bytes = 4096,
                                  .api = "child"};
                ok &= vg__acct_reserve(&c) == VG_OK;
            }
            _exit(ok ? 0 : 3);
        }
        int status = wait_bounded(pid);
        cr_expect(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "child %d: status 0x%x", i, status);
    }
    atomic_store(&stop, 1);
    pthread_join(t, NULL);
}

/* ------------------------------------------------------- order check */

#ifdef VG_LOCK_DEBUG
/* Taking a lock ranked below one held aborts, naming both. */
Test(fork, taking_locks_out_of_rank_order_aborts)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        vg__rank_enter(VG__RANK_RESOLVE);
        vg__rank_enter(VG__RANK_IMPLICIT_FIRST);
        _exit(0);
    }
    int status = wait_bounded(pid);
    cr_expect(status != -1 && WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT,
              "status 0x%x", status);
}

Test(fork, taking_locks_in_rank_order_does_not_abort)
{
    vg__rank_enter(VG__RANK_IMPLICIT_FIRST);
    vg__rank_enter(VG__RANK_RESOLVE);
    vg__rank_enter(VG__RANK_LEDGER);
    vg__rank_leave(VG__RANK_LEDGER);
    vg__rank_leave(VG__RANK_RESOLVE);
    vg__rank_leave(VG__RANK_IMPLICIT_FIRST);
    vg__rank_enter(VG__RANK_DRIVER_LOAD);
    vg__rank_leave(VG__RANK_DRIVER_LOAD);
}
#endif

/* The engine may start from inside a budget lookup (a program whose first
 * call is the public API): it then loads the driver while holding the
 * resolve lock, so the driver's load lock ranks after it. With the load
 * lock ranked first this aborted, as did `make bench`'s shared-budget
 * workers. */
Test(fork, the_first_budget_lookup_may_start_the_engine)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0)
        _exit(vg__engine_budget(0) ? 0 : 3);
    int status = wait_bounded(pid);
    cr_expect(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "status 0x%x", status);
}
