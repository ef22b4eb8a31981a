#!/usr/bin/env bash
# run-bench.sh — `make bench`: iteralign's speed on this CPU at real model shapes, side by side with
# llama.cpp and PyTorch when they are given, every figure checked; writes bench/results/bench.md and
# bench/results/bench.json (plus the raw JSON lines and peer logs under bench/results/raw/).
#
# Models: random-weight GGUF files at the SmolLM2-135M, Qwen2.5-0.5B and TinyLlama-1.1B shapes, made
# once by `iteralign make-model` (cached in bench/results/models/); the same files go to every tool.
# Figures: read bandwidth; prefill pp512 and decode tg128 tokens/s; batched generation (128-token
# prompts, 128 new tokens each) at 1/4/16/64 sequences; log-likelihood scoring (llama-perplexity's
# protocol, ctx 512); LoRA training tokens/s and peak memory (bench/bench_train.sh).
#
# Environment:
#   BENCH_QUICK=1        a few minutes: two small models, short runs (a smoke test of the whole chain)
#   BENCH_FULL=1         adds TinyLlama-1.1B, F32 Qwen2.5-0.5B, batched 0.5B and more repetitions
#   BENCH_THREADS=N      threads for every tool (default: one per core)
#   LLAMA_CPP_BIN=DIR    a llama.cpp build's bin folder (llama-bench, llama-batched-bench,
#                        llama-perplexity, and llama-finetune-lora when the build has it); several
#                        builds: DIR1:DIR2 (each is measured; ratios use the fastest valid one)
#   LLAMA_OMP="default passive"  OpenMP wait policies llama-bench runs under (llama.cpp's threads
#                        spin between ops when OMP_WAIT_POLICY is unset: fastest on an idle machine,
#                        a crawl when another process holds a core); the best is kept.
#                        llama-batched-bench and llama-perplexity run under LLAMA_OMP_LONG (the same by
#                        default; passive alone starves its one-token steps: 30 tokens/s at 1 sequence)
#   PYTHON=/usr/bin/python3  the interpreter for the PyTorch training comparison (python3-torch)
#   BENCH_SKIP=LIST      parts to skip: bw,pp,tg,batch,score,train,peers,server,eval,bf16
#                        (bf16: the opt-in IA_PRECISION=bf16 runs of the F32/F16 models)
#   BENCH_PEER_TIMEOUT=S a peer tool run longer than this is stopped and reported as timed out
#                        (default 300: spinning OpenMP threads crawl when another process holds a core)
#   BIN=./iteralign      the binary under test
# Run from the repository root (make bench does). Peers that are absent are reported as absent.
set -u
BIN=${BIN:-./iteralign}
PY=${PYTHON:-/usr/bin/python3}
THREADS=${BENCH_THREADS:-$(nproc)}
OUT=bench/results
RAW=$OUT/raw
MODELS=${BENCH_MODELS_DIR:-$OUT/models}
SKIP=",${BENCH_SKIP:-},"
mkdir -p "$RAW" "$MODELS"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
JL=$RAW/bench-$STAMP.jsonl
: > "$JL"
skip() { [[ $SKIP == *",$1,"* ]]; }
log() { echo "bench: $*" >&2; }
# OpenMP threads must not spin on a machine others share (iteralign's own pool spins at most
# IA_SPIN_US, yielding, before it sleeps). llama.cpp gets its best of LLAMA_OMP below.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
LLAMA_OMP=${LLAMA_OMP:-default passive}
# runs a peer tool under an OpenMP policy ("default": OMP_WAIT_POLICY unset)
PEER_TIMEOUT=${BENCH_PEER_TIMEOUT:-300}
with_policy() {
  local p=$1; shift
  if [ "$p" = default ]; then timeout "$PEER_TIMEOUT" env -u OMP_WAIT_POLICY "$@"; else OMP_WAIT_POLICY=$p timeout "$PEER_TIMEOUT" "$@"; fi
}
LONG_POLICIES=${LLAMA_OMP_LONG:-$LLAMA_OMP}

MODE=default
[ "${BENCH_QUICK:-0}" = 1 ] && MODE=quick
[ "${BENCH_FULL:-0}" = 1 ] && MODE=full

# model list: "label preset type vocab"; parts per model: p(p) t(g) s(core) b(atched)
GPT2=data/tokenizer/ggml-vocab-gpt-2.gguf
SPM=data/tokenizer/ggml-vocab-llama-spm.gguf
case $MODE in
quick)
  LIST="smollm2-135m-q8_0:smollm2-135m:q8_0:$GPT2:ptsb
