/*
 * alloc_until_refused.c — allocates device memory in 256 MiB steps until the
 * driver refuses, then says how much it got. Under
 *
 *     vramguard run --budget 1GiB -- build/alloc-until-refused
 *
 * it stops at the budget with CUDA_ERROR_OUT_OF_MEMORY, as a framework would.
 * It loads the driver at run time (as cudart does), so it builds without a
 * CUDA toolkit and runs on any machine with an NVIDIA driver.
 *
 *   usage: alloc-until-refused [STEP_MIB]   (default 256)
 *   exit:  0 refused as expected, 1 no driver or device, 2 usage
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef int (*init_fn)(unsigned int);
typedef int (*device_get_fn)(int *, int);
typedef int (*ctx_retain_fn)(void **, int);
typedef int (*ctx_set_fn)(void *);
typedef int (*mem_alloc_fn)(unsigned long long *, size_t);
typedef int (*mem_get_info_fn)(size_t *, size_t *);

#define MAX_STEPS 4096

int main(int argc, char **argv)
{
    long step_mib = argc > 1 ? atol(argv[1]) : 256;
    if (argc > 2 || step_mib < 1)
        return fprintf(stderr, "usage: alloc-until-refused [STEP_MIB]\n"), 2;
    void *cuda = dlopen("libcuda.so.1", RTLD_NOW);
    if (!cuda)
        return fprintf(stderr, "no CUDA driver: %s\n", dlerror()), 1;
    init_fn init = (init_fn)dlsym(cuda, "cuInit");
    device_get_fn device_get = (device_get_fn)dlsym(cuda, "cuDeviceGet");
    ctx_retain_fn retain = (ctx_retain_fn)dlsym(cuda, "cuDevicePrimaryCtxRetain");
    ctx_set_fn set = (ctx_set_fn)dlsym(cuda, "cuCtxSetCurrent");
    mem_alloc_fn alloc = (mem_alloc_fn)dlsym(cuda, "cuMemAlloc_v2");
    mem_get_info_fn info = (mem_get_info_fn)dlsym(cuda, "cuMemGetInfo_v2");
    int dev = 0;
    void *ctx = NULL;
    if (!init || !device_get || !retain || !set || !alloc || !info || init(0) != 0 ||
        device_get(&dev, 0) != 0 || retain(&ctx, dev) != 0 || set(ctx) != 0)
        return fprintf(stderr, "cannot use device 0\n"), 1;
    size_t free_b = 0, total_b = 0;
    info(&free_b, &total_b);
    printf("device 0 as this process sees it: %.2f GiB total, %.2f GiB free\n",
           total_b / 1073741824.0, free_b / 1073741824.0);
    size_t step = (size_t)step_mib << 20, held = 0;
    for (int i = 0; i < MAX_STEPS; i++) {
        unsigned long long p = 0;
        int rc = alloc(&p, step);
        if (rc != 0) {
            printf("refused after %.2f GiB in %ld MiB steps (CUresult %d%s)\n",
                   held / 1073741824.0, step_mib, rc, rc == 2 ? ", CUDA_ERROR_OUT_OF_MEMORY" : "");
            return 0; /* the process exits; the driver frees what it held */
        }
        held += step;
    }
    printf("never refused: %.2f GiB held\n", held / 1073741824.0);
    return 0;
}
