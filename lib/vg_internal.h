/*
 * vg_internal.h — the engine's internal declarations, grouped by the file
 * that defines them. Cross-file internals are named vg__*; nothing here is
 * exported from the shared libraries (they build with -fvisibility=hidden).
 *
 * Flow: shim/ and the public API (pool.c, buf.c) -> engine.c -> budget.c,
 * ledger.c, ptrcheck.c -> driver.c (the real libcuda, never the hooks).
 */
#ifndef VG_INTERNAL_H
#define VG_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cuda.h>

#include "vramguard.h"

#define vg__likely(x) __builtin_expect(!!(x), 1)
#define vg__unlikely(x) __builtin_expect(!!(x), 0)
#define VG__HIDDEN __attribute__((visibility("hidden")))

#define VG__UNLIMITED UINT64_MAX
#define VG__MAX_DEVICES 64
#define VG__TAG_LEN 32

/* ------------------------------------------------------------ util.c */

/* Wall-clock nanoseconds (CLOCK_REALTIME, vDSO: no syscall). */
uint64_t vg__now_ns(void);
/* Wall-clock nanoseconds at the kernel tick's resolution (1-4 ms): a
 * quarter of vg__now_ns's cost, for the hot path's allocation records. */
uint64_t vg__now_coarse_ns(void);
/* Monotonic nanoseconds, for benchmarks and rate limits. */
uint64_t vg__mono_ns(void);
/* The calling thread's kernel tid, cached per thread after the first call. */
uint32_t vg__tid(void);
/* Forgets the cached tid (a forked child's thread has a new one). */
void vg__tid_reset(void);
/* Formats `bytes` for humans ("1.50 GiB", "512 B") into buf; returns buf. */
char *vg__fmt_bytes(uint64_t bytes, char *buf, size_t len);
/* Writes one line to stderr with the "vramguard: " prefix (no malloc). */
void vg__log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* -------------------------------------------------------- settings.c */

typedef enum vg__budget_unit {
    VG__BUDGET_NONE = 0,  /* no limit */
    VG__BUDGET_BYTES,
    VG__BUDGET_PERCENT,   /* of the device's physical memory */
} vg__budget_unit_t;

typedef struct vg__budget_value {
    vg__budget_unit_t unit;
    uint64_t bytes;       /* for VG__BUDGET_BYTES */
    double percent;       /* for VG__BUDGET_PERCENT, 0 < percent <= 100 */
} vg__budget_value_t;

#define VG__BUDGET_ENTRIES 16

/* A parsed budget: one value for every device, and per-device overrides. */
typedef struct vg__budget_spec {
    vg__budget_value_t all;  /* applies to devices with no entry */
    int count;
    struct {
        int ordinal;         /* -1 when selected by uuid */
        char uuid[48];       /* "GPU-..." or "" */
        vg__budget_value_t value;
    } entry[VG__BUDGET_ENTRIES];
} vg__budget_spec_t;

/* Parses a size: "123", "8GiB", "8G", "512MiB", "1.5GiB", "10GB" (decimal),
 * "1Gi", "1.5g". Pure. VG_ESETTING with a message in err ("unknown unit
 * 'XB'", "empty", "trailing text", "too large", "negative") on failure. */
int vg__size_parse(const char *text, uint64_t *bytes, char *err, size_t errlen);

/* Parses a budget: SIZE, "N%", or a list "0=8GiB,1=4GiB,GPU-<uuid>=2GiB"
 * (an entry without "DEV=" sets the default for all devices). Pure. */
int vg__budget_spec_parse(const char *text, vg__budget_spec_t *spec,
                          char *err, size_t errlen);

/* The limit for one device: VG__UNLIMITED when the spec sets none. */
uint64_t vg__budget_spec_limit(const vg__budget_spec_t *spec, int ordinal,
                               const char *uuid, uint64_t device_total);

typedef enum vg__bad_ptr_policy {
    VG__BADPTR_WARN = 0,
    VG__BADPTR_REJECT,
    VG__BADPTR_ABORT,
} vg__bad_ptr_policy_t;

typedef enum vg__managed_mode {
    VG__MANAGED_COUNT = 0,
    VG__MANAGED_IGNORE,
    VG__MANAGED_DENY,
} vg__managed_mode_t;

typedef enum vg__pool_mode { VG__POOL_OFF = 0, VG__POOL_CACHE } vg__pool_mode_t;

