/*
 * vg_shared.h — a budget shared by many processes: the region's binary
 * layout, which is an ABI (every process that attaches, and the CLI that
 * reads it, must agree on it: change it only with VG__SHM_VERSION), and the
 * code that opens, reaps and charges it (shared_region.c, shared_reap.c,
 * shared_lock.c, shared.c, shared_wait.c). No CUDA.
 */
#ifndef VG_SHARED_H
#define VG_SHARED_H

#include <pthread.h>

#include "vg_budget.h"

/* ---------- shared_region.c, shared_reap.c, shared.c, shared_wait.c */

/* A budget shared by every process that names the same region
 * (VRAMGUARD_SHARED=NAME -> /dev/shm/vramguard.NAME, or HAMi's
 * CUDA_DEVICE_MEMORY_SHARED_CACHE=PATH). The layout is fixed: after
 * vg__shm_validate() accepts a region, every index is bounded by the
 * constants below, never by a count read from the file. Every field below
 * the header's magic is read and written under the header's robust,
 * process-shared mutex (the CLI copies a snapshot under it), which no one
 * waits for longer than VG__SHM_LOCK_WAIT_NS. */
#define VG__SHM_MAGIC 0x314d485347524756ull /* "VGRGSHM1" */
#define VG__SHM_VERSION 1u
#define VG__SHM_DEVICES 64
#define VG__SHM_SLOTS 256
#define VG__SHM_WAITERS 64
#define VG__SHM_CMD 64
#define VG__SHM_PREFIX "/dev/shm/vramguard."

_Static_assert(VG__SHM_DEVICES == VG__MAX_DEVICES,
               "a region has one entry per engine device");

typedef struct vg__shm_device {
    uint64_t limit;     /* VG__UNLIMITED when none */
    uint64_t used;      /* sum of the live slots' used[] for this entry */
    uint64_t peak;      /* highest `used` ever reserved */
    uint64_t refusals;
    int32_t level;      /* vg_pressure_t */
    int32_t ordinal;    /* the CUDA ordinal of the first process; -1 free */
    char uuid[48];      /* "GPU-..." when known: the entry's key */
} vg__shm_device_t;

typedef struct vg__shm_slot {
    int32_t pid;        /* 0: free */
    uint32_t uid;
    uint64_t start;     /* field 22 of /proc/PID/stat: pid + start = identity */
    char cmd[VG__SHM_CMD];
    uint64_t used[VG__SHM_DEVICES];     /* bytes charged, overhead included */
    uint64_t live[VG__SHM_DEVICES];     /* live allocations */
    uint64_t overhead[VG__SHM_DEVICES]; /* memory no call shows */
} vg__shm_slot_t;

/* A request waiting for memory (VRAMGUARD_WAIT_MS): the live waiter with
 * the smallest ticket is the only one that may retry (first come, first
 * served); dead or timed-out ones are dropped. */
typedef struct vg__shm_waiter {
    int32_t pid;        /* 0: free */
    int32_t pad;
    uint64_t start;
    uint64_t ticket;
    uint64_t deadline_ns; /* CLOCK_MONOTONIC (system-wide) */
} vg__shm_waiter_t;

typedef struct vg__shm_header {
    uint64_t magic;
    uint32_t version;
    uint32_t header_size;  /* sizeof(vg__shm_header_t) */
    uint64_t total_size;   /* sizeof(vg__shm_t) */
    uint32_t device_count, slot_count, waiter_count, cmd_len;
    uint32_t creator_uid;
    uint32_t removed;      /* 1: `vramguard budget NAME --remove` unlinked it
                            * (set under the lock): no process claims a slot
                            * in it, so nobody lives on in a budget a new
                            * region of the same name no longer sees */
    uint64_t pidns;        /* inode of the creator's PID namespace */
    uint64_t default_limit; /* for device entries not claimed yet */
    uint64_t last_reap_ns; /* CLOCK_MONOTONIC */
    uint64_t generation;   /* bumped whenever a slot is dropped */
    uint64_t ticket_next;
    union {
        pthread_mutex_t m; /* robust, process-shared */
        unsigned char bytes[64];
    } lock;
    vg__shm_waiter_t waiters[VG__SHM_WAITERS];
} vg__shm_header_t;

