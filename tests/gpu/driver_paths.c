/*
 * driver_paths.c — every way a process can take device memory from the
 * driver, each driven until the first error, in 64 MiB units.
 *
 * Linked with -lcuda (the toolkit stub), so it calls whatever libcuda.so.1
 * the loader finds, and under LD_PRELOAD the shim's exported names. The
 * per-thread-stream twin is fetched the way cudart fetches it, through
 * cuGetProcAddress with CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM.
 *
 *   driver_paths [--cap N] [--budget BYTES] [PATH...]
 *
 * Without --budget (native): each path must reach its cap (N units, default
 * 48 = 3 GiB; managed at most 40) without an error. With --budget: each
 * path must stop with CUDA_ERROR_OUT_OF_MEMORY with no more than BYTES
 * held, and after at least half of BYTES (a budget that refuses everything
 * is not a budget). Everything is freed before the next path starts, and
 * cuMemGetInfo's free must come back at the end.
 */
#include <stdbool.h>
#include <string.h>

#include <cuda.h>

#include "gpu_common.h"

#define UNIT (64 * MIB)
#define MAX_UNITS 256
#define MANAGED_CAP 40 /* never ask for more managed memory than is free */

typedef CUresult (*alloc_async_fn)(CUdeviceptr *, size_t, CUstream);
typedef CUresult (*free_async_fn)(CUdeviceptr, CUstream);

struct unit {
    CUdeviceptr ptr;
    CUmemGenericAllocationHandle handle;
    CUarray array;
    CUmipmappedArray mipmap;
};

static struct {
    CUdevice dev;
    CUstream stream;
    CUmemoryPool pool;     /* the "pool" path's own pool */
    CUgraph graph;         /* the "graph" path's graph */
    alloc_async_fn alloc_ptsz;
    free_async_fn free_ptsz;
} g;

static const char *cu_name(CUresult rc)
{
    const char *s = NULL;
    return cuGetErrorName(rc, &s) == CUDA_SUCCESS && s ? s : "CUDA_ERROR_?";
}

static CUmemLocation device_location(void)
{
    CUmemLocation loc = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = (int)g.dev};
    return loc;
}

/* ---- one allocation and its undo, per path ---- */

static CUresult plain_alloc(struct unit *u) { return cuMemAlloc(&u->ptr, UNIT); }
static void plain_free(struct unit *u) { cuMemFree(u->ptr); }

static CUresult pitch_alloc(struct unit *u)
{
    size_t pitch = 0;
    return cuMemAllocPitch(&u->ptr, &pitch, 8192, UNIT / 8192, 16);
}

static CUresult managed_alloc(struct unit *u)
{
    return cuMemAllocManaged(&u->ptr, UNIT, CU_MEM_ATTACH_GLOBAL);
}

static CUresult async_alloc(struct unit *u) { return cuMemAllocAsync(&u->ptr, UNIT, g.stream); }
static void async_free(struct unit *u) { cuMemFreeAsync(u->ptr, g.stream); }

static CUresult ptsz_alloc(struct unit *u) { return g.alloc_ptsz(&u->ptr, UNIT, 0); }
static void ptsz_free(struct unit *u) { g.free_ptsz(u->ptr, 0); }

static CUresult pool_alloc(struct unit *u)
{
    return cuMemAllocFromPoolAsync(&u->ptr, UNIT, g.pool, g.stream);
}

static CUresult vmm_alloc(struct unit *u)
{
    CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                .location = device_location()};
    CUmemAccessDesc access = {.location = device_location(),
                              .flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    CUresult rc = cuMemCreate(&u->handle, UNIT, &prop, 0);
    if (rc != CUDA_SUCCESS)
        return rc;
    if ((rc = cuMemAddressReserve(&u->ptr, UNIT, 0, 0, 0)) != CUDA_SUCCESS)
        goto out_release;
    if ((rc = cuMemMap(u->ptr, UNIT, 0, u->handle, 0)) != CUDA_SUCCESS)
        goto out_free;
    if ((rc = cuMemSetAccess(u->ptr, UNIT, &access, 1)) == CUDA_SUCCESS)
        return rc;
    cuMemUnmap(u->ptr, UNIT);
out_free:
    cuMemAddressFree(u->ptr, UNIT);
out_release:
    cuMemRelease(u->handle);
    return rc;
}

static void vmm_free(struct unit *u)
{
    cuMemUnmap(u->ptr, UNIT);
    cuMemAddressFree(u->ptr, UNIT);
    cuMemRelease(u->handle);
}

static CUresult array3d_alloc(struct unit *u) /* float4 256 x 256 x 64 = 64 MiB */
{
    CUDA_ARRAY3D_DESCRIPTOR d = {.Width = 256, .Height = 256, .Depth = 64,
                                 .Format = CU_AD_FORMAT_FLOAT, .NumChannels = 4};
    return cuArray3DCreate(&u->array, &d);
}

