/*
 * bench_pairs.c — what the shim adds to a cuMemAlloc_v2 + cuMemFree_v2
 * pair. No vramguard code: linked with -lcuda (the toolkit stub, no rpath),
 * it calls whatever libcuda.so.1 the loader finds, and the shim only when
 * it is preloaded.
 *
 * The parent starts one worker process per configuration (native, shim,
 * shim with a budget, and a second native one as a control), each with its
 * own environment, its own CUDA context and its own core (2, 4, 6, 8 of
 * the allowed CPUs), and hands them rounds over pipes. The order rotates
 * each round (A B C D, B C D A, ...) so none is always first, and only one
 * worker runs at a time. Drift between rounds falls on every configuration
 * alike, so the shim's cost is read from per-round paired differences
 * (shim round median - native round median), not from two far-apart
 * medians; the control's difference from native is the floor of what a
 * difference between two processes can mean.
 *
 *   bench_pairs --preload PATH [--rounds R] [--budget TEXT] [--hooked]
 *               [--threads LIST] [--pairs N] [--thread-rounds R]
 *
 * Default (the GPU): each pair timed on its own (CLOCK_MONOTONIC, ~20 ns),
 * sizes 4 KiB, 1 MiB, 64 MiB, and a 4 KiB cuMemAllocAsync + cuMemFreeAsync
 * pair on one stream; 1 and 16 threads. --hooked: over the null
 * driver (tests/nulldriver; LD_LIBRARY_PATH), where a native pair costs a
 * few ns: samples are batches of 100 pairs (plain, then stream-ordered), the
 * shim's cost per hooked call is (shim - native) / 2 per plain pair, then
 * rounds of 64 allocations and their 64 frees (per allocation+free), and
 * throughput is measured on 1, 2, 4, 8 and 16 threads (each pinned, each with its own ballast). --pairs: the
 * pairs each thread makes in a throughput round (default 500 on the GPU,
 * where 16 native threads make ~160 k pairs/s in all; 200000 hooked). A
 * round of VRAMGUARD_POOL=cache needs many more than 500: at ~100 ns a pair
 * the threads' start-up skew (tens of us) would be most of it.
 * --thread-rounds: rounds of each throughput row (default 7 on the GPU,
 * 11 hooked); 16 native threads differ by up to 6% from round to round.
 *
 * Prints BENCH| rows (the benchmark table, markdown cells) and RESULT| rows
 * (gpu_common.h). A worker error is a FAIL row; targets missed are info.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cuda.h>

#include "gpu_common.h"

enum { OP_EXIT, OP_PAIRS, OP_THREADS };
#define SAMPLE_ERROR UINT32_MAX
#define MAX_SAMPLES (1u << 16)
#define MAX_ROUNDS 201
#define MAX_THREADS 64
#define BALLAST 4096

struct cmd {
    int op;
    int threads;
    uint32_t n;     /* samples (OP_PAIRS) or pairs per thread (OP_THREADS) */
    uint32_t batch; /* pairs per sample (OP_PAIRS) */
    uint64_t size;
    bool async;     /* OP_PAIRS: cuMemAllocAsync + cuMemFreeAsync on one stream */
    uint32_t depth; /* OP_PAIRS, plain: each pair is `depth` allocations, then their
                       frees in order; the sample is per allocation+free (0, 1: pairs) */
};
#define MAX_DEPTH 256

/* ------------------------------------------------------------ pinning */

static int cpus[CPU_SETSIZE]; /* the CPUs this process may run on */
static int ncpus;

static void cpus_load(void)
{
    cpu_set_t s;
    CPU_ZERO(&s);
    if (sched_getaffinity(0, sizeof s, &s) == 0)
        for (int i = 0; i < CPU_SETSIZE; i++)
            if (CPU_ISSET(i, &s))
                cpus[ncpus++] = i;
    if (ncpus == 0)
        cpus[ncpus++] = 0;
}

/* Pins the calling thread to the slot-th allowed CPU (wrapping). */
static void pin_slot(int slot)
{
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpus[slot % ncpus], &s);
    sched_setaffinity(0, sizeof s, &s);
}

/* ------------------------------------------------------------ worker */

static CUcontext worker_ctx;
static CUstream worker_stream; /* made at the first async command */

