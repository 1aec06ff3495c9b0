/*
 * account.c — charging allocations intercepted in an unmodified process.
 *
 * The shim calls in here around each driver allocation: reserve before,
 * commit or cancel after, release on free. The reservation is a
 * compare-and-swap on the device budget (budget.c), so racing threads can
 * never push use past the limit, and a refused request charges nothing.
 * Stream-ordered pools are charged by what they reserve, which is what the
 * card really gives up (a pool keeps freed memory until trimmed):
 * account_streams.c.
 *
 * Hot path (plain alloc/free): engine-ready check, plain loads and stores
 * on this thread's own credit cell (credit.c; the budget's shared line
 * only once per slice), one ledger insert or remove (one spinlock, on the
 * shard of the thread that allocates there). No syscalls, no getenv, no
 * locks held across driver calls. Refusal messages and pool bookkeeping
 * are out of line.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vg_account.h"
#include "vg_audit.h"
#include "vg_shared.h"

#define REFUSAL_LOG_INTERVAL_NS 1000000000ull /* at most one line a second */

static _Atomic uint64_t last_refusal_log_ns;
static _Atomic uint64_t refusals_unlogged;

__attribute__((noinline, cold)) static void log_refusal(const vg__ticket_t *t,
                                                        const vg__budget_t *b)
{
    uint64_t now = vg__mono_ns();
    uint64_t last = atomic_load_explicit(&last_refusal_log_ns, memory_order_relaxed);
    if (last && now - last < REFUSAL_LOG_INTERVAL_NS) {
        atomic_fetch_add_explicit(&refusals_unlogged, 1, memory_order_relaxed);
        return;
    }
    if (!atomic_compare_exchange_strong_explicit(&last_refusal_log_ns, &last, now,
                                                 memory_order_relaxed, memory_order_relaxed))
        return; /* another thread is logging this second */
    uint64_t quiet = atomic_exchange_explicit(&refusals_unlogged, 0, memory_order_relaxed);
    char req[32], used[32], lim[32];
    vg__log("refused %s of %s on device %d: %s of the %s budget in use "
            "(CUDA_ERROR_OUT_OF_MEMORY)%s",
            t->api, vg__fmt_bytes(t->bytes, req, sizeof req), t->device,
            vg__fmt_bytes(vg__budget_used(b), used, sizeof used),
            vg__fmt_bytes(atomic_load_explicit(&b->limit, memory_order_relaxed), lim, sizeof lim),
            quiet ? " (more refusals since the last line)" : "");
}

__attribute__((noinline, cold)) static int refuse_closed(void)
{
    static _Atomic int said;
    if (!atomic_exchange_explicit(&said, 1, memory_order_relaxed))
        vg__log("%s; refusing every device allocation (fail closed)",
                vg__engine_error());
    return VG_ESETTING;
}

/* Applies VRAMGUARD_MANAGED to a managed request. */
static int managed_policy(vg__ticket_t *t)
{
    switch (vg__engine_settings()->managed) {
    case VG__MANAGED_IGNORE:
        t->bytes = 0;
        return VG_OK;
    case VG__MANAGED_DENY:
        vg__log("refused %s: VRAMGUARD_MANAGED=deny", t->api);
        vg__audit_refuse(t, VG_EDENIED);
        return VG_EDENIED;
    default:
        return VG_OK;
    }
}

/* A reservation that did not fit: give back what is ours to give, learn
 * the truth, and refuse only then. */
__attribute__((noinline, cold)) static int reserve_slow(vg__ticket_t *t, vg__budget_t *b)
{
    /* Cached pool memory is ours to give back before we say no. */
    if (vg__acct_pool_trim(t->device) && vg__budget_reserve(b, t->bytes) == VG_OK)
        return VG_OK;
    if (vg__cache_mode_on() && !t->pool_spent) {
        while (vg__acct_pooled_trim(t->device))
            if (vg__budget_reserve(b, t->bytes) == VG_OK)
                return VG_OK;
    }
    /* The truth before a refusal: memory no call shows may have shrunk (a
     * destroyed context, an unloaded module). At most once a millisecond,
     * so a program spinning on refusals does not spin on NVML. */
    if (vg__overhead_refresh(t->device, VG__REFRESH_SOON) &&
        vg__budget_reserve(b, t->bytes) == VG_OK)
        return VG_OK;
    log_refusal(t, b);
    vg__audit_refuse(t, VG_ENOMEM);
    return VG_ENOMEM;
}

