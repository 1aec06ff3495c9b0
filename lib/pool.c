/*
 * pool.c — the public pool API: budgeted, caching allocation on one device.
 *
 * Every byte the pool holds from the driver is charged first to the pool's
 * own budget, then to the process budget of its device (VRAMGUARD_BUDGET),
 * before the driver is asked; a failure at any step rolls back what was
 * charged. Small requests are served from size classes carved out of chunks
 * (cache.c); large, over-aligned and evictable ones go to the driver
 * directly. Chunks and direct allocations are verified with the driver's own
 * pointer queries; each allocation handed out is recorded in the ledger, so
 * vg_ptr_check sees every block as the caller made it.
 *
 * Here: the pools' lifetime (create, destroy, the list fork walks) and
 * the allocation path (alloc, free, touch, trim). Making room (the
 * budgets, trimming, eviction, the pressure action) is pool_room.c's; what
 * a pool reports, and the user's pressure callbacks, are pool_info.c's.
 *
 * Fast path (a cached 4 KiB block): no budget call, no pool-wide lock, no
 * driver call, no atomic read-modify-write: the thread's own magazine
 * (cache_thread.c) and the ledger insert and remove (one shard spinlock
 * each).
 * Measured in docs/pool.md.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vg_fork.h"
#include "vg_pool.h"

#define DRIVER_ALIGN 256u /* cuMemAlloc guarantees at least this */

/* Every pool, for fork: a thread that did not come along may have been
 * inside one of a pool's critical sections, so fork takes every pool's
 * locks first (fork.c, rank POOLS). A pool joins when it is made and
 * leaves before its destruction begins. */
static pthread_mutex_t all_mu = PTHREAD_MUTEX_INITIALIZER;
static vg_pool_t *all_pools; /* linked through fork_next, under all_mu */

void vg__pool_ctx_enter(const vg_pool_t *pool, vg__ctx_guard_t *g)
{
    const vg__driver_t *d = vg__driver();
    g->prev = NULL;
    d->cuCtxGetCurrent(&g->prev);
    g->swapped = g->prev != pool->ctx;
    if (g->swapped)
        d->cuCtxSetCurrent(pool->ctx);
}

void vg__pool_ctx_leave(vg__ctx_guard_t *g)
{
    if (g->swapped)
        vg__driver()->cuCtxSetCurrent(g->prev);
}

/* The reuse barrier of the cache: work queued in the pool's context before
 * this call is finished when it returns. */
static void pool_sync(void *ctx)
{
    vg_pool_t *pool = ctx;
    vg__ctx_guard_t g;
    vg__pool_ctx_enter(pool, &g);
    vg__driver()->cuCtxSynchronize();
    vg__pool_ctx_leave(&g);
}

/* ------------------------------------------------------------ fork */

void vg__pool_prefork(void)
{
    pthread_mutex_lock(&all_mu);
    for (vg_pool_t *p = all_pools; p; p = p->fork_next) {
        pthread_mutex_lock(&p->lock);
        pthread_mutex_lock(&p->evict.mu);
        vg__cache_prefork(&p->cache);
    }
}

static void pools_postfork(void (*cache_postfork)(vg__cache_t *c))
{
    for (vg_pool_t *p = all_pools; p; p = p->fork_next) {
        cache_postfork(&p->cache);
        pthread_mutex_unlock(&p->evict.mu);
        pthread_mutex_unlock(&p->lock);
    }
    pthread_mutex_unlock(&all_mu);
}

void vg__pool_postfork_parent(void) { pools_postfork(vg__cache_postfork); }
void vg__pool_postfork_child(void) { pools_postfork(vg__cache_postfork_child); }

static void pool_join(vg_pool_t *p)
{
    vg__mutex_lock(&all_mu, VG__RANK_POOLS);
    p->fork_next = all_pools;
    all_pools = p;
    vg__mutex_unlock(&all_mu, VG__RANK_POOLS);
}

static void pool_leave(vg_pool_t *p)
{
    vg__mutex_lock(&all_mu, VG__RANK_POOLS);
    vg_pool_t **at = &all_pools;
    while (*at && *at != p)
        at = &(*at)->fork_next;
    if (*at)
        *at = p->fork_next;
    vg__mutex_unlock(&all_mu, VG__RANK_POOLS);
}

