/*
 * client_default.c — loads libcuda.so.1 into the global scope and then
 * finds each versioned ABI name with dlsym(RTLD_DEFAULT, ...): the search
 * order starts at the executable, so a preloaded shim's exports are seen
 * before the driver's.
 */
#include <dlfcn.h>

#include "client.h"

static void *find_default(const char *abi, const char *base, int version, cuuint64_t flags,
                          void *unused)
{
    (void)base, (void)version, (void)flags, (void)unused;
    return dlsym(RTLD_DEFAULT, abi);
}

int main(int argc, char **argv)
{
    client_t c = {0};
    if (!dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL)) {
        fprintf(stderr, "client: dlopen libcuda.so.1: %s\n", dlerror());
        return 3;
    }
    if (client_resolve(&c.api, find_default, NULL) != 0)
        return 3;
    return client_main(&c, argc, argv);
}
