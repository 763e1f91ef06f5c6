"""Quick quality check of tiny-DiT checkpoints while choosing a training
recipe: trains a small proxy CNN on the shapes data, samples each checkpoint
with DDIM (20 steps, respaced like tcc: round(i * 999 / 19)) and classifier-free
guidance, and prints the share of samples the proxy assigns to their class.

The proxy is not the testbed classifier (crates/tcc-testbed); the numbers the
project reports come from `tcc sample` / `tcc eval`. This script only ranks
checkpoints where Rust is not at hand (a GPU machine).

    python3 tools/train/check_samples.py --data target/shapes.safetensors \
        --guidance 1.5,4 --n 500 RUN/step-5000 RUN/step-10000 ...
"""

import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from diffusers import DiTTransformer2DModel


def proxy_classifier(images, labels, dev, steps=1500, batch=256, seed=0):
    """A small CNN; returns it and its accuracy on the last 5000 images
    (held out from its training)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.GELU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GELU(),
        nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.GELU(),
        nn.Conv2d(128, 128, 3, stride=2, padding=1), nn.GELU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    ).to(dev)
    train_x, train_y = images[:-5000], labels[:-5000]
    test_x, test_y = images[-5000:], labels[-5000:]
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(train_x), (batch,), generator=gen).to(dev)
        loss = F.cross_entropy(net(train_x[idx]), train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(test_x).argmax(1) == test_y).float().mean().item()
    return net, acc


@torch.no_grad()
def ddim_sample(model, classes, guidance, steps, dev, seed, clip=True):
    """DDIM (eta 0) with guidance on every channel; `clip` clamps the
    result to [-1, 1] (images; latents are returned as they are)."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    ac = torch.cumprod(1.0 - betas, 0).float().to(dev)
    ts = [round(i * 999 / (steps - 1)) for i in range(steps)][::-1]
    gen = torch.Generator().manual_seed(seed)
    n = len(classes)
    cfg = model.config
    x = torch.randn((n, cfg.in_channels, cfg.sample_size, cfg.sample_size), generator=gen).to(dev)
    null = torch.full_like(classes, cfg.num_embeds_ada_norm)
    for i, t in enumerate(ts):
        xx = torch.cat([x, x])
        tt = torch.full((2 * n,), t, device=dev, dtype=torch.long)
        eps = model(xx, timestep=tt, class_labels=torch.cat([classes, null])).sample
        e_c, e_u = eps[:n], eps[n:]
        e = e_u + guidance * (e_c - e_u)
        a = ac[t]
        a_prev = ac[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, device=dev)
        x0 = (x - (1 - a).sqrt() * e) / a.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * e
    return x.clamp(-1, 1) if clip else x


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--guidance", default="1.5,4")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--classifier-steps", type=int, default=1500)
    ap.add_argument("checkpoints", nargs="+")
    args = ap.parse_args()
    dev = torch.device(args.device)
    data = load_file(args.data)
    images = (data["images"].float() / 127.5 - 1.0).to(dev)
    labels = data["labels"].long().to(dev)
    t0 = time.time()
    net, real_acc = proxy_classifier(images, labels, dev, steps=args.classifier_steps)
    print(f"proxy classifier: {real_acc:.4f} on 5000 held-out real images ({time.time() - t0:.0f}s)", flush=True)
    classes = (torch.arange(args.n) % 10).to(dev)
    results = []
    for ckpt in args.checkpoints:
        model = DiTTransformer2DModel.from_pretrained(ckpt).to(dev).eval()
        row = {"checkpoint": ckpt}
        for g in [float(v) for v in args.guidance.split(",")]:
            x = ddim_sample(model, classes, g, 20, dev, seed=1)
            acc = (net(x).argmax(1) == classes).float().mean().item()
            row[f"acc@{g}"] = round(acc, 4)
        results.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"proxy_real_acc": real_acc, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
