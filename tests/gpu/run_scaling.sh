#!/usr/bin/env bash
# tests/gpu/run_scaling.sh — the hot path's thread figures in one call, a
# table printed last: what the shim adds to a 4 KiB cuMemAlloc_v2 +
# cuMemFree_v2 pair and how it scales from 1 to 16 threads,
#
#   null        over the null driver, each thread its own address range
#   neighbours  over the null driver, the threads' addresses side by side in
#               one or two 64 KiB granules, as the real driver hands them out
#   model       over the null driver as a model of the real one: one
#               mutex-held free list for all threads, 64 KiB of code a call
#               (NULLDRIVER_ADDRESSES=shared NULLDRIVER_CODE=65536); does it
#               lose at 16 threads what the real driver loses?
#   model-spin  the same with a spinlock (NULLDRIVER_LOCK=spin): on the
#               developers' VM this one loses at 2 threads (docs/benchmarks.md,
#               "Why more threads lose more")
#   real        over the real driver (paired ratios to native, with the
#               second native process as an A/A control)
#   cache       VRAMGUARD_POOL=cache over the real driver, 20000 pairs a
#               thread per round (500 would be mostly the threads' start-up)
#
# and, first, natively: sync_probe (do 16 threads' cuCtxSynchronize calls
# wait for each other? cache mode's arenas each synchronise for themselves)
#
# each run for the preload library of BUILD and, when OLD is given, for OLD
# too, alternated (new, old, new, old), so drift falls on both alike. Figures
# only: nothing here passes or fails. With OLD: about 6 minutes on the H200,
# more than 9 on the H100 (the neighbours and model rows take most); one
# device call is 10 minutes at most, so split it with MODES there.
#
#   tests/gpu/run_scaling.sh [BUILD] [OLD_PRELOAD]     (BUILD: build/gpu)
#   env: OUT  when set, every bench_pairs output is kept there
#        MODES  the rows to run, of those above (default: all, in that order)
#        LIBCUDA_DIR  the real driver's folder (common.sh's find_libcuda);
#             a tests/fakecuda build tries the script without a GPU
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
B=${1:-build/gpu}
OLD=${2:-}
NEW=$B/libvramguard-preload.so
for f in "$B/bench_pairs" "$B/sync_probe" "$NEW" "$B/nulldriver/libcuda.so.1" ${OLD:+"$OLD"}; do
    [ -e "$f" ] || { echo "run_scaling: $f is missing (tests/gpu/build.sh $B first)" >&2; exit 2; }
done
. "$HERE/common.sh"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
KEEP=${OUT:-$WORK}
mkdir -p "$KEEP"
find_libcuda
REAL_LD=${LD_LIBRARY_PATH:-}
NULL_LD=$(cd "$B/nulldriver" && pwd)

builds=(new)
[ -n "$OLD" ] && builds+=(old)
preload_of() { [ "$1" = new ] && echo "$NEW" || echo "$OLD"; }

# field FILE ROW N: field N (|-separated) of the BENCH row starting with ROW
field() { grep -a "^BENCH|$2" "$1" | head -1 | awk -F'|' -v n="$3" '{print $n}'; }
# ratio FILE THREADS WHICH: the paired ratio after WHICH in the RESULT row
ratio() {
    grep -a "RESULT|bench_threads_$2|" "$1" | sed -n "s/.*$3[^x]*x\([0-9.]*\).*/\1/p" | head -1
}
mps() { awk -v r="$1" 'BEGIN { if (r == "") print "-"; else printf "%.2f M", r / 1e6 }'; }

run_one() { # MODE BUILD RUN
    local mode=$1 build=$2 run=$3 f=$KEEP/$1_$2_$3.txt P
    P=$(preload_of "$build")
    case $mode in
    null | neighbours)
        env LD_LIBRARY_PATH="$NULL_LD" NULLDRIVER_ADDRESSES=$([ "$mode" = neighbours ] && echo neighbours || echo own) \
            timeout 120 "$B/bench_pairs" --hooked --preload "$P" --rounds 11 --threads 1,16 \
            --thread-rounds 7 --budget 70GiB >"$f" 2>&1 ;;
    model | model-spin)
        env LD_LIBRARY_PATH="$NULL_LD" NULLDRIVER_ADDRESSES=shared NULLDRIVER_CODE=65536 \
            NULLDRIVER_LOCK=$([ "$mode" = model-spin ] && echo spin || echo mutex) \
            timeout 120 "$B/bench_pairs" --hooked --preload "$P" --rounds 5 --threads 1,16 \
            --pairs 20000 --thread-rounds 7 --budget 70GiB >"$f" 2>&1 ;;
    real)
        env LD_LIBRARY_PATH="$REAL_LD" timeout 150 "$B/bench_pairs" --preload "$P" --rounds 5 \
            --threads 1,16 --thread-rounds 31 --budget 70GiB >"$f" 2>&1 ;;
    cache)
        env LD_LIBRARY_PATH="$REAL_LD" VRAMGUARD_POOL=cache timeout 150 "$B/bench_pairs" \
            --preload "$P" --rounds 3 --threads 1,16 --pairs 20000 --thread-rounds 5 \
            --budget 70GiB >"$f" 2>&1 ;;
    esac
    local added one sixteen
    added=$(field "$f" "4 KiB pair, 1 thread, batches" 6 | awk '{print $1}')
    one=$(field "$f" "4 KiB pairs, 1 thread" 4)
    sixteen=$(field "$f" "4 KiB pairs, 16 threads" 4)
    printf '| %s | %s | %s | %s | %s | %s | x%s / x%s | x%s / x%s |\n' "$mode" "$build" "$run" \
        "${added:--}" "$(mps "$one")" "$(mps "$sixteen")" \
        "$(ratio "$f" 1 'shim [0-9]* (')" "$(ratio "$f" 16 'shim [0-9]* (')" \
        "$(ratio "$f" 1 'native control')" "$(ratio "$f" 16 'native control')" >>"$WORK/table"
}

date -u
env LD_LIBRARY_PATH="$REAL_LD" timeout 60 "$B/sync_probe" >"$KEEP/sync_probe.txt" 2>&1
: >"$WORK/table"
for mode in ${MODES:-null neighbours model model-spin real cache}; do
    for run in 1 2; do
        for build in "${builds[@]}"; do
            run_one "$mode" "$build" "$run"
        done
    done
done
date -u
echo
echo "| mode | build | run | shim - native per pair, 1 thread, ns (null driver) | shim 1 thread pairs/s | shim 16 threads pairs/s | shim / native, 1 / 16 threads | native control / native, 1 / 16 |"
echo "|---|---|---|---|---|---|---|---|"
cat "$WORK/table"
echo
grep -a '^RESULT|sync_probe' "$KEEP/sync_probe.txt" | cut -d'|' -f4
