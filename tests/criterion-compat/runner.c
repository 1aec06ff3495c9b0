/*
 * runner.c (compat) — main() for the test binaries of the ThreadSanitizer
 * build, in place of -lcriterion.
 *
 * Why this exists: Criterion 2.4 cannot start under TSan ("Could not
 * initialize inheritable arena: Resource temporarily unavailable",
 * Snaipe/Criterion#274). The Makefile links this file only when SAN contains
 * "thread"; every other build runs the real Criterion.
 *
 * What it keeps from Criterion: every test runs in its own forked process,
 * with .init/.fini around it; failures print "[----] file:line: ..." and
 * "[FAIL] suite::name: ..." on stderr; the last line is Criterion 2.4's
 *   [====] Synthesis: Tested: N | Passing: N | Failing: N | Crashing: N
 * counted as Criterion counts: skipped and disabled tests are not "Tested";
 * a crash is both Failing and Crashing; the exit status is 1 when anything
 * failed. Unlike Criterion's default output, each skip prints
 * "[SKIP] suite::name: reason", and a timeout counts as a crash.
 * Tests run one at a time (--jobs is accepted and ignored), sorted by suite
 * and name as Criterion lists them.
 *
 * Between test process and runner: the exit status. The runner's parent is
 * single-threaded, so fork() is safe under TSan; a sanitizer report in the
 * test process shows up as an unexpected exit status or a signal.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fnmatch.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Exit statuses of a test process; anything else is a failure of its own. */
enum { STATUS_PASSED = 0, STATUS_FAILED = 87, STATUS_SKIPPED = 88 };

#define DEFAULT_TIMEOUT_S 60.0

/* ---------------------------------------------------------- registration */

static struct cr_compat_test *registered; /* written by constructors only */
static size_t n_registered;

void cr_compat_register(struct cr_compat_test *t)
{
    t->next = registered;
    registered = t;
    n_registered++;
}

/* ------------------------------------------------ inside a test process */

static pthread_t test_thread;        /* the thread that runs init/fn/fini */
static jmp_buf test_abort;           /* where a fatal check on test_thread lands */
static atomic_int test_failed;       /* set by failed checks, from any thread */
static atomic_int test_skipped;

/* Writes one block of text with a single write(2), so that checks failing
 * in several threads at once do not interleave mid-line. */
