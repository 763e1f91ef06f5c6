#!/usr/bin/env python3
"""Comparisons and the report of tools/cuda/check.sh (numpy + safetensors).

  compare.py latents CUDA.safetensors CPU.safetensors [--max REL]
      relative L2 of all latents (and the worst sample's) of two
      `tcc sample --latents` files; exit 1 above --max.
  compare.py priors A.safetensors B.safetensors
      how many tensors of two priors files differ and by how much, and the
      largest difference of the folded priors (M, c), each relative to the
      tensor's largest entry.
  compare.py eval CUDA.json CPU.json
      two `tcc eval --json` reports side by side: per variant FD, class
      accuracy, rel. L2 and PSNR vs full (means over seed sets), and the
      largest difference of the per-step latent deviations.
  compare.py speed DIR
      the speed table from DIR/bench-*.json (tcc bench --json) and
      DIR/torch.jsonl (torch_bench.py).
"""

import glob
import json
import os
import sys

import numpy as np
from safetensors.numpy import load_file


def latents(a, b, limit=None):
    ta, tb = load_file(a), load_file(b)
    if not np.array_equal(ta["labels"], tb["labels"]):
        print("labels differ")
        return 1
    x, r = ta["latents"].astype(np.float64), tb["latents"].astype(np.float64)
    if x.shape != r.shape or not np.isfinite(x).all():
        print(f"shapes {x.shape} vs {r.shape}, or non-finite values")
        return 1
    rel = np.linalg.norm(x - r) / np.linalg.norm(r)
    per = [np.linalg.norm(p - q) / np.linalg.norm(q) for p, q in zip(x, r)]
    verdict = ""
    if limit is not None:
        verdict = " ok" if rel <= limit else f" FAILED (> {limit:g})"
    print(f"rel. L2 {rel:.3e} (worst sample {max(per):.3e}, n = {len(per)}){verdict}")
    return 0 if limit is None or rel <= limit else 1


def folded(t, site):
    """The folded prior of `site` (`stepK.BRANCH.layerL`): stored as `M`, `c`
    in files before tcc-priors/2 dropped them, else folded here as tcc does:
    M = (1 - alpha) I + alpha s R, c = alpha (muA - s muB R)."""
    if site + ".M" in t:
        return t[site + ".M"].astype(np.float64), t[site + ".c"].astype(np.float64)
    if site + ".R" not in t:
        return None
    alpha = float(t[site + ".alpha"][0])
    r, s = t[site + ".R"].astype(np.float64), float(t[site + ".s"][0])
    mu_a, mu_b = t[site + ".muA"].astype(np.float64), t[site + ".muB"].astype(np.float64)
    m = (1 - alpha) * np.eye(r.shape[0]) + alpha * s * r
    return m, alpha * (mu_a - s * mu_b @ r)


def priors(a, b):
    ta, tb = load_file(a), load_file(b)
    if sorted(ta) != sorted(tb):
        print("the files hold different tensors")
        return 1
    rel = lambda x, y: np.abs(x.astype(np.float64) - y).max() / max(np.abs(y).max(), 1e-30)
    # Every stored tensor, relative to its largest entry.
    diffs = [(rel(ta[k], tb[k]), k) for k in sorted(ta)]
    differ = [d for d in diffs if d[0] > 0]
    worst = max(diffs)
    print(f"{len(ta)} tensors, {len(differ)} differ; largest difference {worst[0]:.3e} "
          f"of the largest entry ({worst[1]})")
    fold = (0.0, "")
    for site in sorted({k.rsplit(".", 1)[0] for k in ta}):
        fa, fb = folded(ta, site), folded(tb, site)
        if fa is not None:
            fold = max(fold, (rel(fa[0], fb[0]), site + " M"), (rel(fa[1], fb[1]), site + " c"))
    print(f"folded priors (M, c): largest difference {fold[0]:.3e} of the largest entry ({fold[1]})")
    return 0


def eval_(a, b):
    ra, rb = json.load(open(a))["report"], json.load(open(b))["report"]
    print(f"{'variant':<9} {'metric':<9} {'cuda':>12} {'cpu':>12}")
    for va, vb in zip(ra["variants"], rb["variants"]):
        for m in ["fd", "accuracy", "rel_l2", "psnr"]:
            xs = [s[m] for s in va["sets"] if s[m] is not None]
            ys = [s[m] for s in vb["sets"] if s[m] is not None]
            if xs:
                print(f"{va['name']:<9} {m:<9} {np.mean(xs):>12.6f} {np.mean(ys):>12.6f}")
        if va["steps"]:
            d = max(abs(p["latent_rel_l2"] - q["latent_rel_l2"])
                    for p, q in zip(va["steps"], vb["steps"]))
            print(f"{va['name']:<9} per-step latent deviation: largest difference {d:.3e}")
    return 0


def speed(d):
    torch = {}
    path = os.path.join(d, "torch.jsonl")
    if os.path.exists(path):
        for line in open(path):
            if line.startswith("{"):
                r = json.loads(line)
                torch[(r["model"], r["dtype"])] = r
    print("| model | dtype | model batch | tcc full step (ms) | tcc FORA N=3 (s/step) "
          "| speedup measured / predicted | PyTorch eager forward (ms) | tcc / PyTorch |")
    print("|---|---|---|---|---|---|---|---|")
    for f in sorted(glob.glob(os.path.join(d, "bench-*.json"))):
        try:
            r = json.load(open(f))
        except ValueError:
            print(f"| {os.path.basename(f)}: no result |")
            continue
        dtype = r["device"].rsplit(", ", 1)[-1]
        t = torch.get((r["model"], dtype))
        ratio = f"{r['full_step_ms'] / t['forward_ms']:.2f}" if t else "-"
        tms = f"{t['forward_ms']:.2f}" if t else "-"
        print(f"| {r['model']} | {dtype} | {r['model_batch']} | {r['full_step_ms']:.2f} "
              f"| {r['plan_s_per_step']:.4f} (full {r['full_s_per_step']:.4f}) "
              f"| {r['measured_speedup']:.2f}x / {r['predicted_speedup']:.2f}x "
              f"= {r['measured_over_predicted']:.2f} | {tms} | {ratio} |")
    return 0


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "latents":
        limit = float(args[3]) if len(args) > 3 and args[2] == "--max" else None
        return latents(args[0], args[1], limit)
    return {"priors": priors, "eval": eval_, "speed": speed}[cmd](*args)


if __name__ == "__main__":
    sys.exit(main())
