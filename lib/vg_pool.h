/*
 * vg_pool.h — the pool's internals: the small-block cache (cache.c,
 * cache_walk.c, cache_thread.c), eviction (evict.c), the chunk index
 * (chunks.c) and the pool itself (pool.c, pool_room.c, pool_info.c). Only
 * the pool and cache files, buf.c, the cache-mode door (account_pooled.c)
 * and the pointer checks (badptr.c, ptrcheck.c: the chunk index) include
 * it.
 */
#ifndef VG_POOL_H
#define VG_POOL_H

#include <pthread.h>

#include "vg_budget.h"
#include "vg_driver.h"

/* ----------------------------------------------------------- cache.c */

/* The pool's cache of small blocks (docs/pool.md has the rules and the
 * measurements behind the numbers). Requests up to VG__SMALL_MAX bytes are
 * rounded up to a size class and carved out of chunks, each one driver
 * allocation; larger requests go to the driver directly. Classes: 256 B
 * steps up to 1 KiB, then four classes per doubling (a block wastes at most
 * 20% of itself). All class sizes are multiples of 256, so every block keeps
 * the driver's 256-byte alignment.
 *
 * The cache is host-side bookkeeping only: it never calls the driver or
 * touches a budget. The pool (pool.c) charges and allocates chunks, hands
 * them in, and frees the spans the cache gives back.
 *
 * Arenas. The classes come in up to VG__ARENAS_MAX copies, one set per
 * arena, each with its own chunks, lists and lock; each thread cache is
 * bound to one arena (round robin as threads first use the cache). A
 * thread's blocks then cycle through its own arena's lists, so threads do
 * not share class locks, and they do not share the chunks whose addresses
 * key the ledger's granules (lib/ledger.c: a granule's records stay in the
 * shard of the thread that uses it). A block freed by a thread of another
 * arena goes straight back to its chunk's class. A request that would grow
 * the pool past its budget reuses blocks of any arena first.
 *
 * Two levels. Each class keeps its free blocks in host arrays under a
 * spinlock (cache.c). In front of the classes, each thread that uses the
 * cache has a thread cache (cache_thread.c): per class a magazine of
 * `ready` blocks and one of `pending` (freed) blocks, under a spinlock that
 * only its owner takes on the fast path (uncontended), so a cached pair
 * writes nothing another thread writes. A magazine exchanges whole batches
 * with its class: a refill takes ready or never-used blocks (and hands over
 * the thread's pending ones), a free into a full pending magazine hands
 * them over. A trim, a pool destroy or the thread's exit (a pthread key
 * destructor) takes the magazine's lock to empty it, so blocks parked there
 * are never stranded.
 *
 * Reuse rule: a freed block is handed out again only after a context
 * synchronisation (the `sync` function given to vg__cache_init) that began
 * after the free has returned. Freed blocks reach the class's `pending`
 * list; when the class runs out of ready and never-used blocks, `pending`
 * is sealed with the cache's sync epoch (syncs started so far) and becomes
 * ready once a sync numbered above it has completed. One synchronisation
 * serves every block sealed before it began, in every class.
 *
 * Locks, in order: the thread-cache list mutex, a thread cache, a class.
 * All spinlocks are held for a few list operations (and, when a chunk
 * leaves its class, for its removal from the chunk index, whose mutex is
 * always taken last, and the free of its host record), never across a
 * driver call, a budget call or `sync`. No pool-wide lock on the fast
 * path. */
#define VG__CLASS_GRAIN 256u
#define VG__SMALL_MAX (1u << 20)         /* bytes; larger goes direct */
#define VG__CLASSES 44                   /* 256 B .. 1 MiB */
#define VG__CHUNK_SMALL (2ull << 20)     /* chunk of classes <= 256 KiB */
#define VG__CHUNK_LARGE (8ull << 20)     /* chunk of larger classes */
#define VG__CLASS_SMALL_CHUNK_MAX (256u << 10)
/* Empty chunks a class keeps cached (below High pressure) before releasing
 * the next one that empties. */
#define VG__EMPTY_KEEP 1u
/* Arenas: each has its own classes, chunks and lists (see "Arenas" above);
 * a pool has one per online CPU, up to this many. */
#define VG__ARENAS_MAX 16u
/* A magazine holds VG__MAG_BYTES / block size blocks, 2..32, in each of its
 * two stacks: 32 of 4 KiB, 8 of 64 KiB, 2 of 1 MiB. A thread parks at most
 * twice that per class it uses (reclaimable by trim, see above). */
