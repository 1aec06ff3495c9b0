/*
 * test_audit_cli.c — `vramguard audit` seen from outside: each test starts
 * build/vramguard as a child on hand-written fixtures (tests/data/audit/,
 * schema v1 of docs/audit-log.md) or logs it writes itself, and reads its
 * exit status, stdout and stderr. `vramguard replay` is
 * test_replay_cli.c's; the CLI help both share is tested here.
 *
 * Needs VG_TEST_BUILD (tests/run-tests.sh exports it) and the repository
 * root as the working folder (for the fixtures).
 */
#include <criterion/criterion.h>

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auditcli.h"

/* ---------------------------------------------------------- help, errors */

Test(audit_cli, help_of_audit_and_replay_exits_0_and_lists_the_options)
{
    cli_result_t r;
    cli(&r, ARGS("--help"));
    EXPECT_IN(r.out, "audit");
    EXPECT_IN(r.out, "replay");
    cli(&r, ARGS("audit", "--help"));
    cr_expect_eq(r.status, 0);
    for (const char *const *o = ARGS("--leaks", "--top", "--svg", "--csv"); *o; o++)
        EXPECT_IN(r.out, *o);
    cli(&r, ARGS("replay", "--help"));
    cr_expect_eq(r.status, 0);
    EXPECT_IN(r.out, "--budget");
}

Test(audit_cli, bad_input_exits_2_and_a_missing_file_exits_1_each_in_one_line)
{
    cli_result_t r;
    cli(&r, ARGS("audit", DATA "not_a_log.txt"));
    cr_expect_eq(r.status, 2, "%s", r.err);
    cr_expect_eq(lines(r.err), 1, "%s", r.err);
    EXPECT_IN(r.err, DATA "not_a_log.txt:1: not a vramguard audit log");
    cli(&r, ARGS("audit", DATA "no-such-log.jsonl"));
    cr_expect_eq(r.status, 1, "%s", r.err);
    cr_expect_eq(lines(r.err), 1, "%s", r.err);
    EXPECT_IN(r.err, "'" DATA "no-such-log.jsonl'");
    cli(&r, ARGS("audit", "--top", "many", DATA "basic.jsonl"));
    cr_expect_eq(r.status, 2);
    EXPECT_IN(r.err, "'many'");
    cli(&r, ARGS("audit"));
    cr_expect_eq(r.status, 2);
    cli(&r, ARGS("replay", "--budget", "8XB", DATA "basic.jsonl"));
    cr_expect_eq(r.status, 2);
    EXPECT_IN(r.err, "'8XB'");
    cli(&r, ARGS("replay", DATA "no-such-log.jsonl"));
    cr_expect_eq(r.status, 1);
    /* A pid too big for any process names the input, not a clamped pid. */
    cli(&r, ARGS("replay", "--pid", "99999999999999999999999", DATA "basic.jsonl"));
    cr_expect_eq(r.status, 2, "%s", r.err);
    EXPECT_IN(r.err, "'99999999999999999999999'");
}

/* -------------------------------------------------------------- summary */

Test(audit_cli, summary_numbers_are_exact_for_the_fixture)
{
    cli_result_t r;
    cli(&r, ARGS("audit", DATA "basic.jsonl"));
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_expect_str_eq(r.err, "", "nothing skipped");
    EXPECT_IN(r.out, "1 log, 12 events, 1 process, 500.0 ms from 2026-09-21 14:13:20.000\n");
    EXPECT_IN(r.out, "  4242     2026-09-21 14:13:20.000 500.0 ms   python train.py --epochs 1\n");
    EXPECT_IN(r.out, "exit: 4 allocs, 1 frees, 1 refusals, 2 bad pointers, 3 live (641.00 MiB)");
    EXPECT_IN(r.out, "  0    896.00 MiB   1.00 GiB     87.5%      40.0 ms    1\n");
    EXPECT_IN(r.out, "  1    1.00 MiB     none         -          70.0 ms    0\n");
    EXPECT_IN(r.out, "  cuMemAlloc_v2                       3        0         0  769.00 MiB\n");
    EXPECT_IN(r.out, "  cuMemAllocAsync                     1        0         1  128.00 MiB\n");
    EXPECT_IN(r.out, "  cuMemFree_v2                        0        1         0  0 B\n");
    EXPECT_IN(r.out, "  plain                               3        1         0  769.00 MiB\n");
    EXPECT_IN(r.out, "  async                               1        0         1  128.00 MiB\n");
    EXPECT_IN(r.out, "Bad pointers by class: 2\n  fake       1\n  freed      1\n");
    EXPECT_IN(r.out, "Pressure level changes: 2\n");
}

