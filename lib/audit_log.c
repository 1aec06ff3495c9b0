/*
 * audit_log.c — the audit log's life: opening VRAMGUARD_AUDIT and starting
 * diagnostics (vg__diag_start), the long `start` and `exit` lines, the exit
 * handler (leak report, `exit`, every buffer written out), and a forked
 * child's restart. Slow paths only; the events are in audit.c and the
 * per-thread buffers in audit_buf.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vg_audit.h"

#define CMD_BYTES 1024u /* `cmd` on `start`, before escaping */

typedef vg__aline_t out_t;

static _Atomic int exit_done;
static _Atomic int exit_armed; /* diag_exit is registered with atexit */
static vg__bad_ptr_policy_t policy_now;

static inline bool log_open(void) { return vg__diag_has(VG__DIAG_LOG); }

static void put_str(out_t *o, const char *s) { vg__aline_json(o, s, strlen(s)); }

/* A line too long for a thread buffer (start, exit), built in heap
 * memory: the thread's buffer goes first so its lines stay in order. */
static void write_big(const out_t *o, const char *start)
{
    if (o->cut)
        return;
    vg__abuf_t *b = vg__abuf_mine;
    if (b) {
        vg__abuf_hold(b, VG__ABUF_OWNER);
        vg__abuf_flush_held(b);
        vg__abuf_drop(b);
    }
    vg__abuf_write(start, (size_t)(o->p - start));
}

/* ---------------------------------------------- start, exit, modules */

/* Growable heap text for the long lines (start, exit): slow paths only. */
typedef struct big {
    char *mem;
    size_t cap;
    out_t o;
} big_t;

static bool big_init(big_t *g, size_t cap)
{
    g->mem = malloc(cap);
    g->cap = cap;
    g->o = (out_t){g->mem, g->mem ? g->mem + cap : NULL, g->mem == NULL};
    return g->mem != NULL;
}

struct modules_ctx {
    out_t *o;
    int n;
};

static int put_module(struct dl_phdr_info *info, size_t size, void *ctx)
{
    (void)size;
    struct modules_ctx *m = ctx;
    char exe[4096];
    const char *path = info->dlpi_name;
    if (m->n == 0 && (!path || !path[0])) /* the program itself: its path, not " (deleted)" */
        path = vg__self_exe(exe, sizeof exe) == VG_OK ? exe : "";
    if (!path || !path[0] || strstr(path, "linux-vdso"))
        return 0;
    if (m->n++)
        VG__PUT_LIT(m->o, ",");
    VG__PUT_LIT(m->o, "{\"base\":");
    vg__aline_hex(m->o, (uint64_t)info->dlpi_addr);
    VG__PUT_LIT(m->o, ",\"path\":");
    put_str(m->o, path);
    VG__PUT_LIT(m->o, "}");
    return 0;
}

static void put_modules(out_t *o)
{
    struct modules_ctx m = {o, 0};
    VG__PUT_LIT(o, ",\"modules\":[");
    dl_iterate_phdr(put_module, &m);
    VG__PUT_LIT(o, "]");
}

/* The command line, space-joined, at most CMD_BYTES (cut at a character
 * boundary). */
static size_t read_cmdline(char *buf, size_t cap)
{
    int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, cap);
    close(fd);
    if (n <= 0)
        return 0;
    size_t len = (size_t)n;
    while (len > 0 && buf[len - 1] == '\0')
        len--;
    if ((size_t)n == cap)
        while (len > 0 && ((unsigned char)buf[len] & 0xc0) == 0x80)
            len--; /* do not end inside a character */
    for (size_t i = 0; i < len; i++)
        if (buf[i] == '\0')
            buf[i] = ' ';
    return len;
}

static const char *budget_text(void)
{
    const char *t = getenv("VRAMGUARD_BUDGET");
    if (!t)
        t = getenv("CUDA_DEVICE_MEMORY_LIMIT");
    return t ? t : "";
}

static void event_start(void)
{
    char cmd[CMD_BYTES];
    big_t g;
    if (!big_init(&g, 1u << 20))
        return;
    size_t n = read_cmdline(cmd, sizeof cmd);
    vg__aline_head(&g.o, "start");
    VG__PUT_LIT(&g.o, ",\"cmd\":");
    vg__aline_json(&g.o, cmd, n);
    VG__PUT_KV(&g.o, "budget_spec", put_str, budget_text());
    VG__PUT_KV(&g.o, "policy", put_str, vg__audit_policy_word(policy_now));
    put_modules(&g.o);
    VG__PUT_LIT(&g.o, "}\n");
    write_big(&g.o, g.mem);
    free(g.mem);
}

struct live_tally {
    uint64_t count, bytes;
};

static void tally_live(const vg__alloc_t *a, void *ctx)
{
    struct live_tally *t = ctx;
    t->count++;
    t->bytes += a->size;
}

