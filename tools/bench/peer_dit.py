#!/usr/bin/env python3
"""Peer benchmark: a DiT-XL/2-256 step in tcc against PyTorch eager.

Times, in one run and alternately (tcc, PyTorch, tcc, PyTorch, ...), so that
load from other processes on a shared machine hits both alike:

- tcc: `tcc bench SCHEDULE --random-weights 0 --json` in a subprocess, its
  median full-computation step (embedding, 28 blocks, final layer, guidance
  and the sampler's update) on batch `2 x --batch-size` (CFG);
- PyTorch: `diffusers.DiTTransformer2DModel` with its default (DiT-XL/2-256)
  configuration, random weights, f32, eager mode, under `torch.inference_mode`,
  one forward pass on the same batch (the guidance and sampler update that tcc
  also times are a few element-wise operations on 4x32x32 latents).

Both run on the same number of threads (`--threads`: `torch.set_num_threads`
for PyTorch, `RAYON_NUM_THREADS` for tcc). Prints the medians per step and
per block and their ratio (tcc / PyTorch; below 1 means tcc is faster),
also round by round (each tcc run against the PyTorch turn right after it).

Not part of the test suite: it takes minutes. Build tcc first:

    cargo build --release --bin tcc
    python3 tools/bench/peer_dit.py --threads 2 --rounds 3

Needs torch and diffusers (tested with torch 2.15, diffusers 0.42). On a
shared machine, quote the ratio, not the absolute times; the script prints
the load average so readers can judge.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import diffusers
import torch
from diffusers import DiTTransformer2DModel

DEPTH = 28


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Weights N(0, 1/fan_in), biases N(0, 0.02^2), embeddings N(0, 1), as
    `Dit::random` in tcc (the zero-initialised adaLN layers included, so no
    branch is skipped or trivially zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("embedding_table.weight"):
                std = 1.0
            elif p.ndim >= 2:
                std = 1.0 / math.sqrt(p[0].numel())
            else:
                std = 0.02
            p.copy_(torch.randn(p.shape, generator=g) * std)


def time_torch(model, x, t, y, steps: int) -> list[float]:
    """`steps` forward passes, each timed (ms)."""
    out = []
    with torch.inference_mode():
        for _ in range(steps):
            start = time.perf_counter()
            model(x, timestep=t, class_labels=y).sample
            out.append((time.perf_counter() - start) * 1e3)
    return out


def time_tcc(args) -> dict:
    """One `tcc bench` run; its JSON report."""
    cmd = [
        args.tcc,
        "bench",
        args.schedule,
        "--random-weights",
        "0",
        "--steps",
        str(args.steps),
        "--rounds",
        "1",
        "--batch-size",
        str(args.batch_size),
        "--json",
    ]
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    run = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"tcc bench failed ({run.returncode}):\n{run.stderr}")
    return json.loads(run.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tcc", default="target/release/tcc", help="the tcc binary")
    p.add_argument(
        "--schedule",
        default="schedules/dit-xl2-fora3.sched",
        help="a DiT-XL/2-256 schedule (its full steps are timed)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="alternations of tcc and PyTorch")
    p.add_argument(
        "--steps", type=int, default=3, help="steps per tcc run (full and plan each) and per PyTorch turn"
    )
    p.add_argument("--batch-size", type=int, default=1, help="samples (model batch: twice that, CFG)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args()
    if not os.path.exists(args.tcc):
        sys.exit(f"{args.tcc}: no such file (cargo build --release --bin tcc)")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = DiTTransformer2DModel(out_channels=8).eval()
    randomise(model, 0)
    batch = 2 * args.batch_size
    x = torch.randn(batch, 4, 32, 32)
    t = torch.full((batch,), 500, dtype=torch.long)
    y = torch.tensor([207, 1000] * args.batch_size)
    time_torch(model, x, t, y, 1)  # warm-up

    tcc_ms, torch_ms, pairs, fora = [], [], [], []
    load_start = os.getloadavg()[0]
    for r in range(args.rounds):
        rep = time_tcc(args)
        tcc_ms.append(rep["full_step_ms"])
        fora.append(rep["measured_over_predicted"])
        turn = time_torch(model, x, t, y, args.steps)
        torch_ms.extend(turn)
        pairs.append(rep["full_step_ms"] / statistics.median(turn))
        print(
            f"round {r + 1}: tcc {rep['full_step_ms']:.0f} ms, PyTorch {statistics.median(turn):.0f} ms,"
            f" ratio {pairs[-1]:.3f}",
            file=sys.stderr,
        )
    tcc = statistics.median(tcc_ms)
    pt = statistics.median(torch_ms)
    res = {
        "threads": args.threads,
        "model_batch": batch,
        "rounds": args.rounds,
        "tcc_step_ms": tcc,
        "torch_step_ms": pt,
        "tcc_block_ms": tcc / DEPTH,
        "torch_block_ms": pt / DEPTH,
        "ratio_tcc_over_torch": tcc / pt,
        "ratio_per_round": pairs,
        "tcc_plan_measured_over_predicted": fora,
        "tcc_rounds_ms": tcc_ms,
        "torch_steps_ms": torch_ms,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "load_average_1min": [load_start, os.getloadavg()[0]],
    }
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"DiT-XL/2-256, batch {batch}, f32, {args.threads} threads, {args.rounds} alternations")
    print(f"tcc      {tcc:8.0f} ms per step  ({tcc / DEPTH:6.1f} ms per block)")
    print(f"PyTorch  {pt:8.0f} ms per step  ({pt / DEPTH:6.1f} ms per block)  torch {torch.__version__}")
    print(
        f"ratio tcc / PyTorch: {tcc / pt:.3f} (of the medians); per round"
        f" {', '.join(f'{r:.3f}' for r in pairs)}"
    )
    print(
        "tcc's plan speedup, measured / predicted, per round: "
        + ", ".join(f"{v:.2f}" for v in fora)
    )
    print(f"1-min load average at start and end: {load_start:.1f}, {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
