/*
 * graph.c: CUDA graphs, only as far as memory nodes go.
 * Simplifications (documented because tests rely on them):
 * - cuGraphAddMemAllocNode allocates and charges the memory when the node is
 *   created (the real driver reserves address space then and commits at
 *   launch); params->dptr is valid at once and OOM is reported there;
 * - launching runs nothing; a free node does not free at launch, so the
 *   graph may be launched again with the same addresses;
 * - a graph allocation is freed by cuMemFree / cuMemFreeAsync on its address,
 *   or else when its graph is destroyed, except memory a launched graph left
 *   live (no free node of the graph frees it): that stays allocated after the
 *   destroy, answering cuPointerGetAttribute (context NULL), until cuMemFree
 *   frees it, as measured on an H100 (driver 580.159, docs/gpu-results.md);
 *   an unlaunched graph's nodes and those freed in the graph are freed at the
 *   destroy and answer CUDA_ERROR_INVALID_VALUE from then on;
 * - a graph allocation freed by cuMemFree / cuMemFreeAsync while its graph
 *   (or an executable made from it) lives is allocated again, at the same
 *   address, by the next launch (the address is fixed across launches, and
 *   CUDA requires the free before that launch): the device is charged again
 *   then, and a launch it does not fit fails with CUDA_ERROR_OUT_OF_MEMORY;
 * - an executable keeps its graph's memory: a graph destroyed while an
 *   executable made from it lives frees (or leaves live) its memory only when
 *   the last such executable is destroyed (not measured on a GPU);
 * - the pointer queries (attr.c) know a graph allocation from its node's
 *   creation; with FAKECUDA_GRAPH_MAPPED_AT_LAUNCH=1 only while a launch
 *   left it mapped (a launch of its graph that no free node of the graph
 *   undid), as the real driver maps graph memory at launch: what a driver
 *   that answers either way does to the shim (not measured on a GPU);
 * - stream capture (stream.c) builds a graph the same way: cuMemAllocAsync on a
 *   capturing stream adds an allocation node (charged at once, as above),
 *   cuMemFreeAsync a free node; the pools are not touched;
 * - kernel nodes (cuGraphAddKernelNode) only keep their function: the
 *   graph's instantiation loads each one's module if it is still unloaded
 *   (lazy loading), as the function's first launch would, and refuses with
 *   CUDA_ERROR_OUT_OF_MEMORY when its globals do not fit;
 * - a child graph node (the generic cuGraphAddNode only) must move the
 *   child's ownership to the parent (CU_GRAPH_CHILD_GRAPH_OWNERSHIP_MOVE, as
 *   a child with memory nodes must; a clone is CUDA_ERROR_NOT_SUPPORTED): the
 *   child's handle is then the parent's (its own cuGraphDestroy is
 *   CUDA_ERROR_INVALID_VALUE), it runs with each launch of the parent and is
 *   destroyed with it;
 * - dependencies are validated but not recorded; no other node kinds exist
 *   (the generic cuGraphAddNode makes memory and child graph nodes, and
 *   refuses any other kind with CUDA_ERROR_NOT_SUPPORTED).
 */
#include "fakecuda.h"

#include <stdlib.h>

typedef enum { FC_NODE_ALLOC, FC_NODE_FREE, FC_NODE_KERNEL, FC_NODE_GRAPH } fc_node_kind;

struct CUgraphNode_st {
    CUgraph graph;
    fc_node_kind kind;
    fc_alloc *alloc;                 /* alloc node: its memory, NULL once freed */
    bool freed_in_graph;             /* alloc node: a free node of the graph frees it */
    bool freed_outside;              /* alloc node: cuMemFree'd; the next launch
                                        allocates `alloc` again (kept, unlisted,
                                        its host mapping holding the address) */
    CUfunction func;                 /* kernel node: its function */
    CUgraph child;                   /* child graph node: the graph it owns */
    struct CUgraphNode_st *next;
};

struct CUgraph_st {
    struct CUgraphNode_st *nodes;
    bool launched;  /* an executable made from it has run */
    bool destroyed; /* cuGraphDestroy'd: its handle is gone */
    int execs;      /* live executables made from it (they keep it) */
};

