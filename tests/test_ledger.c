/*
 * test_ledger.c — the process ledger: insert/find/remove, owner filters, the
 * bounded quarantine, foreach, concurrency and fork. Criterion runs each test
 * in its own process, so every test starts with an empty ledger.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "vg_budget.h"

static vg__alloc_t rec(vg_devptr_t ptr, uint64_t size, const void *owner)
{
    vg__alloc_t a;
    memset(&a, 0, sizeof a);
    a.ptr = ptr;
    a.base = ptr;
    a.size = size;
    a.charged = size;
    a.owner = owner;
    a.seq = vg__ledger_next_seq();
    a.kind = VG_KIND_PLAIN;
    a.device = 0;
    strcpy(a.tag, "test");
    return a;
}

Test(ledger, insert_find_remove)
{
    vg__alloc_t a = rec(0x7f0000001000, 4096, NULL), got;
    cr_assert_eq(vg__ledger_insert(&a), VG_OK);
    cr_assert_eq(vg__ledger_count(), 1);
    cr_assert_eq(vg__ledger_find(a.ptr, &got), VG_OK);
    cr_assert_eq(got.size, 4096);
    cr_assert_str_eq(got.tag, "test");
    cr_assert_eq(vg__ledger_find(a.ptr + 1, &got), VG_ENOTFOUND);
    memset(&got, 0, sizeof got);
    cr_assert_eq(vg__ledger_remove(a.ptr, VG__ANY_OWNER, &got), VG_OK);
    cr_assert_eq(got.seq, a.seq);
    cr_assert_eq(vg__ledger_count(), 0);
    cr_assert_eq(vg__ledger_find(a.ptr, NULL), VG_ENOTFOUND);
    cr_assert_eq(vg__ledger_remove(a.ptr, VG__ANY_OWNER, NULL), VG_ENOTFOUND);
}

Test(ledger, null_pointer_is_never_live)
{
    vg__alloc_t a = rec(0, 16, NULL);
    cr_assert_eq(vg__ledger_insert(&a), VG_EINVAL);
    cr_assert_eq(vg__ledger_find(0, NULL), VG_ENOTFOUND);
    cr_assert_eq(vg__ledger_remove(0, VG__ANY_OWNER, NULL), VG_ENOTFOUND);
    /* key 0 marks an empty table slot: never found, never counted */
    vg__alloc_t b = rec(0x1000, 16, NULL);
    cr_assert_eq(vg__ledger_insert(&b), VG_OK);
    cr_assert_eq(vg__ledger_find(0, NULL), VG_ENOTFOUND);
    cr_assert_eq(vg__ledger_count(), 1);
}

Test(ledger, duplicate_insert_keeps_the_old_record)
{
    vg__alloc_t a = rec(0x5000, 100, NULL), b = rec(0x5000, 200, NULL), got;
    cr_assert_eq(vg__ledger_insert(&a), VG_OK);
    cr_assert_eq(vg__ledger_insert(&b), VG_EINVAL);
    cr_assert_eq(vg__ledger_find(0x5000, &got), VG_OK);
    cr_assert_eq(got.size, 100);
    cr_assert_eq(vg__ledger_count(), 1);
}

Test(ledger, remove_with_owner_filter)
{
    int pool_a = 0, pool_b = 0;
    vg__alloc_t a = rec(0x9000, 64, &pool_a);
    cr_assert_eq(vg__ledger_insert(&a), VG_OK);
    cr_assert_eq(vg__ledger_remove(0x9000, &pool_b, NULL), VG_ENOTFOUND);
    cr_assert_eq(vg__ledger_remove(0x9000, NULL, NULL), VG_ENOTFOUND);
    cr_assert_eq(vg__ledger_count(), 1, "a refused remove keeps the record");
    cr_assert_eq(vg__ledger_remove(0x9000, &pool_a, NULL), VG_OK);
    cr_assert_eq(vg__ledger_count(), 0);
}

/* A sweep's remove takes a record only while it is the one it saw: the
 * address recorded anew (another allocation there) stays. */