/* ------------------------------------------------------------ create */

int vg_pool_create(int device, uint64_t limit_bytes, vg_pool_t **pool)
{
    if (!pool || limit_bytes == 0)
        return VG_EINVAL;
    int count = 0;
    int rc = vg_device_count(&count);
    if (rc != VG_OK)
        return rc;
    if (device < 0 || device >= count)
        return VG_ENODEV;
    const vg__driver_t *d = vg__driver();
    size_t bytes = (sizeof(vg_pool_t) + 63) & ~(size_t)63;
    vg_pool_t *p = aligned_alloc(64, bytes);
    if (!p)
        return VG_ESYS;
    memset(p, 0, bytes);
    p->device = device;
    if (d->cuDeviceGet(&p->cudev, device) != CUDA_SUCCESS ||
        d->cuDevicePrimaryCtxRetain(&p->ctx, p->cudev) != CUDA_SUCCESS) {
        free(p);
        return VG_EDRIVER;
    }
    pthread_mutex_init(&p->lock, NULL);
    vg__cache_init(&p->cache, pool_sync, p);
    vg__evict_init(&p->evict);
    vg__budget_init(&p->budget, limit_bytes, p);
    vg__budget_on_level(&p->budget, vg__pool_level_hook, NULL);
    pool_join(p);
    *pool = p;
    return VG_OK;
}

/* ------------------------------------------------------------ alloc */

/* The driver must confirm device memory covering [ptr, ptr + size). */
static bool verify_device_range(const vg__driver_t *d, CUdeviceptr ptr,
                                uint64_t size)
{
    unsigned int type = 0;
    CUdeviceptr base = 0;
    size_t range = 0;
    if (ptr == 0)
        return false;
    if (d->cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
                                 ptr) != CUDA_SUCCESS ||
        type != CU_MEMORYTYPE_DEVICE)
        return false;
    if (d->cuMemGetAddressRange_v2(&base, &range, ptr) != CUDA_SUCCESS)
        return false;
    return base <= ptr && ptr - base + size <= range;
}

static int check_alloc_args(const vg_pool_t *pool, size_t size,
                            const vg_alloc_opts_t *opts, vg_devptr_t *ptr)
{
    if (!pool || !ptr || size == 0)
        return VG_EINVAL;
    size_t align = opts ? opts->align : 0;
    if (align && (align < DRIVER_ALIGN || (align & (align - 1)) != 0))
        return VG_EINVAL;
    /* over-allocation for alignment must not wrap */
    if (align > DRIVER_ALIGN && size > SIZE_MAX - align)
        return VG_EINVAL;
    if (opts && (opts->flags & VG_ALLOC_EVICTABLE) && !opts->evict)
        return VG_EINVAL;
    return VG_OK;
}

/* Asks the driver for `a->charged` bytes and fills in base and ptr, with
 * the pool's context current; frees what it got on any failure. A driver
 * out of memory is given the pool's cache once before the answer stands. */
static int driver_alloc(vg_pool_t *pool, size_t align, vg__alloc_t *a)
{
    const vg__driver_t *d = vg__driver();
    CUdeviceptr base = 0;
    vg__ctx_guard_t g;
    vg__pool_ctx_enter(pool, &g);
    CUresult cr = d->cuMemAlloc_v2(&base, a->charged);
    vg__pool_ctx_leave(&g);
    if (cr == CUDA_ERROR_OUT_OF_MEMORY && vg__pool_trim_one(pool)) {
        while (vg__pool_trim_one(pool))
            ;
        vg__pool_ctx_enter(pool, &g);
        cr = d->cuMemAlloc_v2(&base, a->charged);
        vg__pool_ctx_leave(&g);
    }
    if (cr != CUDA_SUCCESS)
        return cr == CUDA_ERROR_OUT_OF_MEMORY ? VG_ENOMEM : VG_EDRIVER;
    a->base = base;
    a->ptr = align > DRIVER_ALIGN ? (base + align - 1) & ~(CUdeviceptr)(align - 1)
                                  : base;
    vg__pool_ctx_enter(pool, &g);
    bool real = verify_device_range(d, a->ptr, a->size);
    if (!real)
        d->cuMemFree_v2(base);
    vg__pool_ctx_leave(&g);
    return real ? VG_OK : VG_EBADPTR;
}

