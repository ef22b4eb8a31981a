#!/usr/bin/env bash
# bench_eval.sh — truthfulqa_mc2 questions per second with and without the shared few-shot primer
# cache: the same N questions scored three ways, (1) everything decoded from scratch for every
# request (--no-prefix-cache --no-context-sharing), (2) the primer's KV decoded once and copied into
# each request's slot (--no-context-sharing), (3) that plus each question's context decoded once and
# copied to its other choices (the default). All three give the same numbers (checked here too).
# Env: BIN (./iteralign), N (24 questions), THREADS (1: OpenMP spin-waits make a shared machine's
# timings meaningless otherwise), MODEL (default stories260K, whose 512-token vocabulary makes the
# primer 381 tokens long), OUT (bench/results). Writes $OUT/bench_eval.txt and appends a JSON line to
# $OUT/bench_eval.jsonl.
set -u
BIN=${BIN:-./iteralign}
N=${N:-24}
THREADS=${THREADS:-1}
MODEL=${MODEL:-data/models/stories260K.gguf}
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
PY=${PYTHON:-/usr/bin/python3}

run() { # label, extra flags...
  local label=$1; shift
  "$BIN" eval -m "$MODEL" -t "$THREADS" --tasks truthfulqa_mc2 --limit "$N" --out "$TMP/$label.json" "$@" >/dev/null 2>"$TMP/$label.err" ||
    { echo "bench_eval: $label failed:" >&2; cat "$TMP/$label.err" >&2; exit 1; }
}
run none --no-prefix-cache --no-context-sharing
run primer --no-context-sharing
run shared

"$PY" - "$TMP" "$N" "$MODEL" "$THREADS" "$OUT" <<'EOF'
import json, sys, time
tmp, n, model, threads, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
res = {k: json.load(open("%s/%s.json" % (tmp, k)))["tasks"]["truthfulqa_mc2"] for k in ("none", "primer", "shared")}
ll = {k: [i["loglik"] for i in v["items"]] for k, v in res.items()}
same = ll["none"] == ll["primer"] == ll["shared"]
lines = ["truthfulqa_mc2 on %s, %d questions, %d thread(s)" % (model, n, threads)]
row = {"model": model, "questions": n, "threads": threads, "same_numbers": same, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
for k, label in (("none", "no cache (every request from scratch)"), ("primer", "primer KV cached"),
                 ("shared", "primer cached + question context shared")):
    sc = res[k]["scoring"]
    qps = n / sc["seconds"]
    row[k] = {"q_per_s": qps, "seconds": sc["seconds"], "tokens_decoded": sc["tokens_decoded"], "tokens_reused": sc["tokens_reused"]}
    lines.append("  %-42s %8.2f q/s  %7.2f s  %8d tokens decoded  %8d reused" % (label, qps, sc["seconds"], sc["tokens_decoded"], sc["tokens_reused"]))
lines.append("  speed-up: primer cache %.2fx, primer + shared contexts %.2fx; identical log-likelihoods: %s" %
             (row["primer"]["q_per_s"] / row["none"]["q_per_s"], row["shared"]["q_per_s"] / row["none"]["q_per_s"], same))
print("\n".join(lines))
open(out + "/bench_eval.txt", "w").write("\n".join(lines) + "\n")
open(out + "/bench_eval.jsonl", "a").write(json.dumps(row) + "\n")
sys.exit(0 if same else 1)
EOF
