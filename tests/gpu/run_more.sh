#!/usr/bin/env bash
# tests/gpu/run_more.sh — the GPU checks of issues 4 (audit log, bad
# pointers), 5 (shared budgets, status, metrics) and 6 (pool, eviction), on
# the machine with the GPU; builds nothing (tests/gpu/build.sh made
# BUILD_DIR elsewhere). Same conventions as run.sh: each scenario under its
# own timeout, RESULT rows collected into one table printed last; the suite
# stops starting scenarios after SUITE_DEADLINE seconds (default 270, so the
# whole run stays under 5 minutes).
#
#   tests/gpu/run_more.sh [BUILD_DIR]      BUILD_DIR: build/gpu, or build (then build/gpu)
#
# env: OUT      when set, more.log (everything), more.md (the table),
#               audit-timeline.svg and torch-audit.jsonl are written there
#      LIBCUDA_DIR  folder holding libcuda.so.1 (default /usr/local/nvidia/lib64
#               when it exists; point it at a tests/fakecuda build to try the
#               suite without a GPU: the PyTorch scenarios then fail, the rest run)
#      PYTHON   (python3)    SUITE_DEADLINE (270)
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
B=${1:-build/gpu}
[ -x "$B/badptr_gpu" ] || { [ -x "$B/gpu/badptr_gpu" ] && B=$B/gpu; }
for f in badptr_gpu bench_pairs vramguard libvramguard-preload.so model_slots pool_bench; do
    if [ ! -e "$B/$f" ]; then
        echo "run_more.sh: no $f in '$B' (run tests/gpu/build.sh on the build machine and carry it)" >&2
        exit 2
    fi
done
B=$(cd "$B" && pwd)
PRELOAD=$B/libvramguard-preload.so
VG=$B/vramguard
PYTHON=${PYTHON:-python3}
MORE=$HERE/more456.py
DEADLINE=${SUITE_DEADLINE:-270}
BUDGET_TEXT=2GiB
BUDGET=$((2 << 30))
NAME=gpu456-$$

LIBCUDA_DIR=${LIBCUDA_DIR:-}
[ -z "$LIBCUDA_DIR" ] && [ -d /usr/local/nvidia/lib64 ] && LIBCUDA_DIR=/usr/local/nvidia/lib64
[ -n "$LIBCUDA_DIR" ] && export LD_LIBRARY_PATH=$LIBCUDA_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
unset LD_PRELOAD CUDA_DEVICE_MEMORY_LIMIT CUDA_DEVICE_MEMORY_SHARED_CACHE PYTORCH_CUDA_ALLOC_CONF \
      XLA_PYTHON_CLIENT_PREALLOCATE
for v in $(env | sed -n 's/^\(VRAMGUARD_[A-Z_]*\)=.*/\1/p'); do unset "$v"; done
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1  # no __pycache__ in the tree

WORK=$(mktemp -d /tmp/vg456.XXXXXX)
cleanup() {
    rm -rf "$WORK"
    rm -f "/dev/shm/vramguard.$NAME" "/dev/shm/vramguard.$NAME-many"
}
trap cleanup EXIT
LOGDIR=${OUT:-$WORK}
mkdir -p "$LOGDIR"
LOG=$LOGDIR/more.log
ROWS=$WORK/rows       # scenario|mode|result|detail
BENCH=$WORK/bench     # bench_pairs table rows
POOL=$WORK/pool       # pool_bench table rows
: >"$LOG"; : >"$ROWS"; : >"$BENCH"; : >"$POOL"
START=$SECONDS

say() { echo "$@" | tee -a "$LOG"; }
row() { printf '%s|%s|%s|%s\n' "$1" "$2" "$3" "$4" >>"$ROWS"; }

say "# vramguard GPU checks, issues 4, 5 and 6"
say "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
say "build: $B   libcuda from: ${LIBCUDA_DIR:-the default library path}   shared region: $NAME"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$LOG"
else
    say "nvidia-smi: not found"
fi
GPU_LINE=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 |
    tail -1 | tee -a "$LOG"

