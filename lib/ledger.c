/*
 * ledger.c — the process's live allocations and a quarantine of freed ones.
 *
 * One ledger per process (static state here). 128 shards, picked by the
 * top bits of a multiplicative hash of ptr's 64 KiB granule, each with its
 * own spinlock, a uthash table keyed by ptr, a free list of records and a
 * ring of the last 32 records removed from it (4096 in all: the
 * quarantine). A removed record moves into the ring whole, by pointer, and
 * the one it displaces goes to the free list.
 *
 * Cost: insert and remove are one uncontended lock/unlock, one hash probe
 * and one 112-byte copy each (in from the caller, out to the caller); no
 * malloc after warm-up (records come from the shard's free list, refilled
 * in slabs out of line). Copying each freed record into the ring instead
 * cost a cold 112-byte write per remove: 31 -> 26 ns per insert+remove
 * called directly, about 1 ns of a hooked pair (2026-12-04,
 * docs/benchmarks.md). The lock is a spinlock
 * (vg__spin_lock: one atomic exchange, and a plain release store to unlock)
 * rather than a pthread mutex, whose unlock is a second atomic operation
 * and two calls: every pool pair and every hooked allocation pays insert
 * and remove. Critical sections are a hash probe and a copy, and
 * a waiter yields after a few spins, so a preempted holder costs little.
 * Each table holds a
 * sentinel record (ptr 0, never a valid key) because uthash frees its bucket
 * array when a table becomes empty: without it, an insert/remove pair on an
 * empty shard would malloc and free every time.
 *
 * With several threads the cost is mostly cache-line traffic, not lock
 * waits: a shard's lock line moves between the cores that use it (measured
 * on 2 cores: a lock/unlock of a shard goes from 16 to ~50 ns with a second
 * thread doing the same on the same shard). Shards are picked by 64 KiB
 * granule so that a thread cycling through nearby blocks (a pool magazine)
 * keeps to a few shards.
 *
 * Fork (fork.c, rank LEDGER): prepare locks every shard and parent and
 * child unlock them, so a fork while another thread is inside an insert
 * cannot leave that shard locked forever in the child.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "vg_budget.h"
#include "vg_fork.h"

/* uthash configuration: the bucket hash is bits 32.. of a 64-bit
 * multiplicative hash of ptr (the shard is picked by the same hash of ptr's
 * granule), and out-of-memory is reported (rec->hh.tbl == NULL), never
 * exit(). */
#define VG__GOLDEN 0x9E3779B97F4A7C15ull
#define HASH_FUNCTION(keyptr, keylen, hashv)                                   \
    ((hashv) = (unsigned)((*(const uint64_t *)(keyptr) * VG__GOLDEN) >> 32))
#define HASH_NONFATAL_OOM 1
#include <uthash.h>

/* 128 shards, each covering whole 64 KiB granules of address space. A pool
 * thread cycles through the blocks of its magazine (up to 64, mostly
 * consecutive addresses from one refill): keyed by the address alone, every
 * thread visited every shard and the shards' lines moved between all cores.
 * By granule, one thread's batch falls in a shard or two (measured on the
 * H100, 4 KiB pool pairs: 307 -> 147 ns per thread with 2 threads, 532 ->
 * 260 ns with 4). Fork takes every
 * shard lock (spinlocks, so ThreadSanitizer's deadlock detector, which
 * overflows above 64 mutexes held at once, does not see them). */
#define VG__SHARD_BITS 7
#define VG__SHARDS (1u << VG__SHARD_BITS)
#define VG__GRANULE_SHIFT 16  /* 64 KiB */
#define VG__RING 32u          /* quarantined records per shard (4096 in all) */
#define VG__SLAB 64u          /* records per free-list refill */
#define VG__VISIT_CHUNK 32u   /* records foreach copies per lock hold */

typedef struct vg__rec {
    vg__alloc_t a; /* uthash key: a.ptr */
    UT_hash_handle hh;
    struct vg__rec *next_free;
    uint64_t order; /* the shard's insert count when inserted (foreach) */
} vg__rec_t;