Test(audit_cli, leaks_group_live_allocations_by_symbolised_call_site)
{
    cli_result_t r;
    cli(&r, ARGS("audit", "--leaks", DATA "basic.jsonl"));
    cr_assert_eq(r.status, 0, "%s", r.err);
    EXPECT_IN(r.out, "Live at exit: 3 allocations, 641.00 MiB, from 3 call sites\n");
    const char *a = strstr(r.out, "1. 512.00 MiB in 1 allocation\n"
                                  "         #0 /usr/bin/python3.11+0x1300\n"
                                  "         #1 /usr/lib/x86_64-linux-gnu/libtorch_cuda.so+0x12345\n");
    const char *b = strstr(r.out, "2. 128.00 MiB in 1 allocation\n"
                                  "         #0 /usr/bin/python3.11+0x1234\n");
    const char *c = strstr(r.out, "3. 1.00 MiB in 1 allocation\n"
                                  "         (no call site recorded");
    cr_expect(a && b && c && a < b && b < c, "sites by bytes, symbolised:\n%s", r.out);
}

Test(audit_cli, leaks_use_the_processes_own_leak_events_when_there_are_any)
{
    cli_result_t r;
    cli(&r, ARGS("audit", "--leaks", DATA "leak_events.jsonl"));
    cr_assert_eq(r.status, 0, "%s", r.err);
    EXPECT_IN(r.out, "Live at exit: 1 allocation, 8.00 KiB, from 1 call site\n");
    EXPECT_IN(r.out, "#0 /opt/leaky+0x20\n");
    cr_expect_null(strstr(r.out, "+0x10"), "the computed 4 KiB leak is not reported:\n%s", r.out);
}

Test(audit_cli, top_orders_call_sites_by_bytes_allocated)
{
    cli_result_t r;
    cli(&r, ARGS("audit", "--top", "2", DATA "basic.jsonl"));
    cr_assert_eq(r.status, 0, "%s", r.err);
    const char *a = strstr(r.out, "1. 512.00 MiB in 1 allocation\n         #0 /usr/bin/python3.11+0x1300");
    const char *b = strstr(r.out, "2. 384.00 MiB in 2 allocations\n         #0 /usr/bin/python3.11+0x1234");
    cr_expect(a && b && a < b, "%s", r.out);
    cr_expect_null(strstr(r.out, "   3. "), "only 2 rows:\n%s", r.out);
}

/* ------------------------------------------------------------ bad lines */

Test(audit_cli, truncated_garbled_and_other_version_lines_are_counted_skipped_and_reported)
{
    cli_result_t r;
    cli(&r, ARGS("audit", DATA "garbled.jsonl"));
    cr_expect_eq(r.status, 0, "%s", r.err);
    cr_expect_str_eq(r.err, "vramguard audit: skipped 8 lines (first at " DATA
                            "garbled.jsonl:3): 3 not JSON, 2 truncated, 1 unknown version, "
                            "1 unknown op, 1 bad or missing field\n");
    EXPECT_IN(r.out, "1 log, 3 events, 1 process");
    EXPECT_IN(r.out, "  cuMemAlloc_v2                       1        0         0  1.00 KiB\n");
    EXPECT_IN(r.out, "  cuMemFree_v2                        0        1         0  0 B\n");
}

/* The writer writes sizes and counts unsigned: a negative one is a
 * malformed line, skipped and reported with the others (file and line),
 * never read as an allocation of 0 bytes. */
