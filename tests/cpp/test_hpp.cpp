/*
 * test_hpp.cpp — include/vramguard.hpp with exceptions, over the test
 * driver: RAII on scope exit and on unwinding, moves, bounds errors as
 * exceptions, the error's status and text, constructors that throw half-way,
 * pressure callbacks of any callable, trim, explain, release, and a pool
 * shared by threads. Copies not compiling is tests/cpp/compile_fail's job.
 */
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <spawn.h>
#include <sys/wait.h>

#include "cxxtest.hpp"
#include "testutil.h"
#include "vramguard.hpp"

static_assert(VG_HPP_EXCEPTIONS == 1, "this file tests the throwing API");

static vg::PoolStats stats_of(const vg::Pool &p) { return p.stats(); }

TEST(hpp, available_says_yes_over_the_test_driver)
{
    std::error_code why = vg::errc::VG_EINVAL;
    CHECK(vg::available());
    CHECK(vg::available(why));
    CHECK(!why);
}

TEST(hpp, a_missing_driver_is_reported_as_enodriver)
{
    setenv("VRAMGUARD_LIBCUDA", "/nonexistent/libcuda.so.1", 1);
    std::error_code why;
    CHECK(!vg::available(why));
    CHECK(why == vg::errc::VG_ENODRIVER);
    CHECK(why.message() == vg_strerror(VG_ENODRIVER));
    CHECK(std::string(why.category().name()) == "vramguard");
    CHECK_STATUS(vg::Pool(0, MiB), VG_ENODRIVER);
}

