/*
 * fuzz_shared_attach.c — the shared region's attach checks against damaged
 * regions (lib/shared_region.c; the recount is lib/shared_reap.c's). The
 * input patches a valid region image (two claimed devices, three processes
 * holding memory): pairs of (offset, byte) aimed mostly at the header, the
 * first two bytes choosing how much of the image the validator is shown.
 * vg__shm_validate must never read past the length it is given (ASan in
 * `make test SAN=address`), must refuse every image whose header no longer
 * matches the layout, must accept an image only if the body invariants
 * hold (every device's use the sum of its slots', levels and limits sane:
 * a damaged body must never pass for a valid one), and on an image it
 * accepts, recounting (what crash recovery does with whatever the slots
 * hold) must keep them.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vg_shared.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool every_slot_alive(const vg__shm_slot_t *s, void *ctx)
{
    (void)ctx;
    return s->pid > 0; /* a pure stand-in for the liveness check */
}

static vg__shm_t *image(void)
{
    static vg__shm_t *valid;
    if (!valid) {
        valid = calloc(1, sizeof *valid);
        if (!valid)
            abort();
        valid->h.magic = VG__SHM_MAGIC;
        valid->h.version = VG__SHM_VERSION;
        valid->h.header_size = sizeof valid->h;
        valid->h.total_size = sizeof *valid;
        valid->h.device_count = VG__SHM_DEVICES;
        valid->h.slot_count = VG__SHM_SLOTS;
        valid->h.waiter_count = VG__SHM_WAITERS;
        valid->h.cmd_len = VG__SHM_CMD;
        valid->h.default_limit = VG__UNLIMITED;
        for (int d = 0; d < VG__SHM_DEVICES; d++) {
            valid->dev[d].limit = VG__UNLIMITED;
            valid->dev[d].ordinal = -1;
        }
        for (int d = 0; d < 2; d++) {
            valid->dev[d].ordinal = d;
            valid->dev[d].limit = 1ull << 30;
            memcpy(valid->dev[d].uuid, d ? "GPU-1111" : "GPU-0000", 8);
        }
        for (int s = 0; s < 3; s++) {
            valid->slot[s].pid = 100 + s;
            valid->slot[s].used[s % 2] = 4096u << s;
            valid->dev[s % 2].used += 4096u << s;
        }
        for (int d = 0; d < 2; d++)
            valid->dev[d].peak = valid->dev[d].used;
        char err[256];
        if (vg__shm_validate(valid, sizeof *valid, err, sizeof err) != VG_OK)
            abort(); /* the seed itself must be valid */
    }
    return valid;
}

/* What an accepted body promises the engine. */
static void body_holds(const vg__shm_t *r)
{
    uint64_t sum[VG__SHM_DEVICES] = {0};
    for (int s = 0; s < VG__SHM_SLOTS; s++)
        if (r->slot[s].pid > 0)
            for (int d = 0; d < VG__SHM_DEVICES; d++)
                sum[d] += r->slot[s].used[d];
    for (int d = 0; d < VG__SHM_DEVICES; d++) {
        const vg__shm_device_t *e = &r->dev[d];
        if (e->used != sum[d] || e->level < 0 || e->level > 3 || e->ordinal < -1 ||
            e->ordinal >= VG__SHM_DEVICES || memchr(e->uuid, 0, sizeof e->uuid) == NULL ||
            (e->limit != VG__UNLIMITED && e->limit >= VG__SHM_LIMIT_MAX))
            abort();
    }
}

/* Puts back what one input changed, cheaper than copying the whole image
 * (about 400 KiB) for every input: the patched bytes in reverse order,
 * then the header and devices, which a recount rewrites. */
typedef struct undo {
    size_t off;
    uint8_t old;
} undo_t;

static void restore(vg__shm_t *work, const undo_t *u, size_t n)
{
    uint8_t *bytes = (uint8_t *)work;
    while (n-- > 0)
        bytes[u[n].off] = u[n].old;
    memcpy(&work->h, &image()->h, sizeof work->h);
    memcpy(work->dev, image()->dev, sizeof work->dev);
}

static int check(vg__shm_t *work, size_t len)
{
    /* Damage to the checked header fields is refused; elsewhere, refused
     * unless the body still keeps its invariants. */
    vg__shm_header_t h;
    memcpy(&h, work, sizeof h);
    bool header_ok = h.magic == VG__SHM_MAGIC && h.version == VG__SHM_VERSION &&
                     h.header_size == sizeof h && h.total_size == sizeof *work &&
                     h.device_count == VG__SHM_DEVICES && h.slot_count == VG__SHM_SLOTS &&
                     h.waiter_count == VG__SHM_WAITERS && h.cmd_len == VG__SHM_CMD &&
                     len == sizeof *work;
    char err[256];
    int rc = vg__shm_validate(work, len, err, sizeof err);
    if (rc == VG_OK && !header_ok)
        abort();
    if (rc != VG_OK)
        return 0;
    body_holds(work);
    vg__shm_recount(work, every_slot_alive, NULL); /* drops no slot: pids < 0 were refused */
    body_holds(work);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static vg__shm_t *work;
    static undo_t undo[4096];
    if (!work) {
        if (!(work = malloc(sizeof *work)))
            abort();
        memcpy(work, image(), sizeof *work);
    }
    size_t len = sizeof *work, n = 0;
    if (size >= 2 && data[0] == 0xff) /* a short view: header-sized or less */
        len = data[1] * 4u;
    uint8_t *bytes = (uint8_t *)work;
    for (size_t i = 2; i + 2 < size && n < sizeof undo / sizeof undo[0]; i += 3) {
        /* Offsets: mostly the header, sometimes anywhere in the image. */
        size_t off = (size_t)data[i] | (size_t)data[i + 1] << 8;
        if (off & 0x8000)
            off = (off * 131u) % sizeof *work;
        else
            off %= sizeof work->h;
        undo[n++] = (undo_t){off, bytes[off]};
        bytes[off] = data[i + 2];
    }
    check(work, len);
    restore(work, undo, n);
    return 0;
}
