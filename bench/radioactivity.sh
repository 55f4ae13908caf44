#!/usr/bin/env bash
# Radioactivity on the demo (docs/guard.md): was a student distilled from our watermarked API?
# The demo teacher is served with a watermark (delta WM_DELTA, gamma 0.25, context 1) and without
# one; PROMPTS passages cut from the training novels are completed by each (TOKENS tokens,
# temperature 1). Students of the demo's student shape are trained sequence-level
# (`train --sequences --loss ce`) on a mix in which a fraction (FRACS, in %) of the prompts carry
# the watermarked completion and the rest the clean one, for each seed. Each student is then tested
# in open mode (its top-1 over all our watermarked completions) and closed mode (its own
# `distill serve`, CLOSED prompts of held-out text, 100 tokens each; also filtered to contexts seen
# >= 2 times in our completions), and in open mode with a wrong key; and with the soft test
# (--score soft) over the first SOFT_BYTES of the held-out novel (all of it by default), a text the
# key never touched: open (its weights), closed (its API's top-20 through echo), and open with the
# wrong key.
#   bash bench/radioactivity.sh [RUN]    RUN: a finished `distill demo` run (default runs/demo)
# STEPS (default 2400), SEEDS ("1 2"), FRACS ("100 10 5 0"), PROMPTS (8000), TOKENS (128),
# CLOSED (50), WM_DELTA (2), SOFT_BYTES (1000000: the whole novel).
set -euo pipefail
cd "$(dirname "$0")/.."
distill=$(realpath "${DISTILL:-build/distill}")
run=$(realpath "${1:-runs/demo}")
steps=${STEPS:-2400}
seeds=${SEEDS:-1 2}
fracs=${FRACS:-100 10 5 0}
prompts_n=${PROMPTS:-8000}
tokens=${TOKENS:-128}
closed_n=${CLOSED:-50}
delta=${WM_DELTA:-2}
soft_bytes=${SOFT_BYTES:-1000000}
[ -d "$run/teacher/model" ] || "$distill" demo --run-dir "$run" --api-prompts 0
work=$run/radioactivity
mkdir -p "$work"
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) cores); steps $steps, seeds $seeds, $prompts_n prompts x $tokens tokens, delta $delta"

# shellcheck source=bench/demo-lib.sh
source bench/demo-lib.sh

# the keys (ours and a wrong one), the prompts (training passages; held-out passages for closed mode)
[ -s "$work/wm.key" ] || head -c 32 /dev/urandom >"$work/wm.key"
[ -s "$work/other.key" ] || head -c 32 /dev/urandom >"$work/other.key"
python3 - "$run" "$work" "$prompts_n" "$closed_n" "$soft_bytes" <<'PY'
import json, random, sys
run, work, n, m, soft = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def cut(text, count, seed, size=200):
    r, out = random.Random(seed), []
    while len(out) < count:
        i = text.find("\n", r.randrange(len(text) - 4 * size)) + 1
        j = text.rfind(" ", i, i + size)
        if j > i + size // 2:
            out.append(text[i:j])
    return out
train = open(f"{run}/train.txt", encoding="utf-8").read()
held = open(f"{run}/corpus/persuasion.txt", encoding="utf-8").read()
for name, ps in (("prompts", cut(train, n, 1)), ("closed", cut(held, m, 2))):
    with open(f"{work}/{name}.jsonl", "w") as f:
        for p in ps:
            f.write(json.dumps({"prompt": p}) + "\n")
with open(f"{work}/soft.txt", "w", encoding="utf-8") as f:
    f.write(held.encode("utf-8")[:soft].decode("utf-8", "ignore"))
PY

# the teacher's completions, watermarked and clean (resumable datasets)
capture() {  # capture OUT SEED
  "$distill" --quiet capture --teacher-url "$url" --prompts "$work/prompts.jsonl" -o "$1" --max-tokens "$tokens" \
    --temperature 1 --seed "$2" --concurrency 16 --top-logprobs 1 >/dev/null
}
serve "$run/teacher/model" --watermark-key-file "$work/wm.key" --wm-delta "$delta" --wm-gamma 0.25 --wm-context 1
capture "$work/marked" 1
stop
serve "$run/teacher/model"
capture "$work/clean" 100000
stop

