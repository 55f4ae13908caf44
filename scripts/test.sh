#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite (CTest). Labels: unit, ref (against independent
# implementations), e2e; `slow` tests are skipped here — run them with: (cd build && ctest -L slow)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
cd build
ctest --output-on-failure -LE slow -j"$(nproc)" "$@"
