/*
 * static_cudart.cu — a program built with the CUDA runtime linked
 * statically (nvcc -cudart static): cudart dlopens libcuda.so.1 and fetches
 * every entry point through cuGetProcAddress, the way most real binaries
 * reach the driver.
 *
 *   static_cudart pairs N           N alternating cudaMalloc/cudaFree of 4 KiB,
 *                                   each timed: median and p10/p90 in ns
 *   static_cudart oom CAP BUDGET    cudaMalloc 64 MiB until an error or CAP
 *                                   units; BUDGET = 0 means native (the cap
 *                                   must be reached), else the loop must stop
 *                                   with cudaErrorMemoryAllocation holding at
 *                                   most BUDGET bytes, and cudaMemGetInfo's
 *                                   total must read BUDGET
 *
 * RESULT rows as gpu_common.h.
 */
#include <cuda_runtime.h>
#include <string.h>

#include "gpu_common.h"

static int pairs(unsigned n)
{
    uint64_t *ns = (uint64_t *)malloc(n * sizeof *ns);
    unsigned errors = 0;
    cudaError_t init = cudaFree(0); /* context created outside the timing */
    if (!ns || init != cudaSuccess) {
        gpu_row("cudart_pairs_4KiB", "FAIL", "start: %s", cudaGetErrorName(init));
        return 1;
    }
    for (unsigned i = 0; i < n; i++) {
        void *p = NULL;
        uint64_t t0 = gpu_now_ns();
        cudaError_t a = cudaMalloc(&p, 4 * KIB);
        cudaError_t f = a == cudaSuccess ? cudaFree(p) : a;
        ns[i] = gpu_now_ns() - t0;
        errors += a != cudaSuccess || f != cudaSuccess;
    }
    uint64_t p50 = gpu_quantile(ns, n, 0.5), p10 = gpu_quantile(ns, n, 0.1),
             p90 = gpu_quantile(ns, n, 0.9);
    printf("PAIRS|%llu|%llu|%llu\n", (unsigned long long)p50, (unsigned long long)p10,
           (unsigned long long)p90);
    gpu_row("cudart_pairs_4KiB", errors ? "FAIL" : "info",
            "%u pairs: median %llu ns, p10 %llu, p90 %llu, %u errors", n,
            (unsigned long long)p50, (unsigned long long)p10, (unsigned long long)p90, errors);
    free(ns);
    return errors ? 1 : 0;
}

static int oom(int cap, uint64_t budget)
{
    static void *held[256];
    size_t free_b = 0, total = 0;
    cudaError_t rc = cudaMemGetInfo(&free_b, &total);
    printf("cudaMemGetInfo: %s free %zu total %zu\n", cudaGetErrorName(rc), free_b, total);
    if (budget)
        gpu_check("cudart_meminfo_total", rc == cudaSuccess && total == budget,
                  "cudaMemGetInfo %s: total %.3f GiB, free %.3f GiB (budget %.3f GiB)",
                  cudaGetErrorName(rc), gpu_gib(total), gpu_gib(free_b), gpu_gib(budget));
    else
        gpu_row("cudart_meminfo_total", "info", "cudaMemGetInfo %s: total %.3f GiB, free %.3f GiB",
                cudaGetErrorName(rc), gpu_gib(total), gpu_gib(free_b));
    int n = 0;
    cap = cap < 1 ? 1 : cap > 256 ? 256 : cap;
    rc = cudaSuccess;
    while (n < cap && (rc = cudaMalloc(&held[n], 64 * MIB)) == cudaSuccess)
        n++;
    const char *err = n == cap ? "cap reached" : cudaGetErrorName(rc);
    const char *msg = n == cap ? "" : cudaGetErrorString(rc);
    cudaGetLastError(); /* a failed cudaMalloc leaves it as the last error */
    for (int i = 0; i < n; i++)
        cudaFree(held[i]);
    uint64_t bytes = (uint64_t)n * 64 * MIB;
    bool ok = budget == 0 ? n == cap
                          : rc == cudaErrorMemoryAllocation && bytes <= budget &&
                                bytes >= budget / 2;
    gpu_check("cudart_alloc_until_oom", ok, "%d x 64 MiB = %.2f GiB, then %s (%s), cap %d", n,
              gpu_gib(bytes), err, msg, cap);
    /* after a refusal the runtime must still work */
    void *p = NULL;
    cudaError_t again = cudaMalloc(&p, 64 * MIB);
    if (again == cudaSuccess)
        cudaFree(p);
    gpu_check("cudart_usable_after_oom", again == cudaSuccess, "cudaMalloc 64 MiB afterwards: %s",
              cudaGetErrorName(again));
    return gpu_failures ? 1 : 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 3 && !strcmp(argv[1], "pairs"))
        return pairs((unsigned)strtoul(argv[2], NULL, 0));
    if (argc >= 4 && !strcmp(argv[1], "oom"))
        return oom(atoi(argv[2]), strtoull(argv[3], NULL, 0));
    fprintf(stderr, "usage: static_cudart pairs N | oom CAP BUDGET_BYTES\n");
    return 2;
}
