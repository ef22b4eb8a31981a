#!/usr/bin/env bash
# ablate.sh — what each speed change bought: prefill (pp512) and decode (tg128) tokens/s of the
# SmolLM2-135M shape, measured in one run, round-robin, for
#   base     the kernels before the speed work (git revision $ABLATE_BASE, default a314a4d), built
#            from `git archive` in a temporary folder
#   o2       this tree's kernels at -O2 (KERNEL_OPT=-O2): the tile loops not unrolled
#   exact    this tree, IA_PRECISION=exact (f32 activations for every weight type)
#   nospin   this tree, IA_SPIN_US=0 (pool threads sleep at once between jobs)
#   avx2     this tree, IA_KERNEL=avx2 (what an AVX2-only CPU runs)
#   now      this tree as built (./iteralign)
# Each figure is the median of ABLATE_ROUNDS rounds (default 3) of `iteralign bench -r 3`; the order
# of the variants rotates every round, so slow spells of a shared machine spread over all of them.
# Environment: ABLATE_TYPES (default "f32 f16 bf16 q8_0 q4_0 q4_k"), ABLATE_VARIANTS, BENCH_THREADS.
# Writes bench/results/ablate.md. Run from the repository root after `make`.
set -u
BIN=${BIN:-./iteralign}
BASE=${ABLATE_BASE:-a314a4d}
ROUNDS=${ABLATE_ROUNDS:-3}
TYPES=${ABLATE_TYPES:-f32 f16 bf16 q8_0 q4_0 q4_k}
VARIANTS=${ABLATE_VARIANTS:-base o2 exact nospin avx2 now}
THREADS=${BENCH_THREADS:-$(nproc)}
OUT=bench/results
MODELS=$OUT/models
TMP=bench/tmp_ablate.$$ # ignored by git
mkdir -p "$MODELS" "$TMP"
trap 'rm -rf "$TMP"' EXIT
log() { echo "ablate: $*" >&2; }
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

[ -x "$BIN" ] || { log "$BIN not built (run make)"; exit 1; }
for v in $VARIANTS; do
  case $v in
  base)
    log "building $BASE"
    mkdir -p "$TMP/base"
    git archive "$BASE" | tar -x -C "$TMP/base" && make -s -C "$TMP/base" -j"$(nproc)" iteralign >/dev/null 2>&1 ||
      { log "could not build $BASE"; exit 1; } ;;
  o2)
    log "building this tree with KERNEL_OPT=-O2"
    make -s BUILD="$TMP/o2" BIN="$TMP/o2/iteralign" KERNEL_OPT=-O2 -j"$(nproc)" "$TMP/o2/iteralign" >/dev/null 2>&1 ||
      { log "could not build the -O2 variant"; exit 1; } ;;
  esac
done

run() { # variant model -> "pp tg"
  local v=$1 m=$2 out
  case $v in
  base) out=$("$TMP/base/iteralign" bench -m "$m" -t "$THREADS" --only pp,tg -r 3 2>&1) ;;
  o2) out=$("$TMP/o2/iteralign" bench -m "$m" -t "$THREADS" --only pp,tg -r 3 2>&1) ;;
  exact) out=$(IA_PRECISION=exact "$BIN" bench -m "$m" -t "$THREADS" --only pp,tg -r 3 2>&1) ;;
  nospin) out=$(IA_SPIN_US=0 "$BIN" bench -m "$m" -t "$THREADS" --only pp,tg -r 3 2>&1) ;;
  avx2) out=$(IA_KERNEL=avx2 "$BIN" bench -m "$m" -t "$THREADS" --only pp,tg -r 3 2>&1) ;;
  now) out=$("$BIN" bench -m "$m" -t "$THREADS" --only pp,tg -r 3 2>&1) ;;
  esac
  echo "$(awk '/pp512/ { print $2 }' <<<"$out") $(awk '/tg128/ { print $2 }' <<<"$out")"
}

RES=$TMP/res.txt
: > "$RES"
for t in $TYPES; do
  m=$MODELS/smollm2-135m-$t.gguf
  if [ ! -f "$m" ] || [ ! -f "$m.ok" ]; then
    log "making $m"
    "$BIN" make-model --preset smollm2-135m --type "$t" --vocab data/tokenizer/ggml-vocab-gpt-2.gguf --out "$m" >/dev/null 2>&1 &&
      touch "$m.ok" || { log "make-model failed for $t"; exit 1; }
  fi
  read -r -a vs <<<"$VARIANTS"
  for ((r = 0; r < ROUNDS; r++)); do
    for ((i = 0; i < ${#vs[@]}; i++)); do
      v=${vs[$(((i + r) % ${#vs[@]}))]}
      read -r pp tg <<<"$(run "$v" "$m")"
      echo "$t $v ${pp:-0} ${tg:-0}" >> "$RES"
      log "$t $v round $((r + 1)): pp512 ${pp:-?} tg128 ${tg:-?}"
    done
  done
done

{
  echo "# ablate.sh $(date -u +%Y-%m-%dT%H:%M:%SZ): SmolLM2-135M shape, $THREADS threads, median of $ROUNDS rounds (tokens/s)"
  echo
  echo "base = $BASE; o2 = this tree with KERNEL_OPT=-O2; exact = IA_PRECISION=exact; nospin = IA_SPIN_US=0; avx2 = IA_KERNEL=avx2; now = this tree"
  echo
  printf '| type | figure |'
  for v in $VARIANTS; do printf ' %s |' "$v"; done
  echo
  printf '|---|---|'
  for v in $VARIANTS; do printf -- '---:|'; done
  echo
  for t in $TYPES; do
    for f in pp512 tg128; do
      printf '| %s | %s |' "$t" "$f"
      for v in $VARIANTS; do
        col=$([ $f = pp512 ] && echo 3 || echo 4)
        med=$(awk -v t="$t" -v v="$v" -v c="$col" '$1 == t && $2 == v { print $c }' "$RES" | sort -n |
              awk '{ a[NR] = $1 } END { if (NR) printf "%.1f", a[int((NR + 1) / 2)]; else print "—" }')
        printf ' %s |' "$med"
      done
      echo
    done
  done
} | tee "$OUT/ablate.md"
