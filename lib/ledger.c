/*
 * ledger.c — the process's live allocations and a quarantine of freed ones.
 *
 * One ledger per process (static state here): 128 shards, each with its
 * own spinlock, a table keyed by ptr (vg_keymap.h), a free list of records and a
 * ring of the last 64 records removed from it (the quarantine). A
 * removed record moves into the ring whole, by pointer, and the one it
 * displaces goes to the free list. The ring is short because the next
 * insert takes the record it displaces: with 1024 a thread cycled through
 * 180 KB of records and cache mode on the H200 did 3.1-3.4 M pairs/s on
 * one thread, against 5.6-9.3 M with 32 (docs/benchmarks.md).
 *
 * A thread's newest plain allocation waits in the thread's front
 * (ledger_front.c) until the thread allocates again: an allocation freed
 * by the thread that made it, before its next, never reaches a shard.
 * Every lookup here that misses asks the fronts to push the key in.
 *
 * Shards follow threads, not addresses. Each thread has a home shard
 * (handed out round-robin at its first insert). Every key lies in a 64 KiB
 * granule of the 64-bit key space, and a directory (a radix tree of
 * granules, lock-free to read) says which shard holds the records of each
 * granule, and how many: the first thread to insert into an unowned
 * granule makes it its home shard's, and an owned granule whose count has
 * fallen to 0 passes to the next inserter's home. So a thread that
 * allocates and frees its own memory touches only its own shard's lines
 * and the directory entries of its granules, whatever addresses the
 * driver hands out; a free from another thread finds the record through
 * the directory in one step (no scan, no global lock) and takes the
 * owner's lock.
 *
 * Split granules. Threads whose live keys are neighbours would share a
 * granule, its entry and its owner's lock: the real driver hands 16
 * threads' small allocations out side by side (on the H200, 16 threads'
 * 4 KiB pairs all fell in one granule). So the first insert into a granule
 * whose records are another shard's splits it (split()): the granule's
 * entry then points to 16 entries of its own, one per 4 KiB, each on its
 * own cache line and each behaving as a granule's entry did. A split is
 * for good and needs the owner's lock and a scan of its table (not done
 * above SPLIT_SCAN_MAX records). A 4 KiB granule everywhere would do the
 * same for neighbours, but costs a thread walking fresh addresses a claim
 * (a compare-and-swap) per allocation instead of one per 64 KiB
 * (docs/benchmarks.md, "Pool arenas").
 *
 * Measured before this (shards picked by a hash of the granule): a thread
 * walking fresh addresses moved to a new shard every 64 KiB, whose lock,
 * table, free list and ring lines had last been written by other cores;
 * on 2 cores two threads did x1.2 one thread's pairs, and with the
 * granule made 16 MiB (one shard per thread in effect) x1.9
 * (docs/benchmarks.md).
 *
 * The directory's invariant: every record keyed in granule g (in a split
 * granule: in one 4 KiB of it) lives in the shard owner(g). A directory
 * entry is owner+1 in its low 8 bits (0: unowned) and the count of g's
 * records in the owner above them, or, split, the address of its 16
 * entries (split_of()). It changes from unowned to owned by a
 * compare-and-swap; every later write (count up, count down, a hand-over
 * at count 0, a split) is made holding the current owner's lock. A reader
 * loads the entry, takes the owner's lock and checks the entry again (it
 * may have been handed over or split meanwhile). Directory nodes and
 * split entries are never freed.
 *
 * Cost: insert and remove are one uncontended lock/unlock, one directory
 * lookup (the thread keeps its last leaf), one hash probe and one 104-byte
 * copy each (in from the caller, out to the caller); no malloc after
 * warm-up (records come from the shard's free list, refilled in slabs out
 * of line). The lock is a spinlock (vg__spin_lock: one atomic exchange,
 * and a plain release store to unlock) rather than a pthread mutex, whose
 * unlock is a second atomic operation and two calls. Critical sections
 * are a hash probe and a copy, and a waiter yields after a few spins, so a
 * preempted holder costs little. A record is two cache lines, and the
 * table's probe usually one more (the key sits beside its record's
 * address), so a pair writes few lines that the driver may have evicted
 * between calls. A table halves once it is less than 1/8 full (vg_keymap.h);
 * the slabs of records are kept.
 *
 * Fork (fork.c, rank LEDGER): prepare locks every shard and parent and
 * child unlock them, so a fork while another thread is inside an insert
 * cannot leave that shard locked forever in the child.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "vg_fork.h"
#include "vg_ledger.h"

static vg__shard_t shards[VG__SHARDS];
static _Atomic uint64_t seq_counter;

/* ------------------------------------------------------------ directory */

