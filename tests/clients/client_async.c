/*
 * client_async.c — a client for tests/test_async.c: what the shim
 * remembers between stream-ordered allocations (the device's current
 * pool, whether any stream capture is open) must follow every change the
 * program makes, run under the preload shim with a budget of 1 GiB.
 *
 *   client_async CASE
 *   stdout: one line "path=CASE key=value ...", codes in decimal, ending
 *           with the test driver's own view of device 0: peak=B used=B
 *           (fakecuda_*; -1 on another driver)
 *   exit:   0 ran (whatever the driver answered), 2 usage, 3 setup failed
 *
 * CLIENT_API=cudart reaches the driver as cudart does (dlsym of
 * cuGetProcAddress_v2, which is asked for itself and then for every entry
 * point by base name and version); the default is linked calls.
 *
 * Each case first allocates 64 MiB from the device's current pool and
 * frees it (the pool keeps it), so the shim has seen the pool and no
 * capture; then the program changes something, 600 MiB more come from
 * the stream-ordered allocator, and 600 MiB plain must be refused:
 *   set_pool        a created pool made current (cuDeviceSetMemPool)
 *   destroy_current a created pool made current and used, then destroyed
 *                   (the default is current again) and another created,
 *                   often at the same address (same= says)
 *   capture         a stream captured: the 600 MiB are a graph's node
 *   capture_unmatched the same, after a cuStreamEndCapture on a stream
 *                   that is not capturing (refused by the driver)
 *   many_pools      64 created pools, each made current, used, synchronised
 *                   (it gives its memory back) and read by cuMemGetInfo
 *                   (each reserves nothing now; all stay alive); then a
 *                   65th made current
 * A capture case then ends the capture and destroys the graph, and 600 MiB
 * plain fit again (after_rc=).
 *
 *   seventy_pools   70 created pools, 15 MiB from each (cuMemAllocFromPoolAsync,
 *                   kept): made= pools made, ok= allocations served,
 *                   refused= refused with CUDA_ERROR_OUT_OF_MEMORY, other_rc=
 *                   the last other code; then every pool destroyed with its
 *                   block out (destroy_rc=), 600 MiB plain (held_rc=), every
 *                   block freed and the stream synchronised (free_rc=), and
 *                   900 MiB plain (after_rc=)
 *
 *   other_device    (two devices, budgets 0=1GiB,1=256MiB) a stream made in
 *                   device 1's context, used while device 0's is current:
 *                   200 MiB on it (first_rc=), 100 MiB more (more_rc=, over
 *                   device 1's budget), then 900 MiB plain on device 0
 *                   (plain_rc=); peak1= is device 1's peak
 */
#include <cuda.h>
#include <cudaTypedefs.h>
#include <dlfcn.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cudart_way.h"

#define MiB (1024ull * 1024ull)