static void emit(const char *text)
{
    size_t len = strlen(text);
    while (len > 0) {
        ssize_t n = write(STDERR_FILENO, text, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        text += n;
        len -= (size_t)n;
    }
}

/* Ends the current test with status: unwinds to run_test() on the test's
 * own thread (so .fini runs), or ends the process from any other thread. */
static _Noreturn void stop_test(int status)
{
    if (pthread_equal(pthread_self(), test_thread))
        longjmp(test_abort, status);
    fflush(NULL);
    _exit(status);
}

/* fmt carries CR_COMPAT_MSG's leading placeholder character. */
static void report(enum cr_compat_kind kind, const char *where, const char *what,
                   const char *fmt, va_list ap)
{
    char user[1024], block[3072];
    vsnprintf(user, sizeof user, fmt, ap);
    const char *msg = user[0] ? user + 1 : user;
    snprintf(block, sizeof block, "[----] %s: Assertion Failed\n%s%s%s[----]   %s\n",
             where, msg[0] ? "[----]   " : "", msg, msg[0] ? "\n" : "", what);
    emit(block);
    atomic_store_explicit(&test_failed, 1, memory_order_relaxed);
    if (kind == CR_COMPAT_ASSERT)
        stop_test(STATUS_FAILED);
}

void cr_compat_fail(enum cr_compat_kind kind, const char *file, int line,
                    const char *expr, const char *fmt, ...)
{
    char where[512];
    snprintf(where, sizeof where, "%s:%d", file, line);
    va_list ap;
    va_start(ap, fmt);
    report(kind, where, expr, fmt, ap);
    va_end(ap);
}

void cr_compat_fail_str(enum cr_compat_kind kind, const char *file, int line,
                        const char *expr, const char *actual, const char *expected,
                        const char *fmt, ...)
{
    char where[512], what[1536];
    snprintf(where, sizeof where, "%s:%d", file, line);
    snprintf(what, sizeof what, "%s: actual=`%s` expected=`%s`.", expr, actual, expected);
    va_list ap;
    va_start(ap, fmt);
    report(kind, where, what, fmt, ap);
    va_end(ap);
}

static const struct cr_compat_test *current; /* the test this process runs */

void cr_compat_skip(const char *fmt, ...)
{
    char reason[1024], block[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    snprintf(block, sizeof block, "[SKIP] %s::%s: %s\n", current->suite, current->name,
             reason[0] && reason[1] ? reason + 1 : "skipped");
    emit(block);
    atomic_store_explicit(&test_skipped, 1, memory_order_relaxed);
    stop_test(STATUS_SKIPPED);
}

void cr_compat_log(const char *level, const char *fmt, ...)
{
    char msg[1024], block[1100];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(block, sizeof block, "[%s] %s\n", level, msg);
    emit(block);
}

/* Body of the forked test process: never returns. A skip or a failed
 * cr_assert in .init skips the test body but still runs .fini. */
static _Noreturn void run_test(const struct cr_compat_test *t)
{
    current = t;
    test_thread = pthread_self();
    if (setjmp(test_abort) == 0) {
        if (t->init)
            t->init();
        t->fn();
    }
    if (t->fini)
        t->fini();
    if (atomic_load_explicit(&test_skipped, memory_order_relaxed))
        exit(STATUS_SKIPPED);
    exit(atomic_load_explicit(&test_failed, memory_order_relaxed) ? STATUS_FAILED
                                                                  : STATUS_PASSED);
}

/* ------------------------------------------------------------ the runner */

struct options {
    const char *filter;     /* glob on "suite/name" (or on "suite"); NULL = all */
    double timeout_s;       /* for tests without .timeout */
    int verbose;
    int list;
};

struct totals {
    size_t tested, passing, failing, crashing, skipped;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Waits for pid for at most limit_s seconds, then SIGKILLs it. SIGCHLD is
 * blocked in the runner, so sigtimedwait() sleeps until a child changes
 * state or the time is up. Returns 1 when the child was killed for time. */
static int wait_test(pid_t pid, double limit_s, int *status)
{
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    double deadline = now_s() + limit_s;
    for (;;) {
        pid_t r = waitpid(pid, status, WNOHANG);
        if (r == pid)
            return 0;
        if (r < 0 && errno != EINTR) {
            *status = 127 << 8; /* cannot happen (pid is our child): report it as a failure */
            return 0;
        }
        double left = deadline - now_s();
        if (left <= 0) {
            kill(pid, SIGKILL);
            while (waitpid(pid, status, 0) < 0 && errno == EINTR)
                ;
            return 1;
        }
        if (left > 1.0)
            left = 1.0;
        struct timespec ts = {(time_t)left, (long)((left - (double)(time_t)left) * 1e9)};
        sigtimedwait(&chld, NULL, &ts);
    }
}

/* Prints the verdict of one finished test and counts it. */
static void judge(const struct cr_compat_test *t, int status, int timed_out,
                  double secs, struct totals *sum)
{
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if (!timed_out && code == STATUS_SKIPPED) {
        sum->skipped++; /* the test process printed its [SKIP] line */
        return;
    }
    sum->tested++;
    if (!timed_out && code == STATUS_PASSED) {
        sum->passing++;
        return;
    }
    sum->failing++;
    if (timed_out || WIFSIGNALED(status))
        sum->crashing++;
    if (timed_out)
        fprintf(stderr, "[FAIL] %s::%s: Timed out. (%.2fs)\n", t->suite, t->name, secs);
    else if (WIFSIGNALED(status))
        fprintf(stderr, "[FAIL] %s::%s: CRASH! signal %d (%s) (%.2fs)\n", t->suite, t->name,
                WTERMSIG(status), strsignal(WTERMSIG(status)), secs);
    else if (code != STATUS_FAILED)
        fprintf(stderr, "[FAIL] %s::%s: exited with status %d (%.2fs)\n", t->suite,
                t->name, code, secs);
    else
        fprintf(stderr, "[FAIL] %s::%s: (%.2fs)\n", t->suite, t->name, secs);
}

static void run_one(const struct cr_compat_test *t, const struct options *o,
                    const sigset_t *child_mask, struct totals *sum)
{
    if (t->disabled) {
        fprintf(stderr, "[SKIP] %s::%s: Test is disabled\n", t->suite, t->name);
        sum->skipped++;
        return;
    }
    if (o->verbose)
        fprintf(stderr, "[RUN ] %s::%s\n", t->suite, t->name);
    fflush(NULL); /* or the child would print the parent's buffered output again */
    double start = now_s();
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "[FAIL] %s::%s: fork: %s\n", t->suite, t->name, strerror(errno));
        sum->tested++, sum->failing++, sum->crashing++;
        return;
    }
    if (pid == 0) {
        sigprocmask(SIG_SETMASK, child_mask, NULL);
        run_test(t);
    }
    int status = 0;
    int timed_out = wait_test(pid, t->timeout > 0 ? t->timeout : o->timeout_s, &status);
    size_t passed_before = sum->passing;
    judge(t, status, timed_out, now_s() - start, sum);
    if (o->verbose && sum->passing > passed_before)
        fprintf(stderr, "[PASS] %s::%s: (%.2fs)\n", t->suite, t->name, now_s() - start);
}

static int selected(const struct cr_compat_test *t, const char *filter)
{
    char full[512];
    if (!filter)
        return 1;
    snprintf(full, sizeof full, "%s/%s", t->suite, t->name);
    return fnmatch(filter, full, FNM_EXTMATCH) == 0 || fnmatch(filter, t->suite, 0) == 0;
}

static int by_suite_then_name(const void *pa, const void *pb)
{
    const struct cr_compat_test *a = *(const struct cr_compat_test *const *)pa;
    const struct cr_compat_test *b = *(const struct cr_compat_test *const *)pb;
    int c = strcmp(a->suite, b->suite);
    return c ? c : strcmp(a->name, b->name);
}

/* The registered tests in Criterion's order, or NULL when out of memory. */
static const struct cr_compat_test **sorted_tests(void)
{
    const struct cr_compat_test **v = calloc(n_registered + 1, sizeof *v);
    if (!v)
        return NULL;
    size_t i = 0;
    for (const struct cr_compat_test *t = registered; t; t = t->next)
        v[i++] = t;
    qsort(v, n_registered, sizeof *v, by_suite_then_name);
    return v;
}

/* Criterion's --list layout: "suite: N tests" then one branch per test. */
static void list_tests(const struct cr_compat_test **v, size_t n, const char *filter)
{
    for (size_t i = 0; i < n;) {
        size_t end = i, shown = 0;
        while (end < n && strcmp(v[end]->suite, v[i]->suite) == 0)
            shown += selected(v[end++], filter);
        if (shown)
            printf("%s: %zu test%s\n", v[i]->suite, shown, shown == 1 ? "" : "s");
        for (size_t left = shown; i < end; i++) {
            if (!selected(v[i], filter))
                continue;
            printf("%s %s%s%s%s\n", --left ? "├──" : "└──", v[i]->name,
                   v[i]->disabled ? " (skipped)" : "", v[i]->description ? " — " : "",
                   v[i]->description ? v[i]->description : "");
        }
    }
}

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s [OPTIONS]   (criterion-compat runner for TSan builds)\n"
            "    -l or --list: list the tests\n"
            "    --filter PATTERN: run tests whose suite/name (or suite) matches the glob\n"
            "    --timeout SECONDS: per-test limit for tests without .timeout (default %.0f)\n"
            "    --verbose[=N]: print [RUN ] and [PASS] lines\n"
            "    -jN, --jobs N, -q, --ascii, --color=X, -S: accepted, ignored\n",
            argv0, DEFAULT_TIMEOUT_S);
}

