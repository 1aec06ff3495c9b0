/*
 * cli_run.c — `vramguard run`: starts a command with the shim first in
 * LD_PRELOAD and the given settings in its environment.
 *
 * The options and their --help come from the settings table
 * (vg__settings_describe): each row's flag sets its variable. Every value is
 * checked by the engine's own parser, through a lookup over the environment
 * the command would get, before anything runs: a typo is a one-line error
 * and exit status 2, never a command running unlimited.
 *
 * With a budget, the command and every process it starts share it: one
 * private region for the run (cli_run_tree.c), and vramguard exits with the
 * command's status. --per-process, --shared NAME and an enclosing shared
 * budget (a nested run, which can only lower it) exec the command in
 * vramguard's place instead.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "vg_audit.h"
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
    bool per_process; /* --per-process: each process its own budget */
} run_plan_t;

#define PER_PROCESS "--per-process"
#define PER_PROCESS_HELP                                                       \
    "CMD and each process it starts get a budget of their own. Without it "  \
    "CMD and every process it starts share one budget: a private shared "    \
    "region named run-<pid>-<random>, removed when CMD ends."


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
    fprintf(f, "  " PER_PROCESS "\n");
    cli_wrap(f, 8, RUN_HELP_WIDTH, PER_PROCESS_HELP);
    fprintf(f, "  -h, --help\n        Show this help and exit.\n\n");
    cli_wrap(f, 0, RUN_HELP_WIDTH,
             "Inside a budgeted run (VRAMGUARD_SHARED or VRAMGUARD_BUDGET "
             "already set), a nested run keeps the enclosing shared budget and "
             "can only lower it: --budget takes one SIZE, and more than the "
             "enclosing budget is refused (exit status 2).");
    fputc('\n', f);
    cli_wrap(f, 0, RUN_HELP_WIDTH,
             "Exit status: CMD's own (killed by a signal: vramguard ends by the "
             "same signal); 2 for a usage error, a bad value, a budget for a "
             "device the driver does not show, an audit log that cannot be "
             "created, or a nested budget above the enclosing one; "
             "125 when the shim cannot be found or the run's shared budget "
             "cannot be created; 126 when CMD cannot be "
             "executed; 127 when CMD is not found.");
    fprintf(f, "\nExample:\n  vramguard run --budget 8GiB --device-budget "
               "1=4GiB -- python train.py\n");
}

/* --------------------------------------------------------- parsing */

/* True for a word that is an option or "--", never taken as a value: "-1"
 * and "-" are values. */
