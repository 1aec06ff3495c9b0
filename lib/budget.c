/*
 * budget.c — a byte limit, its exact use, and the pressure level.
 *
 * One vg__budget_t per device (the process budget) and one per pool. The hot
 * path is reserve + commit on allocation and release on free: one CAS (or one
 * fetch_sub) on `used`, a few relaxed loads, and a 128-bit compare or two for
 * the level. No locks, no syscalls, no division. Measured by tools/bench.c.
 *
 * Memory orders. A budget is a counter, not a lock: it publishes no other
 * memory (the driver orders the device memory itself), so `used`, `limit`,
 * `peak` and `refusals` are read and written relaxed. The invariant
 * "used <= limit after any reserve" needs only that all read-modify-writes on
 * `used` are totally ordered, which every atomic RMW is, whatever its order.
 * The exceptions are the level hooks: the hook table is published with a
 * release store of `hook_count` and read with an acquire load, so a thread
 * that sees the count sees the slots below it.
 *
 * Shared budgets (VRAMGUARD_SHARED): when b->shared is set, every operation
 * goes to shared.c (the region's lock, across processes) and the atomics here
 * become a mirror of the region's entry; the level is computed there. A
 * per-process budget pays one predictable, not-taken branch per operation.
 * Level hooks are not run for shared budgets (only pools register hooks,
 * and pools are never shared).
 *
 * The shim's per-process device budgets also carry per-thread credit
 * (credit.c): `used` then includes slices threads took and have not spent,
 * the reclaim hook pulls them back before any refusal, and the idle hook
 * lets vg__budget_read and vg__budget_used report real use.
 */
#include <pthread.h>

#include "vg_budget.h"
#include "vg_fork.h"
#include "vg_shared.h"

/* Entry thresholds in percent of the limit: Medium, High, Critical. Leaving
 * a level downwards needs use below (threshold - VG__HYSTERESIS_PCT). */
#define VG__MEDIUM_PCT 50u
#define VG__HIGH_PCT 80u
#define VG__CRITICAL_PCT 95u
#define VG__HYSTERESIS_PCT 2u

__extension__ typedef unsigned __int128 vg__u128;

/* Registration of hooks is rare; a mutex keeps two registrars from taking
 * the same slot. The hooks are run without it. */
static pthread_mutex_t hook_lock = PTHREAD_MUTEX_INITIALIZER;

void vg__budget_init(vg__budget_t *b, uint64_t limit, void *owner)
{
    atomic_init(&b->limit, limit);
    atomic_init(&b->used, 0);
    atomic_init(&b->peak, 0);
    atomic_init(&b->refusals, 0);
    atomic_init(&b->level, VG_PRESSURE_LOW);
    atomic_init(&b->hook_count, 0);
    b->shared = NULL;
    b->shared_dev = 0;
    b->owner = owner;
    b->reclaim = NULL;
    b->idle = NULL;
    b->credit_dev = -1;
    for (int i = 0; i < VG__LEVEL_HOOKS; i++) {
        b->hooks[i].fn = NULL;
        b->hooks[i].user = NULL;
    }
}

/* Exact "used >= pct% of limit": used*100 >= limit*pct in 128 bits, so no
 * rounding and no overflow for any 64-bit pair (two multiplies). */
static inline bool at_least_pct(uint64_t used, uint64_t limit, unsigned pct)
{
    return (vg__u128)used * 100u >= (vg__u128)limit * pct;
}

/* The level with entry thresholds shifted down by `minus` points. */
static inline vg_pressure_t raw_level(uint64_t used, uint64_t limit,
                                      unsigned minus)
{
    if (at_least_pct(used, limit, VG__CRITICAL_PCT - minus))
        return VG_PRESSURE_CRITICAL;
    if (at_least_pct(used, limit, VG__HIGH_PCT - minus))
        return VG_PRESSURE_HIGH;
    if (at_least_pct(used, limit, VG__MEDIUM_PCT - minus))
        return VG_PRESSURE_MEDIUM;
    return VG_PRESSURE_LOW;
}

/*
 * Hysteresis: rising uses the plain thresholds (50/80/95). Falling, each
 * boundary sits 2 points lower (48/78/93), and the level never rises on the
 * way down. So with current = High, 79% stays High and 77% becomes Medium;
 * from Critical, 79% lands on High (below 93, above 78). A limit of 0 is
 * always Critical (nothing fits); unlimited is always Low.
 */
vg_pressure_t vg__pressure_for(uint64_t used, uint64_t limit,
                               vg_pressure_t current)
{
    if (limit == VG__UNLIMITED)
        return VG_PRESSURE_LOW;
    vg_pressure_t up = raw_level(used, limit, 0);
    if (up >= current)
        return up;
    vg_pressure_t down = raw_level(used, limit, VG__HYSTERESIS_PCT);
    return down < current ? down : current;
}