static void event_exit(void)
{
    uint64_t c[VG__EV_KINDS];
    struct live_tally live = {0, 0};
    big_t g;
    if (!big_init(&g, 1u << 20))
        return;
    vg__abuf_sum_counts(c);
    vg__ledger_foreach(VG__ANY_OWNER, tally_live, &live);
    vg__aline_head(&g.o, "exit");
    VG__PUT_KV(&g.o, "allocs", vg__aline_u64, c[VG__EV_ALLOC]);
    VG__PUT_KV(&g.o, "frees", vg__aline_u64, c[VG__EV_FREE]);
    VG__PUT_KV(&g.o, "refusals", vg__aline_u64, c[VG__EV_REFUSE]);
    VG__PUT_KV(&g.o, "bad_ptrs", vg__aline_u64, c[VG__EV_BAD]);
    VG__PUT_KV(&g.o, "live", vg__aline_u64, live.count);
    VG__PUT_KV(&g.o, "live_bytes", vg__aline_u64, live.bytes);
    put_modules(&g.o);
    VG__PUT_LIT(&g.o, "}\n");
    write_big(&g.o, g.mem);
    free(g.mem);
}

/* atexit, and the destructor for a library unloaded before exit: the leak
 * report, `exit`, then every buffer. Later events (a runtime freeing
 * memory in its own exit handlers) are written one line at a time. */
static void diag_exit(void)
{
    if (atomic_exchange_explicit(&exit_done, 1, memory_order_acq_rel))
        return;
    const vg__settings_t *s = vg__engine_settings();
    if (log_open() || s->leaks)
        vg__leaks_report();
    if (!log_open())
        return;
    event_exit();
    vg__audit_go_direct();
    vg__audit_flush_all();
}

__attribute__((destructor)) static void diag_fini(void)
{
    if (atomic_load_explicit(&exit_armed, memory_order_relaxed))
        diag_exit();
}

void vg__audit_restart(void)
{
    vg__audit_pid_reset();
    atomic_store_explicit(&exit_done, 0, memory_order_relaxed);
    event_start();
}

/* ------------------------------------------------------------ start */

static int open_failed(const char *path, int err, char *msg, size_t len)
{
    const char *why = err == ELOOP ? "is a symbolic link (refused: the log is opened with "
                                     "O_NOFOLLOW)"
                                   : strerror(err);
    snprintf(msg, len, "VRAMGUARD_AUDIT='%.300s': cannot open the audit log: %s", path, why);
    return VG_ESETTING;
}

/* A log file someone else could write, or someone else owns, is refused:
 * root would otherwise append to any user's file, and anyone who may
 * write the file may forge or erase lines. Devices and pipes are the
 * caller's choice (/dev/stderr). */
static bool foreign_file(const struct stat *st, const char *path, char *err, size_t errlen)
{
    if (st->st_uid != geteuid())
        snprintf(err, errlen, "VRAMGUARD_AUDIT='%.300s': cannot open the audit log: it is owned "
                 "by uid %u, not by you (uid %u)", path, (unsigned)st->st_uid, (unsigned)geteuid());
    else if (st->st_mode & 022)
        snprintf(err, errlen, "VRAMGUARD_AUDIT='%.300s': cannot open the audit log: it is "
                 "writable by group or others (mode %04o)", path, (unsigned)(st->st_mode & 07777));
    else
        return false;
    return true;
}

int vg__audit_file_check(const struct stat *st, const char *path, char *err, size_t errlen)
{
    if (!(S_ISREG(st->st_mode) || S_ISFIFO(st->st_mode) || S_ISCHR(st->st_mode)))
        return open_failed(path, EISDIR, err, errlen);
    if (S_ISREG(st->st_mode) && foreign_file(st, path, err, errlen))
        return VG_ESETTING;
    return VG_OK;
}

static int open_log(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return open_failed(path, errno, err, errlen);
    struct stat st;
    int rc = fstat(fd, &st) != 0 ? open_failed(path, errno, err, errlen)
                                 : vg__audit_file_check(&st, path, err, errlen);
    if (rc != VG_OK) {
        close(fd);
        return rc;
    }
    vg__abuf_attach(fd, path);
    return VG_OK;
}

int vg__diag_start(const vg__settings_t *s, char *err, size_t errlen)
{
    unsigned flags = 0;
    policy_now = s->on_bad_pointer;
    vg__audit_pid_reset();
    if (s->audit[0]) {
        int rc = open_log(s->audit, err, errlen);
        if (rc != VG_OK)
            return rc;
        flags |= VG__DIAG_LOG;
    }
    vg__site_setup((flags & VG__DIAG_LOG) || s->leaks ? s->backtrace : 0);
    if (s->backtrace > 0 && ((flags & VG__DIAG_LOG) || s->leaks))
        flags |= VG__DIAG_SITES;
    if (s->verify)
        flags |= VG__DIAG_VERIFY;
    if (flags & VG__DIAG_LOG)
        vg__abuf_setup();
    if ((flags & VG__DIAG_LOG) || s->leaks) {
        atexit(diag_exit);
        atomic_store_explicit(&exit_armed, 1, memory_order_relaxed);
    }
    atomic_store_explicit(&vg__hot.diag_flags, flags, memory_order_release);
    if (flags & VG__DIAG_LOG)
        event_start();
    return VG_OK;
}
