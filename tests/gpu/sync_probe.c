/*
 * sync_probe.c — do concurrent cuCtxSynchronize calls on an idle context
 * wait for each other? The pool's reuse rule synchronises once per arena
 * every few hundred pairs (lib/cache.c), so with 16 threads up to 16 such
 * calls can be in flight at once: if the driver runs them one at a time,
 * they cap cache mode's thread scaling. Natively, no shim.
 *
 * Each of T threads (1, 4, 16) calls cuCtxSynchronize N times on the
 * primary context, timing each call; one row per T: the median and p90 of
 * a call, and calls per second in all. If calls serialise, the median at
 * 16 threads is about 16 times the one-thread median and the total rate
 * stays flat. Figures only (RESULT rows with status info).
 *
 *   sync_probe [N]        (default 20000 calls a thread)
 */
#include <cuda.h>
#include <pthread.h>

#include "gpu_common.h"

#define MAX_THREADS 16

static CUcontext ctx;
static uint32_t calls;
static uint64_t *lat[MAX_THREADS];
static CUresult failed;

static void *worker(void *arg)
{
    uint64_t *mine = lat[(uintptr_t)arg];
    cuCtxSetCurrent(ctx);
    for (uint32_t i = 0; i < calls; i++) {
        uint64_t t0 = gpu_now_ns();
        CUresult rc = cuCtxSynchronize();
        mine[i] = gpu_now_ns() - t0;
        if (rc != CUDA_SUCCESS)
            failed = rc;
    }
    return NULL;
}

static void probe(int threads)
{
    pthread_t tid[MAX_THREADS];
    uint64_t t0 = gpu_now_ns();
    for (int i = 0; i < threads; i++)
        pthread_create(&tid[i], NULL, worker, (void *)(uintptr_t)i);
    for (int i = 0; i < threads; i++)
        pthread_join(tid[i], NULL);
    uint64_t wall = gpu_now_ns() - t0;
    size_t n = (size_t)threads * calls;
    uint64_t *all = malloc(n * sizeof *all);
    if (!all)
        return;
    for (int i = 0; i < threads; i++)
        for (uint32_t j = 0; j < calls; j++)
            all[(size_t)i * calls + j] = lat[i][j];
    char check[32];
    snprintf(check, sizeof check, "sync_probe_%d", threads);
    gpu_row(check, failed ? "FAIL" : "info",
            "%d thread%s, cuCtxSynchronize on an idle context: median %.2f us, p90 %.2f us, "
            "%.0f calls/s in all",
            threads, threads > 1 ? "s" : "", gpu_quantile(all, n, 0.5) / 1e3,
            gpu_quantile(all, n, 0.9) / 1e3, (double)n * 1e9 / (double)wall);
    free(all);
}

int main(int argc, char **argv)
{
    calls = argc > 1 ? (uint32_t)strtoul(argv[1], NULL, 10) : 20000;
    CUdevice dev;
    if (!calls || cuInit(0) != CUDA_SUCCESS || cuDeviceGet(&dev, 0) != CUDA_SUCCESS ||
        cuDevicePrimaryCtxRetain(&ctx, dev) != CUDA_SUCCESS) {
        gpu_row("sync_probe", "FAIL", "no device or no context (or a bad N: %s)",
                argc > 1 ? argv[1] : "20000");
        return 1;
    }
    for (int i = 0; i < MAX_THREADS; i++)
        if (!(lat[i] = malloc(calls * sizeof *lat[i])))
            return 1;
    static const int counts[] = {1, 4, 16};
    for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++)
        probe(counts[i]);
    return gpu_failures ? 1 : 0;
}
