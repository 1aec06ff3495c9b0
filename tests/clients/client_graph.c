/*
 * client_graph.c — a client for tests/test_graph.c: a CUDA graph's memory
 * nodes after cuGraphDestroy, run under the preload shim with a budget.
 *
 *   client_graph CASE
 *   stdout: one line "path=CASE key=value ...", ending with the test
 *           driver's own view of device 0: peak=B used=B implicit=B
 *   exit:   0 ran (whatever the driver answered), 2 usage, 3 setup failed
 *
 * Cases (sizes are fixed: the test sets budget and driver knobs):
 *   live        a graph with one 600 MiB allocation node and no free node,
 *               instantiated, launched, synchronised, its executable and
 *               the graph destroyed (the memory stays: the launch left it
 *               live); 600 MiB plain; cuMemFree of the node's address;
 *               600 MiB plain again
 *   unlaunched  the same graph never launched, destroyed; 600 MiB plain
 *   freed_in_graph the same graph with a free node, launched, destroyed;
 *               600 MiB plain
 *   exec_freed  a graph with one 600 MiB allocation node and its free
 *               node, instantiated (cuGraphInstantiateWithFlags), the graph
 *               destroyed, the executable launched and synchronised;
 *               600 MiB plain (freed at once); the executable destroyed;
 *               1 GiB plain
 *   exec_via_HOW  exec_freed instantiated another way (HOW: params;
 *               params_ptsz; legacy, the CUDA 10 ABI; legacy_v2; the last
 *               three through cuGetProcAddress)
 *   exec_live   the same without the free node: after the executable's
 *               destroy 600 MiB plain, cuMemFree of the node's address,
 *               then 1 GiB plain
 *   child       a graph with one 600 MiB allocation node and no free node,
 *               moved into a parent (cuGraphAddNode of a child graph node,
 *               CU_GRAPH_CHILD_GRAPH_OWNERSHIP_MOVE), the parent destroyed
 *               unlaunched; 1 GiB plain
 *   child_live  the same, the parent instantiated, launched and its
 *               executable destroyed before it; 600 MiB plain, cuMemFree
 *               of the node's address, then 1 GiB plain
 *   refree      a graph with one 600 MiB allocation node and no free node,
 *               instantiated, launched, synchronised; cuMemFree of the
 *               node's address; launched again (the launch allocates the
 *               memory again) and synchronised; 600 MiB plain; cuMemFree of
 *               the node's address; the executable and the graph destroyed;
 *               1 GiB plain
 *   refree_exec the same graph destroyed right after its instantiation;
 *               launched, cuMemFreeAsync of the node's address, launched
 *               again; 600 MiB plain; the executable destroyed (the memory
 *               stays: the launch left it live); cuMemFree of the node's
 *               address; 1 GiB plain
 *   reuse       a 64 MiB node of a graph never launched; cuGraphDestroy
 *               while another thread is handed the node's address once the
 *               driver freed it (the test makes cuPointerGetAttribute slow,
 *               so the destroy is still asking about the node); then
 *               128 MiB more (tried up to 4 times until the address comes
 *               back)
 */
#include <cuda.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "truth_common.h"

#define MiB (1024ull * 1024ull)

typedef enum { NODE_UNLAUNCHED, NODE_LIVE, NODE_FREED_IN_GRAPH } node_case_t;

/* A graph with one allocation node of `bytes`, run as `c` says, then
 * destroyed with its executable. *dptr: the node's address. */
static CUresult graph_run(node_case_t c, size_t bytes, CUdeviceptr *dptr)
{
    CUgraph g = NULL;
    CUgraphExec e = NULL;
    CUgraphNode node, free_node;
    CUDA_MEM_ALLOC_NODE_PARAMS p = {.bytesize = bytes};
    p.poolProps.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
    p.poolProps.location = (CUmemLocation){CU_MEM_LOCATION_TYPE_DEVICE, g_dev};
    CUresult rc = cuGraphCreate(&g, 0);
    if (rc == CUDA_SUCCESS)
        rc = cuGraphAddMemAllocNode(&node, g, NULL, 0, &p);
    if (rc == CUDA_SUCCESS && c == NODE_FREED_IN_GRAPH)
        rc = cuGraphAddMemFreeNode(&free_node, g, &node, 1, p.dptr);
    if (rc == CUDA_SUCCESS)
        rc = cuGraphInstantiateWithFlags(&e, g, 0);
    if (rc == CUDA_SUCCESS && c != NODE_UNLAUNCHED)
        rc = cuGraphLaunch(e, NULL);
    if (rc == CUDA_SUCCESS)
        rc = cuCtxSynchronize();
    if (e)
        cuGraphExecDestroy(e);
    *dptr = p.dptr;
    return g ? cuGraphDestroy(g) : rc;
}