struct CUgraphExec_st {
    CUgraph graph;
};

CUgraph fc_graph_new(void)
{
    CUgraph g = calloc(1, sizeof *g);
    if (!g)
        abort();
    fc_handle_add(g, FC_H_GRAPH);
    return g;
}

CUresult cuGraphCreate(CUgraph *phGraph, unsigned int flags)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!phGraph || flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    fc_lock();
    *phGraph = fc_graph_new();
    fc_unlock();
    return CUDA_SUCCESS;
}

static void release_alloc(fc_alloc *a)
{
    struct CUgraphNode_st *n = a->owner;
    if (n) /* NULL: left live by its destroyed graph */
        n->alloc = NULL;
    fc_alloc_remove(a);
    fc_uncharge(a->dev, a->charged);
    fc_alloc_unback(a);
    free(a);
}

/* While its graph lives (owner set) the memory goes, the address stays
 * the node's for its next launch. */
void fc_graph_alloc_free(fc_alloc *a)
{
    struct CUgraphNode_st *n = a->owner;
    if (!n) {
        release_alloc(a);
        return;
    }
    fc_alloc_remove(a);
    fc_uncharge(a->dev, a->charged);
    n->freed_outside = true;
}

bool fc_graph_alloc_unmapped(const fc_alloc *a)
{
    const struct CUgraphNode_st *n = a->kind == FC_KIND_GRAPH ? a->owner : NULL;
    if (!n || !fc_knobs_get()->graph_mapped_at_launch)
        return false; /* NULL owner: left live by its destroyed graph */
    return !n->graph->launched || n->freed_in_graph;
}

/* Lock held: the graph is destroyed and no executable keeps it. Its memory
 * is freed, but for what a launch left live, which the program frees. */
static void graph_finish(CUgraph g)
{
    for (struct CUgraphNode_st *n = g->nodes, *next; n; n = next) {
        next = n->next;
        if (n->alloc && n->freed_outside) { /* freed already: only its address is left */
            fc_alloc_unback(n->alloc);
            free(n->alloc);
        } else if (n->alloc && g->launched && !n->freed_in_graph) {
            n->alloc->owner = NULL;
        } else if (n->alloc) {
            release_alloc(n->alloc);
            fc_count_free();
        }
        if (n->child) /* moved into g: it goes with g */
            graph_finish(n->child);
        fc_handle_del(n);
        free(n);
    }
    free(g);
}

/* Lock held: g runs, and each child graph with it; memory freed outside
 * the graph since its last launch is allocated again, at its address. */
static CUresult launch_graph(CUgraph g)
{
    for (CUgraphNode n = g->nodes; n; n = n->next) {
        CUresult rc = n->child ? launch_graph(n->child) : CUDA_SUCCESS;
        if (rc == CUDA_SUCCESS && n->freed_outside)
            rc = fc_charge(n->alloc->dev, n->alloc->charged);
        if (rc != CUDA_SUCCESS)
            return rc;
        if (n->freed_outside) {
            n->freed_outside = false;
            fc_alloc_insert(n->alloc);
            fc_count_alloc();
        }
    }
    g->launched = true;
    return CUDA_SUCCESS;
}

CUresult cuGraphDestroy(CUgraph hGraph)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_lock();
    bool ok = fc_handle_ok(hGraph, FC_H_GRAPH);
    if (ok) {
        fc_handle_del(hGraph);
        hGraph->destroyed = true;
        if (hGraph->execs == 0)
            graph_finish(hGraph);
    }
    fc_unlock();
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* Lock held: dptr's allocation node, if dptr is a live graph allocation. */
static struct CUgraphNode_st *alloc_node_of(CUdeviceptr dptr)
{
    fc_alloc *a = fc_alloc_find(dptr);
    return a && a->kind == FC_KIND_GRAPH ? a->owner : NULL;
}

/* Lock held: the graph and each dependency must be live, deps of that graph. */
static bool node_args_ok(CUgraphNode *ph, CUgraph g, const CUgraphNode *deps, size_t ndeps)
{
    if (!ph || !fc_handle_ok(g, FC_H_GRAPH) || (ndeps && !deps))
        return false;
    for (size_t i = 0; i < ndeps; i++)
        if (!fc_handle_ok(deps[i], FC_H_NODE) || deps[i]->graph != g)
            return false;
    return true;
}

