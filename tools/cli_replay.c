/*
 * cli_replay.c — `vramguard replay LOG [--budget SIZE] [--pid PID] [--json]`: re-runs
 * one process's recorded allocations, frees and refusals, in log order,
 * against the driver through the public API (one vg_pool_t on device 0),
 * to reproduce a refusal under a budget or to time an allocator.
 *
 * Recorded pointers map to the replay's own; a free of a pointer the
 * replay never got (allocated before the log began, or refused now) is
 * skipped and counted; an address allocated again while still live was
 * freed in a line the log lost, so its replay allocation is freed first. A
 * recorded refusal is tried again; if it fits now it is freed at once,
 * since the program never held it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_audit.h"
#include "vg_driver.h"
#include "vg_settings.h"

#define REPLAY "replay"
#define REPLAY_GO (-1)

typedef struct replay_opts {
    const char *log;
    const char *budget_text; /* NULL: the log's budget, else the device's memory */
    uint64_t budget;
    bool json;
    int64_t pid;
    bool has_pid;
} replay_opts_t;

typedef struct timings {
    uint64_t *ns;
    size_t n, cap;
} timings_t;

typedef struct replay_state {
    vg_pool_t *pool;
    au_map_t live;        /* recorded ptr -> replay ptr */
    timings_t alloc_t, free_t;
    long allocs, ok, refused, errors, frees, unknown_frees, now_fit;
    long recorded_refusals;
    long other_devices;   /* events on devices other than 0: not replayed */
    bool have_first;
    long first_index;     /* 1-based among the allocation attempts */
    au_rec_t first;
    uint64_t first_used;
    int first_rc;
} replay_state_t;

void cli_replay_help(FILE *f)
{
    fprintf(f, "Usage: vramguard replay [--budget SIZE] [--pid PID] [--json] LOG\n\n");
    cli_wrap(f, 0, 78,
             "Re-runs the allocations, frees and refusals one process recorded "
             "in the audit log LOG, in order, against the CUDA driver on device "
             "0 (through a vramguard pool), and prints how many allocations "
             "succeeded, the first refusal, and the median time of each "
             "operation; events on other devices are counted and left out. Use it to reproduce a refusal under a smaller budget "
             "or to benchmark an allocator on a real sequence.");
    fprintf(f, "\nOptions:\n"
               "  --budget SIZE\n"
               "        The pool's limit (8GiB, 512MiB, ...); default: the budget\n"
               "        the log recorded for device 0, else all of its memory.\n"
               "  --pid PID\n"
               "        The process to replay; default: the first that allocated.\n"
               "  --json\n"
               "        Print one JSON object, named as in the audit log.\n"
               "  -h, --help\n"
               "        Show this help and exit.\n\n");
    cli_wrap(f, 0, 78,
             "Exit status: 0 when the replay ran (refusals included); 1 when LOG "
             "cannot be read or the driver cannot be used; 2 for a usage error, "
             "a LOG with no usable line, or one that recorded a budget of 0 "
             "(a fail-closed process) without --budget.");
}

static int take_opt(replay_opts_t *o, const char *name, const char *v)
{
    char err[256], *end;
    if (strcmp(name, "--budget") == 0) {
        if (vg__size_parse(v, &o->budget, err, sizeof err) != VG_OK)
            return cli_usage_error(REPLAY, "--budget '%s': %s", v, err);
        o->budget_text = v;
        return REPLAY_GO;
    }
    errno = 0;
    o->pid = strtoll(v, &end, 10);
    if (end == v || *end || o->pid <= 0 || errno == ERANGE)
        return cli_usage_error(REPLAY, "--pid needs a process id, not '%s'", v);
    o->has_pid = true;
    return REPLAY_GO;
}

static int take_log(replay_opts_t *o, const char *a)
{
    if (o->log)
        return cli_usage_error(REPLAY, "one LOG only, not '%s'", a);
    o->log = a;
    return REPLAY_GO;
}

