/*
 * hooks_async.c — stream-ordered allocation (cuMemAllocAsync,
 * cuMemAllocFromPoolAsync, cuMemFreeAsync and their _ptsz twins).
 *
 * A stream-ordered pool keeps freed memory reserved, so the budget carries
 * what each pool reserves, not what was asked for: the engine syncs the
 * pool's charge before the request, reserves the request, and afterwards
 * converts the reservation into the pool's real growth (account.c). A
 * refusal first trims our pools and retries (inside vg__acct_reserve).
 *
 * On a stream being captured into a graph the driver allocates nothing:
 * it adds an allocation node to the graph, and the memory is owned by the
 * graph, not by the pool (cuMemAllocAsync's documentation), so the pool
 * does not grow. Such an allocation is charged as a graph memory node
 * (hooks_graph.c), until its graph is destroyed; a captured free is a
 * free node of the graph and changes no charge.
 */
#include "shim.h"

typedef CUresult (*free_async_fn)(CUdeviceptr, CUstream);

/* The graph `stream` is being captured into, or NULL. */
static CUgraph capture_graph(CUstream stream)
{
    CUstreamCaptureStatus status = CU_STREAM_CAPTURE_STATUS_NONE;
    CUgraph graph = NULL;
    if (vg__driver()->cuStreamGetCaptureInfo_v2(stream, &status, NULL, &graph, NULL, NULL) !=
            CUDA_SUCCESS ||
        status != CU_STREAM_CAPTURE_STATUS_ACTIVE)
        return NULL;
    return graph;
}

/* A _ptsz entry point's stream 0 is the calling thread's per-thread
 * stream, which CU_STREAM_PER_THREAD names to every entry point: its hooks
 * pass that on, so the capture query asks about the right stream. */
static CUstream per_thread(CUstream stream)
{
    return stream ? stream : CU_STREAM_PER_THREAD;
}

/* The pool cuMemAllocAsync draws from: the device's current pool. */
static CUmemoryPool current_pool(int device)
{
    CUmemoryPool pool = NULL;
    vg__driver()->cuDeviceGetMemPool(&pool, (CUdevice)device);
    return pool;
}

static CUresult after_async(vg__ticket_t *t, CUresult cr, CUdeviceptr *dptr,
                            size_t size, CUmemoryPool pool, free_async_fn undo,
                            CUstream stream)
{
    if (cr != CUDA_SUCCESS) {
        vg__acct_cancel(t);
        return cr;
    }
    if (vg__acct_pool_settle(t, pool) != VG_OK) {
        /* the pool grew past the budget: give it all back */
        undo(*dptr, stream);
        vg__driver()->cuMemPoolTrimTo(pool, 0);
        vg__acct_pool_sync(t->device, pool);
        *dptr = 0;
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (vg__acct_commit(t, *dptr, size, (uint64_t)(uintptr_t)pool) != VG_OK) {
        undo(*dptr, stream); /* not recorded: refused; the pool keeps its charge */
        vg__acct_unrecorded(t, *dptr, size);
        *dptr = 0;
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    return CUDA_SUCCESS;
}

static CUresult alloc_async(CUresult (*real)(CUdeviceptr *, size_t, CUstream),
                            free_async_fn undo, CUdeviceptr *dptr, size_t size,
                            CUstream stream, const char *api)
{
    int device = vg__shim_device();
    CUgraph graph = capture_graph(stream);
    if (vg__unlikely(graph)) {
        vg__ticket_t t = {.device = device, .kind = VG_KIND_ASYNC, .bytes = size, .api = api};
        int rc = vg__acct_reserve(&t);
        if (rc != VG_OK)
            return vg__cu_status(rc);
        CUresult cr = real(dptr, size, stream);
        return vg__shim_graph_settle(&t, cr, graph, cr == CUDA_SUCCESS ? *dptr : 0, size);
    }
    CUmemoryPool pool = current_pool(device);
    if (pool)
        vg__acct_pool_sync(device, pool);
    vg__ticket_t t = {.device = device, .kind = VG_KIND_ASYNC,
                      .bytes = size, .api = api};
    int rc = vg__acct_reserve(&t);
    if (rc != VG_OK)
        return vg__cu_status(rc);
    CUresult cr = real(dptr, size, stream);
    if (!pool) { /* no pool to read: charge what was asked */
        CUresult settled = vg__shim_settle(&t, cr, cr == CUDA_SUCCESS ? *dptr : 0, size);
        if (settled != cr) { /* not recorded: refused */
            undo(*dptr, stream);
            vg__acct_unrecorded(&t, *dptr, size);
            *dptr = 0;
        }
        return settled;
    }
    return after_async(&t, cr, dptr, size, pool, undo, stream);
}

CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    return alloc_async(vg__real.cuMemAllocAsync, vg__real.cuMemFreeAsync, dptr,
                       bytesize, hStream, "cuMemAllocAsync");
}

CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuMemAllocAsync_ptsz || !vg__real.cuMemFreeAsync_ptsz)
        return CUDA_ERROR_NOT_FOUND;
    return alloc_async(vg__real.cuMemAllocAsync_ptsz, vg__real.cuMemFreeAsync_ptsz,
                       dptr, bytesize, per_thread(hStream), "cuMemAllocAsync_ptsz");
}

