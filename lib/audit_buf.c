/*
 * audit_buf.c — the audit log's per-thread buffers, their registry, and
 * writing them out: when a thread ends, before fork, on fatal signals and
 * on demand (vg__audit_flush_all, which exit uses). audit.c formats lines
 * into the buffers; audit_log.c opens the log and writes `start` and `exit`.
 *
 * A buffer is a malloc'd block adopted by a thread at its first event and
 * kept in the registry for the life of the process (a finished thread's
 * buffer goes to the next new thread), so exit and fork can flush every
 * thread's buffer and no pointer into the registry ever dangles.
 *
 * Ownership of a buffer is one atomic word (vg__abuf_hold/_drop): its
 * thread takes it (OWNER) around each append, a flusher in another thread
 * (exit, fork) takes it (FLUSHER) around a write.
 *
 * A fatal signal writes the signalled thread's buffer only (other threads'
 * buffers cannot be touched safely from a handler). _exit (the shim's)
 * writes every buffer it can have without waiting long.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vg_audit.h"

enum { FREE = VG__ABUF_FREE, OWNER = VG__ABUF_OWNER, FLUSHER = VG__ABUF_FLUSHER };

typedef vg__abuf_t tbuf_t;

static int log_fd = -1;
static char log_path[4096];
static _Atomic int write_failed;

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static tbuf_t *reg_head;
static pthread_key_t buf_key;
_Thread_local tbuf_t *vg__abuf_mine __attribute__((tls_model("initial-exec")));

void vg__abuf_attach(int fd, const char *path)
{
    log_fd = fd;
    snprintf(log_path, sizeof log_path, "%s", path);
}

/* --------------------------------------------------------- writing */

__attribute__((noinline, cold)) static void write_error(int err)
{
    if (!atomic_exchange_explicit(&write_failed, 1, memory_order_relaxed))
        vg__log("audit log '%s': write failed: %s; later events may be lost",
                log_path, strerror(err));
}

/* One write(2) of whole lines (a short write, which a regular file gives
 * only on a full disk, continues where it stopped). Keeps errno. */
void vg__abuf_write(const char *p, size_t n)
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

/* -------------------------------------------------------- registry */

/* Thread exit (pthread key destructor): write the buffer out and hand it
 * to the next new thread. */
static void buf_release(void *p)
{
    tbuf_t *b = p;
    vg__abuf_hold(b, OWNER);
    vg__abuf_flush_held(b);
    vg__abuf_drop(b);
    pthread_mutex_lock(&reg_lock);
    b->adopted = false;
    pthread_mutex_unlock(&reg_lock);
    vg__abuf_mine = NULL;
}

/* The thread's first event: a finished thread's buffer, or a new one. */
__attribute__((noinline, cold)) tbuf_t *vg__abuf_adopt(void)
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
        vg__abuf_mine = b;
        pthread_setspecific(buf_key, b);
    }
    return b;
}

void vg__abuf_sum_counts(uint64_t out[VG__EV_KINDS])
{
    memset(out, 0, sizeof(uint64_t) * VG__EV_KINDS);
    pthread_mutex_lock(&reg_lock);
    for (tbuf_t *b = reg_head; b; b = b->next) {
        vg__abuf_hold(b, FLUSHER);
        for (int i = 0; i < VG__EV_KINDS; i++)
            out[i] += b->count[i];
        vg__abuf_drop(b);
    }
    pthread_mutex_unlock(&reg_lock);
}

void vg__audit_flush_all(void)
{
    if (log_fd < 0)
        return;
    pthread_mutex_lock(&reg_lock);
    for (tbuf_t *b = reg_head; b; b = b->next) {
        vg__abuf_hold(b, FLUSHER);
        vg__abuf_flush_held(b);
        vg__abuf_drop(b);
    }
    pthread_mutex_unlock(&reg_lock);
}

/* Takes a buffer within a bounded number of tries. Its own thread's buffer
 * held by this very thread (a handler interrupted an append) is never
 * free: its whole lines are written as on_fatal does, without taking it. */