static int parse_args(replay_opts_t *o, int argc, char **argv)
{
    int i = 1;
    for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
        const char *a = argv[i], *eq = strchr(a, '=');
        size_t len = eq ? (size_t)(eq - a) : strlen(a);
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            cli_replay_help(stdout);
            return CLI_EXIT_OK;
        }
        if (strcmp(a, "--json") == 0) {
            o->json = true;
            continue;
        }
        if (a[0] != '-' || !a[1]) {
            if (take_log(o, a) != REPLAY_GO)
                return CLI_EXIT_USAGE;
            continue;
        }
        char name[16];
        snprintf(name, sizeof name, "%.*s", (int)(len < 15 ? len : 15), a);
        if (strcmp(name, "--budget") != 0 && strcmp(name, "--pid") != 0)
            return cli_option_error(REPLAY, a, (const char *const[]){"--json", "--help", NULL});
        /* A value is never another option or "--". */
        const char *v = eq ? eq + 1
                        : i + 1 < argc && (argv[i + 1][0] != '-' || !argv[i + 1][1]) ? argv[++i]
                                                                                    : NULL;
        if (!v)
            return cli_usage_error(REPLAY, "option '%s' needs a value", name);
        if (take_opt(o, name, v) != REPLAY_GO)
            return CLI_EXIT_USAGE;
    }
    for (i++; i < argc; i++) /* after "--" */
        if (take_log(o, argv[i]) != REPLAY_GO)
            return CLI_EXIT_USAGE;
    if (!o->log)
        return cli_usage_error(REPLAY, "no audit log given");
    return REPLAY_GO;
}

/* ------------------------------------------------------------ replay */

