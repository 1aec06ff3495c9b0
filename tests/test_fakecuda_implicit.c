/*
 * test_fakecuda_implicit.c: memory the test driver (tests/fakecuda) charges
 * that no allocation call made, as the real driver does (fakecuda.h): a
 * context's own memory, the stack, heap and printf limits, the globals of
 * modules and libraries (loaded lazily or eagerly), all of it freed with
 * its context, and counted in NVML's figure for the process.
 * Shared helpers: fakecudatest.h.
 */
#include <criterion/criterion.h>

#include <cuda.h>
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

#include "fakecudatest.h"

/* ---- implicit memory: contexts, limits, modules (fakecuda.h) ---- */

#define CTX_BYTES (300 * MiB)
/* The legacy ABI of cuCtxDestroy (cuda.h renames it to _v2). */
typedef CUresult (*ctx_destroy_fn)(CUcontext ctx);
typedef CUresult (*launch_ptsz_fn)(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                   unsigned by, unsigned bz, unsigned shmem, CUstream s,
                                   void **params, void **extra);
typedef CUresult (*launch_ex_ptsz_fn)(const CUlaunchConfig *config, CUfunction f, void **params,
                                      void **extra);

static void set_context_bytes(void)
{
    setenv("FAKECUDA_CONTEXT_BYTES", "314572800", 1);
}

static CUresult launch1(CUfunction f)
{
    return cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL);
}

Test(fakecuda, a_context_takes_its_memory_when_it_starts_and_gives_it_back)
{
    CUcontext prim, again, created;
    set_context_bytes();
    EXPECT_CU(cuInit(0), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(cuDevicePrimaryCtxRetain(&prim, 0), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), CTX_BYTES);
    cr_assert_eq(fakecuda_implicit_bytes(0), CTX_BYTES);
    EXPECT_CU(cuDevicePrimaryCtxRetain(&again, 0), CUDA_SUCCESS);   /* the same context */
    cr_assert_eq(fakecuda_used_bytes(0), CTX_BYTES);
    EXPECT_CU(cuCtxCreate(&created, NULL, 0, 0), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 2 * CTX_BYTES);
    EXPECT_CU(cuCtxDestroy(created), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), CTX_BYTES);
    /* A reset gives it back; the next use of the kept handle starts it again. */
    EXPECT_CU(cuCtxSetCurrent(prim), CUDA_SUCCESS);
    EXPECT_CU(cuDevicePrimaryCtxReset(0), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    CUdeviceptr p;
    EXPECT_CU(cuMemAlloc(&p, MiB), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), CTX_BYTES + MiB);
    EXPECT_CU(cuDevicePrimaryCtxRelease(0), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), CTX_BYTES + MiB);
    EXPECT_CU(cuDevicePrimaryCtxRelease(0), CUDA_SUCCESS);   /* the last: all of it */
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    cr_assert_eq(fakecuda_implicit_bytes(0), 0);
    cr_assert_eq(fakecuda_peak_bytes(0), 2 * CTX_BYTES);
}

Test(fakecuda, a_context_that_does_not_fit_is_out_of_memory)
{
    CUcontext c;
    setenv("FAKECUDA_CONTEXT_BYTES", "314572800", 1);
    setenv("FAKECUDA_TOTAL_BYTES", "536870912", 1);   /* 512 MiB: one context fits */
    EXPECT_CU(cuInit(0), CUDA_SUCCESS);
    EXPECT_CU(cuDevicePrimaryCtxRetain(&c, 0), CUDA_SUCCESS);
    EXPECT_CU(cuCtxCreate(&c, NULL, 0, 0), CUDA_ERROR_OUT_OF_MEMORY);
    cr_assert_eq(fakecuda_used_bytes(0), CTX_BYTES);
}

