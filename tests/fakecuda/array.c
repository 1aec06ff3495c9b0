/*
 * array.c: CUDA arrays and mipmapped arrays. They hold no host memory here
 * (nothing copies into them); what matters is that they are charged to
 * device capacity, because peers forget that arrays consume VRAM.
 * Size = width x max(height,1) x max(depth,1) x element size x channels,
 * rounded up to 512 bytes; a mipmapped array is the sum over its levels
 * (a layered or cubemap one keeps every layer at every level).
 * Supported formats: the eight classic integer / half / float formats.
 * As measured on the real driver: an array created with
 * CUDA_ARRAY3D_DEFERRED_MAPPING has no memory of its own (it is mapped
 * later), so it is not charged, and only such arrays answer
 * cu*GetMemoryRequirements (others: CUDA_ERROR_INVALID_VALUE); a mipmap level
 * count of 0 or above 1 + log2(largest dimension) is clamped, not refused.
 * (The real driver charged 2 MiB for a 16000-byte array; we charge the size.)
 * A sparse array (CUDA_ARRAY3D_SPARSE) has no memory of its own either.
 * cuMemMapArrayAsync maps cuMemCreate memory into either kind, as
 * documented: a deferred-mapping array whole (the subresource is ignored),
 * a sparse one by region (a level's box of tiles, or a range of the mip
 * tail); an unmap names no handle. Each mapping holds its memory as a
 * cuMemMap mapping does (vmm.c), until it is unmapped or its array
 * destroyed. Simplifications: a region already mapped cannot be mapped
 * again, and a sparse unmap must cover each mapping it touches wholly
 * (CUDA_ERROR_INVALID_VALUE otherwise); mapping is immediate, not in the
 * stream's order.
 */
#include "fakecuda.h"

#include <stdlib.h>

/* One cuMemMapArrayAsync mapping: a box of tiles of one level and layer
 * (the mip tail: lo[0]..hi[0] in bytes), and the memory behind it. */
typedef struct fc_tiles {
    bool miptail;
    unsigned int level, layer;
    unsigned long long lo[3], hi[3];
    void *phys;                          /* vmm.c's, referenced */
    struct fc_tiles *next;
} fc_tiles;

struct CUarray_st {
    int dev;
    CUcontext ctx;       /* destroyed with it (fc_array_release_ctx) */
    CUDA_ARRAY3D_DESCRIPTOR desc;
    size_t bytes;
    fc_tiles *maps;
};

struct CUmipmappedArray_st {
    int dev;
    CUcontext ctx;
    CUDA_ARRAY3D_DESCRIPTOR desc;
    unsigned int levels;
    size_t bytes;
    fc_tiles *maps;
};

static size_t format_bytes(CUarray_format f)
{
    switch (f) {
    case CU_AD_FORMAT_UNSIGNED_INT8: case CU_AD_FORMAT_SIGNED_INT8: return 1;
    case CU_AD_FORMAT_UNSIGNED_INT16: case CU_AD_FORMAT_SIGNED_INT16:
    case CU_AD_FORMAT_HALF: return 2;
    case CU_AD_FORMAT_UNSIGNED_INT32: case CU_AD_FORMAT_SIGNED_INT32:
    case CU_AD_FORMAT_FLOAT: return 4;
    default: return 0;
    }
}

static size_t at_least_1(size_t v) { return v ? v : 1; }

static bool deferred(const CUDA_ARRAY3D_DESCRIPTOR *d)
{
    return (d->Flags & CUDA_ARRAY3D_DEFERRED_MAPPING) != 0;
}

/* Deferred-mapping and sparse arrays: their memory is mapped in. */
static bool holds_none(const CUDA_ARRAY3D_DESCRIPTOR *d)
{
    return (d->Flags & (CUDA_ARRAY3D_DEFERRED_MAPPING | CUDA_ARRAY3D_SPARSE)) != 0;
}

/* Drops every mapping of an array that goes (lock held). */
static void unmap_all(fc_tiles **maps)
{
    while (*maps) {
        fc_tiles *t = *maps;
        *maps = t->next;
        fc_vmm_tile_unref(t->phys);
        free(t);
    }
}

/* Bytes of one array level; 0 for an invalid descriptor. */
static size_t desc_bytes(const CUDA_ARRAY3D_DESCRIPTOR *d)
{
    size_t elem = format_bytes(d->Format);
    unsigned ch = d->NumChannels;
    if (!elem || d->Width == 0 || (ch != 1 && ch != 2 && ch != 4) || (d->Depth && !d->Height))
        return 0;
    size_t n = elem * ch, dims[3] = { d->Width, at_least_1(d->Height), at_least_1(d->Depth) };
    for (int i = 0; i < 3; i++) {
        if (n > SIZE_MAX / 2 / dims[i])
            return 0;
        n *= dims[i];
    }
    return fc_round_up(n, FC_ALIGN);
}

