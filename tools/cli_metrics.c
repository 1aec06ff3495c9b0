/*
 * cli_metrics.c — `vramguard metrics [NAME] [--listen ADDR:PORT |
 * --textfile PATH]`: shared budgets in Prometheus' text exposition format
 * (version 0.0.4), on stdout, over HTTP on a loopback address, or written
 * atomically (temporary file, then rename) for node_exporter's textfile
 * collector. Regions are read as `status` reads them (cli_regions).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "cli.h"
#include "vg_shared.h"

static const char *const CMD = "metrics";

/* X(name, help): every per-device gauge or counter, in output order. */
#define METRICS(X)                                                             \
    X(budget_bytes, gauge, "Shared budget of the device (+Inf: none)")        \
    X(used_bytes, gauge, "Bytes charged by every process of the region")      \
    X(peak_bytes, gauge, "Highest use reserved since the region was made")    \
    X(refusals_total, counter, "Requests refused for lack of budget")         \
    X(pressure_level, gauge, "0 low, 1 medium, 2 high, 3 critical")           \
    X(processes, gauge, "Live processes holding memory on the device")

typedef struct out {
    char *buf;
    size_t len, cap;
} out_t;

static void put(out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(out_t *o, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n >= 0 && o->len + (size_t)n < o->cap) {
            o->len += (size_t)n;
            return;
        }
        size_t cap = o->cap ? o->cap * 2 : 65536;
        char *b = realloc(o->buf, cap);
        if (!b)
            abort();
        o->buf = b;
        o->cap = cap;
    }
}

/* A label value in the exposition format: \\, \" and \n escaped as it
 * requires; other control bytes, which it cannot carry, become '?'. Region
 * names come from file names in /dev/shm, which anyone may choose. */
static void put_label(out_t *o, const char *v)
{
    for (; *v; v++) {
        unsigned char c = (unsigned char)*v;
        if (c == '\\' || c == '"')
            put(o, "\\%c", c);
        else if (c == '\n')
            put(o, "\\n");
        else
            put(o, "%c", c < 0x20 || c == 0x7f ? '?' : c);
    }
}

typedef struct region_rows {
    out_t *o;
    int metric;
} region_rows_t;

static uint64_t metric_value(int m, const vg__shm_t *r, int d, const unsigned char *alive)
{
    const vg__shm_device_t *e = &r->dev[d];
    uint64_t n = 0;
    switch (m) {
    case 0: return e->limit;
    case 1: return e->used;
    case 2: return e->peak;
    case 3: return e->refusals;
    case 4: return e->level >= 0 && e->level <= 3 ? (uint64_t)e->level : 0;
    default:
        for (int s = 0; s < VG__SHM_SLOTS; s++)
            n += alive[s] && (r->slot[s].used[d] || r->slot[s].live[d]);
        return n;
    }
}

static void rows_of(const char *name, const vg__shm_t *r, const unsigned char *alive, void *ctx)
{
    region_rows_t *x = ctx;
    static const char *const names[] = {
#define NAME_(n, type, help) "vramguard_" #n,
        METRICS(NAME_)
#undef NAME_
    };
    for (int d = 0; d < VG__SHM_DEVICES; d++) {
        if (r->dev[d].ordinal < 0)
            continue;
        char uuid[49];
        size_t ul = strnlen(r->dev[d].uuid, 48), k = 0;
        for (size_t i = 0; i < ul; i++) /* label values: no quotes, no controls */
            if (r->dev[d].uuid[i] > 0x20 && r->dev[d].uuid[i] != '"' && r->dev[d].uuid[i] != '\\')
                uuid[k++] = r->dev[d].uuid[i];
        uuid[k] = '\0';
        uint64_t v = metric_value(x->metric, r, d, alive);
        put(x->o, "%s{region=\"", names[x->metric]);
        put_label(x->o, name);
        put(x->o, "\",device=\"%d\",uuid=\"%s\"} ", r->dev[d].ordinal, uuid);
        if (v == VG__UNLIMITED)
            put(x->o, "+Inf\n");
        else
            put(x->o, "%llu\n", (unsigned long long)v);
    }
}