Test(ledger, remove_by_sequence_number_leaves_a_newer_record)
{
    vg__alloc_t a = rec(0xa000, 64, NULL), b = rec(0xa000, 128, NULL), got;
    cr_assert_eq(vg__ledger_insert(&a), VG_OK);
    cr_assert_eq(vg__ledger_remove(0xa000, VG__ANY_OWNER, NULL), VG_OK);
    cr_assert_eq(vg__ledger_insert(&b), VG_OK);
    cr_assert_eq(vg__ledger_remove_seq(0xa000, a.seq, NULL), VG_ENOTFOUND);
    cr_assert_eq(vg__ledger_count(), 1, "the newer record stays");
    cr_assert_eq(vg__ledger_remove_seq(0xa000, b.seq, &got), VG_OK);
    cr_assert_eq(got.size, 128);
    cr_assert_eq(vg__ledger_count(), 0);
    cr_assert_eq(vg__ledger_remove_seq(0xa000, b.seq, NULL), VG_ENOTFOUND);
}

Test(ledger, sequence_numbers_start_at_one_and_increase)
{
    uint64_t a = vg__ledger_next_seq();
    uint64_t b = vg__ledger_next_seq();
    cr_assert_geq(a, 1);
    cr_assert_eq(b, a + 1);
}

Test(ledger, find_freed_exact_and_interior)
{
    vg__alloc_t a = rec(0x200000, 1 << 20, NULL), got;
    a.kind = VG_KIND_ASYNC;
    cr_assert_eq(vg__ledger_insert(&a), VG_OK);
    cr_assert_eq(vg__ledger_find_freed(0x200000, &got), VG_ENOTFOUND,
                 "live is not freed");
    cr_assert_eq(vg__ledger_remove(0x200000, VG__ANY_OWNER, NULL), VG_OK);
    cr_assert_eq(vg__ledger_find_freed(0x200000, &got), VG_OK);
    cr_assert_eq(got.ptr, 0x200000);
    cr_assert_eq(got.kind, VG_KIND_ASYNC);
    memset(&got, 0, sizeof got);
    cr_assert_eq(vg__ledger_find_freed(0x200000 + 12345, &got), VG_OK);
    cr_assert_eq(got.ptr, 0x200000);
    cr_assert_eq(got.size, 1 << 20);
    cr_assert_eq(vg__ledger_find_freed(0x200000 + (1 << 20), &got),
                 VG_ENOTFOUND, "one past the end is outside");
    cr_assert_eq(vg__ledger_find_freed(0x1ff000, &got), VG_ENOTFOUND);
}

/* A record whose range reaches the top of the 64-bit key space (handle
 * keys have bit 63 set) ends at 2^64: its interior is still freed, not a
 * range that wrapped to end at 0. */
Test(ledger, find_freed_contains_within_a_range_that_ends_at_the_top)
{
    const vg_devptr_t top = 0xffffffffffff0000ull;
    vg__alloc_t a = rec(top, 0x10000, NULL), got;
    cr_assert_eq(vg__ledger_insert(&a), VG_OK);
    cr_assert_eq(vg__ledger_remove(top, VG__ANY_OWNER, NULL), VG_OK);
    cr_assert_eq(vg__ledger_find_freed(top, &got), VG_OK);
    memset(&got, 0, sizeof got);
    cr_expect_eq(vg__ledger_find_freed(top + 0x8000, &got), VG_OK, "interior");
    cr_expect_eq(got.ptr, top);
    cr_expect_eq(vg__ledger_find_freed(UINT64_MAX, &got), VG_OK, "the last byte");
    cr_expect_eq(vg__ledger_find_freed(top - 1, NULL), VG_ENOTFOUND, "below the base");
}

Test(ledger, find_freed_returns_the_newest_of_a_reused_address)
{
    vg__alloc_t a = rec(0x400000, 100, NULL), got;
    cr_assert_eq(vg__ledger_insert(&a), VG_OK);
    cr_assert_eq(vg__ledger_remove(a.ptr, VG__ANY_OWNER, NULL), VG_OK);
    vg__alloc_t b = rec(0x400000, 300, NULL);
    cr_assert_eq(vg__ledger_insert(&b), VG_OK);
    cr_assert_eq(vg__ledger_remove(b.ptr, VG__ANY_OWNER, NULL), VG_OK);
    cr_assert_eq(vg__ledger_find_freed(0x400000, &got), VG_OK);
    cr_assert_eq(got.size, 300);
    cr_assert_eq(vg__ledger_find_freed(0x400000 + 200, &got), VG_OK);
    cr_assert_eq(got.seq, b.seq);
}

