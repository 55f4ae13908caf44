#!/usr/bin/python3
"""Independent reference for src/distill/cross-tokenizer.cpp: the loss of a student whose tokenizer
differs from the teacher cache's, written from docs/losses.md ("Across tokenizers") in plain Python
and float64, with the sparse KD losses of losses_ref.py (probability space).

usage: xtok_ref.py IN.safetensors OUT.safetensors
       xtok_ref.py api IN.json OUT.json

IN holds
    student_ids (Ns) i64, teacher_ids (Nt) i64          the two shards (the same text)
    student_bytes (.) u8, student_offsets (Vs+1) i64     what each student id spells
    student_special (Vs) u8                              1 for a special token
    teacher_bytes, teacher_offsets, teacher_special      the same for the teacher's tokenizer
    cache_ids (W, Tt, K) i64, cache_logprobs (W, Tt, K) f64   the teacher cache as read
and, for each case C (metadata C = JSON {"kind", "tau", "ce_weight", "beta", "alpha", "rest_eps",
"mapping", "seq_len"}):
    C.starts (B) i64        where each of the batch's student windows starts
    C.logits (B*T, Vs) f64  the student's logits on those windows
    C.to_student (Vt) i64   distill's teacher -> student id map ("first" only; checked, not trusted)
OUT gets C.loss (1) and C.rows (1): the number of positions the KD term was taken on.

The api mode rebuilds the student's targets from an API dataset of another tokenizer's teacher
(train --sequences, docs/losses.md "Across tokenizers"): IN.json holds
    "spellings": [hex bytes of each student id], "special": [0/1 per student id],
    "first_of": {hex bytes: the first id of the student's encoding of those bytes, or -1},
    "samples": [{"entries": [{"bytes": [...], "top": [[bytes list, logprob], ...]}, ...],
                 "student_ids": [the student's encoding of the completion]}, ...]
and OUT.json gets, per sample and student token, the targets [[id, log mass], ...] (most likely
first): where student token j begins at a byte where teacher entry i begins, each of entry i's
alternatives gives its probability to the student token spelling exactly its bytes, else to
first_of when that token's spelling is a prefix of the bytes; summed per student id.
"""

import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402
import losses_ref  # noqa: E402


def spellings(t, name):
    data, offs = t[name + "_bytes"].tobytes(), t[name + "_offsets"]
    return [data[offs[i]:offs[i + 1]] for i in range(len(offs) - 1)]


def byte_ends(ids, spelled):
    ends, at = [], 0
    for i in ids:
        at += len(spelled[i])
        ends.append(at)
    return ends


def api(src, dst):
    with open(src) as f:
        c = json.load(f)
    spell = [bytes.fromhex(h) for h in c["spellings"]]
    special = c["special"]
    exact = {}
    for i, b in enumerate(spell):
        if not special[i]:
            exact.setdefault(b, i)
    first_of = {bytes.fromhex(k): v for k, v in c["first_of"].items()}

    def to_student(b):
        if b in exact:
            return exact[b]
        u = first_of.get(b, -1)
        if u >= 0 and not special[u] and b.startswith(spell[u]):
            return u
        return -1

    out = []
    for smp in c["samples"]:
        starts, at = {}, 0
        for i, e in enumerate(smp["entries"]):
            starts.setdefault(at, i)
            at += len(e["bytes"])
        targets, at = [], 0
        for sid in smp["student_ids"]:
            row = []
            if at in starts:
                mass = {}
                for alt_bytes, lp in smp["entries"][starts[at]]["top"]:
                    u = to_student(bytes(alt_bytes))
                    if u >= 0:
                        mass[u] = mass.get(u, 0.0) + math.exp(lp)
                row = sorted(([u, min(0.0, math.log(m))] for u, m in mass.items()), key=lambda x: -x[1])
            targets.append(row)
            at += len(spell[sid])
        out.append(targets)
    with open(dst, "w") as f:
        json.dump(out, f)


