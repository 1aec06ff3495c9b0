/*
 * shim.c — how calls reach the hooks: start-up, the routing table, the
 * dlsym override and the cuGetProcAddress wrappers.
 *
 * Real programs find driver functions three ways (measured on an H100):
 * linking -lcuda (our exported names win, being preloaded), dlsym on the
 * libcuda handle (JAX), and cudart's cuGetProcAddress (PyTorch, CuPy,
 * static cudart). For the last two the shim asks the real driver first and
 * then swaps the answer for our hook when it is the real function of one we
 * hook: routing is by pointer identity, never by the requested name, since
 * a base name maps to different ABIs by version.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "nvml.h"
#include "shim.h"
#include "vg_audit.h"

vg_shim_real_t vg__real;

static pthread_once_t start_once = PTHREAD_ONCE_INIT;
static CUresult start_status = CUDA_ERROR_NOT_INITIALIZED;

/* Set while this thread is inside shim start-up: a dlsym from a library
 * constructor that dlopen runs must not re-enter start-up. Initial-exec:
 * a plain %fs access, safe before a sanitizer runtime has started (the
 * shim is only ever preloaded, so static TLS is there for it). */
static _Thread_local int starting __attribute__((tls_model("initial-exec")));

struct route {
    void *real;
    void *hook;
};

#define VG_SHIM_COUNT_(name, params) +1
enum { HOOK_COUNT = 0 VG_HOOKS(VG_SHIM_COUNT_) };
#undef VG_SHIM_COUNT_

static struct route routes[HOOK_COUNT];
static size_t route_count;

static int route_cmp(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)((const struct route *)a)->real;
    uintptr_t y = (uintptr_t)((const struct route *)b)->real;
    return (x > y) - (x < y);
}

/* Resolves every hooked name in the driver the engine loaded. Names this
 * driver lacks stay NULL: their hooks are never handed out through lookups,
 * and a program linked against one gets CUDA_ERROR_NOT_FOUND. */
static void resolve_real(void *handle)
{
#define VG_SHIM_RESOLVE_(name, params)                                         \
    vg__real.name = (CUresult(*) params)vg__real_dlsym(handle, #name);         \
    if (vg__real.name) {                                                       \
        routes[route_count].real = (void *)vg__real.name;                      \
        routes[route_count].hook = (void *)&name;                              \
        route_count++;                                                         \
    }
    VG_HOOKS(VG_SHIM_RESOLVE_)
#undef VG_SHIM_RESOLVE_
    qsort(routes, route_count, sizeof routes[0], route_cmp);
}

static void start_once_fn(void)
{
    starting = 1;
    int rc = vg__engine_init();
    if (rc == VG_ESETTING) {
        /* Fail closed: hooks refuse every allocation; the engine says why
         * once, on the first refusal. The driver is still reachable. */
        rc = vg__driver_load(getenv("VRAMGUARD_LIBCUDA"));
    }
    if (rc == VG_OK) {
        resolve_real(vg__driver()->handle);
        vg__hot.real_mem_alloc = (void (*)(void))vg__real.cuMemAlloc_v2;
        vg__hot.real_mem_free = (void (*)(void))vg__real.cuMemFree_v2;
        start_status = CUDA_SUCCESS;
        atomic_store_explicit(&vg__hot.shim_ok, true, memory_order_release);
    } else {
        vg__log("%s", vg__driver_error());
    }
    starting = 0;
}

CUresult vg__shim_start(void)
{
    pthread_once(&start_once, start_once_fn);
    return start_status;
}


void *vg__shim_route(void *fn)
{
    size_t lo = 0, hi = route_count;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (routes[mid].real == fn)
            return routes[mid].hook;
        if ((uintptr_t)routes[mid].real < (uintptr_t)fn)
            lo = mid + 1;
        else
            hi = mid;
    }
    return fn;
}

/* vg__hot.device_count_kind: 1 once the driver said this process sees
 * exactly one device, 2 when it sees several; 0 until it answered (it
 * cannot before cuInit). The count never changes after cuInit, and with
 * one device every context's is 0. */
static int device_count_kind(void)
{
    int kind = atomic_load_explicit(&vg__hot.device_count_kind, memory_order_relaxed);
    int n = 0;
    if (kind == 0 && vg__driver()->cuDeviceGetCount(&n) == CUDA_SUCCESS && n > 0) {
        kind = n == 1 ? 1 : 2;
        atomic_store_explicit(&vg__hot.device_count_kind, kind, memory_order_relaxed);
    }
    return kind;
}

