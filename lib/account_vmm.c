/*
 * account_vmm.c — how long a cuMemCreate allocation really lives.
 *
 * The driver frees a physical allocation only when every reference to it
 * is gone: the handle from cuMemCreate and each one from
 * cuMemRetainAllocationHandle (each dropped by a cuMemRelease), and every
 * mapping of it (dropped by cuMemUnmap). The CUDA programming guide's own
 * pattern releases the handle right after mapping, so a charge returned at
 * cuMemRelease let a 2 GiB budget hold 8.7 GiB on an H200. The charge (the
 * handle's ledger record, account.c) now stays until the last reference
 * goes, and is returned only after the driver call that dropped it
 * succeeded.
 *
 * A handle mapped into a sparse or deferred-mapping array with
 * cuMemMapArrayAsync is referenced by that mapping too, until an unmap
 * covers it or the array goes. An unmap names a region, not a handle: one
 * that covers a mapping only in part leaves it counted (a remap over a
 * mapped region likewise), so the charge stays, never goes early.
 *
 * Only handles this process created under a budget are tracked (those with
 * a ledger record); imported handles pass through. All of it is slow path.
 *
 * The bookkeeping must see VMM calls in the order the driver made them: a
 * thread's unmap of va, then another's map of va before the first one's
 * books ran, stored two mappings under va and the unmap dropped the new
 * one (its handle uncharged while mapped, the old one charged for good);
 * a release between the driver's map of a handle and the map's books found
 * no mapping and uncharged it. So one VMM call runs at a time, under
 * call_lock from before the driver call to after its books (vmm_lock, the
 * tables' own, is taken inside). These calls are rare (a framework maps
 * and unmaps in large pieces), and the driver serialises them itself.
 *
 * cuMemCreate does not take call_lock, and the driver may hand out the
 * value of a handle it has just freed: between a last release or unmap
 * and its books, another thread's cuMemCreate can be given the same handle
 * and record it under the same key (its insert replaces the stale record,
 * account.c). So a charge goes back by the number (seq) of the record it
 * belongs to, learnt while the handle was live: the books of the old
 * handle then leave the new one's record, and its charge, alone.
 */
#include <pthread.h>
#include <stdlib.h>

#include <uthash.h>

#include "vg_account.h"
#include "vg_fork.h"

typedef struct handle_refs {
    uint64_t handle;
    uint64_t seq; /* its ledger record's number */
    int holds; /* cuMemCreate + retains - releases */
    int maps;  /* live mappings */
    UT_hash_handle hh;
} handle_refs_t;

typedef struct mapping {
    uint64_t va;
    uint64_t size;
    uint64_t handle;
    UT_hash_handle hh;
} mapping_t;

/* A mapping into an array: a box of tiles of one level and layer, or a
 * byte range of the mip tail (lo[0]..hi[0]). A deferred-mapping array is
 * mapped and unmapped whole (the driver ignores the region). */
typedef struct array_map {
    uint64_t array;   /* the array's ledger key */
    uint64_t handle;
    bool whole, miptail;
    unsigned int level, layer;
    uint64_t lo[3], hi[3];
    struct array_map *next;
} array_map_t;

static pthread_mutex_t call_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t vmm_lock = PTHREAD_MUTEX_INITIALIZER;
static handle_refs_t *refs;   /* only handles with a mapping or a retain */
static mapping_t *mappings;   /* by va */
static array_map_t *array_maps;
static _Atomic int array_mapped; /* entries in array_maps: lets destroys skip the lock */

/* A fork while another thread holds the lock must not leave it held in the
 * child (fork.c, rank VMM). */
void vg__account_vmm_prefork(void) { pthread_mutex_lock(&vmm_lock); }
void vg__account_vmm_postfork_parent(void) { pthread_mutex_unlock(&vmm_lock); }
void vg__account_vmm_postfork_child(void) { pthread_mutex_unlock(&vmm_lock); }

/* The same for a VMM call in flight (rank VMM_CALL): fork waits for its
 * driver call and books. */
void vg__account_vmm_call_prefork(void) { pthread_mutex_lock(&call_lock); }
void vg__account_vmm_call_postfork_parent(void) { pthread_mutex_unlock(&call_lock); }
void vg__account_vmm_call_postfork_child(void) { pthread_mutex_unlock(&call_lock); }

void vg__acct_vmm_begin(void)
{
    vg__mutex_lock(&call_lock, VG__RANK_VMM_CALL); /* until _end */
}

void vg__acct_vmm_end(void)
{
    vg__mutex_unlock(&call_lock, VG__RANK_VMM_CALL);
}

/* True when `handle` has a ledger record (*seq: its number). */
static bool ours(uint64_t handle, uint64_t *seq)
{
    vg__alloc_t a;
    if (vg__ledger_find(handle | VG__KEY_HANDLE, &a) != VG_OK)
        return false;
    *seq = a.seq;
    return true;
}

