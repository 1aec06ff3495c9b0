/*
 * ioctl_meter.so - GPU probe only (tests/gpu/probe). LD_PRELOAD library that interposes libc's ioctl()
 * (and syscall(SYS_ioctl, ...)) and meters the NVIDIA resource-manager allocation ioctls:
 *
 *   NV_ESC_RM_ALLOC (nr 0x2B) with NVOS21 (32 bytes) or NVOS64 (48 bytes) parameters,
 *   NV_ESC_RM_FREE  (nr 0x29) with NVOS00 (16 bytes) parameters,
 *   NV_ESC_IOCTL_XFER_CMD (nr 200+11) wrapping either of them.
 *
 * For every successful RM_ALLOC it records (client, parent, handle, class); for the memory classes whose alloc
 * parameters are NV_MEMORY_ALLOCATION_PARAMS (0x40 local user, 0x3e system) it records the returned `size`
 * (offset 64). RM_FREE removes the handle and everything allocated under it (a freed client or parent frees
 * its children in RM too). "live video bytes" = sum of sizes of live class-0x40 objects that are not virtual.
 *
 * Facts from NVIDIA/open-gpu-kernel-modules (see the report; own minimal definitions, nothing copied):
 *   kernel-open/common/inc/nv-ioctl-numbers.h  NV_IOCTL_MAGIC 'F', NV_IOCTL_BASE 200, XFER = BASE+11
 *   kernel-open/common/inc/nv-ioctl.h          nv_ioctl_xfer_t {u32 cmd; u32 size; u64 ptr}
 *   src/nvidia/arch/nvalloc/unix/include/nv_escape.h   RM_FREE 0x29, RM_ALLOC 0x2B
 *   src/common/sdk/nvidia/inc/nvos.h           NVOS00/21/64_PARAMETERS, NV_MEMORY_ALLOCATION_PARAMS
 *   src/nvidia/generated/g_allclasses.h        class ids
 *
 * Exported: int probe_meter_read(struct probe_meter *out) (see probe_meter.h), looked up by truth_probe with
 * dlsym(RTLD_DEFAULT). Summary per class printed to stderr at exit when libcuda is loaded in the process.
 * Environment: PROBE_METER_TRACE=1 prints every RM alloc/free as it happens (stderr).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>

#include "probe_meter.h"

/* ---- RM ABI (own minimal definitions) ---- */
#define NVM_IOC_NR(req)   ((unsigned)((req) & 0xffu))
#define NVM_IOC_TYPE(req) ((unsigned)(((req) >> 8) & 0xffu))
#define NVM_IOC_SIZE(req) ((unsigned)(((req) >> 16) & 0x3fffu))
#define NVM_MAGIC 0x46u /* 'F' */
#define NVM_ESC_RM_FREE 0x29u
#define NVM_ESC_RM_ALLOC 0x2Bu
#define NVM_ESC_XFER (200u + 11u)
#ifndef NVM_NVIDIA_MAJOR
#define NVM_NVIDIA_MAJOR 195u /* /dev/nvidiactl, /dev/nvidia0.. */
#endif

#define NVM_CLASS_MEMORY_SYSTEM 0x3eu
#define NVM_CLASS_MEMORY_LOCAL_USER 0x40u
#define NVM_ALLOC_FLAGS_VIRTUAL 0x00080000u
#define NVM_OS64_FLAGS_FINN_SERIALIZED 0x1u

struct nvm_os00 { /* 16 bytes */
    uint32_t hRoot, hObjectParent, hObjectOld, status;
};
struct nvm_os21 { /* 32 bytes */
    uint32_t hRoot, hObjectParent, hObjectNew, hClass;
    uint64_t pAllocParms;
    uint32_t paramsSize, status;
};
struct nvm_os64 { /* 48 bytes */
    uint32_t hRoot, hObjectParent, hObjectNew, hClass;
    uint64_t pAllocParms;
    uint64_t pRightsRequested;
    uint32_t paramsSize, flags, status;
    uint32_t pad_; /* tail padding to 8-byte alignment: sizeof 48 */
};
struct nvm_xfer { /* 16 bytes */
    uint32_t cmd, size;
    uint64_t ptr;
};
/* NV_MEMORY_ALLOCATION_PARAMS: owner@0 type@4 flags@8 ... attr@24 ... size@64 (u64, IN/OUT), sizeof 128 */
#define NVM_MAP_OFF_FLAGS 8u
#define NVM_MAP_OFF_ATTR 24u
#define NVM_MAP_OFF_SIZE 64u

