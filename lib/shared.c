/*
 * shared.c — one budget for many processes: the engine's side of a region
 * in /dev/shm that every process with the same VRAMGUARD_SHARED name maps
 * (shared_region.c creates and attaches it; shared_lock.c is its lock;
 * shared_reap.c checks liveness and gives the dead's share back).
 *
 * The region holds, per device, the limit, the use of all processes, the
 * peak, refusals and the pressure level; per process a slot (pid, start
 * time, command, use, live allocations, overhead). Every change happens
 * under one robust, process-shared mutex, so "check, then add" is atomic
 * across processes and threads. An uncontended lock costs ~20-40 ns (its
 * fast path is inline in vg_shared.h); the driver call it guards costs
 * microseconds. Contended, it is waited for in slices, never for ever
 * (shared_lock.c).
 *
 * Looking for dead processes reads /proc for every slot (about 1 ms for a
 * full table): it happens outside the lock, at most once a second after a
 * charge and once every VG__SHM_REFUSAL_REAP_NS before refusals.
 *
 * Here: this process's attachment and slot, binding a device budget to
 * the region's entry, and reserve, release, force and limit changes under
 * the lock. A refused reserve with VRAMGUARD_WAIT_MS set waits in line in
 * shared_wait.c.
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "vg_account.h"
#include "vg_driver.h"
#include "vg_shared.h"

#define REAP_INTERVAL_NS 1000000000ull /* at most one scan a second */

/* ------------------------------------------------- the engine's side */

/* This process's attachment. `region` and `my_start` are written under
 * attach_once, and `region` again by a bind (resolve lock held) that finds
 * it removed before this process had a slot in it (reattach); `my_slot`
 * only under the region lock (read without it by this process's own
 * threads, hence atomic). */
static pthread_once_t attach_once = PTHREAD_ONCE_INIT;
static vg__shm_t *region;
static int attach_status = VG_ENOTFOUND;
static char attach_error[512];
static char region_path[4200];
static _Atomic int my_slot = -1;
static uint64_t my_start;
static _Atomic bool looked;     /* this process has reaped before a refusal */
static _Atomic bool region_bad; /* a later check found the body corrupt */
static _Atomic bool said_stuck, said_bad, said_removed;

/* The region lock, saying once per process why it could not be had. */
int vg__shared_lock(vg__shm_t *r)
{
    int rc = vg__shm_lock(r);
    if (vg__unlikely(rc != VG_OK) &&
        !atomic_exchange_explicit(&said_stuck, true, memory_order_relaxed))
        vg__log("shared region %s is stuck: its lock has been held for over %llu s by "
                "thread %d (stopped, frozen or hung); refusing allocations (fail closed)",
                region_path, (unsigned long long)(VG__SHM_LOCK_WAIT_NS / 1000000000ull),
                (int)vg__shm_lock_owner(r));
    return rc;
}

/* Under the lock: a periodic look at the whole body; a corrupt one turns
 * every later reserve into a refusal. */
static void check_body(const vg__shm_t *r)
{
    char why[256];
    if (vg__shm_validate_body(r, why, sizeof why) == VG_OK)
        return;
    atomic_store_explicit(&region_bad, true, memory_order_relaxed);
    if (!atomic_exchange_explicit(&said_bad, true, memory_order_relaxed))
        vg__log("shared region %s: %s; refusing allocations (fail closed)", region_path, why);
}

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
 * again in a forked child, whose parent's slot is not its own). A claimed
 * slot is zeroed first: whatever a previous owner left is not ours. -1
 * when every slot is taken by a live process. A slot that already carries
 * this pid and start time at the first claim is a program this process ran
 * before an exec: its memory went with that image, so its share goes back. */