static void case_destroyed(const char *name, node_case_t c)
{
    CUdeviceptr node = 0, b = 0, d = 0;
    CUresult destroy = graph_run(c, 600 * MiB, &node);
    CUresult after = cuMemAlloc(&b, 600 * MiB);
    CUresult freed = CUDA_ERROR_UNKNOWN, again = CUDA_ERROR_UNKNOWN;
    if (c == NODE_LIVE) {
        freed = cuMemFree(node);
        again = cuMemAlloc(&d, 600 * MiB);
    }
    printf("path=%s destroy_rc=%d after_rc=%d free_rc=%d again_rc=%d", name, destroy, after,
           freed, again);
    finish();
    if (after == CUDA_SUCCESS)
        cuMemFree(b);
    if (again == CUDA_SUCCESS)
        cuMemFree(d);
}

/* Whether `bytes` plain fit now: allocated and freed at once. */
static CUresult fits(size_t bytes)
{
    CUdeviceptr b = 0;
    CUresult rc = cuMemAlloc(&b, bytes);
    if (rc == CUDA_SUCCESS)
        cuMemFree(b);
    return rc;
}

typedef CUresult (*inst_legacy_fn)(CUgraphExec *, CUgraph, CUgraphNode *, char *, size_t);
typedef CUresult (*inst_params_fn)(CUgraphExec *, CUgraph, CUDA_GRAPH_INSTANTIATE_PARAMS *);

/* The entry point `name` asks for, found as cudart finds it. */
static void *entry(const char *name, int version, cuuint64_t flags)
{
    void *fn = NULL;
    CUdriverProcAddressQueryResult st;
    if (cuGetProcAddress(name, &fn, version, flags, &st) != CUDA_SUCCESS || !fn) {
        fprintf(stderr, "client_graph: no %s at %d\n", name, version);
        exit(3);
    }
    return fn;
}

/* g instantiated into *e the way `how` names. */
static CUresult instantiate(const char *how, CUgraphExec *e, CUgraph g)
{
    CUDA_GRAPH_INSTANTIATE_PARAMS ip = {0};
    char log[64];
    if (!strcmp(how, "params"))
        return cuGraphInstantiateWithParams(e, g, &ip);
    if (!strcmp(how, "params_ptsz"))
        return ((inst_params_fn)entry("cuGraphInstantiateWithParams", 12000,
                                      CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM))(e, g, &ip);
    if (!strcmp(how, "legacy") || !strcmp(how, "legacy_v2"))
        return ((inst_legacy_fn)entry("cuGraphInstantiate", how[6] ? 11000 : 10000,
                                      CU_GET_PROC_ADDRESS_DEFAULT))(e, g, NULL, log, sizeof log);
    if (strcmp(how, "flags")) {
        fprintf(stderr, "client_graph: unknown way %s\n", how);
        exit(2);
    }
    return cuGraphInstantiateWithFlags(e, g, 0);
}

/* A graph destroyed while its executable lives: the executable's launches
 * still take the node's memory, until the executable is destroyed. */
