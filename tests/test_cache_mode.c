/*
 * test_cache_mode.c — the shim's cache mode (VRAMGUARD_POOL=cache,
 * docs/pool.md) as a program meets it. Each test starts a cache-mode
 * client under the preload shim with the test driver (tests/clients/:
 * client_pool.c what is pooled and what the program is told,
 * client_pool_stress.c random and threaded runs, client_pool_edges.c the
 * budget, bad frees, audit, reset and fork), reads its "path=CASE
 * key=value" line and the driver's exit report (FAKECUDA_REPORT:
 * peak_bytes live_bytes allocs frees failed).
 *
 * The proof is the test driver's view, which the shim cannot rewrite: how
 * many cuMemAlloc-family allocations it holds and which one holds an
 * address (fakecuda_live_allocs, fakecuda_range_of, read by the client),
 * and its high-water mark. A pooled block is one whose driver allocation is
 * a 2 MiB or 8 MiB chunk while the program is told the block's own range.
 *
 * Tests named off_... are controls: the same client with the mode off (the
 * default), where every request is its own driver allocation. They show
 * that the measures can tell the two apart, so a cache-mode test that
 * passes is not passing by accident.
 */
#include <criterion/criterion.h>

#include "clientrun.h"
#include "testutil.h"

#define INVALID_VALUE 1    /* CUDA_ERROR_INVALID_VALUE */
#define OUT_OF_MEMORY 2    /* CUDA_ERROR_OUT_OF_MEMORY */
#define NOT_FOUND 500      /* CUDA_ERROR_NOT_FOUND */
#define MEMORYTYPE_DEVICE 2 /* CU_MEMORYTYPE_DEVICE */
#define CHUNK_SMALL (2 * MiB) /* chunks of classes <= 256 KiB */
#define CHUNK_LARGE (8 * MiB) /* chunks of larger classes */

#define CACHE "VRAMGUARD_POOL=cache"
#define OFF "VRAMGUARD_POOL=off"
#define LINKED "CLIENT_API=linked"
#define CUDART "CLIENT_API=cudart"

static const char *const apis[] = {LINKED, CUDART};
#define NAPIS (sizeof apis / sizeof apis[0])

/* ------------------------------------------------------ running the client */

/* Runs a cache-mode client with o (method and path filled in by the
 * caller) and returns its line for o->path; fails the test when there is
 * none. */
static const char *pool_line(const run_opts_t *o, run_result_t *r)
{
    run_client(o, r);
    cr_assert_eq(r->status, 0, "client_%s %s exited %d\nstdout: %s\nstderr: %s", o->method,
                 o->path, r->status, r->out, r->err);
    const char *l = line_for(r->out, o->path);
    cr_assert_not_null(l, "client_%s %s: no answer\nstdout: %s\nstderr: %s", o->method, o->path,
                       r->out, r->err);
    cr_assert(r->report[0], "no driver report\nstderr: %s", r->err);
    return l;
}

/* One field of the client's line; `what` names the run in messages. */
static void expect_field(const char *l, const char *key, long long want, const char *what)
{
    long long got = field(l, key);
    cr_expect_eq(got, want, "%s: %s=%lld, want %lld\n  %.*s", what, key, got, want,
                 (int)strcspn(l, "\n"), l);
}

static void expect_fields(const char *l, const char *const keys[], long long want,
                          const char *what)
{
    for (size_t i = 0; keys[i]; i++)
        expect_field(l, keys[i], want, what);
}

#define KEYS(...) ((const char *const[]){__VA_ARGS__, NULL})

/* ------------------------------------------------------ 1. off by default */

/* 64 allocations of 4 KiB: each is its own driver allocation, and the
 * program and the driver agree on its range. Unset and `off` alike. */
