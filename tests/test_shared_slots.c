/*
 * test_shared_slots.c — each process's slot in a shared region
 * (lib/shared.c, lib/shared_reap.c): a claimed slot starts empty, reading
 * its own use claims none, and a share comes back once its process is gone
 * (killed and not reaped, exec'd, or dropped halfway) but not while the
 * process lives on without its main thread. Refusals look for the dead
 * only now and then, not every time.
 *
 * Like test_shared.c, it starts tests/clients/client_shared under the shim
 * or forks the test binary (sharedrun.h). Every test uses its own region
 * name (pid-based) and removes its files.
 */
#include <criterion/criterion.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sharedrun.h"

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
