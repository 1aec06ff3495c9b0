/*
 * module.c: modules (cuModuleLoad*), libraries (cuLibraryLoad*), their
 * kernels and kernel launches, as far as memory goes. Images use the text
 * format of fakecuda.h ("fakecuda-module globals=BYTES kernels=a,b").
 *
 * A module's globals are device memory no allocation call shows. They are
 * charged when the module really loads: at load under
 * CUDA_MODULE_LOADING=EAGER, otherwise (lazy, the CUDA 12.2+ default) at
 * the first launch of one of its kernels or at cuFuncLoad, as measured on
 * an H200 (docs/accounting.md). A load that does not fit is
 * CUDA_ERROR_OUT_OF_MEMORY and charges nothing.
 *
 * Simplifications: a module belongs to the context current at its load; a
 * library (context-independent in the real driver) loads into one context,
 * the current one at an eager load or at its first launch, and goes back to
 * unloaded when that context stops. An eager load also loads it into every
 * other device's live primary context (as the real driver loads it into
 * every context there is), as a hidden copy of its globals there that the
 * library's unload or that context's end frees; created contexts and
 * contexts made later get none. A kernel (CUkernel) and its function
 * (CUfunction) are one object, so either handle launches. A launch runs
 * nothing: it loads lazily and charges deferred limits (limit.c).
 */
#include "fakecuda.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FC_IMAGE_MAX 4096      /* bytes of image text, NUL included */
#define FC_KERNELS_MAX 16
#define FC_NAME_MAX 64         /* bytes, NUL included */
#define FC_MAGIC "fakecuda-module"

struct CUfunc_st {
    struct CUmod_st *mod;
    char name[FC_NAME_MAX];
};

struct CUmod_st {
    CUcontext ctx;          /* loaded into / bound to; NULL: a library not yet loaded */
    size_t globals;         /* bytes */
    bool loaded;            /* globals charged to ctx->dev */
    bool library;
    struct CUmod_st *origin; /* a hidden copy: the library it was loaded for */
    int nfuncs;
    struct CUfunc_st funcs[FC_KERNELS_MAX];
    struct CUmod_st *next;
};

static struct CUmod_st *g_modules;   /* every live module and library */

/* ---- the image format ---- */

/* Parses kernels=a,b,c into m; false on a malformed list. */
static bool parse_kernels(const char *v, size_t len, struct CUmod_st *m)
{
    while (len > 0) {
        const char *comma = memchr(v, ',', len);
        size_t n = comma ? (size_t)(comma - v) : len;
        if (n == 0 || n >= FC_NAME_MAX || m->nfuncs == FC_KERNELS_MAX)
            return false;
        struct CUfunc_st *f = &m->funcs[m->nfuncs++];
        memcpy(f->name, v, n);
        f->name[n] = '\0';
        f->mod = m;
        v += n + (comma != NULL);
        len -= n + (comma != NULL);
    }
    return true;
}

static bool parse_field(const char *w, size_t len, struct CUmod_st *m)
{
    if (len > 8 && !strncmp(w, "globals=", 8)) {
        char num[32], *end;
        if (len - 8 >= sizeof num || w[8] == '-')
            return false;
        memcpy(num, w + 8, len - 8);
        num[len - 8] = '\0';
        m->globals = (size_t)strtoull(num, &end, 10);
        return *end == '\0';
    }
    if (len > 8 && !strncmp(w, "kernels=", 8))
        return parse_kernels(w + 8, len - 8, m);
    return false;
}

/* Fills m from a NUL-terminated image; false: CUDA_ERROR_INVALID_IMAGE. */
static bool parse_image(const char *text, struct CUmod_st *m)
{
    size_t n = strnlen(text, FC_IMAGE_MAX);
    if (n == FC_IMAGE_MAX || strncmp(text, FC_MAGIC, strlen(FC_MAGIC)) != 0)
        return false;
    const char *p = text + strlen(FC_MAGIC);
    if (*p && *p != ' ' && *p != '\n')
        return false;
    while (*p) {
        p += strspn(p, " \n");
        size_t len = strcspn(p, " \n");
        if (len && !parse_field(p, len, m))
            return false;
        p += len;
    }
    return true;
}

/* ---- loading and unloading (lock held) ---- */

/* Charges m's globals to ctx, once. */
static CUresult module_charge(struct CUmod_st *m, CUcontext ctx)
{
    if (m->loaded)
        return CUDA_SUCCESS;
    CUresult rc = fc_charge_implicit(ctx->dev, m->globals);
    if (rc != CUDA_SUCCESS)
        return rc;
    m->loaded = true;
    m->ctx = ctx;
    return CUDA_SUCCESS;
}

