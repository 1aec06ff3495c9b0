/*
 * fakenvml.c: the NVML test double, built as libnvidia-ml.so.1 (tests
 * only; no product code knows it). It describes the same devices as the
 * CUDA test driver (tests/fakecuda), with the UUIDs that driver gives, and
 * reads that driver's bytes in use, so NVML and CUDA agree the way they do
 * on a real node.
 *
 * Environment:
 *   FAKECUDA_DEVICES, FAKECUDA_TOTAL_BYTES  as for the CUDA test driver
 *   FAKENVML_CONTEXT_BYTES  memory no call shows, added to this process's
 *                           use (default 0)
 *   FAKENVML_RESERVED_BYTES nvmlMemory_v2_t.reserved (default 0)
 *   FAKENVML_MAP            per NVML index, the CUDA ordinal it is, or "-"
 *                           for a GPU CUDA cannot see: "-,0" is a node of
 *                           two GPUs with CUDA_VISIBLE_DEVICES=1 (default:
 *                           NVML index i is CUDA ordinal i)
 *   FAKENVML_LOAD_DELAY_NS  the library's constructor waits this long
 *                           (default 0): glibc runs it holding the dynamic
 *                           loader's lock, so another thread's dlopen waits
 *                           for it
 *
 * Memory: total = FAKECUDA_TOTAL_BYTES (80 GiB); used = the CUDA test
 * driver's bytes in use + FAKENVML_CONTEXT_BYTES (v2: + nothing for
 * reserved, which is apart); free = total - reserved - used. The process
 * list has one entry, this process, with the same used bytes. The driver's
 * bytes in use already hold the memory no call shows that it models
 * (FAKECUDA_CONTEXT_BYTES, limits, module globals: fakecuda.h), as the real
 * per-process figure does; FAKENVML_CONTEXT_BYTES is memory only NVML sees.
 *
 * Entry points call only static helpers, never each other through the
 * dynamic symbol table: a preloaded interposer must see each call once.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
};

#define MAX_DEVICES 16
#define DEFAULT_TOTAL 85899345920ull /* 80 GiB, bytes, as the CUDA test driver */

typedef struct nvmlDevice_st {
    int cuda;               /* CUDA ordinal, -1 when CUDA cannot see it */
    char uuid[48];
} fn_device;
typedef fn_device *nvmlDevice_t;

typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;
#define nvmlMemory_v2 ((unsigned int)(sizeof(nvmlMemory_v2_t) | (2u << 24)))
typedef struct { unsigned int pid; unsigned long long usedGpuMemory; } nvmlProcessInfo_v1_t;
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;

/* The exported API, as nvml.h declares it. */
EXPORT nvmlReturn_t nvmlInit_v2(void);
EXPORT nvmlReturn_t nvmlInit(void);
EXPORT nvmlReturn_t nvmlShutdown(void);
EXPORT const char *nvmlErrorString(nvmlReturn_t result);
EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count);
EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device);
EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device);
EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length);
EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory);
EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory);
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device,
                                                            unsigned int *infoCount,
                                                            nvmlProcessInfo_t *infos);
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device,
                                                            unsigned int *infoCount,
                                                            nvmlProcessInfo_t *infos);
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t device,
                                                         unsigned int *infoCount,
                                                         nvmlProcessInfo_v1_t *infos);

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_inits;
static int g_count;
static fn_device g_dev[MAX_DEVICES];
static unsigned long long g_total, g_context, g_reserved;

static unsigned long long env_u64(const char *name, unsigned long long deflt)
{
    const char *s = getenv(name);
    if (!s || !*s)
        return deflt;
    return strtoull(s, NULL, 10);
}

__attribute__((constructor)) static void load_delay(void)
{
    unsigned long long ns = env_u64("FAKENVML_LOAD_DELAY_NS", 0);
    struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
    if (ns)
        nanosleep(&ts, NULL);
}

/* The CUDA test driver's UUID for ordinal `cuda` ("fakecuda", then the
 * ordinal big-endian), formatted as nvidia-smi and NVML print it. */