smollm2-135m-q4_0:smollm2-135m:q4_0:$GPT2:pts"
  PP=128; TG=32; REPS=2; NPL=1,4,16; NPP=32; NTG=32; SCTX=256; SCH=1; LREPS=2 ;;
full)
  LIST="smollm2-135m-f32:smollm2-135m:f32:$GPT2:ptsb
smollm2-135m-f16:smollm2-135m:f16:$GPT2:pts
smollm2-135m-bf16:smollm2-135m:bf16:$GPT2:pts
smollm2-135m-q8_0:smollm2-135m:q8_0:$GPT2:ptsb
smollm2-135m-q4_0:smollm2-135m:q4_0:$GPT2:ptsb
smollm2-135m-q4_k:smollm2-135m:q4_k:$GPT2:pts
qwen2.5-0.5b-f32:qwen2.5-0.5b:f32:$GPT2:ptsb
qwen2.5-0.5b-f16:qwen2.5-0.5b:f16:$GPT2:pts
qwen2.5-0.5b-bf16:qwen2.5-0.5b:bf16:$GPT2:pt
qwen2.5-0.5b-q8_0:qwen2.5-0.5b:q8_0:$GPT2:pts
qwen2.5-0.5b-q4_0:qwen2.5-0.5b:q4_0:$GPT2:pt
qwen2.5-0.5b-q4_k:qwen2.5-0.5b:q4_k:$GPT2:pt
tinyllama-1.1b-q4_0:tinyllama-1.1b:q4_0:$SPM:pt
tinyllama-1.1b-q8_0:tinyllama-1.1b:q8_0:$SPM:pt"
  PP=512; TG=128; REPS=5; NPL=1,4,16,64; NPP=128; NTG=128; SCTX=512; SCH=4; LREPS=5 ;;
*)
  LIST="smollm2-135m-f32:smollm2-135m:f32:$GPT2:pts
smollm2-135m-f16:smollm2-135m:f16:$GPT2:pt
smollm2-135m-bf16:smollm2-135m:bf16:$GPT2:pt
smollm2-135m-q8_0:smollm2-135m:q8_0:$GPT2:pts
smollm2-135m-q4_0:smollm2-135m:q4_0:$GPT2:ptb
smollm2-135m-q4_k:smollm2-135m:q4_k:$GPT2:pt
qwen2.5-0.5b-f16:qwen2.5-0.5b:f16:$GPT2:pt
qwen2.5-0.5b-q8_0:qwen2.5-0.5b:q8_0:$GPT2:pts
qwen2.5-0.5b-q4_0:qwen2.5-0.5b:q4_0:$GPT2:pt"
  PP=512; TG=128; REPS=3; NPL=1,4,16,64; NPP=128; NTG=128; SCTX=512; SCH=2; LREPS=2 ;;
esac
log "mode $MODE, $THREADS threads, results in $OUT (raw: $JL)"

# the machine, for the record
{
  printf '{"tool":"machine","stamp":"%s","mode":"%s","threads":%d,"cpu":"%s","cores":%d,"loadavg":"%s","flags":"%s","omp_wait_policy":"%s","tree":"%s"}\n' \
    "$STAMP" "$MODE" "$THREADS" "$(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1)" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)" \
    "$(grep -o -w 'avx2\|avx512f\|avx512_vnni\|avx512_bf16\|avx512_fp16\|amx_tile\|amx_bf16\|amx_int8' /proc/cpuinfo | sort -u | tr '\n' ' ')" \
    "$OMP_WAIT_POLICY" "$(git describe --always --dirty 2>/dev/null || echo unknown)"
} >> "$JL"

# ---- peers -----------------------------------------------------------------------------------
PEERS=()
if ! skip peers && [ -n "${LLAMA_CPP_BIN:-}" ]; then
  IFS=: read -r -a dirs <<< "$LLAMA_CPP_BIN"
  for d in "${dirs[@]}"; do
    if [ -x "$d/llama-bench" ]; then PEERS+=("$d"); else log "LLAMA_CPP_BIN entry $d has no llama-bench: ignored"; fi
  done
