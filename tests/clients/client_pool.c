/*
 * client_pool.c — a client for the cache-mode tests (tests/test_cache_mode.c,
 * VRAMGUARD_POOL=cache, docs/pool.md): small cuMemAlloc requests, what the
 * program is told about them (address ranges, pointer attributes, IPC),
 * bad frees, the budget, a primary-context reset, and many threads.
 *
 *   client_pool CASE SIZE [COUNT [EXTRA]]
 *   stdout: "path=CASE key=value ..." lines, numbers in decimal (addresses
 *           relative to the block they concern, so they fit a long long)
 *   exit:   0 ran (whatever the driver answered), 2 usage, 3 setup failed
 *
 * CLIENT_API=cudart reaches the driver as cudart does (cuGetProcAddress by
 * base name and version, tests/clients/client_cudart.c); the default is
 * direct linked calls. Either way the primary context of device 0 is
 * current (cuDevicePrimaryCtxRetain + cuCtxSetCurrent), as under cudart.
 *
 * The test driver's own view (how many cuMemAlloc-family allocations are
 * live, which allocation holds an address) is read through fakecuda_*
 * functions looked up with dlsym, so the program still runs on a real
 * driver (those fields then read -1).
 *
 * Cases (SIZE in bytes or with KiB/MiB; defaults in brackets):
 *   count SIZE N [ASYNC]  N cuMemAlloc_v2 of SIZE held together, then freed
 *                         (ASYNC=1: with cuMemFreeAsync), then N more
 *   count_legacy SIZE N   the same through the legacy 32-bit cuMemAlloc
 *   views SIZE            address range, attributes, IPC of a block; freed
 *   routes SIZE           requests cache mode must leave to the driver
 *   random MAX N [SEED]   N random alloc/free of 1..MAX bytes, shadow-checked
 *   budget SIZE           the budget with the cache full (VRAMGUARD_BUDGET),
 *                         then filled with SIZE blocks
 *   badfree SIZE          double, interior and never-made frees in a chunk
 *   audit SIZE            blocks of several sizes, one line each, freed
 *   reset SIZE N          N blocks, cuDevicePrimaryCtxReset_v2, N more
 *   fork SIZE N           a forked child makes and frees N blocks, twice
 *   threads MAX N [T]     T [16] threads, N alloc/free each of 1..MAX bytes
 */
#include <cuda.h>
#include <cudaTypedefs.h>
#include <dlfcn.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client_size.h"
#include "cudart_way.h"

#define KiB 1024ull
#define MiB (1024ull * KiB)
#define CHUNK_SMALL (2 * MiB) /* the chunk of classes <= 256 KiB (docs/pool.md) */

/* The legacy 32-bit ABI and the cuCtxCreate generation whose prototype we
 * use: cuda.h renames both, so the linked way binds the ABI names here. */
typedef CUresult (*legacy_alloc_fn)(unsigned int *dptr, unsigned int bytesize);
typedef CUresult (*ctx_create_fn)(CUcontext *pctx, unsigned int flags, CUdevice dev);
CUresult CUDAAPI pool_legacy_alloc(unsigned int *dptr, unsigned int bytesize)
    __asm__("cuMemAlloc");
CUresult CUDAAPI pool_ctx_create_v2(CUcontext *pctx, unsigned int flags, CUdevice dev)
    __asm__("cuCtxCreate_v2");

/* X(field, type, symbol for linking, base name, version for cuGetProcAddress) */
#define POOL_SYMS(X)                                                                               \
    X(init, PFN_cuInit_v2000, cuInit, "cuInit", 2000)                                              \
    X(error_name, PFN_cuGetErrorName_v6000, cuGetErrorName, "cuGetErrorName", 6000)                \
    X(device_get, PFN_cuDeviceGet_v2000, cuDeviceGet, "cuDeviceGet", 2000)                         \
    X(primary_retain, PFN_cuDevicePrimaryCtxRetain_v7000, cuDevicePrimaryCtxRetain,                \
      "cuDevicePrimaryCtxRetain", 7000)                                                            \
    X(primary_reset, PFN_cuDevicePrimaryCtxReset_v11000, cuDevicePrimaryCtxReset_v2,               \
      "cuDevicePrimaryCtxReset", 11000)                                                            \
    X(ctx_set_current, PFN_cuCtxSetCurrent_v4000, cuCtxSetCurrent, "cuCtxSetCurrent", 4000)        \
    X(ctx_create, ctx_create_fn, pool_ctx_create_v2, "cuCtxCreate", 3020)                          \
    X(ctx_destroy, PFN_cuCtxDestroy_v4000, cuCtxDestroy_v2, "cuCtxDestroy", 4000)                  \
    X(ctx_sync, PFN_cuCtxSynchronize_v2000, cuCtxSynchronize, "cuCtxSynchronize", 2000)            \
    X(stream_sync, PFN_cuStreamSynchronize_v2000, cuStreamSynchronize, "cuStreamSynchronize",      \
      2000)                                                                                        \
    X(mem_alloc, PFN_cuMemAlloc_v3020, cuMemAlloc_v2, "cuMemAlloc", 3020)                          \
    X(mem_alloc_legacy, legacy_alloc_fn, pool_legacy_alloc, "cuMemAlloc", 2000)                    \
    X(mem_free, PFN_cuMemFree_v3020, cuMemFree_v2, "cuMemFree", 3020)                              \
    X(mem_alloc_pitch, PFN_cuMemAllocPitch_v3020, cuMemAllocPitch_v2, "cuMemAllocPitch", 3020)     \
    X(mem_alloc_managed, PFN_cuMemAllocManaged_v6000, cuMemAllocManaged, "cuMemAllocManaged",      \
      6000)                                                                                        \
    X(mem_alloc_async, PFN_cuMemAllocAsync_v11020, cuMemAllocAsync, "cuMemAllocAsync", 11020)      \
    X(mem_free_async, PFN_cuMemFreeAsync_v11020, cuMemFreeAsync, "cuMemFreeAsync", 11020)          \
    X(get_range, PFN_cuMemGetAddressRange_v3020, cuMemGetAddressRange_v2,                          \
      "cuMemGetAddressRange", 3020)                                                                \
    X(ptr_attr, PFN_cuPointerGetAttribute_v4000, cuPointerGetAttribute, "cuPointerGetAttribute",   \
      4000)                                                                                        \
    X(ptr_attrs, PFN_cuPointerGetAttributes_v7000, cuPointerGetAttributes,                         \
      "cuPointerGetAttributes", 7000)                                                              \
    X(ipc_get, PFN_cuIpcGetMemHandle_v4010, cuIpcGetMemHandle, "cuIpcGetMemHandle", 4010)          \
    X(memset8, PFN_cuMemsetD8_v3020, cuMemsetD8_v2, "cuMemsetD8", 3020)                            \
    X(htod, PFN_cuMemcpyHtoD_v3020, cuMemcpyHtoD_v2, "cuMemcpyHtoD", 3020)                         \
    X(dtoh, PFN_cuMemcpyDtoH_v3020, cuMemcpyDtoH_v2, "cuMemcpyDtoH", 3020)                         \
    X(mem_get_info, PFN_cuMemGetInfo_v3020, cuMemGetInfo_v2, "cuMemGetInfo", 3020)                 \
    X(vmm_create, PFN_cuMemCreate_v10020, cuMemCreate, "cuMemCreate", 10020)                       \
    X(vmm_release, PFN_cuMemRelease_v10020, cuMemRelease, "cuMemRelease", 10020)                   \
    X(vmm_reserve, PFN_cuMemAddressReserve_v10020, cuMemAddressReserve, "cuMemAddressReserve",     \
      10020)                                                                                       \
    X(vmm_address_free, PFN_cuMemAddressFree_v10020, cuMemAddressFree, "cuMemAddressFree", 10020)  \
    X(vmm_map, PFN_cuMemMap_v10020, cuMemMap, "cuMemMap", 10020)                                   \
    X(vmm_unmap, PFN_cuMemUnmap_v10020, cuMemUnmap, "cuMemUnmap", 10020)                           \
    X(vmm_set_access, PFN_cuMemSetAccess_v10020, cuMemSetAccess, "cuMemSetAccess", 10020)          \
    X(vmm_granularity, PFN_cuMemGetAllocationGranularity_v10020, cuMemGetAllocationGranularity,    \
      "cuMemGetAllocationGranularity", 10020)

