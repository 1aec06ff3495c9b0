/*
 * cache.c — size classes carved out of driver chunks, and the cache of freed
 * blocks (the rules are in vg_internal.h and docs/pool.md).
 *
 * Host-side bookkeeping only: no driver calls, no budgets. Device memory
 * cannot hold our free lists (the host may not write it), so every class
 * keeps its free blocks in two host arrays: `ready` (reusable now) and
 * `pending` (freed, waiting for a synchronisation), and each chunk counts
 * its live blocks so that an empty one can be released.
 *
 * Cost of the fast path (a ready block, or a free): one uncontended spinlock
 * (an atomic exchange and a release store), an array push or pop and a few
 * counters. The whole cached API pair, ledger included, measures ~90 ns on
 * the 2-core VM (docs/pool.md). The slow paths (synchronising, adding and
 * releasing chunks) are out of line.
 */
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "vg_internal.h"

struct vg__chunk {
    vg_devptr_t base;
    uint64_t bytes;
    int cls;
    uint32_t carved;       /* blocks handed out fresh so far */
    uint32_t live;         /* blocks handed out now */
    uint64_t idle_since;   /* coarse ns when live last fell to 0 */
    vg__chunk_t *prev, *next;
};

/* ------------------------------------------------------------ classes */

int vg__class_of(size_t size)
{
    if (size > VG__SMALL_MAX)
        return -1;
    if (size <= 4 * VG__CLASS_GRAIN)
        return size == 0 ? 0 : (int)((size - 1) / VG__CLASS_GRAIN);
    /* Four classes per doubling above 1 KiB: (1 + q/4) * 2^k, q = 1..4. */
    uint64_t s = size - 1;
    int k = 63 - __builtin_clzll(s); /* 2^k <= s < 2^(k+1), k >= 10 */
    uint64_t q = (s - (1ull << k)) >> (k - 2);
    return 4 + (k - 10) * 4 + (int)q;
}

uint32_t vg__class_size(int cls)
{
    if (cls < 4)
        return (uint32_t)(cls + 1) * VG__CLASS_GRAIN;
    int k = 10 + (cls - 4) / 4, q = (cls - 4) % 4;
    return (1u << k) + (uint32_t)(q + 1) * (1u << (k - 2));
}

/* ------------------------------------------------------------ locking */

/* A spinlock: critical sections are a few dozen instructions. A waiter
 * yields after a while, so a holder preempted on a loaded machine (16
 * threads on 2 cores) gets the CPU back. */
static inline void class_lock(vg__class_t *k)
{
    for (unsigned spins = 0;; spins++) {
        if (!atomic_exchange_explicit(&k->lock, 1, memory_order_acquire))
            return;
        while (atomic_load_explicit(&k->lock, memory_order_relaxed)) {
            if (++spins > 64)
                sched_yield();
        }
    }
}

static inline void class_unlock(vg__class_t *k)
{
    atomic_store_explicit(&k->lock, 0, memory_order_release);
}

/* ------------------------------------------------------------ stacks */

__attribute__((noinline)) static bool stack_grow(vg__block_stack_t *st,
                                                 uint32_t need)
{
    uint32_t cap = st->cap ? st->cap : 64;
    while (cap < need)
        cap *= 2;
    vg__block_t *v = realloc(st->v, (size_t)cap * sizeof *v);
    if (!v)
        return false;
    st->v = v;
    st->cap = cap;
    return true;
}

/* Removes every block of chunk `ch` from st (order kept). */
static void stack_drop_chunk(vg__block_stack_t *st, const vg__chunk_t *ch)
{
    uint32_t w = 0;
    for (uint32_t r = 0; r < st->n; r++)
        if (st->v[r].chunk != ch)
            st->v[w++] = st->v[r];
    st->n = w;
}

/* ------------------------------------------------------------ chunks */

static void chunk_link(vg__class_t *k, vg__chunk_t *ch)
{
    ch->prev = NULL;
    ch->next = k->chunks;
    if (k->chunks)
        k->chunks->prev = ch;
    k->chunks = ch;
}

/* Takes an empty chunk out of its class (under the class lock). */
static void chunk_detach(vg__cache_t *c, vg__class_t *k, vg__chunk_t *ch,
                         vg__span_t *out)
{
    stack_drop_chunk(&k->ready, ch);
    stack_drop_chunk(&k->pending, ch);
    if (ch->prev)
        ch->prev->next = ch->next;
    else
        k->chunks = ch->next;
    if (ch->next)
        ch->next->prev = ch->prev;
    if (k->carve == ch)
        k->carve = NULL;
    k->empty_chunks--;
    vg__chunk_index_remove(ch->base);
    out->base = ch->base;
    out->bytes = ch->bytes;
    atomic_fetch_sub_explicit(&c->held, ch->bytes, memory_order_relaxed);
    free(ch);
}

/* ------------------------------------------------------------ life */

