#!/usr/bin/python3
"""Independent references for src/guard (the watermark's green test and its statistics).

Written from the definitions in docs/guard.md, with nothing taken from the C++ code:

    guard_ref.py green IN.json OUT.json
        IN: [{"key": hex bytes, "ids": [c_1, ..., c_h, v], "gamma": g}, ...]
        OUT: [{"k", "key_id", "hash", "threshold", "green"}, ...] from Python's xxhash module
        (Debian python3-xxhash): k = XXH3_64(key, 0), key_id = XXH3_64(key, 1),
        hash = XXH3_64(u32-LE ids, k), threshold = floor(g * 2^64) in exact rational arithmetic.

    guard_ref.py binom IN.json OUT.json
        IN: [{"T", "S", "gamma", "exact": bool}, ...]
        OUT: [{"sf": scipy.stats.binom.sf(S - 1, T, gamma) = P(Bin(T, gamma) >= S),
               "log10_exact": log10 of the same tail summed exactly in rational arithmetic
               (gamma taken as the exact value of its double), or null}, ...]

    guard_ref.py ks IN.json OUT.json
        IN: {"name": [p-values], ...}
        OUT: {"name": {"n", "two_sided": {"statistic", "pvalue"}, "greater": {...}}, ...}
        scipy.stats.kstest against Uniform(0, 1); "greater" tests whether the empirical CDF lies
        above the uniform one (p-values too small: false alarms).

    guard_ref.py radio IN.json OUT.json
        IN: {"key": hex, "gamma", "h", "offset", "texts": [[distill score lines], ...]}
        OUT: {"T", "S", "p"}: open-mode radioactivity counted from the suspect's top-1 at each
        position (see radio()), p = scipy.stats.binom.sf(S - 1, T, gamma).

    guard_ref.py soft IN.json OUT.json
        IN: {"key": hex, "gamma", "h", "offset", "top_m", "lines": [distill score lines]}
        OUT: {"pairs", "S", "mean", "log10_p"}: the soft test (see soft()); log10_p is Chernoff's
        bound minimised with scipy.optimize.minimize_scalar.

    guard_ref.py chernoff IN.json OUT.json
        IN: [{"w": [...], "gamma", "s"}, ...]
        OUT: [log10 of min over l >= 0 of exp(-l s) prod (1 - gamma + gamma e^{l w}), ...]

    guard_ref.py noise IN.json OUT.json
        IN: [{"key": u64, "ids": [c_1, ..., c_n, v]}, ...]
        OUT: [z, ...]: the standard normal of `serve --logprob-noise` (docs/guard.md): XXH3-128
        with seed key of the u32-LE bytes of the last (up to) 4 context ids and v; u1 = (low64 >> 11
        + 1/2) / 2^53, u2 = (high64 >> 11) / 2^53, z = sqrt(-2 ln u1) cos(2 pi u2).
"""

import json
import math
import struct
import sys
from fractions import Fraction

import scipy
import scipy.stats
import xxhash


def green(cases):
    out = []
    for c in cases:
        key = bytes.fromhex(c["key"])
        k = xxhash.xxh3_64_intdigest(key, seed=0)
        key_id = xxhash.xxh3_64_intdigest(key, seed=1)
        data = struct.pack("<%dI" % len(c["ids"]), *c["ids"])
        h = xxhash.xxh3_64_intdigest(data, seed=k)
        threshold = math.floor(Fraction(c["gamma"]) * 2**64)
        out.append({"k": k, "key_id": key_id, "hash": h, "threshold": threshold, "green": h < threshold})
    return out


def log10_int(n):
    """log10 of a positive integer of any size."""
    shift = max(0, n.bit_length() - 60)
    return math.log10(n >> shift) + shift * math.log10(2)


def exact_log10_tail(T, S, gamma):
    """log10 P(Bin(T, g) >= S), g the exact rational value of the double gamma."""
    g = Fraction(gamma)
    a, d = g.numerator, g.denominator
    b = d - a
    total = 0
    term = math.comb(T, S) * a**S * b ** (T - S)
    for k in range(S, T + 1):
        total += term
        if k < T:
            term = term * (T - k) * a // ((k + 1) * b)  # exact: C(T, k+1) a^(k+1) b^(T-k-1)
    return log10_int(total) - T * log10_int(d)


def binom(cases):
    out = []
    for c in cases:
        T, S, g = c["T"], c["S"], c["gamma"]
        sf = float(scipy.stats.binom.sf(S - 1, T, g))
        ex = exact_log10_tail(T, S, g) if c.get("exact") else None
        out.append({"sf": sf, "log10_exact": ex})
    return out


