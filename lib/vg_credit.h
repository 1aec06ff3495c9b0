/*
 * vg_credit.h — per-thread budget credit (credit.c): each thread's record
 * and the hot path's inline take and give. Included by vg_account.h, whose
 * reservation and free steps spend and return it; nothing else needs it.
 */
#ifndef VG_CREDIT_H
#define VG_CREDIT_H

#include "vg_budget.h"

/* Per-thread budget credit (credit.c has the design). One record per
 * thread, 64-byte aligned so no two threads share a line. A cell is
 * written by its owner with plain stores, inside `busy`; a reclaimer
 * writes it only after stopping every owner (vg__hot.credit_stop, then a
 * process-wide memory barrier, then waiting out `busy`). */
typedef struct vg__credit {
    _Atomic int busy;                       /* the owner is inside an operation */
    _Atomic bool adopted;                   /* a live thread owns it */
    struct vg__credit *next;                /* registry: only ever grows */
    /* After `busy`, so that an operation on the first devices' cells
     * touches one line, not two. */
    _Atomic uint64_t cell[VG__MAX_DEVICES]; /* unspent bytes, per device */
} __attribute__((aligned(64))) vg__credit_t;

/* The calling thread's record is vg__me.credit (NULL before its first
 * refill). */
/* vg__hot.credit_slice[d]: device d's slice in bytes; 0 while credit is
 * off (no budget with credit, or High pressure): frees then go straight
 * to the budget. vg__hot.credit_stop: nonzero while a reclaimer holds
 * every cell: owners keep out. */

/* An owner's operation: true when it may touch its cells, with `busy` set;
 * end it with vg__credit_leave. No atomic read-modify-write: the order of
 * the store to `busy` and the load of the stop flag is the reclaimer's to
 * enforce (credit.c). */
static inline bool vg__credit_enter(vg__credit_t *c)
{
    atomic_store_explicit(&c->busy, 1, memory_order_relaxed);
    atomic_signal_fence(memory_order_seq_cst);
    if (vg__likely(!atomic_load_explicit(&vg__hot.credit_stop, memory_order_acquire)))
        return true;
    atomic_store_explicit(&c->busy, 0, memory_order_release);
    return false;
}

static inline void vg__credit_leave(vg__credit_t *c)
{
    atomic_store_explicit(&c->busy, 0, memory_order_release);
}

/* Hot path: spends n bytes of this thread's credit on `device` (plain
 * loads and stores on the thread's own line). False when the thread holds
 * less than n or a reclaim is running: then vg__credit_refill, else the
 * budget. */
static inline bool vg__credit_take(int device, uint64_t n)
{
    vg__credit_t *c = vg__me.credit;
    if (vg__unlikely(!c) || vg__unlikely(!vg__credit_enter(c)))
        return false;
    _Atomic uint64_t *cell = &c->cell[device & (VG__MAX_DEVICES - 1)];
    uint64_t have = atomic_load_explicit(cell, memory_order_relaxed);
    bool ok = have >= n;
    if (vg__likely(ok))
        atomic_store_explicit(cell, have - n, memory_order_relaxed);
    vg__credit_leave(c);
    return ok;
}

/* Gives `bytes` of credit taken out of a cell back to `device`'s budget,
 * in two steps: shed moves `used` (inside the owner's operation, so a fork,
 * which waits for operations to end, never strands them); settle moves the
 * level after it (a level callback may reclaim). */
void vg__credit_shed(int device, uint64_t bytes);
void vg__credit_settle(int device);

/* Hot path: n bytes the driver has freed become this thread's credit when
 * n is at most a slice and credit is on (one load of the read-mostly
 * slice, plain stores on the thread's line). False: release them to the
 * budget instead. */
static inline bool vg__credit_give(int device, uint64_t n)
{
    vg__credit_t *c = vg__me.credit;
    uint64_t slice = atomic_load_explicit(&vg__hot.credit_slice[device & (VG__MAX_DEVICES - 1)],
                                          memory_order_relaxed);
    /* n - 1 >= slice: n over a slice, credit off (slice 0), or n == 0. */
    if (vg__unlikely(!c) || vg__unlikely(n - 1 >= slice) || vg__unlikely(!vg__credit_enter(c)))
        return false;
    _Atomic uint64_t *cell = &c->cell[device & (VG__MAX_DEVICES - 1)];
    uint64_t now = atomic_load_explicit(cell, memory_order_relaxed) + n;
    /* Over two slices the cell goes back down to one; the excess goes to
     * the budget (its level after the operation: it may run callbacks). */
    uint64_t excess = vg__unlikely(now > 2 * slice) ? now - slice : 0;
    atomic_store_explicit(cell, now - excess, memory_order_relaxed);
    if (vg__unlikely(excess))
        vg__credit_shed(device, excess);
    vg__credit_leave(c);
    if (vg__unlikely(excess))
        vg__credit_settle(device);
    return true;
}

/* A test-only pause point inside a refill, between the slice's charge and
 * its cell: a weak, hidden symbol no product build defines (the call is
 * never made there). tests/test_credit.c defines it. */
void vg__credit_test_pause(void) __attribute__((weak, visibility("hidden")));
/* Takes a new slice from b (one CAS on `used`) and spends n of it: true.
 * False when b has no credit (shared), the level is High or above (then
 * credit is switched off and every thread's pulled back), n is over a
 * slice, or a slice does not fit: the caller reserves n from b itself. */
bool vg__credit_refill(vg__budget_t *b, int device, uint64_t n);
/* The budget hooks (vg__budget_t.reclaim and .idle): every thread's
 * unspent credit of b's device, pulled back into b / summed. */
uint64_t vg__credit_reclaim(vg__budget_t *b);
uint64_t vg__credit_idle(const vg__budget_t *b);
/* Gives b (the per-process budget of `device`) per-thread credit: engine.c
 * at resolution, before the budget is published. */
void vg__credit_enable(vg__budget_t *b, int device);
/* Fork (fork.c, rank CREDIT): prepare stops every owner as a reclaim
 * does; the parent restarts them; the child's step only lets go, and after
 * every step the child gives back the other threads' credit. */
void vg__credit_prefork(void);
void vg__credit_postfork_parent(void);
void vg__credit_postfork_unlock(void);
void vg__credit_postfork_child(void);

#endif /* VG_CREDIT_H */
