#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/, clang-14, ASan + UBSan) and runs them for a time limit.
#   scripts/fuzz.sh                  every target, 60 s each
#   scripts/fuzz.sh TARGET [SECONDS] one target (fuzz-safetensors, fuzz-tokenizer, ...), or "all"
# The committed seeds (fuzz/corpus/<target>/) are read, not written: new inputs go to
# build-fuzz/corpus/<target>/, findings (crash-*, leak-*, timeout-*, oom-*) to
# build-fuzz/findings/<target>/, the log to build-fuzz/logs/<target>.log. Replay a finding with
# `build-fuzz/<target> FILE`. Exits non-zero if any target found something.
set -euo pipefail
cd "$(dirname "$0")/.."

target=${1:-all}
seconds=${2:-60}

bash scripts/setup.sh --fuzz
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD}
cmake -S fuzz -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++-14 >/dev/null
cmake --build build-fuzz

if [ "$target" = all ]; then
  targets=(fuzz-safetensors fuzz-tokenizer fuzz-tokenizer-encode fuzz-shards fuzz-logit-cache fuzz-gguf fuzz-openai)
else
  targets=("$target")
fi

found=0
printf '%-24s %8s %12s %10s %8s  %s\n' target seconds executions exec/s corpus findings
for t in "${targets[@]}"; do
  seeds=fuzz/corpus/${t#fuzz-}
  work=build-fuzz/corpus/${t#fuzz-}
  findings=build-fuzz/findings/$t
  log=build-fuzz/logs/$t.log
  mkdir -p "$work" "$findings" "$(dirname "$log")"
  dict=()
  [ -f "fuzz/${t#fuzz-}.dict" ] && dict=(-dict="fuzz/${t#fuzz-}.dict")
  # -rss_limit_mb: an input that makes a reader allocate more than 2 GB is a finding too.
  set +e
  "build-fuzz/$t" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$findings/" "${dict[@]}" "$work" "$seeds" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  nfind=$(find "$findings" -type f | wc -l)
  printf '%-24s %8s %12s %10s %8s  %s\n' "$t" "$seconds" "${execs:-?}" "${rate:-?}" \
    "$(find "$work" -type f | wc -l)" "$nfind"
  if [ "$rc" -ne 0 ] || [ "$nfind" -ne 0 ]; then
    found=1
    echo "  $t exited $rc; see $log:"
    grep -m5 -E 'ERROR|SUMMARY|fuzz-[a-z-]+: |Test unit written' "$log" | sed 's/^/    /'
  fi
done
exit $found