typedef struct vg__shm {
    vg__shm_header_t h;
    vg__shm_device_t dev[VG__SHM_DEVICES];
    vg__shm_slot_t slot[VG__SHM_SLOTS];
} vg__shm_t;

/* Under the lock: an entry's pressure level from its use and limit (a
 * garbled level counts as low). Inline: every shared reserve runs it. */
static inline void vg__shm_level_update(vg__shm_device_t *d)
{
    int cur = d->level;
    if (cur < VG_PRESSURE_LOW || cur > VG_PRESSURE_CRITICAL)
        cur = VG_PRESSURE_LOW;
    d->level = (int32_t)vg__pressure_for(d->used, d->limit, (vg_pressure_t)cur);
}

/* shared_region.c: the region's file (path, create, attach, checks). */

/* Checks that buf[0..len) is a region of this layout: length, magic,
 * version, header size, total size and every count, then the body (as
 * vg__shm_validate_body). Pure; reads nothing past len. VG_EINVAL with a
 * reason in err otherwise. */
int vg__shm_validate(const void *buf, size_t len, char *err, size_t errlen);
/* Checks a region's body, whose header is valid, against the invariants
 * every process keeps under the lock: each claimed device entry has a
 * well-formed key (an ordinal below VG__SHM_DEVICES; a UUID of
 * [A-Za-z0-9-], NUL-padded; no two entries with one key), a sane limit
 * (VG__UNLIMITED or below VG__SHM_LIMIT_MAX), a valid level, and a use
 * equal to the sum of the occupied slots' use, at most its peak; free
 * entries and free slots hold no use; no pid is negative. A region that
 * fails is corrupt and must be refused (fail closed): a process that
 * trusted it could find no entry of its own and claim an unlimited one.
 * Pure; the caller holds the lock or owns the copy. */
#define VG__SHM_LIMIT_MAX (1ull << 60) /* 1 EiB: no device comes near */
int vg__shm_validate_body(const vg__shm_t *r, char *err, size_t errlen);

/* Checks a region file's stat facts: a regular file of exactly the
 * region's size, mode 0600 (or 0660 when `group` and the caller is in the
 * file's group), owned by `euid`, or, only for a 0660 region with `group`
 * set, by anyone whose group the caller is in. Pure. */
typedef struct vg__shm_file {
    unsigned mode;      /* st_mode */
    uint32_t uid, gid;
    uint64_t size;
} vg__shm_file_t;
typedef struct vg__shm_who {
    uint32_t euid;
    bool group;         /* VRAMGUARD_SHARED_GROUP=on */
    bool in_group;      /* the caller is in the file's group */
} vg__shm_who_t;
int vg__shm_check_file(const vg__shm_file_t *f, const vg__shm_who_t *who,
                       char *err, size_t errlen);

/* The region's path for a name ("/dev/shm/vramguard.NAME"); a name that
 * starts with '/' is taken as the path itself (HAMi's shared cache). */
int vg__shm_path(const char *name, char *out, size_t len);

typedef enum vg__shm_open_mode {
    VG__SHM_ATTACH = 0, /* an existing region only */
    VG__SHM_CREATE,     /* create it when missing (linked into place whole) */
} vg__shm_open_mode_t;

/* Maps the region at `path`, checked as above (the body under the lock).
 * Out: *out. VG_ENOTFOUND when missing (ATTACH), VG_EDENIED for a foreign
 * or badly permissioned file, VG_EINVAL for a corrupt one, VG_ESYS
 * otherwise (a stuck lock among them); one line in err. */
int vg__shm_open(const char *path, vg__shm_open_mode_t mode, bool group,
                 vg__shm_t **out, char *err, size_t errlen);
void vg__shm_close(vg__shm_t *r);

/* shared_reap.c: liveness and giving the dead's share back. */

/* Field 22 (starttime, clock ticks since boot) of /proc/PID/stat: with
 * the pid, a process's identity. 0 when the process is gone. */
uint64_t vg__shm_proc_start(int pid);
/* Whether `pid` is alive with that start time (kill(pid, 0), EPERM counts
 * as alive). Never true for pid <= 0. */
