/*
 * client.h — what every client program does once it has the driver's entry
 * points: set up device 0, allocate CHUNK-sized objects along one path until
 * the first refusal, print one line, free everything.
 *
 * A client_X.c file differs from the others only in how it fills the
 * client_api_t (linked symbols, dlsym, RTLD_DEFAULT, cudart's
 * cuGetProcAddress): that is what the shim must catch. Everything here is
 * static and included once per program (the Makefile builds each
 * tests/clients/X.c alone), so the logic is written once.
 *
 *   client_X PATH CHUNK [MAX_CHUNKS [FAILURES]]
 *   stdout: path=PATH allocs=N bytes=B rc=RC rcname=NAME dangling=D [extra=...]
 *           free_failed=K          (a second line, only when a free failed)
 *   exit:   0 ran (whatever the driver answered), 2 usage, 3 setup failed
 * FAILURES (default 1) lets a run go on past refused allocations: it stops
 * at the FAILURES-th; rc is the first failure's code. D counts refused
 * calls that left the caller a pointer or handle.
 */
#ifndef VG_CLIENT_H
#define VG_CLIENT_H

#include <cuda.h>
#include <dlfcn.h>
#include <cudaTypedefs.h>

#include "client_size.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CLIENT_PTDS CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM

/* X(field, PFN type, ABI symbol, base name, version, cuGetProcAddress flags):
 * every entry point a client uses. The ABI symbol is what libcuda exports
 * (linking and dlsym use it); base name, version and flags are what cudart
 * asks cuGetProcAddress for (versions: cudaTypedefs.h, tests/fakecuda/proc.c). */
#define CLIENT_SYMS(X)                                                                             \
    X(init, PFN_cuInit_v2000, cuInit, "cuInit", 2000, 0)                                           \
    X(get_error_name, PFN_cuGetErrorName_v6000, cuGetErrorName, "cuGetErrorName", 6000, 0)         \
    X(device_get, PFN_cuDeviceGet_v2000, cuDeviceGet, "cuDeviceGet", 2000, 0)                      \
    X(primary_retain, PFN_cuDevicePrimaryCtxRetain_v7000, cuDevicePrimaryCtxRetain,                \
      "cuDevicePrimaryCtxRetain", 7000, 0)                                                         \
    X(ctx_set_current, PFN_cuCtxSetCurrent_v4000, cuCtxSetCurrent, "cuCtxSetCurrent", 4000, 0)     \
    X(stream_sync, PFN_cuStreamSynchronize_v2000, cuStreamSynchronize, "cuStreamSynchronize",      \
      2000, 0)                                                                                     \
    X(mem_alloc, PFN_cuMemAlloc_v3020, cuMemAlloc_v2, "cuMemAlloc", 3020, 0)                       \
    X(mem_free, PFN_cuMemFree_v3020, cuMemFree_v2, "cuMemFree", 3020, 0)                           \
    X(mem_alloc_pitch, PFN_cuMemAllocPitch_v3020, cuMemAllocPitch_v2, "cuMemAllocPitch", 3020, 0)  \
    X(mem_alloc_managed, PFN_cuMemAllocManaged_v6000, cuMemAllocManaged, "cuMemAllocManaged",      \
      6000, 0)                                                                                     \
    X(mem_alloc_async, PFN_cuMemAllocAsync_v11020, cuMemAllocAsync, "cuMemAllocAsync", 11020, 0)   \
    X(mem_alloc_async_ptsz, PFN_cuMemAllocAsync_v11020_ptsz, cuMemAllocAsync_ptsz,                 \
      "cuMemAllocAsync", 11020, CLIENT_PTDS)                                                       \
    X(mem_free_async, PFN_cuMemFreeAsync_v11020, cuMemFreeAsync, "cuMemFreeAsync", 11020, 0)       \
    X(mem_free_async_ptsz, PFN_cuMemFreeAsync_v11020_ptsz, cuMemFreeAsync_ptsz, "cuMemFreeAsync",  \
      11020, CLIENT_PTDS)                                                                          \
    X(pool_create, PFN_cuMemPoolCreate_v11020, cuMemPoolCreate, "cuMemPoolCreate", 11020, 0)       \
    X(pool_destroy, PFN_cuMemPoolDestroy_v11020, cuMemPoolDestroy, "cuMemPoolDestroy", 11020, 0)   \
    X(pool_alloc, PFN_cuMemAllocFromPoolAsync_v11020, cuMemAllocFromPoolAsync,                     \
      "cuMemAllocFromPoolAsync", 11020, 0)                                                         \
    X(vmm_create, PFN_cuMemCreate_v10020, cuMemCreate, "cuMemCreate", 10020, 0)                    \
    X(vmm_release, PFN_cuMemRelease_v10020, cuMemRelease, "cuMemRelease", 10020, 0)               \
    X(vmm_reserve, PFN_cuMemAddressReserve_v10020, cuMemAddressReserve, "cuMemAddressReserve",     \
      10020, 0)                                                                                    \
    X(vmm_address_free, PFN_cuMemAddressFree_v10020, cuMemAddressFree, "cuMemAddressFree", 10020,  \
      0)                                                                                           \
    X(vmm_map, PFN_cuMemMap_v10020, cuMemMap, "cuMemMap", 10020, 0)                                \
    X(vmm_unmap, PFN_cuMemUnmap_v10020, cuMemUnmap, "cuMemUnmap", 10020, 0)                        \
    X(vmm_set_access, PFN_cuMemSetAccess_v10020, cuMemSetAccess, "cuMemSetAccess", 10020, 0)       \
    X(vmm_granularity, PFN_cuMemGetAllocationGranularity_v10020, cuMemGetAllocationGranularity,    \
      "cuMemGetAllocationGranularity", 10020, 0)                                                   \
    X(array_create, PFN_cuArrayCreate_v3020, cuArrayCreate_v2, "cuArrayCreate", 3020, 0)           \
    X(array3d_create, PFN_cuArray3DCreate_v3020, cuArray3DCreate_v2, "cuArray3DCreate", 3020, 0)   \
    X(array_destroy, PFN_cuArrayDestroy_v2000, cuArrayDestroy, "cuArrayDestroy", 2000, 0)          \
    X(mipmap_create, PFN_cuMipmappedArrayCreate_v5000, cuMipmappedArrayCreate,                     \
      "cuMipmappedArrayCreate", 5000, 0)                                                           \
    X(mipmap_destroy, PFN_cuMipmappedArrayDestroy_v5000, cuMipmappedArrayDestroy,                  \
      "cuMipmappedArrayDestroy", 5000, 0)                                                          \
    X(graph_create, PFN_cuGraphCreate_v10000, cuGraphCreate, "cuGraphCreate", 10000, 0)            \
    X(graph_add_alloc, PFN_cuGraphAddMemAllocNode_v11040, cuGraphAddMemAllocNode,                  \
      "cuGraphAddMemAllocNode", 11040, 0)                                                          \
    X(graph_add_node, PFN_cuGraphAddNode_v12030, cuGraphAddNode_v2, "cuGraphAddNode", 12030, 0)    \
    X(graph_destroy, PFN_cuGraphDestroy_v10000, cuGraphDestroy, "cuGraphDestroy", 10000, 0)        \
    X(stream_create, PFN_cuStreamCreate_v2000, cuStreamCreate, "cuStreamCreate", 2000, 0)          \
    X(capture_begin, PFN_cuStreamBeginCapture_v10010, cuStreamBeginCapture_v2,                     \
      "cuStreamBeginCapture", 10010, 0)                                                            \
    X(capture_end, PFN_cuStreamEndCapture_v10000, cuStreamEndCapture, "cuStreamEndCapture", 10000, \
      0)                                                                                           \
    X(mem_get_info, PFN_cuMemGetInfo_v3020, cuMemGetInfo_v2, "cuMemGetInfo", 3020, 0)              \
    X(device_total_mem, PFN_cuDeviceTotalMem_v3020, cuDeviceTotalMem_v2, "cuDeviceTotalMem", 3020, \
      0)