/* X(field, type, symbol for linking, base name, version) */
#define ASYNC_SYMS(X)                                                                              \
    X(init, PFN_cuInit_v2000, cuInit, "cuInit", 2000)                                              \
    X(device_get, PFN_cuDeviceGet_v2000, cuDeviceGet, "cuDeviceGet", 2000)                         \
    X(primary_retain, PFN_cuDevicePrimaryCtxRetain_v7000, cuDevicePrimaryCtxRetain,                \
      "cuDevicePrimaryCtxRetain", 7000)                                                            \
    X(ctx_set_current, PFN_cuCtxSetCurrent_v4000, cuCtxSetCurrent, "cuCtxSetCurrent", 4000)        \
    X(stream_create, PFN_cuStreamCreate_v2000, cuStreamCreate, "cuStreamCreate", 2000)             \
    X(stream_sync, PFN_cuStreamSynchronize_v2000, cuStreamSynchronize, "cuStreamSynchronize",      \
      2000)                                                                                        \
    X(mem_alloc, PFN_cuMemAlloc_v3020, cuMemAlloc_v2, "cuMemAlloc", 3020)                          \
    X(mem_free, PFN_cuMemFree_v3020, cuMemFree_v2, "cuMemFree", 3020)                              \
    X(alloc_async, PFN_cuMemAllocAsync_v11020, cuMemAllocAsync, "cuMemAllocAsync", 11020)          \
    X(free_async, PFN_cuMemFreeAsync_v11020, cuMemFreeAsync, "cuMemFreeAsync", 11020)              \
    X(alloc_from_pool, PFN_cuMemAllocFromPoolAsync_v11020, cuMemAllocFromPoolAsync,                \
      "cuMemAllocFromPoolAsync", 11020)                                                            \
    X(pool_create, PFN_cuMemPoolCreate_v11020, cuMemPoolCreate, "cuMemPoolCreate", 11020)          \
    X(pool_destroy, PFN_cuMemPoolDestroy_v11020, cuMemPoolDestroy, "cuMemPoolDestroy", 11020)      \
    X(set_pool, PFN_cuDeviceSetMemPool_v11020, cuDeviceSetMemPool, "cuDeviceSetMemPool", 11020)    \
    X(capture_begin, PFN_cuStreamBeginCapture_v10010, cuStreamBeginCapture_v2,                     \
      "cuStreamBeginCapture", 10010)                                                               \
    X(capture_end, PFN_cuStreamEndCapture_v10000, cuStreamEndCapture, "cuStreamEndCapture",        \
      10000)                                                                                       \
    X(graph_destroy, PFN_cuGraphDestroy_v10000, cuGraphDestroy, "cuGraphDestroy", 10000)      \
    X(mem_get_info, PFN_cuMemGetInfo_v3020, cuMemGetInfo_v2, "cuMemGetInfo", 3020)

static struct api {
#define ASYNC_FIELD_(field, type, abi, base, ver) type field;
    ASYNC_SYMS(ASYNC_FIELD_)
#undef ASYNC_FIELD_
} cu;

static void resolve_linked(void)
{
#define ASYNC_LINK_(field, type, abi, base, ver) cu.field = (type)&abi;
    ASYNC_SYMS(ASYNC_LINK_)
#undef ASYNC_LINK_
}

static void resolve_cudart(void)
{
    PFN_cuGetProcAddress_v12000 get = cudart_get_proc();
    if (!get) {
        fprintf(stderr, "client_async: no cuGetProcAddress\n");
        exit(3);
    }
#define ASYNC_PROC_(field, type, abi, base, ver)                                                   \
    if (!(cu.field = (type)by_proc(get, base, ver))) {                                             \
        fprintf(stderr, "client_async: cannot resolve %s (%d)\n", base, ver);                      \
        exit(3);                                                                                   \
    }
    ASYNC_SYMS(ASYNC_PROC_)
#undef ASYNC_PROC_
}

/* ------------------------------------------------------ the driver's view */

static long long driver_query_dev(const char *name, int device)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    size_t (*f)(int) = h ? (size_t(*)(int))dlsym(h, name) : NULL;
    long long v = f ? (long long)f(device) : -1;
    if (h)
        dlclose(h);
    return v;
}

static long long driver_query(const char *name)
{
    return driver_query_dev(name, 0);
}

static void finish(void)
{
    printf(" peak=%lld used=%lld\n", driver_query("fakecuda_peak_bytes"),
           driver_query("fakecuda_used_bytes"));
    fflush(stdout);
}

/* ------------------------------------------------------ the cases */

static CUdevice g_dev;
static CUstream g_stream;

static void setup(void)
{
    const char *how = getenv("CLIENT_API");
    CUcontext ctx;
    if (how && !strcmp(how, "cudart"))
        resolve_cudart();
    else
        resolve_linked();
    if (cu.init(0) || cu.device_get(&g_dev, 0) || cu.primary_retain(&ctx, g_dev) ||
        cu.ctx_set_current(ctx) || cu.stream_create(&g_stream, CU_STREAM_NON_BLOCKING)) {
        fprintf(stderr, "client_async: no device 0 context and stream\n");
        exit(3);
    }
}

/* 64 MiB from the current pool, freed: the pool keeps them. */
static CUresult first_use(void)
{
    CUdeviceptr p = 0;
    CUresult rc = cu.alloc_async(&p, 64 * MiB, g_stream);
    if (rc == CUDA_SUCCESS)
        rc = cu.free_async(p, g_stream);
    return rc;
}

