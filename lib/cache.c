/*
 * cache.c — size classes carved out of driver chunks, the cache of freed
 * blocks, and each thread's cache in front of it (the rules are in
 * vg_internal.h and docs/pool.md).
 *
 * Host-side bookkeeping only: no driver calls (the reuse barrier is the
 * pool's `sync`, called with no lock held), no budgets. Device memory cannot
 * hold our free lists (the host may not write it), so free blocks live in
 * host arrays: per thread, a magazine of ready and one of pending blocks for
 * each class; per class, `ready`, `pending` and `sealed` lists. Each chunk
 * counts the blocks outside its class's lists, so an empty one (all its
 * blocks back in the class) can be released.
 *
 * Cost of the fast path (a block from the thread's magazine, or a free into
 * it): a thread-local lookup (one compare), the magazine's owner-biased lock
 * (a plain store and a load, no atomic read-modify-write; see "Owner and
 * remote"), an array push or pop and four counters beside it, all on lines
 * no other thread writes. A magazine exchanges a batch with its class once
 * per up to 32 operations, under the class lock. The slow paths (refills,
 * synchronising, adding and releasing chunks, thread start and exit) are
 * out of line. Measured in docs/pool.md (~50 ns for the whole API pair on
 * the 2-core VM, ledger included).
 */
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "vg_internal.h"

struct vg__chunk {
    vg_devptr_t base;
    uint64_t bytes;
    int cls;
    uint32_t carved;       /* blocks handed out fresh so far */
    uint32_t live;         /* blocks outside the class's lists */
    uint64_t idle_since;   /* coarse ns: made, or the last free to reach it */
    vg__chunk_t *prev, *next;
};

/* One thread's blocks of one class. */
typedef struct mag {
    uint32_t cap;          /* blocks each of the two stacks holds */
    uint32_t ready_n, pend_n;
    uint64_t pend_since;   /* coarse ns of the first free into `pending` */
    /* This thread's requests in this class. A block freed by another thread
     * than the one that took it makes live_* of both wrap; only the sums
     * over every magazine and the class mean anything. */
    uint64_t allocs, misses, frees, bytes_allocated;
    uint64_t live_blocks, live_bytes;
    vg__block_t v[];       /* ready: v[0, cap); pending: v[cap, 2 cap) */
} mag_t;

/*
 * One thread's cache of one vg__cache_t. Others reach it only to empty the
 * magazines (trim, collect, drain) or read the counters (stats): rarely. So
 * the lock is biased to the owner (see "owner and remote" below): on the
 * fast path the owner writes `busy` and reads `remote`, no atomic
 * read-modify-write. Ownership at the end: the cache's drain sets `cache`
 * to NULL and frees it if `dead`; the thread's exit frees it if `cache` is
 * NULL, else empties it and sets `dead` (the cache frees it, or hands it
 * to a new thread). Both decide under `lock`.
 */
struct vg__tcache {
    _Atomic int lock;      /* spinlock of remotes, and of the owner's slow path */
    _Atomic int busy;      /* the owner is inside a fast section */
    _Atomic int remote;    /* a remote holds or waits for `lock` */
    bool dead;             /* its thread has exited */
    vg__cache_t *cache;    /* NULL once the cache is drained */
    vg__tcache_t *next;    /* the cache's list, under its tcaches_mu */
    mag_t *mag[VG__CLASSES];
};

/* keep_empty of a flush that never releases a chunk (trims decide). */
#define KEEP_ALL UINT32_MAX

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

static inline void class_lock(vg__class_t *k) { vg__spin_lock(&k->lock); }
static inline void class_unlock(vg__class_t *k) { vg__spin_unlock(&k->lock); }
static inline void tc_lock(vg__tcache_t *tc) { vg__spin_lock(&tc->lock); }
static inline void tc_unlock(vg__tcache_t *tc) { vg__spin_unlock(&tc->lock); }