static void module_uncharge(struct CUmod_st *m)
{
    if (m->loaded)
        fc_uncharge_implicit(m->ctx->dev, m->globals);
    m->loaded = false;
}

static void module_free(struct CUmod_st *m)
{
    module_uncharge(m);
    for (struct CUmod_st **pp = &g_modules; *pp; pp = &(*pp)->next)
        if (*pp == m) {
            *pp = m->next;
            break;
        }
    for (int i = 0; i < m->nfuncs; i++)
        fc_handle_del(&m->funcs[i]);
    fc_handle_del(m);
    free(m);
}

/* Frees the hidden copies of library m (m is not NULL). */
static void copies_free(const struct CUmod_st *m)
{
    for (struct CUmod_st *c = g_modules, *next; c; c = next) {
        next = c->next;
        if (c->origin == m)
            module_free(c);
    }
}

/* An eager library load: a charged copy of m's globals in every other
 * device's live primary context. OOM (nothing left charged) when one does
 * not fit. */
static CUresult copies_load(struct CUmod_st *m, CUcontext current)
{
    for (int dev = 0; dev < fc_device_count(); dev++) {
        CUcontext pc = fc_ctx_primary_live(dev);
        if (!pc || pc == current)
            continue;
        struct CUmod_st *c = calloc(1, sizeof *c);
        if (!c)
            abort();
        c->globals = m->globals;
        c->origin = m;
        CUresult rc = module_charge(c, pc);
        if (rc != CUDA_SUCCESS) {
            free(c);
            copies_free(m);
            return rc;
        }
        c->next = g_modules;
        g_modules = c;
    }
    return CUDA_SUCCESS;
}

/* A module needs a current context; a library takes one if there is. */
static CUresult module_load(const char *text, bool library, struct CUmod_st **out)
{
    CUcontext ctx = NULL;
    CUresult rc = fc_ctx_current(&ctx);
    if (rc != CUDA_SUCCESS && !(library && rc == CUDA_ERROR_INVALID_CONTEXT))
        return rc;
    struct CUmod_st *m = calloc(1, sizeof *m);
    if (!m)
        abort();   /* test driver: host OOM is not a case we model */
    m->library = library;
    m->ctx = ctx;
    if (!parse_image(text, m)) {
        free(m);
        return CUDA_ERROR_INVALID_IMAGE;
    }
    if (fc_knobs_get()->eager_modules && ctx && (rc = module_charge(m, ctx)) != CUDA_SUCCESS) {
        free(m);
        return rc;
    }
    if (fc_knobs_get()->eager_modules && library && (rc = copies_load(m, ctx)) != CUDA_SUCCESS) {
        module_uncharge(m);
        free(m);
        return rc;
    }
    fc_handle_add(m, library ? FC_H_LIBRARY : FC_H_MODULE);
    for (int i = 0; i < m->nfuncs; i++)
        fc_handle_add(&m->funcs[i], FC_H_FUNC);
    m->next = g_modules;
    g_modules = m;
    *out = m;
    return CUDA_SUCCESS;
}

void fc_module_release_ctx(CUcontext ctx)
{
    for (struct CUmod_st *m = g_modules, *next; m; m = next) {
        next = m->next;
        if (m->ctx != ctx)
            continue;
        if (m->library) {
            module_uncharge(m);
            m->ctx = NULL;
        } else {
            module_free(m);
        }
    }
}

/* ---- modules ---- */

static CUresult load_entry(const void *image, bool library, struct CUmod_st **out)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!out || !image)
        return CUDA_ERROR_INVALID_VALUE;
    fc_lock();
    CUresult rc = module_load(image, library, out);
    fc_unlock();
    return rc;
}

/* Reads a module file into buf (NUL-terminated); FILE_NOT_FOUND if none. */
static CUresult read_image(const char *path, char buf[FC_IMAGE_MAX])
{
    if (!path)
        return CUDA_ERROR_INVALID_VALUE;
    FILE *f = fopen(path, "rb");
    if (!f)
        return CUDA_ERROR_FILE_NOT_FOUND;
    size_t n = fread(buf, 1, FC_IMAGE_MAX - 1, f);
    buf[n] = '\0';
    fclose(f);
    return CUDA_SUCCESS;
}