/* One thread's frees all go to its home shard: its quarantine holds
 * exactly the last VG__LEDGER_RING of them. */
Test(ledger, quarantine_is_bounded_and_old_entries_age_out)
{
    const vg_devptr_t base = 0x10000000;
    const uint64_t n = 3 * VG__LEDGER_RING;
    for (uint64_t i = 0; i < n; i++) {
        vg__alloc_t a = rec(base + i * 0x1000, 0x1000, NULL);
        cr_assert_eq(vg__ledger_insert(&a), VG_OK);
        cr_assert_eq(vg__ledger_remove(a.ptr, VG__ANY_OWNER, NULL), VG_OK);
    }
    cr_assert_eq(vg__ledger_find_freed(base, NULL), VG_ENOTFOUND,
                 "the oldest free aged out");
    cr_assert_eq(vg__ledger_find_freed(base + (n - 1) * 0x1000, NULL), VG_OK,
                 "the newest free is still quarantined");
    uint64_t found = 0;
    for (uint64_t i = 0; i < n; i++)
        found += vg__ledger_find_freed(base + i * 0x1000, NULL) == VG_OK;
    cr_assert_eq(found, VG__LEDGER_RING, "the last %u frees, no more", VG__LEDGER_RING);
    cr_assert_eq(vg__ledger_find_freed(base + (n - VG__LEDGER_RING) * 0x1000, NULL), VG_OK);
}

/* Freed records sit in the quarantine as the records themselves (by
 * pointer): inserts into the same shard must not reuse one until
 * VG__LEDGER_RING later removals there have pushed it out. */
Test(ledger, quarantined_record_survives_inserts_into_its_shard)
{
    const vg_devptr_t base = 0x30000000;
    const uint64_t ring = VG__LEDGER_RING;
    vg__alloc_t first = rec(base, 0x200, NULL), got;
    strcpy(first.tag, "first");
    first.site = 77;
    cr_assert_eq(vg__ledger_insert(&first), VG_OK);
    cr_assert_eq(vg__ledger_remove(base, VG__ANY_OWNER, NULL), VG_OK);
    for (uint64_t i = 1; i <= ring + 8; i++) { /* live: they take free records */
        vg__alloc_t a = rec(base + i * 0x200, 0x200, NULL);
        cr_assert_eq(vg__ledger_insert(&a), VG_OK);
    }
    for (uint64_t i = 1; i <= ring - 1; i++)
        cr_assert_eq(vg__ledger_remove(base + i * 0x200, VG__ANY_OWNER, NULL), VG_OK);
    cr_assert_eq(vg__ledger_find_freed(base, &got), VG_OK, "RING - 1 later frees: still held");
    cr_assert_eq(got.seq, first.seq);
    cr_assert_eq(got.size, 0x200);
    cr_assert_eq(got.site, 77);
    cr_assert_str_eq(got.tag, "first");
    cr_assert_eq(vg__ledger_remove(base + ring * 0x200, VG__ANY_OWNER, NULL), VG_OK);
    cr_assert_eq(vg__ledger_find_freed(base, NULL), VG_ENOTFOUND,
                 "the RING-th later free in its shard pushed it out");
    vg__alloc_t again = rec(base + (ring + 20) * 0x200, 0x200, NULL);
    cr_assert_eq(vg__ledger_insert(&again), VG_OK);
    cr_assert_eq(vg__ledger_find_freed(base + (ring - 1) * 0x200, &got), VG_OK,
                 "a record still quarantined is not handed to an insert");
    cr_assert_eq(got.ptr, base + (ring - 1) * 0x200);
    cr_assert_eq(vg__ledger_count(), 9);
}

typedef struct visit {
    int n;
    uint64_t bytes;
    const void *want_owner;
    bool wrong_owner;
} visit_t;

static void count_visit(const vg__alloc_t *a, void *ctx)
{
    visit_t *v = ctx;
    v->n++;
    v->bytes += a->size;
    if (v->want_owner != VG__ANY_OWNER && a->owner != v->want_owner)
        v->wrong_owner = true;
}

