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
 * Only handles this process created under a budget are tracked (those with
 * a ledger record); imported handles pass through. All of it is slow path:
 * one mutex, never held across a driver call.
 */
#include <pthread.h>
#include <stdlib.h>

#include <uthash.h>

#include "vg_account.h"
#include "vg_fork.h"

typedef struct handle_refs {
    uint64_t handle;
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

static pthread_mutex_t vmm_lock = PTHREAD_MUTEX_INITIALIZER;
static handle_refs_t *refs;   /* only handles with a mapping or a retain */
static mapping_t *mappings;   /* by va */

/* A fork while another thread holds the lock must not leave it held in the
 * child (fork.c, rank VMM). */
void vg__account_vmm_prefork(void) { pthread_mutex_lock(&vmm_lock); }
void vg__account_vmm_postfork_parent(void) { pthread_mutex_unlock(&vmm_lock); }
void vg__account_vmm_postfork_child(void) { pthread_mutex_unlock(&vmm_lock); }

static bool ours(uint64_t handle)
{
    vg__alloc_t a;
    return vg__ledger_find(handle | VG__KEY_HANDLE, &a) == VG_OK;
}

/* The entry of a handle, made with its creation's one hold. Under the
 * lock. NULL when out of memory (the handle is then charged until its
 * release, as before). */
static handle_refs_t *refs_of(uint64_t handle)
{
    handle_refs_t *r;
    HASH_FIND(hh, refs, &handle, sizeof handle, r);
    if (r || !(r = calloc(1, sizeof *r)))
        return r;
    r->handle = handle;
    r->holds = 1;
    HASH_ADD(hh, refs, handle, sizeof r->handle, r);
    return r;
}

/* Drops one reference; true when it was the last (the entry is gone and
 * the driver has freed the memory). Under the lock. */
static bool unref(uint64_t handle, bool mapping)
{
    handle_refs_t *r;
    HASH_FIND(hh, refs, &handle, sizeof handle, r);
    if (!r)
        return !mapping; /* no entry: one hold, no mapping */
    if (mapping)
        r->maps--;
    else
        r->holds--;
    if (r->holds > 0 || r->maps > 0)
        return false;
    HASH_DEL(refs, r);
    free(r);
    return true;
}

static void uncharge(uint64_t handle, const char *api)
{
    vg__acct_release_freed(handle | VG__KEY_HANDLE, api);
}

bool vg__acct_vmm_tracked(uint64_t handle)
{
    return ours(handle);
}

void vg__acct_vmm_map(uint64_t va, uint64_t size, uint64_t handle)
{
    if (!ours(handle))
        return;
    mapping_t *m = calloc(1, sizeof *m);
    if (!m)
        return;
    *m = (mapping_t){.va = va, .size = size, .handle = handle};
    vg__mutex_lock(&vmm_lock, VG__RANK_VMM);
    handle_refs_t *r = refs_of(handle);
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
    if (!ours(handle))
        return;
    vg__mutex_lock(&vmm_lock, VG__RANK_VMM);
    handle_refs_t *r = refs_of(handle);
    if (r)
        r->holds++;
    vg__mutex_unlock(&vmm_lock, VG__RANK_VMM);
}

void vg__acct_vmm_released(uint64_t handle, const char *api)
{
    vg__mutex_lock(&vmm_lock, VG__RANK_VMM);
    bool last = unref(handle, false);
    vg__mutex_unlock(&vmm_lock, VG__RANK_VMM);
    if (last)
        uncharge(handle, api);
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
        uint64_t handle = 0;
        bool last = false;
        vg__mutex_lock(&vmm_lock, VG__RANK_VMM);
        mapping_t *m = mappings ? mapping_in(va, end) : NULL;
        if (m) {
            handle = m->handle;
            va = m->size > UINT64_MAX - m->va ? UINT64_MAX : m->va + m->size;
            HASH_DEL(mappings, m);
            free(m);
            last = unref(handle, true);
        }
        vg__mutex_unlock(&vmm_lock, VG__RANK_VMM);
        if (!m)
            return;
        if (last)
            uncharge(handle, api);
    }
}
