/*
 * test_status_cli.c — `vramguard status`, `metrics` and `budget` against a
 * live shared region: a holder (tests/clients/client_shared under the shim,
 * LD_PRELOAD for that child only) keeps memory, and what the commands print
 * is parsed and checked against the region's own snapshot.
 */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "clientrun.h"
#include "testutil.h"
#include "vg_shared.h"

static char name[64], file[128];

static void name_region(const char *tag)
{
    snprintf(name, sizeof name, "vgtest-%d-%s", (int)getpid(), tag);
    snprintf(file, sizeof file, VG__SHM_PREFIX "%s", name);
    unlink(file);
}

/* Spawns argv with stdout on a pipe (and stdin on one when `in` is set,
 * stderr on one when `err` is set); `preload` puts the shim, the test
 * driver and the region in its env. */
static pid_t spawn_err(char *const argv[], bool preload, int *out, int *in, int *err)
{
    static const char *const drop[] = {"LD_PRELOAD=", "VRAMGUARD_", NULL};
    char *pre = cat3("LD_PRELOAD=", build_dir(), "/libvramguard-preload.so");
    char *nvml = cat3(":", build_dir(), "/fakenvml");
    char *lib = cat3("LD_LIBRARY_PATH=", build_dir(), "/fakecuda");
    char *libs = cat3(lib, nvml, "");
    free(lib);
    free(nvml);
    lib = libs;
    char *shr = cat3("VRAMGUARD_SHARED=", name, "");
    char *asan = asan_entry("");
    char **env = env_make(drop, preload ? ENV(pre, lib, shr, "VRAMGUARD_BUDGET=2GiB", asan) : NULL);
    free(pre);
    free(lib);
    free(shr);
    free(asan);
    int o[2], i[2], e[2] = {-1, CHILD_KEEP};
    cr_assert_eq(pipe2(o, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(i, O_CLOEXEC), 0);
    if (err)
        cr_assert_eq(pipe2(e, O_CLOEXEC), 0);
    pid_t pid = child_spawn(argv, env, (int[3]){i[0], o[1], e[1]});
    close(o[1]);
    close(i[0]);
    if (err) {
        close(e[1]);
        *err = e[0];
    }
    env_free(env);
    *out = o[0];
    if (in)
        *in = i[1];
    else
        close(i[1]);
    return pid;
}

static pid_t spawn(char *const argv[], bool preload, int *out, int *in)
{
    return spawn_err(argv, preload, out, in, NULL);
}

/* The last cli() call's stderr: expected errors are the test's to read. */
static char cli_err[4096];

/* Runs the CLI to the end; its stdout in buf (stderr in cli_err), its exit
 * status returned. */
static int cli(char *buf, size_t cap, const char *a1, const char *a2, const char *a3,
               const char *a4)
{
    int out, err;
    char exe[4200];
    snprintf(exe, sizeof exe, "%s/vramguard", build_dir());
    char *argv[] = {exe, (char *)a1, (char *)a2, (char *)a3, (char *)a4, NULL};
    pid_t pid = spawn_err(argv, false, &out, NULL, &err);
    buf[0] = '\0';
    cli_err[0] = '\0';
    child_collect(pid, out, err, &(child_out_t){buf, cap, cli_err, sizeof cli_err});
    close(out);
    close(err);
    return child_wait(pid);
}

typedef struct holder {
    pid_t pid;
    int out, in;
} holder_t;

static void hold(holder_t *h, uint64_t bytes)
{
    char exe[4200], b[32];
    snprintf(exe, sizeof exe, "%s/clients/client_shared", build_dir());
    snprintf(b, sizeof b, "%llu", (unsigned long long)bytes);
    char *argv[] = {exe, "hold", b, NULL};
    h->pid = spawn(argv, true, &h->out, &h->in);
    char line[256] = "";
    size_t len = 0;
    while (!strchr(line, '\n') && len + 1 < sizeof line) {
        ssize_t got = read(h->out, line + len, sizeof line - 1 - len);
        cr_assert_gt(got, 0, "holder died");
        len += (size_t)got;
        line[len] = '\0';
    }
    cr_assert_not_null(strstr(line, "held rc=0"), "%s", line);
}

static void release(holder_t *h)
{
    close(h->in);
    close(h->out);
    int st;
    waitpid(h->pid, &st, 0);
}

static vg__shm_t *snap(void)
{
    vg__shm_t *r = NULL, *copy = malloc(sizeof *copy);
    char err[512];
    cr_assert_eq(vg__shm_open(file, VG__SHM_ATTACH, false, &r, err, sizeof err), VG_OK, "%s", err);
    cr_assert_eq(vg__shm_snapshot(r, copy), VG_OK);
    vg__shm_close(r);
    return copy;
}

static long long num_after(const char *text, const char *key)
{
    const char *p = strstr(text, key);
    cr_assert_not_null(p, "'%s' not in: %s", key, text);
    return strtoll(p + strlen(key), NULL, 10);
}

Test(status_cli, json_matches_the_region)
{
    name_region("json");
    holder_t h;
    hold(&h, 768 * MiB);
    static char buf[1 << 16];
    cr_assert_eq(cli(buf, sizeof buf, "status", name, "--json", NULL), 0);
    vg__shm_t *r = snap();
    const vg__shm_device_t *d = &r->dev[0];
    cr_expect_eq(num_after(buf, "\"budget\":"), (long long)d->limit);
    cr_expect_eq(num_after(buf, "\"used\":"), (long long)d->used);
    cr_expect_eq(num_after(buf, "\"peak\":"), (long long)d->peak);
    cr_expect_eq(num_after(buf, "\"level\":"), d->level);
    cr_expect_eq(num_after(buf, "\"pid\":"), h.pid);
    cr_expect_not_null(strstr(buf, "\"command\":\"client_shared\""), "%s", buf);
    cr_expect_eq(num_after(buf, "\"live\":"), 1);
    cr_expect_geq(d->used, 768 * MiB);
    char table[1 << 14];
    cr_assert_eq(cli(table, sizeof table, "status", name, NULL, NULL), 0);
    cr_expect_not_null(strstr(table, "2.00 GiB"), "%s", table);
    cr_expect_not_null(strstr(table, "768.00 MiB"), "%s", table);
    cr_expect_not_null(strstr(table, "running"), "%s", table);
    free(r);
    release(&h);
    unlink(file);
}

Test(status_cli, metrics_match_the_region_and_textfile_is_atomic)
{
    name_region("prom");
    holder_t h;
    hold(&h, 512 * MiB);
    static char buf[1 << 16];
    cr_assert_eq(cli(buf, sizeof buf, "metrics", name, NULL, NULL), 0);
    vg__shm_t *r = snap();
    char key[256];
    snprintf(key, sizeof key, "vramguard_used_bytes{region=\"%s\",device=\"0\",uuid=\"%s\"} ",
             name, r->dev[0].uuid);
    cr_expect_eq(num_after(buf, key), (long long)r->dev[0].used);
    snprintf(key, sizeof key, "vramguard_budget_bytes{region=\"%s\",device=\"0\",", name);
    cr_expect_eq(num_after(strstr(buf, key), "} "), 2 * GiB);
    snprintf(key, sizeof key, "vramguard_processes{region=\"%s\",device=\"0\",", name);
    cr_expect_eq(num_after(strstr(buf, key), "} "), 1);
    cr_expect_not_null(strstr(buf, "# TYPE vramguard_refusals_total counter"));
    char path[128];
    snprintf(path, sizeof path, "/tmp/vg-metrics-%d.prom", (int)getpid());
    cr_assert_eq(cli(buf, sizeof buf, "metrics", name, "--textfile", path), 0);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    unlink(path);
    cr_expect_not_null(strstr(buf, "vramguard_peak_bytes{"), "%s", buf);
    free(r);
    release(&h);
    unlink(file);
}

/* A region metrics cannot read is said once a scrape, not once for each
 * of the metrics (they walk the regions one metric at a time). */
/* A size just under the next unit prints in that unit ("1.00 MiB"), never
 * as 1024.00 of the smaller one (which also overflowed check's columns). */
Test(status_cli, sizes_pick_their_unit_after_rounding)
{
    char b[32];
    cr_expect_str_eq(vg__fmt_bytes(1048575, b, sizeof b), "1.00 MiB");
    cr_expect_str_eq(vg__fmt_bytes(1073741823, b, sizeof b), "1.00 GiB");
    cr_expect_str_eq(vg__fmt_bytes(1023, b, sizeof b), "1023 B");
    cr_expect_str_eq(vg__fmt_bytes(1047552, b, sizeof b), "1023.00 KiB");
    cr_expect_str_eq(vg__fmt_bytes(1536, b, sizeof b), "1.50 KiB");
}

/* status NAME --watch on a region that is not there stops with status 1
 * (a supervisor can tell), as status NAME does; a name too long for a path
 * says so instead of printing an unset buffer. */
Test(status_cli, watching_a_missing_region_fails_and_a_long_name_says_why, .timeout = 20)
{
    char buf[4096];
    cr_expect_eq(cli(buf, sizeof buf, "status", "vgtest-nosuch-region", "--watch", NULL), 1, "%s",
                 cli_err);
    cr_expect_not_null(strstr(cli_err, "no shared region"), "%s", cli_err);
    char longname[5001];
    memset(longname, 'a', 5000);
    longname[5000] = '\0';
    cr_expect_eq(cli(buf, sizeof buf, "status", longname, NULL, NULL), 1, "%s", cli_err);
    cr_expect_not_null(strstr(cli_err, "region name too long"), "%s", cli_err);
}

Test(status_cli, metrics_say_an_unreadable_region_once)
{
    name_region("garbage");
    FILE *f = fopen(file, "w");
    cr_assert_not_null(f);
    fputs("not a region", f);
    fclose(f);
    cr_assert_eq(chmod(file, 0600), 0);
    static char buf[1 << 16];
    cli(buf, sizeof buf, "metrics", NULL, NULL, NULL);
    int said = 0;
    for (const char *p = cli_err; (p = strstr(p, name)); p += strlen(name))
        said++;
    cr_expect_eq(said, 1, "%s", cli_err);
    unlink(file);
}

Test(status_cli, metrics_http_is_loopback_only_and_serves)
{
    name_region("http");
    holder_t h;
    hold(&h, 256 * MiB);
    char buf[4096];
    cr_expect_eq(cli(buf, sizeof buf, "metrics", name, "--listen", "0.0.0.0:9400"), 2);
    cr_expect_not_null(strstr(cli_err, "0.0.0.0:9400"), "%s", cli_err);
    cr_expect_eq(cli(buf, sizeof buf, "metrics", name, "--listen", "10.1.2.3:9400"), 2);
    int port = 20000 + getpid() % 20000;
    char addr[64], exe[4200];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    snprintf(exe, sizeof exe, "%s/vramguard", build_dir());
    char *argv[] = {exe, "metrics", name, "--listen", addr, NULL};
    int out;
    int srv_err; /* "serving on ..." is the test's, not the run's output */
    pid_t srv = spawn_err(argv, false, &out, NULL, &srv_err);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int s = -1;
    for (int i = 0; i < 200; i++) {
        s = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(s, (struct sockaddr *)&sa, sizeof sa) == 0)
            break;
        close(s);
        s = -1;
        usleep(20000);
    }
    cr_assert_geq(s, 0, "the server never listened");
    const char req[] = "GET /metrics HTTP/1.0\r\n\r\n";
    cr_assert_eq(write(s, req, sizeof req - 1), (ssize_t)sizeof req - 1);
    static char resp[1 << 16];
    size_t len = 0;
    ssize_t got;
    while ((got = read(s, resp + len, sizeof resp - 1 - len)) > 0)
        len += (size_t)got;
    resp[len] = '\0';
    close(s);
    cr_expect_not_null(strstr(resp, "200 OK"), "%s", resp);
    char key[128];
    snprintf(key, sizeof key, "vramguard_used_bytes{region=\"%s\"", name);
    cr_expect_geq(num_after(strstr(resp, key), "} "), (long long)(256 * MiB));
    kill(srv, SIGINT);
    int st;
    cr_assert_eq(waitpid(srv, &st, 0), srv);
    cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "SIGINT did not exit 0");
    close(out);
    close(srv_err);
    release(&h);
    unlink(file);
}

