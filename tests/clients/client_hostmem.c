/*
 * client_hostmem.c — a client for tests/test_hostmem.c: 64 KiB allocations
 * through the linked cuMemAlloc_v2 while the process's host memory runs
 * out, run under the preload shim with a budget.
 *
 *   client_hostmem N [vmm|pitch|array|async]
 *   vmm: cuMemCreate of 2 MiB handles (released with cuMemRelease) instead
 *   pitch: cuMemAllocPitch_v2 of 64 KiB rows, one row each, instead
 *   array: cuArrayCreate_v2 of 128 x 128 floats (destroyed with cuArrayDestroy) instead
 *   async: cuMemAllocAsync of 64 KiB on the null stream (cuMemFreeAsync) instead
 *   stdout: "path=hostmem ok=K refused=R dangling=D other_rc=O refused_calls=C
 *            free_failed=F free_before=B free_after=A live_before=L
 *            live_after=M"
 *   exit:   0 ran, 2 usage, 3 setup failed
 *
 * After one allocation and free (the shim's per-thread state is made), N
 * allocations are held while every aligned_alloc of 1 KiB or more fails:
 * the ledger takes its records 64 at a time so, and nothing else on this
 * path does (the test driver backs allocations of 64 KiB with mmap, and
 * grows its own tables with calloc, which would end it). Then all are freed,
 * and cuMemGetInfo's free memory (the budget's view) and the test driver's
 * count of live allocations are read again: what a refused allocation
 * took must be back in both, and a refused call must leave the caller no
 * pointer or handle (D counts those that did). Sanitizer builds own aligned_alloc: there this
 * client only says so (exit 2), and the test is not built.
 */
#include <cuda.h>
#include <dlfcn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
int main(void)
{
    fputs("client_hostmem: replaces aligned_alloc, which a sanitizer owns\n", stderr);
    return 2;
}
#else

#define MAX_N 4096
#define BIG 1024 /* bytes from which a host allocation fails while armed */
#define SIZE (64u << 10)
#define VMM_SIZE (2u << 20) /* the test driver's allocation granularity */

static bool armed;
static long refused_calls;
void *__libc_memalign(size_t align, size_t size);

void *aligned_alloc(size_t align, size_t size)
{
    if (armed && size >= BIG) {
        refused_calls++;
        return NULL;
    }
    return __libc_memalign(align, size);
}

static long long live_allocs(void)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    size_t (*f)(int) = h ? (size_t(*)(int))dlsym(h, "fakecuda_live_allocs") : NULL;
    long long v = f ? (long long)f(0) : -1;
    if (h)
        dlclose(h);
    return v;
}

/* One allocation along the path (a device pointer, a VMM handle or an
 * array), and its free. */
static bool vmm, pitch, array, async;

static CUresult alloc_one(unsigned long long *out)
{
    if (array) {
        CUDA_ARRAY_DESCRIPTOR d = {.Width = 128, .Height = 128, .Format = CU_AD_FORMAT_FLOAT,
                                   .NumChannels = 1};
        CUarray a = NULL;
        CUresult rc = cuArrayCreate(&a, &d);
        *out = (uintptr_t)a;
        return rc;
    }
    if (!vmm) {
        CUdeviceptr p = 0;
        size_t row;
        CUresult rc = pitch   ? cuMemAllocPitch(&p, &row, SIZE, 1, 4)
                      : async ? cuMemAllocAsync(&p, SIZE, NULL)
                              : cuMemAlloc(&p, SIZE);
        *out = p;
        return rc;
    }
    CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = 0}};
    CUmemGenericAllocationHandle h = 0;
    CUresult rc = cuMemCreate(&h, VMM_SIZE, &prop, 0);
    *out = h;
    return rc;
}

static CUresult free_one(unsigned long long v)
{
    if (array)
        return cuArrayDestroy((CUarray)(uintptr_t)v);
    if (async)
        return cuMemFreeAsync(v, NULL);
    return vmm ? cuMemRelease(v) : cuMemFree(v);
}

int main(int argc, char **argv)
{
    int n = argc >= 2 ? atoi(argv[1]) : 0;
    vmm = argc == 3 && !strcmp(argv[2], "vmm");
    pitch = argc == 3 && !strcmp(argv[2], "pitch");
    array = argc == 3 && !strcmp(argv[2], "array");
    async = argc == 3 && !strcmp(argv[2], "async");
    if (n <= 0 || n > MAX_N || argc > 3 || (argc == 3 && !vmm && !pitch && !array && !async)) {
        fprintf(stderr, "usage: client_hostmem N (1..%d) [vmm|pitch|array|async]\n", MAX_N);
        return 2;
    }
    static unsigned long long held[MAX_N];
    CUdevice dev;
    CUcontext ctx;
    unsigned long long p;
    size_t free_before, free_after, total;
    if (cuInit(0) || cuDeviceGet(&dev, 0) || cuDevicePrimaryCtxRetain(&ctx, dev) ||
        cuCtxSetCurrent(ctx) || alloc_one(&p) || free_one(p) || cuCtxSynchronize() ||
        cuMemGetInfo(&free_before, &total))
        return 3;
    long long live_before = live_allocs();
    int ok = 0, refused = 0, dangling = 0, other = 0, free_failed = 0;
    armed = true;
    for (int i = 0; i < n; i++) {
        CUresult rc = alloc_one(&p);
        if (rc == CUDA_SUCCESS)
            held[ok++] = p;
        else if (rc == CUDA_ERROR_OUT_OF_MEMORY) {
            refused++;
            dangling += p != 0;
        }
        else
            other++;
    }
    armed = false;
    for (int i = 0; i < ok; i++)
        free_failed += free_one(held[i]) != CUDA_SUCCESS;
    if (cuCtxSynchronize() || cuMemGetInfo(&free_after, &total))
        return 3;
    printf("path=hostmem ok=%d refused=%d dangling=%d other_rc=%d refused_calls=%ld free_failed=%d "
           "free_before=%zu free_after=%zu live_before=%lld live_after=%lld\n",
           ok, refused, dangling, other, refused_calls, free_failed, free_before, free_after,
           live_before, live_allocs());
    return 0;
}
#endif
