"""torch.optim.AdamW on the parameters and gradient sequence that tests/unit/test-train.cpp wrote.

    adamw_ref.py IN.safetensors OUT.safetensors

IN: "<p>.init" (the parameters), "<p>.grads" (steps, *shape), float32; metadata beta1, beta2,
eps, weight_decay and lr (one learning rate per step, comma-separated, %.17g). Parameters of 2 or more dimensions get weight decay, 1-D ones
do not (two parameter groups). Computed in float32, as distill trains.
OUT: "<p>.after" (steps, *shape), the parameters after each step.
"""

import sys

import numpy as np
import torch

sys.path.insert(0, __import__("os").path.dirname(__file__))
import st  # noqa: E402


def main():
    tensors, meta = st.load(sys.argv[1])
    beta1, beta2 = float(meta["beta1"]), float(meta["beta2"])
    eps, wd = float(meta["eps"]), float(meta["weight_decay"])
    lrs = [float(x) for x in meta["lr"].split(",")]
    names = sorted(k[: -len(".init")] for k in tensors if k.endswith(".init"))
    params = {n: torch.tensor(tensors[n + ".init"]).clone().requires_grad_(True) for n in names}
    decay = [params[n] for n in names if params[n].dim() >= 2]
    no_decay = [params[n] for n in names if params[n].dim() < 2]
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": wd})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=float(lrs[0]), betas=(beta1, beta2), eps=eps,
                            amsgrad=False, foreach=False)
    after = {n: [] for n in names}
    for s in range(len(lrs)):
        for g in opt.param_groups:
            g["lr"] = float(lrs[s])
        for n in names:
            params[n].grad = torch.tensor(tensors[n + ".grads"][s]).to(params[n].dtype)
        opt.step()
        for n in names:
            after[n].append(params[n].detach().numpy().copy())
    st.save(sys.argv[2], {n + ".after": np.stack(after[n]) for n in names})


if __name__ == "__main__":
    main()
