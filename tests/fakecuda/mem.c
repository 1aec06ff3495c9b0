/*
 * mem.c: the allocation table and plain device memory. Every range that
 * device pointers may point into (cuMemAlloc*, pitch, managed, pool blocks
 * in use, VMM mappings, graph allocations) is an fc_alloc, found by its base
 * in a uthash table (O(1), for frees) and by any interior address in a glibc
 * tsearch tree ordered by range (O(log n), for attributes and copies).
 * "Device memory" is host memory and device pointers are host addresses, so
 * copies are memcpy.
 */
#include "fakecuda.h"
#include "fakecuda_query.h"

#include <search.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define FC_MMAP_MIN (64u << 10)   /* smaller backings come from the heap, bytes */

static fc_alloc *g_by_base;       /* uthash, keyed by base */
static void *g_ranges;            /* tsearch tree of non-overlapping ranges */
static unsigned long long g_next_id;

/* Orders disjoint ranges; "equal" means overlapping, so a one-byte key finds
 * the range that contains it. Every range in the tree has size > 0. */
static int range_cmp(const void *pa, const void *pb)
{
    const fc_alloc *a = pa, *b = pb;
    if (a->base + a->size <= b->base)
        return -1;
    if (b->base + b->size <= a->base)
        return 1;
    return 0;
}

fc_alloc *fc_alloc_new(size_t size, fc_kind kind, int dev)
{
    fc_alloc *a = calloc(1, sizeof *a);
    if (!a)
        abort();   /* test driver: host OOM is not a case we model */
    a->size = size;
    a->kind = kind;
    a->dev = dev;
    a->id = ++g_next_id;
    return a;
}

CUresult fc_alloc_back(fc_alloc *a)
{
    size_t len = fc_round_up(a->size, FC_ALIGN);
    void *p;
    if (len >= FC_MMAP_MIN || a->low32) {
        len = fc_round_up(len, (size_t)sysconf(_SC_PAGESIZE));
        int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | (a->low32 ? MAP_32BIT : 0);
        p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, -1, 0);
        if (p == MAP_FAILED)
            return CUDA_ERROR_OUT_OF_MEMORY;
        a->backing = FC_BACK_MMAP;
    } else {
        p = aligned_alloc(FC_ALIGN, len);
        if (!p)
            return CUDA_ERROR_OUT_OF_MEMORY;
        a->backing = FC_BACK_HEAP;
    }
    a->base = (CUdeviceptr)(uintptr_t)p;
    a->mapped = len;
    return CUDA_SUCCESS;
}

void fc_alloc_unback(fc_alloc *a)
{
    void *p = (void *)(uintptr_t)a->base;
    if (a->backing == FC_BACK_MMAP)
        munmap(p, a->mapped);
    else if (a->backing == FC_BACK_HEAP)
        free(p);
    a->backing = FC_BACK_NONE;
}

void fc_alloc_insert(fc_alloc *a)
{
    HASH_ADD(hh, g_by_base, base, sizeof a->base, a);
    if (!tsearch(a, &g_ranges, range_cmp))
        abort();
}

void fc_alloc_remove(fc_alloc *a)
{
    HASH_DELETE(hh, g_by_base, a);
    tdelete(a, &g_ranges, range_cmp);
}

fc_alloc *fc_alloc_find(CUdeviceptr base)
{
    fc_alloc *a;
    HASH_FIND(hh, g_by_base, &base, sizeof base, a);
    return a;
}

fc_alloc *fc_alloc_containing(CUdeviceptr p)
{
    fc_alloc key = { .base = p, .size = 1 };
    void *node = tfind(&key, &g_ranges, range_cmp);
    return node ? *(fc_alloc **)node : NULL;
}

/* Only VMM mappings may be crossed: adjacent mappings of one reservation
 * form one device range, while two cuMemAlloc blocks that happen to be
 * adjacent in host memory do not. */
bool fc_range_ok(CUdeviceptr p, size_t n)
{
    while (n > 0) {
        fc_alloc *a = fc_alloc_containing(p);
        if (!a)
            return false;
        size_t room = a->base + a->size - p;
        if (room >= n)
            return true;
        if (a->kind != FC_KIND_VMM)
            return false;
        p += room;
        n -= room;
    }
    return true;
}

