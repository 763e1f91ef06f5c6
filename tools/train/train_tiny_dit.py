"""Train the testbeds' class-conditional DiTs on the procedural shapes data
sets (crates/tcc-data), in diffusers layout: the embedded default model
`tiny` (below) and `shapes160` (tools/train/shapes160_gpu.sh runs this
script with --layers 12 on the 160-class data, whose 64x64 grey images it
folds into 4x32x32 Haar latents as the data file's metadata asks).

Reproducible for a seed on a given device. The shipped weights
(crates/tcc-testbed/assets/tiny-dit, see training.json there and
docs/testbed.md) come from two stages on one GPU; run from the repository
root:

    cargo run --release -p tcc-testbed --example export_dataset -- target/shapes.safetensors 60000
    python3 tools/train/train_tiny_dit.py --data target/shapes.safetensors --out <stage1> \
        --device cuda --patch 2 --batch 128 --lr-schedule constant --steps 3175
    python3 tools/train/train_tiny_dit.py --data target/shapes.safetensors --init <stage1> \
        --out <stage2> --device cuda --patch 2 --batch 128 --steps 4000

then copy <stage2>/config.json and diffusion_pytorch_model.safetensors into
the assets folder (training.json there records both stages).
On our 2-core CPU one such step took 9.3 s (measured under load): ~18 h in all.

It writes <out>/config.json and <out>/diffusion_pytorch_model.safetensors (the
EMA weights; in shards of at most --shard-size) and <out>/training.json (what
was run, losses, wall time). With --steps 0 it fits the run into --minutes:
it times steps 20..60, then fixes the step count (recorded, so
--steps N replays it). Requires torch and diffusers from PyPI.
"""

import argparse
import copy
import json
import math
import pathlib
import time

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from diffusers import DiTTransformer2DModel

# Steps timed by --steps 0 before the step count is fixed: after the first
# 20 (allocator and kernel warm-up), the next 40.
AUTO_STEPS_WINDOW = (20, 60)


def haar_fold(x):
    """tcc-data's latent map (`tcc_data::haar_fold`): each 2x2 block a b / c d
    of channel k becomes channels 4k..4k+4 = (a+b+c+d)/2, (a+b-c-d)/2,
    (a-b+c-d)/2, (a-b-c+d)/2, summed in the same order as the Rust code."""
    n, c, h, w = x.shape
    a, b = x[:, :, 0::2, 0::2], x[:, :, 0::2, 1::2]
    cc, d = x[:, :, 1::2, 0::2], x[:, :, 1::2, 1::2]
    out = torch.stack([
        0.5 * ((a + b) + (cc + d)),
        0.5 * ((a + b) - (cc + d)),
        0.5 * ((a - b) + (cc - d)),
        0.5 * ((a - b) - (cc - d)),
    ], dim=2)
    return out.reshape(n, 4 * c, h // 2, w // 2)


def load_data(path):
    """Images as model inputs in [-1, 1] (folded when the file's metadata
    says `latent = haar2x2`), labels, and the metadata. A file with
    `check_latents` (the Rust fold of its first images) must agree with
    this script's fold."""
    data = load_file(path)
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    images = data["images"].float() / 127.5 - 1.0
    latent = meta.get("latent")
    if latent == "haar2x2":
        images = haar_fold(images)
        if "check_latents" in data:
            want = data["check_latents"]
            got = images[: len(want)]
            err = (got - want).abs().max().item()
            if err > 1e-6:
                raise SystemExit(f"{path}: this script's haar_fold differs from tcc-data's by {err}")
            print(f"haar_fold agrees with tcc-data on {len(want)} images (max diff {err:.1e})")
    elif latent is not None:
        raise SystemExit(f"{path}: unknown latent map {latent!r}")
    return images, data["labels"].long(), meta


def tie_embedders(model):
    """DiT has one timestep/class embedder; diffusers keeps a copy in every
    block (`transformer_blocks.i.norm1.emb`). Train one shared module."""
    shared = model.transformer_blocks[0].norm1.emb
    for block in model.transformer_blocks[1:]:
        block.norm1.emb = shared


def untie_embedders(model):
    """Give every block its own (identical) copy again before saving, as the
    diffusers layout stores them."""
    shared = model.transformer_blocks[0].norm1.emb
    for block in model.transformer_blocks[1:]:
        block.norm1.emb = copy.deepcopy(shared)


def dit_init(model):
    """The DiT paper's initialisation (diffusers' random init is PyTorch's
    default): Xavier-uniform linears and patch embedding, N(0, 0.02) label
    and timestep embeddings, and adaLN-Zero: every modulation layer and the
    output projection start at zero, so each block starts as the identity."""
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
    w = model.pos_embed.proj.weight
    torch.nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    torch.nn.init.zeros_(model.pos_embed.proj.bias)
    emb = model.transformer_blocks[0].norm1.emb
    torch.nn.init.normal_(emb.class_embedder.embedding_table.weight, std=0.02)
    torch.nn.init.normal_(emb.timestep_embedder.linear_1.weight, std=0.02)
    torch.nn.init.normal_(emb.timestep_embedder.linear_2.weight, std=0.02)
    for block in model.transformer_blocks:
        torch.nn.init.zeros_(block.norm1.linear.weight)
        torch.nn.init.zeros_(block.norm1.linear.bias)
    for layer in (model.proj_out_1, model.proj_out_2):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)