static void case_exec(const char *name, node_case_t c, const char *how)
{
    CUgraph g = NULL;
    CUgraphExec e = NULL;
    CUgraphNode node, free_node;
    CUDA_MEM_ALLOC_NODE_PARAMS p = {.bytesize = 600 * MiB};
    p.poolProps.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
    p.poolProps.location = (CUmemLocation){CU_MEM_LOCATION_TYPE_DEVICE, g_dev};
    CUresult rc = cuGraphCreate(&g, 0);
    if (rc == CUDA_SUCCESS)
        rc = cuGraphAddMemAllocNode(&node, g, NULL, 0, &p);
    if (rc == CUDA_SUCCESS && c == NODE_FREED_IN_GRAPH)
        rc = cuGraphAddMemFreeNode(&free_node, g, &node, 1, p.dptr);
    if (rc == CUDA_SUCCESS)
        rc = instantiate(how, &e, g);
    if (rc != CUDA_SUCCESS) {
        fprintf(stderr, "client_graph: %s setup failed: %d\n", name, rc);
        exit(3);
    }
    CUresult destroy = cuGraphDestroy(g);
    CUresult launch = cuGraphLaunch(e, NULL);
    if (launch == CUDA_SUCCESS)
        launch = cuCtxSynchronize();
    CUdeviceptr d = 0;
    CUresult after = fits(600 * MiB);
    CUresult exec = cuGraphExecDestroy(e);
    CUresult held = CUDA_ERROR_UNKNOWN, freed = CUDA_ERROR_UNKNOWN;
    if (c == NODE_LIVE) {
        held = fits(600 * MiB);
        freed = cuMemFree(p.dptr);
    }
    CUresult again = cuMemAlloc(&d, 1024 * MiB);
    printf("path=%s destroy_rc=%d launch_rc=%d after_rc=%d exec_rc=%d held_rc=%d free_rc=%d "
           "again_rc=%d",
           name, destroy, launch, after, exec, held, freed, again);
    finish();
    if (again == CUDA_SUCCESS)
        cuMemFree(d);
}

/* A child graph with memory nodes moved into its parent: the driver
 * destroys it with the parent, which has no cuGraphDestroy of its own. */
static void case_child(const char *name, node_case_t c)
{
    CUgraph parent = NULL, child = NULL;
    CUgraphExec e = NULL;
    CUgraphNode node, child_node;
    CUDA_MEM_ALLOC_NODE_PARAMS p = {.bytesize = 600 * MiB};
    p.poolProps.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
    p.poolProps.location = (CUmemLocation){CU_MEM_LOCATION_TYPE_DEVICE, g_dev};
    CUgraphNodeParams cp = {.type = CU_GRAPH_NODE_TYPE_GRAPH};
    CUresult rc = cuGraphCreate(&parent, 0);
    if (rc == CUDA_SUCCESS)
        rc = cuGraphCreate(&child, 0);
    if (rc == CUDA_SUCCESS)
        rc = cuGraphAddMemAllocNode(&node, child, NULL, 0, &p);
    cp.graph = (CUDA_CHILD_GRAPH_NODE_PARAMS){child, CU_GRAPH_CHILD_GRAPH_OWNERSHIP_MOVE};
    CUresult moved = rc == CUDA_SUCCESS ? cuGraphAddNode(&child_node, parent, NULL, NULL, 0, &cp)
                                        : rc;
    if (moved == CUDA_SUCCESS && c == NODE_LIVE) {
        rc = cuGraphInstantiateWithFlags(&e, parent, 0);
        if (rc == CUDA_SUCCESS)
            rc = cuGraphLaunch(e, NULL);
        if (rc == CUDA_SUCCESS)
            rc = cuCtxSynchronize();
        if (e)
            cuGraphExecDestroy(e);
    }
    if (rc != CUDA_SUCCESS) {
        fprintf(stderr, "client_graph: %s setup failed: %d\n", name, rc);
        exit(3);
    }
    CUresult destroy = cuGraphDestroy(parent);
    CUdeviceptr d = 0;
    CUresult held = CUDA_ERROR_UNKNOWN, freed = CUDA_ERROR_UNKNOWN;
    if (c == NODE_LIVE) {
        held = fits(600 * MiB);
        freed = cuMemFree(p.dptr);
    }
    CUresult again = cuMemAlloc(&d, 1024 * MiB);
    printf("path=%s moved_rc=%d destroy_rc=%d held_rc=%d free_rc=%d again_rc=%d", name, moved,
           destroy, held, freed, again);
    finish();
    if (again == CUDA_SUCCESS)
        cuMemFree(d);
}

/* Launches e on the default stream and waits for it. */
static CUresult launch_sync(CUgraphExec e)
{
    CUresult rc = cuGraphLaunch(e, NULL);
    return rc == CUDA_SUCCESS ? cuCtxSynchronize() : rc;
}

/* Memory a launch left live, freed outside the graph while its graph (or,
 * with `early`, only its executable) lives: the next launch allocates it
 * again at the same address. */
