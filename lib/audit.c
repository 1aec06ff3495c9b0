/*
 * audit.c — the audit log's events (VRAMGUARD_AUDIT; schema in
 * docs/audit-log.md): one JSON object per line, appended by many threads
 * and many processes to one file, never torn.
 *
 * Each thread formats its events into its own buffer (audit_buf.c), which
 * is written with one write(2) on an O_APPEND descriptor when it is full,
 * when its oldest line is VG__ABUF_STALE_NS old at the thread's next event,
 * when the thread ends, at exit and _exit, before fork and on fatal
 * signals. Opening the log, `start` and `exit` are in audit_log.c.
 *
 * Cost with the log on: one clock read (vDSO), ~200 bytes formatted by
 * hand (no snprintf), one CAS and one store; a write(2) per
 * VG__ABUF_BYTES. With the log off nothing here runs: hooks test
 * vg__hot.diag_flags.
 *
 * A crash no handler sees (SIGKILL, power loss) loses each thread's
 * unflushed buffer: at most VG__ABUF_BYTES of whole lines per thread, never
 * a half line, and (but for its last event) none older than
 * VG__ABUF_STALE_NS.
 */
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vg_audit.h"
#include "vg_shared.h"


#define BUF_BYTES VG__ABUF_BYTES
#define HOT_LINE 768u    /* bound of one hot event line without `site` */
#define FRAME_BYTES 24u  /* bound of one `site` entry: "0x...", */
#define SCHEMA_VERSION 1

enum { OWNER = VG__ABUF_OWNER };
enum {
    EV_ALLOC = VG__EV_ALLOC,
    EV_FREE = VG__EV_FREE,
    EV_REFUSE = VG__EV_REFUSE,
    EV_BAD = VG__EV_BAD,
    EV_OTHER = VG__EV_OTHER,
};

typedef vg__abuf_t tbuf_t;

static _Atomic int direct;      /* after `exit`: each line written at once */
static _Atomic uint32_t cached_pid;

/* ------------------------------------------------------ formatting */

/* A line being built (vg__aline_t): puts stop at `end` and mark the line
 * cut, which the writer then drops (never half a line in the file). */
typedef vg__aline_t out_t;

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
        VG__PUT_LIT(o, "-");
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
    VG__PUT_LIT(o, "\"");
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            vg__aline_put(o, e, 2);
            i++;
        } else if (c < 0x20 || c == 0x7f) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            vg__aline_put(o, e, 6);
            i++;
        } else if (c < 0x80) {
            vg__aline_put(o, (const char *)&s[i], 1);
            i++;
        } else {
            size_t len = utf8_len((const unsigned char *)s + i, n - i);
            if (len)
                vg__aline_put(o, s + i, len);
            else
                VG__PUT_LIT(o, "\\ufffd");
            i += len ? len : 1;
        }
    }
    VG__PUT_LIT(o, "\"");
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
    VG__PUT_LIT(&t, ",\"pid\":");
    put_u64(&t, pid);
    VG__PUT_LIT(&t, ",\"tid\":");
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
    b->line_ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    VG__PUT_LIT(o, "{\"v\":1,\"ts\":");
    vg__aline_put(o, b->sec_text, b->sec_len);
    put_ns9(o, (uint32_t)ts.tv_nsec);
    vg__aline_put(o, b->id_text, b->id_len);
    VG__PUT_LIT(o, ",\"op\":");
    put_ident(o, op);
}

/* ,"used":N,"budget":N for a device (-1: no budget). `used` is this
 * process's own: under a shared budget the region's total is the sum of its
 * processes' (a reader adds them up), not what any one line says. */
static void put_use(out_t *o, int device)
{
    const vg__budget_t *b = vg__engine_budget(device);
    uint64_t used = !b ? 0
                    : vg__unlikely(b->shared) ? vg__shared_self_used(b)
                                              : atomic_load_explicit(&b->used, memory_order_relaxed);
    uint64_t limit = b ? atomic_load_explicit(&b->limit, memory_order_relaxed) : VG__UNLIMITED;
    VG__PUT_LIT(o, ",\"used\":");
    put_u64(o, used);
    VG__PUT_LIT(o, ",\"budget\":");
    put_i64(o, limit == VG__UNLIMITED ? -1 : (int64_t)limit);
}

static void put_site(out_t *o, const uintptr_t *frames, int n)
{
    if (n <= 0)
        return;
    VG__PUT_LIT(o, ",\"site\":[");
    for (int i = 0; i < n; i++) {
        if (i)
            VG__PUT_LIT(o, ",");
        put_hex(o, frames[i]);
    }
    VG__PUT_LIT(o, "]");
}

/* ,"key":value with a literal key (its length known when compiled). */

/* --------------------------------------------------------- writing */

/* The calling thread's buffer, held, with room for `need` more bytes.
 * NULL when no memory could be had (the event is dropped). */
static tbuf_t *line_begin(size_t need, out_t *o)
{
    tbuf_t *b = vg__abuf_mine;
    if (vg__unlikely(!b) && !(b = vg__abuf_adopt()))
        return NULL;
    vg__abuf_hold(b, OWNER);
    if (vg__unlikely(b->len + need > BUF_BYTES))
        vg__abuf_flush_held(b);
    *o = (out_t){b->data + b->len, b->data + BUF_BYTES, false};
    return b;
}

