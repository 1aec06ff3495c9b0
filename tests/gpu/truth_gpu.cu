// truth_gpu - is the budget truthful, judged from OUTSIDE the process? (tests/gpu/run_truth.sh)
//
// One scenario per process, driver API only (no cudart: built with -cudart none), run by run_truth.sh twice:
// natively and under LD_PRELOAD=libvramguard-preload.so VRAMGUARD_BUDGET=2GiB. At the peak (after the
// refusal, or at the end of the fill) the program asks nvidia-smi, with LD_PRELOAD and every VRAMGUARD_*
// variable removed from that child's environment, what this pid holds, then frees everything.
//
// usage: truth_gpu SCENARIO [DIR] [MAX_ALLOCS]
//   SCENARIO  vmm heap stack module graphmodule race ctxdestroy arraydestroy ctxrelease pooldestroy graphlive
//             graphexec
//   DIR       folder holding truth_kernels.fatbin and big_module.fatbin (default: this program's own folder)
//   MAX_ALLOCS  cap of the 256 MiB fill loops (default 32 = 8 GiB), so a native run does not fill the card;
//             race: 64 MiB allocations per thread (default 8, 16 threads = 8 GiB)
//
// Built twice from this one file (tests/gpu/build.sh):
//   nvcc -arch=sm_90 -O2 -cudart none -o truth_gpu truth_gpu.cu -L$CUDA_HOME/lib64/stubs -lcuda -lpthread
//   nvcc -arch=sm_90 -fatbin -DTRUTH_KERNELS -o truth_kernels.fatbin truth_gpu.cu
//
// Output lines (key=value; run_truth.sh reads them):
//   call=NAME rc=N name=CUDA_ERROR_...      every call that did not return CUDA_SUCCESS (and a few for info)
//   info ...                                what was done, for the log
//   outside_implicit_mib=N                  (heap, stack, module) nvidia-smi right after the implicit step
//   outside_mib=N pid_match=0|1 smi_lines=N smi_rc=N   nvidia-smi's used_memory for this pid at the peak
//                                           (-1: not listed / unreadable; pid_match=0: our pid not listed but
//                                           others are - a PID namespace - so the sum of all listed)
//   held_mib=N                              what this program holds through explicit calls at the peak
//   refused_call=NAME rc=N NAME             the first call that failed in the fill (none rc=0 when none did)
//   oom_calls=N other_errors=N              calls that returned CUDA_ERROR_OUT_OF_MEMORY / anything else
//   alloc1_rc=N alloc2_rc=N [alloc3_rc=N]   (ctxdestroy, arraydestroy, ctxrelease, pooldestroy, graphlive, graphexec)
//                                           the allocation (arraydestroy: an array; graphlive, graphexec: the
//                                           graph's node) before cuCtxDestroy (the pool's or graph's destroy),
//                                           and the allocation after it
//   free_rc=N                               (graphlive) cuMemFree of the destroyed graph's node
//   exec_rc=N                               (graphexec) cuGraphExecDestroy of the executable that outlived its graph
//   truth_done scenario=NAME                the program reached its end
#include <cuda.h>

#ifdef TRUTH_KERNELS
// ---------------------------------------------------------------- the kernels module (truth_kernels.fatbin)
extern "C" __global__ void k_trivial(int *p)
{
    if (p && threadIdx.x == 0 && blockIdx.x == 0)
        *p = 1;
}
extern "C" __global__ void k_malloc(int *out)
{
    if (threadIdx.x == 0 && blockIdx.x == 0) {
        void *m = malloc(1 << 20);
        if (out)
            *out = (m != NULL);
        if (m)
            free(m);
    }
}
#else
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MIB (1ull << 20)

static const char *g_sc = "?";
static char g_dir[PATH_MAX];
static int g_max = -1;
static CUdevice g_dev;
static CUcontext g_pctx;

// ---------------------------------------------------------------- CUresult bookkeeping
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_oom, g_other;
static char g_refused[160] = "none";
static int g_refused_rc;

static const char *cu_name(CUresult r)
{
    const char *s = NULL;
    if (cuGetErrorName(r, &s) != CUDA_SUCCESS || !s)
        return "?";
    return s;
}