/* Out of line: level changes are rare, and hooks are arbitrary user code. */
__attribute__((noinline)) static void run_hooks(vg__budget_t *b,
                                                vg_pressure_t old_level,
                                                vg_pressure_t new_level)
{
    int n = atomic_load_explicit(&b->hook_count, memory_order_acquire);
    for (int i = 0; i < n; i++)
        b->hooks[i].fn(b->owner, old_level, new_level, b->hooks[i].user);
}

static inline vg_pressure_t level_now(const vg__budget_t *b, int cur)
{
    uint64_t used = atomic_load_explicit(&b->used, memory_order_relaxed);
    uint64_t limit = atomic_load_explicit(&b->limit, memory_order_relaxed);
    return vg__pressure_for(used, limit, (vg_pressure_t)cur);
}

/* The level moved. Exactly one thread wins the CAS from the level it read
 * and runs the hooks with (old, new). The winner then looks again (use may
 * have moved while it ran the hooks) so the recorded level settles on the
 * current use; the loop is bounded because each turn is some thread's
 * progress and a flapping use is exactly what hysteresis absorbs. */
__attribute__((noinline)) static void level_changed(vg__budget_t *b, int cur)
{
    for (int turn = 0; turn < 4; turn++) {
        vg_pressure_t next = level_now(b, cur);
        if ((int)next == cur)
            return;
        if (atomic_compare_exchange_strong_explicit(&b->level, &cur, (int)next,
                                                    memory_order_relaxed,
                                                    memory_order_relaxed)) {
            run_hooks(b, (vg_pressure_t)cur, next);
            cur = (int)next;
        }
        /* On failure cur now holds the level another thread recorded. */
    }
}

/* Hot path: two relaxed loads and the 128-bit compares; nothing else unless
 * the level changed. */
static inline void update_level(vg__budget_t *b)
{
    int cur = atomic_load_explicit(&b->level, memory_order_relaxed);
    if (vg__likely((int)level_now(b, cur) == cur))
        return;
    level_changed(b, cur);
}

static inline void update_peak(vg__budget_t *b)
{
    uint64_t used = atomic_load_explicit(&b->used, memory_order_relaxed);
    uint64_t peak = atomic_load_explicit(&b->peak, memory_order_relaxed);
    while (used > peak &&
           !atomic_compare_exchange_weak_explicit(&b->peak, &peak, used,
                                                  memory_order_relaxed,
                                                  memory_order_relaxed))
        ;
}

void vg__budget_set_limit(vg__budget_t *b, uint64_t limit)
{
    if (vg__unlikely(b->shared))
        return vg__shared_set_limit(b, limit);
    atomic_store_explicit(&b->limit, limit, memory_order_relaxed);
    update_level(b);
}

static inline bool try_reserve(vg__budget_t *b, uint64_t n)
{
    uint64_t limit = atomic_load_explicit(&b->limit, memory_order_relaxed);
    uint64_t used = atomic_load_explicit(&b->used, memory_order_relaxed);
    do {
        /* used may exceed limit after set_limit lowered it: check first so
         * that limit - used cannot wrap; n > limit - used cannot overflow. */
        if (vg__unlikely(used > limit || n > limit - used))
            return false;
    } while (!atomic_compare_exchange_weak_explicit(&b->used, &used, used + n,
                                                    memory_order_relaxed,
                                                    memory_order_relaxed));
    return true;
}

bool vg__budget_try_reserve(vg__budget_t *b, uint64_t n)
{
    return try_reserve(b, n);
}

/* Out of line: the budget looks full. Threads' unspent credit is part of
 * `used`, so it is pulled back first; only then is it a refusal. The
 * request is tried again even when this reclaim got nothing: reclaimers
 * take turns, and one racing with this one may have pulled the credit
 * back (into the budget) after this request found the budget full. */
__attribute__((noinline)) static int reserve_refused(vg__budget_t *b, uint64_t n)
{
    if (b->reclaim) {
        b->reclaim(b);
        if (try_reserve(b, n))
            return VG_OK;
    }
    atomic_fetch_add_explicit(&b->refusals, 1, memory_order_relaxed);
    return VG_ENOMEM;
}

/* A reserve racing with set_limit may still be judged against the old limit:
 * the new limit holds for every reserve that reads it. */
int vg__budget_reserve(vg__budget_t *b, uint64_t n)
{
    if (vg__unlikely(b->shared))
        return vg__shared_reserve(b, n);
    if (vg__likely(try_reserve(b, n)))
        return VG_OK;
    return reserve_refused(b, n);
}