def save(ema, out, shard_size):
    """Save untied copies so the on-disk layout is plain diffusers."""
    out.mkdir(parents=True, exist_ok=True)
    copy_ = copy.deepcopy(ema)
    untie_embedders(copy_)
    copy_.save_pretrained(out, safe_serialization=True, max_shard_size=shard_size)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="safetensors with `images` u8 [N,3,32,32] and `labels` i64 [N]")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=5000,
                    help="optimizer steps (the LR schedule spans them); 0 = as many as fit --minutes, timed on steps 20..60")
    ap.add_argument("--minutes", type=float, default=90.0, help="cap on the training loop's wall-clock time; stopping early is recorded")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for the forward pass (cuda); weights, optimizer and EMA stay f32")
    ap.add_argument("--shard-size", default="10GB", help="largest weights file (diffusers max_shard_size), e.g. 10MB")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--init", help="start from these diffusers-layout weights (a previous run's output) instead of a seeded initialisation")
    ap.add_argument("--min-snr", type=float, default=0.0, help="min-SNR-gamma loss weighting (Hang et al. 2023); 0 = plain MSE")
    ap.add_argument("--checkpoint-every", type=int, default=1000, help="also save the EMA weights under <out>/step-N")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda; the same seed gives a different (equally valid) run on another device")
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--dit-init", action="store_true", help="the DiT paper's initialisation with adaLN-Zero (see dit_init)")
    ap.add_argument("--rng", choices=["host", "device"], default="host",
                    help="where data order and noise are drawn: host (a CPU generator: the same run on any device, "
                         "the shipped `tiny` weights' recipe) or device (a generator on --device: no host-to-device "
                         "copy per step, so the host queues the next step while the GPU runs this one)")
    ap.add_argument("--diverged", type=float, default=3.0,
                    help="stop when a 50-step mean loss exceeds this multiple of the best one (or is not finite), "
                         "and keep the EMA weights of the last window within 1.5x of the best; 0 = never stop")
    ap.add_argument("--lr-schedule", choices=["cosine", "constant"], default="cosine",
                    help="cosine decays to 5%% over --steps; constant keeps the peak (EMA does the averaging), so any checkpoint is a finished model")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    images, labels, meta = load_data(args.data)
    images, labels = images.to(dev), labels.to(dev)
    n, c, h, w = images.shape
    num_classes = int(meta.get("classes", int(labels.max()) + 1))

    model = DiTTransformer2DModel(
        num_attention_heads=args.heads,
        attention_head_dim=args.head_dim,
        in_channels=c,
        out_channels=c,
        num_layers=args.layers,
        sample_size=h,
        patch_size=args.patch,
        num_embeds_ada_norm=num_classes,
    )
    if args.init:
        model = DiTTransformer2DModel.from_pretrained(args.init)
    model.to(dev)
    tie_embedders(model)
    if args.dit_init and not args.init:
        dit_init(model)
    ema = DiTTransformer2DModel.from_config(model.config)
    tie_embedders(ema)
    ema.to(dev)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    params = sum(p.numel() for p in model.parameters())
    print(f"{params / 1e6:.2f}M parameters, {n} images, {num_classes} classes")

    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1.0 - betas, 0).float().to(dev)
    fused = {"fused": True} if dev.type == "cuda" else {}
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, **fused)
    # With --rng host, draws come from a CPU generator whatever the device, so
    # a run's data order and noise depend only on the seed; but copying them
    # to the GPU every step makes the host wait for the GPU (pageable copies
    # are synchronous), so launches and kernels never overlap.
    draw_dev = dev if args.rng == "device" else torch.device("cpu")
    gen = torch.Generator(device=draw_dev).manual_seed(args.seed)
    ema_params = list(ema.parameters())
    model_params = list(model.parameters())

    budget = args.minutes * 60.0
    start = time.time()
    losses = []
    step = 0
    steps = args.steps if args.steps > 0 else 10**9
    auto = None
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16)
    best, sound, sound_step, diverged = None, None, 0, None
    model.train()
    while step < steps and time.time() - start < budget:
        if args.steps == 0 and step in AUTO_STEPS_WINDOW:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if step == AUTO_STEPS_WINDOW[0]:
                window_start = time.time()
            else:
                per_step = (time.time() - window_start) / (AUTO_STEPS_WINDOW[1] - AUTO_STEPS_WINDOW[0])
                left = budget - (time.time() - start)
                # 3% headroom for EMA updates, logging and timing noise.
                steps = step + max(1, int(0.97 * left / per_step))
                auto = {"seconds_per_step": round(per_step, 5), "steps": steps}
                print(f"timed {per_step * 1e3:.1f} ms per step: {steps} steps fit {args.minutes} minutes", flush=True)
        frac = step / steps
        # Short warm-up, then cosine decay over the step budget (step-based so
        # that a run is reproducible whatever else the machine is doing).
        lr = args.lr * min(1.0, (step + 1) / 200)
        if args.lr_schedule == "cosine":
            lr *= 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, n, (args.batch,), generator=gen, device=draw_dev).to(dev)
        x0, y = images[idx], labels[idx]
        # Random horizontal flips would change the glyph classes' meaning: none.
        t = torch.randint(0, 1000, (args.batch,), generator=gen, device=draw_dev).to(dev)
        eps = torch.randn(x0.shape, generator=gen, device=draw_dev).to(dev)
        ab = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        with autocast:
            pred = model(xt, timestep=t, class_labels=y).sample.float()
        if args.min_snr > 0:
            # min-SNR-gamma for epsilon prediction: weight min(SNR, g) / SNR.
            snr = (ab / (1 - ab)).view(-1)
            w = torch.clamp(snr, max=args.min_snr) / snr
            loss = (w * ((pred - eps) ** 2).mean(dim=(1, 2, 3))).mean()
        else:
            loss = torch.nn.functional.mse_loss(pred, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, model_params, 1 - decay)
        losses.append(loss.detach())
        step += 1
        if step % 50 == 0:
            losses[-50:] = [float(v) for v in losses[-50:]]
            recent = sum(losses[-50:]) / 50
            print(f"step {step} loss {recent:.4f} lr {lr:.2e} {time.time() - start:.0f}s", flush=True)
            # Divergence guard: a 12-block DiT at batch 1024 in bf16 blew up
            # after ~1300 steps at lr 1e-3 and 4e-4 (docs/testbed.md); a run
            # that diverges keeps the EMA weights of its last sound window.
            if args.diverged > 0:
                if math.isfinite(recent) and (best is None or recent < best):
                    best = recent
                if not math.isfinite(recent) or recent > args.diverged * best:
                    diverged = {"step": step, "loss_50": recent, "best_loss_50": best,
                                "kept_ema_of_step": sound_step}
                    print(f"diverged at step {step} (loss {recent:.4f}, best {best:.4f}): "
                          f"keeping the EMA weights of step {sound_step}", flush=True)
                    if sound is not None:
                        ema.load_state_dict(sound)
                    break
                if recent <= 1.5 * best:
                    sound = {k: v.detach().clone() for k, v in ema.state_dict().items()}
                    sound_step = step
        if args.checkpoint_every and step % args.checkpoint_every == 0 and step < steps:
            save(ema, pathlib.Path(args.out) / f"step-{step}", args.shard_size)

    out = pathlib.Path(args.out)
    save(ema, out, args.shard_size)
    summary = {
        "steps": step,
        "steps_planned": steps if args.steps > 0 or auto else args.steps,
        "auto_steps": auto,
        "bf16": args.bf16,
        "init": args.init,
        "min_snr": args.min_snr,
        "batch": args.batch,
        "seconds": round(time.time() - start, 1),
        "parameters": params,
        "final_loss_100": float(sum(losses[-100:])) / max(1, len(losses[-100:])),
        "device": str(dev),
        "lr_schedule": args.lr_schedule,
        "rng": args.rng,
        "diverged": diverged,
        "dit_init": args.dit_init,
        "architecture": {"patch": args.patch, "heads": args.heads, "head_dim": args.head_dim, "layers": args.layers},
        "lr": args.lr,
        "ema": args.ema,
        "seed": args.seed,
        "threads": args.threads,
        "data": str(args.data),
        "data_metadata": meta,
        "images": n,
        "num_classes": num_classes,
        "torch": torch.__version__,
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
