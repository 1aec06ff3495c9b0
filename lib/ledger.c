/*
 * ledger.c — the process's live allocations and a quarantine of freed ones.
 *
 * One ledger per process (static state here). 64 shards, picked by the top
 * bits of a multiplicative hash of ptr, each with its own mutex, a uthash
 * table keyed by ptr, a free list of records and a ring of the last 64
 * allocations removed from it (4096 in all: the quarantine).
 *
 * Cost: insert and remove are one uncontended lock/unlock, one hash probe
 * and a 96-byte copy or two; no malloc after warm-up (records come from the
 * shard's free list, refilled in slabs out of line). Each table holds a
 * sentinel record (ptr 0, never a valid key) because uthash frees its bucket
 * array when a table becomes empty: without it, an insert/remove pair on an
 * empty shard would malloc and free every time.
 *
 * With several threads the cost is mostly cache-line traffic, not lock
 * waits: shards are picked by address, so every thread visits every shard
 * and each shard's mutex line moves between cores (measured on 2 cores: a
 * lock/unlock of a shard goes from 16 to ~50 ns with a second thread doing
 * the same on other pointers). Two threads meet on one lock 1/64 of the time.
 *
 * Fork: pthread_atfork locks every shard in prepare and unlocks in parent and
 * child, so a fork while another thread is inside an insert cannot leave
 * that shard locked forever in the child.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "vg_internal.h"

/* uthash configuration: the bucket hash is bits 32.. of the same 64-bit
 * multiplicative hash whose top bits pick the shard (independent bits),
 * and out-of-memory is reported (rec->hh.tbl == NULL), never exit(). */
#define VG__GOLDEN 0x9E3779B97F4A7C15ull
#define HASH_FUNCTION(keyptr, keylen, hashv)                                   \
    ((hashv) = (unsigned)((*(const uint64_t *)(keyptr) * VG__GOLDEN) >> 32))
#define HASH_NONFATAL_OOM 1
#include <uthash.h>

/* 32 shards: two of 16 threads share one 1 time in 32. Fork takes every
 * shard lock, and more than 64 locks held at once also overflow
 * ThreadSanitizer's deadlock detector (a hard CHECK), so stay well below. */
#define VG__SHARD_BITS 5
#define VG__SHARDS (1u << VG__SHARD_BITS)
#define VG__RING 128u         /* quarantined records per shard (4096 in all) */
#define VG__SLAB 64u          /* records per free-list refill */

typedef struct vg__rec {
    vg__alloc_t a; /* uthash key: a.ptr */
    UT_hash_handle hh;
    struct vg__rec *next_free;
} vg__rec_t;

typedef struct vg__shard {
    pthread_mutex_t mu;
    vg__rec_t *table;      /* NULL until the sentinel is added */
    vg__rec_t *free;
    _Atomic uint64_t live; /* written under mu; read lock-free by count() */
    unsigned ring_next;    /* next ring slot to overwrite */
    unsigned ring_len;     /* filled slots, <= VG__RING */
    vg__rec_t sentinel;
    vg__alloc_t ring[VG__RING];
} __attribute__((aligned(64))) vg__shard_t;

static vg__shard_t shards[VG__SHARDS] = {
    [0 ... VG__SHARDS - 1] = {.mu = PTHREAD_MUTEX_INITIALIZER},
};
static _Atomic uint64_t seq_counter;

static inline vg__shard_t *shard_of(vg_devptr_t ptr)
{
    return &shards[(ptr * VG__GOLDEN) >> (64 - VG__SHARD_BITS)];
}

static void lock_all(void)
{
    for (unsigned i = 0; i < VG__SHARDS; i++)
        pthread_mutex_lock(&shards[i].mu);
}

static void unlock_all(void)
{
    for (unsigned i = VG__SHARDS; i-- > 0;)
        pthread_mutex_unlock(&shards[i].mu);
}

/* Registered when the library loads, before any shard lock can be held: a
 * registration made lazily under a shard lock let a fork that came first
 * copy that locked shard into the child, which then hung on it. In the
 * child only the forking thread exists, and it holds every lock (taken in
 * prepare), so unlocking is valid there too. Touches no driver. */
