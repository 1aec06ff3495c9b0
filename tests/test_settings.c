/*
 * test_settings.c — parsing the settings: sizes, budget specs, the HAMi
 * aliases, enums and the user-facing error text. Every lookup goes through
 * a fake getenv over a small array, so no test reads or changes the real
 * environment. --help's rows and the docs table are test_settings_docs.c's.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vg_settings.h"

#define KiB 1024ull
#define MiB (1024ull * KiB)
#define GiB (1024ull * MiB)
#define TiB (1024ull * GiB)

/* The user-facing accepted texts, written out so a change to them is a
 * deliberate change to this test. */
#define ACC_BUDGET                                                             \
    "SIZE like 8GiB, 512MiB, 1.5G, 10GB; N% of the device; or DEV=SIZE,... "   \
    "with DEV an index or GPU-uuid"
#define ACC_HAMI                                                               \
    "SIZE like 1g, 1024m, 8GiB or a byte count; HAMi alias of VRAMGUARD_BUDGET"

#define UUID_A "GPU-0123abcd-4567-89ab-cdef-0123456789ab"
#define UUID_B "GPU-ffffffff-0000-1111-2222-333333333333"
#define UUID_MIG "MIG-ffffffff-0000-1111-2222-333333333333"

/* ------------------------------------------------------------ fake env */

typedef struct kv {
    const char *name, *value;
} kv_t;

typedef struct fake_env {
    const kv_t *kv;
    size_t n;
} fake_env_t;

static const char *fake_get(const char *name, void *ctx)
{
    const fake_env_t *env = ctx;
    for (size_t i = 0; i < env->n; i++)
        if (strcmp(env->kv[i].name, name) == 0)
            return env->kv[i].value;
    return NULL;
}

#define ENV(...)                                                               \
    (&(fake_env_t){(const kv_t[]){__VA_ARGS__},                               \
                   sizeof((const kv_t[]){__VA_ARGS__}) / sizeof(kv_t)})

static int parse_env(fake_env_t *env, vg__settings_t *s, char *err,
                     size_t errlen)
{
    memset(s, 0, sizeof *s);
    return vg__settings_parse(fake_get, env, s, err, errlen);
}

static vg__budget_spec_t spec_of(const char *text)
{
    vg__budget_spec_t spec;
    char err[256] = "";
    cr_assert_eq(vg__budget_spec_parse(text, &spec, err, sizeof err), VG_OK,
                 "'%s': %s", text, err);
    return spec;
}

/* --------------------------------------------------------------- sizes */

Test(settings, sizes_parse_to_exact_bytes)
{
    static const struct {
        const char *text;
        uint64_t bytes;
    } cases[] = {
        {"123", 123},
        {"1", 1},
        {"007", 7},
        {"1.0", 1},
        {"7b", 7},
        {"1B", 1},
        {"1k", KiB},
        {"1KiB", KiB},
        {"1kib", KiB},
        {"1Ki", KiB},
        {"1KB", 1000},
        {"1.5KB", 1500},
        {"0.5K", 512},
        {"0.1K", 102},             /* 102.4, floored */
        {"1.1K", 1126},            /* 1126.4, floored */
        {"8G", 8 * GiB},
        {"8GiB", 8 * GiB},
        {"1Gi", GiB},
        {"1gi", GiB},
        {"1g", GiB},
        {"1.5g", 3 * GiB / 2},
        {"1.5GiB", 1610612736},
        {"1 GiB", GiB},
        {"1   G", GiB},
        {"10GB", 10000000000ull},
        {"10gb", 10000000000ull},
        {"512MiB", 512 * MiB},
        {"512M", 512 * MiB},
        {"512mi", 512 * MiB},
        {"1024m", GiB},
        {"1048576k", GiB},
        {"2MB", 2000000},
        {"2TiB", 2 * TiB},
        {"1t", TiB},
        {"1TB", 1000000000000ull},
        {"0.000000001T", 1099}, /* 1099.51..., floored */
        {"18446744073709551615", UINT64_MAX},
        {"17179869183.999999999G", UINT64_MAX - 1}, /* exact fraction math */
        {"16777215.99999999906867742538452148437T", UINT64_MAX - 1024},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint64_t got = 0;
        char err[128] = "";
        int rc = vg__size_parse(cases[i].text, &got, err, sizeof err);
        cr_expect_eq(rc, VG_OK, "'%s' failed: %s", cases[i].text, err);
        cr_expect_eq(got, cases[i].bytes, "'%s' -> %llu, want %llu",
                     cases[i].text, (unsigned long long)got,
                     (unsigned long long)cases[i].bytes);
    }
}

