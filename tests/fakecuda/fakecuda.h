/*
 * fakecuda.h: internal declarations shared by the files of the test driver
 * (the .c files of tests/fakecuda), grouped under the file that defines them.
 *
 * The test driver is built as libcuda.so.1. Like NVIDIA's own driver build we
 * define __CUDA_API_VERSION_INTERNAL before including cuda.h: the header then
 * declares every exported ABI under its real name (cuMemAlloc with the old
 * 32-bit prototype, cuMemAlloc_v2, cuStreamSynchronize_ptsz, cuMemcpy_ptds ...),
 * so each definition here is checked against the official prototype.
 *
 * Locking: one process-wide mutex (fc_lock/fc_unlock) guards all state. Every
 * exported entry point takes it; every fc_ helper below expects it held unless
 * its comment says otherwise.
 *
 * Environment (read once, by cuInit; counts are plain decimal):
 *   FAKECUDA_DEVICES         devices (default 1)
 *   FAKECUDA_TOTAL_BYTES     capacity of each device (default 80 GiB)
 *   FAKECUDA_FAIL_NTH        the Nth allocating call fails with OOM (0: never)
 *   FAKECUDA_REPORT          file the exit report is written to
 *   FAKECUDA_CONTEXT_BYTES   memory a context takes when it is created or the
 *                            primary context first becomes active (default 0)
 *   FAKECUDA_SM_COUNT        CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT (132)
 *   FAKECUDA_LIMITS_AT       when a larger heap/stack/printf limit is charged:
 *                            "setlimit" (default, at cuCtxSetLimit) or
 *                            "launch" (at the context's next kernel launch)
 *   FAKECUDA_FREE_DELAY_NS   cuMemFree/cuMemFreeAsync wait this long, with the
 *                            memory still counted, before freeing (default 0)
 *   FAKECUDA_SETLIMIT_DELAY_NS cuCtxSetLimit waits this long before it sets
 *                            the value (default 0): another thread's
 *                            cuCtxGetLimit meanwhile still reads the old one
 *   FAKECUDA_POINTER_ATTR_DELAY_NS cuPointerGetAttribute waits this long
 *                            after it answered, before it returns (default
 *                            0): memory it called freed may be handed out
 *                            again meanwhile
 *   FAKECUDA_PRIMARY_RELEASE_DELAY_NS cuDevicePrimaryCtxRelease(_v2) waits
 *                            this long after it released (and, the last
 *                            time, reset the context), before it returns
 *                            (default 0)
 *   FAKECUDA_MAP_DELAY_NS    cuMemMap waits this long after it mapped, before
 *                            it returns (default 0)
 *   FAKECUDA_UNMAP_DELAY_NS  cuMemUnmap waits this long after it unmapped,
 *                            before it returns (default 0)
 *   FAKECUDA_RELEASE_DELAY_NS cuMemRelease waits this long after it
 *                            released, before it returns (default 0)
 *   FAKECUDA_VMM_REUSE       1: cuMemCreate hands out the value of the last
 *                            freed physical allocation's handle first, as
 *                            the real driver's handles (addresses of its
 *                            objects) can come back (default 0: never)
 *   FAKECUDA_POOL_ATTR_DELAY_NS cuMemPoolGetAttribute, called from any thread
 *                            but the process's first, waits this long after
 *                            it answered, before it returns (default 0): the
 *                            pool may grow meanwhile
 *   FAKECUDA_NO_RANGES       1: cuMemGetAddressRange says CUDA_ERROR_NOT_FOUND
 *                            for every address, as a driver that keeps no
 *                            allocation extents (the benchmarks' null driver)
 *   FAKECUDA_NO_STREAM_DEVICE 1: cuStreamGetDevice says CUDA_ERROR_NOT_FOUND,
 *                            as though the driver were older than CUDA 12.8
 *                            (which added it); cuStreamGetCtx still answers
 *   FAKECUDA_POOL_CHUNK      a stream-ordered pool that must grow reserves the
 *                            request rounded up to a multiple of this many
 *                            bytes, as the real driver reserves 32 MiB chunks
 *                            (default 0: the request alone)
 *   CUDA_MODULE_LOADING      EAGER: a module's globals are charged at load;
 *                            otherwise (lazy, as CUDA 12.2+) at the first
 *                            launch of one of its kernels (or cuFuncLoad)
 *
 * Implicit memory (counted in used bytes and the peak like any allocation,
 * and apart in fakecuda_implicit_bytes): a context's own memory, the part
 * of its heap, stack and printf limits above the defaults (heap 8 MiB,
 * stack 1024 bytes per thread for SM count x 2048 resident threads, printf
 * FIFO 1 MiB), and the globals of loaded modules. A context that is
 * destroyed, reset or released for the last time gives back all of it and
 * every allocation, array and module made in it.
 *
 * Module images (cuModuleLoadData/DataEx/FatBinary, cuLibraryLoadData; the
 * contents of a file for cuModuleLoad/cuLibraryLoadFromFile) are
 * NUL-terminated text under 4 KiB:
 *     fakecuda-module [globals=BYTES] [kernels=NAME,NAME,...]
 * globals: bytes of __device__ data (default 0); kernels: up to 16 names of
 * up to 63 characters. Anything else is CUDA_ERROR_INVALID_IMAGE.
 */
