/*
 * vg_driver.h — the real driver: the table of entry points the engine
 * calls (driver.c) and the device facts it reads (device.c). The one
 * internal header that pulls in cuda.h for its types; pool, accounting and
 * audit headers include it for CUresult, CUcontext and CUmemoryPool.
 */
#ifndef VG_DRIVER_H
#define VG_DRIVER_H

#include <cuda.h>

#include "vg_base.h"

/* ---------------------------------------------------------- driver.c */

/* X(name, params): every driver entry point the engine itself calls, with
 * its full prototype. The engine resolves these once from the real libcuda
 * through the real dlsym, so its own calls never pass through any hook. */
#define VG__DRIVER_FNS(X)                                                      \
    X(cuInit, (unsigned int flags))                                            \
    X(cuDriverGetVersion, (int *version))                                      \
    X(cuGetErrorName, (CUresult error, const char **str))                      \
    X(cuDeviceGetCount, (int *count))                                          \
    X(cuDeviceGet, (CUdevice *device, int ordinal))                            \
    X(cuDeviceGetName, (char *name, int len, CUdevice dev))                    \
    X(cuDeviceGetUuid_v2, (CUuuid *uuid, CUdevice dev))                        \
    X(cuDeviceGetAttribute,                                                    \
      (int *pi, CUdevice_attribute attrib, CUdevice dev))                      \
    X(cuDeviceTotalMem_v2, (size_t *bytes, CUdevice dev))                      \
    X(cuDevicePrimaryCtxRetain, (CUcontext *pctx, CUdevice dev))               \
    X(cuDevicePrimaryCtxRelease_v2, (CUdevice dev))                            \
    X(cuDevicePrimaryCtxGetState,                                              \
      (CUdevice dev, unsigned int *flags, int *active))                        \
    X(cuCtxGetCurrent, (CUcontext *pctx))                                      \
    X(cuCtxSetCurrent, (CUcontext ctx))                                        \
    X(cuCtxGetDevice, (CUdevice *device))                                      \
    X(cuCtxSynchronize, (void))                                                \
    X(cuMemAlloc_v2, (CUdeviceptr *dptr, size_t bytesize))                     \
    X(cuMemFree_v2, (CUdeviceptr dptr))                                        \
    X(cuMemGetInfo_v2, (size_t *free, size_t *total))                          \
    X(cuMemsetD8_v2, (CUdeviceptr dst, unsigned char uc, size_t n))            \
    X(cuMemcpyHtoD_v2,                                                         \
      (CUdeviceptr dst, const void *src, size_t bytes))                        \
    X(cuMemcpyDtoH_v2, (void *dst, CUdeviceptr src, size_t bytes))            \
    X(cuMemGetAddressRange_v2,                                                 \
      (CUdeviceptr *base, size_t *size, CUdeviceptr dptr))                     \
    X(cuPointerGetAttribute,                                                   \
      (void *data, CUpointer_attribute attribute, CUdeviceptr ptr))            \
    X(cuDeviceGetMemPool, (CUmemoryPool *pool, CUdevice dev))                  \
    X(cuDeviceGetDefaultMemPool, (CUmemoryPool *pool, CUdevice dev))           \
    X(cuMemPoolGetAttribute,                                                   \
      (CUmemoryPool pool, CUmemPool_attribute attr, void *value))              \
    X(cuMemPoolTrimTo, (CUmemoryPool pool, size_t minBytesToKeep))            \
    X(cuStreamGetCaptureInfo_v2,                                               \
      (CUstream hStream, CUstreamCaptureStatus *captureStatus_out,             \
       cuuint64_t *id_out, CUgraph *graph_out,                                 \
       const CUgraphNode **dependencies_out, size_t *numDependencies_out))     \
    X(cuArrayGetMemoryRequirements,                                            \
      (CUDA_ARRAY_MEMORY_REQUIREMENTS *req, CUarray array, CUdevice device))   \
    X(cuMipmappedArrayGetMemoryRequirements,                                   \
      (CUDA_ARRAY_MEMORY_REQUIREMENTS *req, CUmipmappedArray mipmap,          \
       CUdevice device))

/* X(name, params): entry points the engine uses when the driver has them
 * and does without when it has not (a driver older than the one that
 * added them). Their fields are NULL then: callers check first. */
