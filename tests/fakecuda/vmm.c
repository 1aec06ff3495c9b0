/*
 * vmm.c: virtual memory management (cuMemCreate, cuMemAddressReserve,
 * cuMemMap ...), made real with the host's own VM:
 * - a physical allocation is a memfd of its size (charged to capacity at
 *   cuMemCreate; untouched pages cost nothing);
 * - a reservation is a PROT_NONE anonymous mapping;
 * - cuMemMap maps the memfd MAP_SHARED|MAP_FIXED over part of a reservation,
 *   so mapped device memory is readable and writable, and two mappings of one
 *   handle alias each other as on the GPU; cuMemUnmap puts PROT_NONE back.
 * A physical allocation is freed (and uncharged) only when every handle
 * reference (cuMemCreate, cuMemRetainAllocationHandle) was released with
 * cuMemRelease AND every mapping of it was unmapped, as in the real driver;
 * a mapping into an array (cuMemMapArrayAsync, array.c) counts as one.
 */
#include "fakecuda.h"

#include <search.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

typedef struct {
    CUmemGenericAllocationHandle handle;   /* key */
    int fd;
    size_t size;                           /* bytes */
    CUmemAllocationProp prop;
    int handle_refs, map_refs;
    UT_hash_handle hh;
} fc_phys;

typedef struct {
    CUdeviceptr base;
    size_t size;          /* bytes */
    int nmaps;            /* live mappings inside */
} fc_reservation;

static fc_phys *g_phys;
static void *g_reservations;     /* tsearch tree by range */
static CUmemGenericAllocationHandle g_next_handle = 0x1000;
static CUmemGenericAllocationHandle g_freed_handle; /* FAKECUDA_VMM_REUSE: 0 or next */

static int res_cmp(const void *pa, const void *pb)
{
    const fc_reservation *a = pa, *b = pb;
    if (a->base + a->size <= b->base)
        return -1;
    if (b->base + b->size <= a->base)
        return 1;
    return 0;
}

/* The reservation that overlaps [p, p+n), if any. */
static fc_reservation *res_find(CUdeviceptr p, size_t n)
{
    fc_reservation key = { p, n, 0 };
    void *node = tfind(&key, &g_reservations, res_cmp);
    return node ? *(fc_reservation **)node : NULL;
}

static fc_phys *phys_find(CUmemGenericAllocationHandle h)
{
    fc_phys *p;
    HASH_FIND(hh, g_phys, &h, sizeof h, p);
    return p;
}

static void phys_maybe_free(fc_phys *p)
{
    if (p->handle_refs > 0 || p->map_refs > 0)
        return;
    HASH_DELETE(hh, g_phys, p);
    if (fc_knobs_get()->vmm_reuse)
        g_freed_handle = p->handle;
    close(p->fd);
    fc_uncharge(p->prop.location.id, p->size);
    fc_count_free();
    free(p);
}

static bool prop_ok(const CUmemAllocationProp *prop)
{
    return prop && prop->type == CU_MEM_ALLOCATION_TYPE_PINNED &&
           prop->location.type == CU_MEM_LOCATION_TYPE_DEVICE && fc_device_valid(prop->location.id);
}

CUresult cuMemGetAllocationGranularity(size_t *granularity, const CUmemAllocationProp *prop,
                                       CUmemAllocationGranularity_flags option)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!granularity || !prop_ok(prop) || (option != CU_MEM_ALLOC_GRANULARITY_MINIMUM &&
                                           option != CU_MEM_ALLOC_GRANULARITY_RECOMMENDED))
        return CUDA_ERROR_INVALID_VALUE;
    *granularity = FC_GRANULARITY;
    return CUDA_SUCCESS;
}

/* Lock held; arguments checked. */
static CUresult phys_create(size_t size, const CUmemAllocationProp *prop, fc_phys **out)
{
    CUresult rc = fc_gate();
    if (rc == CUDA_SUCCESS)
        rc = fc_charge(prop->location.id, size);
    if (rc != CUDA_SUCCESS)
        return rc;
    int fd = memfd_create("fakecuda-vmm", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)size) != 0) {
        if (fd >= 0)
            close(fd);
        fc_uncharge(prop->location.id, size);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    fc_phys *p = calloc(1, sizeof *p);
    if (!p)
        abort();
    p->handle = g_freed_handle ? g_freed_handle : g_next_handle++;
    g_freed_handle = 0;
    p->fd = fd;
    p->size = size;
    p->prop = *prop;
    p->handle_refs = 1;
    HASH_ADD(hh, g_phys, handle, sizeof p->handle, p);
    fc_count_alloc();
    *out = p;
    return CUDA_SUCCESS;
}

CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size, const CUmemAllocationProp *prop,
                     unsigned long long flags)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!handle || !prop_ok(prop) || flags != 0 || size == 0 || size % FC_GRANULARITY)
        return CUDA_ERROR_INVALID_VALUE;
    fc_phys *p;
    fc_lock();
    CUresult rc = phys_create(size, prop, &p);
    if (rc == CUDA_SUCCESS)
        *handle = p->handle;
    fc_unlock();
    return rc;
}

/* While mapped, the memory stays; it goes with the last unmap. */
CUresult cuMemRelease(CUmemGenericAllocationHandle handle)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_lock();
    fc_phys *p = phys_find(handle);
    bool ok = p && p->handle_refs > 0;
    if (ok) {
        p->handle_refs--;
        phys_maybe_free(p);
    }
    fc_unlock();
    if (ok)
        fc_release_delay();
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* A tile pool handle mapped into a sparse or deferred-mapping array
 * (array.c): the mapping holds the memory as a cuMemMap mapping does. NULL
 * for a handle that is not live. */
void *fc_vmm_tile_ref(CUmemGenericAllocationHandle h)
{
    fc_phys *p = phys_find(h);
    if (!p || p->handle_refs == 0)
        return NULL;
    p->map_refs++;
    return p;
}

void fc_vmm_tile_unref(void *phys)
{
    fc_phys *p = phys;
    p->map_refs--;
    phys_maybe_free(p);
}

CUresult cuMemRetainAllocationHandle(CUmemGenericAllocationHandle *handle, void *addr)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!handle)
        return CUDA_ERROR_INVALID_VALUE;
    fc_lock();
    fc_alloc *a = fc_alloc_containing((CUdeviceptr)(uintptr_t)addr);
    bool ok = a && a->kind == FC_KIND_VMM;
    if (ok) {
        fc_phys *p = a->owner;
        p->handle_refs++;
        *handle = p->handle;
    }
    fc_unlock();
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemGetAllocationPropertiesFromHandle(CUmemAllocationProp *prop, CUmemGenericAllocationHandle handle)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!prop)
        return CUDA_ERROR_INVALID_VALUE;
    fc_lock();
    fc_phys *p = phys_find(handle);
    if (p)
        *prop = p->prop;
    fc_unlock();
    return p ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* ---- address reservations ---- */

/* Reserves size bytes aligned to align (a power of two), PROT_NONE. */
static void *reserve_aligned(size_t size, size_t align, CUdeviceptr hint)
{
    const int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
    if (hint && hint % align == 0) {
        void *p = mmap((void *)(uintptr_t)hint, size, PROT_NONE, flags, -1, 0);
        if (p == (void *)(uintptr_t)hint)
            return p;
        if (p != MAP_FAILED)
            munmap(p, size);
    }
    char *raw = mmap(NULL, size + align, PROT_NONE, flags, -1, 0);
    if (raw == MAP_FAILED)
        return NULL;
    uintptr_t start = fc_round_up((uintptr_t)raw, align);
    if (start > (uintptr_t)raw)
        munmap(raw, start - (uintptr_t)raw);
    size_t tail = (uintptr_t)raw + size + align - (start + size);
    if (tail)
        munmap((char *)(start + size), tail);
    return (void *)start;
}

CUresult cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t alignment, CUdeviceptr addr,
                             unsigned long long flags)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    size_t align = alignment ? alignment : FC_GRANULARITY;
    if (!ptr || size == 0 || size % FC_GRANULARITY || (align & (align - 1)) || flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (align < FC_GRANULARITY)
        align = FC_GRANULARITY;
    void *p = reserve_aligned(size, align, addr);
    if (!p)
        return CUDA_ERROR_OUT_OF_MEMORY;
    fc_reservation *r = calloc(1, sizeof *r);
    if (!r)
        abort();
    r->base = (CUdeviceptr)(uintptr_t)p;
    r->size = size;
    fc_lock();
    if (!tsearch(r, &g_reservations, res_cmp))
        abort();
    fc_unlock();
    *ptr = r->base;
    return CUDA_SUCCESS;
}

