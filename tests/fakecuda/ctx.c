/*
 * ctx.c: contexts (primary and created) and the per-thread context stack
 * (streams and events: stream.c). cuCtxSynchronize is a sync point at
 * which memory pools give unused reserve back (fc_pool_sync).
 *
 * A context's own memory (FAKECUDA_CONTEXT_BYTES) is charged when it starts:
 * at cuCtxCreate, when the primary context is first retained, and at the
 * first use of a primary context after a reset (the real driver re-creates
 * it then). Stopping it (destroy, last release, reset) gives back that
 * memory and everything made in it: allocations, arrays, modules, limits.
 */
#include "fakecuda.h"

#include <stdlib.h>

#define FC_CTX_STACK 64

static struct CUctx_st g_primary[FC_MAX_DEVICES];
/* The calling thread's context stack; the top is the current context. */
static _Thread_local CUcontext t_stack[FC_CTX_STACK];
static _Thread_local int t_depth;

static unsigned long long g_ctx_ids; /* the last cuCtxGetId handed out */

static bool is_primary(CUcontext c)
{
    return c >= &g_primary[0] && c < &g_primary[FC_MAX_DEVICES];
}

/* A primary context lives while retained; a created one until destroyed. */
static bool ctx_live(CUcontext c)
{
    if (is_primary(c))
        return c->retain > 0;
    return c && fc_handle_ok(c, FC_H_CTX);
}

/* Lock held: charges the context's own memory, limits at their defaults. */
static CUresult ctx_start(CUcontext c)
{
    CUresult rc = fc_charge_implicit(c->dev, fc_knobs_get()->context_bytes);
    if (rc != CUDA_SUCCESS)
        return rc;
    c->started = true;
    c->id = ++g_ctx_ids;
    fc_limits_reset(c);
    return CUDA_SUCCESS;
}

/* Lock held: gives back everything the context holds, itself included. */
static void ctx_stop(CUcontext c)
{
    fc_mem_release_ctx(c);
    fc_array_release_ctx(c);
    fc_module_release_ctx(c);
    fc_limits_release(c);
    if (c->started)
        fc_uncharge_implicit(c->dev, fc_knobs_get()->context_bytes);
    c->started = false;
}

CUresult fc_ctx_current(CUcontext *ctx)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (t_depth == 0 || !ctx_live(t_stack[t_depth - 1]))
        return CUDA_ERROR_INVALID_CONTEXT;
    CUcontext c = t_stack[t_depth - 1];
    if (!c->started) {   /* a primary context used again after a reset */
        CUresult rc = ctx_start(c);
        if (rc != CUDA_SUCCESS)
            return rc;
    }
    *ctx = c;
    return CUDA_SUCCESS;
}

CUcontext fc_ctx_primary_live(int dev)
{
    if (dev < 0 || dev >= fc_device_count())
        return NULL;
    CUcontext c = &g_primary[dev];
    return c->retain > 0 && c->started ? c : NULL;
}

/* Removes every occurrence of ctx from the calling thread's stack. */
static void unstack(CUcontext ctx)
{
    int j = 0;
    for (int i = 0; i < t_depth; i++)
        if (t_stack[i] != ctx)
            t_stack[j++] = t_stack[i];
    t_depth = j;
}

/* ---- primary contexts ---- */

CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fc_device_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    fc_lock();
    CUcontext c = &g_primary[dev];
    c->dev = dev;
    c->primary = true;
    CUresult rc = c->started ? CUDA_SUCCESS : ctx_start(c);
    if (rc == CUDA_SUCCESS) {
        c->retain++;
        *pctx = c;
    }
    fc_unlock();
    return rc;
}

/* The last release destroys the primary context and the memory it owned. */
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!fc_device_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    CUresult rc = CUDA_SUCCESS;
    fc_lock();
    if (g_primary[dev].retain == 0)
        rc = CUDA_ERROR_INVALID_CONTEXT;
    else if (--g_primary[dev].retain == 0)
        ctx_stop(&g_primary[dev]);
    fc_unlock();
    if (rc == CUDA_SUCCESS)
        fc_primary_release_delay();
    return rc;
}

CUresult cuDevicePrimaryCtxRelease(CUdevice dev)
{
    return cuDevicePrimaryCtxRelease_v2(dev);
}

/* Destroys the memory the primary context owned, its own included, and
 * keeps the handle: the driver's documentation says a reset does not
 * release it, so a program that retained it goes on using (and must still
 * release) the same handle, which starts again at its next use.
 * Resetting a context that is not active is not an error. */
CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!fc_device_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    fc_lock();
    ctx_stop(&g_primary[dev]);
    fc_unlock();
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxReset(CUdevice dev)
{
    return cuDevicePrimaryCtxReset_v2(dev);
}

/* Unique for the life of the process: a primary context re-created after
 * a reset or its last release has a new id, as a new context would. NULL:
 * the current context. */
CUresult cuCtxGetId(CUcontext ctx, unsigned long long *ctxId)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!ctxId)
        return CUDA_ERROR_INVALID_VALUE;
    fc_lock();
    CUresult rc = CUDA_SUCCESS;
    if (!ctx)
        rc = fc_ctx_current(&ctx);
    else if (!ctx_live(ctx))
        rc = CUDA_ERROR_CONTEXT_IS_DESTROYED;
    if (rc == CUDA_SUCCESS)
        *ctxId = ctx->id;
    fc_unlock();
    return rc;
}

