/*
 * cli.c — `vramguard`'s entry point: the command table, the top-level
 * --help and --version, one-line usage errors, and the helpers every
 * command shares (wrapping help text, JSON strings, finding the preload shim, composing
 * LD_PRELOAD).
 *
 * Each command is one row of `commands` with its main and its help; add a
 * row (and a cli_<name>.c) to add a command.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "vg_base.h"
#include "vramguard.h"

typedef struct cli_command {
    const char *name;
    int (*main)(int argc, char **argv); /* argv[0] is the command's name */
    void (*help)(FILE *f);              /* NULL: hidden, no help */
    const char *summary;
} cli_command_t;

static const cli_command_t commands[] = {
    {"run", cli_run_main, cli_run_help,
     "run a command and its children under one VRAM budget"},
    {"check", cli_check_main, cli_check_help,
     "check the driver, list the devices, self-test the shim"},
    {"audit", cli_audit_main, cli_audit_help,
     "summarise audit logs: use, refusals, leaks, timeline, CSV"},
    {"replay", cli_replay_main, cli_replay_help,
     "re-run a logged allocation sequence against the driver"},
    {"status", cli_status_main, cli_status_help,
     "show budgeted processes, or one shared budget (--watch, --json)"},
    {"metrics", cli_metrics_main, cli_metrics_help,
     "shared budgets as Prometheus metrics (HTTP or textfile)"},
    {"budget", cli_budget_main, cli_budget_help,
     "change a shared budget live; list or remove them"},
    {CLI_SELFTEST_CMD, cli_selftest_main, NULL, NULL},
    {CLI_MAN_CMD, cli_man_main, NULL, NULL},
};
#define COMMAND_COUNT (sizeof commands / sizeof commands[0])

/* ------------------------------------------------------------ output */

static void vline(const char *cmd, const char *hint, const char *fmt,
                  va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    const char *sp = cmd ? " " : "";
    cmd = cmd ? cmd : "";
    if (hint)
        fprintf(stderr, "vramguard%s%s: %s (try 'vramguard%s%s --help')\n",
                sp, cmd, msg, sp, cmd);
    else
        fprintf(stderr, "vramguard%s%s: %s\n", sp, cmd, msg);
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vline(cmd, "hint", fmt, ap);
    va_end(ap);
    return CLI_EXIT_USAGE;
}

int cli_option_error(const char *cmd, const char *arg, const char *const *flags)
{
    size_t len = strcspn(arg, "=");
    for (; arg[len] && flags && *flags; flags++)
        if (strlen(*flags) == len && strncmp(arg, *flags, len) == 0)
            return cli_usage_error(cmd, "option '%s' takes no value (given '%s')", *flags, arg);
    return cli_usage_error(cmd, "unknown option '%.*s'", (int)len, arg);
}

void cli_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vline(cmd, NULL, fmt, ap);
    va_end(ap);
}

void cli_wrap(FILE *f, int indent, int width, const char *text)
{
    int col = 0;
    while (*text) {
        while (*text == ' ')
            text++;
        size_t len = strcspn(text, " ");
        if (len == 0)
            break;
        if (col > 0 && col + 1 + (int)len > width) {
            fputc('\n', f);
            col = 0;
        }
        if (col == 0)
            col = fprintf(f, "%*s", indent, "");
        else
            col += fprintf(f, " ");
        col += fprintf(f, "%.*s", (int)len, text);
        text += len;
    }
    if (col > 0)
        fputc('\n', f);
}

void cli_json_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20 || c >= 0x7f)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
}

void cli_json_str(FILE *f, const char *s)
{
    fputc('"', f);
    cli_json_text(f, s);
    fputc('"', f);
}

/* ------------------------------------------------------- the shim */

/* `dir`/CLI_SHIM_NAME into out, canonical, if that file exists. */
static bool shim_in(const char *dir, char *out, size_t len)
{
    char path[CLI_PATH_MAX + 64], real[PATH_MAX];
    int n = snprintf(path, sizeof path, "%s/%s", dir, CLI_SHIM_NAME);
    if (n <= 0 || (size_t)n >= sizeof path || access(path, R_OK) != 0)
        return false;
    const char *best = realpath(path, real) ? real : path;
    n = snprintf(out, len, "%s", best);
    return n > 0 && (size_t)n < len;
}

