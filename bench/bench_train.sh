#!/usr/bin/env bash
# bench_train.sh — LoRA training throughput and peak memory of `iteralign train` on a
# SmolLM2-135M-shaped random model (E 576, L 30, H 9/3, F 1536, tied head; the GPT-2 vocabulary,
# 50257 tokens, stands in for SmolLM2's 49152), and the ratio against the same step in PyTorch on
# the same machine (bench_train.py; only when python3-torch is installed for $PYTHON).
#
# Step: BATCH examples of SEQ tokens (every token but the first few carries loss), LoRA rank 8,
# alpha 16 on all seven matrices, AdamW, clipping. tokens/s is the median of the steps after the
# first; peak memory is the process's maximum resident set (the mapped f32 weights included, for
# both). Environment: BENCH_TRAIN_STEPS (4), BENCH_TRAIN_BATCH (2), BENCH_TRAIN_SEQ (256),
# BENCH_THREADS (all cores). Writes bench/results/train.txt. Run from the repository root.
set -u
BIN=${BIN:-./iteralign}
PY=${PYTHON:-/usr/bin/python3}
STEPS=${BENCH_TRAIN_STEPS:-4}
BATCH=${BENCH_TRAIN_BATCH:-2}
SEQ=${BENCH_TRAIN_SEQ:-256}
THREADS=${BENCH_THREADS:-$(nproc)}
TMP=bench/results/tmp_train.$$   # ignored by git (bench/results/ is in .gitignore)
OUT=bench/results/train.txt
mkdir -p "$TMP" bench/results
trap 'rm -rf "$TMP"' EXIT

echo "bench_train: model (SmolLM2-135M shape, random f32) ..." >&2
"$BIN" make-model --preset smollm2-135m --vocab data/tokenizer/ggml-vocab-gpt-2.gguf --out "$TMP/smol.gguf" >/dev/null 2>&1 ||
  { echo "bench_train: make-model failed" >&2; exit 1; }
# examples longer than SEQ tokens (truncated to it): short prompt, long completion
awk -v n=$((STEPS * BATCH)) -v seq="$SEQ" 'BEGIN {
  split("the a cat dog ran jumped over under big small red blue green house tree river mountain quickly slowly happy", w, " ");
  srand(1);
  for (i = 0; i < n; i++) {
    s = "";
    for (j = 0; j < seq * 1.2; j++) s = s " " w[int(rand() * 20) + 1];
    printf("{\"prompt\":\"Story %d:\",\"completion\":\"%s\"}\n", i, s);
  }
}' > "$TMP/data.jsonl"

echo "bench_train: iteralign train ($STEPS steps of $BATCH x $SEQ tokens, $THREADS threads) ..." >&2
"$BIN" train -m "$TMP/smol.gguf" --data "$TMP/data.jsonl" --out "$TMP/a.gguf" --epochs 1 -b "$BATCH" \
  --max-len "$SEQ" --rank 8 --alpha 16 --schedule constant --warmup-ratio 0 -t "$THREADS" -q \
  --log "$TMP/log.jsonl" 2>"$TMP/train.err" || { cat "$TMP/train.err" >&2; exit 1; }
c_tps=$(tail -n +2 "$TMP/log.jsonl" | sed 's/.*"tokens_per_s":\([0-9.]*\).*/\1/' | sort -n |
        awk '{ a[NR] = $1 } END { if (NR == 0) print 0; else print a[int((NR + 1) / 2)] }')
[ "$c_tps" = 0 ] && c_tps=$(sed 's/.*"tokens_per_s":\([0-9.]*\).*/\1/' "$TMP/log.jsonl" | tail -1)
c_mib=$(sed -n 's/.*peak memory \([0-9.]*\) MiB.*/\1/p' "$TMP/train.err")
line="iteralign LoRA train: $c_tps tokens/s, peak $c_mib MiB"

if "$PY" -c 'import torch' 2>/dev/null; then
  echo "bench_train: PyTorch $("$PY" -c 'import torch; print(torch.__version__)') ..." >&2
  t=$("$PY" bench/bench_train.py --batch "$BATCH" --seq "$SEQ" --steps "$((STEPS - 1))" --threads "$THREADS" 2>&1 | tail -1)
  t_tps=$(awk '{ print $3 }' <<<"$t")
  t_mib=$(awk '{ print $5 }' <<<"$t")
  ratio=$(awk -v a="$c_tps" -v b="$t_tps" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
  mratio=$(awk -v a="$c_mib" -v b="$t_mib" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
  line="$line | PyTorch: $t_tps tokens/s, peak $t_mib MiB | speed ratio (iteralign/PyTorch) $ratio, memory ratio $mratio"
else
  line="$line | PyTorch: not installed for $PY (apt-get install python3-torch) — no ratio"
fi
{
  echo "# bench_train.sh $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, $THREADS threads, $BATCH x $SEQ tokens per step, $STEPS steps"
  echo "$line"
} | tee "$OUT"