static bool read_full(int fd, void *buf, size_t n)
{
    for (char *p = buf; n;) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        p += r, n -= (size_t)r;
    }
    return true;
}

static bool write_full(int fd, const void *buf, size_t n)
{
    for (const char *p = buf; n;) {
        ssize_t r = write(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        p += r, n -= (size_t)r;
    }
    return true;
}

/* One pair: plain, or stream-ordered on the worker's stream (no sync:
 * a free on the same stream makes the block reusable by the next
 * allocation at once, so the pool does not grow). */
static bool one_pair(uint64_t size, bool async)
{
    CUdeviceptr p = 0;
    CUresult a = async ? cuMemAllocAsync(&p, size, worker_stream) : cuMemAlloc(&p, size);
    CUresult f = a != CUDA_SUCCESS ? a : async ? cuMemFreeAsync(p, worker_stream) : cuMemFree(p);
    return a == CUDA_SUCCESS && f == CUDA_SUCCESS;
}

/* `depth` plain allocations, then their frees in the same order. */
static bool one_depth(uint64_t size, uint32_t depth)
{
    CUdeviceptr p[MAX_DEPTH];
    bool ok = true;
    uint32_t made = 0;
    for (; made < depth && ok; made++)
        ok = cuMemAlloc(&p[made], size) == CUDA_SUCCESS;
    if (!ok)
        made--;
    for (uint32_t i = 0; i < made; i++)
        ok &= cuMemFree(p[i]) == CUDA_SUCCESS;
    return ok;
}

/* n samples, each the wall time (ns) of `batch` back-to-back pairs (with
 * depth > 1, of `batch` rounds of one_depth, per allocation+free). */
static void time_pairs(uint64_t size, bool async, uint32_t n, uint32_t batch, uint32_t depth,
                       uint32_t *ns)
{
    if (async && !worker_stream &&
        cuStreamCreate(&worker_stream, CU_STREAM_NON_BLOCKING) != CUDA_SUCCESS) {
        for (uint32_t i = 0; i < n; i++)
            ns[i] = SAMPLE_ERROR;
        return;
    }
    for (uint32_t i = 0; i < n; i++) {
        bool bad = false;
        uint64_t t0 = gpu_now_ns();
        for (uint32_t j = 0; j < batch; j++)
            bad |= depth > 1 ? !one_depth(size, depth) : !one_pair(size, async);
        uint64_t dt = (gpu_now_ns() - t0) / (depth > 1 ? depth : 1);
        ns[i] = bad ? SAMPLE_ERROR : dt >= SAMPLE_ERROR ? SAMPLE_ERROR - 1 : (uint32_t)dt;
    }
}

struct mt_arg {
    pthread_barrier_t *start;
    int slot;
    uint32_t n;
    uint64_t t0, t1;
    int errors;
};

/* One thread of OP_THREADS: its own core, its own ballast (so no thread's
 * pairs map and unmap a chunk), n pairs of 4 KiB between two clock reads. */
static void *mt_main(void *p)
{
    struct mt_arg *a = p;
    CUdeviceptr ballast = 0;
    pin_slot(a->slot);
    cuCtxSetCurrent(worker_ctx);
    if (cuMemAlloc(&ballast, BALLAST) != CUDA_SUCCESS)
        a->errors++;
    pthread_barrier_wait(a->start);
    a->t0 = gpu_now_ns();
    for (uint32_t i = 0; i < a->n; i++) {
        CUdeviceptr d = 0;
        if (cuMemAlloc(&d, 4 * KIB) != CUDA_SUCCESS || cuMemFree(d) != CUDA_SUCCESS)
            a->errors++;
    }
    a->t1 = gpu_now_ns();
    if (ballast && cuMemFree(ballast) != CUDA_SUCCESS)
        a->errors++;
    return NULL;
}

/* Wall time (ns) from the first thread's start to the last one's end;
 * UINT64_MAX on any error. Thread i runs on the i-th allowed CPU. */
static uint64_t time_threads(int threads, uint32_t n)
{
    pthread_t tid[MAX_THREADS];
    struct mt_arg arg[MAX_THREADS];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)threads);
    for (int i = 0; i < threads; i++) {
        arg[i] = (struct mt_arg){.start = &start, .slot = i, .n = n};
        pthread_create(&tid[i], NULL, mt_main, &arg[i]);
    }
    uint64_t t0 = UINT64_MAX, t1 = 0;
    int errors = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(tid[i], NULL);
        t0 = arg[i].t0 < t0 ? arg[i].t0 : t0;
        t1 = arg[i].t1 > t1 ? arg[i].t1 : t1;
        errors += arg[i].errors;
    }
    pthread_barrier_destroy(&start);
    return errors ? UINT64_MAX : t1 - t0;
}

