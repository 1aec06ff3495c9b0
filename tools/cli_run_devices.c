/*
 * cli_run_devices.c — `vramguard run`'s check that a per-device budget
 * names devices that exist. The engine applies an entry only to the device
 * it names, so "5=1GiB" on a one-GPU machine, or a mistyped GPU uuid, would
 * leave the device the user meant without a limit: a budget must never be
 * unlimited by a typo. The CLI asks the driver (as the command will see it,
 * CUDA_VISIBLE_DEVICES included) before the command starts.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "cli.h"
#include "vg_driver.h"
#include "vg_settings.h"

#define RUN "run"

typedef struct visible {
    int count;
    char uuid[VG__MAX_DEVICES][48];
} visible_t;

/* The devices the driver shows; -1 when it cannot be asked. A driver that
 * loads but whose cuInit says CUDA_ERROR_NO_DEVICE shows none (what
 * CUDA_VISIBLE_DEVICES empty, or naming no real device, leaves). */
static int visible_devices(const char *libcuda, visible_t *v)
{
    const vg__driver_t *d;
    CUresult rc;
    v->count = 0;
    if (vg__driver_load(libcuda) != VG_OK || !(d = vg__driver()))
        return -1;
    if ((rc = d->cuInit(0)) == CUDA_ERROR_NO_DEVICE)
        return 0;
    if (rc != CUDA_SUCCESS || d->cuDeviceGetCount(&v->count) != CUDA_SUCCESS)
        return -1;
    if (v->count > VG__MAX_DEVICES)
        v->count = VG__MAX_DEVICES;
    for (int i = 0; i < v->count; i++)
        if (vg__device_uuid(i, v->uuid[i]) != VG_OK)
            v->uuid[i][0] = '\0';
    return 0;
}

static bool entry_matches(const vg__budget_spec_t *spec, int e, const visible_t *v)
{
    if (!spec->entry[e].uuid[0])
        return spec->entry[e].ordinal >= 0 && spec->entry[e].ordinal < v->count;
    for (int i = 0; i < v->count; i++)
        if (strcasecmp(spec->entry[e].uuid, v->uuid[i]) == 0)
            return true;
    return false;
}

/* Appends the entry's device ("5", "GPU-...") to list. */
static void list_add(char *list, size_t len, const vg__budget_spec_t *spec, int e)
{
    size_t used = strlen(list);
    char dev[64];
    if (spec->entry[e].uuid[0])
        snprintf(dev, sizeof dev, "%s", spec->entry[e].uuid);
    else
        snprintf(dev, sizeof dev, "%d", spec->entry[e].ordinal);
    snprintf(list + used, len - used, "%s'%s'", used ? ", " : "", dev);
}

int cli_run_devices(const vg__budget_spec_t *spec, const char *libcuda)
{
    visible_t v;
    char missing[1024] = "";
    int matched = 0, unmatched = 0;
    if (spec->count == 0 || visible_devices(libcuda, &v) != 0)
        return CLI_EXIT_OK;
    for (int e = 0; e < spec->count; e++) {
        if (entry_matches(spec, e, &v)) {
            matched++;
        } else {
            unmatched++;
            list_add(missing, sizeof missing, spec, e);
        }
    }
    if (unmatched == 0)
        return CLI_EXIT_OK;
    if (matched == 0) {
        cli_error(RUN, "the budget names no visible device: %s %s not among the %d device%s "
                       "the driver shows (see 'vramguard check')",
                  missing, unmatched == 1 ? "is" : "are", v.count, v.count == 1 ? "" : "s");
        return CLI_EXIT_USAGE;
    }
    cli_error(RUN, "warning: budget entr%s %s matched no visible device (%d shown)",
              unmatched == 1 ? "y" : "ies", missing, v.count);
    return CLI_EXIT_OK;
}
