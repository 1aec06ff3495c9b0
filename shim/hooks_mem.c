/*
 * hooks_mem.c — plain, pitched and managed allocations, their frees, and
 * the memory views (cuMemGetInfo, cuDeviceTotalMem) that make a process see
 * its budget as its card. Each hook: started? ask the engine, call the real
 * driver, tell the engine, return the driver's result. With
 * VRAMGUARD_POOL=cache a small cuMemAlloc_v2 may be served by the engine's
 * pool instead (lib/account_pooled.c), and its free never reaches the driver.
 * The legacy 32-bit cuMemAlloc is never pooled: a block's address need not
 * fit its CUdeviceptr_v1.
 */
#include "shim.h"

#define PITCH_ALIGN 512u /* the pitch the driver picks on every GPU we know */

/* An allocation the ledger could not record (vg__shim_settle, vg__acct_commit):
 * freed at once (with cuMemFree_v2, which the engine requires: the legacy
 * cuMemFree may be missing), its charge back. Out of the hooks' hot code. */
__attribute__((noinline, cold)) static void refuse_unrecorded(vg__ticket_t *t, CUdeviceptr ptr,
                                                              uint64_t size)
{
    vg__real.cuMemFree_v2(ptr);
    vg__acct_unrecorded(t, ptr, size);
}

VG__HOT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    vg__ticket_t t = {.kind = VG_KIND_PLAIN, .bytes = bytesize, .api = "cuMemAlloc_v2"};
    uint64_t pooled;
    if (vg__unlikely(vg__cache_mode_on()) && dptr && vg__acct_pooled_alloc(&t, &pooled) == VG_OK) {
        *dptr = pooled;
        return CUDA_SUCCESS;
    }
    t.device = vg__shim_device();
    int rc = vg__acct_reserve(&t);
    if (rc != VG_OK)
        return vg__cu_status(rc);
    CUresult cr = vg__real_mem_alloc(dptr, bytesize);
    CUresult settled = vg__shim_settle(&t, cr, cr == CUDA_SUCCESS ? *dptr : 0, bytesize);
    if (vg__unlikely(settled != cr)) {
        refuse_unrecorded(&t, *dptr, bytesize);
        *dptr = 0;
    }
    return settled;
}

CUresult cuMemAlloc(CUdeviceptr_v1 *dptr, unsigned int bytesize)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuMemAlloc)
        return CUDA_ERROR_NOT_FOUND;
    vg__ticket_t t = {.device = vg__shim_device(), .kind = VG_KIND_PLAIN,
                      .bytes = bytesize, .api = "cuMemAlloc"};
    int rc = vg__acct_reserve(&t);
    if (rc != VG_OK)
        return vg__cu_status(rc);
    CUresult cr = vg__real.cuMemAlloc(dptr, bytesize);
    CUresult settled = vg__shim_settle(&t, cr, cr == CUDA_SUCCESS ? *dptr : 0, bytesize);
    if (settled != cr) {
        refuse_unrecorded(&t, *dptr, bytesize);
        *dptr = 0;
    }
    return settled;
}

VG__HOT CUresult cuMemFree_v2(CUdeviceptr dptr)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    vg__free_t f;
    int rc = vg__acct_free_begin(&f, dptr, "cuMemFree_v2");
    if (rc != VG_OK)
        return vg__cu_status(rc);
    CUresult cr = f.state == VG__FREE_POOLED ? CUDA_SUCCESS : vg__real_mem_free(dptr);
    vg__acct_free_end(&f, cr);
    return cr;
}

CUresult cuMemFree(CUdeviceptr_v1 dptr)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuMemFree)
        return CUDA_ERROR_NOT_FOUND;
    vg__free_t f;
    int rc = vg__acct_free_begin(&f, dptr, "cuMemFree");
    if (rc != VG_OK)
        return vg__cu_status(rc);
    CUresult cr = f.state == VG__FREE_POOLED ? CUDA_SUCCESS : vg__real.cuMemFree(dptr);
    vg__acct_free_end(&f, cr);
    return cr;
}

/* Reserve what the pitch will most likely be, then settle on the pitch the
 * driver chose; a larger one must still fit or the allocation is undone. */
static uint64_t pitch_estimate(uint64_t width, uint64_t height)
{
    uint64_t pitch = (width + PITCH_ALIGN - 1) / PITCH_ALIGN * PITCH_ALIGN;
    if (pitch < width || (height && pitch > UINT64_MAX / height))
        return UINT64_MAX; /* the driver will refuse it anyway */
    return pitch * height;
}