typedef enum vg__log_level {
    VG__LOG_ERROR = 0,
    VG__LOG_WARN,
    VG__LOG_INFO,
    VG__LOG_DEBUG,
} vg__log_level_t;

/* Every setting, resolved. */
typedef struct vg__settings {
    vg__budget_spec_t budget;
    char libcuda[4096];
    char shared[256];
    char audit[4096];
    vg__bad_ptr_policy_t on_bad_pointer;
    vg__managed_mode_t managed;
    vg__pool_mode_t pool;
    vg__log_level_t log_level;
} vg__settings_t;

/* Looks up an environment variable; returns NULL when unset. */
typedef const char *(*vg__getenv_fn)(const char *name, void *ctx);

/* Parses every setting through `get` (pure: pass getenv-like lookups).
 * VG_ESETTING with "NAME='text': reason (accepted: ...)" in err on the first
 * bad value. */
int vg__settings_parse(vg__getenv_fn get, void *ctx, vg__settings_t *out,
                       char *err, size_t errlen);

/* One setting as --help, the docs and `vramguard run` show it. Every
 * string is static; only `flag` may be NULL. */
typedef struct vg__setting_info {
    const char *env;      /* "VRAMGUARD_BUDGET" */
    const char *flag;     /* the `vramguard run` option ("--budget"), or NULL */
    const char *metavar;  /* the flag's value in --help: "SIZE|N%", "PATH",
                           * or an enum's words "warn|reject|abort" */
    const char *deflt;    /* the default, "" when unset means none */
    const char *accepted; /* the values accepted, for error messages */
    const char *help;     /* what it does, ending "Accepted: <accepted>." */
} vg__setting_info_t;

/* Describes every setting (for --help, `vramguard run` and docs): calls fn
 * once per setting in table order. *info is valid only during the call. */
typedef void (*vg__setting_visit_fn)(const vg__setting_info_t *info,
                                     void *ctx);
void vg__settings_describe(vg__setting_visit_fn fn, void *ctx);

/* ---------------------------------------------------------- driver.c */

/* X(name, params): every driver entry point the engine itself calls, with
 * its full prototype. The engine resolves these once from the real libcuda
 * through the real dlsym, so its own calls never pass through any hook. */
#define VG__DRIVER_FNS(X)                                                      \
    X(cuInit, (unsigned int flags))                                            \
    X(cuDriverGetVersion, (int *version))                                      \
    X(cuGetErrorName, (CUresult error, const char **str))                      \
    X(cuDeviceGetCount, (int *count))                                          \
    X(cuDeviceGet, (CUdevice *device, int ordinal))                            \
    X(cuDeviceGetName, (char *name, int len, CUdevice dev))                    \
    X(cuDeviceGetUuid_v2, (CUuuid *uuid, CUdevice dev))                        \
    X(cuDeviceGetAttribute,                                                    \
      (int *pi, CUdevice_attribute attrib, CUdevice dev))                      \
    X(cuDeviceTotalMem_v2, (size_t *bytes, CUdevice dev))                      \
    X(cuDevicePrimaryCtxRetain, (CUcontext *pctx, CUdevice dev))               \
    X(cuDevicePrimaryCtxRelease_v2, (CUdevice dev))                            \
    X(cuCtxGetCurrent, (CUcontext *pctx))                                      \
    X(cuCtxSetCurrent, (CUcontext ctx))                                        \
    X(cuCtxGetDevice, (CUdevice *device))                                      \
    X(cuMemAlloc_v2, (CUdeviceptr *dptr, size_t bytesize))                     \
    X(cuMemFree_v2, (CUdeviceptr dptr))                                        \
    X(cuMemGetInfo_v2, (size_t *free, size_t *total))                          \
    X(cuMemsetD8_v2, (CUdeviceptr dst, unsigned char uc, size_t n))            \
    X(cuMemcpyHtoD_v2,                                                         \
      (CUdeviceptr dst, const void *src, size_t bytes))                        \
    X(cuMemcpyDtoH_v2, (void *dst, CUdeviceptr src, size_t bytes))            \
    X(cuMemGetAddressRange_v2,                                                 \
      (CUdeviceptr *base, size_t *size, CUdeviceptr dptr))                     \
    X(cuPointerGetAttribute,                                                   \
      (void *data, CUpointer_attribute attribute, CUdeviceptr ptr))            \
    X(cuDeviceGetMemPool, (CUmemoryPool *pool, CUdevice dev))                  \
    X(cuMemPoolGetAttribute,                                                   \
      (CUmemoryPool pool, CUmemPool_attribute attr, void *value))              \
    X(cuMemPoolTrimTo, (CUmemoryPool pool, size_t minBytesToKeep))            \
    X(cuArrayGetMemoryRequirements,                                            \
      (CUDA_ARRAY_MEMORY_REQUIREMENTS *req, CUarray array, CUdevice device))   \
    X(cuMipmappedArrayGetMemoryRequirements,                                   \
      (CUDA_ARRAY_MEMORY_REQUIREMENTS *req, CUmipmappedArray mipmap,          \
       CUdevice device))

