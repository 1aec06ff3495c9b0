#!/usr/bin/env bash
# tests/gpu/run_truth.sh — is the budget TRUTHFUL, judged from outside the process? On the machine with the
# GPU; builds nothing when tests/gpu/build.sh made BUILD_DIR (truth_gpu, truth_kernels.fatbin,
# big_module.fatbin, the shim, the CLI); with nvcc on the GPU machine it builds the three missing ones itself.
#
#   tests/gpu/run_truth.sh [BUILD_DIR]      BUILD_DIR: build/gpu, or build (then build/gpu)
#
# Every scenario runs twice, natively and under the shim (LD_PRELOAD=libvramguard-preload.so
# VRAMGUARD_BUDGET=2GiB), each under `timeout 60` (cut to what is left of TRUTH_DEADLINE, 170 s). At its
# peak the program itself asks nvidia-smi (LD_PRELOAD and VRAMGUARD_* removed from that child) what its pid
# holds: outside_mib. Verdicts (LIMIT = 2048 x 1.01 = 2068.5 MiB):
#   shim PASS    outside <= LIMIT and the call that would exceed returned CUDA_ERROR_OUT_OF_MEMORY (2)
#                (torch: torch.OutOfMemoryError, and the message's "this process has X in use" <= 2.00 GiB),
#                and no call failed with anything else
#   native PASS  outside > LIMIT (the memory really was taken; else the scenario proves nothing)
# Scenarios: vmm heap stack module graphmodule race ctxdestroy arraydestroy ctxrelease pooldestroy graphlive
# graphexec (truth_gpu.cu), torch (torch_truth.py), tree
# (`vramguard run --budget 2GiB -- python3 torch_tree.py`: two children of 768 MiB each; the sum of their
# outside readings must stay within LIMIT and one must get OOM), race_cache (race with VRAMGUARD_POOL=cache).
# ctxdestroy: 1.25 GiB in a created context, cuCtxDestroy, 1.25 GiB in the primary context: both must succeed
# (natively that is the whole check), and under the shim outside <= LIMIT. arraydestroy: the same with a
# 1.25 GiB array made in the created context. ctxrelease: 1.25 GiB in the primary context, its last
# cuDevicePrimaryCtxRelease (a reset), retained again, 1.25 GiB more: judged as ctxdestroy. pooldestroy:
# 1.25 GiB from a pool destroyed while it is out, then 1.25 GiB plain: natively both held (outside >
# LIMIT), under the shim the second refused (rc 2) and outside <= LIMIT; after the free, 1.25 GiB fits.
# graphlive: a launched graph's 1.25 GiB node left live (no free node), the graph destroyed, then 1.25 GiB
# plain: judged as pooldestroy, and the node's cuMemFree must succeed without a "bad pointer" line.
# graphexec: a graph's 1.25 GiB node (freed in the graph) whose graph was destroyed before its executable
# was launched, then 1.25 GiB plain: judged as pooldestroy; after cuGraphExecDestroy (and
# cuDeviceGraphMemTrim) 1.25 GiB must fit again.
#
# Per-scenario PASS/FAIL lines, then the table, then `truth: N passed, M failed`; exit 0 only when all pass.
# env: OUT (where truth.log goes; default a new /tmp/vgtruth.XXXXXX), LIBCUDA_DIR (see common.sh), PYTHON
#      (python3), TRUTH_DEADLINE (170), NVCC (fallback build only)
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/gpu/common.sh
. "$HERE/common.sh"   # find_libcuda
B=${1:-build/gpu}
[ -e "$B/libvramguard-preload.so" ] || { [ -e "$B/gpu/libvramguard-preload.so" ] && B=$B/gpu; }
if [ ! -f "$B/libvramguard-preload.so" ]; then
    echo "run_truth.sh: no libvramguard-preload.so in '$B' (run tests/gpu/build.sh and carry the folder)" >&2
    exit 2
