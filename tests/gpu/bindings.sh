#!/usr/bin/env bash
# tests/gpu/bindings.sh — the C++ and Rust bindings on the machine with the
# GPU; builds nothing (tests/gpu/build.sh made BUILD_DIR elsewhere). Runs
# bindings_cpp (tests/gpu/bindings_gpu.cpp, over include/vramguard.hpp) and
# bindings_rust (bindings/rust/examples/gpu_check.rs) against the real
# driver with VRAMGUARD_BUDGET set, each under its own timeout, and prints
# their RESULT rows as one table, then the PASS/FAIL count. Same conventions
# as run.sh (tests/gpu/common.sh). About 10 seconds.
#
#   tests/gpu/bindings.sh [BUILD_DIR]      BUILD_DIR: build/gpu, or build (then build/gpu)
#
# Each program checks: vg::available / vramguard::available; a 256 MiB pool
# refusing 100 MiB more after 200 MiB; the device budget refusing what a
# pool's own limit would allow; a 64 MiB round trip and a bounds error;
# RAII / Drop giving every byte back; a pressure callback at High.
#
# env: OUT      when set, bindings.log (everything) and bindings.md (the table) are written there
#      LIBCUDA_DIR  folder holding libcuda.so.1 (default /usr/local/nvidia/lib64
#               when it exists; a tests/fakecuda build runs the suite without a GPU)
#      BUDGET   the VRAMGUARD_BUDGET the programs run under (2GiB)
#      SUITE_DEADLINE (120)
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/gpu/common.sh
. "$HERE/common.sh"
B=${1:-build/gpu}
[ -x "$B/bindings_cpp" ] || { [ -x "$B/gpu/bindings_cpp" ] && B=$B/gpu; }
for f in bindings_cpp bindings_rust libvramguard.so.0; do
    if [ ! -e "$B/$f" ]; then
        echo "bindings.sh: no $f in '$B' (run tests/gpu/build.sh on the build machine and carry it)" >&2
        exit 2
    fi
done
B=$(cd "$B" && pwd)
DEADLINE=${SUITE_DEADLINE:-120}
BUDGET_TEXT=${BUDGET:-2GiB}

find_libcuda
unset LD_PRELOAD CUDA_DEVICE_MEMORY_LIMIT
for v in $(env | sed -n 's/^\(VRAMGUARD_[A-Z_]*\)=.*/\1/p'); do unset "$v"; done
# The programs find libvramguard.so.0 beside them, after the driver.
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$B

WORK=$(mktemp -d /tmp/vgbind.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
init_files bindings.log
gpu_header "# vramguard GPU checks: the C++ and Rust bindings"

scn_env() { envs=(env VRAMGUARD_BUDGET="$BUDGET_TEXT"); }

run_scn bindings_cpp "budget $BUDGET_TEXT" 60 "$B/bindings_cpp"
run_scn bindings_rust "budget $BUDGET_TEXT" 60 "$B/bindings_rust"

TABLE=$WORK/bindings.md
TABLE_DETAIL_MAX=200
{
    echo
    echo "## vramguard GPU checks, the bindings: $(date -u '+%Y-%m-%d') ${GPU_LINE:-(no nvidia-smi)}"
    echo
    echo "Command: tests/gpu/bindings.sh ${1:-build/gpu} (VRAMGUARD_BUDGET=$BUDGET_TEXT)"
    echo
    results_section
    table_end
} >"$TABLE"
finish "$TABLE"
