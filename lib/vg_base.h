/*
 * vg_base.h — what every engine file shares: the attributes and limits,
 * util.c (clocks, tid, byte formatting, the stderr line) and the spinlock.
 * No CUDA here: the settings parser and most of the CLI build on it
 * without cuda.h.
 *
 * Internal headers, by concern (each grouped by the file that defines its
 * declarations; nothing in them is exported from the shared libraries,
 * which build with -fvisibility=hidden):
 *   vg_base.h      this file
 *   vg_settings.h  parse.c, settings.c: the settings, pure
 *   vg_driver.h    driver.c, device.c: the real driver (pulls in cuda.h)
 *   vg_budget.h    budget.c, ledger.c (and ledger_walk.c), ptrcheck.c
 *   vg_ledger.h    the ledger's shards, for ledger.c and ledger_walk.c only
 *   vg_keymap.h    keymap.c: the hash map of the ledger's shards
 *   vg_shared.h    the shared region's layout (an ABI) and its code
 *   vg_pool.h      the pool and its cache (pool and cache files only)
 *   vg_account.h   account*.c, engine.c: the shim's whole interface
 *   vg_credit.h    credit.c: per-thread budget credit (vg_account.h's)
 *   vg_diag.h      the flags that switch diagnostics on (audit.c)
 *   vg_audit.h     the audit log, call sites, bad pointers
 *   vg_fork.h      lock ranks and the one fork sequence (fork.c)
 *
 * Flow: shim/ -> account.c (with account_streams.c, account_pooled.c, account_overhead.c,
 * and credit.c: per-thread budget credit) and the public API (pool.c,
 * buf.c) -> engine.c -> budget.c, ledger.c, ptrcheck.c -> driver.c (the
 * real libcuda, never the hooks).
 */
#ifndef VG_BASE_H
#define VG_BASE_H

#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vramguard.h"

#define vg__likely(x) __builtin_expect(!!(x), 1)
#define vg__unlikely(x) __builtin_expect(!!(x), 0)
#define VG__HIDDEN __attribute__((visibility("hidden")))
/* The functions every cuMemAlloc_v2+cuMemFree_v2 pair runs, cached or not:
 * GCC places them together in .text.hot, so a pair's code spans two pages,
 * not seven. Over a real driver, whose code evicts ours between calls,
 * that is most of the shim's cost (docs/benchmarks.md, "Code layout").
 * Each starts a line: one entered mid-line pays for a line mostly its
 * neighbour's. A function belongs here only if a measured pair runs it. */
#define VG__HOT __attribute__((hot, aligned(64)))
/* For the hot path's small inline steps in headers: a copy GCC chose to
 * emit out of line would sit in the caller's plain .text, away from the
 * pair's other code. */
#define VG__INLINE static inline __attribute__((always_inline))

#define VG__UNLIMITED UINT64_MAX
#define VG__MAX_DEVICES 64
#define VG__TAG_LEN 32
#define VG__MAX_FRAMES 32 /* VRAMGUARD_BACKTRACE's upper bound */

/*
 * The flags every hooked call reads and almost nothing writes, in one
 * cache line: over a real driver, whose code and data evict ours between
 * two calls, a hooked call then misses on this one line rather than on
 * one line per flag, each in its own file's data (docs/benchmarks.md,
 * "The read-mostly flags in one line"). Each field belongs to the file
 * named beside it, which alone writes it (at start-up, at a pressure
 * change, at a module load: never on the hot path), and is documented
 * where its users' inline readers are.
 */
typedef struct vg__hot {
    _Atomic bool engine_ok;            /* engine.c (vg_account.h) */
    _Atomic bool shim_ok;              /* the preload shim (shim/shim.h) */
    bool cache_mode;                   /* account_pooled.c (vg_account.h) */
    _Atomic int credit_stop;           /* credit.c (vg_account.h) */
    _Atomic unsigned diag_flags;       /* audit.c (vg_diag.h) */
    _Atomic int device_count_kind;     /* the preload shim (shim/shim.c) */
    _Atomic uint64_t implicit_pending; /* account_implicit.c (vg_account.h) */
    _Atomic uint64_t budget_resolved;  /* engine.c: bit d, device d's budget is set */
    /* The preload shim (shim/shim.h): the real cuMemAlloc_v2 and
     * cuMemFree_v2, which the plain pair calls after reading this line
     * anyway (their table's line was one more miss a call); NULL in the
     * library. */
    void (*real_mem_alloc)(void);
    void (*real_mem_free)(void);
    /* credit.c (vg_account.h): the first devices' slices share the line. */
    _Atomic uint64_t credit_slice[VG__MAX_DEVICES];
} __attribute__((aligned(64))) vg__hot_t;

