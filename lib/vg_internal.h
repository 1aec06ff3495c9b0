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

#include <pthread.h>
#include <sched.h>
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
/* The same clock at the kernel tick's resolution (1-4 ms), a fraction of
 * the cost: for once-a-second decisions on a hot path. */
uint64_t vg__mono_coarse_ns(void);
/* The calling thread's kernel tid, cached per thread after the first call. */
uint32_t vg__tid(void);
/* Forgets the cached tid (a forked child's thread has a new one). */
void vg__tid_reset(void);
/* Formats `bytes` for humans ("1.50 GiB", "512 B") into buf; returns buf. */
char *vg__fmt_bytes(uint64_t bytes, char *buf, size_t len);
/* Writes one line to stderr with the "vramguard: " prefix (no malloc). */
void vg__log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ----------------------------------------------------------- parse.c */

/* Where a reason goes: a caller's buffer (s may be NULL, n may be 0). */
typedef struct vg__err {
    char *s;
    size_t n;
} vg__err_t;

#define VG__REASON_LEN 160 /* a reason buffer; longer reasons are cut */
#define VG__ECHO_MAX 64    /* bytes of a bad value echoed in messages */
#define VG__MS_MAX 3600000 /* VRAMGUARD_WAIT_MS's upper bound: one hour */

/* Writes `reason` into e (when it has room); returns VG_ESETTING. */
int vg__fail(vg__err_t e, const char *reason);

/* Copies up to `max` bytes of s[0..len) into out for quoting in a one-line
 * message: control bytes become '?', and a longer text ends in "...". out
 * is always NUL-terminated when outlen > 0. */
void vg__echo(char *out, size_t outlen, const char *s, size_t len,
              size_t max);

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

/* [A-Za-z0-9._-]{1,200}, and not "." or "..". VG_OK or VG_ESETTING with a
 * reason in e. */
int vg__name_check(const char *text, vg__err_t e);

/* Out: *index, the position of `text` (ASCII case-insensitive) among the
 * '|'-separated words of `words`. VG_ESETTING with a reason on no match. */
int vg__enum_parse(const char *words, const char *text, int *index,
                   vg__err_t e);

/* Decimal digits only, 0..VG__MS_MAX; out: *ms. */
int vg__ms_parse(const char *text, int *ms, vg__err_t e);

/* Decimal digits only, 0..VG__MAX_FRAMES; out: *frames. */
int vg__frames_parse(const char *text, int *frames, vg__err_t e);

/* -------------------------------------------------------- settings.c */

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

typedef enum vg__shared_group {
    VG__SHARED_OWNER = 0, /* the region is mode 0600 */
    VG__SHARED_GROUP,     /* mode 0660: the file's group may attach */
} vg__shared_group_t;

