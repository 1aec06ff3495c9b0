/*
 * account_streams.c — stream-ordered pools (cuMemAllocAsync,
 * cuMemAllocFromPoolAsync, cuMemPool*): charged by what each pool
 * reserves (CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT), which is what the card
 * gives up, not by what was asked for, since a pool keeps freed memory
 * until it is trimmed; and to the device the pool is on.
 *
 * Readings of a pool are taken without a lock (they are driver calls) and
 * applied under pools_lock in the order they were taken (a generation
 * count), so a stale reading never undoes growth another thread charged.
 * Not on the plain allocation path.
 *
 * Any number of pools is charged: each has an entry, found by its handle
 * in a hash. A pool's first reading that finds memory makes its entry; with
 * no host memory for it the allocation that grew the pool is refused with
 * CUDA_ERROR_OUT_OF_MEMORY, undone and the pool trimmed (hooks_async.c),
 * as for an allocation the ledger cannot record (docs/accounting.md): kept
 * without an entry, the pool would hold memory the budget never sees.
 */
#include <pthread.h>
#include <stdlib.h>

#include "vg_account.h"
#include "vg_audit.h"
#include "vg_fork.h"

/* uthash reports an add it found no memory for (its buckets) instead of
 * ending the process: the item is not in the table and hash_oom is set.
 * Every add is under pools_lock. */
static bool hash_oom;
#define HASH_NONFATAL_OOM 1
#define uthash_nonfatal_oom(obj) (hash_oom = true)
#include <uthash.h>

/* ---------------------------------------------- stream-ordered pools */

/* What one pool is charged. Found by its handle in `pools` (O(1): every
 * stream-ordered allocation looks). A pool destroyed with allocations out
 * keeps its entry, `orphans` set, until the last of them is freed, and the
 * driver may give its address to a new pool meanwhile: the entries of one
 * address form a chain, newest first. The hash holds the newest, the only
 * one that can be live (orphans 0); `older` links destroyed ones. */
typedef struct pool_slot {
    CUmemoryPool pool;
    int device;
    uint64_t charged;         /* bytes */
    uint64_t orphans;         /* destroyed with this many allocations out: the driver
                                 frees its memory after the last (0: not destroyed) */
    struct pool_slot *older;  /* a destroyed pool at the same address, or NULL */
    UT_hash_handle hh;
} pool_slot_t;

/* Every pool this process drew memory from. The lock is never held
 * across a driver call. */
static pthread_mutex_t pools_lock = PTHREAD_MUTEX_INITIALIZER;
static pool_slot_t *pools;     /* under pools_lock */
static _Atomic int pool_count; /* addresses in `pools`: lets devices without pools skip the lock */
static _Atomic int orphaned;   /* entries with orphans: lets frees skip the lock */
/* Bumped (under the lock) at every change of the entries. A reading of a
 * pool is applied only when no change came between the reading and its
 * swap: a reading taken before another thread's allocation grew the pool
 * and applied after that growth was charged would give the growth back,
 * uncharged while the driver holds it. So the charges follow the driver's
 * readings in the order they were taken. */
static _Atomic uint64_t pools_gen;

/* A fork while another thread holds the lock must not leave it held in the
 * child (every stream-ordered allocation takes it): fork.c, rank
 * STREAM_POOLS. */
void vg__account_prefork(void) { pthread_mutex_lock(&pools_lock); }
void vg__account_postfork_parent(void) { pthread_mutex_unlock(&pools_lock); }
void vg__account_postfork_child(void) { pthread_mutex_unlock(&pools_lock); }

/* The live (not destroyed) entry of `pool`, NULL when it has none. Under
 * the lock. */
static pool_slot_t *slot_find(CUmemoryPool pool)
{
    pool_slot_t *s;
    HASH_FIND_PTR(pools, &pool, s);
    return s && !s->orphans ? s : NULL;
}

/* A new live entry for `pool`, at the head of its address's chain. Under
 * the lock. NULL without host memory. */
static pool_slot_t *slot_make(CUmemoryPool pool, int device, pool_slot_t *head)
{
    pool_slot_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    if (head) { /* destroyed pools at this address: the head moves down the chain */
        *s = (pool_slot_t){.pool = pool, .device = head->device, .charged = head->charged,
                           .orphans = head->orphans, .older = head->older};
        head->device = device;
        head->charged = head->orphans = 0;
        head->older = s;
        return head;
    }
    s->pool = pool;
    s->device = device;
    hash_oom = false;
    HASH_ADD_PTR(pools, pool, s);
    if (hash_oom) {
        free(s);
        return NULL;
    }
    atomic_fetch_add_explicit(&pool_count, 1, memory_order_relaxed);
    return s;
}

