/*
 * fork.c — the one fork sequence and the lock ranks.
 *
 * Only the forking thread exists in a child: a lock another thread held at
 * fork would stay held there forever. So fork's prepare takes every
 * process-wide engine lock, in rank order, and parent and child release
 * them in reverse (as jemalloc's jemalloc_prefork does with its witness
 * ranks). One pthread_atfork registration, made when the library loads,
 * before any of these locks can be held: a registration made lazily under
 * a lock let a fork that came first copy that lock, held, into the child.
 * Each file owns its locks and exposes vg__<file>_prefork, _postfork_parent
 * and _postfork_child (declared in its header); this file only orders them.
 *
 * Lock ranks, outermost first (vg_fork.h's VG__RANKS is the same list). A
 * thread takes a lock only while every lock it holds ranks lower:
 *
 *  1 LIMIT_SET       account_limits.c set_lock: one cuCtxSetLimit at a
 *                    time; held across the driver's cuCtxSetLimit and the
 *                    reservation of its growth, which may take any lock
 *                    below.
 *  2 VMM_CALL        account_vmm.c call_lock: one cuMemMap, cuMemUnmap,
 *                    cuMemRelease, cuMemRetainAllocationHandle or
 *                    cuMemMapArrayAsync (either ABI) at a time;
 *                    held across the driver's call and its bookkeeping
 *                    (VMM), which may give a charge back (any lock below).
 *  3 IMPLICIT_FIRST  account_implicit.c first_lock: a device's first use;
 *                    held across driver and NVML calls, and resolves the
 *                    device's budget (RESOLVE) inside.
 *  4 POOLED_CREATE   account_pooled.c pools_mu: cache mode's pool creation;
 *                    held across vg_pool_create (driver calls), resolves
 *                    the budget (RESOLVE) and registers a level hook
 *                    (LEVEL_HOOKS) inside.
 *  5 RESOLVE         engine.c resolve_lock: a device budget's resolution;
 *                    held across driver calls, the shared region's bind
 *                    (its own process-shared lock, not ranked: another
 *                    process may hold it) and a level hook's registration.
 *                    When the budget lookup is a program's first engine
 *                    call, the engine starts here and loads the driver
 *                    (DRIVER_LOAD) inside.
 *  6 DRIVER_LOAD     driver.c load_lock: held across dlopen of libcuda and
 *                    the symbol lookups, once per process.
 *  7 NVML_RESOLVE    shim/nvml.c real_lock: held across dlopen(RTLD_NOLOAD)
 *                    of NVML and the symbol lookups, until NVML is found
 *                    (a library constructor that dlopen runs under a lock
 *                    above may look an NVML name up). Leaf otherwise.
 *  8 NVML_MAP        shim/nvml.c map_lock: NVML devices to CUDA ordinals,
 *                    taken on every NVML memory and process query. Leaf.
 *  9 LEVEL_HOOKS     budget.c hook_lock: a budget's level-hook list. Leaf.
 * 10 LIMITS          account_limits.c limits_lock: charged limits. Leaf.
 * 11 STREAM_POOLS    account_streams.c pools_lock: stream-ordered pools. Leaf.
 * 12 VMM             account_vmm.c vmm_lock: handles and mappings; looks
 *                    up the ledger (LEDGER) inside.
 * 13 POOLS           pool.c all_mu (the list of pools), then each pool's
 *                    mutexes and its cache's locks: the thread-cache list,
 *                    each thread cache (as a remote: its owner is out of
 *                    its fast section), each class, the doomed list. They
 *                    are spinlocks and per-pool mutexes, never held across
 *                    a call out, but a child must not find one held by a
 *                    thread that did not come along, nor an owner's `busy`
 *                    left set: it would hang on the inherited pool. A
 *                    class lock is held while the chunk index is written
 *                    (CHUNKS), so these come before it.
 * 14 CREDIT          credit.c reclaim_lock, with every owner stopped (the
 *                    stop flag, a process-wide barrier, and no owner left
 *                    inside an operation), as a reclaim does: a child then
 *                    finds every byte of credit in a cell or in `used`,
 *                    none on its way between them. A reclaim runs when a
 *                    reserve is refused, possibly under a pool's locks
 *                    (POOLS), and takes no lock itself.
 * 15 CHUNKS          chunks.c index_lock: the chunk index. Leaf.
 * 16 GRAPH_EXECS     account_graph.c execs_lock: executables and the
 *                    graphs they came from; held while a destroyed
 *                    graph's nodes are handed to its executable, which
 *                    walks the ledger (LEDGER) inside.
 * 17 LEDGER          ledger.c's 128 shard spinlocks, taken in index order
 *                    at fork (at run time a thread holds one at a time).
 * 18 AUDIT           audit_buf.c reg_lock, then each thread's buffer: an
 *                    event may be written under any lock above, so the
 *                    buffers come last (taken first, a thread holding VMM
 *                    and writing an event would wait for the fork forever).
 *
 * Not ranked at run time: per-pool mutexes (made and destroyed with their
 * pools) and the pool cache's class and magazine spinlocks (never held
 * across a call out; fork takes them all under POOLS). Not ranked at all:
 * the shared region's robust process-shared mutex (another process may
 * hold it; a child that finds it held by a dead owner recovers it).
 *
 * The NVML steps are the shim's (shim/nvml.c): only the preload library
 * has them, and elsewhere they are NULL (vg_fork.h) and skipped.
 *
 * Locks held across driver calls (ranks 1-6): prepare waits for the holder's
 * driver call to return. CUDA does not support using the driver in a child
 * after fork; the child only needs our state consistent and our locks free.
 *
 * The child, after the releases, resets what names the process (in this
 * order, as before the sequence had one home): the cached tid (util.c), the
 * budget credit of the parent's other threads, given back (credit.c: a
 * budget call, whose level callbacks may take ranked locks, so after the
 * releases), the audit log's start line under the new pid
 * (audit_buf.c), and the shared
 * region's slot (shared.c: the parent's slot is not the child's).
 */
