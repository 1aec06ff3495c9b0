#!/usr/bin/env bash
# tests/gpu/run_floor.sh — what any LD_PRELOAD interposer pays over the real
# driver, beside what vramguard pays, in one call, a table printed last.
#
# forward_shim.so forwards cuMemAlloc_v2/cuMemFree_v2 (and the stream-ordered
# pair) with nothing of its own; FORWARD_WORK_NS=N adds a calibrated N ns of
# busy work between two driver calls (N/2 after each call returns, N/2 before
# each is made), the window a shim's own work opens, in which another thread
# may take the driver's lock. Each N runs twice with bench_pairs over the
# real driver (1 and 16 threads, ratios paired with native in the same run),
# and once over the null driver (--hooked), which says what N really added
# to a pair. vramguard's preload library (shim+budget) runs twice beside
# them. Figures only: nothing here passes or fails. About 2 minutes.
#
#   tests/gpu/run_floor.sh [BUILD]         (BUILD: build/gpu, from tests/gpu/build.sh)
#   env: WORKS  the N values (default "0 50 100 200")
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
B=${1:-build/gpu}
for f in "$B/bench_pairs" "$B/forward_shim.so" "$B/libvramguard-preload.so" "$B/nulldriver/libcuda.so.1"; do
    [ -e "$f" ] || { echo "run_floor: $f is missing (tests/gpu/build.sh $B first)" >&2; exit 2; }
done
. "$HERE/common.sh"
find_libcuda
NULL_LD=$(cd "$B/nulldriver" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# ratio FILE ROW: the shim+budget paired ratio of a bench_threads RESULT row
ratio() { grep -a "^RESULT|$2|" "$1" | grep -oE 'shim\+budget [0-9]+ \(x[0-9.]+' | grep -oE 'x[0-9.]+'; }
# added FILE: shim+budget − native per pair of the hooked pair row, in ns
added() { grep -a '^RESULT|bench_hooked_pair|' "$1" | grep -oE 'budget-native [-+][0-9.]+' | awk '{print $2}'; }

rows=()
real_run() { # NAME PRELOAD RUN [env...]
    local name=$1 preload=$2 run=$3 f="$WORK/$1_$3.txt"
    shift 3
    env "$@" "$B/bench_pairs" --preload "$preload" --budget 70GiB --rounds 5 --threads 1,16 \
        --thread-rounds 9 >"$f" 2>&1
    rows+=("| $name | $run | $(ratio "$f" bench_threads_1) | $(ratio "$f" bench_threads_16) |")
}

added_ns=()
for n in ${WORKS:-0 50 100 200}; do
    f="$WORK/null_$n.txt"
    FORWARD_WORK_NS=$n LD_LIBRARY_PATH="$NULL_LD" "$B/bench_pairs" --hooked \
        --preload "$B/forward_shim.so" --rounds 5 --threads 1 >"$f" 2>&1
    added_ns+=("| forward, N = $n | $(added "$f") |")
done
f="$WORK/null_vramguard.txt"
LD_LIBRARY_PATH="$NULL_LD" "$B/bench_pairs" --hooked --preload "$B/libvramguard-preload.so" \
    --budget 70GiB --rounds 5 --threads 1 >"$f" 2>&1
added_ns+=("| vramguard (shim+budget) | $(added "$f") |")

for run in 1 2; do
    for n in ${WORKS:-0 50 100 200}; do
        real_run "forward, N = $n" "$B/forward_shim.so" "$run" FORWARD_WORK_NS="$n"
    done
    real_run "vramguard (shim+budget)" "$B/libvramguard-preload.so" "$run"
done

echo
echo "### What any interposer pays: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
echo
echo "| preload | ns added to a pair over the null driver |"
echo "|---|---|"
printf '%s\n' "${added_ns[@]}"
echo
echo "| preload | run | real driver, 1 thread (x native) | 16 threads (x native) |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
