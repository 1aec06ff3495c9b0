/*
 * nvml.h — the few NVML types and entry points the shim hooks, declared
 * here because no nvml.h is installed where we build.
 *
 * The layouts are NVIDIA's stable ABI as nvml.h declares them (CUDA 12.x /
 * driver r535 and later, unchanged since NVML added the _v2 memory query):
 *   struct nvmlMemory_st    { unsigned long long total, free, used; }
 *   struct nvmlMemory_v2_st { unsigned int version; unsigned long long
 *                             total, reserved, free, used; }
 *   #define nvmlMemory_v2 NVML_STRUCT_VERSION(Memory, 2)
 *           = sizeof(nvmlMemory_v2_t) | 2 << 24
 * nvml.h notes that v2's `used` includes `reserved`; drivers we have seen
 * report total = reserved + used + free instead. The hook keeps the
 * driver's `reserved` and derives `used` as total - free - reserved.
 */
#ifndef VG_SHIM_NVML_H
#define VG_SHIM_NVML_H

#include "shim.h"

typedef int nvmlReturn_t;
#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_FUNCTION_NOT_FOUND 13

typedef struct nvmlDevice_st *nvmlDevice_t;

typedef struct nvmlMemory_st {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

typedef struct nvmlMemory_v2_st {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

/* A process on a device: nvmlProcessInfo_v1_st (the unversioned query)
 * and nvmlProcessInfo_st (_v2 and _v3 of the query). */
typedef struct nvmlProcessInfo_v1_st {
    unsigned int pid;
    unsigned long long usedGpuMemory;
} nvmlProcessInfo_v1_t;

typedef struct nvmlProcessInfo_st {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;

_Static_assert(sizeof(nvmlProcessInfo_v1_t) == 16, "nvmlProcessInfo_v1_t: NVML ABI");
_Static_assert(sizeof(nvmlProcessInfo_t) == 24, "nvmlProcessInfo_t: NVML ABI");

#define nvmlMemory_v2 ((unsigned int)(sizeof(nvmlMemory_v2_t) | (2u << 24)))

_Static_assert(sizeof(nvmlMemory_t) == 24, "nvmlMemory_t: NVML ABI");
_Static_assert(sizeof(nvmlMemory_v2_t) == 40, "nvmlMemory_v2_t: NVML ABI");

/* NVML_DEVICE_UUID_V2_BUFFER_SIZE: room for "GPU-..." or "MIG-...". */
#define VG_NVML_UUID_LEN 96

/* X(name, params): every NVML entry point the shim replaces, exactly as
 * libnvidia-ml exports it. Generates the real-pointer table, the exports
 * and the dlsym routing (by pointer identity, as for the driver). */
#define VG_NVML_HOOKS(X)                                                       \
    X(nvmlDeviceGetMemoryInfo, (nvmlDevice_t device, nvmlMemory_t *memory))   \
    X(nvmlDeviceGetMemoryInfo_v2,                                              \
      (nvmlDevice_t device, nvmlMemory_v2_t *memory))                          \
    X(nvmlDeviceGetComputeRunningProcesses,                                    \
      (nvmlDevice_t device, unsigned int *count, nvmlProcessInfo_v1_t *infos)) \
    X(nvmlDeviceGetComputeRunningProcesses_v2,                                 \
      (nvmlDevice_t device, unsigned int *count, nvmlProcessInfo_t *infos))    \
    X(nvmlDeviceGetComputeRunningProcesses_v3,                                 \
      (nvmlDevice_t device, unsigned int *count, nvmlProcessInfo_t *infos))

#define VG_NVML_DECLARE_(name, params) VG_EXPORT nvmlReturn_t name params;
VG_NVML_HOOKS(VG_NVML_DECLARE_)
#undef VG_NVML_DECLARE_

/* ------------------------------------------------------------ nvml.c */

/* The hook for a real NVML function, or `fn` itself when we do not hook
 * it (or NVML is not loaded). Used by the dlsym override for names that
 * start with "nvml"; never loads NVML. */
void *vg__nvml_route(void *fn);

#endif /* VG_SHIM_NVML_H */
