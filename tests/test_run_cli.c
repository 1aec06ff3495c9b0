/*
 * test_run_cli.c — `vramguard run` over a process tree and its checks before
 * the command starts: one budget for the command and every process it
 * starts (a private region, removed afterwards), nested runs that can only
 * lower it, signals passed on, budgets that name no device, option values
 * that are really options, and the audit log opened up front.
 *
 * Each test starts build/vramguard as a child (tests/clientrun.h); the tree
 * is tests/clients/client_tree, whose children each run under the shim with
 * their own test driver, so the tree's total is read from their refusals.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clientrun.h"

#define MIB400 "419430400"

/* Runs build/vramguard with args in the runner's environment minus the
 * settings the test decides, plus `set` (NULL-terminated, may be NULL). */

static const char *exe(const char *name)
{
    static char path[8][4200];
    static int next;
    char *p = path[next++ % 8];
    snprintf(p, 4200, "%s/%s", build_dir(), name);
    return p;
}

/* The region client_tree reported, which must be gone now. */
static void expect_region_gone(const char *out)
{
    const char *s = strstr(out, "shared=run-");
    cr_assert_not_null(s, "%s", out);
    char name[128], path[256];
    sscanf(s + 7, "%127s", name);
    snprintf(path, sizeof path, "/dev/shm/vramguard.%s", name);
    cr_expect_neq(access(path, F_OK), 0, "%s is left behind", path);
    unlink(path);
}

/* ------------------------------------------------------ the run's tree */

Test(run_tree, two_children_share_one_budget_and_the_region_goes_away)
{
    cli_result_t r;
    cli_run_clean(&r, NULL, ARGS("run", "--budget", "1GiB", "--", exe("clients/client_tree"), "2", MIB400));
    cr_expect_eq(r.status, 0, "%s", r.err);
    /* 4 x 400 MiB asked, 1 GiB for the tree: only 2 fit, whatever the order. */
    cr_expect_not_null(strstr(r.out, "ok=2 refused=2 other=0 shared=run-"), "%s", r.out);
    cr_expect_not_null(strstr(r.out, " region=yes"), "%s", r.out);
    expect_region_gone(r.out);
}

/* A process the command leaves behind outlives the run and its region: it
 * must not start an unlimited region of its own under the same name, but
 * refuse (fail closed). It asks for more than the run's budget. */
Test(run_tree, a_process_that_outlives_the_run_is_refused_not_unlimited)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "echo \"shared=$VRAMGUARD_SHARED\"; (sleep 0.3; LD_PRELOAD=%s/libvramguard-preload.so "
             "LD_LIBRARY_PATH=%s/fakecuda exec %s try 2000000000) &",
             build_dir(), build_dir(), exe("clients/client_shared"));
    cli_result_t r;
    cli_run_clean(&r, NULL, ARGS("run", "--budget", "1GiB", "--", "sh", "-c", cmd));
    cr_expect_eq(r.status, 0, "%s", r.err);
    cr_expect_not_null(strstr(r.out, "rc=2 "), "the late process was not refused: %s", r.out);
    cr_expect_not_null(strstr(r.err, "VRAMGUARD_SHARED_CREATE=0"), "no reason given: %s", r.err);
    expect_region_gone(r.out);
}

Test(run_tree, per_process_gives_each_process_its_own_budget)
{
    cli_result_t r;
    cli_run_clean(&r, NULL,
        ARGS("run", "--per-process", "--budget", "1GiB", "--", exe("clients/client_tree"), "2",
             MIB400));
    cr_expect_eq(r.status, 0, "%s", r.err);
    cr_expect_not_null(strstr(r.out, "ok=4 refused=0 other=0 shared= "), "%s", r.out);
}

Test(run_tree, the_tree_gets_the_region_and_no_budget_of_its_own)
{
    cli_result_t r;
    cli_run_clean(&r, NULL,
        ARGS("run", "--budget", "1GiB", "--", "sh", "-c",
             "echo \"shared=$VRAMGUARD_SHARED budget=$VRAMGUARD_BUDGET\"; exit 5"));
    cr_expect_eq(r.status, 5, "the command's status: %s", r.err);
    cr_expect_not_null(strstr(r.out, "shared=run-"), "%s", r.out);
    cr_expect_not_null(strstr(r.out, " budget=\n"), "the budget lives in the region: %s", r.out);
    expect_region_gone(r.out);
}

Test(run_tree, a_signal_to_vramguard_reaches_the_command_and_the_region_goes_away)
{
    cli_result_t r;
    cli_run_clean(&r, NULL,
        ARGS("run", "--budget", "1GiB", "--", "sh", "-c",
             "echo \"shared=$VRAMGUARD_SHARED\"; kill -TERM $PPID; exec sleep 30"));
    cr_expect_eq(r.status, 128 + SIGTERM, "ends like the command: %d %s", r.status, r.err);
    expect_region_gone(r.out);
}

