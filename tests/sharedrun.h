/*
 * sharedrun.h — what the shared-budget tests (test_shared.c,
 * test_shared_slots.c, test_shared_region.c) share: a region of their own
 * for each test, tests/clients/client_shared started under the shim and
 * read line by line, and a forked child that may not hang the test.
 * Include it once, after criterion; it brings clientrun.h and testutil.h.
 *
 * Every test names its own region (name_region: pid and tag) and removes
 * its files (drop_region), so tests can run side by side.
 */
#ifndef VG_SHAREDRUN_H
#define VG_SHAREDRUN_H

#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clientrun.h"
#include "testutil.h"
#include "vg_account.h"
#include "vg_shared.h"

/* ------------------------------------------------------------ regions */

static char region_name[64], region_file[128];
static bool no_shared_name; /* child_start: leave VRAMGUARD_SHARED unset */

static inline void name_region(const char *tag)
{
    snprintf(region_name, sizeof region_name, "vgtest-%d-%s", (int)getpid(), tag);
    snprintf(region_file, sizeof region_file, VG__SHM_PREFIX "%s", region_name);
    unlink(region_file);
}

static inline void drop_region(void) { unlink(region_file); }

static inline vg__shm_t *open_region(void)
{
    vg__shm_t *r = NULL;
    char err[512];
    cr_assert_eq(vg__shm_open(region_file, VG__SHM_CREATE, false, &r, err, sizeof err), VG_OK,
                 "%s", err);
    return r;
}

/* A snapshot of the test's region; the caller frees it. */
static inline vg__shm_t *snap(void)
{
    vg__shm_t *r = NULL, *copy = malloc(sizeof *copy);
    char err[512];
    cr_assert_not_null(copy);
    cr_assert_eq(vg__shm_open(region_file, VG__SHM_ATTACH, false, &r, err, sizeof err), VG_OK,
                 "%s", err);
    cr_assert_eq(vg__shm_snapshot(r, copy), VG_OK);
    vg__shm_close(r);
    return copy;
}

/* The entry the clients use: they all see one device, ordinal 0. */
static inline const vg__shm_device_t *dev0(const vg__shm_t *r)
{
    for (int d = 0; d < VG__SHM_DEVICES; d++)
        if (r->dev[d].ordinal == 0)
            return &r->dev[d];
    cr_assert_fail("no device entry for ordinal 0");
    return NULL;
}

/* ------------------------------------------------------------ clients */

typedef struct child {
    pid_t pid;
    int in, out;          /* its stdin (write end), its stdout (read end) */
    char err_path[64];    /* its stderr, in a file */
    char out_buf[4096];
} child_t;

/* Starts client_shared with `args` under the shim, sharing the test's
 * region; `extra` adds "NAME=value" entries (NULL-terminated, may be NULL). */