/* Defined in engine.c. Hidden, as every engine symbol is (-fvisibility=hidden
 * covers definitions only): said here, GCC addresses it directly rather
 * than through the GOT, one load and one line fewer on the hot path. */
extern vg__hot_t vg__hot VG__HIDDEN;
_Static_assert(__builtin_offsetof(vg__hot_t, credit_slice) + sizeof(uint64_t) <= 64,
               "device 0's credit slice shares the flags' line");

/* The same for each thread: what a hooked pair reads and writes of its
 * thread's own state, in one line of the thread's static TLS block
 * (initial-exec: the default model in a -fPIC library calls
 * __tls_get_addr on every access). Each field belongs to the file named
 * beside it, which alone touches it. */
typedef struct vg__thread {
    struct vg__credit *credit; /* credit.c: the thread's record, or NULL */
    uint64_t seq_next;         /* ledger.c: sequence numbers in hand, */
    uint64_t seq_end;          /* [seq_next, seq_end) */
    uint64_t leaf_tag;         /* ledger.c: the last directory leaf's number + 1 */
    struct vg__dir_leaf *leaf_last; /* ledger.c: that leaf */
    unsigned home_plus1;       /* ledger.c: the home shard + 1 (0: none yet) */
    uint32_t tid;              /* util.c: the kernel tid (0: not asked yet) */
    struct vg__front *front;   /* ledger_front.c: the thread's front, or NULL */
} __attribute__((aligned(64))) vg__thread_t;

extern _Thread_local vg__thread_t vg__me __attribute__((tls_model("initial-exec"))) VG__HIDDEN;
_Static_assert(VG__MAX_DEVICES <= 64, "budget_resolved has a bit per device");

/* ------------------------------------------------------------ util.c */

/* Wall-clock nanoseconds (CLOCK_REALTIME, vDSO: no syscall). */
uint64_t vg__now_ns(void);
/* Wall-clock nanoseconds at the kernel tick's resolution (1-4 ms): a
 * quarter of vg__now_ns's cost, for the hot path's allocation records. */
uint64_t vg__now_coarse_ns(void);
/* Monotonic nanoseconds, for benchmarks and rate limits. */
uint64_t vg__mono_ns(void);
/* The same clock at the kernel tick's resolution (1-4 ms), a fraction of
 * the cost: for once-a-second decisions on a hot path. */
uint64_t vg__mono_coarse_ns(void);
/* The calling thread's kernel tid, cached per thread after the first call
 * (inline: the hot path records it with every allocation). */
uint32_t vg__tid_slow(void);
static inline uint32_t vg__tid(void)
{
    uint32_t tid = vg__me.tid;
    return vg__likely(tid) ? tid : vg__tid_slow();
}
/* Forgets the cached tid (a forked child's thread has a new one). */
void vg__tid_reset(void);
/* The absolute path the running executable was started from
 * (/proc/self/exe) into out (len bytes), without the " (deleted)" the
 * kernel adds once that file has been replaced or removed: the file there
 * now, if any, may be another binary. VG_OK, or VG_ESYS with errno set
 * (ENAMETOOLONG when it does not fit). Slow: two system calls. */
int vg__self_exe(char *out, size_t len);
/* Formats `bytes` for humans ("1.50 GiB", "512 B") into buf; returns buf. */
char *vg__fmt_bytes(uint64_t bytes, char *buf, size_t len);
/* Writes one line to stderr with the "vramguard: " prefix (no malloc). */
void vg__log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ------------------------------------------------------------ spinlock */

/* The spinlock of the ledger's shards and the pool cache's classes and
 * thread caches: 0 free, 1 held. For critical sections of a few dozen
 * instructions, never across a call out. Locking is one atomic exchange,
 * unlocking a release store. A waiter yields after 64 spins, so a holder
 * preempted on a loaded machine (16 threads on 2 cores) gets the CPU. */
static inline void vg__spin_lock(_Atomic int *l)
{
    for (unsigned spins = 0;; spins++) {
        if (vg__likely(!atomic_exchange_explicit(l, 1, memory_order_acquire)))
            return;
        while (atomic_load_explicit(l, memory_order_relaxed)) {
            if (++spins > 64)
                sched_yield();
        }
    }
}

/* One try, no wait: true when the lock is now ours. */
static inline bool vg__spin_trylock(_Atomic int *l)
{
    return !atomic_load_explicit(l, memory_order_relaxed) &&
           !atomic_exchange_explicit(l, 1, memory_order_acquire);
}

static inline void vg__spin_unlock(_Atomic int *l)
{
    atomic_store_explicit(l, 0, memory_order_release);
}


#endif /* VG_BASE_H */