Test(cache_mode, off_by_default_each_allocation_is_its_own_driver_allocation)
{
    static run_result_t r;
    const char *modes[] = {NULL, OFF};
    for (size_t m = 0; m < 2; m++)
        for (size_t a = 0; a < NAPIS; a++) {
            char what[96];
            snprintf(what, sizeof what, "%s, %s", modes[m] ? modes[m] : "mode unset", apis[a]);
            run_opts_t o = {.method = "pool", .path = "count", .chunk = "4096", .max = "64",
                            .env = {apis[a], modes[m]}};
            const char *l = pool_line(&o, &r);
            expect_fields(l, KEYS("rc", "misaligned", "range_rc", "range_off", "drv_off",
                                  "free_failed", "drv_after_free", "again_rc",
                                  "again_free_failed"), 0, what);
            expect_field(l, "allocs", 64, what);
            expect_fields(l, KEYS("drv_new", "again_new"), 64, what);
            expect_field(l, "freed_range_rc", NOT_FOUND, what);
            expect_field(l, "range_size", 4096, what);
            expect_field(l, "drv_found", 1, what);
            expect_field(l, "drv_size", 4096, what);
            expect_field(r.report, "allocs", 128, what); /* two rounds */
        }
}

/* With the mode off the driver's own answers reach the program: the range
 * and buffer id are the driver's, the memory is IPC-capable. */
Test(cache_mode, off_views_are_the_drivers_own)
{
    static run_result_t r;
    run_opts_t o = {.method = "pool", .path = "views", .chunk = "4096", .env = {OFF}};
    const char *l = pool_line(&o, &r);
    const char *what = "views, mode off";
    expect_fields(l, KEYS("alloc_rc", "r0_rc", "r0_off", "rlast_rc", "rlast_off", "a_start_off",
                          "a_ipc_rc", "as_rc", "ipc_rc", "ipc_big_rc", "free_rc",
                          "freed_in_chunk"), 0, what);
    expect_fields(l, KEYS("r0_size", "rlast_size", "a_size", "as_size"), 4096, what);
    expect_fields(l, KEYS("a_ipc", "as_ipc", "id_is_driver", "a_ipc_wrote_4"), 1, what);
    expect_field(l, "freed_range_rc", NOT_FOUND, what);
    expect_field(l, "freed_attr_rc", INVALID_VALUE, what);
}

/* ------------------------------------------------------ 2. what is pooled */

/* Eight requests of one size from 1 byte to 1 MiB cost one driver
 * allocation: a 2 MiB chunk up to 256 KiB, an 8 MiB chunk above. Every
 * block is 256-byte aligned and the program is told its own range. Freed,
 * the blocks go back to the pool (the chunk stays, their addresses are
 * unknown), and eight more of the same size cost no driver allocation. */
Test(cache_mode, small_requests_are_carved_from_one_chunk)
{
    static run_result_t r;
    static const struct { const char *size; long long bytes, chunk; } sizes[] = {
        {"1", 1, CHUNK_SMALL},           {"255", 255, CHUNK_SMALL},
        {"256", 256, CHUNK_SMALL},       {"257", 257, CHUNK_SMALL},
        {"4097", 4097, CHUNK_SMALL},     {"256KiB", 256 * 1024, CHUNK_SMALL},
        {"262145", 262145, CHUNK_LARGE}, {"1MiB", MiB, CHUNK_LARGE},
    };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        char what[96];
        snprintf(what, sizeof what, "8 x %s bytes, %s", sizes[i].size, apis[i % NAPIS]);
        run_opts_t o = {.method = "pool", .path = "count", .chunk = sizes[i].size, .max = "8",
                        .env = {CACHE, apis[i % NAPIS]}};
        const char *l = pool_line(&o, &r);
        expect_fields(l, KEYS("rc", "misaligned", "range_rc", "range_off", "free_failed",
                              "again_rc", "again_new", "again_free_failed"), 0, what);
        expect_field(l, "allocs", 8, what);
        expect_fields(l, KEYS("drv_new", "drv_after_free"), 1, what);
        expect_field(l, "freed_range_rc", NOT_FOUND, what);
        expect_field(l, "range_size", sizes[i].bytes, what);
        expect_field(l, "drv_found", 1, what);
        expect_field(l, "drv_size", sizes[i].chunk, what);
    }
}