/* Granule numbers have 48 bits (64 - VG__GRANULE_SHIFT): four levels of
 * 12. A leaf covers 4096 granules (256 MiB of keys) in 32 KiB. */
#define DIR_BITS 12
#define DIR_FAN (1u << DIR_BITS)
#define DIR_MASK (DIR_FAN - 1)
#define ENTRY_OWNER 0xffull /* owner + 1; 0: unowned */
#define ENTRY_ONE 0x100ull  /* one record in the count above the owner */
#define FINE_SHIFT 12 /* a split granule has an entry per 4 KiB */
#define FINE_SUBS (1u << (VG__GRANULE_SHIFT - FINE_SHIFT))
/* A split scans its owner's table: not when that holds more records. */
#define SPLIT_SCAN_MAX 4096u

/* The entries of a split granule, a cache line each (neighbouring threads
 * write neighbouring entries). Never freed, like the directory's nodes. */
typedef struct fine {
    struct {
        _Atomic uint64_t entry;
        char pad[64 - sizeof(uint64_t)];
    } sub[FINE_SUBS];
} fine_t;

typedef struct dir_node {
    _Atomic(void *) slot[DIR_FAN]; /* a dir_node, or a leaf at the last level */
} dir_node_t;
typedef struct vg__dir_leaf {
    _Atomic uint64_t entry[DIR_FAN];
} dir_leaf_t;

static dir_node_t dir_root;

/* The thread's last leaf, by granule >> DIR_BITS (+ 1: 0 is none), is
 * vg__me.leaf_tag and .leaf_last; its home shard + 1 (0: not handed out
 * yet) vg__me.home_plus1 (vg_base.h). */
static _Atomic unsigned homes_given;

/* The child at `slot`, made (zeroed) when absent and `make`. NULL when
 * absent and not made, or out of memory. */
static void *dir_child(_Atomic(void *) *slot, size_t size, bool make)
{
    void *c = atomic_load_explicit(slot, memory_order_acquire);
    if (c || !make)
        return c;
    void *fresh = calloc(1, size);
    if (!fresh)
        return NULL;
    if (atomic_compare_exchange_strong_explicit(slot, &c, fresh, memory_order_acq_rel,
                                                memory_order_acquire))
        return fresh;
    free(fresh); /* another thread made it first: c is theirs */
    return c;
}

__attribute__((noinline)) static dir_leaf_t *leaf_walk(uint64_t g, bool make)
{
    dir_node_t *n = &dir_root;
    for (int shift = 3 * DIR_BITS; shift > DIR_BITS && n; shift -= DIR_BITS)
        n = dir_child(&n->slot[(g >> shift) & DIR_MASK], sizeof(dir_node_t), make);
    if (!n)
        return NULL;
    dir_leaf_t *leaf = dir_child(&n->slot[(g >> DIR_BITS) & DIR_MASK], sizeof(dir_leaf_t), make);
    if (leaf) {
        vg__me.leaf_tag = (g >> DIR_BITS) + 1;
        vg__me.leaf_last = leaf;
    }
    return leaf;
}

/* The directory entry of key's granule; NULL when it was never made (and
 * not `make`) or there is no memory for it. */
static inline _Atomic uint64_t *dir_entry(vg_devptr_t key, bool make)
{
    uint64_t g = key >> VG__GRANULE_SHIFT;
    dir_leaf_t *leaf = vg__likely(vg__me.leaf_tag == (g >> DIR_BITS) + 1) ? vg__me.leaf_last
                                                                    : leaf_walk(g, make);
    return leaf ? &leaf->entry[g & DIR_MASK] : NULL;
}

