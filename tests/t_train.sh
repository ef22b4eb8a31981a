#!/usr/bin/env bash
# t_train.sh — the trainer end to end: gradients against an independent torch float64 reference,
# memorisation on stories260K, run-time adapters vs the merged model, resume after kill -9, the
# adapter GGUF's exact contents, PEFT export, data errors. Prints TAP lines; run from the
# repository root (tests/run-tests.sh does).
#
# Gradient tolerance: max|g_C - g_ref| / max|g_ref| per tensor <= 1e-4, and the same for the loss.
# Measured (E 64 or 256, L 2, H 4/2, 3 examples packed, N 40-47): 3e-6 .. 5e-6 for LoRA and full
# fine-tuning, llama and qwen2 (biases, tied head), F32 and Q4_K bases, with and without activation
# recomputation; the loss to 1e-8. A wrong sign or a missing term in any backward gives > 1e-2.
set -u
BUILD=${BUILD:-build}
BIN=${BIN:-./iteralign}
PY=${PYTHON:-/usr/bin/python3}
TMP=tests/tmp/train.$$
mkdir -p "$TMP"
trap 'rm -rf "$TMP"' EXIT
export OMP_WAIT_POLICY=passive   # the test machines are small and shared
n=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
notok() { n=$((n + 1)); echo "not ok $n - $1"; }
skip() { n=$((n + 1)); echo "ok $n - # SKIP $1"; }
STORIES=data/models/stories260K.gguf

# The driver: against the library when it is up to date, else from the sources.
DRV=$TMP/train_driver
CFLAGS="-std=c11 -D_GNU_SOURCE -O2 -fopenmp -pthread -Iinclude -Isrc ${EXTRA_CFLAGS:-}"  # EXTRA_CFLAGS: sanitizers under make test-asan
LIBS="-lpcre2-8 -ljansson -lcurl -lmicrohttpd -lsqlite3 -lm"
if [ -f "$BUILD/libiteralign.a" ] && [ -z "$(find src include -newer "$BUILD/libiteralign.a" -name '*.[ch]' | head -1)" ]; then
  cc $CFLAGS -o "$DRV" tests/train_driver.c "$BUILD/libiteralign.a" $LIBS 2>"$TMP/cc.log"
