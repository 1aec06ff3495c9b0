/*
 * cli_status.c — `vramguard status [NAME] [--watch] [--json]`: what a shared
 * budget looks like now, per device and per process, read like nvidia-smi.
 *
 * It also holds cli_regions(), the way status and metrics find and read
 * regions: each is opened with the same checks as the engine's (owner,
 * mode, header), copied under its lock, and never changed (dead slots are
 * shown as dead, not reaped: reaping is the engine's job).
 */
#include <dirent.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "vg_shared.h"

static const char *const CMD = "status";

int cli_regions(const char *cmd, const char *name, cli_region_fn fn, void *ctx)
{
    DIR *dir = NULL;
    struct dirent *de;
    const char *base = strrchr(VG__SHM_PREFIX, '/') + 1;
    if (!name && !(dir = opendir("/dev/shm")))
        return CLI_EXIT_OK; /* no /dev/shm, no regions */
    int rc = CLI_EXIT_OK;
    vg__shm_t *snap = malloc(sizeof *snap);
    unsigned char *alive = calloc(VG__SHM_SLOTS, 1);
    if (!snap || !alive) {
        cli_error(cmd ? cmd : "metrics", "out of memory");
        rc = CLI_EXIT_INTERNAL;
        goto out;
    }
    while (name || (de = readdir(dir))) {
        const char *n = name;
        if (!n) {
            if (strncmp(de->d_name, base, strlen(base)) || strstr(de->d_name, ".tmp."))
                continue;
            n = de->d_name + strlen(base);
        }
        char path[CLI_PATH_MAX], err[512] = "region name too long";
        vg__shm_t *r = NULL;
        if (vg__shm_path(n, path, sizeof path) != VG_OK ||
            vg__shm_open(path, VG__SHM_ATTACH, true, &r, err, sizeof err) != VG_OK ||
            vg__shm_snapshot(r, snap) != VG_OK) {
            if (cmd) /* NULL: said already (metrics walks the regions once per metric) */
                cli_error(cmd, "%s", r ? "cannot lock the region" : err);
            vg__shm_close(r);
            rc = name ? CLI_EXIT_FAIL : rc;
        } else {
            vg__shm_close(r);
            for (int s = 0; s < VG__SHM_SLOTS; s++)
                alive[s] = snap->slot[s].pid > 0 && vg__shm_slot_alive(&snap->slot[s]);
            fn(n, snap, alive, ctx);
        }
        if (name)
            break;
    }
out:
    free(snap);
    free(alive);
    if (dir)
        closedir(dir);
    return rc;
}

/* ------------------------------------------------------------ output */

static void bytes_cell(FILE *f, uint64_t v)
{
    char b[32];
    fprintf(f, " %12s", v == VG__UNLIMITED ? "unlimited" : vg__fmt_bytes(v, b, sizeof b));
}

/* The command as stored, printable: at most VG__SHM_CMD bytes, controls
 * replaced (the region is written by other processes). */
static void clean_cmd(const vg__shm_slot_t *s, char out[VG__SHM_CMD + 1])
{
    size_t n = strnlen(s->cmd, VG__SHM_CMD);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s->cmd[i];
        out[i] = c < 0x20 || c == 0x7f || c == '"' || c == '\\' ? '?' : (char)c;
    }
    out[n] = '\0';
}

/* What the process asked for (its use less what no call shows), and the
 * implicit rest (context, modules: the slot's overhead). */
static uint64_t explicit_use(const vg__shm_slot_t *s, int d)
{
    return s->used[d] > s->overhead[d] ? s->used[d] - s->overhead[d] : 0;
}

static int level_of(const vg__shm_device_t *d)
{
    return d->level >= 0 && d->level <= VG_PRESSURE_CRITICAL ? d->level : 0;
}

static bool slot_uses(const vg__shm_slot_t *s, int d)
{
    return s->used[d] || s->live[d] || s->overhead[d];
}

