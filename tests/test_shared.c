/*
 * test_shared.c — one budget for many processes (lib/shared.c).
 *
 * Pure checks (validation, permissions) call the engine directly. Process
 * tests start tests/clients/client_shared with LD_PRELOAD set for that child
 * only and read the region afterwards: its device `peak` is the high-water
 * mark of everything every process reserved, so "peak <= budget" proves no
 * overshoot across processes (each child's own test driver only sees its own
 * share). The SIGKILL-inside-the-lock test forks the test binary itself,
 * which links the engine statically and so may define the pause point.
 *
 * Every test uses its own region name (pid-based) and removes its files.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clientrun.h"
#include "testutil.h"
#include "vg_account.h"
#include "vg_shared.h"

/* ------------------------------------------------------------ regions */

static char region_name[64], region_file[128];
static bool no_shared_name; /* child_start: leave VRAMGUARD_SHARED unset */

static void name_region(const char *tag)
{
    snprintf(region_name, sizeof region_name, "vgtest-%d-%s", (int)getpid(), tag);
    snprintf(region_file, sizeof region_file, VG__SHM_PREFIX "%s", region_name);
    unlink(region_file);
}

static void drop_region(void) { unlink(region_file); }

/* A snapshot of the test's region; the caller frees it. */
static vg__shm_t *snap(void)
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
static const vg__shm_device_t *dev0(const vg__shm_t *r)
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
static void child_start(child_t *c, const char *const *args, const char *const *extra)
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
static const char *child_line(child_t *c)
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
static int child_finish(child_t *c, char *err, size_t errlen)
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

static long long value_of(const char *text, const char *key)
{
    char k[64];
    snprintf(k, sizeof k, "%s=", key);
    const char *p = strstr(text, k);
    return p ? strtoll(p + strlen(k), NULL, 10) : -1;
}

