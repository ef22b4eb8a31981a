#!/usr/bin/env bash
# Installs every Debian package iteralign needs to build, test and benchmark (run as root, or with sudo).
set -euo pipefail
PKGS=(
  build-essential make pkg-config clang libclang-rt-14-dev   # compilers, sanitizers, libFuzzer
  libcurl4-openssl-dev      # HTTP client (teacher LLM)
  libmicrohttpd-dev         # HTTP server (iteralign serve)
  libjansson-dev            # JSON
  libsqlite3-dev sqlite3    # run store
  libpcre2-dev              # Unicode regex for BPE pre-tokenizers
  libcmocka-dev             # unit tests
  python3 python3-numpy     # float64 reference forward pass used by the tests
  python3-jinja2            # renders real chat templates as the tests' oracle
  python3-torch             # independent float64 gradient reference for the trainer tests
  chromium                  # headless screenshot of report.html in the tests
)
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# Node.js and npm (the official openai npm package talks to `iteralign serve` in the tests): machines
# often have them from elsewhere (e.g. NodeSource, whose nodejs conflicts with Debian's npm), so
# Debian's are installed only when the commands are missing.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  missing+=(nodejs npm)
fi
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