static int zero_fill(vg_pool_t *pool, const vg_alloc_opts_t *opts,
                     vg_devptr_t ptr, size_t size)
{
    if (!opts || !(opts->flags & VG_ALLOC_ZERO))
        return VG_OK;
    vg__ctx_guard_t g;
    vg__pool_ctx_enter(pool, &g);
    CUresult cr = vg__driver()->cuMemsetD8_v2(ptr, 0, size);
    vg__pool_ctx_leave(&g);
    return cr == CUDA_SUCCESS ? VG_OK : VG_EDRIVER;
}

/* Fills in the record's bookkeeping and puts it in the ledger. */
static int record(vg_pool_t *pool, const vg_alloc_opts_t *opts,
                  vg__alloc_t *a)
{
    a->owner = pool;
    a->device = (int16_t)pool->device;
    a->kind = VG_KIND_API;
    a->seq = vg__ledger_next_seq();
    a->tid = vg__tid();
    if (opts && opts->tag)
        snprintf(a->tag, sizeof a->tag, "%s", opts->tag);
    return vg__ledger_insert(a);
}

/* A direct allocation: its own driver allocation, freed to the driver. */
static int alloc_direct(vg_pool_t *pool, size_t size,
                        const vg_alloc_opts_t *opts, vg_devptr_t *ptr)
{
    size_t align = opts ? opts->align : 0;
    bool evictable = opts && (opts->flags & VG_ALLOC_EVICTABLE);
    vg__alloc_t a = {
        .size = size,
        .charged = size + (align > DRIVER_ALIGN ? align - DRIVER_ALIGN : 0),
    };
    int rc = vg__pool_make_room(pool, a.charged, VG__MAY_TRIM_AND_EVICT);
    if (rc != VG_OK)
        return rc;
    if ((rc = driver_alloc(pool, align, &a)) != VG_OK) {
        vg__pool_uncharge(pool, a.charged, false);
        return rc;
    }
    vg__pool_commit(pool, a.charged);
    vg__evictable_t *e = NULL;
    if ((rc = zero_fill(pool, opts, a.ptr, size)) != VG_OK)
        goto undo;
    if (evictable && !(e = vg__evict_new(opts, a.ptr, size))) {
        rc = VG_ESYS;
        goto undo;
    }
    a.handle = e ? (uint64_t)(uintptr_t)e | VG__HANDLE_EVICTABLE : 0;
    if ((rc = record(pool, opts, &a)) != VG_OK)
        goto undo;
    if (e)
        vg__evict_link(&pool->evict, e);
    atomic_fetch_add_explicit(&pool->allocs, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&pool->bytes_allocated, size, memory_order_relaxed);
    atomic_fetch_add_explicit(&pool->live_bytes, size, memory_order_relaxed);
    *ptr = a.ptr;
    return VG_OK;
undo:
    free(e);
    vg__pool_release_span(pool, &(vg__span_t){a.base, a.charged});
    return rc;
}

/* A chunk failed its check: the driver will not confirm the next one
 * either (it keeps no ranges, or not for this memory), and trying again
 * would charge, allocate, free and uncharge a whole chunk on every small
 * request. Said once per pool. */
__attribute__((noinline, cold)) static void refuse_chunks(vg_pool_t *pool)
{
    if (!atomic_exchange_explicit(&pool->chunks_refused, true,
                                  memory_order_relaxed))
        vg__log("pool on device %d: the driver did not confirm a chunk's "
                "range (cuMemGetAddressRange); no chunk is asked for again",
                pool->device);
}

/* A cache miss: a new chunk for class cls, its first block for the caller.
 * Trims to make room but never evicts: VG_ENOMEM sends the request to the
 * direct path, which needs fewer bytes and may evict. */