typedef struct client_api {
#define CLIENT_FIELD_(field, type, abi, base, ver, flags) type field;
    CLIENT_SYMS(CLIENT_FIELD_)
#undef CLIENT_FIELD_
} client_api_t;

/* Finds one entry point; NULL when it cannot. */
typedef void *(*client_find_fn)(const char *abi, const char *base, int version,
                                cuuint64_t flags, void *ctx);

/* Fills every field through `find`. Returns 0, or -1 after naming the
 * first symbol it could not find on stderr. (client_linked fills the
 * fields itself, hence `unused`.) */
__attribute__((unused)) static int client_resolve(client_api_t *api, client_find_fn find, void *ctx)
{
#define CLIENT_RESOLVE_(field, type, abi, base, ver, flags)                                        \
    api->field = (type)find(#abi, base, ver, flags, ctx);                                          \
    if (!api->field) {                                                                             \
        fprintf(stderr, "client: cannot resolve %s (%s, %d)\n", #abi, base, ver);                  \
        return -1;                                                                                 \
    }
    CLIENT_SYMS(CLIENT_RESOLVE_)
#undef CLIENT_RESOLVE_
    return 0;
}

/* ------------------------------------------------------------ objects */

/* One allocation of any kind; `bytes` is what it holds on the device. */
typedef struct client_obj {
    CUdeviceptr ptr;
    CUmemGenericAllocationHandle handle;
    CUarray array;
    CUmipmappedArray mipmap;
    size_t bytes;
} client_obj_t;

typedef struct client {
    client_api_t api;
    const struct client_path *path;
    size_t chunk;          /* bytes per object, as asked */
    size_t max;            /* MAX_CHUNKS */
    size_t max_failures;   /* FAILURES */
    CUdevice dev;
    CUcontext ctx;
    CUmemoryPool pool;     /* path pool */
    CUgraph graph;         /* paths graph, graph_node, capture (once captured) */
    CUstream stream;       /* path capture: the stream being captured */
    size_t granularity;    /* path vmm */
} client_t;

typedef struct client_path {
    const char *name;
    CUresult (*alloc)(client_t *c, client_obj_t *o);
    CUresult (*release)(client_t *c, client_obj_t *o);
} client_path_t;

static CUresult alloc_plain(client_t *c, client_obj_t *o)
{
    o->bytes = c->chunk;
    return c->api.mem_alloc(&o->ptr, c->chunk);
}

static CUresult free_plain(client_t *c, client_obj_t *o)
{
    return c->api.mem_free(o->ptr);
}

/* Rows of 64 KiB (a multiple of every pitch alignment we know). */
static CUresult alloc_pitch(client_t *c, client_obj_t *o)
{
    size_t width = c->chunk < 65536 ? c->chunk : 65536, pitch = 0;
    CUresult r = c->api.mem_alloc_pitch(&o->ptr, &pitch, width, c->chunk / width, 4);
    o->bytes = pitch * (c->chunk / width);
    return r;
}

static CUresult alloc_managed(client_t *c, client_obj_t *o)
{
    o->bytes = c->chunk;
    return c->api.mem_alloc_managed(&o->ptr, c->chunk, CU_MEM_ATTACH_GLOBAL);
}

static CUresult alloc_async(client_t *c, client_obj_t *o)
{
    o->bytes = c->chunk;
    return c->api.mem_alloc_async(&o->ptr, c->chunk, 0);
}

static CUresult free_async(client_t *c, client_obj_t *o)
{
    return c->api.mem_free_async(o->ptr, 0);
}

static CUresult alloc_async_ptsz(client_t *c, client_obj_t *o)
{
    o->bytes = c->chunk;
    return c->api.mem_alloc_async_ptsz(&o->ptr, c->chunk, 0);
}

static CUresult free_async_ptsz(client_t *c, client_obj_t *o)
{
    return c->api.mem_free_async_ptsz(o->ptr, 0);
}

static CUresult alloc_pool(client_t *c, client_obj_t *o)
{
    o->bytes = c->chunk;
    return c->api.pool_alloc(&o->ptr, c->chunk, c->pool, 0);
}

static CUmemAllocationProp vmm_prop(void)
{
    CUmemAllocationProp p = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                             .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = 0}};
    return p;
}