#define VG__MAG_BYTES (512u << 10)
#define VG__MAG_MIN 2u
#define VG__MAG_MAX 32u

typedef struct vg__chunk vg__chunk_t;   /* cache.c */
typedef struct vg__tcache vg__tcache_t; /* cache_thread.c: a thread's */

/* One chunk of a class. Every field is the cache's (cache.c, and
 * cache_walk.c's trims and drain); it is defined here only because a free
 * through the thread cache (cache_thread.c) reads `cls` on the fast path. */
struct vg__chunk {
    vg_devptr_t base;
    uint64_t bytes;
    int cls;
    uint32_t arena;        /* the arena whose class holds it */
    uint32_t carved;       /* blocks handed out fresh so far */
    uint32_t live;         /* blocks outside the class's lists */
    uint64_t idle_since;   /* coarse ns: made, or the last free to reach it */
    vg__chunk_t *prev, *next;
};

/* One block as the cache hands it out and takes it back. */
typedef struct vg__block {
    vg_devptr_t ptr;
    vg__chunk_t *chunk;
} vg__block_t;

/* A driver allocation the caller must free (and uncharge). */
typedef struct vg__span {
    vg_devptr_t base;
    uint64_t bytes;
} vg__span_t;

typedef struct vg__block_stack {
    vg__block_t *v;
    uint32_t n, cap;
} vg__block_stack_t;

typedef struct vg__class {
    _Atomic int lock;       /* spinlock: 0 free, 1 held */
    uint32_t size;          /* block bytes */
    uint32_t per_chunk;     /* blocks in one chunk */
    uint64_t chunk_bytes;
    vg__chunk_t *chunks;    /* every chunk of the class (doubly linked) */
    vg__chunk_t *carve;     /* the chunk with never-used blocks, or NULL */
    vg__block_stack_t ready;   /* freed and synchronised since: reusable */
    vg__block_stack_t pending; /* freed, not yet sealed */
    vg__block_stack_t sealed;  /* freed before sync epoch `sealed_epoch` */
    uint64_t sealed_epoch;
    uint32_t empty_chunks;  /* chunks with no block outside the class */
    /* Counters of requests served by the class itself (the thread caches
     * count their own), written under the lock. */
    uint64_t hits, allocs, frees, bytes_allocated;
    uint64_t live_blocks, live_bytes; /* requested bytes of live blocks */
} __attribute__((aligned(64))) vg__class_t;

typedef void (*vg__sync_fn)(void *ctx);

typedef struct vg__arena {
    vg__class_t cls[VG__CLASSES];
} vg__arena_t;

typedef struct vg__cache {
    vg__arena_t arena[VG__ARENAS_MAX];
    uint32_t arenas;        /* in use: arena[0, arenas) */
    _Atomic uint32_t next_arena; /* a new thread cache's, round robin */
    vg__sync_fn sync;
    void *sync_ctx;
    uint64_t id;            /* unique in the process: threads key on it */
    _Atomic uint64_t held;  /* bytes of every chunk */
    _Atomic uint64_t syncs;
    /* Sync epoch: syncs begun, and the highest-numbered one completed. */
    _Atomic uint64_t sync_started, sync_done;
    pthread_mutex_t tcaches_mu; /* the list below; never on the fast path */
    vg__tcache_t *tcaches;  /* every thread cache of this cache */
    _Atomic int doomed_lock;    /* spinlock for `doomed` */
    vg__chunk_t *doomed;    /* detached chunks the pool has yet to free */
} vg__cache_t;

/* Class cls of arena a, and the class that holds chunk ch. */
static inline vg__class_t *vg__class_at(vg__cache_t *c, uint32_t a, int cls)
{
    return &c->arena[a].cls[cls];
}
static inline vg__class_t *vg__class_of_chunk(vg__cache_t *c,
                                              const vg__chunk_t *ch)
{
    return vg__class_at(c, ch->arena, ch->cls);
}

/* The class of a request, or -1 when it is larger than VG__SMALL_MAX. */
int vg__class_of(size_t size);
/* The block size of class `cls` (0 <= cls < VG__CLASSES). */
uint32_t vg__class_size(int cls);
/* The bytes of a chunk of class `cls`. */
uint64_t vg__class_chunk_bytes(int cls);

