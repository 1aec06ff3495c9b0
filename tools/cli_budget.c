/*
 * cli_budget.c — `vramguard budget`: lists shared budgets (--list), removes
 * one nobody uses (--remove), and changes one live (NAME [DEV=]SIZE|N%), for
 * one device (by index or GPU uuid) or for all of them (and for devices
 * that join later). Every process of the region sees a change at its next
 * allocation; shrinking below use raises pressure and refuses new requests,
 * and never touches a live allocation. N% is of each device's memory, read
 * from the driver as `run` reads it.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "cli.h"
#include "vg_driver.h"
#include "vg_settings.h"
#include "vg_shared.h"

static const char *const CMD = "budget";

void cli_budget_help(FILE *f)
{
    fprintf(f, "Usage: vramguard budget NAME [DEV=]SIZE|N%% [--json]\n"
               "       vramguard budget --list [--json]\n"
               "       vramguard budget NAME --remove\n\n");
    cli_wrap(f, 0, 78,
             "Sets the budget of the shared region NAME (VRAMGUARD_SHARED=NAME) "
             "while its processes run. DEV is a device index or a GPU uuid as "
             "`vramguard status NAME` shows; without it every device, and every "
             "device that joins later, gets the budget. SIZE is 8GiB, 512MiB, "
             "1.5G, 10GB, or 'none' for no limit; N% is that share of each "
             "device's memory, as `vramguard run --budget N%` takes it (devices "
             "that join later get N% of the smallest device the driver shows). "
             "Shrinking below use refuses new requests until frees bring use "
             "down; live allocations are never touched.");
    fprintf(f, "\nOptions:\n"
               "  --list    every shared budget: name, its devices' limit (or 'per device'\n"
               "            when they differ; with no device yet, the one devices joining\n"
               "            later get), devices, live processes\n"
               "  --remove  delete the region NAME; refused while a live process uses it\n"
               "  --json    one JSON object (field names as in the audit log)\n\n");
    cli_wrap(f, 0, 78,
             "Exit status: 0 when done; 1 when the region cannot be read or "
             "changed, or is in use (--remove); 2 for a usage error.");
}

/* The entry DEV names: an index ("0") or a uuid, in any case. -1 when
 * none. */
static int find_entry(const vg__shm_t *r, const char *dev)
{
    char *end;
    long idx = strtol(dev, &end, 10);
    bool is_index = *dev && !*end;
    for (int d = 0; d < VG__SHM_DEVICES; d++) {
        if (r->dev[d].ordinal < 0)
            continue;
        if (is_index ? r->dev[d].ordinal == idx
                     : strncasecmp(r->dev[d].uuid, dev, sizeof r->dev[d].uuid) == 0)
            return d;
    }
    return -1;
}

/* ------------------------------------------------------ percentages */

/* The limit of entry e for a budget `spec` of N%, from the driver's figure
 * for the device with the entry's uuid. False when no device this CLI sees
 * has it (hidden by CUDA_VISIBLE_DEVICES, or an entry with no uuid). */
static bool entry_limit(const vg__budget_spec_t *spec, const vg__shm_device_t *e,
                        uint64_t *limit)
{
    int n = 0;
    const vg__driver_t *drv = vg__driver();
    if (!e->uuid[0] || !drv || drv->cuDeviceGetCount(&n) != CUDA_SUCCESS)
        return false;
    for (int i = 0; i < n; i++) {
        char uuid[48];
        uint64_t total;
        if (vg__device_uuid(i, uuid) == VG_OK && strcasecmp(uuid, e->uuid) == 0 &&
            vg__device_total(i, &total) == VG_OK) {
            *limit = vg__budget_spec_limit(spec, i, uuid, total);
            return true;
        }
    }
    return false;
}

/* N% of the smallest device: the default for devices not claimed yet.
 * False when a device's memory cannot be read. */
