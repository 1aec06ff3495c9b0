/*
 * pool.c — the public pool API: budgeted allocation on one device.
 *
 * Every allocation is charged first to the pool's own budget, then to the
 * process budget of its device (VRAMGUARD_BUDGET), before the driver is
 * asked; a failure at any step rolls back what was charged, so a refused
 * request leaves nothing behind. Each pointer handed out is a real driver
 * allocation, verified with the driver's own pointer queries.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vg_internal.h"

#define POOL_CALLBACKS 8
#define DRIVER_ALIGN 256u /* cuMemAlloc guarantees at least this */

struct vg_pool {
    int device;
    CUdevice cudev;
    CUcontext ctx;
    vg__budget_t budget;
    _Atomic uint64_t allocs, frees;
    _Atomic uint64_t bytes_allocated;
    pthread_mutex_t lock; /* callbacks and the recent ring; never held across driver calls */
    int callback_count;
    struct {
        vg_pressure_cb fn;
        void *user;
    } callbacks[POOL_CALLBACKS];
    int recent_head, recent_count;
    struct {
        vg_devptr_t ptr;
        uint64_t size;
        char tag[VG__TAG_LEN];
    } recent[VG_EXPLAIN_RECENT];
};

void vg__pool_ctx_enter(const vg_pool_t *pool, vg__ctx_guard_t *g)
{
    const vg__driver_t *d = vg__driver();
    g->prev = NULL;
    d->cuCtxGetCurrent(&g->prev);
    g->swapped = g->prev != pool->ctx;
    if (g->swapped)
        d->cuCtxSetCurrent(pool->ctx);
}

void vg__pool_ctx_leave(vg__ctx_guard_t *g)
{
    if (g->swapped)
        vg__driver()->cuCtxSetCurrent(g->prev);
}

/* Runs the user's callbacks on a level change of the pool's budget. The
 * list is copied under the lock and called without it. */
static void pool_level_hook(void *owner, vg_pressure_t old_level,
                            vg_pressure_t new_level, void *user)
{
    vg_pool_t *pool = owner;
    (void)user;
    pthread_mutex_lock(&pool->lock);
    int n = pool->callback_count;
    __typeof__(pool->callbacks) cbs;
    memcpy(cbs, pool->callbacks, sizeof cbs);
    pthread_mutex_unlock(&pool->lock);
    for (int i = 0; i < n; i++)
        cbs[i].fn(pool, old_level, new_level, cbs[i].user);
}

int vg_pool_create(int device, uint64_t limit_bytes, vg_pool_t **pool)
{
    if (!pool || limit_bytes == 0)
        return VG_EINVAL;
    int count = 0;
    int rc = vg_device_count(&count);
    if (rc != VG_OK)
        return rc;
    if (device < 0 || device >= count)
        return VG_ENODEV;
    const vg__driver_t *d = vg__driver();
    vg_pool_t *p = calloc(1, sizeof *p);
    if (!p)
        return VG_ESYS;
    p->device = device;
    if (d->cuDeviceGet(&p->cudev, device) != CUDA_SUCCESS ||
        d->cuDevicePrimaryCtxRetain(&p->ctx, p->cudev) != CUDA_SUCCESS) {
        free(p);
        return VG_EDRIVER;
    }
    pthread_mutex_init(&p->lock, NULL);
    vg__budget_init(&p->budget, limit_bytes, p);
    vg__budget_on_level(&p->budget, pool_level_hook, NULL);
    *pool = p;
    return VG_OK;
}

/* Charges the pool, then the device budget; all or nothing. */
static int charge(vg_pool_t *pool, uint64_t n)
{
    if (vg__budget_reserve(&pool->budget, n) != VG_OK)
        return VG_ENOMEM;
    if (vg__budget_reserve(vg__engine_budget(pool->device), n) != VG_OK) {
        vg__budget_rollback(&pool->budget, n);
        return VG_ENOMEM;
    }
    return VG_OK;
}

