/*
 * account_overhead.c — device memory this process uses that no call shows: the
 * CUDA context, module images, library workspaces (cuBLAS, cuDNN, NCCL).
 *
 * Method: NVML's figure for this process on the device
 * (nvmlDeviceGetComputeRunningProcesses, usedGpuMemory for our pid) minus
 * what the calls showed (the device budget's use, less the overhead charged
 * before, plus managed memory the policy chose not to charge), never below
 * zero. The result is charged with vg__acct_overhead_set(). docs/shim.md
 * gives the error of this method.
 *
 * Only slow paths call in here: the first allocation on a device (before
 * any allocation can succeed), calls that make the driver take memory
 * (context creation, module and library loads), the first allocation
 * after the first launch of a kernel (lazily loaded code), refusals (at
 * most once a millisecond per device) and memory views (once a second). docs/accounting.md gives the cost and the
 * worst-case overshoot. This is the one place the engine loads NVML
 * (dlopen, once); without it the overhead stays 0 (said once).
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "vg_account.h"
#include "vg_shared.h"

#define REFRESH_INTERVAL_NS 1000000000ull /* views and refusals: once a second */
#define REFRESH_SOON_NS 1000000ull         /* before refusals: once a ms */
#define PROC_SLOTS 64                     /* processes read without malloc */

/* The slice of NVML's stable ABI used here (nvml.h: nvmlProcessInfo_v1_st
 * {pid, usedGpuMemory}; nvmlProcessInfo_v2_st and nvmlProcessInfo_st add
 * gpuInstanceId, computeInstanceId; _v2 and _v3 of the query take the
 * latter layout). */
typedef int nvml_rc_t;
typedef struct nvml_device *nvml_device_t;
#define NVML_OK 0
#define NVML_INSUFFICIENT_SIZE 7
#define NVML_VALUE_NOT_AVAILABLE (~0ull)

typedef struct {
    unsigned int pid;
    unsigned long long used;
} nvml_proc_v1_t;

typedef struct {
    unsigned int pid;
    unsigned long long used;
    unsigned int gpu_instance;
    unsigned int compute_instance;
} nvml_proc_v2_t;

typedef nvml_rc_t (*procs_fn)(nvml_device_t dev, unsigned int *count, void *infos);

static struct {
    bool ok;
    procs_fn procs;
    size_t proc_size; /* sizeof the layout `procs` fills */
    nvml_rc_t (*by_uuid)(const char *uuid, nvml_device_t *dev);
} nvml;

static pthread_once_t nvml_once = PTHREAD_ONCE_INIT;
static _Atomic uint64_t last_ns[VG__MAX_DEVICES]; /* mono ns of the last try, 0 = none */

/* Loads NVML once and initialises it (nvmlInit is reference-counted: the
 * program's own init and shutdown are unaffected). The newest process
 * query wins: _v3, then _v2, then the unversioned one. */
static void nvml_load(void)
{
    void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        vg__log("NVML (libnvidia-ml.so.1) is not available: memory no call shows "
                "(context, module globals, library workspaces) is not charged");
        return;
    }
    nvml_rc_t (*init)(void) = (nvml_rc_t(*)(void))vg__real_dlsym(h, "nvmlInit_v2");
    nvml.by_uuid = (nvml_rc_t(*)(const char *, nvml_device_t *))
        vg__real_dlsym(h, "nvmlDeviceGetHandleByUUID");
    static const char *const names[] = {
        "nvmlDeviceGetComputeRunningProcesses_v3",
        "nvmlDeviceGetComputeRunningProcesses_v2",
        "nvmlDeviceGetComputeRunningProcesses",
    };
    for (int i = 0; i < 3 && !nvml.procs; i++) {
        nvml.procs = (procs_fn)vg__real_dlsym(h, names[i]);
        nvml.proc_size = i < 2 ? sizeof(nvml_proc_v2_t) : sizeof(nvml_proc_v1_t);
    }
    if (!init || !nvml.by_uuid || !nvml.procs || init() != NVML_OK) {
        vg__log("NVML is present but unusable; memory no call shows is not charged");
        dlclose(h);
        return;
    }
    nvml.ok = true;
}

/* Entry i of an array of the layout nvml.procs fills. */
static void proc_at(const void *infos, unsigned int i, unsigned int *pid,
                    unsigned long long *used)
{
    if (nvml.proc_size == sizeof(nvml_proc_v2_t)) {
        const nvml_proc_v2_t *p = (const nvml_proc_v2_t *)infos + i;
        *pid = p->pid, *used = p->used;
    } else {
        const nvml_proc_v1_t *p = (const nvml_proc_v1_t *)infos + i;
        *pid = p->pid, *used = p->used;
    }
}

/* This process's device memory on `dev` as NVML counts it. VG_ENOTFOUND
 * when NVML does not list us (no context yet, or a PID namespace under a
 * driver that reports the host's PIDs: older ones did, 580 does not). */
