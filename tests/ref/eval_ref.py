"""Independent reference for distill eval's multiple-choice scoring, written from
lm-evaluation-harness (lm_eval/api/model.py _encode_pair, models/huggingface.py
_loglikelihood_tokens, api/task.py process_results for multiple_choice, api/metrics.py
mean_stderr): each choice is the request (context, " " + choice); whitespace at the end of the
context moves to the continuation; the continuation's tokens are
encode(context + continuation)[len(encode(context)):]; the sequence keeps its last W tokens; acc
is the argmax of the summed log-probs, acc_norm divides by the choice's length in characters,
acc_bytes by its UTF-8 bytes; stderr = sample std (n - 1) / sqrt(n).

usage: eval_ref.py MODEL_DIR INPUT.json OUTPUT.json
  INPUT: {"window": W, "items": [{"context", "choices", "gold"}], "encodings": {string: [ids]}}
  (the encodings come from distill's tokenizer: this script checks the rest, not tokenization)
Run with Debian's /usr/bin/python3 (python3-torch).
"""

import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_ref  # noqa: E402
import st  # noqa: E402

torch.set_default_dtype(torch.float64)


def encode_pair(enc, context, continuation):
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = enc[context + continuation]
    ctx = enc[context]
    return ctx, whole[len(ctx):]


def mean_stderr(xs):
    xs = np.asarray(xs, dtype=np.float64)
    return float(xs.mean()), float(xs.std(ddof=1) / math.sqrt(len(xs)))


def main():
    model_dir, in_path, out_path = sys.argv[1:4]
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    weights, _ = st.load(os.path.join(model_dir, "model.safetensors"))
    P = {k: torch.tensor(np.asarray(v, dtype=np.float64)) for k, v in weights.items()}
    with open(in_path) as f:
        inp = json.load(f)
    W = inp["window"]
    enc = inp["encodings"]
    lls, acc, acc_norm, acc_bytes = [], [], [], []
    with torch.no_grad():
        for it in inp["items"]:
            ll = []
            for c in it["choices"]:
                ctx, cont = encode_pair(enc, it["context"], " " + c)
                seq = (ctx + cont)[-W:]
                logits = llama_ref.forward(cfg, P, torch.tensor([seq[:-1]]))[0]
                logp = torch.log_softmax(logits, -1)
                n = len(cont)
                rows = logp[-n:]
                ll.append(float(rows[torch.arange(n), torch.tensor(seq[-n:])].sum()))
            ll = np.array(ll)
            chars = np.array([float(len(c)) for c in it["choices"]])
            nbytes = np.array([float(len(c.encode("utf-8"))) for c in it["choices"]])
            acc.append(1.0 if np.argmax(ll) == it["gold"] else 0.0)
            acc_norm.append(1.0 if np.argmax(ll / chars) == it["gold"] else 0.0)
            acc_bytes.append(1.0 if np.argmax(ll / nbytes) == it["gold"] else 0.0)
            lls.append(ll.tolist())
    out = {"loglik": lls, "generator": f"eval_ref.py torch {torch.__version__}"}
    for name, xs in (("acc", acc), ("acc_norm", acc_norm), ("acc_bytes", acc_bytes)):
        m, s = mean_stderr(xs)
        out[name] = m
        out[name + "_stderr"] = s
    with open(out_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
