/*
 * vg_account.h — accounting: the engine's door for allocations
 * intercepted in an unmodified process (account.c, account_streams.c,
 * account_pooled.c, account_overhead.c), the free path, and the engine's start (engine.c).
 * This and vg_driver.h are all the shim includes.
 */
#ifndef VG_ACCOUNT_H
#define VG_ACCOUNT_H

#include "vg_budget.h"
#include "vg_credit.h"
#include "vg_diag.h"
#include "vg_driver.h"
#include "vg_settings.h"

/* --------------------------------------------------------- account.c */

/* The engine's door for allocations intercepted in an unmodified process.
 * The shim asks before the driver allocates (reserve), then tells what
 * happened (commit or cancel), and hands frees back (release). All policy
 * lives here; the shim only forwards. */

/* Keys that are not device addresses (VMM handles, arrays) carry this bit,
 * so they never collide with a device pointer: canonical user-space
 * addresses on x86-64 and arm64 are below 2^48. */
#define VG__KEY_HANDLE (1ull << 63)

/* One intercepted allocation in flight. */
typedef struct vg__ticket {
    int device;
    vg_kind_t kind;
    uint64_t bytes;   /* reserved against the device budget */
    const char *api;  /* the hooked entry point, for messages */
    vg__budget_t *budget; /* set by vg__acct_reserve, used by the rest */
    bool pool_spent;  /* cache mode's pool already gave back its empty
                       * chunks for this request (vg__acct_pooled_alloc):
                       * a refusal need not ask it again */
    bool credit;      /* paid from this thread's credit (credit.c): the
                       * budget's use, peak and level did not move */
} vg__ticket_t;

/* Reserves t->bytes on t->device for an allocation of kind t->kind.
 * VG_ENOMEM over budget (one rate-limited stderr line), VG_EDENIED when a
 * policy forbids the kind (VRAMGUARD_MANAGED=deny), VG_ESETTING when the
 * engine failed to start (fail closed: nothing is allowed). Inline, for
 * the common case (defined below): the rest, vg__acct_reserve_slow. */
VG__INLINE int vg__acct_reserve(vg__ticket_t *t);
int vg__acct_reserve_slow(vg__ticket_t *t);
/* Changes the reservation to the size the driver really used (pitch,
 * arrays). Growth must fit the budget: VG_ENOMEM otherwise (the old
 * reservation stays). */
int vg__acct_resize(vg__ticket_t *t, uint64_t bytes);
/* The allocation succeeded: commit and record it under `key` (a device
 * pointer, or a handle with VG__KEY_HANDLE). `size` is what the caller
 * asked for; `pool` the stream-ordered pool it came from, else 0.
 * VG_ESYS when there is no host memory to record it: it is charged but
 * unrecorded, so no free could ever give the charge back. The caller
 * undoes the allocation, calls vg__acct_unrecorded() and refuses it
 * (CUDA_ERROR_OUT_OF_MEMORY); what cannot be undone stays charged. */
int vg__acct_commit(vg__ticket_t *t, uint64_t key, uint64_t size, uint64_t pool);
/* After vg__acct_commit's VG_ESYS, with the allocation undone: its charge
 * back, a line saying why, and its free in the audit log. */
void vg__acct_unrecorded(vg__ticket_t *t, uint64_t key, uint64_t size);
/* The allocation failed: give the reservation back. */
void vg__acct_cancel(vg__ticket_t *t);
/* The free path keeps the charge until the driver has really freed the
 * memory: vg__acct_take() takes `key` out of the ledger before the driver
 * frees (so an address the driver reuses at once can be recorded again)
 * and vg__acct_uncharge() gives the charge back once the driver said yes;
 * vg__acct_restore() puts the record back when it said no. Giving the
 * charge back first let another thread allocate into memory the driver had
 * not freed yet (+35% over a 1 GiB budget under 16 threads on the test
 * driver). Out: *out. VG_ENOTFOUND when `key` is not a live allocation.
 * Inline (every free takes): defined with the free path below. */
