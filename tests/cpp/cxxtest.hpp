/*
 * cxxtest.hpp — the small test runner of the C++ binding tests.
 *
 * Why not Criterion: the same runner must work with and without exceptions
 * (-fno-exceptions) and under every sanitizer, TSan included, where
 * Criterion cannot start. Each test runs in its own process (fork), so no
 * test depends on another or on the order; a crash, a sanitizer report or a
 * timeout fails that test only. The closing line has Criterion's shape
 * ("Synthesis: Tested: N | Passing: N | Failing: N | Crashing: N"), so
 * tests/run-tests.sh counts these binaries like the C ones.
 *
 *   TEST(suite, name) { ... }   a test
 *   CHECK(cond)                 records a failure and goes on
 *   REQUIRE(cond)               records a failure and ends the test
 *   CHECK_STATUS(expr, want)    (exceptions) expr throws vg::error with status `want`
 *
 * A binary runs every test, or those whose "suite::name" contains argv[1];
 * --jobs N and --tap=FILE (run-tests.sh's Criterion options) are accepted
 * and ignored: this runner never skips, so it has no skips to report.
 */
#ifndef VG_CXXTEST_HPP
#define VG_CXXTEST_HPP

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

namespace cxxtest {

struct test_case {
    const char *suite, *name;
    void (*fn)();
};

inline std::vector<test_case> &registry()
{
    static std::vector<test_case> tests;
    return tests;
}

struct registrar {
    registrar(const char *suite, const char *name, void (*fn)())
    {
        registry().push_back({suite, name, fn});
    }
};

/* Failures of the running test (in its own process). */
inline int &failures()
{
    static int n = 0;
    return n;
}

inline void fail(const char *file, int line, const char *what)
{
    std::fprintf(stderr, "%s:%d: check failed: %s\n", file, line, what);
    failures()++;
}

/* Seconds a test may run before it counts as failed. */
constexpr unsigned timeout_s = 60;

/* Runs one test in a child process; true when it passed. *crashed is set
 * when it died by a signal (a crash, an abort, a timeout). */
inline bool run_one(const test_case &t, bool *crashed)
{
    std::fflush(nullptr);
    pid_t pid = fork();
    if (pid < 0) {
        std::perror("fork");
        *crashed = true;
        return false;
    }
    if (pid == 0) {
        alarm(timeout_s);
        t.fn();
        /* exit, not _exit: LeakSanitizer checks at exit. */
        std::exit(failures() ? 1 : 0);
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0)
        ;
    *crashed = WIFSIGNALED(st);
    if (*crashed)
        std::fprintf(stderr, "%s::%s: killed by signal %d%s\n", t.suite, t.name, WTERMSIG(st),
                     WTERMSIG(st) == SIGALRM ? " (timeout)" : "");
    return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

inline int main(int argc, char **argv)
{
    const char *filter = nullptr;
    for (int i = 1; i < argc; i++) {
        if (std::strcmp(argv[i], "--jobs") == 0 && i + 1 < argc)
            i++;
        else if (std::strncmp(argv[i], "--tap=", 6) == 0)
            continue;
        else
            filter = argv[i];
    }
    int tested = 0, passing = 0, crashing = 0;
    for (const test_case &t : registry()) {
        std::string full = std::string(t.suite) + "::" + t.name;
        if (filter && full.find(filter) == std::string::npos)
            continue;
        bool crashed = false;
        bool ok = run_one(t, &crashed);
        tested++;
        passing += ok;
        crashing += crashed;
        std::printf("[%s] %s\n", ok ? "PASS" : "FAIL", full.c_str());
    }
    /* As Criterion does, Failing counts the crashes too. */
    std::printf("[====] Synthesis: Tested: %d | Passing: %d | Failing: %d | Crashing: %d\n",
                tested, passing, tested - passing, crashing);
    return tested > 0 && passing == tested ? 0 : 1;
}

} // namespace cxxtest

#define TEST(suite, name)                                                      \
    static void cxxtest_##suite##_##name();                                    \
    static const cxxtest::registrar cxxtest_reg_##suite##_##name(              \
        #suite, #name, cxxtest_##suite##_##name);                              \
    static void cxxtest_##suite##_##name()

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond))                                                           \
            cxxtest::fail(__FILE__, __LINE__, #cond);                          \
    } while (0)

#define REQUIRE(cond)                                                          \
    do {                                                                       \
        if (!(cond)) {                                                         \
            cxxtest::fail(__FILE__, __LINE__, #cond);                          \
            std::exit(1);                                                      \
        }                                                                      \
    } while (0)

#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
/* expr must throw vg::error carrying status `want` (a vg_status_t). */
#define CHECK_STATUS(expr, want)                                             \
    do {                                                                       \
        int cxxtest_got_ = -1;                                                 \
        try {                                                                  \
            (void)(expr);                                                      \
        } catch (const vg::error &e) {                                         \
            cxxtest_got_ = e.status();                                         \
        }                                                                      \
        if (cxxtest_got_ != (want)) {                                        \
            std::fprintf(stderr, "  %s threw status %d, expected %d\n", #expr,  \
                         cxxtest_got_, (int)(want));                         \
            cxxtest::fail(__FILE__, __LINE__, #expr " throws " #want);       \
        }                                                                      \
    } while (0)
#endif

#define CXXTEST_MAIN                                                           \
    int main(int argc, char **argv) { return cxxtest::main(argc, argv); }

#endif
