// A pressure callback takes (vg::Pressure old, vg::Pressure now): another
// signature is refused with a message saying so.
// expect: a pressure callback is called as f(vg::Pressure old, vg::Pressure now)
#include "vramguard.hpp"

void watch(vg::Pool &p)
{
#ifdef VG_MUST_FAIL
    p.on_pressure([](int level) { (void)level; });
#else
    p.on_pressure([](vg::Pressure, vg::Pressure now) { (void)now; });
#endif
}