Test(run_tree, a_nested_run_may_lower_the_budget_but_never_raise_it)
{
    cli_result_t r;
    cli_run_clean(&r, NULL,
        ARGS("run", "--budget", "1GiB", "--", exe("vramguard"), "run", "--budget", "2GiB", "--",
             "sh", "-c", "echo ran"));
    cr_expect_eq(r.status, 2, "%s", r.err);
    cr_expect_eq(lines(r.err), 1, "%s", r.err);
    cr_expect_not_null(strstr(r.err, "more than the enclosing budget"), "%s", r.err);
    cr_expect_str_eq(r.out, "");
    cli_run_clean(&r, NULL,
        ARGS("run", "--budget", "1GiB", "--", exe("vramguard"), "run", "--budget", "512MiB",
             "--", exe("clients/client_tree"), "2", MIB400));
    cr_expect_eq(r.status, 0, "%s", r.err);
    cr_expect_not_null(strstr(r.out, "ok=1 refused=3 other=0 shared=run-"), "%s", r.out);
    expect_region_gone(r.out);
    cli_run_clean(&r, ENV("VRAMGUARD_BUDGET=1GiB"),
        ARGS("run", "--per-process", "--budget", "2GiB", "--", "true"));
    cr_expect_eq(r.status, 2, "an inherited budget is the enclosing one: %s", r.err);
}

/* A nested run that stops before its command starts (its audit log cannot
 * be opened) leaves the enclosing budget as it was: 256 MiB still fit the
 * outer 1 GiB afterwards, not the 100 MiB the failed run asked for. */
Test(run_tree, a_nested_run_that_fails_to_start_leaves_the_budget_alone)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "%s run --budget 100MiB --audit /nonexistent-dir/x.jsonl -- true; echo nested=$?; "
             "LD_PRELOAD=%s/libvramguard-preload.so LD_LIBRARY_PATH=%s/fakecuda "
             "%s plain 256MiB 1",
             exe("vramguard"), build_dir(), build_dir(), exe("clients/client_linked"));
    cli_result_t r;
    cli_run_clean(&r, NULL, ARGS("run", "--budget", "1GiB", "--", "sh", "-c", cmd));
    cr_expect_eq(r.status, 0, "%s", r.err);
    cr_expect_not_null(strstr(r.out, "nested=2"), "%s %s", r.out, r.err);
    cr_expect_not_null(strstr(r.out, "path=plain allocs=1 "), "the failed nested run lowered "
                       "the budget: %s %s", r.out, r.err);
}

/* Three processes of one run, 2 x 128 MiB each, logged to one audit log:
 * the log's peak is the tree's (768 MiB), not the sum of the region totals
 * each process saw (which read 1.5 GiB, "150% of budget"). */
Test(run_tree, an_audited_tree_shows_the_trees_peak_not_a_sum_of_totals)
{
    char log[] = "/tmp/vg-tree-audit-XXXXXX";
    int fd = mkstemp(log);
    cr_assert_geq(fd, 0);
    close(fd);
    unlink(log);
    cli_result_t r;
    cli_run_clean(&r, NULL, ARGS("run", "--budget", "1GiB", "--audit", log, "--",
                                 exe("clients/client_tree"), "3", "134217728"));
    cr_expect_eq(r.status, 0, "%s", r.err);
    cr_expect_not_null(strstr(r.out, "ok=6 refused=0"), "%s", r.out);
    expect_region_gone(r.out);
    cli_run_clean(&r, NULL, ARGS("audit", log));
    cr_expect_eq(r.status, 0, "%s", r.err);
    cr_expect_not_null(strstr(r.out, "768.00 MiB   1.00 GiB     75.0%"), "%s", r.out);
    unlink(log);
}

/* ------------------------------------------------ budgets name devices */

Test(run_checks, a_budget_for_a_device_that_does_not_exist_is_an_error)
{
    cli_result_t r;
    cli_run_clean(&r, NULL, ARGS("run", "--budget", "5=1GiB", "--", "sh", "-c", "echo ran"));
    cr_expect_eq(r.status, 2, "%s", r.err);
    cr_expect_eq(lines(r.err), 1, "%s", r.err);
    cr_expect_not_null(strstr(r.err, "'5'"), "%s", r.err);
    cr_expect_str_eq(r.out, "");
    cli_run_clean(&r, NULL,
        ARGS("run", "--device-budget", "GPU-00000000-0000-0000-0000-00000000beef=1GiB", "--",
             "sh", "-c", "echo ran"));
    cr_expect_eq(r.status, 2, "%s", r.err);
    cr_expect_not_null(strstr(r.err, "'GPU-00000000-0000-0000-0000-00000000beef'"), "%s", r.err);
    cr_expect_str_eq(r.out, "");
}