__attribute__((noinline)) static int grow(vg_pool_t *pool, int cls,
                                          size_t size, vg__block_t *b)
{
    uint64_t bytes = vg__class_chunk_bytes(cls);
    vg__alloc_t a = {.size = bytes, .charged = bytes};
    /* Near the limit, reuse comes before growth (or trimming to grow):
     * blocks parked in other threads' magazines, then pending blocks,
     * however few, after a synchronisation. */
    if (!vg__pool_fits(pool, a.charged)) {
        vg__cache_collect(&pool->cache);
        if (vg__cache_take_any(&pool->cache, cls, size, b) == VG_OK)
            return VG_OK; /* a hit after all (counted by the cache) */
    }
    atomic_fetch_add_explicit(&pool->misses, 1, memory_order_relaxed); /* the driver is needed */
    int rc = vg__pool_make_room(pool, a.charged, VG__MAY_TRIM);
    if (rc != VG_OK)
        return rc;
    if ((rc = driver_alloc(pool, 0, &a)) != VG_OK) {
        vg__pool_uncharge(pool, a.charged, false);
        if (rc == VG_EBADPTR)
            refuse_chunks(pool);
        return rc;
    }
    vg__pool_commit(pool, a.charged);
    vg__span_t chunk = {a.base, a.charged};
    if ((rc = vg__cache_add_chunk(&pool->cache, cls, &chunk, size, b)) != VG_OK)
        vg__pool_release_span(pool, &chunk);
    return rc;
}

/* Frees the chunks a give emptied beyond the cache's allowance: s, then
 * any more one flush of a magazine emptied. */
__attribute__((noinline)) static void release_emptied(vg_pool_t *pool,
                                                      vg__span_t *s)
{
    do {
        vg__pool_release_span(pool, s);
        atomic_fetch_add_explicit(&pool->trims, 1, memory_order_relaxed);
    } while (vg__cache_reap(&pool->cache, s));
}

/* Takes a small block back after a failed allocation or a free. */
static void give_block(vg_pool_t *pool, const vg__block_t *b, size_t size)
{
    /* At High pressure or above an emptied chunk is not kept. */
    uint32_t keep = vg__budget_level(&pool->budget) >= VG_PRESSURE_HIGH
                        ? 0
                        : VG__EMPTY_KEEP;
    vg__span_t s;
    if (vg__unlikely(vg__cache_give(&pool->cache, b, size, keep, &s)))
        release_emptied(pool, &s);
}

/* A block of class cls: cached, or the first of a new chunk (grow). */
static inline int take_block(vg_pool_t *pool, int cls, size_t size, vg__block_t *b)
{
    if (vg__unlikely(atomic_load_explicit(&pool->chunks_refused,
                                          memory_order_relaxed)))
        return VG_EBADPTR;
    if (vg__likely(vg__cache_take(&pool->cache, cls, size, b) == VG_OK))
        return VG_OK;
    return grow(pool, cls, size, b);
}

static int alloc_small(vg_pool_t *pool, int cls, size_t size,
                       const vg_alloc_opts_t *opts, vg_devptr_t *ptr)
{
    vg__block_t b;
    int rc = take_block(pool, cls, size, &b);
    if (vg__unlikely(rc == VG_ENOMEM))
        return alloc_direct(pool, size, opts, ptr);
    if (vg__unlikely(rc != VG_OK))
        return rc;
    vg__alloc_t a = {
        .ptr = b.ptr,
        .base = b.ptr,
        .size = size,
        .charged = vg__class_size(cls),
        .handle = (uint64_t)(uintptr_t)b.chunk,
    };
    if (vg__unlikely(opts != NULL) &&
        (rc = zero_fill(pool, opts, b.ptr, size)) != VG_OK)
        goto undo;
    if (vg__unlikely((rc = record(pool, opts, &a)) != VG_OK))
        goto undo;
    *ptr = b.ptr;
    return VG_OK;
undo:
    give_block(pool, &b, size);
    return rc;
}

VG__HOT int vg__pool_block_take(vg_pool_t *pool, size_t size, vg__block_t *b)
{
    int cls = vg__class_of(size);
    if (cls < 0 || size == 0)
        return VG_EINVAL;
    return take_block(pool, cls, size, b);
}

VG__HOT void vg__pool_block_give(vg_pool_t *pool, const vg__block_t *b, size_t size)
{
    give_block(pool, b, size);
}

