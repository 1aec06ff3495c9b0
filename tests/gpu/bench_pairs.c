/*
 * bench_pairs.c — what the shim adds to a cuMemAlloc_v2 + cuMemFree_v2
 * pair, against the real driver. No vramguard code: linked with -lcuda (the
 * toolkit stub), it calls the driver directly, and the shim only when it is
 * preloaded.
 *
 * The parent starts one worker process per configuration (native, shim,
 * shim with a budget), each with its own environment and its own CUDA
 * context, and hands them rounds in turn over pipes: A B C A B C ... so
 * that clock and thermal drift fall on every configuration alike. Only one
 * worker runs at a time. Each pair is timed on its own (CLOCK_MONOTONIC,
 * ~20 ns, the same in every configuration); medians and p10/p90 are over
 * all pairs of all rounds.
 *
 *   bench_pairs --preload PATH [--rounds R] [--budget TEXT]
 *
 * Prints BENCH| rows (the benchmark table, markdown cells) and RESULT| rows
 * (gpu_common.h). A worker error is a FAIL row.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cuda.h>

#include "gpu_common.h"

enum { OP_EXIT, OP_PAIRS, OP_THREADS };
#define SAMPLE_ERROR UINT32_MAX

struct cmd {
    int op;
    int threads;
    uint32_t n; /* pairs (per thread for OP_THREADS) */
    uint64_t size;
};

/* ------------------------------------------------------------ worker */

static CUcontext worker_ctx;

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

static void time_pairs(uint64_t size, uint32_t n, uint32_t *ns)
{
    for (uint32_t i = 0; i < n; i++) {
        CUdeviceptr p = 0;
        uint64_t t0 = gpu_now_ns();
        CUresult a = cuMemAlloc(&p, size);
        CUresult f = a == CUDA_SUCCESS ? cuMemFree(p) : a;
        uint64_t dt = gpu_now_ns() - t0;
        ns[i] = a != CUDA_SUCCESS || f != CUDA_SUCCESS ? SAMPLE_ERROR
                : dt >= SAMPLE_ERROR                   ? SAMPLE_ERROR - 1
                                                       : (uint32_t)dt;
    }
}

struct mt_arg {
    pthread_barrier_t *start;
    uint32_t n;
    uint64_t t0, t1;
    int errors;
};

static void *mt_main(void *p)
{
    struct mt_arg *a = p;
    cuCtxSetCurrent(worker_ctx);
    pthread_barrier_wait(a->start);
    a->t0 = gpu_now_ns();
    for (uint32_t i = 0; i < a->n; i++) {
        CUdeviceptr d = 0;
        if (cuMemAlloc(&d, 4 * KIB) != CUDA_SUCCESS || cuMemFree(d) != CUDA_SUCCESS)
            a->errors++;
    }
    a->t1 = gpu_now_ns();
    return NULL;
}

/* Wall time (ns) from the first thread's start to the last one's end;
 * UINT64_MAX on any error. */
