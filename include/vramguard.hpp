/*
 * vramguard.hpp — C++17 wrappers over vramguard.h, header-only.
 *
 * Nothing here adds behaviour to the engine: every call is one vg_ function
 * of the C API, and what that function documents (limits, caching, pressure
 * levels, thread safety) holds unchanged. What the wrappers add is ownership
 * and error reporting:
 *
 *  - vg::Pool owns a vg_pool_t; vg::DeviceMemory owns one allocation (a
 *    vg_buf_t) and frees it in its destructor. A DeviceMemory shares
 *    ownership of its pool's state, so the pool is destroyed only after its
 *    last Pool and DeviceMemory are gone: no allocation can outlive its pool.
 *    Both are movable, neither is copyable; a moved-from object is empty.
 *  - Errors: with exceptions enabled, the plain calls throw vg::error (a
 *    std::system_error whose code() is the vg status in vg::category(), and
 *    whose what() ends with vg_strerror's text). Every throwing call has an
 *    overload taking a trailing std::error_code& instead, which reports the
 *    vg status there and throws nothing of its own; it is the only form
 *    declared when the code is built with -fno-exceptions.
 *    Factories (Pool::create, DeviceMemory::allocate, ::aligned, ::zeroed)
 *    return an empty object when they fail that way. Running out of host
 *    memory for the wrappers' own bookkeeping is std::bad_alloc, as in the
 *    standard library (an abort without exceptions).
 *  - Thread safety is the C API's: a Pool may be used from many threads at
 *    once; a DeviceMemory is owned by one caller (concurrent const use is
 *    fine). Pressure callbacks run on the thread whose allocation or free
 *    changed the level; they must not throw (a throw ends the program
 *    through std::terminate, since it would cross C frames).
 *
 * Link with -lvramguard, as for the C API.
 */
#ifndef VRAMGUARD_HPP
#define VRAMGUARD_HPP

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

/* In C++ the C header's vg_pool_stats() (and two more functions named like
 * their struct) "hide the constructor" of the struct under -Wshadow; the
 * names are the C API's, so the warning is silenced for this include only. */
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wshadow"
#endif
#include "vramguard.h"
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#if defined(__cpp_exceptions) || defined(__EXCEPTIONS) || defined(_CPPUNWIND)
#define VG_HPP_EXCEPTIONS 1
#else
#define VG_HPP_EXCEPTIONS 0
#endif

namespace vg {

/* ---------------------------------------------------------------- errors */

/* The C API's status codes, from its one list: vg::errc::VG_ENOMEM == 2. */
enum class errc : int {
#define VG_HPP_ENUM_(name, value, msg) name = value,
    VG_ERRORS(VG_HPP_ENUM_)
#undef VG_HPP_ENUM_
};

namespace detail {
class category_impl final : public std::error_category {
  public:
    const char *name() const noexcept override { return "vramguard"; }
    std::string message(int status) const override { return vg_strerror(status); }
};
} // namespace detail

/* The category of every vg status: message() is vg_strerror(). */
inline const std::error_category &category() noexcept
{
    static const detail::category_impl c;
    return c;
}

inline std::error_code make_error_code(errc e) noexcept
{
    return {static_cast<int>(e), category()};
}

} // namespace vg

namespace std {
template <> struct is_error_code_enum<vg::errc> : true_type {};
} // namespace std

