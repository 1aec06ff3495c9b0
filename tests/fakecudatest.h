/*
 * fakecudatest.h — what the tests of the test driver itself
 * (test_fakecuda*.c) share. They link tests/fakecuda (libcuda.so.1)
 * directly, not the engine, and read its ledger through
 * fakecuda/fakecuda_query.h. Expected codes marked "measured" in them were
 * taken on an H100 with driver 580.159 (CUDA 13.0).
 *
 * Each test runs in its own process, so each sets its environment
 * (capacity, fault injection) before calling cuInit (start()).
 */
#ifndef VG_FAKECUDATEST_H
#define VG_FAKECUDATEST_H

#include <criterion/criterion.h>

#include <cuda.h>
#include <dlfcn.h>
#include <stdlib.h>

#include "fakecuda/fakecuda_query.h"
#include "testutil.h"

#define FAKE_PTR 0x7f8000000000ull

/* Asserts a CUresult, naming the call on failure. */
#define EXPECT_CU(call, want) cr_assert_eq((call), (want), "%s", #call)

static inline void *sym(const char *name)
{
    void *p = dlsym(RTLD_DEFAULT, name);
    cr_assert_not_null(p, "libcuda.so.1 does not export %s", name);
    return p;
}

/* cuInit with this capacity (NULL: the default), primary context current. */
static inline CUcontext start(const char *total_bytes)
{
    if (total_bytes)
        setenv("FAKECUDA_TOTAL_BYTES", total_bytes, 1);
    CUcontext ctx;
    EXPECT_CU(cuInit(0), CUDA_SUCCESS);
    EXPECT_CU(cuDevicePrimaryCtxRetain(&ctx, 0), CUDA_SUCCESS);
    EXPECT_CU(cuCtxSetCurrent(ctx), CUDA_SUCCESS);
    return ctx;
}

#endif
