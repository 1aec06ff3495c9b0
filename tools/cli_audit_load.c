/*
 * cli_audit_load.c — reads audit logs into the model the reports walk:
 * compact records of allocations, frees, refusals and pressure changes
 * (time-ordered), processes with their start, exit and modules, interned
 * call sites, leak events, bad-pointer counts, and the skipped lines.
 *
 * Memory grows with the log (about 80 bytes an event), never with a line:
 * each line is parsed into one reused au_event_t.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_audit.h"

/* ------------------------------------------------------------- map */

static uint64_t mix(uint64_t a, uint64_t b)
{
    uint64_t h = a * 0x9e3779b97f4a7c15ull ^ (b + 0x632be59bd9b4e019ull);
    h ^= h >> 31;
    h *= 0xbf58476d1ce4e5b9ull;
    return h ^ h >> 29;
}

static struct au_map_slot *map_slot(const au_map_t *m, uint64_t a, uint64_t b)
{
    size_t i = (size_t)mix(a, b) & (m->cap - 1);
    while (m->slot[i].used && (m->slot[i].a != a || m->slot[i].b != b))
        i = (i + 1) & (m->cap - 1);
    return &m->slot[i];
}

uint64_t *au_map_find(au_map_t *m, uint64_t a, uint64_t b)
{
    if (!m->cap)
        return NULL;
    struct au_map_slot *s = map_slot(m, a, b);
    return s->used ? &s->val : NULL;
}

static int map_grow(au_map_t *m)
{
    au_map_t bigger = {calloc(m->cap ? m->cap * 2 : 64, sizeof *m->slot),
                       m->cap ? m->cap * 2 : 64, 0};
    if (!bigger.slot)
        return -1;
    for (size_t i = 0; i < m->cap; i++)
        if (m->slot[i].used) {
            *map_slot(&bigger, m->slot[i].a, m->slot[i].b) = m->slot[i];
            bigger.count++;
        }
    free(m->slot);
    *m = bigger;
    return 0;
}

int au_map_put(au_map_t *m, uint64_t a, uint64_t b, uint64_t val)
{
    if ((m->count + 1) * 4 > m->cap * 3 && map_grow(m) != 0) /* load <= 3/4 */
        return -1;
    struct au_map_slot *s = map_slot(m, a, b);
    if (!s->used)
        m->count++;
    *s = (struct au_map_slot){a, b, val, true};
    return 0;
}

void au_map_free(au_map_t *m)
{
    free(m->slot);
    memset(m, 0, sizeof *m);
}

/* ----------------------------------------------------------- arrays */

/* Makes room for one more element in *arr (count n, capacity *cap). */
static int reserve(void **arr, size_t n, size_t *cap, size_t size)
{
    if (n < *cap)
        return 0;
    size_t want = *cap ? *cap * 2 : 16;
    void *p = realloc(*arr, want * size);
    if (!p)
        return -1;
    *arr = p;
    *cap = want;
    return 0;
}

const char *au_model_name(const au_model_t *m, uint32_t id)
{
    return id < m->nname ? m->name[id] : "?";
}

/* The id of `word`, added if new; 0 ("") when out of memory. The words
 * are few (APIs, kinds, classes), so a scan is enough. */
static uint32_t intern(au_model_t *m, const char *word)
{
    for (size_t i = 0; i < m->nname; i++)
        if (strcmp(m->name[i], word) == 0)
            return (uint32_t)i;
    if (m->nname >= UINT16_MAX || reserve((void **)&m->name, m->nname, &m->capname, sizeof *m->name))
        return 0;
    char *copy = strdup(word);
    if (!copy)
        return 0;
    m->name[m->nname] = copy;
    return (uint32_t)m->nname++;
}

