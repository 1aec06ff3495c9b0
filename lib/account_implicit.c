/*
 * account_implicit.c — memory the driver takes without an allocation call:
 * the context, module and library images with their __device__ globals,
 * the device malloc heap, per-thread stacks, the printf FIFO.
 *
 * The truth is NVML's figure for this process (account_overhead.c: what
 * NVML counts minus what the calls showed). This file decides when to ask:
 *
 * - A device's first allocation charges its context before any thread's
 *   allocation can succeed: the first thread measures under a per-device
 *   lock, the others wait on it (16 racing threads otherwise all allocated
 *   before the context was charged).
 * - Calls that make the driver take memory are measured as they return
 *   (context creation, module and library loads) and undone with
 *   CUDA_ERROR_OUT_OF_MEMORY when what they took does not fit.
 * - cuCtxSetLimit is charged before the driver is asked, from what the
 *   limit will cost (heap and FIFO: their size; stacks: size x SMs x
 *   resident threads per SM), because the driver may take it only at the
 *   next launch, when nothing can be refused any more.
 * - The first launch of a kernel may load code lazily, so it marks every
 *   device "pending" and the next allocation measures first. A launch
 *   costs a lookup in a lock-free set of functions seen (a hash and one or
 *   two loads); an allocation one load and a predictable branch.
 * - The figure only falls after something that gives implicit memory back
 *   (a context, module or library going): a measurement taken while other
 *   threads' reservations are not yet in the driver reads low.
 * - Context destruction and primary-context reset free everything the
 *   context held: the records of memory the driver no longer knows are
 *   dropped and their charges given back.
 *
 * Without NVML (or where it does not list this process: older drivers
 * gave a process in a PID namespace host pids; 580 gives its own) the
 * call-level ledger stands alone; that is said once.
 */
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "vg_account.h"
#include "vg_audit.h"
#include "vg_fork.h"

#define FIRST_TRIES 20       /* NVML may list a new process a little late */
#define FIRST_WAIT_NS 1000000 /* between tries: 1 ms */


/* Bit d: memory no call shows may have shrunk on device d (a context,
 * module or library went) since its last measurement, which may then
 * lower the figure. */
static _Atomic uint64_t shrunk;

static _Atomic uint8_t ctx_measured[VG__MAX_DEVICES];
static pthread_mutex_t first_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int truth_missing; /* NVML absent or not listing us */

/* A fork during a device's first use waits for it to finish, so the child
 * never finds the lock held (fork.c, rank IMPLICIT_FIRST). */
void vg__account_implicit_prefork(void) { pthread_mutex_lock(&first_lock); }
void vg__account_implicit_postfork_parent(void) { pthread_mutex_unlock(&first_lock); }
void vg__account_implicit_postfork_child(void) { pthread_mutex_unlock(&first_lock); }

static void pending_clear(int device)
{
    atomic_fetch_and_explicit(&vg__hot.implicit_pending, ~(1ull << (device & 63)),
                              memory_order_acq_rel);
}

static void pending_set(int device)
{
    atomic_fetch_or_explicit(&vg__hot.implicit_pending, 1ull << (device & 63),
                             memory_order_acq_rel);
}

static bool budgeted(int device)
{
    vg__budget_t *b = vg__engine_budget(device);
    return b && atomic_load_explicit(&b->limit, memory_order_relaxed) != VG__UNLIMITED;
}

__attribute__((noinline, cold)) static void say_missing(int device)
{
    if (!atomic_exchange_explicit(&truth_missing, 1, memory_order_relaxed))
        vg__log("NVML does not list this process on device %d (a driver that lists host "
                "pids, in a PID namespace?): memory no call shows is not charged; the budget "
                "counts calls only",
                device);
}

/* The first measurement of a device: its context. Waits for NVML to list
 * the process (it may lag the context by a few ms). */
static void measure_context(int device)
{
    struct timespec wait = {0, FIRST_WAIT_NS};
    if (!vg__overhead_available())
        return;
    for (int i = 0; i < FIRST_TRIES; i++) {
        if (vg__overhead_refresh(device, VG__REFRESH_NOW))
            return;
        nanosleep(&wait, NULL);
    }
    say_missing(device);
}

__attribute__((noinline, cold)) static void first_use(int device)
{
    vg__mutex_lock(&first_lock, VG__RANK_IMPLICIT_FIRST);
    if (!atomic_load_explicit(&ctx_measured[device], memory_order_acquire)) {
        if (budgeted(device))
            measure_context(device);
        atomic_store_explicit(&ctx_measured[device], 1, memory_order_release);
        pending_clear(device);
    }
    vg__mutex_unlock(&first_lock, VG__RANK_IMPLICIT_FIRST);
}

