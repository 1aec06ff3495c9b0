/*
 * account_limits.c — cuCtxSetLimit, charged before the driver is asked.
 *
 * Three limits make the driver reserve device memory: the device malloc
 * heap (its size), the printf FIFO (its size) and the per-thread stack
 * (its size for every thread that can be resident: SMs x threads per SM;
 * 16 KiB on an H200's 132 SMs x 2048 threads is 4.1 GiB). The driver may
 * take that memory at the call or only at the next launch, when a refusal
 * is no longer possible, so the growth over the current value is reserved
 * first and the call refused with CUDA_ERROR_OUT_OF_MEMORY when it does not
 * fit. The default values are part of the context's own memory (measured
 * with it), so only growth above them is charged here; shrinking gives
 * back at most what was charged.
 *
 * Limits belong to a context, and so do their charges: each context's are
 * kept apart and given back when that context goes (vg__acct_limits_forget),
 * never another's. Past LIMIT_CONTEXTS contexts with raised limits, the
 * rest share one entry per device, given back when any context of that
 * device goes.
 *
 * One cuCtxSetLimit is accounted at a time, from reading the current value
 * to settling the charge (set_lock): the growth is only right against the
 * value the driver really replaces.
 */
#include <pthread.h>

#include "vg_account.h"
#include "vg_fork.h"
#include "vg_shared.h"

enum { LIMIT_HEAP, LIMIT_STACK, LIMIT_FIFO, LIMIT_KINDS };
#define LIMIT_CONTEXTS 64

/* What one context's raised limits are charged, in bytes. An entry with
 * ctx NULL is a device's overflow (or its charges made with no context
 * current); device -1: unused. */
struct limit_entry {
    CUcontext ctx;
    int device;
    uint64_t charged[LIMIT_KINDS];
};

/* Held from vg__acct_limit_begin to _end, across the driver's cuCtxSetLimit
 * and the reservation (which may measure the device first: rank LIMIT_SET,
 * outermost). Without it two threads that read the same old value each
 * charged the whole growth (one 600 MiB heap counted twice, the second
 * call refused under 1 GiB though it cost nothing), and a shrink the driver
 * applied before a racing growth gave back a charge the device still held.
 * cuCtxSetLimit is rare and never on the allocation path. */
static pthread_mutex_t set_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t limits_lock = PTHREAD_MUTEX_INITIALIZER;
static struct limit_entry entries[LIMIT_CONTEXTS + VG__MAX_DEVICES]; /* under the lock */
static bool entries_ready;

/* The entry of (device, ctx), made if need be. Lock held. */
static struct limit_entry *entry_of(int device, CUcontext ctx)
{
    if (!entries_ready) {
        for (size_t i = 0; i < sizeof entries / sizeof entries[0]; i++)
            entries[i].device = -1;
        entries_ready = true;
    }
    struct limit_entry *free_entry = NULL;
    for (int i = 0; i < LIMIT_CONTEXTS && ctx; i++) {
        if (entries[i].device == device && entries[i].ctx == ctx)
            return &entries[i];
        if (entries[i].device < 0 && !free_entry)
            free_entry = &entries[i];
    }
    if (!free_entry) { /* no context, or no entry left: the device's own */
        free_entry = &entries[LIMIT_CONTEXTS + device];
        ctx = NULL;
    }
    if (free_entry->device < 0)
        *free_entry = (struct limit_entry){.ctx = ctx, .device = device};
    return free_entry;
}

static uint64_t entry_sum(const struct limit_entry *e)
{
    uint64_t sum = 0;
    for (int k = 0; k < LIMIT_KINDS; k++)
        sum += e->charged[k];
    return sum;
}

/* A fork while another thread holds the lock must not leave it held in the
 * child (fork.c, rank LIMITS). */
void vg__account_limits_prefork(void) { pthread_mutex_lock(&limits_lock); }
void vg__account_limits_postfork_parent(void) { pthread_mutex_unlock(&limits_lock); }
void vg__account_limits_postfork_child(void) { pthread_mutex_unlock(&limits_lock); }

/* The same for a cuCtxSetLimit in flight (rank LIMIT_SET). */
void vg__account_limits_set_prefork(void) { pthread_mutex_lock(&set_lock); }
void vg__account_limits_set_postfork_parent(void) { pthread_mutex_unlock(&set_lock); }
void vg__account_limits_set_postfork_child(void) { pthread_mutex_unlock(&set_lock); }

static int kind_of(CUlimit which)
{
    switch (which) {
    case CU_LIMIT_MALLOC_HEAP_SIZE: return LIMIT_HEAP;
    case CU_LIMIT_STACK_SIZE: return LIMIT_STACK;
    case CU_LIMIT_PRINTF_FIFO_SIZE: return LIMIT_FIFO;
    default: return -1;
    }
}

