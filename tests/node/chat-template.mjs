// Reference chat-template rendering with @huggingface/jinja (the Jinja implementation of
// transformers.js; see package.json for the pinned version), called the way transformers.js's
// apply_chat_template calls it: render({messages, add_generation_prompt, tools, ...special tokens,
// ...extra keyword arguments such as enable_thinking}).
//
//   node chat-template.mjs IN.json OUT.json
//
// IN and OUT as for tests/ref/chat_template_ref.py:
//   IN:  {"templates": [{"text", "bos_token", "eos_token"}],
//         "cases": [{"t": index, "messages", "add_generation_prompt", ["enable_thinking"], ["tools"]}]}
//   OUT: {"version": "...", "results": [{"text": ...} or {"error": ...}, ...]}
import { readFileSync, writeFileSync } from "node:fs";
import { Template } from "@huggingface/jinja";

const [inPath, outPath] = process.argv.slice(2);
if (!outPath) {
  console.error("usage: node chat-template.mjs IN.json OUT.json");
  process.exit(2);
}
const pkg = JSON.parse(readFileSync(new URL("./node_modules/@huggingface/jinja/package.json", import.meta.url), "utf8"));
const req = JSON.parse(readFileSync(inPath, "utf8"));
const templates = req.templates.map((t) => ({ tpl: new Template(t.text), info: t }));
const results = req.cases.map((c) => {
  const { tpl, info } = templates[c.t];
  const vars = { messages: c.messages, add_generation_prompt: c.add_generation_prompt, tools: c.tools ?? null };
  if (info.bos_token) vars.bos_token = info.bos_token;
  if (info.eos_token) vars.eos_token = info.eos_token;
  if ("enable_thinking" in c) vars.enable_thinking = c.enable_thinking;
  try {
    return { text: tpl.render(vars) };
  } catch (e) {
    return { error: String(e && e.message ? e.message : e) };
  }
});
writeFileSync(outPath, JSON.stringify({ version: `${pkg.name}@${pkg.version}`, results }));