CUresult cuModuleLoadData(CUmodule *module, const void *image)
{
    return load_entry(image, false, module);
}

CUresult cuModuleLoadDataEx(CUmodule *module, const void *image, unsigned int numOptions,
                            CUjit_option *options, void **optionValues)
{
    if (numOptions && (!options || !optionValues))
        return CUDA_ERROR_INVALID_VALUE;
    return load_entry(image, false, module);
}

CUresult cuModuleLoadFatBinary(CUmodule *module, const void *fatCubin)
{
    return load_entry(fatCubin, false, module);
}

CUresult cuModuleLoad(CUmodule *module, const char *fname)
{
    char buf[FC_IMAGE_MAX];
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult rc = read_image(fname, buf);
    return rc == CUDA_SUCCESS ? load_entry(buf, false, module) : rc;
}

CUresult cuModuleUnload(CUmodule hmod)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_lock();
    bool ok = fc_handle_ok(hmod, FC_H_MODULE);
    if (ok)
        module_free(hmod);
    fc_unlock();
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

CUresult cuModuleGetLoadingMode(CUmoduleLoadingMode *mode)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!mode)
        return CUDA_ERROR_INVALID_VALUE;
    *mode = fc_knobs_get()->eager_modules ? CU_MODULE_EAGER_LOADING : CU_MODULE_LAZY_LOADING;
    return CUDA_SUCCESS;
}

/* Lock held: the kernel called name in a live module or library. */
static CUresult find_func(struct CUmod_st *m, fc_htype type, const char *name, struct CUfunc_st **out)
{
    if (!fc_handle_ok(m, type))
        return CUDA_ERROR_INVALID_HANDLE;
    if (!name || !out)
        return CUDA_ERROR_INVALID_VALUE;
    for (int i = 0; i < m->nfuncs; i++)
        if (!strcmp(m->funcs[i].name, name)) {
            *out = &m->funcs[i];
            return CUDA_SUCCESS;
        }
    return CUDA_ERROR_NOT_FOUND;
}

CUresult cuModuleGetFunction(CUfunction *hfunc, CUmodule hmod, const char *name)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_lock();
    CUresult rc = find_func(hmod, FC_H_MODULE, name, hfunc);
    fc_unlock();
    return rc;
}

/* ---- libraries ---- */

CUresult cuLibraryLoadData(CUlibrary *library, const void *code, CUjit_option *jitOptions,
                           void **jitOptionsValues, unsigned int numJitOptions,
                           CUlibraryOption *libraryOptions, void **libraryOptionValues,
                           unsigned int numLibraryOptions)
{
    (void)jitOptions, (void)jitOptionsValues, (void)numJitOptions;
    (void)libraryOptions, (void)libraryOptionValues, (void)numLibraryOptions;
    struct CUmod_st *m = NULL;
    CUresult rc = load_entry(code, true, library ? &m : NULL);
    if (rc == CUDA_SUCCESS)
        *library = (CUlibrary)(void *)m;
    return rc;
}

CUresult cuLibraryLoadFromFile(CUlibrary *library, const char *fileName, CUjit_option *jitOptions,
                               void **jitOptionsValues, unsigned int numJitOptions,
                               CUlibraryOption *libraryOptions, void **libraryOptionValues,
                               unsigned int numLibraryOptions)
{
    char buf[FC_IMAGE_MAX];
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult rc = read_image(fileName, buf);
    if (rc != CUDA_SUCCESS)
        return rc;
    return cuLibraryLoadData(library, buf, jitOptions, jitOptionsValues, numJitOptions,
                             libraryOptions, libraryOptionValues, numLibraryOptions);
}

CUresult cuLibraryUnload(CUlibrary library)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    struct CUmod_st *m = (struct CUmod_st *)(void *)library;
    fc_lock();
    bool ok = fc_handle_ok(m, FC_H_LIBRARY);
    if (ok) {
        copies_free(m);
        module_free(m);
    }
    fc_unlock();
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

CUresult cuLibraryGetKernel(CUkernel *pKernel, CUlibrary library, const char *name)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    struct CUfunc_st *f = NULL;
    fc_lock();
    CUresult rc = find_func((struct CUmod_st *)(void *)library, FC_H_LIBRARY, name,
                            pKernel ? &f : NULL);
    fc_unlock();
    if (rc == CUDA_SUCCESS)
        *pKernel = (CUkernel)(void *)f;
    return rc;
}