Test(run_checks, a_budget_naming_some_missing_devices_says_which)
{
    cli_result_t r;
    cli_run_clean(&r, ENV("FAKECUDA_DEVICES=2"),
        ARGS("run", "--budget", "0=1GiB,7=1GiB", "--", "sh", "-c", "echo ran"));
    cr_expect_eq(r.status, 0, "%s", r.err);
    cr_expect_str_eq(r.out, "ran\n");
    cr_expect_not_null(strstr(r.err, "'7'"), "%s", r.err);
    cr_expect_null(strstr(r.err, "'0'"), "%s", r.err);
}

/* CUDA_VISIBLE_DEVICES empty, or naming no real device, leaves the driver
 * showing none (cuInit says CUDA_ERROR_NO_DEVICE, as the test driver does
 * with no devices): a budget entry then names a device that is not visible,
 * an error like any other, not a driver that could not be asked. */
Test(run_checks, a_budget_entry_with_no_device_visible_is_an_error)
{
    cli_result_t r;
    cli_run_clean(&r, ENV("FAKECUDA_DEVICES=0"),
        ARGS("run", "--budget", "0=1GiB", "--", "sh", "-c", "echo ran"));
    cr_expect_eq(r.status, 2, "%s", r.err);
    cr_expect_eq(lines(r.err), 1, "%s", r.err);
    cr_expect_not_null(strstr(r.err, "'0' is not among the 0 devices"), "%s", r.err);
    cr_expect_str_eq(r.out, "");
    cli_run_clean(&r, ENV("FAKECUDA_DEVICES=0"),
        ARGS("run", "--budget", "1GiB", "--", "sh", "-c", "echo ran"));
    cr_expect_eq(r.status, 0, "a budget for every device names none: %s", r.err);
    cr_expect_str_eq(r.out, "ran\n");
}

/* -------------------------------------------------- option values */

Test(run_checks, an_option_value_is_never_another_option_or_the_separator)
{
    cli_result_t r;
    cli_run_clean(&r, NULL, ARGS("run", "--audit", "--", "true"));
    cr_expect_eq(r.status, 2, "%s", r.err);
    cr_expect_not_null(strstr(r.err, "'--audit' needs a value"), "%s", r.err);
    cr_expect_neq(access("--", F_OK), 0, "no file named --");
    cli_run_clean(&r, NULL, ARGS("run", "--audit", "--budget", "1GiB", "--", "env"));
    cr_expect_eq(r.status, 2, "%s", r.err);
    cr_expect_not_null(strstr(r.err, "'--audit' needs a value"), "%s", r.err);
    cr_expect_str_eq(r.out, "");
}

Test(run_checks, an_audit_log_that_cannot_be_created_stops_the_run_before_it_starts)
{
    cli_result_t r;
    cli_run_clean(&r, NULL,
        ARGS("run", "--audit", "/nonexistent/dir/x.jsonl", "--", "sh", "-c", "echo ran"));
    cr_expect_eq(r.status, 2, "%s", r.err);
    cr_expect_eq(lines(r.err), 1, "%s", r.err);
    cr_expect_not_null(strstr(r.err, "/nonexistent/dir/x.jsonl"), "%s", r.err);
    cr_expect_str_eq(r.out, "");
}

/* A log the shim would refuse (writable by others) stops the run here with
 * the shim's reason, instead of a command whose every allocation fails. */
Test(run_checks, an_audit_log_the_shim_would_refuse_stops_the_run)
{
    char log[] = "/tmp/vg-open-log-XXXXXX";
    int fd = mkstemp(log);
    cr_assert_geq(fd, 0);
    close(fd);
    cr_assert_eq(chmod(log, 0666), 0);
    cli_result_t r;
    cli_run_clean(&r, NULL, ARGS("run", "--audit", log, "--", "sh", "-c", "echo ran"));
    cr_expect_eq(r.status, 2, "%s", r.err);
    cr_expect_eq(lines(r.err), 1, "%s", r.err);
    cr_expect_not_null(strstr(r.err, "writable by group or others"), "%s", r.err);
    cr_expect_str_eq(r.out, "");
    unlink(log);
}

/* A pipe as the log: the check must not open it (closing it would end the
 * reader, and the shim's open would then wait for one forever). */