/* A thousand 4 KiB requests: a few driver allocations, not a thousand. */
Test(cache_mode, many_small_requests_cost_few_driver_allocations)
{
    static run_result_t r;
    for (size_t a = 0; a < NAPIS; a++) {
        run_opts_t o = {.method = "pool", .path = "count", .chunk = "4096", .max = "1000",
                        .env = {CACHE, apis[a]}};
        const char *l = pool_line(&o, &r);
        expect_fields(l, KEYS("rc", "misaligned", "free_failed", "again_rc",
                              "again_free_failed"), 0, apis[a]);
        expect_field(l, "allocs", 1000, apis[a]);
        long long chunks = field(l, "drv_new"), total = field(r.report, "allocs");
        /* 1000 x 4 KiB = 3.9 MiB: two 2 MiB chunks, a third at most. */
        cr_expect(chunks >= 2 && chunks <= 3, "%s: 1000 blocks took %lld driver allocations\n%s",
                  apis[a], chunks, l);
        /* The second round reuses what the cache kept: at most two chunks more. */
        cr_expect_leq(total, chunks + 2, "%s: the driver made %lld allocations in all (%s)",
                      apis[a], total, r.report);
    }
}

/* A driver that keeps no allocation extents (the benchmarks' null driver)
 * cannot confirm a chunk: the pool asks for one chunk, and from then on
 * every small request goes to the driver for its own size. Each further
 * chunk would be charged, allocated, freed and uncharged on every request
 * (two driver allocations a request, and every thread on the budget's
 * line). */
Test(cache_mode, a_chunk_the_driver_cannot_confirm_is_not_asked_for_again)
{
    static run_result_t r;
    for (size_t a = 0; a < NAPIS; a++) {
        run_opts_t o = {.method = "pool", .path = "count", .chunk = "4096", .max = "64",
                        .env = {CACHE, apis[a], "FAKECUDA_NO_RANGES=1"}};
        const char *l = pool_line(&o, &r);
        expect_fields(l, KEYS("rc", "misaligned", "free_failed", "again_rc",
                              "again_free_failed"), 0, apis[a]);
        expect_field(l, "allocs", 64, apis[a]);
        /* Two rounds of 64: 128 of the program's own, and the one chunk. */
        long long total = field(r.report, "allocs");
        cr_expect(total == 128 + 1, "%s: the driver made %lld allocations in all (%s)",
                  apis[a], total, r.report);
        cr_expect(strstr(r.err, "no chunk is asked for again") != NULL,
                  "%s: no word of it on stderr: %s", apis[a], r.err);
    }
}

/* The legacy 32-bit cuMemAlloc is left to the driver (docs/pool.md: a
 * block's address need not fit 32 bits): one driver allocation each, in
 * either mode, below 4 GiB as the ABI needs. */
Test(cache_mode, legacy_cuMemAlloc_goes_to_the_driver)
{
    static run_result_t r;
    const char *modes[] = {OFF, CACHE};
    for (size_t m = 0; m < 2; m++) {
        run_opts_t o = {.method = "pool", .path = "count_legacy", .chunk = "4096", .max = "8",
                        .env = {modes[m]}};
        const char *l = pool_line(&o, &r);
        expect_fields(l, KEYS("rc", "misaligned", "range_rc", "range_off", "drv_off",
                              "free_failed", "drv_after_free"), 0, modes[m]);
        expect_field(l, "allocs", 8, modes[m]);
        expect_field(l, "range_size", 4096, modes[m]);
        expect_fields(l, KEYS("drv_new", "again_new"), 8, modes[m]);
        expect_field(l, "drv_size", 4096, modes[m]);
    }
}

