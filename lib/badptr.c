/*
 * badptr.c — pointers handed back to the driver that vramguard never handed
 * out (VRAMGUARD_ON_BAD_POINTER), the optional check of what the driver
 * hands out (VRAMGUARD_VERIFY) and vg_verify_all(). Rare paths only: a free
 * of a live allocation never comes here.
 *
 * What each policy does with a free of a key the ledger does not hold:
 *
 *   class                      warn          reject              abort
 *   interior, freed, host,     driver's code CUDA_ERROR_INVALID_ report and
 *   fake                                     VALUE, no driver    abort()
 *   unknown array handle                                         (as pointers)
 *   foreign (real memory we    driver's code driver's code       abort() if the
 *   did not see), unknown                                        driver refused
 *   VMM handle                                                   it too
 *
 * Memory that may be real goes to the driver under every policy, so a real
 * allocation is always really freed: foreign pointers (IPC or pool imports,
 * memory from before the engine started) and VMM handles we never saw
 * (memory located on the host, which is passed through uncharged, and
 * handles from cuMemRetainAllocationHandle). Such a handle is judged only
 * by the driver's answer: one it frees is no event at all. Array handles
 * are different: every way to create an array is hooked, so one we never
 * saw is not real, and it must not reach the driver under reject: driver
 * 580 on an H100 (2026-11-22) crashes with SIGSEGV in cuArrayDestroy of a
 * made-up handle. NULL is a legal free and never an event.
 */
#include <execinfo.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vg_audit.h"
#include "vg_pool.h"

#define LINE_INTERVAL_NS 1000000000ull /* one line a second after each class's first */
#define CLASS_HANDLE VG_PTR_CLASS_COUNT /* the "handle" row of said[] */

static _Atomic uint64_t last_line_ns;
static _Atomic uint64_t lines_quiet;
static _Atomic uint8_t said[VG_PTR_CLASS_COUNT + 1];

static vg__bad_ptr_policy_t policy(void) { return vg__engine_settings()->on_bad_pointer; }

/* The first line of each class is always written; after it, at most one a
 * second. Out: *quiet, the lines left unsaid since the last one. */
static bool line_allowed(int cls, uint64_t *quiet)
{
    uint64_t now = vg__mono_ns();
    uint64_t last = atomic_load_explicit(&last_line_ns, memory_order_relaxed);
    bool first = !atomic_exchange_explicit(&said[cls], 1, memory_order_relaxed);
    if (!first && last && now - last < LINE_INTERVAL_NS) {
        atomic_fetch_add_explicit(&lines_quiet, 1, memory_order_relaxed);
        return false;
    }
    atomic_store_explicit(&last_line_ns, now, memory_order_relaxed);
    *quiet = atomic_exchange_explicit(&lines_quiet, 0, memory_order_relaxed);
    return true;
}

/* What the audit log says of f: its class, or NULL ("handle") for a handle,
 * which is not an address and was never classified. */
static const vg_ptr_info_t *bad_info(const vg__free_t *f)
{
    return (f->key & VG__KEY_HANDLE) ? NULL : &f->bad;
}

/* "fake (synthetic stride ...)", "interior (offset 0x100 into 0x... of
 * 64.00 MiB)", "unknown handle" ... */
static void describe(const vg__free_t *f, char *buf, size_t len)
{
    const vg_ptr_info_t *i = &f->bad;
    char size[32];
    if (f->key & VG__KEY_HANDLE) {
        snprintf(buf, len, "unknown handle");
        return;
    }
    switch (i->cls) {
    case VG_PTR_INTERIOR:
        snprintf(buf, len, "interior (offset 0x%" PRIx64 " into 0x%" PRIx64 ", %s)", i->offset,
                 i->base, vg__fmt_bytes(i->size, size, sizeof size));
        break;
    case VG_PTR_FREED:
        snprintf(buf, len, "freed (a double free of 0x%" PRIx64 ", %s)", i->base,
                 vg__fmt_bytes(i->size, size, sizeof size));
        break;
    case VG_PTR_FOREIGN:
        snprintf(buf, len, "foreign (device memory vramguard did not allocate)");
        break;
    case VG_PTR_HOST:
        snprintf(buf, len, "host (ordinary host memory, not device memory)");
        break;
    case VG_PTR_LIVE: /* live, and not the shim's: a vg_pool's */
        snprintf(buf, len, "live in a vramguard pool (vg_pool_free frees it)");
        break;
    default:
        snprintf(buf, len, "fake (unknown to the driver%s%s)", i->pattern[0] ? ": " : "",
                 i->pattern);
        break;
    }
}