static void uncharge(vg_pool_t *pool, uint64_t n, bool committed)
{
    vg__budget_t *dev = vg__engine_budget(pool->device);
    if (committed) {
        vg__budget_release(dev, n);
        vg__budget_release(&pool->budget, n);
    } else {
        vg__budget_rollback(dev, n);
        vg__budget_rollback(&pool->budget, n);
    }
}

/* The driver must confirm device memory covering [ptr, ptr + size). */
static bool verify_device_range(const vg__driver_t *d, CUdeviceptr ptr,
                                uint64_t size)
{
    unsigned int type = 0;
    CUdeviceptr base = 0;
    size_t range = 0;
    if (ptr == 0)
        return false;
    if (d->cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
                                 ptr) != CUDA_SUCCESS ||
        type != CU_MEMORYTYPE_DEVICE)
        return false;
    if (d->cuMemGetAddressRange_v2(&base, &range, ptr) != CUDA_SUCCESS)
        return false;
    return base <= ptr && ptr - base + size <= range;
}

static int check_alloc_args(const vg_pool_t *pool, size_t size,
                            const vg_alloc_opts_t *opts, vg_devptr_t *ptr)
{
    if (!pool || !ptr || size == 0)
        return VG_EINVAL;
    size_t align = opts ? opts->align : 0;
    if (align && (align < DRIVER_ALIGN || (align & (align - 1)) != 0))
        return VG_EINVAL;
    /* over-allocation for alignment must not wrap */
    if (align > DRIVER_ALIGN && size > SIZE_MAX - align)
        return VG_EINVAL;
    return VG_OK;
}

static void remember(vg_pool_t *pool, const vg__alloc_t *a)
{
    pthread_mutex_lock(&pool->lock);
    int i = pool->recent_head;
    pool->recent[i].ptr = a->ptr;
    pool->recent[i].size = a->size;
    memcpy(pool->recent[i].tag, a->tag, VG__TAG_LEN);
    pool->recent_head = (i + 1) % VG_EXPLAIN_RECENT;
    if (pool->recent_count < VG_EXPLAIN_RECENT)
        pool->recent_count++;
    pthread_mutex_unlock(&pool->lock);
}

/* Asks the driver for `a->charged` bytes and fills in base and ptr. Runs
 * with the pool's context current; frees what it got on any failure. */
static int driver_alloc(vg_pool_t *pool, const vg_alloc_opts_t *opts,
                        vg__alloc_t *a)
{
    const vg__driver_t *d = vg__driver();
    CUdeviceptr base = 0;
    size_t align = opts ? opts->align : 0;
    CUresult cr = d->cuMemAlloc_v2(&base, a->charged);
    if (cr != CUDA_SUCCESS)
        return cr == CUDA_ERROR_OUT_OF_MEMORY ? VG_ENOMEM : VG_EDRIVER;
    a->base = base;
    a->ptr = align > DRIVER_ALIGN ? (base + align - 1) & ~(CUdeviceptr)(align - 1)
                                  : base;
    int rc = VG_OK;
    if (!verify_device_range(d, a->ptr, a->size))
        rc = VG_EBADPTR;
    else if (opts && (opts->flags & VG_ALLOC_ZERO) &&
             d->cuMemsetD8_v2(a->ptr, 0, a->size) != CUDA_SUCCESS)
        rc = VG_EDRIVER;
    if (rc != VG_OK)
        d->cuMemFree_v2(base);
    (void)pool;
    return rc;
}