/* cuMemFreeAsync of a pooled block returns it to the pool too: the driver
 * never sees the address (it would free the chunk, or refuse an interior
 * one), and the blocks are reused. */
Test(cache_mode, cuMemFreeAsync_of_a_pooled_block_returns_it_to_the_pool)
{
    static run_result_t r;
    for (size_t a = 0; a < NAPIS; a++) {
        run_opts_t o = {.method = "pool", .path = "count", .chunk = "4096", .max = "8",
                        .failures = "1", .env = {CACHE, apis[a]}};
        const char *l = pool_line(&o, &r);
        expect_fields(l, KEYS("rc", "free_failed", "again_rc", "again_new",
                              "again_free_failed"), 0, apis[a]);
        expect_fields(l, KEYS("drv_new", "drv_after_free"), 1, apis[a]);
        expect_field(l, "freed_range_rc", NOT_FOUND, apis[a]);
        expect_field(r.report, "failed", 0, apis[a]);
    }
}

/* Four of each: what goes to the driver makes four driver allocations and
 * the program sees the driver's range; 1 MiB (pooled) makes one. */
static void expect_routes(const char *l, const char *what, bool cache)
{
    expect_fields(l, KEYS("edge_rc", "big_rc", "pitch_rc", "managed_rc", "async_rc",
                          "ctx_create_rc", "ctx_rc", "ctx_destroy_rc", "ctx_back_rc", "vmm_rc",
                          "async_not_mempool"), 0, what);
    expect_fields(l, KEYS("big_new", "pitch_new", "managed_new", "ctx_new"), 4, what);
    expect_fields(l, KEYS("big_range", "pitch_range", "managed_range", "async_range",
                          "ctx_range", "vmm_range"), 1, what);
    expect_field(l, "edge_new", cache ? 1 : 4, what);
    expect_field(l, "edge_range", cache ? 0 : 1, what);
}

Test(cache_mode, large_pitch_managed_async_vmm_and_created_contexts_go_to_the_driver)
{
    static run_result_t r;
    for (size_t a = 0; a < NAPIS; a++) {
        char what[64];
        snprintf(what, sizeof what, "cache, %s", apis[a]);
        run_opts_t o = {.method = "pool", .path = "routes", .chunk = "4096",
                        .env = {CACHE, apis[a]}};
        expect_routes(pool_line(&o, &r), what, true);
    }
}

/* The pool lives in the primary context: a program that only ever creates
 * its own contexts gets driver allocations and no primary context. */
Test(cache_mode, a_program_without_the_primary_context_is_never_given_one)
{
    static run_result_t r;
    for (size_t a = 0; a < NAPIS; a++) {
        char what[64];
        snprintf(what, sizeof what, "cache, %s", apis[a]);
        run_opts_t o = {.method = "pool", .path = "created_only", .chunk = "4096",
                        .env = {CACHE, apis[a]}};
        const char *l = pool_line(&o, &r);
        expect_fields(l, KEYS("ctx_create_rc", "alloc_rc", "free_rc", "primary_active"), 0, what);
        expect_field(l, "drv_new", 1, what);
    }
}

Test(cache_mode, off_routes_every_request_to_the_driver)
{
    static run_result_t r;
    run_opts_t o = {.method = "pool", .path = "routes", .chunk = "4096", .env = {OFF}};
    expect_routes(pool_line(&o, &r), "mode off", false);
}

/* ------------------------------------------------------ 3. views */

/* A pooled block of S bytes at P: every address in it has range (P, S),
 * its attributes describe it and not the chunk, its buffer id is its own,
 * it is not IPC-capable and cuIpcGetMemHandle refuses it; once freed, its
 * address is unknown (NOT_FOUND, INVALID_VALUE) while the chunk lives on. */
