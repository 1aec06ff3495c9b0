/*
 * cli_run.c — `vramguard run`: starts a command with the shim first in
 * LD_PRELOAD and the given settings in its environment.
 *
 * The options and their --help come from the settings table
 * (vg__settings_describe): each row's flag sets its variable. Every value is
 * checked by the engine's own parser, through a lookup over the environment
 * the command would get, before anything runs: a typo is a one-line error
 * and exit status 2, never a command running unlimited. Then vramguard
 * execs the command, so its exit status is the command's.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "vg_settings.h"

#define RUN "run"
#define RUN_GO (-1)         /* parsing went fine: carry on */
#define RUN_MAX_OPTS 32
#define RUN_BUDGET_ENV "VRAMGUARD_BUDGET"
#define RUN_HELP_WIDTH 78

/* One option: a row of the settings table, or --device-budget (env NULL). */
typedef struct run_opt {
    vg__setting_info_t info;
    const char *value; /* from the command line; NULL when not given */
} run_opt_t;

typedef struct run_plan {
    run_opt_t opt[RUN_MAX_OPTS];
    int count;
    char **cmd; /* the command and its arguments, NULL-terminated */
} run_plan_t;

static const vg__setting_info_t device_budget_info = {
    .flag = "--device-budget",
    .metavar = "DEV=SIZE,...",
    .help = "Per-device budgets, DEV an index or GPU-uuid; added to "
            "--budget's value, so --budget 8GiB --device-budget 1=4GiB sets "
            "VRAMGUARD_BUDGET=8GiB,1=4GiB.",
};

/* Collects the table's flags; --device-budget follows --budget. */
static void collect(const vg__setting_info_t *info, void *ctx)
{
    run_plan_t *p = ctx;
    if (!info->flag || p->count + 2 > RUN_MAX_OPTS)
        return;
    p->opt[p->count++].info = *info;
    if (strcmp(info->env, RUN_BUDGET_ENV) == 0)
        p->opt[p->count++].info = device_budget_info;
}

static void plan_init(run_plan_t *p)
{
    memset(p, 0, sizeof *p);
    vg__settings_describe(collect, p);
}

static run_opt_t *find_opt(run_plan_t *p, const char *name, size_t len)
{
    for (int i = 0; i < p->count; i++) {
        const char *flag = p->opt[i].info.flag;
        if (strlen(flag) == len && memcmp(flag, name, len) == 0)
            return &p->opt[i];
    }
    return NULL;
}

/* The value given for `flag`, NULL when not given. */
static const char *opt_value(run_plan_t *p, const char *flag)
{
    const run_opt_t *o = find_opt(p, flag, strlen(flag));
    return o ? o->value : NULL;
}

/* ------------------------------------------------------------ help */

static void help_opt(FILE *f, const vg__setting_info_t *in)
{
    char sets[256];
    fprintf(f, "  %s %s\n", in->flag, in->metavar);
    cli_wrap(f, 8, RUN_HELP_WIDTH, in->help);
    if (!in->env)
        return;
    snprintf(sets, sizeof sets, "Sets %s%s%s%s.", in->env,
             in->deflt[0] ? " (default: " : "", in->deflt,
             in->deflt[0] ? ")" : "");
    cli_wrap(f, 8, RUN_HELP_WIDTH, sets);
}

void cli_run_help(FILE *f)
{
    run_plan_t p;
    plan_init(&p);
    fprintf(f, "Usage: vramguard run [OPTIONS] [--] CMD [ARGS...]\n\n");
    cli_wrap(f, 0, RUN_HELP_WIDTH,
             "Runs CMD with the vramguard shim (" CLI_SHIM_NAME ") first in "
             "LD_PRELOAD and the settings below in its environment, so CMD "
             "never holds more device memory than its budget. Each value is "
             "checked before CMD starts: a bad one is an error, never an "
             "unlimited run. Settings not given are inherited.");
    fprintf(f, "\nOptions:\n");
    for (int i = 0; i < p.count; i++)
        help_opt(f, &p.opt[i].info);
    fprintf(f, "  -h, --help\n        Show this help and exit.\n\n");
    cli_wrap(f, 0, RUN_HELP_WIDTH,
             "Exit status: CMD's own; 2 for a usage error or a bad value; "
             "125 when the shim cannot be found; 126 when CMD cannot be "
             "executed; 127 when CMD is not found.");
    fprintf(f, "\nExample:\n  vramguard run --budget 8GiB --device-budget "
               "1=4GiB -- python train.py\n");
}