/* Small requests with no special needs are cached; -1 sends to the driver. */
static inline int class_for(size_t size, const vg_alloc_opts_t *opts)
{
    if (opts && (opts->align > DRIVER_ALIGN ||
                 (opts->flags & VG_ALLOC_EVICTABLE)))
        return -1;
    return vg__class_of(size);
}

int vg_pool_alloc(vg_pool_t *pool, size_t size, const vg_alloc_opts_t *opts,
                  vg_devptr_t *ptr)
{
    int rc = check_alloc_args(pool, size, opts, ptr);
    if (rc != VG_OK)
        return rc;
    int cls = class_for(size, opts);
    if (vg__likely(cls >= 0))
        return alloc_small(pool, cls, size, opts, ptr);
    return alloc_direct(pool, size, opts, ptr);
}

/* ------------------------------------------------------------ free */

/* Frees a record already taken out of the ledger, whatever its kind. */
static void free_record(vg_pool_t *pool, const vg__alloc_t *a)
{
    if (a->handle && !(a->handle & VG__HANDLE_EVICTABLE)) {
        vg__block_t b = {a->ptr, (vg__chunk_t *)(uintptr_t)a->handle};
        give_block(pool, &b, a->size);
        return;
    }
    if (a->handle & VG__HANDLE_EVICTABLE)
        vg__evict_forget(&pool->evict, (vg__evictable_t *)(uintptr_t)(
                                           a->handle & ~VG__HANDLE_EVICTABLE));
    vg__pool_free_direct(pool, a);
}

int vg_pool_free(vg_pool_t *pool, vg_devptr_t ptr)
{
    vg__alloc_t a;
    if (!pool)
        return VG_EINVAL;
    if (vg__ledger_remove(ptr, pool, &a) != VG_OK)
        return VG_ENOTFOUND;
    free_record(pool, &a);
    return VG_OK;
}

int vg_pool_touch(vg_pool_t *pool, vg_devptr_t ptr)
{
    if (!pool)
        return VG_EINVAL;
    return vg__evict_touch(&pool->evict, pool, ptr);
}

int vg_pool_trim(vg_pool_t *pool, uint64_t keep_bytes, uint64_t *released)
{
    if (!pool)
        return VG_EINVAL;
    vg__cache_stats_t cs;
    vg__cache_stats(&pool->cache, &cs);
    uint64_t cached = cs.cached, freed = 0, n;
    while (cached > keep_bytes && (n = vg__pool_trim_one(pool)) != 0) {
        freed += n;
        cached = cached > n ? cached - n : 0;
    }
    if (released)
        *released = freed;
    return VG_OK;
}

/* ------------------------------------------------------------ destroy */

struct destroy_ctx {
    vg_pool_t *pool;
    vg_leak_report_t leaks;
};

static void release_span_cb(const vg__span_t *s, void *ctx)
{
    vg__pool_release_span(ctx, s);
}

/* Blocks of the cache die with their chunks (drained below). */
static void destroy_one(const vg__alloc_t *a, void *ctx)
{
    struct destroy_ctx *dc = ctx;
    vg__alloc_t taken;
    if (vg__ledger_remove(a->ptr, dc->pool, &taken) != VG_OK)
        return; /* freed concurrently: not a leak */
    dc->leaks.count++;
    dc->leaks.bytes += taken.size;
    if (!taken.handle || (taken.handle & VG__HANDLE_EVICTABLE))
        free_record(dc->pool, &taken);
}

int vg_pool_destroy(vg_pool_t *pool, vg_leak_report_t *leaks)
{
    if (!pool) {
        if (leaks)
            *leaks = (vg_leak_report_t){0};
        return VG_OK;
    }
    pool_leave(pool);
    atomic_store_explicit(&pool->closing, true, memory_order_relaxed);
    struct destroy_ctx dc = {.pool = pool};
    vg__ledger_foreach(pool, destroy_one, &dc);
    vg__cache_drain(&pool->cache, release_span_cb, pool);
    vg__evict_fini(&pool->evict);
    vg__driver()->cuDevicePrimaryCtxRelease_v2(pool->cudev);
    pthread_mutex_destroy(&pool->lock);
    free(pool);
    if (leaks)
        *leaks = dc.leaks;
    return VG_OK;
}