/* The live entry of `pool` for a reading of `now` bytes. A reading of 0
 * makes none (its charge, 0, is the same either way). An entry found
 * empty stays for the pool's next growth and takes the reading's device,
 * as a new one would. Under the lock. NULL when there is none: a reading
 * of 0, or no host memory for a new entry. */
static pool_slot_t *slot_of(CUmemoryPool pool, int device, uint64_t now)
{
    pool_slot_t *head;
    HASH_FIND_PTR(pools, &pool, head);
    if (head && !head->orphans) {
        if (!head->charged)
            head->device = device;
        return head;
    }
    return now ? slot_make(pool, device, head) : NULL;
}

/* ---------------------------------------------- the current pool */

/* The pool cuMemAllocAsync draws from on each device, remembered: asking
 * the driver (cuDeviceGetMemPool) on every allocation was one of the
 * calls that made the stream-ordered pair cost x1.40 of native on an H100
 * (docs/benchmarks.md). The driver changes it only at cuDeviceSetMemPool
 * and cuMemSetMemPool (hooked), and at cuMemPoolDestroy of the current
 * pool (its device's default becomes current again); a context's end is
 * treated as a change too, to be safe. After each, once the driver
 * returned, vg__acct_pool_current_changed() forgets every device's
 * (NULL: ask again).
 *
 * A thread that asked the driver before a change and stores its answer
 * after the change was forgotten would keep a stale pool for good, so the
 * answer is kept only when no change came in between (current_gen): the
 * filler stores, then checks the generation and takes its answer back if
 * it moved; the changer bumps the generation, then clears. In the single
 * total order of these seq_cst operations, either the filler's check sees
 * the bump (and clears its own answer) or the changer's clear comes after
 * the filler's store (and clears it). A change racing an allocation in
 * another thread leaves that allocation to either pool, as the driver's
 * own order does; a pool's growth the settle did not read is charged at
 * that pool's next reading (vg__acct_pool_settle, trims, memory views). */
static _Atomic(CUmemoryPool) current[VG__MAX_DEVICES];
static _Atomic uint64_t current_gen;

__attribute__((noinline)) static CUmemoryPool current_ask(int device)
{
    CUmemoryPool pool = NULL, mine;
    uint64_t gen = atomic_load_explicit(&current_gen, memory_order_seq_cst);
    if (vg__driver()->cuDeviceGetMemPool(&pool, (CUdevice)device) != CUDA_SUCCESS || !pool)
        return NULL; /* not remembered: asked again next time */
    if (device < 0 || device >= VG__MAX_DEVICES)
        return pool;
    atomic_store_explicit(&current[device], pool, memory_order_seq_cst);
    mine = pool;
    if (atomic_load_explicit(&current_gen, memory_order_seq_cst) != gen)
        atomic_compare_exchange_strong_explicit(&current[device], &mine, NULL,
                                                memory_order_seq_cst, memory_order_seq_cst);
    return pool;
}

/* Hot path: one load once the device's pool is known. */
CUmemoryPool vg__acct_pool_current(int device)
{
    if (vg__likely(device >= 0 && device < VG__MAX_DEVICES)) {
        CUmemoryPool pool = atomic_load_explicit(&current[device], memory_order_acquire);
        if (vg__likely(pool != NULL))
            return pool;
    }
    return current_ask(device);
}

void vg__acct_pool_current_changed(void)
{
    atomic_fetch_add_explicit(&current_gen, 1, memory_order_seq_cst);
    for (int d = 0; d < VG__MAX_DEVICES; d++)
        atomic_store_explicit(&current[d], NULL, memory_order_seq_cst);
}

/* ---------------------------------------------- where a pool's memory is */

/* cuMemAllocFromPoolAsync may draw from a pool on another device than the
 * current one, and a pool located on the host (CU_MEM_LOCATION_TYPE_HOST
 * or _HOST_NUMA, CUDA 12.2) holds no device memory at all: charging the
 * current device took one device's budget for another's memory, and a
 * device budget for host memory. The location is in the pool's props at
 * cuMemPoolCreate. A pool the shim did not see made is a device's default
 * or current pool, located on that device (cuDeviceSetMemPool takes only a
 * pool local to it); imported pools cannot allocate. Such a pool is looked
 * for once, then remembered. */
enum { HOME_HOST = -1, HOME_UNKNOWN = -2 };