static void note_time(timings_t *t, uint64_t ns)
{
    if (t->n == t->cap) {
        size_t want = t->cap ? t->cap * 2 : 256;
        uint64_t *p = realloc(t->ns, want * sizeof *p);
        if (!p)
            return; /* a timing lost is not worth failing the replay */
        t->ns = p;
        t->cap = want;
    }
    t->ns[t->n++] = ns;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void fmt_median(timings_t *t, char *buf, size_t len)
{
    if (t->n == 0) {
        snprintf(buf, len, "- (none)");
        return;
    }
    qsort(t->ns, t->n, sizeof *t->ns, cmp_u64);
    double ns = (double)t->ns[t->n / 2];
    if (ns < 1e4)
        snprintf(buf, len, "%.2f us over %zu", ns / 1e3, t->n);
    else
        snprintf(buf, len, "%.1f us over %zu", ns / 1e3, t->n);
}

static void replay_alloc(replay_state_t *s, const au_rec_t *r)
{
    vg_devptr_t p = 0;
    uint64_t *old = r->op == AU_OP_ALLOC ? au_map_find(&s->live, 0, r->ptr) : NULL;
    if (old && *old != AU_MAP_DEAD) {
        /* The driver gave this address out again, so it was freed: the
         * log lost that free (a thread's unflushed lines at a crash). */
        vg_pool_free(s->pool, *old);
        *old = AU_MAP_DEAD;
    }
    uint64_t t = vg__mono_ns();
    int rc = vg_pool_alloc(s->pool, r->size, NULL, &p);
    uint64_t dt = vg__mono_ns() - t;
    s->allocs++;
    if (rc == VG_OK) {
        note_time(&s->alloc_t, dt);
        s->ok++;
        if (r->op == AU_OP_REFUSE) { /* the program never held it */
            s->now_fit++;
            vg_pool_free(s->pool, p);
        } else if (au_map_put(&s->live, 0, r->ptr, p) != 0) {
            vg_pool_free(s->pool, p);
        }
        return;
    }
    if (rc != VG_ENOMEM) { /* not a refusal: a request of 0 bytes (VG_EINVAL), a driver error */
        s->errors++;
        return;
    }
    s->refused++;
    if (!s->have_first) {
        vg_pool_stats_t st = {0};
        vg_pool_stats(s->pool, &st);
        s->have_first = true;
        s->first_index = s->allocs;
        s->first = *r;
        s->first_used = st.used;
        s->first_rc = rc;
    }
}

static void replay_free(replay_state_t *s, const au_rec_t *r)
{
    uint64_t *p = au_map_find(&s->live, 0, r->ptr);
    if (!p || *p == AU_MAP_DEAD) {
        s->unknown_frees++;
        return;
    }
    uint64_t t = vg__mono_ns();
    int rc = vg_pool_free(s->pool, *p);
    note_time(&s->free_t, vg__mono_ns() - t);
    s->frees += rc == VG_OK;
    *p = AU_MAP_DEAD;
}

static void replay_run(replay_state_t *s, const au_model_t *m, uint32_t proc)
{
    for (size_t i = 0; i < m->nrec; i++) {
        const au_rec_t *r = &m->rec[i];
        if (r->proc != proc)
            continue;
        if (r->dev != 0 && (r->op == AU_OP_ALLOC || r->op == AU_OP_REFUSE || r->op == AU_OP_FREE)) {
            s->other_devices++; /* the replay has device 0 and its budget only */
            continue;
        }
        if (r->op == AU_OP_ALLOC || r->op == AU_OP_REFUSE) {
            s->recorded_refusals += r->op == AU_OP_REFUSE;
            replay_alloc(s, r);
        } else if (r->op == AU_OP_FREE) {
            replay_free(s, r);
        }
    }
    for (size_t i = 0; i < s->live.cap; i++)
        if (s->live.slot[i].used && s->live.slot[i].val != AU_MAP_DEAD)
            vg_pool_free(s->pool, s->live.slot[i].val);
}

/* The process to replay: --pid's, else the first that allocated. */
static int pick_proc(const au_model_t *m, const replay_opts_t *o, uint32_t *out)
{
    for (size_t i = 0; i < m->nproc; i++) {
        bool allocated = false;
        for (size_t k = 0; k < m->nrec && !allocated; k++)
            allocated = m->rec[k].proc == i &&
                        (m->rec[k].op == AU_OP_ALLOC || m->rec[k].op == AU_OP_REFUSE);
        if (o->has_pid ? m->proc[i].pid == o->pid : allocated) {
            *out = (uint32_t)i;
            return REPLAY_GO;
        }
    }
    if (o->has_pid)
        cli_error(REPLAY, "%s: no process %lld in the log", o->log, (long long)o->pid);
    else
        cli_error(REPLAY, "%s: no allocations to replay", o->log);
    return CLI_EXIT_USAGE;
}

/* The budget the process ran under on device 0, as its events recorded
 * it; false when it had none. */
static bool recorded_budget(const au_model_t *m, uint32_t proc, uint64_t *out)
{
    for (size_t i = 0; i < m->nrec; i++) {
        const au_rec_t *r = &m->rec[i];
        if (r->proc == proc && r->dev == 0 && r->budget >= 0 &&
            (r->op == AU_OP_ALLOC || r->op == AU_OP_REFUSE || r->op == AU_OP_FREE)) {
            *out = (uint64_t)r->budget;
            return true;
        }
    }
    return false;
}

/* The result with the audit log's field names (docs/audit-log.md). */
static void print_json(replay_state_t *s, const au_model_t *m, uint32_t proc, int64_t budget)
{
    const au_proc_t *p = &m->proc[proc];
    printf("{\"pid\":%lld,\"dev\":0,\"budget\":%lld,\"allocs\":%ld,\"ok\":%ld,"
           "\"refusals\":%ld,\"errors\":%ld,\"recorded_refusals\":%ld,\"now_fit\":%ld,"
           "\"frees\":%ld,\"skipped_frees\":%ld,\"skipped_other_devices\":%ld,"
           "\"first_refusal\":",
           (long long)p->pid, (long long)budget, s->allocs, s->ok, s->refused, s->errors,
           s->recorded_refusals, s->now_fit, s->frees, s->unknown_frees, s->other_devices);
    if (s->have_first) {
        printf("{\"seq\":%lld,\"api\":", (long long)s->first.seq);
        cli_json_str(stdout, au_model_name(m, s->first.api)); /* the log's text */
        printf(",\"size\":%llu,\"used\":%llu,\"rc\":%d}}\n",
               (unsigned long long)s->first.size, (unsigned long long)s->first_used,
               (int)vg__cu_status(s->first_rc));
    } else
        printf("null}\n");
}

/* A word from the log for a terminal: control bytes as '?', as the
 * reader does for a command line, so a forged log cannot send escapes. */
static const char *printable(const char *word, char *buf, size_t len)
{
    snprintf(buf, len, "%s", word);
    for (char *c = buf; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            *c = '?';
    return buf;
}

static void print_result(replay_state_t *s, const au_model_t *m, const replay_opts_t *o,
                         uint32_t proc)
{
    char limit[32], size[32], used[32], at[32], ft[32], api[AU_NAME_MAX];
    const au_proc_t *p = &m->proc[proc];
    printf("replay of %s: pid %lld (%s) on device 0, budget %s\n", o->log, (long long)p->pid,
           p->cmd ? p->cmd : "no start event",
           o->budget_text ? vg__fmt_bytes(o->budget, limit, sizeof limit) : "none (the device)");
    if (o->budget_text && strcmp(o->budget_text, "recorded") == 0)
        printf("(the budget recorded in the log; --budget overrides it)\n");
    printf("allocations: %ld of %ld succeeded, %ld refused", s->ok, s->allocs, s->refused);
    if (s->errors)
        printf(", %ld failed otherwise", s->errors);
    printf(" (%ld recorded as refused, %ld of those fit now)\n", s->recorded_refusals, s->now_fit);
    printf("frees: %ld replayed, %ld skipped (pointer never allocated in the replay)\n", s->frees,
           s->unknown_frees);
    if (s->other_devices)
        printf("skipped: %ld events on other devices than 0 (the replay has device 0 only)\n",
               s->other_devices);
    if (s->have_first)
        printf("first refusal: allocation %ld (seq %lld, %s, %s) with %s in use: %s\n",
               s->first_index, (long long)s->first.seq,
               printable(au_model_name(m, s->first.api), api, sizeof api),
               vg__fmt_bytes(s->first.size, size, sizeof size),
               vg__fmt_bytes(s->first_used, used, sizeof used), vg_strerror(s->first_rc));
    else
        printf("first refusal: none\n");
    fmt_median(&s->alloc_t, at, sizeof at);
    fmt_median(&s->free_t, ft, sizeof ft);
    printf("timings (median): alloc %s, free %s\n", at, ft);
}

static int replay(const au_model_t *m, const replay_opts_t *o, uint32_t proc)
{
    replay_state_t s = {0};
    replay_opts_t with = *o;
    if (!with.budget_text && recorded_budget(m, proc, &with.budget))
        with.budget_text = "recorded";
    if (!o->budget_text && with.budget_text && with.budget == 0) {
        /* a fail-closed process logs a limit of 0, which no pool can have */
        cli_error(REPLAY, "%s: pid %lld ran with a budget of 0 bytes on device 0 (every "
                  "allocation refused); give --budget SIZE to replay it", o->log,
                  (long long)m->proc[proc].pid);
        return CLI_EXIT_USAGE;
    }
    o = &with;
    uint64_t limit = o->budget;
    vg_device_info_t info;
    int rc = o->budget_text ? VG_OK : vg_device_info(0, &info);
    if (rc == VG_OK && !o->budget_text)
        limit = info.total_bytes;
    if (rc == VG_OK)
        rc = vg_pool_create(0, limit, &s.pool);
    if (rc != VG_OK) {
        cli_error(REPLAY, "cannot use device 0: %s", vg_strerror(rc));
        return CLI_EXIT_FAIL;
    }
    replay_run(&s, m, proc);
    vg_pool_destroy(s.pool, NULL);
    if (o->json)
        print_json(&s, m, proc, o->budget_text ? (int64_t)limit : -1);
    else
        print_result(&s, m, o, proc);
    au_map_free(&s.live);
    free(s.alloc_t.ns);
    free(s.free_t.ns);
    return CLI_EXIT_OK;
}

int cli_replay_main(int argc, char **argv)
{
    replay_opts_t o = {0};
    int rc = parse_args(&o, argc, argv);
    if (rc != REPLAY_GO)
        return rc;
    au_model_t m = {0};
    rc = au_model_load(&m, REPLAY, o.log);
    uint32_t proc = 0;
    if (rc == 0) {
        char skipped[512];
        au_model_finish(&m);
        au_skips_format(&m.skips, skipped, sizeof skipped);
        if (skipped[0])
            cli_error(REPLAY, "%s", skipped);
        rc = pick_proc(&m, &o, &proc);
    }
    /* The replay's budget is --budget or the log's: the caller's budget,
     * shared region and audit log are not the replay's (the engine would
     * read them when it starts). */
    cli_drop_settings();
    if (rc == REPLAY_GO)
        rc = replay(&m, &o, proc);
    au_model_free(&m);
    return rc;
}
