/*
 * ledger_front.c — each thread's newest plain allocation, held in a record
 * of the thread's own (its front) until the thread allocates again or
 * another thread needs it, and the thread's last few frees of such
 * records (their share of the quarantine).
 *
 * Why: the common pattern, one thread allocating and soon freeing, then
 * never reaches the shards. An insert into a shard looks its address up
 * in the directory and writes its entry, and on the real driver those
 * entries change cores all the time: with 16 threads the driver gives a
 * freed 4 KiB address to another thread at nearly every allocation, so
 * nearly every pair wrote a line another core wrote last. Measured on an
 * H100, nine alternations (docs/benchmarks.md, "Each thread's newest
 * allocation out of the shards"): shim+budget against native, x0.982 on
 * one thread and x0.973 on 16 where the build before read x0.963 and
 * x0.930, and a preload that only forwards x1.000 and x0.977.
 *
 * The contract of the ledger stays whole (vg_budget.h): a front's live
 * record is a live record. Whoever looks for a key and misses in the
 * shards pushes the front that holds it into them (vg__front_push) and
 * looks there again; walks flush every front (vg__fronts_flush) and, after
 * the shards, visit what is still in one (vg__fronts_visit: a record no
 * shard had host memory for, or a newer one); counts add the live fronts;
 * and the freed records of the fronts are searched with the shards'
 * quarantine (vg__fronts_each_freed).
 *
 * Locking: each front has a spinlock; its owner takes it for every step
 * (a line no other core writes, so one uncontended exchange; a free only
 * tries it, and when another thread holds it, pushing the record, looks
 * in the shards), anyone else to look. A front's lock is taken before a shard's, never after (a
 * flush inserts into a shard holding it). `live` may be read without the
 * lock as a hint; it is checked again under it. A record only ever moves
 * from a front to the shards, never back, so a miss in the shards, a
 * push, and a second look find any record that was live throughout: if
 * its front moved it before the push looked, it was in the shards by then.
 *
 * An allocation goes straight to the shards when the thread has no front
 * (no memory for one), when the shards may already hold records of its
 * granule (a lock-free look at the directory entry: a duplicate must be
 * found where the general insert finds it), and while the thread
 * allocates many before it frees (FRONT_STREAK_MAX).
 *
 * Records live in slots: the live one is slots[cur]; a free leaves its
 * record where it is (FREED) and moves cur on, so that the next
 * allocation overwrites the oldest freed record: a free copies nothing
 * but the caller's copy.
 *
 * Cost off the common path: a free that misses the shards (another
 * thread's newest allocation, or a bad pointer) reads every front's
 * `live` once, O(threads that ever allocated), before looking again. A
 * thread whose newest record another thread needed (`wanted`) sends its
 * next ones to the shards, so a producer whose blocks a consumer frees
 * costs that scan about once in FRONT_RETRY allocations, not at each.
 *
 * Threads: a front is adopted at the thread's first plain allocation (one
 * an exited thread left, or a new one, kept in a registry that only
 * grows) and at thread exit is flushed and left for the next thread.
 * Fork (vg__ledger_prefork): every front is locked before the shards.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "vg_ledger.h"

#define FRONT_SLOTS 8u /* the live record and the last 7 freed ones */
/* A thread whose newest allocation was pushed out by its next one, or
 * whose next went to the shards because its granule has records there,
 * this many times in a row (it allocates many before it frees) stops
 * using its front, and tries it again once every FRONT_RETRY allocations:
 * each push copies the record a second time, and each look at the
 * directory is work the shards' insert does again. */
#define FRONT_STREAK_MAX 4u
#define FRONT_RETRY 16u

enum { SLOT_EMPTY, SLOT_FREED };

/* A record starting on a line: its 104 bytes touch two lines, where
 * packed ones touched two or three (2.5 on average); a pair writes one
 * and reads it back after the driver has had the cache. */
typedef struct {
    vg__alloc_t a;
} __attribute__((aligned(64))) front_slot_t;

typedef struct vg__front {
    _Atomic int lock;      /* vg__spin_lock */
    _Atomic uint64_t live; /* slots[cur]'s key while it is live here; else 0 */
    _Atomic bool adopted;  /* a live thread owns it */
    unsigned cur;          /* the live slot, or the next one to fill */
    unsigned streak;       /* the owner's alone: allocations in a row that did not pay */
    unsigned skipped;      /* the owner's alone: allocations past the front since */
    _Atomic bool wanted;   /* another thread needed the live record (vg__front_push) */
    struct vg__front *next; /* registry: only ever grows */
    uint8_t state[FRONT_SLOTS]; /* of each slot but a live cur */
    front_slot_t slots[FRONT_SLOTS];
} __attribute__((aligned(64))) vg__front_t;

static _Atomic(vg__front_t *) registry;
static _Atomic int registry_lock; /* additions, and fork */
static pthread_key_t exit_key;
static bool exit_key_made;

static void front_exit(void *p);

