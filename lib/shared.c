/*
 * shared.c — one budget for many processes: a fixed-layout region in
 * /dev/shm that every process with the same VRAMGUARD_SHARED name maps.
 *
 * The region holds, per device, the limit, the use of all processes, the
 * peak, refusals and the pressure level; per process a slot (pid, start
 * time, command, use, live allocations, overhead). Every change happens
 * under one robust, process-shared mutex, so "check, then add" is atomic
 * across processes and threads. An uncontended lock costs ~20-40 ns; the
 * driver call it guards costs microseconds.
 *
 * Invariant (under the lock): dev[d].used == the sum of slot[s].used[d] over
 * occupied slots. It is what makes crash recovery exact: a dead process's
 * share is its slot's used[], and a lock whose holder died (EOWNERDEAD) is
 * repaired by recomputing every sum from the live slots.
 *
 * Liveness is kill(pid, 0) (EPERM counts as alive) and the same start time
 * (field 22 of /proc/PID/stat), so a recycled pid is not mistaken for the
 * dead holder. Dead slots are reaped at most once a second on reserve and
 * always before a refusal; a normal exit releases its slot at once.
 *
 * Creation never exposes a half-built file: it is built under a temporary
 * name in the same folder and link(2)ed into place; the loser of a race
 * attaches the winner's. Attach checks owner, mode, size and the header
 * (vg__shm_validate, pure and fuzzed) before anything else is read.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "vg_internal.h"

#define REAP_INTERVAL_NS 1000000000ull /* at most one scan a second */
#define WAIT_POLL_NS 1000000L          /* a waiter looks again every 1 ms */

/* ------------------------------------------------ validation (pure) */

static int bad(char *err, size_t n, const char *why)
{
    if (err && n)
        snprintf(err, n, "%s", why);
    return VG_EINVAL;
}

int vg__shm_validate(const void *buf, size_t len, char *err, size_t errlen)
{
    vg__shm_header_t h;
    if (!buf || len < sizeof h)
        return bad(err, errlen, "too small to be a vramguard region");
    memcpy(&h, buf, sizeof h); /* no alignment assumed */
    if (h.magic != VG__SHM_MAGIC)
        return bad(err, errlen, "not a vramguard region (bad magic)");
    if (h.version != VG__SHM_VERSION)
        return bad(err, errlen, "region layout version differs from this "
                                "library's (upgrade every process, or use "
                                "another name)");
    if (h.header_size != sizeof(vg__shm_header_t) ||
        h.total_size != sizeof(vg__shm_t) || len != sizeof(vg__shm_t))
        return bad(err, errlen, "region size does not match its layout");
    if (h.device_count != VG__SHM_DEVICES || h.slot_count != VG__SHM_SLOTS ||
        h.waiter_count != VG__SHM_WAITERS || h.cmd_len != VG__SHM_CMD)
        return bad(err, errlen, "region counts do not match its layout");
    return VG_OK;
}

int vg__shm_check_file(const vg__shm_file_t *f, const vg__shm_who_t *who,
                       char *err, size_t errlen)
{
    unsigned perm = f->mode & 07777;
    if (!S_ISREG(f->mode)) {
        bad(err, errlen, "not a regular file");
        return VG_EDENIED;
    }
    if (f->size != sizeof(vg__shm_t)) {
        bad(err, errlen, "wrong size for a vramguard region");
        return VG_EINVAL;
    }
    bool group_ok = who->group && who->in_group && perm == 0660;
    if (f->uid != who->euid && !group_ok) {
        if (err && errlen)
            snprintf(err, errlen, "owned by uid %" PRIu32 ", not by you (uid "
                     "%" PRIu32 "); set VRAMGUARD_SHARED_GROUP=on on both "
                     "sides to share a 0660 region within a group",
                     f->uid, who->euid);
        return VG_EDENIED;
    }
    if (perm != 0600 && !(who->group && perm == 0660)) {
        if (err && errlen)
            snprintf(err, errlen, "mode %04o; a region must be 0600, or 0660 "
                     "with VRAMGUARD_SHARED_GROUP=on", perm);
        return VG_EDENIED;
    }
    return VG_OK;
}

int vg__shm_path(const char *name, char *out, size_t len)
{
    int n = name[0] == '/' ? snprintf(out, len, "%s", name)
                           : snprintf(out, len, VG__SHM_PREFIX "%s", name);
    return n > 0 && (size_t)n < len ? VG_OK : VG_EINVAL;
}

/* ------------------------------------------------------- liveness */

/* Field 22 (starttime, clock ticks since boot) of /proc/PID/stat; 0 when
 * the process is gone. The command may hold spaces and ')': skip to the
 * last ')'. */
static uint64_t proc_start(int pid)
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

