/*
 * cli_audit.c — `vramguard audit LOG...`: reads audit logs (docs/audit-log.md)
 * and reports for humans: a summary (processes, peak use per device against
 * the budget, counts by API and kind, bad pointers), the allocations live at
 * exit by call site (--leaks), the call sites that allocated most (--top),
 * a timeline (--svg), or RMM's CSV (--csv).
 *
 * Lines the reader cannot use are counted, skipped and reported on stderr;
 * they never stop the report. A file with no usable line at all is an
 * error (exit 2), a missing file too (exit 1).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "cli_audit.h"
#include "vg_base.h"

#define AUDIT "audit"
#define AUDIT_GO (-1)
#define AUDIT_FRAMES 8 /* frames printed per call site */

typedef struct audit_opts {
    bool leaks, csv, json;
    long top;          /* 0: no --top */
    const char *svg;   /* NULL: no --svg */
    char **logs;
    int nlogs;
} audit_opts_t;

void cli_audit_help(FILE *f)
{
    fprintf(f, "Usage: vramguard audit LOG... [OPTIONS]  (options and logs in any order)\n\n");
    cli_wrap(f, 0, 78,
             "Reads audit logs written with VRAMGUARD_AUDIT=LOG (or vramguard "
             "run --audit LOG) and prints a summary: the processes, peak use "
             "per device against the budget, allocations, frees and refusals "
             "by API and by kind, and bad pointers by class. Lines that are "
             "truncated, not JSON or of another schema version are counted, "
             "skipped and reported on stderr.");
    fprintf(f, "\nOptions:\n"
               "  --leaks\n"
               "        Allocations live at exit, grouped by call site (from the\n"
               "        log's leak events, else allocations never freed).\n"
               "  --top N\n"
               "        The N call sites that allocated the most bytes.\n"
               "  --svg FILE\n"
               "        Also write a timeline of bytes in use per device, with\n"
               "        the budget, pressure bands and refusals, to FILE.\n"
               "  --json\n"
               "        Print one JSON object instead: per process the exit\n"
               "        counts, and the leaks, named as in the audit log.\n"
               "  --csv\n"
               "        Print allocations, frees and refusals as RMM's logging\n"
               "        CSV (Thread,Time,Action,Pointer,Size,Stream) instead.\n"
               "  -h, --help\n"
               "        Show this help and exit.\n\n");
    cli_wrap(f, 0, 78,
             "Call sites (VRAMGUARD_BACKTRACE=N) print as module+0xoffset, "
             "with function names when addr2line is installed. Exit status: "
             "0; 1 when a LOG cannot be read; 2 for a usage error or a LOG "
             "with no usable line.");
    fprintf(f, "\nExample:\n  vramguard audit --leaks --svg use.svg run.jsonl\n");
}

/* --------------------------------------------------------- parsing */

static int parse_top(const char *text, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < 1)
        return cli_usage_error(AUDIT, "--top needs a count of 1 or more, not '%s'", text);
    *out = v;
    return AUDIT_GO;
}

/* The value of option argv[*i] ("--opt VALUE" or "--opt=VALUE"). */
static const char *opt_value(int argc, char **argv, int *i, const char *eq)
{
    if (eq)
        return eq + 1;
    /* A value is never another option or "--". */
    if (*i + 1 >= argc || (argv[*i + 1][0] == '-' && argv[*i + 1][1]))
        return NULL;
    return argv[++*i];
}

/* One option at argv[*i] (and its value, advancing *i). */
static int take_option(audit_opts_t *o, int argc, char **argv, int *i)
{
    const char *a = argv[*i], *eq = strchr(a, '=');
    size_t len = eq ? (size_t)(eq - a) : strlen(a);
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
        cli_audit_help(stdout);
        return CLI_EXIT_OK;
    }
    if (strcmp(a, "--leaks") == 0) {
        o->leaks = true;
    } else if (strcmp(a, "--csv") == 0) {
        o->csv = true;
    } else if (strcmp(a, "--json") == 0) {
        o->json = true;
    } else if (len == 5 && strncmp(a, "--top", 5) == 0) {
        const char *v = opt_value(argc, argv, i, eq);
        if (!v)
            return cli_usage_error(AUDIT, "option '--top' needs a value (N)");
        if (parse_top(v, &o->top) != AUDIT_GO)
            return CLI_EXIT_USAGE;
    } else if (len == 5 && strncmp(a, "--svg", 5) == 0) {
        if (!(o->svg = opt_value(argc, argv, i, eq)) || !*o->svg)
            return cli_usage_error(AUDIT, "option '--svg' needs a value (FILE)");
    } else {
        static const char *const flags[] = {"--leaks", "--csv", "--json", "--help", NULL};
        return cli_option_error(AUDIT, a, flags);
    }
    return AUDIT_GO;
}

