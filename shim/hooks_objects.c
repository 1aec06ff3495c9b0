/*
 * hooks_objects.c — device memory that comes as an object rather than a
 * pointer: VMM physical allocations (cuMemCreate), CUDA arrays and
 * mipmapped arrays. Graphs are hooks_graph.c's.
 *
 * Objects are recorded under their handle with VG__KEY_HANDLE set, so a
 * handle can never be mistaken for a device address. Arrays are charged
 * their descriptor's size in 2 MiB granules; sparse and deferred-mapping
 * arrays nothing (their memory is mapped in from cuMemCreate handles).
 */
#include "shim.h"

/* The real driver backs arrays in 2 MiB granules: on an H100 (driver 580,
 * 2026-11-22) a 16,000-byte array took 2 MiB of free memory. */
#define ARRAY_GRANULE (2u << 20)

/* A sparse or deferred-mapping array holds no memory of its own: what it
 * holds is cuMemCreate memory mapped in with cuMemMapArrayAsync, charged
 * at cuMemCreate and kept alive by the mapping (lib/account_vmm.c).
 * Charging the array too counted that memory twice, and charged an array
 * nothing was mapped into for memory it did not hold. */
static bool holds_none(unsigned int flags)
{
    return flags & (CUDA_ARRAY3D_SPARSE | CUDA_ARRAY3D_DEFERRED_MAPPING);
}

static uint64_t key_of(const void *handle)
{
    return (uint64_t)(uintptr_t)handle | VG__KEY_HANDLE;
}

/* An array's record keeps the context it was made in (its handle): the
 * array dies with that context (vg__acct_context_gone). */
static uint64_t current_ctx(void)
{
    CUcontext ctx = NULL;
    vg__driver()->cuCtxGetCurrent(&ctx);
    return (uint64_t)(uintptr_t)ctx;
}

/* --------------------------------------------------------------- VMM */

/* Only device-located physical memory is VRAM; host-located VMM memory
 * passes through uncharged. The driver frees a handle's memory when it is
 * released and unmapped everywhere, so the charge stays until both
 * (lib/account_vmm.c): releasing right after mapping, as the CUDA
 * programming guide does, keeps it charged until the last cuMemUnmap. */
CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
                     const CUmemAllocationProp *prop, unsigned long long flags)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!prop || prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE)
        return vg__real.cuMemCreate(handle, size, prop, flags);
    vg__ticket_t t = {.device = prop->location.id, .kind = VG_KIND_VMM,
                      .bytes = size, .api = "cuMemCreate"};
    int rc = vg__acct_reserve(&t);
    if (rc != VG_OK)
        return vg__cu_status(rc);
    CUresult cr = vg__real.cuMemCreate(handle, size, prop, flags);
    CUresult settled = vg__shim_settle(&t, cr, cr == CUDA_SUCCESS ? *handle | VG__KEY_HANDLE : 0,
                                       size);
    if (settled != cr) { /* not recorded: refused */
        vg__real.cuMemRelease(*handle);
        vg__acct_unrecorded(&t, *handle | VG__KEY_HANDLE, size);
        *handle = 0;
    }
    return settled;
}

/* Each VMM call runs under vg__acct_vmm_begin/_end, so its bookkeeping
 * sees it in the driver's order (lib/account_vmm.c). */
CUresult cuMemRelease(CUmemGenericAllocationHandle handle)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    uint64_t seq;
    vg__acct_vmm_begin();
    if (vg__likely(vg__acct_vmm_tracked(handle, &seq))) {
        CUresult cr = vg__real.cuMemRelease(handle);
        if (cr == CUDA_SUCCESS)
            vg__acct_vmm_released(handle, seq, "cuMemRelease");
        vg__acct_vmm_end();
        return cr;
    }
    vg__acct_vmm_end();
    vg__free_t f; /* not ours: a foreign handle, or a bad one */
    int rc = vg__acct_free_begin(&f, handle | VG__KEY_HANDLE, "cuMemRelease");
    if (rc != VG_OK)
        return vg__cu_status(rc);
    CUresult cr = vg__real.cuMemRelease(handle);
    vg__acct_free_end(&f, cr);
    return cr;
}

CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset,
                  CUmemGenericAllocationHandle handle, unsigned long long flags)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    vg__acct_vmm_begin();
    CUresult cr = vg__real.cuMemMap(ptr, size, offset, handle, flags);
    if (cr == CUDA_SUCCESS)
        vg__acct_vmm_map(ptr, size, handle);
    vg__acct_vmm_end();
    return cr;
}

CUresult cuMemUnmap(CUdeviceptr ptr, size_t size)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    vg__acct_vmm_begin();
    CUresult cr = vg__real.cuMemUnmap(ptr, size);
    if (cr == CUDA_SUCCESS)
        vg__acct_vmm_unmap(ptr, size, "cuMemUnmap");
    vg__acct_vmm_end();
    return cr;
}

CUresult cuMemRetainAllocationHandle(CUmemGenericAllocationHandle *handle, void *addr)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    vg__acct_vmm_begin();
    CUresult cr = vg__real.cuMemRetainAllocationHandle(handle, addr);
    if (cr == CUDA_SUCCESS && handle)
        vg__acct_vmm_retain(*handle);
    vg__acct_vmm_end();
    return cr;
}

/* A handle mapped into an array stays alive while the array maps it, as
 * one mapped with cuMemMap (lib/account_vmm.c), and like cuMemMap the call
 * and its books run under the VMM call lock: a cuMemRelease of the handle
 * between the two would find no mapping and uncharge it. */
static CUresult map_array(CUresult (*real)(CUarrayMapInfo *, unsigned int, CUstream),
                          CUarrayMapInfo *list, unsigned int count, CUstream stream,
                          const char *api)
{
    vg__acct_vmm_begin();
    CUresult cr = real(list, count, stream);
    if (cr == CUDA_SUCCESS && list)
        for (unsigned int i = 0; i < count; i++)
            vg__acct_vmm_array_op(&list[i], api);
    vg__acct_vmm_end();
    return cr;
}

CUresult cuMemMapArrayAsync(CUarrayMapInfo *mapInfoList, unsigned int count, CUstream hStream)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuMemMapArrayAsync)
        return CUDA_ERROR_NOT_FOUND;
    return map_array(vg__real.cuMemMapArrayAsync, mapInfoList, count, hStream,
                     "cuMemMapArrayAsync");
}

CUresult cuMemMapArrayAsync_ptsz(CUarrayMapInfo *mapInfoList, unsigned int count,
                                 CUstream hStream)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuMemMapArrayAsync_ptsz)
        return CUDA_ERROR_NOT_FOUND;
    return map_array(vg__real.cuMemMapArrayAsync_ptsz, mapInfoList, count, hStream,
                     "cuMemMapArrayAsync_ptsz");
}

/* ------------------------------------------------------------ arrays */

static uint64_t element_bytes(CUarray_format f)
{
    switch (f) {
    case CU_AD_FORMAT_UNSIGNED_INT8: case CU_AD_FORMAT_SIGNED_INT8:
    case CU_AD_FORMAT_UNORM_INT8X1: case CU_AD_FORMAT_SNORM_INT8X1:
        return 1;
    case CU_AD_FORMAT_UNSIGNED_INT16: case CU_AD_FORMAT_SIGNED_INT16:
    case CU_AD_FORMAT_HALF: case CU_AD_FORMAT_UNORM_INT8X2:
    case CU_AD_FORMAT_SNORM_INT8X2: case CU_AD_FORMAT_UNORM_INT16X1:
    case CU_AD_FORMAT_SNORM_INT16X1:
        return 2;
    case CU_AD_FORMAT_UNORM_INT16X4: case CU_AD_FORMAT_SNORM_INT16X4:
        return 8;
    default: /* 32-bit formats; packed video and BC formats are smaller */
        return 4;
    }
}

