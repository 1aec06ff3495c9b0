#!/usr/bin/env bash
# compile-fail.sh SNIPPET... — each snippet under tests/cpp/compile_fail must
# compile as it stands and must FAIL to compile with -DVG_MUST_FAIL, with the
# compiler's message containing the snippet's "// expect:" text (so it fails
# for the reason it is there, not for a typo). "// flags:" adds options.
# Prints one line per snippet and a closing line like run-tests.sh's; with
# SUMMARY set, appends that line to the file it names.
#   env: CXX (g++), CXXFLAGS (the C++ tests' flags)
set -u
export LC_ALL=C  # the messages matched below, in plain ASCII
CXX=${CXX:-g++}
read -r -a flags <<<"${CXXFLAGS:-}"
passed=0 failed=0
for f in "$@"; do
  name=$(basename "$f" .cpp)
  expect=$(sed -n 's|^// expect: ||p' "$f" | head -n 1)
  read -r -a extra <<<"$(sed -n 's|^// flags: ||p' "$f" | head -n 1)"
  why=
  if [ -z "$expect" ]; then
    why="no '// expect:' line"
  elif ! out=$("$CXX" "${flags[@]}" "${extra[@]}" -fsyntax-only "$f" 2>&1); then
    why="does not compile even without VG_MUST_FAIL:"$'\n'"$out"
  elif out=$("$CXX" "${flags[@]}" "${extra[@]}" -fsyntax-only -DVG_MUST_FAIL "$f" 2>&1); then
    why="compiled with VG_MUST_FAIL; it must not"
  elif ! grep -qF -- "$expect" <<<"$out"; then
    why="failed, but without '$expect':"$'\n'"$(head -n 20 <<<"$out")"
  fi
  if [ -z "$why" ]; then
    echo "[PASS] compile_fail::$name"
    passed=$((passed + 1))
  else
    echo "[FAIL] compile_fail::$name: $why"
    failed=$((failed + 1))
  fi
done
line="c++ compile-fail checks: $passed passed, $failed failed"
echo "$line"
[ -n "${SUMMARY:-}" ] && echo "$line" >>"$SUMMARY"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