Test(audit_cli, a_negative_size_or_count_is_a_bad_line_not_zero)
{
    char dir[64], log[128];
    tmp_dir(dir, sizeof dir);
    snprintf(log, sizeof log, "%s/neg.jsonl", dir);
    FILE *f = fopen(log, "w");
    cr_assert_not_null(f);
    fputs("{\"v\":1,\"ts\":1790000000000000000,\"pid\":7,\"tid\":7,\"op\":\"start\","
          "\"cmd\":\"x\",\"budget_spec\":\"\",\"policy\":\"warn\"}\n"
          "{\"v\":1,\"ts\":1790000000001000000,\"pid\":7,\"tid\":7,\"op\":\"alloc\","
          "\"dev\":0,\"api\":\"cuMemAlloc_v2\",\"kind\":\"plain\",\"ptr\":\"0x2000\","
          "\"size\":-1048576,\"rc\":0,\"used\":0,\"budget\":-1,\"seq\":1}\n"
          "{\"v\":1,\"ts\":1790000000002000000,\"pid\":7,\"tid\":7,\"op\":\"alloc\","
          "\"dev\":0,\"api\":\"cuMemAlloc_v2\",\"kind\":\"plain\",\"ptr\":\"0x4000\","
          "\"size\":2048,\"rc\":0,\"used\":-2048,\"budget\":-1,\"seq\":2}\n"
          "{\"v\":1,\"ts\":1790000000003000000,\"pid\":7,\"tid\":7,\"op\":\"alloc\","
          "\"dev\":0,\"api\":\"cuMemAlloc_v2\",\"kind\":\"plain\",\"ptr\":\"0x6000\","
          "\"size\":1024,\"rc\":0,\"used\":1024,\"budget\":-1,\"seq\":3}\n",
          f);
    cr_assert_eq(fclose(f), 0);
    cli_result_t r;
    cli(&r, ARGS("audit", log));
    cr_expect_eq(r.status, 0, "%s", r.err);
    char want[256];
    snprintf(want, sizeof want, "vramguard audit: skipped 2 lines (first at %s:2): 2 bad or "
             "missing field\n", log);
    cr_expect_str_eq(r.err, want);
    EXPECT_IN(r.out, "1 log, 2 events, 1 process");
    EXPECT_IN(r.out, "  cuMemAlloc_v2                       1        0         0  1.00 KiB\n");
    rm_tree(dir);
}

/* ------------------------------------------------------------------ csv */

/* ,"modules":[...]} and the line's end: 600 modules of 200-character
 * paths, about 150 KB. */
static void put_many_modules(FILE *f)
{
    fputs(",\"modules\":[", f);
    for (int i = 0; i < 600; i++)
        fprintf(f, "%s{\"base\":\"0x%x000\",\"path\":\"/opt/lib/%0200d.so\"}", i ? "," : "",
                0x7f000 + i, i);
    fputs("]}\n", f);
}

/* A process with many libraries writes start and exit lines far over
 * 64 KiB (the writer allows 1 MiB): they are read, not skipped, and the
 * process is not reported as crashed. */
Test(audit_cli, start_and_exit_lines_of_hundreds_of_kilobytes_are_read)
{
    char dir[64], log[128];
    tmp_dir(dir, sizeof dir);
    snprintf(log, sizeof log, "%s/big.jsonl", dir);
    FILE *f = fopen(log, "w");
    cr_assert_not_null(f);
    fputs("{\"v\":1,\"ts\":1790000000000000000,\"pid\":77,\"tid\":77,\"op\":\"start\","
          "\"cmd\":\"big\",\"budget_spec\":\"1GiB\",\"policy\":\"warn\"", f);
    put_many_modules(f);
    fputs("{\"v\":1,\"ts\":1790000000500000000,\"pid\":77,\"tid\":77,\"op\":\"exit\","
          "\"allocs\":0,\"frees\":0,\"refusals\":0,\"bad_ptrs\":0,\"live\":0,"
          "\"live_bytes\":0", f);
    put_many_modules(f);
    cr_assert_gt(ftell(f), 200000, "the fixture is too small to prove anything");
    fclose(f);
    cli_result_t r;
    cli(&r, ARGS("audit", log));
    cr_expect_null(strstr(r.err, "too long"), "%s", r.err);
    cr_expect_null(strstr(r.out, "no start event"), "%s", r.out);
    cr_expect_null(strstr(r.out, "crashed"), "%s", r.out);
    EXPECT_IN(r.out, " big\n");
    rm_tree(dir);
}

/* A PyTorch process maps several hundred objects. A leak whose call site
 * lies in the 400th module of the exit event is still named by that
 * module, not printed as a bare address. */