/* One stderr line: what was freed, what it is, what happened. */
static void say(const vg__free_t *f, const char *outcome)
{
    uint64_t quiet = 0;
    int cls = (f->key & VG__KEY_HANDLE) ? CLASS_HANDLE : (int)f->bad.cls;
    if (!line_allowed(cls, &quiet))
        return;
    char what[160];
    describe(f, what, sizeof what);
    vg__log("bad pointer: %s(0x%" PRIx64 "): %s; %s%s", f->api, (uint64_t)(f->key & ~VG__KEY_HANDLE), what,
            outcome, quiet ? " (more bad pointers since the last line)" : "");
}

__attribute__((noreturn)) static void abort_with_report(const vg__free_t *f, const CUresult *rc)
{
    char what[160];
    describe(f, what, sizeof what);
    vg__log("bad pointer: %s(0x%" PRIx64 "): %s; VRAMGUARD_ON_BAD_POINTER=abort%s%s, call site:",
            f->api, (uint64_t)(f->key & ~VG__KEY_HANDLE), what, rc ? ", the driver answered " : "",
            rc ? vg__cu_name(*rc) : "");
    void *frames[64];
    int n = backtrace(frames, 64);
    backtrace_symbols_fd(frames, n, STDERR_FILENO); /* no malloc */
    /* The log's rc is what the program got, and it gets nothing: the
     * driver's answer, when there was one, is in the stderr report. */
    vg__audit_bad_ptr(f->api, f->key, bad_info(f), VG__BADPTR_ABORT, NULL);
    vg__audit_flush_all();
    abort();
}

/* A VMM handle (cuMemRelease): one we never saw may be real. */
static bool vmm_handle(const vg__free_t *f)
{
    return (f->key & VG__KEY_HANDLE) && strcmp(f->api, "cuMemRelease") == 0;
}

/* Keys that may be real memory we never saw: judged after the driver. */
static bool maybe_real(const vg__free_t *f)
{
    return vmm_handle(f) || (!(f->key & VG__KEY_HANDLE) && f->bad.cls == VG_PTR_FOREIGN);
}

int vg__badptr_begin(vg__free_t *f)
{
    /* NULL, as a pointer or as a handle (cuArrayDestroy(NULL),
     * cuMemRelease(0)): never an event; the driver answers. */
    if ((f->key & ~VG__KEY_HANDLE) == 0) {
        f->state = VG__FREE_PASS;
        return VG_OK;
    }
    f->state = VG__FREE_BAD;
    memset(&f->bad, 0, sizeof f->bad);
    if (!(f->key & VG__KEY_HANDLE)) /* handles are not addresses: no class */
        vg__ptr_classify(f->key, &f->bad);
    if (!(f->key & VG__KEY_HANDLE) && f->bad.cls == VG_PTR_LIVE &&
        vg__acct_take(f->key, &f->a) == VG_OK) { /* recorded meanwhile */
        f->state = f->a.pooled ? VG__FREE_POOLED : VG__FREE_OURS;
        return VG_OK;
    }
    /* A pool's memory is never handed to the driver's free, whatever the
     * policy: a chunk would take its other blocks along, and a pool's own
     * allocation would stay in the pool's books, to be freed again. */
    vg__chunk_ref_t chunk;
    bool in_chunk = !(f->key & VG__KEY_HANDLE) &&
                    (f->bad.cls == VG_PTR_LIVE || vg__chunk_index_find(f->key, &chunk));
    vg__bad_ptr_policy_t p = policy();
    if (!in_chunk && (maybe_real(f) || p == VG__BADPTR_WARN))
        return VG_OK;
    if (p == VG__BADPTR_ABORT)
        abort_with_report(f, NULL);
    CUresult rc = CUDA_ERROR_INVALID_VALUE;
    vg__audit_bad_ptr(f->api, f->key, bad_info(f), p, &rc);
    say(f, in_chunk && p == VG__BADPTR_WARN
               ? "refused with CUDA_ERROR_INVALID_VALUE: a pool's memory, never passed "
                 "to the driver"
               : "refused with CUDA_ERROR_INVALID_VALUE, the driver not called (reject)");
    return VG_ENOTFOUND;
}

void vg__badptr_end(const vg__free_t *f, CUresult cr)
{
    if (vmm_handle(f) && cr == CUDA_SUCCESS)
        return; /* real memory made where we did not look */
    vg__bad_ptr_policy_t p = policy();
    if (p == VG__BADPTR_ABORT && (cr != CUDA_SUCCESS || !maybe_real(f)))
        abort_with_report(f, &cr);
    vg__audit_bad_ptr(f->api, f->key, bad_info(f), p, &cr);
    char outcome[160];
    snprintf(outcome, sizeof outcome, "passed to the driver (%s), which answered %s",
             maybe_real(f) ? "real memory is always passed on" : vg__audit_policy_word(p),
             vg__cu_name(cr));
    say(f, outcome);
}

