/*
 * pool_views.c — what a program sees of its small allocations (docs/pool.md).
 * Under the shim's cache mode (VRAMGUARD_POOL=cache) plain cuMemAlloc
 * requests of 1 B..1 MiB made under the primary context come from the
 * shim's pool: blocks carved out of larger driver chunks. The program must
 * not be able to tell, except where it asks about IPC: every view of a
 * pooled block is the block, never the chunk. No vramguard code: linked
 * with -lcuda (the toolkit stub, no rpath) like badptr_gpu.c; it asks
 * whatever libcuda.so.1 the loader finds and, when preloaded, the shim.
 *
 *   pool_views --expect cache|driver [--driver FILE]
 *
 * Blocks of 1000 B (x3), 4096 B (x3), 4097 B, 64 KiB (x2), 1 MiB (x2) and
 * 2 MiB (never pooled), allocated alternately through the linked entry
 * points and through cuGetProcAddress (cudart's way), and every view asked
 * both ways:
 *   cuMemGetAddressRange_v2 at the start, middle and last byte;
 *   cuPointerGetAttribute RANGE_START_ADDR, RANGE_SIZE, BUFFER_ID,
 *   IS_LEGACY_CUDA_IPC_CAPABLE, MEMORY_TYPE, DEVICE_ORDINAL, CONTEXT (at
 *   the start and in the middle), cuPointerGetAttributes the same set;
 *   cuIpcGetMemHandle;
 * then a distinct byte pattern into each block (cuMemsetD8), one
 * device-to-device copy between two pooled blocks (cuMemcpyDtoD, no
 * kernel), every block read back whole (cuMemcpyDtoH): no aliasing; then a
 * freed block's views, and a new allocation after cuCtxSynchronize (a new
 * BUFFER_ID even when the address is reused).
 *
 * --expect cache: a block of <= 1 MiB must look like itself: base = the
 * block, size = the size asked, IS_LEGACY_CUDA_IPC_CAPABLE 0,
 * cuIpcGetMemHandle CUDA_ERROR_INVALID_VALUE, freed: CUDA_ERROR_NOT_FOUND
 * (address range) and CUDA_ERROR_INVALID_VALUE (attribute); 256-byte
 * alignment. --expect driver: the driver's own answers (base = pointer,
 * size >= asked). Either way, with --driver FILE (a native run's output)
 * every answer that does not depend on pooling must equal the driver's
 * there. A native run prints its answers as DRV|key|value lines and as
 * info rows. RESULT rows as gpu_common.h; exit 1 on any FAIL.
 */
#include <dlfcn.h>
#include <stdbool.h>
#include <string.h>

#include <cuda.h>

#include "gpu_common.h"

typedef CUresult (*alloc_fn)(CUdeviceptr *, size_t);
typedef CUresult (*free_fn)(CUdeviceptr);
typedef CUresult (*range_fn)(CUdeviceptr *, size_t *, CUdeviceptr);
typedef CUresult (*attr_fn)(void *, CUpointer_attribute, CUdeviceptr);
typedef CUresult (*attrs_fn)(unsigned int, CUpointer_attribute *, void **, CUdeviceptr);
typedef CUresult (*ipc_fn)(CUipcMemHandle *, CUdeviceptr);

/* One way of reaching the driver: the linked names, or cuGetProcAddress. */
struct api {
    const char *name;
    alloc_fn alloc;
    free_fn free;
    range_fn range;
    attr_fn attr;
    attrs_fn attrs;
    ipc_fn ipc; /* NULL when this libcuda has none */
};

enum { ROUTES = 2 };
static struct api api[ROUTES];

#define POOL_MAX MIB
#define NBLOCKS 12
static const size_t block_size[NBLOCKS] = {1000,  1000,  1000,      4096,    4096,    4096,
                                           4097,  65536, 65536, MIB,    MIB,    2 * MIB};
/* The pooled copy: 4096 bytes of block SRC into block DST at DST_OFF. */
#define COPY_SRC 4
#define COPY_DST 8
#define COPY_OFF 4096
#define COPY_LEN 4096
/* The block freed early, whose freed views are checked. */
#define FREED 5

struct block {
    size_t size;
    CUdeviceptr p;
    unsigned char pattern;
    unsigned long long id;
};

static struct block blk[NBLOCKS];
static bool expect_cache;
static CUcontext ctx;

/* ------------------------------------------------------------ helpers */

static const char *cu_name(CUresult rc)
{
    const char *s = NULL;
    return cuGetErrorName(rc, &s) == CUDA_SUCCESS && s ? s : "CUDA_ERROR_?";
}

static bool pooled(size_t size) { return expect_cache && size >= 1 && size <= POOL_MAX; }

