/*
 * cli_audit_svg.c — `vramguard audit --svg FILE`: one panel per device with
 * bytes in use over time (a step line: the sum of each process's latest
 * `used`), the budget as a dashed red line, the pressure bands of the
 * budget shaded (50%, 80%, 95%: vg_pressure_t's boundaries), and each
 * refusal as a red cross at the use it would have reached. Axes are in
 * human units (KiB..TiB, ms/s/min) and a legend says what each mark is.
 *
 * Text from the log (file names, API names) is escaped, so the output is
 * well-formed XML. The file is written to a temporary file in the same
 * folder and renamed over FILE, so a reader never sees half a chart.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli_audit.h"

#define SVG_W 960
#define SVG_PANEL_H 300
#define SVG_TOP 78        /* title and legend */
#define SVG_LEFT 96
#define SVG_RIGHT 32
#define SVG_PLOT_H 220
#define SVG_PLOT_W (SVG_W - SVG_LEFT - SVG_RIGHT)

typedef struct pt {
    int64_t ts, v;
} pt_t;

typedef struct refusal {
    int64_t ts, reach;
    uint64_t size;
    uint16_t api;
} refusal_t;

typedef struct series {
    pt_t *pt;
    size_t n, cap;
    refusal_t *ref;
    size_t nref, capref;
    int64_t peak, budget, top;
    bool seen;
} series_t;

typedef struct chart {
    series_t dev[AU_MAX_DEVICES];
    int64_t t0, t1;
    bool oom;
} chart_t;

/* Appends one element to *arr (count *n, capacity *cap); false when out
 * of memory. */
static bool push(void **arr, size_t *n, size_t *cap, size_t size, const void *elem)
{
    if (*n == *cap) {
        size_t want = *cap ? *cap * 2 : 64;
        void *p = realloc(*arr, want * size);
        if (!p)
            return false;
        *arr = p;
        *cap = want;
    }
    memcpy((char *)*arr + *n * size, elem, size);
    ++*n;
    return true;
}

static void collect(const au_rec_t *r, int64_t total, void *ctx)
{
    chart_t *c = ctx;
    series_t *s = &c->dev[r->dev];
    s->seen = true;
    if (r->budget > 0)
        s->budget = r->budget;
    s->peak = total > s->peak ? total : s->peak;
    pt_t p = {r->ts, total};
    c->oom |= !push((void **)&s->pt, &s->n, &s->cap, sizeof p, &p);
    if (r->op == AU_OP_REFUSE) {
        refusal_t f = {r->ts, total + (int64_t)r->size, r->size, r->api};
        c->oom |= !push((void **)&s->ref, &s->nref, &s->capref, sizeof f, &f);
    }
}

/* ------------------------------------------------------------ text */

static void esc(FILE *f, const char *s)
{
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '&')
            fputs("&amp;", f);
        else if (ch == '<')
            fputs("&lt;", f);
        else if (ch == '>')
            fputs("&gt;", f);
        else if (ch == '"')
            fputs("&quot;", f);
        else if (ch < 0x20 && ch != '\t')
            fputc('?', f); /* not allowed in XML 1.0 */
        else
            fputc(ch, f);
    }
}

static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};

/* A byte count on an axis: "512 MiB", "1.5 GiB". */
static void fmt_axis_bytes(double v, char *buf, size_t len)
{
    int u = 0;
    while (v >= 1024 && u < 5) {
        v /= 1024;
        u++;
    }
    snprintf(buf, len, "%.*f %s", v == floor(v) ? 0 : 1, v, units[u]);
}

/* A round step giving about `ticks` steps across `span`: a power of two
 * for bytes (256 MiB, 512 MiB, 768 MiB, 1 GiB read well), else 1, 2 or 5
 * times a power of ten. */
static double nice_step(double span, double ticks, bool bytes)
{
    double raw = span / ticks;
    if (bytes) {
        double step = 1;
        while (step < raw)
            step *= 2;
        return step;
    }
    double mag = pow(10, floor(log10(raw)));
    static const double steps[] = {1, 2, 5, 10};
    for (size_t i = 0; i < 4; i++)
        if (steps[i] * mag >= raw)
            return steps[i] * mag;
    return 10 * mag;
}