fi
peer_label() { # a build's label: its git describe if the folder is in a checkout, else the path
  local d=$1 l
  l=$(git -C "$d" describe --always --dirty 2>/dev/null) || l=
  echo "${l:-$d}"
}
if [ ${#PEERS[@]} -eq 0 ]; then
  printf '{"tool":"llama.cpp","absent":true,"why":"%s"}\n' \
    "$(if skip peers; then echo 'skipped (BENCH_SKIP)'; else echo 'LLAMA_CPP_BIN not set'; fi)" >> "$JL"
  log "llama.cpp: absent (set LLAMA_CPP_BIN=/path/to/llama.cpp/build/bin to compare)"
fi

# text for the scoring comparison: both tools tokenize the same file
TEXT=$RAW/score-text.txt
awk 'BEGIN { srand(7); n = split("the of and to in a is that for it as was with be by on not he I this are or his from at which but have an they you were her she there one all we their can has been if more when will would who so no time people year way day man thing woman life child world school state family student group country problem hand part place case week company system program question work government number night point home water room mother area money story fact month lot right study book eye job word business issue side kind head house service friend father power hour game line end member law car city community name president team minute idea kid body information back parent face others level office door health person art war history party result change morning reason research girl guy moment air teacher force education", w, " ");
  for (i = 0; i < 24000; i++) printf "%s%s", w[int(rand() * n) + 1], (i % 13 == 12) ? ".\n" : " " }' > "$TEXT"

# ---- per model -------------------------------------------------------------------------------
ensure_model() { # label preset type vocab -> path
  local f=$MODELS/$1.gguf
  if [ ! -f "$f" ] || [ ! -f "$f.ok" ]; then
    log "making $f ($2, $3)"
    rm -f "$f" "$f.ok"
    "$BIN" make-model --preset "$2" --type "$3" --vocab "$4" --out "$f" >&2 && touch "$f.ok" || return 1
  fi
  echo "$f"
}

peer_bench() { # build model label parts
  local d=$1 m=$2 label=$3 parts=$4 bl out
  bl=$(peer_label "$d")
  local args=() want=0
  if [[ $parts == *p* ]] && ! skip pp; then args+=(-p "$PP"); want=1; else args+=(-p 0); fi
  if [[ $parts == *t* ]] && ! skip tg; then args+=(-n "$TG"); want=1; else args+=(-n 0); fi
  local pol
  for pol in $LLAMA_OMP; do
  if [ $want = 1 ]; then
    if out=$(with_policy "$pol" "$d/llama-bench" -m "$m" -t "$THREADS" "${args[@]}" -r "$LREPS" -o jsonl 2> "$RAW/$label.llama-bench.$pol.err"); then
      echo "$out" > "$RAW/$label.llama-bench.$pol.jsonl"
      # one line per test: n_prompt/n_gen/avg_ts
      echo "$out" | "$PY" -c '
import json, sys
b, lab = sys.argv[1], sys.argv[2]
for l in sys.stdin:
    l = l.strip()
    if not l.startswith("{"): continue
    r = json.loads(l)
    t = "pp" if r.get("n_prompt", 0) > 0 and r.get("n_gen", 0) == 0 else "tg"
    n = r["n_prompt"] if t == "pp" else r["n_gen"]
    print(json.dumps({"tool": "llama.cpp", "build": b, "model": lab, "test": t, "n": n, "tps": r["avg_ts"],
                      "stddev": r.get("stddev_ts"), "samples": r.get("samples_ts"), "omp": sys.argv[3]}))' "$bl" "$label" "$pol" >> "$JL"
    else
      printf '{"tool":"llama.cpp","build":"%s","model":"%s","test":"pp_tg","failed":true,"why":"llama-bench exit status (see raw/%s.llama-bench.%s.err)"}\n' "$bl" "$label" "$label" "$pol" >> "$JL"
      log "llama-bench failed on $label (raw/$label.llama-bench.$pol.err)"
    fi
  fi
  done
  if [[ $parts == *s* ]] && ! skip score && [ -x "$d/llama-perplexity" ]; then
    for pol in $LONG_POLICIES; do
    if with_policy "$pol" "$d/llama-perplexity" -m "$m" -t "$THREADS" -f "$TEXT" -c "$SCTX" --chunks "$SCH" > "$RAW/$label.llama-perplexity.$pol.log" 2>&1; then
      "$PY" - "$RAW/$label.llama-perplexity.$pol.log" "$bl" "$label" >> "$JL" <<'EOF'
import json, re, sys
s = open(sys.argv[1], errors="replace").read()
m = re.search(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens", s)
p = re.search(r"Final estimate: PPL = ([\d.]+)", s)
tps = int(m.group(2)) / (float(m.group(1)) / 1000) if m else None
print(json.dumps({"tool": "llama.cpp", "build": sys.argv[2], "model": sys.argv[3], "test": "score", "tps": tps,
                  "ppl": float(p.group(1)) if p else None}))
EOF
    else
      printf '{"tool":"llama.cpp","build":"%s","model":"%s","test":"score","failed":true,"omp":"%s"}\n' "$bl" "$label" "$pol" >> "$JL"
    fi
    done
  fi
  if [[ $parts == *b* ]] && ! skip batch && [ -x "$d/llama-batched-bench" ]; then
    local maxn=0 n
    for n in ${NPL//,/ }; do [ "$n" -gt "$maxn" ] && maxn=$n; done
    for pol in $LONG_POLICIES; do
    if with_policy "$pol" "$d/llama-batched-bench" -m "$m" -t "$THREADS" -tb "$THREADS" -c $((maxn * (NPP + NTG))) -b 2048 -ub 512 \
         -npp "$NPP" -ntg "$NTG" -npl "$NPL" > "$RAW/$label.llama-batched-bench.$pol.log" 2>&1; then
      "$PY" - "$RAW/$label.llama-batched-bench.$pol.log" "$bl" "$label" >> "$JL" <<'EOF'
import json, sys
for l in open(sys.argv[1], errors="replace"):
    c = [x.strip() for x in l.strip().strip("|").split("|")]
    if len(c) == 10 and c[0].isdigit():
        print(json.dumps({"tool": "llama.cpp", "build": sys.argv[2], "model": sys.argv[3], "test": "batch",
                          "npp": int(c[0]), "ntg": int(c[1]), "npl": int(c[2]), "tps": float(c[7]),
                          "prompt_tps": float(c[5])}))
EOF
    else
      printf '{"tool":"llama.cpp","build":"%s","model":"%s","test":"batch","failed":true,"omp":"%s"}\n' "$bl" "$label" "$pol" >> "$JL"
    fi
    done
  fi
}

ONLY=
skip pp || ONLY+=pp,
skip tg || ONLY+=tg,check,
while IFS=: read -r label preset type vocab parts; do
  [ -z "$label" ] && continue
  m=$(ensure_model "$label" "$preset" "$type" "$vocab") || { log "make-model failed for $label"; exit 1; }
  only=$ONLY
  # the bandwidth beside every model: the report takes the median of them (one probe once read 79
  # GB/s against the usual 48-50, and set an unreachable limit for the whole run)
  ! skip bw && only+=bw,
  [[ $parts == *s* ]] && ! skip score && only+=score,
  [[ $parts == *b* ]] && ! skip batch && only+=batch,
  log "$label: iteralign bench (${only%,})"
  "$BIN" bench -m "$m" -t "$THREADS" --pp "$PP" --tg "$TG" -r "$REPS" --npl "$NPL" --npp "$NPP" --ntg "$NTG" \
    --score-ctx "$SCTX" --score-chunks "$SCH" --score-file "$TEXT" --only "${only%,}" --json "$JL" \
    > "$RAW/$label.iteralign.txt" 2>&1 || log "$label: iteralign bench FAILED (raw/$label.iteralign.txt)"
  sed 's/^/    /' "$RAW/$label.iteralign.txt" >&2
  # the opt-in IA_PRECISION=bf16 on F32/F16 weights, beside the default (reported apart, no target)
  if [[ $type == f16 || $type == f32 ]] && ! skip bf16 && grep -q -w avx512_bf16 /proc/cpuinfo; then
    log "$label: iteralign bench with IA_PRECISION=bf16 (pp,tg,check)"
    IA_PRECISION=bf16 "$BIN" bench -m "$m" -t "$THREADS" --pp "$PP" --tg "$TG" -r "$REPS" --only pp,tg,check --json "$JL" \
      > "$RAW/$label.iteralign-bf16.txt" 2>&1 || log "$label: iteralign bench (bf16) FAILED (raw/$label.iteralign-bf16.txt)"
  fi
  for d in "${PEERS[@]}"; do
    log "$label: llama.cpp $(peer_label "$d")"
    peer_bench "$d" "$m" "$label" "$parts"
  done
done <<< "$LIST"

# ---- LoRA training ---------------------------------------------------------------------------
if ! skip train; then
  if [ -f bench/bench_train.sh ] && [ "$MODE" != quick ]; then
    log "LoRA training (bench/bench_train.sh)"
    ft=
    for d in "${PEERS[@]}"; do [ -x "$d/llama-finetune-lora" ] && ft=$d/llama-finetune-lora; done
    BIN=$BIN PYTHON=$PY BENCH_THREADS=$THREADS LLAMA_FINETUNE=$ft bash bench/bench_train.sh > "$RAW/train.txt" 2>&1 ||
      log "bench_train.sh failed (raw/train.txt)"
    "$PY" - "$RAW/train.txt" >> "$JL" <<'EOF'
import json, re, sys
s = open(sys.argv[1], errors="replace").read()
m = re.search(r"iteralign LoRA train: ([\d.]+) tokens/s, peak ([\d.]+) MiB", s)
print(json.dumps({"tool": "iteralign", "test": "train", "tps": float(m.group(1)) if m else None,
                  "peak_mib": float(m.group(2)) if m else None, "failed": m is None}))
b = re.search(r"iteralign LoRA train bf16: ([\d.]+) tokens/s, peak ([\d.]+) MiB", s)
if b:
    print(json.dumps({"tool": "iteralign-bf16", "test": "train", "tps": float(b.group(1)), "peak_mib": float(b.group(2))}))
else:
    print(json.dumps({"tool": "iteralign-bf16", "test": "train", "absent": True, "why": "no AVX512_BF16 on this CPU" if "no avx512_bf16" in s else "not measured"}))
t = re.search(r"PyTorch: ([\d.]+) tokens/s, peak ([\d.]+) MiB", s)
if t:
    print(json.dumps({"tool": "torch-fp32", "test": "train", "tps": float(t.group(1)), "peak_mib": float(t.group(2))}))
else:
    print(json.dumps({"tool": "torch-fp32", "test": "train", "absent": True, "why": "python3-torch not installed" if "not installed" in s else "not measured"}))
f = re.search(r"llama-finetune-lora: ([\d.]+) tokens/s, peak ([\d.]+) MiB", s)
if f:
    print(json.dumps({"tool": "llama-finetune-lora", "test": "train", "tps": float(f.group(1)), "peak_mib": float(f.group(2))}))
elif "llama-finetune-lora: failed" in s:
    print(json.dumps({"tool": "llama-finetune-lora", "test": "train", "failed": True, "why": "run failed (raw/train.txt)"}))
EOF
    # PyTorch bf16 autocast, when bench_train.py offers it
    if "$PY" -c 'import torch' 2>/dev/null && grep -q -- '--bf16' bench/bench_train.py 2>/dev/null; then
      t=$("$PY" bench/bench_train.py --bf16 --threads "$THREADS" 2>&1 | tail -1)
      printf '%s\n' "$t" | awk '{ printf "{\"tool\":\"torch-bf16\",\"test\":\"train\",\"tps\":%s,\"peak_mib\":%s}\n", $3, $5 }' >> "$JL"
    else
      printf '{"tool":"torch-bf16","test":"train","absent":true,"why":"%s"}\n' \
        "$("$PY" -c 'import torch' 2>/dev/null && echo 'bench_train.py has no --bf16 mode' || echo 'python3-torch not installed')" >> "$JL"
    fi
    if [ -z "$ft" ]; then
      printf '{"tool":"llama.cpp","test":"train","absent":true,"why":"no llama-finetune-lora in the given builds"}\n' >> "$JL"
    fi
  else
    printf '{"tool":"iteralign","test":"train","absent":true,"why":"%s"}\n' \
      "$([ "$MODE" = quick ] && echo 'skipped in quick mode' || echo 'bench/bench_train.sh missing')" >> "$JL"
  fi
fi

# ---- server batching and the evaluation primer cache ---------------------------------------------
# Their own scripts print the figures (sequential vs concurrent requests; truthfulqa_mc2 questions/s
# with and without the shared primer cache); they are appended to bench.md below.
if ! skip server; then
  log "server: N concurrent requests vs one at a time (bench/bench_server.sh)"
  BIN=$BIN OUT=$RAW bash bench/bench_server.sh > "$RAW/server.log" 2>&1 || log "bench_server.sh failed (raw/server.log)"
fi
if ! skip eval; then
  log "evaluation: truthfulqa_mc2 q/s with and without the primer cache (bench/bench_eval.sh)"
  BIN=$BIN OUT=$RAW bash bench/bench_eval.sh > "$RAW/eval.log" 2>&1 || log "bench_eval.sh failed (raw/eval.log)"
fi

"$PY" bench/bench_report.py "$JL" "$OUT/bench.md" "$OUT/bench.json" || { log "report failed"; exit 1; }
for f in "$RAW/bench_server.txt" "$RAW/bench_eval.txt"; do
  [ -s "$f" ] || continue
  { echo; echo "### $(basename "$f" .txt)"; echo; echo '```'; cat "$f"; echo '```'; } >> "$OUT/bench.md"
done
cat "$OUT/bench.md"