typedef struct api {
#define POOL_FIELD_(field, type, abi, base, ver) type field;
    POOL_SYMS(POOL_FIELD_)
#undef POOL_FIELD_
} api_t;

static api_t cu;
static CUdevice dev;
static CUcontext primary;

/* The test driver's own view; NULL on a real driver. */
static struct {
    size_t (*live)(int dev);
    size_t (*used)(int dev);
    int (*range)(unsigned long long ptr, unsigned long long *base, size_t *size,
                 unsigned long long *id);
} drv;

/* ------------------------------------------------------------ resolving */

static int resolve_linked(void)
{
#define POOL_LINK_(field, type, abi, base, ver) cu.field = (type)&abi;
    POOL_SYMS(POOL_LINK_)
#undef POOL_LINK_
    return 0;
}

/* cudart's way (cudart_way.h). */
static int resolve_cudart(void)
{
    PFN_cuGetProcAddress_v12000 get = cudart_get_proc();
    if (!get) {
        fprintf(stderr, "client_pool: no cuGetProcAddress\n");
        return -1;
    }
#define POOL_PROC_(field, type, abi, base, ver)                                                    \
    if (!(cu.field = (type)by_proc(get, base, ver))) {                                             \
        fprintf(stderr, "client_pool: cannot resolve %s (%d)\n", base, ver);                       \
        return -1;                                                                                 \
    }
    POOL_SYMS(POOL_PROC_)
#undef POOL_PROC_
    return 0;
}

typedef enum { WITH_PRIMARY, WITHOUT_PRIMARY } setup_t;

static int setup(setup_t primary_ctx)
{
    const char *how = getenv("CLIENT_API");
    int r = how && !strcmp(how, "cudart") ? resolve_cudart() : resolve_linked();
    if (r != 0)
        return 3;
    drv.live = (size_t(*)(int))dlsym(RTLD_DEFAULT, "fakecuda_live_allocs");
    drv.used = (size_t(*)(int))dlsym(RTLD_DEFAULT, "fakecuda_used_bytes");
    *(void **)&drv.range = dlsym(RTLD_DEFAULT, "fakecuda_range_of");
    CUresult rc = cu.init(0);
    if (rc == CUDA_SUCCESS)
        rc = cu.device_get(&dev, 0);
    if (rc == CUDA_SUCCESS && primary_ctx == WITH_PRIMARY)
        rc = cu.primary_retain(&primary, dev);
    if (rc == CUDA_SUCCESS && primary_ctx == WITH_PRIMARY)
        rc = cu.ctx_set_current(primary);
    if (rc != CUDA_SUCCESS) {
        fprintf(stderr, "client_pool: setup failed: %d\n", (int)rc);
        return 3;
    }
    return 0;
}

/* ------------------------------------------------------------ helpers */

static long long drv_live(void) { return drv.live ? (long long)drv.live(0) : -1; }
static long long drv_used(void) { return drv.used ? (long long)drv.used(0) : -1; }

/* The driver's allocation holding p: 1 with base, size, id; 0 none; -1
 * unknown (no test driver). */
static int drv_range(CUdeviceptr p, CUdeviceptr *base, size_t *size, unsigned long long *id)
{
    unsigned long long b = 0, i = 0;
    size_t s = 0;
    if (!drv.range)
        return -1;
    int found = drv.range(p, &b, &s, &i);
    if (base)
        *base = found ? b : 0;
    if (size)
        *size = found ? s : 0;
    if (id)
        *id = found ? i : 0;
    return found;
}

/* Budget use as the program sees it: total - free (cuMemGetInfo_v2). */
static long long seen_used(long long *total)
{
    size_t f = 0, t = 0;
    if (cu.mem_get_info(&f, &t) != CUDA_SUCCESS)
        return -1;
    if (total)
        *total = (long long)t;
    return (long long)(t - f);
}

/* One output line, "path=CASE k=v ...", built piece by piece. */
static char line[8192];

static void out_begin(const char *name)
{
    snprintf(line, sizeof line, "path=%s", name);
}

static void out(const char *key, long long v)
{
    size_t n = strlen(line);
    snprintf(line + n, sizeof line - n, " %s=%lld", key, v);
}