/* cuMemCreate (device-located) + reserve + map + set access; the first
 * step that fails is the answer, and what was made is undone. */
static CUresult alloc_vmm(client_t *c, client_obj_t *o)
{
    CUmemAllocationProp prop = vmm_prop();
    size_t g = c->granularity;
    o->bytes = (c->chunk + g - 1) / g * g;
    CUresult r = c->api.vmm_create(&o->handle, o->bytes, &prop, 0);
    if (r != CUDA_SUCCESS)
        return r;
    r = c->api.vmm_reserve(&o->ptr, o->bytes, 0, 0, 0);
    if (r != CUDA_SUCCESS)
        goto out_release;
    r = c->api.vmm_map(o->ptr, o->bytes, 0, o->handle, 0);
    if (r != CUDA_SUCCESS)
        goto out_free;
    CUmemAccessDesc d = {.location = prop.location, .flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    r = c->api.vmm_set_access(o->ptr, o->bytes, &d, 1);
    if (r == CUDA_SUCCESS)
        return r;
    c->api.vmm_unmap(o->ptr, o->bytes);
out_free:
    c->api.vmm_address_free(o->ptr, o->bytes);
out_release:
    c->api.vmm_release(o->handle);
    o->ptr = 0, o->handle = 0; /* undone: nothing is left to the caller */
    return r;
}

static CUresult free_vmm(client_t *c, client_obj_t *o)
{
    CUresult r1 = c->api.vmm_unmap(o->ptr, o->bytes);
    CUresult r2 = c->api.vmm_address_free(o->ptr, o->bytes);
    CUresult r3 = c->api.vmm_release(o->handle);
    return r1 != CUDA_SUCCESS ? r1 : r2 != CUDA_SUCCESS ? r2 : r3;
}

/* Float arrays: 2D rows of 32 KiB; 3D slices of 1 MiB (1024 x 256). */
static CUresult alloc_array(client_t *c, client_obj_t *o)
{
    size_t row = c->chunk < 32768 ? c->chunk : 32768;
    CUDA_ARRAY_DESCRIPTOR d = {.Width = row / 4, .Height = c->chunk / row,
                               .Format = CU_AD_FORMAT_FLOAT, .NumChannels = 1};
    o->bytes = d.Width * d.Height * 4;
    return c->api.array_create(&o->array, &d);
}

static CUresult alloc_array3d(client_t *c, client_obj_t *o)
{
    size_t depth = c->chunk >> 20 ? c->chunk >> 20 : 1;
    CUDA_ARRAY3D_DESCRIPTOR d = {.Width = 1024, .Height = 256, .Depth = depth,
                                 .Format = CU_AD_FORMAT_FLOAT, .NumChannels = 1};
    o->bytes = 1024 * 256 * 4 * depth;
    return c->api.array3d_create(&o->array, &d);
}

static CUresult free_array(client_t *c, client_obj_t *o)
{
    return c->api.array_destroy(o->array);
}

/* Two levels: level 0 is the 2D array above, level 1 a quarter of it. */
static CUresult alloc_mipmap(client_t *c, client_obj_t *o)
{
    size_t row = c->chunk < 32768 ? c->chunk : 32768, h = c->chunk / row;
    CUDA_ARRAY3D_DESCRIPTOR d = {.Width = row / 4, .Height = h, .Format = CU_AD_FORMAT_FLOAT,
                                 .NumChannels = 1};
    o->bytes = row * h + (row / 2) * (h > 1 ? h / 2 : 1);
    return c->api.mipmap_create(&o->mipmap, &d, 2);
}

static CUresult free_mipmap(client_t *c, client_obj_t *o)
{
    return c->api.mipmap_destroy(o->mipmap);
}

/* Graph memory is freed with its graph (teardown), not one by one. */
static CUresult alloc_graph(client_t *c, client_obj_t *o)
{
    CUDA_MEM_ALLOC_NODE_PARAMS p = {
        .poolProps = {.allocType = CU_MEM_ALLOCATION_TYPE_PINNED,
                      .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = 0}},
        .bytesize = c->chunk};
    CUgraphNode node;
    o->bytes = c->chunk;
    CUresult r = c->api.graph_add_alloc(&node, c->graph, NULL, 0, &p);
    o->ptr = p.dptr;
    return r;
}

