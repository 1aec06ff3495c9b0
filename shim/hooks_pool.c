/*
 * hooks_pool.c — what a program can learn about a pointer, kept true in
 * cache mode (VRAMGUARD_POOL=cache, lib/account_pooled.c).
 *
 * A pooled block is a slice of a chunk the driver allocated, so the driver
 * would describe the chunk. These hooks describe the block instead: its
 * address range is the allocation the program made, its buffer id is its
 * own, and it is kept out of legacy IPC (an importer would map the whole
 * chunk at a different offset). An address inside a chunk but in no live
 * block is answered as the driver answers for memory it does not know.
 *
 * With the mode off (the default) each hook is one predictable branch and a
 * call of the real entry point: the driver's answer, untouched. The legacy
 * 32-bit cuMemGetAddressRange stays a pass-through: pooled blocks are only
 * made through cuMemAlloc_v2 (hooks_mem.c).
 */
#include "shim.h"

/* The pooled record holding ptr (VG_OK), VG_EBADPTR for a chunk address
 * in no live block, VG_ENOTFOUND when the driver's answer stands. */
static inline int pooled_lookup(CUdeviceptr ptr, vg__alloc_t *a)
{
    if (vg__likely(!vg__cache_mode_on()))
        return VG_ENOTFOUND;
    return vg__acct_pooled_find(ptr, a);
}

/* Rewrites one attribute that describes the driver allocation rather than
 * the program's (types as the driver writes them). */
static void block_view(CUpointer_attribute attr, const vg__alloc_t *a, void *data)
{
    switch (attr) {
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR:
    case CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR:
        *(CUdeviceptr *)data = a->ptr;
        break;
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE:
    case CU_POINTER_ATTRIBUTE_MAPPING_SIZE:
        *(size_t *)data = a->size;
        break;
    case CU_POINTER_ATTRIBUTE_BUFFER_ID:
    case CU_POINTER_ATTRIBUTE_MEMORY_BLOCK_ID:
        *(unsigned long long *)data = vg__pooled_buffer_id(a);
        break;
    case CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE:
        *(unsigned int *)data = 0; /* measured: booleans are 4 bytes */
        break;
    default:
        break;
    }
}

CUresult cuMemGetAddressRange_v2(CUdeviceptr *pbase, size_t *psize, CUdeviceptr dptr)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    vg__alloc_t a;
    int rc = pooled_lookup(dptr, &a);
    if (vg__likely(rc == VG_ENOTFOUND))
        return vg__real.cuMemGetAddressRange_v2(pbase, psize, dptr);
    if (rc != VG_OK)
        return CUDA_ERROR_NOT_FOUND; /* the driver's answer for an unknown address */
    if (pbase)
        *pbase = a.ptr;
    if (psize)
        *psize = a.size;
    return CUDA_SUCCESS;
}

CUresult cuPointerGetAttribute(void *data, CUpointer_attribute attribute, CUdeviceptr ptr)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    vg__alloc_t a;
    int rc = pooled_lookup(ptr, &a);
    if (vg__likely(rc == VG_ENOTFOUND))
        return vg__real.cuPointerGetAttribute(data, attribute, ptr);
    if (rc != VG_OK)
        return CUDA_ERROR_INVALID_VALUE; /* as for any address it does not know */
    CUresult cr = vg__real.cuPointerGetAttribute(data, attribute, ptr);
    if (cr == CUDA_SUCCESS)
        block_view(attribute, &a, data);
    return cr;
}

CUresult cuPointerGetAttributes(unsigned int numAttributes, CUpointer_attribute *attributes,
                                void **data, CUdeviceptr ptr)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    vg__alloc_t a;
    int rc = pooled_lookup(ptr, &a);
    if (vg__likely(rc == VG_ENOTFOUND))
        return vg__real.cuPointerGetAttributes(numAttributes, attributes, data, ptr);
    /* A freed block: what the driver says of an address it does not know
     * (not an error for this call: every attribute gets its default). */
    if (rc != VG_OK)
        return vg__real.cuPointerGetAttributes(numAttributes, attributes, data, 0);
    CUresult cr = vg__real.cuPointerGetAttributes(numAttributes, attributes, data, ptr);
    for (unsigned int i = 0; cr == CUDA_SUCCESS && i < numAttributes; i++)
        if (data[i])
            block_view(attributes[i], &a, data[i]);
    return cr;
}

/* Pooled blocks are kept out of legacy IPC: the handle would name the whole
 * chunk, which the importer maps at its own base. Refused, as the driver
 * refuses memory that is not IPC-capable; the program can run with
 * VRAMGUARD_POOL=off. */
