/*
 * cli_selftest.c — `vramguard check`'s self-test: proof that the shim
 * catches an allocation made the way cudart makes it.
 *
 * The parent re-executes this binary as the hidden `__selftest` command with
 * LD_PRELOAD=<the shim> and a 64 MiB budget. The child reaches the driver as
 * cudart does (measured on driver 580, CUDA 13.0): dlopen("libcuda.so.1"),
 * dlsym "cuGetProcAddress_v2", ask it for "cuGetProcAddress" itself, and
 * fetch every other entry point through the pointer it returned. It must
 * see 128 MiB refused with CUDA_ERROR_OUT_OF_MEMORY, the budget as
 * cuMemGetInfo's total, and 16 MiB granted when the budget has room (see
 * st_under). It prints one line, which the parent reads:
 * "PASS <refused bytes> <budget bytes> <bytes in use>" or "FAIL <reason>".
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cudaTypedefs.h>

#include "cli.h"
#include "vg_base.h"
#include "vg_driver.h"

#define ST_BUDGET (64ull << 20)    /* bytes */
#define ST_OVER (128ull << 20)     /* bytes: must be refused */
#define ST_UNDER (16ull << 20)     /* bytes: must be granted */
#define ST_BUDGET_TEXT "64MiB"
#define ST_TIMEOUT_MS 30000
#define ST_OUT_MAX 8192            /* bytes of the child's output kept */

extern char **environ;

/* ------------------------------------------------------ the child */

/* The entry points, with the ABIs of the versions asked for. */
typedef struct st_api {
    PFN_cuInit_v2000 init;
    PFN_cuDeviceGet_v2000 device_get;
    PFN_cuDevicePrimaryCtxRetain_v7000 ctx_retain;
    PFN_cuCtxSetCurrent_v4000 ctx_set;
    PFN_cuMemAlloc_v3020 alloc;
    PFN_cuMemFree_v3020 free;
    PFN_cuMemGetInfo_v3020 info;
} st_api_t;

static int st_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int st_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    return CLI_EXIT_FAIL;
}

static const char *st_bytes(uint64_t n, char *buf)
{
    return vg__fmt_bytes(n, buf, 32);
}

/* The driver's pointer for `name` at `version` through cudart's path. */
static void *st_get(PFN_cuGetProcAddress_v12000 gpa, const char *name,
                    int version)
{
    void *fn = NULL;
    CUdriverProcAddressQueryResult found;
    if (gpa(name, &fn, version, CU_GET_PROC_ADDRESS_DEFAULT, &found) !=
            CUDA_SUCCESS ||
        found != CU_GET_PROC_ADDRESS_SUCCESS)
        return NULL;
    return fn;
}

static int st_resolve(st_api_t *api)
{
    /* cudart loads "libcuda.so.1"; the driver check uses VRAMGUARD_LIBCUDA
     * when it is set, and so does the self-test, or it would test another
     * driver than the one `check` just listed. */
    const char *lib = getenv("VRAMGUARD_LIBCUDA");
    lib = lib && *lib ? lib : "libcuda.so.1";
    void *h = dlopen(lib, RTLD_NOW);
    if (!h)
        return st_fail("cannot load %s: %s", lib, dlerror());
    PFN_cuGetProcAddress_v12000 gpa2 =
        (PFN_cuGetProcAddress_v12000)dlsym(h, "cuGetProcAddress_v2");
    if (!gpa2)
        return st_fail("%s has no cuGetProcAddress_v2", lib);
    PFN_cuGetProcAddress_v12000 gpa =
        (PFN_cuGetProcAddress_v12000)st_get(gpa2, "cuGetProcAddress", 12000);
    if (!gpa)
        return st_fail("cuGetProcAddress_v2 gave no cuGetProcAddress");
    api->init = (PFN_cuInit_v2000)st_get(gpa, "cuInit", 2000);
    api->device_get = (PFN_cuDeviceGet_v2000)st_get(gpa, "cuDeviceGet", 2000);
    api->ctx_retain = (PFN_cuDevicePrimaryCtxRetain_v7000)st_get(
        gpa, "cuDevicePrimaryCtxRetain", 7000);
    api->ctx_set =
        (PFN_cuCtxSetCurrent_v4000)st_get(gpa, "cuCtxSetCurrent", 4000);
    api->alloc = (PFN_cuMemAlloc_v3020)st_get(gpa, "cuMemAlloc", 3020);
    api->free = (PFN_cuMemFree_v3020)st_get(gpa, "cuMemFree", 3020);
    api->info = (PFN_cuMemGetInfo_v3020)st_get(gpa, "cuMemGetInfo", 3020);
    if (!api->init || !api->device_get || !api->ctx_retain ||
        !api->ctx_set || !api->alloc || !api->free || !api->info)
        return st_fail("cuGetProcAddress did not give every entry point");
    return CLI_EXIT_OK;
}

