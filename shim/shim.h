/*
 * shim.h — the preload shim's one list of hooked driver entry points, and
 * the few internals its files share.
 *
 * The shim holds no policy: each hook checks that the shim is started,
 * asks the engine (lib/account.c) to charge, calls the real driver, tells
 * the engine what happened, and returns the driver's own result.
 *
 * cuda.h is included with __CUDA_API_VERSION_INTERNAL so that every real ABI
 * name is declared as the driver exports it (legacy 32-bit cuMemAlloc, the
 * _v2 names, the _ptsz twins); the compiler then checks every hook's
 * prototype against NVIDIA's.
 */
#ifndef VG_SHIM_H
#define VG_SHIM_H

#define __CUDA_API_VERSION_INTERNAL 1
#include <cuda.h>

#include "vg_account.h"
#include "vg_driver.h"

#define VG_EXPORT __attribute__((visibility("default")))

/* X(name, params): every driver entry point the shim replaces, exactly as
 * libcuda exports it. This list generates the real-pointer table, the
 * routing table that cuGetProcAddress and dlsym consult, the export
 * declarations, and the routing-coverage test. */
#define VG_HOOKS(X)                                                            \
    X(cuGetProcAddress, (const char *symbol, void **pfn, int cudaVersion,     \
                         cuuint64_t flags))                                    \
    X(cuGetProcAddress_v2,                                                     \
      (const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,      \
       CUdriverProcAddressQueryResult *symbolStatus))                          \
    X(cuMemAlloc, (CUdeviceptr_v1 *dptr, unsigned int bytesize))               \
    X(cuMemAlloc_v2, (CUdeviceptr *dptr, size_t bytesize))                     \
    X(cuMemFree, (CUdeviceptr_v1 dptr))                                        \
    X(cuMemFree_v2, (CUdeviceptr dptr))                                        \
    X(cuMemAllocPitch,                                                         \
      (CUdeviceptr_v1 *dptr, unsigned int *pPitch, unsigned int WidthInBytes,  \
       unsigned int Height, unsigned int ElementSizeBytes))                    \
    X(cuMemAllocPitch_v2,                                                      \
      (CUdeviceptr *dptr, size_t *pPitch, size_t WidthInBytes, size_t Height,  \
       unsigned int ElementSizeBytes))                                         \
    X(cuMemAllocManaged,                                                       \
      (CUdeviceptr *dptr, size_t bytesize, unsigned int flags))                \
    X(cuMemAllocAsync, (CUdeviceptr *dptr, size_t bytesize, CUstream hStream)) \
    X(cuMemAllocAsync_ptsz,                                                    \
      (CUdeviceptr *dptr, size_t bytesize, CUstream hStream))                  \
    X(cuMemAllocFromPoolAsync, (CUdeviceptr *dptr, size_t bytesize,            \
                                CUmemoryPool pool, CUstream hStream))          \
    X(cuMemAllocFromPoolAsync_ptsz, (CUdeviceptr *dptr, size_t bytesize,       \
                                     CUmemoryPool pool, CUstream hStream))     \
    X(cuMemFreeAsync, (CUdeviceptr dptr, CUstream hStream))                    \
    X(cuMemFreeAsync_ptsz, (CUdeviceptr dptr, CUstream hStream))               \
    X(cuMemPoolCreate,                                                         \
      (CUmemoryPool *pool, const CUmemPoolProps *poolProps))                   \
    X(cuMemPoolDestroy, (CUmemoryPool pool))                                   \
    X(cuDeviceSetMemPool, (CUdevice dev, CUmemoryPool pool))                   \
    X(cuMemSetMemPool, (CUmemLocation *location, CUmemAllocationType type,     \
                        CUmemoryPool pool))                                    \
    X(cuStreamBeginCapture, (CUstream hStream))                                \
    X(cuStreamBeginCapture_ptsz, (CUstream hStream))                           \
    X(cuStreamBeginCapture_v2, (CUstream hStream, CUstreamCaptureMode mode))   \
    X(cuStreamBeginCapture_v2_ptsz,                                            \
      (CUstream hStream, CUstreamCaptureMode mode))                            \
    X(cuStreamBeginCaptureToGraph,                                             \
      (CUstream hStream, CUgraph hGraph, const CUgraphNode *dependencies,      \
       const CUgraphEdgeData *dependencyData, size_t numDependencies,          \
       CUstreamCaptureMode mode))                                              \
    X(cuStreamBeginCaptureToGraph_ptsz,                                        \
      (CUstream hStream, CUgraph hGraph, const CUgraphNode *dependencies,      \
       const CUgraphEdgeData *dependencyData, size_t numDependencies,          \
       CUstreamCaptureMode mode))                                              \
    X(cuStreamEndCapture, (CUstream hStream, CUgraph *phGraph))                \
    X(cuStreamEndCapture_ptsz, (CUstream hStream, CUgraph *phGraph))           \
    X(cuMemCreate, (CUmemGenericAllocationHandle *handle, size_t size,         \
                    const CUmemAllocationProp *prop, unsigned long long flags)) \
    X(cuMemRelease, (CUmemGenericAllocationHandle handle))                     \
    X(cuArrayCreate,                                                           \
      (CUarray *pHandle, const CUDA_ARRAY_DESCRIPTOR_v1 *pAllocateArray))      \
    X(cuArrayCreate_v2,                                                        \
      (CUarray *pHandle, const CUDA_ARRAY_DESCRIPTOR *pAllocateArray))         \
    X(cuArray3DCreate,                                                         \
      (CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR_v1 *pAllocateArray))    \
    X(cuArray3DCreate_v2,                                                      \
      (CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *pAllocateArray))       \
    X(cuArrayDestroy, (CUarray hArray))                                        \
    X(cuMipmappedArrayCreate,                                                  \
      (CUmipmappedArray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *pDesc,        \
       unsigned int numMipmapLevels))                                          \
    X(cuMipmappedArrayDestroy, (CUmipmappedArray hMipmappedArray))             \
    X(cuGraphAddMemAllocNode,                                                  \
      (CUgraphNode *phGraphNode, CUgraph hGraph,                               \
       const CUgraphNode *dependencies, size_t numDependencies,                \
       CUDA_MEM_ALLOC_NODE_PARAMS *nodeParams))                                \
    X(cuGraphAddNode,                                                          \
      (CUgraphNode *phGraphNode, CUgraph hGraph,                               \
       const CUgraphNode *dependencies, size_t numDependencies,                \
       CUgraphNodeParams *nodeParams))                                         \
    X(cuGraphAddNode_v2,                                                       \
      (CUgraphNode *phGraphNode, CUgraph hGraph,                               \
       const CUgraphNode *dependencies, const CUgraphEdgeData *dependencyData, \
       size_t numDependencies, CUgraphNodeParams *nodeParams))                 \
    X(cuGraphDestroy, (CUgraph hGraph))                                        \
    X(cuMemGetInfo, (unsigned int *free, unsigned int *total))                 \
    X(cuMemGetInfo_v2, (size_t *free, size_t *total))                          \
    X(cuDeviceTotalMem, (unsigned int *bytes, CUdevice dev))                   \
    X(cuDeviceTotalMem_v2, (size_t *bytes, CUdevice dev))                      \
    X(cuMemGetAddressRange_v2,                                                 \
      (CUdeviceptr *pbase, size_t *psize, CUdeviceptr dptr))                   \
    X(cuPointerGetAttribute,                                                   \
      (void *data, CUpointer_attribute attribute, CUdeviceptr ptr))            \
    X(cuPointerGetAttributes,                                                  \
      (unsigned int numAttributes, CUpointer_attribute *attributes,            \
       void **data, CUdeviceptr ptr))                                          \
    X(cuIpcGetMemHandle, (CUipcMemHandle *pHandle, CUdeviceptr dptr))          \
    X(cuDevicePrimaryCtxReset, (CUdevice dev))                                 \
    X(cuDevicePrimaryCtxReset_v2, (CUdevice dev))                              \
    X(cuDevicePrimaryCtxRelease, (CUdevice dev))                               \
    X(cuDevicePrimaryCtxRelease_v2, (CUdevice dev))                            \
    X(cuMemMap, (CUdeviceptr ptr, size_t size, size_t offset,                  \
                 CUmemGenericAllocationHandle handle, unsigned long long flags)) \
    X(cuMemUnmap, (CUdeviceptr ptr, size_t size))                              \
    X(cuMemRetainAllocationHandle,                                             \
      (CUmemGenericAllocationHandle *handle, void *addr))                      \
    X(cuMemMapArrayAsync,                                                      \
      (CUarrayMapInfo *mapInfoList, unsigned int count, CUstream hStream))     \
    X(cuMemMapArrayAsync_ptsz,                                                 \
      (CUarrayMapInfo *mapInfoList, unsigned int count, CUstream hStream))     \
    X(cuCtxCreate, (CUcontext *pctx, unsigned int flags, CUdevice dev))        \
    X(cuCtxCreate_v2, (CUcontext *pctx, unsigned int flags, CUdevice dev))     \
    X(cuCtxCreate_v3, (CUcontext *pctx, CUexecAffinityParam *paramsArray,     \
                       int numParams, unsigned int flags, CUdevice dev))       \
    X(cuCtxCreate_v4, (CUcontext *pctx, CUctxCreateParams *ctxCreateParams,   \
                       unsigned int flags, CUdevice dev))                      \
    X(cuCtxDestroy, (CUcontext ctx))                                           \
    X(cuCtxDestroy_v2, (CUcontext ctx))                                        \
    X(cuCtxSetLimit, (CUlimit limit, size_t value))                            \
    X(cuModuleLoad, (CUmodule *module, const char *fname))                     \
    X(cuModuleLoadData, (CUmodule *module, const void *image))                 \
    X(cuModuleLoadDataEx, (CUmodule *module, const void *image,                \
                           unsigned int numOptions, CUjit_option *options,     \
                           void **optionValues))                               \
    X(cuModuleLoadFatBinary, (CUmodule *module, const void *fatCubin))         \
    X(cuModuleUnload, (CUmodule hmod))                                         \
    X(cuLibraryLoadData,                                                       \
      (CUlibrary *library, const void *code, CUjit_option *jitOptions,         \
       void **jitOptionsValues, unsigned int numJitOptions,                    \
       CUlibraryOption *libraryOptions, void **libraryOptionValues,            \
       unsigned int numLibraryOptions))                                        \
    X(cuLibraryLoadFromFile,                                                   \
      (CUlibrary *library, const char *fileName, CUjit_option *jitOptions,     \
       void **jitOptionsValues, unsigned int numJitOptions,                    \
       CUlibraryOption *libraryOptions, void **libraryOptionValues,            \
       unsigned int numLibraryOptions))                                        \
    X(cuLibraryUnload, (CUlibrary library))                                    \
    X(cuFuncLoad, (CUfunction function))                                       \
    X(cuGraphInstantiate, (CUgraphExec *phGraphExec, CUgraph hGraph,           \
                           CUgraphNode *phErrorNode, char *logBuffer,          \
                           size_t bufferSize))                                 \
    X(cuGraphInstantiate_v2, (CUgraphExec *phGraphExec, CUgraph hGraph,        \
                              CUgraphNode *phErrorNode, char *logBuffer,       \
                              size_t bufferSize))                              \
    X(cuGraphInstantiateWithFlags, (CUgraphExec *phGraphExec, CUgraph hGraph,  \
                                    unsigned long long flags))                 \
    X(cuGraphInstantiateWithParams,                                            \
      (CUgraphExec *phGraphExec, CUgraph hGraph,                               \
       CUDA_GRAPH_INSTANTIATE_PARAMS *instantiateParams))                      \
    X(cuGraphInstantiateWithParams_ptsz,                                       \
      (CUgraphExec *phGraphExec, CUgraph hGraph,                               \
       CUDA_GRAPH_INSTANTIATE_PARAMS *instantiateParams))                      \
    X(cuGraphUpload, (CUgraphExec hGraphExec, CUstream hStream))               \
    X(cuGraphUpload_ptsz, (CUgraphExec hGraphExec, CUstream hStream))          \
    X(cuGraphLaunch, (CUgraphExec hGraphExec, CUstream hStream))               \
    X(cuGraphLaunch_ptsz, (CUgraphExec hGraphExec, CUstream hStream))          \
    X(cuGraphExecDestroy, (CUgraphExec hGraphExec))                           \
    X(cuLaunchKernel,                                                          \
      (CUfunction f, unsigned int gridDimX, unsigned int gridDimY,             \
       unsigned int gridDimZ, unsigned int blockDimX, unsigned int blockDimY,  \
       unsigned int blockDimZ, unsigned int sharedMemBytes, CUstream hStream,  \
       void **kernelParams, void **extra))                                     \
    X(cuLaunchKernel_ptsz,                                                     \
      (CUfunction f, unsigned int gridDimX, unsigned int gridDimY,             \
       unsigned int gridDimZ, unsigned int blockDimX, unsigned int blockDimY,  \
       unsigned int blockDimZ, unsigned int sharedMemBytes, CUstream hStream,  \
       void **kernelParams, void **extra))                                     \
    X(cuLaunchKernelEx, (const CUlaunchConfig *config, CUfunction f,          \
                         void **kernelParams, void **extra))                   \
    X(cuLaunchKernelEx_ptsz, (const CUlaunchConfig *config, CUfunction f,     \
                              void **kernelParams, void **extra))              \
    X(cuLaunchCooperativeKernel,                                               \
      (CUfunction f, unsigned int gridDimX, unsigned int gridDimY,             \
       unsigned int gridDimZ, unsigned int blockDimX, unsigned int blockDimY,  \
       unsigned int blockDimZ, unsigned int sharedMemBytes, CUstream hStream,  \
       void **kernelParams))                                                   \
    X(cuLaunchCooperativeKernel_ptsz,                                          \
      (CUfunction f, unsigned int gridDimX, unsigned int gridDimY,             \
       unsigned int gridDimZ, unsigned int blockDimX, unsigned int blockDimY,  \
       unsigned int blockDimZ, unsigned int sharedMemBytes, CUstream hStream,  \
       void **kernelParams))

