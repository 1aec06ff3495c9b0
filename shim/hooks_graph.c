/*
 * hooks_graph.c — CUDA graphs: their memory nodes (cuGraphAddMemAllocNode,
 * the generic cuGraphAddNode, and stream capture through hooks_async.c),
 * charged from creation until the graph is destroyed (or, while an
 * executable instantiated from it lives, until that is destroyed; for
 * memory a launch left live, until the program frees it after that: a
 * free before it keeps the charge, as the next launch takes the memory
 * again, account_graph.c), and the calls that may make the driver take
 * memory no call shows: instantiation (which loads a graph's kernels when
 * loading is lazy), upload and a graph's first launch (the graph's memory
 * pool grows at its first run).
 *
 * Memory nodes are recorded under their address with the graph's handle
 * (VG__KEY_HANDLE set) as the record's `handle`, so the destroy finds them.
 */
#include "shim.h"

static uint64_t key_of(const void *handle)
{
    return (uint64_t)(uintptr_t)handle | VG__KEY_HANDLE;
}

/* ------------------------------------------------------- memory nodes */

/* A graph memory node is charged from its creation until its graph is
 * destroyed: the graph's memory pool keeps the memory between launches, so
 * this is what the card gives up (docs/shim.md); memory a launch left live
 * stays charged after the destroy until its cuMemFree (account_graph.c).
 * Host-located nodes are not VRAM and pass through. */
static vg__ticket_t graph_node_ticket(const CUmemPoolProps *pp, size_t bytes, const char *api)
{
    return (vg__ticket_t){.device = pp->location.id, .kind = VG_KIND_ASYNC, .bytes = bytes,
                          .api = api};
}

CUresult vg__shim_graph_settle(vg__ticket_t *t, CUresult cr, CUgraph hGraph,
                               CUdeviceptr dptr, size_t bytes)
{
    if (cr != CUDA_SUCCESS) {
        vg__acct_cancel(t);
        return cr;
    }
    /* Not recorded (no host memory): a memory node cannot be taken out of
     * its graph, so it stays, charged until the process ends. */
    if (vg__acct_commit(t, dptr, bytes, key_of(hGraph)) != VG_OK)
        vg__log("%s: no host memory to record a node of %zu bytes; "
                "it stays charged until the process ends", t->api, bytes);
    return CUDA_SUCCESS;
}

CUresult cuGraphAddMemAllocNode(CUgraphNode *phGraphNode, CUgraph hGraph,
                                const CUgraphNode *dependencies, size_t numDependencies,
                                CUDA_MEM_ALLOC_NODE_PARAMS *nodeParams)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!nodeParams || nodeParams->poolProps.location.type != CU_MEM_LOCATION_TYPE_DEVICE)
        return vg__real.cuGraphAddMemAllocNode(phGraphNode, hGraph, dependencies,
                                               numDependencies, nodeParams);
    vg__ticket_t t = graph_node_ticket(&nodeParams->poolProps, nodeParams->bytesize,
                                       "cuGraphAddMemAllocNode");
    int rc = vg__acct_reserve(&t);
    if (rc != VG_OK)
        return vg__cu_status(rc);
    CUresult cr = vg__real.cuGraphAddMemAllocNode(phGraphNode, hGraph, dependencies,
                                                  numDependencies, nodeParams);
    return vg__shim_graph_settle(&t, cr, hGraph, nodeParams->dptr, nodeParams->bytesize);
}

/* The generic node API (cudaGraphAddNode; CUDA 12.2, and 12.3 with edge
 * data) makes the same memory nodes: CU_GRAPH_NODE_TYPE_MEM_ALLOC is
 * charged as cuGraphAddMemAllocNode is; every other kind passes through
 * (a moved child graph's nodes change owner, below). */
static bool device_alloc_node(const CUgraphNodeParams *p)
{
    return p && p->type == CU_GRAPH_NODE_TYPE_MEM_ALLOC &&
           p->alloc.poolProps.location.type == CU_MEM_LOCATION_TYPE_DEVICE;
}

/* A child graph node that takes the child's ownership (CUDA 13.0's
 * cuda.h; the only kind a graph with memory nodes may be added as): the
 * driver destroys the child with its parent, so its nodes become the
 * parent's. */
