/*
 * client_pool_stress.c — a client for the cache-mode tests
 * (tests/test_cache_mode.c, VRAMGUARD_POOL=cache, docs/pool.md): many
 * random requests, checked against a shadow of the live blocks (no
 * overlap, 256-byte alignment, ranges, every byte kept), from one thread
 * or many at once. The command line, output and API choice (CLIENT_API):
 * pool_common.h.
 *
 * Cases (SIZE in bytes or with KiB/MiB; defaults in brackets):
 *   random MAX N [SEED]   N random alloc/free of 1..MAX bytes, shadow-checked
 *   threads MAX N [T]     T [16] threads, N alloc/free each of 1..MAX bytes
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "pool_common.h"

/* ------------------------------------------------------------ random sizes */

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

/* 1..max, log-uniform: as many small sizes as large ones, max included. */
static size_t random_size(uint64_t *s, size_t max)
{
    unsigned bits = 0;
    while ((2ull << bits) <= max)
        bits++;
    size_t span = (size_t)1 << (rnd(s) % (bits + 1));
    size_t v = 1 + (size_t)(rnd(s) % span);
    return v > max ? max : v;
}

/* ------------------------------------------------------------ random */

typedef struct block {
    CUdeviceptr p;
    size_t size;
    uint64_t seq;
} block_t;

typedef struct tally {
    long long ops, allocs, frees, overlaps, misaligned, corrupt, errors, range_bad;
    char first[160];
} tally_t;

static void note(tally_t *t, long long *counter, const char *fmt, unsigned long long a,
                 unsigned long long b)
{
    (*counter)++;
    if (!t->first[0])
        snprintf(t->first, sizeof t->first, fmt, a, b);
}

static unsigned char tag_of(uint64_t seq) { return (unsigned char)(seq * 131 + 7); }

/* True when [p, p+size) meets a block of live[0..n). */
static bool overlaps_any(const block_t *live, size_t n, CUdeviceptr p, size_t size, size_t *who)
{
    for (size_t i = 0; i < n; i++)
        if (p < live[i].p + live[i].size && live[i].p < p + size) {
            *who = i;
            return true;
        }
    return false;
}

static void random_alloc(tally_t *t, block_t *live, size_t *n, size_t size, uint64_t seq)
{
    CUdeviceptr p = 0, b = 0;
    size_t s = 0, who = 0;
    CUresult rc = cu.mem_alloc(&p, size);
    if (rc != CUDA_SUCCESS) {
        note(t, &t->errors, "alloc_rc=%llu,size=%llu", rc, size);
        return;
    }
    t->allocs++;
    if (p % 256)
        note(t, &t->misaligned, "misaligned=0x%llx,size=%llu", p, size);
    if (overlaps_any(live, *n, p, size, &who))
        note(t, &t->overlaps, "overlap=0x%llx,with=0x%llx", p, live[who].p);
    if (cu.get_range(&b, &s, p + (seq % size)) != CUDA_SUCCESS || b != p || s != size)
        note(t, &t->range_bad, "range_of=0x%llx,size=%llu", p, s);
    if (fill(p, size, seq, tag_of(seq)) != CUDA_SUCCESS)
        note(t, &t->errors, "fill=0x%llx,size=%llu", p, size);
    live[(*n)++] = (block_t){p, size, seq};
}

static void random_free(tally_t *t, block_t *live, size_t *n, size_t i)
{
    block_t b = live[i];
    live[i] = live[--*n];
    int ok = intact(b.p, b.size, b.seq, tag_of(b.seq));
    if (ok == 0)
        note(t, &t->corrupt, "corrupt=0x%llx,size=%llu", b.p, b.size);
    else if (ok < 0)
        note(t, &t->errors, "readback=0x%llx,size=%llu", b.p, b.size);
    CUresult rc = cu.mem_free(b.p);
    if (rc != CUDA_SUCCESS)
        note(t, &t->errors, "free_rc=%llu,ptr=0x%llx", rc, b.p);
    t->frees++;
}

