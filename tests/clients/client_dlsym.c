/*
 * client_dlsym.c — reaches the driver the way JAX/XLA does: dlopen
 * libcuda.so.1 and dlsym each versioned ABI name ("cuMemAlloc_v2") on that
 * handle. The shim must answer through its dlsym override.
 */
#include <dlfcn.h>

#include "client.h"

static void *find_on_handle(const char *abi, const char *base, int version, cuuint64_t flags,
                            void *handle)
{
    (void)base, (void)version, (void)flags;
    return dlsym(handle, abi);
}

int main(int argc, char **argv)
{
    client_t c = {0};
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "client: dlopen libcuda.so.1: %s\n", dlerror());
        return 3;
    }
    if (client_resolve(&c.api, find_on_handle, h) != 0)
        return 3;
    return client_main(&c, argc, argv);
}