typedef struct vg__shard {
    _Atomic int lock;      /* vg__spin_lock; 0 (free) in the static image */
    vg__rec_t *table;      /* NULL until the sentinel is added */
    vg__rec_t *free;
    _Atomic uint64_t live; /* written under lock; read lock-free by count() */
    uint64_t inserts;      /* inserts so far: each record's `order` */
    unsigned ring_next;    /* next ring slot to overwrite */
    unsigned ring_len;     /* filled slots, <= VG__RING */
    vg__rec_t sentinel;
    /* The quarantine: records removed from the table, kept whole (not
     * copied) until RING removals later push them back to the free list.
     * Slots [0, ring_len) are set. */
    vg__rec_t *ring[VG__RING];
} __attribute__((aligned(64))) vg__shard_t;

static vg__shard_t shards[VG__SHARDS];
static _Atomic uint64_t seq_counter;

static inline vg__shard_t *shard_of(vg_devptr_t ptr)
{
    return &shards[((ptr >> VG__GRANULE_SHIFT) * VG__GOLDEN) >>
                   (64 - VG__SHARD_BITS)];
}

void vg__ledger_prefork(void)
{
    for (unsigned i = 0; i < VG__SHARDS; i++)
        vg__spin_lock(&shards[i].lock);
}

void vg__ledger_postfork_parent(void)
{
    for (unsigned i = VG__SHARDS; i-- > 0;)
        vg__spin_unlock(&shards[i].lock);
}

/* In the child only the forking thread exists, and it holds every shard
 * (taken in prepare), so unlocking is valid there too. */
void vg__ledger_postfork_child(void)
{
    vg__ledger_postfork_parent();
}

/* Links fork.c, whose one registration at load covers the shards, into
 * any program that uses the ledger (a static link pulls in only the
 * objects it references; the shards take no ranked mutex that would). */
__attribute__((used)) static void (*const fork_sequence)(void) = vg__fork_prepare;

/* First use of a shard (under its lock): add the sentinel. VG_ESYS when
 * uthash cannot allocate its bucket array. */
__attribute__((noinline)) static int shard_seed(vg__shard_t *s)
{
    memset(&s->sentinel, 0, sizeof s->sentinel);
    vg__rec_t *sent = &s->sentinel;
    HASH_ADD(hh, s->table, a.ptr, sizeof(vg_devptr_t), sent);
    return sent->hh.tbl ? VG_OK : VG_ESYS;
}

/* Refills the free list with one slab (under the shard lock). Slabs are
 * never returned: the ledger lives as long as the process. */
__attribute__((noinline)) static int shard_refill(vg__shard_t *s)
{
    vg__rec_t *slab = calloc(VG__SLAB, sizeof *slab);
    if (!slab)
        return VG_ESYS;
    for (unsigned i = 0; i < VG__SLAB; i++) {
        slab[i].next_free = s->free;
        s->free = &slab[i];
    }
    return VG_OK;
}

static inline vg__rec_t *shard_find(vg__shard_t *s, vg_devptr_t ptr)
{
    vg__rec_t *r = NULL;
    if (s->table)
        HASH_FIND(hh, s->table, &ptr, sizeof ptr, r);
    return r;
}

/* Each thread takes sequence numbers from the shared counter a block at a
 * time, so 16 threads allocating at once do not all write one cache line
 * (measured: that one increment alone held two threads to x1.1 of one).
 * Numbers stay unique and increase within a thread; across threads, `ts`
 * orders events. A forked child keeps its parent's block: its numbers are
 * unique within the child, which is a process of its own. */
#define VG__SEQ_BLOCK 64u

/* initial-exec: the default model in a -fPIC library calls __tls_get_addr
 * on every access (10% of a hooked pair on the null driver). */
static _Thread_local uint64_t seq_next __attribute__((tls_model("initial-exec")));
static _Thread_local uint64_t seq_end __attribute__((tls_model("initial-exec")));