_Static_assert(sizeof(struct nvm_os00) == 16, "os00");
_Static_assert(sizeof(struct nvm_os21) == 32, "os21");
_Static_assert(sizeof(struct nvm_os64) == 48, "os64");
_Static_assert(sizeof(struct nvm_xfer) == 16, "xfer");

/* ---- state ---- */
struct obj {
    uint32_t root, parent, handle, cls;
    uint64_t bytes; /* counted bytes (0 if not a counted memory object) */
    int kind;       /* 0 other, 1 video, 2 sysmem */
};
struct cls_stat {
    uint32_t cls;
    uint64_t ok, fail, bytes_total, live_objs, live_bytes;
};

#define MAX_CLS 256
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static struct obj *g_objs;
static size_t g_nobjs, g_capobjs;
static struct cls_stat g_cls[MAX_CLS];
static unsigned g_ncls;
static struct probe_meter g_m;
static int g_trace;
static uint64_t g_nr_count[256]; /* NVIDIA ioctls by escape number (XFER counted as 211) */

typedef int (*ioctl_fn)(int, unsigned long, ...);
typedef long (*syscall_fn)(long, ...);
static ioctl_fn real_ioctl;
static syscall_fn real_syscall;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void resolve(void)
{
    real_ioctl = (ioctl_fn)dlsym(RTLD_NEXT, "ioctl");
    real_syscall = (syscall_fn)dlsym(RTLD_NEXT, "syscall");
    const char *t = getenv("PROBE_METER_TRACE");
    g_trace = (t && *t == '1');
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static struct cls_stat *cls_get(uint32_t cls)
{
    for (unsigned i = 0; i < g_ncls; i++)
        if (g_cls[i].cls == cls)
            return &g_cls[i];
    if (g_ncls < MAX_CLS) {
        g_cls[g_ncls].cls = cls;
        return &g_cls[g_ncls++];
    }
    return NULL;
}

static void obj_add(const struct obj *o)
{
    if (g_nobjs == g_capobjs) {
        size_t nc = g_capobjs ? g_capobjs * 2 : 4096;
        struct obj *n = realloc(g_objs, nc * sizeof *n);
        if (!n) {
            g_m.table_overflow++;
            return;
        }
        g_objs = n;
        g_capobjs = nc;
    }
    g_objs[g_nobjs++] = *o;
}

static void obj_drop_at(size_t i)
{
    struct obj *o = &g_objs[i];
    struct cls_stat *c = cls_get(o->cls);
    if (c) {
        if (c->live_objs)
            c->live_objs--;
        c->live_bytes -= (c->live_bytes >= o->bytes) ? o->bytes : c->live_bytes;
    }
    if (o->kind == 1) {
        g_m.vid_live_bytes -= (g_m.vid_live_bytes >= o->bytes) ? o->bytes : g_m.vid_live_bytes;
        if (g_m.vid_live_objs)
            g_m.vid_live_objs--;
        g_m.vid_freed_bytes += o->bytes;
    } else if (o->kind == 2) {
        g_m.sys_live_bytes -= (g_m.sys_live_bytes >= o->bytes) ? o->bytes : g_m.sys_live_bytes;
    }
    g_objs[i] = g_objs[--g_nobjs];
}

/* Remove handle h of client root and, recursively, its children. A freed client removes all its objects. */
static void obj_free(uint32_t root, uint32_t h, int depth)
{
    if (depth > 64)
        return;
    if (h == root) {
        for (size_t i = g_nobjs; i-- > 0;)
            if (g_objs[i].root == root)
                obj_drop_at(i);
        return;
    }
    /* children first */
    int again = 1;
    while (again) {
        again = 0;
        for (size_t i = 0; i < g_nobjs; i++) {
            if (g_objs[i].root == root && g_objs[i].parent == h && g_objs[i].handle != h) {
                uint32_t ch = g_objs[i].handle;
                obj_free(root, ch, depth + 1);
                again = 1;
                break;
            }
        }
    }
    for (size_t i = g_nobjs; i-- > 0;)
        if (g_objs[i].root == root && g_objs[i].handle == h)
            obj_drop_at(i);
}

static int is_nvidia_fd(int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISCHR(st.st_mode))
        return 0;
    return (unsigned)(st.st_rdev >> 8 & 0xfff) == NVM_NVIDIA_MAJOR; /* Linux major() for majors < 4096 */
}

