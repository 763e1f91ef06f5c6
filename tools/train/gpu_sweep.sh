#!/usr/bin/env bash
# Recipe sweep for the tiny DiT on one GPU: several training runs side by
# side for a fixed wall-clock budget (constant LR + EMA, so every checkpoint
# is a usable model), then tools/train/check_samples.py ranks the
# checkpoints. Used once to choose the shipped recipe; see docs/testbed.md.
#
#   tools/train/gpu_sweep.sh DATA.safetensors WORKDIR MINUTES
set -euo pipefail
data=$1
work=$2
minutes=$3
mkdir -p "$work"
train() {
    local name=$1
    shift
    python3 tools/train/train_tiny_dit.py --data "$data" --out "$work/$name" --device cuda \
        --lr-schedule constant --steps 1000000 --minutes "$minutes" --checkpoint-every 2500 "$@" \
        >"$work/$name.log" 2>&1 &
}
train p4-b64 --patch 4 --batch 64
train p4-b256 --patch 4 --batch 256
train p4-b256-snr5 --patch 4 --batch 256 --min-snr 5
train p4-d10-b256 --patch 4 --layers 10 --batch 256
train p4-h160-b256 --patch 4 --heads 5 --batch 256
train p2-b128 --patch 2 --batch 128
train p2-d8-b256 --patch 2 --layers 8 --batch 256
wait
tail -n 2 "$work"/*.log