CUresult cuDevicePrimaryCtxGetState(CUdevice dev, unsigned int *flags, int *active)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!flags || !active)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fc_device_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    fc_lock();
    *flags = 0;
    *active = g_primary[dev].retain > 0;
    fc_unlock();
    return CUDA_SUCCESS;
}

/* ---- created contexts (every ABI generation cuda.h still declares) ---- */

static CUresult ctx_create(CUcontext *pctx, CUdevice dev)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fc_device_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    if (t_depth == FC_CTX_STACK)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUcontext c = calloc(1, sizeof *c);
    if (!c)
        return CUDA_ERROR_OUT_OF_MEMORY;
    c->dev = dev;
    fc_lock();
    CUresult rc = ctx_start(c);
    if (rc == CUDA_SUCCESS)
        fc_handle_add(c, FC_H_CTX);
    fc_unlock();
    if (rc != CUDA_SUCCESS) {
        free(c);
        return rc;
    }
    t_stack[t_depth++] = c;   /* a new context is pushed on the caller's stack */
    *pctx = c;
    return CUDA_SUCCESS;
}

CUresult cuCtxCreate(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    (void)flags;
    return ctx_create(pctx, dev);
}

CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    (void)flags;
    return ctx_create(pctx, dev);
}

CUresult cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *paramsArray, int numParams,
                        unsigned int flags, CUdevice dev)
{
    (void)paramsArray, (void)numParams, (void)flags;
    return ctx_create(pctx, dev);
}

CUresult cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *ctxCreateParams, unsigned int flags,
                        CUdevice dev)
{
    (void)ctxCreateParams, (void)flags;
    return ctx_create(pctx, dev);
}

/* Destroying frees what the context still owned; a primary context is
 * refused (it goes away through cuDevicePrimaryCtxRelease). */
CUresult cuCtxDestroy_v2(CUcontext ctx)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_lock();
    if (!ctx || is_primary(ctx) || !fc_handle_ok(ctx, FC_H_CTX)) {
        fc_unlock();
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    ctx_stop(ctx);
    fc_handle_del(ctx);
    fc_unlock();
    unstack(ctx);
    free(ctx);
    fc_ctx_destroy_delay();
    return CUDA_SUCCESS;
}

CUresult cuCtxDestroy(CUcontext ctx) { return cuCtxDestroy_v2(ctx); }

CUresult cuCtxGetCurrent(CUcontext *pctx)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    *pctx = t_depth ? t_stack[t_depth - 1] : NULL;
    return CUDA_SUCCESS;
}

/* Replaces the top of the stack; NULL unbinds (pops) the current one. */
CUresult cuCtxSetCurrent(CUcontext ctx)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!ctx) {
        if (t_depth)
            t_depth--;
        return CUDA_SUCCESS;
    }
    fc_lock();
    bool ok = ctx_live(ctx);
    fc_unlock();
    if (!ok)
        return CUDA_ERROR_INVALID_CONTEXT;
    if (t_depth == 0)
        t_depth = 1;
    t_stack[t_depth - 1] = ctx;
    return CUDA_SUCCESS;
}

CUresult cuCtxPushCurrent_v2(CUcontext ctx)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!ctx)
        return CUDA_ERROR_INVALID_VALUE;
    fc_lock();
    bool ok = ctx_live(ctx);
    fc_unlock();
    if (!ok)
        return CUDA_ERROR_INVALID_CONTEXT;
    if (t_depth == FC_CTX_STACK)
        return CUDA_ERROR_OUT_OF_MEMORY;
    t_stack[t_depth++] = ctx;
    return CUDA_SUCCESS;
}

CUresult cuCtxPushCurrent(CUcontext ctx) { return cuCtxPushCurrent_v2(ctx); }

CUresult cuCtxPopCurrent_v2(CUcontext *pctx)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (t_depth == 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    CUcontext c = t_stack[--t_depth];
    if (pctx)
        *pctx = c;
    return CUDA_SUCCESS;
}

CUresult cuCtxPopCurrent(CUcontext *pctx) { return cuCtxPopCurrent_v2(pctx); }

CUresult cuCtxGetDevice(CUdevice *device)
{
    if (fc_initialized() && !device)
        return CUDA_ERROR_INVALID_VALUE;
    CUcontext ctx;
    fc_lock();
    CUresult rc = fc_ctx_current(&ctx);
    if (rc == CUDA_SUCCESS)
        *device = ctx->dev;
    fc_unlock();
    return rc;
}

/* CUDA 13: the context is named (NULL: the current one). */
CUresult cuCtxGetDevice_v2(CUdevice *device, CUcontext ctx)
{
    if (!ctx)
        return cuCtxGetDevice(device);
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!device)
        return CUDA_ERROR_INVALID_VALUE;
    fc_lock();
    bool ok = ctx_live(ctx);
    if (ok)
        *device = ctx->dev;
    fc_unlock();
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
}

CUresult cuCtxSynchronize_v2(CUcontext ctx)
{
    if (!ctx)
        return cuCtxSynchronize();
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_lock();
    bool ok = ctx_live(ctx);
    if (ok)
        fc_pool_sync();
    fc_unlock();
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
}

CUresult cuCtxSynchronize(void)
{
    CUcontext ctx;
    fc_lock();
    CUresult rc = fc_ctx_current(&ctx);
    if (rc == CUDA_SUCCESS)
        fc_pool_sync();
    fc_unlock();
    return rc;
}
