/*
 * ptrcheck.c — what is this address? (vg_ptr_check and the engine's bad-free
 * diagnostics). A rare path: it may call the driver and read /proc/self/maps.
 *
 * Order, and why:
 *  1. ledger, exact start       -> LIVE      (ours; the cheapest answer)
 *     pool chunk index          -> INTERIOR, or FREED (a block of a chunk
 *                                  that no live allocation holds)
 *  2. driver address range      -> INTERIOR  (its base is live in the ledger)
 *                               -> FOREIGN   (the driver knows it, we don't)
 *     The driver comes before the quarantine: a range we freed may since have
 *     been handed to someone else, and then it is theirs, not "freed".
 *     It also comes before the host check: under UVA device memory lives in
 *     the process's address space and can appear in /proc/self/maps.
 *  3. quarantine containment    -> FREED     (ours until recently; the driver
 *                                             no longer knows it)
 *  4. a readable mapping        -> HOST
 *  5. otherwise                 -> FAKE, naming a recognisable pattern.
 * Without a loaded driver (vg__driver() == NULL) step 2 is skipped.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "vg_account.h"
#include "vg_budget.h"
#include "vg_pool.h"

#define VG__STRIDE_BASE 0x7f8000000000ull
#define VG__STRIDE 0x100000000ull        /* 4 GiB */
#define VG__SMALL_LIMIT (1ull << 20)      /* 1 MiB */
#define VG__USER_TOP 0x00007fffffffffffull /* last canonical user address */

void vg__fake_pattern(vg_devptr_t ptr, char *out, size_t len)
{
    if (!out || len == 0)
        return;
    out[0] = '\0';
    if (ptr == 0)
        snprintf(out, len, "NULL");
    else if (ptr < VG__SMALL_LIMIT)
        snprintf(out, len, "small counter-like value 0x%" PRIx64, ptr);
    else if (ptr > VG__USER_TOP)
        snprintf(out, len, "non-canonical address");
    else if (ptr >= VG__STRIDE_BASE && (ptr - VG__STRIDE_BASE) % VG__STRIDE == 0)
        snprintf(out, len,
                 "synthetic stride 0x7f8000000000 + k*0x100000000 (k=%" PRIu64
                 ")",
                 (uint64_t)((ptr - VG__STRIDE_BASE) / VG__STRIDE));
    else if (ptr % VG__STRIDE == 0)
        snprintf(out, len, "4 GiB-aligned synthetic address");
}

static void info_from_alloc(vg_ptr_info_t *info, vg_ptr_class_t cls,
                            const vg__alloc_t *a, vg_devptr_t ptr)
{
    /* The caller's view starts at a->ptr; an address in the alignment
     * padding before it is reported against the driver's base. */
    vg_devptr_t start = ptr >= a->ptr ? a->ptr : a->base;
    info->cls = cls;
    info->base = start;
    info->offset = ptr - start;
    info->size = a->size;
    info->kind = (vg_kind_t)a->kind;
    info->device = a->device;
}

typedef struct find_base_ctx {
    vg_devptr_t base;
    vg__alloc_t found;
    bool hit;
} find_base_ctx_t;

static void match_base(const vg__alloc_t *a, void *ctx)
{
    find_base_ctx_t *c = ctx;
    if (a->base == c->base) {
        c->found = *a;
        c->hit = true;
    }
}

/* The live allocation made of the driver allocation starting at `base`:
 * keyed lookup first (its address is the base unless it was aligned), else
 * a scan for the aligned one. Pool blocks, many to a driver allocation,
 * never come here: classify_by_chunk answers for them. */
static bool live_by_base(vg_devptr_t base, vg__alloc_t *out)
{
    if (vg__ledger_find(base, out) == VG_OK)
        return true;
    find_base_ctx_t c = {.base = base};
    vg__ledger_foreach(VG__ANY_OWNER, match_base, &c);
    if (c.hit)
        *out = c.found;
    return c.hit;
}

