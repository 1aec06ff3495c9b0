/*
 * client_pool_edges.c — a client for the cache-mode tests
 * (tests/test_cache_mode.c, VRAMGUARD_POOL=cache, docs/pool.md): the
 * budget with the cache full, bad frees inside a chunk, the audit log's
 * view of pooled blocks, a primary-context reset, and a forked child. The
 * command line, output and API choice (CLIENT_API): pool_common.h.
 *
 * Cases (SIZE in bytes or with KiB/MiB; defaults in brackets):
 *   budget SIZE           the budget with the cache full (VRAMGUARD_BUDGET),
 *                         then filled with SIZE blocks
 *   badfree SIZE          double, interior and never-made frees in a chunk
 *   audit SIZE            blocks of several sizes, one line each, freed
 *   reset SIZE N          N blocks, cuDevicePrimaryCtxReset_v2, N more
 *   fork SIZE N           a forked child makes and frees N blocks, twice
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pool_common.h"

/* ------------------------------------------------------------ budget */

/* Fills the budget with `size` blocks until the first refusal; frees them. */
static void budget_fill(size_t size)
{
    enum { MAX = 4096 };
    static CUdeviceptr p[MAX];
    size_t n = 0;
    CUresult rc = CUDA_SUCCESS;
    while (n < MAX && (rc = cu.mem_alloc(&p[n], size)) == CUDA_SUCCESS)
        n++;
    out("fill_allocs", (long long)n);
    out("fill_rc", rc);
    out("fill_drv_used", drv_used());
    long long failed = 0;
    while (n)
        failed += cu.mem_free(p[--n]) != CUDA_SUCCESS;
    out("fill_free_failed", failed);
}

/* The budget (VRAMGUARD_BUDGET, set by the test) is what cuMemGetInfo
 * reports as total; the fill at the end uses blocks of `size`. */
static int run_budget(size_t size)
{
    CUdeviceptr small = 0, mid = 0, big = 0, extra = 0;
    long long total = 0;
    out_begin("budget");
    long long used0 = seen_used(&total);
    out("total", total);
    out("used0", used0);
    out("small_rc", cu.mem_alloc(&small, 4096));
    out("used_small", seen_used(NULL));
    out("mid_rc", cu.mem_alloc(&mid, MiB));
    out("used_mid", seen_used(NULL));
    out("free_small_rc", cu.mem_free(small));
    out("free_mid_rc", cu.mem_free(mid));
    out("drv_cached", drv_used()); /* what the pool still holds */
    out("big_rc", cu.mem_alloc(&big, (size_t)(total - used0)));
    out("full_small_rc", cu.mem_alloc(&extra, 4096));
    if (extra)
        cu.mem_free(extra);
    out("free_big_rc", big ? (long long)cu.mem_free(big) : -1);
    big = 0;
    out("over_rc", cu.mem_alloc(&big, (size_t)total + MiB));
    if (big)
        cu.mem_free(big);
    budget_fill(size);
    out("used_end", seen_used(NULL));
    out_end();
    return 0;
}

/* ------------------------------------------------------------ badfree */

/* An address in P's chunk that was never handed out: the chunk's base or
 * its middle or its last SIZE bytes, whichever is neither P nor Q. */
static CUdeviceptr never_made(CUdeviceptr c, size_t csize, size_t size, CUdeviceptr p,
                              CUdeviceptr q)
{
    CUdeviceptr cand[3] = {c, c + csize / 2 / size * size, c + csize - size};
    for (int i = 0; i < 3; i++)
        if (cand[i] != p && cand[i] != q)
            return cand[i];
    return 0;
}

/* Q's bytes can still be written and read back. */
static int still_usable(CUdeviceptr q, size_t size)
{
    return fill(q, size, 0x1122334455667788ull, 0x5a) == CUDA_SUCCESS &&
           intact(q, size, 0x1122334455667788ull, 0x5a) == 1;
}

static int run_badfree(size_t size)
{
    CUdeviceptr p = 0, q = 0, c = 0, c2 = 0, b = 0;
    size_t csize = 0, csize2 = 0, s = 0;
    out_begin("badfree");
    out("alloc_rc", cu.mem_alloc(&p, size));
    out("alloc_q_rc", cu.mem_alloc(&q, size));
    int in_chunk = drv_range(p, &c, &csize, NULL);
    CUdeviceptr x = in_chunk == 1 ? never_made(c, csize, size, p, q) : 0;
    out("same_chunk", in_chunk == 1 && drv_range(q, &c2, NULL, NULL) == 1 && c2 == c);
    out("chunk_size", (long long)csize);
    out("p_at_chunk_base", p == c);
    long long live0 = drv_live();
    out("free_rc", cu.mem_free(p));
    out("double_rc", cu.mem_free(p));
    out("interior_rc", cu.mem_free(q + 256));
    out("never_rc", x ? (long long)cu.mem_free(x) : -1);
    out("never_at_chunk_base", x && x == c);
    out("drv_lost", live0 < 0 ? -1 : live0 - drv_live());
    out("chunk_alive", drv_range(q, &c2, &csize2, NULL) == 1 && c2 == c && csize2 == csize);
    out("q_usable", still_usable(q, size));
    out("q_range", cu.get_range(&b, &s, q + 1) == CUDA_SUCCESS && b == q && s == size);
    out("free_q_rc", cu.mem_free(q));
    out_end();
    return 0;
}

