/*
 * client_shared.c — a client for the shared-budget tests (tests/test_shared*.c):
 * it links the driver directly and does one of a few things on device 0.
 *
 *   client_shared race THREADS ITERATIONS CHUNK
 *       every thread allocates CHUNK and frees it again, ITERATIONS times;
 *       prints "ok=N refused=M other=K"
 *   client_shared hold BYTES
 *       allocates BYTES, prints "held rc=RC", then waits for stdin to close
 *       and exits normally without freeing (the shim must release the share)
 *   client_shared try BYTES
 *       allocates BYTES once, prints "rc=RC ms=T at=NS" (T: how long the call
 *       took, NS: CLOCK_MONOTONIC when it returned), frees, exits; with
 *       HOLD_MS=N in the environment it holds the memory N ms before freeing
 *   client_shared exec BYTES
 *       allocates BYTES, prints "held rc=RC", then execs itself as
 *       "client_shared try BYTES" without freeing (the new image's memory
 *       is its own: the old one's went with it)
 *   exit: 0 ran, 2 usage, 3 setup failed
 */
#include <cuda.h>

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static CUcontext ctx;
static size_t chunk;
static int iterations;

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

typedef struct tally {
    long ok, refused, other;
} tally_t;

static void *race_thread(void *arg)
{
    tally_t *t = arg;
    cuCtxSetCurrent(ctx);
    for (int i = 0; i < iterations; i++) {
        CUdeviceptr p = 0;
        CUresult rc = cuMemAlloc(&p, chunk);
        if (rc == CUDA_SUCCESS) {
            t->ok++;
            usleep(200);
            cuMemFree(p);
        } else if (rc == CUDA_ERROR_OUT_OF_MEMORY) {
            t->refused++;
        } else {
            t->other++;
        }
    }
    return NULL;
}

static int race(int threads)
{
    pthread_t th[64];
    tally_t t[64];
    memset(t, 0, sizeof t);
    if (threads < 1 || threads > 64)
        return 2;
    for (int i = 0; i < threads; i++)
        pthread_create(&th[i], NULL, race_thread, &t[i]);
    tally_t sum = {0, 0, 0};
    for (int i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
        sum.ok += t[i].ok;
        sum.refused += t[i].refused;
        sum.other += t[i].other;
    }
    printf("ok=%ld refused=%ld other=%ld\n", sum.ok, sum.refused, sum.other);
    return 0;
}

static int hold(size_t bytes)
{
    CUdeviceptr p = 0;
    CUresult rc = cuMemAlloc(&p, bytes);
    printf("held rc=%d\n", (int)rc);
    fflush(stdout);
    char buf[64];
    while (read(0, buf, sizeof buf) > 0)
        ;
    return 0; /* no free: exit must give the share back */
}

static int try_once(size_t bytes)
{
    CUdeviceptr p = 0;
    uint64_t t0 = mono_ns();
    CUresult rc = cuMemAlloc(&p, bytes);
    uint64_t t1 = mono_ns();
    printf("rc=%d ms=%llu at=%llu\n", (int)rc,
           (unsigned long long)((t1 - t0) / 1000000),
           (unsigned long long)t1);
    fflush(stdout);
    const char *h = getenv("HOLD_MS");
    if (rc == CUDA_SUCCESS && h)
        usleep((useconds_t)atoi(h) * 1000);
    if (rc == CUDA_SUCCESS)
        cuMemFree(p);
    return 0;
}

static int exec_try(const char *bytes)
{
    CUdeviceptr p = 0;
    CUresult rc = cuMemAlloc(&p, strtoull(bytes, NULL, 10));
    printf("held rc=%d\n", (int)rc);
    fflush(stdout);
    char *const args[] = {"client_shared", "try", (char *)bytes, NULL};
    execv("/proc/self/exe", args);
    return 3;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    CUdevice dev;
    if (cuInit(0) != CUDA_SUCCESS || cuDeviceGet(&dev, 0) != CUDA_SUCCESS ||
        cuDevicePrimaryCtxRetain(&ctx, dev) != CUDA_SUCCESS ||
        cuCtxSetCurrent(ctx) != CUDA_SUCCESS)
        return 3;
    if (!strcmp(argv[1], "race") && argc == 5) {
        iterations = atoi(argv[3]);
        chunk = strtoull(argv[4], NULL, 10);
        return race(atoi(argv[2]));
    }
    if (!strcmp(argv[1], "hold"))
        return hold(strtoull(argv[2], NULL, 10));
    if (!strcmp(argv[1], "try"))
        return try_once(strtoull(argv[2], NULL, 10));
    if (!strcmp(argv[1], "exec"))
        return exec_try(argv[2]);
    return 2;
}
