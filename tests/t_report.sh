#!/usr/bin/env bash
# t_report.sh — `iteralign report` on a run of the default job (`iteralign align --demo`, cut to two
# batches and ten held-out prompts to keep the suite fast): report.md, report.html and report.json,
# their sections, the HTML self-contained (no scripts, nothing fetched), evaluations recorded by
# `align --eval` shown before/after, a snapshot-only folder, a folder without a run refused; then the
# HTML rendered by headless Chromium, whose screenshot must show the charts (their colours, in
# several separate bands of the page). Without chromium that check prints "ok N - # SKIP".
# Prints TAP lines; run from the repository root (tests/run-tests.sh does).
set -u
BIN=${BIN:-./iteralign}
PY=${PYTHON:-/usr/bin/python3}
TMP=tests/tmp/report.$$
mkdir -p "$TMP"
trap 'rm -rf "$TMP"' EXIT
cp "$BIN" "$TMP/iteralign" && BIN=$TMP/iteralign
n=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
notok() { n=$((n + 1)); echo "not ok $n - $1"; }
skip() { n=$((n + 1)); echo "ok $n - # SKIP $1"; }

RUN=$TMP/run
if ! "$BIN" align --run "$RUN" --demo -t 1 --max-batches 2 --max-heldout 10 --measure-samples 1 >"$TMP/align.log" 2>&1; then
  notok "the default job (align --demo, 2 batches)"; tail -20 "$TMP/align.log" | sed 's/^/# /'; echo "1..$n"; exit 1
fi
ok "the default job (align --demo, 2 batches)"

# evaluations as `align --eval` records them (ia_eval_store_metrics): name task/metric, phase, round
if command -v sqlite3 >/dev/null; then
  sqlite3 "$RUN/run.db" "INSERT OR REPLACE INTO metrics(name, phase, batch, value, n) VALUES
    ('truthfulqa_mc2/acc', 'before', 0, 0.31, 817), ('truthfulqa_mc2/acc', 'after', 1, 0.33, 817),
    ('truthfulqa_mc2/acc', 'after', 2, 0.36, 817), ('hhh/acc', 'before', 0, 0.5, 16), ('hhh/acc', 'after', 2, 0.625, 16)" &&
    ok "evaluation metrics added to the run" || notok "evaluation metrics added to the run"
else
  skip "sqlite3 not installed: no evaluation metrics added"
fi

OUT=$TMP/out
if "$BIN" report --run "$RUN" --out "$OUT" --json >"$TMP/stdout" 2>"$TMP/err" && [ -s "$OUT/report.md" ] && [ -s "$OUT/report.html" ]; then
  ok "report writes report.md and report.html"
else
  notok "report writes report.md and report.html"; sed 's/^/# /' "$TMP/err"; echo "1..$n"; exit 1
fi

miss=""
for h in "## Flagged answers per batch" "## Constitutions, in the order found" "## Training loss per round" \
         "## Evaluations before and after" "## Answers before and after" "report-charts/flag_rate.svg" \
         "report-charts/loss.svg" "violation\\_rate" "truthfulqa\\_mc2/acc | after round 2 | 0.36"; do
  grep -qF -- "$h" "$OUT/report.md" || miss="$miss [$h]"
done
[ -z "$miss" ] && ok "report.md sections and evaluation rows" || notok "report.md lacks:$miss"

