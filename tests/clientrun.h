/*
 * clientrun.h — starting a client program (tests/clients) under the preload
 * shim, as tests/test_shim.c does: LD_PRELOAD and the test driver are set
 * for the child only, never for the test runner. Used by test_audit.c and
 * test_badptr.c (each includes it once).
 *
 * Needs VG_TEST_BUILD (tests/run-tests.sh exports it).
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

#define RUN_TIMEOUT_S 120 /* per client; sanitizer builds are slow */
#define RUN_ENV_MAX 8

typedef struct run_opts {
    const char *method, *path, *chunk, *max, *failures; /* failures may be NULL */
    const char *env[RUN_ENV_MAX]; /* "NAME=value", NULL-terminated */
} run_opts_t;

typedef struct run_result {
    int status; /* exit code; 128+N for signal N; -1 not run */
    char out[16384], err[32768];
    char report[512]; /* FAKECUDA_REPORT contents */
} run_result_t;

static const char *build_dir(void)
{
    const char *b = getenv("VG_TEST_BUILD");
    cr_assert(b && *b, "VG_TEST_BUILD is not set (run through tests/run-tests.sh)");
    return b;
}

static char *cat3(const char *a, const char *b, const char *c)
{
    size_t n = strlen(a) + strlen(b) + strlen(c) + 1;
    char *s = malloc(n);
    cr_assert_not_null(s);
    snprintf(s, n, "%s%s%s", a, b, c);
    return s;
}

static bool env_reserved(const char *e)
{
    static const char *const prefixes[] = {"LD_PRELOAD=", "LD_LIBRARY_PATH=", "VRAMGUARD_",
                                           "CUDA_DEVICE_MEMORY", "FAKECUDA_", "ASAN_OPTIONS=",
                                           "CLIENT_"};
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++)
        if (!strncmp(e, prefixes[i], strlen(prefixes[i])))
            return true;
    return false;
}

/* The child's environment: the runner's minus reserved names, plus the
 * shim, the test driver, the report and the options. */
static char **env_build(const run_opts_t *o, const char *report)
{
    size_t n = 0, k = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + RUN_ENV_MAX + 8, sizeof *env);
    cr_assert_not_null(env);
    for (size_t i = 0; i < n; i++)
        if (!env_reserved(environ[i]))
            env[k++] = strdup(environ[i]);
    const char *b = build_dir(), *asan = getenv("ASAN_OPTIONS");
    env[k++] = cat3("LD_PRELOAD=", b, "/libvramguard-preload.so");
    env[k++] = cat3("LD_LIBRARY_PATH=", b, "/fakecuda");
    env[k++] = cat3("FAKECUDA_REPORT=", report, "");
    env[k++] = cat3("ASAN_OPTIONS=", asan && *asan ? asan : "",
                    asan && *asan ? ":verify_asan_link_order=0" : "verify_asan_link_order=0");
    for (size_t i = 0; i < RUN_ENV_MAX && o->env[i]; i++)
        env[k++] = strdup(o->env[i]);
    return env;
}

static void env_free(char **env)
{
    for (size_t i = 0; env[i]; i++)
        free(env[i]);
    free(env);
}

static bool drain(int fd, char *buf, size_t cap)
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

static void collect(pid_t pid, int out_fd, int err_fd, run_result_t *r)
{
    struct pollfd fds[2] = {{.fd = out_fd, .events = POLLIN}, {.fd = err_fd, .events = POLLIN}};
    time_t deadline = time(NULL) + RUN_TIMEOUT_S;
    int open_fds = 2;
    while (open_fds > 0) {
        if (time(NULL) > deadline) {
            kill(pid, SIGKILL);
            break;
        }
        if (poll(fds, 2, 1000) <= 0)
            continue;
        for (int i = 0; i < 2; i++)
            if (fds[i].fd >= 0 && (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) &&
                !drain(fds[i].fd, i ? r->err : r->out, i ? sizeof r->err : sizeof r->out)) {
                fds[i].fd = -1;
                open_fds--;
            }
    }
}

static void read_small_file(const char *path, char *buf, size_t cap)
{
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = '\0';
    fclose(f);
}

/* Starts one client; stdout and stderr go to out_fd/err_fd (-1: /dev/null). */
static pid_t spawn_client(const run_opts_t *o, const char *report, int out_fd, int err_fd)
{
    char *exe = cat3(build_dir(), "/clients/client_", o->method);
    char *argv[] = {exe, (char *)o->path, (char *)o->chunk, (char *)o->max,
                    (char *)o->failures, NULL};
    char **env = env_build(o, report);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    if (out_fd >= 0)
        posix_spawn_file_actions_adddup2(&fa, out_fd, 1);
    else
        posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    if (err_fd >= 0)
        posix_spawn_file_actions_adddup2(&fa, err_fd, 2);
    else
        posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    int rc = posix_spawn(&pid, exe, &fa, NULL, argv, env);
    posix_spawn_file_actions_destroy(&fa);
    cr_assert_eq(rc, 0, "posix_spawn %s: %s", exe, strerror(rc));
    env_free(env);
    free(exe);
    return pid;
}

static int wait_status(pid_t pid)
{
    int st = 0;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Runs one client under the shim and fills *r. */
static void run_client(const run_opts_t *o, run_result_t *r)
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
    collect(pid, out[0], err[0], r);
    close(out[0]);
    close(err[0]);
    r->status = wait_status(pid);
    read_small_file(report, r->report, sizeof r->report);
    unlink(report);
}

/* The client's line for `path` ("path=NAME ..."), or NULL. */
static const char *line_for(const char *out, const char *path)
{
    size_t n = strlen(path);
    for (const char *l = out; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
        if (!strncmp(l, "path=", 5) && !strncmp(l + 5, path, n) && (l[5 + n] == ' '))
            return l;
    return NULL;
}

/* The number after " key=" on the first line of `text`; -1 when absent. */
static long long field(const char *text, const char *key)
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
static int count_of(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

#endif