int vg_pool_alloc(vg_pool_t *pool, size_t size, const vg_alloc_opts_t *opts,
                  vg_devptr_t *ptr)
{
    int rc = check_alloc_args(pool, size, opts, ptr);
    if (rc != VG_OK)
        return rc;
    size_t align = opts ? opts->align : 0;
    vg__alloc_t a = {
        .size = size,
        .charged = size + (align > DRIVER_ALIGN ? align - DRIVER_ALIGN : 0),
        .owner = pool,
        .device = (int16_t)pool->device,
        .kind = VG_KIND_API,
    };
    if ((rc = charge(pool, a.charged)) != VG_OK)
        return rc;
    vg__ctx_guard_t g;
    vg__pool_ctx_enter(pool, &g);
    rc = driver_alloc(pool, opts, &a);
    vg__pool_ctx_leave(&g);
    if (rc != VG_OK) {
        uncharge(pool, a.charged, false);
        return rc;
    }
    vg__budget_commit(vg__engine_budget(pool->device), a.charged);
    vg__budget_commit(&pool->budget, a.charged);
    a.time_ns = vg__now_ns();
    a.seq = vg__ledger_next_seq();
    a.tid = vg__tid();
    if (opts && opts->tag)
        snprintf(a.tag, sizeof a.tag, "%s", opts->tag);
    vg__ledger_insert(&a);
    remember(pool, &a);
    atomic_fetch_add_explicit(&pool->allocs, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&pool->bytes_allocated, a.size, memory_order_relaxed);
    *ptr = a.ptr;
    return VG_OK;
}

/* Frees a record already taken out of the ledger. */
static void free_record(vg_pool_t *pool, const vg__alloc_t *a)
{
    vg__ctx_guard_t g;
    vg__pool_ctx_enter(pool, &g);
    vg__driver()->cuMemFree_v2(a->base);
    vg__pool_ctx_leave(&g);
    uncharge(pool, a->charged, true);
    atomic_fetch_add_explicit(&pool->frees, 1, memory_order_relaxed);
}

int vg_pool_free(vg_pool_t *pool, vg_devptr_t ptr)
{
    vg__alloc_t a;
    if (!pool)
        return VG_EINVAL;
    if (vg__ledger_remove(ptr, pool, &a) != VG_OK)
        return VG_ENOTFOUND;
    free_record(pool, &a);
    return VG_OK;
}

struct destroy_ctx {
    vg_pool_t *pool;
    vg_leak_report_t leaks;
};

static void destroy_one(const vg__alloc_t *a, void *ctx)
{
    struct destroy_ctx *dc = ctx;
    vg__alloc_t taken;
    if (vg__ledger_remove(a->ptr, dc->pool, &taken) != VG_OK)
        return; /* freed concurrently: not a leak */
    dc->leaks.count++;
    dc->leaks.bytes += taken.size;
    free_record(dc->pool, &taken);
}

int vg_pool_destroy(vg_pool_t *pool, vg_leak_report_t *leaks)
{
    if (!pool) {
        if (leaks)
            *leaks = (vg_leak_report_t){0};
        return VG_OK;
    }
    struct destroy_ctx dc = {.pool = pool};
    vg__ledger_foreach(pool, destroy_one, &dc);
    vg__driver()->cuDevicePrimaryCtxRelease_v2(pool->cudev);
    pthread_mutex_destroy(&pool->lock);
    free(pool);
    if (leaks)
        *leaks = dc.leaks;
    return VG_OK;
}

int vg_pool_available(vg_pool_t *pool, uint64_t *bytes)
{
    if (!pool || !bytes)
        return VG_EINVAL;
    uint64_t mine = vg__budget_available(&pool->budget);
    uint64_t dev = vg__budget_available(vg__engine_budget(pool->device));
    *bytes = mine < dev ? mine : dev;
    return VG_OK;
}

vg_pressure_t vg_pool_pressure(vg_pool_t *pool)
{
    return pool ? vg__budget_level(&pool->budget) : VG_PRESSURE_LOW;
}

