/*
 * pool_info.c — what a pool reports, and who it tells: vg_pool_available,
 * vg_pool_pressure, vg_pool_stats and vg_pool_explain, and the user's
 * pressure callbacks (vg_pool_on_pressure) with the budget's level hook that
 * runs them. The allocation path is in pool.c, the pressure action in
 * pool_room.c.
 *
 * Nothing here is on the alloc/free path. Counters are read relaxed: a
 * snapshot taken while other threads allocate is not atomic as a whole.
 * vg_pool_explain walks the ledger and asks the driver: slow by design.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "vg_account.h"
#include "vg_pool.h"

/* ---------------------------------------------------------- callbacks */

int vg_pool_on_pressure(vg_pool_t *pool, vg_pressure_cb cb, void *user)
{
    if (!pool || !cb)
        return VG_EINVAL;
    int rc = VG_OK;
    pthread_mutex_lock(&pool->lock);
    if (pool->callback_count == VG__POOL_CALLBACKS) {
        rc = VG_ENOMEM;
    } else {
        pool->callbacks[pool->callback_count].fn = cb;
        pool->callbacks[pool->callback_count].user = user;
        pool->callback_count++;
    }
    pthread_mutex_unlock(&pool->lock);
    return rc;
}

/* Runs the user's callbacks on a level change of the pool's budget (the
 * list is copied under the lock and called without it), then acts
 * (pool_room.c). */
void vg__pool_level_hook(void *owner, vg_pressure_t old_level,
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
    if (new_level > old_level && new_level >= VG_PRESSURE_HIGH)
        vg__pool_act_on_pressure(pool);
}

/* ------------------------------------------------------------ queries */

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

static uint64_t load(_Atomic uint64_t *v)
{
    return atomic_load_explicit(v, memory_order_relaxed);
}

int vg_pool_stats(vg_pool_t *pool, vg_pool_stats_t *stats)
{
    if (!pool || !stats)
        return VG_EINVAL;
    vg__cache_stats_t cs;
    vg__cache_stats(&pool->cache, &cs);
    vg_pool_stats_t s = {0};
    s.limit = load(&pool->budget.limit);
    s.used = load(&pool->budget.used);
    s.peak = load(&pool->budget.peak);
    s.refusals = load(&pool->budget.refusals);
    s.allocs = load(&pool->allocs) + cs.allocs;
    s.frees = load(&pool->frees) + cs.frees;
    s.live_count = s.allocs - s.frees;
    /* a pool hands out one kind; the array keeps the shape the shim fills */
    s.count_by_kind[VG_KIND_API] = s.allocs;
    s.bytes_by_kind[VG_KIND_API] = load(&pool->bytes_allocated) + cs.bytes_allocated;
    s.cached = cs.cached;
    s.live_bytes = load(&pool->live_bytes) + cs.live_bytes;
    s.hits = cs.hits;
    s.misses = load(&pool->misses);
    s.trims = load(&pool->trims);
    s.evictions = load(&pool->evictions);
    s.reuse_syncs = cs.syncs;
    s.fragmentation = s.used ? 1.0 - (double)s.live_bytes / (double)s.used : 0.0;
    *stats = s;
    return VG_OK;
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

/* The pool's newest live allocations, newest first (insertion into a
 * small sorted array; the ledger walk is the slow part). */
struct newest {
    vg_refusal_t *w;
    uint64_t seq[VG_EXPLAIN_RECENT];
};

static void keep_newest(const vg__alloc_t *a, void *ctx)
{
    struct newest *r = ctx;
    vg_refusal_t *w = r->w;
    int i = w->recent_count < VG_EXPLAIN_RECENT ? w->recent_count++
                                                : VG_EXPLAIN_RECENT - 1;
    if (i == VG_EXPLAIN_RECENT - 1 && w->recent_count == VG_EXPLAIN_RECENT &&
        r->seq[i] > a->seq)
        return;
    for (; i > 0 && r->seq[i - 1] < a->seq; i--) {
        r->seq[i] = r->seq[i - 1];
        w->recent[i] = w->recent[i - 1];
    }
    r->seq[i] = a->seq;
    w->recent[i].ptr = a->ptr;
    w->recent[i].size = a->size;
    memcpy(w->recent[i].tag, a->tag, VG__TAG_LEN);
}

static void copy_recent(vg_pool_t *pool, vg_refusal_t *why)
{
    struct newest r = {why, {0}};
    why->recent_count = 0;
    vg__ledger_foreach(pool, keep_newest, &r);
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
