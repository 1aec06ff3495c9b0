/*
 * core.c: the test driver's global state. cuInit and the environment (every
 * knob is listed in fakecuda.h), device queries, the per-device capacity
 * ledger with its high-water mark and its share of implicit memory, fault
 * injection, the slow free, allocation statistics, the exit report, the
 * registry of live handles and the fakecuda_* query functions for
 * in-process tests.
 */
#include "fakecuda.h"
#include "fakecuda_query.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FC_DEFAULT_TOTAL 85899345920ull   /* 80 GiB, bytes */

typedef struct {
    size_t total, used, peak;              /* bytes */
    size_t implicit;                       /* bytes of used no allocation call made */
} fc_device;

typedef struct {
    const void *key;
    fc_htype type;
    UT_hash_handle hh;
} fc_handle;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int g_init;                  /* 1 once cuInit succeeded */
static int g_ndev;
static fc_device g_dev[FC_MAX_DEVICES];
static size_t g_used_all, g_peak_all;      /* over all devices, bytes */
static unsigned long long g_fail_nth, g_gate_calls;
static fc_knobs g_knobs;                   /* set once by cuInit */
static unsigned long long g_allocs, g_frees, g_failed;
static fc_handle *g_handles;

void fc_lock(void) { pthread_mutex_lock(&g_lock); }
void fc_unlock(void) { pthread_mutex_unlock(&g_lock); }

/* A child forked while another thread was inside a call finds the lock
 * free (tests fork while threads use the driver). No prepare step: it
 * would run before the engine's and wait for a thread that holds one of
 * the engine's locks across a call in here. */
static void child_unlock(void) { pthread_mutex_init(&g_lock, NULL); }
__attribute__((constructor)) static void fork_register(void)
{
    pthread_atfork(NULL, NULL, child_unlock);
}

bool fc_initialized(void)
{
    return atomic_load_explicit(&g_init, memory_order_acquire) != 0;
}

int fc_device_count(void) { return g_ndev; }
bool fc_device_valid(CUdevice dev) { return dev >= 0 && dev < g_ndev; }
size_t fc_device_total(int dev) { return g_dev[dev].total; }
size_t fc_device_used(int dev) { return g_dev[dev].used; }

/* Parses a plain decimal count; returns false (and says why) on junk. */
static bool env_u64(const char *name, unsigned long long *out)
{
    const char *s = getenv(name);
    if (!s || !*s)
        return true;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || s[0] == '-') {
        fprintf(stderr, "fakecuda: %s=\"%s\" is not a plain count\n", name, s);
        return false;
    }
    *out = v;
    return true;
}