/* The function of a kernel in the current context: the same object. */
CUresult cuKernelGetFunction(CUfunction *pFunc, CUkernel kernel)
{
    CUcontext ctx;
    fc_lock();
    CUresult rc = fc_ctx_current(&ctx);
    if (rc == CUDA_SUCCESS && !pFunc)
        rc = CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS && !fc_handle_ok((void *)kernel, FC_H_FUNC))
        rc = CUDA_ERROR_INVALID_HANDLE;
    if (rc == CUDA_SUCCESS)
        *pFunc = (CUfunction)(void *)kernel;
    fc_unlock();
    return rc;
}

/* ---- loading state and launches ---- */

CUresult cuFuncIsLoaded(CUfunctionLoadingState *state, CUfunction function)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!state)
        return CUDA_ERROR_INVALID_VALUE;
    fc_lock();
    bool ok = fc_handle_ok(function, FC_H_FUNC);
    if (ok)
        *state = function->mod->loaded ? CU_FUNCTION_LOADING_STATE_LOADED
                                       : CU_FUNCTION_LOADING_STATE_UNLOADED;
    fc_unlock();
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

/* Lock held: loads f's module into its context (a library: the current). */
static CUresult func_load(struct CUfunc_st *f)
{
    CUcontext ctx = f->mod->ctx;
    CUresult rc = ctx ? CUDA_SUCCESS : fc_ctx_current(&ctx);
    return rc == CUDA_SUCCESS ? module_charge(f->mod, ctx) : rc;
}

CUresult fc_func_load_locked(CUfunction f)
{
    return fc_handle_ok(f, FC_H_FUNC) ? func_load(f) : CUDA_ERROR_INVALID_HANDLE;
}

CUresult cuFuncLoad(CUfunction function)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_lock();
    CUresult rc = fc_handle_ok(function, FC_H_FUNC) ? func_load(function) : CUDA_ERROR_INVALID_HANDLE;
    fc_unlock();
    return rc;
}

typedef struct {
    unsigned int grid[3], block[3];
    CUstream stream;
} launch_req;

/* Driver order: context, function, dimensions, stream; then the memory a
 * launch may take (the module, deferred limits), OOM if it does not fit. */
static CUresult launch(CUfunction f, const launch_req *r)
{
    CUcontext ctx;
    int dev;
    fc_lock();
    CUresult rc = fc_ctx_current(&ctx);
    if (rc == CUDA_SUCCESS && !fc_handle_ok(f, FC_H_FUNC))
        rc = CUDA_ERROR_INVALID_HANDLE;
    for (int i = 0; i < 3 && rc == CUDA_SUCCESS; i++)
        if (r->grid[i] == 0 || r->block[i] == 0)
            rc = CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS)
        rc = fc_stream_device(r->stream, &dev);
    if (rc == CUDA_SUCCESS)
        rc = module_charge(f->mod, f->mod->ctx ? f->mod->ctx : ctx);
    if (rc == CUDA_SUCCESS)
        rc = fc_limits_apply(ctx);
    fc_unlock();
    return rc;
}

CUresult cuLaunchKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY,
                        unsigned int gridDimZ, unsigned int blockDimX, unsigned int blockDimY,
                        unsigned int blockDimZ, unsigned int sharedMemBytes, CUstream hStream,
                        void **kernelParams, void **extra)
{
    (void)sharedMemBytes, (void)kernelParams, (void)extra;
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    launch_req r = { { gridDimX, gridDimY, gridDimZ }, { blockDimX, blockDimY, blockDimZ }, hStream };
    return launch(f, &r);
}

CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gridDimX, unsigned int gridDimY,
                             unsigned int gridDimZ, unsigned int blockDimX, unsigned int blockDimY,
                             unsigned int blockDimZ, unsigned int sharedMemBytes, CUstream hStream,
                             void **kernelParams, void **extra)
{
    return cuLaunchKernel(f, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ,
                          sharedMemBytes, hStream, kernelParams, extra);
}

CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **kernelParams, void **extra)
{
    (void)kernelParams, (void)extra;
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!config || (config->numAttrs && !config->attrs))
        return CUDA_ERROR_INVALID_VALUE;
    launch_req r = { { config->gridDimX, config->gridDimY, config->gridDimZ },
                     { config->blockDimX, config->blockDimY, config->blockDimZ }, config->hStream };
    return launch(f, &r);
}

CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, CUfunction f, void **kernelParams,
                               void **extra)
{
    return cuLaunchKernelEx(config, f, kernelParams, extra);
}
