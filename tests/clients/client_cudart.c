/*
 * client_cudart.c — reaches the driver the way cudart does (measured on an
 * H100, driver 580.159, CUDA 13.0): dlopen libcuda.so.1, dlsym
 * "cuGetProcAddress_v2", ask that function for "cuGetProcAddress" itself
 * (version 12000, flags 0), and from then on fetch every entry point through
 * the pointer it returned, by base name with a version and stream flags
 * ("cuMemAllocAsync" 11020 with flags 2 is the _ptsz twin).
 */
#include <dlfcn.h>

#include "client.h"

static void *find_by_proc(const char *abi, const char *base, int version, cuuint64_t flags,
                          void *gpa)
{
    PFN_cuGetProcAddress_v12000 get = (PFN_cuGetProcAddress_v12000)gpa;
    CUdriverProcAddressQueryResult st = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    void *fn = NULL;
    (void)abi;
    if (get(base, &fn, version, flags, &st) != CUDA_SUCCESS || st != CU_GET_PROC_ADDRESS_SUCCESS)
        return NULL;
    return fn;
}

int main(int argc, char **argv)
{
    client_t c = {0};
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "client: dlopen libcuda.so.1: %s\n", dlerror());
        return 3;
    }
    PFN_cuGetProcAddress_v12000 first = (PFN_cuGetProcAddress_v12000)dlsym(h, "cuGetProcAddress_v2");
    void *gpa = first ? find_by_proc(NULL, "cuGetProcAddress", 12000, 0, (void *)first) : NULL;
    if (!gpa) {
        fprintf(stderr, "client: no cuGetProcAddress\n");
        return 3;
    }
    if (client_resolve(&c.api, find_by_proc, gpa) != 0)
        return 3;
    return client_main(&c, argc, argv);
}
