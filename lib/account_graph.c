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
 *
 * An executable instantiated from a graph outlives the graph's destroy:
 * its launches still allocate the nodes' memory (CUDA allows one live
 * executable per graph with memory nodes). So the shim tells the engine
 * which graph each executable came from; a graph destroyed while one of
 * its executables lives hands its nodes to that executable, and they are
 * settled, as above, when the executable is destroyed. A child graph
 * whose ownership moved into a parent (CUDA 13.0's cuda.h) dies with the
 * parent, so its nodes become the parent's. Memory a launch left live and
 * the program freed while its graph or executable lives keeps its node's
 * charge: the next launch takes it again (vg__acct_graph_node_freed).
 */
#include <pthread.h>

#include "vg_account.h"
#include "vg_fork.h"
#include "vg_keymap.h"

#define BATCH 64 /* nodes handled per scan of the ledger */

/* A node an executable holds carries the executable's key with this bit
 * too, so it is never taken for a node of a graph made later at the
 * executable's address. Handles are user-space addresses: bit 62 is
 * free. */
#define EXEC_NODES (1ull << 62)

/* Executable key -> the key of the graph it was instantiated from while
 * that graph lives, else one of these (graph keys have bit 63 set): */
#define GRAPH_GONE ((void *)(uintptr_t)1)  /* destroyed; it had no nodes */
#define GRAPH_NODES ((void *)(uintptr_t)2) /* destroyed; the executable holds its nodes */

/* Rank GRAPH_EXECS: taken by instantiation, the destroys of graphs and
 * executables; held while a destroyed graph's nodes are handed on (the
 * ledger's locks inside), never across a driver call. */
static pthread_mutex_t execs_lock = PTHREAD_MUTEX_INITIALIZER;
static vg__keymap_t execs;

struct graph_nodes {
    uint64_t owner;
    struct {
        uint64_t key, seq;
    } node[BATCH];
    int n;
    bool more; /* the owner has nodes beyond this batch */
};

static void collect_node(const vg__alloc_t *a, void *ctx)
{
    struct graph_nodes *g = ctx;
    if (a->handle != g->owner)
        return;
    if (g->n == BATCH) {
        g->more = true;
        return;
    }
    g->node[g->n].key = a->ptr;
    g->node[g->n].seq = a->seq;
    g->n++;
}

typedef void (*node_fn)(uint64_t key, uint64_t seq, const void *arg);

/* fn(node) for each node recorded with `owner` as its handle; fn must
 * take the record from the owner (release it or hand it on), so the next
 * scan finds only the rest and the loop ends. Returns how many it saw. */
static int nodes_each(uint64_t owner, node_fn fn, const void *arg)
{
    struct graph_nodes g = {.owner = owner};
    int seen = 0;
    do {
        g.n = 0;
        g.more = false;
        vg__ledger_foreach(NULL, collect_node, &g);
        for (int i = 0; i < g.n; i++)
            fn(g.node[i].key, g.node[i].seq, arg);
        seen += g.n;
    } while (g.more);
    return seen;
}

/* A node is handled by its record's number, never by its address alone:
 * once the driver freed the memory, another thread may be handed the
 * address and record it meanwhile, and that allocation keeps its charge.
 * Memory left live becomes an ordinary allocation (handle 0), so a later
 * graph at the same handle never takes it for one of its nodes. */
static void node_settle(uint64_t key, uint64_t seq, const void *api)
{
    if (vg__acct_ptr_gone(key))
        vg__acct_release_swept(key, seq, api);
    else
        vg__ledger_set_handle(key, seq, 0);
}

/* Memory a launch left live, freed outside the graph while its graph or
 * executable lives: CUDA requires that free before the next launch, which
 * takes the memory again at the same address. So the charge stays, the
 * record still the owner's, and the destroy settles it as any node's. The
 * record goes back before the driver's free: no driver call runs while it
 * is out of the ledger (a destroy's scan in that instant misses it, and it
 * stays charged until the process ends). */
__attribute__((noinline, cold)) int vg__acct_graph_node_freed(vg__free_t *f)
{
    vg__acct_restore(&f->a);
    f->state = VG__FREE_GRAPH;
    return VG_OK;
}

/* The node's record is the new owner's (`to`: its key) from now on. */
static void node_hand_on(uint64_t key, uint64_t seq, const void *to)
{
    vg__ledger_set_handle(key, seq, *(const uint64_t *)to);
}

void vg__acct_graph_instantiated(uint64_t graph, uint64_t exec)
{
    vg__mutex_lock(&execs_lock, VG__RANK_GRAPH_EXECS);
    uint32_t i = vg__keymap_find(&execs, exec);
    if (i != VG__KEYMAP_NONE) /* a handle whose destroy the shim missed */
        execs.slot[i].val = (void *)(uintptr_t)graph;
    else /* without host memory: untracked, settled at the graph's destroy */
        (void)vg__keymap_add(&execs, exec, (void *)(uintptr_t)graph);
    vg__mutex_unlock(&execs_lock, VG__RANK_GRAPH_EXECS);
}

/* Lock held: every executable of `graph` learns that it is gone; the
 * first (there is at most one when the graph has memory nodes) takes its
 * nodes. True when one did: the caller has nothing left to settle. */
static bool graph_handed_on(uint64_t graph)
{
    uint64_t heir = 0;
    for (uint32_t i = 0; execs.slot && i <= execs.mask; i++) {
        if (!execs.slot[i].key || execs.slot[i].val != (void *)(uintptr_t)graph)
            continue;
        execs.slot[i].val = GRAPH_GONE;
        if (!heir) {
            heir = execs.slot[i].key;
            uint64_t to = heir | EXEC_NODES;
            if (nodes_each(graph, node_hand_on, &to) > 0)
                execs.slot[i].val = GRAPH_NODES;
        }
    }
    return heir != 0;
}

void vg__acct_graph_destroyed(uint64_t graph, const char *api)
{
    if (vg__engine_init() != VG_OK)
        return;
    vg__mutex_lock(&execs_lock, VG__RANK_GRAPH_EXECS);
    bool handed = graph_handed_on(graph);
    vg__mutex_unlock(&execs_lock, VG__RANK_GRAPH_EXECS);
    if (!handed)
        nodes_each(graph, node_settle, api);
}

/* Taken out of the map under the lock, so a graph destroyed meanwhile
 * either hands its nodes on before (and they are settled here) or finds
 * no executable and settles them itself. */
void vg__acct_graph_exec_destroyed(uint64_t exec, const char *api)
{
    void *held = NULL;
    vg__mutex_lock(&execs_lock, VG__RANK_GRAPH_EXECS);
    uint32_t i = vg__keymap_find(&execs, exec);
    if (i != VG__KEYMAP_NONE) {
        held = execs.slot[i].val;
        vg__keymap_del_at(&execs, i);
    }
    vg__mutex_unlock(&execs_lock, VG__RANK_GRAPH_EXECS);
    if (held == GRAPH_NODES && vg__engine_init() == VG_OK)
        nodes_each(exec | EXEC_NODES, node_settle, api);
}

/* The driver destroys a moved child with its parent, never on its own:
 * the parent's destroy (or its executable's) settles the child's nodes. */
void vg__acct_graph_moved(uint64_t child, uint64_t parent)
{
    if (vg__engine_init() == VG_OK)
        nodes_each(child, node_hand_on, &parent);
}

void vg__account_graph_prefork(void) { pthread_mutex_lock(&execs_lock); }
void vg__account_graph_postfork_parent(void) { pthread_mutex_unlock(&execs_lock); }
void vg__account_graph_postfork_child(void) { pthread_mutex_unlock(&execs_lock); }