#define VG__DRIVER_OPTIONAL_FNS(X)                                             \
    X(cuStreamGetDevice, (CUstream hStream, CUdevice *device)) /* 12.8 */      \
    X(cuStreamGetCtx, (CUstream hStream, CUcontext *pctx))     /* 9.2 */       \
    X(cuCtxPushCurrent_v2, (CUcontext ctx))                                    \
    X(cuCtxPopCurrent_v2, (CUcontext *pctx))                                   \
    X(cuCtxGetLimit, (size_t *pvalue, CUlimit limit))

typedef struct vg__driver {
    void *handle;
    int version; /* cuDriverGetVersion, 0 until the driver is initialised */
#define VG__DRIVER_FIELD_(name, params) CUresult (*name) params;
    VG__DRIVER_FNS(VG__DRIVER_FIELD_)
    VG__DRIVER_OPTIONAL_FNS(VG__DRIVER_FIELD_)
#undef VG__DRIVER_FIELD_
} vg__driver_t;

/* Code that may run inside a sanitizer runtime's own start-up (its dlsym
 * calls reach the shim's dlsym) must not be instrumented. */
#define VG__NO_SANITIZE __attribute__((no_sanitize("address", "undefined", "thread")))

typedef void *(*vg__dlsym_fn)(void *, const char *);
/* libc's own dlsym, never an interposed one (the shim overrides dlsym);
 * NULL only if glibc has none. Safe before any sanitizer has started. */
vg__dlsym_fn vg__libc_dlsym(void);
/* vg__libc_dlsym()(handle, name), or NULL. */
void *vg__real_dlsym(void *handle, const char *name);

/* Loads the real driver once from `path` (NULL or "" = libcuda.so.1) and
 * resolves VG__DRIVER_FNS, and those of VG__DRIVER_OPTIONAL_FNS it has. Does not call cuInit. The first call decides;
 * later calls return its result. VG_ENODRIVER when the library or an entry
 * point is missing; vg__driver_error() says which. */
int vg__driver_load(const char *path);
/* Fork steps (fork.c, rank DRIVER_LOAD): take and release load_lock. */
void vg__driver_prefork(void);
void vg__driver_postfork_parent(void);
void vg__driver_postfork_child(void);
/* The loaded table; NULL before a successful vg__driver_load(). */
extern _Atomic(const vg__driver_t *) vg__driver_table;
static inline const vg__driver_t *vg__driver(void)
{
    return atomic_load_explicit(&vg__driver_table, memory_order_acquire);
}
/* One line saying why the driver could not be loaded ("" when it could). */
const char *vg__driver_error(void);
/* The CUresult for a vg status: the one mapping, used by every hook and by
 * the audit log (VG_ENOMEM and a fail-closed VG_ESETTING are
 * CUDA_ERROR_OUT_OF_MEMORY, VG_EDENIED is CUDA_ERROR_NOT_SUPPORTED, ...). */
CUresult vg__cu_status(int vg_status);
/* A driver status as "CUDA_ERROR_X" (static text, never NULL). */
const char *vg__cu_name(CUresult rc);

/* ---------------------------------------------------------- device.c */

/* Device facts the engine needs on slow paths (budget resolution). They
 * require an initialised driver (the application's cuInit, or
 * vg_available()). */
int vg__device_uuid(int ordinal, char uuid[48]);
int vg__device_total(int ordinal, uint64_t *bytes);
/* Formats a CUuuid as "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx". */
void vg__uuid_format(const CUuuid *uuid, char out[48]);

/* ---------------------------------------------------------- engine.c */

/* What `vramguard check` reports of the engine (tools/cli_check.c, which
 * includes no more of it). Starts the engine if it has not started
 * (settings, then the driver; never cuInit). *library gets the driver
 * library it loads (VRAMGUARD_LIBCUDA, or "libcuda.so.1"); *why gets ""
 * when the engine started, else the reason in its words (a bad setting, a
 * missing driver, an audit log it cannot write). Both are static strings.
 * Returns the engine's status: VG_OK, VG_ESETTING or VG_ENODRIVER. */
int vg__engine_describe(const char **library, const char **why);

#endif /* VG_DRIVER_H */
