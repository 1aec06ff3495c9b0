/*
 * audit_sites.c — call sites (VRAMGUARD_BACKTRACE=N) and the leak report.
 *
 * A site is up to N return addresses outside vramguard, innermost first,
 * taken with glibc's backtrace() (the unwinder: works without frame
 * pointers; ~1 us for a few frames, so only when N > 0). Addresses are
 * written raw and symbolised only when read (the audit log's `modules`
 * maps them to objects); the leak report symbolises its own few lines with
 * dladdr().
 *
 * Sites are interned in a fixed open-addressing table so a ledger record
 * keeps a 32-bit id: slots are claimed with a CAS on their key and
 * published with a release store, so lookups take no lock. A full table
 * gives id 0 (reported as "other call sites").
 *
 * vramguard's own frames are skipped by address: those inside the object
 * that holds this file (the preload shim or libvramguard.so). Linked
 * statically into a program, that object is the program itself, so
 * nothing is skipped there but the capture function's own frame.
 */
#include <dlfcn.h>
#include <execinfo.h>
#include <link.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vg_audit.h"

#define SITE_SLOTS 4096u  /* distinct call sites remembered */
#define SKIP_MAX 16       /* vramguard frames above a capture, at most */
#define REPORT_LINES 20   /* leak groups shown on stderr (all go to the log) */

typedef struct site {
    _Atomic uint64_t key; /* 0 empty, else hash | 1 */
    _Atomic int ready;    /* frames written */
    int n;
    uintptr_t frames[VG__MAX_FRAMES];
} site_t;

static int max_frames;
static site_t *slots;
static uintptr_t self_lo, self_hi; /* vramguard's code: frames to skip */

/* Executable PT_LOAD segments of the object whose link map is ctx. */
static int find_self(struct dl_phdr_info *info, size_t size, void *ctx)
{
    (void)size;
    const struct link_map *lm = ctx;
    if (info->dlpi_addr != lm->l_addr || strcmp(info->dlpi_name, lm->l_name) != 0)
        return 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X))
            continue;
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr, hi = lo + ph->p_memsz;
        if (!self_lo || lo < self_lo)
            self_lo = lo;
        if (hi > self_hi)
            self_hi = hi;
    }
    return 1;
}

/* The executable range of the shared object holding this code; none when
 * that object is the main program (static link). */
static void find_self_range(void)
{
    Dl_info info;
    struct link_map *self = NULL;
    if (!dladdr1((void *)&find_self_range, &info, (void **)&self, RTLD_DL_LINKMAP) || !self)
        return;
    void *program = dlopen(NULL, RTLD_LAZY); /* glibc: the main link map */
    if (program)
        dlclose(program);
    if ((void *)self == program)
        return; /* linked into the program: keep its frames */
    dl_iterate_phdr(find_self, self);
}

void vg__site_setup(int frames)
{
    if (frames <= 0)
        return;
    slots = calloc(SITE_SLOTS, sizeof *slots);
    if (!slots)
        return;
    find_self_range();
    void *warm[4];
    (void)backtrace(warm, 4); /* loads libgcc_s now, not on a hot path */
    max_frames = frames > VG__MAX_FRAMES ? VG__MAX_FRAMES : frames;
}

__attribute__((noinline)) int vg__site_capture(uintptr_t frames[VG__MAX_FRAMES])
{
    void *raw[VG__MAX_FRAMES + SKIP_MAX];
    if (max_frames <= 0)
        return 0;
    int got = backtrace(raw, max_frames + SKIP_MAX);
    int i = 1; /* raw[0] is this function */
    while (i < got && (uintptr_t)raw[i] >= self_lo && (uintptr_t)raw[i] < self_hi)
        i++;
    int n = 0;
    for (; i < got && n < max_frames; i++)
        frames[n++] = (uintptr_t)raw[i];
    return n;
}

static uint64_t site_hash(const uintptr_t *f, int n)
{
    uint64_t h = 0xcbf29ce484222325ull ^ (uint64_t)n;
    for (int i = 0; i < n; i++)
        h = (h ^ f[i]) * 0x100000001b3ull;
    return h | 1;
}

static bool site_is(site_t *s, const uintptr_t *f, int n)
{
    while (!atomic_load_explicit(&s->ready, memory_order_acquire))
        ; /* another thread is writing this slot's frames (a few stores) */
    return s->n == n && memcmp(s->frames, f, sizeof *f * (size_t)n) == 0;
}

uint32_t vg__site_intern(const uintptr_t *frames, int n)
{
    if (n <= 0 || !slots)
        return 0;
    uint64_t h = site_hash(frames, n);
    for (uint32_t probe = 0; probe < SITE_SLOTS; probe++) {
        uint32_t i = (uint32_t)(h + probe) % SITE_SLOTS;
        site_t *s = &slots[i];
        uint64_t k = atomic_load_explicit(&s->key, memory_order_acquire);
        if (k == 0 && atomic_compare_exchange_strong_explicit(&s->key, &k, h,
                                                              memory_order_acq_rel,
                                                              memory_order_acquire)) {
            s->n = n;
            memcpy(s->frames, frames, sizeof *frames * (size_t)n);
            atomic_store_explicit(&s->ready, 1, memory_order_release);
            return i + 1;
        }
        if (k == h && site_is(s, frames, n))
            return i + 1;
    }
    return 0;
}

