/*
 * test_nvml.c — NVML's memory views and the memory no call shows, seen
 * from a real process: tests/nvml_client.c runs under the preload shim
 * (LD_PRELOAD for that child only) against the CUDA test driver and the
 * NVML test double (tests/fakenvml), and its printed records are checked.
 */
#include <criterion/criterion.h>
#include <cuda.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clientrun.h"
#include "testutil.h"

#define OUT_MAX 16384
#define ARGV_MAX 16
#define EXTRA_MAX 16

typedef struct {
    char out[OUT_MAX];
    int status; /* exit code; 128+N for signal N */
} run_t;

/* Runs nvml_client with `args` under the shim; `extra` ("NAME=value",
 * NULL-terminated) overrides the inherited environment, from which every
 * VRAMGUARD_ and FAKENVML_ setting is dropped. nvml=false leaves
 * the NVML test double off the library path. */
static void run_nvml_client(run_t *r, bool nvml, char *const *extra, char *const *args)
{
    static const char *const drop[] = {"FAKENVML_", "VRAMGUARD_", NULL};
    const char *build = build_dir();
    char preload[4096], libpath[8192], client[4096];
    snprintf(preload, sizeof preload, "LD_PRELOAD=%s/libvramguard-preload.so", build);
    snprintf(libpath, sizeof libpath, "LD_LIBRARY_PATH=%s/fakecuda%s%s%s", build,
             nvml ? ":" : "", nvml ? build : "", nvml ? "/fakenvml" : "");
    snprintf(client, sizeof client, "%s/clients/nvml_client", build);
    char *asan = asan_entry("");
    const char *add[EXTRA_MAX + 4] = {preload, libpath, asan};
    for (int i = 0; extra[i] && i < EXTRA_MAX; i++)
        add[i + 3] = extra[i];
    char **env = env_make(drop, add);
    free(asan);

    char *argv[ARGV_MAX] = {client};
    for (int i = 0; args[i] && i < ARGV_MAX - 2; i++)
        argv[i + 1] = args[i];
    /* Its stderr (refusals, "NVML is not available" when the test takes NVML
     * away) is the test's, not noise in the run. */
    static char err[8192];
    r->status = child_run(argv, env, &(child_out_t){r->out, sizeof r->out, err, sizeof err});
    env_free(env);
    cr_assert(r->status == 0, "nvml_client failed (status %d); output:\n%s\nstderr:\n%s", r->status,
              r->out, err);
}