/* The entry of a handle whose record is numbered `seq`, made with its
 * creation's one hold. Under the lock. NULL when out of memory (the
 * handle is then charged until its release, as before). */
static handle_refs_t *refs_of(uint64_t handle, uint64_t seq)
{
    handle_refs_t *r;
    HASH_FIND(hh, refs, &handle, sizeof handle, r);
    if (r || !(r = calloc(1, sizeof *r)))
        return r;
    r->handle = handle;
    r->seq = seq;
    r->holds = 1;
    HASH_ADD(hh, refs, handle, sizeof r->handle, r);
    return r;
}

/* Drops one reference; true when it was the last (the entry is gone and
 * the driver has freed the memory), with *seq the number of the record
 * whose charge goes (left as it is when there was no entry: one hold, no
 * mapping). Under the lock. */
static bool unref(uint64_t handle, bool mapping, uint64_t *seq)
{
    handle_refs_t *r;
    HASH_FIND(hh, refs, &handle, sizeof handle, r);
    if (!r)
        return !mapping;
    if (mapping)
        r->maps--;
    else
        r->holds--;
    if (r->holds > 0 || r->maps > 0)
        return false;
    *seq = r->seq;
    HASH_DEL(refs, r);
    free(r);
    return true;
}

/* Only the record numbered seq: the driver may have handed the handle's
 * value to a new allocation already (the file's head). */
static void uncharge(uint64_t handle, uint64_t seq, const char *api)
{
    vg__acct_release_swept(handle | VG__KEY_HANDLE, seq, api);
}

bool vg__acct_vmm_tracked(uint64_t handle, uint64_t *seq)
{
    return ours(handle, seq);
}

void vg__acct_vmm_map(uint64_t va, uint64_t size, uint64_t handle)
{
    uint64_t seq;
    if (!ours(handle, &seq))
        return;
    mapping_t *m = calloc(1, sizeof *m);
    if (!m)
        return;
    *m = (mapping_t){.va = va, .size = size, .handle = handle};
    vg__mutex_lock(&vmm_lock, VG__RANK_VMM);
    handle_refs_t *r = refs_of(handle, seq);
    if (r) {
        r->maps++;
        HASH_ADD(hh, mappings, va, sizeof m->va, m);
    }
    vg__mutex_unlock(&vmm_lock, VG__RANK_VMM);
    if (!r)
        free(m);
}

void vg__acct_vmm_retain(uint64_t handle)
{
    uint64_t seq;
    if (!ours(handle, &seq))
        return;
    vg__mutex_lock(&vmm_lock, VG__RANK_VMM);
    handle_refs_t *r = refs_of(handle, seq);
    if (r)
        r->holds++;
    vg__mutex_unlock(&vmm_lock, VG__RANK_VMM);
}

void vg__acct_vmm_released(uint64_t handle, uint64_t seq, const char *api)
{
    vg__mutex_lock(&vmm_lock, VG__RANK_VMM);
    bool last = unref(handle, false, &seq);
    vg__mutex_unlock(&vmm_lock, VG__RANK_VMM);
    if (last)
        uncharge(handle, seq, api);
}

/* The mapping starting at va, else any inside [va, end): a scan, only
 * for an unmap whose range does not start at a mapping. Under the lock. */
static mapping_t *mapping_in(uint64_t va, uint64_t end)
{
    mapping_t *m, *tmp;
    HASH_FIND(hh, mappings, &va, sizeof va, m);
    if (m)
        return m;
    HASH_ITER(hh, mappings, m, tmp)
        if (m->va >= va && m->va < end)
            return m;
    return NULL;
}

void vg__acct_vmm_unmap(uint64_t va, uint64_t size, const char *api)
{
    uint64_t end = size > UINT64_MAX - va ? UINT64_MAX : va + size;
    while (va < end) {
        uint64_t handle = 0, seq = 0;
        bool last = false;
        vg__mutex_lock(&vmm_lock, VG__RANK_VMM);
        mapping_t *m = mappings ? mapping_in(va, end) : NULL;
        if (m) {
            handle = m->handle;
            va = m->size > UINT64_MAX - m->va ? UINT64_MAX : m->va + m->size;
            HASH_DEL(mappings, m);
            free(m);
            last = unref(handle, true, &seq);
        }
        vg__mutex_unlock(&vmm_lock, VG__RANK_VMM);
        if (!m)
            return;
        if (last)
            uncharge(handle, seq, api);
    }
}

/* ------------------------------------------------ mappings into arrays */

static uint64_t array_key(const CUarrayMapInfo *op)
{
    const void *h = op->resourceType == CU_RESOURCE_TYPE_MIPMAPPED_ARRAY
                        ? (const void *)op->resource.mipmap
                        : (const void *)op->resource.array;
    return (uint64_t)(uintptr_t)h | VG__KEY_HANDLE;
}