/* X(name): memory-related entry points the shim deliberately passes
 * through untouched: they move, map or describe memory that a hook above
 * already charged, or memory that is not this process's device memory
 * (host allocations, imports from other processes). The routing test fails
 * when the test driver exports a memory entry point found in neither list. */
#define VG_PASSTHROUGH(X)                                                      \
    X(cuMemAddressReserve) X(cuMemAddressFree)                                \
    X(cuMemSetAccess) X(cuMemGetAccess) X(cuMemGetAllocationGranularity)      \
    X(cuMemGetAllocationPropertiesFromHandle)                                 \
    X(cuMemExportToShareableHandle) X(cuMemImportFromShareableHandle)         \
    X(cuMemPoolTrimTo) X(cuMemPoolSetAttribute)                               \
    X(cuMemPoolGetAttribute) X(cuMemPoolSetAccess) X(cuMemPoolGetAccess)      \
    X(cuMemPoolExportToShareableHandle) X(cuMemPoolImportFromShareableHandle) \
    X(cuMemPoolExportPointer) X(cuMemPoolImportPointer)                       \
    X(cuDeviceGetDefaultMemPool) X(cuDeviceGetMemPool) X(cuMemGetMemPool)     \
    X(cuMemGetDefaultMemPool)                                                 \
    X(cuMemGetAddressRange) X(cuPointerSetAttribute)                          \
    X(cuMemHostAlloc) X(cuMemAllocHost) X(cuMemAllocHost_v2) X(cuMemFreeHost) \
    X(cuMemHostRegister) X(cuMemHostRegister_v2) X(cuMemHostUnregister)       \
    X(cuMemHostGetDevicePointer) X(cuMemHostGetDevicePointer_v2)              \
    X(cuMemHostGetFlags) X(cuMemPrefetchAsync) X(cuMemPrefetchAsync_v2)       \
    X(cuMemAdvise) X(cuMemAdvise_v2) X(cuMemRangeGetAttribute)                \
    X(cuMemRangeGetAttributes) X(cuArrayGetDescriptor)                        \
    X(cuArrayGetDescriptor_v2) X(cuArray3DGetDescriptor)                      \
    X(cuArray3DGetDescriptor_v2) X(cuArrayGetMemoryRequirements)              \
    X(cuMipmappedArrayGetMemoryRequirements) X(cuMipmappedArrayGetLevel)      \
    X(cuArrayGetSparseProperties) X(cuArrayGetPlane)                          \
    X(cuGraphAddMemFreeNode) X(cuGraphMemAllocNodeGetParams)                  \
    X(cuGraphMemFreeNodeGetParams) X(cuDeviceGraphMemTrim)                    \
    X(cuDeviceGetGraphMemAttribute) X(cuDeviceSetGraphMemAttribute)           \
    X(cuIpcOpenMemHandle) X(cuIpcOpenMemHandle_v2) X(cuIpcCloseMemHandle)