VG__INLINE int vg__acct_take(uint64_t key, vg__alloc_t *out);
VG__INLINE void vg__acct_uncharge(const vg__alloc_t *a);
void vg__acct_uncharge_slow(const vg__alloc_t *a);
/* Take and uncharge at once: for memory the driver has already freed (a
 * destroyed graph or context). */
int vg__acct_release(uint64_t key, vg__alloc_t *out);
void vg__acct_restore(const vg__alloc_t *a);
/* The driver has already freed `key` (it died with its owner, e.g. a
 * graph's memory nodes with the graph): vg__acct_release, then `free` in
 * the audit log. Nothing when it is not a live allocation. */
void vg__acct_release_freed(uint64_t key, const char *api);
/* As vg__acct_release_freed, only for the record numbered `seq`: a sweep
 * that saw the record and then asked the driver about it (which said the
 * memory is gone), or a VMM call that freed a handle, leaves alone a new
 * allocation that another thread was handed at the same address (or
 * handle) and recorded meanwhile. */
void vg__acct_release_swept(uint64_t key, uint64_t seq, const char *api);
/* Rewrites the driver's memory view of `device` to the budget's:
 * total = min(budget, physical); free = clamp(total - use, 0, free).
 * Unchanged when the device has no budget. */
void vg__acct_meminfo(int device, uint64_t *free_bytes, uint64_t *total_bytes);

/* Records an allocation the driver (or cache mode) just made: fills in the record's
 * bookkeeping, writes the audit line and inserts it in the ledger (a stale
 * record at the same address is replaced). VG_ESYS when the ledger had no
 * host memory for it. */
int vg__acct_record(const vg__ticket_t *t, vg__alloc_t *a);

/* -------------------------------------------------- account_streams.c */

/* Stream-ordered pools keep freed memory reserved, so for them the budget
 * carries what each pool reserves (CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT),
 * not what was asked for. */
/* A pool's memory lands where the pool is located, whichever device is
 * current. cuMemPoolCreate succeeded: remember where `pool` is. */
void vg__acct_pool_made(CUmemoryPool pool, const CUmemLocation *where);
/* False when `pool` holds no device memory (a pool located on the host):
 * nothing of it is charged. Else true, with *device set to the pool's
 * device; left as it was (the caller's current device) for a pool whose
 * device cannot be told. */
bool vg__acct_pool_home(CUmemoryPool pool, int *device);
/* The pool cuMemAllocAsync draws from on `device` (the driver's
 * cuDeviceGetMemPool), remembered until vg__acct_pool_current_changed();
 * NULL when the driver cannot say. Thread-safe; one atomic load once
 * known. */
CUmemoryPool vg__acct_pool_current(int device);
/* A device's current pool may have changed (cuDeviceSetMemPool,
 * cuMemSetMemPool, cuMemPoolDestroy, a context's end): call after the
 * driver returned; the next vg__acct_pool_current() of every device asks
 * the driver again. */
void vg__acct_pool_current_changed(void);
/* Brings the standing charge of `pool` in line with what it reserves now. */
void vg__acct_pool_sync(int device, CUmemoryPool pool);
/* Settles a ticket for an allocation just served by `pool`: converts the
 * reservation into the pool's real growth. VG_ENOMEM when the pool grew
 * by more than the budget allows (the caller must free the allocation). */
int vg__acct_pool_settle(vg__ticket_t *t, CUmemoryPool pool);
/* Trims every pool this process charged on `device` down to its use and
 * re-syncs their charges. Returns true if anything was released. */
bool vg__acct_pool_trim(int device);
/* Forgets a destroyed pool and returns its charge; when allocations from
 * it are still out, the driver frees the pool after the last of them, so
 * the charge stays until then (vg__acct_pool_block_freed). */
void vg__acct_pool_forget(CUmemoryPool pool);
/* An allocation from a stream-ordered pool was freed: the last one out of
 * a destroyed pool returns that pool's charge. Anything else: nothing. */
void vg__acct_pool_block_freed(const vg__alloc_t *a);
/* Brings the charge of every pool of `device` in line with what each
 * reserves now (pools shrink at synchronisations the shim never sees). */
