/* test_names.c — every status, kind, class and level has a static name. */
#include <criterion/criterion.h>
#include <string.h>

#include "vramguard.h"

Test(names, every_status_has_a_message_and_a_name)
{
#define CHECK_(name, value, msg)                                               \
    cr_expect_str_eq(vg_strerror(value), msg);                                 \
    cr_expect_str_eq(vg_err_name(value), #name);
    VG_ERRORS(CHECK_)
#undef CHECK_
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