/* The whole reservation, with nothing mapped in it any more. */
CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_lock();
    fc_reservation *r = res_find(ptr, 1);
    bool ok = r && r->base == ptr && r->size == size && r->nmaps == 0;
    if (ok) {
        tdelete(r, &g_reservations, res_cmp);
        munmap((void *)(uintptr_t)r->base, r->size);
        free(r);
    }
    fc_unlock();
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* ---- mappings ---- */

static bool map_args_ok(CUdeviceptr ptr, size_t size, size_t offset, const fc_phys *p)
{
    if (!p || size == 0 || size % FC_GRANULARITY || offset % FC_GRANULARITY || ptr % FC_GRANULARITY)
        return false;
    if (offset > p->size || size > p->size - offset)
        return false;
    fc_reservation *r = res_find(ptr, size);
    if (!r || ptr < r->base || ptr + size > r->base + r->size)
        return false;
    for (CUdeviceptr q = ptr; q < ptr + size; q += FC_GRANULARITY)
        if (fc_alloc_containing(q))
            return false;   /* already mapped */
    return true;
}

CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                  unsigned long long flags)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_lock();
    fc_phys *p = phys_find(handle);
    CUresult rc = CUDA_ERROR_INVALID_VALUE;
    if (flags == 0 && map_args_ok(ptr, size, offset, p) &&
        mmap((void *)(uintptr_t)ptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, p->fd,
             (off_t)offset) != MAP_FAILED) {
        fc_alloc *a = fc_alloc_new(size, FC_KIND_VMM, p->prop.location.id);
        a->base = ptr;
        a->owner = p;
        fc_alloc_insert(a);
        p->map_refs++;
        res_find(ptr, size)->nmaps++;
        rc = CUDA_SUCCESS;
    }
    fc_unlock();
    if (rc == CUDA_SUCCESS)
        fc_map_delay();
    return rc;
}

static void mapping_drop(fc_alloc *a)
{
    fc_phys *p = a->owner;
    fc_reservation *r = res_find(a->base, a->size);
    const int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED;
    mmap((void *)(uintptr_t)a->base, a->size, PROT_NONE, flags, -1, 0);
    fc_alloc_remove(a);
    if (r)
        r->nmaps--;
    p->map_refs--;
    phys_maybe_free(p);
    free(a);
}

/* [ptr, ptr+size) must lie in one reservation, and every mapping it touches
 * must lie wholly inside it. Unmapped gaps are fine: measured, unmapping an
 * already unmapped range of a reservation succeeds. */
static bool unmap_range_ok(CUdeviceptr ptr, size_t size)
{
    fc_reservation *r = res_find(ptr, size);
    if (size == 0 || size % FC_GRANULARITY || !r || ptr < r->base || ptr + size > r->base + r->size)
        return false;
    for (CUdeviceptr q = ptr; q < ptr + size;) {
        fc_alloc *a = fc_alloc_containing(q);
        if (a && (a->base < ptr || a->size > ptr + size - a->base))
            return false;
        q = a ? a->base + a->size : q + FC_GRANULARITY;
    }
    return true;
}

CUresult cuMemUnmap(CUdeviceptr ptr, size_t size)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_lock();
    bool ok = unmap_range_ok(ptr, size);
    for (CUdeviceptr q = ptr; ok && q < ptr + size;) {
        fc_alloc *a = fc_alloc_containing(q);
        q = a ? a->base + a->size : q + FC_GRANULARITY;
        if (a)
            mapping_drop(a);
    }
    fc_unlock();
    if (ok)
        fc_unmap_delay();
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc, size_t count)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!desc || count == 0 || size == 0)
        return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < count; i++)
        if (desc[i].location.type != CU_MEM_LOCATION_TYPE_DEVICE || !fc_device_valid(desc[i].location.id))
            return CUDA_ERROR_INVALID_VALUE;
    fc_lock();
    bool ok = fc_range_ok(ptr, size);
    fc_unlock();
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
