/*
 * pool.c: the stream-ordered allocator (cuMemAllocAsync, cuMemFreeAsync,
 * cuMemAllocFromPoolAsync and their _ptsz twins) and memory pools.
 *
 * Semantics kept from the real driver, because budgets depend on them:
 * - a freed block stays reserved by its pool: still charged against device
 *   capacity and counted in RESERVED_MEM_CURRENT, and reused by later
 *   allocations from the same pool;
 * - at sync points (stream, context, event synchronize) every pool releases
 *   unused reserve above its RELEASE_THRESHOLD (default 0);
 * - cuMemPoolTrimTo(pool, keep) releases unused reserve down to keep;
 * - an allocation that finds no free block and no capacity fails with
 *   CUDA_ERROR_OUT_OF_MEMORY; it does not trim this or other pools;
 * - on a capturing stream an allocation is an allocation node of the
 *   capture's graph, owned by the graph (cuMemAllocAsync's documentation):
 *   the pool neither grows nor is asked (graph.c).
 * - a pool located on the host (CU_MEM_LOCATION_TYPE_HOST or _HOST_NUMA,
 *   CUDA 12.2) holds host memory: nothing of it is charged to a device; it
 *   cannot be captured into a graph here (CUDA_ERROR_NOT_SUPPORTED).
 * USED_MEM_* count requested bytes, RESERVED_MEM_* block bytes (as measured).
 * Simplification: blocks are never split or coalesced; an allocation reuses
 * the smallest free block at least as large as the request, whole. With
 * FAKECUDA_POOL_CHUNK a new block is the request rounded up to the chunk,
 * so a pool grows by more than it was asked for. Reserve
 * is released in whole blocks, so trimming may go below the target. (The
 * real driver reserves 32 MiB chunks and sub-allocates: a 1 MiB
 * cuMemAllocAsync reserved 32 MiB on an H100 with driver 580.159.)
 */
#include "fakecuda.h"

#include <stdlib.h>

struct CUmemPoolHandle_st {
    int dev;             /* -1 for a pool on the host */
    bool is_default, destroyed;
    size_t threshold, max_size;                        /* bytes */
    size_t reserved, reserved_high, used, used_high;   /* bytes */
    int reuse[3];        /* the three REUSE_* flags; stored, not acted on */
    fc_alloc *free_list; /* unused blocks, linked by next_free */
    struct CUmemPoolHandle_st *next;
};

static struct CUmemPoolHandle_st g_default[FC_MAX_DEVICES];
static CUmemoryPool g_current[FC_MAX_DEVICES];
static CUmemoryPool g_pools;       /* every pool with reserve, for sync */

static void pool_init(CUmemoryPool p, int dev)
{
    p->dev = dev;
    p->reuse[0] = p->reuse[1] = p->reuse[2] = 1;
    p->next = g_pools;
    g_pools = p;
    fc_handle_add(p, FC_H_POOL);
}

static CUmemoryPool default_pool(int dev)
{
    CUmemoryPool p = &g_default[dev];
    if (!p->is_default) {
        p->is_default = true;
        pool_init(p, dev);
    }
    return p;
}

static CUmemoryPool current_pool(int dev)
{
    return g_current[dev] ? g_current[dev] : default_pool(dev);
}

static void release_block(CUmemoryPool p, fc_alloc *b)
{
    p->reserved -= b->charged;
    if (p->dev >= 0)
        fc_uncharge(p->dev, b->charged);
    fc_alloc_unback(b);
    free(b);
}

/* Releases unused blocks while more than keep bytes stay reserved. */
static void trim_to(CUmemoryPool p, size_t keep)
{
    while (p->reserved > keep && p->free_list) {
        fc_alloc *b = p->free_list;
        p->free_list = b->next_free;
        release_block(p, b);
    }
}

static void unlink_pool(CUmemoryPool p)
{
    for (CUmemoryPool *pp = &g_pools; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            return;
        }
}

/* A destroyed pool goes away once its last block came back. */
static void maybe_reap(CUmemoryPool p)
{
    if (!p->destroyed || p->used != 0)
        return;
    trim_to(p, 0);
    unlink_pool(p);
    free(p);
}

void fc_pool_sync(void)
{
    for (CUmemoryPool p = g_pools; p; p = p->next)
        trim_to(p, p->threshold);
}

void fc_pool_block_free(fc_alloc *a)
{
    CUmemoryPool p = a->owner;
    fc_alloc_remove(a);
    a->live = false;
    a->next_free = p->free_list;
    p->free_list = a;
    p->used -= a->size;
    maybe_reap(p);
}