void vg__acct_pools_sync_device(int device);

/* Fork steps (fork.c, rank STREAM_POOLS: the stream-ordered pools' lock). */
void vg__account_prefork(void);
void vg__account_postfork_parent(void);
void vg__account_postfork_child(void);

/* ------------------------------------------------- account_implicit.c */

/* Memory the driver takes without an allocation call (docs/accounting.md).
 * Bit d of vg__hot.implicit_pending: device d may hold memory no
 * measurement has seen (its context was never measured, or kernels were
 * launched since; every device starts so). Read on every reservation: one
 * load and a predictable branch. */
static inline bool vg__acct_implicit_pending(int device)
{
    return (atomic_load_explicit(&vg__hot.implicit_pending, memory_order_acquire) >>
            (device & 63)) & 1;
}
/* Charges what the device's pending memory is (the context on the first
 * allocation, under a lock the device's other first allocations wait on;
 * later, at most one NVML measurement a millisecond). */
void vg__acct_implicit_settle(int device);
/* A kernel launch of `function` (a CUfunction): its first launch may load
 * code lazily, so it marks every device pending; later ones cost a lookup. */
void vg__acct_implicit_launch(const void *function);
/* A call that may load code or take memory no call shows whenever it is
 * made (a graph's instantiation loads its kernels when loading is lazy):
 * marks every device pending, with no first-time test. */
void vg__acct_implicit_may_grow(void);
/* Implicit memory may have shrunk on `device` (-1: every device): a
 * context, module or library went. The next measurement may lower it. */
void vg__acct_implicit_shrunk(int device);
/* Consumes `device`'s shrink mark: true when its figure may fall. */
bool vg__acct_implicit_may_shrink(int device);
/* After a call that made the driver take memory (context creation, an
 * module or library load): measures it. VG_ENOMEM when it took this process
 * past its budget (logged, audited): undo the call, then call
 * vg__acct_implicit_undone(). */
int vg__acct_implicit_took(int device, const char *api);
void vg__acct_implicit_undone(int device);
/* Before a call that may destroy a context (cuCtxDestroy, a primary
 * context's reset or release): every thread's newest allocation leaves its
 * front for the shards. The driver may give a dying context's address to
 * another thread as soon as it frees it, before the sweep below; that
 * thread's insert must find the stale record where inserts look, and give
 * its charge back (account.c's insert_failed). Left in a front, it was a
 * second live record of the address, and a flush could keep the stale
 * one and drop the new (its charge stayed: lost budget). A thread that
 * still allocates in a context being destroyed is not covered. */
void vg__acct_context_going(void);
/* Context `ctx` of `device` was destroyed or reset (ctx NULL: not known):
 * drops the records of memory the driver no longer knows and of the
 * arrays made in ctx (audited as frees by `api`), its limit charges, and
 * measures the device again at its next allocation. */
void vg__acct_context_gone(int device, CUcontext ctx, const char *api);
/* True when the allocation that started at device address `ptr` is gone:
 * the driver no longer knows ptr as memory, or knows it only inside
 * another allocation that starts elsewhere. Asks the driver (two calls):
 * rare paths only. */
bool vg__acct_ptr_gone(uint64_t ptr);

/* ---------------------------------------------------- account_graph.c */

/* A graph's memory nodes are recorded under their addresses with the
 * graph's key (its handle | VG__KEY_HANDLE) as the records' `handle`;
 * an executable's key is its handle | VG__KEY_HANDLE too. Thread-safe;
 * none holds a lock across a driver call. */
/* Executable `exec` was instantiated from `graph` (the driver accepted
 * it). A mutex and a hash insertion; without host memory the executable
 * goes untracked (its graph's destroy then settles the nodes). */
void vg__acct_graph_instantiated(uint64_t graph, uint64_t exec);
/* `graph` was destroyed. While an executable instantiated from it lives,
 * the nodes stay charged, handed to that executable. Otherwise each node
 * whose memory the driver freed with the graph gives its charge back (a
 * free by `api` in the audit log); memory a launch left live (no free
 * node of the graph freed it) stays charged as an ordinary allocation,
 * freed by cuMemFree or cuMemFreeAsync. Rare path: a scan of the
 * executables, a scan of the ledger per 64 nodes, and a driver query
 * per node settled. */
