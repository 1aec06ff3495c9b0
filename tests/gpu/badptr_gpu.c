/*
 * badptr_gpu.c — pointers handed back to cuMemFree_v2 that were never real
 * allocations (docs/audit-log.md): a fake pointer, a double free, a host pointer and
 * an interior pointer, each answered by whatever libcuda.so.1 the loader
 * finds and, when preloaded, by the shim first. No vramguard code: linked
 * with -lcuda (the toolkit stub, no rpath), like driver_paths.c.
 *
 *   badptr_gpu [--expect RC|driver] [--codes FILE]
 *
 * For each case it prints one line "CASE|<name>|<pointer hex>|<rc>" (the
 * caller matches the pointers with the audit log's bad_ptr events) and one
 * RESULT row. --expect RC: each bad free must return RC (e.g. 1 under
 * VRAMGUARD_ON_BAD_POINTER=reject). --codes FILE: a native run's CASE lines;
 * each bad free must return the same code as the driver did there (warn).
 * Without either the codes are reported (info). The real allocations must
 * always be freed with CUDA_SUCCESS, and cuMemGetInfo's free must come back.
 */
#include <stdbool.h>
#include <string.h>

#include <cuda.h>

#include "gpu_common.h"

#define FAKE 0x7f8000000000ull
#define INTERIOR_OFFSET 4096

enum { C_FAKE, C_FREED, C_HOST, C_INTERIOR, CASES };
static const char *case_name[CASES] = {"fake", "freed", "host", "interior"};

static const char *cu_name(CUresult rc)
{
    const char *s = NULL;
    return cuGetErrorName(rc, &s) == CUDA_SUCCESS && s ? s : "CUDA_ERROR_?";
}

/* The native run's code for each case from FILE's CASE lines; -1 if absent. */
static void load_codes(const char *path, int codes[CASES])
{
    for (int i = 0; i < CASES; i++)
        codes[i] = -1;
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char line[256];
    while (fgets(line, sizeof line, f)) {
        char name[32];
        unsigned long long ptr;
        int rc;
        if (sscanf(line, "CASE|%31[^|]|%llx|%d", name, &ptr, &rc) != 3)
            continue;
        for (int i = 0; i < CASES; i++)
            if (!strcmp(name, case_name[i]))
                codes[i] = rc;
    }
    fclose(f);
}

static size_t mem_free(void)
{
    size_t fr = 0, total = 0;
    cuMemGetInfo(&fr, &total);
    return fr;
}

int main(int argc, char **argv)
{
    int expect = -1; /* a fixed code for every case */
    int native[CASES] = {-1, -1, -1, -1};
    bool have_native = false;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--expect"))
            expect = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--codes")) {
            load_codes(argv[i + 1], native);
            have_native = true;
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    CUdevice dev;
    CUcontext ctx;
    CUresult rc = cuInit(0);
    if (rc == CUDA_SUCCESS)
        rc = cuDeviceGet(&dev, 0);
    if (rc == CUDA_SUCCESS)
        rc = cuDevicePrimaryCtxRetain(&ctx, dev);
    if (rc == CUDA_SUCCESS)
        rc = cuCtxSetCurrent(ctx);
    if (rc != CUDA_SUCCESS) {
        gpu_row("badptr_init", "FAIL", "%s", cu_name(rc));
        return 1;
    }
    /* One allocation held throughout, so the driver keeps its chunk and the
     * free figure below compares like with like. */
    CUdeviceptr ballast = 0;
    CUresult rb = cuMemAlloc(&ballast, 4096);
    size_t free0 = mem_free();

    CUdeviceptr ptr[CASES] = {0};
    CUresult got[CASES];
    CUresult real_rc[3] = {CUDA_SUCCESS, CUDA_SUCCESS, CUDA_SUCCESS};

    /* fake: an address nothing ever allocated (the stride pattern) */
    ptr[C_FAKE] = (CUdeviceptr)FAKE;
    got[C_FAKE] = cuMemFree(ptr[C_FAKE]);

    /* freed: a real 1 MiB allocation, freed, then freed again */
    CUdeviceptr p = 0;
    real_rc[0] = cuMemAlloc(&p, MIB);
    if (real_rc[0] == CUDA_SUCCESS)
        real_rc[0] = cuMemFree(p);
    ptr[C_FREED] = p;
    got[C_FREED] = p ? cuMemFree(p) : CUDA_ERROR_UNKNOWN;

    /* host: ordinary malloc'd memory */
    char *h = malloc(1 << 16);
    if (h)
        memset(h, 0x5a, 1 << 16);
    ptr[C_HOST] = (CUdeviceptr)(uintptr_t)h;
    got[C_HOST] = h ? cuMemFree(ptr[C_HOST]) : CUDA_ERROR_UNKNOWN;

    /* interior: 4 KiB into a live 1 MiB allocation, which is then freed
     * properly (it must still be live: the bad free must not have freed it) */
    CUdeviceptr q = 0;
    real_rc[1] = cuMemAlloc(&q, MIB);
    ptr[C_INTERIOR] = q ? q + INTERIOR_OFFSET : 0;
    got[C_INTERIOR] = q ? cuMemFree(ptr[C_INTERIOR]) : CUDA_ERROR_UNKNOWN;
    if (real_rc[1] == CUDA_SUCCESS)
        real_rc[1] = cuMemFree(q);
    free(h);

    int bad = 0;
    for (int i = 0; i < CASES; i++) {
        printf("CASE|%s|%llx|%d\n", case_name[i], (unsigned long long)ptr[i], (int)got[i]);
        char check[32];
        snprintf(check, sizeof check, "badptr_%s", case_name[i]);
        int want = expect >= 0 ? expect : have_native ? native[i] : -1;
        if (want < 0 && !have_native)
            gpu_row(check, got[i] == CUDA_SUCCESS ? "FAIL" : "info",
                    "cuMemFree(0x%llx) = %s (%d)%s", (unsigned long long)ptr[i],
                    cu_name(got[i]), (int)got[i],
                    got[i] == CUDA_SUCCESS ? ": the driver accepted it" : "");
        else {
            bool ok = want >= 0 && (int)got[i] == want;
            bad += !ok;
            gpu_check(check, ok, "cuMemFree(0x%llx) = %s (%d), want %d (%s)",
                      (unsigned long long)ptr[i], cu_name(got[i]), (int)got[i], want,
                      expect >= 0 ? "--expect" : "the native run's code");
        }
    }
    real_rc[2] = rb == CUDA_SUCCESS ? cuMemFree(ballast) : rb;
    size_t free1 = mem_free();
    gpu_check("badptr_real_frees",
              real_rc[0] == CUDA_SUCCESS && real_rc[1] == CUDA_SUCCESS &&
                  real_rc[2] == CUDA_SUCCESS && free1 + 4 * MIB >= free0,
              "double-freed block's first free %s, interior block's own free %s, ballast %s; "
              "cuMemGetInfo free %.3f GiB before, %.3f GiB after",
              cu_name(real_rc[0]), cu_name(real_rc[1]), cu_name(real_rc[2]), gpu_gib(free0),
              gpu_gib(free1));
    (void)bad;
    return gpu_failures ? 1 : 0;
}
