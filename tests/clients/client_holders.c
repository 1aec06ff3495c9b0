/*
 * client_holders.c — a client for tests/test_truth.c: memory the driver's
 * objects hold (contexts and their limits, stream-ordered pools, arrays,
 * graph allocation nodes), and whether it is given back when the object
 * goes, run under the preload shim with a budget. Memory the device takes
 * without an allocation call in a running context (VMM, limits, modules,
 * the first allocation, free ordering, what is reported) is
 * client_truth.c's.
 *
 *   client_holders CASE
 *   stdout: one line "path=CASE key=value ...", numbers in decimal, ending
 *           with the test driver's own view of device 0:
 *           peak=B used=B implicit=B (fakecuda_*; -1 on another driver)
 *   exit:   0 ran (whatever the driver answered), 2 usage, 3 setup failed
 *
 * Every call goes through linked driver symbols, as a program built with
 * -lcuda makes them; the shim must catch them. The driver's own view is
 * read through dlsym on libcuda.so.1, which the shim cannot rewrite.
 *
 * Cases (sizes are fixed: the test sets budget and driver knobs):
 *   ctx_destroy[_v1] 600 MiB in a created context, cuCtxDestroy_v2 (_v1:
 *               the legacy cuCtxDestroy), then 600 MiB in the primary
 *   array_ctx_destroy a 600 MiB array in a created context, cuCtxDestroy,
 *               then 600 MiB in the primary
 *   array_reset a 600 MiB array in the primary context,
 *               cuDevicePrimaryCtxReset, then 600 MiB in the primary
 *   release[_array] 600 MiB (an array) in the primary context, its last
 *               cuDevicePrimaryCtxRelease, then retained again and 600 MiB
 *   sweep_reuse a 64 MiB allocation in a created context, then cuCtxDestroy
 *               while another thread, in the primary, is handed the same
 *               address (the test makes cuPointerGetAttribute slow, so the
 *               destroy's sweep is still deciding); then 128 MiB more
 *               (tried up to 4 times until the address is handed out again)
 *   sweep_cover two 64 KiB blocks in a created context, then cuCtxDestroy
 *               while another thread, in the primary, takes 128 KiB that
 *               cover one of them without starting at it (tried up to 8
 *               times); lost= what cuMemGetInfo's free lost over it all
 *   release_race 600 MiB in the primary context, its last
 *               cuDevicePrimaryCtxRelease while another thread retains it
 *               again at once (the test makes the release slow to return),
 *               then 600 MiB in the primary
 *   limit_race  two threads set the primary context's malloc heap to 600 MiB
 *               at once (the test makes cuCtxSetLimit slow), then 64 MiB
 *               allocations until refused
 *   limit_other_ctx a 600 MiB malloc heap in the primary context, a created
 *               context destroyed, then 600 MiB in the primary
 *   mipmap_layered a layered mipmapped array (64 layers of 512 x 512 float4,
 *               every level: 341 MiB), then 16 MiB allocations until refused
 *   array_deferred, array_sparse, mipmap_deferred a 600 MiB array that
 *               holds no memory of its own (CUDA_ARRAY3D_DEFERRED_MAPPING or
 *               _SPARSE; a mipmapped array of one level), then 600 MiB plain;
 *               600 MiB of cuMemCreate mapped into it (cuMemMapArrayAsync)
 *               and released at once, 600 MiB plain; the array unmapped,
 *               600 MiB plain; mapped again, released, the array destroyed,
 *               600 MiB plain
 *   array_mapped_ctx a 600 MiB deferred-mapping array in a created context,
 *               600 MiB of cuMemCreate mapped into it and released, 600 MiB
 *               plain; cuCtxDestroy, then 600 MiB plain in the primary
 *   graph_node[_v1] a 600 MiB allocation node added with cuGraphAddNode (_v1:
 *               the CUDA 12.2 ABI without edge data), then 600 MiB plain,
 *               then the graph destroyed and 600 MiB plain again
 *   pool_other_device, pool_default_other_device (two devices) 600 MiB
 *               plain on device 1; then, device 0 current, 600 MiB from a
 *               pool on device 1 (created; or its default pool), then
 *               600 MiB plain on device 0; the line adds peak1= (device 1)
 *   pool_host   600 MiB from a pool located on the host, 600 MiB plain,
 *               then the pool's allocation freed
 *   pool_destroy 600 MiB from a created pool, cuMemPoolDestroy with it still
 *               out, 600 MiB plain; then its free, 600 MiB plain again
 *   pool_sync_race 64 MiB from the default pool; another thread's
 *               cuMemGetInfo reads the pool (the test makes that slow)
 *               while 600 MiB more come from it; then 600 MiB plain
 */