uint64_t vg__ledger_next_seq(void)
{
    if (vg__unlikely(seq_next == seq_end)) {
        seq_next = atomic_fetch_add_explicit(&seq_counter, VG__SEQ_BLOCK,
                                             memory_order_relaxed) + 1;
        seq_end = seq_next + VG__SEQ_BLOCK;
    }
    return seq_next++;
}

static int insert_locked(vg__shard_t *s, const vg__alloc_t *a)
{
    if (vg__unlikely(!s->table) && shard_seed(s) != VG_OK)
        return VG_ESYS;
    if (shard_find(s, a->ptr))
        return VG_EINVAL;
    if (vg__unlikely(!s->free) && shard_refill(s) != VG_OK)
        return VG_ESYS;
    vg__rec_t *r = s->free;
    s->free = r->next_free;
    r->a = *a;
    r->order = ++s->inserts;
    HASH_ADD(hh, s->table, a.ptr, sizeof(vg_devptr_t), r);
    if (vg__unlikely(!r->hh.tbl)) { /* bucket expansion failed */
        r->next_free = s->free;
        s->free = r;
        return VG_ESYS;
    }
    atomic_store_explicit(&s->live,
                          atomic_load_explicit(&s->live, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    return VG_OK;
}

int vg__ledger_insert(const vg__alloc_t *a)
{
    if (!a || a->ptr == 0)
        return VG_EINVAL;
    vg__shard_t *s = shard_of(a->ptr);
    vg__spin_lock(&s->lock);
    int rc = insert_locked(s, a);
    vg__spin_unlock(&s->lock);
    return rc;
}

int vg__ledger_remove(vg_devptr_t ptr, const void *owner, vg__alloc_t *out)
{
    if (ptr == 0)
        return VG_ENOTFOUND;
    vg__shard_t *s = shard_of(ptr);
    int rc = VG_ENOTFOUND;
    vg__spin_lock(&s->lock);
    vg__rec_t *r = shard_find(s, ptr);
    if (!r || (owner != VG__ANY_OWNER && r->a.owner != owner))
        goto out;
    HASH_DEL(s->table, r);
    if (out)
        *out = r->a;
    /* r itself enters the quarantine; the record it displaces (freed RING
     * removals ago in this shard) becomes free. */
    vg__rec_t *old = s->ring[s->ring_next];
    s->ring[s->ring_next] = r;
    s->ring_next = (s->ring_next + 1) % VG__RING;
    if (old) {
        old->next_free = s->free;
        s->free = old;
        /* The next insert here takes it: warm the rest of it meanwhile. */
        __builtin_prefetch(&old->a, 1);
        __builtin_prefetch(&old->a.tag, 1);
        __builtin_prefetch(&old->hh, 1);
    } else {
        s->ring_len++;
    }
    atomic_store_explicit(&s->live,
                          atomic_load_explicit(&s->live, memory_order_relaxed) - 1,
                          memory_order_relaxed);
    rc = VG_OK;
out:
    vg__spin_unlock(&s->lock);
    return rc;
}

int vg__ledger_find(vg_devptr_t ptr, vg__alloc_t *out)
{
    if (ptr == 0)
        return VG_ENOTFOUND;
    vg__shard_t *s = shard_of(ptr);
    vg__spin_lock(&s->lock);
    vg__rec_t *r = shard_find(s, ptr);
    if (r && out)
        *out = r->a;
    vg__spin_unlock(&s->lock);
    return r ? VG_OK : VG_ENOTFOUND;
}

/* The bytes a freed record covered: from the driver's base to the end of
 * whichever is larger, the caller's range or the charged range. */
static inline bool freed_contains(const vg__alloc_t *a, vg_devptr_t ptr)
{
    uint64_t end_user = a->ptr + a->size;
    uint64_t end_charged = a->base + a->charged;
    uint64_t end = end_user > end_charged ? end_user : end_charged;
    return ptr == a->ptr || (ptr >= a->base && ptr < end);
}

/* Newest (highest seq) ring entry of s matching ptr; exact matches only when
 * `exact`. Under s->lock. */
static const vg__alloc_t *ring_match(const vg__shard_t *s, vg_devptr_t ptr,
                                     bool exact)
{
    const vg__alloc_t *best = NULL;
    for (unsigned i = 0; i < s->ring_len; i++) {
        const vg__alloc_t *a = &s->ring[i]->a;
        bool hit = exact ? (a->ptr == ptr || a->base == ptr)
                         : freed_contains(a, ptr);
        if (hit && (!best || a->seq > best->seq))
            best = a;
    }
    return best;
}

/* Rare path: exact base in ptr's own shard, else containment in every ring
 * (newest wins when an address was freed more than once). */
int vg__ledger_find_freed(vg_devptr_t ptr, vg__alloc_t *out)
{
    vg__alloc_t found;
    bool have = false;
    vg__shard_t *own = shard_of(ptr);
    vg__spin_lock(&own->lock);
    const vg__alloc_t *m = ring_match(own, ptr, true);
    if (m) {
        found = *m;
        have = true;
    }
    vg__spin_unlock(&own->lock);
    for (unsigned i = 0; !have && i < VG__SHARDS; i++) {
        vg__spin_lock(&shards[i].lock);
        m = ring_match(&shards[i], ptr, false);
        if (m && (!have || m->seq > found.seq)) {
            found = *m;
            have = true;
        }
        vg__spin_unlock(&shards[i].lock);
    }
    if (have && out)
        *out = found;
    return have ? VG_OK : VG_ENOTFOUND;
}

uint64_t vg__ledger_count(void)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < VG__SHARDS; i++)
        n += atomic_load_explicit(&shards[i].live, memory_order_relaxed);
    return n;
}

