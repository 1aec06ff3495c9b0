/*
 * stream.c: streams (and their capture into a graph) and events. Work is
 * synchronous in the test driver, so streams and events only validate
 * handles; their synchronize calls are the sync points at which memory
 * pools give unused reserve back (fc_pool_sync). A stream belongs to the
 * context current when it was created, and so to that context's device
 * (cuStreamGetCtx, cuStreamGetDevice); the default streams to the
 * calling thread's current context.
 */
#include "fakecuda.h"

#include <stdlib.h>

struct CUstream_st {
    int dev;
    CUcontext ctx;                  /* current when it was created */
    unsigned int flags;
    CUgraph capture;                /* the graph being captured, or NULL */
    cuuint64_t capture_id;
};

struct CUevent_st {
    int dev;
    unsigned int flags;
};

CUresult fc_stream_device(CUstream s, int *dev)
{
    if (s == NULL || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD) {
        CUcontext ctx;
        CUresult rc = fc_ctx_current(&ctx);
        if (rc == CUDA_SUCCESS)
            *dev = ctx->dev;
        return rc;
    }
    if (!fc_handle_ok(s, FC_H_STREAM))
        return CUDA_ERROR_INVALID_HANDLE;
    *dev = s->dev;
    return CUDA_SUCCESS;
}

/* ---- streams ---- */

CUresult cuStreamCreate(CUstream *phStream, unsigned int Flags)
{
    if (fc_initialized() && (!phStream || (Flags & ~(unsigned)CU_STREAM_NON_BLOCKING)))
        return CUDA_ERROR_INVALID_VALUE;
    CUcontext ctx;
    fc_lock();
    CUresult rc = fc_ctx_current(&ctx);
    if (rc == CUDA_SUCCESS) {
        CUstream s = calloc(1, sizeof *s);
        if (!s)
            abort();
        s->dev = ctx->dev;
        s->ctx = ctx;
        s->flags = Flags;
        fc_handle_add(s, FC_H_STREAM);
        *phStream = s;
    }
    fc_unlock();
    return rc;
}

CUresult cuStreamCreateWithPriority(CUstream *phStream, unsigned int flags, int priority)
{
    (void)priority;
    return cuStreamCreate(phStream, flags);
}

CUresult cuStreamDestroy_v2(CUstream hStream)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_lock();
    bool ok = fc_handle_ok(hStream, FC_H_STREAM);
    if (ok)
        fc_handle_del(hStream);
    fc_unlock();
    if (!ok)
        return CUDA_ERROR_INVALID_HANDLE;
    free(hStream);
    return CUDA_SUCCESS;
}

CUresult cuStreamDestroy(CUstream hStream) { return cuStreamDestroy_v2(hStream); }

CUresult cuStreamSynchronize(CUstream hStream)
{
    int dev;
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_lock();
    CUresult rc = fc_stream_device(hStream, &dev);
    if (rc == CUDA_SUCCESS)
        fc_pool_sync();
    fc_unlock();
    return rc;
}

CUresult cuStreamSynchronize_ptsz(CUstream hStream) { return cuStreamSynchronize(hStream); }

/* CUDA 12.8. A default stream's is the current context's device. */
CUresult cuStreamGetDevice(CUstream hStream, CUdevice *device)
{
    int dev;
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (fc_knobs_get()->no_stream_device)
        return CUDA_ERROR_NOT_FOUND;
    if (!device)
        return CUDA_ERROR_INVALID_VALUE;
    fc_lock();
    CUresult rc = fc_stream_device(hStream, &dev);
    fc_unlock();
    if (rc == CUDA_SUCCESS)
        *device = dev;
    return rc;
}

CUresult cuStreamGetDevice_ptsz(CUstream hStream, CUdevice *device)
{
    return cuStreamGetDevice(hStream ? hStream : CU_STREAM_PER_THREAD, device);
}

/* The context current when the stream was created; a default stream's is
 * the current context. */
CUresult cuStreamGetCtx(CUstream hStream, CUcontext *pctx)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    CUcontext ctx = NULL;
    fc_lock();
    CUresult rc = CUDA_SUCCESS;
    if (!hStream || hStream == CU_STREAM_LEGACY || hStream == CU_STREAM_PER_THREAD)
        rc = fc_ctx_current(&ctx);
    else if (fc_handle_ok(hStream, FC_H_STREAM))
        ctx = hStream->ctx;
    else
        rc = CUDA_ERROR_INVALID_HANDLE;
    fc_unlock();
    if (rc == CUDA_SUCCESS)
        *pctx = ctx;
    return rc;
}

CUresult cuStreamGetCtx_ptsz(CUstream hStream, CUcontext *pctx)
{
    return cuStreamGetCtx(hStream ? hStream : CU_STREAM_PER_THREAD, pctx);
}

/* ---- stream capture ---- */

CUgraph fc_stream_capture(CUstream s)
{
    return fc_handle_ok(s, FC_H_STREAM) ? s->capture : NULL;
}