/* --------------------------------------------------------- parsing */

/* Takes the option at argv[*i] (and its value), advancing *i. */
static int take_option(run_plan_t *p, int argc, char **argv, int *i)
{
    const char *a = argv[*i];
    const char *eq = strchr(a, '=');
    size_t len = eq ? (size_t)(eq - a) : strlen(a);
    run_opt_t *o = find_opt(p, a, len);
    if (!o)
        return cli_usage_error(RUN, "unknown option '%.*s'", (int)len, a);
    if (o->value)
        return cli_usage_error(RUN, "option '%s' given twice", o->info.flag);
    if (eq)
        o->value = eq + 1;
    else if (*i + 1 < argc)
        o->value = argv[++*i];
    else
        return cli_usage_error(RUN, "option '%s' needs a value (%s)",
                               o->info.flag, o->info.metavar);
    return RUN_GO;
}

/* Options up to "--" or the first word that is not one; argv[0] is "run". */
static int parse_args(run_plan_t *p, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            p->cmd = argv + i + 1;
            break;
        }
        if (a[0] != '-' || a[1] == '\0') {
            p->cmd = argv + i;
            break;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            cli_run_help(stdout);
            return CLI_EXIT_OK;
        }
        int rc = take_option(p, argc, argv, &i);
        if (rc != RUN_GO)
            return rc;
    }
    if (!p->cmd || !p->cmd[0])
        return cli_usage_error(RUN, "no command to run");
    return RUN_GO;
}

/* ------------------------------------------------------ validation */

/* The environment the command would get: these pairs over (optionally)
 * our own environment. */
typedef struct run_env {
    const char *name[RUN_MAX_OPTS], *value[RUN_MAX_OPTS];
    int count;
    bool inherit;
} run_env_t;

static const char *env_lookup(const char *name, void *ctx)
{
    const run_env_t *e = ctx;
    for (int i = 0; i < e->count; i++)
        if (strcmp(e->name[i], name) == 0)
            return e->value[i];
    return e->inherit ? getenv(name) : NULL;
}

/* The reason in the parser's "ENV='value': reason" when it quoted `value`
 * verbatim; NULL when it had to shorten or mask it. */
static const char *reason_of(const char *err, const char *env,
                             const char *value)
{
    size_t n = strlen(env), v = strlen(value);
    for (size_t i = 0; i < v; i++)
        if ((unsigned char)value[i] < 0x20 || value[i] == 0x7f)
            return NULL;
    if (strncmp(err, env, n) != 0 || strncmp(err + n, "='", 2) != 0 ||
        strncmp(err + n + 2, value, v) != 0 ||
        strncmp(err + n + 2 + v, "': ", 3) != 0)
        return NULL;
    return err + n + 2 + v + 3;
}

/* Checks one value alone, as the command would see it; `label` names the
 * flag(s) it came from. */
static int check_value(const char *label, const char *env, const char *value)
{
    run_env_t e = {.name = {env}, .value = {value}, .count = 1};
    vg__settings_t s;
    char err[1024];
    if (vg__settings_parse(env_lookup, &e, &s, err, sizeof err) == VG_OK)
        return RUN_GO;
    const char *why = reason_of(err, env, value);
    if (why)
        cli_error(RUN, "bad %s '%s': %s", label, value, why);
    else
        cli_error(RUN, "bad %s: %s", label, err);
    return CLI_EXIT_USAGE;
}

/* --device-budget is per-device items only: a default belongs in --budget. */
static int check_device_items(const char *dev)
{
    for (const char *p = dev; *p;) {
        size_t n = strcspn(p, ",");
        if (n > 0 && !memchr(p, '=', n)) {
            cli_error(RUN, "bad --device-budget '%s': item '%.*s' has no "
                           "DEV= (a budget for every device goes in --budget)",
                      dev, (int)n, p);
            return CLI_EXIT_USAGE;
        }
        p += n + (p[n] != '\0');
    }
    return check_value("--device-budget", RUN_BUDGET_ENV, dev);
}

/* --budget and --device-budget as one VRAMGUARD_BUDGET value in out ("" when
 * neither is given), each part checked alone, then together. */
