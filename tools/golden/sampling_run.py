#!/usr/bin/env python3
"""Golden sampling runs of a tiny random diffusers DiT.

Writes tests/fixtures/sampling/ (documented in its README.md):

- model/: a tiny `DiTTransformer2DModel` (2 layers, 2 heads x 16, patch 2,
  sample size 8, 4 -> 8 channels (learned sigma), 10 classes) in diffusers
  layout. Every parameter is first randomised from a seed (the
  zero-initialised adaLN and output layers included, so nothing is trivially
  zero), then trained briefly (seeded Adam) to predict eps on a toy
  class-conditional dataset, so that sampling trajectories stay O(10): with
  purely random weights eps does not cancel x and the latents grow ~157x
  (1 / sqrt(alpha_bar[999])) to ~1000, where float32 rounding alone exceeds
  1e-4;
- runs.json: the sampler settings (tcc_core::SamplerSpec as JSON) of each run;
- expected.safetensors: initial noise, labels and every run's latents.

Runs (model in float32, eval mode):
  ddim_cfg  DDIM 10 steps, eta 0, CFG 1.5, batch [cond; uncond], guiding the
            first 3 channels: DiT's sample.py loop literally (doubled latents,
            forward_with_cfg, ddim_sample on the doubled batch, first half
            kept), with DiT's respaced coefficients (float64, applied in
            float32 as DiT's _extract_into_tensor does). Also every step's raw
            model output and guided output.
  dpm_cfg   DPM-Solver++ 2M 10 steps, CFG 4.5, batch [uncond; cond]: PixArt's
            pipeline loop with diffusers' DPMSolverMultistepScheduler.
  ddim      DDIM 10 steps, eta 0, no CFG: DiT's loop.

Each run is repeated in float64 (model and DiT coefficients; diffusers'
scheduler computes in float32 regardless) and the largest difference is
recorded in runs.json: the float32 rounding floor of the run.

Usage: python3 tools/golden/sampling_run.py   (needs torch, diffusers, safetensors)
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import DiTTransformer2DModel
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from samplers import DitRespaced, base_betas, dpm_scheduler, spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/fixtures/sampling"

NUM_CLASSES = 10
NULL_CLASS = NUM_CLASSES
LABELS = [3, 7]
B, C, S = len(LABELS), 4, 8
STEPS = 10


def tiny_dit():
    torch.manual_seed(0)
    model = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=C,
        out_channels=2 * C,
        num_layers=2,
        sample_size=S,
        patch_size=2,
        num_embeds_ada_norm=NUM_CLASSES,
        activation_fn="gelu-approximate",
        norm_type="ada_norm_zero",
        norm_elementwise_affine=False,
        norm_eps=1e-5,
    )
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            fan_in = p.shape[1] * (p[0, 0].numel() if p.dim() > 2 else 1) if p.dim() >= 2 else 1
            std = (1.0 / fan_in) ** 0.5 if p.dim() >= 2 else 0.05
            if "class_embedder" in name:
                std = 0.2
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def train_briefly(model, iters=1200, batch=64):
    """Seeded eps-prediction training on x0 = one fixed pattern per class.
    In train mode the model's label embedder drops 10% of the labels to the
    null class itself (class_dropout_prob), as DiT trains for CFG."""
    gen = torch.Generator().manual_seed(99)
    patterns = torch.randn((NUM_CLASSES, C, S, S), generator=gen) * 0.8
    ac = torch.tensor(np.cumprod(1.0 - base_betas()), dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    lr = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    model.train()
    with torch.enable_grad():
        for it in range(iters):
            y = torch.randint(0, NUM_CLASSES, (batch,), generator=gen)
            t = torch.randint(0, 1000, (batch,), generator=gen)
            eps = torch.randn((batch, C, S, S), generator=gen)
            a = ac[t][:, None, None, None]
            x_t = a.sqrt() * patterns[y] + (1 - a).sqrt() * eps
            out = model(x_t, timestep=t.float(), class_labels=y).sample
            loss = ((out[:, :C] - eps) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            lr.step()
            if it % 200 == 0 or it == iters - 1:
                print(f"  train step {it}: loss {loss.item():.4f}", flush=True)
    return model.eval()


def forward(model, x, t, labels):
    ts = torch.full((x.shape[0],), float(t), dtype=x.dtype)
    return model(x, timestep=ts, class_labels=labels).sample


def extract(arr, k, like):
    """DiT's _extract_into_tensor: a float64 array entry in the tensors' dtype
    (float32 in DiT's sampling)."""
    return torch.tensor(arr[k]).to(like.dtype)


def ddim_sample(d, k, x, model_output):
    """DiT's ddim_sample (eta 0, clip_denoised False) on one step, torch f32."""
    c = x.shape[1]
    eps = model_output[:, :c]
    pred_xstart = extract(d.sqrt_recip, k, x) * x - extract(d.sqrt_recipm1, k, x) * eps
    eps = (extract(d.sqrt_recip, k, x) * x - pred_xstart) / extract(d.sqrt_recipm1, k, x)
    alpha_bar_prev = extract(d.ac_prev, k, x)
    return pred_xstart * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev) * eps


