/*
 * gpu_api.c — the public C API (include/vramguard.h) against the real
 * driver. One RESULT row per check (gpu_common.h); exit status 1 when any
 * check failed.
 *
 * The engine is linked statically (build/libvramguard.a). To prove that
 * what the engine hands out is real device memory, this program asks the
 * driver itself, through its own dlopen/dlsym of libcuda.so.1, never
 * through the engine.
 *
 *   gpu_api [--quick]     --quick: skip the 90%-of-device request and run
 *                         fewer thread operations (for compute-sanitizer)
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include <cuda.h>
#include <vramguard.h>

#include "gpu_common.h"

/* The driver, as this test reaches it: independent of the engine. */
static struct {
    CUresult (*init)(unsigned);
    CUresult (*device_get)(CUdevice *, int);
    CUresult (*ctx_retain)(CUcontext *, CUdevice);
    CUresult (*ctx_set)(CUcontext);
    CUresult (*mem_info)(size_t *, size_t *);
    CUresult (*ptr_attr)(void *, CUpointer_attribute, CUdeviceptr);
    CUresult (*addr_range)(CUdeviceptr *, size_t *, CUdeviceptr);
} drv;

static bool quick;

static bool driver_open(void)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        gpu_row("driver_dlopen", "FAIL", "%s", dlerror());
        return false;
    }
    *(void **)&drv.init = dlsym(h, "cuInit");
    *(void **)&drv.device_get = dlsym(h, "cuDeviceGet");
    *(void **)&drv.ctx_retain = dlsym(h, "cuDevicePrimaryCtxRetain");
    *(void **)&drv.ctx_set = dlsym(h, "cuCtxSetCurrent");
    *(void **)&drv.mem_info = dlsym(h, "cuMemGetInfo_v2");
    *(void **)&drv.ptr_attr = dlsym(h, "cuPointerGetAttribute");
    *(void **)&drv.addr_range = dlsym(h, "cuMemGetAddressRange_v2");
    if (!drv.init || !drv.device_get || !drv.ctx_retain || !drv.ctx_set ||
        !drv.mem_info || !drv.ptr_attr || !drv.addr_range) {
        gpu_row("driver_dlsym", "FAIL", "libcuda.so.1 lacks an entry point");
        return false;
    }
    CUdevice dev;
    CUcontext ctx;
    CUresult cr = drv.init(0);
    if (cr == CUDA_SUCCESS)
        cr = drv.device_get(&dev, 0);
    if (cr == CUDA_SUCCESS)
        cr = drv.ctx_retain(&ctx, dev);
    if (cr == CUDA_SUCCESS)
        cr = drv.ctx_set(ctx);
    if (cr != CUDA_SUCCESS) {
        gpu_row("driver_context", "FAIL", "CUresult %d", (int)cr);
        return false;
    }
    return true;
}

static uint64_t driver_free(void)
{
    size_t f = 0, t = 0;
    return drv.mem_info(&f, &t) == CUDA_SUCCESS ? f : 0;
}

static bool check_available(vg_device_info_t *info)
{
    int rc = vg_available();
    gpu_check("vg_available", rc == VG_OK, "%s", vg_err_name(rc));
    if (rc != VG_OK)
        return false;
    int count = 0, ord = -1;
    rc = vg_device_info(0, info);
    vg_device_count(&count);
    if (rc == VG_OK)
        vg_device_find(info->uuid, &ord);
    bool ok = rc == VG_OK && count >= 1 && strncmp(info->uuid, "GPU-", 4) == 0 &&
              info->cc_major >= 1 && info->sm_count > 0 && info->total_bytes > 0 &&
              info->free_bytes > 0 && info->free_bytes <= info->total_bytes && ord == 0;
    gpu_check("device_info", ok, "%s: n=%d %s cc %d.%d %d SMs total %.2f GiB free %.2f GiB find(uuid)=%d",
              vg_err_name(rc), count, info->name, info->cc_major, info->cc_minor,
              info->sm_count, gpu_gib(info->total_bytes), gpu_gib(info->free_bytes), ord);
    return rc == VG_OK;
}