/* The knobs of implicit memory (fakecuda.h); false on a malformed one. */
static bool read_knobs(fc_knobs *k)
{
    unsigned long long ctx = 0, sm = 132, delay = 0, no_ranges = 0, pool_chunk = 0, mapped = 0;
    unsigned long long no_stream_device = 0;
    unsigned long long limit_delay = 0, attr_delay = 0, release_delay = 0, destroy_delay = 0;
    unsigned long long map_delay = 0, unmap_delay = 0, pool_attr_delay = 0;
    unsigned long long vmm_release_delay = 0, vmm_reuse = 0;
    const char *at = getenv("FAKECUDA_LIMITS_AT");
    const char *loading = getenv("CUDA_MODULE_LOADING");
    if (!env_u64("FAKECUDA_CONTEXT_BYTES", &ctx) || !env_u64("FAKECUDA_SM_COUNT", &sm) ||
        !env_u64("FAKECUDA_FREE_DELAY_NS", &delay) ||
        !env_u64("FAKECUDA_SETLIMIT_DELAY_NS", &limit_delay) ||
        !env_u64("FAKECUDA_POINTER_ATTR_DELAY_NS", &attr_delay) ||
        !env_u64("FAKECUDA_PRIMARY_RELEASE_DELAY_NS", &release_delay) ||
        !env_u64("FAKECUDA_CTX_DESTROY_DELAY_NS", &destroy_delay) ||
        !env_u64("FAKECUDA_MAP_DELAY_NS", &map_delay) ||
        !env_u64("FAKECUDA_UNMAP_DELAY_NS", &unmap_delay) ||
        !env_u64("FAKECUDA_RELEASE_DELAY_NS", &vmm_release_delay) ||
        !env_u64("FAKECUDA_VMM_REUSE", &vmm_reuse) || vmm_reuse > 1 ||
        !env_u64("FAKECUDA_POOL_ATTR_DELAY_NS", &pool_attr_delay) ||
        !env_u64("FAKECUDA_NO_RANGES", &no_ranges) ||
        !env_u64("FAKECUDA_NO_STREAM_DEVICE", &no_stream_device) ||
        !env_u64("FAKECUDA_POOL_CHUNK", &pool_chunk) ||
        !env_u64("FAKECUDA_GRAPH_MAPPED_AT_LAUNCH", &mapped) || sm == 0 || sm > 65536 ||
        no_ranges > 1 || mapped > 1 || no_stream_device > 1)
        return false;
    if (at && *at && strcmp(at, "setlimit") && strcmp(at, "launch")) {
        fprintf(stderr, "fakecuda: FAKECUDA_LIMITS_AT=\"%s\" is neither setlimit nor launch\n", at);
        return false;
    }
    k->context_bytes = (size_t)ctx;
    k->sm_count = (int)sm;
    k->free_delay_ns = delay;
    k->setlimit_delay_ns = limit_delay;
    k->pointer_attr_delay_ns = attr_delay;
    k->primary_release_delay_ns = release_delay;
    k->ctx_destroy_delay_ns = destroy_delay;
    k->map_delay_ns = map_delay;
    k->unmap_delay_ns = unmap_delay;
    k->release_delay_ns = vmm_release_delay;
    k->vmm_reuse = vmm_reuse == 1;
    k->pool_attr_delay_ns = pool_attr_delay;
    k->limits_at_launch = at && !strcmp(at, "launch");
    k->no_ranges = no_ranges == 1;
    k->no_stream_device = no_stream_device == 1;
    k->pool_chunk = (size_t)pool_chunk;
    k->graph_mapped_at_launch = mapped == 1;
    /* As the real driver reads it at cuInit: EAGER, else lazy (CUDA 12.2+). */
    k->eager_modules = loading && !strcmp(loading, "EAGER");
    return true;
}

static CUresult init_locked(void)
{
    unsigned long long ndev = 1, total = FC_DEFAULT_TOTAL, nth = 0;
    if (!env_u64("FAKECUDA_DEVICES", &ndev) ||
        !env_u64("FAKECUDA_TOTAL_BYTES", &total) ||
        !env_u64("FAKECUDA_FAIL_NTH", &nth) || ndev > FC_MAX_DEVICES || !read_knobs(&g_knobs))
        return CUDA_ERROR_INVALID_VALUE;
    if (ndev == 0)
        return CUDA_ERROR_NO_DEVICE;
    g_ndev = (int)ndev;
    for (int i = 0; i < g_ndev; i++)
        g_dev[i].total = (size_t)total;
    g_fail_nth = nth;
    atomic_store_explicit(&g_init, 1, memory_order_release);
    return CUDA_SUCCESS;
}

CUresult cuInit(unsigned int Flags)
{
    if (Flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (fc_initialized())
        return CUDA_SUCCESS;
    fc_lock();
    CUresult rc = fc_initialized() ? CUDA_SUCCESS : init_locked();
    fc_unlock();
    return rc;
}

/* Real driver: cuDriverGetVersion works before cuInit. */
CUresult cuDriverGetVersion(int *driverVersion)
{
    if (!driverVersion)
        return CUDA_ERROR_INVALID_VALUE;
    *driverVersion = FC_DRIVER_VERSION;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int *count)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!count)
        return CUDA_ERROR_INVALID_VALUE;
    *count = g_ndev;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice *device, int ordinal)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!device)
        return CUDA_ERROR_INVALID_VALUE;
    if (!fc_device_valid(ordinal))
        return CUDA_ERROR_INVALID_DEVICE;
    *device = ordinal;
    return CUDA_SUCCESS;
}