static bool is_option(const char *a)
{
    return a[0] == '-' && (a[1] == '-' || (a[1] >= 'A' && a[1] <= 'z'));
}

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
    else if (*i + 1 < argc && !is_option(argv[*i + 1]))
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
        if (strcmp(a, PER_PROCESS) == 0) {
            p->per_process = true;
            continue;
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
static int check_all(const run_plan_t *p, const char *budget, run_env_t *e,
                     vg__settings_t *s)
{
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
    if (vg__settings_parse(env_lookup, e, s, err, sizeof err) == VG_OK)
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

/* The audit log, opened (created) now as the shim will open it, so a path
 * that cannot be written is exit status 2 before CMD starts, not a run
 * whose every allocation is refused; a relative path is made absolute so
 * a process that changes directory writes the same file. */
static int audit_ready(const char *path)
{
    char abs[2 * CLI_PATH_MAX + 2], cwd[CLI_PATH_MAX];
    if (!path[0])
        return RUN_GO;
    if (path[0] != '/' && !getcwd(cwd, sizeof cwd)) {
        cli_error(RUN, "cannot make the audit path '%s' absolute: %s", path, strerror(errno));
        return CLI_EXIT_USAGE;
    }
    int n = snprintf(abs, sizeof abs, "%s%s%s", path[0] == '/' ? "" : cwd,
                     path[0] == '/' ? "" : "/", path);
    if (n < 0 || (size_t)n >= sizeof abs) {
        cli_error(RUN, "the audit path '%s' is too long", path);
        return CLI_EXIT_USAGE;
    }
    /* Checked as the shim will check it, so a log it would refuse stops the
     * run here. A pipe is only looked at: opening and closing it would end
     * its reader, and the shim's own open would then wait forever. */
    struct stat st;
    char why[512];
    int fd = -1;
    if (lstat(abs, &st) != 0 || !S_ISFIFO(st.st_mode)) {
        fd = open(abs, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0 || fstat(fd, &st) != 0) {
            cli_error(RUN, "cannot open the audit log '%s': %s", abs, strerror(errno));
            if (fd >= 0)
                close(fd);
            return CLI_EXIT_USAGE;
        }
        close(fd);
    }
    if (vg__audit_file_check(&st, abs, why, sizeof why) != VG_OK) {
        cli_error(RUN, "%s", why);
        return CLI_EXIT_USAGE;
    }
    if (setenv("VRAMGUARD_AUDIT", abs, 1) != 0) {
        cli_error(RUN, "cannot set VRAMGUARD_AUDIT: %s", strerror(errno));
        return CLI_EXIT_INTERNAL;
    }
    return RUN_GO;
}

/* ------------------------------------------------------------ modes */

/* The bytes of a budget that is one SIZE for every device; false for
 * none, N% or per-device budgets. */
static bool plain_bytes(const vg__budget_spec_t *b, uint64_t *bytes)
{
    if (b->count != 0 || b->all.unit != VG__BUDGET_BYTES)
        return false;
    *bytes = b->all.bytes;
    return true;
}

static bool has_budget(const vg__budget_spec_t *b)
{
    return b->count > 0 || b->all.unit != VG__BUDGET_NONE;
}

/* What the environment held before this run: an enclosing shared budget
 * and an enclosing VRAMGUARD_BUDGET. */
typedef struct run_outer {
    char region[256];
    char budget[4096];
} run_outer_t;

static void outer_read(run_outer_t *o)
{
    const char *r = getenv("VRAMGUARD_SHARED"), *b = getenv(RUN_BUDGET_ENV);
    snprintf(o->region, sizeof o->region, "%s", r ? r : "");
    snprintf(o->budget, sizeof o->budget, "%s", b ? b : "");
}

/* A budget given inside an enclosing one may only lower it (--shared may
 * not leave it either). */
static int nested(run_plan_t *p, const run_outer_t *o, const vg__settings_t *s)
{
    const char *shared = opt_value(p, "--shared");
    cli_nest_t n = {.region = o->region[0] ? o->region : NULL, .outer_bytes = VG__UNLIMITED};
    vg__budget_spec_t outer;
    if (n.region && shared && strcmp(shared, n.region) != 0) {
        cli_error(RUN, "already inside the shared budget '%s': a nested run cannot move to "
                       "'%s'", n.region, shared);
        return CLI_EXIT_USAGE;
    }
    bool given = opt_value(p, "--budget") || opt_value(p, device_budget_info.flag);
    if (!given || (!n.region && !o->budget[0]))
        return RUN_GO;
    if (o->budget[0] &&
        (vg__budget_spec_parse(o->budget, &outer, NULL, 0) != VG_OK ||
         !plain_bytes(&outer, &n.outer_bytes))) {
        cli_error(RUN, "inside the budget '%s' (per device or a percentage), a nested run "
                       "cannot give its own", o->budget);
        return CLI_EXIT_USAGE;
    }
    if (!plain_bytes(&s->budget, &n.bytes)) {
        cli_error(RUN, "inside a budgeted run, --budget takes one SIZE for every device");
        return CLI_EXIT_USAGE;
    }
    int rc = cli_run_nested(&n);
    return rc == CLI_EXIT_OK ? RUN_GO : rc;
}

/* Sets the given settings in our environment, for the command. */
static int export_env(const run_env_t *env)
{
    for (int i = 0; i < env->count; i++) {
        if (setenv(env->name[i], env->value[i], 1) != 0) {
            cli_error(RUN, "cannot set %s: %s", env->name[i], strerror(errno));
            return CLI_EXIT_INTERNAL;
        }
    }
    return RUN_GO;
}

int cli_run_main(int argc, char **argv)
{
    run_plan_t p;
    run_env_t env;
    run_outer_t outer;
    vg__settings_t *s = malloc(sizeof *s);
    char budget[4096];
    int rc;
    uint64_t bytes = VG__UNLIMITED;
    if (!s) {
        cli_error(RUN, "out of memory");
        return CLI_EXIT_INTERNAL;
    }
    plan_init(&p);
    outer_read(&outer);
    if ((rc = parse_args(&p, argc, argv)) != RUN_GO ||
        (rc = check_flags(&p)) != RUN_GO ||
        (rc = budget_value(&p, budget, sizeof budget)) != RUN_GO ||
        (rc = check_all(&p, budget, &env, s)) != RUN_GO ||
        (rc = cli_run_devices(&s->budget, s->libcuda)) != CLI_EXIT_OK ||
        (rc = export_env(&env)) != RUN_GO ||
        (rc = audit_ready(s->audit)) != RUN_GO ||
        (rc = set_preload()) != RUN_GO ||
        /* last: it may lower the enclosing budget, which a run that then
         * failed to start must leave as it was */
        (rc = nested(&p, &outer, s)) != RUN_GO)
        goto out;
    if (p.per_process || s->shared[0] || s->shared_cache[0] || !has_budget(&s->budget)) {
        free(s);
        fflush(NULL);
        return cli_exec(p.cmd);
    }
    plain_bytes(&s->budget, &bytes);
    rc = cli_run_tree(p.cmd, bytes);
out:
    free(s);
    return rc;
}
