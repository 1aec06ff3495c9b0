/*
 * shared.c — one budget for many processes: the region lock and the
 * engine's side of a region in /dev/shm that every process with the same
 * VRAMGUARD_SHARED name maps (shared_region.c creates and attaches it;
 * shared_reap.c checks liveness and gives the dead's share back).
 *
 * The region holds, per device, the limit, the use of all processes, the
 * peak, refusals and the pressure level; per process a slot (pid, start
 * time, command, use, live allocations, overhead). Every change happens
 * under one robust, process-shared mutex, so "check, then add" is atomic
 * across processes and threads. An uncontended lock costs ~20-40 ns; the
 * driver call it guards costs microseconds. The lock stays in this file so
 * that it inlines into the budget operations (the hot path).
 *
 * Here: binding a device budget to the region's entry, reserve, release,
 * force and limit changes under the lock, and VRAMGUARD_WAIT_MS's line of
 * waiters (first come, first served).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vg_account.h"
#include "vg_driver.h"
#include "vg_shared.h"

#define REAP_INTERVAL_NS 1000000000ull /* at most one scan a second */
#define WAIT_POLL_NS 1000000L          /* a waiter looks again every 1 ms */

/* --------------------------------------------------------- the lock */

static bool alive_cb(const vg__shm_slot_t *s, void *ctx)
{
    (void)ctx;
    return vg__shm_slot_alive(s);
}

int vg__shm_lock(vg__shm_t *r)
{
    int rc = pthread_mutex_lock(&r->h.lock.m);
    if (vg__unlikely(rc == EOWNERDEAD)) {
        /* Its holder died mid-update: the slots are the truth. */
        vg__shm_recount(r, alive_cb, NULL);
        pthread_mutex_consistent(&r->h.lock.m);
        return VG_OK;
    }
    return rc == 0 ? VG_OK : VG_ESYS;
}

void vg__shm_unlock(vg__shm_t *r)
{
    pthread_mutex_unlock(&r->h.lock.m);
}

int vg__shm_snapshot(vg__shm_t *r, vg__shm_t *copy)
{
    if (vg__shm_lock(r) != VG_OK)
        return VG_ESYS;
    memcpy(copy, r, sizeof *copy);
    vg__shm_unlock(r);
    return VG_OK;
}

int vg__shm_set_limit(vg__shm_t *r, int dev, uint64_t limit)
{
    if (dev >= VG__SHM_DEVICES)
        return VG_EINVAL;
    if (vg__shm_lock(r) != VG_OK)
        return VG_ESYS;
    if (dev < 0)
        r->h.default_limit = limit;
    for (int d = 0; d < VG__SHM_DEVICES; d++) {
        if (d != dev && (dev >= 0 || r->dev[d].ordinal < 0))
            continue;
        r->dev[d].limit = limit;
        vg__shm_level_update(&r->dev[d]);
    }
    vg__shm_unlock(r);
    return VG_OK;
}

/* ------------------------------------------------- the engine's side */

/* This process's attachment. `region` and `my_start` are written once
 * under attach_once; `my_slot` only under the region lock. */
static pthread_once_t attach_once = PTHREAD_ONCE_INIT;
static vg__shm_t *region;
static int attach_status = VG_ENOTFOUND;
static char attach_error[512];
static char region_path[4200];
static int my_slot = -1;
static uint64_t my_start;

