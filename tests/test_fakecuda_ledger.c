/*
 * test_fakecuda_ledger.c: the test driver's (tests/fakecuda) own
 * bookkeeping, which the other tests lean on: fault injection, the
 * high-water mark, the report written at exit, an exact ledger under
 * concurrent and slow frees, the primary context's reset, legacy IPC, and
 * the driver's own view of an allocation (fakecuda/fakecuda_query.h).
 * Shared helpers: fakecudatest.h.
 */
#include <criterion/criterion.h>

#include <cuda.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fakecudatest.h"

/* ---- fault injection, statistics, report ---- */

Test(fakecuda, fail_nth_fails_exactly_the_nth_allocating_call_of_any_family)
{
    setenv("FAKECUDA_FAIL_NTH", "4", 1);
    start(NULL);
    CUdeviceptr p;
    size_t pitch;
    CUarray a;
    CUDA_ARRAY_DESCRIPTOR d = { 16, 16, CU_AD_FORMAT_UNSIGNED_INT8, 1 };
    EXPECT_CU(cuMemAlloc(&p, 0), CUDA_ERROR_INVALID_VALUE);   /* refused before counting */
    EXPECT_CU(cuMemAlloc(&p, 64), CUDA_SUCCESS);
    EXPECT_CU(cuMemAllocAsync(&p, 64, NULL), CUDA_SUCCESS);
    EXPECT_CU(cuMemAllocPitch(&p, &pitch, 64, 2, 4), CUDA_SUCCESS);
    size_t before = fakecuda_used_bytes(0);
    EXPECT_CU(cuArrayCreate(&a, &d), CUDA_ERROR_OUT_OF_MEMORY);
    cr_assert_eq(fakecuda_used_bytes(0), before);
    EXPECT_CU(cuArrayCreate(&a, &d), CUDA_SUCCESS);
}

Test(fakecuda, peak_is_a_high_water_mark_and_can_be_reset)
{
    start(NULL);
    CUdeviceptr a, b;
    EXPECT_CU(cuMemAlloc(&a, 10 * MiB), CUDA_SUCCESS);
    EXPECT_CU(cuMemAlloc(&b, 20 * MiB), CUDA_SUCCESS);
    EXPECT_CU(cuMemFree(b), CUDA_SUCCESS);
    cr_assert(fakecuda_peak_bytes(0) == 30 * MiB && fakecuda_used_bytes(0) == 10 * MiB);
    fakecuda_reset_peak(0);
    cr_assert_eq(fakecuda_peak_bytes(0), 10 * MiB);
    cr_assert_eq(fakecuda_peak_bytes(99), 0);
}

/* Runs in a child so that the library's exit-time report gets written. */
static void report_child(const char *path)
{
    setenv("FAKECUDA_REPORT", path, 1);
    setenv("FAKECUDA_TOTAL_BYTES", "104857600", 1);   /* 100 MiB */
    CUcontext ctx;
    CUdeviceptr a, b, c;
    if (cuInit(0) || cuDevicePrimaryCtxRetain(&ctx, 0) || cuCtxSetCurrent(ctx) ||
        cuMemAlloc(&a, 60 * MiB) || cuMemAlloc(&b, 30 * MiB) || cuMemFree(a) ||
        cuMemAlloc(&c, 80 * MiB) != CUDA_ERROR_OUT_OF_MEMORY)
        _exit(1);
    /* exit() runs the report; under ASan it also runs LeakSanitizer, which
     * in a child forked from a threaded runner prints "Running thread ...
     * was not suspended": nothing this test checks, so not the run's noise. */
    int null = open("/dev/null", O_WRONLY);
    if (null >= 0)
        dup2(null, 2);
    exit(0);
}

Test(fakecuda, report_file_is_written_at_exit)
{
    char path[] = "/tmp/fakecuda-report-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0)
        report_child(path);
    int status;
    waitpid(pid, &status, 0);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    char line[256] = { 0 };
    cr_assert_not_null(fgets(line, sizeof line, f));
    fclose(f);
    unlink(path);
    cr_assert_str_eq(line, "peak_bytes=94371840 live_bytes=31457280 allocs=2 frees=1 failed=1\n");
}

/* ---- thread safety ---- */

typedef struct {
    CUcontext ctx;
    int failures;
} worker_arg;

static void *alloc_free_worker(void *p)
{
    worker_arg *w = p;
    if (cuCtxSetCurrent(w->ctx) != CUDA_SUCCESS)
        w->failures++;
    for (int i = 0; i < 500; i++) {
        CUdeviceptr d, base;
        size_t size = 512u * (1u + (unsigned)i % 64), got = 0;
        CUresult rc = cuMemAlloc(&d, size);
        if (rc == CUDA_ERROR_OUT_OF_MEMORY)
            continue;
        if (rc != CUDA_SUCCESS || cuMemGetAddressRange(&base, &got, d + size - 1) != CUDA_SUCCESS ||
            base != d || got != size || cuMemFree(d) != CUDA_SUCCESS)
            w->failures++;
    }
    return NULL;
}