__attribute__((constructor)) static void front_setup(void)
{
    exit_key_made = pthread_key_create(&exit_key, front_exit) == 0;
}

/* The thread's first plain allocation: a front an exited thread left, or
 * a new one. NULL (every insert goes to the shards) without memory or an
 * exit key. */
__attribute__((noinline, cold)) static vg__front_t *adopt(void)
{
    if (!exit_key_made)
        return NULL;
    vg__front_t *f = atomic_load_explicit(&registry, memory_order_acquire);
    for (; f; f = f->next) {
        bool no = false;
        if (!atomic_load_explicit(&f->adopted, memory_order_relaxed) &&
            atomic_compare_exchange_strong_explicit(&f->adopted, &no, true,
                                                    memory_order_acquire,
                                                    memory_order_relaxed))
            break;
    }
    if (!f) {
        f = aligned_alloc(_Alignof(vg__front_t), sizeof *f);
        if (!f)
            return NULL;
        memset(f, 0, sizeof *f);
        atomic_init(&f->adopted, true);
        vg__spin_lock(&registry_lock);
        f->next = atomic_load_explicit(&registry, memory_order_relaxed);
        atomic_store_explicit(&registry, f, memory_order_release);
        vg__spin_unlock(&registry_lock);
    }
    if (pthread_setspecific(exit_key, f) != 0) {
        atomic_store_explicit(&f->adopted, false, memory_order_release);
        return NULL;
    }
    vg__me.front = f;
    return f;
}

/* Moves f's live record into the shards. Under f's lock. False when it
 * stays here (no host memory for a shard record). */
static bool flush_locked(vg__front_t *f)
{
    uint64_t key = atomic_load_explicit(&f->live, memory_order_relaxed);
    if (!key)
        return true;
    int rc = vg__ledger_insert(&f->slots[f->cur].a);
    if (rc == VG_ESYS)
        return false;
    if (vg__unlikely(rc != VG_OK)) /* the shards hold the key already: a free not seen */
        vg__log("an address was recorded twice (a free the shim did not see?): the record "
                "in the ledger stays, and the other's charge stays counted");
    f->state[f->cur] = SLOT_EMPTY; /* the record is the shards' now, not a freed one */
    atomic_store_explicit(&f->live, 0, memory_order_relaxed);
    return true;
}

static void front_exit(void *p)
{
    vg__front_t *f = p;
    vg__me.front = NULL;
    vg__spin_lock(&f->lock);
    flush_locked(f); /* without memory it stays live here, found by vg__front_push */
    vg__spin_unlock(&f->lock);
    atomic_store_explicit(&f->adopted, false, memory_order_release);
}

static int insert_past_front(vg__front_t *f, const vg__alloc_t *a);

/* Into f (the thread's own), its previous record pushed into the shards. */
VG__HOT __attribute__((noinline)) static int insert_into_front(vg__front_t *f, const vg__alloc_t *a)
{
    if (vg__unlikely(atomic_load_explicit(&f->wanted, memory_order_relaxed))) {
        /* Another thread frees (or looks up) this thread's newest records:
         * each such lookup misses the shards and reads every front, so
         * the next ones go to the shards, as for a thread that allocates
         * many (FRONT_STREAK_MAX). */
        atomic_store_explicit(&f->wanted, false, memory_order_relaxed);
        f->streak = FRONT_STREAK_MAX;
        f->skipped = 0;
        return insert_past_front(f, a);
    }
    if (vg__unlikely(!a->ptr) || vg__unlikely(vg__shards_may_hold(a->ptr))) {
        f->streak++; /* its neighbours are in the shards: likely many live at once */
        return vg__ledger_insert(a);
    }
    vg__spin_lock(&f->lock);
    uint64_t prev = atomic_load_explicit(&f->live, memory_order_relaxed);
    if (vg__unlikely(prev)) {
        if (prev == a->ptr) {
            vg__spin_unlock(&f->lock);
            return VG_EINVAL; /* live here already: the old record is kept */
        }
        if (!flush_locked(f)) {
            vg__spin_unlock(&f->lock);
            return vg__ledger_insert(a);
        }
        f->streak++;
    }
    f->slots[f->cur].a = *a;
    atomic_store_explicit(&f->live, a->ptr, memory_order_relaxed);
    vg__spin_unlock(&f->lock);
    return VG_OK;
}

/* Past the front (f NULL: none yet), into the shards, unless the key is
 * live in the front. */
__attribute__((noinline)) static int insert_past_front(vg__front_t *f, const vg__alloc_t *a)
{
    if (!f) {
        f = adopt();
        if (f)
            return insert_into_front(f, a);
    } else if (vg__unlikely(atomic_load_explicit(&f->live, memory_order_relaxed) == a->ptr)) {
        return VG_EINVAL;
    }
    return vg__ledger_insert(a);
}