static void case_refree(const char *name, bool early)
{
    CUgraph g = NULL;
    CUgraphExec e = NULL;
    CUgraphNode node;
    CUDA_MEM_ALLOC_NODE_PARAMS p = {.bytesize = 600 * MiB};
    p.poolProps.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
    p.poolProps.location = (CUmemLocation){CU_MEM_LOCATION_TYPE_DEVICE, g_dev};
    CUresult rc = cuGraphCreate(&g, 0);
    if (rc == CUDA_SUCCESS)
        rc = cuGraphAddMemAllocNode(&node, g, NULL, 0, &p);
    if (rc == CUDA_SUCCESS)
        rc = cuGraphInstantiateWithFlags(&e, g, 0);
    if (rc == CUDA_SUCCESS && early)
        rc = cuGraphDestroy(g);
    if (rc == CUDA_SUCCESS)
        rc = launch_sync(e);
    if (rc != CUDA_SUCCESS) {
        fprintf(stderr, "client_graph: %s setup failed: %d\n", name, rc);
        exit(3);
    }
    CUresult freed = early ? cuMemFreeAsync(p.dptr, NULL) : cuMemFree(p.dptr);
    if (freed == CUDA_SUCCESS && early)
        freed = cuCtxSynchronize();
    CUresult relaunch = launch_sync(e);
    CUresult after = fits(600 * MiB);
    CUresult last_free = early ? CUDA_ERROR_UNKNOWN : cuMemFree(p.dptr);
    CUresult exec = cuGraphExecDestroy(e);
    CUresult destroy = early ? CUDA_SUCCESS : cuGraphDestroy(g);
    if (early)
        last_free = cuMemFree(p.dptr);
    CUdeviceptr d = 0;
    CUresult again = cuMemAlloc(&d, 1024 * MiB);
    printf("path=%s free_rc=%d relaunch_rc=%d after_rc=%d last_free_rc=%d exec_rc=%d "
           "destroy_rc=%d again_rc=%d",
           name, freed, relaunch, after, last_free, exec, destroy, again);
    finish();
    if (again == CUDA_SUCCESS)
        cuMemFree(d);
}

/* One destroy raced by an allocation; true when it got the node's address. */
static bool reuse_once(address_reuse_t *r, CUresult *destroy)
{
    CUgraph g = NULL;
    CUgraphNode node;
    CUDA_MEM_ALLOC_NODE_PARAMS p = {.bytesize = 64 * MiB};
    p.poolProps.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
    p.poolProps.location = (CUmemLocation){CU_MEM_LOCATION_TYPE_DEVICE, g_dev};
    pthread_t t;
    *r = (address_reuse_t){0};
    if (cuGraphCreate(&g, 0) != CUDA_SUCCESS ||
        cuGraphAddMemAllocNode(&node, g, NULL, 0, &p) != CUDA_SUCCESS) {
        fprintf(stderr, "client_graph: reuse setup failed\n");
        exit(3);
    }
    r->used_before = driver_query("fakecuda_used_bytes");
    if (pthread_create(&t, NULL, address_reuse_worker, r) != 0)
        exit(3);
    *destroy = cuGraphDestroy(g);
    pthread_join(t, NULL);
    return r->rc == CUDA_SUCCESS && r->p == p.dptr;
}

static void case_reuse(void)
{
    race_for_address("reuse", reuse_once);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: client_graph CASE\n");
        return 2;
    }
    const char *c = argv[1];
    setup();
    if (!strcmp(c, "live"))
        case_destroyed(c, NODE_LIVE);
    else if (!strcmp(c, "unlaunched"))
        case_destroyed(c, NODE_UNLAUNCHED);
    else if (!strcmp(c, "freed_in_graph"))
        case_destroyed(c, NODE_FREED_IN_GRAPH);
    else if (!strcmp(c, "exec_freed"))
        case_exec(c, NODE_FREED_IN_GRAPH, "flags");
    else if (!strncmp(c, "exec_via_", 9))
        case_exec(c, NODE_FREED_IN_GRAPH, c + 9);
    else if (!strcmp(c, "exec_live"))
        case_exec(c, NODE_LIVE, "flags");
    else if (!strcmp(c, "child"))
        case_child(c, NODE_UNLAUNCHED);
    else if (!strcmp(c, "child_live"))
        case_child(c, NODE_LIVE);
    else if (!strcmp(c, "refree"))
        case_refree(c, false);
    else if (!strcmp(c, "refree_exec"))
        case_refree(c, true);
    else if (!strcmp(c, "reuse"))
        case_reuse();
    else {
        fprintf(stderr, "client_graph: unknown case %s\n", c);
        return 2;
    }
    return 0;
}
