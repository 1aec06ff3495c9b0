/*
 * test_audit.c — the audit log (VRAMGUARD_AUDIT, docs/audit-log.md) as a
 * user meets it: clients (tests/clients) run under the preload shim with
 * the log on; the test reads the file back. Every line must parse (a small
 * JSON checker below) and no line may be lost: the alloc and free lines are
 * counted against the test driver's own exit report. Also: fatal-signal
 * flush, the leak report, call sites, pressure events, the file's mode and
 * the refusal of unwritable and symlinked paths.
 */
#include <criterion/criterion.h>

#include <sys/stat.h>

#include "clientrun.h"
#include "testutil.h"

#define OUT_OF_MEMORY 2

/* ------------------------------------------------- a small JSON check */

typedef struct jp {
    const char *p;
} jp_t;

static bool j_value(jp_t *j, int depth);

static void j_ws(jp_t *j)
{
    while (*j->p == ' ' || *j->p == '\t')
        j->p++;
}

static bool j_string(jp_t *j)
{
    if (*j->p != '"')
        return false;
    for (j->p++; *j->p && *j->p != '"'; j->p++) {
        if ((unsigned char)*j->p < 0x20)
            return false;
        if (*j->p == '\\' && !*++j->p)
            return false;
    }
    return *j->p++ == '"';
}

static bool j_number(jp_t *j)
{
    const char *s = j->p;
    j->p += *j->p == '-';
    while (*j->p >= '0' && *j->p <= '9')
        j->p++;
    return j->p > s && j->p[-1] != '-';
}

static bool j_list(jp_t *j, char close, bool keyed, int depth)
{
    j->p++;
    j_ws(j);
    if (*j->p == close) {
        j->p++;
        return true;
    }
    for (;;) {
        j_ws(j);
        if (keyed && (!j_string(j) || (j_ws(j), *j->p++ != ':')))
            return false;
        if (!j_value(j, depth + 1))
            return false;
        j_ws(j);
        if (*j->p == close) {
            j->p++;
            return true;
        }
        if (*j->p++ != ',')
            return false;
    }
}

static bool j_value(jp_t *j, int depth)
{
    j_ws(j);
    if (depth > 16)
        return false;
    switch (*j->p) {
    case '{': return j_list(j, '}', true, depth);
    case '[': return j_list(j, ']', false, depth);
    case '"': return j_string(j);
    case 't': return !strncmp(j->p, "true", 4) && (j->p += 4);
    case 'f': return !strncmp(j->p, "false", 5) && (j->p += 5);
    case 'n': return !strncmp(j->p, "null", 4) && (j->p += 4);
    default: return j_number(j);
    }
}

/* One whole line (no newline) is one JSON object with "v":1. */
static bool line_is_event(const char *line)
{
    jp_t j = {line};
    return *line == '{' && j_value(&j, 0) && *j.p == '\0' && strstr(line, "{\"v\":1,") == line;
}

/* ------------------------------------------------------ reading a log */

typedef struct log_stats {
    int lines, bad, allocs, frees, refusals, bad_ptrs, starts, exits, leaks, pressure;
    char first_bad[256];
} log_stats_t;

static log_stats_t read_log(const char *path)
{
    log_stats_t s = {0};
    char *text = read_whole_file(path);
    for (char *l = text, *nl; *l; l = nl + 1) {
        nl = strchr(l, '\n');
        cr_assert_not_null(nl, "the log ends without a newline: %.200s", l);
        *nl = '\0';
        s.lines++;
        if (!line_is_event(l)) {
            if (!s.bad++)
                snprintf(s.first_bad, sizeof s.first_bad, "%s", l);
            continue;
        }
        s.allocs += strstr(l, "\"op\":\"alloc\"") != NULL;
        s.frees += strstr(l, "\"op\":\"free\"") != NULL;
        s.refusals += strstr(l, "\"op\":\"refuse\"") != NULL;
        s.bad_ptrs += strstr(l, "\"op\":\"bad_ptr\"") != NULL;
        s.starts += strstr(l, "\"op\":\"start\"") != NULL;
        s.exits += strstr(l, "\"op\":\"exit\"") != NULL;
        s.leaks += strstr(l, "\"op\":\"leak\"") != NULL;
        s.pressure += strstr(l, "\"op\":\"pressure\"") != NULL;
    }
    free(text);
    return s;
}