/* Threads that can be resident on the device at once (SMs x per SM). */
static uint64_t resident_threads(int device)
{
    const vg__driver_t *d = vg__driver();
    CUdevice dev;
    int sms = 0, per_sm = 0;
    if (d->cuDeviceGet(&dev, device) != CUDA_SUCCESS ||
        d->cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev) != CUDA_SUCCESS ||
        d->cuDeviceGetAttribute(&per_sm, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR, dev) != CUDA_SUCCESS ||
        sms <= 0 || per_sm <= 0)
        return 0;
    return (uint64_t)sms * (uint64_t)per_sm;
}

/* The device memory a limit's value costs. Saturates. */
static uint64_t cost_of(int kind, uint64_t value, uint64_t threads)
{
    if (kind != LIMIT_STACK)
        return value;
    return threads && value > UINT64_MAX / threads ? UINT64_MAX : value * threads;
}

/* The limit's value now, from the driver (optional entry point: 0 when
 * the driver cannot say, which makes the whole new value growth). */
static uint64_t current_value(CUlimit which)
{
    CUresult (*get)(size_t *, CUlimit) = vg__driver()->cuCtxGetLimit;
    size_t v = 0;
    if (!get || get(&v, which) != CUDA_SUCCESS)
        return 0;
    return v;
}

int vg__acct_limit_begin(vg__limit_op_t *op, int device, CUlimit which, size_t value)
{
    *op = (vg__limit_op_t){.device = device, .kind = kind_of(which)};
    if (op->kind < 0 || device < 0 || device >= VG__MAX_DEVICES ||
        vg__engine_init() != VG_OK || !(op->budget = vg__engine_budget(device)))
        return VG_OK; /* costs nothing we can count: the driver decides */
    vg__mutex_lock(&set_lock, VG__RANK_LIMIT_SET); /* until _end */
    if (vg__driver()->cuCtxGetCurrent(&op->ctx) != CUDA_SUCCESS)
        op->ctx = NULL; /* the limit is the current context's */
    uint64_t threads = op->kind == LIMIT_STACK ? resident_threads(device) : 0;
    uint64_t now = cost_of(op->kind, current_value(which), threads);
    uint64_t next = cost_of(op->kind, value, threads);
    if (next <= now) {
        op->shrink = now - next;
        return VG_OK;
    }
    op->grow = next - now;
    vg__ticket_t t = {.device = device, .kind = VG_KIND_PLAIN, .bytes = op->grow,
                      .api = "cuCtxSetLimit"};
    int rc = vg__acct_reserve(&t); /* logs and audits a refusal */
    if (rc != VG_OK) { /* the driver is not asked, and _end not called */
        op->budget = NULL;
        vg__mutex_unlock(&set_lock, VG__RANK_LIMIT_SET);
    }
    return rc;
}

/* The driver took the new value: the context's charge follows it. */
static void limit_settle(vg__limit_op_t *op)
{
    vg__mutex_lock(&limits_lock, VG__RANK_LIMITS);
    uint64_t *c = &entry_of(op->device, op->ctx)->charged[op->kind];
    uint64_t back = op->shrink < *c ? op->shrink : *c;
    *c = *c - back + op->grow;
    vg__mutex_unlock(&limits_lock, VG__RANK_LIMITS);
    if (op->grow)
        vg__budget_commit(op->budget, op->grow);
    if (back)
        vg__budget_release(op->budget, back);
    if (op->budget->shared) /* implicit use, as `vramguard status` shows it */
        vg__shared_overhead(op->budget, vg__acct_overhead(op->device) +
                                            vg__acct_limits_charged(op->device));
}

void vg__acct_limit_end(vg__limit_op_t *op, CUresult cr)
{
    if (!op->budget || op->kind < 0)
        return;
    if (cr == CUDA_SUCCESS)
        limit_settle(op);
    else if (op->grow)
        vg__budget_rollback(op->budget, op->grow);
    vg__mutex_unlock(&set_lock, VG__RANK_LIMIT_SET);
}

void vg__acct_limits_forget(int device, CUcontext ctx)
{
    if (device < 0 || device >= VG__MAX_DEVICES)
        return;
    uint64_t back = 0;
    vg__mutex_lock(&limits_lock, VG__RANK_LIMITS);
    for (size_t i = 0; entries_ready && i < sizeof entries / sizeof entries[0]; i++) {
        struct limit_entry *e = &entries[i];
        if (e->device != device || (e->ctx && e->ctx != ctx))
            continue; /* another context's: it lives on */
        back += entry_sum(e);
        *e = (struct limit_entry){.device = -1};
    }
    vg__mutex_unlock(&limits_lock, VG__RANK_LIMITS);
    vg__budget_t *b = vg__engine_budget(device);
    if (back && b)
        vg__budget_release(b, back);
}

uint64_t vg__acct_limits_charged(int device)
{
    uint64_t sum = 0;
    if (device < 0 || device >= VG__MAX_DEVICES)
        return 0;
    vg__mutex_lock(&limits_lock, VG__RANK_LIMITS);
    for (size_t i = 0; entries_ready && i < sizeof entries / sizeof entries[0]; i++)
        if (entries[i].device == device)
            sum += entry_sum(&entries[i]);
    vg__mutex_unlock(&limits_lock, VG__RANK_LIMITS);
    return sum;
}