Test(audit_cli, a_call_site_in_a_late_loaded_module_of_hundreds_is_named)
{
    char dir[64], log[128];
    tmp_dir(dir, sizeof dir);
    snprintf(log, sizeof log, "%s/mods.jsonl", dir);
    FILE *f = fopen(log, "w");
    cr_assert_not_null(f);
    fputs("{\"v\":1,\"ts\":1790000000000000000,\"pid\":78,\"tid\":78,\"op\":\"start\","
          "\"cmd\":\"mods\",\"budget_spec\":\"1GiB\",\"policy\":\"warn\"}\n", f);
    fputs("{\"v\":1,\"ts\":1790000000100000000,\"pid\":78,\"tid\":78,\"op\":\"alloc\","
          "\"dev\":0,\"api\":\"cuMemAlloc_v2\",\"kind\":\"plain\",\"ptr\":\"0x7f0000000000\","
          "\"size\":4096,\"rc\":0,\"used\":4096,\"budget\":1073741824,\"seq\":1,"
          "\"site\":[\"0x7f118f000123\"]}\n", f);
    fputs("{\"v\":1,\"ts\":1790000000500000000,\"pid\":78,\"tid\":78,\"op\":\"exit\","
          "\"allocs\":1,\"frees\":0,\"refusals\":0,\"bad_ptrs\":0,\"live\":1,"
          "\"live_bytes\":4096,\"modules\":[", f);
    for (int i = 0; i < 400; i++) /* module i at 0x7f1000000000 + i * 16 MiB */
        fprintf(f, "%s{\"base\":\"0x%llx\",\"path\":\"/opt/lib/lib%03d.so\"}", i ? "," : "",
                0x7f1000000000ull + (unsigned long long)i * 0x1000000ull, i);
    fputs("]}\n", f);
    fclose(f);
    cli_result_t r;
    cli(&r, ARGS("audit", "--leaks", log));
    cr_assert_eq(r.status, 0, "%s", r.err);
    EXPECT_IN(r.out, "#0 /opt/lib/lib399.so+0x123\n");
    rm_tree(dir);
}

/* Writes one process's life as pid `pid`: start (cmd), a 768 MiB
 * allocation, and an exit with it still live. */
static void one_life(FILE *f, int pid, const char *cmd, long long t0)
{
    fprintf(f, "{\"v\":1,\"ts\":%lld,\"pid\":%d,\"tid\":%d,\"op\":\"start\",\"cmd\":\"%s\","
               "\"budget_spec\":\"\",\"policy\":\"warn\"}\n", t0, pid, pid, cmd);
    fprintf(f, "{\"v\":1,\"ts\":%lld,\"pid\":%d,\"tid\":%d,\"op\":\"alloc\",\"dev\":0,"
               "\"api\":\"cuMemAlloc_v2\",\"kind\":\"plain\",\"ptr\":\"0x7f0000000000\","
               "\"size\":805306368,\"rc\":0,\"used\":805306368,\"budget\":-1,\"seq\":1}\n",
            t0 + 1000, pid, pid);
    fprintf(f, "{\"v\":1,\"ts\":%lld,\"pid\":%d,\"tid\":%d,\"op\":\"exit\",\"allocs\":1,"
               "\"frees\":0,\"refusals\":0,\"bad_ptrs\":0,\"live\":1,\"live_bytes\":805306368}\n",
            t0 + 2000, pid, pid);
}

/* pid 1 in two containers' logs, and a pid used again within one log
 * after its process exited: four processes, not two, each with its own
 * command and its own live memory. */
Test(audit_cli, a_pid_seen_in_two_logs_or_again_after_an_exit_is_another_process)
{
    char dir[64], a[128], b[128];
    tmp_dir(dir, sizeof dir);
    snprintf(a, sizeof a, "%s/a.jsonl", dir);
    snprintf(b, sizeof b, "%s/b.jsonl", dir);
    FILE *f = fopen(a, "w");
    cr_assert_not_null(f);
    one_life(f, 1, "first-a", 1790000000000000000LL);
    one_life(f, 1, "again-a", 1790000001000000000LL);
    fclose(f);
    f = fopen(b, "w");
    cr_assert_not_null(f);
    one_life(f, 1, "first-b", 1790000000000000000LL);
    one_life(f, 7, "other-b", 1790000000500000000LL);
    fclose(f);
    cli_result_t r;
    cli(&r, ARGS("audit", a, b));
    cr_assert_eq(r.status, 0, "%s", r.err);
    EXPECT_IN(r.out, "4 processes");
    EXPECT_IN(r.out, "first-a");
    EXPECT_IN(r.out, "again-a");
    EXPECT_IN(r.out, "first-b");
    rm_tree(dir);
}