void vg__acct_graph_destroyed(uint64_t graph, const char *api);
/* Executable `exec` was destroyed: the nodes it held of its destroyed
 * graph are settled as vg__acct_graph_destroyed settles a graph's (frees
 * by `api`). A mutex and a hash lookup when it held none. */
void vg__acct_graph_exec_destroyed(uint64_t exec, const char *api);
/* Graph `child` was moved into graph `parent` (a child graph node with
 * CU_GRAPH_CHILD_GRAPH_OWNERSHIP_MOVE, which the driver accepted): its
 * nodes are the parent's from now on. A scan of the ledger per 64 nodes. */
void vg__acct_graph_moved(uint64_t child, uint64_t parent);
/* Fork steps (fork.c, rank GRAPH_EXECS). */
void vg__account_graph_prefork(void);
void vg__account_graph_postfork_parent(void);
void vg__account_graph_postfork_child(void);

/* Fork steps (fork.c, rank IMPLICIT_FIRST: held across a first use). */
void vg__account_implicit_prefork(void);
void vg__account_implicit_postfork_parent(void);
void vg__account_implicit_postfork_child(void);

/* --------------------------------------------------- account_limits.c */

/* cuCtxSetLimit: the growth in what a limit costs (heap, FIFO: bytes;
 * stack: bytes x resident threads) is reserved before the driver is
 * asked. begin: VG_ENOMEM when it does not fit (do not call the driver);
 * end: commits or rolls back on the driver's answer. One operation at a
 * time: a begin that returns VG_OK holds a lock until its end. */
typedef struct vg__limit_op {
    int device;
    CUcontext ctx;         /* the context whose limit it is (NULL: unknown) */
    int kind;              /* -1: a limit that costs no memory */
    uint64_t grow, shrink; /* bytes */
    vg__budget_t *budget;  /* NULL: nothing to do at end */
} vg__limit_op_t;
int vg__acct_limit_begin(vg__limit_op_t *op, int device, CUlimit which, size_t value);
void vg__acct_limit_end(vg__limit_op_t *op, CUresult cr);
/* Gives back the limit charges of context `ctx` on `device` (it is gone),
 * and those of the device's contexts that could not be told apart. */
void vg__acct_limits_forget(int device, CUcontext ctx);
/* Bytes charged for limits on `device`. */
uint64_t vg__acct_limits_charged(int device);

/* Fork steps (fork.c, rank LIMITS). */
void vg__account_limits_prefork(void);
void vg__account_limits_postfork_parent(void);
void vg__account_limits_postfork_child(void);
/* Fork steps (fork.c, rank LIMIT_SET). */
void vg__account_limits_set_prefork(void);
void vg__account_limits_set_postfork_parent(void);
void vg__account_limits_set_postfork_child(void);

/* ----------------------------------------------------- account_vmm.c */

/* A cuMemCreate handle is charged until it is released AND unmapped
 * everywhere, as the driver frees it. Each VMM call (cuMemMap, cuMemUnmap,
 * cuMemRelease, cuMemRetainAllocationHandle, cuMemMapArrayAsync) runs between
 * vg__acct_vmm_begin and vg__acct_vmm_end, which hold the VMM call lock
 * (rank VMM_CALL) across the driver call and its bookkeeping: the books
 * then see these calls in the driver's order. Not so, an unmap's books
 * could take another thread's new mapping at the same address for the one
 * it unmapped, and a release could find no mapping of a handle that the
 * driver had just mapped. Call the rest between them, after the driver
 * call succeeded. */
void vg__acct_vmm_begin(void);
void vg__acct_vmm_end(void);
/* True when `handle` is a live allocation of ours (cuMemRelease then
 * takes this path rather than the bad-pointer one), with *seq its
 * record's number: ask before the driver call and hand it to
 * vg__acct_vmm_released, so that the release's books leave alone a new
 * allocation the driver handed the same handle meanwhile. */