int vg__acct_reserve_slow(vg__ticket_t *t)
{
    if (vg__unlikely(vg__engine_init() != VG_OK))
        return refuse_closed();
    if (vg__unlikely(t->kind == VG_KIND_MANAGED)) {
        int rc = managed_policy(t);
        if (rc != VG_OK)
            return rc;
    }
    vg__budget_t *b = vg__engine_budget(t->device);
    if (vg__unlikely(!b))
        return VG_EINVAL;
    t->budget = b;
    if (vg__unlikely(vg__acct_implicit_pending(t->device)))
        vg__acct_implicit_settle(t->device); /* context, lazy loads: charge first */
    /* This thread's credit first, then a new slice of it, then the budget
     * (credit.c): the first two touch no line other threads write. */
    if (vg__likely(vg__credit_take(t->device, t->bytes)) ||
        vg__credit_refill(b, t->device, t->bytes)) {
        t->credit = true;
        return VG_OK;
    }
    if (vg__unlikely(t->bytes == 0))
        return VG_OK; /* nothing charged (host memory, an array that holds none):
                       * it cannot take the device over, even one already over.
                       * Here, past the credit, it costs the common path nothing */
    if (vg__likely(vg__budget_reserve(b, t->bytes) == VG_OK))
        return VG_OK;
    return reserve_slow(t, b);
}
int vg__acct_resize(vg__ticket_t *t, uint64_t bytes)
{
    vg__budget_t *b = t->budget;
    if (bytes > t->bytes) {
        uint64_t more = bytes - t->bytes;
        if (vg__budget_reserve(b, more) != VG_OK) {
            vg__ticket_t grown = *t;
            grown.bytes = bytes;
            log_refusal(&grown, b);
            vg__audit_refuse(&grown, VG_ENOMEM);
            return VG_ENOMEM;
        }
    } else {
        vg__budget_rollback(b, t->bytes - bytes);
    }
    t->bytes = bytes;
    return VG_OK;
}

/* An insert failed. A duplicate: the driver handed out an address we
 * still hold (the old allocation was freed behind our back, with its
 * context), so its charge goes and the new record takes its place; the
 * insert is tried again even when the old one has gone meanwhile (a
 * context's sweep may take it between the two). VG_ESYS: no host memory
 * for the record. */
__attribute__((noinline, cold)) static int insert_failed(const vg__alloc_t *a, int rc)
{
    if (rc == VG_ESYS)
        return VG_ESYS;
    vg__alloc_t old;
    if (vg__ledger_remove(a->ptr, VG__ANY_OWNER, &old) == VG_OK)
        vg__acct_uncharge(&old); /* as its free would have */
    return vg__ledger_insert(a) == VG_OK ? VG_OK : VG_ESYS;
}

VG__HOT int vg__acct_record(const vg__ticket_t *t, vg__alloc_t *a)
{
    a->seq = vg__ledger_next_seq();
    a->tid = vg__tid();
    a->device = (int16_t)t->device;
    a->kind = (uint8_t)t->kind;
    if (vg__unlikely(vg__diag_on())) /* audit log, call sites, checks */
        vg__diag_commit(t, a);
    /* The pair's common case, a plain allocation, stays in the thread's
     * front until the thread allocates again (ledger_front.c). Told by one
     * test of the or-ed fields: four branches were laid out apart. */
    bool plain = ((uint64_t)(t->kind ^ VG_KIND_PLAIN) | (uintptr_t)a->owner | a->handle |
                  a->pooled) == 0;
    int rc = vg__likely(plain) ? vg__ledger_insert_front(a) : vg__ledger_insert(a);
    return vg__likely(rc == VG_OK) ? VG_OK : insert_failed(a, rc);
}