#include <stdio.h>
#include <stdlib.h>

#include "vg_account.h"
#include "vg_audit.h"
#include "vg_fork.h"
#include "vg_pool.h"
#include "vg_shared.h"

static const vg__fork_step_t steps[] = {
    {VG__RANK_LIMIT_SET, vg__account_limits_set_prefork,
     vg__account_limits_set_postfork_parent, vg__account_limits_set_postfork_child},
    {VG__RANK_VMM_CALL, vg__account_vmm_call_prefork, vg__account_vmm_call_postfork_parent,
     vg__account_vmm_call_postfork_child},
    {VG__RANK_IMPLICIT_FIRST, vg__account_implicit_prefork,
     vg__account_implicit_postfork_parent, vg__account_implicit_postfork_child},
    {VG__RANK_POOLED_CREATE, vg__account_pooled_prefork,
     vg__account_pooled_postfork_parent, vg__account_pooled_postfork_child},
    {VG__RANK_RESOLVE, vg__engine_prefork, vg__engine_postfork_parent,
     vg__engine_postfork_child},
    {VG__RANK_DRIVER_LOAD, vg__driver_prefork, vg__driver_postfork_parent,
     vg__driver_postfork_child},
    {VG__RANK_NVML_RESOLVE, vg__nvml_resolve_prefork, vg__nvml_resolve_postfork_parent,
     vg__nvml_resolve_postfork_child},
    {VG__RANK_NVML_MAP, vg__nvml_map_prefork, vg__nvml_map_postfork_parent,
     vg__nvml_map_postfork_child},
    {VG__RANK_LEVEL_HOOKS, vg__budget_prefork, vg__budget_postfork_parent,
     vg__budget_postfork_child},
    {VG__RANK_LIMITS, vg__account_limits_prefork, vg__account_limits_postfork_parent,
     vg__account_limits_postfork_child},
    {VG__RANK_STREAM_POOLS, vg__account_prefork, vg__account_postfork_parent,
     vg__account_postfork_child},
    {VG__RANK_VMM, vg__account_vmm_prefork, vg__account_vmm_postfork_parent,
     vg__account_vmm_postfork_child},
    {VG__RANK_POOLS, vg__pool_prefork, vg__pool_postfork_parent, vg__pool_postfork_child},
    {VG__RANK_CREDIT, vg__credit_prefork, vg__credit_postfork_parent,
     vg__credit_postfork_unlock},
    {VG__RANK_CHUNKS, vg__chunks_prefork, vg__chunks_postfork_parent,
     vg__chunks_postfork_child},
    {VG__RANK_GRAPH_EXECS, vg__account_graph_prefork, vg__account_graph_postfork_parent,
     vg__account_graph_postfork_child},
    {VG__RANK_LEDGER, vg__ledger_prefork, vg__ledger_postfork_parent,
     vg__ledger_postfork_child},
    {VG__RANK_AUDIT, vg__audit_buf_prefork, vg__audit_buf_postfork_parent,
     vg__audit_buf_postfork_child},
};