/* Adds a chunk the caller allocated, charged and verified to the calling
 * thread's arena, and hands its first block out for `size` bytes. VG_ESYS when host memory runs out (the
 * caller still owns the chunk). */
int vg__cache_add_chunk(vg__cache_t *c, int cls, const vg__span_t *chunk,
                        size_t size, vg__block_t *out);
/* Another chunk that left the cache for the caller to free, into *release;
 * false when there is none. */
bool vg__cache_reap(vg__cache_t *c, vg__span_t *release);
/* Takes an empty chunk out of class k (under its lock): out of the class's
 * lists and the chunk index, and out of the cache's held bytes. The caller
 * frees the struct or dooms it. */
void vg__cache_chunk_detach(vg__cache_t *c, vg__class_t *k, vg__chunk_t *ch);

/* The class side of the thread caches (cache_thread.c). Unless said
 * otherwise, each call below is made under the class lock (vg__class_lock),
 * taken after the caller's thread cache lock, if any. */
static inline void vg__class_lock(vg__class_t *k) { vg__spin_lock(&k->lock); }
static inline void vg__class_unlock(vg__class_t *k)
{
    vg__spin_unlock(&k->lock);
}

/* keep_empty of a flush that never releases a chunk (trims decide). */
#define VG__KEEP_ALL UINT32_MAX

/* Where a flush puts chunks that empty beyond the class's allowance. */
typedef struct vg__flush_out {
    uint32_t keep_empty;
    vg__span_t *release; /* the first one, for the caller */
    bool released;
} vg__flush_out_t;

/* How a request that finds its class empty treats the class's pending
 * blocks. With many threads, magazines hold most of a chunk's blocks, and
 * a class's pending list may be a handful: synchronising for so few costs
 * a driver call every few pairs (measured: 1 sync per 78 pairs at 16
 * threads instead of 1 per 500), so such a request misses and the pool
 * grows a chunk instead, while the budget allows; near the limit it
 * reuses whatever is pending (VG__REUSE_ANY). */
typedef enum { VG__GROW_FIRST, VG__REUSE_ANY } vg__take_policy_t;

typedef enum {
    VG__FILL_OK,   /* the class has a ready or never-used block */
    VG__FILL_MISS, /* it has none, and too few pending to seal (policy) */
    VG__FILL_WAIT, /* its sealed blocks wait for a sync (*epoch) */
} vg__fill_t;
/* Makes sure class k has a ready or never-used block, sealing its pending
 * ones with the sync epoch if needed. On VG__FILL_WAIT the caller drops
 * its locks (the sync is a driver call), calls vg__cache_sync_after(c,
 * *epoch), retakes them and calls again: meanwhile the sealed list stays
 * in the class, so a trim may still release its chunks. */
vg__fill_t vg__class_fill(vg__cache_t *c, vg__class_t *k,
                          vg__take_policy_t policy, uint64_t *epoch);
/* Returns once a synchronisation begun after `epoch` was read has
 * completed (waits for one already begun, else runs one). No lock held. */
void vg__cache_sync_after(vg__cache_t *c, uint64_t epoch);
/* vg__cache_take and vg__cache_give through the class alone (its lock taken
 * inside): for a thread with no thread cache (no host memory, arena 0), a
 * request reusing another arena's blocks, a free into another arena. The
 * take reuses pending blocks however few (VG__REUSE_ANY). */
int vg__class_take(vg__cache_t *c, uint32_t arena, int cls, size_t size,
                   vg__block_t *out);
bool vg__class_give(vg__cache_t *c, const vg__block_t *b, size_t size,
                    vg__flush_out_t *o);

/* Blocks a magazine hands back to its class. */
typedef struct vg__batch {
    vg__block_t *v;
    uint32_t n;
    uint64_t since; /* coarse ns of the batch's first free */
} vg__batch_t;
/* Freed blocks onto k's pending list; each chunk they touch was last freed
 * into at b->since. Chunks that empty leave as vg__cache_give says (o). */
void vg__class_put_pending(vg__cache_t *c, vg__class_t *k,
                           const vg__batch_t *b, vg__flush_out_t *o);
/* Ready blocks (never handed out since they left) back onto k's ready
 * list: they need no synchronisation, and no chunk is released. */
void vg__class_put_ready(vg__cache_t *c, vg__class_t *k,
                         const vg__block_t *v, uint32_t n);