#include <cuda.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "truth_common.h"

#define KiB 1024ull
#define MiB (1024ull * KiB)
#define GiB (1024ull * MiB)

/* cuda.h renames cuCtxDestroy to the _v2 ABI; the legacy one is bound here. */
CUresult CUDAAPI truth_ctx_destroy_v1(CUcontext ctx) __asm__("cuCtxDestroy");
/* cuda.h renames cuGraphAddNode to _v2 (edge data); the CUDA 12.2 ABI. */
CUresult CUDAAPI truth_graph_add_node_v1(CUgraphNode *node, CUgraph graph,
                                         const CUgraphNode *deps, size_t ndeps,
                                         CUgraphNodeParams *params) __asm__("cuGraphAddNode");

static pthread_barrier_t g_start; /* the racing threads start together */

/* ------------------------------------------------------ destroyed contexts */

/* How the context goes. */
typedef enum { GO_DESTROY, GO_DESTROY_V1, GO_RESET, GO_RELEASE } go_t;

/* The primary context's last reference goes, and a new one is taken. */
static CUresult release_primary(void)
{
    CUresult rc = cuCtxSetCurrent(NULL);
    if (rc == CUDA_SUCCESS)
        rc = cuDevicePrimaryCtxRelease(g_dev);
    if (rc == CUDA_SUCCESS)
        rc = cuDevicePrimaryCtxRetain(&g_ctx, g_dev);
    return rc;
}

/* 600 MiB made in a context (created, or the primary for a reset or a release) as an
 * allocation or an array (16384 x 2400 texels of 4 floats), then the
 * context goes, then 600 MiB in the primary: what went must have given its
 * memory back. */
static void case_gone(const char *name, bool array, go_t how)
{
    const CUDA_ARRAY_DESCRIPTOR d = {.Width = 16384, .Height = 2400,
                                     .Format = CU_AD_FORMAT_FLOAT, .NumChannels = 4};
    CUcontext c = g_ctx;
    CUdeviceptr a = 0, b = 0;
    CUarray arr = NULL;
    bool primary = how == GO_RESET || how == GO_RELEASE;
    CUresult create = primary ? CUDA_SUCCESS : cuCtxCreate(&c, NULL, 0, g_dev);
    CUresult first = create != CUDA_SUCCESS ? create
                     : array                ? cuArrayCreate(&arr, &d)
                                            : cuMemAlloc(&a, 600 * MiB);
    CUresult destroy = create != CUDA_SUCCESS ? create
                       : how == GO_RESET      ? cuDevicePrimaryCtxReset(g_dev)
                       : how == GO_RELEASE    ? release_primary()
                       : how == GO_DESTROY_V1 ? truth_ctx_destroy_v1(c)
                                              : cuCtxDestroy(c);
    cuCtxSetCurrent(g_ctx);
    CUresult second = cuMemAlloc(&b, 600 * MiB);
    printf("path=%s create_rc=%d first_rc=%d destroy_rc=%d second_rc=%d", name, create, first,
           destroy, second);
    finish();
    if (second == CUDA_SUCCESS)
        cuMemFree(b);
}

