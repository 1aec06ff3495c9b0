/*
 * driver.c — the real CUDA driver, loaded once at run time.
 *
 * The engine calls the driver only through this table. Every entry point is
 * resolved with libc's own dlsym on the libcuda handle, so the engine's calls
 * never pass through the preload shim's hooks (no double counting), even
 * when the shim has replaced dlsym for the rest of the process.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "vg_driver.h"
#include "vg_fork.h"

/* libc's dlsym, found once. This runs inside dlsym calls that a sanitizer
 * runtime makes while it starts (before its shadow memory, TLS handling
 * and interceptors exist), so it is not instrumented and uses neither
 * pthread_once nor thread-local storage: a racing first lookup is harmless,
 * since every thread finds the same function.
 *
 * RTLD_NEXT from here skips the preload shim (which exports its own dlsym)
 * whichever object holds this code. glibc >= 2.34 versions dlsym
 * GLIBC_2.34; older ones only GLIBC_2.2.5 (in libdl). */
static _Atomic(vg__dlsym_fn) libc_dlsym;

VG__NO_SANITIZE vg__dlsym_fn vg__libc_dlsym(void)
{
    vg__dlsym_fn f = atomic_load_explicit(&libc_dlsym, memory_order_acquire);
    if (vg__likely(f))
        return f;
    f = (vg__dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34");
    if (!f)
        f = (vg__dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5");
    atomic_store_explicit(&libc_dlsym, f, memory_order_release);
    return f;
}

VG__NO_SANITIZE void *vg__real_dlsym(void *handle, const char *name)
{
    vg__dlsym_fn f = vg__libc_dlsym();
    return f ? f(handle, name) : NULL;
}

static pthread_mutex_t load_lock = PTHREAD_MUTEX_INITIALIZER;
static vg__driver_t table;
static _Atomic int load_state; /* 0 not tried, 1 loaded, -1 failed */
static char load_error[512];

/* Resolves every entry point of VG__DRIVER_FNS, and of
 * VG__DRIVER_OPTIONAL_FNS those the driver has (NULL the others); on
 * failure the error names the first required one missing (the caller then
 * clears the table). */
static int resolve_all(void *handle)
{
    const char *missing = NULL;
#define VG__RESOLVE_(name, params)                                             \
    table.name = (CUresult(*) params)vg__real_dlsym(handle, #name);            \
    if (!table.name && !missing)                                               \
        missing = #name;
    VG__DRIVER_FNS(VG__RESOLVE_)
#undef VG__RESOLVE_
#define VG__RESOLVE_OPTIONAL_(name, params)                                    \
    table.name = (CUresult(*) params)vg__real_dlsym(handle, #name);
    VG__DRIVER_OPTIONAL_FNS(VG__RESOLVE_OPTIONAL_)
#undef VG__RESOLVE_OPTIONAL_
    if (missing) {
        snprintf(load_error, sizeof load_error,
                 "the CUDA driver lacks the entry point %s", missing);
        return VG_ENODRIVER;
    }
    return VG_OK;
}

static int load_locked(const char *path)
{
    if (!path || !*path)
        path = "libcuda.so.1";
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        const char *why = dlerror();
        snprintf(load_error, sizeof load_error,
                 "cannot load the CUDA driver '%s': %s (set VRAMGUARD_LIBCUDA "
                 "to its path)", path, why ? why : "unknown error");
        return VG_ENODRIVER;
    }
    int rc = resolve_all(handle);
    if (rc != VG_OK) {
        memset(&table, 0, sizeof table);
        dlclose(handle);
        return rc;
    }
    table.handle = handle;
    return VG_OK;
}

/* Fork (fork.c, rank DRIVER_LOAD): a load in progress finishes first. */
void vg__driver_prefork(void) { pthread_mutex_lock(&load_lock); }
void vg__driver_postfork_parent(void) { pthread_mutex_unlock(&load_lock); }
void vg__driver_postfork_child(void) { pthread_mutex_unlock(&load_lock); }

int vg__driver_load(const char *path)
{
    int state = atomic_load_explicit(&load_state, memory_order_acquire);
    if (vg__likely(state != 0))
        return state > 0 ? VG_OK : VG_ENODRIVER;
    vg__mutex_lock(&load_lock, VG__RANK_DRIVER_LOAD);
    state = atomic_load_explicit(&load_state, memory_order_relaxed);
    if (state == 0) {
        state = load_locked(path) == VG_OK ? 1 : -1;
        /* release: the table is complete before anyone sees state 1 */
        atomic_store_explicit(&load_state, state, memory_order_release);
        if (state > 0)
            atomic_store_explicit(&vg__driver_table, &table, memory_order_release);
    }
    vg__mutex_unlock(&load_lock, VG__RANK_DRIVER_LOAD);
    return state > 0 ? VG_OK : VG_ENODRIVER;
}

_Atomic(const vg__driver_t *) vg__driver_table;

const char *vg__driver_error(void)
{
    if (atomic_load_explicit(&load_state, memory_order_acquire) < 0)
        return load_error;
    return "";
}

const char *vg__cu_name(CUresult rc)
{
    const vg__driver_t *d = vg__driver();
    const char *name = NULL;
    if (d && d->cuGetErrorName(rc, &name) == CUDA_SUCCESS && name)
        return name;
    switch (rc) {
    case CUDA_SUCCESS: return "CUDA_SUCCESS";
    case CUDA_ERROR_INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
    case CUDA_ERROR_OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY";
    case CUDA_ERROR_NOT_INITIALIZED: return "CUDA_ERROR_NOT_INITIALIZED";
    default: return "CUDA_ERROR_UNKNOWN_CODE";
    }
}

/* The one place a vg status becomes the CUresult a hooked call returns, so
 * a hook can only ever return a valid driver code (never -1). */
CUresult vg__cu_status(int vg_status)
{
    switch (vg_status) {
    case VG_OK: return CUDA_SUCCESS;
    case VG_ENOMEM: return CUDA_ERROR_OUT_OF_MEMORY;
    case VG_ESETTING: return CUDA_ERROR_OUT_OF_MEMORY; /* fail closed */
    case VG_EDENIED: return CUDA_ERROR_NOT_SUPPORTED;
    case VG_ENODRIVER: return CUDA_ERROR_NOT_INITIALIZED;
    case VG_ENODEV: return CUDA_ERROR_INVALID_DEVICE;
    default: return CUDA_ERROR_INVALID_VALUE;
    }
}