static int st_context(const st_api_t *a)
{
    CUdevice dev;
    CUcontext ctx;
    CUresult rc;
    if ((rc = a->init(0)) != CUDA_SUCCESS)
        return st_fail("cuInit: %s", vg__cu_name(rc));
    if ((rc = a->device_get(&dev, 0)) != CUDA_SUCCESS)
        return st_fail("cuDeviceGet(0): %s", vg__cu_name(rc));
    if ((rc = a->ctx_retain(&ctx, dev)) != CUDA_SUCCESS)
        return st_fail("cuDevicePrimaryCtxRetain: %s", vg__cu_name(rc));
    if ((rc = a->ctx_set(ctx)) != CUDA_SUCCESS)
        return st_fail("cuCtxSetCurrent: %s", vg__cu_name(rc));
    return CLI_EXIT_OK;
}

/* The 16 MiB request must be granted when the budget has room for it. On a
 * real GPU the engine charges the context's own memory (about 500 MiB on an
 * H100, measured through NVML) to the budget, which then has no room: the
 * request must be refused, consistently with what cuMemGetInfo says. */
static int st_under(const st_api_t *a, size_t free_b)
{
    char b1[32], b2[32];
    CUdeviceptr p = 0;
    CUresult rc = a->alloc(&p, ST_UNDER);
    if (rc == CUDA_SUCCESS && (rc = a->free(p)) != CUDA_SUCCESS)
        return st_fail("cuMemFree: %s", vg__cu_name(rc));
    if (free_b >= ST_UNDER && rc != CUDA_SUCCESS)
        return st_fail("cuMemAlloc of %s with %s of the budget free: %s",
                       st_bytes(ST_UNDER, b1), st_bytes(free_b, b2),
                       vg__cu_name(rc));
    if (free_b < ST_UNDER && rc != CUDA_ERROR_OUT_OF_MEMORY)
        return st_fail("cuMemAlloc of %s with only %s of the budget free "
                       "returned %s", st_bytes(ST_UNDER, b1),
                       st_bytes(free_b, b2), vg__cu_name(rc));
    return CLI_EXIT_OK;
}

static int st_allocate(const st_api_t *a)
{
    char b1[32], b2[32];
    CUdeviceptr p = 0;
    size_t free_b = 0, total_b = 0;
    CUresult rc = a->alloc(&p, ST_OVER);
    if (rc == CUDA_SUCCESS) {
        a->free(p);
        return st_fail("cuMemAlloc of %s succeeded over a %s budget: the "
                       "shim did not catch it", st_bytes(ST_OVER, b1),
                       st_bytes(ST_BUDGET, b2));
    }
    if (rc != CUDA_ERROR_OUT_OF_MEMORY)
        return st_fail("cuMemAlloc of %s returned %s, not "
                       "CUDA_ERROR_OUT_OF_MEMORY", st_bytes(ST_OVER, b1),
                       vg__cu_name(rc));
    if ((rc = a->info(&free_b, &total_b)) != CUDA_SUCCESS)
        return st_fail("cuMemGetInfo: %s", vg__cu_name(rc));
    if (total_b != ST_BUDGET)
        return st_fail("cuMemGetInfo reports a total of %s, not the %s "
                       "budget", st_bytes(total_b, b1),
                       st_bytes(ST_BUDGET, b2));
    if (free_b > total_b)
        return st_fail("cuMemGetInfo reports %s free of %s",
                       st_bytes(free_b, b1), st_bytes(total_b, b2));
    int st = st_under(a, free_b);
    if (st != CLI_EXIT_OK)
        return st;
    printf("PASS %llu %llu %llu\n", ST_OVER, ST_BUDGET,
           (unsigned long long)(total_b - free_b));
    return CLI_EXIT_OK;
}