static CUresult array2d_alloc(struct unit *u) /* float4 2048 x 2048 = 64 MiB */
{
    CUDA_ARRAY_DESCRIPTOR d = {.Width = 2048, .Height = 2048,
                               .Format = CU_AD_FORMAT_FLOAT, .NumChannels = 4};
    return cuArrayCreate(&u->array, &d);
}

static void array_free(struct unit *u) { cuArrayDestroy(u->array); }

static CUresult mipmap_alloc(struct unit *u) /* one level of float4 2048 x 2048 */
{
    CUDA_ARRAY3D_DESCRIPTOR d = {.Width = 2048, .Height = 2048,
                                 .Format = CU_AD_FORMAT_FLOAT, .NumChannels = 4};
    return cuMipmappedArrayCreate(&u->mipmap, &d, 1);
}

static void mipmap_free(struct unit *u) { cuMipmappedArrayDestroy(u->mipmap); }

static CUresult graph_alloc(struct unit *u)
{
    CUgraphNode node;
    CUDA_MEM_ALLOC_NODE_PARAMS p = {0};
    p.poolProps.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
    p.poolProps.location = device_location();
    p.bytesize = UNIT;
    CUresult rc = cuGraphAddMemAllocNode(&node, g.graph, NULL, 0, &p);
    if (rc == CUDA_SUCCESS)
        u->ptr = p.dptr;
    return rc;
}

static void no_free(struct unit *u) { (void)u; } /* the graph goes as a whole */

/* ---- set-up and tear-down around a path ---- */

static CUresult nothing(void) { return CUDA_SUCCESS; }

static CUresult stream_done(void)
{
    CUmemoryPool def = NULL;
    CUresult rc = cuStreamSynchronize(g.stream);
    cuStreamSynchronize(0);
    if (cuDeviceGetDefaultMemPool(&def, g.dev) == CUDA_SUCCESS)
        cuMemPoolTrimTo(def, 0);
    return rc;
}

static CUresult pool_begin(void)
{
    CUmemPoolProps props = {.allocType = CU_MEM_ALLOCATION_TYPE_PINNED,
                            .handleTypes = CU_MEM_HANDLE_TYPE_NONE,
                            .location = device_location()};
    return cuMemPoolCreate(&g.pool, &props);
}

static CUresult pool_end(void)
{
    cuStreamSynchronize(g.stream);
    CUresult rc = cuMemPoolDestroy(g.pool);
    g.pool = NULL;
    return rc;
}

static CUresult ptsz_begin(void)
{
    CUdriverProcAddressQueryResult st;
    CUresult rc = cuGetProcAddress("cuMemAllocAsync", (void **)&g.alloc_ptsz, 12000,
                                   CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &st);
    if (rc == CUDA_SUCCESS)
        rc = cuGetProcAddress("cuMemFreeAsync", (void **)&g.free_ptsz, 12000,
                              CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &st);
    if (rc == CUDA_SUCCESS && (!g.alloc_ptsz || !g.free_ptsz))
        rc = CUDA_ERROR_NOT_FOUND;
    return rc;
}

static CUresult graph_begin(void) { return cuGraphCreate(&g.graph, 0); }

static CUresult graph_end(void)
{
    CUresult rc = cuGraphDestroy(g.graph);
    g.graph = NULL;
    return rc;
}

struct path {
    const char *name;
    CUresult (*begin)(void);
    CUresult (*alloc)(struct unit *);
    void (*release)(struct unit *);
    CUresult (*end)(void);
    int cap; /* 0: the --cap value */
};

static const struct path paths[] = {
    {"plain", nothing, plain_alloc, plain_free, nothing, 0},
    {"pitch", nothing, pitch_alloc, plain_free, nothing, 0},
    {"managed", nothing, managed_alloc, plain_free, nothing, MANAGED_CAP},
    {"async", nothing, async_alloc, async_free, stream_done, 0},
    {"async_ptsz", ptsz_begin, ptsz_alloc, ptsz_free, stream_done, 0},
    {"pool", pool_begin, pool_alloc, async_free, pool_end, 0},
    {"vmm", nothing, vmm_alloc, vmm_free, nothing, 0},
    {"array", nothing, array3d_alloc, array_free, nothing, 0},
    {"array2d", nothing, array2d_alloc, array_free, nothing, 0},
    {"mipmap", nothing, mipmap_alloc, mipmap_free, nothing, 0},
    {"graph", graph_begin, graph_alloc, no_free, graph_end, 0},
};

static uint64_t mem_free(void)
{
    size_t f = 0, t = 0;
    cuMemGetInfo(&f, &t);
    return f;
}