static void expect_block_views(const char *l, long long size, const char *what)
{
    expect_fields(l, KEYS("alloc_rc", "alloc_q_rc", "alloc_big_rc"), 0, what);
    expect_field(l, "drv_found", 1, what);
    expect_fields(l, KEYS("r0_rc", "r0_off", "r1_rc", "r1_off", "rmid_rc", "rmid_off",
                          "rlast_rc", "rlast_off"), 0, what);
    expect_fields(l, KEYS("r0_size", "r1_size", "rmid_size", "rlast_size"), size, what);
    expect_fields(l, KEYS("a_start_rc", "a_start_off", "a_size_rc", "a_id_rc", "a_ipc_rc",
                          "a_ipc", "a_memtype_rc"), 0, what);
    expect_field(l, "a_size", size, what);
    expect_fields(l, KEYS("id_same_in_block", "id_differs_q", "id_differs_big",
                          "id_differs_driver", "a_ipc_wrote_4"), 1, what);
    expect_field(l, "a_memtype", MEMORYTYPE_DEVICE, what);
    expect_fields(l, KEYS("as_rc", "as_start_off", "as_ipc"), 0, what);
    expect_field(l, "as_size", size, what);
    expect_fields(l, KEYS("as_id_matches", "as_ipc_wrote_4"), 1, what);
    expect_field(l, "as_memtype", MEMORYTYPE_DEVICE, what);
    expect_field(l, "ipc_rc", INVALID_VALUE, what);
    expect_field(l, "ipc_big_rc", 0, what);
    expect_fields(l, KEYS("free_rc", "free_q_rc", "free_big_rc"), 0, what);
    expect_field(l, "freed_in_chunk", 1, what); /* the premise: Q keeps the chunk */
    expect_field(l, "freed_range_rc", NOT_FOUND, what);
    expect_field(l, "freed_attr_rc", INVALID_VALUE, what);
}