int vg_pool_stats(vg_pool_t *pool, vg_pool_stats_t *stats)
{
    if (!pool || !stats)
        return VG_EINVAL;
    vg_pool_stats_t s = {0};
    s.limit = atomic_load_explicit(&pool->budget.limit, memory_order_relaxed);
    s.used = atomic_load_explicit(&pool->budget.used, memory_order_relaxed);
    s.peak = atomic_load_explicit(&pool->budget.peak, memory_order_relaxed);
    s.refusals = atomic_load_explicit(&pool->budget.refusals, memory_order_relaxed);
    s.allocs = atomic_load_explicit(&pool->allocs, memory_order_relaxed);
    s.frees = atomic_load_explicit(&pool->frees, memory_order_relaxed);
    s.live_count = s.allocs - s.frees;
    /* a pool hands out one kind; the array keeps the shape the shim fills */
    s.count_by_kind[VG_KIND_API] = s.allocs;
    s.bytes_by_kind[VG_KIND_API] =
        atomic_load_explicit(&pool->bytes_allocated, memory_order_relaxed);
    *stats = s;
    return VG_OK;
}

int vg_pool_on_pressure(vg_pool_t *pool, vg_pressure_cb cb, void *user)
{
    if (!pool || !cb)
        return VG_EINVAL;
    int rc = VG_OK;
    pthread_mutex_lock(&pool->lock);
    if (pool->callback_count == POOL_CALLBACKS) {
        rc = VG_ENOMEM;
    } else {
        pool->callbacks[pool->callback_count].fn = cb;
        pool->callbacks[pool->callback_count].user = user;
        pool->callback_count++;
    }
    pthread_mutex_unlock(&pool->lock);
    return rc;
}

static uint64_t driver_free_bytes(vg_pool_t *pool)
{
    size_t free_b = 0, total_b = 0;
    vg__ctx_guard_t g;
    vg__pool_ctx_enter(pool, &g);
    vg__driver()->cuMemGetInfo_v2(&free_b, &total_b);
    vg__pool_ctx_leave(&g);
    return free_b;
}

static void copy_recent(vg_pool_t *pool, vg_refusal_t *why)
{
    pthread_mutex_lock(&pool->lock);
    why->recent_count = pool->recent_count;
    for (int k = 0; k < pool->recent_count; k++) {
        int i = (pool->recent_head - 1 - k + VG_EXPLAIN_RECENT) % VG_EXPLAIN_RECENT;
        why->recent[k].ptr = pool->recent[i].ptr;
        why->recent[k].size = pool->recent[i].size;
        memcpy(why->recent[k].tag, pool->recent[i].tag, VG__TAG_LEN);
    }
    pthread_mutex_unlock(&pool->lock);
}

static void explain_line(const vg_refusal_t *w, uint64_t dev_avail, char *buf,
                         size_t len)
{
    char req[32], used[32], lim[32], drv[32], dev[32];
    vg__fmt_bytes(w->requested, req, sizeof req);
    vg__fmt_bytes(w->used, used, sizeof used);
    vg__fmt_bytes(w->limit, lim, sizeof lim);
    vg__fmt_bytes(w->driver_free, drv, sizeof drv);
    bool pool_ok = w->used <= w->limit && w->requested <= w->limit - w->used;
    const char *verdict = !pool_ok ? "refused: over the pool limit"
                        : w->requested > dev_avail ? "refused: over the device budget"
                        : w->requested > w->driver_free ? "refused: the device is out of memory"
                        : "fits";
    snprintf(buf, len, "request of %s %s (pool uses %s of %s; device budget has %s "
             "left; driver free %s)", req, verdict, used, lim,
             dev_avail == VG__UNLIMITED ? "no limit" : vg__fmt_bytes(dev_avail, dev, sizeof dev),
             drv);
}

int vg_pool_explain(vg_pool_t *pool, uint64_t requested, vg_refusal_t *why,
                    char *buf, size_t buflen)
{
    if (!pool || !why)
        return VG_EINVAL;
    vg_refusal_t w = {.requested = requested};
    w.limit = atomic_load_explicit(&pool->budget.limit, memory_order_relaxed);
    w.used = atomic_load_explicit(&pool->budget.used, memory_order_relaxed);
    w.driver_free = driver_free_bytes(pool);
    copy_recent(pool, &w);
    if (buf && buflen)
        explain_line(&w, vg__budget_available(vg__engine_budget(pool->device)),
                     buf, buflen);
    *why = w;
    return VG_OK;
}
