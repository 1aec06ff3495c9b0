/*
 * account_pooled.c — VRAMGUARD_POOL=cache: small allocations intercepted in an
 * unmodified process are served from a pool, so a program that allocates
 * and frees in a loop stops paying the driver each time.
 *
 * One pool per device (the same pool.c/cache.c as the explicit API), made
 * on the device's first qualifying allocation, with no limit of its own:
 * its chunks are charged to the device budget like any allocation, so
 * cached memory counts as used. A block handed out is recorded in the
 * ledger as the program's allocation (its address, the size asked, kind
 * plain, `pooled` set, charged 0 because the chunk carries the charge), so
 * the audit log, leak report and pointer checks see what the program made.
 *
 * What qualifies: cuMemAlloc(_v2) of 1..VG__SMALL_MAX bytes while the
 * device's primary context is current (the pool's chunks live there; a
 * block from another context's allocation could not be used by this one).
 * Everything else takes the driver's path exactly as with the mode off.
 *
 * The path of a pooled request goes one way: the shim -> here (one driver
 * call: the current context, whose pool is this thread's last unless the
 * context changed) -> pool.c and cache.c (a cached block; on a miss a new
 * chunk, charged to the budgets in vg__pool_make_room alone, after the
 * pool released its empty chunks if it had to) -> the driver. When no chunk
 * fits, the request goes back to the shim, which takes the driver's path
 * for its exact size (vg__acct_reserve), told that the pool has nothing
 * left to give (ticket.pool_spent).
 *
 * Pressure: the device budget's level hook releases empty chunks while the
 * level is High or above, and any other request that does not fit trims
 * the pool before it is refused (vg__acct_reserve).
 */
#include <pthread.h>
#include <stdio.h>

#include "vg_account.h"
#include "vg_audit.h"
#include "vg_pool.h"
#include "vg_fork.h"


static _Atomic(vg_pool_t *) pools[VG__MAX_DEVICES];
static pthread_mutex_t pools_mu = PTHREAD_MUTEX_INITIALIZER;

/* A fork while a pool is being made waits for it, so the child never finds
 * the lock held (fork.c, rank POOLED_CREATE). */
void vg__account_pooled_prefork(void) { pthread_mutex_lock(&pools_mu); }
void vg__account_pooled_postfork_parent(void) { pthread_mutex_unlock(&pools_mu); }
void vg__account_pooled_postfork_child(void) { pthread_mutex_unlock(&pools_mu); }

/* The device budget rose to High or above: empty chunks go until it falls. */
static void on_level(void *owner, vg_pressure_t old_level, vg_pressure_t new_level, void *user)
{
    (void)owner;
    int device = (int)(intptr_t)user;
    if (new_level <= old_level || new_level < VG_PRESSURE_HIGH)
        return;
    vg_pool_t *pool = atomic_load_explicit(&pools[device], memory_order_acquire);
    const vg__budget_t *b = vg__engine_budget(device);
    while (pool && vg__budget_level(b) >= VG_PRESSURE_HIGH && vg__pool_trim_one(pool))
        ;
}

__attribute__((noinline, cold)) static vg_pool_t *pool_create(int device)
{
    vg__mutex_lock(&pools_mu, VG__RANK_POOLED_CREATE);
    vg_pool_t *pool = atomic_load_explicit(&pools[device], memory_order_relaxed);
    static bool watched[VG__MAX_DEVICES];
    if (!pool && vg_pool_create(device, VG__UNLIMITED, &pool) != VG_OK) {
        vg__log("VRAMGUARD_POOL=cache: no pool for device %d; its allocations go to the "
                "driver directly", device);
        pool = NULL;
    }
    if (pool && !watched[device])
        watched[device] = vg__budget_on_level(vg__engine_budget(device), on_level,
                                              (void *)(intptr_t)device) == VG_OK;
    atomic_store_explicit(&pools[device], pool, memory_order_release);
    vg__mutex_unlock(&pools_mu, VG__RANK_POOLED_CREATE);
    return pool;
}

/* Is the device's primary context already active? Making the pool retains
 * it, and a program that only uses contexts of its own (cuCtxCreate) must
 * not be given a primary context it never asked for (hundreds of MiB). */
static bool primary_active(int device)
{
    unsigned int flags = 0;
    int active = 0;
    return vg__driver()->cuDevicePrimaryCtxGetState((CUdevice)device, &flags, &active) ==
               CUDA_SUCCESS &&
           active;
}

/* The device whose pool served this thread last: the next request from the
 * same context then needs one driver call (cuCtxGetCurrent), not a second
 * to learn its device. Checked against the pool's context every time.
 * initial-exec, as vg__abuf_mine: a general-dynamic access from a shared
 * library may be a __tls_get_addr call on every pooled request. */
static _Thread_local int last_device __attribute__((tls_model("initial-exec")));

/* The pool of context cur's device, made on first use, if cur is the
 * device's primary context (the one its chunks live in). Out of line: once
 * per thread and device, and for requests under the program's own
 * contexts (then NULL). */