Test(ledger, foreach_by_owner)
{
    int pa = 0, pb = 0;
    for (uint64_t i = 1; i <= 300; i++) {
        vg__alloc_t a = rec(i * 0x10000, i, i % 3 == 0 ? (void *)&pa : &pb);
        cr_assert_eq(vg__ledger_insert(&a), VG_OK);
    }
    visit_t all = {.want_owner = VG__ANY_OWNER};
    vg__ledger_foreach(VG__ANY_OWNER, count_visit, &all);
    cr_assert_eq(all.n, 300);
    cr_assert_eq(all.bytes, 300 * 301 / 2);
    visit_t a = {.want_owner = &pa};
    vg__ledger_foreach(&pa, count_visit, &a);
    cr_assert_eq(a.n, 100);
    cr_assert_not(a.wrong_owner);
    visit_t none = {.want_owner = &none};
    vg__ledger_foreach(&none, count_visit, &none);
    cr_assert_eq(none.n, 0);
}

static void remove_visited(const vg__alloc_t *a, void *ctx)
{
    (void)ctx;
    /* fn runs with no ledger lock held, so it may change the ledger */
    cr_assert_eq(vg__ledger_remove(a->ptr, VG__ANY_OWNER, NULL), VG_OK);
}

Test(ledger, foreach_callback_may_remove_records)
{
    for (uint64_t i = 1; i <= 500; i++) {
        vg__alloc_t a = rec(i * 0x100, 8, NULL);
        cr_assert_eq(vg__ledger_insert(&a), VG_OK);
    }
    vg__ledger_foreach(VG__ANY_OWNER, remove_visited, NULL);
    cr_assert_eq(vg__ledger_count(), 0);
}

/* A thread's records crowd its home shard: foreach must not skip records when its callback removes the
 * ones it has visited (it resumes by insertion number, not position). */
Test(ledger, foreach_removing_visits_every_record_of_a_crowded_shard)
{
    for (uint64_t i = 1; i <= 200; i++) {
        vg__alloc_t a = rec(0x7f0000000000 + i * 256, 8, NULL);
        cr_assert_eq(vg__ledger_insert(&a), VG_OK);
    }
    vg__ledger_foreach(VG__ANY_OWNER, remove_visited, NULL);
    cr_assert_eq(vg__ledger_count(), 0);
}

/* Records inserted in a scattered key order come back in insertion order
 * (their sequence numbers increase within this thread), each once; the
 * callback inserts new ones, which are not visited. */
struct order_walk {
    uint64_t last_seq, visited, base;
    bool in_order;
};

static void check_order(const vg__alloc_t *a, void *ctx)
{
    struct order_walk *w = ctx;
    w->in_order &= a->seq > w->last_seq;
    w->last_seq = a->seq;
    w->visited++;
    vg__alloc_t fresh = rec(w->base + (1ull << 32) + w->visited * 256, 8, NULL);
    cr_assert_eq(vg__ledger_insert(&fresh), VG_OK);
}

Test(ledger, foreach_visits_in_insertion_order_and_not_what_it_inserts)
{
    enum { N = 5000 };
    struct order_walk w = {.base = 0x7e0000000000, .in_order = true};
    for (uint64_t i = 0; i < N; i++) {
        uint64_t k = (i * 2654435761u) % N; /* a permutation of 0..N-1 */
        vg__alloc_t a = rec(w.base + (k + 1) * 256, 8, NULL);
        cr_assert_eq(vg__ledger_insert(&a), VG_OK);
    }
    vg__ledger_foreach(VG__ANY_OWNER, check_order, &w);
    cr_expect(w.in_order, "out of insertion order");
    cr_expect_eq(w.visited, N, "visited %llu of %d", (unsigned long long)w.visited, N);
    cr_expect_eq(vg__ledger_count(), 2 * N);
}

Test(ledger, count_tracks_inserts_and_removes)
{
    for (uint64_t i = 1; i <= 1000; i++) {
        vg__alloc_t a = rec(i << 12, 1, NULL);
        cr_assert_eq(vg__ledger_insert(&a), VG_OK);
    }
    cr_assert_eq(vg__ledger_count(), 1000);
    for (uint64_t i = 1; i <= 1000; i += 2)
        cr_assert_eq(vg__ledger_remove(i << 12, VG__ANY_OWNER, NULL), VG_OK);
    cr_assert_eq(vg__ledger_count(), 500);
}