static void run_path(const struct path *p, int cap, uint64_t budget)
{
    static struct unit units[MAX_UNITS];
    char check[64];
    snprintf(check, sizeof check, "path_%s", p->name);
    if (p->cap && p->cap < cap)
        cap = p->cap;
    uint64_t free0 = mem_free();
    CUresult rc = p->begin();
    if (rc != CUDA_SUCCESS) {
        gpu_row(check, "FAIL", "set-up failed: %s", cu_name(rc));
        return;
    }
    int n = 0;
    while (n < cap && (rc = p->alloc(&units[n])) == CUDA_SUCCESS)
        n++;
    uint64_t held = (uint64_t)n * UNIT;
    for (int i = n - 1; i >= 0; i--)
        p->release(&units[i]);
    CUresult end = p->end();
    uint64_t free1 = mem_free();
    if (free1 + 128 * MIB < free0) {
        /* everything was freed (and pools trimmed): what cuMemGetInfo
         * still withholds is a charge the budget kept */
        char stale[80];
        snprintf(stale, sizeof stale, "stale_charge_after_%s", p->name);
        gpu_row(stale, "FAIL", "cuMemGetInfo free %.3f GiB before, %.3f GiB after all was freed",
                gpu_gib(free0), gpu_gib(free1));
    }
    bool ok;
    if (budget == 0)
        ok = n == cap && end == CUDA_SUCCESS;
    else
        ok = rc == CUDA_ERROR_OUT_OF_MEMORY && held <= budget && held >= budget / 2 &&
             end == CUDA_SUCCESS;
    gpu_check(check, ok, "%d x 64 MiB = %.2f GiB, then %s (cap %d)%s%s; free before %.2f GiB",
              n, gpu_gib(held), n == cap ? "cap reached" : cu_name(rc), cap,
              end == CUDA_SUCCESS ? "" : ", tear-down ", end == CUDA_SUCCESS ? "" : cu_name(end),
              gpu_gib(free0));
}

/* A free of a pointer nobody handed out, and a double free, must come back
 * as the driver's own CUDA_ERROR_INVALID_VALUE, never -1 and never success. */
static void check_bad_frees(void)
{
    CUdeviceptr p = 0;
    CUresult fake = cuMemFree((CUdeviceptr)0x7f8000000000ull);
    CUresult a = cuMemAlloc(&p, MIB);
    CUresult f1 = a == CUDA_SUCCESS ? cuMemFree(p) : a;
    CUresult f2 = a == CUDA_SUCCESS ? cuMemFree(p) : a;
    gpu_check("bad_frees", fake == CUDA_ERROR_INVALID_VALUE && f1 == CUDA_SUCCESS &&
              f2 == CUDA_ERROR_INVALID_VALUE,
              "fake pointer %s (%d), free %s, double free %s (%d)", cu_name(fake), (int)fake,
              cu_name(f1), cu_name(f2), (int)f2);
}

int main(int argc, char **argv)
{
    int cap = 48;
    uint64_t budget = 0;
    int first = 1;
    CUcontext ctx;
    for (; first < argc && strncmp(argv[first], "--", 2) == 0; first += 2) {
        if (first + 1 >= argc)
            break;
        if (!strcmp(argv[first], "--cap"))
            cap = atoi(argv[first + 1]);
        else if (!strcmp(argv[first], "--budget"))
            budget = strtoull(argv[first + 1], NULL, 0);
    }
    if (cap < 1 || cap > MAX_UNITS)
        cap = 48;
    setvbuf(stdout, NULL, _IOLBF, 0);
    CUresult rc = cuInit(0);
    if (rc == CUDA_SUCCESS)
        rc = cuDeviceGet(&g.dev, 0);
    if (rc == CUDA_SUCCESS)
        rc = cuDevicePrimaryCtxRetain(&ctx, g.dev);
    if (rc == CUDA_SUCCESS)
        rc = cuCtxSetCurrent(ctx);
    if (rc == CUDA_SUCCESS)
        rc = cuStreamCreate(&g.stream, CU_STREAM_NON_BLOCKING);
    if (rc != CUDA_SUCCESS) {
        gpu_row("driver_init", "FAIL", "%s", cu_name(rc));
        return 1;
    }
    size_t free0 = 0, total = 0, devtotal = 0;
    cuMemGetInfo(&free0, &total);
    cuDeviceTotalMem(&devtotal, g.dev);
    printf("cuMemGetInfo: free %zu total %zu; cuDeviceTotalMem %zu\n", free0, total, devtotal);
    gpu_check("meminfo_total", budget ? total == budget && devtotal == budget
                                      : total > 0 && devtotal == total,
              "cuMemGetInfo total %.3f GiB free %.3f GiB, cuDeviceTotalMem %.3f GiB%s",
              gpu_gib(total), gpu_gib(free0), gpu_gib(devtotal),
              budget ? " (both must read the budget)" : "");
    check_bad_frees();
    size_t npaths = sizeof paths / sizeof paths[0];
    for (size_t i = 0; i < npaths; i++) {
        bool wanted = first >= argc;
        for (int a = first; a < argc; a++)
            wanted = wanted || strcmp(argv[a], paths[i].name) == 0;
        if (wanted)
            run_path(&paths[i], cap, budget);
    }
    size_t free1 = mem_free();
    gpu_check("charges_returned", free1 + 128 * MIB >= free0,
              "cuMemGetInfo free %.3f GiB at start, %.3f GiB after every path", gpu_gib(free0),
              gpu_gib(free1));
    return gpu_failures ? 1 : 0;
}
