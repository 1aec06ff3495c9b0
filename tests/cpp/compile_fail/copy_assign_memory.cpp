// DeviceMemory owns its allocation: copy-assigning it must not compile.
// expect: use of deleted function
#include <utility>
#include "vramguard.hpp"

void take(vg::DeviceMemory &a, vg::DeviceMemory &b)
{
#ifdef VG_MUST_FAIL
    a = b;
#else
    a = std::move(b);
#endif
}
