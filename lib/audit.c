/*
 * audit.c — the audit log writer (VRAMGUARD_AUDIT; schema in
 * docs/audit-log.md): one JSON object per line, appended by many threads
 * and many processes to one file, never torn.
 *
 * Each thread formats its events into its own buffer and writes whole lines
 * with one write(2) on an O_APPEND descriptor when the buffer is full, when
 * the thread ends, at exit, before fork and on fatal signals. A buffer is a
 * malloc'd block adopted by a thread at its first event and kept in a
 * registry for the life of the process (a finished thread's buffer goes to
 * the next new thread), so exit and fork can flush every thread's buffer
 * and no pointer into the registry ever dangles.
 *
 * Ownership of a buffer is one atomic word: its thread takes it (OWNER)
 * around each append, a flusher in another thread (exit, fork) takes it
 * (FLUSHER) around a write. Neither holds it across anything but a
 * write(2), so the hot path never waits in practice.
 *
 * Cost with the log on: one clock read (vDSO), ~200 bytes formatted by
 * hand (no snprintf), one CAS and one store; a write(2) per BUF_BYTES.
 * With the log off nothing here runs: hooks test vg__diag_flags.
 *
 * A crash no handler sees (SIGKILL, power loss) loses each thread's
 * unflushed buffer: at most BUF_BYTES of whole lines per thread, never a
 * half line. A fatal signal writes the signalled thread's buffer only
 * (other threads' buffers cannot be touched safely from a handler).
 */
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "vg_internal.h"

_Atomic unsigned vg__diag_flags;

#define BUF_BYTES 16384u /* per thread: flushed when an event might not fit */
#define HOT_LINE 768u    /* bound of one hot event line without `site` */
#define FRAME_BYTES 24u  /* bound of one `site` entry: "0x...", */
#define CMD_BYTES 1024u  /* `cmd` on `start`, before escaping */
#define SCHEMA_VERSION 1

enum { FREE = 0, OWNER = 1, FLUSHER = 2 };
enum { EV_ALLOC, EV_FREE, EV_REFUSE, EV_BAD, EV_OTHER, EV_KINDS };

typedef struct tbuf {
    _Atomic int busy;         /* FREE, OWNER or FLUSHER */
    uint32_t len;             /* bytes of whole lines in data */
    bool adopted;             /* a live thread owns it */
    struct tbuf *next;        /* registry; never unlinked */
    uint64_t count[EV_KINDS]; /* events written by its threads */
    /* What every line of this thread repeats, formatted once: the seconds
     * of `ts`, and ',"pid":P,"tid":T' (redone when the thread or the
     * process changes). */
    int64_t sec;
    uint32_t id_pid, id_tid;
    uint8_t sec_len, id_len;
    char sec_text[24], id_text[48];
    char data[BUF_BYTES];
} tbuf_t;

static int log_fd = -1;
static char log_path[4096];
static _Atomic int direct;      /* after `exit`: each line written at once */
static _Atomic int exit_done;
static _Atomic int exit_armed; /* diag_exit is registered with atexit */
static _Atomic uint32_t cached_pid;
static _Atomic int write_failed;
static vg__bad_ptr_policy_t policy_now;

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static tbuf_t *reg_head;
static pthread_key_t buf_key;
/* Initial-exec: one %fs-relative load (no __tls_get_addr) on every event,
 * and safe in a signal handler. 8 bytes of static TLS, which glibc keeps
 * spare even for a library loaded with dlopen. */
static _Thread_local tbuf_t *my_buf __attribute__((tls_model("initial-exec")));

/* ------------------------------------------------------ formatting */

/* A line being built: puts stop at `end` and mark the line cut, which the
 * writer then drops (never half a line in the file). */
typedef struct out {
    char *p, *end;
    bool cut;
} out_t;

static inline void put_raw(out_t *o, const char *s, size_t n)
{
    if (vg__unlikely((size_t)(o->end - o->p) < n)) {
        o->cut = true;
        return;
    }
    memcpy(o->p, s, n);
    o->p += n;
}

#define PUT_LIT(o, lit) put_raw((o), (lit), sizeof(lit) - 1)

static const char digit_pairs[] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