static CUresult made_pool(CUmemoryPool *pool)
{
    CUmemPoolProps props = {.allocType = CU_MEM_ALLOCATION_TYPE_PINNED,
                            .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = g_dev}};
    return cu.pool_create(pool, &props);
}

/* `mib` MiB plain, freed at once: its code. */
static CUresult plain_mib(size_t mib)
{
    CUdeviceptr p = 0;
    CUresult rc = cu.mem_alloc(&p, mib * MiB);
    if (rc == CUDA_SUCCESS)
        cu.mem_free(p);
    return rc;
}

/* The 600 MiB from the stream-ordered allocator, then 600 MiB plain. */
static void grow_then_plain(const char *name, CUresult first, CUresult change, int same)
{
    CUdeviceptr p = 0;
    CUresult grow = cu.alloc_async(&p, 600 * MiB, g_stream);
    CUresult plain = plain_mib(600);
    printf("path=%s first_rc=%d change_rc=%d grow_rc=%d plain_rc=%d same=%d", name, first, change,
           grow, plain, same);
    finish();
}

static void case_set_pool(void)
{
    CUmemoryPool pool = NULL;
    CUresult first = first_use();
    CUresult change = made_pool(&pool);
    if (change == CUDA_SUCCESS)
        change = cu.set_pool(g_dev, pool);
    grow_then_plain("set_pool", first, change, 0);
}

static void case_destroy_current(void)
{
    CUmemoryPool pool = NULL, next = NULL;
    CUresult change = made_pool(&pool);
    if (change == CUDA_SUCCESS)
        change = cu.set_pool(g_dev, pool);
    CUresult first = change ? change : first_use(); /* from the created pool */
    if (first == CUDA_SUCCESS)
        first = cu.stream_sync(g_stream); /* which gives its memory back */
    if (change == CUDA_SUCCESS)
        change = cu.pool_destroy(pool);
    if (change == CUDA_SUCCESS)
        change = made_pool(&next);
    grow_then_plain("destroy_current", first, change, next == pool);
}

/* 64 pools that reserve nothing, alive, then a 65th made current. */
static void case_many_pools(void)
{
    CUmemoryPool pool = NULL;
    CUresult first = CUDA_SUCCESS, change = CUDA_SUCCESS;
    size_t free_b, total_b;
    for (int i = 0; i < 64 && first == CUDA_SUCCESS && change == CUDA_SUCCESS; i++) {
        change = made_pool(&pool);
        if (change == CUDA_SUCCESS)
            change = cu.set_pool(g_dev, pool);
        first = change ? change : first_use();
        if (first == CUDA_SUCCESS)
            first = cu.stream_sync(g_stream);
        if (first == CUDA_SUCCESS)
            first = cu.mem_get_info(&free_b, &total_b);
    }
    if (change == CUDA_SUCCESS)
        change = made_pool(&pool);
    if (change == CUDA_SUCCESS)
        change = cu.set_pool(g_dev, pool);
    grow_then_plain("many_pools", first, change, 0);
}

#define SEVENTY 70

/* More pools hold memory than the shim once had places for (64). */
static void case_seventy_pools(void)
{
    static CUmemoryPool pool[SEVENTY];
    static CUdeviceptr p[SEVENTY];
    int made = 0, ok = 0, refused = 0;
    CUresult other = CUDA_SUCCESS, destroy = CUDA_SUCCESS, freed = CUDA_SUCCESS;
    for (; made < SEVENTY && made_pool(&pool[made]) == CUDA_SUCCESS; made++) {
        CUresult rc = cu.alloc_from_pool(&p[made], 15 * MiB, pool[made], g_stream);
        ok += rc == CUDA_SUCCESS;
        refused += rc == CUDA_ERROR_OUT_OF_MEMORY;
        if (rc != CUDA_SUCCESS && rc != CUDA_ERROR_OUT_OF_MEMORY)
            other = rc;
    }
    for (int i = 0; i < made && destroy == CUDA_SUCCESS; i++)
        destroy = cu.pool_destroy(pool[i]);
    CUresult held = plain_mib(600);
    for (int i = 0; i < made && freed == CUDA_SUCCESS; i++)
        if (p[i])
            freed = cu.free_async(p[i], g_stream);
    if (freed == CUDA_SUCCESS)
        freed = cu.stream_sync(g_stream);
    printf("path=seventy_pools made=%d ok=%d refused=%d other_rc=%d destroy_rc=%d held_rc=%d "
           "free_rc=%d after_rc=%d",
           made, ok, refused, other, destroy, held, freed, plain_mib(900));
    finish();
}