else
  cc $CFLAGS -o "$DRV" tests/train_driver.c src/train/*.c src/model/*.c src/gguf/*.c src/tensor/*.c \
     src/tokenizer/*.c src/chat/*.c src/util/*.c $LIBS 2>"$TMP/cc.log"
fi
if [ $? -ne 0 ]; then notok "build tests/train_driver.c"; sed 's/^/# /' "$TMP/cc.log"; echo "1..$n"; exit 1; fi
ok "build tests/train_driver.c"

cat > "$TMP/mixed.jsonl" <<'EOF'
{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"What is 2+2?"},{"role":"assistant","content":"It is 4."},{"role":"user","content":"And 3+3?"},{"role":"assistant","content":"Six."}]}
{"conversations":[{"from":"human","value":"Name a color."},{"from":"gpt","value":"Blue, like the sky."}]}
{"prompt":"The capital of France is","completion":" Paris."}
EOF

# ---- 1. gradients vs torch float64 ----
if "$PY" -c 'import torch' 2>/dev/null; then
  SPM=data/tokenizer/ggml-vocab-llama-spm.gguf GPT2=data/tokenizer/ggml-vocab-gpt-2.gguf
  mk() { # out arch vocab type E F tied
    "$BIN" make-model --vocab "$3" --out "$1" --arch "$2" --type "$4" --n-embd "$5" --n-layer 2 --n-head 4 \
      --n-head-kv 2 --n-ff "$6" --n-ctx 128 "$7" --seed 3 >/dev/null 2>"$TMP/err.log"
  }
  grad() { # name model method rank alpha targets [recompute]
    local name=$1 model=$2 out
    if ! "$DRV" grad "$model" "$TMP/mixed.jsonl" "$3" "$4" "$5" "$6" "$TMP/g.bin" ${7:-} >/dev/null 2>"$TMP/err.log"; then
      notok "$name: C gradients"; sed 's/^/# /' "$TMP/err.log"; return
    fi
    if out=$("$PY" tests/ref/train_ref.py "$model" "$TMP/g.bin" --tol 1e-4 2>&1); then ok "$name: $out"
    else notok "$name: $out"; fi
  }
  if mk "$TMP/ll.gguf" llama $SPM f32 64 96 --untied && mk "$TMP/qw.gguf" qwen2 $GPT2 f32 64 96 --tied &&
     mk "$TMP/lq.gguf" llama $SPM q8_0 64 96 --untied && mk "$TMP/qk.gguf" qwen2 $GPT2 q4_k 256 256 --tied &&
     mk "$TMP/lh.gguf" llama $SPM f16 64 96 --tied; then
    grad "llama F32 LoRA all targets vs torch" "$TMP/ll.gguf" lora 4 8 all
    grad "llama F32 full fine-tuning vs torch" "$TMP/ll.gguf" full 4 8 all
    grad "llama F32 full fine-tuning, recomputed activations, vs torch" "$TMP/ll.gguf" full 4 8 all recompute
    grad "qwen2 F32 (biases, tied head) full fine-tuning vs torch" "$TMP/qw.gguf" full 4 8 all
    grad "qwen2 F32 LoRA q,v,down, recomputed, vs torch" "$TMP/qw.gguf" lora 4 8 q,v,down recompute
    grad "llama Q8_0 base LoRA (QLoRA-style) vs torch" "$TMP/lq.gguf" lora 8 16 all
    grad "qwen2 Q4_K base LoRA vs torch" "$TMP/qk.gguf" lora 4 4 q,k,o,gate,up
    grad "llama F16 (tied) full fine-tuning vs torch" "$TMP/lh.gguf" full 4 8 all
    # full fine-tuning writes the model back in the base's tensor types
    if "$BIN" train -m "$TMP/lh.gguf" --data "$TMP/mixed.jsonl" --out "$TMP/lh2.gguf" --method full --epochs 1 -t 1 -q \
         2>"$TMP/err.log" && out=$("$PY" - "$TMP/lh.gguf" "$TMP/lh2.gguf" <<'PYEOF'
import sys; sys.path.insert(0, "tests/ref"); import gguf
import numpy as np
a, b = gguf.read(sys.argv[1]), gguf.read(sys.argv[2])
assert a.metadata == b.metadata, "metadata changed"
assert [(n, t.type, t.ne) for n, t in a.tensors.items()] == [(n, t.type, t.ne) for n, t in b.tensors.items()], "types/shapes"
moved = sum(not np.array_equal(gguf.dequantize(a.tensors[n]), gguf.dequantize(b.tensors[n])) for n in a.tensors)
print("%d of %d tensors updated, types and metadata kept" % (moved, len(a.tensors)))
PYEOF
); then ok "full fine-tuning of an F16 base writes F16: $out"; else notok "full FT F16 output: ${out:-}"; sed 's/^/# /' "$TMP/err.log"; fi
  else
    notok "make random models"; sed 's/^/# /' "$TMP/err.log"
  fi
  rm -f "$TMP"/ll.gguf "$TMP"/qw.gguf "$TMP"/lq.gguf "$TMP"/qk.gguf "$TMP"/lh.gguf "$TMP"/lh2.gguf
else
  skip "gradients vs torch: python3-torch is not installed for $PY (apt-get install python3-torch)"
fi

# ---- 2. stories260K: memorise four completions ----
cat > "$TMP/mem.jsonl" <<'EOF'
{"prompt": "Once upon a time", "completion": " there was a purple cat named Zed."}
{"prompt": "The dog said", "completion": " hello to the big red ball."}
{"prompt": "Lily went", "completion": " to the moon with her mom."}
{"prompt": "Tom had", "completion": " a box of blue toys."}
EOF
if "$BIN" train -m $STORIES --data "$TMP/mem.jsonl" --out "$TMP/a.gguf" --epochs 100 --lr 1e-2 --schedule constant \
     --rank 16 --seed 1 -t 1 -q --log "$TMP/log.jsonl" 2>"$TMP/err.log"; then
  ok "train: LoRA on stories260K ($(tail -1 "$TMP/err.log" | sed 's/iteralign: //; s/; wrote.*//'))"
