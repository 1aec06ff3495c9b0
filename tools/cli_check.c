/*
 * cli_check.c — `vramguard check`: does the driver load and which version
 * is it, which devices are there and how much memory they have, and does
 * the shim catch an allocation made the way cudart makes it (the self-test
 * in cli_selftest.c). Everything is gathered into one report first, then
 * printed as a small table for humans or as one JSON object (--json).
 * Exit status 0 when all is well, 1 otherwise.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "vg_driver.h"
#include "vg_settings.h"

#define CHECK "check"

typedef enum check_verdict {
    CHECK_PASS,
    CHECK_FAIL,
    CHECK_SKIP,
} check_verdict_t;

static const char *const verdict_names[] = {"PASS", "FAIL", "SKIP"};

typedef struct check_report {
    char settings[1024];     /* why the caller's VRAMGUARD_* settings are bad; "" if fine */
    bool driver_ok;          /* loaded, cuInit worked, at least one device */
    char library[4096];      /* VRAMGUARD_LIBCUDA */
    char version[16];        /* "13.0"; "" when unknown */
    char error[1024];        /* why the driver is not usable; "" when it is */
    int total;               /* devices the driver shows */
    int count;               /* devices listed: at most VG__MAX_DEVICES */
    vg_device_info_t dev[VG__MAX_DEVICES];
    check_verdict_t selftest;
    char detail[1024];       /* the self-test's one-line account */
} check_report_t;

void cli_check_help(FILE *f)
{
    fprintf(f, "Usage: vramguard check [--json]\n\n");
    cli_wrap(f, 0, 78,
             "Checks that the CUDA driver loads (and which version it is), "
             "lists the devices with their memory (the first 64: vramguard "
             "handles devices 0-63), and self-tests the shim: "
             "a child process with " CLI_SHIM_NAME " preloaded and a 64 MiB "
             "budget allocates the way cudart does (through "
             "cuGetProcAddress) and must see 128 MiB refused.");
    fprintf(f, "\nOptions:\n"
               "  --json      Print one JSON object instead of the table.\n"
               "  -h, --help  Show this help and exit.\n\n");
    cli_wrap(f, 0, 78,
             "Exit status: 0 when everything passed; 1 when a VRAMGUARD_* "
             "setting in the environment is bad (the rest is checked without "
             "them), or the driver, the devices or the self-test failed; 2 for "
             "a usage error. The settings are checked, never applied: check "
             "writes nothing into their audit log or shared budget.");
}

/* ------------------------------------------------------- gathering */

/* Why vg_available() said no, in the engine's or the driver's words. */
static void driver_error(int rc, check_report_t *r)
{
    const vg__driver_t *d = vg__driver();
    const char *lib, *engine;
    vg__engine_describe(&lib, &engine);
    if (engine[0]) {
        snprintf(r->error, sizeof r->error, "%s", engine);
    } else if (rc == VG_ENODEV) {
        snprintf(r->error, sizeof r->error, "the driver sees no device");
    } else if (d) {
        CUresult cr = d->cuInit(0);
        snprintf(r->error, sizeof r->error, "cuInit failed: %s (%d)",
                 vg__cu_name(cr), (int)cr);
    } else {
        snprintf(r->error, sizeof r->error, "%s", vg_strerror(rc));
    }
}

static void check_driver(check_report_t *r)
{
    int rc = vg_available();
    const char *lib, *why;
    vg__engine_describe(&lib, &why);
    const vg__driver_t *d = vg__driver();
    int v = 0;
    snprintf(r->library, sizeof r->library, "%s", lib);
    /* cuDriverGetVersion works before cuInit on the real driver. */
    if (d && d->cuDriverGetVersion(&v) == CUDA_SUCCESS && v > 0)
        snprintf(r->version, sizeof r->version, "%d.%d", v / 1000,
                 (v % 1000) / 10);
    r->driver_ok = rc == VG_OK;
    if (!r->driver_ok)
        driver_error(rc, r);
}

static void check_devices(check_report_t *r)
{
    int count = 0;
    if (vg_device_count(&count) != VG_OK)
        return;
    r->total = count;
    for (int i = 0; i < count && i < VG__MAX_DEVICES; i++) {
        int rc = vg_device_info(i, &r->dev[r->count]);
        if (rc != VG_OK) {
            snprintf(r->error, sizeof r->error, "device %d: %s", i,
                     vg_strerror(rc));
            r->driver_ok = false;
            return;
        }
        r->count++;
    }
}

static const char *from_environ(const char *name, void *ctx)
{
    (void)ctx;
    return getenv(name);
}

/* The caller's settings are checked on their own: a bad one is reported
 * as such. Good or bad, they are then dropped (all but the driver's path):
 * they are the caller's processes' settings, not check's, whose own engine
 * lists the devices and must neither stop on a bad value nor write into
 * the caller's audit log or shared region. */
