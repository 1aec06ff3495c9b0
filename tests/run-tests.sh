#!/usr/bin/env bash
# run-tests.sh BIN... — runs each criterion test binary with the test driver
# first on the library path, then prints one closing line for the whole run:
#   tests: N passed, N failed
# Criterion runs every test in its own process, so no test depends on order.
# The C++ binding tests (tests/cpp/cxxtest.hpp) close the same way.
#   env: SUITE    the closing line's label instead of "tests"
#        SUMMARY  a file the closing line is also appended to
# A skipped test counts as failed unless its reason starts with "no GPU":
# the test driver stands in for the GPU here, so any other skip is a test
# that did not run. Skips are read from Criterion's TAP report, or from the
# "[SKIP] suite::name: reason" lines of the TSan build's runner.
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

# Shared-budget regions the tests made (VG__SHM_PREFIX "vgtest-PID-tag") and
# left behind when a test process was killed: those of dead PIDs go, so
# they do not pile up in `vramguard status` on a developer's machine.
for f in /dev/shm/vramguard.vgtest-*; do
  [ -e "$f" ] || continue
  pid=${f#/dev/shm/vramguard.vgtest-}
  pid=${pid%%-*}
  case "$pid" in '' | *[!0-9]*) continue ;; esac
  kill -0 "$pid" 2>/dev/null || rm -f -- "$f"
done

# The skips of one binary, "suite::name: reason" a line.
skips_of() { # LOG TAP
  sed -n 's/^\[SKIP\] \([^ ]*::[^ ]*\): \(.*\)$/\1: \2/p' "$1"
  sed -n 's/^ok - \([^ ]*\)  *# SKIP \(.*\)$/\1: \2/p' "$2"
}

passed=0 failed=0 broken=()
for t in "$@"; do
  log=$(mktemp) tap=$(mktemp)
  report=(--tap="$tap")
  case "${SAN:-}" in *thread*) report=() ;; esac # the compat runner prints skips itself
  "${wrap[@]}" "$t" --jobs 2 "${report[@]}" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  bad_skips=0
  while IFS= read -r s; do
    [ -n "$s" ] || continue
    case "${s#*: }" in
      "no GPU"*) echo "skipped: $s" ;;
      *) echo "skipped without saying there is no GPU (counted as failed): $s"; bad_skips=$((bad_skips + 1)) ;;
    esac
  done < <(skips_of "$log" "$tap")
  line=$(grep -a 'Synthesis: Tested:' "$log" | tail -n 1)
  p=$(sed -n 's/.*Passing: \([0-9]*\).*/\1/p' <<<"$line")
  # Criterion counts a crash in Failing too, so Failing is the whole count.
  f=$(sed -n 's/.*Failing: \([0-9]*\).*/\1/p' <<<"$line")
  passed=$((passed + ${p:-0}))
  if [ -z "$line" ] || [ "$rc" -ne 0 ]; then
    failed=$((failed + ${f:-0})); [ "${f:-0}" -eq 0 ] && failed=$((failed + 1))
    broken+=("$(basename "$t")")
  elif [ "$bad_skips" -gt 0 ]; then
    failed=$((failed + bad_skips))
    broken+=("$(basename "$t")")
  fi
  rm -f "$log" "$tap"
done
[ ${#broken[@]} -gt 0 ] && echo "failing test binaries: ${broken[*]}"
line="${SUITE:-tests}: $passed passed, $failed failed"
echo "$line"
[ -n "${SUMMARY:-}" ] && echo "$line" >>"$SUMMARY"
[ "$failed" -eq 0 ]