#define LEDGER_THREADS 16
#define LEDGER_PER_THREAD 5000

static void *churn(void *arg)
{
    uint64_t id = (uint64_t)(uintptr_t)arg;
    vg_devptr_t base = (id + 1) << 36; /* distinct per thread */
    for (int round = 0; round < 3; round++) {
        for (uint64_t i = 0; i < LEDGER_PER_THREAD; i++) {
            vg__alloc_t a = rec(base + i * 256, 256, NULL);
            if (vg__ledger_insert(&a) != VG_OK)
                return (void *)1;
        }
        for (uint64_t i = 0; i < LEDGER_PER_THREAD; i++) {
            vg__alloc_t got;
            if (vg__ledger_remove(base + i * 256, VG__ANY_OWNER, &got) !=
                    VG_OK ||
                got.ptr != base + i * 256)
                return (void *)2;
        }
    }
    return NULL;
}

Test(ledger, sixteen_threads_insert_and_remove_distinct_pointers_end_empty)
{
    pthread_t t[LEDGER_THREADS];
    for (uintptr_t i = 0; i < LEDGER_THREADS; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, churn, (void *)i), 0);
    for (int i = 0; i < LEDGER_THREADS; i++) {
        void *rc;
        pthread_join(t[i], &rc);
        cr_assert_null(rc, "thread %d failed at step %p", i, rc);
    }
    cr_assert_eq(vg__ledger_count(), 0);
}

static void *insert_forever(void *arg)
{
    _Atomic int *stop = arg;
    for (uint64_t i = 1; !atomic_load(stop); i++) {
        vg__alloc_t a = rec(0x55500000000 + (i % 1000) * 64, 64, NULL);
        vg__ledger_insert(&a);
        vg__ledger_remove(a.ptr, VG__ANY_OWNER, NULL);
    }
    return NULL;
}

Test(ledger, fork_child_can_insert_while_another_thread_churns)
{
    /* The children's keys get their directory leaf, and this thread's
     * shard its table, its records and a full quarantine, before any fork:
     * a child then allocates nothing. ThreadSanitizer's allocator can be
     * left locked in a fork child (seen: a child stuck in its 32 KiB size
     * class, making a directory leaf, ~1 run in 40 under load), which is
     * not what this test is about: the ledger's own locks are. */
    for (uint64_t j = 1; j <= 2 * VG__LEDGER_RING; j++) {
        vg__alloc_t a = rec(0x66600000000 + (j % 64 + 1) * 64, 64, NULL);
        cr_assert_eq(vg__ledger_insert(&a), VG_OK);
        cr_assert_eq(vg__ledger_remove(a.ptr, VG__ANY_OWNER, NULL), VG_OK);
    }
    _Atomic int stop = 0;
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, insert_forever, &stop), 0);
    for (int i = 0; i < 20; i++) {
        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
            /* in the child, a lock held by the parent's other thread would
             * hang here forever; alarm turns a hang into a failure (20 s,
             * not 5: once, in a TSan run on a loaded 2-core machine, a
             * child took longer than 5 s for these 64 pairs) */
            alarm(20);
            int ok = 1;
            for (uint64_t j = 1; j <= 64; j++) {
                vg__alloc_t a = rec(0x66600000000 + j * 64, 64, NULL);
                ok &= vg__ledger_insert(&a) == VG_OK;
                ok &= vg__ledger_remove(a.ptr, VG__ANY_OWNER, NULL) == VG_OK;
            }
            _exit(ok ? 0 : 3);
        }
        int status = 0;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "child %d: status 0x%x", i, status);
    }
    atomic_store(&stop, 1);
    pthread_join(t, NULL);
}

/* ------------------------------------------------ shards follow threads */

typedef struct handoff {
    vg_devptr_t ptr;
    int rc;
    vg__alloc_t got;
} handoff_t;

static void *insert_on_thread(void *arg)
{
    handoff_t *h = arg;
    vg__alloc_t a = rec(h->ptr, 512, NULL);
    h->rc = vg__ledger_insert(&a);
    return NULL;
}

static void *remove_on_thread(void *arg)
{
    handoff_t *h = arg;
    h->rc = vg__ledger_remove(h->ptr, VG__ANY_OWNER, &h->got);
    return NULL;
}

