#!/usr/bin/env python3
"""Golden fixtures for the VAE decoder of `crates/tcc-vae`.

Builds a tiny seeded random `diffusers.AutoencoderKL` with the architecture of
stabilityai/sd-vae-ft-ema scaled down (4 down/up blocks, so 3 upsamplers and
the same 8x spatial factor; 4 latent channels; one attention in the mid
block; block_out_channels (16, 16, 16, 32), layers_per_block 1,
norm_num_groups 8: the weights stay under 1 MB), with every parameter randomised (GroupNorm affines included, so that
no weight is trivially 1 or 0), and writes under `crates/tcc-vae/tests/fixtures/`:

- `tiny-vae/config.json` + `tiny-vae/diffusion_pytorch_model.safetensors`:
  the diffusers layout, as `save_pretrained` writes it (encoder included,
  although tcc-vae only reads the decoder and `post_quant_conv`).
- `vae_expected.safetensors`:
  - `latents`: [2, 4, 8, 8], as a sampler outputs them (scaled latents);
  - `decoded`: `vae.decode(latents / vae.config.scaling_factor).sample`,
    [2, 3, 64, 64], the reference (what diffusers' DiT / PixArt pipelines
    compute before post-processing);
  - `images`: `decoded.clamp(-1, 1)` (about 8% of the decoded values lie
    outside [-1, 1], so the clamp is exercised).

Run from the repository root: `python3 tools/golden/vae_decoder.py`.
Needs torch, diffusers and safetensors (tested with torch 2.15, diffusers 0.42.1).
"""

import os

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

OUT = os.path.join("crates", "tcc-vae", "tests", "fixtures")


def main():
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 16, 32),
        layers_per_block=1,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.18215,
    ).eval()
    with torch.no_grad():
        norms = {
            name
            for name, m in vae.named_modules()
            if isinstance(m, torch.nn.GroupNorm)
        }
        for name, p in vae.named_parameters():
            module, kind = name.rsplit(".", 1)
            if module in norms and kind == "weight":
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif kind == "bias":
                p.copy_(0.1 * torch.randn_like(p))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn_like(p) / fan_in**0.5)

    vae.save_pretrained(os.path.join(OUT, "tiny-vae"), safe_serialization=True)

    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 8, 8, generator=gen) * 0.8
    with torch.no_grad():
        decoded = vae.decode(latents / vae.config.scaling_factor).sample
    images = decoded.clamp(-1, 1)
    save_file(
        {
            "latents": latents.contiguous(),
            "decoded": decoded.contiguous(),
            "images": images.contiguous(),
        },
        os.path.join(OUT, "vae_expected.safetensors"),
    )
    clipped = (decoded.abs() > 1).float().mean().item()
    print(
        f"decoded {tuple(decoded.shape)}, range [{decoded.min():.3f}, {decoded.max():.3f}], "
        f"{100 * clipped:.1f}% outside [-1, 1]"
    )


if __name__ == "__main__":
    main()