/* Returns 0, or 2 after printing usage for an unknown option. */
static int parse_options(int argc, char **argv, struct options *o)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-l") || !strcmp(a, "--list"))
            o->list = 1;
        else if (!strncmp(a, "--filter=", 9))
            o->filter = a + 9;
        else if (!strcmp(a, "--filter") && next)
            o->filter = argv[++i];
        else if (!strncmp(a, "--timeout=", 10))
            o->timeout_s = atof(a + 10);
        else if (!strcmp(a, "--timeout") && next)
            o->timeout_s = atof(argv[++i]);
        else if (!strncmp(a, "--verbose", 9))
            o->verbose = 1;
        else if ((!strcmp(a, "--jobs") || !strcmp(a, "-j")) && next)
            i++;
        else if (!strncmp(a, "--jobs=", 7) || !strncmp(a, "-j", 2) || !strcmp(a, "-q") ||
                 !strcmp(a, "--quiet") || !strcmp(a, "--ascii") || !strncmp(a, "--color", 7) ||
                 !strcmp(a, "-S") || !strcmp(a, "--short-filename"))
            continue;
        else {
            usage(argv[0]);
            return 2;
        }
    }
    if (o->timeout_s <= 0)
        o->timeout_s = DEFAULT_TIMEOUT_S;
    return 0;
}

int main(int argc, char **argv)
{
    struct options o = {0};
    if (parse_options(argc, argv, &o))
        return 2;
    const struct cr_compat_test **v = sorted_tests();
    if (!v) {
        fprintf(stderr, "criterion-compat: out of memory\n");
        return 1;
    }
    if (o.list) {
        list_tests(v, n_registered, o.filter);
        free(v);
        return 0;
    }
    sigset_t chld, child_mask;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, &child_mask);
    struct totals sum = {0};
    for (size_t i = 0; i < n_registered; i++)
        if (selected(v[i], o.filter))
            run_one(v[i], &o, &child_mask, &sum);
    free(v);
    fprintf(stderr, "[====] Synthesis: Tested: %zu | Passing: %zu | Failing: %zu | Crashing: %zu \n",
            sum.tested, sum.passing, sum.failing, sum.crashing);
    return sum.failing ? 1 : 0;
}
