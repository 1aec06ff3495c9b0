/*
 * test_hostmem.c — when host memory runs out.
 *   - The pool's cache: a thread that cannot get a magazine is served by
 *     the class itself, as its frees already were. This binary replaces
 *     calloc (forwarding to glibc's) to make the magazine's allocation fail.
 *   - The shim: an allocation the ledger has no memory to record is freed
 *     and refused, its charge given back (tests/clients/client_hostmem.c
 *     replaces aligned_alloc the same way).
 *   - The ledger's walk with no memory for its list of a shard: it visits
 *     in chunks instead (malloc is replaced too).
 *   - The ledger's walk with no memory for a shard record of a thread's
 *     newest allocation (aligned_alloc is replaced too): it still visits
 *     it, where it stays, in the thread's front.
 * A sanitizer's allocator allows none of this, so sanitizer builds leave this
 * file out (Makefile).
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "clientrun.h"
#include "testutil.h"
#include "vg_ledger.h"
#include "vg_pool.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#error "test_hostmem replaces calloc and malloc: plain builds only"
#endif

/* While armed, calloc of a thread's 4 KiB magazine fails: its size lies
 * between 1 KiB (the 32 block pairs of 16 bytes) and 2 KiB, which no other
 * host allocation of the pool's fast path asks for (the ledger's slabs are
 * larger, and its tables grow in powers of two of 16-byte slots). */
static _Thread_local bool calloc_armed;
static _Atomic int calloc_refused;
void *__libc_calloc(size_t n, size_t size);

void *calloc(size_t n, size_t size)
{
    size_t bytes = n * size;
    if (calloc_armed && bytes > 1024 && bytes < 2048) {
        atomic_fetch_add(&calloc_refused, 1);
        return NULL;
    }
    return __libc_calloc(n, size);
}

/* While armed, every malloc of 1 KiB or more fails (the walk's list of a
 * shard of 200 records is 3.6 KiB). */
static _Thread_local bool malloc_armed;
static _Atomic int malloc_refused;
void *__libc_malloc(size_t size);

void *malloc(size_t size)
{
    if (malloc_armed && size >= 1024) {
        atomic_fetch_add(&malloc_refused, 1);
        return NULL;
    }
    return __libc_malloc(size);
}

/* While armed, every aligned_alloc of 1 KiB or more fails: the ledger's
 * slab of records (a thread's front, smaller, is made before arming). */
static _Thread_local bool aligned_armed;
static _Atomic int aligned_refused;
void *__libc_memalign(size_t align, size_t size);

void *aligned_alloc(size_t align, size_t size)
{
    if (aligned_armed && size >= 1024) {
        atomic_fetch_add(&aligned_refused, 1);
        return NULL;
    }
    return __libc_memalign(align, size);
}

struct step {
    vg_pool_t *pool;
    int rc_small, rc_4k;
};

/* A second thread: its thread cache exists (a 256-byte block made it), but
 * its 4 KiB magazine cannot be allocated. */
static void *second_thread(void *arg)
{
    struct step *s = arg;
    vg_devptr_t small = 0, block = 0;
    s->rc_small = vg_pool_alloc(s->pool, 256, NULL, &small);
    calloc_armed = true;
    s->rc_4k = vg_pool_alloc(s->pool, 4096, NULL, &block);
    calloc_armed = false;
    if (s->rc_4k == VG_OK)
        vg_pool_free(s->pool, block);
    if (s->rc_small == VG_OK)
        vg_pool_free(s->pool, small);
    return NULL;
}

/* One arena, a budget of two chunks: the main thread's 4 KiB block holds
 * one chunk (with never-used blocks left in it), the second thread's
 * 256-byte block the other. The second thread's 4 KiB request cannot grow
 * the pool, so only the class's blocks can serve it. */
Test(hostmem, a_pool_thread_without_a_magazine_takes_from_the_class)
{
    vg_pool_t *p = NULL;
    cr_assert_eq(vg_pool_create(0, 2 * VG__CHUNK_SMALL, &p), VG_OK);
    p->cache.arenas = 1;
    vg_devptr_t held = 0;
    cr_assert_eq(vg_pool_alloc(p, 4096, NULL, &held), VG_OK);
    struct step s = {.pool = p};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, second_thread, &s), 0);
    pthread_join(t, NULL);
    cr_assert_eq(s.rc_small, VG_OK);
    cr_expect_gt(atomic_load(&calloc_refused), 0, "no magazine allocation was refused");
    cr_expect_eq(s.rc_4k, VG_OK, "refused (%d) with never-used blocks in the class", (int)s.rc_4k);
    vg_pool_stats_t st;
    cr_assert_eq(vg_pool_stats(p, &st), VG_OK);
    cr_expect_leq(st.used, 2 * VG__CHUNK_SMALL);
    cr_expect_eq(vg_pool_free(p, held), VG_OK);
    vg_pool_destroy(p, NULL);
}

/* 300 allocations while the ledger cannot get a slab of records: the 63
 * its free list holds succeed, every later one is refused with
 * CUDA_ERROR_OUT_OF_MEMORY and undone at once, so once all are freed the
 * budget shows as much free as before and the driver holds nothing. (Kept
 * unrecorded, each held its charge for good, and its free was a "foreign"
 * pointer's.) `how`: client_hostmem's path argument (NULL: cuMemAlloc_v2). */
