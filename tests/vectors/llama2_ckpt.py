#!/usr/bin/env python3
"""Writes small llama2.c checkpoints for tests/unit/check_llama2.c.

Usage: llama2_ckpt.py OUTDIR

For each case NAME it writes OUTDIR/NAME.bin in a llama2.c layout (version 0
legacy, version 1, or version 2 Q8_0, as llama2.c's export.py lays them out)
and OUTDIR/NAME.ref: the weights flotilla must import, fp32 little-endian,
in llama2.c order (token_embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1,
w2, w3, rms_final, then wcls when it is not shared). For version 2 the
reference is the dequantized int8 * scale, computed in float32.

Only numpy is needed. The layouts are written from their description in
model/llama2.h; nothing is imported from llama2.c.
"""
import struct
import sys

import numpy as np

MAGIC = 0x616B3432

CASES = [
    # name, version, dim, hidden, layers, heads, kv_heads, vocab, seq, shared, gs
    ("v0_shared", 0, 32, 64, 2, 4, 4, 259, 16, True, 0),
    ("v0_untied_gqa", 0, 32, 48, 2, 4, 2, 40, 8, False, 0),
    ("v1_untied", 1, 16, 24, 1, 2, 1, 20, 4, False, 0),
    ("v2_shared", 2, 32, 64, 2, 4, 2, 259, 16, True, 32),
    ("v2_untied", 2, 32, 64, 1, 4, 4, 40, 8, False, 16),
]


def tensors(rng, dim, hidden, layers, heads, kv_heads, vocab, shared):
    kv_dim = dim // heads * kv_heads

    def w(*shape):
        return rng.standard_normal(shape).astype(np.float32) * np.float32(0.1)

    t = {
        "tok": w(vocab, dim),
        "rms_att": 1 + w(layers, dim),
        "wq": w(layers, dim, dim),
        "wk": w(layers, kv_dim, dim),
        "wv": w(layers, kv_dim, dim),
        "wo": w(layers, dim, dim),
        "rms_ffn": 1 + w(layers, dim),
        "w1": w(layers, hidden, dim),
        "w2": w(layers, dim, hidden),
        "w3": w(layers, hidden, dim),
        "rms_final": 1 + w(dim),
    }
    t["wcls"] = None if shared else w(vocab, dim)
    return t


def q80(x, gs):
    """Symmetric int8 per group of gs: returns (int8 values, fp32 scales,
    the dequantized float32 values)."""
    g = x.reshape(-1, gs).astype(np.float32)
    scale = (np.abs(g).max(axis=1) / np.float32(127.0)).astype(np.float32)
    q = np.round(g / scale[:, None]).astype(np.int8)
    deq = (q.astype(np.float32) * scale[:, None]).astype(np.float32)
    return q, scale, deq.reshape(x.shape)


ORDER = ["tok", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2",
         "w3", "rms_final"]


def write_case(outdir, case, seed):
    name, version, dim, hidden, layers, heads, kv_heads, vocab, seq, shared, gs = case
    rng = np.random.default_rng(seed)
    t = tensors(rng, dim, hidden, layers, heads, kv_heads, vocab, shared)
    ref = dict(t)
    out = bytearray()
    f32 = lambda a: np.ascontiguousarray(a, dtype="<f4").tobytes()
    if version == 0:
        v = vocab if shared else -vocab
        out += struct.pack("<7i", dim, hidden, layers, heads, kv_heads, v, seq)
        for k in ["tok", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1",
                  "w2", "w3", "rms_final"]:
            out += f32(t[k])
        hs = dim // heads
        freqs = 1.0 / (10000.0 ** (np.arange(0, hs, 2)[: hs // 2] / hs))
        ang = np.outer(np.arange(seq), freqs)
        out += f32(np.cos(ang))
        out += f32(np.sin(ang))
        if not shared:
            out += f32(t["wcls"])
    else:
        out += struct.pack("<Ii", MAGIC, version)
        out += struct.pack("<7i", dim, hidden, layers, heads, kv_heads, vocab, seq)
        out += struct.pack("<B", 1 if shared else 0)
        if version == 2:
            out += struct.pack("<i", gs)
        out += b"\0" * (256 - len(out))
        out += f32(t["rms_att"]) + f32(t["rms_ffn"]) + f32(t["rms_final"])
        if version == 1:
            for k in ["tok", "wq", "wk", "wv", "wo", "w1", "w2", "w3"]:
                out += f32(t[k])
            if not shared:
                out += f32(t["wcls"])
        else:
            mats = [("tok", None)]
            for k in ["wq", "wk", "wv", "wo", "w1", "w2", "w3"]:
                mats += [(k, l) for l in range(layers)]
            if not shared:
                mats.append(("wcls", None))
            deq = {k: np.empty_like(t[k]) for k in t if t[k] is not None}
            for k, l in mats:
                x = t[k] if l is None else t[k][l]
                q, s, d = q80(x, gs)
                out += q.tobytes() + f32(s)
                if l is None:
                    deq[k] = d
                else:
                    deq[k][l] = d
            for k in deq:
                if k not in ("rms_att", "rms_ffn", "rms_final"):
                    ref[k] = deq[k]
    with open(f"{outdir}/{name}.bin", "wb") as f:
        f.write(out)
    r = bytearray()
    for k in ORDER:
        r += f32(ref[k])
    if not shared:
        r += f32(ref["wcls"])
    with open(f"{outdir}/{name}.ref", "wb") as f:
        f.write(r)


def main():
    outdir = sys.argv[1]
    for i, case in enumerate(CASES):
        write_case(outdir, case, 1234 + i)


if __name__ == "__main__":
    main()