int vg__shim_device_slow(void)
{
    CUdevice dev = 0;
    if (device_count_kind() == 1 || vg__driver()->cuCtxGetDevice(&dev) != CUDA_SUCCESS)
        return 0;
    return (int)dev;
}

/* The device of `ctx`, which is not the current context: cuCtxGetDevice
 * names only the current one's, so `ctx` is made current for the question
 * and the caller's context put back. (cuCtxGetDevice_v2, which names a
 * context, came with CUDA 13.0, after cuStreamGetDevice.) */
static bool ctx_device(CUcontext ctx, CUdevice *dev)
{
    const vg__driver_t *d = vg__driver();
    CUcontext current = NULL, popped = NULL;
    if (d->cuCtxGetCurrent(&current) != CUDA_SUCCESS || current == ctx ||
        !d->cuCtxPushCurrent_v2 || !d->cuCtxPopCurrent_v2 ||
        d->cuCtxPushCurrent_v2(ctx) != CUDA_SUCCESS)
        return false;
    bool ok = d->cuCtxGetDevice(dev) == CUDA_SUCCESS;
    d->cuCtxPopCurrent_v2(&popped);
    return ok;
}

/* The device of a created stream, when the driver can say: cuStreamGetDevice
 * (CUDA 12.8), else the device of the stream's context (cuStreamGetCtx,
 * CUDA 9.2). False when neither can, or when the stream's context is the
 * current one: the caller then takes the current device. */
static bool stream_device(CUstream stream, CUdevice *dev)
{
    const vg__driver_t *d = vg__driver();
    CUcontext ctx = NULL;
    if (d->cuStreamGetDevice && d->cuStreamGetDevice(stream, dev) == CUDA_SUCCESS)
        return true;
    return d->cuStreamGetCtx && d->cuStreamGetCtx(stream, &ctx) == CUDA_SUCCESS && ctx &&
           ctx_device(ctx, dev);
}

/* The default streams (NULL, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD) are
 * the current context's. */
int vg__shim_stream_device_slow(CUstream stream)
{
    CUdevice dev = 0;
    bool named = stream && stream != CU_STREAM_LEGACY && stream != CU_STREAM_PER_THREAD;
    if (named && device_count_kind() == 2 && stream_device(stream, &dev))
        return (int)dev;
    return vg__shim_device_slow();
}

/* ------------------------------------------------- cuGetProcAddress */

CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion,
                             cuuint64_t flags,
                             CUdriverProcAddressQueryResult *symbolStatus)
{
    if (vg__unlikely(!vg__shim_ready()) && vg__shim_start() != CUDA_SUCCESS)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuGetProcAddress_v2) /* a driver before CUDA 12.0 */
        return CUDA_ERROR_NOT_FOUND;
    CUresult rc = vg__real.cuGetProcAddress_v2(symbol, pfn, cudaVersion, flags,
                                               symbolStatus);
    if (rc == CUDA_SUCCESS && pfn && *pfn)
        *pfn = vg__shim_route(*pfn);
    return rc;
}

CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion,
                          cuuint64_t flags)
{
    if (vg__unlikely(!vg__shim_ready()) && vg__shim_start() != CUDA_SUCCESS)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuGetProcAddress)
        return CUDA_ERROR_NOT_FOUND;
    CUresult rc = vg__real.cuGetProcAddress(symbol, pfn, cudaVersion, flags);
    if (rc == CUDA_SUCCESS && pfn && *pfn)
        *pfn = vg__shim_route(*pfn);
    return rc;
}

/* ------------------------------------------------------------- dlsym */

/* Only names that can be driver entry points start the shim, so the
 * thousands of dlsym calls a Python process makes cost one compare. */
VG__NO_SANITIZE static inline bool may_be_driver_name(const char *name)
{
    return name && name[0] == 'c' && name[1] == 'u';
}

/* NVML's memory views are hooked too (nvml.c). Plain compares, no libc:
 * this runs wherever may_be_driver_name does. */
VG__NO_SANITIZE static inline bool is_nvml_name(const char *name)
{
    return name && name[0] == 'n' && name[1] == 'v' && name[2] == 'm' && name[3] == 'l';
}

