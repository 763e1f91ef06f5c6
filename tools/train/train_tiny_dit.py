"""Train the embedded default model: a tiny class-conditional DiT on the
procedural shapes dataset (crates/tcc-data), in diffusers layout.

Reproducible for a seed on a given device. The shipped weights
(crates/tcc-testbed/assets/tiny-dit, see training.json there and
docs/testbed.md) come from two stages on one GPU; run from the repository
root:

    cargo run --release -p tcc-data --example export_dataset -- target/shapes.safetensors 60000
    python3 tools/train/train_tiny_dit.py --data target/shapes.safetensors --out <stage1> \
        --device cuda --patch 2 --batch 128 --lr-schedule constant --steps 3175
    python3 tools/train/train_tiny_dit.py --data target/shapes.safetensors --init <stage1> \
        --out <stage2> --device cuda --patch 2 --batch 128 --steps 4000

then copy <stage2>/config.json and diffusion_pytorch_model.safetensors into
the assets folder (training.json there records both stages).
On our 2-core CPU one such step took 9.3 s (measured under load): ~18 h in all.

It writes <out>/config.json and <out>/diffusion_pytorch_model.safetensors (the
EMA weights) and <out>/training.json (what was run, losses, wall time).
Requires torch and diffusers from PyPI.
"""

import argparse
import copy
import json
import math
import pathlib
import time

import torch
from safetensors.torch import load_file

from diffusers import DiTTransformer2DModel


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


def save(ema, out):
    """Save untied copies so the on-disk layout is plain diffusers."""
    out.mkdir(parents=True, exist_ok=True)
    copy_ = copy.deepcopy(ema)
    untie_embedders(copy_)
    copy_.save_pretrained(out, safe_serialization=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="safetensors with `images` u8 [N,3,32,32] and `labels` i64 [N]")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=5000, help="optimizer steps (the LR schedule spans them)")
    ap.add_argument("--minutes", type=float, default=90.0, help="safety cap on wall-clock time; stopping early is recorded")
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
    ap.add_argument("--lr-schedule", choices=["cosine", "constant"], default="cosine",
                    help="cosine decays to 5%% over --steps; constant keeps the peak (EMA does the averaging), so any checkpoint is a finished model")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    data = load_file(args.data)
    images = (data["images"].float() / 127.5 - 1.0).to(dev)
    labels = data["labels"].long().to(dev)
    n, c, h, w = images.shape
    num_classes = int(labels.max()) + 1

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
    # Draws come from a CPU generator whatever the device, so a run's data
    # order and noise depend only on the seed.
    gen = torch.Generator().manual_seed(args.seed)
    ema_params = list(ema.parameters())
    model_params = list(model.parameters())

    budget = args.minutes * 60.0
    start = time.time()
    losses = []
    step = 0
    model.train()
    while step < args.steps and time.time() - start < budget:
        frac = step / args.steps
        # Short warm-up, then cosine decay over the step budget (step-based so
        # that a run is reproducible whatever else the machine is doing).
        lr = args.lr * min(1.0, (step + 1) / 200)
        if args.lr_schedule == "cosine":
            lr *= 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, n, (args.batch,), generator=gen)
        x0, y = images[idx.to(dev)], labels[idx.to(dev)]
        # Random horizontal flips would change the glyph classes' meaning: none.
        t = torch.randint(0, 1000, (args.batch,), generator=gen).to(dev)
        eps = torch.randn(x0.shape, generator=gen).to(dev)
        ab = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        pred = model(xt, timestep=t, class_labels=y).sample
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
        if args.checkpoint_every and step % args.checkpoint_every == 0 and step < args.steps:
            save(ema, pathlib.Path(args.out) / f"step-{step}")

    out = pathlib.Path(args.out)
    save(ema, out)
    summary = {
        "steps": step,
        "steps_planned": args.steps,
        "init": args.init,
        "min_snr": args.min_snr,
        "batch": args.batch,
        "seconds": round(time.time() - start, 1),
        "parameters": params,
        "final_loss_100": float(sum(losses[-100:])) / max(1, len(losses[-100:])),
        "device": str(dev),
        "lr_schedule": args.lr_schedule,
        "dit_init": args.dit_init,
        "architecture": {"patch": args.patch, "heads": args.heads, "head_dim": args.head_dim, "layers": args.layers},
        "lr": args.lr,
        "ema": args.ema,
        "seed": args.seed,
        "threads": args.threads,
        "data": str(args.data),
        "images": n,
        "torch": torch.__version__,
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