static void copy_text(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* Runs `try BYTES` to the end; returns its rc (CUresult). */
static int try_alloc(uint64_t bytes, const char *const *extra, char *out, size_t outlen)
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

static void hold_start(child_t *c, uint64_t bytes, const char *const *extra)
{
    char b[32];
    snprintf(b, sizeof b, "%llu", (unsigned long long)bytes);
    const char *args[] = {"hold", b, NULL};
    child_start(c, args, extra);
    const char *l = child_line(c);
    cr_assert_eq(value_of(l, "rc"), 0, "holder: '%s'", l);
}

/* --------------------------------------------------------- pure checks */

/* A valid region image, built the way a process builds one. */
static vg__shm_t *valid_image(void)
{
    name_region("img");
    vg__shm_t *r = NULL;
    char err[512];
    cr_assert_eq(vg__shm_open(region_file, VG__SHM_CREATE, false, &r, err, sizeof err), VG_OK,
                 "%s", err);
    vg__shm_t *copy = malloc(sizeof *copy);
    memcpy(copy, r, sizeof *copy);
    vg__shm_close(r);
    drop_region();
    return copy;
}

Test(shared, validate_accepts_a_fresh_region_and_refuses_damage)
{
    vg__shm_t *img = valid_image();
    char err[256];
    cr_assert_eq(vg__shm_validate(img, sizeof *img, err, sizeof err), VG_OK, "%s", err);
    cr_expect_eq(vg__shm_validate(img, sizeof *img - 1, err, sizeof err), VG_EINVAL);
    cr_expect_eq(vg__shm_validate(img, 8, err, sizeof err), VG_EINVAL);
    cr_expect_eq(vg__shm_validate(NULL, 0, err, sizeof err), VG_EINVAL);
    struct {
        size_t off;
        const char *why;
    } cases[] = {
        {offsetof(vg__shm_header_t, magic), "magic"},
        {offsetof(vg__shm_header_t, version), "version"},
        {offsetof(vg__shm_header_t, header_size), "size"},
        {offsetof(vg__shm_header_t, total_size), "size"},
        {offsetof(vg__shm_header_t, device_count), "counts"},
        {offsetof(vg__shm_header_t, slot_count), "counts"},
        {offsetof(vg__shm_header_t, waiter_count), "counts"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        vg__shm_t *bad = malloc(sizeof *bad);
        memcpy(bad, img, sizeof *bad);
        ((unsigned char *)bad)[cases[i].off] ^= 0x40;
        err[0] = '\0';
        cr_expect_eq(vg__shm_validate(bad, sizeof *bad, err, sizeof err), VG_EINVAL,
                     "damage at %zu accepted", cases[i].off);
        cr_expect_not_null(strstr(err, cases[i].why), "'%s' lacks '%s'", err, cases[i].why);
        free(bad);
    }
    free(img);
}

/* Body damage behind a valid header: each kind is refused with a reason. */
Test(shared, validate_refuses_a_body_that_breaks_the_invariants)
{
    vg__shm_t *img = valid_image();
    img->dev[0].ordinal = 0;
    img->dev[0].limit = 1 * GiB;
    snprintf(img->dev[0].uuid, sizeof img->dev[0].uuid, "GPU-0123abcd");
    img->slot[3].pid = 4242;
    img->slot[3].used[0] = 64 * MiB;
    img->dev[0].used = img->dev[0].peak = 64 * MiB;
    char err[256];
    cr_assert_eq(vg__shm_validate(img, sizeof *img, err, sizeof err), VG_OK, "%s", err);
    vg__shm_t *bad = malloc(sizeof *bad);
    for (int k = 0; k < 9; k++) {
        memcpy(bad, img, sizeof *bad);
        switch (k) {
        case 0: bad->dev[0].uuid[6] = '\0'; break;          /* one key byte zeroed */
        case 1: bad->dev[0].uuid[6] = '"'; break;            /* not a key character */
        case 2: bad->dev[0].used = 0; break;                 /* use lost */
        case 3: bad->slot[3].pid = 0; break;                 /* a free slot holding use */
        case 4: bad->dev[0].limit = 1ull << 62; break;       /* absurd limit */
        case 5: bad->dev[0].level = 9; break;
        case 6: bad->dev[1] = bad->dev[0]; break;            /* one key twice */
        case 7: bad->dev[0].ordinal = 999; break;
        default: bad->slot[3].pid = -5; break;
        }
        err[0] = '\0';
        cr_expect_eq(vg__shm_validate(bad, sizeof *bad, err, sizeof err), VG_EINVAL,
                     "damage %d accepted", k);
        cr_expect_not_null(strstr(err, "corrupt"), "damage %d: '%s'", k, err);
    }
    free(bad);
    free(img);
}

Test(shared, file_checks_want_owner_and_private_mode)
{
    char err[256];
    vg__shm_who_t me = {.euid = 1000, .group = false, .in_group = true};
    vg__shm_who_t grp = {.euid = 1000, .group = true, .in_group = true};
    uint64_t size = sizeof(vg__shm_t);
    vg__shm_file_t ok = {S_IFREG | 0600, 1000, 100, size};
    cr_expect_eq(vg__shm_check_file(&ok, &me, err, sizeof err), VG_OK);
    vg__shm_file_t foreign = {S_IFREG | 0600, 1001, 100, size};
    cr_expect_eq(vg__shm_check_file(&foreign, &me, err, sizeof err), VG_EDENIED);
    cr_expect_not_null(strstr(err, "owned by uid 1001"), "%s", err);
    vg__shm_file_t world = {S_IFREG | 0666, 1000, 100, size};
    cr_expect_eq(vg__shm_check_file(&world, &me, err, sizeof err), VG_EDENIED);
    cr_expect_eq(vg__shm_check_file(&world, &grp, err, sizeof err), VG_EDENIED);
    vg__shm_file_t group = {S_IFREG | 0660, 1001, 100, size};
    cr_expect_eq(vg__shm_check_file(&group, &me, err, sizeof err), VG_EDENIED);
    cr_expect_eq(vg__shm_check_file(&group, &grp, err, sizeof err), VG_OK);
    vg__shm_who_t outsider = {.euid = 1000, .group = true, .in_group = false};
    cr_expect_eq(vg__shm_check_file(&group, &outsider, err, sizeof err), VG_EDENIED);
    vg__shm_file_t dir = {S_IFDIR | 0600, 1000, 100, size};
    cr_expect_eq(vg__shm_check_file(&dir, &me, err, sizeof err), VG_EDENIED);
    vg__shm_file_t small = {S_IFREG | 0600, 1000, 100, 4096};
    cr_expect_eq(vg__shm_check_file(&small, &me, err, sizeof err), VG_EINVAL);
}

Test(shared, open_refuses_links_loose_modes_foreign_owners_and_garbage)
{
    vg__shm_t *r = NULL;
    char err[512];
    name_region("perm");
    cr_assert_eq(vg__shm_open(region_file, VG__SHM_CREATE, false, &r, err, sizeof err), VG_OK,
                 "%s", err);
    vg__shm_close(r);
    struct stat st;
    cr_assert_eq(stat(region_file, &st), 0);
    cr_expect_eq(st.st_mode & 0777, 0600, "created with mode %o", st.st_mode & 0777);

    cr_assert_eq(chmod(region_file, 0644), 0);
    cr_expect_eq(vg__shm_open(region_file, VG__SHM_ATTACH, false, &r, err, sizeof err),
                 VG_EDENIED);
    cr_expect_not_null(strstr(err, "mode 0644"), "%s", err);
    cr_assert_eq(chmod(region_file, 0600), 0);

    if (geteuid() == 0) { /* a crafted foreign file needs chown */
        cr_assert_eq(chown(region_file, 12345, 12345), 0);
        cr_expect_eq(vg__shm_open(region_file, VG__SHM_ATTACH, false, &r, err, sizeof err),
                     VG_EDENIED);
        cr_expect_not_null(strstr(err, "owned by uid 12345"), "%s", err);
        cr_assert_eq(chown(region_file, 0, 0), 0);
    } else {
        cr_log_warn("SKIP foreign-owner file: needs root to chown (pure check covers it)");
    }

    char link_path[160];
    snprintf(link_path, sizeof link_path, "%s.link", region_file);
    cr_assert_eq(symlink(region_file, link_path), 0);
    cr_expect_eq(vg__shm_open(link_path, VG__SHM_ATTACH, false, &r, err, sizeof err),
                 VG_EDENIED);
    cr_expect_not_null(strstr(err, "symbolic link"), "%s", err);
    unlink(link_path);

    /* Garbage of the right size and mode: refused by the header check. */
    int fd = open(region_file, O_WRONLY);
    cr_assert_geq(fd, 0);
    char junk[4096];
    memset(junk, 0x5a, sizeof junk);
    cr_assert_eq(pwrite(fd, junk, sizeof junk, 0), (ssize_t)sizeof junk);
    close(fd);
    cr_expect_eq(vg__shm_open(region_file, VG__SHM_ATTACH, false, &r, err, sizeof err),
                 VG_EINVAL);
    cr_expect_not_null(strstr(err, "not a vramguard region"), "%s", err);
    drop_region();
}

Test(shared, a_corrupt_region_fails_closed_with_one_clear_line)
{
    name_region("corrupt");
    int fd = open(region_file, O_RDWR | O_CREAT | O_EXCL, 0600);
    cr_assert_geq(fd, 0);
    cr_assert_eq(ftruncate(fd, sizeof(vg__shm_t)), 0);
    close(fd);
    char out[512];
    const char *env[] = {BUDGET_ENV, NULL};
    char b[32];
    snprintf(b, sizeof b, "%llu", (unsigned long long)(64 * MiB));
    const char *args[] = {"try", b, NULL};
    child_t c;
    child_start(&c, args, env);
    char err[4096];
    cr_assert_eq(child_finish(&c, err, sizeof err), 0);
    copy_text(out, sizeof out, c.out_buf);
    cr_expect_eq(value_of(out, "rc"), OOM, "allocated through a corrupt region: %s", out);
    cr_expect_not_null(strstr(err, "not a vramguard region"), "stderr: %s", err);
    drop_region();
}

/* ------------------------------------------------------ process tests */

Test(shared, racing_processes_never_overshoot_the_budget)
{
    name_region("race");
    enum { PROCS = 16 };
    const uint64_t chunk = 96 * MiB; /* 2 GiB is not a multiple: an overshoot shows */
    char cs[32];
    snprintf(cs, sizeof cs, "%llu", (unsigned long long)chunk);
    const char *args[] = {"race", "4", "300", cs, NULL};
    const char *env[] = {BUDGET_ENV, NULL};
    child_t c[PROCS];
    for (int i = 0; i < PROCS; i++)
        child_start(&c[i], args, env);
    long ok = 0, refused = 0;
    for (int i = 0; i < PROCS; i++) {
        char err[4096];
        int st = child_finish(&c[i], err, sizeof err);
        cr_assert_eq(st, 0, "child %d exited %d: %s", i, st, err);
        cr_expect_eq(value_of(c[i].out_buf, "other"), 0, "child %d: %s", i, c[i].out_buf);
        ok += value_of(c[i].out_buf, "ok");
        refused += value_of(c[i].out_buf, "refused");
    }
    vg__shm_t *r = snap();
    const vg__shm_device_t *d = dev0(r);
    cr_expect_leq(d->peak, 2 * GiB, "peak %llu over the budget", (unsigned long long)d->peak);
    cr_expect_gt(d->peak, 2 * GiB - chunk, "the budget was never filled (peak %llu)",
                 (unsigned long long)d->peak);
    cr_expect_eq(d->used, 0, "%llu bytes still charged after every process exited",
                 (unsigned long long)d->used);
    cr_expect_gt(ok, 0);
    cr_expect_gt(refused, 0, "no contention: the test proves nothing");
    cr_expect_eq(d->refusals, (uint64_t)refused);
    free(r);
    drop_region();
}

Test(shared, a_normal_exit_releases_its_share_at_once)
{
    name_region("exit");
    const char *env[] = {BUDGET_ENV, NULL};
    child_t h;
    hold_start(&h, 1536 * MiB, env);
    vg__shm_t *r = snap();
    cr_expect_geq(dev0(r)->used, 1536 * MiB);
    free(r);
    cr_expect_eq(try_alloc(1 * GiB, env, NULL, 0), OOM, "the holder's share was not charged");
    cr_assert_eq(child_finish(&h, NULL, 0), 0);
    r = snap();
    cr_expect_eq(dev0(r)->used, 0, "exit left %llu bytes", (unsigned long long)dev0(r)->used);
    for (int s = 0; s < VG__SHM_SLOTS; s++)
        cr_expect_eq(r->slot[s].pid, 0, "slot %d still taken by %d", s, r->slot[s].pid);
    free(r);
    cr_expect_eq(try_alloc(2 * GiB, env, NULL, 0), 0);
    drop_region();
}

Test(shared, a_sigkilled_holder_loses_its_share_by_the_next_allocation)
{
    name_region("kill");
    const char *env[] = {BUDGET_ENV, NULL};
    for (int round = 0; round < 3; round++) {
        child_t h;
        hold_start(&h, 1536 * MiB, env);
        kill(h.pid, SIGKILL);
        cr_assert_eq(child_finish(&h, NULL, 0), 128 + SIGKILL);
        char out[256];
        cr_expect_eq(try_alloc(2 * GiB, env, out, sizeof out), 0, "round %d: %s", round, out);
        cr_expect_lt(value_of(out, "ms"), 1000, "took %lld ms", value_of(out, "ms"));
    }
    drop_region();
}

/* The pause point: a forked child of this binary stops here, holding the
 * region lock, until it is killed. */
static int pause_fd = -1;

void vg__shared_test_pause(void)
{
    if (pause_fd < 0)
        return;
    char c = 'p';
    (void)!write(pause_fd, &c, 1);
    for (;;)
        pause();
}

/* Forks a child that reserves `bytes` through the statically linked engine
 * and is SIGKILLed, either inside the critical section (paused) or at a
 * random moment of a reserve/release loop. */
static void kill_child(bool in_lock, unsigned delay_us)
{
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        close(p[0]);
        if (vg_available() != VG_OK)
            _exit(3);
        vg__budget_t *b = vg__engine_budget(0);
        if (!b || !b->shared)
            _exit(4);
        if (in_lock)
            pause_fd = p[1];
        else
            (void)!write(p[1], "r", 1);
        for (;;) {
            if (vg__budget_reserve(b, 512 * MiB) == VG_OK) {
                vg__budget_commit(b, 512 * MiB);
                if (vg__budget_reserve(b, 1 * GiB) == VG_OK)
                    vg__budget_release(b, 1 * GiB);
                vg__budget_release(b, 512 * MiB);
            }
        }
    }
    close(p[1]);
    char c;
    cr_assert_eq(read(p[0], &c, 1), 1, "the child never started");
    close(p[0]);
    usleep(delay_us);
    kill(pid, SIGKILL);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFSIGNALED(st), "child exited %d", WEXITSTATUS(st));
}