nsvg=$(ls "$OUT"/report-charts/*.svg 2>/dev/null | wc -l)
bad_svg=0
for f in "$OUT"/report-charts/*.svg; do "$PY" -c 'import sys, xml.dom.minidom as m; m.parse(sys.argv[1])' "$f" 2>/dev/null || bad_svg=1; done
[ "$nsvg" -ge 5 ] && [ $bad_svg = 0 ] && ok "$nsvg chart files, well-formed SVG" || notok "chart files ($nsvg, bad $bad_svg)"

# self-contained: inline SVG, no scripts, no external resources (the SVG namespace URI is not fetched)
ext=$(grep -oE '(src|href)=|<script|<link|@import|url\(|https?://[^"]*' "$OUT/report.html" | grep -v '^http://www.w3.org/2000/svg$' | sort -u)
nin=$(grep -o '<svg' "$OUT/report.html" | wc -l)
[ -z "$ext" ] && [ "$nin" -ge 5 ] && ok "report.html self-contained ($nin inline charts)" || notok "report.html: $nin charts, external: $ext"

if "$PY" - "$OUT/report.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
assert s["format"] == "iteralign-run-snapshot/1"
assert len(s["batches"]) == 2 and len(s["rounds"]) >= 1 and s["constitutions"], "sections"
assert all(r["losses"] for r in s["rounds"]), "per-step losses"
c = s["constitutions"][0]
assert c["sources"] and c["sources"][0]["answer"], "the answers that led to a constitution"
names = {e["name"] for e in s["evals"]}
assert {"violation_rate", "truthfulqa_mc2/acc", "hhh/acc"} <= names, names
assert s["examples"]["heldout"] and s["examples"]["revisions"], "examples"
EOF
then ok "report.json: snapshot with every section"; else notok "report.json"; fi

# a folder holding only a snapshot (no run.db) gives the same report
mkdir -p "$TMP/snap"
cp "$OUT/report.json" "$TMP/snap/snapshot.json"
if "$BIN" report --run "$TMP/snap" >/dev/null 2>"$TMP/err" && [ -s "$TMP/snap/report.html" ] &&
   diff <(sed '/^Run folder/d' "$OUT/report.md") <(sed '/^Run folder/d' "$TMP/snap/report.md") >/dev/null; then
  ok "report from snapshot.json alone"
else
  notok "report from snapshot.json alone"; sed 's/^/# /' "$TMP/err"
fi
mkdir -p "$TMP/empty"
if "$BIN" report --run "$TMP/empty" >/dev/null 2>"$TMP/err"; then notok "a folder without a run is refused"
elif grep -q "no run here" "$TMP/err"; then ok "a folder without a run is refused: $(cat "$TMP/err")"
else notok "a folder without a run: $(cat "$TMP/err")"; fi

# headless Chromium: the page opens offline and its screenshot shows the charts
CHROME=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$CHROME" ]; then
  skip "chromium not installed (apt-get install chromium): screenshot check not run"
else
  mkdir -p "$TMP/profile"
  abs=$(cd "$OUT" && pwd)/report.html
  timeout 90 "$CHROME" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$TMP/profile" \
    --screenshot="$TMP/shot.png" --window-size=1200,1500 "file://$abs" >"$TMP/chrome.log" 2>&1
  if [ ! -s "$TMP/shot.png" ]; then
    notok "chromium screenshot"; tail -5 "$TMP/chrome.log" | sed 's/^/# /'
  elif msg=$("$PY" - "$TMP/shot.png" <<'EOF'
import struct, sys, zlib
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
pos, idat, w = 8, b"", 0
while pos < len(data):
    ln, typ = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + ln]
    if typ == b"IHDR":
        w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
        assert depth == 8 and ctype in (2, 6), (depth, ctype)
        bpp = 3 if ctype == 2 else 4
    elif typ == b"IDAT":
        idat += body
    pos += 12 + ln
raw = zlib.decompress(idat)
stride = w * bpp
rows, prev, i = [], bytearray(stride), 0
for y in range(h):
    f, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
    i += 1 + stride
    for x in range(stride):
        a = line[x - bpp] if x >= bpp else 0
        b = prev[x]
        c = prev[x - bpp] if x >= bpp else 0
        if f == 1: line[x] = (line[x] + a) & 255
        elif f == 2: line[x] = (line[x] + b) & 255
        elif f == 3: line[x] = (line[x] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    rows.append(line)
    prev = line
nonwhite, colored, band = 0, 0, [0] * (h // 100 + 1)
for y, line in enumerate(rows):
    for x in range(0, stride, bpp):
        r, g, b = line[x], line[x + 1], line[x + 2]
        if r < 245 or g < 245 or b < 245:
            nonwhite += 1
        if max(r, g, b) - min(r, g, b) > 80:   # saturated: the series colours, not text or grid
            colored += 1
            band[y // 100] += 1
bands = sum(1 for v in band if v > 200)
assert nonwhite > 0.02 * w * h, "page nearly blank (%d non-white pixels)" % nonwhite
assert colored > 8000 and bands >= 4, "charts not visible (%d coloured pixels in %d bands)" % (colored, bands)
print("%dx%d, %d non-white pixels, %d in chart colours over %d bands of 100 px" % (w, h, nonwhite, colored, bands))
EOF
  ); then
    ok "chromium screenshot shows the charts: $msg"
  else
    notok "chromium screenshot: $msg"
  fi
  [ -n "${KEEP_SCREENSHOT:-}" ] && cp "$TMP/shot.png" "$KEEP_SCREENSHOT"
fi
echo "1..$n"
