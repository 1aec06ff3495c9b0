/*
 * nvml.c — NVML's memory views, rewritten the way cuMemGetInfo is, so
 * nvmlDeviceGetMemoryInfo and _v2 report the same total and free as the
 * CUDA driver under the budget (monitoring agents, pynvml, frameworks that
 * size themselves from NVML).
 *
 * NVML numbers its devices over the whole node; CUDA numbers only what
 * CUDA_VISIBLE_DEVICES (indices or UUIDs) leaves visible, in that order.
 * So an NVML device is mapped to a CUDA ordinal by UUID, never by index:
 * whatever CUDA_VISIBLE_DEVICES says, CUDA has already applied it. A device
 * CUDA cannot see, or a process whose CUDA is not initialised, gets the
 * driver's numbers unchanged.
 *
 * The real functions come from the libnvidia-ml.so.1 the process itself
 * loaded (RTLD_NOLOAD): the shim never loads NVML (lib/account_overhead.c may, on
 * its own slow path).
 *
 * Both locks here are ranked and in the fork sequence (lib/fork.c, ranks
 * NVML_RESOLVE and NVML_MAP): a fork while another thread held one (the
 * map on every memory query; the resolution across dlopen, which may wait
 * for the loader) left it held in the child, whose first NVML memory call
 * then waited for ever.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "nvml.h"
#include "vg_fork.h"

#define NVML_LIB "libnvidia-ml.so.1"
#define MAP_SLOTS 64

typedef nvmlReturn_t (*uuid_fn)(nvmlDevice_t device, char *uuid,
                                unsigned int length);

static struct {
#define VG_NVML_FIELD_(name, params) nvmlReturn_t (*name) params;
    VG_NVML_HOOKS(VG_NVML_FIELD_)
#undef VG_NVML_FIELD_
    uuid_fn nvmlDeviceGetUUID;
} real;

static _Atomic int real_ready;
static pthread_mutex_t real_lock = PTHREAD_MUTEX_INITIALIZER;

/* Resolves the real functions once NVML is in the process; until then
 * every call tries again (NVML is loaded when the program wants it). The
 * NOLOAD handle is kept, so the library cannot be unmapped under us. */
