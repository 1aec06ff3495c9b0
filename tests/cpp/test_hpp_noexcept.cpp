/*
 * test_hpp_noexcept.cpp — include/vramguard.hpp built with -fno-exceptions:
 * the std::error_code overloads carry every status, factories return empty
 * objects on failure, and RAII works the same. The Makefile builds this file
 * with -fno-exceptions; the static_asserts below fail if it is not.
 */
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cxxtest.hpp"
#include "testutil.h"
#include "vramguard.hpp"

static_assert(VG_HPP_EXCEPTIONS == 0, "build this file with -fno-exceptions");
/* Without exceptions the throwing constructors are not declared at all. */
static_assert(!std::is_constructible_v<vg::Pool, int, uint64_t>, "no throwing Pool constructor");
static_assert(!std::is_constructible_v<vg::DeviceMemory, vg::Pool &, size_t>,
              "no throwing DeviceMemory constructor");
static_assert(std::is_nothrow_move_constructible_v<vg::DeviceMemory>);
static_assert(!std::is_copy_constructible_v<vg::DeviceMemory>);
static_assert(!std::is_copy_assignable_v<vg::Pool>);

static vg::Pool pool_of(uint64_t limit)
{
    std::error_code ec;
    vg::Pool p = vg::Pool::create(0, limit, ec);
    REQUIRE(!ec);
    REQUIRE(p);
    return p;
}

static uint64_t live_count(const vg::Pool &p)
{
    std::error_code ec;
    vg::PoolStats s = p.stats(ec);
    REQUIRE(!ec);
    return s.live_count;
}

TEST(hpp_noexcept, create_reports_failures_through_the_error_code)
{
    std::error_code ec;
    vg::Pool bad = vg::Pool::create(0, 0, ec);
    CHECK(ec == vg::errc::VG_EINVAL);
    CHECK(ec.message() == vg_strerror(VG_EINVAL));
    CHECK(!bad);
    vg::Pool good = vg::Pool::create(0, MiB, ec);
    CHECK(!ec); /* success clears the code */
    CHECK(good);
    vg::Pool nodev = vg::Pool::create(7, MiB, ec);
    CHECK(ec == vg::errc::VG_ENODEV);
    CHECK(!nodev);
}

TEST(hpp_noexcept, over_the_budget_is_enomem_and_an_empty_object)
{
    vg::Pool pool = pool_of(MiB);
    std::error_code ec;
    vg::DeviceMemory m = vg::DeviceMemory::allocate(pool, 2 * MiB, vg::AllocOptions(), ec);
    CHECK(ec == vg::errc::VG_ENOMEM);
    CHECK(!m);
    CHECK(m.size() == 0);
    vg::DeviceMemory bad = vg::DeviceMemory::aligned(pool, 4096, 3, ec);
    CHECK(ec == vg::errc::VG_EINVAL);
    CHECK(!bad);
    vg::DeviceMemory ok = vg::DeviceMemory::aligned(pool, 4096, 4096, ec);
    CHECK(!ec);
    CHECK(ok.ptr() % 4096 == 0);
}

TEST(hpp_noexcept, memory_is_freed_at_scope_exit)
{
    vg::Pool pool = pool_of(64 * MiB);
    {
        std::error_code ec;
        vg::DeviceMemory m = vg::DeviceMemory::zeroed(pool, MiB, ec);
        REQUIRE(!ec);
        CHECK(live_count(pool) == 1);
    }
    CHECK(live_count(pool) == 0);
}

TEST(hpp_noexcept, bounds_errors_are_erange_and_copy_nothing)
{
    vg::Pool pool = pool_of(64 * MiB);
    std::error_code ec;
    vg::DeviceMemory m = vg::DeviceMemory::zeroed(pool, 4096, ec);
    REQUIRE(!ec);
    uint8_t two[2] = {7, 7};
    m.copy_from_host(two, 2, 4095, ec);
    CHECK(ec == vg::errc::VG_ERANGE);
    CHECK(ec.message() == vg_strerror(VG_ERANGE));
    std::vector<uint8_t> back(4096, 1);
    m.copy_to_host(back, 0, ec);
    CHECK(!ec);
    CHECK(back[4095] == 0); /* the refused write wrote nothing */
    m.copy_to_host(two, 2, SIZE_MAX, ec);
    CHECK(ec == vg::errc::VG_ERANGE);
    m.copy_from_host(two, 2, 4094, ec);
    CHECK(!ec);
}

TEST(hpp_noexcept, an_empty_pool_answers_einval_everywhere)
{
    vg::Pool empty;
    std::error_code ec;
    (void)empty.stats(ec);
    CHECK(ec == vg::errc::VG_EINVAL);
    ec.clear();
    (void)empty.trim(0, ec);
    CHECK(ec == vg::errc::VG_EINVAL);
    ec.clear();
    (void)empty.explain(1, ec);
    CHECK(ec == vg::errc::VG_EINVAL);
    ec.clear();
    empty.on_pressure([](vg::Pressure, vg::Pressure) {}, ec);
    CHECK(ec == vg::errc::VG_EINVAL);
    ec.clear();
    vg::DeviceMemory m = vg::DeviceMemory::allocate(empty, 4096, vg::AllocOptions(), ec);
    CHECK(ec == vg::errc::VG_EINVAL);
    CHECK(!m);
    CHECK(empty.pressure() == vg::Pressure::low);
}

TEST(hpp_noexcept, pressure_trim_explain_and_free_work_through_error_codes)
{
    vg::Pool pool = pool_of(100 * MiB);
    std::error_code ec;
    int changes = 0;
    pool.on_pressure([&changes](vg::Pressure, vg::Pressure) { changes++; }, ec);
    REQUIRE(!ec);
    {
        vg::DeviceMemory a = vg::DeviceMemory::allocate(pool, 60 * MiB, vg::AllocOptions(), ec);
        REQUIRE(!ec);
        CHECK(pool.pressure() == vg::Pressure::medium);
        vg::Explanation e = pool.explain(50 * MiB, ec);
        CHECK(!ec);
        CHECK(e.detail.used >= 60 * MiB);
        CHECK(!e.summary.empty());
    }
    CHECK(changes == 2);
    vg::DeviceMemory s = vg::DeviceMemory::allocate(pool, 4096, vg::AllocOptions(), ec);
    REQUIRE(!ec);
    vg_devptr_t p = s.release();
    pool.free(p, ec);
    CHECK(!ec);
    pool.free(p, ec);
    CHECK(ec == vg::errc::VG_ENOTFOUND);
    uint64_t released = pool.trim(0, ec);
    CHECK(!ec);
    CHECK(released > 0); /* the 4 KiB block's chunk */
    CHECK(pool.stats(ec).used == 0);
}

CXXTEST_MAIN
