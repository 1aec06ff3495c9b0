/*
 * names.c — static names and messages for every public enum, generated from
 * the X-macro lists in vramguard.h. None of these returns NULL.
 */
#include "vramguard.h"

#define VG_COUNT_(...) +1
_Static_assert(0 VG_ERRORS(VG_COUNT_) == VG_EDENIED + 1,
               "status values must stay dense from 0");

const char *vg_strerror(int status)
{
    switch (status) {
#define VG_CASE_(name, value, msg) case value: return msg;
        VG_ERRORS(VG_CASE_)
#undef VG_CASE_
    }
    return "unknown vramguard status";
}

const char *vg_err_name(int status)
{
    switch (status) {
#define VG_CASE_(name, value, msg) case value: return #name;
        VG_ERRORS(VG_CASE_)
#undef VG_CASE_
    }
    return "VG_E?";
}

static const char *const kind_names[] = {
#define VG_NAME_(name, label) label,
    VG_KINDS(VG_NAME_)
#undef VG_NAME_
};
_Static_assert(sizeof kind_names / sizeof kind_names[0] == VG_KIND_COUNT,
               "one name per kind");

const char *vg_kind_name(int kind)
{
    if (kind < 0 || kind >= VG_KIND_COUNT)
        return "?";
    return kind_names[kind];
}

static const char *const class_names[] = {
#define VG_NAME_(name, label) label,
    VG_PTR_CLASSES(VG_NAME_)
#undef VG_NAME_
};
_Static_assert(sizeof class_names / sizeof class_names[0] == VG_PTR_CLASS_COUNT,
               "one name per pointer class");

const char *vg_ptr_class_name(int cls)
{
    if (cls < 0 || cls >= VG_PTR_CLASS_COUNT)
        return "?";
    return class_names[cls];
}

const char *vg_pressure_name(int level)
{
    static const char *const names[] = {"low", "medium", "high", "critical"};
    if (level < VG_PRESSURE_LOW || level > VG_PRESSURE_CRITICAL)
        return "?";
    return names[level];
}
