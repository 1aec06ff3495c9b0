/*
 * vg_budget.h — byte budgets (budget.c), the ledger of live allocations
 * (ledger.c) and pointer classification (ptrcheck.c). No CUDA.
 */
#ifndef VG_BUDGET_H
#define VG_BUDGET_H

#include "vg_base.h"

/* ---------------------------------------------------------- budget.c */

typedef void (*vg__level_fn)(void *owner, vg_pressure_t old_level,
                             vg_pressure_t new_level, void *user);

#define VG__LEVEL_HOOKS 8

/* A byte limit and its use. used never exceeds limit through reserve(), no
 * matter how many threads race (compare-and-swap). Lowering the limit below
 * use is allowed: reserves then fail until frees bring use down. */
struct vg__shm;

typedef struct vg__budget {
    /* Set when the budget lives in a shared region (VRAMGUARD_SHARED): every
     * operation then goes to shared.c, and the fields below mirror the
     * region's device entry as of this process's last operation on it. NULL
     * for per-process budgets and pools: one predictable branch. */
    struct vg__shm *shared;
    int shared_dev;         /* the region's device entry */
    _Atomic uint64_t limit; /* VG__UNLIMITED when none */
    _Atomic uint64_t used;
    _Atomic uint64_t peak;
    _Atomic uint64_t refusals;
    _Atomic int level;      /* vg_pressure_t */
    void *owner;            /* passed to level hooks */
    _Atomic int hook_count;
    struct {
        vg__level_fn fn;
        void *user;
    } hooks[VG__LEVEL_HOOKS];
    /* Per-thread credit (credit.c), set on the shim's per-process device
     * budgets only (NULL for pools and shared budgets): `used` then also
     * holds bytes that threads took in bulk and have not spent. reclaim
     * pulls every thread's unspent credit back into the budget (returns
     * the bytes) and runs before any refusal; idle says how much is
     * unspent now, so that vg__budget_read reports real use. */
    uint64_t (*reclaim)(struct vg__budget *b);
    uint64_t (*idle)(const struct vg__budget *b);
    int credit_dev;         /* the device whose credit cells hold it */
} vg__budget_t;

void vg__budget_init(vg__budget_t *b, uint64_t limit, void *owner);
void vg__budget_set_limit(vg__budget_t *b, uint64_t limit);
/* Adds n to use if that stays within the limit: VG_OK, else VG_ENOMEM (and
 * counts a refusal). With a reclaim hook, every thread's unspent credit is
 * pulled back and the request tried again before it is refused. */
int vg__budget_reserve(vg__budget_t *b, uint64_t n);
/* Adds n to use if that stays within the limit, nothing else: no refusal
 * counted, no reclaim (credit.c takes its slices with it). Per-process
 * budgets only (b->shared == NULL). */
bool vg__budget_try_reserve(vg__budget_t *b, uint64_t n);
/* The reserved bytes are now really allocated: updates peak and level. */
void vg__budget_commit(vg__budget_t *b, uint64_t n);
/* Undoes a reserve whose allocation failed. */
void vg__budget_rollback(vg__budget_t *b, uint64_t n);
/* Returns committed bytes on free; updates level. */
void vg__budget_release(vg__budget_t *b, uint64_t n);
/* The same in two steps, for credit.c, which gives bytes back where no
 * level callback may run (under its reclaim lock, inside an owner's
 * operation): release_quiet moves `used` only (a per-process budget, never
 * a shared one); relevel, called later, moves the level. */
void vg__budget_release_quiet(vg__budget_t *b, uint64_t n);
void vg__budget_relevel(vg__budget_t *b);
/* Charges n without a limit check (memory the driver already handed out,
 * e.g. measured overhead); updates peak and level. */
void vg__budget_force(vg__budget_t *b, uint64_t n);
/* As force, without peak and level, so no level callback runs: callable
 * under a lock (account_streams.c charges a pool's growth under the lock that
 * orders its readings). vg__budget_commit moves peak and level after. */
void vg__budget_force_quiet(vg__budget_t *b, uint64_t n);
/* After a force: whether use is over the limit once every thread's
 * unspent credit has been pulled back (credit is spendable, so it counts
 * until then). Counts a refusal when it is. Slow path. */
bool vg__budget_over(vg__budget_t *b);
/* limit - used, or 0 when over. */
uint64_t vg__budget_available(const vg__budget_t *b);
/* The limit and use now (a shared budget's are read from its region:
 * slow path, takes its lock). Use is real use: a budget with credit
 * (reclaim set) subtracts what threads hold unspent (a walk of the
 * threads: not for the hot path). */
void vg__budget_read(const vg__budget_t *b, uint64_t *limit, uint64_t *used);
/* Use as this process last saw it (a shared budget's mirror), less the
 * credit threads hold unspent: what allocations really hold. */
uint64_t vg__budget_used(const vg__budget_t *b);
vg_pressure_t vg__budget_level(const vg__budget_t *b);
/* The level for a use/limit pair given the current level (hysteresis). Pure. */
vg_pressure_t vg__pressure_for(uint64_t used, uint64_t limit,
                               vg_pressure_t current);
/* Registers a level hook; VG_ENOMEM when VG__LEVEL_HOOKS are taken. */
int vg__budget_on_level(vg__budget_t *b, vg__level_fn fn, void *user);
/* Fork steps (fork.c, rank LEVEL_HOOKS): take and release hook_lock. */
void vg__budget_prefork(void);
void vg__budget_postfork_parent(void);
void vg__budget_postfork_child(void);

