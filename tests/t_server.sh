#!/usr/bin/env bash
# t_server.sh — `iteralign serve` as a client meets it: started on an ephemeral loopback port with
# stories260K, the official `openai` npm client (tests/node) against it (chat, SSE, completions with
# logprobs/echo, errors, concurrency; texts equal `iteralign generate`), then limits, auth, the request
# log, client disconnects, a full queue and a clean SIGTERM shutdown with a request in flight.
set -u
BIN=${BIN:-./iteralign}
MODEL=data/models/stories260K.gguf
T=tests/tmp/server.$$
mkdir -p "$T"
n=0
ok() { n=$((n+1)); echo "ok $n - $1"; }
nok() { n=$((n+1)); echo "not ok $n - $1"; [ $# -gt 1 ] && echo "# $2"; }
skip() { n=$((n+1)); echo "ok $n - $1 # SKIP $2"; }
PID=
cleanup() { [ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT

# Starts the server with extra args; sets PID and PORT, or returns 1. Bounded: 10 s.
start_server() {
  "$BIN" serve -m "$MODEL" --port 0 -t 1 "$@" 2> "$T/server.log" &
  PID=$!
  PORT=
  for _ in $(seq 1 100); do
    PORT=$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$T/server.log" 2>/dev/null | sed 's/.*://')
    [ -n "$PORT" ] && break
    kill -0 "$PID" 2>/dev/null || return 1
    sleep 0.1
  done
  [ -n "$PORT" ] || return 1
  for _ in $(seq 1 50); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$PORT/health")" = 200 ] && return 0
    sleep 0.1
  done
  return 1
}
# Sends SIGTERM and waits (at most 15 s) for the exit; sets STOP_RC to the exit status.
stop_server() {
  kill -TERM "$PID" 2>/dev/null
  for _ in $(seq 1 150); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$PID" 2>/dev/null; then kill -KILL "$PID"; wait "$PID" 2>/dev/null; PID=; STOP_RC=timeout; return; fi
  wait "$PID"; STOP_RC=$?
  PID=
}
U() { echo "http://127.0.0.1:$PORT$1"; }

out=$($BIN serve --help 2>&1); [ $? -eq 0 ] && grep -q "usage: iteralign serve" <<<"$out" && ok "serve --help" || nok "serve --help"

# Asking for a key that is not set refuses to start (never serve unprotected by mistake).
env -u IA_T_NO_SUCH_KEY "$BIN" serve -m "$MODEL" --port 0 --api-key-env IA_T_NO_SUCH_KEY >/dev/null 2>"$T/err.txt"
rc=$?
[ $rc -ne 0 ] && grep -q IA_T_NO_SUCH_KEY "$T/err.txt" && ok "--api-key-env naming an unset variable refuses to start" || nok "--api-key-env unset" "rc=$rc"

KEY="sk-t-server-Xq93LmZ"
export IA_T_SERVER_KEY=$KEY
if ! start_server --api-key-env IA_T_SERVER_KEY --chat-template chatml --parallel 8 --max-queue 24 --shutdown-grace 0.5; then
  nok "server starts and answers /health" "$(cat "$T/server.log")"
  exit 1
fi
ok "server starts on an ephemeral port and answers /health"
if command -v ss >/dev/null; then
  la=$(ss -Hltn "sport = :$PORT" 2>/dev/null | awk '{print $4}' | head -1)
  [ "$la" = "127.0.0.1:$PORT" ] && ok "binds to loopback only by default ($la)" || nok "binds to loopback only" "ss: $la"
else
  skip "binds to loopback only by default" "no ss"
fi
h=$(curl -s "$(U /health)")
[ "$h" = '{"status":"ok"}' ] && ok "/health needs no key" || nok "/health" "$h"

# ---- the official openai npm client -------------------------------------------------------------
if [ ! -d tests/node/node_modules/openai ] && command -v npm >/dev/null; then
  (cd tests/node && timeout 120 npm install --no-audit --no-fund >/dev/null 2>&1)
fi
if [ -d tests/node/node_modules/openai ] && command -v node >/dev/null; then
  res=$(IA_BASE_URL="$(U /v1)" IA_KEY="$KEY" IA_BIN="$BIN" IA_MODEL="$MODEL" IA_MODEL_ID=stories260K \
        timeout 60 node tests/node/openai_test.mjs 2>&1)
  rc=$?
  cnt=0
  while IFS= read -r line; do
    case "$line" in
      "PASS "*) ok "openai npm: ${line#PASS }"; cnt=$((cnt+1));;
      "FAIL "*) nok "openai npm: ${line#FAIL }"; cnt=$((cnt+1));;
    esac
  done <<<"$res"
  if [ $cnt -lt 15 ]; then nok "openai npm test ran all its checks (rc=$rc)" "$(tail -5 <<<"$res")"; fi
else
  skip "openai npm client checks" "node/npm or the openai package unavailable"
fi

# ---- limits, auth, the log ----------------------------------------------------------------------
AUTH="Authorization: Bearer $KEY"
head -c 1100000 /dev/zero | tr '\0' 'a' > "$T/big.json"
c=$(curl -s -o "$T/r.json" -w '%{http_code}' -H "$AUTH" --data-binary @"$T/big.json" "$(U /v1/completions)")
[ "$c" = 413 ] && grep -q '"request_too_large"' "$T/r.json" && ok "body over 1 MiB -> 413 (OpenAI error shape)" || nok "body limit" "$c $(head -c 200 "$T/r.json")"
c=$(curl -s -o "$T/r.json" -w '%{http_code}' -H "$AUTH" -H 'Transfer-Encoding: chunked' --data-binary @"$T/big.json" "$(U /v1/completions)")
[ "$c" = 413 ] && ok "chunked body over the limit -> 413" || nok "chunked body limit" "$c"
c=$(curl -s -o "$T/r.json" -w '%{http_code}' -H "$AUTH" -d '{"prompt":' "$(U /v1/completions)")
python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["error"]; assert set(e)=={"message","type","param","code"}' "$T/r.json" 2>/dev/null
[ $? -eq 0 ] && [ "$c" = 400 ] && ok "malformed JSON -> 400 {error:{message,type,param,code}}" || nok "malformed JSON" "$c"
P=$(python3 -c 'print("Once upon a time " * 700)')
printf '{"prompt":"%s","max_tokens":4}' "$P" > "$T/long.json"
c=$(curl -s -o "$T/r.json" -w '%{http_code}' -H "$AUTH" --data-binary @"$T/long.json" "$(U /v1/completions)")
[ "$c" = 400 ] && grep -q context_length_exceeded "$T/r.json" && ok "prompt longer than the context -> 400 context_length_exceeded" || nok "prompt length limit" "$c"
c=$(curl -s -o /dev/null -w '%{http_code}' -H "$AUTH" "$(U /v1/nope)")
c2=$(curl -s -o /dev/null -w '%{http_code}' -H "$AUTH" "$(U /v1/chat/completions)")
[ "$c" = 404 ] && [ "$c2" = 405 ] && ok "unknown path -> 404, GET on a POST endpoint -> 405" || nok "404/405" "$c $c2"
c=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer nope" "$(U /v1/models)")
c2=$(curl -s -o /dev/null -w '%{http_code}' "$(U /v1/models)")
[ "$c" = 401 ] && [ "$c2" = 401 ] && ok "wrong or missing key -> 401" || nok "auth" "$c $c2"

# A client that leaves mid-generation gets its sequences cancelled (logged as 499, few tokens).
LONG='"prompt":"x","max_tokens":2000,"ignore_eos":true,"temperature":0'
curl -s -N --max-time 0.5 -o /dev/null -H "$AUTH" -d "{$LONG,\"n\":4,\"stream\":true}" "$(U /v1/completions)"
curl -s --max-time 0.5 -o /dev/null -H "$AUTH" -d "{$LONG,\"n\":4}" "$(U /v1/completions)"
for _ in $(seq 1 50); do [ "$(grep -c ' 499 ' "$T/server.log")" -ge 2 ] && break; sleep 0.1; done
cut=$(grep ' 499 ' "$T/server.log" | sed 's/.*completion=\([0-9]*\).*/\1/' | awk '$1 < 8000' | wc -l)
[ "$cut" -ge 2 ] && ok "client disconnect (stream and plain) cancels the generation" || nok "disconnect cancels" "$(grep ' 499 ' "$T/server.log")"

# A full queue answers 503 with Retry-After (--max-queue 24: 16 running, 16 more refused).
curl -s -N --max-time 20 -o "$T/bg.txt" -H "$AUTH" -d "{$LONG,\"n\":16,\"stream\":true}" "$(U /v1/completions)" &
BG=$!
for _ in $(seq 1 100); do [ -s "$T/bg.txt" ] && break; sleep 0.05; done # streaming has begun
c=$(curl -s -D "$T/h.txt" -o "$T/r.json" -w '%{http_code}' -H "$AUTH" -d '{"prompt":"x","n":16,"max_tokens":4}' "$(U /v1/completions)")
[ "$c" = 503 ] && grep -qi '^retry-after:' "$T/h.txt" && ok "queue full -> 503 with Retry-After" || nok "queue full" "$c $(cat "$T/r.json")"

# Shutdown with the stream still running: exit 0, the stream ends with an error event.
stop_server; rc=$STOP_RC
wait $BG 2>/dev/null
[ "$rc" = 0 ] && ok "SIGTERM with a request in flight: clean exit 0" || nok "SIGTERM exit" "rc=$rc"
grep -q server_shutting_down "$T/bg.txt" && ok "the in-flight stream gets a 'shutting down' error event" || nok "in-flight stream on shutdown" "$(tail -c 300 "$T/bg.txt")"

# One log line per request (method, path, status, tokens, ms) and never the key.
nl=$(grep -cE '\] (GET|POST) /[a-z0-9/]+ [0-9]{3} prompt=[0-9]+ completion=[0-9]+ [0-9]+ ms$' "$T/server.log")
[ "$nl" -ge 20 ] && ok "request log: one line per request ($nl lines)" || nok "request log" "$nl lines"
grep -q "$KEY" "$T/server.log" && nok "the API key never appears in the log" || ok "the API key never appears in the log"

# --shutdown-grace lets a short in-flight request finish instead of cancelling it.
if start_server --shutdown-grace 30; then
  curl -s -N -o "$T/g.txt" -d '{"prompt":"Once","max_tokens":600,"ignore_eos":true,"temperature":0,"n":2,"stream":true}' "$(U /v1/completions)" &
  BG=$!
  for _ in $(seq 1 100); do [ -s "$T/g.txt" ] && break; sleep 0.05; done # streaming has begun
  stop_server; rc=$STOP_RC
  wait $BG
  fins=$(grep -c '"finish_reason":"length"' "$T/g.txt")
  [ "$fins" = 2 ] && [ "$(tail -c 14 "$T/g.txt")" = "data: [DONE]" ] && [ "$rc" = 0 ] && grep -q 'in flight' "$T/server.log" &&
    ok "SIGTERM within the grace period: the in-flight stream completes, exit 0" || nok "grace period" "rc=$rc fins=$fins $(tail -c 200 "$T/g.txt")"
else
  nok "second server start" "$(cat "$T/server.log")"
fi

# Special-token text typed into a message stays text: "</s>" is not turned into the EOS token (the
# chat template's own markers still are), so the prompt has more tokens than `generate --chat-template`
# (which parses the whole formatted text) gives.
if start_server --chat-template chatml; then
  got=$(curl -s -d '{"messages":[{"role":"user","content":"a </s> b"}],"max_tokens":1}' "$(U /v1/chat/completions)" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["usage"]["prompt_tokens"])' 2>/dev/null)
  want=$("$BIN" generate -m "$MODEL" -p "a </s> b" --chat-template chatml -n 1 --json 2>/dev/null |
         python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["n_prompt_tokens"])' 2>/dev/null)
  [ -n "$got" ] && [ -n "$want" ] && [ "$got" -gt "$want" ] && ok "special-token text in user content stays text ($got tokens vs $want parsed)" ||
    nok "special-token text in user content" "server $got, generate $want"
  stop_server
fi

# --lora: a quickly trained adapter changes the answer, and equals the merged model's greedy output.
printf '%s\n' '{"prompt": "Once upon a time", "completion": " there was a purple cat named Zed."}' > "$T/mem.jsonl"
if "$BIN" train -m "$MODEL" --data "$T/mem.jsonl" --out "$T/a.gguf" --epochs 60 --lr 1e-2 --schedule constant \
     --rank 8 --seed 1 -t 1 -q 2>/dev/null && "$BIN" merge -m "$MODEL" --lora "$T/a.gguf" --out "$T/merged.gguf" --type f32 2>/dev/null &&
   start_server --lora "$T/a.gguf"; then
  got=$(curl -s -d '{"prompt":"Once upon a time","max_tokens":12,"temperature":0}' "$(U /v1/completions)" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["text"])' 2>/dev/null)
  want=$("$BIN" generate -m "$T/merged.gguf" -p "Once upon a time" -n 12 --json 2>/dev/null |
         python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["text"])' 2>/dev/null)
  base=$("$BIN" generate -m "$MODEL" -p "Once upon a time" -n 12 2>/dev/null)
  [ -n "$got" ] && [ "$got" = "$want" ] && [ "$got" != "$base" ] && ok "--lora: served text = merged model's ('$got')" ||
    nok "--lora" "served '$got', merged '$want', base '$base'"
  stop_server
else
  nok "--lora: train, merge and serve" "$(tail -3 "$T/server.log" 2>/dev/null)"
fi