/* Lock held: context, fault injection, capacity, statistics. A deferred
 * or sparse array allocates nothing: no fault injection, no charge. */
static CUresult charge_array(size_t bytes, bool is_deferred, CUcontext *pctx)
{
    CUcontext ctx;
    CUresult rc = fc_ctx_current(&ctx);
    if (rc == CUDA_SUCCESS && bytes == 0)
        rc = CUDA_ERROR_INVALID_VALUE;
    if (rc != CUDA_SUCCESS)
        return rc;
    *pctx = ctx;
    if (is_deferred)
        return CUDA_SUCCESS;
    rc = fc_gate();
    if (rc == CUDA_SUCCESS)
        rc = fc_charge(ctx->dev, bytes);
    if (rc == CUDA_SUCCESS)
        fc_count_alloc();
    return rc;
}


static CUresult array_create(CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *d)
{
    CUcontext ctx;
    size_t bytes = pHandle && d ? desc_bytes(d) : 0;
    fc_lock();
    CUresult rc = charge_array(bytes, d && holds_none(d), &ctx);
    if (rc == CUDA_SUCCESS) {
        CUarray a = calloc(1, sizeof *a);
        if (!a)
            abort();
        a->dev = ctx->dev;
        a->ctx = ctx;
        a->desc = *d;
        a->bytes = bytes;
        fc_handle_add(a, FC_H_ARRAY);
        *pHandle = a;
    }
    fc_unlock();
    return rc;
}

static CUDA_ARRAY3D_DESCRIPTOR from_2d(size_t w, size_t h, CUarray_format f, unsigned ch)
{
    CUDA_ARRAY3D_DESCRIPTOR d = { .Width = w, .Height = h, .Format = f, .NumChannels = ch };
    return d;
}

CUresult cuArrayCreate_v2(CUarray *pHandle, const CUDA_ARRAY_DESCRIPTOR *p)
{
    CUDA_ARRAY3D_DESCRIPTOR d = p ? from_2d(p->Width, p->Height, p->Format, p->NumChannels)
                                  : from_2d(0, 0, 0, 0);
    return array_create(pHandle, &d);
}

CUresult cuArrayCreate(CUarray *pHandle, const CUDA_ARRAY_DESCRIPTOR_v1 *p)
{
    CUDA_ARRAY3D_DESCRIPTOR d = p ? from_2d(p->Width, p->Height, p->Format, p->NumChannels)
                                  : from_2d(0, 0, 0, 0);
    return array_create(pHandle, &d);
}

CUresult cuArray3DCreate_v2(CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *p)
{
    CUDA_ARRAY3D_DESCRIPTOR zero = { 0 };
    return array_create(pHandle, p ? p : &zero);
}

CUresult cuArray3DCreate(CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR_v1 *p)
{
    CUDA_ARRAY3D_DESCRIPTOR d = { 0 };
    if (p)
        d = (CUDA_ARRAY3D_DESCRIPTOR){ p->Width, p->Height, p->Depth, p->Format, p->NumChannels, p->Flags };
    return array_create(pHandle, &d);
}

CUresult cuArrayDestroy(CUarray hArray)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_lock();
    bool ok = fc_handle_ok(hArray, FC_H_ARRAY);
    if (ok) {
        fc_handle_del(hArray);
        unmap_all(&hArray->maps);
        if (!holds_none(&hArray->desc)) {
            fc_uncharge(hArray->dev, hArray->bytes);
            fc_count_free();
        }
    }
    fc_unlock();
    if (!ok)
        return CUDA_ERROR_INVALID_HANDLE;
    free(hArray);
    return CUDA_SUCCESS;
}

/* Copies the descriptor of a live array (lock taken here). */
static CUresult array_desc(CUarray a, CUDA_ARRAY3D_DESCRIPTOR *out)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_lock();
    bool ok = fc_handle_ok(a, FC_H_ARRAY);
    if (ok)
        *out = a->desc;
    fc_unlock();
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

