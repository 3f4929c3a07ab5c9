#!/usr/bin/env python3
"""PyTorch reference for flotilla's model (tests/unit/check_model.c).

Reads, from the directory given as argv[1]:
  model.bin   the model in flotilla's format (header layout in model/model.h)
  batch.bin   int32 B, T, then int32 tokens [B, T] and targets [B, T]
  optim.txt   "key value" lines: kind lr min_lr warmup total beta1 beta2 eps
              momentum weight_decay grad_clip steps
and writes ref.bin, all float64:
  loss, logits [B*T*V], grads of the trainable vector in flotilla's order,
  then the losses of `steps` optimizer steps on the same batch.

The same architecture is written independently here in plain PyTorch ops,
in float64, so the C side is compared against an exact reference.
"""
import math
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

torch.set_num_threads(1)
DT = torch.float64


def read_model(path):
    raw = open(path, "rb").read()
    assert raw[:8] == b"FLMODEL1", "bad magic"
    flags = struct.unpack_from("<I", raw, 16)[0]
    dims = struct.unpack_from("<8i", raw, 20)
    alpha, theta, eps = struct.unpack_from("<3f", raw, 52)
    nbase, nlora = struct.unpack_from("<QQ", raw, 324)
    cfg = dict(zip(["dim", "hidden", "layers", "heads", "kv_heads", "vocab",
                    "seq_len", "rank"], dims))
    cfg.update(tied=bool(flags & 1), alpha=alpha, theta=theta, eps=eps)
    floats = np.frombuffer(raw, dtype="<f4", offset=512,
                           count=nbase + nlora).astype(np.float64)
    return cfg, floats[:nbase], floats[nbase:]


def base_layout(c):
    C, H, L, V = c["dim"], c["hidden"], c["layers"], c["vocab"]
    KV = C // c["heads"] * c["kv_heads"]
    shapes = [("token_embedding", (V, C)), ("rms_att", (L, C)),
              ("wq", (L, C, C)), ("wk", (L, KV, C)), ("wv", (L, KV, C)),
              ("wo", (L, C, C)), ("rms_ffn", (L, C)), ("w1", (L, H, C)),
              ("w2", (L, C, H)), ("w3", (L, H, C)), ("rms_final", (C,))]
    if not c["tied"]:
        shapes.append(("wcls", (V, C)))
    return shapes


PROJ = ["wq", "wk", "wv", "wo", "w1", "w2", "w3"]


def proj_dims(c, p):
    C, H = c["dim"], c["hidden"]
    KV = C // c["heads"] * c["kv_heads"]
    return {"wq": (C, C), "wk": (C, KV), "wv": (C, KV), "wo": (C, C),
            "w1": (C, H), "w2": (H, C), "w3": (C, H)}[p]


def lora_layout(c):
    r, L = c["rank"], c["layers"]
    out = []
    for p in PROJ:
        i, o = proj_dims(c, p)
        out.append((p + "_a", (L, r, i)))
        out.append((p + "_b", (L, o, r)))
    return out


def unflatten(vec, layout):
    t, off = {}, 0
    for name, shape in layout:
        n = int(np.prod(shape))
        t[name] = torch.tensor(vec[off:off + n].reshape(shape), dtype=DT)
        off += n
    assert off == len(vec), (off, len(vec))
    return t


def rmsnorm(x, g, eps):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * g


def rope(x, T, theta):
    # x [B, T, nh, hs]; pairs (2i, 2i+1) rotated by t * theta^(-2i/hs)
    hs = x.shape[-1]
    i = torch.arange(0, hs, 2, dtype=DT)
    freq = theta ** (-i / hs)
    ang = torch.arange(T, dtype=DT)[:, None] * freq[None, :]
    cos, sin = torch.cos(ang)[None, :, None, :], torch.sin(ang)[None, :, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos],
                       dim=-1).flatten(-2)


