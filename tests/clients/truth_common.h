/*
 * truth_common.h — what the budget-truth clients (client_truth.c,
 * client_holders.c, client_graph.c) share: device 0's primary context made
 * current, allocating until refused, the properties of device memory made
 * with cuMemCreate, and the line's end with the test driver's own view of
 * device 0, read through dlsym on libcuda.so.1, which the shim cannot
 * rewrite.
 */
#ifndef VG_TRUTH_COMMON_H
#define VG_TRUTH_COMMON_H

#include <cuda.h>
#include <dlfcn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static CUcontext g_ctx;
static CUdevice g_dev;

/* A fakecuda_* counter of `dev`; -1 on another driver. */
static inline long long driver_query_dev(const char *name, int dev)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    size_t (*f)(int) = h ? (size_t(*)(int))dlsym(h, name) : NULL;
    long long v = f ? (long long)f(dev) : -1;
    if (h)
        dlclose(h);
    return v;
}

static inline long long driver_query(const char *name)
{
    return driver_query_dev(name, 0);
}

/* Ends the case's line with the driver's own view. */
static inline void finish(void)
{
    printf(" peak=%lld used=%lld implicit=%lld\n", driver_query("fakecuda_peak_bytes"),
           driver_query("fakecuda_used_bytes"), driver_query("fakecuda_implicit_bytes"));
    fflush(stdout);
}

/* Device 0's primary context, current; exit 3 when there is none. */
static inline void setup(void)
{
    if (cuInit(0) != CUDA_SUCCESS || cuDeviceGet(&g_dev, 0) != CUDA_SUCCESS ||
        cuDevicePrimaryCtxRetain(&g_ctx, g_dev) != CUDA_SUCCESS ||
        cuCtxSetCurrent(g_ctx) != CUDA_SUCCESS) {
        fprintf(stderr, "client: no device 0 context\n");
        exit(3);
    }
}

#define MAX_HELD 256 /* allocations one loop keeps */

typedef struct {
    CUdeviceptr p[MAX_HELD];
    int n;
    CUresult rc;           /* the refusal that ended the loop, 0 if none */
} held_t;

/* Allocates `size` until refused (or MAX_HELD). */
static inline void fill(held_t *h, size_t size)
{
    h->rc = CUDA_SUCCESS;
    while (h->n < MAX_HELD && (h->rc = cuMemAlloc(&h->p[h->n], size)) == CUDA_SUCCESS)
        h->n++;
}

static inline void release_all(held_t *h)
{
    while (h->n > 0)
        cuMemFree(h->p[--h->n]);
}

/* Pinned device memory on device 0, for cuMemCreate. */
static inline CUmemAllocationProp vmm_prop(void)
{
    CUmemAllocationProp p = {0};
    p.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    p.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    p.location.id = g_dev;
    return p;
}

/* A thread that races a destroy for a freed address: it waits until the
 * driver's use fell below used_before (the destroy freed the memory), then
 * a little longer, into the destroy's question to the driver (the tests
 * make that slow), and takes 64 MiB (mostly the freed address). */
typedef struct {
    long long used_before; /* the driver's use before the destroy */
    CUdeviceptr p;         /* the worker's block */
    CUresult rc;
} address_reuse_t;

static inline void *address_reuse_worker(void *arg)
{
    address_reuse_t *r = arg;
    cuCtxSetCurrent(g_ctx);
    while (driver_query("fakecuda_used_bytes") >= r->used_before)
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    nanosleep(&(struct timespec){0, 50000000}, NULL); /* into the destroy's question */
    r->rc = cuMemAlloc(&r->p, (size_t)64 << 20);
    return NULL;
}

/* Up to 4 destroys raced by address_reuse_worker (`once` makes one and
 * says whether the worker got the freed address); when one did, 128 MiB
 * more. Prints path=PATH reused= tries= destroy_rc= alloc_rc= more_rc=. */
static inline void race_for_address(const char *path,
                                    bool (*once)(address_reuse_t *r, CUresult *destroy))
{
    address_reuse_t r;
    CUresult destroy = CUDA_SUCCESS, more = CUDA_ERROR_UNKNOWN;
    CUdeviceptr b = 0;
    int tries = 0;
    bool reused = false;
    while (!reused && tries++ < 4) {
        reused = once(&r, &destroy);
        if (!reused && r.rc == CUDA_SUCCESS)
            cuMemFree(r.p);
    }
    if (reused)
        more = cuMemAlloc(&b, (size_t)128 << 20);
    printf("path=%s reused=%d tries=%d destroy_rc=%d alloc_rc=%d more_rc=%d", path, reused, tries,
           destroy, r.rc, more);
    finish();
    if (reused)
        cuMemFree(r.p);
    if (more == CUDA_SUCCESS)
        cuMemFree(b);
}

#endif /* VG_TRUTH_COMMON_H */
