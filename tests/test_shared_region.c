/*
 * test_shared_region.c — the shared region's file (lib/shared_region.c):
 * validation of its header and body, its owner and mode, and what a
 * process does with a region that is corrupt, damaged, badly named or
 * removed: it refuses (fails closed) and says why in one line. Status and
 * metrics escape a hostile region name.
 *
 * Pure checks call the engine directly; the others start
 * tests/clients/client_shared under the shim (sharedrun.h). Every test uses
 * its own region name (pid-based) and removes its files.
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sharedrun.h"

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

/* --------------------------------------------- damage, names, removal */

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

/* A child told to use `cache_path` as its shared region (the HAMi
 * variable, no VRAMGUARD_SHARED) must refuse its 1 MiB with the driver's
 * out-of-memory code, say `why` on stderr and make no region file. */
static void expect_cache_path_refused(const char *cache_path, const char *why)
{
    no_shared_name = true;
    char set[256];
    snprintf(set, sizeof set, "CUDA_DEVICE_MEMORY_SHARED_CACHE=%s", cache_path);
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
    cr_expect_not_null(strstr(err, why), "stderr: %s", err);
    cr_expect(!made, "a region was made for %s", cache_path);
}

Test(shared, a_relative_shared_cache_path_is_refused)
{
    name_region("relative");
    expect_cache_path_refused(region_name, "is not an absolute path");
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
    expect_cache_path_refused(region_file, "is not valid");
}

static vg__budget_t *parent_budget;

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
