/*
 * test_fakecuda.c: the test driver (tests/fakecuda, built as libcuda.so.1)
 * answers like the real driver where vramguard depends on it. Expected codes
 * marked "measured" were taken on an H100 with driver 580.159 (CUDA 13.0).
 * Each test runs in its own process, so each sets its environment (capacity,
 * fault injection) before calling cuInit.
 */
#include <criterion/criterion.h>

#include <cuda.h>
#include <dlfcn.h>
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

#include "fakecuda/fakecuda_query.h"

#define MiB (1024ull * 1024ull)
#define GiB (1024ull * MiB)
#define FAKE_PTR 0x7f8000000000ull

/* Asserts a CUresult, naming the call on failure. */
#define EXPECT_CU(call, want) cr_assert_eq((call), (want), "%s", #call)

/* The legacy 32-bit ABI the library still exports (cuda.h renames these). */
typedef CUresult (*legacy_alloc_fn)(unsigned int *dptr, unsigned int bytesize);
typedef CUresult (*legacy_free_fn)(unsigned int dptr);
typedef CUresult (*legacy_info_fn)(unsigned int *free, unsigned int *total);
typedef CUresult (*gpa_v1_fn)(const char *symbol, void **pfn, int version, cuuint64_t flags);
/* Per-thread-stream twins: cuda.h declares them only under
 * CUDA_API_PER_THREAD_DEFAULT_STREAM. */
typedef CUresult (*alloc_async_fn)(CUdeviceptr *dptr, size_t bytesize, CUstream s);
typedef CUresult (*free_async_fn)(CUdeviceptr dptr, CUstream s);
typedef CUresult (*graph_launch_fn)(CUgraphExec exec, CUstream s);

static void *sym(const char *name)
{
    void *p = dlsym(RTLD_DEFAULT, name);
    cr_assert_not_null(p, "libcuda.so.1 does not export %s", name);
    return p;
}

/* cuInit with this capacity (NULL: the default), primary context current. */
static CUcontext start(const char *total_bytes)
{
    if (total_bytes)
        setenv("FAKECUDA_TOTAL_BYTES", total_bytes, 1);
    CUcontext ctx;
    EXPECT_CU(cuInit(0), CUDA_SUCCESS);
    EXPECT_CU(cuDevicePrimaryCtxRetain(&ctx, 0), CUDA_SUCCESS);
    EXPECT_CU(cuCtxSetCurrent(ctx), CUDA_SUCCESS);
    return ctx;
}

static void *resolve(const char *name, int version, cuuint64_t flags, CUdriverProcAddressQueryResult *st)
{
    void *fn = (void *)1;
    EXPECT_CU(cuGetProcAddress(name, &fn, version, flags, st), CUDA_SUCCESS);
    return fn;
}

static cuuint64_t pool_attr(CUmemoryPool pool, CUmemPool_attribute attr)
{
    cuuint64_t v = 0;
    EXPECT_CU(cuMemPoolGetAttribute(pool, attr, &v), CUDA_SUCCESS);
    return v;
}

/* ---- initialisation and devices ---- */

Test(fakecuda, calls_before_cuInit_return_not_initialized)
{
    CUdeviceptr p;
    int n, v;
    EXPECT_CU(cuMemAlloc(&p, 16), CUDA_ERROR_NOT_INITIALIZED);
    EXPECT_CU(cuDeviceGetCount(&n), CUDA_ERROR_NOT_INITIALIZED);
    EXPECT_CU(cuDriverGetVersion(&v), CUDA_SUCCESS);
    cr_assert_eq(v, 13000);
    EXPECT_CU(cuInit(1), CUDA_ERROR_INVALID_VALUE);
}

Test(fakecuda, devices_come_from_the_environment)
{
    setenv("FAKECUDA_DEVICES", "3", 1);
    setenv("FAKECUDA_TOTAL_BYTES", "1234567", 1);
    EXPECT_CU(cuInit(0), CUDA_SUCCESS);
    int n, major, minor, sms, ua, pools, vmm;
    size_t total;
    CUdevice d;
    EXPECT_CU(cuDeviceGetCount(&n), CUDA_SUCCESS);
    cr_assert_eq(n, 3);
    EXPECT_CU(cuDeviceGet(&d, 3), CUDA_ERROR_INVALID_DEVICE);
    EXPECT_CU(cuDeviceGet(&d, 2), CUDA_SUCCESS);
    EXPECT_CU(cuDeviceTotalMem(&total, d), CUDA_SUCCESS);
    cr_assert_eq(total, 1234567);
    EXPECT_CU(cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, d), CUDA_SUCCESS);
    EXPECT_CU(cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, d), CUDA_SUCCESS);
    EXPECT_CU(cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, d), CUDA_SUCCESS);
    EXPECT_CU(cuDeviceGetAttribute(&ua, CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING, d), CUDA_SUCCESS);
    EXPECT_CU(cuDeviceGetAttribute(&pools, CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED, d), CUDA_SUCCESS);
    EXPECT_CU(cuDeviceGetAttribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, d),
              CUDA_SUCCESS);
    cr_assert(major == 9 && minor == 0 && sms == 132 && ua == 1 && pools == 1 && vmm == 1);
}

Test(fakecuda, default_capacity_is_80_GiB_and_uuids_are_per_ordinal)
{
    setenv("FAKECUDA_DEVICES", "2", 1);
    EXPECT_CU(cuInit(0), CUDA_SUCCESS);
    size_t total;
    CUuuid a, a2, b;
    char name[64];
    EXPECT_CU(cuDeviceTotalMem(&total, 0), CUDA_SUCCESS);
    cr_assert_eq(total, 85899345920ull);
    EXPECT_CU(cuDeviceGetUuid(&a, 0), CUDA_SUCCESS);
    EXPECT_CU(cuDeviceGetUuid(&a2, 0), CUDA_SUCCESS);
    EXPECT_CU(cuDeviceGetUuid(&b, 1), CUDA_SUCCESS);
    cr_assert(memcmp(&a, &a2, sizeof a) == 0 && memcmp(&a, &b, sizeof a) != 0);
    EXPECT_CU(cuDeviceGetName(name, sizeof name, 1), CUDA_SUCCESS);
    cr_assert(strlen(name) > 0);
}

Test(fakecuda, malformed_capacity_fails_cuInit)
{
    /* The driver says why on stderr: that line is this test's to check,
     * not noise in a green run. */
    char path[] = "/tmp/vg-fakecuda-err-XXXXXX", said[256] = "";
    int fd = mkstemp(path), saved = dup(2);
    cr_assert(fd >= 0 && saved >= 0);
    setenv("FAKECUDA_TOTAL_BYTES", "1GiB", 1);
    fflush(stderr);
    dup2(fd, 2);
    CUresult rc = cuInit(0);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    ssize_t n = pread(fd, said, sizeof said - 1, 0);
    close(fd);
    unlink(path);
    said[n > 0 ? n : 0] = '\0';
    EXPECT_CU(rc, CUDA_ERROR_INVALID_VALUE);
    cr_expect_not_null(strstr(said, "FAKECUDA_TOTAL_BYTES=\"1GiB\" is not a plain count"), "%s",
                       said);
}

Test(fakecuda, error_names_and_strings)
{
    const char *s = (const char *)1;
    EXPECT_CU(cuGetErrorName(CUDA_ERROR_OUT_OF_MEMORY, &s), CUDA_SUCCESS);
    cr_assert_str_eq(s, "CUDA_ERROR_OUT_OF_MEMORY");
    EXPECT_CU(cuGetErrorString(CUDA_ERROR_INVALID_VALUE, &s), CUDA_SUCCESS);
    cr_assert_str_eq(s, "invalid argument");
    EXPECT_CU(cuGetErrorName((CUresult)12345, &s), CUDA_ERROR_INVALID_VALUE);
    cr_assert_null(s);
}

/* ---- contexts ---- */

Test(fakecuda, memory_calls_without_a_context_return_invalid_context)
{
    EXPECT_CU(cuInit(0), CUDA_SUCCESS);
    CUdeviceptr p;
    size_t f, t;
    EXPECT_CU(cuMemAlloc(&p, 16), CUDA_ERROR_INVALID_CONTEXT);
    EXPECT_CU(cuMemGetInfo(&f, &t), CUDA_ERROR_INVALID_CONTEXT);
    EXPECT_CU(cuMemFree(FAKE_PTR), CUDA_ERROR_INVALID_CONTEXT);
    EXPECT_CU(cuMemFree(0), CUDA_SUCCESS);   /* measured: even with no context */
    EXPECT_CU(cuDevicePrimaryCtxRelease(0), CUDA_ERROR_INVALID_CONTEXT);
}

static void *no_context_in_new_thread(void *arg)
{
    (void)arg;
    CUcontext c = (CUcontext)1;
    CUdeviceptr p;
    bool ok = cuCtxGetCurrent(&c) == CUDA_SUCCESS && c == NULL &&
              cuMemAlloc(&p, 16) == CUDA_ERROR_INVALID_CONTEXT;
    return ok ? arg : NULL;
}

Test(fakecuda, the_current_context_is_per_thread)
{
    start(NULL);
    pthread_t t;
    int token;
    void *ret = NULL;
    cr_assert_eq(pthread_create(&t, NULL, no_context_in_new_thread, &token), 0);
    pthread_join(t, &ret);
    cr_assert_eq(ret, &token);
}

Test(fakecuda, push_pop_and_created_contexts)
{
    CUcontext primary = start(NULL), mine, popped, cur;
    CUdevice dev = -1;
    EXPECT_CU(cuCtxCreate(&mine, NULL, 0, 0), CUDA_SUCCESS);
    EXPECT_CU(cuCtxGetCurrent(&cur), CUDA_SUCCESS);
    cr_assert_eq(cur, mine);
    EXPECT_CU(cuCtxGetDevice(&dev), CUDA_SUCCESS);
    cr_assert_eq(dev, 0);
    EXPECT_CU(cuCtxPopCurrent(&popped), CUDA_SUCCESS);
    cr_assert_eq(popped, mine);
    EXPECT_CU(cuCtxGetCurrent(&cur), CUDA_SUCCESS);
    cr_assert_eq(cur, primary);
    EXPECT_CU(cuCtxPushCurrent(mine), CUDA_SUCCESS);
    CUdeviceptr p;
    EXPECT_CU(cuMemAlloc(&p, 4 * MiB), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 4 * MiB);
    EXPECT_CU(cuCtxDestroy(mine), CUDA_SUCCESS);   /* frees what it owned */
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(cuCtxDestroy(mine), CUDA_ERROR_INVALID_CONTEXT);
    EXPECT_CU(cuCtxDestroy(primary), CUDA_ERROR_INVALID_CONTEXT);   /* measured */
}

