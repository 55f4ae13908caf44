#!/usr/bin/env bash
# Distillation across tokenizers on the demo (docs/losses.md, "Across tokenizers"): a student with
# its own 2048-token tokenizer learns from the 4096-token demo teacher's logit cache, with the
# "first" and the "exact" map, beside a cross-entropy baseline with the same tokenizer, shape,
# steps and seed. Held-out bits per byte on Persuasion (tokenizer-independent) and train times.
#   bash bench/cross-tokenizer.sh [RUN]
# RUN: a finished `distill demo` run directory (default runs/demo; made with `distill demo
# --api-prompts 0` if it has no cache yet). Needs build/distill. STEPS (default 600) as the demo.
# When RUN has the demo's API dataset (the teacher's completions with their top-20, run/api/
# dataset-*), two more students of the same shape learn from it across tokenizers
# (`train --sequences`): on the top-20 aligned on bytes (fkl, ce 0.5), and sequence-level (ce).
set -euo pipefail
cd "$(dirname "$0")/.."
distill=${DISTILL:-build/distill}
run=${1:-runs/demo}
steps=${STEPS:-600}
if [ ! -d "$run/cache" ]; then
  "$distill" demo --run-dir "$run" --api-prompts 0
fi
work=$run/xtok
mkdir -p "$work"
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) cores), OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}"

# the student's own tokenizer and the training text in its tokens
[ -s "$work/tok2048.json" ] || "$distill" train-tokenizer --text "$run/train.txt" --vocab-size 2048 -o "$work/tok2048.json"
[ -s "$work/train2048.json" ] || "$distill" prepare --text "$run/train.txt" --tokenizer "$work/tok2048.json" -o "$work/train2048"
# the demo student's shape with 2048 tokens
cat > "$work/student.json" <<JSON
{"vocab_size": 2048, "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
 "num_key_value_heads": 2, "intermediate_size": 344, "max_position_embeddings": 512,
 "tie_word_embeddings": true}
JSON
common=(--config "$work/student.json" --tokenizer "$work/tok2048.json" --data "$work/train2048"
        --steps "$steps" --batch-size 16 --seq-len 128 --lr 0.003 --warmup $((steps / 20)) -s 1)
train() {  # NAME ARGS...
  local name=$1; shift
  local t0=$SECONDS
  "$distill" train "${common[@]}" "$@" --run-dir "$work/$name" >"$work/$name.log" 2>&1
  echo "$name $((SECONDS - t0))" >>"$work/times.txt"
}
: >"$work/times.txt"; : >"$work/bpb.txt"
xt=(--cache "$run/cache" --teacher-data "$run/data/train" --teacher-tokenizer "$run/tokenizer.json"
    --loss fkl --ce-weight 0.5)
train xtok-first "${xt[@]}" --xtok-map first
train xtok-exact "${xt[@]}" --xtok-map exact
train baseline --loss ce
names="xtok-first xtok-exact baseline"
api=$(ls -d "$run"/api/dataset-* 2>/dev/null | head -1 || true)
if [ -n "$api" ]; then
  seq_train() {  # NAME ARGS...
    local name=$1; shift
    local t0=$SECONDS
    "$distill" train --sequences "$api" --config "$work/student.json" --tokenizer "$work/tok2048.json" \
      --steps "$steps" --batch-size 16 --seq-len 128 --lr 0.003 --warmup $((steps / 20)) -s 1 "$@" \
      --run-dir "$work/$name" >"$work/$name.log" 2>&1
    echo "$name $((SECONDS - t0))" >>"$work/times.txt"
  }
  seq_train api-xtok --loss fkl --ce-weight 0.5
  seq_train api-seq --loss ce
  grep -h "another tokenizer" "$work/api-xtok.log" || true
  names="$names api-xtok api-seq"
fi

heldout=$run/corpus/persuasion.txt
printf '%-12s %10s %10s\n' run bpb train_s
for name in $names; do
  "$distill" eval -m "$work/$name/model" --text "$heldout" --seq-len 128 --stride 64 -o "$work/$name.eval.json" >/dev/null 2>&1
  bpb=$(python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print(j['models'][0]['bits_per_byte'])" "$work/$name.eval.json")
  printf '%-12s %10.4f %10s\n' "$name" "$bpb" "$(awk -v n="$name" '$1==n{print $2}' "$work/times.txt")"
  echo "$name $bpb" >>"$work/bpb.txt"
done
python3 - "$work" <<'PY'
import sys
w = sys.argv[1]
b = dict(l.split() for l in open(w + "/bpb.txt"))
base = float(b["baseline"])
for n in ("xtok-first", "xtok-exact"):
    print(f"{n}: {100 * (base - float(b[n])) / base:.1f} % below the baseline's bpb")
if "api-xtok" in b:
    seq = float(b["api-seq"])
    print(f"api-xtok: {100 * (seq - float(b['api-xtok'])) / seq:.1f} % below the sequence-level API student's bpb")
PY