/* ------------------------------------------------ per-process series */

/* X(name, help): the per-process gauges, labelled region, pid, command and
 * device. Explicit use is what the process allocated (used - overhead),
 * implicit use what no call shows (context, modules: the overhead). */
#define PROC_METRICS(X)                                                        \
    X(process_explicit_bytes, "Bytes a process allocated through the API")    \
    X(process_implicit_bytes, "Bytes a process holds that no call shows")

typedef struct proc_rows {
    out_t *o;
    int metric; /* 0 explicit, 1 implicit */
} proc_rows_t;

static void proc_rows_of(const char *name, const vg__shm_t *r, const unsigned char *alive,
                         void *ctx)
{
    proc_rows_t *x = ctx;
    for (int s = 0; s < VG__SHM_SLOTS; s++) {
        const vg__shm_slot_t *sl = &r->slot[s];
        char cmd[VG__SHM_CMD + 1];
        if (sl->pid <= 0 || !alive[s])
            continue;
        memcpy(cmd, sl->cmd, VG__SHM_CMD);
        cmd[VG__SHM_CMD] = '\0'; /* written by another process: maybe unterminated */
        for (int d = 0; d < VG__SHM_DEVICES; d++) {
            if (r->dev[d].ordinal < 0 || !(sl->used[d] || sl->live[d] || sl->overhead[d]))
                continue;
            uint64_t over = sl->overhead[d], used = sl->used[d] > over ? sl->used[d] - over : 0;
            put(x->o, "vramguard_%s{region=\"",
                x->metric ? "process_implicit_bytes" : "process_explicit_bytes");
            put_label(x->o, name);
            put(x->o, "\",pid=\"%d\",command=\"", sl->pid);
            put_label(x->o, cmd);
            put(x->o, "\",device=\"%d\"} %llu\n", r->dev[d].ordinal,
                (unsigned long long)(x->metric ? over : used));
        }
    }
}

static int process_series(out_t *o, const char *name)
{
    static const char *const heads[] = {
#define PHEAD_(n, help) "# HELP vramguard_" #n " " help "\n# TYPE vramguard_" #n " gauge\n",
        PROC_METRICS(PHEAD_)
#undef PHEAD_
    };
    for (int m = 0; m < 2; m++) {
        put(o, "%s", heads[m]);
        proc_rows_t x = {o, m};
        if (cli_regions(NULL, name, proc_rows_of, &x) != CLI_EXIT_OK) /* quiet: said once */
            return -1;
    }
    put(o, "# HELP vramguard_build_info The vramguard that serves these metrics\n"
           "# TYPE vramguard_build_info gauge\n"
           "vramguard_build_info{version=\"%d.%d.%d\"} 1\n",
        VG_VERSION_MAJOR, VG_VERSION_MINOR, VG_VERSION_PATCH);
    return 0;
}

/* The whole exposition; NULL when NAME could not be read. */
static char *exposition(const char *name, size_t *len)
{
    static const char *const heads[] = {
#define HEAD_(n, type, help) "# HELP vramguard_" #n " " help "\n# TYPE vramguard_" #n " " #type "\n",
        METRICS(HEAD_)
#undef HEAD_
    };
    out_t o = {0};
    put(&o, "%s", "");
    for (int m = 0; m < (int)(sizeof heads / sizeof heads[0]); m++) {
        put(&o, "%s", heads[m]);
        region_rows_t x = {&o, m};
        /* The regions are walked once per metric: a region that cannot be
         * read is said once a scrape, not once a metric. */
        if (cli_regions(m == 0 ? CMD : NULL, name, rows_of, &x) != CLI_EXIT_OK) {
            free(o.buf);
            return NULL;
        }
    }
    if (process_series(&o, name) != 0) {
        free(o.buf);
        return NULL;
    }
    *len = o.len;
    return o.buf;
}