def ks(samples):
    out = {}
    for name, ps in samples.items():
        r2 = scipy.stats.kstest(ps, "uniform", alternative="two-sided")
        rg = scipy.stats.kstest(ps, "uniform", alternative="greater")
        out[name] = {
            "n": len(ps),
            "two_sided": {"statistic": float(r2.statistic), "pvalue": float(r2.pvalue)},
            "greater": {"statistic": float(rg.statistic), "pvalue": float(rg.pvalue)},
        }
    return out


def radio(c):
    """Open-mode radioactivity from a suspect's per-position output (distill score lines): the
    tuples at position pos are (ids[pos-h .. pos-1], v) for v each of the suspect's top_k at pos,
    the context from the text's own tokens (pos - h >= offset, offset 1 when a BOS leads), each
    distinct tuple once."""
    key = bytes.fromhex(c["key"])
    k = xxhash.xxh3_64_intdigest(key, seed=0)
    threshold = math.floor(Fraction(c["gamma"]) * 2**64)
    h, offset = c["h"], c["offset"]
    seen, S = set(), 0
    for lines in c["texts"]:
        ids = {}
        for l in lines:
            ids[l["pos"]] = l["id"]
        for l in lines:
            pos = l["pos"]
            if pos - h < offset:
                continue
            for v, _ in l["top"][: c.get("top_k", 1)]:
                t = tuple(ids[j] for j in range(pos - h, pos)) + (v,)
                if t in seen:
                    continue
                seen.add(t)
                S += xxhash.xxh3_64_intdigest(struct.pack("<%dI" % len(t), *t), seed=k) < threshold
    T = len(seen)
    return {"T": T, "S": S, "p": float(scipy.stats.binom.sf(S - 1, T, c["gamma"]))}


def soft(c):
    """The soft test from a suspect's per-position output (distill score lines with its top_m):
    for each distinct context (ids[pos-h .. pos-1], pos - h >= offset) the suspect's probabilities
    summed over the positions after it and divided by their count; S = sum of those weights over
    the green (context, token) pairs; P(S >= s) for independent Bernoulli(gamma) pairs bounded by
    min over l of exp(-l s) prod (1 - gamma + gamma e^{l w})."""
    key = bytes.fromhex(c["key"])
    k = xxhash.xxh3_64_intdigest(key, seed=0)
    threshold = math.floor(Fraction(c["gamma"]) * 2**64)
    h, offset, m, gamma = c["h"], c["offset"], c["top_m"], c["gamma"]
    ids = {l["pos"]: l["id"] for l in c["lines"]}
    mass, count = {}, {}
    for l in c["lines"]:
        pos = l["pos"]
        if pos - h < offset:
            continue
        ctx = tuple(ids[j] for j in range(pos - h, pos))
        count[ctx] = count.get(ctx, 0) + 1
        d = mass.setdefault(ctx, {})
        for v, lp in l["top"][:m]:
            d[v] = d.get(v, 0.0) + math.exp(lp)
    w, S = [], 0.0
    for ctx, d in mass.items():
        for v, x in d.items():
            x /= count[ctx]
            w.append(x)
            t = ctx + (v,)
            if xxhash.xxh3_64_intdigest(struct.pack("<%dI" % len(t), *t), seed=k) < threshold:
                S += x
    return {"pairs": len(w), "S": S, "mean": gamma * sum(w), "log10_p": chernoff_log10(w, gamma, S)}


def chernoff_log10(w, gamma, s):
    import numpy as np
    import scipy.optimize
    wa = np.array(w, dtype=float)
    if s <= gamma * wa.sum():
        return 0.0

    def f(l):
        return -l * s + np.sum(np.logaddexp(math.log(1 - gamma), math.log(gamma) + l * wa))

    best = scipy.optimize.minimize_scalar(f, bounds=(0.0, 1e4), method="bounded",
                                          options={"xatol": 1e-10, "maxiter": 2000})
    return min(0.0, float(best.fun)) / math.log(10)


def chernoff(cases):
    return [chernoff_log10(c["w"], c["gamma"], c["s"]) for c in cases]


def noise(cases):
    out = []
    for c in cases:
        ids = c["ids"]
        tup = ids[:-1][-4:] + ids[-1:]
        h = xxhash.xxh3_128_intdigest(struct.pack("<%dI" % len(tup), *tup), seed=c["key"])
        low, high = h & (2**64 - 1), h >> 64
        u1 = ((low >> 11) + 0.5) / 2**53
        u2 = (high >> 11) / 2**53
        out.append(math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2))
    return out


def main():
    mode, src, dst = sys.argv[1:4]
    with open(src) as f:
        data = json.load(f)
    result = {"green": green, "binom": binom, "ks": ks, "radio": radio, "soft": soft, "chernoff": chernoff,
              "noise": noise}[mode](data)
    with open(dst, "w") as f:
        json.dump({"xxhash": xxhash.VERSION, "scipy": scipy.__version__, "result": result}, f)


if __name__ == "__main__":
    main()