static void print_table(const char *name, const vg__shm_t *r, const unsigned char *alive,
                        void *ctx)
{
    FILE *f = ctx;
    char uuid[49];
    fprintf(f, "Shared budget %s (" VG__SHM_PREFIX "%s)\n", name, name);
    fprintf(f, "%-4s %-40s %12s %12s %12s %-9s %9s\n", "DEV", "UUID", "BUDGET", "USED",
            "PEAK", "PRESSURE", "REFUSALS");
    for (int d = 0; d < VG__SHM_DEVICES; d++) {
        const vg__shm_device_t *e = &r->dev[d];
        if (e->ordinal < 0)
            continue;
        snprintf(uuid, sizeof uuid, "%.*s", (int)strnlen(e->uuid, 48), e->uuid);
        fprintf(f, "%-4d %-40s", e->ordinal, uuid[0] ? uuid : "-");
        bytes_cell(f, e->limit);
        bytes_cell(f, e->used);
        bytes_cell(f, e->peak);
        fprintf(f, " %-9s %9llu\n", vg_pressure_name(level_of(e)),
                (unsigned long long)e->refusals);
    }
    fprintf(f, "\n%-8s %-20s %-4s %12s %12s %8s %s\n", "PID", "COMMAND", "DEV", "EXPLICIT",
            "IMPLICIT", "LIVE", "STATE");
    int rows = 0;
    for (int s = 0; s < VG__SHM_SLOTS; s++) {
        const vg__shm_slot_t *sl = &r->slot[s];
        char cmd[VG__SHM_CMD + 1];
        if (sl->pid <= 0)
            continue;
        clean_cmd(sl, cmd);
        for (int d = 0; d < VG__SHM_DEVICES; d++) {
            if (!slot_uses(sl, d) || r->dev[d].ordinal < 0)
                continue;
            fprintf(f, "%-8d %-20.20s %-4d", sl->pid, cmd, r->dev[d].ordinal);
            bytes_cell(f, explicit_use(sl, d));
            bytes_cell(f, sl->overhead[d]);
            fprintf(f, " %8llu", (unsigned long long)sl->live[d]);
            fprintf(f, " %s\n", alive[s] ? "running" : "dead (reaped on next allocation)");
            rows++;
        }
    }
    if (rows == 0)
        fprintf(f, "no budgeted processes\n");
    fputc('\n', f);
}

/* ------------------------------------------- every process, no NAME */

typedef struct procs_ctx {
    FILE *f;
    int rows;
} procs_ctx_t;

/* One line per live process and device of a region, under one header for
 * every region (printed before the first line). */
static void print_procs(const char *name, const vg__shm_t *r, const unsigned char *alive,
                        void *ctx)
{
    procs_ctx_t *p = ctx;
    for (int s = 0; s < VG__SHM_SLOTS; s++) {
        const vg__shm_slot_t *sl = &r->slot[s];
        char cmd[VG__SHM_CMD + 1];
        if (sl->pid <= 0 || !alive[s])
            continue;
        clean_cmd(sl, cmd);
        for (int d = 0; d < VG__SHM_DEVICES; d++) {
            if (!slot_uses(sl, d) || r->dev[d].ordinal < 0)
                continue;
            if (p->rows++ == 0)
                fprintf(p->f, "%-8s %-20s %-4s %12s %12s %12s  %s\n", "PID", "COMMAND", "DEV",
                        "EXPLICIT", "IMPLICIT", "LIMIT", "SHARED BUDGET");
            fprintf(p->f, "%-8d %-20.20s %-4d", sl->pid, cmd, r->dev[d].ordinal);
            bytes_cell(p->f, explicit_use(sl, d));
            bytes_cell(p->f, sl->overhead[d]);
            bytes_cell(p->f, r->dev[d].limit);
            fprintf(p->f, "  %s\n", name);
        }
    }
}

typedef struct json_ctx {
    FILE *f;
    int regions;
} json_ctx_t;

static void json_u64(FILE *f, const char *key, uint64_t v, const char *sep)
{
    if (v == VG__UNLIMITED)
        fprintf(f, "\"%s\":null%s", key, sep);
    else
        fprintf(f, "\"%s\":%llu%s", key, (unsigned long long)v, sep);
}

static void json_devices(FILE *f, const vg__shm_t *r)
{
    int n = 0;
    fprintf(f, "\"devices\":[");
    for (int d = 0; d < VG__SHM_DEVICES; d++) {
        const vg__shm_device_t *e = &r->dev[d];
        char uuid[VG__SHM_CMD + 1];
        if (e->ordinal < 0)
            continue;
        vg__shm_slot_t tmp; /* reuse clean_cmd's escaping for the uuid */
        memset(&tmp, 0, sizeof tmp);
        memcpy(tmp.cmd, e->uuid, sizeof e->uuid);
        clean_cmd(&tmp, uuid);
        fprintf(f, "%s{\"index\":%d,\"uuid\":\"%s\",", n++ ? "," : "", e->ordinal, uuid);
        json_u64(f, "budget", e->limit, ",");
        json_u64(f, "used", e->used, ",");
        json_u64(f, "peak", e->peak, ",");
        fprintf(f, "\"pressure\":\"%s\",\"level\":%d,", vg_pressure_name(level_of(e)),
                level_of(e));
        json_u64(f, "refusals", e->refusals, "}");
    }
    fprintf(f, "]");
}