typedef struct pool_home {
    CUmemoryPool pool;
    int device; /* or HOME_HOST, HOME_UNKNOWN */
    UT_hash_handle hh;
} pool_home_t;

static pool_home_t *homes; /* under pools_lock */

static int home_of(const CUmemLocation *where)
{
    switch (where->type) {
    case CU_MEM_LOCATION_TYPE_DEVICE:
        return where->id;
    case CU_MEM_LOCATION_TYPE_HOST:
    case CU_MEM_LOCATION_TYPE_HOST_NUMA:
    case CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT:
        return HOME_HOST;
    default: /* a managed pool with no preferred location */
        return HOME_UNKNOWN;
    }
}

/* Without host memory for the entry the pool is looked up again next time. */
static void home_set(CUmemoryPool pool, int device)
{
    pool_home_t *h;
    vg__mutex_lock(&pools_lock, VG__RANK_STREAM_POOLS);
    HASH_FIND_PTR(homes, &pool, h);
    if (!h && (h = calloc(1, sizeof *h))) {
        h->pool = pool;
        hash_oom = false;
        HASH_ADD_PTR(homes, pool, h);
        if (hash_oom) {
            free(h);
            h = NULL;
        }
    }
    if (h)
        h->device = device;
    vg__mutex_unlock(&pools_lock, VG__RANK_STREAM_POOLS);
}

/* Which device's default or current pool `pool` is. Driver calls: never
 * under the lock. */
static int home_ask(CUmemoryPool pool)
{
    int n = 0;
    vg__driver()->cuDeviceGetCount(&n);
    for (int d = 0; d < n && d < VG__MAX_DEVICES; d++) {
        CUmemoryPool dflt = NULL, cur = NULL;
        vg__driver()->cuDeviceGetDefaultMemPool(&dflt, d);
        vg__driver()->cuDeviceGetMemPool(&cur, d);
        if (pool == dflt || pool == cur)
            return d;
    }
    return HOME_UNKNOWN;
}

void vg__acct_pool_made(CUmemoryPool pool, const CUmemLocation *where)
{
    home_set(pool, home_of(where));
}

bool vg__acct_pool_home(CUmemoryPool pool, int *device)
{
    pool_home_t *h;
    vg__mutex_lock(&pools_lock, VG__RANK_STREAM_POOLS);
    HASH_FIND_PTR(homes, &pool, h);
    int home = h ? h->device : HOME_UNKNOWN;
    vg__mutex_unlock(&pools_lock, VG__RANK_STREAM_POOLS);
    if (!h) {
        home = home_ask(pool);
        home_set(pool, home);
    }
    if (home >= 0)
        *device = home;
    return home != HOME_HOST;
}

static uint64_t pool_reserved(CUmemoryPool pool)
{
    cuuint64_t v = 0;
    vg__driver()->cuMemPoolGetAttribute(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &v);
    return v;
}

/* One reading of a pool to apply: the budget it is charged to and how
 * much of its growth a caller's reservation already covers. */
typedef struct pool_reading {
    vg__budget_t *b;
    uint64_t covered; /* bytes */
    uint64_t before;  /* out: the charge the reading replaced */
    bool homeless;    /* out: the pool reserves memory and no entry could be
                         made for it (no host memory): nothing was charged */
} pool_reading_t;

/* The entry's charge becomes `now`, read from the driver when the entries
 * were at generation `seen`; r->before is what it was (`now` without an
 * entry). False, changing nothing, when the entries changed since `seen`:
 * `now` may be older than what they hold. Growth past r->covered is
 * charged here, under the lock, so charges land in the order of the
 * readings: charged after the lock, another thread's later swap could
 * find the growth already in the entry and give back the reservation that
 * covered it first, and for that moment the budget held neither (another
 * allocation fitted into it). Only `used` moves here; peak, level and
 * every decrease (a late decrease over-counts, never under-counts) are
 * the caller's, after the lock: a level change runs hooks that call the
 * driver (cache mode's trim). */
static bool slot_swap(CUmemoryPool pool, int device, uint64_t now, uint64_t seen,
                      pool_reading_t *r)
{
    vg__mutex_lock(&pools_lock, VG__RANK_STREAM_POOLS);
    bool fresh = atomic_load_explicit(&pools_gen, memory_order_relaxed) == seen;
    if (fresh) {
        pool_slot_t *s = slot_of(pool, device, now);
        r->homeless = !s && now;
        r->before = s ? s->charged : now;
        if (s)
            s->charged = now;
        if (now > r->before + r->covered)
            vg__budget_force_quiet(r->b, now - r->before - r->covered);
        atomic_store_explicit(&pools_gen, seen + 1, memory_order_release);
    }
    vg__mutex_unlock(&pools_lock, VG__RANK_STREAM_POOLS);
    return fresh;
}

