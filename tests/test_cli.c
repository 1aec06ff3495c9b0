/*
 * test_cli.c — the `vramguard` command seen from outside: each test starts
 * build/vramguard as a child process and reads its exit status, stdout and
 * stderr. `run` is checked through `sh -c 'echo ...'` (what the command
 * would see); `check` runs over the test driver and its self-test preloads
 * the real shim.
 *
 * Needs VG_TEST_BUILD (tests/run-tests.sh exports it), the build folder with
 * vramguard, libvramguard-preload.so and fakecuda/libcuda.so.1, which
 * LD_LIBRARY_PATH already points at.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <limits.h>
#include <sys/stat.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clientrun.h"
#include "vg_settings.h"


/* The shim's path as the CLI finds it (beside its own resolved path). */
static void shim_path(char *out, size_t len)
{
    char p[4096];
    snprintf(p, sizeof p, "%s/libvramguard-preload.so", build_dir());
    cr_assert_not_null(realpath(p, out), "no %s", p);
    cr_assert_lt(strlen(out), len);
}

/* Runs build/vramguard with args (NULL-terminated, without argv[0]) in the
 * runner's environment without settings the test must decide, plus `set`
 * (NULL-terminated "NAME=value", may be NULL). The child's ASan link-order
 * check is off (asan_entry()). Test environment only. */

/* An error of vramguard itself: exit 2, one line on stderr naming `name`. */
static void expect_usage_error(const cli_result_t *r, const char *name)
{
    cr_expect_eq(r->status, 2, "status %d, stderr: %s", r->status, r->err);
    cr_expect_eq(lines(r->err), 1, "one line: %s", r->err);
    cr_expect_not_null(strstr(r->err, name), "names %s: %s", name, r->err);
    cr_expect_str_eq(r->out, "");
}

/* ---------------------------------------------------------------- help */

typedef struct flags {
    int count;
    const char *flag[32];
} flags_t;

static void add_flag(const vg__setting_info_t *info, void *ctx)
{
    flags_t *f = ctx;
    if (info->flag && f->count < 32)
        f->flag[f->count++] = info->flag;
}

Test(cli, help_of_every_command_exits_0_and_run_lists_every_setting_flag)
{
    cli_result_t r;
    flags_t f = {0};
    vg__settings_describe(add_flag, &f);
    cr_assert_geq(f.count, 10, "every VRAMGUARD_ setting has a flag"); /* aliases have none */
    cli_run_clean(&r, NULL, ARGS("--help"));
    cr_expect_eq(r.status, 0);
    cr_expect_not_null(strstr(r.out, "run"));
    cr_expect_not_null(strstr(r.out, "check"));
    cr_expect_null(strstr(r.out, "__selftest"), "the self-test command is hidden");
    cli_run_clean(&r, NULL, ARGS("run", "--help"));
    cr_expect_eq(r.status, 0, "%s", r.err);
    for (int i = 0; i < f.count; i++)
        cr_expect_not_null(strstr(r.out, f.flag[i]), "run --help lacks %s", f.flag[i]);
    cr_expect_not_null(strstr(r.out, "--device-budget"));
    cr_expect_not_null(strstr(r.out, "VRAMGUARD_BUDGET"));
    cli_run_clean(&r, NULL, ARGS("check", "--help"));
    cr_expect_eq(r.status, 0);
    cr_expect_not_null(strstr(r.out, "--json"));
    const char *const shared_cmds[] = {"status", "metrics", "budget"};
    for (int i = 0; i < 3; i++) {
        cli_run_clean(&r, NULL, ARGS(shared_cmds[i], "--help"));
        cr_expect_eq(r.status, 0, "%s --help: %s", shared_cmds[i], r.err);
        cr_expect_not_null(strstr(r.out, "Usage: vramguard"), "%s", r.out);
    }
}

Test(cli, version_prints_the_library_version)
{
    cli_result_t r;
    char want[64];
    snprintf(want, sizeof want, "vramguard %d.%d.%d\n", VG_VERSION_MAJOR, VG_VERSION_MINOR,
             VG_VERSION_PATCH);
    cli_run_clean(&r, NULL, ARGS("--version"));
    cr_expect_eq(r.status, 0);
    cr_expect_str_eq(r.out, want);
}

