#!/usr/bin/env bash
# tests/gpu/run_pool.sh — the GPU checks of the shim's cache mode
# (VRAMGUARD_POOL=cache: the shim serves cuMemAlloc requests of 1 B..1 MiB
# made under the primary context from its pool), on the machine with the
# GPU; builds nothing (tests/gpu/build.sh made BUILD_DIR elsewhere). Same
# conventions as run.sh and run_more.sh (tests/gpu/common.sh): each
# scenario under its own timeout, RESULT rows collected into one table
# printed last; no scenario starts after SUITE_DEADLINE seconds (default
# 230). About 2-3 minutes on one H100.
#
#   tests/gpu/run_pool.sh [BUILD_DIR]      BUILD_DIR: build/gpu, or build (then build/gpu)
#
# 1. static cudart's alternating cudaMalloc/cudaFree of 4 KiB: native, the
#    shim (default) and the shim in cache mode, interleaved over 5 rounds;
#    PASS when cache mode is >= 20x faster than native.
# 2. pool_views: what a program sees of its blocks (address range,
#    pointer attributes, IPC, data, freed blocks), natively (the driver's
#    answers, INFO rows), under the shim with VRAMGUARD_POOL unset and =off
#    (must equal the driver's) and in cache mode (with and without a budget).
# 3. PyTorch: a deterministic training run bit-identical in default and
#    cache mode (with PyTorch's caching allocator and without it); under a
#    2 GiB budget the same out-of-memory error in both modes.
# 4. pool_bench (the pool API, 1-16 threads, 4 KiB, beside the driver pair)
#    and bench_pairs in cache mode (cuMemAlloc+cuMemFree through the shim,
#    1-16 threads, against native workers of the same run).
# 5. the eviction example (model_slots).
#
# env: OUT      when set, pool.log (everything) and pool.md (the table) are written there
#      LIBCUDA_DIR  folder holding libcuda.so.1 (default /usr/local/nvidia/lib64
#               when it exists; point it at a tests/fakecuda build to try the
#               suite without a GPU: PyTorch and static cudart then fail)
#      PYTHON   (python3)    SUITE_DEADLINE (230)
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/gpu/common.sh
. "$HERE/common.sh"
B=${1:-build/gpu}
[ -x "$B/pool_views" ] || { [ -x "$B/gpu/pool_views" ] && B=$B/gpu; }
for f in pool_views static_cudart bench_pairs libvramguard-preload.so model_slots pool_bench; do
    if [ ! -e "$B/$f" ]; then
        echo "run_pool.sh: no $f in '$B' (run tests/gpu/build.sh on the build machine and carry it)" >&2
        exit 2
    fi
done
B=$(cd "$B" && pwd)
PRELOAD=$B/libvramguard-preload.so
PYTHON=${PYTHON:-python3}
P6=$HERE/pool6.py
DEADLINE=${SUITE_DEADLINE:-230}
BUDGET_TEXT=2GiB

find_libcuda
unset LD_PRELOAD CUDA_DEVICE_MEMORY_LIMIT CUDA_DEVICE_MEMORY_SHARED_CACHE PYTORCH_CUDA_ALLOC_CONF \
      PYTORCH_NO_CUDA_MEMORY_CACHING XLA_PYTHON_CLIENT_PREALLOCATE
for v in $(env | sed -n 's/^\(VRAMGUARD_[A-Z_]*\)=.*/\1/p'); do unset "$v"; done
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1  # no __pycache__ in the tree

WORK=$(mktemp -d /tmp/vgpool.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
init_files pool.log
CUDART=$WORK/cudart   # static cudart table rows
POOL=$WORK/pool       # thread table rows
: >"$CUDART"; : >"$POOL"
gpu_header "# vramguard GPU checks: the pool and the shim's cache mode"
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 |
    tail -1 | tee -a "$LOG"

# run_scn NAME MODE TIMEOUT CMD... (common.sh). MODE native: no shim;
# shim: the shim, VRAMGUARD_POOL unset; shim-off: =off; shim-cache: =cache;
# shim-cache+budget: =cache and VRAMGUARD_BUDGET; anything else: the
# environment as it is (pool6.py makes each child's own).
scn_env() {
    case $1 in
    native) envs=(env -u LD_PRELOAD -u VRAMGUARD_POOL -u VRAMGUARD_BUDGET) ;;
    shim) envs=(env -u VRAMGUARD_POOL -u VRAMGUARD_BUDGET LD_PRELOAD="$PRELOAD") ;;
    shim-off) envs=(env -u VRAMGUARD_BUDGET LD_PRELOAD="$PRELOAD" VRAMGUARD_POOL=off) ;;
    shim-cache) envs=(env -u VRAMGUARD_BUDGET LD_PRELOAD="$PRELOAD" VRAMGUARD_POOL=cache) ;;
    shim-cache+budget) envs=(env LD_PRELOAD="$PRELOAD" VRAMGUARD_POOL=cache VRAMGUARD_BUDGET="$BUDGET_TEXT") ;;
    *) envs=(env) ;;
    esac
}
SCN_LOG_DROP='^CUDART|\|^POOL|'
scn_collect() {
    collect CUDART "$CUDART" "$2"
    collect POOL "$POOL" "$2"
}