/* What an array of these dimensions takes, in whole granules. Saturates
 * instead of wrapping. */
static uint64_t array_estimate(uint64_t w, uint64_t h, uint64_t d,
                               CUarray_format f, unsigned channels)
{
    uint64_t n = element_bytes(f) * (channels ? channels : 1);
    uint64_t dims[3] = {w, h ? h : 1, d ? d : 1};
    for (int i = 0; i < 3; i++) {
        if (dims[i] && n > UINT64_MAX / dims[i])
            return UINT64_MAX;
        n *= dims[i];
    }
    if (n > UINT64_MAX - ARRAY_GRANULE)
        return UINT64_MAX;
    return (n + ARRAY_GRANULE - 1) / ARRAY_GRANULE * ARRAY_GRANULE;
}

/* Settles an array the driver made (or refused): a refusal after its
 * success destroys it and clears *out, so the caller holds no dead handle. */
static CUresult array_settle(vg__ticket_t *t, CUresult cr, CUarray *out)
{
    if (cr != CUDA_SUCCESS) {
        vg__acct_cancel(t);
        return cr;
    }
    CUarray arr = *out;
    if (vg__acct_commit(t, key_of(arr), t->bytes, current_ctx()) != VG_OK) {
        vg__real.cuArrayDestroy(arr); /* not recorded: refused */
        vg__acct_unrecorded(t, key_of(arr), t->bytes);
        *out = NULL;
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    return CUDA_SUCCESS;
}

CUresult cuArrayCreate_v2(CUarray *pHandle, const CUDA_ARRAY_DESCRIPTOR *d)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!d || !pHandle)
        return vg__real.cuArrayCreate_v2(pHandle, d);
    vg__ticket_t t = {.device = vg__shim_device(), .kind = VG_KIND_ARRAY,
                      .bytes = array_estimate(d->Width, d->Height, 1, d->Format, d->NumChannels), .api = "cuArrayCreate_v2"};
    int rc = vg__acct_reserve(&t);
    if (rc != VG_OK)
        return vg__cu_status(rc);
    CUresult cr = vg__real.cuArrayCreate_v2(pHandle, d);
    return array_settle(&t, cr, pHandle);
}

CUresult cuArrayCreate(CUarray *pHandle, const CUDA_ARRAY_DESCRIPTOR_v1 *d)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuArrayCreate)
        return CUDA_ERROR_NOT_FOUND;
    if (!d || !pHandle)
        return vg__real.cuArrayCreate(pHandle, d);
    vg__ticket_t t = {.device = vg__shim_device(), .kind = VG_KIND_ARRAY,
                      .bytes = array_estimate(d->Width, d->Height, 1, d->Format, d->NumChannels), .api = "cuArrayCreate"};
    int rc = vg__acct_reserve(&t);
    if (rc != VG_OK)
        return vg__cu_status(rc);
    CUresult cr = vg__real.cuArrayCreate(pHandle, d);
    return array_settle(&t, cr, pHandle);
}

CUresult cuArray3DCreate_v2(CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *d)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!d || !pHandle)
        return vg__real.cuArray3DCreate_v2(pHandle, d);
    vg__ticket_t t = {.device = vg__shim_device(), .kind = VG_KIND_ARRAY,
                      .bytes = holds_none(d->Flags) ? 0 : array_estimate(d->Width, d->Height, d->Depth, d->Format, d->NumChannels), .api = "cuArray3DCreate_v2"};
    int rc = vg__acct_reserve(&t);
    if (rc != VG_OK)
        return vg__cu_status(rc);
    CUresult cr = vg__real.cuArray3DCreate_v2(pHandle, d);
    return array_settle(&t, cr, pHandle);
}

