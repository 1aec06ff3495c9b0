/*
 * client_truth.c — a client for tests/test_truth.c: memory the device
 * takes without an allocation call (contexts, cuCtxSetLimit, modules, VMM
 * memory released while mapped, slow frees) and what is reported of it,
 * run under the preload shim with a budget. Memory the driver's objects
 * hold, and give back when they go (destroyed contexts, pools, arrays,
 * graph nodes), is client_holders.c's.
 *
 *   client_truth CASE
 *   stdout: one line "path=CASE key=value ...", numbers in decimal, ending
 *           with the test driver's own view of device 0:
 *           peak=B used=B implicit=B (fakecuda_*; -1 on another driver)
 *   exit:   0 ran (whatever the driver answered), 2 usage, 3 setup failed
 *
 * Every call goes through linked driver symbols, as a program built with
 * -lcuda makes them; the shim must catch them. The driver's own view is
 * read through dlsym on libcuda.so.1, which the shim cannot rewrite.
 *
 * Cases (sizes are fixed: the test sets budget and driver knobs):
 *   vmm         8 x (cuMemCreate 256 MiB, reserve, map, set access, release
 *               at once); one more create; unmap all; one more create
 *   vmm_remap   256 MiB mapped at va and released; va unmapped while another
 *               thread maps 512 MiB of its own there and releases it (the
 *               test makes cuMemUnmap slow to return); then 640 MiB
 *   vmm_release_map 512 MiB mapped while another thread releases the handle
 *               (the test makes cuMemMap slow to return); then 640 MiB
 *   (the limit and module cases first allocate 64 MiB, so the program is
 *   running before the implicit memory arrives)
 *   heap_big    cuCtxSetLimit(MALLOC_HEAP_SIZE, 3 GiB), then one launch
 *   heap_fits   heap 256 MiB, one launch, then 64 MiB allocations until refused
 *   heap_fits_late heap 256 MiB, 64 MiB allocations until refused, then one
 *               launch (where the driver takes the heap at the launch)
 *   stack_big   cuCtxSetLimit(STACK_SIZE, 16 KiB), then one launch
 *   lazy_module a module with 600 MiB of globals, one launch, then 64 MiB
 *               allocations until refused
 *   func_load   a module with 600 MiB of globals, loaded lazily, then
 *               cuFuncLoad of its kernel, 64 MiB allocations until refused,
 *               then one launch
 *   graph_kernel a module with 600 MiB of globals, loaded lazily; a graph
 *               with one kernel node of its kernel, instantiated (which
 *               loads the module), 64 MiB allocations until refused, then
 *               the graph launched
 *   eager_module a module with 1.5 GiB of globals (the test sets
 *               CUDA_MODULE_LOADING=EAGER), then one 256 MiB allocation
 *   eager_library (two devices) 64 MiB on device 1, then with device 0
 *               current a library with 600 MiB of globals (the test sets
 *               CUDA_MODULE_LOADING=EAGER: it loads on both), then 600 MiB
 *               on device 1 (dev1_rc=); peak1= is device 1's peak
 *   race        16 threads, from the first allocation, 32 MiB each until refused
 *   free_order  16 threads allocate and free 1 KiB..64 MiB for 2 s (the
 *               churns go on past 2 s, up to 20 s, until one is refused)
 *   pool_churn  the free_order churn from the default pool (cuMemAllocAsync,
 *               cuMemFreeAsync), 1 KiB..256 MiB
 *   churn_credit 16 threads allocate and free for 2 s, half the requests of
 *               1 KiB..32 KiB (paid from per-thread credit under a 32 MiB
 *               budget) and half of 1 KiB..2 MiB
 *   views       the race, then cuMemGetInfo and NVML (memory info v1/v2 and
 *               this process's used memory), read while the memory is held
 */
#include <cuda.h>
#include <dlfcn.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "truth_common.h"

#define KiB 1024ull
#define MiB (1024ull * KiB)
#define GiB (1024ull * MiB)
#define THREADS 16

/* ------------------------------------------------------ helpers */

/* Loads a module image; *f is its kernel "k". */
static CUresult load_module(const char *image, CUmodule *m, CUfunction *f)
{
    CUresult rc = cuModuleLoadData(m, image);
    if (rc == CUDA_SUCCESS)
        rc = cuModuleGetFunction(f, *m, "k");
    return rc;
}

static CUresult launch(CUfunction f)
{
    return cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL);
}

