/*
 * cache_walk.c — the cache as a whole: setting it up and draining it, its
 * fork steps, trimming (the best empty chunk of any class) and its
 * statistics. Each walks every class of every arena, taking one class
 * lock at a time (the fork steps take them all, in order).
 *
 * Slow paths only: a pool's creation and destruction, fork, a trim, a
 * stats call. The classes themselves, the chunks in them and the path of
 * a block are cache.c's; the thread caches, cache_thread.c's.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vg_pool.h"

/* Every class of every arena in use, for i in [0, arenas * VG__CLASSES). */
static vg__class_t *class_nth(vg__cache_t *c, uint32_t i)
{
    return vg__class_at(c, i / VG__CLASSES, (int)(i % VG__CLASSES));
}

/* ------------------------------------------------------------ life */

static _Atomic uint64_t cache_ids;

/* One arena a CPU: more threads than CPUs cannot all run at once. */
static uint32_t arena_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > (long)VG__ARENAS_MAX ? VG__ARENAS_MAX : (uint32_t)n;
}

void vg__cache_init(vg__cache_t *c, vg__sync_fn sync, void *ctx)
{
    memset(c, 0, sizeof *c);
    c->arenas = arena_count();
    for (uint32_t a = 0; a < VG__ARENAS_MAX; a++)
        for (int i = 0; i < VG__CLASSES; i++) {
            vg__class_t *k = vg__class_at(c, a, i);
            atomic_init(&k->lock, 0);
            k->size = vg__class_size(i);
            k->chunk_bytes = vg__class_chunk_bytes(i);
            k->per_chunk = (uint32_t)(k->chunk_bytes / k->size);
        }
    atomic_init(&c->next_arena, 0);
    c->sync = sync;
    c->sync_ctx = ctx;
    c->id = atomic_fetch_add_explicit(&cache_ids, 1, memory_order_relaxed) + 1;
    atomic_init(&c->held, 0);
    atomic_init(&c->syncs, 0);
    atomic_init(&c->sync_started, 0);
    atomic_init(&c->sync_done, 0);
    atomic_init(&c->doomed_lock, 0);
    pthread_mutex_init(&c->tcaches_mu, NULL);
}

void vg__cache_drain(vg__cache_t *c,
                     void (*release)(const vg__span_t *s, void *ctx),
                     void *ctx)
{
    vg__tcache_detach_all(c);
    for (uint32_t i = 0; i < c->arenas * VG__CLASSES; i++) {
        vg__class_t *k = class_nth(c, i);
        vg__class_lock(k);
        vg__chunk_t *ch = k->chunks;
        k->chunks = k->carve = NULL;
        free(k->ready.v);
        free(k->pending.v);
        free(k->sealed.v);
        k->ready = k->pending = k->sealed = (vg__block_stack_t){0};
        vg__class_unlock(k);
        while (ch) {
            vg__chunk_t *next = ch->next;
            vg__span_t s = {ch->base, ch->bytes};
            vg__chunk_index_remove(ch->base);
            atomic_fetch_sub_explicit(&c->held, ch->bytes,
                                      memory_order_relaxed);
            release(&s, ctx);
            free(ch);
            ch = next;
        }
    }
    vg__span_t s;
    while (vg__cache_reap(c, &s))
        release(&s, ctx);
    pthread_mutex_destroy(&c->tcaches_mu);
}

/* Fork (pool.c's step): in the cache's lock order, list mutex, thread
 * caches, classes, then the doomed list (taken under a class lock). */
void vg__cache_prefork(vg__cache_t *c)
{
    pthread_mutex_lock(&c->tcaches_mu);
    vg__tcache_prefork(c);
    for (uint32_t i = 0; i < c->arenas * VG__CLASSES; i++)
        vg__class_lock(class_nth(c, i));
    vg__spin_lock(&c->doomed_lock);
}

/* A sync another thread had begun ends with the fork: it will never be
 * done in the child, where a request waiting for it (every seal after it
 * began) would wait forever. Those numbers are given back, so the next
 * waiter starts a real one: a seal's epoch stays below every sync begun
 * from here on, so each still begins after the frees it covers. */
void vg__cache_postfork_child(vg__cache_t *c)
{
    atomic_store_explicit(&c->sync_started,
                          atomic_load_explicit(&c->sync_done, memory_order_relaxed),
                          memory_order_relaxed);
    vg__cache_postfork(c);
}

