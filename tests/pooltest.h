/*
 * pooltest.h — what the pool cache's tests (test_pool_cache*.c) share: a
 * pool over the test driver, its statistics, and a short sleep (the pool's
 * clock is coarse, so tests that order events space them out).
 */
#ifndef VG_POOLTEST_H
#define VG_POOLTEST_H

#include <criterion/criterion.h>

#include <stdint.h>
#include <time.h>

#include "vg_pool.h"

/* A pool of `limit` bytes on device 0; asserts it was made. */
static inline vg_pool_t *pool_of(uint64_t limit)
{
    vg_pool_t *p = NULL;
    cr_assert_eq(vg_pool_create(0, limit, &p), VG_OK);
    return p;
}

static inline vg_pool_stats_t stats_of(vg_pool_t *p)
{
    vg_pool_stats_t s;
    cr_assert_eq(vg_pool_stats(p, &s), VG_OK);
    return s;
}

static inline void sleep_ms(long ms)
{
    struct timespec ts = {0, ms * 1000000L};
    nanosleep(&ts, NULL);
}

#endif