static void on_alloc(uint32_t root, uint32_t parent, uint32_t handle, uint32_t cls, uint64_t params,
                     uint32_t psize, int serialized, int ok)
{
    struct cls_stat *c = cls_get(cls);
    if (!ok) {
        g_m.rm_alloc_fail++;
        if (c)
            c->fail++;
        return;
    }
    g_m.rm_alloc_ok++;
    struct obj o = {root, parent, handle, cls, 0, 0};
    if ((cls == NVM_CLASS_MEMORY_LOCAL_USER || cls == NVM_CLASS_MEMORY_SYSTEM) && params && !serialized &&
        psize >= NVM_MAP_OFF_SIZE + 8) {
        const unsigned char *p = (const unsigned char *)(uintptr_t)params;
        uint32_t flags, attr;
        uint64_t size;
        memcpy(&flags, p + NVM_MAP_OFF_FLAGS, 4);
        memcpy(&attr, p + NVM_MAP_OFF_ATTR, 4);
        memcpy(&size, p + NVM_MAP_OFF_SIZE, 8);
        if (flags & NVM_ALLOC_FLAGS_VIRTUAL) {
            g_m.vid_virtual_allocs++;
        } else if (cls == NVM_CLASS_MEMORY_LOCAL_USER) {
            o.kind = 1;
            o.bytes = size;
            g_m.vid_live_bytes += size;
            g_m.vid_alloc_bytes += size;
            g_m.vid_live_objs++;
            if (g_m.vid_live_bytes > g_m.vid_peak_bytes)
                g_m.vid_peak_bytes = g_m.vid_live_bytes;
        } else {
            o.kind = 2;
            o.bytes = size;
            g_m.sys_live_bytes += size;
        }
        if (g_trace)
            fprintf(stderr, "[meter] RM_ALLOC cls=0x%x h=0x%x parent=0x%x size=%llu flags=0x%x attr=0x%x%s\n", cls,
                    handle, parent, (unsigned long long)size, flags, attr,
                    (flags & NVM_ALLOC_FLAGS_VIRTUAL) ? " VIRTUAL" : "");
    } else if (cls == NVM_CLASS_MEMORY_LOCAL_USER || cls == NVM_CLASS_MEMORY_SYSTEM) {
        g_m.mem_unparsed++;
    }
    if (c) {
        c->ok++;
        c->live_objs++;
        c->bytes_total += o.bytes;
        c->live_bytes += o.bytes;
    }
    obj_add(&o);
}