static long long g_used_before; /* the driver's use before a context went */

/* Retains the primary context again as soon as the driver has freed what
 * it held, while the releasing thread's call has not returned yet. */
static void *retain_worker(void *arg)
{
    CUcontext c;
    while (driver_query("fakecuda_used_bytes") >= g_used_before)
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    *(CUresult *)arg = cuDevicePrimaryCtxRetain(&c, g_dev);
    return NULL;
}

static void case_release_race(void)
{
    CUdeviceptr a = 0, b = 0;
    CUresult retain = CUDA_ERROR_UNKNOWN;
    pthread_t t;
    CUresult first = cuMemAlloc(&a, 600 * MiB);
    g_used_before = driver_query("fakecuda_used_bytes");
    if (first != CUDA_SUCCESS || pthread_create(&t, NULL, retain_worker, &retain) != 0) {
        fprintf(stderr, "client_holders: release_race setup failed\n");
        exit(3);
    }
    CUresult release = cuCtxSetCurrent(NULL);
    if (release == CUDA_SUCCESS)
        release = cuDevicePrimaryCtxRelease(g_dev);
    pthread_join(t, NULL);
    cuCtxSetCurrent(g_ctx);
    CUresult second = cuMemAlloc(&b, 600 * MiB);
    printf("path=release_race first_rc=%d release_rc=%d retain_rc=%d second_rc=%d", first,
           release, retain, second);
    finish();
    if (second == CUDA_SUCCESS)
        cuMemFree(b);
}

/* One destroy raced by an allocation; true when it got the old address. */
static bool sweep_reuse_once(address_reuse_t *r, CUresult *destroy)
{
    CUcontext c;
    CUdeviceptr old = 0;
    pthread_t t;
    *r = (address_reuse_t){0};
    if (cuCtxCreate(&c, NULL, 0, g_dev) != CUDA_SUCCESS || cuMemAlloc(&old, 64 * MiB)) {
        fprintf(stderr, "client_holders: sweep_reuse setup failed\n");
        exit(3);
    }
    r->used_before = driver_query("fakecuda_used_bytes");
    if (pthread_create(&t, NULL, address_reuse_worker, r) != 0)
        exit(3);
    *destroy = cuCtxDestroy(c);
    pthread_join(t, NULL);
    cuCtxSetCurrent(g_ctx);
    return r->rc == CUDA_SUCCESS && r->p == old;
}

static void case_sweep_reuse(void)
{
    race_for_address("sweep_reuse", sweep_reuse_once);
}

typedef struct {
    CUdeviceptr a[2];      /* the destroyed context's two blocks */
    long long used_before; /* the driver's use before the destroy */
    CUdeviceptr p;         /* the worker's block */
    CUresult rc;
} cover_t;

/* Waits until the driver freed the destroyed context's two blocks, then at
 * once takes one twice their size in the primary context: the space they
 * held, side by side, is handed out again, so it starts at one and covers
 * the other, while the sweep is still asking the driver about them. */
static void *cover_worker(void *arg)
{
    cover_t *c = arg;
    cuCtxSetCurrent(g_ctx);
    while (driver_query("fakecuda_used_bytes") > c->used_before - (long long)(128 * KiB))
        nanosleep(&(struct timespec){0, 100000}, NULL);
    c->rc = cuMemAlloc(&c->p, 128 * KiB);
    return NULL;
}

/* True when the worker's block covers one of the old ones without
 * starting at it. */
static bool covers_one(const cover_t *c)
{
    for (int i = 0; i < 2; i++) {
        CUdeviceptr base = 0;
        size_t size = 0;
        if (cuMemGetAddressRange(&base, &size, c->a[i]) == CUDA_SUCCESS && base == c->p &&
            base != c->a[i])
            return true;
    }
    return false;
}

