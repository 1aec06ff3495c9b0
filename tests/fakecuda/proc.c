/*
 * proc.c: cuGetProcAddress (the CUDA 11.3 ABI) and cuGetProcAddress_v2.
 * Like the real driver, requests name a base symbol ("cuMemAlloc") with the
 * CUDA version the caller was built for and a stream flag; one table of
 * {base name, first version, class, entry point} answers them: the row with
 * the highest version not above the request wins, and with
 * CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM a per-thread twin
 * (_ptds/_ptsz, class FC_PROC_PTDS) wins over its legacy-stream sibling.
 * Versions come from cudaTypedefs.h (PFN_<name>_v<version>).
 *
 * Answers measured on the real driver (H100, 580.159, CUDA 13.0):
 * - cuGetProcAddress_v2 returns CUDA_SUCCESS even when nothing is found:
 *   *pfn = NULL and *symbolStatus says SYMBOL_NOT_FOUND or
 *   VERSION_NOT_SUFFICIENT; the v1 ABI returns CUDA_ERROR_NOT_FOUND;
 * - a version above the driver's (13000) or an unknown flag bit is
 *   CUDA_ERROR_INVALID_VALUE, with *pfn and *symbolStatus untouched;
 * - versioned names ("cuMemAlloc_v2") are not found; "cuGraphInstantiate"
 *   stays cuGraphInstantiate_v2 at 12000+ (not ...WithFlags).
 * Every entry point this library exports is in the table (the tests check
 * that against `nm -D`). Rows are sorted by base name for bisection.
 */
#include "fakecuda.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { FC_PROC_ANY, FC_PROC_PTDS } fc_proc_class;

typedef struct {
    const char *base;
    int version;
    fc_proc_class cls;
    void *fn;
} fc_proc;

