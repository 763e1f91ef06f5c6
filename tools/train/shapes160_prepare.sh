#!/usr/bin/env bash
# Prepares the carried files of the shapes160 GPU call (tools/train/shapes160_gpu.sh),
# run here once, from any folder of the checkout that the device tool sends:
#
#   .gpu/export_shapes160   the data exporter (crates/tcc-data/examples/export_shapes160.rs),
#                           statically linked so it runs whatever the GPU machine's C library
#   .whl/diffusers-0.42.1-py3-none-any.whl
#                           diffusers is not installed there (torch, safetensors, numpy,
#                           pillow and huggingface_hub are)
#
# Both folders are added to the repository's info/exclude, so git ignores
# them and the device tool carries them only when asked (carry [".gpu", ".whl"]).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
for dir in .gpu .whl; do
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")"
    grep -qx "/$dir/" "$exclude" 2>/dev/null || echo "/$dir/" >>"$exclude"
done

target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked -p tcc-data \
    --example export_shapes160 --target $target --target-dir target/static
mkdir -p .gpu
cp target/static/$target/release/examples/export_shapes160 .gpu/
# Line tables are of no use there: 16 MB -> 1.5 MB of the carried tree.
if command -v strip >/dev/null; then strip .gpu/export_shapes160; fi

python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1
ls -l .gpu .whl
du -sh .gpu .whl