/* X(prefix): whole families passed through: they copy or fill memory that
 * an allocation hook already charged, in every versioned and _ptsz/_ptds
 * variant the driver exports. */
#define VG_PASSTHROUGH_FAMILIES(X) X("cuMemcpy") X("cuMemset")

/* The real entry points, resolved once from the driver the engine loaded. */
typedef struct vg_shim_real {
#define VG_SHIM_FIELD_(name, params) CUresult (*name) params;
    VG_HOOKS(VG_SHIM_FIELD_)
#undef VG_SHIM_FIELD_
} vg_shim_real_t;

/* Our hooks, exported under the driver's names. */
#define VG_SHIM_DECLARE_(name, params) VG_EXPORT CUresult name params;
VG_HOOKS(VG_SHIM_DECLARE_)
#undef VG_SHIM_DECLARE_

/* ------------------------------------------------------------ shim.c */

/* The real driver's functions; valid once vg__shim_ready() is true. */
extern vg_shim_real_t vg__real;

/* vg__real's cuMemAlloc_v2 and cuMemFree_v2, read from vg__hot's line,
 * for the plain pair (docs/benchmarks.md, "What a cold line costs a pair"). */
static inline CUresult vg__real_mem_alloc(CUdeviceptr *dptr, size_t bytesize)
{
    return ((CUresult(*)(CUdeviceptr *, size_t))vg__hot.real_mem_alloc)(dptr, bytesize);
}

