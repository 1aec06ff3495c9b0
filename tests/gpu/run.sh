#!/usr/bin/env bash
# tests/gpu/run.sh — every GPU check, on the machine with the GPU; builds
# nothing (tests/gpu/build.sh made BUILD_DIR elsewhere). Each scenario runs
# under its own timeout, natively and under the preload shim with
# VRAMGUARD_BUDGET=2GiB; the whole suite stops starting scenarios after
# SUITE_DEADLINE seconds (default 440). The summary table comes last. The
# runner, the row files and the table parts are in tests/gpu/common.sh.
#
#   tests/gpu/run.sh [BUILD_DIR]      BUILD_DIR: build/gpu, or build (then build/gpu)
#
# env: OUT      when set, gpu.log (everything) and table.md are written there
#      LIBCUDA_DIR  folder holding libcuda.so.1 (default /usr/local/nvidia/lib64
#               when it exists; point it at a tests/fakecuda build to try the
#               suite without a GPU)
#      PYTHON   (python3)    SUITE_DEADLINE (440)
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/gpu/common.sh
. "$HERE/common.sh"
B=${1:-build/gpu}
[ -x "$B/gpu_api" ] || { [ -x "$B/gpu/gpu_api" ] && B=$B/gpu; }
if [ ! -x "$B/gpu_api" ] || [ ! -f "$B/libvramguard-preload.so" ]; then
    echo "run.sh: no GPU build in '$B' (run tests/gpu/build.sh on the build machine and carry it)" >&2
    exit 2
fi
B=$(cd "$B" && pwd)
PRELOAD=$B/libvramguard-preload.so
PYTHON=${PYTHON:-python3}
DEADLINE=${SUITE_DEADLINE:-440}
BUDGET_TEXT=2GiB
BUDGET=$((2 << 30))
CAP=$((3 << 30))   # native runs stop here: the budget, not the card, must be what stops a shim run

find_libcuda
unset LD_PRELOAD VRAMGUARD_BUDGET CUDA_DEVICE_MEMORY_LIMIT PYTORCH_CUDA_ALLOC_CONF \
      XLA_PYTHON_CLIENT_PREALLOCATE

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
init_files gpu.log
gpu_header "# vramguard GPU checks"

# run_scn NAME MODE TIMEOUT CMD... (common.sh): MODE native: no preload, no
# budget; shim: the preload and VRAMGUARD_BUDGET; shim-nobudget: the preload
# alone (must behave as native); test-driver, null-driver: the hooked-call
# benchmark over tests/fakecuda, tests/nulldriver; anything else (e.g.
# sanitizer): the environment as it is. The whole output goes to the log.
scn_env() {
    case $1 in
    native) envs=(env -u LD_PRELOAD -u VRAMGUARD_BUDGET) ;;
    shim) envs=(env LD_PRELOAD="$PRELOAD" VRAMGUARD_BUDGET=$BUDGET_TEXT) ;;
    shim-nobudget) envs=(env -u VRAMGUARD_BUDGET LD_PRELOAD="$PRELOAD") ;;
    test-driver) envs=(env LD_LIBRARY_PATH="$B/fakecuda") ;;
    null-driver) envs=(env LD_LIBRARY_PATH="$B/nulldriver") ;;
    *) envs=(env) ;;
    esac
}
scn_collect() { # BENCH rows, tagged with the driver they ran over
    local tag=""
    [ "$1" = test-driver ] && tag="[over the test driver] "
    [ "$1" = null-driver ] && tag="[over the null driver] "
    collect BENCH "$BENCH" "$2" "$tag"
}

# ------------------------------------------------------------ C programs
run_scn gpu_api native 90 "$B/gpu_api"
run_scn driver_paths native 60 "$B/driver_paths" --cap 48
run_scn graph_probe native 60 "$B/graph_probe"
run_scn driver_paths shim 60 "$B/driver_paths" --cap 48 --budget $BUDGET
run_scn driver_paths shim-nobudget 60 "$B/driver_paths" --cap 48
run_scn static_cudart_oom native 60 "$B/static_cudart" oom 48 0
run_scn static_cudart_oom shim 60 "$B/static_cudart" oom 48 $BUDGET
run_scn bench_pairs native+shim 150 "$B/bench_pairs" --preload "$PRELOAD" --rounds 31 --budget 70GiB
# The hooked-call cost and its 1 -> 16 thread scaling over the null driver
# (tests/nulldriver: lock-free, a few ns a pair), on this machine's 16 cores
# (the developers' machines have 2): the shim's own cost and scaling.
[ -f "$B/nulldriver/libcuda.so.1" ] &&
    run_scn bench_nulldriver null-driver 120 "$B/bench_pairs" --hooked --preload "$PRELOAD" --budget 70GiB
# The same over the test driver (one global mutex: its threads serialise,
# natively too), comparable with callgrind runs over it.
[ -f "$B/fakecuda/libcuda.so.1" ] &&
    run_scn bench_testdriver test-driver 90 "$B/bench_pairs" --hooked --threads 1,4 --rounds 5 --preload "$PRELOAD" --budget 70GiB