/* ------------------------------------------------------------ audit */

/* One line per block ("path=audit_block size=S ptr=0x..."), then frees. */
static int run_audit(size_t size)
{
    size_t sizes[] = {1, 255, 256, 4097, 65536, 300000, MiB, size};
    enum { N = sizeof sizes / sizeof sizes[0] };
    CUdeviceptr p[N] = {0};
    long long failed = 0, made = 0;
    for (size_t i = 0; i < N; i++) {
        if (cu.mem_alloc(&p[i], sizes[i]) != CUDA_SUCCESS) {
            failed++;
            continue;
        }
        made++;
        printf("path=audit_block size=%zu ptr=0x%llx\n", sizes[i], (unsigned long long)p[i]);
    }
    for (size_t i = N; i > 0; i--)
        if (p[i - 1])
            failed += cu.mem_free(p[i - 1]) != CUDA_SUCCESS;
    out_begin("audit");
    out("allocs", made);
    out("failed", failed);
    out_end();
    return 0;
}

/* ------------------------------------------------------------ reset */

/* n blocks of size; how many are sound (range, driver memory, bytes). */
static long long reset_round(CUdeviceptr *p, size_t n, size_t size, CUresult *first)
{
    long long sound = 0;
    *first = CUDA_SUCCESS;
    for (size_t i = 0; i < n; i++) {
        CUdeviceptr b = 0;
        size_t s = 0;
        CUresult rc = cu.mem_alloc(&p[i], size);
        if (rc != CUDA_SUCCESS) {
            if (*first == CUDA_SUCCESS)
                *first = rc;
            p[i] = 0;
            continue;
        }
        sound += cu.get_range(&b, &s, p[i]) == CUDA_SUCCESS && b == p[i] && s == size &&
                 drv_range(p[i], NULL, NULL, NULL) != 0 && still_usable(p[i], size);
    }
    return sound;
}

static int run_reset(size_t size, size_t n)
{
    CUdeviceptr *p = calloc(n, sizeof *p);
    CUresult first;
    CUcontext again = NULL;
    if (!p)
        return 3;
    out_begin("reset");
    long long used0 = seen_used(NULL), live0 = drv_live();
    out("used0", used0);
    out("before_sound", reset_round(p, n, size, &first));
    out("before_rc", first);
    out("used_before", seen_used(NULL));
    out("reset_rc", cu.primary_reset(dev));
    /* cudart retains the primary context again after cudaDeviceReset. */
    out("retain_rc", cu.primary_retain(&again, dev));
    out("set_current_rc", cu.ctx_set_current(again));
    out("used_after_reset", seen_used(NULL));
    out("drv_after_reset", live0 < 0 ? -1 : drv_live() - live0);
    out("after_sound", reset_round(p, n, size, &first));
    out("after_rc", first);
    out("used_after", seen_used(NULL));
    long long failed = 0;
    for (size_t i = n; i > 0; i--)
        if (p[i - 1])
            failed += cu.mem_free(p[i - 1]) != CUDA_SUCCESS;
    out("free_failed", failed);
    out_end();
    free(p);
    return 0;
}

/* ------------------------------------------------------------ fork */

/* n blocks of size made and freed; 0, or the first failure. */
static CUresult fork_round(size_t size, size_t n)
{
    CUdeviceptr p[64];
    CUresult rc = CUDA_SUCCESS;
    size_t made = 0;
    n = n < 64 ? n : 64;
    while (made < n && (rc = cu.mem_alloc(&p[made], size)) == CUDA_SUCCESS)
        made++;
    while (made)
        if (cu.mem_free(p[--made]) != CUDA_SUCCESS && rc == CUDA_SUCCESS)
            rc = CUDA_ERROR_UNKNOWN;
    return rc;
}

/* The parent holds one block (the pool exists), forks; the child makes
 * and frees n blocks of its own and n of a size class the parent never
 * used (a new chunk), with 20 s to do it (SIGALRM ends a hung child). */
static int run_fork(size_t size, size_t n)
{
    CUdeviceptr held = 0;
    int status = 0;
    out_begin("fork");
    out("held_rc", cu.mem_alloc(&held, size));
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        return 3;
    if (pid == 0) {
        alarm(20);
        CUresult rc = fork_round(size, n);
        if (rc == CUDA_SUCCESS)
            rc = fork_round(size * 3 + 1, n);
        _exit(rc == CUDA_SUCCESS ? 0 : 1);
    }
    if (waitpid(pid, &status, 0) != pid)
        return 3;
    out("child_status", WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    out("parent_rc", fork_round(size * 5 + 1, n));
    out("free_held_rc", cu.mem_free(held));
    out_end();
    return 0;
}

/* ---------------------------------------------------------------- main */

static int usage(void)
{
    fprintf(stderr, "usage: client_pool_edges CASE SIZE [COUNT [EXTRA]]\n"
                    "  CASE: budget badfree audit reset fork\n");
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
    if (!strcmp(a.name, "budget"))
        return run_budget(a.size);
    if (!strcmp(a.name, "badfree"))
        return run_badfree(a.size);
    if (!strcmp(a.name, "audit"))
        return run_audit(a.size);
    if (!strcmp(a.name, "reset"))
        return run_reset(a.size, a.count);
    if (!strcmp(a.name, "fork"))
        return run_fork(a.size, a.count);
    return usage();
}