/* The shim is looked for beside the executable (the build folder), then in
 * ../lib from it (an installed tree, wherever it was moved or staged), then
 * in the prefix the CLI was built for. */
int cli_find_shim(char *out, size_t len, char *why, size_t whylen)
{
    char exe[CLI_PATH_MAX], dir[CLI_PATH_MAX] = "(unknown: /proc/self/exe)";
    char lib[CLI_PATH_MAX + 8] = "";
    if (vg__self_exe(exe, sizeof exe) == VG_OK) {
        char *slash = strrchr(exe, '/');
        snprintf(dir, sizeof dir, "%.*s", (int)(slash ? slash - exe : 0),
                 exe);
        snprintf(lib, sizeof lib, "%s/../lib", dir);
        if (shim_in(dir, out, len) || shim_in(lib, out, len))
            return 0;
    }
    if (shim_in(VG_PREFIX "/lib", out, len))
        return 0;
    snprintf(why, whylen, "cannot find %s in %s, in %s or in %s", CLI_SHIM_NAME,
             dir, lib[0] ? lib : "../lib", VG_PREFIX "/lib");
    return -1;
}

/* True when the LD_PRELOAD entry of `len` bytes names a copy of the shim. */
static bool is_shim(const char *entry, size_t len)
{
    size_t n = strlen(CLI_SHIM_NAME);
    return len >= n && memcmp(entry + len - n, CLI_SHIM_NAME, n) == 0 &&
           (len == n || entry[len - n - 1] == '/');
}

int cli_preload_join(const char *shim, const char *old, char *out, size_t len)
{
    size_t used = (size_t)snprintf(out, len, "%s", shim);
    if (used >= len)
        return -1;
    /* ld.so splits LD_PRELOAD at colons and spaces. */
    for (const char *p = old ? old : ""; *p;) {
        size_t n = strcspn(p, ": ");
        if (n > 0 && !is_shim(p, n)) {
            if (used + 1 + n >= len)
                return -1;
            out[used++] = ':';
            memcpy(out + used, p, n);
            used += n;
            out[used] = '\0';
        }
        p += n + (p[n] != '\0');
    }
    return 0;
}

/* ------------------------------------------------------------ main */

static void main_help(FILE *f)
{
    fprintf(f, "Usage: vramguard COMMAND [OPTIONS]\n"
               "       vramguard --help | --version\n\n"
               "VRAM budgets for CUDA processes you did not write.\n\n"
               "Commands:\n");
    for (size_t i = 0; i < COMMAND_COUNT; i++)
        if (commands[i].help)
            fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n'vramguard COMMAND --help' describes a command and its "
               "options;\n'vramguard run --help' lists every setting "
               "(VRAMGUARD_*) as a flag.\n");
}

static const cli_command_t *find_command(const char *name)
{
    for (size_t i = 0; i < COMMAND_COUNT; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return cli_usage_error(NULL, "no command given");
    const char *arg = argv[1];
    if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0 ||
        strcmp(arg, "help") == 0) {
        main_help(stdout);
        return CLI_EXIT_OK;
    }
    if (strcmp(arg, "--version") == 0 || strcmp(arg, "-V") == 0) {
        printf("vramguard %d.%d.%d\n", VG_VERSION_MAJOR, VG_VERSION_MINOR,
               VG_VERSION_PATCH);
        return CLI_EXIT_OK;
    }
    if (arg[0] == '-')
        return cli_usage_error(NULL, "unknown option '%s'", arg);
    const cli_command_t *cmd = find_command(arg);
    if (!cmd)
        return cli_usage_error(NULL, "unknown command '%s'", arg);
    return cmd->main(argc - 1, argv + 1);
}

bool cli_is_setting(const char *entry)
{
    return !strncmp(entry, "CUDA_DEVICE_MEMORY_", 19) ||
           (!strncmp(entry, "VRAMGUARD_", 10) && strncmp(entry, "VRAMGUARD_LIBCUDA=", 18) != 0);
}

void cli_drop_settings(void)
{
    for (bool again = true; again;) { /* unsetenv changes environ: rescan */
        again = false;
        for (char **e = environ; *e; e++) {
            size_t n = strcspn(*e, "=");
            if (!cli_is_setting(*e))
                continue;
            char name[256];
            snprintf(name, sizeof name, "%.*s", (int)(n < 255 ? n : 255), *e);
            unsetenv(name);
            again = true;
            break;
        }
    }
}
