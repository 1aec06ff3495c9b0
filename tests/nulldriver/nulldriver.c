/*
 * nulldriver.c — a CUDA driver that does nothing, fast: the floor under
 * the shim's own cost. Benchmarks only (tests/gpu/bench_pairs --hooked,
 * run with LD_LIBRARY_PATH at $(BUILD)/nulldriver); product code never
 * names it, and the test suite uses tests/fakecuda instead.
 *
 * One device, one context, no memory. cuMemAlloc_v2 is a per-thread bump
 * pointer in a range of its own (64 GiB per thread, 512-byte aligned), with
 * no lock, no atomic and no syscall after a thread's first call;
 * cuMemFree_v2 keeps no books and always succeeds. So a native alloc+free
 * pair costs a few ns on any number of threads, and whatever the shim adds
 * on top, and however it scales, is the shim's own.
 *
 * The one exception: allocations of 1 to 16 MiB (the cache mode pool's
 * 2 and 8 MiB chunks) come from a region of their own, one 16 MiB slot
 * each, and cuMemGetAddressRange_v2 tells their range. The pool verifies
 * each chunk with it and caches nothing without it (so VRAMGUARD_POOL=cache
 * measured nothing here). Slots are claimed and dropped with one atomic
 * each; a free pays one compare to know it is not a slot.
 *
 * NULLDRIVER_ADDRESSES=neighbours (read once, at cuInit): allocations of
 * up to 4 KiB come instead from a cell of two 4 KiB slots per thread, the
 * cells side by side, taken and given back last in, first out (a free
 * from another thread than the maker is not supported). So a thread with
 * its ballast held gets the same address for every pair, and the threads'
 * addresses are neighbours, 16 threads in two 64 KiB ledger granules:
 * what the real driver does (on the H200, 2026-12-04, 16 threads' pairs
 * all fell in one granule).
 *
 * NULLDRIVER_ADDRESSES=shared (read once, at cuInit): allocations of up
 * to 4 KiB come instead from one last-in, first-out stack of 4 KiB slots
 * for the whole process, under one mutex that is also held while the call
 * runs NULLDRIVER_CODE's code: a driver whose work is serialised and whose
 * free list is shared, so a thread's next block is often another
 * thread's last (and its ledger granule changes hands with it).
 * NULLDRIVER_LOCK=spin makes that mutex a spinlock (test-and-test-and-set
 * with a pause): whether the real driver's lock sleeps or spins decides
 * how much work between two calls costs a thread its turn. At exit the
 * process says on stderr how often the lock went to another thread than
 * its last holder ("nulldriver: lock hand-overs H of N").
 *
 * NULLDRIVER_SYNC_NS (read once, at cuInit): cuCtxSynchronize spins this
 * long (default 0), to stand for a GPU's (~26 us on the H100 with 16
 * threads), so the cost of the pool's reuse rule can be seen here.
 *
 * NULLDRIVER_FOOTPRINT=BYTES (read once, at cuInit): cuMemAlloc_v2 and
 * cuMemFree_v2 each write one byte in every 64-byte line of a per-thread
 * buffer of that size, to stand for the real driver's own use of the
 * caches (a 4 KiB pair costs it ~3 us): the lines the shim touches are
 * then cold again at its next call, as they are over the real driver.
 *
 * NULLDRIVER_CODE=BYTES (read once, at cuInit; at most 1 MiB): the same
 * two calls also run through that much code, one jump in each 64-byte
 * line, over BYTES/4096 pages: the real driver's code pushes the shim's
 * out of the instruction caches and TLB between its calls, and this
 * stands for it.
 *
 * It exports exactly what the engine resolves (lib/vg_driver.h,
 * VG__DRIVER_FNS: the engine refuses a driver that lacks one), plus the
 * legacy cuGetProcAddress; the shim's other hooks find no real function
 * here and stay unreachable, as with any driver that lacks them.
 */
#define __CUDA_API_VERSION_INTERNAL 1
#include <cuda.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NULLDRV_TOTAL (80ull << 30)   /* what the device reports, bytes */
#define RANGE_BITS 36                  /* 64 GiB of addresses per thread */
/* Per-thread ranges 1..RANGES; the last range below 2^48 (canonical)
 * holds the slots. */