/* A kernel to launch after a limit change (a module without globals). */
static CUresult launch_any(void)
{
    CUmodule m;
    CUfunction f;
    CUresult rc = load_module("fakecuda-module kernels=k", &m, &f);
    return rc == CUDA_SUCCESS ? launch(f) : rc;
}

/* ------------------------------------------------------ a. VMM */

/* Creates, maps and releases at once one 256 MiB piece at *va. */
static CUresult vmm_piece(CUdeviceptr *va)
{
    const size_t size = 256 * MiB;
    CUmemAllocationProp prop = vmm_prop();
    CUmemAccessDesc ad = {{CU_MEM_LOCATION_TYPE_DEVICE, g_dev}, CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    CUmemGenericAllocationHandle h;
    CUresult rc = cuMemCreate(&h, size, &prop, 0);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (cuMemAddressReserve(va, size, 0, 0, 0) != CUDA_SUCCESS || cuMemMap(*va, size, 0, h, 0) ||
        cuMemSetAccess(*va, size, &ad, 1) || cuMemRelease(h)) {
        fprintf(stderr, "client_truth: vmm setup failed\n");
        exit(3);
    }
    return CUDA_SUCCESS;
}

static void case_vmm(void)
{
    CUdeviceptr va[9];
    int n = 0, ok = 0;
    CUresult first = CUDA_SUCCESS, later, again;
    for (int i = 0; i < 8; i++) {
        CUresult rc = vmm_piece(&va[n]);
        ok += rc == CUDA_SUCCESS;
        n += rc == CUDA_SUCCESS;
        if (rc != CUDA_SUCCESS && first == CUDA_SUCCESS)
            first = rc;
    }
    later = vmm_piece(&va[n]);
    n += later == CUDA_SUCCESS;
    for (int i = 0; i < n; i++) {
        cuMemUnmap(va[i], 256 * MiB);
        cuMemAddressFree(va[i], 256 * MiB);
    }
    CUdeviceptr last;
    again = vmm_piece(&last);
    printf("path=vmm created=%d first_fail_rc=%d later_rc=%d after_unmap_rc=%d", ok, first, later,
           again);
    finish();
}

/* Whether the driver has anything mapped at va (fakecuda_range_of). */
static bool driver_mapped(CUdeviceptr va)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    int (*f)(unsigned long long, unsigned long long *, size_t *, unsigned long long *) =
        h ? (int (*)(unsigned long long, unsigned long long *, size_t *,
                     unsigned long long *))dlsym(h, "fakecuda_range_of")
          : NULL;
    bool mapped = f && f(va, NULL, NULL, NULL);
    if (h)
        dlclose(h);
    return mapped;
}

/* What the other thread of a VMM race does once the driver shows va as
 * `mapped`: map `handle` there (when `size`), then release it. */
typedef struct {
    CUdeviceptr va;
    size_t size;
    CUmemGenericAllocationHandle handle;
    bool mapped;
    CUresult map_rc, release_rc;
} vmm_race_t;

static void *vmm_race_worker(void *arg)
{
    vmm_race_t *r = arg;
    cuCtxSetCurrent(g_ctx);
    while (driver_mapped(r->va) != r->mapped)
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    r->map_rc = r->size ? cuMemMap(r->va, r->size, 0, r->handle, 0) : CUDA_SUCCESS;
    r->release_rc = cuMemRelease(r->handle);
    return NULL;
}

static CUmemGenericAllocationHandle vmm_create(size_t size)
{
    CUmemAllocationProp prop = vmm_prop();
    CUmemGenericAllocationHandle h;
    if (cuMemCreate(&h, size, &prop, 0) != CUDA_SUCCESS) {
        fprintf(stderr, "client_truth: cuMemCreate failed\n");
        exit(3);
    }
    return h;
}

/* Ends a VMM race: 640 MiB more, the line, then everything unmapped. */
static void vmm_race_end(const char *name, const vmm_race_t *r, CUresult mine)
{
    CUdeviceptr b = 0;
    CUresult more = cuMemAlloc(&b, 640 * MiB);
    printf("path=%s rc=%d map_rc=%d release_rc=%d more_rc=%d", name, mine, r->map_rc,
           r->release_rc, more);
    finish();
    if (more == CUDA_SUCCESS)
        cuMemFree(b);
    cuMemUnmap(r->va, 512 * MiB);
    cuMemAddressFree(r->va, 512 * MiB);
}

/* Unmap and a map of the same address by another thread, in the driver's
 * order unmap then map, while the unmap has not returned yet. */