static inline unsigned owner_of(uint64_t entry)
{
    return (unsigned)(entry & ENTRY_OWNER);
}

/* A split granule's entry is its fine_t's address, plain (so that leak
 * checkers see it): 256-byte aligned, so its owner bits are 0, and not 0,
 * which is what an unowned entry always is. */
static inline bool split_of(uint64_t entry)
{
    return entry && !owner_of(entry);
}

/* The entry of key's 4 KiB in the split granule whose entry reads v. */
static inline _Atomic uint64_t *fine_entry(uint64_t v, vg_devptr_t key)
{
    fine_t *f = (fine_t *)(uintptr_t)v;
    return &f->sub[(key >> FINE_SHIFT) & (FINE_SUBS - 1)].entry;
}

/*
 * Splits key's granule (entry e, owned by s, whose lock is held) into
 * FINE_SUBS entries of its own, each owned by s with the count of s's
 * records in it, or unowned: threads whose keys are neighbours (the real
 * driver hands 16 threads' small allocations out side by side) then stop
 * sharing one shard. Counting scans s's table, so a shard holding more
 * than SPLIT_SCAN_MAX records is not split (nor is any without memory).
 * The invariant holds throughout: s holds every record of the granule,
 * and no entry of it changes without s's lock. A split is for good.
 */
__attribute__((noinline, cold)) static bool split(_Atomic uint64_t *e, vg__shard_t *s,
                                                  vg_devptr_t key)
{
    if (atomic_load_explicit(&s->live, memory_order_relaxed) > SPLIT_SCAN_MAX)
        return false;
    fine_t *f = aligned_alloc(256, sizeof *f);
    if (!f)
        return false;
    uint64_t count[FINE_SUBS] = {0}, g = key >> VG__GRANULE_SHIFT;
    vg__rec_t *r;
    for (uint32_t i = 0; (r = vg__keymap_next(&s->table, &i));) {
        if (r->a.ptr >> VG__GRANULE_SHIFT == g)
            count[(r->a.ptr >> FINE_SHIFT) & (FINE_SUBS - 1)]++;
    }
    uint64_t owner = (uint64_t)(s - shards) + 1, total = 0;
    for (unsigned i = 0; i < FINE_SUBS; i++) {
        atomic_init(&f->sub[i].entry, count[i] ? owner | count[i] * ENTRY_ONE : 0);
        total += count[i];
    }
    if (total != atomic_load_explicit(e, memory_order_relaxed) / ENTRY_ONE) {
        free(f); /* the counts disagree: leave the granule whole */
        return false;
    }
    atomic_store_explicit(e, (uint64_t)(uintptr_t)f, memory_order_release);
    return true;
}

/* The calling thread's home shard + 1. */
static inline unsigned home(void)
{
    if (vg__unlikely(!vg__me.home_plus1))
        vg__me.home_plus1 = atomic_fetch_add_explicit(&homes_given, 1, memory_order_relaxed) %
                         VG__SHARDS + 1;
    return vg__me.home_plus1;
}

/* A locked shard and the directory entry its records of a key count in. */
typedef struct owned {
    vg__shard_t *s; /* NULL: none (an unowned entry, not claiming) */
    _Atomic uint64_t *e;
} owned_t;

/*
 * Locks and returns the shard holding key's records, with the entry they
 * are counted in: the granule's, or key's 4 KiB of it once it
 * is split. With `claim` (an insert) an unowned entry becomes the calling
 * thread's home shard's, an owned one with no records passes to it when
 * its lock is free at once (never waiting on a second lock while holding
 * one), and a granule owned by another shard, with records, is split
 * (split() above). Without `claim`, NULL for an unowned entry.
 */