bool vg__shm_pid_alive(int32_t pid, uint64_t start);
/* Whether thread `tid` (as a lock word names it) exists and is not a
 * zombie. Never true for tid <= 0. */
bool vg__shm_tid_alive(int32_t tid);
/* Whether the slot's process is alive (kill(pid, 0), EPERM counts as
 * alive, and the same start time). */
bool vg__shm_slot_alive(const vg__shm_slot_t *s);
/* Under the lock: drops slot s, handing its share back. */
void vg__shm_slot_drop(vg__shm_t *r, int s);
/* Recomputes every device's `used` as the sum over slots that `alive`
 * accepts, dropping the others. Pure but for `alive`. */
typedef bool (*vg__shm_alive_fn)(const vg__shm_slot_t *s, void *ctx);
void vg__shm_recount(vg__shm_t *r, vg__shm_alive_fn alive, void *ctx);
/* Under the lock: drops every slot and waiter whose process is gone and
 * records `now` (CLOCK_MONOTONIC ns) as the last reap. Reads /proc for
 * every occupied slot: for rare paths only (a full slot table). */
void vg__shm_reap(vg__shm_t *r, uint64_t now);

/* Reaping in three steps, so that the /proc reads happen outside the lock:
 * under it, vg__shm_reap_due() decides (and claims the reap for `now`) and
 * vg__shm_reap_collect() copies who is registered; without it,
 * vg__shm_reap_check() keeps only the dead; under it again,
 * vg__shm_reap_apply() drops those whose slot or waiter still holds the
 * same pid and start time. */
typedef struct vg__shm_reap_entry {
    int16_t index;   /* slot or waiter index */
    bool waiter;
    int32_t pid;
    uint64_t start;
} vg__shm_reap_entry_t;
typedef struct vg__shm_reap_list {
    int n;
    vg__shm_reap_entry_t e[VG__SHM_SLOTS + VG__SHM_WAITERS];
} vg__shm_reap_list_t;
/* Whether `interval_ns` has passed since the last reap; if so, `now`
 * becomes the last reap. */
bool vg__shm_reap_due(vg__shm_t *r, uint64_t now, uint64_t interval_ns);
void vg__shm_reap_collect(const vg__shm_t *r, vg__shm_reap_list_t *l);
void vg__shm_reap_check(vg__shm_reap_list_t *l);
void vg__shm_reap_apply(vg__shm_t *r, const vg__shm_reap_list_t *l);

/* shared_lock.c: the region's lock. */

/* Takes the region lock, repairing the region when its last holder died
 * (EOWNERDEAD: every device's use is recomputed from the live slots).
 * Never waits for ever: a lock word naming a thread that no longer runs
 * (a stale or forged owner) is marked dead the way the kernel marks a
 * robust lock whose owner exited, and taken; one held by a live thread
 * for more than VG__SHM_LOCK_WAIT_NS (stopped with SIGSTOP, frozen, in a
 * debugger) gives VG_ESYS: the caller fails closed and says the region is
 * stuck (vg__shm_lock_owner names the holder). */
#define VG__SHM_LOCK_WAIT_NS 1000000000ull
/* The lock when the trylock did not succeed (rc is its answer). */
int vg__shm_lock_contended(vg__shm_t *r, int rc);
static inline int vg__shm_lock(vg__shm_t *r)
{
    int rc = pthread_mutex_trylock(&r->h.lock.m);
    if (vg__likely(rc == 0))
        return VG_OK;
    return vg__shm_lock_contended(r, rc);
}
/* The thread id the lock word names as holder (0: none). A racy read, for
 * messages. */
int32_t vg__shm_lock_owner(const vg__shm_t *r);
void vg__shm_unlock(vg__shm_t *r);
/* Under the lock: copies the region into *copy. */
int vg__shm_snapshot(vg__shm_t *r, vg__shm_t *copy);
/* Under the lock: sets the limit of one entry (dev >= 0) or of every
 * entry and the default for new ones (dev < 0); levels are recomputed. The
 * one way to raise a shared limit (`vramguard budget`). VG_EINVAL for a
 * device past the table or a limit of VG__SHM_LIMIT_MAX or more (but
 * VG__UNLIMITED). */
