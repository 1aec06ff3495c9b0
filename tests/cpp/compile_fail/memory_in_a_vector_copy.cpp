// Copying a container of DeviceMemory must not compile either.
// expect: must be constructible from input type
#include <utility>
#include <vector>
#include "vramguard.hpp"

std::vector<vg::DeviceMemory> take(std::vector<vg::DeviceMemory> &v)
{
#ifdef VG_MUST_FAIL
    std::vector<vg::DeviceMemory> copy = v;
#else
    std::vector<vg::DeviceMemory> copy = std::move(v);
#endif
    return copy;
}