static const uint64_t pow10[20] = {
    1ull, 10ull, 100ull, 1000ull, 10000ull, 100000ull, 1000000ull, 10000000ull,
    100000000ull, 1000000000ull, 10000000000ull, 100000000000ull, 1000000000000ull,
    10000000000000ull, 100000000000000ull, 1000000000000000ull, 10000000000000000ull,
    100000000000000000ull, 1000000000000000000ull, 10000000000000000000ull};

/* Decimal digits of v: log10 from the bit length, corrected once. */
static inline unsigned dec_len(uint64_t v)
{
    unsigned bits = 64u - (unsigned)__builtin_clzll(v | 1);
    unsigned t = (bits * 1233u) >> 12; /* 1233/4096 ~ log10(2); t <= 19 */
    unsigned n = t + (v >= pow10[t]);
    return n ? n : 1; /* 0 has one digit */
}

/* Decimal, written in place from the last digit, two at a time. */
static void put_u64(out_t *o, uint64_t v)
{
    if (vg__unlikely(o->end - o->p < 20)) {
        o->cut = true;
        return;
    }
    unsigned n = dec_len(v);
    char *q = o->p + n;
    while (v >= 100) {
        unsigned r = (unsigned)(v % 100);
        v /= 100;
        q -= 2;
        memcpy(q, &digit_pairs[r * 2], 2);
    }
    if (v >= 10) {
        q -= 2;
        memcpy(q, &digit_pairs[v * 2], 2);
    } else {
        *--q = (char)('0' + v);
    }
    o->p += n;
}

static void put_i64(out_t *o, int64_t v)
{
    if (v < 0) {
        PUT_LIT(o, "-");
        put_u64(o, (uint64_t)0 - (uint64_t)v);
    } else {
        put_u64(o, (uint64_t)v);
    }
}

/* "0x1f00" (quoted): lower-case hex, no leading zeros, written in place. */
static void put_hex(out_t *o, uint64_t v)
{
    static const char hex[] = "0123456789abcdef";
    if (vg__unlikely(o->end - o->p < 20)) {
        o->cut = true;
        return;
    }
    unsigned n = (64u - (unsigned)__builtin_clzll(v | 1) + 3u) / 4u;
    char *q = o->p + 3 + n;
    memcpy(o->p, "\"0x", 3);
    *q = '"';
    do {
        *--q = hex[v & 15];
        v >>= 4;
    } while (v);
    o->p += n + 4;
}

/* Our own identifiers (entry points, kinds, levels, classes): printable
 * ASCII with nothing to escape, so copied as they are. */
static void put_ident(out_t *o, const char *s)
{
    char *p = o->p, *end = o->end - 1;
    if (vg__unlikely(p >= end)) {
        o->cut = true;
        return;
    }
    *p++ = '"';
    while (*s && p < end) /* short: a byte loop beats strlen + memcpy */
        *p++ = *s++;
    if (vg__unlikely(*s || p >= end)) {
        o->cut = true;
        return;
    }
    *p++ = '"';
    o->p = p;
}

/* Length of a valid UTF-8 sequence at s (at most n bytes), 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    size_t len = s[0] >= 0xf0 && s[0] <= 0xf4 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc2 ? 2 : 0;
    if (s[0] >= 0xf5 || len == 0 || len > n)
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    return len;
}

/* A JSON string of n bytes: quotes, backslashes and control bytes escaped,
 * invalid UTF-8 replaced with U+FFFD. */
static void put_json(out_t *o, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    PUT_LIT(o, "\"");
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            put_raw(o, e, 2);
            i++;
        } else if (c < 0x20 || c == 0x7f) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            put_raw(o, e, 6);
            i++;
        } else if (c < 0x80) {
            put_raw(o, (const char *)&s[i], 1);
            i++;
        } else {
            size_t len = utf8_len((const unsigned char *)s + i, n - i);
            if (len)
                put_raw(o, s + i, len);
            else
                PUT_LIT(o, "\\ufffd");
            i += len ? len : 1;
        }
    }
    PUT_LIT(o, "\"");
}

static void put_str(out_t *o, const char *s) { put_json(o, s, strlen(s)); }

/* Nanoseconds, nine digits with leading zeros. */
static void put_ns9(out_t *o, uint32_t ns)
{
    if (vg__unlikely(o->end - o->p < 9)) {
        o->cut = true;
        return;
    }
    char *q = o->p + 9;
    for (int i = 0; i < 4; i++) {
        q -= 2;
        memcpy(q, &digit_pairs[(ns % 100) * 2], 2);
        ns /= 100;
    }
    *--q = (char)('0' + ns);
    o->p += 9;
}