/* A failure note, kept for the row's detail: the first few verbatim. */
struct notes {
    int n;
    char text[300];
};

static void note(struct notes *nt, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(struct notes *nt, const char *fmt, ...)
{
    char line[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (nt->n < 24) /* the log gets the first few of each check */
        printf("    mismatch: %s\n", line);
    if (nt->n++ < 2) {
        size_t len = strlen(nt->text);
        snprintf(nt->text + len, sizeof nt->text - len, "%s%s", len ? "; " : "", line);
    }
}

static void row_notes(const char *check, const struct notes *nt, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void row_notes(const char *check, const struct notes *nt, const char *fmt, ...)
{
    char what[240];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (nt->n == 0)
        gpu_row(check, "PASS", "%s", what);
    else
        gpu_row(check, "FAIL", "%d mismatches: %s (%s)", nt->n, nt->text, what);
}

/* ------------------------------------------------------- driver file */

#define DRV_MAX 64
static struct {
    char key[48];
    long long v;
} drv[DRV_MAX];
static int ndrv;
static bool have_driver;

static void load_driver(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        printf("--driver %s: cannot open\n", path);
        return;
    }
    char line[256];
    while (fgets(line, sizeof line, f) && ndrv < DRV_MAX) {
        char key[48];
        long long v;
        if (sscanf(line, "DRV|%47[^|]|%lld", key, &v) == 2) {
            snprintf(drv[ndrv].key, sizeof drv[ndrv].key, "%s", key);
            drv[ndrv++].v = v;
        }
    }
    fclose(f);
    have_driver = ndrv > 0;
    printf("--driver %s: %d values\n", path, ndrv);
}

/* The native run's value of key: true with *v, false when absent. */
static bool drv_get(const char *key, long long *v)
{
    for (int i = 0; i < ndrv; i++)
        if (!strcmp(drv[i].key, key)) {
            *v = drv[i].v;
            return true;
        }
    return false;
}

/* Prints this run's value (DRV line: a native run's output is the next
 * run's --driver file) and, with a driver file, compares: notes a
 * mismatch. */
static void drv_value(const char *key, long long v, struct notes *nt)
{
    printf("DRV|%s|%lld\n", key, v);
    long long want;
    if (nt && have_driver && drv_get(key, &want) && want != v)
        note(nt, "%s %lld, the driver said %lld", key, v, want);
}

/* ------------------------------------------------------------ set-up */

static CUresult get_proc(const char *name, void **fn)
{
    CUdriverProcAddressQueryResult st = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    *fn = NULL;
    CUresult rc = cuGetProcAddress(name, fn, CUDA_VERSION, CU_GET_PROC_ADDRESS_DEFAULT, &st);
    if (rc == CUDA_SUCCESS && (st != CU_GET_PROC_ADDRESS_SUCCESS || !*fn))
        rc = CUDA_ERROR_NOT_FOUND;
    return rc;
}

static CUresult setup_routes(void)
{
    /* cuIpcGetMemHandle by dlsym: a libcuda without it (the test driver)
     * must not stop the program from loading. Under the shim the answer is
     * the shim's hook when it has one. */
    api[0] = (struct api){"linked",
                          cuMemAlloc,
                          cuMemFree,
                          cuMemGetAddressRange,
                          cuPointerGetAttribute,
                          cuPointerGetAttributes,
                          (ipc_fn)dlsym(RTLD_DEFAULT, "cuIpcGetMemHandle")};
    struct api *g = &api[1];
    g->name = "cuGetProcAddress";
    CUresult rc = get_proc("cuMemAlloc", (void **)&g->alloc);
    if (rc == CUDA_SUCCESS)
        rc = get_proc("cuMemFree", (void **)&g->free);
    if (rc == CUDA_SUCCESS)
        rc = get_proc("cuMemGetAddressRange", (void **)&g->range);
    if (rc == CUDA_SUCCESS)
        rc = get_proc("cuPointerGetAttribute", (void **)&g->attr);
    if (rc == CUDA_SUCCESS)
        rc = get_proc("cuPointerGetAttributes", (void **)&g->attrs);
    if (rc == CUDA_SUCCESS && get_proc("cuIpcGetMemHandle", (void **)&g->ipc) != CUDA_SUCCESS)
        g->ipc = NULL;
    return rc;
}

/* ------------------------------------------------------------ views */

/* cuMemGetAddressRange at the start, middle and last byte of each block,
 * both routes. */
static void check_ranges(void)
{
    struct notes nt = {0}, dn = {0};
    for (int r = 0; r < ROUTES; r++)
        for (int i = 0; i < NBLOCKS; i++) {
            struct block *b = &blk[i];
            size_t offs[3] = {0, b->size / 2, b->size - 1};
            for (int k = 0; k < 3; k++) {
                CUdeviceptr base = 0;
                size_t size = 0;
                CUresult rc = api[r].range(&base, &size, b->p + offs[k]);
                if (k == 0)
                    printf("range %s %zu B at 0x%llx: %s base +%lld size %zu\n", api[r].name,
                           b->size, (unsigned long long)b->p, cu_name(rc),
                           (long long)(base - b->p), size);
                bool ok = rc == CUDA_SUCCESS && base == b->p &&
                          (pooled(b->size) ? size == b->size : size >= b->size);
                if (!ok)
                    note(&nt, "%s %zu B +%zu: %s base %+lld size %zu", api[r].name, b->size,
                         offs[k], cu_name(rc), (long long)(base - b->p), size);
                /* the first block of each size, once: the driver's figure */
                if (r == 0 && k == 0 && (i == 0 || block_size[i - 1] != b->size)) {
                    char key[48];
                    snprintf(key, sizeof key, "range_size_%zu", b->size);
                    if (!pooled(b->size))
                        drv_value(key, (long long)size, &dn);
                    else
                        printf("(range_size_%zu %zu: pooled, not compared)\n", b->size, size);
                }
            }
        }
    row_notes("pv_address_range", &nt,
              "%d blocks x 3 addresses x 2 routes: base = the block, size %s", NBLOCKS,
              expect_cache ? "= the size asked (<= 1 MiB), >= it (2 MiB)" : ">= the size asked");
    if (have_driver)
        row_notes("pv_range_as_driver", &dn, "unpooled sizes' ranges equal the native run's");
}

static const CUpointer_attribute attr_list[] = {
    CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, CU_POINTER_ATTRIBUTE_RANGE_SIZE,
    CU_POINTER_ATTRIBUTE_BUFFER_ID,        CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE,
    CU_POINTER_ATTRIBUTE_MEMORY_TYPE,      CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
    CU_POINTER_ATTRIBUTE_CONTEXT,
};
enum { A_START, A_SIZE, A_ID, A_IPC, A_TYPE, A_ORD, A_CTX, NATTR };
static const char *attr_name[NATTR] = {"RANGE_START_ADDR", "RANGE_SIZE",  "BUFFER_ID",
                                       "IS_LEGACY_CUDA_IPC_CAPABLE", "MEMORY_TYPE",
                                       "DEVICE_ORDINAL", "CONTEXT"};

/* Every attribute's value, widened; filled with `fill` first, so an
 * attribute left untouched shows. */
struct attrs {
    CUdeviceptr start;
    size_t size;
    unsigned long long id;
    unsigned int ipc;
    unsigned int type;
    int ord;
    CUcontext ctx;
};

static void attrs_fill(struct attrs *a, unsigned char fill) { memset(a, fill, sizeof *a); }

static void *attr_slot(struct attrs *a, int k)
{
    switch (k) {
    case A_START: return &a->start;
    case A_SIZE: return &a->size;
    case A_ID: return &a->id;
    case A_IPC: return &a->ipc;
    case A_TYPE: return &a->type;
    case A_ORD: return &a->ord;
    default: return &a->ctx;
    }
}

/* One by one (cuPointerGetAttribute): rc[k] per attribute. */
static void attrs_single(const struct api *x, CUdeviceptr p, struct attrs *a, CUresult rc[NATTR])
{
    attrs_fill(a, 0xab);
    for (int k = 0; k < NATTR; k++)
        rc[k] = x->attr(attr_slot(a, k), attr_list[k], p);
}

/* All at once (cuPointerGetAttributes). */
static CUresult attrs_many(const struct api *x, CUdeviceptr p, struct attrs *a)
{
    CUpointer_attribute list[NATTR];
    void *data[NATTR];
    attrs_fill(a, 0xab);
    for (int k = 0; k < NATTR; k++) {
        list[k] = attr_list[k];
        data[k] = attr_slot(a, k);
    }
    return x->attrs(NATTR, list, data, p);
}

/* What one block's attributes must be; notes what is not. */
static void attrs_expect(struct notes *nt, const char *how, const struct block *b, size_t off,
                         const struct attrs *a, const CUresult *rc, size_t range_size)
{
    for (int k = 0; k < NATTR; k++)
        if (rc && rc[k] != CUDA_SUCCESS) {
            note(nt, "%s %zu B +%zu %s: %s", how, b->size, off, attr_name[k], cu_name(rc[k]));
            return;
        }
    bool p = pooled(b->size);
    (void)range_size; /* the driver's own RANGE_SIZE is compared by DRV line */
    if (a->start != b->p)
        note(nt, "%s %zu B +%zu: RANGE_START_ADDR %+lld", how, b->size, off,
             (long long)(a->start - b->p));
    if (p ? a->size != b->size : a->size < b->size)
        note(nt, "%s %zu B +%zu: RANGE_SIZE %zu, want %s%zu", how, b->size, off, a->size,
             p ? "" : ">= ", b->size);
    if (p && a->ipc != 0)
        note(nt, "%s %zu B: IS_LEGACY_CUDA_IPC_CAPABLE %u, want 0", how, b->size, a->ipc);
    if (a->type != CU_MEMORYTYPE_DEVICE)
        note(nt, "%s %zu B: MEMORY_TYPE %u", how, b->size, a->type);
    if (a->ord != 0)
        note(nt, "%s %zu B: DEVICE_ORDINAL %d", how, b->size, a->ord);
    if (a->ctx != ctx)
        note(nt, "%s %zu B: CONTEXT %p, the primary is %p", how, b->size, (void *)a->ctx,
             (void *)ctx);
    if (a->id != b->id)
        note(nt, "%s %zu B +%zu: BUFFER_ID %llx, at the start %llx", how, b->size, off, a->id,
             b->id);
}

static void check_attributes(void)
{
    struct notes nt = {0}, dn = {0};
    /* the BUFFER_ID each block has, by the linked single call at its start */
    for (int i = 0; i < NBLOCKS; i++) {
        blk[i].id = 0;
        if (cuPointerGetAttribute(&blk[i].id, CU_POINTER_ATTRIBUTE_BUFFER_ID, blk[i].p) !=
            CUDA_SUCCESS)
            blk[i].id = 0;
    }
    for (int r = 0; r < ROUTES; r++)
        for (int i = 0; i < NBLOCKS; i++) {
            struct block *b = &blk[i];
            size_t range_size = 0;
            CUdeviceptr base;
            api[r].range(&base, &range_size, b->p);
            size_t offs[2] = {0, b->size / 2};
            for (int k = 0; k < 2; k++) {
                struct attrs a, m;
                CUresult rc[NATTR];
                attrs_single(&api[r], b->p + offs[k], &a, rc);
                char how[64];
                snprintf(how, sizeof how, "%s attr", api[r].name);
                attrs_expect(&nt, how, b, offs[k], &a, rc, range_size);
                CUresult rm = attrs_many(&api[r], b->p + offs[k], &m);
                snprintf(how, sizeof how, "%s attrs", api[r].name);
                if (rm != CUDA_SUCCESS)
                    note(&nt, "%s %zu B +%zu: %s", how, b->size, offs[k], cu_name(rm));
                else
                    attrs_expect(&nt, how, b, offs[k], &m, NULL, range_size);
                if (r == 0 && k == 0) {
                    printf("attrs %zu B at 0x%llx: start %+lld size %zu id 0x%llx ipc %u type %u "
                           "ordinal %d\n",
                           b->size, (unsigned long long)b->p, (long long)(a.start - b->p), a.size,
                           a.id, a.ipc, a.type, a.ord);
                    if ((i == 0 || block_size[i - 1] != b->size) && !pooled(b->size)) {
                        char key[48];
                        snprintf(key, sizeof key, "ipc_capable_%zu", b->size);
                        drv_value(key, a.ipc, &dn);
                        snprintf(key, sizeof key, "attr_range_size_%zu", b->size);
                        drv_value(key, (long long)a.size, &dn);
                    }
                }
            }
        }
    row_notes("pv_attributes", &nt,
              "%d blocks x start+middle x 2 routes, cuPointerGetAttribute and "
              "cuPointerGetAttributes: the block's start, %s, IPC-capable %s, device memory of "
              "device 0 in the primary context, one BUFFER_ID per block",
              NBLOCKS, expect_cache ? "size asked" : "size >= asked",
              expect_cache ? "0 when pooled" : "as the driver says");
    if (have_driver)
        row_notes("pv_attributes_as_driver", &dn, "unpooled sizes' IPC-capable flags and "
                  "RANGE_SIZE equal the native run's");
}

static void check_ids_unique(unsigned long long extra, const char *what, CUresult extra_rc)
{
    struct notes nt = {0};
    if (extra_rc != CUDA_SUCCESS)
        note(&nt, "%s: %s", what, cu_name(extra_rc));
    for (int i = 0; i < NBLOCKS; i++) {
        if (blk[i].id == 0)
            note(&nt, "%zu B block #%d: no BUFFER_ID", blk[i].size, i);
        for (int j = 0; j < i; j++)
            if (blk[i].id && blk[i].id == blk[j].id)
                note(&nt, "blocks #%d and #%d share BUFFER_ID 0x%llx", j, i, blk[i].id);
        if (extra && blk[i].id == extra)
            note(&nt, "%s has block #%d's BUFFER_ID 0x%llx", what, i, extra);
    }
    if (!what)
        row_notes("pv_buffer_id_unique", &nt, "%d blocks, %d distinct BUFFER_IDs (first 0x%llx)",
                  NBLOCKS, NBLOCKS - nt.n, blk[0].id);
    else
        row_notes("pv_buffer_id_new", &nt, "%s: BUFFER_ID 0x%llx, none of the first %d blocks'",
                  what, extra, NBLOCKS);
}

static void check_ipc(void)
{
    struct notes nt = {0}, dn = {0};
    int asked = 0;
    for (int r = 0; r < ROUTES; r++) {
        if (!api[r].ipc) {
            printf("cuIpcGetMemHandle via %s: not available in this libcuda\n", api[r].name);
            continue;
        }
        for (int i = 0; i < NBLOCKS; i++) {
            if (i > 0 && block_size[i - 1] == blk[i].size)
                continue; /* one block of each size */
            CUipcMemHandle h;
            memset(&h, 0, sizeof h);
            CUresult rc = api[r].ipc(&h, blk[i].p);
            asked++;
            printf("cuIpcGetMemHandle via %s, %zu B: %s\n", api[r].name, blk[i].size,
                   cu_name(rc));
            if (pooled(blk[i].size) && rc != CUDA_ERROR_INVALID_VALUE)
                note(&nt, "%s %zu B: %s, want CUDA_ERROR_INVALID_VALUE", api[r].name,
                     blk[i].size, cu_name(rc));
            if (!pooled(blk[i].size) && r == 0) {
                char key[48];
                snprintf(key, sizeof key, "ipc_rc_%zu", blk[i].size);
                drv_value(key, rc, &dn);
            }
        }
    }
    if (asked == 0) {
        gpu_row("pv_ipc_handle", "info", "cuIpcGetMemHandle: not in this libcuda");
        return;
    }
    if (expect_cache)
        row_notes("pv_ipc_handle", &nt,
                  "%d calls: pooled blocks CUDA_ERROR_INVALID_VALUE, the 2 MiB one the driver's "
                  "answer", asked);
    else
        gpu_row("pv_ipc_handle", "info", "%d calls, each size's answer in DRV lines", asked);
    if (have_driver)
        row_notes("pv_ipc_as_driver", &dn, "unpooled sizes' cuIpcGetMemHandle codes equal the "
                  "native run's");
}

/* ------------------------------------------------------------ data */

static void check_data(void)
{
    struct notes nt = {0};
    unsigned char *h = malloc(2 * MIB);
    if (!h) {
        gpu_row("pv_data", "FAIL", "no host memory");
        return;
    }
    for (int i = 0; i < NBLOCKS; i++) {
        blk[i].pattern = (unsigned char)(0x11 + 0x13 * i);
        CUresult rc = cuMemsetD8(blk[i].p, blk[i].pattern, blk[i].size);
        if (rc != CUDA_SUCCESS)
            note(&nt, "cuMemsetD8 %zu B block #%d: %s", blk[i].size, i, cu_name(rc));
    }
    CUresult rc = cuMemcpyDtoD(blk[COPY_DST].p + COPY_OFF, blk[COPY_SRC].p, COPY_LEN);
    if (rc != CUDA_SUCCESS)
        note(&nt, "cuMemcpyDtoD: %s", cu_name(rc));
    size_t checked = 0;
    for (int i = 0; i < NBLOCKS; i++) {
        memset(h, 0, blk[i].size);
        rc = cuMemcpyDtoH(h, blk[i].p, blk[i].size);
        if (rc != CUDA_SUCCESS) {
            note(&nt, "cuMemcpyDtoH %zu B block #%d: %s", blk[i].size, i, cu_name(rc));
            continue;
        }
        size_t bad = 0, first = 0;
        for (size_t k = 0; k < blk[i].size; k++) {
            bool copied = i == COPY_DST && k >= COPY_OFF && k < COPY_OFF + COPY_LEN;
            unsigned char want = copied ? blk[COPY_SRC].pattern : blk[i].pattern;
            if (h[k] != want && bad++ == 0)
                first = k;
        }
        checked += blk[i].size;
        if (bad)
            note(&nt, "%zu B block #%d: %zu bytes wrong, first at +%zu = 0x%02x", blk[i].size, i,
                 bad, first, h[first]);
    }
    free(h);
    row_notes("pv_data", &nt,
              "%d blocks each set to its own byte (cuMemsetD8), 4 KiB copied block to block "
              "(cuMemcpyDtoD, no kernel), %zu bytes read back (cuMemcpyDtoH): all as written",
              NBLOCKS, checked);
}

/* ------------------------------------------------------- freed views */

static void check_freed(CUdeviceptr p, size_t size)
{
    struct notes nt = {0}, dn = {0};
    char seen[300] = "";
    for (int r = 0; r < ROUTES; r++) {
        CUdeviceptr base = 0;
        size_t sz = 0;
        CUresult rr = api[r].range(&base, &sz, p);
        unsigned int type = 0xabab;
        CUresult ra = api[r].attr(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, p);
        size_t rs = 0;
        CUresult rz = api[r].attr(&rs, CU_POINTER_ATTRIBUTE_RANGE_SIZE, p);
        struct attrs m;
        CUresult rm = attrs_many(&api[r], p, &m);
        bool untouched = m.start == (CUdeviceptr)0xababababababababull &&
                         m.size == (size_t)0xababababababababull;
        char line[300];
        snprintf(line, sizeof line,
                 "cuMemGetAddressRange %s, cuPointerGetAttribute MEMORY_TYPE %s, RANGE_SIZE %s, "
                 "cuPointerGetAttributes %s (MEMORY_TYPE %u, ordinal %d, range %s)",
                 cu_name(rr), cu_name(ra), cu_name(rz), cu_name(rm), m.type, m.ord,
                 untouched ? "untouched" : "written");
        printf("freed %zu B at 0x%llx via %s: %s\n", size, (unsigned long long)p, api[r].name,
               line);
        if (r == 0)
            snprintf(seen, sizeof seen, "%s", line);
        if (expect_cache) {
            if (rr != CUDA_ERROR_NOT_FOUND)
                note(&nt, "%s: range %s, want CUDA_ERROR_NOT_FOUND", api[r].name, cu_name(rr));
            if (ra != CUDA_ERROR_INVALID_VALUE || rz != CUDA_ERROR_INVALID_VALUE)
                note(&nt, "%s: attribute %s/%s, want CUDA_ERROR_INVALID_VALUE", api[r].name,
                     cu_name(ra), cu_name(rz));
        }
        if (r == 0) {
            /* cache mode's two codes are fixed (above); compared with the
             * driver's only under the driver's views */
            drv_value("freed_range_rc", rr, expect_cache ? NULL : &dn);
            drv_value("freed_attr_rc", ra, expect_cache ? NULL : &dn);
            /* what the plural call says of a freed address: compared in
             * every mode (a freed pooled block must look freed) */
            drv_value("freed_attrs_rc", rm, &dn);
            drv_value("freed_attrs_type", rm == CUDA_SUCCESS ? (long long)m.type : -1, &dn);
            drv_value("freed_attrs_range_untouched", untouched, &dn);
        }
    }
    if (expect_cache)
        row_notes("pv_freed", &nt,
                  "a freed pooled %zu B block, before any sync, both routes: range "
                  "CUDA_ERROR_NOT_FOUND, attribute CUDA_ERROR_INVALID_VALUE", size);
    else if (!have_driver)
        gpu_row("drv_freed", "info", "freed %zu B allocation: %s", size, seen);
    if (have_driver)
        row_notes(expect_cache ? "pv_freed_attrs_as_driver" : "pv_freed_as_driver", &dn,
                  "a freed block's cuPointerGetAttributes%s equal the native run's for its "
                  "freed block: %s",
                  expect_cache ? "" : " and error codes", seen);
}

/* DRV figures only the native run reports as info: the driver's own size
 * for odd requests, and cuPointerGetAttributes on address 0. */
static void driver_info(void)
{
    struct notes dn = {0};
    struct attrs m;
    CUresult rm = attrs_many(&api[0], 0, &m);
    bool start_untouched = m.start == (CUdeviceptr)0xababababababababull;
    bool size_untouched = m.size == (size_t)0xababababababababull;
    printf("cuPointerGetAttributes(0): %s type %u ordinal %d ipc %u id 0x%llx start %s size %s\n",
           cu_name(rm), m.type, m.ord, m.ipc, m.id, start_untouched ? "untouched" : "written",
           size_untouched ? "untouched" : "written");
    drv_value("null_attrs_rc", rm, &dn);
    drv_value("null_attrs_type", rm == CUDA_SUCCESS ? (long long)m.type : -1, &dn);
    drv_value("null_attrs_range_untouched", start_untouched && size_untouched, &dn);
    unsigned int type = 0xabab;
    CUresult ra = cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, 0);
    CUdeviceptr base = 0;
    size_t sz = 0;
    CUresult rr = cuMemGetAddressRange(&base, &sz, 0);
    drv_value("null_attr_rc", ra, &dn);
    drv_value("null_range_rc", rr, &dn);
    char what[200];
    snprintf(what, sizeof what,
             "address 0: cuPointerGetAttributes %s (MEMORY_TYPE %u, ordinal %d, range %s), "
             "cuPointerGetAttribute %s, cuMemGetAddressRange %s",
             cu_name(rm), m.type, m.ord, start_untouched && size_untouched ? "untouched" : "written",
             cu_name(ra), cu_name(rr));
    if (have_driver)
        row_notes("pv_null_as_driver", &dn, "%s", what);
    else
        gpu_row("drv_attrs_null", "info", "%s", what);
}

/* The driver's range size for allocations of 1000 and 4097 B (native). */
static void driver_sizes(void)
{
    char text[380] = "";
    size_t len = 0;
    const size_t sizes[] = {1000, 4097};
    for (int i = 0; i < 2; i++) {
        for (int j = 0; j < NBLOCKS; j++)
            if (blk[j].size == sizes[i]) {
                CUdeviceptr base = 0;
                size_t sz = 0;
                size_t asz = 0;
                CUresult rr = cuMemGetAddressRange(&base, &sz, blk[j].p);
                CUresult ra = cuPointerGetAttribute(&asz, CU_POINTER_ATTRIBUTE_RANGE_SIZE,
                                                    blk[j].p);
                len += (size_t)snprintf(text + len, sizeof text - len,
                                        "%scuMemAlloc(%zu): cuMemGetAddressRange %s size %zu "
                                        "(%+lld), RANGE_SIZE %s %zu, address 0x%llx",
                                        i ? "; " : "", sizes[i], cu_name(rr), sz,
                                        (long long)sz - (long long)sizes[i], cu_name(ra), asz,
                                        (unsigned long long)blk[j].p);
                break;
            }
    }
    gpu_row(expect_cache ? "pv_sizes_seen" : "drv_range_sizes", "info", "%s", text);
}

/* ------------------------------------------------------------ main */

int main(int argc, char **argv)
{
    const char *expect = NULL, *driver_file = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--expect"))
            expect = argv[i + 1];
        else if (!strcmp(argv[i], "--driver"))
            driver_file = argv[i + 1];
    }
    if (!expect || (strcmp(expect, "cache") && strcmp(expect, "driver"))) {
        fprintf(stderr, "usage: pool_views --expect cache|driver [--driver FILE]\n");
        return 2;
    }
    expect_cache = !strcmp(expect, "cache");
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (driver_file)
        load_driver(driver_file);
    printf("pool_views: expecting %s views%s; LD_PRELOAD=%s VRAMGUARD_POOL=%s\n",
           expect_cache ? "the shim's cache-mode" : "the driver's",
           have_driver ? ", compared with a native run" : "",
           getenv("LD_PRELOAD") ? getenv("LD_PRELOAD") : "(unset)",
           getenv("VRAMGUARD_POOL") ? getenv("VRAMGUARD_POOL") : "(unset)");

    CUdevice dev;
    CUresult rc = cuInit(0);
    if (rc == CUDA_SUCCESS)
        rc = cuDeviceGet(&dev, 0);
    if (rc == CUDA_SUCCESS)
        rc = cuDevicePrimaryCtxRetain(&ctx, dev);
    if (rc == CUDA_SUCCESS)
        rc = cuCtxSetCurrent(ctx);
    if (rc == CUDA_SUCCESS)
        rc = setup_routes();
    if (rc != CUDA_SUCCESS) {
        gpu_row("pv_init", "FAIL", "%s", cu_name(rc));
        return 1;
    }

    /* allocate: even blocks through the linked names, odd ones through
     * cuGetProcAddress's */
    struct notes an = {0};
    int min_tz = 64;
    for (int i = 0; i < NBLOCKS; i++) {
        blk[i].size = block_size[i];
        const struct api *x = &api[i % ROUTES];
        rc = x->alloc(&blk[i].p, blk[i].size);
        printf("alloc %zu B via %s: %s 0x%llx\n", blk[i].size, x->name, cu_name(rc),
               (unsigned long long)blk[i].p);
        if (rc != CUDA_SUCCESS || !blk[i].p) {
            note(&an, "%zu B via %s: %s", blk[i].size, x->name, cu_name(rc));
            blk[i].p = 0;
            continue;
        }
        int tz = __builtin_ctzll((unsigned long long)blk[i].p);
        if (tz < min_tz)
            min_tz = tz;
    }
    if (an.n) {
        row_notes("pv_alloc", &an, "allocations");
        for (int i = 0; i < NBLOCKS; i++)
            if (blk[i].p)
                cuMemFree(blk[i].p);
        return 1;
    }
    /* 256 bytes: what cudaMalloc promises */
    struct notes al = {0};
    for (int i = 0; i < NBLOCKS; i++)
        if (blk[i].p % 256)
            note(&al, "%zu B block at 0x%llx", blk[i].size, (unsigned long long)blk[i].p);
    row_notes("pv_alignment", &al, "every block at least 256-byte aligned (lowest: %llu)",
              1ull << min_tz);
    printf("DRV|align_min_log2|%d\n", min_tz);
    struct notes dj = {0};
    for (int i = 0; i < NBLOCKS; i++)
        for (int j = 0; j < i; j++)
            if (blk[i].p < blk[j].p + blk[j].size && blk[j].p < blk[i].p + blk[i].size)
                note(&dj, "#%d (%zu B at 0x%llx) overlaps #%d (%zu B at 0x%llx)", i, blk[i].size,
                     (unsigned long long)blk[i].p, j, blk[j].size, (unsigned long long)blk[j].p);
    int same = 0; /* blocks sharing a 2 MiB page with another: carved from one chunk */
    for (int i = 0; i < NBLOCKS; i++)
        for (int j = 0; j < NBLOCKS; j++)
            if (i != j && blk[i].p >> 21 == blk[j].p >> 21) {
                same++;
                break;
            }
    row_notes("pv_disjoint", &dj, "%d blocks, none overlapping; %d of them share a 2 MiB page "
              "with another", NBLOCKS, same);

    check_ranges();
    check_attributes();
    check_ids_unique(0, NULL, CUDA_SUCCESS);
    check_ipc();
    check_data();
    driver_sizes();
    driver_info();

    /* a freed block, then a new one of its size after a sync */
    CUdeviceptr gone = blk[FREED].p;
    size_t gone_size = blk[FREED].size;
    CUresult fr = api[FREED % ROUTES].free(gone);
    blk[FREED].p = 0;
    check_freed(gone, gone_size);
    /* the neighbours are untouched by the free */
    struct notes nb = {0};
    for (int i = 0; i < NBLOCKS; i++) {
        if (!blk[i].p)
            continue;
        CUdeviceptr base = 0;
        size_t sz = 0;
        CUresult rr = cuMemGetAddressRange(&base, &sz, blk[i].p);
        if (rr != CUDA_SUCCESS || base != blk[i].p || sz < blk[i].size ||
            (pooled(blk[i].size) && sz != blk[i].size))
            note(&nb, "%zu B block #%d: %s base %+lld size %zu", blk[i].size, i, cu_name(rr),
                 (long long)(base - blk[i].p), sz);
    }
    CUresult sy = cuCtxSynchronize();
    CUdeviceptr again = 0;
    CUresult ra = cuMemAlloc(&again, gone_size);
    unsigned long long id = 0;
    if (ra == CUDA_SUCCESS)
        cuPointerGetAttribute(&id, CU_POINTER_ATTRIBUTE_BUFFER_ID, again);
    printf("after cuCtxSynchronize (%s): cuMemAlloc(%zu) %s at 0x%llx (%s the freed address), "
           "BUFFER_ID 0x%llx\n",
           cu_name(sy), gone_size, cu_name(ra), (unsigned long long)again,
           again == gone ? "reusing" : "not", id);
    row_notes("pv_neighbours_after_free", &nb,
              "free %s; the other %d blocks' ranges unchanged; then cuCtxSynchronize %s and "
              "cuMemAlloc(%zu) %s, %s the freed address",
              cu_name(fr), NBLOCKS - 1, cu_name(sy), gone_size, cu_name(ra),
              again == gone ? "reusing" : "not reusing");
    blk[FREED].p = again;
    if (ra == CUDA_SUCCESS && id == 0)
        ra = CUDA_ERROR_INVALID_VALUE; /* no BUFFER_ID: shown as a failure */
    check_ids_unique(id, "the new allocation after the free and sync", ra);

    /* everything back */
    struct notes fn = {0};
    for (int i = 0; i < NBLOCKS; i++) {
        if (!blk[i].p)
            continue;
        CUresult r = api[(i + 1) % ROUTES].free(blk[i].p);
        if (r != CUDA_SUCCESS)
            note(&fn, "%zu B block #%d: %s", blk[i].size, i, cu_name(r));
    }
    sy = cuCtxSynchronize();
    size_t fb = 0, tb = 0;
    cuMemGetInfo(&fb, &tb);
    row_notes("pv_frees", &fn,
              "every block freed (through the other route than it was allocated by), then "
              "cuCtxSynchronize %s; cuMemGetInfo free %.3f GiB of %.3f",
              cu_name(sy), gpu_gib(fb), gpu_gib(tb));
    return gpu_failures ? 1 : 0;
}