/* The same memory node through the generic node API (cudaGraphAddNode). */
static CUresult alloc_graph_node(client_t *c, client_obj_t *o)
{
    CUgraphNodeParams p = {.type = CU_GRAPH_NODE_TYPE_MEM_ALLOC};
    p.alloc = (CUDA_MEM_ALLOC_NODE_PARAMS_v2){
        .poolProps = {.allocType = CU_MEM_ALLOCATION_TYPE_PINNED,
                      .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = 0}},
        .bytesize = c->chunk};
    CUgraphNode node;
    o->bytes = c->chunk;
    CUresult r = c->api.graph_add_node(&node, c->graph, NULL, NULL, 0, &p);
    o->ptr = p.alloc.dptr;
    return r;
}

/* cuMemAllocAsync on a stream being captured (a CUDA graph by stream
 * capture): each allocation becomes a memory node of the captured graph,
 * and its cuMemFreeAsync, still in the capture, a free node. The memory
 * goes with the graph (teardown). */
static CUresult alloc_captured(client_t *c, client_obj_t *o)
{
    o->bytes = c->chunk;
    return c->api.mem_alloc_async(&o->ptr, c->chunk, c->stream);
}

static CUresult free_captured(client_t *c, client_obj_t *o)
{
    return c->api.mem_free_async(o->ptr, c->stream);
}

static CUresult free_nothing(client_t *c, client_obj_t *o)
{
    (void)c, (void)o;
    return CUDA_SUCCESS;
}

static const client_path_t client_paths[] = {
    {"plain", alloc_plain, free_plain},
    {"pitch", alloc_pitch, free_plain},
    {"managed", alloc_managed, free_plain},
    {"async", alloc_async, free_async},
    {"async_ptsz", alloc_async_ptsz, free_async_ptsz},
    {"pool", alloc_pool, free_async},
    {"vmm", alloc_vmm, free_vmm},
    {"array", alloc_array, free_array},
    {"array3d", alloc_array3d, free_array},
    {"mipmap", alloc_mipmap, free_mipmap},
    {"graph", alloc_graph, free_nothing},
    {"graph_node", alloc_graph_node, free_nothing},
    {"capture", alloc_captured, free_captured},
};

/* ------------------------------------------------------------ running */

static const char *client_rcname(client_t *c, CUresult r)
{
    const char *s = NULL;
    if (c->api.get_error_name(r, &s) != CUDA_SUCCESS || !s)
        return "?";
    return s;
}

/* Per-path state that outlives the objects: a pool, a graph, granularity. */
static CUresult client_path_setup(client_t *c)
{
    const char *n = c->path->name;
    if (!strcmp(n, "pool")) {
        CUmemPoolProps p = {.allocType = CU_MEM_ALLOCATION_TYPE_PINNED,
                            .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = 0}};
        return c->api.pool_create(&c->pool, &p);
    }
    if (!strncmp(n, "graph", 5))
        return c->api.graph_create(&c->graph, 0);
    if (!strcmp(n, "capture")) {
        CUresult r = c->api.stream_create(&c->stream, CU_STREAM_NON_BLOCKING);
        return r == CUDA_SUCCESS ? c->api.capture_begin(c->stream, CU_STREAM_CAPTURE_MODE_GLOBAL)
                                 : r;
    }
    if (!strcmp(n, "vmm")) {
        CUmemAllocationProp prop = vmm_prop();
        return c->api.vmm_granularity(&c->granularity, &prop,
                                      CU_MEM_ALLOC_GRANULARITY_RECOMMENDED);
    }
    return CUDA_SUCCESS;
}

/* Returns how many teardown calls failed. */
static int client_path_teardown(client_t *c)
{
    int failed = c->stream && c->api.capture_end(c->stream, &c->graph) != CUDA_SUCCESS;
    failed += c->api.stream_sync(0) != CUDA_SUCCESS;
    if (c->pool)
        failed += c->api.pool_destroy(c->pool) != CUDA_SUCCESS;
    if (c->graph)
        failed += c->api.graph_destroy(c->graph) != CUDA_SUCCESS;
    return failed;
}

typedef struct client_tally {
    size_t allocs, bytes, failures, dangling;
    CUresult first, last;
} client_tally_t;

/* Allocates into objs[] until max objects or max_failures refusals. */
static void client_fill(client_t *c, client_obj_t *objs, client_tally_t *t)
{
    while (t->allocs < c->max && t->failures < c->max_failures) {
        client_obj_t *o = &objs[t->allocs];
        memset(o, 0, sizeof *o);
        CUresult r = c->path->alloc(c, o);
        if (r == CUDA_SUCCESS) {
            t->bytes += o->bytes;
            t->allocs++;
            continue;
        }
        if (t->failures++ == 0)
            t->first = r;
        t->last = r;
        t->dangling += o->ptr || o->handle || o->array || o->mipmap;
    }
}