static int write_textfile(const char *name, const char *path)
{
    size_t len;
    char *text = exposition(name, &len);
    if (!text)
        return CLI_EXIT_FAIL;
    char tmp[CLI_PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    bool ok = f && fwrite(text, 1, len, f) == len;
    ok = f && fclose(f) == 0 && ok;
    free(text);
    if (!ok || rename(tmp, path) != 0) {
        cli_error(CMD, "cannot write %s: %s", path, strerror(errno));
        unlink(tmp);
        return CLI_EXIT_FAIL;
    }
    return CLI_EXIT_OK;
}

/* "127.0.0.1:9400", "[::1]:9400", "localhost:9400": loopback only. */
static int parse_listen(const char *text, struct sockaddr_storage *ss, socklen_t *sl)
{
    char host[128];
    const char *colon = strrchr(text, ':');
    if (!colon || colon == text || (size_t)(colon - text) >= sizeof host)
        return -1;
    snprintf(host, sizeof host, "%.*s", (int)(colon - text), text);
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 1 || port > 65535)
        return -1;
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (!strcmp(host, "localhost"))
        snprintf(host, sizeof host, "127.0.0.1");
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        if ((ntohl(v4->sin_addr.s_addr) >> 24) != 127)
            return -2;
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        *sl = sizeof *v4;
        return 0;
    }
    if (host[0] == '[' && host[strlen(host) - 1] == ']') {
        host[strlen(host) - 1] = '\0';
        if (inet_pton(AF_INET6, host + 1, &v6->sin6_addr) != 1)
            return -1;
        if (!IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr))
            return -2;
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        *sl = sizeof *v6;
        return 0;
    }
    return -1;
}

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

/* Answers a request that is not GET or HEAD of /metrics: 405 for another
 * method, 404 for another path, 400 for no request line. Returns true when
 * it answered. */
static bool refuse_request(int c, const char *req, bool *head_only)
{
    const char *status = NULL;
    size_t m = strcspn(req, " "), plen = 0;
    const char *path = req + m + (req[m] == ' ');
    plen = strcspn(path, " ?\r\n");
    *head_only = m == 4 && !strncmp(req, "HEAD", 4);
    if (req[m] != ' ' || plen == 0)
        status = "400 Bad Request";
    else if (!(m == 3 && !strncmp(req, "GET", 3)) && !*head_only)
        status = "405 Method Not Allowed\r\nAllow: GET, HEAD";
    else if (plen != 8 || strncmp(path, "/metrics", 8) != 0)
        status = "404 Not Found";
    if (!status)
        return false;
    char head[256];
    int hl = snprintf(head, sizeof head,
                      "HTTP/1.0 %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", status);
    (void)!write(c, head, (size_t)hl);
    return true;
}

#define CLIENT_TIMEOUT_S 2 /* seconds a connection may keep the server waiting */