namespace vg {

namespace detail {
/* status -> ec; true when the status is VG_OK (and ec is then cleared). */
inline bool set(std::error_code &ec, int status) noexcept
{
    if (status == VG_OK) {
        ec.clear();
        return true;
    }
    ec.assign(status, category());
    return false;
}
} // namespace detail

#if VG_HPP_EXCEPTIONS
/* What the throwing calls throw: code() is the vg status (category()),
 * status() the same as an int, what() "<call>: <vg_strerror text>". */
class error : public std::system_error {
  public:
    error(int status, const char *call) : std::system_error(status, category(), call) {}
    int status() const noexcept { return code().value(); }
};

namespace detail {
inline void throw_if(const std::error_code &ec, const char *call)
{
    if (ec)
        throw error(ec.value(), call);
}
} // namespace detail
#endif

/* ------------------------------------------------------------ devices */

/* Fail-fast start-up: true when the CUDA driver loads and a device exists
 * (vg_available, well under 100 ms, cached). `why` says why not. */
inline bool available(std::error_code &why) noexcept
{
    return detail::set(why, vg_available());
}

inline bool available() noexcept
{
    std::error_code ignored;
    return available(ignored);
}

/* --------------------------------------------------------- pressure */

enum class Pressure : int {
    low = VG_PRESSURE_LOW,
    medium = VG_PRESSURE_MEDIUM,
    high = VG_PRESSURE_HIGH,
    critical = VG_PRESSURE_CRITICAL,
};

/* "low", "medium", "high", "critical". */
inline const char *to_string(Pressure p) noexcept
{
    return vg_pressure_name(static_cast<int>(p));
}

/* The C struct, as vg_pool_stats fills it (live_bytes, used, peak, ...). */
using PoolStats = vg_pool_stats_t;

/* Why a request would be refused now: the C report and its one-line
 * summary (vg_pool_explain). */
struct Explanation {
    vg_refusal_t detail{};
    std::string summary;
};

/* How an allocation is made: alignment (0 = the driver's default, else a
 * power of two >= 256), zero fill, a purpose tag (first 31 bytes kept). */
class AllocOptions {
  public:
    AllocOptions &align(std::size_t bytes) noexcept { opts_.align = bytes; return *this; }
    AllocOptions &zeroed(bool on = true) noexcept
    {
        opts_.flags = on ? (opts_.flags | VG_ALLOC_ZERO) : (opts_.flags & ~unsigned{VG_ALLOC_ZERO});
        return *this;
    }
    AllocOptions &tag(std::string text)
    {
        tag_ = std::move(text);
        return *this;
    }
    /* The C options; valid while this object lives unchanged. */
    vg_alloc_opts_t c_opts() const noexcept
    {
        vg_alloc_opts_t o = opts_;
        o.tag = tag_.empty() ? nullptr : tag_.c_str();
        return o;
    }

  private:
    vg_alloc_opts_t opts_{};
    std::string tag_;
};

/* -------------------------------------------------------------- pools */

class DeviceMemory;

namespace detail {
/* A pressure callback of any callable type, move-only ones included. */
struct pressure_fn {
    virtual ~pressure_fn() = default;
    virtual void call(Pressure old_level, Pressure new_level) = 0;
};

template <class F> struct pressure_fn_of final : pressure_fn {
    F f;
    explicit pressure_fn_of(F &&fn) : f(std::move(fn)) {}
    explicit pressure_fn_of(const F &fn) : f(fn) {}
    void call(Pressure old_level, Pressure new_level) override { f(old_level, new_level); }
};

/* What a Pool and its DeviceMemory share: the C pool and the callbacks it
 * calls. Callbacks are kept at stable addresses (the C pool holds a pointer
 * to each) until the C pool is destroyed, here, by the last owner. */
struct pool_state {
    vg_pool_t *pool = nullptr;
    std::mutex lock; /* guards callbacks (registration from many threads) */
    std::vector<std::unique_ptr<pressure_fn>> callbacks;

    pool_state() = default;
    pool_state(const pool_state &) = delete;
    pool_state &operator=(const pool_state &) = delete;
    ~pool_state() { vg_pool_destroy(pool, nullptr); }

