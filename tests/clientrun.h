/*
 * clientrun.h — starting child processes from a test: a client program
 * (tests/clients) under the preload shim, or build/vramguard itself. Every
 * test that runs a child includes this once; nothing here is compiled into
 * the product.
 *
 * The child gets its own environment, built from the runner's: LD_PRELOAD
 * and the test driver are set for the child only, never for the test
 * runner. Its stdout and stderr come back through pipes, read until both
 * close or CHILD_TIMEOUT_S passes (then it is killed).
 *
 * Needs VG_TEST_BUILD (tests/run-tests.sh exports it): the build folder with
 * vramguard, libvramguard-preload.so, fakecuda/libcuda.so.1 and clients/.
 */
#ifndef VG_CLIENTRUN_H
#define VG_CLIENTRUN_H

#include <criterion/criterion.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define CHILD_TIMEOUT_S 120 /* per child; sanitizer builds are slow */
#define CHILD_KEEP (-1)     /* a child_spawn() fd: the runner's stays */
#define CHILD_DEVNULL (-2)  /* a child_spawn() fd: /dev/null */

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})
#define ENV(...) ((const char *const[]){__VA_ARGS__, NULL})

/* ------------------------------------------------------ the environment */

static inline const char *build_dir(void)
{
    const char *b = getenv("VG_TEST_BUILD");
    cr_assert(b && *b, "VG_TEST_BUILD is not set (run through tests/run-tests.sh)");
    return b;
}

/* a b c joined, malloc'd; the caller frees it. */
static inline char *cat3(const char *a, const char *b, const char *c)
{
    size_t n = strlen(a) + strlen(b) + strlen(c) + 1;
    char *s = malloc(n);
    cr_assert_not_null(s);
    if (s) /* the TSan harness's cr_assert does not tell the compiler it stops */
        snprintf(s, n, "%s%s%s", a, b, c);
    return s;
}

/* "ASAN_OPTIONS=" with the runner's options, then `more` (":opt=v..." or
 * ""). The preloaded (instrumented) shim loads before an instrumented
 * child's ASan runtime, which ASan's link-order check would refuse; the
 * check is turned off for the child only. The caller frees it. */
static inline char *asan_entry(const char *more)
{
    const char *asan = getenv("ASAN_OPTIONS");
    char *tail = cat3(asan && *asan ? ":" : "", "verify_asan_link_order=0", more);
    char *e = cat3("ASAN_OPTIONS=", asan ? asan : "", tail);
    free(tail);
    return e;
}

/* True when `e` ("NAME=value") names the variable `set` ("NAME=..."). */
static inline bool env_same_name(const char *e, const char *set)
{
    size_t n = strcspn(set, "=");
    return !strncmp(e, set, n) && e[n] == '=';
}

static inline bool env_dropped(const char *e, const char *const *drop, const char *const *add)
{
    for (size_t i = 0; drop && drop[i]; i++)
        if (!strncmp(e, drop[i], strlen(drop[i])))
            return true;
    for (size_t i = 0; add && add[i]; i++)
        if (env_same_name(e, add[i]))
            return true;
    return false;
}

/* The child's environment: the runner's, less every entry that starts with
 * a `drop` prefix or names a variable `add` sets, then `add` ("NAME=value";
 * of two that name one variable, the later wins). Both lists are
 * NULL-terminated and may be NULL. Everything is copied; free with
 * env_free(). */
static inline char **env_make(const char *const *drop, const char *const *add)
{
    size_t n = 0, m = 0, k = 0;
    while (environ[n])
        n++;
    while (add && add[m])
        m++;
    char **env = calloc(n + m + 1, sizeof *env);
    cr_assert_not_null(env);
    for (size_t i = 0; i < n; i++)
        if (!env_dropped(environ[i], drop, add))
            env[k++] = strdup(environ[i]);
    for (size_t i = 0; i < m; i++)
        if (!env_dropped(add[i], NULL, add + i + 1))
            env[k++] = strdup(add[i]);
    return env;
}

