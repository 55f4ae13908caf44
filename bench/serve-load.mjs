// Load on `distill serve` beside llama.cpp (node-llama-cpp) generating with the same GGUF at the
// same parallelism. Run through bench/serve-load.sh, which starts the server.
//
//   node serve-load.mjs distill BASE_URL MODEL CLIENTS SECONDS MAX_TOKENS
//   node serve-load.mjs llama   MODEL.gguf CLIENTS SECONDS MAX_TOKENS THREADS
//
// Prints one JSON line: requests, generated tokens, errors, latency percentiles, per-second rates.
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const prompts = ["It was a truth universally", "She had been", "The house at", "In the morning, Anne",
                 "Captain Wentworth said", "Elizabeth looked at", "Mr. Darcy was", "Emma could not"];

function summary(kind, clients, seconds, lat, tokens, errors) {
  lat.sort((a, b) => a - b);
  const pct = (p) => (lat.length ? lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] : null);
  return { kind, clients, seconds, requests: lat.length, tokens, errors, requests_per_s: lat.length / seconds,
           tokens_per_s: tokens / seconds, p50_s: pct(0.5), p99_s: pct(0.99) };
}

async function distill(base, model, clients, seconds, maxTokens) {
  const deadline = Date.now() + seconds * 1000;
  const lat = [];
  let tokens = 0;
  const errors = {};
  async function client(i) {
    let k = 0;
    while (Date.now() < deadline) {
      const t0 = performance.now();
      try {
        const r = await fetch(`${base}/completions`, {
          method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ model, prompt: prompts[(i + k++) % prompts.length], max_tokens: maxTokens,
                                 temperature: 0 }) });
        const j = await r.json();
        if (r.status !== 200) { errors[r.status] = (errors[r.status] ?? 0) + 1; continue; }
        tokens += j.usage.completion_tokens;
        lat.push((performance.now() - t0) / 1000);
      } catch (e) {
        errors.transport = (errors.transport ?? 0) + 1;
      }
    }
  }
  const t0 = performance.now();
  await Promise.all(Array.from({ length: clients }, (_, i) => client(i)));
  return summary("distill", clients, (performance.now() - t0) / 1000, lat, tokens, errors);
}

async function llamacpp(modelPath, clients, seconds, maxTokens, threads) {
  const { getLlama, LlamaLogLevel } = await import(require.resolve("node-llama-cpp", { paths: [process.env.DISTILL_NODE_DIR] }));
  const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
  const model = await llama.loadModel({ modelPath });
  const context = await model.createContext({ sequences: clients, contextSize: clients * 256, threads,
                                              batchSize: 512, flashAttention: false });
  const deadline = Date.now() + seconds * 1000;
  const lat = [];
  let tokens = 0;
  const errors = {};
  async function client(i) {
    const seq = context.getSequence();
    let k = 0;
    while (Date.now() < deadline) {
      const t0 = performance.now();
      await seq.clearHistory();
      const input = [model.tokens.bos, ...model.tokenize(prompts[(i + k++) % prompts.length])].filter((t) => t != null);
      let n = 0;
      for await (const t of seq.evaluate(input, { temperature: 0 })) {
        if (model.isEogToken(t)) break;
        if (++n >= maxTokens) break;
      }
      tokens += n;
      lat.push((performance.now() - t0) / 1000);
    }
  }
  const t0 = performance.now();
  await Promise.all(Array.from({ length: clients }, (_, i) => client(i)));
  const s = summary("llama.cpp", clients, (performance.now() - t0) / 1000, lat, tokens, errors);
  await context.dispose();
  await model.dispose();
  await llama.dispose();
  return s;
}

const [mode, ...a] = process.argv.slice(2);
if (mode === "distill") console.log(JSON.stringify(await distill(a[0], a[1], +a[2], +a[3], +a[4])));
else if (mode === "llama") console.log(JSON.stringify(await llamacpp(a[0], +a[1], +a[2], +a[3], +a[4])));
else { console.error("usage: see the header of serve-load.mjs"); process.exit(2); }