__attribute__((cold)) void vg__acct_unrecorded(vg__ticket_t *t, uint64_t key, uint64_t size)
{
    vg__alloc_t a = {.ptr = key, .base = key, .size = size, .charged = t->bytes,
                     .device = (int16_t)t->device, .kind = (uint8_t)t->kind};
    char sz[32];
    vg__log("refused %s of %s on device %d: no host memory to record it "
            "(CUDA_ERROR_OUT_OF_MEMORY)", t->api, vg__fmt_bytes(size, sz, sizeof sz), t->device);
    if (vg__diag_on())
        vg__audit_free(&a, t->api, CUDA_SUCCESS); /* its alloc line is written */
    vg__acct_uncharge(&a); /* what vg__acct_commit charged */
    t->bytes = 0;
}

VG__HOT int vg__acct_commit(vg__ticket_t *t, uint64_t key, uint64_t size, uint64_t pool)
{
    /* Credit moved peak and level when it was taken, and a budget with
     * credit is never shared (engine.c): its line need not be read. */
    if (!t->credit) {
        vg__budget_commit(t->budget, t->bytes);
        if (vg__unlikely(t->budget->shared))
            vg__shared_live(t->budget, 1); /* for `vramguard status` */
    }
    vg__alloc_t a = {
        .ptr = key,
        .base = key,
        .size = size,
        .charged = t->bytes,
        .handle = pool,
    };
    return vg__acct_record(t, &a);
}

void vg__acct_cancel(vg__ticket_t *t)
{
    vg__budget_rollback(t->budget, t->bytes);
    t->bytes = 0;
}

void vg__acct_uncharge_slow(const vg__alloc_t *a)
{
    if (vg__unlikely(a->pooled))
        return;
    if (vg__unlikely(a->handle))
        vg__acct_pool_block_freed(a); /* or an array's context: it checks */
    /* Up to a slice becomes this thread's credit (credit.c); a credit's
     * bytes are bytes of `used`, whichever thread charged them. */
    if (vg__likely(vg__credit_give(a->device, a->charged)))
        return;
    vg__budget_t *b = vg__engine_budget(a->device);
    if (a->charged) /* a stream-ordered block's pool carries its charge */
        vg__budget_release(b, a->charged);
    if (vg__unlikely(b->shared))
        vg__shared_live(b, -1);
}

int vg__acct_release(uint64_t key, vg__alloc_t *out)
{
    vg__alloc_t a;
    if (vg__acct_take(key, &a) != VG_OK)
        return VG_ENOTFOUND;
    vg__acct_uncharge(&a);
    if (out)
        *out = a;
    return VG_OK;
}

void vg__acct_restore(const vg__alloc_t *a)
{
    /* The charge was never given back. If the record cannot go back (its
     * shard's free list empty and no host memory for a slab) the memory
     * stays charged, unrecorded: the driver still holds it. */
    vg__ledger_insert(a);
}

void vg__acct_release_freed(uint64_t key, const char *api)
{
    vg__alloc_t a;
    if (vg__acct_release(key, &a) == VG_OK)
        vg__audit_free(&a, api, CUDA_SUCCESS);
}

void vg__acct_release_swept(uint64_t key, uint64_t seq, const char *api)
{
    vg__alloc_t a;
    if (vg__ledger_remove_seq(key, seq, &a) != VG_OK)
        return; /* freed meanwhile, or the address holds a new allocation */
    if (vg__unlikely(a.pooled))
        vg__acct_pooled_free(&a);
    vg__acct_uncharge(&a);
    vg__audit_free(&a, api, CUDA_SUCCESS);
}

/* The free path's rare ends (vg__acct_free_begin and _end, inline in the
 * hooks, handle the common case): a failed driver free, the audit log, a
 * key that was not ours. */