#define RANGES ((1u << (48 - RANGE_BITS)) - 2)
#define SLOT_MIN (1ull << 20)          /* bytes; smaller goes to the bump */
#define SLOT_BITS 24                   /* 16 MiB a slot: its largest */
#define SLOTS (1u << (RANGE_BITS - SLOT_BITS))
#define SLOT_BASE ((CUdeviceptr)(RANGES + 1) << RANGE_BITS)
#define ALIGN 512u                     /* cuMemAlloc's documented minimum */

/* Something non-NULL to hand out; never dereferenced by anyone. */
static int ctx_token, pool_token;
#define NULL_CTX ((CUcontext)&ctx_token)
#define NULL_POOL ((CUmemoryPool)&pool_token)

static _Atomic int inited;
static _Atomic unsigned next_range; /* touched once per thread */

static _Thread_local CUcontext current;
static _Thread_local CUdeviceptr bump, bump_base, bump_end;
static bool neighbours;                      /* NULLDRIVER_ADDRESSES */
static bool shared;                          /* NULLDRIVER_ADDRESSES=shared */
#define SHARED_SLOTS 65536u                  /* 256 MiB of 4 KiB slots */
static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;
static bool spin_lock_mode;                  /* NULLDRIVER_LOCK=spin */
static _Atomic int shared_spin;
static unsigned long lock_takes, lock_handovers; /* under the lock */
static const void *lock_last;                    /* its last holder */
static _Thread_local char lock_me;               /* a thread's token: &lock_me */
static CUdeviceptr shared_free[SHARED_SLOTS]; /* the stack of free slots */
static unsigned shared_free_n, shared_made;
static _Thread_local CUdeviceptr cell;        /* its first slot */
static _Thread_local unsigned cell_used;      /* slots taken, 0..CELL_SLOTS */
#define CELL_SLOTS 2u
#define CELL_SLOT 4096u
static _Atomic uint64_t slot_bytes[SLOTS]; /* 0: free */
static _Atomic unsigned slot_next;         /* where the next search starts */

/* ------------------------------------------------ init and devices */

static uint64_t sync_ns; /* NULLDRIVER_SYNC_NS */
static size_t footprint;  /* NULLDRIVER_FOOTPRINT */
static _Thread_local unsigned char *scratch;

/* Writes a byte of every line of the thread's scratch buffer (no-op
 * without NULLDRIVER_FOOTPRINT). */
static void touch_footprint(void)
{
    if (__builtin_expect(!footprint, 1))
        return;
    if (!scratch && !(scratch = calloc(1, footprint)))
        return;
    for (size_t i = 0; i < footprint; i += 64)
        ((volatile unsigned char *)scratch)[i]++;
}

/* The code for NULLDRIVER_CODE: SLED_BYTES of 64-byte lines, each a jump
 * to the next, then a return; entered SLED_BYTES - code bytes in. */
#define SLED_BYTES (1u << 20)
__asm__(".pushsection .text.nulldrv_sled,\"ax\",@progbits\n"
        ".p2align 12\n"
        "nulldrv_sled:\n"
        ".rept 16384\n"
        "jmp 1f\n"
        ".p2align 6\n"
        "1:\n"
        ".endr\n"
        "ret\n"
        ".popsection\n");
extern const unsigned char nulldrv_sled[] __attribute__((visibility("hidden")));
static void (*code_entry)(void); /* NULL without NULLDRIVER_CODE */

