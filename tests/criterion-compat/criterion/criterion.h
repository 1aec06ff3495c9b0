/*
 * criterion.h (compat) — the part of Criterion's API that tests/test_*.c use,
 * for the ThreadSanitizer build only.
 *
 * Why this exists: Criterion 2.4 (Debian libcriterion-dev) cannot start under
 * TSan: "criterion: Could not initialize inheritable arena: Resource
 * temporarily unavailable" (Snaipe/Criterion#274). For SAN=thread the Makefile
 * puts -Itests/criterion-compat ahead of the system headers and links
 * tests/criterion-compat/runner.c instead of -lcriterion. Every other build
 * uses the real Criterion; nothing here is installed or used by product code.
 *
 * Supported, with Criterion 2.4's meaning:
 *   Test(suite, name [, .init = fn, .fini = fn, .disabled = b,
 *                       .description = "text", .timeout = seconds])
 *   cr_assert[_not], cr_assert_{eq,neq,lt,leq,gt,geq}, cr_assert_[not_]null,
 *   cr_assert_str_{eq,neq}, cr_assert_float_eq, cr_assert_fail, cr_fatal,
 *   the same family as cr_expect_* (non-fatal), cr_fail, cr_skip_test,
 *   cr_log_{info,warn,error}.
 * Every check takes optional trailing printf arguments whose format must be a
 * string literal (as in all our tests): cr_expect_eq(a, b, "byte %zu", i).
 * Each operand is evaluated exactly once. A check in a thread other than the
 * test's own thread works; a fatal one there ends the test process at once
 * (without .fini), since it cannot unwind another thread's stack.
 * Anything else (parameterized tests, theories, the new assert API) is
 * deliberately missing, so a test using it fails to compile under TSan
 * instead of silently doing nothing.
 */
#ifndef CRITERION_COMPAT_CRITERION_H
#define CRITERION_COMPAT_CRITERION_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

/* One registered test. Filled by Test(); read only by runner.c. */
struct cr_compat_test {
    const char *suite;
    const char *name;
    const char *file;
    int line;
    void (*fn)(void);
    void (*init)(void);        /* .init: runs before fn in the test process */
    void (*fini)(void);        /* .fini: runs after fn, also after a failed cr_assert */
    bool disabled;             /* .disabled: listed and reported as a skip */
    const char *description;   /* .description: shown by --list */
    double timeout;            /* .timeout: seconds; 0 means the runner's default */
    struct cr_compat_test *next; /* registration list, owned by runner.c */
};

/* Adds t to the list of tests; called from constructors, before main. */
void cr_compat_register(struct cr_compat_test *t);

/* Reports a failed check at file:line. expr is the default text, fmt a
 * format whose first character is a placeholder (see CR_COMPAT_MSG); an
 * empty message after it means "no user message". A fatal failure does not
 * return. */
enum cr_compat_kind { CR_COMPAT_EXPECT, CR_COMPAT_ASSERT };
void cr_compat_fail(enum cr_compat_kind kind, const char *file, int line,
                    const char *expr, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
void cr_compat_fail_str(enum cr_compat_kind kind, const char *file, int line,
                        const char *expr, const char *actual, const char *expected,
                        const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));
/* Ends the test as skipped; does not return. */
void cr_compat_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* cr_log_*: level is "INFO", "WARN" or "ERR ". */
void cr_compat_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The optional user message: " " glued to the caller's literal format keeps
 * the format non-empty (no -Wformat-zero-length) when there is none; the
 * runner drops that first character. */
#define CR_COMPAT_MSG(...) " " __VA_ARGS__