#define FC_PROCS(P) \
    P(cuArray3DCreate, 2000, FC_PROC_ANY, cuArray3DCreate) \
    P(cuArray3DCreate, 3020, FC_PROC_ANY, cuArray3DCreate_v2) \
    P(cuArray3DGetDescriptor, 2000, FC_PROC_ANY, cuArray3DGetDescriptor) \
    P(cuArray3DGetDescriptor, 3020, FC_PROC_ANY, cuArray3DGetDescriptor_v2) \
    P(cuArrayCreate, 2000, FC_PROC_ANY, cuArrayCreate) \
    P(cuArrayCreate, 3020, FC_PROC_ANY, cuArrayCreate_v2) \
    P(cuArrayDestroy, 2000, FC_PROC_ANY, cuArrayDestroy) \
    P(cuArrayGetDescriptor, 2000, FC_PROC_ANY, cuArrayGetDescriptor) \
    P(cuArrayGetDescriptor, 3020, FC_PROC_ANY, cuArrayGetDescriptor_v2) \
    P(cuArrayGetMemoryRequirements, 11060, FC_PROC_ANY, cuArrayGetMemoryRequirements) \
    P(cuCtxCreate, 2000, FC_PROC_ANY, cuCtxCreate) \
    P(cuCtxCreate, 3020, FC_PROC_ANY, cuCtxCreate_v2) \
    P(cuCtxCreate, 11040, FC_PROC_ANY, cuCtxCreate_v3) \
    P(cuCtxCreate, 12050, FC_PROC_ANY, cuCtxCreate_v4) \
    P(cuCtxDestroy, 2000, FC_PROC_ANY, cuCtxDestroy) \
    P(cuCtxDestroy, 4000, FC_PROC_ANY, cuCtxDestroy_v2) \
    P(cuCtxGetCurrent, 4000, FC_PROC_ANY, cuCtxGetCurrent) \
    P(cuCtxGetDevice, 2000, FC_PROC_ANY, cuCtxGetDevice) \
    P(cuCtxGetDevice, 13000, FC_PROC_ANY, cuCtxGetDevice_v2) \
    P(cuCtxGetId, 12000, FC_PROC_ANY, cuCtxGetId) \
    P(cuCtxGetLimit, 3010, FC_PROC_ANY, cuCtxGetLimit) \
    P(cuCtxPopCurrent, 2000, FC_PROC_ANY, cuCtxPopCurrent) \
    P(cuCtxPopCurrent, 4000, FC_PROC_ANY, cuCtxPopCurrent_v2) \
    P(cuCtxPushCurrent, 2000, FC_PROC_ANY, cuCtxPushCurrent) \
    P(cuCtxPushCurrent, 4000, FC_PROC_ANY, cuCtxPushCurrent_v2) \
    P(cuCtxSetCurrent, 4000, FC_PROC_ANY, cuCtxSetCurrent) \
    P(cuCtxSetLimit, 3010, FC_PROC_ANY, cuCtxSetLimit) \
    P(cuCtxSynchronize, 2000, FC_PROC_ANY, cuCtxSynchronize) \
    P(cuCtxSynchronize, 13000, FC_PROC_ANY, cuCtxSynchronize_v2) \
    P(cuDeviceGet, 2000, FC_PROC_ANY, cuDeviceGet) \
    P(cuDeviceGetAttribute, 2000, FC_PROC_ANY, cuDeviceGetAttribute) \
    P(cuDeviceGetCount, 2000, FC_PROC_ANY, cuDeviceGetCount) \
    P(cuDeviceGetDefaultMemPool, 11020, FC_PROC_ANY, cuDeviceGetDefaultMemPool) \
    P(cuDeviceGetMemPool, 11020, FC_PROC_ANY, cuDeviceGetMemPool) \
    P(cuDeviceGetName, 2000, FC_PROC_ANY, cuDeviceGetName) \
    P(cuDeviceGetUuid, 9020, FC_PROC_ANY, cuDeviceGetUuid) \
    P(cuDeviceGetUuid, 11040, FC_PROC_ANY, cuDeviceGetUuid_v2) \
    P(cuDevicePrimaryCtxGetState, 7000, FC_PROC_ANY, cuDevicePrimaryCtxGetState) \
    P(cuDevicePrimaryCtxRelease, 7000, FC_PROC_ANY, cuDevicePrimaryCtxRelease) \
    P(cuDevicePrimaryCtxRelease, 11000, FC_PROC_ANY, cuDevicePrimaryCtxRelease_v2) \
    P(cuDevicePrimaryCtxReset, 7000, FC_PROC_ANY, cuDevicePrimaryCtxReset) \
    P(cuDevicePrimaryCtxReset, 11000, FC_PROC_ANY, cuDevicePrimaryCtxReset_v2) \
    P(cuDevicePrimaryCtxRetain, 7000, FC_PROC_ANY, cuDevicePrimaryCtxRetain) \
    P(cuDeviceSetMemPool, 11020, FC_PROC_ANY, cuDeviceSetMemPool) \
    P(cuDeviceTotalMem, 2000, FC_PROC_ANY, cuDeviceTotalMem) \
    P(cuDeviceTotalMem, 3020, FC_PROC_ANY, cuDeviceTotalMem_v2) \
    P(cuDriverGetVersion, 2020, FC_PROC_ANY, cuDriverGetVersion) \
    P(cuEventCreate, 2000, FC_PROC_ANY, cuEventCreate) \
    P(cuEventDestroy, 2000, FC_PROC_ANY, cuEventDestroy) \
    P(cuEventDestroy, 4000, FC_PROC_ANY, cuEventDestroy_v2) \
    P(cuEventQuery, 2000, FC_PROC_ANY, cuEventQuery) \
    P(cuEventRecord, 2000, FC_PROC_ANY, cuEventRecord) \
    P(cuEventRecord, 7000, FC_PROC_PTDS, cuEventRecord_ptsz) \
    P(cuEventSynchronize, 2000, FC_PROC_ANY, cuEventSynchronize) \
    P(cuFuncIsLoaded, 12040, FC_PROC_ANY, cuFuncIsLoaded) \
    P(cuFuncLoad, 12040, FC_PROC_ANY, cuFuncLoad) \
    P(cuGetErrorName, 6000, FC_PROC_ANY, cuGetErrorName) \
    P(cuGetErrorString, 6000, FC_PROC_ANY, cuGetErrorString) \
    P(cuGetProcAddress, 11030, FC_PROC_ANY, cuGetProcAddress) \
    P(cuGetProcAddress, 12000, FC_PROC_ANY, cuGetProcAddress_v2) \
    P(cuGraphAddKernelNode, 12000, FC_PROC_ANY, cuGraphAddKernelNode_v2) \
    P(cuGraphAddMemAllocNode, 11040, FC_PROC_ANY, cuGraphAddMemAllocNode) \
    P(cuGraphAddMemFreeNode, 11040, FC_PROC_ANY, cuGraphAddMemFreeNode) \
    P(cuGraphAddNode, 12020, FC_PROC_ANY, cuGraphAddNode) \
    P(cuGraphAddNode, 12030, FC_PROC_ANY, cuGraphAddNode_v2) \
    P(cuGraphCreate, 10000, FC_PROC_ANY, cuGraphCreate) \
    P(cuGraphDestroy, 10000, FC_PROC_ANY, cuGraphDestroy) \
    P(cuGraphExecDestroy, 10000, FC_PROC_ANY, cuGraphExecDestroy) \
    P(cuGraphInstantiate, 10000, FC_PROC_ANY, cuGraphInstantiate) \
    P(cuGraphInstantiate, 11000, FC_PROC_ANY, cuGraphInstantiate_v2) \
    P(cuGraphInstantiateWithFlags, 11040, FC_PROC_ANY, cuGraphInstantiateWithFlags) \
    P(cuGraphInstantiateWithParams, 12000, FC_PROC_ANY, cuGraphInstantiateWithParams) \
    P(cuGraphInstantiateWithParams, 12000, FC_PROC_PTDS, cuGraphInstantiateWithParams_ptsz) \
    P(cuGraphLaunch, 10000, FC_PROC_ANY, cuGraphLaunch) \
    P(cuGraphLaunch, 10000, FC_PROC_PTDS, cuGraphLaunch_ptsz) \
    P(cuInit, 2000, FC_PROC_ANY, cuInit) \
    P(cuIpcGetMemHandle, 4010, FC_PROC_ANY, cuIpcGetMemHandle) \
    P(cuKernelGetFunction, 12000, FC_PROC_ANY, cuKernelGetFunction) \
    P(cuLaunchKernel, 4000, FC_PROC_ANY, cuLaunchKernel) \
    P(cuLaunchKernel, 7000, FC_PROC_PTDS, cuLaunchKernel_ptsz) \
    P(cuLaunchKernelEx, 11060, FC_PROC_ANY, cuLaunchKernelEx) \
    P(cuLaunchKernelEx, 11060, FC_PROC_PTDS, cuLaunchKernelEx_ptsz) \
    P(cuLibraryGetKernel, 12000, FC_PROC_ANY, cuLibraryGetKernel) \
    P(cuLibraryLoadData, 12000, FC_PROC_ANY, cuLibraryLoadData) \
    P(cuLibraryLoadFromFile, 12000, FC_PROC_ANY, cuLibraryLoadFromFile) \
    P(cuLibraryUnload, 12000, FC_PROC_ANY, cuLibraryUnload) \
    P(cuMemAddressFree, 10020, FC_PROC_ANY, cuMemAddressFree) \
    P(cuMemAddressReserve, 10020, FC_PROC_ANY, cuMemAddressReserve) \
    P(cuMemAlloc, 2000, FC_PROC_ANY, cuMemAlloc) \
    P(cuMemAlloc, 3020, FC_PROC_ANY, cuMemAlloc_v2) \
    P(cuMemAllocAsync, 11020, FC_PROC_ANY, cuMemAllocAsync) \
    P(cuMemAllocAsync, 11020, FC_PROC_PTDS, cuMemAllocAsync_ptsz) \
    P(cuMemAllocFromPoolAsync, 11020, FC_PROC_ANY, cuMemAllocFromPoolAsync) \
    P(cuMemAllocFromPoolAsync, 11020, FC_PROC_PTDS, cuMemAllocFromPoolAsync_ptsz) \
    P(cuMemAllocManaged, 6000, FC_PROC_ANY, cuMemAllocManaged) \
    P(cuMemAllocPitch, 2000, FC_PROC_ANY, cuMemAllocPitch) \
    P(cuMemAllocPitch, 3020, FC_PROC_ANY, cuMemAllocPitch_v2) \
    P(cuMemCreate, 10020, FC_PROC_ANY, cuMemCreate) \
    P(cuMemFree, 2000, FC_PROC_ANY, cuMemFree) \
    P(cuMemFree, 3020, FC_PROC_ANY, cuMemFree_v2) \
    P(cuMemFreeAsync, 11020, FC_PROC_ANY, cuMemFreeAsync) \
    P(cuMemFreeAsync, 11020, FC_PROC_PTDS, cuMemFreeAsync_ptsz) \
    P(cuMemGetAddressRange, 2000, FC_PROC_ANY, cuMemGetAddressRange) \
    P(cuMemGetAddressRange, 3020, FC_PROC_ANY, cuMemGetAddressRange_v2) \
    P(cuMemGetAllocationGranularity, 10020, FC_PROC_ANY, cuMemGetAllocationGranularity) \
    P(cuMemGetAllocationPropertiesFromHandle, 10020, FC_PROC_ANY, cuMemGetAllocationPropertiesFromHandle) \
    P(cuMemGetInfo, 2000, FC_PROC_ANY, cuMemGetInfo) \
    P(cuMemGetInfo, 3020, FC_PROC_ANY, cuMemGetInfo_v2) \
    P(cuMemMap, 10020, FC_PROC_ANY, cuMemMap) \
    P(cuMemMapArrayAsync, 11010, FC_PROC_ANY, cuMemMapArrayAsync) \
    P(cuMemMapArrayAsync, 11010, FC_PROC_PTDS, cuMemMapArrayAsync_ptsz) \
    P(cuMemPoolCreate, 11020, FC_PROC_ANY, cuMemPoolCreate) \
    P(cuMemPoolDestroy, 11020, FC_PROC_ANY, cuMemPoolDestroy) \
    P(cuMemPoolGetAttribute, 11020, FC_PROC_ANY, cuMemPoolGetAttribute) \
    P(cuMemPoolSetAttribute, 11020, FC_PROC_ANY, cuMemPoolSetAttribute) \
    P(cuMemPoolTrimTo, 11020, FC_PROC_ANY, cuMemPoolTrimTo) \
    P(cuMemRelease, 10020, FC_PROC_ANY, cuMemRelease) \
    P(cuMemRetainAllocationHandle, 11000, FC_PROC_ANY, cuMemRetainAllocationHandle) \
    P(cuMemSetAccess, 10020, FC_PROC_ANY, cuMemSetAccess) \
    P(cuMemUnmap, 10020, FC_PROC_ANY, cuMemUnmap) \
    P(cuMemcpy, 4000, FC_PROC_ANY, cuMemcpy) \
    P(cuMemcpy, 7000, FC_PROC_PTDS, cuMemcpy_ptds) \
    P(cuMemcpyAsync, 4000, FC_PROC_ANY, cuMemcpyAsync) \
    P(cuMemcpyAsync, 7000, FC_PROC_PTDS, cuMemcpyAsync_ptsz) \
    P(cuMemcpyDtoD, 2000, FC_PROC_ANY, cuMemcpyDtoD) \
    P(cuMemcpyDtoD, 3020, FC_PROC_ANY, cuMemcpyDtoD_v2) \
    P(cuMemcpyDtoD, 7000, FC_PROC_PTDS, cuMemcpyDtoD_v2_ptds) \
    P(cuMemcpyDtoDAsync, 3020, FC_PROC_ANY, cuMemcpyDtoDAsync_v2) \
    P(cuMemcpyDtoDAsync, 7000, FC_PROC_PTDS, cuMemcpyDtoDAsync_v2_ptsz) \
    P(cuMemcpyDtoH, 2000, FC_PROC_ANY, cuMemcpyDtoH) \
    P(cuMemcpyDtoH, 3020, FC_PROC_ANY, cuMemcpyDtoH_v2) \
    P(cuMemcpyDtoH, 7000, FC_PROC_PTDS, cuMemcpyDtoH_v2_ptds) \
    P(cuMemcpyDtoHAsync, 3020, FC_PROC_ANY, cuMemcpyDtoHAsync_v2) \
    P(cuMemcpyDtoHAsync, 7000, FC_PROC_PTDS, cuMemcpyDtoHAsync_v2_ptsz) \
    P(cuMemcpyHtoD, 2000, FC_PROC_ANY, cuMemcpyHtoD) \
    P(cuMemcpyHtoD, 3020, FC_PROC_ANY, cuMemcpyHtoD_v2) \
    P(cuMemcpyHtoD, 7000, FC_PROC_PTDS, cuMemcpyHtoD_v2_ptds) \
    P(cuMemcpyHtoDAsync, 3020, FC_PROC_ANY, cuMemcpyHtoDAsync_v2) \
    P(cuMemcpyHtoDAsync, 7000, FC_PROC_PTDS, cuMemcpyHtoDAsync_v2_ptsz) \
    P(cuMemsetD16, 3020, FC_PROC_ANY, cuMemsetD16_v2) \
    P(cuMemsetD16, 7000, FC_PROC_PTDS, cuMemsetD16_v2_ptds) \
    P(cuMemsetD16Async, 3020, FC_PROC_ANY, cuMemsetD16Async) \
    P(cuMemsetD16Async, 7000, FC_PROC_PTDS, cuMemsetD16Async_ptsz) \
    P(cuMemsetD32, 2000, FC_PROC_ANY, cuMemsetD32) \
    P(cuMemsetD32, 3020, FC_PROC_ANY, cuMemsetD32_v2) \
    P(cuMemsetD32, 7000, FC_PROC_PTDS, cuMemsetD32_v2_ptds) \
    P(cuMemsetD32Async, 3020, FC_PROC_ANY, cuMemsetD32Async) \
    P(cuMemsetD32Async, 7000, FC_PROC_PTDS, cuMemsetD32Async_ptsz) \
    P(cuMemsetD8, 2000, FC_PROC_ANY, cuMemsetD8) \
    P(cuMemsetD8, 3020, FC_PROC_ANY, cuMemsetD8_v2) \
    P(cuMemsetD8, 7000, FC_PROC_PTDS, cuMemsetD8_v2_ptds) \
    P(cuMemsetD8Async, 3020, FC_PROC_ANY, cuMemsetD8Async) \
    P(cuMemsetD8Async, 7000, FC_PROC_PTDS, cuMemsetD8Async_ptsz) \
    P(cuMipmappedArrayCreate, 5000, FC_PROC_ANY, cuMipmappedArrayCreate) \
    P(cuMipmappedArrayDestroy, 5000, FC_PROC_ANY, cuMipmappedArrayDestroy) \
    P(cuMipmappedArrayGetMemoryRequirements, 11060, FC_PROC_ANY, cuMipmappedArrayGetMemoryRequirements) \
    P(cuModuleGetFunction, 2000, FC_PROC_ANY, cuModuleGetFunction) \
    P(cuModuleGetLoadingMode, 11070, FC_PROC_ANY, cuModuleGetLoadingMode) \
    P(cuModuleLoad, 2000, FC_PROC_ANY, cuModuleLoad) \
    P(cuModuleLoadData, 2000, FC_PROC_ANY, cuModuleLoadData) \
    P(cuModuleLoadDataEx, 2010, FC_PROC_ANY, cuModuleLoadDataEx) \
    P(cuModuleLoadFatBinary, 2000, FC_PROC_ANY, cuModuleLoadFatBinary) \
    P(cuModuleUnload, 2000, FC_PROC_ANY, cuModuleUnload) \
    P(cuPointerGetAttribute, 4000, FC_PROC_ANY, cuPointerGetAttribute) \
    P(cuPointerGetAttributes, 7000, FC_PROC_ANY, cuPointerGetAttributes) \
    P(cuStreamBeginCapture, 10010, FC_PROC_ANY, cuStreamBeginCapture_v2) \
    P(cuStreamCreate, 2000, FC_PROC_ANY, cuStreamCreate) \
    P(cuStreamCreateWithPriority, 5050, FC_PROC_ANY, cuStreamCreateWithPriority) \
    P(cuStreamDestroy, 2000, FC_PROC_ANY, cuStreamDestroy) \
    P(cuStreamDestroy, 4000, FC_PROC_ANY, cuStreamDestroy_v2) \
    P(cuStreamEndCapture, 10000, FC_PROC_ANY, cuStreamEndCapture) \
    P(cuStreamGetCaptureInfo, 11030, FC_PROC_ANY, cuStreamGetCaptureInfo_v2) \
    P(cuStreamGetCtx, 9020, FC_PROC_ANY, cuStreamGetCtx) \
    P(cuStreamGetCtx, 9020, FC_PROC_PTDS, cuStreamGetCtx_ptsz) \
    P(cuStreamGetDevice, 12080, FC_PROC_ANY, cuStreamGetDevice) \
    P(cuStreamGetDevice, 12080, FC_PROC_PTDS, cuStreamGetDevice_ptsz) \
    P(cuStreamIsCapturing, 10000, FC_PROC_ANY, cuStreamIsCapturing) \
    P(cuStreamQuery, 2000, FC_PROC_ANY, cuStreamQuery) \
    P(cuStreamQuery, 7000, FC_PROC_PTDS, cuStreamQuery_ptsz) \
    P(cuStreamSynchronize, 2000, FC_PROC_ANY, cuStreamSynchronize) \
    P(cuStreamSynchronize, 7000, FC_PROC_PTDS, cuStreamSynchronize_ptsz)