/* The line that starts with `prefix` (e.g. "mem index=0 how=dlsym v=1 "). */
static const char *line_of(const run_t *r, const char *prefix)
{
    size_t n = strlen(prefix);
    for (const char *l = r->out; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
        if (strncmp(l, prefix, n) == 0)
            return l;
    cr_assert_fail("no line '%s' in:\n%s", prefix, r->out);
    return NULL;
}

/* The number after " key=" on the line that starts with `prefix`. */
static uint64_t record_field(const run_t *r, const char *prefix, const char *key)
{
    const char *l = line_of(r, prefix);
    const char *end = strchr(l, '\n');
    char pat[64];
    snprintf(pat, sizeof pat, " %s=", key);
    const char *k = strstr(l, pat);
    cr_assert(k && (!end || k < end), "no %s on '%s'", key, prefix);
    return strtoull(k + strlen(pat), NULL, 10);
}

static const char *const views[] = {
    "mem index=0 how=dlsym v=1 ", "mem index=0 how=dlsym v=2 ",
    "mem index=0 how=linked v=1 ", "mem index=0 how=linked v=2 ",
};

/* Every NVML view of device 0 says total and free as cuMemGetInfo does,
 * with used = total - free (- reserved for v2), through the hook. */
static void expect_views_match_cuda(const run_t *r)
{
    uint64_t free_b = record_field(r, "cuda ", "free"), total = record_field(r, "cuda ", "total");
    for (size_t i = 0; i < sizeof views / sizeof views[0]; i++) {
        cr_expect_eq(record_field(r, views[i], "rc"), 0, "%s", views[i]);
        cr_expect_eq(record_field(r, views[i], "total"), total, "%stotal", views[i]);
        cr_expect_eq(record_field(r, views[i], "free"), free_b, "%sfree", views[i]);
        cr_expect_eq(record_field(r, views[i], "used"),
                     total - free_b - record_field(r, views[i], "reserved"), "%sused", views[i]);
        cr_expect_eq(record_field(r, views[i], "hooked"), 1, "%sreaches the hook both ways", views[i]);
    }
}

Test(nvml, memory_info_and_v2_match_cuMemGetInfo_under_the_budget)
{
    run_t r;
    run_nvml_client(&r, true, (char *[]){"VRAMGUARD_BUDGET=2GiB", NULL}, (char *[]){"512", NULL});
    cr_expect_eq(record_field(&r, "cuda ", "total"), 2 * GiB);
    cr_expect_eq(record_field(&r, "cuda ", "free"), 2 * GiB - 512 * MiB - record_field(&r, "stats ", "overhead"));
    expect_views_match_cuda(&r);
}

Test(nvml, v2_keeps_the_drivers_reserved_and_leaves_it_out_of_used)
{
    run_t r;
    run_nvml_client(&r, true, (char *[]){"VRAMGUARD_BUDGET=2GiB", "FAKENVML_RESERVED_BYTES=104857600", NULL},
               (char *[]){"512", NULL});
    cr_expect_eq(record_field(&r, views[1], "reserved"), 100 * MiB);
    cr_expect_eq(record_field(&r, views[1], "used"), 412 * MiB);
    expect_views_match_cuda(&r);
}

Test(nvml, measured_context_memory_is_charged_to_the_budget)
{
    run_t r;
    char *args[] = {"512", "1235", "1237", NULL}; /* 2 GiB - 300 MiB - 512 MiB -/+ 1 MiB */
    run_nvml_client(&r, true, (char *[]){"VRAMGUARD_BUDGET=2GiB", "FAKENVML_CONTEXT_BYTES=314572800", NULL},
               args);
    cr_expect_eq(record_field(&r, "stats ", "overhead"), 300 * MiB);
    cr_expect_eq(record_field(&r, "stats ", "used"), 812 * MiB);
    cr_expect_eq(record_field(&r, "cuda ", "free"), 2 * GiB - 812 * MiB);
    cr_expect_eq(record_field(&r, "try mib=1235 ", "rc"), (uint64_t)CUDA_SUCCESS);
    cr_expect_eq(record_field(&r, "try mib=1237 ", "rc"), (uint64_t)CUDA_ERROR_OUT_OF_MEMORY);
    expect_views_match_cuda(&r);
}

Test(nvml, without_nvml_everything_works_and_overhead_is_zero)
{
    run_t r;
    run_nvml_client(&r, false, (char *[]){"VRAMGUARD_BUDGET=2GiB", "FAKENVML_CONTEXT_BYTES=314572800", NULL},
               (char *[]){"512", "1536", "1537", NULL});
    line_of(&r, "nvml absent");
    cr_expect_eq(record_field(&r, "stats ", "overhead"), 0);
    cr_expect_eq(record_field(&r, "cuda ", "free"), 1536 * MiB);
    cr_expect_eq(record_field(&r, "try mib=1536 ", "rc"), (uint64_t)CUDA_SUCCESS);
    cr_expect_eq(record_field(&r, "try mib=1537 ", "rc"), (uint64_t)CUDA_ERROR_OUT_OF_MEMORY);
}

Test(nvml, without_a_budget_nvml_reports_the_real_numbers)
{
    run_t r;
    run_nvml_client(&r, true, (char *[]){"FAKENVML_CONTEXT_BYTES=314572800", "FAKENVML_RESERVED_BYTES=1048576", NULL},
               (char *[]){"512", NULL});
    uint64_t total = 80 * GiB, used = 812 * MiB, reserved = MiB;
    for (int i = 0; i < 2; i++) {
        const char *v1 = views[2 * i], *v2 = views[2 * i + 1];
        cr_expect_eq(record_field(&r, v1, "total"), total);
        cr_expect_eq(record_field(&r, v1, "used"), used + reserved, "v1 used counts reserved");
        cr_expect_eq(record_field(&r, v1, "free"), total - used - reserved);
        cr_expect_eq(record_field(&r, v2, "total"), total);
        cr_expect_eq(record_field(&r, v2, "used"), used);
        cr_expect_eq(record_field(&r, v2, "reserved"), reserved);
        cr_expect_eq(record_field(&r, v2, "free"), total - used - reserved);
    }
    cr_expect_eq(record_field(&r, "stats ", "overhead"), 0, "no budget: nothing to enforce");
}

Test(nvml, devices_map_by_uuid_not_index_under_CUDA_VISIBLE_DEVICES)
{
    /* Two GPUs on the node, CUDA_VISIBLE_DEVICES=1: CUDA's device 0 is
     * NVML's index 1, and NVML's index 0 is not this process's to budget. */
    run_t r;
    run_nvml_client(&r, true, (char *[]){"VRAMGUARD_BUDGET=2GiB", "FAKENVML_MAP=-,0", NULL},
               (char *[]){"512", NULL});
    cr_expect_eq(record_field(&r, "nvml ", "count"), 2);
    cr_expect_eq(record_field(&r, "mem index=0 how=dlsym v=1 ", "total"), 80 * GiB);
    cr_expect_eq(record_field(&r, "mem index=0 how=linked v=2 ", "free"), 80 * GiB);
    cr_expect_eq(record_field(&r, "mem index=1 how=dlsym v=1 ", "total"), 2 * GiB);
    cr_expect_eq(record_field(&r, "mem index=1 how=dlsym v=1 ", "free"), record_field(&r, "cuda ", "free"));
    cr_expect_eq(record_field(&r, "mem index=1 how=linked v=2 ", "free"), record_field(&r, "cuda ", "free"));
}

/* A fork while another thread holds the shim's NVML lock (resolving NVML
 * on its first memory call, waiting in dlopen for a constructor) leaves a
 * child whose own first NVML memory call can take that lock: the lock is
 * in the fork sequence, so the fork waits for it (tests/clients/
 * client_nvml_fork.c; before, the child hung until its alarm). */
Test(nvml, a_child_forked_during_the_first_nvml_call_can_call_nvml)
{
    static run_result_t r;
    char *libpath = cat3("LD_LIBRARY_PATH=", build_dir(), "/fakecuda:");
    char *both = cat3(libpath, build_dir(), "/fakenvml");
    run_opts_t o = {.method = "nvml_fork", .env = {both, "FAKENVML_LOAD_DELAY_NS=300000000"}};
    run_client(&o, &r);
    free(libpath);
    free(both);
    cr_assert_eq(r.status, 0, "client exited %d\nstdout: %s\nstderr: %s", r.status, r.out, r.err);
    const char *l = line_for(r.out, "nvml_fork");
    cr_assert_not_null(l, "no answer\nstdout: %s\nstderr: %s", r.out, r.err);
    long long status = field(l, "child_status");
    cr_expect(status == 0, "the child's first NVML call did not return (status %lld: %s)\n%s",
              status, status == SIGALRM ? "its alarm" : "see waitpid", r.err);
}
