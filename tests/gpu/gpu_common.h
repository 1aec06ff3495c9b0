/*
 * gpu_common.h — what the GPU check programs share: the one result-line
 * format run.sh collects, a monotonic clock, and percentiles.
 *
 * Every check prints exactly one line
 *     RESULT|<check>|<PASS|FAIL|info>|<detail>
 * on stdout (flushed at once, so a crash later still leaves the rows that
 * were done). run.sh turns them into the summary table; anything else a
 * program prints goes only to the log.
 */
#ifndef VG_GPU_COMMON_H
#define VG_GPU_COMMON_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define GIB (1ull << 30)
#define MIB (1ull << 20)
#define KIB (1ull << 10)

static int gpu_failures;

static inline void gpu_row(const char *check, const char *status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static inline void gpu_row(const char *check, const char *status, const char *fmt, ...)
{
    char detail[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    for (char *p = detail; *p; p++) /* keep the row one line, one field */
        if (*p == '|' || *p == '\n')
            *p = '/';
    if (status[0] == 'F')
        gpu_failures++;
    printf("RESULT|%s|%s|%s\n", check, status, detail);
    fflush(stdout);
}

/* A PASS or FAIL row from a condition. */
#define gpu_check(check, cond, ...) gpu_row((check), (cond) ? "PASS" : "FAIL", __VA_ARGS__)

static inline uint64_t gpu_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline int gpu_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* The q-quantile (0..1) of v[0..n), nearest rank; sorts v. */
static inline uint64_t gpu_quantile(uint64_t *v, size_t n, double q)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof *v, gpu_cmp_u64);
    size_t i = (size_t)(q * (double)(n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

static inline double gpu_gib(uint64_t bytes) { return (double)bytes / (double)GIB; }

#endif /* VG_GPU_COMMON_H */