static void check_pool_limit(void)
{
    vg_pool_t *pool = NULL;
    vg_devptr_t a = 0, b = 0;
    vg_pool_stats_t st = {0};
    char why[256] = "";
    vg_refusal_t r;
    if (vg_pool_create(0, GIB, &pool) != VG_OK) {
        gpu_row("pool_1GiB_limit", "FAIL", "vg_pool_create failed");
        return;
    }
    int rc1 = vg_pool_alloc(pool, 800 * MIB, NULL, &a);
    int rc2 = vg_pool_alloc(pool, 300 * MIB, NULL, &b);
    vg_pool_stats(pool, &st);
    vg_pool_explain(pool, 300 * MIB, &r, why, sizeof why);
    printf("explain: %s\n", why);
    gpu_check("pool_1GiB_limit", rc1 == VG_OK && rc2 == VG_ENOMEM && st.used == 800 * MIB &&
              st.refusals >= 1,
              "800MiB %s, 300MiB %s, used %llu MiB, refusals %llu", vg_err_name(rc1),
              vg_err_name(rc2), (unsigned long long)(st.used / MIB),
              (unsigned long long)st.refusals);
    if (rc1 == VG_OK)
        vg_pool_free(pool, a);
    if (rc2 == VG_OK)
        vg_pool_free(pool, b);
    vg_pool_stats(pool, &st);
    gpu_check("pool_free_returns", st.used == 0 && st.live_count == 0,
              "used %llu live %llu after free", (unsigned long long)st.used,
              (unsigned long long)st.live_count);
    vg_pool_destroy(pool, NULL);
}

static void check_alignment(vg_pool_t *pool)
{
    static const size_t aligns[] = {4096, 65536};
    static const size_t sizes[] = {1000, 4097, 70000, 3 * MIB + 5};
    char detail[200] = "";
    bool ok = true;
    for (size_t i = 0; i < 2; i++) {
        vg_devptr_t p[4] = {0};
        vg_alloc_opts_t o = {.align = aligns[i], .tag = "align"};
        int bad = 0;
        for (size_t j = 0; j < 4; j++) {
            int rc = vg_pool_alloc(pool, sizes[j], &o, &p[j]);
            if (rc != VG_OK || p[j] % aligns[i] != 0)
                bad++;
        }
        for (size_t j = 0; j < 4; j++)
            if (p[j])
                vg_pool_free(pool, p[j]);
        size_t len = strlen(detail);
        snprintf(detail + len, sizeof detail - len, "align %zu: %d/4 bad; ", aligns[i], bad);
        ok = ok && bad == 0;
    }
    gpu_check("alignment", ok, "%s", detail);
}

static void check_zeroed(vg_pool_t *pool)
{
    const size_t n = 4 * MIB;
    unsigned char *host = malloc(n);
    vg_buf_t *b = NULL;
    bool ok = false;
    int rc = VG_ESYS;
    /* dirty memory first, so the driver is likely to hand the same pages
     * back and a missing zero-fill would show */
    if (host && vg_buf_create(pool, n, NULL, &b) == VG_OK) {
        memset(host, 0xAB, n);
        vg_buf_write(b, 0, host, n);
        vg_buf_destroy(&b);
    }
    vg_alloc_opts_t o = {.flags = VG_ALLOC_ZERO, .tag = "zero"};
    if (host && (rc = vg_buf_create(pool, n, &o, &b)) == VG_OK) {
        memset(host, 0x55, n);
        rc = vg_buf_read(b, 0, host, n);
        ok = rc == VG_OK;
        for (size_t i = 0; ok && i < n; i++)
            ok = host[i] == 0;
        vg_buf_destroy(&b);
    }
    gpu_check("zeroed_alloc", ok, "4 MiB VG_ALLOC_ZERO after a dirtied buffer: %s%s",
              vg_err_name(rc), ok ? ", all zero" : ", NOT all zero");
    free(host);
}

