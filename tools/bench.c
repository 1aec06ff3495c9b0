/*
 * bench.c — vg-bench: what the engine's hot paths cost, in ns per operation.
 *
 * Each case runs R rounds of N operations per thread (after one warm-up round
 * that is not counted) and prints the median and the p10/p90 of the rounds.
 * With T threads all threads start together on a barrier and one round's
 * figure is the slowest thread's wall time / N: the latency one thread sees
 * while the others hammer the same structure (not the aggregate throughput).
 * Thread i runs on the i-th CPU the process may use, so on a machine with 16
 * cores a flat column from 1 to 16 threads is perfect scaling; with fewer
 * cores than threads the figure grows with oversubscription too.
 *
 * Shared budgets are measured in forked children, each attached
 * to one region as VRAMGUARD_SHARED would attach it: the single-process hot
 * path with a shared backing (next to the plain budget's row), and a second
 * table of reserve+release throughput with 1, 4 and 16 processes.
 *
 * Run with `make bench` (the test driver first on LD_LIBRARY_PATH).
 */
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "vg_account.h"
#include "vg_shared.h"

#define ROUNDS 15
#define MAX_THREADS 16

typedef struct bench_case {
    const char *name;
    int threads;
    uint64_t ops; /* per thread per round */
    /* Runs `ops` operations as thread `tid` of the case. */
    void (*run)(struct bench_case *c, int tid, uint64_t ops);
    void *state;
} bench_case_t;

/* ------------------------------------------------------- cases */

static vg__budget_t bench_budget;

/* c->state: the budget (per-process, or one with a shared backing). */
static void run_budget(bench_case_t *c, int tid, uint64_t ops)
{
    vg__budget_t *b = c->state;
    (void)tid;
    for (uint64_t i = 0; i < ops; i++) {
        if (vg__budget_reserve(b, 4096) != VG_OK)
            abort(); /* the limit is far above T * 4096 */
        vg__budget_commit(b, 4096);
        vg__budget_release(b, 4096);
    }
}

static void run_ledger(bench_case_t *c, int tid, uint64_t ops)
{
    (void)c;
    vg__alloc_t a;
    memset(&a, 0, sizeof a);
    a.size = a.charged = 4096;
    a.kind = VG_KIND_PLAIN;
    vg_devptr_t base = ((vg_devptr_t)tid + 1) << 40; /* distinct per thread */
    for (uint64_t i = 0; i < ops; i++) {
        a.ptr = a.base = base + (i & 0xffff) * 4096;
        a.seq = vg__ledger_next_seq();
        if (vg__ledger_insert(&a) != VG_OK ||
            vg__ledger_remove(a.ptr, VG__ANY_OWNER, NULL) != VG_OK)
            abort();
    }
}

/* The process-wide sequence counter alone (one atomic add per commit). */
static void run_seq(bench_case_t *c, int tid, uint64_t ops)
{
    (void)c;
    (void)tid;
    uint64_t sum = 0;
    for (uint64_t i = 0; i < ops; i++)
        sum += vg__ledger_next_seq();
    if (sum == 0)
        abort();
}

/* The public API over the driver: vg_pool_alloc + vg_pool_free of 4 KiB.
 * Measured next to the bare driver pair so the engine's share shows. */
static void run_api(bench_case_t *c, int tid, uint64_t ops)
{
    vg_pool_t *pool = c->state;
    (void)tid;
    for (uint64_t i = 0; i < ops; i++) {
        vg_devptr_t p;
        if (vg_pool_alloc(pool, 4096, NULL, &p) != VG_OK || vg_pool_free(pool, p) != VG_OK)
            abort();
    }
}

static CUcontext bench_ctx;

static void run_driver(bench_case_t *c, int tid, uint64_t ops)
{
    const vg__driver_t *d = vg__driver();
    (void)c;
    (void)tid;
    d->cuCtxSetCurrent(bench_ctx);
    for (uint64_t i = 0; i < ops; i++) {
        CUdeviceptr p;
        if (d->cuMemAlloc_v2(&p, 4096) != CUDA_SUCCESS || d->cuMemFree_v2(p) != CUDA_SUCCESS)
            abort();
    }
}