__attribute__((noinline)) static owned_t lock_owner_slow(_Atomic uint64_t *e, vg_devptr_t key,
                                                        bool claim, bool sub)
{
    for (;;) { /* e is a split granule's sub-entry if `sub` */
        uint64_t v = atomic_load_explicit(e, memory_order_acquire);
        if (split_of(v)) {
            e = fine_entry(v, key);
            sub = true;
            continue;
        }
        if (!owner_of(v)) {
            if (!claim)
                return (owned_t){NULL, e};
            uint64_t mine = home();
            if (!atomic_compare_exchange_strong_explicit(e, &v, mine, memory_order_relaxed,
                                                         memory_order_relaxed))
                continue;
            v = mine;
        }
        unsigned o = owner_of(v);
        vg__shard_t *s = &shards[o - 1];
        vg__spin_lock(&s->lock);
        v = atomic_load_explicit(e, memory_order_relaxed);
        if (vg__unlikely(owner_of(v) != o)) {
            vg__spin_unlock(&s->lock); /* handed over or split meanwhile */
            continue;
        }
        unsigned mine = claim ? home() : o;
        if (mine == o)
            return (owned_t){s, e};
        if (v >= ENTRY_ONE) {
            if (sub || !split(e, s, key))
                return (owned_t){s, e}; /* this insert joins the owner's shard */
            vg__spin_unlock(&s->lock); /* look again, at key's 4 KiB */
            continue;
        }
        vg__shard_t *h = &shards[mine - 1];
        if (!vg__spin_trylock(&h->lock))
            return (owned_t){s, e}; /* busy: this insert stays with the owner */
        atomic_store_explicit(e, mine, memory_order_relaxed);
        vg__spin_unlock(&s->lock);
        return (owned_t){h, e};
    }
}

/* The common case inline: the granule is owned, and by this thread's home
 * shard when inserting (else the slow path may hand it over, split it, or
 * find it split). A split granule's entry reads as unowned. */
static inline owned_t lock_owner(_Atomic uint64_t *e, vg_devptr_t key, bool claim)
{
    uint64_t v = atomic_load_explicit(e, memory_order_relaxed);
    bool sub = false;
    if (vg__unlikely(split_of(v))) { /* key's 4 KiB has the entry */
        /* Again, acquiring what split() published (a split is for good). */
        v = atomic_load_explicit(e, memory_order_acquire);
        e = fine_entry(v, key);
        v = atomic_load_explicit(e, memory_order_relaxed);
        sub = true;
    }
    unsigned o = owner_of(v);
    if (vg__likely(o) && (!claim || o == vg__me.home_plus1)) {
        vg__shard_t *s = &shards[o - 1];
        vg__spin_lock(&s->lock);
        if (vg__likely(owner_of(atomic_load_explicit(e, memory_order_relaxed)) == o))
            return (owned_t){s, e};
        vg__spin_unlock(&s->lock); /* handed over or split meanwhile */
    }
    return lock_owner_slow(e, key, claim, sub);
}

/* One record more (ENTRY_ONE) or fewer (-ENTRY_ONE) in e's granule:
 * under the owner's lock, so a plain store. */
static inline void entry_add(_Atomic uint64_t *e, uint64_t delta)
{
    atomic_store_explicit(e, atomic_load_explicit(e, memory_order_relaxed) + delta,
                          memory_order_relaxed);
}

void vg__ledger_prefork(void)
{
    vg__fronts_prefork(); /* a front's lock comes before a shard's */
    for (unsigned i = 0; i < VG__SHARDS; i++)
        vg__spin_lock(&shards[i].lock);
}