/* Options and logs in any order, as GNU tools take them; "--" ends the
 * options. The logs are moved, in order, to argv[1..]: every slot written
 * was read already. */
static int parse_args(audit_opts_t *o, int argc, char **argv)
{
    int n = 1;
    bool options = true;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (options && strcmp(a, "--") == 0) {
            options = false;
        } else if (options && a[0] == '-' && a[1]) {
            int rc = take_option(o, argc, argv, &i);
            if (rc != AUDIT_GO)
                return rc;
        } else {
            argv[n++] = argv[i];
        }
    }
    if (n == 1)
        return cli_usage_error(AUDIT, "no audit log given");
    if (o->csv && (o->leaks || o->top || o->json))
        return cli_usage_error(AUDIT, "--csv prints only the CSV; leave out --leaks, --top "
                                      "and --json");
    o->logs = argv + 1;
    o->nlogs = n - 1;
    return AUDIT_GO;
}

/* ----------------------------------------------------------- helpers */

/* "2026-11-22 10:00:00.123" in local time. */
static char *fmt_when(int64_t ns, char *buf, size_t len)
{
    time_t s = (time_t)(ns / 1000000000);
    struct tm tm;
    if (!localtime_r(&s, &tm) || !strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm)) {
        snprintf(buf, len, "?");
        return buf;
    }
    size_t n = strlen(buf);
    snprintf(buf + n, len - n, ".%03d", (int)(ns % 1000000000 / 1000000));
    return buf;
}

static char *fmt_span(int64_t ns, char *buf, size_t len)
{
    double s = (double)ns / 1e9;
    if (ns < 1000000)
        snprintf(buf, len, "%.0f us", (double)ns / 1e3);
    else if (s < 1)
        snprintf(buf, len, "%.1f ms", (double)ns / 1e6);
    else if (s < 120)
        snprintf(buf, len, "%.2f s", s);
    else
        snprintf(buf, len, "%ld min %02ld s", (long)s / 60, (long)s % 60);
    return buf;
}

static const char *plural(int64_t n, const char *one, const char *many)
{
    return n == 1 ? one : many;
}

/* ----------------------------------------------------------- summary */

static void print_procs(const au_model_t *m)
{
    char when[64], span[32];
    printf("\nProcesses\n  %-8s %-23s %-10s %s\n", "pid", "start", "duration", "command");
    for (size_t i = 0; i < m->nproc; i++) {
        const au_proc_t *p = &m->proc[i];
        printf("  %-8lld %-23s %-10s %s\n", (long long)p->pid, fmt_when(p->first_ts, when, sizeof when),
               fmt_span(p->last_ts - p->first_ts, span, sizeof span),
               p->cmd ? p->cmd : "(no start event)");
        if (!p->exited) {
            printf("           no exit event: the process crashed, was killed or is still running\n");
            continue;
        }
        char live[32];
        printf("           exit: %lld allocs, %lld frees, %lld refusals, %lld bad pointers, "
               "%lld live (%s)\n", (long long)p->allocs, (long long)p->frees,
               (long long)p->refusals, (long long)p->bad_ptrs, (long long)p->live,
               vg__fmt_bytes((uint64_t)(p->live_bytes > 0 ? p->live_bytes : 0), live, sizeof live));
    }
}

typedef struct dev_stats {
    bool seen;
    int64_t peak, peak_ts, budget, refusals;
} dev_stats_t;

static void dev_visit(const au_rec_t *r, int64_t total, void *ctx)
{
    dev_stats_t *d = &((dev_stats_t *)ctx)[r->dev];
    d->seen = true;
    if (r->budget >= 0 || d->budget == 0)
        d->budget = r->budget;
    if (total > d->peak) {
        d->peak = total;
        d->peak_ts = r->ts;
    }
    d->refusals += r->op == AU_OP_REFUSE;
}

