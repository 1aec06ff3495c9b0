#!/usr/bin/env bash
# GPU probe (run ONCE on the lent H200): what memory does the driver take without an allocation call, and which
# reader sees it - NVML's per-process figure (design A) or an ioctl meter on the RM alloc/free escapes (design B).
#
# usage: bash tests/gpu/probe/run_probe.sh [OUTDIR]      (default /tmp/probe)
# Builds ioctl_meter.so, truth_probe and big_module.{fatbin,cubin} into OUTDIR with the machine's cc/nvcc, runs
# every scenario twice (plain, then LD_PRELOAD=ioctl_meter.so), a PyTorch sizing line, then a table.
# Every scenario runs under `timeout 60` (torch 90), cut shorter so the whole script ends within PROBE_BUDGET_S
# (225 s); a run that no longer fits is reported as ERROR ... skipped.
set -u

OUT=${1:-/tmp/probe}
HERE=$(cd "$(dirname "$0")" && pwd)
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
NVCC=${NVCC:-$CUDA_HOME/bin/nvcc}
CC=${CC:-cc}
BUDGET_S=${PROBE_BUDGET_S:-225}   # hard end for the whole script (runs are cut to fit)
START=$SECONDS

mkdir -p "$OUT" || { echo "ERROR cannot create $OUT"; exit 2; }
echo "== vramguard truth probe $(date -u +%FT%TZ) out=$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader 2>&1 | sed 's/^/gpu: /'

# ------------------------------------------------------------------ build
build_ok=1
echo "== build"
if ! "$CC" -O2 -shared -fPIC -Wall -Wextra -o "$OUT/ioctl_meter.so" "$HERE/ioctl_meter.c" -ldl -lpthread; then
    echo "ERROR build ioctl_meter.so"; build_ok=0
fi
if ! "$NVCC" -arch=sm_90 -O2 -o "$OUT/truth_probe" "$HERE/truth_probe.cu" -I"$HERE" \
        -L"$CUDA_HOME/lib64/stubs" -lcuda -ldl -lpthread; then
    echo "ERROR build truth_probe"; build_ok=0
fi
if ! "$NVCC" -arch=sm_90 -fatbin -o "$OUT/big_module.fatbin" "$HERE/big_module.cu" ||
   ! "$NVCC" -arch=sm_90 -cubin -o "$OUT/big_module.cubin" "$HERE/big_module.cu"; then
    echo "ERROR build big_module"; build_ok=0
fi
if [ "$build_ok" != 1 ]; then
    echo "ERROR build failed; nothing run"
    exit 2
fi
echo "build done in $((SECONDS - START)) s"

# ------------------------------------------------------------------ runs
# time_left MAX: seconds a run may take so the whole script ends within BUDGET_S (at most MAX)
time_left() {
    local left=$((BUDGET_S - (SECONDS - START)))
    [ "$left" -gt "$1" ] && left=$1
    echo "$left"
}
declare -a ROWS=()
npass=0; nfail=0; nerr=0

# run_one LABEL MODE(plain|meter) SCENARIO [ENV=VAL ...]
run_one() {
    local label=$1 mode=$2 sc=$3; shift 3
    local log="$OUT/log_${label}_${mode}.txt" rc pre=""
    local t
    t=$(time_left 60)
    if [ "$t" -lt 10 ]; then
        echo "ERROR $label/$mode skipped: time budget ${BUDGET_S}s spent"
        nerr=$((nerr + 1)); ROWS+=("$label $mode skipped - - - - - - - - -"); return
    fi
    [ "$mode" = meter ] && pre="$OUT/ioctl_meter.so"
    echo "---- $label ($mode)"
    (cd "$OUT" && env "$@" ${pre:+LD_PRELOAD=$pre} timeout -k 5 "$t" ./truth_probe "$sc" "$OUT/big_module.fatbin") \
        >"$log" 2>&1
    rc=$?
    cat "$log"
    local sum outside blind
    sum=$(grep -m1 '^summary ' "$log" || true)
    outside=$(grep -m1 '^outside_mib=' "$log" | sed 's/^outside_mib=\([^ ]*\).*/\1/' || true)
    blind=$(grep -q 'METER_BLIND' "$log" && echo blind || echo -)
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        echo "ERROR $label/$mode timed out (rc=$rc)"; nerr=$((nerr + 1))
    elif [ -z "$sum" ]; then
        echo "ERROR $label/$mode ended without a summary (rc=$rc)"; nerr=$((nerr + 1))
    elif [ "$rc" != 0 ]; then
        echo "FAIL $label/$mode rc=$rc (a driver call failed; see res=FAIL lines above)"; nfail=$((nfail + 1))
    else
        echo "PASS $label/$mode"; npass=$((npass + 1))
    fi
    # row: label mode max_step d_nvml first_read_showed d_rm rm_saw outside blind
    local row
    row="$label $mode $(field "$sum" max_step) $(field "$sum" d_nvml_mib) $(field "$sum" first_read_showed)"
    row="$row $(field "$sum" d_rm_mib) $(field "$sum" rm_saw) ${outside:--} $blind"
    row="$row $(field "$sum" drop_step) $(field "$sum" drop_nvml_mib) $(field "$sum" drop_rm_mib)"
    ROWS+=("$row")
}

# field LINE KEY: the value of KEY=... in LINE, or "-"
field() {
    local v
    v=$(echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1)
    echo "${v:--}"
}

SCENARIOS="ctx vmm heap stack module ctxdestroy race nvmlcost"
for sc in $SCENARIOS; do
    run_one "$sc" plain "$sc"
    run_one "$sc" meter "$sc"