// note(r, what, fill): prints a failed call; in a fill (fill=1) the first failure is "the refused call".
// Returns r == CUDA_SUCCESS.
static bool note(CUresult r, const char *what, int fill)
{
    if (r == CUDA_SUCCESS)
        return true;
    pthread_mutex_lock(&g_mu);
    if (r == CUDA_ERROR_OUT_OF_MEMORY)
        g_oom++;
    else
        g_other++;
    if (fill && !g_refused_rc) {
        snprintf(g_refused, sizeof g_refused, "%s", what);
        g_refused_rc = (int)r;
    }
    printf("call=%s rc=%d name=%s\n", what, (int)r, cu_name(r));
    fflush(stdout);
    pthread_mutex_unlock(&g_mu);
    return false;
}
#define CK(call) note((call), #call, 0)

// ---------------------------------------------------------------- the outside reading
// nvidia-smi's used_memory (MiB) for our pid, with LD_PRELOAD and VRAMGUARD_* removed from its environment
// (both from ours around popen, so /bin/sh starts clean, and again with env -u in the command).
static long outside(const char *key)
{
    char *saved = getenv("LD_PRELOAD") ? strdup(getenv("LD_PRELOAD")) : NULL;
    unsetenv("LD_PRELOAD");
    FILE *f = popen("env -u LD_PRELOAD -u VRAMGUARD_BUDGET -u VRAMGUARD_POOL -u VRAMGUARD_SHARED "
                    "timeout 20 nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>&1",
                    "r");
    if (saved) {
        setenv("LD_PRELOAD", saved, 1);
        free(saved);
    }
    if (!f) {
        printf("%s=-1 pid_match=0 smi_lines=0 smi_rc=-1 err=popen\n", key);
        fflush(stdout);
        return -1;
    }
    char line[512];
    long mine = -1, sum = 0;
    int lines = 0, listed = 0;
    unsigned me = (unsigned)getpid();
    while (fgets(line, sizeof line, f)) {
        unsigned pid = 0;
        long used = -1;
        line[strcspn(line, "\n")] = 0;
        lines++;
        printf("smi_line=\"%s\"\n", line);
        if (sscanf(line, "%u , %ld", &pid, &used) == 2 && used >= 0) {
            listed++;
            sum += used;
            if (pid == me)
                mine = used;
        }
    }
    int rc = pclose(f);
    int match = mine >= 0;
    if (!match && listed > 0)
        mine = sum; // a PID namespace hides our pid; the lent machine runs nothing else on the GPU
    printf("%s=%ld pid_match=%d smi_lines=%d smi_rc=%d pid=%u\n", key, mine, match, lines, rc, me);
    fflush(stdout);
    return mine;
}

static void report(unsigned long long held)
{
    printf("held_mib=%llu\n", held / MIB);
    printf("refused_call=%s rc=%d %s\n", g_refused, g_refused_rc,
           g_refused_rc ? cu_name((CUresult)g_refused_rc) : "CUDA_SUCCESS");
    fflush(stdout);
}

// ---------------------------------------------------------------- common set-up
static bool init_driver(void)
{
    if (!CK(cuInit(0)) || !CK(cuDeviceGet(&g_dev, 0)))
        return false;
    char nm[128] = "?";
    int drv = 0;
    cuDeviceGetName(nm, sizeof nm, g_dev);
    cuDriverGetVersion(&drv);
    printf("info scenario=%s device=\"%s\" driver_api=%d LD_PRELOAD=%s VRAMGUARD_BUDGET=%s VRAMGUARD_POOL=%s\n",
           g_sc, nm, drv, getenv("LD_PRELOAD") ? getenv("LD_PRELOAD") : "(unset)",
           getenv("VRAMGUARD_BUDGET") ? getenv("VRAMGUARD_BUDGET") : "(unset)",
           getenv("VRAMGUARD_POOL") ? getenv("VRAMGUARD_POOL") : "(unset)");
    fflush(stdout);
    return true;
}

static bool primary_ctx(void)
{
    return CK(cuDevicePrimaryCtxRetain(&g_pctx, g_dev)) && CK(cuCtxSetCurrent(g_pctx));
}