/* One destroy raced by a covering allocation; true when it covered. */
static bool sweep_cover_once(cover_t *c, CUresult *destroy)
{
    CUcontext ctx;
    pthread_t t;
    *c = (cover_t){0};
    if (cuCtxCreate(&ctx, NULL, 0, g_dev) != CUDA_SUCCESS || cuMemAlloc(&c->a[0], 64 * KiB) ||
        cuMemAlloc(&c->a[1], 64 * KiB)) {
        fprintf(stderr, "client_holders: sweep_cover setup failed\n");
        exit(3);
    }
    c->used_before = driver_query("fakecuda_used_bytes");
    if (pthread_create(&t, NULL, cover_worker, c) != 0)
        exit(3);
    *destroy = cuCtxDestroy(ctx);
    pthread_join(t, NULL);
    cuCtxSetCurrent(g_ctx);
    return c->rc == CUDA_SUCCESS && covers_one(c);
}

static void case_sweep_cover(void)
{
    cover_t c;
    CUresult destroy = CUDA_SUCCESS;
    size_t free0 = 0, free1 = 0, total = 0;
    int tries = 0;
    bool covered = false;
    cuMemGetInfo(&free0, &total);
    while (!covered && tries++ < 8) {
        covered = sweep_cover_once(&c, &destroy);
        if (c.rc == CUDA_SUCCESS)
            cuMemFree(c.p);
    }
    cuMemGetInfo(&free1, &total);
    printf("path=sweep_cover covered=%d tries=%d destroy_rc=%d lost=%lld", covered, tries,
           destroy, (long long)free0 - (long long)free1);
    finish();
}

/* The primary context's 600 MiB heap stays when another context goes:
 * 600 MiB more must be refused under 1 GiB. */
static void case_limit_other_ctx(void)
{
    CUcontext other = NULL;
    CUdeviceptr b = 0;
    CUresult limit = cuCtxSetLimit(CU_LIMIT_MALLOC_HEAP_SIZE, 600 * MiB);
    CUresult create = limit ? limit : cuCtxCreate(&other, NULL, 0, g_dev);
    CUresult destroy = create ? create : cuCtxDestroy(other);
    cuCtxSetCurrent(g_ctx);
    CUresult second = cuMemAlloc(&b, 600 * MiB);
    printf("path=limit_other_ctx limit_rc=%d create_rc=%d destroy_rc=%d second_rc=%d", limit,
           create, destroy, second);
    finish();
    if (second == CUDA_SUCCESS)
        cuMemFree(b);
}

static void *set_heap_worker(void *arg)
{
    cuCtxSetCurrent(g_ctx);
    pthread_barrier_wait(&g_start);
    *(CUresult *)arg = cuCtxSetLimit(CU_LIMIT_MALLOC_HEAP_SIZE, 600 * MiB);
    return NULL;
}

/* Two threads set the same 600 MiB heap at once: the context holds one
 * heap, so both calls fit 1 GiB, and so do 64 MiB allocations up to what
 * one heap leaves. */
static void case_limit_race(void)
{
    pthread_t t[2];
    CUresult rc[2] = {CUDA_SUCCESS, CUDA_SUCCESS};
    held_t h = {0};
    pthread_barrier_init(&g_start, NULL, 2);
    for (int i = 0; i < 2; i++)
        if (pthread_create(&t[i], NULL, set_heap_worker, &rc[i]) != 0)
            exit(3);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&g_start);
    fill(&h, 64 * MiB);
    printf("path=limit_race set1_rc=%d set2_rc=%d allocs=%d rc=%d", rc[0], rc[1], h.n, h.rc);
    finish();
    release_all(&h);
}

/* A pool destroyed with an allocation still out lives on until that is
 * freed (the driver's documentation): its 600 MiB still count, so the
 * plain 600 MiB after the destroy must be refused under 1 GiB, and fit once
 * the pool's last allocation was freed. */