/* Frees a plain allocation (device, pitch, managed). */
static void plain_free(fc_alloc *a)
{
    fc_alloc_remove(a);
    fc_uncharge(a->dev, a->charged);
    fc_alloc_unback(a);
    free(a);
}

void fc_mem_release_ctx(CUcontext ctx)
{
    fc_alloc *a, *tmp;
    HASH_ITER(hh, g_by_base, a, tmp) {
        if (a->ctx == ctx && a->kind <= FC_KIND_MANAGED)
            plain_free(a);
    }
}

/* ---- cuMemAlloc family ---- */

typedef struct {
    size_t size;      /* range size, bytes */
    size_t charge;    /* bytes against capacity */
    fc_kind kind;
    bool low32;
} alloc_req;

/* Lock held; the current context was checked by the caller. */
static CUresult plain_alloc(CUcontext ctx, const alloc_req *r, CUdeviceptr *dptr)
{
    CUresult rc = fc_gate();
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = fc_charge(ctx->dev, r->charge);
    if (rc != CUDA_SUCCESS)
        return rc;
    fc_alloc *a = fc_alloc_new(r->size, r->kind, ctx->dev);
    a->low32 = r->low32;
    a->charged = r->charge;
    a->ctx = ctx;
    rc = fc_alloc_back(a);
    if (rc != CUDA_SUCCESS) {
        fc_uncharge(ctx->dev, r->charge);
        free(a);
        return rc;
    }
    fc_alloc_insert(a);
    fc_count_alloc();
    *dptr = a->base;
    return CUDA_SUCCESS;
}

/* Driver order: initialised, then a current context, then the arguments. */
static CUresult alloc_entry(const alloc_req *r, CUdeviceptr *dptr)
{
    CUcontext ctx;
    fc_lock();
    CUresult rc = fc_ctx_current(&ctx);
    if (rc == CUDA_SUCCESS)
        rc = (!dptr || r->size == 0) ? CUDA_ERROR_INVALID_VALUE : plain_alloc(ctx, r, dptr);
    fc_unlock();
    return rc;
}

CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
{
    alloc_req r = { bytesize, bytesize, FC_KIND_DEVICE, false };
    return alloc_entry(&r, dptr);
}

/* Legacy 32-bit ABI: the memory is mapped below 4 GiB so the address fits. */
CUresult cuMemAlloc(CUdeviceptr_v1 *dptr, unsigned int bytesize)
{
    CUdeviceptr p = 0;
    alloc_req r = { bytesize, bytesize, FC_KIND_DEVICE, true };
    CUresult rc = alloc_entry(&r, dptr ? &p : NULL);
    if (rc == CUDA_SUCCESS)
        *dptr = (CUdeviceptr_v1)p;
    return rc;
}

/* The pitch alignment: 512 bytes, or FAKECUDA_PITCH_ALIGN (a power of two
 * above 512) to play a GPU whose pitch exceeds the shim's estimate. */
static size_t pitch_align(void)
{
    const char *s = getenv("FAKECUDA_PITCH_ALIGN");
    unsigned long v = s ? strtoul(s, NULL, 10) : 0;
    return v > FC_ALIGN && (v & (v - 1)) == 0 ? v : FC_ALIGN;
}

/* Pitch is the width rounded up to the pitch alignment; pitch x height is
 * charged. */
static CUresult pitch_alloc(CUdeviceptr *dptr, size_t *pitch, size_t w, size_t h, unsigned elem,
                            bool low32)
{
    bool bad_elem = elem != 4 && elem != 8 && elem != 16;
    size_t p = fc_round_up(w, pitch_align());
    if (!pitch || bad_elem || w == 0 || h == 0 || (h > SIZE_MAX / p))
        p = 0, h = 0;
    alloc_req r = { p * h, p * h, FC_KIND_PITCH, low32 };
    CUresult rc = alloc_entry(&r, dptr);
    if (rc == CUDA_SUCCESS)
        *pitch = p;
    return rc;
}

CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pPitch, size_t WidthInBytes, size_t Height,
                            unsigned int ElementSizeBytes)
{
    return pitch_alloc(dptr, pPitch, WidthInBytes, Height, ElementSizeBytes, false);
}