static CUresult worker_start(CUdeviceptr *ballast)
{
    CUdevice dev;
    CUresult rc = cuInit(0);
    if (rc == CUDA_SUCCESS)
        rc = cuDeviceGet(&dev, 0);
    if (rc == CUDA_SUCCESS)
        rc = cuDevicePrimaryCtxRetain(&worker_ctx, dev);
    if (rc == CUDA_SUCCESS)
        rc = cuCtxSetCurrent(worker_ctx);
    /* Ballast: one small allocation held for the whole run keeps the
     * driver's 2 MiB sub-allocation chunk mapped. Without it every 4 KiB
     * pair maps and unmaps a chunk (~70 us on an H100, 2026-11-22), and
     * that churn drowns the few ns the shim adds. */
    if (rc == CUDA_SUCCESS)
        rc = cuMemAlloc(ballast, BALLAST);
    return rc;
}

static int worker(int in, int out, int slot)
{
    cpus_load();
    pin_slot(slot);
    CUdeviceptr ballast = 0;
    CUresult rc = worker_start(&ballast);
    int ready = (int)rc;
    if (!write_full(out, &ready, sizeof ready) || rc != CUDA_SUCCESS)
        return 1;
    static uint32_t ns[MAX_SAMPLES];
    struct cmd c;
    while (read_full(in, &c, sizeof c) && c.op != OP_EXIT) {
        if (c.op == OP_PAIRS) {
            uint32_t n = c.n < MAX_SAMPLES ? c.n : MAX_SAMPLES;
            uint32_t depth = c.depth < MAX_DEPTH ? c.depth : MAX_DEPTH;
            time_pairs(c.size, c.async, n, c.batch ? c.batch : 1, depth, ns);
            if (!write_full(out, ns, n * sizeof ns[0]))
                return 1;
        } else {
            int t = c.threads < 1 ? 1 : c.threads > MAX_THREADS ? MAX_THREADS : c.threads;
            uint64_t wall = time_threads(t, c.n);
            pin_slot(slot); /* time_threads leaves this thread alone; be sure */
            if (!write_full(out, &wall, sizeof wall))
                return 1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------ parent */

/* CONF_CONTROL is native again, in its own process: native vs control is
 * what two identical processes differ by. */
enum { CONF_NATIVE, CONF_SHIM, CONF_BUDGET, CONF_CONTROL, CONFS };
static const char *conf_name[CONFS] = {"native", "shim", "shim+budget", "native control"};

struct child {
    pid_t pid;
    int to, from;
    bool dead;
};

static struct child kids[CONFS];

static bool spawn(int conf, const char *preload, const char *budget)
{
    int down[2], up[2];
    if (pipe(down) || pipe(up))
        return false;
    pid_t pid = fork();
    if (pid < 0)
        return false;
    if (pid == 0) {
        close(down[1]), close(up[0]);
        unsetenv("LD_PRELOAD");
        unsetenv("VRAMGUARD_BUDGET");
        if (conf == CONF_SHIM || conf == CONF_BUDGET)
            setenv("LD_PRELOAD", preload, 1);
        if (conf == CONF_BUDGET)
            setenv("VRAMGUARD_BUDGET", budget, 1);
        char in[16], out[16], slot[16];
        snprintf(in, sizeof in, "%d", down[0]);
        snprintf(out, sizeof out, "%d", up[1]);
        snprintf(slot, sizeof slot, "%d", 2 + 2 * conf); /* cores apart */
        execl("/proc/self/exe", "bench_pairs", "--worker", in, out, slot, (char *)NULL);
        _exit(127);
    }
    close(down[0]), close(up[1]);
    kids[conf] = (struct child){.pid = pid, .to = down[1], .from = up[0]};
    int ready = -1;
    if (!read_full(kids[conf].from, &ready, sizeof ready) || ready != 0) {
        gpu_row("bench_start", "FAIL", "%s worker did not start (CUresult %d)",
                conf_name[conf], ready);
        kids[conf].dead = true;
        return false;
    }
    return true;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The q-quantile (0..1) of v[0..n), nearest rank; sorts v. 0 when empty. */
static double qd(double *v, size_t n, double q)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof *v, cmp_double);
    size_t i = (size_t)(q * (double)(n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

struct spread {
    double p10, p50, p90;
};

/* p10/p50/p90 of a copy of v[0..n). */
static struct spread spread_of(const double *v, size_t n)
{
    double tmp[MAX_ROUNDS];
    n = n < MAX_ROUNDS ? n : MAX_ROUNDS;
    memcpy(tmp, v, n * sizeof *v);
    return (struct spread){qd(tmp, n, 0.1), qd(tmp, n, 0.5), qd(tmp, n, 0.9)};
}

/* One round of samples in one worker: appends ns per pair to all[] (when
 * given) and returns the round's median (0 when nothing came back). */
static double round_pairs(int conf, const struct cmd *c, double *all, size_t *len, int *errors)
{
    static uint32_t ns[MAX_SAMPLES];
    static double mine[MAX_SAMPLES];
    size_t m = 0;
    if (kids[conf].dead || !write_full(kids[conf].to, c, sizeof *c) ||
        !read_full(kids[conf].from, ns, c->n * sizeof ns[0])) {
        kids[conf].dead = true;
        (*errors)++;
        return 0;
    }
    for (uint32_t i = 0; i < c->n; i++) {
        if (ns[i] == SAMPLE_ERROR) {
            (*errors)++;
            continue;
        }
        mine[m++] = (double)ns[i] / c->batch;
        if (all)
            all[(*len)++] = (double)ns[i] / c->batch;
    }
    return qd(mine, m, 0.5);
}

static void fmt_size(uint64_t size, char *buf, size_t len)
{
    if (size >= MIB)
        snprintf(buf, len, "%llu MiB", (unsigned long long)(size / MIB));
    else
        snprintf(buf, len, "%llu KiB", (unsigned long long)(size / KIB));
}

/* Per-round paired differences and ratios of conf against native. */
static void paired(double rmed[CONFS][MAX_ROUNDS], int conf, int rounds, struct spread *diff,
                   struct spread *ratio)
{
    double d[MAX_ROUNDS], q[MAX_ROUNDS];
    for (int r = 0; r < rounds; r++) {
        d[r] = rmed[conf][r] - rmed[CONF_NATIVE][r];
        q[r] = rmed[CONF_NATIVE][r] > 0 ? rmed[conf][r] / rmed[CONF_NATIVE][r] : 0;
    }
    *diff = spread_of(d, (size_t)rounds);
    *ratio = spread_of(q, (size_t)rounds);
}

struct pairs_result {
    struct spread all[CONFS];  /* over every sample of every round */
    struct spread rm[CONFS];   /* over the round medians */
    struct spread diff[CONFS]; /* paired: conf - native, per round */
    struct spread ratio[CONFS];
    int errors;
};

/* Runs `rounds` rounds of c in every worker, order rotating. */
static void pairs_rounds(const struct cmd *c, int rounds, struct pairs_result *res)
{
    static double rmed[CONFS][MAX_ROUNDS];
    double *all[CONFS];
    size_t len[CONFS] = {0};
    memset(res, 0, sizeof *res);
    for (int k = 0; k < CONFS; k++) {
        all[k] = malloc((size_t)rounds * c->n * sizeof(double));
        round_pairs(k, c, NULL, &len[k], &res->errors); /* warm-up */
    }
    for (int r = 0; r < rounds; r++)
        for (int i = 0; i < CONFS; i++) {
            int k = (r + i) % CONFS;
            rmed[k][r] = round_pairs(k, c, all[k], &len[k], &res->errors);
        }
    for (int k = 0; k < CONFS; k++) {
        res->all[k] = (struct spread){qd(all[k], len[k], 0.1), qd(all[k], len[k], 0.5),
                                      qd(all[k], len[k], 0.9)};
        res->rm[k] = spread_of(rmed[k], (size_t)rounds);
        paired(rmed, k, rounds, &res->diff[k], &res->ratio[k]);
        free(all[k]);
    }
}

/* The table row: all-sample medians, paired ratio and difference, and the
 * round medians' spread. `dp`: decimals shown. */
static void pairs_bench_row(const char *label, const struct pairs_result *x, int dp)
{
    const struct spread *a = x->all, *rm = x->rm;
    printf("BENCH|%s | %.*f | %.*f | %.3f | %+.*f (%+.*f…%+.*f) | %.*f | %.3f | "
           "%.*f (%.*f–%.*f) | %.*f (%.*f–%.*f)\n",
           label, dp, a[0].p50, dp, a[1].p50, x->ratio[1].p50, dp, x->diff[1].p50, dp,
           x->diff[1].p10, dp, x->diff[1].p90, dp, a[2].p50, x->ratio[2].p50, dp, rm[0].p50, dp,
           rm[0].p10, dp, rm[0].p90, dp, rm[1].p50, dp, rm[1].p10, dp, rm[1].p90);
}

/* The full record of one size, for the log and the results table. */
static void pairs_result_row(const char *check, const struct pairs_result *x, int dp,
                             const char *target)
{
    const struct spread *d = x->diff;
    gpu_row(check, x->errors ? "FAIL" : "info",
            "ns/pair medians native %.*f, shim %.*f, shim+budget %.*f; paired shim-native "
            "%+.*f (p10..p90 %+.*f..%+.*f, x%.3f), budget-native %+.*f (%+.*f..%+.*f, x%.3f), "
            "control-native %+.*f (%+.*f..%+.*f)%s%s",
            dp, x->all[0].p50, dp, x->all[1].p50, dp, x->all[2].p50, dp, d[1].p50, dp, d[1].p10,
            dp, d[1].p90, x->ratio[1].p50, dp, d[2].p50, dp, d[2].p10, dp, d[2].p90,
            x->ratio[2].p50, dp, d[3].p50, dp, d[3].p10, dp, d[3].p90, target,
            x->errors ? "; driver errors" : "");
}

static void check_name(char *buf, size_t len, const char *prefix, const char *name)
{
    snprintf(buf, len, "%s%s", prefix, name);
    for (char *p = buf; *p; p++)
        if (*p == ' ')
            *p = '_';
}

/* The GPU: each pair timed on its own. `async`: cuMemAllocAsync and
 * cuMemFreeAsync on one stream (the stream-ordered hooks' cost). */
static void bench_size(uint64_t size, bool async, uint32_t n, int rounds)
{
    struct cmd c = {.op = OP_PAIRS, .n = n, .batch = 1, .size = size, .async = async};
    struct pairs_result x;
    pairs_rounds(&c, rounds, &x);
    char name[48], label[96], check[48], target[96] = "";
    fmt_size(size, name, sizeof name);
    if (async)
        strcat(name, " async");
    snprintf(label, sizeof label, "%s pair (%d x %u)", name, rounds, n);
    pairs_bench_row(label, &x, 0);
    if (size == 4 * KIB && !async)
        snprintf(target, sizeof target, "; target <= +100 ns and <= x1.03: %s",
                 x.diff[1].p50 <= 100 && x.ratio[1].p50 <= 1.03 ? "met" : "MISSED");
    check_name(check, sizeof check, "bench_pair_", name);
    pairs_result_row(check, &x, 0, target);
}

/* Over the null driver: samples of `batch` pairs, so the clock's own cost
 * is spread over them. Half the paired difference is one hooked call. */
static void bench_hooked(uint32_t n, uint32_t batch, int rounds, bool async)
{
    struct cmd c = {.op = OP_PAIRS, .n = n, .batch = batch, .size = 4 * KIB, .async = async};
    struct pairs_result x;
    pairs_rounds(&c, rounds, &x);
    char label[96], target[160];
    snprintf(label, sizeof label, "4 KiB %spair, 1 thread, batches of %u (%d x %u)",
             async ? "async " : "", batch, rounds, n);
    pairs_bench_row(label, &x, 1);
    pairs_result_row(async ? "bench_hooked_async_pair" : "bench_hooked_pair", &x, 1, "");
    if (async)
        return; /* the goal below is the plain pair's */
    const struct spread *d = &x.diff[CONF_SHIM], *b = &x.diff[CONF_BUDGET];
    snprintf(target, sizeof target, "target <= 50 ns: %s", d->p50 / 2 <= 50 ? "met" : "MISSED");
    gpu_row("bench_hooked_call", x.errors ? "FAIL" : "info",
            "ns per hooked call, (shim - native) / 2 per pair, paired by round: %.1f "
            "(p10..p90 %.1f..%.1f); with a budget %.1f (%.1f..%.1f); %s",
            d->p50 / 2, d->p10 / 2, d->p90 / 2, b->p50 / 2, b->p10 / 2, b->p90 / 2, target);
}

/* Over the null driver: a thread that allocates `depth` blocks before it
 * frees them (the ledger's path when the thread's newest allocation is not
 * freed first), per allocation+free. */
static void bench_hooked_depth(uint32_t n, uint32_t batch, int rounds, uint32_t depth)
{
    struct cmd c = {.op = OP_PAIRS, .n = n, .batch = batch, .size = 4 * KIB, .depth = depth};
    struct pairs_result x;
    pairs_rounds(&c, rounds, &x);
    char label[96], check[48];
    snprintf(label, sizeof label, "4 KiB, %u allocations then their frees, 1 thread (%d x %u)",
             depth, rounds, n);
    pairs_bench_row(label, &x, 1);
    snprintf(check, sizeof check, "bench_hooked_depth%u", depth);
    pairs_result_row(check, &x, 1, "");
}

static uint64_t round_threads(int conf, int threads, uint32_t n)
{
    struct cmd c = {.op = OP_THREADS, .threads = threads, .n = n};
    uint64_t wall = UINT64_MAX;
    if (kids[conf].dead || !write_full(kids[conf].to, &c, sizeof c) ||
        !read_full(kids[conf].from, &wall, sizeof wall))
        kids[conf].dead = true;
    return wall;
}

/* Median pairs/s of each configuration with `threads` threads; a table
 * row and a RESULT row. */
static void bench_threads(int threads, uint32_t n, int rounds, double med[CONFS])
{
    double rate[CONFS][MAX_ROUNDS];
    int errors = 0;
    for (int k = 0; k < CONFS; k++)
        round_threads(k, threads, n); /* warm-up */
    for (int r = 0; r < rounds; r++)
        for (int i = 0; i < CONFS; i++) {
            int k = (r + i) % CONFS;
            uint64_t wall = round_threads(k, threads, n);
            errors += wall == UINT64_MAX;
            rate[k][r] = wall && wall != UINT64_MAX ? (double)threads * n * 1e9 / (double)wall
                                                    : 0;
        }
    struct spread s[CONFS], unused, ratio[CONFS];
    for (int k = 0; k < CONFS; k++) {
        s[k] = spread_of(rate[k], (size_t)rounds);
        paired(rate, k, rounds, &unused, &ratio[k]);
        med[k] = s[k].p50;
    }
    printf("BENCH|4 KiB pairs, %d thread%s (%d x %u each), pairs/s | %.0f | %.0f | %.3f | | %.0f "
           "| %.3f | %.0f–%.0f | %.0f–%.0f\n",
           threads, threads > 1 ? "s" : "", rounds, n, s[0].p50, s[1].p50, ratio[1].p50, s[2].p50,
           ratio[2].p50, s[0].p10, s[0].p90, s[1].p10, s[1].p90);
    char check[48];
    snprintf(check, sizeof check, "bench_threads_%d", threads);
    /* The control is a second native process: its ratio is what a
     * difference between two processes can mean (an A/A test). */
    gpu_row(check, errors ? "FAIL" : "info",
            "4 KiB pairs/s native %.0f, shim %.0f (x%.3f paired), shim+budget %.0f (x%.3f), "
            "native control x%.3f%s",
            s[0].p50, s[1].p50, ratio[1].p50, s[2].p50, ratio[2].p50, ratio[CONF_CONTROL].p50,
            errors ? "; driver errors" : "");
}

/* Every count in list[0..n), then how the last scales against the first. */
static void bench_scaling(const int *list, int n, uint32_t pairs, int rounds, bool hooked)
{
    double first[CONFS] = {0}, med[CONFS] = {0};
    for (int i = 0; i < n; i++) {
        bench_threads(list[i], pairs, rounds, med);
        if (i == 0)
            memcpy(first, med, sizeof first);
    }
    if (n < 2 || list[0] != 1)
        return;
    double sc[CONFS];
    for (int k = 0; k < CONFS; k++)
        sc[k] = first[k] > 0 ? med[k] / first[k] : 0;
    char check[48];
    snprintf(check, sizeof check, "bench_scaling_%d", list[n - 1]);
    gpu_row(check, "info",
            "%d-thread / 1-thread pairs/s: native x%.2f, shim x%.2f, shim+budget x%.2f "
            "(%d CPUs allowed)%s%s",
            list[n - 1], sc[0], sc[1], sc[2], ncpus, hooked ? "; target >= x8: " : "",
            hooked ? (sc[1] >= 8 ? "met" : "MISSED") : "");
}

/* "1,2,4" into list; returns the count (0 on a bad list). */
static int parse_list(const char *text, int *list, int max)
{
    int n = 0;
    for (const char *p = text; *p && n < max;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > MAX_THREADS)
            return 0;
        list[n++] = (int)v;
        p = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return 0;
    }
    return n;
}

int main(int argc, char **argv)
{
    const char *preload = NULL, *budget = "70GiB", *threads = NULL;
    int rounds = 31;
    long pairs = 0;
    int thread_rounds = 0;
    bool hooked = false;
    if (argc == 5 && !strcmp(argv[1], "--worker"))
        return worker(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]));
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--hooked"))
            hooked = true;
        else if (i + 1 >= argc)
            preload = NULL, i = argc; /* a flag without its value: usage */
        else if (!strcmp(argv[i], "--preload"))
            preload = argv[++i];
        else if (!strcmp(argv[i], "--rounds"))
            rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--budget"))
            budget = argv[++i];
        else if (!strcmp(argv[i], "--threads"))
            threads = argv[++i];
        else if (!strcmp(argv[i], "--pairs"))
            pairs = atol(argv[++i]);
        else if (!strcmp(argv[i], "--thread-rounds"))
            thread_rounds = atoi(argv[++i]);
    }
    int list[16], nlist = hooked ? parse_list("1,2,4,8,16", list, 16) : parse_list("1,16", list, 16);
    if (threads)
        nlist = parse_list(threads, list, 16);
    if (!preload || access(preload, R_OK) != 0 || nlist == 0 || pairs < 0 ||
        pairs > 100000000 || thread_rounds < 0 || (thread_rounds && thread_rounds < 3) ||
        thread_rounds > MAX_ROUNDS) {
        fprintf(stderr, "usage: bench_pairs --preload PATH [--rounds R] [--budget TEXT] "
                        "[--hooked] [--threads 1,2,4,8,16] [--pairs N] [--thread-rounds R]\n");
        return 2;
    }
    if (rounds < 3 || rounds > MAX_ROUNDS)
        rounds = 31;
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    cpus_load();
    for (int c = 0; c < CONFS; c++)
        if (!spawn(c, preload, budget))
            return 1;
    if (hooked) {
        bench_hooked(200, 100, rounds, false);
        bench_hooked(200, 100, rounds, true);
        bench_hooked_depth(200, 2, rounds, 64);
        bench_scaling(list, nlist, pairs ? (uint32_t)pairs : 200000,
                      thread_rounds ? thread_rounds : 11, true);
    } else {
        bench_size(4 * KIB, false, 200, rounds);
        bench_size(MIB, false, 200, rounds);
        bench_size(64 * MIB, false, 200, rounds);
        bench_size(4 * KIB, true, 200, rounds);
        bench_scaling(list, nlist, pairs ? (uint32_t)pairs : 500,
                      thread_rounds ? thread_rounds : 7, false);
    }
    for (int c = 0; c < CONFS; c++) {
        struct cmd quit = {.op = OP_EXIT};
        int status = 0;
        write_full(kids[c].to, &quit, sizeof quit);
        close(kids[c].to);
        waitpid(kids[c].pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            gpu_row("bench_worker_exit", "FAIL", "%s worker status %d", conf_name[c], status);
    }
    return gpu_failures ? 1 : 0;
}