CUresult cuArray3DCreate(CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR_v1 *d)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuArray3DCreate)
        return CUDA_ERROR_NOT_FOUND;
    if (!d || !pHandle)
        return vg__real.cuArray3DCreate(pHandle, d);
    vg__ticket_t t = {.device = vg__shim_device(), .kind = VG_KIND_ARRAY,
                      .bytes = holds_none(d->Flags) ? 0 : array_estimate(d->Width, d->Height, d->Depth, d->Format, d->NumChannels), .api = "cuArray3DCreate"};
    int rc = vg__acct_reserve(&t);
    if (rc != VG_OK)
        return vg__cu_status(rc);
    CUresult cr = vg__real.cuArray3DCreate(pHandle, d);
    return array_settle(&t, cr, pHandle);
}

CUresult cuArrayDestroy(CUarray hArray)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    vg__free_t f;
    int rc = vg__acct_free_begin(&f, key_of(hArray), "cuArrayDestroy");
    if (rc != VG_OK)
        return vg__cu_status(rc);
    CUresult cr = vg__real.cuArrayDestroy(hArray);
    vg__acct_free_end(&f, cr);
    if (cr == CUDA_SUCCESS)
        vg__acct_vmm_array_gone(key_of(hArray), "cuArrayDestroy");
    return cr;
}

/* Each level halves width, height and depth, except that the depth of a
 * layered or cubemap array counts layers (faces), and every level has all
 * of them: halving it charged 64 layers of 512 x 512 float4 at 293 MiB,
 * not the 341 MiB the array holds. */
static uint64_t mipmap_estimate(const CUDA_ARRAY3D_DESCRIPTOR *d, unsigned levels)
{
    uint64_t total = 0, w = d->Width, h = d->Height, z = d->Depth;
    bool layers = d->Flags & (CUDA_ARRAY3D_LAYERED | CUDA_ARRAY3D_CUBEMAP);
    for (unsigned i = 0; i < levels && i < 64; i++) {
        uint64_t one = array_estimate(w, h, z, d->Format, d->NumChannels);
        total = one > UINT64_MAX - total ? UINT64_MAX : total + one;
        w = w > 1 ? w / 2 : 1;
        h = h > 1 ? h / 2 : h;
        z = z > 1 && !layers ? z / 2 : z;
    }
    return total;
}

CUresult cuMipmappedArrayCreate(CUmipmappedArray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *d,
                                unsigned int numMipmapLevels)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!d || !pHandle)
        return vg__real.cuMipmappedArrayCreate(pHandle, d, numMipmapLevels);
    vg__ticket_t t = {.device = vg__shim_device(), .kind = VG_KIND_ARRAY,
                      .bytes = holds_none(d->Flags) ? 0 : mipmap_estimate(d, numMipmapLevels),
                      .api = "cuMipmappedArrayCreate"};
    int rc = vg__acct_reserve(&t);
    if (rc != VG_OK)
        return vg__cu_status(rc);
    CUresult cr = vg__real.cuMipmappedArrayCreate(pHandle, d, numMipmapLevels);
    if (cr != CUDA_SUCCESS) {
        vg__acct_cancel(&t);
        return cr;
    }
    if (vg__acct_commit(&t, key_of(*pHandle), t.bytes, current_ctx()) != VG_OK) {
        vg__real.cuMipmappedArrayDestroy(*pHandle); /* not recorded: refused */
        vg__acct_unrecorded(&t, key_of(*pHandle), t.bytes);
        *pHandle = NULL;
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    return CUDA_SUCCESS;
}

CUresult cuMipmappedArrayDestroy(CUmipmappedArray hMipmappedArray)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    vg__free_t f;
    int rc = vg__acct_free_begin(&f, key_of(hMipmappedArray), "cuMipmappedArrayDestroy");
    if (rc != VG_OK)
        return vg__cu_status(rc);
    CUresult cr = vg__real.cuMipmappedArrayDestroy(hMipmappedArray);
    vg__acct_free_end(&f, cr);
    if (cr == CUDA_SUCCESS)
        vg__acct_vmm_array_gone(key_of(hMipmappedArray), "cuMipmappedArrayDestroy");
    return cr;
}