bool vg__acct_vmm_tracked(uint64_t handle, uint64_t *seq);
void vg__acct_vmm_map(uint64_t va, uint64_t size, uint64_t handle);
void vg__acct_vmm_unmap(uint64_t va, uint64_t size, const char *api);
void vg__acct_vmm_retain(uint64_t handle);
/* A cuMemRelease succeeded: the charge of the record numbered `seq`
 * (vg__acct_vmm_tracked's) goes when it was the last reference. */
void vg__acct_vmm_released(uint64_t handle, uint64_t seq, const char *api);
/* A cuMemMapArrayAsync entry the driver accepted: a MAP of a handle into a
 * sparse or deferred-mapping array is one more mapping of it, an UNMAP
 * drops the mappings it covers. */
void vg__acct_vmm_array_op(const CUarrayMapInfo *op, const char *api);
/* An array or mipmapped array (its ledger key) is gone, destroyed or with
 * its context: the driver dropped every mapping into it. */
void vg__acct_vmm_array_gone(uint64_t key, const char *api);

/* Fork steps (fork.c, rank VMM). */
void vg__account_vmm_prefork(void);
void vg__account_vmm_postfork_parent(void);
void vg__account_vmm_postfork_child(void);
/* Fork steps (fork.c, rank VMM_CALL): a VMM call in flight. */
void vg__account_vmm_call_prefork(void);
void vg__account_vmm_call_postfork_parent(void);
void vg__account_vmm_call_postfork_child(void);

/* -------------------------------------------------- account_pooled.c */

/* VRAMGUARD_POOL=cache: plain allocations of 1..VG__SMALL_MAX bytes made
 * under a device's primary context are served from that device's process
 * pool (pool.c, cache.c) and recorded as the program made them (one ledger
 * record per block, `pooled` set, handle = its chunk, charged 0: the
 * chunks carry the charge). docs/pool.md has the rules. */

/* vg__hot.cache_mode: set once, when the engine starts with
 * VRAMGUARD_POOL=cache; read through vg__cache_mode_on() (one load and a
 * predictable branch in each hook). */
static inline bool vg__cache_mode_on(void)
{
    return vg__hot.cache_mode;
}

/* Serves t (t->bytes = the size asked, t->api) from the pool of the
 * calling thread's current context, when that is a device's primary
 * context: one driver call (cuCtxGetCurrent) on the way; t->device is set
 * here. VG_OK with *ptr and the record made. VG_ENOTFOUND when the request
 * does not qualify, or when a new chunk does not fit even after the pool
 * released its empty chunks (then t->pool_spent is set): the caller sets
 * t->device and takes the driver's path for the exact size. The path only
 * goes down: this file -> pool.c/cache.c -> the driver; the one charge for
 * a new chunk is pool_room.c's (vg__pool_make_room). */
int vg__acct_pooled_alloc(vg__ticket_t *t, uint64_t *ptr);
/* Gives a pooled record's block back to its pool (reused only after a
 * synchronisation that follows this call). */
void vg__acct_pooled_free(const vg__alloc_t *a);
/* The live pooled allocation holding ptr: VG_OK with *out; VG_EBADPTR when
 * ptr is inside a cache-mode chunk but in no live allocation (freed, or
 * never handed out); VG_ENOTFOUND when no cache-mode chunk holds it. */
int vg__acct_pooled_find(vg_devptr_t ptr, vg__alloc_t *out);
/* Releases one empty chunk of the device's pool (largest, then the one
 * idle longest); true if one was. */
bool vg__acct_pooled_trim(int device);
/* The device's primary context is about to be reset: its pool's chunks
 * are released and its blocks forgotten (they die with the context). */
void vg__acct_pooled_reset(int device);
/* A synthetic CU_POINTER_ATTRIBUTE_BUFFER_ID for a pooled record: unique
 * per allocation, never one the driver gives (bit 63). */
