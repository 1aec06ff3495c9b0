/*
 * test_settings_docs.c — the settings table as users read it: the rows
 * vg__settings_describe gives --help (every setting, in the table's order,
 * with its default, help text and `vramguard run` flag), and the table of
 * docs/settings.md, copied by hand, checked against them. Parsing the
 * settings is test_settings.c's.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vg_settings.h"

static const char *const all_names[] = {
    "VRAMGUARD_BUDGET",  "VRAMGUARD_LIBCUDA",        "VRAMGUARD_SHARED",
    "CUDA_DEVICE_MEMORY_SHARED_CACHE", "VRAMGUARD_SHARED_GROUP", "VRAMGUARD_SHARED_CREATE",
    "VRAMGUARD_WAIT_MS",
    "VRAMGUARD_AUDIT",   "VRAMGUARD_ON_BAD_POINTER", "VRAMGUARD_MANAGED",
    "VRAMGUARD_POOL",    "VRAMGUARD_LOG",            "VRAMGUARD_BACKTRACE",
    "VRAMGUARD_LEAKS",   "VRAMGUARD_VERIFY",
};
#define NAMES (sizeof all_names / sizeof all_names[0])

/* NULL: a HAMi alias, which has no flag of its own, or a setting `vramguard
 * run` sets itself (VRAMGUARD_SHARED_CREATE). */
static const char *const all_flags[] = {
    "--budget", "--libcuda", "--shared", NULL, "--shared-group", NULL, "--wait-ms", "--audit",
    "--on-bad-pointer", "--managed", "--pool", "--log", "--backtrace", "--leaks-report",
    "--verify",
};
_Static_assert(sizeof all_flags / sizeof all_flags[0] == NAMES,
               "one flag per setting");

typedef struct seen {
    int count;
    vg__setting_info_t row[32];
} seen_t;

static void remember(const vg__setting_info_t *info, void *ctx)
{
    seen_t *s = ctx;
    cr_assert_lt(s->count, 32);
    s->row[s->count++] = *info;
}

Test(settings_docs, describe_covers_every_row_in_table_order)
{
    seen_t seen = {0};
    vg__settings_describe(remember, &seen);
    cr_assert_eq(seen.count, (int)NAMES);
    for (size_t i = 0; i < NAMES; i++) {
        const vg__setting_info_t *r = &seen.row[i];
        cr_expect_str_eq(r->env, all_names[i]);
        cr_expect_not_null(r->deflt);
        cr_expect_gt(strlen(r->help), 20, "%s has no help", r->env);
        cr_expect_not_null(strstr(r->help, "Accepted: "), "%s", r->env);
        cr_expect_not_null(strstr(r->help, r->accepted), "%s", r->env);
        cr_expect_gt(strlen(r->metavar), 0, "%s has no metavar", r->env);
    }
    const vg__setting_info_t *bad = &seen.row[8], *frames = &seen.row[12];
    cr_expect_str_eq(seen.row[1].deflt, "libcuda.so.1");
    cr_expect_str_eq(bad->deflt, "warn");
    cr_expect_str_eq(seen.row[0].deflt, "");
    cr_expect_not_null(strstr(bad->help, "warn|reject|abort"));
    cr_expect_str_eq(bad->metavar, "warn|reject|abort");
    /* Only VMM handles may be real: an array handle it never saw is refused. */
    cr_expect_not_null(strstr(bad->help, "VMM handles"), "%s", bad->help);
    cr_expect_str_eq(frames->deflt, "0");
    cr_expect_str_eq(frames->metavar, "N");
    vg__settings_describe(NULL, NULL); /* harmless */
}

Test(settings_docs, describe_gives_every_setting_its_run_flag)
{
    seen_t seen = {0};
    vg__settings_describe(remember, &seen);
    cr_assert_eq(seen.count, (int)NAMES);
    for (size_t i = 0; i < NAMES; i++) {
        if (!all_flags[i]) {
            cr_expect_null(seen.row[i].flag, "%s has a flag", all_names[i]);
            continue;
        }
        cr_assert_not_null(seen.row[i].flag, "%s has no flag", all_names[i]);
        cr_expect_str_eq(seen.row[i].flag, all_flags[i]);
        for (size_t j = 0; j < i; j++) /* flags are unique */
            cr_expect(!seen.row[j].flag || strcmp(seen.row[i].flag, seen.row[j].flag));
    }
}

/* Every name the table (and the alias code) reads is documented. The doc
 * is found next to this source file (__FILE__ is relative to the repository
 * root, where make runs tests), else above $VG_TEST_BUILD (run-tests.sh). */
static FILE *open_doc(void)
{
    char path[4096];
    const char *slash = strrchr(__FILE__, '/');
    int dir = slash ? (int)(slash - __FILE__) : 0;
    snprintf(path, sizeof path, "%.*s%s../docs/settings.md", dir, __FILE__,
             slash ? "/" : "");
    FILE *f = fopen(path, "r");
    const char *build = getenv("VG_TEST_BUILD");
    for (int up = 1; !f && build && up <= 3; up++) {
        snprintf(path, sizeof path, "%s/%.*sdocs/settings.md", build, 3 * up,
                 "../../../");
        f = fopen(path, "r");
    }
    return f;
}

static char *read_doc(void)
{
    FILE *f = open_doc();
    cr_assert_not_null(f, "cannot find docs/settings.md (run from the "
                          "repository root)");
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

Test(settings_docs, docs_list_every_setting)
{
    seen_t seen = {0};
    vg__settings_describe(remember, &seen);
    const char *doc = read_doc();
    for (int i = 0; i < seen.count; i++) {
        const vg__setting_info_t *r = &seen.row[i];
        char tick[64];
        snprintf(tick, sizeof tick, "`%s`", r->env);
        cr_expect_not_null(strstr(doc, tick), "docs/settings.md lacks %s",
                           r->env);
        if (r->deflt[0]) {
            snprintf(tick, sizeof tick, "`%s`", r->deflt);
            cr_expect_not_null(strstr(doc, tick), "default of %s undocumented",
                               r->env);
        }
        if (r->flag) {
            snprintf(tick, sizeof tick, "`%s`", r->flag);
            cr_expect_not_null(strstr(doc, tick), "flag %s undocumented",
                               r->flag);
        }
    }
    cr_expect_not_null(strstr(doc, "`CUDA_DEVICE_MEMORY_LIMIT`"));
    cr_expect_not_null(strstr(doc, "`CUDA_DEVICE_MEMORY_LIMIT_<i>`"));
}

/* The docs table is the settings table copied by hand: one row per
 * setting, in the table's order, so the two read side by side. */
Test(settings_docs, docs_table_rows_follow_the_settings_table)
{
    seen_t seen = {0};
    vg__settings_describe(remember, &seen);
    const char *doc = read_doc(), *prev = doc;
    for (int i = 0; i < seen.count; i++) {
        char row[80];
        snprintf(row, sizeof row, "\n| `%s` |", seen.row[i].env);
        const char *at = strstr(doc, row);
        cr_assert_not_null(at, "docs/settings.md has no row for %s", seen.row[i].env);
        cr_expect_gt(at, prev, "%s's row is out of the table's order", seen.row[i].env);
        prev = at;
    }
}
