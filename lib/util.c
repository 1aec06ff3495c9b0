/*
 * util.c — small services every engine file uses: clocks, the cached thread
 * id, human-readable sizes and the one stderr logger.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "vg_base.h"

uint64_t vg__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts); /* vDSO: no syscall */
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t vg__now_coarse_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts); /* vDSO, no counter read */
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t vg__mono_coarse_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts); /* same base, tick resolution */
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t vg__mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* gettid is a syscall; pay it once per thread. A forked child's main thread
 * inherits the parent's cached value, so the atfork handler in engine.c
 * resets it through vg__tid_reset(). */

uint32_t vg__tid_slow(void)
{
    vg__me.tid = (uint32_t)syscall(SYS_gettid);
    return vg__me.tid;
}

void vg__tid_reset(void)
{
    vg__me.tid = 0;
}

char *vg__fmt_bytes(uint64_t bytes, char *buf, size_t len)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    if (bytes < 1024) {
        snprintf(buf, len, "%llu B", (unsigned long long)bytes);
        return buf;
    }
    double v = (double)bytes;
    int u = 0;
    /* The unit is chosen after rounding to two places: 1023.996 KiB
     * prints as 1.00 MiB, not 1024.00 KiB. */
    while (v >= 1024.0 - 0.005 && u < 6) {
        v /= 1024.0;
        u++;
    }
    snprintf(buf, len, "%.2f %s", v, units[u]);
    return buf;
}

void vg__log(const char *fmt, ...)
{
    char line[512];
    int n = snprintf(line, sizeof line, "vramguard: ");
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    /* One write(2) per line so lines from several threads never interleave. */
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

int vg__self_exe(char *out, size_t len)
{
    static const char mark[] = " (deleted)"; /* the kernel's, see proc(5) */
    const size_t m = sizeof mark - 1;
    if (len < 2) {
        errno = ENAMETOOLONG;
        return VG_ESYS;
    }
    ssize_t n = readlink("/proc/self/exe", out, len - 1);
    if (n < 0)
        return VG_ESYS;
    if ((size_t)n >= len - 1) {
        errno = ENAMETOOLONG;
        return VG_ESYS;
    }
    out[n] = '\0';
    /* The file was replaced (an upgrade, a rebuild) or removed since this
     * process started; a file whose name really ends so is still there. */
    if ((size_t)n > m && strcmp(out + n - m, mark) == 0 && access(out, F_OK) != 0)
        out[n - m] = '\0';
    return VG_OK;
}