else
  notok "train: LoRA on stories260K"; sed 's/^/# /' "$TMP/err.log"
fi
# stories260K's EOS output row was never trained, so EOS targets keep ~5.3 nats; every other
# completion token must be learned
if out=$("$DRV" eval $STORIES "$TMP/mem.jsonl" default "$TMP/a.gguf" 2>&1) &&
   awk '{ exit !($6 < 0.05) }' <<<"$out"; then ok "memorised: per-token loss $out"
else notok "memorised: per-token loss $out"; fi
# the same with the base-weight products in bf16: the adapter, used at f32, has learned them too
if "$BIN" train -m $STORIES --data "$TMP/mem.jsonl" --out "$TMP/a16.gguf" --epochs 100 --lr 1e-2 --schedule constant \
     --rank 16 --seed 1 -t 2 -q --compute bf16 2>"$TMP/err.log" &&
   out=$("$DRV" eval $STORIES "$TMP/mem.jsonl" default "$TMP/a16.gguf" 2>&1) &&
   awk '{ exit !($6 < 0.05) }' <<<"$out"; then ok "train --compute bf16: memorised, per-token loss at f32 $out"
else notok "train --compute bf16: ${out:-}"; sed 's/^/# /' "$TMP/err.log"; fi
if "$BIN" train -m $STORIES --data "$TMP/mem.jsonl" --out "$TMP/x.gguf" --compute fp8 2>"$TMP/err.log"; then
  notok "--compute fp8 accepted"
elif grep -q "not f32 or bf16" "$TMP/err.log"; then ok "--compute: an unknown precision is refused: $(head -c 80 "$TMP/err.log")"
else notok "--compute error message"; sed 's/^/# /' "$TMP/err.log"; fi
if "$BIN" merge -m $STORIES --lora "$TMP/a.gguf" --out "$TMP/merged.gguf" --type f32 2>"$TMP/err.log"; then
  ok "merge f32"
else notok "merge f32"; sed 's/^/# /' "$TMP/err.log"; fi
good=0
while IFS=$'\t' read -r p c; do
  got=$("$BIN" generate -m "$TMP/merged.gguf" -p "$p" -n 16 -t 1 2>/dev/null)
  case "$got" in "$c"*) good=$((good + 1));; *) echo "# '$p' -> '$got' (want '$c')";; esac
done <<'EOF'
Once upon a time	 there was a purple cat named Zed.
The dog said	 hello to the big red ball.
Lily went	 to the moon with her mom.
Tom had	 a box of blue toys.
EOF
if [ $good -eq 4 ]; then ok "greedy generation with the merged model reproduces the 4 trained answers"
else notok "greedy generation reproduces $good/4 trained answers"; fi
# base + adapter at run time vs the merged model: same logits
if "$DRV" logits $STORIES "$TMP/mem.jsonl" default "$TMP/rt.f32" "$TMP/a.gguf" 2>"$TMP/err.log" &&
   "$DRV" logits "$TMP/merged.gguf" "$TMP/mem.jsonl" default "$TMP/mg.f32" 2>>"$TMP/err.log" &&
   out=$("$DRV" cmp "$TMP/rt.f32" "$TMP/mg.f32" 1e-5); then ok "run-time adapter vs merged f32 logits: $out"