static void json_processes(FILE *f, const vg__shm_t *r, const unsigned char *alive)
{
    int n = 0;
    fprintf(f, "\"processes\":[");
    for (int s = 0; s < VG__SHM_SLOTS; s++) {
        const vg__shm_slot_t *sl = &r->slot[s];
        char cmd[VG__SHM_CMD + 1];
        if (sl->pid <= 0)
            continue;
        memcpy(cmd, sl->cmd, VG__SHM_CMD);
        cmd[VG__SHM_CMD] = '\0'; /* written by another process: maybe unterminated */
        fprintf(f, "%s{\"pid\":%d,\"command\":\"", n++ ? "," : "", sl->pid);
        cli_json_text(f, cmd);
        fprintf(f, "\",\"alive\":%s,\"devices\":[", alive[s] ? "true" : "false");
        int m = 0;
        for (int d = 0; d < VG__SHM_DEVICES; d++) {
            if (!slot_uses(sl, d) || r->dev[d].ordinal < 0)
                continue;
            fprintf(f, "%s{\"index\":%d,", m++ ? "," : "", r->dev[d].ordinal);
            json_u64(f, "used", sl->used[d], ",");
            json_u64(f, "live", sl->live[d], ",");
            json_u64(f, "overhead", sl->overhead[d], "}");
        }
        fprintf(f, "]}");
    }
    fprintf(f, "]");
}

static void print_json(const char *name, const vg__shm_t *r, const unsigned char *alive,
                       void *ctx)
{
    json_ctx_t *j = ctx;
    fprintf(j->f, "%s{\"name\":\"", j->regions++ ? ",\n" : "");
    cli_json_text(j->f, name);
    fprintf(j->f, "\",\"path\":\"" VG__SHM_PREFIX);
    cli_json_text(j->f, name);
    fprintf(j->f, "\",");
    json_devices(j->f, r);
    fputc(',', j->f);
    json_processes(j->f, r, alive);
    fputc('}', j->f);
}

/* ------------------------------------------------------------ command */

void cli_status_help(FILE *f)
{
    fprintf(f, "Usage: vramguard status [NAME] [--watch] [--json]\n\n");
    cli_wrap(f, 0, 78,
             "Without NAME, lists every budgeted process it can see: each live "
             "process of every /dev/shm/vramguard.* region you may read (every "
             "`vramguard run --budget` and every shared budget), with its pid, "
             "command, device, explicit use (what it allocated), implicit use "
             "(context, modules: memory no call shows) and the limit; 'no "
             "budgeted processes' when there are none. Processes started with "
             "--per-process have no region and are not listed. With NAME, the "
             "shared budget NAME: per device the budget, use, peak, pressure "
             "level and refusals; per process the same figures and its live "
             "allocations. A process marked dead was killed; its share returns "
             "at the next allocation by anyone.");
    fprintf(f, "\nOptions:\n"
               "  --watch   redraw every second until interrupted, under a timestamp\n"
               "            (plain text, no screen clearing, when not a terminal)\n"
               "  --json    one JSON document for scripts: "
               "{\"regions\":[{name,path,devices,processes}]}\n"
               "  -h, --help\n            show this help and exit\n\n");
    cli_wrap(f, 0, 78,
             "Exit status: 0; 1 when the region NAME cannot be read (with "
             "--watch: when it goes, or the output is closed); 2 for a usage "
             "error.");
}

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static int show(const char *name, bool json)
{
    if (!json && !name) {
        procs_ctx_t p = {stdout, 0};
        int rc = cli_regions(CMD, NULL, print_procs, &p);
        if (p.rows == 0)
            printf("no budgeted processes\n");
        return rc;
    }
    if (!json)
        return cli_regions(CMD, name, print_table, stdout);
    json_ctx_t j = {stdout, 0};
    printf("{\"regions\":[");
    int rc = cli_regions(CMD, name, print_json, &j);
    printf("]}\n");
    return rc;
}

int cli_status_main(int argc, char **argv)
{
    const char *name = NULL;
    bool watch = false, json = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            cli_status_help(stdout);
            return CLI_EXIT_OK;
        } else if (!strcmp(argv[i], "--watch")) {
            watch = true;
        } else if (!strcmp(argv[i], "--json")) {
            json = true;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return cli_option_error(CMD, argv[i],
                                    (const char *const[]){"--watch", "--json", "--help", NULL});
        } else if (argv[i][0] == '-' || name) {
            return cli_usage_error(CMD, "unexpected argument '%s'", argv[i]);
        } else {
            name = argv[i];
        }
    }
    if (!watch)
        return show(name, json);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    bool tty = isatty(STDOUT_FILENO);
    while (!stop) {
        if (!json) {
            char when[64];
            time_t now = time(NULL);
            struct tm tm;
            strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S",
                     localtime_r(&now, &tm) ? &tm : &(struct tm){0});
            /* Home and clear on a terminal only: a pipe or file gets plain
             * text, one timestamped snapshot after another. */
            printf("%s%s\n", tty ? "\033[H\033[2J" : "", when);
        }
        int rc = show(name, json);
        if (fflush(stdout) != 0 || ferror(stdout))
            return CLI_EXIT_FAIL; /* the reader went away (SIGPIPE ignored) */
        if (rc != CLI_EXIT_OK && name)
            return rc; /* the named region is gone, or never was */
        sleep(1);
    }
    return CLI_EXIT_OK;
}
