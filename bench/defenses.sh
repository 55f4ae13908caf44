#!/usr/bin/env bash
# What each API defense of `distill serve` costs the owner and what it takes from a distiller, on
# the demo (docs/guard.md). For each defense the demo teacher is served with it and
#   - scored through its own API (`distill eval --model-url`): bits per byte on the opening of the
#     held-out novel and accuracy on the built-in next-sentence task, as a user of the API sees them;
#   - distilled through it: PROMPTS passages of the training novels continued (TOKENS tokens,
#     temperature 1, the prompts scored too: --score-prompts) with the top-K log-probs it allows,
#     and a student of the demo's student shape trained on them (the demo's top-20 recipe: forward
#     KL mixed with 1/2 cross-entropy, STEPS steps), then scored on the same held-out text.
# The reference is a student trained on the same completions without log-probs (sequence-level:
# all an API that returns none gives away); the table prints how much of the log-probs' gain over
# it each defense leaves the distiller; the demo's baseline student is scored beside them.
#   bash bench/defenses.sh [RUN]     RUN: a finished `distill demo` run (default runs/demo)
# STEPS (300), PROMPTS (600), TOKENS (64), HELDOUT_BYTES (65536), ITEMS (200), AD_LAMBDAS ("0.25 1":
# the antidistillation weights tried).
set -euo pipefail
cd "$(dirname "$0")/.."
distill=$(realpath "${DISTILL:-build/distill}")
run=$(realpath "${1:-runs/demo}")
steps=${STEPS:-300}
prompts_n=${PROMPTS:-600}
tokens=${TOKENS:-64}
heldout_bytes=${HELDOUT_BYTES:-65536}
items=${ITEMS:-200}
ad_lambdas=${AD_LAMBDAS:-0.25 1}
[ -d "$run/teacher/model" ] || "$distill" demo --run-dir "$run" --api-prompts 0
work=$run/defenses
mkdir -p "$work/students"
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) cores); steps $steps, $prompts_n prompts x $tokens tokens"

# shellcheck source=bench/demo-lib.sh
source bench/demo-lib.sh

python3 - "$run" "$work" "$prompts_n" "$heldout_bytes" <<'PY'
import json, random, sys
run, work, n, hb = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
train = open(f"{run}/train.txt", encoding="utf-8").read()
r, out = random.Random(3), []
while len(out) < n:
    i = train.find("\n", r.randrange(len(train) - 800)) + 1
    j = train.rfind(" ", i, i + 200)
    if j > i + 100:
        out.append(train[i:j])
with open(f"{work}/prompts.jsonl", "w") as f:
    for p in out:
        f.write(json.dumps({"prompt": p}) + "\n")
held = open(f"{run}/corpus/persuasion.txt", "rb").read()[:hb].decode("utf-8", "ignore")
open(f"{work}/heldout.txt", "w", encoding="utf-8").write(held)
PY
student_config "$work/student.json"
bpb_of() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['models'][0]['bits_per_byte'])" "$1"; }
train_student() {  # train_student DATASET NAME LOSS...
  local st=$work/students/$2
  "$distill" --quiet train --sequences "$1" --config "$work/student.json" --tokenizer "$run/tokenizer.json" \
    "${@:3}" --steps "$steps" --batch-size 16 --seq-len 128 --lr 0.003 --warmup $((steps / 20)) -s 1 \
    --run-dir "$st" >"$st.log" 2>&1 || { tail "$st.log"; exit 1; }
  "$distill" --quiet eval -m "$st/model" --text "$work/heldout.txt" -c 256 --stride 128 -o "$st.eval.json" >/dev/null
  bpb_of "$st.eval.json"
}