static void unrecorded_are_refused(const char *how)
{
    run_opts_t o = {.method = "hostmem", .path = "300", .chunk = how, .budget = "1GiB"};
    run_result_t r;
    run_client(&o, &r);
    cr_assert_eq(r.status, 0, "client_hostmem exited %d: %s", r.status, r.err);
    const char *l = line_for(r.out, "hostmem");
    cr_assert(l, "no result line: %s", r.out);
    cr_expect_gt(field(l, "refused_calls"), 0, "no slab was refused: the test proves nothing: %s", l);
    cr_expect_gt(field(l, "refused"), 0, "nothing was refused: %s", l);
    cr_expect_eq(field(l, "ok") + field(l, "refused"), 300, "%s", l);
    cr_expect_eq(field(l, "dangling"), 0, "a refusal left the caller a pointer: %s", l);
    cr_expect_eq(field(l, "other_rc"), 0, "%s", l);
    cr_expect_eq(field(l, "free_failed"), 0, "%s", l);
    cr_expect_eq(field(l, "free_after"), field(l, "free_before"), "a charge was kept: %s", l);
    cr_expect_eq(field(l, "live_after"), field(l, "live_before"), "device memory was kept: %s", l);
    cr_expect(strstr(r.err, "no host memory to record it"), "no refusal was said: %s", r.err);
}

Test(hostmem, an_allocation_the_ledger_cannot_record_is_freed_and_refused)
{
    unrecorded_are_refused(NULL);
}

Test(hostmem, a_vmm_handle_the_ledger_cannot_record_is_released_and_refused)
{
    unrecorded_are_refused("vmm");
}

Test(hostmem, a_pitched_allocation_the_ledger_cannot_record_is_freed_and_refused)
{
    unrecorded_are_refused("pitch");
}

Test(hostmem, an_array_the_ledger_cannot_record_is_destroyed_and_refused)
{
    unrecorded_are_refused("array");
}

Test(hostmem, an_async_allocation_the_ledger_cannot_record_is_freed_and_refused)
{
    unrecorded_are_refused("async");
}

/* The walk's fallback, in chunks: 200 records of one shard, inserted in a
 * scattered key order, are visited in insertion order, each once, while
 * the callback removes each one it visits (positions shift) and inserts
 * another (which must not be visited). */
#define WALK_N 200
#define WALK_BASE 0x7d0000000000ull

struct chunk_walk {
    uint64_t last_seq, visited;
    bool in_order, removed_all;
};

static vg__alloc_t walk_rec(vg_devptr_t ptr)
{
    vg__alloc_t a;
    memset(&a, 0, sizeof a);
    a.ptr = a.base = ptr;
    a.size = a.charged = 8;
    a.seq = vg__ledger_next_seq();
    return a;
}

static void visit_remove_insert(const vg__alloc_t *a, void *ctx)
{
    struct chunk_walk *w = ctx;
    w->in_order &= a->seq > w->last_seq;
    w->last_seq = a->seq;
    w->visited++;
    w->removed_all &= vg__ledger_remove(a->ptr, VG__ANY_OWNER, NULL) == VG_OK;
    vg__alloc_t fresh = walk_rec(WALK_BASE + (1ull << 32) + w->visited * 256);
    cr_assert_eq(vg__ledger_insert(&fresh), VG_OK);
}

Test(hostmem, a_ledger_walk_without_memory_for_its_list_visits_in_chunks)
{
    for (uint64_t i = 0; i < WALK_N; i++) {
        uint64_t k = (i * 2654435761u) % WALK_N; /* a permutation of 0..N-1 */
        vg__alloc_t a = walk_rec(WALK_BASE + (k + 1) * 256);
        cr_assert_eq(vg__ledger_insert(&a), VG_OK);
    }
    struct chunk_walk w = {.in_order = true, .removed_all = true};
    malloc_armed = true;
    vg__ledger_foreach(VG__ANY_OWNER, visit_remove_insert, &w);
    malloc_armed = false;
    cr_expect_gt(atomic_load(&malloc_refused), 0, "the list was made: the test proves nothing");
    cr_expect(w.in_order, "out of insertion order");
    cr_expect(w.removed_all, "a visited record was not there to remove");
    cr_expect_eq(w.visited, WALK_N, "visited %llu of %d", (unsigned long long)w.visited, WALK_N);
    cr_expect_eq(vg__ledger_count(), WALK_N, "the inserted ones are left");
}

/* A thread's newest plain allocation waits in its front (lib/ledger_front.c)
 * and a walk first moves it into a shard. With no host memory for the
 * shard's record it stays in the front, where lookups find it; the walk
 * must visit it there too (leak reports, sweeps and stats walk). */
#define FRONT_KEY 0x7d8000000000ull

static void count_front_key(const vg__alloc_t *a, void *ctx)
{
    *(int *)ctx += a->ptr == FRONT_KEY;
}

Test(hostmem, a_walk_visits_a_threads_newest_that_no_shard_had_memory_for)
{
    vg__alloc_t a = walk_rec(FRONT_KEY);
    a.kind = VG_KIND_PLAIN;
    cr_assert_eq(vg__ledger_insert_front(&a), VG_OK);
    cr_assert_eq(vg__fronts_live(), 1, "not in the front: the test proves nothing");
    int seen = 0;
    aligned_armed = true;
    vg__ledger_foreach(VG__ANY_OWNER, count_front_key, &seen);
    aligned_armed = false;
    cr_expect_gt(atomic_load(&aligned_refused), 0, "a shard had memory: the test proves nothing");
    cr_expect_eq(vg__fronts_live(), 1, "the record moved to a shard: the test proves nothing");
    cr_expect_eq(seen, 1, "the walk visited it %d times", seen);
    cr_expect_eq(vg__ledger_find(FRONT_KEY, NULL), VG_OK);
    cr_expect_eq(vg__ledger_remove(FRONT_KEY, VG__ANY_OWNER, NULL), VG_OK);
    cr_expect_eq(vg__ledger_count(), 0);
}