typedef struct vg__driver {
    void *handle;
    int version; /* cuDriverGetVersion, 0 until the driver is initialised */
#define VG__DRIVER_FIELD_(name, params) CUresult (*name) params;
    VG__DRIVER_FNS(VG__DRIVER_FIELD_)
#undef VG__DRIVER_FIELD_
} vg__driver_t;

/* Code that may run inside a sanitizer runtime's own start-up (its dlsym
 * calls reach the shim's dlsym) must not be instrumented. */
#define VG__NO_SANITIZE __attribute__((no_sanitize("address", "undefined", "thread")))

typedef void *(*vg__dlsym_fn)(void *, const char *);
/* libc's own dlsym, never an interposed one (the shim overrides dlsym);
 * NULL only if glibc has none. Safe before any sanitizer has started. */
vg__dlsym_fn vg__libc_dlsym(void);
/* vg__libc_dlsym()(handle, name), or NULL. */
void *vg__real_dlsym(void *handle, const char *name);

/* Loads the real driver once from `path` (NULL or "" = libcuda.so.1) and
 * resolves VG__DRIVER_FNS. Does not call cuInit. The first call decides;
 * later calls return its result. VG_ENODRIVER when the library or an entry
 * point is missing; vg__driver_error() says which. */
int vg__driver_load(const char *path);
/* The loaded table; NULL before a successful vg__driver_load(). */
const vg__driver_t *vg__driver(void);
/* One line saying why the driver could not be loaded ("" when it could). */
const char *vg__driver_error(void);
/* A driver status as "CUDA_ERROR_X" (static text, never NULL). */
const char *vg__cu_name(CUresult rc);

/* ---------------------------------------------------------- device.c */

/* Device facts the engine needs on slow paths (budget resolution). They
 * require an initialised driver (the application's cuInit, or
 * vg_available()). */
int vg__device_uuid(int ordinal, char uuid[48]);
int vg__device_total(int ordinal, uint64_t *bytes);
/* Formats a CUuuid as "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx". */
void vg__uuid_format(const CUuuid *uuid, char out[48]);

/* ---------------------------------------------------------- budget.c */

typedef void (*vg__level_fn)(void *owner, vg_pressure_t old_level,
                             vg_pressure_t new_level, void *user);

#define VG__LEVEL_HOOKS 8

/* A byte limit and its use. used never exceeds limit through reserve(), no
 * matter how many threads race (compare-and-swap). Lowering the limit below
 * use is allowed: reserves then fail until frees bring use down. */
typedef struct vg__budget {
    _Atomic uint64_t limit; /* VG__UNLIMITED when none */
    _Atomic uint64_t used;
    _Atomic uint64_t peak;
    _Atomic uint64_t refusals;
    _Atomic int level;      /* vg_pressure_t */
    void *owner;            /* passed to level hooks */
    _Atomic int hook_count;
    struct {
        vg__level_fn fn;
        void *user;
    } hooks[VG__LEVEL_HOOKS];
} vg__budget_t;

void vg__budget_init(vg__budget_t *b, uint64_t limit, void *owner);
void vg__budget_set_limit(vg__budget_t *b, uint64_t limit);
/* Adds n to use if that stays within the limit: VG_OK, else VG_ENOMEM (and
 * counts a refusal). */
int vg__budget_reserve(vg__budget_t *b, uint64_t n);
/* The reserved bytes are now really allocated: updates peak and level. */
void vg__budget_commit(vg__budget_t *b, uint64_t n);
/* Undoes a reserve whose allocation failed. */
void vg__budget_rollback(vg__budget_t *b, uint64_t n);
/* Returns committed bytes on free; updates level. */
void vg__budget_release(vg__budget_t *b, uint64_t n);
/* Charges n without a limit check (memory the driver already handed out,
 * e.g. measured overhead); updates peak and level. */