void vg__budget_commit(vg__budget_t *b, uint64_t n)
{
    (void)n; /* already in `used` since reserve */
    if (vg__unlikely(b->shared))
        return; /* peak and level were settled by the reserve */
    update_peak(b);
    update_level(b);
}

void vg__budget_rollback(vg__budget_t *b, uint64_t n)
{
    if (vg__unlikely(b->shared))
        return vg__shared_release(b, n);
    /* The reserve never reached the level, so neither does its undo. */
    atomic_fetch_sub_explicit(&b->used, n, memory_order_relaxed);
}

/* n must be bytes this budget holds (committed or forced). */
void vg__budget_release(vg__budget_t *b, uint64_t n)
{
    if (vg__unlikely(b->shared))
        return vg__shared_release(b, n);
    atomic_fetch_sub_explicit(&b->used, n, memory_order_relaxed);
    update_level(b);
}

void vg__budget_release_quiet(vg__budget_t *b, uint64_t n)
{
    atomic_fetch_sub_explicit(&b->used, n, memory_order_relaxed);
}

void vg__budget_relevel(vg__budget_t *b)
{
    update_level(b);
}

void vg__budget_force(vg__budget_t *b, uint64_t n)
{
    if (vg__unlikely(b->shared))
        return vg__shared_force(b, n);
    atomic_fetch_add_explicit(&b->used, n, memory_order_relaxed);
    update_peak(b);
    update_level(b);
}

void vg__budget_force_quiet(vg__budget_t *b, uint64_t n)
{
    if (vg__unlikely(b->shared))
        return vg__shared_force(b, n); /* the region moves its own peak and level */
    atomic_fetch_add_explicit(&b->used, n, memory_order_relaxed);
}

bool vg__budget_over(vg__budget_t *b)
{
    uint64_t limit, used;
    if (vg__unlikely(b->shared)) {
        vg__budget_read(b, &limit, &used);
        return used > limit;
    }
    limit = atomic_load_explicit(&b->limit, memory_order_relaxed);
    if (atomic_load_explicit(&b->used, memory_order_relaxed) <= limit)
        return false;
    if (b->reclaim)
        b->reclaim(b);
    if (atomic_load_explicit(&b->used, memory_order_relaxed) <= limit)
        return false;
    atomic_fetch_add_explicit(&b->refusals, 1, memory_order_relaxed);
    return true;
}

uint64_t vg__budget_available(const vg__budget_t *b)
{
    uint64_t limit, used;
    vg__budget_read(b, &limit, &used);
    return used >= limit ? 0 : limit - used;
}

void vg__budget_read(const vg__budget_t *b, uint64_t *limit, uint64_t *used)
{
    *limit = atomic_load_explicit(&b->limit, memory_order_relaxed);
    *used = atomic_load_explicit(&b->used, memory_order_relaxed);
    if (vg__unlikely(b->shared))
        vg__shared_read(b, limit, used); /* fresh: other processes move it */
    else if (b->idle) /* unspent credit is not use */
        *used = vg__budget_used(b);
}

uint64_t vg__budget_used(const vg__budget_t *b)
{
    uint64_t used = atomic_load_explicit(&b->used, memory_order_relaxed);
    uint64_t idle = b->idle ? b->idle(b) : 0;
    return used > idle ? used - idle : 0;
}

vg_pressure_t vg__budget_level(const vg__budget_t *b)
{
    return (vg_pressure_t)atomic_load_explicit(&b->level,
                                               memory_order_relaxed);
}

void vg__budget_prefork(void) { pthread_mutex_lock(&hook_lock); }
void vg__budget_postfork_parent(void) { pthread_mutex_unlock(&hook_lock); }
void vg__budget_postfork_child(void) { pthread_mutex_unlock(&hook_lock); }

int vg__budget_on_level(vg__budget_t *b, vg__level_fn fn, void *user)
{
    if (!b || !fn)
        return VG_EINVAL;
    int rc = VG_OK;
    vg__mutex_lock(&hook_lock, VG__RANK_LEVEL_HOOKS);
    int n = atomic_load_explicit(&b->hook_count, memory_order_relaxed);
    if (n >= VG__LEVEL_HOOKS) {
        rc = VG_ENOMEM;
        goto out;
    }
    b->hooks[n].fn = fn;
    b->hooks[n].user = user;
    /* Release: a reader that sees n + 1 sees the slot written above. */
    atomic_store_explicit(&b->hook_count, n + 1, memory_order_release);
out:
    vg__mutex_unlock(&hook_lock, VG__RANK_LEVEL_HOOKS);
    return rc;
}