__attribute__((noinline)) static vg_pool_t *pool_of_context(CUcontext cur)
{
    CUdevice dev = 0;
    if (vg__driver()->cuCtxGetDevice(&dev) != CUDA_SUCCESS || dev < 0 ||
        dev >= VG__MAX_DEVICES)
        return NULL;
    int device = (int)dev;
    vg_pool_t *pool = atomic_load_explicit(&pools[device], memory_order_acquire);
    if (!pool && (!primary_active(device) || !(pool = pool_create(device))))
        return NULL;
    if (cur != pool->ctx)
        return NULL;
    last_device = device;
    return pool;
}

/* The pool of the calling thread's current context; NULL when it has none
 * (no context, or not a primary one). */
static inline vg_pool_t *pool_current(void)
{
    CUcontext cur = NULL;
    if (vg__driver()->cuCtxGetCurrent(&cur) != CUDA_SUCCESS || !cur)
        return NULL;
    vg_pool_t *pool = atomic_load_explicit(&pools[last_device], memory_order_acquire);
    if (vg__likely(pool && pool->ctx == cur))
        return pool;
    return pool_of_context(cur);
}

VG__HOT int vg__acct_pooled_alloc(vg__ticket_t *t, uint64_t *ptr)
{
    if (t->bytes == 0 || t->bytes > VG__SMALL_MAX || !ptr ||
        vg__unlikely(vg__engine_init() != VG_OK))
        return VG_ENOTFOUND;
    vg_pool_t *pool = pool_current();
    if (!pool)
        return VG_ENOTFOUND;
    t->device = pool->device;
    vg__block_t b;
    int rc = vg__pool_block_take(pool, (size_t)t->bytes, &b);
    if (vg__unlikely(rc != VG_OK)) {
        /* No chunk fits even with the pool's empty chunks released
         * (vg__pool_make_room): nothing is left for a refusal to trim. */
        t->pool_spent = rc == VG_ENOMEM;
        return VG_ENOTFOUND;
    }
    vg__alloc_t a = {
        .ptr = b.ptr,
        .base = b.ptr,
        .size = t->bytes,
        .handle = (uint64_t)(uintptr_t)b.chunk,
        .pooled = true,
    };
    if (vg__unlikely(vg__acct_record(t, &a) != VG_OK)) { /* not recorded: */
        if (vg__diag_on())
            vg__audit_free(&a, t->api, CUDA_SUCCESS); /* its alloc line is written */
        vg__pool_block_give(pool, &b, (size_t)t->bytes);
        return VG_ENOTFOUND; /* the driver's path tries, and refuses if it must */
    }
    *ptr = b.ptr;
    return VG_OK;
}

VG__HOT void vg__acct_pooled_free(const vg__alloc_t *a)
{
    vg_pool_t *pool = atomic_load_explicit(&pools[a->device], memory_order_acquire);
    vg__block_t b = {a->ptr, (vg__chunk_t *)(uintptr_t)a->handle};
    if (pool)
        vg__pool_block_give(pool, &b, (size_t)a->size);
}

/* Is this chunk owner one of cache mode's pools (not an explicit-API one)? */
static bool cache_mode_owns(const void *owner)
{
    for (int d = 0; d < VG__MAX_DEVICES; d++)
        if (owner == atomic_load_explicit(&pools[d], memory_order_acquire))
            return true;
    return false;
}

int vg__acct_pooled_find(vg_devptr_t ptr, vg__alloc_t *out)
{
    vg__chunk_ref_t ref;
    if (!vg__chunk_index_find(ptr, &ref))
        return VG_ENOTFOUND;
    vg_devptr_t block = vg__chunk_block_of(&ref, ptr);
    /* A live block says whose it is: only cache mode's records are pooled
     * (an explicit-API pool's block keeps the driver's view). */
    if (vg__ledger_find(block, out) == VG_OK) {
        if (!out->pooled)
            return VG_ENOTFOUND;
        return ptr - block < out->size ? VG_OK : VG_EBADPTR;
    }
    return cache_mode_owns(ref.owner) ? VG_EBADPTR : VG_ENOTFOUND;
}

bool vg__acct_pooled_trim(int device)
{
    if (device < 0 || device >= VG__MAX_DEVICES)
        return false;
    vg_pool_t *pool = atomic_load_explicit(&pools[device], memory_order_acquire);
    return pool && vg__pool_trim_one(pool) != 0;
}

/* Drops the ledger records of one device's pooled blocks. */
static void forget_block(const vg__alloc_t *a, void *ctx)
{
    int device = *(const int *)ctx;
    vg__alloc_t gone;
    if (a->pooled && a->device == device)
        vg__ledger_remove(a->ptr, NULL, &gone);
}

void vg__acct_pooled_reset(int device)
{
    if (device < 0 || device >= VG__MAX_DEVICES)
        return;
    vg__mutex_lock(&pools_mu, VG__RANK_POOLED_CREATE);
    vg_pool_t *pool = atomic_exchange_explicit(&pools[device], NULL, memory_order_acq_rel);
    vg__mutex_unlock(&pools_mu, VG__RANK_POOLED_CREATE);
    if (!pool)
        return;
    /* The program's blocks die with the context (as its other allocations
     * do); the chunks are freed and uncharged before the reset. */
    vg__ledger_foreach(NULL, forget_block, &device);
    vg_pool_destroy(pool, NULL);
}
