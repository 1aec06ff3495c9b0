#!/usr/bin/env bash
# run-tests.sh BIN... — runs each criterion test binary with the test driver
# first on the library path, then prints one closing line for the whole run:
#   tests: N passed, N failed
# Criterion runs every test in its own process, so no test depends on order.
# The C++ binding tests (tests/cpp/cxxtest.hpp) close the same way.
#   env: SUITE    the closing line's label instead of "tests"
#        SUMMARY  a file the closing line is also appended to
set -u
build=${BUILD:-build}
export LD_LIBRARY_PATH="$PWD/$build/fakecuda:$PWD/$build/fakenvml${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export VG_TEST_BUILD="$PWD/$build"
# TSan cannot map its shadow under high ASLR entropy on some kernels.
wrap=()
case "${SAN:-}" in *thread*) setarch "$(uname -m)" -R true 2>/dev/null && wrap=(setarch "$(uname -m)" -R) ;; esac
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}"

passed=0 failed=0 broken=()
for t in "$@"; do
  log=$(mktemp)
  "${wrap[@]}" "$t" --jobs 2 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  line=$(grep -a 'Synthesis: Tested:' "$log" | tail -n 1)
  p=$(sed -n 's/.*Passing: \([0-9]*\).*/\1/p' <<<"$line")
  # Criterion counts a crash in Failing too, so Failing is the whole count.
  f=$(sed -n 's/.*Failing: \([0-9]*\).*/\1/p' <<<"$line")
  passed=$((passed + ${p:-0}))
  if [ -z "$line" ] || [ "$rc" -ne 0 ]; then
    failed=$((failed + ${f:-0})); [ "${f:-0}" -eq 0 ] && failed=$((failed + 1))
    broken+=("$(basename "$t")")
  fi
  rm -f "$log"
done
[ ${#broken[@]} -gt 0 ] && echo "failing test binaries: ${broken[*]}"
line="${SUITE:-tests}: $passed passed, $failed failed"
echo "$line"
[ -n "${SUMMARY:-}" ] && echo "$line" >>"$SUMMARY"
[ "$failed" -eq 0 ]