static inline CUresult vg__real_mem_free(CUdeviceptr dptr)
{
    return ((CUresult(*)(CUdeviceptr))vg__hot.real_mem_free)(dptr);
}

/* True once the shim has started well. The only check on the hot path. */
static inline bool vg__shim_ready(void)
{
    return atomic_load_explicit(&vg__hot.shim_ok, memory_order_acquire);
}
/* Starts the shim (engine settings, real driver, routing). Thread-safe,
 * idempotent, never calls cuInit. Returns CUDA_SUCCESS or the CUresult a
 * hook should return when the driver cannot be reached. */
CUresult vg__shim_start(void);
/* The check every hook starts with: true when the shim is running (one
 * acquire load once started). */
static inline bool vg__shim_started(void)
{
    return vg__likely(vg__shim_ready()) || vg__shim_start() == CUDA_SUCCESS;
}
/* Ends an allocation hook: commits the ticket under `key` when the driver
 * succeeded, else gives the reservation back. `cr`, or
 * CUDA_ERROR_OUT_OF_MEMORY when the allocation could not be recorded
 * (vg__acct_commit): the caller then frees what the driver made and calls
 * vg__acct_unrecorded(). */
static inline CUresult vg__shim_settle(vg__ticket_t *t, CUresult cr, uint64_t key,
                                       uint64_t size)
{
    if (cr != CUDA_SUCCESS) {
        vg__acct_cancel(t);
        return cr;
    }
    return vg__likely(vg__acct_commit(t, key, size, 0) == VG_OK) ? CUDA_SUCCESS
                                                                 : CUDA_ERROR_OUT_OF_MEMORY;
}
/* The hook for a real driver function, or `fn` itself when we do not hook
 * it. Bisection over the routing table: no string compares. */
