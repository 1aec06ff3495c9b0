#!/usr/bin/env bash
# tests/gpu/run_alternate.sh — several preload libraries over the real
# driver, alternated run by run beside a bare forwarder, and the median of
# each one's paired ratios to native at 1 and 16 threads: the way to judge a
# change of a point or two, which one run cannot (a preload that does
# nothing read x0.943 in one run and x1.001 in the next on an H100;
# docs/benchmarks.md, "What any interposer pays").
#
# Several calls' tables pooled, and one preload against another run by run:
# tests/gpu/pool_alternations.py.
#
# Each run, in turn for every preload: bench_pairs --preload P --budget
# 70GiB --rounds 3 --threads 1,16 --thread-rounds 21 (about 6 s on an H100).
# The first preload is always `forward` (tests/gpu/forward_shim.so, nothing
# of its own). Figures only: nothing here passes or fails.
#
#   tests/gpu/run_alternate.sh [-n RUNS] NAME=PRELOAD[@VAR=VALUE,...] [...]
#       RUNS: alternations (default 5); run from the repository root with
#       build/gpu from tests/gpu/build.sh; PRELOAD paths as seen from there;
#       after an @, environment for that preload's runs alone, e.g.
#       code16=build/gpu/forward_shim.so@FORWARD_CODE_LINES=16
#   env: OUT  when set, every bench_pairs output is kept there
#        LIBCUDA_DIR  the real driver's folder (common.sh's find_libcuda);
#             a tests/fakecuda build tries the script without a GPU
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
B=build/gpu
runs=5
if [ "${1:-}" = -n ]; then
    runs=${2:-}
    shift 2
fi
usage() {
    echo "usage: tests/gpu/run_alternate.sh [-n RUNS] NAME=PRELOAD[@VAR=VALUE,...] [...]" >&2
    exit 2
}
case $runs in '' | *[!0-9]* | 0) usage ;; esac
[ $# -ge 1 ] || usage
names=(forward)
preloads=("$B/forward_shim.so")
envs=("") # each preload's VAR=VALUE,... (may be empty)
for arg in "$@"; do
    name=${arg%%=*} path=${arg#*=} env=
    if [ "$path" != "${path%%@*}" ]; then
        env=${path#*@} path=${path%%@*}
    fi
    if [ -z "$name" ] || [ "$name" = "$arg" ] || [ -z "$path" ]; then usage; fi
    names+=("$name")
    preloads+=("$path")
    envs+=("$env")
done
for f in "$B/bench_pairs" "${preloads[@]}"; do
    [ -e "$f" ] || { echo "run_alternate: $f is missing (tests/gpu/build.sh $B first)" >&2; exit 2; }
done
. "$HERE/common.sh"
find_libcuda
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
KEEP=${OUT:-$WORK}
mkdir -p "$KEEP"

# ratio FILE THREADS: shim+budget's paired ratio to native in the RESULT row
ratio() {
    grep -a "^RESULT|bench_threads_$2|" "$1" | sed -n 's/.*shim+budget [0-9]* (x\([0-9.]*\)).*/\1/p'
}
# median of the numbers on stdin, "-" when there are none
median() {
    sort -n | awk '{v[NR] = $1} END {
        if (!NR) print "-"; else if (NR % 2) print v[(NR + 1) / 2];
        else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

date -u
for ((run = 1; run <= runs; run++)); do
    for i in "${!names[@]}"; do
        f=$KEEP/${names[$i]}_$run.txt
        IFS=, read -ra vars <<<"${envs[$i]}"
        env "${vars[@]}" timeout 120 "$B/bench_pairs" --preload "${preloads[$i]}" --budget 70GiB --rounds 3 \
            --threads 1,16 --thread-rounds 21 >"$f" 2>&1
        echo "${names[$i]} $(ratio "$f" 1) $(ratio "$f" 16)" >>"$WORK/ratios"
    done
done

echo
echo "### Alternated $runs times: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
echo
echo "| preload | 1 thread, each run (x native) | median | 16 threads, each run | median |"
echo "|---|---|---|---|---|"
for name in "${names[@]}"; do
    one=$(awk -v n="$name" '$1 == n && $2 != "" {print $2}' "$WORK/ratios")
    sixteen=$(awk -v n="$name" '$1 == n && $3 != "" {print $3}' "$WORK/ratios")
    printf '| %s | %s | %s | %s | %s |\n' "$name" "$(echo "$one" | paste -sd, | sed 's/,/, /g')" \
        "$(echo "$one" | median)" "$(echo "$sixteen" | paste -sd, | sed 's/,/, /g')" \
        "$(echo "$sixteen" | median)"
done
