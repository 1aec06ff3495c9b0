/*
 * test_credit.c — per-thread budget credit (lib/credit.c), on a budget of
 * the test's own bound to a device slot the engine never resolves here
 * (63): credit held idle by blocked threads never causes a refusal, a
 * thread that exits gives its credit back, a forked child gets back the
 * credit of the parent's other threads, two requests refused at once both
 * get the credit one of them pulled back, a slice on its way into a cell
 * is waited for and pulled back (by a reclaim and by a fork), and 16 threads spending credit
 * never take real use past the limit. The shim's end-to-end proof (the
 * test driver's peak) is in test_truth.c.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "vg_account.h"

#define DEV 63
#define THREADS 16
#define KiB 1024ull
#define MiB (1024ull * KiB)

static vg__budget_t budget;

static void setup_budget(uint64_t limit)
{
    vg__budget_init(&budget, limit, NULL);
    vg__credit_enable(&budget, DEV);
}

static uint64_t raw_used(void)
{
    return atomic_load_explicit(&budget.used, memory_order_relaxed);
}

/* What the shim does for one small allocation: credit, a slice, the budget. */
static bool charge(uint64_t n)
{
    return vg__credit_take(DEV, n) || vg__credit_refill(&budget, DEV, n) ||
           vg__budget_reserve(&budget, n) == VG_OK;
}

static void uncharge(uint64_t n)
{
    if (!vg__credit_give(DEV, n))
        vg__budget_release(&budget, n);
}

/* ---------------------------------------------- idle credit, blocked */

static pthread_barrier_t held, go;

/* Takes a slice with a 4 KiB allocation, frees it (the thread now holds
 * a whole slice unspent) and blocks until the main thread is done. */
static void *hold_idle(void *arg)
{
    (void)arg;
    cr_assert(charge(4 * KiB));
    uncharge(4 * KiB);
    pthread_barrier_wait(&held);
    pthread_barrier_wait(&go);
    return NULL;
}

Test(credit, idle_credit_of_blocked_threads_never_causes_a_refusal)
{
    const uint64_t limit = 256 * MiB; /* slice 256 KiB */
    setup_budget(limit);
    pthread_t t[THREADS];
    pthread_barrier_init(&held, NULL, THREADS + 1);
    pthread_barrier_init(&go, NULL, THREADS + 1);
    for (int i = 0; i < THREADS; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, hold_idle, NULL), 0);
    pthread_barrier_wait(&held);
    cr_expect_eq(raw_used(), THREADS * (limit / 1024), "16 slices held idle");
    cr_expect_eq(vg__budget_used(&budget), 0, "idle credit is not use");
    /* Exactly the whole budget: fits once the idle credit is pulled back. */
    cr_expect_eq(vg__budget_reserve(&budget, limit), VG_OK);
    cr_expect_eq(vg__budget_reserve(&budget, 1), VG_ENOMEM, "now it is really full");
    cr_expect_eq(atomic_load_explicit(&budget.refusals, memory_order_relaxed), 1);
    pthread_barrier_wait(&go);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    vg__budget_release(&budget, limit);
    cr_expect_eq(raw_used(), 0);
}

/* ---------------------------------------------- two refusals at once */

static _Atomic int busy_held, busy_done;

/* Holds a whole slice unspent, then stays inside an owner's operation (as
 * a thread preempted there would), so a reclaimer has to wait for it. */
static void *hold_busy(void *arg)
{
    (void)arg;
    cr_assert(charge(4 * KiB));
    uncharge(4 * KiB);
    cr_assert(vg__credit_enter(vg__me.credit));
    atomic_store(&busy_held, 1);
    while (!atomic_load(&busy_done))
        sched_yield();
    vg__credit_leave(vg__me.credit);
    return NULL;
}

static void *reserve_bytes(void *arg)
{
    return (void *)(intptr_t)vg__budget_reserve(&budget, (uint64_t)(uintptr_t)arg);
}

