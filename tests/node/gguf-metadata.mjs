// A GGUF file's metadata as node-llama-cpp's own reader parses it (an implementation independent
// of distill's), as JSON on stdout.
//
//   node gguf-metadata.mjs MODEL.gguf OUT.json
import { writeFileSync } from "node:fs";
import { readGgufFileInfo } from "node-llama-cpp";

const [modelPath, outPath] = process.argv.slice(2);
if (!outPath) {
  console.error("usage: node gguf-metadata.mjs MODEL.gguf OUT.json");
  process.exit(2);
}
const info = await readGgufFileInfo(modelPath, { readTensorInfo: false });
// token lists are long and bigint-free; other values are plain JSON
writeFileSync(outPath, JSON.stringify(info.metadata, (k, v) => (typeof v === "bigint" ? Number(v) : v)));