Test(cli, unknown_commands_and_options_exit_2_naming_them)
{
    cli_result_t r;
    cli_run_clean(&r, NULL, ARGS("frobnicate"));
    expect_usage_error(&r, "'frobnicate'");
    cr_expect_not_null(strstr(r.err, "--help"), "a usage hint: %s", r.err);
    cli_run_clean(&r, NULL, ARGS("--frobnicate"));
    expect_usage_error(&r, "'--frobnicate'");
    cli_run_clean(&r, NULL, ARGS("run", "--frobnicate", "1", "--", "true"));
    expect_usage_error(&r, "'--frobnicate'");
    cli_run_clean(&r, NULL, ARGS("check", "--frobnicate"));
    expect_usage_error(&r, "'--frobnicate'");
    cli_run_clean(&r, NULL, ARGS("run", "--budget"));
    expect_usage_error(&r, "'--budget' needs a value");
    cli_run_clean(&r, NULL, ARGS("run", "--budget", "1GiB"));
    expect_usage_error(&r, "no command");
    cli_run_clean(&r, NULL, ARGS("metrics", "--listen"));
    expect_usage_error(&r, "'--listen' needs a value");
    cli_run_clean(&r, NULL, ARGS("metrics", "--textfile"));
    expect_usage_error(&r, "'--textfile' needs a value");
}

/* "--json=1" is a known option that takes no value, given one: the error
 * says so, naming the option and what was typed, not "unknown option". */
Test(cli, a_flag_given_a_value_is_refused_naming_it)
{
    const char *const *const cases[] = {
        ARGS("replay", "--json=1", "tests/data/audit/replay_3x400MiB.jsonl"),
        ARGS("audit", "--json=1", "tests/data/audit/basic.jsonl"),
        ARGS("audit", "tests/data/audit/basic.jsonl", "--leaks=yes"),
        ARGS("audit", "--csv=", "tests/data/audit/basic.jsonl"),
        ARGS("check", "--json=1"),
        ARGS("status", "--json=true"),
        ARGS("status", "--watch=1"),
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cli_result_t r;
        char want[64];
        const char *arg = cases[i][1][0] == '-' ? cases[i][1] : cases[i][2];
        snprintf(want, sizeof want, "option '%.*s' takes no value", (int)strcspn(arg, "="), arg);
        cli_run_clean(&r, NULL, cases[i]);
        expect_usage_error(&r, want);
        char typed[64];
        snprintf(typed, sizeof typed, "'%s'", arg);
        cr_expect_not_null(strstr(r.err, typed), "names what was typed: %s", r.err);
    }
}

/* ------------------------------------------------------------------ run */

#define SHOW "echo \"$LD_PRELOAD|$VRAMGUARD_BUDGET\""

Test(cli, run_refuses_a_bad_budget_and_never_starts_the_command)
{
    cli_result_t r;
    cli_run_clean(&r, NULL, ARGS("run", "--budget", "8XB", "--", "true"));
    expect_usage_error(&r, "--budget");
    cr_expect_not_null(strstr(r.err, "'8XB'"), "%s", r.err);
    cli_run_clean(&r, NULL, ARGS("run", "--budget=8XB", "--", "sh", "-c", "echo ran"));
    expect_usage_error(&r, "'8XB'");
    cli_run_clean(&r, NULL, ARGS("run", "--managed", "sometimes", "--", "sh", "-c", "echo ran"));
    expect_usage_error(&r, "--managed");
    cr_expect_not_null(strstr(r.err, "'sometimes'"), "%s", r.err);
    cli_run_clean(&r, NULL, ARGS("run", "--device-budget", "4GiB", "--", "true"));
    expect_usage_error(&r, "--device-budget");
    cli_run_clean(&r, ENV("VRAMGUARD_LOG=loud"), ARGS("run", "--", "sh", "-c", "echo ran"));
    expect_usage_error(&r, "VRAMGUARD_LOG='loud'");
}

Test(cli, run_preloads_the_shim_first_and_sets_the_budget)
{
    cli_result_t r;
    char shim[4096], want[8192];
    shim_path(shim, sizeof shim);
    cli_run_clean(&r, NULL, ARGS("run", "--per-process", "--budget", "1GiB", "--", "sh", "-c", SHOW));
    cr_expect_eq(r.status, 0, "%s", r.err);
    snprintf(want, sizeof want, "%s|1GiB\n", shim);
    cr_expect_str_eq(r.out, want);
}