static void release_primary(void)
{
    if (g_pctx)
        CK(cuDevicePrimaryCtxRelease(g_dev));
    g_pctx = NULL;
}

static CUmodule g_kmod;
static CUfunction g_ktrivial, g_kmalloc;

static bool load_kernels(void)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/truth_kernels.fatbin", g_dir);
    if (!CK(cuModuleLoad(&g_kmod, path))) {
        printf("info kernels_module=%s not loaded\n", path);
        return false;
    }
    return CK(cuModuleGetFunction(&g_ktrivial, g_kmod, "k_trivial")) &&
           CK(cuModuleGetFunction(&g_kmalloc, g_kmod, "k_malloc"));
}

// launch(f, nargs, arg, name, fill): one block of 32 threads with nargs (0 or 1) pointer arguments, then a
// synchronize.
static bool launch(CUfunction f, int nargs, CUdeviceptr arg, const char *name, int fill)
{
    if (!f)
        return false;
    void *params[] = {&arg, NULL};
    char what[96];
    snprintf(what, sizeof what, "cuLaunchKernel(%s)", name);
    if (!note(cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, NULL, nargs ? params : NULL, NULL), what, fill))
        return false;
    snprintf(what, sizeof what, "cuCtxSynchronize(after %s)", name);
    return note(cuCtxSynchronize(), what, fill);
}

// fill256: cuMemAlloc 256 MiB until refused (or g_max times); the peak reading; frees.
static void fill256(unsigned long long held_before)
{
    int max = g_max >= 0 ? g_max : 32;
    CUdeviceptr *p = (CUdeviceptr *)calloc((size_t)max + 1, sizeof *p);
    int n = 0;
    for (int i = 0; i < max; i++) {
        char what[64];
        snprintf(what, sizeof what, "cuMemAlloc(256MiB)#%d", i + 1);
        if (!note(cuMemAlloc(&p[n], 256 * MIB), what, 1))
            break;
        n++;
    }
    printf("info fill_allocs_ok=%d of_max=%d\n", n, max);
    outside("outside_mib");
    report(held_before + (unsigned long long)n * 256 * MIB);
    for (int i = 0; i < n; i++)
        CK(cuMemFree(p[i]));
    free(p);
}

// ---------------------------------------------------------------- scenarios
static void sc_vmm(void)
{
    if (!init_driver() || !primary_ctx())
        return;
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = (int)g_dev;
    size_t gran = 0;
    if (!CK(cuMemGetAllocationGranularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM)) || !gran)
        gran = 2 * MIB;
    size_t sz = ((512 * MIB + gran - 1) / gran) * gran;
    printf("info granularity=%zu size=%zu\n", gran, sz);
    int max = g_max >= 0 ? g_max : 16;
    CUdeviceptr va[64];
    int n = 0;
    if (max > 64)
        max = 64;
    for (int i = 0; i < max; i++) {
        char what[96];
        CUmemGenericAllocationHandle h = 0;
        CUdeviceptr a = 0;
        snprintf(what, sizeof what, "cuMemCreate(512MiB)#%d", i + 1);
        if (!note(cuMemCreate(&h, sz, &prop, 0), what, 1))
            break;
        snprintf(what, sizeof what, "cuMemAddressReserve(512MiB)#%d", i + 1);
        if (!note(cuMemAddressReserve(&a, sz, 0, 0, 0), what, 1)) {
            CK(cuMemRelease(h));
            break;
        }
        snprintf(what, sizeof what, "cuMemMap(512MiB)#%d", i + 1);
        if (!note(cuMemMap(a, sz, 0, h, 0), what, 1)) {
            CK(cuMemRelease(h));
            CK(cuMemAddressFree(a, sz));
            break;
        }
        CUmemAccessDesc acc;
        memset(&acc, 0, sizeof acc);
        acc.location = prop.location;
        acc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
        snprintf(what, sizeof what, "cuMemSetAccess(512MiB)#%d", i + 1);
        bool ok = note(cuMemSetAccess(a, sz, &acc, 1), what, 1);
        snprintf(what, sizeof what, "cuMemRelease#%d", i + 1);
        note(cuMemRelease(h), what, 1); // the mapping keeps the memory alive
        va[n++] = a;
        if (!ok)
            break;
    }
    printf("info vmm_mapped=%d of_max=%d\n", n, max);
    outside("outside_mib");
    report((unsigned long long)n * sz);
    for (int i = 0; i < n; i++) {
        CK(cuMemUnmap(va[i], sz));
        CK(cuMemAddressFree(va[i], sz));
    }
    release_primary();
}