    /* noexcept: an exception from a callback cannot cross the C frames
     * that call it, so it ends the program (std::terminate). */
    static void trampoline(vg_pool_t *, vg_pressure_t old_level, vg_pressure_t new_level,
                           void *user) noexcept
    {
        static_cast<pressure_fn *>(user)->call(static_cast<Pressure>(old_level),
                                               static_cast<Pressure>(new_level));
    }
};
} // namespace detail

/* A budgeted pool on one device (vg_pool_create). Movable, not copyable. */
class Pool {
  public:
    /* An empty pool: every call on it fails with VG_EINVAL. */
    Pool() noexcept = default;

#if VG_HPP_EXCEPTIONS
    /* Device `device`, at most `limit_bytes` held. Throws vg::error. */
    Pool(int device, std::uint64_t limit_bytes)
    {
        std::error_code ec;
        *this = create(device, limit_bytes, ec);
        detail::throw_if(ec, "vg_pool_create");
    }
#endif

    static Pool create(int device, std::uint64_t limit_bytes, std::error_code &ec)
    {
        Pool p;
        /* The shared state first: once vg_pool_create succeeds nothing else
         * can fail, and the state's destructor owns the C pool. */
        auto s = std::make_shared<detail::pool_state>();
        if (detail::set(ec, vg_pool_create(device, limit_bytes, &s->pool)))
            p.state_ = std::move(s);
        return p;
    }

    Pool(Pool &&) noexcept = default;
    Pool &operator=(Pool &&) noexcept = default;
    Pool(const Pool &) = delete;
    Pool &operator=(const Pool &) = delete;
    ~Pool() = default;

    explicit operator bool() const noexcept { return state_ != nullptr; }
    /* The C pool, for calls the wrappers do not cover; nullptr when empty. */
    vg_pool_t *native() const noexcept { return state_ ? state_->pool : nullptr; }

    PoolStats stats(std::error_code &ec) const noexcept
    {
        PoolStats s{};
        detail::set(ec, vg_pool_stats(native(), &s));
        return s;
    }

    /* Bytes the pool may still allocate (limit - use). */
    std::uint64_t available(std::error_code &ec) const noexcept
    {
        std::uint64_t n = 0;
        detail::set(ec, vg_pool_available(native(), &n));
        return n;
    }

    /* Low < 50% <= Medium < 80% <= High < 95% <= Critical (of the limit). */
    Pressure pressure() const noexcept { return static_cast<Pressure>(vg_pool_pressure(native())); }

    /* Releases cached memory down to `keep_bytes`; returns the bytes given
     * back to the driver. */
    std::uint64_t trim(std::uint64_t keep_bytes, std::error_code &ec) noexcept
    {
        std::uint64_t released = 0;
        detail::set(ec, vg_pool_trim(native(), keep_bytes, &released));
        return released;
    }

    /* Why a request of `requested` bytes would be refused now. */
    Explanation explain(std::uint64_t requested, std::error_code &ec) const
    {
        Explanation e;
        char line[512];
        line[0] = '\0';
        if (detail::set(ec, vg_pool_explain(native(), requested, &e.detail, line, sizeof line)))
            e.summary = line;
        return e;
    }

    /* Calls f(old_level, new_level) on each level change (at most 8
     * callbacks a pool; VG_ENOMEM after that). f may be any callable; it is
     * kept until the pool is destroyed, and must not throw. */
    template <class F> void on_pressure(F &&f, std::error_code &ec)
    {
        using fn_t = std::decay_t<F>;
        static_assert(std::is_invocable_v<fn_t &, Pressure, Pressure>,
                      "a pressure callback is called as f(vg::Pressure old, vg::Pressure now)");
        if (!state_) {
            detail::set(ec, VG_EINVAL);
            return;
        }
        auto fn = std::make_unique<detail::pressure_fn_of<fn_t>>(std::forward<F>(f));
        std::lock_guard<std::mutex> g(state_->lock);
        /* Room first, so that once the C pool holds the callback nothing
         * can fail; a refused registration leaves no callback behind. */
        state_->callbacks.reserve(state_->callbacks.size() + 1);
        if (detail::set(ec, vg_pool_on_pressure(state_->pool, &detail::pool_state::trampoline,
                                                fn.get())))
            state_->callbacks.push_back(std::move(fn));
    }