__attribute__((noinline, cold)) static bool resolve_real_slow(void)
{
    vg__mutex_lock(&real_lock, VG__RANK_NVML_RESOLVE);
    if (!atomic_load_explicit(&real_ready, memory_order_relaxed)) {
        void *h = dlopen(NVML_LIB, RTLD_LAZY | RTLD_NOLOAD);
        if (h) {
#define VG_NVML_RESOLVE_(name, params)                                         \
    real.name = (nvmlReturn_t(*) params)vg__real_dlsym(h, #name);
            VG_NVML_HOOKS(VG_NVML_RESOLVE_)
#undef VG_NVML_RESOLVE_
            real.nvmlDeviceGetUUID = (uuid_fn)vg__real_dlsym(h, "nvmlDeviceGetUUID");
            atomic_store_explicit(&real_ready, 1, memory_order_release);
        }
    }
    vg__mutex_unlock(&real_lock, VG__RANK_NVML_RESOLVE);
    return atomic_load_explicit(&real_ready, memory_order_acquire);
}

/* Fork steps (lib/fork.c, rank NVML_RESOLVE): a resolution in progress
 * finishes first. */
void vg__nvml_resolve_prefork(void) { pthread_mutex_lock(&real_lock); }
void vg__nvml_resolve_postfork_parent(void) { pthread_mutex_unlock(&real_lock); }
void vg__nvml_resolve_postfork_child(void) { pthread_mutex_unlock(&real_lock); }

static inline bool resolve_real(void)
{
    return vg__likely(atomic_load_explicit(&real_ready, memory_order_acquire)) ||
           resolve_real_slow();
}

void *vg__nvml_route(void *fn)
{
    if (!fn || !resolve_real())
        return fn;
#define VG_NVML_ROUTE_(name, params)                                           \
    if (fn == (void *)real.name)                                               \
        return (void *)&name;
    VG_NVML_HOOKS(VG_NVML_ROUTE_)
#undef VG_NVML_ROUTE_
    return fn;
}

/* ------------------------------------------- NVML device -> CUDA ordinal */

/* NVML handles are stable for the life of the library, so a match, or a
 * miss while CUDA was initialised (the device is not visible to CUDA), is
 * remembered; a miss before cuInit is not. */
static pthread_mutex_t map_lock = PTHREAD_MUTEX_INITIALIZER;
static struct map_slot {
    nvmlDevice_t device;
    int ordinal; /* -1: not visible to CUDA */
} map[MAP_SLOTS];
static int map_count;

/* Fork steps (lib/fork.c, rank NVML_MAP). */
void vg__nvml_map_prefork(void) { pthread_mutex_lock(&map_lock); }
void vg__nvml_map_postfork_parent(void) { pthread_mutex_unlock(&map_lock); }
void vg__nvml_map_postfork_child(void) { pthread_mutex_unlock(&map_lock); }

static bool map_find(nvmlDevice_t device, int *ordinal)
{
    bool found = false;
    vg__mutex_lock(&map_lock, VG__RANK_NVML_MAP);
    for (int i = 0; i < map_count && !found; i++) {
        if (map[i].device == device) {
            *ordinal = map[i].ordinal;
            found = true;
        }
    }
    vg__mutex_unlock(&map_lock, VG__RANK_NVML_MAP);
    return found;
}

static void map_remember(nvmlDevice_t device, int ordinal)
{
    vg__mutex_lock(&map_lock, VG__RANK_NVML_MAP);
    if (map_count < MAP_SLOTS)
        map[map_count++] = (struct map_slot){device, ordinal};
    vg__mutex_unlock(&map_lock, VG__RANK_NVML_MAP);
}

/* The CUDA ordinal whose UUID is `uuid`; -1 when none, -2 when CUDA cannot
 * tell yet (not initialised). No lock is held across these driver calls. */
static int ordinal_by_uuid(const char *uuid)
{
    int count = 0;
    if (vg__driver()->cuDeviceGetCount(&count) != CUDA_SUCCESS)
        return -2;
    for (int i = 0; i < count && i < VG__MAX_DEVICES; i++) {
        char mine[48];
        if (vg__device_uuid(i, mine) == VG_OK && strcasecmp(mine, uuid) == 0)
            return i;
    }
    return -1;
}

static int ordinal_of(nvmlDevice_t device)
{
    int ordinal;
    char uuid[VG_NVML_UUID_LEN];
    if (map_find(device, &ordinal))
        return ordinal;
    if (vg__shim_start() != CUDA_SUCCESS || !real.nvmlDeviceGetUUID ||
        real.nvmlDeviceGetUUID(device, uuid, sizeof uuid) != NVML_SUCCESS)
        return -1;
    ordinal = ordinal_by_uuid(uuid);
    if (ordinal == -2)
        return -1;
    map_remember(device, ordinal);
    return ordinal;
}

/* Rewrites free and total to the budget's view as cuMemGetInfo does.
 * False when the device has no CUDA ordinal or no budget: the driver's
 * numbers stand. */
static bool budget_view(nvmlDevice_t device, unsigned long long *free_b,
                        unsigned long long *total_b)
{
    int ordinal = ordinal_of(device);
    if (ordinal < 0)
        return false;
    uint64_t f = *free_b, t = *total_b;
    vg__acct_meminfo(ordinal, &f, &t);
    if (f == *free_b && t == *total_b)
        return false;
    *free_b = f;
    *total_b = t;
    return true;
}

/* ------------------------------------------------------------- hooks */

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    if (!resolve_real())
        return NVML_ERROR_UNINITIALIZED;
    if (!real.nvmlDeviceGetMemoryInfo)
        return NVML_ERROR_FUNCTION_NOT_FOUND;
    nvmlReturn_t rc = real.nvmlDeviceGetMemoryInfo(device, memory);
    if (rc != NVML_SUCCESS || !memory)
        return rc;
    if (budget_view(device, &memory->free, &memory->total))
        memory->used = memory->total - memory->free;
    return rc;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory)
{
    if (!resolve_real())
        return NVML_ERROR_UNINITIALIZED;
    if (!real.nvmlDeviceGetMemoryInfo_v2)
        return NVML_ERROR_FUNCTION_NOT_FOUND;
    nvmlReturn_t rc = real.nvmlDeviceGetMemoryInfo_v2(device, memory);
    if (rc != NVML_SUCCESS || !memory)
        return rc;
    if (budget_view(device, &memory->free, &memory->total)) {
        /* reserved stays as the driver said; free <= total holds. */
        unsigned long long taken = memory->total - memory->free;
        memory->used = taken > memory->reserved ? taken - memory->reserved : 0;
    }
    return rc;
}

