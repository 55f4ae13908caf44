// Reference tokenization with Hugging Face tokenizers (the Rust library, through the
// @anush008/tokenizers Node bindings; see package.json for the pinned version).
//
//   node hf-tokenize.mjs TOKENIZER_JSON IN.jsonl OUT.jsonl
//
// Each input line is one request; the output has one line per request, in order:
//   {"text": "..."}                 -> {"ids": [...], "decoded": "..."}   (no special tokens added)
//   {"bytes": [..]}                 -> the same, for the bytes decoded as UTF-8 by Node
//                                      (WHATWG decoder: invalid sequences become U+FFFD)
//   {"decode": [ids], "skip": bool} -> {"text": "..."}
//   {"file": PATH, "repeat": n}     -> {"ids": [...], "first": s1, "best": s}: the file (UTF-8)
//                                      encoded n times as one string; seconds of the first and
//                                      the fastest run (for bench/bench-tokenize)
// The first output line is {"version": ...}, naming the generator.
import { createRequire } from "node:module";
import { readFileSync, writeFileSync } from "node:fs";

const require = createRequire(import.meta.url);
const { Tokenizer } = require("@anush008/tokenizers");
const pkg = require("@anush008/tokenizers/package.json");

const [tokPath, inPath, outPath] = process.argv.slice(2);
if (!outPath) {
  console.error("usage: node hf-tokenize.mjs TOKENIZER_JSON IN.jsonl OUT.jsonl");
  process.exit(2);
}
const tok = Tokenizer.fromFile(tokPath);
const lines = readFileSync(inPath, "utf8").split("\n").filter((l) => l.length > 0);
const out = [JSON.stringify({ version: `${pkg.name}@${pkg.version}` })];
for (const line of lines) {
  const req = JSON.parse(line);
  if (req.decode !== undefined) {
    out.push(JSON.stringify({ text: await tok.decode(req.decode, !!req.skip) }));
    continue;
  }
  if (req.file !== undefined) {
    const text = readFileSync(req.file, "utf8");
    const times = [];
    let ids = [];
    for (let r = 0; r < (req.repeat || 1); ++r) {
      const t0 = process.hrtime.bigint();
      const enc = await tok.encode(text, null, { addSpecialTokens: false });
      times.push(Number(process.hrtime.bigint() - t0) / 1e9);
      ids = enc.getIds();
    }
    out.push(JSON.stringify({ ids: Array.from(ids), first: times[0], best: Math.min(...times) }));
    continue;
  }
  const text = req.bytes !== undefined ? Buffer.from(req.bytes).toString("utf8") : req.text;
  const enc = await tok.encode(text, null, { addSpecialTokens: false });
  const ids = Array.from(enc.getIds());
  out.push(JSON.stringify({ ids, decoded: await tok.decode(ids, false) }));
}
writeFileSync(outPath, out.join("\n") + "\n");
