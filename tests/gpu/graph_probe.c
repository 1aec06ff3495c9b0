/*
 * graph_probe.c — what the driver still knows of a graph memory node's
 * address after cuGraphDestroy. CUDA leaves memory that a launched graph
 * allocated and no free node released live past the destroy (the program
 * frees it later); the shim gives the node's charge back at the destroy
 * (docs/shim.md, "Graph memory nodes"). Keeping it instead needs a driver
 * query that tells such live memory from the addresses of nodes that hold
 * nothing: this probe asks cuPointerGetAttribute(CONTEXT) and
 * cuMemGetAddressRange_v2 of the node's address, and reads the device's
 * free memory, in three cases (natively, no shim):
 *
 *   unlaunched   an alloc node only, the graph never launched
 *   launched     an alloc node only, launched once: the memory is live
 *   freed        an alloc node and its free node, launched once
 *
 * Figures only (RESULT rows with status info): "ctx_rc" and "range_rc" are
 * the two queries' codes after the destroy, "held_mib" how much less free
 * memory the device had then than before the graph was made (0 when the
 * launched case's memory went back at the destroy), "free_rc" the
 * cuMemFree_v2 of the address that follows.
 *
 *   graph_probe [MiB]      (default 256)
 */
#include <cuda.h>

#include "gpu_common.h"

static size_t free_now(void)
{
    size_t f = 0, t = 0;
    cuMemGetInfo(&f, &t);
    return f;
}

static void one_case(const char *name, CUdevice dev, size_t bytes, int launch, int with_free)
{
    CUgraph g = NULL;
    CUgraphExec exec = NULL;
    CUgraphNode alloc = NULL, freenode = NULL;
    CUDA_MEM_ALLOC_NODE_PARAMS p = {
        .poolProps = {.allocType = CU_MEM_ALLOCATION_TYPE_PINNED,
                      .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = (int)dev}},
        .bytesize = bytes};
    cuCtxSynchronize();
    cuDeviceGraphMemTrim(dev);
    size_t before = free_now();
    CUresult rc = cuGraphCreate(&g, 0);
    if (rc == CUDA_SUCCESS)
        rc = cuGraphAddMemAllocNode(&alloc, g, NULL, 0, &p);
    if (rc == CUDA_SUCCESS && with_free)
        rc = cuGraphAddMemFreeNode(&freenode, g, &alloc, 1, p.dptr);
    if (rc == CUDA_SUCCESS && launch) {
        rc = cuGraphInstantiate(&exec, g, 0);
        if (rc == CUDA_SUCCESS)
            rc = cuGraphLaunch(exec, NULL);
        if (rc == CUDA_SUCCESS)
            rc = cuStreamSynchronize(NULL);
        if (exec)
            cuGraphExecDestroy(exec);
    }
    CUresult destroy = g ? cuGraphDestroy(g) : rc;
    cuCtxSynchronize();
    CUcontext owner = NULL;
    CUdeviceptr base = 0;
    size_t size = 0;
    CUresult ctx_rc = cuPointerGetAttribute(&owner, CU_POINTER_ATTRIBUTE_CONTEXT, p.dptr);
    CUresult range_rc = cuMemGetAddressRange_v2(&base, &size, p.dptr);
    size_t after = free_now();
    long long held = before > after ? (long long)((before - after) >> 20) : 0;
    CUresult free_rc = launch && !with_free ? cuMemFree_v2(p.dptr) : CUDA_ERROR_NOT_PERMITTED;
    char check[48];
    snprintf(check, sizeof check, "graph_probe_%s", name);
    gpu_row(check, rc == CUDA_SUCCESS && destroy == CUDA_SUCCESS ? "info" : "FAIL",
            "%s: setup_rc=%d destroy_rc=%d ctx_rc=%d range_rc=%d range_size=%zu held_mib=%lld "
            "free_rc=%d (%d: not tried)",
            name, rc, destroy, ctx_rc, range_rc, size, held, free_rc, CUDA_ERROR_NOT_PERMITTED);
}

int main(int argc, char **argv)
{
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 256;
    CUdevice dev;
    CUcontext ctx;
    if (!mib || cuInit(0) != CUDA_SUCCESS || cuDeviceGet(&dev, 0) != CUDA_SUCCESS ||
        cuDevicePrimaryCtxRetain(&ctx, dev) != CUDA_SUCCESS ||
        cuCtxSetCurrent(ctx) != CUDA_SUCCESS) {
        gpu_row("graph_probe", "FAIL", "no device or no context (or a bad MiB: %s)",
                argc > 1 ? argv[1] : "256");
        return 1;
    }
    one_case("unlaunched", dev, mib << 20, 0, 0);
    one_case("launched", dev, mib << 20, 1, 0);
    one_case("freed", dev, mib << 20, 1, 1);
    return gpu_failures ? 1 : 0;
}