/* The budget is full but for one thread's idle slice, and two requests of
 * half a slice each are refused at once: the first one's reclaim pulls the
 * slice back, the second one's finds nothing left to pull. There is room
 * for both, so neither may be refused. */
Test(credit, two_requests_refused_at_once_both_get_the_credit_pulled_back, .timeout = 30)
{
    const uint64_t limit = 256 * MiB, slice = limit / 1024;
    setup_budget(limit);
    pthread_t h, a, b;
    cr_assert_eq(pthread_create(&h, NULL, hold_busy, NULL), 0);
    while (!atomic_load(&busy_held))
        sched_yield();
    cr_assert_eq(raw_used(), slice, "the holder's slice, unspent");
    cr_assert_eq(vg__budget_reserve(&budget, limit - slice), VG_OK);
    /* a: refused, reclaims, and waits for the holder with the reclaim lock. */
    cr_assert_eq(pthread_create(&a, NULL, reserve_bytes, (void *)(uintptr_t)(slice / 2)), 0);
    while (!atomic_load(&vg__hot.credit_stop))
        sched_yield();
    /* b: refused too while the slice is still in `used`; its reclaim waits
     * for a's. */
    cr_assert_eq(pthread_create(&b, NULL, reserve_bytes, (void *)(uintptr_t)(slice / 2)), 0);
    nanosleep(&(struct timespec){0, 200000000}, NULL);
    atomic_store(&busy_done, 1);
    void *ra, *rb;
    pthread_join(a, &ra);
    pthread_join(b, &rb);
    pthread_join(h, NULL);
    cr_expect_eq((int)(intptr_t)ra, VG_OK);
    cr_expect_eq((int)(intptr_t)rb, VG_OK, "refused with half the idle slice free");
    cr_expect_eq(atomic_load_explicit(&budget.refusals, memory_order_relaxed), 0);
    cr_expect_eq(raw_used(), limit);
}

/* ---------------------------------------------- a slice on its way */

static _Atomic int pause_armed, pause_reached, pause_over;

/* credit.c's pause point: the armed thread stops inside its refill, its
 * slice charged and not yet in its cell, until the test lets it go. */
void vg__credit_test_pause(void)
{
    if (!atomic_exchange(&pause_armed, 0))
        return;
    atomic_store(&pause_reached, 1);
    while (!atomic_load(&pause_over))
        sched_yield();
}

static void *refill_with_a_pause(void *arg)
{
    (void)arg;
    atomic_store(&pause_armed, 1);
    cr_assert(charge(4 * KiB));
    uncharge(4 * KiB);
    return NULL;
}

/* The same, keeping what it charged: 4 KiB stay spent. */
static void *refill_with_a_pause_and_keep(void *arg)
{
    (void)arg;
    atomic_store(&pause_armed, 1);
    cr_assert(charge(4 * KiB));
    return NULL;
}

static void *let_go_later(void *arg)
{
    (void)arg;
    nanosleep(&(struct timespec){0, 200000000}, NULL);
    atomic_store(&pause_over, 1);
    return NULL;
}

/* The budget is full but for a slice on its way from the budget into a
 * thread's cell: a request of half a slice waits for it to arrive and
 * pulls it back, and is not refused for credit that no cell held yet. */
Test(credit, a_slice_on_its_way_into_a_cell_is_pulled_back_before_a_refusal, .timeout = 30)
{
    const uint64_t limit = 256 * MiB, slice = limit / 1024;
    setup_budget(limit);
    pthread_t r, l;
    cr_assert_eq(pthread_create(&r, NULL, refill_with_a_pause, NULL), 0);
    while (!atomic_load(&pause_reached))
        sched_yield();
    cr_assert_eq(raw_used(), slice, "the slice is charged, in no cell yet");
    cr_assert_eq(vg__budget_reserve(&budget, limit - slice), VG_OK);
    cr_assert_eq(pthread_create(&l, NULL, let_go_later, NULL), 0);
    cr_expect_eq(vg__budget_reserve(&budget, slice / 2), VG_OK,
                 "refused while a slice was on its way into a cell");
    pthread_join(l, NULL);
    pthread_join(r, NULL);
    cr_expect_eq(atomic_load_explicit(&budget.refusals, memory_order_relaxed), 0);
}