void vg__cache_init(vg__cache_t *c, vg__sync_fn sync, void *ctx)
{
    memset(c, 0, sizeof *c);
    for (int i = 0; i < VG__CLASSES; i++) {
        vg__class_t *k = &c->cls[i];
        atomic_init(&k->lock, 0);
        k->size = vg__class_size(i);
        k->chunk_bytes = k->size <= VG__CLASS_SMALL_CHUNK_MAX
                             ? VG__CHUNK_SMALL
                             : VG__CHUNK_LARGE;
        k->per_chunk = (uint32_t)(k->chunk_bytes / k->size);
    }
    c->sync = sync;
    c->sync_ctx = ctx;
    atomic_init(&c->held, 0);
    atomic_init(&c->syncs, 0);
}

void vg__cache_drain(vg__cache_t *c,
                     void (*release)(const vg__span_t *s, void *ctx),
                     void *ctx)
{
    for (int i = 0; i < VG__CLASSES; i++) {
        vg__class_t *k = &c->cls[i];
        class_lock(k);
        vg__chunk_t *ch = k->chunks;
        k->chunks = k->carve = NULL;
        free(k->ready.v);
        free(k->pending.v);
        k->ready = k->pending = (vg__block_stack_t){0};
        class_unlock(k);
        while (ch) {
            vg__chunk_t *next = ch->next;
            vg__span_t s = {ch->base, ch->bytes};
            vg__chunk_index_remove(ch->base);
            atomic_fetch_sub_explicit(&c->held, ch->bytes,
                                      memory_order_relaxed);
            release(&s, ctx);
            free(ch);
            ch = next;
        }
    }
}

/* ------------------------------------------------------------ take */

/* Hands b out for `size` bytes (under the class lock). */
static inline void hand_out(vg__class_t *k, vg__block_t b, size_t size,
                            vg__block_t *out)
{
    if (b.chunk->live++ == 0)
        k->empty_chunks--;
    k->allocs++;
    k->live_blocks++;
    k->live_bytes += size;
    k->bytes_allocated += size;
    *out = b;
}

/* Never-used blocks of the carve chunk need no synchronisation. */
static inline bool take_fresh(vg__class_t *k, vg__block_t *b)
{
    vg__chunk_t *ch = k->carve;
    if (!ch)
        return false;
    b->ptr = ch->base + (uint64_t)ch->carved * k->size;
    b->chunk = ch;
    if (++ch->carved == k->per_chunk)
        k->carve = NULL;
    return true;
}

/*
 * Slow path, entered and left with the class lock held: no ready or fresh
 * block, so make the pending ones reusable. The pending list is taken
 * before the synchronisation starts, so every block in it was freed before
 * the sync: after it returns, work queued before those frees is done. The
 * lock is dropped around the sync (a driver call); other threads that need
 * this class meanwhile wait for `syncing` to clear instead of growing it.
 */
__attribute__((noinline)) static bool sync_pending(vg__cache_t *c,
                                                   vg__class_t *k)
{
    while (k->syncing) {
        class_unlock(k);
        sched_yield();
        class_lock(k);
    }
    if (k->ready.n || k->carve)
        return true; /* someone else refilled it meanwhile */
    if (k->pending.n == 0)
        return false;
    vg__block_stack_t taken = k->pending;
    k->pending = k->ready; /* empty: keep its array for new frees */
    k->ready = (vg__block_stack_t){0};
    k->syncing = true;
    class_unlock(k);
    c->sync(c->sync_ctx);
    atomic_fetch_add_explicit(&c->syncs, 1, memory_order_relaxed);
    class_lock(k);
    k->syncing = false;
    /* No chunk of this class was released meanwhile (release waits for
     * `syncing` to clear), so every block taken is still valid. */
    k->ready = taken;
    return true;
}

int vg__cache_take(vg__cache_t *c, int cls, size_t size, vg__block_t *out)
{
    vg__class_t *k = &c->cls[cls];
    vg__block_t b;
    class_lock(k);
    for (;;) {
        if (vg__likely(k->ready.n)) {
            b = k->ready.v[--k->ready.n];
            break;
        }
        if (take_fresh(k, &b))
            break;
        if (!sync_pending(c, k)) {
            k->misses++;
            class_unlock(k);
            return VG_ENOMEM;
        }
    }
    k->hits++;
    hand_out(k, b, size, out);
    class_unlock(k);
    return VG_OK;
}

/* Puts every remaining fresh block of ch on `ready` (they were never used,
 * so they need no synchronisation). Blocks that find no room stay uncarved
 * and unused until the chunk is released. */
static void spill_fresh(vg__class_t *k, vg__chunk_t *ch)
{
    uint32_t left = k->per_chunk - ch->carved;
    if (k->ready.n + left > k->ready.cap && !stack_grow(&k->ready, k->ready.n + left))
        return;
    for (; ch->carved < k->per_chunk; ch->carved++)
        k->ready.v[k->ready.n++] = (vg__block_t){
            ch->base + (uint64_t)ch->carved * k->size, ch};
}

