"""A model directory of real shape with random weights, for bench/teacher-memory.sh: config.json
and an F32 model.safetensors, written one tensor at a time (a 1.5B model never sits in memory
whole). Speed and memory do not depend on the weights; N(0, 0.02) keeps the activations finite.

usage: random_model.py OUT_DIR SHAPE
  SHAPE: qwen2.5-1.5b (hidden 1536, 28 layers, 12 heads, 2 kv heads, intermediate 8960,
         vocab 151936, tied) or qwen2.5-0.5b (896, 24, 14, 2, 4864, 151936, tied)
"""

import json
import os
import struct
import sys

import numpy as np

SHAPES = {
    "qwen2.5-1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         intermediate_size=8960),
    "qwen2.5-0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         intermediate_size=4864),
}


def main():
    out, shape = sys.argv[1:3]
    s = SHAPES[shape]
    cfg = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936,
           "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
           "tie_word_embeddings": True, "torch_dtype": "float32", **s}
    C, I, H, KV = s["hidden_size"], s["intermediate_size"], s["num_attention_heads"], s["num_key_value_heads"]
    D = C // H
    tensors = [("model.embed_tokens.weight", (cfg["vocab_size"], C)), ("model.norm.weight", (C,))]
    for l in range(s["num_hidden_layers"]):
        p = f"model.layers.{l}."
        tensors += [(p + "input_layernorm.weight", (C,)), (p + "post_attention_layernorm.weight", (C,)),
                    (p + "self_attn.q_proj.weight", (H * D, C)), (p + "self_attn.q_proj.bias", (H * D,)),
                    (p + "self_attn.k_proj.weight", (KV * D, C)), (p + "self_attn.k_proj.bias", (KV * D,)),
                    (p + "self_attn.v_proj.weight", (KV * D, C)), (p + "self_attn.v_proj.bias", (KV * D,)),
                    (p + "self_attn.o_proj.weight", (C, H * D)),
                    (p + "mlp.gate_proj.weight", (I, C)), (p + "mlp.up_proj.weight", (I, C)),
                    (p + "mlp.down_proj.weight", (C, I))]
    header, offset = {}, 0
    for name, dims in tensors:
        n = int(np.prod(dims)) * 4
        header[name] = {"dtype": "F32", "shape": list(dims), "data_offsets": [offset, offset + n]}
        offset += n
    h = json.dumps(header).encode()
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    tmp = os.path.join(out, "model.safetensors.tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for name, dims in tensors:
            if name.endswith("norm.weight"):
                a = np.ones(dims, dtype=np.float32)
            elif name.endswith(".bias"):
                a = np.zeros(dims, dtype=np.float32)
            else:
                a = (rng.standard_normal(dims, dtype=np.float32) * np.float32(0.02))
            f.write(a.astype("<f4").tobytes())
    os.replace(tmp, os.path.join(out, "model.safetensors"))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)


if __name__ == "__main__":
    main()