static void case_pool_destroy(void)
{
    CUmemPoolProps props = {.allocType = CU_MEM_ALLOCATION_TYPE_PINNED,
                            .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = g_dev}};
    CUmemoryPool pool = NULL;
    CUdeviceptr a = 0, b = 0, c = 0;
    CUresult create = cuMemPoolCreate(&pool, &props);
    CUresult first = create ? create : cuMemAllocFromPoolAsync(&a, 600 * MiB, pool, NULL);
    CUresult sync = first ? first : cuStreamSynchronize(NULL);
    CUresult destroy = sync ? sync : cuMemPoolDestroy(pool);
    CUresult second = cuMemAlloc(&b, 600 * MiB);
    if (second == CUDA_SUCCESS)
        cuMemFree(b);
    CUresult freed = first ? first : cuMemFreeAsync(a, NULL);
    if (freed == CUDA_SUCCESS)
        freed = cuStreamSynchronize(NULL);
    CUresult third = cuMemAlloc(&c, 600 * MiB);
    printf("path=pool_destroy create_rc=%d first_rc=%d destroy_rc=%d second_rc=%d free_rc=%d "
           "third_rc=%d", create, first, destroy, second, freed, third);
    finish();
    if (third == CUDA_SUCCESS)
        cuMemFree(c);
}

static void *meminfo_worker(void *arg)
{
    size_t fr = 0, total = 0;
    *(CUresult *)arg = cuCtxSetCurrent(g_ctx);
    if (*(CUresult *)arg == CUDA_SUCCESS)
        *(CUresult *)arg = cuMemGetInfo(&fr, &total);
    return NULL;
}

/* A pool's charge follows what it reserves, read from the driver: a
 * reading another thread took before the pool grew (a memory view, made
 * slow by the test) must not undo the growth it never saw. 64 MiB from
 * the default pool; a cuMemGetInfo in another thread reads the pool at
 * 64 MiB; meanwhile 600 MiB more from the pool; then 600 MiB plain, which
 * must be refused under 1 GiB. */
static void case_pool_sync_race(void)
{
    CUdeviceptr a = 0, b = 0, c = 0;
    CUresult view = CUDA_ERROR_UNKNOWN;
    pthread_t t;
    CUresult first = cuMemAllocAsync(&a, 64 * MiB, NULL);
    if (pthread_create(&t, NULL, meminfo_worker, &view) != 0)
        exit(3);
    usleep(100 * 1000); /* the worker has read the pool and waits */
    CUresult grow = cuMemAllocAsync(&b, 600 * MiB, NULL);
    pthread_join(t, NULL);
    CUresult plain = cuMemAlloc(&c, 600 * MiB);
    printf("path=pool_sync_race first_rc=%d view_rc=%d grow_rc=%d plain_rc=%d", first, view,
           grow, plain);
    finish();
    if (plain == CUDA_SUCCESS)
        cuMemFree(c);
    if (grow == CUDA_SUCCESS)
        cuMemFreeAsync(b, NULL);
    if (first == CUDA_SUCCESS)
        cuMemFreeAsync(a, NULL);
    cuStreamSynchronize(NULL);
}

/* Stream-ordered memory lands where its pool is, whichever device is
 * current: 600 MiB from a pool on device 1 do not fit next to 600 MiB
 * already there under 1 GiB a device, and leave device 0's budget alone. */
static void case_pool_other_device(const char *name, bool default_pool)
{
    CUdevice dev1;
    CUcontext ctx1;
    CUdeviceptr on1 = 0, from_pool = 0, on0 = 0;
    CUmemPoolProps props = {.allocType = CU_MEM_ALLOCATION_TYPE_PINNED,
                            .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = 1}};
    CUmemoryPool pool = NULL;
    if (cuDeviceGet(&dev1, 1) || cuDevicePrimaryCtxRetain(&ctx1, dev1) || cuCtxSetCurrent(ctx1) ||
        cuMemAlloc(&on1, 600 * MiB) || cuCtxSetCurrent(g_ctx)) {
        fprintf(stderr, "client_holders: no 600 MiB on device 1\n");
        exit(3);
    }
    CUresult create = default_pool ? cuDeviceGetDefaultMemPool(&pool, dev1)
                                   : cuMemPoolCreate(&pool, &props);
    CUresult pool_rc = create ? create : cuMemAllocFromPoolAsync(&from_pool, 600 * MiB, pool, NULL);
    cuStreamSynchronize(NULL);
    CUresult dev0 = cuMemAlloc(&on0, 600 * MiB);
    printf("path=%s create_rc=%d pool_rc=%d dev0_rc=%d peak1=%lld", name, create, pool_rc, dev0,
           driver_query_dev("fakecuda_peak_bytes", 1));
    finish();
}