static void sc_heap(void)
{
    if (!init_driver() || !primary_ctx())
        return;
    load_kernels();
    CUresult r = cuCtxSetLimit(CU_LIMIT_MALLOC_HEAP_SIZE, 3ull << 30);
    printf("setlimit_rc=%d name=%s call=cuCtxSetLimit(MALLOC_HEAP_SIZE,3GiB)\n", (int)r, cu_name(r));
    note(r, "cuCtxSetLimit(MALLOC_HEAP_SIZE,3GiB)", 1);
    size_t v = 0;
    CK(cuCtxGetLimit(&v, CU_LIMIT_MALLOC_HEAP_SIZE));
    printf("info heap_limit_now=%zu\n", v);
    CUdeviceptr out = 0;
    int h_out = -1;
    if (CK(cuMemAlloc(&out, 4096))) {
        CK(cuMemsetD8(out, 0, 4096));
        if (launch(g_kmalloc, 1, out, "k_malloc", 1))
            CK(cuMemcpyDtoH(&h_out, out, sizeof h_out));
    }
    printf("info device_malloc_ok=%d\n", h_out);
    outside("outside_implicit_mib");
    fill256(out ? 4096 : 0);
    if (out)
        CK(cuMemFree(out));
    if (g_kmod)
        CK(cuModuleUnload(g_kmod));
    release_primary();
}

static void sc_stack(void)
{
    if (!init_driver() || !primary_ctx())
        return;
    load_kernels();
    CUresult r = cuCtxSetLimit(CU_LIMIT_STACK_SIZE, 16384);
    printf("setlimit_rc=%d name=%s call=cuCtxSetLimit(STACK_SIZE,16KiB)\n", (int)r, cu_name(r));
    note(r, "cuCtxSetLimit(STACK_SIZE,16KiB)", 1);
    size_t v = 0;
    CK(cuCtxGetLimit(&v, CU_LIMIT_STACK_SIZE));
    printf("info stack_limit_now=%zu\n", v);
    launch(g_ktrivial, 1, 0, "k_trivial", 1);
    outside("outside_implicit_mib");
    fill256(0);
    if (g_kmod)
        CK(cuModuleUnload(g_kmod));
    release_primary();
}

static void sc_module(void)
{
    if (!init_driver() || !primary_ctx())
        return;
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/big_module.fatbin", g_dir);
    if (access(path, R_OK) != 0) {
        printf("call=access(%s) rc=-1 name=missing_file\n", path);
        g_other++;
    }
    CUmodule mod = NULL;
    CUresult r = cuModuleLoad(&mod, path);
    printf("moduleload_rc=%d name=%s call=cuModuleLoad(big_module.fatbin,1.5GiB)\n", (int)r, cu_name(r));
    if (note(r, "cuModuleLoad(big_module.fatbin,1.5GiB)", 1)) {
        CUfunction f = NULL;
        if (CK(cuModuleGetFunction(&f, mod, "touch_big")))
            launch(f, 0, 0, "touch_big", 1);
    }
    outside("outside_implicit_mib");
    fill256(mod ? 1536 * MIB : 0);
    if (mod)
        CK(cuModuleUnload(mod));
    release_primary();
}

