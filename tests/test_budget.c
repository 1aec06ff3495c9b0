/*
 * test_budget.c — the byte budget: exact limits, refusals, pressure levels
 * with hysteresis, hooks, and a 16-thread race that must never overshoot.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>

#include "vg_budget.h"

Test(budget, reserve_reaches_exactly_the_limit_and_refuses_one_more_byte)
{
    vg__budget_t b;
    vg__budget_init(&b, 1000, NULL);
    cr_assert_eq(vg__budget_reserve(&b, 600), VG_OK);
    cr_assert_eq(vg__budget_reserve(&b, 400), VG_OK);
    cr_assert_eq(vg__budget_available(&b), 0);
    cr_assert_eq(vg__budget_reserve(&b, 1), VG_ENOMEM);
    cr_assert_eq(atomic_load(&b.used), 1000);
}

Test(budget, refusals_are_counted)
{
    vg__budget_t b;
    vg__budget_init(&b, 100, NULL);
    cr_assert_eq(vg__budget_reserve(&b, 101), VG_ENOMEM);
    cr_assert_eq(vg__budget_reserve(&b, UINT64_MAX), VG_ENOMEM);
    cr_assert_eq(vg__budget_reserve(&b, 100), VG_OK);
    cr_assert_eq(vg__budget_reserve(&b, 1), VG_ENOMEM);
    cr_assert_eq(atomic_load(&b.refusals), 3);
}

Test(budget, huge_request_does_not_overflow_the_check)
{
    vg__budget_t b;
    vg__budget_init(&b, UINT64_MAX - 10, NULL);
    cr_assert_eq(vg__budget_reserve(&b, 20), VG_OK);
    /* used + n would wrap to a small number; it must still be refused */
    cr_assert_eq(vg__budget_reserve(&b, UINT64_MAX - 15), VG_ENOMEM);
    cr_assert_eq(atomic_load(&b.used), 20);
}

Test(budget, rollback_returns_the_reservation)
{
    vg__budget_t b;
    vg__budget_init(&b, 100, NULL);
    cr_assert_eq(vg__budget_reserve(&b, 70), VG_OK);
    vg__budget_rollback(&b, 70);
    cr_assert_eq(atomic_load(&b.used), 0);
    cr_assert_eq(atomic_load(&b.peak), 0, "a rolled-back reserve is no peak");
    cr_assert_eq(vg__budget_reserve(&b, 100), VG_OK);
}

Test(budget, release_frees_committed_bytes_and_peak_stays)
{
    vg__budget_t b;
    vg__budget_init(&b, 100, NULL);
    cr_assert_eq(vg__budget_reserve(&b, 60), VG_OK);
    vg__budget_commit(&b, 60);
    vg__budget_release(&b, 60);
    cr_assert_eq(atomic_load(&b.used), 0);
    cr_assert_eq(atomic_load(&b.peak), 60);
    cr_assert_eq(vg__budget_available(&b), 100);
}

Test(budget, force_charges_past_the_limit)
{
    vg__budget_t b;
    vg__budget_init(&b, 100, NULL);
    vg__budget_force(&b, 150);
    cr_assert_eq(atomic_load(&b.used), 150);
    cr_assert_eq(atomic_load(&b.peak), 150);
    cr_assert_eq(vg__budget_available(&b), 0);
    cr_assert_eq(vg__budget_level(&b), VG_PRESSURE_CRITICAL);
}

Test(budget, set_limit_below_use_refuses_without_underflow)
{
    vg__budget_t b;
    vg__budget_init(&b, 1000, NULL);
    cr_assert_eq(vg__budget_reserve(&b, 800), VG_OK);
    vg__budget_commit(&b, 800);
    vg__budget_set_limit(&b, 500);
    cr_assert_eq(vg__budget_available(&b), 0);
    cr_assert_eq(vg__budget_reserve(&b, 1), VG_ENOMEM);
    cr_assert_eq(vg__budget_level(&b), VG_PRESSURE_CRITICAL);
    vg__budget_release(&b, 400);
    cr_assert_eq(vg__budget_available(&b), 100);
    cr_assert_eq(vg__budget_reserve(&b, 100), VG_OK);
}

Test(budget, unlimited_is_always_low_and_reserves_anything)
{
    vg__budget_t b;
    vg__budget_init(&b, VG__UNLIMITED, NULL);
    cr_assert_eq(vg__budget_reserve(&b, UINT64_MAX / 2), VG_OK);
    vg__budget_commit(&b, UINT64_MAX / 2);
    cr_assert_eq(vg__budget_level(&b), VG_PRESSURE_LOW);
    cr_assert_eq(vg__pressure_for(UINT64_MAX, VG__UNLIMITED,
                                  VG_PRESSURE_CRITICAL),
                 VG_PRESSURE_LOW);
}