static void fmt_axis_time(double ns, double span, char *buf, size_t len)
{
    if (span < 2e6)
        snprintf(buf, len, "%g us", ns / 1e3);
    else if (span < 2e9)
        snprintf(buf, len, "%g ms", round(ns / 1e3) / 1e3);
    else if (span < 300e9)
        snprintf(buf, len, "%g s", round(ns / 1e6) / 1e3);
    else
        snprintf(buf, len, "%g min", round(ns / 6e8) / 100);
}

/* ----------------------------------------------------------- panels */

typedef struct frame_geo {
    double y0;            /* top of the plot area */
    int64_t t0, t1, top;  /* time and bytes ranges */
} geo_t;

static double gx(const geo_t *g, int64_t ts)
{
    return SVG_LEFT + SVG_PLOT_W * (double)(ts - g->t0) / (double)(g->t1 - g->t0);
}

static double gy(const geo_t *g, double v)
{
    double y = g->y0 + SVG_PLOT_H * (1 - v / (double)g->top);
    return y < g->y0 ? g->y0 : y;
}

static void axes(FILE *f, const geo_t *g)
{
    char label[32];
    double step = nice_step((double)g->top, 4, true);
    for (double v = 0; v <= (double)g->top; v += step) {
        fmt_axis_bytes(v, label, sizeof label);
        fprintf(f, "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" class=\"grid\"/>"
                   "<text x=\"%d\" y=\"%.1f\" class=\"yl\">%s</text>\n",
                SVG_LEFT, SVG_LEFT + SVG_PLOT_W, gy(g, v), gy(g, v), SVG_LEFT - 6, gy(g, v) + 4,
                label);
    }
    double span = (double)(g->t1 - g->t0);
    double tstep = nice_step(span, 8, false);
    for (double t = 0; t <= span; t += tstep) {
        double x = SVG_LEFT + SVG_PLOT_W * t / span;
        fmt_axis_time(t, span, label, sizeof label);
        fprintf(f, "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" class=\"grid\"/>"
                   "<text x=\"%.1f\" y=\"%.1f\" class=\"xl\">%s</text>\n",
                x, x, g->y0, g->y0 + SVG_PLOT_H, x, g->y0 + SVG_PLOT_H + 16, label);
    }
    fprintf(f, "<rect x=\"%d\" y=\"%.1f\" width=\"%d\" height=\"%d\" class=\"frame\"/>\n",
            SVG_LEFT, g->y0, SVG_PLOT_W, SVG_PLOT_H);
    fprintf(f, "<text x=\"%d\" y=\"%.1f\" class=\"xl\">time since the first event</text>\n",
            SVG_LEFT + SVG_PLOT_W / 2, g->y0 + SVG_PLOT_H + 32);
}

static void bands(FILE *f, const geo_t *g, int64_t budget)
{
    static const struct { double lo, hi; const char *cls; } band[] = {
        {0.50, 0.80, "p50"}, {0.80, 0.95, "p80"}, {0.95, 1.00, "p95"}};
    for (size_t i = 0; i < 3; i++) {
        double ylo = gy(g, band[i].lo * (double)budget), yhi = gy(g, band[i].hi * (double)budget);
        fprintf(f, "<rect x=\"%d\" y=\"%.1f\" width=\"%d\" height=\"%.1f\" class=\"%s\"/>\n",
                SVG_LEFT, yhi, SVG_PLOT_W, ylo - yhi, band[i].cls);
    }
}

/* The step line of use, at most two points per pixel column (its highest
 * and its last value), so a long log stays a small file. */
static void use_line(FILE *f, const geo_t *g, const series_t *s)
{
    fprintf(f, "<path class=\"use\" d=\"M%.1f,%.1f", gx(g, s->pt[0].ts), gy(g, 0));
    size_t i = 0;
    while (i < s->n) {
        long col = lround(gx(g, s->pt[i].ts));
        int64_t hi = s->pt[i].v, last = s->pt[i].v;
        for (i++; i < s->n && lround(gx(g, s->pt[i].ts)) == col; i++) {
            hi = s->pt[i].v > hi ? s->pt[i].v : hi;
            last = s->pt[i].v;
        }
        fprintf(f, " H%ld V%.1f", col, gy(g, (double)hi));
        if (last != hi)
            fprintf(f, " V%.1f", gy(g, (double)last));
    }
    fprintf(f, " H%.1f\"/>\n", gx(g, g->t1));
}

