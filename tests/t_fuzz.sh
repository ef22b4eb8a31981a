#!/usr/bin/env bash
# t_fuzz.sh — bounded fuzzing: builds every libFuzzer target (tests/fuzz/fuzz_*.c) with `make fuzz`
# and runs each for $IA_TEST_FUZZ_SECONDS seconds (default 20; 0 skips) on a fresh copy of its seed
# corpus. One TAP line per fuzzer.
#
# Seeds for fuzz_NAME: every file in tests/fuzz/corpus/NAME/, plus the repository files listed one
# per line in tests/fuzz/fuzz_NAME.seeds (if present; cut to the first $MAX_LEN bytes so big models
# do not slow every run). Crash artifacts and logs go to tests/tmp/fuzz-NAME.<pid>/ — never into
# the repository or data/.
set -u
cd "$(dirname "$0")/.." || exit 1
BUILD=${BUILD:-build}
SECS=${IA_TEST_FUZZ_SECONDS:-20}
MAX_LEN=${IA_TEST_FUZZ_MAX_LEN:-16384}
n=0
failed=0

srcs=(tests/fuzz/fuzz_*.c)
if [ ! -e "${srcs[0]}" ]; then
  echo "1..0 # SKIP no fuzz targets"
  exit 0
fi
echo "1..${#srcs[@]}"

skip_all() { # reason
  for s in "${srcs[@]}"; do
    n=$((n + 1))
    echo "ok $n - $(basename "$s" .c) # SKIP $1"
  done
  exit 0
}
command -v clang >/dev/null 2>&1 || skip_all "clang not installed"
[ "$SECS" -gt 0 ] 2>/dev/null || skip_all "IA_TEST_FUZZ_SECONDS=$SECS"

mkdir -p tests/tmp
build_log=tests/tmp/fuzz-build.$$.log
# Build each target on its own, so one that does not compile does not hide the others.
declare -A built
for s in "${srcs[@]}"; do
  name=$(basename "$s" .c)
  if make --no-print-directory BUILD="$BUILD" "$BUILD/fuzz/$name" >>"$build_log" 2>&1; then built[$name]=1; fi
done

for s in "${srcs[@]}"; do
  name=$(basename "$s" .c)
  short=${name#fuzz_}
  n=$((n + 1))
  bin="$BUILD/fuzz/$name"
  if [ -z "${built[$name]:-}" ] || [ ! -x "$bin" ]; then
    echo "not ok $n - $name (did not build; see $build_log)"
    grep -E 'error|Error' "$build_log" | head -n 5 | sed 's/^/# /'
    failed=1
    continue
  fi
  work=tests/tmp/fuzz-$short.$$
  rm -rf "$work"
  mkdir -p "$work/corpus"
  if [ -d "tests/fuzz/corpus/$short" ]; then
    cp tests/fuzz/corpus/"$short"/* "$work/corpus/" 2>/dev/null
  fi
  if [ -f "tests/fuzz/$name.seeds" ]; then
    while IFS= read -r seed; do
      case "$seed" in ''|'#'*) continue ;; esac
      [ -f "$seed" ] && head -c "$MAX_LEN" "$seed" >"$work/corpus/seed-$(basename "$seed")"
    done <"tests/fuzz/$name.seeds"
  fi
  timeout $((SECS + 120)) "$bin" -max_total_time="$SECS" -rss_limit_mb=2048 -max_len="$MAX_LEN" \
    -timeout=10 -artifact_prefix="$work/" -print_final_stats=1 "$work/corpus" >"$work/log" 2>&1
  rc=$?
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$work/log" | grep -oE '[0-9]+$')
  if [ "$rc" -eq 0 ]; then
    echo "ok $n - $name (${runs:-?} runs in ${SECS}s)"
    rm -rf "$work"
  else
    echo "not ok $n - $name (exit $rc; artifacts and log in $work/)"
    grep -E 'ERROR|SUMMARY|runtime error|Test unit written' "$work/log" | head -n 8 | sed 's/^/# /'
    failed=1
  fi
done
rm -f "$build_log"
exit $failed
