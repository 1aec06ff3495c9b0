/*
 * pool_common.h — what the cache-mode clients (client_pool.c,
 * client_pool_stress.c, client_pool_edges.c; tests/test_cache_mode.c,
 * VRAMGUARD_POOL=cache, docs/pool.md) share: the driver's entry points,
 * device 0 set up, the test driver's own view, the output line, and
 * filling a block and checking its bytes. Static, included once per
 * program (the Makefile builds each tests/clients/X.c alone).
 *
 *   client_pool[_X] CASE SIZE [COUNT [EXTRA]]
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
 */
#ifndef VG_POOL_COMMON_H
#define VG_POOL_COMMON_H

#include <cuda.h>
#include <cudaTypedefs.h>
#include <dlfcn.h>

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static inline int resolve_linked(void)
{
#define POOL_LINK_(field, type, abi, base, ver) cu.field = (type)&abi;
    POOL_SYMS(POOL_LINK_)
#undef POOL_LINK_
    return 0;
}

/* cudart's way (cudart_way.h). */
static inline int resolve_cudart(void)
{
    PFN_cuGetProcAddress_v12000 get = cudart_get_proc();
    if (!get) {
        fprintf(stderr, "%s: no cuGetProcAddress\n", program_invocation_short_name);
        return -1;
    }
#define POOL_PROC_(field, type, abi, base, ver)                                                    \
    if (!(cu.field = (type)by_proc(get, base, ver))) {                                             \
        fprintf(stderr, "%s: cannot resolve %s (%d)\n", program_invocation_short_name, base,       \
                ver);                                                                              \
        return -1;                                                                                 \
    }
    POOL_SYMS(POOL_PROC_)
#undef POOL_PROC_
    return 0;
}

typedef enum { WITH_PRIMARY, WITHOUT_PRIMARY } setup_t;

static inline int setup(setup_t primary_ctx)
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
        fprintf(stderr, "%s: setup failed: %d\n", program_invocation_short_name, (int)rc);
        return 3;
    }
    return 0;
}

/* ------------------------------------------------------------ helpers */

static inline long long drv_live(void) { return drv.live ? (long long)drv.live(0) : -1; }
static inline long long drv_used(void) { return drv.used ? (long long)drv.used(0) : -1; }

/* The driver's allocation holding p: 1 with base, size, id; 0 none; -1
 * unknown (no test driver). */
static inline int drv_range(CUdeviceptr p, CUdeviceptr *base, size_t *size,
                            unsigned long long *id)
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
static inline long long seen_used(long long *total)
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

static inline void out_begin(const char *name)
{
    snprintf(line, sizeof line, "path=%s", name);
}

static inline void out(const char *key, long long v)
{
    size_t n = strlen(line);
    snprintf(line + n, sizeof line - n, " %s=%lld", key, v);
}

static inline void out_str(const char *key, const char *v)
{
    size_t n = strlen(line);
    snprintf(line + n, sizeof line - n, " %s=%s", key, v);
}

static inline void out_end(void)
{
    printf("%s\n", line);
    fflush(stdout);
}

/* Fills a block: its first 8 bytes are `seq` (fewer if it is smaller), the
 * rest the byte `tag`. Returns the first failing CUresult. */
static inline CUresult fill(CUdeviceptr p, size_t size, uint64_t seq, unsigned char tag)
{
    CUresult rc = cu.memset8(p, tag, size);
    if (rc == CUDA_SUCCESS)
        rc = cu.htod(p, &seq, size < 8 ? size : 8);
    return rc;
}

/* Checks what fill() wrote: all of a block up to 64 KiB, else its first,
 * middle and last 4 KiB. 1 intact, 0 corrupt, -1 a copy failed. */
static inline int intact(CUdeviceptr p, size_t size, uint64_t seq, unsigned char tag)
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

/* The command line: CASE SIZE [COUNT [EXTRA]] (COUNT defaults to 1,
 * EXTRA to 0). */
typedef struct pool_args {
    const char *name;
    size_t size, count;
    unsigned long long extra;
} pool_args_t;

/* 0, or 2 (usage) when the line is malformed. */
static inline int pool_args_parse(int argc, char **argv, pool_args_t *a)
{
    if (argc < 3)
        return 2;
    a->name = argv[1];
    a->size = client_parse_size(argv[2]);
    a->count = argc > 3 ? strtoull(argv[3], NULL, 10) : 1;
    a->extra = argc > 4 ? strtoull(argv[4], NULL, 10) : 0;
    return a->size && a->count ? 0 : 2;
}

#endif /* VG_POOL_COMMON_H */
