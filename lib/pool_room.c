/*
 * pool_room.c — how a pool makes room: its two budgets (the pool's own,
 * then its device's), giving memory back to the driver, trimming empty
 * chunks, evicting, and the action on rising pressure. The allocation
 * path that asks for room, and the public API, are pool.c's.
 *
 * Making room, in order (vg__pool_make_room): trim empty chunks (largest,
 * least recently used first), then evict (evict.c), and only then refuse.
 * The pressure hook (pool_info.c, with the reporting and the user's
 * callbacks) acts too: at High it trims until the level falls, at Critical
 * it evicts until the level falls below Critical (vg__pool_act_on_pressure).
 *
 * Nothing here is on a cached block's fast path: it runs on a cache miss,
 * a direct allocation or free, a trim, and at rising pressure.
 */
#include <stdlib.h>

#include "vg_account.h"
#include "vg_pool.h"

/* Set while this thread runs an eviction callback: a request the callback
 * makes may trim, but never evicts (no eviction inside an eviction). */
static _Thread_local int in_evict_cb;

/* ------------------------------------------------------------ budgets */

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

void vg__pool_uncharge(vg_pool_t *pool, uint64_t n, bool committed)
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

void vg__pool_commit(vg_pool_t *pool, uint64_t n)
{
    vg__budget_commit(vg__engine_budget(pool->device), n);
    vg__budget_commit(&pool->budget, n);
}

/* A look, not a reserve: no refusal is counted for a request that trimming
 * or eviction then satisfies. */
bool vg__pool_fits(vg_pool_t *pool, uint64_t n)
{
    return n <= vg__budget_available(&pool->budget) &&
           n <= vg__budget_available(vg__engine_budget(pool->device));
}

/* ------------------------------------------------------- giving back */

void vg__pool_release_span(vg_pool_t *pool, const vg__span_t *s)
{
    vg__ctx_guard_t g;
    vg__pool_ctx_enter(pool, &g);
    vg__driver()->cuMemFree_v2(s->base);
    vg__pool_ctx_leave(&g);
    vg__pool_uncharge(pool, s->bytes, true);
}

void vg__pool_free_direct(vg_pool_t *pool, const vg__alloc_t *a)
{
    vg__span_t s = {a->base, a->charged};
    vg__pool_release_span(pool, &s);
    atomic_fetch_add_explicit(&pool->frees, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&pool->live_bytes, a->size, memory_order_relaxed);
}

uint64_t vg__pool_trim_one(vg_pool_t *pool)
{
    vg__span_t s;
    if (!vg__cache_trim_one(&pool->cache, &s))
        return 0;
    vg__pool_release_span(pool, &s);
    atomic_fetch_add_explicit(&pool->trims, 1, memory_order_relaxed);
    return s.bytes;
}

/* Evicts one allocation: the callback gives it up, then it is freed. */
static bool evict_one(vg_pool_t *pool)
{
    vg__alloc_t rec;
    if (in_evict_cb)
        return false;
    vg__evictable_t *e = vg__evict_pick(&pool->evict, pool, &rec);
    if (!e)
        return false;
    in_evict_cb++;
    e->fn(pool, e->ptr, (size_t)e->size, e->user);
    in_evict_cb--;
    free(e);
    vg__pool_free_direct(pool, &rec);
    atomic_fetch_add_explicit(&pool->evictions, 1, memory_order_relaxed);
    return true;
}

/* Could evicting everything evictable make n fit? Evicting is not undone,
 * so a request that cannot fit anyway evicts nothing. */
static bool eviction_could_help(vg_pool_t *pool, uint64_t n)
{
    uint64_t mine = vg__budget_available(&pool->budget);
    uint64_t dev = vg__budget_available(vg__engine_budget(pool->device));
    uint64_t avail = mine < dev ? mine : dev;
    return avail + vg__evict_bytes(&pool->evict) >= n;
}

int vg__pool_make_room(vg_pool_t *pool, uint64_t n, vg__room_policy_t policy)
{
    for (;;) {
        if (vg__pool_fits(pool, n) && charge(pool, n) == VG_OK)
            return VG_OK;
        if (vg__pool_trim_one(pool))
            continue;
        if (policy == VG__MAY_TRIM_AND_EVICT && eviction_could_help(pool, n) &&
            evict_one(pool))
            continue;
        return charge(pool, n);
    }
}

/* ------------------------------------------------------------ pressure */

/* Rising to High trims the cache until the level falls below High; at
 * Critical evictions follow until it falls below Critical. One action at a
 * time per pool: the releases it makes change the level again, and those
 * nested hooks only notify. */
void vg__pool_act_on_pressure(vg_pool_t *pool)
{
    int idle = 0;
    if (atomic_load_explicit(&pool->closing, memory_order_relaxed) ||
        !atomic_compare_exchange_strong_explicit(&pool->acting, &idle, 1,
                                                 memory_order_acquire,
                                                 memory_order_relaxed))
        return;
    while (vg__budget_level(&pool->budget) >= VG_PRESSURE_HIGH &&
           vg__pool_trim_one(pool))
        ;
    while (vg__budget_level(&pool->budget) == VG_PRESSURE_CRITICAL &&
           evict_one(pool))
        ;
    atomic_store_explicit(&pool->acting, 0, memory_order_release);
}
