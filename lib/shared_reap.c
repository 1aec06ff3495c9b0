/*
 * shared_reap.c — who in a shared region is still alive, and giving the
 * share of those who are not back to everyone else.
 *
 * Invariant (under the region lock): dev[d].used == the sum of
 * slot[s].used[d] over occupied slots. It is what makes crash recovery
 * exact: a dead process's share is its slot's used[], and a lock whose
 * holder died (EOWNERDEAD, shared.c) is repaired by recomputing every sum
 * from the live slots (vg__shm_recount).
 *
 * Liveness is kill(pid, 0) (EPERM counts as alive) and the same start time
 * (field 22 of /proc/PID/stat), so a recycled pid is not mistaken for the
 * dead holder (where /proc hides another user's processes, hidepid, kill
 * alone decides); a zombie (state Z or X) is dead unless other threads of it
 * still run. shared.c reaps at most once a second on reserve, and before a
 * refusal at most once every few milliseconds region-wide (a process's
 * first refusal always looks); the /proc reads happen outside the lock
 * (collect, check, apply). A normal exit releases its slot at once.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vg_shared.h"

/* ------------------------------------------------------- liveness */

/* Reads /proc/PID/stat (or /proc/PID/task/TID/stat): the state letter
 * (field 3) and the start time (field 22, clock ticks since boot). The
 * command may hold spaces and ')': skip to the last ')'. False when the
 * file cannot be read (errno says why). */
static bool read_stat(const char *path, char *state, uint64_t *start)
{
    char buf[1024];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    int err = errno;
    close(fd);
    errno = err;
    if (n <= 0)
        return false;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ')
        return false;
    *state = p[2];
    /* After ")" come fields 3.. ; starttime is field 22, 20 fields on. */
    for (int field = 2; field < 22 && p; field++)
        p = strchr(p + 1, ' ');
    *start = p ? strtoull(p + 1, NULL, 10) : 0;
    return true;
}

uint64_t vg__shm_proc_start(int pid)
{
    char path[64], state;
    uint64_t start;
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    return read_stat(path, &state, &start) ? start : 0;
}

/* A zombie (Z) or dead (X) task has given up everything but its entry. */
static bool state_dead(char state) { return state == 'Z' || state == 'X'; }

/* Threads: of /proc/PID/status, the threads still running; 0 when unknown.
 * A zombie main thread whose other threads still run shows Z in its own
 * stat, yet the process is alive. */
static long live_threads(int pid)
{
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    const char *t = strstr(buf, "\nThreads:");
    return t ? strtol(t + 10, NULL, 10) : 0;
}

bool vg__shm_pid_alive(int32_t pid, uint64_t start)
{
    char path[64], state;
    uint64_t now;
    if (pid <= 0) /* never kill(0) or a group */
        return false;
    if (kill(pid, 0) != 0 && errno != EPERM)
        return false;
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    if (!read_stat(path, &state, &now))
        return true; /* kill() found it; /proc will not show it (hidepid=1
                        says EPERM, hidepid=2 ENOENT): alive, and a reused
                        pid cannot be told apart (its share waits) */
    if (now != start)
        return false; /* the pid was reused */
    /* A killed process its parent has not reaped holds no memory: its
     * share goes back (a zombie main thread with live threads excepted). */
    return !state_dead(state) || live_threads(pid) > 1;
}

bool vg__shm_tid_alive(int32_t tid)
{
    char path[64], state;
    uint64_t start;
    if (tid <= 0)
        return false;
    snprintf(path, sizeof path, "/proc/%d/stat", tid);
    if (!read_stat(path, &state, &start)) /* hidden (hidepid) or gone */
        return errno == EACCES || errno == EPERM || kill(tid, 0) == 0 || errno == EPERM;
    return !state_dead(state);
}

bool vg__shm_slot_alive(const vg__shm_slot_t *s)
{
    return vg__shm_pid_alive(s->pid, s->start);
}

/* --------------------------------------------------------- counting */

