#!/usr/bin/env bash
# The prepared GPU call that trains the shapes160 DiT (docs/testbed.md,
# "Training shapes160"). Once, here: tools/train/shapes160_prepare.sh (the
# data exporter as a static binary in .gpu/, the diffusers wheel in .whl/).
# Then on a GPU machine, from the repository root:
#
#   bash tools/train/shapes160_gpu.sh            # writes into $OUT
#
# (the device tool's run with carry [".gpu", ".whl"], timeout_s 600). It
# renders the training data there (96,000 images of Shapes160 seed 0; here
# 4,000 took 1.4 s on 2 threads; 375 MiB, too large to carry), trains the
# 12-block DiT for 6.5 minutes (TRAIN_MINUTES; the step count is fitted to that budget and
# recorded), checks the result with the testbed classifier, and writes
#
#   $OUT/dit/config.json, diffusion_pytorch_model-0000{1,2}-of-00002.safetensors,
#            diffusion_pytorch_model.safetensors.index.json   (EMA weights, <16 MiB files)
#   $OUT/dit/training.json   what was run: steps, losses, seconds, versions
#   $OUT/train.log           everything printed
#   $OUT/check.json          class accuracy and FD of 640 samples (DDIM 20, cfg 1.5)
#   $OUT/samples.png         one sample per class, a row per shape
#
# Install the weights here with
#   python3 tools/train/shapes160_install.py <files_at>/dit
#
#   bash tools/train/shapes160_gpu.sh --smoke DIR
# runs the same steps on this CPU at toy size (1,000 images, 3 training
# steps of batch 8, a 16-sample check with 2 DDIM steps) into DIR: the
# proof that the call works, without a GPU.
set -euo pipefail
cd "$(dirname "$0")/../.."

smoke=0
if [ "${1:-}" = "--smoke" ]; then
    smoke=1
    shift
fi
out=${1:-${OUT:?"give an output folder, or set OUT"}}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ $smoke = 1 ]; then
    device=cpu images=1000 train=(--steps 3 --batch 8 --rng device) check=(--n 16 --steps 2 --batch 16)
else
    device=cuda images=96000 train=(--steps 0 --minutes "${TRAIN_MINUTES:-6.5}" --batch "${TRAIN_BATCH:-1024}" --bf16 --rng device) check=(--n 640)
fi

exec > >(tee "$out/train.log") 2>&1
start=$(date +%s)
echo "shapes160 training call ($([ $smoke = 1 ] && echo smoke || echo full)), $(date -u +%FT%TZ), $(uname -m)"
if ! python3 -c "import diffusers" 2>/dev/null; then
    ls .whl/diffusers-*.whl >/dev/null 2>&1 || { echo "diffusers is missing and .whl/ has no wheel: run tools/train/shapes160_prepare.sh here and carry .whl"; exit 2; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$work/site" .whl/*.whl
    export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'cuda', torch.cuda.is_available())"
[ -x .gpu/export_shapes160 ] || { echo ".gpu/export_shapes160 is missing: run tools/train/shapes160_prepare.sh here and carry .gpu"; exit 2; }
.gpu/export_shapes160 "$work/shapes160.safetensors" "$images"

export PYTHONUNBUFFERED=1
python3 tools/train/train_tiny_dit.py --data "$work/shapes160.safetensors" --out "$out/dit" \
    --device "$device" --threads "$(nproc)" --layers 12 --patch 2 --heads 4 --head-dim 32 \
    --lr "${TRAIN_LR:-3e-4}" --dit-init --ema 0.999 --checkpoint-every 0 --shard-size 10MB "${train[@]}"
python3 tools/train/shapes160_check.py --model "$out/dit" --data "$work/shapes160.safetensors" \
    --device "$device" --json "$out/check.json" --grid "$out/samples.png" "${check[@]}"
echo "done in $(( $(date +%s) - start )) s"
ls -l "$out" "$out/dit"