def main():
    if sys.argv[1] == "api":
        api(sys.argv[2], sys.argv[3])
        return
    tensors, meta = st.load(sys.argv[1])
    s_sp, t_sp = spellings(tensors, "student"), spellings(tensors, "teacher")
    s_special, t_special = tensors["student_special"], tensors["teacher_special"]
    s_ids, t_ids = tensors["student_ids"].tolist(), tensors["teacher_ids"].tolist()
    assert b"".join(s_sp[i] for i in s_ids) == b"".join(t_sp[i] for i in t_ids), "the shards spell different texts"
    cache_ids, cache_lp = tensors["cache_ids"], tensors["cache_logprobs"]
    W, Tt, K = cache_ids.shape

    # alignment: student position j and teacher position i predict from the same bytes
    t_ends, s_ends = byte_ends(t_ids, t_sp), byte_ends(s_ids, s_sp)
    teacher_at = {e: i for i, e in enumerate(t_ends) if i < W * Tt and i + 1 < len(t_ids)}
    aligned = {j: teacher_at[e] for j, e in enumerate(s_ends) if e in teacher_at and j + 1 < len(s_ids)}

    by_bytes = {}
    for u, b in enumerate(s_sp):
        if not s_special[u]:
            by_bytes.setdefault(b, u)
    exact = [-1 if (t_special[v] or not t_sp[v]) else by_bytes.get(t_sp[v], -1) for v in range(len(t_sp))]

    out = {}
    for case, js in meta.items():
        o = json.loads(js)
        T = o["seq_len"]
        if o["mapping"] == "exact":
            to_student = exact
        else:
            to_student = tensors[case + ".to_student"].tolist()
            for v, u in enumerate(to_student):
                if u < 0:
                    continue
                # the student token that starts the teacher token's spelling: a prefix of it, the
                # same token where one has exactly those bytes, never a special one
                assert not s_special[u] and not t_special[v], (v, u)
                assert t_sp[v].startswith(s_sp[u]) and s_sp[u], (v, u, t_sp[v], s_sp[u])
                if exact[v] >= 0:
                    assert u == exact[v], (v, u, exact[v])
        starts = tensors[case + ".starts"].tolist()
        logits = torch.from_numpy(tensors[case + ".logits"]).to(torch.float64)
        targets = torch.tensor([s_ids[s + p + 1] for s in starts for p in range(T)], dtype=torch.int64)
        kd_rows, kd_terms = [], []
        o_kd = dict(o, ce_weight=0.0)
        for b, s in enumerate(starts):
            for p in range(T):
                j = s + p
                if j not in aligned:
                    continue
                i = aligned[j]
                mass = {}
                for k in range(K):
                    u = to_student[int(cache_ids[i // Tt, i % Tt, k])]
                    lp = float(cache_lp[i // Tt, i % Tt, k])
                    if u < 0 or not np.isfinite(lp):
                        continue
                    mass[u] = mass.get(u, 0.0) + np.exp(lp)
                if not mass:
                    continue
                ids = torch.tensor([list(mass.keys())], dtype=torch.int64)
                lps = torch.tensor([[np.log(min(1.0, m)) for m in mass.values()]], dtype=torch.float64)
                row = b * T + p
                kd_rows.append(row)
                kd_terms.append(losses_ref.sparse(logits[row:row + 1], ids, lps, targets[row:row + 1], o_kd))
        w = o["ce_weight"]
        loss = torch.zeros((), dtype=torch.float64)
        if kd_terms:
            loss = loss + (1 - w) * torch.stack(kd_terms).mean()
        if w > 0:
            loss = loss + w * torch.nn.functional.cross_entropy(logits, targets)
        out[case + ".loss"] = np.array([loss.item()])
        out[case + ".rows"] = np.array([float(len(kd_rows))])
    st.save(sys.argv[2], out)


if __name__ == "__main__":
    main()