fi
B=$(cd "$B" && pwd)
PRELOAD=$B/libvramguard-preload.so
VG=$B/vramguard
PYTHON=${PYTHON:-python3}
DEADLINE=${TRUTH_DEADLINE:-170}
LIMIT=2068.5
START=$SECONDS

find_libcuda
unset LD_PRELOAD CUDA_DEVICE_MEMORY_LIMIT CUDA_DEVICE_MEMORY_SHARED_CACHE PYTORCH_CUDA_ALLOC_CONF \
      PYTORCH_NO_CUDA_MEMORY_CACHING XLA_PYTHON_CLIENT_PREALLOCATE
for v in $(env | sed -n 's/^\(VRAMGUARD_[A-Z_]*\)=.*/\1/p'); do unset "$v"; done
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

WORK=$(mktemp -d /tmp/vgtruthw.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
LOGDIR=${OUT:-$(mktemp -d /tmp/vgtruth.XXXXXX)}
mkdir -p "$LOGDIR"
LOG=$LOGDIR/truth.log
: >"$LOG"
say() { echo "$@" | tee -a "$LOG"; }

# ------------------------------------------------------------ the programs (fallback: build them here)
BIN=$B
if [ ! -x "$B/truth_gpu" ] || [ ! -f "$B/truth_kernels.fatbin" ] || [ ! -f "$B/big_module.fatbin" ]; then
    NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
    CUDA_HOME=${CUDA_HOME:-$(cd "$(dirname "$NVCC")/.." 2>/dev/null && pwd)}
    BIN=$WORK/bin
    mkdir -p "$BIN"
    say "run_truth.sh: truth_gpu or its fatbins missing in $B: building them with $NVCC into $BIN"
    if ! { "$NVCC" -x c++ -O2 -cudart none -I"$CUDA_HOME/include" -o "$BIN/truth_gpu" "$HERE/truth_gpu.cu" \
               -L"$CUDA_HOME/lib64/stubs" -lcuda -lpthread &&
           "$NVCC" -arch=sm_90 -fatbin -DTRUTH_KERNELS -o "$BIN/truth_kernels.fatbin" "$HERE/truth_gpu.cu" &&
           "$NVCC" -arch=sm_90 -fatbin -o "$BIN/big_module.fatbin" "$HERE/probe/big_module.cu"; } >>"$LOG" 2>&1; then
        say "run_truth.sh: the fallback build failed (see $LOG); the driver scenarios will FAIL"
    fi
fi
TG=$BIN/truth_gpu

say "# vramguard truth suite: outside readings (nvidia-smi) native vs shim, budget 2GiB, limit $LIMIT MiB"
say "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')   build: $B   programs: $BIN   libcuda from: ${LIBCUDA_DIR:-default path}"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader 2>&1 | sed 's/^/gpu: /' |
    tee -a "$LOG"
nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>&1 | sed 's/^/busy before: /' |
    tee -a "$LOG"

# ------------------------------------------------------------ running
# run_one TAG MODE CMD...: OUT file $WORK/out.TAG.MODE; rc in $WORK/rc.TAG.MODE (124/137: timed out,
# 'skip': not run, the suite deadline was reached).
run_one() {
    local tag=$1 mode=$2
    shift 2
    local out=$WORK/out.$tag.$mode left tmo=60 rc t0=$SECONDS envs
    left=$((DEADLINE - (SECONDS - START)))
    if [ "$left" -lt 10 ]; then
        echo skip >"$WORK/rc.$tag.$mode"
        : >"$out"
        say "[$((SECONDS - START))s] $tag [$mode]: not run (suite deadline ${DEADLINE}s)"
        return
    fi
    [ "$tmo" -gt "$left" ] && tmo=$left
    case $mode in
    native) envs=(env -u LD_PRELOAD -u VRAMGUARD_BUDGET -u VRAMGUARD_POOL) ;;
    shim) envs=(env -u VRAMGUARD_POOL LD_PRELOAD="$PRELOAD" VRAMGUARD_BUDGET=2GiB) ;;
    cache) envs=(env LD_PRELOAD="$PRELOAD" VRAMGUARD_BUDGET=2GiB VRAMGUARD_POOL=cache) ;;
    *) envs=(env -u LD_PRELOAD) ;;   # the command sets up the shim itself (vramguard run)
    esac
    echo "### $tag [$mode] (timeout ${tmo}s): ${envs[*]} $*" >>"$LOG"
    timeout -k 5 "$tmo" "${envs[@]}" "$@" >"$out" 2>&1
    rc=$?
    echo "$rc" >"$WORK/rc.$tag.$mode"
    cat "$out" >>"$LOG"
    echo "### exit $rc after $((SECONDS - t0))s" >>"$LOG"
    echo "---- $tag [$mode] exit $rc, $((SECONDS - t0))s"
    grep -aE '^(call=|setlimit_rc|moduleload_rc|outside|refused_call|oom_|alloc1_rc|tensors_held|child=|tree_|parent_outside|vramguard:|Traceback|[A-Za-z]*Error)|^info (fill|vmm|race|device_malloc|heap_limit|stack_limit|kernels|the children)' \
        "$out" | head -24 | sed 's/^/    /'
}

