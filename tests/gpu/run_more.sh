#!/usr/bin/env bash
# tests/gpu/run_more.sh — the GPU checks of the audit log (bad
# pointers) and of shared budgets (status, metrics; the pool is run_pool.sh), on
# the machine with the GPU; builds nothing (tests/gpu/build.sh made
# BUILD_DIR elsewhere). Same conventions as run.sh: each scenario under its
# own timeout, RESULT rows collected into one table printed last; the suite
# stops starting scenarios after SUITE_DEADLINE seconds (default 270, so the
# whole run stays under 5 minutes). What the two share is tests/gpu/common.sh.
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
# shellcheck source=tests/gpu/common.sh
. "$HERE/common.sh"
B=${1:-build/gpu}
[ -x "$B/badptr_gpu" ] || { [ -x "$B/gpu/badptr_gpu" ] && B=$B/gpu; }
for f in badptr_gpu bench_pairs vramguard libvramguard-preload.so; do
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

find_libcuda
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
init_files more.log
gpu_header "# vramguard GPU checks, audit log and shared budgets" "   shared region: $NAME"
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 |
    tail -1 | tee -a "$LOG"

# run_scn NAME MODE TIMEOUT CMD... (common.sh): CMD brings its own
# environment, e.g. `env LD_PRELOAD=...`; MODE is the table's label. BENCH
# rows go to their table, not to the log.
SCN_LOG_DROP='^BENCH|'
scn_collect() {
    collect BENCH "$BENCH" "$2"
}

SHIM=(env LD_PRELOAD="$PRELOAD")

# ------------------------------------------------------- audit log
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

# -------------------------------------------------- shared budgets
# (a) two processes under one shared 2 GiB budget, (b) kill -9 of the
# holder, (d) status and metrics while they run.
run_scn shared_pair "shared 2GiB" 150 "$PYTHON" "$MORE" shared-pair --cli "$VG" \
    --preload "$PRELOAD" --work "$WORK" --name "$NAME"
# (c) 8 PyTorch processes under one shared 8 GiB budget (each CUDA context
# is ~0.5 GiB, charged as overhead): the sum never exceeds it.
run_scn shared_many "shared 8GiB x8" 150 "$PYTHON" "$MORE" shared-many --cli "$VG" \
    --preload "$PRELOAD" --work "$WORK" --name "$NAME-many" --procs 8 --budget-gib 8 \
    --chunk 128 --hold 3 --timeout 120

# ------------------------------------------------------------ the table
TABLE=$WORK/more.md
TABLE_DETAIL_MAX=200
{
    echo
    echo "## vramguard GPU checks, audit log and shared budgets: $(date -u '+%Y-%m-%d') ${GPU_LINE:-(no nvidia-smi)}"
    echo
    echo "Command: tests/gpu/run_more.sh ${1:-build/gpu} (budgets: $BUDGET_TEXT per process; shared $BUDGET_TEXT for two, 8GiB for eight)"
    echo
    results_section
    echo "### bench_pairs: ns per alloc+free pair, shim plain and with the audit log on"
    echo
    echo "Medians over all pairs; ratio and shim − native paired per round, median (p10…p90 over rounds)."
    echo
    bench_table
    echo
    table_end
} >"$TABLE"
finish "$TABLE"
