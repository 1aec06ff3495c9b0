/*
 * keymap.c — the keymap's resizing (vg_keymap.h has the map): a new slot
 * array twice or half the size, every entry probed into it again. Slow
 * path: a shard's table doubles a handful of times over a process's life,
 * and halves when it has emptied.
 */
#include <stdlib.h>

#include "vg_keymap.h"

/* Moves every entry into a new array of `to` slots (a power of two, more
 * than twice the entries); VG_ESYS without memory, the map as it was. */
static int rehash(vg__keymap_t *m, uint64_t to)
{
    uint64_t slots = m->slot ? (uint64_t)m->mask + 1 : 0;
    vg__keymap_t n = {calloc(to, sizeof(vg__keyslot_t)), (uint32_t)(to - 1), 0};
    if (!n.slot)
        return VG_ESYS;
    for (uint64_t i = 0; i < slots; i++) {
        if (m->slot[i].key) {
            n.slot[vg__keymap_probe(&n, m->slot[i].key)] = m->slot[i];
            n.used++;
        }
    }
    free(m->slot);
    *m = n;
    return VG_OK;
}

int vg__keymap_grow(vg__keymap_t *m)
{
    uint64_t slots = m->slot ? (uint64_t)m->mask + 1 : 0;
    uint64_t grown = slots ? 2 * slots : VG__KEYMAP_MIN;
    /* At most 2^28 slots (2^27 records in one shard, 16 GiB of records):
     * the halving test's 8 * used, `mask + 1` and a walk's `i <= mask` are
     * 32-bit sums that would wrap near 2^29 records and 2^32 slots. */
    if (grown > 1ull << 28)
        return VG_ESYS;
    return rehash(m, grown);
}

void vg__keymap_shrink(vg__keymap_t *m)
{
    (void)rehash(m, ((uint64_t)m->mask + 1) / 2); /* without memory, stays as it is */
}