void vg__acct_implicit_settle(int device)
{
    if (device < 0 || device >= VG__MAX_DEVICES)
        return;
    if (vg__unlikely(!atomic_load_explicit(&ctx_measured[device], memory_order_acquire))) {
        first_use(device);
        return;
    }
    if (!budgeted(device) || atomic_load_explicit(&truth_missing, memory_order_relaxed) ||
        !vg__overhead_available()) {
        pending_clear(device);
        return;
    }
    /* Cleared before measuring: a launch that ends after this point sets
     * the bit again, so its growth is never lost. Not rate-limited: a
     * lazily loaded module can take its memory in the microseconds between
     * a launch and the next allocation, and only first launches of a
     * function set the bit. */
    pending_clear(device);
    vg__overhead_refresh(device, VG__REFRESH_NOW);
}

/* Marks every device pending (one load when already marked). */
static void launched(void)
{
    if (atomic_load_explicit(&vg__hot.implicit_pending, memory_order_relaxed) != UINT64_MAX)
        atomic_store_explicit(&vg__hot.implicit_pending, UINT64_MAX, memory_order_release);
}

void vg__acct_implicit_shrunk(int device)
{
    uint64_t bits = device < 0 ? UINT64_MAX : 1ull << (device & 63);
    atomic_fetch_or_explicit(&shrunk, bits, memory_order_acq_rel);
    atomic_fetch_or_explicit(&vg__hot.implicit_pending, bits, memory_order_acq_rel);
}

bool vg__acct_implicit_may_shrink(int device)
{
    uint64_t bit = 1ull << (device & 63);
    return atomic_fetch_and_explicit(&shrunk, ~bit, memory_order_acq_rel) & bit;
}

/* ------------------------------------------------------ first launches */

/* A kernel's first launch may load its module lazily; later launches take
 * nothing. So a launch marks the devices pending only for a function not
 * seen before: an open-addressing set of CUfunction handles, lock-free
 * (insert by compare-and-swap, never removed). A full neighbourhood counts
 * as unseen, which only costs a measurement. */
#define SEEN_SLOTS 16384 /* power of two */
#define SEEN_PROBES 8
static _Atomic uintptr_t seen[SEEN_SLOTS];

static bool first_launch(uintptr_t f)
{
    uint64_t h = (uint64_t)f * 0x9E3779B97F4A7C15ull;
    for (unsigned i = 0; i < SEEN_PROBES; i++) {
        _Atomic uintptr_t *slot = &seen[((h >> 50) + i) & (SEEN_SLOTS - 1)];
        uintptr_t v = atomic_load_explicit(slot, memory_order_relaxed);
        if (v == f)
            return false;
        if (v == 0) {
            if (atomic_compare_exchange_strong_explicit(slot, &v, f, memory_order_relaxed,
                                                        memory_order_relaxed))
                return true;
            if (v == f)
                return false;
        }
    }
    return true;
}

void vg__acct_implicit_launch(const void *function)
{
    if (vg__unlikely(first_launch((uintptr_t)function)))
        launched();
}

void vg__acct_implicit_may_grow(void)
{
    launched();
}

/* ------------------------------------------- calls that take memory */

/* Measures what a call just made the driver take. VG_ENOMEM when it grew
 * this process's memory past its budget: the caller undoes the call and
 * then calls vg__acct_implicit_undone(). */
int vg__acct_implicit_took(int device, const char *api)
{
    if (device < 0 || device >= VG__MAX_DEVICES || !budgeted(device))
        return VG_OK;
    vg__budget_t *b = vg__engine_budget(device);
    uint64_t before = vg__acct_overhead(device);
    if (!vg__overhead_refresh(device, VG__REFRESH_NOW))
        return VG_OK; /* nothing measured: the ledger stands */
    uint64_t limit, used;
    vg__budget_read(b, &limit, &used);
    uint64_t after = vg__acct_overhead(device);
    if (after <= before || used <= limit)
        return VG_OK;
    vg__ticket_t t = {.device = device, .kind = VG_KIND_PLAIN,
                      .bytes = after - before, .api = api};
    char took[32], lim[32];
    vg__log("refused %s on device %d: it took %s that no call shows, past the %s "
            "budget (CUDA_ERROR_OUT_OF_MEMORY)", api, device,
            vg__fmt_bytes(after - before, took, sizeof took),
            vg__fmt_bytes(limit, lim, sizeof lim));
    vg__audit_refuse(&t, VG_ENOMEM);
    return VG_ENOMEM;
}

