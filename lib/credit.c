/*
 * credit.c — per-thread budget credit: the shim's hot path without a
 * shared cache line and without an atomic read-modify-write.
 *
 * A per-process device budget (never a shared one, never a pool) lets
 * each thread take a slice of it in bulk, min(4 MiB, limit / 1024), with
 * one CAS on the budget's `used`; the thread then spends it on requests
 * that fit and puts frees of up to a slice back, on its own cache line
 * (vg__credit_take and vg__credit_give, inline in vg_account.h). Above two
 * slices the excess goes back to the budget. So `used` = real use + every
 * thread's unspent credit, and the limit check on `used` can never let
 * real use past the limit.
 *
 * Unspent credit is never a reason to refuse: vg__budget_reserve pulls
 * every thread's cell back (credit_reclaim, the budget's reclaim hook)
 * before a refusal, blocked threads included. At High pressure credit is
 * switched off for the device and pulled back; it comes back when a
 * refill finds the level below High. A thread that exits gives its credit
 * back (pthread key destructor); a forked child gives back the credit of
 * the parent's other threads.
 *
 * Owners and reclaimers never write a cell at the same time, and the
 * owner's side costs no atomic read-modify-write (on the H200 host a CAS
 * is 13 ns and a fetch_add 8.5 ns, a fifth of what the shim added to a
 * pair; docs/benchmarks.md). An owner's operation stores 1 to its record's
 * `busy`, then loads the global stop flag; only when it is clear does it
 * read and write its cell with plain stores, and it stores 0 to `busy` at
 * the end. A reclaimer (one at a time) stores 1 to the stop flag, then
 * runs membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED), a full memory
 * barrier on every CPU running a thread of this process, and then waits
 * until every record's `busy` is 0. After that barrier, an owner either
 * saw the stop flag (and keeps out) or its `busy` store is visible, so the
 * reclaimer waits for it: no owner is inside an operation while the
 * reclaimer empties the cells, and a stopped owner's request goes to the
 * budget itself, exactly as without credit. Owners never wait on a
 * reclaimer inside an operation, and do no budget call there (a budget
 * call may run level callbacks). Without membarrier (an old kernel, or a
 * seccomp filter that refuses it) there is no credit: every request goes
 * to the budget, correct and slower.
 *
 * Cells live in one record per thread, linked into a registry that only
 * grows (records of exited threads are adopted by new ones, as audit
 * buffers are), so a reclaimer walks it without a lock and never reads
 * freed memory. Moves between a cell and `used` are ordered so that
 * `used` never holds less than real use plus the cells (credit in flight
 * is counted twice for a moment, never zero times).
 */
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "vg_account.h"
#include "vg_fork.h"

#define SLICE_MAX (4ull << 20) /* bytes */
#define SLICE_DIV 1024u        /* slice <= limit / 1024 */


static _Atomic(vg__credit_t *) reg_head;
/* The budget each device's cells belong to (vg__credit_enable). */
static _Atomic(vg__budget_t *) owner[VG__MAX_DEVICES];
static pthread_key_t exit_key;
static bool exit_key_made;
/* membarrier registered for this process: credit may be used. */
static bool barrier_ok;
static _Atomic int reclaim_lock; /* one reclaimer at a time (spinlock) */

static uint64_t slice_for(uint64_t limit)
{
    uint64_t s = limit / SLICE_DIV;
    return s < SLICE_MAX ? s : SLICE_MAX;
}

/* Empties c's cell of device d. The caller has excluded c's owner (it is
 * the owner between operations, a reclaimer that stopped it, or a forked
 * child's only thread) and other reclaimers. */
static uint64_t take_cell(vg__credit_t *c, int d)
{
    uint64_t x = atomic_load_explicit(&c->cell[d], memory_order_relaxed);
    if (x)
        atomic_store_explicit(&c->cell[d], 0, memory_order_relaxed);
    return x;
}

static vg__budget_t *budget_of(int device)
{
    return atomic_load_explicit(&owner[device], memory_order_acquire);
}

static void credit_return(int device, uint64_t bytes)
{
    if (bytes)
        vg__budget_release(budget_of(device), bytes);
}

void vg__credit_shed(int device, uint64_t bytes)
{
    vg__budget_release_quiet(budget_of(device), bytes);
}

void vg__credit_settle(int device)
{
    vg__budget_relevel(budget_of(device));
}

/* Keeps every owner out of its cells until restart_owners(). Slow: one
 * system call that interrupts each CPU running a thread of this process,
 * then a wait for owners inside an operation (a few instructions each). */
