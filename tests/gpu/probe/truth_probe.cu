// truth_probe - GPU probe only (tests/gpu/probe). Measures memory the driver takes without an allocation call,
// as three readers see it: NVML per-process used memory (design A), cuMemGetInfo (device-wide), and the
// preloaded ioctl meter's live RM video bytes (design B; -1 when ioctl_meter.so is not preloaded).
//
// usage: truth_probe SCENARIO [MODULE_FILE]
//   SCENARIO: ctx vmm heap stack module ctxdestroy race nvmlcost
//   MODULE_FILE (module scenario): big_module.fatbin (a 1.5 GiB __device__ array, sm_90)
//
// Output lines (all key=value, machine readable):
//   step=NAME nvml_mib= meminfo_used_mib= rm_live_mib= t_us= nvml_0ms_mib= nvml_20ms_mib= nvml_200ms_mib=
//        d_nvml_mib= d_first_mib= d_meminfo_mib= d_rm_mib= nvml_first_ok= note=
//   res=NAME rc=CODE (name)            one driver call's result (only printed when not CUDA_SUCCESS, or for info)
//   info KEY=VALUE ...                 attributes, predictions
//   summary scenario= max_step= d_nvml_mib= first_read_showed= d_first_mib= d_meminfo_mib= d_rm_mib= rm_saw=
//           meter= drop_step= drop_nvml_mib= drop_rm_mib= errors=
//                                      the largest settled NVML rise (and fall) between two steps, and whether
//                                      NVML's first read and the ioctl meter agreed with it
//   METER_BLIND ...                    meter preloaded but no NVIDIA ioctl reached libc: design B impossible
//   nvmlcost call= n= p10_us= median_us= p90_us= max_us=
//   outside_mib=                       nvidia-smi's figure for our pid at the end (LD_PRELOAD unset)
//
// Kernel launches for heap/stack use the CUDA runtime (<<<>>>, static cudart) on the primary context the
// driver API made current; cudart loads this program's own fatbin lazily at the first launch, so a "warm"
// trivial launch is done first to separate that from the effect being measured.
#include <cuda.h>
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <algorithm>
#include <vector>

#include "probe_meter.h"

#define MiB (1024.0 * 1024.0)

static double g_t0;
static const char *g_scenario = "?";
static int g_errors;

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

// ---------------------------------------------------------------- CUresult reporting
static const char *cu_name(CUresult r)
{
    const char *s = NULL;
    if (cuGetErrorName(r, &s) != CUDA_SUCCESS || !s)
        return "?";
    return s;
}

#define CK(call) ck((call), #call, __LINE__)
static bool ck(CUresult r, const char *what, int line)
{
    if (r == CUDA_SUCCESS)
        return true;
    g_errors++;
    printf("res=FAIL scenario=%s line=%d rc=%d name=%s call=\"%s\"\n", g_scenario, line, (int)r, cu_name(r), what);
    fflush(stdout);
    return false;
}

#define CKRT(call) ckrt((call), #call, __LINE__)
static bool ckrt(cudaError_t r, const char *what, int line)
{
    if (r == cudaSuccess)
        return true;
    g_errors++;
    printf("res=FAIL scenario=%s line=%d rt=%d name=%s call=\"%s\"\n", g_scenario, line, (int)r,
           cudaGetErrorName(r), what);
    fflush(stdout);
    return false;
}

// ---------------------------------------------------------------- NVML via dlopen, own declarations
typedef int nvmlReturn_t;
typedef struct nvmlDevice_st *nvmlDevice_t;
struct nvml_proc {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
};
static nvmlReturn_t (*p_nvmlInit_v2)(void);
static nvmlReturn_t (*p_nvmlDeviceGetHandleByIndex_v2)(unsigned int, nvmlDevice_t *);
static nvmlReturn_t (*p_nvmlDeviceGetHandleByPciBusId_v2)(const char *, nvmlDevice_t *);
static nvmlReturn_t (*p_nvmlDeviceGetComputeRunningProcesses_v3)(nvmlDevice_t, unsigned int *, struct nvml_proc *);
static nvmlDevice_t g_nvdev;
static bool g_nvml_ok;
static unsigned g_nvml_nprocs;
static struct nvml_proc g_procbuf[512]; // room for 2x the count we pass, in case the real struct is larger