static inline void env_free(char **env)
{
    for (size_t i = 0; env[i]; i++)
        free(env[i]);
    free(env);
}

/* ------------------------------------------------------ starting a child */

/* Starts argv[0] with `env`; fd[0..2] become its stdin, stdout and stderr
 * (CHILD_KEEP: the runner's, CHILD_DEVNULL: /dev/null). */
static inline pid_t child_spawn(char *const argv[], char *const env[], const int fd[3])
{
    static const int flags[3] = {O_RDONLY, O_WRONLY, O_WRONLY};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    for (int i = 0; i < 3; i++) {
        if (fd[i] >= 0)
            posix_spawn_file_actions_adddup2(&fa, fd[i], i);
        else if (fd[i] == CHILD_DEVNULL)
            posix_spawn_file_actions_addopen(&fa, i, "/dev/null", flags[i], 0);
    }
    pid_t pid;
    int rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, env);
    posix_spawn_file_actions_destroy(&fa);
    cr_assert_eq(rc, 0, "posix_spawn %s: %s", argv[0], strerror(rc));
    return pid;
}

/* Waits for pid; its exit code, or 128+N for signal N. */
static inline int child_wait(pid_t pid)
{
    int st = 0;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Where a child's output goes: NUL-terminated text, the excess dropped.
 * err NULL leaves the child's stderr the runner's. */
typedef struct child_out {
    char *out;
    size_t out_cap;
    char *err;
    size_t err_cap;
} child_out_t;

/* Appends what is readable on fd to buf (keeping it NUL-terminated; the
 * excess is dropped). Returns false at end of file. */
static inline bool drain(int fd, char *buf, size_t cap)
{
    char tmp[4096];
    ssize_t got = read(fd, tmp, sizeof tmp);
    if (got <= 0)
        return false;
    size_t len = strlen(buf), room = cap - 1 - len;
    size_t n = (size_t)got < room ? (size_t)got : room;
    memcpy(buf + len, tmp, n);
    buf[len + n] = '\0';
    return true;
}

/* Reads the child's stdout and stderr (err_fd -1: none) until both close
 * or CHILD_TIMEOUT_S passes (then the child is killed). */
static inline void child_collect(pid_t pid, int out_fd, int err_fd, const child_out_t *o)
{
    struct pollfd fds[2] = {{.fd = out_fd, .events = POLLIN}, {.fd = err_fd, .events = POLLIN}};
    time_t deadline = time(NULL) + CHILD_TIMEOUT_S;
    int open_fds = err_fd >= 0 ? 2 : 1;
    while (open_fds > 0) {
        if (time(NULL) > deadline) {
            kill(pid, SIGKILL);
            cr_log_error("child %d timed out", (int)pid);
            if (o->err)
                strncat(o->err, "\n[test: child timed out]\n", o->err_cap - strlen(o->err) - 1);
            break;
        }
        if (poll(fds, 2, 1000) <= 0)
            continue;
        for (int i = 0; i < 2; i++)
            if (fds[i].fd >= 0 && (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) &&
                !drain(fds[i].fd, i ? o->err : o->out, i ? o->err_cap : o->out_cap)) {
                fds[i].fd = -1;
                open_fds--;
            }
    }
}

/* Runs argv[0] with `env` to its end, its output into *o (emptied first).
 * Its stdin stays the runner's. Returns its exit code, 128+N for signal N. */
static inline int child_run(char *const argv[], char *const env[], const child_out_t *o)
{
    int out[2], err[2] = {-1, -1};
    o->out[0] = '\0';
    cr_assert_eq(pipe2(out, O_CLOEXEC), 0);
    if (o->err) {
        o->err[0] = '\0';
        cr_assert_eq(pipe2(err, O_CLOEXEC), 0);
    }
    pid_t pid = child_spawn(argv, env, (int[3]){CHILD_KEEP, out[1], o->err ? err[1] : CHILD_KEEP});
    close(out[1]);
    if (o->err)
        close(err[1]);
    child_collect(pid, out[0], err[0], o);
    close(out[0]);
    if (o->err)
        close(err[0]);
    return child_wait(pid);
}

static inline void read_small_file(const char *path, char *buf, size_t cap)
{
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = '\0';
    fclose(f);
}

/* The whole of a file (an audit log) as a string the caller frees; fails
 * the test when it cannot be read. */
static inline char *read_whole_file(const char *path)
{
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "cannot read %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    cr_assert_not_null(buf);
    buf[fread(buf, 1, (size_t)n, f)] = '\0';
    fclose(f);
    return buf;
}

/* ------------------------------------------------------ build/vramguard */

#define CLI_OUT_MAX (64 * 1024)

typedef struct cli_result {
    int status; /* exit code; 128+N for signal N */
    char out[CLI_OUT_MAX], err[CLI_OUT_MAX];
} cli_result_t;

/* Runs build/vramguard with args (NULL-terminated, without argv[0]) in
 * `env`; returns its status, its output in *o. */
static inline int cli_run(char *const env[], const char *const *args, const child_out_t *o)
{
    char exe[4096];
    char *argv[32] = {exe};
    size_t a = 1;
    snprintf(exe, sizeof exe, "%s/vramguard", build_dir());
    for (; args[a - 1] && a < 31; a++)
        argv[a] = (char *)args[a - 1];
    argv[a] = NULL;
    return child_run(argv, env, o);
}

/* Runs build/vramguard into *r; see cli_run(). */
static inline void cli_result_of(cli_result_t *r, char *const env[], const char *const *args)
{
    memset(r, 0, sizeof *r);
    r->status = cli_run(env, args, &(child_out_t){r->out, sizeof r->out, r->err, sizeof r->err});
}

/* Runs build/vramguard with args (NULL-terminated, without argv[0]) in the
 * runner's environment without the settings a test must decide, plus `set`
 * (NULL-terminated "NAME=value", at most CLI_MAX_SET, may be NULL). The
 * child's ASan link-order check is off (asan_entry()). */
#define CLI_MAX_SET 8
static inline void cli_run_clean(cli_result_t *r, const char *const *set,
                                 const char *const *args)
{
    static const char *const drop[] = {"LD_PRELOAD=", "VRAMGUARD_", "CUDA_DEVICE_MEMORY_LIMIT",
                                       "FAKECUDA_", "ASAN_OPTIONS=", NULL};
    const char *add[CLI_MAX_SET + 2] = {asan_entry("")};
    for (size_t i = 0; set && set[i] && i < CLI_MAX_SET; i++)
        add[i + 1] = set[i];
    char **env = env_make(drop, add);
    free((char *)add[0]);
    cli_result_of(r, env, args);
    env_free(env);
}

static inline int lines(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* ------------------------------------------------------ client programs */

#define RUN_ENV_MAX 8

typedef struct run_opts {
    const char *method, *path, *chunk, *max, *failures; /* failures may be NULL */
    const char *budget;           /* VRAMGUARD_BUDGET; NULL leaves it unset */
    const char *exe;              /* the program; NULL: build/clients/client_METHOD */
    const char *env[RUN_ENV_MAX]; /* more "NAME=value", NULL-terminated */
} run_opts_t;

typedef struct run_result {
    int status; /* exit code; 128+N for signal N; -1 not run */
    char out[16384], err[32768];
    char report[512], child_report[512]; /* FAKECUDA_REPORT contents */
} run_result_t;

/* The client's environment: the runner's minus settings that must come
 * only from the test, plus the shim, the test driver, the report, the
 * budget and the options. */
static inline char **client_env(const run_opts_t *o, const char *report)
{
    static const char *const drop[] = {"LD_PRELOAD=", "LD_LIBRARY_PATH=", "VRAMGUARD_",
                                       "CUDA_DEVICE_MEMORY", "FAKECUDA_", "ASAN_OPTIONS=",
                                       "CLIENT_", NULL};
    const char *add[RUN_ENV_MAX + 6] = {NULL};
    size_t k = 0;
    add[k++] = cat3("LD_PRELOAD=", build_dir(), "/libvramguard-preload.so");
    add[k++] = cat3("LD_LIBRARY_PATH=", build_dir(), "/fakecuda");
    add[k++] = cat3("FAKECUDA_REPORT=", report, "");
    add[k++] = asan_entry("");
    if (o->budget)
        add[k++] = cat3("VRAMGUARD_BUDGET=", o->budget, "");
    size_t mine = k;
    for (size_t i = 0; i < RUN_ENV_MAX && o->env[i]; i++)
        add[k++] = o->env[i];
    char **env = env_make(drop, add);
    for (size_t i = 0; i < mine; i++)
        free((char *)add[i]);
    return env;
}

/* Starts one client; stdout and stderr go to out_fd/err_fd (-1: /dev/null). */
static inline pid_t spawn_client(const run_opts_t *o, const char *report, int out_fd, int err_fd)
{
    char *exe = o->exe ? cat3(o->exe, "", "") : cat3(build_dir(), "/clients/client_", o->method);
    char *argv[] = {exe, (char *)o->path, (char *)o->chunk, (char *)o->max,
                    (char *)o->failures, NULL};
    char **env = client_env(o, report);
    int fd[3] = {CHILD_KEEP, out_fd >= 0 ? out_fd : CHILD_DEVNULL,
                 err_fd >= 0 ? err_fd : CHILD_DEVNULL};
    pid_t pid = child_spawn(argv, env, fd);
    env_free(env);
    free(exe);
    return pid;
}

/* Runs one client under the shim and fills *r; the report of a child it
 * forks (REPORT.child) goes into r->child_report. */
static inline void run_client(const run_opts_t *o, run_result_t *r)
{
    memset(r, 0, sizeof *r);
    r->status = -1;
    char report[] = "/tmp/vg-run-report-XXXXXX";
    int rfd = mkstemp(report);
    cr_assert_geq(rfd, 0, "mkstemp");
    close(rfd);
    int out[2], err[2];
    cr_assert_eq(pipe2(out, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(err, O_CLOEXEC), 0);
    pid_t pid = spawn_client(o, report, out[1], err[1]);
    close(out[1]);
    close(err[1]);
    child_collect(pid, out[0], err[0],
                  &(child_out_t){r->out, sizeof r->out, r->err, sizeof r->err});
    close(out[0]);
    close(err[0]);
    r->status = child_wait(pid);
    read_small_file(report, r->report, sizeof r->report);
    char *child = cat3(report, ".child", "");
    read_small_file(child, r->child_report, sizeof r->child_report);
    unlink(child);
    unlink(report);
    free(child);
}

/* The client's line for `path` ("path=NAME ..."), or NULL. */
static inline const char *line_for(const char *out, const char *path)
{
    size_t n = strlen(path);
    for (const char *l = out; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
        if (!strncmp(l, "path=", 5) && !strncmp(l + 5, path, n) && (l[5 + n] == ' '))
            return l;
    return NULL;
}

/* The number after " key=" (or "key=" at the start) on the first line of
 * `text`; -1 when absent. */
static inline long long field(const char *text, const char *key)
{
    size_t n = strlen(key);
    const char *end = strchr(text, '\n');
    for (const char *p = text; p && *p && (!end || p < end); p = strchr(p, ' ')) {
        p += *p == ' ';
        if (!strncmp(p, key, n) && p[n] == '=')
            return strtoll(p + n + 1, NULL, 10);
    }
    return -1;
}

/* Occurrences of `needle` in `hay`. */
static inline int count_of(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

#endif