/* Fills v[n, cap) from class k (after vg__class_fill said VG__FILL_OK):
 * ready blocks first, then never-used ones, in the class's order. Returns
 * the new count. */
uint32_t vg__class_take_batch(vg__class_t *k, vg__block_t *v, uint32_t n,
                              uint32_t cap);

/* ------------------------------------------------------ cache_walk.c */

void vg__cache_init(vg__cache_t *c, vg__sync_fn sync, void *ctx);
/* Frees the cache's host memory and hands every chunk to `release` (the
 * pool is being destroyed: live blocks die with their chunks). Threads'
 * caches are detached (their threads free them later) and never touched
 * again. */
void vg__cache_drain(vg__cache_t *c, void (*release)(const vg__span_t *s,
                                                     void *ctx), void *ctx);
/* Detaches the best empty chunk to trim (the largest, then the longest
 * idle) into *release, emptying the threads' magazines first if no chunk
 * is empty otherwise. false when no chunk is empty. */
bool vg__cache_trim_one(vg__cache_t *c, vg__span_t *release);

/* Fork (vg__pool_prefork): takes every lock of the cache, so that no
 * other thread is inside one of its critical sections or an owner's fast
 * section when the process forks (a child would find it held forever),
 * and releases them in the parent or child. In order: the thread-cache
 * list mutex, each thread cache as a remote, each class, the doomed list. */
void vg__cache_prefork(vg__cache_t *c);
void vg__cache_postfork(vg__cache_t *c);
/* The same in the child, which first forgets the syncs begun by threads
 * that did not come along (they never complete there). */
void vg__cache_postfork_child(vg__cache_t *c);

typedef struct vg__cache_stats {
    uint64_t held, cached, live_bytes, live_blocks;
    uint64_t hits, allocs, frees, bytes_allocated, syncs; /* misses: the pool's */
} vg__cache_stats_t;
void vg__cache_stats(vg__cache_t *c, vg__cache_stats_t *s);

/* ---------------------------------------------------- cache_thread.c */

/* Each thread's cache in front of the classes: the fast path of the pool's
 * small blocks (see "Two levels" above). */

/* Hands out a block of class `cls` for a request of `size` bytes: from the
 * calling thread's magazine, else a batch from the class (ready, never used,
 * or pending ones after a synchronisation, if at least 1/8 of a chunk's
 * worth is pending). VG_ENOMEM when the class has none (a miss: the caller
 * adds a chunk, or calls vg__cache_take_any if the budget does not allow
 * one). Thread-safe. */
int vg__cache_take(vg__cache_t *c, int cls, size_t size, vg__block_t *out);
/* The same, synchronising for however few pending blocks there are, and
 * then from the other arenas' classes. */
int vg__cache_take_any(vg__cache_t *c, int cls, size_t size,
                       vg__block_t *out);
/* Takes a block back (`size` as it was taken), from any thread. When chunks
 * become empty and the class already keeps `keep_empty` empty chunks, they
 * leave the cache: the first into *release and true returned (the caller
 * frees it, then any more through vg__cache_reap). */
bool vg__cache_give(vg__cache_t *c, const vg__block_t *b, size_t size,
                    uint32_t keep_empty, vg__span_t *release);
/* The calling thread's arena in c (0 with no thread cache). */
uint32_t vg__tcache_arena(vg__cache_t *c);
/* Returns every thread's magazines to their classes (a request that would
 * otherwise grow past a budget). true if any block moved. */
bool vg__cache_collect(vg__cache_t *c);
/* The cache is being drained (vg__cache_drain): every thread cache leaves
 * it; the calling thread's own is freed at once, other threads free theirs
 * when they next look or exit. */
void vg__tcache_detach_all(vg__cache_t *c);
/* Adds every thread cache's counters to s and its live blocks of each
 * class to live[class] (for vg__cache_stats, with c->tcaches_mu held). */
void vg__tcache_sum(vg__cache_t *c, vg__cache_stats_t *s, uint64_t *live);
/* Every thread cache of c held as a remote, with c->tcaches_mu held (for
 * vg__cache_prefork), and released again. */
void vg__tcache_prefork(vg__cache_t *c);
void vg__tcache_postfork(vg__cache_t *c);

/* ----------------------------------------------------------- evict.c */

