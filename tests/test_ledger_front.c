/*
 * test_ledger_front.c — each thread's newest plain allocation, held in the
 * thread's front (lib/ledger_front.c) rather than the shards: every other
 * thread, walk, count and lookup must still see it as live, and its free
 * must still be found in the quarantine. Criterion runs each test in its
 * own process, so every test starts with an empty ledger and no fronts.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "vg_ledger.h"

static vg__alloc_t plain(vg_devptr_t ptr, uint64_t size)
{
    vg__alloc_t a;
    memset(&a, 0, sizeof a);
    a.ptr = a.base = ptr;
    a.size = a.charged = size;
    a.seq = vg__ledger_next_seq();
    a.kind = VG_KIND_PLAIN;
    return a;
}

/* A thread that puts `key` in its front, signals, and waits to be told
 * to go on (so its front is another live thread's while the test looks),
 * then, if `then` is set, allocates `then` (which moves `key` to the
 * shards) and exits. */
typedef struct holder {
    vg_devptr_t key, then;
    int rc;
    pthread_mutex_t m;
    pthread_cond_t cv;
    bool ready, go;
    pthread_t t;
} holder_t;

static void *hold(void *p)
{
    holder_t *h = p;
    vg__alloc_t a = plain(h->key, 4096);
    h->rc = vg__ledger_insert_front(&a);
    pthread_mutex_lock(&h->m);
    h->ready = true;
    pthread_cond_broadcast(&h->cv);
    while (!h->go)
        pthread_cond_wait(&h->cv, &h->m);
    pthread_mutex_unlock(&h->m);
    if (h->then) {
        vg__alloc_t b = plain(h->then, 4096);
        h->rc = vg__ledger_insert_front(&b);
    }
    return NULL;
}

static void holder_start(holder_t *h, vg_devptr_t key, vg_devptr_t then)
{
    memset(h, 0, sizeof *h);
    h->key = key;
    h->then = then;
    pthread_mutex_init(&h->m, NULL);
    pthread_cond_init(&h->cv, NULL);
    cr_assert_eq(pthread_create(&h->t, NULL, hold, h), 0);
    pthread_mutex_lock(&h->m);
    while (!h->ready)
        pthread_cond_wait(&h->cv, &h->m);
    pthread_mutex_unlock(&h->m);
    cr_assert_eq(h->rc, VG_OK);
}

static void holder_finish(holder_t *h)
{
    pthread_mutex_lock(&h->m);
    h->go = true;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->m);
    cr_assert_eq(pthread_join(h->t, NULL), 0);
    cr_assert_eq(h->rc, VG_OK);
}

Test(ledger_front, a_record_in_a_front_is_live_for_every_lookup)
{
    vg__alloc_t a = plain(0x7f1000000000, 4096), got;
    cr_assert_eq(vg__ledger_insert_front(&a), VG_OK);
    cr_assert_eq(vg__fronts_live(), 1, "the record is held in the front, not the shards");
    cr_assert_eq(vg__ledger_count(), 1);
    memset(&got, 0, sizeof got);
    cr_assert_eq(vg__ledger_find(a.ptr, &got), VG_OK);
    cr_assert_eq(got.seq, a.seq);
    cr_assert_eq(vg__ledger_remove(a.ptr, VG__ANY_OWNER, &got), VG_OK);
    cr_assert_eq(got.seq, a.seq);
    cr_assert_eq(vg__ledger_count(), 0);
    cr_assert_eq(vg__ledger_remove(a.ptr, VG__ANY_OWNER, NULL), VG_ENOTFOUND);
}

Test(ledger_front, the_same_key_twice_is_refused_and_the_first_kept)
{
    vg__alloc_t a = plain(0x7f1000000000, 4096), b = plain(0x7f1000000000, 8192), got;
    cr_assert_eq(vg__ledger_insert_front(&a), VG_OK);
    cr_assert_eq(vg__ledger_insert_front(&b), VG_EINVAL);
    cr_assert_eq(vg__ledger_count(), 1);
    cr_assert_eq(vg__ledger_remove(a.ptr, VG__ANY_OWNER, &got), VG_OK);
    cr_assert_eq(got.size, 4096);
}

Test(ledger_front, a_key_the_shards_hold_is_refused_there)
{
    vg__alloc_t a = plain(0x7f1000000000, 4096), b = plain(0x7f1000000000, 8192), got;
    cr_assert_eq(vg__ledger_insert(&a), VG_OK);
    cr_assert_eq(vg__ledger_insert_front(&b), VG_EINVAL, "a duplicate is found where it lives");
    cr_assert_eq(vg__fronts_live(), 0);
    cr_assert_eq(vg__ledger_find(a.ptr, &got), VG_OK);
    cr_assert_eq(got.size, 4096);
}