# ------------------------------------------------------------ 2. views
# The native run first: its DRV| lines are the driver's answers the other
# runs are compared with (--driver).
NATIVE_VIEWS=$WORK/out.pool_views.native
run_scn pool_views native 30 "$B/pool_views" --expect driver
run_scn pool_views shim 30 "$B/pool_views" --expect driver --driver "$NATIVE_VIEWS"
run_scn pool_views shim-off 30 "$B/pool_views" --expect driver --driver "$NATIVE_VIEWS"
run_scn pool_views shim-cache 30 "$B/pool_views" --expect cache --driver "$NATIVE_VIEWS"
run_scn pool_views shim-cache+budget 30 "$B/pool_views" --expect cache --driver "$NATIVE_VIEWS"
# An engine without cache mode says so once on stderr; name it here, so a
# run on such a build reads as that, not as 20 unrelated failures.
if grep -aq "VRAMGUARD_POOL='cache' has no effect" "$WORK/out.pool_views.shim-cache" 2>/dev/null; then
    row cache_mode_implemented shim-cache FAIL "the shim says: $(grep -a "VRAMGUARD_POOL='cache' has no effect" \
        "$WORK/out.pool_views.shim-cache" | head -1 | cut -c1-150)"
fi

# ------------------------------------------------------------ 1. static cudart
run_scn cudart_pairs "native, default, cache x5" 100 "$PYTHON" "$P6" cudart-pairs \
    --bin "$B/static_cudart" --preload "$PRELOAD" --rounds 5 --pairs 2000 --timeout 25

# ------------------------------------------------------------ 3. PyTorch
run_scn torch_same "default vs cache" 150 "$PYTHON" "$P6" torch-same --preload "$PRELOAD" \
    --steps 60 --timeout 60
run_scn torch_oom "2GiB: default vs cache" 150 "$PYTHON" "$P6" torch-oom --preload "$PRELOAD" \
    --budget-gib 2 --timeout 60

# ------------------------------------------------------------ 5. eviction
run_scn model_slots native 60 "$PYTHON" "$P6" example --bin "$B/model_slots" --timeout 55

# ------------------------------------------------------------ 4. threads
run_scn pool_bench native 100 "$PYTHON" "$P6" pool-bench --bin "$B/pool_bench" --timeout 95
run_scn bench_pairs_cache "native vs cache" 90 "$PYTHON" "$P6" shim-threads --bin "$B/bench_pairs" \
    --preload "$PRELOAD" --rounds 11 --timeout 85

# ------------------------------------------------------------ the table
TABLE=$WORK/pool.md
TABLE_DETAIL_MAX=220
{
    echo
    echo "## vramguard GPU checks (cache mode): $(date -u '+%Y-%m-%d') ${GPU_LINE:-(no nvidia-smi)}"
    echo
    echo "Command: tests/gpu/run_pool.sh ${1:-build/gpu} (default = the shim with VRAMGUARD_POOL unset; cache = VRAMGUARD_POOL=cache; budget $BUDGET_TEXT where named)"
    echo
    results_section
    echo "### static cudart: alternating cudaMalloc+cudaFree of 4 KiB, ns per pair"
    echo
    echo "One process per mode and round, the order rotating; medians over rounds of each process's median, p10 and p90."
    echo
    md_table "$CUDART" "(no cudart rows)" "| mode | rounds x pairs | median | p10 | p90 | process medians | native / mode |" \
        "|---|---|---|---|---|---|---|"
    echo
    echo "### alloc+free pairs by size and thread count: ns per pair per thread"
    echo
    echo "pool_bench: the pool API, median and p10/p90 of 15 rounds, beside the driver pair (1 thread, same run); sizes above 1 MiB go to the driver."
    echo "bench_pairs: cuMemAlloc+cuMemFree, native workers vs the shim's workers in cache mode, same run; wall time of all threads, median and p10/p90 of 7 rounds."
    echo
    md_table "$POOL" "(no pool rows)" "| case | size | threads | median ns/pair/thread | p10 | p90 |" "|---|---|---|---|---|---|"
    echo
    table_end
} >"$TABLE"
finish "$TABLE"
