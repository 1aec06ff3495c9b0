/*
 * vg_audit.h — diagnostics: the audit log (audit.c, audit_buf.c,
 * audit_log.c), call sites and the leak report (audit_sites.c), the
 * bad-pointer policy and the allocation check (badptr.c).
 */
#ifndef VG_AUDIT_H
#define VG_AUDIT_H

#include <string.h>

#include "vg_account.h"

/* audit_buf.c. The audit log's per-thread buffers: each thread formats
 * its events (audit.c) into its own buffer, kept in a registry for the life
 * of the process so exit, fork and fatal signals can write them out. */

#define VG__ABUF_BYTES 16384u /* per thread: flushed when an event might not fit */
/* ...or when its oldest line is this old (ns) at the thread's next event:
 * a process that ends without exit (_exit aside, which is caught) or is
 * killed loses no event older than this but its threads' last ones. */
#define VG__ABUF_STALE_NS 5000000ull

/* Who holds a buffer: its thread around an append, a flusher in another
 * thread (exit, fork) around a write. Neither holds it across anything but
 * a write(2). */
enum { VG__ABUF_FREE = 0, VG__ABUF_OWNER = 1, VG__ABUF_FLUSHER = 2 };
/* Event counts kept per buffer, summed for `exit`. */
enum { VG__EV_ALLOC, VG__EV_FREE, VG__EV_REFUSE, VG__EV_BAD, VG__EV_OTHER, VG__EV_KINDS };

typedef struct vg__abuf {
    _Atomic int busy;            /* VG__ABUF_FREE, _OWNER or _FLUSHER */
    uint32_t len;                /* bytes of whole lines in data */
    bool adopted;                /* a live thread owns it */
    struct vg__abuf *next;       /* registry; never unlinked */
    uint64_t count[VG__EV_KINDS]; /* events written by its threads */
    int64_t first_ns;            /* CLOCK_REALTIME of the oldest line in data */
    int64_t line_ns;             /* ... of the line being written */
    /* What every line of this thread repeats, formatted once: the seconds
     * of `ts`, and ',"pid":P,"tid":T' (redone when the thread or the
     * process changes). */
    int64_t sec;
    uint32_t id_pid, id_tid;
    uint8_t sec_len, id_len;
    char sec_text[24], id_text[48];
    char data[VG__ABUF_BYTES];
} vg__abuf_t;

/* The calling thread's buffer, NULL before its first event. Initial-exec:
 * one %fs-relative load (no __tls_get_addr) on every event, and safe in a
 * signal handler. 8 bytes of static TLS, which glibc keeps spare even for a
 * library loaded with dlopen. Read by audit.c's event path (a call would
 * cost more than the load); written only by audit_buf.c. */
extern _Thread_local vg__abuf_t *vg__abuf_mine __attribute__((tls_model("initial-exec")));

/* Takes the log's descriptor (already open) and its path for messages. */
void vg__abuf_attach(int fd, const char *path);
/* Registers the thread-exit and fatal-signal flushes, and turns on the
 * forked child's start line (fork.c). Once. */
void vg__abuf_setup(void);
/* Fork steps (fork.c, rank AUDIT: reg_lock, then every thread buffer, each flushed). */
void vg__audit_buf_prefork(void);
void vg__audit_buf_postfork_parent(void);
void vg__audit_buf_postfork_child(void);
/* The child's step after every lock is released: with the log on, its
 * own start line under its pid. */
void vg__audit_buf_child_restart(void);
/* The thread's first event: a finished thread's buffer, or a new one (sets
 * vg__abuf_mine). NULL when no memory could be had. */
__attribute__((noinline, cold)) vg__abuf_t *vg__abuf_adopt(void);
/* One write(2) of whole lines to the log (a short write continues where it
 * stopped). Keeps errno. */
void vg__abuf_write(const char *p, size_t n);
/* Events written so far by every thread of this process. Out: out[]. */
void vg__abuf_sum_counts(uint64_t out[VG__EV_KINDS]);

