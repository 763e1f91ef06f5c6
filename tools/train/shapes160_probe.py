"""Why does a trained shapes160 DiT sample badly? Two probes of a model in
diffusers layout against real Shapes160 latents (docs/testbed.md, "GPU
runs so far"):

1. per timestep t: the epsilon-prediction MSE on noised real latents, the
   x0 MSE it implies ((1 - abar) / abar times the former), and for scale
   the variance of the data (a model whose x0 MSE exceeds it at high t does
   worse there than predicting zero);
2. SDEdit: real latents noised to t0 in {400, 700, 900}, denoised by DDIM
   (50-step grid) with their own class, next to the originals, as a PNG
   grid (rows: t0 = 400, 700, 900, real), and the fraction of decoded
   pixels outside [-1, 1]. A model that cannot restore a shape from t0 = 400
   is under-trained everywhere, not only at high noise.

    .gpu/export_shapes160 target/s160.safetensors 2000    # or any exporter output
    python3 tools/train/shapes160_probe.py --model <dit folder> --data target/s160.safetensors \
        --grid target/sdedit.png

CPU, 2 threads: about 1 minute for the first probe, several for the second.
"""

import argparse
import sys
import pathlib

import torch
from diffusers import DDIMScheduler, DiTTransformer2DModel
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from train_tiny_dit import load_data  # noqa: E402


def haar_unfold(z):
    """The inverse of tcc-data's orthonormal 2x2 Haar fold: [N,4,h,w] -> [N,2h,2w]."""
    s0, s1, s2, s3 = z[:, 0], z[:, 1], z[:, 2], z[:, 3]
    img = torch.zeros(z.shape[0], 2 * z.shape[2], 2 * z.shape[3])
    img[:, 0::2, 0::2] = (s0 + s1 + s2 + s3) / 2
    img[:, 0::2, 1::2] = (s0 + s1 - s2 - s3) / 2
    img[:, 1::2, 0::2] = (s0 - s1 + s2 - s3) / 2
    img[:, 1::2, 1::2] = (s0 - s1 - s2 + s3) / 2
    return img


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--grid", help="write the SDEdit grid here (skipped without it)")
    ap.add_argument("--n", type=int, default=256, help="latents for the per-timestep probe")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    x, y, _ = load_data(args.data)
    model = DiTTransformer2DModel.from_pretrained(args.model).eval()
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                          beta_end=0.02, clip_sample=False)
    abar = sched.alphas_cumprod
    xs, ys = x[: args.n], y[: args.n]
    print(f"data variance {xs.var().item():.4f}")
    with torch.no_grad():
        for t in [0, 50, 200, 400, 600, 800, 950, 999]:
            e = torch.randn_like(xs)
            a = abar[t]
            xt = a.sqrt() * xs + (1 - a).sqrt() * e
            out = model(xt, timestep=torch.full((len(xs),), t), class_labels=ys).sample
            mse = ((out - e) ** 2).mean().item()
            x0 = (xt - (1 - a).sqrt() * out) / a.sqrt()
            print(f"t={t:4d}  eps MSE {mse:.4f}  x0 MSE {((x0 - xs) ** 2).mean().item():.4f}")
        if not args.grid:
            return
        n = 8
        rows = []
        for start in [400, 700, 900]:
            sched.set_timesteps(50)
            ts = [t for t in sched.timesteps if t <= start]
            gen = torch.Generator().manual_seed(0)
            a = abar[ts[0]]
            z = a.sqrt() * x[:n] + (1 - a).sqrt() * torch.randn(n, 4, 32, 32, generator=gen)
            for t in ts:
                e = model(z, timestep=torch.full((n,), int(t)), class_labels=y[:n]).sample
                z = sched.step(e, t, z).prev_sample
            img = haar_unfold(z)
            print(f"SDEdit from t0={start}: pixels outside [-1, 1]: {(img.abs() > 1).float().mean().item():.4f}")
            rows.append(img)
        rows.append(haar_unfold(x[:n]))
        grid = Image.new("L", (64 * n, 64 * len(rows)))
        for r, img in enumerate(rows):
            img = ((img.clamp(-1, 1) + 1) * 127.5).round().byte()
            for i in range(n):
                grid.paste(Image.fromarray(img[i].numpy()), (i * 64, r * 64))
        grid.save(args.grid)
        print(f"wrote {args.grid}")


if __name__ == "__main__":
    main()
