/*
 * cache_thread.c — each thread's cache (vg__tcache_t) in front of the size
 * classes of cache.c: per class a magazine of ready and one of pending
 * blocks, the thread's table of its caches (a pthread key returns the
 * blocks at thread exit), the owner-biased lock that keeps the fast path
 * free of atomic read-modify-writes, and the remote side of that lock
 * (collect, drain, stats). The rules are in vg_pool.h and docs/pool.md.
 *
 * Cost of the fast path (a block from the thread's magazine, or a free into
 * it): a thread-local lookup (one compare), the magazine's owner-biased lock
 * (a plain store and a load, no atomic read-modify-write; see "Owner and
 * remote"), an array push or pop and four counters beside it, all on lines
 * no other thread writes. A magazine exchanges a batch with its class once
 * per up to 32 operations, under the class lock. The slow paths (refills,
 * synchronising, thread start and exit) are out of line. Measured in
 * docs/pool.md (~50 ns for the whole API pair on the 2-core VM, ledger
 * included).
 */
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "vg_pool.h"

/* One thread's blocks of one class. */
typedef struct mag {
    uint32_t cap;          /* blocks each of the two stacks holds */
    uint32_t ready_n, pend_n;
    uint64_t pend_since;   /* coarse ns of the first free into `pending` */
    /* This thread's requests in this class. A block freed by another thread
     * than the one that took it makes live_* of both wrap; only the sums
     * over every magazine and the class mean anything. */
    uint64_t allocs, frees, bytes_allocated;
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
    uint32_t arena;        /* its classes: c->arena[arena] */
    vg__cache_t *cache;    /* NULL once the cache is drained */
    vg__tcache_t *next;    /* the cache's list, under its tcaches_mu */
    mag_t *mag[VG__CLASSES];
};

/* ------------------------------------------------------------ locking */

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
                          vg__flush_out_t *o)
{
    vg__batch_t b = {m->v + m->cap, m->pend_n, m->pend_since};
    m->pend_n = 0;
    vg__class_put_pending(c, k, &b, o);
}

/* Moves m's ready blocks back to the class's ready list (under both locks):
 * they need no synchronisation. */
static void flush_ready(vg__cache_t *c, vg__class_t *k, mag_t *m)
{
    vg__class_put_ready(c, k, m->v, m->ready_n);
    m->ready_n = 0;
}

/* The caller of fill: its thread cache and how it holds it, which fill
 * updates across the sync. */
typedef struct fill_req {
    vg__tcache_t *tc;
    own_t *how;
    vg__take_policy_t policy;
} fill_req_t;

/* vg__class_fill for a thread cache (under its lock and the class lock):
 * both are dropped around the sync. false: a miss. */