static CUgraph moved_child(const CUgraphNodeParams *p)
{
    return p && p->type == CU_GRAPH_NODE_TYPE_GRAPH &&
                   p->graph.ownership == CU_GRAPH_CHILD_GRAPH_OWNERSHIP_MOVE
               ? p->graph.graph
               : NULL;
}

static CUresult child_added(CUresult cr, CUgraph child, CUgraph parent)
{
    if (cr == CUDA_SUCCESS && child)
        vg__acct_graph_moved(key_of(child), key_of(parent));
    return cr;
}

CUresult cuGraphAddNode(CUgraphNode *phGraphNode, CUgraph hGraph,
                        const CUgraphNode *dependencies, size_t numDependencies,
                        CUgraphNodeParams *nodeParams)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuGraphAddNode)
        return CUDA_ERROR_NOT_FOUND;
    if (!device_alloc_node(nodeParams)) {
        CUgraph child = moved_child(nodeParams);
        return child_added(vg__real.cuGraphAddNode(phGraphNode, hGraph, dependencies,
                                                   numDependencies, nodeParams),
                           child, hGraph);
    }
    vg__ticket_t t = graph_node_ticket(&nodeParams->alloc.poolProps,
                                       nodeParams->alloc.bytesize, "cuGraphAddNode");
    int rc = vg__acct_reserve(&t);
    if (rc != VG_OK)
        return vg__cu_status(rc);
    CUresult cr = vg__real.cuGraphAddNode(phGraphNode, hGraph, dependencies, numDependencies,
                                          nodeParams);
    return vg__shim_graph_settle(&t, cr, hGraph, nodeParams->alloc.dptr,
                                 nodeParams->alloc.bytesize);
}

CUresult cuGraphAddNode_v2(CUgraphNode *phGraphNode, CUgraph hGraph,
                           const CUgraphNode *dependencies, const CUgraphEdgeData *dependencyData,
                           size_t numDependencies, CUgraphNodeParams *nodeParams)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuGraphAddNode_v2)
        return CUDA_ERROR_NOT_FOUND;
    if (!device_alloc_node(nodeParams)) {
        CUgraph child = moved_child(nodeParams);
        return child_added(vg__real.cuGraphAddNode_v2(phGraphNode, hGraph, dependencies,
                                                      dependencyData, numDependencies,
                                                      nodeParams),
                           child, hGraph);
    }
    vg__ticket_t t = graph_node_ticket(&nodeParams->alloc.poolProps,
                                       nodeParams->alloc.bytesize, "cuGraphAddNode_v2");
    int rc = vg__acct_reserve(&t);
    if (rc != VG_OK)
        return vg__cu_status(rc);
    CUresult cr = vg__real.cuGraphAddNode_v2(phGraphNode, hGraph, dependencies, dependencyData,
                                             numDependencies, nodeParams);
    return vg__shim_graph_settle(&t, cr, hGraph, nodeParams->alloc.dptr,
                                 nodeParams->alloc.bytesize);
}

/* The engine settles the nodes after the driver destroyed the graph: only
 * then does the driver answer which node's memory a launch left live. */
CUresult cuGraphDestroy(CUgraph hGraph)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult cr = vg__real.cuGraphDestroy(hGraph);
    if (cr == CUDA_SUCCESS)
        vg__acct_graph_destroyed(key_of(hGraph), "cuGraphDestroy");
    return cr;
}

/* ---------------------------------------------- instantiate, launch */

/* Instantiating a graph may load its kernels' modules (lazy loading loads
 * a kernel when it is first used, and a graph's kernels are used by its
 * executable): every device is measured before its next allocation, as
 * after a kernel's first launch. Like a launch, it is not refused. The
 * engine learns which graph the executable came from: a graph destroyed
 * while its executable lives hands its nodes on (account_graph.c). */
static CUresult instantiated(CUresult cr, const CUgraphExec *exec, CUgraph graph)
{
    if (cr != CUDA_SUCCESS)
        return cr;
    vg__acct_graph_instantiated(key_of(graph), key_of(*exec));
    vg__acct_implicit_may_grow();
    return cr;
}