static void format_uuid(int cuda, int index, char out[48])
{
    unsigned char b[16];
    if (cuda >= 0) {
        memcpy(b, "fakecuda", 8);
        for (int i = 0; i < 8; i++)
            b[15 - i] = (unsigned char)(((unsigned long long)cuda >> (8 * i)) & 0xff);
    } else {
        memcpy(b, "hiddengpu", 9); /* a GPU CUDA does not see */
        for (int i = 9; i < 16; i++)
            b[i] = i == 15 ? (unsigned char)index : 0;
    }
    snprintf(out, 48, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
             "%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2], b[3], b[4], b[5], b[6],
             b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

static void load_devices(void)
{
    const char *map = getenv("FAKENVML_MAP");
    g_count = 0;
    if (map && *map) {
        for (const char *p = map; *p && g_count < MAX_DEVICES;) {
            int cuda = *p == '-' ? -1 : atoi(p);
            format_uuid(cuda, g_count, g_dev[g_count].uuid);
            g_dev[g_count++].cuda = cuda;
            p = strchr(p, ',');
            if (!p)
                break;
            p++;
        }
    } else {
        unsigned long long n = env_u64("FAKECUDA_DEVICES", 1);
        for (int i = 0; i < (int)n && i < MAX_DEVICES; i++) {
            g_dev[i].cuda = i;
            format_uuid(i, i, g_dev[i].uuid);
            g_count++;
        }
    }
    g_total = env_u64("FAKECUDA_TOTAL_BYTES", DEFAULT_TOTAL);
    g_context = env_u64("FAKENVML_CONTEXT_BYTES", 0);
    g_reserved = env_u64("FAKENVML_RESERVED_BYTES", 0);
}

static int initialized(void)
{
    pthread_mutex_lock(&g_lock);
    int n = g_inits;
    pthread_mutex_unlock(&g_lock);
    return n > 0;
}

static int device_ok(nvmlDevice_t d)
{
    return d >= g_dev && d < g_dev + g_count;
}

/* Bytes this process uses on d: the CUDA test driver's count (read through
 * the libcuda.so.1 already loaded; 0 when none is) plus the context. */
static unsigned long long process_used(nvmlDevice_t d)
{
    if (d->cuda < 0)
        return 0;
    unsigned long long used = g_context;
    void *h = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_NOLOAD);
    if (h) {
        size_t (*f)(int) = (size_t(*)(int))dlsym(h, "fakecuda_used_bytes");
        if (f)
            used += f(d->cuda);
        dlclose(h);
    }
    return used;
}

EXPORT nvmlReturn_t nvmlInit_v2(void)
{
    pthread_mutex_lock(&g_lock);
    if (g_inits++ == 0)
        load_devices();
    pthread_mutex_unlock(&g_lock);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlInit(void) { return nvmlInit_v2(); }

EXPORT nvmlReturn_t nvmlShutdown(void)
{
    pthread_mutex_lock(&g_lock);
    nvmlReturn_t rc = g_inits > 0 ? NVML_SUCCESS : NVML_ERROR_UNINITIALIZED;
    if (g_inits > 0)
        g_inits--;
    pthread_mutex_unlock(&g_lock);
    return rc;
}

EXPORT const char *nvmlErrorString(nvmlReturn_t result)
{
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument Version Mismatch";
    default: return "Unknown Error";
    }
}

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count)
{
    if (!initialized())
        return NVML_ERROR_UNINITIALIZED;
    if (!count)
        return NVML_ERROR_INVALID_ARGUMENT;
    *count = (unsigned int)g_count;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    if (!initialized())
        return NVML_ERROR_UNINITIALIZED;
    if (!device || index >= (unsigned int)g_count)
        return NVML_ERROR_INVALID_ARGUMENT;
    *device = &g_dev[index];
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
    if (!initialized())
        return NVML_ERROR_UNINITIALIZED;
    if (!uuid || !device)
        return NVML_ERROR_INVALID_ARGUMENT;
    for (int i = 0; i < g_count; i++) {
        if (strcasecmp(g_dev[i].uuid, uuid) == 0) {
            *device = &g_dev[i];
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    if (!initialized())
        return NVML_ERROR_UNINITIALIZED;
    if (!device_ok(device) || !uuid)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (length < strlen(device->uuid) + 1)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(uuid, device->uuid);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    if (!initialized())
        return NVML_ERROR_UNINITIALIZED;
    if (!device_ok(device) || !memory)
        return NVML_ERROR_INVALID_ARGUMENT;
    unsigned long long used = process_used(device) + g_reserved;
    memory->total = g_total;
    memory->used = used < g_total ? used : g_total;
    memory->free = g_total - memory->used;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory)
{
    if (!initialized())
        return NVML_ERROR_UNINITIALIZED;
    if (!device_ok(device) || !memory)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (memory->version != nvmlMemory_v2)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    unsigned long long used = process_used(device);
    unsigned long long reserved = g_reserved < g_total ? g_reserved : g_total;
    memory->total = g_total;
    memory->reserved = reserved;
    memory->used = used < g_total - reserved ? used : g_total - reserved;
    memory->free = g_total - reserved - memory->used;
    return NVML_SUCCESS;
}

/* One entry, this process, when CUDA sees the device; `wide` picks the
 * v2/v3 layout over v1. */
static nvmlReturn_t processes(nvmlDevice_t device, unsigned int *count, void *infos, int wide)
{
    if (!initialized())
        return NVML_ERROR_UNINITIALIZED;
    if (!device_ok(device) || !count)
        return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int have = device->cuda >= 0 ? 1u : 0u;
    if (*count < have || (have && !infos)) {
        *count = have;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    *count = have;
    if (!have)
        return NVML_SUCCESS;
    if (wide) {
        nvmlProcessInfo_t *p = infos;
        *p = (nvmlProcessInfo_t){(unsigned int)getpid(), process_used(device), ~0u, ~0u};
    } else {
        nvmlProcessInfo_v1_t *p = infos;
        *p = (nvmlProcessInfo_v1_t){(unsigned int)getpid(), process_used(device)};
    }
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device,
                                                            unsigned int *infoCount,
                                                            nvmlProcessInfo_t *infos)
{
    return processes(device, infoCount, infos, 1);
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device,
                                                            unsigned int *infoCount,
                                                            nvmlProcessInfo_t *infos)
{
    return processes(device, infoCount, infos, 1);
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t device,
                                                         unsigned int *infoCount,
                                                         nvmlProcessInfo_v1_t *infos)
{
    return processes(device, infoCount, infos, 0);
}
