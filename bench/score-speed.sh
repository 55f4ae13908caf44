#!/usr/bin/env bash
# Bits-per-byte scoring speed: `distill eval` beside llama.cpp (node-llama-cpp) evaluating the same
# F32 GGUF over the same token windows with the same threads, at 1 thread and at nproc threads.
#   bash bench/score-speed.sh [MODEL] [TEXT]
# MODEL: an HF model directory or a .gguf (default: a model of the demo teacher's shape — hidden
# 256, 4 layers, 8 heads, 4 kv heads, intermediate 688, a 4096-token BPE tokenizer trained on Persuasion
# — made once with `distill pretrain --steps 1` in build/score-speed/; speed does not depend on
# the weights). TEXT: default the first ~100 kB of Persuasion (janeaustenr, through Rscript).
# Windows: --seq-len 128 --stride 128, --batch-size $BATCH (default 8). Needs build/distill and
# node-llama-cpp (scripts/setup.sh --tests; or DISTILL_NODE_DIR pointing at a tests/node with it).
# Prints each side's scored tokens/s, what it did, the CPU, the threads and the ratio distill/llama.cpp.
set -euo pipefail
cd "$(dirname "$0")/.."
context=128
stride=128
batch=${BATCH:-8}
export DISTILL_NODE_DIR=${DISTILL_NODE_DIR:-$PWD/tests/node}
distill=${DISTILL:-build/distill}  # DISTILL=path/to/distill compares another build
cache=build/score-speed
mkdir -p "$cache"
work=$(mktemp -d "${TMPDIR:-/tmp}/distill-score-speed.XXXXXX")
trap 'rm -rf "$work"' EXIT

text=${2:-}
if [ -z "$text" ]; then
  text=$cache/persuasion-100k.txt
  if [ ! -s "$text" ]; then
    Rscript -e "suppressMessages(library(janeaustenr)); con <- file('$cache/persuasion.txt.tmp', 'w', encoding='UTF-8'); writeLines(enc2utf8(persuasion), con); close(con)"
    mv "$cache/persuasion.txt.tmp" "$cache/persuasion.txt"
    # cut at the first line break after 100000 bytes
    python3 -c "import sys; t = open(sys.argv[1], 'rb').read(); i = t.find(b'\n', 100000); open(sys.argv[2], 'wb').write(t[:i + 1] if i >= 0 else t)" \
      "$cache/persuasion.txt" "$text.tmp"
    mv "$text.tmp" "$text"
  fi
fi
# the default model's tokenizer learns from all of Persuasion (100 kB is too little for 4096 tokens)
tok_text=$cache/persuasion.txt
[ -s "$tok_text" ] || tok_text=$text

model=${1:-}
if [ -z "$model" ]; then
  model=$cache/model/model
  if [ ! -s "$model/config.json" ]; then
    $distill --quiet train-tokenizer --text "$tok_text" --vocab-size 4096 -o "$cache/tokenizer.json" >/dev/null
    $distill --quiet prepare --tokenizer "$cache/tokenizer.json" --text "$tok_text" -o "$cache/shard" >/dev/null
    cat > "$cache/config.json" <<'EOF'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256, "num_hidden_layers": 4,
 "num_attention_heads": 8, "num_key_value_heads": 4, "intermediate_size": 688,
 "max_position_embeddings": 512, "tie_word_embeddings": true}
EOF
    rm -rf "$cache/model"
    $distill --quiet pretrain --config "$cache/config.json" --tokenizer "$cache/tokenizer.json" \
      --data "$cache/shard" --run-dir "$cache/model" --steps 1 --batch-size 4 --seq-len 128 >/dev/null
  fi
fi

gguf=$work/model.gguf
$distill --quiet export -m "$model" --format gguf --type f32 -o "$gguf" >/dev/null
$distill tokenize --tokenizer "$gguf" < "$text" > "$work/ids.json"

nproc=$(nproc)
. bench/cpu.sh
echo "CPU: $(cpu_line)"
echo "model: $model, F32 GGUF ($(du -h "$gguf" | cut -f1)); text: $text ($(wc -c < "$text") bytes)"
echo "windows: $context tokens, stride $stride (each window scores up to $(( context - 1 )) new targets)"
echo "distill:   eval --model MODEL.gguf --seq-len $context --stride $stride --batch-size $batch (F32 weights, $batch windows a forward); its JSON's tokens / seconds (tokenizing the text included)"
echo "llama.cpp: node-llama-cpp $(node -p "require('$DISTILL_NODE_DIR/node_modules/node-llama-cpp/package.json').version"), CPU build, one context of $context tokens, batch $context (one window a batch), F32 KV cache, flash attention on; only evaluation timed"
echo "  logits: every scored position's logits computed and a greedy token sampled from each (scoring's work, plus a native sampling call a row)"
echo "  eval:   windows evaluated, only the last position's logits (less work than scoring: llama.cpp's upper bound)"

results=$work/results.jsonl
thread_counts=1
[ "$nproc" = 1 ] || thread_counts="1 $nproc"
for threads in $thread_counts; do
  $distill --quiet --threads "$threads" eval --model "$gguf" --text "$text" --seq-len $context --stride $stride \
    --batch-size "$batch" --samples 0 > "$work/eval.json"
  python3 -c "import json, sys; j = json.load(open(sys.argv[1])); print(json.dumps({'side': 'distill', 'threads': int(sys.argv[2]), 'scored_tokens': j['tokens'], 'seconds': j['seconds'], 'bits_per_byte': j['bits_per_byte'], 'tokens_per_s': j['tokens'] / j['seconds']}))" \
    "$work/eval.json" "$threads" >> "$results"
  for mode in logits eval; do
    node bench/score-llama.mjs "$gguf" "$work/ids.json" $context $stride "$threads" $mode >> "$results"
  done
done

python3 - "$results" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'threads':>7} | {'distill tok/s':>13} | {'llama.cpp logits tok/s':>22} {'ratio':>6} | {'llama.cpp eval tok/s':>20} {'ratio':>6}")
for t in sorted({r["threads"] for r in rows}):
    d = next(r for r in rows if r.get("side") == "distill" and r["threads"] == t)
    lg = next(r for r in rows if r.get("mode") == "logits" and r["threads"] == t)
    ev = next(r for r in rows if r.get("mode") == "eval" and r["threads"] == t)
    for r in (lg, ev):
            # without a BOS, distill's count also has the first token, charged log V without a forward
        if r["scored_tokens"] + (0 if r["bos"] else 1) != d["scored_tokens"]:
            sys.exit(f"llama.cpp scored {r['scored_tokens']} tokens, distill {d['scored_tokens']}: not the same windows")
    dt = lg["scored_tokens"] / d["seconds"]  # the same numerator on both sides: targets run through a forward
    print(f"{t:>7} | {dt:>13.0f} | {lg['tokens_per_s']:>22.0f} {dt / lg['tokens_per_s']:>6.2f} | "
          f"{ev['tokens_per_s']:>20.0f} {dt / ev['tokens_per_s']:>6.2f}")
print(f"scored tokens per run: {rows[1]['scored_tokens']}; distill bits per byte {rows[0]['bits_per_byte']:.4f}; "
      "ratio = distill tokens/s / llama.cpp tokens/s")
EOF
