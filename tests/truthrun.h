/*
 * truthrun.h — the budget as the device itself counts it: runs a client
 * (tests/clients/client_METHOD.c) under the preload shim with a budget,
 * against the test driver and NVML's test double, and reads its line: the
 * codes the calls returned, then the driver's own high-water mark of real
 * use (peak=). Shared by test_truth.c and test_graph.c; include it after
 * clientrun.h and testutil.h.
 */
#ifndef VG_TRUTHRUN_H
#define VG_TRUTHRUN_H

#include <stdio.h>
#include <stdlib.h>

#define OUT_OF_MEMORY 2 /* CUDA_ERROR_OUT_OF_MEMORY */
#define TRUTH_ENV_MAX 6

typedef struct truth {
    run_result_t r;
    const char *line; /* the client's "path=CASE ..." line */
    char what[128];   /* names the run in messages */
} truth_t;

/* "LD_LIBRARY_PATH=" the test driver and NVML's test double (free it). */
static inline char *truth_libpath(void)
{
    char *nvml = cat3(build_dir(), "/fakenvml", "");
    char *fake = cat3(build_dir(), "/fakecuda:", nvml);
    char *libpath = cat3("LD_LIBRARY_PATH=", fake, "");
    free(fake);
    free(nvml);
    return libpath;
}

/* Runs client_METHOD CASE under the shim with `budget` and `env`
 * ("NAME=value", NULL-terminated, at most TRUTH_ENV_MAX), NVML's test
 * double on the path; asserts it ran and answered. */
static inline void run_truth_client(truth_t *t, const char *method, const char *c,
                                    const char *budget, const char *const *env)
{
    char *libpath = truth_libpath();
    run_opts_t o = {.method = method, .path = c, .budget = budget, .env = {libpath}};
    for (int i = 0; env && env[i] && i < TRUTH_ENV_MAX; i++)
        o.env[i + 1] = env[i];
    snprintf(t->what, sizeof t->what, "%s under %s", c, budget);
    run_client(&o, &t->r);
    free(libpath);
    cr_assert_eq(t->r.status, 0, "%s: client exited %d\nstdout: %s\nstderr: %s", t->what,
                 t->r.status, t->r.out, t->r.err);
    t->line = line_for(t->r.out, c);
    cr_assert_not_null(t->line, "%s: no answer\nstdout: %s\nstderr: %s", t->what, t->r.out,
                       t->r.err);
}

static inline long long get(const truth_t *t, const char *key)
{
    long long v = field(t->line, key);
    cr_assert_neq(v, -1, "%s: no %s in: %s", t->what, key, t->line);
    return v;
}

static inline void expect_rc(const truth_t *t, const char *key, long long want)
{
    long long got = get(t, key);
    cr_expect_eq(got, want, "%s: %s=%lld, want %lld\n  %s", t->what, key, got, want, t->line);
}

/* The driver's high-water mark stayed within `limit` bytes. */
static inline void expect_peak_within(const truth_t *t, unsigned long long limit)
{
    long long peak = get(t, "peak");
    cr_expect_leq(peak, (long long)limit,
                  "%s: the device held %lld bytes (%.1f MiB), over the budget of %llu (%.1f MiB)"
                  "\n  %s",
                  t->what, peak, (double)peak / MiB, limit, (double)limit / MiB, t->line);
}

#endif /* VG_TRUTHRUN_H */