void vg__budget_force(vg__budget_t *b, uint64_t n);
/* limit - used, or 0 when over. */
uint64_t vg__budget_available(const vg__budget_t *b);
vg_pressure_t vg__budget_level(const vg__budget_t *b);
/* The level for a use/limit pair given the current level (hysteresis). Pure. */
vg_pressure_t vg__pressure_for(uint64_t used, uint64_t limit,
                               vg_pressure_t current);
/* Registers a level hook; VG_ENOMEM when VG__LEVEL_HOOKS are taken. */
int vg__budget_on_level(vg__budget_t *b, vg__level_fn fn, void *user);

/* ---------------------------------------------------------- ledger.c */

/* One live (or recently freed) allocation. */
typedef struct vg__alloc {
    vg_devptr_t ptr;     /* what the caller sees */
    vg_devptr_t base;    /* what the driver returned (== ptr unless aligned) */
    uint64_t size;       /* bytes the caller asked for */
    uint64_t charged;    /* bytes charged to budgets */
    uint64_t time_ns;    /* wall clock at allocation */
    uint64_t seq;        /* process-wide allocation sequence number */
    const void *owner;   /* the vg_pool_t, or NULL for the shim */
    uint64_t handle;     /* the stream-ordered pool it came from, else 0 */
    uint32_t tid;
    int16_t device;
    uint8_t kind;        /* vg_kind_t */
    char tag[VG__TAG_LEN];
} vg__alloc_t;

/* The process's live allocations keyed by ptr, sharded so threads rarely
 * share a lock, plus a bounded quarantine of recently freed ones. Records
 * are recycled from per-shard free lists: after warm-up, insert and remove
 * do not call malloc. */

/* Next sequence number (starts at 1). */
uint64_t vg__ledger_next_seq(void);
/* Inserts a copy of *a. VG_EINVAL if ptr is already live (the old record is
 * kept), VG_ESYS if no memory for records. */
int vg__ledger_insert(const vg__alloc_t *a);
/* Removes ptr if it is live and (owner == VG__ANY_OWNER or it matches);
 * moves it to the quarantine. Optional out: *out. VG_ENOTFOUND otherwise. */
#define VG__ANY_OWNER ((const void *)-1)
int vg__ledger_remove(vg_devptr_t ptr, const void *owner, vg__alloc_t *out);
/* Looks up a live allocation starting exactly at ptr. */
int vg__ledger_find(vg_devptr_t ptr, vg__alloc_t *out);
/* Looks up a quarantined (recently freed) allocation containing ptr. */
int vg__ledger_find_freed(vg_devptr_t ptr, vg__alloc_t *out);
/* Number of live allocations. */
uint64_t vg__ledger_count(void);
/* Calls fn on a copy of each live allocation (owner filter as remove). The
 * ledger may change meanwhile; each record is visited at most once. */
typedef void (*vg__alloc_visit_fn)(const vg__alloc_t *a, void *ctx);
void vg__ledger_foreach(const void *owner, vg__alloc_visit_fn fn, void *ctx);

/* -------------------------------------------------------- ptrcheck.c */

/* Classifies ptr: ledger first (live, interior via the driver's address
 * range, freed), then the driver (foreign), then the address space (host),
 * else fake, naming recognisable fake patterns. Rare path: may read
 * /proc/self/maps. */
int vg__ptr_classify(vg_devptr_t ptr, vg_ptr_info_t *info);
/* Names a recognisable synthetic pattern into out ("" if none). Pure. */
void vg__fake_pattern(vg_devptr_t ptr, char *out, size_t len);

/* ------------------------------------------------------------ pool.c */

/* Makes a pool's context current for a driver call and puts the caller's
 * back afterwards (skipping the switch when it is already current). */
typedef struct vg__ctx_guard {
    CUcontext prev;
    bool swapped;
} vg__ctx_guard_t;
void vg__pool_ctx_enter(const vg_pool_t *pool, vg__ctx_guard_t *g);
void vg__pool_ctx_leave(vg__ctx_guard_t *g);

/* --------------------------------------------------------- account.c */

/* The engine's door for allocations intercepted in an unmodified process.
 * The shim asks before the driver allocates (reserve), then tells what
 * happened (commit or cancel), and hands frees back (release). All policy
 * lives here; the shim only forwards. */

/* Keys that are not device addresses (VMM handles, arrays) carry this bit,
 * so they never collide with a device pointer: canonical user-space
 * addresses on x86-64 and arm64 are below 2^48. */
#define VG__KEY_HANDLE (1ull << 63)