# run_scn NAME MODE TIMEOUT CMD... : runs one scenario (CMD brings its own
# environment, e.g. `env LD_PRELOAD=...`; MODE is the table's label) and
# files its RESULT rows. As run.sh: a timeout, a non-zero exit with no FAIL
# row, or no rows at all is a FAIL row.
run_scn() {
    local name=$1 mode=$2 tmo=$3
    shift 3
    local left=$((DEADLINE - (SECONDS - START)))
    if [ "$left" -lt 15 ]; then
        row "$name" "$mode" FAIL "not run: suite deadline (${DEADLINE}s) reached"
        say "[$((SECONDS - START))s] $name [$mode]: SKIPPED (deadline)"
        return
    fi
    [ "$tmo" -gt "$left" ] && tmo=$left
    local out=$WORK/out.$name.$mode
    echo "### $name [$mode] (timeout ${tmo}s): $*" >>"$LOG"
    local t0=$SECONDS rc
    timeout -k 5 "$tmo" "$@" >"$out" 2>&1
    rc=$?
    grep -av '^BENCH|\|^POOL|' "$out" >>"$LOG"
    echo "### exit $rc after $((SECONDS - t0))s" >>"$LOG"
    local n=0 fails=0 check status detail
    while IFS='|' read -r _ check status detail; do
        [ "$check" = "$name" ] && row "$name" "$mode" "$status" "$detail" ||
            row "$name/$check" "$mode" "$status" "$detail"
        n=$((n + 1))
        [ "$status" = FAIL ] && fails=$((fails + 1))
    done < <(grep -a '^RESULT|' "$out")
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        row "$name" "$mode" FAIL "timed out after ${tmo}s ($n rows before)"
        fails=$((fails + 1))
    elif [ "$rc" != 0 ] && [ "$fails" = 0 ]; then
        row "$name" "$mode" FAIL "exit $rc with no FAIL row: $(grep -av '^RESULT|' "$out" | tail -1 | cut -c1-150)"
        fails=$((fails + 1))
    elif [ "$n" = 0 ]; then
        row "$name" "$mode" FAIL "no RESULT rows (exit $rc)"
        fails=$((fails + 1))
    fi
    grep -a '^BENCH|' "$out" | cut -d'|' -f2- >>"$BENCH"
    grep -a '^POOL|' "$out" | cut -d'|' -f2- >>"$POOL"
    say "[$((SECONDS - START))s] $name [$mode]: $n rows, $fails failed, $((SECONDS - t0))s"
}

SHIM=(env LD_PRELOAD="$PRELOAD")

# ------------------------------------------------------------ issue 4
# (a) a PyTorch training loop under the shim with the audit log and call
# sites on, then `vramguard audit` on its log: summary, leaks, SVG, CSV.
AUDIT_LOG=$WORK/torch-audit.jsonl
run_scn torch_train shim+audit 120 "${SHIM[@]}" VRAMGUARD_BUDGET=$BUDGET_TEXT \
    VRAMGUARD_AUDIT="$AUDIT_LOG" VRAMGUARD_BACKTRACE=8 \
    "$PYTHON" "$HERE/torch_train.py" --budget $BUDGET
COPY=()
[ -n "${OUT:-}" ] && COPY=(--copy-log "$OUT/torch-audit.jsonl")
run_scn audit_cli "vramguard audit" 60 "$PYTHON" "$MORE" audit-check --cli "$VG" \
    --log "$AUDIT_LOG" --svg "$LOGDIR/audit-timeline.svg" "${COPY[@]}"
# (b) fake, double-freed, host and interior pointers: natively (the driver's
# own codes), under warn (the same codes, each named in the audit log) and
# under reject (CUDA_ERROR_INVALID_VALUE, the driver not called).
run_scn badptr "native, warn, reject" 60 "$PYTHON" "$MORE" badptr --bin "$B/badptr_gpu" \
    --preload "$PRELOAD" --work "$WORK"
# (c) what the audit log adds to an alloc+free pair: bench_pairs twice,
# plain shim and shim with the log on (to a file in /tmp), each paired by
# round against native workers of the same run.
run_scn audit_overhead "native+shim(+audit)" 200 "$PYTHON" "$MORE" overhead --bin "$B/bench_pairs" \
    --preload "$PRELOAD" --work "$WORK" --tmp /tmp --rounds 31 --timeout 95