static inline void child_start(child_t *c, const char *const *args, const char *const *extra)
{
    static const char *const drop[] = {"LD_PRELOAD=", "LD_LIBRARY_PATH=", "VRAMGUARD_",
                                       "CUDA_DEVICE_MEMORY_", "FAKECUDA_", "ASAN_OPTIONS=",
                                       "HOLD_MS=", NULL};
    memset(c, 0, sizeof *c);
    const char *add[24] = {cat3("LD_PRELOAD=", build_dir(), "/libvramguard-preload.so"),
                           cat3("LD_LIBRARY_PATH=", build_dir(), "/fakecuda"),
                           cat3(no_shared_name ? "VRAMGUARD_UNUSED=" : "VRAMGUARD_SHARED=",
                                region_name, ""),
                           asan_entry(":detect_leaks=0")};
    for (size_t i = 0; extra && extra[i] && i < 19; i++)
        add[i + 4] = extra[i];
    char **env = env_make(drop, add);
    for (size_t i = 0; i < 4; i++)
        free((char *)add[i]);
    char exe[4096];
    snprintf(exe, sizeof exe, "%s/clients/client_shared", build_dir());
    char *argv[8] = {exe};
    for (int i = 0; args[i] && i < 6; i++)
        argv[i + 1] = (char *)args[i];
    int in[2], out[2];
    cr_assert_eq(pipe2(in, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(out, O_CLOEXEC), 0);
    snprintf(c->err_path, sizeof c->err_path, "/tmp/vg-shared-err-XXXXXX");
    int efd = mkstemp(c->err_path);
    cr_assert_geq(efd, 0);
    c->pid = child_spawn(argv, env, (int[3]){in[0], out[1], efd});
    close(in[0]);
    close(out[1]);
    close(efd);
    c->in = in[1];
    c->out = out[0];
    env_free(env);
}

/* Reads the child's stdout until a newline arrives (or 60 s pass). */
static inline const char *child_line(child_t *c)
{
    size_t len = strlen(c->out_buf);
    for (int waited = 0; !strchr(c->out_buf, '\n') && waited < 60000; waited += 100) {
        struct pollfd p = {.fd = c->out, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0)
            continue;
        ssize_t got = read(c->out, c->out_buf + len, sizeof c->out_buf - 1 - len);
        if (got <= 0)
            break;
        len += (size_t)got;
        c->out_buf[len] = '\0';
    }
    return c->out_buf;
}

/* Closes its stdin, waits for it, collects the rest of stdout. Returns the
 * exit status (128+N for signal N); stderr goes into err (may be NULL). */
static inline int child_finish(child_t *c, char *err, size_t errlen)
{
    close(c->in);
    size_t len = strlen(c->out_buf);
    ssize_t got;
    while ((got = read(c->out, c->out_buf + len, sizeof c->out_buf - 1 - len)) > 0)
        len += (size_t)got;
    c->out_buf[len] = '\0';
    close(c->out);
    int st = child_wait(c->pid);
    if (err)
        read_small_file(c->err_path, err, errlen);
    unlink(c->err_path);
    return st;
}

static inline long long value_of(const char *text, const char *key)
{
    char k[64];
    snprintf(k, sizeof k, "%s=", key);
    const char *p = strstr(text, k);
    return p ? strtoll(p + strlen(k), NULL, 10) : -1;
}

static inline void copy_text(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* Runs `try BYTES` to the end; returns its rc (CUresult). */
static inline int try_alloc(uint64_t bytes, const char *const *extra, char *out, size_t outlen)
{
    char b[32];
    snprintf(b, sizeof b, "%llu", (unsigned long long)bytes);
    const char *args[] = {"try", b, NULL};
    child_t c;
    child_start(&c, args, extra);
    char err[4096];
    int st = child_finish(&c, err, sizeof err);
    cr_assert_eq(st, 0, "client exited %d: %s / %s", st, c.out_buf, err);
    if (out)
        copy_text(out, outlen, c.out_buf);
    return (int)value_of(c.out_buf, "rc");
}

#define OOM 2 /* CUDA_ERROR_OUT_OF_MEMORY */
#define BUDGET_ENV "VRAMGUARD_BUDGET=2GiB"

static inline void hold_start(child_t *c, uint64_t bytes, const char *const *extra)
{
    char b[32];
    snprintf(b, sizeof b, "%llu", (unsigned long long)bytes);
    const char *args[] = {"hold", b, NULL};
    child_start(c, args, extra);
    const char *l = child_line(c);
    cr_assert_eq(value_of(l, "rc"), 0, "holder: '%s'", l);
}

/* ---------------------------------------------------- forked children */

/* Runs fn in a forked child and waits at most `ms` for it: a hang fails
 * the test instead of stalling it. Returns the child's exit code. */
static inline int bounded(int (*fn)(void), int ms)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0)
        _exit(fn());
    int st = 0;
    for (int waited = 0; waited < ms; waited += 5) {
        if (waitpid(pid, &st, WNOHANG) == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        usleep(5000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    cr_assert_fail("still waiting after %d ms", ms);
    return -1;
}

#endif
