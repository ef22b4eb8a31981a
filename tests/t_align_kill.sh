#!/usr/bin/env bash
# t_align_kill.sh — crash safety of `iteralign align`: a shortened demonstration run with an LLM
# judge/proposer (a scripted fake teacher on loopback that logs every request it receives) is
# killed with SIGKILL at random moments several times and resumed; the finished run must equal an
# uninterrupted one in every row (times and latencies excluded) and in the bytes of every adapter
# and of the final model, and no teacher request may reach the server twice (except one that was in
# flight at a kill, which the store then records as resent).
set -u
BIN=${BIN:-./iteralign}
T=tests/tmp/align_kill.$$
mkdir -p "$T"
n=0
ok() { n=$((n+1)); echo "ok $n - $1"; }
nok() { n=$((n+1)); echo "not ok $n - $1"; [ $# -gt 1 ] && echo "# $2"; }
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; rm -rf "$T"; }
trap cleanup EXIT

# The fake teacher: deterministic OpenAI-style replies (a JSON verdict, a constitution list, or the
# released code's "Evaluation: ..." text), one in eleven judge replies unusable on purpose; each
# request body's SHA-256 is appended to the log before the reply is sent.
cat > "$T/teacher.py" <<'PYEOF'
import http.server, json, hashlib, re, sys, threading, socketserver, os
log_path, port_path = sys.argv[1], sys.argv[2]
lock = threading.Lock()
SAD = re.compile(r"\b(sad|sadly|scared|scary|afraid|frightened|cry|cried|cries|crying|tears|hurt|hurts|angry|upset|mad)\b", re.I)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with lock:
            with open(log_path, "a") as f: f.write(hashlib.sha256(body).hexdigest() + "\n")
        req = json.loads(body); msgs = req["messages"]; sysm = msgs[0]["content"]; user = msgs[-1]["content"]
        h = int(hashlib.sha256(user.encode()).hexdigest(), 16)
        if sysm.startswith("You write constitutions"):
            k = 1 + user.count("\n[")
            content = json.dumps({"constitutions": [
                {"text": "Characters in the story are kind and happy with each other.", "answers": [1]},
                {"text": "Characters in the story are kind and happy to each other." if h % 2 else "Stories end well for everyone in them.",
                 "answers": list(range(1, k))}]})
        elif sysm.startswith("You review"):
            ans = user.split("Answer:\n<<<\n", 1)[-1]
            if h % 11 == 0: content = "I cannot decide."
            else: content = json.dumps({"flawed": bool(SAD.search(ans)), "principle": "kindness", "reason": "sad" if SAD.search(ans) else "fine"})
        else:
            content = "Evaluation: Negative." if SAD.search(user) else "Evaluation: Positive."
        out = json.dumps({"id": "x", "object": "chat.completion", "model": req.get("model"),
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                          "usage": {"prompt_tokens": len(body) // 4, "completion_tokens": len(content) // 4,
                                    "total_tokens": len(body) // 4 + len(content) // 4}}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out))); self.end_headers(); self.wfile.write(out)
class S(socketserver.ThreadingMixIn, http.server.HTTPServer): daemon_threads = True
s = S(("127.0.0.1", 0), H)
with open(port_path + ".tmp", "w") as f: f.write(str(s.server_address[1]))
os.rename(port_path + ".tmp", port_path)
s.serve_forever()
PYEOF

# Every row of every table, times and latencies left out, sorted; the two runs' teachers listen on
# different ports, so the port is masked.
cat > "$T/dump.py" <<'PYEOF'
import sqlite3, sys, re
skip = {"progress": {"done_at"}, "teacher_calls": {"latency_s", "attempts", "resends", "sent_at", "finished_at"},
        "checkpoints": {"seconds"}}
db = sqlite3.connect(sys.argv[1])
for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"):
    cols = [r[1] for r in db.execute(f"PRAGMA table_info({t})") if r[1] not in skip.get(t, set())]
    rows = sorted(re.sub(r"127\.0\.0\.1:[0-9]+", "127.0.0.1:PORT", repr(r)) for r in db.execute(f"SELECT {', '.join(cols)} FROM {t}"))
    print(f"== {t} ({len(rows)} rows)")
    for r in rows: print(r)
PYEOF

# Teachers run in this shell (not in a command substitution, whose pipe they would hold open).
"$PY" "$T/teacher.py" "$T/a.log" "$T/a.port" >/dev/null 2>&1 & pids+=($!)
"$PY" "$T/teacher.py" "$T/b.log" "$T/b.port" >/dev/null 2>&1 & pids+=($!)
for _ in $(seq 100); do [ -s "$T/a.port" ] && [ -s "$T/b.port" ] && break; sleep 0.1; done
PA=$(cat "$T/a.port" 2>/dev/null); PB=$(cat "$T/b.port" 2>/dev/null)
if [ -z "$PA" ] || [ -z "$PB" ]; then nok "fake teachers started"; exit 0; fi

# A shortened demonstration: 4 batches of 20, 40 held-out prompts, rules + the LLM teacher. An API
# key is sent (the fake teacher ignores it) and must appear nowhere in the run folder.
export IA_TEST_TEACHER_KEY=sk-test-4f1c2b9e-never-stored
args=(--demo --max-prompts 80 --max-heldout 40 --batch-size 20 --teacher-model fake-teacher --api-key-env IA_TEST_TEACHER_KEY)

s0=$(date +%s)
if $BIN align --run "$T/ref" "${args[@]}" --teacher "http://127.0.0.1:$PA/v1" >"$T/ref.out" 2>&1; then
  ok "uninterrupted run finished ($(( $(date +%s) - s0 )) s)"
else
  nok "uninterrupted run finished" "$(tail -5 "$T/ref.out")"
fi
ref_s=$(( $(date +%s) - s0 )); [ "$ref_s" -lt 4 ] && ref_s=4

# Kill at random moments: each attempt runs for a random time up to 15% of the uninterrupted
# run's, up to eight kills (the run then resumes to the end).
kills=0; finished=0; stages=()
for attempt in $(seq 16); do
  [ $kills -ge 8 ] && break
  delay=$(awk -v r=$RANDOM -v t="$ref_s" 'BEGIN { printf "%.2f", 0.3 + (r / 32767.0) * t * 0.15 }')
  $BIN align --run "$T/run" "${args[@]}" --teacher "http://127.0.0.1:$PB/v1" >>"$T/run.out" 2>&1 &
  p=$!
  sleep "$delay"
  if kill -0 $p 2>/dev/null; then
    kill -9 $p 2>/dev/null; wait $p 2>/dev/null
    kills=$((kills+1))
    st=$($BIN status --run "$T/run" --json 2>/dev/null | "$PY" -c 'import sys,json; print(json.load(sys.stdin)["next_stage"])' 2>/dev/null)
    stages+=("${delay}s:${st:-not started}")
  else
    wait $p; rc=$?
    [ $rc -eq 0 ] && { finished=1; break; }
  fi
done
echo "# kills: ${stages[*]:-none}"
if [ $finished -eq 0 ]; then
  $BIN align --run "$T/run" --teacher "http://127.0.0.1:$PB/v1" >>"$T/run.out" 2>&1 && finished=1
fi
if [ $finished -eq 1 ] && [ $kills -ge 3 ]; then ok "killed with SIGKILL $kills times, resumed to the end"
else nok "killed with SIGKILL at least 3 times, resumed to the end" "kills=$kills finished=$finished; $(tail -5 "$T/run.out")"; fi

"$PY" "$T/dump.py" "$T/ref/run.db" > "$T/ref.rows" 2>&1
"$PY" "$T/dump.py" "$T/run/run.db" > "$T/run.rows" 2>&1
if cmp -s "$T/ref.rows" "$T/run.rows" && [ "$(wc -l < "$T/ref.rows")" -gt 100 ]; then
  ok "every row equals the uninterrupted run's ($(wc -l < "$T/ref.rows") lines)"
else
  nok "every row equals the uninterrupted run's" "$(diff "$T/ref.rows" "$T/run.rows" | head -8)"
fi

same=1; nfiles=0
for f in "$T"/ref/adapters/*.gguf "$T/ref/final.gguf"; do
  g="$T/run/${f#"$T"/ref/}"
  nfiles=$((nfiles+1))
  cmp -s "$f" "$g" || { same=0; echo "# differs: $g"; }
done
if [ $same -eq 1 ] && [ $nfiles -ge 2 ]; then ok "adapters of every round and the final model are byte-identical ($nfiles files)"
else nok "adapters of every round and the final model are byte-identical"; fi

# A request marked as sent when the kill came may or may not have left; the resumed run sends it
# again and counts it as resent. The server must have seen every distinct request of the
# uninterrupted run, and nothing twice beyond those.
total=$(wc -l < "$T/b.log"); uniq_n=$(sort -u "$T/b.log" | wc -l); ref_total=$(wc -l < "$T/a.log")
resent=$(sqlite3 "$T/run/run.db" "SELECT coalesce(sum(resends), 0) FROM teacher_calls" 2>/dev/null || echo 0)
dups=$((total - uniq_n))
if [ "$uniq_n" -eq "$ref_total" ] && [ "$dups" -le "$resent" ]; then
  ok "no teacher request sent twice: $total requests, $ref_total distinct as uninterrupted ($dups repeated, $resent in flight at a kill)"
else
  nok "no teacher request sent twice" "received $total, distinct $uniq_n, uninterrupted run $ref_total, in flight at a kill per store $resent"
fi

if grep -rq "sk-test-4f1c2b9e" "$T/run" "$T/ref" "$T/run.out" "$T/ref.out"; then nok "the API key is stored or logged nowhere"
else ok "the API key is stored or logged nowhere"; fi

st=$($BIN status --run "$T/run" 2>&1)
if grep -q "state: done" <<<"$st" && grep -q "in flight at a crash 0" <<<"$st"; then ok "status: done, nothing left in flight"
else nok "status: done, nothing left in flight" "$st"; fi
