#!/usr/bin/env python3
"""The tiny PixArt-alpha fixture in the ORIGINAL checkpoint layout.

Reads the diffusers-layout fixture written by `tools/golden/pixart_model.py`
(`crates/tcc-model/tests/fixtures/pixart_tiny/model/`) and writes the same
weights as the original PixArt-alpha repository saves them
(`PixArt-XL-2-256x256.pth` and friends): a torch state dict nested under
`state_dict`, in `crates/tcc-model/tests/fixtures/pixart_tiny/original.pth`.

The renaming is the inverse of diffusers'
`scripts/convert_pixart_alpha_to_diffusers.py`:

- `pos_embed.proj` -> `x_embedder.proj`;
- `adaln_single.emb.timestep_embedder.linear_{1,2}` -> `t_embedder.mlp.{0,2}`;
- `adaln_single.linear` -> `t_block.1`;
- `caption_projection.linear_{1,2}` -> `y_embedder.y_proj.fc{1,2}`;
- per block: `attn1.to_{q,k,v}` fused (rows stacked q, k, v) ->
  `attn.qkv`; `attn1.to_out.0` -> `attn.proj`; `attn2.to_q` ->
  `cross_attn.q_linear`; `attn2.to_{k,v}` fused (k, v) ->
  `cross_attn.kv_linear`; `attn2.to_out.0` -> `cross_attn.proj`;
  `ff.net.0.proj` / `ff.net.2` -> `mlp.fc1` / `mlp.fc2`;
  `scale_shift_table` kept;
- `proj_out` -> `final_layer.linear`, `scale_shift_table` ->
  `final_layer.scale_shift_table`.

Plus the two tensors diffusers drops: the fixed `pos_embed` buffer
`[1, N, D]` (taken from the diffusers model's own `PatchEmbed`, so it carries
the fixture's interpolation scale 0.5), and the learned null caption
`y_embedder.y_embedding` `[120, caption_channels]` (random, seeded: diffusers
has no counterpart, so the Rust test only checks it is loaded as is).

The forward of these weights is the forward of the diffusers fixture, so the
Rust test compares against `golden.safetensors`' `out`.

Run from the repository root: `python3 tools/golden/pixart_original.py`.
Needs torch and diffusers (tested with diffusers 0.42.1).
"""

import os

import torch
from diffusers import PixArtTransformer2DModel
from safetensors.torch import load_file

FIXTURE = os.path.join("crates", "tcc-model", "tests", "fixtures", "pixart_tiny")
CAPTION_TOKENS = 120  # the original CaptionEmbedder's token_num


def to_original(d: dict, depth: int) -> dict:
    sd = {}

    def lin(src: str, dst: str) -> None:
        for kind in ("weight", "bias"):
            sd[f"{dst}.{kind}"] = d.pop(f"{src}.{kind}")

    lin("pos_embed.proj", "x_embedder.proj")
    lin("adaln_single.emb.timestep_embedder.linear_1", "t_embedder.mlp.0")
    lin("adaln_single.emb.timestep_embedder.linear_2", "t_embedder.mlp.2")
    lin("adaln_single.linear", "t_block.1")
    lin("caption_projection.linear_1", "y_embedder.y_proj.fc1")
    lin("caption_projection.linear_2", "y_embedder.y_proj.fc2")
    for i in range(depth):
        b, o = f"transformer_blocks.{i}", f"blocks.{i}"
        sd[f"{o}.scale_shift_table"] = d.pop(f"{b}.scale_shift_table")
        for kind in ("weight", "bias"):
            sd[f"{o}.attn.qkv.{kind}"] = torch.cat(
                [d.pop(f"{b}.attn1.to_{n}.{kind}") for n in ("q", "k", "v")], 0
            )
            sd[f"{o}.cross_attn.kv_linear.{kind}"] = torch.cat(
                [d.pop(f"{b}.attn2.to_{n}.{kind}") for n in ("k", "v")], 0
            )
        lin(f"{b}.attn1.to_out.0", f"{o}.attn.proj")
        lin(f"{b}.attn2.to_q", f"{o}.cross_attn.q_linear")
        lin(f"{b}.attn2.to_out.0", f"{o}.cross_attn.proj")
        lin(f"{b}.ff.net.0.proj", f"{o}.mlp.fc1")
        lin(f"{b}.ff.net.2", f"{o}.mlp.fc2")
    lin("proj_out", "final_layer.linear")
    sd["final_layer.scale_shift_table"] = d.pop("scale_shift_table")
    assert not d, f"unmapped diffusers tensors: {sorted(d)}"
    return sd


def main() -> None:
    model_dir = os.path.join(FIXTURE, "model")
    model = PixArtTransformer2DModel.from_pretrained(model_dir).eval()
    cfg = model.config
    weights = load_file(os.path.join(model_dir, "diffusion_pytorch_model.safetensors"))
    sd = to_original(dict(weights), cfg.num_layers)

    sd["pos_embed"] = model.pos_embed.pos_embed.detach().float()
    g = torch.Generator().manual_seed(5)
    channels = cfg.caption_channels
    sd["y_embedder.y_embedding"] = torch.randn((CAPTION_TOKENS, channels), generator=g) / channels**0.5

    # Check the inverse: converting back (as diffusers' script does) gives
    # the fixture's weights exactly.
    back = {}
    for i in range(cfg.num_layers):
        q, k, v = torch.chunk(sd[f"blocks.{i}.attn.qkv.weight"], 3, dim=0)
        back[f"transformer_blocks.{i}.attn1.to_k.weight"] = k
        k, v = torch.chunk(sd[f"blocks.{i}.cross_attn.kv_linear.bias"], 2, dim=0)
        back[f"transformer_blocks.{i}.attn2.to_v.bias"] = v
    for name, t in back.items():
        assert torch.equal(t, weights[name]), name

    sd = {k: v.detach().contiguous().clone() for k, v in sd.items()}
    out = os.path.join(FIXTURE, "original.pth")
    torch.save({"state_dict": sd}, out)
    print(f"wrote {out}: {len(sd)} tensors, {os.path.getsize(out)} bytes")


if __name__ == "__main__":
    main()