void vg__cache_postfork(vg__cache_t *c)
{
    vg__spin_unlock(&c->doomed_lock);
    for (uint32_t i = c->arenas * VG__CLASSES; i-- > 0;)
        vg__class_unlock(class_nth(c, i));
    vg__tcache_postfork(c);
    pthread_mutex_unlock(&c->tcaches_mu);
}

/* ------------------------------------------------------------ trim */

typedef struct trim_pick {
    vg__class_t *cls;
    vg__chunk_t *chunk;
    uint64_t bytes, idle_since;
} trim_pick_t;

/* Larger first, then idle longer. */
static bool better(const vg__chunk_t *ch, const trim_pick_t *p)
{
    if (!p->chunk)
        return true;
    if (ch->bytes != p->bytes)
        return ch->bytes > p->bytes;
    return ch->idle_since < p->idle_since;
}

/* The best empty chunk of class k (under its lock) into p. */
static void scan_class(vg__class_t *k, trim_pick_t *p)
{
    if (k->empty_chunks == 0)
        return;
    for (vg__chunk_t *ch = k->chunks; ch; ch = ch->next)
        if (ch->live == 0 && better(ch, p))
            *p = (trim_pick_t){k, ch, ch->bytes, ch->idle_since};
}

/*
 * Two passes: find the best candidate class by class (each lock held
 * briefly), then detach it if it is still there and still empty. Another
 * thread may have taken a block from it meanwhile; then look again (a few
 * times, then report nothing rather than spin against a busy pool).
 */
static bool trim_empty(vg__cache_t *c, vg__span_t *release)
{
    for (int attempt = 0; attempt < 8; attempt++) {
        trim_pick_t p = {0};
        for (uint32_t i = 0; i < c->arenas * VG__CLASSES; i++) {
            vg__class_t *k = class_nth(c, i);
            vg__class_lock(k);
            scan_class(k, &p);
            vg__class_unlock(k);
        }
        if (!p.chunk)
            return false;
        vg__class_t *k = p.cls;
        vg__chunk_t *found = NULL;
        vg__class_lock(k);
        for (vg__chunk_t *ch = k->chunks; ch; ch = ch->next)
            if (ch == p.chunk && ch->live == 0) {
                vg__cache_chunk_detach(c, k, ch);
                found = ch;
                break;
            }
        vg__class_unlock(k);
        if (found) {
            *release = (vg__span_t){found->base, found->bytes};
            free(found);
            return true;
        }
    }
    return false;
}

bool vg__cache_trim_one(vg__cache_t *c, vg__span_t *release)
{
    if (vg__cache_reap(c, release) || trim_empty(c, release))
        return true;
    /* Blocks parked in magazines keep their chunks non-empty. */
    return vg__cache_collect(c) && trim_empty(c, release);
}

/* ------------------------------------------------------------ stats */

/* Sums the classes and every thread cache (dead threads' included: their
 * counters are history). Under the list mutex, so no thread cache comes or
 * goes meanwhile. */
void vg__cache_stats(vg__cache_t *c, vg__cache_stats_t *s)
{
    *s = (vg__cache_stats_t){0};
    uint64_t live[VG__CLASSES] = {0}; /* live blocks per class */
    pthread_mutex_lock(&c->tcaches_mu);
    for (uint32_t j = 0; j < c->arenas * VG__CLASSES; j++) {
        int i = (int)(j % VG__CLASSES);
        vg__class_t *k = class_nth(c, j);
        vg__class_lock(k);
        s->live_bytes += k->live_bytes;
        s->hits += k->hits;
        s->allocs += k->allocs;
        s->frees += k->frees;
        s->bytes_allocated += k->bytes_allocated;
        live[i] += k->live_blocks;
        vg__class_unlock(k);
    }
    vg__tcache_sum(c, s, live);
    pthread_mutex_unlock(&c->tcaches_mu);
    uint64_t handed = 0; /* class bytes of live blocks */
    for (int i = 0; i < VG__CLASSES; i++) {
        s->live_blocks += live[i];
        handed += live[i] * vg__class_size(i);
    }
    s->held = atomic_load_explicit(&c->held, memory_order_relaxed);
    s->cached = s->held > handed ? s->held - handed : 0;
    s->syncs = atomic_load_explicit(&c->syncs, memory_order_relaxed);
}
