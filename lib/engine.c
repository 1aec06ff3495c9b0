/*
 * engine.c — the one engine of a process: settings parsed once, the real
 * driver loaded once, and the process budget of each device (from
 * VRAMGUARD_BUDGET) resolved on first use. Both doors, the preload shim and
 * the public API, reach the same state here.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "vg_account.h"
#include "vg_audit.h"
#include "vg_shared.h"
#include "vg_fork.h"

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int init_status = VG_ENODRIVER;
static vg__settings_t settings;
static char init_error[1024];

static const char *env_get(const char *name, void *ctx)
{
    (void)ctx;
    return getenv(name);
}

static void engine_init_once(void)
{
    int rc = vg__settings_parse(env_get, NULL, &settings, init_error,
                                sizeof init_error);
    if (rc != VG_OK) {
        init_status = rc;
        return;
    }
    vg__hot.cache_mode = settings.pool == VG__POOL_CACHE;
    rc = vg__driver_load(settings.libcuda);
    if (rc != VG_OK) {
        snprintf(init_error, sizeof init_error, "%s", vg__driver_error());
        init_status = rc;
        return;
    }
    /* The audit log opens here, at start: a log that cannot be written is
     * a bad setting (fail closed), not a silent no-op. */
    init_status = vg__diag_start(&settings, init_error, sizeof init_error);
    if (init_status == VG_OK)
        atomic_store_explicit(&vg__hot.engine_ok, true, memory_order_release);
}

/* Every device starts pending in implicit_pending: its context was never
 * measured (account_implicit.c). */
vg__hot_t vg__hot = {.implicit_pending = UINT64_MAX};
_Thread_local vg__thread_t vg__me;

int vg__engine_init_slow(void)
{
    pthread_once(&init_once, engine_init_once);
    return init_status;
}

const char *vg__engine_error(void)
{
    vg__engine_init();
    return init_error;
}

const vg__settings_t *vg__engine_settings(void)
{
    vg__engine_init();
    return &settings;
}

int vg__engine_describe(const char **library, const char **why)
{
    int rc = vg__engine_init();
    *library = settings.libcuda[0] ? settings.libcuda : "libcuda.so.1";
    *why = init_error;
    return rc;
}

/* ------------------------------------------------ per-device budgets */

vg__budget_t vg__engine_budgets[VG__MAX_DEVICES];
static pthread_mutex_t resolve_lock = PTHREAD_MUTEX_INITIALIZER;

/* A fork while a device budget is being resolved waits for the resolution,
 * so the child never finds the lock held (fork.c, rank RESOLVE). */
void vg__engine_prefork(void) { pthread_mutex_lock(&resolve_lock); }
void vg__engine_postfork_parent(void) { pthread_mutex_unlock(&resolve_lock); }
void vg__engine_postfork_child(void) { pthread_mutex_unlock(&resolve_lock); }

static bool spec_needs_device(const vg__budget_spec_t *spec)
{
    if (spec->all.unit == VG__BUDGET_PERCENT)
        return true;
    for (int i = 0; i < spec->count; i++)
        if (spec->entry[i].uuid[0] ||
            spec->entry[i].value.unit == VG__BUDGET_PERCENT)
            return true;
    return false;
}

/* Whether some per-device entry of the budget names a device the driver
 * shows. A budget made only of entries that match nothing ("5=1GiB" on a
 * one-GPU machine, a mistyped GPU uuid) is a typo, not "no limit": the
 * caller fails closed (`vramguard run` refuses it before the program
 * starts; this is for the shim used without the CLI). */
static bool spec_names_a_device(const vg__budget_spec_t *spec)
{
    const vg__driver_t *d = vg__driver();
    int count = 0;
    if (!d || d->cuDeviceGetCount(&count) != CUDA_SUCCESS)
        return true; /* cannot tell: resolve as written */
    for (int i = 0; i < count; i++) {
        char uuid[48] = "";
        vg__device_uuid(i, uuid);
        for (int e = 0; e < spec->count; e++)
            if (spec->entry[e].uuid[0] ? strcasecmp(spec->entry[e].uuid, uuid) == 0
                                       : spec->entry[e].ordinal == i)
                return true;
    }
    return false;
}

/* Fails closed: a budget that names the device by UUID or percent but whose
 * device cannot be read becomes a limit of 0, never unlimited. */
static uint64_t resolve_limit(int device)
{
    const vg__budget_spec_t *spec = &settings.budget;
    char uuid[48] = "";
    uint64_t total = 0;
    if (vg__engine_init() != VG_OK)
        return 0;
    if (spec_needs_device(spec) &&
        (vg__device_uuid(device, uuid) != VG_OK ||
         vg__device_total(device, &total) != VG_OK)) {
        vg__log("cannot read device %d to resolve %s; refusing its allocations",
                device, settings.budget_from);
        return 0;
    }
    if (spec->count > 0 && spec->all.unit == VG__BUDGET_NONE && !spec_names_a_device(spec)) {
        vg__log("%s names no device the driver shows; refusing device %d's allocations "
                "rather than running unlimited", settings.budget_from, device);
        return 0;
    }
    return vg__budget_spec_limit(spec, device, uuid, total);
}

static inline bool budget_resolved(int device, memory_order order)
{
    return (atomic_load_explicit(&vg__hot.budget_resolved, order) >> device) & 1;
}

__attribute__((noinline, cold)) static void resolve_budget(int device)
{
    vg__mutex_lock(&resolve_lock, VG__RANK_RESOLVE);
    if (!budget_resolved(device, memory_order_relaxed)) {
        uint64_t limit = resolve_limit(device);
        vg__budget_init(&vg__engine_budgets[device], limit, NULL);
        /* 0 is a failure resolve_limit already reported: fail closed
         * here, never write it into a region other processes share. */
        if ((settings.shared[0] || settings.shared_cache[0]) && limit != 0)
            vg__shared_bind(&vg__engine_budgets[device], device, limit);
        if (!vg__engine_budgets[device].shared) /* shared budgets go to the region */
            vg__credit_enable(&vg__engine_budgets[device], device);
        vg__audit_watch(&vg__engine_budgets[device], device); /* `pressure` events */
        atomic_fetch_or_explicit(&vg__hot.budget_resolved, 1ull << device, memory_order_release);
    }
    vg__mutex_unlock(&resolve_lock, VG__RANK_RESOLVE);
}

vg__budget_t *vg__engine_budget_slow(int device)
{
    if (device < 0 || device >= VG__MAX_DEVICES)
        return NULL;
    if (!budget_resolved(device, memory_order_acquire))
        resolve_budget(device);
    return &vg__engine_budgets[device];
}