static bool hold_soon(tbuf_t *b)
{
    for (int i = 0; i < 1000; i++) {
        int expect = FREE;
        if (atomic_compare_exchange_strong_explicit(&b->busy, &expect, FLUSHER,
                                                    memory_order_acquire, memory_order_relaxed))
            return true;
        if (b == vg__abuf_mine)
            return false;
        sched_yield();
    }
    return false;
}

void vg__audit_flush_exiting(void)
{
    if (log_fd < 0)
        return;
    bool locked = false;
    for (int i = 0; i < 1000 && !(locked = pthread_mutex_trylock(&reg_lock) == 0); i++)
        sched_yield();
    if (!locked)
        return; /* a flusher stopped inside: what it holds is lost */
    for (tbuf_t *b = reg_head; b; b = b->next) {
        if (hold_soon(b)) {
            vg__abuf_flush_held(b);
            vg__abuf_drop(b);
        } else if (b == vg__abuf_mine && b->len) {
            vg__abuf_write(b->data, b->len); /* whole lines; the process ends */
        }
    }
    pthread_mutex_unlock(&reg_lock);
}

/* ------------------------------------------------------------- fork */

/* fork.c, rank AUDIT (last: an event may be written under any other lock). */
static bool fork_restart; /* the log is on: a child writes its own start */

void vg__audit_buf_prefork(void)
{
    pthread_mutex_lock(&reg_lock);
    for (tbuf_t *b = reg_head; b; b = b->next) {
        vg__abuf_hold(b, FLUSHER);
        vg__abuf_flush_held(b);
    }
}

void vg__audit_buf_postfork_parent(void)
{
    for (tbuf_t *b = reg_head; b; b = b->next)
        vg__abuf_drop(b);
    pthread_mutex_unlock(&reg_lock);
}

/* The child has one thread: the others' buffers (flushed in prepare) are
 * free for its new threads, and its own counts start at zero. */
void vg__audit_buf_postfork_child(void)
{
    for (tbuf_t *b = reg_head; b; b = b->next) {
        memset(b->count, 0, sizeof b->count);
        b->adopted = b == vg__abuf_mine;
        vg__abuf_drop(b);
    }
    pthread_mutex_unlock(&reg_lock);
}

/* After every lock is released: the child's start line, under its pid. */
void vg__audit_buf_child_restart(void)
{
    if (fork_restart)
        vg__audit_restart();
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
    tbuf_t *b = vg__abuf_mine;
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
        vg__abuf_drop(b);
    for (size_t i = 0; i < FATAL_COUNT; i++)
        if (fatal_signals[i] == sig)
            chain(i, sig, si, uc);
    errno = saved;
}

/* Signals the program ignores stay ignored (an ignored signal is inherited
 * across exec; a caught one is not). A handler the program installed keeps
 * its own flags and mask: SA_RESTART where it had none would turn an
 * interrupted read(2) into a restarted one (Python's Ctrl-C then waits for
 * the read to end). Without a handler, no SA_RESTART either: the default
 * action ends the process anyway. */
static void install_signal_flush(void)
{
    for (size_t i = 0; i < FATAL_COUNT; i++) {
        const struct sigaction *p = &previous[i];
        if (sigaction(fatal_signals[i], NULL, &previous[i]) != 0 ||
            (!(p->sa_flags & SA_SIGINFO) && p->sa_handler == SIG_IGN))
            continue;
        bool own = (p->sa_flags & SA_SIGINFO) || p->sa_handler != SIG_DFL;
        struct sigaction sa = {.sa_sigaction = on_fatal};
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK |
                      (own ? p->sa_flags & (SA_RESTART | SA_NODEFER | SA_RESETHAND) : 0);
        sa.sa_mask = p->sa_mask;
        if (!own)
            sigemptyset(&sa.sa_mask);
        sigaction(fatal_signals[i], &sa, NULL);
    }
}

void vg__abuf_setup(void)
{
    pthread_key_create(&buf_key, buf_release);
    fork_restart = true;
    install_signal_flush();
}