/* Begins a capture of g_stream; `unmatched` first ends one on a stream
 * that is not capturing. */
static void case_capture(const char *name, int unmatched)
{
    CUstream other = NULL;
    CUgraph graph = NULL, none = NULL;
    CUdeviceptr p = 0;
    CUresult first = first_use();
    CUresult change = cu.capture_begin(g_stream, CU_STREAM_CAPTURE_MODE_RELAXED);
    CUresult end_other = CUDA_SUCCESS;
    if (unmatched && cu.stream_create(&other, CU_STREAM_NON_BLOCKING) == CUDA_SUCCESS)
        end_other = cu.capture_end(other, &none);
    CUresult grow = cu.alloc_async(&p, 600 * MiB, g_stream);
    CUresult plain = plain_mib(600);
    CUresult end = cu.capture_end(g_stream, &graph);
    CUresult destroy = end ? end : cu.graph_destroy(graph);
    CUresult after = plain_mib(600);
    printf("path=%s first_rc=%d change_rc=%d end_other_rc=%d grow_rc=%d plain_rc=%d end_rc=%d "
           "destroy_rc=%d after_rc=%d",
           name, first, change, end_other, grow, plain, end, destroy, after);
    finish();
}

/* A stream of device 1's primary context, made while it was current;
 * device 0's context is current again after. */
static CUresult other_stream(CUstream *stream)
{
    CUdevice dev1;
    CUcontext ctx0, ctx1;
    CUresult rc = cu.device_get(&dev1, 1);
    if (rc == CUDA_SUCCESS)
        rc = cu.primary_retain(&ctx1, dev1);
    if (rc == CUDA_SUCCESS)
        rc = cu.ctx_set_current(ctx1);
    if (rc == CUDA_SUCCESS)
        rc = cu.stream_create(stream, CU_STREAM_NON_BLOCKING);
    if (rc == CUDA_SUCCESS)
        rc = cu.primary_retain(&ctx0, g_dev); /* retained twice: released never */
    if (rc == CUDA_SUCCESS)
        rc = cu.ctx_set_current(ctx0);
    return rc;
}

static void case_other_device(void)
{
    CUstream s1 = NULL;
    CUdeviceptr a = 0, b = 0, p = 0;
    CUresult change = other_stream(&s1);
    CUresult first = change ? change : cu.alloc_async(&a, 200 * MiB, s1);
    CUresult more = change ? change : cu.alloc_async(&b, 100 * MiB, s1);
    CUresult plain = cu.mem_alloc(&p, 900 * MiB);
    printf("path=other_device change_rc=%d first_rc=%d more_rc=%d plain_rc=%d peak1=%lld",
           change, first, more, plain, driver_query_dev("fakecuda_peak_bytes", 1));
    finish();
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: client_async set_pool|destroy_current|capture|"
                        "capture_unmatched|many_pools|other_device|seventy_pools\n");
        return 2;
    }
    const char *c = argv[1];
    setup();
    if (!strcmp(c, "set_pool"))
        case_set_pool();
    else if (!strcmp(c, "destroy_current"))
        case_destroy_current();
    else if (!strcmp(c, "capture"))
        case_capture(c, 0);
    else if (!strcmp(c, "capture_unmatched"))
        case_capture(c, 1);
    else if (!strcmp(c, "many_pools"))
        case_many_pools();
    else if (!strcmp(c, "other_device"))
        case_other_device();
    else if (!strcmp(c, "seventy_pools"))
        case_seventy_pools();
    else {
        fprintf(stderr, "client_async: unknown case %s\n", c);
        return 2;
    }
    return 0;
}
