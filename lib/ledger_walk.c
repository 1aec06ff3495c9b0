/*
 * ledger_walk.c — the rare walks over the whole ledger (vg_ledger.h has its
 * shards, ledger_front.c the threads' fronts): the freed records that
 * classify a pointer, the count of live ones, and foreach, which reports,
 * leak checks, pool destroy, context teardown and device stats use. None
 * is on the allocation path; each takes one shard lock at a time and calls
 * nothing outside with it held.
 */
#include <stdlib.h>

#include "vg_ledger.h"

#define VG__VISIT_CHUNK 32u /* records foreach copies per lock hold */

/* The bytes a freed record covered: from the driver's base to the end of
 * whichever is larger, the caller's range or the charged range. Compared
 * as offsets, never as ends: a range that reaches the top of the key space
 * (a handle key, bit 63 set) ends at 2^64, which as a sum wraps to 0 and
 * would contain nothing. */
static inline bool freed_contains(const vg__alloc_t *a, vg_devptr_t ptr)
{
    if (ptr == a->ptr)
        return true;
    if (ptr < a->base)
        return false;
    return ptr - a->base < a->charged || ptr < a->ptr || ptr - a->ptr < a->size;
}

/* The newest freed record matching ptr so far, exactly (at its pointer or
 * the driver's base) and by containment. */
typedef struct freed_best {
    vg__alloc_t exact, within;
    bool have_exact, have_within;
} freed_best_t;

static void keep_newest(vg__alloc_t *best, bool *have, const vg__alloc_t *a)
{
    if (!*have || a->seq > best->seq) {
        *best = *a;
        *have = true;
    }
}

typedef struct freed_look {
    freed_best_t *b;
    vg_devptr_t ptr;
} freed_look_t;

/* One freed record against ptr, into the best so far. */
static void consider_freed(const vg__alloc_t *a, void *ctx)
{
    freed_look_t *l = ctx;
    if (a->ptr == l->ptr || a->base == l->ptr)
        keep_newest(&l->b->exact, &l->b->have_exact, a);
    else if (freed_contains(a, l->ptr))
        keep_newest(&l->b->within, &l->b->have_within, a);
}

/* Rare path: one walk over every ring (a granule's records move between
 * shards when it changes hands, so any ring may hold them) and over the
 * threads' fronts' freed records. An exact match wins over containment;
 * among either, the newest (an address freed twice). */
int vg__ledger_find_freed(vg_devptr_t ptr, vg__alloc_t *out)
{
    freed_best_t b = {.have_exact = false, .have_within = false};
    freed_look_t look = {&b, ptr};
    for (unsigned i = 0; i < VG__SHARDS; i++) {
        vg__shard_t *s = vg__ledger_shard(i);
        vg__spin_lock(&s->lock);
        for (unsigned k = 0; k < s->ring_len; k++)
            consider_freed(&s->ring[k]->a, &look);
        vg__spin_unlock(&s->lock);
    }
    vg__fronts_each_freed(consider_freed, &look);
    if (!b.have_exact && !b.have_within)
        return VG_ENOTFOUND;
    if (out)
        *out = b.have_exact ? b.exact : b.within;
    return VG_OK;
}

uint64_t vg__ledger_count(void)
{
    uint64_t n = vg__fronts_live();
    for (unsigned i = 0; i < VG__SHARDS; i++)
        n += atomic_load_explicit(&vg__ledger_shard(i)->live, memory_order_relaxed);
    return n;
}

static inline bool owner_matches(const vg__alloc_t *a, const void *owner)
{
    return owner == VG__ANY_OWNER || a->owner == owner;
}

/* Copies the VG__VISIT_CHUNK (at most) first matching records of s
 * inserted after the one numbered *after and up to `last`, in insertion
 * order, and advances *after; sets *done when no more match. Under
 * s->lock: one pass over the table, keeping the chunk sorted by insert
 * number. */
static size_t copy_chunk(vg__shard_t *s, const void *owner, uint64_t last, uint64_t *after,
                         vg__alloc_t *buf, bool *done)
{
    const vg__rec_t *pick[VG__VISIT_CHUNK], *r;
    size_t n = 0;
    bool more = false;
    for (uint32_t i = 0; (r = vg__keymap_next(&s->table, &i));) {
        if (r->order <= *after || r->order > last || !owner_matches(&r->a, owner))
            continue;
        if (n == VG__VISIT_CHUNK) {
            more = true;
            if (r->order > pick[n - 1]->order)
                continue;
            n--; /* r displaces the latest of the chunk */
        }
        size_t j = n++;
        for (; j > 0 && pick[j - 1]->order > r->order; j--)
            pick[j] = pick[j - 1];
        pick[j] = r;
    }
    for (size_t k = 0; k < n; k++)
        buf[k] = pick[k]->a;
    if (n)
        *after = pick[n - 1]->order;
    *done = !more;
    return n;
}

