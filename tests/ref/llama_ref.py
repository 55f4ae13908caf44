"""Independent PyTorch reference of the Llama / Qwen2 / Qwen3 decoder, written from the Hugging Face
definitions (modeling_llama / modeling_qwen2 / modeling_qwen3, modeling_rope_utils): RMSNorm,
rotate-half rotary embeddings with "linear" / "llama3" scaling, grouped-query attention with
repeat_kv, SwiGLU MLP, optional tied embeddings, q/k/v bias, per-head q/k RMSNorm (qwen3), an
explicit head_dim. Weights: model.safetensors, or shards named by model.safetensors.index.json.

usage: llama_ref.py MODEL_DIR INPUT.safetensors OUTPUT.safetensors
  INPUT has "ids" (B, T) int64 and "targets" (B, T) int64.
  OUTPUT gets "logits" (B, T, V) and "loss" (cross-entropy, mean) and "grad.<name>" for every
  parameter in the model directory's safetensors.
Run with Debian's /usr/bin/python3 (python3-torch).
"""

import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402

torch.set_default_dtype(torch.float64)  # the reference runs in float64


def rms_norm(x, w, eps):
    var = x.pow(2).mean(-1, keepdim=True)
    return x * torch.rsqrt(var + eps) * w


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def rope_inv_freq(cfg, D):
    theta = cfg.get("rope_theta", 10000.0)
    inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    rs = cfg.get("rope_scaling") or {}
    kind = rs.get("rope_type", rs.get("type", "default"))
    if kind == "linear":
        return inv_freq / rs["factor"]
    if kind == "llama3":  # modeling_rope_utils._compute_llama3_parameters
        factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old / low, old / high
        wavelen = 2 * math.pi / inv_freq
        out = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, out)
    assert kind == "default", kind
    return inv_freq


def forward(cfg, P, ids):
    B, T = ids.shape
    C = cfg["hidden_size"]
    H = cfg["num_attention_heads"]
    Hkv = cfg.get("num_key_value_heads", H)
    D = cfg.get("head_dim") or C // H
    eps = cfg.get("rms_norm_eps", 1e-6)
    inv_freq = rope_inv_freq(cfg, D)
    pos = torch.arange(T, dtype=torch.float64)
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()

    x = P["model.embed_tokens.weight"][ids]
    mask = torch.full((T, T), float("-inf")).triu(1)
    for l in range(cfg["num_hidden_layers"]):
        p = lambda n: P[f"model.layers.{l}.{n}"]  # noqa: E731
        h = rms_norm(x, p("input_layernorm.weight"), eps)

        def proj(name):
            y = h @ p(f"self_attn.{name}.weight").T
            key = f"model.layers.{l}.self_attn.{name}.bias"
            return y + P[key] if key in P else y

        q = proj("q_proj").view(B, T, H, D)
        k = proj("k_proj").view(B, T, Hkv, D)
        if cfg["model_type"] == "qwen3":
            q = rms_norm(q, p("self_attn.q_norm.weight"), eps)
            k = rms_norm(k, p("self_attn.k_norm.weight"), eps)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = proj("v_proj").view(B, T, Hkv, D).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = torch.repeat_interleave(k, H // Hkv, dim=1)
        v = torch.repeat_interleave(v, H // Hkv, dim=1)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(D) + mask
        att = torch.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, H * D)
        x = x + y @ p("self_attn.o_proj.weight").T
        h = rms_norm(x, p("post_attention_layernorm.weight"), eps)
        gate = h @ p("mlp.gate_proj.weight").T
        up = h @ p("mlp.up_proj.weight").T
        x = x + (torch.nn.functional.silu(gate) * up) @ p("mlp.down_proj.weight").T
    x = rms_norm(x, P["model.norm.weight"], eps)
    head = P.get("lm_head.weight", P["model.embed_tokens.weight"])
    return x @ head.T


def main():
    model_dir, in_path, out_path = sys.argv[1:4]
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        weights = {}
        for name in files:
            weights.update(st.load(os.path.join(model_dir, name))[0])
    else:
        weights, _ = st.load(os.path.join(model_dir, "model.safetensors"))
    P = {k: torch.tensor(np.asarray(v, dtype=np.float64), requires_grad=True) for k, v in weights.items()}
    inp, _ = st.load(in_path)
    ids = torch.tensor(inp["ids"], dtype=torch.long)
    targets = torch.tensor(inp["targets"], dtype=torch.long)
    logits = forward(cfg, P, ids)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    loss.backward()
    out = {"logits": logits.detach().numpy(), "loss": np.array([loss.item()])}
    for k, v in P.items():
        out["grad." + k] = v.grad.numpy()
    st.save(out_path, out, metadata={"generator": f"llama_ref.py torch {torch.__version__}"})


if __name__ == "__main__":
    main()