/* Drops slot s, handing its share back. */
void vg__shm_slot_drop(vg__shm_t *r, int s)
{
    vg__shm_slot_t *sl = &r->slot[s];
    for (int d = 0; d < VG__SHM_DEVICES; d++) {
        uint64_t u = sl->used[d];
        r->dev[d].used -= u < r->dev[d].used ? u : r->dev[d].used;
        vg__shm_level_update(&r->dev[d]);
    }
    memset(sl, 0, sizeof *sl);
    r->h.generation++;
}

void vg__shm_recount(vg__shm_t *r, vg__shm_alive_fn alive, void *ctx)
{
    /* A slot with no pid is free: whatever it still holds is what a drop
     * (memset, in no set order) left when its process died inside it. */
    for (int s = 0; s < VG__SHM_SLOTS; s++)
        if (r->slot[s].pid == 0 || !alive(&r->slot[s], ctx))
            memset(&r->slot[s], 0, sizeof r->slot[s]);
    for (int d = 0; d < VG__SHM_DEVICES; d++) {
        uint64_t sum = 0;
        for (int s = 0; s < VG__SHM_SLOTS; s++)
            if (r->slot[s].pid != 0)
                sum += r->slot[s].used[d];
        r->dev[d].used = sum;
        if (sum > r->dev[d].peak) /* a holder died between the two adds */
            r->dev[d].peak = sum;
        vg__shm_level_update(&r->dev[d]);
    }
    r->h.generation++;
}

/* Under the lock: drops every slot whose process is gone. */
void vg__shm_reap(vg__shm_t *r, uint64_t now)
{
    vg__shm_reap_list_t l;
    vg__shm_reap_collect(r, &l);
    vg__shm_reap_check(&l);
    vg__shm_reap_apply(r, &l);
    r->h.last_reap_ns = now;
}

/* ---------------------------------------- reaping outside the lock */

bool vg__shm_reap_due(vg__shm_t *r, uint64_t now, uint64_t interval_ns)
{
    if (now - r->h.last_reap_ns < interval_ns && now >= r->h.last_reap_ns)
        return false;
    r->h.last_reap_ns = now; /* claimed: the others skip until the next */
    return true;
}

void vg__shm_reap_collect(const vg__shm_t *r, vg__shm_reap_list_t *l)
{
    l->n = 0;
    for (int s = 0; s < VG__SHM_SLOTS; s++)
        if (r->slot[s].pid != 0)
            l->e[l->n++] = (vg__shm_reap_entry_t){s, false, r->slot[s].pid, r->slot[s].start};
    for (int w = 0; w < VG__SHM_WAITERS; w++)
        if (r->h.waiters[w].pid != 0)
            l->e[l->n++] = (vg__shm_reap_entry_t){w, true, r->h.waiters[w].pid,
                                                  r->h.waiters[w].start};
}

/* Each check reads /proc (a few microseconds): never under the lock. */
void vg__shm_reap_check(vg__shm_reap_list_t *l)
{
    int dead = 0;
    for (int i = 0; i < l->n; i++)
        if (!vg__shm_pid_alive(l->e[i].pid, l->e[i].start))
            l->e[dead++] = l->e[i];
    l->n = dead;
}

/* A slot or waiter is dropped only if it still holds the identity found
 * dead: one that was released and claimed again meanwhile is someone
 * else's. */
void vg__shm_reap_apply(vg__shm_t *r, const vg__shm_reap_list_t *l)
{
    for (int i = 0; i < l->n; i++) {
        const vg__shm_reap_entry_t *x = &l->e[i];
        if (x->waiter) {
            vg__shm_waiter_t *w = &r->h.waiters[x->index];
            if (w->pid == x->pid && w->start == x->start)
                memset(w, 0, sizeof *w);
        } else if (r->slot[x->index].pid == x->pid && r->slot[x->index].start == x->start) {
            vg__shm_slot_drop(r, x->index);
        }
    }
}