# val TAG MODE KEY: the last KEY=VALUE's value in that run's output ("" when absent)
val() {
    grep -ao "\(^\| \)$3=[^ ]*" "$WORK/out.$1.$2" 2>/dev/null | tail -1 | sed 's/^ //' | cut -d= -f2-
}
refused() { grep -a '^refused_call=' "$WORK/out.$1.$2" 2>/dev/null | tail -1 | sed 's/^refused_call=//'; }
rcof() { cat "$WORK/rc.$1.$2" 2>/dev/null || echo none; }
done_ok() { grep -aq '^truth_done' "$WORK/out.$1.$2" 2>/dev/null; }
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a != "" && a + 0 >= 0 && a + 0 <= b + 0) }'; }  # 0 <= a <= b
gt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a != "" && a + 0 > b + 0) }'; }

# ------------------------------------------------------------ verdicts
ROWS=$WORK/rows   # scenario|native|shim|refused|result|why
: >"$ROWS"
NPASS=0
NFAIL=0
verdict() { # NAME NATIVE_MIB SHIM_MIB REFUSED WHY(empty = PASS) [NOTE (shown, not judged)]
    local res=PASS why=${5:-ok}
    [ -n "$5" ] && res=FAIL
    [ -n "${6:-}" ] && why="$why ($6)"
    if [ $res = PASS ]; then NPASS=$((NPASS + 1)); else NFAIL=$((NFAIL + 1)); fi
    printf '%s|%s|%s|%s|%s|%s\n' "$1" "${2:--}" "${3:--}" "${4:--}" "$res" "$why" >>"$ROWS"
    say "$res $1: native ${2:--} MiB, shim ${3:--} MiB (limit $LIMIT), refused: ${4:--} — $why"
}

# join ITEMS...: the items joined with "; " (empty for none)
join() { [ $# -gt 0 ] && printf '%s; ' "$@" | sed 's/; $//'; }

# run-level problems (timeout, no end line) as text, empty when fine
runerr() {
    local rc
    rc=$(rcof "$1" "$2")
    case $rc in
    skip) echo "$2 not run (deadline)" ;;
    124 | 137) echo "$2 timed out" ;;
    0) done_ok "$1" "$2" || echo "$2 ended without truth_done" ;;
    *) echo "$2 exit $rc$(done_ok "$1" "$2" || echo ' without truth_done')" ;;
    esac
}