/* ---------------------------------------------------- harness */

typedef struct worker {
    bench_case_t *c;
    int tid;
    pthread_barrier_t *start;
    uint64_t elapsed_ns;
} worker_t;

static int cpus[CPU_SETSIZE]; /* the CPUs this process may use */
static int ncpus;

static void cpus_load(void)
{
    cpu_set_t s;
    CPU_ZERO(&s);
    if (sched_getaffinity(0, sizeof s, &s) == 0)
        for (int i = 0; i < CPU_SETSIZE; i++)
            if (CPU_ISSET(i, &s))
                cpus[ncpus++] = i;
}

static void pin(int tid)
{
    if (ncpus == 0)
        return;
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpus[tid % ncpus], &s);
    sched_setaffinity(0, sizeof s, &s);
}

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    pin(w->tid);
    pthread_barrier_wait(w->start);
    uint64_t t0 = vg__mono_ns();
    w->c->run(w->c, w->tid, w->c->ops);
    w->elapsed_ns = vg__mono_ns() - t0;
    return NULL;
}

/* One round: ns per op for the slowest thread. */
static double run_round(bench_case_t *c)
{
    pthread_t th[MAX_THREADS];
    worker_t w[MAX_THREADS];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)c->threads);
    for (int i = 0; i < c->threads; i++) {
        w[i] = (worker_t){.c = c, .tid = i, .start = &start};
        if (pthread_create(&th[i], NULL, worker_main, &w[i]) != 0)
            abort();
    }
    uint64_t worst = 0;
    for (int i = 0; i < c->threads; i++) {
        pthread_join(th[i], NULL);
        if (w[i].elapsed_ns > worst)
            worst = w[i].elapsed_ns;
    }
    pthread_barrier_destroy(&start);
    return (double)worst / (double)c->ops;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of a sorted sample. */
static double pct(const double *sorted, int n, double p)
{
    return sorted[(int)(p * (n - 1) + 0.5)];
}

/* Prints the case's row; returns its median (ns per operation). */
static double run_case(bench_case_t *c)
{
    double ns[ROUNDS];
    run_round(c); /* warm-up: fills free lists, faults pages in */
    for (int r = 0; r < ROUNDS; r++)
        ns[r] = run_round(c);
    qsort(ns, ROUNDS, sizeof ns[0], cmp_double);
    printf("%-36s | %7d | %12.1f | %6.1f | %6.1f\n", c->name, c->threads,
           pct(ns, ROUNDS, 0.5), pct(ns, ROUNDS, 0.1), pct(ns, ROUNDS, 0.9));
    return pct(ns, ROUNDS, 0.5);
}

/* ---------------------------------------------- shared budgets */

/*
 * Every shared case forks its workers while this process's engine has not
 * started (main runs them before vg_available): the engine reads its
 * settings once per process, so a child that sets VRAMGUARD_SHARED and then
 * asks for device 0's budget gets it bound to the region by shared.c, as a
 * real process would; the parent's budgets stay per-process for the cases
 * that follow. Each case uses a fresh region, removed by the parent.
 */
#define SHARED_ROUNDS 9
#define SHARED_ROUND_NS 200000000ull /* one round: 0.2 s in every process */
#define SHARED_BATCH 256             /* ops between two clock reads */
#define MAX_PROCS 16

typedef struct proc_result {
    uint64_t ops, elapsed_ns;
} proc_result_t;

/* The parent and its children meet here (anonymous, MAP_SHARED). Round -1
 * is the warm-up and is not kept. */
typedef struct proc_board {
    pthread_barrier_t start, end; /* the workers and the parent */
    atomic_int failed;
    double median_ns;             /* the hot-path child's row */
    proc_result_t r[SHARED_ROUNDS][MAX_PROCS];
} proc_board_t;