static void check_settings(check_report_t *r)
{
    static vg__settings_t s;
    if (vg__settings_parse(from_environ, NULL, &s, r->settings, sizeof r->settings) == VG_OK)
        r->settings[0] = '\0';
    cli_drop_settings();
}

static void check_gather(check_report_t *r)
{
    memset(r, 0, sizeof *r);
    check_settings(r);
    check_driver(r);
    if (r->driver_ok)
        check_devices(r);
    if (!r->driver_ok) {
        r->selftest = CHECK_SKIP;
        snprintf(r->detail, sizeof r->detail, "the driver is not usable");
        return;
    }
    r->selftest = cli_selftest_run(r->detail, sizeof r->detail) == 0
                      ? CHECK_PASS
                      : CHECK_FAIL;
}

/* ----------------------------------------------------- for humans */

static void print_devices(const check_report_t *r)
{
    int w = 4; /* the name column fits the longest name */
    for (int i = 0; i < r->count; i++)
        if ((int)strlen(r->dev[i].name) > w)
            w = (int)strlen(r->dev[i].name);
    printf("devices:   %d", r->total);
    if (r->total > VG__MAX_DEVICES) /* the engine budgets no device past 63 */
        printf(" (the first %d listed: vramguard handles devices 0-%d only)", r->count,
               VG__MAX_DEVICES - 1);
    printf("\n");
    if (r->count == 0)
        return;
    printf("  %3s  %-*s  %-40s  %11s  %11s\n", "#", w, "NAME", "UUID",
           "TOTAL", "FREE");
    for (int i = 0; i < r->count; i++) {
        const vg_device_info_t *d = &r->dev[i];
        char total[32], free_b[32];
        printf("  %3d  %-*s  %-40s  %11s  %11s\n", d->ordinal, w, d->name,
               d->uuid, vg__fmt_bytes(d->total_bytes, total, sizeof total),
               vg__fmt_bytes(d->free_bytes, free_b, sizeof free_b));
    }
}

static void print_human(const check_report_t *r)
{
    if (r->settings[0])
        printf("settings:  bad: %s (checked below without them)\n", r->settings);
    printf("driver:    %s", r->library);
    if (r->version[0])
        printf(", CUDA %s", r->version);
    if (r->error[0])
        printf(": not usable: %s", r->error);
    printf("\n");
    if (r->driver_ok)
        print_devices(r);
    printf("self-test: %s (%s)\n", verdict_names[r->selftest], r->detail);
}

/* ---------------------------------------------------------- JSON */

static void json_device(const vg_device_info_t *d)
{
    printf("{\"index\": %d, \"name\": ", d->ordinal);
    cli_json_str(stdout, d->name);
    printf(", \"uuid\": ");
    cli_json_str(stdout, d->uuid);
    printf(", \"total_bytes\": %llu, \"free_bytes\": %llu}",
           (unsigned long long)d->total_bytes,
           (unsigned long long)d->free_bytes);
}

static void print_json(const check_report_t *r)
{
    printf("{\"settings\": {\"ok\": %s, \"error\": ", r->settings[0] ? "false" : "true");
    cli_json_str(stdout, r->settings);
    printf("},\n \"driver\": {\"ok\": %s, \"library\": ",
           r->driver_ok ? "true" : "false");
    cli_json_str(stdout, r->library);
    printf(", \"version\": ");
    cli_json_str(stdout, r->version);
    printf(", \"error\": ");
    cli_json_str(stdout, r->error);
    printf("},\n \"device_count\": %d, \"devices\": [", r->total);
    for (int i = 0; i < r->count; i++) {
        printf(i ? ",\n   " : "\n   ");
        json_device(&r->dev[i]);
    }
    printf("],\n \"selftest\": {\"result\": \"%s\", \"detail\": ",
           verdict_names[r->selftest]);
    cli_json_str(stdout, r->detail);
    printf("}}\n");
}

/* ---------------------------------------------------------- main */

int cli_check_main(int argc, char **argv)
{
    static check_report_t report; /* large: device names and UUIDs */
    bool json = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            json = true;
        } else if (strcmp(argv[i], "--help") == 0 ||
                   strcmp(argv[i], "-h") == 0) {
            cli_check_help(stdout);
            return CLI_EXIT_OK;
        } else if (argv[i][0] == '-') {
            return cli_option_error(CHECK, argv[i], (const char *const[]){"--json", "--help", NULL});
        } else {
            return cli_usage_error(CHECK, "unknown argument '%s'", argv[i]);
        }
    }
    check_gather(&report);
    if (json)
        print_json(&report);
    else
        print_human(&report);
    return !report.settings[0] && report.driver_ok && report.selftest == CHECK_PASS
               ? CLI_EXIT_OK
               : CLI_EXIT_FAIL;
}
