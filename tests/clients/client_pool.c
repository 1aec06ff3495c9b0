/*
 * client_pool.c — a client for the cache-mode tests (tests/test_cache_mode.c,
 * VRAMGUARD_POOL=cache, docs/pool.md): which small cuMemAlloc requests are
 * pooled and what the program is told about them (address ranges, pointer
 * attributes, IPC), and the requests cache mode must leave to the driver.
 * The command line, output and API choice (CLIENT_API): pool_common.h.
 * Random and threaded runs: client_pool_stress.c; the budget, bad frees,
 * the audit log, a reset and fork: client_pool_edges.c.
 *
 * Cases (SIZE in bytes or with KiB/MiB; defaults in brackets):
 *   count SIZE N [ASYNC]  N cuMemAlloc_v2 of SIZE held together, then freed
 *                         (ASYNC=1: with cuMemFreeAsync), then N more
 *   count_legacy SIZE N   the same through the legacy 32-bit cuMemAlloc
 *   views SIZE            address range, attributes, IPC of a block; freed
 *   routes SIZE           requests cache mode must leave to the driver
 *   created_only SIZE     a block with only a created context current
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pool_common.h"

/* ------------------------------------------------------------ count */

/* How count frees its blocks. */
typedef enum { FREE_SYNC, FREE_ASYNC } free_how_t;

/* Allocates n blocks of size into p; how many it made, *rc the first
 * failure. */
static size_t count_fill(CUdeviceptr *p, size_t size, size_t n, bool legacy, CUresult *rc)
{
    size_t made = 0;
    *rc = CUDA_SUCCESS;
    for (; made < n; made++) {
        unsigned int p32 = 0;
        *rc = legacy ? cu.mem_alloc_legacy(&p32, (unsigned)size) : cu.mem_alloc(&p[made], size);
        if (legacy)
            p[made] = p32;
        if (*rc != CUDA_SUCCESS)
            break;
    }
    return made;
}

/* Frees p[0..n) newest first; how many frees failed. */
static long long count_free(const CUdeviceptr *p, size_t n, free_how_t how)
{
    long long failed = 0;
    for (size_t i = n; i > 0; i--)
        failed += (how == FREE_ASYNC ? cu.mem_free_async(p[i - 1], 0) : cu.mem_free(p[i - 1])) !=
                  CUDA_SUCCESS;
    if (how == FREE_ASYNC)
        failed += cu.stream_sync(0) != CUDA_SUCCESS;
    return failed;
}

/* What the program and the driver are told about block p of size. */
static void count_describe(CUdeviceptr p, size_t size)
{
    CUdeviceptr b = 0, db = 0;
    size_t s = 0, ds = 0;
    out("range_rc", cu.get_range(&b, &s, p + size - 1));
    out("range_off", (long long)(b - p));
    out("range_size", (long long)s);
    int found = drv_range(p, &db, &ds, NULL);
    out("drv_found", found);
    out("drv_off", found > 0 ? (long long)(p - db) : -1);
    out("drv_size", found > 0 ? (long long)ds : -1);
}

/* N blocks of SIZE held together: how many driver allocations they cost,
 * whether each is 256-aligned, what the driver and the program are told
 * about the first one; then freed (`how`), and N more made and freed: how
 * many driver allocations the second round cost (reuse). */
static int run_count(const char *name, size_t size, size_t n, bool legacy, free_how_t how)
{
    CUdeviceptr *p = calloc(n, sizeof *p), b = 0;
    long long live0 = drv_live(), misaligned = 0;
    CUresult rc;
    if (!p)
        return 3;
    size_t made = count_fill(p, size, n, legacy, &rc);
    long long live1 = drv_live();
    for (size_t i = 0; i < made; i++)
        misaligned += p[i] % 256 != 0;
    out_begin(name);
    out("allocs", (long long)made);
    out("rc", rc);
    out("misaligned", misaligned);
    out("drv_new", live0 < 0 ? -1 : live1 - live0);
    if (made)
        count_describe(p[0], size);
    out("free_failed", count_free(p, made, how));
    out("drv_after_free", live0 < 0 ? -1 : drv_live() - live0);
    out("freed_range_rc", made ? (long long)cu.get_range(&b, NULL, p[made - 1]) : -1);
    long long live2 = drv_live();
    made = count_fill(p, size, n, legacy, &rc);
    out("again_rc", rc);
    out("again_new", live0 < 0 ? -1 : drv_live() - live2);
    out("again_free_failed", count_free(p, made, FREE_SYNC));
    out_end();
    free(p);
    return 0;
}

