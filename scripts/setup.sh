#!/usr/bin/env bash
# Installs what distill needs on Debian 12 (run as root, or with sudo available).
#   scripts/setup.sh          build and run dependencies
#   scripts/setup.sh --tests  also the test references: GoogleTest, PyTorch, xxhash and scipy in
#                             Python, Chromium (report.html in a real browser), Node.js and the
#                             pinned npm packages in tests/node (HF tokenizers, puppeteer-core, ...)
#   scripts/setup.sh --fuzz   also clang-14 and its libFuzzer/sanitizer runtimes (scripts/fuzz.sh)
# Packages already installed are not touched, so a second run takes a second.
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
[ "${1:-}" = "--tests" ] && with_tests=1
with_fuzz=0
[ "${1:-}" = "--fuzz" ] && with_fuzz=1

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"

pkgs=(build-essential cmake ninja-build pkg-config ccache
      libtorch-dev libgloo-dev libopenblas0-openmp libblas-dev nlohmann-json3-dev libcli11-dev
      libpcre2-dev libxxhash-dev libzstd-dev libutf8proc-dev liblzma-dev
      libcpp-httplib-dev libjs-chart.js
      r-base-core r-cran-janeaustenr)
if [ "$with_tests" = 1 ]; then
  pkgs+=(libgtest-dev python3-torch python3-numpy python3-jinja2 python3-xxhash python3-scipy xz-utils chromium)
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || pkgs+=(nodejs npm)
fi
# libclang-rt-14-dev holds the libFuzzer runtime that -fsanitize=fuzzer links.
[ "$with_fuzz" = 1 ] && pkgs+=(clang-14 libclang-rt-14-dev)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "$with_tests" = 1 ]; then
  # Test-only tools from npm, pinned by tests/node/package-lock.json; never part of the product.
  stamp=tests/node/node_modules/.distill-lock-hash
  want=$(sha256sum tests/node/package-lock.json | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup: npm ci in tests/node"
    (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" > "$stamp"
  fi
fi