// graphmodule: module as above, but its kernel runs as the one kernel node of a graph (instantiated, launched
// once): whatever loads at the instantiation or the graph's first launch counts before the fill.
static void sc_graphmodule(void)
{
    if (!init_driver() || !primary_ctx())
        return;
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/big_module.fatbin", g_dir);
    CUmodule mod = NULL;
    CUfunction f = NULL;
    CUgraph g = NULL;
    CUgraphExec e = NULL;
    CUgraphNode node = NULL;
    CUresult r = cuModuleLoad(&mod, path);
    printf("moduleload_rc=%d name=%s call=cuModuleLoad(big_module.fatbin,1.5GiB)\n", (int)r, cu_name(r));
    if (note(r, "cuModuleLoad(big_module.fatbin,1.5GiB)", 1) && CK(cuModuleGetFunction(&f, mod, "touch_big")) &&
        CK(cuGraphCreate(&g, 0))) {
        CUDA_KERNEL_NODE_PARAMS kp;
        memset(&kp, 0, sizeof kp);
        kp.func = f;
        kp.gridDimX = kp.gridDimY = kp.gridDimZ = 1;
        kp.blockDimX = 32;
        kp.blockDimY = kp.blockDimZ = 1;
        if (note(cuGraphAddKernelNode(&node, g, NULL, 0, &kp), "cuGraphAddKernelNode(touch_big)", 1) &&
            note(cuGraphInstantiate(&e, g, 0), "cuGraphInstantiate", 1) &&
            note(cuGraphLaunch(e, NULL), "cuGraphLaunch", 1))
            note(cuCtxSynchronize(), "cuCtxSynchronize(after the graph)", 1);
    }
    outside("outside_implicit_mib");
    fill256(mod ? 1536 * MIB : 0);
    if (e)
        CK(cuGraphExecDestroy(e));
    if (g)
        CK(cuGraphDestroy(g));
    if (mod)
        CK(cuModuleUnload(mod));
    release_primary();
}

// race: 16 threads wait at a barrier before the process's first context and first allocation.
#define RACE_THREADS 16
static pthread_barrier_t g_bar;
struct race_arg {
    int id, n;
    CUdeviceptr p[64];
};
static void *race_thread(void *v)
{
    race_arg *a = (race_arg *)v;
    int max = g_max >= 0 ? g_max : 8;
    if (max > 64)
        max = 64;
    pthread_barrier_wait(&g_bar);
    CUcontext c = NULL;
    if (!CK(cuDevicePrimaryCtxRetain(&c, g_dev)) || !CK(cuCtxSetCurrent(c)))
        return NULL;
    for (int i = 0; i < max; i++) {
        char what[64];
        snprintf(what, sizeof what, "cuMemAlloc(64MiB)@t%d#%d", a->id, i + 1);
        if (!note(cuMemAlloc(&a->p[a->n], 64 * MIB), what, 1))
            break;
        a->n++;
    }
    return NULL;
}
static void sc_race(void)
{
    if (!init_driver())
        return;
    static race_arg args[RACE_THREADS];
    pthread_t th[RACE_THREADS];
    pthread_barrier_init(&g_bar, NULL, RACE_THREADS);
    for (int i = 0; i < RACE_THREADS; i++) {
        args[i].id = i;
        if (pthread_create(&th[i], NULL, race_thread, &args[i]) != 0) {
            printf("call=pthread_create rc=-1 name=failed (the barrier would never open)\n");
            fflush(stdout);
            _exit(3);
        }
    }
    int total = 0;
    for (int i = 0; i < RACE_THREADS; i++) {
        pthread_join(th[i], NULL);
        total += args[i].n;
    }
    printf("info race_allocs_ok=%d held_by_threads_mib=%d\n", total, total * 64);
    outside("outside_mib");
    report((unsigned long long)total * 64 * MIB);
    // every thread retained the primary context once; main retains it once more to free
    if (primary_ctx()) {
        for (int i = 0; i < RACE_THREADS; i++)
            for (int j = 0; j < args[i].n; j++)
                CK(cuMemFree(args[i].p[j]));
        for (int i = 0; i < RACE_THREADS; i++)
            cuDevicePrimaryCtxRelease(g_dev);
        release_primary();
    }
}