#ifndef FAKECUDA_INTERNAL_H
#define FAKECUDA_INTERNAL_H

#define __CUDA_API_VERSION_INTERNAL 1
#include <cuda.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uthash.h>

/* The fc_ names are internal: keep them out of the library's dynamic
 * symbol table (it is built with -fvisibility=default for the CUDA API). */
#pragma GCC visibility push(hidden)

#define FC_MAX_DEVICES 72 /* more than vramguard handles (64), for check */
#define FC_ALIGN 512u                    /* every returned pointer, bytes */
#define FC_GRANULARITY (2u << 20)        /* VMM granularity, bytes */
#define FC_DRIVER_VERSION 13000
#define FC_THREADS_PER_SM 2048           /* MAX_THREADS_PER_MULTIPROCESSOR */

static inline size_t fc_round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

/* ---- core.c: init, devices, capacity, statistics, handle registry ---- */
void fc_lock(void);
void fc_unlock(void);
bool fc_initialized(void);           /* lock-free; acquire load */
int fc_device_count(void);
bool fc_device_valid(CUdevice dev);
size_t fc_device_total(int dev);
size_t fc_device_used(int dev);
/* Every device-memory-allocating call that passed its argument checks calls
 * fc_gate first: FAKECUDA_FAIL_NTH turns the Nth such call into OOM. */
CUresult fc_gate(void);
/* Charges n bytes against dev's capacity; OOM (counted as failed) if short. */
CUresult fc_charge(int dev, size_t n);
void fc_uncharge(int dev, size_t n);
/* Charges memory no allocation call made (contexts, limits, modules): as
 * fc_charge, and counted in fakecuda_implicit_bytes as well. */
CUresult fc_charge_implicit(int dev, size_t n);
void fc_uncharge_implicit(int dev, size_t n);
bool fc_fits(int dev, size_t n);      /* n bytes more would fit now */
void fc_count_alloc(void);
void fc_count_free(void);

typedef struct {
    size_t context_bytes;         /* FAKECUDA_CONTEXT_BYTES */
    int sm_count;                 /* FAKECUDA_SM_COUNT */
    unsigned long long free_delay_ns;   /* FAKECUDA_FREE_DELAY_NS */
    unsigned long long setlimit_delay_ns; /* FAKECUDA_SETLIMIT_DELAY_NS */
    unsigned long long pointer_attr_delay_ns; /* FAKECUDA_POINTER_ATTR_DELAY_NS */
    unsigned long long primary_release_delay_ns; /* FAKECUDA_PRIMARY_RELEASE_DELAY_NS */
    unsigned long long ctx_destroy_delay_ns; /* FAKECUDA_CTX_DESTROY_DELAY_NS */
    unsigned long long map_delay_ns;    /* FAKECUDA_MAP_DELAY_NS */
    unsigned long long unmap_delay_ns;  /* FAKECUDA_UNMAP_DELAY_NS */
    unsigned long long release_delay_ns; /* FAKECUDA_RELEASE_DELAY_NS */
    bool vmm_reuse;               /* FAKECUDA_VMM_REUSE=1 */
    unsigned long long pool_attr_delay_ns; /* FAKECUDA_POOL_ATTR_DELAY_NS */
    bool limits_at_launch;        /* FAKECUDA_LIMITS_AT=launch */
    bool eager_modules;           /* CUDA_MODULE_LOADING=EAGER */
    bool no_ranges;               /* FAKECUDA_NO_RANGES=1 */
    bool no_stream_device;        /* FAKECUDA_NO_STREAM_DEVICE=1 */
    size_t pool_chunk;            /* FAKECUDA_POOL_CHUNK (0: none) */
    bool graph_mapped_at_launch;  /* FAKECUDA_GRAPH_MAPPED_AT_LAUNCH=1 (graph.c) */
} fc_knobs;
const fc_knobs *fc_knobs_get(void);   /* valid after cuInit; lock not needed */
/* Sleeps FAKECUDA_FREE_DELAY_NS; called WITHOUT the lock, before a free. */
void fc_free_delay(void);
/* Sleeps FAKECUDA_SETLIMIT_DELAY_NS; called WITHOUT the lock. */
void fc_setlimit_delay(void);
/* Sleeps FAKECUDA_POINTER_ATTR_DELAY_NS; called WITHOUT the lock. */
void fc_pointer_attr_delay(void);
/* Sleeps FAKECUDA_PRIMARY_RELEASE_DELAY_NS; called WITHOUT the lock. */
void fc_primary_release_delay(void);
void fc_ctx_destroy_delay(void);
/* Sleep FAKECUDA_MAP_DELAY_NS / FAKECUDA_UNMAP_DELAY_NS /
 * FAKECUDA_RELEASE_DELAY_NS; WITHOUT the lock. */