/* ------------------------------------------------------------ views */

/* A 4-byte boolean attribute read into 8 bytes preset to a pattern: the
 * low half is the value, the high half shows whether more was written. */
typedef union {
    unsigned long long all;
    unsigned int value;
} wide_bool_t;

#define WIDE_PRESET 0xa5a5a5a5a5a5a5a5ull

static void views_range(CUdeviceptr p, size_t size)
{
    static const char *const names[4][3] = {{"r0_rc", "r0_off", "r0_size"},
                                            {"r1_rc", "r1_off", "r1_size"},
                                            {"rmid_rc", "rmid_off", "rmid_size"},
                                            {"rlast_rc", "rlast_off", "rlast_size"}};
    size_t offs[4] = {0, size > 1 ? 1 : 0, size / 2, size - 1};
    for (int i = 0; i < 4; i++) {
        CUdeviceptr b = 0;
        size_t s = 0;
        out(names[i][0], cu.get_range(&b, &s, p + offs[i]));
        out(names[i][1], (long long)(b - p));
        out(names[i][2], (long long)s);
    }
}

static void views_attr(CUdeviceptr p, CUdeviceptr q, CUdeviceptr big, size_t size)
{
    CUdeviceptr start = 0;
    size_t rsize = 0;
    unsigned long long id_p = 0, id_last = 0, id_q = 0, id_big = 0, chunk_id = 0;
    unsigned int memtype = 0;
    wide_bool_t ipc = {.all = WIDE_PRESET};
    out("a_start_rc", cu.ptr_attr(&start, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, p + size / 2));
    out("a_start_off", (long long)(start - p));
    out("a_size_rc", cu.ptr_attr(&rsize, CU_POINTER_ATTRIBUTE_RANGE_SIZE, p + size / 2));
    out("a_size", (long long)rsize);
    out("a_id_rc", cu.ptr_attr(&id_p, CU_POINTER_ATTRIBUTE_BUFFER_ID, p));
    cu.ptr_attr(&id_last, CU_POINTER_ATTRIBUTE_BUFFER_ID, p + size - 1);
    cu.ptr_attr(&id_q, CU_POINTER_ATTRIBUTE_BUFFER_ID, q);
    cu.ptr_attr(&id_big, CU_POINTER_ATTRIBUTE_BUFFER_ID, big);
    drv_range(p, NULL, NULL, &chunk_id);
    /* Ids compared here: they may use bit 63, which a long long field
     * would not carry. */
    out("id_same_in_block", id_p == id_last);
    out("id_differs_q", id_p != id_q);
    out("id_differs_big", id_p != id_big && id_q != id_big);
    out("id_differs_driver", id_p != chunk_id && id_q != chunk_id);
    out("id_is_driver", id_p == chunk_id);
    out("a_ipc_rc", cu.ptr_attr(&ipc.all, CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE, p));
    out("a_ipc", ipc.value);
    out("a_ipc_wrote_4", (ipc.all >> 32) == (WIDE_PRESET >> 32));
    out("a_memtype_rc", cu.ptr_attr(&memtype, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, p));
    out("a_memtype", memtype);
}

static void views_attrs(CUdeviceptr p, size_t size)
{
    CUdeviceptr start = 0;
    size_t rsize = 0;
    unsigned long long id = 0, id_single = 0;
    unsigned int memtype = 0;
    wide_bool_t ipc = {.all = WIDE_PRESET};
    CUpointer_attribute which[] = {CU_POINTER_ATTRIBUTE_RANGE_START_ADDR,
                                   CU_POINTER_ATTRIBUTE_RANGE_SIZE,
                                   CU_POINTER_ATTRIBUTE_BUFFER_ID,
                                   CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE,
                                   CU_POINTER_ATTRIBUTE_MEMORY_TYPE};
    void *data[] = {&start, &rsize, &id, &ipc.all, &memtype};
    out("as_rc", cu.ptr_attrs(5, which, data, p + size - 1));
    cu.ptr_attr(&id_single, CU_POINTER_ATTRIBUTE_BUFFER_ID, p);
    out("as_start_off", (long long)(start - p));
    out("as_size", (long long)rsize);
    out("as_id_matches", id == id_single);
    out("as_ipc", ipc.value);
    out("as_ipc_wrote_4", (ipc.all >> 32) == (WIDE_PRESET >> 32));
    out("as_memtype", memtype);
}

