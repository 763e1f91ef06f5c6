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
import sys

import torch
from diffusers import PixArtTransformer2DModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pixart_model import CFG  # noqa: E402

OUT = os.path.join("tests", "fixtures", "tiny-pixart", "transformer")


def main():
    torch.manual_seed(0)
    # pixart_model.py's tiny configuration, with captions as wide as the
    # tiny T5's output.
    model = PixArtTransformer2DModel(**dict(CFG, caption_channels=32))
    # Random everything (zero-initialised tables and projections included),
    # so that every branch, the cross one too, moves the output.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    model.save_pretrained(OUT, safe_serialization=True)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