static void temp_log(char *path, size_t len)
{
    snprintf(path, len, "/tmp/vg-audit-XXXXXX");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    unlink(path); /* the shim creates it */
}

static char *audit_env(const char *path)
{
    return cat3("VRAMGUARD_AUDIT=", path, "");
}

/* ---------------------------------------------------- whole and complete */

Test(audit, many_threads_append_whole_lines_and_lose_none)
{
    static run_result_t r;
    char log[64];
    temp_log(log, sizeof log);
    char *a = audit_env(log);
    for (int round = 0; round < 3; round++) {
        unlink(log);
        run_opts_t o = {.method = "cudart", .path = "race", .chunk = "64MiB", .max = "10000",
                        .env = {a, "VRAMGUARD_BUDGET=2GiB"}};
        run_client(&o, &r);
        cr_assert_eq(r.status, 0, "%s", r.err);
        log_stats_t s = read_log(log);
        cr_expect_eq(s.bad, 0, "%d bad lines, first: %s", s.bad, s.first_bad);
        cr_expect_eq(s.allocs, field(r.report, "allocs"), "alloc lines %d, driver %s", s.allocs,
                     r.report);
        cr_expect_eq(s.frees, field(r.report, "frees"), "free lines %d, driver %s", s.frees,
                     r.report);
        cr_expect_geq(s.refusals, 16, "%d refusals", s.refusals); /* each thread's last */
        cr_expect_eq(s.starts, 1);
        cr_expect_eq(s.exits, 1);
    }
    unlink(log);
    free(a);
}

Test(audit, several_processes_append_to_one_log_and_lose_none)
{
    enum { PROCS = 4 };
    char log[64], reports[PROCS][64], rep[512];
    pid_t pid[PROCS];
    temp_log(log, sizeof log);
    char *a = audit_env(log);
    run_opts_t o = {.method = "linked", .path = "freeloop", .chunk = "1MiB", .max = "1",
                    .env = {a, "VRAMGUARD_BUDGET=1GiB"}};
    for (int i = 0; i < PROCS; i++) {
        snprintf(reports[i], sizeof reports[i], "/tmp/vg-audit-rep-XXXXXX");
        int fd = mkstemp(reports[i]);
        cr_assert_geq(fd, 0);
        close(fd);
        pid[i] = spawn_client(&o, reports[i], -1, -1);
    }
    long long allocs = 0, frees = 0;
    for (int i = 0; i < PROCS; i++) {
        cr_expect_eq(child_wait(pid[i]), 0);
        read_small_file(reports[i], rep, sizeof rep);
        unlink(reports[i]);
        allocs += field(rep, "allocs");
        frees += field(rep, "frees");
    }
    log_stats_t s = read_log(log);
    cr_expect_eq(s.bad, 0, "%d bad lines, first: %s", s.bad, s.first_bad);
    cr_expect_eq(allocs, PROCS * 1000);
    cr_expect_eq(s.allocs, allocs, "alloc lines %d, driver %lld", s.allocs, allocs);
    cr_expect_eq(s.frees, frees, "free lines %d, driver %lld", s.frees, frees);
    cr_expect_eq(s.starts, PROCS);
    cr_expect_eq(s.exits, PROCS);
    unlink(log);
    free(a);
}