CUresult cuArrayGetDescriptor_v2(CUDA_ARRAY_DESCRIPTOR *pArrayDescriptor, CUarray hArray)
{
    CUDA_ARRAY3D_DESCRIPTOR d;
    if (!pArrayDescriptor)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = array_desc(hArray, &d);
    if (rc == CUDA_SUCCESS)
        *pArrayDescriptor = (CUDA_ARRAY_DESCRIPTOR){ d.Width, d.Height, d.Format, d.NumChannels };
    return rc;
}

/* Legacy 32-bit descriptors (before CUDA 3.2). */
CUresult cuArrayGetDescriptor(CUDA_ARRAY_DESCRIPTOR_v1 *pArrayDescriptor, CUarray hArray)
{
    CUDA_ARRAY3D_DESCRIPTOR d;
    if (!pArrayDescriptor)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = array_desc(hArray, &d);
    if (rc == CUDA_SUCCESS)
        *pArrayDescriptor = (CUDA_ARRAY_DESCRIPTOR_v1){ (unsigned)d.Width, (unsigned)d.Height, d.Format,
                                                        d.NumChannels };
    return rc;
}

CUresult cuArray3DGetDescriptor(CUDA_ARRAY3D_DESCRIPTOR_v1 *pArrayDescriptor, CUarray hArray)
{
    CUDA_ARRAY3D_DESCRIPTOR d;
    if (!pArrayDescriptor)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = array_desc(hArray, &d);
    if (rc == CUDA_SUCCESS)
        *pArrayDescriptor = (CUDA_ARRAY3D_DESCRIPTOR_v1){ (unsigned)d.Width, (unsigned)d.Height,
                                                          (unsigned)d.Depth, d.Format, d.NumChannels,
                                                          d.Flags };
    return rc;
}

CUresult cuArray3DGetDescriptor_v2(CUDA_ARRAY3D_DESCRIPTOR *pArrayDescriptor, CUarray hArray)
{
    return pArrayDescriptor ? array_desc(hArray, pArrayDescriptor) : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuArrayGetMemoryRequirements(CUDA_ARRAY_MEMORY_REQUIREMENTS *memoryRequirements, CUarray array,
                                      CUdevice device)
{
    CUDA_ARRAY3D_DESCRIPTOR d;
    if (!memoryRequirements)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = array_desc(array, &d);
    if (rc == CUDA_SUCCESS && !fc_device_valid(device))
        rc = CUDA_ERROR_INVALID_DEVICE;
    if (rc == CUDA_SUCCESS && !deferred(&d))
        rc = CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS)
        *memoryRequirements = (CUDA_ARRAY_MEMORY_REQUIREMENTS){ .size = desc_bytes(&d), .alignment = FC_ALIGN };
    return rc;
}

/* ---- mipmapped arrays ---- */

static size_t level_dim(size_t v, unsigned int level)
{
    return v ? at_least_1(v >> level) : 0;
}

/* Depth counts layers (faces for a cubemap) in a layered or cubemap
 * array: every level has all of them, as in the real driver. */
static bool layered(const CUDA_ARRAY3D_DESCRIPTOR *d)
{
    return (d->Flags & (CUDA_ARRAY3D_LAYERED | CUDA_ARRAY3D_CUBEMAP)) != 0;
}

/* 1 + log2(largest dimension that shrinks with the level). */
static unsigned int max_levels(const CUDA_ARRAY3D_DESCRIPTOR *d)
{
    size_t maxdim = d->Width > d->Height ? d->Width : d->Height;
    maxdim = maxdim > d->Depth || layered(d) ? maxdim : d->Depth;
    unsigned int n = 0;
    for (; maxdim; maxdim >>= 1)
        n++;
    return n;
}

static unsigned int clamp_levels(const CUDA_ARRAY3D_DESCRIPTOR *d, unsigned int levels)
{
    unsigned int max = max_levels(d);
    return levels == 0 ? 1 : levels > max ? max : levels;
}

/* Sum of the level sizes (levels already clamped); 0 if invalid. */
static size_t mipmap_bytes(const CUDA_ARRAY3D_DESCRIPTOR *d, unsigned int levels)
{
    size_t total = 0;
    for (unsigned int l = 0; l < levels; l++) {
        CUDA_ARRAY3D_DESCRIPTOR ld = *d;
        ld.Width = level_dim(d->Width, l);
        ld.Height = level_dim(d->Height, l);
        ld.Depth = layered(d) ? d->Depth : level_dim(d->Depth, l);
        size_t b = desc_bytes(&ld);
        if (b == 0 || b > SIZE_MAX / 2 - total)
            return 0;
        total += b;
    }
    return total;
}