/* Reserves n, retrying for up to 200 ms: refusals look for the dead at most
 * once every 10 ms region-wide, so a share freed by a death a moment ago may
 * take that long to come back. */
static int reserve_soon(vg__budget_t *b, uint64_t n)
{
    int rc = VG_ENOMEM;
    for (int i = 0; i < 200 && (rc = vg__budget_reserve(b, n)) != VG_OK; i++)
        usleep(1000);
    return rc;
}

Test(shared, sigkill_inside_the_critical_section_and_at_random_points)
{
    name_region("crit");
    setenv("VRAMGUARD_SHARED", region_name, 1);
    setenv("VRAMGUARD_BUDGET", "2GiB", 1);
    kill_child(true, 0);
    /* The lock's holder is dead: the next taker repairs the region. */
    uint64_t t0 = vg__mono_ns();
    cr_assert_eq(vg_available(), VG_OK);
    vg__budget_t *b = vg__engine_budget(0);
    cr_assert_not_null(b->shared, "not attached to the shared region");
    cr_expect_eq(vg__budget_reserve(b, 2 * GiB), VG_OK, "the dead holder's share is still charged");
    cr_expect_lt(vg__mono_ns() - t0, 1000000000ull);
    vg__budget_release(b, 2 * GiB);
    uint64_t seed = (uint64_t)getpid();
    for (int round = 0; round < 12; round++) {
        kill_child(round % 3 == 0, (unsigned)(test_rand(&seed) % 3000));
        cr_expect_eq(reserve_soon(b, 2 * GiB), VG_OK, "round %d: share not returned", round);
        vg__budget_release(b, 2 * GiB);
    }
    vg__shm_t *r = snap();
    cr_expect_leq(dev0(r)->peak, 2 * GiB);
    cr_expect_eq(dev0(r)->used, 0);
    free(r);
    drop_region();
}

