/*
 * test_keymap.c — the ledger's hash map (lib/vg_keymap.h): adds, finds and
 * deletes against a plain array kept beside it, runs that wrap around the
 * end of the slots, duplicates, growth and the walk over every entry.
 */
#include <criterion/criterion.h>
#include <stdlib.h>

#include "testutil.h"
#include "vg_keymap.h"

/* A value that names its key (values must be non-NULL). */
static void *val_of(uint64_t key)
{
    return (void *)(uintptr_t)(key ^ 0x5a5a0000u);
}

static void map_free(vg__keymap_t *m)
{
    free(m->slot);
    *m = (vg__keymap_t){NULL, 0, 0};
}

/* Keys whose home slot in a map of `mask` is `home`, found by trying. */
static uint64_t key_at_home(const vg__keymap_t *m, uint32_t home, uint64_t *next)
{
    for (;; (*next) += 512)
        if (vg__keymap_home(m, *next) == home)
            return (*next)++;
}

Test(keymap, an_empty_map_finds_nothing_and_grows_at_the_first_add)
{
    vg__keymap_t m = {NULL, 0, 0};
    cr_expect_eq(vg__keymap_find(&m, 4096), VG__KEYMAP_NONE);
    cr_expect_null(vg__keymap_get(&m, 4096));
    uint32_t i = 0;
    cr_expect_null(vg__keymap_next(&m, &i));
    cr_assert_eq(vg__keymap_add(&m, 4096, val_of(4096)), VG_OK);
    cr_expect_eq(m.mask + 1, VG__KEYMAP_MIN);
    cr_expect_eq(vg__keymap_get(&m, 4096), val_of(4096));
    map_free(&m);
}

Test(keymap, a_duplicate_is_refused_and_keeps_its_value)
{
    vg__keymap_t m = {NULL, 0, 0};
    cr_assert_eq(vg__keymap_add(&m, 8192, val_of(8192)), VG_OK);
    cr_expect_eq(vg__keymap_add(&m, 8192, val_of(1)), VG_EINVAL);
    cr_expect_eq(vg__keymap_get(&m, 8192), val_of(8192));
    cr_expect_eq(m.used, 1u);
    map_free(&m);
}

/* Three keys with the last slot as home fill it and wrap to slots 0 and 1;
 * a key whose home is slot 0 lands after them. Deleting the first of the
 * run moves the others back, and every one is still found. */
Test(keymap, a_run_that_wraps_around_shifts_back_on_delete)
{
    vg__keymap_t m = {NULL, 0, 0};
    cr_assert_eq(vg__keymap_grow(&m), VG_OK);
    uint64_t next = 512, k[4];
    for (int i = 0; i < 3; i++)
        k[i] = key_at_home(&m, m.mask, &next);
    k[3] = key_at_home(&m, 0, &next);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(vg__keymap_add(&m, k[i], val_of(k[i])), VG_OK);
    cr_expect_eq(vg__keymap_find(&m, k[0]), m.mask);
    cr_expect_eq(vg__keymap_find(&m, k[2]), 1u);
    cr_expect_eq(vg__keymap_find(&m, k[3]), 2u);
    vg__keymap_del_at(&m, vg__keymap_find(&m, k[0]));
    cr_expect_eq(vg__keymap_find(&m, k[0]), VG__KEYMAP_NONE);
    cr_expect_eq(vg__keymap_find(&m, k[1]), m.mask, "moved back into the freed slot");
    cr_expect_eq(vg__keymap_find(&m, k[2]), 0u);
    cr_expect_eq(vg__keymap_find(&m, k[3]), 1u, "home 0: moved back to 1, not past it");
    for (int i = 1; i < 4; i++)
        cr_expect_eq(vg__keymap_get(&m, k[i]), val_of(k[i]));
    cr_expect_eq(m.used, 3u);
    map_free(&m);
}

#define KEYS 3000

/* Random adds and deletes over 3000 page-aligned keys (many share a home
 * once the map is small), checked against an array of which are in. */
Test(keymap, random_adds_and_deletes_agree_with_a_plain_array)
{
    vg__keymap_t m = {NULL, 0, 0};
    static bool in[KEYS];
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    uint32_t count = 0;
    for (int op = 0; op < 400000; op++) {
        uint32_t k = (uint32_t)(test_rand(&seed) % KEYS);
        uint64_t key = (uint64_t)(k + 1) << 12;
        uint32_t at = vg__keymap_find(&m, key);
        cr_assert_eq(at != VG__KEYMAP_NONE, in[k], "op %d key %u", op, k);
        if (in[k] && (test_rand(&seed) & 1)) {
            cr_assert_eq(m.slot[at].val, val_of(key));
            vg__keymap_del_at(&m, at);
            in[k] = false;
            count--;
        } else if (!in[k]) {
            cr_assert_eq(vg__keymap_add(&m, key, val_of(key)), VG_OK);
            in[k] = true;
            count++;
        }
        cr_assert_eq(m.used, count);
        cr_assert_leq(2 * m.used, m.mask + 1, "more than half full");
        cr_assert(8 * m.used >= m.mask + 1 || m.mask + 1 == VG__KEYMAP_MIN,
                  "op %d: %u of %u slots used", op, m.used, m.mask + 1);
    }
    for (uint32_t k = 0; k < KEYS; k++) {
        uint64_t key = (uint64_t)(k + 1) << 12;
        cr_expect_eq(vg__keymap_get(&m, key), in[k] ? val_of(key) : NULL, "key %u", k);
    }
    map_free(&m);
}

Test(keymap, the_walk_visits_every_entry_once)
{
    vg__keymap_t m = {NULL, 0, 0};
    static int seen[KEYS];
    for (uint32_t k = 0; k < KEYS; k++)
        cr_assert_eq(vg__keymap_add(&m, (uint64_t)(k + 1) << 12, val_of((uint64_t)(k + 1) << 12)),
                     VG_OK);
    for (uint32_t k = 0; k < KEYS; k += 3)
        vg__keymap_del_at(&m, vg__keymap_find(&m, (uint64_t)(k + 1) << 12));
    void *v;
    for (uint32_t i = 0; (v = vg__keymap_next(&m, &i));) {
        uint64_t key = (uint64_t)(uintptr_t)v ^ 0x5a5a0000u;
        cr_assert_eq(key & 0xfff, 0u);
        seen[(key >> 12) - 1]++;
    }
    for (uint32_t k = 0; k < KEYS; k++)
        cr_expect_eq(seen[k], k % 3 ? 1 : 0, "key %u", k);
    map_free(&m);
}

/* 100000 keys in, then all but 10 out: the map halves its way back down to
 * its smallest (10 is under 1/8 of 128), and the 10 are still there. */
Test(keymap, a_map_that_empties_shrinks_back)
{
    vg__keymap_t m = {NULL, 0, 0};
    for (uint64_t k = 1; k <= 100000; k++)
        cr_assert_eq(vg__keymap_add(&m, k << 12, val_of(k << 12)), VG_OK);
    cr_assert_geq(m.mask + 1, 262144u);
    for (uint64_t k = 11; k <= 100000; k++)
        vg__keymap_del_at(&m, vg__keymap_find(&m, k << 12));
    cr_expect_eq(m.used, 10u);
    cr_expect_eq(m.mask + 1, VG__KEYMAP_MIN, "%u slots for 10 keys", m.mask + 1);
    for (uint64_t k = 1; k <= 100000; k++)
        cr_expect_eq(vg__keymap_get(&m, k << 12), k <= 10 ? val_of(k << 12) : NULL, "key %lu",
                     (unsigned long)k);
    map_free(&m);
}
