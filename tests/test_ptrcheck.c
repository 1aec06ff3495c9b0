/*
 * test_ptrcheck.c — classifying addresses: the fake-pattern table (pure), and
 * live / interior / freed / foreign / host / fake against the test driver
 * (tests/fakecuda, found through LD_LIBRARY_PATH). Tests that need the driver
 * skip visibly when it cannot be loaded.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "vg_account.h"
#include "vg_driver.h"

/* ----------------------------------------------- patterns (pure) */

static const char *pattern(vg_devptr_t p)
{
    static char buf[64];
    vg__fake_pattern(p, buf, sizeof buf);
    return buf;
}

Test(ptrcheck, fake_pattern_names_null_and_small_counters)
{
    cr_assert_str_eq(pattern(0), "NULL");
    cr_assert_str_eq(pattern(1), "small counter-like value 0x1");
    cr_assert_str_eq(pattern(0xfffff), "small counter-like value 0xfffff");
}

Test(ptrcheck, fake_pattern_names_the_synthetic_stride)
{
    cr_assert_str_eq(pattern(0x7f8000000000),
                     "synthetic stride 0x7f8000000000 + k*0x100000000 (k=0)");
    cr_assert_str_eq(pattern(0x7f8000000000 + 5 * 0x100000000ull),
                     "synthetic stride 0x7f8000000000 + k*0x100000000 (k=5)");
    cr_assert_str_eq(pattern(0x7f8000000000 + 127 * 0x100000000ull),
                     "synthetic stride 0x7f8000000000 + k*0x100000000 (k=127)");
}

Test(ptrcheck, fake_pattern_names_4gib_aligned_and_non_canonical)
{
    cr_assert_str_eq(pattern(0x100000000), "4 GiB-aligned synthetic address");
    cr_assert_str_eq(pattern(0x7f0000000000), "4 GiB-aligned synthetic address");
    cr_assert_str_eq(pattern(0x800000000000), "non-canonical address");
    cr_assert_str_eq(pattern(0xdeadbeefdeadbeef), "non-canonical address");
    cr_assert_str_eq(pattern(UINT64_MAX), "non-canonical address");
}

Test(ptrcheck, fake_pattern_leaves_ordinary_addresses_unnamed)
{
    cr_assert_str_eq(pattern(0x100000), ""); /* exactly 1 MiB */
    cr_assert_str_eq(pattern(0x7f8000000200), "");
    cr_assert_str_eq(pattern(0x7fffffffffff), "");
    cr_assert_str_eq(pattern(0x302000000), "");
}

Test(ptrcheck, fake_pattern_truncates_to_the_buffer)
{
    char small[8];
    vg__fake_pattern(0x7f8000000000, small, sizeof small);
    cr_assert_eq(strlen(small), 7);
    vg__fake_pattern(0x7f8000000000, small, 0); /* writes nothing */
}

Test(ptrcheck, check_rejects_a_null_info)
{
    cr_assert_eq(vg_ptr_check(0x1000, NULL), VG_EINVAL);
}

/* ------------------------------------------- no driver needed */

Test(ptrcheck, stack_and_heap_addresses_are_host)
{
    int on_stack = 0;
    void *on_heap = malloc(64);
    vg_ptr_info_t info;
    cr_assert_eq(vg_ptr_check((vg_devptr_t)(uintptr_t)&on_stack, &info), VG_OK);
    cr_assert_eq(info.cls, VG_PTR_HOST, "got %s", vg_ptr_class_name(info.cls));
    cr_assert_eq(vg_ptr_check((vg_devptr_t)(uintptr_t)on_heap, &info), VG_OK);
    cr_assert_eq(info.cls, VG_PTR_HOST, "got %s", vg_ptr_class_name(info.cls));
    free(on_heap);
}

Test(ptrcheck, synthetic_stride_is_fake_with_its_pattern)
{
    vg_ptr_info_t info;
    cr_assert_eq(vg_ptr_check(0x7f8000000000, &info), VG_OK);
    cr_assert_eq(info.cls, VG_PTR_FAKE, "got %s", vg_ptr_class_name(info.cls));
    cr_assert_str_eq(info.pattern,
                     "synthetic stride 0x7f8000000000 + k*0x100000000 (k=0)");
    cr_assert_eq(info.device, -1);
}

Test(ptrcheck, null_is_fake)
{
    vg_ptr_info_t info;
    cr_assert_eq(vg_ptr_check(0, &info), VG_OK);
    cr_assert_eq(info.cls, VG_PTR_FAKE);
    cr_assert_str_eq(info.pattern, "NULL");
}

/* ------------------------------------- against the test driver */

static const vg__driver_t *drv;

/* Loads the driver through the engine and makes device 0's primary context
 * current, as an application would. Skips when there is no driver. */
static void driver_setup(void)
{
    if (vg__engine_init() != VG_OK || !(drv = vg__driver()))
        cr_skip_test("no CUDA driver: %s", vg__engine_error());
    CUdevice dev;
    CUcontext ctx;
    cr_assert_eq(drv->cuInit(0), CUDA_SUCCESS);
    cr_assert_eq(drv->cuDeviceGet(&dev, 0), CUDA_SUCCESS);
    cr_assert_eq(drv->cuDevicePrimaryCtxRetain(&ctx, dev), CUDA_SUCCESS);
    cr_assert_eq(drv->cuCtxSetCurrent(ctx), CUDA_SUCCESS);
}

