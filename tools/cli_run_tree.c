/*
 * cli_run_tree.c — one budget for a whole command tree. `vramguard run
 * --budget X -- CMD` creates a private shared region named after the run
 * (run-<pid>-<random>), gives it the budget, starts CMD with
 * VRAMGUARD_SHARED naming it (every process CMD starts inherits that, so
 * the tree charges one budget), waits for CMD, and removes the region.
 *
 * vramguard stays CMD's parent for that: SIGINT, SIGTERM, SIGHUP and SIGQUIT
 * sent to vramguard are passed on to CMD (a terminal's own Ctrl-C already
 * reaches both, so it is not sent twice), and when CMD ends vramguard ends
 * the same way: with its exit status, or killed by the same signal. The
 * signals stay blocked and are taken synchronously (sigtimedwait), so a
 * signal that arrives at any moment after the fork is passed on.
 *
 * A nested run (inside such a tree, or any shared budget) keeps the
 * enclosing region and can only lower its budget: cli_run_nested().
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "vg_shared.h"

#define RUN "run"

static const int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
#define FORWARDED (int)(sizeof forwarded / sizeof forwarded[0])

/* The forwarded signals and SIGCHLD, which vramguard keeps blocked while
 * it waits and takes with sigtimedwait(): no handler runs, so nothing is
 * lost between a signal and the wait, and nothing depends on when a
 * runtime (or a sanitizer) delivers handlers. */
static void wait_set(sigset_t *set)
{
    sigemptyset(set);
    for (int i = 0; i < FORWARDED; i++)
        sigaddset(set, forwarded[i]);
    sigaddset(set, SIGCHLD);
}

/* Passes a signal on to the command unless the kernel sent it to the whole
 * foreground process group (a terminal's Ctrl-C: si_code > 0), which the
 * command received already. A signal ignored when vramguard started (nohup)
 * is discarded by the kernel and never gets here. */
static void forward(pid_t child, const siginfo_t *info)
{
    if (info->si_signo != SIGCHLD && info->si_code <= 0)
        kill(child, info->si_signo);
}

/* "run-<pid>-<8 hex digits>": unique per run, a valid region name. */
static void run_name(char *out, size_t len)
{
    unsigned int r;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        r = (unsigned int)ts.tv_nsec ^ (unsigned int)getpid() << 16;
    }
    snprintf(out, len, "run-%d-%08x", (int)getpid(), r);
}

/* Creates the region at `path` with `limit` for every device (VG__UNLIMITED:
 * the tree's processes set it from VRAMGUARD_BUDGET as they start). */
static int region_create(const char *path, uint64_t limit)
{
    vg__shm_t *r = NULL;
    char err[512];
    if (vg__shm_open(path, VG__SHM_CREATE, false, &r, err, sizeof err) != VG_OK) {
        cli_error(RUN, "cannot create the run's shared budget: %s", err);
        return CLI_EXIT_INTERNAL;
    }
    int rc = limit == VG__UNLIMITED ? VG_OK : vg__shm_set_limit(r, -1, limit);
    vg__shm_close(r);
    if (rc != VG_OK) {
        cli_error(RUN, "cannot set the budget of %s", path);
        unlink(path);
        return CLI_EXIT_INTERNAL;
    }
    return CLI_EXIT_OK;
}

int cli_exec(char **cmd)
{
    execvp(cmd[0], cmd);
    int err = errno;
    cli_error(NULL, "cannot run '%s': %s", cmd[0], strerror(err));
    return err == ENOENT || err == ENOTDIR ? CLI_EXIT_NOTFOUND : CLI_EXIT_NOEXEC;
}

/* Ends this process the way the command ended: its exit status, or the
 * same signal (without a core file of our own). */
static int end_like(int status)
{
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (!WIFSIGNALED(status))
        return CLI_EXIT_INTERNAL;
    int sig = WTERMSIG(status);
    struct rlimit none = {0, 0};
    sigset_t set;
    setrlimit(RLIMIT_CORE, &none);
    signal(sig, SIG_DFL);
    sigemptyset(&set);
    sigaddset(&set, sig);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    raise(sig);
    return 128 + sig; /* a signal that does not end a process */
}

/* Starts cmd as our child and waits for it, passing signals on. Out:
 * *status. */
