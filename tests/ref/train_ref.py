#!/usr/bin/env python3
"""train_ref.py — independent torch float64 reference for the trainer's loss and gradients.

Reads the base model with the test GGUF reader (gguf.py / quants.py, which share nothing with the C
code; hyper-parameters and dequantised weights through forward.load), reads the dump written by
tests/train_driver.c (the batch, the trainable tensors with their C gradients), rebuilds the same
model in torch float64 — written from docs/REFERENCE.md §1.5-1.7 and PEFT's LoRA definition
(y = W x + (alpha/r) B A x), not from the C code — and lets autograd compute the gradients of
dloss_scale * sum(cross-entropy over tokens with a target).

Usage: train_ref.py MODEL DUMP.bin --tol 1e-4
Prints "loss C X ref Y | max rel grad err E (tensor NAME) over K tensors" and exits 1 when the
relative loss error or any tensor's max|g_c - g_ref| / max|g_ref| exceeds the tolerance.
"""
import argparse
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import forward  # noqa: E402  (the float64 model loader)

LIN = [("attn_q", "wq"), ("attn_k", "wk"), ("attn_v", "wv"), ("attn_output", "wo"),
       ("ffn_gate", "w_gate"), ("ffn_up", "w_up"), ("ffn_down", "w_down")]


def read_dump(path):
    b = open(path, "rb").read()
    if b[:8] != b"IATRGRD1":
        raise SystemExit("%s: not a train_driver dump" % path)
    o = 8
    method, rank = struct.unpack_from("<ii", b, o); o += 8
    alpha, = struct.unpack_from("<f", b, o); o += 4
    n, = struct.unpack_from("<i", b, o); o += 4
    arr = []
    for _ in range(4):
        arr.append(np.frombuffer(b, dtype="<i4", count=n, offset=o).astype(np.int64)); o += 4 * n
    loss, = struct.unpack_from("<d", b, o); o += 8
    scale, = struct.unpack_from("<f", b, o); o += 4
    nt, = struct.unpack_from("<i", b, o); o += 4
    tensors = {}
    for _ in range(nt):
        ln, = struct.unpack_from("<i", b, o); o += 4
        name = b[o:o + ln].decode(); o += ln
        ne0, ne1 = struct.unpack_from("<qq", b, o); o += 16
        cnt = ne0 * ne1
        val = np.frombuffer(b, dtype="<f4", count=cnt, offset=o).astype(np.float64); o += 4 * cnt
        grad = np.frombuffer(b, dtype="<f4", count=cnt, offset=o).astype(np.float64); o += 4 * cnt
        shape = (ne1, ne0) if ne1 > 1 else (ne0,)
        tensors[name] = (val.reshape(shape), grad.reshape(shape))
    return dict(method=method, rank=rank, alpha=alpha, tok=arr[0], pos=arr[1], start=arr[2], target=arr[3],
                loss=loss, scale=scale, tensors=tensors)


