/*
 * cli.h — what the files of the `vramguard` command share: the command
 * table's entry points, exit statuses, the way usage errors are reported,
 * and finding the preload shim.
 *
 * cli.c dispatches; cli_run.c runs a command under the shim; cli_check.c
 * checks the driver, the devices and the shim; cli_selftest.c is the hidden
 * child that check starts. The CLI reaches the engine only through
 * vramguard.h and a few internal headers (tools/ -> lib/): vg_settings.h
 * (the settings table and parsers), vg_shared.h (the shared region's
 * reader), vg_base.h, and for `check` alone vg_driver.h (the driver table
 * and vg__engine_describe).
 */
#ifndef VG_CLI_H
#define VG_CLI_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>

/* Where `vramguard run` and `check` look for the shim after the folder of
 * the executable and ../lib from it: $(PREFIX)/lib. The Makefile passes PREFIX for the CLI's
 * objects; a build without it looks in /usr/local/lib. */
#ifndef VG_PREFIX
#define VG_PREFIX "/usr/local"
#endif

#define CLI_SHIM_NAME "libvramguard-preload.so"

/* Exit statuses of vramguard itself (run otherwise exits with CMD's). The
 * 125/126/127 trio is what env(1) and POSIX shells use. */
enum {
    CLI_EXIT_OK = 0,
    CLI_EXIT_FAIL = 1,     /* check found a problem */
    CLI_EXIT_USAGE = 2,    /* bad command line or setting value */
    CLI_EXIT_INTERNAL = 125, /* vramguard could not start the command */
    CLI_EXIT_NOEXEC = 126, /* the command exists but cannot run */
    CLI_EXIT_NOTFOUND = 127, /* the command was not found */
};

#define CLI_PATH_MAX 4096

/* ------------------------------------------------------------ cli.c */

/* True for an environment entry ("NAME=value") that is one of the
 * caller's vramguard settings a command's own engine must not take as its
 * own (budget, shared region, audit log): every VRAMGUARD_ and
 * CUDA_DEVICE_MEMORY_ variable but VRAMGUARD_LIBCUDA, the driver's path. */
bool cli_is_setting(const char *entry);
/* Unsets every variable cli_is_setting names (check, replay). */
void cli_drop_settings(void);

/* Writes "vramguard[ cmd]: <message> (try 'vramguard[ cmd] --help')" as one
 * line to stderr and returns CLI_EXIT_USAGE. `cmd` may be NULL. */
int cli_usage_error(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Reports `arg`, an option the command does not take, as a usage error
 * and returns CLI_EXIT_USAGE: "option '--json' takes no value (given
 * '--json=1')" when arg gives a value to one of `flags` (the command's
 * options that take none, NULL-terminated), else "unknown option '--x'"
 * (the part before any '='). */