Test(ledger_front, the_next_allocation_moves_the_previous_one_to_the_shards)
{
    vg__alloc_t a = plain(0x7f1000000000, 4096), b = plain(0x7f2000000000, 4096);
    cr_assert_eq(vg__ledger_insert_front(&a), VG_OK);
    cr_assert_eq(vg__ledger_insert_front(&b), VG_OK);
    cr_assert_eq(vg__fronts_live(), 1);
    cr_assert_eq(vg__ledger_count(), 2);
    cr_assert_geq(vg__ledger_shard_of(a.ptr), 0, "the older record is in a shard");
    cr_assert_eq(vg__ledger_remove(a.ptr, VG__ANY_OWNER, NULL), VG_OK);
    cr_assert_eq(vg__ledger_remove(b.ptr, VG__ANY_OWNER, NULL), VG_OK);
    cr_assert_eq(vg__ledger_count(), 0);
}

Test(ledger_front, a_thread_that_allocates_many_before_freeing_stops_using_its_front)
{
    /* Keys in granules of their own: the front is not skipped for its neighbours. */
    vg_devptr_t k[8];
    for (int i = 0; i < 8; i++) {
        k[i] = 0x7f1000000000 + (vg_devptr_t)i * 0x1000000;
        vg__alloc_t a = plain(k[i], 4096);
        cr_assert_eq(vg__ledger_insert_front(&a), VG_OK);
    }
    cr_assert_eq(vg__ledger_count(), 8);
    cr_assert_eq(vg__fronts_live(), 1);
    /* Four pushes in a row, then the shards: the front still holds the fifth. */
    cr_assert_eq(vg__ledger_remove(k[4], VG__ANY_OWNER, NULL), VG_OK);
    cr_assert_eq(vg__fronts_live(), 0, "the front held the fifth, not the last");
    for (int i = 0; i < 8; i++)
        if (i != 4)
            cr_assert_eq(vg__ledger_remove(k[i], VG__ANY_OWNER, NULL), VG_OK);
    cr_assert_eq(vg__ledger_count(), 0);
    /* Its own newest freed: the front is used again. */
    vg__alloc_t a = plain(k[0], 4096);
    cr_assert_eq(vg__ledger_insert_front(&a), VG_OK);
    cr_assert_eq(vg__fronts_live(), 1);
}

Test(ledger_front, a_freed_front_record_is_in_the_quarantine)
{
    vg__alloc_t a = plain(0x7f1000000000, 4096), got;
    cr_assert_eq(vg__ledger_insert_front(&a), VG_OK);
    cr_assert_eq(vg__ledger_remove(a.ptr, VG__ANY_OWNER, NULL), VG_OK);
    memset(&got, 0, sizeof got);
    cr_assert_eq(vg__ledger_find_freed(a.ptr + 100, &got), VG_OK, "an interior pointer");
    cr_assert_eq(got.seq, a.seq);
    /* A front has 8 slots: the eighth allocation after it overwrites it. */
    for (int i = 1; i <= 8; i++) {
        vg__alloc_t n = plain(0x7f1000000000 + (vg_devptr_t)i * 0x100000, 4096);
        cr_assert_eq(vg__ledger_insert_front(&n), VG_OK);
        if (i < 8)
            cr_assert_eq(vg__ledger_find_freed(a.ptr, NULL), VG_OK, "still there after %d", i);
        cr_assert_eq(vg__ledger_remove(n.ptr, VG__ANY_OWNER, NULL), VG_OK);
    }
    cr_assert_eq(vg__ledger_find_freed(a.ptr, NULL), VG_ENOTFOUND, "aged out");
}

Test(ledger_front, another_thread_finds_and_frees_a_live_threads_newest)
{
    holder_t h;
    holder_start(&h, 0x7f3000000000, 0);
    vg__alloc_t got;
    cr_assert_eq(vg__ledger_find(h.key, &got), VG_OK);
    cr_assert_eq(got.size, 4096);
    cr_assert_eq(vg__ledger_remove(h.key, VG__ANY_OWNER, &got), VG_OK);
    cr_assert_eq(vg__ledger_count(), 0);
    cr_assert_eq(vg__ledger_remove(h.key, VG__ANY_OWNER, NULL), VG_ENOTFOUND);
    cr_assert_eq(vg__ledger_find_freed(h.key, NULL), VG_OK);
    holder_finish(&h);
}

static void *free_it(void *p)
{
    return (void *)(intptr_t)vg__ledger_remove(*(vg_devptr_t *)p, VG__ANY_OWNER, NULL);
}