Test(budget, pressure_thresholds_rising)
{
    const uint64_t L = 1000;
    cr_assert_eq(vg__pressure_for(0, L, VG_PRESSURE_LOW), VG_PRESSURE_LOW);
    cr_assert_eq(vg__pressure_for(499, L, VG_PRESSURE_LOW), VG_PRESSURE_LOW);
    cr_assert_eq(vg__pressure_for(500, L, VG_PRESSURE_LOW), VG_PRESSURE_MEDIUM);
    cr_assert_eq(vg__pressure_for(799, L, VG_PRESSURE_LOW), VG_PRESSURE_MEDIUM);
    cr_assert_eq(vg__pressure_for(800, L, VG_PRESSURE_LOW), VG_PRESSURE_HIGH);
    cr_assert_eq(vg__pressure_for(949, L, VG_PRESSURE_LOW), VG_PRESSURE_HIGH);
    cr_assert_eq(vg__pressure_for(950, L, VG_PRESSURE_LOW),
                 VG_PRESSURE_CRITICAL);
    cr_assert_eq(vg__pressure_for(5000, L, VG_PRESSURE_LOW),
                 VG_PRESSURE_CRITICAL);
}

Test(budget, pressure_is_exact_for_huge_values)
{
    /* used * 100 overflows 64 bits here; 128-bit math keeps it exact. */
    const uint64_t L = UINT64_MAX - 1;
    uint64_t half = L / 2 + 1; /* just at 50% (L is even: L/2 is exactly 50%) */
    cr_assert_eq(vg__pressure_for(L / 2, L, VG_PRESSURE_LOW),
                 VG_PRESSURE_MEDIUM);
    cr_assert_eq(vg__pressure_for(L / 2 - 1, L, VG_PRESSURE_LOW),
                 VG_PRESSURE_LOW);
    cr_assert_eq(vg__pressure_for(half, L, VG_PRESSURE_LOW),
                 VG_PRESSURE_MEDIUM);
}

Test(budget, pressure_falls_only_two_points_below_the_boundary)
{
    const uint64_t L = 1000;
    cr_assert_eq(vg__pressure_for(790, L, VG_PRESSURE_HIGH), VG_PRESSURE_HIGH);
    cr_assert_eq(vg__pressure_for(780, L, VG_PRESSURE_HIGH), VG_PRESSURE_HIGH);
    cr_assert_eq(vg__pressure_for(779, L, VG_PRESSURE_HIGH),
                 VG_PRESSURE_MEDIUM);
    cr_assert_eq(vg__pressure_for(480, L, VG_PRESSURE_MEDIUM),
                 VG_PRESSURE_MEDIUM);
    cr_assert_eq(vg__pressure_for(479, L, VG_PRESSURE_MEDIUM),
                 VG_PRESSURE_LOW);
    cr_assert_eq(vg__pressure_for(930, L, VG_PRESSURE_CRITICAL),
                 VG_PRESSURE_CRITICAL);
    cr_assert_eq(vg__pressure_for(929, L, VG_PRESSURE_CRITICAL),
                 VG_PRESSURE_HIGH);
    /* a big drop crosses several boundaries at once */
    cr_assert_eq(vg__pressure_for(790, L, VG_PRESSURE_CRITICAL),
                 VG_PRESSURE_HIGH);
    cr_assert_eq(vg__pressure_for(10, L, VG_PRESSURE_CRITICAL),
                 VG_PRESSURE_LOW);
}

typedef struct hook_log {
    int calls;
    vg_pressure_t old_level[16], new_level[16];
    void *owner;
} hook_log_t;

static void record_hook(void *owner, vg_pressure_t old_level,
                        vg_pressure_t new_level, void *user)
{
    hook_log_t *log = user;
    if (log->calls < 16) {
        log->old_level[log->calls] = old_level;
        log->new_level[log->calls] = new_level;
    }
    log->owner = owner;
    log->calls++;
}

static void charge(vg__budget_t *b, uint64_t n)
{
    cr_assert_eq(vg__budget_reserve(b, n), VG_OK);
    vg__budget_commit(b, n);
}

Test(budget, hooks_get_owner_and_old_and_new_levels)
{
    vg__budget_t b;
    int owner_tag;
    hook_log_t log = {0};
    vg__budget_init(&b, 100, &owner_tag);
    cr_assert_eq(vg__budget_on_level(&b, record_hook, &log), VG_OK);
    charge(&b, 50);
    charge(&b, 45);
    cr_assert_eq(log.calls, 2);
    cr_assert_eq(log.owner, &owner_tag);
    cr_assert_eq(log.old_level[0], VG_PRESSURE_LOW);
    cr_assert_eq(log.new_level[0], VG_PRESSURE_MEDIUM);
    cr_assert_eq(log.old_level[1], VG_PRESSURE_MEDIUM);
    cr_assert_eq(log.new_level[1], VG_PRESSURE_CRITICAL);
    vg__budget_release(&b, 95);
    cr_assert_eq(log.calls, 3);
    cr_assert_eq(log.old_level[2], VG_PRESSURE_CRITICAL);
    cr_assert_eq(log.new_level[2], VG_PRESSURE_LOW);
}