#define FC_PROC_ROW(base, version, cls, fn) { #base, version, cls, (void *)fn },
static const fc_proc g_procs[] = { FC_PROCS(FC_PROC_ROW) };
#define FC_NPROCS (sizeof g_procs / sizeof g_procs[0])

static pthread_once_t g_checked = PTHREAD_ONCE_INIT;

/* The bisection below is only right on a sorted table: refuse to run on
 * an unsorted one rather than answer NOT_FOUND at random. */
static void check_sorted(void)
{
    for (size_t i = 1; i < FC_NPROCS; i++)
        if (strcmp(g_procs[i - 1].base, g_procs[i].base) > 0) {
            fprintf(stderr, "fakecuda: proc table unsorted at %s\n", g_procs[i].base);
            abort();
        }
}

/* Index of the first row whose base is >= name. */
static size_t lower_bound(const char *name)
{
    size_t lo = 0, hi = FC_NPROCS;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(g_procs[mid].base, name) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Returns the query result; *pfn is NULL unless it is SUCCESS. */
static CUdriverProcAddressQueryResult lookup(const char *symbol, void **pfn, int version, cuuint64_t flags)
{
    pthread_once(&g_checked, check_sorted);
    const fc_proc *best = NULL, *best_pt = NULL;
    bool known = false;
    for (size_t i = lower_bound(symbol); i < FC_NPROCS && !strcmp(g_procs[i].base, symbol); i++) {
        const fc_proc *p = &g_procs[i];
        known = true;
        if (p->version > version)
            continue;
        const fc_proc **slot = p->cls == FC_PROC_PTDS ? &best_pt : &best;
        if (!*slot || p->version > (*slot)->version)
            *slot = p;
    }
    if ((flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) && best_pt)
        best = best_pt;
    *pfn = best ? best->fn : NULL;
    return best ? CU_GET_PROC_ADDRESS_SUCCESS
         : known ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
}

/* Works before cuInit, as cudart relies on. */
CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                             CUdriverProcAddressQueryResult *symbolStatus)
{
    const cuuint64_t known = CU_GET_PROC_ADDRESS_LEGACY_STREAM | CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;
    if (!symbol || !pfn || (flags & ~known) || cudaVersion > FC_DRIVER_VERSION)
        return CUDA_ERROR_INVALID_VALUE;
    CUdriverProcAddressQueryResult st = lookup(symbol, pfn, cudaVersion, flags);
    if (symbolStatus)
        *symbolStatus = st;
    return CUDA_SUCCESS;
}

CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags)
{
    CUdriverProcAddressQueryResult st = CU_GET_PROC_ADDRESS_SUCCESS;
    CUresult rc = cuGetProcAddress_v2(symbol, pfn, cudaVersion, flags, &st);
    return rc == CUDA_SUCCESS && st != CU_GET_PROC_ADDRESS_SUCCESS ? CUDA_ERROR_NOT_FOUND : rc;
}