/* Inspect one RM command (nr, arg of size sz) after the real ioctl returned rc. */
static void inspect(unsigned nr, unsigned sz, void *arg, int rc, uint64_t dt)
{
    if (nr == NVM_ESC_RM_ALLOC && (sz == sizeof(struct nvm_os21) || sz == sizeof(struct nvm_os64))) {
        pthread_mutex_lock(&g_mu);
        g_m.rm_alloc_calls++;
        g_m.rm_alloc_ns += dt;
        if (sz == sizeof(struct nvm_os21)) {
            struct nvm_os21 *a = arg;
            on_alloc(a->hRoot, a->hObjectParent, a->hObjectNew, a->hClass, a->pAllocParms, a->paramsSize, 0,
                     rc == 0 && a->status == 0);
        } else {
            struct nvm_os64 *a = arg;
            g_m.rm_alloc_os64++;
            on_alloc(a->hRoot, a->hObjectParent, a->hObjectNew, a->hClass, a->pAllocParms, a->paramsSize,
                     (a->flags & NVM_OS64_FLAGS_FINN_SERIALIZED) != 0, rc == 0 && a->status == 0);
        }
        pthread_mutex_unlock(&g_mu);
    } else if (nr == NVM_ESC_RM_FREE && sz == sizeof(struct nvm_os00)) {
        struct nvm_os00 *f = arg;
        pthread_mutex_lock(&g_mu);
        g_m.rm_free_calls++;
        if (rc == 0 && f->status == 0) {
            g_m.rm_free_ok++;
            uint64_t before = g_m.vid_live_bytes;
            obj_free(f->hRoot, f->hObjectOld, 0);
            if (g_trace && before != g_m.vid_live_bytes)
                fprintf(stderr, "[meter] RM_FREE h=0x%x video -%llu\n", f->hObjectOld,
                        (unsigned long long)(before - g_m.vid_live_bytes));
        }
        pthread_mutex_unlock(&g_mu);
    }
}

static void account(int fd, unsigned long req, void *arg, int rc, uint64_t dt, int via_syscall)
{
    __atomic_add_fetch(&g_m.ioctl_total, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&g_m.ioctl_ns, dt, __ATOMIC_RELAXED);
    if (via_syscall)
        __atomic_add_fetch(&g_m.syscall_ioctl, 1, __ATOMIC_RELAXED);
    if (!is_nvidia_fd(fd))
        return;
    unsigned nr = NVM_IOC_NR(req), sz = NVM_IOC_SIZE(req);
    __atomic_add_fetch(&g_m.ioctl_nv, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&g_m.ioctl_nv_ns, dt, __ATOMIC_RELAXED);
    if (NVM_IOC_TYPE(req) != NVM_MAGIC) {
        __atomic_add_fetch(&g_m.nv_type_other, 1, __ATOMIC_RELAXED);
        return;
    }
    __atomic_add_fetch(&g_nr_count[nr], 1, __ATOMIC_RELAXED);
    if (!arg)
        return;
    if (nr == NVM_ESC_XFER && sz == sizeof(struct nvm_xfer)) {
        struct nvm_xfer *x = arg;
        __atomic_add_fetch(&g_m.xfer, 1, __ATOMIC_RELAXED);
        if (x->ptr)
            inspect(x->cmd & 0xffu, x->size, (void *)(uintptr_t)x->ptr, rc, dt);
        return;
    }
    inspect(nr, sz, arg, rc, dt);
}

int ioctl(int fd, unsigned long req, ...)
{
    va_list ap;
    va_start(ap, req);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    pthread_once(&g_once, resolve);
    if (!real_ioctl) {
        errno = ENOSYS;
        return -1;
    }
    uint64_t t0 = now_ns();
    int rc = real_ioctl(fd, req, arg);
    uint64_t dt = now_ns() - t0;
    int saved = errno;
    account(fd, req, arg, rc, dt, 0);
    errno = saved;
    return rc;
}

long syscall(long nr, ...)
{
    va_list ap;
    long a[6];
    va_start(ap, nr);
    for (int i = 0; i < 6; i++)
        a[i] = va_arg(ap, long);
    va_end(ap);
    pthread_once(&g_once, resolve);
    if (!real_syscall) {
        errno = ENOSYS;
        return -1;
    }
    if (nr != SYS_ioctl)
        return real_syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
    uint64_t t0 = now_ns();
    long rc = real_syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
    uint64_t dt = now_ns() - t0;
    int saved = errno;
    account((int)a[0], (unsigned long)a[1], (void *)a[2], (int)rc, dt, 1);
    errno = saved;
    return rc;
}

