#!/usr/bin/env python3
"""Golden fixtures for crates/tcc-sampler.

Writes crates/tcc-sampler/tests/fixtures/samplers.json from two independent
references:

- DiT's diffusion code (facebookresearch/DiT, diffusion/respace.py and
  gaussian_diffusion.py), re-implemented here in numpy float64: the timestep
  respacing (`space_timesteps(T, [n])`, a running float index rounded with
  Python's round), the respaced betas of `SpacedDiffusion`, and the DDIM
  (`ddim_sample`) and DDPM (`p_sample`, LEARNED_RANGE / FIXED_LARGE /
  FIXED_SMALL) steps. diffusers' DDIM/DDPM timestep rules differ from DiT's,
  so these are the references for DDIM and DDPM; the script cross-checks them
  against diffusers' `DDPMScheduler` (custom timesteps) and `DDIMScheduler`
  (fed DiT's respaced alpha-bars) run in float64, and fails if they disagree.
- diffusers' `DPMSolverMultistepScheduler` with PixArt-alpha's settings, run
  as is (float32, its native precision), for DPM-Solver++ 2M.

Every sampling run uses a closed-form "linear model" (its weights are in the
fixture) so the Rust test can evaluate the same model:

    out[b, o, p] = (0.8 + 0.2 t_b / 1000) * sum_c W[o, c] x[b, c, p] + bias[o] + y_b u[o]

with y_b the sample's label value (0 for the unconditional CFG half). Noise
for DDPM and DDIM with eta > 0 comes from a port of tcc_sampler::NoiseRng,
drawn as tcc_sampler::sample_loop draws it: one `randn(x.shape)` per step
that adds noise, in step order.

Usage: python3 tools/golden/samplers.py   (needs numpy, torch, diffusers)
"""

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
import diffusers.schedulers.scheduling_ddpm as ddpm_module

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates/tcc-sampler/tests/fixtures/samplers.json"

T = 1000
BETA_START, BETA_END = 0.0001, 0.02

# --------------------------------------------------------------------------
# DiT's respaced diffusion, float64 (independent port of DiT's formulas)
# --------------------------------------------------------------------------


def dit_space_timesteps(num_timesteps, n):
    """DiT's space_timesteps(num_timesteps, [n]) as a sorted list."""
    size = num_timesteps
    frac_stride = 1 if n <= 1 else (size - 1) / (n - 1)
    cur, taken = 0.0, []
    for _ in range(n):
        taken.append(round(cur))  # Python round: half to even
        cur += frac_stride
    return sorted(set(taken))


def base_betas():
    return np.linspace(BETA_START, BETA_END, T, dtype=np.float64)