/* Any mode; only created streams can be captured. */
CUresult cuStreamBeginCapture_v2(CUstream hStream, CUstreamCaptureMode mode)
{
    static cuuint64_t next_id;
    (void)mode;
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_lock();
    CUresult rc = CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    if (fc_handle_ok(hStream, FC_H_STREAM))
        rc = hStream->capture ? CUDA_ERROR_ILLEGAL_STATE : CUDA_SUCCESS;
    if (rc == CUDA_SUCCESS) {
        hStream->capture = fc_graph_new();
        hStream->capture_id = ++next_id;
    }
    fc_unlock();
    return rc;
}

CUresult cuStreamEndCapture(CUstream hStream, CUgraph *phGraph)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!phGraph)
        return CUDA_ERROR_INVALID_VALUE;
    fc_lock();
    CUgraph g = fc_stream_capture(hStream);
    if (g)
        hStream->capture = NULL;
    fc_unlock();
    if (!g)
        return CUDA_ERROR_STREAM_CAPTURE_UNMATCHED;
    *phGraph = g;
    return CUDA_SUCCESS;
}

/* Every output but the status is optional; no dependencies are kept. */
CUresult cuStreamGetCaptureInfo_v2(CUstream hStream, CUstreamCaptureStatus *captureStatus_out,
                                   cuuint64_t *id_out, CUgraph *graph_out,
                                   const CUgraphNode **dependencies_out, size_t *numDependencies_out)
{
    int dev;
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!captureStatus_out)
        return CUDA_ERROR_INVALID_VALUE;
    fc_lock();
    CUresult rc = fc_stream_device(hStream, &dev);
    CUgraph g = rc == CUDA_SUCCESS ? fc_stream_capture(hStream) : NULL;
    if (rc == CUDA_SUCCESS) {
        *captureStatus_out = g ? CU_STREAM_CAPTURE_STATUS_ACTIVE : CU_STREAM_CAPTURE_STATUS_NONE;
        if (g && id_out)
            *id_out = hStream->capture_id;
        if (g && graph_out)
            *graph_out = g;
        if (g && dependencies_out)
            *dependencies_out = NULL;
        if (g && numDependencies_out)
            *numDependencies_out = 0;
    }
    fc_unlock();
    return rc;
}

CUresult cuStreamIsCapturing(CUstream hStream, CUstreamCaptureStatus *captureStatus)
{
    return cuStreamGetCaptureInfo_v2(hStream, captureStatus, NULL, NULL, NULL, NULL);
}

/* All work is already done when a call returns. */
CUresult cuStreamQuery(CUstream hStream)
{
    int dev;
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_lock();
    CUresult rc = fc_stream_device(hStream, &dev);
    fc_unlock();
    return rc;
}

CUresult cuStreamQuery_ptsz(CUstream hStream) { return cuStreamQuery(hStream); }

/* ---- events ---- */

CUresult cuEventCreate(CUevent *phEvent, unsigned int Flags)
{
    const unsigned int known = CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING | CU_EVENT_INTERPROCESS;
    if (fc_initialized() && (!phEvent || (Flags & ~known)))
        return CUDA_ERROR_INVALID_VALUE;
    CUcontext ctx;
    fc_lock();
    CUresult rc = fc_ctx_current(&ctx);
    if (rc == CUDA_SUCCESS) {
        CUevent e = calloc(1, sizeof *e);
        if (!e)
            abort();
        e->dev = ctx->dev;
        e->flags = Flags;
        fc_handle_add(e, FC_H_EVENT);
        *phEvent = e;
    }
    fc_unlock();
    return rc;
}

CUresult cuEventRecord(CUevent hEvent, CUstream hStream)
{
    int dev;
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_lock();
    CUresult rc = fc_handle_ok(hEvent, FC_H_EVENT) ? fc_stream_device(hStream, &dev)
                                                    : CUDA_ERROR_INVALID_HANDLE;
    fc_unlock();
    return rc;
}

CUresult cuEventRecord_ptsz(CUevent hEvent, CUstream hStream) { return cuEventRecord(hEvent, hStream); }

CUresult cuEventSynchronize(CUevent hEvent)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_lock();
    bool ok = fc_handle_ok(hEvent, FC_H_EVENT);
    if (ok)
        fc_pool_sync();
    fc_unlock();
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

CUresult cuEventQuery(CUevent hEvent)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_lock();
    bool ok = fc_handle_ok(hEvent, FC_H_EVENT);
    fc_unlock();
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

CUresult cuEventDestroy_v2(CUevent hEvent)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_lock();
    bool ok = fc_handle_ok(hEvent, FC_H_EVENT);
    if (ok)
        fc_handle_del(hEvent);
    fc_unlock();
    if (!ok)
        return CUDA_ERROR_INVALID_HANDLE;
    free(hEvent);
    return CUDA_SUCCESS;
}

CUresult cuEventDestroy(CUevent hEvent) { return cuEventDestroy_v2(hEvent); }