CUresult cuIpcGetMemHandle(CUipcMemHandle *pHandle, CUdeviceptr dptr)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    vg__alloc_t a;
    if (vg__unlikely(pooled_lookup(dptr, &a) != VG_ENOTFOUND)) {
        static _Atomic int said;
        if (!atomic_exchange_explicit(&said, 1, memory_order_relaxed))
            vg__log("cuIpcGetMemHandle(0x%llx): a VRAMGUARD_POOL=cache block cannot be "
                    "shared; refused with CUDA_ERROR_INVALID_VALUE (run with "
                    "VRAMGUARD_POOL=off to share it)",
                    (unsigned long long)dptr);
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (!vg__real.cuIpcGetMemHandle)
        return CUDA_ERROR_NOT_FOUND;
    return vg__real.cuIpcGetMemHandle(pHandle, dptr);
}

/* The primary context of dev while it is active, else NULL (none can
 * hold an array then). Retained and released at once: its count is at
 * least 1 while active, so this changes nothing. */
static CUcontext primary_of(CUdevice dev)
{
    const vg__driver_t *d = vg__driver();
    unsigned int flags = 0;
    int active = 0;
    CUcontext ctx = NULL;
    if (d->cuDevicePrimaryCtxGetState(dev, &flags, &active) != CUDA_SUCCESS || !active ||
        d->cuDevicePrimaryCtxRetain(&ctx, dev) != CUDA_SUCCESS)
        return NULL;
    d->cuDevicePrimaryCtxRelease_v2(dev);
    return ctx;
}

/* A reset destroys every allocation of the primary context, the pool's
 * chunks and its arrays included: the pool is released first, then the
 * driver resets, then the records of what died with it are dropped and
 * uncharged. */
static CUresult primary_reset(CUresult (*real)(CUdevice), CUdevice dev)
{
    if (!real)
        return CUDA_ERROR_NOT_FOUND;
    if (vg__unlikely(vg__cache_mode_on()))
        vg__acct_pooled_reset((int)dev);
    CUcontext primary = primary_of(dev);
    vg__acct_context_going();
    CUresult cr = real(dev);
    if (cr == CUDA_SUCCESS)
        vg__acct_context_gone((int)dev, primary, "cuDevicePrimaryCtxReset");
    return cr;
}

CUresult cuDevicePrimaryCtxReset(CUdevice dev)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    return primary_reset(vg__real.cuDevicePrimaryCtxReset, dev);
}

CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    return primary_reset(vg__real.cuDevicePrimaryCtxReset_v2, dev);
}

/* The driver's id of ctx (cuCtxGetId, CUDA 12.0 and later; an optional
 * entry point, looked up on each call: releases are rare), 0 when it
 * cannot say. Unique for the life of the process, so a primary context
 * re-created after a reset has a new one. */
static unsigned long long ctx_id(CUcontext ctx)
{
    CUresult (*get)(CUcontext, unsigned long long *) =
        (CUresult(*)(CUcontext, unsigned long long *))vg__real_dlsym(vg__driver()->handle,
                                                                     "cuCtxGetId");
    unsigned long long id = 0;
    if (!ctx || !get || get(ctx, &id) != CUDA_SUCCESS)
        return 0;
    return id;
}

/* After a release of the primary context that was active with id `id`:
 * true when that release was the last and reset it. Another thread may
 * retain it again at once, so "not active now" is not enough: an active
 * primary context with another id is a new one (the sweep was skipped
 * and the dead context's records stayed charged for good). Without
 * cuCtxGetId only the state can tell. */
static bool primary_went(CUdevice dev, unsigned long long id)
{
    CUcontext now = primary_of(dev);
    return !now || (id && ctx_id(now) != id);
}

/* The last release of the primary context resets it (the driver's
 * documentation): what it owned dies as at cuDevicePrimaryCtxReset, and
 * its records go the same way. A release that leaves the context active
 * changes nothing. (A cache-mode pool holds a reference of its own, so its
 * chunks never die this way.) */
static CUresult primary_release(CUresult (*real)(CUdevice), CUdevice dev)
{
    if (!real)
        return CUDA_ERROR_NOT_FOUND;
    CUcontext primary = primary_of(dev);
    unsigned long long id = ctx_id(primary);
    if (primary)
        vg__acct_context_going(); /* this release may be the last */
    CUresult cr = real(dev);
    if (cr == CUDA_SUCCESS && primary && primary_went(dev, id))
        vg__acct_context_gone((int)dev, primary, "cuDevicePrimaryCtxRelease");
    return cr;
}

CUresult cuDevicePrimaryCtxRelease(CUdevice dev)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    return primary_release(vg__real.cuDevicePrimaryCtxRelease, dev);
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    return primary_release(vg__real.cuDevicePrimaryCtxRelease_v2, dev);
}