static bool pid_alive(int32_t pid, uint64_t start)
{
    if (pid <= 0) /* never kill(0) or a group */
        return false;
    if (kill(pid, 0) != 0 && errno != EPERM)
        return false;
    uint64_t now = proc_start(pid);
    return now == 0 ? errno == EACCES : now == start;
}

bool vg__shm_slot_alive(const vg__shm_slot_t *s)
{
    return pid_alive(s->pid, s->start);
}

/* Inode of /proc/self/ns/pid: processes in other PID namespaces see other
 * pids, so their liveness checks would be wrong. 0 when unknown. */
static uint64_t pid_namespace(void)
{
    struct stat st;
    return stat("/proc/self/ns/pid", &st) == 0 ? (uint64_t)st.st_ino : 0;
}

/* --------------------------------------------------------- counting */

static void level_update(vg__shm_device_t *d)
{
    int cur = d->level;
    if (cur < VG_PRESSURE_LOW || cur > VG_PRESSURE_CRITICAL)
        cur = VG_PRESSURE_LOW;
    d->level = (int32_t)vg__pressure_for(d->used, d->limit, (vg_pressure_t)cur);
}

/* Drops slot s, handing its share back. */
static void slot_drop(vg__shm_t *r, int s)
{
    vg__shm_slot_t *sl = &r->slot[s];
    for (int d = 0; d < VG__SHM_DEVICES; d++) {
        uint64_t u = sl->used[d];
        r->dev[d].used -= u < r->dev[d].used ? u : r->dev[d].used;
        level_update(&r->dev[d]);
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
        level_update(&r->dev[d]);
    }
    r->h.generation++;
}

static bool alive_cb(const vg__shm_slot_t *s, void *ctx)
{
    (void)ctx;
    return vg__shm_slot_alive(s);
}

/* Under the lock: drops every slot whose process is gone. */
static void reap(vg__shm_t *r, uint64_t now)
{
    for (int s = 0; s < VG__SHM_SLOTS; s++)
        if (r->slot[s].pid != 0 && !vg__shm_slot_alive(&r->slot[s]))
            slot_drop(r, s);
    for (int w = 0; w < VG__SHM_WAITERS; w++)
        if (r->h.waiters[w].pid &&
            !pid_alive(r->h.waiters[w].pid, r->h.waiters[w].start))
            memset(&r->h.waiters[w], 0, sizeof r->h.waiters[w]);
    r->h.last_reap_ns = now;
}

/* ---------------------------------------------------- open and lock */

static int init_lock(vg__shm_t *r)
{
    pthread_mutexattr_t a;
    int rc = pthread_mutexattr_init(&a);
    if (rc == 0)
        rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    if (rc == 0)
        rc = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (rc == 0)
        rc = pthread_mutex_init(&r->h.lock.m, &a);
    pthread_mutexattr_destroy(&a);
    return rc;
}

/* Writes a fresh region into r (all devices unclaimed and unlimited). */
static int format(vg__shm_t *r)
{
    memset(r, 0, sizeof *r);
    r->h.version = VG__SHM_VERSION;
    r->h.header_size = sizeof r->h;
    r->h.total_size = sizeof *r;
    r->h.device_count = VG__SHM_DEVICES;
    r->h.slot_count = VG__SHM_SLOTS;
    r->h.waiter_count = VG__SHM_WAITERS;
    r->h.cmd_len = VG__SHM_CMD;
    r->h.creator_uid = (uint32_t)geteuid();
    r->h.pidns = pid_namespace();
    r->h.default_limit = VG__UNLIMITED;
    for (int d = 0; d < VG__SHM_DEVICES; d++) {
        r->dev[d].limit = VG__UNLIMITED;
        r->dev[d].ordinal = -1;
    }
    if (init_lock(r) != 0)
        return VG_ESYS;
    /* The magic last: a region is valid only once everything else is. */
    __atomic_store_n(&r->h.magic, VG__SHM_MAGIC, __ATOMIC_RELEASE);
    return VG_OK;
}

static int sys_fail(char *err, size_t n, const char *what, const char *path)
{
    if (err && n)
        snprintf(err, n, "%s %s: %s", what, path, strerror(errno));
    return VG_ESYS;
}

/* Builds a complete region under a temporary name beside `path`, then
 * links it into place. VG_OK also when another process won the race (the
 * caller then attaches theirs). */
