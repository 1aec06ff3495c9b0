// DeviceMemory owns its allocation: copying it must not compile.
// expect: use of deleted function
#include <utility>
#include "vramguard.hpp"

void take(vg::DeviceMemory &m)
{
#ifdef VG_MUST_FAIL
    vg::DeviceMemory other(m);
#else
    vg::DeviceMemory other(std::move(m));
#endif
    (void)other;
}
