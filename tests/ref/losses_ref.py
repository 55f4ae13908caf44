#!/usr/bin/python3
"""Independent PyTorch reference for src/distill/losses.cpp (dense and sparse distillation losses).

Written straight from the formulas in docs/losses.md, in float64 and in probability space
(softmax, explicit sums, explicit (K+1)-bucket distributions), so that it shares no numerical
tricks with the C++ code (which works in log space). Slow and plain on purpose.

usage: losses_ref.py IN.safetensors OUT.safetensors

IN holds, for each case C, the tensors
    C.student (N, V) f64   C.teacher (N, V) f64   C.targets (N) i64
    C.ids (N, K) i64       C.logprobs (N, K) f64  (the sparse teacher, log p at temperature 1)
and the metadata entry C = JSON {"kind", "tau", "ce_weight", "beta", "alpha", "rest_eps"}.
OUT gets C.dense.loss (1), C.dense.grad (N, V), C.sparse.loss (1), C.sparse.grad (N, V): the loss
and its gradient with respect to the student logits; and C.sparse.loss_sens (1),
C.sparse.grad_sens (1): how much the sparse loss and gradient move when the teacher's rest mass
moves by its rounding uncertainty (see rest_uncertainty), an allowance for the comparison.
"""

import decimal
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402

IGNORE_INDEX = -100
decimal.getcontext().prec = 60


def kl(a, b):
    """Rows of sum_i a_i log(a_i / b_i), terms with a_i = 0 left out (0 log 0 = 0). (N, C) -> (N)"""
    out = []
    for ai, bi in zip(a, b):
        m = ai > 0
        out.append((ai[m] * (torch.log(ai[m]) - torch.log(bi[m]))).sum())
    return torch.stack(out) if out else a.new_zeros(0)


def divergence(p, q, o):
    """D(p, q) per row for probability rows p (teacher), q (student). (N, C) -> (N)"""
    kind = o["kind"]
    if kind == "fkl":
        return kl(p, q)
    if kind == "rkl":
        return kl(q, p)
    if kind == "jsd":
        beta = o["beta"]
        # TRL GKDTrainer.generalized_jsd_loss: beta = 0 is forward KL, beta = 1 reverse KL.
        if beta == 0:
            return kl(p, q)
        if beta == 1:
            return kl(q, p)
        m = beta * p + (1 - beta) * q
        return beta * kl(p, m) + (1 - beta) * kl(q, m)
    if kind == "sfkl":
        a = o["alpha"]
        return kl(p, a * p + (1 - a) * q)
    if kind == "srkl":
        a = o["alpha"]
        return kl(q, a * q + (1 - a) * p)
    if kind == "tv":
        return 0.5 * (p - q).abs().sum(1)
    raise ValueError(f"unknown kind {kind}")


def total(student, targets, d_rows, o):
    """(1 - w) tau^2 mean(D) + w mean(CE) over the rows with a target; CE alone for 'ce'."""
    valid = targets != IGNORE_INDEX
    n = max(int(valid.sum()), 1)
    w = 1.0 if o["kind"] == "ce" else o["ce_weight"]
    loss = student.new_zeros(())
    if o["kind"] != "ce" and w < 1:
        loss = loss + (1 - w) * o["tau"] ** 2 * d_rows[valid].sum() / n
    if w > 0:
        q1 = torch.softmax(student, dim=1)
        rows = valid.nonzero().squeeze(1)
        ce = -torch.log(q1[rows, targets[rows]])
        loss = loss + w * ce.sum() / n
    return loss


def dense(student, teacher, targets, o):
    tau = o["tau"]
    p = torch.softmax(teacher / tau, dim=1)
    q = torch.softmax(student / tau, dim=1)
    d = divergence(p, q, o) if o["kind"] != "ce" else None
    return total(student, targets, d, o)


def rest_exact(logprobs_row):
    """1 - sum exp(logprobs), exactly (60 decimal digits), rounded to float at the end: the rest of
    a top-K teacher can be far below float64 eps, where 1 - sum in floats is pure noise."""
    total = sum((decimal.Decimal(x).exp() for x in logprobs_row if x != -math.inf),
                decimal.Decimal(0))
    return float(decimal.Decimal(1) - total)


