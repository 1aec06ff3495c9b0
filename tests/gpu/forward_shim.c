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
 * FORWARD_CODE_LINES=N and FORWARD_DATA_LINES=N (read once, at load) make
 * each forwarded cuMemAlloc_v2 and cuMemFree_v2 run N 64-byte lines of code
 * of its own, or touch N 64-byte lines of data of its own (half before the
 * call, half after), as a shim's bookkeeping does: what lines a real
 * driver has evicted between two calls cost a pair, against the forwarder
 * without them (docs/benchmarks.md, "What a cold line costs a pair").
 *
 *   bench_pairs --preload forward_shim.so [...]
 *       (FORWARD_WORK_NS=N, FORWARD_CODE_LINES=N, FORWARD_DATA_LINES=N)
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

/* FORWARD_CODE_LINES: four sleds (before and after each of the two calls)
 * of SLED_LINES 64-byte lines, each line a jump to the next, then a
 * return; a half enters its sled SLED_LINES - N/2 lines in. */
#define SLED_LINES 64u /* the .rept count below */
#define SLED(name)                                                                 \
    __asm__(".pushsection .text." #name ",\"ax\",@progbits\n.p2align 12\n" #name \
            ":\n.rept 64\njmp 1f\n.p2align 6\n1:\n.endr\nret\n.popsection\n"); \
    extern const unsigned char name[] __attribute__((visibility("hidden")))
SLED(fwd_sled_alloc_before);
SLED(fwd_sled_alloc_after);
SLED(fwd_sled_free_before);
SLED(fwd_sled_free_after);
enum { ALLOC_BEFORE, ALLOC_AFTER, FREE_BEFORE, FREE_AFTER, HALVES };
static void (*sled_entry[HALVES])(void); /* NULL without FORWARD_CODE_LINES */

/* FORWARD_DATA_LINES: each thread's own HALVES x SLED_LINES lines, a byte of
 * each of the half's first N/2 incremented. */
static unsigned half_data_lines;
static _Thread_local unsigned char *data_lines;

static unsigned half_lines(const char *var)
{
    const char *s = getenv(var);
    unsigned long n = s ? strtoul(s, NULL, 10) / 2 : 0;
    return n > SLED_LINES ? SLED_LINES : (unsigned)n;
}

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
    unsigned code = half_lines("FORWARD_CODE_LINES");
    const unsigned char *sleds[HALVES] = {fwd_sled_alloc_before, fwd_sled_alloc_after,
                                          fwd_sled_free_before, fwd_sled_free_after};
    for (int h = 0; code && h < HALVES; h++)
        sled_entry[h] = (void (*)(void))(uintptr_t)(sleds[h] + (SLED_LINES - code) * 64u);
    half_data_lines = half_lines("FORWARD_DATA_LINES");
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

/* The code and data lines of one half (FORWARD_CODE_LINES, FORWARD_DATA_LINES). */
static void lines(int half)
{
    if (sled_entry[half])
        sled_entry[half]();
    if (!half_data_lines)
        return;
    if (!data_lines && !(data_lines = calloc(HALVES * SLED_LINES, 64)))
        return;
    volatile unsigned char *d = data_lines + (size_t)half * SLED_LINES * 64;
    for (unsigned i = 0; i < half_data_lines; i++)
        d[i * 64]++;
}

CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
{
    if (!next_alloc)
        return CUDA_ERROR_NOT_FOUND;
    work();
    lines(ALLOC_BEFORE);
    CUresult cr = next_alloc(dptr, bytesize);
    lines(ALLOC_AFTER);
    work();
    return cr;
}

CUresult cuMemFree_v2(CUdeviceptr dptr)
{
    if (!next_free)
        return CUDA_ERROR_NOT_FOUND;
    work();
    lines(FREE_BEFORE);
    CUresult cr = next_free(dptr);
    lines(FREE_AFTER);
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