Test(shared, a_live_budget_change_and_a_shrink_below_use)
{
    name_region("live");
    const char *env[] = {BUDGET_ENV, NULL};
    const char *none[] = {NULL};
    child_t h;
    hold_start(&h, 1 * GiB, env);
    vg__shm_t *r = NULL;
    char err[512];
    cr_assert_eq(vg__shm_open(region_file, VG__SHM_ATTACH, false, &r, err, sizeof err), VG_OK);
    cr_assert_eq(vg__shm_set_limit(r, -1, 512 * MiB), VG_OK);
    vg__shm_t *s = snap();
    cr_expect_eq(dev0(s)->limit, 512 * MiB);
    cr_expect_eq(dev0(s)->used, 1 * GiB, "a shrink must not touch live memory");
    cr_expect_eq(dev0(s)->level, VG_PRESSURE_CRITICAL);
    free(s);
    cr_expect_eq(try_alloc(1 * MiB, none, NULL, 0), OOM, "allowed over a shrunk budget");
    cr_assert_eq(vg__shm_set_limit(r, -1, 4 * GiB), VG_OK);
    cr_expect_eq(try_alloc(2 * GiB, none, NULL, 0), 0, "the raised budget is not in effect");
    /* A limit the body check would refuse is refused here, not stored. */
    cr_expect_eq(vg__shm_set_limit(r, -1, VG__SHM_LIMIT_MAX), VG_EINVAL);
    cr_expect_eq(try_alloc(2 * GiB, none, NULL, 0), 0, "an absurd limit bricked the region");
    vg__shm_close(r);
    cr_assert_eq(child_finish(&h, NULL, 0), 0);
    drop_region();
}

Test(shared, a_process_budget_only_tightens_the_shared_limit)
{
    name_region("mismatch");
    const char *two[] = {BUDGET_ENV, NULL};
    const char *one[] = {"VRAMGUARD_BUDGET=1GiB", NULL};
    const char *four[] = {"VRAMGUARD_BUDGET=4GiB", NULL};
    const char *none[] = {NULL};
    cr_expect_eq(try_alloc(64 * MiB, two, NULL, 0), 0);
    vg__shm_t *r = snap();
    cr_expect_eq(dev0(r)->limit, 2 * GiB);
    free(r);
    char b[32];
    snprintf(b, sizeof b, "%llu", (unsigned long long)(1536 * MiB));
    const char *args[] = {"try", b, NULL};
    child_t c;
    child_start(&c, args, one);
    char err[4096];
    cr_assert_eq(child_finish(&c, err, sizeof err), 0);
    cr_expect_eq(value_of(c.out_buf, "rc"), OOM, "1 GiB budget let 1.5 GiB through");
    cr_expect_not_null(strstr(err, "limit changed from 2.00 GiB to 1.00 GiB"), "stderr: %s", err);
    /* A larger own budget does not raise it: the tree's limit holds. */
    child_start(&c, args, four);
    cr_assert_eq(child_finish(&c, err, sizeof err), 0);
    cr_expect_eq(value_of(c.out_buf, "rc"), OOM, "a 4 GiB process raised the shared 1 GiB");
    cr_expect_not_null(strstr(err, "which stays 1.00 GiB (budgets only tighten)"), "stderr: %s",
                       err);
    r = snap();
    cr_expect_eq(dev0(r)->limit, 1 * GiB);
    free(r);
    /* A process without a budget uses the region's. */
    cr_expect_eq(try_alloc(1536 * MiB, none, NULL, 0), OOM);
    cr_expect_eq(try_alloc(512 * MiB, none, NULL, 0), 0);
    drop_region();
}

Test(shared, waiting_is_first_come_first_served_and_times_out)
{
    name_region("wait");
    const char *env[] = {BUDGET_ENV, NULL};
    const char *w300[] = {BUDGET_ENV, "VRAMGUARD_WAIT_MS=300", NULL};
    child_t h;
    hold_start(&h, 2 * GiB, env);
    char out[256];
    cr_expect_eq(try_alloc(1 * GiB, w300, out, sizeof out), OOM, "%s", out);
    cr_expect_geq(value_of(out, "ms"), 290, "gave up early: %s", out);
    cr_expect_lt(value_of(out, "ms"), 3000, "waited far too long: %s", out);

    /* Two waiters for the whole budget: the first in line gets it first. */
    const char *wa[] = {BUDGET_ENV, "VRAMGUARD_WAIT_MS=20000", "HOLD_MS=300", NULL};
    char b[32];
    snprintf(b, sizeof b, "%llu", (unsigned long long)(2 * GiB));
    const char *args[] = {"try", b, NULL};
    child_t first, second;
    child_start(&first, args, wa);
    for (int i = 0; i < 2000; i++) { /* until it stands in line */
        vg__shm_t *r = snap();
        int n = 0;
        for (int w = 0; w < VG__SHM_WAITERS; w++)
            n += r->h.waiters[w].pid == first.pid;
        free(r);
        if (n)
            break;
        usleep(5000);
    }
    child_start(&second, args, wa);
    usleep(200000);
    cr_assert_eq(child_finish(&h, NULL, 0), 0); /* frees the budget */
    char e1[4096], e2[4096];
    cr_assert_eq(child_finish(&first, e1, sizeof e1), 0);
    cr_assert_eq(child_finish(&second, e2, sizeof e2), 0);
    cr_expect_eq(value_of(first.out_buf, "rc"), 0, "first: %s %s", first.out_buf, e1);
    cr_expect_eq(value_of(second.out_buf, "rc"), 0, "second: %s %s", second.out_buf, e2);
    cr_expect_lt(value_of(first.out_buf, "at"), value_of(second.out_buf, "at"),
                 "served out of order: first %s second %s", first.out_buf, second.out_buf);
    drop_region();
}

/* ------------------------------------------------ faults and neighbours */

/* Runs fn in a forked child and waits at most `ms` for it: a hang fails
 * the test instead of stalling it. Returns the child's exit code. */
static int bounded(int (*fn)(void), int ms)
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

static vg__shm_t *open_region(void)
{
    vg__shm_t *r = NULL;
    char err[512];
    cr_assert_eq(vg__shm_open(region_file, VG__SHM_CREATE, false, &r, err, sizeof err), VG_OK,
                 "%s", err);
    return r;
}

/* A pid that was alive a moment ago and is now gone. */
static pid_t dead_pid(void)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0)
        _exit(0);
    waitpid(pid, NULL, 0);
    return pid;
}

static vg__shm_t *forged;
static int lock_forged(void)
{
    if (vg__shm_lock(forged) != VG_OK)
        return 1;
    vg__shm_unlock(forged);
    return 0;
}

Test(shared, a_stale_owner_in_the_lock_word_is_recovered_not_waited_for)
{
    name_region("stale");
    forged = open_region();
    unsigned *word = (unsigned *)&forged->h.lock.m.__data.__lock;
    /* A dead thread's id, as a crash outside the robust list or a hostile
     * neighbour leaves it; then with the waiters bit; then no owner at all. */
    const unsigned forms[] = {(unsigned)dead_pid(), 0x80000000u | (unsigned)dead_pid(),
                              0x80000000u};
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        *word = forms[i];
        uint64_t t0 = vg__mono_ns();
        cr_expect_eq(bounded(lock_forged, 5000), 0, "form %zu: no lock", i);
        cr_expect_lt(vg__mono_ns() - t0, 1000000000ull, "form %zu: recovery took over 1 s", i);
        cr_expect_eq(lock_forged(), 0);
    }
    vg__shm_close(forged);
    drop_region();
}

