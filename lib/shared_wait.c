/*
 * shared_wait.c — VRAMGUARD_WAIT_MS: a request the shared budget refused
 * waits in line for other processes to free, first come, first served.
 *
 * The line is the region's waiter table: each waiter takes a ticket from a
 * counter in the region, and only the live, unexpired waiter holding the
 * smallest ticket may charge (shared.c's vg__shared_charge_locked), polled
 * every WAIT_POLL_NS with the region lock taken and dropped each time. A
 * timed-out waiter is dropped by the next poll of anyone in line; a dead
 * one by a reap (shared_reap.c), outside the lock. With the table full, a
 * request is refused at once. A refusal is counted once, when the wait
 * ends without memory.
 *
 * A slow path: only after a refusal, and only with VRAMGUARD_WAIT_MS set.
 */
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vg_shared.h"

#define WAIT_POLL_NS 1000000L /* a waiter looks again every 1 ms */

/* Takes a ticket. -1 when the waiter table is full. */
static int waiter_add(vg__shm_t *r, uint64_t deadline, uint64_t *ticket)
{
    for (int w = 0; w < VG__SHM_WAITERS; w++) {
        vg__shm_waiter_t *x = &r->h.waiters[w];
        if (x->pid)
            continue;
        *ticket = ++r->h.ticket_next;
        *x = (vg__shm_waiter_t){.pid = (int32_t)getpid(), .start = vg__shared_my_start(),
                                .ticket = *ticket, .deadline_ns = deadline};
        return w;
    }
    return -1;
}

/* Under the lock: whether `ticket` is the smallest among waiters whose time
 * has not run out (the others are dropped on the way). Dead waiters are
 * dropped by reaps, outside the lock: no /proc read here. */
static bool at_head(vg__shm_t *r, uint64_t ticket, uint64_t now)
{
    uint64_t head = UINT64_MAX;
    for (int w = 0; w < VG__SHM_WAITERS; w++) {
        vg__shm_waiter_t *x = &r->h.waiters[w];
        if (!x->pid)
            continue;
        if (x->ticket != ticket && now >= x->deadline_ns) {
            memset(x, 0, sizeof *x);
            continue;
        }
        if (x->ticket < head)
            head = x->ticket;
    }
    return head == ticket;
}

static void sleep_ns(long ns)
{
    struct timespec ts = {0, ns};
    nanosleep(&ts, NULL);
}

typedef struct waiting {
    uint64_t ticket, deadline;
    int slot; /* in the waiter table */
} waiting_t;

/* One poll of a waiter. Returns whether it is done (*rc set). */
static bool wait_poll(vg__budget_t *b, uint64_t n, const waiting_t *w, int *rc)
{
    vg__shm_t *r = b->shared;
    int d = b->shared_dev;
    if (vg__shared_lock(r) != VG_OK)
        return *rc = VG_ENOMEM, true;
    uint64_t now = vg__mono_ns();
    bool timed_out = now >= w->deadline;
    if (!timed_out && at_head(r, w->ticket, now))
        *rc = vg__shared_charge_locked(r, d, n);
    bool done = *rc == VG_OK || timed_out;
    if (done && r->h.waiters[w->slot].ticket == w->ticket)
        memset(&r->h.waiters[w->slot], 0, sizeof r->h.waiters[w->slot]);
    if (done && *rc != VG_OK)
        r->dev[d].refusals++;
    bool reap = !done && vg__shm_reap_due(r, vg__mono_coarse_ns(), VG__SHM_REFUSAL_REAP_NS);
    vg__shared_mirror(b, &r->dev[d]);
    vg__shm_unlock(r);
    if (reap)
        vg__shared_reap_outside(r);
    return done;
}

int vg__shared_wait_reserve(vg__budget_t *b, uint64_t n, int wait_ms)
{
    vg__shm_t *r = b->shared;
    int rc = VG_ENOMEM;
    waiting_t w = {.deadline = vg__mono_ns() + (uint64_t)wait_ms * 1000000ull};
    if (vg__shared_lock(r) != VG_OK)
        return VG_ENOMEM;
    w.slot = waiter_add(r, w.deadline, &w.ticket);
    if (w.slot < 0) /* no room in line: refuse now */
        r->dev[b->shared_dev].refusals++;
    vg__shm_unlock(r);
    if (w.slot < 0)
        return VG_ENOMEM;
    do
        sleep_ns(WAIT_POLL_NS);
    while (!wait_poll(b, n, &w, &rc));
    return rc;
}