/* P and Q of SIZE, a direct allocation BIG (4 MiB): what each query says. */
static int run_views(size_t size)
{
    CUdeviceptr p = 0, q = 0, big = 0, start = 0;
    CUipcMemHandle h;
    out_begin("views");
    out("alloc_rc", cu.mem_alloc(&p, size));
    out("alloc_q_rc", cu.mem_alloc(&q, size));
    out("alloc_big_rc", cu.mem_alloc(&big, 4 * MiB));
    if (!p || !q || !big) {
        out_end();
        return 0;
    }
    out("drv_found", drv_range(p, NULL, NULL, NULL));
    views_range(p, size);
    views_attr(p, q, big, size);
    views_attrs(p, size);
    out("ipc_rc", cu.ipc_get(&h, p));
    out("ipc_big_rc", cu.ipc_get(&h, big));
    out("free_rc", cu.mem_free(p));
    out("freed_in_chunk", drv_range(p, NULL, NULL, NULL));
    out("freed_range_rc", cu.get_range(&start, NULL, p));
    out("freed_attr_rc", cu.ptr_attr(&start, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, p));
    out("free_q_rc", cu.mem_free(q));
    out("free_big_rc", cu.mem_free(big));
    out_end();
    return 0;
}

/* ------------------------------------------------------------ routes */

/* What `count` allocations of one kind cost the driver, and whether the
 * program sees the driver's own range for the first. */
typedef CUresult (*kind_alloc_fn)(CUdeviceptr *p, size_t size);

static CUresult kind_plain(CUdeviceptr *p, size_t size) { return cu.mem_alloc(p, size); }

static CUresult kind_pitch(CUdeviceptr *p, size_t size)
{
    size_t pitch = 0;
    return cu.mem_alloc_pitch(p, &pitch, size, 1, 4);
}

static CUresult kind_managed(CUdeviceptr *p, size_t size)
{
    return cu.mem_alloc_managed(p, size, CU_MEM_ATTACH_GLOBAL);
}

static CUresult kind_async(CUdeviceptr *p, size_t size) { return cu.mem_alloc_async(p, size, 0); }

/* key_new: driver allocations made (-1 unknown); key_rc; key_range: the
 * program's range of the first is the driver's allocation (1) or not (0). */
static void route(const char *key, kind_alloc_fn alloc, size_t size, bool async)
{
    enum { N = 4 };
    CUdeviceptr p[N] = {0};
    long long live0 = drv_live(), pooled = 0;
    CUresult rc = CUDA_SUCCESS;
    char k[64];
    for (int i = 0; i < N && rc == CUDA_SUCCESS; i++) {
        rc = alloc(&p[i], size);
        CUmemoryPool mp = NULL;
        if (rc == CUDA_SUCCESS && async)
            pooled += (cu.ptr_attr(&mp, CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE, p[i]) !=
                       CUDA_SUCCESS) || mp == NULL;
    }
    long long live1 = drv_live();
    CUdeviceptr b = 0, db = 0;
    size_t s = 0, ds = 0;
    int same = rc == CUDA_SUCCESS && cu.get_range(&b, &s, p[0]) == CUDA_SUCCESS &&
               drv_range(p[0], &db, &ds, NULL) == 1 && b == db && s == ds;
    snprintf(k, sizeof k, "%s_rc", key), out(k, rc);
    snprintf(k, sizeof k, "%s_new", key), out(k, async || live0 < 0 ? -1 : live1 - live0);
    snprintf(k, sizeof k, "%s_range", key), out(k, same);
    if (async)
        snprintf(k, sizeof k, "%s_not_mempool", key), out(k, pooled);
    for (int i = N; i > 0; i--) {
        if (p[i - 1] && async)
            cu.mem_free_async(p[i - 1], 0);
        else if (p[i - 1])
            cu.mem_free(p[i - 1]);
    }
    cu.stream_sync(0);
}

