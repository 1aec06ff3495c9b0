/*
 * test_replay_cli.c — `vramguard replay` seen from outside: each test
 * starts build/vramguard as a child on hand-written audit logs
 * (tests/data/audit/, schema v1 of docs/audit-log.md) and reads its exit
 * status, stdout and stderr. The replay runs over the test driver.
 * `vramguard audit` is test_audit_cli.c's.
 *
 * Needs VG_TEST_BUILD (tests/run-tests.sh exports it) and the repository
 * root as the working folder (for the fixtures).
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "auditcli.h"

/* 768 MiB on device 0 and 768 MiB on device 1, each under its own 1 GiB:
 * the replay, which has device 0 and its budget only, must not fold the
 * second onto device 0 and invent a refusal; it says what it left out. */
Test(replay_cli, replay_leaves_other_devices_out_and_says_so)
{
    cli_result_t r;
    cli(&r, ARGS("replay", DATA "replay_two_devices.jsonl"));
    cr_assert_eq(r.status, 0, "%s", r.err);
    EXPECT_IN(r.out, "allocations: 1 of 1 succeeded, 0 refused");
    EXPECT_IN(r.out, "first refusal: none\n");
    EXPECT_IN(r.out, "skipped: 2 events on other devices than 0");
    cli(&r, ARGS("replay", "--json", DATA "replay_two_devices.jsonl"));
    EXPECT_IN(r.out, "\"skipped_other_devices\":2,");
}

Test(replay_cli, replay_reproduces_a_refusal_under_a_smaller_budget)
{
    cli_result_t r;
    cli(&r, ARGS("replay", "--budget", "1GiB", DATA "replay_3x400MiB.jsonl"));
    cr_assert_eq(r.status, 0, "%s", r.err);
    EXPECT_IN(r.out, "pid 900 (./three) on device 0, budget 1.00 GiB\n");
    EXPECT_IN(r.out, "allocations: 2 of 3 succeeded, 1 refused");
    EXPECT_IN(r.out, "first refusal: allocation 3 (seq 3, cuMemAlloc_v2, 400.00 MiB) with "
                     "800.00 MiB in use: request exceeds the memory budget\n");
    EXPECT_IN(r.out, "frees: 2 replayed, 1 skipped");
    EXPECT_IN(r.out, "timings (median): alloc ");
    cli(&r, ARGS("replay", DATA "replay_3x400MiB.jsonl"));
    cr_assert_eq(r.status, 0, "%s", r.err);
    EXPECT_IN(r.out, "allocations: 3 of 3 succeeded, 0 refused");
    EXPECT_IN(r.out, "first refusal: none\n");
}

/* The caller's own budget and audit log are not the replay's: with
 * VRAMGUARD_BUDGET=100MiB and VRAMGUARD_AUDIT in the environment, a replay
 * under --budget 1GiB refuses what 1 GiB refuses and writes no log. */
Test(replay_cli, replay_ignores_the_callers_budget_and_audit_log)
{
    char dir[64], log[128], budget[] = "VRAMGUARD_BUDGET=100MiB", audit[160];
    tmp_dir(dir, sizeof dir);
    snprintf(log, sizeof log, "%s/caller.jsonl", dir);
    snprintf(audit, sizeof audit, "VRAMGUARD_AUDIT=%s", log);
    static const char *const drop[] = {"VRAMGUARD_", "TZ=", "LD_PRELOAD=", NULL};
    char **env = env_make(drop, ENV("TZ=UTC", budget, audit));
    cli_result_t r;
    cli_result_of(&r, env, ARGS("replay", "--budget", "1GiB", DATA "replay_3x400MiB.jsonl"));
    env_free(env);
    cr_assert_eq(r.status, 0, "%s", r.err);
    EXPECT_IN(r.out, "allocations: 2 of 3 succeeded, 1 refused");
    cr_expect_neq(access(log, F_OK), 0, "the replay wrote the caller's audit log");
    rm_tree(dir);
}

Test(replay_cli, replay_uses_the_budget_the_log_recorded_unless_told_otherwise)
{
    cli_result_t r;
    cli(&r, ARGS("replay", DATA "replay_budget_1GiB.jsonl"));
    cr_assert_eq(r.status, 0, "%s", r.err);
    EXPECT_IN(r.out, "pid 901 (./three) on device 0, budget 1.00 GiB\n");
    EXPECT_IN(r.out, "allocations: 2 of 3 succeeded, 1 refused");
    cli(&r, ARGS("replay", DATA "replay_budget_1GiB.jsonl", "--budget", "2GiB"));
    cr_assert_eq(r.status, 0, "%s", r.err);
    EXPECT_IN(r.out, "allocations: 3 of 3 succeeded, 0 refused");
}