static void print_devices(au_model_t *m, int64_t t0)
{
    dev_stats_t dev[AU_MAX_DEVICES] = {{0}};
    char peak[32], budget[32], at[32];
    au_model_walk(m, dev_visit, dev);
    printf("\nPeak use per device\n  %-4s %-12s %-12s %-10s %-10s %s\n", "dev", "peak", "budget",
           "of budget", "peak at", "refusals");
    for (int i = 0; i < AU_MAX_DEVICES; i++) {
        const dev_stats_t *d = &dev[i];
        if (!d->seen)
            continue;
        char share[16] = "-";
        if (d->budget > 0)
            snprintf(share, sizeof share, "%.1f%%", 100.0 * (double)d->peak / (double)d->budget);
        printf("  %-4d %-12s %-12s %-10s %-10s %lld\n", i,
               vg__fmt_bytes((uint64_t)d->peak, peak, sizeof peak),
               d->budget > 0 ? vg__fmt_bytes((uint64_t)d->budget, budget, sizeof budget) : "none",
               share, fmt_span(d->peak_ts - t0, at, sizeof at), (long long)d->refusals);
    }
}

typedef struct tally {
    int64_t allocs, frees, refusals, bytes;
} tally_t;

/* One table of counts by name (API or kind: `by_kind`). */
static void print_tally(const au_model_t *m, bool by_kind, const char *title)
{
    tally_t *t = calloc(m->nname, sizeof *t);
    if (!t)
        return;
    for (size_t i = 0; i < m->nrec; i++) {
        const au_rec_t *r = &m->rec[i];
        tally_t *x = &t[by_kind ? r->kind : r->api];
        x->allocs += r->op == AU_OP_ALLOC;
        x->frees += r->op == AU_OP_FREE;
        x->refusals += r->op == AU_OP_REFUSE;
        x->bytes += r->op == AU_OP_ALLOC ? (int64_t)r->size : 0;
    }
    printf("\n%s\n  %-28s %8s %8s %9s  %s\n", title, by_kind ? "kind" : "api", "allocs",
           "frees", "refusals", "allocated");
    for (size_t i = 0; i < m->nname; i++) {
        const tally_t *x = &t[i];
        char bytes[32];
        if (x->allocs + x->frees + x->refusals == 0)
            continue;
        printf("  %-28s %8lld %8lld %9lld  %s\n", i ? m->name[i] : "(none)",
               (long long)x->allocs, (long long)x->frees, (long long)x->refusals,
               vg__fmt_bytes((uint64_t)x->bytes, bytes, sizeof bytes));
    }
    free(t);
}

static void print_summary(au_model_t *m)
{
    int64_t t0 = 0, t1 = 0;
    for (size_t i = 0; i < m->nproc; i++) {
        const au_proc_t *p = &m->proc[i];
        t0 = i == 0 || p->first_ts < t0 ? p->first_ts : t0;
        t1 = i == 0 || p->last_ts > t1 ? p->last_ts : t1;
    }
    char when[64], span[32];
    printf("%d %s, %ld %s, %zu %s, %s from %s\n", m->nfiles, plural(m->nfiles, "log", "logs"),
           m->events, plural(m->events, "event", "events"), m->nproc,
           plural((int64_t)m->nproc, "process", "processes"), fmt_span(t1 - t0, span, sizeof span),
           m->nproc ? fmt_when(t0, when, sizeof when) : "-");
    print_procs(m);
    print_devices(m, t0);
    print_tally(m, false, "Allocations by API");
    print_tally(m, true, "Allocations by kind");
    printf("\nBad pointers by class: %ld\n", m->bad_ptrs);
    for (int i = 0; i < m->nbad_class; i++)
        printf("  %-10s %ld\n", au_model_name(m, m->bad_class_name[i]), m->bad_by_class[i]);
    printf("\nPressure level changes: %ld\n", m->pressure_changes);
}

/* ------------------------------------------------------ leaks and top */

typedef struct site_sum {
    uint32_t site;
    int64_t count, bytes;
} site_sum_t;

static int cmp_sum(const void *a, const void *b)
{
    const site_sum_t *x = a, *y = b;
    if (x->bytes != y->bytes)
        return x->bytes > y->bytes ? -1 : 1;
    if (x->count != y->count)
        return x->count > y->count ? -1 : 1;
    return x->site < y->site ? -1 : x->site > y->site;
}