Test(run_checks, an_audit_pipe_is_not_opened_by_the_check, .timeout = 20)
{
    char dir[] = "/tmp/vg-fifo-XXXXXX", fifo[64], cmd[1024];
    cr_assert_not_null(mkdtemp(dir));
    snprintf(fifo, sizeof fifo, "%s/log", dir);
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    snprintf(cmd, sizeof cmd, "LD_PRELOAD=%s/libvramguard-preload.so LD_LIBRARY_PATH=%s/fakecuda "
             "%s plain 1MiB 1", build_dir(), build_dir(), exe("clients/client_linked"));
    pid_t reader = fork();
    cr_assert_geq(reader, 0);
    if (reader == 0) { /* reads the pipe to its end, as a log collector would */
        int in = open(fifo, O_RDONLY);
        char buf[4096];
        while (in >= 0 && read(in, buf, sizeof buf) > 0)
            ;
        _exit(0);
    }
    cli_result_t r;
    cli_run_clean(&r, NULL, ARGS("run", "--audit", fifo, "--", "sh", "-c", cmd));
    cr_expect_eq(r.status, 0, "%s", r.err);
    cr_expect_not_null(strstr(r.out, "path=plain allocs=1 "), "%s %s", r.out, r.err);
    int st;
    waitpid(reader, &st, 0);
    unlink(fifo);
    rmdir(dir);
}

Test(run_checks, a_relative_audit_path_is_made_absolute)
{
    char dir[] = "/tmp/vg-run-audit-XXXXXX", want[300], file[256];
    cr_assert_not_null(mkdtemp(dir));
    cr_assert_eq(chdir(dir), 0); /* this test's own process */
    cli_result_t r;
    cli_run_clean(&r, NULL, ARGS("run", "--audit", "x.jsonl", "--", "sh", "-c", "echo $VRAMGUARD_AUDIT"));
    cr_expect_eq(r.status, 0, "%s", r.err);
    snprintf(file, sizeof file, "%s/x.jsonl", dir);
    snprintf(want, sizeof want, "%s\n", file);
    cr_expect_str_eq(r.out, want);
    cr_expect_eq(access(file, F_OK), 0, "created before the command ran");
    unlink(file);
    rmdir(dir);
}

/* ---------------------------------------------------- the README's example */

Test(run_tree, the_readmes_c_example_stops_at_the_budget)
{
    cli_result_t r;
    cli_run_clean(&r, NULL, ARGS("run", "--budget", "1GiB", "--", exe("alloc-until-refused")));
    cr_expect_eq(r.status, 0, "%s", r.err);
    cr_expect_not_null(strstr(r.out, "device 0 as this process sees it: 1.00 GiB total"), "%s",
                       r.out);
    cr_expect_not_null(strstr(r.out, "refused after 1.00 GiB in 256 MiB steps (CUresult 2, "
                                     "CUDA_ERROR_OUT_OF_MEMORY)"),
                       "%s", r.out);
}

/* client_cudart's 16 MiB plain allocation under the shim alone (no CLI),
 * with `budget` ("NAME=value") as the only budget setting: its stdout and
 * stderr into out and err. */
static void shim_alone(const char *budget, char *out, char *err, size_t len)
{
    static const char *const drop[] = {"LD_PRELOAD=", "VRAMGUARD_", "CUDA_DEVICE_MEMORY_",
                                       "FAKECUDA_", "ASAN_OPTIONS=", NULL};
    char pre[4200];
    snprintf(pre, sizeof pre, "LD_PRELOAD=%s/libvramguard-preload.so", build_dir());
    char *asan = asan_entry("");
    char **env = env_make(drop, ENV(pre, asan, budget));
    free(asan);
    char *argv[] = {(char *)exe("clients/client_cudart"), "plain", "16MiB", NULL};
    int st = child_run(argv, env, &(child_out_t){out, len, err, len});
    env_free(env);
    cr_expect_eq(st, 0, "%s", err);
}

/* Without the CLI (LD_PRELOAD and VRAMGUARD_BUDGET set by hand), a budget
 * whose entries name no device the driver shows fails closed. */
Test(run_checks, the_shim_alone_fails_closed_on_a_budget_for_no_visible_device)
{
    static char out[8192], err[8192];
    shim_alone("VRAMGUARD_BUDGET=5=1GiB", out, err, sizeof out);
    cr_expect_not_null(strstr(out, "path=plain allocs=0 "), "%s", out);
    cr_expect_not_null(strstr(err, "names no device the driver shows"), "%s", err);
}

/* The same through HAMi's alias: the line names the variable that was set,
 * not VRAMGUARD_BUDGET, which was not. */
Test(run_checks, a_hami_budget_for_no_visible_device_is_named_in_the_refusal)
{
    static char out[8192], err[8192];
    shim_alone("CUDA_DEVICE_MEMORY_LIMIT_5=1g", out, err, sizeof out);
    cr_expect_not_null(strstr(out, "path=plain allocs=0 "), "%s", out);
    cr_expect_not_null(strstr(err, "CUDA_DEVICE_MEMORY_LIMIT_<i> names no device"), "%s", err);
    cr_expect_null(strstr(err, "VRAMGUARD_BUDGET"), "%s", err);
}