/* Frees objs[from..to) newest first; returns how many frees failed. */
static int client_free_range(client_t *c, client_obj_t *objs, size_t from, size_t to)
{
    int failed = 0;
    while (to > from)
        failed += c->path->release(c, &objs[--to]) != CUDA_SUCCESS;
    return failed;
}

static void client_print(client_t *c, const char *name, const client_tally_t *t,
                         const char *extra)
{
    printf("path=%s allocs=%zu bytes=%zu rc=%d rcname=%s dangling=%zu", name, t->allocs,
           t->bytes, (int)t->first, client_rcname(c, t->first), t->dangling);
    if (c->max_failures > 1)
        printf(" failures=%zu last_rc=%d", t->failures, (int)t->last);
    printf("%s\n", extra ? extra : "");
}

static void client_print_free_failed(int failed)
{
    if (failed)
        printf("free_failed=%d\n", failed);
    fflush(stdout);
}

static int client_run_path(client_t *c)
{
    client_obj_t *objs = calloc(c->max, sizeof *objs);
    client_tally_t t = {0};
    if (!objs)
        return 3;
    CUresult r = client_path_setup(c);
    if (r != CUDA_SUCCESS) {
        fprintf(stderr, "client: setup of path %s: %s\n", c->path->name, client_rcname(c, r));
        free(objs);
        return 3;
    }
    client_fill(c, objs, &t);
    client_print(c, c->path->name, &t, NULL);
    int failed = client_free_range(c, objs, 0, t.allocs);
    failed += client_path_teardown(c);
    client_print_free_failed(failed);
    free(objs);
    return 0;
}

/* ------------------------------------------------------ special paths */

static int client_meminfo(client_t *c)
{
    size_t fr = 0, total = 0, dev_total = 0;
    client_tally_t t = {0};
    t.first = c->api.mem_get_info(&fr, &total);
    if (t.first == CUDA_SUCCESS)
        t.first = c->api.device_total_mem(&dev_total, c->dev);
    char extra[128];
    snprintf(extra, sizeof extra, " free=%zu total=%zu device_total=%zu", fr, total, dev_total);
    client_print(c, "meminfo", &t, extra);
    fflush(stdout);
    return 0;
}

/* Allocate and free the same chunk 1000 times: nothing may stay charged. */
static int client_freeloop(client_t *c)
{
    client_tally_t t = {0};
    int failed = 0;
    for (int i = 0; i < 1000; i++) {
        CUdeviceptr p;
        CUresult r = c->api.mem_alloc(&p, c->chunk);
        if (r != CUDA_SUCCESS) {
            t.first = r;
            break;
        }
        t.allocs++;
        t.bytes += c->chunk;
        failed += c->api.mem_free(p) != CUDA_SUCCESS;
    }
    client_print(c, "freeloop", &t, NULL);
    client_print_free_failed(failed);
    return 0;
}

#define CLIENT_RACERS 16

typedef struct client_racer {
    client_t *c;
    client_obj_t *objs;
    client_tally_t t;
} client_racer_t;

static void *client_racer_main(void *arg)
{
    client_racer_t *r = arg;
    if (r->c->api.ctx_set_current(r->c->ctx) != CUDA_SUCCESS)
        r->t.first = CUDA_ERROR_INVALID_CONTEXT, r->t.failures = 1;
    else
        client_fill(r->c, r->objs, &r->t);
    return NULL;
}

/* 16 threads allocate plain chunks until each is refused, and hold them
 * until all are done. */
static int client_race(client_t *c)
{
    static client_racer_t racers[CLIENT_RACERS];
    pthread_t tid[CLIENT_RACERS];
    client_tally_t sum = {0};
    int failed = 0;
    c->path = &client_paths[0];
    for (int i = 0; i < CLIENT_RACERS; i++) {
        racers[i] = (client_racer_t){c, calloc(c->max, sizeof(client_obj_t)), {0}};
        if (!racers[i].objs || pthread_create(&tid[i], NULL, client_racer_main, &racers[i]))
            return 3;
    }
    for (int i = 0; i < CLIENT_RACERS; i++) {
        pthread_join(tid[i], NULL);
        sum.allocs += racers[i].t.allocs;
        sum.bytes += racers[i].t.bytes;
        if (!sum.first)
            sum.first = racers[i].t.first;
    }
    client_print(c, "race", &sum, NULL);
    for (int i = 0; i < CLIENT_RACERS; i++) {
        failed += client_free_range(c, racers[i].objs, 0, racers[i].t.allocs);
        free(racers[i].objs);
    }
    client_print_free_failed(failed);
    return 0;
}

/* The forked child: allocate until refused, free, report, exit. Its test
 * driver writes its exit report to $FAKECUDA_REPORT.child. */