/* Every setting, resolved. */
typedef struct vg__settings {
    vg__budget_spec_t budget;
    char libcuda[4096];
    char shared[256];
    char shared_cache[4096];  /* HAMi's CUDA_DEVICE_MEMORY_SHARED_CACHE */
    vg__shared_group_t shared_group;
    int wait_ms;              /* VRAMGUARD_WAIT_MS: 0 = refuse at once */
    char audit[4096];
    vg__bad_ptr_policy_t on_bad_pointer;
    vg__managed_mode_t managed;
    vg__pool_mode_t pool;
    vg__log_level_t log_level;
    int backtrace;   /* call-site frames per audited event, 0..VG__MAX_FRAMES */
    int leaks;       /* 1: leak report at exit even without the audit log */
    int verify;      /* 1: ask the driver about every intercepted allocation */
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
    X(cuDevicePrimaryCtxGetState,                                              \
      (CUdevice dev, unsigned int *flags, int *active))                        \
    X(cuCtxGetCurrent, (CUcontext *pctx))                                      \
    X(cuCtxSetCurrent, (CUcontext ctx))                                        \
    X(cuCtxGetDevice, (CUdevice *device))                                      \
    X(cuCtxSynchronize, (void))                                                \
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
/* The CUresult for a vg status: the one mapping, used by every hook and by
 * the audit log (VG_ENOMEM and a fail-closed VG_ESETTING are
 * CUDA_ERROR_OUT_OF_MEMORY, VG_EDENIED is CUDA_ERROR_NOT_SUPPORTED, ...). */
CUresult vg__cu_status(int vg_status);
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
struct vg__shm;

typedef struct vg__budget {
    /* Set when the budget lives in a shared region (VRAMGUARD_SHARED): every
     * operation then goes to shared.c, and the fields below mirror the
     * region's device entry as of this process's last operation on it. NULL
     * for per-process budgets and pools: one predictable branch. */
    struct vg__shm *shared;
    int shared_dev;         /* the region's device entry */
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
/* The limit and use now (a shared budget's are read from its region:
 * slow path, takes its lock). */
void vg__budget_read(const vg__budget_t *b, uint64_t *limit, uint64_t *used);
vg_pressure_t vg__budget_level(const vg__budget_t *b);
/* The level for a use/limit pair given the current level (hysteresis). Pure. */
vg_pressure_t vg__pressure_for(uint64_t used, uint64_t limit,
                               vg_pressure_t current);
/* Registers a level hook; VG_ENOMEM when VG__LEVEL_HOOKS are taken. */
int vg__budget_on_level(vg__budget_t *b, vg__level_fn fn, void *user);

/* -------------------------- shared_region.c, shared_reap.c, shared.c */

/* A budget shared by every process that names the same region
 * (VRAMGUARD_SHARED=NAME -> /dev/shm/vramguard.NAME, or HAMi's
 * CUDA_DEVICE_MEMORY_SHARED_CACHE=PATH). The layout is fixed: after
 * vg__shm_validate() accepts a region, every index is bounded by the
 * constants below, never by a count read from the file. Every field below
 * the header's magic is read and written under the header's robust,
 * process-shared mutex (the CLI copies a snapshot under it). */
#define VG__SHM_MAGIC 0x314d485347524756ull /* "VGRGSHM1" */
#define VG__SHM_VERSION 1u
#define VG__SHM_DEVICES 64
#define VG__SHM_SLOTS 256
#define VG__SHM_WAITERS 64
#define VG__SHM_CMD 64
#define VG__SHM_PREFIX "/dev/shm/vramguard."

_Static_assert(VG__SHM_DEVICES == VG__MAX_DEVICES,
               "a region has one entry per engine device");

typedef struct vg__shm_device {
    uint64_t limit;     /* VG__UNLIMITED when none */
    uint64_t used;      /* sum of the live slots' used[] for this entry */
    uint64_t peak;      /* highest `used` ever reserved */
    uint64_t refusals;
    int32_t level;      /* vg_pressure_t */
    int32_t ordinal;    /* the CUDA ordinal of the first process; -1 free */
    char uuid[48];      /* "GPU-..." when known: the entry's key */
} vg__shm_device_t;

typedef struct vg__shm_slot {
    int32_t pid;        /* 0: free */
    uint32_t uid;
    uint64_t start;     /* field 22 of /proc/PID/stat: pid + start = identity */
    char cmd[VG__SHM_CMD];
    uint64_t used[VG__SHM_DEVICES];     /* bytes charged, overhead included */
    uint64_t live[VG__SHM_DEVICES];     /* live allocations */
    uint64_t overhead[VG__SHM_DEVICES]; /* memory no call shows */
} vg__shm_slot_t;

/* A request waiting for memory (VRAMGUARD_WAIT_MS): the live waiter with
 * the smallest ticket is the only one that may retry (first come, first
 * served); dead or timed-out ones are dropped. */
typedef struct vg__shm_waiter {
    int32_t pid;        /* 0: free */
    int32_t pad;
    uint64_t start;
    uint64_t ticket;
    uint64_t deadline_ns; /* CLOCK_MONOTONIC (system-wide) */
} vg__shm_waiter_t;

typedef struct vg__shm_header {
    uint64_t magic;
    uint32_t version;
    uint32_t header_size;  /* sizeof(vg__shm_header_t) */
    uint64_t total_size;   /* sizeof(vg__shm_t) */
    uint32_t device_count, slot_count, waiter_count, cmd_len;
    uint32_t creator_uid;
    uint32_t pad;
    uint64_t pidns;        /* inode of the creator's PID namespace */
    uint64_t default_limit; /* for device entries not claimed yet */
    uint64_t last_reap_ns; /* CLOCK_MONOTONIC */
    uint64_t generation;   /* bumped whenever a slot is dropped */
    uint64_t ticket_next;
    union {
        pthread_mutex_t m; /* robust, process-shared */
        unsigned char bytes[64];
    } lock;
    vg__shm_waiter_t waiters[VG__SHM_WAITERS];
} vg__shm_header_t;

typedef struct vg__shm {
    vg__shm_header_t h;
    vg__shm_device_t dev[VG__SHM_DEVICES];
    vg__shm_slot_t slot[VG__SHM_SLOTS];
} vg__shm_t;

/* Under the lock: an entry's pressure level from its use and limit (a
 * garbled level counts as low). Inline: every shared reserve runs it. */
static inline void vg__shm_level_update(vg__shm_device_t *d)
{
    int cur = d->level;
    if (cur < VG_PRESSURE_LOW || cur > VG_PRESSURE_CRITICAL)
        cur = VG_PRESSURE_LOW;
    d->level = (int32_t)vg__pressure_for(d->used, d->limit, (vg_pressure_t)cur);
}

/* shared_region.c: the region's file (path, create, attach, checks). */

/* Checks that buf[0..len) is a region of this layout: length, magic,
 * version, header size, total size and every count. Pure; reads nothing
 * past len. VG_EINVAL with a reason in err otherwise. */
int vg__shm_validate(const void *buf, size_t len, char *err, size_t errlen);

/* Checks a region file's stat facts: a regular file of exactly the
 * region's size, mode 0600 (or 0660 when `group` and the caller is in the
 * file's group), owned by `euid`, or, only for a 0660 region with `group`
 * set, by anyone whose group the caller is in. Pure. */
typedef struct vg__shm_file {
    unsigned mode;      /* st_mode */
    uint32_t uid, gid;
    uint64_t size;
} vg__shm_file_t;
typedef struct vg__shm_who {
    uint32_t euid;
    bool group;         /* VRAMGUARD_SHARED_GROUP=on */
    bool in_group;      /* the caller is in the file's group */
} vg__shm_who_t;
int vg__shm_check_file(const vg__shm_file_t *f, const vg__shm_who_t *who,
                       char *err, size_t errlen);

/* The region's path for a name ("/dev/shm/vramguard.NAME"); a name that
 * starts with '/' is taken as the path itself (HAMi's shared cache). */
int vg__shm_path(const char *name, char *out, size_t len);

typedef enum vg__shm_open_mode {
    VG__SHM_ATTACH = 0, /* an existing region only */
    VG__SHM_CREATE,     /* create it when missing (linked into place whole) */
} vg__shm_open_mode_t;

/* Maps the region at `path`, checked as above. Out: *out. VG_ENOTFOUND
 * when missing (ATTACH), VG_EDENIED for a foreign or badly permissioned
 * file, VG_EINVAL for a corrupt one, VG_ESYS otherwise; one line in err. */
int vg__shm_open(const char *path, vg__shm_open_mode_t mode, bool group,
                 vg__shm_t **out, char *err, size_t errlen);
void vg__shm_close(vg__shm_t *r);

/* shared_reap.c: liveness and giving the dead's share back. */

/* Field 22 (starttime, clock ticks since boot) of /proc/PID/stat: with
 * the pid, a process's identity. 0 when the process is gone. */
uint64_t vg__shm_proc_start(int pid);
/* Whether `pid` is alive with that start time (kill(pid, 0), EPERM counts
 * as alive). Never true for pid <= 0. */
bool vg__shm_pid_alive(int32_t pid, uint64_t start);
/* Whether the slot's process is alive (kill(pid, 0), EPERM counts as
 * alive, and the same start time). */
bool vg__shm_slot_alive(const vg__shm_slot_t *s);
/* Under the lock: drops slot s, handing its share back. */
void vg__shm_slot_drop(vg__shm_t *r, int s);
/* Recomputes every device's `used` as the sum over slots that `alive`
 * accepts, dropping the others. Pure but for `alive`. */
typedef bool (*vg__shm_alive_fn)(const vg__shm_slot_t *s, void *ctx);
void vg__shm_recount(vg__shm_t *r, vg__shm_alive_fn alive, void *ctx);
/* Under the lock: drops every slot and waiter whose process is gone and
 * records `now` (CLOCK_MONOTONIC ns) as the last reap. */
void vg__shm_reap(vg__shm_t *r, uint64_t now);

/* shared.c: the lock, and the engine's side of a region. */

/* Takes the region lock, repairing the region when its last holder died
 * (EOWNERDEAD: every device's use is recomputed from the live slots). */
int vg__shm_lock(vg__shm_t *r);
void vg__shm_unlock(vg__shm_t *r);
/* Under the lock: copies the region into *copy. */
int vg__shm_snapshot(vg__shm_t *r, vg__shm_t *copy);
/* Under the lock: sets the limit of one entry (dev >= 0) or of every
 * entry and the default for new ones (dev < 0); levels are recomputed. */
int vg__shm_set_limit(vg__shm_t *r, int dev, uint64_t limit);

/* The engine's side. vg__shared_bind() attaches this process to the
 * region named by the settings (once), claims a slot, finds or claims the
 * entry of `device` (by UUID), applies `limit` when it is explicit (not
 * VG__UNLIMITED: last writer wins, one stderr line when it changes another
 * value), and points `b` at it. On failure `b` stays per-process with a
 * limit of 0 (fail closed) and one line says why. */
void vg__shared_bind(vg__budget_t *b, int device, uint64_t limit);
/* The budget.c operations for a budget with b->shared set. */
int vg__shared_reserve(vg__budget_t *b, uint64_t n);
void vg__shared_release(vg__budget_t *b, uint64_t n);
void vg__shared_force(vg__budget_t *b, uint64_t n);
void vg__shared_set_limit(vg__budget_t *b, uint64_t limit);
/* Fresh limit and use of the region's entry (under the lock). */
void vg__shared_read(const vg__budget_t *b, uint64_t *limit, uint64_t *used);
/* Per-process figures shown by `vramguard status`. */
void vg__shared_live(const vg__budget_t *b, int delta);
void vg__shared_overhead(const vg__budget_t *b, uint64_t bytes);
/* This process's own share of a shared budget (its slot's use, overhead
 * included), where vg__budget_t.used mirrors the whole region's. */
uint64_t vg__shared_self_used(const vg__budget_t *b);

/* A test-only pause point inside the critical section: a weak, hidden
 * symbol that no product build defines, so the call is never made there
 * (the shared libraries resolve it to NULL at link time). A test that
 * links the engine statically defines it to stop a process while it holds
 * the region lock (tests/test_shared.c). */
void vg__shared_test_pause(void) __attribute__((weak, visibility("hidden")));

/* ---------------------------------------------------------- ledger.c */

/* The spinlock of the ledger's shards and the pool cache's classes and
 * thread caches: 0 free, 1 held. For critical sections of a few dozen
 * instructions, never across a call out. Locking is one atomic exchange,
 * unlocking a release store. A waiter yields after 64 spins, so a holder
 * preempted on a loaded machine (16 threads on 2 cores) gets the CPU. */
static inline void vg__spin_lock(_Atomic int *l)
{
    for (unsigned spins = 0;; spins++) {
        if (vg__likely(!atomic_exchange_explicit(l, 1, memory_order_acquire)))
            return;
        while (atomic_load_explicit(l, memory_order_relaxed)) {
            if (++spins > 64)
                sched_yield();
        }
    }
}

static inline void vg__spin_unlock(_Atomic int *l)
{
    atomic_store_explicit(l, 0, memory_order_release);
}

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
    bool pooled;         /* the shim's cache mode served it: handle = chunk */
    uint32_t site;       /* call-site id (audit.c), 0 when none was taken */
    char tag[VG__TAG_LEN];
} vg__alloc_t;

/* The process's live allocations keyed by ptr, sharded so threads rarely
 * share a lock, plus a bounded quarantine of recently freed ones. Records
 * are recycled from per-shard free lists: after warm-up, insert and remove
 * do not call malloc. */

/* Next sequence number: unique in the process, increasing within a thread
 * (threads take blocks of 64), never 0. */
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

/* ----------------------------------------------------------- cache.c */

/* The pool's cache of small blocks (docs/pool.md has the rules and the
 * measurements behind the numbers). Requests up to VG__SMALL_MAX bytes are
 * rounded up to a size class and carved out of chunks, each one driver
 * allocation; larger requests go to the driver directly. Classes: 256 B
 * steps up to 1 KiB, then four classes per doubling (a block wastes at most
 * 20% of itself). All class sizes are multiples of 256, so every block keeps
 * the driver's 256-byte alignment.
 *
 * The cache is host-side bookkeeping only: it never calls the driver or
 * touches a budget. The pool (pool.c) charges and allocates chunks, hands
 * them in, and frees the spans the cache gives back.
 *
 * Two levels. Each class keeps its free blocks in host arrays under a
 * spinlock (cache.c). In front of the classes, each thread that uses the
 * cache has a thread cache (cache_thread.c): per class a magazine of
 * `ready` blocks and one of `pending` (freed) blocks, under a spinlock that
 * only its owner takes on the fast path (uncontended), so a cached pair
 * writes nothing another thread writes. A magazine exchanges whole batches
 * with its class: a refill takes ready or never-used blocks (and hands over
 * the thread's pending ones), a free into a full pending magazine hands
 * them over. A trim, a pool destroy or the thread's exit (a pthread key
 * destructor) takes the magazine's lock to empty it, so blocks parked there
 * are never stranded.
 *
 * Reuse rule: a freed block is handed out again only after a context
 * synchronisation (the `sync` function given to vg__cache_init) that began
 * after the free has returned. Freed blocks reach the class's `pending`
 * list; when the class runs out of ready and never-used blocks, `pending`
 * is sealed with the cache's sync epoch (syncs started so far) and becomes
 * ready once a sync numbered above it has completed. One synchronisation
 * serves every block sealed before it began, in every class.
 *
 * Locks, in order: the thread-cache list mutex, a thread cache, a class.
 * All spinlocks are held for a few list operations, never across a driver
 * call, a budget call or `sync`. No pool-wide lock on the fast path. */
#define VG__CLASS_GRAIN 256u
#define VG__SMALL_MAX (1u << 20)         /* bytes; larger goes direct */
#define VG__CLASSES 44                   /* 256 B .. 1 MiB */
#define VG__CHUNK_SMALL (2ull << 20)     /* chunk of classes <= 256 KiB */
#define VG__CHUNK_LARGE (8ull << 20)     /* chunk of larger classes */
#define VG__CLASS_SMALL_CHUNK_MAX (256u << 10)
/* Empty chunks a class keeps cached (below High pressure) before releasing
 * the next one that empties. */
#define VG__EMPTY_KEEP 1u
/* A magazine holds VG__MAG_BYTES / block size blocks, 2..32, in each of its
 * two stacks: 32 of 4 KiB, 8 of 64 KiB, 2 of 1 MiB. A thread parks at most
 * twice that per class it uses (reclaimable by trim, see above). */
#define VG__MAG_BYTES (512u << 10)
#define VG__MAG_MIN 2u
#define VG__MAG_MAX 32u

typedef struct vg__chunk vg__chunk_t;   /* cache.c */
typedef struct vg__tcache vg__tcache_t; /* cache_thread.c: a thread's */

/* One chunk of a class. Every field is cache.c's; it is defined here only
 * because a free through the thread cache (cache_thread.c) reads `cls`
 * on the fast path. */
struct vg__chunk {
    vg_devptr_t base;
    uint64_t bytes;
    int cls;
    uint32_t carved;       /* blocks handed out fresh so far */
    uint32_t live;         /* blocks outside the class's lists */
    uint64_t idle_since;   /* coarse ns: made, or the last free to reach it */
    vg__chunk_t *prev, *next;
};

/* One block as the cache hands it out and takes it back. */
typedef struct vg__block {
    vg_devptr_t ptr;
    vg__chunk_t *chunk;
} vg__block_t;

/* A driver allocation the caller must free (and uncharge). */
typedef struct vg__span {
    vg_devptr_t base;
    uint64_t bytes;
} vg__span_t;

typedef struct vg__block_stack {
    vg__block_t *v;
    uint32_t n, cap;
} vg__block_stack_t;

typedef struct vg__class {
    _Atomic int lock;       /* spinlock: 0 free, 1 held */
    uint32_t size;          /* block bytes */
    uint32_t per_chunk;     /* blocks in one chunk */
    uint64_t chunk_bytes;
    vg__chunk_t *chunks;    /* every chunk of the class (doubly linked) */
    vg__chunk_t *carve;     /* the chunk with never-used blocks, or NULL */
    vg__block_stack_t ready;   /* freed and synchronised since: reusable */
    vg__block_stack_t pending; /* freed, not yet sealed */
    vg__block_stack_t sealed;  /* freed before sync epoch `sealed_epoch` */
    uint64_t sealed_epoch;
    uint32_t empty_chunks;  /* chunks with no block outside the class */
    /* Counters of requests served by the class itself (the thread caches
     * count their own), written under the lock. */
    uint64_t hits, misses, allocs, frees, bytes_allocated;
    uint64_t live_blocks, live_bytes; /* requested bytes of live blocks */
} __attribute__((aligned(64))) vg__class_t;

typedef void (*vg__sync_fn)(void *ctx);

typedef struct vg__cache {
    vg__class_t cls[VG__CLASSES];
    vg__sync_fn sync;
    void *sync_ctx;
    uint64_t id;            /* unique in the process: threads key on it */
    _Atomic uint64_t held;  /* bytes of every chunk */
    _Atomic uint64_t syncs;
    /* Sync epoch: syncs begun, and the highest-numbered one completed. */
    _Atomic uint64_t sync_started, sync_done;
    pthread_mutex_t tcaches_mu; /* the list below; never on the fast path */
    vg__tcache_t *tcaches;  /* every thread cache of this cache */
    _Atomic int doomed_lock;    /* spinlock for `doomed` */
    vg__chunk_t *doomed;    /* detached chunks the pool has yet to free */
} vg__cache_t;

/* The class of a request, or -1 when it is larger than VG__SMALL_MAX. */
int vg__class_of(size_t size);
/* The block size of class `cls` (0 <= cls < VG__CLASSES). */
uint32_t vg__class_size(int cls);

void vg__cache_init(vg__cache_t *c, vg__sync_fn sync, void *ctx);
/* Frees the cache's host memory and hands every chunk to `release` (the
 * pool is being destroyed: live blocks die with their chunks). Threads'
 * caches are detached (their threads free them later) and never touched
 * again. */
void vg__cache_drain(vg__cache_t *c, void (*release)(const vg__span_t *s,
                                                     void *ctx), void *ctx);
/* Adds a chunk the caller allocated, charged and verified, and hands its
 * first block out for `size` bytes. VG_ESYS when host memory runs out (the
 * caller still owns the chunk). */
int vg__cache_add_chunk(vg__cache_t *c, int cls, const vg__span_t *chunk,
                        size_t size, vg__block_t *out);
/* Another chunk that left the cache for the caller to free, into *release;
 * false when there is none. */
bool vg__cache_reap(vg__cache_t *c, vg__span_t *release);
/* Detaches the best empty chunk to trim (the largest, then the longest
 * idle) into *release, emptying the threads' magazines first if no chunk
 * is empty otherwise. false when no chunk is empty. */
bool vg__cache_trim_one(vg__cache_t *c, vg__span_t *release);

typedef struct vg__cache_stats {
    uint64_t held, cached, live_bytes, live_blocks;
    uint64_t hits, misses, allocs, frees, bytes_allocated, syncs;
} vg__cache_stats_t;
void vg__cache_stats(vg__cache_t *c, vg__cache_stats_t *s);

/* The class side of the thread caches (cache_thread.c). Unless said
 * otherwise, each call below is made under the class lock (vg__class_lock),
 * taken after the caller's thread cache lock, if any. */
static inline void vg__class_lock(vg__class_t *k) { vg__spin_lock(&k->lock); }
static inline void vg__class_unlock(vg__class_t *k)
{
    vg__spin_unlock(&k->lock);
}

/* keep_empty of a flush that never releases a chunk (trims decide). */
#define VG__KEEP_ALL UINT32_MAX

/* Where a flush puts chunks that empty beyond the class's allowance. */
typedef struct vg__flush_out {
    uint32_t keep_empty;
    vg__span_t *release; /* the first one, for the caller */
    bool released;
} vg__flush_out_t;

/* How a request that finds its class empty treats the class's pending
 * blocks. With many threads, magazines hold most of a chunk's blocks, and
 * a class's pending list may be a handful: synchronising for so few costs
 * a driver call every few pairs (measured: 1 sync per 78 pairs at 16
 * threads instead of 1 per 500), so such a request misses and the pool
 * grows a chunk instead, while the budget allows; near the limit it
 * reuses whatever is pending (VG__REUSE_ANY). */
typedef enum { VG__GROW_FIRST, VG__REUSE_ANY } vg__take_policy_t;

typedef enum {
    VG__FILL_OK,   /* the class has a ready or never-used block */
    VG__FILL_MISS, /* it has none, and too few pending to seal (policy) */
    VG__FILL_WAIT, /* its sealed blocks wait for a sync (*epoch) */
} vg__fill_t;
/* Makes sure class k has a ready or never-used block, sealing its pending
 * ones with the sync epoch if needed. On VG__FILL_WAIT the caller drops
 * its locks (the sync is a driver call), calls vg__cache_sync_after(c,
 * *epoch), retakes them and calls again: meanwhile the sealed list stays
 * in the class, so a trim may still release its chunks. */
vg__fill_t vg__class_fill(vg__cache_t *c, vg__class_t *k,
                          vg__take_policy_t policy, uint64_t *epoch);
/* Returns once a synchronisation begun after `epoch` was read has
 * completed (waits for one already begun, else runs one). No lock held. */
void vg__cache_sync_after(vg__cache_t *c, uint64_t epoch);
/* vg__cache_take and vg__cache_give through the class alone (its lock taken
 * inside), for a thread with no thread cache (no host memory). */
int vg__class_take(vg__cache_t *c, int cls, size_t size, vg__block_t *out);
bool vg__class_give(vg__cache_t *c, const vg__block_t *b, size_t size,
                    vg__flush_out_t *o);

/* Blocks a magazine hands back to its class. */
typedef struct vg__batch {
    vg__block_t *v;
    uint32_t n;
    uint64_t since; /* coarse ns of the batch's first free */
} vg__batch_t;
/* Freed blocks onto k's pending list; each chunk they touch was last freed
 * into at b->since. Chunks that empty leave as vg__cache_give says (o). */
void vg__class_put_pending(vg__cache_t *c, vg__class_t *k,
                           const vg__batch_t *b, vg__flush_out_t *o);
/* Ready blocks (never handed out since they left) back onto k's ready
 * list: they need no synchronisation, and no chunk is released. */
void vg__class_put_ready(vg__cache_t *c, vg__class_t *k,
                         const vg__block_t *v, uint32_t n);
/* Fills v[n, cap) from class k (after vg__class_fill said VG__FILL_OK):
 * ready blocks first, then never-used ones, in the class's order. Returns
 * the new count. */
uint32_t vg__class_take_batch(vg__class_t *k, vg__block_t *v, uint32_t n,
                              uint32_t cap);

/* ---------------------------------------------------- cache_thread.c */

/* Each thread's cache in front of the classes: the fast path of the pool's
 * small blocks (see "Two levels" above). */

/* Hands out a block of class `cls` for a request of `size` bytes: from the
 * calling thread's magazine, else a batch from the class (ready, never used,
 * or pending ones after a synchronisation, if at least 1/8 of a chunk's
 * worth is pending). VG_ENOMEM when the class has none (a miss: the caller
 * adds a chunk, or calls vg__cache_take_any if the budget does not allow
 * one). Thread-safe. */
int vg__cache_take(vg__cache_t *c, int cls, size_t size, vg__block_t *out);
/* The same, synchronising for however few pending blocks there are. */
int vg__cache_take_any(vg__cache_t *c, int cls, size_t size,
                       vg__block_t *out);
/* Takes a block back (`size` as it was taken), from any thread. When chunks
 * become empty and the class already keeps `keep_empty` empty chunks, they
 * leave the cache: the first into *release and true returned (the caller
 * frees it, then any more through vg__cache_reap). */
bool vg__cache_give(vg__cache_t *c, const vg__block_t *b, size_t size,
                    uint32_t keep_empty, vg__span_t *release);
/* Returns every thread's magazines to their classes (a request that would
 * otherwise grow past a budget). true if any block moved. */
bool vg__cache_collect(vg__cache_t *c);
/* The cache is being drained (vg__cache_drain): every thread cache leaves
 * it; the calling thread's own is freed at once, other threads free theirs
 * when they next look or exit. */
void vg__tcache_detach_all(vg__cache_t *c);
/* Adds every thread cache's counters to s and its live blocks of each
 * class to live[class] (for vg__cache_stats, with c->tcaches_mu held). */
void vg__tcache_sum(vg__cache_t *c, vg__cache_stats_t *s, uint64_t *live);

/* ----------------------------------------------------------- evict.c */

/* Evictable allocations of one pool (VG_ALLOC_EVICTABLE): the candidates,
 * their priority and when each was last used, behind one mutex (these are
 * large, rarely made allocations; the cache's fast path never comes here).
 *
 * Ownership: the ledger decides who frees an allocation. The evictor takes
 * the record out of the ledger under this set's mutex before it calls the
 * callback; a vg_pool_free that got there first owns it instead, and the
 * evictor skips it. An entry is freed by whoever owns its allocation, after
 * it is unlinked under the mutex. Lock order: set mutex, then ledger. */
typedef struct vg__evictable {
    vg_devptr_t ptr;
    uint64_t size;
    int priority;
    uint64_t touched; /* the set's tick when allocated or last touched */
    vg_evict_cb fn;
    void *user;
    bool linked;
    struct vg__evictable *prev, *next;
} vg__evictable_t;

typedef struct vg__evict_set {
    pthread_mutex_t mu;
    vg__evictable_t *head;
    uint64_t tick;
    _Atomic uint64_t bytes; /* of the linked entries */
} vg__evict_set_t;

/* Ledger records of a pool's evictable allocations carry their entry in
 * vg__alloc_t.handle with this bit set; a block of the cache carries its
 * chunk (bit clear); a plain direct allocation carries 0. */
#define VG__HANDLE_EVICTABLE 1ull

void vg__evict_init(vg__evict_set_t *s);
void vg__evict_fini(vg__evict_set_t *s); /* frees the entries left */
/* A new, not yet linked entry for an allocation made with `opts`. */
vg__evictable_t *vg__evict_new(const vg_alloc_opts_t *opts, vg_devptr_t ptr,
                               uint64_t size);
/* Makes an entry a candidate (after its ledger record exists). */
void vg__evict_link(vg__evict_set_t *s, vg__evictable_t *e);
/* The owner freed the allocation (its record is out of the ledger). */
void vg__evict_forget(vg__evict_set_t *s, vg__evictable_t *e);
/* Marks a live allocation of `owner` as used now. VG_ENOTFOUND when ptr is
 * not one; VG_OK (and nothing else) for a live non-evictable one. */
int vg__evict_touch(vg__evict_set_t *s, const void *owner, vg_devptr_t ptr);
/* Bytes eviction could give back now (a hint: it may change at once). */
uint64_t vg__evict_bytes(vg__evict_set_t *s);
/* Picks the victim (lowest priority, least recently used within it), takes
 * its record out of the ledger into *rec and returns its entry, which the
 * caller now owns. NULL when there is no candidate. */
vg__evictable_t *vg__evict_pick(vg__evict_set_t *s, const void *owner,
                                vg__alloc_t *rec);

/* ---------------------------------------------------------- chunks.c */

/* Which pool chunk holds an address, process-wide: the cache registers
 * each chunk it adds and unregisters it before it is freed. Lookups take a
 * read lock (none while no chunk exists); for rare paths only. */
typedef struct vg__chunk_ref {
    vg_devptr_t base;
    uint64_t bytes;
    uint32_t block;     /* the block size of the chunk's class */
    const void *owner;  /* the vg__cache_t (first member of its pool) */
} vg__chunk_ref_t;

/* VG_ESYS when there is no memory for the entry. */
int vg__chunk_index_add(const vg__chunk_ref_t *ref);
void vg__chunk_index_remove(vg_devptr_t base);
/* The chunk whose range holds ptr. */
bool vg__chunk_index_find(vg_devptr_t ptr, vg__chunk_ref_t *out);
/* The start of the block of `ref` that holds ptr. */
vg_devptr_t vg__chunk_block_of(const vg__chunk_ref_t *ref, vg_devptr_t ptr);

/* ------------------------------------------------------------ pool.c */

/* A pool (the public vg_pool_t). Its allocation path is pool.c; its
 * reporting and the user's pressure callbacks are pool_info.c. */
#define VG__POOL_CALLBACKS 8 /* vg_pool_on_pressure's limit */

struct vg_pool {
    vg__cache_t cache; /* first: its classes are cache-line aligned */
    int device;
    CUdevice cudev;
    CUcontext ctx;
    vg__budget_t budget;
    vg__evict_set_t evict;
    /* Direct allocations (the cache counts its own blocks). */
    _Atomic uint64_t allocs, frees, bytes_allocated, live_bytes;
    _Atomic uint64_t trims, evictions;
    _Atomic int acting;   /* a pressure action is running: no nesting */
    _Atomic bool closing; /* vg_pool_destroy has begun */
    pthread_mutex_t lock; /* the callback list; never held across calls out */
    int callback_count;
    struct {
        vg_pressure_cb fn;
        void *user;
    } callbacks[VG__POOL_CALLBACKS];
};

/* Makes a pool's context current for a driver call and puts the caller's
 * back afterwards (skipping the switch when it is already current). */
typedef struct vg__ctx_guard {
    CUcontext prev;
    bool swapped;
} vg__ctx_guard_t;
void vg__pool_ctx_enter(const vg_pool_t *pool, vg__ctx_guard_t *g);
void vg__pool_ctx_leave(vg__ctx_guard_t *g);
/* The pool's answer to rising pressure: trims at High, evicts at Critical,
 * until the level falls. One action at a time; a nested call returns. */
void vg__pool_act_on_pressure(vg_pool_t *pool);
/* A block for `size` bytes (1..VG__SMALL_MAX): a cached one, or the first
 * of a new chunk, trimming to make room (never evicting). Not recorded in
 * the ledger: the caller records it as the program's allocation. VG_ENOMEM
 * when no chunk fits the budgets. */
int vg__pool_block_take(vg_pool_t *pool, size_t size, vg__block_t *b);
/* Takes back a block of vg__pool_block_take, freed by the program. */
void vg__pool_block_give(vg_pool_t *pool, const vg__block_t *b, size_t size);
/* Releases the best empty chunk; its bytes, 0 when none was empty. */
uint64_t vg__pool_trim_one(vg_pool_t *pool);

/* ------------------------------------------------------- pool_info.c */

/* The level hook of every pool's budget: runs the user's callbacks, then
 * vg__pool_act_on_pressure when the level rose to High or above. */
void vg__pool_level_hook(void *owner, vg_pressure_t old_level,
                         vg_pressure_t new_level, void *user);

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
/* The driver has already freed `key` (it died with its owner, e.g. a
 * graph's memory nodes with the graph): vg__acct_release, then `free` in
 * the audit log. Nothing when it is not a live allocation. */
void vg__acct_release_freed(uint64_t key, const char *api);
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

/* Records an allocation the driver (or cache mode) just made: measures the
 * device's context overhead on its first one, fills in the record's
 * bookkeeping, writes the audit line and inserts it in the ledger (a stale
 * record at the same address is replaced). */
void vg__acct_record(const vg__ticket_t *t, vg__alloc_t *a);

/* -------------------------------------------------- account_pooled.c */

/* VRAMGUARD_POOL=cache: plain allocations of 1..VG__SMALL_MAX bytes made
 * under a device's primary context are served from that device's process
 * pool (pool.c, cache.c) and recorded as the program made them (one ledger
 * record per block, `pooled` set, handle = its chunk, charged 0: the
 * chunks carry the charge). docs/pool.md has the rules. */

/* Set once, when the engine starts with VRAMGUARD_POOL=cache; read through
 * vg__cache_mode_on() (one load and a predictable branch in each hook). */
extern bool vg__cache_mode;
static inline bool vg__cache_mode_on(void)
{
    return vg__cache_mode;
}

/* Serves t (t->bytes = the size asked) from the pool. VG_OK with *ptr and
 * the record made; VG_ENOTFOUND when the request does not qualify or no
 * chunk fits (the caller takes the driver's path, whose refusal trims the
 * pool first). */
int vg__acct_pooled_alloc(vg__ticket_t *t, uint64_t *ptr);
/* Gives a pooled record's block back to its pool (reused only after a
 * synchronisation that follows this call). */
void vg__acct_pooled_free(const vg__alloc_t *a);
/* The live pooled allocation holding ptr: VG_OK with *out; VG_EBADPTR when
 * ptr is inside a cache-mode chunk but in no live allocation (freed, or
 * never handed out); VG_ENOTFOUND when no cache-mode chunk holds it. */
int vg__acct_pooled_find(vg_devptr_t ptr, vg__alloc_t *out);
/* Releases one empty chunk of the device's pool (largest, then the one
 * idle longest); true if one was. */
bool vg__acct_pooled_trim(int device);
/* The device's primary context is about to be reset: its pool's chunks
 * are released and its blocks forgotten (they die with the context). */
void vg__acct_pooled_reset(int device);
/* A synthetic CU_POINTER_ATTRIBUTE_BUFFER_ID for a pooled record: unique
 * per allocation, never one the driver gives (bit 63). */
static inline uint64_t vg__pooled_buffer_id(const vg__alloc_t *a)
{
    return (1ull << 63) | a->seq;
}

/* Sets the measured memory of `device` that no call shows (context,
 * module images, library workspaces) and charges the change, with no
 * limit check: it is already spent. */
void vg__acct_overhead_set(int device, uint64_t bytes);
uint64_t vg__acct_overhead(int device);

/* ------------------------------------------------ account_overhead.c */

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

/* ------------ audit.c, audit_buf.c, audit_log.c, audit_sites.c, badptr.c */

/* Diagnostics, all off unless a setting asks: the audit log (audit.c, with
 * its buffers in audit_buf.c and its start and exit in audit_log.c), call
 * sites and the leak report (audit_sites.c), the bad-pointer policy and the
 * allocation check (badptr.c). With all of them off, an allocation or a
 * free pays one relaxed load and one predictable branch (vg__diag_on). */

#define VG__MAX_FRAMES 32 /* VRAMGUARD_BACKTRACE's upper bound */

enum {
    VG__DIAG_LOG = 1u << 0,    /* VRAMGUARD_AUDIT: the log is open */
    VG__DIAG_SITES = 1u << 1,  /* allocations record their call site */
    VG__DIAG_VERIFY = 1u << 2, /* VRAMGUARD_VERIFY=1 */
};

/* Set once while the engine starts, before any hook sees it started; read
 * relaxed on every allocation and free. Defined in audit.c; with
 * vg__abuf_mine, one of the two mutable globals read outside their file: a
 * call would cost more than the check. */
extern _Atomic unsigned vg__diag_flags;

static inline bool vg__diag_on(void)
{
    return atomic_load_explicit(&vg__diag_flags, memory_order_relaxed) != 0;
}

static inline bool vg__diag_has(unsigned bit)
{
    return (atomic_load_explicit(&vg__diag_flags, memory_order_relaxed) & bit) != 0;
}

/* audit_buf.c. The audit log's per-thread buffers: each thread formats
 * its events (audit.c) into its own buffer, kept in a registry for the life
 * of the process so exit, fork and fatal signals can write them out. */

#define VG__ABUF_BYTES 16384u /* per thread: flushed when an event might not fit */

/* Who holds a buffer: its thread around an append, a flusher in another
 * thread (exit, fork) around a write. Neither holds it across anything but
 * a write(2). */
enum { VG__ABUF_FREE = 0, VG__ABUF_OWNER = 1, VG__ABUF_FLUSHER = 2 };
/* Event counts kept per buffer, summed for `exit`. */
enum { VG__EV_ALLOC, VG__EV_FREE, VG__EV_REFUSE, VG__EV_BAD, VG__EV_OTHER, VG__EV_KINDS };

typedef struct vg__abuf {
    _Atomic int busy;            /* VG__ABUF_FREE, _OWNER or _FLUSHER */
    uint32_t len;                /* bytes of whole lines in data */
    bool adopted;                /* a live thread owns it */
    struct vg__abuf *next;       /* registry; never unlinked */
    uint64_t count[VG__EV_KINDS]; /* events written by its threads */
    /* What every line of this thread repeats, formatted once: the seconds
     * of `ts`, and ',"pid":P,"tid":T' (redone when the thread or the
     * process changes). */
    int64_t sec;
    uint32_t id_pid, id_tid;
    uint8_t sec_len, id_len;
    char sec_text[24], id_text[48];
    char data[VG__ABUF_BYTES];
} vg__abuf_t;

/* The calling thread's buffer, NULL before its first event. Initial-exec:
 * one %fs-relative load (no __tls_get_addr) on every event, and safe in a
 * signal handler. 8 bytes of static TLS, which glibc keeps spare even for a
 * library loaded with dlopen. Read by audit.c's event path (a call would
 * cost more than the load); written only by audit_buf.c. */
extern _Thread_local vg__abuf_t *vg__abuf_mine __attribute__((tls_model("initial-exec")));

/* Takes the log's descriptor (already open) and its path for messages. */
void vg__abuf_attach(int fd, const char *path);
/* Registers the thread-exit, fork and fatal-signal flushes. Once. */
void vg__abuf_setup(void);
/* The thread's first event: a finished thread's buffer, or a new one (sets
 * vg__abuf_mine). NULL when no memory could be had. */
__attribute__((noinline, cold)) vg__abuf_t *vg__abuf_adopt(void);
/* One write(2) of whole lines to the log (a short write continues where it
 * stopped). Keeps errno. */
void vg__abuf_write(const char *p, size_t n);
/* Events written so far by every thread of this process. Out: out[]. */
void vg__abuf_sum_counts(uint64_t out[VG__EV_KINDS]);

static inline void vg__abuf_hold(vg__abuf_t *b, int who)
{
    int expect = VG__ABUF_FREE;
    while (!atomic_compare_exchange_weak_explicit(&b->busy, &expect, who, memory_order_acquire,
                                                  memory_order_relaxed)) {
        expect = VG__ABUF_FREE;
        sched_yield(); /* a flusher is writing it out: rare */
    }
}

static inline void vg__abuf_drop(vg__abuf_t *b)
{
    atomic_store_explicit(&b->busy, VG__ABUF_FREE, memory_order_release);
}

/* Writes a held buffer out and empties it. */
static inline void vg__abuf_flush_held(vg__abuf_t *b)
{
    if (b->len)
        vg__abuf_write(b->data, b->len);
    b->len = 0;
}

/* audit.c. A JSON line being built: appends stop at `end` and mark the line
 * cut, which the writer then drops (never half a line in the file). The
 * vg__aline_* functions are audit.c's formatters, out of line, for the
 * long lines of audit_log.c (start, exit); the events use inline copies. */
typedef struct vg__aline {
    char *p, *end;
    bool cut;
} vg__aline_t;

/* {"v":1,"ts":...,"pid":...,"tid":...,"op":"<op>" */
void vg__aline_head(vg__aline_t *o, const char *op);
void vg__aline_raw(vg__aline_t *o, const char *s, size_t n);
void vg__aline_u64(vg__aline_t *o, uint64_t v);
/* "0x1f00", quoted. */
void vg__aline_hex(vg__aline_t *o, uint64_t v);
/* A JSON string of n bytes, escaped (invalid UTF-8 becomes U+FFFD). */
void vg__aline_json(vg__aline_t *o, const char *s, size_t n);
/* "warn", "reject" or "abort" (static text). */
const char *vg__audit_policy_word(vg__bad_ptr_policy_t p);
/* Caches getpid() for every later line (start, and a forked child). */
void vg__audit_pid_reset(void);
/* After `exit`: every later line is written at once. */
void vg__audit_go_direct(void);

/* audit_log.c. A forked child's log restarts: new pid, exit re-armed, a
 * `start` line. Called by audit_buf.c's fork handler. */
void vg__audit_restart(void);

/* audit_log.c. Starts diagnostics from the parsed settings, once, from the
 * engine's start-up: opens VRAMGUARD_AUDIT (O_WRONLY|O_APPEND|O_CREAT|
 * O_NOFOLLOW|O_CLOEXEC, mode 0600), registers the exit, fork and
 * fatal-signal flushes and writes `start`. VG_ESETTING with
 * "VRAMGUARD_AUDIT='path': reason" in err when the log cannot be opened:
 * the engine then fails closed. */
int vg__diag_start(const vg__settings_t *s, char *err, size_t errlen);
/* audit.c. Writes `pressure` events for a device budget's level changes
 * (nothing while the log is closed). Call after vg__budget_init. */
void vg__audit_watch(vg__budget_t *b, int device);

/* Events. Each formats one line into the calling thread's buffer: no
 * malloc after the thread's first event, no lock another thread holds
 * except while it flushes this buffer (exit, fork), and a write(2) only
 * when the buffer is full. All are no-ops while the log is closed. */
/* An allocation about to be recorded: checks it (VRAMGUARD_VERIFY), sets
 * a->site (VRAMGUARD_BACKTRACE) and writes `alloc`. Call when
 * vg__diag_on(), before the ledger insert. */
void vg__diag_commit(const vg__ticket_t *t, vg__alloc_t *a);
/* `free` of a ledger record, with the driver's answer. */
void vg__audit_free(const vg__alloc_t *a, const char *api, CUresult rc);
/* `refuse`: t->bytes on t->device refused with `status` (VG_ENOMEM,
 * VG_EDENIED). Captures the call site itself. */
void vg__audit_refuse(const vg__ticket_t *t, int status);
/* `bad_ptr`. info NULL for a handle ("handle" class). rc NULL when the
 * program gets none (abort). */
void vg__audit_bad_ptr(const char *api, uint64_t key, const vg_ptr_info_t *info,
                       vg__bad_ptr_policy_t policy, const CUresult *rc);
/* `leak`: one call site's allocations still live at exit. */
void vg__audit_leak(int device, uint64_t count, uint64_t bytes, uint32_t site);
/* audit_buf.c. Writes every thread's buffer out now (abort, tests). */
void vg__audit_flush_all(void);

/* audit_sites.c. Call sites: up to VRAMGUARD_BACKTRACE return addresses outside
 * vramguard, innermost first, interned so a record keeps a 32-bit id. */
/* Loads the unwinder (glibc's backtrace() may malloc on first use) and
 * finds vramguard's own code. frames 0 turns capture off. */
void vg__site_setup(int frames);
/* The caller's frames outside vramguard. Out: frames[]. Returns the count
 * (0 when capture is off). Costs one unwind (~1 us for a few frames). */
int vg__site_capture(uintptr_t frames[VG__MAX_FRAMES]);
/* The id of a frame list (1...), 0 when n is 0 or the table is full. */
uint32_t vg__site_intern(const uintptr_t *frames, int n);
/* The frames of an id. Out: frames[]. Returns the count (0 for id 0). */
int vg__site_frames(uint32_t id, uintptr_t frames[VG__MAX_FRAMES]);
/* The leak report: live allocations grouped by device and call site, on
 * stderr ending with one summary line, and as `leak` events. Exit only. */
void vg__leaks_report(void);

/* badptr.c and account.c: the free path. A free hook asks
 * vg__acct_free_begin before the driver and calls vg__acct_free_end with
 * the driver's answer; begin's status other than VG_OK means "do not call
 * the driver, return this" (VRAMGUARD_ON_BAD_POINTER=reject). */
typedef enum vg__free_state {
    VG__FREE_PASS = 0, /* NULL: nothing to record, the driver answers */
    VG__FREE_OURS,     /* a ledger record was taken out (f->a) */
    VG__FREE_BAD,      /* not ours: classified into f->bad, policy applied */
    VG__FREE_POOLED,   /* a cache-mode block, already back in its pool: the
                          driver must not be called (f->a is the record) */
} vg__free_state_t;

typedef struct vg__free {
    uint64_t key;         /* device pointer, or handle | VG__KEY_HANDLE */
    const char *api;      /* the hooked entry point */
    vg__free_state_t state;
    vg__alloc_t a;        /* VG__FREE_OURS: the record */
    vg_ptr_info_t bad;    /* VG__FREE_BAD: the classification */
} vg__free_t;

int vg__badptr_begin(vg__free_t *f);
/* account.c, out of line: restores a record whose driver free failed,
 * writes `free` and finishes a bad pointer (vg__badptr_end). */
void vg__acct_free_settle(vg__free_t *f, CUresult cr);

/* Takes `key` out of the ledger (and its charge back) or hands it to
 * vg__badptr_begin. Fills *f; nothing in it needs initialising. Inline:
 * the common case costs what the bare release did, plus three stores. */
static inline int vg__acct_free_begin(vg__free_t *f, uint64_t key, const char *api)
{
    f->key = key;
    f->api = api;
    if (vg__likely(vg__acct_release(key, &f->a) == VG_OK)) {
        f->state = vg__likely(!f->a.pooled) ? VG__FREE_OURS : VG__FREE_POOLED;
        return VG_OK;
    }
    return vg__badptr_begin(f);
}

static inline void vg__acct_free_end(vg__free_t *f, CUresult cr)
{
    if (vg__likely(f->state != VG__FREE_BAD && cr == CUDA_SUCCESS) &&
        !vg__diag_on())
        return;
    vg__acct_free_settle(f, cr);
}

/* badptr.c. A free of a key the ledger does not hold. Pointers are
 * classified (vg__ptr_classify) and VRAMGUARD_ON_BAD_POINTER applied:
 * VG_OK = forward to the driver (warn; and always for real memory we did
 * not see: foreign pointers, unknown handles), VG_ENOTFOUND = reject, or a
 * report and abort(). Handles are judged after the driver answers.
 * (Declared above, beside its caller vg__acct_free_begin.) */
/* After the driver answered a VG__FREE_BAD free: `bad_ptr` event, one
 * rate-limited stderr line, abort() under that policy. */
void vg__badptr_end(const vg__free_t *f, CUresult cr);
/* VRAMGUARD_VERIFY: the driver must know a->ptr as device memory of at
 * least a->size bytes. A failure is a `bad_ptr` and a stderr line (and
 * abort() under that policy); the allocation stays recorded. */
void vg__badptr_verify(const vg__ticket_t *t, const vg__alloc_t *a);

#endif /* VG_INTERNAL_H */