static void out_str(const char *key, const char *v)
{
    size_t n = strlen(line);
    snprintf(line + n, sizeof line - n, " %s=%s", key, v);
}

static void out_end(void)
{
    printf("%s\n", line);
    fflush(stdout);
}

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

/* 1..max, log-uniform: as many small sizes as large ones, max included. */
static size_t random_size(uint64_t *s, size_t max)
{
    unsigned bits = 0;
    while ((2ull << bits) <= max)
        bits++;
    size_t span = (size_t)1 << (rnd(s) % (bits + 1));
    size_t v = 1 + (size_t)(rnd(s) % span);
    return v > max ? max : v;
}

/* Fills a block: its first 8 bytes are `seq` (fewer if it is smaller), the
 * rest the byte `tag`. Returns the first failing CUresult. */
static CUresult fill(CUdeviceptr p, size_t size, uint64_t seq, unsigned char tag)
{
    CUresult rc = cu.memset8(p, tag, size);
    if (rc == CUDA_SUCCESS)
        rc = cu.htod(p, &seq, size < 8 ? size : 8);
    return rc;
}

/* Checks what fill() wrote: all of a block up to 64 KiB, else its first,
 * middle and last 4 KiB. 1 intact, 0 corrupt, -1 a copy failed. */
static int intact(CUdeviceptr p, size_t size, uint64_t seq, unsigned char tag)
{
    static _Thread_local unsigned char buf[64 * KiB];
    size_t parts[3][2] = {{0, size}, {0, 0}, {0, 0}};
    if (size > sizeof buf) {
        parts[0][1] = 4 * KiB;
        parts[1][0] = size / 2 - 2 * KiB, parts[1][1] = 4 * KiB;
        parts[2][0] = size - 4 * KiB, parts[2][1] = 4 * KiB;
    }
    for (int k = 0; k < 3 && parts[k][1]; k++) {
        size_t off = parts[k][0], n = parts[k][1];
        if (cu.dtoh(buf, p + off, n) != CUDA_SUCCESS)
            return -1;
        for (size_t i = 0; i < n; i++) {
            size_t at = off + i;
            unsigned char want = at < 8 ? (unsigned char)(seq >> (8 * at)) : tag;
            if (buf[i] != want)
                return 0;
        }
    }
    return 1;
}

/* ------------------------------------------------------------ count */

/* How count frees its blocks. */
typedef enum { FREE_SYNC, FREE_ASYNC } free_how_t;

/* Allocates n blocks of size into p; how many it made, *rc the first
 * failure. */
static size_t count_fill(CUdeviceptr *p, size_t size, size_t n, bool legacy, CUresult *rc)
{
    size_t made = 0;
    *rc = CUDA_SUCCESS;
    for (; made < n; made++) {
        unsigned int p32 = 0;
        *rc = legacy ? cu.mem_alloc_legacy(&p32, (unsigned)size) : cu.mem_alloc(&p[made], size);
        if (legacy)
            p[made] = p32;
        if (*rc != CUDA_SUCCESS)
            break;
    }
    return made;
}

/* Frees p[0..n) newest first; how many frees failed. */
static long long count_free(const CUdeviceptr *p, size_t n, free_how_t how)
{
    long long failed = 0;
    for (size_t i = n; i > 0; i--)
        failed += (how == FREE_ASYNC ? cu.mem_free_async(p[i - 1], 0) : cu.mem_free(p[i - 1])) !=
                  CUDA_SUCCESS;
    if (how == FREE_ASYNC)
        failed += cu.stream_sync(0) != CUDA_SUCCESS;
    return failed;
}

/* What the program and the driver are told about block p of size. */
static void count_describe(CUdeviceptr p, size_t size)
{
    CUdeviceptr b = 0, db = 0;
    size_t s = 0, ds = 0;
    out("range_rc", cu.get_range(&b, &s, p + size - 1));
    out("range_off", (long long)(b - p));
    out("range_size", (long long)s);
    int found = drv_range(p, &db, &ds, NULL);
    out("drv_found", found);
    out("drv_off", found > 0 ? (long long)(p - db) : -1);
    out("drv_size", found > 0 ? (long long)ds : -1);
}

/* N blocks of SIZE held together: how many driver allocations they cost,
 * whether each is 256-aligned, what the driver and the program are told
 * about the first one; then freed (`how`), and N more made and freed: how
 * many driver allocations the second round cost (reuse). */
static int run_count(const char *name, size_t size, size_t n, bool legacy, free_how_t how)
{
    CUdeviceptr *p = calloc(n, sizeof *p), b = 0;
    long long live0 = drv_live(), misaligned = 0;
    CUresult rc;
    if (!p)
        return 3;
    size_t made = count_fill(p, size, n, legacy, &rc);
    long long live1 = drv_live();
    for (size_t i = 0; i < made; i++)
        misaligned += p[i] % 256 != 0;
    out_begin(name);
    out("allocs", (long long)made);
    out("rc", rc);
    out("misaligned", misaligned);
    out("drv_new", live0 < 0 ? -1 : live1 - live0);
    if (made)
        count_describe(p[0], size);
    out("free_failed", count_free(p, made, how));
    out("drv_after_free", live0 < 0 ? -1 : drv_live() - live0);
    out("freed_range_rc", made ? (long long)cu.get_range(&b, NULL, p[made - 1]) : -1);
    long long live2 = drv_live();
    made = count_fill(p, size, n, legacy, &rc);
    out("again_rc", rc);
    out("again_new", live0 < 0 ? -1 : drv_live() - live2);
    out("again_free_failed", count_free(p, made, FREE_SYNC));
    out_end();
    free(p);
    return 0;
}

/* ------------------------------------------------------------ views */

/* A 4-byte boolean attribute read into 8 bytes preset to a pattern: the
 * low half is the value, the high half shows whether more was written. */
typedef union {
    unsigned long long all;
    unsigned int value;
} wide_bool_t;

#define WIDE_PRESET 0xa5a5a5a5a5a5a5a5ull

static void views_range(CUdeviceptr p, size_t size)
{
    static const char *const names[4][3] = {{"r0_rc", "r0_off", "r0_size"},
                                            {"r1_rc", "r1_off", "r1_size"},
                                            {"rmid_rc", "rmid_off", "rmid_size"},
                                            {"rlast_rc", "rlast_off", "rlast_size"}};
    size_t offs[4] = {0, size > 1 ? 1 : 0, size / 2, size - 1};
    for (int i = 0; i < 4; i++) {
        CUdeviceptr b = 0;
        size_t s = 0;
        out(names[i][0], cu.get_range(&b, &s, p + offs[i]));
        out(names[i][1], (long long)(b - p));
        out(names[i][2], (long long)s);
    }
}

