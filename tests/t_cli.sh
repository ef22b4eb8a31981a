#!/usr/bin/env bash
# t_cli.sh — the `iteralign` command as a user meets it: --help everywhere, the stories260K golden
# greedy output, tokenize on llama.cpp's vectors, JSONL input, and clear errors on bad input.
set -u
BIN=${BIN:-./iteralign}
T=tests/tmp/cli.$$
mkdir -p "$T"
n=0
ok() { n=$((n+1)); echo "ok $n - $1"; }
nok() { n=$((n+1)); echo "not ok $n - $1"; [ $# -gt 1 ] && echo "# $2"; }
check() { local name=$1; shift; if "$@"; then ok "$name"; else nok "$name"; fi; }

# --help on every command exits 0 and prints a usage line
for c in "" info tokenize generate make-model bench; do
  out=$($BIN $c --help 2>&1); rc=$?
  if [ $rc -eq 0 ] && grep -q "usage: iteralign" <<<"$out"; then ok "--help ${c:-(top)}"; else nok "--help ${c:-(top)}" "rc=$rc"; fi
done
$BIN no-such-command >/dev/null 2>&1; [ $? -ne 0 ] && ok "unknown command fails" || nok "unknown command fails"

# Golden: stories260K, greedy from BOS alone, 64 tokens = Karpathy's reference sample (data/NOTICE.md, MANIFEST)
REF="403 407 261 378 432 383 286 261 376 298 315 421 395 317 426 338 401 396 267 337 410 408 419 292 411 322 265 282 295 433 426 385 328 432 358 394 261 370 432 352 266 268 388 426 338 391 266 267 337 335 312 432 398 312 286 267 414 270 333 415 426 13 438 310"
got=$($BIN generate -m data/models/stories260K.gguf -p "" -n 64 --json 2>/dev/null | /usr/bin/python3 -c 'import sys,json; print(" ".join(map(str,json.loads(sys.stdin.readline())["tokens"])))' 2>/dev/null)
if [ "$got" = "$REF" ]; then ok "stories260K greedy from BOS = 64 reference ids"; else nok "stories260K greedy from BOS = 64 reference ids" "got: $got"; fi
txt=$($BIN generate -m data/models/stories260K.gguf -p "" -n 64 2>/dev/null | head -c 40)
check "stories260K text starts with ' Once upon a time'" grep -q "^ Once upon a time" <<<"$txt"

# Batched = separate: a JSONL file of prompts decoded together gives the same tokens as one by one
printf '%s\n' '{"prompt":"Once upon a time"}' '{"prompt":"Lily and Ben"}' '{"prompt":""}' '{"prompt":"The cat sat on"}' '{"prompt":"One day, a little"}' > "$T/p.jsonl"
$BIN generate -m data/models/stories260K.gguf -f "$T/p.jsonl" -n 40 --json --parallel 4 2>/dev/null > "$T/batched.jsonl"
: > "$T/single.jsonl"
while IFS= read -r line; do
  p=$(/usr/bin/python3 -c 'import sys,json; print(json.loads(sys.argv[1])["prompt"])' "$line")
  $BIN generate -m data/models/stories260K.gguf -p "$p" -n 40 --json 2>/dev/null >> "$T/single.jsonl"
done < "$T/p.jsonl"
same=$(/usr/bin/python3 - "$T/batched.jsonl" "$T/single.jsonl" <<'PY'
import sys, json
a=[json.loads(l) for l in open(sys.argv[1])]; b=[json.loads(l) for l in open(sys.argv[2])]
print("yes" if len(a)==5 and [x["tokens"] for x in a]==[x["tokens"] for x in b] and all(len(x["tokens"])>0 for x in a) else "no")
PY
)
[ "$same" = yes ] && ok "batched generation (5 prompts, 4 slots) = separate greedy runs" || nok "batched generation = separate greedy runs"

# Stop strings cut the text before the match
out=$($BIN generate -m data/models/stories260K.gguf -p "" -n 64 --stop "Lily" --json 2>/dev/null)
fr=$(/usr/bin/python3 -c 'import sys,json; d=json.loads(sys.argv[1]); print(d["finish_reason"], "Lily" in d["text"], d["text"].endswith("named "))' "$out" 2>/dev/null)
[ "$fr" = "stop False True" ] && ok "stop string" || nok "stop string" "$fr"

# Same seed, same output; sampling differs from greedy
a=$($BIN generate -m data/models/stories260K.gguf -p "Once" -n 30 --temp 1.0 --seed 7 2>/dev/null)
b=$($BIN generate -m data/models/stories260K.gguf -p "Once" -n 30 --temp 1.0 --seed 7 2>/dev/null)
c=$($BIN generate -m data/models/stories260K.gguf -p "Once" -n 30 --temp 1.0 --seed 8 2>/dev/null)
[ "$a" = "$b" ] && [ "$a" != "$c" ] && ok "seeded sampling is reproducible" || nok "seeded sampling is reproducible"

# tokenize on llama.cpp's vectors through the CLI (a few cases per vocabulary)
for v in llama-spm gpt-2 phi-3; do
  f=data/tokenizer/ggml-vocab-$v.gguf
  [ -f "$f" ] || continue
  res=$(/usr/bin/python3 - "$f" "$BIN" <<'PY'
import sys, subprocess
f, binp = sys.argv[1], sys.argv[2]
cases = open(f + ".inp", encoding="utf-8").read().split("\n__ggml_vocab_test__\n")[:-1]
outs = open(f + ".out", encoding="utf-8").read().split("\n")
bad = 0
for i in range(0, len(cases), 5):
    tf = "tests/tmp/tok_case.txt"
    open(tf, "wb").write(cases[i].encode("utf-8"))
    r = subprocess.run([binp, "tokenize", "-m", f, "-f", tf], capture_output=True, text=True)
    if r.stdout.strip() != outs[i].strip(): bad += 1
print(bad)
PY
)
  [ "$res" = 0 ] && ok "tokenize CLI matches $v vectors" || nok "tokenize CLI matches $v vectors" "$res mismatches"
done

# Bad input: clear messages, non-zero exit
printf '%s\n' '{"prompt":"a"}' '{"prompt": 3}' > "$T/bad.jsonl"
err=$($BIN generate -m data/models/stories260K.gguf -f "$T/bad.jsonl" 2>&1 >/dev/null); rc=$?
[ $rc -ne 0 ] && grep -q "bad.jsonl:2" <<<"$err" && ok "malformed JSONL line named" || nok "malformed JSONL line named" "$err"
printf 'not json\n' > "$T/bad2.jsonl"
err=$($BIN generate -m data/models/stories260K.gguf -f "$T/bad2.jsonl" 2>&1 >/dev/null); rc=$?
[ $rc -ne 0 ] && grep -q "bad2.jsonl:1" <<<"$err" && ok "non-JSON line named" || nok "non-JSON line named" "$err"
head -c 5000 data/models/stories260K.gguf > "$T/trunc.gguf"
err=$($BIN generate -m "$T/trunc.gguf" -p hi 2>&1 >/dev/null); rc=$?
[ $rc -ne 0 ] && grep -q "trunc.gguf" <<<"$err" && [ $(wc -l <<<"$err") -eq 1 ] && ok "truncated model: one-line error naming the file" || nok "truncated model error" "$err"
err=$($BIN generate -m "$T/missing.gguf" -p hi 2>&1 >/dev/null); rc=$?
[ $rc -ne 0 ] && grep -q "missing.gguf" <<<"$err" && ok "missing model file named" || nok "missing model file named" "$err"
err=$($BIN generate -m data/tokenizer/ggml-vocab-gpt-2.gguf -p hi 2>&1 >/dev/null); rc=$?
[ $rc -ne 0 ] && [ -n "$err" ] && ok "vocab-only file refused as a model" || nok "vocab-only file refused as a model" "$err"
$BIN generate -m data/models/stories260K.gguf -p hi --top-p abc >/dev/null 2>&1; [ $? -ne 0 ] && ok "bad option value refused" || nok "bad option value refused"
err=$(IA_PRECISION=bf61 $BIN generate -m data/models/stories260K.gguf -p hi 2>&1 >/dev/null); rc=$?
[ $rc -eq 2 ] && grep -q "IA_PRECISION=.bf61" <<<"$err" && ok "unknown IA_PRECISION refused" || nok "unknown IA_PRECISION refused" "$err"

# info works on models and vocab files, --json parses
$BIN info --json data/models/stories260K.gguf 2>/dev/null | /usr/bin/python3 -c 'import sys,json; d=json.load(sys.stdin); assert d["n_tensors"]==48 and d["model"]["arch"]=="llama" and d["tokenizer"]["n_vocab"]==512' 2>/dev/null && ok "info --json stories260K" || nok "info --json stories260K"
$BIN info --json data/tokenizer/ggml-vocab-phi-3.gguf 2>/dev/null | /usr/bin/python3 -c 'import sys,json; d=json.load(sys.stdin); assert d["chat_template"]=="phi3" and "model_error" in d' 2>/dev/null && ok "info --json phi-3 vocab (template detected)" || nok "info --json phi-3 vocab"
# generate --lora FILE applies an adapter at run time: same tokens as the merged model
printf '%s\n' '{"prompt":"Once upon a time","completion":" the blue robot sang a song about the moon."}' > "$T/tr.jsonl"
if $BIN train -m data/models/stories260K.gguf --data "$T/tr.jsonl" -o "$T/a.gguf" --epochs 30 --lr 3e-3 -q >/dev/null 2>&1 &&
   $BIN merge -m data/models/stories260K.gguf --lora "$T/a.gguf" --out "$T/merged.gguf" --type f32 >/dev/null 2>&1; then
  a=$($BIN generate -m data/models/stories260K.gguf --lora "$T/a.gguf" -p "Once upon a time" -n 12 --json 2>/dev/null | /usr/bin/python3 -c 'import sys,json; print(json.loads(sys.stdin.readline())["tokens"])')
  b=$($BIN generate -m "$T/merged.gguf" -p "Once upon a time" -n 12 --json 2>/dev/null | /usr/bin/python3 -c 'import sys,json; print(json.loads(sys.stdin.readline())["tokens"])')
  c=$($BIN generate -m data/models/stories260K.gguf -p "Once upon a time" -n 12 --json 2>/dev/null | /usr/bin/python3 -c 'import sys,json; print(json.loads(sys.stdin.readline())["tokens"])')
  [ -n "$a" ] && [ "$a" = "$b" ] && [ "$a" != "$c" ] && ok "generate --lora = merged model, and differs from the base" || nok "generate --lora = merged model" "lora=$a merged=$b base=$c"
else
  nok "generate --lora = merged model" "train or merge failed"
fi
# bench: every part on small random models (int8 and bf16 activation paths), its own checks pass
for ty in q8_0 bf16; do
  if $BIN make-model --preset tiny-llama --type $ty --vocab data/tokenizer/ggml-vocab-llama-spm.gguf --out "$T/b.gguf" >/dev/null 2>&1 &&
     $BIN bench -m "$T/b.gguf" -t 2 -p 64 -n 16 --npl 1,4 --npp 16 --ntg 8 --score-ctx 64 --score-chunks 1 -r 1 \
       --train-steps 2 --train-len 32 --bw-mib 16 --json "$T/b.json" > "$T/b.out" 2>&1; then
    /usr/bin/python3 - "$T/b.json" <<'PY' && ok "bench $ty: pp, tg, batch, score, train, bw measured and checked" || nok "bench $ty" "$(cat "$T/b.out")"
import sys, json
r = json.loads(open(sys.argv[1]).readlines()[-1])
assert r["ok"] is True, "a check failed"
for k in ("pp", "tg", "score", "train", "bw_gbs", "batch"):
    assert k in r, k
assert r["train"]["tps"] > 0 and r["train"]["peak_mib"] > 0 and r["train"]["ok"]
# --compute bf16 measured too where the CPU multiplies bf16 pairs
if "avx512_bf16" in open("/proc/cpuinfo").read().split():
    assert r["train_bf16"]["tps"] > 0 and r["train_bf16"]["ok"], "train_bf16"
assert [b["npl"] for b in r["batch"]] == [1, 4]
# the decoded logits of the tg run were compared with the reference, not only the batch's
assert isinstance(r["check"]["decode_rel_diff"], float) and r["check"]["decode_argmax_agree"] >= 1, r["check"]
PY
  else
    nok "bench $ty" "$(tail -5 "$T/b.out" 2>/dev/null)"
  fi
  rm -f "$T/b.gguf" "$T/b.json"
done
# the reference check with f32 activations at a real shape (SmolLM2-135M, F16): the f16 KV cache's rounding
# moves its logits by ~3e-4 of their range (1e-4 was allowed once, and every F32/F16 model failed it)
if $BIN make-model --preset smollm2-135m --type f16 --vocab data/tokenizer/ggml-vocab-gpt-2.gguf --out "$T/s.gguf" >/dev/null 2>&1 &&
   $BIN bench -m "$T/s.gguf" -t 2 --only tg,check -n 8 -r 1 --json "$T/s.json" > "$T/s.out" 2>&1; then
  /usr/bin/python3 - "$T/s.json" <<'PY' && ok "bench check, SmolLM2-135M shape F16: decode and batch within the default tolerance" || nok "bench check F16" "$(cat "$T/s.out")"
import sys, json
r = json.loads(open(sys.argv[1]).readlines()[-1])
c = r["check"]
assert r["ok"] is True and c["ok"] and not c["int8_activations"], c
assert 0 < c["decode_rel_diff"] <= c["tol"] and c["decode_argmax_agree"] == c["tokens"], c
PY
else
  nok "bench check F16" "$(tail -5 "$T/s.out" 2>/dev/null)"
fi
# IA_PRECISION=bf16: the same F16 model multiplied as bf16 where the CPU has AVX512_BF16 (else f32),
# still within the reference check's tolerance for low-precision activations
rm -f "$T/s.json"
if [ -f "$T/s.gguf" ] && IA_PRECISION=bf16 $BIN bench -m "$T/s.gguf" -t 2 --only pp,check -p 64 -r 1 --json "$T/s.json" > "$T/s.out" 2>&1; then
  /usr/bin/python3 - "$T/s.json" <<'PY' && ok "bench check, SmolLM2-135M shape F16 with IA_PRECISION=bf16" || nok "bench check F16 bf16" "$(cat "$T/s.out")"
import sys, json
r = json.loads(open(sys.argv[1]).readlines()[-1])
c = r["check"]
assert r["precision"] == "bf16" and r["ok"] is True and c["ok"], r
# AVX-512 with BF16 multiplies bf16 pairs; an AVX2-only x86 keeps f32; the C reference family emulates bf16
if r["kernel"] == "avx512" and "avx512_bf16" in open("/proc/cpuinfo").read():
    assert c["int8_activations"], c
assert c["tol"] == (5e-2 if c["int8_activations"] else 1e-3), c
assert 0 < c["batch_rel_diff"] <= c["tol"], c
PY
else
  nok "bench check F16 bf16" "$(tail -5 "$T/s.out" 2>/dev/null)"
fi
rm -f "$T/s.gguf" "$T/s.json" "$T/s.out"
rm -rf "$T"