/* The id of the site with these frames, added if new; 0 when none. */
static uint32_t site_id(au_model_t *m, const au_event_t *ev, uint32_t proc)
{
    if (ev->nsite == 0)
        return 0;
    uint64_t h = 0;
    for (int i = 0; i < ev->nsite; i++)
        h = mix(h, ev->site[i]);
    /* Chain through (hash, k): probe entries k = 0, 1, ... for this hash. */
    for (uint64_t k = 0;; k++) {
        uint64_t *id = au_map_find(&m->site_index, h, k);
        if (!id)
            break;
        const au_site_t *s = &m->site[*id];
        if (s->nframes == ev->nsite &&
            memcmp(s->frame, ev->site, (size_t)ev->nsite * sizeof *ev->site) == 0)
            return (uint32_t)*id;
    }
    if (reserve((void **)&m->site, m->nsite, &m->capsite, sizeof *m->site))
        return 0;
    au_site_t *s = &m->site[m->nsite];
    s->frame = malloc((size_t)ev->nsite * sizeof *s->frame);
    if (!s->frame)
        return 0;
    memcpy(s->frame, ev->site, (size_t)ev->nsite * sizeof *s->frame);
    s->nframes = ev->nsite;
    s->proc = proc;
    uint64_t k = 0;
    while (au_map_find(&m->site_index, h, k))
        k++;
    if (au_map_put(&m->site_index, h, k, m->nsite) != 0)
        return 0;
    return (uint32_t)m->nsite++;
}

/* Whether an event of `pid` with `op` from the current log belongs to p:
 * pids repeat across logs (containers: each has a pid 1), and within one
 * log a start after an exit is a new process that got the pid again. */
static bool same_proc(const au_model_t *m, const au_proc_t *p, int64_t pid, int op)
{
    return p->pid == pid && p->file == (int)m->nfiles && !(op == AU_OP_START && p->exited);
}

/* The index of process `pid`, added if new; UINT32_MAX when out of memory. */
static uint32_t proc_of(au_model_t *m, int64_t pid, int op, int64_t ts)
{
    size_t last = m->last_proc; /* logs come in runs of one process */
    if (last < m->nproc && same_proc(m, &m->proc[last], pid, op))
        return (uint32_t)last;
    for (size_t i = m->nproc; i-- > 0;) /* the newest of a reused pid */
        if (same_proc(m, &m->proc[i], pid, op))
            return (uint32_t)(m->last_proc = i);
    if (reserve((void **)&m->proc, m->nproc, &m->capproc, sizeof *m->proc))
        return UINT32_MAX;
    au_proc_t *p = &m->proc[m->nproc];
    memset(p, 0, sizeof *p);
    p->pid = pid;
    p->file = (int)m->nfiles;
    p->first_ts = p->last_ts = ts;
    return (uint32_t)(m->last_proc = m->nproc++);
}

static int cmp_module(const void *a, const void *b)
{
    const au_module_t *x = a, *y = b;
    return x->base < y->base ? -1 : x->base > y->base;
}

static void take_exit(au_proc_t *p, const au_event_t *ev)
{
    p->exited = true;
    p->allocs = ev->allocs;
    p->frees = ev->frees;
    p->refusals = ev->refusals;
    p->bad_ptrs = ev->bad_ptrs;
    p->live = ev->live;
    p->live_bytes = ev->live_bytes;
    if (ev->nmodule == 0)
        return;
    au_module_t *mods = malloc((size_t)ev->nmodule * sizeof *mods);
    if (!mods)
        return;
    memcpy(mods, ev->module, (size_t)ev->nmodule * sizeof *mods);
    qsort(mods, (size_t)ev->nmodule, sizeof *mods, cmp_module);
    free(p->module);
    p->module = mods;
    p->nmodule = ev->nmodule;
}

static void take_bad_ptr(au_model_t *m, const au_event_t *ev)
{
    uint32_t id = intern(m, ev->cls);
    m->bad_ptrs++;
    for (int i = 0; i < m->nbad_class; i++)
        if (m->bad_class_name[i] == id) {
            m->bad_by_class[i]++;
            return;
        }
    if (m->nbad_class < 32) {
        m->bad_class_name[m->nbad_class] = id;
        m->bad_by_class[m->nbad_class++] = 1;
    }
}