Test(ledger_front, a_thread_whose_newest_another_frees_sends_its_next_to_the_shards)
{
    vg__alloc_t a = plain(0x7f3800000000, 4096), b = plain(0x7f3900000000, 4096);
    cr_assert_eq(vg__ledger_insert_front(&a), VG_OK);
    pthread_t t;
    void *rc;
    cr_assert_eq(pthread_create(&t, NULL, free_it, &a.ptr), 0);
    cr_assert_eq(pthread_join(t, &rc), 0);
    cr_assert_eq((intptr_t)rc, VG_OK, "another thread freed this one's newest");
    cr_assert_eq(vg__ledger_insert_front(&b), VG_OK);
    cr_assert_eq(vg__fronts_live(), 0, "the next one went to the shards");
    cr_assert_eq(vg__ledger_count(), 1);
    cr_assert_eq(vg__ledger_remove(b.ptr, VG__ANY_OWNER, NULL), VG_OK);
}

static void tally(const vg__alloc_t *a, void *ctx)
{
    (void)a;
    ++*(int *)ctx;
}

Test(ledger_front, walks_and_counts_see_every_threads_newest)
{
    holder_t h[4];
    for (int i = 0; i < 4; i++)
        holder_start(&h[i], 0x7f4000000000 + (vg_devptr_t)i * 0x10000000, 0);
    cr_assert_eq(vg__ledger_count(), 4);
    int seen = 0;
    vg__ledger_foreach(VG__ANY_OWNER, tally, &seen);
    cr_assert_eq(seen, 4);
    for (int i = 0; i < 4; i++)
        holder_finish(&h[i]);
    cr_assert_eq(vg__ledger_count(), 4, "records outlive their threads");
}

Test(ledger_front, a_thread_that_exits_leaves_its_newest_in_the_shards)
{
    holder_t h;
    holder_start(&h, 0x7f5000000000, 0x7f5000100000);
    holder_finish(&h);
    cr_assert_eq(vg__fronts_live(), 0, "the exit moved the front's record");
    cr_assert_eq(vg__ledger_count(), 2);
    cr_assert_eq(vg__ledger_remove(0x7f5000000000, VG__ANY_OWNER, NULL), VG_OK);
    cr_assert_eq(vg__ledger_remove(0x7f5000100000, VG__ANY_OWNER, NULL), VG_OK);
}

/* Threads allocating and freeing in pairs, some of their newest records
 * freed by the previous thread, with walks between: every record is
 * removed exactly once, and the ledger ends empty. */
#define PAIR_THREADS 8
#define PAIRS 4000

static _Atomic vg_devptr_t handed[PAIR_THREADS];

static void *pairs(void *p)
{
    int me = (int)(intptr_t)p;
    for (int i = 0; i < PAIRS; i++) {
        vg_devptr_t key = 0x7f6000000000 + ((vg_devptr_t)me << 24) + (vg_devptr_t)i * 4096;
        vg__alloc_t a = plain(key, 4096);
        cr_assert_eq(vg__ledger_insert_front(&a), VG_OK);
        vg_devptr_t none = 0;
        /* Every third one is handed over, for the previous thread to free,
         * when that thread has taken the last one. */
        if (i % 3 != 0 || !atomic_compare_exchange_strong(&handed[me], &none, key))
            cr_assert_eq(vg__ledger_remove(key, VG__ANY_OWNER, NULL), VG_OK);
        vg_devptr_t theirs = atomic_exchange(&handed[(me + 1) % PAIR_THREADS], 0);
        if (theirs)
            cr_assert_eq(vg__ledger_remove(theirs, VG__ANY_OWNER, NULL), VG_OK);
        if (i % 500 == 0) {
            int seen = 0;
            vg__ledger_foreach(VG__ANY_OWNER, tally, &seen);
        }
    }
    return NULL;
}

Test(ledger_front, threads_freeing_each_others_newest_end_empty, .timeout = 60)
{
    pthread_t t[PAIR_THREADS];
    for (int i = 0; i < PAIR_THREADS; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, pairs, (void *)(intptr_t)i), 0);
    for (int i = 0; i < PAIR_THREADS; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < PAIR_THREADS; i++) {
        vg_devptr_t left = atomic_exchange(&handed[i], 0);
        if (left)
            cr_assert_eq(vg__ledger_remove(left, VG__ANY_OWNER, NULL), VG_OK);
    }
    cr_assert_eq(vg__ledger_count(), 0);
}

Test(ledger_front, a_fork_while_another_thread_holds_a_front_leaves_it_usable)
{
    holder_t h;
    holder_start(&h, 0x7f7000000000, 0);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        /* The holder does not exist here; its front's record is still live. */
        int ok = vg__ledger_find(h.key, NULL) == VG_OK &&
                 vg__ledger_remove(h.key, VG__ANY_OWNER, NULL) == VG_OK &&
                 vg__ledger_count() == 0;
        vg__alloc_t a = plain(0x7f7000100000, 4096);
        ok = ok && vg__ledger_insert_front(&a) == VG_OK && vg__ledger_count() == 1;
        _exit(ok ? 0 : 1);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child could use the ledger");
    cr_assert_eq(vg__ledger_find(h.key, NULL), VG_OK, "the parent still holds it");
    holder_finish(&h);
}
