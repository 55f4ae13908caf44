#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite (CTest). Labels: unit, ref (against independent
# implementations), e2e; `slow` tests are skipped here — run them with: (cd build && ctest -L slow)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
# The HF-tokenizers parity test trains on and compares the Jane Austen novels (the demo's corpus).
if [ ! -s build/austen.txt ]; then
  Rscript -e "suppressMessages(library(janeaustenr)); con <- file('build/austen.txt.tmp', 'w', encoding='UTF-8'); for (b in c('sensesensibility','prideprejudice','mansfieldpark','emma','northangerabbey','persuasion')) writeLines(enc2utf8(get(b)), con); close(con)"
  mv build/austen.txt.tmp build/austen.txt
fi
export DISTILL_TEST_CORPUS="$PWD/build/austen.txt"
cd build
ctest --output-on-failure -LE slow -j"$(nproc)" "$@"