static void check_buf_roundtrip(vg_pool_t *pool)
{
    const size_t n = MIB + 24;
    unsigned char *in = malloc(n), *out = malloc(n);
    vg_buf_t *b = NULL;
    if (!in || !out || vg_buf_create(pool, n, NULL, &b) != VG_OK) {
        gpu_row("buf_roundtrip", "FAIL", "could not create a buffer");
        free(in);
        free(out);
        return;
    }
    for (size_t i = 0; i < n; i++)
        in[i] = (unsigned char)(i * 131u + 7u);
    int w = vg_buf_write(b, 0, in, n);
    int r = vg_buf_read(b, 0, out, n);
    int w2 = vg_buf_write(b, 100, in, 1000);
    int r2 = vg_buf_read(b, 100, out, 1000);
    bool same = w == VG_OK && r == VG_OK && w2 == VG_OK && r2 == VG_OK &&
                memcmp(in, out, 1000) == 0;
    gpu_check("buf_roundtrip", same, "write %s read %s, offset 100: %s/%s, bytes %s",
              vg_err_name(w), vg_err_name(r), vg_err_name(w2), vg_err_name(r2),
              same ? "equal" : "DIFFER");
    int e1 = vg_buf_write(b, n - 10, in, 20);
    int e2 = vg_buf_read(b, n - 10, out, 11);
    int e3 = vg_buf_write(b, SIZE_MAX - 4, in, 8);
    int e4 = vg_buf_read(b, n, out, 1);
    gpu_check("buf_erange", e1 == VG_ERANGE && e2 == VG_ERANGE && e3 == VG_ERANGE &&
              e4 == VG_ERANGE,
              "past end write %s read %s, overflow %s, at end %s", vg_err_name(e1),
              vg_err_name(e2), vg_err_name(e3), vg_err_name(e4));
    vg_buf_destroy(&b);
    free(in);
    free(out);
}

static void check_release_destroy(vg_pool_t *pool)
{
    vg_buf_t *b = NULL, *c = NULL;
    vg_devptr_t p = 0;
    int rc = vg_buf_create(pool, 2 * MIB, NULL, &b);
    int rel = rc == VG_OK ? vg_buf_release(&b, &p) : rc;
    int f1 = p ? vg_pool_free(pool, p) : -1;
    int f2 = p ? vg_pool_free(pool, p) : -1;
    gpu_check("buf_release", rel == VG_OK && b == NULL && p != 0 && f1 == VG_OK &&
              f2 == VG_ENOTFOUND,
              "release %s, handle %s, free %s, second free %s", vg_err_name(rel),
              b ? "kept" : "NULL", vg_err_name(f1), vg_err_name(f2));
    rc = vg_buf_create(pool, MIB, NULL, &c);
    int d1 = vg_buf_destroy(&c);
    int d2 = vg_buf_destroy(&c);
    int d3 = vg_buf_destroy(NULL);
    int d4 = vg_pool_destroy(NULL, NULL);
    gpu_check("destroy_idempotent", rc == VG_OK && d1 == VG_OK && d2 == VG_OK && c == NULL &&
              d3 == VG_OK && d4 == VG_OK,
              "destroy %s, again %s, NULL %s, pool NULL %s", vg_err_name(d1),
              vg_err_name(d2), vg_err_name(d3), vg_err_name(d4));
}

/* The driver, asked directly, must call the pointer device memory whose
 * range covers the size. */
static bool driver_confirms(vg_devptr_t p, size_t size, char *why, size_t len)
{
    unsigned int type = 0;
    CUdeviceptr base = 0;
    size_t range = 0;
    CUresult c1 = drv.ptr_attr(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, p);
    CUresult c2 = drv.addr_range(&base, &range, p);
    snprintf(why, len, "type %u (rc %d), range [+%llu, %zu B) rc %d", type, (int)c1,
             (unsigned long long)(p - base), range, (int)c2);
    return c1 == CUDA_SUCCESS && type == CU_MEMORYTYPE_DEVICE && c2 == CUDA_SUCCESS &&
           base <= p && p - base + size <= range;
}

static void check_pointers_real(vg_pool_t *pool)
{
    vg_devptr_t p = 0, q = 0;
    vg_alloc_opts_t o = {.align = 65536};
    char w1[160] = "", w2[160] = "";
    int r1 = vg_pool_alloc(pool, 64 * MIB, NULL, &p);
    int r2 = vg_pool_alloc(pool, 3 * MIB + 1, &o, &q);
    bool ok1 = r1 == VG_OK && driver_confirms(p, 64 * MIB, w1, sizeof w1);
    bool ok2 = r2 == VG_OK && driver_confirms(q, 3 * MIB + 1, w2, sizeof w2);
    gpu_check("pointers_real", ok1 && ok2, "64MiB: %s; aligned 3MiB+1: %s", w1, w2);
    vg_ptr_info_t i1 = {0}, i2 = {0}, i3 = {0};
    vg_ptr_check(p, &i1);
    vg_ptr_check(p + 4096, &i2);
    if (p)
        vg_pool_free(pool, p);
    if (q)
        vg_pool_free(pool, q);
    vg_ptr_check(p, &i3);
    gpu_check("ptr_check", i1.cls == VG_PTR_LIVE && i2.cls == VG_PTR_INTERIOR &&
              i3.cls != VG_PTR_LIVE,
              "start %s, +4096 %s, after free %s", vg_ptr_class_name(i1.cls),
              vg_ptr_class_name(i2.cls), vg_ptr_class_name(i3.cls));
}