/* Calls fn on each record of buf[0, n), with no lock held. */
static void visit_copies(const vg__alloc_t *buf, size_t n, vg__alloc_visit_fn fn, void *ctx)
{
    for (size_t i = 0; i < n; i++)
        fn(&buf[i], ctx);
}

/*
 * Visits a shard in chunks of a stack buffer, calling fn with no lock held
 * (fn may call back into the ledger, e.g. remove what it visits). Between
 * chunks the lock is dropped; the next chunk resumes after the last record
 * visited by insertion number, not by position (fn's removals would shift
 * positions and skip records), and stops at the last record inserted
 * before the first chunk. O(records) per chunk: the fallback of
 * visit_shard when there is no memory for its list.
 */
static void visit_shard_chunked(vg__shard_t *s, const void *owner,
                                vg__alloc_visit_fn fn, void *ctx)
{
    vg__alloc_t buf[VG__VISIT_CHUNK];
    uint64_t after = 0, last = UINT64_MAX;
    bool done = false;
    while (!done) {
        vg__spin_lock(&s->lock);
        if (last == UINT64_MAX)
            last = s->inserts;
        size_t n = copy_chunk(s, owner, last, &after, buf, &done);
        vg__spin_unlock(&s->lock);
        visit_copies(buf, n, fn, ctx);
    }
}

/* A record as the shard held it when the visit began. */
typedef struct listed {
    uint64_t order;
    vg_devptr_t ptr;
} listed_t;

static int by_order(const void *x, const void *y)
{
    uint64_t a = ((const listed_t *)x)->order, b = ((const listed_t *)y)->order;
    return (a > b) - (a < b);
}

/* The shard's matching records, keys and insert numbers in insertion
 * order, into a list of its own (*n of them); NULL when there is no memory
 * for it, or the shard grew past what was set aside meanwhile. */
static listed_t *list_shard(vg__shard_t *s, const void *owner, size_t *n)
{
    size_t cap = (size_t)atomic_load_explicit(&s->live, memory_order_relaxed) + 16;
    listed_t *list = malloc(cap * sizeof *list);
    if (!list)
        return NULL;
    const vg__rec_t *r;
    bool fits = true;
    *n = 0;
    vg__spin_lock(&s->lock);
    for (uint32_t i = 0; fits && (r = vg__keymap_next(&s->table, &i));) {
        if (!owner_matches(&r->a, owner))
            continue;
        if (!(fits = *n < cap))
            break;
        list[(*n)++] = (listed_t){r->order, r->a.ptr};
    }
    vg__spin_unlock(&s->lock);
    if (!fits) {
        free(list);
        return NULL;
    }
    qsort(list, *n, sizeof *list, by_order);
    return list;
}

/*
 * Visits a shard, calling fn with no lock held (fn may call back into the
 * ledger, e.g. remove what it visits), in insertion order: one pass lists
 * the records there at the start; then, a chunk at a time, each one still
 * live (found by its key, with the same insert number) is copied under
 * the lock and visited after it (vg__ledger_foreach's contract). A rare
 * path (reports, leak checks, destroy, stats): O(records log records),
 * where one pass per chunk, as the fallback does, would be quadratic.
 */
static void visit_shard(vg__shard_t *s, const void *owner,
                        vg__alloc_visit_fn fn, void *ctx)
{
    size_t n;
    listed_t *list = list_shard(s, owner, &n);
    if (!list) {
        visit_shard_chunked(s, owner, fn, ctx);
        return;
    }
    vg__alloc_t buf[VG__VISIT_CHUNK];
    for (size_t i = 0; i < n;) {
        size_t m = 0;
        vg__spin_lock(&s->lock);
        for (; i < n && m < VG__VISIT_CHUNK; i++) {
            const vg__rec_t *r = vg__keymap_get(&s->table, list[i].ptr);
            if (r && r->order == list[i].order)
                buf[m++] = r->a;
        }
        vg__spin_unlock(&s->lock);
        visit_copies(buf, m, fn, ctx);
    }
    free(list);
}

void vg__ledger_foreach(const void *owner, vg__alloc_visit_fn fn, void *ctx)
{
    if (!fn)
        return;
    vg__fronts_flush(); /* the threads' newest records, where the walk goes */
    for (unsigned i = 0; i < VG__SHARDS; i++)
        visit_shard(vg__ledger_shard(i), owner, fn, ctx);
    vg__fronts_visit(owner, fn, ctx); /* those no shard had host memory for */
}
