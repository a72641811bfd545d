#!/usr/bin/env python3
"""The same model and training step as bench/train_step.cpp, in PyTorch on the CPU (the peer the
foundation issue compares against). Uses Debian's python3-torch (scripts/setup --bench installs it).

    python3 bench/torch_train_step.py [--threads 2]

Model: byte embedding (tied head), pre-norm blocks of [RMSNorm -> q,k,v projections -> causal depthwise
conv (k=4) + SiLU -> chunkwise linear attention with RetNet's fixed decay -> per-head RMSNorm -> o_proj]
and [RMSNorm -> SwiGLU MLP], final RMSNorm, cross-entropy. AdamW step included.
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F


class RMSNorm(torch.nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def chunk_linear_attention(q, k, v, log_decay, chunk):
    """q, k, v: [B, H, T, D] (q already scaled); log_decay: [H]. Chunkwise form of
    S_t = exp(g) S_{t-1} + k_t^T v_t, o_t = q_t S_t."""
    b, h, t, d = q.shape
    n = t // chunk
    q, k, v = (x.reshape(b, h, n, chunk, d) for x in (q, k, v))
    pos = torch.arange(chunk, dtype=q.dtype)
    g = log_decay.view(h, 1, 1)
    diff = pos.view(-1, 1) - pos.view(1, -1)
    mask = torch.where(diff >= 0, torch.exp(diff.clamp(min=0) * g), torch.zeros(()))  # [H, C, C]
    intra = ((q @ k.transpose(-1, -2)) * mask.unsqueeze(1)) @ v
    k_weighted = k * torch.exp((chunk - 1 - pos).view(1, -1, 1) * g).unsqueeze(1)
    chunk_kv = k_weighted.transpose(-1, -2) @ v  # [B, H, n, D, D]
    q_weighted = q * torch.exp((pos + 1).view(1, -1, 1) * g).unsqueeze(1)
    decay_chunk = torch.exp(chunk * log_decay).view(1, h, 1, 1)
    state = torch.zeros(b, h, d, d, dtype=q.dtype)
    inter = []
    for j in range(n):
        inter.append(q_weighted[:, :, j] @ state)
        state = decay_chunk * state + chunk_kv[:, :, j]
    return (intra + torch.stack(inter, dim=2)).reshape(b, h, t, d)


class Mixer(torch.nn.Module):
    def __init__(self, d_model, heads, head_dim, conv, chunk):
        super().__init__()
        width = heads * head_dim
        self.heads, self.head_dim, self.chunk, self.conv = heads, head_dim, chunk, conv
        self.q_proj = torch.nn.Linear(d_model, width, bias=False)
        self.k_proj = torch.nn.Linear(d_model, width, bias=False)
        self.v_proj = torch.nn.Linear(d_model, width, bias=False)
        self.convs = torch.nn.ModuleList(
            [torch.nn.Conv1d(width, width, conv, groups=width, padding=conv - 1, bias=False) for _ in range(3)])
        self.out_norm = RMSNorm(head_dim)
        self.o_proj = torch.nn.Linear(width, d_model, bias=False)
        self.register_buffer("log_decay", torch.log1p(-torch.exp2(-5.0 - torch.arange(heads, dtype=torch.float32))))

    def forward(self, x):
        b, t, _ = x.shape
        outs = []
        for proj, conv in zip((self.q_proj, self.k_proj, self.v_proj), self.convs):
            y = conv(proj(x).transpose(1, 2))[..., :t]
            outs.append(F.silu(y).transpose(1, 2).reshape(b, t, self.heads, self.head_dim).transpose(1, 2))
        q, k, v = outs
        o = chunk_linear_attention(q / math.sqrt(self.head_dim), k, v, self.log_decay, self.chunk)
        o = self.out_norm(o.transpose(1, 2))
        return self.o_proj(o.reshape(b, t, -1))


class Block(torch.nn.Module):
    def __init__(self, d_model, heads, head_dim, hidden, conv, chunk):
        super().__init__()
        self.attn_norm, self.mlp_norm = RMSNorm(d_model), RMSNorm(d_model)
        self.mixer = Mixer(d_model, heads, head_dim, conv, chunk)
        self.gate = torch.nn.Linear(d_model, hidden, bias=False)
        self.up = torch.nn.Linear(d_model, hidden, bias=False)
        self.down = torch.nn.Linear(hidden, d_model, bias=False)

    def forward(self, x):
        x = x + self.mixer(self.attn_norm(x))
        h = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Model(torch.nn.Module):
    def __init__(self, vocab, d_model, layers, heads, head_dim, hidden, conv=4, chunk=64):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, d_model)
        self.blocks = torch.nn.ModuleList([Block(d_model, heads, head_dim, hidden, conv, chunk) for _ in range(layers)])
        self.norm = RMSNorm(d_model)

    def forward(self, ids, targets):
        x = self.embedding(ids)
        for block in self.blocks:
            x = block(x)
        logits = self.norm(x) @ self.embedding.weight.t()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def bench(label, batch, seq_len, **model_args):
    model = Model(**model_args)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    ids = torch.randint(0, model_args["vocab"], (batch, seq_len))
    targets = torch.randint(0, model_args["vocab"], (batch, seq_len))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model(ids, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    step()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    tokens = batch * seq_len
    print(json.dumps({"model": label, "framework": f"torch {torch.__version__}", "threads": torch.get_num_threads(),
                      "batch": batch, "seq_len": seq_len, "step_ms": seconds * 1e3, "tokens_per_s": tokens / seconds}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bench("configs/demo.toml", 16, 256, vocab=256, d_model=192, layers=4, heads=4, head_dim=48, hidden=512)
    bench("4-layer d512 T512", 8, 512, vocab=256, d_model=512, layers=4, heads=8, head_dim=64, hidden=1408)


if __name__ == "__main__":
    main()