    /* Frees an allocation handed out by DeviceMemory::release(). */
    void free(vg_devptr_t ptr, std::error_code &ec) noexcept
    {
        detail::set(ec, vg_pool_free(native(), ptr));
    }

#if VG_HPP_EXCEPTIONS
    PoolStats stats() const
    {
        std::error_code ec;
        PoolStats s = stats(ec);
        detail::throw_if(ec, "vg_pool_stats");
        return s;
    }
    std::uint64_t available() const
    {
        std::error_code ec;
        std::uint64_t n = available(ec);
        detail::throw_if(ec, "vg_pool_available");
        return n;
    }
    std::uint64_t trim(std::uint64_t keep_bytes = 0)
    {
        std::error_code ec;
        std::uint64_t r = trim(keep_bytes, ec);
        detail::throw_if(ec, "vg_pool_trim");
        return r;
    }
    Explanation explain(std::uint64_t requested) const
    {
        std::error_code ec;
        Explanation e = explain(requested, ec);
        detail::throw_if(ec, "vg_pool_explain");
        return e;
    }
    template <class F> void on_pressure(F &&f)
    {
        std::error_code ec;
        on_pressure(std::forward<F>(f), ec);
        detail::throw_if(ec, "vg_pool_on_pressure");
    }
    void free(vg_devptr_t ptr)
    {
        std::error_code ec;
        free(ptr, ec);
        detail::throw_if(ec, "vg_pool_free");
    }
#endif

  private:
    friend class DeviceMemory;
    std::shared_ptr<detail::pool_state> state_;
};

/* ------------------------------------------------------ device memory */

/* One allocation from a Pool (a vg_buf_t): freed by the destructor, or
 * handed over by release(). Movable, not copyable; a moved-from object is
 * empty (size() 0, ptr() 0) and every copy on it fails with VG_EINVAL. */
class DeviceMemory {
  public:
    DeviceMemory() noexcept = default;

#if VG_HPP_EXCEPTIONS
    /* `bytes` of device memory from `pool`. Throws vg::error (VG_ENOMEM
     * over the budget, VG_EINVAL for 0 bytes or a bad alignment). */
    DeviceMemory(Pool &pool, std::size_t bytes, const AllocOptions &opts = AllocOptions())
    {
        std::error_code ec;
        *this = allocate(pool, bytes, opts, ec);
        detail::throw_if(ec, "vg_buf_create");
    }

    static DeviceMemory aligned(Pool &pool, std::size_t bytes, std::size_t alignment)
    {
        return DeviceMemory(pool, bytes, AllocOptions().align(alignment));
    }

    static DeviceMemory zeroed(Pool &pool, std::size_t bytes)
    {
        return DeviceMemory(pool, bytes, AllocOptions().zeroed());
    }
#endif

    static DeviceMemory allocate(Pool &pool, std::size_t bytes, const AllocOptions &opts,
                                 std::error_code &ec) noexcept
    {
        DeviceMemory m;
        if (!pool.state_) {
            detail::set(ec, VG_EINVAL);
            return m;
        }
        vg_alloc_opts_t o = opts.c_opts();
        if (detail::set(ec, vg_buf_create(pool.state_->pool, bytes, &o, &m.buf_)))
            m.pool_ = pool.state_;
        return m;
    }

    static DeviceMemory aligned(Pool &pool, std::size_t bytes, std::size_t alignment,
                                std::error_code &ec)
    {
        return allocate(pool, bytes, AllocOptions().align(alignment), ec);
    }

    static DeviceMemory zeroed(Pool &pool, std::size_t bytes, std::error_code &ec)
    {
        return allocate(pool, bytes, AllocOptions().zeroed(), ec);
    }