/* Forks a child of this binary that takes the region lock through the
 * engine and stays inside it (the pause point); returns its pid. */
static pid_t holder_in_lock(void)
{
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        close(p[0]);
        if (vg_available() != VG_OK)
            _exit(3);
        vg__budget_t *b = vg__engine_budget(0);
        if (!b || !b->shared)
            _exit(4);
        pause_fd = p[1];
        vg__budget_reserve(b, 1 * MiB);
        _exit(5);
    }
    close(p[1]);
    char c;
    cr_assert_eq(read(p[0], &c, 1), 1, "the holder never took the lock");
    close(p[0]);
    return pid;
}

/* The holder dies while another process waits for the lock: the wait ends
 * with the lock (EOWNERDEAD) and the region repaired. Under TSan this path
 * once ended the waiting process (an annotation without its pair). */
Test(shared, a_holder_that_dies_while_another_waits_hands_the_lock_over, .timeout = 30)
{
    name_region("diewait");
    vg__shm_t *r = NULL;
    char err[512];
    cr_assert_eq(vg__shm_open(region_file, VG__SHM_CREATE, false, &r, err, sizeof err), VG_OK,
                 "%s", err);
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        close(p[0]);
        if (vg__shm_lock(r) != VG_OK)
            _exit(3);
        (void)!write(p[1], "L", 1);
        struct timespec hold = {0, 200 * 1000 * 1000};
        nanosleep(&hold, NULL);
        _exit(0); /* dies holding the lock */
    }
    close(p[1]);
    char c;
    cr_assert_eq(read(p[0], &c, 1), 1, "the holder never took the lock");
    close(p[0]);
    cr_expect_eq(vg__shm_lock(r), VG_OK, "the waiter did not get the dead holder's lock");
    vg__shm_unlock(r);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0, "holder status %d", status);
    cr_expect_eq(vg__shm_lock(r), VG_OK, "the lock is usable again");
    vg__shm_unlock(r);
    vg__shm_close(r);
    drop_region();
}

Test(shared, a_stopped_holder_fails_others_closed_and_the_cli_says_stuck)
{
    name_region("stopped");
    setenv("VRAMGUARD_SHARED", region_name, 1);
    setenv("VRAMGUARD_BUDGET", "2GiB", 1);
    pid_t holder = holder_in_lock();
    cr_assert_eq(kill(holder, SIGSTOP), 0);
    const char *env[] = {BUDGET_ENV, NULL};
    char b[32];
    snprintf(b, sizeof b, "%llu", (unsigned long long)(1 * MiB));
    const char *args[] = {"try", b, NULL};
    child_t c;
    uint64_t t0 = vg__mono_ns();
    child_start(&c, args, env);
    char err[4096];
    cr_assert_eq(child_finish(&c, err, sizeof err), 0);
    cr_expect_lt(vg__mono_ns() - t0, 10000000000ull, "took over 10 s");
    cr_expect_eq(value_of(c.out_buf, "rc"), OOM, "allocated past a stuck region: %s", c.out_buf);
    cr_expect_not_null(strstr(err, region_file), "the line does not name the region: %s", err);
    cr_expect_not_null(strstr(err, "stuck"), "stderr: %s", err);

    cli_result_t *cr = calloc(1, sizeof *cr);
    char **cenv = env_make(NULL, NULL);
    cli_result_of(cr, cenv, ARGS("status", region_name));
    env_free(cenv);
    cr_expect_neq(cr->status, 0);
    cr_expect_not_null(strstr(cr->err, "stuck"), "status said: %s%s", cr->out, cr->err);
    free(cr);

    /* The holder dies: the next taker repairs the region and goes on. */
    kill(holder, SIGKILL);
    waitpid(holder, NULL, 0);
    cr_expect_eq(try_alloc(2 * GiB, env, NULL, 0), 0);
    drop_region();
}

Test(shared, a_killed_holder_that_nobody_reaped_gives_its_share_back)
{
    name_region("zombie");
    const char *env[] = {BUDGET_ENV, NULL};
    child_t h;
    hold_start(&h, 1536 * MiB, env);
    kill(h.pid, SIGKILL);
    /* Not reaped yet: a zombie, which holds no memory. */
    char path[64], st[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)h.pid);
    for (int i = 0; i < 400; i++) {
        read_small_file(path, st, sizeof st);
        if (strstr(st, ") Z "))
            break;
        usleep(5000);
    }
    cr_assert_not_null(strstr(st, ") Z "), "not a zombie: %s", st);
    char out[256];
    cr_expect_eq(try_alloc(2 * GiB, env, out, sizeof out), 0, "the zombie's share: %s", out);
    cr_expect_eq(child_finish(&h, NULL, 0), 128 + SIGKILL);
    drop_region();
}

static void *sleeper(void *arg)
{
    (void)arg;
    for (;;)
        pause();
    return NULL;
}

Test(shared, a_process_whose_main_thread_exited_keeps_its_share)
{
    name_region("mainexit");
    setenv("VRAMGUARD_SHARED", region_name, 1);
    setenv("VRAMGUARD_BUDGET", "2GiB", 1);
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        vg__budget_t *b = vg_available() == VG_OK ? vg__engine_budget(0) : NULL;
        pthread_t t;
        if (!b || vg__budget_reserve(b, 1536 * MiB) != VG_OK ||
            pthread_create(&t, NULL, sleeper, NULL) != 0)
            _exit(3);
        (void)!write(p[1], "r", 1);
        pthread_exit(NULL); /* the main thread becomes a zombie; the process lives */
    }
    close(p[1]);
    char c;
    cr_assert_eq(read(p[0], &c, 1), 1);
    close(p[0]);
    char path[64], st[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    for (int i = 0; i < 400; i++) {
        read_small_file(path, st, sizeof st);
        if (strstr(st, ") Z "))
            break;
        usleep(5000);
    }
    cr_expect_not_null(strstr(st, ") Z "), "main thread not a zombie: %s", st);
    const char *env[] = {BUDGET_ENV, NULL};
    cr_expect_eq(try_alloc(1 * GiB, env, NULL, 0), OOM, "a live process lost its share");
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    drop_region();
}