static void case_vmm_remap(void)
{
    vmm_race_t r = {.size = 512 * MiB, .mapped = false};
    pthread_t t;
    CUmemGenericAllocationHandle mine = vmm_create(256 * MiB);
    r.handle = vmm_create(512 * MiB);
    if (cuMemAddressReserve(&r.va, 512 * MiB, 0, 0, 0) || cuMemMap(r.va, 256 * MiB, 0, mine, 0) ||
        cuMemRelease(mine) || pthread_create(&t, NULL, vmm_race_worker, &r) != 0) {
        fprintf(stderr, "client_truth: vmm_remap setup failed\n");
        exit(3);
    }
    CUresult unmap = cuMemUnmap(r.va, 256 * MiB);
    pthread_join(t, NULL);
    vmm_race_end("vmm_remap", &r, unmap);
}

/* A release of a handle another thread is mapping, after the driver
 * mapped it and before that cuMemMap returned. */
static void case_vmm_release_map(void)
{
    vmm_race_t r = {.size = 0, .mapped = true};
    pthread_t t;
    r.handle = vmm_create(512 * MiB);
    if (cuMemAddressReserve(&r.va, 512 * MiB, 0, 0, 0) ||
        pthread_create(&t, NULL, vmm_race_worker, &r) != 0) {
        fprintf(stderr, "client_truth: vmm_release_map setup failed\n");
        exit(3);
    }
    CUresult map = cuMemMap(r.va, 512 * MiB, 0, r.handle, 0);
    pthread_join(t, NULL);
    vmm_race_end("vmm_release_map", &r, map);
}

/* ------------------------------------------------------ b, c. limits */

/* One 64 MiB allocation first: the program is running (and a shim has
 * measured whatever it measures at the first allocation) before the
 * implicit memory arrives. */
static void first_alloc(held_t *h)
{
    if (cuMemAlloc(&h->p[0], 64 * MiB) != CUDA_SUCCESS) {
        fprintf(stderr, "client_truth: the first 64 MiB allocation failed\n");
        exit(3);
    }
    h->n = 1;
}

typedef enum { LIMIT_ONLY, LIMIT_THEN_FILL, LIMIT_FILL_THEN_LAUNCH } limit_mode;

static void case_limit(const char *name, CUlimit limit, size_t value, limit_mode mode)
{
    held_t h = {0};
    CUresult run = CUDA_SUCCESS;
    first_alloc(&h);
    CUresult set = cuCtxSetLimit(limit, value);
    if (mode != LIMIT_FILL_THEN_LAUNCH)
        run = launch_any();
    if (mode != LIMIT_ONLY)
        fill(&h, 64 * MiB);
    if (mode == LIMIT_FILL_THEN_LAUNCH)
        run = launch_any();
    size_t got = 0;
    cuCtxGetLimit(&got, limit);
    printf("path=%s set_rc=%d launch_rc=%d value=%zu allocs=%d rc=%d", name, set, run, got, h.n,
           h.rc);
    finish();
    release_all(&h);
}

/* ------------------------------------------------------ d, e. modules */

static void case_lazy_module(void)
{
    CUmodule m;
    CUfunction f;
    held_t h = {0};
    first_alloc(&h);
    CUresult load = load_module("fakecuda-module globals=629145600 kernels=k", &m, &f);
    CUresult run = load == CUDA_SUCCESS ? launch(f) : load;
    fill(&h, 64 * MiB);
    printf("path=lazy_module load_rc=%d launch_rc=%d allocs=%d rc=%d", load, run, h.n, h.rc);
    finish();
    release_all(&h);
}

static void case_func_load(void)
{
    CUmodule m;
    CUfunction f;
    held_t h = {0};
    first_alloc(&h);
    CUresult load = load_module("fakecuda-module globals=629145600 kernels=k", &m, &f);
    CUresult fload = load == CUDA_SUCCESS ? cuFuncLoad(f) : load;
    fill(&h, 64 * MiB);
    CUresult run = load == CUDA_SUCCESS ? launch(f) : load;
    printf("path=func_load load_rc=%d func_load_rc=%d allocs=%d rc=%d launch_rc=%d", load,
           fload, h.n, h.rc, run);
    finish();
    release_all(&h);
}