Test(replay_cli, replay_json_uses_the_audit_logs_field_names)
{
    cli_result_t r;
    cli(&r, ARGS("replay", "--json", DATA "replay_budget_1GiB.jsonl"));
    cr_assert_eq(r.status, 0, "%s", r.err);
    EXPECT_IN(r.out, "{\"pid\":901,\"dev\":0,\"budget\":1073741824,\"allocs\":3,\"ok\":2,"
                     "\"refusals\":1,");
    EXPECT_IN(r.out, "\"first_refusal\":{\"seq\":3,\"api\":\"cuMemAlloc_v2\",\"size\":419430400,"
                     "\"used\":838860800,\"rc\":2}}\n");
}

/* A log holds whatever a writer (or an attacker) put in it: an API name
 * with a quote, a backslash, an escape byte and a byte that is not UTF-8
 * must come out of --json as a valid JSON string, and never reach a
 * terminal as an escape sequence. */
Test(replay_cli, replay_escapes_the_logs_strings_in_json_and_on_a_terminal)
{
    char dir[64], log[128];
    tmp_dir(dir, sizeof dir);
    snprintf(log, sizeof log, "%s/api.jsonl", dir);
    FILE *f = fopen(log, "w");
    cr_assert_not_null(f);
    fprintf(f, "{\"v\":1,\"ts\":1,\"pid\":3,\"tid\":3,\"op\":\"alloc\",\"dev\":0,"
               "\"api\":\"a\\\"b\\\\c\\u001bd\xff\",\"kind\":\"plain\",\"ptr\":\"0x1000\","
               "\"size\":4194304,\"rc\":0,\"used\":4194304,\"budget\":-1,\"seq\":1}\n");
    fclose(f);
    cli_result_t r;
    cli(&r, ARGS("replay", "--json", "--budget", "1MiB", log));
    cr_assert_eq(r.status, 0, "%s", r.err);
    EXPECT_IN(r.out, "\"api\":\"a\\\"b\\\\c\\u001bd\\u00ff\",\"size\":4194304,");
    /* and the report for a terminal shows no escape byte, as for cmd */
    cli(&r, ARGS("replay", "--budget", "1MiB", log));
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_expect_null(strchr(r.out, 0x1b), "an escape reached the terminal: %s", r.out);
    EXPECT_IN(r.out, "(seq 1, a\"b\\c?d");
    rm_tree(dir);
}

/* A garbled line whose size is negative is skipped and reported (its file
 * and line), never replayed as an allocation of 0 bytes, and must not
 * hide the refusal the replay is run to find. */
Test(replay_cli, replay_reports_the_first_refusal_not_a_garbled_size_before_it)
{
    char dir[64], log[128];
    tmp_dir(dir, sizeof dir);
    snprintf(log, sizeof log, "%s/neg.jsonl", dir);
    FILE *f = fopen(log, "w");
    cr_assert_not_null(f);
    fprintf(f, "{\"v\":1,\"ts\":1,\"pid\":3,\"tid\":3,\"op\":\"alloc\",\"dev\":0,"
               "\"api\":\"cuMemAlloc_v2\",\"kind\":\"plain\",\"ptr\":\"0x1000\","
               "\"size\":-5,\"rc\":0,\"used\":0,\"budget\":-1,\"seq\":1}\n");
    fprintf(f, "{\"v\":1,\"ts\":2,\"pid\":3,\"tid\":3,\"op\":\"alloc\",\"dev\":0,"
               "\"api\":\"cuMemAlloc_v2\",\"kind\":\"plain\",\"ptr\":\"0x2000\","
               "\"size\":2097152,\"rc\":0,\"used\":2097152,\"budget\":-1,\"seq\":2}\n");
    fclose(f);
    cli_result_t r;
    cli(&r, ARGS("replay", "--budget", "1MiB", log));
    cr_assert_eq(r.status, 0, "%s", r.err);
    char want[256];
    snprintf(want, sizeof want, "vramguard replay: skipped 1 line (first at %s:1): 1 bad or "
             "missing field\n", log);
    cr_expect_str_eq(r.err, want);
    EXPECT_IN(r.out, "allocations: 0 of 1 succeeded, 1 refused (");
    EXPECT_IN(r.out, "first refusal: allocation 1 (seq 2, cuMemAlloc_v2, 2.00 MiB) with 0 B in "
                     "use: request exceeds the memory budget\n");
    cli(&r, ARGS("replay", "--json", "--budget", "1MiB", log));
    EXPECT_IN(r.out, "\"first_refusal\":{\"seq\":2,");
    rm_tree(dir);
}