/* Unlinks and returns the smallest free block of at least size bytes. */
static fc_alloc *take_best_fit(CUmemoryPool p, size_t size)
{
    fc_alloc **best = NULL;
    for (fc_alloc **pb = &p->free_list; *pb; pb = &(*pb)->next_free)
        if ((*pb)->charged >= size && (!best || (*pb)->charged < (*best)->charged))
            best = pb;
    if (!best)
        return NULL;
    fc_alloc *b = *best;
    *best = b->next_free;
    return b;
}

static CUresult new_block(CUmemoryPool p, size_t size, fc_alloc **out)
{
    if (p->max_size && size > p->max_size - p->reserved)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult rc = p->dev >= 0 ? fc_charge(p->dev, size) : CUDA_SUCCESS;
    if (rc != CUDA_SUCCESS)
        return rc;
    fc_alloc *b = fc_alloc_new(size, FC_KIND_POOL, p->dev);
    b->charged = size;
    b->owner = p;
    rc = fc_alloc_back(b);
    if (rc != CUDA_SUCCESS) {
        if (p->dev >= 0)
            fc_uncharge(p->dev, size);
        free(b);
        return rc;
    }
    p->reserved += size;
    if (p->reserved > p->reserved_high)
        p->reserved_high = p->reserved;
    *out = b;
    return CUDA_SUCCESS;
}

/* Lock held; arguments checked. */
static CUresult pool_alloc(CUmemoryPool p, size_t size, CUdeviceptr *dptr)
{
    CUresult rc = fc_gate();
    if (rc != CUDA_SUCCESS)
        return rc;
    size_t chunk = fc_knobs_get()->pool_chunk;
    fc_alloc *b = take_best_fit(p, size);
    if (!b && (rc = new_block(p, chunk ? fc_round_up(size, chunk) : size, &b)) != CUDA_SUCCESS)
        return rc;
    b->live = true;
    b->size = size;          /* the range reported is the request */
    fc_alloc_insert(b);
    p->used += size;
    if (p->used > p->used_high)
        p->used_high = p->used;
    fc_count_alloc();
    *dptr = b->base;
    return CUDA_SUCCESS;
}

/* pool NULL: the current pool of the stream's device. */
static CUresult async_alloc(CUdeviceptr *dptr, size_t size, CUmemoryPool pool, CUstream s)
{
    int dev;
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_lock();
    CUresult rc = fc_stream_device(s, &dev);
    if (rc == CUDA_SUCCESS && (!dptr || size == 0 || (pool && !fc_handle_ok(pool, FC_H_POOL))))
        rc = CUDA_ERROR_INVALID_VALUE;
    CUgraph capture = rc == CUDA_SUCCESS ? fc_stream_capture(s) : NULL;
    if (capture && pool && pool->dev < 0)
        rc = CUDA_ERROR_NOT_SUPPORTED;
    else if (capture) /* owned by the graph, not by the pool */
        rc = fc_graph_capture_alloc(capture, size, pool ? pool->dev : dev, dptr);
    else if (rc == CUDA_SUCCESS)
        rc = pool_alloc(pool ? pool : current_pool(dev), size, dptr);
    fc_unlock();
    return rc;
}

CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
{
    return async_alloc(dptr, bytesize, NULL, hStream);
}

CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
{
    return async_alloc(dptr, bytesize, NULL, hStream);
}

CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool, CUstream hStream)
{
    return pool ? async_alloc(dptr, bytesize, pool, hStream) : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                      CUstream hStream)
{
    return cuMemAllocFromPoolAsync(dptr, bytesize, pool, hStream);
}

/* Measured: the real driver also takes cuMemAlloc memory here. Waits
 * FAKECUDA_FREE_DELAY_NS first, the memory still counted (core.c). */
CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream)
{
    int dev;
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_free_delay();
    fc_lock();
    CUresult rc = fc_stream_device(hStream, &dev);
    CUgraph capture = rc == CUDA_SUCCESS ? fc_stream_capture(hStream) : NULL;
    if (capture)
        rc = fc_graph_capture_free(capture, dptr);
    else if (rc == CUDA_SUCCESS)
        rc = fc_mem_free(dptr);
    fc_unlock();
    return rc;
}

CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream hStream)
{
    return cuMemFreeAsync(dptr, hStream);
}

/* ---- pools as objects ---- */

static bool on_host(const CUmemLocation *l)
{
    return l->type == CU_MEM_LOCATION_TYPE_HOST ||
           (l->type == CU_MEM_LOCATION_TYPE_HOST_NUMA && l->id >= 0);
}

static bool props_ok(const CUmemPoolProps *props)
{
    return props && props->allocType == CU_MEM_ALLOCATION_TYPE_PINNED &&
           ((props->location.type == CU_MEM_LOCATION_TYPE_DEVICE &&
             fc_device_valid(props->location.id)) ||
            (on_host(&props->location) && props->handleTypes == CU_MEM_HANDLE_TYPE_NONE));
}