    DeviceMemory(DeviceMemory &&o) noexcept
        : pool_(std::move(o.pool_)), buf_(std::exchange(o.buf_, nullptr))
    {
    }
    DeviceMemory &operator=(DeviceMemory &&o) noexcept
    {
        if (this != &o) {
            reset();
            buf_ = std::exchange(o.buf_, nullptr);
            pool_ = std::move(o.pool_);
        }
        return *this;
    }
    DeviceMemory(const DeviceMemory &) = delete;
    DeviceMemory &operator=(const DeviceMemory &) = delete;
    ~DeviceMemory() { reset(); }

    /* Frees the allocation now (a no-op when empty). */
    void reset() noexcept
    {
        vg_buf_destroy(&buf_);
        pool_.reset();
    }

    /* Hands the allocation to the caller, who frees it with Pool::free()
     * (or vg_pool_free) while the pool lives; this object becomes empty.
     * Returns 0 when empty. */
    vg_devptr_t release() noexcept
    {
        vg_devptr_t p = 0;
        if (vg_buf_release(&buf_, &p) != VG_OK)
            return 0;
        pool_.reset();
        return p;
    }

    explicit operator bool() const noexcept { return buf_ != nullptr; }
    std::size_t size() const noexcept { return vg_buf_size(buf_); }
    vg_devptr_t ptr() const noexcept { return vg_buf_ptr(buf_); }
    /* The device address as a T* (for kernels; not dereferenceable on the
     * host). nullptr when empty. */
    template <class T> T *get() const noexcept
    {
        return reinterpret_cast<T *>(static_cast<std::uintptr_t>(ptr()));
    }

    /* Host -> device: `n` bytes at byte `offset`. VG_ERANGE when
     * offset + n passes the end (nothing is copied then). */
    void copy_from_host(const void *src, std::size_t n, std::size_t offset,
                        std::error_code &ec) noexcept
    {
        detail::set(ec, vg_buf_write(buf_, offset, src, n));
    }
    /* Device -> host: `n` bytes from byte `offset`, bounds as above. */
    void copy_to_host(void *dst, std::size_t n, std::size_t offset,
                      std::error_code &ec) const noexcept
    {
        detail::set(ec, vg_buf_read(buf_, offset, dst, n));
    }
    template <class T>
    void copy_from_host(const std::vector<T> &src, std::size_t offset,
                        std::error_code &ec) noexcept
    {
        static_assert(std::is_trivially_copyable_v<T>, "device copies are bytewise");
        copy_from_host(src.data(), src.size() * sizeof(T), offset, ec);
    }
    template <class T>
    void copy_to_host(std::vector<T> &dst, std::size_t offset, std::error_code &ec) const noexcept
    {
        static_assert(std::is_trivially_copyable_v<T>, "device copies are bytewise");
        copy_to_host(dst.data(), dst.size() * sizeof(T), offset, ec);
    }

#if VG_HPP_EXCEPTIONS
    void copy_from_host(const void *src, std::size_t n, std::size_t offset = 0)
    {
        std::error_code ec;
        copy_from_host(src, n, offset, ec);
        detail::throw_if(ec, "vg_buf_write");
    }
    void copy_to_host(void *dst, std::size_t n, std::size_t offset = 0) const
    {
        std::error_code ec;
        copy_to_host(dst, n, offset, ec);
        detail::throw_if(ec, "vg_buf_read");
    }
    template <class T> void copy_from_host(const std::vector<T> &src, std::size_t offset = 0)
    {
        std::error_code ec;
        copy_from_host(src, offset, ec);
        detail::throw_if(ec, "vg_buf_write");
    }
    template <class T> void copy_to_host(std::vector<T> &dst, std::size_t offset = 0) const
    {
        std::error_code ec;
        copy_to_host(dst, offset, ec);
        detail::throw_if(ec, "vg_buf_read");
    }
#endif

  private:
    /* Holds the pool alive while the buffer exists; reset() frees the
     * buffer before letting go of it. */
    std::shared_ptr<detail::pool_state> pool_;
    vg_buf_t *buf_ = nullptr;
};

} // namespace vg

#endif /* VRAMGUARD_HPP */