static void run_code(void)
{
    if (__builtin_expect(code_entry != NULL, 0))
        code_entry();
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

CUresult cuInit(unsigned int flags)
{
    (void)flags;
    const char *s = getenv("NULLDRIVER_SYNC_NS");
    if (s && *s)
        sync_ns = strtoull(s, NULL, 10);
    s = getenv("NULLDRIVER_ADDRESSES");
    neighbours = s && !strcmp(s, "neighbours");
    shared = s && !strcmp(s, "shared");
    s = getenv("NULLDRIVER_LOCK");
    spin_lock_mode = s && !strcmp(s, "spin");
    s = getenv("NULLDRIVER_FOOTPRINT");
    if (s && *s)
        footprint = strtoull(s, NULL, 10);
    s = getenv("NULLDRIVER_CODE");
    if (s && *s) {
        size_t bytes = strtoull(s, NULL, 10) & ~(size_t)63;
        if (bytes > SLED_BYTES)
            bytes = SLED_BYTES;
        if (bytes)
            code_entry = (void (*)(void))(uintptr_t)(nulldrv_sled + SLED_BYTES - bytes);
    }
    atomic_store_explicit(&inited, 1, memory_order_relaxed);
    return CUDA_SUCCESS;
}

static CUresult need_init(void)
{
    return atomic_load_explicit(&inited, memory_order_relaxed) ? CUDA_SUCCESS
                                                               : CUDA_ERROR_NOT_INITIALIZED;
}

static CUresult need_dev(CUdevice dev)
{
    CUresult rc = need_init();
    return rc != CUDA_SUCCESS ? rc : dev == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE;
}

CUresult cuDriverGetVersion(int *version)
{
    if (!version)
        return CUDA_ERROR_INVALID_VALUE;
    *version = CUDA_VERSION;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int *count)
{
    CUresult rc = need_init();
    if (rc == CUDA_SUCCESS && count)
        *count = 1;
    return count ? rc : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuDeviceGet(CUdevice *device, int ordinal)
{
    if (!device)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = need_dev(ordinal);
    if (rc == CUDA_SUCCESS)
        *device = 0;
    return rc;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice dev)
{
    CUresult rc = need_dev(dev);
    if (rc == CUDA_SUCCESS && name && len > 0) {
        strncpy(name, "vramguard null driver", (size_t)len - 1);
        name[len - 1] = '\0';
    }
    return rc;
}

CUresult cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev)
{
    CUresult rc = need_dev(dev);
    if (rc == CUDA_SUCCESS && uuid)
        memcpy(uuid->bytes, "vg-null-driver-0", 16);
    return rc;
}

CUresult cuDeviceGetAttribute(int *pi, CUdevice_attribute attrib, CUdevice dev)
{
    CUresult rc = need_dev(dev);
    if (rc != CUDA_SUCCESS || !pi)
        return pi ? rc : CUDA_ERROR_INVALID_VALUE;
    switch (attrib) {
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *pi = 9; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *pi = 0; break;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *pi = 132; break;
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: *pi = 1; break;
    default: *pi = 0; break;
    }
    return CUDA_SUCCESS;
}

CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev)
{
    CUresult rc = need_dev(dev);
    if (rc == CUDA_SUCCESS && bytes)
        *bytes = NULLDRV_TOTAL;
    return bytes ? rc : CUDA_ERROR_INVALID_VALUE;
}

/* ------------------------------------------------------ contexts */

CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)
{
    CUresult rc = need_dev(dev);
    if (rc == CUDA_SUCCESS && pctx)
        *pctx = NULL_CTX;
    return pctx ? rc : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuDevicePrimaryCtxGetState(CUdevice dev, unsigned int *flags, int *active)
{
    CUresult rc = need_dev(dev);
    if (!flags || !active)
        return CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS) {
        *flags = 0;
        *active = 1;
    }
    return rc;
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev)
{
    return need_dev(dev);
}

CUresult cuCtxGetCurrent(CUcontext *pctx)
{
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    *pctx = current;
    return CUDA_SUCCESS;
}

CUresult cuCtxSetCurrent(CUcontext ctx)
{
    if (ctx && ctx != NULL_CTX)
        return CUDA_ERROR_INVALID_CONTEXT;
    current = ctx;
    return CUDA_SUCCESS;
}

/* Nothing is ever in flight here. The engine requires the entry point
 * (its pools synchronise before reusing a block). */
CUresult cuCtxSynchronize(void)
{
    if (!current)
        return CUDA_ERROR_INVALID_CONTEXT;
    if (sync_ns)
        for (uint64_t end = now_ns() + sync_ns; now_ns() < end;)
            ;
    return CUDA_SUCCESS;
}

/* On the shim's hot path (vg__shim_device, every allocation): one TLS load. */
CUresult cuCtxGetDevice(CUdevice *device)
{
    if (!current)
        return CUDA_ERROR_INVALID_CONTEXT;
    *device = 0;
    return CUDA_SUCCESS;
}