int vg__cache_add_chunk(vg__cache_t *c, int cls, const vg__span_t *chunk,
                        size_t size, vg__block_t *out)
{
    vg__class_t *k = &c->cls[cls];
    vg__chunk_t *ch = calloc(1, sizeof *ch);
    if (!ch)
        return VG_ESYS;
    vg__chunk_ref_t ref = {chunk->base, chunk->bytes, k->size, c};
    if (vg__chunk_index_add(&ref) != VG_OK) {
        free(ch);
        return VG_ESYS;
    }
    ch->base = chunk->base;
    ch->bytes = chunk->bytes;
    ch->cls = cls;
    ch->carved = 1; /* block 0 goes to the caller */
    atomic_fetch_add_explicit(&c->held, chunk->bytes, memory_order_relaxed);
    class_lock(k);
    chunk_link(k, ch);
    k->empty_chunks++;
    /* Two threads that missed at once both add a chunk: the second one's
     * fresh blocks go on `ready` instead of waiting behind the first. */
    if (ch->carved < k->per_chunk) {
        if (!k->carve)
            k->carve = ch;
        else
            spill_fresh(k, ch);
    }
    hand_out(k, (vg__block_t){ch->base, ch}, size, out);
    class_unlock(k);
    return VG_OK;
}

/* ------------------------------------------------------------ give */

bool vg__cache_give(vg__cache_t *c, const vg__block_t *b, size_t size,
                    uint32_t keep_empty, vg__span_t *release)
{
    vg__chunk_t *ch = b->chunk;
    vg__class_t *k = &c->cls[ch->cls];
    bool released = false;
    class_lock(k);
    k->frees++;
    k->live_blocks--;
    k->live_bytes -= size;
    if (vg__unlikely(k->pending.n == k->pending.cap) &&
        !stack_grow(&k->pending, k->pending.n + 1)) {
        /* no host memory for the list: the block stays out of circulation
         * until its chunk empties and is released */
    } else {
        k->pending.v[k->pending.n++] = *b;
    }
    if (--ch->live == 0) {
        k->empty_chunks++;
        ch->idle_since = vg__now_coarse_ns();
        /* Never while syncing: the taken list may point into the chunk. */
        if (k->empty_chunks > keep_empty && !k->syncing) {
            chunk_detach(c, k, ch, release);
            released = true;
        }
    }
    class_unlock(k);
    return released;
}

/* ------------------------------------------------------------ trim */

typedef struct trim_pick {
    int cls;
    vg__chunk_t *chunk;
    uint64_t bytes, idle_since;
} trim_pick_t;

/* Larger first, then idle longer. */
static bool better(const vg__chunk_t *ch, const trim_pick_t *p)
{
    if (!p->chunk)
        return true;
    if (ch->bytes != p->bytes)
        return ch->bytes > p->bytes;
    return ch->idle_since < p->idle_since;
}

/* The best empty chunk of class k (under its lock) into p. */
static void scan_class(vg__class_t *k, int cls, trim_pick_t *p)
{
    if (k->empty_chunks == 0 || k->syncing)
        return;
    for (vg__chunk_t *ch = k->chunks; ch; ch = ch->next)
        if (ch->live == 0 && better(ch, p))
            *p = (trim_pick_t){cls, ch, ch->bytes, ch->idle_since};
}

/*
 * Two passes: find the best candidate class by class (each lock held
 * briefly), then detach it if it is still there and still empty. Another
 * thread may have taken a block from it meanwhile; then look again (a few
 * times, then report nothing rather than spin against a busy pool).
 */
bool vg__cache_trim_one(vg__cache_t *c, vg__span_t *release)
{
    for (int attempt = 0; attempt < 8; attempt++) {
        trim_pick_t p = {.cls = -1};
        for (int i = 0; i < VG__CLASSES; i++) {
            class_lock(&c->cls[i]);
            scan_class(&c->cls[i], i, &p);
            class_unlock(&c->cls[i]);
        }
        if (!p.chunk)
            return false;
        vg__class_t *k = &c->cls[p.cls];
        bool done = false;
        class_lock(k);
        for (vg__chunk_t *ch = k->chunks; ch; ch = ch->next)
            if (ch == p.chunk && ch->live == 0 && !k->syncing) {
                chunk_detach(c, k, ch, release);
                done = true;
                break;
            }
        class_unlock(k);
        if (done)
            return true;
    }
    return false;
}

/* ------------------------------------------------------------ stats */

void vg__cache_stats(vg__cache_t *c, vg__cache_stats_t *s)
{
    *s = (vg__cache_stats_t){0};
    uint64_t handed = 0; /* class bytes of live blocks */
    for (int i = 0; i < VG__CLASSES; i++) {
        vg__class_t *k = &c->cls[i];
        class_lock(k);
        s->live_bytes += k->live_bytes;
        s->live_blocks += k->live_blocks;
        s->hits += k->hits;
        s->misses += k->misses;
        s->allocs += k->allocs;
        s->frees += k->frees;
        s->bytes_allocated += k->bytes_allocated;
        handed += k->live_blocks * k->size;
        class_unlock(k);
    }
    s->held = atomic_load_explicit(&c->held, memory_order_relaxed);
    s->cached = s->held > handed ? s->held - handed : 0;
    s->syncs = atomic_load_explicit(&c->syncs, memory_order_relaxed);
}