/* Evictable allocations of one pool (VG_ALLOC_EVICTABLE): the candidates,
 * their priority and when each was last used, behind one mutex (these are
 * large, rarely made allocations; the cache's fast path never comes here).
 *
 * Ownership: the ledger decides who frees an allocation. The evictor takes
 * the record out of the ledger under this set's mutex before it calls the
 * callback; a vg_pool_free that got there first owns it instead, and the
 * evictor skips it. An entry is freed by whoever owns its allocation, after
 * it is unlinked under the mutex. Lock order: set mutex, then ledger. */
typedef struct vg__evictable {
    vg_devptr_t ptr;
    uint64_t size;
    int priority;
    uint64_t touched; /* the set's tick when allocated or last touched */
    vg_evict_cb fn;
    void *user;
    bool linked;
    struct vg__evictable *prev, *next;
} vg__evictable_t;

typedef struct vg__evict_set {
    pthread_mutex_t mu;
    vg__evictable_t *head;
    uint64_t tick;
    _Atomic uint64_t bytes; /* of the linked entries */
} vg__evict_set_t;

/* Ledger records of a pool's evictable allocations carry their entry in
 * vg__alloc_t.handle with this bit set; a block of the cache carries its
 * chunk (bit clear); a plain direct allocation carries 0. */
#define VG__HANDLE_EVICTABLE 1ull

void vg__evict_init(vg__evict_set_t *s);
void vg__evict_fini(vg__evict_set_t *s); /* frees the entries left */
/* A new, not yet linked entry for an allocation made with `opts`. */
vg__evictable_t *vg__evict_new(const vg_alloc_opts_t *opts, vg_devptr_t ptr,
                               uint64_t size);
/* Makes an entry a candidate (after its ledger record exists). */
void vg__evict_link(vg__evict_set_t *s, vg__evictable_t *e);
/* The owner freed the allocation (its record is out of the ledger). */
void vg__evict_forget(vg__evict_set_t *s, vg__evictable_t *e);
/* Marks a live allocation of `owner` as used now. VG_ENOTFOUND when ptr is
 * not one; VG_OK (and nothing else) for a live non-evictable one. */
int vg__evict_touch(vg__evict_set_t *s, const void *owner, vg_devptr_t ptr);
/* Bytes eviction could give back now (a hint: it may change at once). */
uint64_t vg__evict_bytes(vg__evict_set_t *s);
/* Picks the victim (lowest priority, least recently used within it), takes
 * its record out of the ledger into *rec and returns its entry, which the
 * caller now owns. NULL when there is no candidate. */
vg__evictable_t *vg__evict_pick(vg__evict_set_t *s, const void *owner,
                                vg__alloc_t *rec);

/* ---------------------------------------------------------- chunks.c */

/* Which pool chunk holds an address, process-wide: the cache registers
 * each chunk it adds and unregisters it before it is freed. Lookups take a
 * read lock (none while no chunk exists); for rare paths only. */
typedef struct vg__chunk_ref {
    vg_devptr_t base;
    uint64_t bytes;
    uint32_t block;     /* the block size of the chunk's class */
    const void *owner;  /* the vg__cache_t (first member of its pool) */
} vg__chunk_ref_t;

/* VG_ESYS when there is no memory for the entry. */
int vg__chunk_index_add(const vg__chunk_ref_t *ref);
void vg__chunk_index_remove(vg_devptr_t base);
/* The chunk whose range holds ptr. */
bool vg__chunk_index_find(vg_devptr_t ptr, vg__chunk_ref_t *out);
/* Fork steps (fork.c, rank CHUNKS). */
void vg__chunks_prefork(void);
void vg__chunks_postfork_parent(void);
void vg__chunks_postfork_child(void);
/* The start of the block of `ref` that holds ptr. */
vg_devptr_t vg__chunk_block_of(const vg__chunk_ref_t *ref, vg_devptr_t ptr);

/* ------------------------------------------------------------ pool.c */

/* A pool (the public vg_pool_t). Its allocation path is pool.c; making
 * room for it (budgets, trimming, eviction, pressure), pool_room.c; its
 * reporting and the user's pressure callbacks, pool_info.c. */
#define VG__POOL_CALLBACKS 8 /* vg_pool_on_pressure's limit */