static void nvml_setup(void)
{
    void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        printf("info nvml=absent err=\"%s\"\n", dlerror());
        return;
    }
    *(void **)&p_nvmlInit_v2 = dlsym(h, "nvmlInit_v2");
    *(void **)&p_nvmlDeviceGetHandleByIndex_v2 = dlsym(h, "nvmlDeviceGetHandleByIndex_v2");
    *(void **)&p_nvmlDeviceGetHandleByPciBusId_v2 = dlsym(h, "nvmlDeviceGetHandleByPciBusId_v2");
    *(void **)&p_nvmlDeviceGetComputeRunningProcesses_v3 = dlsym(h, "nvmlDeviceGetComputeRunningProcesses_v3");
    if (!p_nvmlInit_v2 || !p_nvmlDeviceGetHandleByIndex_v2 || !p_nvmlDeviceGetComputeRunningProcesses_v3) {
        printf("info nvml=missing_symbols\n");
        return;
    }
    int r = p_nvmlInit_v2();
    if (r != 0) {
        printf("info nvml=init_failed rc=%d\n", r);
        return;
    }
    r = p_nvmlDeviceGetHandleByIndex_v2(0, &g_nvdev);
    if (r != 0) {
        printf("info nvml=no_device0 rc=%d\n", r);
        return;
    }
    g_nvml_ok = true;
}

// Once the CUDA device is known, switch to the NVML handle with the same PCI bus id (CUDA_VISIBLE_DEVICES safe).
static void nvml_match_cuda_device(CUdevice dev)
{
    char bus[64];
    if (!g_nvml_ok || !p_nvmlDeviceGetHandleByPciBusId_v2)
        return;
    if (cuDeviceGetPCIBusId(bus, sizeof bus, dev) != CUDA_SUCCESS)
        return;
    nvmlDevice_t d;
    int r = p_nvmlDeviceGetHandleByPciBusId_v2(bus, &d);
    if (r == 0)
        g_nvdev = d;
    printf("info cuda_pci_bus=%s nvml_by_bus_rc=%d\n", bus, r);
}

// NVML per-process used memory of our pid in MiB; 0 when no process is listed; -2 NVML unusable, -3 value not
// available; the sum of all listed processes when some are listed but not our pid (PID namespace).
static double nvml_self_mib(void)
{
    if (!g_nvml_ok)
        return -2;
    unsigned int n = 256;
    int r = p_nvmlDeviceGetComputeRunningProcesses_v3(g_nvdev, &n, g_procbuf);
    if (r != 0) {
        static int warned;
        if (!warned++)
            printf("info nvml_procs_rc=%d\n", r);
        return -2;
    }
    g_nvml_nprocs = n;
    unsigned me = (unsigned)getpid();
    double sum = 0;
    for (unsigned i = 0; i < n && i < 256; i++) {
        if (g_procbuf[i].pid == me) {
            if (g_procbuf[i].usedGpuMemory == ~0ull)
                return -3;
            return g_procbuf[i].usedGpuMemory / MiB;
        }
        if (g_procbuf[i].usedGpuMemory != ~0ull)
            sum += g_procbuf[i].usedGpuMemory / MiB;
    }
    if (n == 0)
        return 0; // nobody listed: we hold nothing (yet)
    // Processes listed but not our pid: a PID namespace (container) hides our host pid. The lent machine runs
    // nothing else on the GPU, so fall back to the sum of all listed processes and say so once.
    static int warned;
    if (!warned++) {
        printf("info nvml_pid_mismatch=1 our_pid=%u listed=%u first_listed_pid=%u (using the sum of listed "
               "processes)\n", me, n, g_procbuf[0].pid);
    }
    return sum;
}