#define Test(Suite, Name, ...)                                                  \
    static void cr_compat_fn_##Suite##_##Name(void);                            \
    static struct cr_compat_test cr_compat_t_##Suite##_##Name = {               \
        .suite = #Suite, .name = #Name, .file = __FILE__, .line = __LINE__,     \
        .fn = cr_compat_fn_##Suite##_##Name, __VA_ARGS__};                      \
    __attribute__((constructor)) static void cr_compat_reg_##Suite##_##Name(void) \
    {                                                                           \
        cr_compat_register(&cr_compat_t_##Suite##_##Name);                      \
    }                                                                           \
    static void cr_compat_fn_##Suite##_##Name(void)

/* The one place a condition is checked: cond is evaluated once. */
#define CR_COMPAT_CHECK(kind, cond, text, ...)                                  \
    do {                                                                        \
        if (!(cond))                                                            \
            cr_compat_fail(kind, __FILE__, __LINE__, text, CR_COMPAT_MSG(__VA_ARGS__)); \
    } while (0)

#define CR_COMPAT_CMP(kind, a, op, b, ...)                                      \
    CR_COMPAT_CHECK(kind, (a) op (b), "The expression (" #a ") " #op " (" #b ") is false.", __VA_ARGS__)

#define CR_COMPAT_STR(kind, a, op, b, ...)                                      \
    do {                                                                        \
        const char *cr_compat_a_ = (a), *cr_compat_b_ = (b);                    \
        if (!(strcmp(cr_compat_a_, cr_compat_b_) op 0))                         \
            cr_compat_fail_str(kind, __FILE__, __LINE__,                        \
                               "The expression (as strings) (" #a ") " #op " (" #b ") is false", \
                               cr_compat_a_, cr_compat_b_, CR_COMPAT_MSG(__VA_ARGS__)); \
    } while (0)

#define CR_COMPAT_FLOAT(kind, a, b, eps, ...)                                   \
    do {                                                                        \
        double cr_compat_a_ = (a), cr_compat_b_ = (b), cr_compat_e_ = (eps);    \
        if (!(cr_compat_b_ - cr_compat_a_ <= cr_compat_e_ &&                    \
              cr_compat_a_ - cr_compat_b_ <= cr_compat_e_))                     \
            cr_compat_fail(kind, __FILE__, __LINE__,                            \
                           "The expression (" #a ") == (" #b ") within (" #eps ") is false.", \
                           CR_COMPAT_MSG(__VA_ARGS__));                         \
    } while (0)

#define cr_assert(cond, ...)          CR_COMPAT_CHECK(CR_COMPAT_ASSERT, cond, "The expression " #cond " is false.", __VA_ARGS__)
#define cr_assert_not(cond, ...)      CR_COMPAT_CHECK(CR_COMPAT_ASSERT, !(cond), "The expression !(" #cond ") is false.", __VA_ARGS__)
#define cr_assert_eq(a, b, ...)       CR_COMPAT_CMP(CR_COMPAT_ASSERT, a, ==, b, __VA_ARGS__)
#define cr_assert_neq(a, b, ...)      CR_COMPAT_CMP(CR_COMPAT_ASSERT, a, !=, b, __VA_ARGS__)
#define cr_assert_lt(a, b, ...)       CR_COMPAT_CMP(CR_COMPAT_ASSERT, a, <, b, __VA_ARGS__)
#define cr_assert_leq(a, b, ...)      CR_COMPAT_CMP(CR_COMPAT_ASSERT, a, <=, b, __VA_ARGS__)
#define cr_assert_gt(a, b, ...)       CR_COMPAT_CMP(CR_COMPAT_ASSERT, a, >, b, __VA_ARGS__)
#define cr_assert_geq(a, b, ...)      CR_COMPAT_CMP(CR_COMPAT_ASSERT, a, >=, b, __VA_ARGS__)
#define cr_assert_null(p, ...)        CR_COMPAT_CHECK(CR_COMPAT_ASSERT, (p) == NULL, #p " is not null.", __VA_ARGS__)
#define cr_assert_not_null(p, ...)    CR_COMPAT_CHECK(CR_COMPAT_ASSERT, (p) != NULL, #p " is null.", __VA_ARGS__)
#define cr_assert_str_eq(a, b, ...)   CR_COMPAT_STR(CR_COMPAT_ASSERT, a, ==, b, __VA_ARGS__)
#define cr_assert_str_neq(a, b, ...)  CR_COMPAT_STR(CR_COMPAT_ASSERT, a, !=, b, __VA_ARGS__)
#define cr_assert_float_eq(a, b, eps, ...) CR_COMPAT_FLOAT(CR_COMPAT_ASSERT, a, b, eps, __VA_ARGS__)
#define cr_assert_fail(...)           cr_compat_fail(CR_COMPAT_ASSERT, __FILE__, __LINE__, "The test failed.", CR_COMPAT_MSG(__VA_ARGS__))

#define cr_expect(cond, ...)          CR_COMPAT_CHECK(CR_COMPAT_EXPECT, cond, "The expression " #cond " is false.", __VA_ARGS__)
#define cr_expect_not(cond, ...)      CR_COMPAT_CHECK(CR_COMPAT_EXPECT, !(cond), "The expression !(" #cond ") is false.", __VA_ARGS__)
#define cr_expect_eq(a, b, ...)       CR_COMPAT_CMP(CR_COMPAT_EXPECT, a, ==, b, __VA_ARGS__)
#define cr_expect_neq(a, b, ...)      CR_COMPAT_CMP(CR_COMPAT_EXPECT, a, !=, b, __VA_ARGS__)
#define cr_expect_lt(a, b, ...)       CR_COMPAT_CMP(CR_COMPAT_EXPECT, a, <, b, __VA_ARGS__)
#define cr_expect_leq(a, b, ...)      CR_COMPAT_CMP(CR_COMPAT_EXPECT, a, <=, b, __VA_ARGS__)
#define cr_expect_gt(a, b, ...)       CR_COMPAT_CMP(CR_COMPAT_EXPECT, a, >, b, __VA_ARGS__)
#define cr_expect_geq(a, b, ...)      CR_COMPAT_CMP(CR_COMPAT_EXPECT, a, >=, b, __VA_ARGS__)
#define cr_expect_null(p, ...)        CR_COMPAT_CHECK(CR_COMPAT_EXPECT, (p) == NULL, #p " is not null.", __VA_ARGS__)
#define cr_expect_not_null(p, ...)    CR_COMPAT_CHECK(CR_COMPAT_EXPECT, (p) != NULL, #p " is null.", __VA_ARGS__)
#define cr_expect_str_eq(a, b, ...)   CR_COMPAT_STR(CR_COMPAT_EXPECT, a, ==, b, __VA_ARGS__)
#define cr_expect_str_neq(a, b, ...)  CR_COMPAT_STR(CR_COMPAT_EXPECT, a, !=, b, __VA_ARGS__)
#define cr_expect_float_eq(a, b, eps, ...) CR_COMPAT_FLOAT(CR_COMPAT_EXPECT, a, b, eps, __VA_ARGS__)
#define cr_expect_fail(...)           cr_compat_fail(CR_COMPAT_EXPECT, __FILE__, __LINE__, "The test failed.", CR_COMPAT_MSG(__VA_ARGS__))

/* Criterion's newer spellings: cr_fail records, cr_fatal stops. */
#define cr_fail(...)                  cr_expect_fail(__VA_ARGS__)
#define cr_fatal(...)                 cr_assert_fail(__VA_ARGS__)

#define cr_skip_test(...)             cr_compat_skip(CR_COMPAT_MSG(__VA_ARGS__))
#define cr_log_info(...)              cr_compat_log("----", __VA_ARGS__)
#define cr_log_warn(...)              cr_compat_log("WARN", __VA_ARGS__)
#define cr_log_error(...)             cr_compat_log("ERR ", __VA_ARGS__)

#endif