CUresult cuMemAllocPitch(CUdeviceptr_v1 *dptr, unsigned int *pPitch, unsigned int WidthInBytes,
                         unsigned int Height, unsigned int ElementSizeBytes)
{
    CUdeviceptr p = 0;
    size_t pitch = 0;
    CUresult rc = pitch_alloc(dptr ? &p : NULL, pPitch ? &pitch : NULL, WidthInBytes, Height,
                              ElementSizeBytes, true);
    if (rc == CUDA_SUCCESS) {
        *dptr = (CUdeviceptr_v1)p;
        *pPitch = (unsigned int)pitch;
    }
    return rc;
}

CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags)
{
    if (flags != CU_MEM_ATTACH_GLOBAL && flags != CU_MEM_ATTACH_HOST)
        bytesize = 0;   /* reported as CUDA_ERROR_INVALID_VALUE after the context check */
    alloc_req r = { bytesize, bytesize, FC_KIND_MANAGED, false };
    return alloc_entry(&r, dptr);
}

/* ---- frees ---- */


CUresult fc_mem_free(CUdeviceptr dptr)
{
    fc_alloc *a = fc_alloc_find(dptr);
    if (!a || a->kind == FC_KIND_VMM)
        return CUDA_ERROR_INVALID_VALUE;
    if (a->kind == FC_KIND_POOL)
        fc_pool_block_free(a);
    else if (a->kind == FC_KIND_GRAPH)
        fc_graph_alloc_free(a);
    else
        plain_free(a);
    fc_count_free();
    return CUDA_SUCCESS;
}

/* Measured (H100, driver 580.159): cuMemFree(0) succeeds, even with no
 * current context; any other address needs one. FAKECUDA_FREE_DELAY_NS
 * makes the free wait first, the memory still counted, as a real free can
 * wait on the device. */
CUresult cuMemFree_v2(CUdeviceptr dptr)
{
    CUcontext ctx;
    if (fc_initialized() && dptr == 0)
        return CUDA_SUCCESS;
    if (fc_initialized())
        fc_free_delay();
    fc_lock();
    CUresult rc = fc_ctx_current(&ctx);
    if (rc == CUDA_SUCCESS)
        rc = fc_mem_free(dptr);
    fc_unlock();
    return rc;
}

CUresult cuMemFree(CUdeviceptr_v1 dptr) { return cuMemFree_v2(dptr); }

/* ---- cuMemGetInfo ---- */

CUresult cuMemGetInfo_v2(size_t *free, size_t *total)
{
    CUcontext ctx;
    fc_lock();
    CUresult rc = fc_ctx_current(&ctx);
    if (rc == CUDA_SUCCESS && (!free || !total))
        rc = CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS) {
        *total = fc_device_total(ctx->dev);
        *free = *total - fc_device_used(ctx->dev);
    }
    fc_unlock();
    return rc;
}

/* Legacy 32-bit ABI: both values saturate at UINT_MAX. */
CUresult cuMemGetInfo(unsigned int *free, unsigned int *total)
{
    size_t f = 0, t = 0;
    CUresult rc = cuMemGetInfo_v2(free ? &f : NULL, total ? &t : NULL);
    if (rc == CUDA_SUCCESS) {
        *free = f > UINT32_MAX ? UINT32_MAX : (unsigned int)f;
        *total = t > UINT32_MAX ? UINT32_MAX : (unsigned int)t;
    }
    return rc;
}

/* ---- in-process queries (fakecuda_query.h) ---- */

size_t fakecuda_live_allocs(int dev)
{
    size_t n = 0;
    fc_alloc *a, *tmp;
    fc_lock();
    HASH_ITER(hh, g_by_base, a, tmp) {
        n += a->dev == dev && a->kind <= FC_KIND_MANAGED;
    }
    fc_unlock();
    return n;
}

int fakecuda_range_of(unsigned long long ptr, unsigned long long *base, size_t *size,
                      unsigned long long *id)
{
    fc_lock();
    fc_alloc *a = fc_alloc_containing((CUdeviceptr)ptr);
    if (a && base)
        *base = a->base;
    if (a && size)
        *size = a->size;
    if (a && id)
        *id = a->id;
    fc_unlock();
    return a != NULL;
}
