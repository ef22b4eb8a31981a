#!/usr/bin/env bash
# t_eval.sh — `iteralign eval` end to end on stories260K: every per-item log-likelihood of the
# log-likelihood tasks against the independent float64 reference (tests/ref/eval_ref.py, which
# rebuilds the prompts from the protocols, runs forward.py without a KV cache and recomputes every
# prediction), the paper-compatible variant, the same numbers with another thread count, malformed
# task files refused with their location before anything is scored, and the generation tasks.
# Prints TAP lines; run from the repository root (tests/run-tests.sh does).
#
# Measured (stories260K, 3 questions/items per task): max relative difference 2.6e-7 (mc1),
# 2.8e-7 (mc2), 7.6e-7 (true/false), 4.0e-7 (HHH A/B), 6.4e-8 (HHH lm-eval); tolerance 1e-4.
set -u
BIN=${BIN:-./iteralign}
PY=${PYTHON:-/usr/bin/python3}
MODEL=data/models/stories260K.gguf
TMP=tests/tmp/eval.$$
mkdir -p "$TMP"
trap 'rm -rf "$TMP"' EXIT
# A private copy: other builds may rewrite the binary while this runs.
cp "$BIN" "$TMP/iteralign" && BIN=$TMP/iteralign
n=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
notok() { n=$((n + 1)); echo "not ok $n - $1"; }
check() { # name, command...: ok when the command succeeds
  local name=$1; shift
  if "$@" >"$TMP/out" 2>"$TMP/err"; then ok "$name"; else notok "$name"; sed 's/^/# /' "$TMP/err" | head -20; fi
}

check "eval --help" "$BIN" eval --help

# 1. reference agreement on every log-likelihood task (3 items each)
if "$BIN" eval -m $MODEL -t 1 --tasks truthfulqa_mc1,truthfulqa_mc2,truthfulqa_tf,hhh,hhh_mc --limit 3 \
     --out "$TMP/r.json" >"$TMP/table" 2>"$TMP/err"; then
  ok "eval: five log-likelihood tasks"
  if out=$("$PY" tests/ref/eval_ref.py $MODEL "$TMP/r.json" --bin "$BIN" --tol 1e-4 2>&1); then
    while IFS= read -r l; do ok "reference: $l"; done <<<"$out"
  else
    notok "reference agreement"; printf '%s\n' "$out" | sed 's/^/# /'
  fi
else
  notok "eval: five log-likelihood tasks"; sed 's/^/# /' "$TMP/err"
fi

# 2. the paper-compatible true/false scoring, labelled as such in the table and the JSON
if "$BIN" eval -m $MODEL -t 1 --tasks truthfulqa_tf --paper-compat --limit 3 --out "$TMP/c.json" >"$TMP/table" 2>"$TMP/err" &&
   grep -q "truthfulqa_tf_paper_compat" "$TMP/table" && grep -q "PAPER-COMPAT" "$TMP/table"; then
  ok "eval --paper-compat: labelled in the table"
  if out=$("$PY" tests/ref/eval_ref.py $MODEL "$TMP/c.json" --bin "$BIN" 2>&1); then ok "reference: $out"
  else notok "reference (paper-compat)"; printf '%s\n' "$out" | sed 's/^/# /'; fi
else
  notok "eval --paper-compat"; sed 's/^/# /' "$TMP/err" "$TMP/table"
fi

# 3. the same numbers with two threads and another batching (wall-clock fields aside)
if "$BIN" eval -m $MODEL -t 2 --parallel 3 --tasks truthfulqa_mc1,truthfulqa_mc2,truthfulqa_tf,hhh,hhh_mc --limit 3 \
     --out "$TMP/r2.json" >/dev/null 2>"$TMP/err" &&
   "$PY" - "$TMP/r.json" "$TMP/r2.json" <<'EOF'
import json, sys
def strip(v):
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if k not in ("seconds", "threads")}
    if isinstance(v, list):
        return [strip(x) for x in v]
    return v
a, b = (strip(json.load(open(p))) for p in sys.argv[1:3])
sys.exit(0 if a == b else 1)
EOF
then ok "same results with -t 2 --parallel 3"; else notok "same results with -t 2 --parallel 3"; sed 's/^/# /' "$TMP/err"; fi

# 4. malformed task files: refused with file:line, nothing scored (no table on stdout)
bad() { # name, file content, expected text in the message, extra eval args...
  local name=$1 content=$2 want=$3; shift 3
  printf '%s' "$content" >"$TMP/bad.json"
  if "$BIN" eval -m $MODEL -t 1 --limit 1 "$@" >"$TMP/out" 2>"$TMP/err"; then
    notok "$name: accepted"
  elif grep -qF -- "$want" "$TMP/err" && [ ! -s "$TMP/out" ]; then
    ok "$name: $(head -1 "$TMP/err")"
  else
    notok "$name"; sed 's/^/# /' "$TMP/err" "$TMP/out"
  fi
}
bad "bad JSON" $'[\n {"question": "A?", "mc1_targets": {"x": 1, "y": 0}},\n {"question": "B?",, }\n]\n' \
    "bad.json:3:" --tasks truthfulqa_mc1,hhh --truthfulqa "$TMP/bad.json"
bad "question without choices" $'[\n {"question": "A?", "mc2_targets": {"x": 1, "y": 0}},\n {"question": "No choices?"}\n]\n' \
    "bad.json:3: question 2" --tasks truthfulqa_mc2 --truthfulqa "$TMP/bad.json"
bad "target not among the choices" $'{"examples": [\n {"input": "a", "target_scores": {"g": 1, "b": 0}},\n {"input": "b", "target_scores": {"g": 1, "b": 0}, "target": "x"}\n]}\n' \
    "bad.json:3: example 2" --tasks truthfulqa_mc1,hhh --hhh "$TMP/bad.json"
bad "missing file" "" "nonexistent" --tasks hhh --hhh "$TMP/nonexistent.json"
bad "unknown task" "" "unknown task 'mmlu'" --tasks truthfulqa_mc1,mmlu

# 5. generation tasks: a rules judge on red-team prompts, the string-match refusal detector
printf '%s\n' '{"rules": [{"name": "sad", "keywords": ["sad", "scared", "cried"], "constitution": "Be kind."}]}' >"$TMP/rules.json"
if "$BIN" eval -m $MODEL -t 1 --tasks harmful_rate,refusal_rate --judge "rules:$TMP/rules.json" --limit 6 -n 48 --json \
     >"$TMP/g.json" 2>"$TMP/err" &&
   "$PY" -c '
import json, sys
d = json.load(open(sys.argv[1]))["tasks"]
h, r = d["harmful_rate"], d["refusal_rate"]
assert h["n"] == 6 and r["n"] == 6 and len(h["items"]) == 6, (h["n"], r["n"])
assert h["judge"].startswith("rules:") and r["judge"] == "strmatch"
assert abs(h["value"] - sum(i["flagged"] for i in h["items"]) / 6) < 1e-12
assert all(i["n_tokens"] <= 48 for i in h["items"] + r["items"])
print("harmful_rate %.3f, refusal_rate %.3f" % (h["value"], r["value"]))
' "$TMP/g.json" >"$TMP/msg"; then
  ok "harmful_rate (rules judge) and refusal_rate (string match): $(cat "$TMP/msg")"
else
  notok "harmful_rate and refusal_rate"; sed 's/^/# /' "$TMP/err"
fi
bad "harmful_rate without a judge" "" "needs --judge" --tasks harmful_rate

echo "1..$n"