static void views_attr(CUdeviceptr p, CUdeviceptr q, CUdeviceptr big, size_t size)
{
    CUdeviceptr start = 0;
    size_t rsize = 0;
    unsigned long long id_p = 0, id_last = 0, id_q = 0, id_big = 0, chunk_id = 0;
    unsigned int memtype = 0;
    wide_bool_t ipc = {.all = WIDE_PRESET};
    out("a_start_rc", cu.ptr_attr(&start, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, p + size / 2));
    out("a_start_off", (long long)(start - p));
    out("a_size_rc", cu.ptr_attr(&rsize, CU_POINTER_ATTRIBUTE_RANGE_SIZE, p + size / 2));
    out("a_size", (long long)rsize);
    out("a_id_rc", cu.ptr_attr(&id_p, CU_POINTER_ATTRIBUTE_BUFFER_ID, p));
    cu.ptr_attr(&id_last, CU_POINTER_ATTRIBUTE_BUFFER_ID, p + size - 1);
    cu.ptr_attr(&id_q, CU_POINTER_ATTRIBUTE_BUFFER_ID, q);
    cu.ptr_attr(&id_big, CU_POINTER_ATTRIBUTE_BUFFER_ID, big);
    drv_range(p, NULL, NULL, &chunk_id);
    /* Ids compared here: they may use bit 63, which a long long field
     * would not carry. */
    out("id_same_in_block", id_p == id_last);
    out("id_differs_q", id_p != id_q);
    out("id_differs_big", id_p != id_big && id_q != id_big);
    out("id_differs_driver", id_p != chunk_id && id_q != chunk_id);
    out("id_is_driver", id_p == chunk_id);
    out("a_ipc_rc", cu.ptr_attr(&ipc.all, CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE, p));
    out("a_ipc", ipc.value);
    out("a_ipc_wrote_4", (ipc.all >> 32) == (WIDE_PRESET >> 32));
    out("a_memtype_rc", cu.ptr_attr(&memtype, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, p));
    out("a_memtype", memtype);
}

static void views_attrs(CUdeviceptr p, size_t size)
{
    CUdeviceptr start = 0;
    size_t rsize = 0;
    unsigned long long id = 0, id_single = 0;
    unsigned int memtype = 0;
    wide_bool_t ipc = {.all = WIDE_PRESET};
    CUpointer_attribute which[] = {CU_POINTER_ATTRIBUTE_RANGE_START_ADDR,
                                   CU_POINTER_ATTRIBUTE_RANGE_SIZE,
                                   CU_POINTER_ATTRIBUTE_BUFFER_ID,
                                   CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE,
                                   CU_POINTER_ATTRIBUTE_MEMORY_TYPE};
    void *data[] = {&start, &rsize, &id, &ipc.all, &memtype};
    out("as_rc", cu.ptr_attrs(5, which, data, p + size - 1));
    cu.ptr_attr(&id_single, CU_POINTER_ATTRIBUTE_BUFFER_ID, p);
    out("as_start_off", (long long)(start - p));
    out("as_size", (long long)rsize);
    out("as_id_matches", id == id_single);
    out("as_ipc", ipc.value);
    out("as_ipc_wrote_4", (ipc.all >> 32) == (WIDE_PRESET >> 32));
    out("as_memtype", memtype);
}

/* P and Q of SIZE, a direct allocation BIG (4 MiB): what each query says. */
static int run_views(size_t size)
{
    CUdeviceptr p = 0, q = 0, big = 0, start = 0;
    CUipcMemHandle h;
    out_begin("views");
    out("alloc_rc", cu.mem_alloc(&p, size));
    out("alloc_q_rc", cu.mem_alloc(&q, size));
    out("alloc_big_rc", cu.mem_alloc(&big, 4 * MiB));
    if (!p || !q || !big) {
        out_end();
        return 0;
    }
    out("drv_found", drv_range(p, NULL, NULL, NULL));
    views_range(p, size);
    views_attr(p, q, big, size);
    views_attrs(p, size);
    out("ipc_rc", cu.ipc_get(&h, p));
    out("ipc_big_rc", cu.ipc_get(&h, big));
    out("free_rc", cu.mem_free(p));
    out("freed_in_chunk", drv_range(p, NULL, NULL, NULL));
    out("freed_range_rc", cu.get_range(&start, NULL, p));
    out("freed_attr_rc", cu.ptr_attr(&start, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, p));
    out("free_q_rc", cu.mem_free(q));
    out("free_big_rc", cu.mem_free(big));
    out_end();
    return 0;
}

/* ------------------------------------------------------------ routes */

/* What `count` allocations of one kind cost the driver, and whether the
 * program sees the driver's own range for the first. */
typedef CUresult (*kind_alloc_fn)(CUdeviceptr *p, size_t size);

static CUresult kind_plain(CUdeviceptr *p, size_t size) { return cu.mem_alloc(p, size); }

static CUresult kind_pitch(CUdeviceptr *p, size_t size)
{
    size_t pitch = 0;
    return cu.mem_alloc_pitch(p, &pitch, size, 1, 4);
}

static CUresult kind_managed(CUdeviceptr *p, size_t size)
{
    return cu.mem_alloc_managed(p, size, CU_MEM_ATTACH_GLOBAL);
}

static CUresult kind_async(CUdeviceptr *p, size_t size) { return cu.mem_alloc_async(p, size, 0); }

/* key_new: driver allocations made (-1 unknown); key_rc; key_range: the
 * program's range of the first is the driver's allocation (1) or not (0). */