static void out_tally(const tally_t *t)
{
    out("ops", t->ops);
    out("allocs", t->allocs);
    out("frees", t->frees);
    out("overlaps", t->overlaps);
    out("misaligned", t->misaligned);
    out("corrupt", t->corrupt);
    out("errors", t->errors);
    out("range_bad", t->range_bad);
    out_str("first", t->first[0] ? t->first : "none");
}

#define RANDOM_LIVE 256

static int run_random(size_t max, size_t ops, uint64_t seed)
{
    static block_t live[RANDOM_LIVE];
    static tally_t t;
    size_t n = 0, peak = 0;
    uint64_t s = seed | 1;
    for (size_t op = 0; op < ops; op++, t.ops++) {
        bool alloc = n == 0 || (n < RANDOM_LIVE && rnd(&s) % 100 < 55);
        if (alloc)
            random_alloc(&t, live, &n, random_size(&s, max), op + 1);
        else
            random_free(&t, live, &n, (size_t)(rnd(&s) % n));
        peak = n > peak ? n : peak;
    }
    while (n)
        random_free(&t, live, &n, n - 1);
    out_begin("random");
    out_tally(&t);
    out("live_max", (long long)peak);
    out_end();
    return 0;
}

/* ------------------------------------------------------------ threads */

/* Every live block of every thread, for the overlap check. A thread
 * inserts a block after its allocation returned and removes it before
 * freeing it, so a reused address never meets its former owner here. */
#define THREADS_MAX 64
#define PER_THREAD 8

static pthread_mutex_t shadow_lock = PTHREAD_MUTEX_INITIALIZER;
static block_t shadow[THREADS_MAX * PER_THREAD];
static size_t shadow_n;

static void shadow_add(tally_t *t, const block_t *b)
{
    size_t who = 0;
    pthread_mutex_lock(&shadow_lock);
    if (overlaps_any(shadow, shadow_n, b->p, b->size, &who))
        note(t, &t->overlaps, "overlap=0x%llx,with=0x%llx", b->p, shadow[who].p);
    shadow[shadow_n++] = *b;
    pthread_mutex_unlock(&shadow_lock);
}

static void shadow_remove(CUdeviceptr p)
{
    pthread_mutex_lock(&shadow_lock);
    for (size_t i = 0; i < shadow_n; i++)
        if (shadow[i].p == p) {
            shadow[i] = shadow[--shadow_n];
            break;
        }
    pthread_mutex_unlock(&shadow_lock);
}

typedef struct worker {
    size_t max, iterations;
    uint64_t seed;
    tally_t t;
} worker_t;

/* Small blocks: the first and last 8 bytes are written and checked. */
static CUresult mark(CUdeviceptr p, size_t size, uint64_t seq)
{
    CUresult rc = cu.htod(p, &seq, size < 8 ? size : 8);
    if (rc == CUDA_SUCCESS && size >= 16)
        rc = cu.htod(p + size - 8, &seq, 8);
    return rc;
}

static bool marked(CUdeviceptr p, size_t size, uint64_t seq)
{
    uint64_t head = 0, tail = seq;
    size_t n = size < 8 ? size : 8;
    if (cu.dtoh(&head, p, n) != CUDA_SUCCESS || memcmp(&head, &seq, n) != 0)
        return false;
    return size < 16 || (cu.dtoh(&tail, p + size - 8, 8) == CUDA_SUCCESS && tail == seq);
}

