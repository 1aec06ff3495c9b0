/*
 * shared_region.c — the shared region's file: its path, creating it,
 * attaching to it, and the checks an attach makes before trusting it.
 *
 * Attach also checks the body, under the lock, against the invariants
 * every writer keeps (vg__shm_validate_body): a damaged body must not make
 * a process unlimited.
 *
 * Creation never exposes a half-built file: it is built under a temporary
 * name in the same folder and link(2)ed into place; the loser of a race
 * attaches the winner's. Attach checks owner, mode, size and the header
 * (vg__shm_validate, pure and fuzzed by tests/fuzz/fuzz_shared_attach.c)
 * before anything else is read, and refuses a region made in another PID
 * namespace, whose pids this process could not check for liveness.
 *
 * What happens inside a mapped region (the lock, the budget operations)
 * is shared.c's; who is alive and how the dead are reaped, shared_reap.c's.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vg_shared.h"

/* ------------------------------------------------ validation (pure) */

static int bad(char *err, size_t n, const char *why)
{
    if (err && n)
        snprintf(err, n, "%s", why);
    return VG_EINVAL;
}

/* The header of a region `len` bytes long. */
static int header_valid(const vg__shm_header_t *h, size_t len, char *err, size_t errlen)
{
    if (h->magic != VG__SHM_MAGIC)
        return bad(err, errlen, "not a vramguard region (bad magic)");
    if (h->version != VG__SHM_VERSION)
        return bad(err, errlen, "region layout version differs from this "
                                "library's (upgrade every process, or use "
                                "another name)");
    if (h->header_size != sizeof(vg__shm_header_t) ||
        h->total_size != sizeof(vg__shm_t) || len != sizeof(vg__shm_t))
        return bad(err, errlen, "region size does not match its layout");
    if (h->device_count != VG__SHM_DEVICES || h->slot_count != VG__SHM_SLOTS ||
        h->waiter_count != VG__SHM_WAITERS || h->cmd_len != VG__SHM_CMD)
        return bad(err, errlen, "region counts do not match its layout");
    return VG_OK;
}

int vg__shm_validate(const void *buf, size_t len, char *err, size_t errlen)
{
    vg__shm_header_t h;
    if (!buf || len < sizeof h)
        return bad(err, errlen, "too small to be a vramguard region");
    memcpy(&h, buf, sizeof h); /* no alignment assumed */
    int rc = header_valid(&h, len, err, errlen);
    return rc == VG_OK ? vg__shm_validate_body(buf, err, errlen) : rc;
}

static int corrupt(char *err, size_t n, const char *what, int index)
{
    if (err && n)
        snprintf(err, n, "region body is corrupt (%s %d)", what, index);
    return VG_EINVAL;
}

static bool sane_limit(uint64_t v) { return v == VG__UNLIMITED || v < VG__SHM_LIMIT_MAX; }