Test(budget, flapping_across_80_percent_fires_hooks_once_per_real_change)
{
    vg__budget_t b;
    hook_log_t log = {0};
    vg__budget_init(&b, 1000, NULL);
    cr_assert_eq(vg__budget_on_level(&b, record_hook, &log), VG_OK);
    charge(&b, 600); /* Low -> Medium */
    cr_assert_eq(log.calls, 1);
    for (int i = 0; i < 100; i++) {
        charge(&b, 205);             /* 805: High */
        vg__budget_release(&b, 205); /* 600 < 78%: Medium */
        charge(&b, 190);             /* 790 < 80%: no rise */
        vg__budget_release(&b, 190);
    }
    /* each turn is one real rise and one real fall; 790 fires nothing */
    cr_assert_eq(log.calls, 1 + 200);

    log.calls = 0;
    charge(&b, 205); /* 805: High */
    for (int i = 0; i < 100; i++) {
        vg__budget_release(&b, 20); /* 785: above 78%, stays High */
        charge(&b, 20);             /* 805 */
    }
    cr_assert_eq(log.calls, 1, "flapping within the band fires nothing");
    vg__budget_release(&b, 30); /* 775 < 780: Medium */
    cr_assert_eq(log.calls, 2);
    cr_assert_eq(log.new_level[1], VG_PRESSURE_MEDIUM);
}

Test(budget, set_limit_changes_the_level_and_fires_hooks)
{
    vg__budget_t b;
    hook_log_t log = {0};
    vg__budget_init(&b, 1000, NULL);
    cr_assert_eq(vg__budget_on_level(&b, record_hook, &log), VG_OK);
    charge(&b, 400);
    cr_assert_eq(log.calls, 0);
    vg__budget_set_limit(&b, 420);
    cr_assert_eq(log.calls, 1);
    cr_assert_eq(log.new_level[0], VG_PRESSURE_CRITICAL);
    vg__budget_set_limit(&b, VG__UNLIMITED);
    cr_assert_eq(log.calls, 2);
    cr_assert_eq(log.new_level[1], VG_PRESSURE_LOW);
}

Test(budget, at_most_eight_hooks)
{
    vg__budget_t b;
    hook_log_t log = {0};
    vg__budget_init(&b, 100, NULL);
    for (int i = 0; i < VG__LEVEL_HOOKS; i++)
        cr_assert_eq(vg__budget_on_level(&b, record_hook, &log), VG_OK);
    cr_assert_eq(vg__budget_on_level(&b, record_hook, &log), VG_ENOMEM);
    charge(&b, 60);
    cr_assert_eq(log.calls, VG__LEVEL_HOOKS);
}

/* ---------------------------------------------------- concurrency */

#define RACE_THREADS 16
#define RACE_ITERS 20000
#define RACE_LIMIT 100000u

typedef struct race {
    vg__budget_t b;
    _Atomic uint64_t max_seen;
    _Atomic uint64_t ok, refused;
} race_t;

static void note_max(race_t *r)
{
    uint64_t u = atomic_load_explicit(&r->b.used, memory_order_relaxed);
    uint64_t m = atomic_load_explicit(&r->max_seen, memory_order_relaxed);
    while (u > m && !atomic_compare_exchange_weak(&r->max_seen, &m, u))
        ;
}

static void *race_worker(void *arg)
{
    race_t *r = arg;
    unsigned seed = (unsigned)(uintptr_t)&seed;
    uint64_t held[8];
    int nheld = 0;
    for (int i = 0; i < RACE_ITERS; i++) {
        uint64_t n = 1 + (uint64_t)rand_r(&seed) % (RACE_LIMIT / 8);
        if (nheld < 8 && vg__budget_reserve(&r->b, n) == VG_OK) {
            atomic_fetch_add(&r->ok, 1);
            note_max(r);
            if (rand_r(&seed) % 4 == 0) {
                vg__budget_rollback(&r->b, n);
            } else {
                vg__budget_commit(&r->b, n);
                held[nheld++] = n;
            }
        } else {
            atomic_fetch_add(&r->refused, 1);
        }
        if (nheld > 0 && rand_r(&seed) % 2 == 0)
            vg__budget_release(&r->b, held[--nheld]);
        note_max(r);
    }
    while (nheld > 0)
        vg__budget_release(&r->b, held[--nheld]);
    return NULL;
}

Test(budget, sixteen_threads_never_exceed_the_limit_and_end_at_zero)
{
    static race_t r;
    vg__budget_init(&r.b, RACE_LIMIT, NULL);
    atomic_init(&r.max_seen, 0);
    pthread_t t[RACE_THREADS];
    for (int i = 0; i < RACE_THREADS; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, race_worker, &r), 0);
    for (int i = 0; i < RACE_THREADS; i++)
        pthread_join(t[i], NULL);
    cr_assert_leq(atomic_load(&r.max_seen), RACE_LIMIT);
    cr_assert_leq(atomic_load(&r.b.peak), RACE_LIMIT);
    cr_assert_eq(atomic_load(&r.b.used), 0);
    cr_assert_gt(atomic_load(&r.ok), 0);
    cr_assert_gt(atomic_load(&r.refused), 0, "the limit was never tested");
    cr_assert_eq(vg__budget_level(&r.b), VG_PRESSURE_LOW);
}