/* A forked child writes its own start and exit, under its own pid. */
Test(audit, a_forked_child_logs_as_its_own_process)
{
    static run_result_t r;
    char log[64];
    temp_log(log, sizeof log);
    char *a = audit_env(log);
    run_opts_t o = {.method = "linked", .path = "fork", .chunk = "64MiB", .max = "40",
                    .env = {a, "VRAMGUARD_BUDGET=2GiB"}};
    run_client(&o, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    log_stats_t s = read_log(log);
    cr_expect_eq(s.bad, 0, "first bad: %s", s.first_bad);
    cr_expect_eq(s.starts, 2);
    cr_expect_eq(s.exits, 2);
    cr_expect_eq(s.allocs, 32 + 22, "%d alloc lines", s.allocs); /* parent 32, child 22 */
    unlink(log);
    free(a);
}

/* ---------------------------------------------------------- crashes */

Test(audit, a_fatal_signal_flushes_the_log)
{
    static run_result_t r;
    char log[64];
    temp_log(log, sizeof log);
    char *a = audit_env(log);
    run_opts_t o = {.method = "linked", .path = "segv", .chunk = "1MiB", .max = "10",
                    .env = {a}};
    run_client(&o, &r);
    /* Under a sanitizer our handler chains to the sanitizer's, which
     * reports the SEGV and exits (1 for ASan, 66 for TSan). */
    bool san = (r.status == 1 || r.status == 66) && strstr(r.err, "Sanitizer") &&
               strstr(r.err, "SEGV");
    cr_expect(r.status == 128 + SIGSEGV || san, "exited %d: %s", r.status, r.err);
    log_stats_t s = read_log(log);
    cr_expect_eq(s.bad, 0, "first bad: %s", s.first_bad);
    cr_expect_eq(s.starts, 1);
    cr_expect_eq(s.allocs, 10, "%d alloc lines survived the crash", s.allocs);
    unlink(log);
    free(a);
}

/* ----------------------------------------------------------- leaks */

Test(audit, the_leak_report_groups_live_allocations_by_call_site)
{
    static run_result_t r;
    char log[64];
    temp_log(log, sizeof log);
    char *a = audit_env(log);
    run_opts_t o = {.method = "linked", .path = "leak", .chunk = "1MiB", .max = "5",
                    .env = {a, "VRAMGUARD_BACKTRACE=4"}};
    run_client(&o, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_expect_eq(field(r.report, "live_bytes"), 5 * (long long)MiB, "%s", r.report);
    cr_expect_not_null(strstr(r.err, "5 allocations, 5.00 MiB on device 0 at client_linked"),
                       "%s", r.err);
    cr_expect_not_null(strstr(r.err, "leak report: 5 allocations, 5.00 MiB, live at exit "
                                     "from 1 call site\n"),
                       "%s", r.err);
    char *text = read_whole_file(log);
    const char *leak = strstr(text, "\"op\":\"leak\"");
    cr_assert_not_null(leak, "%s", text);
    cr_expect_not_null(strstr(leak, "\"count\":5,\"bytes\":5242880,\"site\":[\"0x"), "%.300s",
                       leak);
    const char *exit_ev = strstr(text, "\"op\":\"exit\"");
    cr_assert_not_null(exit_ev);
    cr_expect_not_null(strstr(exit_ev, "\"live\":5,\"live_bytes\":5242880"), "%.300s", exit_ev);
    cr_expect_not_null(strstr(exit_ev, "\"modules\":[{\"base\":\"0x"), "%.300s", exit_ev);
    free(text);
    unlink(log);
    free(a);
}

/* A program whose file was replaced or removed while it ran (an upgrade)
 * is named by the path it was started from: /proc/self/exe then ends in
 * " (deleted)", which the start and exit lines' modules wrote as part of
 * the program's path. */
Test(audit, a_program_whose_file_went_is_named_by_its_path)
{
    static run_result_t r;
    char log[64], dir[64] = "/tmp/vg-audit-exe-XXXXXX";
    temp_log(log, sizeof log);
    cr_assert_not_null(mkdtemp(dir));
    char *exe = cat3(dir, "/client_linked", "");
    char *src = cat3(build_dir(), "/clients/client_linked", "");
    char *text = read_whole_file(src);
    struct stat st;
    cr_assert_eq(stat(src, &st), 0);
    int fd = open(exe, O_WRONLY | O_CREAT | O_EXCL, 0700);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, text, (size_t)st.st_size), (ssize_t)st.st_size);
    close(fd);
    free(text);
    char *a = audit_env(log);
    run_opts_t o = {.method = "linked", .exe = exe, .path = "plain", .chunk = "1MiB",
                    .max = "2", .env = {a, "CLIENT_UNLINK_SELF=1"}};
    run_client(&o, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_expect_neq(access(exe, F_OK), 0, "the client removed its file");
    char *want = cat3("\"modules\":[{\"base\":\"0x", "", "");
    text = read_whole_file(log);
    const char *ops[] = {"\"op\":\"start\"", "\"op\":\"exit\""};
    for (int i = 0; i < 2; i++) {
        const char *ev = strstr(text, ops[i]);
        cr_assert_not_null(ev, "%s", text);
        const char *mods = strstr(ev, want);
        cr_assert_not_null(mods, "%.300s", ev);
        const char *path = strstr(mods, "\"path\":\"");
        cr_assert_not_null(path, "%.300s", mods);
        path += strlen("\"path\":\"");
        const char *end = strchr(path, '"');
        cr_assert_not_null(end);
        cr_expect(end - path == (ptrdiff_t)strlen(exe) && !strncmp(path, exe, strlen(exe)),
                  "%s names the program %.*s, not %s", ops[i], (int)(end - path), path, exe);
    }
    free(text);
    free(want);
    unlink(log);
    rmdir(dir);
    free(a);
    free(src);
    free(exe);
}

Test(audit, leaks_setting_reports_without_a_log)
{
    static run_result_t r;
    run_opts_t o = {.method = "cudart", .path = "leak", .chunk = "1MiB", .max = "3",
                    .env = {"VRAMGUARD_LEAKS=1"}};
    run_client(&o, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_expect_not_null(strstr(r.err, "3 allocations, 3.00 MiB on device 0 at an unknown site"),
                       "%s", r.err);
    cr_expect_eq(count_of(r.err, "leak report: 3 allocations"), 1, "%s", r.err);
    run_opts_t clean = {.method = "linked", .path = "plain", .chunk = "1MiB", .max = "3",
                        .env = {"VRAMGUARD_LEAKS=1"}};
    run_client(&clean, &r);
    cr_expect_not_null(strstr(r.err, "leak report: no device allocations live at exit"), "%s",
                       r.err);
}

/* ------------------------------------------------ what lines carry */

Test(audit, start_alloc_and_exit_lines_carry_the_schema_fields)
{
    static run_result_t r;
    char log[64];
    temp_log(log, sizeof log);
    char *a = audit_env(log);
    run_opts_t o = {.method = "linked", .path = "plain", .chunk = "64MiB", .max = "100",
                    .env = {a, "VRAMGUARD_BUDGET=1GiB", "VRAMGUARD_BACKTRACE=3"}};
    run_client(&o, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    char *text = read_whole_file(log);
    cr_expect_not_null(strstr(text, "\"op\":\"start\",\"cmd\":\""), "%.300s", text);
    cr_expect_not_null(strstr(text, "client_linked plain 64MiB 100\",\"budget_spec\":\"1GiB\","
                                    "\"policy\":\"warn\""),
                       "%.400s", text);
    const char *al = strstr(text, "\"op\":\"alloc\",\"dev\":0,\"api\":\"cuMemAlloc_v2\","
                                  "\"kind\":\"plain\",\"ptr\":\"0x");
    cr_assert_not_null(al, "%.600s", text);
    cr_expect_not_null(strstr(al, "\"size\":67108864,\"rc\":0,\"used\":67108864,"
                                  "\"budget\":1073741824,\"seq\":"),
                       "%.300s", al);
    const char *site = strstr(al, "\"site\":[");
    cr_assert_not_null(site, "%.300s", al);
    int frames = 0;
    for (const char *p = site; *p != ']'; p++)
        frames += *p == 'x';
    cr_expect(frames >= 1 && frames <= 3, "%d frames: %.200s", frames, site);
    cr_expect_not_null(strstr(text, "\"op\":\"refuse\",\"dev\":0,\"api\":\"cuMemAlloc_v2\","
                                    "\"kind\":\"plain\",\"size\":67108864,\"rc\":2,"
                                    "\"used\":1073741824,\"budget\":1073741824"),
                       "no refusal line");
    cr_expect_not_null(strstr(text, "\"op\":\"free\",\"dev\":0,\"api\":\"cuMemFree_v2\""));
    cr_expect_not_null(strstr(text, "\"op\":\"exit\",\"allocs\":16,\"frees\":16,"
                                    "\"refusals\":1,\"bad_ptrs\":0,\"live\":0,\"live_bytes\":0"),
                       "no exit line");
    cr_expect_not_null(strstr(text, "\"op\":\"pressure\",\"dev\":0,\"from\":\"low\","
                                    "\"to\":\"medium\""));
    cr_expect_not_null(strstr(text, "\"from\":\"high\",\"to\":\"critical\""));
    cr_expect_not_null(strstr(text, "\"from\":\"critical\",\"to\":\"high\""));
    free(text);
    unlink(log);
    free(a);
}

/* ------------------------------------------------------------ the file */

Test(audit, the_log_is_created_owner_only)
{
    static run_result_t r;
    char log[64];
    temp_log(log, sizeof log);
    char *a = audit_env(log);
    mode_t old = umask(0); /* the child inherits it: 0600 must come from us */
    run_opts_t o = {.method = "linked", .path = "plain", .chunk = "1MiB", .max = "2",
                    .env = {a}};
    run_client(&o, &r);
    umask(old);
    struct stat st;
    cr_assert_eq(stat(log, &st), 0, "no log: %s", r.err);
    cr_expect_eq(st.st_mode & 07777, 0600, "mode %o", st.st_mode & 07777);
    unlink(log);
    free(a);
}

/* An unwritable log is a bad setting: one line naming the path and the
 * reason, and every allocation refused (fail closed). */
static void expect_refused(const char *path, const char *reason)
{
    static run_result_t r;
    char *a = audit_env(path);
    run_opts_t o = {.method = "linked", .path = "plain", .chunk = "1MiB", .max = "4",
                    .failures = "3", .env = {a}};
    run_client(&o, &r);
    const char *l = line_for(r.out, "plain");
    cr_assert_not_null(l, "%s: %s %s", path, r.out, r.err);
    cr_expect_eq(field(l, "allocs"), 0, "%s: %s", path, l);
    cr_expect_eq(field(l, "rc"), OUT_OF_MEMORY, "%s: %s", path, l);
    cr_expect_eq(field(r.report, "peak_bytes"), 0, "%s", r.report);
    char named[512];
    snprintf(named, sizeof named, "VRAMGUARD_AUDIT='%s': cannot open the audit log: %s", path,
             reason);
    cr_expect_eq(count_of(r.err, named), 1, "want one line with \"%s\":\n%s", named, r.err);
    free(a);
}

Test(audit, an_unwritable_path_refuses_every_allocation_with_a_clear_line)
{
    expect_refused("/nonexistent-vg-dir/audit.log", "No such file or directory");
    expect_refused("/tmp", "Is a directory");
}

Test(audit, a_symlink_is_refused)
{
    char target[64], link_path[80];
    temp_log(target, sizeof target);
    int fd = open(target, O_CREAT | O_WRONLY, 0600);
    cr_assert_geq(fd, 0);
    close(fd);
    snprintf(link_path, sizeof link_path, "%s.link", target);
    cr_assert_eq(symlink(target, link_path), 0);
    expect_refused(link_path, "is a symbolic link");
    struct stat st;
    cr_assert_eq(stat(target, &st), 0);
    cr_expect_eq(st.st_size, 0, "the symlink's target was written");
    unlink(link_path);
    unlink(target);
}

/* A log someone else could write (or, for root, someone else's file) is
 * refused, and nothing is appended to it. */
Test(audit, a_log_file_others_may_write_or_own_is_refused)
{
    char path[64];
    temp_log(path, sizeof path);
    int fd = open(path, O_CREAT | O_WRONLY, 0600);
    cr_assert_geq(fd, 0);
    close(fd);
    cr_assert_eq(chmod(path, 0666), 0);
    expect_refused(path, "it is writable by group or others (mode 0666)");
    cr_assert_eq(chmod(path, 0620), 0);
    expect_refused(path, "it is writable by group or others (mode 0620)");
    if (geteuid() == 0) {
        cr_assert_eq(chmod(path, 0600), 0);
        cr_assert_eq(chown(path, 12345, 12345), 0);
        expect_refused(path, "it is owned by uid 12345, not by you (uid 0)");
    } else {
        cr_log_warn("SKIP a foreign owner: needs root to chown");
    }
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_expect_eq(st.st_size, 0, "the refused file was written");
    unlink(path);
}

/* ------------------------------------------------- ends without exit */

Test(audit, a_process_that_ends_with__exit_loses_no_event)
{
    static run_result_t r;
    char log[64];
    temp_log(log, sizeof log);
    char *a = audit_env(log);
    run_opts_t o = {.method = "linked", .path = "quit", .chunk = "1MiB", .max = "10",
                    .env = {a}};
    run_client(&o, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    log_stats_t s = read_log(log);
    cr_expect_eq(s.bad, 0, "first bad: %s", s.first_bad);
    cr_expect_eq(s.starts, 1);
    cr_expect_eq(s.allocs, 10, "%d of 10 alloc lines before _exit", s.allocs);
    unlink(log);
    free(a);
}

/* A vfork child that calls _exit runs the shim's _exit in its parent's
 * memory, while another parent thread allocates: every event is written
 * exactly once, and the child adds no exit of its own. */
Test(audit, a_vfork_child_that_calls__exit_loses_and_repeats_no_event)
{
    static run_result_t r;
    char log[64];
    temp_log(log, sizeof log);
    char *a = audit_env(log);
    run_opts_t o = {.method = "linked", .path = "vfork", .chunk = "1MiB", .max = "20",
                    .env = {a}};
    run_client(&o, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    const char *l = line_for(r.out, "vfork");
    cr_assert_not_null(l, "%s %s", r.out, r.err);
    cr_expect_eq(field(l, "child_status"), 7, "%s", l);
    cr_expect_eq(field(l, "allocs"), 20, "%s", l);
    long long churn = field(l, "churn");
    cr_expect_gt(churn, 0, "the other thread made no pair: %s", l);
    log_stats_t s = read_log(log);
    cr_expect_eq(s.bad, 0, "first bad: %s", s.first_bad);
    /* ThreadSanitizer makes vfork a fork: that child writes its own start. */
    long long shared = field(l, "shared");
    cr_expect_eq(s.starts, shared ? 1 : 2, "%d start lines (shared=%lld)", s.starts, shared);
    cr_expect_eq(s.exits, 1, "%d exit lines", s.exits);
    cr_expect_eq(s.allocs, 20 + churn, "%d alloc lines, %lld made", s.allocs, 20 + churn);
    cr_expect_eq(s.frees, 20 + churn, "%d free lines, %lld made", s.frees, 20 + churn);
    unlink(log);
    free(a);
}

Test(audit, an_old_buffered_event_is_written_at_the_next_event)
{
    static run_result_t r;
    char log[64];
    temp_log(log, sizeof log);
    char *a = audit_env(log);
    run_opts_t o = {.method = "linked", .path = "stale", .chunk = "1MiB", .max = "1",
                    .env = {a}};
    run_client(&o, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    const char *l = line_for(r.out, "stale");
    cr_assert_not_null(l, "%s %s", r.out, r.err);
    cr_expect_eq(field(l, "rc"), 0, "%s", l);
    cr_expect_geq(field(l, "seen"), 1, "the 20 ms old alloc was still buffered: %s", l);
    unlink(log);
    free(a);
}

/* The program's SIGINT handler (no SA_RESTART) still interrupts a blocking
 * read: the log's flush handler keeps the program's flags. */
Test(audit, the_log_keeps_the_programs_signal_flags)
{
    static run_result_t r;
    char log[64];
    temp_log(log, sizeof log);
    char *a = audit_env(log);
    run_opts_t o = {.method = "linked", .path = "sigint", .chunk = "1MiB", .max = "1",
                    .env = {a}};
    run_client(&o, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    const char *l = line_for(r.out, "sigint");
    cr_assert_not_null(l, "%s %s", r.out, r.err);
    cr_expect_eq(field(l, "eintr"), 1, "the read was restarted: %s", l);
    cr_expect_lt(field(l, "ms"), 1000, "%s", l);
    unlink(log);
    free(a);
}
