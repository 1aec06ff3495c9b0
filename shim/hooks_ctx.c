/*
 * hooks_ctx.c — calls that make the driver take or free device memory
 * without naming an allocation: context creation and destruction, limits,
 * module and library loads, and kernel launches (which may load a module
 * lazily). The engine decides (lib/account_implicit.c, account_limits.c);
 * each hook calls the driver and reports, and undoes a load or a context
 * that took more than the budget allows, returning the driver's own
 * CUDA_ERROR_OUT_OF_MEMORY.
 */
#include "shim.h"

/* ------------------------------------------------------------ contexts */

/* A context just made: measure what it took; undo it when it does not fit. */
static CUresult ctx_made(CUresult cr, CUcontext *pctx, CUdevice dev, const char *api)
{
    if (cr != CUDA_SUCCESS || !pctx)
        return cr;
    if (vg__acct_implicit_took((int)dev, api) == VG_OK)
        return cr;
    vg__real.cuCtxDestroy_v2(*pctx);
    *pctx = NULL;
    vg__acct_implicit_undone((int)dev);
    return CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult cuCtxCreate(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuCtxCreate)
        return CUDA_ERROR_NOT_FOUND;
    return ctx_made(vg__real.cuCtxCreate(pctx, flags, dev), pctx, dev, "cuCtxCreate");
}

CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    return ctx_made(vg__real.cuCtxCreate_v2(pctx, flags, dev), pctx, dev, "cuCtxCreate_v2");
}

CUresult cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *params, int n,
                        unsigned int flags, CUdevice dev)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuCtxCreate_v3)
        return CUDA_ERROR_NOT_FOUND;
    return ctx_made(vg__real.cuCtxCreate_v3(pctx, params, n, flags, dev), pctx, dev,
                    "cuCtxCreate_v3");
}

CUresult cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *params, unsigned int flags,
                        CUdevice dev)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuCtxCreate_v4)
        return CUDA_ERROR_NOT_FOUND;
    return ctx_made(vg__real.cuCtxCreate_v4(pctx, params, flags, dev), pctx, dev,
                    "cuCtxCreate_v4");
}

/* The device of a context, asked before it is destroyed. */
static int ctx_device(CUcontext ctx)
{
    CUcontext prev = NULL;
    CUdevice dev = 0;
    const vg__driver_t *d = vg__driver();
    if (d->cuCtxGetCurrent(&prev) != CUDA_SUCCESS)
        return -1;
    if (prev == ctx)
        return d->cuCtxGetDevice(&dev) == CUDA_SUCCESS ? (int)dev : -1;
    if (d->cuCtxSetCurrent(ctx) != CUDA_SUCCESS)
        return -1;
    int rc = d->cuCtxGetDevice(&dev) == CUDA_SUCCESS ? (int)dev : -1;
    d->cuCtxSetCurrent(prev);
    return rc;
}

static CUresult ctx_destroy(CUresult (*real)(CUcontext), CUcontext ctx, const char *api)
{
    if (!real)
        return CUDA_ERROR_NOT_FOUND;
    int device = ctx_device(ctx);
    vg__acct_context_going();
    CUresult cr = real(ctx);
    if (cr == CUDA_SUCCESS && device >= 0)
        vg__acct_context_gone(device, ctx, api);
    return cr;
}

CUresult cuCtxDestroy_v2(CUcontext ctx)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    return ctx_destroy(vg__real.cuCtxDestroy_v2, ctx, "cuCtxDestroy_v2");
}

CUresult cuCtxDestroy(CUcontext ctx)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    return ctx_destroy(vg__real.cuCtxDestroy, ctx, "cuCtxDestroy");
}

CUresult cuCtxSetLimit(CUlimit limit, size_t value)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    vg__limit_op_t op;
    int rc = vg__acct_limit_begin(&op, vg__shim_device(), limit, value);
    if (rc != VG_OK)
        return vg__cu_status(rc);
    CUresult cr = vg__real.cuCtxSetLimit(limit, value);
    vg__acct_limit_end(&op, cr);
    return cr;
}

/* ------------------------------------------------- modules, libraries */

/* A load is measured as it returns: a module's __device__ globals came at
 * cuModuleLoad under lazy loading too (H200, driver 580); what lazy
 * loading defers to a kernel's first launch marks the devices pending
 * (below). */
static CUresult module_loaded(CUresult cr, CUmodule *mod, const char *api)
{
    if (cr != CUDA_SUCCESS || !mod)
        return cr;
    int device = vg__shim_device();
    if (vg__acct_implicit_took(device, api) == VG_OK)
        return cr;
    vg__real.cuModuleUnload(*mod);
    *mod = NULL;
    vg__acct_implicit_undone(device);
    return CUDA_ERROR_OUT_OF_MEMORY;
}

/* A library is not a context's: under eager loading the driver loads it
 * into every context there is at the call, and into each context made
 * later (cuLibraryLoadData's documentation, CUDA 13.0), so every device
 * may have grown; the current one is measured now (and refuses what does
 * not fit), the others at their next allocation. Under lazy loading it
 * loads into a context at the first launch there, which marks them all
 * pending as well. */
static CUresult library_loaded(CUresult cr, CUlibrary *lib, const char *api)
{
    if (cr != CUDA_SUCCESS || !lib)
        return cr;
    int device = vg__shim_device();
    vg__acct_implicit_may_grow();
    if (vg__acct_implicit_took(device, api) == VG_OK)
        return cr;
    vg__real.cuLibraryUnload(*lib);
    *lib = NULL;
    vg__acct_implicit_undone(device);
    return CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult cuModuleLoad(CUmodule *module, const char *fname)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    return module_loaded(vg__real.cuModuleLoad(module, fname), module, "cuModuleLoad");
}