/* One throughput case, summarised for the table printed at the end. */
typedef struct proc_figures {
    int procs;
    bool ok;
    double total[SHARED_ROUNDS]; /* ops/s of all processes, sorted */
    double mean, min, max;       /* ops/s per process, median round */
} proc_figures_t;

static proc_board_t *board_new(int parties)
{
    proc_board_t *pb = mmap(NULL, sizeof *pb, PROT_READ | PROT_WRITE,
                            MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (pb == MAP_FAILED)
        abort();
    pthread_barrierattr_t a;
    pthread_barrierattr_init(&a);
    pthread_barrierattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_barrier_init(&pb->start, &a, (unsigned)parties);
    pthread_barrier_init(&pb->end, &a, (unsigned)parties);
    pthread_barrierattr_destroy(&a);
    atomic_init(&pb->failed, 0);
    return pb;
}

static void board_free(proc_board_t *pb)
{
    pthread_barrier_destroy(&pb->start);
    pthread_barrier_destroy(&pb->end);
    munmap(pb, sizeof *pb);
}

/* A region name no other run uses: vg-bench.PID.CASE. */
static void region_name(char *out, size_t len, int which)
{
    snprintf(out, len, "vg-bench.%d.%d", (int)getpid(), which);
}

/* In a forked child only: device 0's engine budget, bound to the region
 * `name` (1 TiB limit) by the engine itself. NULL when it did not bind
 * (the engine has said why on stderr). */
static vg__budget_t *shared_attach(const char *name)
{
    if (setenv("VRAMGUARD_SHARED", name, 1) != 0 ||
        setenv("VRAMGUARD_BUDGET", "1TiB", 1) != 0 ||
        unsetenv("VRAMGUARD_WAIT_MS") != 0)
        return NULL;
    vg__budget_t *b = vg__engine_budget(0);
    return b && b->shared ? b : NULL;
}

/* Reserve+commit+release pairs for at least `ns`; ops == 0 on a refusal. */
static proc_result_t run_for(vg__budget_t *b, uint64_t ns)
{
    proc_result_t res = {0, 0};
    uint64_t t0 = vg__mono_ns();
    do {
        for (int i = 0; i < SHARED_BATCH; i++) {
            if (vg__budget_reserve(b, 4096) != VG_OK)
                return (proc_result_t){0, 0};
            vg__budget_commit(b, 4096);
            vg__budget_release(b, 4096);
        }
        res.ops += SHARED_BATCH;
        res.elapsed_ns = vg__mono_ns() - t0;
    } while (res.elapsed_ns < ns);
    return res;
}

/* A throughput worker: keeps every barrier even after a failure, so the
 * parent never waits forever. */
static void shared_worker(proc_board_t *pb, const char *name, int id)
{
    pin(id);
    vg__budget_t *b = shared_attach(name);
    if (!b)
        atomic_store_explicit(&pb->failed, 1, memory_order_relaxed);
    for (int r = -1; r < SHARED_ROUNDS; r++) {
        pthread_barrier_wait(&pb->start);
        proc_result_t res = {0, 0};
        if (b && !atomic_load_explicit(&pb->failed, memory_order_relaxed))
            res = run_for(b, SHARED_ROUND_NS);
        if (res.ops == 0)
            atomic_store_explicit(&pb->failed, 1, memory_order_relaxed);
        if (r >= 0)
            pb->r[r][id] = res;
        pthread_barrier_wait(&pb->end);
    }
}

/* Waits for the children; true when every one exited with 0. The region
 * file goes with them (their slots are already released at exit). */
static bool reap_children(const pid_t *pids, int n, const char *name)
{
    bool ok = true;
    for (int i = 0; i < n; i++) {
        int st;
        if (waitpid(pids[i], &st, 0) != pids[i] || !WIFEXITED(st) ||
            WEXITSTATUS(st) != 0)
            ok = false;
    }
    char path[512];
    if (vg__shm_path(name, path, sizeof path) == VG_OK)
        unlink(path);
    return ok;
}

/* Forks `procs` workers on board pb. Returns how many were started; on a
 * failed fork the ones started are killed (they would wait forever). */
static int spawn(proc_board_t *pb, const char *name, int procs, pid_t *pids)
{
    fflush(stdout); /* or the children print it again */
    for (int i = 0; i < procs; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            shared_worker(pb, name, i);
            exit(0); /* the normal exit path releases the slot */
        }
        if (pids[i] < 0) {
            for (int k = 0; k < i; k++)
                kill(pids[k], SIGKILL);
            return i;
        }
    }
    return procs;
}

