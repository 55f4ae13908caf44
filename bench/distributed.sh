#!/usr/bin/env bash
# Data-parallel scaling (docs/distributed.md): the demo's student trained with `distill launch -n N`
# for N = 1, 2, 4 at the same global batch (16 x 128), the machine's cores split between the ranks;
# steps/s, tokens/s, the speed-up over one process, the all-reduce time per step, and the largest
# weight difference from the 1-process run. Twice: cross-entropy, and sparse KD from the demo's
# top-32 cache (every rank reads its rows of the cache). The weight difference has a floor that is
# not data parallel's: one process on 1 thread against one on all cores (the order of float sums
# differs, and Adam at this learning rate amplifies it in weights whose gradients are near zero).
#   bash bench/distributed.sh [RUN]    RUN: a finished `distill demo` run (default runs/demo)
# Each N > 1 twice: the all-reduce bucket by bucket during backward (the default), and after it
# (--dist-no-overlap). STEPS (default 60), WORLDS (default "1 2 4"), MODES (default "ce kd").
set -euo pipefail
cd "$(dirname "$0")/.."
distill=${DISTILL:-build/distill}
run=${1:-runs/demo}
steps=${STEPS:-60}
worlds=${WORLDS:-1 2 4}
modes=${MODES:-ce kd}
[ -d "$run/cache" ] || "$distill" demo --run-dir "$run" --api-prompts 0
work=$(mktemp -d "${TMPDIR:-/tmp}/distill-bench-ddp.XXXXXX")
cores=$(nproc)
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p') ($cores cores); work in $work"
cat > "$work/student.json" <<JSON
{"vocab_size": $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['vocab_size'])" "$run/teacher/model/config.json"),
 "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
 "intermediate_size": 344, "max_position_embeddings": 512, "tie_word_embeddings": true}
JSON
for mode in $modes; do
  case $mode in
    ce) loss=(--loss ce) ;;
    kd) loss=(--cache "$run/cache" --loss fkl --ce-weight 0.5) ;;
    *) echo "unknown mode $mode (ce or kd)" >&2; exit 2 ;;
  esac
  runs="floor"
  for n in $worlds; do runs="$runs $n"; [ "$n" -gt 1 ] && runs="$runs $n-after"; done
  for n in $runs; do
    extra=()
    case $n in
      floor) ranks=1 threads=1 ;;
      *-after) ranks=${n%-after} threads=$(( cores / ranks )); extra=(--dist-no-overlap) ;;
      *) ranks=$n threads=$(( cores / n )) ;;
    esac
    [ "$threads" -ge 1 ] || threads=1
    "$distill" --quiet launch -n "$ranks" train "${extra[@]}" --threads "$threads" --config "$work/student.json" \
      --tokenizer "$run/tokenizer.json" --data "$run/data/train" "${loss[@]}" --steps "$steps" \
      --batch-size 16 --seq-len 128 --lr 0.003 --warmup 5 -s 1 --log-every 1 \
      --run-dir "$work/$mode-$n" > "$work/$mode-$n.log" 2>&1 || { cat "$work/$mode-$n.log"; exit 1; }
  done
done
"${PYTHON:-/usr/bin/python3}" - "$work" "$cores" "$modes" $worlds <<'PY'
import json, struct, sys
import numpy as np
work, cores, modes, worlds = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), [int(w) for w in sys.argv[4:]]
def weights(path):
    b = open(path, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n]); out = {}
    for k, v in h.items():
        if k != "__metadata__":
            s, e = v["data_offsets"]; out[k] = np.frombuffer(b[8 + n + s:8 + n + e], dtype=np.float32)
    return out
for mode in modes:
    print(f"\n{mode}: global batch 16 x 128")
    print(f"{'ranks':>5} {'threads':>7} {'all-reduce':>11} {'steps/s':>8} {'tokens/s':>9} {'speed-up':>8} {'allreduce ms':>12} {'max |dw|':>9}")
    base_rate, base_w = None, None
    runs = []
    for n in worlds:
        runs.append((n, f"{n}", "during bwd" if n > 1 else "-"))
        if n > 1: runs.append((n, f"{n}-after", "after bwd"))
    for n, name, how in runs:
        rows = [json.loads(x) for x in open(f"{work}/{mode}-{name}/metrics.jsonl")]
        last = rows[-1]
        # steady state: the second half of the steps
        half = rows[len(rows) // 2:]
        secs = half[-1]["seconds"] - rows[len(rows) // 2 - 1]["seconds"]
        rate = len(half) / secs
        tok = (half[-1]["tokens"] - rows[len(rows) // 2 - 1]["tokens"]) / secs
        ar = np.mean([r.get("allreduce_ms", 0.0) for r in half])
        w = weights(f"{work}/{mode}-{name}/model/model.safetensors")
        if base_rate is None: base_rate, base_w = rate, w
        dw = max(float(np.abs(w[k].astype(np.float64) - base_w[k]).max()) for k in w)
        print(f"{n:>5} {max(1, cores // n):>7} {how:>11} {rate:>8.2f} {tok:>9.0f} {rate / base_rate:>7.2f}x {ar:>12.2f} {dw:>9.1e}")
    w = weights(f"{work}/{mode}-floor/model/model.safetensors")
    floor = max(float(np.abs(w[k].astype(np.float64) - base_w[k]).max()) for k in w)
    print(f"max |dw| of one process on 1 thread against one on {cores}: {floor:.1e} (the rounding floor)")
print("allreduce ms: the gradient all-reduce's time per step that backward did not hide (all of it with the")
print("all-reduce after backward), waiting for the slowest rank included")
PY

echo
echo "capture: the demo teacher over ${CAPTURE_WINDOWS:-256} windows of 128, 8 windows per forward per rank;"
echo "seconds of the forwards and writes (capture_seconds), without model loading and the read-back check"
printf "%5s %7s %10s %12s %8s\n" ranks threads seconds positions/s speed-up
base=""
for n in $worlds; do
  threads=$(( cores / n )); [ "$threads" -ge 1 ] || threads=1
  "$distill" --quiet launch -n "$n" capture --threads "$threads" --teacher "$run/teacher/model" --data "$run/data/train" \
    --max-windows "${CAPTURE_WINDOWS:-256}" --seq-len 128 --batch-size 8 -o "$work/capture-$n" > "$work/capture-$n.json"
  secs=$("${PYTHON:-/usr/bin/python3}" -c "import json,sys; print(json.load(open(sys.argv[1]))['capture_seconds'])" "$work/capture-$n.json")
  [ -n "$base" ] || base=$secs
  printf "%5s %7s %10.2f %12.0f %7.2fx\n" "$n" "$threads" "$secs" "$(echo "${CAPTURE_WINDOWS:-256} * 128 / $secs" | bc -l)" "$(echo "$base / $secs" | bc -l)"
done