/* This process's own entry never shows more than its budget's total: a
 * framework that reads its own use from NVML (as PyTorch's OOM message
 * does) then agrees with cuMemGetInfo. Other processes are untouched. */
static unsigned long long own_clamp(nvmlDevice_t device, unsigned long long used)
{
    int ordinal = ordinal_of(device);
    if (ordinal < 0)
        return used;
    uint64_t f = UINT64_MAX, t = UINT64_MAX;
    vg__acct_meminfo(ordinal, &f, &t);
    return used != ~0ull && used > t ? t : used;
}

/* Clamps this process's entry in an array of `count` entries of `stride`
 * bytes that each begin with {unsigned pid; unsigned long long used}. */
static void clamp_own(nvmlDevice_t device, unsigned int count, void *infos, size_t stride)
{
    unsigned int me = (unsigned int)getpid();
    for (unsigned int i = 0; infos && i < count; i++) {
        nvmlProcessInfo_v1_t *p = (nvmlProcessInfo_v1_t *)((char *)infos + i * stride);
        if (p->pid == me)
            p->usedGpuMemory = own_clamp(device, p->usedGpuMemory);
    }
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t device, unsigned int *count,
                                                  nvmlProcessInfo_v1_t *infos)
{
    if (!resolve_real())
        return NVML_ERROR_UNINITIALIZED;
    if (!real.nvmlDeviceGetComputeRunningProcesses)
        return NVML_ERROR_FUNCTION_NOT_FOUND;
    nvmlReturn_t rc = real.nvmlDeviceGetComputeRunningProcesses(device, count, infos);
    if (rc == NVML_SUCCESS && count)
        clamp_own(device, *count, infos, sizeof *infos);
    return rc;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device, unsigned int *count,
                                                     nvmlProcessInfo_t *infos)
{
    if (!resolve_real())
        return NVML_ERROR_UNINITIALIZED;
    if (!real.nvmlDeviceGetComputeRunningProcesses_v2)
        return NVML_ERROR_FUNCTION_NOT_FOUND;
    nvmlReturn_t rc = real.nvmlDeviceGetComputeRunningProcesses_v2(device, count, infos);
    if (rc == NVML_SUCCESS && count)
        clamp_own(device, *count, infos, sizeof *infos);
    return rc;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *count,
                                                     nvmlProcessInfo_t *infos)
{
    if (!resolve_real())
        return NVML_ERROR_UNINITIALIZED;
    if (!real.nvmlDeviceGetComputeRunningProcesses_v3)
        return NVML_ERROR_FUNCTION_NOT_FOUND;
    nvmlReturn_t rc = real.nvmlDeviceGetComputeRunningProcesses_v3(device, count, infos);
    if (rc == NVML_SUCCESS && count)
        clamp_own(device, *count, infos, sizeof *infos);
    return rc;
}