static void client_fork_child(client_t *c, client_obj_t *objs, size_t from)
{
    client_tally_t t = {0};
    size_t saved_max = c->max;
    c->max -= from;
    client_fill(c, objs + from, &t);
    c->max = saved_max;
    client_print(c, "fork-child", &t, NULL);
    int failed = client_free_range(c, objs, from, from + t.allocs);
    client_print_free_failed(failed);
    const char *rep = getenv("FAKECUDA_REPORT");
    if (rep && *rep) {
        char path[4096];
        snprintf(path, sizeof path, "%s.child", rep);
        setenv("FAKECUDA_REPORT", path, 1);
    }
    exit(failed ? 1 : 0);
}

/* The parent allocates MAX_CHUNKS/4 chunks, forks; the child allocates until
 * refused and frees; then the parent allocates until refused. */
static int client_fork(client_t *c)
{
    client_obj_t *objs = calloc(c->max, sizeof *objs);
    client_tally_t t = {0};
    int status = 0;
    if (!objs)
        return 3;
    c->path = &client_paths[0];
    size_t saved_max = c->max;
    c->max /= 4;
    client_fill(c, objs, &t);
    c->max = saved_max;
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        return 3;
    if (pid == 0)
        client_fork_child(c, objs, t.allocs);
    if (waitpid(pid, &status, 0) != pid)
        return 3;
    size_t before = t.allocs;
    client_fill(c, objs, &t);
    char extra[64];
    snprintf(extra, sizeof extra, " first_allocs=%zu child_status=%d", before, status);
    client_print(c, "fork", &t, extra);
    client_print_free_failed(client_free_range(c, objs, 0, t.allocs));
    free(objs);
    return 0;
}

/* A thread that allocates and frees one chunk until told to stop. */
typedef struct client_churner {
    client_t *c;
    _Atomic bool stop;
    size_t pairs;
    int failed;
} client_churner_t;

static void *client_churn_main(void *arg)
{
    client_churner_t *h = arg;
    if (h->c->api.ctx_set_current(h->c->ctx) != CUDA_SUCCESS) {
        h->failed = 1;
        return NULL;
    }
    while (!atomic_load(&h->stop)) {
        CUdeviceptr p;
        if (h->c->api.mem_alloc(&p, h->c->chunk) != CUDA_SUCCESS ||
            h->c->api.mem_free(p) != CUDA_SUCCESS) {
            h->failed = 1;
            return NULL;
        }
        h->pairs++;
    }
    return NULL;
}

/* vfork, the child ending with _exit(7) at once (what a failed exec does),
 * while the parent holds MAX_CHUNKS chunks and another of its threads
 * allocates and frees: the child runs the shim's _exit in the parent's
 * memory. Prints "path=vfork ... child_status=S churn=N shared=V", N the
 * other thread's alloc+free pairs, V 1 when the child did share the
 * parent's memory, then frees everything. */
static int client_vfork(client_t *c)
{
    client_obj_t *objs = calloc(c->max, sizeof *objs);
    client_churner_t h = {.c = c};
    client_tally_t t = {0};
    pthread_t tid;
    int status = -1;
    if (!objs || pthread_create(&tid, NULL, client_churn_main, &h))
        return 3;
    c->path = &client_paths[0];
    client_fill(c, objs, &t);
    struct timespec pause = {0, 20 * 1000 * 1000}; /* the thread churns */
    nanosleep(&pause, NULL);
    /* Under a sanitizer that turns vfork into fork, the child's store
     * does not reach the parent: it reports shared=0. */
    static volatile int child_ran;
    pid_t pid = vfork();
    if (pid == 0) {
        child_ran = 1;
        _exit(7);
    }
    if (pid < 0 || waitpid(pid, &status, 0) != pid)
        status = -1;
    nanosleep(&pause, NULL);
    atomic_store(&h.stop, true);
    pthread_join(tid, NULL);
    char extra[96];
    snprintf(extra, sizeof extra, " child_status=%d churn=%zu shared=%d",
             status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1, h.pairs, child_ran);
    client_print(c, "vfork", &t, extra);
    client_print_free_failed(client_free_range(c, objs, 0, t.allocs) + h.failed);
    free(objs);
    return 0;
}

/* Stream-ordered memory kept by its pool: fills the budget from the
 * default pool (cuMemAllocAsync), frees it all with cuMemFreeAsync and no
 * synchronisation (the pool keeps what it reserved), then asks for one
 * plain chunk, which fits only once the pool is trimmed. rc is the plain
 * request's; allocs counts the stream-ordered ones. */
static int client_pooltrim(client_t *c)
{
    client_obj_t *objs = calloc(c->max, sizeof *objs);
    client_tally_t t = {0};
    if (!objs)
        return 3;
    for (size_t i = 0; i < sizeof client_paths / sizeof client_paths[0]; i++)
        if (!strcmp(client_paths[i].name, "async"))
            c->path = &client_paths[i];
    client_fill(c, objs, &t);
    int failed = client_free_range(c, objs, 0, t.allocs);
    CUdeviceptr p = 0;
    t.first = c->api.mem_alloc(&p, c->chunk);
    client_print(c, "pooltrim", &t, NULL);
    if (t.first == CUDA_SUCCESS)
        failed += c->api.mem_free(p) != CUDA_SUCCESS;
    failed += c->api.stream_sync(0) != CUDA_SUCCESS;
    client_print_free_failed(failed);
    free(objs);
    return 0;
}

/* dlsym(RTLD_NEXT, "dlsym") from the program: the object after the
 * program that defines dlsym. Under the shim that is the shim itself; a
 * dlsym override that lost the caller would name libc instead. */