Test(status_cli, budget_changes_the_region_live)
{
    name_region("budget");
    holder_t h;
    hold(&h, 1 * GiB);
    char buf[4096];
    cr_assert_eq(cli(buf, sizeof buf, "budget", name, "0=512MiB", NULL), 0, "%s", buf);
    vg__shm_t *r = snap();
    cr_expect_eq(r->dev[0].limit, 512 * MiB);
    cr_expect_eq(r->dev[0].used, 1 * GiB);
    cr_expect_eq(r->dev[0].level, VG_PRESSURE_CRITICAL);
    free(r);
    cr_expect_eq(cli(buf, sizeof buf, "budget", name, "7=1GiB", NULL), 1);
    cr_expect_eq(cli(buf, sizeof buf, "budget", name, "1Gx", NULL), 2);
    cr_assert_eq(cli(buf, sizeof buf, "budget", name, "4GiB", NULL), 0);
    r = snap();
    cr_expect_eq(r->dev[0].limit, 4 * GiB);
    cr_expect_eq(r->h.default_limit, 4 * GiB);
    free(r);
    release(&h);
    unlink(file);
}

/* nvidia-smi prints "GPU-" and lower-case hex; a user types either case,
 * prefix included. */
Test(status_cli, budget_names_a_device_by_uuid_in_any_case)
{
    name_region("budgetuuid");
    holder_t h;
    hold(&h, 1 * MiB);
    vg__shm_t *r = snap();
    char uuid[48], arg[80], buf[4096];
    snprintf(uuid, sizeof uuid, "%s", r->dev[0].uuid);
    free(r);
    cr_assert_eq(strncmp(uuid, "GPU-", 4), 0, "%s", uuid);
    memcpy(uuid, "gpu-", 4);
    snprintf(arg, sizeof arg, "%s=512MiB", uuid);
    cr_expect_eq(cli(buf, sizeof buf, "budget", name, arg, NULL), 0, "%s", cli_err);
    r = snap();
    cr_expect_eq(r->dev[0].limit, 512 * MiB);
    free(r);
    for (char *c = uuid; *c; c++)
        *c = (char)toupper((unsigned char)*c);
    snprintf(arg, sizeof arg, "%s=256MiB", uuid);
    cr_expect_eq(cli(buf, sizeof buf, "budget", name, arg, NULL), 0, "%s", cli_err);
    r = snap();
    cr_expect_eq(r->dev[0].limit, 256 * MiB);
    free(r);
    release(&h);
    unlink(file);
}