/* Prints up to `limit` rows of sums (sorted here), symbolised. */
static void print_sites(const au_model_t *m, site_sum_t *sum, size_t n, size_t limit)
{
    qsort(sum, n, sizeof *sum, cmp_sum);
    size_t rows = 0;
    uint32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (!ids)
        return;
    for (size_t i = 0; i < n && rows < limit; i++)
        if (sum[i].count)
            ids[rows++] = sum[i].site;
    au_syms_t *syms = au_syms_create(m, ids, rows);
    for (size_t i = 0; i < rows; i++) {
        char bytes[32];
        printf("  %3zu. %s in %lld %s\n", i + 1,
               vg__fmt_bytes((uint64_t)sum[i].bytes, bytes, sizeof bytes),
               (long long)sum[i].count, plural(sum[i].count, "allocation", "allocations"));
        au_syms_print(syms, stdout, sum[i].site, "         ", AUDIT_FRAMES);
    }
    au_syms_destroy(syms);
    free(ids);
}

/* Adds each allocation never freed (by pointer, per process) of processes
 * without leak events to sum[site]. */
static int computed_leaks(const au_model_t *m, site_sum_t *sum)
{
    au_map_t live = {0};
    for (size_t i = 0; i < m->nrec; i++) {
        const au_rec_t *r = &m->rec[i];
        if (m->proc[r->proc].has_leak_events)
            continue;
        if (r->op == AU_OP_ALLOC && au_map_put(&live, r->proc, r->ptr, i) != 0)
            return -1;
        uint64_t *v = r->op == AU_OP_FREE ? au_map_find(&live, r->proc, r->ptr) : NULL;
        if (v)
            *v = AU_MAP_DEAD;
    }
    for (size_t i = 0; i < live.cap; i++) {
        if (!live.slot[i].used || live.slot[i].val == AU_MAP_DEAD)
            continue;
        const au_rec_t *r = &m->rec[live.slot[i].val];
        sum[r->site].count++;
        sum[r->site].bytes += (int64_t)r->size;
    }
    au_map_free(&live);
    return 0;
}

static int print_leaks(au_model_t *m)
{
    site_sum_t *sum = calloc(m->nsite, sizeof *sum);
    if (!sum || computed_leaks(m, sum) != 0) {
        free(sum);
        cli_error(AUDIT, "out of memory");
        return CLI_EXIT_FAIL;
    }
    for (size_t i = 0; i < m->nleak; i++) {
        sum[m->leak[i].site].count += m->leak[i].count;
        sum[m->leak[i].site].bytes += m->leak[i].bytes;
    }
    int64_t count = 0, bytes = 0, sites = 0;
    for (size_t i = 0; i < m->nsite; i++) {
        sum[i].site = (uint32_t)i;
        count += sum[i].count;
        bytes += sum[i].bytes;
        sites += sum[i].count > 0;
    }
    char total[32];
    printf("\nLive at exit: %lld %s, %s, from %lld call %s\n", (long long)count,
           plural(count, "allocation", "allocations"),
           vg__fmt_bytes((uint64_t)bytes, total, sizeof total), (long long)sites,
           plural(sites, "site", "sites"));
    print_sites(m, sum, m->nsite, m->nsite);
    free(sum);
    return CLI_EXIT_OK;
}

static int print_top(au_model_t *m, long top)
{
    site_sum_t *sum = calloc(m->nsite, sizeof *sum);
    if (!sum) {
        cli_error(AUDIT, "out of memory");
        return CLI_EXIT_FAIL;
    }
    for (size_t i = 0; i < m->nsite; i++)
        sum[i].site = (uint32_t)i;
    for (size_t i = 0; i < m->nrec; i++)
        if (m->rec[i].op == AU_OP_ALLOC) {
            sum[m->rec[i].site].count++;
            sum[m->rec[i].site].bytes += (int64_t)m->rec[i].size;
        }
    printf("\nTop %ld call %s by bytes allocated\n", top, plural(top, "site", "sites"));
    print_sites(m, sum, m->nsite, (size_t)top);
    free(sum);
    return CLI_EXIT_OK;
}

/* -------------------------------------------------------------- csv */

/* RMM's logging_resource_adaptor columns and formats: the thread id, the
 * local time as %H:%M:%S.<microseconds>, the action (allocate, free,
 * allocate failure), the pointer (0x0 for a failure), the size, and the
 * stream (not recorded by vramguard: 0x0). */
