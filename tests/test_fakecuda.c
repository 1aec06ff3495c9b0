/*
 * test_fakecuda.c: the test driver (tests/fakecuda, built as libcuda.so.1)
 * answers like the real driver where vramguard depends on it: devices and
 * initialisation, contexts, cuGetProcAddress, and plain allocations.
 * Other allocators (test_fakecuda_allocators.c), the driver's bookkeeping
 * (test_fakecuda_ledger.c) and implicit memory (test_fakecuda_implicit.c)
 * are tested beside it; fakecudatest.h holds what they share, and says
 * where the codes marked "measured" come from.
 */
#include <criterion/criterion.h>

#include <cuda.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fakecudatest.h"

/* The legacy 32-bit ABI the library still exports (cuda.h renames these). */
typedef CUresult (*legacy_alloc_fn)(unsigned int *dptr, unsigned int bytesize);
typedef CUresult (*legacy_free_fn)(unsigned int dptr);
typedef CUresult (*legacy_info_fn)(unsigned int *free, unsigned int *total);
typedef CUresult (*gpa_v1_fn)(const char *symbol, void **pfn, int version, cuuint64_t flags);

static void *resolve(const char *name, int version, cuuint64_t flags, CUdriverProcAddressQueryResult *st)
{
    void *fn = (void *)1;
    EXPECT_CU(cuGetProcAddress(name, &fn, version, flags, st), CUDA_SUCCESS);
    return fn;
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