Test(status_cli, watch_exits_zero_on_sigint)
{
    name_region("watch");
    holder_t h;
    hold(&h, 1 * MiB);
    char exe[4200];
    snprintf(exe, sizeof exe, "%s/vramguard", build_dir());
    char *argv[] = {exe, "status", name, "--watch", NULL};
    int out;
    pid_t pid = spawn(argv, false, &out, NULL);
    char buf[8192];
    struct pollfd p = {.fd = out, .events = POLLIN};
    cr_assert_gt(poll(&p, 1, 10000), 0, "no output from --watch");
    cr_assert_gt(read(out, buf, sizeof buf), 0);
    kill(pid, SIGINT);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    close(out);
    release(&h);
    unlink(file);
}

Test(status_cli, without_a_name_it_lists_every_budgeted_process)
{
    name_region("all");
    holder_t h;
    hold(&h, 768 * MiB);
    static char buf[1 << 16];
    cr_assert_eq(cli(buf, sizeof buf, "status", NULL, NULL, NULL), 0, "%s", cli_err);
    cr_expect_not_null(strstr(buf, "EXPLICIT"), "%s", buf);
    cr_expect_not_null(strstr(buf, "IMPLICIT"), "%s", buf);
    char want[128];
    snprintf(want, sizeof want, "%-8d %-20.20s %-4d", (int)h.pid, "client_shared", 0);
    const char *line = strstr(buf, want);
    cr_assert_not_null(line, "no line for %d:\n%s", (int)h.pid, buf);
    vg__shm_t *r = snap();
    char used[32], limit[32], tail[256];
    int s = 0;
    while (s < VG__SHM_SLOTS && r->slot[s].pid != h.pid)
        s++;
    cr_assert_lt(s, VG__SHM_SLOTS);
    vg__fmt_bytes(r->slot[s].used[0] - r->slot[s].overhead[0], used, sizeof used);
    vg__fmt_bytes(r->dev[0].limit, limit, sizeof limit);
    snprintf(tail, sizeof tail, " %12s", used);
    cr_expect_not_null(strstr(line, tail), "explicit %s: %.200s", used, line);
    cr_expect_not_null(strstr(line, limit), "limit %s: %.200s", limit, line);
    cr_expect_not_null(strstr(line, name), "region: %.200s", line);
    free(r);
    release(&h);
    cr_assert_eq(cli(buf, sizeof buf, "status", name, NULL, NULL), 0, "%s", cli_err);
    cr_expect_not_null(strstr(buf, "no budgeted processes\n"), "%s", buf);
    unlink(file);
}