static CUgraphNode add_node(CUgraph g, fc_node_kind kind)
{
    CUgraphNode n = calloc(1, sizeof *n);
    if (!n)
        abort();
    n->graph = g;
    n->kind = kind;
    n->next = g->nodes;
    g->nodes = n;
    fc_handle_add(n, FC_H_NODE);
    return n;
}

/* Lock held; arguments checked. */
static CUresult graph_alloc(CUgraph g, size_t size, int dev, CUgraphNode *out)
{
    CUresult rc = fc_gate();
    if (rc == CUDA_SUCCESS)
        rc = fc_charge(dev, size);
    if (rc != CUDA_SUCCESS)
        return rc;
    fc_alloc *a = fc_alloc_new(size, FC_KIND_GRAPH, dev);
    a->charged = size;
    if (fc_alloc_back(a) != CUDA_SUCCESS) {
        fc_uncharge(dev, size);
        free(a);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    CUgraphNode n = add_node(g, FC_NODE_ALLOC);
    n->alloc = a;
    a->owner = n;
    fc_alloc_insert(a);
    fc_count_alloc();
    *out = n;
    return CUDA_SUCCESS;
}

CUresult fc_graph_capture_alloc(CUgraph g, size_t size, int dev, CUdeviceptr *dptr)
{
    CUgraphNode n;
    CUresult rc = graph_alloc(g, size, dev, &n);
    if (rc == CUDA_SUCCESS)
        *dptr = n->alloc->base;
    return rc;
}

CUresult fc_graph_capture_free(CUgraph g, CUdeviceptr dptr)
{
    struct CUgraphNode_st *freed = alloc_node_of(dptr);
    if (!freed)
        return CUDA_ERROR_INVALID_VALUE;
    freed->freed_in_graph = true;
    add_node(g, FC_NODE_FREE);
    return CUDA_SUCCESS;
}

static CUresult add_alloc_node(CUgraphNode *phGraphNode, CUgraph hGraph, const CUgraphNode *dependencies,
                               size_t numDependencies, CUDA_MEM_ALLOC_NODE_PARAMS *nodeParams)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    const CUmemPoolProps *pp = nodeParams ? &nodeParams->poolProps : NULL;
    if (!pp || nodeParams->bytesize == 0 || pp->allocType != CU_MEM_ALLOCATION_TYPE_PINNED ||
        pp->location.type != CU_MEM_LOCATION_TYPE_DEVICE || !fc_device_valid(pp->location.id))
        return CUDA_ERROR_INVALID_VALUE;
    fc_lock();
    CUresult rc = CUDA_ERROR_INVALID_VALUE;
    if (node_args_ok(phGraphNode, hGraph, dependencies, numDependencies))
        rc = graph_alloc(hGraph, nodeParams->bytesize, pp->location.id, phGraphNode);
    if (rc == CUDA_SUCCESS)
        nodeParams->dptr = (*phGraphNode)->alloc->base;
    fc_unlock();
    return rc;
}

CUresult cuGraphAddMemAllocNode(CUgraphNode *phGraphNode, CUgraph hGraph, const CUgraphNode *dependencies,
                                size_t numDependencies, CUDA_MEM_ALLOC_NODE_PARAMS *nodeParams)
{
    return add_alloc_node(phGraphNode, hGraph, dependencies, numDependencies, nodeParams);
}

/* dptr must be the address of a live graph allocation. */
static CUresult add_free_node(CUgraphNode *phGraphNode, CUgraph hGraph, const CUgraphNode *dependencies,
                              size_t numDependencies, CUdeviceptr dptr);