def rest_uncertainty(logprobs, eps):
    """How far a floating-point evaluation of r = 1 - sum p from the stored log-probs may be off.
    The C++ code takes r = -expm1(m + log1p(s)), m = max log p, s = sum of the other p / p_max:
    when r ~ 0 the two terms cancel (log1p(s) ~ -m), leaving an absolute error of ~2 eps |m|.
    Where r is not far above that, the loss is ill-conditioned in r (reverse KL has
    d/dr = -q_rest / r), and the comparison allows for it (see main)."""
    m = logprobs.clamp(max=0).max(1, keepdim=True).values
    return 2 * eps * m.abs()


def sparse(student, ids, logprobs, targets, o, r_shift=0.0):
    """r_shift moves each row's rest by r_shift * (its rounding uncertainty, see main)."""
    tau = o["tau"]
    N, V = student.shape
    K = ids.shape[1]
    # Student: full softmax at tau, its mass on the teacher's ids, and the rest summed explicitly.
    q = torch.softmax(student / tau, dim=1)
    outside = torch.ones(N, V, dtype=torch.bool)
    outside[torch.arange(N).unsqueeze(1), ids] = False
    q_top = q.gather(1, ids)
    q_rest = (q * outside).sum(1, keepdim=True)
    # Teacher: probabilities at tau = 1, rest r = 1 - sum, at least K eps (below that it is
    # rounding noise), 0 when the student has no rest; then p^(1/tau) renormalised over the
    # K+1 buckets.
    p_top = torch.exp(logprobs.clamp(max=0))
    r = torch.tensor([[rest_exact(row)] for row in logprobs.clamp(max=0).tolist()],
                     dtype=torch.float64).reshape(N, 1)
    r = (r + r_shift * rest_uncertainty(logprobs, o["rest_eps"])).clamp(min=K * o["rest_eps"])
    r = torch.where(q_rest > 0, r, torch.zeros_like(r))
    p = torch.cat([p_top, r], 1) ** (1 / tau)
    p = p / p.sum(1, keepdim=True)
    qb = torch.cat([q_top, q_rest], 1)
    d = divergence(p, qb, o) if o["kind"] != "ce" else None
    return total(student, targets, d, o)


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: losses_ref.py IN.safetensors OUT.safetensors")
    tensors, meta = st.load(sys.argv[1])
    out = {}
    for case, js in sorted(meta.items()):
        o = json.loads(js)
        t = lambda name: torch.from_numpy(tensors[f"{case}.{name}"])  # noqa: E731
        targets = t("targets")

        def run(form, r_shift=0.0):
            s = t("student").clone().requires_grad_(True)
            if form == "dense":
                loss = dense(s, t("teacher"), targets, o)
            else:
                loss = sparse(s, t("ids"), t("logprobs"), targets, o, r_shift)
            if loss.requires_grad:
                loss.backward()
            grad = s.grad if s.grad is not None else torch.zeros_like(s)
            return loss.detach().reshape(1), grad

        for form in ("dense", "sparse"):
            loss, grad = run(form)
            out[f"{case}.{form}.loss"] = loss.numpy()
            out[f"{case}.{form}.grad"] = grad.numpy()
        # Sensitivity of the sparse loss to the rounding uncertainty of the teacher's rest: the
        # part of any difference that the inputs themselves leave undetermined.
        loss_sens = torch.zeros(1, dtype=torch.float64)
        grad_sens = torch.zeros(1, dtype=torch.float64)
        if o["kind"] != "ce":
            loss, grad = run("sparse")
            for shift in (-1.0, 1.0):
                l2, g2 = run("sparse", shift)
                loss_sens = torch.maximum(loss_sens, (l2 - loss).abs())
                grad_sens = torch.maximum(grad_sens, (g2 - grad).abs().max().reshape(1))
        out[f"{case}.sparse.loss_sens"] = loss_sens.numpy()
        out[f"{case}.sparse.grad_sens"] = grad_sens.numpy()
    st.save(sys.argv[2], out, metadata={"generator": "tests/ref/losses_ref.py",
                                        "torch": torch.__version__, "numpy": np.__version__})


if __name__ == "__main__":
    main()