static void case_graph_kernel(void)
{
    CUmodule m;
    CUfunction f;
    CUgraph g = NULL;
    CUgraphExec e = NULL;
    CUgraphNode node;
    held_t h = {0};
    first_alloc(&h);
    CUresult load = load_module("fakecuda-module globals=629145600 kernels=k", &m, &f);
    CUresult made = load == CUDA_SUCCESS ? cuGraphCreate(&g, 0) : load;
    CUDA_KERNEL_NODE_PARAMS kp = {.func = f, .gridDimX = 1, .gridDimY = 1, .gridDimZ = 1,
                                  .blockDimX = 32, .blockDimY = 1, .blockDimZ = 1};
    if (made == CUDA_SUCCESS)
        made = cuGraphAddKernelNode(&node, g, NULL, 0, &kp);
    CUresult inst = made == CUDA_SUCCESS ? cuGraphInstantiate(&e, g, 0) : made;
    fill(&h, 64 * MiB);
    CUresult run = inst == CUDA_SUCCESS ? cuGraphLaunch(e, NULL) : inst;
    printf("path=graph_kernel load_rc=%d node_rc=%d instantiate_rc=%d allocs=%d rc=%d "
           "launch_rc=%d", load, made, inst, h.n, h.rc, run);
    finish();
    release_all(&h);
}

static void case_eager_module(void)
{
    CUmodule m;
    CUdeviceptr p = 0;
    CUresult load = cuModuleLoadData(&m, "fakecuda-module globals=1610612736 kernels=k");
    CUresult after = cuMemAlloc(&p, 256 * MiB);
    printf("path=eager_module load_rc=%d alloc_rc=%d", load, after);
    finish();
    if (after == CUDA_SUCCESS)
        cuMemFree(p);
}

/* An eager library loads into every context, device 1's too: its globals
 * there must be counted before device 1's next allocation. */
static void case_eager_library(void)
{
    CUdevice dev1;
    CUcontext ctx1;
    CUlibrary lib = NULL;
    CUdeviceptr on1 = 0, more = 0;
    if (cuDeviceGet(&dev1, 1) || cuDevicePrimaryCtxRetain(&ctx1, dev1) || cuCtxSetCurrent(ctx1) ||
        cuMemAlloc(&on1, 64 * MiB) || cuCtxSetCurrent(g_ctx)) {
        fprintf(stderr, "client_truth: no 64 MiB on device 1\n");
        exit(3);
    }
    CUresult load = cuLibraryLoadData(&lib, "fakecuda-module globals=629145600 kernels=k", NULL,
                                      NULL, 0, NULL, NULL, 0);
    CUresult dev1_rc = cuCtxSetCurrent(ctx1);
    if (dev1_rc == CUDA_SUCCESS)
        dev1_rc = cuMemAlloc(&more, 600 * MiB);
    cuCtxSetCurrent(g_ctx);
    printf("path=eager_library load_rc=%d dev1_rc=%d peak1=%lld", load, dev1_rc,
           driver_query_dev("fakecuda_peak_bytes", 1));
    finish();
}

/* ------------------------------------------------------ f. the race */

static pthread_barrier_t g_start;

typedef struct {
    held_t h;
    unsigned long long seed;
} worker_t;

/* Allocates 32 MiB until refused and returns holding it all. */
static void *race_worker(void *arg)
{
    worker_t *w = arg;
    cuCtxSetCurrent(g_ctx);
    pthread_barrier_wait(&g_start);
    fill(&w->h, 32 * MiB);
    return NULL;
}

static void run_threads(void *(*fn)(void *), worker_t *w)
{
    pthread_t t[THREADS];
    pthread_barrier_init(&g_start, NULL, THREADS);
    for (int i = 0; i < THREADS; i++) {
        w[i].seed = 0x9e3779b97f4a7c15ull * (unsigned long long)(i + 1);
        if (pthread_create(&t[i], NULL, fn, &w[i]) != 0)
            exit(3);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&g_start);
}

/* 16 threads race the very first allocation of the process. */
static void race(worker_t *w, int *allocs, int *refused)
{
    *allocs = *refused = 0;
    run_threads(race_worker, w);
    for (int i = 0; i < THREADS; i++) {
        *allocs += w[i].h.n;
        *refused += w[i].h.rc == CUDA_ERROR_OUT_OF_MEMORY;
    }
}

static void case_race(void)
{
    static worker_t w[THREADS];
    int allocs, refused;
    race(w, &allocs, &refused);
    printf("path=race allocs=%d refused=%d", allocs, refused);
    finish();
    for (int i = 0; i < THREADS; i++)
        release_all(&w[i].h);
}