/* Refreshes the thread's cached text (seconds, pid and tid). */
__attribute__((noinline)) static void ident_refresh(tbuf_t *b, int64_t sec, uint32_t pid,
                                                    uint32_t tid)
{
    out_t t = {b->sec_text, b->sec_text + sizeof b->sec_text, false};
    put_u64(&t, (uint64_t)sec);
    b->sec_len = (uint8_t)(t.p - b->sec_text);
    b->sec = sec;
    t = (out_t){b->id_text, b->id_text + sizeof b->id_text, false};
    PUT_LIT(&t, ",\"pid\":");
    put_u64(&t, pid);
    PUT_LIT(&t, ",\"tid\":");
    put_u64(&t, tid);
    b->id_len = (uint8_t)(t.p - b->id_text);
    b->id_pid = pid;
    b->id_tid = tid;
}

/* {"v":1,"ts":...,"pid":...,"tid":...,"op":"<op>". With the thread's
 * buffer b (may be NULL), the repeated parts are copied, not formatted. */
static void put_head(out_t *o, tbuf_t *b, const char *op)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts); /* vDSO: no syscall */
    uint32_t pid = atomic_load_explicit(&cached_pid, memory_order_relaxed), tid = vg__tid();
    tbuf_t scratch;
    if (!b) {
        b = &scratch;
        b->sec = -1;
    }
    if (vg__unlikely(b->sec != ts.tv_sec || b->id_tid != tid || b->id_pid != pid))
        ident_refresh(b, ts.tv_sec, pid, tid);
    PUT_LIT(o, "{\"v\":1,\"ts\":");
    put_raw(o, b->sec_text, b->sec_len);
    put_ns9(o, (uint32_t)ts.tv_nsec);
    put_raw(o, b->id_text, b->id_len);
    PUT_LIT(o, ",\"op\":");
    put_ident(o, op);
}

/* ,"used":N,"budget":N for a device (-1: no budget). */
static void put_use(out_t *o, int device)
{
    const vg__budget_t *b = vg__engine_budget(device);
    uint64_t used = b ? atomic_load_explicit(&b->used, memory_order_relaxed) : 0;
    uint64_t limit = b ? atomic_load_explicit(&b->limit, memory_order_relaxed) : VG__UNLIMITED;
    PUT_LIT(o, ",\"used\":");
    put_u64(o, used);
    PUT_LIT(o, ",\"budget\":");
    put_i64(o, limit == VG__UNLIMITED ? -1 : (int64_t)limit);
}

static void put_site(out_t *o, const uintptr_t *frames, int n)
{
    if (n <= 0)
        return;
    PUT_LIT(o, ",\"site\":[");
    for (int i = 0; i < n; i++) {
        if (i)
            PUT_LIT(o, ",");
        put_hex(o, frames[i]);
    }
    PUT_LIT(o, "]");
}

/* ,"key":value with a literal key (its length known when compiled). */
#define PUT_KV_U64(o, key, v) (PUT_LIT((o), ",\"" key "\":"), put_u64((o), (v)))
#define PUT_KV_ID(o, key, v) (PUT_LIT((o), ",\"" key "\":"), put_ident((o), (v)))
#define PUT_KV_STR(o, key, v) (PUT_LIT((o), ",\"" key "\":"), put_str((o), (v)))

/* --------------------------------------------------------- writing */

__attribute__((noinline, cold)) static void write_error(int err)
{
    if (!atomic_exchange_explicit(&write_failed, 1, memory_order_relaxed))
        vg__log("audit log '%s': write failed: %s; later events may be lost",
                log_path, strerror(err));
}

/* One write(2) of whole lines (a short write, which a regular file gives
 * only on a full disk, continues where it stopped). Keeps errno. */
static void write_all(const char *p, size_t n)
{
    int saved = errno;
    while (n > 0) {
        ssize_t w = write(log_fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            write_error(w < 0 ? errno : ENOSPC);
            break;
        }
        p += w;
        n -= (size_t)w;
    }
    errno = saved;
}

static void buf_flush_held(tbuf_t *b)
{
    if (b->len)
        write_all(b->data, b->len);
    b->len = 0;
}

static void buf_hold(tbuf_t *b, int who)
{
    int expect = FREE;
    while (!atomic_compare_exchange_weak_explicit(&b->busy, &expect, who, memory_order_acquire,
                                                  memory_order_relaxed)) {
        expect = FREE;
        sched_yield(); /* a flusher is writing it out: rare */
    }
}

