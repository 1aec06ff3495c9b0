/*
 * bindings_gpu.cpp — the C++ binding (include/vramguard.hpp) on a real GPU,
 * under a budget: fail-fast start-up, a pool's limit and the device budget
 * (VRAMGUARD_BUDGET, set by tests/gpu/bindings.sh) refusing with vg::error,
 * a 64 MiB round trip through device memory, bounds errors, RAII giving
 * everything back, and pressure callbacks. One RESULT row per check
 * (gpu_common.h); tests/gpu/bindings.sh runs it.
 */
#include <cstdint>
#include <cstring>
#include <string>
#include <system_error>
#include <vector>

#include "gpu_common.h"
#include "vramguard.hpp"

/* Runs `fn`, which must throw vg::error with `want`; the status it got. */
template <class F> static int status_of(F &&fn)
{
    try {
        fn();
    } catch (const vg::error &e) {
        return e.status();
    }
    return VG_OK;
}

static void check_pool_limit()
{
    vg::Pool pool(0, 256 * MIB);
    vg::DeviceMemory a(pool, 200 * MIB);
    int st = status_of([&] { vg::DeviceMemory b(pool, 100 * MIB); });
    vg::PoolStats s = pool.stats();
    gpu_check("cpp_pool_limit", st == VG_ENOMEM && s.used <= 256 * MIB,
              "200 MiB held, +100 MiB in a 256 MiB pool: %s; used %.0f MiB",
              vg_err_name(st), (double)s.used / MIB);
}

static void check_device_budget()
{
    vg_device_stats_t d;
    if (vg_device_stats(0, &d) != VG_OK || d.budget == UINT64_MAX) {
        gpu_row("cpp_device_budget", "FAIL", "no VRAMGUARD_BUDGET in effect (run through bindings.sh)");
        return;
    }
    /* The pool's own limit is 4x the budget, so only the device budget can
     * refuse the second request; a quarter leaves room for the context's
     * memory, which the budget also counts. */
    vg::Pool pool(0, 4 * d.budget);
    std::error_code ec;
    auto first = vg::DeviceMemory::allocate(pool, (size_t)(d.budget / 4), vg::AllocOptions(), ec);
    auto second = vg::DeviceMemory::allocate(pool, (size_t)d.budget, vg::AllocOptions(), ec);
    gpu_check("cpp_device_budget", first && !second && ec == vg::errc::VG_ENOMEM,
              "budget %.0f MiB: a quarter %s, then the whole budget more: %s", (double)d.budget / MIB,
              first ? "held" : "REFUSED", ec ? ec.message().c_str() : "granted");
}

static void check_round_trip()
{
    vg::Pool pool(0, 256 * MIB);
    auto m = vg::DeviceMemory::aligned(pool, 64 * MIB, 4096);
    std::vector<uint32_t> in(64 * MIB / 4), out(in.size());
    for (size_t i = 0; i < in.size(); i++)
        in[i] = (uint32_t)(i * 2654435761u);
    m.copy_from_host(in);
    m.copy_to_host(out);
    uint32_t four = 0;
    int st = status_of([&] { m.copy_from_host(&four, 4, m.size() - 2); });
    gpu_check("cpp_round_trip", in == out && m.ptr() % 4096 == 0 && st == VG_ERANGE,
              "64 MiB written and read back %s; 4 bytes at size-2: %s",
              in == out ? "equal" : "DIFFERENT", vg_err_name(st));
}

static void check_raii()
{
    vg::Pool pool(0, 256 * MIB);
    {
        std::vector<vg::DeviceMemory> held;
        for (int i = 0; i < 32; i++)
            held.emplace_back(pool, (size_t)(i % 2 ? 4096 : 3 * MIB));
    }
    uint64_t live = pool.stats().live_bytes;
    pool.trim(0);
    uint64_t used = pool.stats().used;
    gpu_check("cpp_raii", live == 0 && used == 0,
              "after the scope: live_bytes %llu, used after trim %llu",
              (unsigned long long)live, (unsigned long long)used);
}

static void check_pressure()
{
    vg::Pool pool(0, 100 * MIB);
    int highs = 0;
    pool.on_pressure([&highs](vg::Pressure, vg::Pressure now) { highs += now == vg::Pressure::high; });
    {
        vg::DeviceMemory m(pool, 90 * MIB);
        gpu_check("cpp_pressure", pool.pressure() == vg::Pressure::high && highs == 1,
                  "90 MiB of 100: level %s, callbacks at high: %d", vg::to_string(pool.pressure()), highs);
    }
}

int main()
{
    std::error_code why;
    if (!vg::available(why)) {
        gpu_row("cpp_available", "FAIL", "%s", why.message().c_str());
        return 1;
    }
    gpu_row("cpp_available", "PASS", "vg::available()");
    try {
        check_pool_limit();
        check_device_budget();
        check_round_trip();
        check_raii();
        check_pressure();
    } catch (const std::exception &e) {
        gpu_row("cpp_exception", "FAIL", "unexpected: %s", e.what());
    }
    return gpu_failures ? 1 : 0;
}
