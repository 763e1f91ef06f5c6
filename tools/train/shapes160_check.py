"""Quick quality check of a trained shapes160 DiT, run by shapes160_gpu.sh
right after training (where Rust is not at hand): samples N latents (class
i mod 160) with DDIM 20 steps (respaced like tcc: round(i * 999 / 19)) and
classifier-free guidance 1.5 on all four channels, then scores them with
the testbed's own classifier (crates/tcc-testbed/assets/shapes160/classifier.safetensors,
run here with torch.nn.functional: 3x3 convolutions, padding 1, ReLU, global
mean, linear) against the embedded reference feature statistics.

Prints and writes (--json) the class accuracy of the samples, their Fréchet
distance to the reference statistics and, for scale, the accuracy and FD of
N real training images (FD is biased upward at small N: compare at equal
N). The numbers the project reports come from `tcc eval` on the CPU; this
is the first look. --grid writes one sample per class as a PNG (one row per
shape, its 8 styles across, in class order).

    python3 tools/train/shapes160_check.py --model OUT/dit --data DATA.safetensors \
        --n 640 --json OUT/check.json --grid OUT/samples.png
"""

import argparse
import json
import pathlib
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file

from check_samples import ddim_sample
from diffusers import DiTTransformer2DModel
from train_tiny_dit import load_data

ROOT = pathlib.Path(__file__).resolve().parents[2]
ASSETS = ROOT / "crates/tcc-testbed/assets/shapes160"


class Classifier:
    """The testbed classifier; strides from the weights file's metadata."""

    def __init__(self, path, dev):
        self.w = {k: v.to(dev) for k, v in load_file(str(path)).items()}
        with safe_open(str(path), "pt") as f:
            self.strides = [int(s) for s in f.metadata()["strides"].split(",")]

    def features(self, x):
        for i, s in enumerate(self.strides):
            x = F.relu(F.conv2d(x, self.w[f"conv{i}.weight"], self.w[f"conv{i}.bias"], stride=s, padding=1))
        return x.mean(dim=(2, 3))

    def __call__(self, x, batch=1000):
        feats = torch.cat([self.features(x[i:i + batch]) for i in range(0, len(x), batch)])
        logits = F.linear(feats, self.w["head.weight"], self.w["head.bias"])
        return feats.double().cpu().numpy(), logits.argmax(1)


def frechet(feats, ref):
    """FD between the features' Gaussian and the reference statistics
    (n, sum, sum of outer products, as tcc-metrics saves them)."""
    n = float(ref["n"])
    mu_r = ref["sum"] / n
    cov_r = (ref["sum_outer"] - n * np.outer(mu_r, mu_r)) / (n - 1)
    mu = feats.mean(0)
    cov = np.cov(feats, rowvar=False)
    vals, vecs = np.linalg.eigh(cov)
    root = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    cross = np.linalg.eigvalsh(root @ cov_r @ root)
    return float(((mu - mu_r) ** 2).sum() + np.trace(cov) + np.trace(cov_r) - 2 * np.sqrt(np.clip(cross, 0, None)).sum())


def haar_unfold(z):
    """Inverse of train_tiny_dit.haar_fold (the 4x4 Haar matrix is its own inverse)."""
    n, c4, h, w = z.shape
    z = z.reshape(n, c4 // 4, 4, h, w)
    ll, tb, lr, dg = z.unbind(2)
    x = torch.empty(n, c4 // 4, 2 * h, 2 * w, dtype=z.dtype, device=z.device)
    x[:, :, 0::2, 0::2] = 0.5 * ((ll + tb) + (lr + dg))
    x[:, :, 0::2, 1::2] = 0.5 * ((ll + tb) - (lr + dg))
    x[:, :, 1::2, 0::2] = 0.5 * ((ll - tb) + (lr - dg))
    x[:, :, 1::2, 1::2] = 0.5 * ((ll - tb) - (lr - dg))
    return x


def write_grid(latents, path, per_row=8, pad=2):
    img = ((haar_unfold(latents).clamp(-1, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8))[:, 0].cpu().numpy()
    n, s = len(img), img.shape[-1]
    rows = (n + per_row - 1) // per_row
    canvas = np.full((rows * (s + pad) + pad, per_row * (s + pad) + pad), 128, np.uint8)
    for k in range(n):
        r, c = divmod(k, per_row)
        canvas[pad + r * (s + pad):][:s, pad + c * (s + pad):][:, :s] = img[k]
    Image.fromarray(canvas).save(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="diffusers-layout folder (a training run's output)")
    ap.add_argument("--data", required=True, help="the training data file, for the real-image scale")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=640)
    ap.add_argument("--steps", type=int, default=20, help="DDIM steps")
    ap.add_argument("--guidance", type=float, default=1.5)
    ap.add_argument("--batch", type=int, default=640)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json")
    ap.add_argument("--grid")
    args = ap.parse_args()
    dev = torch.device(args.device)
    t0 = time.time()
    clf = Classifier(ASSETS / "classifier.safetensors", dev)
    ref = load_numpy(str(ASSETS / "reference_stats.safetensors"))
    model = DiTTransformer2DModel.from_pretrained(args.model).to(dev).eval()
    classes_all = torch.arange(args.n, device=dev) % model.config.num_embeds_ada_norm
    latents = []
    for i in range(0, args.n, args.batch):
        classes = classes_all[i:i + args.batch]
        latents.append(ddim_sample(model, classes, args.guidance, args.steps, dev, seed=args.seed + i, clip=False))
    latents = torch.cat(latents)
    if not torch.isfinite(latents).all():
        raise SystemExit("non-finite samples")
    feats, pred = clf(latents)
    real, labels, _ = load_data(args.data)
    real, labels = real[: args.n].to(dev), labels[: args.n].to(dev)
    real_feats, real_pred = clf(real)
    result = {
        "n": args.n,
        "sampler": f"DDIM {args.steps}, guidance {args.guidance} on all channels, seed {args.seed}",
        "accuracy": round((pred == classes_all).float().mean().item(), 4),
        "fd": round(frechet(feats, ref), 2),
        "real_accuracy": round((real_pred == labels).float().mean().item(), 4),
        "real_fd": round(frechet(real_feats, ref), 2),
        "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(result), flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.grid:
        write_grid(latents[: model.config.num_embeds_ada_norm], args.grid)


if __name__ == "__main__":
    main()