static inline uint64_t vg__pooled_buffer_id(const vg__alloc_t *a)
{
    return (1ull << 63) | a->seq;
}

/* Sets the measured memory of `device` that no call shows (context,
 * module images, library workspaces) and charges the change, with no
 * limit check: it is already spent. */
void vg__acct_overhead_set(int device, uint64_t bytes);
uint64_t vg__acct_overhead(int device);

/* Fork steps (fork.c, rank POOLED_CREATE: held while a pool is made). */
void vg__account_pooled_prefork(void);
void vg__account_pooled_postfork_parent(void);
void vg__account_pooled_postfork_child(void);

/* ------------------------------------------------ account_overhead.c */

/* Memory no call shows (context, module images, library workspaces):
 * NVML's figure for this process on the device minus what the calls
 * showed, charged through vg__acct_overhead_set(). Re-measures `device`
 * unless it was measured less than a second ago or has no budget. Slow
 * paths only (the first allocation on a device, refusals): it may load
 * NVML and call it. Thread-safe; a thread that loses the race returns. */
typedef enum vg__refresh {
    VG__REFRESH_RATE_LIMITED = 0, /* at most once a second per device */
    VG__REFRESH_SOON,             /* at most once a millisecond per device */
    VG__REFRESH_NOW,              /* now: the driver just took memory */
} vg__refresh_t;
/* True when it measured (NVML listed this process). */
bool vg__overhead_refresh(int device, vg__refresh_t when);
/* True when NVML can be asked at all (loads it on first use). */
bool vg__overhead_available(void);

/* ---------------------------------------------------------- engine.c */

/* One engine per process. vg__engine_init() is idempotent and thread-safe:
 * it parses the settings and loads the driver (never cuInit). VG_ESETTING or
 * VG_ENODRIVER on failure, with vg__engine_error() saying why. */
int vg__engine_init_slow(void);
/* vg__hot.engine_ok, set (release) once the engine started well, is the
 * hot path's one load. */
static inline int vg__engine_init(void)
{
    return vg__likely(atomic_load_explicit(&vg__hot.engine_ok, memory_order_acquire))
               ? VG_OK
               : vg__engine_init_slow();
}

/* Fork steps (fork.c, rank RESOLVE: held while a device budget is resolved). */
void vg__engine_prefork(void);
void vg__engine_postfork_parent(void);
void vg__engine_postfork_child(void);

const char *vg__engine_error(void);
const vg__settings_t *vg__engine_settings(void);
/* The process budget of a device (VRAMGUARD_BUDGET), resolved on first use;
 * unlimited when no budget is set. NULL for a bad ordinal. Inline, every
 * reservation asks: once resolved (bit `device` of
 * vg__hot.budget_resolved), vg__engine_budgets[device]. */
extern vg__budget_t vg__engine_budgets[VG__MAX_DEVICES] VG__HIDDEN;
vg__budget_t *vg__engine_budget_slow(int device);
static inline vg__budget_t *vg__engine_budget(int device)
{
    if (vg__likely((unsigned)device < VG__MAX_DEVICES &&
                   (atomic_load_explicit(&vg__hot.budget_resolved, memory_order_acquire) >>
                    device) & 1))
        return &vg__engine_budgets[device];
    return vg__engine_budget_slow(device);
}

/* badptr.c and account.c: the free path. A free hook asks
 * vg__acct_free_begin before the driver and calls vg__acct_free_end with
 * the driver's answer; begin's status other than VG_OK means "do not call
 * the driver, return this" (VRAMGUARD_ON_BAD_POINTER=reject). */
typedef enum vg__free_state {
    VG__FREE_PASS = 0, /* NULL: nothing to record, the driver answers */
    VG__FREE_OURS,     /* a ledger record was taken out (f->a) */
    VG__FREE_BAD,      /* not ours: classified into f->bad, policy applied */
    VG__FREE_POOLED,   /* a cache-mode block, already back in its pool: the
                          driver must not be called (f->a is the record) */
    VG__FREE_GRAPH,    /* a graph's memory node: its record is back in the
                          ledger, charged, for the next launch (f->a) */
} vg__free_state_t;