/*
 * Owner and remote. An atomic exchange costs little alone, but it waits for
 * every store before it to drain, and a pool pair has four of them after
 * long copies (magazine and ledger, alloc and free): ~10 ns of a ~60 ns
 * pair on the VM. So the owner of a thread cache enters with a plain store
 * to `busy` and a load of `remote` (Dekker's protocol without the owner's
 * fence), and a remote, which takes `lock`, sets `remote`, then runs
 * membarrier(PRIVATE_EXPEDITED): every thread of the process executes a
 * full barrier, so afterwards either the owner's `busy` is visible to the
 * remote, which waits for it to clear, or the owner's next load of `remote`
 * sees it and the owner takes `lock` instead. Remotes are rare (trim,
 * collect, stats, destroy: ~0.3 us each). Without membarrier (kernels
 * before 4.14, a seccomp filter) every owner takes `lock`.
 */
typedef enum { OWN_FAST, OWN_LOCKED } own_t;

static bool biased; /* set once, before the first thread cache exists */

static int membarrier_cmd(int cmd)
{
    return (int)syscall(__NR_membarrier, cmd, 0, 0);
}

static void biased_setup(void)
{
    int q = membarrier_cmd(MEMBARRIER_CMD_QUERY);
    biased = q > 0 && (q & MEMBARRIER_CMD_PRIVATE_EXPEDITED) &&
             (q & MEMBARRIER_CMD_GLOBAL) &&
             membarrier_cmd(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0;
}

static inline own_t own_enter(vg__tcache_t *tc)
{
    if (vg__likely(biased)) {
        atomic_store_explicit(&tc->busy, 1, memory_order_relaxed);
        atomic_signal_fence(memory_order_seq_cst);
        if (vg__likely(!atomic_load_explicit(&tc->remote, memory_order_acquire)))
            return OWN_FAST;
        atomic_store_explicit(&tc->busy, 0, memory_order_release);
    }
    tc_lock(tc);
    return OWN_LOCKED;
}

static inline void own_leave(vg__tcache_t *tc, own_t how)
{
    if (vg__likely(how == OWN_FAST))
        atomic_store_explicit(&tc->busy, 0, memory_order_release);
    else
        tc_unlock(tc);
}

/* Another thread's cache, exclusively. */
static void remote_enter(vg__tcache_t *tc)
{
    tc_lock(tc);
    if (!biased)
        return;
    atomic_store_explicit(&tc->remote, 1, memory_order_relaxed);
    /* Registered at setup (the registration survives fork); the global
     * command is the slow but always-valid fallback. */
    if (membarrier_cmd(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0)
        membarrier_cmd(MEMBARRIER_CMD_GLOBAL);
    while (atomic_load_explicit(&tc->busy, memory_order_acquire))
        sched_yield();
}

static void remote_leave(vg__tcache_t *tc)
{
    if (biased)
        atomic_store_explicit(&tc->remote, 0, memory_order_release);
    tc_unlock(tc);
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

/* Takes an empty chunk out of its class (under the class lock); the caller
 * frees the struct or dooms it. */
static void chunk_detach(vg__cache_t *c, vg__class_t *k, vg__chunk_t *ch)
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

/* Where a flush puts chunks that empty beyond the class's allowance. */
typedef struct flush_out {
    uint32_t keep_empty;
    vg__span_t *release; /* the first one, for the caller */
    bool released;
} flush_out_t;

/* One block is back in the class's lists (under the class lock). */
static inline void block_returned(vg__cache_t *c, vg__class_t *k,
                                  vg__chunk_t *ch, flush_out_t *o)
{
    if (--ch->live != 0)
        return;
    k->empty_chunks++;
    if (k->empty_chunks <= o->keep_empty)
        return;
    chunk_detach(c, k, ch);
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
__attribute__((noinline)) static void sync_after(vg__cache_t *c,
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

/* How a request that finds its class empty treats the class's pending
 * blocks. With many threads, magazines hold most of a chunk's blocks, and
 * a class's pending list may be a handful: synchronising for so few costs
 * a driver call every few pairs (measured: 1 sync per 78 pairs at 16
 * threads instead of 1 per 500), so such a request misses and the pool
 * grows a chunk instead, while the budget allows; near the limit it
 * reuses whatever is pending (REUSE_ANY). */
typedef enum { GROW_FIRST, REUSE_ANY } take_policy_t;

/* The caller of class_fill: its thread cache (NULL for the class path) and
 * how it holds it, which class_fill updates across the sync. */
typedef struct fill_req {
    vg__tcache_t *tc;
    own_t *how;
    take_policy_t policy;
} fill_req_t;

/*
 * Under the class lock: makes sure the class has a ready or never-used
 * block, sealing and synchronising its pending ones if needed. The lock
 * (and the caller's thread cache, if any) is dropped around the sync;
 * the sealed list stays in the class meanwhile, so a trim may still
 * release its chunks (their blocks leave the list). false: a miss.
 */
static bool class_fill(vg__cache_t *c, vg__class_t *k, const fill_req_t *r)
{
    uint32_t min_seal = r->policy == GROW_FIRST ? k->per_chunk / 8 : 1;
    for (;;) {
        if (k->ready.n || k->carve)
            return true;
        if (k->sealed.n && epoch_done(c, k->sealed_epoch)) {
            stack_swap(&k->ready, &k->sealed); /* ready was empty */
            continue;
        }
        if (k->sealed.n == 0) {
            if (k->pending.n == 0 || k->pending.n < min_seal)
                return false;
            stack_swap(&k->sealed, &k->pending);
            k->sealed_epoch = sync_epoch(c);
        }
        uint64_t epoch = k->sealed_epoch;
        class_unlock(k);
        if (r->tc)
            own_leave(r->tc, *r->how);
        sync_after(c, epoch);
        if (r->tc)
            *r->how = own_enter(r->tc);
        class_lock(k);
    }
}

/* ------------------------------------------------------------ life */

static _Atomic uint64_t cache_ids;

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
    c->id = atomic_fetch_add_explicit(&cache_ids, 1, memory_order_relaxed) + 1;
    atomic_init(&c->held, 0);
    atomic_init(&c->syncs, 0);
    atomic_init(&c->sync_started, 0);
    atomic_init(&c->sync_done, 0);
    atomic_init(&c->doomed_lock, 0);
    pthread_mutex_init(&c->tcaches_mu, NULL);
}

static void tc_detach_all(vg__cache_t *c);

void vg__cache_drain(vg__cache_t *c,
                     void (*release)(const vg__span_t *s, void *ctx),
                     void *ctx)
{
    tc_detach_all(c);
    for (int i = 0; i < VG__CLASSES; i++) {
        vg__class_t *k = &c->cls[i];
        class_lock(k);
        vg__chunk_t *ch = k->chunks;
        k->chunks = k->carve = NULL;
        free(k->ready.v);
        free(k->pending.v);
        free(k->sealed.v);
        k->ready = k->pending = k->sealed = (vg__block_stack_t){0};
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
    vg__span_t s;
    while (vg__cache_reap(c, &s))
        release(&s, ctx);
    pthread_mutex_destroy(&c->tcaches_mu);
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

/* The class alone, for a thread with no thread cache (no host memory). */
__attribute__((noinline)) static int class_take(vg__cache_t *c, int cls,
                                                size_t size, vg__block_t *out)
{
    vg__class_t *k = &c->cls[cls];
    vg__block_t b = {0, NULL};
    fill_req_t r = {.policy = REUSE_ANY};
    class_lock(k);
    if (!class_fill(c, k, &r)) {
        k->misses++;
        class_unlock(k);
        return VG_ENOMEM;
    }
    if (k->ready.n)
        b = k->ready.v[--k->ready.n];
    else
        take_fresh(k, &b);
    k->hits++;
    hand_out(k, b, size, out);
    class_unlock(k);
    return VG_OK;
}

__attribute__((noinline)) static bool class_give(vg__cache_t *c,
                                                 const vg__block_t *b,
                                                 size_t size, flush_out_t *o)
{
    vg__class_t *k = &c->cls[b->chunk->cls];
    class_lock(k);
    k->frees++;
    k->live_blocks--;
    k->live_bytes -= size;
    b->chunk->idle_since = vg__now_coarse_ns();
    stack_push(&k->pending, *b);
    block_returned(c, k, b->chunk, o);
    class_unlock(k);
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
    ch->idle_since = vg__now_coarse_ns();
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

/* ------------------------------------------------------------ magazines */

static mag_t *mag_new(uint32_t block)
{
    uint32_t cap = VG__MAG_BYTES / block;
    cap = cap < VG__MAG_MIN ? VG__MAG_MIN : cap > VG__MAG_MAX ? VG__MAG_MAX : cap;
    mag_t *m = calloc(1, sizeof *m + 2 * (size_t)cap * sizeof(vg__block_t));
    if (m)
        m->cap = cap;
    return m;
}

/* Moves m's pending blocks to the class's pending list (under both locks).
 * Each chunk they touch was last freed into at m->pend_since. */
static void flush_pending(vg__cache_t *c, vg__class_t *k, mag_t *m,
                          flush_out_t *o)
{
    vg__block_t *p = m->v + m->cap;
    uint32_t n = m->pend_n;
    m->pend_n = 0;
    if (k->pending.n + n > k->pending.cap)
        stack_grow(&k->pending, k->pending.n + n);
    for (uint32_t i = 0; i < n; i++) {
        p[i].chunk->idle_since = m->pend_since;
        stack_push(&k->pending, p[i]);
        block_returned(c, k, p[i].chunk, o);
    }
}

/* Moves m's ready blocks back to the class's ready list (under both locks):
 * they need no synchronisation. */
static void flush_ready(vg__cache_t *c, vg__class_t *k, mag_t *m)
{
    flush_out_t keep = {.keep_empty = KEEP_ALL};
    if (k->ready.n + m->ready_n > k->ready.cap)
        stack_grow(&k->ready, k->ready.n + m->ready_n);
    for (uint32_t i = 0; i < m->ready_n; i++) {
        stack_push(&k->ready, m->v[i]);
        block_returned(c, k, m->v[i].chunk, &keep);
    }
    m->ready_n = 0;
}

/* Fills m's empty ready stack from the class (under the class lock, after
 * class_fill): ready blocks first, then never-used ones. */
static void take_batch(vg__class_t *k, mag_t *m)
{
    while (m->ready_n < m->cap && k->ready.n) {
        vg__block_t b = k->ready.v[--k->ready.n];
        block_leaves(k, b.chunk);
        m->v[m->ready_n++] = b;
    }
    vg__block_t b;
    while (m->ready_n < m->cap && take_fresh(k, &b)) {
        block_leaves(k, b.chunk);
        m->v[m->ready_n++] = b;
    }
    /* Popped from the top: hand them out in the class's order. */
    for (uint32_t i = 0, j = m->ready_n; i + 1 < j; i++, j--) {
        b = m->v[i];
        m->v[i] = m->v[j - 1];
        m->v[j - 1] = b;
    }
}

/*
 * The thread's magazine of class cls is empty (under the thread cache's
 * lock): hands the thread's pending blocks to the class, so the next seal
 * covers them, then takes a batch. false on a miss. A chunk emptied by the
 * hand-over is kept: the class is about to need blocks.
 */
__attribute__((noinline)) static bool mag_refill(vg__cache_t *c, int cls,
                                                 const fill_req_t *r)
{
    vg__tcache_t *tc = r->tc;
    mag_t *m = tc->mag[cls];
    if (!m && !(m = tc->mag[cls] = mag_new(c->cls[cls].size)))
        return false;
    vg__class_t *k = &c->cls[cls];
    flush_out_t keep = {.keep_empty = KEEP_ALL};
    class_lock(k);
    if (m->pend_n)
        flush_pending(c, k, m, &keep);
    bool ok = class_fill(c, k, r);
    if (ok)
        take_batch(k, m);
    else if (r->policy == GROW_FIRST)
        m->misses++; /* once per request: REUSE_ANY is its second try */
    class_unlock(k);
    return ok;
}

/* Empties every magazine of tc into the classes (under tc's lock); true if
 * any block moved. Counters stay: they are the thread's history. */
static bool tc_flush_all(vg__cache_t *c, vg__tcache_t *tc)
{
    bool moved = false;
    for (int i = 0; i < VG__CLASSES; i++) {
        mag_t *m = tc->mag[i];
        if (!m || (m->ready_n == 0 && m->pend_n == 0))
            continue;
        vg__class_t *k = &c->cls[i];
        flush_out_t keep = {.keep_empty = KEEP_ALL};
        class_lock(k);
        flush_ready(c, k, m);
        flush_pending(c, k, m, &keep);
        class_unlock(k);
        moved = true;
    }
    return moved;
}

static void tc_free(vg__tcache_t *tc)
{
    for (int i = 0; i < VG__CLASSES; i++)
        free(tc->mag[i]);
    free(tc);
}

/* ------------------------------------------------------ thread caches */

/*
 * Each thread finds its cache of a vg__cache_t through a small table of
 * its own, keyed by the cache's address and id (a new pool may reuse a
 * destroyed one's address; ids are never reused). The last one found sits
 * in `tl_last`, so a thread that uses one pool pays one compare. The table
 * is freed, and every thread cache in it retired, by the key's destructor
 * when the thread exits. Initial-exec TLS: the library is linked or
 * preloaded, and this is the fast path (no __tls_get_addr call).
 */
#define TC_SLOTS 8

typedef struct tc_slot {
    vg__cache_t *cache;
    uint64_t id;
    vg__tcache_t *tc;
} tc_slot_t;

typedef struct tc_table {
    tc_slot_t slot[TC_SLOTS];
    unsigned victim; /* next slot to retire when all are in use */
} tc_table_t;

static _Thread_local tc_slot_t tl_last __attribute__((tls_model("initial-exec")));
static _Thread_local tc_table_t *tl_table __attribute__((tls_model("initial-exec")));
static pthread_key_t tc_key;
static pthread_once_t tc_key_once = PTHREAD_ONCE_INIT;
static bool tc_key_ok;

/* The thread is done with tc: return its blocks to the classes and leave
 * it for the cache to reuse or free; or, if the cache was drained, free it. */
static void tc_retire(vg__tcache_t *tc)
{
    tc_lock(tc);
    vg__cache_t *c = tc->cache;
    if (!c) {
        tc_unlock(tc);
        tc_free(tc);
        return;
    }
    tc_flush_all(c, tc);
    tc->dead = true;
    tc_unlock(tc); /* the last touch: the cache may free it from here on */
}

static void tc_thread_exit(void *p)
{
    tc_table_t *t = p;
    for (int i = 0; i < TC_SLOTS; i++)
        if (t->slot[i].tc)
            tc_retire(t->slot[i].tc);
    free(t);
    tl_table = NULL;
    tl_last = (tc_slot_t){0};
}

static void tc_key_make(void)
{
    biased_setup();
    tc_key_ok = pthread_key_create(&tc_key, tc_thread_exit) == 0;
}

static tc_table_t *tc_table(void)
{
    if (vg__likely(tl_table != NULL))
        return tl_table;
    pthread_once(&tc_key_once, tc_key_make);
    /* Without a key the exit could not return the blocks: use the classes. */
    if (!tc_key_ok || !(tl_table = calloc(1, sizeof *tl_table)))
        return NULL;
    if (pthread_setspecific(tc_key, tl_table) != 0) {
        free(tl_table);
        tl_table = NULL;
    }
    return tl_table;
}

/* A slot for a new thread cache: an empty one, else one whose cache was
 * drained, else the next victim, retired. */
static tc_slot_t *tc_slot_free(tc_table_t *t)
{
    for (int i = 0; i < TC_SLOTS; i++)
        if (!t->slot[i].tc)
            return &t->slot[i];
    for (int i = 0; i < TC_SLOTS; i++) {
        vg__tcache_t *tc = t->slot[i].tc;
        tc_lock(tc);
        bool stale = tc->cache == NULL;
        tc_unlock(tc);
        if (stale) {
            tc_free(tc);
            return &t->slot[i];
        }
    }
    tc_slot_t *s = &t->slot[t->victim++ % TC_SLOTS];
    tc_retire(s->tc);
    return s;
}

/* A thread cache of c for the calling thread: a dead thread's, or new. */
static vg__tcache_t *tc_join(vg__cache_t *c)
{
    pthread_mutex_lock(&c->tcaches_mu);
    vg__tcache_t *tc;
    for (tc = c->tcaches; tc; tc = tc->next) {
        tc_lock(tc); /* `dead` is only ever touched under the lock */
        bool adopt = tc->dead;
        if (adopt)
            tc->dead = false;
        tc_unlock(tc);
        if (adopt)
            break;
    }
    if (!tc && (tc = calloc(1, sizeof *tc)) != NULL) {
        atomic_init(&tc->lock, 0);
        tc->cache = c;
        tc->next = c->tcaches;
        c->tcaches = tc;
    }
    pthread_mutex_unlock(&c->tcaches_mu);
    return tc;
}

__attribute__((noinline)) static vg__tcache_t *tc_find(vg__cache_t *c)
{
    tc_table_t *t = tc_table();
    if (!t)
        return NULL;
    for (int i = 0; i < TC_SLOTS; i++) {
        if (t->slot[i].cache == c && t->slot[i].id == c->id) {
            tl_last = t->slot[i];
            return tl_last.tc;
        }
    }
    tc_slot_t *s = tc_slot_free(t);
    *s = (tc_slot_t){0};
    tl_last = (tc_slot_t){0};
    vg__tcache_t *tc = tc_join(c);
    if (!tc)
        return NULL;
    *s = (tc_slot_t){c, c->id, tc};
    tl_last = *s;
    return tc;
}

/* The calling thread's cache of c; NULL when there is no host memory. */
static inline vg__tcache_t *tc_mine(vg__cache_t *c)
{
    if (vg__likely(tl_last.cache == c && tl_last.id == c->id))
        return tl_last.tc;
    return tc_find(c);
}

/* The cache is being drained: every thread cache leaves it. Blocks in the
 * magazines die with their chunks. The calling thread's own goes at once;
 * other threads free theirs when they next look or exit. */
static void tc_detach_all(vg__cache_t *c)
{
    pthread_mutex_lock(&c->tcaches_mu);
    vg__tcache_t *tc = c->tcaches;
    c->tcaches = NULL;
    pthread_mutex_unlock(&c->tcaches_mu);
    while (tc) {
        vg__tcache_t *next = tc->next;
        remote_enter(tc);
        bool dead = tc->dead;
        tc->cache = NULL;
        for (int i = 0; i < VG__CLASSES; i++)
            if (tc->mag[i])
                tc->mag[i]->ready_n = tc->mag[i]->pend_n = 0;
        remote_leave(tc);
        if (dead)
            tc_free(tc);
        tc = next;
    }
    for (int i = 0; tl_table && i < TC_SLOTS; i++) {
        tc_slot_t *s = &tl_table->slot[i];
        if (s->cache == c && s->id == c->id) {
            tc_free(s->tc);
            *s = (tc_slot_t){0};
        }
    }
    if (tl_last.cache == c)
        tl_last = (tc_slot_t){0};
}

bool vg__cache_collect(vg__cache_t *c)
{
    bool moved = false;
    pthread_mutex_lock(&c->tcaches_mu);
    for (vg__tcache_t *tc = c->tcaches; tc; tc = tc->next) {
        remote_enter(tc);
        moved |= tc_flush_all(c, tc);
        remote_leave(tc);
    }
    pthread_mutex_unlock(&c->tcaches_mu);
    return moved;
}

/* ------------------------------------------------------------ take, give */

static inline int take(vg__cache_t *c, int cls, size_t size,
                       vg__block_t *out, take_policy_t policy)
{
    vg__tcache_t *tc = tc_mine(c);
    if (vg__unlikely(!tc))
        return class_take(c, cls, size, out);
    own_t how = own_enter(tc);
    mag_t *m = tc->mag[cls];
    if (vg__unlikely(!m || m->ready_n == 0)) {
        fill_req_t r = {tc, &how, policy};
        if (!mag_refill(c, cls, &r)) {
            own_leave(tc, how);
            return VG_ENOMEM;
        }
        m = tc->mag[cls];
    }
    *out = m->v[--m->ready_n];
    m->allocs++;
    m->live_blocks++;
    m->live_bytes += size;
    m->bytes_allocated += size;
    own_leave(tc, how);
    return VG_OK;
}

int vg__cache_take(vg__cache_t *c, int cls, size_t size, vg__block_t *out)
{
    return take(c, cls, size, out, GROW_FIRST);
}

int vg__cache_take_any(vg__cache_t *c, int cls, size_t size, vg__block_t *out)
{
    return take(c, cls, size, out, REUSE_ANY);
}

/* The thread's pending magazine of the block's class is full or missing
 * (under the thread cache's lock): hand the full one to the class. NULL
 * when there is no host memory for a magazine. */
__attribute__((noinline)) static mag_t *mag_make_room(vg__cache_t *c,
                                                      vg__tcache_t *tc,
                                                      int cls, flush_out_t *o)
{
    mag_t *m = tc->mag[cls];
    if (!m)
        return tc->mag[cls] = mag_new(c->cls[cls].size);
    vg__class_t *k = &c->cls[cls];
    class_lock(k);
    flush_pending(c, k, m, o);
    class_unlock(k);
    return m;
}

bool vg__cache_give(vg__cache_t *c, const vg__block_t *b, size_t size,
                    uint32_t keep_empty, vg__span_t *release)
{
    int cls = b->chunk->cls;
    flush_out_t o = {.keep_empty = keep_empty, .release = release};
    vg__tcache_t *tc = tc_mine(c);
    if (vg__unlikely(!tc))
        return class_give(c, b, size, &o);
    own_t how = own_enter(tc);
    mag_t *m = tc->mag[cls];
    if (vg__unlikely(!m || m->pend_n == m->cap) &&
        !(m = mag_make_room(c, tc, cls, &o))) {
        own_leave(tc, how);
        return class_give(c, b, size, &o);
    }
    /* One clock read per batch: the chunk's idle time for trimming. */
    if (m->pend_n == 0)
        m->pend_since = vg__now_coarse_ns();
    m->v[m->cap + m->pend_n++] = *b;
    m->frees++;
    m->live_blocks--;
    m->live_bytes -= size;
    own_leave(tc, how);
    return o.released;
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
    if (k->empty_chunks == 0)
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
static bool trim_empty(vg__cache_t *c, vg__span_t *release)
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
        vg__chunk_t *found = NULL;
        class_lock(k);
        for (vg__chunk_t *ch = k->chunks; ch; ch = ch->next)
            if (ch == p.chunk && ch->live == 0) {
                chunk_detach(c, k, ch);
                found = ch;
                break;
            }
        class_unlock(k);
        if (found) {
            *release = (vg__span_t){found->base, found->bytes};
            free(found);
            return true;
        }
    }
    return false;
}

bool vg__cache_trim_one(vg__cache_t *c, vg__span_t *release)
{
    if (vg__cache_reap(c, release) || trim_empty(c, release))
        return true;
    /* Blocks parked in magazines keep their chunks non-empty. */
    return vg__cache_collect(c) && trim_empty(c, release);
}

/* ------------------------------------------------------------ stats */

static void add_mag(vg__cache_stats_t *s, const mag_t *m, uint64_t *live)
{
    s->live_bytes += m->live_bytes;
    s->hits += m->allocs;
    s->misses += m->misses;
    s->allocs += m->allocs;
    s->frees += m->frees;
    s->bytes_allocated += m->bytes_allocated;
    *live += m->live_blocks;
}

/* Sums the classes and every thread cache (dead threads' included: their
 * counters are history). Under the list mutex, so no thread cache comes or
 * goes meanwhile. */
void vg__cache_stats(vg__cache_t *c, vg__cache_stats_t *s)
{
    *s = (vg__cache_stats_t){0};
    uint64_t live[VG__CLASSES]; /* live blocks per class */
    pthread_mutex_lock(&c->tcaches_mu);
    for (int i = 0; i < VG__CLASSES; i++) {
        vg__class_t *k = &c->cls[i];
        class_lock(k);
        s->live_bytes += k->live_bytes;
        s->hits += k->hits;
        s->misses += k->misses;
        s->allocs += k->allocs;
        s->frees += k->frees;
        s->bytes_allocated += k->bytes_allocated;
        live[i] = k->live_blocks;
        class_unlock(k);
    }
    for (vg__tcache_t *tc = c->tcaches; tc; tc = tc->next) {
        remote_enter(tc);
        for (int i = 0; i < VG__CLASSES; i++)
            if (tc->mag[i])
                add_mag(s, tc->mag[i], &live[i]);
        remote_leave(tc);
    }
    pthread_mutex_unlock(&c->tcaches_mu);
    uint64_t handed = 0; /* class bytes of live blocks */
    for (int i = 0; i < VG__CLASSES; i++) {
        s->live_blocks += live[i];
        handed += live[i] * c->cls[i].size;
    }
    s->held = atomic_load_explicit(&c->held, memory_order_relaxed);
    s->cached = s->held > handed ? s->held - handed : 0;
    s->syncs = atomic_load_explicit(&c->syncs, memory_order_relaxed);
}