static int on_thread(void *(*fn)(void *), handoff_t *h)
{
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, fn, h), 0);
    pthread_join(t, NULL);
    return h->rc;
}

/* Records live in the shard of the thread that first allocated in their
 * granule; another thread must still see them, refuse a duplicate of
 * them and free them. */
Test(ledger, another_thread_finds_refuses_a_duplicate_of_and_frees_a_record)
{
    const vg_devptr_t p = 0x7a0000001000;
    handoff_t h = {.ptr = p};
    cr_assert_eq(on_thread(insert_on_thread, &h), VG_OK);
    vg__alloc_t got;
    cr_assert_eq(vg__ledger_find(p, &got), VG_OK, "found from another thread");
    cr_assert_eq(got.size, 512);
    vg__alloc_t dup = rec(p, 64, NULL);
    cr_assert_eq(vg__ledger_insert(&dup), VG_EINVAL, "a duplicate from another thread");
    vg__alloc_t near = rec(p + 512, 64, NULL); /* same granule, this thread */
    cr_assert_eq(vg__ledger_insert(&near), VG_OK);
    cr_assert_eq(vg__ledger_count(), 2);
    handoff_t r = {.ptr = p};
    cr_assert_eq(on_thread(remove_on_thread, &r), VG_OK, "freed by a third thread");
    cr_assert_eq(r.got.size, 512);
    cr_assert_eq(vg__ledger_remove(p + 512, VG__ANY_OWNER, NULL), VG_OK);
    cr_assert_eq(vg__ledger_count(), 0);
    cr_assert_eq(vg__ledger_find(p, NULL), VG_ENOTFOUND);
    /* the granule is empty: it passes to the next inserter, and what was
     * freed in the old owner's shard is still quarantined */
    vg__alloc_t again = rec(p + 1024, 64, NULL);
    cr_assert_eq(vg__ledger_insert(&again), VG_OK);
    cr_assert_eq(vg__ledger_find_freed(p, &got), VG_OK);
    cr_assert_eq(got.size, 512);
    handoff_t dup2 = {.ptr = p + 1024};
    cr_assert_eq(on_thread(insert_on_thread, &dup2), VG_EINVAL,
                 "a duplicate after the hand-over");
    cr_assert_eq(vg__ledger_count(), 1);
}

/* Producers insert, consumers remove what others inserted, all in the
 * same few granules, so granules change hands while records are looked
 * up: every record is removed exactly once and the ledger ends empty. */
#define XFER_PAIRS 4
#define XFER_N 20000
#define XFER_SLOTS 256

typedef struct xfer {
    _Atomic vg_devptr_t slot[XFER_SLOTS];
    _Atomic int produced_done;
    _Atomic uint64_t removed;
    _Atomic int bad;
} xfer_t;

typedef struct xfer_arg {
    xfer_t *x;
    unsigned id;
} xfer_arg_t;

static void *producer(void *p)
{
    xfer_arg_t *a = p;
    for (uint64_t i = 0; i < XFER_N; i++) {
        /* 64-byte steps inside 4 granules shared by every producer */
        vg_devptr_t ptr = 0x6b0000000000 + ((i * XFER_PAIRS + a->id) % 4096) * 64;
        unsigned s = (unsigned)((i * 7 + a->id) % XFER_SLOTS);
        vg__alloc_t r = rec(ptr, 64, NULL);
        int rc;
        while ((rc = vg__ledger_insert(&r)) == VG_EINVAL)
            sched_yield(); /* still live: a consumer has not freed it yet */
        if (rc != VG_OK)
            atomic_store(&a->x->bad, 1);
        vg_devptr_t none = 0;
        while (!atomic_compare_exchange_weak(&a->x->slot[s], &none, ptr)) {
            none = 0;
            sched_yield();
        }
    }
    atomic_fetch_add(&a->x->produced_done, 1);
    return NULL;
}

static void *consumer(void *p)
{
    xfer_arg_t *a = p;
    for (unsigned s = a->id;; s = (s + XFER_PAIRS) % XFER_SLOTS) {
        vg_devptr_t ptr = atomic_exchange(&a->x->slot[s], 0);
        if (ptr) {
            vg__alloc_t got;
            if (vg__ledger_remove(ptr, VG__ANY_OWNER, &got) != VG_OK || got.ptr != ptr)
                atomic_store(&a->x->bad, 1);
            atomic_fetch_add(&a->x->removed, 1);
        } else if (atomic_load(&a->x->removed) == (uint64_t)XFER_PAIRS * XFER_N) {
            return NULL;
        } else if (s < XFER_PAIRS) {
            sched_yield();
        }
    }
}

