#!/usr/bin/env python3
"""forward.py — an independent float64 numpy forward pass of llama/qwen2 GGUF models (the reference
the C forward pass is checked against).

Written from docs/REFERENCE.md §1.4-1.7 only: hyper-parameters from `<arch>.*` metadata, weights
dequantised to float64 by the test reader (gguf.py / quants.py, which share nothing with the C code),
the whole sequence at once with a causal mask (no KV cache), RoPE NORM (pairs 2i, 2i+1) for llama and
NEOX (pairs i, i+n_rot/2) for qwen2, optional rope_freqs divisors and linear scaling, GQA, Q/K/V biases.

Usage:
    forward.py MODEL --ids 1,2,3 [--out LOGITS.f64]          logits for every position ([n][V] float64)
    forward.py MODEL --ids 1,2,3 --compare C.f32 --tol 1e-4  compare with C logits ([n][V] float32):
        prints "max_abs_diff D max_abs_logit M rel R" and exits 1 if R > tol
    forward.py MODEL --greedy 64                             greedy ids from BOS (id 1), one per line
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf  # noqa: E402

try:  # the dedicated dequantiser, when present; gguf.py carries one too
    import quants  # noqa: E402
    _dequantize = getattr(quants, "dequantize", None) or gguf.dequantize
except ImportError:
    _dequantize = gguf.dequantize


class Model:
    pass


def _count(md, key, default=None):
    """A count that may be stored as any integer type or as a per-layer array of equal values."""
    if key not in md:
        if default is None:
            raise SystemExit("%s: missing" % key)
        return default
    v = md[key]
    if isinstance(v, list):
        if len(set(v)) != 1:
            raise SystemExit("%s: per-layer values differ" % key)
        v = v[0]
    return int(v)


def load(path):
    g = gguf.read(path)
    md = g.metadata
    arch = md["general.architecture"]
    if arch not in ("llama", "qwen2"):
        raise SystemExit("architecture %s not supported" % arch)
    m = Model()
    m.arch = arch
    p = arch + "."
    m.E = _count(md, p + "embedding_length")
    m.L = _count(md, p + "block_count")
    m.H = _count(md, p + "attention.head_count")
    m.Hkv = _count(md, p + "attention.head_count_kv", m.H)
    m.F = _count(md, p + "feed_forward_length")
    m.D = _count(md, p + "attention.key_length", m.E // m.H)
    m.n_rot = _count(md, p + "rope.dimension_count", m.D)
    m.eps = float(md[p + "attention.layer_norm_rms_epsilon"])
    m.base = float(md.get(p + "rope.freq_base", 10000.0))
    m.freq_scale = 1.0
    stype = md.get(p + "rope.scaling.type", "linear")
    factor = float(md.get(p + "rope.scaling.factor", md.get(p + "rope.scale_linear", 0.0)))
    if stype == "linear" and factor > 0:
        m.freq_scale = 1.0 / factor
    elif stype not in ("linear", "none"):
        raise SystemExit("rope scaling %s not supported" % stype)
    m.neox = arch == "qwen2"

    def w(name, required=True):
        t = g.tensors.get(name)
        if t is None:
            if required:
                raise SystemExit("tensor %s missing" % name)
            return None
        return np.asarray(_dequantize(t), dtype=np.float64)

    m.tok_embd = w("token_embd.weight")            # (V, E)
    m.V = m.tok_embd.shape[0]
    m.output_norm = w("output_norm.weight")        # (E,)
    m.output = w("output.weight", False)
    if m.output is None:
        m.output = m.tok_embd                      # tied embeddings
    m.rope_freqs = w("rope_freqs.weight", False)   # (n_rot/2,) or None
    m.layers = []
    for i in range(m.L):
        b = "blk.%d." % i
        m.layers.append({
            "attn_norm": w(b + "attn_norm.weight"),
            "wq": w(b + "attn_q.weight"), "wk": w(b + "attn_k.weight"), "wv": w(b + "attn_v.weight"),
            "bq": w(b + "attn_q.bias", False), "bk": w(b + "attn_k.bias", False), "bv": w(b + "attn_v.bias", False),
            "wo": w(b + "attn_output.weight"),
            "ffn_norm": w(b + "ffn_norm.weight"),
            "w_gate": w(b + "ffn_gate.weight"), "w_up": w(b + "ffn_up.weight"), "w_down": w(b + "ffn_down.weight"),
        })
    return m


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, pos, m):
    """x: (n, heads, D); rotates the first n_rot dims of each head by the angles of its position."""
    half = m.n_rot // 2
    i = np.arange(half, dtype=np.float64)
    inv = m.base ** (-2.0 * i / m.n_rot)
    theta = pos[:, None].astype(np.float64) * m.freq_scale * inv[None, :]      # (n, half)
    if m.rope_freqs is not None:
        theta = theta / m.rope_freqs[None, :]
    c = np.cos(theta)[:, None, :]
    s = np.sin(theta)[:, None, :]
    y = x.copy()
    if m.neox:
        i0, i1 = np.arange(half), np.arange(half) + half
    else:
        i0, i1 = 2 * np.arange(half), 2 * np.arange(half) + 1
    x0, x1 = x[:, :, i0], x[:, :, i1]
    y[:, :, i0] = x0 * c - x1 * s
    y[:, :, i1] = x0 * s + x1 * c
    return y


def forward(m, ids):
    """Logits (n, V) for every position of the token sequence ids (positions 0..n-1)."""
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    pos = np.arange(n)
    x = m.tok_embd[ids].copy()                                   # (n, E)
    mask = np.triu(np.full((n, n), -np.inf), 1)                  # causal
    group = m.H // m.Hkv
    for ly in m.layers:
        h = rmsnorm(x, ly["attn_norm"], m.eps)
        q = h @ ly["wq"].T
        k = h @ ly["wk"].T
        v = h @ ly["wv"].T
        if ly["bq"] is not None:
            q = q + ly["bq"]
        if ly["bk"] is not None:
            k = k + ly["bk"]
        if ly["bv"] is not None:
            v = v + ly["bv"]
        q = rope(q.reshape(n, m.H, m.D), pos, m)
        k = rope(k.reshape(n, m.Hkv, m.D), pos, m)
        v = v.reshape(n, m.Hkv, m.D)
        out = np.empty((n, m.H, m.D))
        for hd in range(m.H):
            kv = hd // group
            s = q[:, hd, :] @ k[:, kv, :].T / np.sqrt(m.D) + mask
            s = np.exp(s - s.max(axis=1, keepdims=True))
            s /= s.sum(axis=1, keepdims=True)
            out[:, hd, :] = s @ v[:, kv, :]
        x = x + out.reshape(n, m.H * m.D) @ ly["wo"].T
        h = rmsnorm(x, ly["ffn_norm"], m.eps)
        g = h @ ly["w_gate"].T
        u = h @ ly["w_up"].T
        x = x + ((g / (1.0 + np.exp(-g))) * u) @ ly["w_down"].T
    return rmsnorm(x, m.output_norm, m.eps) @ m.output.T


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--ids", help="comma-separated token ids")
    ap.add_argument("--out", help="write [n][V] float64 logits here")
    ap.add_argument("--compare", help="C logits, [n][V] float32")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--greedy", type=int, default=0, help="greedy decode this many ids from BOS (id 1)")
    a = ap.parse_args(argv)
    m = load(a.model)
    if a.greedy:
        ids = [1]
        for _ in range(a.greedy):
            ids.append(int(np.argmax(forward(m, ids)[-1])))
        print("\n".join(str(i) for i in ids[1:]))
        return 0
    if not a.ids:
        ap.error("--ids or --greedy is required")
    ids = [int(t) for t in a.ids.split(",")]
    logits = forward(m, ids)
    if a.out:
        logits.astype("<f8").tofile(a.out)
    if a.compare:
        c = np.fromfile(a.compare, dtype="<f4").astype(np.float64)
        if c.size != logits.size:
            print("size mismatch: C %d values, reference %d" % (c.size, logits.size))
            return 1
        c = c.reshape(logits.shape)
        d = float(np.max(np.abs(c - logits)))
        mx = float(np.max(np.abs(logits)))
        rel = d / mx if mx > 0 else d
        argmax_agree = float(np.mean(np.argmax(c, axis=1) == np.argmax(logits, axis=1)))
        print("max_abs_diff %.3e max_abs_logit %.3e rel %.3e argmax_agree %.3f" % (d, mx, rel, argmax_agree))
        return 0 if rel <= a.tol else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