int vg__site_frames(uint32_t id, uintptr_t frames[VG__MAX_FRAMES])
{
    if (id == 0 || id > SITE_SLOTS || !slots)
        return 0;
    site_t *s = &slots[id - 1];
    if (!atomic_load_explicit(&s->ready, memory_order_acquire))
        return 0;
    memcpy(frames, s->frames, sizeof *frames * (size_t)s->n);
    return s->n;
}

/* ------------------------------------------------------ leak report */

typedef struct group {
    uint32_t site;
    int device;
    uint64_t count, bytes;
} group_t;

typedef struct groups {
    group_t *g;
    size_t n, cap;
    uint64_t count, bytes;
    bool oom;
} groups_t;

/* Adds one live allocation to its (device, site) group: a linear probe
 * over a table sized for every site on every device seen (exit only). */
static void add_live(const vg__alloc_t *a, void *ctx)
{
    groups_t *gs = ctx;
    gs->count++;
    gs->bytes += a->size;
    size_t i = ((size_t)a->site * 31u + (size_t)(uint16_t)a->device) % gs->cap;
    for (size_t probe = 0; probe < gs->cap; probe++, i = (i + 1) % gs->cap) {
        group_t *g = &gs->g[i];
        if (g->count == 0) {
            *g = (group_t){a->site, a->device, 0, 0};
            gs->n++;
        }
        if (g->site == a->site && g->device == a->device) {
            g->count++;
            g->bytes += a->size;
            return;
        }
    }
    gs->oom = true; /* more groups than slots: cannot happen, see cap */
}

static int by_bytes(const void *x, const void *y)
{
    const group_t *a = x, *b = y;
    return (a->bytes < b->bytes) - (a->bytes > b->bytes);
}

/* "libfoo.so(sym+0x12)", "libfoo.so+0x1234" or "0x7f..." */
static void symbolise(uintptr_t pc, char *out, size_t len)
{
    Dl_info info;
    if (!dladdr((void *)pc, &info) || !info.dli_fname) {
        snprintf(out, len, "0x%lx", (unsigned long)pc);
        return;
    }
    const char *obj = strrchr(info.dli_fname, '/');
    obj = obj ? obj + 1 : info.dli_fname;
    if (info.dli_sname)
        snprintf(out, len, "%s(%s+0x%lx)", obj, info.dli_sname,
                 (unsigned long)(pc - (uintptr_t)info.dli_saddr));
    else
        snprintf(out, len, "%s+0x%lx", obj, (unsigned long)(pc - (uintptr_t)info.dli_fbase));
}

static void print_group(const group_t *g)
{
    uintptr_t f[VG__MAX_FRAMES];
    char where[400] = "", one[160], size[32];
    int n = vg__site_frames(g->site, f);
    for (int i = 0; i < n && i < 3; i++) {
        symbolise(f[i], one, sizeof one);
        size_t used = strlen(where);
        snprintf(where + used, sizeof where - used, "%s%s", i ? " <- " : "", one);
    }
    vg__log("  %llu allocation%s, %s on device %d at %s",
            (unsigned long long)g->count, g->count == 1 ? "" : "s",
            vg__fmt_bytes(g->bytes, size, sizeof size), g->device,
            n ? where : g->site ? "?" : "an unknown site (VRAMGUARD_BACKTRACE=N records sites)");
}

void vg__leaks_report(void)
{
    groups_t gs = {.cap = 2u * (SITE_SLOTS + 1u) * 8u};
    char size[32];
    gs.g = calloc(gs.cap, sizeof *gs.g);
    if (!gs.g)
        return;
    vg__ledger_foreach(VG__ANY_OWNER, add_live, &gs);
    if (gs.count == 0) {
        if (vg__engine_settings()->leaks) /* asked for: say so */
            vg__log("leak report: no device allocations live at exit");
        free(gs.g);
        return;
    }
    size_t k = 0;
    for (size_t i = 0; i < gs.cap; i++)
        if (gs.g[i].count)
            gs.g[k++] = gs.g[i];
    qsort(gs.g, k, sizeof *gs.g, by_bytes);
    vg__log("leak report: device allocations still live at exit, by call site:");
    for (size_t i = 0; i < k; i++) {
        if (i < REPORT_LINES)
            print_group(&gs.g[i]);
        vg__audit_leak(gs.g[i].device, gs.g[i].count, gs.g[i].bytes, gs.g[i].site);
    }
    if (k > REPORT_LINES)
        vg__log("  ... and %zu more call sites (all of them are in the audit log)",
                k - REPORT_LINES);
    vg__log("leak report: %llu allocation%s, %s, live at exit from %zu call site%s",
            (unsigned long long)gs.count, gs.count == 1 ? "" : "s",
            vg__fmt_bytes(gs.bytes, size, sizeof size), k, k == 1 ? "" : "s");
    free(gs.g);
}
