#!/usr/bin/env bash
# Sets up, builds and runs `distill demo` (arguments are passed on, e.g. --run-dir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DDISTILL_TESTS=OFF -DDISTILL_BENCH=OFF >/dev/null
cmake --build build -j"$(nproc)" --target distill
./build/distill demo "$@"