/* A created (non-primary) context: plain requests go to the driver. */
static void route_created_ctx(size_t size)
{
    CUcontext c = NULL;
    CUresult rc = cu.ctx_create(&c, 0, dev);
    out("ctx_create_rc", rc);
    if (rc != CUDA_SUCCESS)
        return;
    route("ctx", kind_plain, size, false);
    out("ctx_destroy_rc", cu.ctx_destroy(c));
    out("ctx_back_rc", cu.ctx_set_current(primary));
}

/* cuMemCreate + map: the program's range is the mapping. */
static void route_vmm(void)
{
    CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = 0}};
    CUmemAccessDesc acc = {.location = prop.location, .flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    CUmemGenericAllocationHandle h = 0;
    CUdeviceptr va = 0, b = 0;
    size_t g = 0, s = 0;
    CUresult rc = cu.vmm_granularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED);
    if (rc == CUDA_SUCCESS)
        rc = cu.vmm_create(&h, g, &prop, 0);
    if (rc == CUDA_SUCCESS)
        rc = cu.vmm_reserve(&va, g, 0, 0, 0);
    if (rc == CUDA_SUCCESS)
        rc = cu.vmm_map(va, g, 0, h, 0);
    if (rc == CUDA_SUCCESS)
        rc = cu.vmm_set_access(va, g, &acc, 1);
    out("vmm_rc", rc);
    out("vmm_range", rc == CUDA_SUCCESS && cu.get_range(&b, &s, va + 1) == CUDA_SUCCESS &&
                         b == va && s == g);
    if (va && h)
        cu.vmm_unmap(va, g);
    if (va)
        cu.vmm_address_free(va, g);
    if (h)
        cu.vmm_release(h);
}

static int run_routes(size_t size)
{
    out_begin("routes");
    route("edge", kind_plain, MiB, false);
    route("big", kind_plain, MiB + 1, false);
    route("pitch", kind_pitch, size, false);
    route("managed", kind_managed, size, false);
    route("async", kind_async, size, true);
    route_created_ctx(size);
    route_vmm();
    out_end();
    return 0;
}

/* ---------------------------------------------------------------- main */

static int usage(void)
{
    fprintf(stderr, "usage: client_pool CASE SIZE [COUNT [EXTRA]]\n"
                    "  CASE: count count_legacy views routes created_only\n");
    return 2;
}

/* Only a created context, never the primary one: cache mode must leave the
 * allocation to the driver and must not activate the primary context. */
static int run_created_only(const char *name, size_t size)
{
    typedef CUresult (*state_fn)(CUdevice, unsigned int *, int *);
    state_fn state = (state_fn)dlsym(RTLD_DEFAULT, "cuDevicePrimaryCtxGetState");
    CUcontext c = NULL;
    CUdeviceptr p = 0;
    unsigned int flags = 0;
    int active = -1;
    long long live0 = drv_live();
    CUresult rc = cu.ctx_create(&c, 0, dev);
    CUresult arc = rc == CUDA_SUCCESS ? cu.mem_alloc(&p, size) : rc;
    out_begin(name);
    out("ctx_create_rc", rc);
    out("alloc_rc", arc);
    out("drv_new", live0 < 0 ? -1 : drv_live() - live0);
    out("primary_active", state && state(dev, &flags, &active) == CUDA_SUCCESS ? active : -1);
    out("free_rc", arc == CUDA_SUCCESS ? (long long)cu.mem_free(p) : -1);
    out_end();
    if (c)
        cu.ctx_destroy(c);
    return 0;
}

int main(int argc, char **argv)
{
    pool_args_t a;
    if (pool_args_parse(argc, argv, &a) != 0)
        return usage();
    bool created_only = !strcmp(a.name, "created_only");
    int rc = setup(created_only ? WITHOUT_PRIMARY : WITH_PRIMARY);
    if (rc != 0)
        return rc;
    if (created_only)
        return run_created_only(a.name, a.size);
    free_how_t how = a.extra ? FREE_ASYNC : FREE_SYNC;
    if (!strcmp(a.name, "count"))
        return run_count(a.name, a.size, a.count, false, how);
    if (!strcmp(a.name, "count_legacy"))
        return run_count(a.name, a.size, a.count, true, how);
    if (!strcmp(a.name, "views"))
        return run_views(a.size);
    if (!strcmp(a.name, "routes"))
        return run_routes(a.size);
    return usage();
}
