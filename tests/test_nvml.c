/*
 * test_nvml.c — NVML's memory views and the memory no call shows, seen
 * from a real process: tests/nvml_client.c runs under the preload shim
 * (LD_PRELOAD for that child only) against the CUDA test driver and the
 * NVML test double (tests/fakenvml), and its printed records are checked.
 */
#include <criterion/criterion.h>
#include <cuda.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

extern char **environ;

#define OUT_MAX 16384
#define ENV_MAX 512

typedef struct {
    char out[OUT_MAX];
    int status;
} run_t;

static bool overridden(const char *entry, char *const *extra)
{
    for (int i = 0; extra[i]; i++) {
        size_t n = strcspn(extra[i], "=");
        if (strncmp(entry, extra[i], n) == 0 && entry[n] == '=')
            return true;
    }
    return false;
}

/* Runs nvml_client with `args` under the shim; `extra` ("NAME=value",
 * NULL-terminated) overrides the inherited environment, from which every
 * VRAMGUARD_ and FAKENVML_ setting is dropped. nvml=false leaves
 * the NVML test double off the library path. */
static void run_client(run_t *r, bool nvml, char *const *extra, char *const *args)
{
    const char *build = getenv("VG_TEST_BUILD");
    cr_assert_not_null(build, "VG_TEST_BUILD is set by tests/run-tests.sh");
    static char preload[4096], libpath[8192], asan[1024], client[4096];
    snprintf(preload, sizeof preload, "LD_PRELOAD=%s/libvramguard-preload.so", build);
    snprintf(libpath, sizeof libpath, "LD_LIBRARY_PATH=%s/fakecuda%s%s%s", build,
             nvml ? ":" : "", nvml ? build : "", nvml ? "/fakenvml" : "");
    const char *ao = getenv("ASAN_OPTIONS");
    snprintf(asan, sizeof asan, "ASAN_OPTIONS=%s%sverify_asan_link_order=0", ao ? ao : "",
             ao && *ao ? ":" : "");
    snprintf(client, sizeof client, "%s/clients/nvml_client", build);

    char *mine[] = {preload, libpath, asan, NULL};
    char *env[ENV_MAX];
    int n = 0;
    for (char **e = environ; *e && n < ENV_MAX - 24; e++)
        if (!overridden(*e, mine) && !overridden(*e, extra) &&
            strncmp(*e, "FAKENVML_", 9) != 0 && strncmp(*e, "VRAMGUARD_", 10) != 0)
            env[n++] = *e;
    for (int i = 0; mine[i] && n < ENV_MAX - 16; i++)
        if (!overridden(mine[i], extra))
            env[n++] = mine[i];
    for (int i = 0; extra[i] && n < ENV_MAX - 1; i++)
        env[n++] = extra[i];
    env[n] = NULL;

    char *argv[16] = {client};
    for (int i = 0; args[i] && i < 14; i++)
        argv[i + 1] = args[i];

    int fd[2];
    cr_assert_eq(pipe(fd), 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fd[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&fa, fd[0]);
    pid_t pid;
    cr_assert_eq(posix_spawn(&pid, client, &fa, NULL, argv, env), 0, "spawn %s", client);
    posix_spawn_file_actions_destroy(&fa);
    close(fd[1]);
    size_t len = 0;
    ssize_t got;
    while ((got = read(fd[0], r->out + len, sizeof r->out - 1 - len)) > 0)
        len += (size_t)got;
    r->out[len] = '\0';
    close(fd[0]);
    waitpid(pid, &r->status, 0);
    cr_assert(WIFEXITED(r->status) && WEXITSTATUS(r->status) == 0,
              "nvml_client failed (status %d); output:\n%s", r->status, r->out);
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
static uint64_t field(const run_t *r, const char *prefix, const char *key)
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
    uint64_t free_b = field(r, "cuda ", "free"), total = field(r, "cuda ", "total");
    for (size_t i = 0; i < sizeof views / sizeof views[0]; i++) {
        cr_expect_eq(field(r, views[i], "rc"), 0, "%s", views[i]);
        cr_expect_eq(field(r, views[i], "total"), total, "%stotal", views[i]);
        cr_expect_eq(field(r, views[i], "free"), free_b, "%sfree", views[i]);
        cr_expect_eq(field(r, views[i], "used"),
                     total - free_b - field(r, views[i], "reserved"), "%sused", views[i]);
        cr_expect_eq(field(r, views[i], "hooked"), 1, "%sreaches the hook both ways", views[i]);
    }
}

Test(nvml, memory_info_and_v2_match_cuMemGetInfo_under_the_budget)
{
    run_t r;
    run_client(&r, true, (char *[]){"VRAMGUARD_BUDGET=2GiB", NULL}, (char *[]){"512", NULL});
    cr_expect_eq(field(&r, "cuda ", "total"), 2 * GiB);
    cr_expect_eq(field(&r, "cuda ", "free"), 2 * GiB - 512 * MiB - field(&r, "stats ", "overhead"));
    expect_views_match_cuda(&r);
}

Test(nvml, v2_keeps_the_drivers_reserved_and_leaves_it_out_of_used)
{
    run_t r;
    run_client(&r, true, (char *[]){"VRAMGUARD_BUDGET=2GiB", "FAKENVML_RESERVED_BYTES=104857600", NULL},
               (char *[]){"512", NULL});
    cr_expect_eq(field(&r, views[1], "reserved"), 100 * MiB);
    cr_expect_eq(field(&r, views[1], "used"), 412 * MiB);
    expect_views_match_cuda(&r);
}

Test(nvml, measured_context_memory_is_charged_to_the_budget)
{
    run_t r;
    char *args[] = {"512", "1235", "1237", NULL}; /* 2 GiB - 300 MiB - 512 MiB -/+ 1 MiB */
    run_client(&r, true, (char *[]){"VRAMGUARD_BUDGET=2GiB", "FAKENVML_CONTEXT_BYTES=314572800", NULL},
               args);
    cr_expect_eq(field(&r, "stats ", "overhead"), 300 * MiB);
    cr_expect_eq(field(&r, "stats ", "used"), 812 * MiB);
    cr_expect_eq(field(&r, "cuda ", "free"), 2 * GiB - 812 * MiB);
    cr_expect_eq(field(&r, "try mib=1235 ", "rc"), (uint64_t)CUDA_SUCCESS);
    cr_expect_eq(field(&r, "try mib=1237 ", "rc"), (uint64_t)CUDA_ERROR_OUT_OF_MEMORY);
    expect_views_match_cuda(&r);
}

Test(nvml, without_nvml_everything_works_and_overhead_is_zero)
{
    run_t r;
    run_client(&r, false, (char *[]){"VRAMGUARD_BUDGET=2GiB", "FAKENVML_CONTEXT_BYTES=314572800", NULL},
               (char *[]){"512", "1536", "1537", NULL});
    line_of(&r, "nvml absent");
    cr_expect_eq(field(&r, "stats ", "overhead"), 0);
    cr_expect_eq(field(&r, "cuda ", "free"), 1536 * MiB);
    cr_expect_eq(field(&r, "try mib=1536 ", "rc"), (uint64_t)CUDA_SUCCESS);
    cr_expect_eq(field(&r, "try mib=1537 ", "rc"), (uint64_t)CUDA_ERROR_OUT_OF_MEMORY);
}

Test(nvml, without_a_budget_nvml_reports_the_real_numbers)
{
    run_t r;
    run_client(&r, true, (char *[]){"FAKENVML_CONTEXT_BYTES=314572800", "FAKENVML_RESERVED_BYTES=1048576", NULL},
               (char *[]){"512", NULL});
    uint64_t total = 80 * GiB, used = 812 * MiB, reserved = MiB;
    for (int i = 0; i < 2; i++) {
        const char *v1 = views[2 * i], *v2 = views[2 * i + 1];
        cr_expect_eq(field(&r, v1, "total"), total);
        cr_expect_eq(field(&r, v1, "used"), used + reserved, "v1 used counts reserved");
        cr_expect_eq(field(&r, v1, "free"), total - used - reserved);
        cr_expect_eq(field(&r, v2, "total"), total);
        cr_expect_eq(field(&r, v2, "used"), used);
        cr_expect_eq(field(&r, v2, "reserved"), reserved);
        cr_expect_eq(field(&r, v2, "free"), total - used - reserved);
    }
    cr_expect_eq(field(&r, "stats ", "overhead"), 0, "no budget: nothing to enforce");
}

Test(nvml, devices_map_by_uuid_not_index_under_CUDA_VISIBLE_DEVICES)
{
    /* Two GPUs on the node, CUDA_VISIBLE_DEVICES=1: CUDA's device 0 is
     * NVML's index 1, and NVML's index 0 is not this process's to budget. */
    run_t r;
    run_client(&r, true, (char *[]){"VRAMGUARD_BUDGET=2GiB", "FAKENVML_MAP=-,0", NULL},
               (char *[]){"512", NULL});
    cr_expect_eq(field(&r, "nvml ", "count"), 2);
    cr_expect_eq(field(&r, "mem index=0 how=dlsym v=1 ", "total"), 80 * GiB);
    cr_expect_eq(field(&r, "mem index=0 how=linked v=2 ", "free"), 80 * GiB);
    cr_expect_eq(field(&r, "mem index=1 how=dlsym v=1 ", "total"), 2 * GiB);
    cr_expect_eq(field(&r, "mem index=1 how=dlsym v=1 ", "free"), field(&r, "cuda ", "free"));
    cr_expect_eq(field(&r, "mem index=1 how=linked v=2 ", "free"), field(&r, "cuda ", "free"));
}