static void print_csv(const au_model_t *m)
{
    static const char *const action[AU_OP_COUNT] = {
        [AU_OP_ALLOC] = "allocate", [AU_OP_FREE] = "free",
        [AU_OP_REFUSE] = "allocate failure"};
    printf("Thread,Time,Action,Pointer,Size,Stream\n");
    for (size_t i = 0; i < m->nrec; i++) {
        const au_rec_t *r = &m->rec[i];
        if (!action[r->op])
            continue;
        time_t s = (time_t)(r->ts / 1000000000);
        struct tm tm;
        char hms[16] = "00:00:00";
        if (localtime_r(&s, &tm))
            strftime(hms, sizeof hms, "%H:%M:%S", &tm);
        printf("%u,%s.%06lld,%s,0x%llx,%llu,0x0\n", r->tid, hms,
               (long long)(r->ts % 1000000000 / 1000), action[r->op],
               (unsigned long long)(r->op == AU_OP_REFUSE ? 0 : r->ptr),
               (unsigned long long)r->size);
    }
}

/* ------------------------------------------------------------- JSON */

/* One JSON object for scripts; each field is named as in the audit log
 * (docs/audit-log.md): a process's exit counts, and its leaks by device. */
static void print_json(const au_model_t *m)
{
    printf("{\"logs\":%d,\"events\":%ld,\"bad_ptrs\":%ld,\"processes\":[", m->nfiles,
           m->events, m->bad_ptrs);
    for (size_t i = 0; i < m->nproc; i++) {
        const au_proc_t *p = &m->proc[i];
        printf("%s{\"pid\":%lld,\"cmd\":", i ? "," : "", (long long)p->pid);
        cli_json_str(stdout, p->cmd ? p->cmd : ""); /* any bytes: escaped */
        printf(",\"exited\":%s,\"allocs\":%lld,\"frees\":%lld,\"refusals\":%lld,"
               "\"bad_ptrs\":%lld,\"live\":%lld,\"live_bytes\":%lld}",
               p->exited ? "true" : "false", (long long)p->allocs, (long long)p->frees,
               (long long)p->refusals, (long long)p->bad_ptrs, (long long)p->live,
               (long long)p->live_bytes);
    }
    printf("],\"leaks\":[");
    for (size_t i = 0; i < m->nleak; i++) {
        const au_leak_t *l = &m->leak[i];
        printf("%s{\"pid\":%lld,\"dev\":%d,\"count\":%lld,\"bytes\":%lld}", i ? "," : "",
               (long long)(l->proc < m->nproc ? m->proc[l->proc].pid : -1), l->dev,
               (long long)l->count, (long long)l->bytes);
    }
    printf("]}\n");
}

/* ------------------------------------------------------------- main */

static int report(au_model_t *m, const audit_opts_t *o)
{
    int rc = CLI_EXIT_OK;
    if (o->json)
        print_json(m);
    else if (o->csv)
        print_csv(m);
    else if (!o->leaks && !o->top)
        print_summary(m);
    if (o->leaks && !o->json)
        rc = print_leaks(m);
    if (o->top && !o->json && rc == CLI_EXIT_OK)
        rc = print_top(m, o->top);
    if (o->svg && rc == CLI_EXIT_OK) {
        if (au_svg_write(m, o->svg, o->logs[0]) != 0) {
            cli_error(AUDIT, "cannot write '%s': %s", o->svg, strerror(errno));
            return CLI_EXIT_FAIL;
        }
        if (!o->csv && !o->json) /* stdout stays one document */
            printf("\nTimeline written to %s\n", o->svg);
    }
    return rc;
}

int cli_audit_main(int argc, char **argv)
{
    audit_opts_t o = {0};
    int rc = parse_args(&o, argc, argv);
    if (rc != AUDIT_GO)
        return rc;
    au_model_t m = {0};
    for (int i = 0; i < o.nlogs && rc == AUDIT_GO; i++) {
        int got = au_model_load(&m, AUDIT, o.logs[i]);
        rc = got ? got : AUDIT_GO;
    }
    if (rc == AUDIT_GO) {
        char skipped[512];
        au_model_finish(&m);
        au_skips_format(&m.skips, skipped, sizeof skipped);
        if (skipped[0])
            cli_error(AUDIT, "%s", skipped);
        rc = report(&m, &o);
        fflush(stdout);
    }
    au_model_free(&m);
    return rc;
}