/* The child must be a live graph other than g, with no executable. */
static CUresult add_child_node(CUgraphNode *ph, CUgraph g, const CUgraphNode *deps, size_t ndeps,
                               const CUDA_CHILD_GRAPH_NODE_PARAMS *cp)
{
    if (cp->ownership != CU_GRAPH_CHILD_GRAPH_OWNERSHIP_MOVE)
        return CUDA_ERROR_NOT_SUPPORTED;
    fc_lock();
    CUgraph c = cp->graph;
    bool ok = node_args_ok(ph, g, deps, ndeps) && c != g && fc_handle_ok(c, FC_H_GRAPH) &&
              c->execs == 0;
    if (ok) {
        fc_handle_del(c);
        (*ph = add_node(g, FC_NODE_GRAPH))->child = c;
    }
    fc_unlock();
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* The generic entry points (CUDA 12.2, and 12.3 with edge data, which is
 * ignored): only the memory and child graph node kinds exist here. Static
 * helpers, never the exported names, so a preloaded shim sees each call
 * once. */
static CUresult add_node_generic(CUgraphNode *ph, CUgraph g, const CUgraphNode *deps, size_t ndeps,
                                 CUgraphNodeParams *p)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!p)
        return CUDA_ERROR_INVALID_VALUE;
    if (p->type == CU_GRAPH_NODE_TYPE_MEM_FREE)
        return add_free_node(ph, g, deps, ndeps, p->free.dptr);
    if (p->type == CU_GRAPH_NODE_TYPE_GRAPH)
        return add_child_node(ph, g, deps, ndeps, &p->graph);
    if (p->type != CU_GRAPH_NODE_TYPE_MEM_ALLOC)
        return CUDA_ERROR_NOT_SUPPORTED;
    CUDA_MEM_ALLOC_NODE_PARAMS v1 = {.poolProps = p->alloc.poolProps,
                                     .accessDescs = p->alloc.accessDescs,
                                     .accessDescCount = p->alloc.accessDescCount,
                                     .bytesize = p->alloc.bytesize};
    CUresult rc = add_alloc_node(ph, g, deps, ndeps, &v1);
    if (rc == CUDA_SUCCESS)
        p->alloc.dptr = v1.dptr;
    return rc;
}

CUresult cuGraphAddNode(CUgraphNode *phGraphNode, CUgraph hGraph, const CUgraphNode *dependencies,
                        size_t numDependencies, CUgraphNodeParams *nodeParams)
{
    return add_node_generic(phGraphNode, hGraph, dependencies, numDependencies, nodeParams);
}

CUresult cuGraphAddNode_v2(CUgraphNode *phGraphNode, CUgraph hGraph, const CUgraphNode *dependencies,
                           const CUgraphEdgeData *dependencyData, size_t numDependencies,
                           CUgraphNodeParams *nodeParams)
{
    (void)dependencyData;
    return add_node_generic(phGraphNode, hGraph, dependencies, numDependencies, nodeParams);
}

static CUresult add_free_node(CUgraphNode *phGraphNode, CUgraph hGraph, const CUgraphNode *dependencies,
                              size_t numDependencies, CUdeviceptr dptr)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_lock();
    struct CUgraphNode_st *freed = alloc_node_of(dptr);
    bool ok = node_args_ok(phGraphNode, hGraph, dependencies, numDependencies) && freed;
    if (ok) {
        freed->freed_in_graph = true;
        *phGraphNode = add_node(hGraph, FC_NODE_FREE);
    }
    fc_unlock();
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuGraphAddMemFreeNode(CUgraphNode *phGraphNode, CUgraph hGraph, const CUgraphNode *dependencies,
                               size_t numDependencies, CUdeviceptr dptr)
{
    return add_free_node(phGraphNode, hGraph, dependencies, numDependencies, dptr);
}

CUresult cuGraphAddKernelNode_v2(CUgraphNode *phGraphNode, CUgraph hGraph,
                                 const CUgraphNode *dependencies, size_t numDependencies,
                                 const CUDA_KERNEL_NODE_PARAMS *nodeParams)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_lock();
    bool ok = node_args_ok(phGraphNode, hGraph, dependencies, numDependencies) &&
              nodeParams && fc_handle_ok(nodeParams->func, FC_H_FUNC);
    if (ok)
        (*phGraphNode = add_node(hGraph, FC_NODE_KERNEL))->func = nodeParams->func;
    fc_unlock();
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* Lock held: each kernel node's module loaded, as its first launch would. */
static CUresult load_kernels(CUgraph g)
{
    for (CUgraphNode n = g->nodes; n; n = n->next) {
        CUresult rc = n->kind == FC_NODE_KERNEL  ? fc_func_load_locked(n->func)
                      : n->kind == FC_NODE_GRAPH ? load_kernels(n->child)
                                                 : CUDA_SUCCESS;
        if (rc != CUDA_SUCCESS)
            return rc;
    }
    return CUDA_SUCCESS;
}