judge_fill() { # TAG NAME SHIM_MODE: vmm heap stack module race
    local tag=$1 name=$2 sm=$3 why=() n s r e
    n=$(val "$tag" native outside_mib)
    s=$(val "$tag" "$sm" outside_mib)
    r=$(refused "$tag" "$sm")
    e=$(runerr "$tag" native); [ -n "$e" ] && why+=("$e")
    e=$(runerr "$tag" "$sm"); [ -n "$e" ] && why+=("$e")
    gt "$n" "$LIMIT" || why+=("native outside ${n:-?} <= $LIMIT: proves nothing")
    le "$s" "$LIMIT" || why+=("shim outside ${s:-?} > $LIMIT (or unread)")
    case " $r " in *" rc=2 "*) ;; *) why+=("shim: first failing call was not CUDA_ERROR_OUT_OF_MEMORY: ${r:-none}") ;; esac
    [ "$(val "$tag" native other_errors)" = 0 ] || why+=("native: $(val "$tag" native other_errors) non-OOM errors")
    [ "$(val "$tag" "$sm" other_errors)" = 0 ] || why+=("shim: $(val "$tag" "$sm" other_errors) non-OOM errors")
    local note=() imp
    [ "$(val "$tag" native pid_match)" = 0 ] && note+=("native: own pid not listed, sum of all listed used")
    [ "$(val "$tag" "$sm" pid_match)" = 0 ] && note+=("shim: own pid not listed, sum of all listed used")
    imp=$(val "$tag" native outside_implicit_mib)
    [ -n "$imp" ] && note+=("after the implicit step: native $imp, shim $(val "$tag" "$sm" outside_implicit_mib) MiB")
    verdict "$name" "$n" "$s" "$r" "$(join ${why[@]+"${why[@]}"})" "$(join ${note[@]+"${note[@]}"})"
}

# ------------------------------------------------------------ 1-6: the driver scenarios
for sc in vmm heap stack module graphmodule race ctxdestroy arraydestroy ctxrelease pooldestroy graphlive \
    graphexec; do
    run_one "$sc" native "$TG" "$sc" "$BIN"
    run_one "$sc" shim "$TG" "$sc" "$BIN"
done
# 9: race in cache mode
run_one race cache "$TG" race "$BIN"

# ------------------------------------------------------------ 7: torch
run_one torch native "$PYTHON" "$HERE/torch_truth.py" --cap 40
run_one torch shim "$PYTHON" "$HERE/torch_truth.py" --cap 64

# ------------------------------------------------------------ 8: tree (vramguard run)
run_one tree native "$PYTHON" "$HERE/torch_tree.py"
if [ -x "$VG" ]; then
    run_one tree vg "$VG" run --budget 2GiB -- "$PYTHON" "$HERE/torch_tree.py"
else
    echo 127 >"$WORK/rc.tree.vg"
    echo "no $VG" >"$WORK/out.tree.vg"
fi

# ------------------------------------------------------------ judging
say ""
for sc in vmm heap stack module graphmodule race; do judge_fill "$sc" "$sc" shim; done

# ctxdestroy, arraydestroy, ctxrelease
for sc in ctxdestroy arraydestroy ctxrelease; do
    why=()
    for m in native shim; do
        e=$(runerr $sc $m); [ -n "$e" ] && why+=("$e")
        [ "$(val $sc $m alloc1_rc)" = 0 ] || why+=("$m: 1.25GiB in the created context rc=$(val $sc $m alloc1_rc)")
        [ "$(val $sc $m alloc2_rc)" = 0 ] || why+=("$m: 1.25GiB after cuCtxDestroy rc=$(val $sc $m alloc2_rc)")
        [ "$(val $sc $m other_errors)" = 0 ] || why+=("$m: $(val $sc $m other_errors) non-OOM errors")
    done
    s=$(val $sc shim outside_mib)
    le "$s" "$LIMIT" || why+=("shim outside ${s:-?} > $LIMIT (or unread)")
    verdict $sc "$(val $sc native outside_mib)" "$s" \
        "none expected: alloc after destroy rc=$(val $sc shim alloc2_rc)" "$(join ${why[@]+"${why[@]}"})"
done

