#!/usr/bin/env python3
"""PyTorch eager time of one transformer forward: the baseline of `tcc bench`.

diffusers' DiTTransformer2DModel (DiT-XL/2 256 px) and
PixArtTransformer2DModel (PixArt-α 256 px) with random weights, in f32 and
bf16, on a model batch of 2 x --batch-size (both CFG halves), as one
denoising step of `tcc bench --batch-size N` runs them. Prints one JSON
object per (model, dtype) line:

  {"model": "dit-xl-2-256", "dtype": "bf16", "model_batch": 16,
   "forward_ms": 9.1, "forward_ms_all": [...]}

forward_ms is the median over --iters timed forwards (CUDA events) after
--warmup untimed ones. f32 runs without TF32 (PyTorch's default, and
candle's): the same arithmetic as tcc's f32. Attention is diffusers' default
(scaled_dot_product_attention: flash / memory-efficient kernels where they
apply). Run on the GPU machine by tools/cuda/check.sh; diffusers travels
there as a wheel. With --device cpu and --tiny it checks itself here.
"""

import argparse
import json
import statistics
import time

import torch
from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel

# The shapes of tcc_core's presets `dit-xl-2-256` and `pixart-alpha-256`.
DIT_XL2 = dict(
    num_attention_heads=16,
    attention_head_dim=72,
    in_channels=4,
    out_channels=8,
    num_layers=28,
    sample_size=32,
    patch_size=2,
    num_embeds_ada_norm=1000,
)
PIXART_256 = dict(
    num_attention_heads=16,
    attention_head_dim=72,
    in_channels=4,
    out_channels=8,
    num_layers=28,
    cross_attention_dim=1152,
    attention_bias=True,
    sample_size=32,
    patch_size=2,
    activation_fn="gelu-approximate",
    num_embeds_ada_norm=1000,
    norm_type="ada_norm_single",
    norm_elementwise_affine=False,
    norm_eps=1e-6,
    interpolation_scale=0.5,
    use_additional_conditions=False,
    caption_channels=4096,
)
CAPTION_TOKENS = 120


def tiny(cfg):
    """The same model family at test size (checks the script on a CPU)."""
    return dict(cfg, num_layers=2, num_attention_heads=2, attention_head_dim=16, sample_size=8,
                **({"cross_attention_dim": 32, "caption_channels": 24} if "caption_channels" in cfg else {}))


def bench(name, model, inputs, device, warmup, iters):
    with torch.inference_mode():
        for _ in range(warmup):
            model(**inputs)
        times = []
        for _ in range(iters):
            if device.type == "cuda":
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                model(**inputs)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                model(**inputs)
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-size", type=int, default=8, help="samples; the model batch is twice that")
    ap.add_argument("--dtypes", default="f32,bf16")
    ap.add_argument("--models", default="dit-xl-2-256,pixart-alpha-256")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="test-size models (a CPU self-check)")
    args = ap.parse_args()

    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    b = 2 * args.batch_size
    for name in args.models.split(","):
        for dt in args.dtypes.split(","):
            dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dt]
            if name == "dit-xl-2-256":
                cfg = tiny(DIT_XL2) if args.tiny else DIT_XL2
                model = DiTTransformer2DModel(**cfg)
                s = cfg["sample_size"]
                inputs = dict(
                    hidden_states=torch.randn(b, 4, s, s),
                    timestep=torch.full((b,), 500, dtype=torch.long),
                    class_labels=torch.arange(b) % 1000,
                    return_dict=False,
                )
            elif name == "pixart-alpha-256":
                cfg = tiny(PIXART_256) if args.tiny else PIXART_256
                model = PixArtTransformer2DModel(**cfg)
                s = cfg["sample_size"]
                inputs = dict(
                    hidden_states=torch.randn(b, 4, s, s),
                    encoder_hidden_states=torch.randn(b, CAPTION_TOKENS, cfg["caption_channels"]),
                    timestep=torch.full((b,), 500.0),
                    encoder_attention_mask=torch.ones(b, CAPTION_TOKENS),
                    added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                    return_dict=False,
                )
            else:
                raise SystemExit(f"unknown model {name}")
            model = model.to(device=device, dtype=dtype).eval()
            inputs = {
                k: (v.to(device, dtype) if torch.is_tensor(v) and v.is_floating_point()
                    else v.to(device) if torch.is_tensor(v) else v)
                for k, v in inputs.items()
            }
            ms, all_ms = bench(name, model, inputs, device, args.warmup, args.iters)
            print(json.dumps({
                "model": name,
                "dtype": dt,
                "model_batch": b,
                "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                "torch": torch.__version__,
                "forward_ms": ms,
                "forward_ms_all": all_ms,
            }), flush=True)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