static void serve_one(int c, const char *name)
{
    char req[2048];
    bool head_only = false;
    ssize_t n = read(c, req, sizeof req - 1);
    req[n > 0 ? n : 0] = '\0';
    if (refuse_request(c, req, &head_only))
        return;
    size_t len = 0;
    char *text = exposition(name, &len);
    char head[256];
    int hl = text ? snprintf(head, sizeof head,
                             "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                             "Content-Length: %zu\r\nConnection: close\r\n\r\n", len)
                  : snprintf(head, sizeof head,
                             "HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n"
                             "Connection: close\r\n\r\n");
    (void)!write(c, head, (size_t)hl);
    if (text && !head_only)
        (void)!write(c, text, len);
    free(text);
}

static int serve(const char *name, const char *listen_at)
{
    struct sockaddr_storage ss;
    socklen_t sl = 0;
    int p = parse_listen(listen_at, &ss, &sl);
    if (p == -2)
        return cli_usage_error(CMD, "refusing to listen on '%s': loopback addresses only "
                                    "(127.0.0.0/8, [::1], localhost)", listen_at);
    if (p != 0)
        return cli_usage_error(CMD, "bad --listen address '%s' (want HOST:PORT)", listen_at);
    int s = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (s < 0 || bind(s, (struct sockaddr *)&ss, sl) != 0 || listen(s, 16) != 0) {
        cli_error(CMD, "cannot listen on %s: %s", listen_at, strerror(errno));
        if (s >= 0)
            close(s);
        return CLI_EXIT_FAIL;
    }
    struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: accept returns */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    fprintf(stderr, "vramguard metrics: serving on http://%s/metrics\n", listen_at);
    while (!stop) {
        int c = accept4(s, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0)
            continue;
        /* One connection at a time: a client that sends nothing (or reads
         * nothing) must not stop every later scrape. */
        struct timeval limit = {.tv_sec = CLIENT_TIMEOUT_S};
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
        setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
        serve_one(c, name);
        close(c);
    }
    close(s);
    return CLI_EXIT_OK;
}

void cli_metrics_help(FILE *f)
{
    fprintf(f, "Usage: vramguard metrics [NAME] [--listen ADDR:PORT | --textfile PATH]\n\n");
    cli_wrap(f, 0, 78,
             "Prints the shared budget NAME (or every region you may read) as "
             "Prometheus metrics: vramguard_budget_bytes, vramguard_used_bytes, "
             "vramguard_peak_bytes, vramguard_refusals_total, "
             "vramguard_pressure_level and vramguard_processes, labelled by "
             "region, device index and uuid; per live process "
             "vramguard_process_explicit_bytes (what it allocated) and "
             "vramguard_process_implicit_bytes (context, modules), labelled by "
             "region, pid, command and device; and vramguard_build_info. Over "
             "HTTP only GET and HEAD of /metrics are served: another path is "
             "404, another method 405.");
    fprintf(f, "\nOptions:\n"
               "  --listen ADDR:PORT  serve them over HTTP until interrupted; loopback\n"
               "                      only (127.0.0.1:9400, [::1]:9400, localhost:9400)\n"
               "  --textfile PATH     write them to PATH atomically (for node_exporter's\n"
               "                      textfile collector) and exit\n"
               "  -h, --help          show this help and exit\n\n");
    cli_wrap(f, 0, 78,
             "Exit status: 0; 1 when the region NAME cannot be read, PATH cannot "
             "be written or ADDR:PORT cannot be listened on; 2 for a usage "
             "error or an address that is not loopback.");
}

int cli_metrics_main(int argc, char **argv)
{
    const char *name = NULL, *listen_at = NULL, *textfile = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            cli_metrics_help(stdout);
            return CLI_EXIT_OK;
        } else if (!strcmp(argv[i], "--listen") && i + 1 < argc) {
            listen_at = argv[++i];
        } else if (!strcmp(argv[i], "--textfile") && i + 1 < argc) {
            textfile = argv[++i];
        } else if (!strcmp(argv[i], "--listen") || !strcmp(argv[i], "--textfile")) {
            return cli_usage_error(CMD, "option '%s' needs a value (%s)", argv[i],
                                   argv[i][2] == 'l' ? "ADDR:PORT" : "PATH");
        } else if (argv[i][0] == '-' || name) {
            return cli_usage_error(CMD, "unexpected argument '%s'", argv[i]);
        } else {
            name = argv[i];
        }
    }
    if (listen_at && textfile)
        return cli_usage_error(CMD, "--listen and --textfile exclude each other");
    if (listen_at)
        return serve(name, listen_at);
    if (textfile)
        return write_textfile(name, textfile);
    size_t len;
    char *text = exposition(name, &len);
    if (!text)
        return CLI_EXIT_FAIL;
    fwrite(text, 1, len, stdout);
    free(text);
    return CLI_EXIT_OK;
}
