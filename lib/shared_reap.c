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
 * dead holder. shared.c reaps dead slots at most once a second on reserve
 * and always before a refusal; a normal exit releases its slot at once.
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

/* Field 22 (starttime, clock ticks since boot) of /proc/PID/stat; 0 when
 * the process is gone. The command may hold spaces and ')': skip to the
 * last ')'. */
uint64_t vg__shm_proc_start(int pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p)
        return 0;
    /* After ")" come fields 3.. ; starttime is field 22, 20 fields on. */
    for (int field = 2; field < 22 && p; field++)
        p = strchr(p + 1, ' ');
    return p ? strtoull(p + 1, NULL, 10) : 0;
}

bool vg__shm_pid_alive(int32_t pid, uint64_t start)
{
    if (pid <= 0) /* never kill(0) or a group */
        return false;
    if (kill(pid, 0) != 0 && errno != EPERM)
        return false;
    uint64_t now = vg__shm_proc_start(pid);
    return now == 0 ? errno == EACCES : now == start;
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
    for (int s = 0; s < VG__SHM_SLOTS; s++)
        if (r->slot[s].pid != 0 && !alive(&r->slot[s], ctx))
            memset(&r->slot[s], 0, sizeof r->slot[s]);
    for (int d = 0; d < VG__SHM_DEVICES; d++) {
        uint64_t sum = 0;
        for (int s = 0; s < VG__SHM_SLOTS; s++)
            if (r->slot[s].pid != 0)
                sum += r->slot[s].used[d];
        r->dev[d].used = sum;
        vg__shm_level_update(&r->dev[d]);
    }
    r->h.generation++;
}

/* Under the lock: drops every slot whose process is gone. */
void vg__shm_reap(vg__shm_t *r, uint64_t now)
{
    for (int s = 0; s < VG__SHM_SLOTS; s++)
        if (r->slot[s].pid != 0 && !vg__shm_slot_alive(&r->slot[s]))
            vg__shm_slot_drop(r, s);
    for (int w = 0; w < VG__SHM_WAITERS; w++)
        if (r->h.waiters[w].pid &&
            !vg__shm_pid_alive(r->h.waiters[w].pid, r->h.waiters[w].start))
            memset(&r->h.waiters[w], 0, sizeof r->h.waiters[w]);
    r->h.last_reap_ns = now;
}
