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
 *
 * What a pair asks the driver besides the allocation and the free (each
 * call costs on a real GPU, docs/benchmarks.md): what the pool reserves
 * after the allocation, nothing more. The device's current pool is
 * remembered (account_streams.c, vg__acct_pool_current), the capture
 * query runs only while a capture begun through the hooks is open
 * (hooks_capture.c), and the pool's charge is not read before the request
 * (see alloc_async).
 */
#include "shim.h"

typedef CUresult (*free_async_fn)(CUdeviceptr, CUstream);

/* The driver's answer: the graph `stream` is being captured into, or NULL. */
__attribute__((noinline)) static CUgraph capture_query(CUstream stream)
{
    CUstreamCaptureStatus status = CU_STREAM_CAPTURE_STATUS_NONE;
    CUgraph graph = NULL;
    if (vg__driver()->cuStreamGetCaptureInfo_v2(stream, &status, NULL, &graph, NULL, NULL) !=
            CUDA_SUCCESS ||
        status != CU_STREAM_CAPTURE_STATUS_ACTIVE)
        return NULL;
    return graph;
}

/* The graph `stream` is being captured into, or NULL. Asked of the driver
 * only while a capture is open: with none, no stream can be capturing. */
static inline CUgraph capture_graph(CUstream stream)
{
    if (vg__likely(!vg__shim_capturing()))
        return NULL;
    return capture_query(stream);
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
    int device = vg__shim_stream_device(stream);
    CUgraph graph = capture_graph(stream);
    if (vg__unlikely(graph)) {
        vg__ticket_t t = {.device = device, .kind = VG_KIND_ASYNC, .bytes = size, .api = api};
        int rc = vg__acct_reserve(&t);
        if (rc != VG_OK)
            return vg__cu_status(rc);
        CUresult cr = real(dptr, size, stream);
        return vg__shim_graph_settle(&t, cr, graph, cr == CUDA_SUCCESS ? *dptr : 0, size);
    }
    /* The current pool of the stream's device. Its charge is not brought up to date
     * first: the settle reads what the pool reserves after the
     * allocation and charges the change since the last reading, so the
     * charge is the driver's figure after every allocation either way.
     * Between readings the pool can only have shrunk behind our back (a
     * synchronisation's release, the program's cuMemPoolTrimTo): its
     * stale charge is then more than it holds, never less, and a request
     * refused for it is retried after vg__acct_reserve syncs and trims
     * the pools (account.c, reserve_slow). Its growth comes from
     * allocations, each of which reads it. */
    CUmemoryPool pool = vg__acct_pool_current(device);
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
                       dptr, bytesize, vg__shim_per_thread(hStream), "cuMemAllocAsync_ptsz");
}

static CUresult alloc_from_pool(CUresult (*real)(CUdeviceptr *, size_t, CUmemoryPool, CUstream),
                                free_async_fn undo, CUdeviceptr *dptr, size_t size,
                                CUmemoryPool pool, CUstream stream, const char *api)
{
    int device = vg__shim_device(); /* the pool's own, where it is known */
    bool on_device = !pool || vg__acct_pool_home(pool, &device);
    CUgraph graph = capture_graph(stream);
    /* Not synced first, as in alloc_async. */
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
                           vg__shim_per_thread(hStream), "cuMemAllocFromPoolAsync_ptsz");
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
    return free_async(vg__real.cuMemFreeAsync_ptsz, dptr, vg__shim_per_thread(hStream),
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

/* Destroying a device's current pool makes its default current again:
 * forgetting the pool also forgets the devices' current pools. */
CUresult cuMemPoolDestroy(CUmemoryPool pool)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult cr = vg__real.cuMemPoolDestroy(pool);
    if (cr == CUDA_SUCCESS)
        vg__acct_pool_forget(pool);
    return cr;
}

/* The pool cuMemAllocAsync draws from changes: the remembered one is
 * forgotten once the driver made the change (account_streams.c). */
CUresult cuDeviceSetMemPool(CUdevice dev, CUmemoryPool pool)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuDeviceSetMemPool)
        return CUDA_ERROR_NOT_FOUND;
    CUresult cr = vg__real.cuDeviceSetMemPool(dev, pool);
    vg__acct_pool_current_changed(); /* even on failure: costs one query */
    return cr;
}

/* CUDA 13.0: for a device location and pinned memory, cuDeviceSetMemPool
 * by another name (cuda.h); any other kind changes nothing of ours. */
CUresult cuMemSetMemPool(CUmemLocation *location, CUmemAllocationType type, CUmemoryPool pool)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuMemSetMemPool)
        return CUDA_ERROR_NOT_FOUND;
    CUresult cr = vg__real.cuMemSetMemPool(location, type, pool);
    vg__acct_pool_current_changed();
    return cr;
}