static int create_region(const char *path, bool group, char *err, size_t n)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d.%" PRIu64, path, (int)getpid(),
             vg__mono_ns());
    mode_t mode = group ? 0660 : 0600;
    int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0)
        return sys_fail(err, n, "cannot create", tmp);
    int rc = VG_ESYS;
    void *m = MAP_FAILED;
    if (fchmod(fd, mode) != 0 || ftruncate(fd, sizeof(vg__shm_t)) != 0) {
        sys_fail(err, n, "cannot size", tmp);
        goto out;
    }
    m = mmap(NULL, sizeof(vg__shm_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        sys_fail(err, n, "cannot map", tmp);
        goto out;
    }
    if (format(m) != VG_OK) {
        snprintf(err, n, "cannot initialise the region lock");
        goto out;
    }
    if (link(tmp, path) != 0 && errno != EEXIST) {
        sys_fail(err, n, "cannot create", path);
        goto out;
    }
    rc = VG_OK;
out:
    if (m != MAP_FAILED)
        munmap(m, sizeof(vg__shm_t));
    unlink(tmp);
    close(fd);
    return rc;
}

static bool in_group(gid_t gid)
{
    if (getegid() == gid)
        return true;
    gid_t groups[256];
    int n = getgroups(256, groups);
    for (int i = 0; i < n; i++)
        if (groups[i] == gid)
            return true;
    return false;
}

/* Checks and maps an open region file. */
static int map_region(int fd, const char *path, bool group, vg__shm_t **out,
                      char *err, size_t n)
{
    struct stat st;
    char why[256];
    if (fstat(fd, &st) != 0)
        return sys_fail(err, n, "cannot stat", path);
    vg__shm_file_t f = {st.st_mode, st.st_uid, st.st_gid, (uint64_t)st.st_size};
    vg__shm_who_t who = {(uint32_t)geteuid(), group, in_group(st.st_gid)};
    int rc = vg__shm_check_file(&f, &who, why, sizeof why);
    if (rc != VG_OK) {
        snprintf(err, n, "refusing shared region %s: %s", path, why);
        return rc;
    }
    void *m = mmap(NULL, sizeof(vg__shm_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED)
        return sys_fail(err, n, "cannot map", path);
    rc = vg__shm_validate(m, sizeof(vg__shm_t), why, sizeof why);
    if (rc == VG_OK && ((vg__shm_t *)m)->h.pidns != pid_namespace()) {
        snprintf(why, sizeof why, "created in another PID namespace (its "
                 "processes' liveness cannot be checked from here)");
        rc = VG_EDENIED;
    }
    if (rc != VG_OK) {
        snprintf(err, n, "refusing shared region %s: %s", path, why);
        munmap(m, sizeof(vg__shm_t));
        return rc;
    }
    *out = m;
    return VG_OK;
}

int vg__shm_open(const char *path, vg__shm_open_mode_t mode, bool group,
                 vg__shm_t **out, char *err, size_t errlen)
{
    for (int attempt = 0; attempt < 3; attempt++) {
        int fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
        if (fd >= 0) {
            int rc = map_region(fd, path, group, out, err, errlen);
            close(fd);
            return rc;
        }
        if (errno == ELOOP)
            return snprintf(err, errlen, "refusing shared region %s: it is a "
                            "symbolic link", path), VG_EDENIED;
        if (errno != ENOENT)
            return sys_fail(err, errlen, "cannot open", path);
        if (mode != VG__SHM_CREATE) {
            snprintf(err, errlen, "no shared region %s", path);
            return VG_ENOTFOUND;
        }
        int rc = create_region(path, group, err, errlen);
        if (rc != VG_OK)
            return rc;
    }
    snprintf(err, errlen, "%s keeps disappearing", path);
    return VG_ESYS;
}

void vg__shm_close(vg__shm_t *r)
{
    if (r)
        munmap(r, sizeof *r);
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
        level_update(&r->dev[d]);
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
        reap(r, vg__mono_ns()); /* full: drop the dead, then look again */
    }
    return -1;
}

static void on_fork_child(void)
{
    my_slot = -1;
    my_start = proc_start(getpid());
}

/* A normal exit gives the share back at once. */
__attribute__((destructor)) static void release_at_exit(void)
{
    vg__shm_t *r = region;
    if (!r || vg__shm_lock(r) != VG_OK)
        return;
    if (my_slot >= 0 && r->slot[my_slot].pid == (int32_t)getpid())
        slot_drop(r, my_slot);
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
    my_start = proc_start(getpid());
    pthread_atfork(NULL, NULL, on_fork_child);
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
        level_update(e);
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
        level_update(&region->dev[e]);
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
        reap(r, now);
    if (!fits(e, n)) {
        reap(r, now); /* a dead holder's share, before saying no */
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
    level_update(e);
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
            (now >= x->deadline_ns || !pid_alive(x->pid, x->start))) {
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
        level_update(&r->dev[d]);
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
        level_update(&r->dev[d]);
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
    level_update(&r->dev[b->shared_dev]);
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
