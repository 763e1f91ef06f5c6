#!/usr/bin/env bash
# Builds tcc with `--features cuda` on a machine without a GPU, for the GPU
# machines we borrow (H100/H200: compute capability 9.0, driver 580 = CUDA
# 13.0, no Rust, no network; see docs/gpu.md).
#
#   tools/cuda/build.sh            # -> target/cuda/release/tcc (stripped),
#                                  #    target/cuda/tcc.xz (what travels), .whl/
#
# 1. Installs the CUDA 13.0 toolkit pieces from PyPI into .cuda/ (git-ignored,
#    reused by later runs): nvcc, the runtime, CCCL headers, NVRTC, cuBLAS,
#    cuRAND. 13.0 and not newer: candle's kernels ship as PTX that the driver
#    compiles when they load, and driver 580 rejects PTX from a newer nvcc.
# 2. Adds what the PyPI wheels lack for linking: unversioned .so names and a
#    libcuda.so stub (the driver's API, soname libcuda.so.1) generated from the
#    functions cudarc declares, the same kind of stub the CUDA toolkit ships in
#    lib/stubs. At run time the GPU machine's real driver is loaded instead.
# 3. cargo build --release --locked --features cuda for sm_90, into
#    target/cuda so that the CPU build in target/ is left alone; strips the
#    binary and prints its size and the build time.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
tk="$root/.cuda"
cuda="$tk/nvidia/cu13"
start=$(date +%s)

# Pinned to CUDA 13.0 (see above); cuRAND numbers its releases on its own.
pins=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
  nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
)
stamp="$tk/.installed"
if [[ ! -f $stamp || "$(cat "$stamp")" != "${pins[*]}" ]]; then
  echo "== installing the CUDA 13.0 toolkit pieces from PyPI into .cuda/" >&2
  rm -rf "$tk"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$tk" "${pins[@]}"
  echo "${pins[*]}" > "$stamp"
fi
[[ -x $cuda/bin/nvcc ]] || { echo "build.sh: no nvcc under $cuda/bin" >&2; exit 1; }

# Link-time names: libX.so -> libX.so.N, as a toolkit's lib64/ has them.
for lib in cudart cublas cublasLt curand nvrtc; do
  real=$(cd "$cuda/lib" && ls "lib$lib.so."* | grep -v alt | sort | head -1)
  ln -sfn "$real" "$cuda/lib/lib$lib.so"
done

# The driver API stub.
cudarc_src=$(cargo metadata --locked --format-version 1 --features cuda 2>/dev/null |
  python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc").rsplit("/",1)[0])')
mkdir -p "$cuda/lib/stubs"
grep -oE '^\s+fn cu[A-Za-z0-9_]+\(' "$cudarc_src/src/driver/sys/mod.rs" |
  sed -E 's/^\s+fn (cu[A-Za-z0-9_]+)\(/int \1(void) { return 999; }/' | sort -u \
  > "$cuda/lib/stubs/libcuda_stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cuda/lib/stubs/libcuda.so" \
  "$cuda/lib/stubs/libcuda_stub.c"

export CUDA_HOME="$cuda" PATH="$cuda/bin:$PATH"
export CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000
# candle-kernels compiles its quantized-matmul kernels with nvcc, one file
# per thread (half the cores by default): most of the build's time.
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-$(nproc)}
export LIBRARY_PATH="$cuda/lib:$cuda/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
nvcc --version | tail -2 >&2

echo "== cargo build --release --locked --features cuda (sm_90)" >&2
cargo build --release --locked --features cuda --target-dir target/cuda --bin tcc
bin=target/cuda/release/tcc
strip "$bin"
size=$(stat -c %s "$bin")
echo "built $bin: $size bytes ($((size / 1048576)) MiB stripped) in $(( $(date +%s) - start )) s"
# What travels to the GPU machine (64 MiB with the working tree): the
# binary's PTX and SASS compress about 5x. check.sh unpacks it.
xz -T0 -6 -f -c "$bin" > target/cuda/tcc.xz
echo "target/cuda/tcc.xz: $(stat -c %s target/cuda/tcc.xz) bytes"
echo "needs at run time: $(readelf -d "$bin" | grep -oE 'lib[A-Za-z0-9_.+-]+\.so[.0-9]*' | tr '\n' ' ')"

# The wheel check.sh installs on the GPU machine (no network there): diffusers,
# for the PyTorch eager baseline; its other needs are in that machine's image.
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 \
  -d .whl diffusers==0.42.1
echo "wheels for check.sh in .whl/: $(ls .whl | tr '\n' ' ')"