int cli_selftest_main(int argc, char **argv)
{
    (void)argv;
    st_api_t api = {0};
    int rc;
    if (argc != 1)
        return st_fail("__selftest takes no arguments");
    if ((rc = st_resolve(&api)) != CLI_EXIT_OK ||
        (rc = st_context(&api)) != CLI_EXIT_OK)
        return rc;
    return st_allocate(&api);
}

/* ----------------------------------------------------- the parent */

/* Our environment minus LD_PRELOAD, every VRAMGUARD_* but the driver's
 * path, and HAMi's CUDA_DEVICE_MEMORY_* (a shared ledger or audit log of the
 * caller's must not see the test: the test's budget would lower a shared
 * region's limit for every process using it), plus the test's own. Free
 * with free(). */
static char **st_environ(const char *preload)
{
    static char budget[] = "VRAMGUARD_BUDGET=" ST_BUDGET_TEXT;
    static char log[] = "VRAMGUARD_LOG=error";
    size_t n = 0, j = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 4, sizeof *env);
    if (!env)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        const char *e = environ[i];
        if (strncmp(e, "LD_PRELOAD=", 11) == 0 || cli_is_setting(e))
            continue;
        env[j++] = environ[i];
    }
    env[j++] = (char *)preload;
    env[j++] = budget;
    env[j++] = log;
    return env;
}

/* Keeps the last ST_OUT_MAX-1 bytes of what the child writes, until it
 * closes its end or the deadline passes. Returns 0, ETIMEDOUT, or the
 * errno of a poll or read that failed. */
