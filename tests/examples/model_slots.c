/*
 * model_slots.c — 13 model slots sharing an 8 GiB budget (docs/pool.md).
 *
 * A service keeps models resident on the GPU and loads one when a request
 * needs it. Together the 13 models need 11 GiB, so they cannot all stay:
 * each is loaded as an evictable buffer (VG_ALLOC_EVICTABLE) with a
 * priority, every use touches it (vg_pool_touch), and when a load does not
 * fit the pool evicts the least valuable model: lowest priority first, least
 * recently used within a priority. The eviction callback "copies out" the
 * model's header (a real device read while the memory is still valid) and
 * marks the slot unloaded; the pool frees the memory when it returns.
 *
 * Only the first 4 KiB of each model is written, so the run is quick on the
 * test driver and on a GPU alike. Exits non-zero if an invariant breaks:
 * the pool never holds more than 8 GiB, no load is refused, every evicted
 * header reads back as written.
 *
 *   LD_LIBRARY_PATH=build/fakecuda build/examples/model_slots
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vramguard.h"

#define MiB (1024ull * 1024ull)
#define GiB (1024ull * MiB)
#define SLOTS 13
#define REQUESTS 40
#define HEADER 4096

typedef struct slot {
    const char *name;
    uint64_t bytes;
    int priority; /* higher stays longer */
    vg_buf_t *buf; /* NULL while not loaded */
    int loads, evictions;
    int last_used; /* request number */
} slot_t;

static slot_t slots[SLOTS] = {
    {"embedder", 1536 * MiB, 2, NULL, 0, 0, -1},
    {"ranker", 1024 * MiB, 1, NULL, 0, 0, -1},
    {"safety", 768 * MiB, 1, NULL, 0, 0, -1},
    {"chat-small", 1024 * MiB, 0, NULL, 0, 0, -1},
    {"chat-code", 1280 * MiB, 0, NULL, 0, 0, -1},
    {"summarise", 768 * MiB, 0, NULL, 0, 0, -1},
    {"translate-de", 640 * MiB, 0, NULL, 0, 0, -1},
    {"translate-fr", 640 * MiB, 0, NULL, 0, 0, -1},
    {"ocr", 512 * MiB, 0, NULL, 0, 0, -1},
    {"asr", 896 * MiB, 0, NULL, 0, 0, -1},
    {"tts", 512 * MiB, 0, NULL, 0, 0, -1},
    {"vision", 1024 * MiB, 0, NULL, 0, 0, -1},
    {"rerank-xl", 768 * MiB, 0, NULL, 0, 0, -1},
};

static int failures;
static int request_no;

static void header_of(const slot_t *s, char out[HEADER])
{
    memset(out, 0, HEADER);
    snprintf(out, HEADER, "model %s, %llu MiB", s->name,
             (unsigned long long)(s->bytes / MiB));
}

/* Told to give the memory up: copy out what we keep (the header), forget
 * the buffer handle (the pool frees the memory when we return). */
static void on_evict(vg_pool_t *pool, vg_devptr_t ptr, size_t size, void *user)
{
    slot_t *s = user;
    char want[HEADER], got[HEADER];
    (void)pool;
    header_of(s, want);
    if (vg_buf_ptr(s->buf) != ptr || size != s->bytes ||
        vg_buf_read(s->buf, 0, got, HEADER) != VG_OK ||
        memcmp(want, got, HEADER) != 0) {
        printf("    !! eviction of %s: header did not read back\n", s->name);
        failures++;
    }
    vg_devptr_t gone;
    vg_buf_release(&s->buf, &gone); /* the handle only: the pool frees */
    s->evictions++;
    printf("    evicted %-12s (priority %d, last used at request %d)\n",
           s->name, s->priority, s->last_used);
}

static void load(vg_pool_t *pool, slot_t *s)
{
    vg_alloc_opts_t o = {
        .flags = VG_ALLOC_EVICTABLE,
        .tag = s->name,
        .priority = s->priority,
        .evict = on_evict,
        .evict_user = s,
    };
    char header[HEADER];
    int rc = vg_buf_create(pool, s->bytes, &o, &s->buf);
    if (rc != VG_OK) {
        printf("    !! load of %s refused: %s\n", s->name, vg_strerror(rc));
        failures++;
        return;
    }
    header_of(s, header);
    if (vg_buf_write(s->buf, 0, header, HEADER) != VG_OK)
        failures++;
    s->loads++;
}

static void serve(vg_pool_t *pool, int i)
{
    slot_t *s = &slots[i];
    const char *what = s->buf ? "hit " : "load";
    printf("request %2d: %-12s %s\n", request_no, s->name, what);
    if (s->buf)
        vg_pool_touch(pool, vg_buf_ptr(s->buf));
    else
        load(pool, s);
    s->last_used = request_no;
    vg_pool_stats_t st;
    vg_pool_stats(pool, &st);
    if (st.used > 8 * GiB) {
        printf("    !! pool holds %llu bytes\n", (unsigned long long)st.used);
        failures++;
    }
    printf("    pool %.2f GiB of 8 GiB, %s\n", (double)st.used / GiB,
           vg_pressure_name(vg_pool_pressure(pool)));
}

/* A skewed, repeatable request stream: a few hot models, a long tail. */
static int next_model(uint64_t *x)
{
    *x = *x * 6364136223846793005ull + 1442695040888963407ull;
    unsigned r = (unsigned)(*x >> 33) % 100;
    if (r < 30)
        return 0;                       /* embedder: every third request */
    if (r < 45)
        return 1 + (int)(r % 2);        /* ranker, safety */
    return 3 + (int)((*x >> 40) % 10); /* the tail */
}

int main(void)
{
    vg_pool_t *pool = NULL;
    int rc = vg_pool_create(0, 8 * GiB, &pool);
    if (rc != VG_OK) {
        fprintf(stderr, "model_slots: %s\n", vg_strerror(rc));
        return 2;
    }
    uint64_t total = 0;
    for (int i = 0; i < SLOTS; i++)
        total += slots[i].bytes;
    printf("13 models, %.2f GiB in all, in an 8 GiB pool\n", (double)total / GiB);
    uint64_t x = 42;
    for (request_no = 0; request_no < REQUESTS; request_no++)
        serve(pool, next_model(&x));
    vg_pool_stats_t st;
    vg_pool_stats(pool, &st);
    printf("\n| model | priority | loads | evictions | resident |\n|---|---|---|---|---|\n");
    for (int i = 0; i < SLOTS; i++)
        printf("| %s | %d | %d | %d | %s |\n", slots[i].name, slots[i].priority,
               slots[i].loads, slots[i].evictions, slots[i].buf ? "yes" : "no");
    printf("\nevictions %llu, refusals %llu, peak %.2f GiB of 8 GiB, failures %d\n",
           (unsigned long long)st.evictions, (unsigned long long)st.refusals,
           (double)st.peak / GiB, failures);
    if (st.peak > 8 * GiB || st.refusals)
        failures++;
    for (int i = 0; i < SLOTS; i++)
        vg_buf_destroy(&slots[i].buf);
    vg_pool_destroy(pool, NULL);
    return failures ? 1 : 0;
}
