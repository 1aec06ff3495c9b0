/*
 * evict.c — the evictable allocations of a pool (VG_ALLOC_EVICTABLE): who
 * may be evicted, in what order, and who owns an allocation while it is
 * being evicted (rules in vg_pool.h).
 *
 * Order: lowest priority first; within a priority, least recently used
 * first, where "used" is the allocation itself or a vg_pool_touch (a tick
 * of this set, so the order is exact, not subject to clock resolution).
 * Picking a victim scans the candidates: O(n) in the pool's evictable
 * allocations, which are few and large (model weights, caches), and only
 * on a refusal or at Critical pressure.
 */
#include <stdlib.h>

#include "vg_pool.h"

void vg__evict_init(vg__evict_set_t *s)
{
    pthread_mutex_init(&s->mu, NULL);
    s->head = NULL;
    s->tick = 0;
    atomic_init(&s->bytes, 0);
}

uint64_t vg__evict_bytes(vg__evict_set_t *s)
{
    return atomic_load_explicit(&s->bytes, memory_order_relaxed);
}

void vg__evict_fini(vg__evict_set_t *s)
{
    vg__evictable_t *e = s->head;
    while (e) {
        vg__evictable_t *next = e->next;
        free(e);
        e = next;
    }
    s->head = NULL;
    pthread_mutex_destroy(&s->mu);
}

vg__evictable_t *vg__evict_new(const vg_alloc_opts_t *opts, vg_devptr_t ptr,
                               uint64_t size)
{
    vg__evictable_t *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->ptr = ptr;
    e->size = size;
    e->priority = opts->priority;
    e->fn = opts->evict;
    e->user = opts->evict_user;
    return e;
}

static void unlink_locked(vg__evict_set_t *s, vg__evictable_t *e)
{
    if (!e->linked)
        return;
    if (e->prev)
        e->prev->next = e->next;
    else
        s->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    e->prev = e->next = NULL;
    e->linked = false;
    atomic_fetch_sub_explicit(&s->bytes, e->size, memory_order_relaxed);
}

void vg__evict_link(vg__evict_set_t *s, vg__evictable_t *e)
{
    pthread_mutex_lock(&s->mu);
    e->touched = ++s->tick;
    e->prev = NULL;
    e->next = s->head;
    if (s->head)
        s->head->prev = e;
    s->head = e;
    e->linked = true;
    atomic_fetch_add_explicit(&s->bytes, e->size, memory_order_relaxed);
    pthread_mutex_unlock(&s->mu);
}

void vg__evict_forget(vg__evict_set_t *s, vg__evictable_t *e)
{
    pthread_mutex_lock(&s->mu);
    unlink_locked(s, e);
    pthread_mutex_unlock(&s->mu);
    free(e);
}

/* The record is live while we hold the mutex (whoever removes it must take
 * the mutex before freeing the entry), so the entry it names is alive. */
int vg__evict_touch(vg__evict_set_t *s, const void *owner, vg_devptr_t ptr)
{
    vg__alloc_t rec;
    int rc = VG_ENOTFOUND;
    pthread_mutex_lock(&s->mu);
    if (vg__ledger_find(ptr, &rec) == VG_OK && rec.owner == owner) {
        rc = VG_OK;
        if (rec.handle & VG__HANDLE_EVICTABLE) {
            vg__evictable_t *e =
                (vg__evictable_t *)(uintptr_t)(rec.handle & ~VG__HANDLE_EVICTABLE);
            if (e->linked)
                e->touched = ++s->tick;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static bool evicted_before(const vg__evictable_t *a, const vg__evictable_t *b)
{
    if (a->priority != b->priority)
        return a->priority < b->priority;
    return a->touched < b->touched;
}

/* An entry whose record is already gone was freed by its owner, who is
 * waiting for the mutex to unlink it: unlink it here and pick again. */
vg__evictable_t *vg__evict_pick(vg__evict_set_t *s, const void *owner,
                                vg__alloc_t *rec)
{
    vg__evictable_t *victim = NULL;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        vg__evictable_t *best = NULL;
        for (vg__evictable_t *e = s->head; e; e = e->next)
            if (!best || evicted_before(e, best))
                best = e;
        if (!best)
            break;
        unlink_locked(s, best);
        if (vg__ledger_remove(best->ptr, owner, rec) == VG_OK) {
            victim = best;
            break;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return victim;
}
