#!/usr/bin/python3
"""Independent reference for src/distill/on-policy.cpp's loss: TRL's GKDTrainer on fixed samples,
written from its published formula (GKDTrainer.generalized_jsd_loss and compute_loss) in PyTorch,
float64: the logits are shifted so that position t predicts token t + 1, the prompt's labels are
-100, and the generalized JSD of (teacher, student) at temperature tau is averaged over the
completion tokens ("batchmean" with labels). beta = 0 is KL(teacher || student), beta = 1 is
KL(student || teacher). distill multiplies by tau^2 (docs/losses.md); TRL does not, so the
factor is applied here explicitly.

usage: gkd_ref.py IN.safetensors OUT.safetensors
IN: for each case C (metadata C = JSON {"beta", "tau", "prompt_len"}):
    C.seqs (B, L) i64, C.student (B, L, V) f64, C.teacher (B, L, V) f64  (logits over the whole sequence)
OUT: C.loss (1), C.grad (B, L, V): d loss / d student logits.
"""

import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402


def generalized_jsd_loss(student_logits, teacher_logits, labels, beta, temperature):
    s = F.log_softmax(student_logits / temperature, dim=-1)
    t = F.log_softmax(teacher_logits / temperature, dim=-1)
    if beta == 0:
        jsd = F.kl_div(s, t, reduction="none", log_target=True)
    elif beta == 1:
        jsd = F.kl_div(t, s, reduction="none", log_target=True)
    else:
        b = torch.tensor(beta, dtype=s.dtype)
        m = torch.logsumexp(torch.stack([s + torch.log(1 - b), t + torch.log(b)]), dim=0)
        jsd = b * F.kl_div(m, t, reduction="none", log_target=True) + (1 - b) * F.kl_div(m, s, reduction="none", log_target=True)
    mask = labels != -100
    return jsd[mask].sum() / mask.sum()


def main():
    tensors, meta = st.load(sys.argv[1])
    out = {}
    for case, js in meta.items():
        o = json.loads(js)
        seqs = torch.from_numpy(tensors[case + ".seqs"])
        student = torch.from_numpy(tensors[case + ".student"]).requires_grad_(True)
        teacher = torch.from_numpy(tensors[case + ".teacher"])
        P = o["prompt_len"]
        labels = seqs.clone()
        labels[:, :P] = -100
        # compute_loss: logits[:, P-1:-1] against labels[:, P:]
        loss = generalized_jsd_loss(student[:, P - 1:-1], teacher[:, P - 1:-1], labels[:, P:], o["beta"], o["tau"])
        loss = loss * o["tau"] ** 2
        loss.backward()
        out[case + ".loss"] = loss.detach().reshape(1).numpy()
        out[case + ".grad"] = student.grad.numpy()
    st.save(sys.argv[2], out)


if __name__ == "__main__":
    main()