static inline bool owner_matches(const vg__alloc_t *a, const void *owner)
{
    return owner == VG__ANY_OWNER || a->owner == owner;
}

/* Copies up to cap matching records of s inserted after the one numbered
 * *after, in insertion order (the table's list), and advances *after; sets
 * *done when the list ends. Under s->lock. */
static size_t copy_chunk(vg__shard_t *s, const void *owner, uint64_t *after,
                         vg__alloc_t *buf, bool *done)
{
    size_t n = 0;
    vg__rec_t *r;
    for (r = s->table; r && n < VG__VISIT_CHUNK; r = r->hh.next) {
        if (r == &s->sentinel || r->order <= *after ||
            !owner_matches(&r->a, owner))
            continue;
        buf[n++] = r->a;
        *after = r->order;
    }
    *done = r == NULL;
    return n;
}

/*
 * Visits a shard in chunks of a stack buffer, calling fn with no lock held
 * (fn may call back into the ledger, e.g. remove what it visits). Between
 * chunks the lock is dropped; the next chunk resumes after the last record
 * visited by insertion number, not by position (fn's removals would shift
 * positions and skip records). Each record is visited at most once;
 * records inserted meanwhile may be visited, records removed meanwhile
 * may be missed, which the contract allows. O(records) per chunk: a rare
 * path (reports, leak checks, destroy).
 */
static void visit_shard(vg__shard_t *s, const void *owner,
                        vg__alloc_visit_fn fn, void *ctx)
{
    vg__alloc_t buf[VG__VISIT_CHUNK];
    uint64_t after = 0;
    bool done = false;
    while (!done) {
        vg__spin_lock(&s->lock);
        size_t n = copy_chunk(s, owner, &after, buf, &done);
        vg__spin_unlock(&s->lock);
        for (size_t i = 0; i < n; i++)
            fn(&buf[i], ctx);
    }
}

void vg__ledger_foreach(const void *owner, vg__alloc_visit_fn fn, void *ctx)
{
    if (!fn)
        return;
    for (unsigned i = 0; i < VG__SHARDS; i++)
        visit_shard(&shards[i], owner, fn, ctx);
}
