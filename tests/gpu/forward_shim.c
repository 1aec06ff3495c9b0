/*
 * forward_shim.c — the least an LD_PRELOAD interposer can be, as a control
 * for bench_pairs: cuMemAlloc_v2, cuMemFree_v2, cuMemAllocAsync and
 * cuMemFreeAsync forwarded to the next library's, with nothing of its own.
 * What it costs over the real driver is what any interposer pays before it
 * does any work (docs/benchmarks.md, "What any interposer pays").
 *
 * FORWARD_WORK_NS=N (read once, at load) adds busy work of N/2 ns before
 * and N/2 after each forwarded call, so N ns lie between two driver calls
 * and a pair costs 2N more: the window that a shim's own work (recording an
 * allocation, finding a free's record) opens between calls, in which
 * another thread may take the driver's lock. The work is a loop
 * calibrated at load against CLOCK_MONOTONIC; over the null driver
 * (bench_pairs --hooked) N = 50, 100, 200 added +105, +205, +419 ns a pair
 * on the developers' VM.
 *
 *   bench_pairs --preload forward_shim.so [...]      (FORWARD_WORK_NS=N)
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include <cuda.h>

static CUresult (*next_alloc)(CUdeviceptr *, size_t);
static CUresult (*next_free)(CUdeviceptr);
static CUresult (*next_alloc_async)(CUdeviceptr *, size_t, CUstream);
static CUresult (*next_free_async)(CUdeviceptr, CUstream);
static uint64_t half_work_loops;
static volatile uint64_t sink;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void spin(uint64_t loops)
{
    for (uint64_t i = 0; i < loops; i++)
        sink = i;
}

__attribute__((constructor)) static void forward_init(void)
{
    next_alloc = (CUresult(*)(CUdeviceptr *, size_t))dlsym(RTLD_NEXT, "cuMemAlloc_v2");
    next_free = (CUresult(*)(CUdeviceptr))dlsym(RTLD_NEXT, "cuMemFree_v2");
    next_alloc_async =
        (CUresult(*)(CUdeviceptr *, size_t, CUstream))dlsym(RTLD_NEXT, "cuMemAllocAsync");
    next_free_async = (CUresult(*)(CUdeviceptr, CUstream))dlsym(RTLD_NEXT, "cuMemFreeAsync");
    const char *w = getenv("FORWARD_WORK_NS");
    uint64_t half_ns = w ? strtoull(w, NULL, 10) / 2 : 0;
    if (!half_ns)
        return;
    enum { CALIBRATION_LOOPS = 1000000, CALIBRATIONS = 9 };
    uint64_t took = UINT64_MAX; /* the quickest of several: one preempted reads long */
    for (int i = 0; i < CALIBRATIONS; i++) {
        uint64_t t0 = now_ns();
        spin(CALIBRATION_LOOPS);
        uint64_t t = now_ns() - t0;
        took = t < took ? t : took;
    }
    half_work_loops = took ? half_ns * CALIBRATION_LOOPS / took : 0;
}

static void work(void)
{
    spin(half_work_loops);
}

CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
{
    if (!next_alloc)
        return CUDA_ERROR_NOT_FOUND;
    work();
    CUresult cr = next_alloc(dptr, bytesize);
    work();
    return cr;
}

CUresult cuMemFree_v2(CUdeviceptr dptr)
{
    if (!next_free)
        return CUDA_ERROR_NOT_FOUND;
    work();
    CUresult cr = next_free(dptr);
    work();
    return cr;
}

CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream stream)
{
    if (!next_alloc_async)
        return CUDA_ERROR_NOT_FOUND;
    work();
    CUresult cr = next_alloc_async(dptr, bytesize, stream);
    work();
    return cr;
}

CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream stream)
{
    if (!next_free_async)
        return CUDA_ERROR_NOT_FOUND;
    work();
    CUresult cr = next_free_async(dptr, stream);
    work();
    return cr;
}