/* A key as entry_of() writes it: [A-Za-z0-9-]*, then NULs to the end. */
static bool uuid_ok(const char *u, size_t len)
{
    size_t i = 0;
    for (; i < len && u[i]; i++) {
        char c = u[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-'))
            return false;
    }
    if (i == len)
        return false; /* no terminating NUL */
    for (; i < len; i++)
        if (u[i])
            return false;
    return true;
}

static bool same_key(const vg__shm_device_t *a, const vg__shm_device_t *b)
{
    return a->uuid[0] ? strcmp(a->uuid, b->uuid) == 0
                      : !b->uuid[0] && a->ordinal == b->ordinal;
}

static int entry_check(const vg__shm_t *r, int d, char *err, size_t n)
{
    const vg__shm_device_t *e = &r->dev[d];
    if (e->ordinal < -1 || e->ordinal >= VG__SHM_DEVICES || !uuid_ok(e->uuid, sizeof e->uuid))
        return corrupt(err, n, "device entry key", d);
    if (!sane_limit(e->limit) || e->level < VG_PRESSURE_LOW || e->level > VG_PRESSURE_CRITICAL)
        return corrupt(err, n, "device entry figures", d);
    if (e->ordinal < 0)
        return e->used == 0 && !e->uuid[0] ? VG_OK : corrupt(err, n, "free device entry", d);
    if (e->used > e->peak)
        return corrupt(err, n, "device entry figures", d);
    for (int k = 0; k < d; k++)
        if (r->dev[k].ordinal >= 0 && same_key(&r->dev[k], e))
            return corrupt(err, n, "duplicate device entry", d);
    return VG_OK;
}

/* Every device's use is the sum of the occupied slots' (sums of at most
 * 256 values below 2^60 cannot wrap). */
static int sums_check(const vg__shm_t *r, char *err, size_t n)
{
    uint64_t sum[VG__SHM_DEVICES] = {0};
    for (int s = 0; s < VG__SHM_SLOTS; s++) {
        const vg__shm_slot_t *sl = &r->slot[s];
        if (sl->pid < 0)
            return corrupt(err, n, "process slot", s);
        for (int d = 0; d < VG__SHM_DEVICES; d++) {
            if (sl->used[d] && (sl->pid == 0 || r->dev[d].ordinal < 0 ||
                                sl->used[d] >= VG__SHM_LIMIT_MAX))
                return corrupt(err, n, "process slot", s);
            sum[d] += sl->used[d];
        }
    }
    for (int d = 0; d < VG__SHM_DEVICES; d++)
        if (sum[d] != r->dev[d].used)
            return corrupt(err, n, "device use differs from its processes' sum, entry", d);
    return VG_OK;
}

int vg__shm_validate_body(const vg__shm_t *r, char *err, size_t errlen)
{
    if (!sane_limit(r->h.default_limit))
        return corrupt(err, errlen, "default limit", 0);
    for (int d = 0; d < VG__SHM_DEVICES; d++) {
        int rc = entry_check(r, d, err, errlen);
        if (rc != VG_OK)
            return rc;
    }
    for (int w = 0; w < VG__SHM_WAITERS; w++)
        if (r->h.waiters[w].pid < 0)
            return corrupt(err, errlen, "waiter", w);
    return sums_check(r, err, errlen);
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

/* Inode of /proc/self/ns/pid: processes in other PID namespaces see other
 * pids, so their liveness checks would be wrong. 0 when unknown. */
static uint64_t pid_namespace(void)
{
    struct stat st;
    return stat("/proc/self/ns/pid", &st) == 0 ? (uint64_t)st.st_ino : 0;
}

/* ------------------------------------------------ create and attach */

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

/* The header alone: a mapped region's body is only read under its lock,
 * whose place the header vouches for. */
static int header_check(const vg__shm_t *m, char *why, size_t n)
{
    vg__shm_header_t h;
    memcpy(&h, &m->h, sizeof h);
    return header_valid(&h, sizeof *m, why, n);
}

/* The body, under the lock (other processes update it under the lock). */
static int body_check(vg__shm_t *m, char *why, size_t n)
{
    if (vg__shm_lock(m) != VG_OK) {
        snprintf(why, n, "it is stuck: its lock has been held for over %llu s by thread %d "
                 "(stopped, frozen or hung); refusing it",
                 (unsigned long long)(VG__SHM_LOCK_WAIT_NS / 1000000000ull),
                 (int)vg__shm_lock_owner(m));
        return VG_ESYS;
    }
    int rc = vg__shm_validate_body(m, why, n);
    vg__shm_unlock(m);
    return rc;
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
    rc = header_check(m, why, sizeof why);
    if (rc == VG_OK && ((vg__shm_t *)m)->h.pidns != pid_namespace()) {
        snprintf(why, sizeof why, "created in another PID namespace (its "
                 "processes' liveness cannot be checked from here)");
        rc = VG_EDENIED;
    }
    if (rc == VG_OK)
        rc = body_check(m, why, sizeof why);
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