Test(cli, run_keeps_an_earlier_preload_after_the_shim_and_never_adds_it_twice)
{
    cli_result_t r;
    char shim[4096], want[8192], twice[8192];
    shim_path(shim, sizeof shim);
    snprintf(want, sizeof want, "%s:/x.so|1GiB\n", shim);
    cli_run_clean(&r, ENV("LD_PRELOAD=/x.so"),
        ARGS("run", "--per-process", "--budget", "1GiB", "--", "sh", "-c", SHOW));
    cr_expect_eq(r.status, 0, "%s", r.err);
    cr_expect_str_eq(r.out, want);
    snprintf(twice, sizeof twice, "LD_PRELOAD=/x.so:%s", shim);
    cli_run_clean(&r, ENV(twice), ARGS("run", "--per-process", "--budget", "1GiB", "--", "sh", "-c", SHOW));
    cr_expect_eq(r.status, 0, "%s", r.err);
    cr_expect_str_eq(r.out, want);
}

Test(cli, run_combines_budget_and_device_budget)
{
    cli_result_t r;
    cli_run_clean(&r, ENV("FAKECUDA_DEVICES=2"),
        ARGS("run", "--budget", "8GiB", "--device-budget", "1=4GiB", "--", "sh", "-c", SHOW));
    cr_expect_eq(r.status, 0, "%s", r.err);
    cr_expect_not_null(strstr(r.out, "|8GiB,1=4GiB\n"), "%s", r.out);
    cli_run_clean(&r, ENV("FAKECUDA_DEVICES=2"),
        ARGS("run", "--device-budget", "1=4GiB", "--", "sh", "-c", SHOW));
    cr_expect_eq(r.status, 0, "%s", r.err);
    cr_expect_not_null(strstr(r.out, "|1=4GiB\n"), "%s", r.out);
    cli_run_clean(&r, NULL,
        ARGS("run", "--budget", "8GiB,1=2GiB", "--device-budget", "1=4GiB", "--", "true"));
    expect_usage_error(&r, "device given twice");
}

Test(cli, run_sets_every_table_flag_in_the_environment)
{
    cli_result_t r;
    cli_run_clean(&r, NULL,
        ARGS("run", "--managed", "deny", "--pool=cache", "--log", "info", "--on-bad-pointer",
             "reject", "--shared", "job-1", "--audit", "/tmp/vg-audit.log", "--libcuda",
             "libcuda.so.1", "--",
             "sh", "-c",
             "echo \"$VRAMGUARD_MANAGED $VRAMGUARD_POOL $VRAMGUARD_LOG "
             "$VRAMGUARD_ON_BAD_POINTER $VRAMGUARD_SHARED $VRAMGUARD_AUDIT $VRAMGUARD_LIBCUDA\""));
    cr_expect_eq(r.status, 0, "%s", r.err);
    cr_expect_str_eq(r.out, "deny cache info reject job-1 /tmp/vg-audit.log libcuda.so.1\n");
    unlink("/tmp/vg-audit.log"); /* run creates the log before CMD starts */
}

Test(cli, run_exits_with_the_commands_status)
{
    cli_result_t r;
    cli_run_clean(&r, NULL, ARGS("run", "--", "sh", "-c", "exit 7"));
    cr_expect_eq(r.status, 7, "%s", r.err);
    cli_run_clean(&r, NULL, ARGS("run", "--budget", "1GiB", "sh", "-c", "exit 3"));
    cr_expect_eq(r.status, 3, "the command may follow the options without --");
}

Test(cli, run_of_a_missing_command_exits_127_like_a_shell)
{
    cli_result_t r;
    cli_run_clean(&r, NULL, ARGS("run", "--", "vg-no-such-command"));
    cr_expect_eq(r.status, 127, "%s", r.err);
    cr_expect_not_null(strstr(r.err, "vramguard: cannot run 'vg-no-such-command': "), "%s",
                       r.err);
    cr_expect_eq(lines(r.err), 1, "%s", r.err);
    cli_run_clean(&r, NULL, ARGS("run", "--", "/dev/null"));
    cr_expect_eq(r.status, 126, "not executable: %s", r.err);
}