static inline void vg__abuf_hold(vg__abuf_t *b, int who)
{
    int expect = VG__ABUF_FREE;
    while (!atomic_compare_exchange_weak_explicit(&b->busy, &expect, who, memory_order_acquire,
                                                  memory_order_relaxed)) {
        expect = VG__ABUF_FREE;
        sched_yield(); /* a flusher is writing it out: rare */
    }
}

static inline void vg__abuf_drop(vg__abuf_t *b)
{
    atomic_store_explicit(&b->busy, VG__ABUF_FREE, memory_order_release);
}

/* Writes a held buffer out and empties it. */
static inline void vg__abuf_flush_held(vg__abuf_t *b)
{
    if (b->len)
        vg__abuf_write(b->data, b->len);
    b->len = 0;
}

/* audit.c. A JSON line being built: appends stop at `end` and mark the line
 * cut, which the writer then drops (never half a line in the file). The
 * vg__aline_* functions are audit.c's formatters, out of line, for the
 * long lines of audit_log.c (start, exit); the events use inline copies. */
typedef struct vg__aline {
    char *p, *end;
    bool cut;
} vg__aline_t;

/* Appends n bytes, or marks the line cut when they do not fit. Inline: an
 * event appends a dozen pieces per line. */
static inline void vg__aline_put(vg__aline_t *o, const char *s, size_t n)
{
    if (vg__unlikely((size_t)(o->end - o->p) < n)) {
        o->cut = true;
        return;
    }
    memcpy(o->p, s, n);
    o->p += n;
}

/* A string literal; a key ",\"key\":" then its value, written by `put`
 * (a formatter taking (o, v)). Shared by audit.c and audit_log.c. */
#define VG__PUT_LIT(o, lit) vg__aline_put((o), (lit), sizeof(lit) - 1)
#define VG__PUT_KV(o, key, put, v) (VG__PUT_LIT((o), ",\"" key "\":"), put((o), (v)))

/* {"v":1,"ts":...,"pid":...,"tid":...,"op":"<op>" */
void vg__aline_head(vg__aline_t *o, const char *op);
void vg__aline_u64(vg__aline_t *o, uint64_t v);
/* "0x1f00", quoted. */
void vg__aline_hex(vg__aline_t *o, uint64_t v);
/* A JSON string of n bytes, escaped (invalid UTF-8 becomes U+FFFD). */
void vg__aline_json(vg__aline_t *o, const char *s, size_t n);
/* "warn", "reject" or "abort" (static text). */
const char *vg__audit_policy_word(vg__bad_ptr_policy_t p);
/* Caches getpid() for every later line (start, and a forked child). */
void vg__audit_pid_reset(void);
/* After `exit`: every later line is written at once. */
void vg__audit_go_direct(void);

/* audit_log.c. A forked child's log restarts: new pid, exit re-armed, a
 * `start` line. Called by audit_buf.c's fork handler. */
void vg__audit_restart(void);

/* audit_log.c. Starts diagnostics from the parsed settings, once, from the
 * engine's start-up: opens VRAMGUARD_AUDIT (O_WRONLY|O_APPEND|O_CREAT|
 * O_NOFOLLOW|O_CLOEXEC, mode 0600), registers the exit, fork and
 * fatal-signal flushes and writes `start`. VG_ESETTING with
 * "VRAMGUARD_AUDIT='path': reason" in err when the log cannot be opened:
 * the engine then fails closed. */
int vg__diag_start(const vg__settings_t *s, char *err, size_t errlen);
/* Whether the file `st` describes may be an audit log: a regular file of
 * this user, writable by nobody else, or a pipe or character device. VG_OK,
 * or VG_ESETTING with the line vg__diag_start would give in err. (The CLI
 * checks a --audit path with it before the command starts.) */
struct stat;
int vg__audit_file_check(const struct stat *st, const char *path, char *err, size_t errlen);
/* audit.c. Writes `pressure` events for a device budget's level changes
 * (nothing while the log is closed). Call after vg__budget_init. */