static bool fill(vg__cache_t *c, vg__class_t *k, const fill_req_t *r)
{
    uint64_t epoch;
    vg__fill_t f;
    while ((f = vg__class_fill(c, k, r->policy, &epoch)) == VG__FILL_WAIT) {
        vg__class_unlock(k);
        own_leave(r->tc, *r->how);
        vg__cache_sync_after(c, epoch);
        *r->how = own_enter(r->tc);
        vg__class_lock(k);
    }
    return f == VG__FILL_OK;
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
    if (!m && !(m = tc->mag[cls] = mag_new(vg__class_size(cls))))
        return false;
    vg__class_t *k = vg__class_at(c, tc->arena, cls);
    vg__flush_out_t keep = {.keep_empty = VG__KEEP_ALL};
    vg__class_lock(k);
    if (m->pend_n)
        flush_pending(c, k, m, &keep);
    bool ok = fill(c, k, r);
    if (ok)
        m->ready_n = vg__class_take_batch(k, m->v, m->ready_n, m->cap);
    vg__class_unlock(k);
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
        vg__class_t *k = vg__class_at(c, tc->arena, i);
        vg__flush_out_t keep = {.keep_empty = VG__KEEP_ALL};
        vg__class_lock(k);
        flush_ready(c, k, m);
        flush_pending(c, k, m, &keep);
        vg__class_unlock(k);
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
        tc->arena = atomic_fetch_add_explicit(&c->next_arena, 1,
                                              memory_order_relaxed) %
                    c->arenas;
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

uint32_t vg__tcache_arena(vg__cache_t *c)
{
    vg__tcache_t *tc = tc_mine(c);
    return tc ? tc->arena : 0; /* the arena is fixed for tc's life */
}

/* The cache is being drained: every thread cache leaves it. Blocks in the
 * magazines die with their chunks. The calling thread's own goes at once;
 * other threads free theirs when they next look or exit. */
void vg__tcache_detach_all(vg__cache_t *c)
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

/* Fork: every thread cache held as a remote, so no owner is inside its
 * fast section (with `busy` set) or holds its lock when the process forks,
 * and none enters one until the release. */
void vg__tcache_prefork(vg__cache_t *c)
{
    for (vg__tcache_t *tc = c->tcaches; tc; tc = tc->next)
        remote_enter(tc);
}

void vg__tcache_postfork(vg__cache_t *c)
{
    for (vg__tcache_t *tc = c->tcaches; tc; tc = tc->next)
        remote_leave(tc);
}

/* ------------------------------------------------------------ take, give */

VG__HOT static inline int take(vg__cache_t *c, int cls, size_t size,
                               vg__block_t *out, vg__take_policy_t policy)
{
    vg__tcache_t *tc = tc_mine(c);
    if (vg__unlikely(!tc))
        return vg__class_take(c, 0, cls, size, out);
    own_t how = own_enter(tc);
    mag_t *m = tc->mag[cls];
    if (vg__unlikely(!m || m->ready_n == 0)) {
        fill_req_t r = {tc, &how, policy};
        if (!mag_refill(c, cls, &r)) {
            bool no_mag = !tc->mag[cls];
            own_leave(tc, how);
            /* No host memory for a magazine: the class serves it, as it
             * takes such a thread's frees (vg__cache_give). */
            return no_mag ? vg__class_take(c, tc->arena, cls, size, out) : VG_ENOMEM;
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

VG__HOT int vg__cache_take(vg__cache_t *c, int cls, size_t size, vg__block_t *out)
{
    return take(c, cls, size, out, VG__GROW_FIRST);
}

int vg__cache_take_any(vg__cache_t *c, int cls, size_t size, vg__block_t *out)
{
    if (take(c, cls, size, out, VG__REUSE_ANY) == VG_OK)
        return VG_OK;
    uint32_t mine = vg__tcache_arena(c);
    for (uint32_t a = 0; a < c->arenas; a++)
        if (a != mine && vg__class_take(c, a, cls, size, out) == VG_OK)
            return VG_OK;
    return VG_ENOMEM;
}

/* The thread's pending magazine of the block's class is full or missing
 * (under the thread cache's lock): hand the full one to the class. NULL
 * when there is no host memory for a magazine. */
__attribute__((noinline)) static mag_t *mag_make_room(vg__cache_t *c,
                                                      vg__tcache_t *tc,
                                                      int cls, vg__flush_out_t *o)
{
    mag_t *m = tc->mag[cls];
    if (!m)
        return tc->mag[cls] = mag_new(vg__class_size(cls));
    vg__class_t *k = vg__class_at(c, tc->arena, cls);
    vg__class_lock(k);
    flush_pending(c, k, m, o);
    vg__class_unlock(k);
    return m;
}

VG__HOT bool vg__cache_give(vg__cache_t *c, const vg__block_t *b, size_t size,
                            uint32_t keep_empty, vg__span_t *release)
{
    int cls = b->chunk->cls;
    vg__flush_out_t o = {.keep_empty = keep_empty, .release = release};
    vg__tcache_t *tc = tc_mine(c);
    /* A block of another arena goes back to its own class. */
    if (vg__unlikely(!tc || b->chunk->arena != tc->arena))
        return vg__class_give(c, b, size, &o);
    own_t how = own_enter(tc);
    mag_t *m = tc->mag[cls];
    if (vg__unlikely(!m || m->pend_n == m->cap) &&
        !(m = mag_make_room(c, tc, cls, &o))) {
        own_leave(tc, how);
        return vg__class_give(c, b, size, &o);
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

/* ------------------------------------------------------------ stats */

static void add_mag(vg__cache_stats_t *s, const mag_t *m, uint64_t *live)
{
    s->live_bytes += m->live_bytes;
    s->hits += m->allocs;
    s->allocs += m->allocs;
    s->frees += m->frees;
    s->bytes_allocated += m->bytes_allocated;
    *live += m->live_blocks;
}

void vg__tcache_sum(vg__cache_t *c, vg__cache_stats_t *s, uint64_t *live)
{
    for (vg__tcache_t *tc = c->tcaches; tc; tc = tc->next) {
        remote_enter(tc);
        for (int i = 0; i < VG__CLASSES; i++)
            if (tc->mag[i])
                add_mag(s, tc->mag[i], &live[i]);
        remote_leave(tc);
    }
}