static bool smallest_limit(const vg__budget_spec_t *spec, uint64_t *min)
{
    int n = 0;
    const vg__driver_t *drv = vg__driver();
    if (!drv || drv->cuDeviceGetCount(&n) != CUDA_SUCCESS || n <= 0)
        return false;
    for (int i = 0; i < n; i++) {
        uint64_t total, limit;
        if (vg__device_total(i, &total) != VG_OK)
            return false;
        limit = vg__budget_spec_limit(spec, i, NULL, total);
        *min = i == 0 || limit < *min ? limit : *min;
    }
    return true;
}

/* Applies N% to entry d, or (d < 0) to the default for devices that join
 * later and then to every entry, each from its own device's memory. Every
 * limit is worked out before any is set: an entry whose device this CLI
 * cannot read stops the change, with one line naming it and nothing
 * changed (a limit of 0 there would refuse every process on the device).
 * VG_ENODEV then, said already. */
static int set_percent(vg__shm_t *r, int d, const vg__budget_spec_t *spec)
{
    vg__shm_t *snap = malloc(sizeof *snap);
    uint64_t limit[VG__SHM_DEVICES], def = 0;
    int rc = snap ? vg__shm_snapshot(r, snap) : VG_ENOMEM;
    if (rc == VG_OK && d < 0 && !smallest_limit(spec, &def)) {
        cli_error(CMD, "cannot read every device's memory for a percentage; nothing changed");
        rc = VG_ENODEV;
    }
    for (int e = 0; rc == VG_OK && e < VG__SHM_DEVICES; e++) {
        const vg__shm_device_t *x = &snap->dev[e];
        if (x->ordinal < 0 || (d >= 0 && e != d) || entry_limit(spec, x, &limit[e]))
            continue;
        cli_error(CMD, "device %s (index %d) is not visible to this command, so its share "
                  "cannot be worked out; nothing changed (give it a SIZE, or run this where "
                  "the device is visible)", x->uuid[0] ? x->uuid : "with no uuid", x->ordinal);
        rc = VG_ENODEV;
    }
    if (rc == VG_OK && d < 0)
        rc = vg__shm_set_limit(r, -1, def);
    for (int e = 0; rc == VG_OK && e < VG__SHM_DEVICES; e++)
        if (snap->dev[e].ordinal >= 0 && (d < 0 || e == d))
            rc = vg__shm_set_limit(r, e, limit[e]);
    free(snap);
    return rc;
}

/* ------------------------------------------------------------ change */

typedef struct budget_req {
    const char *name;
    const char *dev;          /* NULL: every device */
    const char *text;         /* as given */
    uint64_t limit;           /* for SIZE / none */
    bool percent;
    vg__budget_spec_t spec;   /* for N% */
    bool json;
} budget_req_t;

static int open_region(const char *name, vg__shm_t **r, char *path, size_t len)
{
    char err[512];
    *r = NULL;
    if (vg__shm_path(name, path, len) != VG_OK ||
        vg__shm_open(path, VG__SHM_ATTACH, true, r, err, sizeof err) != VG_OK) {
        cli_error(CMD, "%s", *r ? "bad name" : err);
        return CLI_EXIT_FAIL;
    }
    return CLI_EXIT_OK;
}

static int apply(const budget_req_t *q)
{
    char path[CLI_PATH_MAX];
    vg__shm_t *r;
    if (open_region(q->name, &r, path, sizeof path) != CLI_EXIT_OK)
        return CLI_EXIT_FAIL;
    int d = -1;
    if (q->dev && (d = find_entry(r, q->dev)) < 0) {
        cli_error(CMD, "device '%s' is not in %s yet (no process has used it); set the "
                       "budget of every device with SIZE alone", q->dev, path);
        vg__shm_close(r);
        return CLI_EXIT_FAIL;
    }
    int rc = q->percent ? set_percent(r, d, &q->spec) : vg__shm_set_limit(r, d, q->limit);
    vg__shm_close(r);
    if (rc != VG_OK) {
        if (rc != VG_ENODEV) /* set_percent said why */
            cli_error(CMD, "cannot change %s", path);
        return CLI_EXIT_FAIL;
    }
    char b[32];
    if (q->json)
        printf("{\"name\":\"%s\",\"dev\":%s%s%s,\"budget_spec\":\"%s\"}\n", q->name,
               q->dev ? "\"" : "", q->dev ? q->dev : "null", q->dev ? "\"" : "", q->text);
    else
        printf("%s: %s budget set to %s\n", q->name, q->dev ? q->dev : "every device",
               q->percent ? q->text
               : q->limit == VG__UNLIMITED ? "none"
                                           : vg__fmt_bytes(q->limit, b, sizeof b));
    return CLI_EXIT_OK;
}