static void buf_drop(tbuf_t *b) { atomic_store_explicit(&b->busy, FREE, memory_order_release); }

/* Thread exit (pthread key destructor): write the buffer out and hand it
 * to the next new thread. */
static void buf_release(void *p)
{
    tbuf_t *b = p;
    buf_hold(b, OWNER);
    buf_flush_held(b);
    buf_drop(b);
    pthread_mutex_lock(&reg_lock);
    b->adopted = false;
    pthread_mutex_unlock(&reg_lock);
    my_buf = NULL;
}

/* The thread's first event: a finished thread's buffer, or a new one. */
__attribute__((noinline, cold)) static tbuf_t *buf_adopt(void)
{
    pthread_mutex_lock(&reg_lock);
    tbuf_t *b = reg_head;
    while (b && b->adopted)
        b = b->next;
    if (!b && (b = calloc(1, sizeof *b)) != NULL) {
        b->next = reg_head;
        reg_head = b;
    }
    if (b)
        b->adopted = true;
    pthread_mutex_unlock(&reg_lock);
    if (b) {
        my_buf = b;
        pthread_setspecific(buf_key, b);
    }
    return b;
}

/* The calling thread's buffer, held, with room for `need` more bytes.
 * NULL when no memory could be had (the event is dropped). */
static tbuf_t *line_begin(size_t need, out_t *o)
{
    tbuf_t *b = my_buf;
    if (vg__unlikely(!b) && !(b = buf_adopt()))
        return NULL;
    buf_hold(b, OWNER);
    if (vg__unlikely(b->len + need > BUF_BYTES))
        buf_flush_held(b);
    *o = (out_t){b->data + b->len, b->data + BUF_BYTES, false};
    return b;
}

static void line_end(tbuf_t *b, out_t *o, int ev)
{
    PUT_LIT(o, "}\n");
    if (vg__likely(!o->cut)) {
        b->len = (uint32_t)(o->p - b->data);
        b->count[ev]++;
    }
    if (vg__unlikely(atomic_load_explicit(&direct, memory_order_relaxed)))
        buf_flush_held(b);
    buf_drop(b);
}

static inline bool log_open(void) { return vg__diag_has(VG__DIAG_LOG); }

/* A line too long for a thread buffer (start, exit), built in heap
 * memory: the thread's buffer goes first so its lines stay in order. */
static void write_big(const out_t *o, const char *start)
{
    if (o->cut)
        return;
    tbuf_t *b = my_buf;
    if (b) {
        buf_hold(b, OWNER);
        buf_flush_held(b);
        buf_drop(b);
    }
    write_all(start, (size_t)(o->p - start));
}

/* ---------------------------------------------------------- events */

static const char *kind_label(int kind) { return vg_kind_name(kind); }

/* The CUresult a refusal gives the program (shim/shim.c's mapping of the
 * two statuses a reservation refuses with). */
static void event_alloc(const vg__ticket_t *t, const vg__alloc_t *a, const uintptr_t *frames,
                        int n)
{
    out_t o;
    tbuf_t *b = line_begin(HOT_LINE + FRAME_BYTES * (size_t)n, &o);
    if (!b)
        return;
    put_head(&o, b, "alloc");
    PUT_KV_U64(&o, "dev", (uint64_t)t->device);
    PUT_KV_ID(&o, "api", t->api);
    PUT_KV_ID(&o, "kind", kind_label(t->kind));
    PUT_LIT(&o, ",\"ptr\":");
    put_hex(&o, a->ptr & ~VG__KEY_HANDLE);
    PUT_KV_U64(&o, "size", a->size);
    PUT_LIT(&o, ",\"rc\":0");
    put_use(&o, t->device);
    PUT_KV_U64(&o, "seq", a->seq);
    put_site(&o, frames, n);
    line_end(b, &o, EV_ALLOC);
}

void vg__diag_commit(const vg__ticket_t *t, vg__alloc_t *a)
{
    uintptr_t frames[VG__MAX_FRAMES];
    int n = 0;
    if (vg__diag_has(VG__DIAG_VERIFY))
        vg__badptr_verify(t, a);
    if (vg__diag_has(VG__DIAG_SITES)) {
        n = vg__site_capture(frames);
        a->site = vg__site_intern(frames, n);
    }
    if (log_open())
        event_alloc(t, a, frames, n);
}