__attribute__((constructor)) static void register_atfork(void)
{
    pthread_atfork(lock_all, unlock_all, unlock_all);
}

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

static _Thread_local uint64_t seq_next, seq_end;

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
    pthread_mutex_lock(&s->mu);
    int rc = insert_locked(s, a);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int vg__ledger_remove(vg_devptr_t ptr, const void *owner, vg__alloc_t *out)
{
    if (ptr == 0)
        return VG_ENOTFOUND;
    vg__shard_t *s = shard_of(ptr);
    int rc = VG_ENOTFOUND;
    pthread_mutex_lock(&s->mu);
    vg__rec_t *r = shard_find(s, ptr);
    if (!r || (owner != VG__ANY_OWNER && r->a.owner != owner))
        goto out;
    HASH_DEL(s->table, r);
    if (out)
        *out = r->a;
    s->ring[s->ring_next] = r->a;
    s->ring_next = (s->ring_next + 1) % VG__RING;
    if (s->ring_len < VG__RING)
        s->ring_len++;
    r->next_free = s->free;
    s->free = r;
    atomic_store_explicit(&s->live,
                          atomic_load_explicit(&s->live, memory_order_relaxed) - 1,
                          memory_order_relaxed);
    rc = VG_OK;
out:
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int vg__ledger_find(vg_devptr_t ptr, vg__alloc_t *out)
{
    if (ptr == 0)
        return VG_ENOTFOUND;
    vg__shard_t *s = shard_of(ptr);
    pthread_mutex_lock(&s->mu);
    vg__rec_t *r = shard_find(s, ptr);
    if (r && out)
        *out = r->a;
    pthread_mutex_unlock(&s->mu);
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
 * `exact`. Under s->mu. */
static const vg__alloc_t *ring_match(const vg__shard_t *s, vg_devptr_t ptr,
                                     bool exact)
{
    const vg__alloc_t *best = NULL;
    for (unsigned i = 0; i < s->ring_len; i++) {
        const vg__alloc_t *a = &s->ring[i];
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
    pthread_mutex_lock(&own->mu);
    const vg__alloc_t *m = ring_match(own, ptr, true);
    if (m) {
        found = *m;
        have = true;
    }
    pthread_mutex_unlock(&own->mu);
    for (unsigned i = 0; !have && i < VG__SHARDS; i++) {
        pthread_mutex_lock(&shards[i].mu);
        m = ring_match(&shards[i], ptr, false);
        if (m && (!have || m->seq > found.seq)) {
            found = *m;
            have = true;
        }
        pthread_mutex_unlock(&shards[i].mu);
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

/* Copies up to cap matching records of s, skipping the first *pos records of
 * the table's insertion-ordered list; advances *pos. Under s->mu. */
static size_t copy_chunk(vg__shard_t *s, const void *owner, size_t *pos,
                         vg__alloc_t *buf, size_t cap)
{
    size_t n = 0, i = 0;
    for (vg__rec_t *r = s->table; r && n < cap; r = r->hh.next, i++) {
        if (i < *pos || r == &s->sentinel || !owner_matches(&r->a, owner))
            continue;
        buf[n++] = r->a;
        *pos = i + 1;
    }
    if (n < cap)
        *pos = SIZE_MAX; /* reached the end */
    return n;
}

/*
 * Visits a shard in chunks of a stack buffer, calling fn with no lock held
 * (fn may call back into the ledger). Between chunks the lock is dropped:
 * uthash appends new records at the tail and removals only shift later
 * records towards the head, so a position never points at a record already
 * visited (at most once); records removed meanwhile may be missed, which the
 * contract allows.
 */
static void visit_shard(vg__shard_t *s, const void *owner,
                        vg__alloc_visit_fn fn, void *ctx)
{
    vg__alloc_t buf[32];
    size_t pos = 0;
    while (pos != SIZE_MAX) {
        pthread_mutex_lock(&s->mu);
        size_t n = copy_chunk(s, owner, &pos, buf, 32);
        pthread_mutex_unlock(&s->mu);
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