class DitRespaced:
    """SpacedDiffusion(use_timesteps=space_timesteps(T, [n])) coefficient arrays."""

    def __init__(self, n):
        ac_base = np.cumprod(1.0 - base_betas())
        self.timestep_map = dit_space_timesteps(T, n)
        last, betas = 1.0, []
        for t in self.timestep_map:
            betas.append(1 - ac_base[t] / last)
            last = ac_base[t]
        b = np.array(betas, dtype=np.float64)
        self.betas = b
        self.ac = np.cumprod(1.0 - b)
        self.ac_prev = np.append(1.0, self.ac[:-1])
        self.sqrt_recip = np.sqrt(1.0 / self.ac)
        self.sqrt_recipm1 = np.sqrt(1.0 / self.ac - 1)
        self.post_var = b * (1.0 - self.ac_prev) / (1.0 - self.ac)
        if len(b) > 1:
            self.post_logvar = np.log(np.append(self.post_var[1], self.post_var[1:]))
            self.fixed_large_logvar = np.log(np.append(self.post_var[1], b[1:]))
        else:  # DiT leaves these empty; -inf (variance 0), unused at the last step
            self.post_logvar = np.array([-np.inf])
            self.fixed_large_logvar = np.array([-np.inf])
        self.coef1 = b * np.sqrt(self.ac_prev) / (1.0 - self.ac)
        self.coef2 = (1.0 - self.ac_prev) * np.sqrt(1.0 - b) / (1.0 - self.ac)

    def ddim_sigma(self, k, eta):
        ab, abp = self.ac[k], self.ac_prev[k]
        return eta * math.sqrt((1 - abp) / (1 - ab)) * math.sqrt(1 - ab / abp)

    def pred_x0(self, k, x, eps, clip):
        x0 = self.sqrt_recip[k] * x - self.sqrt_recipm1[k] * eps
        return np.clip(x0, -1, 1) if clip else x0

    def ddim_step(self, k, x, out, eta, noise, clip=False):
        c = x.shape[1]
        x0 = self.pred_x0(k, x, out[:, :c], clip)
        eps = (self.sqrt_recip[k] * x - x0) / self.sqrt_recipm1[k]
        sigma = self.ddim_sigma(k, eta)
        mean = x0 * math.sqrt(self.ac_prev[k]) + math.sqrt(1 - self.ac_prev[k] - sigma**2) * eps
        return mean + (sigma * noise if k != 0 and noise is not None else 0.0)

    def ddpm_step(self, k, x, out, noise, fixed="large", clip=False):
        c = x.shape[1]
        x0 = self.pred_x0(k, x, out[:, :c], clip)
        mean = self.coef1[k] * x0 + self.coef2[k] * x
        if out.shape[1] == 2 * c:
            frac = (out[:, c:] + 1) / 2
            logvar = frac * np.log(self.betas[k]) + (1 - frac) * self.post_logvar[k]
        else:
            logvar = self.fixed_large_logvar[k] if fixed == "large" else self.post_logvar[k]
        if k == 0:
            return mean
        return mean + np.exp(0.5 * logvar) * noise


# --------------------------------------------------------------------------
# tcc_sampler::NoiseRng, ported
# --------------------------------------------------------------------------

M64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15


