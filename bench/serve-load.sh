#!/usr/bin/env bash
# Load on `distill serve` beside llama.cpp (node-llama-cpp, one context with one sequence per
# client) generating with the same GGUF, at 1, 4, 16 and 64 concurrent clients.
#   bash bench/serve-load.sh [MODEL] [SECONDS] [MAX_TOKENS]
# MODEL: an HF model directory (default: the demo's teacher, runs/demo/teacher/model); it is
# exported once to F32 GGUF, and both servers run that file. Needs the build (build/distill) and
# scripts/setup.sh --tests (node-llama-cpp). Prints a table and the ratios; states the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-runs/demo/teacher/model}
seconds=${2:-20}
max_tokens=${3:-32}
threads=$(nproc)
work=$(mktemp -d "${TMPDIR:-/tmp}/distill-serve-load.XXXXXX")
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT

gguf=$work/model.gguf
build/distill --quiet export -m "$model" --format gguf --type f32 -o "$gguf" >/dev/null
. bench/cpu.sh
echo "CPU: $(cpu_line), $threads threads"
echo "model: $model (F32 GGUF), $seconds s per row, max_tokens $max_tokens, greedy"

export DISTILL_NODE_DIR=$PWD/tests/node
results=$work/results.jsonl
for clients in 1 4 16 64; do
  parallel=$(( clients < 16 ? clients : 16 ))
  build/distill --threads "$threads" serve -m "$gguf" --port 0 --parallel "$parallel" --alias m \
    --http-threads $(( clients + 16 )) > "$work/serve.log" 2>&1 &
  server=$!
  for _ in $(seq 1 200); do grep -q "ready as" "$work/serve.log" && break; sleep 0.1; done
  port=$(grep -o '127.0.0.1:[0-9]*' "$work/serve.log" | head -1 | cut -d: -f2)
  node bench/serve-load.mjs distill "http://127.0.0.1:$port/v1" m "$clients" "$seconds" "$max_tokens" >> "$results"
  kill "$server"; wait "$server" 2>/dev/null || true
  node bench/serve-load.mjs llama "$gguf" "$clients" "$seconds" "$max_tokens" "$threads" >> "$results"
done

python3 - "$results" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {(r["kind"], r["clients"]): r for r in rows}
print(f"{'clients':>7} | {'distill tok/s':>13} {'req/s':>7} {'p50 s':>7} {'p99 s':>7} {'errors':>7} | "
      f"{'llama.cpp tok/s':>15} {'p50 s':>7} {'p99 s':>7} | {'ratio':>6}")
for c in (1, 4, 16, 64):
    d, l = by[("distill", c)], by[("llama.cpp", c)]
    err = sum(d["errors"].values())
    print(f"{c:>7} | {d['tokens_per_s']:>13.1f} {d['requests_per_s']:>7.2f} {d['p50_s'] or 0:>7.3f} "
          f"{d['p99_s'] or 0:>7.3f} {err:>7} | {l['tokens_per_s']:>15.1f} {l['p50_s'] or 0:>7.3f} "
          f"{l['p99_s'] or 0:>7.3f} | {d['tokens_per_s'] / max(l['tokens_per_s'], 1e-9):>6.2f}")
one = by[("distill", 1)]["tokens_per_s"]
print(f"distill scaling, 16 clients / 1 client: {by[('distill', 16)]['tokens_per_s'] / max(one, 1e-9):.2f}x")
EOF
