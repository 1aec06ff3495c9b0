/*
 * test_fakecuda_allocators.c: the test driver (tests/fakecuda) answers like
 * the real driver for memory that cuMemAlloc does not hand out: the
 * stream-ordered allocator and its pools, VMM, arrays, and the allocation
 * nodes of graphs, with what each charges against the device's capacity
 * and when it gives it back. Shared helpers: fakecudatest.h.
 */
#include <criterion/criterion.h>

#include <cuda.h>
#include <stdint.h>
#include <stdlib.h>

#include "fakecudatest.h"

/* Per-thread-stream twins: cuda.h declares them only under
 * CUDA_API_PER_THREAD_DEFAULT_STREAM. */
typedef CUresult (*alloc_async_fn)(CUdeviceptr *dptr, size_t bytesize, CUstream s);
typedef CUresult (*free_async_fn)(CUdeviceptr dptr, CUstream s);
typedef CUresult (*graph_launch_fn)(CUgraphExec exec, CUstream s);

static cuuint64_t pool_attr(CUmemoryPool pool, CUmemPool_attribute attr)
{
    cuuint64_t v = 0;
    EXPECT_CU(cuMemPoolGetAttribute(pool, attr, &v), CUDA_SUCCESS);
    return v;
}

/* ---- stream-ordered allocator and pools ---- */