// 1.25 GiB made in a created context (an allocation, or with `array` an array of 16384 x 5120 texels of
// 4 floats), the context destroyed without freeing it, then 1.25 GiB in the primary context.
// pooldestroy: 1.25 GiB from a created stream-ordered pool, cuMemPoolDestroy while it is still out (the
// driver keeps the pool until it is freed), then 1.25 GiB plain: natively both are held at once (the
// outside reading shows it), under a 2 GiB budget the second must be refused. Then the pool's
// allocation is freed and 1.25 GiB plain must fit again (alloc3).
static void sc_pooldestroy(void)
{
    if (!init_driver() || !primary_ctx())
        return;
    CUmemPoolProps props = {};
    props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
    props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    props.location.id = (int)g_dev;
    CUmemoryPool pool = NULL;
    CUdeviceptr a = 0, b = 0, c = 0;
    CUresult r1 = CUDA_ERROR_INVALID_VALUE, r2 = CUDA_ERROR_INVALID_VALUE, r3 = CUDA_ERROR_INVALID_VALUE;
    if (CK(cuMemPoolCreate(&pool, &props))) {
        r1 = cuMemAllocFromPoolAsync(&a, 1280 * MIB, pool, NULL);
        note(r1, "cuMemAllocFromPoolAsync(1.25GiB)", 1);
        CK(cuStreamSynchronize(NULL));
        CK(cuMemPoolDestroy(pool));
    }
    r2 = cuMemAlloc(&b, 1280 * MIB);
    note(r2, "cuMemAlloc(1.25GiB)_after_pool_destroy", 1);
    outside("outside_mib");
    report((r1 == CUDA_SUCCESS ? 1280 * MIB : 0) + (r2 == CUDA_SUCCESS ? 1280 * MIB : 0));
    if (b)
        CK(cuMemFree(b));
    if (a) {
        CK(cuMemFreeAsync(a, NULL));
        CK(cuStreamSynchronize(NULL));
    }
    r3 = cuMemAlloc(&c, 1280 * MIB);
    printf("alloc1_rc=%d alloc2_rc=%d alloc3_rc=%d\n", (int)r1, (int)r2, (int)r3);
    if (c)
        CK(cuMemFree(c));
    release_primary();
}

// A graph allocation node's parameters: `bytes` on this device.
static CUDA_MEM_ALLOC_NODE_PARAMS node_params(size_t bytes)
{
    CUDA_MEM_ALLOC_NODE_PARAMS p = {};
    p.poolProps.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
    p.poolProps.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    p.poolProps.location.id = (int)g_dev;
    p.bytesize = bytes;
    return p;
}

// graphlive: a graph with one 1.25 GiB allocation node and no free node, instantiated, launched once and
// synchronised, its executable and the graph destroyed: the driver keeps the memory the launch left live
// until cuMemFree (graph_probe). Then 1.25 GiB plain (natively both held; under the shim refused), the
// outside reading, cuMemFree of the node's address, and 1.25 GiB plain again (which must fit: the free gave
// the charge back). alloc1_rc: the node up to the launch's synchronisation; free_rc: the node's cuMemFree.
static void sc_graphlive(void)
{
    if (!init_driver() || !primary_ctx())
        return;
    CUDA_MEM_ALLOC_NODE_PARAMS p = node_params(1280 * MIB);
    CUgraph g = NULL;
    CUgraphExec e = NULL;
    CUgraphNode node = NULL;
    CUdeviceptr b = 0, c = 0;
    CUresult r1 = cuGraphCreate(&g, 0);
    if (r1 == CUDA_SUCCESS)
        r1 = cuGraphAddMemAllocNode(&node, g, NULL, 0, &p);
    if (r1 == CUDA_SUCCESS)
        r1 = cuGraphInstantiateWithFlags(&e, g, 0);
    if (r1 == CUDA_SUCCESS)
        r1 = cuGraphLaunch(e, NULL);
    if (r1 == CUDA_SUCCESS)
        r1 = cuCtxSynchronize();
    note(r1, "graph_with_a_1.25GiB_node_launched", 1);
    if (e)
        CK(cuGraphExecDestroy(e));
    if (g)
        CK(cuGraphDestroy(g));
    CUresult r2 = cuMemAlloc(&b, 1280 * MIB);
    note(r2, "cuMemAlloc(1.25GiB)_after_graph_destroy", 1);
    outside("outside_mib");
    report((r1 == CUDA_SUCCESS ? 1280 * MIB : 0) + (r2 == CUDA_SUCCESS ? 1280 * MIB : 0));
    if (b)
        CK(cuMemFree(b));
    CUresult rf = r1 == CUDA_SUCCESS ? cuMemFree(p.dptr) : r1;
    note(rf, "cuMemFree(the_node's_address)", 0);
    CUresult r3 = cuMemAlloc(&c, 1280 * MIB);
    note(r3, "cuMemAlloc(1.25GiB)_after_the_node's_free", 0);
    printf("alloc1_rc=%d alloc2_rc=%d free_rc=%d alloc3_rc=%d\n", (int)r1, (int)r2, (int)rf, (int)r3);
    if (c)
        CK(cuMemFree(c));
    release_primary();
}