/* The checks every per-device query starts with, in the driver's order. */
static CUresult check_dev(const void *out, CUdevice dev)
{
    if (!fc_initialized())
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!out)
        return CUDA_ERROR_INVALID_VALUE;
    return fc_device_valid(dev) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice dev)
{
    CUresult rc = check_dev(name, dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    snprintf(name, (size_t)len, "fakecuda H100 %d", dev);
    return CUDA_SUCCESS;
}

/* Deterministic per ordinal: "fakecuda" then the ordinal, big-endian. */
CUresult cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev)
{
    CUresult rc = check_dev(uuid, dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    memcpy(uuid->bytes, "fakecuda", 8);
    for (int i = 0; i < 8; i++)
        uuid->bytes[15 - i] = (char)(((unsigned long long)dev >> (8 * i)) & 0xff);
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetUuid(CUuuid *uuid, CUdevice dev)
{
    return cuDeviceGetUuid_v2(uuid, dev);
}

static int attribute_value(CUdevice_attribute attrib, CUdevice dev)
{
    switch (attrib) {
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: return 9;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: return 0;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: return g_knobs.sm_count;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR: return FC_THREADS_PER_SM;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: return 1024;
    case CU_DEVICE_ATTRIBUTE_WARP_SIZE: return 32;
    case CU_DEVICE_ATTRIBUTE_PCI_BUS_ID: return dev + 1;
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING:
    case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED:
    case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED:
    case CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY:
    case CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS:
    case CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY: return 1;
    default: return 0;
    }
}

CUresult cuDeviceGetAttribute(int *pi, CUdevice_attribute attrib, CUdevice dev)
{
    CUresult rc = check_dev(pi, dev);
    if (rc != CUDA_SUCCESS)
        return rc;
    if ((int)attrib <= 0 || attrib >= CU_DEVICE_ATTRIBUTE_MAX)
        return CUDA_ERROR_INVALID_VALUE;
    *pi = attribute_value(attrib, dev);
    return CUDA_SUCCESS;
}

CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev)
{
    CUresult rc = check_dev(bytes, dev);
    if (rc == CUDA_SUCCESS)
        *bytes = g_dev[dev].total;
    return rc;
}

/* Legacy 32-bit ABI (before CUDA 3.2): saturates at UINT_MAX. */
CUresult cuDeviceTotalMem(unsigned int *bytes, CUdevice dev)
{
    CUresult rc = check_dev(bytes, dev);
    if (rc == CUDA_SUCCESS)
        *bytes = g_dev[dev].total > UINT32_MAX ? UINT32_MAX : (unsigned int)g_dev[dev].total;
    return rc;
}

/* ---- capacity ledger and statistics (lock held) ---- */

CUresult fc_gate(void)
{
    if (g_fail_nth != 0 && ++g_gate_calls == g_fail_nth) {
        g_failed++;
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    return CUDA_SUCCESS;
}

CUresult fc_charge(int dev, size_t n)
{
    fc_device *d = &g_dev[dev];
    if (n > d->total - d->used) {
        g_failed++;
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    d->used += n;
    if (d->used > d->peak)
        d->peak = d->used;
    g_used_all += n;
    if (g_used_all > g_peak_all)
        g_peak_all = g_used_all;
    return CUDA_SUCCESS;
}

void fc_uncharge(int dev, size_t n)
{
    g_dev[dev].used -= n;
    g_used_all -= n;
}

CUresult fc_charge_implicit(int dev, size_t n)
{
    CUresult rc = fc_charge(dev, n);
    if (rc == CUDA_SUCCESS)
        g_dev[dev].implicit += n;
    return rc;
}

void fc_uncharge_implicit(int dev, size_t n)
{
    fc_uncharge(dev, n);
    g_dev[dev].implicit -= n;
}

bool fc_fits(int dev, size_t n)
{
    return n <= g_dev[dev].total - g_dev[dev].used;
}

const fc_knobs *fc_knobs_get(void) { return &g_knobs; }

static void sleep_ns(unsigned long long ns)
{
    if (ns == 0)
        return;
    struct timespec ts = { (time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull) };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Lock NOT held: other threads go on allocating while this one waits. */
void fc_free_delay(void) { sleep_ns(g_knobs.free_delay_ns); }

/* Lock NOT held: other threads may read or set limits meanwhile. */
void fc_setlimit_delay(void) { sleep_ns(g_knobs.setlimit_delay_ns); }

/* Lock NOT held: the answer may be stale by the time the caller sees it. */
void fc_pointer_attr_delay(void) { sleep_ns(g_knobs.pointer_attr_delay_ns); }

/* Lock NOT held: another thread may retain the primary context meanwhile. */
void fc_primary_release_delay(void) { sleep_ns(g_knobs.primary_release_delay_ns); }

/* Lock NOT held: the destroyed context's memory is free, and other threads
 * may be given its addresses, before cuCtxDestroy returns. */
void fc_ctx_destroy_delay(void) { sleep_ns(g_knobs.ctx_destroy_delay_ns); }

/* Lock NOT held: other threads may map, unmap or release meanwhile. */
void fc_map_delay(void) { sleep_ns(g_knobs.map_delay_ns); }
void fc_unmap_delay(void) { sleep_ns(g_knobs.unmap_delay_ns); }
void fc_release_delay(void) { sleep_ns(g_knobs.release_delay_ns); }

/* Lock NOT held: the pool may grow or shrink before the caller sees the
 * answer. Only threads other than the process's first wait, so a test
 * can make one reader stale while its main thread goes on. */
void fc_pool_attr_delay(void)
{
    if (g_knobs.pool_attr_delay_ns && gettid() != getpid())
        sleep_ns(g_knobs.pool_attr_delay_ns);
}

void fc_count_alloc(void) { g_allocs++; }
void fc_count_free(void) { g_frees++; }

/* ---- handle registry (lock held) ---- */

void fc_handle_add(const void *h, fc_htype type)
{
    fc_handle *e = calloc(1, sizeof *e);
    if (!e)
        abort();   /* test driver: host OOM is not a case we model */
    e->key = h;
    e->type = type;
    HASH_ADD_PTR(g_handles, key, e);
}

bool fc_handle_ok(const void *h, fc_htype type)
{
    fc_handle *e;
    HASH_FIND_PTR(g_handles, &h, e);
    return e && e->type == type;
}

void fc_handle_del(const void *h)
{
    fc_handle *e;
    HASH_FIND_PTR(g_handles, &h, e);
    if (e) {
        HASH_DEL(g_handles, e);
        free(e);
    }
}

/* fn may delete the handle it is given (and only that one). */
void fc_handle_each(fc_htype type, void (*fn)(void *h, void *arg), void *arg)
{
    fc_handle *e, *tmp;
    HASH_ITER(hh, g_handles, e, tmp) {
        if (e->type == type)
            fn((void *)e->key, arg);
    }
}

/* ---- in-process queries and the exit report ---- */

static size_t query(int dev, int what)
{
    fc_lock();
    size_t v = 0;
    if (dev >= 0 && dev < FC_MAX_DEVICES)
        v = what ? g_dev[dev].peak : g_dev[dev].used;
    fc_unlock();
    return v;
}

size_t fakecuda_peak_bytes(int dev) { return query(dev, 1); }

size_t fakecuda_implicit_bytes(int dev)
{
    fc_lock();
    size_t v = dev >= 0 && dev < FC_MAX_DEVICES ? g_dev[dev].implicit : 0;
    fc_unlock();
    return v;
}
size_t fakecuda_used_bytes(int dev) { return query(dev, 0); }

void fakecuda_reset_peak(int dev)
{
    fc_lock();
    if (dev >= 0 && dev < FC_MAX_DEVICES)
        g_dev[dev].peak = g_dev[dev].used;
    fc_unlock();
}

__attribute__((destructor)) static void write_report(void)
{
    const char *path = getenv("FAKECUDA_REPORT");
    if (!path || !*path)
        return;
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "fakecuda: cannot write %s: %s\n", path, strerror(errno));
        return;
    }
    fc_lock();
    fprintf(f, "peak_bytes=%zu live_bytes=%zu allocs=%llu frees=%llu failed=%llu\n",
            g_peak_all, g_used_all, g_allocs, g_frees, g_failed);
    fc_unlock();
    fclose(f);
}