/* A stream belongs to the context current when it was made, whichever is
 * current when it is used; the default streams to the current one. The
 * stream-ordered allocator draws from the stream's device. */
Test(fakecuda, a_stream_belongs_to_the_context_it_was_made_in)
{
    setenv("FAKECUDA_DEVICES", "2", 1);
    CUcontext ctx0 = start(NULL), ctx1, got;
    CUstream s1;
    CUdevice dev = -1;
    CUdeviceptr p;
    EXPECT_CU(cuDevicePrimaryCtxRetain(&ctx1, 1), CUDA_SUCCESS);
    EXPECT_CU(cuCtxSetCurrent(ctx1), CUDA_SUCCESS);
    EXPECT_CU(cuStreamCreate(&s1, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
    EXPECT_CU(cuCtxSetCurrent(ctx0), CUDA_SUCCESS);
    EXPECT_CU(cuStreamGetDevice(s1, &dev), CUDA_SUCCESS);
    cr_assert_eq(dev, 1);
    EXPECT_CU(cuStreamGetCtx(s1, &got), CUDA_SUCCESS);
    cr_assert_eq(got, ctx1);
    EXPECT_CU(cuStreamGetDevice(CU_STREAM_LEGACY, &dev), CUDA_SUCCESS);
    cr_assert_eq(dev, 0);
    EXPECT_CU(cuStreamGetCtx(NULL, &got), CUDA_SUCCESS);
    cr_assert_eq(got, ctx0);
    EXPECT_CU(cuMemAllocAsync(&p, 4 * MiB, s1), CUDA_SUCCESS);
    cr_assert(fakecuda_used_bytes(1) == 4 * MiB && fakecuda_used_bytes(0) == 0);
    EXPECT_CU(cuStreamDestroy(s1), CUDA_SUCCESS);
    EXPECT_CU(cuStreamGetDevice(s1, &dev), CUDA_ERROR_INVALID_HANDLE);
}

Test(fakecuda, cuStreamGetDevice_can_be_missing_as_before_CUDA_12_8)
{
    setenv("FAKECUDA_NO_STREAM_DEVICE", "1", 1);
    CUcontext ctx = start(NULL), got;
    CUdevice dev = -1;
    EXPECT_CU(cuStreamGetDevice(NULL, &dev), CUDA_ERROR_NOT_FOUND);
    EXPECT_CU(cuStreamGetCtx(NULL, &got), CUDA_SUCCESS);
    cr_assert_eq(got, ctx);
}

/* ---- cuGetProcAddress ---- */

Test(fakecuda, proc_address_picks_the_abi_by_version)
{
    CUdriverProcAddressQueryResult st;
    cr_assert_eq(resolve("cuMemAlloc", 3020, 0, &st), sym("cuMemAlloc_v2"));
    cr_assert_eq(st, CU_GET_PROC_ADDRESS_SUCCESS);
    cr_assert_eq(resolve("cuMemAlloc", 2000, 0, &st), sym("cuMemAlloc"));
    cr_assert_eq(resolve("cuCtxCreate", 12050, 0, &st), sym("cuCtxCreate_v4"));
    cr_assert_eq(resolve("cuCtxCreate", 11040, 0, &st), sym("cuCtxCreate_v3"));
    cr_assert_eq(resolve("cuCtxCreate", 3020, 0, &st), sym("cuCtxCreate_v2"));
    cr_assert_eq(resolve("cuGetProcAddress", 12000, 0, &st), sym("cuGetProcAddress_v2"));
    cr_assert_eq(resolve("cuGetProcAddress", 11030, 0, &st), sym("cuGetProcAddress"));
    cr_assert_eq(resolve("cuGraphInstantiate", 12000, 0, &st), sym("cuGraphInstantiate_v2"));
    cr_assert_eq(resolve("cuDeviceGetUuid", 11040, 0, &st), sym("cuDeviceGetUuid_v2"));
}

Test(fakecuda, proc_address_per_thread_flag_selects_the_ptsz_twin)
{
    CUdriverProcAddressQueryResult st;
    cr_assert_eq(resolve("cuMemAllocAsync", 11020, 2, &st), sym("cuMemAllocAsync_ptsz"));
    cr_assert_eq(resolve("cuMemAllocAsync", 11020, 0, &st), sym("cuMemAllocAsync"));
    cr_assert_eq(resolve("cuMemAllocAsync", 11020, 1, &st), sym("cuMemAllocAsync"));
    cr_assert_eq(resolve("cuMemcpyHtoD", 12000, 2, &st), sym("cuMemcpyHtoD_v2_ptds"));
    cr_assert_eq(resolve("cuStreamSynchronize", 12000, 2, &st), sym("cuStreamSynchronize_ptsz"));
    /* no ptsz twin before its version: the legacy-stream entry */
    cr_assert_eq(resolve("cuStreamSynchronize", 3020, 2, &st), sym("cuStreamSynchronize"));
    cr_assert_eq(resolve("cuMemAlloc", 12000, 2, &st), sym("cuMemAlloc_v2"));
}

Test(fakecuda, proc_address_misses_report_status_like_the_real_driver)
{
    CUdriverProcAddressQueryResult st = 99;
    cr_assert_null(resolve("cuNoSuchThing", 12000, 0, &st));
    cr_assert_eq(st, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
    cr_assert_null(resolve("cuMemAlloc_v2", 12000, 0, &st));   /* versioned names are not bases */
    cr_assert_eq(st, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
    cr_assert_null(resolve("cuMemAllocAsync", 11000, 0, &st));
    cr_assert_eq(st, CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT);
    void *fn = (void *)1;
    EXPECT_CU(cuGetProcAddress("cuMemAlloc", &fn, 13010, 0, &st), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuGetProcAddress("cuMemAlloc", &fn, 12000, 4, &st), CUDA_ERROR_INVALID_VALUE);
    gpa_v1_fn v1 = (gpa_v1_fn)sym("cuGetProcAddress");
    EXPECT_CU(v1("cuNoSuchThing", &fn, 12000, 0), CUDA_ERROR_NOT_FOUND);
    cr_assert_null(fn);
    EXPECT_CU(v1("cuMemAllocAsync", &fn, 11000, 0), CUDA_ERROR_NOT_FOUND);
    EXPECT_CU(v1("cuMemAlloc", &fn, 12000, 0), CUDA_SUCCESS);
    cr_assert_eq(fn, sym("cuMemAlloc_v2"));
}

/* Strips _ptsz/_ptds, then one _v<N>: cuMemcpyHtoD_v2_ptds -> cuMemcpyHtoD. */
static void base_name(const char *s, char *out, size_t len)
{
    snprintf(out, len, "%s", s);
    size_t n = strlen(out);
    if (n > 5 && (!strcmp(out + n - 5, "_ptsz") || !strcmp(out + n - 5, "_ptds")))
        out[n -= 5] = '\0';
    char *v = strrchr(out, '_');
    if (v && v[1] == 'v' && v[2] >= '0' && v[2] <= '9')
        *v = '\0';
}

static bool reachable(const char *name)
{
    static const int versions[] = { 2000, 2020, 3000, 3020, 4000, 5000, 5050, 6000, 7000, 9020,
                                    10000, 10020, 11000, 11020, 11030, 11040, 11060, 12000, 12020,
                                    12030, 12050, 13000 };
    char base[256];
    base_name(name, base, sizeof base);
    void *want = dlsym(RTLD_DEFAULT, name);
    for (size_t i = 0; i < sizeof versions / sizeof versions[0]; i++)
        for (cuuint64_t flags = 0; flags <= 2; flags += 2) {
            void *fn = NULL;
            CUdriverProcAddressQueryResult st;
            if (cuGetProcAddress(base, &fn, versions[i], flags, &st) == CUDA_SUCCESS && fn == want)
                return true;
        }
    return false;
}

Test(fakecuda, every_exported_entry_point_is_reachable_through_proc_address)
{
    Dl_info info;
    cr_assert(dladdr(sym("cuInit"), &info) && info.dli_fname);
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "nm -D --defined-only '%s'", info.dli_fname);
    FILE *nm = popen(cmd, "r");
    cr_assert_not_null(nm);
    char line[512], name[256];
    int checked = 0;
    while (fgets(line, sizeof line, nm)) {
        if (sscanf(line, "%*s %*s %255s", name) != 1 || strncmp(name, "cu", 2) != 0)
            continue;
        cr_expect(reachable(name), "%s is exported but not reachable", name);
        checked++;
    }
    pclose(nm);
    cr_assert_gt(checked, 100);
}

/* ---- plain allocations ---- */

Test(fakecuda, allocations_beyond_capacity_fail_with_out_of_memory)
{
    start("1073741824");   /* 1 GiB */
    CUdeviceptr a, b;
    size_t f, t;
    EXPECT_CU(cuMemAlloc(&a, 768 * MiB), CUDA_SUCCESS);
    EXPECT_CU(cuMemAlloc(&b, 512 * MiB), CUDA_ERROR_OUT_OF_MEMORY);
    EXPECT_CU(cuMemGetInfo(&f, &t), CUDA_SUCCESS);
    cr_assert(f == 256 * MiB && t == GiB);
    EXPECT_CU(cuMemAlloc(&b, 256 * MiB), CUDA_SUCCESS);
    EXPECT_CU(cuMemAlloc(&b, 1), CUDA_ERROR_OUT_OF_MEMORY);
    cr_assert_eq(fakecuda_peak_bytes(0), GiB);
    EXPECT_CU(cuMemFree(a), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 256 * MiB);
}

Test(fakecuda, bad_frees_return_invalid_value_and_do_not_crash)
{
    start(NULL);
    CUdeviceptr p;
    EXPECT_CU(cuMemAlloc(&p, 0), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemAlloc(&p, 1000), CUDA_SUCCESS);
    EXPECT_CU(cuMemFree(FAKE_PTR), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemFree(p + 16), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemFree(p), CUDA_SUCCESS);
    EXPECT_CU(cuMemFree(p), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemFreeAsync(p, NULL), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemFree(0), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
}

Test(fakecuda, pointers_are_512_aligned_and_big_allocations_cost_no_ram)
{
    start(NULL);
    static const size_t sizes[] = { 1, 100, 513, 4096, 65536, 1 << 20, 2 * GiB };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        CUdeviceptr p;
        EXPECT_CU(cuMemAlloc(&p, sizes[i]), CUDA_SUCCESS);
        cr_assert_eq(p % 512, 0);
        unsigned char in[8] = "fakecud", out[8] = { 0 };
        EXPECT_CU(cuMemcpyHtoD(p + sizes[i] - 1, in, 1), CUDA_SUCCESS);
        EXPECT_CU(cuMemcpyDtoH(out, p + sizes[i] - 1, 1), CUDA_SUCCESS);
        cr_assert_eq(out[0], 'f');
    }
    cr_assert_eq(fakecuda_used_bytes(0), 2 * GiB + (1 << 20) + 65536 + 4096 + 513 + 100 + 1);
}

Test(fakecuda, copies_and_memsets_round_trip_and_check_ranges)
{
    start(NULL);
    CUdeviceptr a, b;
    EXPECT_CU(cuMemAlloc(&a, 4096), CUDA_SUCCESS);
    EXPECT_CU(cuMemAlloc(&b, 4096), CUDA_SUCCESS);
    EXPECT_CU(cuMemsetD32(a, 0xdeadbeef, 1024), CUDA_SUCCESS);
    EXPECT_CU(cuMemcpyDtoD(b, a, 4096), CUDA_SUCCESS);
    uint32_t words[1024];
    EXPECT_CU(cuMemcpyDtoH(words, b, sizeof words), CUDA_SUCCESS);
    cr_assert(words[0] == 0xdeadbeef && words[1023] == 0xdeadbeef);
    EXPECT_CU(cuMemsetD8(b, 7, 4096), CUDA_SUCCESS);
    EXPECT_CU(cuMemcpy((CUdeviceptr)(uintptr_t)words, b, 4), CUDA_SUCCESS);
    cr_assert_eq(words[0], 0x07070707);
    EXPECT_CU(cuMemcpyHtoD(a + 4000, words, 200), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemcpyHtoD(FAKE_PTR, words, 4), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemsetD32(a + 2, 0, 4), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemcpyAsync(b, a, 16, NULL), CUDA_SUCCESS);
}

Test(fakecuda, pitch_is_rounded_to_512_and_pitch_times_height_is_charged)
{
    start(NULL);
    CUdeviceptr p, base;
    size_t pitch, size;
    EXPECT_CU(cuMemAllocPitch(&p, &pitch, 1000, 3, 4), CUDA_SUCCESS);
    cr_assert_eq(pitch, 1024);
    EXPECT_CU(cuMemGetAddressRange(&base, &size, p + 2000), CUDA_SUCCESS);
    cr_assert(base == p && size == 3072);
    cr_assert_eq(fakecuda_used_bytes(0), 3072);
    EXPECT_CU(cuMemAllocPitch(&p, &pitch, 1000, 3, 3), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemAllocPitch(&p, &pitch, 0, 3, 4), CUDA_ERROR_INVALID_VALUE);
}

Test(fakecuda, address_range_works_for_interior_pointers)
{
    start(NULL);
    CUdeviceptr p, base = 0;
    size_t size = 0;
    EXPECT_CU(cuMemAlloc(&p, 1000), CUDA_SUCCESS);
    EXPECT_CU(cuMemGetAddressRange(&base, &size, p + 999), CUDA_SUCCESS);
    cr_assert(base == p && size == 1000);
    EXPECT_CU(cuMemGetAddressRange(NULL, &size, p + 1), CUDA_SUCCESS);
    EXPECT_CU(cuMemGetAddressRange(&base, &size, p + 1000), CUDA_ERROR_NOT_FOUND);
    EXPECT_CU(cuMemGetAddressRange(&base, &size, FAKE_PTR), CUDA_ERROR_NOT_FOUND);
}

Test(fakecuda, pointer_attributes_describe_device_and_managed_memory)
{
    CUcontext ctx = start(NULL);
    CUdeviceptr p, m, start_addr = 0;
    unsigned int type = 0, managed = 7, mapped = 0;
    int ordinal = -1;
    size_t size = 0;
    void *host = NULL;
    CUcontext owner = NULL;
    EXPECT_CU(cuMemAlloc(&p, 1 << 20), CUDA_SUCCESS);
    EXPECT_CU(cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, p + 5), CUDA_SUCCESS);
    EXPECT_CU(cuPointerGetAttribute(&managed, CU_POINTER_ATTRIBUTE_IS_MANAGED, p + 5), CUDA_SUCCESS);
    EXPECT_CU(cuPointerGetAttribute(&mapped, CU_POINTER_ATTRIBUTE_MAPPED, p + 5), CUDA_SUCCESS);
    EXPECT_CU(cuPointerGetAttribute(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, p + 5), CUDA_SUCCESS);
    EXPECT_CU(cuPointerGetAttribute(&start_addr, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, p + 5), CUDA_SUCCESS);
    EXPECT_CU(cuPointerGetAttribute(&size, CU_POINTER_ATTRIBUTE_RANGE_SIZE, p + 5), CUDA_SUCCESS);
    EXPECT_CU(cuPointerGetAttribute(&owner, CU_POINTER_ATTRIBUTE_CONTEXT, p + 5), CUDA_SUCCESS);
    cr_assert(type == CU_MEMORYTYPE_DEVICE && managed == 0 && mapped == 1 && ordinal == 0);
    cr_assert(start_addr == p && size == 1 << 20 && owner == ctx);
    EXPECT_CU(cuPointerGetAttribute(&host, CU_POINTER_ATTRIBUTE_HOST_POINTER, p), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, FAKE_PTR), CUDA_ERROR_INVALID_VALUE);

    EXPECT_CU(cuMemAllocManaged(&m, 4096, 7), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemAllocManaged(&m, 4096, CU_MEM_ATTACH_GLOBAL), CUDA_SUCCESS);
    EXPECT_CU(cuPointerGetAttribute(&host, CU_POINTER_ATTRIBUTE_HOST_POINTER, m), CUDA_SUCCESS);
    EXPECT_CU(cuPointerGetAttribute(&managed, CU_POINTER_ATTRIBUTE_IS_MANAGED, m), CUDA_SUCCESS);
    cr_assert(host == (void *)(uintptr_t)m && managed == 1);
}

Test(fakecuda, pointer_get_attributes_gives_defaults_for_unknown_pointers)
{
    start(NULL);
    CUpointer_attribute attrs[3] = { CU_POINTER_ATTRIBUTE_MEMORY_TYPE, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                                     CU_POINTER_ATTRIBUTE_CONTEXT };
    unsigned int type = 9;
    int ordinal = 9;
    CUcontext ctx = (CUcontext)1;
    void *data[3] = { &type, &ordinal, &ctx };
    EXPECT_CU(cuPointerGetAttributes(3, attrs, data, FAKE_PTR), CUDA_SUCCESS);
    cr_assert(type == 0 && ordinal == -2 && ctx == NULL);
}

Test(fakecuda, legacy_32_bit_entry_points_still_work)
{
    start(NULL);
    legacy_alloc_fn alloc = (legacy_alloc_fn)sym("cuMemAlloc");
    legacy_free_fn release = (legacy_free_fn)sym("cuMemFree");
    legacy_info_fn info = (legacy_info_fn)sym("cuMemGetInfo");
    unsigned int p = 0, f = 0, t = 0;
    EXPECT_CU(alloc(&p, 4096), CUDA_SUCCESS);
    cr_assert(p != 0 && p % 512 == 0);
    EXPECT_CU(cuMemsetD8(p, 1, 4096), CUDA_SUCCESS);
    EXPECT_CU(info(&f, &t), CUDA_SUCCESS);
    cr_assert_eq(t, UINT32_MAX);   /* 80 GiB saturates the old ABI */
    EXPECT_CU(release(p), CUDA_SUCCESS);
    EXPECT_CU(release(p), CUDA_ERROR_INVALID_VALUE);
}

/* ---- stream-ordered allocator and pools ---- */

Test(fakecuda, freed_async_blocks_stay_reserved_and_are_reused)
{
    start(NULL);
    CUstream s;
    CUmemoryPool pool;
    CUdeviceptr a, b;
    EXPECT_CU(cuStreamCreate(&s, 0), CUDA_SUCCESS);
    EXPECT_CU(cuDeviceGetMemPool(&pool, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemAllocAsync(&a, 8 * MiB, s), CUDA_SUCCESS);
    cr_assert_eq(pool_attr(pool, CU_MEMPOOL_ATTR_USED_MEM_CURRENT), 8 * MiB);
    EXPECT_CU(cuMemFreeAsync(a, s), CUDA_SUCCESS);
    EXPECT_CU(cuMemFreeAsync(a, s), CUDA_ERROR_INVALID_VALUE);
    cr_assert_eq(pool_attr(pool, CU_MEMPOOL_ATTR_USED_MEM_CURRENT), 0);
    cr_assert_eq(pool_attr(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT), 8 * MiB);
    cr_assert_eq(fakecuda_used_bytes(0), 8 * MiB);   /* still charged */
    EXPECT_CU(cuMemAllocAsync(&b, 6 * MiB, s), CUDA_SUCCESS);
    cr_assert_eq(b, a);                                /* reused */
    cr_assert_eq(fakecuda_used_bytes(0), 8 * MiB);
    EXPECT_CU(cuMemFreeAsync(b, s), CUDA_SUCCESS);
    EXPECT_CU(cuStreamSynchronize(s), CUDA_SUCCESS);   /* threshold 0: all released */
    cr_assert_eq(pool_attr(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT), 0);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    cr_assert_eq(pool_attr(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH), 8 * MiB);
}

Test(fakecuda, sync_points_release_reserve_above_the_threshold)
{
    start(NULL);
    CUmemoryPool pool;
    CUevent ev;
    CUdeviceptr p[3];
    cuuint64_t threshold = 16 * MiB;
    EXPECT_CU(cuDeviceGetDefaultMemPool(&pool, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemPoolSetAttribute(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &threshold), CUDA_SUCCESS);
    for (int i = 0; i < 3; i++)
        EXPECT_CU(cuMemAllocAsync(&p[i], 8 * MiB, NULL), CUDA_SUCCESS);
    for (int i = 0; i < 3; i++)
        EXPECT_CU(cuMemFreeAsync(p[i], NULL), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 24 * MiB);
    EXPECT_CU(cuEventCreate(&ev, 0), CUDA_SUCCESS);
    EXPECT_CU(cuEventRecord(ev, NULL), CUDA_SUCCESS);
    EXPECT_CU(cuEventSynchronize(ev), CUDA_SUCCESS);
    cr_assert_eq(pool_attr(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT), 16 * MiB);
    cr_assert_eq(fakecuda_used_bytes(0), 16 * MiB);
    EXPECT_CU(cuMemPoolTrimTo(pool, 8 * MiB), CUDA_SUCCESS);
    cr_assert_eq(pool_attr(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT), 8 * MiB);
    EXPECT_CU(cuMemPoolTrimTo(pool, 0), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(cuCtxSynchronize(), CUDA_SUCCESS);
}

Test(fakecuda, trim_never_releases_blocks_in_use)
{
    start(NULL);
    CUmemoryPool pool;
    CUdeviceptr p;
    EXPECT_CU(cuDeviceGetDefaultMemPool(&pool, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemAllocAsync(&p, 4 * MiB, NULL), CUDA_SUCCESS);
    EXPECT_CU(cuMemPoolTrimTo(pool, 0), CUDA_SUCCESS);
    EXPECT_CU(cuStreamSynchronize(NULL), CUDA_SUCCESS);
    cr_assert_eq(pool_attr(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT), 4 * MiB);
    EXPECT_CU(cuMemsetD8(p, 1, 4 * MiB), CUDA_SUCCESS);
    EXPECT_CU(cuMemFree(p), CUDA_SUCCESS);   /* measured: cuMemFree takes pool memory */
}

Test(fakecuda, a_pool_allocation_does_not_trim_other_pools)
{
    start("67108864");   /* 64 MiB */
    CUmemoryPool a, b;
    CUmemPoolProps props = { .allocType = CU_MEM_ALLOCATION_TYPE_PINNED,
                             .location = { CU_MEM_LOCATION_TYPE_DEVICE, 0 } };
    cuuint64_t keep_all = UINT64_MAX;
    CUdeviceptr p, q;
    EXPECT_CU(cuMemPoolCreate(&a, &props), CUDA_SUCCESS);
    EXPECT_CU(cuMemPoolCreate(&b, &props), CUDA_SUCCESS);
    EXPECT_CU(cuMemPoolSetAttribute(a, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &keep_all), CUDA_SUCCESS);
    EXPECT_CU(cuMemAllocFromPoolAsync(&p, 48 * MiB, a, NULL), CUDA_SUCCESS);
    EXPECT_CU(cuMemFreeAsync(p, NULL), CUDA_SUCCESS);
    EXPECT_CU(cuStreamSynchronize(NULL), CUDA_SUCCESS);
    cr_assert_eq(pool_attr(a, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT), 48 * MiB);
    EXPECT_CU(cuMemAllocFromPoolAsync(&q, 32 * MiB, b, NULL), CUDA_ERROR_OUT_OF_MEMORY);
    EXPECT_CU(cuMemPoolTrimTo(a, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemAllocFromPoolAsync(&q, 32 * MiB, b, NULL), CUDA_SUCCESS);
    EXPECT_CU(cuMemPoolDestroy(b), CUDA_SUCCESS);   /* lingers until q comes back */
    cr_assert_eq(fakecuda_used_bytes(0), 32 * MiB);
    EXPECT_CU(cuMemFreeAsync(q, NULL), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(cuMemPoolDestroy(b), CUDA_ERROR_INVALID_VALUE);
}

Test(fakecuda, pool_attributes_and_device_pools)
{
    start(NULL);
    CUmemoryPool def, mine, cur;
    CUmemPoolProps props = { .allocType = CU_MEM_ALLOCATION_TYPE_PINNED,
                             .location = { CU_MEM_LOCATION_TYPE_DEVICE, 0 } };
    cuuint64_t v = 5;
    CUdeviceptr p;
    EXPECT_CU(cuDeviceGetDefaultMemPool(&def, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemPoolDestroy(def), CUDA_ERROR_INVALID_VALUE);   /* measured */
    EXPECT_CU(cuMemPoolSetAttribute(def, CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH, &v), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemPoolSetAttribute(def, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &v), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemPoolCreate(&mine, &props), CUDA_SUCCESS);
    EXPECT_CU(cuDeviceSetMemPool(0, mine), CUDA_SUCCESS);
    EXPECT_CU(cuDeviceGetMemPool(&cur, 0), CUDA_SUCCESS);
    cr_assert_eq(cur, mine);
    EXPECT_CU(cuMemAllocAsync(&p, 1000, NULL), CUDA_SUCCESS);
    cr_assert_eq(pool_attr(mine, CU_MEMPOOL_ATTR_USED_MEM_CURRENT), 1000);   /* measured: bytes asked */
    EXPECT_CU(cuMemFreeAsync(p, NULL), CUDA_SUCCESS);
    v = 0;
    EXPECT_CU(cuMemPoolSetAttribute(mine, CU_MEMPOOL_ATTR_USED_MEM_HIGH, &v), CUDA_SUCCESS);
    cr_assert_eq(pool_attr(mine, CU_MEMPOOL_ATTR_USED_MEM_HIGH), 0);
    CUmemoryPool other;
    EXPECT_CU(cuMemAllocFromPoolAsync(&p, 16, NULL, NULL), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemAllocAsync(&p, 0, NULL), CUDA_ERROR_INVALID_VALUE);
    alloc_async_fn alloc_ptsz = (alloc_async_fn)sym("cuMemAllocAsync_ptsz");
    free_async_fn free_ptsz = (free_async_fn)sym("cuMemFreeAsync_ptsz");
    EXPECT_CU(alloc_ptsz(&p, 64, CU_STREAM_PER_THREAD), CUDA_SUCCESS);
    EXPECT_CU(free_ptsz(p, CU_STREAM_PER_THREAD), CUDA_SUCCESS);
    EXPECT_CU(cuMemPoolDestroy(mine), CUDA_SUCCESS);
    EXPECT_CU(cuDeviceGetMemPool(&other, 0), CUDA_SUCCESS);
    cr_assert_eq(other, def);
}

/* ---- VMM ---- */

static CUmemAllocationProp vmm_prop(void)
{
    CUmemAllocationProp prop = { .type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                 .location = { CU_MEM_LOCATION_TYPE_DEVICE, 0 } };
    return prop;
}

Test(fakecuda, vmm_mappings_are_real_memory_and_alias_their_handle)
{
    start(NULL);
    CUmemAllocationProp prop = vmm_prop();
    size_t gran;
    CUmemGenericAllocationHandle h;
    CUdeviceptr va, base;
    size_t size;
    EXPECT_CU(cuMemGetAllocationGranularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM), CUDA_SUCCESS);
    cr_assert_eq(gran, 2 * MiB);
    EXPECT_CU(cuMemCreate(&h, MiB, &prop, 0), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemCreate(&h, gran, &prop, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemAddressReserve(&va, 4 * gran, 0, 0, 0), CUDA_SUCCESS);
    cr_assert_eq(va % gran, 0);
    EXPECT_CU(cuMemMap(va, gran, 0, h, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemMap(va, gran, 0, h, 0), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemMap(va + 2 * gran, gran, 0, h, 0), CUDA_SUCCESS);   /* second view */
    CUmemAccessDesc ad = { { CU_MEM_LOCATION_TYPE_DEVICE, 0 }, CU_MEM_ACCESS_FLAGS_PROT_READWRITE };
    EXPECT_CU(cuMemSetAccess(va, gran, &ad, 1), CUDA_SUCCESS);
    EXPECT_CU(cuMemsetD32(va + 4096, 0xabcd1234, 1), CUDA_SUCCESS);
    cr_assert_eq(*(volatile uint32_t *)(uintptr_t)(va + 2 * gran + 4096), 0xabcd1234);
    EXPECT_CU(cuMemGetAddressRange(&base, &size, va + 100), CUDA_SUCCESS);
    cr_assert(base == va && size == gran);
    unsigned int type = 0;
    EXPECT_CU(cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, va + 100), CUDA_SUCCESS);
    cr_assert_eq(type, CU_MEMORYTYPE_DEVICE);
    EXPECT_CU(cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, va + gran), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemFree(va), CUDA_ERROR_INVALID_VALUE);
    CUmemGenericAllocationHandle again;
    CUmemAllocationProp got;
    EXPECT_CU(cuMemRetainAllocationHandle(&again, (void *)(uintptr_t)(va + 10)), CUDA_SUCCESS);
    cr_assert_eq(again, h);
    EXPECT_CU(cuMemGetAllocationPropertiesFromHandle(&got, h), CUDA_SUCCESS);
    cr_assert_eq(got.location.id, 0);
    EXPECT_CU(cuMemRelease(again), CUDA_SUCCESS);
    EXPECT_CU(cuMemUnmap(va + 2 * gran, gran), CUDA_SUCCESS);
    EXPECT_CU(cuMemUnmap(va, gran), CUDA_SUCCESS);
    EXPECT_CU(cuMemRelease(h), CUDA_SUCCESS);
    EXPECT_CU(cuMemAddressFree(va, 4 * gran), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
}

Test(fakecuda, vmm_release_while_mapped_defers_the_free_until_unmap)
{
    start(NULL);
    CUmemAllocationProp prop = vmm_prop();
    CUmemGenericAllocationHandle h;
    CUdeviceptr va;
    EXPECT_CU(cuMemCreate(&h, 4 * MiB, &prop, 0), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 4 * MiB);
    EXPECT_CU(cuMemAddressReserve(&va, 8 * MiB, 0, 0, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemMap(va, 4 * MiB, 0, h, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemRelease(h), CUDA_SUCCESS);
    EXPECT_CU(cuMemRelease(h), CUDA_ERROR_INVALID_VALUE);
    cr_assert_eq(fakecuda_used_bytes(0), 4 * MiB);
    EXPECT_CU(cuMemsetD8(va, 3, 4 * MiB), CUDA_SUCCESS);   /* still usable */
    EXPECT_CU(cuMemAddressFree(va, 8 * MiB), CUDA_ERROR_INVALID_VALUE);   /* still mapped */
    EXPECT_CU(cuMemUnmap(va, 2 * MiB), CUDA_ERROR_INVALID_VALUE);         /* part of a mapping */
    EXPECT_CU(cuMemUnmap(va, 4 * MiB), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(cuMemUnmap(va, 4 * MiB), CUDA_SUCCESS);   /* measured: nothing mapped is fine */
    EXPECT_CU(cuMemAddressFree(va, 4 * MiB), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemAddressFree(va, 8 * MiB), CUDA_SUCCESS);
}

Test(fakecuda, vmm_create_is_charged_and_refused_beyond_capacity)
{
    start("8388608");   /* 8 MiB */
    CUmemAllocationProp prop = vmm_prop();
    CUmemGenericAllocationHandle h1, h2;
    EXPECT_CU(cuMemCreate(&h1, 6 * MiB, &prop, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemCreate(&h2, 4 * MiB, &prop, 0), CUDA_ERROR_OUT_OF_MEMORY);
    EXPECT_CU(cuMemRelease(h1), CUDA_SUCCESS);
    EXPECT_CU(cuMemCreate(&h2, 8 * MiB, &prop, 0), CUDA_SUCCESS);
}

/* ---- arrays ---- */

Test(fakecuda, arrays_are_charged_by_their_size)
{
    start(NULL);
    CUDA_ARRAY_DESCRIPTOR d2 = { 100, 10, CU_AD_FORMAT_FLOAT, 4 }, back;
    CUDA_ARRAY3D_DESCRIPTOR d3 = { 64, 32, 8, CU_AD_FORMAT_UNSIGNED_INT16, 2, 0 };
    CUarray a, b;
    EXPECT_CU(cuArrayCreate(&a, &d2), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 16384);    /* 16000 rounded up to 512 */
    EXPECT_CU(cuArrayGetDescriptor(&back, a), CUDA_SUCCESS);
    cr_assert(back.Width == 100 && back.Height == 10 && back.NumChannels == 4);
    EXPECT_CU(cuArray3DCreate(&b, &d3), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 16384 + 64 * 32 * 8 * 2 * 2);
    d2.NumChannels = 3;
    EXPECT_CU(cuArrayCreate(&a, &d2), CUDA_ERROR_INVALID_VALUE);
    CUDA_ARRAY_MEMORY_REQUIREMENTS req;
    EXPECT_CU(cuArrayGetMemoryRequirements(&req, b, 0), CUDA_ERROR_INVALID_VALUE);   /* measured */
    EXPECT_CU(cuArrayDestroy(b), CUDA_SUCCESS);
    EXPECT_CU(cuArrayDestroy(b), CUDA_ERROR_INVALID_HANDLE);
    EXPECT_CU(cuArrayDestroy(NULL), CUDA_ERROR_INVALID_HANDLE);
    cr_assert_eq(fakecuda_used_bytes(0), 16384);
}

Test(fakecuda, mipmapped_arrays_are_the_sum_of_their_levels)
{
    start(NULL);
    CUDA_ARRAY3D_DESCRIPTOR d = { 64, 64, 0, CU_AD_FORMAT_FLOAT, 1, 0 };
    CUmipmappedArray m;
    EXPECT_CU(cuMipmappedArrayCreate(&m, &d, 3), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 64 * 64 * 4 + 32 * 32 * 4 + 16 * 16 * 4);
    EXPECT_CU(cuMipmappedArrayDestroy(m), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    d.Flags = CUDA_ARRAY3D_DEFERRED_MAPPING;   /* no memory of its own */
    CUDA_ARRAY_MEMORY_REQUIREMENTS req;
    EXPECT_CU(cuMipmappedArrayCreate(&m, &d, 2), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(cuMipmappedArrayGetMemoryRequirements(&req, m, 0), CUDA_SUCCESS);
    cr_assert(req.size == 64 * 64 * 4 + 32 * 32 * 4 && req.alignment > 0);
}

/* Depth is the layer count of a layered array: each level keeps them all. */
Test(fakecuda, a_layered_mipmapped_array_keeps_its_layers_at_every_level)
{
    start(NULL);
    CUDA_ARRAY3D_DESCRIPTOR d = { 64, 64, 8, CU_AD_FORMAT_FLOAT, 1, CUDA_ARRAY3D_LAYERED };
    CUmipmappedArray m;
    EXPECT_CU(cuMipmappedArrayCreate(&m, &d, 3), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), (64 * 64 * 4 + 32 * 32 * 4 + 16 * 16 * 4) * 8);
    EXPECT_CU(cuMipmappedArrayDestroy(m), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
}

/* ---- graphs ---- */

Test(fakecuda, graph_alloc_nodes_charge_when_created)
{
    start("16777216");   /* 16 MiB */
    CUgraph g;
    CUgraphNode alloc_node, free_node, big;
    CUgraphExec exec;
    CUDA_MEM_ALLOC_NODE_PARAMS params = { .poolProps = { .allocType = CU_MEM_ALLOCATION_TYPE_PINNED,
                                                         .location = { CU_MEM_LOCATION_TYPE_DEVICE, 0 } },
                                          .bytesize = 8 * MiB };
    EXPECT_CU(cuGraphCreate(&g, 0), CUDA_SUCCESS);
    EXPECT_CU(cuGraphAddMemAllocNode(&alloc_node, g, NULL, 0, &params), CUDA_SUCCESS);
    cr_assert(params.dptr != 0 && fakecuda_used_bytes(0) == 8 * MiB);
    EXPECT_CU(cuMemsetD8(params.dptr, 0, 8 * MiB), CUDA_SUCCESS);
    CUdeviceptr first = params.dptr;
    params.bytesize = 9 * MiB;
    EXPECT_CU(cuGraphAddMemAllocNode(&big, g, NULL, 0, &params), CUDA_ERROR_OUT_OF_MEMORY);
    EXPECT_CU(cuGraphAddMemFreeNode(&free_node, g, &alloc_node, 1, FAKE_PTR), CUDA_ERROR_INVALID_VALUE);
    params.bytesize = 8 * MiB;
    EXPECT_CU(cuGraphAddMemAllocNode(&big, g, NULL, 0, &params), CUDA_SUCCESS);
    EXPECT_CU(cuGraphAddMemFreeNode(&free_node, g, &big, 1, params.dptr), CUDA_SUCCESS);
    EXPECT_CU(cuGraphInstantiateWithFlags(&exec, g, 0), CUDA_SUCCESS);
    EXPECT_CU(cuGraphLaunch(exec, NULL), CUDA_SUCCESS);
    EXPECT_CU(((graph_launch_fn)sym("cuGraphLaunch_ptsz"))(exec, CU_STREAM_PER_THREAD), CUDA_SUCCESS);
    EXPECT_CU(cuGraphExecDestroy(exec), CUDA_SUCCESS);
    EXPECT_CU(cuMemFreeAsync(params.dptr, NULL), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 8 * MiB);
    EXPECT_CU(cuGraphDestroy(g), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 8 * MiB); /* launched, not freed in the graph */
    EXPECT_CU(cuMemFree(first), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
}

/* A graph node's address after cuGraphDestroy, as measured on an H100
 * (driver 580.159, graph_probe in docs/gpu-results.md). */
typedef enum { NODE_UNLAUNCHED, NODE_LIVE, NODE_FREED_IN_GRAPH } node_case_t;

static CUdeviceptr destroyed_graph_node(node_case_t c, size_t bytes)
{
    CUgraph g;
    CUgraphNode node, free_node;
    CUgraphExec exec;
    CUDA_MEM_ALLOC_NODE_PARAMS params = { .poolProps = { .allocType = CU_MEM_ALLOCATION_TYPE_PINNED,
                                                         .location = { CU_MEM_LOCATION_TYPE_DEVICE, 0 } },
                                          .bytesize = bytes };
    EXPECT_CU(cuGraphCreate(&g, 0), CUDA_SUCCESS);
    EXPECT_CU(cuGraphAddMemAllocNode(&node, g, NULL, 0, &params), CUDA_SUCCESS);
    if (c == NODE_FREED_IN_GRAPH)
        EXPECT_CU(cuGraphAddMemFreeNode(&free_node, g, &node, 1, params.dptr), CUDA_SUCCESS);
    EXPECT_CU(cuGraphInstantiateWithFlags(&exec, g, 0), CUDA_SUCCESS);
    if (c != NODE_UNLAUNCHED)
        EXPECT_CU(cuGraphLaunch(exec, NULL), CUDA_SUCCESS);
    EXPECT_CU(cuGraphExecDestroy(exec), CUDA_SUCCESS);
    EXPECT_CU(cuGraphDestroy(g), CUDA_SUCCESS);
    return params.dptr;
}

Test(fakecuda, memory_a_launched_graph_left_live_outlives_the_graph_until_freed)
{
    start(NULL);
    CUcontext ctx = (CUcontext)1;
    CUdeviceptr live = destroyed_graph_node(NODE_LIVE, 8 * MiB);
    cr_assert_eq(fakecuda_used_bytes(0), 8 * MiB);
    EXPECT_CU(cuPointerGetAttribute(&ctx, CU_POINTER_ATTRIBUTE_CONTEXT, live), CUDA_SUCCESS);
    cr_assert_null(ctx); /* measured: context 0 */
    EXPECT_CU(cuMemFree(live), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(cuMemFree(live), CUDA_ERROR_INVALID_VALUE);
}

Test(fakecuda, unlaunched_or_freed_in_graph_nodes_go_with_the_graph)
{
    start(NULL);
    CUcontext ctx;
    for (node_case_t c = NODE_UNLAUNCHED; c <= NODE_FREED_IN_GRAPH; c += 2) {
        CUdeviceptr gone = destroyed_graph_node(c, 8 * MiB);
        cr_assert_eq(fakecuda_used_bytes(0), 0, "case %d", c);
        EXPECT_CU(cuPointerGetAttribute(&ctx, CU_POINTER_ATTRIBUTE_CONTEXT, gone),
                  CUDA_ERROR_INVALID_VALUE);
    }
}

/* Not measured on a GPU: the test driver lets an executable keep its
 * graph's memory until the executable goes. */
Test(fakecuda, an_executable_keeps_its_destroyed_graphs_memory)
{
    start(NULL);
    CUgraph g;
    CUgraphNode node;
    CUgraphExec exec;
    CUDA_MEM_ALLOC_NODE_PARAMS params = { .poolProps = { .allocType = CU_MEM_ALLOCATION_TYPE_PINNED,
                                                         .location = { CU_MEM_LOCATION_TYPE_DEVICE, 0 } },
                                          .bytesize = 8 * MiB };
    EXPECT_CU(cuGraphCreate(&g, 0), CUDA_SUCCESS);
    EXPECT_CU(cuGraphAddMemAllocNode(&node, g, NULL, 0, &params), CUDA_SUCCESS);
    EXPECT_CU(cuGraphInstantiateWithFlags(&exec, g, 0), CUDA_SUCCESS);
    EXPECT_CU(cuGraphDestroy(g), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 8 * MiB);
    EXPECT_CU(cuGraphDestroy(g), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuGraphExecDestroy(exec), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
}

/* Memory a launch left live, freed while its graph lives: the next launch
 * allocates it again at the same address (charged again, known again), and
 * the graph's destroy frees what is not allocated then without charging. */
Test(fakecuda, a_launch_allocates_again_what_was_freed_outside_the_graph)
{
    start("16777216"); /* 16 MiB */
    CUgraph g;
    CUgraphNode node;
    CUgraphExec exec;
    CUcontext ctx;
    CUdeviceptr plain;
    CUDA_MEM_ALLOC_NODE_PARAMS params = { .poolProps = { .allocType = CU_MEM_ALLOCATION_TYPE_PINNED,
                                                         .location = { CU_MEM_LOCATION_TYPE_DEVICE, 0 } },
                                          .bytesize = 8 * MiB };
    EXPECT_CU(cuGraphCreate(&g, 0), CUDA_SUCCESS);
    EXPECT_CU(cuGraphAddMemAllocNode(&node, g, NULL, 0, &params), CUDA_SUCCESS);
    EXPECT_CU(cuGraphInstantiateWithFlags(&exec, g, 0), CUDA_SUCCESS);
    EXPECT_CU(cuGraphLaunch(exec, NULL), CUDA_SUCCESS);
    EXPECT_CU(cuMemFree(params.dptr), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(cuPointerGetAttribute(&ctx, CU_POINTER_ATTRIBUTE_CONTEXT, params.dptr),
              CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemAlloc(&plain, 12 * MiB), CUDA_SUCCESS);
    EXPECT_CU(cuGraphLaunch(exec, NULL), CUDA_ERROR_OUT_OF_MEMORY); /* 20 MiB of 16 */
    EXPECT_CU(cuMemFree(plain), CUDA_SUCCESS);
    EXPECT_CU(cuGraphLaunch(exec, NULL), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 8 * MiB);
    EXPECT_CU(cuPointerGetAttribute(&ctx, CU_POINTER_ATTRIBUTE_CONTEXT, params.dptr), CUDA_SUCCESS);
    EXPECT_CU(cuMemFree(params.dptr), CUDA_SUCCESS);
    EXPECT_CU(cuGraphExecDestroy(exec), CUDA_SUCCESS);
    EXPECT_CU(cuGraphDestroy(g), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(cuMemFree(params.dptr), CUDA_ERROR_INVALID_VALUE);
}

/* FAKECUDA_GRAPH_MAPPED_AT_LAUNCH: a node's address is known only once a
 * launch left it mapped; an executable made through cuGraphInstantiateWithParams
 * keeps the memory as any other does. */
Test(fakecuda, graph_mapped_at_launch_hides_a_node_until_a_launch_maps_it)
{
    setenv("FAKECUDA_GRAPH_MAPPED_AT_LAUNCH", "1", 1);
    start(NULL);
    CUgraph g;
    CUgraphNode node;
    CUgraphExec exec;
    CUcontext ctx;
    CUDA_GRAPH_INSTANTIATE_PARAMS ip = { .flags = 0 };
    CUDA_MEM_ALLOC_NODE_PARAMS params = { .poolProps = { .allocType = CU_MEM_ALLOCATION_TYPE_PINNED,
                                                         .location = { CU_MEM_LOCATION_TYPE_DEVICE, 0 } },
                                          .bytesize = 8 * MiB };
    EXPECT_CU(cuGraphCreate(&g, 0), CUDA_SUCCESS);
    EXPECT_CU(cuGraphAddMemAllocNode(&node, g, NULL, 0, &params), CUDA_SUCCESS);
    EXPECT_CU(cuGraphInstantiateWithParams(&exec, g, &ip), CUDA_SUCCESS);
    cr_assert_eq(ip.result_out, CUDA_GRAPH_INSTANTIATE_SUCCESS);
    EXPECT_CU(cuGraphDestroy(g), CUDA_SUCCESS);
    EXPECT_CU(cuPointerGetAttribute(&ctx, CU_POINTER_ATTRIBUTE_CONTEXT, params.dptr),
              CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuMemGetAddressRange(NULL, NULL, params.dptr), CUDA_ERROR_NOT_FOUND);
    cr_assert_eq(fakecuda_used_bytes(0), 8 * MiB);
    EXPECT_CU(cuGraphLaunch(exec, NULL), CUDA_SUCCESS);
    EXPECT_CU(cuPointerGetAttribute(&ctx, CU_POINTER_ATTRIBUTE_CONTEXT, params.dptr), CUDA_SUCCESS);
    EXPECT_CU(cuGraphExecDestroy(exec), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 8 * MiB); /* launched, not freed in the graph */
    EXPECT_CU(cuMemFree(params.dptr), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
}

/* A child graph moved into its parent is the parent's: destroyed with it
 * (an unlaunched child's memory goes; what a launch left live stays). */
Test(fakecuda, a_moved_child_graph_goes_with_its_parent)
{
    start(NULL);
    CUgraph parent, child;
    CUgraphNode node, child_node;
    CUgraphExec exec;
    CUgraphNodeParams cp = { .type = CU_GRAPH_NODE_TYPE_GRAPH };
    CUDA_MEM_ALLOC_NODE_PARAMS params = { .poolProps = { .allocType = CU_MEM_ALLOCATION_TYPE_PINNED,
                                                         .location = { CU_MEM_LOCATION_TYPE_DEVICE, 0 } },
                                          .bytesize = 8 * MiB };
    for (int launch = 0; launch < 2; launch++) {
        EXPECT_CU(cuGraphCreate(&parent, 0), CUDA_SUCCESS);
        EXPECT_CU(cuGraphCreate(&child, 0), CUDA_SUCCESS);
        EXPECT_CU(cuGraphAddMemAllocNode(&node, child, NULL, 0, &params), CUDA_SUCCESS);
        cp.graph = (CUDA_CHILD_GRAPH_NODE_PARAMS){ child, CU_GRAPH_CHILD_GRAPH_OWNERSHIP_CLONE };
        EXPECT_CU(cuGraphAddNode(&child_node, parent, NULL, NULL, 0, &cp), CUDA_ERROR_NOT_SUPPORTED);
        cp.graph.ownership = CU_GRAPH_CHILD_GRAPH_OWNERSHIP_MOVE;
        EXPECT_CU(cuGraphAddNode(&child_node, child, NULL, NULL, 0, &cp), CUDA_ERROR_INVALID_VALUE);
        EXPECT_CU(cuGraphAddNode(&child_node, parent, NULL, NULL, 0, &cp), CUDA_SUCCESS);
        EXPECT_CU(cuGraphDestroy(child), CUDA_ERROR_INVALID_VALUE); /* the parent's now */
        EXPECT_CU(cuGraphInstantiateWithFlags(&exec, parent, 0), CUDA_SUCCESS);
        if (launch)
            EXPECT_CU(cuGraphLaunch(exec, NULL), CUDA_SUCCESS);
        EXPECT_CU(cuGraphExecDestroy(exec), CUDA_SUCCESS);
        EXPECT_CU(cuGraphDestroy(parent), CUDA_SUCCESS);
        cr_assert_eq(fakecuda_used_bytes(0), launch ? 8 * MiB : 0);
    }
    EXPECT_CU(cuMemFree(params.dptr), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
}

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

/* ---- implicit memory: contexts, limits, modules (fakecuda.h) ---- */

#define CTX_BYTES (300 * MiB)
/* The legacy ABI of cuCtxDestroy (cuda.h renames it to _v2). */
typedef CUresult (*ctx_destroy_fn)(CUcontext ctx);
typedef CUresult (*launch_ptsz_fn)(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                   unsigned by, unsigned bz, unsigned shmem, CUstream s,
                                   void **params, void **extra);
typedef CUresult (*launch_ex_ptsz_fn)(const CUlaunchConfig *config, CUfunction f, void **params,
                                      void **extra);

static void set_context_bytes(void)
{
    setenv("FAKECUDA_CONTEXT_BYTES", "314572800", 1);
}

static CUresult launch1(CUfunction f)
{
    return cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL);
}

Test(fakecuda, a_context_takes_its_memory_when_it_starts_and_gives_it_back)
{
    CUcontext prim, again, created;
    set_context_bytes();
    EXPECT_CU(cuInit(0), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(cuDevicePrimaryCtxRetain(&prim, 0), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), CTX_BYTES);
    cr_assert_eq(fakecuda_implicit_bytes(0), CTX_BYTES);
    EXPECT_CU(cuDevicePrimaryCtxRetain(&again, 0), CUDA_SUCCESS);   /* the same context */
    cr_assert_eq(fakecuda_used_bytes(0), CTX_BYTES);
    EXPECT_CU(cuCtxCreate(&created, NULL, 0, 0), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 2 * CTX_BYTES);
    EXPECT_CU(cuCtxDestroy(created), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), CTX_BYTES);
    /* A reset gives it back; the next use of the kept handle starts it again. */
    EXPECT_CU(cuCtxSetCurrent(prim), CUDA_SUCCESS);
    EXPECT_CU(cuDevicePrimaryCtxReset(0), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    CUdeviceptr p;
    EXPECT_CU(cuMemAlloc(&p, MiB), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), CTX_BYTES + MiB);
    EXPECT_CU(cuDevicePrimaryCtxRelease(0), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), CTX_BYTES + MiB);
    EXPECT_CU(cuDevicePrimaryCtxRelease(0), CUDA_SUCCESS);   /* the last: all of it */
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    cr_assert_eq(fakecuda_implicit_bytes(0), 0);
    cr_assert_eq(fakecuda_peak_bytes(0), 2 * CTX_BYTES);
}

Test(fakecuda, a_context_that_does_not_fit_is_out_of_memory)
{
    CUcontext c;
    setenv("FAKECUDA_CONTEXT_BYTES", "314572800", 1);
    setenv("FAKECUDA_TOTAL_BYTES", "536870912", 1);   /* 512 MiB: one context fits */
    EXPECT_CU(cuInit(0), CUDA_SUCCESS);
    EXPECT_CU(cuDevicePrimaryCtxRetain(&c, 0), CUDA_SUCCESS);
    EXPECT_CU(cuCtxCreate(&c, NULL, 0, 0), CUDA_ERROR_OUT_OF_MEMORY);
    cr_assert_eq(fakecuda_used_bytes(0), CTX_BYTES);
}

Test(fakecuda, the_stack_limit_is_sized_by_the_resident_threads)
{
    int sms, threads;
    size_t v;
    start(NULL);
    EXPECT_CU(cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0), CUDA_SUCCESS);
    EXPECT_CU(cuDeviceGetAttribute(&threads, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR, 0),
              CUDA_SUCCESS);
    cr_assert(sms == 132 && threads == 2048);
    EXPECT_CU(cuCtxGetLimit(&v, CU_LIMIT_STACK_SIZE), CUDA_SUCCESS);
    cr_assert_eq(v, 1024);
    EXPECT_CU(cuCtxGetLimit(&v, CU_LIMIT_MALLOC_HEAP_SIZE), CUDA_SUCCESS);
    cr_assert_eq(v, 8 * MiB);
    EXPECT_CU(cuCtxGetLimit(&v, CU_LIMIT_PRINTF_FIFO_SIZE), CUDA_SUCCESS);
    cr_assert_eq(v, MiB);
    EXPECT_CU(cuCtxSetLimit(CU_LIMIT_STACK_SIZE, 16 * 1024), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 15 * 1024ull * 132 * 2048);   /* about 4.1 GiB */
    EXPECT_CU(cuCtxSetLimit(CU_LIMIT_STACK_SIZE, 512), CUDA_SUCCESS);   /* below: nothing */
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(cuCtxGetLimit(&v, CU_LIMIT_STACK_SIZE), CUDA_SUCCESS);
    cr_assert_eq(v, 512);
}

Test(fakecuda, the_sm_count_comes_from_the_environment)
{
    int sms;
    setenv("FAKECUDA_SM_COUNT", "10", 1);
    start(NULL);
    EXPECT_CU(cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0), CUDA_SUCCESS);
    cr_assert_eq(sms, 10);
    EXPECT_CU(cuCtxSetLimit(CU_LIMIT_STACK_SIZE, 2048), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 1024ull * 10 * 2048);
}

Test(fakecuda, heap_and_printf_limits_charge_what_is_above_the_default)
{
    size_t v;
    start("2147483648");   /* 2 GiB */
    EXPECT_CU(cuCtxSetLimit(CU_LIMIT_MALLOC_HEAP_SIZE, 256 * MiB), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 248 * MiB);
    EXPECT_CU(cuCtxSetLimit(CU_LIMIT_PRINTF_FIFO_SIZE, 5 * MiB), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 252 * MiB);
    cr_assert_eq(fakecuda_implicit_bytes(0), 252 * MiB);
    /* Does not fit: refused, the old value and charge stay. */
    EXPECT_CU(cuCtxSetLimit(CU_LIMIT_MALLOC_HEAP_SIZE, 3 * GiB), CUDA_ERROR_OUT_OF_MEMORY);
    EXPECT_CU(cuCtxGetLimit(&v, CU_LIMIT_MALLOC_HEAP_SIZE), CUDA_SUCCESS);
    cr_assert_eq(v, 256 * MiB);
    cr_assert_eq(fakecuda_used_bytes(0), 252 * MiB);
    EXPECT_CU(cuCtxSetLimit(CU_LIMIT_MAX, 1), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuCtxSetLimit(CU_LIMIT_SHMEM_SIZE, 1), CUDA_ERROR_UNSUPPORTED_LIMIT);
    EXPECT_CU(cuCtxGetLimit(NULL, CU_LIMIT_STACK_SIZE), CUDA_ERROR_INVALID_VALUE);
}

Test(fakecuda, limits_at_launch_are_charged_by_the_next_launch)
{
    CUmodule m;
    CUfunction f;
    CUdeviceptr p;
    setenv("FAKECUDA_LIMITS_AT", "launch", 1);
    setenv("CUDA_MODULE_LOADING", "LAZY", 1);
    start("1073741824");   /* 1 GiB */
    EXPECT_CU(cuModuleLoadData(&m, "fakecuda-module kernels=k"), CUDA_SUCCESS);
    EXPECT_CU(cuModuleGetFunction(&f, m, "k"), CUDA_SUCCESS);
    EXPECT_CU(cuCtxSetLimit(CU_LIMIT_MALLOC_HEAP_SIZE, 3 * GiB), CUDA_ERROR_OUT_OF_MEMORY);
    EXPECT_CU(cuCtxSetLimit(CU_LIMIT_MALLOC_HEAP_SIZE, 520 * MiB), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(launch1(f), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 512 * MiB);
    EXPECT_CU(launch1(f), CUDA_SUCCESS);   /* once */
    cr_assert_eq(fakecuda_used_bytes(0), 512 * MiB);
    /* Set while it fits, then the room goes: the launch is refused. */
    EXPECT_CU(cuCtxSetLimit(CU_LIMIT_MALLOC_HEAP_SIZE, 776 * MiB), CUDA_SUCCESS);
    EXPECT_CU(cuMemAlloc(&p, 384 * MiB), CUDA_SUCCESS);
    EXPECT_CU(launch1(f), CUDA_ERROR_OUT_OF_MEMORY);
    cr_assert_eq(fakecuda_used_bytes(0), 896 * MiB);
    EXPECT_CU(cuMemFree(p), CUDA_SUCCESS);
    EXPECT_CU(launch1(f), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 768 * MiB);
}

Test(fakecuda, lazy_modules_charge_their_globals_at_the_first_launch)
{
    CUmodule m;
    CUfunction f, g;
    CUfunctionLoadingState st;
    CUmoduleLoadingMode mode;
    setenv("CUDA_MODULE_LOADING", "LAZY", 1);
    start(NULL);
    EXPECT_CU(cuModuleGetLoadingMode(&mode), CUDA_SUCCESS);
    cr_assert_eq(mode, CU_MODULE_LAZY_LOADING);
    EXPECT_CU(cuModuleLoadData(&m, "fakecuda-module globals=629145600 kernels=k1,k2"), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(cuModuleGetFunction(&f, m, "k2"), CUDA_SUCCESS);
    EXPECT_CU(cuModuleGetFunction(&g, m, "k3"), CUDA_ERROR_NOT_FOUND);
    EXPECT_CU(cuFuncIsLoaded(&st, f), CUDA_SUCCESS);
    cr_assert_eq(st, CU_FUNCTION_LOADING_STATE_UNLOADED);
    EXPECT_CU(launch1(f), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 600 * MiB);
    cr_assert_eq(fakecuda_implicit_bytes(0), 600 * MiB);
    EXPECT_CU(cuFuncIsLoaded(&st, f), CUDA_SUCCESS);
    cr_assert_eq(st, CU_FUNCTION_LOADING_STATE_LOADED);
    EXPECT_CU(cuModuleGetFunction(&g, m, "k1"), CUDA_SUCCESS);
    EXPECT_CU(launch1(g), CUDA_SUCCESS);   /* the module loads once */
    cr_assert_eq(fakecuda_used_bytes(0), 600 * MiB);
    EXPECT_CU(cuModuleUnload(m), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(launch1(f), CUDA_ERROR_INVALID_HANDLE);
    EXPECT_CU(cuModuleUnload(m), CUDA_ERROR_INVALID_HANDLE);
    /* cuFuncLoad loads too; a launch that does not fit is refused. */
    EXPECT_CU(cuModuleLoadData(&m, "fakecuda-module globals=1048576 kernels=k"), CUDA_SUCCESS);
    EXPECT_CU(cuModuleGetFunction(&f, m, "k"), CUDA_SUCCESS);
    EXPECT_CU(cuFuncLoad(f), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), MiB);
}

Test(fakecuda, a_lazy_load_that_does_not_fit_fails_the_launch)
{
    CUmodule m;
    CUfunction f;
    setenv("CUDA_MODULE_LOADING", "LAZY", 1);
    start("1073741824");
    EXPECT_CU(cuModuleLoadData(&m, "fakecuda-module globals=1610612736 kernels=k"), CUDA_SUCCESS);
    EXPECT_CU(cuModuleGetFunction(&f, m, "k"), CUDA_SUCCESS);
    EXPECT_CU(launch1(f), CUDA_ERROR_OUT_OF_MEMORY);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
}

Test(fakecuda, eager_modules_charge_at_load_and_refuse_what_does_not_fit)
{
    CUmodule m, big;
    CUmoduleLoadingMode mode;
    setenv("CUDA_MODULE_LOADING", "EAGER", 1);
    start("1073741824");
    EXPECT_CU(cuModuleGetLoadingMode(&mode), CUDA_SUCCESS);
    cr_assert_eq(mode, CU_MODULE_EAGER_LOADING);
    EXPECT_CU(cuModuleLoadDataEx(&m, "fakecuda-module globals=268435456", 0, NULL, NULL), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 256 * MiB);
    EXPECT_CU(cuModuleLoadFatBinary(&big, "fakecuda-module globals=1610612736 kernels=k"),
              CUDA_ERROR_OUT_OF_MEMORY);
    cr_assert_eq(fakecuda_used_bytes(0), 256 * MiB);
    EXPECT_CU(cuModuleUnload(m), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
}

Test(fakecuda, module_images_are_checked)
{
    CUmodule m;
    start(NULL);
    static const char *const bad[] = {
        "not a module", "fakecuda-modulex", "fakecuda-module globals=-1", "fakecuda-module globals=1x",
        "fakecuda-module color=red", "fakecuda-module kernels=", "fakecuda-module kernels=a,,b",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_expect_eq(cuModuleLoadData(&m, bad[i]), CUDA_ERROR_INVALID_IMAGE, "%s", bad[i]);
    EXPECT_CU(cuModuleLoadData(&m, NULL), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuModuleLoadData(&m, "fakecuda-module"), CUDA_SUCCESS);
    EXPECT_CU(cuModuleLoad(&m, "/nonexistent/fakecuda.cubin"), CUDA_ERROR_FILE_NOT_FOUND);
    EXPECT_CU(cuCtxSetCurrent(NULL), CUDA_SUCCESS);
    EXPECT_CU(cuModuleLoadData(&m, "fakecuda-module"), CUDA_ERROR_INVALID_CONTEXT);
}

Test(fakecuda, libraries_load_from_data_and_files_and_launch_through_kernels)
{
    CUlibrary lib, flib;
    CUkernel k;
    CUfunction f;
    CUmodule m;
    setenv("CUDA_MODULE_LOADING", "LAZY", 1);
    start(NULL);
    char path[] = "/tmp/fakecuda-module-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    const char text[] = "fakecuda-module globals=2097152 kernels=kf\n";
    cr_assert_eq(write(fd, text, sizeof text - 1), (ssize_t)(sizeof text - 1));
    close(fd);
    EXPECT_CU(cuLibraryLoadData(&lib, "fakecuda-module globals=4194304 kernels=a,b", NULL, NULL, 0,
                                NULL, NULL, 0), CUDA_SUCCESS);
    EXPECT_CU(cuLibraryGetKernel(&k, lib, "b"), CUDA_SUCCESS);
    EXPECT_CU(cuLibraryGetKernel(&k, lib, "c"), CUDA_ERROR_NOT_FOUND);
    EXPECT_CU(cuLibraryGetKernel(&k, lib, "a"), CUDA_SUCCESS);
    EXPECT_CU(cuKernelGetFunction(&f, k), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(launch1((CUfunction)(void *)k), CUDA_SUCCESS);   /* a kernel launches as is */
    cr_assert_eq(fakecuda_used_bytes(0), 4 * MiB);
    EXPECT_CU(cuLibraryLoadFromFile(&flib, path, NULL, NULL, 0, NULL, NULL, 0), CUDA_SUCCESS);
    EXPECT_CU(cuModuleLoad(&m, path), CUDA_SUCCESS);
    unlink(path);
    EXPECT_CU(cuLibraryGetKernel(&k, flib, "kf"), CUDA_SUCCESS);
    CUlaunchConfig cfg = { 1, 1, 1, 32, 1, 1, 0, NULL, NULL, 0 };
    EXPECT_CU(cuLaunchKernelEx(&cfg, (CUfunction)(void *)k, NULL, NULL), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 6 * MiB);
    EXPECT_CU(cuModuleGetFunction(&f, m, "kf"), CUDA_SUCCESS);
    launch_ptsz_fn lp = (launch_ptsz_fn)sym("cuLaunchKernel_ptsz");
    EXPECT_CU(lp(f, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 8 * MiB);
    launch_ex_ptsz_fn lxp = (launch_ex_ptsz_fn)sym("cuLaunchKernelEx_ptsz");
    EXPECT_CU(lxp(&cfg, f, NULL, NULL), CUDA_SUCCESS);
    EXPECT_CU(lp(f, 0, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CU(cuLibraryUnload(lib), CUDA_SUCCESS);
    EXPECT_CU(cuLibraryUnload(flib), CUDA_SUCCESS);
    EXPECT_CU(cuModuleUnload(m), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(cuLibraryUnload(lib), CUDA_ERROR_INVALID_HANDLE);
}

/* Everything made in a context goes with it: allocations of every
 * cuMemAlloc kind, arrays, mipmapped arrays, modules, limits and the
 * context's own memory, through either ABI of cuCtxDestroy. */
static void fill_context(void)
{
    CUdeviceptr p;
    size_t pitch;
    CUarray a;
    CUmipmappedArray mm;
    CUmodule m;
    CUDA_ARRAY_DESCRIPTOR d2 = { 1024, 1024, CU_AD_FORMAT_FLOAT, 4 };
    CUDA_ARRAY3D_DESCRIPTOR d3 = { 256, 256, 0, CU_AD_FORMAT_FLOAT, 1, 0 };
    EXPECT_CU(cuMemAlloc(&p, 64 * MiB), CUDA_SUCCESS);
    EXPECT_CU(cuMemAllocPitch(&p, &pitch, 4096, 1024, 4), CUDA_SUCCESS);
    EXPECT_CU(cuMemAllocManaged(&p, MiB, CU_MEM_ATTACH_GLOBAL), CUDA_SUCCESS);
    EXPECT_CU(cuArrayCreate(&a, &d2), CUDA_SUCCESS);
    EXPECT_CU(cuMipmappedArrayCreate(&mm, &d3, 3), CUDA_SUCCESS);
    EXPECT_CU(cuModuleLoadData(&m, "fakecuda-module globals=8388608"), CUDA_SUCCESS);
    EXPECT_CU(cuCtxSetLimit(CU_LIMIT_MALLOC_HEAP_SIZE, 72 * MiB), CUDA_SUCCESS);
}

Test(fakecuda, destroying_a_context_frees_everything_made_in_it)
{
    CUcontext prim, c;
    set_context_bytes();
    setenv("CUDA_MODULE_LOADING", "EAGER", 1);
    prim = start(NULL);
    CUdeviceptr keep;
    EXPECT_CU(cuMemAlloc(&keep, MiB), CUDA_SUCCESS);   /* in the primary: stays */
    ctx_destroy_fn legacy = (ctx_destroy_fn)sym("cuCtxDestroy");
    for (int abi = 0; abi < 2; abi++) {
        EXPECT_CU(cuCtxCreate(&c, NULL, 0, 0), CUDA_SUCCESS);
        fill_context();
        cr_assert_gt(fakecuda_used_bytes(0), 2 * CTX_BYTES + 150 * MiB);
        EXPECT_CU(abi ? legacy(c) : cuCtxDestroy(c), CUDA_SUCCESS);
        cr_assert_eq(fakecuda_used_bytes(0), CTX_BYTES + MiB, "abi %d", abi);
        cr_assert_eq(fakecuda_implicit_bytes(0), CTX_BYTES);
        cr_assert_eq(fakecuda_live_allocs(0), 1);
    }
    EXPECT_CU(cuCtxSetCurrent(prim), CUDA_SUCCESS);
    fill_context();
    EXPECT_CU(cuDevicePrimaryCtxReset_v2(0), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    cr_assert_eq(fakecuda_implicit_bytes(0), 0);
}

Test(fakecuda, vmm_retain_adds_a_reference_that_keeps_the_memory)
{
    start(NULL);
    CUmemAllocationProp prop = vmm_prop();
    CUmemGenericAllocationHandle h, again;
    CUdeviceptr va;
    EXPECT_CU(cuMemCreate(&h, 4 * MiB, &prop, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemAddressReserve(&va, 4 * MiB, 0, 0, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemMap(va, 4 * MiB, 0, h, 0), CUDA_SUCCESS);
    EXPECT_CU(cuMemRelease(h), CUDA_SUCCESS);   /* released while mapped */
    EXPECT_CU(cuMemRetainAllocationHandle(&again, (void *)(uintptr_t)va), CUDA_SUCCESS);
    EXPECT_CU(cuMemUnmap(va, 4 * MiB), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 4 * MiB);   /* the retained reference */
    EXPECT_CU(cuMemRelease(again), CUDA_SUCCESS);
    cr_assert_eq(fakecuda_used_bytes(0), 0);
    EXPECT_CU(cuMemAddressFree(va, 4 * MiB), CUDA_SUCCESS);
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

/* NVML's figure for this process (the test double reads this driver)
 * includes memory no call shows. */
Test(fakecuda, nvml_counts_implicit_memory_in_the_process_figure)
{
    typedef struct { unsigned int pid; unsigned long long used; unsigned int gi, ci; } proc_t;
    set_context_bytes();
    start(NULL);
    EXPECT_CU(cuCtxSetLimit(CU_LIMIT_MALLOC_HEAP_SIZE, 72 * MiB), CUDA_SUCCESS);
    void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    cr_assert_not_null(h, "the NVML test double is not on the library path: %s", dlerror());
    int (*init)(void) = (int (*)(void))dlsym(h, "nvmlInit_v2");
    int (*get)(unsigned, void **) = (int (*)(unsigned, void **))dlsym(h, "nvmlDeviceGetHandleByIndex_v2");
    int (*procs)(void *, unsigned *, proc_t *) =
        (int (*)(void *, unsigned *, proc_t *))dlsym(h, "nvmlDeviceGetComputeRunningProcesses_v3");
    cr_assert(init && get && procs);
    void *dev;
    proc_t p[4];
    unsigned n = 4;
    cr_assert_eq(init(), 0);
    cr_assert_eq(get(0, &dev), 0);
    cr_assert_eq(procs(dev, &n, p), 0);
    cr_assert_eq(n, 1);
    cr_assert_eq(p[0].pid, (unsigned)getpid());
    cr_assert_eq(p[0].used, CTX_BYTES + 64 * MiB);
}
