#!/usr/bin/env python3
"""Golden fixtures for the PixArt-alpha model of `crates/tcc-model`.

Builds a tiny `diffusers.PixArtTransformer2DModel` (adaLN-single, no
additional conditions, like PixArt-alpha 256/512) with every parameter
randomised (the scale-shift tables and the caption projection included, so
that no branch trivially vanishes) and writes, under
`crates/tcc-model/tests/fixtures/pixart_tiny/`:

- `model/config.json` + `model/diffusion_pytorch_model.safetensors`: the
  diffusers layout, as `save_pretrained` writes it (float32).
- `golden.safetensors`: the inputs and the expected outputs:
  - `x` `[2, 4, 8, 8]`, `t` `[2]` (f32 timesteps, one fractional),
    `caption` `[2, 5, 24]`, `mask` `[2, 5]` (f32, 1 = attend; sample 0 has
    two padding tokens whose embeddings are large, so a mask that leaks
    shows);
  - `out`: `PixArtTransformer2DModel.forward` in float32 (the reference);
  - `out_f64`: the same forward in float64 (weights and inputs cast), to
    state how far the float32 reference itself is from exact;
  - `embed`, `temb` (the embedded timestep), `t6` (adaln_single's 6*D
    vector), `context` (the projected captions): intermediate values of the
    float32 forward, for the per-part checks.

The interpolation scale of the position embedding is set explicitly to 0.5
(base size 4, grid 4: positions 2j), as diffusers' PixArt-alpha 256px
checkpoint has it (convert_pixart_alpha_to_diffusers.py: {256: 0.5, 512: 1,
1024: 2}), so a loader that ignores it fails.

Run from the repository root: `python3 tools/golden/pixart_model.py`.
Needs torch and diffusers (tested with diffusers 0.42.1).
"""

import math
import os

import torch
from diffusers import PixArtTransformer2DModel
from safetensors.torch import save_file

OUT = os.path.join("crates", "tcc-model", "tests", "fixtures", "pixart_tiny")

HEADS = 2
HEAD_DIM = 16
HIDDEN = HEADS * HEAD_DIM
CAPTION_CHANNELS = 24
CAPTION_TOKENS = 5

CFG = dict(
    num_attention_heads=HEADS,
    attention_head_dim=HEAD_DIM,
    in_channels=4,
    out_channels=8,  # learned sigma
    num_layers=2,
    cross_attention_dim=HIDDEN,
    attention_bias=True,
    sample_size=8,
    patch_size=2,
    activation_fn="gelu-approximate",
    num_embeds_ada_norm=1000,
    norm_type="ada_norm_single",
    norm_elementwise_affine=False,
    norm_eps=1e-6,
    interpolation_scale=0.5,
    use_additional_conditions=False,
    caption_channels=CAPTION_CHANNELS,
)


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2), scale-shift tables ~ N(0, 0.3^2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("scale_shift_table"):
                std = 0.3
            elif p.ndim >= 2:
                std = 1.0 / math.sqrt(p[0].numel())
            else:
                std = 0.1
            p.copy_(torch.randn(p.shape, generator=g) * std)


def forward(model, x, t, caption, mask):
    return model(
        x,
        encoder_hidden_states=caption,
        timestep=t,
        encoder_attention_mask=mask,
        return_dict=False,
    )[0]


def main() -> None:
    torch.manual_seed(0)
    model = PixArtTransformer2DModel(**CFG).eval()
    randomise(model, seed=1234)

    g = torch.Generator().manual_seed(99)
    x = torch.randn((2, 4, 8, 8), generator=g)
    t = torch.tensor([981.0, 37.5])
    caption = torch.randn((2, CAPTION_TOKENS, CAPTION_CHANNELS), generator=g)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    # Padding tokens with large embeddings: any leak through the mask shows.
    caption[0, 3:] *= 10.0

    captured = {}
    hooks = [
        model.pos_embed.register_forward_hook(lambda m, i, o: captured.__setitem__("embed", o)),
        model.adaln_single.register_forward_hook(
            lambda m, i, o: captured.update(t6=o[0], temb=o[1])
        ),
        model.caption_projection.register_forward_hook(
            lambda m, i, o: captured.__setitem__("context", o)
        ),
    ]
    with torch.no_grad():
        out = forward(model, x, t, caption, mask)
    for h in hooks:
        h.remove()

    with torch.no_grad():
        m64 = PixArtTransformer2DModel(**CFG).eval()
        m64.load_state_dict(model.state_dict())
        m64 = m64.double()
        # The position embedding buffer is built in f32; rebuild it exactly.
        from diffusers.models.embeddings import get_2d_sincos_pos_embed

        pe = m64.pos_embed
        grid = int(pe.pos_embed.shape[1] ** 0.5)
        pe.pos_embed = get_2d_sincos_pos_embed(
            pe.pos_embed.shape[-1],
            grid,
            base_size=pe.base_size,
            interpolation_scale=pe.interpolation_scale,
            output_type="pt",
        ).double().unsqueeze(0)
        out64 = forward(m64, x.double(), t.double(), caption.double(), mask.double())
        # diffusers computes the sinusoidal timestep features in f32 whatever
        # the model dtype, so the f64 run is exact except there.
    err = (out.double() - out64).abs().max().item()
    print(f"output max |out| = {out.abs().max().item():.3f}")
    print(f"float32 reference vs float64: max abs {err:.3e}")

    # Masked tokens must not matter.
    with torch.no_grad():
        c2 = caption.clone()
        c2[0, 4] += 5.0
        diff = (forward(model, x, t, c2, mask) - out).abs().max().item()
    print(f"changing a masked token changes the output by {diff:.3e}")
    assert diff == 0.0

    model_dir = os.path.join(OUT, "model")
    os.makedirs(model_dir, exist_ok=True)
    model.save_pretrained(model_dir, safe_serialization=True)
    tensors = {
        "x": x,
        "t": t,
        "caption": caption,
        "mask": mask,
        "out": out,
        "out_f64": out64,
        "embed": captured["embed"],
        "temb": captured["temb"],
        "t6": captured["t6"],
        "context": captured["context"],
    }
    save_file(
        {k: v.detach().contiguous() for k, v in tensors.items()},
        os.path.join(OUT, "golden.safetensors"),
        metadata={"f32_vs_f64_max_abs": f"{err:.3e}"},
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