Test(cache_mode, a_pooled_block_is_described_as_the_program_made_it)
{
    static run_result_t r;
    static const struct { const char *size; long long bytes; } sizes[] = {
        {"4096", 4096}, {"1000", 1000}, {"1", 1}, {"1MiB", MiB}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        for (size_t a = 0; a < NAPIS; a++) {
            char what[96];
            snprintf(what, sizeof what, "views of %s bytes, %s", sizes[i].size, apis[a]);
            run_opts_t o = {.method = "pool", .path = "views", .chunk = sizes[i].size,
                            .env = {CACHE, apis[a]}};
            expect_block_views(pool_line(&o, &r), sizes[i].bytes, what);
        }
}

/* ------------------------------------------------------ no overlap */

/* Thousands of random requests of 1 byte .. 1 MiB, up to 256 live: no two
 * live blocks overlap (shadow bookkeeping in the client), each is aligned,
 * has its own range, and keeps its bytes (written with cuMemsetD8_v2 and a
 * unique head, read back with cuMemcpyDtoH_v2 before its free). */
static void expect_random(const char *l, const char *what)
{
    expect_fields(l, KEYS("overlaps", "misaligned", "corrupt", "errors", "range_bad"), 0, what);
    cr_expect_gt(field(l, "allocs"), 2000, "%s: %s", what, l);
    cr_expect_eq(field(l, "allocs"), field(l, "frees"), "%s: %s", what, l);
    cr_expect_gt(field(l, "live_max"), 100, "%s: %s", what, l);
}

Test(cache_mode, live_blocks_never_overlap_over_many_random_requests, .timeout = 300)
{
    static run_result_t r;
    static const char *const seeds[] = {"1", "20261122"};
    for (size_t i = 0; i < 2; i++) {
        char what[96];
        snprintf(what, sizeof what, "seed %s, %s", seeds[i], apis[i % NAPIS]);
        run_opts_t o = {.method = "pool_stress", .path = "random", .chunk = "1MiB", .max = "20000",
                        .failures = seeds[i], .env = {CACHE, apis[i % NAPIS]}};
        const char *l = pool_line(&o, &r);
        expect_random(l, what);
        /* The pool was really used: far fewer driver allocations than blocks. */
        long long drv = field(r.report, "allocs");
        cr_expect_lt(drv * 4, field(l, "allocs"), "%s: the driver made %lld allocations for %lld "
                     "blocks", what, drv, field(l, "allocs"));
    }
}

Test(cache_mode, off_random_requests_are_each_the_drivers, .timeout = 300)
{
    static run_result_t r;
    run_opts_t o = {.method = "pool_stress", .path = "random", .chunk = "1MiB", .max = "4000",
                    .failures = "7", .env = {OFF}};
    const char *l = pool_line(&o, &r);
    expect_random(l, "mode off");
    expect_field(r.report, "allocs", field(l, "allocs"), "mode off: driver allocations");
}

/* ------------------------------------------------------ 4. budget */

/* 16 MiB: a 4 KiB block charges its 2 MiB chunk, a 1 MiB block its 8 MiB
 * chunk; freed, they stay cached (the driver still holds them). A 16 MiB
 * request then fits only if the cache is trimmed first, and does; with it
 * held nothing more fits; 17 MiB never fits; 64 KiB blocks fill exactly
 * the budget (8 chunks of 32). The driver never holds more than 16 MiB,
 * and every refusal is the shim's own. */
Test(cache_mode, cached_memory_is_charged_and_trimmed_before_a_refusal)
{
    static run_result_t r;
    run_opts_t o = {.method = "pool_edges", .path = "budget", .chunk = "64KiB", .budget = "16MiB",
                    .env = {CACHE}};
    const char *l = pool_line(&o, &r);
    const char *what = "budget 16 MiB";
    expect_field(l, "total", 16 * MiB, what);
    expect_field(l, "used0", 0, what);
    expect_fields(l, KEYS("small_rc", "mid_rc", "free_small_rc", "free_mid_rc", "big_rc",
                          "free_big_rc", "fill_free_failed"), 0, what);
    expect_field(l, "used_small", CHUNK_SMALL, what);
    expect_field(l, "used_mid", CHUNK_SMALL + CHUNK_LARGE, what);
    long long cached = field(l, "drv_cached");
    cr_expect(cached > 0 && cached <= (long long)(CHUNK_SMALL + CHUNK_LARGE),
              "%s: the driver holds %lld bytes for the emptied cache; the 16 MiB request "
              "proves a trim only if it holds some\n%s", what, cached, l);
    expect_field(l, "full_small_rc", OUT_OF_MEMORY, what);
    expect_field(l, "over_rc", OUT_OF_MEMORY, what);
    expect_field(l, "fill_allocs", 256, what);
    expect_field(l, "fill_rc", OUT_OF_MEMORY, what);
    cr_expect_leq(field(l, "fill_drv_used"), (long long)(16 * MiB), "%s: %s", what, l);
    cr_expect_leq(field(r.report, "peak_bytes"), (long long)(16 * MiB),
                  "%s: driver peak over the budget: %s", what, r.report);
    expect_field(r.report, "failed", 0, what);
}

/* ------------------------------------------------------ 5. frees */

/* Two 4 KiB blocks P and Q in one chunk; P freed, then freed again, Q+256
 * freed, and an address of the chunk never handed out freed. One of P or
 * that address is the chunk's base, which the driver would free whole.
 * Afterwards the chunk is still the driver's, Q still reads and writes. */
static void expect_badfree(const char *policy, long long want_rc)
{
    static run_result_t r;
    char pol[64], what[64];
    snprintf(pol, sizeof pol, "VRAMGUARD_ON_BAD_POINTER=%s", policy);
    snprintf(what, sizeof what, "bad frees under %s", policy);
    run_opts_t o = {.method = "pool_edges", .path = "badfree", .chunk = "4096",
                    .env = {CACHE, pol}};
    const char *l = pool_line(&o, &r);
    expect_fields(l, KEYS("alloc_rc", "alloc_q_rc", "free_rc", "drv_lost", "free_q_rc"), 0, what);
    expect_fields(l, KEYS("same_chunk", "chunk_alive", "q_usable", "q_range"), 1, what);
    expect_field(l, "chunk_size", CHUNK_SMALL, what);
    cr_expect(field(l, "p_at_chunk_base") == 1 || field(l, "never_at_chunk_base") == 1,
              "%s: neither bad free named the chunk's base\n%s", what, l);
    expect_fields(l, KEYS("double_rc", "interior_rc", "never_rc"), want_rc, what);
}

Test(cache_mode, bad_frees_in_a_chunk_are_refused_under_reject)
{
    expect_badfree("reject", INVALID_VALUE);
}

/* Under warn the program gets what the driver says of an address it did
 * not hand out, INVALID_VALUE, and the chunk never reaches cuMemFree. */
Test(cache_mode, bad_frees_in_a_chunk_never_free_the_chunk_under_warn)
{
    expect_badfree("warn", INVALID_VALUE);
}

/* ------------------------------------------------------ 6. audit log */

/* True when `l` (one line) holds "key":value exactly (value as written). */
static bool has_value(const char *l, size_t len, const char *key, const char *value)
{
    char want[160];
    int n = snprintf(want, sizeof want, "\"%s\":%s", key, value);
    for (const char *p = l; (p = strstr(p, want)) && p < l + len; p++) {
        char next = p[n];
        if (next == ',' || next == '}')
            return true;
    }
    return false;
}

/* Lines of `log` with op `op` and, when given, ptr and size. */
static int count_lines(const char *log, const char *op, const char *ptr, const char *size)
{
    int n = 0;
    char qop[32], qptr[64];
    snprintf(qop, sizeof qop, "\"%s\"", op);
    snprintf(qptr, sizeof qptr, "\"%s\"", ptr ? ptr : "");
    for (const char *l = log; *l;) {
        size_t len = strcspn(l, "\n");
        n += has_value(l, len, "op", qop) && (!ptr || has_value(l, len, "ptr", qptr)) &&
             (!size || has_value(l, len, "size", size));
        l += len + (l[len] == '\n');
    }
    return n;
}

Test(cache_mode, each_pooled_allocation_and_free_has_its_own_audit_line)
{
    static run_result_t r;
    char log[] = "/tmp/vg-cache-audit-XXXXXX", audit[128];
    int fd = mkstemp(log);
    cr_assert_geq(fd, 0);
    close(fd);
    unlink(log); /* the shim creates it */
    snprintf(audit, sizeof audit, "VRAMGUARD_AUDIT=%s", log);
    run_opts_t o = {.method = "pool_edges", .path = "audit", .chunk = "2048",
                    .env = {CACHE, audit}};
    const char *l = pool_line(&o, &r);
    expect_field(l, "allocs", 8, "audit");
    expect_field(l, "failed", 0, "audit");
    char *text = read_whole_file(log);
    int blocks = 0;
    for (const char *b = r.out; (b = strstr(b, "path=audit_block ")); b++, blocks++) {
        char size[32], ptr[32];
        cr_assert_eq(sscanf(b, "path=audit_block size=%31s ptr=%31s", size, ptr), 2);
        cr_expect_eq(count_lines(text, "alloc", ptr, size), 1,
                     "no alloc line with ptr %s and size %s in\n%s", ptr, size, text);
        cr_expect_eq(count_lines(text, "free", ptr, size), 1,
                     "no free line with ptr %s and size %s in\n%s", ptr, size, text);
    }
    cr_expect_eq(blocks, 8);
    /* The chunks are vramguard's own, not the program's: no lines of theirs. */
    cr_expect_eq(count_lines(text, "alloc", NULL, NULL), 8, "alloc lines:\n%s", text);
    cr_expect_eq(count_lines(text, "free", NULL, NULL), 8, "free lines:\n%s", text);
    free(text);
    unlink(log);
}

/* ------------------------------------------------------ 7. reset */

/* Ten blocks, cuDevicePrimaryCtxReset_v2 (cudaDeviceReset), ten more: the
 * reset gives the chunk's charge back, and the new blocks come from a
 * fresh chunk the driver really holds (their range, bytes and the driver's
 * own view all agree). */
Test(cache_mode, a_primary_context_reset_releases_the_pool)
{
    static run_result_t r;
    for (size_t a = 0; a < NAPIS; a++) {
        run_opts_t o = {.method = "pool_edges", .path = "reset", .chunk = "4096", .max = "10",
                        .budget = "64MiB", .env = {CACHE, apis[a]}};
        const char *l = pool_line(&o, &r);
        expect_fields(l, KEYS("used0", "before_rc", "reset_rc", "retain_rc", "set_current_rc",
                              "used_after_reset", "drv_after_reset", "after_rc", "free_failed"),
                      0, apis[a]);
        expect_fields(l, KEYS("before_sound", "after_sound"), 10, apis[a]);
        expect_fields(l, KEYS("used_before", "used_after"), CHUNK_SMALL, apis[a]);
        cr_expect_leq(field(r.report, "peak_bytes"), (long long)(64 * MiB), "%s", r.report);
    }
}

/* ------------------------------------------------------ fork */

/* A program that forks after the pool exists: the child makes and frees
 * blocks from the pool it inherited, in a class the parent used and in one
 * it did not (a new chunk, so the chunk index is written in the child).
 * A lock the fork left held would hang it (the client gives it 20 s). */
Test(cache_mode, a_forked_child_allocates_from_the_pool, .timeout = 120)
{
    static run_result_t r;
    const char *modes[] = {OFF, CACHE};
    for (size_t m = 0; m < 2; m++) {
        run_opts_t o = {.method = "pool_edges", .path = "fork", .chunk = "4096", .max = "16",
                        .env = {modes[m]}};
        const char *l = pool_line(&o, &r);
        expect_fields(l, KEYS("held_rc", "child_status", "parent_rc", "free_held_rc"), 0,
                      modes[m]);
    }
}

/* ------------------------------------------------------ 8. threads */

/* 16 threads, thousands of requests each of 1 byte .. 64 KiB: no overlap
 * across threads, no error, no corrupted bytes; afterwards the whole
 * budget can be had again (every chunk trimmed, no charge left) and the
 * use returns to where it began. */
static void expect_threads(const char *mode, const char *iterations)
{
    static run_result_t r;
    char what[64];
    snprintf(what, sizeof what, "16 threads, %s", mode);
    run_opts_t o = {.method = "pool_stress", .path = "threads", .chunk = "64KiB", .max = iterations,
                    .failures = "16", .budget = "256MiB", .env = {mode}};
    const char *l = pool_line(&o, &r);
    expect_fields(l, KEYS("overlaps", "misaligned", "corrupt", "errors", "ctx_sync_rc",
                          "whole_rc", "whole_free_rc", "used0"), 0, what);
    expect_field(l, "ops", 16 * atoll(iterations), what);
    expect_field(l, "used_end", field(l, "used0"), what);
    cr_expect_eq(field(l, "allocs"), field(l, "frees"), "%s: %s", what, l);
    cr_expect_gt(field(l, "allocs"), 16 * atoll(iterations) / 4, "%s: %s", what, l);
    cr_expect_leq(field(r.report, "peak_bytes"), (long long)(256 * MiB), "%s", r.report);
}

Test(cache_mode, sixteen_threads_share_the_pool_safely, .timeout = 300)
{
    expect_threads(CACHE, "5000");
}

Test(cache_mode, off_sixteen_threads_allocate_safely, .timeout = 300)
{
    expect_threads(OFF, "500");
}