/* A process that ran fail-closed (a budget for no visible device) logs a
 * budget of 0 on its refusals. No pool can have that limit: the replay
 * says so and asks for --budget, rather than blaming the device. */
Test(replay_cli, replay_of_a_log_that_recorded_a_budget_of_0_asks_for_one)
{
    char dir[64], log[128];
    tmp_dir(dir, sizeof dir);
    snprintf(log, sizeof log, "%s/closed.jsonl", dir);
    FILE *f = fopen(log, "w");
    cr_assert_not_null(f);
    fprintf(f, "{\"v\":1,\"ts\":1,\"pid\":3,\"tid\":3,\"op\":\"refuse\",\"dev\":0,"
               "\"api\":\"cuMemAlloc_v2\",\"kind\":\"plain\",\"size\":2097152,\"rc\":2,"
               "\"used\":0,\"budget\":0}\n");
    fclose(f);
    cli_result_t r;
    cli(&r, ARGS("replay", log));
    cr_expect_eq(r.status, 2, "%s", r.err);
    cr_expect_eq(lines(r.err), 1, "%s", r.err);
    EXPECT_IN(r.err, log);
    EXPECT_IN(r.err, "--budget");
    cr_expect_null(strstr(r.err, "cannot use device"), "%s", r.err);
    cli(&r, ARGS("replay", "--budget", "4MiB", log));
    cr_expect_eq(r.status, 0, "%s", r.err);
    EXPECT_IN(r.out, "(1 recorded as refused, 1 of those fit now)");
    rm_tree(dir);
}

/* The driver hands out an address only while it is free, so a second
 * allocation at a recorded address that is still live means the free in
 * between was lost (a thread's unflushed lines at a crash). The replay
 * must not keep both and invent a refusal the log shows never happened. */
Test(replay_cli, replay_takes_an_address_allocated_again_as_freed_in_between)
{
    char dir[64], log[128];
    tmp_dir(dir, sizeof dir);
    snprintf(log, sizeof log, "%s/lost_free.jsonl", dir);
    FILE *f = fopen(log, "w");
    cr_assert_not_null(f);
    for (int seq = 1; seq <= 2; seq++)
        fprintf(f, "{\"v\":1,\"ts\":%d,\"pid\":3,\"tid\":3,\"op\":\"alloc\",\"dev\":0,"
                   "\"api\":\"cuMemAlloc_v2\",\"kind\":\"plain\",\"ptr\":\"0x7f0000000000\","
                   "\"size\":3145728,\"rc\":0,\"used\":3145728,\"budget\":4194304,\"seq\":%d}\n",
                seq, seq);
    fclose(f);
    cli_result_t r;
    cli(&r, ARGS("replay", log));
    cr_assert_eq(r.status, 0, "%s", r.err);
    EXPECT_IN(r.out, "allocations: 2 of 2 succeeded, 0 refused");
    EXPECT_IN(r.out, "first refusal: none\n");
    rm_tree(dir);
}

/* Without --pid the replay takes the first process that allocated; one
 * whose lines are only frees (its allocations came before the log began)
 * allocated nothing here. */
Test(replay_cli, replay_picks_the_first_process_that_allocated_not_one_that_only_freed)
{
    char dir[64], log[128];
    tmp_dir(dir, sizeof dir);
    snprintf(log, sizeof log, "%s/frees_first.jsonl", dir);
    FILE *f = fopen(log, "w");
    cr_assert_not_null(f);
    fprintf(f, "{\"v\":1,\"ts\":1,\"pid\":3,\"tid\":3,\"op\":\"free\",\"dev\":0,"
               "\"api\":\"cuMemFree_v2\",\"kind\":\"plain\",\"ptr\":\"0x1000\",\"size\":4096,"
               "\"rc\":0,\"used\":0,\"budget\":-1,\"seq\":1}\n");
    fprintf(f, "{\"v\":1,\"ts\":2,\"pid\":4,\"tid\":4,\"op\":\"alloc\",\"dev\":0,"
               "\"api\":\"cuMemAlloc_v2\",\"kind\":\"plain\",\"ptr\":\"0x2000\",\"size\":4096,"
               "\"rc\":0,\"used\":4096,\"budget\":-1,\"seq\":1}\n");
    fclose(f);
    cli_result_t r;
    cli(&r, ARGS("replay", log));
    cr_assert_eq(r.status, 0, "%s", r.err);
    EXPECT_IN(r.out, ": pid 4 ");
    EXPECT_IN(r.out, "allocations: 1 of 1 succeeded");
    rm_tree(dir);
}