CUresult cuModuleLoadData(CUmodule *module, const void *image)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    return module_loaded(vg__real.cuModuleLoadData(module, image), module, "cuModuleLoadData");
}

CUresult cuModuleLoadDataEx(CUmodule *module, const void *image, unsigned int n,
                            CUjit_option *options, void **values)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    return module_loaded(vg__real.cuModuleLoadDataEx(module, image, n, options, values),
                         module, "cuModuleLoadDataEx");
}

CUresult cuModuleLoadFatBinary(CUmodule *module, const void *fatCubin)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    return module_loaded(vg__real.cuModuleLoadFatBinary(module, fatCubin), module,
                         "cuModuleLoadFatBinary");
}

CUresult cuLibraryLoadData(CUlibrary *library, const void *code, CUjit_option *jitOptions,
                           void **jitOptionsValues, unsigned int numJitOptions,
                           CUlibraryOption *libraryOptions, void **libraryOptionValues,
                           unsigned int numLibraryOptions)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult cr = vg__real.cuLibraryLoadData(library, code, jitOptions, jitOptionsValues,
                                             numJitOptions, libraryOptions,
                                             libraryOptionValues, numLibraryOptions);
    return library_loaded(cr, library, "cuLibraryLoadData");
}

CUresult cuLibraryLoadFromFile(CUlibrary *library, const char *fileName,
                               CUjit_option *jitOptions, void **jitOptionsValues,
                               unsigned int numJitOptions, CUlibraryOption *libraryOptions,
                               void **libraryOptionValues, unsigned int numLibraryOptions)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult cr = vg__real.cuLibraryLoadFromFile(library, fileName, jitOptions,
                                                 jitOptionsValues, numJitOptions,
                                                 libraryOptions, libraryOptionValues,
                                                 numLibraryOptions);
    return library_loaded(cr, library, "cuLibraryLoadFromFile");
}

/* An unload gives memory back: the device is measured again before its
 * next allocation. */
CUresult cuModuleUnload(CUmodule hmod)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult cr = vg__real.cuModuleUnload(hmod);
    if (cr == CUDA_SUCCESS)
        vg__acct_implicit_shrunk(-1);
    return cr;
}

CUresult cuLibraryUnload(CUlibrary library)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult cr = vg__real.cuLibraryUnload(library);
    if (cr == CUDA_SUCCESS)
        vg__acct_implicit_shrunk(-1);
    return cr;
}

/* ------------------------------------------------------------ launches */

/* cuFuncLoad (CUDA 12.4) loads a function, and with lazy loading what its
 * first launch would load: the devices are marked pending as by that
 * launch, or the allocations after it ran on the ledger's figure while the
 * load's memory went uncounted (600 MiB of globals over a 1 GiB budget on
 * the test driver). Like a launch, it is not refused: no call unloads one
 * function. */
CUresult cuFuncLoad(CUfunction function)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuFuncLoad)
        return CUDA_ERROR_NOT_FOUND;
    CUresult cr = vg__real.cuFuncLoad(function);
    vg__acct_implicit_launch(function);
    return cr;
}

/* A kernel's first launch may load code lazily: after the driver returns,
 * the engine marks every device pending when it has not seen `f` before. */
CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                        unsigned int bx, unsigned int by, unsigned int bz,
                        unsigned int shared, CUstream stream, void **params, void **extra)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult cr = vg__real.cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shared, stream,
                                          params, extra);
    vg__acct_implicit_launch(f);
    return cr;
}

CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy,
                             unsigned int gz, unsigned int bx, unsigned int by,
                             unsigned int bz, unsigned int shared, CUstream stream,
                             void **params, void **extra)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuLaunchKernel_ptsz)
        return CUDA_ERROR_NOT_FOUND;
    CUresult cr = vg__real.cuLaunchKernel_ptsz(f, gx, gy, gz, bx, by, bz, shared, stream,
                                               params, extra);
    vg__acct_implicit_launch(f);
    return cr;
}

CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **params,
                          void **extra)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuLaunchKernelEx)
        return CUDA_ERROR_NOT_FOUND;
    CUresult cr = vg__real.cuLaunchKernelEx(config, f, params, extra);
    vg__acct_implicit_launch(f);
    return cr;
}

CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, CUfunction f, void **params,
                               void **extra)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuLaunchKernelEx_ptsz)
        return CUDA_ERROR_NOT_FOUND;
    CUresult cr = vg__real.cuLaunchKernelEx_ptsz(config, f, params, extra);
    vg__acct_implicit_launch(f);
    return cr;
}

CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gx, unsigned int gy,
                                   unsigned int gz, unsigned int bx, unsigned int by,
                                   unsigned int bz, unsigned int shared, CUstream stream,
                                   void **params)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuLaunchCooperativeKernel)
        return CUDA_ERROR_NOT_FOUND;
    CUresult cr = vg__real.cuLaunchCooperativeKernel(f, gx, gy, gz, bx, by, bz, shared,
                                                     stream, params);
    vg__acct_implicit_launch(f);
    return cr;
}

CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy,
                                        unsigned int gz, unsigned int bx, unsigned int by,
                                        unsigned int bz, unsigned int shared,
                                        CUstream stream, void **params)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuLaunchCooperativeKernel_ptsz)
        return CUDA_ERROR_NOT_FOUND;
    CUresult cr = vg__real.cuLaunchCooperativeKernel_ptsz(f, gx, gy, gz, bx, by, bz,
                                                          shared, stream, params);
    vg__acct_implicit_launch(f);
    return cr;
}