static int take_rec(au_model_t *m, const au_event_t *ev, uint32_t proc)
{
    if (reserve((void **)&m->rec, m->nrec, &m->caprec, sizeof *m->rec))
        return -1;
    m->rec[m->nrec] = (au_rec_t){
        .ts = ev->ts, .used = (ev->present & AU_F_USED) ? ev->used : -1,
        .budget = (ev->present & AU_F_BUDGET) ? ev->budget : -1, .seq = ev->seq,
        .ptr = ev->ptr, .size = (uint64_t)ev->size, /* never negative: the parser refuses that */
        .order = (uint32_t)m->nrec, .proc = proc, .site = site_id(m, ev, proc),
        .tid = (uint32_t)ev->tid, .rc = (int32_t)ev->rc,
        .api = (uint16_t)intern(m, ev->api), .kind = (uint16_t)intern(m, ev->kind),
        .dev = (int16_t)ev->dev, .op = (uint8_t)ev->op,
    };
    m->nrec++;
    return 0;
}

/* Files one parsed event into the model. -1 when out of memory. */
static int take_event(au_model_t *m, const au_event_t *ev)
{
    uint32_t proc = proc_of(m, ev->pid, ev->op, ev->ts);
    if (proc == UINT32_MAX)
        return -1;
    au_proc_t *p = &m->proc[proc];
    p->first_ts = ev->ts < p->first_ts ? ev->ts : p->first_ts;
    p->last_ts = ev->ts > p->last_ts ? ev->ts : p->last_ts;
    m->events++;
    switch (ev->op) {
    case AU_OP_START:
        p->started = true;
        free(p->cmd);
        p->cmd = strdup(ev->cmd);
        for (char *c = p->cmd; c && *c; c++) /* printed to a terminal: no escapes */
            if ((unsigned char)*c < 0x20 || *c == 0x7f)
                *c = '?';
        return 0;
    case AU_OP_EXIT:
        take_exit(p, ev);
        return 0;
    case AU_OP_BAD_PTR:
        take_bad_ptr(m, ev);
        return 0;
    case AU_OP_LEAK:
        if (reserve((void **)&m->leak, m->nleak, &m->capleak, sizeof *m->leak))
            return -1;
        m->leak[m->nleak++] = (au_leak_t){proc, site_id(m, ev, proc),
                                          (int16_t)((ev->present & AU_F_DEV) ? ev->dev : -1),
                                          ev->count, ev->bytes};
        p->has_leak_events = true;
        return 0;
    case AU_OP_PRESSURE:
        m->pressure_changes++;
        return take_rec(m, ev, proc);
    default:
        return take_rec(m, ev, proc);
    }
}

/* Writers append whole lines, but one a crash cut short has no newline,
 * and the next process's first line then continues it. The last record
 * start after the beginning, parsed alone: true when it is a whole event. */
static bool glued_record(const char *buf, size_t len, au_event_t *ev)
{
    static const char start[] = "{\"v\":";
    const char *last = NULL;
    for (const char *p = buf + 1; (p = memmem(p, len - (size_t)(p - buf), start,
                                              sizeof start - 1)); p++)
        last = p;
    return last && au_parse_line(last, len - (size_t)(last - buf), ev) == AU_LINE_OK;
}

