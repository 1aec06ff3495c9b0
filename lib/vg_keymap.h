/*
 * vg_keymap.h — a hash map from a nonzero 64-bit key to a non-NULL
 * pointer, for the ledger's shard tables (ledger.c), which use it under
 * their shard's lock: nothing here locks.
 *
 * Open addressing with linear probing, at most half full, and deletion by
 * backward shift (no tombstones, so a probe never gets longer with age).
 * A slot is 16 bytes, the key beside its value: a lookup reads one line of
 * slots, usually, and nothing else of the map. Against uthash, which the
 * ledger used before, a hooked alloc+free pair ran ~117 fewer instructions
 * in the map and touches no neighbour's record (uthash links every record
 * into an insertion-order list). The only allocations are resizes
 * (keymap.c), out of line: the map doubles before it is half full and
 * halves once less than 1/8 full (above VG__KEYMAP_MIN slots): a shard
 * that once held a million records gives back its 32-64 MiB of table (the
 * records' slabs stay, ledger.c), and a size that moves around one
 * boundary does not rehash each time.
 */
#ifndef VG_KEYMAP_H
#define VG_KEYMAP_H

#include <stdint.h>

#include "vg_base.h"

typedef struct vg__keyslot {
    uint64_t key; /* 0: empty */
    void *val;
} vg__keyslot_t;

typedef struct vg__keymap {
    vg__keyslot_t *slot; /* NULL until the first add */
    uint32_t mask;       /* slots - 1 (a power of two) */
    uint32_t used;
} vg__keymap_t;

#define VG__KEYMAP_NONE UINT32_MAX
#define VG__KEYMAP_MIN 64u /* slots of a new map: 1 KiB */

/* Doubles the map (or makes it): VG_ESYS without memory, the map as it
 * was. keymap.c. */
int vg__keymap_grow(vg__keymap_t *m);
/* Halves the map; without memory it stays as it is. keymap.c. */
void vg__keymap_shrink(vg__keymap_t *m);

static inline uint32_t vg__keymap_home(const vg__keymap_t *m, uint64_t key)
{
    return (uint32_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & m->mask;
}

/* The slot holding key, or the empty one that ends its probe. m->slot
 * must be set. */
static inline uint32_t vg__keymap_probe(const vg__keymap_t *m, uint64_t key)
{
    uint32_t i = vg__keymap_home(m, key);
    while (m->slot[i].key && m->slot[i].key != key)
        i = (i + 1) & m->mask;
    return i;
}

/* The slot of key, or VG__KEYMAP_NONE. */
static inline uint32_t vg__keymap_find(const vg__keymap_t *m, uint64_t key)
{
    if (vg__unlikely(!m->slot))
        return VG__KEYMAP_NONE;
    uint32_t i = vg__keymap_probe(m, key);
    return m->slot[i].key ? i : VG__KEYMAP_NONE;
}

static inline void *vg__keymap_get(const vg__keymap_t *m, uint64_t key)
{
    uint32_t i = vg__keymap_find(m, key);
    return i == VG__KEYMAP_NONE ? NULL : m->slot[i].val;
}

/* Adds key (nonzero) -> val (non-NULL): VG_EINVAL when key is there
 * already (its value kept), VG_ESYS when the map must grow and cannot. */
static inline int vg__keymap_add(vg__keymap_t *m, uint64_t key, void *val)
{
    if (vg__unlikely((m->used + 1u) * 2u > m->mask + 1u || !m->slot) &&
        vg__keymap_grow(m) != VG_OK)
        return m->slot && vg__keymap_find(m, key) != VG__KEYMAP_NONE ? VG_EINVAL : VG_ESYS;
    uint32_t i = vg__keymap_probe(m, key);
    if (m->slot[i].key)
        return VG_EINVAL;
    m->slot[i] = (vg__keyslot_t){key, val};
    m->used++;
    return VG_OK;
}

/* Empties slot i (from vg__keymap_find), moving back each later entry of
 * the run that may fill it: one whose home is not cyclically in (i, j]. */
static inline void vg__keymap_del_at(vg__keymap_t *m, uint32_t i)
{
    const uint32_t mask = m->mask;
    for (uint32_t j = (i + 1) & mask; m->slot[j].key; j = (j + 1) & mask) {
        uint32_t home = vg__keymap_home(m, m->slot[j].key);
        if (((j - home) & mask) >= ((j - i) & mask)) {
            m->slot[i] = m->slot[j];
            i = j;
        }
    }
    m->slot[i] = (vg__keyslot_t){0, NULL};
    uint32_t used = --m->used;
    /* Less than 1/8 full (mask >= 8 * used), and above the smallest size. */
    if (vg__unlikely(mask >= 8u * used) && mask >= VG__KEYMAP_MIN)
        vg__keymap_shrink(m);
}

/* For each value v of the map: for (i = 0; (v = vg__keymap_next(m, &i));) */
static inline void *vg__keymap_next(const vg__keymap_t *m, uint32_t *i)
{
    for (; m->slot && *i <= m->mask; (*i)++)
        if (m->slot[*i].key)
            return m->slot[(*i)++].val;
    return NULL;
}

#endif /* VG_KEYMAP_H */