done
# the module again with eager loading: does the 1.5 GiB move to cuModuleLoad?
run_one module_eager plain module CUDA_MODULE_LOADING=EAGER
run_one module_eager meter module CUDA_MODULE_LOADING=EAGER

# ------------------------------------------------------------------ PyTorch sizing (natively, then metered)
read -r -d '' PYCODE <<'PYEOF'
import ctypes, os, sys, time
try:
    import torch
except Exception as e:
    print("torch ERROR import", e); sys.exit(3)
if not torch.cuda.is_available():
    print("torch ERROR cuda not available"); sys.exit(3)
class P(ctypes.Structure):
    _fields_ = [("pid", ctypes.c_uint), ("used", ctypes.c_ulonglong), ("gi", ctypes.c_uint), ("ci", ctypes.c_uint)]
try:
    nv = ctypes.CDLL("libnvidia-ml.so.1"); nv.nvmlInit_v2()
    hdev = ctypes.c_void_p(); nv.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(hdev))
except Exception as e:
    nv = None; print("torch nvml unavailable", e)
meter = None
try:
    meter = ctypes.CDLL(None).probe_meter_read   # present only when ioctl_meter.so is preloaded
except AttributeError:
    pass
def nvml_mib():
    if nv is None: return -2.0
    n = ctypes.c_uint(256); buf = (P * 512)()
    if nv.nvmlDeviceGetComputeRunningProcesses_v3(hdev, ctypes.byref(n), buf) != 0: return -2.0
    for i in range(n.value):
        if buf[i].pid == os.getpid(): return buf[i].used / 2**20
    return -1.0
def rm_mib():
    if meter is None: return -1.0
    b = (ctypes.c_uint64 * 32)()
    return b[14] / 2**20 if meter(b) == 0 else -1.0   # struct probe_meter: vid_live_bytes is u64 #14
def line(tag):
    torch.cuda.synchronize(); time.sleep(0.2)
    f, t = torch.cuda.mem_get_info()
    n = nvml_mib(); res = torch.cuda.memory_reserved() / 2**20
    print(f"torch step={tag} allocated_mib={torch.cuda.memory_allocated()/2**20:.1f} reserved_mib={res:.1f} "
          f"nvml_mib={n:.1f} meminfo_used_mib={(t-f)/2**20:.1f} rm_live_mib={rm_mib():.1f} "
          f"implicit_mib={n-res:.1f}", flush=True)
print(f"torch version={torch.__version__} cuda={torch.version.cuda} dev={torch.cuda.get_device_name(0)}")
x = torch.zeros(1, device="cuda"); line("ctx")
ts = [torch.empty(256 << 20, dtype=torch.uint8, device="cuda") for _ in range(8)]; line("alloc_2GiB")
a = torch.randn(4096, 4096, device="cuda"); b = a @ a; line("after_matmul_cublas")
c = torch.nn.functional.conv2d(torch.randn(8, 16, 64, 64, device="cuda"), torch.randn(32, 16, 3, 3, device="cuda"))
line("after_conv_cudnn")
del ts, a, b, c; torch.cuda.empty_cache(); line("after_free_empty_cache")
PYEOF

run_torch() {
    local mode=$1 pre="" log="$OUT/log_torch_$1.txt" rc
    local t
    t=$(time_left 90)
    if [ "$t" -lt 20 ]; then
        echo "ERROR torch/$mode skipped: time budget ${BUDGET_S}s spent"; nerr=$((nerr + 1)); return
    fi
    [ "$mode" = meter ] && pre="$OUT/ioctl_meter.so"
    echo "---- torch ($mode)"
    env ${pre:+LD_PRELOAD=$pre} timeout -k 5 "$t" python3 -c "$PYCODE" >"$log" 2>&1
    rc=$?
    grep -v '^\[meter\] class=' "$log" | tail -n 40
    grep '^\[meter\] class=0x0040' "$log" || true
    if grep -q '^torch step=after_free_empty_cache' "$log"; then
        echo "PASS torch/$mode"; npass=$((npass + 1))
    elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        echo "ERROR torch/$mode timed out"; nerr=$((nerr + 1))
    else
        echo "FAIL torch/$mode rc=$rc"; nfail=$((nfail + 1))
    fi
}
run_torch plain
run_torch meter

# ------------------------------------------------------------------ table
echo
echo "== table (implicit memory = largest settled NVML rise between two steps of a scenario)"
FMT='%-13s %-5s %-22s %9s %-10s %9s %-7s %8s %-6s %-20s %9s %9s\n'
# shellcheck disable=SC2059
printf "$FMT" scenario mode rise_step nvml_d_mib nvml_first rm_d_mib rm_saw smi_end blind drop_step nvml_drop rm_drop
for r in "${ROWS[@]}"; do
    # shellcheck disable=SC2086,SC2059
    printf "$FMT" $r
done
echo "(nvml_first: NVML's first read right after the step already showed the rise; rm_saw: the ioctl meter's live"
echo " RM video bytes rose by the same amount (+-max(64 MiB,10%); 'na' when not preloaded); smi_end: nvidia-smi's"
echo " figure for the pid at the end; blind: the meter saw no NVIDIA ioctl at all; drop_*: the largest settled fall)"
grep -h '^torch step=' "$OUT"/log_torch_*.txt 2>/dev/null | sed 's/^/  /'
grep -h '^nvmlcost ' "$OUT"/log_nvmlcost_*.txt 2>/dev/null | sed 's/^/  /'
grep -h 'METER_BLIND' "$OUT"/log_*_meter.txt 2>/dev/null | sort -u | sed 's/^/  /'
echo "== totals: PASS=$npass FAIL=$nfail ERROR=$nerr  elapsed=$((SECONDS - START)) s  logs in $OUT/log_*.txt"
[ "$nerr" = 0 ] && [ "$nfail" = 0 ]