static void route(const char *key, kind_alloc_fn alloc, size_t size, bool async)
{
    enum { N = 4 };
    CUdeviceptr p[N] = {0};
    long long live0 = drv_live(), pooled = 0;
    CUresult rc = CUDA_SUCCESS;
    char k[64];
    for (int i = 0; i < N && rc == CUDA_SUCCESS; i++) {
        rc = alloc(&p[i], size);
        CUmemoryPool mp = NULL;
        if (rc == CUDA_SUCCESS && async)
            pooled += (cu.ptr_attr(&mp, CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE, p[i]) !=
                       CUDA_SUCCESS) || mp == NULL;
    }
    long long live1 = drv_live();
    CUdeviceptr b = 0, db = 0;
    size_t s = 0, ds = 0;
    int same = rc == CUDA_SUCCESS && cu.get_range(&b, &s, p[0]) == CUDA_SUCCESS &&
               drv_range(p[0], &db, &ds, NULL) == 1 && b == db && s == ds;
    snprintf(k, sizeof k, "%s_rc", key), out(k, rc);
    snprintf(k, sizeof k, "%s_new", key), out(k, async || live0 < 0 ? -1 : live1 - live0);
    snprintf(k, sizeof k, "%s_range", key), out(k, same);
    if (async)
        snprintf(k, sizeof k, "%s_not_mempool", key), out(k, pooled);
    for (int i = N; i > 0; i--) {
        if (p[i - 1] && async)
            cu.mem_free_async(p[i - 1], 0);
        else if (p[i - 1])
            cu.mem_free(p[i - 1]);
    }
    cu.stream_sync(0);
}

/* A created (non-primary) context: plain requests go to the driver. */
static void route_created_ctx(size_t size)
{
    CUcontext c = NULL;
    CUresult rc = cu.ctx_create(&c, 0, dev);
    out("ctx_create_rc", rc);
    if (rc != CUDA_SUCCESS)
        return;
    route("ctx", kind_plain, size, false);
    out("ctx_destroy_rc", cu.ctx_destroy(c));
    out("ctx_back_rc", cu.ctx_set_current(primary));
}

/* cuMemCreate + map: the program's range is the mapping. */
static void route_vmm(void)
{
    CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = 0}};
    CUmemAccessDesc acc = {.location = prop.location, .flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    CUmemGenericAllocationHandle h = 0;
    CUdeviceptr va = 0, b = 0;
    size_t g = 0, s = 0;
    CUresult rc = cu.vmm_granularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED);
    if (rc == CUDA_SUCCESS)
        rc = cu.vmm_create(&h, g, &prop, 0);
    if (rc == CUDA_SUCCESS)
        rc = cu.vmm_reserve(&va, g, 0, 0, 0);
    if (rc == CUDA_SUCCESS)
        rc = cu.vmm_map(va, g, 0, h, 0);
    if (rc == CUDA_SUCCESS)
        rc = cu.vmm_set_access(va, g, &acc, 1);
    out("vmm_rc", rc);
    out("vmm_range", rc == CUDA_SUCCESS && cu.get_range(&b, &s, va + 1) == CUDA_SUCCESS &&
                         b == va && s == g);
    if (va && h)
        cu.vmm_unmap(va, g);
    if (va)
        cu.vmm_address_free(va, g);
    if (h)
        cu.vmm_release(h);
}

static int run_routes(size_t size)
{
    out_begin("routes");
    route("edge", kind_plain, MiB, false);
    route("big", kind_plain, MiB + 1, false);
    route("pitch", kind_pitch, size, false);
    route("managed", kind_managed, size, false);
    route("async", kind_async, size, true);
    route_created_ctx(size);
    route_vmm();
    out_end();
    return 0;
}

/* ------------------------------------------------------------ random */

typedef struct block {
    CUdeviceptr p;
    size_t size;
    uint64_t seq;
} block_t;

typedef struct tally {
    long long ops, allocs, frees, overlaps, misaligned, corrupt, errors, range_bad;
    char first[160];
} tally_t;

static void note(tally_t *t, long long *counter, const char *fmt, unsigned long long a,
                 unsigned long long b)
{
    (*counter)++;
    if (!t->first[0])
        snprintf(t->first, sizeof t->first, fmt, a, b);
}

static unsigned char tag_of(uint64_t seq) { return (unsigned char)(seq * 131 + 7); }

/* True when [p, p+size) meets a block of live[0..n). */
static bool overlaps_any(const block_t *live, size_t n, CUdeviceptr p, size_t size, size_t *who)
{
    for (size_t i = 0; i < n; i++)
        if (p < live[i].p + live[i].size && live[i].p < p + size) {
            *who = i;
            return true;
        }
    return false;
}

static void random_alloc(tally_t *t, block_t *live, size_t *n, size_t size, uint64_t seq)
{
    CUdeviceptr p = 0, b = 0;
    size_t s = 0, who = 0;
    CUresult rc = cu.mem_alloc(&p, size);
    if (rc != CUDA_SUCCESS) {
        note(t, &t->errors, "alloc_rc=%llu,size=%llu", rc, size);
        return;
    }
    t->allocs++;
    if (p % 256)
        note(t, &t->misaligned, "misaligned=0x%llx,size=%llu", p, size);
    if (overlaps_any(live, *n, p, size, &who))
        note(t, &t->overlaps, "overlap=0x%llx,with=0x%llx", p, live[who].p);
    if (cu.get_range(&b, &s, p + (seq % size)) != CUDA_SUCCESS || b != p || s != size)
        note(t, &t->range_bad, "range_of=0x%llx,size=%llu", p, s);
    if (fill(p, size, seq, tag_of(seq)) != CUDA_SUCCESS)
        note(t, &t->errors, "fill=0x%llx,size=%llu", p, size);
    live[(*n)++] = (block_t){p, size, seq};
}

static void random_free(tally_t *t, block_t *live, size_t *n, size_t i)
{
    block_t b = live[i];
    live[i] = live[--*n];
    int ok = intact(b.p, b.size, b.seq, tag_of(b.seq));
    if (ok == 0)
        note(t, &t->corrupt, "corrupt=0x%llx,size=%llu", b.p, b.size);
    else if (ok < 0)
        note(t, &t->errors, "readback=0x%llx,size=%llu", b.p, b.size);
    CUresult rc = cu.mem_free(b.p);
    if (rc != CUDA_SUCCESS)
        note(t, &t->errors, "free_rc=%llu,ptr=0x%llx", rc, b.p);
    t->frees++;
}

static void out_tally(const tally_t *t)
{
    out("ops", t->ops);
    out("allocs", t->allocs);
    out("frees", t->frees);
    out("overlaps", t->overlaps);
    out("misaligned", t->misaligned);
    out("corrupt", t->corrupt);
    out("errors", t->errors);
    out("range_bad", t->range_bad);
    out_str("first", t->first[0] ? t->first : "none");
}

