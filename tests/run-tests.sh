#!/usr/bin/env bash
# run-tests.sh — runs every test: the cmocka unit-test binaries (TAP output), then the script tests
# in tests/*.sh (each prints TAP lines "ok N - name" / "not ok N - name"). Prints a summary line
# "N passed, N failed" and exits non-zero if anything failed.
set -u
BUILD=${BUILD:-build}
export BIN=${BIN:-./iteralign}
export CMOCKA_MESSAGE_OUTPUT=tap
export IA_TEST_FUZZ_SECONDS=${IA_TEST_FUZZ_SECONDS:-20}
pass=0; fail=0; skip=0; failed_suites=()
mkdir -p tests/tmp
run_suite() { # name, command...
  local name=$1; shift
  local out rc
  echo "# suite: $name"
  out=$("$@" 2>&1); rc=$?
  echo "$out"
  local p f
  # TAP: "ok N # SKIP" and cmocka's "not ok N # SKIP" are skips, not passes or failures
  k=$(printf '%s\n' "$out" | grep -E '^(not )?ok [0-9]+' | grep -ciE '# *SKIP' || true)
  p=$(printf '%s\n' "$out" | grep -E '^ok [0-9]+' | grep -cviE '# *SKIP' || true)
  f=$(printf '%s\n' "$out" | grep -E '^not ok [0-9]+' | grep -cviE '# *SKIP' || true)
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi   # crashed or failed without a TAP line
  pass=$((pass + p)); fail=$((fail + f)); skip=$((skip + k))
  [ "$f" -gt 0 ] && failed_suites+=("$name")
  return 0
}
for t in "$BUILD"/tests/test_*; do
  [ -x "$t" ] || continue
  run_suite "$(basename "$t")" "$t"
done
for s in tests/t_*.sh; do
  [ -f "$s" ] || continue
  run_suite "$(basename "$s")" bash "$s"
done
echo
if [ ${#failed_suites[@]} -gt 0 ]; then echo "failed suites: ${failed_suites[*]}"; fi
rm -rf tests/tmp/t[0-9]*   # per-binary temp folders (tests/test_util.h)
echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