/* ------------------------------------------ ledger.c, ledger_walk.c */

/* One live (or recently freed) allocation. */
typedef struct vg__alloc {
    vg_devptr_t ptr;     /* what the caller sees */
    vg_devptr_t base;    /* what the driver returned (== ptr unless aligned) */
    uint64_t size;       /* bytes the caller asked for */
    uint64_t charged;    /* bytes charged to budgets */
    uint64_t seq;        /* process-wide allocation sequence number */
    const void *owner;   /* the vg_pool_t, or NULL for the shim */
    uint64_t handle;     /* the stream-ordered pool it came from, an array's
                            context, a graph's or executable's key (bit 63
                            set: only a graph memory node), else 0; a
                            vg_pool_t's blocks: vg_pool.h */
    uint32_t tid;
    int16_t device;
    uint8_t kind;        /* vg_kind_t */
    bool pooled;         /* the shim's cache mode served it: handle = chunk */
    uint32_t site;       /* call-site id (audit.c), 0 when none was taken */
    char tag[VG__TAG_LEN];
} vg__alloc_t;

/* The process's live allocations keyed by ptr, sharded by the thread that
 * first allocated in each 64 KiB of keys (so threads rarely share a lock
 * or a cache line), plus a bounded quarantine of recently freed ones: the
 * last VG__LEDGER_RING removals of each shard. Records are recycled from
 * per-shard free lists: after warm-up, insert and remove do not call
 * malloc. */
#define VG__LEDGER_RING 64u

/* Next sequence number: unique in the process, increasing within a thread
 * (threads take blocks of 64 from the shared counter: the refill), never
 * 0. Inline: every allocation takes one. */
uint64_t vg__ledger_seq_refill(void);
static inline uint64_t vg__ledger_next_seq(void)
{
    if (vg__unlikely(vg__me.seq_next == vg__me.seq_end))
        return vg__ledger_seq_refill();
    return vg__me.seq_next++;
}
/* Inserts a copy of *a. VG_EINVAL if ptr is already live (the old record is
 * kept), VG_ESYS if no memory for records. */
int vg__ledger_insert(const vg__alloc_t *a);
/* The same for the calling thread's newest plain allocation (owner NULL, no
 * handle, not pooled), kept in the thread's front until it allocates again
 * (ledger_front.c); every lookup, walk and count finds it there. VG_EINVAL
 * when the key is live in this front or in the shards. */
int vg__ledger_insert_front(const vg__alloc_t *a);
/* Moves every thread's newest allocation from its front into the shards
 * (walks; and before a context goes: vg__acct_context_going). */
void vg__fronts_flush(void);
/* Removes ptr if it is live and (owner == VG__ANY_OWNER or it matches);
 * moves it to the quarantine. Optional out: *out. VG_ENOTFOUND otherwise. */
#define VG__ANY_OWNER ((const void *)-1)
int vg__ledger_remove(vg_devptr_t ptr, const void *owner, vg__alloc_t *out);
/* As vg__ledger_remove, only while ptr's live record is still the one
 * numbered `seq`: a sweep that found a record, then asked the driver
 * about it, removes nothing when the address was handed out again and
 * recorded anew meanwhile. VG_ENOTFOUND otherwise. */
int vg__ledger_remove_seq(vg_devptr_t ptr, uint64_t seq, vg__alloc_t *out);
/* Sets the `handle` of ptr's live record while it is still the one
 * numbered `seq` (a graph's nodes handed to another owner, see
 * account_graph.c). VG_ENOTFOUND otherwise, nothing changed. */
int vg__ledger_set_handle(vg_devptr_t ptr, uint64_t seq, uint64_t handle);
/* Looks up a live allocation starting exactly at ptr. */
int vg__ledger_find(vg_devptr_t ptr, vg__alloc_t *out);
/* Looks up a quarantined (recently freed) allocation containing ptr. */
int vg__ledger_find_freed(vg_devptr_t ptr, vg__alloc_t *out);
/* Number of live allocations. */
uint64_t vg__ledger_count(void);
/* The shard holding ptr's live record, -1 when none (for tests: which
 * records share a lock). */
int vg__ledger_shard_of(vg_devptr_t ptr);
/* Calls fn on a copy of each live allocation (owner filter as remove), with
 * no ledger lock held: fn may insert and remove. The ledger may change
 * meanwhile; each record is visited at most once, records removed meanwhile
 * may be missed, and records inserted into a shard after its visit began
 * are not visited. */
typedef void (*vg__alloc_visit_fn)(const vg__alloc_t *a, void *ctx);
void vg__ledger_foreach(const void *owner, vg__alloc_visit_fn fn, void *ctx);
/* Fork steps (fork.c, rank LEDGER): lock every shard, in index order, and
 * unlock them in reverse. */
void vg__ledger_prefork(void);
void vg__ledger_postfork_parent(void);
void vg__ledger_postfork_child(void);

/* -------------------------------------------------------- ptrcheck.c */

/* Classifies ptr: ledger first (live, interior via the driver's address
 * range, freed), then the driver (foreign), then the address space (host),
 * else fake, naming recognisable fake patterns. Rare path: may read
 * /proc/self/maps. */
int vg__ptr_classify(vg_devptr_t ptr, vg_ptr_info_t *info);
/* Names a recognisable synthetic pattern into out ("" if none). Pure. */
void vg__fake_pattern(vg_devptr_t ptr, char *out, size_t len);

#endif /* VG_BUDGET_H */