Test(fakecuda, the_stack_limit_is_sized_by_the_resident_threads)
{
    int sms, threads;
    size_t v;
    start(NULL);
    EXPECT_CU(cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0), CUDA_SUCCESS);
    EXPECT_CU(cuDeviceGetAttribute(&threads, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR, 0),
              CUDA_SUCCESS);
    cr_assert(sms == 132 && threads == 2048);
    EXPECT_CU(cuCtxGetLimit(&v, CU_LIMIT_STACK_SIZE), CUDA_SUCCESS);
    cr_assert_eq(v, 1024);
    EXPECT_CU(cuCtxGetLimit(&v, CU_LIMIT_MALLOC_HEAP_SIZE), CUDA_SUCCESS);
    cr_assert_eq(v, 8 * MiB);
    EXPECT_CU(cuCtxGetLimit(&v, CU_LIMIT_PRINTF_FIFO_SIZE), CUDA_SUCCESS);
    cr_assert_eq(v, MiB);
    EXPECT_CU(cuCtxSetLimit(CU_LIMIT_STACK_SIZE, 16 * 1024), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 15 * 1024ull * 132 * 2048);   /* about 4.1 GiB */
    EXPECT_CU(cuCtxSetLimit(CU_LIMIT_STACK_SIZE, 512), CUDA_SUCCESS);   /* below: nothing */
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(cuCtxGetLimit(&v, CU_LIMIT_STACK_SIZE), CUDA_SUCCESS);
    cr_assert_eq(v, 512);
}

Test(fakecuda, the_sm_count_comes_from_the_environment)
{
    int sms;
    setenv("FAKECUDA_SM_COUNT", "10", 1);
    start(NULL);
    EXPECT_CU(cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0), CUDA_SUCCESS);
    cr_assert_eq(sms, 10);
    EXPECT_CU(cuCtxSetLimit(CU_LIMIT_STACK_SIZE, 2048), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 1024ull * 10 * 2048);
}

Test(fakecuda, heap_and_printf_limits_charge_what_is_above_the_default)
{
    size_t v;
    start("2147483648");   /* 2 GiB */
    EXPECT_CU(cuCtxSetLimit(CU_LIMIT_MALLOC_HEAP_SIZE, 256 * MiB), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 248 * MiB);
    EXPECT_CU(cuCtxSetLimit(CU_LIMIT_PRINTF_FIFO_SIZE, 5 * MiB), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 252 * MiB);
    cr_assert_eq(fakecuda_implicit_bytes(0), 252 * MiB);
    /* Does not fit: refused, the old value and charge stay. */
    EXPECT_CU(cuCtxSetLimit(CU_LIMIT_MALLOC_HEAP_SIZE, 3 * GiB), CUDA_ERROR_OUT_OF_MEMORY);
    EXPECT_CU(cuCtxGetLimit(&v, CU_LIMIT_MALLOC_HEAP_SIZE), CUDA_SUCCESS);
    cr_assert_eq(v, 256 * MiB);
    cr_assert_eq(fakecuda_used_bytes(0), 252 * MiB);
    EXPECT_CU(cuCtxSetLimit(CU_LIMIT_MAX, 1), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuCtxSetLimit(CU_LIMIT_SHMEM_SIZE, 1), CUDA_ERROR_UNSUPPORTED_LIMIT);
    EXPECT_CU(cuCtxGetLimit(NULL, CU_LIMIT_STACK_SIZE), CUDA_ERROR_INVALID_VALUE);
}