static int client_rtldnext(client_t *c)
{
    client_tally_t t = {0};
    Dl_info info = {0};
    void *next = dlsym(RTLD_NEXT, "dlsym");
    const char *obj = next && dladdr(next, &info) && info.dli_fname ? info.dli_fname : "none";
    const char *base = strrchr(obj, '/');
    char extra[300];
    snprintf(extra, sizeof extra, " next_dlsym=%s", base ? base + 1 : obj);
    client_print(c, "rtldnext", &t, extra);
    fflush(stdout);
    return 0;
}

/* ------------------------------------------ bad pointers, leaks, crash */

/* One bad free per class; each prints "path=badptr_CLASS ... rc=RC".
 * Whatever was really allocated is freed again afterwards. */
static CUresult bad_fake(client_t *c)
{
    return c->api.mem_free((CUdeviceptr)0x7f8000000000ull);
}

static CUresult bad_freed(client_t *c)
{
    CUdeviceptr p;
    CUresult r = c->api.mem_alloc(&p, c->chunk);
    if (r != CUDA_SUCCESS || (r = c->api.mem_free(p)) != CUDA_SUCCESS)
        return r == CUDA_SUCCESS ? CUDA_ERROR_UNKNOWN : r;
    return c->api.mem_free(p); /* the double free */
}

static CUresult bad_host(client_t *c)
{
    (void)c;
    static char host[4096];
    return c->api.mem_free((CUdeviceptr)(uintptr_t)host);
}

static CUresult bad_interior(client_t *c)
{
    CUdeviceptr p;
    CUresult r = c->api.mem_alloc(&p, c->chunk);
    if (r != CUDA_SUCCESS)
        return CUDA_ERROR_UNKNOWN;
    r = c->api.mem_free(p + 256);
    if (c->api.mem_free(p) != CUDA_SUCCESS)
        fprintf(stderr, "client: the real free after an interior free failed\n");
    return r;
}

/* Device memory the shim never saw: a mapped VMM address range. */
static CUresult bad_foreign(client_t *c)
{
    client_obj_t o = {0};
    CUmemAllocationProp prop = vmm_prop();
    if (c->api.vmm_granularity(&c->granularity, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED) ||
        alloc_vmm(c, &o) != CUDA_SUCCESS)
        return CUDA_ERROR_UNKNOWN;
    CUresult r = c->api.mem_free(o.ptr);
    if (free_vmm(c, &o) != CUDA_SUCCESS)
        fprintf(stderr, "client: the VMM teardown after a foreign free failed\n");
    return r;
}

static CUresult bad_handle(client_t *c)
{
    return c->api.array_destroy((CUarray)(uintptr_t)0x1234);
}

static CUresult bad_null(client_t *c)
{
    return c->api.mem_free(0);
}

/* A NULL handle: the driver's own answer, as for a NULL pointer. */
static CUresult bad_null_handle(client_t *c)
{
    return c->api.array_destroy(NULL);
}

static const struct {
    const char *name;
    CUresult (*run)(client_t *c);
} client_bad[] = {
    {"fake", bad_fake}, {"freed", bad_freed}, {"host", bad_host}, {"interior", bad_interior},
    {"foreign", bad_foreign}, {"handle", bad_handle}, {"null", bad_null},
    {"null_handle", bad_null_handle},
};

/* $CLIENT_BADPTR names one class (default: every class in turn). */
static int client_badptr(client_t *c)
{
    const char *only = getenv("CLIENT_BADPTR");
    for (size_t i = 0; i < sizeof client_bad / sizeof client_bad[0]; i++) {
        if (only && *only && strcmp(only, client_bad[i].name))
            continue;
        client_tally_t t = {0};
        char name[64];
        snprintf(name, sizeof name, "badptr_%s", client_bad[i].name);
        fflush(stdout);
        t.first = client_bad[i].run(c);
        client_print(c, name, &t, NULL);
        fflush(stdout);
    }
    return 0;
}

/* Allocates MAX_CHUNKS plain chunks and exits without freeing them. */
static int client_leak(client_t *c)
{
    client_tally_t t = {0};
    for (size_t i = 0; i < c->max; i++) {
        CUdeviceptr p;
        if (c->api.mem_alloc(&p, c->chunk) != CUDA_SUCCESS)
            break;
        t.allocs++;
        t.bytes += c->chunk;
    }
    client_print(c, "leak", &t, NULL);
    fflush(stdout);
    return 0;
}

/* Allocates MAX_CHUNKS plain chunks, then dies of SIGSEGV. */
static int client_segv(client_t *c)
{
    client_leak(c);
    raise(SIGSEGV);
    return 4; /* not reached unless SIGSEGV is ignored */
}

/* Allocates MAX_CHUNKS plain chunks, then ends through _exit: no atexit
 * handler runs (as in every Python multiprocessing worker). */
static int client_quit(client_t *c)
{
    client_leak(c);
    _exit(0);
}

/* Counts the alloc lines in the audit log (VRAMGUARD_AUDIT) right now. */
static int client_log_allocs(void)
{
    const char *path = getenv("VRAMGUARD_AUDIT");
    FILE *f = path ? fopen(path, "r") : NULL;
    char line[4096];
    int n = 0;
    while (f && fgets(line, sizeof line, f))
        n += strstr(line, "\"op\":\"alloc\"") != NULL;
    if (f)
        fclose(f);
    return n;
}