// graphexec: a graph with one 1.25 GiB allocation node and its free node, instantiated, the graph destroyed
// while its executable lives, the executable launched and synchronised: the executable's pool keeps the
// memory. Then 1.25 GiB plain (natively both held; under the shim refused), the outside reading, the
// executable destroyed and the device's graph memory trimmed, and 1.25 GiB plain again (which must fit: the
// executable's destroy gave the node's charge back). alloc1_rc: the node up to the launch's
// synchronisation; exec_rc: cuGraphExecDestroy.
static void sc_graphexec(void)
{
    if (!init_driver() || !primary_ctx())
        return;
    CUDA_MEM_ALLOC_NODE_PARAMS p = node_params(1280 * MIB);
    CUgraph g = NULL;
    CUgraphExec e = NULL;
    CUgraphNode node = NULL, free_node = NULL;
    CUdeviceptr b = 0, c = 0;
    CUresult r1 = cuGraphCreate(&g, 0);
    if (r1 == CUDA_SUCCESS)
        r1 = cuGraphAddMemAllocNode(&node, g, NULL, 0, &p);
    if (r1 == CUDA_SUCCESS)
        r1 = cuGraphAddMemFreeNode(&free_node, g, &node, 1, p.dptr);
    if (r1 == CUDA_SUCCESS)
        r1 = cuGraphInstantiateWithFlags(&e, g, 0);
    if (g)
        CK(cuGraphDestroy(g));
    if (r1 == CUDA_SUCCESS)
        r1 = cuGraphLaunch(e, NULL);
    if (r1 == CUDA_SUCCESS)
        r1 = cuCtxSynchronize();
    note(r1, "graph_with_a_1.25GiB_node_destroyed_then_its_executable_launched", 1);
    CUresult r2 = cuMemAlloc(&b, 1280 * MIB);
    note(r2, "cuMemAlloc(1.25GiB)_while_the_executable_lives", 1);
    outside("outside_mib");
    report((r1 == CUDA_SUCCESS ? 1280 * MIB : 0) + (r2 == CUDA_SUCCESS ? 1280 * MIB : 0));
    if (b)
        CK(cuMemFree(b));
    CUresult re = e ? cuGraphExecDestroy(e) : r1;
    note(re, "cuGraphExecDestroy", 0);
    CK(cuDeviceGraphMemTrim(g_dev)); // the graph pool keeps freed memory until trimmed (docs/shim.md)
    CUresult r3 = cuMemAlloc(&c, 1280 * MIB);
    note(r3, "cuMemAlloc(1.25GiB)_after_the_executable's_destroy", 0);
    printf("alloc1_rc=%d alloc2_rc=%d exec_rc=%d alloc3_rc=%d\n", (int)r1, (int)r2, (int)re, (int)r3);
    if (c)
        CK(cuMemFree(c));
    release_primary();
}

// After a context went with 1.25 GiB in it (first: that allocation's code): 1.25 GiB in the primary
// context, the two codes, the outside reading at that peak, then everything given back.
static void after_gone(CUresult first, const char *what)
{
    CUresult r2 = CUDA_ERROR_INVALID_CONTEXT;
    CUdeviceptr q = 0;
    if (primary_ctx()) {
        r2 = cuMemAlloc(&q, 1280 * MIB);
        note(r2, what, 1);
    }
    printf("alloc1_rc=%d alloc2_rc=%d\n", (int)first, (int)r2);
    outside("outside_mib");
    report(r2 == CUDA_SUCCESS ? 1280 * MIB : 0);
    if (q)
        CK(cuMemFree(q));
    release_primary();
}