#define RANDOM_LIVE 256

static int run_random(size_t max, size_t ops, uint64_t seed)
{
    static block_t live[RANDOM_LIVE];
    static tally_t t;
    size_t n = 0, peak = 0;
    uint64_t s = seed | 1;
    for (size_t op = 0; op < ops; op++, t.ops++) {
        bool alloc = n == 0 || (n < RANDOM_LIVE && rnd(&s) % 100 < 55);
        if (alloc)
            random_alloc(&t, live, &n, random_size(&s, max), op + 1);
        else
            random_free(&t, live, &n, (size_t)(rnd(&s) % n));
        peak = n > peak ? n : peak;
    }
    while (n)
        random_free(&t, live, &n, n - 1);
    out_begin("random");
    out_tally(&t);
    out("live_max", (long long)peak);
    out_end();
    return 0;
}

/* ------------------------------------------------------------ budget */

/* Fills the budget with `size` blocks until the first refusal; frees them. */
static void budget_fill(size_t size)
{
    enum { MAX = 4096 };
    static CUdeviceptr p[MAX];
    size_t n = 0;
    CUresult rc = CUDA_SUCCESS;
    while (n < MAX && (rc = cu.mem_alloc(&p[n], size)) == CUDA_SUCCESS)
        n++;
    out("fill_allocs", (long long)n);
    out("fill_rc", rc);
    out("fill_drv_used", drv_used());
    long long failed = 0;
    while (n)
        failed += cu.mem_free(p[--n]) != CUDA_SUCCESS;
    out("fill_free_failed", failed);
}

/* The budget (VRAMGUARD_BUDGET, set by the test) is what cuMemGetInfo
 * reports as total; the fill at the end uses blocks of `size`. */
static int run_budget(size_t size)
{
    CUdeviceptr small = 0, mid = 0, big = 0, extra = 0;
    long long total = 0;
    out_begin("budget");
    long long used0 = seen_used(&total);
    out("total", total);
    out("used0", used0);
    out("small_rc", cu.mem_alloc(&small, 4096));
    out("used_small", seen_used(NULL));
    out("mid_rc", cu.mem_alloc(&mid, MiB));
    out("used_mid", seen_used(NULL));
    out("free_small_rc", cu.mem_free(small));
    out("free_mid_rc", cu.mem_free(mid));
    out("drv_cached", drv_used()); /* what the pool still holds */
    out("big_rc", cu.mem_alloc(&big, (size_t)(total - used0)));
    out("full_small_rc", cu.mem_alloc(&extra, 4096));
    if (extra)
        cu.mem_free(extra);
    out("free_big_rc", big ? (long long)cu.mem_free(big) : -1);
    big = 0;
    out("over_rc", cu.mem_alloc(&big, (size_t)total + MiB));
    if (big)
        cu.mem_free(big);
    budget_fill(size);
    out("used_end", seen_used(NULL));
    out_end();
    return 0;
}

/* ------------------------------------------------------------ badfree */

/* An address in P's chunk that was never handed out: the chunk's base or
 * its middle or its last SIZE bytes, whichever is neither P nor Q. */
static CUdeviceptr never_made(CUdeviceptr c, size_t csize, size_t size, CUdeviceptr p,
                              CUdeviceptr q)
{
    CUdeviceptr cand[3] = {c, c + csize / 2 / size * size, c + csize - size};
    for (int i = 0; i < 3; i++)
        if (cand[i] != p && cand[i] != q)
            return cand[i];
    return 0;
}

/* Q's bytes can still be written and read back. */
static int still_usable(CUdeviceptr q, size_t size)
{
    return fill(q, size, 0x1122334455667788ull, 0x5a) == CUDA_SUCCESS &&
           intact(q, size, 0x1122334455667788ull, 0x5a) == 1;
}

static int run_badfree(size_t size)
{
    CUdeviceptr p = 0, q = 0, c = 0, c2 = 0, b = 0;
    size_t csize = 0, csize2 = 0, s = 0;
    out_begin("badfree");
    out("alloc_rc", cu.mem_alloc(&p, size));
    out("alloc_q_rc", cu.mem_alloc(&q, size));
    int in_chunk = drv_range(p, &c, &csize, NULL);
    CUdeviceptr x = in_chunk == 1 ? never_made(c, csize, size, p, q) : 0;
    out("same_chunk", in_chunk == 1 && drv_range(q, &c2, NULL, NULL) == 1 && c2 == c);
    out("chunk_size", (long long)csize);
    out("p_at_chunk_base", p == c);
    long long live0 = drv_live();
    out("free_rc", cu.mem_free(p));
    out("double_rc", cu.mem_free(p));
    out("interior_rc", cu.mem_free(q + 256));
    out("never_rc", x ? (long long)cu.mem_free(x) : -1);
    out("never_at_chunk_base", x && x == c);
    out("drv_lost", live0 < 0 ? -1 : live0 - drv_live());
    out("chunk_alive", drv_range(q, &c2, &csize2, NULL) == 1 && c2 == c && csize2 == csize);
    out("q_usable", still_usable(q, size));
    out("q_range", cu.get_range(&b, &s, q + 1) == CUDA_SUCCESS && b == q && s == size);
    out("free_q_rc", cu.mem_free(q));
    out_end();
    return 0;
}

/* ------------------------------------------------------------ audit */

/* One line per block ("path=audit_block size=S ptr=0x..."), then frees. */
static int run_audit(size_t size)
{
    size_t sizes[] = {1, 255, 256, 4097, 65536, 300000, MiB, size};
    enum { N = sizeof sizes / sizeof sizes[0] };
    CUdeviceptr p[N] = {0};
    long long failed = 0, made = 0;
    for (size_t i = 0; i < N; i++) {
        if (cu.mem_alloc(&p[i], sizes[i]) != CUDA_SUCCESS) {
            failed++;
            continue;
        }
        made++;
        printf("path=audit_block size=%zu ptr=0x%llx\n", sizes[i], (unsigned long long)p[i]);
    }
    for (size_t i = N; i > 0; i--)
        if (p[i - 1])
            failed += cu.mem_free(p[i - 1]) != CUDA_SUCCESS;
    out_begin("audit");
    out("allocs", made);
    out("failed", failed);
    out_end();
    return 0;
}