/* Both steps out of line, so that this one saves no registers. */
VG__HOT int vg__ledger_insert_front(const vg__alloc_t *a)
{
    vg__front_t *f = vg__me.front;
    if (vg__unlikely(!f) ||
        (vg__unlikely(f->streak >= FRONT_STREAK_MAX) && ++f->skipped % FRONT_RETRY))
        return insert_past_front(f, a); /* it allocates many before it frees */
    return insert_into_front(f, a);
}

/* Takes f's live record when its key is ptr (and its owner matches):
 * *out gets it, and its slot becomes a freed one. False, nothing done,
 * when it is not there or f's lock is busy (another thread pushing it:
 * the caller looks in the shards). Calls nothing. */
static inline bool take(vg__front_t *f, vg_devptr_t ptr, const void *owner, vg__alloc_t *out)
{
    if (vg__unlikely(!vg__spin_trylock(&f->lock)))
        return false;
    vg__alloc_t *a = &f->slots[f->cur].a;
    bool ok = atomic_load_explicit(&f->live, memory_order_relaxed) == ptr &&
              (owner == VG__ANY_OWNER || a->owner == owner);
    if (ok) {
        if (out)
            *out = *a;
        f->state[f->cur] = SLOT_FREED;
        f->cur = (f->cur + 1) % FRONT_SLOTS;
        f->streak = 0;
        atomic_store_explicit(&f->live, 0, memory_order_relaxed);
    }
    vg__spin_unlock(&f->lock);
    return ok;
}

VG__HOT int vg__ledger_remove(vg_devptr_t ptr, const void *owner, vg__alloc_t *out)
{
    vg__front_t *f = vg__me.front;
    if (vg__likely(f) && ptr && atomic_load_explicit(&f->live, memory_order_relaxed) == ptr &&
        vg__likely(take(f, ptr, owner, out)))
        return VG_OK;
    return vg__shards_remove(ptr, owner, out); /* which asks the other fronts */
}

void vg__front_push(vg_devptr_t key)
{
    for (vg__front_t *f = atomic_load_explicit(&registry, memory_order_acquire); f; f = f->next) {
        if (atomic_load_explicit(&f->live, memory_order_relaxed) != key)
            continue;
        vg__spin_lock(&f->lock);
        if (atomic_load_explicit(&f->live, memory_order_relaxed) == key && flush_locked(f) &&
            f != vg__me.front) /* another thread's: its next records had better go to the shards */
            atomic_store_explicit(&f->wanted, true, memory_order_relaxed);
        vg__spin_unlock(&f->lock);
    }
}

void vg__fronts_flush(void)
{
    for (vg__front_t *f = atomic_load_explicit(&registry, memory_order_acquire); f; f = f->next) {
        if (!atomic_load_explicit(&f->live, memory_order_relaxed))
            continue;
        vg__spin_lock(&f->lock);
        flush_locked(f);
        vg__spin_unlock(&f->lock);
    }
}

void vg__fronts_visit(const void *owner, vg__alloc_visit_fn fn, void *ctx)
{
    for (vg__front_t *f = atomic_load_explicit(&registry, memory_order_acquire); f; f = f->next) {
        if (!atomic_load_explicit(&f->live, memory_order_relaxed))
            continue;
        vg__alloc_t copy;
        vg__spin_lock(&f->lock);
        bool live = atomic_load_explicit(&f->live, memory_order_relaxed) != 0 &&
                    (owner == VG__ANY_OWNER || f->slots[f->cur].a.owner == owner);
        if (live)
            copy = f->slots[f->cur].a;
        vg__spin_unlock(&f->lock);
        if (live)
            fn(&copy, ctx);
    }
}

uint64_t vg__fronts_live(void)
{
    uint64_t n = 0;
    for (vg__front_t *f = atomic_load_explicit(&registry, memory_order_acquire); f; f = f->next)
        n += atomic_load_explicit(&f->live, memory_order_relaxed) != 0;
    return n;
}

void vg__fronts_each_freed(void (*fn)(const vg__alloc_t *a, void *ctx), void *ctx)
{
    for (vg__front_t *f = atomic_load_explicit(&registry, memory_order_acquire); f; f = f->next) {
        vg__spin_lock(&f->lock);
        bool live = atomic_load_explicit(&f->live, memory_order_relaxed) != 0;
        for (unsigned i = 0; i < FRONT_SLOTS; i++)
            if (f->state[i] == SLOT_FREED && !(live && i == f->cur))
                fn(&f->slots[i].a, ctx);
        vg__spin_unlock(&f->lock);
    }
}

void vg__fronts_prefork(void)
{
    vg__spin_lock(&registry_lock);
    for (vg__front_t *f = atomic_load_explicit(&registry, memory_order_relaxed); f; f = f->next)
        vg__spin_lock(&f->lock);
}

/* Parent and child alike: in the child only the forking thread exists,
 * and it holds every front's lock. */
void vg__fronts_postfork(void)
{
    for (vg__front_t *f = atomic_load_explicit(&registry, memory_order_relaxed); f; f = f->next)
        vg__spin_unlock(&f->lock);
    vg__spin_unlock(&registry_lock);
}