static int cmp_total(const void *a, const void *b, void *ctx)
{
    const double *t = ctx;
    double x = t[*(const int *)a], y = t[*(const int *)b];
    return (x > y) - (x < y);
}

/* The round's ops/s, total and per process, from each process's own window. */
static void summarise(const proc_board_t *pb, proc_figures_t *f)
{
    double tot[SHARED_ROUNDS];
    int order[SHARED_ROUNDS];
    for (int r = 0; r < SHARED_ROUNDS; r++) {
        tot[r] = 0;
        order[r] = r;
        for (int i = 0; i < f->procs; i++)
            tot[r] += 1e9 * (double)pb->r[r][i].ops / (double)pb->r[r][i].elapsed_ns;
    }
    qsort_r(order, SHARED_ROUNDS, sizeof order[0], cmp_total, tot);
    int med = order[(int)(0.5 * (SHARED_ROUNDS - 1) + 0.5)];
    f->min = 1e300;
    f->max = 0;
    for (int i = 0; i < f->procs; i++) {
        double rate = 1e9 * (double)pb->r[med][i].ops / (double)pb->r[med][i].elapsed_ns;
        f->min = rate < f->min ? rate : f->min;
        f->max = rate > f->max ? rate : f->max;
    }
    f->mean = tot[med] / f->procs;
    for (int r = 0; r < SHARED_ROUNDS; r++)
        f->total[r] = tot[order[r]];
}

/* Throughput of `f->procs` processes on one region. */
static void shared_throughput(proc_figures_t *f)
{
    char name[64];
    pid_t pids[MAX_PROCS];
    region_name(name, sizeof name, f->procs);
    proc_board_t *pb = board_new(f->procs + 1);
    int n = spawn(pb, name, f->procs, pids);
    for (int r = -1; n == f->procs && r < SHARED_ROUNDS; r++) {
        pthread_barrier_wait(&pb->start);
        pthread_barrier_wait(&pb->end);
    }
    f->ok = reap_children(pids, n, name) && n == f->procs &&
            !atomic_load_explicit(&pb->failed, memory_order_relaxed);
    if (f->ok)
        summarise(pb, f);
    board_free(pb);
}

/* The plain budget's single-thread case, on a budget with a shared backing
 * (one process, the region's lock uncontended). Its row is printed by the
 * child; returns its median, or -1 when it could not run. */
static double shared_hot_path(void)
{
    char name[64];
    region_name(name, sizeof name, 0);
    proc_board_t *pb = board_new(1);
    pb->median_ns = -1;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        vg__budget_t *b = shared_attach(name);
        bench_case_t c = {"shared budget reserve+commit+release", 1, 500000,
                          run_budget, b};
        if (b)
            pb->median_ns = run_case(&c);
        exit(b ? 0 : 1);
    }
    double ns = pid > 0 && reap_children(&pid, 1, name) ? pb->median_ns : -1;
    board_free(pb);
    return ns;
}