/* A fork while a thread is inside its refill, its slice charged and not
 * yet in its cell, waits for the refill to end (fork stops the owners as a
 * reclaim does): the child then gives that thread's cell back and keeps
 * only what the thread spent, not a slice stranded in `used` for good. */
Test(credit, a_fork_waits_for_a_refill_so_the_child_strands_no_slice, .timeout = 30)
{
    const uint64_t limit = 256 * MiB;
    setup_budget(limit);
    pthread_t r, l;
    cr_assert_eq(pthread_create(&r, NULL, refill_with_a_pause_and_keep, NULL), 0);
    while (!atomic_load(&pause_reached))
        sched_yield();
    cr_assert_eq(pthread_create(&l, NULL, let_go_later, NULL), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0)
        _exit(raw_used() == 4 * KiB ? 0 : 1); /* the 4 KiB spent, no idle credit */
    int st = 0;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child kept credit nobody held");
    pthread_join(l, NULL);
    pthread_join(r, NULL);
}

/* ---------------------------------------------- exit */

static void *take_and_exit(void *arg)
{
    (void)arg;
    cr_assert(charge(64 * KiB));
    uncharge(64 * KiB);
    return NULL;
}

Test(credit, a_thread_that_exits_gives_its_credit_back)
{
    setup_budget(1ull << 30);
    for (int round = 0; round < 3; round++) { /* records are reused */
        pthread_t t[THREADS];
        for (int i = 0; i < THREADS; i++)
            cr_assert_eq(pthread_create(&t[i], NULL, take_and_exit, NULL), 0);
        for (int i = 0; i < THREADS; i++)
            pthread_join(t[i], NULL);
        cr_expect_eq(raw_used(), 0, "round %d: %llu bytes stranded", round,
                     (unsigned long long)raw_used());
        cr_expect_eq(vg__credit_idle(&budget), 0);
    }
}

/* ---------------------------------------------- fork */

Test(credit, a_forked_child_gets_back_the_other_threads_credit)
{
    const uint64_t limit = 256 * MiB;
    setup_budget(limit);
    pthread_t t[THREADS];
    pthread_barrier_init(&held, NULL, THREADS + 1);
    pthread_barrier_init(&go, NULL, THREADS + 1);
    for (int i = 0; i < THREADS; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, hold_idle, NULL), 0);
    pthread_barrier_wait(&held);
    cr_assert(charge(8 * KiB)); /* the forking thread holds credit too */
    uint64_t mine = atomic_load_explicit(&vg__me.credit->cell[DEV], memory_order_relaxed);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        /* Real use 8 KiB plus this thread's own unspent credit; the 16
         * slices of the threads that did not come along are back. */
        bool ok = raw_used() == 8 * KiB + mine && vg__credit_idle(&budget) == mine &&
                  vg__budget_reserve(&budget, limit - 8 * KiB) == VG_OK;
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child found stranded credit");
    pthread_barrier_wait(&go);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    uncharge(8 * KiB);
}

/* ---------------------------------------------- exactness */

static _Atomic uint64_t real, real_peak;