// ---------------------------------------------------------------- meter + cuMemGetInfo
static probe_meter_read_fn g_meter;
static double rm_live_mib(void)
{
    struct probe_meter m;
    if (!g_meter || g_meter(&m) != 0)
        return -1;
    return m.vid_live_bytes / MiB;
}
static unsigned long long meter_nv_ioctls(void)
{
    struct probe_meter m;
    if (!g_meter || g_meter(&m) != 0)
        return 0;
    return m.ioctl_nv;
}

static double meminfo_used_mib(void)
{
    CUcontext c = NULL;
    if (cuCtxGetCurrent(&c) != CUDA_SUCCESS || !c)
        return -1;
    size_t fr = 0, tot = 0;
    if (cuMemGetInfo(&fr, &tot) != CUDA_SUCCESS)
        return -1;
    return (double)(tot - fr) / MiB;
}

// ---------------------------------------------------------------- steps
struct stepval {
    char name[64];
    double nvml, first, meminfo, rm, settled;
};
static std::vector<stepval> g_steps;

static double dlt(double a, double b) { return (a < 0 || b < 0) ? 0 : a - b; }

static void step(const char *name, const char *note = "")
{
    double t = now_us() - g_t0;
    double nv = nvml_self_mib();
    double mi = meminfo_used_mib();
    double rm = rm_live_mib();
    sched_yield(); // "sleep 0"
    double n0 = nvml_self_mib();
    sleep_ms(20);
    double n20 = nvml_self_mib();
    sleep_ms(180);
    double n200 = nvml_self_mib();
    stepval s;
    snprintf(s.name, sizeof s.name, "%s", name);
    s.nvml = nv;
    s.first = nv;
    s.meminfo = mi;
    s.rm = rm;
    s.settled = n200;
    const stepval *p = g_steps.empty() ? NULL : &g_steps.back();
    double d_nvml = p ? dlt(n200, p->settled) : 0, d_first = p ? dlt(nv, p->settled) : 0;
    double d_mi = p ? dlt(mi, p->meminfo) : 0, d_rm = p ? dlt(rm, p->rm) : 0;
    int first_ok = (nv >= 0 && n200 >= 0 && (nv - n200 < 2 && n200 - nv < 2)) ? 1 : 0;
    printf("step=%s scenario=%s nvml_mib=%.1f meminfo_used_mib=%.1f rm_live_mib=%.1f t_us=%.0f nvml_0ms_mib=%.1f "
           "nvml_20ms_mib=%.1f nvml_200ms_mib=%.1f d_nvml_mib=%.1f d_first_mib=%.1f d_meminfo_mib=%.1f "
           "d_rm_mib=%.1f nvml_first_ok=%d nvml_procs=%u note=%s\n",
           name, g_scenario, nv, mi, rm, t, n0, n20, n200, d_nvml, d_first, d_mi, d_rm, first_ok, g_nvml_nprocs,
           *note ? note : "-");
    fflush(stdout);
    g_steps.push_back(s);
}