def rms(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rope(x, pos, m):
    """x: (n, heads, D). NORM pairs (2i, 2i+1) for llama, NEOX pairs (i, i + n_rot/2) for qwen2."""
    half = m.n_rot // 2
    i = torch.arange(half, dtype=torch.float64)
    theta = pos[:, None].double() * m.freq_scale * (m.base ** (-2.0 * i / m.n_rot))[None, :]
    if m.rope_freqs is not None:
        theta = theta / torch.tensor(m.rope_freqs)[None, :]
    c, s = torch.cos(theta)[:, None, :], torch.sin(theta)[:, None, :]
    if m.neox:
        i0, i1 = torch.arange(half), torch.arange(half) + half
    else:
        i0, i1 = 2 * torch.arange(half), 2 * torch.arange(half) + 1
    x0, x1 = x[:, :, i0], x[:, :, i1]
    y = x.clone()
    y[:, :, i0] = x0 * c - x1 * s
    y[:, :, i1] = x0 * s + x1 * c
    return y


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("dump")
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    m = forward.load(a.model)
    d = read_dump(a.dump)
    T = d["tensors"]
    full = d["method"] == 1
    params = {}

    def param(name, base):
        """The tensor the model computes with: a trainable leaf from the dump (full FT), else the base."""
        if full:
            if name not in T:
                raise SystemExit("dump lacks %s" % name)
            p = torch.tensor(T[name][0], requires_grad=True)
            params[name] = p
            return p
        return None if base is None else torch.tensor(base)

    def lora(name):
        if full or name + ".lora_a" not in T:
            return None
        A = torch.tensor(T[name + ".lora_a"][0], requires_grad=True)   # (r, in)
        B = torch.tensor(T[name + ".lora_b"][0], requires_grad=True)   # (out, r)
        params[name + ".lora_a"], params[name + ".lora_b"] = A, B
        return A, B

    s_lora = d["alpha"] / d["rank"]

    def linear(x, W, b, ab):
        y = x @ W.T
        if b is not None:
            y = y + b
        if ab is not None:
            y = y + s_lora * ((x @ ab[0].T) @ ab[1].T)
        return y

    emb = param("token_embd.weight", m.tok_embd)
    out_norm = param("output_norm.weight", m.output_norm)
    tied = not any(k == "output.weight" for k in T) if full else None
    if full:
        head = emb if tied else param("output.weight", m.output)
    else:
        head = torch.tensor(m.output)
    tok, pos, start, target = (torch.tensor(d[k]) for k in ("tok", "pos", "start", "target"))
    n = len(tok)
    idx = torch.arange(n)
    # token t sees s iff start[t] <= s <= t (its own example, causally)
    allowed = (idx[None, :] <= idx[:, None]) & (idx[None, :] >= start[:, None])
    maskadd = torch.zeros(n, n, dtype=torch.float64).masked_fill(~allowed, float("-inf"))
    x = emb[tok]
    group = m.H // m.Hkv
    for li, ly in enumerate(m.layers):
        pre = "blk.%d." % li
        W = {}
        for gname, key in LIN:
            W[gname] = (param(pre + gname + ".weight", ly[key]), lora(pre + gname + ".weight"))
        bias = {}
        for gname, key in (("attn_q", "bq"), ("attn_k", "bk"), ("attn_v", "bv")):
            bias[gname] = param(pre + gname + ".bias", ly[key]) if ly[key] is not None else None
        an = param(pre + "attn_norm.weight", ly["attn_norm"])
        fn = param(pre + "ffn_norm.weight", ly["ffn_norm"])
        h = rms(x, an, m.eps)
        q = linear(h, W["attn_q"][0], bias["attn_q"], W["attn_q"][1])
        k = linear(h, W["attn_k"][0], bias["attn_k"], W["attn_k"][1])
        v = linear(h, W["attn_v"][0], bias["attn_v"], W["attn_v"][1])
        q = rope(q.reshape(n, m.H, m.D), pos, m)
        k = rope(k.reshape(n, m.Hkv, m.D), pos, m)
        v = v.reshape(n, m.Hkv, m.D)
        heads = []
        for hd in range(m.H):
            kv = hd // group
            sc = q[:, hd, :] @ k[:, kv, :].T / np.sqrt(m.D) + maskadd
            heads.append(torch.softmax(sc, dim=-1) @ v[:, kv, :])
        att = torch.stack(heads, 1).reshape(n, m.H * m.D)
        x = x + linear(att, W["attn_output"][0], None, W["attn_output"][1])
        h = rms(x, fn, m.eps)
        g = linear(h, W["ffn_gate"][0], None, W["ffn_gate"][1])
        u = linear(h, W["ffn_up"][0], None, W["ffn_up"][1])
        x = x + linear(torch.nn.functional.silu(g) * u, W["ffn_down"][0], None, W["ffn_down"][1])
    logits = rms(x, out_norm, m.eps) @ head.T
    sel = target >= 0
    ce = torch.nn.functional.cross_entropy(logits[sel], target[sel], reduction="sum")
    (ce * d["scale"]).backward()

    loss_ref = ce.item()
    rel_loss = abs(d["loss"] - loss_ref) / max(abs(loss_ref), 1e-30)
    worst, worst_name = 0.0, "-"
    checked = 0
    for name, (val, gc) in T.items():
        if name not in params:
            raise SystemExit("reference has no parameter %s" % name)
        gr = params[name].grad
        gr = np.zeros_like(gc) if gr is None else gr.numpy()
        denom = max(np.abs(gr).max(), 1e-12)
        e = np.abs(gc - gr).max() / denom
        checked += 1
        if e > worst:
            worst, worst_name = e, name
    print("loss C %.9g ref %.9g (rel %.2e) | max rel grad err %.2e (%s) over %d tensors"
          % (d["loss"], loss_ref, rel_loss, worst, worst_name, checked))
    return 0 if rel_loss <= a.tol and worst <= a.tol else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
