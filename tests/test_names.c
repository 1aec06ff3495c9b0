/* test_names.c — every status, kind, class and level has a static name. */
#include <criterion/criterion.h>
#include <string.h>

#include "vramguard.h"

/* Written out here, not generated from VG_ERRORS: a message or name
 * changed (or swapped) in the header must fail this test. */
static const struct {
    int status;
    const char *name, *message;
} expected[] = {
    {0, "VG_OK", "success"},
    {1, "VG_EINVAL", "invalid argument"},
    {2, "VG_ENOMEM", "request exceeds the memory budget"},
    {3, "VG_ENODRIVER", "CUDA driver not available"},
    {4, "VG_ENODEV", "no such CUDA device"},
    {5, "VG_EDRIVER", "the CUDA driver returned an error"},
    {6, "VG_ERANGE", "offset or length outside the buffer"},
    {7, "VG_ESETTING", "malformed setting"},
    {8, "VG_ENOTFOUND", "pointer is not a live allocation"},
    {9, "VG_EBADPTR", "driver returned an invalid device pointer"},
    {10, "VG_ESYS", "operating system call failed"},
    {11, "VG_EDENIED", "denied by policy"},
};
#define EXPECTED (sizeof expected / sizeof expected[0])

Test(names, every_status_has_its_message_and_name)
{
    for (size_t i = 0; i < EXPECTED; i++) {
        cr_expect_str_eq(vg_strerror(expected[i].status), expected[i].message, "status %d",
                         expected[i].status);
        cr_expect_str_eq(vg_err_name(expected[i].status), expected[i].name, "status %d",
                         expected[i].status);
    }
    cr_expect_eq(VG_EDENIED, 11);
}

/* A status added to the header without a line above is caught: the code
 * after the last one listed is unknown. */
Test(names, the_table_above_covers_every_status)
{
    cr_expect_str_eq(vg_err_name((int)EXPECTED), "VG_E?", "status %zu has a name but no test",
                     EXPECTED);
    cr_expect_str_eq(vg_strerror((int)EXPECTED), "unknown vramguard status");
}

Test(names, unknown_status_is_never_null)
{
    int odd[] = {-1, 12, 999, -2147483647 - 1, 2147483647};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        cr_expect_str_eq(vg_strerror(odd[i]), "unknown vramguard status");
        cr_expect_str_eq(vg_err_name(odd[i]), "VG_E?");
    }
}

Test(names, kinds_classes_and_levels_have_labels)
{
    cr_expect_str_eq(vg_kind_name(VG_KIND_PITCH), "pitch");
    cr_expect_str_eq(vg_kind_name(VG_KIND_API), "api");
    cr_expect_str_eq(vg_kind_name(VG_KIND_COUNT), "?");
    cr_expect_str_eq(vg_kind_name(-1), "?");
    cr_expect_str_eq(vg_ptr_class_name(VG_PTR_FAKE), "fake");
    cr_expect_str_eq(vg_ptr_class_name(VG_PTR_CLASS_COUNT), "?");
    cr_expect_str_eq(vg_pressure_name(VG_PRESSURE_CRITICAL), "critical");
    cr_expect_str_eq(vg_pressure_name(4), "?");
}