/* ------------------------------------------------ allocation checks */

/* The driver knows [ptr, ptr + size) as device (or managed) memory. */
static bool device_range_ok(const vg__driver_t *d, vg_devptr_t ptr, uint64_t size)
{
    unsigned int type = 0;
    CUdeviceptr base = 0;
    size_t range = 0;
    if (d->cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, (CUdeviceptr)ptr) !=
            CUDA_SUCCESS ||
        (type != CU_MEMORYTYPE_DEVICE && type != CU_MEMORYTYPE_UNIFIED))
        return false;
    if (d->cuMemGetAddressRange_v2(&base, &range, (CUdeviceptr)ptr) != CUDA_SUCCESS)
        return false;
    return base <= ptr && ptr - base <= range && size <= range - (ptr - base);
}

/* Handles are not addresses; graph memory is mapped only when its graph
 * runs (its record's handle is the graph, a VG__KEY_HANDLE key). */
static bool checkable(const vg__alloc_t *a)
{
    return !(a->ptr & VG__KEY_HANDLE) && !(a->handle & VG__KEY_HANDLE);
}

void vg__badptr_verify(const vg__ticket_t *t, const vg__alloc_t *a)
{
    const vg__driver_t *d = vg__driver();
    if (!d || !checkable(a) || device_range_ok(d, a->ptr, a->size))
        return;
    vg__free_t f = {.key = a->ptr, .api = t->api, .state = VG__FREE_BAD};
    vg__ptr_classify(a->ptr, &f.bad);
    if (policy() == VG__BADPTR_ABORT)
        abort_with_report(&f, NULL);
    CUresult ok = CUDA_SUCCESS;
    vg__audit_bad_ptr(t->api, a->ptr, &f.bad, policy(), &ok);
    char size[32];
    vg__log("%s returned 0x%" PRIx64 ", which the driver does not confirm as %s of device "
            "memory (%s); recorded anyway (VRAMGUARD_VERIFY)",
            t->api, a->ptr, vg__fmt_bytes(a->size, size, sizeof size),
            vg_ptr_class_name(f.bad.cls));
}

/* ------------------------------------------------- vg_verify_all */

typedef struct verify_ctx {
    const vg__driver_t *d;
    vg_verify_report_t *r;
    bool ctx_made;  /* we made a primary context current */
    CUdevice ctx_dev;
} verify_ctx_t;

/* Under unified addressing any context answers for any address; without
 * a current one, the record's device's primary context is borrowed. */
static void ensure_context(verify_ctx_t *c, int device)
{
    CUcontext cur = NULL;
    if (c->ctx_made || (c->d->cuCtxGetCurrent(&cur) == CUDA_SUCCESS && cur))
        return;
    CUdevice dev;
    CUcontext ctx;
    if (c->d->cuDeviceGet(&dev, device) == CUDA_SUCCESS &&
        c->d->cuDevicePrimaryCtxRetain(&ctx, dev) == CUDA_SUCCESS) {
        c->d->cuCtxSetCurrent(ctx);
        c->ctx_made = true;
        c->ctx_dev = dev;
    }
}

static void verify_one(const vg__alloc_t *a, void *ctx)
{
    verify_ctx_t *c = ctx;
    if (!checkable(a)) {
        c->r->skipped++;
        return;
    }
    ensure_context(c, a->device);
    c->r->checked++;
    if (device_range_ok(c->d, a->ptr, a->size))
        return;
    if (c->r->shown < VG_VERIFY_SHOW)
        c->r->ptrs[c->r->shown++] = a->ptr;
    c->r->bad++;
}

int vg_verify_all(vg_verify_report_t *out)
{
    if (!out)
        return VG_EINVAL;
    memset(out, 0, sizeof *out);
    (void)vg__engine_init();
    const vg__driver_t *d = vg__driver();
    if (!d)
        return VG_ENODRIVER;
    verify_ctx_t c = {.d = d, .r = out};
    vg__ledger_foreach(VG__ANY_OWNER, verify_one, &c);
    if (c.ctx_made) {
        d->cuCtxSetCurrent(NULL);
        d->cuDevicePrimaryCtxRelease_v2(c.ctx_dev);
    }
    return out->bad ? VG_EBADPTR : VG_OK;
}
