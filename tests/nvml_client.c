/*
 * nvml_client.c — a program that reads its memory the way monitoring code
 * and frameworks do, through CUDA and through NVML, for tests/test_nvml.c
 * (run under the preload shim). Everything is reached with dlopen + dlsym,
 * so it runs where there is no NVML at all:
 *   - CUDA: dlsym on the libcuda.so.1 handle (as JAX does);
 *   - NVML "dlsym": dlsym on the libnvidia-ml.so.1 handle (pynvml);
 *   - NVML "linked": dlsym(RTLD_DEFAULT), which binds what a program
 *     linked with -lnvidia-ml binds: the first definition in load order.
 *
 *   nvml_client ALLOC_MIB [TRY_MIB...]
 * Allocates ALLOC_MIB on device 0 and prints, one record a line:
 *   cuda free=B total=B
 *   stats overhead=B used=B                (when vg_device_stats is there)
 *   nvml absent | nvml count=N
 *   mem index=I how=dlsym|linked v=1|2 total=B free=B used=B reserved=B
 *       hooked=0|1   (1: both ways reached the same function)
 *   try mib=M rc=RC                        (each TRY_MIB, freed at once)
 * Exit: 0 ran, 2 usage, 3 setup failed.
 */
#include <cuda.h>
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "vramguard.h"

#define MiB (1024ull * 1024ull)

typedef struct { unsigned long long total, free, used; } mem_v1_t;
typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} mem_v2_t;
#define MEM_V2_VERSION ((unsigned int)(sizeof(mem_v2_t) | (2u << 24)))

typedef int (*mem_v1_fn)(void *dev, mem_v1_t *m);
typedef int (*mem_v2_fn)(void *dev, mem_v2_t *m);

static struct {
    CUresult (*init)(unsigned int);
    CUresult (*device_get)(CUdevice *, int);
    CUresult (*retain)(CUcontext *, CUdevice);
    CUresult (*set_current)(CUcontext);
    CUresult (*alloc)(CUdeviceptr *, size_t);
    CUresult (*free_)(CUdeviceptr);
    CUresult (*info)(size_t *, size_t *);
} cu;

static void *need(void *h, const char *name)
{
    void *p = dlsym(h, name);
    if (!p) {
        fprintf(stderr, "nvml_client: no %s\n", name);
        exit(3);
    }
    return p;
}

static void cuda_setup(void)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!h) {
        fprintf(stderr, "nvml_client: %s\n", dlerror());
        exit(3);
    }
    *(void **)&cu.init = need(h, "cuInit");
    *(void **)&cu.device_get = need(h, "cuDeviceGet");
    *(void **)&cu.retain = need(h, "cuDevicePrimaryCtxRetain");
    *(void **)&cu.set_current = need(h, "cuCtxSetCurrent");
    *(void **)&cu.alloc = need(h, "cuMemAlloc_v2");
    *(void **)&cu.free_ = need(h, "cuMemFree_v2");
    *(void **)&cu.info = need(h, "cuMemGetInfo_v2");
    CUdevice dev;
    CUcontext ctx;
    if (cu.init(0) || cu.device_get(&dev, 0) || cu.retain(&ctx, dev) || cu.set_current(ctx)) {
        fprintf(stderr, "nvml_client: CUDA setup failed\n");
        exit(3);
    }
}

static void print_mem(void *h, void *dev, unsigned int index, int linked)
{
    const char *how = linked ? "linked" : "dlsym";
    void *scope = linked ? RTLD_DEFAULT : h;
    mem_v1_fn v1 = (mem_v1_fn)need(scope, "nvmlDeviceGetMemoryInfo");
    mem_v2_fn v2 = (mem_v2_fn)need(scope, "nvmlDeviceGetMemoryInfo_v2");
    int same1 = v1 == (mem_v1_fn)need(linked ? h : RTLD_DEFAULT, "nvmlDeviceGetMemoryInfo");
    int same2 = v2 == (mem_v2_fn)need(linked ? h : RTLD_DEFAULT, "nvmlDeviceGetMemoryInfo_v2");
    mem_v1_t m1 = {0};
    mem_v2_t m2 = {.version = MEM_V2_VERSION};
    int rc1 = v1(dev, &m1), rc2 = v2(dev, &m2);
    printf("mem index=%u how=%s v=1 rc=%d total=%llu free=%llu used=%llu reserved=0 hooked=%d\n",
           index, how, rc1, m1.total, m1.free, m1.used, same1);
    printf("mem index=%u how=%s v=2 rc=%d total=%llu free=%llu used=%llu reserved=%llu hooked=%d\n",
           index, how, rc2, m2.total, m2.free, m2.used, m2.reserved, same2);
}

static void nvml_report(void)
{
    void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!h) {
        printf("nvml absent\n");
        return;
    }
    int (*init)(void) = (int (*)(void))need(h, "nvmlInit_v2");
    int (*count_fn)(unsigned int *) = (int (*)(unsigned int *))need(h, "nvmlDeviceGetCount_v2");
    int (*by_index)(unsigned int, void **) =
        (int (*)(unsigned int, void **))need(h, "nvmlDeviceGetHandleByIndex_v2");
    unsigned int count = 0;
    if (init() || count_fn(&count)) {
        fprintf(stderr, "nvml_client: NVML setup failed\n");
        exit(3);
    }
    printf("nvml count=%u\n", count);
    for (unsigned int i = 0; i < count; i++) {
        void *dev = NULL;
        if (by_index(i, &dev))
            exit(3);
        print_mem(h, dev, i, 0);
        print_mem(h, dev, i, 1);
    }
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    cuda_setup();
    CUdeviceptr keep = 0;
    unsigned long long mib = strtoull(argv[1], NULL, 10);
    if (mib && cu.alloc(&keep, mib * MiB) != CUDA_SUCCESS) {
        fprintf(stderr, "nvml_client: first allocation refused\n");
        return 3;
    }
    size_t free_b = 0, total_b = 0;
    cu.info(&free_b, &total_b);
    printf("cuda free=%zu total=%zu\n", free_b, total_b);
    int (*stats)(int, vg_device_stats_t *) =
        (int (*)(int, vg_device_stats_t *))dlsym(RTLD_DEFAULT, "vg_device_stats");
    vg_device_stats_t s;
    if (stats && stats(0, &s) == VG_OK)
        printf("stats overhead=%llu used=%llu\n", (unsigned long long)s.overhead,
               (unsigned long long)s.used);
    nvml_report();
    for (int i = 2; i < argc; i++) {
        CUdeviceptr p = 0;
        CUresult rc = cu.alloc(&p, strtoull(argv[i], NULL, 10) * MiB);
        printf("try mib=%s rc=%d\n", argv[i], (int)rc);
        if (rc == CUDA_SUCCESS)
            cu.free_(p);
    }
    if (keep)
        cu.free_(keep);
    fflush(stdout);
    return 0;
}
