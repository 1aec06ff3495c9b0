/*
 * vg_ledger.h — the ledger's shards and records, shared by its two files
 * only: ledger.c (the directory, insert, remove, find, fork) and
 * ledger_walk.c (the rare walks over every record: foreach, the freed
 * records, the count). Everyone else uses vg_budget.h's functions.
 */
#ifndef VG_LEDGER_H
#define VG_LEDGER_H

#include "vg_budget.h"
#include "vg_keymap.h"

/* Fork takes every shard lock (spinlocks, so ThreadSanitizer's deadlock
 * detector, which overflows above 64 mutexes held at once, does not see
 * them). */
#define VG__SHARD_BITS 7
#define VG__SHARDS (1u << VG__SHARD_BITS) /* fits the entry's 8 owner bits */
#define VG__GRANULE_SHIFT 16              /* 64 KiB */
#define VG__RING VG__LEDGER_RING          /* quarantined records per shard */
#define VG__SLAB 64u                      /* records per free-list refill */

/* Two cache lines exactly (slabs are line-aligned). */
typedef struct vg__rec {
    vg__alloc_t a; /* the table's key: a.ptr */
    struct vg__rec *next_free;
    uint64_t order; /* the shard's insert count when inserted (foreach) */
} __attribute__((aligned(64))) vg__rec_t;
_Static_assert(sizeof(vg__rec_t) == 128, "a record is two cache lines");

typedef struct vg__shard {
    _Atomic int lock;      /* vg__spin_lock; 0 (free) in the static image */
    vg__keymap_t table;    /* ptr -> record */
    vg__rec_t *free;
    _Atomic uint64_t live; /* written under lock; read lock-free by count() */
    uint64_t inserts;      /* inserts so far: each record's `order` */
    unsigned ring_next;    /* next ring slot to overwrite */
    unsigned ring_len;     /* filled slots, <= VG__RING */
    /* The quarantine: records removed from the table, kept whole (not
     * copied) until RING removals later push them back to the free list.
     * Slots [0, ring_len) are set. */
    vg__rec_t *ring[VG__RING];
} __attribute__((aligned(64))) vg__shard_t;

/* Shard i (0 <= i < VG__SHARDS). */
vg__shard_t *vg__ledger_shard(unsigned i);

/* ledger.c: vg__ledger_remove past the calling thread's front: the shards,
 * and when they miss, the other fronts (vg__front_push) and the shards again. */
int vg__shards_remove(vg_devptr_t ptr, const void *owner, vg__alloc_t *out);
/* ledger.c: false when the shards hold no record in key's granule (or, split,
 * its 4 KiB): a look at its directory entry, without a lock. */
bool vg__shards_may_hold(vg_devptr_t key);

/* ledger_front.c: the threads' fronts (each thread's newest plain
 * allocation, out of the shards). */
/* Moves the front whose live record has `key` (if any) into the shards:
 * after a miss there, push, then look there again (ledger_front.c says
 * why that finds every live record). */
void vg__front_push(vg_devptr_t key);
/* Calls fn, with no lock held, on a copy of each live record still in a
 * front (owner filter as vg__ledger_foreach): after a flush, those the
 * shards had no host memory for, and any allocated since. */
void vg__fronts_visit(const void *owner, vg__alloc_visit_fn fn, void *ctx);
/* Live records in fronts (lock-free, as the shards' counts are read). */
uint64_t vg__fronts_live(void);
/* Calls fn on each freed record the fronts keep, under that front's lock:
 * fn must not call into the ledger. */
void vg__fronts_each_freed(void (*fn)(const vg__alloc_t *a, void *ctx), void *ctx);
/* Fork: every front locked (after the registry's lock), before the shards. */
void vg__fronts_prefork(void);
void vg__fronts_postfork(void);

#endif /* VG_LEDGER_H */