/* ------------------------------------------------------------ reset */

/* n blocks of size; how many are sound (range, driver memory, bytes). */
static long long reset_round(CUdeviceptr *p, size_t n, size_t size, CUresult *first)
{
    long long sound = 0;
    *first = CUDA_SUCCESS;
    for (size_t i = 0; i < n; i++) {
        CUdeviceptr b = 0;
        size_t s = 0;
        CUresult rc = cu.mem_alloc(&p[i], size);
        if (rc != CUDA_SUCCESS) {
            if (*first == CUDA_SUCCESS)
                *first = rc;
            p[i] = 0;
            continue;
        }
        sound += cu.get_range(&b, &s, p[i]) == CUDA_SUCCESS && b == p[i] && s == size &&
                 drv_range(p[i], NULL, NULL, NULL) != 0 && still_usable(p[i], size);
    }
    return sound;
}

static int run_reset(size_t size, size_t n)
{
    CUdeviceptr *p = calloc(n, sizeof *p);
    CUresult first;
    CUcontext again = NULL;
    if (!p)
        return 3;
    out_begin("reset");
    long long used0 = seen_used(NULL), live0 = drv_live();
    out("used0", used0);
    out("before_sound", reset_round(p, n, size, &first));
    out("before_rc", first);
    out("used_before", seen_used(NULL));
    out("reset_rc", cu.primary_reset(dev));
    /* cudart retains the primary context again after cudaDeviceReset. */
    out("retain_rc", cu.primary_retain(&again, dev));
    out("set_current_rc", cu.ctx_set_current(again));
    out("used_after_reset", seen_used(NULL));
    out("drv_after_reset", live0 < 0 ? -1 : drv_live() - live0);
    out("after_sound", reset_round(p, n, size, &first));
    out("after_rc", first);
    out("used_after", seen_used(NULL));
    long long failed = 0;
    for (size_t i = n; i > 0; i--)
        if (p[i - 1])
            failed += cu.mem_free(p[i - 1]) != CUDA_SUCCESS;
    out("free_failed", failed);
    out_end();
    free(p);
    return 0;
}

/* ------------------------------------------------------------ fork */

/* n blocks of size made and freed; 0, or the first failure. */
static CUresult fork_round(size_t size, size_t n)
{
    CUdeviceptr p[64];
    CUresult rc = CUDA_SUCCESS;
    size_t made = 0;
    n = n < 64 ? n : 64;
    while (made < n && (rc = cu.mem_alloc(&p[made], size)) == CUDA_SUCCESS)
        made++;
    while (made)
        if (cu.mem_free(p[--made]) != CUDA_SUCCESS && rc == CUDA_SUCCESS)
            rc = CUDA_ERROR_UNKNOWN;
    return rc;
}

/* The parent holds one block (the pool exists), forks; the child makes
 * and frees n blocks of its own and n of a size class the parent never
 * used (a new chunk), with 20 s to do it (SIGALRM ends a hung child). */
static int run_fork(size_t size, size_t n)
{
    CUdeviceptr held = 0;
    int status = 0;
    out_begin("fork");
    out("held_rc", cu.mem_alloc(&held, size));
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        return 3;
    if (pid == 0) {
        alarm(20);
        CUresult rc = fork_round(size, n);
        if (rc == CUDA_SUCCESS)
            rc = fork_round(size * 3 + 1, n);
        _exit(rc == CUDA_SUCCESS ? 0 : 1);
    }
    if (waitpid(pid, &status, 0) != pid)
        return 3;
    out("child_status", WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    out("parent_rc", fork_round(size * 5 + 1, n));
    out("free_held_rc", cu.mem_free(held));
    out_end();
    return 0;
}

/* ------------------------------------------------------------ threads */

/* Every live block of every thread, for the overlap check. A thread
 * inserts a block after its allocation returned and removes it before
 * freeing it, so a reused address never meets its former owner here. */
#define THREADS_MAX 64
#define PER_THREAD 8

static pthread_mutex_t shadow_lock = PTHREAD_MUTEX_INITIALIZER;
static block_t shadow[THREADS_MAX * PER_THREAD];
static size_t shadow_n;

static void shadow_add(tally_t *t, const block_t *b)
{
    size_t who = 0;
    pthread_mutex_lock(&shadow_lock);
    if (overlaps_any(shadow, shadow_n, b->p, b->size, &who))
        note(t, &t->overlaps, "overlap=0x%llx,with=0x%llx", b->p, shadow[who].p);
    shadow[shadow_n++] = *b;
    pthread_mutex_unlock(&shadow_lock);
}

static void shadow_remove(CUdeviceptr p)
{
    pthread_mutex_lock(&shadow_lock);
    for (size_t i = 0; i < shadow_n; i++)
        if (shadow[i].p == p) {
            shadow[i] = shadow[--shadow_n];
            break;
        }
    pthread_mutex_unlock(&shadow_lock);
}

typedef struct worker {
    size_t max, iterations;
    uint64_t seed;
    tally_t t;
} worker_t;

/* Small blocks: the first and last 8 bytes are written and checked. */
static CUresult mark(CUdeviceptr p, size_t size, uint64_t seq)
{
    CUresult rc = cu.htod(p, &seq, size < 8 ? size : 8);
    if (rc == CUDA_SUCCESS && size >= 16)
        rc = cu.htod(p + size - 8, &seq, 8);
    return rc;
}

static bool marked(CUdeviceptr p, size_t size, uint64_t seq)
{
    uint64_t head = 0, tail = seq;
    size_t n = size < 8 ? size : 8;
    if (cu.dtoh(&head, p, n) != CUDA_SUCCESS || memcmp(&head, &seq, n) != 0)
        return false;
    return size < 16 || (cu.dtoh(&tail, p + size - 8, 8) == CUDA_SUCCESS && tail == seq);
}

static void worker_free(worker_t *w, block_t *mine, size_t *n, size_t i)
{
    block_t b = mine[i];
    mine[i] = mine[--*n];
    if (!marked(b.p, b.size, b.seq))
        note(&w->t, &w->t.corrupt, "corrupt=0x%llx,size=%llu", b.p, b.size);
    shadow_remove(b.p);
    CUresult rc = cu.mem_free(b.p);
    if (rc != CUDA_SUCCESS)
        note(&w->t, &w->t.errors, "free_rc=%llu,ptr=0x%llx", rc, b.p);
    w->t.frees++;
}

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    block_t mine[PER_THREAD];
    size_t n = 0;
    uint64_t s = w->seed | 1;
    if (cu.ctx_set_current(primary) != CUDA_SUCCESS) {
        note(&w->t, &w->t.errors, "set_current_failed=%llu,%llu", 0, 0);
        return NULL;
    }
    for (size_t i = 0; i < w->iterations; i++, w->t.ops++) {
        if (n == PER_THREAD || (n > 0 && rnd(&s) % 2)) {
            worker_free(w, mine, &n, (size_t)(rnd(&s) % n));
            continue;
        }
        block_t b = {0, random_size(&s, w->max), (w->seed << 32) | i};
        CUresult rc = cu.mem_alloc(&b.p, b.size);
        if (rc != CUDA_SUCCESS) {
            note(&w->t, &w->t.errors, "alloc_rc=%llu,size=%llu", rc, b.size);
            continue;
        }
        w->t.allocs++;
        if (b.p % 256)
            note(&w->t, &w->t.misaligned, "misaligned=0x%llx,size=%llu", b.p, b.size);
        shadow_add(&w->t, &b);
        if (mark(b.p, b.size, b.seq) != CUDA_SUCCESS)
            note(&w->t, &w->t.errors, "mark=0x%llx,size=%llu", b.p, b.size);
        mine[n++] = b;
    }
    while (n)
        worker_free(w, mine, &n, n - 1);
    return NULL;
}