static void print_throughput(const proc_figures_t *f, int n)
{
    printf("\nshared budget: reserve+commit+release of 4 KiB by N processes on one region, "
           "%d rounds of %.1f s\n", SHARED_ROUNDS, SHARED_ROUND_NS / 1e9);
    printf("%9s | %12s | %12s | %12s | %14s | %12s | %12s\n", "processes",
           "total ops/s", "p10", "p90", "per process", "min", "max");
    for (int i = 0; i < n; i++) {
        if (!f[i].ok) {
            printf("%9d | failed (see stderr)\n", f[i].procs);
            continue;
        }
        printf("%9d | %12.0f | %12.0f | %12.0f | %14.0f | %12.0f | %12.0f\n",
               f[i].procs, pct(f[i].total, SHARED_ROUNDS, 0.5),
               pct(f[i].total, SHARED_ROUNDS, 0.1), pct(f[i].total, SHARED_ROUNDS, 0.9),
               f[i].mean, f[i].min, f[i].max);
    }
}

/* The cases that need this process's engine (started here, after every
 * shared case has forked its children). */
static int engine_cases(void)
{
    vg_pool_t *pool = NULL;
    if (vg_available() != VG_OK || vg_pool_create(0, 1ull << 30, &pool) != VG_OK ||
        vg__driver()->cuDevicePrimaryCtxRetain(&bench_ctx, 0) != CUDA_SUCCESS) {
        fprintf(stderr, "vg-bench: no driver: %s\n", vg__engine_error());
        return 1;
    }
    bench_case_t cases[] = {
        {"ledger insert+remove", 1, 500000, run_ledger, NULL},
        {"ledger insert+remove", 2, 500000, run_ledger, NULL},
        {"ledger insert+remove", 4, 500000, run_ledger, NULL},
        {"ledger insert+remove", 8, 500000, run_ledger, NULL},
        {"ledger insert+remove", 16, 500000, run_ledger, NULL},
        {"ledger sequence number", 1, 2000000, run_seq, NULL},
        {"ledger sequence number", 16, 2000000, run_seq, NULL},
        {"driver cuMemAlloc+cuMemFree 4 KiB", 1, 20000, run_driver, NULL},
        {"api vg_pool_alloc+free 4 KiB", 1, 20000, run_api, pool},
        {"api vg_pool_alloc+free 4 KiB", 2, 20000, run_api, pool},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        run_case(&cases[i]);
    vg_pool_destroy(pool, NULL);
    return 0;
}

int main(void)
{
    cpus_load();
    vg__budget_init(&bench_budget, VG__UNLIMITED - 1, NULL);
    bench_case_t budget_cases[] = {
        {"budget reserve+commit+release", 1, 1000000, run_budget, &bench_budget},
        {"budget reserve+commit+release", 2, 1000000, run_budget, &bench_budget},
        {"budget reserve+commit+release", 4, 1000000, run_budget, &bench_budget},
        {"budget reserve+commit+release", 8, 1000000, run_budget, &bench_budget},
        {"budget reserve+commit+release", 16, 1000000, run_budget, &bench_budget},
    };
    proc_figures_t tp[] = {{.procs = 1}, {.procs = 4}, {.procs = 16}};
    printf("vg-bench: %d rounds per case, ns per operation (per thread), %d CPUs\n",
           ROUNDS, ncpus);
    printf("%-36s | %7s | %12s | %6s | %6s\n", "case", "threads",
           "median ns/op", "p10", "p90");
    double plain = run_case(&budget_cases[0]);
    for (size_t i = 1; i < sizeof budget_cases / sizeof budget_cases[0]; i++)
        run_case(&budget_cases[i]);
    /* Before engine_cases: see "shared budgets" above. */
    double shared = shared_hot_path();
    for (size_t i = 0; i < sizeof tp / sizeof tp[0]; i++)
        shared_throughput(&tp[i]);
    int rc = engine_cases();
    print_throughput(tp, (int)(sizeof tp / sizeof tp[0]));
    if (shared > 0)
        printf("\nsingle-process hot path, shared backing - plain budget: %+.1f ns "
               "(target: at most 20 ns)\n", shared - plain);
    return rc;
}