static CUresult pitch_settle(vg__ticket_t *t, CUresult cr, CUdeviceptr ptr,
                             uint64_t pitch, uint64_t height)
{
    if (cr != CUDA_SUCCESS) {
        vg__acct_cancel(t);
        return cr;
    }
    if (vg__acct_resize(t, pitch * height) != VG_OK) {
        vg__real.cuMemFree_v2(ptr);
        vg__acct_cancel(t);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (vg__acct_commit(t, ptr, pitch * height, 0) != VG_OK) {
        refuse_unrecorded(t, ptr, pitch * height);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    return CUDA_SUCCESS;
}

CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pPitch, size_t WidthInBytes,
                            size_t Height, unsigned int ElementSizeBytes)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    vg__ticket_t t = {.device = vg__shim_device(), .kind = VG_KIND_PITCH,
                      .bytes = pitch_estimate(WidthInBytes, Height), .api = "cuMemAllocPitch_v2"};
    int rc = vg__acct_reserve(&t);
    if (rc != VG_OK)
        return vg__cu_status(rc);
    CUresult cr = vg__real.cuMemAllocPitch_v2(dptr, pPitch, WidthInBytes, Height,
                                              ElementSizeBytes);
    CUresult settled = pitch_settle(&t, cr, cr == CUDA_SUCCESS ? *dptr : 0,
                                    cr == CUDA_SUCCESS ? *pPitch : 0, Height);
    if (settled != cr)
        *dptr = 0; /* refused after the driver's success: freed */
    return settled;
}

CUresult cuMemAllocPitch(CUdeviceptr_v1 *dptr, unsigned int *pPitch,
                         unsigned int WidthInBytes, unsigned int Height,
                         unsigned int ElementSizeBytes)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuMemAllocPitch)
        return CUDA_ERROR_NOT_FOUND;
    vg__ticket_t t = {.device = vg__shim_device(), .kind = VG_KIND_PITCH,
                      .bytes = pitch_estimate(WidthInBytes, Height), .api = "cuMemAllocPitch"};
    int rc = vg__acct_reserve(&t);
    if (rc != VG_OK)
        return vg__cu_status(rc);
    CUresult cr = vg__real.cuMemAllocPitch(dptr, pPitch, WidthInBytes, Height,
                                           ElementSizeBytes);
    CUresult settled = pitch_settle(&t, cr, cr == CUDA_SUCCESS ? *dptr : 0,
                                    cr == CUDA_SUCCESS ? *pPitch : 0, Height);
    if (settled != cr)
        *dptr = 0; /* refused after the driver's success: freed */
    return settled;
}

CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    vg__ticket_t t = {.device = vg__shim_device(), .kind = VG_KIND_MANAGED,
                      .bytes = bytesize, .api = "cuMemAllocManaged"};
    int rc = vg__acct_reserve(&t);
    if (rc != VG_OK)
        return vg__cu_status(rc);
    CUresult cr = vg__real.cuMemAllocManaged(dptr, bytesize, flags);
    CUresult settled = vg__shim_settle(&t, cr, cr == CUDA_SUCCESS ? *dptr : 0, bytesize);
    if (settled != cr) {
        refuse_unrecorded(&t, *dptr, bytesize);
        *dptr = 0;
    }
    return settled;
}

/* ---------------------------------------------------- memory views */

CUresult cuMemGetInfo_v2(size_t *free, size_t *total)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult cr = vg__real.cuMemGetInfo_v2(free, total);
    if (cr != CUDA_SUCCESS || !free || !total)
        return cr;
    uint64_t f = *free, t = *total;
    vg__acct_meminfo(vg__shim_device(), &f, &t);
    *free = f;
    *total = t;
    return cr;
}

CUresult cuMemGetInfo(unsigned int *free, unsigned int *total)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuMemGetInfo)
        return CUDA_ERROR_NOT_FOUND;
    CUresult cr = vg__real.cuMemGetInfo(free, total);
    if (cr != CUDA_SUCCESS || !free || !total)
        return cr;
    uint64_t f = *free, t = *total;
    vg__acct_meminfo(vg__shim_device(), &f, &t);
    *free = (unsigned int)f; /* never larger than what the driver said */
    *total = (unsigned int)t;
    return cr;
}

CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult cr = vg__real.cuDeviceTotalMem_v2(bytes, dev);
    if (cr != CUDA_SUCCESS || !bytes)
        return cr;
    uint64_t t = *bytes, f = *bytes;
    vg__acct_meminfo((int)dev, &f, &t);
    *bytes = t;
    return cr;
}

CUresult cuDeviceTotalMem(unsigned int *bytes, CUdevice dev)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuDeviceTotalMem)
        return CUDA_ERROR_NOT_FOUND;
    CUresult cr = vg__real.cuDeviceTotalMem(bytes, dev);
    if (cr != CUDA_SUCCESS || !bytes)
        return cr;
    uint64_t t = *bytes, f = *bytes;
    vg__acct_meminfo((int)dev, &f, &t);
    *bytes = (unsigned int)t;
    return cr;
}