# pooldestroy
why=()
for m in native shim; do
    e=$(runerr pooldestroy $m); [ -n "$e" ] && why+=("$e")
    [ "$(val pooldestroy $m alloc1_rc)" = 0 ] || why+=("$m: 1.25GiB from the pool rc=$(val pooldestroy $m alloc1_rc)")
    [ "$(val pooldestroy $m alloc3_rc)" = 0 ] || why+=("$m: 1.25GiB after the free rc=$(val pooldestroy $m alloc3_rc)")
    [ "$(val pooldestroy $m other_errors)" = 0 ] || why+=("$m: $(val pooldestroy $m other_errors) non-OOM errors")
done
[ "$(val pooldestroy native alloc2_rc)" = 0 ] || why+=("native: 1.25GiB after the destroy rc=$(val pooldestroy native alloc2_rc)")
[ "$(val pooldestroy shim alloc2_rc)" = 2 ] || why+=("shim: 1.25GiB after the destroy was not refused (rc=$(val pooldestroy shim alloc2_rc))")
n=$(val pooldestroy native outside_mib)
s=$(val pooldestroy shim outside_mib)
gt "$n" "$LIMIT" || why+=("native outside ${n:-?} <= $LIMIT: the destroyed pool's memory went at once, proves nothing")
le "$s" "$LIMIT" || why+=("shim outside ${s:-?} > $LIMIT (or unread)")
verdict pooldestroy "$n" "$s" "$(refused pooldestroy shim)" "$(join ${why[@]+"${why[@]}"})"

# graphlive
why=()
for m in native shim; do
    e=$(runerr graphlive $m); [ -n "$e" ] && why+=("$e")
    [ "$(val graphlive $m alloc1_rc)" = 0 ] || why+=("$m: the graph's 1.25GiB node rc=$(val graphlive $m alloc1_rc)")
    [ "$(val graphlive $m free_rc)" = 0 ] || why+=("$m: the node's cuMemFree rc=$(val graphlive $m free_rc)")
    [ "$(val graphlive $m alloc3_rc)" = 0 ] || why+=("$m: 1.25GiB after the node's free rc=$(val graphlive $m alloc3_rc)")
    [ "$(val graphlive $m other_errors)" = 0 ] || why+=("$m: $(val graphlive $m other_errors) non-OOM errors")
done
[ "$(val graphlive native alloc2_rc)" = 0 ] || why+=("native: 1.25GiB after the destroy rc=$(val graphlive native alloc2_rc)")
[ "$(val graphlive shim alloc2_rc)" = 2 ] || why+=("shim: 1.25GiB after the destroy was not refused (rc=$(val graphlive shim alloc2_rc))")
grep -aq 'bad pointer' "$WORK/out.graphlive.shim" 2>/dev/null && why+=("shim: the node's cuMemFree was reported as a bad pointer")
n=$(val graphlive native outside_mib)
s=$(val graphlive shim outside_mib)
gt "$n" "$LIMIT" || why+=("native outside ${n:-?} <= $LIMIT: the node's memory went with the graph, proves nothing")
le "$s" "$LIMIT" || why+=("shim outside ${s:-?} > $LIMIT (or unread)")
verdict graphlive "$n" "$s" "$(refused graphlive shim)" "$(join ${why[@]+"${why[@]}"})"

# graphexec
why=()
for m in native shim; do
    e=$(runerr graphexec $m); [ -n "$e" ] && why+=("$e")
    [ "$(val graphexec $m alloc1_rc)" = 0 ] || why+=("$m: the 1.25GiB node launched after its graph's destroy rc=$(val graphexec $m alloc1_rc)")
    [ "$(val graphexec $m exec_rc)" = 0 ] || why+=("$m: cuGraphExecDestroy rc=$(val graphexec $m exec_rc)")
    [ "$(val graphexec $m alloc3_rc)" = 0 ] || why+=("$m: 1.25GiB after the executable's destroy rc=$(val graphexec $m alloc3_rc)")
    [ "$(val graphexec $m other_errors)" = 0 ] || why+=("$m: $(val graphexec $m other_errors) non-OOM errors")