static void summary(void)
{
    // the step with the largest settled NVML increase
    int best = -1;
    double bd = 0;
    for (size_t i = 1; i < g_steps.size(); i++) {
        double d = dlt(g_steps[i].settled, g_steps[i - 1].settled);
        if (d > bd) {
            bd = d;
            best = (int)i;
        }
    }
    if (best < 0) {
        printf("summary scenario=%s max_step=none d_nvml_mib=0 first_read_showed=na d_meminfo_mib=0 d_rm_mib=0 "
               "rm_saw=na meter=%s errors=%d\n",
               g_scenario, g_meter ? "yes" : "absent", g_errors);
        return;
    }
    // and the largest settled drop (ctxdestroy, vmm unmap, frees)
    int worst = -1;
    double wd = 0;
    for (size_t i = 1; i < g_steps.size(); i++) {
        double d = dlt(g_steps[i].settled, g_steps[i - 1].settled);
        if (d < wd) {
            wd = d;
            worst = (int)i;
        }
    }
    char drop[160] = "drop_step=none drop_nvml_mib=0 drop_rm_mib=0";
    if (worst > 0) {
        const stepval &w = g_steps[worst], &v = g_steps[worst - 1];
        snprintf(drop, sizeof drop, "drop_step=%s drop_nvml_mib=%.1f drop_rm_mib=%.1f", w.name, wd,
                 (w.rm >= 0 && v.rm >= 0) ? w.rm - v.rm : -1.0);
    }
    const stepval &c = g_steps[best], &p = g_steps[best - 1];
    double d_first = dlt(c.first, p.settled);
    double d_mi = dlt(c.meminfo, p.meminfo);
    double d_rm = (c.rm >= 0 && p.rm >= 0) ? c.rm - p.rm : -1;
    const char *first = (d_first > bd - 2 && d_first < bd + 2) ? "yes" : "no";
    const char *rmsaw = "na";
    if (g_meter && bd >= 8) {
        double tol = std::max(64.0, 0.10 * bd);
        rmsaw = (d_rm > bd - tol && d_rm < bd + tol) ? "yes" : (d_rm > 1 ? "partly" : "no");
    }
    printf("summary scenario=%s max_step=%s d_nvml_mib=%.1f first_read_showed=%s d_first_mib=%.1f d_meminfo_mib=%.1f "
           "d_rm_mib=%.1f rm_saw=%s meter=%s %s errors=%d\n",
           g_scenario, c.name, bd, first, d_first, d_mi, d_rm, rmsaw, g_meter ? "yes" : "absent", drop, g_errors);
    fflush(stdout);
}

// nvidia-smi's per-process figure for our pid; LD_PRELOAD unset for the child.
static void outside(void)
{
    char *pre = getenv("LD_PRELOAD");
    char *saved = pre ? strdup(pre) : NULL;
    unsetenv("LD_PRELOAD");
    FILE *f = popen("timeout 20 nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits "
                    "2>&1",
                    "r");
    if (saved) {
        setenv("LD_PRELOAD", saved, 1);
        free(saved);
    }
    if (!f) {
        printf("outside_mib=-2 scenario=%s err=popen\n", g_scenario);
        return;
    }
    char line[512];
    long found = -1;
    int lines = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned pid = 0;
        long used = -1;
        lines++;
        line[strcspn(line, "\n")] = 0;
        printf("outside_line=\"%s\"\n", line);
        if (sscanf(line, "%u , %ld", &pid, &used) == 2 && pid == (unsigned)getpid())
            found = used;
    }
    int rc = pclose(f);
    printf("outside_mib=%ld scenario=%s nvml_mib=%.1f smi_lines=%d smi_rc=%d\n", found, g_scenario, nvml_self_mib(),
           lines, rc);
    fflush(stdout);
}

// ---------------------------------------------------------------- common setup
static CUdevice g_dev;
static CUcontext g_pctx;

static bool init_driver(void)
{
    if (!CK(cuInit(0)))
        return false;
    if (!CK(cuDeviceGet(&g_dev, 0)))
        return false;
    nvml_match_cuda_device(g_dev);
    int drv = 0;
    cuDriverGetVersion(&drv);
    char nm[128] = "?";
    cuDeviceGetName(nm, sizeof nm, g_dev);
    printf("info device=\"%s\" driver_api=%d\n", nm, drv);
    return true;
}

static bool primary_ctx(void)
{
    if (!CK(cuDevicePrimaryCtxRetain(&g_pctx, g_dev)))
        return false;
    return CK(cuCtxSetCurrent(g_pctx));
}

static void check_meter_sees(void)
{
    if (!g_meter)
        return;
    if (meter_nv_ioctls() == 0)
        printf("METER_BLIND scenario=%s: meter preloaded but 0 NVIDIA ioctls seen after cuInit+context: libcuda "
               "does not call libc's ioctl through the PLT; design B is impossible in-process\n",
               g_scenario);
    else
        printf("info meter_nv_ioctls=%llu (libcuda calls libc ioctl: interposable)\n", meter_nv_ioctls());
}