__attribute__((visibility("default"))) int probe_meter_read(struct probe_meter *out)
{
    if (!out)
        return -1;
    pthread_mutex_lock(&g_mu);
    *out = g_m;
    out->version = PROBE_METER_VERSION;
    out->ioctl_total = __atomic_load_n(&g_m.ioctl_total, __ATOMIC_RELAXED);
    out->ioctl_nv = __atomic_load_n(&g_m.ioctl_nv, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&g_mu);
    return 0;
}

static void list_nvidia_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return;
    struct dirent *e;
    char path[300], target[256];
    fprintf(stderr, "[meter] nvidia fds:");
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(path, target, sizeof target - 1);
        if (n <= 0)
            continue;
        target[n] = 0;
        if (strncmp(target, "/dev/nvidia", 11) == 0)
            fprintf(stderr, " %s=%s", e->d_name, target);
    }
    fprintf(stderr, "\n");
    closedir(d);
}

__attribute__((destructor)) static void meter_summary(void)
{
    void *cu = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (!cu)
        return; /* not a CUDA process (e.g. a shell or nvidia-smi child): stay quiet */
    dlclose(cu);
    struct probe_meter m;
    probe_meter_read(&m);
    fprintf(stderr,
            "[meter] pid=%d ioctl_total=%llu ioctl_nv=%llu via_syscall=%llu xfer=%llu ioctl_ms=%.3f nv_ms=%.3f "
            "rm_alloc=%llu ok=%llu fail=%llu os64=%llu rm_free=%llu ok=%llu vid_live_mib=%.1f vid_peak_mib=%.1f "
            "vid_alloc_total_mib=%.1f sys_live_mib=%.1f virtual_allocs=%llu unparsed=%llu nv_type_not_F=%llu\n",
            (int)getpid(), (unsigned long long)m.ioctl_total, (unsigned long long)m.ioctl_nv,
            (unsigned long long)m.syscall_ioctl, (unsigned long long)m.xfer, m.ioctl_ns / 1e6, m.ioctl_nv_ns / 1e6,
            (unsigned long long)m.rm_alloc_calls, (unsigned long long)m.rm_alloc_ok,
            (unsigned long long)m.rm_alloc_fail, (unsigned long long)m.rm_alloc_os64,
            (unsigned long long)m.rm_free_calls, (unsigned long long)m.rm_free_ok, m.vid_live_bytes / 1048576.0,
            m.vid_peak_bytes / 1048576.0, m.vid_alloc_bytes / 1048576.0, m.sys_live_bytes / 1048576.0,
            (unsigned long long)m.vid_virtual_allocs, (unsigned long long)m.mem_unparsed,
            (unsigned long long)m.nv_type_other);
    if (m.ioctl_nv == 0)
        fprintf(stderr, "[meter] METER_BLIND: libcuda is loaded but no NVIDIA ioctl passed through libc's "
                        "ioctl/syscall: design B is impossible in-process\n");
    fprintf(stderr, "[meter] nv ioctls by escape nr:");
    for (unsigned i = 0; i < 256; i++)
        if (g_nr_count[i])
            fprintf(stderr, " 0x%02x=%llu", i, (unsigned long long)g_nr_count[i]);
    fprintf(stderr, "  (0x27 RM_ALLOC_MEMORY, 0x29 RM_FREE, 0x2a RM_CONTROL, 0x2b RM_ALLOC, 0x4a VID_HEAP_CONTROL, "
                    "0x4e MAP_MEMORY, 0x57 MAP_MEMORY_DMA, 0xd3 XFER)\n");
    pthread_mutex_lock(&g_mu);
    for (unsigned i = 0; i < g_ncls; i++)
        fprintf(stderr, "[meter] class=0x%04x ok=%llu fail=%llu bytes_total_mib=%.1f live_objs=%llu live_mib=%.1f\n",
                g_cls[i].cls, (unsigned long long)g_cls[i].ok, (unsigned long long)g_cls[i].fail,
                g_cls[i].bytes_total / 1048576.0, (unsigned long long)g_cls[i].live_objs,
                g_cls[i].live_bytes / 1048576.0);
    pthread_mutex_unlock(&g_mu);
    list_nvidia_fds();
}