/* Reads what `pool` reserves and makes it the entry's charge (slot_swap).
 * Read again when another thread changed the entries meanwhile (each
 * retry means another thread's change went through). */
static uint64_t slot_update(CUmemoryPool pool, int device, pool_reading_t *r)
{
    for (;;) {
        uint64_t seen = atomic_load_explicit(&pools_gen, memory_order_acquire);
        uint64_t now = pool_reserved(pool);
        if (slot_swap(pool, device, now, seen, r))
            return now;
    }
}

/* A pool without an entry: charged nothing (r->homeless). Called after
 * an undo and a trim, it is left as the driver left it. */
void vg__acct_pool_sync(int device, CUmemoryPool pool)
{
    pool_reading_t r = {.b = vg__engine_budget(device)};
    uint64_t now = slot_update(pool, device, &r);
    if (now > r.before)
        vg__budget_commit(r.b, now - r.before); /* charged by the swap */
    else if (now < r.before)
        vg__budget_release(r.b, r.before - now);
}

__attribute__((cold)) static int refuse_homeless(vg__ticket_t *t)
{
    char sz[32];
    vg__log("refused %s of %s on device %d: no host memory to charge its pool "
            "(CUDA_ERROR_OUT_OF_MEMORY)", t->api, vg__fmt_bytes(t->bytes, sz, sizeof sz),
            t->device);
    vg__audit_refuse(t, VG_ENOMEM);
    return VG_ENOMEM;
}

int vg__acct_pool_settle(vg__ticket_t *t, CUmemoryPool pool)
{
    pool_reading_t r = {.b = t->budget, .covered = t->bytes};
    uint64_t now = slot_update(pool, t->device, &r);
    uint64_t growth = now > r.before ? now - r.before : 0;
    int rc = vg__unlikely(r.homeless) ? refuse_homeless(t) : VG_OK;
    if (now < r.before)
        vg__budget_release(r.b, r.before - now);
    if (growth) /* no growth, nothing to commit: the reservation goes back */
        vg__budget_commit(r.b, growth);
    if (growth < t->bytes)
        vg__budget_rollback(r.b, t->bytes - growth);
    /* The pool grew by a whole chunk more than was asked: it is real use,
     * charged by the swap; if it does not fit, the caller undoes. */
    if (rc == VG_OK && growth > t->bytes && vg__budget_over(r.b)) {
        rc = VG_ENOMEM;
        vg__audit_refuse(t, rc);
    }
    t->bytes = 0;
    return rc;
}

/* The pools read without a list from the heap. */
#define POOL_BATCH 64

/* Pools copied out of `pools`, so no driver call runs under the lock. */
typedef struct pool_list {
    CUmemoryPool *v; /* `local`, or the heap's when more pools have entries */
    unsigned n;
    CUmemoryPool local[POOL_BATCH];
} pool_list_t;

/* The pools of `device` that hold a charge, into l (pool_list_done gives
 * its memory back). Without host memory for a list of them all, the first
 * POOL_BATCH: one not read keeps its charge until its next reading (pools
 * shrink behind our back; they grow at allocations, each of which reads
 * its pool), one not trimmed gives nothing back: never an under-count. */
static void charged_pools(int device, pool_list_t *l)
{
    l->v = l->local;
    l->n = 0;
    if (!vg__driver() || !atomic_load_explicit(&pool_count, memory_order_relaxed))
        return;
    vg__mutex_lock(&pools_lock, VG__RANK_STREAM_POOLS);
    unsigned cap = HASH_COUNT(pools);
    if (cap > POOL_BATCH && !(l->v = malloc(cap * sizeof *l->v)))
        l->v = l->local;
    if (l->v == l->local)
        cap = POOL_BATCH;
    for (pool_slot_t *s = pools; s && l->n < cap; s = s->hh.next)
        if (s->device == device && s->charged &&
            !s->orphans) /* a destroyed pool can be neither asked nor trimmed */
            l->v[l->n++] = s->pool;
    vg__mutex_unlock(&pools_lock, VG__RANK_STREAM_POOLS);
}

static void pool_list_done(pool_list_t *l)
{
    if (l->v != l->local)
        free(l->v);
}

void vg__acct_pools_sync_device(int device)
{
    pool_list_t l;
    charged_pools(device, &l);
    for (unsigned i = 0; i < l.n; i++)
        vg__acct_pool_sync(device, l.v[i]);
    pool_list_done(&l);
}

