#!/usr/bin/env bash
# A teacher at its file's size: peak RSS and scoring tokens/s of `distill eval` beside llama.cpp
# (node-llama-cpp, bench/score-llama.mjs) on the same files, for each weight type.
#   bash bench/teacher-memory.sh [SHAPE]
# SHAPE: qwen2.5-1.5b (default) or qwen2.5-0.5b. The model has that shape and random weights
# (bench/random_model.py), a 4096-token BPE tokenizer trained on Persuasion, and is written once
# into build/teacher-memory/SHAPE/ as: F32 safetensors, BF16 safetensors (`distill export
# --format hf --type bf16`), and GGUF F32, BF16, Q8_0, Q4_K (`distill export --format gguf`).
# Each run scores the same windows of the first $BYTES bytes (default 4000) of Persuasion:
# --seq-len $CONTEXT (default 256) --stride $CONTEXT --batch-size 1, all cores. Peak RSS is
# /usr/bin/time's maximum resident set size of the whole process (loading included).
# Needs build/distill, /usr/bin/python3 with numpy (or $PYTHON), Rscript with janeaustenr and node-llama-cpp
# (scripts/setup.sh --tests). The files take about 22 GB of disk for the 1.5B shape.
set -euo pipefail
cd "$(dirname "$0")/.."
shape=${1:-qwen2.5-1.5b}
context=${CONTEXT:-256}
bytes=${BYTES:-4000}
export DISTILL_NODE_DIR=${DISTILL_NODE_DIR:-$PWD/tests/node}
distill=${DISTILL:-build/distill}
cache=build/teacher-memory/$shape
mkdir -p "$cache"
work=$(mktemp -d "${TMPDIR:-/tmp}/distill-teacher-memory.XXXXXX")
trap 'rm -rf "$work"' EXIT

persuasion=build/teacher-memory/persuasion.txt
if [ ! -s "$persuasion" ]; then
  Rscript -e "suppressMessages(library(janeaustenr)); con <- file('$persuasion.tmp', 'w', encoding='UTF-8'); writeLines(enc2utf8(persuasion), con); close(con)"
  mv "$persuasion.tmp" "$persuasion"
fi
text=$work/text.txt
python3 -c "import sys; t = open(sys.argv[1], 'rb').read(); i = t.find(b'\n', int(sys.argv[3])); open(sys.argv[2], 'wb').write(t[:i + 1])" \
  "$persuasion" "$text" "$bytes"

st32=$cache/st-f32
if [ ! -s "$st32/tokenizer.json" ]; then
  ${PYTHON:-/usr/bin/python3} bench/random_model.py "$st32" "$shape"
  $distill --quiet train-tokenizer --text "$persuasion" --vocab-size 4096 -o "$st32/tokenizer.json.tmp" >/dev/null
  mv "$st32/tokenizer.json.tmp" "$st32/tokenizer.json"
fi
[ -s "$cache/st-bf16/config.json" ] || $distill --quiet export -m "$st32" --format hf --type bf16 -o "$cache/st-bf16" >/dev/null
for type in f32 bf16 q8_0 q4_k; do
  [ -s "$cache/$type.gguf" ] || $distill --quiet export -m "$st32" --format gguf --type $type -o "$cache/$type.gguf" >/dev/null
done
$distill tokenize --tokenizer "$st32" < "$text" > "$work/ids.json"

. bench/cpu.sh
echo "CPU: $(cpu_line); $(free -g | awk '/Mem:/ {print $2}') GiB"
echo "model: $shape shape, random weights; text: $(wc -c < "$text") bytes of Persuasion; windows of $context, stride $context"
echo "distill:   eval --seq-len $context --stride $context --batch-size 1 (weights kept in the file's type, mapped)"
echo "llama.cpp: node-llama-cpp $(node -p "require('$DISTILL_NODE_DIR/node_modules/node-llama-cpp/package.json').version"), one context of $context, every scored row's logits (score-llama.mjs logits)"

results=$work/results.jsonl
measure() {  # side label file command...
  local side=$1 label=$2 file=$3
  shift 3
  /usr/bin/time -f '%M' -o "$work/rss" "$@" > "$work/out.json"
  python3 - "$side" "$label" "$file" "$work/out.json" "$work/rss" >> "$results" <<'EOF'
import json, os, sys
side, label, path, out, rss = sys.argv[1:6]
j = json.loads(open(out).read().strip().splitlines()[-1])
size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors")) \
    if os.path.isdir(path) else os.path.getsize(path)
if side == "distill":
    tokens, seconds = j["tokens"], j["seconds"]
else:
    tokens, seconds = j["scored_tokens"] + (0 if j["bos"] else 1), j["seconds"]
print(json.dumps({"side": side, "label": label, "file_bytes": size, "rss_bytes": int(open(rss).read().split()[-1]) * 1024,
                  "tokens": tokens, "seconds": seconds}))
EOF
}
for label in st-f32 st-bf16; do
  measure distill "$label" "$cache/$label" $distill --quiet eval --model "$cache/$label" --text "$text" \
    --seq-len $context --stride $context --batch-size 1 --samples 0
done
for type in f32 bf16 q8_0 q4_k; do
  measure distill "gguf-$type" "$cache/$type.gguf" $distill --quiet eval --model "$cache/$type.gguf" --text "$text" \
    --seq-len $context --stride $context --batch-size 1 --samples 0
  measure llama.cpp "gguf-$type" "$cache/$type.gguf" node bench/score-llama.mjs "$cache/$type.gguf" "$work/ids.json" \
    $context $context "$(nproc)" logits
done

python3 - "$results" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
gb = lambda b: b / 2**30
print(f"{'file':>8} {'size GiB':>8} | {'distill RSS':>11} {'/ file':>6} {'tok/s':>7} | {'llama.cpp RSS':>13} {'/ file':>6} {'tok/s':>7} | {'tok/s ratio':>11}")
for d in (r for r in rows if r["side"] == "distill"):
    l = next((r for r in rows if r["side"] == "llama.cpp" and r["label"] == d["label"]), None)
    dt = d["tokens"] / d["seconds"]
    line = f"{d['label']:>8} {gb(d['file_bytes']):>8.2f} | {gb(d['rss_bytes']):>11.2f} {d['rss_bytes'] / d['file_bytes']:>6.2f} {dt:>7.1f} | "
    if l:
        if l["tokens"] != d["tokens"]:
            sys.exit(f"{d['label']}: llama.cpp scored {l['tokens']} tokens, distill {d['tokens']}: not the same windows")
        lt = l["tokens"] / l["seconds"]
        line += f"{gb(l['rss_bytes']):>13.2f} {l['rss_bytes'] / l['file_bytes']:>6.2f} {lt:>7.1f} | {dt / lt:>11.2f}"
    else:
        line += f"{'(safetensors: no llama.cpp)':>29} |"
    print(line)
print("RSS: peak resident set of the process, in GiB; tok/s: scored tokens / evaluation seconds; ratio: distill / llama.cpp")
EOF