void vg__audit_free(const vg__alloc_t *a, const char *api, CUresult rc)
{
    out_t o;
    if (!log_open())
        return;
    tbuf_t *b = line_begin(HOT_LINE, &o);
    if (!b)
        return;
    put_head(&o, b, "free");
    PUT_KV_U64(&o, "dev", (uint64_t)a->device);
    PUT_KV_ID(&o, "api", api);
    PUT_KV_ID(&o, "kind", kind_label(a->kind));
    PUT_LIT(&o, ",\"ptr\":");
    put_hex(&o, a->ptr & ~VG__KEY_HANDLE);
    PUT_KV_U64(&o, "size", a->size);
    PUT_KV_U64(&o, "rc", (uint64_t)rc);
    put_use(&o, a->device);
    PUT_KV_U64(&o, "seq", a->seq);
    line_end(b, &o, EV_FREE);
}

void vg__audit_refuse(const vg__ticket_t *t, int status)
{
    uintptr_t frames[VG__MAX_FRAMES];
    out_t o;
    if (!log_open())
        return;
    int n = vg__site_capture(frames);
    tbuf_t *b = line_begin(HOT_LINE + FRAME_BYTES * (size_t)n, &o);
    if (!b)
        return;
    put_head(&o, b, "refuse");
    PUT_KV_U64(&o, "dev", (uint64_t)t->device);
    PUT_KV_ID(&o, "api", t->api);
    PUT_KV_ID(&o, "kind", kind_label(t->kind));
    PUT_KV_U64(&o, "size", t->bytes);
    PUT_KV_U64(&o, "rc", (uint64_t)vg__cu_status(status));
    put_use(&o, t->device);
    put_site(&o, frames, n);
    line_end(b, &o, EV_REFUSE);
}

static const char *const policy_words[] = {"warn", "reject", "abort"};

static const char *policy_word(vg__bad_ptr_policy_t p)
{
    return (unsigned)p < 3 ? policy_words[p] : "warn";
}

void vg__audit_bad_ptr(const char *api, uint64_t key, const vg_ptr_info_t *info,
                       vg__bad_ptr_policy_t policy, const CUresult *rc)
{
    uintptr_t frames[VG__MAX_FRAMES];
    out_t o;
    if (!log_open())
        return;
    int n = vg__site_capture(frames);
    tbuf_t *b = line_begin(HOT_LINE + FRAME_BYTES * (size_t)n, &o);
    if (!b)
        return;
    put_head(&o, b, "bad_ptr");
    PUT_KV_ID(&o, "api", api);
    PUT_LIT(&o, ",\"ptr\":");
    put_hex(&o, key & ~VG__KEY_HANDLE);
    PUT_KV_ID(&o, "class", info ? vg_ptr_class_name(info->cls) : "handle");
    if (info && info->cls == VG_PTR_INTERIOR)
        PUT_KV_U64(&o, "offset", info->offset);
    if (info && info->cls == VG_PTR_FAKE)
        PUT_KV_STR(&o, "pattern", info->pattern);
    PUT_KV_ID(&o, "policy", policy_word(policy));
    if (rc)
        PUT_KV_U64(&o, "rc", (uint64_t)*rc);
    put_site(&o, frames, n);
    line_end(b, &o, EV_BAD);
}

void vg__audit_leak(int device, uint64_t count, uint64_t bytes, uint32_t site)
{
    uintptr_t frames[VG__MAX_FRAMES];
    out_t o;
    if (!log_open())
        return;
    int n = vg__site_frames(site, frames);
    tbuf_t *b = line_begin(HOT_LINE + FRAME_BYTES * (size_t)n, &o);
    if (!b)
        return;
    put_head(&o, b, "leak");
    PUT_KV_U64(&o, "dev", (uint64_t)device);
    PUT_KV_U64(&o, "count", count);
    PUT_KV_U64(&o, "bytes", bytes);
    put_site(&o, frames, n);
    line_end(b, &o, EV_OTHER);
}

