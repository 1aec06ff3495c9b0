/*
 * vg_fork.h — lock ranks and the one fork sequence (fork.c).
 *
 * Every process-wide engine lock has a rank. A thread takes a lock only
 * while every lock it holds ranks lower; fork's prepare takes them all in
 * rank order and parent and child release them in reverse. The table, with
 * what each lock is held across, is in fork.c.
 *
 * With VG_LOCK_DEBUG (on in every build without NDEBUG, so in `make test`
 * and its sanitizer builds; off in `make bench`), vg__mutex_lock and the
 * fork sequence check the order: a thread's ranks held are a bit set in a
 * thread-local word, and taking a rank at or below the highest one held
 * aborts with both names. Cost when on: a thread-local read and write per
 * lock; every ranked lock is off the allocation fast path. The ledger's
 * shard spinlocks (the fast path) are checked at fork only.
 */
#ifndef VG_FORK_H
#define VG_FORK_H

#include <pthread.h>

#include "vg_base.h"

#if !defined(NDEBUG) && !defined(VG_LOCK_DEBUG)
#define VG_LOCK_DEBUG 1
#endif

/* In rank order, outermost first: X(name, file and lock). */
#define VG__RANKS(X)                                                         \
    X(LIMIT_SET, "account_limits.c set_lock")                                \
    X(VMM_CALL, "account_vmm.c call_lock")                                   \
    X(IMPLICIT_FIRST, "account_implicit.c first_lock")                       \
    X(POOLED_CREATE, "account_pooled.c pools_mu")                            \
    X(RESOLVE, "engine.c resolve_lock")                                      \
    X(DRIVER_LOAD, "driver.c load_lock")                                     \
    X(NVML_RESOLVE, "shim/nvml.c real_lock")                                 \
    X(NVML_MAP, "shim/nvml.c map_lock")                                      \
    X(LEVEL_HOOKS, "budget.c hook_lock")                                     \
    X(LIMITS, "account_limits.c limits_lock")                                \
    X(STREAM_POOLS, "account_streams.c pools_lock")                          \
    X(VMM, "account_vmm.c vmm_lock")                                         \
    X(POOLS, "pool.c all_mu and every pool's locks")                         \
    X(CREDIT, "credit.c reclaim_lock and every owner stopped")               \
    X(CHUNKS, "chunks.c index_lock")                                         \
    X(GRAPH_EXECS, "account_graph.c execs_lock")                             \
    X(LEDGER, "ledger.c shard spinlocks")                                    \
    X(AUDIT, "audit_buf.c reg_lock and the thread buffers")

typedef enum {
    VG__RANK_NONE = 0,
#define VG__RANK_ENUM(name, what) VG__RANK_##name,
    VG__RANKS(VG__RANK_ENUM)
#undef VG__RANK_ENUM
    VG__RANK_END
} vg__rank_t;

_Static_assert(VG__RANK_END <= 32, "the held-rank set is one 32-bit word");

/* ------------------------------------------------------------ fork.c */

/* The name of a rank ("engine.c resolve_lock"); "?" when out of range. */
const char *vg__rank_name(vg__rank_t rank);

/* About to take a lock of `rank`: with VG_LOCK_DEBUG, aborts if the
 * thread holds one of the same or a higher rank. */
void vg__rank_enter(vg__rank_t rank);
/* Released a lock of `rank`. */
void vg__rank_leave(vg__rank_t rank);

/* A ranked pthread mutex: the order check, then the lock. Out of line on
 * purpose: every ranked lock is off the fast path, and the reference links
 * fork.c (and its one pthread_atfork registration) into every program that
 * takes one, static links included. */
void vg__mutex_lock(pthread_mutex_t *m, vg__rank_t rank);
void vg__mutex_unlock(pthread_mutex_t *m, vg__rank_t rank);

/* fork(2)'s three steps (registered once, at load). Exposed so a test can
 * run the sequence around its own fork and check what each step holds. */
void vg__fork_prepare(void);
void vg__fork_parent(void);
void vg__fork_child(void);

/* One ranked lock's fork step: for tests that hold each lock in turn. */
typedef struct vg__fork_step {
    vg__rank_t rank;
    void (*prefork)(void);        /* takes the file's locks */
    void (*postfork_parent)(void); /* releases them */
    void (*postfork_child)(void);  /* releases them and resets what the child must */
} vg__fork_step_t;

/* The steps in rank order; *count gets their number. A step whose
 * functions are NULL belongs to a file this program does not hold (the
 * shim's, in the engine's own libraries): the sequence skips it. */
const vg__fork_step_t *vg__fork_steps(size_t *count);

/* ------------------------------------------------------- shim/nvml.c */

/* Fork steps of the shim's NVML hook locks (ranks NVML_RESOLVE and
 * NVML_MAP). Only the preload library has the shim: weak and hidden, like
 * vg__shared_test_pause, so libvramguard and the programs that link it
 * statically resolve them to NULL at link time. */
#define VG__SHIM_STEP(name) void name(void) __attribute__((weak, visibility("hidden")));
VG__SHIM_STEP(vg__nvml_resolve_prefork)
VG__SHIM_STEP(vg__nvml_resolve_postfork_parent)
VG__SHIM_STEP(vg__nvml_resolve_postfork_child)
VG__SHIM_STEP(vg__nvml_map_prefork)
VG__SHIM_STEP(vg__nvml_map_postfork_parent)
VG__SHIM_STEP(vg__nvml_map_postfork_child)
#undef VG__SHIM_STEP

#endif /* VG_FORK_H */
