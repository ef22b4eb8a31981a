#!/usr/bin/env bash
# bench_train.sh — LoRA training throughput and peak memory of `iteralign train` on a
# SmolLM2-135M-shaped random model (E 576, L 30, H 9/3, F 1536, tied head; the GPT-2 vocabulary,
# 50257 tokens, stands in for SmolLM2's 49152), and the ratio against the same step in PyTorch on
# the same machine (bench_train.py; only when python3-torch is installed for $PYTHON).
#
# Step: BATCH examples of SEQ tokens (every token but the first few carries loss), LoRA rank 8,
# alpha 16 on all seven matrices, AdamW, clipping. tokens/s is the median of the steps after the
# first; peak memory is the process's maximum resident set (the mapped f32 weights included, for
# both). Where the CPU has AVX512_BF16, iteralign runs a second time with --compute bf16. Environment: BENCH_TRAIN_STEPS (6), BENCH_TRAIN_BATCH (2), BENCH_TRAIN_SEQ (256),
# BENCH_THREADS (all cores), LLAMA_FINETUNE (a llama-finetune-lora binary: measured on the same model).
# Writes bench/results/train.txt. Run from the repository root.
set -u
BIN=${BIN:-./iteralign}
PY=${PYTHON:-/usr/bin/python3}
STEPS=${BENCH_TRAIN_STEPS:-6}
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
# the same with the base-weight products in bf16 (--compute bf16), where the CPU multiplies bf16 pairs
if grep -qw avx512_bf16 /proc/cpuinfo 2>/dev/null; then
  echo "bench_train: iteralign train --compute bf16 ..." >&2
  rm -f "$TMP/log16.jsonl"
  "$BIN" train -m "$TMP/smol.gguf" --data "$TMP/data.jsonl" --out "$TMP/a16.gguf" --epochs 1 -b "$BATCH" \
    --max-len "$SEQ" --rank 8 --alpha 16 --schedule constant --warmup-ratio 0 -t "$THREADS" -q --compute bf16 \
    --log "$TMP/log16.jsonl" 2>"$TMP/train16.err" || { cat "$TMP/train16.err" >&2; exit 1; }
  b_tps=$(tail -n +2 "$TMP/log16.jsonl" | sed 's/.*"tokens_per_s":\([0-9.]*\).*/\1/' | sort -n |
          awk '{ a[NR] = $1 } END { if (NR == 0) print 0; else print a[int((NR + 1) / 2)] }')
  b_mib=$(sed -n 's/.*peak memory \([0-9.]*\) MiB.*/\1/p' "$TMP/train16.err")
  line="$line | iteralign LoRA train bf16: $b_tps tokens/s, peak $b_mib MiB"
else
  line="$line | iteralign LoRA train bf16: not measured (no avx512_bf16 on this CPU)"
fi

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
# llama-finetune-lora (a llama.cpp fork with LoRA training, e.g. tetherto/qvac-fabric-llm.cpp) on the
# same file: next-token training on plain text in windows of SEQ tokens (its dataset format; flash
# attention off: it has no backward pass there), rank 8 on
# the same seven matrices, AdamW. It reports no throughput, so it runs twice on texts of different
# length and tokens/s = (extra windows x SEQ) / (extra seconds): loading and setup cancel out. Its
# peak memory is the larger run's maximum resident set (/usr/bin/time).
if [ -n "${LLAMA_FINETUNE:-}" ] && [ -x "$LLAMA_FINETUNE" ] && [ -x /usr/bin/time ]; then
  echo "bench_train: $LLAMA_FINETUNE ..." >&2
  ft_run() { # words -> "seconds peak_kib windows"
    awk -v n="$1" 'BEGIN { split("the a cat dog ran jumped over under big small red blue green house tree river mountain quickly slowly happy", w, " ");
      srand(2); for (j = 0; j < n; j++) printf "%s%s", w[int(rand() * 20) + 1], (j % 15 == 14) ? ".\n" : " " }' > "$TMP/ft.txt"
    local t0 t1
    t0=$(date +%s.%N)
    OMP_WAIT_POLICY=${LLAMA_FT_OMP:-active} /usr/bin/time -f 'peak_kib %M' timeout "${BENCH_PEER_TIMEOUT:-600}" "$LLAMA_FINETUNE" \
      -m "$TMP/smol.gguf" -f "$TMP/ft.txt" -c "$SEQ" -b "$SEQ" -ub "$SEQ" -t "$THREADS" -fa off --lora-rank 8 --lora-alpha 16 \
      --lora-modules attn_q,attn_k,attn_v,attn_o,ffn_gate,ffn_up,ffn_down --num-epochs 1 --learning-rate 1e-4 \
      --checkpoint-save-steps 100000 --checkpoint-save-dir "$TMP/ckpt" --output-adapter "$TMP/ft.gguf" > "$TMP/ft.log" 2>&1 || return 1
    t1=$(date +%s.%N)
    local kib nd
    kib=$(sed -n 's/^peak_kib \([0-9]*\).*/\1/p' "$TMP/ft.log" | tail -1)
    nd=$(sed -n 's/.*batches_per_epoch=\([0-9]*\).*/\1/p' "$TMP/ft.log" | tail -1)
    echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }') ${kib:-0} ${nd:-0}"
  }
  # about 1.4 tokens per word with the GPT-2 vocabulary: windows of SEQ tokens every SEQ/2 tokens
  if r1=$(ft_run $((SEQ * 4))) && r2=$(ft_run $((SEQ * 8))); then
    read -r s1 k1 n1 <<<"$r1"; read -r s2 k2 n2 <<<"$r2"
    f_tps=$(awk -v s1="$s1" -v s2="$s2" -v n1="$n1" -v n2="$n2" -v seq="$SEQ" 'BEGIN { if (s2 > s1 && n2 > n1) printf "%.1f", (n2 - n1) * seq / (s2 - s1); else print 0 }')
    f_mib=$(awk -v k="$k2" 'BEGIN { printf "%.0f", k / 1024 }')
    line="$line | llama-finetune-lora: $f_tps tokens/s, peak $f_mib MiB ($n1 and $n2 windows of $SEQ tokens in $s1 s and $s2 s)"
  else
    line="$line | llama-finetune-lora: failed ($(tail -2 "$TMP/ft.log" | tr '\n' ' '))"
  fi
fi
{
  echo "# bench_train.sh $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, $THREADS threads, $BATCH x $SEQ tokens per step, $STEPS steps"
  echo "$line"
} | tee "$OUT"