Test(status_cli, watch_into_a_pipe_writes_timestamps_and_no_escape_codes)
{
    name_region("watchpipe");
    holder_t h;
    hold(&h, 1 * MiB);
    char exe[4200];
    snprintf(exe, sizeof exe, "%s/vramguard", build_dir());
    char *argv[] = {exe, "status", name, "--watch", NULL};
    int out;
    pid_t pid = spawn(argv, false, &out, NULL);
    static char buf[1 << 15];
    size_t len = 0;
    struct pollfd p = {.fd = out, .events = POLLIN};
    while (len < 10 || !strstr(buf, "PID")) {
        cr_assert_gt(poll(&p, 1, 10000), 0, "no output from --watch");
        ssize_t got = read(out, buf + len, sizeof buf - 1 - len);
        cr_assert_gt(got, 0);
        len += (size_t)got;
        buf[len] = '\0';
    }
    kill(pid, SIGINT);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_expect_null(strchr(buf, '\033'), "escape codes into a pipe: %s", buf);
    int y, mo, d, hh, mm, ss;
    cr_expect_eq(sscanf(buf, "%4d-%2d-%2d %2d:%2d:%2d\n", &y, &mo, &d, &hh, &mm, &ss), 6, "%s",
                 buf);
    close(out);
    release(&h);
    unlink(file);
}