static uint64_t next_rand(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

/* A block the driver would free: out of the real count, then uncharged
 * (0: no block). */
static void give_back(uint64_t *n)
{
    if (!*n)
        return;
    atomic_fetch_sub_explicit(&real, *n, memory_order_relaxed);
    uncharge(*n);
    *n = 0;
}

/* Up to 8 live blocks, half of 1 B..4 KiB (within a slice), half of
 * 1 B..2 MiB, charged and freed at random; real use is counted as the
 * driver would, after a charge and before an uncharge. One thread alone
 * can fill the 4 MiB budget, so refusals come whatever the scheduling. */
static void *churn(void *arg)
{
    uint64_t seed = (uint64_t)(uintptr_t)arg * 0x9e3779b97f4a7c15ull + 1;
    uint64_t live[8] = {0};
    pthread_barrier_wait(&held);
    for (int k = 0; k < 20000; k++) {
        int i = (int)(next_rand(&seed) % 8);
        if (live[i]) {
            give_back(&live[i]);
            continue;
        }
        uint64_t n = 1 + next_rand(&seed) % (next_rand(&seed) & 1 ? 4 * KiB : 2 * MiB);
        if (!charge(n))
            continue;
        uint64_t now = atomic_fetch_add_explicit(&real, n, memory_order_relaxed) + n;
        uint64_t peak = atomic_load_explicit(&real_peak, memory_order_relaxed);
        while (now > peak && !atomic_compare_exchange_weak_explicit(
                                 &real_peak, &peak, now, memory_order_relaxed,
                                 memory_order_relaxed))
            ;
        live[i] = n;
    }
    for (int i = 0; i < 8; i++)
        give_back(&live[i]);
    return NULL;
}

Test(credit, sixteen_threads_never_hold_more_than_the_limit)
{
    const uint64_t limit = 4 * MiB; /* slice 4 KiB */
    setup_budget(limit);
    pthread_t t[THREADS];
    pthread_barrier_init(&held, NULL, THREADS);
    for (int i = 0; i < THREADS; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, churn, (void *)(uintptr_t)(i + 1)), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    cr_expect_leq(atomic_load_explicit(&real_peak, memory_order_relaxed), limit);
    cr_expect_gt(atomic_load_explicit(&budget.refusals, memory_order_relaxed), 0,
                 "the budget was never full: the test proves nothing");
    cr_expect_eq(raw_used(), 0, "every byte came back (threads exited)");
}

/* ---------------------------------------------- reclaims racing owners */

/* Small charges and frees that stay within credit, so that almost every
 * one is an owner's operation on its cell, while the main thread keeps
 * pulling every cell back. */
static void *spend_and_give(void *arg)
{
    uint64_t seed = (uint64_t)(uintptr_t)arg * 0x9e3779b97f4a7c15ull + 7;
    uint64_t live[4] = {0};
    for (int k = 0; k < 200000; k++) {
        int i = (int)(next_rand(&seed) % 4);
        if (live[i]) {
            give_back(&live[i]);
        } else {
            uint64_t n = 1 + next_rand(&seed) % (4 * KiB);
            cr_assert(charge(n), "refused with the budget far from full");
            atomic_fetch_add_explicit(&real, n, memory_order_relaxed);
            live[i] = n;
        }
    }
    for (int i = 0; i < 4; i++)
        give_back(&live[i]);
    return NULL;
}

/* A reclaimer and an owner never both write a cell: a byte lost would
 * leave `used` above zero at the end, a byte given back twice would take
 * it below zero (it wraps) on the way or at the end. */
Test(credit, reclaims_racing_owners_neither_lose_nor_double_a_byte)
{
    const uint64_t limit = 1024 * MiB; /* slice 1 MiB: no refusal */
    setup_budget(limit);
    pthread_t t[8];
    for (int i = 0; i < 8; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, spend_and_give, (void *)(uintptr_t)(i + 1)), 0);
    int wrapped = 0;
    for (int reclaims = 0; reclaims < 20000; reclaims++) {
        vg__credit_reclaim(&budget);
        wrapped += raw_used() > limit; /* a byte given back twice */
    }
    for (int i = 0; i < 8; i++)
        pthread_join(t[i], NULL);
    cr_expect_eq(wrapped, 0, "used wrapped below zero %d times", wrapped);
    cr_expect_eq(raw_used(), 0, "every byte came back");
    cr_expect_eq(atomic_load_explicit(&budget.refusals, memory_order_relaxed), 0);
}