/* [DEV=]SIZE|N%|none into q. */
static int parse_value(budget_req_t *q, const char *arg, char *dev, size_t devlen)
{
    char err[160];
    const char *eq = strchr(arg, '=');
    q->text = arg;
    if (eq) {
        if (eq == arg || (size_t)(eq - arg) >= devlen)
            return cli_usage_error(CMD, "bad device in '%s'", arg);
        snprintf(dev, devlen, "%.*s", (int)(eq - arg), arg);
        q->dev = dev;
        q->text = eq + 1;
    }
    q->limit = VG__UNLIMITED;
    if (strcmp(q->text, "none") == 0)
        return CLI_EXIT_OK;
    if (strchr(q->text, '%')) {
        if (vg__budget_spec_parse(q->text, &q->spec, err, sizeof err) != VG_OK)
            return cli_usage_error(CMD, "bad budget '%s': %s", q->text, err);
        if (q->spec.count != 0) /* DEV=N%,... : one device per call (DEV=N%) */
            return cli_usage_error(CMD, "bad budget '%s': give one device's share per call, "
                                   "as DEV=N%%", q->text);
        if (vg__driver_load(getenv("VRAMGUARD_LIBCUDA")) != VG_OK || vg__driver()->cuInit(0) != CUDA_SUCCESS) {
            cli_error(CMD, "'%s' needs the driver to read each device's memory: %s", q->text,
                      vg__driver_error()[0] ? vg__driver_error() : "cuInit failed");
            return CLI_EXIT_FAIL;
        }
        q->percent = true;
        return CLI_EXIT_OK;
    }
    if (vg__size_parse(q->text, &q->limit, err, sizeof err) != VG_OK)
        return cli_usage_error(CMD, "bad size '%s': %s", q->text, err);
    return CLI_EXIT_OK;
}

/* ------------------------------------------------------ list, remove */

typedef struct list_ctx {
    bool json;
    int n;
} list_ctx_t;

/* What --list shows as a region's budget: its devices' limit, with *mixed
 * set when they differ; with no device yet, the default that devices
 * joining later get. */
static uint64_t listed_limit(const vg__shm_t *r, bool *mixed)
{
    int first = -1;
    *mixed = false;
    for (int d = 0; d < VG__SHM_DEVICES; d++) {
        if (r->dev[d].ordinal < 0)
            continue;
        if (first < 0)
            first = d;
        else if (r->dev[d].limit != r->dev[first].limit)
            *mixed = true;
    }
    return first < 0 ? r->h.default_limit : r->dev[first].limit;
}

static void json_limit(uint64_t v)
{
    printf(v == VG__UNLIMITED ? "-1" : "%llu", (unsigned long long)v);
}

