#!/usr/bin/env bash
# run-cargo.sh — the Rust crate's tests (bindings/rust): unit, integration and
# doc tests, offline, linked against $BUILD/libvramguard.so and run with the
# test driver first on the library path. Everything cargo writes goes under
# $BUILD (target dir $BUILD/rust, cargo's own cache $BUILD/cargo-home).
# Prints one closing line like run-tests.sh's:
#   rust tests: N passed, N failed
# and fails, saying so in that line, when cargo is missing: a machine without
# Rust has not tested the binding.
#   env: BUILD (build), SUMMARY (a file the closing line is appended to),
#        CARGO (a cargo binary; else cargo on PATH, else ~/.cargo/bin/cargo)
set -u
root=$PWD
build=$root/${BUILD:-build}
summary() {
  echo "$1"
  [ -n "${SUMMARY:-}" ] && echo "$1" >>"$SUMMARY"
}

cargo=${CARGO:-$(command -v cargo || true)}
[ -z "$cargo" ] && [ -x "${HOME:-/root}/.cargo/bin/cargo" ] && cargo=${HOME:-/root}/.cargo/bin/cargo
if [ -z "$cargo" ] || ! "$cargo" --version >/dev/null 2>&1; then
  summary "rust tests: FAILED, cargo not found (install Rust or put cargo on PATH; CARGO=path also works)"
  exit 1
fi

# cargo runs rustc (and rustdoc) from PATH: rustup keeps them beside cargo.
export PATH="$(dirname "$cargo"):$PATH"
export CARGO_TARGET_DIR=$build/rust CARGO_HOME=$build/cargo-home
export VRAMGUARD_LIB_DIR=$build
export LD_LIBRARY_PATH="$build/fakecuda:$build${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CARGO_TERM_COLOR=never

log=$(mktemp)
trap 'rm -f "$log"' EXIT
(cd bindings/rust && "$cargo" test --offline --locked 2>&1) | tee "$log"
rc=${PIPESTATUS[0]}
# One "test result:" line per test binary and one for the doc tests.
read -r passed failed < <(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' "$log" |
  awk '{p += $1; f += $2} END {print p + 0, f + 0}')
# A build error or a crash leaves no result line: count it as a failure.
[ "$rc" -ne 0 ] && [ "$failed" -eq 0 ] && failed=1
summary "rust tests: $passed passed, $failed failed"
[ "$rc" -eq 0 ]