static CUresult alloc_from_pool(CUresult (*real)(CUdeviceptr *, size_t, CUmemoryPool, CUstream),
                                free_async_fn undo, CUdeviceptr *dptr, size_t size,
                                CUmemoryPool pool, CUstream stream, const char *api)
{
    int device = vg__shim_device(); /* the pool's own, where it is known */
    bool on_device = !pool || vg__acct_pool_home(pool, &device);
    CUgraph graph = capture_graph(stream);
    if (pool && !graph && on_device)
        vg__acct_pool_sync(device, pool);
    vg__ticket_t t = {.device = device, .kind = VG_KIND_POOL,
                      .bytes = on_device ? size : 0, .api = api};
    int rc = vg__acct_reserve(&t);
    if (rc != VG_OK)
        return vg__cu_status(rc);
    CUresult cr = real(dptr, size, pool, stream);
    if (vg__unlikely(graph))
        return vg__shim_graph_settle(&t, cr, graph, cr == CUDA_SUCCESS ? *dptr : 0, size);
    /* The driver refuses a NULL pool; a pool on the host holds no device
     * memory: recorded, charged nothing, nothing to settle. */
    if (!pool || !on_device) {
        CUresult settled = vg__shim_settle(&t, cr, cr == CUDA_SUCCESS ? *dptr : 0, size);
        if (settled != cr) { /* not recorded: refused */
            undo(*dptr, stream);
            vg__acct_unrecorded(&t, *dptr, size);
            *dptr = 0;
        }
        return settled;
    }
    return after_async(&t, cr, dptr, size, pool, undo, stream);
}

CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize,
                                 CUmemoryPool pool, CUstream hStream)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    return alloc_from_pool(vg__real.cuMemAllocFromPoolAsync, vg__real.cuMemFreeAsync,
                           dptr, bytesize, pool, hStream, "cuMemAllocFromPoolAsync");
}

CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytesize,
                                      CUmemoryPool pool, CUstream hStream)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuMemAllocFromPoolAsync_ptsz || !vg__real.cuMemFreeAsync_ptsz)
        return CUDA_ERROR_NOT_FOUND;
    return alloc_from_pool(vg__real.cuMemAllocFromPoolAsync_ptsz,
                           vg__real.cuMemFreeAsync_ptsz, dptr, bytesize, pool,
                           per_thread(hStream), "cuMemAllocFromPoolAsync_ptsz");
}

/* The pool keeps the memory after a stream-ordered free, so the pool's
 * charge stays; it is re-synced on the pool's next allocation or trim. */
static CUresult free_async(free_async_fn real, CUdeviceptr dptr, CUstream stream,
                           const char *api)
{
    if (vg__unlikely(capture_graph(stream))) /* a free node: the graph keeps the charge */
        return real(dptr, stream);
    vg__free_t f;
    int rc = vg__acct_free_begin(&f, dptr, api);
    if (rc != VG_OK)
        return vg__cu_status(rc);
    /* A pooled block (cache mode) is back in its pool, reused only after a
     * synchronisation of its context: that orders it after this stream. */
    CUresult cr = f.state == VG__FREE_POOLED ? CUDA_SUCCESS : real(dptr, stream);
    vg__acct_free_end(&f, cr);
    return cr;
}

CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    return free_async(vg__real.cuMemFreeAsync, dptr, hStream, "cuMemFreeAsync");
}

CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream hStream)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuMemFreeAsync_ptsz)
        return CUDA_ERROR_NOT_FOUND;
    return free_async(vg__real.cuMemFreeAsync_ptsz, dptr, per_thread(hStream),
                      "cuMemFreeAsync_ptsz");
}

/* Where a pool is located decides which budget its memory is charged to,
 * if any (lib/account.c). */
CUresult cuMemPoolCreate(CUmemoryPool *pool, const CUmemPoolProps *poolProps)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult cr = vg__real.cuMemPoolCreate(pool, poolProps);
    if (cr == CUDA_SUCCESS && pool && poolProps)
        vg__acct_pool_made(*pool, &poolProps->location);
    return cr;
}

CUresult cuMemPoolDestroy(CUmemoryPool pool)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult cr = vg__real.cuMemPoolDestroy(pool);
    if (cr == CUDA_SUCCESS)
        vg__acct_pool_forget(pool);
    return cr;
}