/* ------------------------------------------------------ h. free ordering */

static unsigned long long next_rand(unsigned long long *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The largest request of the churn's two halves, in bytes. */
static size_t g_small = 64 * MiB, g_big = 64 * MiB;
/* The churn allocates from the default pool (cuMemAllocAsync) instead. */
static bool g_async;

static CUresult churn_alloc(CUdeviceptr *p, size_t size)
{
    return g_async ? cuMemAllocAsync(p, size, NULL) : cuMemAlloc(p, size);
}

static void churn_free(CUdeviceptr p)
{
    if (g_async)
        cuMemFreeAsync(p, NULL);
    else
        cuMemFree(p);
}

/* Set once any churn worker was refused. */
static _Atomic bool g_churn_refused;

/* Whether the churn goes on: for 2 s, and past them, up to 20 s in all,
 * until some thread was refused, so that a loaded machine, which runs the
 * threads little, still fills the budget the tests expect to see full. */
static bool churn_goes_on(double start)
{
    double t = now_s() - start;
    return t < 2.0 || (t < 20.0 && !atomic_load(&g_churn_refused));
}

/* Up to 8 live blocks of 1 KiB..g_small or 1 KiB..g_big (a coin decides),
 * allocated and freed at random. */
static void *churn_worker(void *arg)
{
    worker_t *w = arg;
    CUdeviceptr slot[8] = {0};
    cuCtxSetCurrent(g_ctx);
    pthread_barrier_wait(&g_start);
    for (double start = now_s(); churn_goes_on(start);) {
        int i = (int)(next_rand(&w->seed) % 8);
        size_t max = next_rand(&w->seed) & 1 ? g_small : g_big;
        size_t size = KiB + next_rand(&w->seed) % (max - KiB + 1);
        if (slot[i]) {
            churn_free(slot[i]);
            slot[i] = 0;
        } else if (churn_alloc(&slot[i], size) == CUDA_SUCCESS) {
            w->h.n++;
        } else {
            slot[i] = 0;
            w->h.rc = CUDA_ERROR_OUT_OF_MEMORY;
            atomic_store(&g_churn_refused, true);
        }
    }
    for (int i = 0; i < 8; i++)
        if (slot[i])
            churn_free(slot[i]);
    return NULL;
}

static void case_free_order(void)
{
    static worker_t w[THREADS];
    int allocs = 0, refused = 0;
    run_threads(churn_worker, w);
    for (int i = 0; i < THREADS; i++) {
        allocs += w[i].h.n;
        refused += w[i].h.rc != CUDA_SUCCESS;
    }
    printf("path=free_order allocs=%d refused_threads=%d", allocs, refused);
    finish();
}

/* The churn from the default pool, requests of up to 256 MiB, so the
 * budget (1 GiB) refuses often: the pool's charge follows its growth
 * while threads race to read and settle it. */
static void case_pool_churn(void)
{
    static worker_t w[THREADS];
    int allocs = 0, refused = 0;
    g_async = true;
    g_small = g_big = 256 * MiB;
    run_threads(churn_worker, w);
    for (int i = 0; i < THREADS; i++) {
        allocs += w[i].h.n;
        refused += w[i].h.rc != CUDA_SUCCESS;
    }
    cuStreamSynchronize(NULL);
    printf("path=pool_churn allocs=%d refused_threads=%d", allocs, refused);
    finish();
}

static void case_churn_credit(void)
{
    static worker_t w[THREADS];
    int allocs = 0, refused = 0;
    g_small = 32 * KiB;
    g_big = 2 * MiB;
    run_threads(churn_worker, w);
    for (int i = 0; i < THREADS; i++) {
        allocs += w[i].h.n;
        refused += w[i].h.rc != CUDA_SUCCESS;
    }
    printf("path=churn_credit allocs=%d refused_threads=%d", allocs, refused);
    finish();
}

/* ------------------------------------------------------ i. what is reported */

typedef struct { unsigned long long total, free, used; } nvml_mem_t;
typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvml_mem_v2_t;
typedef struct {
    unsigned int pid;
    unsigned long long used;
    unsigned int gi, ci;
} nvml_proc_t;
#define NVML_MEM_V2 ((unsigned int)(sizeof(nvml_mem_v2_t) | (2u << 24)))

/* NVML's three views of device 0, through dlopen + dlsym as pynvml does;
 * -1 each when NVML is missing or refuses. */
static void nvml_views(long long *v1_used, long long *v2_used, long long *proc_used)
{
    *v1_used = *v2_used = *proc_used = -1;
    void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    int (*init)(void) = h ? (int (*)(void))dlsym(h, "nvmlInit_v2") : NULL;
    int (*get)(unsigned, void **) = h ? (int (*)(unsigned, void **))dlsym(h, "nvmlDeviceGetHandleByIndex_v2") : NULL;
    int (*m1)(void *, nvml_mem_t *) = h ? (int (*)(void *, nvml_mem_t *))dlsym(h, "nvmlDeviceGetMemoryInfo") : NULL;
    int (*m2)(void *, nvml_mem_v2_t *) = h ? (int (*)(void *, nvml_mem_v2_t *))dlsym(h, "nvmlDeviceGetMemoryInfo_v2") : NULL;
    int (*procs)(void *, unsigned *, nvml_proc_t *) =
        h ? (int (*)(void *, unsigned *, nvml_proc_t *))dlsym(h, "nvmlDeviceGetComputeRunningProcesses_v3") : NULL;
    void *dev;
    if (!init || !get || !m1 || !m2 || !procs || init() != 0 || get(0, &dev) != 0)
        return;
    nvml_mem_t a;
    nvml_mem_v2_t b = {.version = NVML_MEM_V2};
    nvml_proc_t p[8];
    unsigned n = 8;
    if (m1(dev, &a) == 0)
        *v1_used = (long long)a.used;
    if (m2(dev, &b) == 0)
        *v2_used = (long long)b.used;
    if (procs(dev, &n, p) == 0)
        for (unsigned i = 0; i < n; i++)
            if (p[i].pid == (unsigned)getpid())
                *proc_used = (long long)p[i].used;
}

/* The race of case f fills the budget; then every view is read. */
static void case_views(void)
{
    static worker_t w[THREADS];
    size_t free_b = 0, total_b = 0;
    long long v1, v2, proc;
    int allocs, refused;
    race(w, &allocs, &refused);
    CUresult info = cuMemGetInfo(&free_b, &total_b);
    nvml_views(&v1, &v2, &proc);
    printf("path=views allocs=%d refused=%d info_rc=%d cuda_total=%zu cuda_used=%zu nvml_used=%lld "
           "nvml_v2_used=%lld proc_used=%lld",
           allocs, refused, info, total_b, total_b - free_b, v1, v2, proc);
    finish();
    for (int i = 0; i < THREADS; i++)
        release_all(&w[i].h);
}

/* ------------------------------------------------------ main */

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: client_truth CASE\n");
        return 2;
    }
    const char *c = argv[1];
    setup();
    if (!strcmp(c, "vmm"))
        case_vmm();
    else if (!strcmp(c, "vmm_remap"))
        case_vmm_remap();
    else if (!strcmp(c, "vmm_release_map"))
        case_vmm_release_map();
    else if (!strcmp(c, "heap_big"))
        case_limit(c, CU_LIMIT_MALLOC_HEAP_SIZE, 3 * GiB, LIMIT_ONLY);
    else if (!strcmp(c, "heap_fits"))
        case_limit(c, CU_LIMIT_MALLOC_HEAP_SIZE, 256 * MiB, LIMIT_THEN_FILL);
    else if (!strcmp(c, "heap_fits_late"))
        case_limit(c, CU_LIMIT_MALLOC_HEAP_SIZE, 256 * MiB, LIMIT_FILL_THEN_LAUNCH);
    else if (!strcmp(c, "stack_big"))
        case_limit(c, CU_LIMIT_STACK_SIZE, 16 * KiB, LIMIT_ONLY);
    else if (!strcmp(c, "lazy_module"))
        case_lazy_module();
    else if (!strcmp(c, "func_load"))
        case_func_load();
    else if (!strcmp(c, "graph_kernel"))
        case_graph_kernel();
    else if (!strcmp(c, "eager_module"))
        case_eager_module();
    else if (!strcmp(c, "race"))
        case_race();
    else if (!strcmp(c, "eager_library"))
        case_eager_library();
    else if (!strcmp(c, "churn_credit"))
        case_churn_credit();
    else if (!strcmp(c, "free_order"))
        case_free_order();
    else if (!strcmp(c, "pool_churn"))
        case_pool_churn();
    else if (!strcmp(c, "views"))
        case_views();
    else {
        fprintf(stderr, "client_truth: unknown case %s\n", c);
        return 2;
    }
    return 0;
}
