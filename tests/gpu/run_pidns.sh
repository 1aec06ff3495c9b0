#!/usr/bin/env bash
# tests/gpu/run_pidns.sh — is the budget truthful inside a PID namespace (a container without hostPID)?
# The memory no call shows is charged from NVML's per-process figure, found by this process's pid; where
# NVML reported host pids, a process in a namespace would not find itself and only calls would count.
# On the machine with the GPU, as root (unshare --pid needs CAP_SYS_ADMIN), with BUILD_DIR from
# tests/gpu/build.sh.
#
#   tests/gpu/run_pidns.sh [BUILD_DIR]      BUILD_DIR: build/gpu (default)
#
# Checks, each PASS or FAIL:
#   listed   a process in a new PID namespace holding 768 MiB finds itself in
#            nvidia-smi --query-compute-apps by its own getpid() (which is 1 there)
#   charged  the same under the shim with VRAMGUARD_BUDGET=1GiB: the 768 MiB allocation is refused with
#            CUDA_ERROR_OUT_OF_MEMORY (2), because the context (about 500 MiB on an H100) was charged; a
#            shim that counted calls only would let it through. No line saying NVML is missing or does
#            not list the process.
#   truth    tests/gpu/run_truth.sh BUILD_DIR, whole, inside a PID namespace
# Exit 0 only when all pass; 2 when no PID namespace can be made here.
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/gpu/common.sh
. "$HERE/common.sh" # find_libcuda
B=${1:-build/gpu}
if [ ! -f "$B/libvramguard-preload.so" ]; then
    echo "run_pidns.sh: no libvramguard-preload.so in '$B' (run tests/gpu/build.sh and carry the folder)" >&2
    exit 2
fi
B=$(cd "$B" && pwd)
PYTHON=${PYTHON:-python3}
find_libcuda
if ! unshare --pid --fork --mount-proc true 2>/dev/null; then
    echo "run_pidns.sh: cannot make a PID namespace here (unshare --pid needs root)" >&2
    exit 2
fi
WORK=$(mktemp -d /tmp/vgpidns.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
fails=0
verdict() { # NAME OK DETAIL
    if [ "$2" = 1 ]; then echo "PASS $1: $3"; else echo "FAIL $1: $3"; fails=$((fails + 1)); fi
}

# Holds 768 MiB through the driver API, then prints its pid, the allocation's result and what nvidia-smi
# (without the shim) lists, one "pid, MiB" per line.
cat >"$WORK/hold.py" <<'EOF'
import ctypes, os, subprocess
cuda = ctypes.CDLL("libcuda.so.1")
dev, ctx, ptr = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
assert cuda.cuInit(0) == 0 and cuda.cuDeviceGet(ctypes.byref(dev), 0) == 0
assert cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev) == 0 and cuda.cuCtxSetCurrent(ctx) == 0
rc = cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(768 << 20))
print("pid", os.getpid(), "rc", rc, flush=True)
env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith("VRAMGUARD_")}
smi = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                     capture_output=True, text=True, env=env).stdout
for line in smi.splitlines():
    print("smi", line.replace(",", " "))
EOF

unshare --pid --fork --mount-proc "$PYTHON" "$WORK/hold.py" >"$WORK/native" 2>&1
read -r _ pid _ rc < <(grep '^pid ' "$WORK/native")
mib=$(awk -v p="${pid:-x}" '$1 == "smi" && $2 == p {print $3}' "$WORK/native")
verdict listed "$([ "${rc:-}" = 0 ] && [ -n "$mib" ] && echo 1)" \
    "pid ${pid:-?} in the namespace, alloc rc ${rc:-?}, nvidia-smi lists it with ${mib:-nothing} MiB"

LD_PRELOAD=$B/libvramguard-preload.so VRAMGUARD_BUDGET=1GiB \
    unshare --pid --fork --mount-proc "$PYTHON" "$WORK/hold.py" >"$WORK/shim" 2>&1
read -r _ pid _ rc < <(grep '^pid ' "$WORK/shim")
mib=$(awk -v p="${pid:-x}" '$1 == "smi" && $2 == p {print $3}' "$WORK/shim")
missing=$(grep -cE "does not list|not available|unusable" "$WORK/shim")
verdict charged "$([ "${rc:-}" = 2 ] && [ "$missing" = 0 ] && echo 1)" \
    "alloc rc ${rc:-?} (2 expected), held ${mib:-?} MiB, lines saying NVML cannot tell: $missing"
grep '^vramguard:' "$WORK/shim" | head -3

echo "== run_truth.sh inside a PID namespace"
unshare --pid --fork --mount-proc bash "$HERE/run_truth.sh" "$B" >"$WORK/truth" 2>&1
truth_rc=$?
tail -22 "$WORK/truth"
verdict truth "$([ "$truth_rc" = 0 ] && echo 1)" "$(grep '^truth:' "$WORK/truth" || echo "no summary")"

echo "pidns: $((3 - fails)) passed, $fails failed"
[ "$fails" = 0 ]
