/*
 * device.c — what the public API says about devices: availability (the one
 * place the engine calls cuInit, and only for API users, never for the
 * shim), counts, lookup by index or UUID, and device facts.
 */
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vg_account.h"
#include "vg_driver.h"

static pthread_once_t avail_once = PTHREAD_ONCE_INIT;
static int avail_status = VG_ENODRIVER;

static void check_available(void)
{
    if (vg__engine_init() != VG_OK) {
        avail_status = vg__driver() ? VG_ESETTING : VG_ENODRIVER;
        return;
    }
    const vg__driver_t *d = vg__driver();
    int count = 0;
    if (d->cuInit(0) != CUDA_SUCCESS) {
        avail_status = VG_ENODRIVER;
        return;
    }
    if (d->cuDeviceGetCount(&count) != CUDA_SUCCESS || count < 1) {
        avail_status = VG_ENODEV;
        return;
    }
    avail_status = VG_OK;
}

int vg_available(void)
{
    pthread_once(&avail_once, check_available);
    return avail_status;
}

int vg_device_count(int *count)
{
    if (!count)
        return VG_EINVAL;
    int rc = vg_available();
    if (rc == VG_ENODEV) {
        *count = 0;
        return VG_OK;
    }
    if (rc != VG_OK)
        return rc;
    if (vg__driver()->cuDeviceGetCount(count) != CUDA_SUCCESS)
        return VG_EDRIVER;
    return VG_OK;
}

void vg__uuid_format(const CUuuid *uuid, char out[48])
{
    const unsigned char *b = (const unsigned char *)uuid->bytes;
    snprintf(out, 48,
             "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
             "%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9],
             b[10], b[11], b[12], b[13], b[14], b[15]);
}

int vg__device_uuid(int ordinal, char uuid[48])
{
    const vg__driver_t *d = vg__driver();
    CUdevice dev;
    CUuuid raw;
    if (!d)
        return VG_ENODRIVER;
    if (d->cuDeviceGet(&dev, ordinal) != CUDA_SUCCESS)
        return VG_ENODEV;
    if (d->cuDeviceGetUuid_v2(&raw, dev) != CUDA_SUCCESS)
        return VG_EDRIVER;
    vg__uuid_format(&raw, uuid);
    return VG_OK;
}

int vg__device_total(int ordinal, uint64_t *bytes)
{
    const vg__driver_t *d = vg__driver();
    CUdevice dev;
    size_t total = 0;
    if (!d)
        return VG_ENODRIVER;
    if (d->cuDeviceGet(&dev, ordinal) != CUDA_SUCCESS)
        return VG_ENODEV;
    if (d->cuDeviceTotalMem_v2(&total, dev) != CUDA_SUCCESS)
        return VG_EDRIVER;
    *bytes = total;
    return VG_OK;
}

static int parse_ordinal(const char *text, int *ordinal)
{
    char *end = NULL;
    if (!isdigit((unsigned char)text[0]))
        return VG_EINVAL;
    long v = strtol(text, &end, 10);
    if (*end != '\0' || v < 0 || v >= VG__MAX_DEVICES)
        return VG_EINVAL;
    *ordinal = (int)v;
    return VG_OK;
}

int vg_device_find(const char *index_or_uuid, int *ordinal)
{
    int count = 0;
    if (!index_or_uuid || !ordinal)
        return VG_EINVAL;
    int rc = vg_device_count(&count);
    if (rc != VG_OK)
        return rc;
    if (strncasecmp(index_or_uuid, "GPU-", 4) != 0) {
        int n;
        if (parse_ordinal(index_or_uuid, &n) != VG_OK)
            return VG_EINVAL;
        if (n >= count)
            return VG_ENODEV;
        *ordinal = n;
        return VG_OK;
    }
    for (int i = 0; i < count; i++) {
        char uuid[48];
        if (vg__device_uuid(i, uuid) == VG_OK &&
            strcasecmp(uuid, index_or_uuid) == 0) {
            *ordinal = i;
            return VG_OK;
        }
    }
    return VG_ENODEV;
}

/* Free memory is per context in the driver's API: ask through the device's
 * primary context, restoring whatever context the caller had current. */
static int device_free(const vg__driver_t *d, CUdevice dev, uint64_t *bytes)
{
    CUcontext prev = NULL, ctx = NULL;
    size_t free_b = 0, total_b = 0;
    if (d->cuDevicePrimaryCtxRetain(&ctx, dev) != CUDA_SUCCESS)
        return VG_EDRIVER;
    d->cuCtxGetCurrent(&prev);
    d->cuCtxSetCurrent(ctx);
    CUresult rc = d->cuMemGetInfo_v2(&free_b, &total_b);
    d->cuCtxSetCurrent(prev);
    d->cuDevicePrimaryCtxRelease_v2(dev);
    if (rc != CUDA_SUCCESS)
        return VG_EDRIVER;
    *bytes = free_b;
    return VG_OK;
}

int vg_device_info(int ordinal, vg_device_info_t *info)
{
    int count = 0;
    CUdevice dev;
    if (!info)
        return VG_EINVAL;
    int rc = vg_device_count(&count);
    if (rc != VG_OK)
        return rc;
    if (ordinal < 0 || ordinal >= count)
        return VG_ENODEV;
    const vg__driver_t *d = vg__driver();
    vg_device_info_t out = {.ordinal = ordinal};
    if (d->cuDeviceGet(&dev, ordinal) != CUDA_SUCCESS ||
        d->cuDeviceGetName(out.name, (int)sizeof out.name, dev) != CUDA_SUCCESS ||
        d->cuDeviceGetAttribute(&out.cc_major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev) != CUDA_SUCCESS ||
        d->cuDeviceGetAttribute(&out.cc_minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev) != CUDA_SUCCESS ||
        d->cuDeviceGetAttribute(&out.sm_count, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev) != CUDA_SUCCESS)
        return VG_EDRIVER;
    if ((rc = vg__device_uuid(ordinal, out.uuid)) != VG_OK ||
        (rc = vg__device_total(ordinal, &out.total_bytes)) != VG_OK ||
        (rc = device_free(d, dev, &out.free_bytes)) != VG_OK)
        return rc;
    *info = out;
    return VG_OK;
}