#define STEP_COUNT (sizeof steps / sizeof steps[0])
_Static_assert(STEP_COUNT == VG__RANK_END - 1, "one fork step per lock rank");

static const char *const rank_names[] = {
    "no lock",
#define VG__RANK_NAME(name, what) what,
    VG__RANKS(VG__RANK_NAME)
#undef VG__RANK_NAME
};

const char *vg__rank_name(vg__rank_t rank)
{
    return rank < VG__RANK_END ? rank_names[rank] : "?";
}

const vg__fork_step_t *vg__fork_steps(size_t *count)
{
    *count = STEP_COUNT;
    return steps;
}

/* ------------------------------------------------------- order check */

#ifdef VG_LOCK_DEBUG
static _Thread_local uint32_t ranks_held; /* bit r: a lock of rank r held */

__attribute__((noinline, cold)) static void rank_violation(vg__rank_t rank)
{
    vg__rank_t top = VG__RANK_NONE;
    for (int r = VG__RANK_END - 1; r > 0; r--)
        if (ranks_held & (1u << r)) {
            top = (vg__rank_t)r;
            break;
        }
    vg__log("lock order violated: taking %s while holding %s", vg__rank_name(rank),
            vg__rank_name(top));
    abort();
}
#endif

void vg__rank_enter(vg__rank_t rank)
{
#ifdef VG_LOCK_DEBUG
    /* Any held rank at or above this one is a violation. */
    if (vg__unlikely(ranks_held >> rank))
        rank_violation(rank);
    ranks_held |= 1u << rank;
#else
    (void)rank;
#endif
}

void vg__rank_leave(vg__rank_t rank)
{
#ifdef VG_LOCK_DEBUG
    ranks_held &= ~(1u << rank);
#else
    (void)rank;
#endif
}

void vg__mutex_lock(pthread_mutex_t *m, vg__rank_t rank)
{
    vg__rank_enter(rank);
    pthread_mutex_lock(m);
}

void vg__mutex_unlock(pthread_mutex_t *m, vg__rank_t rank)
{
    pthread_mutex_unlock(m);
    vg__rank_leave(rank);
}

/* ------------------------------------------------------------- fork */

/* The shim's steps are NULL where there is no shim (vg_fork.h). */
static bool step_here(const vg__fork_step_t *s)
{
    return s->prefork && s->postfork_parent && s->postfork_child;
}

void vg__fork_prepare(void)
{
    for (size_t i = 0; i < STEP_COUNT; i++) {
        if (!step_here(&steps[i]))
            continue;
        vg__rank_enter(steps[i].rank);
        steps[i].prefork();
    }
}

void vg__fork_parent(void)
{
    for (size_t i = STEP_COUNT; i-- > 0;) {
        if (!step_here(&steps[i]))
            continue;
        steps[i].postfork_parent();
        vg__rank_leave(steps[i].rank);
    }
}

void vg__fork_child(void)
{
    for (size_t i = STEP_COUNT; i-- > 0;) {
        if (!step_here(&steps[i]))
            continue;
        steps[i].postfork_child();
        vg__rank_leave(steps[i].rank);
    }
    vg__tid_reset();
    vg__credit_postfork_child();
    vg__audit_buf_child_restart();
    vg__shared_postfork_child();
}

/* At load, before any ranked lock can be held; touches no driver. */
__attribute__((constructor)) static void fork_register(void)
{
    pthread_atfork(vg__fork_prepare, vg__fork_parent, vg__fork_child);
}