def forward(c, W, A, tokens):
    B, T = tokens.shape
    C, nh, nkv = c["dim"], c["heads"], c["kv_heads"]
    hs = C // nh
    scale = c["alpha"] / c["rank"] if c["rank"] else 0.0

    def proj(p, l, x):
        y = x @ W[p][l].T
        if c["rank"]:
            y = y + (scale * (x @ A[p + "_a"][l].T)) @ A[p + "_b"][l].T
        return y

    x = W["token_embedding"][tokens]
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    for l in range(c["layers"]):
        h = rmsnorm(x, W["rms_att"][l], c["eps"])
        q = proj("wq", l, h).view(B, T, nh, hs)
        k = proj("wk", l, h).view(B, T, nkv, hs)
        v = proj("wv", l, h).view(B, T, nkv, hs)
        q, k = rope(q, T, c["theta"]), rope(k, T, c["theta"])
        grp = nh // nkv
        k = k.repeat_interleave(grp, dim=2)
        v = v.repeat_interleave(grp, dim=2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, nh, T, hs]
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hs)
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + proj("wo", l, y)
        h = rmsnorm(x, W["rms_ffn"][l], c["eps"])
        x = x + proj("w2", l, F.silu(proj("w1", l, h)) * proj("w3", l, h))
    x = rmsnorm(x, W["rms_final"], c["eps"])
    head = W["token_embedding"] if c["tied"] else W["wcls"]
    return x @ head.T


def lr_at(o, step):
    if o["warmup"] > 0 and step < o["warmup"]:
        return o["lr"] * (step + 1) / o["warmup"]
    if o["total"] <= 0 or o["total"] <= o["warmup"]:
        return o["lr"]
    if step >= o["total"]:
        return o["min_lr"]
    frac = (step - o["warmup"]) / (o["total"] - o["warmup"])
    return o["min_lr"] + (o["lr"] - o["min_lr"]) * 0.5 * (1 + math.cos(math.pi * frac))


def main():
    d = sys.argv[1]
    c, base, lora = read_model(d + "/model.bin")
    W = unflatten(base, base_layout(c))
    A = unflatten(lora, lora_layout(c)) if c["rank"] else {}
    bb = np.fromfile(d + "/batch.bin", dtype="<i4")
    B, T = int(bb[0]), int(bb[1])
    tokens = torch.tensor(bb[2:2 + B * T].reshape(B, T), dtype=torch.long)
    targets = torch.tensor(bb[2 + B * T:2 + 2 * B * T].reshape(B, T),
                           dtype=torch.long)
    o = {}
    for line in open(d + "/optim.txt"):
        k, v = line.split()
        o[k] = float(v) if k not in ("kind",) else v
    for k in ("warmup", "total", "steps"):
        o[k] = int(o[k])

    if c["rank"]:
        layout = lora_layout(c)
        train = A
        decay = [A[n] for n, _ in layout]
        no_decay = []
    else:
        layout = base_layout(c)
        train = W
        decay = [W[n] for n, _ in layout if not n.startswith("rms")]
        no_decay = [W[n] for n, _ in layout if n.startswith("rms")]
    params = [train[n] for n, _ in layout]
    for p in params:
        p.requires_grad_(True)

    def loss_fn():
        logits = forward(c, W, A, tokens)
        loss = F.cross_entropy(logits.reshape(-1, c["vocab"]),
                               targets.reshape(-1), ignore_index=-1)
        return logits, loss

    logits, loss = loss_fn()
    loss.backward()
    grads = torch.cat([train[n].grad.reshape(-1) for n, _ in layout])
    out = [np.array([loss.item()]), logits.detach().numpy().reshape(-1),
           grads.numpy()]

    groups = [{"params": decay, "weight_decay": o["weight_decay"]}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if o["kind"] == "adamw":
        opt = torch.optim.AdamW(groups, lr=o["lr"],
                                betas=(o["beta1"], o["beta2"]), eps=o["eps"])
    else:
        opt = torch.optim.SGD(groups, lr=o["lr"], momentum=o["momentum"])
    losses = []
    for step in range(o["steps"]):
        for g in opt.param_groups:
            g["lr"] = lr_at(o, step)
        opt.zero_grad()
        _, loss = loss_fn()
        loss.backward()
        if o["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(params, o["grad_clip"])
        opt.step()
        losses.append(loss.item())
    out.append(np.array(losses))
    np.concatenate(out).astype("<f8").tofile(d + "/ref.bin")


if __name__ == "__main__":
    main()