static void worker_free(worker_t *w, block_t *mine, size_t *n, size_t i)
{
    block_t b = mine[i];
    mine[i] = mine[--*n];
    if (!marked(b.p, b.size, b.seq))
        note(&w->t, &w->t.corrupt, "corrupt=0x%llx,size=%llu", b.p, b.size);
    shadow_remove(b.p);
    CUresult rc = cu.mem_free(b.p);
    if (rc != CUDA_SUCCESS)
        note(&w->t, &w->t.errors, "free_rc=%llu,ptr=0x%llx", rc, b.p);
    w->t.frees++;
}

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    block_t mine[PER_THREAD];
    size_t n = 0;
    uint64_t s = w->seed | 1;
    if (cu.ctx_set_current(primary) != CUDA_SUCCESS) {
        note(&w->t, &w->t.errors, "set_current_failed=%llu,%llu", 0, 0);
        return NULL;
    }
    for (size_t i = 0; i < w->iterations; i++, w->t.ops++) {
        if (n == PER_THREAD || (n > 0 && rnd(&s) % 2)) {
            worker_free(w, mine, &n, (size_t)(rnd(&s) % n));
            continue;
        }
        block_t b = {0, random_size(&s, w->max), (w->seed << 32) | i};
        CUresult rc = cu.mem_alloc(&b.p, b.size);
        if (rc != CUDA_SUCCESS) {
            note(&w->t, &w->t.errors, "alloc_rc=%llu,size=%llu", rc, b.size);
            continue;
        }
        w->t.allocs++;
        if (b.p % 256)
            note(&w->t, &w->t.misaligned, "misaligned=0x%llx,size=%llu", b.p, b.size);
        shadow_add(&w->t, &b);
        if (mark(b.p, b.size, b.seq) != CUDA_SUCCESS)
            note(&w->t, &w->t.errors, "mark=0x%llx,size=%llu", b.p, b.size);
        mine[n++] = b;
    }
    while (n)
        worker_free(w, mine, &n, n - 1);
    return NULL;
}

static void sum_into(tally_t *sum, const tally_t *t)
{
    sum->ops += t->ops, sum->allocs += t->allocs, sum->frees += t->frees;
    sum->overlaps += t->overlaps, sum->misaligned += t->misaligned;
    sum->corrupt += t->corrupt, sum->errors += t->errors;
    if (!sum->first[0])
        memcpy(sum->first, t->first, sizeof sum->first);
}

/* After the threads: the budget use the program sees, and whether the
 * whole budget can be had again (every cached chunk trimmed, nothing
 * left charged). */
static void threads_after(long long used0, long long total)
{
    CUdeviceptr all = 0;
    out("ctx_sync_rc", cu.ctx_sync());
    out("used_after", seen_used(NULL));
    out("drv_after", drv_used());
    out("whole_rc", cu.mem_alloc(&all, (size_t)(total - used0)));
    out("whole_free_rc", all ? (long long)cu.mem_free(all) : -1);
    out("used_end", seen_used(NULL));
}

static int run_threads(size_t max, size_t iterations, size_t threads)
{
    static worker_t w[THREADS_MAX];
    pthread_t tid[THREADS_MAX];
    tally_t sum = {0};
    long long total = 0, used0 = seen_used(&total);
    if (threads < 1 || threads > THREADS_MAX)
        return 2;
    for (size_t i = 0; i < threads; i++) {
        w[i] = (worker_t){.max = max, .iterations = iterations, .seed = i + 1};
        if (pthread_create(&tid[i], NULL, worker_main, &w[i]))
            return 3;
    }
    for (size_t i = 0; i < threads; i++) {
        pthread_join(tid[i], NULL);
        sum_into(&sum, &w[i].t);
    }
    out_begin("threads");
    out("used0", used0);
    out_tally(&sum);
    threads_after(used0, total);
    out_end();
    return 0;
}

/* ---------------------------------------------------------------- main */

static int usage(void)
{
    fprintf(stderr, "usage: client_pool_stress CASE SIZE [COUNT [EXTRA]]\n"
                    "  CASE: random threads\n");
    return 2;
}

int main(int argc, char **argv)
{
    pool_args_t a;
    if (pool_args_parse(argc, argv, &a) != 0)
        return usage();
    int rc = setup(WITH_PRIMARY);
    if (rc != 0)
        return rc;
    if (!strcmp(a.name, "random"))
        return run_random(a.size, a.count, a.extra ? a.extra : 1);
    if (!strcmp(a.name, "threads"))
        return run_threads(a.size, a.count, a.extra ? a.extra : 16);
    return usage();
}
