/*
 * test_routing.c — the shim's one table of hooked symbols against what the
 * drivers and the shim really export: every memory entry point the test
 * driver exports is classified (hooked or deliberately passed through), and
 * the preload library exports exactly the hooks, the public API and dlsym.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nvml.h"
#include "shim.h"

static const char *const hooked[] = {
#define NAME_(name, params) #name,
    VG_HOOKS(NAME_)
#undef NAME_
};

static const char *const nvml_hooked[] = {
#define NAME_(name, params) #name,
    VG_NVML_HOOKS(NAME_)
#undef NAME_
};

static const char *const passed[] = {
#define NAME_(name) #name,
    VG_PASSTHROUGH(NAME_)
#undef NAME_
};

static const char *const families[] = {
#define NAME_(prefix) prefix,
    VG_PASSTHROUGH_FAMILIES(NAME_)
#undef NAME_
};

static bool in_family(const char *name)
{
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++)
        if (strncmp(name, families[i], strlen(families[i])) == 0)
            return true;
    return false;
}

static bool listed(const char *name, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i], name) == 0)
            return true;
    return false;
}

static bool memory_related(const char *name)
{
    static const char *const prefixes[] = {
        "cuMem", "cuArray", "cuArray3D", "cuMipmappedArray", "cuGraphAddMem", "cuGraphAddNode",
        "cuGraphMem", "cuDeviceGraphMem", "cuDeviceGetGraphMem", "cuDeviceSetGraphMem",
        "cuPointer", "cuIpc", "cuDeviceTotalMem", "cuDeviceGetMemPool",
        "cuDeviceSetMemPool", "cuDeviceGetDefaultMemPool",
    };
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++)
        if (strncmp(name, prefixes[i], strlen(prefixes[i])) == 0)
            return true;
    return false;
}

/* Runs `nm -D --defined-only` on a library under the build folder and
 * calls fn for each exported symbol "name" or "name@VERSION". */
static int each_export(const char *lib, void (*fn)(const char *sym, void *ctx), void *ctx)
{
    const char *build = getenv("VG_TEST_BUILD");
    cr_assert_not_null(build, "VG_TEST_BUILD is set by tests/run-tests.sh");
    char cmd[4096], line[512];
    snprintf(cmd, sizeof cmd, "nm -D --defined-only '%s/%s'", build, lib);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    int n = 0;
    while (fgets(line, sizeof line, p)) {
        char addr[64], type[8], sym[400];
        if (sscanf(line, "%63s %7s %399s", addr, type, sym) == 3) {
            fn(sym, ctx);
            n++;
        }
    }
    cr_assert_eq(pclose(p), 0, "nm failed on %s", lib);
    return n;
}

static void check_classified(const char *sym, void *ctx)
{
    int *unclassified = ctx;
    if (!memory_related(sym))
        return;
    if (listed(sym, hooked, sizeof hooked / sizeof hooked[0]) ||
        listed(sym, passed, sizeof passed / sizeof passed[0]) || in_family(sym))
        return;
    cr_log_error("test driver exports %s, which shim/shim.h neither hooks nor passes through", sym);
    (*unclassified)++;
}

Test(routing, every_memory_entry_point_of_the_driver_is_classified)
{
    int unclassified = 0;
    int n = each_export("fakecuda/libcuda.so.1", check_classified, &unclassified);
    cr_expect_gt(n, 100, "the test driver exports its API (%d symbols)", n);
    cr_expect_eq(unclassified, 0);
}

struct exports {
    char names[256][96];
    int count;
    int stray;
};

static void collect(const char *sym, void *ctx)
{
    struct exports *e = ctx;
    char name[96];
    snprintf(name, sizeof name, "%s", sym);
    char *at = strchr(name, '@');
    if (at && strcmp(at, "@@VRAMGUARD_0") != 0 && strcmp(name, "dlsym@@GLIBC_2.34") != 0 &&
        strcmp(name, "dlsym@GLIBC_2.2.5") != 0 && strcmp(name, "_exit@@GLIBC_2.2.5") != 0 &&
        strcmp(name, "_Exit@@GLIBC_2.2.5") != 0) {
        cr_log_error("unexpected symbol version: %s", sym);
        e->stray++;
    }
    if (strncmp(name, "GLIBC_", 6) == 0 || strncmp(name, "VRAMGUARD_", 10) == 0)
        return; /* version definitions */
    if (at)
        *at = '\0';
    if (strncmp(name, "cu", 2) != 0 && strncmp(name, "vg_", 3) != 0 && strcmp(name, "dlsym") != 0 &&
        strcmp(name, "_exit") != 0 && strcmp(name, "_Exit") != 0 &&
        !listed(name, nvml_hooked, sizeof nvml_hooked / sizeof nvml_hooked[0])) {
        cr_log_error("the preload library leaks an internal symbol: %s", sym);
        e->stray++;
    }
    if (strncmp(name, "vg__", 4) == 0) {
        cr_log_error("the preload library exports an engine internal: %s", sym);
        e->stray++;
    }
    if (e->count < 256)
        snprintf(e->names[e->count++], sizeof e->names[0], "%s", name);
}

Test(routing, the_preload_library_exports_exactly_the_hooks_the_api_and_dlsym)
{
    struct exports e = {0};
    each_export("libvramguard-preload.so", collect, &e);
    cr_expect_eq(e.stray, 0);
    int dlsyms = 0;
    for (int i = 0; i < e.count; i++)
        dlsyms += strcmp(e.names[i], "dlsym") == 0;
    cr_expect_eq(dlsyms, 2, "dlsym under GLIBC_2.34 and GLIBC_2.2.5");
    int exits = 0; /* the audit log is written out on the way (shim.c) */
    for (int i = 0; i < e.count; i++)
        exits += strcmp(e.names[i], "_exit") == 0 || strcmp(e.names[i], "_Exit") == 0;
    cr_expect_eq(exits, 2, "_exit and _Exit under GLIBC_2.2.5");
    for (size_t h = 0; h < sizeof hooked / sizeof hooked[0]; h++) {
        bool found = false;
        for (int i = 0; i < e.count && !found; i++)
            found = strcmp(e.names[i], hooked[h]) == 0;
        cr_expect(found, "hook %s is exported", hooked[h]);
    }
    for (size_t h = 0; h < sizeof nvml_hooked / sizeof nvml_hooked[0]; h++) {
        bool found = false;
        for (int i = 0; i < e.count && !found; i++)
            found = strcmp(e.names[i], nvml_hooked[h]) == 0;
        cr_expect(found, "NVML hook %s is exported", nvml_hooked[h]);
    }
    for (size_t h = 0; h < sizeof hooked / sizeof hooked[0]; h++)
        cr_expect(!listed(hooked[h], passed, sizeof passed / sizeof passed[0]),
                  "%s is both hooked and passed through", hooked[h]);
}

Test(routing, the_public_api_is_exported_and_nothing_else_from_the_library)
{
    struct exports e = {0};
    each_export("libvramguard.so", collect, &e);
    cr_expect_eq(e.stray, 0);
    cr_expect_gt(e.count, 20);
    for (int i = 0; i < e.count; i++)
        cr_expect(strncmp(e.names[i], "vg_", 3) == 0, "libvramguard.so exports %s", e.names[i]);
}