Test(status_cli, budget_takes_a_percentage_as_run_does)
{
    name_region("pct");
    holder_t h;
    hold(&h, 1 * MiB);
    char buf[4096];
    cr_assert_eq(cli(buf, sizeof buf, "budget", name, "50%", NULL), 0, "%s", cli_err);
    vg__shm_t *r = snap();
    cr_expect_eq(r->dev[0].limit, 40 * GiB, "half of the test device's 80 GiB");
    cr_expect_eq(r->h.default_limit, 40 * GiB);
    free(r);
    cr_assert_eq(cli(buf, sizeof buf, "budget", name, "0=25%", "--json"), 0, "%s", cli_err);
    cr_expect_not_null(strstr(buf, "\"budget_spec\":\"25%\""), "%s", buf);
    r = snap();
    cr_expect_eq(r->dev[0].limit, 20 * GiB);
    free(r);
    cr_expect_eq(cli(buf, sizeof buf, "budget", name, "150%", NULL), 2, "%s", cli_err);
    /* Several devices' shares at once: one clear line, not an unset reason. */
    cr_expect_eq(cli(buf, sizeof buf, "budget", name, "0=50%,1=20%", NULL), 2, "%s", cli_err);
    cr_expect_not_null(strstr(cli_err, "one device's share per call"), "%s", cli_err);
    release(&h);
    unlink(file);
}