int vg__shm_set_limit(vg__shm_t *r, int dev, uint64_t limit);
/* `vramguard budget NAME --remove`: under the lock, counts the live
 * processes with a slot in r (reading /proc: slow, for this rare command
 * only) into *live and, when there are none, marks r removed and unlinks
 * `path` before letting go. A process that opened the file just before
 * then finds the mark where it would claim its first slot, and attaches
 * afresh (shared.c): checking and unlinking apart, it would have lived on
 * in the old region beside a new one of the same name, two budgets where
 * there should be one. VG_EDENIED with *live > 0; VG_ESYS when the lock
 * cannot be had (*live = -1) or the unlink fails (errno set; r unmarked). */
int vg__shm_retire(vg__shm_t *r, const char *path, int *live);

/* The engine's side. vg__shared_bind() attaches this process to the
 * region named by the settings (once), claims a slot, finds or claims the
 * entry of `device` (by UUID), applies `limit` when it is explicit (not
 * VG__UNLIMITED: last writer wins, one stderr line when it changes another
 * value), and points `b` at it. On failure `b` stays per-process with a
 * limit of 0 (fail closed) and one line says why. */
void vg__shared_bind(vg__budget_t *b, int device, uint64_t limit);
/* fork.c's child step: the parent's slot is not the child's. */
void vg__shared_postfork_child(void);
/* The budget.c operations for a budget with b->shared set. */
int vg__shared_reserve(vg__budget_t *b, uint64_t n);
void vg__shared_release(vg__budget_t *b, uint64_t n);
void vg__shared_force(vg__budget_t *b, uint64_t n);
void vg__shared_set_limit(vg__budget_t *b, uint64_t limit);
/* Fresh limit and use of the region's entry (under the lock). */
void vg__shared_read(const vg__budget_t *b, uint64_t *limit, uint64_t *used);
/* Per-process figures shown by `vramguard status`. */
void vg__shared_live(const vg__budget_t *b, int delta);
void vg__shared_overhead(const vg__budget_t *b, uint64_t bytes);
/* This process's own share of a shared budget (its slot's use, overhead
 * included), where vg__budget_t.used mirrors the whole region's. */
uint64_t vg__shared_self_used(const vg__budget_t *b);

/* shared.c's steps that shared_wait.c builds on. Before a refusal, the
 * dead are looked for at most once every VG__SHM_REFUSAL_REAP_NS, region
 * wide (a process's first refusal always looks). */
#define VG__SHM_REFUSAL_REAP_NS 10000000ull
/* The region lock (vg__shm_lock), saying once per process why it could not
 * be had (the region is stuck: fail closed). */
int vg__shared_lock(vg__shm_t *r);
/* Under the lock: charges n to entry d and to this process's slot (claimed
 * on first use). VG_ENOMEM when it does not fit, when no slot can be had or
 * when the region's body was found corrupt. */
int vg__shared_charge_locked(vg__shm_t *r, int d, uint64_t n);
/* Under the lock: copies entry e into b's mirror fields. */
void vg__shared_mirror(vg__budget_t *b, const vg__shm_device_t *e);
/* Drops the dead (the /proc reads outside the lock), then checks the
 * region's body. Takes the lock itself. */
void vg__shared_reap_outside(vg__shm_t *r);
/* The start time (vg__shm_proc_start) of this process, as its slot and
 * waiter entries record it. */
uint64_t vg__shared_my_start(void);

/* shared_wait.c: VRAMGUARD_WAIT_MS's line. */

/* After a refusal: waits up to wait_ms, in line (first
 * come, first served), for others to free, then charges n. VG_OK, or
 * VG_ENOMEM when the wait ends without memory (one refusal counted) or the
 * line is full (refused at once). */
int vg__shared_wait_reserve(vg__budget_t *b, uint64_t n, int wait_ms);

/* A test-only pause point inside the critical section: a weak, hidden
 * symbol that no product build defines, so the call is never made there
 * (the shared libraries resolve it to NULL at link time). A test that
 * links the engine statically defines it to stop a process while it holds
 * the region lock (tests/test_shared.c). */
void vg__shared_test_pause(void) __attribute__((weak, visibility("hidden")));

#endif /* VG_SHARED_H */