Test(shared, refusals_do_not_scan_for_the_dead_every_time)
{
    name_region("scan");
    setenv("VRAMGUARD_SHARED", region_name, 1);
    setenv("VRAMGUARD_BUDGET", "2GiB", 1);
    cr_assert_eq(vg_available(), VG_OK);
    vg__budget_t *b = vg__engine_budget(0);
    cr_assert_not_null(b->shared);
    cr_assert_eq(vg__budget_reserve(b, 2 * GiB), VG_OK);
    /* 200 more live processes (this one, registered again): a scan reads
     * /proc 200 times. */
    vg__shm_t *r = open_region();
    cr_assert_eq(vg__shm_lock(r), VG_OK);
    for (int s = 0, n = 0; s < VG__SHM_SLOTS && n < 200; s++) {
        if (r->slot[s].pid)
            continue;
        r->slot[s].pid = (int32_t)getpid();
        r->slot[s].start = vg__shm_proc_start(getpid());
        n++;
    }
    vg__shm_unlock(r);
    enum { REFUSALS = 2000 };
    uint64_t t0 = vg__mono_ns();
    for (int i = 0; i < REFUSALS; i++)
        cr_assert_eq(vg__budget_reserve(b, 1 * MiB), VG_ENOMEM);
    uint64_t ns = vg__mono_ns() - t0;
    /* A scan each costs ~1 ms: 2000 of them take seconds. */
    cr_expect_lt(ns, 400000000ull, "%d refusals took %llu ms", REFUSALS,
                 (unsigned long long)(ns / 1000000));
    vg__shm_t *c = snap();
    cr_expect_eq(dev0(c)->refusals, REFUSALS);
    free(c);
    vg__shm_close(r);
    drop_region();
}

Test(shared, a_claimed_slot_starts_empty)
{
    name_region("claim");
    vg__shm_t *r = open_region();
    cr_assert_eq(vg__shm_lock(r), VG_OK);
    for (int s = 0; s < VG__SHM_SLOTS; s++) { /* what a careless owner left */
        for (int d = 0; d < VG__SHM_DEVICES; d++) {
            r->slot[s].live[d] = 777;
            r->slot[s].overhead[d] = 999;
        }
        snprintf(r->slot[s].cmd, sizeof r->slot[s].cmd, "ghost");
    }
    vg__shm_unlock(r);
    vg__shm_close(r);
    const char *env[] = {BUDGET_ENV, NULL};
    child_t h;
    hold_start(&h, 64 * MiB, env);
    vg__shm_t *c = snap();
    int found = 0;
    for (int s = 0; s < VG__SHM_SLOTS; s++) {
        if (c->slot[s].pid != h.pid)
            continue;
        found++;
        int d = (int)(dev0(c) - c->dev);
        cr_expect_eq(c->slot[s].live[d], 1, "live %llu", (unsigned long long)c->slot[s].live[d]);
        cr_expect_eq(c->slot[s].live[VG__SHM_DEVICES - 1], 0);
        cr_expect_eq(c->slot[s].overhead[VG__SHM_DEVICES - 1], 0);
        cr_expect_null(strstr(c->slot[s].cmd, "ghost"));
    }
    cr_expect_eq(found, 1);
    free(c);
    cr_assert_eq(child_finish(&h, NULL, 0), 0);
    drop_region();
}

static vg__budget_t *parent_budget;
static int child_reads_own_use(void)
{
    if (vg__shared_self_used(parent_budget) != 0)
        return 1;
    vg__shm_t *copy = malloc(sizeof *copy);
    if (!copy || vg__shm_snapshot(parent_budget->shared, copy) != VG_OK)
        return 2;
    for (int s = 0; s < VG__SHM_SLOTS; s++)
        if (copy->slot[s].pid == (int32_t)getpid())
            return 3; /* it claimed a slot (without the lock) to say 0 */
    return 0;
}

Test(shared, reading_its_own_use_claims_no_slot)
{
    name_region("selfuse");
    setenv("VRAMGUARD_SHARED", region_name, 1);
    setenv("VRAMGUARD_BUDGET", "2GiB", 1);
    cr_assert_eq(vg_available(), VG_OK);
    parent_budget = vg__engine_budget(0);
    cr_assert_eq(vg__budget_reserve(parent_budget, 64 * MiB), VG_OK);
    cr_expect_eq(vg__shared_self_used(parent_budget), 64 * MiB);
    cr_expect_eq(bounded(child_reads_own_use, 5000), 0);
    vg__budget_release(parent_budget, 64 * MiB);
    drop_region();
}

/* With no limit, a request of 2^61 bytes would push the region's use past
 * what a valid body may hold (1 EiB), and the next check would call the
 * region corrupt and turn every process off. It is refused instead, and
 * later requests go on. */
Test(shared, an_absurd_request_in_an_unlimited_region_is_refused_and_harms_nothing)
{
    name_region("absurd");
    setenv("VRAMGUARD_SHARED", region_name, 1);
    unsetenv("VRAMGUARD_BUDGET");
    cr_assert_eq(vg_available(), VG_OK);
    vg__budget_t *b = vg__engine_budget(0);
    cr_assert_not_null(b->shared);
    cr_expect_eq(vg__budget_reserve(b, 1ull << 61), VG_ENOMEM);
    cr_expect_eq(vg__budget_reserve(b, 1ull << 60), VG_ENOMEM);
    vg__shm_t *c = snap();
    char err[256] = "";
    cr_expect_eq(vg__shm_validate_body(c, err, sizeof err), VG_OK, "%s", err);
    free(c);
    cr_expect_eq(vg__budget_reserve(b, MiB), VG_OK);
    vg__budget_rollback(b, MiB);
    drop_region();
}

static bool nobody_dead(const vg__shm_slot_t *sl, void *ctx)
{
    (void)sl, (void)ctx;
    return true;
}

/* A process killed inside a slot's drop, after its pid was cleared but
 * before its use was: the repair after its death must not leave the body
 * corrupt for everyone (a slot with no pid and some use). */
Test(shared, the_repair_clears_a_slot_dropped_halfway)
{
    name_region("halfdrop");
    vg__shm_t *r = open_region();
    cr_assert_eq(vg__shm_lock(r), VG_OK);
    r->dev[0].ordinal = 0;
    r->dev[0].limit = VG__UNLIMITED;
    r->slot[3].pid = 0;
    r->slot[3].used[0] = 64 * MiB; /* what the half-done drop left */
    r->dev[0].used = 64 * MiB;
    vg__shm_recount(r, nobody_dead, NULL);
    char err[256] = "";
    cr_expect_eq(vg__shm_validate_body(r, err, sizeof err), VG_OK, "%s", err);
    cr_expect_eq(r->dev[0].used, 0);
    vg__shm_unlock(r);
    vg__shm_close(r);
    drop_region();
}