done
[ "$(val graphexec native alloc2_rc)" = 0 ] || why+=("native: 1.25GiB beside the executable rc=$(val graphexec native alloc2_rc)")
[ "$(val graphexec shim alloc2_rc)" = 2 ] || why+=("shim: 1.25GiB beside the executable was not refused (rc=$(val graphexec shim alloc2_rc))")
n=$(val graphexec native outside_mib)
s=$(val graphexec shim outside_mib)
gt "$n" "$LIMIT" || why+=("native outside ${n:-?} <= $LIMIT: the executable kept no memory, proves nothing")
le "$s" "$LIMIT" || why+=("shim outside ${s:-?} > $LIMIT (or unread)")
verdict graphexec "$n" "$s" "$(refused graphexec shim)" "$(join ${why[@]+"${why[@]}"})"

# torch
why=()
for m in native shim; do e=$(runerr torch $m); [ -n "$e" ] && why+=("$e"); done
n=$(val torch native outside_mib)
s=$(val torch shim outside_mib)
r=$(refused torch shim)
gt "$n" "$LIMIT" || why+=("native outside ${n:-?} <= $LIMIT: proves nothing")
le "$s" "$LIMIT" || why+=("shim outside ${s:-?} > $LIMIT (or unread)")
case " $r " in *" rc=OOM "*) ;; *) why+=("shim: no torch.OutOfMemoryError: ${r:-none}") ;; esac
u=$(val torch shim oom_in_use_gib)
le "$u" 2.00 || why+=("shim: the message's in-use figure ${u:-?} GiB > 2.00 (or absent)")
grep -aq '^oom_in_use=[0-9]' "$WORK/out.torch.shim" 2>/dev/null &&
    say "  torch (shim): this process has $(grep -ao '^oom_in_use=[^=]*oom' "$WORK/out.torch.shim" | sed 's/^oom_in_use=//; s/ oom$//') in use; total capacity of $(sed -n 's/^oom_capacity=//p' "$WORK/out.torch.shim" | tail -1)"
verdict torch "$n" "$s" "$r; in use ${u:-?} GiB" "$(join ${why[@]+"${why[@]}"})"

# tree
why=()
for m in native vg; do e=$(runerr tree $m); [ -n "$e" ] && why+=("${e/vg/vramguard run}"); done
n=$(val tree native tree_sum_mib)
s=$(val tree vg tree_sum_mib)
o=$(val tree vg oom_children)
gt "$n" "$LIMIT" || why+=("native tree sum ${n:-?} <= $LIMIT: proves nothing")
le "$s" "$LIMIT" || why+=("vramguard run: tree sum ${s:-?} > $LIMIT (or unread)")
gt "${o:-0}" 0 || why+=("vramguard run: no child got OOM (ok_children=$(val tree vg ok_children))")
verdict tree "$n" "$s" "children OOM: ${o:-?} of 2 (native ok: $(val tree native ok_children))" \
    "$(join ${why[@]+"${why[@]}"})"

# race in cache mode (the native figure: the same native race run)
judge_fill race "race (POOL=cache)" cache

# ------------------------------------------------------------ the table, last
{
    echo ""
    echo "### Truth: outside readings (nvidia-smi, LD_PRELOAD removed), budget 2 GiB — $(date -u '+%F %T UTC'), $((SECONDS - START)) s"
    echo ""
    echo "| scenario | native outside MiB | shim outside MiB | budget+1% | refused call and code (shim) | result | why |"
    echo "|---|---|---|---|---|---|---|"
    while IFS='|' read -r a b c d e f; do
        echo "| $a | $b | $c | $LIMIT | $d | $e | $f |"
    done <"$ROWS"
    echo ""
    echo "(full log: $LOG)"
    echo "truth: $NPASS passed, $NFAIL failed"
} | tee -a "$LOG"
[ "$NFAIL" = 0 ]