void fc_map_delay(void);
void fc_unmap_delay(void);
void fc_release_delay(void);
/* Sleeps FAKECUDA_POOL_ATTR_DELAY_NS in threads other than the main one;
 * WITHOUT the lock. */
void fc_pool_attr_delay(void);

typedef enum {
    FC_H_CTX = 1, FC_H_STREAM, FC_H_EVENT, FC_H_POOL, FC_H_ARRAY,
    FC_H_MIPMAP, FC_H_GRAPH, FC_H_NODE, FC_H_EXEC, FC_H_MODULE,
    FC_H_LIBRARY, FC_H_FUNC
} fc_htype;
/* Registry of live opaque handles, so that a stale or made-up handle is
 * answered with an error code instead of a use-after-free. */
void fc_handle_add(const void *h, fc_htype type);
bool fc_handle_ok(const void *h, fc_htype type);
void fc_handle_del(const void *h);
/* Calls fn on every live handle of type; fn may delete that handle. */
void fc_handle_each(fc_htype type, void (*fn)(void *h, void *arg), void *arg);

/* ---- ctx.c: contexts ---- */
#define FC_NLIMITS ((int)CU_LIMIT_MAX)
struct CUctx_st {
    int dev;
    bool primary;
    int retain;          /* primary only: cuDevicePrimaryCtxRetain count */
    bool started;        /* its FAKECUDA_CONTEXT_BYTES are charged */
    unsigned long long id;      /* cuCtxGetId: new at every start */
    size_t limit[FC_NLIMITS];   /* cuCtxSetLimit values */
    size_t limit_charged;       /* bytes charged for limits above defaults */
    bool limit_pending;         /* FAKECUDA_LIMITS_AT=launch: not yet charged */
};
/* Current context of the calling thread, checked: NOT_INITIALIZED before
 * cuInit, INVALID_CONTEXT when none is current or it was destroyed. */
CUresult fc_ctx_current(CUcontext *ctx);
/* Lock held: dev's primary context when it is retained and started, else
 * NULL. */
CUcontext fc_ctx_primary_live(int dev);

/* ---- stream.c: streams, events ---- */
/* Validates a stream handle (0, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD or a
 * live stream) and returns the device it runs on. */
CUresult fc_stream_device(CUstream s, int *dev);
/* The graph a created stream is capturing into, or NULL (lock held). Only
 * created streams capture here; the default streams never do. */
CUgraph fc_stream_capture(CUstream s);

/* ---- limit.c: cuCtxSetLimit / cuCtxGetLimit ---- */
void fc_limits_reset(CUcontext ctx);     /* defaults, nothing charged */
void fc_limits_release(CUcontext ctx);   /* gives the charge back, then defaults */
/* At a launch: charges limits deferred by FAKECUDA_LIMITS_AT=launch. */
CUresult fc_limits_apply(CUcontext ctx);

/* ---- module.c: modules, libraries, kernels, launches ---- */
/* Unloads the modules of a destroyed or reset context; libraries loaded
 * into it go back to unloaded. */
void fc_module_release_ctx(CUcontext ctx);
/* Lock held: loads f's module now if it is still unloaded (lazy loading),
 * as its first launch would: graph.c's instantiation of a kernel node. */
