#!/usr/bin/env bash
# t_quants_py.sh — checks the independent numpy dequantisers (tests/ref/quants.py) against the C ones:
# `test_tensor --dump` writes quantised blocks of random data (and random bytes, and every f16/bf16
# bit pattern) with the C dequantisation; numpy must give the same bits (NaN only where C has NaN).
# quants.py is also checked on hand-built blocks whose values are worked out in the comments.
set -u
BUILD=${BUILD:-build}
DIR=tests/tmp/quants_py.$$
mkdir -p "$DIR"
trap 'rm -rf "$DIR"' EXIT
T=$BUILD/tests/test_tensor
if [ ! -x "$T" ]; then  # not built by make: build the dump helper from the few sources it needs
  T=$DIR/test_tensor
  if ! ${CC:-cc} -std=c11 -D_GNU_SOURCE -O1 -fopenmp -Iinclude -Isrc -Itests tests/test_tensor.c \
       src/tensor/*.c src/util/*.c -lcmocka -lm -o "$T" 2>"$DIR/cc.log"; then
    cat "$DIR/cc.log"; echo "not ok 1 - build the dump helper"; exit 1
  fi
fi
if ! "$T" --dump "$DIR" >/dev/null; then echo "not ok 1 - $T --dump"; exit 1; fi
/usr/bin/python3 - "$DIR" <<'PY'
import os, sys
import numpy as np
sys.path.insert(0, "tests/ref")
import quants

d = sys.argv[1]
n_test = 0
failed = 0

def report(ok, name):
    global n_test, failed
    n_test += 1
    failed += not ok
    print("%sok %d - %s" % ("" if ok else "not ", n_test, name))

for line in open(os.path.join(d, "manifest.txt")):
    tid, name, n = line.split()
    tid, n = int(tid), int(n)
    raw = open(os.path.join(d, name + ".q"), "rb").read()
    c = np.fromfile(os.path.join(d, name + ".f32"), dtype="<f4")
    try:
        py = quants.dequantize_row(tid, raw, n).astype(np.float32)
    except Exception as e:  # noqa: BLE001
        report(False, "%s: numpy dequantiser raised %r" % (name, e))
        continue
    cn, pn = np.isnan(c), np.isnan(py)
    same = (c.view(np.uint32) == py.view(np.uint32)) | (cn & pn)
    bad = np.flatnonzero(~same)
    if len(bad):
        i = bad[0]
        print("# %s: %d of %d differ; first at %d: C %r numpy %r" % (name, len(bad), n, i, c[i], py[i]))
    report(len(bad) == 0 and len(c) == n, "%s: numpy dequantisation equals C bit for bit (%d elements)" % (name, n))

# hand-built blocks, independent of C
b = bytes([0x00, 0x38]) + bytes((j | ((15 - j) << 4)) for j in range(16))  # Q4_0, d = 0.5
y = quants.dequantize_row(quants.Q4_0, b)
report(y[0] == -4.0 and y[15] == 3.5 and y[16] == 3.5 and y[31] == -4.0, "Q4_0 hand block")
sc = bytes([0x41, 0x82, 0xC3, 0xC4, 0x45, 0x86, 0xC7, 0x48, 0x41, 0x81, 0xD2, 0x0F])  # sc {1,2,3,4,17,33,50,63}, m {5,6,7,8,20,40,61,16}
b = bytes([0x00, 0x3C, 0x00, 0x38]) + sc + bytes(((i % 16) | ((15 - i % 16) << 4)) for i in range(128))
y = quants.dequantize_row(quants.Q4_K, b)
report(list(y[[0, 40, 130, 170, 200, 255]]) == [-2.5, 11.0, 24.0, 145.0, 369.5, -8.0], "Q4_K hand block (scale unpacking for j >= 4)")
b = bytes(range(128)) + bytes([0xE4]) * 64 + bytes((i - 8) & 0xFF for i in range(16)) + bytes([0x00, 0x40])
y = quants.dequantize_row(quants.Q6_K, b)
report(list(y[[0, 33, 81, 127, 255, 128]]) == [512.0, 180.0, -6.0, -38.0, 322.0, 0.0], "Q6_K hand block (d last)")
b = bytes([0x80, 0x3F, 0x40, 0xC0])
report(list(quants.dequantize_row(quants.BF16, b)) == [1.0, -3.0], "BF16 hand values")
sys.exit(1 if failed else 0)
PY