Test(cli, run_holds_a_cudart_client_to_the_budget)
{
    cli_result_t r;
    char client[4096];
    snprintf(client, sizeof client, "%s/clients/client_cudart", build_dir());
    cli_run_clean(&r, NULL, ARGS("run", "--budget", "64MiB", "--", client, "plain", "16MiB"));
    cr_expect_eq(r.status, 0, "%s", r.err);
    cr_expect_not_null(strstr(r.out, "path=plain allocs=4 "), "%s", r.out);
    cr_expect_not_null(strstr(r.out, " rcname=CUDA_ERROR_OUT_OF_MEMORY"), "%s", r.out);
}

/* ---------------------------------------------------------------- check */

Test(cli, check_lists_the_test_device_and_the_self_test_passes)
{
    cli_result_t r;
    cli_run_clean(&r, NULL, ARGS("check"));
    cr_expect_eq(r.status, 0, "stdout: %s\nstderr: %s", r.out, r.err);
    cr_expect_not_null(strstr(r.out, "CUDA 13.0"), "%s", r.out);
    cr_expect_not_null(strstr(r.out, "devices:   1\n"), "%s", r.out);
    cr_expect_not_null(strstr(r.out, " GPU-"), "%s", r.out);
    cr_expect_not_null(strstr(r.out, "80.00 GiB"), "%s", r.out);
    cr_expect_not_null(strstr(r.out, "self-test: PASS (the shim refused 128.00 MiB over a "
                                     "64.00 MiB budget via cuGetProcAddress)\n"),
                       "%s", r.out);
}

Test(cli, check_json_reports_the_same)
{
    cli_result_t r;
    cli_run_clean(&r, NULL, ARGS("check", "--json"));
    cr_expect_eq(r.status, 0, "stdout: %s\nstderr: %s", r.out, r.err);
    cr_expect_not_null(strstr(r.out, "\"ok\": true"), "%s", r.out);
    cr_expect_not_null(strstr(r.out, "\"version\": \"13.0\""), "%s", r.out);
    cr_expect_not_null(strstr(r.out, "\"uuid\": \"GPU-"), "%s", r.out);
    cr_expect_not_null(strstr(r.out, "\"total_bytes\": 85899345920"), "%s", r.out);
    cr_expect_not_null(strstr(r.out, "\"result\": \"PASS\""), "%s", r.out);
}

Test(cli, check_without_a_driver_says_why_and_exits_1)
{
    cli_result_t r;
    cli_run_clean(&r, ENV("VRAMGUARD_LIBCUDA=/nonexistent/libcuda.so.1"), ARGS("check"));
    cr_expect_eq(r.status, 1, "%s", r.out);
    cr_expect_not_null(strstr(r.out, "/nonexistent/libcuda.so.1"), "%s", r.out);
    cr_expect_not_null(strstr(r.out, "self-test: SKIP"), "%s", r.out);
}

/* vramguard handles devices 0-63: on a machine with more, check lists
 * those and says that the list is cut, with the driver's count. */
Test(cli, check_says_when_it_lists_only_the_first_64_devices)
{
    cli_result_t r;
    cli_run_clean(&r, ENV("FAKECUDA_DEVICES=70", "FAKECUDA_TOTAL_BYTES=1073741824"), ARGS("check"));
    cr_expect_not_null(strstr(r.out, "devices:   70 (the first 64 listed: vramguard handles "
                                     "devices 0-63 only)\n"),
                       "%s", r.out);
    cr_expect_not_null(strstr(r.out, "\n   63  "), "%s", r.out);
    cr_expect_null(strstr(r.out, "\n   64  "), "%s", r.out);
    cli_run_clean(&r, ENV("FAKECUDA_DEVICES=70", "FAKECUDA_TOTAL_BYTES=1073741824"),
                  ARGS("check", "--json"));
    cr_expect_not_null(strstr(r.out, "\"device_count\": 70, \"devices\": ["), "%s", r.out);
    cr_expect_eq(count_of(r.out, "\"uuid\""), 64, "%s", r.out);
    cli_run_clean(&r, ENV("FAKECUDA_DEVICES=2"), ARGS("check"));
    cr_expect_not_null(strstr(r.out, "devices:   2\n"), "%s", r.out);
}