static CUresult instantiate(CUgraphExec *phGraphExec, CUgraph hGraph)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!phGraphExec)
        return CUDA_ERROR_INVALID_VALUE;
    fc_lock();
    bool ok = fc_handle_ok(hGraph, FC_H_GRAPH);
    CUresult loaded = ok ? load_kernels(hGraph) : CUDA_SUCCESS;
    if (loaded != CUDA_SUCCESS) {
        fc_unlock();
        return loaded;
    }
    if (ok) {
        CUgraphExec e = calloc(1, sizeof *e);
        if (!e)
            abort();
        e->graph = hGraph;
        hGraph->execs++;
        fc_handle_add(e, FC_H_EXEC);
        *phGraphExec = e;
    }
    fc_unlock();
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuGraphInstantiateWithFlags(CUgraphExec *phGraphExec, CUgraph hGraph, unsigned long long flags)
{
    (void)flags;
    return instantiate(phGraphExec, hGraph);
}

/* The CUDA 10 / 11 ABI with an error node and a log buffer. */
CUresult cuGraphInstantiate(CUgraphExec *phGraphExec, CUgraph hGraph, CUgraphNode *phErrorNode,
                            char *logBuffer, size_t bufferSize)
{
    (void)phErrorNode;
    if (logBuffer && bufferSize)
        logBuffer[0] = '\0';
    return instantiate(phGraphExec, hGraph);
}

CUresult cuGraphInstantiate_v2(CUgraphExec *phGraphExec, CUgraph hGraph, CUgraphNode *phErrorNode,
                               char *logBuffer, size_t bufferSize)
{
    return cuGraphInstantiate(phGraphExec, hGraph, phErrorNode, logBuffer, bufferSize);
}

/* CUDA 12.0: flags and an upload stream in a struct; the result is
 * written back into it (CUDA_GRAPH_INSTANTIATE_SUCCESS, or the failure). */
CUresult cuGraphInstantiateWithParams(CUgraphExec *phGraphExec, CUgraph hGraph,
                                      CUDA_GRAPH_INSTANTIATE_PARAMS *instantiateParams)
{
    if (!instantiateParams)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = instantiate(phGraphExec, hGraph);
    instantiateParams->result_out = rc == CUDA_SUCCESS ? CUDA_GRAPH_INSTANTIATE_SUCCESS
                                                       : CUDA_GRAPH_INSTANTIATE_ERROR;
    instantiateParams->hErrNode_out = NULL;
    return rc;
}

CUresult cuGraphInstantiateWithParams_ptsz(CUgraphExec *phGraphExec, CUgraph hGraph,
                                           CUDA_GRAPH_INSTANTIATE_PARAMS *instantiateParams)
{
    return cuGraphInstantiateWithParams(phGraphExec, hGraph, instantiateParams);
}

CUresult cuGraphLaunch(CUgraphExec hGraphExec, CUstream hStream)
{
    int dev;
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_lock();
    CUresult rc = fc_handle_ok(hGraphExec, FC_H_EXEC) ? fc_stream_device(hStream, &dev)
                                                       : CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS)
        rc = launch_graph(hGraphExec->graph);
    fc_unlock();
    return rc;
}

CUresult cuGraphLaunch_ptsz(CUgraphExec hGraphExec, CUstream hStream)
{
    return cuGraphLaunch(hGraphExec, hStream);
}

CUresult cuGraphExecDestroy(CUgraphExec hGraphExec)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    fc_lock();
    bool ok = fc_handle_ok(hGraphExec, FC_H_EXEC);
    if (ok) {
        fc_handle_del(hGraphExec);
        CUgraph g = hGraphExec->graph;
        if (--g->execs == 0 && g->destroyed)
            graph_finish(g);
    }
    fc_unlock();
    if (!ok)
        return CUDA_ERROR_INVALID_VALUE;
    free(hGraphExec);
    return CUDA_SUCCESS;
}