static int budget_value(run_plan_t *p, char *out, size_t len)
{
    const char *all = opt_value(p, "--budget");
    const char *dev = opt_value(p, device_budget_info.flag);
    int rc;
    if (all && (rc = check_value("--budget", RUN_BUDGET_ENV, all)) != RUN_GO)
        return rc;
    if (dev && (rc = check_device_items(dev)) != RUN_GO)
        return rc;
    int n = snprintf(out, len, "%s%s%s", all ? all : "",
                     all && dev ? "," : "", dev ? dev : "");
    if (n < 0 || (size_t)n >= len) {
        cli_error(RUN, "the budget is too long");
        return CLI_EXIT_USAGE;
    }
    if (all && dev)
        return check_value("--budget with --device-budget", RUN_BUDGET_ENV,
                           out);
    return RUN_GO;
}

/* Each flag's value alone, so an error names the flag (the budget flags
 * are checked by budget_value). */
static int check_flags(const run_plan_t *p)
{
    for (int i = 0; i < p->count; i++) {
        const run_opt_t *o = &p->opt[i];
        if (!o->value || !o->info.env ||
            strcmp(o->info.env, RUN_BUDGET_ENV) == 0)
            continue;
        int rc = check_value(o->info.flag, o->info.env, o->value);
        if (rc != RUN_GO)
            return rc;
    }
    return RUN_GO;
}

/* Every setting the command will see, given and inherited, parsed as the
 * shim will parse it. Fills *e with the given ones. */
static int check_all(const run_plan_t *p, const char *budget, run_env_t *e)
{
    vg__settings_t s;
    char err[1024];
    *e = (run_env_t){.inherit = true};
    if (budget[0]) {
        e->name[e->count] = RUN_BUDGET_ENV;
        e->value[e->count++] = budget;
    }
    for (int i = 0; i < p->count; i++) {
        const run_opt_t *o = &p->opt[i];
        if (!o->value || !o->info.env ||
            strcmp(o->info.env, RUN_BUDGET_ENV) == 0)
            continue;
        e->name[e->count] = o->info.env;
        e->value[e->count++] = o->value;
    }
    if (vg__settings_parse(env_lookup, e, &s, err, sizeof err) == VG_OK)
        return RUN_GO;
    cli_error(RUN, "bad setting in the environment: %s", err);
    return CLI_EXIT_USAGE;
}

/* ------------------------------------------------------------ start */

static int set_preload(void)
{
    char shim[CLI_PATH_MAX], why[2 * CLI_PATH_MAX], value[4 * CLI_PATH_MAX];
    if (cli_find_shim(shim, sizeof shim, why, sizeof why) != 0) {
        cli_error(RUN, "%s", why);
        return CLI_EXIT_INTERNAL;
    }
    if (strpbrk(shim, ": ")) {
        cli_error(RUN, "the shim's path '%s' has a ':' or ' ', which "
                       "LD_PRELOAD cannot hold", shim);
        return CLI_EXIT_INTERNAL;
    }
    if (cli_preload_join(shim, getenv("LD_PRELOAD"), value, sizeof value) ||
        setenv("LD_PRELOAD", value, 1) != 0) {
        cli_error(RUN, "LD_PRELOAD is too long");
        return CLI_EXIT_INTERNAL;
    }
    return RUN_GO;
}

/* Replaces this process with the command; returns only on failure, with
 * the status a shell would give. */
static int exec_command(char **cmd)
{
    execvp(cmd[0], cmd);
    int err = errno;
    cli_error(NULL, "cannot run '%s': %s", cmd[0], strerror(err));
    return err == ENOENT || err == ENOTDIR ? CLI_EXIT_NOTFOUND
                                           : CLI_EXIT_NOEXEC;
}

int cli_run_main(int argc, char **argv)
{
    run_plan_t p;
    run_env_t env;
    char budget[4096];
    int rc;
    plan_init(&p);
    if ((rc = parse_args(&p, argc, argv)) != RUN_GO ||
        (rc = check_flags(&p)) != RUN_GO ||
        (rc = budget_value(&p, budget, sizeof budget)) != RUN_GO ||
        (rc = check_all(&p, budget, &env)) != RUN_GO ||
        (rc = set_preload()) != RUN_GO)
        return rc;
    for (int i = 0; i < env.count; i++) {
        if (setenv(env.name[i], env.value[i], 1) != 0) {
            cli_error(RUN, "cannot set %s: %s", env.name[i], strerror(errno));
            return CLI_EXIT_INTERNAL;
        }
    }
    fflush(NULL);
    return exec_command(p.cmd);
}
