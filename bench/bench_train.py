#!/usr/bin/env python3
"""bench_train.py — the PyTorch side of bench_train.sh: the same LoRA training step as
`iteralign train` (llama architecture, frozen f32 base, LoRA rank r / alpha on q,k,v,o,gate,up,down,
cross-entropy over every target token, AdamW), timed on the CPU.

Usage: bench_train.py --embd 576 --layers 30 --heads 9 --kv-heads 3 --ff 1536 --vocab 50257
                      --batch 2 --seq 256 --steps 3 --threads 2 [--rank 8 --alpha 16] [--bf16]
Prints one line: "torch tokens_per_s X peak_mib Y" (steady-state steps: the first is warm-up).
"""
import argparse
import resource
import time

import torch


class Lora(torch.nn.Module):
    def __init__(self, n_in, n_out, r, alpha):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(n_out, n_in) * 0.02, requires_grad=False)
        self.a = torch.nn.Parameter(torch.empty(r, n_in).uniform_(-n_in ** -0.5, n_in ** -0.5))
        self.b = torch.nn.Parameter(torch.zeros(n_out, r))
        self.s = alpha / r

    def forward(self, x):
        return x @ self.w.T + self.s * ((x @ self.a.T) @ self.b.T)


def rms(x, w, eps=1e-5):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


class Block(torch.nn.Module):
    def __init__(self, a):
        super().__init__()
        D = a.embd // a.heads
        self.H, self.Hkv, self.D = a.heads, a.kv_heads, D
        mk = lambda i, o: Lora(i, o, a.rank, a.alpha)  # noqa: E731
        self.q, self.k, self.v = mk(a.embd, a.heads * D), mk(a.embd, a.kv_heads * D), mk(a.embd, a.kv_heads * D)
        self.o = mk(a.heads * D, a.embd)
        self.gate, self.up, self.down = mk(a.embd, a.ff), mk(a.embd, a.ff), mk(a.ff, a.embd)
        self.n1 = torch.nn.Parameter(torch.ones(a.embd), requires_grad=False)
        self.n2 = torch.nn.Parameter(torch.ones(a.embd), requires_grad=False)

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        h = rms(x, self.n1)
        q = self.q(h).view(B, T, self.H, self.D).transpose(1, 2)
        k = self.k(h).view(B, T, self.Hkv, self.D).transpose(1, 2)
        v = self.v(h).view(B, T, self.Hkv, self.D).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        g = self.H // self.Hkv
        k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
        att = torch.softmax(q @ k.transpose(-1, -2) / self.D ** 0.5 + mask, -1) @ v
        x = x + self.o(att.transpose(1, 2).reshape(B, T, -1))
        h = rms(x, self.n2)
        return x + self.down(torch.nn.functional.silu(self.gate(h)) * self.up(h))


def rope(x, cos, sin):  # adjacent pairs (llama GGUF order)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), -1).flatten(-2)


def main():
    ap = argparse.ArgumentParser()
    for k, v in (("embd", 576), ("layers", 30), ("heads", 9), ("kv-heads", 3), ("ff", 1536), ("vocab", 50257),
                 ("batch", 2), ("seq", 256), ("steps", 3), ("threads", 2), ("rank", 8)):
        ap.add_argument("--" + k, type=int, default=v)
    ap.add_argument("--alpha", type=float, default=16)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast of the forward pass (weights stay f32)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    emb = torch.randn(a.vocab, a.embd) * 0.02
    blocks = torch.nn.ModuleList(Block(a) for _ in range(a.layers))
    norm = torch.ones(a.embd)
    D = a.embd // a.heads
    pos = torch.arange(a.seq, dtype=torch.float32)
    theta = pos[:, None] * (100000.0 ** (-torch.arange(0, D, 2, dtype=torch.float32) / D))[None, :]
    cos, sin = torch.cos(theta), torch.sin(theta)
    mask = torch.triu(torch.full((a.seq, a.seq), float("-inf")), 1)
    params = [p for p in blocks.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    tok = torch.randint(0, a.vocab, (a.batch, a.seq + 1))
    times = []
    for step in range(a.steps + 1):
        t0 = time.time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            x = emb[tok[:, :-1]]
            for b in blocks:
                x = b(x, cos, sin, mask)
            logits = rms(x, norm) @ emb.T  # tied head, as SmolLM2
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, a.vocab), tok[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        times.append(time.time() - t0)
    steady = times[1:] if len(times) > 1 else times
    tps = a.batch * a.seq / (sum(steady) / len(steady))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print("torch tokens_per_s %.1f peak_mib %.1f" % (tps, peak))


if __name__ == "__main__":
    main()
