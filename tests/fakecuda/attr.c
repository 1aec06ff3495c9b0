/*
 * attr.c: what the driver tells about a device address: cuMemGetAddressRange
 * (any interior address of an allocation or VMM mapping) and
 * cuPointerGetAttribute(s). Value types as the real driver writes them
 * (measured): boolean attributes and MEMORY_TYPE as unsigned int,
 * DEVICE_ORDINAL as int (-2: not device memory), RANGE_SIZE as size_t.
 */
#include "fakecuda.h"

#include <string.h>

/* Measured on driver 580.159: boolean attributes are written as 4 bytes. */
static void put_bool(void *data, bool v) { *(unsigned int *)data = v; }

static unsigned int memory_type(const fc_alloc *a)
{
    return a ? CU_MEMORYTYPE_DEVICE : 0;
}

/* Writes one attribute of a (NULL: the "not a CUDA pointer" defaults that
 * cuPointerGetAttributes reports). Returns INVALID_VALUE when the attribute
 * does not apply and strict is set (cuPointerGetAttribute). */
static CUresult attr_value(const fc_alloc *a, CUpointer_attribute attr, void *data, bool strict)
{
    bool managed = a && a->kind == FC_KIND_MANAGED;
    switch (attr) {
    case CU_POINTER_ATTRIBUTE_CONTEXT: *(CUcontext *)data = a ? a->ctx : NULL; break;
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE: *(unsigned int *)data = memory_type(a); break;
    case CU_POINTER_ATTRIBUTE_DEVICE_POINTER: *(CUdeviceptr *)data = a ? a->base : 0; break;
    case CU_POINTER_ATTRIBUTE_HOST_POINTER:
        if (strict && !managed)
            return CUDA_ERROR_INVALID_VALUE;   /* device memory has no host address */
        *(void **)data = managed ? (void *)(uintptr_t)a->base : NULL;
        break;
    case CU_POINTER_ATTRIBUTE_SYNC_MEMOPS: put_bool(data, false); break;
    case CU_POINTER_ATTRIBUTE_BUFFER_ID:
    case CU_POINTER_ATTRIBUTE_MEMORY_BLOCK_ID: *(unsigned long long *)data = a ? a->id : 0; break;
    case CU_POINTER_ATTRIBUTE_IS_MANAGED: put_bool(data, managed); break;
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL: *(int *)data = a ? a->dev : -2; break;
    case CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE:
        put_bool(data, a && a->kind == FC_KIND_DEVICE);
        break;
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR:
    case CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR: *(CUdeviceptr *)data = a ? a->base : 0; break;
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE:
    case CU_POINTER_ATTRIBUTE_MAPPING_SIZE: *(size_t *)data = a ? a->size : 0; break;
    case CU_POINTER_ATTRIBUTE_MAPPED: put_bool(data, a != NULL); break;
    case CU_POINTER_ATTRIBUTE_ALLOWED_HANDLE_TYPES: *(unsigned long long *)data = 0; break;
    case CU_POINTER_ATTRIBUTE_IS_GPU_DIRECT_RDMA_CAPABLE:
    case CU_POINTER_ATTRIBUTE_IS_HW_DECOMPRESS_CAPABLE: put_bool(data, false); break;
    case CU_POINTER_ATTRIBUTE_ACCESS_FLAGS:
        *(unsigned int *)data = a ? CU_POINTER_ATTRIBUTE_ACCESS_FLAG_READWRITE : 0;
        break;
    case CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE:
        *(CUmemoryPool *)data = a && a->kind == FC_KIND_POOL ? a->owner : NULL;
        break;
    default: return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

/* Lock held: the allocation the pointer queries know at p, or NULL. */
static fc_alloc *known_at(CUdeviceptr p)
{
    fc_alloc *a = fc_alloc_containing(p);
    return a && !fc_graph_alloc_unmapped(a) ? a : NULL;
}

CUresult cuPointerGetAttribute(void *data, CUpointer_attribute attribute, CUdeviceptr ptr)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!data)
        return CUDA_ERROR_INVALID_VALUE;
    fc_lock();
    fc_alloc *a = known_at(ptr);
    CUresult rc = a ? attr_value(a, attribute, data, true) : CUDA_ERROR_INVALID_VALUE;
    fc_unlock();
    fc_pointer_attr_delay();
    return rc;
}

/* Unlike cuPointerGetAttribute, an address that is not device memory is not
 * an error: every attribute gets its default (cuda.h documents this). */
CUresult cuPointerGetAttributes(unsigned int numAttributes, CUpointer_attribute *attributes,
                                void **data, CUdeviceptr ptr)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (numAttributes == 0 || !attributes || !data)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = CUDA_SUCCESS;
    fc_lock();
    fc_alloc *a = known_at(ptr);
    for (unsigned int i = 0; i < numAttributes && rc == CUDA_SUCCESS; i++) {
        bool range = attributes[i] == CU_POINTER_ATTRIBUTE_RANGE_START_ADDR ||
                     attributes[i] == CU_POINTER_ATTRIBUTE_RANGE_SIZE;
        if (!a && range)
            continue;   /* the real driver leaves these untouched (measured) */
        rc = data[i] ? attr_value(a, attributes[i], data[i], false) : CUDA_ERROR_INVALID_VALUE;
    }
    fc_unlock();
    return rc;
}

/* pbase and psize are each optional. */
CUresult cuMemGetAddressRange_v2(CUdeviceptr *pbase, size_t *psize, CUdeviceptr dptr)
{
    CUcontext ctx;
    fc_lock();
    CUresult rc = fc_ctx_current(&ctx);
    fc_alloc *a = rc == CUDA_SUCCESS && !fc_knobs_get()->no_ranges ? known_at(dptr)
                                                                   : NULL;
    if (rc == CUDA_SUCCESS && !a)
        rc = CUDA_ERROR_NOT_FOUND;
    if (rc == CUDA_SUCCESS && pbase)
        *pbase = a->base;
    if (rc == CUDA_SUCCESS && psize)
        *psize = a->size;
    fc_unlock();
    return rc;
}

CUresult cuMemGetAddressRange(CUdeviceptr_v1 *pbase, unsigned int *psize, CUdeviceptr_v1 dptr)
{
    CUdeviceptr b = 0;
    size_t s = 0;
    CUresult rc = cuMemGetAddressRange_v2(&b, &s, dptr);
    if (rc == CUDA_SUCCESS && pbase)
        *pbase = (CUdeviceptr_v1)b;
    if (rc == CUDA_SUCCESS && psize)
        *psize = s > UINT32_MAX ? UINT32_MAX : (unsigned int)s;
    return rc;
}