static void line_end(tbuf_t *b, out_t *o, int ev)
{
    VG__PUT_LIT(o, "}\n");
    if (vg__likely(!o->cut)) {
        if (!b->len)
            b->first_ns = b->line_ns;
        b->len = (uint32_t)(o->p - b->data);
        b->count[ev]++;
    }
    /* Unsigned: a clock stepped back flushes too. */
    if (vg__unlikely((uint64_t)(b->line_ns - b->first_ns) >= VG__ABUF_STALE_NS ||
                     atomic_load_explicit(&direct, memory_order_relaxed)))
        vg__abuf_flush_held(b);
    vg__abuf_drop(b);
}

static inline bool log_open(void) { return vg__diag_has(VG__DIAG_LOG); }

/* ---------------------------------------------------------- events */

static const char *kind_label(int kind) { return vg_kind_name(kind); }

/* Starts an event line with room for `frames` call-site frames: NULL when
 * the line cannot be had (the log is closed, or no memory). */
static tbuf_t *event_begin(const char *op, int frames, out_t *o)
{
    tbuf_t *b = line_begin(HOT_LINE + FRAME_BYTES * (size_t)frames, o);
    if (b)
        put_head(o, b, op);
    return b;
}

static void event_alloc(const vg__ticket_t *t, const vg__alloc_t *a, const uintptr_t *frames,
                        int n)
{
    out_t o;
    tbuf_t *b = event_begin("alloc", n, &o);
    if (!b)
        return;
    VG__PUT_KV(&o, "dev", put_u64, (uint64_t)t->device);
    VG__PUT_KV(&o, "api", put_ident, t->api);
    VG__PUT_KV(&o, "kind", put_ident, kind_label(t->kind));
    VG__PUT_LIT(&o, ",\"ptr\":");
    put_hex(&o, a->ptr & ~VG__KEY_HANDLE);
    VG__PUT_KV(&o, "size", put_u64, a->size);
    VG__PUT_LIT(&o, ",\"rc\":0");
    put_use(&o, t->device);
    VG__PUT_KV(&o, "seq", put_u64, a->seq);
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
    VG__PUT_KV(&o, "dev", put_u64, (uint64_t)a->device);
    VG__PUT_KV(&o, "api", put_ident, api);
    VG__PUT_KV(&o, "kind", put_ident, kind_label(a->kind));
    VG__PUT_LIT(&o, ",\"ptr\":");
    put_hex(&o, a->ptr & ~VG__KEY_HANDLE);
    VG__PUT_KV(&o, "size", put_u64, a->size);
    VG__PUT_KV(&o, "rc", put_u64, (uint64_t)rc);
    put_use(&o, a->device);
    VG__PUT_KV(&o, "seq", put_u64, a->seq);
    line_end(b, &o, EV_FREE);
}

void vg__audit_refuse(const vg__ticket_t *t, int status)
{
    uintptr_t frames[VG__MAX_FRAMES];
    out_t o;
    if (!log_open())
        return;
    int n = vg__site_capture(frames);
    tbuf_t *b = event_begin("refuse", n, &o);
    if (!b)
        return;
    VG__PUT_KV(&o, "dev", put_u64, (uint64_t)t->device);
    VG__PUT_KV(&o, "api", put_ident, t->api);
    VG__PUT_KV(&o, "kind", put_ident, kind_label(t->kind));
    VG__PUT_KV(&o, "size", put_u64, t->bytes);
    VG__PUT_KV(&o, "rc", put_u64, (uint64_t)vg__cu_status(status));
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
    tbuf_t *b = event_begin("bad_ptr", n, &o);
    if (!b)
        return;
    VG__PUT_KV(&o, "api", put_ident, api);
    VG__PUT_LIT(&o, ",\"ptr\":");
    put_hex(&o, key & ~VG__KEY_HANDLE);
    VG__PUT_KV(&o, "class", put_ident, info ? vg_ptr_class_name(info->cls) : "handle");
    if (info && info->cls == VG_PTR_INTERIOR)
        VG__PUT_KV(&o, "offset", put_u64, info->offset);
    if (info && info->cls == VG_PTR_FAKE)
        VG__PUT_KV(&o, "pattern", put_str, info->pattern);
    VG__PUT_KV(&o, "policy", put_ident, policy_word(policy));
    if (rc)
        VG__PUT_KV(&o, "rc", put_u64, (uint64_t)*rc);
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
    tbuf_t *b = event_begin("leak", n, &o);
    if (!b)
        return;
    VG__PUT_KV(&o, "dev", put_u64, (uint64_t)device);
    VG__PUT_KV(&o, "count", put_u64, count);
    VG__PUT_KV(&o, "bytes", put_u64, bytes);
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
    VG__PUT_KV(&o, "dev", put_u64, (uint64_t)device);
    VG__PUT_KV(&o, "from", put_ident, vg_pressure_name(from));
    VG__PUT_KV(&o, "to", put_ident, vg_pressure_name(to));
    put_use(&o, device);
    line_end(b, &o, EV_OTHER);
}

void vg__audit_watch(vg__budget_t *b, int device)
{
    if (log_open())
        vg__budget_on_level(b, on_level, (void *)(intptr_t)device);
}

/* ------------------------------------- for audit_log.c (slow paths) */

void vg__aline_head(out_t *o, const char *op) { put_head(o, NULL, op); }
void vg__aline_u64(out_t *o, uint64_t v) { put_u64(o, v); }
void vg__aline_hex(out_t *o, uint64_t v) { put_hex(o, v); }
void vg__aline_json(out_t *o, const char *s, size_t n) { put_json(o, s, n); }

const char *vg__audit_policy_word(vg__bad_ptr_policy_t p) { return policy_word(p); }

void vg__audit_pid_reset(void)
{
    atomic_store_explicit(&cached_pid, (uint32_t)getpid(), memory_order_relaxed);
}

void vg__audit_go_direct(void) { atomic_store_explicit(&direct, 1, memory_order_relaxed); }
