/*
 * fuzz_shared_attach.c — the shared region's attach checks against damaged
 * regions (lib/shared_region.c; the recount is lib/shared_reap.c's). The
 * input patches a valid region image: pairs of (offset, byte) aimed mostly
 * at the header, the first two bytes choosing how much of the image the
 * validator is shown. vg__shm_validate must never read past the length it
 * is given (ASan in `make test SAN=address`), must refuse every image whose
 * header no longer matches the layout, and on an image it accepts,
 * recounting (what crash recovery does with whatever the slots hold) must
 * keep every device's use equal to the sum of its slots.
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
        for (int d = 0; d < VG__SHM_DEVICES; d++) {
            valid->dev[d].limit = VG__UNLIMITED;
            valid->dev[d].ordinal = -1;
        }
    }
    return valid;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static vg__shm_t *work;
    if (!work && !(work = malloc(sizeof *work)))
        abort();
    memcpy(work, image(), sizeof *work);
    size_t len = sizeof *work;
    if (size >= 2 && data[0] == 0xff) /* a short view: header-sized or less */
        len = data[1] * 4u;
    uint8_t *bytes = (uint8_t *)work;
    for (size_t i = 2; i + 2 < size; i += 3) {
        /* Offsets: mostly the header, sometimes anywhere in the image. */
        size_t off = (size_t)data[i] | (size_t)data[i + 1] << 8;
        if (off & 0x8000)
            off = (off * 131u) % sizeof *work;
        else
            off %= sizeof work->h;
        bytes[off] = data[i + 2];
    }
    /* Damage outside the checked header fields is allowed; inside, refused. */
    vg__shm_header_t h;
    memcpy(&h, work, sizeof h);
    bool header_ok = h.magic == VG__SHM_MAGIC && h.version == VG__SHM_VERSION &&
                     h.header_size == sizeof h && h.total_size == sizeof *work &&
                     h.device_count == VG__SHM_DEVICES && h.slot_count == VG__SHM_SLOTS &&
                     h.waiter_count == VG__SHM_WAITERS && h.cmd_len == VG__SHM_CMD &&
                     len == sizeof *work;
    char err[256];
    int rc = vg__shm_validate(work, len, err, sizeof err);
    if ((rc == VG_OK) != header_ok)
        abort();
    if (rc != VG_OK)
        return 0;
    vg__shm_recount(work, every_slot_alive, NULL);
    for (int d = 0; d < VG__SHM_DEVICES; d++) {
        uint64_t sum = 0;
        for (int s = 0; s < VG__SHM_SLOTS; s++)
            if (work->slot[s].pid > 0)
                sum += work->slot[s].used[d];
        if (work->dev[d].used != sum || work->dev[d].level < 0 || work->dev[d].level > 3)
            abort();
    }
    return 0;
}