void vg__acct_implicit_undone(int device)
{
    if (device < 0 || device >= VG__MAX_DEVICES || !budgeted(device))
        return;
    vg__acct_implicit_shrunk(device);
    pending_clear(device);
    if (!vg__overhead_refresh(device, VG__REFRESH_NOW))
        pending_set(device);
}

/* ------------------------------------------------- contexts freed */

/* A record the sweep saw: its key, and its number, so that a new record
 * at the same key (the address handed out again) is never taken for it. */
struct swept {
    uint64_t key, seq;
};

struct dev_keys {
    int device;
    uint64_t ctx; /* the context that went, 0 when not known */
    struct swept *keys;
    size_t n, cap;
};

/* An array (its record's handle is the context it was made in) dies with
 * its context; the driver cannot be asked about a handle it freed. */
static bool array_of(const vg__alloc_t *a, uint64_t ctx)
{
    return a->kind == VG_KIND_ARRAY && ctx && a->handle == ctx;
}

static void collect_device(const vg__alloc_t *a, void *ctx)
{
    struct dev_keys *k = ctx;
    if (a->device != k->device || a->pooled || a->owner || a->kind == VG_KIND_ASYNC)
        return; /* pools and stream-ordered memory outlive contexts */
    if ((a->ptr & VG__KEY_HANDLE) && !array_of(a, k->ctx))
        return; /* VMM handles do too; other contexts' arrays live on */
    if (k->n == k->cap)
        return;
    k->keys[k->n++] = (struct swept){a->ptr, a->seq};
}

/* True when the allocation that started at ptr is gone: the driver no
 * longer knows ptr as memory, or knows it only inside another allocation
 * that starts elsewhere (the freed space handed out again within a larger
 * block, as the driver sub-allocates). A live allocation starting at ptr,
 * this record's or a new one's (whose record then replaced this one, and
 * vg__acct_release_swept leaves it be), answers with ptr as its start. */
bool vg__acct_ptr_gone(uint64_t ptr)
{
    CUcontext ctx = NULL;
    CUresult cr = vg__driver()->cuPointerGetAttribute(&ctx, CU_POINTER_ATTRIBUTE_CONTEXT,
                                                      (CUdeviceptr)ptr);
    if (cr == CUDA_ERROR_INVALID_VALUE || cr == CUDA_ERROR_CONTEXT_IS_DESTROYED ||
        cr == CUDA_ERROR_INVALID_CONTEXT)
        return true;
    CUdeviceptr base = 0;
    size_t size = 0;
    return cr == CUDA_SUCCESS &&
           vg__driver()->cuMemGetAddressRange_v2(&base, &size, (CUdeviceptr)ptr) == CUDA_SUCCESS &&
           base != (CUdeviceptr)ptr;
}

void vg__acct_context_going(void)
{
    if (vg__engine_init() == VG_OK)
        vg__fronts_flush();
}

/* Another thread, in another context, may be handed a swept address as
 * soon as the driver freed it, and record it (account.c's insert_failed
 * gives the old record's charge back then): so a record goes only if it
 * is still the one collected. Taking whatever was live at the key dropped
 * the new allocation's charge while the driver held it, and its free was
 * then reported as a bad pointer. */
void vg__acct_context_gone(int device, CUcontext ctx, const char *api)
{
    if (device < 0 || device >= VG__MAX_DEVICES || vg__engine_init() != VG_OK)
        return;
    size_t cap = (size_t)vg__ledger_count() + 16;
    struct dev_keys k = {device, (uint64_t)(uintptr_t)ctx, calloc(cap, sizeof(struct swept)), 0,
                         cap};
    if (!k.keys)
        return;
    vg__ledger_foreach(NULL, collect_device, &k);
    for (size_t i = 0; i < k.n; i++) {
        uint64_t key = k.keys[i].key;
        if ((key & VG__KEY_HANDLE) || vg__acct_ptr_gone(key)) /* arrays: collected */
            vg__acct_release_swept(key, k.keys[i].seq, api);
        if (key & VG__KEY_HANDLE) /* and what was mapped into them */
            vg__acct_vmm_array_gone(key, api);
    }
    free(k.keys);
    vg__acct_limits_forget(device, ctx);
    vg__acct_implicit_shrunk(device); /* its context went too: measure again */
    vg__acct_pool_current_changed();  /* asked again, to be safe */
}