/* Step 2. true when the driver knows ptr (info filled: INTERIOR or FOREIGN). */
static bool classify_by_driver(vg_devptr_t ptr, vg_ptr_info_t *info)
{
    const vg__driver_t *d = vg__driver();
    if (!d || !d->cuMemGetAddressRange_v2)
        return false;
    CUdeviceptr base = 0;
    size_t size = 0;
    if (d->cuMemGetAddressRange_v2(&base, &size, (CUdeviceptr)ptr) !=
        CUDA_SUCCESS)
        return false;
    vg__alloc_t a;
    if (live_by_base(base, &a)) {
        info_from_alloc(info, VG_PTR_INTERIOR, &a, ptr);
        return true;
    }
    info->cls = VG_PTR_FOREIGN;
    info->base = base;
    info->offset = ptr - base;
    info->size = size;
    int ordinal = -1;
    if (d->cuPointerGetAttribute &&
        d->cuPointerGetAttribute(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                                 (CUdeviceptr)ptr) != CUDA_SUCCESS)
        ordinal = -1;
    info->device = ordinal;
    return true;
}

/* Parses "start-end perms" at the head of one maps line. */
static bool line_has(const char *line, uint64_t addr)
{
    unsigned long long lo, hi;
    char perms[5];
    if (sscanf(line, "%llx-%llx %4s", &lo, &hi, perms) != 3)
        return false;
    return addr >= lo && addr < hi && perms[0] == 'r';
}

/* Step 4: is addr inside a readable mapping? Reads /proc/self/maps through a
 * fixed stack buffer (no malloc, no stdio stream); a line cut at the end of
 * the buffer is moved to its front before the next read. */
static bool host_readable(uint64_t addr)
{
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    char buf[4096];
    size_t have = 0;
    bool found = false;
    for (;;) {
        ssize_t got = read(fd, buf + have, sizeof buf - 1 - have);
        if (got <= 0)
            break;
        have += (size_t)got;
        buf[have] = '\0';
        char *line = buf, *nl;
        while (!found && (nl = strchr(line, '\n'))) {
            *nl = '\0';
            found = line_has(line, addr);
            line = nl + 1;
        }
        if (found)
            break;
        have = (size_t)(buf + have - line);
        if (have == sizeof buf - 1) /* a line longer than the buffer */
            have = 0;
        memmove(buf, line, have);
    }
    close(fd);
    return found;
}

/* Step 1b: an address inside one of our pool chunks belongs to a block
 * (live, or freed and cached), never to the driver's view of the chunk.
 * Exact, and no scan: the chunk index gives the block. */
static bool classify_by_chunk(vg_devptr_t ptr, vg_ptr_info_t *info)
{
    vg__chunk_ref_t ref;
    if (!vg__chunk_index_find(ptr, &ref))
        return false;
    vg_devptr_t block = vg__chunk_block_of(&ref, ptr);
    vg__alloc_t a;
    if (vg__ledger_find(block, &a) == VG_OK && ptr - block < a.size) {
        info_from_alloc(info, ptr == block ? VG_PTR_LIVE : VG_PTR_INTERIOR, &a, ptr);
        return true;
    }
    if (vg__ledger_find_freed(ptr, &a) == VG_OK && a.ptr == block) {
        info_from_alloc(info, VG_PTR_FREED, &a, ptr);
        return true;
    }
    /* Cached, never handed out, or freed long ago: no record says more. */
    info->cls = VG_PTR_FREED;
    info->base = block;
    info->offset = ptr - block;
    info->size = ref.block;
    return true;
}

int vg__ptr_classify(vg_devptr_t ptr, vg_ptr_info_t *info)
{
    if (!info)
        return VG_EINVAL;
    memset(info, 0, sizeof *info);
    info->device = -1;
    vg__alloc_t a;
    if (ptr != 0 && vg__ledger_find(ptr, &a) == VG_OK) {
        info_from_alloc(info, VG_PTR_LIVE, &a, ptr);
        return VG_OK;
    }
    if (ptr != 0 && classify_by_chunk(ptr, info))
        return VG_OK;
    if (ptr != 0 && classify_by_driver(ptr, info))
        return VG_OK;
    if (ptr != 0 && vg__ledger_find_freed(ptr, &a) == VG_OK) {
        info_from_alloc(info, VG_PTR_FREED, &a, ptr);
        return VG_OK;
    }
    if (ptr != 0 && host_readable(ptr)) {
        info->cls = VG_PTR_HOST;
        return VG_OK;
    }
    info->cls = VG_PTR_FAKE;
    vg__fake_pattern(ptr, info->pattern, sizeof info->pattern);
    return VG_OK;
}

/* Public. Loads the engine (and with it the driver) if nothing has yet; a
 * failure there only means the driver step is skipped. */
int vg_ptr_check(vg_devptr_t ptr, vg_ptr_info_t *info)
{
    if (!info)
        return VG_EINVAL;
    (void)vg__engine_init();
    return vg__ptr_classify(ptr, info);
}