void vg__audit_watch(vg__budget_t *b, int device);

/* Events. Each formats one line into the calling thread's buffer: no
 * malloc after the thread's first event, no lock another thread holds
 * except while it flushes this buffer (exit, fork), and a write(2) only
 * when the buffer is full. All are no-ops while the log is closed. */
/* An allocation about to be recorded: checks it (VRAMGUARD_VERIFY), sets
 * a->site (VRAMGUARD_BACKTRACE) and writes `alloc`. Call when
 * vg__diag_on(), before the ledger insert. */
void vg__diag_commit(const vg__ticket_t *t, vg__alloc_t *a);
/* `free` of a ledger record, with the driver's answer. */
void vg__audit_free(const vg__alloc_t *a, const char *api, CUresult rc);
/* `refuse`: t->bytes on t->device refused with `status` (VG_ENOMEM,
 * VG_EDENIED). Captures the call site itself. */
void vg__audit_refuse(const vg__ticket_t *t, int status);
/* `bad_ptr`. info NULL for a handle ("handle" class). rc NULL when the
 * program gets none (abort). */
void vg__audit_bad_ptr(const char *api, uint64_t key, const vg_ptr_info_t *info,
                       vg__bad_ptr_policy_t policy, const CUresult *rc);
/* `leak`: one call site's allocations still live at exit. */
void vg__audit_leak(int device, uint64_t count, uint64_t bytes, uint32_t site);
/* audit_buf.c. Writes every thread's buffer out now (abort, tests). */
void vg__audit_flush_all(void);
/* audit_buf.c. The same on the way out through _exit (the preload shim's
 * _exit and _Exit call it: no atexit handler runs there), which may be called
 * from a signal handler that interrupted an append or a flush: never
 * waits for long (a buffer or the registry it cannot have soon is left). */
void vg__audit_flush_exiting(void);

/* audit_sites.c. Call sites: up to VRAMGUARD_BACKTRACE return addresses outside
 * vramguard, innermost first, interned so a record keeps a 32-bit id. */
/* Loads the unwinder (glibc's backtrace() may malloc on first use) and
 * finds vramguard's own code. frames 0 turns capture off. */
void vg__site_setup(int frames);
/* The caller's frames outside vramguard. Out: frames[]. Returns the count
 * (0 when capture is off). Costs one unwind (~1 us for a few frames). */
int vg__site_capture(uintptr_t frames[VG__MAX_FRAMES]);
/* The id of a frame list (1...), 0 when n is 0 or the table is full. */
uint32_t vg__site_intern(const uintptr_t *frames, int n);
/* The frames of an id. Out: frames[]. Returns the count (0 for id 0). */
int vg__site_frames(uint32_t id, uintptr_t frames[VG__MAX_FRAMES]);
/* The leak report: live allocations grouped by device and call site, on
 * stderr ending with one summary line, and as `leak` events. Exit only. */
void vg__leaks_report(void);

/* badptr.c. A free of a key the ledger does not hold. Pointers are
 * classified (vg__ptr_classify) and VRAMGUARD_ON_BAD_POINTER applied:
 * VG_OK = forward to the driver (warn; and always for real memory we did
 * not see: foreign pointers, unknown VMM handles), VG_ENOTFOUND = reject,
 * or a report and abort(). Those are judged after the driver answers.
 * (Declared above, beside its caller vg__acct_free_begin.) */
/* After the driver answered a VG__FREE_BAD free: `bad_ptr` event, one
 * rate-limited stderr line, abort() under that policy. */
void vg__badptr_end(const vg__free_t *f, CUresult cr);
/* VRAMGUARD_VERIFY: the driver must know a->ptr as device memory of at
 * least a->size bytes. A failure is a `bad_ptr` and a stderr line (and
 * abort() under that policy); the allocation stays recorded. */
void vg__badptr_verify(const vg__ticket_t *t, const vg__alloc_t *a);

#endif /* VG_AUDIT_H */