# the mixes: prompt p carries the watermarked completion when (p * 7919) % 100 < FRAC
for f in $fracs; do
  mkdir -p "$work/mix-$f"
  python3 - "$work" "$f" <<'PY'
import json, sys
work, f = sys.argv[1], int(sys.argv[2])
load = lambda d: {json.loads(l)["prompt_index"]: l for l in open(f"{work}/{d}/samples.jsonl")}
marked, clean = load("marked"), load("clean")
with open(f"{work}/mix-{f}/samples.jsonl", "w") as out:
    for p in sorted(marked):
        out.write(marked[p] if (p * 7919) % 100 < f else clean[p])
PY
done

student_config "$work/student.json"
mkdir -p "$work/students"
results=$work/results.jsonl
: >"$results"
for s in $seeds; do
  for f in $fracs; do
    st=$work/students/f$f-seed$s
    "$distill" --quiet train --sequences "$work/mix-$f" --config "$work/student.json" --tokenizer "$run/tokenizer.json" \
      --loss ce --steps "$steps" --batch-size 16 --seq-len 128 --lr 0.003 --warmup $((steps / 20)) -s "$s" \
      --run-dir "$st" >"$st.log" 2>&1 || { tail "$st.log"; exit 1; }
    open=$("$distill" --quiet guard radioactivity --key-file "$work/wm.key" --suspect "$st/model" \
      --texts "$work/marked/samples.jsonl")
    wrong=$("$distill" --quiet guard radioactivity --key-file "$work/other.key" --suspect "$st/model" \
      --texts "$work/marked/samples.jsonl")
    soft=$("$distill" --quiet guard radioactivity --key-file "$work/wm.key" --suspect "$st/model" \
      --score soft --text "$work/soft.txt")
    soft_wrong=$("$distill" --quiet guard radioactivity --key-file "$work/other.key" --suspect "$st/model" \
      --score soft --text "$work/soft.txt")
    serve "$st/model"
    soft_closed=$("$distill" --quiet guard radioactivity --key-file "$work/wm.key" --tokenizer "$run/tokenizer.json" \
      --suspect-url "$url" --score soft --text "$work/soft.txt")
    rm -rf "$st-answers"
    closed=$("$distill" --quiet guard radioactivity --key-file "$work/wm.key" --tokenizer "$run/tokenizer.json" \
      --suspect-url "$url" --prompts "$work/closed.jsonl" --dataset "$st-answers" --max-tokens 100 --seed "$s")
    stop
    filtered=$("$distill" --quiet guard radioactivity --key-file "$work/wm.key" --tokenizer "$run/tokenizer.json" \
      --dataset "$st-answers" --filter-texts "$work/marked/samples.jsonl" --min-count 2)
    echo "{\"frac\": $f, \"seed\": $s, \"open\": $open, \"wrong_key\": $wrong, \"closed\": $closed, \"closed_filtered\": $filtered, \"soft\": $soft, \"soft_closed\": $soft_closed, \"soft_wrong_key\": $soft_wrong}" >>"$results"
  done
done

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def p(r):
    if r.get("p") is None: return "n/a"
    return f"{r['p']:.3g}" if r["p"] > 0 else f"1e{r['log10_p']:.0f}"
print(f"{'marked %':>8} {'seed':>4} {'open p':>10} {'open T':>7} {'closed p':>10} {'closed T':>8} {'filtered p':>10} "
      f"{'wrong key p':>11} {'soft p':>10} {'soft closed p':>13} {'soft wrong key p':>16} {'soft green':>10}")
for r in rows:
    print(f"{r['frac']:>8} {r['seed']:>4} {p(r['open']):>10} {r['open']['scored']:>7} {p(r['closed']):>10} "
          f"{r['closed']['scored']:>8} {p(r['closed_filtered']):>10} {p(r['wrong_key']):>11} {p(r['soft']):>10} "
          f"{p(r['soft_closed']):>13} {p(r['soft_wrong_key']):>16} {r['soft']['green_mass']:>10.4f}")
PY