/* ------------------------------------------------------- memory */

/* A thread's first allocation claims its address range: the only shared
 * write, once per thread. Ranges are reused after RANGES threads. */
__attribute__((noinline)) static void bump_claim(void)
{
    unsigned r = atomic_fetch_add_explicit(&next_range, 1, memory_order_relaxed) % RANGES;
    bump_base = bump = (CUdeviceptr)(r + 1) << RANGE_BITS;
    bump_end = bump_base + (1ull << RANGE_BITS);
    /* The cells take the top GiB of range RANGES, below the slots (a
     * thread's bump range reaches it only after 63 GiB). */
    cell = SLOT_BASE - (1ull << 30) + (CUdeviceptr)r * CELL_SLOTS * CELL_SLOT;
}

/* NULLDRIVER_ADDRESSES=neighbours: a slot of the thread's cell, if free. */
static bool cell_alloc(CUdeviceptr *dptr, size_t bytes)
{
    if (bytes > CELL_SLOT || cell_used == CELL_SLOTS)
        return false;
    *dptr = cell + (CUdeviceptr)cell_used++ * CELL_SLOT;
    return true;
}

/* NULLDRIVER_ADDRESSES=shared: the slots lie 1 GiB below the cells. */
#define SHARED_BASE (SLOT_BASE - (2ull << 30))

static bool in_shared(CUdeviceptr p)
{
    return p >= SHARED_BASE && p < SHARED_BASE + (CUdeviceptr)SHARED_SLOTS * CELL_SLOT;
}

__attribute__((destructor)) static void say_handovers(void)
{
    if (lock_takes)
        fprintf(stderr, "nulldriver: lock hand-overs %lu of %lu\n", lock_handovers, lock_takes);
}

static void shared_enter(void)
{
    if (!spin_lock_mode) {
        pthread_mutex_lock(&shared_lock);
    } else {
        while (atomic_exchange_explicit(&shared_spin, 1, memory_order_acquire))
            while (atomic_load_explicit(&shared_spin, memory_order_relaxed))
                __builtin_ia32_pause();
    }
    lock_takes++;
    lock_handovers += lock_last && lock_last != &lock_me;
    lock_last = &lock_me;
}

static void shared_leave(void)
{
    if (spin_lock_mode)
        atomic_store_explicit(&shared_spin, 0, memory_order_release);
    else
        pthread_mutex_unlock(&shared_lock);
}

/* The process's last freed slot, or a new one; the driver's work (the
 * code) is done under the lock. */
static bool shared_alloc(CUdeviceptr *dptr, size_t bytes)
{
    if (bytes > CELL_SLOT)
        return false;
    shared_enter();
    run_code();
    bool ok = true;
    if (shared_free_n)
        *dptr = shared_free[--shared_free_n];
    else if (shared_made < SHARED_SLOTS)
        *dptr = SHARED_BASE + (CUdeviceptr)shared_made++ * CELL_SLOT;
    else
        ok = false;
    shared_leave();
    return ok;
}

static void shared_release(CUdeviceptr p)
{
    shared_enter();
    run_code();
    shared_free[shared_free_n++] = p;
    shared_leave();
}

static int in_slots(CUdeviceptr p)
{
    return p >= SLOT_BASE && p < SLOT_BASE + (1ull << RANGE_BITS);
}

/* A slot for `bytes` (SLOT_MIN..16 MiB): the first free one from a
 * rotating start. Out of memory when all are taken (64 GiB of them). */
__attribute__((noinline)) static CUresult slot_alloc(CUdeviceptr *dptr, size_t bytes)
{
    unsigned start = atomic_fetch_add_explicit(&slot_next, 1, memory_order_relaxed);
    for (unsigned i = 0; i < SLOTS; i++) {
        unsigned s = (start + i) % SLOTS;
        uint64_t free_ = 0;
        if (atomic_compare_exchange_strong_explicit(&slot_bytes[s], &free_, bytes,
                                                    memory_order_relaxed,
                                                    memory_order_relaxed)) {
            *dptr = SLOT_BASE + ((CUdeviceptr)s << SLOT_BITS);
            return CUDA_SUCCESS;
        }
    }
    return CUDA_ERROR_OUT_OF_MEMORY;
}

