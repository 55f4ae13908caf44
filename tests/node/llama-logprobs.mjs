// Reference next-token distributions from llama.cpp (through node-llama-cpp; see package.json for
// the pinned version and tests/node/node_modules/node-llama-cpp/llama/llama.cpp.info.json for the
// llama.cpp release it ships), on the CPU, with an F32 KV cache and no flash attention.
//
//   node llama-logprobs.mjs MODEL.gguf IN.json OUT.json
//
// IN.json: {"text": "...", "ids": [...], "vocab": V}. OUT.json: {"version", "tokens": llama.cpp's
// tokenization of text (no BOS/EOS added), "logprobs": one array per id in ids: log p(next token
// = v) for every vocabulary id v after ids[0..i] (null where llama.cpp gives probability 0)}.
import { createRequire } from "node:module";
import { readFileSync, writeFileSync } from "node:fs";
import { getLlama, LlamaLogLevel } from "node-llama-cpp";

const require = createRequire(import.meta.url);
const pkg = JSON.parse(readFileSync(require.resolve("node-llama-cpp").replace(/dist\/.*$/, "package.json"), "utf8"));

const [modelPath, inPath, outPath] = process.argv.slice(2);
if (!outPath) {
  console.error("usage: node llama-logprobs.mjs MODEL.gguf IN.json OUT.json");
  process.exit(2);
}
const req = JSON.parse(readFileSync(inPath, "utf8"));
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath });
const n = req.ids.length;
const context = await model.createContext({
  contextSize: Math.max(64, n + 8),
  batchSize: Math.max(64, n + 8),
  threads: 2,
  flashAttention: false,
  experimentalKvCacheKeyType: "F32",
  experimentalKvCacheValueType: "F32",
});
const sequence = context.getSequence();
const tokens = Array.from(model.tokenize(req.text));
const vocab = req.vocab;
const results = await sequence.controlledEvaluate(
  req.ids.map((t) => [
    t,
    { generateNext: { probabilities: true, options: { temperature: 1, topK: 0, topP: 1, minP: 0 } } },
  ]),
);
const logprobs = results.map((r) => {
  const row = new Array(vocab).fill(null);
  for (const [id, p] of r.next.probabilities) if (p > 0) row[id] = Math.log(p);
  return row;
});
writeFileSync(outPath, JSON.stringify({ version: `${pkg.name}@${pkg.version}`, tokens, logprobs }));
await context.dispose();
await model.dispose();
await llama.dispose();