// cuInit + primary context + a kept 4 KiB allocation, then the "baseline" step.
static CUdeviceptr g_warm;
static bool standard_setup(void)
{
    if (!init_driver() || !primary_ctx())
        return false;
    CK(cuMemAlloc(&g_warm, 4096));
    CK(cuCtxSynchronize());
    check_meter_sees();
    step("baseline", "ctx+4KiB");
    return true;
}
static void standard_teardown(void)
{
    if (g_warm)
        CK(cuMemFree(g_warm));
    g_warm = 0;
}

// ---------------------------------------------------------------- kernels (runtime launches)
__global__ void k_trivial(int *p)
{
    if (p && threadIdx.x == 0 && blockIdx.x == 0)
        *p = 1;
}
__global__ void k_malloc(int *out)
{
    if (threadIdx.x == 0 && blockIdx.x == 0) {
        void *m = malloc(1 << 20);
        *out = (m != NULL);
        if (m)
            free(m);
    }
}

static bool launch_trivial(const char *why)
{
    k_trivial<<<1, 32>>>(NULL);
    bool ok = CKRT(cudaGetLastError());
    ok = CKRT(cudaDeviceSynchronize()) && ok;
    if (!ok)
        printf("info launch_failed=%s\n", why);
    return ok;
}

// ---------------------------------------------------------------- scenarios
static void sc_ctx(void)
{
    step("start", "no_cuInit");
    if (!CK(cuInit(0)))
        return;
    CK(cuDeviceGet(&g_dev, 0));
    nvml_match_cuda_device(g_dev);
    step("cuInit");
    if (!CK(cuDevicePrimaryCtxRetain(&g_pctx, g_dev)))
        return;
    step("primary_retain");
    CK(cuCtxSetCurrent(g_pctx));
    step("set_current");
    check_meter_sees();
    CUdeviceptr p = 0;
    CK(cuMemAlloc(&p, 4096));
    step("alloc_4k");
    if (p)
        CK(cuMemFree(p));
    step("free_4k");
}

static void sc_vmm(void)
{
    if (!standard_setup())
        return;
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = (int)g_dev;
    size_t gran = 0;
    if (!CK(cuMemGetAllocationGranularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM)) || !gran)
        return;
    size_t sz = ((512ull << 20) + gran - 1) / gran * gran;
    printf("info vmm_granularity=%zu size=%zu\n", gran, sz);
    CUdeviceptr va[4] = {0, 0, 0, 0};
    bool mapped[4] = {false, false, false, false};
    char nm[64];
    for (int i = 0; i < 4; i++) {
        CUmemGenericAllocationHandle h = 0;
        if (!CK(cuMemCreate(&h, sz, &prop, 0)))
            break;
        snprintf(nm, sizeof nm, "create_%d", i);
        step(nm);
        if (!CK(cuMemAddressReserve(&va[i], sz, gran, 0, 0))) {
            CK(cuMemRelease(h));
            break;
        }
        if (!CK(cuMemMap(va[i], sz, 0, h, 0))) {
            CK(cuMemRelease(h));
            CK(cuMemAddressFree(va[i], sz));
            va[i] = 0;
            break;
        }
        mapped[i] = true;
        CUmemAccessDesc ad;
        memset(&ad, 0, sizeof ad);
        ad.location = prop.location;
        ad.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
        CK(cuMemSetAccess(va[i], sz, &ad, 1));
        CK(cuMemRelease(h)); // memory stays alive while mapped
        snprintf(nm, sizeof nm, "map_release_%d", i);
        step(nm, "released_but_mapped");
    }
    for (int i = 0; i < 4; i++) {
        if (!va[i])
            continue;
        if (mapped[i])
            CK(cuMemUnmap(va[i], sz));
        CK(cuMemAddressFree(va[i], sz));
        snprintf(nm, sizeof nm, "unmap_%d", i);
        step(nm);
    }
    standard_teardown();
}