CUresult cuMipmappedArrayCreate(CUmipmappedArray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *pMipmappedArrayDesc,
                                unsigned int numMipmapLevels)
{
    CUcontext ctx;
    const CUDA_ARRAY3D_DESCRIPTOR *d = pMipmappedArrayDesc;
    unsigned int levels = d ? clamp_levels(d, numMipmapLevels) : 0;
    size_t bytes = pHandle && d ? mipmap_bytes(d, levels) : 0;
    fc_lock();
    CUresult rc = charge_array(bytes, d && holds_none(d), &ctx);
    if (rc == CUDA_SUCCESS) {
        CUmipmappedArray m = calloc(1, sizeof *m);
        if (!m)
            abort();
        *m = (struct CUmipmappedArray_st){ ctx->dev, ctx, *d, levels, bytes, NULL };
        fc_handle_add(m, FC_H_MIPMAP);
        *pHandle = m;
    }
    fc_unlock();
    return rc;
}

CUresult cuMipmappedArrayDestroy(CUmipmappedArray hMipmappedArray)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_lock();
    bool ok = fc_handle_ok(hMipmappedArray, FC_H_MIPMAP);
    if (ok) {
        fc_handle_del(hMipmappedArray);
        unmap_all(&hMipmappedArray->maps);
        if (!holds_none(&hMipmappedArray->desc)) {
            fc_uncharge(hMipmappedArray->dev, hMipmappedArray->bytes);
            fc_count_free();
        }
    }
    fc_unlock();
    if (!ok)
        return CUDA_ERROR_INVALID_HANDLE;
    free(hMipmappedArray);
    return CUDA_SUCCESS;
}

CUresult cuMipmappedArrayGetMemoryRequirements(CUDA_ARRAY_MEMORY_REQUIREMENTS *memoryRequirements,
                                               CUmipmappedArray mipmap, CUdevice device)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!memoryRequirements)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fc_device_valid(device))
        return CUDA_ERROR_INVALID_DEVICE;
    fc_lock();
    bool ok = fc_handle_ok(mipmap, FC_H_MIPMAP);
    CUresult rc = !ok ? CUDA_ERROR_INVALID_HANDLE
                : !deferred(&mipmap->desc) ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
    if (rc == CUDA_SUCCESS)
        *memoryRequirements = (CUDA_ARRAY_MEMORY_REQUIREMENTS){ .size = mipmap->bytes, .alignment = FC_ALIGN };
    fc_unlock();
    return rc;
}

/* ---- cuMemMapArrayAsync ---- */

/* The box an entry names; a deferred-mapping array's is all of it. */
static fc_tiles box_of(const CUarrayMapInfo *m, bool whole)
{
    fc_tiles b = { 0 };
    if (whole) {
        for (int i = 0; i < 3; i++)
            b.hi[i] = ~0ull;
    } else if (m->subresourceType == CU_ARRAY_SPARSE_SUBRESOURCE_TYPE_MIPTAIL) {
        b.miptail = true;
        b.layer = m->subresource.miptail.layer;
        b.lo[0] = m->subresource.miptail.offset;
        b.hi[0] = b.lo[0] + m->subresource.miptail.size;
        b.hi[1] = b.hi[2] = 1;
    } else {
        const unsigned int *o = &m->subresource.sparseLevel.offsetX;
        const unsigned int *e = &m->subresource.sparseLevel.extentWidth;
        b.level = m->subresource.sparseLevel.level;
        b.layer = m->subresource.sparseLevel.layer;
        for (int i = 0; i < 3; i++) {
            b.lo[i] = o[i];
            b.hi[i] = (unsigned long long)o[i] + e[i];
        }
    }
    return b;
}

enum overlap { DISJOINT, INSIDE, PARTIAL };

/* Where mapping m lies against box b. */
static enum overlap overlap_of(const fc_tiles *m, const fc_tiles *b)
{
    if (m->miptail != b->miptail || m->level != b->level || m->layer != b->layer)
        return DISJOINT;
    bool inside = true;
    for (int i = 0; i < 3; i++) {
        if (m->hi[i] <= b->lo[i] || m->lo[i] >= b->hi[i])
            return DISJOINT;
        inside = inside && m->lo[i] >= b->lo[i] && m->hi[i] <= b->hi[i];
    }
    return inside ? INSIDE : PARTIAL;
}