/* A program that allocated 600 MiB and then exec'd: its memory went with
 * the old image, so the new one gets 600 MiB of a 1 GiB budget. (Slots are
 * known by pid and start time, which an exec keeps.) */
Test(shared, an_exec_leaves_the_old_programs_share_behind)
{
    name_region("exec");
    const char *env[] = {"VRAMGUARD_BUDGET=1GiB", NULL};
    char b[32];
    snprintf(b, sizeof b, "%llu", (unsigned long long)(600 * MiB));
    const char *args[] = {"exec", b, NULL};
    child_t c;
    child_start(&c, args, env);
    char err[4096];
    cr_assert_eq(child_finish(&c, err, sizeof err), 0, "%s", err);
    cr_expect_not_null(strstr(c.out_buf, "held rc=0"), "%s", c.out_buf);
    cr_expect_eq(value_of(strstr(c.out_buf, "\nrc=") ? strstr(c.out_buf, "\nrc=") + 1 : "", "rc"),
                 0, "the new image was refused: %s %s", c.out_buf, err);
    drop_region();
}

/* Damage to the body behind a valid header: the process refuses. */
static void expect_corrupt_refusal(const char *what)
{
    const char *none[] = {NULL};
    char b[32];
    snprintf(b, sizeof b, "%llu", (unsigned long long)(2 * GiB));
    const char *args[] = {"try", b, NULL};
    child_t c;
    child_start(&c, args, none);
    char err[4096];
    cr_assert_eq(child_finish(&c, err, sizeof err), 0);
    cr_expect_eq(value_of(c.out_buf, "rc"), OOM, "%s: allocated 2 GiB under 1 GiB: %s", what,
                 c.out_buf);
    cr_expect_not_null(strstr(err, "corrupt"), "%s: stderr: %s", what, err);
}

Test(shared, a_damaged_body_fails_closed)
{
    name_region("body");
    const char *one[] = {"VRAMGUARD_BUDGET=1GiB", NULL};
    cr_assert_eq(try_alloc(64 * MiB, one, NULL, 0), 0);
    vg__shm_t *r = open_region();
    vg__shm_device_t *e = NULL;
    for (int d = 0; d < VG__SHM_DEVICES; d++)
        if (r->dev[d].ordinal == 0)
            e = &r->dev[d];
    cr_assert_not_null(e);
    e->uuid[10] = '\0'; /* one byte of the key */
    expect_corrupt_refusal("uuid byte");
    e->uuid[10] = 'x';
    e->uuid[5] = '"';
    expect_corrupt_refusal("uuid character");
    /* A random body behind the valid header. */
    uint64_t seed = (uint64_t)getpid() | 1;
    unsigned char *body = (unsigned char *)r + sizeof r->h;
    for (size_t i = 0; i < sizeof *r - sizeof r->h; i++)
        body[i] = (unsigned char)test_rand(&seed);
    expect_corrupt_refusal("random body");
    vg__shm_close(r);
    drop_region();
}

Test(shared, a_relative_shared_cache_path_is_refused)
{
    name_region("relative");
    no_shared_name = true;
    char set[128];
    snprintf(set, sizeof set, "CUDA_DEVICE_MEMORY_SHARED_CACHE=%s", region_name);
    const char *env[] = {set, BUDGET_ENV, NULL};
    char b[32];
    snprintf(b, sizeof b, "%llu", (unsigned long long)(1 * MiB));
    const char *args[] = {"try", b, NULL};
    child_t c;
    child_start(&c, args, env);
    char err[4096];
    cr_assert_eq(child_finish(&c, err, sizeof err), 0);
    struct stat st;
    bool made = stat(region_file, &st) == 0;
    drop_region();
    cr_expect_eq(value_of(c.out_buf, "rc"), OOM, "%s", c.out_buf);
    cr_expect_not_null(strstr(err, "is not an absolute path"), "stderr: %s", err);
    cr_expect(!made, "a region was made in /dev/shm from a relative path");
}

/* A region file whose name is crafted to break out of a label or a string:
 * metrics and status --json escape it. */
Test(shared, a_hostile_region_name_is_escaped_in_metrics_and_json)
{
    char evil[128], path[256];
    snprintf(evil, sizeof evil, "vgtest-%d-x\"} 1\nvramguard_injected{a=\"b\\", (int)getpid());
    snprintf(path, sizeof path, VG__SHM_PREFIX "%s", evil);
    unlink(path);
    vg__shm_t *r = NULL;
    char err[512];
    cr_assert_eq(vg__shm_open(path, VG__SHM_CREATE, false, &r, err, sizeof err), VG_OK, "%s", err);
    cr_assert_eq(vg__shm_set_limit(r, 0, 1 * GiB), VG_OK);
    cr_assert_eq(vg__shm_lock(r), VG_OK);
    r->dev[0].ordinal = 0; /* one claimed device, so metrics have a row */
    /* ... and one live process using it, so the per-process series carry
     * the region's name and a hostile command too */
    r->slot[0].pid = (int32_t)getpid();
    r->slot[0].start = vg__shm_proc_start(getpid());
    snprintf(r->slot[0].cmd, sizeof r->slot[0].cmd, "cmd\"} 2\nvramguard_cmd_injected{a=\"b");
    r->slot[0].used[0] = r->dev[0].used = r->dev[0].peak = 1 << 20;
    vg__shm_level_update(&r->dev[0]);
    vg__shm_unlock(r);
    vg__shm_close(r);

    cli_result_t *m = calloc(1, sizeof *m), *j = calloc(1, sizeof *j);
    char **env = env_make(NULL, NULL);
    cli_result_of(m, env, ARGS("metrics"));
    cli_result_of(j, env, ARGS("status", "--json"));
    env_free(env);
    unlink(path);
    cr_expect_null(strstr(m->out, "\nvramguard_injected"), "a series was injected:\n%s", m->out);
    cr_expect_null(strstr(m->out, "\nvramguard_cmd_injected"), "a series was injected:\n%s",
                   m->out);
    cr_expect_not_null(strstr(m->out, "vramguard_process_explicit_bytes{"),
                       "no per-process series:\n%s", m->out);
    char want[256];
    snprintf(want, sizeof want, "region=\"vgtest-%d-x\\\"} 1\\nvramguard_injected{a=\\\"b\\\\\"",
             (int)getpid());
    cr_expect_not_null(strstr(m->out, want), "no escaped label %s in:\n%s", want, m->out);
    snprintf(want, sizeof want, "\"name\":\"vgtest-%d-x\\\"} 1\\u000avramguard_injected{a=\\\"b\\\\\"",
             (int)getpid());
    cr_expect_not_null(strstr(j->out, want), "no escaped name %s in:\n%s", want, j->out);
    free(m);
    free(j);
}