CUresult cuMemPoolCreate(CUmemoryPool *pool, const CUmemPoolProps *poolProps)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!pool || !props_ok(poolProps))
        return CUDA_ERROR_INVALID_VALUE;
    CUmemoryPool p = calloc(1, sizeof *p);
    if (!p)
        return CUDA_ERROR_OUT_OF_MEMORY;
    p->max_size = poolProps->maxSize;
    fc_lock();
    pool_init(p, on_host(&poolProps->location) ? -1 : poolProps->location.id);
    fc_unlock();
    *pool = p;
    return CUDA_SUCCESS;
}

/* With blocks still in use the pool lingers until they come back. */
CUresult cuMemPoolDestroy(CUmemoryPool pool)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_lock();
    bool ok = pool && fc_handle_ok(pool, FC_H_POOL) && !pool->is_default;
    if (ok) {
        if (pool->dev >= 0 && g_current[pool->dev] == pool)
            g_current[pool->dev] = NULL;
        fc_handle_del(pool);
        pool->destroyed = true;
        trim_to(pool, 0);
        maybe_reap(pool);
    }
    fc_unlock();
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t minBytesToKeep)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_lock();
    bool ok = pool && fc_handle_ok(pool, FC_H_POOL);
    if (ok)
        trim_to(pool, minBytesToKeep);
    fc_unlock();
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

static CUresult set_attr(CUmemoryPool p, CUmemPool_attribute attr, const void *value)
{
    bool is_u64 = attr == CU_MEMPOOL_ATTR_RELEASE_THRESHOLD ||
                  attr == CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH || attr == CU_MEMPOOL_ATTR_USED_MEM_HIGH;
    cuuint64_t v64 = is_u64 ? *(const cuuint64_t *)value : 0;
    switch (attr) {
    case CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES:
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC:
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES:
        p->reuse[attr - CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES] = *(const int *)value;
        return CUDA_SUCCESS;
    case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: p->threshold = v64; return CUDA_SUCCESS;
    case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH:     /* only a reset (0) is allowed */
        if (v64 != 0)
            return CUDA_ERROR_INVALID_VALUE;
        p->reserved_high = p->reserved;
        return CUDA_SUCCESS;
    case CU_MEMPOOL_ATTR_USED_MEM_HIGH:
        if (v64 != 0)
            return CUDA_ERROR_INVALID_VALUE;
        p->used_high = p->used;
        return CUDA_SUCCESS;
    default: return CUDA_ERROR_INVALID_VALUE;   /* the *_CURRENT values are read-only */
    }
}

static CUresult get_attr(CUmemoryPool p, CUmemPool_attribute attr, void *value)
{
    switch (attr) {
    case CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES:
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC:
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES:
        *(int *)value = p->reuse[attr - CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES];
        return CUDA_SUCCESS;
    case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: *(cuuint64_t *)value = p->threshold; break;
    case CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT: *(cuuint64_t *)value = p->reserved; break;
    case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH: *(cuuint64_t *)value = p->reserved_high; break;
    case CU_MEMPOOL_ATTR_USED_MEM_CURRENT: *(cuuint64_t *)value = p->used; break;
    case CU_MEMPOOL_ATTR_USED_MEM_HIGH: *(cuuint64_t *)value = p->used_high; break;
    default: return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

static CUresult pool_attr(CUmemoryPool pool, CUmemPool_attribute attr, void *value, bool set)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!value)
        return CUDA_ERROR_INVALID_VALUE;
    fc_lock();
    CUresult rc = CUDA_ERROR_INVALID_VALUE;
    if (pool && fc_handle_ok(pool, FC_H_POOL))
        rc = set ? set_attr(pool, attr, value) : get_attr(pool, attr, value);
    fc_unlock();
    return rc;
}

CUresult cuMemPoolSetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value)
{
    return pool_attr(pool, attr, value, true);
}

CUresult cuMemPoolGetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value)
{
    CUresult rc = pool_attr(pool, attr, value, false);
    fc_pool_attr_delay();
    return rc;
}

/* ---- a device's pools ---- */

static CUresult dev_pool_entry(CUmemoryPool *out, CUdevice dev, bool want_default)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!out)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fc_device_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    fc_lock();
    *out = want_default ? default_pool(dev) : current_pool(dev);
    fc_unlock();
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetDefaultMemPool(CUmemoryPool *pool_out, CUdevice dev)
{
    return dev_pool_entry(pool_out, dev, true);
}

CUresult cuDeviceGetMemPool(CUmemoryPool *pool, CUdevice dev)
{
    return dev_pool_entry(pool, dev, false);
}

CUresult cuDeviceSetMemPool(CUdevice dev, CUmemoryPool pool)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!fc_device_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    fc_lock();
    bool ok = pool && fc_handle_ok(pool, FC_H_POOL) && pool->dev == dev;
    if (ok)
        g_current[dev] = pool;
    fc_unlock();
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