/* Every hook by its exported name, from the one hook list. */
static const struct named_hook {
    const char *name;
    void *hook;
} named_hooks[] = {
#define VG_SHIM_NAMED_(fn, params) {#fn, (void *)&fn},
    VG_HOOKS(VG_SHIM_NAMED_)
#undef VG_SHIM_NAMED_
};
_Static_assert(sizeof named_hooks / sizeof named_hooks[0] == HOOK_COUNT, "one name per hook");

/* Our hook exported under `name`, or NULL when we hook no such name. Only
 * for a shim that could not start (rare: a scan of the table is enough):
 * with no real driver there is no routing table to match pointers against. */
static void *hook_named(const char *name)
{
    for (size_t i = 0; i < sizeof named_hooks / sizeof named_hooks[0]; i++)
        if (strcmp(name, named_hooks[i].name) == 0)
            return named_hooks[i].hook;
    return NULL;
}

/* dlsym with an ordinary handle: ask libc, then hand back our hook when the
 * answer is the real function of one we hook. The name is checked before
 * anything else: a sanitizer runtime calls dlsym while it starts (for libc
 * names), when neither thread-local storage nor instrumented code may run.
 * When the shim cannot start (VRAMGUARD_LIBCUDA names no loadable driver)
 * but the program loaded one itself, a hooked name still gets our hook,
 * which returns CUDA_ERROR_NOT_INITIALIZED: handing out the real function
 * would run the program with no budget at all. */
VG__NO_SANITIZE static void *lookup(void *handle, const char *name)
{
    void *p = vg__real_dlsym(handle, name);
    if (!p || !may_be_driver_name(name) || starting)
        return p && is_nvml_name(name) ? vg__nvml_route(p) : p;
    if (vg__unlikely(!vg__shim_ready()) && vg__shim_start() != CUDA_SUCCESS) {
        void *hook = hook_named(name);
        return hook ? hook : p;
    }
    return vg__shim_route(p);
}

/* Exported as dlsym@@GLIBC_2.34 and dlsym@GLIBC_2.2.5 (see the version
 * script), so programs linked against either glibc reach it.
 *
 * dlsym(RTLD_NEXT, ...) means "after the caller's object", and libc finds
 * the caller from its return address. So RTLD_NEXT goes to libc's dlsym as
 * a tail call: libc sees the original caller and answers exactly as without
 * the shim. Its answer is not routed: a library that asks for the *next*
 * definition of a driver function is chaining past the shim on purpose
 * (docs/shim.md). tests/test_shim.c checks the semantics. */
VG_EXPORT void *shim_dlsym_234(void *handle, const char *name);
VG_EXPORT void *shim_dlsym_225(void *handle, const char *name);
__asm__(".symver shim_dlsym_234, dlsym@@GLIBC_2.34");
__asm__(".symver shim_dlsym_225, dlsym@GLIBC_2.2.5");

/* The tail call must survive any build's optimisation level (at -O0 GCC
 * makes none, and RTLD_NEXT then answered relative to the shim). */
#define TAIL_CALLS __attribute__((optimize("O2", "optimize-sibling-calls")))

VG__NO_SANITIZE TAIL_CALLS void *shim_dlsym_234(void *handle, const char *name)
{
    if (handle == RTLD_NEXT)
        return vg__libc_dlsym()(handle, name); /* tail call: keep it one */
    return lookup(handle, name);
}

VG__NO_SANITIZE TAIL_CALLS void *shim_dlsym_225(void *handle, const char *name)
{
    if (handle == RTLD_NEXT)
        return vg__libc_dlsym()(handle, name); /* tail call: keep it one */
    return lookup(handle, name);
}

/* ------------------------------------------------------------- _exit */

/* A process that ends through _exit (Python's os._exit, which every
 * multiprocessing worker ends with) runs no atexit handler: the audit log's
 * buffered events are written first (lib/audit_buf.c), then the next
 * definition runs (libc's, or a sanitizer's). Exported under libc's own
 * version (the version script), the one programs are linked against. */
VG_EXPORT __attribute__((noreturn)) void _exit(int status);
VG_EXPORT __attribute__((noreturn)) void _Exit(int status);

__attribute__((noreturn)) static void exit_next(const char *name, int status)
{
    vg__audit_flush_exiting();
    void (*next)(int) = (void (*)(int))vg__libc_dlsym()(RTLD_NEXT, name);
    if (next)
        next(status);
    for (;;)
        syscall(SYS_exit_group, status);
}

void _exit(int status) { exit_next("_exit", status); }

void _Exit(int status) { exit_next("_Exit", status); }
