/*
 * shared_lock.c — the shared region's lock: a robust, process-shared
 * mutex in the region's header that never makes anyone wait for ever.
 *
 * Uncontended it is one trylock, inline in vg_shared.h. Contended, it is
 * waited for in slices (LOCK_SLICE_NS), looking at the owner between
 * them: a lock word naming a thread that is gone (a stale or forged owner,
 * which no robust list will ever release) is recovered as if its owner had
 * died, and a live holder that keeps it past VG__SHM_LOCK_WAIT_NS (stopped
 * with SIGSTOP, a frozen container, a debugger) makes the caller fail
 * closed. A lock taken from a dead owner is repaired: every device's use
 * is recomputed from the live slots.
 */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "vg_shared.h"

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#endif

static bool alive_cb(const vg__shm_slot_t *s, void *ctx)
{
    (void)ctx;
    return vg__shm_slot_alive(s);
}

/* The robust futex word's bits (the kernel's ABI, linux/futex.h): glibc
 * keeps a robust mutex's owner tid in its first int, __data.__lock. */
#define OWNER_DIED 0x40000000u
#define TID_MASK 0x3fffffffu
#define LOCK_SLICE_NS 50000000ull /* look at the owner every 50 ms */

static unsigned *lock_word(vg__shm_t *r) { return (unsigned *)&r->h.lock.m.__data.__lock; }

int32_t vg__shm_lock_owner(const vg__shm_t *r)
{
    return (int32_t)(__atomic_load_n(&r->h.lock.m.__data.__lock, __ATOMIC_RELAXED) & TID_MASK);
}

static int repair(vg__shm_t *r)
{
    /* Its holder died mid-update: the slots are the truth. */
    vg__shm_recount(r, alive_cb, NULL);
    pthread_mutex_consistent(&r->h.lock.m);
    return VG_OK;
}

/* The word names a thread that is gone (a stale or forged owner, which no
 * robust list will ever release): mark the owner dead as the kernel does
 * when a robust lock's holder exits, so the next lock gets EOWNERDEAD. */
static void owner_gone(vg__shm_t *r, unsigned seen)
{
    unsigned want = OWNER_DIED | (seen & ~(TID_MASK | OWNER_DIED));
    if (__atomic_compare_exchange_n(lock_word(r), &seen, want, false, __ATOMIC_ACQ_REL,
                                    __ATOMIC_RELAXED))
        syscall(SYS_futex, lock_word(r), FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

static struct timespec realtime_in(uint64_t ns)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    uint64_t x = (uint64_t)t.tv_nsec + ns;
    t.tv_sec += (time_t)(x / 1000000000ull);
    t.tv_nsec = (long)(x % 1000000000ull);
    return t;
}

/* TSan's pthread_mutex_timedlock interceptor counts only 0 as acquired
 * (its lock and trylock also count EOWNERDEAD): tell it, or the unlock that
 * follows a repair is reported as the unlock of an unlocked mutex. A
 * post_lock annotation must follow a pre_lock one (alone, it fails TSan's
 * own check on its ignore count and ends the process); as a try-lock, the
 * pair adds no wait to the deadlock detector. */
#if defined(__SANITIZE_THREAD__)
static void owner_dead_acquired(vg__shm_t *r)
{
    __tsan_mutex_pre_lock(&r->h.lock.m, __tsan_mutex_try_lock);
    __tsan_mutex_post_lock(&r->h.lock.m, __tsan_mutex_try_lock, 0);
}
#else
static void owner_dead_acquired(vg__shm_t *r) { (void)r; }
#endif

/* Contended: wait in slices, looking at the owner between them. */
__attribute__((noinline)) static int lock_slow(vg__shm_t *r)
{
    for (uint64_t waited = 0; waited < VG__SHM_LOCK_WAIT_NS; waited += LOCK_SLICE_NS) {
        struct timespec until = realtime_in(LOCK_SLICE_NS);
        int rc = pthread_mutex_timedlock(&r->h.lock.m, &until);
        if (rc == EOWNERDEAD) /* its holder died while we waited */
            owner_dead_acquired(r);
        if (rc == 0 || rc == EOWNERDEAD)
            return rc == 0 ? VG_OK : repair(r);
        if (rc != ETIMEDOUT)
            return VG_ESYS;
        unsigned seen = __atomic_load_n(lock_word(r), __ATOMIC_ACQUIRE);
        if (!seen || (seen & OWNER_DIED) || vg__shm_tid_alive((int32_t)(seen & TID_MASK)))
            continue;
        owner_gone(r, seen);
        rc = pthread_mutex_trylock(&r->h.lock.m);
        if (rc == 0 || rc == EOWNERDEAD)
            return rc == 0 ? VG_OK : repair(r);
    }
    return VG_ESYS; /* held by a live thread that does not let go */
}

int vg__shm_lock_contended(vg__shm_t *r, int rc)
{
    if (rc == EOWNERDEAD)
        return repair(r);
    return rc == EBUSY ? lock_slow(r) : VG_ESYS;
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
    if (dev >= VG__SHM_DEVICES || (limit != VG__UNLIMITED && limit >= VG__SHM_LIMIT_MAX))
        return VG_EINVAL; /* a limit no body check would accept */
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

int vg__shm_retire(vg__shm_t *r, const char *path, int *live)
{
    *live = -1;
    if (vg__shm_lock(r) != VG_OK)
        return VG_ESYS;
    *live = 0;
    for (int s = 0; s < VG__SHM_SLOTS; s++)
        *live += r->slot[s].pid > 0 && vg__shm_slot_alive(&r->slot[s]);
    int rc = VG_EDENIED;
    if (*live == 0) {
        r->h.removed = 1;
        rc = VG_OK;
        if (unlink(path) != 0) {
            int err = errno;
            r->h.removed = 0;
            errno = err;
            rc = VG_ESYS;
        }
    }
    int err = errno;
    vg__shm_unlock(r);
    errno = err;
    return rc;
}
