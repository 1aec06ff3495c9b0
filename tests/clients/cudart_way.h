/*
 * cudart_way.h — reaching the driver as the CUDA runtime does: dlopen
 * libcuda.so.1, dlsym "cuGetProcAddress_v2", ask that function for
 * "cuGetProcAddress" itself, then ask it for every entry point. A client
 * that resolves this way checks that the shim catches calls the program
 * never names (docs/shim.md, routing). Static, for the clients that
 * include it.
 */
#ifndef VG_CUDART_WAY_H
#define VG_CUDART_WAY_H

#include <cuda.h>
#include <cudaTypedefs.h>
#include <dlfcn.h>

/* `base` at ABI `version` through `get`, or NULL. */
static inline void *by_proc(PFN_cuGetProcAddress_v12000 get, const char *base, int version)
{
    CUdriverProcAddressQueryResult st = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    void *fn = NULL;
    if (get(base, &fn, version, 0, &st) != CUDA_SUCCESS || st != CU_GET_PROC_ADDRESS_SUCCESS)
        return NULL;
    return fn;
}

/* The driver's cuGetProcAddress, found cudart's way, or NULL. */
static inline PFN_cuGetProcAddress_v12000 cudart_get_proc(void)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    PFN_cuGetProcAddress_v12000 first =
        h ? (PFN_cuGetProcAddress_v12000)dlsym(h, "cuGetProcAddress_v2") : NULL;
    return first ? (PFN_cuGetProcAddress_v12000)by_proc(first, "cuGetProcAddress", 12000) : NULL;
}

#endif /* VG_CUDART_WAY_H */