# name | serve flags | top-K the distiller asks for (0: none)
defenses=(
  "off||20"
  "top-5 cap|--max-top-logprobs 5|5"
  "top-1 cap|--max-top-logprobs 1|1"
  "1 decimal|--logprob-decimals 1|20"
  "noise 0.5|--logprob-noise 0.5 --logprob-noise-seed 7|20"
  "noise 2|--logprob-noise 2 --logprob-noise-seed 7|20"
  "watermark|--watermark-key-file $work/wm.key --wm-delta 2|20"
)
# antidistillation sampling: the demo's baseline student as the proxy, its gradient on the last
# 256 KB of the training text (not the held-out novel the table scores)
proxy=$(ls -d "$run"/students/ce-seed*/model 2>/dev/null | head -1)
if [ -n "$proxy" ]; then
  tail -c 262144 "$run/train.txt" >"$work/antidistill-data.txt"
  for l in $ad_lambdas; do
    defenses+=("antidistill $l|--antidistill-proxy $proxy --antidistill-data $work/antidistill-data.txt --antidistill-lambda $l|20")
  done
fi
[ -s "$work/wm.key" ] || head -c 32 /dev/urandom >"$work/wm.key"
results=$work/results.jsonl
: >"$results"
for d in "${defenses[@]}"; do
  IFS='|' read -r name flags k <<<"$d"
  tag=$(echo "$name" | tr ' ' '-')
  # shellcheck disable=SC2086
  serve "$run/teacher/model" $flags
  "$distill" --quiet eval --model-url "$url" --url-tokenizer "$run/tokenizer.json" --text "$work/heldout.txt" \
    --builtin-task --builtin-items "$items" -c 256 --stride 128 -o "$work/teacher-$tag.json" >/dev/null
  rm -rf "$work/data-$tag"
  "$distill" --quiet capture --teacher-url "$url" --prompts "$work/prompts.jsonl" -o "$work/data-$tag" \
    --max-tokens "$tokens" --temperature 1 --seed 1 --concurrency 16 --top-logprobs "$k" --score-prompts >/dev/null
  stop
  if [ "$name" = off ]; then  # the reference: the same completions, no log-probs
    seq_bpb=$(train_student "$work/data-$tag" sequence-level --loss ce)
  fi
  bpb=$(train_student "$work/data-$tag" "$tag" --loss fkl --ce-weight 0.5 --temperature 1)
  python3 - "$work/teacher-$tag.json" "$name" "$bpb" "$seq_bpb" >>"$results" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))["models"][0]
acc = next(iter(t["tasks"].values()))["acc"]
print(json.dumps({"defense": sys.argv[2], "teacher_api_bpb": t["bits_per_byte"], "teacher_api_acc": acc,
                  "student_bpb": float(sys.argv[3]), "sequence_level_bpb": float(sys.argv[4])}))
PY
done

# the demo's baseline (trained on the novels without a teacher) on the same held-out text
baseline=$(ls -d "$run"/students/ce-seed*/model 2>/dev/null | head -1)
base_bpb=nan
if [ -n "$baseline" ]; then
  "$distill" --quiet eval -m "$baseline" --text "$work/heldout.txt" -c 256 --stride 128 -o "$work/baseline.eval.json" >/dev/null
  base_bpb=$(bpb_of "$work/baseline.eval.json")
fi

python3 - "$results" "$base_bpb" "$baseline" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
off = rows[0]
gain0 = off["sequence_level_bpb"] - off["student_bpb"]
print(f"the demo's baseline ({sys.argv[3] or 'not found'}): {float(sys.argv[2]):.4f} bpb")
print(f"sequence-level student (no log-probs): {off['sequence_level_bpb']:.4f} bpb")
print(f"{'defense':<16} {'teacher bpb':>11} {'teacher acc':>11} {'student bpb':>11} {'gain kept':>9}")
for r in rows:
    kept = (r["sequence_level_bpb"] - r["student_bpb"]) / gain0 if gain0 else float("nan")
    print(f"{r['defense']:<16} {r['teacher_api_bpb']:>11.4f} {r['teacher_api_acc']:>11.3f} {r['student_bpb']:>11.4f} {100 * kept:>8.0f}%")
PY