void vg__ledger_postfork_parent(void)
{
    for (unsigned i = VG__SHARDS; i-- > 0;)
        vg__spin_unlock(&shards[i].lock);
    vg__fronts_postfork();
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

/* Refills the free list with one slab (under the shard lock). Slabs are
 * never returned: the ledger lives as long as the process. */
__attribute__((noinline)) static int shard_refill(vg__shard_t *s)
{
    vg__rec_t *slab = aligned_alloc(_Alignof(vg__rec_t), VG__SLAB * sizeof *slab);
    if (!slab)
        return VG_ESYS;
    memset(slab, 0, VG__SLAB * sizeof *slab);
    for (unsigned i = 0; i < VG__SLAB; i++) {
        slab[i].next_free = s->free;
        s->free = &slab[i];
    }
    return VG_OK;
}

static inline vg__rec_t *shard_find(vg__shard_t *s, vg_devptr_t ptr)
{
    return vg__keymap_get(&s->table, ptr);
}

/* Each thread takes sequence numbers from the shared counter a block at a
 * time, so 16 threads allocating at once do not all write one cache line
 * (measured: that one increment alone held two threads to x1.1 of one).
 * Numbers stay unique and increase within a thread; across threads, `ts`
 * orders events. A forked child keeps its parent's block: its numbers are
 * unique within the child, which is a process of its own. */
#define VG__SEQ_BLOCK 64u

/* The block in hand: vg__me.seq_next up to vg__me.seq_end. */

uint64_t vg__ledger_seq_refill(void)
{
    vg__me.seq_next = atomic_fetch_add_explicit(&seq_counter, VG__SEQ_BLOCK,
                                                memory_order_relaxed) + 1;
    vg__me.seq_end = vg__me.seq_next + VG__SEQ_BLOCK;
    return vg__me.seq_next++;
}

static int insert_locked(vg__shard_t *s, const vg__alloc_t *a)
{
    if (vg__unlikely(!s->free) && shard_refill(s) != VG_OK)
        return shard_find(s, a->ptr) ? VG_EINVAL : VG_ESYS;
    vg__rec_t *r = s->free;
    int rc = vg__keymap_add(&s->table, a->ptr, r);
    if (vg__unlikely(rc != VG_OK))
        return rc; /* a duplicate, or the table could not grow */
    s->free = r->next_free;
    r->a = *a;
    r->order = ++s->inserts;
    atomic_store_explicit(&s->live,
                          atomic_load_explicit(&s->live, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    return VG_OK;
}

VG__HOT int vg__ledger_insert(const vg__alloc_t *a)
{
    if (!a || a->ptr == 0)
        return VG_EINVAL;
    _Atomic uint64_t *e = dir_entry(a->ptr, true);
    if (vg__unlikely(!e))
        return VG_ESYS;
    owned_t o = lock_owner(e, a->ptr, true);
    vg__shard_t *s = o.s;
    e = o.e;
    int rc = insert_locked(s, a);
    if (vg__likely(rc == VG_OK))
        entry_add(e, ENTRY_ONE);
    vg__spin_unlock(&s->lock);
    return rc;
}

/* Takes r (slot i of s's table, counted in e) out of the table into the
 * quarantine; *out gets it. Under s's lock. */
static inline void remove_at(vg__shard_t *s, _Atomic uint64_t *e, uint32_t i, vg__rec_t *r,
                             vg__alloc_t *out)
{
    vg__keymap_del_at(&s->table, i);
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
    } else {
        s->ring_len++;
    }
    atomic_store_explicit(&s->live,
                          atomic_load_explicit(&s->live, memory_order_relaxed) - 1,
                          memory_order_relaxed);
    entry_add(e, -ENTRY_ONE);
}

/* Locks the shard that holds ptr's record, if any (o->s, NULL when none
 * does) and finds the record there: NULL when the shard has none, with
 * its slot in *slot. The caller unlocks o->s. */
static inline vg__rec_t *lock_find_in_shards(vg_devptr_t ptr, owned_t *o, uint32_t *slot)
{
    _Atomic uint64_t *e = ptr ? dir_entry(ptr, false) : NULL;
    *o = e ? lock_owner(e, ptr, false) : (owned_t){NULL, NULL};
    if (!o->s)
        return NULL;
    *slot = vg__keymap_find(&o->s->table, ptr);
    return *slot == VG__KEYMAP_NONE ? NULL : o->s->table.slot[*slot].val;
}

/* Not in the shards: the front that holds ptr as its live record, if
 * one does, pushes it in, and the shards are searched again (a front's
 * lock comes before a shard's, so o->s is unlocked first). */
__attribute__((noinline)) static vg__rec_t *lock_find_pushed(vg_devptr_t ptr, owned_t *o,
                                                           uint32_t *slot)
{
    if (o->s)
        vg__spin_unlock(&o->s->lock);
    vg__front_push(ptr);
    return lock_find_in_shards(ptr, o, slot);
}

/* lock_find_in_shards, after the fronts when the shards miss: every live
 * record, wherever it waits. */
static inline vg__rec_t *lock_find(vg_devptr_t ptr, owned_t *o, uint32_t *slot)
{
    vg__rec_t *r = lock_find_in_shards(ptr, o, slot);
    return vg__likely(r) || !ptr ? r : lock_find_pushed(ptr, o, slot);
}

VG__HOT int vg__shards_remove(vg_devptr_t ptr, const void *owner, vg__alloc_t *out)
{
    owned_t o;
    uint32_t i;
    vg__rec_t *r = lock_find(ptr, &o, &i);
    if (!o.s)
        return VG_ENOTFOUND;
    int rc = VG_ENOTFOUND;
    if (r && (owner == VG__ANY_OWNER || r->a.owner == owner)) {
        remove_at(o.s, o.e, i, r, out);
        rc = VG_OK;
    }
    vg__spin_unlock(&o.s->lock);
    return rc;
}

/* Out of line: only sweeps after a context or an owner went use it, and
 * the free path's vg__ledger_remove pays nothing for it. */
__attribute__((noinline)) int vg__ledger_remove_seq(vg_devptr_t ptr, uint64_t seq,
                                                    vg__alloc_t *out)
{
    owned_t o;
    uint32_t i;
    vg__rec_t *r = lock_find(ptr, &o, &i);
    if (!o.s)
        return VG_ENOTFOUND;
    int rc = VG_ENOTFOUND;
    if (r && r->a.seq == seq) {
        remove_at(o.s, o.e, i, r, out);
        rc = VG_OK;
    }
    vg__spin_unlock(&o.s->lock);
    return rc;
}

/* Out of line: only a graph's destroy or move hands its nodes on. */
__attribute__((noinline)) int vg__ledger_set_handle(vg_devptr_t ptr, uint64_t seq,
                                                    uint64_t handle)
{
    owned_t o;
    uint32_t i;
    vg__rec_t *r = lock_find(ptr, &o, &i);
    if (!o.s)
        return VG_ENOTFOUND;
    int rc = VG_ENOTFOUND;
    if (r && r->a.seq == seq) {
        r->a.handle = handle;
        rc = VG_OK;
    }
    vg__spin_unlock(&o.s->lock);
    return rc;
}

int vg__ledger_find(vg_devptr_t ptr, vg__alloc_t *out)
{
    owned_t o;
    uint32_t i;
    vg__rec_t *r = lock_find(ptr, &o, &i);
    if (!o.s)
        return VG_ENOTFOUND;
    if (r && out)
        *out = r->a;
    vg__spin_unlock(&o.s->lock);
    return r ? VG_OK : VG_ENOTFOUND;
}

int vg__ledger_shard_of(vg_devptr_t ptr)
{
    owned_t o;
    uint32_t i;
    vg__rec_t *r = lock_find(ptr, &o, &i);
    if (!o.s)
        return -1;
    int shard = r ? (int)(o.s - shards) : -1;
    vg__spin_unlock(&o.s->lock);
    return shard;
}

VG__HOT bool vg__shards_may_hold(vg_devptr_t key)
{
    /* The leaf is made if absent (as the insert that would follow makes
     * it), so that the thread's next look finds it in vg__me. Without one
     * no record can be in the granule. */
    _Atomic uint64_t *e = dir_entry(key, true);
    if (!e)
        return false;
    uint64_t v = atomic_load_explicit(e, memory_order_acquire);
    if (split_of(v))
        v = atomic_load_explicit(fine_entry(v, key), memory_order_relaxed);
    return v / ENTRY_ONE != 0;
}

vg__shard_t *vg__ledger_shard(unsigned i)
{
    return &shards[i];
}