else notok "run-time adapter vs merged f32 logits: ${out:-}"; sed 's/^/# /' "$TMP/err.log"; fi
# two adapters at half scale add up to one at full scale
if "$DRV" logits $STORIES "$TMP/mem.jsonl" default "$TMP/rt2.f32" "$TMP/a.gguf:0.5" "$TMP/a.gguf:0.5" 2>"$TMP/err.log" &&
   out=$("$DRV" cmp "$TMP/rt2.f32" "$TMP/rt.f32" 1e-5); then ok "two adapters at scale 0.5 = one at 1: $out"
else notok "two adapters at scale 0.5: ${out:-}"; fi
for t in f16 bf16 q8_0; do
  if "$BIN" merge -m $STORIES --lora "$TMP/a.gguf" --out "$TMP/m_$t.gguf" --type $t 2>"$TMP/err.log" &&
     "$DRV" logits "$TMP/m_$t.gguf" "$TMP/mem.jsonl" default "$TMP/m_$t.f32" 2>>"$TMP/err.log" &&
     out=$("$DRV" cmp "$TMP/m_$t.f32" "$TMP/mg.f32" 0.05); then ok "merge $t: logits vs f32 merge $out"
  else notok "merge $t: ${out:-}"; sed 's/^/# /' "$TMP/err.log"; fi
  [ $t = q8_0 ] && mv "$TMP/m_$t.gguf" "$TMP/m_q.gguf"
  rm -f "$TMP/m_$t.gguf"
done
# the merged model keeps the base's tokenizer and metadata
if "$PY" - "$STORIES" "$TMP/merged.gguf" <<'EOF'
import sys; sys.path.insert(0, "tests/ref"); import gguf
a, b = gguf.read(sys.argv[1]).metadata, gguf.read(sys.argv[2]).metadata
diff = [k for k in set(a) | set(b) if k != "general.file_type" and a.get(k) != b.get(k)]
sys.exit("keys differ: %s" % diff if diff else 0)
EOF
then ok "merged model: every metadata key of the base unchanged"; else notok "merged model metadata"; fi

# ---- 3. the adapter file has exactly what llama.cpp reads ----
if out=$("$PY" - "$TMP/a.gguf" <<'EOF'
import sys; sys.path.insert(0, "tests/ref"); import gguf
g = gguf.read(sys.argv[1])
want = {"general.architecture": (8, "llama"), "general.type": (8, "adapter"), "adapter.type": (8, "lora"),
        "adapter.lora.alpha": (6, 16.0)}
got = {k: (g.kv_types[k][0], g.metadata[k]) for k in g.metadata}
if got != want: sys.exit("metadata %s" % got)
names = set(g.tensors)
for name, t in g.tensors.items():
    base, suf = name.rsplit(".", 1)
    if suf not in ("lora_a", "lora_b") or t.type != 0: sys.exit("tensor %s type %d" % (name, t.type))
    other = base + (".lora_b" if suf == "lora_a" else ".lora_a")
    if other not in names: sys.exit("%s without its pair" % name)
a = g.tensors["blk.0.attn_q.weight.lora_a"]; b = g.tensors["blk.0.attn_q.weight.lora_b"]
if a.ne[:2] != [64, 16] or b.ne[:2] != [16, 64]: sys.exit("shapes %s %s" % (a.ne, b.ne))
print("%d tensors, 4 keys" % len(names))
EOF
); then ok "adapter GGUF: $out (general.type, adapter.type, adapter.lora.alpha f32, .lora_a ne {in,r}, .lora_b ne {r,out})"
else notok "adapter GGUF: $out"; fi