/* A pool on the host holds no device memory: 600 MiB from it leave a
 * 1 GiB budget whole, and its allocation is freed as any other. */
static void case_pool_host(void)
{
    CUmemPoolProps props = {.allocType = CU_MEM_ALLOCATION_TYPE_PINNED,
                            .location = {.type = CU_MEM_LOCATION_TYPE_HOST}};
    CUmemoryPool pool = NULL;
    CUdeviceptr a = 0, b = 0;
    CUresult create = cuMemPoolCreate(&pool, &props);
    CUresult pool_rc = create ? create : cuMemAllocFromPoolAsync(&a, 600 * MiB, pool, NULL);
    cuStreamSynchronize(NULL);
    CUresult plain = cuMemAlloc(&b, 600 * MiB);
    CUresult freed = pool_rc ? pool_rc : cuMemFreeAsync(a, NULL);
    printf("path=pool_host create_rc=%d pool_rc=%d plain_rc=%d free_rc=%d", create, pool_rc,
           plain, freed);
    finish();
}

/* A layered mipmapped array has all its layers at every level: the
 * device holds 256 + 64 + 16 + ... MiB, not 256 + 32 + 4 + ... MiB. */
static void case_mipmap_layered(void)
{
    const CUDA_ARRAY3D_DESCRIPTOR d = {.Width = 512, .Height = 512, .Depth = 64,
                                       .Format = CU_AD_FORMAT_FLOAT, .NumChannels = 4,
                                       .Flags = CUDA_ARRAY3D_LAYERED};
    CUmipmappedArray m = NULL;
    held_t h = {0};
    CUresult create = cuMipmappedArrayCreate(&m, &d, 10);
    fill(&h, 16 * MiB);
    printf("path=mipmap_layered create_rc=%d allocs=%d rc=%d", create, h.n, h.rc);
    finish();
    release_all(&h);
    if (create == CUDA_SUCCESS)
        cuMipmappedArrayDestroy(m);
}

/* 600 MiB plain, freed at once if it fit; its code. */
static CUresult alloc_600(void)
{
    CUdeviceptr p = 0;
    CUresult rc = cuMemAlloc(&p, 600 * MiB);
    if (rc == CUDA_SUCCESS)
        cuMemFree(p);
    return rc;
}

/* One cuMemMapArrayAsync entry for the whole of `a` (a 2D array, or level
 * 0 of a mipmapped one): MAP of h, or UNMAP when h is 0. */
static CUresult map_whole(void *a, bool mipmap, const CUDA_ARRAY3D_DESCRIPTOR *d,
                          CUmemGenericAllocationHandle h)
{
    CUarrayMapInfo m = {0};
    m.resourceType = mipmap ? CU_RESOURCE_TYPE_MIPMAPPED_ARRAY : CU_RESOURCE_TYPE_ARRAY;
    if (mipmap)
        m.resource.mipmap = a;
    else
        m.resource.array = a;
    m.subresourceType = CU_ARRAY_SPARSE_SUBRESOURCE_TYPE_SPARSE_LEVEL;
    m.subresource.sparseLevel.extentWidth = (unsigned int)d->Width;
    m.subresource.sparseLevel.extentHeight = (unsigned int)d->Height;
    m.subresource.sparseLevel.extentDepth = 1;
    m.memOperationType = h ? CU_MEM_OPERATION_TYPE_MAP : CU_MEM_OPERATION_TYPE_UNMAP;
    m.memHandleType = CU_MEM_HANDLE_TYPE_GENERIC;
    m.memHandle.memHandle = h;
    m.deviceBitMask = 1u << g_dev;
    return cuMemMapArrayAsync(&m, 1, NULL);
}