Test(settings, bad_sizes_give_their_exact_reason)
{
    static const struct {
        const char *text, *reason;
    } cases[] = {
        {"", "empty"},
        {"-1G", "negative"},
        {"-0", "negative"},
        {"8XB", "unknown unit 'XB'"},
        {"16EiB", "unknown unit 'EiB'"},
        {"8 extra", "unknown unit 'extra'"},
        {"8ABCDEFGHIJKLMNOPQRSTU", "unknown unit 'ABCDEFGHIJKLMNOP...'"},
        {"8GiB extra", "trailing text ' extra'"},
        {"8G,", "trailing text ','"},
        {"8 ", "trailing text ' '"},
        {"8%", "trailing text '%'"},
        {"8G1", "trailing text '1'"},
        {"8G\n", "trailing text '?'"},
        {"18446744073709551616", "too large"},
        {"99999999999999999999999", "too large"},
        {"17179869184G", "too large"},
        {"16777216T", "too large"},
        {"1.2.3G", "more than one '.'"},
        {".G", "no digits"},
        {".5G", "no digits"},
        {"G", "no digits"},
        {"+8G", "no digits"},
        {"1.", "no digits after '.'"},
        {"1.G", "no digits after '.'"},
        {"0x10", "hex is not accepted"},
        {"0X1G", "hex is not accepted"},
        {" 8G", "leading whitespace"},
        {"0", "must be at least 1 byte"},
        {"0G", "must be at least 1 byte"},
        {"0.0001K", "must be at least 1 byte"},
        {"0.1B", "a fraction of a byte"},
        {"1.5", "a fraction of a byte"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint64_t got = 42;
        char err[128] = "";
        int rc = vg__size_parse(cases[i].text, &got, err, sizeof err);
        cr_expect_eq(rc, VG_ESETTING, "'%s' was accepted", cases[i].text);
        cr_expect_str_eq(err, cases[i].reason, "for '%s'", cases[i].text);
        cr_expect_eq(got, 42, "'%s' wrote the output on failure",
                     cases[i].text);
    }
}

Test(settings, size_parse_survives_null_and_tiny_buffers)
{
    uint64_t b;
    char tiny[4];
    cr_expect_eq(vg__size_parse(NULL, &b, tiny, sizeof tiny), VG_ESETTING);
    cr_expect_str_eq(tiny, "emp");
    cr_expect_eq(vg__size_parse("8XB", &b, NULL, 0), VG_ESETTING);
    cr_expect_eq(vg__size_parse("8XB", &b, tiny, 0), VG_ESETTING);
    cr_expect_eq(vg__size_parse("8G", NULL, NULL, 0), VG_ESETTING);
}

/* -------------------------------------------------- the exact messages */

Test(settings, bad_settings_give_their_exact_message)
{
    static char long_nines[101], long_name[202], long_path[5001];
    memset(long_nines, '9', 100);
    memset(long_name, 'a', 201);
    memset(long_path, 'p', 5000);
    static const struct {
        const char *name, *value, *message;
    } cases[] = {
        {"VRAMGUARD_BUDGET", "8XB",
         "VRAMGUARD_BUDGET='8XB': unknown unit 'XB' (accepted: "
         ACC_BUDGET ")"},
        {"VRAMGUARD_BUDGET", "",
         "VRAMGUARD_BUDGET='': empty (accepted: " ACC_BUDGET ")"},
        {"VRAMGUARD_BUDGET", "-1G",
         "VRAMGUARD_BUDGET='-1G': negative (accepted: " ACC_BUDGET ")"},
        {"VRAMGUARD_BUDGET", "8GiB extra",
         "VRAMGUARD_BUDGET='8GiB extra': trailing text ' extra' (accepted: "
         ACC_BUDGET ")"},
        {"VRAMGUARD_BUDGET", "0",
         "VRAMGUARD_BUDGET='0': must be at least 1 byte (accepted: "
         ACC_BUDGET ")"},
        {"VRAMGUARD_BUDGET", "0x1000",
         "VRAMGUARD_BUDGET='0x1000': hex is not accepted (accepted: "
         ACC_BUDGET ")"},
        {"VRAMGUARD_BUDGET", "150%",
         "VRAMGUARD_BUDGET='150%': percent must be more than 0 and at most "
         "100 (accepted: " ACC_BUDGET ")"},
        {"VRAMGUARD_BUDGET", "0%",
         "VRAMGUARD_BUDGET='0%': percent must be more than 0 and at most "
         "100 (accepted: " ACC_BUDGET ")"},
        {"VRAMGUARD_BUDGET", "100.5%",
         "VRAMGUARD_BUDGET='100.5%': percent must be more than 0 and at "
         "most 100 (accepted: " ACC_BUDGET ")"},
        {"VRAMGUARD_BUDGET", "0.0000001%",
         "VRAMGUARD_BUDGET='0.0000001%': percent rounds to 0 (the smallest is "
         "0.000001) (accepted: " ACC_BUDGET ")"},
        {"VRAMGUARD_BUDGET", "0=0.00000000000000000001%",
         "VRAMGUARD_BUDGET='0=0.00000000000000000001%': item "
         "'0=0.00000000000000000001%': percent rounds to 0 (the smallest is "
         "0.000001) (accepted: " ACC_BUDGET ")"},
        {"VRAMGUARD_BUDGET", "%",
         "VRAMGUARD_BUDGET='%': no digits (accepted: " ACC_BUDGET ")"},
        {"VRAMGUARD_BUDGET", "8G,4G",
         "VRAMGUARD_BUDGET='8G,4G': item '4G': more than one default "
         "(accepted: " ACC_BUDGET ")"},
        {"VRAMGUARD_BUDGET", "0=8GiB,1=4XB",
         "VRAMGUARD_BUDGET='0=8GiB,1=4XB': item '1=4XB': unknown unit 'XB' "
         "(accepted: " ACC_BUDGET ")"},
        {"VRAMGUARD_BUDGET", "0=8GiB,0=4GiB",
         "VRAMGUARD_BUDGET='0=8GiB,0=4GiB': item '0=4GiB': device given "
         "twice (accepted: " ACC_BUDGET ")"},
        {"VRAMGUARD_BUDGET", UUID_A "=1G," UUID_A "=2G",
         "VRAMGUARD_BUDGET='" UUID_A "=1G,GPU-0123abcd-4567-89...': item '"
         "GPU-0123abcd-4567-89ab-cdef-0123...': device given twice "
         "(accepted: " ACC_BUDGET ")"},
        {"VRAMGUARD_BUDGET", "0=8GiB,,1=4GiB",
         "VRAMGUARD_BUDGET='0=8GiB,,1=4GiB': empty item in the list "
         "(accepted: " ACC_BUDGET ")"},
        {"VRAMGUARD_BUDGET", "8GiB,",
         "VRAMGUARD_BUDGET='8GiB,': empty item in the list (accepted: "
         ACC_BUDGET ")"},
        {"VRAMGUARD_BUDGET", ",8GiB",
         "VRAMGUARD_BUDGET=',8GiB': empty item in the list (accepted: "
         ACC_BUDGET ")"},
        {"VRAMGUARD_BUDGET", "64=1G",
         "VRAMGUARD_BUDGET='64=1G': item '64=1G': device index out of range "
         "(0-63) (accepted: " ACC_BUDGET ")"},
        {"VRAMGUARD_BUDGET", "=1G",
         "VRAMGUARD_BUDGET='=1G': item '=1G': no device before '=' "
         "(accepted: " ACC_BUDGET ")"},
        {"VRAMGUARD_BUDGET", "0=",
         "VRAMGUARD_BUDGET='0=': item '0=': empty (accepted: " ACC_BUDGET ")"},
        {"VRAMGUARD_BUDGET", "foo=1G",
         "VRAMGUARD_BUDGET='foo=1G': item 'foo=1G': unknown device 'foo' (an "
         "index 0-63 or GPU-uuid) (accepted: " ACC_BUDGET ")"},
        {"VRAMGUARD_BUDGET", "GPU-123=1G",
         "VRAMGUARD_BUDGET='GPU-123=1G': item 'GPU-123=1G': bad uuid "
         "(expected GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx) (accepted: "
         ACC_BUDGET ")"},
        {"VRAMGUARD_BUDGET", "8G\n",
         "VRAMGUARD_BUDGET='8G?': trailing text '?' (accepted: "
         ACC_BUDGET ")"},
        {"VRAMGUARD_BUDGET", long_nines,
         "VRAMGUARD_BUDGET='99999999999999999999999999999999999999999999999999"
         "99999999999999...': too large (accepted: " ACC_BUDGET ")"},
        {"VRAMGUARD_ON_BAD_POINTER", "ignore",
         "VRAMGUARD_ON_BAD_POINTER='ignore': unknown value (accepted: "
         "warn|reject|abort)"},
        {"VRAMGUARD_MANAGED", "counts",
         "VRAMGUARD_MANAGED='counts': unknown value (accepted: "
         "count|ignore|deny)"},
        {"VRAMGUARD_POOL", "on",
         "VRAMGUARD_POOL='on': unknown value (accepted: off|cache)"},
        {"VRAMGUARD_LOG", "",
         "VRAMGUARD_LOG='': empty (accepted: error|warn|info|debug)"},
        {"VRAMGUARD_LOG", "warn|info",
         "VRAMGUARD_LOG='warn|info': unknown value (accepted: "
         "error|warn|info|debug)"},
        {"VRAMGUARD_SHARED", "my job",
         "VRAMGUARD_SHARED='my job': character ' ' is not allowed (accepted: "
         "1-200 of A-Z a-z 0-9 . _ -)"},
        {"VRAMGUARD_SHARED", "../etc",
         "VRAMGUARD_SHARED='../etc': character '/' is not allowed (accepted: "
         "1-200 of A-Z a-z 0-9 . _ -)"},
        {"VRAMGUARD_SHARED", "..",
         "VRAMGUARD_SHARED='..': '.' and '..' are not names (accepted: "
         "1-200 of A-Z a-z 0-9 . _ -)"},
        {"VRAMGUARD_SHARED", "",
         "VRAMGUARD_SHARED='': empty (accepted: 1-200 of A-Z a-z 0-9 . _ -)"},
        {"VRAMGUARD_SHARED", long_name,
         "VRAMGUARD_SHARED='aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
         "aaaaaaaaaaaaaa...': too long (at most 200 characters) (accepted: "
         "1-200 of A-Z a-z 0-9 . _ -)"},
        {"VRAMGUARD_LIBCUDA", "",
         "VRAMGUARD_LIBCUDA='': empty (accepted: a library file name or path)"},
        {"VRAMGUARD_AUDIT", long_path,
         "VRAMGUARD_AUDIT='pppppppppppppppppppppppppppppppppppppppppppppppppp"
         "pppppppppppppp...': too long (at most 4095 bytes) (accepted: a file "
         "path)"},
        {"CUDA_DEVICE_MEMORY_LIMIT", "1x",
         "CUDA_DEVICE_MEMORY_LIMIT='1x': unknown unit 'x' (accepted: "
         ACC_HAMI ")"},
        {"CUDA_DEVICE_MEMORY_LIMIT_3", "0",
         "CUDA_DEVICE_MEMORY_LIMIT_3='0': must be at least 1 byte (accepted: "
         ACC_HAMI ")"},
        {"CUDA_DEVICE_MEMORY_LIMIT_63", "50%",
         "CUDA_DEVICE_MEMORY_LIMIT_63='50%': trailing text '%' (accepted: "
         ACC_HAMI ")"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        vg__settings_t s;
        char err[512] = "";
        int rc = parse_env(ENV({cases[i].name, cases[i].value}), &s, err,
                           sizeof err);
        cr_expect_eq(rc, VG_ESETTING, "case %zu: %s accepted", i,
                     cases[i].name);
        cr_expect_str_eq(err, cases[i].message, "case %zu: got %s", i, err);
        cr_expect_null(strchr(err, '\n'), "case %zu: more than one line", i);
    }
}

Test(settings, failure_leaves_the_output_untouched)
{
    vg__settings_t s;
    memset(&s, 0x5a, sizeof s);
    char err[256];
    int rc = vg__settings_parse(fake_get,
                                ENV({"VRAMGUARD_LOG", "debug"},
                                    {"VRAMGUARD_POOL", "maybe"}),
                                &s, err, sizeof err);
    cr_assert_eq(rc, VG_ESETTING);
    cr_expect_eq(((unsigned char *)&s)[0], 0x5a);
    cr_expect_eq(s.log_level, (vg__log_level_t)0x5a5a5a5a);
    vg__budget_spec_t spec;
    memset(&spec, 0x5a, sizeof spec);
    cr_expect_eq(vg__budget_spec_parse("0=1G,1=2X", &spec, err, sizeof err),
                 VG_ESETTING);
    cr_expect_eq(spec.count, 0x5a5a5a5a);
}

/* ------------------------------------------------------------- budgets */

Test(settings, unset_budget_means_no_limit)
{
    vg__settings_t s;
    char err[256] = "";
    cr_assert_eq(parse_env(ENV({"UNRELATED", "1"}), &s, err, sizeof err),
                 VG_OK, "%s", err);
    cr_expect_eq(s.budget.all.unit, VG__BUDGET_NONE);
    cr_expect_eq(s.budget.count, 0);
    cr_expect_eq(vg__budget_spec_limit(&s.budget, 0, UUID_A, 80 * GiB),
                 VG__UNLIMITED);
    cr_expect_eq(vg__budget_spec_limit(NULL, 0, NULL, 0), VG__UNLIMITED);
    cr_expect_null(s.budget_from, "no variable set a budget, not %s", s.budget_from);
}

/* budget_from names, in messages, the variable the budget came from: the
 * one that was set, never an alias that was not. */
Test(settings, budget_from_names_the_variable_that_set_the_budget)
{
    vg__settings_t s;
    char err[256] = "";
    cr_assert_eq(parse_env(ENV({"VRAMGUARD_BUDGET", "1GiB"}), &s, err, sizeof err), VG_OK);
    cr_expect_str_eq(s.budget_from, "VRAMGUARD_BUDGET");
    cr_assert_eq(parse_env(ENV({"CUDA_DEVICE_MEMORY_LIMIT", "1g"}), &s, err, sizeof err), VG_OK);
    cr_expect_str_eq(s.budget_from, "CUDA_DEVICE_MEMORY_LIMIT");
    cr_assert_eq(parse_env(ENV({"CUDA_DEVICE_MEMORY_LIMIT_2", "1g"}), &s, err, sizeof err),
                 VG_OK);
    cr_expect_str_eq(s.budget_from, "CUDA_DEVICE_MEMORY_LIMIT_<i>");
}

Test(settings, one_size_applies_to_every_device)
{
    vg__budget_spec_t spec = spec_of("8GiB");
    cr_expect_eq(spec.all.unit, VG__BUDGET_BYTES);
    cr_expect_eq(spec.count, 0);
    for (int dev = 0; dev < VG__MAX_DEVICES; dev++)
        cr_expect_eq(vg__budget_spec_limit(&spec, dev, "", 80 * GiB), 8 * GiB);
    /* A byte budget is not capped by the card: the budget is the budget. */
    cr_expect_eq(vg__budget_spec_limit(&spec, 0, NULL, GiB), 8 * GiB);
}

Test(settings, percent_is_floored_share_of_the_device)
{
    uint64_t total = 141 * GiB;
    vg__budget_spec_t spec = spec_of("12.5%");
    cr_expect_eq(spec.all.unit, VG__BUDGET_PERCENT);
    cr_expect_float_eq(spec.all.percent, 12.5, 1e-12);
    cr_expect_eq(vg__budget_spec_limit(&spec, 0, NULL, total), total / 8);
    spec = spec_of("75%");
    cr_expect_eq(vg__budget_spec_limit(&spec, 0, NULL, 80 * GiB), 60 * GiB);
    spec = spec_of("100%");
    cr_expect_eq(vg__budget_spec_limit(&spec, 0, NULL, total), total);
    spec = spec_of("33.3%");
    cr_expect_eq(vg__budget_spec_limit(&spec, 0, NULL, 80000000000ull),
                 26640000000ull);
    spec = spec_of("50%");
    cr_expect_eq(vg__budget_spec_limit(&spec, 0, NULL, 3), 1);
    spec = spec_of("0.001%");
    cr_expect_float_eq(spec.all.percent, 0.001, 1e-12);
    /* The smallest share: one millionth of a percent, after rounding. */
    spec = spec_of("0.0000005%");
    cr_expect_eq(vg__budget_spec_limit(&spec, 0, NULL, 80000000000ull), 800);
}

Test(settings, uuid_beats_ordinal_beats_default)
{
    vg__budget_spec_t spec =
        spec_of("8GiB,0=4GiB," UUID_A "=2GiB,3=50%," UUID_MIG "=1GiB");
    cr_assert_eq(spec.count, 4);
    cr_expect_eq(spec.entry[0].ordinal, 0);
    cr_expect_str_eq(spec.entry[1].uuid, UUID_A);
    cr_expect_eq(spec.entry[1].ordinal, -1);
    uint64_t t = 80 * GiB;
    cr_expect_eq(vg__budget_spec_limit(&spec, 0, UUID_B, t), 4 * GiB);
    cr_expect_eq(vg__budget_spec_limit(&spec, 0, UUID_A, t), 2 * GiB);
    cr_expect_eq(vg__budget_spec_limit(&spec, 5, UUID_A, t), 2 * GiB);
    cr_expect_eq(vg__budget_spec_limit(&spec, 3, NULL, t), 40 * GiB);
    cr_expect_eq(vg__budget_spec_limit(&spec, 1, UUID_B, t), 8 * GiB);
    cr_expect_eq(vg__budget_spec_limit(&spec, 7, UUID_MIG, t), GiB);
    /* nvidia-smi prints lower case; a user may paste upper case. */
    vg__budget_spec_t upper =
        spec_of("GPU-0123ABCD-4567-89AB-CDEF-0123456789AB=3GiB");
    cr_expect_eq(vg__budget_spec_limit(&upper, 0, UUID_A, t), 3 * GiB);
    cr_expect_eq(vg__budget_spec_limit(&upper, 0, UUID_B, t), VG__UNLIMITED);
    /* Nor is the prefix's case the user's to get right. */
    vg__budget_spec_t lower =
        spec_of("gpu-0123abcd-4567-89ab-cdef-0123456789ab=3GiB,mig-ffffffff-0000-1111-2222-"
                "333333333333=1GiB");
    cr_expect_eq(vg__budget_spec_limit(&lower, 0, UUID_A, t), 3 * GiB);
    cr_expect_eq(vg__budget_spec_limit(&lower, 0, UUID_MIG, t), GiB);
    cr_expect_eq(vg__budget_spec_limit(&lower, 0, UUID_B, t), VG__UNLIMITED);
}

Test(settings, per_device_list_without_default_leaves_others_unlimited)
{
    vg__budget_spec_t spec = spec_of("0=8GiB,1=4GiB");
    cr_expect_eq(spec.all.unit, VG__BUDGET_NONE);
    cr_expect_eq(vg__budget_spec_limit(&spec, 0, NULL, 0), 8 * GiB);
    cr_expect_eq(vg__budget_spec_limit(&spec, 1, NULL, 0), 4 * GiB);
    cr_expect_eq(vg__budget_spec_limit(&spec, 2, NULL, 0), VG__UNLIMITED);
    spec = spec_of("63=1,00=2");
    cr_expect_eq(vg__budget_spec_limit(&spec, 63, NULL, 0), 1);
    cr_expect_eq(vg__budget_spec_limit(&spec, 0, NULL, 0), 2);
}

Test(settings, sixteen_device_entries_fit_and_seventeen_do_not)
{
    char text[512] = "", err[256] = "";
    for (int i = 0; i < VG__BUDGET_ENTRIES; i++)
        snprintf(text + strlen(text), sizeof text - strlen(text), "%s%d=%dG",
                 i ? "," : "", i, i + 1);
    vg__budget_spec_t spec = spec_of(text);
    cr_expect_eq(spec.count, VG__BUDGET_ENTRIES);
    cr_expect_eq(vg__budget_spec_limit(&spec, 15, NULL, 0), 16 * GiB);
    strcat(text, ",16=1G");
    cr_expect_eq(vg__budget_spec_parse(text, &spec, err, sizeof err),
                 VG_ESETTING);
    cr_expect_str_eq(err, "item '16=1G': more than 16 device entries");
}

/* ------------------------------------------------------- HAMi aliases */

Test(settings, hami_alias_sets_the_budget_when_ours_is_unset)
{
    vg__settings_t s;
    char err[256] = "";
    cr_assert_eq(parse_env(ENV({"CUDA_DEVICE_MEMORY_LIMIT", "1g"},
                               {"CUDA_DEVICE_MEMORY_LIMIT_1", "3000m"},
                               {"CUDA_DEVICE_MEMORY_LIMIT_63", "1048576k"}),
                           &s, err, sizeof err),
                 VG_OK, "%s", err);
    cr_expect_eq(vg__budget_spec_limit(&s.budget, 0, NULL, 0), GiB);
    cr_expect_eq(vg__budget_spec_limit(&s.budget, 1, NULL, 0), 3000 * MiB);
    cr_expect_eq(vg__budget_spec_limit(&s.budget, 63, NULL, 0), GiB);
    cr_expect_eq(vg__budget_spec_limit(&s.budget, 2, NULL, 0), GiB);
}

Test(settings, hami_per_device_alias_alone_limits_only_that_device)
{
    vg__settings_t s;
    char err[256] = "";
    cr_assert_eq(parse_env(ENV({"CUDA_DEVICE_MEMORY_LIMIT_0", "2g"}), &s, err,
                           sizeof err),
                 VG_OK, "%s", err);
    cr_expect_eq(vg__budget_spec_limit(&s.budget, 0, NULL, 0), 2 * GiB);
    cr_expect_eq(vg__budget_spec_limit(&s.budget, 1, NULL, 0), VG__UNLIMITED);
}

/* HAMi-core reads a plain number as bytes ("1073741824" == "1g" in its
 * README), so the alias does too. */
Test(settings, hami_plain_numbers_are_bytes)
{
    vg__settings_t s;
    char err[256] = "";
    cr_assert_eq(parse_env(ENV({"CUDA_DEVICE_MEMORY_LIMIT", "1073741824"}),
                           &s, err, sizeof err),
                 VG_OK, "%s", err);
    cr_expect_eq(vg__budget_spec_limit(&s.budget, 0, NULL, 0), GiB);
}

Test(settings, vramguard_budget_wins_over_hami_alias)
{
    vg__settings_t s;
    char err[256] = "";
    /* The aliases are not even read, so a malformed one does not matter. */
    cr_assert_eq(parse_env(ENV({"CUDA_DEVICE_MEMORY_LIMIT", "1g"},
                               {"CUDA_DEVICE_MEMORY_LIMIT_0", "junk"},
                               {"VRAMGUARD_BUDGET", "4GiB"}),
                           &s, err, sizeof err),
                 VG_OK, "%s", err);
    cr_expect_eq(s.budget.count, 0);
    cr_expect_eq(vg__budget_spec_limit(&s.budget, 0, NULL, 0), 4 * GiB);
}

/* HAMi's shared-region path is read only when VRAMGUARD_SHARED is unset,
 * as its budget aliases are: a pod template that leaves it empty (or
 * anything else) cannot stop a process that names its own region. Unset
 * VRAMGUARD_SHARED, an empty one is still an error naming it. */
Test(settings, vramguard_shared_wins_over_hami_shared_cache)
{
    vg__settings_t s;
    char err[256] = "";
    cr_assert_eq(parse_env(ENV({"VRAMGUARD_SHARED", "job"},
                               {"CUDA_DEVICE_MEMORY_SHARED_CACHE", ""}),
                           &s, err, sizeof err),
                 VG_OK, "%s", err);
    cr_expect_str_eq(s.shared, "job");
    cr_expect_str_eq(s.shared_cache, "");
    cr_assert_eq(parse_env(ENV({"CUDA_DEVICE_MEMORY_SHARED_CACHE", ""}), &s, err, sizeof err),
                 VG_ESETTING);
    cr_expect_not_null(strstr(err, "CUDA_DEVICE_MEMORY_SHARED_CACHE='': empty"), "%s", err);
}

Test(settings, seventeen_hami_device_aliases_are_an_error)
{
    kv_t kv[VG__BUDGET_ENTRIES + 1];
    char names[VG__BUDGET_ENTRIES + 1][40];
    for (int i = 0; i <= VG__BUDGET_ENTRIES; i++) {
        snprintf(names[i], sizeof names[i], "CUDA_DEVICE_MEMORY_LIMIT_%d", i);
        kv[i] = (kv_t){names[i], "1g"};
    }
    vg__settings_t s;
    char err[256] = "";
    fake_env_t env = {kv, VG__BUDGET_ENTRIES};
    cr_expect_eq(parse_env(&env, &s, err, sizeof err), VG_OK, "%s", err);
    env.n++;
    cr_expect_eq(parse_env(&env, &s, err, sizeof err), VG_ESETTING);
    cr_expect_str_eq(err, "CUDA_DEVICE_MEMORY_LIMIT_16='1g': more than 16 "
                          "device entries (accepted: " ACC_HAMI ")");
}

/* ------------------------------------------------ the other settings */

Test(settings, defaults_apply_when_nothing_is_set)
{
    vg__settings_t s;
    memset(&s, 0x5a, sizeof s);
    char err[256] = "";
    cr_assert_eq(vg__settings_parse(fake_get, ENV({"X", "1"}), &s, err,
                                    sizeof err),
                 VG_OK, "%s", err);
    cr_expect_str_eq(s.libcuda, "libcuda.so.1");
    cr_expect_str_eq(s.shared, "");
    cr_expect_str_eq(s.audit, "");
    cr_expect_eq(s.on_bad_pointer, VG__BADPTR_WARN);
    cr_expect_eq(s.managed, VG__MANAGED_COUNT);
    cr_expect_eq(s.pool, VG__POOL_OFF);
    cr_expect_eq(s.log_level, VG__LOG_WARN);
    cr_expect_eq(s.budget.all.unit, VG__BUDGET_NONE);
}

Test(settings, every_enum_word_maps_to_its_value)
{
    static const struct {
        const char *name, *value;
        size_t offset;
        int want;
    } cases[] = {
#define C(env, word, field, v) {env, word, offsetof(vg__settings_t, field), v}
        C("VRAMGUARD_ON_BAD_POINTER", "warn", on_bad_pointer, VG__BADPTR_WARN),
        C("VRAMGUARD_ON_BAD_POINTER", "reject", on_bad_pointer,
          VG__BADPTR_REJECT),
        C("VRAMGUARD_ON_BAD_POINTER", "ABORT", on_bad_pointer,
          VG__BADPTR_ABORT),
        C("VRAMGUARD_MANAGED", "count", managed, VG__MANAGED_COUNT),
        C("VRAMGUARD_MANAGED", "ignore", managed, VG__MANAGED_IGNORE),
        C("VRAMGUARD_MANAGED", "deny", managed, VG__MANAGED_DENY),
        C("VRAMGUARD_POOL", "off", pool, VG__POOL_OFF),
        C("VRAMGUARD_POOL", "Cache", pool, VG__POOL_CACHE),
        C("VRAMGUARD_LOG", "error", log_level, VG__LOG_ERROR),
        C("VRAMGUARD_LOG", "warn", log_level, VG__LOG_WARN),
        C("VRAMGUARD_LOG", "info", log_level, VG__LOG_INFO),
        C("VRAMGUARD_LOG", "debug", log_level, VG__LOG_DEBUG),
        C("VRAMGUARD_LEAKS", "0", leaks, 0),
        C("VRAMGUARD_LEAKS", "1", leaks, 1),
        C("VRAMGUARD_VERIFY", "1", verify, 1),
        C("VRAMGUARD_BACKTRACE", "0", backtrace, 0),
        C("VRAMGUARD_BACKTRACE", "8", backtrace, 8),
        C("VRAMGUARD_BACKTRACE", "32", backtrace, 32),
#undef C
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        vg__settings_t s;
        char err[256] = "";
        cr_expect_eq(parse_env(ENV({cases[i].name, cases[i].value}), &s, err,
                               sizeof err),
                     VG_OK, "%s", err);
        int got;
        memcpy(&got, (char *)&s + cases[i].offset, sizeof got);
        cr_expect_eq(got, cases[i].want, "%s=%s", cases[i].name,
                     cases[i].value);
    }
}

Test(settings, backtrace_takes_0_to_32_frames)
{
    static const struct {
        const char *text, *msg;
    } bad[] = {
        {"33", "VRAMGUARD_BACKTRACE='33': too many frames (at most 32) (accepted: 0 to 32 "
               "frames)"},
        {"-1", "VRAMGUARD_BACKTRACE='-1': not a whole number of frames (accepted: 0 to 32 "
               "frames)"},
        {"", "VRAMGUARD_BACKTRACE='': empty (accepted: 0 to 32 frames)"},
        {"4 ", "VRAMGUARD_BACKTRACE='4 ': not a whole number of frames (accepted: 0 to 32 "
               "frames)"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        vg__settings_t s;
        char err[256] = "";
        cr_expect_eq(parse_env(ENV({"VRAMGUARD_BACKTRACE", bad[i].text}), &s, err, sizeof err),
                     VG_ESETTING);
        cr_expect_str_eq(err, bad[i].msg);
    }
    vg__settings_t s;
    char err[256] = "";
    cr_assert_eq(parse_env(ENV({"X", "1"}), &s, err, sizeof err), VG_OK, "%s", err);
    cr_expect_eq(s.backtrace, 0);
    cr_expect_eq(s.leaks, 0);
    cr_expect_eq(s.verify, 0);
}

Test(settings, text_settings_are_copied)
{
    vg__settings_t s;
    char err[256] = "";
    cr_assert_eq(parse_env(ENV({"VRAMGUARD_LIBCUDA", "/opt/x/libcuda.so.1"},
                               {"VRAMGUARD_SHARED", "job-42_a.b"},
                               {"VRAMGUARD_AUDIT", "/tmp/audit log.jsonl"}),
                           &s, err, sizeof err),
                 VG_OK, "%s", err);
    cr_expect_str_eq(s.libcuda, "/opt/x/libcuda.so.1");
    cr_expect_str_eq(s.shared, "job-42_a.b");
    cr_expect_str_eq(s.audit, "/tmp/audit log.jsonl");
}

Test(settings, longest_allowed_texts_fit)
{
    static char name[201], path[4096];
    memset(name, 'n', 200);
    memset(path, 'p', 4095);
    vg__settings_t s;
    char err[512] = "";
    cr_assert_eq(parse_env(ENV({"VRAMGUARD_SHARED", name},
                               {"VRAMGUARD_AUDIT", path}),
                           &s, err, sizeof err),
                 VG_OK, "%s", err);
    cr_expect_eq(strlen(s.shared), 200);
    cr_expect_eq(strlen(s.audit), 4095);
}
