#!/usr/bin/env python3
"""Golden fixtures for the DiT model of `crates/tcc-model`.

Builds a tiny `diffusers.DiTTransformer2DModel` with every weight randomised
(the zero-initialised adaLN gates and output layer included, so that no
branch trivially vanishes) and writes, under
`crates/tcc-model/tests/fixtures/dit_tiny/`:

- `diffusers/config.json` + `diffusers/diffusion_pytorch_model.safetensors`:
  the diffusers layout, as `save_pretrained` writes it.
- `original.pt` (state dict nested under `ema`) and `original.safetensors`:
  the same weights in the layout of the original DiT code (facebookresearch/DiT
  `models.py`), mapped by the table in `to_original` below;
  `original_plain.pt`: the same state dict at the top level (as the released
  DiT-XL-2-256x256.pt); `original_train.pt`: a training checkpoint like
  DiT's `train.py` writes, `{"model", "ema", "opt", "args"}`, whose `model`
  differs from `ema` in one tensor (a loader must take `ema`).
- `golden.safetensors`: inputs `x`, `t`, `y` (with the null class) and the
  expected outputs:
  - `out_diffusers`: `DiTTransformer2DModel.forward` (the reference for the
    diffusers layout);
  - `out_original`: the original DiT numerics. They differ from diffusers in
    two places: the timestep frequencies (original: exp(-ln(1e4) k / half),
    diffusers: ... / (half - 1)) and the eps of the MLP LayerNorm (original
    1e-6, diffusers `norm_eps` = 1e-5). Computed by an independent plain-torch
    implementation of the original forward pass from the original-layout
    state dict, and cross-checked here against diffusers with those two
    settings patched;
  - `embed`, `cond_*`, `mod0_diffusers` (block 0's six modulation chunks, in
    the order shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp),
    `attn0_diffusers`, `mlp0_diffusers`: intermediate values of the diffusers
    forward (hooks), for the per-part checks.

Run from the repository root: `python3 tools/golden/dit_model.py`.
Needs torch and diffusers (tested with torch 2.15, diffusers 0.42).
"""

import argparse
import math
import os

import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel
from safetensors.torch import save_file

OUT = os.path.join("crates", "tcc-model", "tests", "fixtures", "dit_tiny")

CFG = dict(
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=4,
    out_channels=8,  # learned sigma
    num_layers=2,
    sample_size=8,
    patch_size=2,
    num_embeds_ada_norm=10,
)


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Every parameter ~ N(0, 1/fan_in) (weights), N(0, 0.1^2) (biases), N(0, 1) (embeddings)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("embedding_table.weight"):
                std = 1.0
            elif p.ndim >= 2:
                std = 1.0 / math.sqrt(p[0].numel())
            else:
                std = 0.1
            p.copy_(torch.randn(p.shape, generator=g) * std)
        # Converted DiT checkpoints hold one embedder, copied into every block;
        # the original layout can only express that.
        first = model.transformer_blocks[0].norm1.emb.state_dict()
        for blk in model.transformer_blocks[1:]:
            blk.norm1.emb.load_state_dict(first)