int au_model_load(au_model_t *m, const char *cmd, const char *path)
{
    static au_event_t ev; /* ~2 MiB, reused for every line */
    if (m->nsite == 0) { /* site 0: none recorded; name 0: "" */
        if (reserve((void **)&m->site, 0, &m->capsite, sizeof *m->site) ||
            intern(m, "") != 0 || m->nname != 1) {
            cli_error(cmd, "out of memory");
            return CLI_EXIT_FAIL;
        }
        memset(&m->site[0], 0, sizeof m->site[0]);
        m->nsite = 1;
    }
    au_reader_t *r = calloc(1, sizeof *r);
    if (!r || !(r->f = fopen(path, "r"))) {
        cli_error(cmd, "cannot open '%s': %s", path, strerror(errno));
        free(r);
        return CLI_EXIT_FAIL;
    }
    long used = 0, skipped = 0, first_bad = 0;
    int rc = 0, got;
    size_t len;
    bool unterminated;
    au_skip_t first_why = AU_LINE_OK;
    while ((got = au_reader_next(r, &len, &unterminated)) != 0) {
        if (got == -1)
            break;
        au_skip_t why = got < 0 ? (au_skip_t)-got : AU_LINE_OK;
        if (got > 0 && strspn(r->buf, " \t\r") == len)
            continue; /* blank lines are not events */
        if (got > 0)
            why = au_parse_line(r->buf, len, &ev);
        if (got > 0 && why != AU_LINE_OK && glued_record(r->buf, len, &ev)) {
            /* A line a crash cut short, with the next writer's line glued
             * on: the cut part is skipped, the glued record read. */
            au_skips_add(&m->skips, AU_SKIP_TRUNCATED, path, r->lineno);
            if (skipped++ == 0) {
                first_bad = r->lineno;
                first_why = AU_SKIP_TRUNCATED;
            }
            why = AU_LINE_OK;
        }
        if (why == AU_LINE_OK && take_event(m, &ev) != 0) {
            cli_error(cmd, "%s:%ld: out of memory", path, r->lineno);
            rc = CLI_EXIT_FAIL;
            break;
        }
        if (why == AU_LINE_OK) {
            used++;
            continue;
        }
        au_skips_add(&m->skips, why, path, r->lineno);
        if (skipped++ == 0) {
            first_bad = r->lineno;
            first_why = why;
        }
    }
    if (got == -1) {
        cli_error(cmd, "cannot read '%s': %s", path, strerror(errno));
        rc = CLI_EXIT_FAIL;
    } else if (rc == 0 && used == 0 && skipped > 0) {
        cli_error(cmd, "%s:%ld: not a vramguard audit log (%s)", path, first_bad,
                  au_skip_name(first_why));
        rc = CLI_EXIT_USAGE;
    } else if (rc == 0 && used == 0) {
        /* An empty file is no more a log than a garbled one. */
        cli_error(cmd, "%s: not a vramguard audit log (no event in it)", path);
        rc = CLI_EXIT_USAGE;
    }
    fclose(r->f);
    free(r);
    m->nfiles++;
    return rc;
}

static int cmp_rec(const void *a, const void *b)
{
    const au_rec_t *x = a, *y = b;
    if (x->ts != y->ts)
        return x->ts < y->ts ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order;
}

void au_model_finish(au_model_t *m)
{
    if (m->nrec) /* a log of starts and exits only has no records (rec NULL) */
        qsort(m->rec, m->nrec, sizeof *m->rec, cmp_rec);
}

void au_model_free(au_model_t *m)
{
    for (size_t i = 0; i < m->nproc; i++) {
        free(m->proc[i].cmd);
        free(m->proc[i].module);
    }
    for (size_t i = 1; i < m->nsite; i++)
        free(m->site[i].frame);
    for (size_t i = 0; i < m->nname; i++)
        free(m->name[i]);
    free(m->rec);
    free(m->proc);
    free(m->site);
    free(m->name);
    free(m->leak);
    au_map_free(&m->site_index);
    memset(m, 0, sizeof *m);
}

void au_model_walk(au_model_t *m, au_walk_fn fn, void *ctx)
{
    int64_t total[AU_MAX_DEVICES] = {0};
    for (size_t i = 0; i < m->nproc; i++)
        memset(m->proc[i].used, 0, sizeof m->proc[i].used);
    for (size_t i = 0; i < m->nrec; i++) {
        const au_rec_t *r = &m->rec[i];
        int64_t *mine = &m->proc[r->proc].used[r->dev];
        if (r->used >= 0) {
            total[r->dev] += r->used - *mine;
            *mine = r->used;
        }
        fn(r, total[r->dev], ctx);
    }
}