/* A command line with terminal escapes in it (the log holds what the
 * process was run with) is printed with them replaced, as status does. */
Test(audit_cli, a_command_with_terminal_escapes_is_printed_without_them)
{
    char dir[64], log[128];
    tmp_dir(dir, sizeof dir);
    snprintf(log, sizeof log, "%s/esc.jsonl", dir);
    FILE *f = fopen(log, "w");
    cr_assert_not_null(f);
    one_life(f, 5, "evil\\u001b]0;owned\\u0007cmd", 1790000000000000000LL);
    fclose(f);
    cli_result_t r;
    cli(&r, ARGS("audit", log));
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_expect_null(strchr(r.out, 0x1b), "an escape reached the terminal: %s", r.out);
    EXPECT_IN(r.out, "evil?]0;owned?cmd");
    cli(&r, ARGS("replay", log));
    cr_expect_null(strchr(r.out, 0x1b), "an escape reached the terminal: %s", r.out);
    rm_tree(dir);
}

/* The log holds the command line as the process had it, in any bytes:
 * one that is not UTF-8 must still give valid JSON (escaped, never the
 * raw byte), as check --json and replay --json do. */
Test(audit_cli, json_escapes_a_command_that_is_not_utf8)
{
    char dir[64], log[128];
    tmp_dir(dir, sizeof dir);
    snprintf(log, sizeof log, "%s/latin1.jsonl", dir);
    FILE *f = fopen(log, "w");
    cr_assert_not_null(f);
    one_life(f, 5, "caf\xe9-train", 1790000000000000000LL);
    fclose(f);
    cli_result_t r;
    cli(&r, ARGS("audit", "--json", log));
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_expect_null(strchr(r.out, 0xe9), "a raw 0xe9 byte in the JSON: %s", r.out);
    EXPECT_IN(r.out, "\"cmd\":\"caf\\u00e9-train\"");
    rm_tree(dir);
}

/* A line a crash cut short, and the next process's first line glued onto
 * it (writers append whole lines; the cut one had no newline): the cut
 * part is skipped as truncated, the glued start is read. */
Test(audit_cli, a_start_glued_onto_a_cut_line_is_still_read)
{
    char dir[64], log[128];
    tmp_dir(dir, sizeof dir);
    snprintf(log, sizeof log, "%s/glued.jsonl", dir);
    FILE *f = fopen(log, "w");
    cr_assert_not_null(f);
    fputs("{\"v\":1,\"ts\":1790000000000000000,\"pid\":3,\"tid\":3,\"op\":\"alloc\",\"dev\":0,"
          "\"size\":12", f); /* cut: no newline */
    one_life(f, 4, "after-the-cut", 1790000001000000000LL);
    fclose(f);
    cli_result_t r;
    cli(&r, ARGS("audit", log));
    cr_assert_eq(r.status, 0, "%s", r.err);
    EXPECT_IN(r.err, "1 truncated");
    EXPECT_IN(r.out, "after-the-cut");
    cr_expect_null(strstr(r.out, "(no start event)"), "%s", r.out);
    rm_tree(dir);
}