/* A device entry this CLI cannot see (another host's CUDA_VISIBLE_DEVICES,
 * or a uuid it does not have): its N% cannot be worked out. The command
 * fails naming it and changes nothing; it used to set that device's limit
 * to 0, refusing every process on it. */
Test(status_cli, a_percentage_for_a_device_not_visible_here_changes_nothing)
{
    name_region("pcthid");
    holder_t h;
    hold(&h, 1 * MiB);
    vg__shm_t *r = NULL;
    char err[512];
    cr_assert_eq(vg__shm_open(file, VG__SHM_ATTACH, false, &r, err, sizeof err), VG_OK, "%s", err);
    cr_assert_eq(vg__shm_lock(r), VG_OK);
    vg__shm_device_t *other = &r->dev[VG__SHM_DEVICES - 1];
    cr_assert_lt(other->ordinal, 0, "the last entry is free");
    other->ordinal = 1;
    other->limit = 8 * GiB;
    snprintf(other->uuid, sizeof other->uuid, "GPU-not-visible-here");
    uint64_t before = r->dev[0].limit;
    vg__shm_unlock(r);
    char buf[4096];
    cr_expect_eq(cli(buf, sizeof buf, "budget", name, "50%", NULL), 1, "%s", buf);
    cr_expect_not_null(strstr(cli_err, "GPU-not-visible-here"), "%s", cli_err);
    vg__shm_t *c = snap();
    cr_expect_eq(c->dev[VG__SHM_DEVICES - 1].limit, 8 * GiB, "limit %llu",
                 (unsigned long long)c->dev[VG__SHM_DEVICES - 1].limit);
    cr_expect_eq(c->dev[0].limit, before, "the visible device changed too");
    free(c);
    vg__shm_close(r);
    release(&h);
    unlink(file);
}

/* --list shows the limit the region's devices have (a `run --shared NAME
 * --budget X` sets it on each device, not as the default for devices that
 * join later, which --list used to show alone: "none" here). */
Test(status_cli, budget_list_shows_the_devices_limit)
{
    name_region("lim");
    holder_t h;
    hold(&h, 1 * MiB);
    static char buf[1 << 16];
    cr_assert_eq(cli(buf, sizeof buf, "budget", name, "0=512MiB", NULL), 0, "%s", cli_err);
    cr_assert_eq(cli(buf, sizeof buf, "budget", "--list", NULL, NULL), 0, "%s", cli_err);
    const char *row = strstr(buf, name);
    cr_assert_not_null(row, "%s", buf);
    cr_expect_not_null(strstr(row, " 512.00 MiB "), "%s", buf);
    cr_assert_eq(cli(buf, sizeof buf, "budget", "--list", "--json", NULL), 0, "%s", cli_err);
    row = strstr(buf, name);
    cr_assert_not_null(row, "%s", buf);
    cr_expect_not_null(strstr(row, "\"limits\":[536870912]"), "%s", buf);
    release(&h);
    unlink(file);
}

Test(status_cli, budget_lists_and_removes_only_unused_regions)
{
    name_region("rm");
    holder_t h;
    hold(&h, 1 * MiB);
    static char buf[1 << 16];
    cr_assert_eq(cli(buf, sizeof buf, "budget", "--list", NULL, NULL), 0, "%s", cli_err);
    cr_expect_not_null(strstr(buf, name), "%s", buf);
    cr_assert_eq(cli(buf, sizeof buf, "budget", "--list", "--json", NULL), 0, "%s", cli_err);
    char key[128];
    snprintf(key, sizeof key, "{\"name\":\"%s\",", name);
    cr_expect_not_null(strstr(buf, key), "%s", buf);
    cr_expect_eq(cli(buf, sizeof buf, "budget", name, "--remove", NULL), 1, "in use");
    cr_expect_not_null(strstr(cli_err, "in use"), "%s", cli_err);
    cr_expect_eq(access(file, F_OK), 0, "still there");
    release(&h);
    cr_expect_eq(cli(buf, sizeof buf, "budget", name, "--remove", NULL), 0, "%s", cli_err);
    cr_expect_neq(access(file, F_OK), 0, "removed");
    unlink(file);
}