static int st_collect(int fd, char *out)
{
    size_t len = 0;
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    uint64_t deadline = vg__mono_ns() + ST_TIMEOUT_MS * 1000000ull;
    for (;;) { /* out is NUL-terminated at the top of every round */
        uint64_t now = vg__mono_ns();
        out[len] = '\0';
        if (now >= deadline)
            return ETIMEDOUT;
        int r = poll(&pfd, 1, (int)((deadline - now) / 1000000u) + 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return errno;
        if (r == 0)
            return ETIMEDOUT;
        if (len > ST_OUT_MAX / 2) { /* room for at least half a buffer */
            memmove(out, out + len - ST_OUT_MAX / 4, ST_OUT_MAX / 4);
            len = ST_OUT_MAX / 4;
        }
        ssize_t got = read(fd, out + len, ST_OUT_MAX - 1 - len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return errno;
        if (got == 0)
            break;
        len += (size_t)got;
    }
    return 0;
}

/* Starts this very binary as `vramguard __selftest` with env; its stdout
 * and stderr go to *fd. Through /proc/self/exe, not its path: the file at
 * that path may have been replaced or removed since we started, and the
 * child must speak the parent's protocol. Returns 0 or an errno value. */
static int st_spawn(char **env, pid_t *pid, int *fd)
{
    static char arg0[] = "vramguard", arg1[] = CLI_SELFTEST_CMD;
    char *argv[] = {arg0, arg1, NULL};
    posix_spawn_file_actions_t fa;
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        return errno;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, p[1], STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&fa, p[1], STDERR_FILENO);
    int rc = posix_spawn(pid, "/proc/self/exe", &fa, NULL, argv, env);
    posix_spawn_file_actions_destroy(&fa);
    close(p[1]);
    if (rc != 0) {
        close(p[0]);
        return rc;
    }
    *fd = p[0];
    return 0;
}

/* Splits out into lines in place. *result: the last "PASS "/"FAIL " line;
 * *last: the last other non-empty line (a crash report's tail); "" when
 * none. */
static void st_lines(char *out, const char **result, const char **last)
{
    char *save = NULL;
    *result = *last = "";
    for (char *l = strtok_r(out, "\n", &save); l;
         l = strtok_r(NULL, "\n", &save)) {
        if (strncmp(l, "PASS ", 5) == 0 || strncmp(l, "FAIL ", 5) == 0)
            *result = l;
        else if (l[strspn(l, " \t\r")])
            *last = l;
    }
}

/* How the child ended, for a message: "exited with status 3". */
static void st_status(int status, char *buf, size_t len)
{
    if (WIFSIGNALED(status))
        snprintf(buf, len, "was killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
}

/* "the shim refused X over a Y budget via cuGetProcAddress", plus what the
 * budget already held (a real GPU's context) when that is not nothing. */
static void st_pass(const char *result, char *detail, size_t len)
{
    unsigned long long over = 0, budget = 0, used = 0;
    char b1[32], b2[32], b3[32];
    sscanf(result, "PASS %llu %llu %llu", &over, &budget, &used);
    int n = snprintf(detail, len, "the shim refused %s over a %s budget via "
                     "cuGetProcAddress", st_bytes(over, b1),
                     st_bytes(budget, b2));
    if (n <= 0 || (size_t)n >= len || !used)
        return;
    if (used >= budget)
        snprintf(detail + n, len - (size_t)n, "; the CUDA context alone "
                 "already fills it");
    else
        snprintf(detail + n, len - (size_t)n, "; the CUDA context already "
                 "uses %s of it", st_bytes(used, b3));
}

static int st_verdict(char *out, int status, char *detail, size_t len)
{
    const char *result, *last;
    char how[96];
    st_lines(out, &result, &last);
    st_status(status, how, sizeof how);
    bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (clean && strncmp(result, "PASS ", 5) == 0) {
        st_pass(result, detail, len);
        return 0;
    }
    if (strncmp(result, "FAIL ", 5) == 0)
        snprintf(detail, len, "%s", result + 5);
    else if (result[0])
        snprintf(detail, len, "the self-test printed '%s' but %s%s%s", result,
                 how, last[0] ? ": " : "", last);
    else
        snprintf(detail, len, "the self-test %s without a result%s%s", how,
                 last[0] ? ": " : "", last);
    return -1;
}

/* Runs the child to the end (killing it after ST_TIMEOUT_MS, or when its
 * output cannot be read). */
static int st_wait(pid_t pid, int fd, char *detail, size_t len)
{
    char out[ST_OUT_MAX];
    int status = 0;
    int err = st_collect(fd, out);
    close(fd);
    if (err)
        kill(pid, SIGKILL);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (err == ETIMEDOUT) {
        snprintf(detail, len, "the self-test did not finish within %d s",
                 ST_TIMEOUT_MS / 1000);
        return -1;
    }
    if (err) {
        snprintf(detail, len, "cannot read the self-test's output: %s", strerror(err));
        return -1;
    }
    return st_verdict(out, status, detail, len);
}

int cli_selftest_run(char *detail, size_t len)
{
    char shim[CLI_PATH_MAX], exe[CLI_PATH_MAX], why[2 * CLI_PATH_MAX] = "";
    char preload[4 * CLI_PATH_MAX] = "LD_PRELOAD=";
    pid_t pid;
    int fd = -1, rc;
    if (cli_find_shim(shim, sizeof shim, why, sizeof why) != 0 ||
        vg__self_exe(exe, sizeof exe) != VG_OK ||
        cli_preload_join(shim, getenv("LD_PRELOAD"), preload + 11,
                         sizeof preload - 11) != 0) {
        snprintf(detail, len, "%s", why[0] ? why : "cannot set it up");
        return -1;
    }
    char **env = st_environ(preload);
    rc = env ? st_spawn(env, &pid, &fd) : ENOMEM;
    free(env);
    if (rc != 0) {
        snprintf(detail, len, "cannot start %s: %s", exe, strerror(rc));
        return -1;
    }
    return st_wait(pid, fd, detail, len);
}