static void sum_into(tally_t *sum, const tally_t *t)
{
    sum->ops += t->ops, sum->allocs += t->allocs, sum->frees += t->frees;
    sum->overlaps += t->overlaps, sum->misaligned += t->misaligned;
    sum->corrupt += t->corrupt, sum->errors += t->errors;
    if (!sum->first[0])
        memcpy(sum->first, t->first, sizeof sum->first);
}

/* After the threads: the budget use the program sees, and whether the
 * whole budget can be had again (every cached chunk trimmed, nothing
 * left charged). */
static void threads_after(long long used0, long long total)
{
    CUdeviceptr all = 0;
    out("ctx_sync_rc", cu.ctx_sync());
    out("used_after", seen_used(NULL));
    out("drv_after", drv_used());
    out("whole_rc", cu.mem_alloc(&all, (size_t)(total - used0)));
    out("whole_free_rc", all ? (long long)cu.mem_free(all) : -1);
    out("used_end", seen_used(NULL));
}

static int run_threads(size_t max, size_t iterations, size_t threads)
{
    static worker_t w[THREADS_MAX];
    pthread_t tid[THREADS_MAX];
    tally_t sum = {0};
    long long total = 0, used0 = seen_used(&total);
    if (threads < 1 || threads > THREADS_MAX)
        return 2;
    for (size_t i = 0; i < threads; i++) {
        w[i] = (worker_t){.max = max, .iterations = iterations, .seed = i + 1};
        if (pthread_create(&tid[i], NULL, worker_main, &w[i]))
            return 3;
    }
    for (size_t i = 0; i < threads; i++) {
        pthread_join(tid[i], NULL);
        sum_into(&sum, &w[i].t);
    }
    out_begin("threads");
    out("used0", used0);
    out_tally(&sum);
    threads_after(used0, total);
    out_end();
    return 0;
}

/* ---------------------------------------------------------------- main */

static int usage(void)
{
    fprintf(stderr, "usage: client_pool CASE SIZE [COUNT [EXTRA]]\n"
                    "  CASE: count count_legacy views routes random budget badfree audit\n"
                    "        reset fork threads\n");
    return 2;
}

/* Only a created context, never the primary one: cache mode must leave the
 * allocation to the driver and must not activate the primary context. */
static int run_created_only(const char *name, size_t size)
{
    typedef CUresult (*state_fn)(CUdevice, unsigned int *, int *);
    state_fn state = (state_fn)dlsym(RTLD_DEFAULT, "cuDevicePrimaryCtxGetState");
    CUcontext c = NULL;
    CUdeviceptr p = 0;
    unsigned int flags = 0;
    int active = -1;
    long long live0 = drv_live();
    CUresult rc = cu.ctx_create(&c, 0, dev);
    CUresult arc = rc == CUDA_SUCCESS ? cu.mem_alloc(&p, size) : rc;
    out_begin(name);
    out("ctx_create_rc", rc);
    out("alloc_rc", arc);
    out("drv_new", live0 < 0 ? -1 : drv_live() - live0);
    out("primary_active", state && state(dev, &flags, &active) == CUDA_SUCCESS ? active : -1);
    out("free_rc", arc == CUDA_SUCCESS ? (long long)cu.mem_free(p) : -1);
    out_end();
    if (c)
        cu.ctx_destroy(c);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return usage();
    const char *name = argv[1];
    size_t size = client_parse_size(argv[2]);
    size_t count = argc > 3 ? strtoull(argv[3], NULL, 10) : 1;
    unsigned long long extra = argc > 4 ? strtoull(argv[4], NULL, 10) : 0;
    if (!size || !count)
        return usage();
    bool created_only = !strcmp(name, "created_only");
    int rc = setup(created_only ? WITHOUT_PRIMARY : WITH_PRIMARY);
    if (rc != 0)
        return rc;
    if (created_only)
        return run_created_only(name, size);
    free_how_t how = extra ? FREE_ASYNC : FREE_SYNC;
    if (!strcmp(name, "count"))
        return run_count(name, size, count, false, how);
    if (!strcmp(name, "count_legacy"))
        return run_count(name, size, count, true, how);
    if (!strcmp(name, "views"))
        return run_views(size);
    if (!strcmp(name, "routes"))
        return run_routes(size);
    if (!strcmp(name, "random"))
        return run_random(size, count, extra ? extra : 1);
    if (!strcmp(name, "budget"))
        return run_budget(size);
    if (!strcmp(name, "badfree"))
        return run_badfree(size);
    if (!strcmp(name, "audit"))
        return run_audit(size);
    if (!strcmp(name, "reset"))
        return run_reset(size, count);
    if (!strcmp(name, "fork"))
        return run_fork(size, count);
    if (!strcmp(name, "threads"))
        return run_threads(size, count, extra ? extra : 16);
    return usage();
}