/* 600 MiB of tile pool memory mapped into `a` and released at once (the
 * array keeps it); the first failing code. */
static CUresult map_released(void *a, bool mipmap, const CUDA_ARRAY3D_DESCRIPTOR *d)
{
    CUmemAllocationProp prop = vmm_prop();
    prop.allocFlags.usage = CU_MEM_CREATE_USAGE_TILE_POOL;
    CUmemGenericAllocationHandle h = 0;
    CUresult rc = cuMemCreate(&h, 600 * MiB, &prop, 0);
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = map_whole(a, mipmap, d, h);
    CUresult released = cuMemRelease(h);
    return rc ? rc : released;
}

/* An array whose memory is mapped in holds none of its own; mapped
 * memory stays while the array maps it, released or not. */
static void case_mapped_array(const char *name, unsigned int flags, bool mipmap)
{
    const CUDA_ARRAY3D_DESCRIPTOR d = {.Width = 16384, .Height = 9600, /* 600 MiB */
                                       .Format = CU_AD_FORMAT_FLOAT, .NumChannels = 1,
                                       .Flags = flags};
    void *a = NULL;
    CUresult create = mipmap ? cuMipmappedArrayCreate((CUmipmappedArray *)&a, &d, 1)
                             : cuArray3DCreate((CUarray *)&a, &d);
    CUresult empty = alloc_600();
    CUresult map = create ? create : map_released(a, mipmap, &d);
    CUresult mapped = alloc_600();
    CUresult unmap = create ? create : map_whole(a, mipmap, &d, 0);
    CUresult unmapped = alloc_600();
    CUresult remap = create ? create : map_released(a, mipmap, &d);
    CUresult destroy = create     ? create
                       : mipmap ? cuMipmappedArrayDestroy(a)
                                : cuArrayDestroy(a);
    CUresult destroyed = alloc_600();
    printf("path=%s create_rc=%d empty_rc=%d map_rc=%d mapped_rc=%d unmap_rc=%d "
           "unmapped_rc=%d remap_rc=%d destroy_rc=%d destroyed_rc=%d",
           name, create, empty, map, mapped, unmap, unmapped, remap, destroy, destroyed);
    finish();
}

/* An array dies with its context, and with it the mappings into it: the
 * released handle it kept alive is freed then. */
static void case_array_mapped_ctx(void)
{
    const CUDA_ARRAY3D_DESCRIPTOR d = {.Width = 16384, .Height = 9600, /* 600 MiB */
                                       .Format = CU_AD_FORMAT_FLOAT, .NumChannels = 1,
                                       .Flags = CUDA_ARRAY3D_DEFERRED_MAPPING};
    CUcontext c = NULL;
    CUarray a = NULL;
    CUresult create = cuCtxCreate(&c, NULL, 0, g_dev);
    if (create == CUDA_SUCCESS)
        create = cuArray3DCreate(&a, &d);
    CUresult map = create ? create : map_released(a, false, &d);
    CUresult mapped = alloc_600();
    CUresult destroy = c ? cuCtxDestroy(c) : create;
    cuCtxSetCurrent(g_ctx);
    CUresult destroyed = alloc_600();
    printf("path=array_mapped_ctx create_rc=%d map_rc=%d mapped_rc=%d destroy_rc=%d "
           "destroyed_rc=%d", create, map, mapped, destroy, destroyed);
    finish();
}

/* A graph's allocation node made through the generic cuGraphAddNode holds
 * its memory as one from cuGraphAddMemAllocNode does: 600 MiB more do not
 * fit 1 GiB until the graph is destroyed. */