/* One intercepted allocation in flight. */
typedef struct vg__ticket {
    int device;
    vg_kind_t kind;
    uint64_t bytes;   /* reserved against the device budget */
    const char *api;  /* the hooked entry point, for messages */
    vg__budget_t *budget; /* set by vg__acct_reserve, used by the rest */
} vg__ticket_t;

/* Reserves t->bytes on t->device for an allocation of kind t->kind.
 * VG_ENOMEM over budget (one rate-limited stderr line), VG_EDENIED when a
 * policy forbids the kind (VRAMGUARD_MANAGED=deny), VG_ESETTING when the
 * engine failed to start (fail closed: nothing is allowed). */
int vg__acct_reserve(vg__ticket_t *t);
/* Changes the reservation to the size the driver really used (pitch,
 * arrays). Growth must fit the budget: VG_ENOMEM otherwise (the old
 * reservation stays). */
int vg__acct_resize(vg__ticket_t *t, uint64_t bytes);
/* The allocation succeeded: commit and record it under `key` (a device
 * pointer, or a handle with VG__KEY_HANDLE). `size` is what the caller
 * asked for; `pool` the stream-ordered pool it came from, else 0. */
void vg__acct_commit(vg__ticket_t *t, uint64_t key, uint64_t size,
                     uint64_t pool);
/* The allocation failed: give the reservation back. */
void vg__acct_cancel(vg__ticket_t *t);
/* Takes `key` out of the ledger and gives its charge back. Out: *out.
 * VG_ENOTFOUND when it is not a live allocation (nothing changes). Call it
 * before the driver frees, so an address the driver reuses at once can be
 * recorded again; undo with vg__acct_restore() if the driver's free fails. */
int vg__acct_release(uint64_t key, vg__alloc_t *out);
void vg__acct_restore(const vg__alloc_t *a);
/* Rewrites the driver's memory view of `device` to the budget's:
 * total = min(budget, physical); free = clamp(total - use, 0, free).
 * Unchanged when the device has no budget. */
void vg__acct_meminfo(int device, uint64_t *free_bytes, uint64_t *total_bytes);

/* Stream-ordered pools keep freed memory reserved, so for them the budget
 * carries what each pool reserves (CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT),
 * not what was asked for. */
/* Brings the standing charge of `pool` in line with what it reserves now. */
void vg__acct_pool_sync(int device, CUmemoryPool pool);
/* Settles a ticket for an allocation just served by `pool`: converts the
 * reservation into the pool's real growth. VG_ENOMEM when the pool grew
 * by more than the budget allows (the caller must free the allocation). */
int vg__acct_pool_settle(vg__ticket_t *t, CUmemoryPool pool);
/* Trims every pool this process charged on `device` down to its use and
 * re-syncs their charges. Returns true if anything was released. */
bool vg__acct_pool_trim(int device);
/* Forgets a destroyed pool and returns its charge. */
void vg__acct_pool_forget(CUmemoryPool pool);

/* Sets the measured memory of `device` that no call shows (context,
 * module images, library workspaces) and charges the change, with no
 * limit check: it is already spent. */
void vg__acct_overhead_set(int device, uint64_t bytes);
uint64_t vg__acct_overhead(int device);

/* -------------------------------------------------------- overhead.c */

/* Memory no call shows (context, module images, library workspaces):
 * NVML's figure for this process on the device minus what the calls
 * showed, charged through vg__acct_overhead_set(). Re-measures `device`
 * unless it was measured less than a second ago or has no budget. Slow
 * paths only (the first allocation on a device, refusals): it may load
 * NVML and call it. Thread-safe; a thread that loses the race returns. */
typedef enum vg__refresh {
    VG__REFRESH_RATE_LIMITED = 0, /* at most once a second per device */
    VG__REFRESH_NOW,              /* the first allocation of a device */
} vg__refresh_t;
void vg__overhead_refresh(int device, vg__refresh_t when);

/* ---------------------------------------------------------- engine.c */

/* One engine per process. vg__engine_init() is idempotent and thread-safe:
 * it parses the settings and loads the driver (never cuInit). VG_ESETTING or
 * VG_ENODRIVER on failure, with vg__engine_error() saying why. */
int vg__engine_init(void);
const char *vg__engine_error(void);
const vg__settings_t *vg__engine_settings(void);
/* The process budget of a device (VRAMGUARD_BUDGET), resolved on first use;
 * unlimited when no budget is set. NULL for a bad ordinal. */
vg__budget_t *vg__engine_budget(int device);

#endif /* VG_INTERNAL_H */
