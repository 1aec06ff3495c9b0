/*
 * chunks.c — which pool chunk holds an address (process-wide).
 *
 * A pool's small blocks are carved out of chunks, each one driver
 * allocation (cache.c). The driver describes the chunk; the program made
 * blocks. Three places need to go from an address to its block without the
 * driver's help: the shim's cache mode (cuMemGetAddressRange and
 * cuPointerGetAttribute(s) report the block), pointer classification (an
 * address in a chunk is a block or cached memory, never "foreign"), and the
 * free hooks (a chunk must never be handed to cuMemFree by a bad free).
 *
 * The index is a sorted array of chunk ranges under one mutex: chunks are
 * added and released rarely (a few per MiB of growth). Lookups are rare
 * (bad frees, vg_ptr_check) except in cache mode, where every pointer query
 * (cuPointerGetAttribute(s), cuMemGetAddressRange) takes the mutex for a
 * binary search: threads querying at once share it. Not a read-write lock: glibc unlocks a write-locked
 * rwlock only from the thread that took it, so the atfork handler could not
 * release it in a forked child (whose thread is new) and the child's first
 * chunk would hang. An atomic count lets a process with no pool skip the
 * lock entirely.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "vg_fork.h"
#include "vg_pool.h"

static pthread_mutex_t index_lock = PTHREAD_MUTEX_INITIALIZER;
static vg__chunk_ref_t *refs; /* sorted by base; ranges never overlap */
static size_t ref_count, ref_cap;
static _Atomic size_t ref_published; /* ref_count, readable without the lock */

/* A fork while another thread holds the lock must not leave it held in the
 * child (fork.c, rank CHUNKS). */
void vg__chunks_prefork(void) { pthread_mutex_lock(&index_lock); }
void vg__chunks_postfork_parent(void) { pthread_mutex_unlock(&index_lock); }
void vg__chunks_postfork_child(void) { pthread_mutex_unlock(&index_lock); }

/* The first index whose base is greater than ptr (under the lock). */
static size_t upper_bound(vg_devptr_t ptr)
{
    size_t lo = 0, hi = ref_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (refs[mid].base <= ptr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

int vg__chunk_index_add(const vg__chunk_ref_t *ref)
{
    int rc = VG_OK;
    vg__mutex_lock(&index_lock, VG__RANK_CHUNKS);
    if (ref_count == ref_cap) {
        size_t cap = ref_cap ? ref_cap * 2 : 64;
        vg__chunk_ref_t *v = realloc(refs, cap * sizeof *v);
        if (!v) {
            rc = VG_ESYS;
            goto out;
        }
        refs = v;
        ref_cap = cap;
    }
    size_t at = upper_bound(ref->base);
    memmove(&refs[at + 1], &refs[at], (ref_count - at) * sizeof *refs);
    refs[at] = *ref;
    ref_count++;
    atomic_store_explicit(&ref_published, ref_count, memory_order_release);
out:
    vg__mutex_unlock(&index_lock, VG__RANK_CHUNKS);
    return rc;
}

void vg__chunk_index_remove(vg_devptr_t base)
{
    vg__mutex_lock(&index_lock, VG__RANK_CHUNKS);
    size_t at = upper_bound(base);
    if (at > 0 && refs[at - 1].base == base) {
        memmove(&refs[at - 1], &refs[at], (ref_count - at) * sizeof *refs);
        ref_count--;
        atomic_store_explicit(&ref_published, ref_count, memory_order_release);
    }
    vg__mutex_unlock(&index_lock, VG__RANK_CHUNKS);
}

bool vg__chunk_index_find(vg_devptr_t ptr, vg__chunk_ref_t *out)
{
    if (atomic_load_explicit(&ref_published, memory_order_acquire) == 0)
        return false;
    bool found = false;
    vg__mutex_lock(&index_lock, VG__RANK_CHUNKS);
    size_t at = upper_bound(ptr);
    if (at > 0 && ptr - refs[at - 1].base < refs[at - 1].bytes) {
        *out = refs[at - 1];
        found = true;
    }
    vg__mutex_unlock(&index_lock, VG__RANK_CHUNKS);
    return found;
}

vg_devptr_t vg__chunk_block_of(const vg__chunk_ref_t *ref, vg_devptr_t ptr)
{
    return ref->base + (ptr - ref->base) / ref->block * ref->block;
}