static void sc_heap(void)
{
    if (!standard_setup())
        return;
    size_t v = 0;
    CK(cuCtxGetLimit(&v, CU_LIMIT_MALLOC_HEAP_SIZE));
    printf("info heap_limit_before=%zu\n", v);
    launch_trivial("warm");
    step("warm_launch", "cudart_module_load");
    CUresult r = cuCtxSetLimit(CU_LIMIT_MALLOC_HEAP_SIZE, 3ull << 30);
    printf("res=info call=cuCtxSetLimit(MALLOC_HEAP,3GiB) rc=%d name=%s (after a launch the heap may be fixed)\n",
           (int)r, cu_name(r));
    CK(cuCtxGetLimit(&v, CU_LIMIT_MALLOC_HEAP_SIZE));
    printf("info heap_limit_after=%zu\n", v);
    step("setlimit_heap");
    launch_trivial("trivial_after_setlimit");
    step("trivial_launch", "no_malloc_kernel");
    int *d_out = NULL;
    CKRT(cudaMalloc(&d_out, sizeof(int)));
    step("alloc_out_4B");
    k_malloc<<<1, 32>>>(d_out);
    CKRT(cudaGetLastError());
    CKRT(cudaDeviceSynchronize());
    int h_out = -1;
    if (d_out)
        CKRT(cudaMemcpy(&h_out, d_out, sizeof h_out, cudaMemcpyDeviceToHost));
    printf("info device_malloc_ok=%d\n", h_out);
    step("malloc_launch");
    launch_trivial("after");
    step("launch2");
    if (d_out)
        CKRT(cudaFree(d_out));
    standard_teardown();
}

static void sc_stack(void)
{
    if (!standard_setup())
        return;
    int sms = 0, tpsm = 0;
    CK(cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, g_dev));
    CK(cuDeviceGetAttribute(&tpsm, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR, g_dev));
    size_t v = 0;
    CK(cuCtxGetLimit(&v, CU_LIMIT_STACK_SIZE));
    const size_t stack = 16384;
    double pred = (double)stack * sms * tpsm;
    printf("info multiProcessorCount=%d maxThreadsPerMultiProcessor=%d stack_before=%zu stack_new=%zu "
           "predicted_bytes=%.0f predicted_mib=%.1f\n",
           sms, tpsm, v, stack, pred, pred / MiB);
    launch_trivial("warm");
    step("warm_launch", "cudart_module_load");
    CK(cuCtxSetLimit(CU_LIMIT_STACK_SIZE, stack));
    CK(cuCtxGetLimit(&v, CU_LIMIT_STACK_SIZE));
    printf("info stack_after=%zu\n", v);
    step("setlimit_stack");
    launch_trivial("after_setlimit");
    step("trivial_launch");
    launch_trivial("again");
    step("launch2");
    CK(cuCtxSetLimit(CU_LIMIT_STACK_SIZE, 1024));
    launch_trivial("after_shrink");
    step("setlimit_1k_and_launch", "does_shrinking_give_back");
}

static void launch_touch(CUfunction f)
{
    if (CK(cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL)))
        CK(cuCtxSynchronize());
}