# ------------------------------------------------------------ issue 5
# (a) two processes under one shared 2 GiB budget, (b) kill -9 of the
# holder, (d) status and metrics while they run.
run_scn shared_pair "shared 2GiB" 150 "$PYTHON" "$MORE" shared-pair --cli "$VG" \
    --preload "$PRELOAD" --work "$WORK" --name "$NAME"
# (c) 8 PyTorch processes under one shared 8 GiB budget (each CUDA context
# is ~0.5 GiB, charged as overhead): the sum never exceeds it.
run_scn shared_many "shared 8GiB x8" 150 "$PYTHON" "$MORE" shared-many --cli "$VG" \
    --preload "$PRELOAD" --work "$WORK" --name "$NAME-many" --procs 8 --budget-gib 8 \
    --chunk 128 --hold 3 --timeout 120

# ------------------------------------------------------------ issue 6
run_scn model_slots native 60 "$PYTHON" "$MORE" example --bin "$B/model_slots" --timeout 55
run_scn pool_bench native 150 "$PYTHON" "$MORE" pool-bench --bin "$B/pool_bench" --timeout 145

# ------------------------------------------------------------ the table
TABLE=$WORK/more.md
table_row() { # one results row, detail shortened for the table (full text in more.log)
    local d=$4
    [ ${#d} -gt 200 ] && d="${d:0:197}..."
    echo "| $1 | $2 | $3 | $d |"
}
{
    echo
    echo "## vramguard GPU checks, issues 4-6: $(date -u '+%Y-%m-%d') ${GPU_LINE:-(no nvidia-smi)}"
    echo
    echo "Command: tests/gpu/run_more.sh ${1:-build/gpu} (budgets: $BUDGET_TEXT per process; shared $BUDGET_TEXT for two, 8GiB for eight)"
    echo
    echo "### Results"
    echo
    echo "| scenario | mode | result | detail |"
    echo "|---|---|---|---|"
    while IFS='|' read -r s m r d; do table_row "$s" "$m" "$r" "$d"; done <"$ROWS"
    echo
    echo "### bench_pairs: ns per alloc+free pair, shim plain and with the audit log on"
    echo
    echo "Medians over all pairs; ratio and shim − native paired per round, median (p10…p90 over rounds)."
    echo
    if [ -s "$BENCH" ]; then
        echo "| case | native median | shim median | ratio | shim − native | shim + 70GiB budget | ratio | native round medians | shim round medians |"
        echo "|---|---|---|---|---|---|---|---|---|"
        sed 's/^/| /; s/$/ |/' "$BENCH"
    else
        echo "(no benchmark rows)"
    fi
    echo
    echo "### pool_bench: ns per pair per thread, 15 rounds"
    echo
    if [ -s "$POOL" ]; then
        echo "| case | size | threads | median ns/pair | p10 | p90 |"
        echo "|---|---|---|---|---|---|"
        sed 's/^/| /; s/$/ |/' "$POOL"
    else
        echo "(no pool rows)"
    fi
    echo
    if grep -q '|FAIL|' "$ROWS"; then
        echo "### Failures (again)"
        echo
        echo "| scenario | mode | result | detail |"
        echo "|---|---|---|---|"
        while IFS='|' read -r s m r d; do
            [ "$r" = FAIL ] && table_row "$s" "$m" "$r" "$d"
        done <"$ROWS"
        echo
    fi
    p=$(grep -c '|PASS|' "$ROWS"); f=$(grep -c '|FAIL|' "$ROWS"); i=$(grep -c '|info|' "$ROWS")
    echo "**$p PASS, $f FAIL, $i info** in $((SECONDS - START)) s (full log: ${OUT:+$OUT/}more.log)"
} >"$TABLE"
cat "$TABLE" >>"$LOG"
[ -n "${OUT:-}" ] && cp "$TABLE" "$OUT/more.md"
cat "$TABLE"
grep -q '|FAIL|' "$ROWS" && exit 1
exit 0