Test(ledger, frees_from_other_threads_in_shared_granules_end_empty, .timeout = 60)
{
    static xfer_t x;
    pthread_t t[2 * XFER_PAIRS];
    xfer_arg_t args[XFER_PAIRS];
    for (unsigned i = 0; i < XFER_PAIRS; i++) {
        args[i] = (xfer_arg_t){.x = &x, .id = i};
        cr_assert_eq(pthread_create(&t[2 * i], NULL, producer, &args[i]), 0);
        cr_assert_eq(pthread_create(&t[2 * i + 1], NULL, consumer, &args[i]), 0);
    }
    for (unsigned i = 0; i < 2 * XFER_PAIRS; i++)
        pthread_join(t[i], NULL);
    cr_assert_not(atomic_load(&x.bad), "an insert or remove went wrong");
    cr_assert_eq(atomic_load(&x.removed), (uint64_t)XFER_PAIRS * XFER_N);
    cr_assert_eq(vg__ledger_count(), 0);
}

/* ------------------------------------------------ split granules */

/* The real driver hands threads' small allocations out side by side: a
 * thread inserting into a granule whose records are another shard's splits
 * it, so each 4 KiB has an owner of its own. */
Test(ledger, neighbouring_keys_of_two_threads_split_their_granule)
{
    const vg_devptr_t p = 0x7c0000011000, q = p + 0x1000; /* one 64 KiB granule */
    handoff_t h = {.ptr = p};
    cr_assert_eq(on_thread(insert_on_thread, &h), VG_OK);
    vg__alloc_t a = rec(q, 512, NULL);
    cr_assert_eq(vg__ledger_insert(&a), VG_OK);
    int sp = vg__ledger_shard_of(p), sq = vg__ledger_shard_of(q);
    cr_assert_geq(sp, 0);
    cr_assert_geq(sq, 0);
    cr_expect_neq(sp, sq, "both records in shard %d: the granule was not split", sp);
    /* Exact as before: duplicates refused from any thread, records found
     * and freed from any thread. */
    vg__alloc_t dup = rec(p, 64, NULL);
    cr_expect_eq(vg__ledger_insert(&dup), VG_EINVAL);
    handoff_t dq = {.ptr = q};
    cr_expect_eq(on_thread(insert_on_thread, &dq), VG_EINVAL);
    vg__alloc_t near = rec(p + 512, 64, NULL); /* p's 4 KiB: joins p's shard */
    cr_assert_eq(vg__ledger_insert(&near), VG_OK);
    cr_expect_eq(vg__ledger_shard_of(p + 512), sp);
    cr_assert_eq(vg__ledger_count(), 3);
    handoff_t rq = {.ptr = q};
    cr_assert_eq(on_thread(remove_on_thread, &rq), VG_OK);
    cr_expect_eq(rq.got.size, 512);
    cr_assert_eq(vg__ledger_remove(p, VG__ANY_OWNER, NULL), VG_OK);
    cr_assert_eq(vg__ledger_remove(p + 512, VG__ANY_OWNER, NULL), VG_OK);
    cr_assert_eq(vg__ledger_count(), 0);
    cr_expect_eq(vg__ledger_find(q, NULL), VG_ENOTFOUND);
    /* An emptied 4 KiB passes to the next inserter, as a granule does. */
    handoff_t again = {.ptr = q};
    cr_assert_eq(on_thread(insert_on_thread, &again), VG_OK);
    cr_expect_neq(vg__ledger_shard_of(q), sq);
    cr_assert_eq(vg__ledger_remove(q, VG__ANY_OWNER, NULL), VG_OK);
}

/* A split counts its owner's records by scanning them: a shard holding
 * more than a few thousand is left as it is (its granules stay shared). */
#define CROWD 4200