static void check_meminfo_drop(void)
{
    vg_pool_t *pool = NULL;
    vg_devptr_t p = 0;
    if (vg_pool_create(0, 2 * GIB, &pool) != VG_OK) {
        gpu_row("meminfo_drop_1GiB", "FAIL", "vg_pool_create failed");
        return;
    }
    uint64_t f0 = driver_free();
    int rc = vg_pool_alloc(pool, GIB, NULL, &p);
    uint64_t f1 = driver_free();
    if (rc == VG_OK)
        vg_pool_free(pool, p);
    uint64_t f2 = driver_free();
    int64_t drop = (int64_t)(f0 - f1), back = (int64_t)(f2 - f1);
    gpu_check("meminfo_drop_1GiB", rc == VG_OK && drop >= (int64_t)GIB && back >= (int64_t)GIB,
              "alloc %s: driver free %.3f -> %.3f -> %.3f GiB (drop %lld MiB, back %lld MiB)",
              vg_err_name(rc), gpu_gib(f0), gpu_gib(f1), gpu_gib(f2),
              (long long)(drop / (int64_t)MIB), (long long)(back / (int64_t)MIB));
    vg_pool_destroy(pool, NULL);
}

static void check_ninety_percent(const vg_device_info_t *info)
{
    uint64_t want = info->total_bytes / 10 * 9;
    uint64_t avail = driver_free();
    if (quick || avail < want + 512 * MIB) {
        gpu_row("alloc_90pct_of_device", "info", "skipped: %s (free %.2f GiB, want %.2f GiB)",
                quick ? "--quick" : "not enough free", gpu_gib(avail), gpu_gib(want));
        return;
    }
    vg_pool_t *pool = NULL;
    vg_devptr_t p = 0;
    char why[160] = "";
    if (vg_pool_create(0, info->total_bytes, &pool) != VG_OK) {
        gpu_row("alloc_90pct_of_device", "FAIL", "vg_pool_create failed");
        return;
    }
    uint64_t t0 = gpu_now_ns();
    int rc = vg_pool_alloc(pool, want, NULL, &p);
    uint64_t t1 = gpu_now_ns();
    bool real = rc == VG_OK && driver_confirms(p, want, why, sizeof why);
    if (rc == VG_OK)
        vg_pool_free(pool, p);
    gpu_check("alloc_90pct_of_device", real, "%.2f GiB in a %.2f GiB pool: %s in %.1f ms; %s",
              gpu_gib(want), gpu_gib(info->total_bytes), vg_err_name(rc),
              (double)(t1 - t0) / 1e6, why);
    vg_pool_destroy(pool, NULL);
}

/* ------------------------------------------------ 16 threads, 512 MiB */

#define THREADS 16
#define SLOTS 8

struct worker {
    vg_pool_t *pool;
    int ops;
    uint64_t seed;
    int ok, enomem, errors, last_error;
};

static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    vg_devptr_t slot[SLOTS] = {0};
    for (int i = 0; i < w->ops; i++) {
        int s = (int)(xorshift(&w->seed) % SLOTS);
        if (slot[s]) {
            int rc = vg_pool_free(w->pool, slot[s]);
            if (rc != VG_OK)
                w->errors++, w->last_error = rc;
            slot[s] = 0;
            continue;
        }
        /* 4 KiB .. 64 MiB, log-uniform */
        size_t size = (4 * KIB) << (xorshift(&w->seed) % 15);
        size += xorshift(&w->seed) % size;
        int rc = vg_pool_alloc(w->pool, size > 64 * MIB ? 64 * MIB : size, NULL, &slot[s]);
        if (rc == VG_OK)
            w->ok++;
        else if (rc == VG_ENOMEM)
            w->enomem++, slot[s] = 0;
        else
            w->errors++, w->last_error = rc, slot[s] = 0;
    }
    for (int s = 0; s < SLOTS; s++)
        if (slot[s] && vg_pool_free(w->pool, slot[s]) != VG_OK)
            w->errors++;
    return NULL;
}

