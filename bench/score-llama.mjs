// llama.cpp's side of bench/score-speed.sh: node-llama-cpp evaluates the sliding windows that
// `distill eval` scores (plan_eval_windows in src/eval/eval.cpp, repeated here) over the same
// token ids, with one context of CONTEXT tokens, batch size CONTEXT (a window is one batch) and
// THREADS threads, flash attention on and an F32 KV cache. Only the evaluation is timed (not loading the model or making the context).
//
//   node score-llama.mjs MODEL.gguf IDS.json CONTEXT STRIDE THREADS MODE
//
// IDS.json: the text's ids as `distill tokenize` prints them (no BOS; the GGUF's BOS, if it has
// one, is put in front as distill's encode_for_eval does). MODE:
//   logits  every scored position asks for its next-token distribution (generateNext.token, greedy):
//           llama.cpp runs the output head on those rows, as scoring needs, and node-llama-cpp then
//           samples each row with a native call (the binding's way to reach a row's logits; part
//           of its time is that per-row overhead)
//   eval    the windows are only evaluated (llama.cpp computes the last position's logits alone):
//           less work than scoring, an upper bound on llama.cpp's speed
// Prints one JSON line: {mode, threads, bos, windows, evaluated_tokens, scored_tokens, seconds, tokens_per_s}.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";

const require = createRequire(import.meta.url);
const [modelPath, idsPath, contextArg, strideArg, threadsArg, mode] = process.argv.slice(2);
if (!mode || !["logits", "eval"].includes(mode)) {
  console.error("usage: node score-llama.mjs MODEL.gguf IDS.json CONTEXT STRIDE THREADS logits|eval");
  process.exit(2);
}
const context = Number(contextArg), stride = Number(strideArg), threads = Number(threadsArg);
const nodeDir = process.env.DISTILL_NODE_DIR ?? new URL("../tests/node", import.meta.url).pathname;
const { getLlama, LlamaLogLevel } = await import(require.resolve("node-llama-cpp", { paths: [nodeDir] }));

// plan_eval_windows: every target 1 .. N-1 scored once, each window of `context` tokens when N allows
function planWindows(N) {
  const wins = [];
  let scoredTo = 1;
  for (let begin = 0; scoredTo < N; begin += stride) {
    begin = Math.min(begin, scoredTo - 1);
    const end = Math.min(begin + context, N);
    if (end - begin < context) begin = Math.max(0, end - context);
    wins.push({ begin, end, scoreFrom: Math.max(scoredTo, begin + 1) });
    scoredTo = end;
  }
  return wins;
}

const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error, maxThreads: threads });
const model = await llama.loadModel({ modelPath });
const ids = JSON.parse(readFileSync(idsPath, "utf8"));
if (model.tokens.bos != null) ids.unshift(model.tokens.bos);
const ctx = await model.createContext({
  contextSize: context,
  batchSize: context,
  threads: { ideal: threads, min: threads },
  flashAttention: true,  // llama.cpp's faster exact attention on this CPU (about 2x over off here)
  experimentalKvCacheKeyType: "F32",
  experimentalKvCacheValueType: "F32",
});
const seq = ctx.getSequence();
const wins = planWindows(ids.length);
const greedy = { generateNext: { token: true, options: { temperature: 0 } } };

let evaluated = 0, scored = 0;
const t0 = performance.now();
for (const w of wins) {
  await seq.clearHistory();
  const tokens = ids.slice(w.begin, w.end);
  if (mode === "logits") {
    // position p (absolute) predicts target p + 1: rows scoreFrom - 1 .. end - 2 are scored
    const input = tokens.map((t, i) => (w.begin + i >= w.scoreFrom - 1 && w.begin + i < w.end - 1 ? [t, greedy] : t));
    await seq.controlledEvaluate(input);
  } else {
    await seq.evaluateWithoutGeneratingNewTokens(tokens);
  }
  evaluated += tokens.length;
  scored += w.end - w.scoreFrom;
}
const seconds = (performance.now() - t0) / 1000;
console.log(JSON.stringify({ mode, threads, bos: model.tokens.bos != null, windows: wins.length, evaluated_tokens: evaluated, scored_tokens: scored,
                             seconds, tokens_per_s: scored / seconds }));
await ctx.dispose();
await model.dispose();
await llama.dispose();