void vg__acct_free_settle(vg__free_t *f, CUresult cr)
{
    switch (f->state) {
    case VG__FREE_OURS:
        if (cr != CUDA_SUCCESS)
            vg__acct_restore(&f->a);
        vg__audit_free(&f->a, f->api, cr);
        break;
    case VG__FREE_POOLED:
        vg__audit_free(&f->a, f->api, CUDA_SUCCESS);
        break;
    case VG__FREE_GRAPH: /* the record stays either way */
        vg__audit_free(&f->a, f->api, cr);
        break;
    case VG__FREE_BAD:
        vg__badptr_end(f, cr);
        break;
    default:
        break;
    }
}

void vg__acct_meminfo(int device, uint64_t *free_bytes, uint64_t *total_bytes)
{
    if (vg__unlikely(vg__engine_init() != VG_OK)) {
        *free_bytes = 0; /* fail closed: nothing is available */
        return;
    }
    const vg__budget_t *b = vg__engine_budget(device);
    if (!b)
        return;
    /* Pools shrink at synchronisation points the shim never sees (and on
     * the program's own cuMemPoolTrimTo): bring their charges up to date
     * before saying what is free. */
    vg__acct_pools_sync_device(device);
    /* What the process sees includes the memory no call shows (its
     * context), from the first query on, not only after an allocation.
     * Measured at most once a second; nothing without a budget. */
    vg__overhead_refresh(device, VG__REFRESH_RATE_LIMITED);
    uint64_t limit, used;
    vg__budget_read(b, &limit, &used); /* a shared budget's, fresh */
    if (limit == VG__UNLIMITED)
        return;
    uint64_t total = limit < *total_bytes ? limit : *total_bytes;
    uint64_t free_b = used >= total ? 0 : total - used;
    *free_bytes = free_b < *free_bytes ? free_b : *free_bytes;
    *total_bytes = total;
}

/* ------------------------------------------------- overhead and stats */

static _Atomic uint64_t overhead[VG__MAX_DEVICES];

void vg__acct_overhead_set(int device, uint64_t bytes)
{
    vg__budget_t *b = vg__engine_budget(device);
    if (!b)
        return;
    uint64_t old = atomic_exchange_explicit(&overhead[device], bytes, memory_order_relaxed);
    if (bytes > old)
        vg__budget_force(b, bytes - old);
    else if (old > bytes)
        vg__budget_release(b, old - bytes);
    if (b->shared) /* implicit use, as `vramguard status` shows it */
        vg__shared_overhead(b, bytes + vg__acct_limits_charged(device));
}

uint64_t vg__acct_overhead(int device)
{
    if (device < 0 || device >= VG__MAX_DEVICES)
        return 0;
    return atomic_load_explicit(&overhead[device], memory_order_relaxed);
}

struct kind_tally {
    int device;
    vg_device_stats_t *s;
};

static void tally(const vg__alloc_t *a, void *ctx)
{
    struct kind_tally *t = ctx;
    if (a->device != t->device || a->kind >= VG_KIND_COUNT)
        return;
    t->s->live_count++;
    t->s->count_by_kind[a->kind]++;
    t->s->bytes_by_kind[a->kind] += a->size;
}

int vg_device_stats(int device, vg_device_stats_t *stats)
{
    if (!stats || device < 0 || device >= VG__MAX_DEVICES)
        return VG_EINVAL;
    const vg__budget_t *b = vg__engine_budget(device);
    vg_device_stats_t s = {0};
    s.budget = atomic_load_explicit(&b->limit, memory_order_relaxed);
    s.used = vg__budget_used(b); /* real use: unspent credit is not */
    s.peak = atomic_load_explicit(&b->peak, memory_order_relaxed);
    s.refusals = atomic_load_explicit(&b->refusals, memory_order_relaxed);
    s.overhead = vg__acct_overhead(device) + vg__acct_limits_charged(device);
    struct kind_tally t = {device, &s};
    vg__ledger_foreach(VG__ANY_OWNER, tally, &t);
    *stats = s;
    return VG_OK;
}