/* Hot path: a TLS check, a round-up and an add. A range that runs out
 * starts over (nothing is tracked, so nothing collides that is not
 * 64 GiB of live allocations old). */
static inline CUresult null_alloc(CUdeviceptr *dptr, size_t bytesize)
{
    if (__builtin_expect(!current, 0))
        return CUDA_ERROR_INVALID_CONTEXT;
    if (!dptr || bytesize == 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (bytesize > NULLDRV_TOTAL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    touch_footprint();
    if (__builtin_expect(shared, 0) && shared_alloc(dptr, bytesize))
        return CUDA_SUCCESS;
    run_code();
    if (__builtin_expect(bytesize >= SLOT_MIN, 0) && bytesize <= (1ull << SLOT_BITS))
        return slot_alloc(dptr, bytesize);
    if (__builtin_expect(!bump_end, 0))
        bump_claim();
    if (__builtin_expect(neighbours, 0) && cell_alloc(dptr, bytesize))
        return CUDA_SUCCESS;
    size_t need = (bytesize + ALIGN - 1) & ~(size_t)(ALIGN - 1);
    if (__builtin_expect(bump_end - bump < need, 0))
        bump = bump_base;
    *dptr = bump;
    bump += need;
    return CUDA_SUCCESS;
}

static inline CUresult null_free(CUdeviceptr dptr)
{
    touch_footprint();
    if (__builtin_expect(shared, 0) && in_shared(dptr)) {
        shared_release(dptr);
        return CUDA_SUCCESS;
    }
    run_code();
    if (__builtin_expect(in_slots(dptr), 0))
        atomic_store_explicit(&slot_bytes[(dptr - SLOT_BASE) >> SLOT_BITS], 0,
                              memory_order_relaxed);
    else if (__builtin_expect(neighbours, 0) && cell_used &&
             dptr == cell + (CUdeviceptr)(cell_used - 1) * CELL_SLOT)
        cell_used--;
    return CUDA_SUCCESS;
}

CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
{
    return null_alloc(dptr, bytesize);
}

CUresult cuMemFree_v2(CUdeviceptr dptr)
{
    return null_free(dptr);
}

/* Stream-ordered pairs cost what plain ones do: nothing is ordered here,
 * and the device's pool says it holds nothing (cuMemPoolGetAttribute), so
 * the shim charges them nothing. Streams are a token. */
CUresult cuStreamCreate(CUstream *phStream, unsigned int flags)
{
    (void)flags;
    if (!phStream)
        return CUDA_ERROR_INVALID_VALUE;
    *phStream = (CUstream)(uintptr_t)0x57;
    return CUDA_SUCCESS;
}

CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
{
    (void)hStream;
    return null_alloc(dptr, bytesize);
}

CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream)
{
    (void)hStream;
    return null_free(dptr);
}

CUresult cuMemGetInfo_v2(size_t *free, size_t *total)
{
    if (!free || !total)
        return CUDA_ERROR_INVALID_VALUE;
    *free = *total = NULLDRV_TOTAL;
    return CUDA_SUCCESS;
}

/* There is no memory: fills and host-to-device copies do nothing, and
 * device-to-host copies read zeros. */
CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char uc, size_t n)
{
    (void)dst, (void)uc, (void)n;
    return CUDA_SUCCESS;
}

CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t bytes)
{
    (void)dst, (void)src, (void)bytes;
    return CUDA_SUCCESS;
}

CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t bytes)
{
    (void)src;
    if (dst)
        memset(dst, 0, bytes);
    return CUDA_SUCCESS;
}

static int is_ours(CUdeviceptr p)
{
    return p >= (1ull << RANGE_BITS) && p < (1ull << 48);
}

CUresult cuPointerGetAttribute(void *data, CUpointer_attribute attribute, CUdeviceptr ptr)
{
    if (!data)
        return CUDA_ERROR_INVALID_VALUE;
    if (!is_ours(ptr))
        return CUDA_ERROR_INVALID_VALUE;
    switch (attribute) {
    case CU_POINTER_ATTRIBUTE_CONTEXT: *(CUcontext *)data = NULL_CTX; return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
        *(unsigned int *)data = CU_MEMORYTYPE_DEVICE;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_DEVICE_POINTER: *(CUdeviceptr *)data = ptr; return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL: *(int *)data = 0; return CUDA_SUCCESS;
    default: return CUDA_ERROR_NOT_SUPPORTED;
    }
}