static void sc_module(const char *path)
{
    if (!standard_setup())
        return;
    CUmoduleLoadingMode mode;
    CUresult r = cuModuleGetLoadingMode(&mode);
    const char *env = getenv("CUDA_MODULE_LOADING");
    printf("info module_loading_mode=%s rc=%d CUDA_MODULE_LOADING=%s file=%s\n",
           r != CUDA_SUCCESS ? "?" : (mode == CU_MODULE_LAZY_LOADING ? "lazy" : "eager"), (int)r, env ? env : "(unset)",
           path);
    // cuModuleLoad path
    CUmodule mod = NULL;
    if (CK(cuModuleLoad(&mod, path))) {
        step("module_load");
        CUfunction f = NULL;
        if (CK(cuModuleGetFunction(&f, mod, "touch_big"))) {
            step("module_get_function");
            CUresult fr = cuFuncLoad(f);
            printf("res=info call=cuFuncLoad rc=%d name=%s\n", (int)fr, cu_name(fr));
            step("module_func_load");
            launch_touch(f);
            step("module_first_launch");
        }
        CK(cuModuleUnload(mod));
        step("module_unload");
    }
    // cuLibraryLoadFromFile path
    CUlibrary lib = NULL;
    if (CK(cuLibraryLoadFromFile(&lib, path, NULL, NULL, 0, NULL, NULL, 0))) {
        step("library_load");
        CUkernel k = NULL;
        if (CK(cuLibraryGetKernel(&k, lib, "touch_big"))) {
            step("library_get_kernel");
            CUfunction f = NULL;
            if (CK(cuKernelGetFunction(&f, k))) {
                step("kernel_get_function");
                CUresult fr = cuFuncLoad(f);
                printf("res=info call=cuFuncLoad(lib) rc=%d name=%s\n", (int)fr, cu_name(fr));
                step("library_func_load");
                launch_touch(f);
                step("library_first_launch");
            }
        }
        CK(cuLibraryUnload(lib));
        step("library_unload");
    }
    standard_teardown();
}

static void sc_ctxdestroy(void)
{
    if (!init_driver())
        return;
    step("start", "after_cuInit_no_ctx");
    CUcontext c = NULL;
    if (CK(cuCtxCreate(&c, NULL, 0, g_dev))) {
        check_meter_sees();
        step("ctx_create");
        CUdeviceptr p = 0;
        CK(cuMemAlloc(&p, 1280ull << 20));
        step("ctx_alloc_1280m");
        CK(cuCtxDestroy(c)); // p deliberately not freed: destroy must free it
        step("ctx_destroy", "alloc_not_freed_before_destroy");
    }
    if (!primary_ctx())
        return;
    step("primary_ctx");
    CUdeviceptr q = 0;
    CK(cuMemAlloc(&q, 1280ull << 20));
    step("primary_alloc_1280m");
    if (q)
        CK(cuMemFree(q));
    step("primary_free");
}

#define RACE_THREADS 16
#define RACE_ALLOCS 8
static pthread_barrier_t g_bar;
struct race_arg {
    int id;
    CUdeviceptr p[RACE_ALLOCS];
    int ok;
    int errs;
    double t_ctx_us;
};
static void *race_thread(void *v)
{
    race_arg *a = (race_arg *)v;
    pthread_barrier_wait(&g_bar);
    double t = now_us();
    CUcontext c = NULL;
    if (cuDevicePrimaryCtxRetain(&c, g_dev) != CUDA_SUCCESS || cuCtxSetCurrent(c) != CUDA_SUCCESS) {
        a->errs++;
        return NULL;
    }
    a->t_ctx_us = now_us() - t;
    for (int i = 0; i < RACE_ALLOCS; i++) {
        CUresult r = cuMemAlloc(&a->p[i], 64ull << 20);
        if (r == CUDA_SUCCESS)
            a->ok++;
        else {
            a->p[i] = 0;
            a->errs++;
        }
    }
    return NULL;
}
static void sc_race(void)
{
    if (!init_driver())
        return;
    step("start", "after_cuInit_no_ctx");
    pthread_barrier_init(&g_bar, NULL, RACE_THREADS);
    static race_arg args[RACE_THREADS];
    pthread_t th[RACE_THREADS];
    int started = 0;
    for (int i = 0; i < RACE_THREADS; i++) {
        args[i].id = i;
        if (pthread_create(&th[i], NULL, race_thread, &args[i]) != 0) {
            printf("res=FAIL pthread_create %d\n", i);
            break;
        }
        started++;
    }
    if (started != RACE_THREADS) {
        // cannot reach the barrier count; this would hang: report and exit hard
        printf("res=FAIL race could not start all threads\n");
        fflush(stdout);
        _exit(3);
    }
    for (int i = 0; i < RACE_THREADS; i++)
        pthread_join(th[i], NULL);
    int ok = 0, errs = 0;
    double tmax = 0;
    for (int i = 0; i < RACE_THREADS; i++) {
        ok += args[i].ok;
        errs += args[i].errs;
        tmax = std::max(tmax, args[i].t_ctx_us);
    }
    printf("info race_allocs_ok=%d errors=%d expected_mib=%d max_ctx_retain_us=%.0f\n", ok, errs, ok * 64, tmax);
    if (!primary_ctx())
        return;
    step("after_race", "ctx_plus_allocs");
    for (int i = 0; i < RACE_THREADS; i++)
        for (int j = 0; j < RACE_ALLOCS; j++)
            if (args[i].p[j])
                CK(cuMemFree(args[i].p[j]));
    step("after_free");
}