Test(audit_cli, csv_has_rmms_columns_and_round_trips)
{
    cli_result_t r;
    cli(&r, ARGS("audit", "--csv", DATA "basic.jsonl"));
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_eq(strncmp(r.out, "Thread,Time,Action,Pointer,Size,Stream\n", 39), 0, "%s", r.out);
    EXPECT_IN(r.out, "4243,14:13:20.020000,allocate,0x7f0010000000,536870912,0x0\n");
    int allocs = 0, frees = 0, failures = 0;
    unsigned long long alloc_bytes = 0, free_bytes = 0;
    char *save = NULL;
    for (char *l = strtok_r(r.out + 39, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        unsigned tid, hh, mm, ss, us;
        char action[32];
        unsigned long long ptr, size, stream;
        int n = sscanf(l, "%u,%u:%u:%u.%u,%31[^,],%llx,%llu,%llx", &tid, &hh, &mm, &ss, &us,
                       action, &ptr, &size, &stream);
        cr_assert_eq(n, 9, "row '%s'", l);
        cr_expect_eq(strcspn(strchr(l, '.') + 1, ","), 6, "microseconds in 6 digits: '%s'", l);
        if (strcmp(action, "allocate") == 0) {
            allocs++;
            alloc_bytes += size;
        } else if (strcmp(action, "free") == 0) {
            frees++;
            free_bytes += size;
        } else {
            cr_expect_str_eq(action, "allocate failure");
            cr_expect_eq(ptr, 0);
            failures++;
        }
    }
    cr_expect_eq(allocs, 4);
    cr_expect_eq(frees, 1);
    cr_expect_eq(failures, 1);
    cr_expect_eq(alloc_bytes, (256 + 512 + 128 + 1) << 20);
    cr_expect_eq(free_bytes, 256 << 20);
}

/* ------------------------------------------------------------------ svg */

/* A tiny XML well-formedness check: balanced tags, quoted attributes,
 * known entities, no stray '<' or '&'. Returns NULL or what is wrong. */
static const char *xml_check(const char *s)
{
    const char *stack[64];
    size_t lens[64];
    int depth = 0, roots = 0;
    if (strncmp(s, "<?xml", 5) == 0 && !(s = strstr(s, "?>")))
        return "unterminated declaration";
    s += s[0] == '?' ? 2 : 0;
    while (*s) {
        if (*s == '&') {
            static const char *const ents[] = {"&amp;", "&lt;", "&gt;", "&quot;", "&apos;"};
            bool ok = false;
            for (size_t i = 0; i < 5; i++)
                ok |= strncmp(s, ents[i], strlen(ents[i])) == 0;
            if (!ok)
                return "bad entity";
            s++;
            continue;
        }
        if (*s != '<') {
            if (depth == 0 && !isspace((unsigned char)*s))
                return "text outside the root";
            s++;
            continue;
        }
        bool closing = s[1] == '/';
        const char *name = s + 1 + closing;
        size_t n = strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:-_");
        if (n == 0)
            return "bad tag name";
        const char *p = name + n;
        while (*p && *p != '>' && !(p[0] == '/' && p[1] == '>')) {
            if (*p == '<' || *p == '&')
                return "'<' or '&' inside a tag";
            if (*p == '"') {
                const char *q = strchr(p + 1, '"');
                if (!q || memchr(p + 1, '<', (size_t)(q - p - 1)))
                    return "bad attribute value";
                p = q;
            }
            p++;
        }
        if (!*p)
            return "unterminated tag";
        bool self = *p == '/';
        if (closing) {
            if (depth == 0 || lens[depth - 1] != n || strncmp(stack[depth - 1], name, n))
                return "mismatched closing tag";
            depth--;
        } else if (!self) {
            if (depth == 0 && roots++)
                return "two roots";
            if (depth == 64)
                return "too deep";
            stack[depth] = name;
            lens[depth++] = n;
        }
        s = p + 1 + self;
    }
    return depth ? "unclosed tag" : roots == 1 ? NULL : "no root";
}

/* --svg with --json writes the chart too, and stdout stays one JSON
 * document (no "written to" line after it). */
Test(audit_cli, json_and_svg_together_write_both)
{
    char dir[64], svg[128];
    tmp_dir(dir, sizeof dir);
    snprintf(svg, sizeof svg, "%s/use.svg", dir);
    cli_result_t r;
    cli(&r, ARGS("audit", "--json", "--svg", svg, DATA "basic.jsonl"));
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_expect_eq(access(svg, R_OK), 0, "no chart was written");
    cr_expect_eq(r.out[0], '{', "%s", r.out);
    cr_expect_null(strstr(r.out, "written to"), "%s", r.out);
    cr_expect_eq(lines(r.out), 1, "%s", r.out);
    rm_tree(dir);
}

Test(audit_cli, svg_is_well_formed_xml_shows_the_budget_and_is_written_atomically)
{
    char dir[64], svg[128], log[128], cmd[512];
    tmp_dir(dir, sizeof dir);
    snprintf(svg, sizeof svg, "%s/use.svg", dir);
    /* A log whose names need escaping, in a file whose name does too. */
    snprintf(log, sizeof log, "%s/a&b<c>.jsonl", dir);
    FILE *f = fopen(log, "w");
    cr_assert_not_null(f);
    char *basic = read_whole_file(DATA "basic.jsonl");
    fputs(basic, f);
    free(basic);
    fputs("{\"v\":1,\"ts\":1790000000080000000,\"pid\":4242,\"tid\":1,\"op\":\"refuse\","
          "\"dev\":0,\"api\":\"cu<Mem>&\\\"x\\\"\",\"kind\":\"plain\",\"size\":2147483648,"
          "\"rc\":2,\"used\":671088640,\"budget\":1073741824}\n", f);
    fclose(f);
    cli_result_t r;
    cli(&r, ARGS("audit", "--svg", svg, log));
    cr_assert_eq(r.status, 0, "%s", r.err);
    char *text = read_whole_file(svg);
    const char *bad = xml_check(text);
    cr_expect_null(bad, "not well-formed XML: %s", bad ? bad : "");
    EXPECT_IN(text, "class=\"budget\"");
    EXPECT_IN(text, ">budget 1 GiB</text>");
    EXPECT_IN(text, "class=\"p95\"");
    EXPECT_IN(text, "class=\"refusal\"");
    EXPECT_IN(text, "a&amp;b&lt;c&gt;.jsonl");
    EXPECT_IN(text, "cu&lt;Mem&gt;&amp;&quot;x&quot;");
    snprintf(cmd, sizeof cmd, "command -v xmllint >/dev/null 2>&1 || exit 0; xmllint --noout '%s'", svg);
    cr_expect_eq(system(cmd), 0, "xmllint rejects %s", svg);
    free(text);
    /* Only the SVG and the log are left: the temporary file was renamed. */
    int entries = 0;
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));)
        entries += e->d_name[0] != '.';
    closedir(d);
    cr_expect_eq(entries, 2);
    rm_tree(dir);
}