def mix(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


class NoiseRng:
    def __init__(self, seed):
        self.key = mix(seed & M64)
        self.pairs = 0

    def randn(self, shape):
        n = int(np.prod(shape))
        out = np.empty(n, dtype=np.float64)
        for i in range(0, n, 2):
            j = self.pairs
            self.pairs += 1
            a = mix((self.key + (2 * j + 1) * GAMMA) & M64)
            b = mix((self.key + (2 * j + 2) * GAMMA) & M64)
            u1 = ((a >> 11) + 1) * 2.0**-53
            u2 = (b >> 11) * 2.0**-53
            r = math.sqrt(-2.0 * math.log(u1))
            out[i] = r * math.cos(2 * math.pi * u2)
            if i + 1 < n:
                out[i + 1] = r * math.sin(2 * math.pi * u2)
        return out.astype(np.float32).astype(np.float64).reshape(shape)


# --------------------------------------------------------------------------
# The closed-form model and the sampling loops
# --------------------------------------------------------------------------

B, C, H, W = 2, 4, 3, 3
g = np.random.default_rng(20260101)
W_MIX = np.concatenate([0.9 * np.eye(C) + 0.1 * g.standard_normal((C, C)), 0.3 * g.standard_normal((C, C))])
BIAS = 0.05 * g.standard_normal(2 * C)
U = 0.2 * g.standard_normal(2 * C)
LABELS = np.array([1.0, -0.5])


def linear_model(x, t, y, c_out):
    a = (0.8 + 0.2 * t / 1000.0)[:, None, None, None]
    mixed = np.einsum("oc,bchw->bohw", W_MIX[:c_out], x)
    return a * mixed + BIAS[:c_out][None, :, None, None] + y[:, None, None, None] * U[:c_out][None, :, None, None]


def spec(kind, steps, g_scale=1.0, eta=0.0, order="cond-first", guided=None):
    return {
        "kind": kind,
        "steps": steps,
        "guidance_scale": g_scale,
        "eta": eta,
        "cfg_order": order,
        "guided_channels": guided,
        "train_timesteps": T,
        "beta_start": BETA_START,
        "beta_end": BETA_END,
    }


def guided_output(out2, sp):
    """Guide a doubled batch: first N channels guided, the rest from the cond half."""
    b = out2.shape[0] // 2
    first, second = out2[:b], out2[b:]
    cond, uncond = (first, second) if sp["cfg_order"] == "cond-first" else (second, first)
    n = sp["guided_channels"] or C
    g_ = uncond[:, :n] + sp["guidance_scale"] * (cond[:, :n] - uncond[:, :n])
    return np.concatenate([g_, cond[:, n:]], axis=1)


def model_out_for(x, t_val, sp, c_out):
    """The guided model output for the B samples x (no CFG: the plain output)."""
    if sp["guidance_scale"] == 1.0:
        return linear_model(x, np.full(B, float(t_val)), LABELS, c_out)
    y2 = (
        np.concatenate([LABELS, np.zeros(B)])
        if sp["cfg_order"] == "cond-first"
        else np.concatenate([np.zeros(B), LABELS])
    )
    out2 = linear_model(np.concatenate([x, x]), np.full(2 * B, float(t_val)), y2, c_out)
    return guided_output(out2, sp)


def needs_noise(sp, i):
    last = i == sp["steps"] - 1
    return (sp["kind"] == "ddpm" or (sp["kind"] == "ddim" and sp["eta"] > 0)) and not last


def dit_run(sp, x_t, c_out, seed, fixed="large", clip=False):
    """DiT-style loop on B samples; returns [x_T, x_1, ..., x_n]."""
    d = DitRespaced(sp["steps"])
    rng = NoiseRng(seed)
    xs = [x_t]
    x = x_t
    n = sp["steps"]
    for i in range(n):
        k = n - 1 - i
        out = model_out_for(x, d.timestep_map[k], sp, c_out)
        noise = rng.randn(x.shape) if needs_noise(sp, i) else None
        if sp["kind"] == "ddim":
            x = d.ddim_step(k, x, out, sp["eta"], noise, clip)
        else:
            x = d.ddpm_step(k, x, out, noise, fixed, clip)
        xs.append(x)
    return xs


def dit_official_cfg_ddim(sp, x_t, c_out):
    """DiT's sample.py loop literally: a doubled batch [z; z], forward_with_cfg
    (guides the first `guided_channels`, duplicates them to both halves, keeps
    each half's other channels), ddim_sample on all 2B samples, and the first
    half kept. Returns the first half after every step (with x_T first), and
    the guided eps (first half, all C_out channels) of every step."""
    assert sp["cfg_order"] == "cond-first" and sp["kind"] == "ddim" and sp["eta"] == 0.0
    d = DitRespaced(sp["steps"])
    n_g = sp["guided_channels"]
    z2 = np.concatenate([x_t, x_t])
    y2 = np.concatenate([LABELS, np.zeros(B)])
    xs, outs = [x_t], []
    for k in reversed(range(sp["steps"])):
        half = z2[:B]
        combined = np.concatenate([half, half])
        mo = linear_model(combined, np.full(2 * B, float(d.timestep_map[k])), y2, c_out)
        eps, rest = mo[:, :n_g], mo[:, n_g:]
        cond_eps, uncond_eps = eps[:B], eps[B:]
        half_eps = uncond_eps + sp["guidance_scale"] * (cond_eps - uncond_eps)
        mo = np.concatenate([np.concatenate([half_eps, half_eps]), rest], axis=1)
        outs.append(mo[:B])
        z2 = d.ddim_step(k, z2, mo, 0.0, None)
        xs.append(z2[:B])
    return xs, outs


def dpm_scheduler():
    # PixArt-alpha's scheduler_config.json, spelled out.
    return DPMSolverMultistepScheduler(
        num_train_timesteps=T,
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule="linear",
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        prediction_type="epsilon",
        timestep_spacing="linspace",
        lower_order_final=True,
        final_sigmas_type="zero",
        use_karras_sigmas=False,
        thresholding=False,
        steps_offset=0,
    )


def diffusers_dpm_run(sp, x_t, c_out):
    sched = dpm_scheduler()
    sched.set_timesteps(sp["steps"])
    x = torch.from_numpy(x_t.astype(np.float32))
    xs = [x_t]
    for t in sched.timesteps:
        out = model_out_for(x.double().numpy(), int(t), sp, c_out)
        eps = torch.from_numpy(out[:, :C].astype(np.float32))
        x = sched.step(eps, t, x).prev_sample
        xs.append(x.double().numpy())
    return xs


# --------------------------------------------------------------------------
# Cross-checks of the DiT port against diffusers (float64)
# --------------------------------------------------------------------------


def f64_schedule(sched):
    b = torch.from_numpy(base_betas())
    sched.betas = b
    sched.alphas = 1.0 - b
    sched.alphas_cumprod = torch.cumprod(sched.alphas, dim=0)
    sched.one = torch.tensor(1.0, dtype=torch.float64)
    sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return sched


def check_ddpm_against_diffusers(sp, x_t, c_out, seed, fixed, xs_dit):
    variance = "learned_range" if c_out == 2 * C else ("fixed_large" if fixed == "large" else "fixed_small")
    sched = f64_schedule(
        DDPMScheduler(
            num_train_timesteps=T,
            beta_start=BETA_START,
            beta_end=BETA_END,
            variance_type=variance,
            clip_sample=False,
        )
    )
    d = DitRespaced(sp["steps"])
    sched.set_timesteps(timesteps=list(reversed(d.timestep_map)))
    rng = NoiseRng(seed)
    x = x_t
    for i, t in enumerate(sched.timesteps):
        out = model_out_for(x, int(t), sp, c_out)
        noise = rng.randn(x.shape) if needs_noise(sp, i) else np.zeros_like(x)
        ddpm_module.randn_tensor = lambda *a, _z=noise, **k: torch.from_numpy(_z)
        x = sched.step(torch.from_numpy(out), t, torch.from_numpy(x)).prev_sample.numpy()
        err = np.abs(x - xs_dit[i + 1]).max()
        assert err < 1e-10, f"DDPM ({variance}) step {i}: DiT port vs diffusers differ by {err}"


def check_ddim_against_diffusers(sp, x_t, c_out, seed, xs_dit, clip=False):
    """diffusers' DDIMScheduler.step with DiT's respaced alpha-bars: its own
    prev-timestep rule (t - T // n) is not DiT's, so each step is fed a
    two-entry alpha-bar table [abar_prev, abar_t] at timestep 1 (prev 0), and
    the last step timestep 0 (prev -1 -> final alpha-bar 1)."""
    d = DitRespaced(sp["steps"])
    sched = DDIMScheduler(num_train_timesteps=T, clip_sample=clip, set_alpha_to_one=True)
    sched.set_timesteps(T)
    sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    rng = NoiseRng(seed)
    x = x_t
    n = sp["steps"]
    for i in range(n):
        k = n - 1 - i
        out = model_out_for(x, d.timestep_map[k], sp, c_out)[:, :C]
        noise = rng.randn(x.shape) if needs_noise(sp, i) else np.zeros_like(x)
        if k == 0:
            sched.alphas_cumprod = torch.tensor([d.ac[0]], dtype=torch.float64)
            t = 0
        else:
            sched.alphas_cumprod = torch.tensor([d.ac_prev[k], d.ac[k]], dtype=torch.float64)
            t = 1
        x = sched.step(
            torch.from_numpy(out),
            t,
            torch.from_numpy(x),
            eta=sp["eta"],
            use_clipped_model_output=True,
            variance_noise=torch.from_numpy(noise),
        ).prev_sample.numpy()
        err = np.abs(x - xs_dit[i + 1]).max()
        assert err < 1e-9, f"DDIM step {i}: DiT port vs diffusers differ by {err}"


# --------------------------------------------------------------------------
# Fixture assembly
# --------------------------------------------------------------------------


def tensor(a, digits=9):
    a = np.asarray(a, dtype=np.float64)
    return {"shape": list(a.shape), "data": [float(f"{v:.{digits}g}") for v in a.ravel()]}


def finite_or_none(v):
    """JSON has no infinities: log(0) = -inf (DiT's log variances when n = 1) becomes null."""
    return float(v) if math.isfinite(v) else None


def respaced_table(n, eta):
    d = DitRespaced(n)
    rows = []
    for k in reversed(range(n)):
        values = {
            "beta": d.betas[k],
            "alpha_bar": d.ac[k],
            "alpha_bar_prev": d.ac_prev[k],
            "sqrt_recip_alpha_bar": d.sqrt_recip[k],
            "sqrt_recipm1_alpha_bar": d.sqrt_recipm1[k],
            "posterior_mean_coef1": d.coef1[k],
            "posterior_mean_coef2": d.coef2[k],
            "posterior_log_variance_clipped": d.post_logvar[k],
            "fixed_large_log_variance": d.fixed_large_logvar[k],
            "ddim_sigma": d.ddim_sigma(k, eta),
        }
        row = {"timestep": d.timestep_map[k]}
        row.update({key: finite_or_none(v) for key, v in values.items()})
        rows.append(row)
    return {"steps": n, "eta": eta, "rows": rows}


def dpm_table(n):
    """Per-step values of diffusers' DPMSolverMultistepScheduler, read from
    the scheduler itself (float32), with the solver order each step.step()
    actually used."""
    sched = dpm_scheduler()
    sched.set_timesteps(n)
    used = []
    first, second = sched.dpm_solver_first_order_update, sched.multistep_dpm_solver_second_order_update
    sched.dpm_solver_first_order_update = lambda *a, **k: (used.append(1), first(*a, **k))[1]
    sched.multistep_dpm_solver_second_order_update = lambda *a, **k: (used.append(2), second(*a, **k))[1]
    x = torch.zeros(1, 1)
    for t in sched.timesteps:
        x = sched.step(torch.zeros(1, 1), t, x).prev_sample
    rows = []
    pts = [sched._sigma_to_alpha_sigma_t(s) for s in sched.sigmas]
    lam = [torch.log(a) - torch.log(s) for a, s in pts]
    for i, t in enumerate(sched.timesteps):
        h = lam[i + 1] - lam[i]
        row = {
            "timestep": int(t),
            "sigma": float(sched.sigmas[i]),
            "alpha_s": float(pts[i][0]),
            "sigma_s": float(pts[i][1]),
            "lambda_s": float(lam[i]),
            "alpha_t": float(pts[i + 1][0]),
            "sigma_t": float(pts[i + 1][1]),
            "lambda_t": float(lam[i + 1]) if i + 1 < n else None,  # +inf after the last step
            "h": float(h) if i + 1 < n else None,
            "order": used[i],
            "r0": float((lam[i] - lam[i - 1]) / h) if used[i] == 2 else None,
        }
        rows.append(row)
    return {"steps": n, "rows": rows}


def main():
    torch.set_grad_enabled(False)
    fixture = {"about": __doc__.strip().splitlines()[0], "tolerances": {}}

    # The linear schedule.
    fixture["alphas_cumprod"] = np.cumprod(1.0 - base_betas()).tolist()

    # Timesteps: DiT's respacing for DDIM/DDPM, diffusers' for DPM-Solver++.
    ns = sorted(set(list(range(1, 61)) + [77, 100, 111, 250, 333, 500, 999, 1000]))
    fixture["timesteps_dit"] = [{"n": n, "t": list(reversed(dit_space_timesteps(T, n)))} for n in ns]
    dpm_ts = []
    for n in [x for x in ns if x < T]:
        s = dpm_scheduler()
        s.set_timesteps(n)
        dpm_ts.append({"n": n, "t": [int(v) for v in s.timesteps]})
    fixture["timesteps_dpm"] = dpm_ts

    fixture["respaced"] = [respaced_table(n, eta) for n, eta in [(1, 0.0), (7, 0.5), (10, 0.0), (20, 1.0), (50, 0.0)]]
    fixture["dpm"] = [dpm_table(n) for n in [1, 2, 6, 10, 20, 25]]

    # NoiseRng port: successive calls, odd lengths.
    noise = []
    for seed, shapes in [(0, [[2, 3], [5]]), (12345, [[1], [4, 2]]), (2**63 + 11, [[3]])]:
        rng = NoiseRng(seed)
        noise.append({"seed": seed, "calls": [{"shape": s, "values": tensor(rng.randn(s))} for s in shapes]})
    fixture["noise"] = noise

    fixture["model"] = {
        "w": tensor(W_MIX, 17),
        "bias": tensor(BIAS, 17),
        "u": tensor(U, 17),
        "labels": LABELS.tolist(),
    }

    x_t = np.random.default_rng(7).standard_normal((B, C, H, W)).astype(np.float32).astype(np.float64)
    runs = []

    def add(name, reference, sp, c_out, xs, seed=0, clip=False, fixed="large", extra=None):
        r = {
            "name": name,
            "reference": reference,
            "spec": sp,
            "c_out": c_out,
            "noise_seed": seed,
            "clip_denoised": clip,
            "fixed_variance": fixed,
            "xs": [tensor(x) for x in xs],
        }
        r.update(extra or {})
        runs.append(r)

    sp = spec("ddim", 10, 1.5, order="cond-first", guided=3)
    xs, outs = dit_official_cfg_ddim(sp, x_t, 2 * C)
    xs_b = dit_run(sp, x_t, 2 * C, 0)
    assert max(np.abs(a - b).max() for a, b in zip(xs, xs_b)) < 1e-12, "DiT's doubled loop != B-sample loop"
    add("ddim10_cfg1.5_cond_first_guide3", "DiT sample.py loop (forward_with_cfg, ddim_sample), numpy f64", sp, 2 * C, xs,
        extra={"guided_outputs": [tensor(o) for o in outs]})

    sp = spec("ddim", 7, eta=0.5)
    xs = dit_run(sp, x_t, 2 * C, 11)
    check_ddim_against_diffusers(sp, x_t, 2 * C, 11, xs)
    add("ddim7_eta0.5", "DiT ddim_sample, numpy f64; cross-checked with diffusers DDIMScheduler", sp, 2 * C, xs, seed=11)

    sp = spec("ddim", 10)
    xs = dit_run(sp, x_t, C, 0, clip=True)
    check_ddim_against_diffusers(sp, x_t, C, 0, xs, clip=True)
    add("ddim10_clip", "DiT ddim_sample clip_denoised=True, numpy f64; cross-checked with diffusers", sp, C, xs, clip=True)

    sp = spec("ddpm", 10, 4.0, order="uncond-first")
    xs = dit_run(sp, x_t, 2 * C, 5)
    check_ddpm_against_diffusers(sp, x_t, 2 * C, 5, "large", xs)
    add("ddpm10_learned_cfg4_uncond_first", "DiT p_sample LEARNED_RANGE, numpy f64; cross-checked with diffusers DDPMScheduler",
        sp, 2 * C, xs, seed=5)

    sp = spec("ddpm", 13)
    xs = dit_run(sp, x_t, C, 9, fixed="large")
    check_ddpm_against_diffusers(sp, x_t, C, 9, "large", xs)
    add("ddpm13_fixed_large", "DiT p_sample FIXED_LARGE, numpy f64; cross-checked with diffusers DDPMScheduler", sp, C, xs, seed=9)

    sp = spec("ddpm", 10)
    xs = dit_run(sp, x_t, C, 3, fixed="small")
    check_ddpm_against_diffusers(sp, x_t, C, 3, "small", xs)
    add("ddpm10_fixed_small", "DiT p_sample FIXED_SMALL, numpy f64; cross-checked with diffusers DDPMScheduler", sp, C, xs,
        seed=3, fixed="small")

    sp = spec("dpm-solver++", 10, 4.5, order="uncond-first")
    add("dpm10_cfg4.5_uncond_first", "diffusers DPMSolverMultistepScheduler (PixArt config), torch f32", sp, 2 * C,
        diffusers_dpm_run(sp, x_t, 2 * C))

    sp = spec("dpm-solver++", 20)
    add("dpm20", "diffusers DPMSolverMultistepScheduler (PixArt config), torch f32", sp, C, diffusers_dpm_run(sp, x_t, C))

    fixture["runs"] = runs
    fixture["tolerances"] = {
        "coefficients_f64_rel": "1e-9 (numpy float64 DiT port)",
        "coefficients_diffusers_f32_rel": "1e-5 (diffusers DPM-Solver++ runs in float32)",
        "tensors_abs": "1e-4",
    }

    OUT.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(fixture, separators=(",", ":"), allow_nan=False)
    OUT.write_text(text + "\n")
    print(f"wrote {OUT.relative_to(ROOT)} ({len(text) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
