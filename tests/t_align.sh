#!/usr/bin/env bash
# t_align.sh — `iteralign align`, `status` and `constitutions` as a user meets them: the default job
# (no arguments) within its time budget and with a clear drop of the held-out violation rate, the
# outputs of a run, the paper preset end to end, CSV and text input, an in-process local teacher,
# and bad input (missing file, malformed line, not a model, unreachable teacher, changed settings on
# resume, a folder that is not a run) stopping with a clear message and leaving runs intact.
set -u
BIN=${BIN:-./iteralign}
ABS_BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
T=tests/tmp/align.$$
mkdir -p "$T"
n=0
ok() { n=$((n+1)); echo "ok $n - $1"; }
nok() { n=$((n+1)); echo "not ok $n - $1"; [ $# -gt 1 ] && echo "# $2"; }
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
trap 'rm -rf "$T"' EXIT
jget() { "$PY" -c "import sys,json; d=json.load(sys.stdin); print(eval('d'+sys.argv[1]))" "$1"; }

for c in align status constitutions; do
  out=$($BIN $c --help 2>&1); rc=$?
  if [ $rc -eq 0 ] && grep -q "usage: iteralign $c" <<<"$out"; then ok "$c --help"; else nok "$c --help" "rc=$rc"; fi
done

# ---- the default job, as the README runs it: `iteralign align` with no arguments ----
mkdir -p "$T/user"
s0=$(date +%s.%N)
(cd "$T/user" && "$ABS_BIN" align) >"$T/demo.out" 2>"$T/demo.err"; rc=$?
el=$(awk -v a="$s0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
line=$(grep "held-out violation rate:" "$T/demo.out")
echo "# default job: ${el}s; $line"
rundir=$(ls -d "$T"/user/runs/demo-* 2>/dev/null | head -1)
if [ $rc -eq 0 ] && [ -n "$rundir" ]; then ok "default job finished into a fresh folder (${el} s)"; else nok "default job finished" "rc=$rc $(tail -3 "$T/demo.err")"; fi
if [ "${el:-999}" -lt 180 ]; then ok "default job under three minutes"; else nok "default job under three minutes" "took ${el} s"; fi
read -r before after nprompts < <("$BIN" status --run "$rundir" --json 2>/dev/null | "$PY" -c '
import sys, json
v = json.load(sys.stdin)["rates"]["heldout_violation_rate"]
print(v["before"]["rate"], v["after"]["rate"], v["heldout_prompts"])' 2>/dev/null)
if awk -v b="${before:-0}" -v a="${after:-1}" 'BEGIN { exit !(b >= 0.15 && a <= b / 2) }'; then
  ok "held-out violation rate drops clearly: $before -> $after on $nprompts unseen prompts"
else
  nok "held-out violation rate drops clearly" "before=$before after=$after"
fi
grep -q "before .* after .* on [0-9]* unseen prompts" "$T/demo.out" && ok "both rates and the prompt count are shown" || nok "both rates and the prompt count are shown" "$(cat "$T/demo.out")"
grep -q "^\[0:[0-9][0-9]\] batch 1/6: judge" "$T/demo.err" && ok "plain progress log lines when not a terminal" || nok "plain progress log lines when not a terminal"

# ---- the outputs of a run ----
files_ok=1
for f in run.db final.gguf constitutions.json constitutions.md train_data.messages.jsonl train_data.fastchat.jsonl adapters/round-001.gguf train/round-001.jsonl; do
  [ -s "$rundir/$f" ] || { files_ok=0; echo "# missing: $f"; }
done
[ $files_ok -eq 1 ] && ok "run folder holds the store, adapters, final model, constitutions and training data" || nok "run folder outputs"
if "$PY" - "$rundir" <<'PY'
import json, sys
d = sys.argv[1]
m = [json.loads(l) for l in open(d + "/train_data.messages.jsonl")]
f = [json.loads(l) for l in open(d + "/train_data.fastchat.jsonl")]
assert m and len(m) == len(f)
assert m[0]["messages"][0]["role"] == "user" and m[0]["messages"][-1]["role"] == "assistant"
assert f[0]["conversations"][0]["from"] == "human" and f[0]["conversations"][1]["from"] == "gpt"
c = json.load(open(d + "/constitutions.json"))["constitutions"]
assert c and c[0]["source"] == "rules:sadness" and c[0]["sources"][0]["answer"]
PY
then ok "training data in messages and FastChat forms; constitutions with provenance"; else nok "training data and constitutions.json forms"; fi
strict=$(sqlite3 "$rundir/run.db" "SELECT count(*) FROM sqlite_master WHERE type='table' AND sql LIKE '%STRICT%'" 2>/dev/null)
jm=$(sqlite3 "$rundir/run.db" "PRAGMA journal_mode" 2>/dev/null)
[ "${strict:-0}" -ge 10 ] && [ "$jm" = "wal" ] && ok "run store: STRICT tables in WAL mode" || nok "run store: STRICT tables in WAL mode" "strict=$strict jm=$jm"
st=$($BIN status --run "$rundir" 2>&1)
if grep -q "state: done" <<<"$st" && grep -q "held-out violation rate" <<<"$st" && grep -q "red-team flag rate per batch" <<<"$st"; then ok "status shows state, counts and rates"; else nok "status" "$st"; fi
sj=$($BIN status --run "$rundir" --json 2>/dev/null | jget '["counts"]["rounds"]' 2>/dev/null)
[ "${sj:-0}" -ge 1 ] && ok "status --json ($sj rounds)" || nok "status --json"
co=$($BIN constitutions --run "$rundir" 2>&1)
grep -q "^1\. .*source: rule sadness" <<<"$(tr '\n' ' ' <<<"$co")" && ok "constitutions lists the registry with its source" || nok "constitutions" "$co"
cj=$($BIN constitutions --run "$rundir" --json 2>/dev/null | jget '["constitutions"][0]["n_flagged_answers"]' 2>/dev/null)
[ "${cj:-0}" -ge 1 ] && ok "constitutions --json" || nok "constitutions --json"

# A finished run resumed does nothing more and changes nothing.
sum1=$(sqlite3 "$rundir/run.db" "SELECT count(*) FROM progress; SELECT count(*) FROM answers" | tr '\n' ' ')
$BIN align --run "$rundir" >/dev/null 2>&1; rc=$?
sum2=$(sqlite3 "$rundir/run.db" "SELECT count(*) FROM progress; SELECT count(*) FROM answers" | tr '\n' ' ')
[ $rc -eq 0 ] && [ "$sum1" = "$sum2" ] && ok "resuming a finished run changes nothing" || nok "resuming a finished run" "rc=$rc $sum1 / $sum2"

# ---- resuming with settings that would mix results is refused, the run left as it was ----
sqlite3 "$rundir/run.db" .dump > "$T/before.sql"
out=$($BIN align --run "$rundir" --batch-size 10 --lr 0.5 2>&1); rc=$?
sqlite3 "$rundir/run.db" .dump > "$T/after.sql"
if [ $rc -ne 0 ] && grep -q -- "--batch-size (run: 40, now: 10)" <<<"$out" && grep -q -- "--lr" <<<"$out" && cmp -s "$T/before.sql" "$T/after.sql"; then
  ok "changed settings on resume refused, naming them; run untouched"
else nok "changed settings on resume refused" "rc=$rc $out"; fi
out=$($BIN align --run "$rundir" --threads 1 2>&1); rc=$?
[ $rc -eq 0 ] && ok "settings that do not change results may change on resume" || nok "settings that do not change results may change on resume" "$out"

# ---- bad input: a clear message, no run folder created ----
printf '%s\n' '{"prompt":"Tom had a ball."}' '{"prompt":"Sue saw a cat."}' '{"prompt": "broken' > "$T/bad.jsonl"
base=(--base data/models/stories260K.gguf --rules data/demo/rules.json --present raw --max-tokens 16)
bad() { # name, expected message, args...
  local name=$1 want=$2; shift 2
  local out rc
  out=$($BIN align --run "$T/badrun" "$@" 2>&1); rc=$?
  if [ $rc -ne 0 ] && grep -qF -- "$want" <<<"$out" && [ ! -e "$T/badrun" ]; then ok "bad input: $name"
  else nok "bad input: $name" "rc=$rc: $out"; fi
}
bad "missing red-team file" "no-such-file.jsonl" "${base[@]}" --redteam "$T/no-such-file.jsonl"
bad "malformed JSONL line (file:line)" "bad.jsonl:3: malformed JSON" "${base[@]}" --redteam "$T/bad.jsonl"
bad "base model that is not a model" "--base" --base data/demo/rules.json --rules data/demo/rules.json --redteam data/demo/train.jsonl
bad "missing rules file" "no-rules.json" --base data/models/stories260K.gguf --rules "$T/no-rules.json" --redteam data/demo/train.jsonl
bad "no judge" "no judge" --base data/models/stories260K.gguf --redteam data/demo/train.jsonl
bad "unknown preset" "unknown preset" "${base[@]}" --redteam data/demo/train.jsonl --preset fancy
bad "teacher that is not a URL" "expected http(s)://" "${base[@]}" --redteam data/demo/train.jsonl --teacher ftp://x --teacher-model m
bad "local teacher that is not a model" "not a GGUF file" "${base[@]}" --redteam data/demo/train.jsonl --teacher local:data/demo/rules.json
bad "unknown evaluation task" "--eval" "${base[@]}" --redteam data/demo/train.jsonl --eval truthfulqa_mc9
bad "unknown training precision" "is not one of f32, bf16" "${base[@]}" --redteam data/demo/train.jsonl --train-compute fp8
mkdir -p "$T/notarun"; echo hello > "$T/notarun/file.txt"
out=$($BIN align --run "$T/notarun" "${base[@]}" --redteam data/demo/train.jsonl 2>&1); rc=$?
[ $rc -ne 0 ] && grep -q "not empty" <<<"$out" && [ ! -e "$T/notarun/run.db" ] && ok "a non-empty folder that is not a run is refused" || nok "non-empty folder refused" "$out"
out=$($BIN status --run "$T/notarun" 2>&1); rc=$?
[ $rc -ne 0 ] && grep -q "no run here" <<<"$out" && ok "status on a folder without a run: clear message" || nok "status without a run" "$out"

# An unreachable teacher stops the run with a clear message; the run stays resumable.
out=$($BIN align --run "$T/deep/er/unreach" "${base[@]}" --redteam data/demo/train.jsonl --max-prompts 10 --heldout data/demo/heldout.jsonl \
      --max-heldout 4 --teacher http://127.0.0.1:9/v1 --teacher-model judge-x --teacher-retries 0 2>&1); rc=$?
if [ $rc -ne 0 ] && grep -q "unreachable" <<<"$out" && [ -s "$T/deep/er/unreach/run.db" ]; then ok "unreachable teacher: clear message (the run folder made with its parents)"
else nok "unreachable teacher: clear message" "rc=$rc $out"; fi
sent=$(sqlite3 "$T/deep/er/unreach/run.db" "SELECT count(*) FROM teacher_calls" 2>/dev/null)
out=$($BIN align --run "$T/deep/er/unreach" --teacher local:data/models/stories260K.gguf 2>&1); rc=$?
if [ $rc -eq 0 ] && [ "$sent" = "0" ] && grep -q "state: done" <<<"$($BIN status --run "$T/deep/er/unreach")"; then
  ok "the same run resumes with a reachable (local, in-process) teacher"
else nok "resume with a reachable teacher" "rc=$rc sent=$sent $out"; fi
lc=$(sqlite3 "$T/deep/er/unreach/run.db" "SELECT count(*) FROM teacher_calls WHERE endpoint LIKE 'local:%'")
[ "${lc:-0}" -gt 0 ] && ok "local teacher calls recorded in the store ($lc)" || nok "local teacher calls recorded"

# ---- CSV (named column, quoted newlines) and text input; hh presentation ----
printf 'id,question,other\n1,"Tom had a ball, a red one.",x\n2,"Sue saw\na cat.",y\n3,Ben ran fast.,z\n' > "$T/p.csv"
printf 'Lily went to the park.\n\nMax found a shell.\n' > "$T/p.txt"
out=$($BIN align --run "$T/csv" "${base[@]}" --redteam "$T/p.csv" --column question --redteam "$T/p.txt" --present hh \
      --train-method none --measure false 2>&1); rc=$?
np=$(sqlite3 "$T/csv/run.db" "SELECT count(*) FROM prompts WHERE split='train'" 2>/dev/null)
pr=$(sqlite3 "$T/csv/run.db" "SELECT presented FROM prompts WHERE idx=1" 2>/dev/null)
if [ $rc -eq 0 ] && [ "$np" = "5" ] && [ "$pr" = "$(printf '\n\nHuman: Sue saw\na cat.\n\nAssistant:')" ]; then ok "CSV column + text input, hh presentation"
else nok "CSV column + text input, hh presentation" "rc=$rc np=$np pr=$pr $out"; fi
out=$($BIN align --run "$T/badrun" "${base[@]}" --redteam "$T/p.csv" --column prompt 2>&1)
grep -q 'no column "prompt" (columns: "id", "question", "other")' <<<"$out" && ok "CSV: a missing column is named with the ones there are" || nok "CSV missing column message" "$out"

# ---- the paper preset end to end (greedy, hh form, full fine-tuning, no re-judging) ----
out=$($BIN align --run "$T/paper" --preset paper --base data/models/stories260K.gguf --rules data/demo/rules.json \
      --redteam data/demo/train.jsonl --max-prompts 40 --heldout data/demo/heldout.jsonl --max-heldout 10 --max-tokens 48 \
      --stop '\n\nHuman:' 2>&1); rc=$?
kind=$(sqlite3 "$T/paper/run.db" "SELECT group_concat(DISTINCT kind) FROM checkpoints" 2>/dev/null)
ncand=$(sqlite3 "$T/paper/run.db" "SELECT max(cand) FROM revisions" 2>/dev/null)
rj=$(sqlite3 "$T/paper/run.db" "SELECT count(*) FROM verdicts WHERE subject='revision'" 2>/dev/null)
if [ $rc -eq 0 ] && [ "$kind" = "full" ] && [ "$ncand" = "0" ] && [ "$rj" = "0" ] && [ -s "$T/paper/final.gguf" ]; then
  ok "paper preset: one unchecked revision per flagged prompt, full fine-tuning, final model"
else nok "paper preset end to end" "rc=$rc kind=$kind ncand=$ncand rejudged=$rj $(tail -3 <<<"$out")"; fi