// ctxrelease: 1.25 GiB in the primary context, then its last cuDevicePrimaryCtxRelease (which resets
// it, as numba's cuda.close() does), then the primary retained again and 1.25 GiB more.
static void sc_ctxrelease(void)
{
    if (!init_driver())
        return;
    CUresult r1 = CUDA_ERROR_INVALID_CONTEXT;
    CUdeviceptr p = 0;
    if (primary_ctx()) {
        r1 = cuMemAlloc(&p, 1280 * MIB);
        note(r1, "cuMemAlloc(1.25GiB)_in_primary", 1);
        CK(cuCtxSetCurrent(NULL));
        release_primary(); // the last reference: deliberately not freed, the reset frees it
    }
    after_gone(r1, "cuMemAlloc(1.25GiB)_in_primary_after_release");
}

static void sc_ctxdestroy(bool array)
{
    if (!init_driver())
        return;
    CUcontext c = NULL;
    CUresult r1 = CUDA_ERROR_INVALID_CONTEXT;
    // CUDA 13's cuda.h maps cuCtxCreate to cuCtxCreate_v4 (CUctxCreateParams *, NULL here)
    if (CK(cuCtxCreate(&c, NULL, 0, g_dev))) {
        if (array) {
            CUDA_ARRAY_DESCRIPTOR d = {};
            d.Width = 16384;
            d.Height = 5120;
            d.Format = CU_AD_FORMAT_FLOAT;
            d.NumChannels = 4;
            CUarray a = NULL;
            r1 = cuArrayCreate(&a, &d);
            note(r1, "cuArrayCreate(1.25GiB)_in_created_ctx", 1);
        } else {
            CUdeviceptr p = 0;
            r1 = cuMemAlloc(&p, 1280 * MIB);
            note(r1, "cuMemAlloc(1.25GiB)_in_created_ctx", 1);
        }
        CK(cuCtxDestroy(c)); // deliberately not freed: the destroy frees it
    }
    after_gone(r1, "cuMemAlloc(1.25GiB)_in_primary_after_destroy");
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: %s vmm|heap|stack|module|graphmodule|race|ctxdestroy|arraydestroy|ctxrelease|pooldestroy|graphlive|graphexec [DIR] [MAX_ALLOCS]\n",
                argv[0]);
        return 2;
    }
    g_sc = argv[1];
    if (argc > 2 && argv[2][0]) {
        snprintf(g_dir, sizeof g_dir, "%s", argv[2]);
    } else {
        ssize_t n = readlink("/proc/self/exe", g_dir, sizeof g_dir - 1);
        g_dir[n > 0 ? n : 0] = 0;
        char *slash = strrchr(g_dir, '/');
        if (slash)
            *slash = 0;
        else
            snprintf(g_dir, sizeof g_dir, ".");
    }
    if (argc > 3)
        g_max = atoi(argv[3]);
    if (!strcmp(g_sc, "vmm"))
        sc_vmm();
    else if (!strcmp(g_sc, "heap"))
        sc_heap();
    else if (!strcmp(g_sc, "stack"))
        sc_stack();
    else if (!strcmp(g_sc, "module"))
        sc_module();
    else if (!strcmp(g_sc, "graphmodule"))
        sc_graphmodule();
    else if (!strcmp(g_sc, "race"))
        sc_race();
    else if (!strcmp(g_sc, "ctxdestroy"))
        sc_ctxdestroy(false);
    else if (!strcmp(g_sc, "arraydestroy"))
        sc_ctxdestroy(true);
    else if (!strcmp(g_sc, "ctxrelease"))
        sc_ctxrelease();
    else if (!strcmp(g_sc, "pooldestroy"))
        sc_pooldestroy();
    else if (!strcmp(g_sc, "graphlive"))
        sc_graphlive();
    else if (!strcmp(g_sc, "graphexec"))
        sc_graphexec();
    else {
        fprintf(stderr, "truth_gpu: unknown scenario '%s'\n", g_sc);
        return 2;
    }
    printf("oom_calls=%d other_errors=%d\n", g_oom, g_other);
    printf("truth_done scenario=%s\n", g_sc);
    return 0;
}
#endif
