/*
 * vramguard.h — budgeted GPU memory for C programs.
 *
 * This is the only header a user includes. It needs no CUDA header: device
 * pointers are vg_devptr_t (the same 64-bit value as CUdeviceptr), and the
 * CUDA driver (libcuda.so.1, or VRAMGUARD_LIBCUDA) is loaded at run time.
 *
 * Conventions
 *  - Every function that can fail returns a status: VG_OK (0) or one of the
 *    VG_E* codes below. Results come back through out-parameters, which are
 *    written only on success unless a function says otherwise.
 *  - vg_strerror() and vg_err_name() accept any integer and never return NULL.
 *  - Sizes are bytes. Devices are CUDA ordinals as the process sees them
 *    (after CUDA_VISIBLE_DEVICES).
 *
 * Thread safety
 *  - All functions may be called concurrently from any thread, with one
 *    exception: vg_pool_destroy() must not race with other calls on the same
 *    pool (the pool is gone when it returns). A vg_buf_t is owned by one
 *    caller; concurrent reads of one buffer are fine, concurrent writes to
 *    overlapping ranges are the caller's race, as with memcpy.
 *  - Pressure callbacks run on the thread whose allocation or free changed the
 *    level, with no vramguard lock held; they may call any vg_ function.
 */
#ifndef VRAMGUARD_H
#define VRAMGUARD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define VG_API __attribute__((visibility("default")))
#else
#define VG_API
#endif

/* The library's version (the Makefile reads it from here). 0.2 added
 * eviction and the pool's cache statistics; see the ABI notes below. */
#define VG_VERSION_MAJOR 0
#define VG_VERSION_MINOR 2
#define VG_VERSION_PATCH 0

/* ---------------------------------------------------------------- errors */

/* X(name, value, message): the one list of status codes. */
#define VG_ERRORS(X)                                                           \
    X(VG_OK, 0, "success")                                                     \
    X(VG_EINVAL, 1, "invalid argument")                                        \
    X(VG_ENOMEM, 2, "request exceeds the memory budget")                       \
    X(VG_ENODRIVER, 3, "CUDA driver not available")                            \
    X(VG_ENODEV, 4, "no such CUDA device")                                     \
    X(VG_EDRIVER, 5, "the CUDA driver returned an error")                      \
    X(VG_ERANGE, 6, "offset or length outside the buffer")                     \
    X(VG_ESETTING, 7, "malformed setting")                                     \
    X(VG_ENOTFOUND, 8, "pointer is not a live allocation")                     \
    X(VG_EBADPTR, 9, "driver returned an invalid device pointer")              \
    X(VG_ESYS, 10, "operating system call failed")                             \
    X(VG_EDENIED, 11, "denied by policy")

typedef enum vg_status {
#define VG_ENUM_(name, value, msg) name = value,
    VG_ERRORS(VG_ENUM_)
#undef VG_ENUM_
} vg_status_t;

/* A static description of any status value; unknown values get
 * "unknown vramguard status". Never NULL. */
VG_API const char *vg_strerror(int status);
/* The code's name, e.g. "VG_ENOMEM"; unknown values get "VG_E?". Never NULL. */
VG_API const char *vg_err_name(int status);

/* ------------------------------------------------------- common types */

typedef uint64_t vg_devptr_t;

/* How an allocation was obtained. X(name, label). */
#define VG_KINDS(X)                                                            \
    X(VG_KIND_PLAIN, "plain")                                                  \
    X(VG_KIND_PITCH, "pitch")                                                  \
    X(VG_KIND_MANAGED, "managed")                                              \
    X(VG_KIND_ASYNC, "async")                                                  \
    X(VG_KIND_POOL, "pool")                                                    \
    X(VG_KIND_VMM, "vmm")                                                      \
    X(VG_KIND_ARRAY, "array")                                                  \
    X(VG_KIND_API, "api")

typedef enum vg_kind {
#define VG_ENUM_(name, label) name,
    VG_KINDS(VG_ENUM_)
#undef VG_ENUM_
    VG_KIND_COUNT
} vg_kind_t;

