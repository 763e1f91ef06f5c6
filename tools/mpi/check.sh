#!/usr/bin/env bash
# Builds tcc with MPI (feature `mpi`) and checks that the consistent-mode
# calibration across 2 MPI processes gives the single-process priors within
# 1e-6 relative (f64 sums added in another order).
#
#   tools/mpi/check.sh [SCHEDULE] [extra tcc calibrate flags]
#
# Needs a system MPI and libclang (Debian / Ubuntu):
#   apt-get install -y libopenmpi-dev openmpi-bin libclang-dev
# CI has no MPI: the default build and `cargo test --workspace` never build
# the feature; this script is the check.
set -euo pipefail
cd "$(dirname "$0")/../.."
sched=${1:-schedules/fora3.sched}
shift || true
command -v mpirun >/dev/null || { echo "mpirun not found: apt-get install -y libopenmpi-dev openmpi-bin libclang-dev" >&2; exit 2; }
cargo build --features mpi --bin tcc
bin=target/debug/tcc
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ "$(id -u)" = 0 ]; then
    # OpenMPI refuses root unless told.
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
echo "== one process"
"$bin" calibrate "$sched" --out "$tmp/single.safetensors" "$@" | tail -3
echo "== mpirun -n 2"
# One thread per rank (RAYON_NUM_THREADS): 2 ranks on 2 cores.
mpirun --oversubscribe -n 2 -x RAYON_NUM_THREADS=1 \
    "$bin" calibrate "$sched" --out "$tmp/mpi.safetensors" "$@" | tail -3
python3 tools/mpi/compare_priors.py "$tmp/mpi.safetensors" "$tmp/single.safetensors" 1e-6
echo "MPI check passed"
