#!/usr/bin/env bash
# On-policy distillation (GKD) on the demo (docs/losses.md, "On-policy"): the demo's KD student
# setting (fkl, tau 1, ce 0.5, the top-32 cache for the data batches) with --on-policy 0, 0.5 and 1
# (the student's own 32-token continuations of 96-token prompts cut from the data, scored by the
# live demo teacher), at equal steps; held-out bpb on Persuasion, train time, and each run's
# held-out curve read at the wall time the lambda = 0 run took (equal wall time).
#   bash bench/on-policy.sh [RUN]      RUN: a finished `distill demo` run (default runs/demo)
# STEPS (default 600), LAMBDAS (default "0 0.5 1").
set -euo pipefail
cd "$(dirname "$0")/.."
distill=${DISTILL:-build/distill}
run=${1:-runs/demo}
steps=${STEPS:-600}
lambdas=${LAMBDAS:-0 0.5 1}
[ -d "$run/cache" ] || "$distill" demo --run-dir "$run" --api-prompts 0
work=$run/on-policy
mkdir -p "$work"
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) cores), OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}"
cat > "$work/student.json" <<JSON
{"vocab_size": $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['vocab_size'])" "$run/teacher/model/config.json"),
 "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
 "intermediate_size": 344, "max_position_embeddings": 512, "tie_word_embeddings": true}
JSON
for l in $lambdas; do
  "$distill" train --config "$work/student.json" --tokenizer "$run/tokenizer.json" --data "$run/data/train" \
    --cache "$run/cache" --teacher "$run/teacher/model" --on-policy "$l" --max-new-tokens 32 \
    --loss fkl --ce-weight 0.5 --steps "$steps" --batch-size 16 --seq-len 128 --lr 0.003 \
    --warmup $((steps / 20)) -s 1 --eval-text "$run/heldout-curve.txt" --eval-every $((steps / 20)) \
    --run-dir "$work/lambda-$l" >"$work/lambda-$l.log" 2>&1
  "$distill" eval -m "$work/lambda-$l/model" --text "$run/corpus/persuasion.txt" --seq-len 128 --stride 64 \
    -o "$work/lambda-$l.eval.json" >/dev/null 2>&1
done
python3 - "$work" $lambdas <<'PY'
import json, sys
w, ls = sys.argv[1], sys.argv[2:]
def curve(l):
    rows = [json.loads(x) for x in open(f"{w}/lambda-{l}/metrics.jsonl")]
    return [(r["seconds"], r["step"], r["heldout_bpb"]) for r in rows if "heldout_bpb" in r], rows[-1]["seconds"]
budget = curve(ls[0])[1]
print(f"{'lambda':>6} {'bpb':>8} {'train_s':>8} {'curve bpb at ' + format(budget, '.0f') + ' s':>22}")
for l in ls:
    bpb = json.load(open(f"{w}/lambda-{l}.eval.json"))["models"][0]["bits_per_byte"]
    pts, secs = curve(l)
    within = [p for p in pts if p[0] <= budget + 1e-6]
    at = f"{within[-1][2]:.4f} (step {within[-1][1]})" if within else "-"
    print(f"{l:>6} {bpb:8.4f} {secs:8.0f} {at:>22}")
PY
