// Built with -fno-exceptions, the throwing constructor does not exist: the
// error_code factory is the only way to make a pool.
// flags: -fno-exceptions
// expect: no matching function for call to
#include <system_error>
#include "vramguard.hpp"

bool make()
{
#ifdef VG_MUST_FAIL
    vg::Pool p(0, 64ull << 20);
#else
    std::error_code ec;
    vg::Pool p = vg::Pool::create(0, 64ull << 20, ec);
#endif
    return bool(p);
}