/* A bad VRAMGUARD_* setting in the caller's environment is reported as
 * such (exit 1), not blamed on the driver: the driver, the devices and the
 * self-test are still checked. */
Test(cli, check_reports_a_bad_setting_apart_and_checks_the_rest)
{
    cli_result_t r;
    cli_run_clean(&r, ENV("VRAMGUARD_BUDGET=junk"), ARGS("check"));
    cr_expect_eq(r.status, 1, "%s", r.out);
    cr_expect_not_null(strstr(r.out, "settings:  bad: VRAMGUARD_BUDGET='junk'"), "%s", r.out);
    cr_expect_null(strstr(r.out, "not usable"), "%s", r.out);
    cr_expect_not_null(strstr(r.out, "devices:   1\n"), "%s", r.out);
    cr_expect_not_null(strstr(r.out, "self-test: PASS"), "%s", r.out);
    cli_run_clean(&r, ENV("VRAMGUARD_SHARED=bad name"), ARGS("check", "--json"));
    cr_expect_eq(r.status, 1, "%s", r.out);
    cr_expect_not_null(strstr(r.out, "{\"settings\": {\"ok\": false, \"error\": \"VRAMGUARD_SHARED="),
                       "%s", r.out);
    cr_expect_not_null(strstr(r.out, "\"driver\": {\"ok\": true"), "%s", r.out);
}

/* The bad setting is echoed into the JSON; a value that is not UTF-8 must
 * still give valid JSON (escaped, never the raw byte). */
Test(cli, check_json_escapes_a_setting_that_is_not_utf8)
{
    cli_result_t r;
    cli_run_clean(&r, ENV("VRAMGUARD_BUDGET=\xff"), ARGS("check", "--json"));
    cr_expect_eq(r.status, 1, "%s", r.out);
    cr_expect_null(strchr(r.out, 0xff), "a raw 0xff byte in the JSON: %s", r.out);
    cr_expect_not_null(strstr(r.out, "\"error\": \"VRAMGUARD_BUDGET='\\u00ff'"), "%s", r.out);
}

/* Copies build/NAME to DIR/NAME (mode 0755). */
static void copy_file(const char *name, const char *dir)
{
    char from[4096], to[4096], cmd[8400];
    snprintf(from, sizeof from, "%s/%s", build_dir(), name);
    snprintf(to, sizeof to, "%s/%s", dir, name);
    int n = snprintf(cmd, sizeof cmd, "cp '%.4000s' '%.2000s' && chmod 755 '%.2000s'", from, to, to);
    cr_assert(n > 0 && (size_t)n < sizeof cmd);
    cr_assert_eq(system(cmd), 0, "%s", cmd);
}

/* An installed tree (PREFIX/bin/vramguard beside PREFIX/lib/the shim),
 * moved anywhere: run finds the shim through ../lib from itself. */