def run_ddim_cfg(model, z, y, scale, guided):
    """DiT sample.py: z2 = [z; z], y2 = [y; null], forward_with_cfg, first half kept."""
    d = DitRespaced(STEPS)
    z2 = torch.cat([z, z])
    y2 = torch.cat([y, torch.full_like(y, NULL_CLASS)])
    xs, raw, guided_out = [], [], []
    for k in reversed(range(STEPS)):
        half = z2[: len(z2) // 2]
        combined = torch.cat([half, half])
        model_out = forward(model, combined, d.timestep_map[k], y2)
        raw.append(model_out)
        eps, rest = model_out[:, :guided], model_out[:, guided:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + scale * (cond_eps - uncond_eps)
        eps = torch.cat([half_eps, half_eps], dim=0)
        out = torch.cat([eps, rest], dim=1)
        guided_out.append(out[:B])
        z2 = ddim_sample(d, k, z2, out)
        xs.append(z2[:B])
    return xs, raw, guided_out


def run_ddim(model, z, y):
    d = DitRespaced(STEPS)
    x, xs = z, []
    for k in reversed(range(STEPS)):
        x = ddim_sample(d, k, x, forward(model, x, d.timestep_map[k], y))
        xs.append(x)
    return xs


def run_dpm_cfg(model, z, y, scale):
    """PixArt-alpha's pipeline loop: [uncond; cond], guide, drop the learned sigma."""
    sched = dpm_scheduler()
    sched.set_timesteps(STEPS)
    y2 = torch.cat([torch.full_like(y, NULL_CLASS), y])
    x, xs = z, []
    for t in sched.timesteps:
        noise_pred = forward(model, torch.cat([x, x]), int(t), y2)
        uncond, cond = noise_pred.chunk(2)
        noise_pred = uncond + scale * (cond - uncond)
        noise_pred = noise_pred.chunk(2, dim=1)[0]
        x = sched.step(noise_pred, t, x).prev_sample.to(z.dtype)
        xs.append(x)
    return xs, [int(t) for t in sched.timesteps]


def all_runs(model, z, y):
    """Every run's latents after each step (and the CFG-DDIM run's model
    outputs), keyed as in expected.safetensors."""
    tensors = {}
    xs, raw, guided = run_ddim_cfg(model, z, y, 1.5, 3)
    for i, (x, r, g) in enumerate(zip(xs, raw, guided)):
        tensors[f"ddim_cfg.x{i + 1}"] = x
        tensors[f"ddim_cfg.model_out{i}"] = r
        tensors[f"ddim_cfg.guided{i}"] = g
    xs_dpm, dpm_ts = run_dpm_cfg(model, z, y, 4.5)
    for i, x in enumerate(xs_dpm):
        tensors[f"dpm_cfg.x{i + 1}"] = x
    for i, x in enumerate(run_ddim(model, z, y)):
        tensors[f"ddim.x{i + 1}"] = x
    return tensors, dpm_ts


def main():
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    model = train_briefly(tiny_dit())
    (OUT / "model").mkdir(parents=True, exist_ok=True)
    model.save_pretrained(OUT / "model", safe_serialization=True)

    z = torch.randn((B, C, S, S), generator=torch.Generator().manual_seed(42))
    y = torch.tensor(LABELS, dtype=torch.int64)
    runs = {
        "ddim_cfg": spec("ddim", STEPS, 1.5, order="cond-first", guided=3),
        "dpm_cfg": spec("dpm-solver++", STEPS, 4.5, order="uncond-first"),
        "ddim": spec("ddim", STEPS),
    }
    dit_ts = list(reversed(DitRespaced(STEPS).timestep_map))

    tensors, dpm_ts = all_runs(model, z, y)
    tensors64, _ = all_runs(model.double(), z.double(), y)
    timesteps = {"ddim_cfg": dit_ts, "dpm_cfg": dpm_ts, "ddim": dit_ts}
    floor = {}
    for key, v in tensors.items():
        run = key.split(".")[0]
        floor[run] = max(floor.get(run, 0.0), float((v.double() - tensors64[key]).abs().max()))

    save_file(
        {"x_T": z, "labels": y, **{k: v.contiguous() for k, v in tensors.items()}},
        OUT / "expected.safetensors",
    )
    meta = {
        "labels": LABELS,
        "null_class": NULL_CLASS,
        "runs": {
            name: {
                "spec": sp,
                "timesteps": timesteps[name],
                "final_max_abs": float(tensors[f"{name}.x{STEPS}"].abs().max()),
                "f32_vs_f64_max_abs": floor[name],
            }
            for name, sp in runs.items()
        },
    }
    (OUT / "runs.json").write_text(json.dumps(meta, indent=1) + "\n")
    for name, r in meta["runs"].items():
        print(f"{name}: final max |x| {r['final_max_abs']:.3f}, f32 vs f64 {r['f32_vs_f64_max_abs']:.2e}")
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT.relative_to(ROOT)} ({size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