TEST(hpp, the_contract_program_runs_as_written)
{
    const char *build = getenv("VG_TEST_BUILD");
    REQUIRE(build != nullptr);
    std::string path = std::string(build) + "/tests/cpp/contract";
    char *argv[] = {const_cast<char *>(path.c_str()), nullptr};
    pid_t pid;
    REQUIRE(posix_spawn(&pid, path.c_str(), nullptr, nullptr, argv, environ) == 0);
    int st = 0;
    REQUIRE(waitpid(pid, &st, 0) == pid);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

TEST(hpp, memory_is_freed_at_the_closing_brace)
{
    vg::Pool pool(0, 64 * MiB);
    {
        vg::DeviceMemory m(pool, MiB);
        CHECK(m.size() == MiB);
        CHECK(m.ptr() != 0);
        CHECK(stats_of(pool).live_count == 1);
        CHECK(stats_of(pool).live_bytes == MiB);
    }
    CHECK(stats_of(pool).live_count == 0);
    CHECK(stats_of(pool).live_bytes == 0);
    CHECK(stats_of(pool).frees == 1);
}

TEST(hpp, memory_is_freed_when_an_exception_unwinds_past_it)
{
    vg::Pool pool(0, 64 * MiB);
    bool caught = false;
    try {
        vg::DeviceMemory m(pool, 3 * MiB);
        CHECK(stats_of(pool).live_bytes == 3 * MiB);
        throw std::runtime_error("unwind");
    } catch (const std::runtime_error &) {
        caught = true;
    }
    CHECK(caught);
    CHECK(stats_of(pool).live_count == 0);
}

TEST(hpp, the_last_owner_gives_every_byte_back_to_the_driver)
{
    REQUIRE(vg::available());
    uint64_t before = fake_used(0);
    {
        vg::Pool pool(0, 64 * MiB);
        vg::DeviceMemory big(pool, 8 * MiB);
        vg::DeviceMemory small(pool, 4096); /* served from a cached chunk */
        CHECK(fake_used(0) >= before + 8 * MiB + 4096);
    }
    CHECK(fake_used(0) == before);
}

struct two_buffers {
    vg::DeviceMemory a, b;
    two_buffers(vg::Pool &p, size_t first, size_t second) : a(p, first), b(p, second) {}
};

TEST(hpp, a_constructor_that_throws_half_way_leaks_nothing)
{
    vg::Pool pool(0, MiB);
    CHECK_STATUS(two_buffers(pool, 512 * 1024, 2 * MiB), VG_ENOMEM);
    vg::PoolStats s = stats_of(pool);
    CHECK(s.live_count == 0);
    CHECK(s.allocs == 1);
    CHECK(s.refusals >= 1);
    two_buffers ok(pool, 256 * 1024, 256 * 1024); /* the budget is whole again */
    CHECK(stats_of(pool).live_count == 2);
}

TEST(hpp, errors_carry_the_status_and_the_strerror_text)
{
    vg::Pool pool(0, MiB);
    try {
        vg::DeviceMemory m(pool, 2 * MiB);
        CHECK(!"over the budget, the constructor must throw");
    } catch (const vg::error &e) {
        CHECK(e.status() == VG_ENOMEM);
        CHECK(e.code() == vg::errc::VG_ENOMEM);
        CHECK(e.code().category() == vg::category());
        CHECK(std::strstr(e.what(), vg_strerror(VG_ENOMEM)) != nullptr);
        CHECK(std::strstr(e.what(), "vg_buf_create") != nullptr);
    }
    /* a vg::error is a std::system_error, so generic handlers see it */
    CHECK_STATUS(vg::Pool(0, 0), VG_EINVAL);
    bool generic = false;
    try {
        vg::Pool p(0, 0);
    } catch (const std::system_error &e) {
        generic = e.code().value() == VG_EINVAL;
    }
    CHECK(generic);
}

TEST(hpp, a_move_leaves_the_source_empty)
{
    vg::Pool pool(0, 64 * MiB);
    vg::DeviceMemory a(pool, 4096);
    vg_devptr_t p = a.ptr();
    vg::DeviceMemory b(std::move(a));
    CHECK(!a);
    CHECK(a.size() == 0 && a.ptr() == 0);
    CHECK(b && b.ptr() == p && b.size() == 4096);
    CHECK(stats_of(pool).live_count == 1);
    char c = 1;
    CHECK_STATUS(a.copy_from_host(&c, 1), VG_EINVAL); /* moved-from: empty */

    vg::DeviceMemory d(pool, 8192);
    CHECK(stats_of(pool).live_count == 2);
    d = std::move(b); /* d's own allocation is freed first */
    CHECK(!b);
    CHECK(d.ptr() == p);
    CHECK(stats_of(pool).live_count == 1);
    d.reset();
    CHECK(!d);
    CHECK(stats_of(pool).live_count == 0);
}

TEST(hpp, a_moved_pool_is_empty_and_its_memory_stays_valid)
{
    vg::Pool a(0, 64 * MiB);
    vg::DeviceMemory m(a, 4096);
    vg::Pool b(std::move(a));
    CHECK(!a);
    CHECK(a.native() == nullptr);
    CHECK_STATUS(a.stats(), VG_EINVAL);
    CHECK_STATUS(vg::DeviceMemory(a, 4096), VG_EINVAL);
    CHECK(stats_of(b).live_count == 1);
    const char msg[] = "still here";
    m.copy_from_host(msg, sizeof msg);
    char back[sizeof msg] = {0};
    m.copy_to_host(back, sizeof back);
    CHECK(std::memcmp(back, msg, sizeof msg) == 0);
}

TEST(hpp, memory_keeps_its_pool_alive)
{
    vg::DeviceMemory m;
    {
        vg::Pool p(0, MiB);
        m = vg::DeviceMemory(p, 4096);
    }
    /* the Pool object is gone, the C pool is not: m is still usable
     * (ASan would report a use after free otherwise) */
    uint32_t v = 0xfeedf00d, back = 0;
    m.copy_from_host(&v, sizeof v, 16);
    m.copy_to_host(&back, sizeof back, 16);
    CHECK(back == v);
}

TEST(hpp, bounds_errors_are_exceptions_and_copy_nothing)
{
    vg::Pool pool(0, 64 * MiB);
    vg::DeviceMemory m(pool, 4096);
    std::vector<uint8_t> ones(4096, 1), back(4096, 0);
    m.copy_from_host(ones);
    uint8_t two[2] = {2, 2};
    CHECK_STATUS(m.copy_from_host(two, 2, 4095), VG_ERANGE);
    CHECK_STATUS(m.copy_from_host(two, 1, 4096), VG_ERANGE);
    CHECK_STATUS(m.copy_from_host(two, 2, SIZE_MAX), VG_ERANGE);
    CHECK_STATUS(m.copy_to_host(two, 2, 4095), VG_ERANGE);
    std::vector<uint8_t> too_big(4097);
    CHECK_STATUS(m.copy_from_host(too_big), VG_ERANGE);
    CHECK_STATUS(m.copy_to_host(too_big), VG_ERANGE);
    m.copy_to_host(back);
    CHECK(back == ones); /* the refused writes changed nothing */
    m.copy_from_host(two, 2, 4094); /* the last two bytes are in bounds */
    m.copy_to_host(back);
    CHECK(back[4093] == 1 && back[4094] == 2 && back[4095] == 2);
}

TEST(hpp, vectors_round_trip_at_an_offset)
{
    vg::Pool pool(0, 64 * MiB);
    vg::DeviceMemory m(pool, 64 * sizeof(float));
    std::vector<float> in(16), out(16);
    for (size_t i = 0; i < in.size(); i++)
        in[i] = 0.5f * (float)i;
    m.copy_from_host(in, 32 * sizeof(float));
    m.copy_to_host(out, 32 * sizeof(float));
    CHECK(out == in);
}

TEST(hpp, aligned_honours_the_alignment)
{
    vg::Pool pool(0, 64 * MiB);
    auto m = vg::DeviceMemory::aligned(pool, MiB + 1, 65536);
    CHECK(m.ptr() % 65536 == 0);
    CHECK(m.size() == MiB + 1);
    CHECK_STATUS(vg::DeviceMemory::aligned(pool, 4096, 100), VG_EINVAL);
    CHECK_STATUS(vg::DeviceMemory(pool, 0), VG_EINVAL);
}

/* n blocks of 4 KiB, each filled with `fill` unless zeroed is asked;
 * returns how many read back with a first byte of 0xab and collects their
 * addresses. The blocks are freed on return (back to the pool's cache). */
static int blocks_reading_ab(vg::Pool &pool, int n, bool zeroed, int fill,
                             std::vector<vg_devptr_t> *ptrs)
{
    std::vector<vg::DeviceMemory> held;
    std::vector<uint8_t> page(4096);
    int ab = 0;
    for (int i = 0; i < n; i++) {
        held.emplace_back(pool, 4096, vg::AllocOptions().zeroed(zeroed));
        held.back().copy_to_host(page);
        ab += page[0] == 0xab;
        if (zeroed)
            CHECK(std::count(page.begin(), page.end(), 0) == 4096);
        if (fill >= 0) {
            std::fill(page.begin(), page.end(), (uint8_t)fill);
            held.back().copy_from_host(page);
        }
        ptrs->push_back(held.back().ptr());
    }
    return ab;
}

TEST(hpp, zeroed_memory_reads_back_as_zeros)
{
    vg::Pool pool(0, 64 * MiB);
    std::vector<vg_devptr_t> dirty, plain, zeroed;
    blocks_reading_ab(pool, 600, false, 0xab, &dirty);
    /* Without the flag, reused blocks show what was left in them: the
     * check below can see stale bytes. */
    CHECK(blocks_reading_ab(pool, 600, false, 0xab, &plain) > 0);
    CHECK(blocks_reading_ab(pool, 600, true, -1, &zeroed) == 0);
    std::sort(dirty.begin(), dirty.end());
    int reused = 0;
    for (vg_devptr_t p : zeroed)
        reused += std::binary_search(dirty.begin(), dirty.end(), p);
    CHECK(reused > 0);
}

TEST(hpp, release_hands_the_pointer_back)
{
    vg::Pool pool(0, 64 * MiB);
    vg::DeviceMemory m(pool, 4096);
    vg_devptr_t p = m.ptr();
    CHECK(m.release() == p);
    CHECK(!m);
    CHECK(m.release() == 0);
    CHECK(stats_of(pool).live_count == 1); /* released, not freed */
    pool.free(p);
    CHECK(stats_of(pool).live_count == 0);
    CHECK_STATUS(pool.free(p), VG_ENOTFOUND);
}

TEST(hpp, get_is_the_device_address_typed)
{
    vg::Pool pool(0, 64 * MiB);
    vg::DeviceMemory m(pool, 4096);
    CHECK(reinterpret_cast<uintptr_t>(m.get<float>()) == m.ptr());
    CHECK(m.get<float>() != nullptr);
    vg::DeviceMemory empty;
    CHECK(empty.get<int>() == nullptr);
}

TEST(hpp, pressure_callbacks_fire_on_every_level_change)
{
    vg::Pool pool(0, 100 * MiB);
    std::vector<std::pair<vg::Pressure, vg::Pressure>> seen;
    pool.on_pressure([&seen](vg::Pressure from, vg::Pressure to) { seen.emplace_back(from, to); });
    auto count = std::make_unique<int>(0); /* a move-only callable works too */
    pool.on_pressure([c = std::move(count), &seen](vg::Pressure, vg::Pressure) {
        ++*c;
        if (*c == 4)
            seen.emplace_back(vg::Pressure::low, vg::Pressure::low); /* marks the 4th call */
    });
    CHECK(pool.pressure() == vg::Pressure::low);
    {
        vg::DeviceMemory a(pool, 60 * MiB);
        CHECK(pool.pressure() == vg::Pressure::medium);
        vg::DeviceMemory b(pool, 25 * MiB);
        CHECK(pool.pressure() == vg::Pressure::high);
        vg::DeviceMemory c(pool, 11 * MiB);
        CHECK(pool.pressure() == vg::Pressure::critical);
    }
    CHECK(pool.pressure() == vg::Pressure::low);
    using P = vg::Pressure;
    std::vector<std::pair<P, P>> want = {{P::low, P::medium},     {P::medium, P::high},
                                         {P::high, P::critical}};
    REQUIRE(seen.size() >= 4);
    CHECK((std::vector<std::pair<P, P>>(seen.begin(), seen.begin() + 3) == want));
    CHECK(seen.back().second == P::low);
    CHECK(std::string(vg::to_string(P::critical)) == "critical");
}

TEST(hpp, a_ninth_callback_is_refused_and_kept_nowhere)
{
    vg::Pool pool(0, 100 * MiB);
    auto calls = std::make_shared<std::atomic<int>>(0);
    for (int i = 0; i < 8; i++)
        pool.on_pressure([calls](vg::Pressure, vg::Pressure) { ++*calls; });
    CHECK_STATUS(pool.on_pressure([calls](vg::Pressure, vg::Pressure) { *calls += 1000; }),
                 VG_ENOMEM);
    CHECK(calls.use_count() == 9); /* the refused one was destroyed */
    vg::DeviceMemory m(pool, 60 * MiB);
    CHECK(*calls == 8);
}

TEST(hpp, trim_gives_cached_chunks_back)
{
    vg::Pool pool(0, 64 * MiB);
    {
        std::vector<vg::DeviceMemory> small;
        for (int i = 0; i < 64; i++)
            small.emplace_back(pool, 4096);
    }
    vg::PoolStats s = stats_of(pool);
    REQUIRE(s.cached > 0);
    CHECK(pool.trim(0) == s.cached);
    CHECK(stats_of(pool).cached == 0);
    CHECK(stats_of(pool).used == 0);
}

TEST(hpp, explain_names_the_limit_and_the_newest_tags)
{
    vg::Pool pool(0, MiB);
    vg::DeviceMemory m(pool, 512 * 1024, vg::AllocOptions().tag("activations"));
    vg::Explanation e = pool.explain(2 * MiB);
    CHECK(e.detail.requested == 2 * MiB);
    CHECK(e.detail.limit == MiB);
    CHECK(e.detail.used >= 512 * 1024);
    REQUIRE(e.detail.recent_count >= 1);
    CHECK(std::string(e.detail.recent[0].tag) == "activations");
    CHECK(!e.summary.empty());
    CHECK(pool.available() == MiB - stats_of(pool).used);
}

TEST(hpp, one_pool_serves_many_threads_within_its_budget)
{
    vg::Pool pool(0, 16 * MiB); /* 8 threads x up to 4 MiB: some are refused */
    std::atomic<int> refused{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; t++)
        threads.emplace_back([&pool, &refused, t] {
            for (int i = 0; i < 200; i++) {
                std::error_code ec;
                auto m = vg::DeviceMemory::allocate(pool, (size_t)(1 + (t * 7 + i) % 16) * 256 * 1024,
                                                    vg::AllocOptions(), ec);
                if (ec)
                    refused += ec == vg::errc::VG_ENOMEM;
                else
                    m.copy_from_host(&i, sizeof i);
            }
        });
    for (auto &th : threads)
        th.join();
    vg::PoolStats s = stats_of(pool);
    CHECK(s.live_count == 0);
    CHECK(s.peak <= 16 * MiB);
    CHECK(s.refusals >= (uint64_t)refused.load()); /* the engine counts each attempt */
}

CXXTEST_MAIN