static void check_threads(void)
{
    const uint64_t limit = 512 * MIB;
    vg_pool_t *pool = NULL;
    struct worker w[THREADS];
    pthread_t tid[THREADS];
    if (vg_pool_create(0, limit, &pool) != VG_OK) {
        gpu_row("threads16_512MiB", "FAIL", "vg_pool_create failed");
        return;
    }
    uint64_t t0 = gpu_now_ns();
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct worker){.pool = pool, .ops = quick ? 300 : 3000,
                               .seed = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1)};
        pthread_create(&tid[i], NULL, worker_main, &w[i]);
    }
    int ok = 0, enomem = 0, errors = 0, last = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(tid[i], NULL);
        ok += w[i].ok, enomem += w[i].enomem, errors += w[i].errors;
        if (w[i].last_error)
            last = w[i].last_error;
    }
    double secs = (double)(gpu_now_ns() - t0) / 1e9;
    vg_pool_stats_t st = {0};
    vg_pool_stats(pool, &st);
    /* Freed small blocks stay cached and counted as used (docs/pool.md):
     * everything left must be cache, and a trim must bring use to 0. */
    uint64_t cached = st.cached;
    vg_pool_trim(pool, 0, NULL);
    vg_pool_stats_t after = {0};
    vg_pool_stats(pool, &after);
    gpu_check("threads16_512MiB", errors == 0 && st.peak <= limit && st.used == cached &&
              after.used == 0 && st.live_count == 0 && (enomem > 0 || quick), /* the limit must bite */
              "%d allocs, %d refused, %d errors (%s); peak %.1f MiB <= 512; at end used %llu = "
              "cached %llu, %llu after a trim; %.2f s",
              ok, enomem, errors, vg_err_name(last), (double)st.peak / MIB,
              (unsigned long long)st.used, (unsigned long long)cached,
              (unsigned long long)after.used, secs);
    vg_pool_destroy(pool, NULL);
}

static void check_leaks(void)
{
    vg_pool_t *pool = NULL;
    vg_devptr_t p[3] = {0};
    vg_leak_report_t lr = {0};
    if (vg_pool_create(0, 256 * MIB, &pool) != VG_OK) {
        gpu_row("destroy_reports_leaks", "FAIL", "vg_pool_create failed");
        return;
    }
    uint64_t f0 = driver_free();
    for (int i = 0; i < 3; i++)
        vg_pool_alloc(pool, (size_t)(i + 1) * 16 * MIB, NULL, &p[i]);
    uint64_t f1 = driver_free();
    int rc = vg_pool_destroy(pool, &lr);
    uint64_t f2 = driver_free();
    gpu_check("destroy_reports_leaks", rc == VG_OK && lr.count == 3 && lr.bytes == 96 * MIB &&
              f2 + 8 * MIB >= f0,
              "destroy %s: %llu leaks, %llu MiB; driver free %.3f -> %.3f -> %.3f GiB",
              vg_err_name(rc), (unsigned long long)lr.count,
              (unsigned long long)(lr.bytes / MIB), gpu_gib(f0), gpu_gib(f1), gpu_gib(f2));
}

int main(int argc, char **argv)
{
    vg_device_info_t info;
    vg_pool_t *pool = NULL;
    quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!check_available(&info) || !driver_open())
        return 1;
    check_pool_limit();
    if (vg_pool_create(0, GIB, &pool) != VG_OK) {
        gpu_row("pool_create", "FAIL", "vg_pool_create(0, 1 GiB)");
        return 1;
    }
    check_alignment(pool);
    check_zeroed(pool);
    check_buf_roundtrip(pool);
    check_release_destroy(pool);
    check_pointers_real(pool);
    vg_leak_report_t lr = {0};
    vg_pool_destroy(pool, &lr);
    gpu_check("shared_pool_clean", lr.count == 0, "%llu leaks in the pool the checks shared",
              (unsigned long long)lr.count);
    check_meminfo_drop();
    check_ninety_percent(&info);
    check_threads();
    check_leaks();
    return gpu_failures ? 1 : 0;
}