static void *insert_crowd_on_thread(void *arg)
{
    handoff_t *h = arg;
    h->rc = VG_OK;
    for (vg_devptr_t i = 0; i < CROWD && h->rc == VG_OK; i++) {
        vg__alloc_t a = rec(0x7d0000000000 + i * 0x10000, 64, NULL);
        h->rc = vg__ledger_insert(&a);
    }
    vg__alloc_t a = rec(h->ptr, 64, NULL);
    if (h->rc == VG_OK)
        h->rc = vg__ledger_insert(&a);
    return NULL;
}

Test(ledger, a_crowded_shard_is_not_split, .timeout = 60)
{
    const vg_devptr_t p = 0x7c0000021000, q = p + 0x1000;
    handoff_t h = {.ptr = p};
    cr_assert_eq(on_thread(insert_crowd_on_thread, &h), VG_OK);
    vg__alloc_t a = rec(q, 64, NULL);
    cr_assert_eq(vg__ledger_insert(&a), VG_OK);
    cr_expect_eq(vg__ledger_shard_of(q), vg__ledger_shard_of(p), "the crowded shard was split");
    cr_assert_eq(vg__ledger_count(), CROWD + 2);
    for (vg_devptr_t i = 0; i < CROWD; i++)
        cr_assert_eq(vg__ledger_remove(0x7d0000000000 + i * 0x10000, VG__ANY_OWNER, NULL), VG_OK);
    cr_assert_eq(vg__ledger_remove(p, VG__ANY_OWNER, NULL), VG_OK);
    cr_assert_eq(vg__ledger_remove(q, VG__ANY_OWNER, NULL), VG_OK);
    cr_assert_eq(vg__ledger_count(), 0);
}

/* Sixteen threads as over the real driver: each holds one record and
 * inserts and removes another at the same address every time, all 32 keys
 * side by side in two granules, while a seventeenth thread finds them. */
#define SIDE_THREADS 16
#define SIDE_PAIRS 20000
#define SIDE_BASE 0x7e0000010000ull

static _Atomic int side_bad, side_done;

static void *side_by_side(void *arg)
{
    vg_devptr_t mine = SIDE_BASE + (uintptr_t)arg * 0x2000;
    vg__alloc_t hold = rec(mine, 4096, NULL), pair = rec(mine + 0x1000, 4096, NULL);
    if (vg__ledger_insert(&hold) != VG_OK)
        atomic_store(&side_bad, 1);
    for (int i = 0; i < SIDE_PAIRS; i++) {
        vg__alloc_t got;
        if (vg__ledger_insert(&pair) != VG_OK ||
            vg__ledger_remove(pair.ptr, VG__ANY_OWNER, &got) != VG_OK || got.ptr != pair.ptr)
            atomic_store(&side_bad, 1);
    }
    atomic_fetch_add(&side_done, 1);
    return NULL;
}

static void *side_finder(void *arg)
{
    (void)arg;
    uint64_t seed = 1;
    while (atomic_load(&side_done) < SIDE_THREADS) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        vg_devptr_t hold = SIDE_BASE + (seed >> 33) % SIDE_THREADS * 0x2000;
        vg__alloc_t got;
        /* a holding record is live from its thread's start to the end */
        if (vg__ledger_find(hold, &got) == VG_OK && got.ptr != hold)
            atomic_store(&side_bad, 1);
    }
    return NULL;
}

Test(ledger, sixteen_threads_with_neighbouring_keys_stay_exact, .timeout = 120)
{
    pthread_t t[SIDE_THREADS + 1];
    for (uintptr_t i = 0; i < SIDE_THREADS; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, side_by_side, (void *)i), 0);
    cr_assert_eq(pthread_create(&t[SIDE_THREADS], NULL, side_finder, NULL), 0);
    for (int i = 0; i <= SIDE_THREADS; i++)
        pthread_join(t[i], NULL);
    cr_assert_not(atomic_load(&side_bad), "an insert, remove or find went wrong");
    cr_assert_eq(vg__ledger_count(), SIDE_THREADS);
    for (uintptr_t i = 0; i < SIDE_THREADS; i++) {
        cr_expect_geq(vg__ledger_shard_of(SIDE_BASE + i * 0x2000), 0);
        cr_assert_eq(vg__ledger_remove(SIDE_BASE + i * 0x2000, VG__ANY_OWNER, NULL), VG_OK);
    }
    cr_assert_eq(vg__ledger_count(), 0);
}
