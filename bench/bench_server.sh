#!/usr/bin/env bash
# bench_server.sh — `iteralign serve` batching benchmark: N completions requests (default 16, greedy,
# a fixed number of tokens each) sent one at a time, then all at once, to a server on loopback with a
# random SmolLM2-135M-shaped Q8_0 model. Prints both totals and their ratio (sequential / concurrent):
# above 1 means concurrent requests share forward passes instead of queueing behind each other.
# Env: BIN (./iteralign), N (16), TOKENS (32), THREADS (1: the batching effect alone, and OpenMP
# spin-waits make a shared machine's timings meaningless otherwise), MODEL (a GGUF to use instead),
# OUT (bench/results). Writes $OUT/bench_server.txt and appends a JSON line to $OUT/bench_server.jsonl.
set -u
BIN=${BIN:-./iteralign}
N=${N:-16}
TOKENS=${TOKENS:-32}
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
MODEL=${MODEL:-$OUT/smollm2-135m-q8_0.gguf}
if [ ! -f "$MODEL" ]; then
  echo "bench_server: writing $MODEL (random weights, SmolLM2-135M shape, Q8_0)" >&2
  "$BIN" make-model --preset smollm2-135m --vocab data/tokenizer/ggml-vocab-gpt-2.gguf --type q8_0 --out "$MODEL" >&2 || exit 1
fi
LOG=$(mktemp)
TARGS=(-t "${THREADS:-1}")
"$BIN" serve -m "$MODEL" --port 0 --parallel "$N" --ctx 512 -q "${TARGS[@]}" 2> "$LOG" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null; rm -f "$LOG"' EXIT
PORT=
for _ in $(seq 1 300); do
  PORT=$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$LOG" | sed 's/.*://')
  [ -n "$PORT" ] && break
  kill -0 $PID 2>/dev/null || { cat "$LOG" >&2; exit 1; }
  sleep 0.1
done
[ -n "$PORT" ] || { echo "bench_server: the server did not start" >&2; exit 1; }
URL="http://127.0.0.1:$PORT/v1/completions"
body() { printf '{"prompt":"Request %d: write a short story about the number %d.","max_tokens":%d,"temperature":0,"ignore_eos":true}' "$1" "$1" "$TOKENS"; }
now() { date +%s.%N; }
req() { curl -s -o /dev/null -w '%{http_code}' --max-time 600 -d "$(body "$1")" "$URL"; }

req 0 >/dev/null # warm-up: pages the weights in

t0=$(now)
bad=0
for i in $(seq 1 "$N"); do [ "$(req "$i")" = 200 ] || bad=$((bad+1)); done
t1=$(now)
pids=()
for i in $(seq 1 "$N"); do (code=$(req "$i"); [ "$code" = 200 ]) & pids+=($!); done
for p in "${pids[@]}"; do wait "$p" || bad=$((bad+1)); done
t2=$(now)
[ $bad -eq 0 ] || { echo "bench_server: $bad requests failed" >&2; exit 1; }

read -r seq con ratio <<<"$(python3 -c "a=$t1-$t0; b=$t2-$t1; print(f'{a:.2f} {b:.2f} {a/b:.2f}')")"
line="server batching: $N requests x $TOKENS tokens (SmolLM2-135M shape, Q8_0, ${THREADS:-1} thread(s) of $(nproc) cores): sequential ${seq} s, concurrent ${con} s -> ${ratio}x"
echo "$line"
echo "$line" > "$OUT/bench_server.txt"
printf '{"bench":"server","date":"%s","n":%d,"tokens":%d,"sequential_s":%s,"concurrent_s":%s,"ratio":%s}\n' \
  "$(date -u +%FT%TZ)" "$N" "$TOKENS" "$seq" "$con" "$ratio" >> "$OUT/bench_server.jsonl"