static vg_devptr_t dev_alloc(size_t n)
{
    CUdeviceptr p = 0;
    cr_assert_eq(drv->cuMemAlloc_v2(&p, n), CUDA_SUCCESS);
    return (vg_devptr_t)p;
}

/* Records p (driver base `base`) in the ledger as the engine would. */
static void ledger_add(vg_devptr_t p, vg_devptr_t base, uint64_t size)
{
    vg__alloc_t a;
    memset(&a, 0, sizeof a);
    a.ptr = p;
    a.base = base;
    a.size = size;
    a.charged = size + (p - base);
    a.seq = vg__ledger_next_seq();
    a.kind = VG_KIND_PITCH;
    a.device = 0;
    cr_assert_eq(vg__ledger_insert(&a), VG_OK);
}

static vg_ptr_info_t check(vg_devptr_t p)
{
    vg_ptr_info_t info;
    cr_assert_eq(vg_ptr_check(p, &info), VG_OK);
    return info;
}

Test(ptrcheck, ledger_start_is_live, .init = driver_setup)
{
    vg_devptr_t p = dev_alloc(4096);
    ledger_add(p, p, 4096);
    vg_ptr_info_t info = check(p);
    cr_assert_eq(info.cls, VG_PTR_LIVE, "got %s", vg_ptr_class_name(info.cls));
    cr_assert_eq(info.base, p);
    cr_assert_eq(info.offset, 0);
    cr_assert_eq(info.size, 4096);
    cr_assert_eq(info.kind, VG_KIND_PITCH);
    cr_assert_eq(info.device, 0);
}

Test(ptrcheck, inside_a_live_allocation_is_interior, .init = driver_setup)
{
    vg_devptr_t p = dev_alloc(1 << 20);
    ledger_add(p, p, 1 << 20);
    vg_ptr_info_t info = check(p + 1000);
    cr_assert_eq(info.cls, VG_PTR_INTERIOR, "got %s",
                 vg_ptr_class_name(info.cls));
    cr_assert_eq(info.base, p);
    cr_assert_eq(info.offset, 1000);
    cr_assert_eq(info.size, 1 << 20);
}

Test(ptrcheck, interior_of_an_aligned_allocation_counts_from_the_callers_ptr,
     .init = driver_setup)
{
    vg_devptr_t base = dev_alloc(1 << 20);
    vg_devptr_t p = base + 4096; /* what an aligned vg_pool_alloc hands out */
    ledger_add(p, base, (1 << 20) - 4096);
    vg_ptr_info_t info = check(p + 64);
    cr_assert_eq(info.cls, VG_PTR_INTERIOR, "got %s",
                 vg_ptr_class_name(info.cls));
    cr_assert_eq(info.base, p);
    cr_assert_eq(info.offset, 64);
}

Test(ptrcheck, freed_by_us_and_unknown_to_the_driver_is_freed,
     .init = driver_setup)
{
    vg_devptr_t p = dev_alloc(8192);
    ledger_add(p, p, 8192);
    cr_assert_eq(vg__ledger_remove(p, VG__ANY_OWNER, NULL), VG_OK);
    cr_assert_eq(drv->cuMemFree_v2(p), CUDA_SUCCESS);
    vg_ptr_info_t info = check(p);
    cr_assert_eq(info.cls, VG_PTR_FREED, "got %s", vg_ptr_class_name(info.cls));
    cr_assert_eq(info.base, p);
    cr_assert_eq(info.size, 8192);
    cr_assert_eq(info.kind, VG_KIND_PITCH);
    info = check(p + 100);
    cr_assert_eq(info.cls, VG_PTR_FREED, "got %s", vg_ptr_class_name(info.cls));
    cr_assert_eq(info.base, p);
    cr_assert_eq(info.offset, 100);
}

Test(ptrcheck, driver_allocation_we_never_recorded_is_foreign,
     .init = driver_setup)
{
    vg_devptr_t p = dev_alloc(65536);
    vg_ptr_info_t info = check(p + 10);
    cr_assert_eq(info.cls, VG_PTR_FOREIGN, "got %s",
                 vg_ptr_class_name(info.cls));
    cr_assert_eq(info.base, p);
    cr_assert_eq(info.offset, 10);
    cr_assert_geq(info.size, 65536);
    cr_assert_eq(drv->cuMemFree_v2(p), CUDA_SUCCESS);
}

Test(ptrcheck, freed_range_the_driver_handed_out_again_is_foreign,
     .init = driver_setup)
{
    /* We freed p (it is quarantined), but the driver knows p: someone else
     * owns it now, so it must not be reported as ours-and-freed. */
    vg_devptr_t p = dev_alloc(4096);
    ledger_add(p, p, 4096);
    cr_assert_eq(vg__ledger_remove(p, VG__ANY_OWNER, NULL), VG_OK);
    cr_assert_eq(vg__ledger_find_freed(p, NULL), VG_OK);
    vg_ptr_info_t info = check(p);
    cr_assert_eq(info.cls, VG_PTR_FOREIGN, "got %s",
                 vg_ptr_class_name(info.cls));
    cr_assert_eq(drv->cuMemFree_v2(p), CUDA_SUCCESS);
}

Test(ptrcheck, fake_pointer_is_fake_with_a_driver_loaded, .init = driver_setup)
{
    vg_ptr_info_t info = check(0x7f8000000000 + 3 * 0x100000000ull);
    cr_assert_eq(info.cls, VG_PTR_FAKE, "got %s", vg_ptr_class_name(info.cls));
    cr_assert_str_eq(info.pattern,
                     "synthetic stride 0x7f8000000000 + k*0x100000000 (k=3)");
}