CUresult fc_func_load_locked(CUfunction f);

/* ---- array.c ---- */
void fc_array_release_ctx(CUcontext ctx);

/* ---- vmm.c ---- */
/* A mapping of handle h into an array (lock held): one more reference on
 * its memory; NULL when h is not a live handle. Unref drops it, and frees
 * the memory when it was the last reference. */
void *fc_vmm_tile_ref(CUmemGenericAllocationHandle h);
void fc_vmm_tile_unref(void *phys);

/* ---- mem.c: allocation table, backing memory, plain allocations ---- */
typedef enum {
    FC_KIND_DEVICE, FC_KIND_PITCH, FC_KIND_MANAGED, FC_KIND_POOL,
    FC_KIND_VMM, FC_KIND_GRAPH
} fc_kind;

typedef enum { FC_BACK_NONE, FC_BACK_HEAP, FC_BACK_MMAP } fc_backing;

typedef struct fc_alloc {
    CUdeviceptr base;
    size_t size;             /* the range cuMemGetAddressRange reports */
    size_t charged;          /* bytes charged against capacity for it */
    size_t mapped;           /* bytes of host mapping behind base */
    fc_kind kind;
    fc_backing backing;
    int dev;
    CUcontext ctx;
    void *owner;             /* pool, VMM physical allocation, graph node */
    unsigned long long id;   /* CU_POINTER_ATTRIBUTE_BUFFER_ID */
    bool live;               /* pool blocks: handed out, not in the free list */
    bool low32;              /* legacy 32-bit ABI: mapped below 4 GiB */
    struct fc_alloc *next_free;   /* pool blocks: the pool's free list */
    UT_hash_handle hh;       /* keyed by base */
} fc_alloc;

fc_alloc *fc_alloc_new(size_t size, fc_kind kind, int dev);
/* Backs a with host memory: aligned_alloc for small sizes, NORESERVE mmap
 * for large ones (untouched pages cost nothing). */
CUresult fc_alloc_back(fc_alloc *a);
void fc_alloc_unback(fc_alloc *a);
void fc_alloc_insert(fc_alloc *a);   /* into the hash and the range tree */
void fc_alloc_remove(fc_alloc *a);
fc_alloc *fc_alloc_find(CUdeviceptr base);        /* exact base, O(1) */
fc_alloc *fc_alloc_containing(CUdeviceptr p);     /* interior, O(log n) */
/* Checks that [p, p+n) lies in one live allocation, or in adjacent VMM
 * mappings. */
bool fc_range_ok(CUdeviceptr p, size_t n);
/* Frees the allocation based at dptr, whatever its family (cuMemFree and
 * cuMemFreeAsync both accept all of them). Only the base of a live
 * allocation may be freed; anything else (interior, unknown, already freed,
 * a VMM mapping) is INVALID_VALUE. */
CUresult fc_mem_free(CUdeviceptr dptr);
/* Frees everything a destroyed or reset context still owned. */
void fc_mem_release_ctx(CUcontext ctx);

/* ---- pool.c: stream-ordered allocator and memory pools ---- */
/* Sync point: each pool releases unused reserve above its threshold. */
void fc_pool_sync(void);
/* Returns a pool block to its pool (cuMemFree / cuMemFreeAsync). */
void fc_pool_block_free(fc_alloc *a);

/* ---- graph.c: graph memory nodes ---- */
/* Frees a graph allocation released by cuMemFree / cuMemFreeAsync. */
void fc_graph_alloc_free(fc_alloc *a);
/* Lock held: a graph allocation the pointer queries do not know now
 * (FAKECUDA_GRAPH_MAPPED_AT_LAUNCH); false for any other allocation. */
bool fc_graph_alloc_unmapped(const fc_alloc *a);
/* A new empty graph, registered (lock held): stream capture's. */
CUgraph fc_graph_new(void);
/* Stream capture (lock held): cuMemAllocAsync adds an allocation node of
 * size bytes on dev to g; cuMemFreeAsync of one of its graph allocations
 * adds a free node (INVALID_VALUE for any other address). */
CUresult fc_graph_capture_alloc(CUgraph g, size_t size, int dev, CUdeviceptr *dptr);
CUresult fc_graph_capture_free(CUgraph g, CUdeviceptr dptr);

#pragma GCC visibility pop

#endif /* FAKECUDA_INTERNAL_H */