/* A budget level hook (budget.c runs it on the thread that moved use). */
static void on_level(void *owner, vg_pressure_t from, vg_pressure_t to, void *user)
{
    (void)owner;
    int device = (int)(intptr_t)user;
    out_t o;
    tbuf_t *b = line_begin(HOT_LINE, &o);
    if (!b)
        return;
    put_head(&o, b, "pressure");
    PUT_KV_U64(&o, "dev", (uint64_t)device);
    PUT_KV_ID(&o, "from", vg_pressure_name(from));
    PUT_KV_ID(&o, "to", vg_pressure_name(to));
    put_use(&o, device);
    line_end(b, &o, EV_OTHER);
}

void vg__audit_watch(vg__budget_t *b, int device)
{
    if (log_open())
        vg__budget_on_level(b, on_level, (void *)(intptr_t)device);
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
    if (m->n == 0 && (!path || !path[0])) { /* the program itself */
        ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
        exe[k > 0 ? k : 0] = '\0';
        path = exe;
    }
    if (!path || !path[0] || strstr(path, "linux-vdso"))
        return 0;
    if (m->n++)
        PUT_LIT(m->o, ",");
    PUT_LIT(m->o, "{\"base\":");
    put_hex(m->o, (uint64_t)info->dlpi_addr);
    PUT_LIT(m->o, ",\"path\":");
    put_str(m->o, path);
    PUT_LIT(m->o, "}");
    return 0;
}