static void own_cmd(char cmd[VG__SHM_CMD])
{
    memset(cmd, 0, VG__SHM_CMD);
    int fd = open("/proc/self/comm", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t n = read(fd, cmd, VG__SHM_CMD - 1);
    close(fd);
    if (n > 0 && cmd[n - 1] == '\n')
        cmd[n - 1] = '\0';
}

/* Under the lock: the slot of this process, claimed on first use (and
 * again in a forked child, whose parent's slot is not its own). -1 when
 * every slot is taken by a live process. */
static int slot_of_self(vg__shm_t *r)
{
    if (vg__likely(my_slot >= 0))
        return my_slot;
    for (int pass = 0; pass < 2; pass++) {
        for (int s = 0; s < VG__SHM_SLOTS; s++) {
            if (r->slot[s].pid != 0)
                continue;
            vg__shm_slot_t *sl = &r->slot[s];
            sl->pid = (int32_t)getpid();
            sl->uid = (uint32_t)geteuid();
            sl->start = my_start;
            own_cmd(sl->cmd);
            my_slot = s;
            return s;
        }
        /* full: drop the dead, then look again */
        vg__shm_reap(r, vg__mono_ns());
    }
    return -1;
}

/* fork.c's child step, after every lock is released: the parent's slot is
 * not the child's. Nothing to do before the region was attached. */
void vg__shared_postfork_child(void)
{
    if (!region)
        return;
    my_slot = -1;
    my_start = vg__shm_proc_start(getpid());
}

/* A normal exit gives the share back at once. */
__attribute__((destructor)) static void release_at_exit(void)
{
    vg__shm_t *r = region;
    if (!r || vg__shm_lock(r) != VG_OK)
        return;
    if (my_slot >= 0 && r->slot[my_slot].pid == (int32_t)getpid())
        vg__shm_slot_drop(r, my_slot);
    my_slot = -1;
    vg__shm_unlock(r);
}

static void attach(void)
{
    const vg__settings_t *st = vg__engine_settings();
    const char *name = st->shared[0] ? st->shared : st->shared_cache;
    if (vg__shm_path(name, region_path, sizeof region_path) != VG_OK) {
        snprintf(attach_error, sizeof attach_error, "shared region name too long");
        attach_status = VG_EINVAL;
        return;
    }
    my_start = vg__shm_proc_start(getpid());
    attach_status = vg__shm_open(region_path, VG__SHM_CREATE,
                                 st->shared_group == VG__SHARED_GROUP, &region,
                                 attach_error, sizeof attach_error);
}

/* Under the lock: the entry of `device` (keyed by UUID when known, else by
 * ordinal), claimed with the region's default limit when new. */
static int entry_of(vg__shm_t *r, int device, const char *uuid)
{
    int free_entry = -1;
    for (int d = 0; d < VG__SHM_DEVICES; d++) {
        vg__shm_device_t *e = &r->dev[d];
        if (e->ordinal < 0) {
            if (free_entry < 0)
                free_entry = d;
            continue;
        }
        e->uuid[sizeof e->uuid - 1] = '\0';
        if (uuid[0] ? strcmp(e->uuid, uuid) == 0
                    : (!e->uuid[0] && e->ordinal == device))
            return d;
    }
    if (free_entry >= 0) {
        vg__shm_device_t *e = &r->dev[free_entry];
        memset(e, 0, sizeof *e);
        e->ordinal = device;
        e->limit = r->h.default_limit;
        snprintf(e->uuid, sizeof e->uuid, "%s", uuid);
        vg__shm_level_update(e);
    }
    return free_entry;
}

/* Copies the entry into the budget's mirror fields (under the lock). */
static void mirror(vg__budget_t *b, const vg__shm_device_t *e)
{
    atomic_store_explicit(&b->limit, e->limit, memory_order_relaxed);
    atomic_store_explicit(&b->used, e->used, memory_order_relaxed);
    atomic_store_explicit(&b->peak, e->peak, memory_order_relaxed);
    atomic_store_explicit(&b->refusals, e->refusals, memory_order_relaxed);
    atomic_store_explicit(&b->level, e->level, memory_order_relaxed);
}

static void bind_fail(vg__budget_t *b, int device, const char *why)
{
    vg__log("%s; refusing allocations on device %d (fail closed)", why, device);
    atomic_store_explicit(&b->limit, 0, memory_order_relaxed);
}

void vg__shared_bind(vg__budget_t *b, int device, uint64_t limit)
{
    pthread_once(&attach_once, attach);
    if (attach_status != VG_OK)
        return bind_fail(b, device, attach_error);
    char uuid[48] = "";
    if (vg__device_uuid(device, uuid) != VG_OK)
        uuid[0] = '\0';
    if (vg__shm_lock(region) != VG_OK)
        return bind_fail(b, device, "cannot lock the shared region");
    int e = entry_of(region, device, uuid);
    int slot = slot_of_self(region);
    uint64_t old = e >= 0 ? region->dev[e].limit : 0;
    if (e >= 0 && slot >= 0 && limit != VG__UNLIMITED) {
        region->dev[e].limit = limit;
        vg__shm_level_update(&region->dev[e]);
    }
    if (e >= 0 && slot >= 0) {
        b->shared_dev = e;
        mirror(b, &region->dev[e]);
    }
    vg__shm_unlock(region);
    if (e < 0 || slot < 0)
        return bind_fail(b, device, e < 0 ? "the shared region has no free "
                                            "device entry"
                                          : "the shared region has no free "
                                            "process slot (256 in use)");
    b->shared = region;
    if (limit != VG__UNLIMITED && old != VG__UNLIMITED && old != limit) {
        char a[32], c[32];
        vg__log("shared budget %s, device %d: limit changed from %s to %s by "
                "this process's VRAMGUARD_BUDGET", region_path, device,
                vg__fmt_bytes(old, a, sizeof a), vg__fmt_bytes(limit, c, sizeof c));
    }
}

static bool fits(const vg__shm_device_t *e, uint64_t n)
{
    return e->used <= e->limit && n <= e->limit - e->used;
}

typedef enum { COUNT_REFUSAL, QUIET_REFUSAL } refusal_t;

/* Under the lock: the reserve itself. */
static int reserve_locked(vg__shm_t *r, int d, uint64_t n, refusal_t count)
{
    /* Coarse: it only decides whether a second has passed since the last
     * reap (the precise clock cost ~26 ns of a ~70 ns shared reserve). */
    uint64_t now = vg__mono_coarse_ns();
    int s = slot_of_self(r);
    vg__shm_device_t *e = &r->dev[d];
    if (vg__unlikely(s < 0))
        return VG_ENOMEM;
    if (now - r->h.last_reap_ns >= REAP_INTERVAL_NS)
        vg__shm_reap(r, now);
    if (!fits(e, n)) {
        vg__shm_reap(r, now); /* a dead holder's share, before saying no */
        if (!fits(e, n)) {
            e->refusals += count == COUNT_REFUSAL;
            return VG_ENOMEM;
        }
    }
    if (vg__shared_test_pause)
        vg__shared_test_pause(); /* tests only: see the header */
    r->slot[s].used[d] += n;
    e->used += n;
    if (e->used > e->peak)
        e->peak = e->used;
    vg__shm_level_update(e);
    return VG_OK;
}

/* Takes a ticket. -1 when the waiter table is full. */
static int waiter_add(vg__shm_t *r, uint64_t deadline, uint64_t *ticket)
{
    for (int w = 0; w < VG__SHM_WAITERS; w++) {
        vg__shm_waiter_t *x = &r->h.waiters[w];
        if (x->pid)
            continue;
        *ticket = ++r->h.ticket_next;
        *x = (vg__shm_waiter_t){.pid = (int32_t)getpid(), .start = my_start,
                                .ticket = *ticket, .deadline_ns = deadline};
        return w;
    }
    return -1;
}

/* Under the lock: whether `ticket` is the smallest among live waiters
 * whose time has not run out (the others are dropped on the way). */
static bool at_head(vg__shm_t *r, uint64_t ticket, uint64_t now)
{
    uint64_t head = UINT64_MAX;
    for (int w = 0; w < VG__SHM_WAITERS; w++) {
        vg__shm_waiter_t *x = &r->h.waiters[w];
        if (!x->pid)
            continue;
        if (x->ticket != ticket &&
            (now >= x->deadline_ns || !vg__shm_pid_alive(x->pid, x->start))) {
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

/* VRAMGUARD_WAIT_MS: waits in line for others to free. */
__attribute__((noinline)) static int wait_reserve(vg__budget_t *b, uint64_t n,
                                                  int wait_ms)
{
    vg__shm_t *r = b->shared;
    int d = b->shared_dev, rc = VG_ENOMEM;
    uint64_t ticket, deadline = vg__mono_ns() + (uint64_t)wait_ms * 1000000ull;
    if (vg__shm_lock(r) != VG_OK)
        return VG_ENOMEM;
    int w = waiter_add(r, deadline, &ticket);
    vg__shm_unlock(r);
    while (w >= 0) {
        sleep_ns(WAIT_POLL_NS);
        if (vg__shm_lock(r) != VG_OK)
            return VG_ENOMEM;
        uint64_t now = vg__mono_ns();
        bool timed_out = now >= deadline;
        if (!timed_out && at_head(r, ticket, now))
            rc = reserve_locked(r, d, n, QUIET_REFUSAL);
        bool done = rc == VG_OK || timed_out;
        if (done && r->h.waiters[w].ticket == ticket)
            memset(&r->h.waiters[w], 0, sizeof r->h.waiters[w]);
        if (done && rc != VG_OK)
            r->dev[d].refusals++;
        mirror(b, &r->dev[d]);
        vg__shm_unlock(r);
        if (done)
            break;
    }
    if (w < 0) { /* no room in line: refuse now */
        if (vg__shm_lock(r) == VG_OK) {
            r->dev[d].refusals++;
            vg__shm_unlock(r);
        }
    }
    return rc;
}

int vg__shared_reserve(vg__budget_t *b, uint64_t n)
{
    vg__shm_t *r = b->shared;
    int wait_ms = vg__engine_settings()->wait_ms;
    if (vg__shm_lock(r) != VG_OK)
        return VG_ENOMEM;
    int rc = reserve_locked(r, b->shared_dev, n,
                            wait_ms ? QUIET_REFUSAL : COUNT_REFUSAL);
    mirror(b, &r->dev[b->shared_dev]);
    vg__shm_unlock(r);
    if (vg__unlikely(rc != VG_OK && wait_ms > 0))
        rc = wait_reserve(b, n, wait_ms);
    return rc;
}

/* Gives back n bytes this process holds. Clamped to its slot's share, so
 * the invariant holds even for a forked child freeing its parent's memory. */
void vg__shared_release(vg__budget_t *b, uint64_t n)
{
    vg__shm_t *r = b->shared;
    int d = b->shared_dev;
    if (vg__shm_lock(r) != VG_OK)
        return;
    int s = slot_of_self(r);
    if (s >= 0) {
        uint64_t *mine = &r->slot[s].used[d];
        uint64_t take = n < *mine ? n : *mine;
        *mine -= take;
        r->dev[d].used -= take < r->dev[d].used ? take : r->dev[d].used;
        vg__shm_level_update(&r->dev[d]);
    }
    mirror(b, &r->dev[d]);
    vg__shm_unlock(r);
}

void vg__shared_force(vg__budget_t *b, uint64_t n)
{
    vg__shm_t *r = b->shared;
    int d = b->shared_dev;
    if (vg__shm_lock(r) != VG_OK)
        return;
    int s = slot_of_self(r);
    if (s >= 0) {
        r->slot[s].used[d] += n;
        r->dev[d].used += n;
        if (r->dev[d].used > r->dev[d].peak)
            r->dev[d].peak = r->dev[d].used;
        vg__shm_level_update(&r->dev[d]);
    }
    mirror(b, &r->dev[d]);
    vg__shm_unlock(r);
}

void vg__shared_set_limit(vg__budget_t *b, uint64_t limit)
{
    vg__shm_t *r = b->shared;
    if (vg__shm_lock(r) != VG_OK)
        return;
    r->dev[b->shared_dev].limit = limit;
    vg__shm_level_update(&r->dev[b->shared_dev]);
    mirror(b, &r->dev[b->shared_dev]);
    vg__shm_unlock(r);
}

void vg__shared_read(const vg__budget_t *b, uint64_t *limit, uint64_t *used)
{
    vg__shm_t *r = b->shared;
    if (vg__shm_lock(r) != VG_OK)
        return;
    *limit = r->dev[b->shared_dev].limit;
    *used = r->dev[b->shared_dev].used;
    vg__shm_unlock(r);
}

/* The slot's live-allocation count, for `vramguard status`. Only the
 * slot's owner writes it (a reaped slot's owner is dead; a new owner
 * initialises its slot under the lock), so an atomic add without the lock
 * is enough: no second lock round trip on every allocation and free. */
void vg__shared_live(const vg__budget_t *b, int delta)
{
    vg__shm_t *r = b->shared;
    int s = slot_of_self(r);
    if (s < 0)
        return;
    uint64_t *live = &r->slot[s].live[b->shared_dev];
    __atomic_fetch_add(live, (uint64_t)(int64_t)delta, __ATOMIC_RELAXED);
}

uint64_t vg__shared_self_used(const vg__budget_t *b)
{
    vg__shm_t *r = b->shared;
    int s = slot_of_self(r);
    if (s < 0)
        return 0;
    /* Only this process writes its slot's use (under the lock); an atomic
     * read of our own figure needs no lock. */
    return __atomic_load_n(&r->slot[s].used[b->shared_dev], __ATOMIC_RELAXED);
}

void vg__shared_overhead(const vg__budget_t *b, uint64_t bytes)
{
    vg__shm_t *r = b->shared;
    if (vg__shm_lock(r) != VG_OK)
        return;
    int s = slot_of_self(r);
    if (s >= 0)
        r->slot[s].overhead[b->shared_dev] = bytes;
    vg__shm_unlock(r);
}