/* One allocation, 20 ms of quiet, another: the first is stale by then and
 * must be in the log while the process still runs. Prints "path=stale
 * rc=RC seen=N", N the alloc lines the log held before exit. */
static int client_stale(client_t *c)
{
    CUdeviceptr p[2];
    CUresult r = c->api.mem_alloc(&p[0], c->chunk);
    usleep(20000);
    if (r == CUDA_SUCCESS)
        r = c->api.mem_alloc(&p[1], c->chunk);
    printf("path=stale rc=%d seen=%d\n", (int)r, client_log_allocs());
    return 0;
}

/* The program's own SIGINT handler, without SA_RESTART, installed before
 * the driver starts (as Python's is): a blocking read must still end with
 * EINTR when SIGINT comes. */
static void client_on_sigint(int sig) { (void)sig; }

static void client_sigint_setup(void)
{
    struct sigaction sa = {.sa_handler = client_on_sigint};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
}

static int client_sigint_fd[2];

static void *client_sigint_sender(void *arg)
{
    (void)arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* the main thread takes it */
    usleep(100000);
    kill(getpid(), SIGINT);
    usleep(2000000);
    (void)!write(client_sigint_fd[1], "x", 1); /* ends a restarted read */
    return NULL;
}

/* Prints "path=sigint eintr=E ms=T": whether read(2) ended with EINTR, and when. */
static int client_sigint(client_t *c)
{
    CUdeviceptr p;
    if (c->api.mem_alloc(&p, c->chunk) != CUDA_SUCCESS || pipe(client_sigint_fd) != 0)
        return 4;
    pthread_t t;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pthread_create(&t, NULL, client_sigint_sender, NULL);
    char b;
    ssize_t n = read(client_sigint_fd[0], &b, 1);
    int eintr = n < 0 && errno == EINTR;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("path=sigint eintr=%d ms=%ld\n", eintr,
           (long)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000));
    fflush(stdout);
    pthread_join(t, NULL);
    c->api.mem_free(p);
    return 0;
}

static const struct {
    const char *name;
    int (*run)(client_t *c);
} client_specials[] = {
    {"quit", client_quit},
    {"stale", client_stale},
    {"sigint", client_sigint},
    {"rtldnext", client_rtldnext},
    {"meminfo", client_meminfo},
    {"freeloop", client_freeloop},
    {"race", client_race},
    {"fork", client_fork},
    {"vfork", client_vfork},
    {"pooltrim", client_pooltrim},
    {"badptr", client_badptr},
    {"leak", client_leak},
    {"segv", client_segv},
};

/* ---------------------------------------------------------------- main */

static int client_usage(void)
{
    fprintf(stderr, "usage: client PATH CHUNK [MAX_CHUNKS [FAILURES]]\n"
                    "  PATH: plain pitch managed async async_ptsz pool vmm array array3d mipmap\n"
                    "        graph graph_node capture meminfo freeloop race fork vfork pooltrim\n"
                    "        badptr leak segv quit stale sigint\n");
    return 2;
}

static int client_setup(client_t *c)
{
    CUresult r = c->api.init(0);
    if (r == CUDA_SUCCESS)
        r = c->api.device_get(&c->dev, 0);
    if (r == CUDA_SUCCESS)
        r = c->api.primary_retain(&c->ctx, c->dev);
    if (r == CUDA_SUCCESS)
        r = c->api.ctx_set_current(c->ctx);
    if (r != CUDA_SUCCESS)
        fprintf(stderr, "client: setup failed: %s\n", client_rcname(c, r));
    return r == CUDA_SUCCESS ? 0 : 3;
}

/* Parses the command line, sets up device 0 and runs the path. `c->api`
 * has been filled by the caller. */
static int client_main(client_t *c, int argc, char **argv)
{
    if (argc < 3 || argc > 5)
        return client_usage();
    /* CLIENT_UNLINK_SELF=1: the program's file goes while it runs, as an
     * upgrade replaces a running binary (tests/test_audit.c). */
    if (getenv("CLIENT_UNLINK_SELF") && unlink(argv[0]) != 0) {
        perror("client: unlink");
        return 3;
    }
    c->chunk = client_parse_size(argv[2]);
    c->max = argc > 3 ? strtoul(argv[3], NULL, 10) : 10000;
    c->max_failures = argc > 4 ? strtoul(argv[4], NULL, 10) : 1;
    if (!c->chunk || !c->max || !c->max_failures)
        return client_usage();
    int (*special)(client_t *) = NULL;
    for (size_t i = 0; i < sizeof client_specials / sizeof client_specials[0]; i++)
        if (!strcmp(argv[1], client_specials[i].name))
            special = client_specials[i].run;
    for (size_t i = 0; i < sizeof client_paths / sizeof client_paths[0]; i++)
        if (!strcmp(argv[1], client_paths[i].name))
            c->path = &client_paths[i];
    if (!special && !c->path)
        return client_usage();
    if (special == client_sigint)
        client_sigint_setup();
    int rc = client_setup(c);
    if (rc != 0)
        return rc;
    return special ? special(c) : client_run_path(c);
}

#endif /* VG_CLIENT_H */
