// A Pool owns its C pool: copying it must not compile.
// expect: use of deleted function
#include <utility>
#include "vramguard.hpp"

void take(vg::Pool &p)
{
#ifdef VG_MUST_FAIL
    vg::Pool other = p;
#else
    vg::Pool other = std::move(p);
#endif
    (void)other;
}