# ---- 4. resume after kill -9 reproduces the uninterrupted run ----
run_train() { # out log ckpt
  exec "$BIN" train -m $STORIES --data "$TMP/mem.jsonl" --out "$1" --epochs 40 --lr 5e-3 -b 2 --grad-accum 1 --rank 4 \
    --dropout 0.1 --seed 9 -t 1 -q --log "$2" --checkpoint "$3" --checkpoint-every 7 --schedule cosine --warmup-ratio 0.1
}
(run_train "$TMP/u.gguf" "$TMP/u.log" "$TMP/u.ckpt") 2>"$TMP/err.log" || { notok "uninterrupted run"; sed 's/^/# /' "$TMP/err.log"; }
run_train "$TMP/k.gguf" "$TMP/k.log" "$TMP/k.ckpt" 2>/dev/null &
pid=$!
for _ in $(seq 1 400); do
  [ "$(cat "$TMP/k.log" 2>/dev/null | wc -l)" -ge 30 ] && break
  sleep 0.02
done
kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null; rc=$?
killed_at=$(wc -l < "$TMP/k.log")
if [ $rc -eq 137 ] && [ ! -f "$TMP/k.gguf" ]; then
  (run_train "$TMP/k.gguf" "$TMP/k.log" "$TMP/k.ckpt") 2>"$TMP/err.log"
  if cmp -s "$TMP/u.gguf" "$TMP/k.gguf" &&
     diff <(cut -d, -f1-5 "$TMP/u.log") <(cut -d, -f1-5 "$TMP/k.log") >/dev/null; then
    ok "killed at step $killed_at of $(wc -l < "$TMP/u.log"), resumed: same adapter bytes and same loss/lr/grad-norm log"
  else
    notok "resume after kill at step $killed_at differs"; diff <(cut -d, -f1-5 "$TMP/u.log") <(cut -d, -f1-5 "$TMP/k.log") | head -5 | sed 's/^/# /'
  fi
else
  skip "resume: the run finished before it could be killed (rc $rc)"
fi
# a different seed must not resume from that checkpoint
if "$BIN" train -m $STORIES --data "$TMP/mem.jsonl" --out "$TMP/x.gguf" --epochs 40 --seed 10 -t 1 -q \
     --checkpoint "$TMP/u.ckpt" 2>"$TMP/err.log"; then notok "checkpoint of another run accepted"
elif grep -q "different run" "$TMP/err.log"; then ok "a checkpoint of another run is refused: $(head -c 120 "$TMP/err.log")"
else notok "checkpoint mismatch message"; sed 's/^/# /' "$TMP/err.log"; fi
# same seed, same result; other thread count, same result
"$BIN" train -m $STORIES --data "$TMP/mem.jsonl" --out "$TMP/s1.gguf" --epochs 5 --dropout 0.1 --seed 3 -t 1 -q 2>/dev/null
"$BIN" train -m $STORIES --data "$TMP/mem.jsonl" --out "$TMP/s2.gguf" --epochs 5 --dropout 0.1 --seed 3 -t 2 -q 2>/dev/null
if cmp -s "$TMP/s1.gguf" "$TMP/s2.gguf"; then ok "same seed on 1 and 2 threads: identical adapters"; else notok "seeded runs differ"; fi