/* "plain", "pitch", ...; "?" for out-of-range values. Never NULL. */
VG_API const char *vg_kind_name(int kind);

/* Pressure: use as a share of the limit. Low < 50% <= Medium < 80% <= High
 * < 95% <= Critical. Falling back a level needs use 2 percentage points
 * below the boundary (hysteresis), so a request flapping at a boundary does
 * not storm the callbacks. */
typedef enum vg_pressure {
    VG_PRESSURE_LOW = 0,
    VG_PRESSURE_MEDIUM = 1,
    VG_PRESSURE_HIGH = 2,
    VG_PRESSURE_CRITICAL = 3,
} vg_pressure_t;

/* "low", "medium", "high", "critical"; "?" otherwise. Never NULL. */
VG_API const char *vg_pressure_name(int level);

/* ------------------------------------------------------------ devices */

/* VG_OK when libcuda loads, cuInit succeeds and at least one device exists;
 * VG_ENODRIVER or VG_ENODEV otherwise. Fails fast (well under 100 ms) and
 * caches the answer. Every other call that needs the driver does this first. */
VG_API int vg_available(void);

/* Number of devices visible to this process. Out: *count. */
VG_API int vg_device_count(int *count);

/* Finds a device by "N" (CUDA ordinal) or by UUID ("GPU-xxxxxxxx-..." as
 * nvidia-smi prints it). Out: *ordinal. VG_ENODEV when none matches,
 * VG_EINVAL when the text is neither form. */
VG_API int vg_device_find(const char *index_or_uuid, int *ordinal);

typedef struct vg_device_info {
    int ordinal;
    char name[256];
    char uuid[48];          /* "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" */
    int cc_major, cc_minor; /* compute capability */
    int sm_count;
    uint64_t total_bytes; /* physical memory of the card */
    uint64_t free_bytes;  /* the driver's free memory right now */
} vg_device_info_t;

/* Out: *info for one device. */
VG_API int vg_device_info(int ordinal, vg_device_info_t *info);

/* ------------------------------------------------------------- pools */

/* A pool charges every byte it holds from the driver to its own byte limit
 * (and to the process's device budget, VRAMGUARD_BUDGET, when one is set).
 *
 * Caching (docs/pool.md): requests up to 1 MiB are rounded up to a size
 * class (at most 20% larger) and carved out of 2 MiB or 8 MiB driver chunks;
 * a freed block stays cached for reuse. Larger requests, requests aligned to
 * more than 256 bytes and evictable ones go to the driver directly and are
 * freed to it at once. Cached memory counts as used: the pool's `used` is
 * what it holds from the driver, so the budget stays true. Before any
 * request is refused the pool trims its cache (empty chunks, largest and
 * least recently used first), then evicts (VG_ALLOC_EVICTABLE).
 *
 * Pressure is acted on: when the pool's level reaches High, empty chunks are
 * released until it falls below High (and a chunk that empties at High or
 * above is released at once); at Critical, evictable allocations are
 * evicted, lowest priority first, until the level falls below Critical. */
typedef struct vg_pool vg_pool_t;

/* Creates a pool on `device` that may hold at most `limit_bytes` (> 0).
 * Out: *pool. VG_EINVAL for limit 0 or a NULL out-parameter. */
VG_API int vg_pool_create(int device, uint64_t limit_bytes, vg_pool_t **pool);

typedef struct vg_leak_report {
    uint64_t count; /* allocations still live when the pool was destroyed */
    uint64_t bytes;
} vg_leak_report_t;

/* Frees every allocation still in the pool and the pool itself. Optional
 * out: *leaks says what was still live. A NULL pool is a no-op (VG_OK).
 * Buffers created from the pool must not be used afterwards. */
VG_API int vg_pool_destroy(vg_pool_t *pool, vg_leak_report_t *leaks);

enum {
    VG_ALLOC_ZERO = 1u << 0,      /* fill the allocation with zero bytes */
    VG_ALLOC_EVICTABLE = 1u << 1, /* the pool may evict it (see below) */
};

