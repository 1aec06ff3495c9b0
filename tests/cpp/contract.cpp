// The C++ binding's contract, exactly as a user writes it (README): a 1 MiB
// aligned allocation freed at its closing brace leaves nothing live.
#include "vramguard.hpp"
int main() {
  vg::Pool pool(0, 64ull << 20);                                   // device 0, 64 MiB budget
  { auto m = vg::DeviceMemory::aligned(pool, 1 << 20, 4096); }     // freed at the closing brace
  return pool.stats().live_bytes == 0 ? 0 : 1;                     // vg_pool_stats_t underneath
}