# static cudart alternating 4 KiB pairs: A B A B, one process per run
for i in 1 2; do
    for m in native shim; do
        run_scn static_cudart_pairs$i $m 30 "$B/static_cudart" pairs 2000
    done
done
cudart_pairs_row() {
    local f med lo hi
    for m in native shim; do
        med=0 lo=0 hi=0
        for i in 1 2; do
            f=$WORK/out.static_cudart_pairs$i.$m
            IFS='|' read -r _ a b c < <(grep -a '^PAIRS|' "$f" 2>/dev/null || echo "PAIRS|0|0|0")
            med=$((med + a / 2)) lo=$((lo + b / 2)) hi=$((hi + c / 2))
        done
        eval "${m}_med=$med ${m}_lo=$lo ${m}_hi=$hi"
    done
    local ratio
    ratio=$(awk -v a="$native_med" -v b="$shim_med" 'BEGIN { printf (a ? "%.3f" : "-"), (a ? b / a : 0) }')
    local diff=$((shim_med - native_med))
    [ "$diff" -ge 0 ] && diff=+$diff
    echo "static cudart cudaMalloc+cudaFree 4 KiB, 2 x 2000 A B A B | ${native_med} | ${shim_med} | ${ratio} | ${diff} | | | ${native_lo}–${native_hi} | ${shim_lo}–${shim_hi}" >>"$BENCH"
}
cudart_pairs_row

# ------------------------------------------------------------ frameworks
py() { # py NAME SCRIPT MODE ARGS... : native and under the shim
    local name=$1 script=$2 mode=$3
    run_scn "$name" native 60 "$PYTHON" "$HERE/$script" "$mode" --cap $CAP
    run_scn "$name" shim 60 "$PYTHON" "$HERE/$script" "$mode" --cap $CAP --budget $BUDGET
}
py torch_default torch_oom.py default
run_scn torch_default shim-nobudget 60 "$PYTHON" "$HERE/torch_oom.py" default --cap $CAP
py torch_expandable torch_oom.py expandable
py torch_async torch_oom.py async
py cupy_default cupy_oom.py default
py cupy_async cupy_oom.py async
py jax_prealloc jax_prealloc.py prealloc
py jax_noprealloc jax_prealloc.py noprealloc
py nvml_view nvml_view.py view

# ------------------------------------------------------ compute-sanitizer
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [ -x "$SAN" ]; then
    # --report-api-errors no: the pointer check probes freed and unknown
    # addresses on purpose, and the driver's CUDA_ERROR_NOT_FOUND answers
    # would count as errors; memory errors and leaks are still reported.
    run_scn gpu_api sanitizer 120 "$SAN" --leak-check full --report-api-errors no "$B/gpu_api" --quick
    f=$WORK/out.gpu_api.sanitizer
    errs=$(grep -a 'ERROR SUMMARY:' "$f" 2>/dev/null | tail -1 | grep -o '[0-9]\+ error' | grep -o '[0-9]\+')
    leaks=$(grep -ac 'Leaked [0-9,]* bytes' "$f" 2>/dev/null)
    if [ ! -f "$f" ]; then
        : # not run (deadline): run_scn has filed the row
    elif [ -z "$errs" ]; then
        row compute-sanitizer "leak-check full" FAIL "no ERROR SUMMARY line (see gpu.log)"
    else
        row compute-sanitizer "leak-check full" "$([ "$errs" = 0 ] && echo PASS || echo FAIL)" \
            "gpu_api --quick: $errs errors, $leaks leak reports"
    fi
else
    row compute-sanitizer "leak-check full" FAIL "compute-sanitizer not found"
fi

# ------------------------------------------------------------ the table
# Results first, then benchmarks, then the failures again and the count: the
# end of the output is what a caller reading only its tail sees.
TABLE=$WORK/table.md
TABLE_DETAIL_MAX=170
{
    echo
    echo "## vramguard GPU checks: $(date -u '+%Y-%m-%d') ${GPU_LINE:-(no nvidia-smi)}"
    echo
    echo "Command: tests/gpu/run.sh ${1:-build/gpu} (budget under the shim: $BUDGET_TEXT; native runs stop at $((CAP >> 30)) GiB)"
    echo
    results_section
    echo "### Benchmarks (ns per alloc+free pair; thread rows: pairs/s)"
    echo
    echo "Medians over all pairs; ratio and shim − native are paired per round (rounds rotate their order),"
    echo "median (p10…p90 over rounds); the last two columns: round medians, median (p10–p90). Thread rows:"
    echo "median pairs/s, paired ratio, p10–p90 of rounds. The native-control process (RESULT rows) shows"
    echo "what two identical processes differ by."
    echo
    bench_table
    echo
    table_end
} >"$TABLE"
finish "$TABLE"