/* Called when the pool evicts an allocation made with VG_ALLOC_EVICTABLE:
 * the owner must give the memory up (copy out what it needs, or drop it)
 * and forget `ptr`. The memory is still valid during the call; the pool
 * frees it when the call returns. From the moment of the call `ptr` is no
 * longer a live allocation: vg_pool_free(ptr) returns VG_ENOTFOUND and
 * vg_pool_touch(ptr) too. Runs on the thread whose request or pressure
 * change caused the eviction, with no vramguard lock held; it may call any
 * vg_ function (an allocation it makes is never evicted to satisfy itself
 * recursively: nested requests that do not fit fail with VG_ENOMEM). */
typedef void (*vg_evict_cb)(vg_pool_t *pool, vg_devptr_t ptr, size_t size,
                            void *user);

/* ABI: fields are only ever added at the end. `priority`, `evict` and
 * `evict_user` (0.2) are read only when `flags` has VG_ALLOC_EVICTABLE, so a
 * caller built against the 0.1 struct, which cannot set that flag, is never
 * read past its end. */
typedef struct vg_alloc_opts {
    size_t align;      /* 0 = driver default; else a power of two >= 256 */
    unsigned flags;    /* VG_ALLOC_* */
    const char *tag;   /* purpose, copied (first 31 bytes); may be NULL */
    int priority;      /* evictable: lower priorities are evicted first */
    vg_evict_cb evict; /* evictable: required (VG_EINVAL without it) */
    void *evict_user;  /* evictable: passed to `evict` */
} vg_alloc_opts_t;

/* Allocates `size` bytes of device memory. `opts` may be NULL.
 * Out: *ptr, device memory of at least `size` bytes, 256-byte aligned (or
 * `opts->align`), inside a driver allocation that the driver has confirmed
 * to be device memory (a small request's block lies in a verified chunk).
 * A request that does not fit first trims the cache, then evicts (lowest
 * priority first, least recently used within a priority).
 * VG_EINVAL: size 0, bad alignment, NULL ptr, VG_ALLOC_EVICTABLE without a
 * callback. VG_ENOMEM: over the pool limit or the device budget even after
 * trimming and evicting, or the driver is out of memory.
 * VG_EBADPTR: the driver returned memory that failed verification (it has
 * been freed again). VG_ESYS: no host memory for the bookkeeping. */
VG_API int vg_pool_alloc(vg_pool_t *pool, size_t size,
                         const vg_alloc_opts_t *opts, vg_devptr_t *ptr);

/* Frees an allocation of this pool. VG_ENOTFOUND when `ptr` is not a live
 * allocation of the pool (nothing is freed).
 * Synchronous, like cuMemFree: the caller may reuse nothing of it, and work
 * queued before the call may still read or write it. The pool guarantees
 * the block is not handed out again until it has synchronised the pool's
 * context (cuCtxSynchronize) after this free; one synchronisation serves a
 * whole batch of frees (docs/pool.md). */
VG_API int vg_pool_free(vg_pool_t *pool, vg_devptr_t ptr);

/* Marks a live allocation as used now, for the eviction order (least
 * recently used first within a priority). An allocation counts as used
 * when it is made and at each touch; nothing else (the pool cannot see
 * kernels). VG_OK for any live allocation of the pool (a no-op unless it is
 * evictable), VG_ENOTFOUND otherwise, VG_EINVAL for a NULL pool. */
VG_API int vg_pool_touch(vg_pool_t *pool, vg_devptr_t ptr);

/* Releases cached memory (empty chunks, largest and least recently used
 * first) until the pool caches at most `keep_bytes`, or nothing more can be
 * released. Optional out: *released, the bytes given back to the driver. */
VG_API int vg_pool_trim(vg_pool_t *pool, uint64_t keep_bytes,
                        uint64_t *released);

/* Out: *bytes the pool may still allocate (limit - use, 0 when over). */
VG_API int vg_pool_available(vg_pool_t *pool, uint64_t *bytes);

/* The pool's current pressure level. LOW for a NULL pool. */
VG_API vg_pressure_t vg_pool_pressure(vg_pool_t *pool);

/* ABI: fields are only ever added at the end (0.2 added everything from
 * `cached`). */
