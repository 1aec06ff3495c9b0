/*
 * cli_budget.c — `vramguard budget NAME [DEV=]SIZE`: changes a shared budget
 * live, for one device (by index or GPU uuid) or for all of them (and for
 * devices that join later). Every process of the region sees it at its next
 * allocation; shrinking below use raises pressure and refuses new requests,
 * and never touches a live allocation.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "vg_settings.h"
#include "vg_shared.h"

static const char *const CMD = "budget";

void cli_budget_help(FILE *f)
{
    fprintf(f, "Usage: vramguard budget NAME [DEV=]SIZE\n\n");
    cli_wrap(f, 0, 78,
             "Sets the budget of the shared region NAME (VRAMGUARD_SHARED=NAME) "
             "while its processes run. DEV is a device index or a GPU uuid as "
             "`vramguard status NAME` shows; without it every device, and every "
             "device that joins later, gets SIZE (8GiB, 512MiB, 1.5G, 10GB, or "
             "'none' for no limit). Shrinking below use refuses new requests "
             "until frees bring use down; live allocations are never touched.");
}

/* The entry DEV names: an index ("0") or a uuid. -1 when none. */
static int find_entry(const vg__shm_t *r, const char *dev)
{
    char *end;
    long idx = strtol(dev, &end, 10);
    bool is_index = *dev && !*end;
    for (int d = 0; d < VG__SHM_DEVICES; d++) {
        if (r->dev[d].ordinal < 0)
            continue;
        if (is_index ? r->dev[d].ordinal == idx
                     : strncmp(r->dev[d].uuid, dev, sizeof r->dev[d].uuid) == 0)
            return d;
    }
    return -1;
}

static int apply(const char *name, const char *dev, uint64_t limit)
{
    char path[CLI_PATH_MAX], err[512];
    vg__shm_t *r = NULL;
    if (vg__shm_path(name, path, sizeof path) != VG_OK ||
        vg__shm_open(path, VG__SHM_ATTACH, true, &r, err, sizeof err) != VG_OK) {
        cli_error(CMD, "%s", r ? "bad name" : err);
        return CLI_EXIT_FAIL;
    }
    int d = -1;
    if (dev && (d = find_entry(r, dev)) < 0) {
        cli_error(CMD, "device '%s' is not in %s yet (no process has used it); set the "
                       "budget of every device with SIZE alone", dev, path);
        vg__shm_close(r);
        return CLI_EXIT_FAIL;
    }
    int rc = vg__shm_set_limit(r, d, limit);
    vg__shm_close(r);
    if (rc != VG_OK) {
        cli_error(CMD, "cannot lock %s", path);
        return CLI_EXIT_FAIL;
    }
    char b[32];
    printf("%s: %s budget set to %s\n", name, dev ? dev : "every device",
           limit == VG__UNLIMITED ? "none" : vg__fmt_bytes(limit, b, sizeof b));
    return CLI_EXIT_OK;
}

int cli_budget_main(int argc, char **argv)
{
    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        cli_budget_help(stdout);
        return CLI_EXIT_OK;
    }
    if (argc != 3)
        return cli_usage_error(CMD, "want NAME and [DEV=]SIZE");
    char dev[64] = "", err[160];
    const char *size = argv[2], *eq = strchr(argv[2], '=');
    if (eq) {
        if (eq == argv[2] || (size_t)(eq - argv[2]) >= sizeof dev)
            return cli_usage_error(CMD, "bad device in '%s'", argv[2]);
        snprintf(dev, sizeof dev, "%.*s", (int)(eq - argv[2]), argv[2]);
        size = eq + 1;
    }
    uint64_t limit = VG__UNLIMITED;
    if (strcmp(size, "none") != 0 && vg__size_parse(size, &limit, err, sizeof err) != VG_OK)
        return cli_usage_error(CMD, "bad size '%s': %s", size, err);
    return apply(argv[1], dev[0] ? dev : NULL, limit);
}
