/*
 * hooks_capture.c — how many stream captures are open, so that the
 * stream-ordered hooks (hooks_async.c) ask the driver whether a stream is
 * being captured only while one may be: with none open, that query was a
 * driver call on every cuMemAllocAsync and cuMemFreeAsync for nothing.
 *
 * A capture opens only at cuStreamBeginCapture (the legacy ABI, _v2,
 * ToGraph, and their _ptsz twins: all hooked). Other streams join it
 * through its events, but only while it is open, and it closes at
 * cuStreamEndCapture on its origin stream. The count is never below the
 * captures open: it rises before the driver is asked to begin (a capture
 * is never open uncounted), falls back when the begin failed, and falls at
 * an end only when the driver ended the capture: CUDA_SUCCESS, or
 * CUDA_ERROR_STREAM_CAPTURE_INVALIDATED when the driver then says that
 * capture is over (an invalidated capture ends with a NULL graph). Any
 * other failure (not the origin stream, the wrong thread, no capture)
 * leaves it, and so does a capture never ended (its stream destroyed in
 * it): the queries then stay on, slower, never wrong.
 *
 * Every way a program finds these entry points passes here: linked names
 * (preloaded), dlsym and cuGetProcAddress (routed by the real pointer,
 * shim.c). A library that asks dlsym(RTLD_NEXT) for cuStreamBeginCapture
 * chains past the shim on purpose (docs/shim.md): allocations captured in
 * its captures go uncounted, as its own calls do.
 */
#include "shim.h"

_Atomic long vg__shim_captures_open;

static void opened(void)
{
    atomic_fetch_add_explicit(&vg__shim_captures_open, 1, memory_order_relaxed);
}

static void closed(void)
{
    atomic_fetch_sub_explicit(&vg__shim_captures_open, 1, memory_order_relaxed);
}

/* A begin just returned `cr`; the count rose before it. */
static CUresult begun(CUresult cr)
{
    if (cr != CUDA_SUCCESS)
        closed();
    return cr;
}

/* The capture `stream` is in (*id), or false when it is in none or the
 * driver cannot say. */
static bool capture_of(CUstream stream, cuuint64_t *id)
{
    CUstreamCaptureStatus status = CU_STREAM_CAPTURE_STATUS_NONE;
    return vg__driver()->cuStreamGetCaptureInfo_v2(stream, &status, id, NULL, NULL, NULL) ==
               CUDA_SUCCESS &&
           status != CU_STREAM_CAPTURE_STATUS_NONE;
}

static CUresult end_capture(CUresult (*real)(CUstream, CUgraph *), CUstream stream,
                            CUgraph *graph)
{
    if (!real)
        return CUDA_ERROR_NOT_FOUND;
    cuuint64_t before = 0, after = 0;
    bool was = capture_of(stream, &before);
    CUresult cr = real(stream, graph);
    if (cr == CUDA_SUCCESS ||
        (cr == CUDA_ERROR_STREAM_CAPTURE_INVALIDATED && was &&
         (!capture_of(stream, &after) || after != before)))
        closed();
    return cr;
}

CUresult cuStreamBeginCapture(CUstream hStream)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuStreamBeginCapture)
        return CUDA_ERROR_NOT_FOUND;
    opened();
    return begun(vg__real.cuStreamBeginCapture(hStream));
}

CUresult cuStreamBeginCapture_ptsz(CUstream hStream)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuStreamBeginCapture_ptsz)
        return CUDA_ERROR_NOT_FOUND;
    opened();
    return begun(vg__real.cuStreamBeginCapture_ptsz(hStream));
}

CUresult cuStreamBeginCapture_v2(CUstream hStream, CUstreamCaptureMode mode)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuStreamBeginCapture_v2)
        return CUDA_ERROR_NOT_FOUND;
    opened();
    return begun(vg__real.cuStreamBeginCapture_v2(hStream, mode));
}

CUresult cuStreamBeginCapture_v2_ptsz(CUstream hStream, CUstreamCaptureMode mode)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuStreamBeginCapture_v2_ptsz)
        return CUDA_ERROR_NOT_FOUND;
    opened();
    return begun(vg__real.cuStreamBeginCapture_v2_ptsz(hStream, mode));
}

CUresult cuStreamBeginCaptureToGraph(CUstream hStream, CUgraph hGraph,
                                     const CUgraphNode *dependencies,
                                     const CUgraphEdgeData *dependencyData,
                                     size_t numDependencies, CUstreamCaptureMode mode)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuStreamBeginCaptureToGraph)
        return CUDA_ERROR_NOT_FOUND;
    opened();
    return begun(vg__real.cuStreamBeginCaptureToGraph(hStream, hGraph, dependencies,
                                                      dependencyData, numDependencies, mode));
}

CUresult cuStreamBeginCaptureToGraph_ptsz(CUstream hStream, CUgraph hGraph,
                                          const CUgraphNode *dependencies,
                                          const CUgraphEdgeData *dependencyData,
                                          size_t numDependencies, CUstreamCaptureMode mode)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuStreamBeginCaptureToGraph_ptsz)
        return CUDA_ERROR_NOT_FOUND;
    opened();
    return begun(vg__real.cuStreamBeginCaptureToGraph_ptsz(
        hStream, hGraph, dependencies, dependencyData, numDependencies, mode));
}

CUresult cuStreamEndCapture(CUstream hStream, CUgraph *phGraph)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    return end_capture(vg__real.cuStreamEndCapture, hStream, phGraph);
}

CUresult cuStreamEndCapture_ptsz(CUstream hStream, CUgraph *phGraph)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    return end_capture(vg__real.cuStreamEndCapture_ptsz, vg__shim_per_thread(hStream), phGraph);
}