void *vg__shim_route(void *fn);
/* The ordinal of the calling thread's current device (0 without one).
 * With one device (vg__hot.device_count_kind 1) that is 0, and no driver
 * call is made: measured on the H200 in docs/benchmarks.md. */
int vg__shim_device_slow(void);
static inline int vg__shim_device(void)
{
    if (vg__likely(atomic_load_explicit(&vg__hot.device_count_kind, memory_order_relaxed) == 1))
        return 0;
    return vg__shim_device_slow();
}

/* The ordinal of the device `stream` belongs to: a stream-ordered
 * allocation comes from that device's current pool, whichever context is
 * current (cuMemAllocAsync's documentation). A default stream is the
 * current context's. The stream's device is asked of the driver
 * (cuStreamGetDevice, else cuStreamGetCtx; shim.c) only when the process
 * sees several devices and the stream is a created one; when the driver
 * cannot say, the current device. With one device 0, at the cost of
 * vg__shim_device(). */
int vg__shim_stream_device_slow(CUstream stream);
static inline int vg__shim_stream_device(CUstream stream)
{
    if (vg__likely(atomic_load_explicit(&vg__hot.device_count_kind, memory_order_relaxed) == 1))
        return 0;
    return vg__shim_stream_device_slow(stream);
}

/* A _ptsz entry point's stream 0 is the calling thread's per-thread
 * stream, which CU_STREAM_PER_THREAD names to every entry point: its hooks
 * pass that on, so a capture query asks about the right stream. */
static inline CUstream vg__shim_per_thread(CUstream stream)
{
    return stream ? stream : CU_STREAM_PER_THREAD;
}

/* ---------------------------------------------------- hooks_capture.c */

/* Stream captures begun through the hooks and not known to have ended
 * (hooks_capture.c has the rules). Read through vg__shim_capturing(). */
extern _Atomic long vg__shim_captures_open;
/* False when no stream of this process can be capturing, so the
 * stream-ordered hooks need not ask the driver (one relaxed load). */
static inline bool vg__shim_capturing(void)
{
    return atomic_load_explicit(&vg__shim_captures_open, memory_order_relaxed) != 0;
}

/* ------------------------------------------------------ hooks_graph.c */

/* Ends the charge of a graph memory node of hGraph at dptr (a node made by
 * cuGraphAddMemAllocNode, cuGraphAddNode or stream capture): committed,
 * released when the graph is destroyed, if the driver succeeded (`cr`),
 * else given back. Returns `cr`. */
CUresult vg__shim_graph_settle(vg__ticket_t *t, CUresult cr, CUgraph hGraph,
                               CUdeviceptr dptr, size_t bytes);

#endif /* VG_SHIM_H */