Test(cli, an_installed_tree_finds_its_shim_in_the_sibling_lib)
{
    char root[] = "/tmp/vg-cli-prefix-XXXXXX", bin[4200], lib[4200], exe[4300], want[PATH_MAX];
    cr_assert_not_null(mkdtemp(root));
    snprintf(bin, sizeof bin, "%s/bin", root);
    snprintf(lib, sizeof lib, "%s/lib", root);
    cr_assert_eq(mkdir(bin, 0755), 0);
    cr_assert_eq(mkdir(lib, 0755), 0);
    copy_file("vramguard", bin);
    copy_file("libvramguard-preload.so", lib);
    snprintf(exe, sizeof exe, "%s/vramguard", bin);
    char want_path[4300];
    snprintf(want_path, sizeof want_path, "%s/libvramguard-preload.so", lib);
    cr_assert_not_null(realpath(want_path, want));

    static const char *const drop[] = {"LD_PRELOAD=", "VRAMGUARD_", NULL};
    const char *add[] = {asan_entry(""), NULL};
    char **env = env_make(drop, add);
    free((char *)add[0]);
    char *argv[] = {exe, "run", "--", "sh", "-c", "echo \"$LD_PRELOAD\"", NULL};
    static char out[4096], err[4096];
    int st = child_run(argv, env, &(child_out_t){out, sizeof out, err, sizeof err});
    env_free(env);
    cr_expect_eq(st, 0, "exit %d: %s", st, err);
    out[strcspn(out, "\n")] = '\0';
    cr_expect_str_eq(out, want);

    char cmd[4300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    cr_expect_eq(system(cmd), 0);
}

/* A binary replaced or removed while it runs (an upgrade, a rebuild):
 * /proc/self/exe then reads "PATH (deleted)", a file that is not there.
 * The self-test must still start the running binary, and find the shim
 * beside PATH. The binary is started through an open descriptor after its
 * file is unlinked. */
Test(cli, check_self_test_runs_from_a_binary_deleted_while_it_runs)
{
    char dir[] = "/tmp/vg-cli-deleted-XXXXXX", exe[4300], fdpath[64];
    cr_assert_not_null(mkdtemp(dir));
    copy_file("vramguard", dir);
    copy_file("libvramguard-preload.so", dir);
    snprintf(exe, sizeof exe, "%s/vramguard", dir);
    int fd = open(exe, O_RDONLY | O_CLOEXEC);
    cr_assert_geq(fd, 0, "%s: %s", exe, strerror(errno));
    cr_assert_eq(unlink(exe), 0);
    snprintf(fdpath, sizeof fdpath, "/proc/self/fd/%d", fd);

    static const char *const drop[] = {"LD_PRELOAD=", "VRAMGUARD_", "CUDA_DEVICE_MEMORY_",
                                       "FAKECUDA_", "ASAN_OPTIONS=", NULL};
    const char *add[] = {asan_entry(""), NULL};
    char **env = env_make(drop, add);
    free((char *)add[0]);
    char *argv[] = {fdpath, "check", NULL};
    static char out[8192], err[4096];
    int st = child_run(argv, env, &(child_out_t){out, sizeof out, err, sizeof err});
    env_free(env);
    close(fd);
    cr_expect_eq(st, 0, "exit %d\nstdout: %s\nstderr: %s", st, out, err);
    cr_expect_not_null(strstr(out, "self-test: PASS"), "%s", out);
    cr_expect_null(strstr(out, "(deleted)"), "%s", out);

    char cmd[4300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_expect_eq(system(cmd), 0);
}

/* Reading the self-test's output can fail (poll, read): check must say
 * so, not report that the self-test ran out of time. Every poll() of the
 * check process fails here (tests/interpose/poll_fails.c). */
Test(cli, check_reports_a_failed_poll_as_such_not_as_a_timeout)
{
    char preload[4200];
    snprintf(preload, sizeof preload, "LD_PRELOAD=%s/interpose/poll_fails.so", build_dir());
    cli_result_t r;
    cli_run_clean(&r, ENV(preload), ARGS("check"));
    cr_expect_eq(r.status, 1, "stdout: %s\nstderr: %s", r.out, r.err);
    cr_expect_not_null(strstr(r.out, "self-test: FAIL (cannot read the self-test's output: "
                                     "Cannot allocate memory)\n"),
                       "%s", r.out);
    cr_expect_null(strstr(r.out, "did not finish"), "%s", r.out);
}

/* The driver named by VRAMGUARD_LIBCUDA, not on the library path: the
 * self-test must load the same one `check` listed. */
Test(cli, check_self_test_uses_the_driver_vramguard_libcuda_names)
{
    cli_result_t r;
    char lib[4200], path[4300];
    snprintf(lib, sizeof lib, "VRAMGUARD_LIBCUDA=%s/fakecuda/libcuda.so.1", build_dir());
    snprintf(path, sizeof path, "LD_LIBRARY_PATH=%s/fakenvml", build_dir());
    cli_run_clean(&r, ENV(lib, path), ARGS("check"));
    cr_expect_eq(r.status, 0, "stdout: %s\nstderr: %s", r.out, r.err);
    cr_expect_not_null(strstr(r.out, "self-test: PASS"), "%s", r.out);
}

/* A HAMi pod names its shared region in CUDA_DEVICE_MEMORY_SHARED_CACHE.
 * The self-test's 64 MiB budget must never reach that region: a process
 * with a budget lowers a shared limit for every process using it, so
 * `check` would leave the pod with 64 MiB. */
Test(cli, check_self_test_stays_out_of_a_hami_shared_region)
{
    char dir[] = "/tmp/vg-cli-hami-XXXXXX", region[4200], set[4300];
    cr_assert_not_null(mkdtemp(dir));
    snprintf(region, sizeof region, "%s/vgpu.cache", dir);
    snprintf(set, sizeof set, "CUDA_DEVICE_MEMORY_SHARED_CACHE=%s", region);
    cli_result_t r;
    cli_run_clean(&r, ENV(set), ARGS("check"));
    cr_expect_eq(r.status, 0, "stdout: %s\nstderr: %s", r.out, r.err);
    cr_expect_not_null(strstr(r.out, "self-test: PASS"), "%s", r.out);
    struct stat st;
    cr_expect_neq(stat(region, &st), 0, "the self-test made or joined %s", region);
    unlink(region);
    rmdir(dir);
}

/* The caller's audit log records the caller's processes: `check` itself
 * (whose engine lists the devices) and its self-test child must write
 * nothing into it, even when the setting is valid. */
Test(cli, check_writes_nothing_into_the_callers_audit_log)
{
    char dir[] = "/tmp/vg-cli-audit-XXXXXX", log[4200], set[4300];
    cr_assert_not_null(mkdtemp(dir));
    snprintf(log, sizeof log, "%s/caller.jsonl", dir);
    snprintf(set, sizeof set, "VRAMGUARD_AUDIT=%s", log);
    cli_result_t r;
    cli_run_clean(&r, ENV(set), ARGS("check"));
    cr_expect_eq(r.status, 0, "stdout: %s\nstderr: %s", r.out, r.err);
    cr_expect_not_null(strstr(r.out, "self-test: PASS"), "%s", r.out);
    struct stat st;
    cr_expect_neq(stat(log, &st), 0, "check wrote %s", log);
    unlink(log);
    rmdir(dir);
}

/* ------------------------------------------------------ the manual page */

/* Roff writes '-' as "\-": the page's text with those undone. */
static char *man_text(void)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/vramguard.1", build_dir());
    char *t = read_whole_file(path);
    cr_assert_not_null(t, "no %s (make builds it)", path);
    char *w = t;
    for (const char *r = t; *r; r++)
        if (!(r[0] == '\\' && r[1] == '-'))
            *w++ = *r;
    *w = '\0';
    return t;
}

static void add_setting(const vg__setting_info_t *info, void *ctx)
{
    const char *man = ctx;
    cr_expect_not_null(strstr(man, info->env), "vramguard.1 lacks %s", info->env);
    if (info->flag)
        cr_expect_not_null(strstr(man, info->flag), "vramguard.1 lacks %s", info->flag);
}

Test(cli, the_manual_covers_every_command_setting_and_exit_status)
{
    char *man = man_text();
    vg__settings_describe(add_setting, man);
    cli_result_t r;
    cli_run_clean(&r, NULL, ARGS("--help"));
    for (const char *line = strstr(r.out, "Commands:\n"); line && (line = strchr(line, '\n'));) {
        char word[32];
        line++;
        if (strncmp(line, "  ", 2) != 0 || sscanf(line, "  %31s", word) != 1)
            break;
        char want[64];
        snprintf(want, sizeof want, ".B vramguard %s", word);
        cr_expect_not_null(strstr(man, want), "vramguard.1 lacks the command %s", word);
    }
    for (const char *const *s = ARGS(".B 0\n", ".B 1\n", ".B 2\n", ".B 125\n", ".B 126\n",
                                     ".B 127\n", "--per-process", "--device-budget");
         *s; s++)
        cr_expect_not_null(strstr(man, *s), "vramguard.1 lacks %s", *s);
    free(man);
}

/* The bash completion that make install ships loads and registers itself. */
Test(cli, the_bash_completion_loads)
{
    char dir[4096], cmd[8400];
    const char *slash = strrchr(__FILE__, '/');
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - __FILE__) : 1, slash ? __FILE__ : ".");
    snprintf(cmd, sizeof cmd,
             "bash -c '. \"%s/../completion/vramguard.bash\" && complete -p vramguard' >/dev/null",
             dir);
    cr_expect_eq(system(cmd), 0, "%s", cmd);
}