static void refusals(FILE *f, const geo_t *g, const series_t *s, au_model_t *m)
{
    for (size_t i = 0; i < s->nref; i++) {
        const refusal_t *r = &s->ref[i];
        double x = gx(g, r->ts), y = gy(g, (double)r->reach);
        char size[32], at[32];
        fmt_axis_bytes((double)r->size, size, sizeof size);
        fmt_axis_time((double)(r->ts - g->t0), (double)(g->t1 - g->t0), at, sizeof at);
        fprintf(f, "<path class=\"refusal\" d=\"M%.1f,%.1f l10,10 m0,-10 l-10,10\">"
                   "<title>refused %s (", x - 5, y - 5, size);
        esc(f, au_model_name(m, r->api));
        fprintf(f, ") at %s</title></path>\n", at);
    }
}

static void panel(FILE *f, au_model_t *m, const chart_t *c, int dev, double y)
{
    const series_t *s = &c->dev[dev];
    geo_t g = {y + 34, c->t0, c->t1, 0};
    int64_t top = s->peak > s->budget ? s->peak : s->budget;
    for (size_t i = 0; i < s->nref; i++)
        top = s->ref[i].reach > top ? s->ref[i].reach : top;
    g.top = top + top / 12 + 1;
    char peak[32], budget[32] = "no budget";
    fmt_axis_bytes((double)s->peak, peak, sizeof peak);
    if (s->budget > 0)
        fmt_axis_bytes((double)s->budget, budget, sizeof budget);
    fprintf(f, "<g id=\"dev%d\">\n<text x=\"%d\" y=\"%.1f\" class=\"h2\">device %d: peak %s of %s%s"
               "%s, %zu refusal%s</text>\n", dev, SVG_LEFT, y + 22, dev, peak,
            s->budget > 0 ? "the " : "", budget, s->budget > 0 ? " budget" : "", s->nref,
            s->nref == 1 ? "" : "s");
    if (s->budget > 0)
        bands(f, &g, s->budget);
    axes(f, &g);
    use_line(f, &g, s);
    if (s->budget > 0)
        fprintf(f, "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" class=\"budget\"/>"
                   "<text x=\"%d\" y=\"%.1f\" class=\"bl\">budget %s</text>\n",
                SVG_LEFT, SVG_LEFT + SVG_PLOT_W, gy(&g, (double)s->budget),
                gy(&g, (double)s->budget), SVG_LEFT + SVG_PLOT_W - 4,
                gy(&g, (double)s->budget) - 5, budget);
    refusals(f, &g, s, m);
    fprintf(f, "</g>\n");
}

static void legend(FILE *f, double y)
{
    fprintf(f, "<g class=\"legend\" transform=\"translate(%d,%.0f)\">\n"
               "<line x1=\"0\" x2=\"24\" y1=\"0\" y2=\"0\" class=\"use\"/><text x=\"30\" y=\"4\">bytes in use</text>\n"
               "<line x1=\"130\" x2=\"154\" y1=\"0\" y2=\"0\" class=\"budget\"/><text x=\"160\" y=\"4\">budget</text>\n"
               "<rect x=\"225\" y=\"-6\" width=\"14\" height=\"12\" class=\"p50\"/><text x=\"243\" y=\"4\">50-80%%</text>\n"
               "<rect x=\"305\" y=\"-6\" width=\"14\" height=\"12\" class=\"p80\"/><text x=\"323\" y=\"4\">80-95%%</text>\n"
               "<rect x=\"385\" y=\"-6\" width=\"14\" height=\"12\" class=\"p95\"/><text x=\"403\" y=\"4\">95-100%% of budget</text>\n"
               "<path class=\"refusal\" d=\"M535,-5 l10,10 m0,-10 l-10,10\"/><text x=\"552\" y=\"4\">refusal (at the use it asked for)</text>\n"
               "</g>\n", SVG_LEFT, y);
}