static void put_modules(out_t *o)
{
    struct modules_ctx m = {o, 0};
    PUT_LIT(o, ",\"modules\":[");
    dl_iterate_phdr(put_module, &m);
    PUT_LIT(o, "]");
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
    put_head(&g.o, NULL, "start");
    PUT_LIT(&g.o, ",\"cmd\":");
    put_json(&g.o, cmd, n);
    PUT_KV_STR(&g.o, "budget_spec", budget_text());
    PUT_KV_STR(&g.o, "policy", policy_word(policy_now));
    put_modules(&g.o);
    PUT_LIT(&g.o, "}\n");
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

/* Events written so far by every thread of this process. */
static void sum_counts(uint64_t out[EV_KINDS])
{
    memset(out, 0, sizeof(uint64_t) * EV_KINDS);
    pthread_mutex_lock(&reg_lock);
    for (tbuf_t *b = reg_head; b; b = b->next) {
        buf_hold(b, FLUSHER);
        for (int i = 0; i < EV_KINDS; i++)
            out[i] += b->count[i];
        buf_drop(b);
    }
    pthread_mutex_unlock(&reg_lock);
}

static void event_exit(void)
{
    uint64_t c[EV_KINDS];
    struct live_tally live = {0, 0};
    big_t g;
    if (!big_init(&g, 1u << 20))
        return;
    sum_counts(c);
    vg__ledger_foreach(VG__ANY_OWNER, tally_live, &live);
    put_head(&g.o, NULL, "exit");
    PUT_KV_U64(&g.o, "allocs", c[EV_ALLOC]);
    PUT_KV_U64(&g.o, "frees", c[EV_FREE]);
    PUT_KV_U64(&g.o, "refusals", c[EV_REFUSE]);
    PUT_KV_U64(&g.o, "bad_ptrs", c[EV_BAD]);
    PUT_KV_U64(&g.o, "live", live.count);
    PUT_KV_U64(&g.o, "live_bytes", live.bytes);
    put_modules(&g.o);
    PUT_LIT(&g.o, "}\n");
    write_big(&g.o, g.mem);
    free(g.mem);
}

void vg__audit_flush_all(void)
{
    if (log_fd < 0)
        return;
    pthread_mutex_lock(&reg_lock);
    for (tbuf_t *b = reg_head; b; b = b->next) {
        buf_hold(b, FLUSHER);
        buf_flush_held(b);
        buf_drop(b);
    }
    pthread_mutex_unlock(&reg_lock);
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
    atomic_store_explicit(&direct, 1, memory_order_relaxed);
    vg__audit_flush_all();
}

__attribute__((destructor)) static void diag_fini(void)
{
    if (atomic_load_explicit(&exit_armed, memory_order_relaxed))
        diag_exit();
}

/* ------------------------------------------------------------- fork */

static void fork_prepare(void)
{
    pthread_mutex_lock(&reg_lock);
    for (tbuf_t *b = reg_head; b; b = b->next) {
        buf_hold(b, FLUSHER);
        buf_flush_held(b);
    }
}

static void fork_parent(void)
{
    for (tbuf_t *b = reg_head; b; b = b->next)
        buf_drop(b);
    pthread_mutex_unlock(&reg_lock);
}

/* The child has one thread: the others' buffers (flushed in prepare) are
 * free for its new threads, and its own counts start at zero. */
static void fork_child(void)
{
    for (tbuf_t *b = reg_head; b; b = b->next) {
        memset(b->count, 0, sizeof b->count);
        b->adopted = b == my_buf;
        buf_drop(b);
    }
    pthread_mutex_unlock(&reg_lock);
    atomic_store_explicit(&cached_pid, (uint32_t)getpid(), memory_order_relaxed);
    atomic_store_explicit(&exit_done, 0, memory_order_relaxed);
    event_start();
}

/* --------------------------------------------------- fatal signals */

static const int fatal_signals[] = {SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL, SIGTERM, SIGINT};
#define FATAL_COUNT (sizeof fatal_signals / sizeof fatal_signals[0])
static struct sigaction previous[FATAL_COUNT];

/* Hands the signal to whoever had it before; the default action is
 * re-raised (delivered when this handler returns). */
static void chain(size_t i, int sig, siginfo_t *si, void *uc)
{
    const struct sigaction *p = &previous[i];
    if ((p->sa_flags & SA_SIGINFO) && p->sa_sigaction) {
        p->sa_sigaction(sig, si, uc);
    } else if (p->sa_handler == SIG_DFL) {
        struct sigaction dfl = {.sa_handler = SIG_DFL};
        sigemptyset(&dfl.sa_mask);
        sigaction(sig, &dfl, NULL);
        raise(sig);
    } else if (p->sa_handler != SIG_IGN) {
        p->sa_handler(sig);
    }
}

/* Async-signal-safe: write(2) of this thread's own buffer only. When the
 * signal interrupted this thread's own append, the lines before it are
 * whole (len moves only after a line is complete) and are written; if the
 * process then survives, they may be written twice. */
static void on_fatal(int sig, siginfo_t *si, void *uc)
{
    int saved = errno;
    tbuf_t *b = my_buf;
    int expect = FREE;
    bool held = b && atomic_compare_exchange_strong_explicit(
                         &b->busy, &expect, FLUSHER, memory_order_acquire, memory_order_relaxed);
    if (b && (held || expect == OWNER) && b->len) {
        ssize_t w = write(log_fd, b->data, b->len); /* no stdio, no malloc */
        (void)w;
        if (held)
            b->len = 0;
    }
    if (held)
        buf_drop(b);
    for (size_t i = 0; i < FATAL_COUNT; i++)
        if (fatal_signals[i] == sig)
            chain(i, sig, si, uc);
    errno = saved;
}

/* Signals the program ignores stay ignored (an ignored signal is inherited
 * across exec; a caught one is not). */
static void install_signal_flush(void)
{
    struct sigaction sa = {.sa_sigaction = on_fatal,
                           .sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART};
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < FATAL_COUNT; i++) {
        if (sigaction(fatal_signals[i], NULL, &previous[i]) != 0 ||
            (!(previous[i].sa_flags & SA_SIGINFO) && previous[i].sa_handler == SIG_IGN))
            continue;
        sigaction(fatal_signals[i], &sa, NULL);
    }
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

static int open_log(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return open_failed(path, errno, err, errlen);
    struct stat st;
    if (fstat(fd, &st) != 0 || !(S_ISREG(st.st_mode) || S_ISFIFO(st.st_mode) || S_ISCHR(st.st_mode))) {
        close(fd);
        return open_failed(path, EISDIR, err, errlen);
    }
    log_fd = fd;
    snprintf(log_path, sizeof log_path, "%s", path);
    return VG_OK;
}

int vg__diag_start(const vg__settings_t *s, char *err, size_t errlen)
{
    unsigned flags = 0;
    policy_now = s->on_bad_pointer;
    atomic_store_explicit(&cached_pid, (uint32_t)getpid(), memory_order_relaxed);
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
    if (flags & VG__DIAG_LOG) {
        pthread_key_create(&buf_key, buf_release);
        pthread_atfork(fork_prepare, fork_parent, fork_child);
        install_signal_flush();
    }
    if ((flags & VG__DIAG_LOG) || s->leaks) {
        atexit(diag_exit);
        atomic_store_explicit(&exit_armed, 1, memory_order_relaxed);
    }
    atomic_store_explicit(&vg__diag_flags, flags, memory_order_release);
    if (flags & VG__DIAG_LOG)
        event_start();
    return VG_OK;
}