static void stop_owners(void)
{
    vg__spin_lock(&reclaim_lock);
    atomic_store_explicit(&vg__hot.credit_stop, 1, memory_order_seq_cst);
    syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0);
    for (vg__credit_t *c = atomic_load_explicit(&reg_head, memory_order_acquire); c;
         c = c->next)
        while (atomic_load_explicit(&c->busy, memory_order_acquire))
            sched_yield(); /* an owner preempted inside an operation */
}

static void restart_owners(void)
{
    atomic_store_explicit(&vg__hot.credit_stop, 0, memory_order_release);
    vg__spin_unlock(&reclaim_lock);
}

/* Thread exit: the credit goes back and the record waits for a new thread.
 * A later destructor that allocates adopts a record again (and is given
 * back again: glibc runs destructors until no value is set). */
static void thread_exit(void *p)
{
    vg__credit_t *c = p;
    uint64_t x[VG__MAX_DEVICES];
    /* With `vg__me.credit` NULL this thread starts no more operations,
     * so only a reclaimer could touch its cells: the lock keeps them out.
     * The bytes reach `used` under it (so a fork, which takes it, never
     * finds them in neither place); the level moves after it (a level
     * callback may reclaim). */
    vg__me.credit = NULL;
    vg__spin_lock(&reclaim_lock);
    for (int d = 0; d < VG__MAX_DEVICES; d++)
        if ((x[d] = take_cell(c, d)))
            vg__budget_release_quiet(budget_of(d), x[d]);
    vg__spin_unlock(&reclaim_lock);
    for (int d = 0; d < VG__MAX_DEVICES; d++)
        if (x[d])
            vg__budget_relevel(budget_of(d));
    atomic_store_explicit(&c->adopted, false, memory_order_release);
}

__attribute__((constructor)) static void credit_setup(void)
{
    exit_key_made = pthread_key_create(&exit_key, thread_exit) == 0;
    /* Without the expedited barrier a reclaimer could not keep owners out
     * of their cells: no credit then (every request goes to the budget). */
    barrier_ok = syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
}

/* The thread's first refill: a record an exited thread left, or a new
 * one. NULL (no credit for this thread: every request goes to the
 * budget) when there is no memory or no exit key. */
__attribute__((noinline, cold)) static vg__credit_t *adopt(void)
{
    if (!exit_key_made || !barrier_ok)
        return NULL;
    vg__credit_t *c = atomic_load_explicit(&reg_head, memory_order_acquire);
    for (; c; c = c->next) {
        bool no = false;
        if (!atomic_load_explicit(&c->adopted, memory_order_relaxed) &&
            atomic_compare_exchange_strong_explicit(&c->adopted, &no, true,
                                                    memory_order_acquire,
                                                    memory_order_relaxed))
            break;
    }
    if (!c) {
        c = aligned_alloc(64, sizeof *c);
        if (!c)
            return NULL;
        memset(c, 0, sizeof *c);
        atomic_init(&c->adopted, true);
        c->next = atomic_load_explicit(&reg_head, memory_order_relaxed);
        while (!atomic_compare_exchange_weak_explicit(&reg_head, &c->next, c,
                                                      memory_order_release,
                                                      memory_order_relaxed))
            ;
    }
    if (pthread_setspecific(exit_key, c) != 0) {
        atomic_store_explicit(&c->adopted, false, memory_order_release);
        return NULL;
    }
    vg__me.credit = c;
    return c;
}

uint64_t vg__credit_reclaim(vg__budget_t *b)
{
    int d = b->credit_dev;
    uint64_t got = 0;
    if (d < 0 || d >= VG__MAX_DEVICES || !barrier_ok)
        return 0;
    stop_owners();
    for (vg__credit_t *c = atomic_load_explicit(&reg_head, memory_order_acquire); c;
         c = c->next)
        got += take_cell(c, d);
    if (got) /* into `used` before the lock goes, as at a thread's exit */
        vg__budget_release_quiet(b, got);
    restart_owners();
    if (got)
        vg__budget_relevel(b);
    return got;
}

uint64_t vg__credit_idle(const vg__budget_t *b)
{
    int d = b->credit_dev;
    uint64_t idle = 0;
    if (d < 0 || d >= VG__MAX_DEVICES)
        return 0;
    for (vg__credit_t *c = atomic_load_explicit(&reg_head, memory_order_acquire); c;
         c = c->next)
        idle += atomic_load_explicit(&c->cell[d], memory_order_relaxed);
    return idle;
}