static const char style[] =
    "<style>text{font-family:sans-serif;font-size:12px;fill:#222}"
    ".h1{font-size:17px;font-weight:bold}.h2{font-size:14px;font-weight:bold}"
    ".yl{text-anchor:end}.xl{text-anchor:middle}.bl{text-anchor:end;fill:#c92a2a}"
    ".grid{stroke:#e9ecef;stroke-width:1}.frame{fill:none;stroke:#adb5bd}"
    ".use{fill:none;stroke:#1c7ed6;stroke-width:2}"
    ".budget{stroke:#c92a2a;stroke-width:2;stroke-dasharray:8 5}"
    ".p50{fill:#fff3bf}.p80{fill:#ffe8cc}.p95{fill:#ffc9c9}"
    ".refusal{stroke:#c92a2a;stroke-width:2.5;fill:none}</style>\n";

static void write_svg(FILE *f, au_model_t *m, const chart_t *c, const char *title)
{
    int panels = 0;
    for (int d = 0; d < AU_MAX_DEVICES; d++)
        panels += c->dev[d].seen;
    int h = SVG_TOP + (panels ? panels : 1) * SVG_PANEL_H;
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
               "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
               "viewBox=\"0 0 %d %d\">\n%s<rect width=\"100%%\" height=\"100%%\" fill=\"#fff\"/>\n"
               "<text x=\"%d\" y=\"28\" class=\"h1\">VRAM in use per device: ",
            SVG_W, h, SVG_W, h, style, SVG_LEFT);
    esc(f, title);
    fprintf(f, "</text>\n");
    legend(f, 54);
    if (!panels)
        fprintf(f, "<text x=\"%d\" y=\"%d\">no allocations in the log</text>\n", SVG_LEFT,
                SVG_TOP + 40);
    double y = SVG_TOP;
    for (int d = 0; d < AU_MAX_DEVICES; d++)
        if (c->dev[d].seen) {
            panel(f, m, c, d, y);
            y += SVG_PANEL_H;
        }
    fprintf(f, "</svg>\n");
}

/* Writes to a temporary file beside `path`, then renames it over `path`. */
static int write_atomically(au_model_t *m, const chart_t *c, const char *path, const char *title)
{
    size_t len = strlen(path);
    char *tmp = malloc(len + 8);
    if (!tmp)
        return -1;
    memcpy(tmp, path, len);
    memcpy(tmp + len, ".XXXXXX", 8);
    int fd = mkstemp(tmp);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!f) {
        int e = errno;
        if (fd >= 0) {
            close(fd);
            unlink(tmp);
        }
        free(tmp);
        errno = e;
        return -1;
    }
    mode_t mask = umask(0);
    umask(mask);
    fchmod(fd, 0666 & ~mask); /* mkstemp made it 0600 */
    write_svg(f, m, c, title);
    int rc = fflush(f) == 0 && !ferror(f) && fsync(fd) == 0 ? 0 : -1;
    int e = errno;
    rc = fclose(f) == 0 && rc == 0 ? 0 : -1;
    if (rc == 0 && rename(tmp, path) != 0) {
        e = errno;
        rc = -1;
    }
    if (rc != 0)
        unlink(tmp);
    free(tmp);
    errno = e;
    return rc;
}

int au_svg_write(au_model_t *m, const char *path, const char *title)
{
    chart_t *c = calloc(1, sizeof *c);
    if (!c)
        return -1;
    au_model_walk(m, collect, c);
    c->t0 = m->nrec ? m->rec[0].ts : 0;
    c->t1 = m->nrec ? m->rec[m->nrec - 1].ts : 1;
    for (size_t i = 0; i < m->nproc; i++) /* to the last exit, not the last free */
        c->t1 = m->proc[i].last_ts > c->t1 ? m->proc[i].last_ts : c->t1;
    if (c->t1 - c->t0 < 1000000)
        c->t1 = c->t0 + 1000000; /* at least 1 ms wide */
    int rc = c->oom ? (errno = ENOMEM, -1) : write_atomically(m, c, path, title);
    int e = errno;
    for (int d = 0; d < AU_MAX_DEVICES; d++) {
        free(c->dev[d].pt);
        free(c->dev[d].ref);
    }
    free(c);
    errno = e;
    return rc;
}