static uint64_t time_threads(int threads, uint32_t n)
{
    pthread_t tid[64];
    struct mt_arg arg[64];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)threads);
    for (int i = 0; i < threads; i++) {
        arg[i] = (struct mt_arg){.start = &start, .n = n};
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

static int worker(int in, int out)
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
    CUdeviceptr ballast = 0;
    if (rc == CUDA_SUCCESS)
        rc = cuMemAlloc(&ballast, 4096);
    int ready = (int)rc;
    if (!write_full(out, &ready, sizeof ready) || rc != CUDA_SUCCESS)
        return 1;
    static uint32_t ns[1u << 16];
    struct cmd c;
    while (read_full(in, &c, sizeof c) && c.op != OP_EXIT) {
        if (c.op == OP_PAIRS) {
            uint32_t n = c.n < (1u << 16) ? c.n : (1u << 16);
            time_pairs(c.size, n, ns);
            if (!write_full(out, ns, n * sizeof ns[0]))
                return 1;
        } else {
            int t = c.threads < 1 ? 1 : c.threads > 64 ? 64 : c.threads;
            uint64_t wall = time_threads(t, c.n);
            if (!write_full(out, &wall, sizeof wall))
                return 1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------ parent */

enum { CONF_NATIVE, CONF_SHIM, CONF_BUDGET, CONFS };
static const char *conf_name[CONFS] = {"native", "shim", "shim+budget"};

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
        if (conf != CONF_NATIVE)
            setenv("LD_PRELOAD", preload, 1);
        if (conf == CONF_BUDGET)
            setenv("VRAMGUARD_BUDGET", budget, 1);
        char in[16], out[16];
        snprintf(in, sizeof in, "%d", down[0]);
        snprintf(out, sizeof out, "%d", up[1]);
        execl("/proc/self/exe", "bench_pairs", "--worker", in, out, (char *)NULL);
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

/* One round of pairs in one worker; appends its samples. Errors count. */
static void round_pairs(int conf, uint64_t size, uint32_t n, uint64_t *all, size_t *len,
                        int *errors)
{
    static uint32_t ns[1u << 16];
    struct cmd c = {.op = OP_PAIRS, .n = n, .size = size};
    if (kids[conf].dead || !write_full(kids[conf].to, &c, sizeof c) ||
        !read_full(kids[conf].from, ns, n * sizeof ns[0])) {
        kids[conf].dead = true;
        (*errors)++;
        return;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (ns[i] == SAMPLE_ERROR)
            (*errors)++;
        else if (all)
            all[(*len)++] = ns[i];
    }
}

struct stat3 {
    uint64_t p10, p50, p90;
    int errors;
};

static void fmt_size(uint64_t size, char *buf, size_t len)
{
    if (size >= MIB)
        snprintf(buf, len, "%llu MiB", (unsigned long long)(size / MIB));
    else
        snprintf(buf, len, "%llu KiB", (unsigned long long)(size / KIB));
}

static void bench_size(uint64_t size, uint32_t n, int rounds)
{
    struct stat3 st[CONFS] = {{0}};
    uint64_t *all[CONFS];
    size_t len[CONFS] = {0};
    for (int c = 0; c < CONFS; c++) {
        all[c] = malloc((size_t)rounds * n * sizeof(uint64_t));
        round_pairs(c, size, n, NULL, &len[c], &st[c].errors); /* warm-up */
    }
    for (int r = 0; r < rounds; r++)
        for (int c = 0; c < CONFS; c++)
            round_pairs(c, size, n, all[c], &len[c], &st[c].errors);
    for (int c = 0; c < CONFS; c++) {
        st[c].p50 = gpu_quantile(all[c], len[c], 0.5);
        st[c].p10 = gpu_quantile(all[c], len[c], 0.1);
        st[c].p90 = gpu_quantile(all[c], len[c], 0.9);
        free(all[c]);
    }
    char name[32], check[48];
    fmt_size(size, name, sizeof name);
    double nat = (double)st[CONF_NATIVE].p50;
    double r1 = nat ? (double)st[CONF_SHIM].p50 / nat : 0;
    double r2 = nat ? (double)st[CONF_BUDGET].p50 / nat : 0;
    printf("BENCH|%s pair (%d x %u) | %llu | %llu | %.3f | %+lld | %llu | %.3f | %llu–%llu | %llu–%llu\n",
           name, rounds, n, (unsigned long long)st[0].p50, (unsigned long long)st[1].p50, r1,
           (long long)st[1].p50 - (long long)st[0].p50, (unsigned long long)st[2].p50, r2,
           (unsigned long long)st[0].p10, (unsigned long long)st[0].p90,
           (unsigned long long)st[1].p10, (unsigned long long)st[1].p90);
    snprintf(check, sizeof check, "bench_pair_%s", name);
    for (char *p = check; *p; p++)
        if (*p == ' ')
            *p = '_';
    int errors = st[0].errors + st[1].errors + st[2].errors;
    gpu_row(check, errors ? "FAIL" : "info",
            "median native %llu ns, shim %llu ns (%+lld ns, x%.3f), shim+budget %llu ns (x%.3f)%s",
            (unsigned long long)st[0].p50, (unsigned long long)st[1].p50,
            (long long)st[1].p50 - (long long)st[0].p50, r1, (unsigned long long)st[2].p50, r2,
            errors ? "; driver errors" : "");
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

static void bench_threads(int threads, uint32_t n, int rounds)
{
    uint64_t rate[CONFS][32];
    int errors = 0;
    for (int c = 0; c < CONFS; c++)
        round_threads(c, threads, n); /* warm-up */
    for (int r = 0; r < rounds; r++)
        for (int c = 0; c < CONFS; c++) {
            uint64_t wall = round_threads(c, threads, n);
            errors += wall == UINT64_MAX;
            rate[c][r] = wall && wall != UINT64_MAX
                             ? (uint64_t)((double)threads * n * 1e9 / (double)wall) : 0;
        }
    uint64_t med[CONFS];
    for (int c = 0; c < CONFS; c++)
        med[c] = gpu_quantile(rate[c], (size_t)rounds, 0.5);
    double r1 = med[0] ? (double)med[1] / (double)med[0] : 0;
    double r2 = med[0] ? (double)med[2] / (double)med[0] : 0;
    printf("BENCH|4 KiB pairs, %d thread%s (%d x %u each), pairs/s | %llu | %llu | %.3f | | %llu | %.3f | |\n",
           threads, threads > 1 ? "s" : "", rounds, n, (unsigned long long)med[0],
           (unsigned long long)med[1], r1, (unsigned long long)med[2], r2);
    char check[48];
    snprintf(check, sizeof check, "bench_threads_%d", threads);
    gpu_row(check, errors ? "FAIL" : "info",
            "4 KiB pairs/s native %llu, shim %llu (x%.3f), shim+budget %llu (x%.3f)%s",
            (unsigned long long)med[0], (unsigned long long)med[1], r1,
            (unsigned long long)med[2], r2, errors ? "; driver errors" : "");
}

int main(int argc, char **argv)
{
    const char *preload = NULL, *budget = "70GiB";
    int rounds = 15;
    if (argc == 4 && !strcmp(argv[1], "--worker"))
        return worker(atoi(argv[2]), atoi(argv[3]));
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--preload"))
            preload = argv[i + 1];
        else if (!strcmp(argv[i], "--rounds"))
            rounds = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--budget"))
            budget = argv[i + 1];
    }
    if (!preload || access(preload, R_OK) != 0) {
        fprintf(stderr, "usage: bench_pairs --preload PATH [--rounds R] [--budget TEXT]\n");
        return 2;
    }
    if (rounds < 1 || rounds > 32)
        rounds = 15;
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    for (int c = 0; c < CONFS; c++)
        if (!spawn(c, preload, budget))
            return 1;
    bench_size(4 * KIB, 2000, rounds);
    bench_size(MIB, 500, rounds);
    bench_size(64 * MIB, 200, rounds);
    bench_threads(1, 2000, 7);
    bench_threads(16, 500, 7);
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