/* A region made through the HAMi path under /dev/shm/vramguard. obeys the
 * name rules: nothing that status or metrics could mistake for syntax. */
Test(shared, a_shared_cache_path_with_a_bad_region_name_is_refused)
{
    name_region("bad\"name");
    no_shared_name = true;
    char set[256];
    snprintf(set, sizeof set, "CUDA_DEVICE_MEMORY_SHARED_CACHE=%s", region_file);
    const char *env[] = {set, BUDGET_ENV, NULL};
    const char *args[] = {"try", "1048576", NULL};
    child_t c;
    child_start(&c, args, env);
    char err[4096];
    cr_assert_eq(child_finish(&c, err, sizeof err), 0);
    struct stat st;
    bool made = stat(region_file, &st) == 0;
    drop_region();
    cr_expect_eq(value_of(c.out_buf, "rc"), OOM, "%s", c.out_buf);
    cr_expect_not_null(strstr(err, "is not valid"), "stderr: %s", err);
    cr_expect(!made, "a region with a quote in its name was made");
}

/* A forked child's first live-count update claims its slot under the lock:
 * while another process holds the lock, it waits (and gives up), it does
 * not write the region behind the holder's back. */
static int child_counts_while_locked(void)
{
    vg__shared_live(parent_budget, 1);
    const vg__shm_t *r = parent_budget->shared;
    for (int s = 0; s < VG__SHM_SLOTS; s++)
        if (__atomic_load_n(&r->slot[s].pid, __ATOMIC_RELAXED) == (int32_t)getpid())
            return 3; /* claimed while another process held the lock */
    return 0;
}

Test(shared, a_first_live_count_claims_its_slot_under_the_lock)
{
    name_region("live1");
    setenv("VRAMGUARD_SHARED", region_name, 1);
    setenv("VRAMGUARD_BUDGET", "2GiB", 1);
    cr_assert_eq(vg_available(), VG_OK);
    parent_budget = vg__engine_budget(0);
    cr_assert_not_null(parent_budget->shared);
    pid_t holder = holder_in_lock();
    cr_expect_eq(bounded(child_counts_while_locked, 5000), 0);
    kill(holder, SIGKILL);
    waitpid(holder, NULL, 0);
    drop_region();
}

/* `vramguard budget NAME --remove` counts the live and unlinks under the
 * region's lock (vg__shm_retire). A process that had the region open with
 * no slot in it yet (here a forked child, whose parent's slot is not its
 * own) must then never charge it: a new region of the same name would not
 * see that charge, and the two together could hold twice the budget. */
static int child_charges_the_removed_region(void)
{
    return vg__budget_reserve(parent_budget, 64 * MiB) == VG_ENOMEM ? 0 : 1;
}

Test(shared, a_removed_region_takes_no_charge_from_a_process_that_had_it_open)
{
    name_region("retire");
    setenv("VRAMGUARD_SHARED", region_name, 1);
    setenv("VRAMGUARD_BUDGET", "2GiB", 1);
    cr_assert_eq(vg_available(), VG_OK);
    parent_budget = vg__engine_budget(0);
    vg__shm_t *r = parent_budget->shared;
    cr_assert_not_null(r);
    /* This process's share goes, as at its exit; then the removal. */
    cr_assert_eq(vg__shm_lock(r), VG_OK);
    for (int s = 0; s < VG__SHM_SLOTS; s++)
        if (r->slot[s].pid == (int32_t)getpid())
            vg__shm_slot_drop(r, s);
    vg__shm_unlock(r);
    int live = -1;
    cr_assert_eq(vg__shm_retire(r, region_file, &live), VG_OK);
    cr_expect_eq(live, 0);
    cr_expect_neq(access(region_file, F_OK), 0, "the region's file is still there");
    cr_expect_eq(bounded(child_charges_the_removed_region, 5000), 0,
                 "a process charged a removed region");
    vg__shm_t *c = malloc(sizeof *c);
    cr_assert_eq(vg__shm_snapshot(r, c), VG_OK);
    cr_expect_eq(dev0(c)->used, 0, "used %llu", (unsigned long long)dev0(c)->used);
    for (int s = 0; s < VG__SHM_SLOTS; s++)
        cr_expect_eq(c->slot[s].pid, 0, "slot %d claimed by %d", s, c->slot[s].pid);
    free(c);
}

/* The mark without the unlink (a removal that died in between): a process
 * opening the region never joins it, says why, and refuses (fail closed);
 * `vramguard budget NAME --remove` can still take the file away. */
Test(shared, a_region_marked_removed_is_never_joined)
{
    name_region("marked");
    vg__shm_t *r = NULL;
    char err[512];
    cr_assert_eq(vg__shm_open(region_file, VG__SHM_CREATE, false, &r, err, sizeof err), VG_OK,
                 "%s", err);
    cr_assert_eq(vg__shm_lock(r), VG_OK);
    r->h.removed = 1;
    vg__shm_unlock(r);
    const char *env[] = {BUDGET_ENV, NULL};
    const char *args[] = {"try", "67108864", NULL};
    child_t c;
    child_start(&c, args, env);
    char cerr[4096];
    cr_assert_eq(child_finish(&c, cerr, sizeof cerr), 0, "%s", cerr);
    cr_expect_eq(value_of(c.out_buf, "rc"), OOM, "%s", c.out_buf);
    cr_expect_not_null(strstr(cerr, "removed"), "%s", cerr);
    vg__shm_t *s = snap();
    for (int d = 0; d < VG__SHM_DEVICES; d++)
        cr_expect_eq(s->dev[d].ordinal, -1, "device entry %d claimed", d);
    for (int i = 0; i < VG__SHM_SLOTS; i++)
        cr_expect_eq(s->slot[i].pid, 0, "slot %d claimed by %d", i, s->slot[i].pid);
    free(s);
    int live = -1;
    cr_expect_eq(vg__shm_retire(r, region_file, &live), VG_OK);
    cr_expect_neq(access(region_file, F_OK), 0);
    vg__shm_close(r);
}
