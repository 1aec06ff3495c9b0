/*
 * client_vmm.c — VMM handle reuse under the shim (tests/test_truth.c):
 * the driver frees a handle in one thread and, before that call returned,
 * hands the same handle value to another thread's cuMemCreate (the test
 * sets FAKECUDA_VMM_REUSE=1 and makes the freeing call slow to return).
 * Prints one line: path=CASE rc= create_rc= same= more_rc= and the driver's
 * own view (truth_common.h).
 *
 * Cases:
 *   reuse_release 256 MiB created, then released while another thread
 *               creates 512 MiB and is handed the same handle; then 640 MiB
 *   reuse_unmap 256 MiB created, mapped and released, then unmapped while
 *               another thread creates 512 MiB and is handed the same
 *               handle; then 640 MiB
 */
#include <cuda.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "truth_common.h"

#define MiB (1024ull * 1024ull)

typedef struct {
    long long idle;                 /* the driver's use before the first create */
    CUmemGenericAllocationHandle old, mine;
    CUresult create_rc;
} reuse_t;

static CUmemGenericAllocationHandle create(size_t size, CUresult *rc)
{
    CUmemAllocationProp p = {0};
    p.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    p.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    p.location.id = g_dev;
    CUmemGenericAllocationHandle h = 0;
    *rc = cuMemCreate(&h, size, &p, 0);
    return h;
}

/* Creates 512 MiB once the driver has freed the first handle (its use is
 * back to idle), while the call that freed it has not returned yet. */
static void *reuse_worker(void *arg)
{
    reuse_t *r = arg;
    cuCtxSetCurrent(g_ctx);
    for (int i = 0; i < 5000 && driver_query("fakecuda_used_bytes") > r->idle; i++)
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    r->mine = create(512 * MiB, &r->create_rc);
    return NULL;
}

static void case_reuse(const char *name, bool unmap)
{
    reuse_t r = {.idle = driver_query("fakecuda_used_bytes")};
    CUresult rc;
    CUdeviceptr va = 0;
    pthread_t t;
    r.old = create(256 * MiB, &rc);
    if (rc == CUDA_SUCCESS && unmap)
        rc = cuMemAddressReserve(&va, 256 * MiB, 0, 0, 0) || cuMemMap(va, 256 * MiB, 0, r.old, 0) ||
                     cuMemRelease(r.old)
                 ? CUDA_ERROR_UNKNOWN
                 : CUDA_SUCCESS;
    if (rc != CUDA_SUCCESS || pthread_create(&t, NULL, reuse_worker, &r) != 0) {
        fprintf(stderr, "client_vmm: %s setup failed\n", name);
        exit(3);
    }
    rc = unmap ? cuMemUnmap(va, 256 * MiB) : cuMemRelease(r.old);
    pthread_join(t, NULL);
    CUdeviceptr b = 0;
    CUresult more = cuMemAlloc(&b, 640 * MiB);
    printf("path=%s rc=%d create_rc=%d same=%d more_rc=%d", name, rc, r.create_rc,
           r.mine == r.old, more);
    finish();
    if (more == CUDA_SUCCESS)
        cuMemFree(b);
    if (r.create_rc == CUDA_SUCCESS)
        cuMemRelease(r.mine);
    if (va)
        cuMemAddressFree(va, 256 * MiB);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: client_vmm CASE\n");
        return 2;
    }
    setup();
    if (!strcmp(argv[1], "reuse_release"))
        case_reuse(argv[1], false);
    else if (!strcmp(argv[1], "reuse_unmap"))
        case_reuse(argv[1], true);
    else {
        fprintf(stderr, "client_vmm: unknown case %s\n", argv[1]);
        return 2;
    }
    return 0;
}