static void case_graph_node(const char *name, bool v1)
{
    CUgraph g = NULL;
    CUgraphNode n = NULL;
    CUdeviceptr b = 0, c = 0;
    CUgraphNodeParams p = {.type = CU_GRAPH_NODE_TYPE_MEM_ALLOC};
    p.alloc.poolProps.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
    p.alloc.poolProps.location = (CUmemLocation){CU_MEM_LOCATION_TYPE_DEVICE, g_dev};
    p.alloc.bytesize = 600 * MiB;
    CUresult create = cuGraphCreate(&g, 0);
    CUresult add = create     ? create
                   : v1       ? truth_graph_add_node_v1(&n, g, NULL, 0, &p)
                              : cuGraphAddNode(&n, g, NULL, NULL, 0, &p);
    CUresult second = cuMemAlloc(&b, 600 * MiB);
    if (second == CUDA_SUCCESS)
        cuMemFree(b);
    CUresult destroy = create ? create : cuGraphDestroy(g);
    CUresult third = cuMemAlloc(&c, 600 * MiB);
    printf("path=%s add_rc=%d second_rc=%d destroy_rc=%d third_rc=%d", name, add, second,
           destroy, third);
    finish();
    if (third == CUDA_SUCCESS)
        cuMemFree(c);
}


/* ------------------------------------------------------ main */

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: client_holders CASE\n");
        return 2;
    }
    const char *c = argv[1];
    setup();
    if (!strcmp(c, "sweep_cover"))
        case_sweep_cover();
    else if (!strcmp(c, "ctx_destroy"))
        case_gone(c, false, GO_DESTROY);
    else if (!strcmp(c, "ctx_destroy_v1"))
        case_gone(c, false, GO_DESTROY_V1);
    else if (!strcmp(c, "array_ctx_destroy"))
        case_gone(c, true, GO_DESTROY);
    else if (!strcmp(c, "array_reset"))
        case_gone(c, true, GO_RESET);
    else if (!strcmp(c, "release"))
        case_gone(c, false, GO_RELEASE);
    else if (!strcmp(c, "release_array"))
        case_gone(c, true, GO_RELEASE);
    else if (!strcmp(c, "mipmap_layered"))
        case_mipmap_layered();
    else if (!strcmp(c, "array_deferred"))
        case_mapped_array(c, CUDA_ARRAY3D_DEFERRED_MAPPING, false);
    else if (!strcmp(c, "array_sparse"))
        case_mapped_array(c, CUDA_ARRAY3D_SPARSE, false);
    else if (!strcmp(c, "mipmap_deferred"))
        case_mapped_array(c, CUDA_ARRAY3D_DEFERRED_MAPPING, true);
    else if (!strcmp(c, "array_mapped_ctx"))
        case_array_mapped_ctx();
    else if (!strcmp(c, "graph_node"))
        case_graph_node(c, false);
    else if (!strcmp(c, "graph_node_v1"))
        case_graph_node(c, true);
    else if (!strcmp(c, "pool_other_device"))
        case_pool_other_device(c, false);
    else if (!strcmp(c, "pool_default_other_device"))
        case_pool_other_device(c, true);
    else if (!strcmp(c, "pool_host"))
        case_pool_host();
    else if (!strcmp(c, "pool_destroy"))
        case_pool_destroy();
    else if (!strcmp(c, "pool_sync_race"))
        case_pool_sync_race();
    else if (!strcmp(c, "release_race"))
        case_release_race();
    else if (!strcmp(c, "sweep_reuse"))
        case_sweep_reuse();
    else if (!strcmp(c, "limit_race"))
        case_limit_race();
    else if (!strcmp(c, "limit_other_ctx"))
        case_limit_other_ctx();
    else {
        fprintf(stderr, "client_holders: unknown case %s\n", c);
        return 2;
    }
    return 0;
}
