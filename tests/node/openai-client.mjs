// Drives `distill serve` with the official `openai` npm package (pinned in package.json): every
// call goes through the client's own request building, response parsing and error classes.
//
//   node openai-client.mjs BASE_URL API_KEY MODEL OUT.json
//
// OUT.json: one entry per check, holding what the client returned (or the error class, status
// and error object it raised); test-serve judges them.
import OpenAI from "openai";
import { writeFileSync } from "node:fs";

const [baseURL, apiKey, model, outPath] = process.argv.slice(2);
if (!outPath) {
  console.error("usage: node openai-client.mjs BASE_URL API_KEY MODEL OUT.json");
  process.exit(2);
}
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 120000 });
const out = {};

// Runs one check; records the value or the error the client raised.
async function check(name, fn) {
  try {
    out[name] = { ok: true, value: await fn() };
  } catch (e) {
    out[name] = {
      ok: false,
      class: e?.constructor?.name,
      status: e?.status ?? null,
      error: e?.error ?? null,
      retry_after: e?.headers?.get?.("retry-after") ?? null,
      message: String(e?.message ?? e),
    };
  }
}

async function collect(stream) {
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  return chunks;
}

await check("models", async () => (await client.models.list()).data);
await check("model", async () => await client.models.retrieve(model));

await check("completion", () =>
  client.completions.create({ model, prompt: "the house was", max_tokens: 8, temperature: 0, logprobs: 3 }));
await check("completion_ids", () =>
  client.completions.create({ model, prompt: [3, 4, 5, 6], max_tokens: 4, temperature: 0 }));
await check("completion_echo", () =>
  client.completions.create({ model, prompt: "she said that the garden", max_tokens: 0, echo: true, logprobs: 2 }));
await check("completion_n", () =>
  client.completions.create({ model, prompt: "it was", max_tokens: 6, n: 3, temperature: 1, seed: 7 }));
await check("completion_seeded_again", () =>
  client.completions.create({ model, prompt: "it was", max_tokens: 6, n: 3, temperature: 1, seed: 7 }));
await check("completion_stream", async () =>
  collect(await client.completions.create({ model, prompt: "the house was", max_tokens: 8, temperature: 0,
                                            stream: true, stream_options: { include_usage: true } })));
await check("completion_stop", () =>
  client.completions.create({ model, prompt: "the house was", max_tokens: 12, temperature: 0, stop: ["s w", "zz"] }));

const messages = [{ role: "system", content: "You are terse." }, { role: "user", content: "Tell me of the house." }];
await check("chat", () =>
  client.chat.completions.create({ model, messages, max_tokens: 10, temperature: 0, logprobs: true, top_logprobs: 3 }));
await check("chat_stream", async () =>
  collect(await client.chat.completions.create({ model, messages, max_tokens: 10, temperature: 0, logprobs: true,
                                                 top_logprobs: 3, stream: true,
                                                 stream_options: { include_usage: true } })));
await check("chat_max_completion_tokens", () =>
  client.chat.completions.create({ model, messages, max_completion_tokens: 3, temperature: 0.7, top_p: 0.9, seed: 1 }));

// errors, each as the client classifies it
const badKey = new OpenAI({ baseURL, apiKey: "not-a-key", maxRetries: 0 });
await check("err_bad_key", () => badKey.chat.completions.create({ model, messages, max_tokens: 2 }));
await check("err_unknown_model", () => client.chat.completions.create({ model: "no-such-model", messages, max_tokens: 2 }));
await check("err_top_logprobs_cap", () =>
  client.chat.completions.create({ model, messages, max_tokens: 2, logprobs: true, top_logprobs: 21 }));
await check("err_too_long", () =>
  client.completions.create({ model, prompt: "the house ".repeat(4000), max_tokens: 2 }));
await check("err_wrong_type", () => client.completions.create({ model, prompt: "x", max_tokens: "many" }));
// a body that is not JSON at all: the client's own fetch, with the body replaced
const broken = new OpenAI({ baseURL, apiKey, maxRetries: 0,
                            fetch: (url, init) => fetch(url, { ...init, body: "{\"model\": \"" + model + "\", " }) });
await check("err_malformed", () => broken.chat.completions.create({ model, messages, max_tokens: 2 }));
await check("err_too_large", () =>
  client.completions.create({ model, prompt: "y".repeat(3 << 20), max_tokens: 2 }));

writeFileSync(outPath, JSON.stringify(out, null, 1));
