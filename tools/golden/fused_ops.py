#!/usr/bin/env python3
"""Golden fixtures for tcc-model's fused CPU kernels, computed with PyTorch.

Writes crates/tcc-model/tests/fixtures/fused_ops/golden.safetensors:

- `attn.{i}.qkv` `[B, T, 3 D]` and `attn.{i}.out` `[B, T, D]`: multi-head
  self-attention from a packed qkv projection, as DiT's and PixArt's
  attention reads it (Q, K, V each `[T, H, hd]` along the last dim), by
  `torch.nn.functional.scaled_dot_product_attention` in f64, stored in f32.
  `attn.{i}.heads` holds H. Token counts that are not multiples of the
  kernel's query block (128), DiT-XL's head size (72) and peaked softmaxes
  are among the cases.
- `linear.{x,w,b,out,out_gelu}`: `x Wᵀ + b` and `gelu(x Wᵀ + b, tanh)`
  (`torch.nn.functional.linear`, `gelu(approximate="tanh")`) in f64,
  stored in f32.

Inputs are f32 draws; the references are computed in f64 from those f32
values, so they are exact to f32 rounding.

Run from the repository root:  python3 tools/golden/fused_ops.py
"""

import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(
    os.path.dirname(__file__), "..", "..", "crates", "tcc-model", "tests", "fixtures", "fused_ops"
)

# (batch, tokens, heads, head dim, input std)
ATTN_CASES = [
    (2, 37, 3, 8, 1.0),
    (1, 130, 1, 72, 1.0),
    (2, 16, 4, 16, 4.0),
]


def main() -> None:
    g = torch.Generator().manual_seed(0)
    out = {}
    for i, (b, t, h, hd, std) in enumerate(ATTN_CASES):
        d = h * hd
        qkv = torch.randn(b, t, 3 * d, generator=g) * std
        q, k, v = qkv.double().reshape(b, t, 3, h, hd).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)  # [B, H, T, hd]
        out[f"attn.{i}.qkv"] = qkv.contiguous()
        out[f"attn.{i}.out"] = o.transpose(1, 2).reshape(b, t, d).float().contiguous()
        out[f"attn.{i}.heads"] = torch.tensor([h], dtype=torch.int64)
    x = torch.randn(3, 21, 64, generator=g)
    w = torch.randn(45, 64, generator=g) / 8.0
    bias = torch.randn(45, generator=g) * 0.5
    y = F.linear(x.double(), w.double(), bias.double())
    out["linear.x"] = x
    out["linear.w"] = w
    out["linear.b"] = bias
    out["linear.out"] = y.float()
    out["linear.out_gelu"] = F.gelu(y, approximate="tanh").float()
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "golden.safetensors")
    save_file(out, path, metadata={"torch": torch.__version__})
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