typedef struct vg_pool_stats {
    uint64_t limit;
    uint64_t used;       /* bytes held from the driver, cache included */
    uint64_t peak;
    uint64_t live_count;
    uint64_t allocs, frees, refusals; /* frees include evictions */
    uint64_t count_by_kind[VG_KIND_COUNT]; /* allocations made, by kind */
    uint64_t bytes_by_kind[VG_KIND_COUNT]; /* bytes allocated, by kind */
    uint64_t cached;     /* bytes held in chunks but not handed out */
    uint64_t live_bytes; /* bytes the live allocations asked for */
    uint64_t hits;       /* small requests served from held memory */
    uint64_t misses;     /* small requests that needed the driver */
    uint64_t trims;      /* chunks released from the cache */
    uint64_t evictions;  /* allocations evicted */
    uint64_t reuse_syncs; /* context synchronisations before reuse */
    double fragmentation; /* 1 - live_bytes / used; 0 when used is 0 */
} vg_pool_stats_t;

/* Out: *stats, a consistent-enough snapshot (each field exact; fields read
 * at slightly different moments under concurrency). */
VG_API int vg_pool_stats(vg_pool_t *pool, vg_pool_stats_t *stats);

/* Called when the pool's level changes. `user` is what was registered. */
typedef void (*vg_pressure_cb)(vg_pool_t *pool, vg_pressure_t old_level,
                               vg_pressure_t new_level, void *user);

/* Registers a callback (at most 8 per pool). VG_ENOMEM when full. */
VG_API int vg_pool_on_pressure(vg_pool_t *pool, vg_pressure_cb cb, void *user);

#define VG_EXPLAIN_RECENT 8

typedef struct vg_refusal {
    uint64_t requested; /* bytes asked for */
    uint64_t limit;     /* the pool's limit */
    uint64_t used;      /* the pool's use when asked */
    uint64_t driver_free; /* the driver's free memory on the device */
    int recent_count;
    struct {
        vg_devptr_t ptr;
        uint64_t size;
        char tag[32];
    } recent[VG_EXPLAIN_RECENT]; /* the pool's newest live allocations,
                                    newest first */
} vg_refusal_t;

/* Explains whether and why a request of `requested` bytes would be refused
 * now. Out: *why. Writes a one-line human summary into buf (may be NULL). */
VG_API int vg_pool_explain(vg_pool_t *pool, uint64_t requested,
                           vg_refusal_t *why, char *buf, size_t buflen);

/* The process's use of one device as the engine sees it: every allocation
 * made through vramguard (the preload shim's intercepted calls and every
 * pool), charged against the device budget (VRAMGUARD_BUDGET). */
typedef struct vg_device_stats {
    uint64_t budget;        /* UINT64_MAX when no budget is set */
    uint64_t used;          /* bytes charged now, overhead included */
    uint64_t peak;
    uint64_t refusals;
    uint64_t overhead;      /* memory no allocation call shows: measured
                               (context, modules, library workspaces;
                               0 if unknown) plus cuCtxSetLimit's charge */
    uint64_t live_count;    /* live allocations */
    uint64_t count_by_kind[VG_KIND_COUNT]; /* live allocations, by kind */
    uint64_t bytes_by_kind[VG_KIND_COUNT]; /* their bytes, by kind */
} vg_device_stats_t;

/* Out: *stats for `device`. Walks the live allocations (not for hot
 * loops). VG_EINVAL for NULL or an ordinal outside 0..63; an ordinal with
 * no device behind it is VG_OK with nothing used: vg_device_info says
 * whether a device exists. */
VG_API int vg_device_stats(int device, vg_device_stats_t *stats);

/* ----------------------------------------------------------- buffers */

/* A buffer owns one allocation (unique ownership). */
typedef struct vg_buf vg_buf_t;

/* Allocates a buffer of `size` bytes from `pool` (opts as vg_pool_alloc).
 * Out: *buf. */
VG_API int vg_buf_create(vg_pool_t *pool, size_t size,
                         const vg_alloc_opts_t *opts, vg_buf_t **buf);