/* Only a slot's extent is known (the allocations of 1 to 16 MiB). */
CUresult cuMemGetAddressRange_v2(CUdeviceptr *base, size_t *size, CUdeviceptr dptr)
{
    if (!in_slots(dptr))
        return CUDA_ERROR_NOT_FOUND;
    unsigned s = (unsigned)((dptr - SLOT_BASE) >> SLOT_BITS);
    CUdeviceptr b = SLOT_BASE + ((CUdeviceptr)s << SLOT_BITS);
    uint64_t n = atomic_load_explicit(&slot_bytes[s], memory_order_relaxed);
    if (n == 0 || dptr - b >= n)
        return CUDA_ERROR_NOT_FOUND;
    if (base)
        *base = b;
    if (size)
        *size = n;
    return CUDA_SUCCESS;
}

/* ------------------------------------- pools and arrays: empty */

CUresult cuDeviceGetMemPool(CUmemoryPool *pool, CUdevice dev)
{
    CUresult rc = need_dev(dev);
    if (rc == CUDA_SUCCESS && pool)
        *pool = NULL_POOL;
    return pool ? rc : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuDeviceGetDefaultMemPool(CUmemoryPool *pool, CUdevice dev)
{
    return cuDeviceGetMemPool(pool, dev);
}

CUresult cuMemPoolGetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value)
{
    if (pool != NULL_POOL || !value)
        return CUDA_ERROR_INVALID_VALUE;
    switch (attr) {
    case CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES:
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC:
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES:
        *(int *)value = 0;
        break;
    default: /* the byte counts: nothing reserved, nothing used */
        *(cuuint64_t *)value = 0;
        break;
    }
    return CUDA_SUCCESS;
}

CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t minBytesToKeep)
{
    (void)minBytesToKeep;
    return pool == NULL_POOL ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* No stream is ever captured here. */
CUresult cuStreamGetCaptureInfo_v2(CUstream hStream, CUstreamCaptureStatus *captureStatus_out,
                                   cuuint64_t *id_out, CUgraph *graph_out,
                                   const CUgraphNode **dependencies_out, size_t *numDependencies_out)
{
    (void)hStream, (void)id_out, (void)graph_out, (void)dependencies_out, (void)numDependencies_out;
    if (!captureStatus_out)
        return CUDA_ERROR_INVALID_VALUE;
    *captureStatus_out = CU_STREAM_CAPTURE_STATUS_NONE;
    return CUDA_SUCCESS;
}

CUresult cuArrayGetMemoryRequirements(CUDA_ARRAY_MEMORY_REQUIREMENTS *req, CUarray array,
                                      CUdevice device)
{
    (void)req, (void)array, (void)device;
    return CUDA_ERROR_NOT_SUPPORTED;
}

CUresult cuMipmappedArrayGetMemoryRequirements(CUDA_ARRAY_MEMORY_REQUIREMENTS *req,
                                               CUmipmappedArray mipmap, CUdevice device)
{
    (void)req, (void)mipmap, (void)device;
    return CUDA_ERROR_NOT_SUPPORTED;
}

/* --------------------------------------------- names and lookups */

CUresult cuGetErrorName(CUresult error, const char **str)
{
    if (!str)
        return CUDA_ERROR_INVALID_VALUE;
    switch (error) {
    case CUDA_SUCCESS: *str = "CUDA_SUCCESS"; break;
    case CUDA_ERROR_INVALID_VALUE: *str = "CUDA_ERROR_INVALID_VALUE"; break;
    case CUDA_ERROR_OUT_OF_MEMORY: *str = "CUDA_ERROR_OUT_OF_MEMORY"; break;
    case CUDA_ERROR_NOT_INITIALIZED: *str = "CUDA_ERROR_NOT_INITIALIZED"; break;
    case CUDA_ERROR_INVALID_DEVICE: *str = "CUDA_ERROR_INVALID_DEVICE"; break;
    case CUDA_ERROR_INVALID_CONTEXT: *str = "CUDA_ERROR_INVALID_CONTEXT"; break;
    case CUDA_ERROR_NOT_FOUND: *str = "CUDA_ERROR_NOT_FOUND"; break;
    case CUDA_ERROR_NOT_SUPPORTED: *str = "CUDA_ERROR_NOT_SUPPORTED"; break;
    default: *str = NULL; return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                             CUdriverProcAddressQueryResult *symbolStatus);
CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags);

/* Base names (what cudart asks for) to this file's functions, whatever the
 * version asked: there is one ABI of each here. */
#define NULLDRV_PROCS(X)                                                       \
    X("cuInit", cuInit) X("cuDriverGetVersion", cuDriverGetVersion)            \
    X("cuGetErrorName", cuGetErrorName) X("cuDeviceGetCount", cuDeviceGetCount) \
    X("cuDeviceGet", cuDeviceGet) X("cuDeviceGetName", cuDeviceGetName)        \
    X("cuDeviceGetUuid", cuDeviceGetUuid_v2)                                   \
    X("cuDeviceGetAttribute", cuDeviceGetAttribute)                            \
    X("cuDeviceTotalMem", cuDeviceTotalMem_v2)                                 \
    X("cuDevicePrimaryCtxRetain", cuDevicePrimaryCtxRetain)                    \
    X("cuDevicePrimaryCtxRelease", cuDevicePrimaryCtxRelease_v2)               \
    X("cuDevicePrimaryCtxGetState", cuDevicePrimaryCtxGetState)                \
    X("cuCtxGetCurrent", cuCtxGetCurrent) X("cuCtxSetCurrent", cuCtxSetCurrent) \
    X("cuCtxGetDevice", cuCtxGetDevice) X("cuCtxSynchronize", cuCtxSynchronize) X("cuMemAlloc", cuMemAlloc_v2)         \
    X("cuMemFree", cuMemFree_v2) X("cuMemGetInfo", cuMemGetInfo_v2)            \
    X("cuMemsetD8", cuMemsetD8_v2) X("cuMemcpyHtoD", cuMemcpyHtoD_v2)          \
    X("cuMemcpyDtoH", cuMemcpyDtoH_v2)                                         \
    X("cuMemGetAddressRange", cuMemGetAddressRange_v2)                         \
    X("cuPointerGetAttribute", cuPointerGetAttribute)                          \
    X("cuDeviceGetMemPool", cuDeviceGetMemPool)                                \
    X("cuDeviceGetDefaultMemPool", cuDeviceGetDefaultMemPool)                  \
    X("cuMemPoolGetAttribute", cuMemPoolGetAttribute)                          \
    X("cuMemPoolTrimTo", cuMemPoolTrimTo)                                      \
    X("cuStreamGetCaptureInfo", cuStreamGetCaptureInfo_v2)                    \
    X("cuArrayGetMemoryRequirements", cuArrayGetMemoryRequirements)            \
    X("cuMipmappedArrayGetMemoryRequirements",                                 \
      cuMipmappedArrayGetMemoryRequirements)                                   \
    X("cuGetProcAddress", cuGetProcAddress_v2)

CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                             CUdriverProcAddressQueryResult *symbolStatus)
{
    (void)cudaVersion, (void)flags;
    if (!symbol || !pfn)
        return CUDA_ERROR_INVALID_VALUE;
    static const struct {
        const char *name;
        void *fn;
    } procs[] = {
#define NULLDRV_ENTRY_(name, fn) {name, (void *)fn},
        NULLDRV_PROCS(NULLDRV_ENTRY_)
#undef NULLDRV_ENTRY_
    };
    for (size_t i = 0; i < sizeof procs / sizeof procs[0]; i++) {
        if (strcmp(procs[i].name, symbol) == 0) {
            *pfn = procs[i].fn;
            if (symbolStatus)
                *symbolStatus = CU_GET_PROC_ADDRESS_SUCCESS;
            return CUDA_SUCCESS;
        }
    }
    *pfn = NULL;
    if (symbolStatus)
        *symbolStatus = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    return CUDA_ERROR_NOT_FOUND;
}

CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags)
{
    return cuGetProcAddress_v2(symbol, pfn, cudaVersion, flags, NULL);
}
