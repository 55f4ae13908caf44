"""Independent reference of antidistillation sampling (Savani et al. 2025), in float64 on
llama_ref.py's decoder: the served distribution is log_softmax(teacher logits + lambda * Delta),
Delta(v) = <g, d/dtheta log p_proxy(v)>, g the gradient of the proxy's mean cross-entropy on the
data windows. distill computes Delta by a finite difference at theta +- eps g in float32; here it
is the exact directional derivative (forward-mode, torch.autograd.functional.jvp).

usage: antidistill_ref.py PROXY_DIR TEACHER_DIR IN.json OUT.json
  IN: {"windows": [[ids] * (L + 1)] (W windows), "sequence": [ids], "lambda": float}
  OUT: {"adjusted": [[log-probs over V] for positions 0 .. T-2], "plain": [...],
        "loss": proxy's mean cross-entropy on the windows, "grad_norm": |g|}
Run with Debian's /usr/bin/python3 (python3-torch).
"""

import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_ref  # noqa: E402
import st  # noqa: E402


def load(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    weights, _ = st.load(os.path.join(model_dir, "model.safetensors"))
    return cfg, {k: torch.tensor(np.asarray(v, dtype=np.float64)) for k, v in weights.items()}


def main():
    proxy_dir, teacher_dir, in_path, out_path = sys.argv[1:5]
    with open(in_path) as f:
        inp = json.load(f)
    pcfg, P = load(proxy_dir)
    tcfg, Tw = load(teacher_dir)
    names = sorted(P)

    windows = torch.tensor(inp["windows"], dtype=torch.long)
    x, y = windows[:, :-1], windows[:, 1:]
    Pg = {k: v.clone().requires_grad_(True) for k, v in P.items()}
    logits = llama_ref.forward(pcfg, Pg, x)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    loss.backward()
    g = tuple(Pg[k].grad for k in names)

    seq = torch.tensor([inp["sequence"]], dtype=torch.long)

    def proxy_logprobs(*params):
        return torch.log_softmax(llama_ref.forward(pcfg, dict(zip(names, params)), seq)[0], -1)

    _, delta = torch.autograd.functional.jvp(proxy_logprobs, tuple(P[k] for k in names), g)
    teacher = llama_ref.forward(tcfg, Tw, seq)[0]
    lam = float(inp["lambda"])
    adjusted = torch.log_softmax(teacher + lam * delta, -1)[:-1]
    plain = torch.log_softmax(teacher, -1)[:-1]
    out = {"adjusted": adjusted.tolist(), "plain": plain.tolist(), "loss": loss.item(),
           "grad_norm": float(sum((t * t).sum() for t in g).sqrt()), "torch": torch.__version__}
    with open(out_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
