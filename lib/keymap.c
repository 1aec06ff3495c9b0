/*
 * keymap.c — the keymap's growth (vg_keymap.h has the map): a new slot
 * array twice the size, every entry probed into it again. Slow path: a
 * shard's table doubles a handful of times over a process's life.
 */
#include <stdlib.h>

#include "vg_keymap.h"

int vg__keymap_grow(vg__keymap_t *m)
{
    uint64_t slots = m->slot ? (uint64_t)m->mask + 1 : 0;
    uint64_t grown = slots ? 2 * slots : VG__KEYMAP_MIN;
    if (grown > (uint64_t)UINT32_MAX + 1)
        return VG_ESYS;
    vg__keymap_t n = {calloc(grown, sizeof(vg__keyslot_t)), (uint32_t)(grown - 1), 0};
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