CUresult cuGraphInstantiate(CUgraphExec *phGraphExec, CUgraph hGraph, CUgraphNode *phErrorNode,
                            char *logBuffer, size_t bufferSize)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuGraphInstantiate)
        return CUDA_ERROR_NOT_FOUND;
    return instantiated(
        vg__real.cuGraphInstantiate(phGraphExec, hGraph, phErrorNode, logBuffer, bufferSize),
        phGraphExec, hGraph);
}

CUresult cuGraphInstantiate_v2(CUgraphExec *phGraphExec, CUgraph hGraph,
                               CUgraphNode *phErrorNode, char *logBuffer, size_t bufferSize)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuGraphInstantiate_v2)
        return CUDA_ERROR_NOT_FOUND;
    return instantiated(
        vg__real.cuGraphInstantiate_v2(phGraphExec, hGraph, phErrorNode, logBuffer, bufferSize),
        phGraphExec, hGraph);
}

CUresult cuGraphInstantiateWithFlags(CUgraphExec *phGraphExec, CUgraph hGraph,
                                     unsigned long long flags)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuGraphInstantiateWithFlags)
        return CUDA_ERROR_NOT_FOUND;
    return instantiated(vg__real.cuGraphInstantiateWithFlags(phGraphExec, hGraph, flags),
                        phGraphExec, hGraph);
}

CUresult cuGraphInstantiateWithParams(CUgraphExec *phGraphExec, CUgraph hGraph,
                                      CUDA_GRAPH_INSTANTIATE_PARAMS *instantiateParams)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuGraphInstantiateWithParams)
        return CUDA_ERROR_NOT_FOUND;
    return instantiated(
        vg__real.cuGraphInstantiateWithParams(phGraphExec, hGraph, instantiateParams),
        phGraphExec, hGraph);
}

CUresult cuGraphInstantiateWithParams_ptsz(CUgraphExec *phGraphExec, CUgraph hGraph,
                                           CUDA_GRAPH_INSTANTIATE_PARAMS *instantiateParams)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!vg__real.cuGraphInstantiateWithParams_ptsz)
        return CUDA_ERROR_NOT_FOUND;
    return instantiated(
        vg__real.cuGraphInstantiateWithParams_ptsz(phGraphExec, hGraph, instantiateParams),
        phGraphExec, hGraph);
}

/* The nodes an executable held of its destroyed graph are settled after
 * the driver destroyed it, as a graph's are after its destroy. */
CUresult cuGraphExecDestroy(CUgraphExec hGraphExec)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult cr = vg__real.cuGraphExecDestroy(hGraphExec);
    if (cr == CUDA_SUCCESS)
        vg__acct_graph_exec_destroyed(key_of(hGraphExec), "cuGraphExecDestroy");
    return cr;
}

/* An executable's first upload or launch may take memory (its memory
 * nodes' pool grows, code still unloaded loads): marked as a kernel's
 * first launch is, once per executable; later ones cost a lookup. */
typedef CUresult (*exec_fn)(CUgraphExec, CUstream);

static CUresult run_exec(exec_fn real, CUgraphExec exec, CUstream stream)
{
    if (!real)
        return CUDA_ERROR_NOT_FOUND;
    CUresult cr = real(exec, stream);
    vg__acct_implicit_launch(exec);
    return cr;
}

CUresult cuGraphUpload(CUgraphExec hGraphExec, CUstream hStream)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    return run_exec(vg__real.cuGraphUpload, hGraphExec, hStream);
}

CUresult cuGraphUpload_ptsz(CUgraphExec hGraphExec, CUstream hStream)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    return run_exec(vg__real.cuGraphUpload_ptsz, hGraphExec, hStream);
}

CUresult cuGraphLaunch(CUgraphExec hGraphExec, CUstream hStream)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    return run_exec(vg__real.cuGraphLaunch, hGraphExec, hStream);
}

CUresult cuGraphLaunch_ptsz(CUgraphExec hGraphExec, CUstream hStream)
{
    if (!vg__shim_started())
        return CUDA_ERROR_NOT_INITIALIZED;
    return run_exec(vg__real.cuGraphLaunch_ptsz, hGraphExec, hStream);
}