Test(fakecuda, limits_at_launch_are_charged_by_the_next_launch)
{
    CUmodule m;
    CUfunction f;
    CUdeviceptr p;
    setenv("FAKECUDA_LIMITS_AT", "launch", 1);
    setenv("CUDA_MODULE_LOADING", "LAZY", 1);
    start("1073741824");   /* 1 GiB */
    EXPECT_CU(cuModuleLoadData(&m, "fakecuda-module kernels=k"), CUDA_SUCCESS);
    EXPECT_CU(cuModuleGetFunction(&f, m, "k"), CUDA_SUCCESS);
    EXPECT_CU(cuCtxSetLimit(CU_LIMIT_MALLOC_HEAP_SIZE, 3 * GiB), CUDA_ERROR_OUT_OF_MEMORY);
    EXPECT_CU(cuCtxSetLimit(CU_LIMIT_MALLOC_HEAP_SIZE, 520 * MiB), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(launch1(f), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 512 * MiB);
    EXPECT_CU(launch1(f), CUDA_SUCCESS);   /* once */
    cr_assert_eq(fakecuda_used_bytes(0), 512 * MiB);
    /* Set while it fits, then the room goes: the launch is refused. */
    EXPECT_CU(cuCtxSetLimit(CU_LIMIT_MALLOC_HEAP_SIZE, 776 * MiB), CUDA_SUCCESS);
    EXPECT_CU(cuMemAlloc(&p, 384 * MiB), CUDA_SUCCESS);
    EXPECT_CU(launch1(f), CUDA_ERROR_OUT_OF_MEMORY);
    cr_assert_eq(fakecuda_used_bytes(0), 896 * MiB);
    EXPECT_CU(cuMemFree(p), CUDA_SUCCESS);
    EXPECT_CU(launch1(f), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 768 * MiB);
}

Test(fakecuda, lazy_modules_charge_their_globals_at_the_first_launch)
{
    CUmodule m;
    CUfunction f, g;
    CUfunctionLoadingState st;
    CUmoduleLoadingMode mode;
    setenv("CUDA_MODULE_LOADING", "LAZY", 1);
    start(NULL);
    EXPECT_CU(cuModuleGetLoadingMode(&mode), CUDA_SUCCESS);
    cr_assert_eq(mode, CU_MODULE_LAZY_LOADING);
    EXPECT_CU(cuModuleLoadData(&m, "fakecuda-module globals=629145600 kernels=k1,k2"), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(cuModuleGetFunction(&f, m, "k2"), CUDA_SUCCESS);
    EXPECT_CU(cuModuleGetFunction(&g, m, "k3"), CUDA_ERROR_NOT_FOUND);
    EXPECT_CU(cuFuncIsLoaded(&st, f), CUDA_SUCCESS);
    cr_assert_eq(st, CU_FUNCTION_LOADING_STATE_UNLOADED);
    EXPECT_CU(launch1(f), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 600 * MiB);
    cr_assert_eq(fakecuda_implicit_bytes(0), 600 * MiB);
    EXPECT_CU(cuFuncIsLoaded(&st, f), CUDA_SUCCESS);
    cr_assert_eq(st, CU_FUNCTION_LOADING_STATE_LOADED);
    EXPECT_CU(cuModuleGetFunction(&g, m, "k1"), CUDA_SUCCESS);
    EXPECT_CU(launch1(g), CUDA_SUCCESS);   /* the module loads once */
    cr_assert_eq(fakecuda_used_bytes(0), 600 * MiB);
    EXPECT_CU(cuModuleUnload(m), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(launch1(f), CUDA_ERROR_INVALID_HANDLE);
    EXPECT_CU(cuModuleUnload(m), CUDA_ERROR_INVALID_HANDLE);
    /* cuFuncLoad loads too; a launch that does not fit is refused. */
    EXPECT_CU(cuModuleLoadData(&m, "fakecuda-module globals=1048576 kernels=k"), CUDA_SUCCESS);
    EXPECT_CU(cuModuleGetFunction(&f, m, "k"), CUDA_SUCCESS);
    EXPECT_CU(cuFuncLoad(f), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), MiB);
}

Test(fakecuda, a_lazy_load_that_does_not_fit_fails_the_launch)
{
    CUmodule m;
    CUfunction f;
    setenv("CUDA_MODULE_LOADING", "LAZY", 1);
    start("1073741824");
    EXPECT_CU(cuModuleLoadData(&m, "fakecuda-module globals=1610612736 kernels=k"), CUDA_SUCCESS);
    EXPECT_CU(cuModuleGetFunction(&f, m, "k"), CUDA_SUCCESS);
    EXPECT_CU(launch1(f), CUDA_ERROR_OUT_OF_MEMORY);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
}

Test(fakecuda, eager_modules_charge_at_load_and_refuse_what_does_not_fit)
{
    CUmodule m, big;
    CUmoduleLoadingMode mode;
    setenv("CUDA_MODULE_LOADING", "EAGER", 1);
    start("1073741824");
    EXPECT_CU(cuModuleGetLoadingMode(&mode), CUDA_SUCCESS);
    cr_assert_eq(mode, CU_MODULE_EAGER_LOADING);
    EXPECT_CU(cuModuleLoadDataEx(&m, "fakecuda-module globals=268435456", 0, NULL, NULL), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 256 * MiB);
    EXPECT_CU(cuModuleLoadFatBinary(&big, "fakecuda-module globals=1610612736 kernels=k"),
              CUDA_ERROR_OUT_OF_MEMORY);
    cr_assert_eq(fakecuda_used_bytes(0), 256 * MiB);
    EXPECT_CU(cuModuleUnload(m), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
}

Test(fakecuda, module_images_are_checked)
{
    CUmodule m;
    start(NULL);
    static const char *const bad[] = {
        "not a module", "fakecuda-modulex", "fakecuda-module globals=-1", "fakecuda-module globals=1x",
        "fakecuda-module color=red", "fakecuda-module kernels=", "fakecuda-module kernels=a,,b",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_expect_eq(cuModuleLoadData(&m, bad[i]), CUDA_ERROR_INVALID_IMAGE, "%s", bad[i]);
    EXPECT_CU(cuModuleLoadData(&m, NULL), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuModuleLoadData(&m, "fakecuda-module"), CUDA_SUCCESS);
    EXPECT_CU(cuModuleLoad(&m, "/nonexistent/fakecuda.cubin"), CUDA_ERROR_FILE_NOT_FOUND);
    EXPECT_CU(cuCtxSetCurrent(NULL), CUDA_SUCCESS);
    EXPECT_CU(cuModuleLoadData(&m, "fakecuda-module"), CUDA_ERROR_INVALID_CONTEXT);
}

Test(fakecuda, libraries_load_from_data_and_files_and_launch_through_kernels)
{
    CUlibrary lib, flib;
    CUkernel k;
    CUfunction f;
    CUmodule m;
    setenv("CUDA_MODULE_LOADING", "LAZY", 1);
    start(NULL);
    char path[] = "/tmp/fakecuda-module-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    const char text[] = "fakecuda-module globals=2097152 kernels=kf\n";
    cr_assert_eq(write(fd, text, sizeof text - 1), (ssize_t)(sizeof text - 1));
    close(fd);
    EXPECT_CU(cuLibraryLoadData(&lib, "fakecuda-module globals=4194304 kernels=a,b", NULL, NULL, 0,
                                NULL, NULL, 0), CUDA_SUCCESS);
    EXPECT_CU(cuLibraryGetKernel(&k, lib, "b"), CUDA_SUCCESS);
    EXPECT_CU(cuLibraryGetKernel(&k, lib, "c"), CUDA_ERROR_NOT_FOUND);
    EXPECT_CU(cuLibraryGetKernel(&k, lib, "a"), CUDA_SUCCESS);
    EXPECT_CU(cuKernelGetFunction(&f, k), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(launch1((CUfunction)(void *)k), CUDA_SUCCESS);   /* a kernel launches as is */
    cr_assert_eq(fakecuda_used_bytes(0), 4 * MiB);
    EXPECT_CU(cuLibraryLoadFromFile(&flib, path, NULL, NULL, 0, NULL, NULL, 0), CUDA_SUCCESS);
    EXPECT_CU(cuModuleLoad(&m, path), CUDA_SUCCESS);
    unlink(path);
    EXPECT_CU(cuLibraryGetKernel(&k, flib, "kf"), CUDA_SUCCESS);
    CUlaunchConfig cfg = { 1, 1, 1, 32, 1, 1, 0, NULL, NULL, 0 };
    EXPECT_CU(cuLaunchKernelEx(&cfg, (CUfunction)(void *)k, NULL, NULL), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 6 * MiB);
    EXPECT_CU(cuModuleGetFunction(&f, m, "kf"), CUDA_SUCCESS);
    launch_ptsz_fn lp = (launch_ptsz_fn)sym("cuLaunchKernel_ptsz");
    EXPECT_CU(lp(f, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 8 * MiB);
    launch_ex_ptsz_fn lxp = (launch_ex_ptsz_fn)sym("cuLaunchKernelEx_ptsz");
    EXPECT_CU(lxp(&cfg, f, NULL, NULL), CUDA_SUCCESS);
    EXPECT_CU(lp(f, 0, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuLibraryUnload(lib), CUDA_SUCCESS);
    EXPECT_CU(cuLibraryUnload(flib), CUDA_SUCCESS);
    EXPECT_CU(cuModuleUnload(m), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(cuLibraryUnload(lib), CUDA_ERROR_INVALID_HANDLE);
}

/* Everything made in a context goes with it: allocations of every
 * cuMemAlloc kind, arrays, mipmapped arrays, modules, limits and the
 * context's own memory, through either ABI of cuCtxDestroy. */
static void fill_context(void)
{
    CUdeviceptr p;
    size_t pitch;
    CUarray a;
    CUmipmappedArray mm;
    CUmodule m;
    CUDA_ARRAY_DESCRIPTOR d2 = { 1024, 1024, CU_AD_FORMAT_FLOAT, 4 };
    CUDA_ARRAY3D_DESCRIPTOR d3 = { 256, 256, 0, CU_AD_FORMAT_FLOAT, 1, 0 };
    EXPECT_CU(cuMemAlloc(&p, 64 * MiB), CUDA_SUCCESS);
    EXPECT_CU(cuMemAllocPitch(&p, &pitch, 4096, 1024, 4), CUDA_SUCCESS);
    EXPECT_CU(cuMemAllocManaged(&p, MiB, CU_MEM_ATTACH_GLOBAL), CUDA_SUCCESS);
    EXPECT_CU(cuArrayCreate(&a, &d2), CUDA_SUCCESS);
    EXPECT_CU(cuMipmappedArrayCreate(&mm, &d3, 3), CUDA_SUCCESS);
    EXPECT_CU(cuModuleLoadData(&m, "fakecuda-module globals=8388608"), CUDA_SUCCESS);
    EXPECT_CU(cuCtxSetLimit(CU_LIMIT_MALLOC_HEAP_SIZE, 72 * MiB), CUDA_SUCCESS);
}

Test(fakecuda, destroying_a_context_frees_everything_made_in_it)
{
    CUcontext prim, c;
    set_context_bytes();
    setenv("CUDA_MODULE_LOADING", "EAGER", 1);
    prim = start(NULL);
    CUdeviceptr keep;
    EXPECT_CU(cuMemAlloc(&keep, MiB), CUDA_SUCCESS);   /* in the primary: stays */
    ctx_destroy_fn legacy = (ctx_destroy_fn)sym("cuCtxDestroy");
    for (int abi = 0; abi < 2; abi++) {
        EXPECT_CU(cuCtxCreate(&c, NULL, 0, 0), CUDA_SUCCESS);
        fill_context();
        cr_assert_gt(fakecuda_used_bytes(0), 2 * CTX_BYTES + 150 * MiB);
        EXPECT_CU(abi ? legacy(c) : cuCtxDestroy(c), CUDA_SUCCESS);
        cr_assert_eq(fakecuda_used_bytes(0), CTX_BYTES + MiB, "abi %d", abi);
        cr_assert_eq(fakecuda_implicit_bytes(0), CTX_BYTES);
        cr_assert_eq(fakecuda_live_allocs(0), 1);
    }
    EXPECT_CU(cuCtxSetCurrent(prim), CUDA_SUCCESS);
    fill_context();
    EXPECT_CU(cuDevicePrimaryCtxReset_v2(0), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    cr_assert_eq(fakecuda_implicit_bytes(0), 0);
}

/* NVML's figure for this process (the test double reads this driver)
 * includes memory no call shows. */
Test(fakecuda, nvml_counts_implicit_memory_in_the_process_figure)
{
    typedef struct { unsigned int pid; unsigned long long used; unsigned int gi, ci; } proc_t;
    set_context_bytes();
    start(NULL);
    EXPECT_CU(cuCtxSetLimit(CU_LIMIT_MALLOC_HEAP_SIZE, 72 * MiB), CUDA_SUCCESS);
    void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    cr_assert_not_null(h, "the NVML test double is not on the library path: %s", dlerror());
    int (*init)(void) = (int (*)(void))dlsym(h, "nvmlInit_v2");
    int (*get)(unsigned, void **) = (int (*)(unsigned, void **))dlsym(h, "nvmlDeviceGetHandleByIndex_v2");
    int (*procs)(void *, unsigned *, proc_t *) =
        (int (*)(void *, unsigned *, proc_t *))dlsym(h, "nvmlDeviceGetComputeRunningProcesses_v3");
    cr_assert(init && get && procs);
    void *dev;
    proc_t p[4];
    unsigned n = 4;
    cr_assert_eq(init(), 0);
    cr_assert_eq(get(0, &dev), 0);
    cr_assert_eq(procs(dev, &n, p), 0);
    cr_assert_eq(n, 1);
    cr_assert_eq(p[0].pid, (unsigned)getpid());
    cr_assert_eq(p[0].used, CTX_BYTES + 64 * MiB);
}
