#!/usr/bin/env bash
# tests/gpu/build.sh — builds everything the GPU checks need into one folder
# (default build/gpu), on a machine WITHOUT a GPU. The GPU machine builds
# nothing: carry the folder there and run tests/gpu/run.sh (and run_audit_shared.sh,
# run_pool.sh, run_truth.sh, bindings.sh) on it. Needs cargo for the Rust binding's program.
#
#   tests/gpu/build.sh [OUT_DIR]      env: CUDA_HOME (/usr/local/cuda), CC, CXX, NVCC, CARGO,
#                                     ENGINE (build/gpu-engine: the engine's own build)
#
# The programs linked with -lcuda are linked against the toolkit's stub and
# carry no rpath, so at run time they load whatever libcuda.so.1 the loader
# finds: the real driver on the GPU machine, tests/fakecuda's build here.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
OUT=${1:-build/gpu}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
CC=${CC:-cc}
NVCC=${NVCC:-$CUDA_HOME/bin/nvcc}
ENGINE=${ENGINE:-build/gpu-engine}  # the engine, by the project's Makefile (not carried)

CFLAGS="-std=c11 -O2 -g -Wall -Wextra -Werror -D_GNU_SOURCE -Iinclude -Itests/gpu -I$CUDA_HOME/include"
STUB="-L$CUDA_HOME/lib64/stubs -lcuda"

mkdir -p "$OUT"
echo "== engine (make BUILD=$ENGINE)"
make --no-print-directory BUILD="$ENGINE" \
    "$ENGINE/libvramguard.a" "$ENGINE/libvramguard.so" "$ENGINE/libvramguard-preload.so" >/dev/null

echo "== gpu_api"
$CC $CFLAGS tests/gpu/gpu_api.c "$ENGINE/libvramguard.a" -ldl -lpthread -o "$OUT/gpu_api"
echo "== bench_pairs"
$CC $CFLAGS tests/gpu/bench_pairs.c $STUB -lpthread -o "$OUT/bench_pairs"
echo "== sync_probe"
$CC $CFLAGS tests/gpu/sync_probe.c $STUB -lpthread -o "$OUT/sync_probe"
echo "== forward_shim"
$CC $CFLAGS -shared -fPIC tests/gpu/forward_shim.c -ldl -o "$OUT/forward_shim.so"
echo "== graph_probe"
$CC $CFLAGS tests/gpu/graph_probe.c $STUB -o "$OUT/graph_probe"
echo "== driver_paths"
$CC $CFLAGS tests/gpu/driver_paths.c $STUB -o "$OUT/driver_paths"
echo "== badptr_gpu"
$CC $CFLAGS tests/gpu/badptr_gpu.c $STUB -o "$OUT/badptr_gpu"
echo "== pool_views"
$CC $CFLAGS tests/gpu/pool_views.c $STUB -ldl -o "$OUT/pool_views"
echo "== static_cudart"
"$NVCC" -O2 -cudart static -Itests/gpu -o "$OUT/static_cudart" tests/gpu/static_cudart.cu
# run_truth.sh: truth_gpu is host code only (-x c++, no cudart); its kernels and the 1.5 GiB module are
# fatbins loaded with cuModuleLoad from the same folder.
echo "== truth_gpu, truth_kernels.fatbin, big_module.fatbin"
"$NVCC" -x c++ -O2 -cudart none -I"$CUDA_HOME/include" -o "$OUT/truth_gpu" tests/gpu/truth_gpu.cu $STUB -lpthread
"$NVCC" -arch=sm_90 -fatbin -DTRUTH_KERNELS -o "$OUT/truth_kernels.fatbin" tests/gpu/truth_gpu.cu
"$NVCC" -arch=sm_90 -fatbin -o "$OUT/big_module.fatbin" tests/gpu/probe/big_module.cu

cp "$ENGINE/libvramguard-preload.so" "$ENGINE/libvramguard.so" "$OUT/"
# run_audit_shared.sh and run_pool.sh: the CLI (it finds the shim beside itself) and the
# pool's example and benchmark, from the same engine build.
echo "== vramguard, examples/model_slots, examples/pool_bench"
make --no-print-directory BUILD="$ENGINE" "$ENGINE/vramguard" "$ENGINE/examples/model_slots" \
    "$ENGINE/examples/pool_bench" >/dev/null
cp "$ENGINE/vramguard" "$ENGINE/examples/model_slots" "$ENGINE/examples/pool_bench" "$OUT/"
# The test driver, beside the engine and never in the carried folder, for a
# dry run without a GPU: LIBCUDA_DIR=$ENGINE/fakecuda tests/gpu/run.sh $OUT
make --no-print-directory BUILD="$ENGINE" "$ENGINE/fakecuda/libcuda.so.1" >/dev/null 2>&1 ||
    echo "(no test driver: uthash-dev missing? only the dry run needs it)"
# ... and a copy in the carried folder, so the hooked-call benchmark can also
# run over it on the GPU machine's 16 cores (run.sh's test-driver mode).
if [ -f "$ENGINE/fakecuda/libcuda.so.1" ]; then
    mkdir -p "$OUT/fakecuda" && cp "$ENGINE/fakecuda/libcuda.so.1" "$OUT/fakecuda/"
fi
# The null driver (tests/nulldriver), carried too: the shim's own cost and
# thread scaling with no driver work in the way (run.sh's null-driver mode).
make --no-print-directory BUILD="$ENGINE" "$ENGINE/nulldriver/libcuda.so.1" >/dev/null
mkdir -p "$OUT/nulldriver" && cp "$ENGINE/nulldriver/libcuda.so.1" "$OUT/nulldriver/"
# The bindings (tests/gpu/bindings.sh): a C++ program over vramguard.hpp and
# the Rust crate's gpu_check example, both linked to libvramguard.so, which
# they find beside them as libvramguard.so.0 (its soname) at run time.
echo "== bindings_cpp, bindings_rust"
${CXX:-g++} -std=c++17 -O2 -g -Wall -Wextra -Werror -Wshadow -Iinclude -Itests/gpu \
    tests/gpu/bindings_gpu.cpp -L"$ENGINE" -lvramguard -o "$OUT/bindings_cpp"
CARGO=${CARGO:-$(command -v cargo || echo "$HOME/.cargo/bin/cargo")}
ENGINE_DIR=$(cd "$ENGINE" && pwd)
(cd bindings/rust && PATH="$(dirname "$CARGO"):$PATH" CARGO_TARGET_DIR="$ENGINE_DIR/rust" \
    CARGO_HOME="$ENGINE_DIR/cargo-home" VRAMGUARD_LIB_DIR="$ENGINE_DIR" \
    "$CARGO" build --offline --locked --release --example gpu_check)
cp "$ENGINE/rust/release/examples/gpu_check" "$OUT/bindings_rust"
cp "$ENGINE/libvramguard.so" "$OUT/libvramguard.so.0"
# nothing in the carried folder may depend on the stub at run time
for f in gpu_api bench_pairs driver_paths static_cudart badptr_gpu pool_views vramguard model_slots pool_bench \
    truth_gpu bindings_cpp bindings_rust; do
    if readelf -d "$OUT/$f" | grep -q 'R.*PATH'; then
        echo "build.sh: $f has an rpath/runpath; it must not" >&2
        exit 1
    fi
done
echo "built into $OUT:"
ls -la "$OUT"
