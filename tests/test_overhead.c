/*
 * test_overhead.c — the measured memory no call shows (a process's CUDA
 * context) is this process's own: with a budget shared by several
 * processes it must not be computed against the whole region's use.
 * Runs in-process over the test driver and the NVML test double
 * (tests/run-tests.sh puts both on the library path).
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"
#include "vg_account.h"
#include "vg_shared.h"

static void region_name(char *buf, size_t len)
{
    snprintf(buf, len, "vg-test-overhead-%d", (int)getpid());
}

static void region_remove(const char *name)
{
    char path[256];
    snprintf(path, sizeof path, "/dev/shm/vramguard.%s", name);
    unlink(path);
}

/* A second process charges 1 GiB to the shared region and holds it until
 * told to go. Forked before this process starts its engine. */
static pid_t start_holder(int ready[2], int go[2])
{
    cr_assert_eq(pipe(ready), 0);
    cr_assert_eq(pipe(go), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        /* Only our ends stay open: if the test dies, read() sees EOF. */
        close(ready[0]);
        close(go[1]);
        /* like any CUDA process: the driver is up before the budget is
         * bound, so the device is matched by its UUID in the region */
        vg__budget_t *b = vg_available() == VG_OK ? vg__engine_budget(0) : NULL;
        char c = b && b->shared && vg__budget_reserve(b, GiB) == VG_OK ? 'y' : 'n';
        if (write(ready[1], &c, 1) != 1 || read(go[0], &c, 1) < 0)
            _exit(3);
        _exit(0);
    }
    close(ready[1]);
    close(go[0]);
    return pid;
}

Test(overhead, a_shared_budget_charges_each_process_its_own_context)
{
    char name[64], c = 0;
    region_name(name, sizeof name);
    setenv("VRAMGUARD_SHARED", name, 1);
    setenv("VRAMGUARD_BUDGET", "8GiB", 1);
    setenv("FAKENVML_CONTEXT_BYTES", "314572800", 1); /* 300 MiB */
    int ready[2], go[2];
    pid_t holder = start_holder(ready, go);
    cr_assert_eq(read(ready[0], &c, 1), 1);
    cr_assert_eq(c, 'y', "the holder charged 1 GiB to the shared region");

    cr_assert_eq(vg_available(), VG_OK); /* cuInit: the context NVML sees */
    vg__budget_t *b = vg__engine_budget(0);
    cr_assert(b && b->shared, "this process is on the shared region");
    /* one operation of our own, as any real process has made by now: the
     * budget's copy of the region's use then includes the holder's 1 GiB */
    cr_assert_eq(vg__budget_reserve(b, 4096), VG_OK);
    vg__budget_release(b, 4096);
    cr_assert_geq(atomic_load(&b->used), GiB);
    vg__overhead_refresh(0, VG__REFRESH_NOW);
    vg_device_stats_t s;
    cr_assert_eq(vg_device_stats(0, &s), VG_OK);
    cr_expect_eq(s.overhead, 300 * MiB,
                 "overhead %llu MiB: measured against the region's use, not ours?",
                 (unsigned long long)(s.overhead / MiB));
    cr_expect_eq(vg__shared_self_used(b), 300 * MiB);

    cr_assert_eq(write(go[1], "x", 1), 1);
    int st = 0;
    waitpid(holder, &st, 0);
    cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    region_remove(name);
}