/* ------------------------------------------- arguments, empty logs, JSON */

Test(audit_cli, options_may_follow_the_logs_as_the_readme_writes_them)
{
    cli_result_t r;
    cli(&r, ARGS("audit", DATA "basic.jsonl", "--leaks"));
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_expect_str_eq(r.err, "");
    EXPECT_IN(r.out, "Live at exit: 3 allocations, 641.00 MiB, from 3 call sites\n");
    cli(&r, ARGS("audit", DATA "basic.jsonl", "--top", "1", DATA "leak_events.jsonl"));
    cr_assert_eq(r.status, 0, "%s", r.err);
    EXPECT_IN(r.out, "1. ");
    cli(&r, ARGS("audit", "--", DATA "basic.jsonl"));
    cr_expect_eq(r.status, 0, "%s", r.err);
    cli(&r, ARGS("audit", "--svg", "--leaks", DATA "basic.jsonl"));
    cr_expect_eq(r.status, 2, "--svg never takes an option as its file: %s", r.err);
}

Test(audit_cli, a_log_with_no_event_at_all_exits_2)
{
    cli_result_t r;
    cli(&r, ARGS("audit", "/dev/null"));
    cr_expect_eq(r.status, 2, "%s", r.err);
    cr_expect_eq(lines(r.err), 1, "%s", r.err);
    EXPECT_IN(r.err, "/dev/null");
}

Test(audit_cli, json_uses_the_audit_logs_field_names)
{
    cli_result_t r;
    cli(&r, ARGS("audit", DATA "basic.jsonl", "--json"));
    cr_assert_eq(r.status, 0, "%s", r.err);
    EXPECT_IN(r.out, "{\"logs\":1,\"events\":12,\"bad_ptrs\":2,\"processes\":[{\"pid\":4242,"
                     "\"cmd\":\"python train.py --epochs 1\",\"exited\":true,\"allocs\":4,"
                     "\"frees\":1,\"refusals\":1,\"bad_ptrs\":2,\"live\":3,"
                     "\"live_bytes\":672137216}]");
}