def to_original(sd: dict, depth: int, pos_embed: torch.Tensor) -> dict:
    """Map diffusers names to the original DiT names (fusing q, k, v into qkv)."""
    emb = "transformer_blocks.0.norm1.emb."
    out = {
        "x_embedder.proj.weight": sd["pos_embed.proj.weight"],
        "x_embedder.proj.bias": sd["pos_embed.proj.bias"],
        "pos_embed": pos_embed,
        "t_embedder.mlp.0.weight": sd[emb + "timestep_embedder.linear_1.weight"],
        "t_embedder.mlp.0.bias": sd[emb + "timestep_embedder.linear_1.bias"],
        "t_embedder.mlp.2.weight": sd[emb + "timestep_embedder.linear_2.weight"],
        "t_embedder.mlp.2.bias": sd[emb + "timestep_embedder.linear_2.bias"],
        "y_embedder.embedding_table.weight": sd[emb + "class_embedder.embedding_table.weight"],
        "final_layer.adaLN_modulation.1.weight": sd["proj_out_1.weight"],
        "final_layer.adaLN_modulation.1.bias": sd["proj_out_1.bias"],
        "final_layer.linear.weight": sd["proj_out_2.weight"],
        "final_layer.linear.bias": sd["proj_out_2.bias"],
    }
    for i in range(depth):
        b = f"transformer_blocks.{i}."
        o = f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[o + "attn.qkv." + kind] = torch.cat(
                [sd[b + f"attn1.to_{n}.{kind}"] for n in "qkv"], dim=0
            )
            out[o + "attn.proj." + kind] = sd[b + "attn1.to_out.0." + kind]
            out[o + "mlp.fc1." + kind] = sd[b + "ff.net.0.proj." + kind]
            out[o + "mlp.fc2." + kind] = sd[b + "ff.net.2." + kind]
            out[o + "adaLN_modulation.1." + kind] = sd[b + "norm1.linear." + kind]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def original_forward(sd: dict, x, t, y, heads: int, patch: int, out_ch: int):
    """The original DiT forward pass, written from the paper's code structure."""

    def linear(h, name):
        return F.linear(h, sd[name + ".weight"], sd[name + ".bias"])

    def ln(h):
        return F.layer_norm(h, (h.shape[-1],), eps=1e-6)

    def modulate(h, shift, scale):
        return h * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

    n = x.shape[0]
    h = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=patch)
    h = h.flatten(2).transpose(1, 2) + sd["pos_embed"]
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(0, half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    temb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    temb = linear(F.silu(linear(temb, "t_embedder.mlp.0")), "t_embedder.mlp.2")
    c = temb + sd["y_embedder.embedding_table.weight"][y]
    d = h.shape[-1]
    hd = d // heads
    i = 0
    while f"blocks.{i}.attn.qkv.weight" in sd:
        p = f"blocks.{i}."
        mod = linear(F.silu(c), p + "adaLN_modulation.1").chunk(6, dim=1)
        s_msa, sc_msa, g_msa, s_mlp, sc_mlp, g_mlp = mod
        a = modulate(ln(h), s_msa, sc_msa)
        qkv = linear(a, p + "attn.qkv").reshape(n, -1, 3, heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = torch.softmax((q * hd**-0.5) @ k.transpose(-2, -1), dim=-1)
        a = (att @ v).transpose(1, 2).reshape(n, -1, d)
        h = h + g_msa.unsqueeze(1) * linear(a, p + "attn.proj")
        m = modulate(ln(h), s_mlp, sc_mlp)
        m = linear(F.gelu(linear(m, p + "mlp.fc1"), approximate="tanh"), p + "mlp.fc2")
        h = h + g_mlp.unsqueeze(1) * m
        i += 1
    shift, scale = linear(F.silu(c), "final_layer.adaLN_modulation.1").chunk(2, dim=1)
    h = linear(modulate(ln(h), shift, scale), "final_layer.linear")
    side = int(h.shape[1] ** 0.5)
    h = h.reshape(n, side, side, patch, patch, out_ch)
    h = torch.einsum("nhwpqc->nchpwq", h)
    return h.reshape(n, out_ch, side * patch, side * patch), c


def main() -> None:
    torch.manual_seed(0)
    model = DiTTransformer2DModel(**CFG).eval()
    randomise(model, seed=1234)

    g = torch.Generator().manual_seed(99)
    s = CFG["sample_size"]
    x = torch.randn(4, CFG["in_channels"], s, s, generator=g)
    t = torch.tensor([999.0, 500.0, 17.0, 0.0])
    null = CFG["num_embeds_ada_norm"]
    y = torch.tensor([3, null, 0, 9], dtype=torch.int64)

    captured = {}
    blk0 = model.transformer_blocks[0]
    hooks = [
        model.pos_embed.register_forward_hook(lambda m, i, o: captured.setdefault("embed", o)),
        blk0.norm1.emb.register_forward_hook(lambda m, i, o: captured.setdefault("cond", o)),
        blk0.norm1.linear.register_forward_hook(lambda m, i, o: captured.setdefault("mod0", o)),
        blk0.attn1.register_forward_hook(lambda m, i, o: captured.setdefault("attn0", o)),
        blk0.ff.register_forward_hook(lambda m, i, o: captured.setdefault("mlp0", o)),
    ]
    with torch.no_grad():
        out_diffusers = model(x, timestep=t, class_labels=y).sample
    for h in hooks:
        h.remove()

    depth = CFG["num_layers"]
    pos_embed = model.pos_embed.pos_embed.detach().clone()  # [1, T, D], float32
    orig = to_original(model.state_dict(), depth, pos_embed)
    heads, patch, out_ch = CFG["num_attention_heads"], CFG["patch_size"], CFG["out_channels"]
    with torch.no_grad():
        out_original, cond_original = original_forward(orig, x, t, y, heads, patch, out_ch)
        # Cross-check: diffusers with the two original settings patched in.
        for blk in model.transformer_blocks:
            blk.norm1.emb.time_proj.downscale_freq_shift = 0
            blk.norm3.eps = 1e-6
        patched = model(x, timestep=t, class_labels=y).sample
    err = (patched - out_original).abs().max().item()
    assert err < 1e-5, f"original re-implementation disagrees with patched diffusers: {err}"
    # The two numerics really differ, and every input matters.
    assert (out_original - out_diffusers).abs().max().item() > 1e-4
    assert out_diffusers.abs().max().item() > 0.1

    os.makedirs(OUT, exist_ok=True)
    model_dir = os.path.join(OUT, "diffusers")
    # Reload a clean copy so the saved config has the unpatched settings.
    clean = DiTTransformer2DModel(**CFG).eval()
    clean.load_state_dict(model.state_dict())
    clean.save_pretrained(model_dir, safe_serialization=True)
    torch.save({"ema": orig}, os.path.join(OUT, "original.pt"))
    torch.save(orig, os.path.join(OUT, "original_plain.pt"))
    # torch.save stores shared storages once: only the changed tensor is extra.
    trained = dict(orig)
    trained["final_layer.linear.bias"] = orig["final_layer.linear.bias"] + 1.0
    checkpoint = {
        "model": trained,
        "ema": orig,
        "opt": {"state": {}, "param_groups": [{"lr": 1e-4}]},
        "args": argparse.Namespace(model="DiT-XL/2", image_size=256, num_classes=1000),
    }
    torch.save(checkpoint, os.path.join(OUT, "original_train.pt"))
    save_file(orig, os.path.join(OUT, "original.safetensors"))

    mod0 = captured["mod0"].chunk(6, dim=1)
    names = ["shift_msa", "scale_msa", "gate_msa", "shift_mlp", "scale_mlp", "gate_mlp"]
    golden = {
        "x": x,
        "t": t,
        "y": y,
        "out_diffusers": out_diffusers,
        "out_original": out_original,
        "embed": captured["embed"],
        "cond_diffusers": captured["cond"],
        "cond_original": cond_original,
        "attn0_diffusers": captured["attn0"],
        "mlp0_diffusers": captured["mlp0"],
    }
    for n, v in zip(names, mod0):
        golden["mod0_diffusers." + n] = v
    save_file({k: v.detach().contiguous() for k, v in golden.items()}, os.path.join(OUT, "golden.safetensors"))
    print(f"wrote {OUT}: max|out| = {out_diffusers.abs().max().item():.3f}, "
          f"|diffusers - original| = {(out_original - out_diffusers).abs().max().item():.3e}")


if __name__ == "__main__":
    main()