struct vg_pool {
    vg__cache_t cache; /* first: its classes are cache-line aligned */
    int device;
    CUdevice cudev;
    CUcontext ctx;
    vg__budget_t budget;
    vg__evict_set_t evict;
    /* Direct allocations (the cache counts its own blocks). */
    _Atomic uint64_t allocs, frees, bytes_allocated, live_bytes;
    _Atomic uint64_t trims, evictions;
    /* Small requests that needed the driver (a new chunk, or the direct
     * path): counted where that is known, after every reuse was tried, so
     * a request is a hit (the cache's counters) or a miss, never both. */
    _Atomic uint64_t misses;
    _Atomic int acting;   /* a pressure action is running: no nesting */
    /* A chunk failed its check (the driver does not report its range): no
     * chunk is asked for again, and small requests are refused (VG_EBADPTR)
     * before the cache is even looked at. Each try costs a chunk's charge,
     * a driver allocation and free, and an uncharge, on every request. */
    _Atomic bool chunks_refused;
    _Atomic bool closing; /* vg_pool_destroy has begun */
    pthread_mutex_t lock; /* the callback list; never held across calls out */
    vg_pool_t *fork_next; /* every pool, for fork (pool.c) */
    int callback_count;
    struct {
        vg_pressure_cb fn;
        void *user;
    } callbacks[VG__POOL_CALLBACKS];
};

/* Makes a pool's context current for a driver call and puts the caller's
 * back afterwards (skipping the switch when it is already current). */
typedef struct vg__ctx_guard {
    CUcontext prev;
    bool swapped;
} vg__ctx_guard_t;
void vg__pool_ctx_enter(const vg_pool_t *pool, vg__ctx_guard_t *g);
void vg__pool_ctx_leave(vg__ctx_guard_t *g);
/* A block for `size` bytes (1..VG__SMALL_MAX): a cached one, or the first
 * of a new chunk, trimming to make room (never evicting). Not recorded in
 * the ledger: the caller records it as the program's allocation. VG_ENOMEM
 * when no chunk fits the budgets. */
int vg__pool_block_take(vg_pool_t *pool, size_t size, vg__block_t *b);
/* Takes back a block of vg__pool_block_take, freed by the program. */
void vg__pool_block_give(vg_pool_t *pool, const vg__block_t *b, size_t size);
/* Fork steps (fork.c, rank POOLS): every pool's mutexes and its cache's
 * locks (vg__cache_prefork), pool by pool, and their release. */
void vg__pool_prefork(void);
void vg__pool_postfork_parent(void);
void vg__pool_postfork_child(void);

/* ------------------------------------------------------- pool_room.c */

/* The pool's budgets: the pool's own, then its device's (VRAMGUARD_BUDGET).
 * vg__pool_make_room reserves in both, all or nothing; a reservation is
 * committed once the driver has given the memory, or uncharged: rolled
 * back when it never was committed, released when it was. */
typedef enum { VG__MAY_TRIM, VG__MAY_TRIM_AND_EVICT } vg__room_policy_t;
/* Reserves n bytes in both budgets, trimming empty chunks and then (when
 * policy allows, and evicting everything evictable could make n fit)
 * evicting until they fit. VG_ENOMEM, with one refusal counted, when
 * nothing more can be given up. An eviction callback's own request never
 * evicts. */
int vg__pool_make_room(vg_pool_t *pool, uint64_t n, vg__room_policy_t policy);
void vg__pool_commit(vg_pool_t *pool, uint64_t n);
void vg__pool_uncharge(vg_pool_t *pool, uint64_t n, bool committed);
/* Would n fit both budgets now? */
bool vg__pool_fits(vg_pool_t *pool, uint64_t n);
/* Frees a span to the driver (in the pool's context) and releases its
 * committed charge. */
void vg__pool_release_span(vg_pool_t *pool, const vg__span_t *s);
/* Frees a direct allocation already taken out of the ledger, and counts it. */
void vg__pool_free_direct(vg_pool_t *pool, const vg__alloc_t *a);
/* Releases the best empty chunk; its bytes, 0 when none was empty. */
uint64_t vg__pool_trim_one(vg_pool_t *pool);
/* The pool's answer to rising pressure: trims at High, evicts at Critical,
 * until the level falls. One action at a time; a nested call returns. */
void vg__pool_act_on_pressure(vg_pool_t *pool);

/* ------------------------------------------------------- pool_info.c */

/* The level hook of every pool's budget: runs the user's callbacks, then
 * vg__pool_act_on_pressure when the level rose to High or above. */
void vg__pool_level_hook(void *owner, vg_pressure_t old_level,
                         vg_pressure_t new_level, void *user);

#endif /* VG_POOL_H */