# gradient accumulation: 2 micro-batches of 2 make the same step as one batch of 4 (same examples)
"$BIN" train -m $STORIES --data "$TMP/mem.jsonl" --out "$TMP/g1.gguf" --epochs 2 -b 4 --seed 2 -t 1 -q --log "$TMP/g1.log" 2>/dev/null
"$BIN" train -m $STORIES --data "$TMP/mem.jsonl" --out "$TMP/g2.gguf" --epochs 2 -b 2 --grad-accum 2 --seed 2 -t 1 -q --log "$TMP/g2.log" 2>/dev/null
if out=$(paste -d' ' <(sed 's/.*"loss":\([0-9.]*\),.*"grad_norm":\([0-9.]*\),.*/\1 \2/' "$TMP/g1.log") \
                     <(sed 's/.*"loss":\([0-9.]*\),.*"grad_norm":\([0-9.]*\),.*/\1 \2/' "$TMP/g2.log") |
         awk '{ d = $1 - $3; e = $2 - $4; if (d < 0) d = -d; if (e < 0) e = -e; if (d > m) m = d; if (e > m) m = e }
              END { printf "max |diff| of loss and grad norm over %d steps: %.2g", NR, m; exit !(NR == 2 && m < 1e-4) }'); then
  ok "batch 4 == batch 2 x grad-accum 2: $out"
else notok "gradient accumulation: ${out:-}"; fi
# packing groups examples differently but trains the same function: the loss still falls
if "$BIN" train -m $STORIES --data "$TMP/mem.jsonl" --out "$TMP/p.gguf" --epochs 30 --lr 1e-2 --pack -b 1 --max-len 40 \
     --seed 1 -t 1 -q --log "$TMP/p.log" 2>"$TMP/err.log" && awk -F'"loss":' 'END { split($2, a, ","); exit !(a[1] < 0.7) }' "$TMP/p.log"; then
  ok "packing (2 examples per micro-batch of 40 tokens): loss $(sed -n '1s/.*"loss":\([0-9.]*\).*/\1/p' "$TMP/p.log") -> $(sed -n '$s/.*"loss":\([0-9.]*\).*/\1/p' "$TMP/p.log")"
else notok "packing"; sed 's/^/# /' "$TMP/err.log"; fi
# continuing from an adapter starts where it ended
if "$BIN" train -m $STORIES --data "$TMP/mem.jsonl" --out "$TMP/c.gguf" --init-adapter "$TMP/a.gguf" --epochs 1 --lr 1e-4 \
     -t 1 -q --log "$TMP/c.log" 2>"$TMP/err.log" && awk -F'"loss":' '{ split($2, a, ","); exit !(a[1] < 0.45) }' "$TMP/c.log"; then
  ok "--init-adapter continues from the trained adapter (first loss $(sed -n '1s/.*"loss":\([0-9.]*\).*/\1/p' "$TMP/c.log"))"
else notok "--init-adapter"; sed 's/^/# /' "$TMP/err.log"; fi
# full fine-tuning writes a whole model (base metadata kept) that has learned the completions
if "$BIN" train -m $STORIES --data "$TMP/mem.jsonl" --out "$TMP/full.gguf" --method full --epochs 30 --lr 1e-3 -t 1 -q \
     2>"$TMP/err.log" && out=$("$DRV" eval "$TMP/full.gguf" "$TMP/mem.jsonl" default 2>&1) &&
   awk '{ exit !($6 < 0.05) }' <<<"$out" && [[ "$("$BIN" generate -m "$TMP/full.gguf" -p "Lily went" -n 10 -t 1 2>/dev/null)" == " to the moon with her mom."* ]]; then
  ok "full fine-tuning on stories260K: $out; greedy 'Lily went' -> ' to the moon with her mom.'"
else notok "full fine-tuning: ${out:-}"; sed 's/^/# /' "$TMP/err.log"; fi
if "$BIN" train -m "$TMP/m_q.gguf" --data "$TMP/mem.jsonl" --out "$TMP/x.gguf" --method full -q 2>"$TMP/err.log" ||
   ! grep -q "full fine-tuning needs an F32, F16 or BF16 base" "$TMP/err.log"; then notok "full FT on a quantised base refused"
else ok "full fine-tuning on a Q8_0 base is refused with a hint to use LoRA"; fi

# ---- 5. PEFT export ----
if "$BIN" export-peft --lora "$TMP/a.gguf" -m $STORIES --out "$TMP/peft" 2>"$TMP/err.log" &&
   out=$("$PY" - "$TMP/a.gguf" "$TMP/peft" <<'EOF'
import json, struct, sys
import numpy as np
sys.path.insert(0, "tests/ref"); import gguf
g = gguf.read(sys.argv[1]); d = sys.argv[2]
cfg = json.load(open(d + "/adapter_config.json"))
assert cfg["peft_type"] == "LORA" and cfg["r"] == 16 and cfg["lora_alpha"] == 16, cfg
assert sorted(cfg["target_modules"]) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
raw = open(d + "/adapter_model.safetensors", "rb").read()
n, = struct.unpack_from("<Q", raw, 0); hdr = json.loads(raw[8:8 + n]); buf = raw[8 + n:]
assert hdr.pop("__metadata__") == {"format": "pt"}
assert n % 8 == 0
def t(name):
    h = hdr[name]; b, e = h["data_offsets"]
    assert h["dtype"] == "F32"
    return np.frombuffer(buf[b:e], dtype="<f4").reshape(h["shape"])
H, Hkv, D = 8, 4, 8  # stories260K
def permute(w, nh):  # llama.cpp's converter, HF -> GGUF (REFERENCE 1.7)
    return w.reshape(nh, 2, w.shape[0] // nh // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
checked = 0
for l in range(5):
    for gn, hf, nh in (("attn_q", "self_attn.q_proj", H), ("attn_k", "self_attn.k_proj", Hkv), ("attn_v", "self_attn.v_proj", 0),
                       ("ffn_down", "mlp.down_proj", 0)):
        ga = gguf.dequantize(g.tensors["blk.%d.%s.weight.lora_a" % (l, gn)])
        gb = gguf.dequantize(g.tensors["blk.%d.%s.weight.lora_b" % (l, gn)])
        pa = t("base_model.model.model.layers.%d.%s.lora_A.weight" % (l, hf))
        pb = t("base_model.model.model.layers.%d.%s.lora_B.weight" % (l, hf))
        assert np.array_equal(pa, ga), (l, gn)
        assert np.array_equal(permute(pb, nh) if nh else pb, gb), (l, gn)
        checked += 1
covered = sum(hdr[k]["data_offsets"][1] - hdr[k]["data_offsets"][0] for k in hdr)
assert covered == len(buf), "holes in the buffer"
print("%d tensors, q/k lora_B rows in HF order (llama.cpp's permute maps them back), %d pairs checked" % (len(hdr), checked))
EOF
); then ok "export-peft: $out"
else notok "export-peft: ${out:-}"; sed 's/^/# /' "$TMP/err.log"; fi

# ---- 6. data errors are reported with their line and nothing trains ----
printf '%s\n' '{"prompt":"a","completion":"b"}' '' '{"messages":[{"role":"user","content":"hi"}]}' > "$TMP/bad1.jsonl"
printf '%s\n' '{"prompt":"a","completion":"b"}' '{"prompt": "x", "completion": 3' > "$TMP/bad2.jsonl"
printf '%s\n' '{"conversations":[{"from":"alien","value":"hi"}]}' > "$TMP/bad3.jsonl"
for f in bad1:3:assistant bad2:2:malformed bad3:1:unknown; do
  IFS=: read -r file line word <<<"$f"
  rm -f "$TMP/o.gguf"
  if "$BIN" train -m $STORIES --data "$TMP/$file.jsonl" --out "$TMP/o.gguf" -q 2>"$TMP/err.log"; then
    notok "$file accepted"
  elif grep -q "$file.jsonl:$line: .*$word" "$TMP/err.log" && [ ! -f "$TMP/o.gguf" ]; then
    ok "data error reported: $(head -c 150 "$TMP/err.log" | sed "s|$TMP/||")"
  else notok "data error for $file"; sed 's/^/# /' "$TMP/err.log"; fi
done
# an adapter for another architecture / a model given as an adapter are refused
if "$BIN" merge -m $STORIES --lora $STORIES --out "$TMP/o.gguf" 2>"$TMP/err.log"; then notok "a model accepted as adapter"
elif grep -q "general.type" "$TMP/err.log"; then ok "a model given as an adapter is refused: $(head -c 120 "$TMP/err.log")"
else notok "model-as-adapter message"; sed 's/^/# /' "$TMP/err.log"; fi

echo "1..$n"