Test(fakecuda, concurrent_allocations_keep_the_ledger_exact)
{
    CUcontext ctx = start("262144");   /* 256 KiB: some calls hit OOM */
    enum { N = 8 };
    pthread_t t[N];
    worker_arg args[N];
    for (int i = 0; i < N; i++) {
        args[i] = (worker_arg){ ctx, 0 };
        cr_assert_eq(pthread_create(&t[i], NULL, alloc_free_worker, &args[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        cr_assert_eq(args[i].failures, 0);
    }
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    cr_assert_leq(fakecuda_peak_bytes(0), 262144);
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct {
    CUcontext ctx;
    CUdeviceptr p;
    bool async;
} slow_free_arg;

static void *slow_free(void *p)
{
    slow_free_arg *a = p;
    cuCtxSetCurrent(a->ctx);
    CUresult rc = a->async ? cuMemFreeAsync(a->p, NULL) : cuMemFree(a->p);
    return (void *)(uintptr_t)rc;
}

/* The memory counts until the delay is over, and the driver keeps serving
 * other threads meanwhile (the lock is not held while it waits). */
Test(fakecuda, a_slow_free_keeps_the_memory_counted_until_it_returns)
{
    setenv("FAKECUDA_FREE_DELAY_NS", "200000000", 1);   /* 200 ms */
    CUcontext ctx = start(NULL);
    for (int async = 0; async < 2; async++) {
        slow_free_arg a = { ctx, 0, async };
        CUdeviceptr q;
        pthread_t t;
        void *rc;
        EXPECT_CU(cuMemAlloc(&a.p, 64 * MiB), CUDA_SUCCESS);
        double t0 = mono_s();
        cr_assert_eq(pthread_create(&t, NULL, slow_free, &a), 0);
        usleep(50000);
        cr_assert_eq(fakecuda_used_bytes(0), 64 * MiB);
        EXPECT_CU(cuMemAlloc(&q, MiB), CUDA_SUCCESS);
        cr_assert_lt(mono_s() - t0, 0.15, "the driver was blocked by the waiting free");
        cr_assert_eq(fakecuda_used_bytes(0), 65 * MiB);
        pthread_join(t, &rc);
        cr_assert_eq((CUresult)(uintptr_t)rc, CUDA_SUCCESS);
        cr_assert_geq(mono_s() - t0, 0.2);
        cr_assert_eq(fakecuda_used_bytes(0), MiB);
        EXPECT_CU(cuMemFree(q), CUDA_SUCCESS);
    }
}

/* ---- primary-context reset, legacy IPC, the driver's own view ---- */

/* A reset frees what the primary context owned and keeps the context: the
 * retained handle stays current and usable, and must still be released. */
Test(fakecuda, primary_ctx_reset_frees_its_memory_and_keeps_the_context)
{
    CUcontext ctx = start(NULL), again;
    CUdeviceptr a, b, base;
    unsigned int flags;
    int active;
    EXPECT_CU(cuMemAlloc(&a, 4096), CUDA_SUCCESS);
    EXPECT_CU(cuMemAlloc(&b, 8 * MiB), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_live_allocs(0), 2);
    EXPECT_CU(cuDevicePrimaryCtxReset(0), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_live_allocs(0), 0);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(cuMemGetAddressRange(&base, NULL, a), CUDA_ERROR_NOT_FOUND);
    EXPECT_CU(cuMemFree(b), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuDevicePrimaryCtxGetState(0, &flags, &active), CUDA_SUCCESS);
    cr_assert_eq(active, 1);
    EXPECT_CU(cuMemAlloc(&a, 4096), CUDA_SUCCESS);
    EXPECT_CU(cuDevicePrimaryCtxRetain(&again, 0), CUDA_SUCCESS);
    cr_assert_eq(again, ctx);
    EXPECT_CU(cuDevicePrimaryCtxReset(3), CUDA_ERROR_INVALID_DEVICE);
}

/* Only cuMemAlloc memory exports an IPC handle, from any address in it. */
Test(fakecuda, ipc_handles_are_given_for_device_allocations_only)
{
    start(NULL);
    CUipcMemHandle h;
    CUdeviceptr d, m;
    EXPECT_CU(cuMemAlloc(&d, 4096), CUDA_SUCCESS);
    EXPECT_CU(cuMemAllocManaged(&m, 4096, CU_MEM_ATTACH_GLOBAL), CUDA_SUCCESS);
    EXPECT_CU(cuIpcGetMemHandle(&h, d), CUDA_SUCCESS);
    EXPECT_CU(cuIpcGetMemHandle(&h, d + 100), CUDA_SUCCESS);
    EXPECT_CU(cuIpcGetMemHandle(NULL, d), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuIpcGetMemHandle(&h, m), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuIpcGetMemHandle(&h, FAKE_PTR), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuCtxSetCurrent(NULL), CUDA_SUCCESS);
    EXPECT_CU(cuIpcGetMemHandle(&h, d), CUDA_ERROR_INVALID_CONTEXT);
}

Test(fakecuda, range_of_and_live_allocs_tell_the_drivers_own_view)
{
    start(NULL);
    CUdeviceptr d, p;
    size_t pitch, size = 0;
    unsigned long long base = 0, id = 0, want_id = 0;
    cr_assert_eq(fakecuda_range_of(FAKE_PTR, &base, &size, &id), 0);
    EXPECT_CU(cuMemAlloc(&d, 5000), CUDA_SUCCESS);
    EXPECT_CU(cuMemAllocPitch(&p, &pitch, 100, 4, 4), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_live_allocs(0), 2);
    cr_assert_eq(fakecuda_live_allocs(1), 0);
    EXPECT_CU(cuPointerGetAttribute(&want_id, CU_POINTER_ATTRIBUTE_BUFFER_ID, d), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_range_of(d + 4999, &base, &size, &id), 1);
    cr_assert(base == d && size == 5000 && id == want_id);
    cr_assert_eq(fakecuda_range_of(d, NULL, NULL, NULL), 1);
    EXPECT_CU(cuMemFree(d), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_range_of(d, NULL, NULL, NULL), 0);
    cr_assert_eq(fakecuda_live_allocs(0), 1);
}