static void list_one(const char *name, const vg__shm_t *r, const unsigned char *alive, void *ctx)
{
    list_ctx_t *l = ctx;
    char b[32];
    int procs = 0, devs = 0;
    for (int s = 0; s < VG__SHM_SLOTS; s++)
        procs += r->slot[s].pid > 0 && alive[s];
    bool mixed;
    uint64_t lim = listed_limit(r, &mixed);
    if (l->json) {
        printf("%s{\"name\":\"%s\",\"path\":\"" VG__SHM_PREFIX "%s\",\"budget\":",
               l->n ? "," : "", name, name);
        json_limit(r->h.default_limit);
        printf(",\"limits\":[");
        for (int d = 0; d < VG__SHM_DEVICES; d++) {
            if (r->dev[d].ordinal < 0)
                continue;
            printf("%s", devs++ ? "," : "");
            json_limit(r->dev[d].limit);
        }
        printf("],\"devices\":%d,\"processes\":%d}", devs, procs);
    } else {
        for (int d = 0; d < VG__SHM_DEVICES; d++)
            devs += r->dev[d].ordinal >= 0;
        if (l->n == 0)
            printf("%-32s %12s %8s %10s\n", "NAME", "BUDGET", "DEVICES", "PROCESSES");
        printf("%-32s %12s %8d %10d\n", name,
               mixed ? "per device" : lim == VG__UNLIMITED ? "none" : vg__fmt_bytes(lim, b, sizeof b),
               devs, procs);
    }
    l->n++;
}

static int list(bool json)
{
    list_ctx_t l = {json, 0};
    if (json)
        printf("{\"regions\":[");
    int rc = cli_regions(CMD, NULL, list_one, &l);
    if (json)
        printf("]}\n");
    else if (l.n == 0)
        printf("no shared budgets\n");
    return rc;
}

/* The live count and the unlink happen under the region's lock
 * (vg__shm_retire), so a process cannot slip in between them. */
static int remove_region(const char *name)
{
    char path[CLI_PATH_MAX], err[512];
    if (vg__shm_path(name, path, sizeof path) != VG_OK || name[0] == '/') {
        cli_error(CMD, "bad name '%s'", name);
        return CLI_EXIT_USAGE;
    }
    vg__shm_t *r = NULL;
    if (vg__shm_open(path, VG__SHM_ATTACH, true, &r, err, sizeof err) != VG_OK) {
        cli_error(CMD, "%s", err);
        return CLI_EXIT_FAIL;
    }
    int live = 0, rc = vg__shm_retire(r, path, &live);
    int sys = errno;
    if (rc == VG_EDENIED)
        cli_error(CMD, "%s is in use by %d live process%s; not removed", name, live,
                  live == 1 ? "" : "es");
    else if (rc != VG_OK && live < 0)
        cli_error(CMD, "cannot remove %s: its lock is stuck (held by thread %d)", path,
                  (int)vg__shm_lock_owner(r));
    else if (rc != VG_OK)
        cli_error(CMD, "cannot remove %s: %s", path, strerror(sys));
    vg__shm_close(r);
    if (rc != VG_OK)
        return CLI_EXIT_FAIL;
    printf("%s: removed\n", name);
    return CLI_EXIT_OK;
}

int cli_budget_main(int argc, char **argv)
{
    const char *word[2] = {NULL, NULL};
    bool json = false, do_list = false, do_remove = false;
    int nword = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            cli_budget_help(stdout);
            return CLI_EXIT_OK;
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "--list")) {
            do_list = true;
        } else if (!strcmp(a, "--remove")) {
            do_remove = true;
        } else if ((a[0] == '-' && a[1] && !(a[1] >= '0' && a[1] <= '9')) || nword == 2) {
            return cli_usage_error(CMD, "unexpected argument '%s'", a);
        } else {
            word[nword++] = a;
        }
    }
    if (do_list)
        return nword == 0 && !do_remove ? list(json)
                                        : cli_usage_error(CMD, "--list takes no NAME");
    if (do_remove)
        return nword == 1 ? remove_region(word[0])
                          : cli_usage_error(CMD, "--remove wants NAME alone");
    if (nword != 2)
        return cli_usage_error(CMD, "want NAME and [DEV=]SIZE");
    budget_req_t q = {.name = word[0], .json = json};
    char dev[64];
    int rc = parse_value(&q, word[1], dev, sizeof dev);
    return rc != CLI_EXIT_OK ? rc : apply(&q);
}
