"""The PyTorch-in-Python peer for bench-train-step: one training step of the demo's models (Llama
architecture, same shapes, batch, threads and BLAS; AdamW and gradient clipping), timed the way
TRL / torchtune do it.

usage: train_step.py MODE STEPS WARMUP STUDENT_DIR TEACHER_DIR CACHE_INPUTS [bf16]
  MODE ce:     plain next-token cross-entropy of STUDENT_DIR (a pretraining step; TEACHER_DIR unused)
  MODE dense:  live teacher forward (no grad) + dense forward KL over the full vocabulary
  MODE sparse: teacher top-K ids/log-probs given (read from CACHE_INPUTS, a safetensors file with
               "ids" (B,T+1) int64, "top_ids" (B,T,K) int64, "top_lp" (B,T,K) f32) + (K+1)-bucket
               forward KL
  bf16: the forward under torch.autocast("cpu", dtype=torch.bfloat16) (mixed precision)
Prints one JSON line: {"tokens_per_second": ..., "seconds_per_step": ...}.
Run with /usr/bin/python3 (Debian python3-torch); set OMP_NUM_THREADS like the C++ side.
"""

import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "ref"))
import st  # noqa: E402


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C, H = cfg["hidden_size"], cfg["num_attention_heads"]
        Hkv = cfg.get("num_key_value_heads", H)
        self.H, self.Hkv, self.D = H, Hkv, C // H
        bias = cfg.get("attention_bias", False)
        self.q_proj = nn.Linear(C, H * self.D, bias=bias)
        self.k_proj = nn.Linear(C, Hkv * self.D, bias=bias)
        self.v_proj = nn.Linear(C, Hkv * self.D, bias=bias)
        self.o_proj = nn.Linear(H * self.D, C, bias=False)
        I = cfg["intermediate_size"]
        self.gate_proj = nn.Linear(C, I, bias=False)
        self.up_proj = nn.Linear(C, I, bias=False)
        self.down_proj = nn.Linear(I, C, bias=False)
        eps = cfg.get("rms_norm_eps", 1e-5)
        self.input_layernorm = RMSNorm(C, eps)
        self.post_attention_layernorm = RMSNorm(C, eps)

    def forward(self, x, cos, sin, mask):
        B, T, C = x.shape
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(B, T, self.H, self.D).transpose(1, 2)
        k = self.k_proj(h).view(B, T, self.Hkv, self.D).transpose(1, 2)
        v = self.v_proj(h).view(B, T, self.Hkv, self.D).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.Hkv != self.H:
            k = k.repeat_interleave(self.H // self.Hkv, dim=1)
            v = v.repeat_interleave(self.H // self.Hkv, dim=1)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.D) + mask, dim=-1)
        x = x + self.o_proj((att @ v).transpose(1, 2).reshape(B, T, C))
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Llama(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        C, V = cfg["hidden_size"], cfg["vocab_size"]
        self.embed = nn.Embedding(V, C)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg["num_hidden_layers"]))
        self.norm = RMSNorm(C, cfg.get("rms_norm_eps", 1e-5))
        self.tied = cfg.get("tie_word_embeddings", False)
        if not self.tied:
            self.lm_head = nn.Linear(C, V, bias=False)
        D = C // cfg["num_attention_heads"]
        inv = 1.0 / (cfg.get("rope_theta", 10000.0) ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
        self.inv_freq = inv

    def forward(self, ids):
        B, T = ids.shape
        freqs = torch.outer(torch.arange(T, dtype=torch.float64), self.inv_freq)
        emb = torch.cat((freqs, freqs), -1)
        cos, sin = emb.cos().float(), emb.sin().float()
        mask = torch.full((T, T), float("-inf")).triu(1)
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        x = self.norm(x)
        return x @ self.embed.weight.T if self.tied else self.lm_head(x)


def load(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    m = Llama(cfg)
    w, _ = st.load(os.path.join(model_dir, "model.safetensors"))
    sd = {}
    for k, v in w.items():
        k2 = k.replace("model.embed_tokens.", "embed.").replace("model.layers.", "layers.")
        k2 = k2.replace("self_attn.", "").replace("mlp.", "").replace("model.norm.", "norm.")
        sd[k2] = torch.tensor(np.asarray(v, dtype=np.float32))
    m.load_state_dict(sd, strict=True)
    return m


def sparse_fkl(student_logits, top_ids, top_lp):
    # (K+1)-bucket forward KL: teacher top-K + rest, student gathered + rest
    lq = torch.log_softmax(student_logits, -1)
    lq_top = lq.gather(-1, top_ids)
    masked = student_logits.scatter(-1, top_ids, float("-inf"))
    lq_rest = torch.logsumexp(masked, -1) - torch.logsumexp(student_logits, -1)
    p_top = top_lp.exp()
    p_rest = (1 - p_top.sum(-1)).clamp_min(1e-8)
    kl = (p_top * (top_lp - lq_top)).sum(-1) + p_rest * (p_rest.log() - lq_rest)
    return kl.mean()


def main():
    mode, steps, warmup, student_dir, teacher_dir, inputs = sys.argv[1:7]
    bf16 = len(sys.argv) > 7 and sys.argv[7] == "bf16"
    steps, warmup = int(steps), int(warmup)
    torch.manual_seed(0)
    student = load(student_dir)
    teacher = load(teacher_dir) if mode == "dense" else None
    data, _ = st.load(inputs)
    ids = torch.tensor(data["ids"], dtype=torch.long)
    top_ids = torch.tensor(data["top_ids"], dtype=torch.long)
    top_lp = torch.tensor(data["top_lp"], dtype=torch.float32)
    B, T = ids.shape[0], ids.shape[1] - 1
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    inp = ids[:, :T]

    def step():
        opt.zero_grad(set_to_none=False)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = student(inp)
        logits = logits.float()
        V = logits.shape[-1]
        if mode == "ce":
            loss = F.cross_entropy(logits.reshape(-1, V), ids[:, 1:].reshape(-1))
        elif mode == "dense":
            with torch.no_grad():
                t = teacher(inp)
            loss = F.kl_div(torch.log_softmax(logits.reshape(-1, V), -1),
                            torch.log_softmax(t.reshape(-1, V), -1), log_target=True,
                            reduction="batchmean")
        else:
            loss = sparse_fkl(logits.reshape(-1, V), top_ids.reshape(-1, top_ids.shape[-1]),
                              top_lp.reshape(-1, top_lp.shape[-1]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    print(json.dumps({"tokens_per_second": B * T * steps / dt, "seconds_per_step": dt / steps,
                      "threads": torch.get_num_threads(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