typedef struct vg__free {
    uint64_t key;         /* device pointer, or handle | VG__KEY_HANDLE */
    const char *api;      /* the hooked entry point */
    vg__free_state_t state;
    vg__alloc_t a;        /* VG__FREE_OURS: the record */
    vg_ptr_info_t bad;    /* VG__FREE_BAD: the classification */
} vg__free_t;

int vg__badptr_begin(vg__free_t *f);
/* account_graph.c, out of line: f->a, just taken out, is a graph's (or an
 * executable's) memory node, its `handle` a VG__KEY_HANDLE key. Puts the
 * record back, charged, and sets VG__FREE_GRAPH: the driver frees the
 * memory, the next launch takes it again, the destroy settles it. */
int vg__acct_graph_node_freed(vg__free_t *f);
/* account.c, out of line: restores a record whose driver free failed,
 * writes `free` and finishes a bad pointer (vg__badptr_end). */
void vg__acct_free_settle(vg__free_t *f, CUresult cr);

/* Takes `key` out of the ledger (and its charge back) or hands it to
 * vg__badptr_begin; a graph's memory node goes back into the ledger
 * (vg__acct_graph_node_freed). Fills *f; nothing in it needs initialising.
 * Inline: the common case costs what the bare release did, plus three
 * stores and a test of the record's handle. */
/* The hot path's common cases, inline in the hooks so that a pair runs
 * no call of ours but the ledger's: a started engine, a resolved budget,
 * no implicit memory pending, and this thread's credit enough for the
 * request (or, freeing, a plain record whose bytes become credit).
 * Everything else goes out of line, which decides it all again. */
VG__INLINE int vg__acct_reserve(vg__ticket_t *t)
{
    if (vg__likely(atomic_load_explicit(&vg__hot.engine_ok, memory_order_acquire)) &&
        vg__likely(t->kind != VG_KIND_MANAGED) &&
        vg__likely(!vg__acct_implicit_pending(t->device))) {
        vg__budget_t *b = vg__engine_budget(t->device);
        if (vg__likely(b) && vg__likely(vg__credit_take(t->device, t->bytes))) {
            t->budget = b;
            t->credit = true;
            return VG_OK;
        }
    }
    return vg__acct_reserve_slow(t);
}

VG__INLINE void vg__acct_uncharge(const vg__alloc_t *a)
{
    if (vg__likely(!a->pooled && !a->handle) && vg__likely(vg__credit_give(a->device, a->charged)))
        return;
    vg__acct_uncharge_slow(a);
}

VG__INLINE int vg__acct_take(uint64_t key, vg__alloc_t *out)
{
    if (vg__ledger_remove(key, NULL, out) != VG_OK)
        return VG_ENOTFOUND;
    if (vg__unlikely(out->pooled))
        vg__acct_pooled_free(out); /* its chunk carries the charge */
    return VG_OK;
}

VG__INLINE int vg__acct_free_begin(vg__free_t *f, uint64_t key, const char *api)
{
    f->key = key;
    f->api = api;
    if (vg__likely(vg__acct_take(key, &f->a) == VG_OK)) {
        /* Only a graph's node carries a handle with this bit. */
        if (vg__unlikely(f->a.handle & VG__KEY_HANDLE))
            return vg__acct_graph_node_freed(f);
        f->state = vg__likely(!f->a.pooled) ? VG__FREE_OURS : VG__FREE_POOLED;
        return VG_OK;
    }
    return vg__badptr_begin(f);
}

/* The charge goes back only after the driver freed (see vg__acct_take). */
VG__INLINE void vg__acct_free_end(vg__free_t *f, CUresult cr)
{
    if (vg__likely(f->state == VG__FREE_OURS && cr == CUDA_SUCCESS))
        vg__acct_uncharge(&f->a);
    if (vg__likely(f->state != VG__FREE_BAD && cr == CUDA_SUCCESS) &&
        !vg__diag_on())
        return;
    vg__acct_free_settle(f, cr);
}

#endif /* VG_ACCOUNT_H */