static void pct(std::vector<double> &v, const char *what)
{
    if (v.empty()) {
        printf("info cost=%s n=0\n", what);
        return;
    }
    std::sort(v.begin(), v.end());
    size_t n = v.size();
    printf("nvmlcost call=%s n=%zu p10_us=%.2f median_us=%.2f p90_us=%.2f max_us=%.2f\n", what, n, v[n / 10], v[n / 2],
           v[(n * 9) / 10], v[n - 1]);
}
static void sc_nvmlcost(void)
{
    if (!standard_setup())
        return;
    std::vector<double> a, b;
    a.reserve(1000);
    b.reserve(1000);
    for (int i = 0; i < 1000 && g_nvml_ok; i++) {
        double t = now_us();
        unsigned int n = 256;
        int r = p_nvmlDeviceGetComputeRunningProcesses_v3(g_nvdev, &n, g_procbuf);
        double d = now_us() - t;
        if (r == 0)
            a.push_back(d);
    }
    for (int i = 0; i < 1000; i++) {
        size_t fr, tot;
        double t = now_us();
        CUresult r = cuMemGetInfo(&fr, &tot);
        double d = now_us() - t;
        if (r == CUDA_SUCCESS)
            b.push_back(d);
    }
    pct(a, "nvmlDeviceGetComputeRunningProcesses_v3");
    pct(b, "cuMemGetInfo_v2");
    if (g_meter) {
        struct probe_meter m;
        if (g_meter(&m) == 0)
            printf("info meter_ioctls=%llu meter_ioctl_ms=%.3f nv_ioctls=%llu rm_alloc_ok=%llu rm_free_ok=%llu\n",
                   (unsigned long long)m.ioctl_total, m.ioctl_ns / 1e6, (unsigned long long)m.ioctl_nv,
                   (unsigned long long)m.rm_alloc_ok, (unsigned long long)m.rm_free_ok);
    }
    step("end");
    standard_teardown();
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    g_t0 = now_us();
    if (argc < 2) {
        fprintf(stderr, "usage: %s ctx|vmm|heap|stack|module|ctxdestroy|race|nvmlcost [module_file]\n", argv[0]);
        return 2;
    }
    g_scenario = argv[1];
    *(void **)&g_meter = dlsym(RTLD_DEFAULT, "probe_meter_read");
    printf("info scenario=%s pid=%d meter=%s\n", g_scenario, (int)getpid(), g_meter ? "preloaded" : "absent");
    nvml_setup();
    const char *s = g_scenario;
    if (!strcmp(s, "ctx"))
        sc_ctx();
    else if (!strcmp(s, "vmm"))
        sc_vmm();
    else if (!strcmp(s, "heap"))
        sc_heap();
    else if (!strcmp(s, "stack"))
        sc_stack();
    else if (!strcmp(s, "module"))
        sc_module(argc > 2 ? argv[2] : "big_module.fatbin");
    else if (!strcmp(s, "ctxdestroy"))
        sc_ctxdestroy();
    else if (!strcmp(s, "race"))
        sc_race();
    else if (!strcmp(s, "nvmlcost"))
        sc_nvmlcost();
    else {
        printf("res=FAIL unknown scenario %s\n", s);
        return 2;
    }
    summary();
    outside();
    printf("done scenario=%s errors=%d\n", g_scenario, g_errors);
    return g_errors ? 1 : 0;
}