int cli_option_error(const char *cmd, const char *arg, const char *const *flags);
/* Writes "vramguard[ cmd]: <message>" as one line to stderr. */
void cli_error(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Writes `text` to f in lines of at most `width` columns, each indented by
 * `indent` spaces. */
void cli_wrap(FILE *f, int indent, int width, const char *text);
/* Writes s to f as the inside of a JSON string: quote, backslash and
 * control bytes escaped, and bytes above 0x7e as \u00XX, so that text that
 * is not UTF-8 (from a log, a driver, an environment variable, a region name
 * anyone may choose) still gives valid JSON. */
void cli_json_text(FILE *f, const char *s);
/* The same, quotes included. */
void cli_json_str(FILE *f, const char *s);
/* Finds the shim: first beside the executable, then in ../lib from it,
 * then in VG_PREFIX/lib.
 * Returns 0 with the absolute path in out, or -1 with a one-line reason in
 * why (naming every place looked at). */
int cli_find_shim(char *out, size_t len, char *why, size_t whylen);
/* Joins the shim and an old LD_PRELOAD value as "shim:old...", dropping
 * every earlier copy of the shim (any path whose file name is
 * CLI_SHIM_NAME: two shims would mean two engines in one process) and
 * empty entries. `old` may be NULL. Returns 0, or -1 when out is too small. */
int cli_preload_join(const char *shim, const char *old, char *out, size_t len);

/* -------------------------------------------------------- commands */

int cli_run_main(int argc, char **argv);
void cli_run_help(FILE *f);
int cli_check_main(int argc, char **argv);
void cli_check_help(FILE *f);
int cli_audit_main(int argc, char **argv);   /* cli_audit.c */
void cli_audit_help(FILE *f);
int cli_replay_main(int argc, char **argv);  /* cli_replay.c */
void cli_replay_help(FILE *f);
int cli_status_main(int argc, char **argv);  /* cli_status.c */
void cli_status_help(FILE *f);
int cli_metrics_main(int argc, char **argv); /* cli_metrics.c */
void cli_metrics_help(FILE *f);
int cli_budget_main(int argc, char **argv);  /* cli_budget.c */
void cli_budget_help(FILE *f);

/* ------------------------------------------------------ cli_status.c */

struct vg__shm;
/* Calls fn for the region NAME, or (NAME NULL) for every
 * /dev/shm/vramguard.* region, with a snapshot taken under its lock and
 * per-slot liveness; a region that cannot be opened gets one stderr line
 * (none when cmd is NULL: the caller said it on an earlier walk).
 * Returns CLI_EXIT_OK, or CLI_EXIT_FAIL when NAME could not be read. */
typedef void (*cli_region_fn)(const char *name, const struct vg__shm *snap,
                              const unsigned char *alive, void *ctx);
int cli_regions(const char *cmd, const char *name, cli_region_fn fn, void *ctx);

/* ---------------------------------------------------- cli_run_tree.c */

/* Replaces this process with cmd; returns only on failure (one line on
 * stderr) with the status a shell would give: 127 not found, 126 not
 * executable. */
int cli_exec(char **cmd);
/* Runs cmd with one budget for it and every process it starts: a private
 * region run-<pid>-<random> with `limit` on every device (VG__UNLIMITED:
 * the processes set it from VRAMGUARD_BUDGET, which stays in their
 * environment), named in VRAMGUARD_SHARED, removed when cmd ends. Signals
 * sent to vramguard go on to cmd. Returns cmd's exit status (or ends this
 * process with cmd's signal), or a CLI_EXIT_* of its own. */
int cli_run_tree(char **cmd, uint64_t limit);

/* A nested run: a budget of `bytes` asked inside an enclosing one (the
 * region `region`, NULL when none, and/or a per-process budget
 * `outer_bytes`, VG__UNLIMITED when none). */
typedef struct cli_nest {
    const char *region;
    uint64_t outer_bytes;
    uint64_t bytes;
} cli_nest_t;
/* More than the enclosing budget is refused (one line, CLI_EXIT_USAGE);
 * less lowers the enclosing region's limit on every device (its processes
 * see it at their next allocation). Returns CLI_EXIT_OK to go on. */
int cli_run_nested(const cli_nest_t *n);

/* ------------------------------------------------- cli_run_devices.c */

struct vg__budget_spec;
/* Checks that every per-device entry of a budget names a device the driver
 * at `libcuda` shows (with this environment's CUDA_VISIBLE_DEVICES). No
 * entry matching: one line naming them, CLI_EXIT_USAGE. Some not matching:
 * one warning line naming those, CLI_EXIT_OK. A driver that cannot be
 * loaded shows nothing to check against: CLI_EXIT_OK; one that loads but
 * whose cuInit finds no device shows none, so every entry is missing. */
int cli_run_devices(const struct vg__budget_spec *spec, const char *libcuda);

/* ---------------------------------------------------- cli_selftest.c */

#define CLI_SELFTEST_CMD "__selftest"
#define CLI_MAN_CMD "__man-settings"

/* cli_man.c: the hidden `__man-settings` command, the manual's SETTINGS
 * section (roff) from the settings table. */
int cli_man_main(int argc, char **argv);

/* The hidden `__selftest` command: the child half of the self-test, started
 * with the shim preloaded. Prints one result line on stdout. */
int cli_selftest_main(int argc, char **argv);
/* The parent half: re-executes this binary as `__selftest` under the shim
 * with a small budget. Returns 0 when the shim refused what it must, else
 * -1; either way a one-line account goes into detail. */
int cli_selftest_run(char *detail, size_t len);

#endif /* VG_CLI_H */