static CUresult map_box(fc_tiles **maps, const fc_tiles *box, CUmemGenericAllocationHandle h)
{
    for (fc_tiles *t = *maps; t; t = t->next)
        if (overlap_of(t, box) != DISJOINT)
            return CUDA_ERROR_INVALID_VALUE;
    void *phys = fc_vmm_tile_ref(h);
    if (!phys)
        return CUDA_ERROR_INVALID_VALUE;
    fc_tiles *t = malloc(sizeof *t);
    if (!t)
        abort();
    *t = *box;
    t->phys = phys;
    t->next = *maps;
    *maps = t;
    return CUDA_SUCCESS;
}

static CUresult unmap_box(fc_tiles **maps, const fc_tiles *box)
{
    for (fc_tiles *t = *maps; t; t = t->next)
        if (overlap_of(t, box) == PARTIAL)
            return CUDA_ERROR_INVALID_VALUE;
    for (fc_tiles **pt = maps; *pt;) {
        fc_tiles *t = *pt;
        if (overlap_of(t, box) != INSIDE) {
            pt = &t->next;
            continue;
        }
        *pt = t->next;
        fc_vmm_tile_unref(t->phys);
        free(t);
    }
    return CUDA_SUCCESS;
}

/* The mappings of the array or mipmapped array an entry names, if it is a
 * live deferred-mapping or sparse one; *whole for a deferred one. */
static fc_tiles **maps_of(const CUarrayMapInfo *m, bool *whole)
{
    const CUDA_ARRAY3D_DESCRIPTOR *d;
    fc_tiles **maps;
    if (m->resourceType == CU_RESOURCE_TYPE_ARRAY && fc_handle_ok(m->resource.array, FC_H_ARRAY)) {
        d = &m->resource.array->desc;
        maps = &m->resource.array->maps;
    } else if (m->resourceType == CU_RESOURCE_TYPE_MIPMAPPED_ARRAY &&
               fc_handle_ok(m->resource.mipmap, FC_H_MIPMAP)) {
        d = &m->resource.mipmap->desc;
        maps = &m->resource.mipmap->maps;
    } else {
        return NULL;
    }
    *whole = deferred(d);
    return holds_none(d) ? maps : NULL;
}

/* Lock held. */
static CUresult map_one(const CUarrayMapInfo *m, int dev)
{
    bool whole;
    fc_tiles **maps = maps_of(m, &whole);
    if (!maps || m->memHandleType != CU_MEM_HANDLE_TYPE_GENERIC || m->deviceBitMask != 1u << dev)
        return CUDA_ERROR_INVALID_VALUE;
    fc_tiles box = box_of(m, whole);
    switch (m->memOperationType) {
    case CU_MEM_OPERATION_TYPE_MAP:
        return map_box(maps, &box, m->memHandle.memHandle);
    case CU_MEM_OPERATION_TYPE_UNMAP:
        return m->memHandle.memHandle ? CUDA_ERROR_INVALID_VALUE : unmap_box(maps, &box);
    default:
        return CUDA_ERROR_INVALID_VALUE;
    }
}

CUresult cuMemMapArrayAsync(CUarrayMapInfo *mapInfoList, unsigned int count, CUstream hStream)
{
    int dev;
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!mapInfoList || count == 0)
        return CUDA_ERROR_INVALID_VALUE;
    fc_lock();
    CUresult rc = fc_stream_device(hStream, &dev);
    for (unsigned int i = 0; rc == CUDA_SUCCESS && i < count; i++)
        rc = map_one(&mapInfoList[i], dev);
    fc_unlock();
    return rc;
}

CUresult cuMemMapArrayAsync_ptsz(CUarrayMapInfo *mapInfoList, unsigned int count, CUstream hStream)
{
    return cuMemMapArrayAsync(mapInfoList, count, hStream);
}

/* ---- a destroyed or reset context takes its arrays with it ---- */

static void release_array(void *h, void *ctx)
{
    CUarray a = h;
    if (a->ctx != ctx)
        return;
    fc_handle_del(a);
    unmap_all(&a->maps);
    if (!holds_none(&a->desc)) {
        fc_uncharge(a->dev, a->bytes);
        fc_count_free();
    }
    free(a);
}

static void release_mipmap(void *h, void *ctx)
{
    CUmipmappedArray m = h;
    if (m->ctx != ctx)
        return;
    fc_handle_del(m);
    unmap_all(&m->maps);
    if (!holds_none(&m->desc)) {
        fc_uncharge(m->dev, m->bytes);
        fc_count_free();
    }
    free(m);
}

void fc_array_release_ctx(CUcontext ctx)
{
    fc_handle_each(FC_H_ARRAY, release_array, ctx);
    fc_handle_each(FC_H_MIPMAP, release_mipmap, ctx);
}