static int process_bytes(nvml_device_t dev, uint64_t *bytes)
{
    nvml_proc_v2_t stack[PROC_SLOTS];
    void *infos = stack, *heap = NULL;
    unsigned int count = PROC_SLOTS;
    nvml_rc_t rc = nvml.procs(dev, &count, infos);
    if (rc == NVML_INSUFFICIENT_SIZE && (heap = calloc(count + 8u, sizeof stack[0]))) {
        infos = heap;
        count += 8u;
        rc = nvml.procs(dev, &count, infos);
    }
    int status = rc == NVML_OK ? VG_ENOTFOUND : VG_EDRIVER;
    unsigned int me = (unsigned int)getpid();
    for (unsigned int i = 0; rc == NVML_OK && i < count; i++) {
        unsigned int pid;
        unsigned long long used;
        proc_at(infos, i, &pid, &used);
        if (pid == me && used != NVML_VALUE_NOT_AVAILABLE) {
            *bytes = used;
            status = VG_OK;
            break;
        }
    }
    free(heap);
    return status;
}

struct managed_tally {
    int device;
    uint64_t bytes;
};

/* Managed memory the policy left uncharged (VRAMGUARD_MANAGED=ignore) was
 * shown by a call, so it is not overhead even when NVML counts it. */
static void tally_uncharged(const vg__alloc_t *a, void *ctx)
{
    struct managed_tally *t = ctx;
    if (a->device == t->device && a->kind == VG_KIND_MANAGED && a->size > a->charged)
        t->bytes += a->size - a->charged;
}

static bool measure(int device, vg__budget_t *b)
{
    char uuid[48];
    nvml_device_t dev;
    uint64_t nvml_bytes;
    if (vg__device_uuid(device, uuid) != VG_OK || nvml.by_uuid(uuid, &dev) != NVML_OK ||
        process_bytes(dev, &nvml_bytes) != VG_OK)
        return false; /* nothing measured: the last figure stands */
    struct managed_tally t = {device, 0};
    if (vg__engine_settings()->managed == VG__MANAGED_IGNORE) /* a ledger walk */
        vg__ledger_foreach(VG__ANY_OWNER, tally_uncharged, &t);
    /* What this process has charged, never the whole shared region's use:
     * with a shared budget, b->used counts every process, and subtracting
     * it made other processes' memory look like ours (8 processes on one
     * H100 budget showed ~0 overhead each while their contexts took 4 GiB). */
    uint64_t used = b->shared ? vg__shared_self_used(b)
                              : vg__budget_used(b); /* unspent credit showed nothing */
    uint64_t old = vg__acct_overhead(device);
    uint64_t shown = (used > old ? used - old : 0) + t.bytes;
    uint64_t now = nvml_bytes > shown ? nvml_bytes - shown : 0;
    /* Another thread's reservation counts in `used` before the driver has
     * made it, so a figure taken meanwhile reads low: taken as it is, 16
     * threads racing on the test driver slipped 300 MiB past a 1 GiB
     * budget. Memory no call shows only shrinks when a context, module or
     * limit goes, so the figure only falls after one of those. */
    if (now >= old || vg__acct_implicit_may_shrink(device))
        vg__acct_overhead_set(device, now);
    return true;
}

static uint64_t interval_of(vg__refresh_t when)
{
    switch (when) {
    case VG__REFRESH_NOW:
        return 0;
    case VG__REFRESH_SOON:
        return REFRESH_SOON_NS;
    default:
        return REFRESH_INTERVAL_NS;
    }
}

bool vg__overhead_refresh(int device, vg__refresh_t when)
{
    vg__budget_t *b = vg__engine_budget(device);
    if (!b || atomic_load_explicit(&b->limit, memory_order_relaxed) == VG__UNLIMITED)
        return false; /* nothing to enforce: spare the process NVML's start-up */
    uint64_t now = vg__mono_ns();
    uint64_t last = atomic_load_explicit(&last_ns[device], memory_order_relaxed);
    uint64_t gap = interval_of(when);
    if (gap && last && now - last < gap)
        return false; /* measured recently enough */
    if (gap && !atomic_compare_exchange_strong_explicit(&last_ns[device], &last, now,
                                                        memory_order_relaxed,
                                                        memory_order_relaxed))
        return false; /* another thread is measuring this device */
    if (!gap)
        atomic_store_explicit(&last_ns[device], now, memory_order_relaxed);
    pthread_once(&nvml_once, nvml_load);
    bool ok = nvml.ok && measure(device, b);
    /* NVML lists a process only some time after its context exists: a miss
     * must not use up the interval, or the first real figure comes late. */
    if (!ok)
        atomic_store_explicit(&last_ns[device], 0, memory_order_relaxed);
    return ok;
}

bool vg__overhead_available(void)
{
    pthread_once(&nvml_once, nvml_load);
    return nvml.ok;
}