static int start_and_wait(char **cmd, int *status)
{
    sigset_t set, old;
    wait_set(&set);
    sigprocmask(SIG_BLOCK, &set, &old);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        cli_error(RUN, "cannot start '%s': %s", cmd[0], strerror(errno));
        sigprocmask(SIG_SETMASK, &old, NULL);
        return CLI_EXIT_INTERNAL;
    }
    if (pid == 0) {
        sigprocmask(SIG_SETMASK, &old, NULL);
        _exit(cli_exec(cmd));
    }
    /* SIGCHLD wakes the wait when cmd ends; the timeout only bounds it
     * should a SIGCHLD be merged with an earlier one. */
    const struct timespec tick = {1, 0};
    pid_t got;
    while ((got = waitpid(pid, status, WNOHANG)) == 0) {
        siginfo_t info;
        if (sigtimedwait(&set, &info, &tick) > 0)
            forward(pid, &info);
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (got < 0) {
        cli_error(RUN, "cannot wait for '%s': %s", cmd[0], strerror(errno));
        return CLI_EXIT_INTERNAL;
    }
    return CLI_EXIT_OK;
}

int cli_run_tree(char **cmd, uint64_t limit)
{
    char name[64], path[CLI_PATH_MAX];
    int status = 0, rc;
    run_name(name, sizeof name);
    if (vg__shm_path(name, path, sizeof path) != VG_OK) {
        cli_error(RUN, "cannot name the run's shared budget");
        return CLI_EXIT_INTERNAL;
    }
    if ((rc = region_create(path, limit)) != CLI_EXIT_OK)
        return rc;
    /* The tree attaches and never creates: a process that outlives the run
     * finds the region gone and refuses (fail closed) instead of starting
     * an unlimited one of its own. */
    if (setenv("VRAMGUARD_SHARED", name, 1) != 0 ||
        setenv("VRAMGUARD_SHARED_CREATE", "0", 1) != 0 ||
        (limit != VG__UNLIMITED && unsetenv("VRAMGUARD_BUDGET") != 0)) {
        cli_error(RUN, "cannot set VRAMGUARD_SHARED: %s", strerror(errno));
        unlink(path);
        return CLI_EXIT_INTERNAL;
    }
    rc = start_and_wait(cmd, &status);
    unlink(path);
    return rc != CLI_EXIT_OK ? rc : end_like(status);
}

/* ------------------------------------------------------- nested runs */

typedef struct outer_limit {
    uint64_t min; /* the smallest limit in the region, VG__UNLIMITED if none */
} outer_limit_t;

static void smallest(const char *name, const vg__shm_t *snap, const unsigned char *alive,
                     void *ctx)
{
    outer_limit_t *o = ctx;
    (void)name;
    (void)alive;
    o->min = snap->h.default_limit < o->min ? snap->h.default_limit : o->min;
    for (int d = 0; d < VG__SHM_DEVICES; d++)
        if (snap->dev[d].ordinal >= 0 && snap->dev[d].limit < o->min)
            o->min = snap->dev[d].limit;
}

/* The region's smallest limit; *exists false when there is no region yet. */
static uint64_t region_limit(const char *region, bool *exists)
{
    char path[CLI_PATH_MAX];
    outer_limit_t o = {VG__UNLIMITED};
    *exists = vg__shm_path(region, path, sizeof path) == VG_OK && access(path, F_OK) == 0;
    if (*exists && cli_regions(RUN, region, smallest, &o) != CLI_EXIT_OK)
        return 0; /* unreadable: nothing may be asked of it */
    return o.min;
}

static int lower_region(const char *region, uint64_t limit)
{
    char path[CLI_PATH_MAX], err[512];
    vg__shm_t *r = NULL;
    if (vg__shm_path(region, path, sizeof path) != VG_OK ||
        vg__shm_open(path, VG__SHM_ATTACH, true, &r, err, sizeof err) != VG_OK) {
        cli_error(RUN, "cannot open the enclosing shared budget '%s': %s", region,
                  r ? "bad name" : err);
        return CLI_EXIT_USAGE;
    }
    int rc = vg__shm_set_limit(r, -1, limit);
    vg__shm_close(r);
    if (rc != VG_OK) {
        cli_error(RUN, "cannot lock the enclosing shared budget '%s'", region);
        return CLI_EXIT_INTERNAL;
    }
    return CLI_EXIT_OK;
}

int cli_run_nested(const cli_nest_t *n)
{
    char a[32], b[32];
    bool exists = false;
    uint64_t outer = n->outer_bytes;
    if (n->region) {
        uint64_t in_region = region_limit(n->region, &exists);
        outer = in_region < outer ? in_region : outer;
    }
    if (n->bytes > outer) {
        cli_error(RUN, "--budget %s is more than the enclosing budget (%s%s%s); a nested "
                       "run can only lower it",
                  vg__fmt_bytes(n->bytes, a, sizeof a), vg__fmt_bytes(outer, b, sizeof b),
                  n->region ? ", shared budget " : "", n->region ? n->region : "");
        return CLI_EXIT_USAGE;
    }
    return exists && n->bytes < outer ? lower_region(n->region, n->bytes) : CLI_EXIT_OK;
}