static int slot_of_self(vg__shm_t *r)
{
    int mine = atomic_load_explicit(&my_slot, memory_order_relaxed);
    if (vg__likely(mine >= 0))
        return mine;
    if (vg__unlikely(r->h.removed)) { /* no share in it (vg__shm_retire) */
        if (!atomic_exchange_explicit(&said_removed, true, memory_order_relaxed))
            vg__log("shared region %s was removed (vramguard budget --remove); refusing "
                    "allocations (fail closed)", region_path);
        return -1;
    }
    int32_t pid = (int32_t)getpid();
    for (int s = 0; s < VG__SHM_SLOTS; s++)
        if (r->slot[s].pid == pid && r->slot[s].start == my_start)
            vg__shm_slot_drop(r, s);
    for (int pass = 0; pass < 2; pass++) {
        for (int s = 0; s < VG__SHM_SLOTS; s++) {
            if (r->slot[s].pid != 0)
                continue;
            vg__shm_slot_t *sl = &r->slot[s];
            memset(sl, 0, sizeof *sl);
            sl->pid = (int32_t)getpid();
            sl->uid = (uint32_t)geteuid();
            sl->start = my_start;
            own_cmd(sl->cmd);
            atomic_store_explicit(&my_slot, s, memory_order_relaxed);
            return s;
        }
        /* full: drop the dead, then look again (rare: 256 processes) */
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
    atomic_store_explicit(&my_slot, -1, memory_order_relaxed);
    atomic_store_explicit(&looked, false, memory_order_relaxed);
    my_start = vg__shm_proc_start(getpid());
}

uint64_t vg__shared_my_start(void)
{
    return my_start;
}

/* A normal exit gives the share back at once. */
__attribute__((destructor)) static void release_at_exit(void)
{
    vg__shm_t *r = region;
    if (!r || vg__shared_lock(r) != VG_OK)
        return;
    int s = atomic_load_explicit(&my_slot, memory_order_relaxed);
    if (s >= 0 && r->slot[s].pid == (int32_t)getpid())
        vg__shm_slot_drop(r, s);
    atomic_store_explicit(&my_slot, -1, memory_order_relaxed);
    vg__shm_unlock(r);
}

/* The region's path from the settings. HAMi's shared cache must be an
 * absolute path (a relative one would land in /dev/shm under a made-up
 * name); VRAMGUARD_SHARED's name was checked when it was parsed. */
static int region_path_of(const vg__settings_t *st)
{
    if (!st->shared[0] && st->shared_cache[0] != '/') {
        snprintf(attach_error, sizeof attach_error, "CUDA_DEVICE_MEMORY_SHARED_CACHE='%.300s' "
                 "is not an absolute path", st->shared_cache);
        return VG_ESETTING;
    }
    const char *name = st->shared[0] ? st->shared : st->shared_cache;
    size_t plen = strlen(VG__SHM_PREFIX);
    char why[VG__REASON_LEN];
    if (!st->shared[0] && !strncmp(name, VG__SHM_PREFIX, plen) &&
        vg__name_check(name + plen, (vg__err_t){why, sizeof why}) != VG_OK) {
        /* A region there is listed by `vramguard status`: its name obeys
         * VRAMGUARD_SHARED's rules, as if it had been made by that name. */
        snprintf(attach_error, sizeof attach_error, "CUDA_DEVICE_MEMORY_SHARED_CACHE='%.200s': "
                 "the region name after " VG__SHM_PREFIX " is not valid: %s", name, why);
        return VG_ESETTING;
    }
    if (vg__shm_path(name, region_path, sizeof region_path) != VG_OK) {
        snprintf(attach_error, sizeof attach_error, "shared region name too long");
        return VG_EINVAL;
    }
    return VG_OK;
}

static void attach(void)
{
    const vg__settings_t *st = vg__engine_settings();
    if ((attach_status = region_path_of(st)) != VG_OK)
        return;
    my_start = vg__shm_proc_start(getpid());
    attach_status = vg__shm_open(region_path, st->shared_create ? VG__SHM_CREATE : VG__SHM_ATTACH,
                                 st->shared_group == VG__SHARED_GROUP, &region,
                                 attach_error, sizeof attach_error);
    if (attach_status == VG_ENOTFOUND && !st->shared_create)
        snprintf(attach_error, sizeof attach_error,
                 "shared region %.300s is gone and VRAMGUARD_SHARED_CREATE=0 forbids making "
                 "it (the vramguard run that made it has ended)", region_path);
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
void vg__shared_mirror(vg__budget_t *b, const vg__shm_device_t *e)
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

/* Under the lock: a process's own budget only tightens the entry's limit
 * (a budgeted tree cannot be escaped by asking for more). Returns the
 * limit the entry had. */
static uint64_t tighten(vg__shm_device_t *e, uint64_t limit)
{
    uint64_t old = e->limit;
    if (limit < old && limit < VG__SHM_LIMIT_MAX) { /* past 1 EiB: no limit at all */
        e->limit = limit;
        vg__shm_level_update(e);
    }
    return old;
}

static void say_limit(int device, uint64_t old, uint64_t limit)
{
    char a[32], c[32];
    if (limit == VG__UNLIMITED || old == VG__UNLIMITED || old == limit)
        return;
    if (limit < old)
        vg__log("shared budget %s, device %d: limit changed from %s to %s by this "
                "process's VRAMGUARD_BUDGET", region_path, device,
                vg__fmt_bytes(old, a, sizeof a), vg__fmt_bytes(limit, c, sizeof c));
    else
        vg__log("shared budget %s, device %d: this process's VRAMGUARD_BUDGET of %s is "
                "larger than the shared limit, which stays %s (budgets only tighten)",
                region_path, device, vg__fmt_bytes(limit, c, sizeof c),
                vg__fmt_bytes(old, a, sizeof a));
}

/* The region was removed (vg__shm_retire) between this process's open and
 * its first claim: opens what is at the path now, made afresh if the
 * settings allow. The old mapping stays (a racing reader may hold it);
 * nothing of this process is in it. Under the resolve lock (bind). */
static bool reattach(void)
{
    const vg__settings_t *st = vg__engine_settings();
    vg__shm_t *fresh = NULL;
    attach_status = vg__shm_open(region_path, st->shared_create ? VG__SHM_CREATE : VG__SHM_ATTACH,
                                 st->shared_group == VG__SHARED_GROUP, &fresh,
                                 attach_error, sizeof attach_error);
    if (attach_status != VG_OK)
        return false;
    region = fresh;
    return true;
}

/* Under the lock: true when the region was removed and this process has
 * no slot in it (with one, the removal would have been refused). */
static bool removed_under_us(const vg__shm_t *r)
{
    return r->h.removed && atomic_load_explicit(&my_slot, memory_order_relaxed) < 0;
}

void vg__shared_bind(vg__budget_t *b, int device, uint64_t limit)
{
    pthread_once(&attach_once, attach);
    if (attach_status != VG_OK)
        return bind_fail(b, device, attach_error);
    char uuid[48] = "";
    if (vg__device_uuid(device, uuid) != VG_OK)
        uuid[0] = '\0';
    for (int tries = 0;; tries++) {
        if (vg__shared_lock(region) != VG_OK)
            return bind_fail(b, device, "cannot lock the shared region");
        if (vg__likely(!removed_under_us(region)))
            break;
        vg__shm_unlock(region);
        if (tries == 2)
            return bind_fail(b, device, "the shared region keeps being removed "
                                        "(vramguard budget --remove)");
        if (!reattach())
            return bind_fail(b, device, attach_error);
    }
    int e = entry_of(region, device, uuid);
    int slot = slot_of_self(region);
    uint64_t old = VG__UNLIMITED;
    if (e >= 0 && slot >= 0) {
        old = tighten(&region->dev[e], limit);
        b->shared_dev = e;
        vg__shared_mirror(b, &region->dev[e]);
    }
    vg__shm_unlock(region);
    if (e < 0 || slot < 0)
        return bind_fail(b, device, e < 0 ? "the shared region has no free "
                                            "device entry"
                                          : "the shared region has no free "
                                            "process slot (256 in use)");
    b->shared = region;
    say_limit(device, old, limit);
}

/* Use stays below VG__SHM_LIMIT_MAX even with no limit: a body holding
 * more reads as corrupt to every process (no device has an exbibyte). */
static bool fits(const vg__shm_device_t *e, uint64_t n)
{
    if (e->used >= VG__SHM_LIMIT_MAX || n >= VG__SHM_LIMIT_MAX - e->used)
        return false;
    return e->used <= e->limit && n <= e->limit - e->used;
}

typedef enum { COUNT_REFUSAL, QUIET_REFUSAL } refusal_t;

/* Under the lock: charges n to the entry and to this process's slot. */
int vg__shared_charge_locked(vg__shm_t *r, int d, uint64_t n)
{
    int s = slot_of_self(r);
    vg__shm_device_t *e = &r->dev[d];
    if (vg__unlikely(s < 0 || atomic_load_explicit(&region_bad, memory_order_relaxed)))
        return VG_ENOMEM;
    if (!fits(e, n))
        return VG_ENOMEM;
    if (vg__shared_test_pause)
        vg__shared_test_pause(); /* tests only: see the header */
    r->slot[s].used[d] += n;
    e->used += n;
    if (e->used > e->peak)
        e->peak = e->used;
    vg__shm_level_update(e);
    return VG_OK;
}

/* Under the lock: whether to look for the dead now. After a charge, once a
 * second region-wide; before a refusal, once every VG__SHM_REFUSAL_REAP_NS
 * region-wide, and always at a process's first refusal (a newcomer must
 * find a holder that died a moment ago). Coarse clock: it only decides. */
static bool reap_wanted(vg__shm_t *r, int rc)
{
    uint64_t now = vg__mono_coarse_ns();
    if (vg__likely(rc == VG_OK))
        return vg__shm_reap_due(r, now, REAP_INTERVAL_NS);
    bool due = vg__shm_reap_due(r, now, VG__SHM_REFUSAL_REAP_NS);
    return !atomic_exchange_explicit(&looked, true, memory_order_relaxed) || due;
}

/* Drops the dead with the /proc reads outside the lock (a scan of every
 * slot costs about a millisecond: under the lock it stalled everyone),
 * then checks the body while holding it. */
__attribute__((noinline, cold)) void vg__shared_reap_outside(vg__shm_t *r)
{
    vg__shm_reap_list_t l;
    if (vg__shared_lock(r) != VG_OK)
        return;
    vg__shm_reap_collect(r, &l);
    vg__shm_unlock(r);
    vg__shm_reap_check(&l);
    if (vg__shared_lock(r) != VG_OK)
        return;
    vg__shm_reap_apply(r, &l);
    check_body(r);
    vg__shm_unlock(r);
}

/* One attempt; a refusal looks for the dead (when due) and tries again. */
static int reserve_once(vg__budget_t *b, uint64_t n, refusal_t count)
{
    vg__shm_t *r = b->shared;
    int d = b->shared_dev;
    for (int attempt = 0;; attempt++) {
        if (vg__shared_lock(r) != VG_OK)
            return VG_ENOMEM;
        int rc = vg__shared_charge_locked(r, d, n);
        bool reap = attempt == 0 && reap_wanted(r, rc);
        if (rc != VG_OK && !reap && count == COUNT_REFUSAL)
            r->dev[d].refusals++;
        vg__shared_mirror(b, &r->dev[d]);
        vg__shm_unlock(r);
        if (vg__likely(!reap))
            return rc;
        vg__shared_reap_outside(r);
        if (rc == VG_OK)
            return rc;
    }
}

int vg__shared_reserve(vg__budget_t *b, uint64_t n)
{
    int wait_ms = vg__engine_settings()->wait_ms;
    int rc = reserve_once(b, n, wait_ms ? QUIET_REFUSAL : COUNT_REFUSAL);
    if (vg__unlikely(rc != VG_OK && wait_ms > 0))
        rc = vg__shared_wait_reserve(b, n, wait_ms);
    return rc;
}

/* Gives back n bytes this process holds. Clamped to its slot's share, so
 * the invariant holds even for a forked child freeing its parent's memory. */
void vg__shared_release(vg__budget_t *b, uint64_t n)
{
    vg__shm_t *r = b->shared;
    int d = b->shared_dev;
    if (vg__shared_lock(r) != VG_OK)
        return;
    int s = slot_of_self(r);
    if (s >= 0) {
        uint64_t *mine = &r->slot[s].used[d];
        uint64_t take = n < *mine ? n : *mine;
        *mine -= take;
        r->dev[d].used -= take < r->dev[d].used ? take : r->dev[d].used;
        vg__shm_level_update(&r->dev[d]);
    }
    vg__shared_mirror(b, &r->dev[d]);
    vg__shm_unlock(r);
}

void vg__shared_force(vg__budget_t *b, uint64_t n)
{
    vg__shm_t *r = b->shared;
    int d = b->shared_dev;
    if (vg__shared_lock(r) != VG_OK)
        return;
    int s = slot_of_self(r);
    if (s >= 0) {
        r->slot[s].used[d] += n;
        r->dev[d].used += n;
        if (r->dev[d].used > r->dev[d].peak)
            r->dev[d].peak = r->dev[d].used;
        vg__shm_level_update(&r->dev[d]);
    }
    vg__shared_mirror(b, &r->dev[d]);
    vg__shm_unlock(r);
}

/* A process's own change of the shared limit (vg_budget_set and the like)
 * only tightens it too; `vramguard budget` (vg__shm_set_limit) may raise. */
void vg__shared_set_limit(vg__budget_t *b, uint64_t limit)
{
    vg__shm_t *r = b->shared;
    if (vg__shared_lock(r) != VG_OK)
        return;
    tighten(&r->dev[b->shared_dev], limit);
    vg__shared_mirror(b, &r->dev[b->shared_dev]);
    vg__shm_unlock(r);
}

void vg__shared_read(const vg__budget_t *b, uint64_t *limit, uint64_t *used)
{
    vg__shm_t *r = b->shared;
    if (vg__shared_lock(r) != VG_OK)
        return;
    *limit = r->dev[b->shared_dev].limit;
    *used = r->dev[b->shared_dev].used;
    vg__shm_unlock(r);
}

/* This process's slot, claimed under the lock when it has none yet (a
 * forked child before its first reserve). -1 when none can be had. */
static int my_slot_claimed(vg__shm_t *r)
{
    int s = atomic_load_explicit(&my_slot, memory_order_relaxed);
    if (vg__likely(s >= 0) || vg__shared_lock(r) != VG_OK)
        return s;
    s = slot_of_self(r);
    vg__shm_unlock(r);
    return s;
}

/* The slot's live-allocation count, for `vramguard status`. Only the
 * slot's owner writes it (a reaped slot's owner is dead; a new owner
 * zeroes its slot under the lock), so an atomic add without the lock is
 * enough: no second lock round trip on every allocation and free. */
void vg__shared_live(const vg__budget_t *b, int delta)
{
    vg__shm_t *r = b->shared;
    int s = my_slot_claimed(r);
    if (s < 0)
        return;
    uint64_t *live = &r->slot[s].live[b->shared_dev];
    __atomic_fetch_add(live, (uint64_t)(int64_t)delta, __ATOMIC_RELAXED);
}

uint64_t vg__shared_self_used(const vg__budget_t *b)
{
    vg__shm_t *r = b->shared;
    int s = atomic_load_explicit(&my_slot, memory_order_relaxed);
    if (s < 0)
        return 0; /* no slot yet: nothing charged to this process */
    /* Only this process writes its slot's use (under the lock); an atomic
     * read of our own figure needs no lock. */
    return __atomic_load_n(&r->slot[s].used[b->shared_dev], __ATOMIC_RELAXED);
}

void vg__shared_overhead(const vg__budget_t *b, uint64_t bytes)
{
    vg__shm_t *r = b->shared;
    if (vg__shared_lock(r) != VG_OK)
        return;
    int s = slot_of_self(r);
    if (s >= 0)
        r->slot[s].overhead[b->shared_dev] = bytes;
    vg__shm_unlock(r);
}
