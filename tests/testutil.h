/*
 * testutil.h — helpers shared by the unit tests: reaching the test driver's
 * own counters (which product code never sees) and small fixtures.
 */
#ifndef VG_TESTUTIL_H
#define VG_TESTUTIL_H

#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>

#define MiB (1024ull * 1024ull)
#define GiB (1024ull * MiB)

/* The test driver's bytes in use / high-water mark on a device, read
 * through the already-loaded libcuda.so.1. Aborts if it is not loaded. */
static inline uint64_t fake_counter(const char *fn, int dev)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (!h)
        abort();
    uint64_t (*f)(int) = (uint64_t(*)(int))dlsym(h, fn);
    if (!f)
        abort();
    uint64_t v = f(dev);
    dlclose(h);
    return v;
}

static inline uint64_t fake_used(int dev) { return fake_counter("fakecuda_used_bytes", dev); }
static inline uint64_t fake_peak(int dev) { return fake_counter("fakecuda_peak_bytes", dev); }

/* Deterministic per-thread random numbers (xorshift64*). */
static inline uint64_t test_rand(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

#endif
