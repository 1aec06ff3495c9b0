/*
 * account_graph.c — a CUDA graph's memory nodes once the graph is
 * destroyed. The shim records each node under its address, with the
 * graph's key (handle | VG__KEY_HANDLE) as the record's `handle`
 * (shim/hooks_graph.c), and charges it from the node's creation.
 *
 * Measured on an H100 (driver 580.159.04, graph_probe, docs/gpu-results.md):
 * after cuGraphDestroy the driver has freed an unlaunched graph's memory
 * and gives back the addresses of nodes freed in the graph (their memory
 * stays in the device's graph pool, which NVML's measurement sees), while
 * memory a launch left live (no free node of the graph freed it) is still
 * held until the program calls cuMemFree on it. Only that memory still
 * answers cuPointerGetAttribute, so the destroy asks about each node.
 */
#include "vg_account.h"

#define BATCH 64 /* nodes handled per scan of the ledger */

struct graph_nodes {
    uint64_t graph;
    struct {
        uint64_t key, seq;
    } node[BATCH];
    int n;
    bool more; /* the graph has nodes beyond this batch */
};

static void collect_node(const vg__alloc_t *a, void *ctx)
{
    struct graph_nodes *g = ctx;
    if (a->handle != g->graph)
        return;
    if (g->n == BATCH) {
        g->more = true;
        return;
    }
    g->node[g->n].key = a->ptr;
    g->node[g->n].seq = a->seq;
    g->n++;
}

/* A node is handled by its record's number, never by its address alone:
 * once the driver freed the memory, another thread may be handed the
 * address and record it meanwhile, and that allocation keeps its charge.
 * Memory left live becomes an ordinary allocation (handle 0), so a later
 * graph at the same handle never takes it for one of its nodes. */
static void node_settle(uint64_t key, uint64_t seq, const char *api)
{
    if (vg__acct_ptr_gone(key))
        vg__acct_release_swept(key, seq, api);
    else
        vg__ledger_set_handle(key, seq, 0);
}

/* Each batch's records leave the graph (released or handed on), so the
 * next scan finds only the rest: the loop ends. */
void vg__acct_graph_destroyed(uint64_t graph, const char *api)
{
    if (vg__engine_init() != VG_OK)
        return;
    struct graph_nodes g = {.graph = graph};
    do {
        g.n = 0;
        g.more = false;
        vg__ledger_foreach(NULL, collect_node, &g);
        for (int i = 0; i < g.n; i++)
            node_settle(g.node[i].key, g.node[i].seq, api);
    } while (g.more);
}