/* Copies n bytes host -> device at `offset`. VG_ERANGE when offset + n
 * exceeds the size or overflows; nothing is copied then. */
VG_API int vg_buf_write(vg_buf_t *buf, size_t offset, const void *src,
                        size_t n);

/* Copies n bytes device -> host from `offset`. VG_ERANGE as vg_buf_write. */
VG_API int vg_buf_read(const vg_buf_t *buf, size_t offset, void *dst,
                       size_t n);

/* The device pointer and size; 0 for a NULL buffer. */
VG_API vg_devptr_t vg_buf_ptr(const vg_buf_t *buf);
VG_API size_t vg_buf_size(const vg_buf_t *buf);

/* Hands the allocation to the caller, who frees it with vg_pool_free().
 * Out: *ptr. The handle is freed and *buf set to NULL. */
VG_API int vg_buf_release(vg_buf_t **buf, vg_devptr_t *ptr);

/* Frees the allocation and the handle and sets *buf to NULL. Idempotent:
 * a NULL handle (or buf == NULL) is VG_OK. */
VG_API int vg_buf_destroy(vg_buf_t **buf);

/* ---------------------------------------------------- pointer checks */

/* X(name, label) */
#define VG_PTR_CLASSES(X)                                                      \
    X(VG_PTR_LIVE, "live")         /* exact start of a live allocation */     \
    X(VG_PTR_INTERIOR, "interior") /* inside a live allocation */             \
    X(VG_PTR_FREED, "freed")       /* recently freed by us */                 \
    X(VG_PTR_FOREIGN, "foreign")   /* the driver knows it, we don't */        \
    X(VG_PTR_HOST, "host")         /* ordinary host memory */                 \
    X(VG_PTR_FAKE, "fake")         /* nobody knows it */

typedef enum vg_ptr_class {
#define VG_ENUM_(name, label) name,
    VG_PTR_CLASSES(VG_ENUM_)
#undef VG_ENUM_
    VG_PTR_CLASS_COUNT
} vg_ptr_class_t;

/* "live", "interior", ...; "?" otherwise. Never NULL. */
VG_API const char *vg_ptr_class_name(int cls);

typedef struct vg_ptr_info {
    vg_ptr_class_t cls;
    vg_devptr_t base;  /* start of the allocation (live, interior, freed) */
    uint64_t offset;   /* ptr - base */
    uint64_t size;     /* size of that allocation, when known */
    vg_kind_t kind;    /* how it was allocated (live, interior, freed) */
    int device;        /* -1 when unknown */
    char pattern[64];  /* for fake: a recognised pattern, else "" */
} vg_ptr_info_t;

/* Classifies any address against every allocation this process made through
 * vramguard (pools and the preload shim alike). Out: *info. */
VG_API int vg_ptr_check(vg_devptr_t ptr, vg_ptr_info_t *info);

#define VG_VERIFY_SHOW 8

typedef struct vg_verify_report {
    uint64_t checked; /* live allocations asked about */
    uint64_t skipped; /* live objects that are not addresses (VMM handles,
                         arrays) or not mapped yet (graph memory) */
    uint64_t bad;     /* allocations the driver does not confirm as device
                         memory of their full size */
    int shown;        /* entries filled in ptrs[], <= VG_VERIFY_SHOW */
    vg_devptr_t ptrs[VG_VERIFY_SHOW]; /* the first bad ones */
} vg_verify_report_t;

/* Re-checks every live allocation this process made through vramguard
 * (pools and the preload shim alike) against the driver: each must be
 * device or managed memory covering its whole size (cuPointerGetAttribute
 * and cuMemGetAddressRange, ~200 ns each; walks the ledger, so not for hot
 * loops). Uses the current context, or borrows the primary context of the
 * first allocation's device when there is none. Out: *out, always filled.
 * VG_OK when every allocation checked is real, VG_EBADPTR when at least
 * one is not, VG_ENODRIVER without a driver, VG_EINVAL for NULL. Frees
 * nothing and changes no charge. */
VG_API int vg_verify_all(vg_verify_report_t *out);

#ifdef __cplusplus
}
#endif
#endif /* VRAMGUARD_H */
