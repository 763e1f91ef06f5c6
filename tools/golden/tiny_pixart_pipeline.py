#!/usr/bin/env python3
"""The transformer of a tiny PixArt-alpha pipeline for tcc's end-to-end CLI
test (tests/cli_pixart.rs): prompt -> T5 tokens -> embeddings -> latents ->
VAE -> image.

Writes `tests/fixtures/tiny-pixart/transformer/` (diffusers layout) holding
a seeded random `PixArtTransformer2DModel` whose caption width (32) matches
the tiny T5 of crates/tcc-text/tests/fixtures/tiny-pipeline and whose 4
latent channels match the tiny VAE of crates/tcc-vae/tests/fixtures. The
test assembles the pipeline from the three folders, so none is stored twice.

Run from the repository root: python3 tools/golden/tiny_pixart_pipeline.py
"""

import os

import torch
from diffusers import PixArtTransformer2DModel

OUT = os.path.join("tests", "fixtures", "tiny-pixart", "transformer")


def main():
    torch.manual_seed(0)
    model = PixArtTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        cross_attention_dim=32,
        attention_bias=True,
        sample_size=8,
        patch_size=2,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        caption_channels=32,
        interpolation_scale=0.5,
        use_additional_conditions=False,
    )
    # Random everything (zero-initialised tables and projections included),
    # so that every branch, the cross one too, moves the output.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    model.save_pretrained(OUT, safe_serialization=True)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
