/*
 * cache.c — size classes carved out of driver chunks, and the cache of
 * freed blocks each class keeps: carving, adding and detaching chunks, the
 * reuse rule (sync epochs) and a block's path through a class (the rules
 * are in vg_pool.h and docs/pool.md). Each thread's cache in front of the
 * classes, and the fast path through it, are in cache_thread.c; it
 * exchanges batches of blocks with a class through the vg__class_* calls
 * below. The walks over the whole cache (set-up, drain, fork, trimming,
 * statistics) are in cache_walk.c.
 *
 * Host-side bookkeeping only: no driver calls (the reuse barrier is the
 * pool's `sync`, called with no lock held), no budgets. Device memory cannot
 * hold our free lists (the host may not write it), so free blocks live in
 * host arrays: per class, `ready`, `pending` and `sealed` lists. Each chunk
 * counts the blocks outside its class's lists, so an empty one (all its
 * blocks back in the class) can be released. Adding and releasing chunks
 * and synchronising are slow paths, out of line.
 */
#include <sched.h>
#include <stdlib.h>

#include "vg_pool.h"

/* ------------------------------------------------------------ classes */

VG__HOT int vg__class_of(size_t size)
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

uint64_t vg__class_chunk_bytes(int cls)
{
    return vg__class_size(cls) <= VG__CLASS_SMALL_CHUNK_MAX ? VG__CHUNK_SMALL
                                                            : VG__CHUNK_LARGE;
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

/* Pushes b; with no host memory for the list the block stays out of
 * circulation until its chunk is released. */
static inline void stack_push(vg__block_stack_t *st, vg__block_t b)
{
    if (vg__likely(st->n < st->cap) || stack_grow(st, st->n + 1))
        st->v[st->n++] = b;
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

static void stack_swap(vg__block_stack_t *a, vg__block_stack_t *b)
{
    vg__block_stack_t t = *a;
    *a = *b;
    *b = t;
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

void vg__cache_chunk_detach(vg__cache_t *c, vg__class_t *k, vg__chunk_t *ch)
{
    stack_drop_chunk(&k->ready, ch);
    stack_drop_chunk(&k->pending, ch);
    stack_drop_chunk(&k->sealed, ch);
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
    atomic_fetch_sub_explicit(&c->held, ch->bytes, memory_order_relaxed);
}

/* Chunks detached beyond the one a give can return wait here for the pool
 * to free them (vg__cache_reap). */
static void doom(vg__cache_t *c, vg__chunk_t *ch)
{
    vg__spin_lock(&c->doomed_lock);
    ch->next = c->doomed;
    c->doomed = ch;
    vg__spin_unlock(&c->doomed_lock);
}

bool vg__cache_reap(vg__cache_t *c, vg__span_t *release)
{
    vg__spin_lock(&c->doomed_lock);
    vg__chunk_t *ch = c->doomed;
    if (ch)
        c->doomed = ch->next;
    vg__spin_unlock(&c->doomed_lock);
    if (!ch)
        return false;
    *release = (vg__span_t){ch->base, ch->bytes};
    free(ch);
    return true;
}

/* One block is back in the class's lists (under the class lock). */
static inline void block_returned(vg__cache_t *c, vg__class_t *k,
                                  vg__chunk_t *ch, vg__flush_out_t *o)
{
    if (--ch->live != 0)
        return;
    k->empty_chunks++;
    if (k->empty_chunks <= o->keep_empty)
        return;
    vg__cache_chunk_detach(c, k, ch);
    if (o->released) {
        doom(c, ch);
        return;
    }
    *o->release = (vg__span_t){ch->base, ch->bytes};
    o->released = true;
    free(ch);
}

/* One block leaves the class's lists (under the class lock). */
static inline void block_leaves(vg__class_t *k, vg__chunk_t *ch)
{
    if (ch->live++ == 0)
        k->empty_chunks--;
}

/* ------------------------------------------------------------ syncing */

/* The epoch a block freed before this call is sealed with: syncs begun so
 * far. A read-modify-write (a full barrier, unlike a plain load) orders the
 * frees (list pushes) before it, so any sync numbered above the epoch began
 * after them. Slow path: once per seal. */
static uint64_t sync_epoch(vg__cache_t *c)
{
    return atomic_fetch_add_explicit(&c->sync_started, 0, memory_order_seq_cst);
}

static bool epoch_done(vg__cache_t *c, uint64_t epoch)
{
    return atomic_load_explicit(&c->sync_done, memory_order_acquire) > epoch;
}

/*
 * Returns once a synchronisation numbered above `epoch` (so begun after
 * the epoch was read) has completed: waits for one already begun, else
 * runs one. Called with no lock held (the sync is a driver call). Several
 * threads needing blocks at once share one sync instead of queueing more.
 */
__attribute__((noinline)) void vg__cache_sync_after(vg__cache_t *c,
                                                  uint64_t epoch)
{
    while (!epoch_done(c, epoch)) {
        uint64_t s = atomic_load_explicit(&c->sync_started,
                                          memory_order_seq_cst);
        if (s > epoch) {
            sched_yield(); /* one began after the epoch: wait for it */
            continue;
        }
        if (!atomic_compare_exchange_strong_explicit(
                &c->sync_started, &s, s + 1, memory_order_seq_cst,
                memory_order_seq_cst))
            continue;
        c->sync(c->sync_ctx);
        atomic_fetch_add_explicit(&c->syncs, 1, memory_order_relaxed);
        uint64_t d = atomic_load_explicit(&c->sync_done, memory_order_relaxed);
        while (d < s + 1 &&
               !atomic_compare_exchange_weak_explicit(
                   &c->sync_done, &d, s + 1, memory_order_release,
                   memory_order_relaxed))
            ;
        return;
    }
}

/*
 * Under the class lock: makes sure the class has a ready or never-used
 * block, sealing its pending ones if needed. VG__FILL_WAIT: the sealed
 * blocks need a sync; the caller drops its locks, calls
 * vg__cache_sync_after(c, *epoch) and calls again with them retaken. The
 * sealed list stays in the class meanwhile, so a trim may still release
 * its chunks (their blocks leave the list).
 */
vg__fill_t vg__class_fill(vg__cache_t *c, vg__class_t *k,
                          vg__take_policy_t policy, uint64_t *epoch)
{
    uint32_t min_seal = policy == VG__GROW_FIRST ? k->per_chunk / 8 : 1;
    for (;;) {
        if (k->ready.n || k->carve)
            return VG__FILL_OK;
        if (k->sealed.n && epoch_done(c, k->sealed_epoch)) {
            stack_swap(&k->ready, &k->sealed); /* ready was empty */
            continue;
        }
        if (k->sealed.n == 0) {
            if (k->pending.n == 0 || k->pending.n < min_seal)
                return VG__FILL_MISS;
            stack_swap(&k->sealed, &k->pending);
            k->sealed_epoch = sync_epoch(c);
        }
        *epoch = k->sealed_epoch;
        return VG__FILL_WAIT;
    }
}

/* vg__class_fill for the class path: only the class lock to drop. */
static bool class_fill(vg__cache_t *c, vg__class_t *k,
                       vg__take_policy_t policy)
{
    uint64_t epoch;
    vg__fill_t f;
    while ((f = vg__class_fill(c, k, policy, &epoch)) == VG__FILL_WAIT) {
        vg__class_unlock(k);
        vg__cache_sync_after(c, epoch);
        vg__class_lock(k);
    }
    return f == VG__FILL_OK;
}

/* ------------------------------------------------------------ class path */

/* Hands b out for `size` bytes from the class itself (under its lock). */
static inline void hand_out(vg__class_t *k, vg__block_t b, size_t size,
                            vg__block_t *out)
{
    block_leaves(k, b.chunk);
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

/* The class alone: for a thread with no thread cache (no host memory), or
 * one that reuses another arena's blocks. */
__attribute__((noinline)) int vg__class_take(vg__cache_t *c, uint32_t arena,
                                             int cls, size_t size,
                                             vg__block_t *out)
{
    vg__class_t *k = vg__class_at(c, arena, cls);
    vg__block_t b = {0, NULL};
    vg__class_lock(k);
    if (!class_fill(c, k, VG__REUSE_ANY)) {
        vg__class_unlock(k);
        return VG_ENOMEM;
    }
    if (k->ready.n)
        b = k->ready.v[--k->ready.n];
    else
        take_fresh(k, &b);
    k->hits++;
    hand_out(k, b, size, out);
    vg__class_unlock(k);
    return VG_OK;
}

/* A free into the class itself, for a thread with no thread cache. */
__attribute__((noinline)) bool vg__class_give(vg__cache_t *c,
                                              const vg__block_t *b,
                                              size_t size, vg__flush_out_t *o)
{
    vg__class_t *k = vg__class_of_chunk(c, b->chunk);
    vg__class_lock(k);
    k->frees++;
    k->live_blocks--;
    k->live_bytes -= size;
    b->chunk->idle_since = vg__now_coarse_ns();
    stack_push(&k->pending, *b);
    block_returned(c, k, b->chunk, o);
    vg__class_unlock(k);
    return o->released;
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
    uint32_t arena = vg__tcache_arena(c);
    vg__class_t *k = vg__class_at(c, arena, cls);
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
    ch->arena = arena;
    ch->carved = 1; /* block 0 goes to the caller */
    ch->idle_since = vg__now_coarse_ns();
    atomic_fetch_add_explicit(&c->held, chunk->bytes, memory_order_relaxed);
    vg__class_lock(k);
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
    vg__class_unlock(k);
    return VG_OK;
}

/* ---------------------------------------------- exchange with magazines */

void vg__class_put_pending(vg__cache_t *c, vg__class_t *k,
                           const vg__batch_t *b, vg__flush_out_t *o)
{
    vg__block_t *p = b->v;
    uint32_t n = b->n;
    if (k->pending.n + n > k->pending.cap)
        stack_grow(&k->pending, k->pending.n + n);
    for (uint32_t i = 0; i < n; i++) {
        p[i].chunk->idle_since = b->since;
        stack_push(&k->pending, p[i]);
        block_returned(c, k, p[i].chunk, o);
    }
}

void vg__class_put_ready(vg__cache_t *c, vg__class_t *k,
                         const vg__block_t *v, uint32_t n)
{
    vg__flush_out_t keep = {.keep_empty = VG__KEEP_ALL};
    if (k->ready.n + n > k->ready.cap)
        stack_grow(&k->ready, k->ready.n + n);
    for (uint32_t i = 0; i < n; i++) {
        stack_push(&k->ready, v[i]);
        block_returned(c, k, v[i].chunk, &keep);
    }
}

uint32_t vg__class_take_batch(vg__class_t *k, vg__block_t *v, uint32_t n,
                              uint32_t cap)
{
    while (n < cap && k->ready.n) {
        vg__block_t b = k->ready.v[--k->ready.n];
        block_leaves(k, b.chunk);
        v[n++] = b;
    }
    vg__block_t b;
    while (n < cap && take_fresh(k, &b)) {
        block_leaves(k, b.chunk);
        v[n++] = b;
    }
    /* Popped from the top: hand them out in the class's order. */
    for (uint32_t i = 0, j = n; i + 1 < j; i++, j--) {
        b = v[i];
        v[i] = v[j - 1];
        v[j - 1] = b;
    }
    return n;
}