bool vg__acct_pool_trim(int device)
{
    pool_list_t l;
    charged_pools(device, &l);
    const vg__budget_t *b = vg__engine_budget(device);
    uint64_t before = atomic_load_explicit(&b->used, memory_order_relaxed);
    for (unsigned i = 0; i < l.n; i++) {
        vg__driver()->cuMemPoolTrimTo(l.v[i], 0);
        vg__acct_pool_sync(device, l.v[i]);
    }
    pool_list_done(&l);
    return atomic_load_explicit(&b->used, memory_order_relaxed) < before;
}

static bool from_stream_pool(const vg__alloc_t *a)
{
    return (a->kind == VG_KIND_ASYNC || a->kind == VG_KIND_POOL) && !a->pooled;
}

struct pool_blocks {
    uint64_t pool, n;
};

static void count_pool_block(const vg__alloc_t *a, void *ctx)
{
    struct pool_blocks *c = ctx;
    c->n += from_stream_pool(a) && a->handle == c->pool;
}

/* A charge taken out of `pools`, released once the lock is dropped. */
typedef struct pool_gone {
    int device;
    uint64_t charged; /* bytes */
} pool_gone_t;

/* Takes entry s out (lock held); `newer` is the entry before it in its
 * address's chain, NULL when s is the hash's. The head stays in the hash
 * while the chain goes on (the next entry moves into it), so taking an
 * entry out never needs memory. */
static void slot_clear(pool_slot_t *s, pool_slot_t *newer, pool_gone_t *gone)
{
    pool_slot_t *out = s;
    *gone = (pool_gone_t){s->device, s->charged};
    if (newer) {
        newer->older = s->older;
    } else if (s->older) {
        out = s->older;
        s->device = out->device;
        s->charged = out->charged;
        s->orphans = out->orphans;
        s->older = out->older;
    } else {
        HASH_DEL(pools, s);
        atomic_fetch_sub_explicit(&pool_count, 1, memory_order_relaxed);
    }
    free(out);
    /* A reading of the pool taken before this must not make it an entry again. */
    atomic_fetch_add_explicit(&pools_gen, 1, memory_order_release);
}

static void slot_release(const pool_gone_t *gone)
{
    if (gone->charged)
        vg__budget_release(vg__engine_budget(gone->device), gone->charged);
}

void vg__acct_pool_forget(CUmemoryPool pool)
{
    struct pool_blocks c = {(uint64_t)(uintptr_t)pool, 0};
    pool_gone_t gone = {0};
    pool_home_t *h;
    vg__ledger_foreach(NULL, count_pool_block, &c);
    vg__mutex_lock(&pools_lock, VG__RANK_STREAM_POOLS);
    HASH_FIND_PTR(homes, &pool, h);
    if (h) /* the handle may name a new pool next */
        HASH_DEL(homes, h);
    free(h);
    pool_slot_t *s = slot_find(pool); /* a live entry is its chain's head */
    if (s && c.n) {
        s->orphans = c.n;
        atomic_fetch_add_explicit(&pools_gen, 1, memory_order_release);
        atomic_fetch_add_explicit(&orphaned, 1, memory_order_relaxed);
    } else if (s)
        slot_clear(s, NULL, &gone);
    vg__mutex_unlock(&pools_lock, VG__RANK_STREAM_POOLS);
    slot_release(&gone);
    vg__acct_pool_current_changed(); /* it may have been a device's current */
}

/* The newest destroyed pool at the block's address loses one orphan: the
 * blocks of pools at one address cannot be told apart, and each entry's
 * charge goes once as many blocks came back as it had out. */
void vg__acct_pool_block_freed(const vg__alloc_t *a)
{
    if (vg__likely(!atomic_load_explicit(&orphaned, memory_order_relaxed)) ||
        !from_stream_pool(a))
        return;
    CUmemoryPool pool = (CUmemoryPool)(uintptr_t)a->handle;
    pool_gone_t gone = {0};
    pool_slot_t *s, *newer = NULL;
    vg__mutex_lock(&pools_lock, VG__RANK_STREAM_POOLS);
    HASH_FIND_PTR(pools, &pool, s);
    if (s && !s->orphans) { /* live: the destroyed ones follow it */
        newer = s;
        s = s->older;
    }
    if (s && --s->orphans == 0) {
        slot_clear(s, newer, &gone);
        atomic_fetch_sub_explicit(&orphaned, 1, memory_order_relaxed);
    }
    vg__mutex_unlock(&pools_lock, VG__RANK_STREAM_POOLS);
    slot_release(&gone);
}