/* High pressure: no more slices on this device, and every cell comes
 * back (once, by the thread that switched it off). */
static void credit_off(vg__budget_t *b, int device)
{
    /* A load first: every request at High passes here, and an exchange
     * would write the slices' shared line each time. */
    if (atomic_load_explicit(&vg__hot.credit_slice[device], memory_order_relaxed) &&
        atomic_exchange_explicit(&vg__hot.credit_slice[device], 0, memory_order_relaxed))
        vg__credit_reclaim(b);
}

bool vg__credit_refill(vg__budget_t *b, int device, uint64_t n)
{
    if (!b->reclaim)
        return false; /* a shared budget, or no budget resolved */
    if (vg__budget_level(b) >= VG_PRESSURE_HIGH) {
        credit_off(b, device);
        return false;
    }
    uint64_t slice = slice_for(atomic_load_explicit(&b->limit, memory_order_relaxed));
    if (n > slice || n == 0)
        return false;
    vg__credit_t *c = vg__me.credit;
    if (!c && !(c = adopt()))
        return false;
    if (atomic_load_explicit(&vg__hot.credit_slice[device], memory_order_relaxed) != slice)
        atomic_store_explicit(&vg__hot.credit_slice[device], slice, memory_order_relaxed);
    /* The slice moves from the budget into the cell inside one owner's
     * operation, charged first (so `used` never holds less than the
     * cells): a reclaimer, which waits for owners to leave, never finds it
     * charged but in no cell, where it could not pull it back and would
     * refuse for want of credit that was on its way. The charge is one CAS
     * (it waits for nothing and runs no callback); peak and level, which
     * may run level callbacks, move after the operation. */
    if (!vg__credit_enter(c))
        return false; /* a reclaim is running: the caller asks for n alone */
    bool got = vg__budget_try_reserve(b, slice);
    if (got) {
        if (vg__credit_test_pause)
            vg__credit_test_pause(); /* tests only: see the header */
        _Atomic uint64_t *cell = &c->cell[device];
        atomic_store_explicit(cell, atomic_load_explicit(cell, memory_order_relaxed) + slice - n,
                              memory_order_relaxed);
    }
    vg__credit_leave(c);
    if (!got)
        return false; /* near full: the caller asks for n alone */
    vg__budget_commit(b, slice); /* peak and level move with slices */
    if (vg__unlikely(vg__budget_level(b) >= VG_PRESSURE_HIGH))
        credit_off(b, device);
    return true;
}

void vg__credit_enable(vg__budget_t *b, int device)
{
    atomic_store_explicit(&owner[device], b, memory_order_release);
    b->credit_dev = device;
    b->idle = vg__credit_idle;
    b->reclaim = vg__credit_reclaim; /* set last: refill reads it first */
}

/* Links fork.c (whose child step calls the function below) into any
 * program that uses credit, as ledger.c does. */
__attribute__((used)) static void (*const fork_sequence)(void) = vg__fork_prepare;

/* Fork (fork.c, rank CREDIT): the owners are stopped as for a reclaim, so
 * no thread is inside an operation, an exit's return or a reclaim when the
 * process forks; every byte of credit is then in a cell or in `used`,
 * never on its way between them. */
void vg__credit_prefork(void)
{
    if (barrier_ok)
        stop_owners();
}

void vg__credit_postfork_parent(void)
{
    if (barrier_ok)
        restart_owners();
}

void vg__credit_postfork_unlock(void)
{
    atomic_store_explicit(&vg__hot.credit_stop, 0, memory_order_relaxed);
    atomic_store_explicit(&reclaim_lock, 0, memory_order_relaxed);
}

/* After every fork step: only the forking thread lives on in the child,
 * so the credit the other threads held in the parent is nobody's now and
 * goes back (a budget call: level callbacks may take ranked locks). */
void vg__credit_postfork_child(void)
{
    for (vg__credit_t *c = atomic_load_explicit(&reg_head, memory_order_acquire); c;
         c = c->next) {
        if (c == vg__me.credit || !atomic_load_explicit(&c->adopted, memory_order_relaxed))
            continue;
        atomic_store_explicit(&c->busy, 0, memory_order_relaxed); /* it was mid-operation */
        for (int d = 0; d < VG__MAX_DEVICES; d++)
            credit_return(d, take_cell(c, d));
        atomic_store_explicit(&c->adopted, false, memory_order_relaxed);
    }
}