/* One HTTP exchange with the server on 127.0.0.1:port; the reply in resp. */
static void http(int port, const char *req, char *resp, size_t cap)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int s = -1;
    for (int i = 0; i < 200 && s < 0; i++) {
        s = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(s, (struct sockaddr *)&sa, sizeof sa) != 0) {
            close(s);
            s = -1;
            usleep(20000);
        }
    }
    cr_assert_geq(s, 0, "the server never listened");
    struct timeval limit = {.tv_sec = 10}; /* a server that never answers fails, not hangs */
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
    cr_assert_eq(write(s, req, strlen(req)), (ssize_t)strlen(req));
    size_t len = 0;
    ssize_t got;
    while (len + 1 < cap && (got = read(s, resp + len, cap - 1 - len)) > 0)
        len += (size_t)got;
    resp[len] = '\0';
    close(s);
}

Test(status_cli, metrics_serve_only_get_and_head_of_metrics_with_process_series)
{
    name_region("http2");
    holder_t h;
    hold(&h, 256 * MiB);
    int port = 20000 + (getpid() + 7919) % 20000;
    char addr[64], exe[4200];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    snprintf(exe, sizeof exe, "%s/vramguard", build_dir());
    char *argv[] = {exe, "metrics", name, "--listen", addr, NULL};
    int out, err;
    pid_t srv = spawn_err(argv, false, &out, NULL, &err);
    static char resp[1 << 16];
    http(port, "GET /metrics HTTP/1.0\r\n\r\n", resp, sizeof resp);
    cr_expect_not_null(strstr(resp, "200 OK"), "%s", resp);
    char key[256];
    snprintf(key, sizeof key,
             "vramguard_process_explicit_bytes{region=\"%s\",pid=\"%d\",command=\"client_shared\","
             "device=\"0\"} ", name, (int)h.pid);
    cr_expect_geq(num_after(resp, key), (long long)(256 * MiB));
    snprintf(key, sizeof key, "vramguard_process_implicit_bytes{region=\"%s\",pid=\"%d\",", name,
             (int)h.pid);
    cr_expect_not_null(strstr(resp, key), "%s", resp);
    cr_expect_not_null(strstr(resp, "vramguard_build_info{version=\""), "%s", resp);
    http(port, "GET /other HTTP/1.0\r\n\r\n", resp, sizeof resp);
    cr_expect_not_null(strstr(resp, "HTTP/1.0 404"), "%s", resp);
    http(port, "POST /metrics HTTP/1.0\r\n\r\n", resp, sizeof resp);
    cr_expect_not_null(strstr(resp, "HTTP/1.0 405"), "%s", resp);
    cr_expect_not_null(strstr(resp, "Allow: GET, HEAD"), "%s", resp);
    http(port, "HEAD /metrics HTTP/1.0\r\n\r\n", resp, sizeof resp);
    cr_expect_not_null(strstr(resp, "200 OK"), "%s", resp);
    cr_expect_null(strstr(resp, "vramguard_used_bytes"), "HEAD has no body: %s", resp);
    /* A client that connects and sends nothing does not stop the next scrape. */
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int idle = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_eq(connect(idle, (struct sockaddr *)&sa, sizeof sa), 0);
    http(port, "GET /metrics HTTP/1.0\r\n\r\n", resp, sizeof resp);
    cr_expect_not_null(strstr(resp, "200 OK"), "an idle connection stopped the server: %s", resp);
    close(idle);
    kill(srv, SIGINT);
    int st;
    cr_assert_eq(waitpid(srv, &st, 0), srv);
    close(out);
    close(err);
    release(&h);
    unlink(file);
}