/* Only deferred-mapping arrays answer for their memory requirements
 * (cuda.h), and those the driver maps whole. */
static bool maps_whole(const CUarrayMapInfo *op)
{
    CUDA_ARRAY_MEMORY_REQUIREMENTS req;
    CUdevice dev = op->deviceBitMask ? __builtin_ctz(op->deviceBitMask) : 0;
    if (op->resourceType == CU_RESOURCE_TYPE_MIPMAPPED_ARRAY)
        return vg__driver()->cuMipmappedArrayGetMemoryRequirements(&req, op->resource.mipmap,
                                                                   dev) == CUDA_SUCCESS;
    return vg__driver()->cuArrayGetMemoryRequirements(&req, op->resource.array, dev) ==
           CUDA_SUCCESS;
}

/* The region an entry names (whole is set apart). */
static void region_of(const CUarrayMapInfo *op, array_map_t *m)
{
    m->array = array_key(op);
    if (op->subresourceType == CU_ARRAY_SPARSE_SUBRESOURCE_TYPE_MIPTAIL) {
        m->miptail = true;
        m->layer = op->subresource.miptail.layer;
        m->lo[0] = op->subresource.miptail.offset;
        m->hi[0] = m->lo[0] + op->subresource.miptail.size;
        m->hi[1] = m->hi[2] = 1;
        return;
    }
    const unsigned int *off = &op->subresource.sparseLevel.offsetX;
    const unsigned int *ext = &op->subresource.sparseLevel.extentWidth;
    m->level = op->subresource.sparseLevel.level;
    m->layer = op->subresource.sparseLevel.layer;
    for (int i = 0; i < 3; i++) {
        m->lo[i] = off[i];
        m->hi[i] = (uint64_t)off[i] + ext[i];
    }
}

/* True when unmapping `u` (NULL: the whole array) unmaps all of `m`. */
static bool covers(const array_map_t *u, const array_map_t *m)
{
    if (!u || m->whole)
        return true;
    if (u->miptail != m->miptail || u->level != m->level || u->layer != m->layer)
        return false;
    for (int i = 0; i < 3; i++)
        if (m->lo[i] < u->lo[i] || m->hi[i] > u->hi[i])
            return false;
    return true;
}

static void array_map(const CUarrayMapInfo *op)
{
    uint64_t handle = op->memHandle.memHandle, seq;
    if (op->memHandleType != CU_MEM_HANDLE_TYPE_GENERIC || !ours(handle, &seq))
        return;
    array_map_t *m = calloc(1, sizeof *m);
    if (!m)
        return; /* the handle is charged until its release, as before */
    region_of(op, m);
    m->whole = maps_whole(op);
    m->handle = handle;
    vg__mutex_lock(&vmm_lock, VG__RANK_VMM);
    handle_refs_t *r = refs_of(handle, seq);
    if (r) {
        r->maps++;
        m->next = array_maps;
        array_maps = m;
        atomic_fetch_add_explicit(&array_mapped, 1, memory_order_relaxed);
    }
    vg__mutex_unlock(&vmm_lock, VG__RANK_VMM);
    if (!r)
        free(m);
}

/* Drops the mappings into `array` that `u` covers (NULL: all of them), one
 * at a time so that no charge moves under the lock. */
static void array_unmap(uint64_t array, const array_map_t *u, const char *api)
{
    for (;;) {
        uint64_t handle = 0, seq = 0;
        bool found = false, last = false;
        vg__mutex_lock(&vmm_lock, VG__RANK_VMM);
        for (array_map_t **p = &array_maps; *p; p = &(*p)->next) {
            array_map_t *m = *p;
            if (m->array != array || !covers(u, m))
                continue;
            *p = m->next;
            handle = m->handle;
            free(m);
            atomic_fetch_sub_explicit(&array_mapped, 1, memory_order_relaxed);
            last = unref(handle, true, &seq);
            found = true;
            break;
        }
        vg__mutex_unlock(&vmm_lock, VG__RANK_VMM);
        if (!found)
            return;
        if (last)
            uncharge(handle, seq, api);
    }
}

void vg__acct_vmm_array_op(const CUarrayMapInfo *op, const char *api)
{
    if (op->memOperationType == CU_MEM_OPERATION_TYPE_MAP) {
        array_map(op);
    } else if (op->memOperationType == CU_MEM_OPERATION_TYPE_UNMAP &&
               atomic_load_explicit(&array_mapped, memory_order_relaxed)) {
        array_map_t u = {0};
        region_of(op, &u);
        array_unmap(u.array, &u, api);
    }
}

void vg__acct_vmm_array_gone(uint64_t key, const char *api)
{
    if (atomic_load_explicit(&array_mapped, memory_order_relaxed))
        array_unmap(key, NULL, api);
}