Test(fakecuda, freed_async_blocks_stay_reserved_and_are_reused)
{
    start(NULL);
    CUstream s;
    CUmemoryPool pool;
    CUdeviceptr a, b;
    EXPECT_CU(cuStreamCreate(&s, 0), CUDA_SUCCESS);
    EXPECT_CU(cuDeviceGetMemPool(&pool, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemAllocAsync(&a, 8 * MiB, s), CUDA_SUCCESS);
    cr_assert_eq(pool_attr(pool, CU_MEMPOOL_ATTR_USED_MEM_CURRENT), 8 * MiB);
    EXPECT_CU(cuMemFreeAsync(a, s), CUDA_SUCCESS);
    EXPECT_CU(cuMemFreeAsync(a, s), CUDA_ERROR_INVALID_VALUE);
    cr_assert_eq(pool_attr(pool, CU_MEMPOOL_ATTR_USED_MEM_CURRENT), 0);
    cr_assert_eq(pool_attr(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT), 8 * MiB);
    cr_assert_eq(fakecuda_used_bytes(0), 8 * MiB);   /* still charged */
    EXPECT_CU(cuMemAllocAsync(&b, 6 * MiB, s), CUDA_SUCCESS);
    cr_assert_eq(b, a);                                /* reused */
    cr_assert_eq(fakecuda_used_bytes(0), 8 * MiB);
    EXPECT_CU(cuMemFreeAsync(b, s), CUDA_SUCCESS);
    EXPECT_CU(cuStreamSynchronize(s), CUDA_SUCCESS);   /* threshold 0: all released */
    cr_assert_eq(pool_attr(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT), 0);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    cr_assert_eq(pool_attr(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH), 8 * MiB);
}

Test(fakecuda, sync_points_release_reserve_above_the_threshold)
{
    start(NULL);
    CUmemoryPool pool;
    CUevent ev;
    CUdeviceptr p[3];
    cuuint64_t threshold = 16 * MiB;
    EXPECT_CU(cuDeviceGetDefaultMemPool(&pool, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemPoolSetAttribute(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &threshold), CUDA_SUCCESS);
    for (int i = 0; i < 3; i++)
        EXPECT_CU(cuMemAllocAsync(&p[i], 8 * MiB, NULL), CUDA_SUCCESS);
    for (int i = 0; i < 3; i++)
        EXPECT_CU(cuMemFreeAsync(p[i], NULL), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 24 * MiB);
    EXPECT_CU(cuEventCreate(&ev, 0), CUDA_SUCCESS);
    EXPECT_CU(cuEventRecord(ev, NULL), CUDA_SUCCESS);
    EXPECT_CU(cuEventSynchronize(ev), CUDA_SUCCESS);
    cr_assert_eq(pool_attr(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT), 16 * MiB);
    cr_assert_eq(fakecuda_used_bytes(0), 16 * MiB);
    EXPECT_CU(cuMemPoolTrimTo(pool, 8 * MiB), CUDA_SUCCESS);
    cr_assert_eq(pool_attr(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT), 8 * MiB);
    EXPECT_CU(cuMemPoolTrimTo(pool, 0), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(cuCtxSynchronize(), CUDA_SUCCESS);
}

Test(fakecuda, trim_never_releases_blocks_in_use)
{
    start(NULL);
    CUmemoryPool pool;
    CUdeviceptr p;
    EXPECT_CU(cuDeviceGetDefaultMemPool(&pool, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemAllocAsync(&p, 4 * MiB, NULL), CUDA_SUCCESS);
    EXPECT_CU(cuMemPoolTrimTo(pool, 0), CUDA_SUCCESS);
    EXPECT_CU(cuStreamSynchronize(NULL), CUDA_SUCCESS);
    cr_assert_eq(pool_attr(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT), 4 * MiB);
    EXPECT_CU(cuMemsetD8(p, 1, 4 * MiB), CUDA_SUCCESS);
    EXPECT_CU(cuMemFree(p), CUDA_SUCCESS);   /* measured: cuMemFree takes pool memory */
}

Test(fakecuda, a_pool_allocation_does_not_trim_other_pools)
{
    start("67108864");   /* 64 MiB */
    CUmemoryPool a, b;
    CUmemPoolProps props = { .allocType = CU_MEM_ALLOCATION_TYPE_PINNED,
                             .location = { CU_MEM_LOCATION_TYPE_DEVICE, 0 } };
    cuuint64_t keep_all = UINT64_MAX;
    CUdeviceptr p, q;
    EXPECT_CU(cuMemPoolCreate(&a, &props), CUDA_SUCCESS);
    EXPECT_CU(cuMemPoolCreate(&b, &props), CUDA_SUCCESS);
    EXPECT_CU(cuMemPoolSetAttribute(a, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &keep_all), CUDA_SUCCESS);
    EXPECT_CU(cuMemAllocFromPoolAsync(&p, 48 * MiB, a, NULL), CUDA_SUCCESS);
    EXPECT_CU(cuMemFreeAsync(p, NULL), CUDA_SUCCESS);
    EXPECT_CU(cuStreamSynchronize(NULL), CUDA_SUCCESS);
    cr_assert_eq(pool_attr(a, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT), 48 * MiB);
    EXPECT_CU(cuMemAllocFromPoolAsync(&q, 32 * MiB, b, NULL), CUDA_ERROR_OUT_OF_MEMORY);
    EXPECT_CU(cuMemPoolTrimTo(a, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemAllocFromPoolAsync(&q, 32 * MiB, b, NULL), CUDA_SUCCESS);
    EXPECT_CU(cuMemPoolDestroy(b), CUDA_SUCCESS);   /* lingers until q comes back */
    cr_assert_eq(fakecuda_used_bytes(0), 32 * MiB);
    EXPECT_CU(cuMemFreeAsync(q, NULL), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(cuMemPoolDestroy(b), CUDA_ERROR_INVALID_VALUE);
}

Test(fakecuda, pool_attributes_and_device_pools)
{
    start(NULL);
    CUmemoryPool def, mine, cur;
    CUmemPoolProps props = { .allocType = CU_MEM_ALLOCATION_TYPE_PINNED,
                             .location = { CU_MEM_LOCATION_TYPE_DEVICE, 0 } };
    cuuint64_t v = 5;
    CUdeviceptr p;
    EXPECT_CU(cuDeviceGetDefaultMemPool(&def, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemPoolDestroy(def), CUDA_ERROR_INVALID_VALUE);   /* measured */
    EXPECT_CU(cuMemPoolSetAttribute(def, CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH, &v), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemPoolSetAttribute(def, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &v), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemPoolCreate(&mine, &props), CUDA_SUCCESS);
    EXPECT_CU(cuDeviceSetMemPool(0, mine), CUDA_SUCCESS);
    EXPECT_CU(cuDeviceGetMemPool(&cur, 0), CUDA_SUCCESS);
    cr_assert_eq(cur, mine);
    EXPECT_CU(cuMemAllocAsync(&p, 1000, NULL), CUDA_SUCCESS);
    cr_assert_eq(pool_attr(mine, CU_MEMPOOL_ATTR_USED_MEM_CURRENT), 1000);   /* measured: bytes asked */
    EXPECT_CU(cuMemFreeAsync(p, NULL), CUDA_SUCCESS);
    v = 0;
    EXPECT_CU(cuMemPoolSetAttribute(mine, CU_MEMPOOL_ATTR_USED_MEM_HIGH, &v), CUDA_SUCCESS);
    cr_assert_eq(pool_attr(mine, CU_MEMPOOL_ATTR_USED_MEM_HIGH), 0);
    CUmemoryPool other;
    EXPECT_CU(cuMemAllocFromPoolAsync(&p, 16, NULL, NULL), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemAllocAsync(&p, 0, NULL), CUDA_ERROR_INVALID_VALUE);
    alloc_async_fn alloc_ptsz = (alloc_async_fn)sym("cuMemAllocAsync_ptsz");
    free_async_fn free_ptsz = (free_async_fn)sym("cuMemFreeAsync_ptsz");
    EXPECT_CU(alloc_ptsz(&p, 64, CU_STREAM_PER_THREAD), CUDA_SUCCESS);
    EXPECT_CU(free_ptsz(p, CU_STREAM_PER_THREAD), CUDA_SUCCESS);
    EXPECT_CU(cuMemPoolDestroy(mine), CUDA_SUCCESS);
    EXPECT_CU(cuDeviceGetMemPool(&other, 0), CUDA_SUCCESS);
    cr_assert_eq(other, def);
}

/* ---- VMM ---- */

static CUmemAllocationProp vmm_prop(void)
{
    CUmemAllocationProp prop = { .type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                 .location = { CU_MEM_LOCATION_TYPE_DEVICE, 0 } };
    return prop;
}

Test(fakecuda, vmm_mappings_are_real_memory_and_alias_their_handle)
{
    start(NULL);
    CUmemAllocationProp prop = vmm_prop();
    size_t gran;
    CUmemGenericAllocationHandle h;
    CUdeviceptr va, base;
    size_t size;
    EXPECT_CU(cuMemGetAllocationGranularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM), CUDA_SUCCESS);
    cr_assert_eq(gran, 2 * MiB);
    EXPECT_CU(cuMemCreate(&h, MiB, &prop, 0), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemCreate(&h, gran, &prop, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemAddressReserve(&va, 4 * gran, 0, 0, 0), CUDA_SUCCESS);
    cr_assert_eq(va % gran, 0);
    EXPECT_CU(cuMemMap(va, gran, 0, h, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemMap(va, gran, 0, h, 0), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemMap(va + 2 * gran, gran, 0, h, 0), CUDA_SUCCESS);   /* second view */
    CUmemAccessDesc ad = { { CU_MEM_LOCATION_TYPE_DEVICE, 0 }, CU_MEM_ACCESS_FLAGS_PROT_READWRITE };
    EXPECT_CU(cuMemSetAccess(va, gran, &ad, 1), CUDA_SUCCESS);
    EXPECT_CU(cuMemsetD32(va + 4096, 0xabcd1234, 1), CUDA_SUCCESS);
    cr_assert_eq(*(volatile uint32_t *)(uintptr_t)(va + 2 * gran + 4096), 0xabcd1234);
    EXPECT_CU(cuMemGetAddressRange(&base, &size, va + 100), CUDA_SUCCESS);
    cr_assert(base == va && size == gran);
    unsigned int type = 0;
    EXPECT_CU(cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, va + 100), CUDA_SUCCESS);
    cr_assert_eq(type, CU_MEMORYTYPE_DEVICE);
    EXPECT_CU(cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, va + gran), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemFree(va), CUDA_ERROR_INVALID_VALUE);
    CUmemGenericAllocationHandle again;
    CUmemAllocationProp got;
    EXPECT_CU(cuMemRetainAllocationHandle(&again, (void *)(uintptr_t)(va + 10)), CUDA_SUCCESS);
    cr_assert_eq(again, h);
    EXPECT_CU(cuMemGetAllocationPropertiesFromHandle(&got, h), CUDA_SUCCESS);
    cr_assert_eq(got.location.id, 0);
    EXPECT_CU(cuMemRelease(again), CUDA_SUCCESS);
    EXPECT_CU(cuMemUnmap(va + 2 * gran, gran), CUDA_SUCCESS);
    EXPECT_CU(cuMemUnmap(va, gran), CUDA_SUCCESS);
    EXPECT_CU(cuMemRelease(h), CUDA_SUCCESS);
    EXPECT_CU(cuMemAddressFree(va, 4 * gran), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
}

Test(fakecuda, vmm_release_while_mapped_defers_the_free_until_unmap)
{
    start(NULL);
    CUmemAllocationProp prop = vmm_prop();
    CUmemGenericAllocationHandle h;
    CUdeviceptr va;
    EXPECT_CU(cuMemCreate(&h, 4 * MiB, &prop, 0), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 4 * MiB);
    EXPECT_CU(cuMemAddressReserve(&va, 8 * MiB, 0, 0, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemMap(va, 4 * MiB, 0, h, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemRelease(h), CUDA_SUCCESS);
    EXPECT_CU(cuMemRelease(h), CUDA_ERROR_INVALID_VALUE);
    cr_assert_eq(fakecuda_used_bytes(0), 4 * MiB);
    EXPECT_CU(cuMemsetD8(va, 3, 4 * MiB), CUDA_SUCCESS);   /* still usable */
    EXPECT_CU(cuMemAddressFree(va, 8 * MiB), CUDA_ERROR_INVALID_VALUE);   /* still mapped */
    EXPECT_CU(cuMemUnmap(va, 2 * MiB), CUDA_ERROR_INVALID_VALUE);         /* part of a mapping */
    EXPECT_CU(cuMemUnmap(va, 4 * MiB), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(cuMemUnmap(va, 4 * MiB), CUDA_SUCCESS);   /* measured: nothing mapped is fine */
    EXPECT_CU(cuMemAddressFree(va, 4 * MiB), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemAddressFree(va, 8 * MiB), CUDA_SUCCESS);
}

Test(fakecuda, vmm_create_is_charged_and_refused_beyond_capacity)
{
    start("8388608");   /* 8 MiB */
    CUmemAllocationProp prop = vmm_prop();
    CUmemGenericAllocationHandle h1, h2;
    EXPECT_CU(cuMemCreate(&h1, 6 * MiB, &prop, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemCreate(&h2, 4 * MiB, &prop, 0), CUDA_ERROR_OUT_OF_MEMORY);
    EXPECT_CU(cuMemRelease(h1), CUDA_SUCCESS);
    EXPECT_CU(cuMemCreate(&h2, 8 * MiB, &prop, 0), CUDA_SUCCESS);
}

Test(fakecuda, vmm_retain_adds_a_reference_that_keeps_the_memory)
{
    start(NULL);
    CUmemAllocationProp prop = vmm_prop();
    CUmemGenericAllocationHandle h, again;
    CUdeviceptr va;
    EXPECT_CU(cuMemCreate(&h, 4 * MiB, &prop, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemAddressReserve(&va, 4 * MiB, 0, 0, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemMap(va, 4 * MiB, 0, h, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemRelease(h), CUDA_SUCCESS);   /* released while mapped */
    EXPECT_CU(cuMemRetainAllocationHandle(&again, (void *)(uintptr_t)va), CUDA_SUCCESS);
    EXPECT_CU(cuMemUnmap(va, 4 * MiB), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 4 * MiB);   /* the retained reference */
    EXPECT_CU(cuMemRelease(again), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(cuMemAddressFree(va, 4 * MiB), CUDA_SUCCESS);
}

/* ---- arrays ---- */

Test(fakecuda, arrays_are_charged_by_their_size)
{
    start(NULL);
    CUDA_ARRAY_DESCRIPTOR d2 = { 100, 10, CU_AD_FORMAT_FLOAT, 4 }, back;
    CUDA_ARRAY3D_DESCRIPTOR d3 = { 64, 32, 8, CU_AD_FORMAT_UNSIGNED_INT16, 2, 0 };
    CUarray a, b;
    EXPECT_CU(cuArrayCreate(&a, &d2), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 16384);    /* 16000 rounded up to 512 */
    EXPECT_CU(cuArrayGetDescriptor(&back, a), CUDA_SUCCESS);
    cr_assert(back.Width == 100 && back.Height == 10 && back.NumChannels == 4);
    EXPECT_CU(cuArray3DCreate(&b, &d3), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 16384 + 64 * 32 * 8 * 2 * 2);
    d2.NumChannels = 3;
    EXPECT_CU(cuArrayCreate(&a, &d2), CUDA_ERROR_INVALID_VALUE);
    CUDA_ARRAY_MEMORY_REQUIREMENTS req;
    EXPECT_CU(cuArrayGetMemoryRequirements(&req, b, 0), CUDA_ERROR_INVALID_VALUE);   /* measured */
    EXPECT_CU(cuArrayDestroy(b), CUDA_SUCCESS);
    EXPECT_CU(cuArrayDestroy(b), CUDA_ERROR_INVALID_HANDLE);
    EXPECT_CU(cuArrayDestroy(NULL), CUDA_ERROR_INVALID_HANDLE);
    cr_assert_eq(fakecuda_used_bytes(0), 16384);
}

Test(fakecuda, mipmapped_arrays_are_the_sum_of_their_levels)
{
    start(NULL);
    CUDA_ARRAY3D_DESCRIPTOR d = { 64, 64, 0, CU_AD_FORMAT_FLOAT, 1, 0 };
    CUmipmappedArray m;
    EXPECT_CU(cuMipmappedArrayCreate(&m, &d, 3), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 64 * 64 * 4 + 32 * 32 * 4 + 16 * 16 * 4);
    EXPECT_CU(cuMipmappedArrayDestroy(m), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    d.Flags = CUDA_ARRAY3D_DEFERRED_MAPPING;   /* no memory of its own */
    CUDA_ARRAY_MEMORY_REQUIREMENTS req;
    EXPECT_CU(cuMipmappedArrayCreate(&m, &d, 2), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(cuMipmappedArrayGetMemoryRequirements(&req, m, 0), CUDA_SUCCESS);
    cr_assert(req.size == 64 * 64 * 4 + 32 * 32 * 4 && req.alignment > 0);
}

/* Depth is the layer count of a layered array: each level keeps them all. */
Test(fakecuda, a_layered_mipmapped_array_keeps_its_layers_at_every_level)
{
    start(NULL);
    CUDA_ARRAY3D_DESCRIPTOR d = { 64, 64, 8, CU_AD_FORMAT_FLOAT, 1, CUDA_ARRAY3D_LAYERED };
    CUmipmappedArray m;
    EXPECT_CU(cuMipmappedArrayCreate(&m, &d, 3), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), (64 * 64 * 4 + 32 * 32 * 4 + 16 * 16 * 4) * 8);
    EXPECT_CU(cuMipmappedArrayDestroy(m), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
}

/* ---- graphs ---- */

/* An allocation node's parameters: `bytes` of pinned memory on device 0. */
static CUDA_MEM_ALLOC_NODE_PARAMS node_on_device_0(size_t bytes)
{
    return (CUDA_MEM_ALLOC_NODE_PARAMS){
        .poolProps = {.allocType = CU_MEM_ALLOCATION_TYPE_PINNED,
                      .location = {CU_MEM_LOCATION_TYPE_DEVICE, 0}},
        .bytesize = bytes};
}

/* *g with one allocation node of p->bytesize (its address in p->dptr),
 * instantiated as *exec. */
static void one_node_graph(CUgraph *g, CUgraphExec *exec, CUDA_MEM_ALLOC_NODE_PARAMS *p)
{
    CUgraphNode node;
    EXPECT_CU(cuGraphCreate(g, 0), CUDA_SUCCESS);
    EXPECT_CU(cuGraphAddMemAllocNode(&node, *g, NULL, 0, p), CUDA_SUCCESS);
    EXPECT_CU(cuGraphInstantiateWithFlags(exec, *g, 0), CUDA_SUCCESS);
}

Test(fakecuda, graph_alloc_nodes_charge_when_created)
{
    start("16777216");   /* 16 MiB */
    CUgraph g;
    CUgraphNode alloc_node, free_node, big;
    CUgraphExec exec;
    CUDA_MEM_ALLOC_NODE_PARAMS params = node_on_device_0(8 * MiB);
    EXPECT_CU(cuGraphCreate(&g, 0), CUDA_SUCCESS);
    EXPECT_CU(cuGraphAddMemAllocNode(&alloc_node, g, NULL, 0, &params), CUDA_SUCCESS);
    cr_assert(params.dptr != 0 && fakecuda_used_bytes(0) == 8 * MiB);
    EXPECT_CU(cuMemsetD8(params.dptr, 0, 8 * MiB), CUDA_SUCCESS);
    CUdeviceptr first = params.dptr;
    params.bytesize = 9 * MiB;
    EXPECT_CU(cuGraphAddMemAllocNode(&big, g, NULL, 0, &params), CUDA_ERROR_OUT_OF_MEMORY);
    EXPECT_CU(cuGraphAddMemFreeNode(&free_node, g, &alloc_node, 1, FAKE_PTR), CUDA_ERROR_INVALID_VALUE);
    params.bytesize = 8 * MiB;
    EXPECT_CU(cuGraphAddMemAllocNode(&big, g, NULL, 0, &params), CUDA_SUCCESS);
    EXPECT_CU(cuGraphAddMemFreeNode(&free_node, g, &big, 1, params.dptr), CUDA_SUCCESS);
    EXPECT_CU(cuGraphInstantiateWithFlags(&exec, g, 0), CUDA_SUCCESS);
    EXPECT_CU(cuGraphLaunch(exec, NULL), CUDA_SUCCESS);
    EXPECT_CU(((graph_launch_fn)sym("cuGraphLaunch_ptsz"))(exec, CU_STREAM_PER_THREAD), CUDA_SUCCESS);
    EXPECT_CU(cuGraphExecDestroy(exec), CUDA_SUCCESS);
    EXPECT_CU(cuMemFreeAsync(params.dptr, NULL), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 8 * MiB);
    EXPECT_CU(cuGraphDestroy(g), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 8 * MiB); /* launched, not freed in the graph */
    EXPECT_CU(cuMemFree(first), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
}

/* A graph node's address after cuGraphDestroy, as measured on an H100
 * (driver 580.159, graph_probe in docs/gpu-results.md). */
typedef enum { NODE_UNLAUNCHED, NODE_LIVE, NODE_FREED_IN_GRAPH } node_case_t;

static CUdeviceptr destroyed_graph_node(node_case_t c, size_t bytes)
{
    CUgraph g;
    CUgraphNode node, free_node;
    CUgraphExec exec;
    CUDA_MEM_ALLOC_NODE_PARAMS params = node_on_device_0(bytes);
    EXPECT_CU(cuGraphCreate(&g, 0), CUDA_SUCCESS);
    EXPECT_CU(cuGraphAddMemAllocNode(&node, g, NULL, 0, &params), CUDA_SUCCESS);
    if (c == NODE_FREED_IN_GRAPH)
        EXPECT_CU(cuGraphAddMemFreeNode(&free_node, g, &node, 1, params.dptr), CUDA_SUCCESS);
    EXPECT_CU(cuGraphInstantiateWithFlags(&exec, g, 0), CUDA_SUCCESS);
    if (c != NODE_UNLAUNCHED)
        EXPECT_CU(cuGraphLaunch(exec, NULL), CUDA_SUCCESS);
    EXPECT_CU(cuGraphExecDestroy(exec), CUDA_SUCCESS);
    EXPECT_CU(cuGraphDestroy(g), CUDA_SUCCESS);
    return params.dptr;
}

Test(fakecuda, memory_a_launched_graph_left_live_outlives_the_graph_until_freed)
{
    start(NULL);
    CUcontext ctx = (CUcontext)1;
    CUdeviceptr live = destroyed_graph_node(NODE_LIVE, 8 * MiB);
    cr_assert_eq(fakecuda_used_bytes(0), 8 * MiB);
    EXPECT_CU(cuPointerGetAttribute(&ctx, CU_POINTER_ATTRIBUTE_CONTEXT, live), CUDA_SUCCESS);
    cr_assert_null(ctx); /* measured: context 0 */
    EXPECT_CU(cuMemFree(live), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(cuMemFree(live), CUDA_ERROR_INVALID_VALUE);
}

Test(fakecuda, unlaunched_or_freed_in_graph_nodes_go_with_the_graph)
{
    start(NULL);
    CUcontext ctx;
    for (node_case_t c = NODE_UNLAUNCHED; c <= NODE_FREED_IN_GRAPH; c += 2) {
        CUdeviceptr gone = destroyed_graph_node(c, 8 * MiB);
        cr_assert_eq(fakecuda_used_bytes(0), 0, "case %d", c);
        EXPECT_CU(cuPointerGetAttribute(&ctx, CU_POINTER_ATTRIBUTE_CONTEXT, gone),
                  CUDA_ERROR_INVALID_VALUE);
    }
}

/* Not measured on a GPU: the test driver lets an executable keep its
 * graph's memory until the executable goes. */
Test(fakecuda, an_executable_keeps_its_destroyed_graphs_memory)
{
    start(NULL);
    CUgraph g;
    CUgraphExec exec;
    CUDA_MEM_ALLOC_NODE_PARAMS params = node_on_device_0(8 * MiB);
    one_node_graph(&g, &exec, &params);
    EXPECT_CU(cuGraphDestroy(g), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 8 * MiB);
    EXPECT_CU(cuGraphDestroy(g), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuGraphExecDestroy(exec), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
}

/* Memory a launch left live, freed while its graph lives: the next launch
 * allocates it again at the same address (charged again, known again), and
 * the graph's destroy frees what is not allocated then without charging. */
Test(fakecuda, a_launch_allocates_again_what_was_freed_outside_the_graph)
{
    start("16777216"); /* 16 MiB */
    CUgraph g;
    CUgraphExec exec;
    CUcontext ctx;
    CUdeviceptr plain;
    CUDA_MEM_ALLOC_NODE_PARAMS params = node_on_device_0(8 * MiB);
    one_node_graph(&g, &exec, &params);
    EXPECT_CU(cuGraphLaunch(exec, NULL), CUDA_SUCCESS);
    EXPECT_CU(cuMemFree(params.dptr), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(cuPointerGetAttribute(&ctx, CU_POINTER_ATTRIBUTE_CONTEXT, params.dptr),
              CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemAlloc(&plain, 12 * MiB), CUDA_SUCCESS);
    EXPECT_CU(cuGraphLaunch(exec, NULL), CUDA_ERROR_OUT_OF_MEMORY); /* 20 MiB of 16 */
    EXPECT_CU(cuMemFree(plain), CUDA_SUCCESS);
    EXPECT_CU(cuGraphLaunch(exec, NULL), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 8 * MiB);
    EXPECT_CU(cuPointerGetAttribute(&ctx, CU_POINTER_ATTRIBUTE_CONTEXT, params.dptr), CUDA_SUCCESS);
    EXPECT_CU(cuMemFree(params.dptr), CUDA_SUCCESS);
    EXPECT_CU(cuGraphExecDestroy(exec), CUDA_SUCCESS);
    EXPECT_CU(cuGraphDestroy(g), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(cuMemFree(params.dptr), CUDA_ERROR_INVALID_VALUE);
}

/* FAKECUDA_GRAPH_MAPPED_AT_LAUNCH: a node's address is known only once a
 * launch left it mapped; an executable made through cuGraphInstantiateWithParams
 * keeps the memory as any other does. */
Test(fakecuda, graph_mapped_at_launch_hides_a_node_until_a_launch_maps_it)
{
    setenv("FAKECUDA_GRAPH_MAPPED_AT_LAUNCH", "1", 1);
    start(NULL);
    CUgraph g;
    CUgraphNode node;
    CUgraphExec exec;
    CUcontext ctx;
    CUDA_GRAPH_INSTANTIATE_PARAMS ip = { .flags = 0 };
    CUDA_MEM_ALLOC_NODE_PARAMS params = node_on_device_0(8 * MiB);
    EXPECT_CU(cuGraphCreate(&g, 0), CUDA_SUCCESS);
    EXPECT_CU(cuGraphAddMemAllocNode(&node, g, NULL, 0, &params), CUDA_SUCCESS);
    EXPECT_CU(cuGraphInstantiateWithParams(&exec, g, &ip), CUDA_SUCCESS);
    cr_assert_eq(ip.result_out, CUDA_GRAPH_INSTANTIATE_SUCCESS);
    EXPECT_CU(cuGraphDestroy(g), CUDA_SUCCESS);
    EXPECT_CU(cuPointerGetAttribute(&ctx, CU_POINTER_ATTRIBUTE_CONTEXT, params.dptr),
              CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemGetAddressRange(NULL, NULL, params.dptr), CUDA_ERROR_NOT_FOUND);
    cr_assert_eq(fakecuda_used_bytes(0), 8 * MiB);
    EXPECT_CU(cuGraphLaunch(exec, NULL), CUDA_SUCCESS);
    EXPECT_CU(cuPointerGetAttribute(&ctx, CU_POINTER_ATTRIBUTE_CONTEXT, params.dptr), CUDA_SUCCESS);
    EXPECT_CU(cuGraphExecDestroy(exec), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 8 * MiB); /* launched, not freed in the graph */
    EXPECT_CU(cuMemFree(params.dptr), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
}

/* A child graph moved into its parent is the parent's: destroyed with it
 * (an unlaunched child's memory goes; what a launch left live stays). */
Test(fakecuda, a_moved_child_graph_goes_with_its_parent)
{
    start(NULL);
    CUgraph parent, child;
    CUgraphNode node, child_node;
    CUgraphExec exec;
    CUgraphNodeParams cp = { .type = CU_GRAPH_NODE_TYPE_GRAPH };
    CUDA_MEM_ALLOC_NODE_PARAMS params = node_on_device_0(8 * MiB);
    for (int launch = 0; launch < 2; launch++) {
        EXPECT_CU(cuGraphCreate(&parent, 0), CUDA_SUCCESS);
        EXPECT_CU(cuGraphCreate(&child, 0), CUDA_SUCCESS);
        EXPECT_CU(cuGraphAddMemAllocNode(&node, child, NULL, 0, &params), CUDA_SUCCESS);
        cp.graph = (CUDA_CHILD_GRAPH_NODE_PARAMS){ child, CU_GRAPH_CHILD_GRAPH_OWNERSHIP_CLONE };
        EXPECT_CU(cuGraphAddNode(&child_node, parent, NULL, NULL, 0, &cp), CUDA_ERROR_NOT_SUPPORTED);
        cp.graph.ownership = CU_GRAPH_CHILD_GRAPH_OWNERSHIP_MOVE;
        EXPECT_CU(cuGraphAddNode(&child_node, child, NULL, NULL, 0, &cp), CUDA_ERROR_INVALID_VALUE);
        EXPECT_CU(cuGraphAddNode(&child_node, parent, NULL, NULL, 0, &cp), CUDA_SUCCESS);
        EXPECT_CU(cuGraphDestroy(child), CUDA_ERROR_INVALID_VALUE); /* the parent's now */
        EXPECT_CU(cuGraphInstantiateWithFlags(&exec, parent, 0), CUDA_SUCCESS);
        if (launch)
            EXPECT_CU(cuGraphLaunch(exec, NULL), CUDA_SUCCESS);
        EXPECT_CU(cuGraphExecDestroy(exec), CUDA_SUCCESS);
        EXPECT_CU(cuGraphDestroy(parent), CUDA_SUCCESS);
        cr_assert_eq(fakecuda_used_bytes(0), launch ? 8 * MiB : 0);
    }
    EXPECT_CU(cuMemFree(params.dptr), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
}
