#!/usr/bin/env bash
# t_align_serve.sh — the alignment loop with `iteralign serve` as its teacher on loopback: a real
# HTTP client and server, the tiny stories260K model answering the judge and the proposer. Its
# replies are stories, not verdicts or constitutions, so they must be recorded as unusable while
# the run (rules + LLM judge) goes on to the end; the server must see each request once. The same
# for the paper preset's free-text judge.
set -u
BIN=${BIN:-./iteralign}
T=tests/tmp/align_serve.$$
mkdir -p "$T"
n=0
ok() { n=$((n+1)); echo "ok $n - $1"; }
nok() { n=$((n+1)); echo "not ok $n - $1"; [ $# -gt 1 ] && echo "# $2"; }
spid=
trap '[ -n "$spid" ] && kill $spid 2>/dev/null; rm -rf "$T"' EXIT

$BIN serve -m data/models/stories260K.gguf --port 0 --parallel 8 -t 1 >"$T/serve.log" 2>&1 &
spid=$!
port=
for _ in $(seq 100); do
  port=$(grep -o 'http://127.0.0.1:[0-9]*' "$T/serve.log" 2>/dev/null | head -1 | sed 's/.*://')
  [ -n "$port" ] && break
  sleep 0.1
done
if [ -z "$port" ]; then nok "iteralign serve started" "$(cat "$T/serve.log")"; exit 0; fi
ok "iteralign serve listening on 127.0.0.1:$port"

args=(--demo --max-prompts 40 --max-heldout 12 --batch-size 20 --teacher "http://127.0.0.1:$port/v1" --teacher-model stories260K
      --judge-max-tokens 48 --proposer-max-tokens 64)
out=$($BIN align --run "$T/run" "${args[@]}" 2>&1); rc=$?
if [ $rc -eq 0 ] && grep -q "state: done" <<<"$($BIN status --run "$T/run")"; then ok "align with the serve teacher ran to the end"
else nok "align with the serve teacher ran to the end" "rc=$rc $(tail -5 <<<"$out")"; fi
db="$T/run/run.db"
calls=$(sqlite3 "$db" "SELECT count(*) FROM teacher_calls")
jcalls=$(sqlite3 "$db" "SELECT count(*) FROM teacher_calls WHERE role='judge'")
unusable=$(sqlite3 "$db" "SELECT count(*) FROM teacher_calls WHERE role='judge' AND status='unusable' AND error IS NOT NULL")
judged=$(sqlite3 "$db" "SELECT count(*) FROM verdicts WHERE judge='llm' AND usable=0 AND reason LIKE 'unusable judge reply:%'")
props=$(sqlite3 "$db" "SELECT count(*) FROM teacher_calls WHERE role='propose'")
if [ "${jcalls:-0}" -gt 0 ] && [ "$unusable" = "$jcalls" ] && [ "${judged:-0}" -gt 0 ] && [ "${props:-0}" -ge 1 ]; then
  ok "unusable teacher replies recorded as such ($unusable of $jcalls judge calls; $judged verdicts; $props proposals)"
else nok "unusable teacher replies recorded as such" "judge calls=$jcalls unusable=$unusable judged=$judged props=$props"; fi
usage=$(sqlite3 "$db" "SELECT count(*) FROM teacher_calls WHERE http_status=200 AND total_tokens > 0 AND latency_s > 0 AND request LIKE '%\"messages\"%' AND reply LIKE '%choices%'")
[ "$usage" = "$calls" ] && ok "each call recorded with request, reply, status, usage and latency" || nok "teacher call records" "$usage of $calls"
rounds=$(sqlite3 "$db" "SELECT count(*) FROM checkpoints")
[ "${rounds:-0}" -ge 1 ] && ok "the rules' flags still led to revisions and training ($rounds rounds)" || nok "training happened"
posts=$(grep -c 'POST /v1/chat/completions 200' "$T/serve.log")
[ "$posts" = "$calls" ] && ok "the server answered each of the $calls requests exactly once" || nok "requests reached the server once" "server $posts, store $calls"
grep -qi "authorization\|bearer" "$db" && nok "no credentials in the store" || ok "no credentials in the store"

# Resuming the finished run sends nothing more.
$BIN align --run "$T/run" --teacher "http://127.0.0.1:$port/v1" >/dev/null 2>&1
posts2=$(grep -c 'POST /v1/chat/completions 200' "$T/serve.log")
[ "$posts2" = "$posts" ] && ok "resuming a finished run sends no request" || nok "resume sent requests" "$posts -> $posts2"

# The paper preset's judge (answer only, "Negative" test) and last-paragraph proposal.
out=$($BIN align --run "$T/paper" "${args[@]}" --judge-style paper --proposer-style paper --registry false 2>&1); rc=$?
pc=$(sqlite3 "$T/paper/run.db" "SELECT count(*) FROM teacher_calls" 2>/dev/null)
if [ $rc -eq 0 ] && [ "${pc:-0}" -gt 0 ]; then ok "paper-style judge and proposer through the server ($pc calls)"
else nok "paper-style judge and proposer through the server" "rc=$rc $(tail -3 <<<"$out")"; fi
