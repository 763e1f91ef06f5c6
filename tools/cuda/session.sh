#!/usr/bin/env bash
# Everything a session's GPU time is for, in one device call of under ten
# minutes (a session gets 15 minutes of device time, start-up included, so
# two calls rarely fit):
#
#   tools/cuda/build.sh                  # here: target/cuda/tcc.xz, .whl/
#   tools/train/shapes160_prepare.sh     # here: .gpu/export_shapes160, .whl/
#   run(command="bash tools/cuda/session.sh", carry=["target/cuda/tcc.xz", ".gpu", ".whl"])
#
# Phase A, at once, all checks of correctness (sharing the GPU does not
# change their results):
#   - tools/train/shapes160_gpu.sh (TRAIN_MINUTES, default 4.5);
#   - tools/cuda/check.sh steps 1-3 (refusals, golden, CUDA vs CPU);
#   - the calibration study of docs/eval.md (`tcc eval` of the FORA N=3 and
#     N=2 schedules and their prior families), stopped when phase A's other
#     two jobs are done.
# Phase B, alone on the machine, what is timed: check.sh steps 4-5 (tcc bench
# vs PyTorch eager, calibration throughput).
# Phase C, if time is left before SESSION_DEADLINE_S (default 570 s): TCC on
# shapes160 with the weights phase A trained.
#
# The device tool brings back at most 8 files of at most 16 MiB from $OUT,
# and a call stopped at its limit takes its processes with it. So every
# phase works in a scratch folder, is time-boxed, and leaves one archive in
# $OUT when it ends: A.tar.gz (train/, check-a/, study/), B.tar.gz
# (check-b/), C.tar.gz (shapes160/), the trained weights' two shards
# (<16 MiB each, as shapes160_install.py reads them back with the rest of
# train/dit/ from A.tar.gz) and session.log: 6 files.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:?"set OUT to the output folder"}
deadline=${SESSION_DEADLINE_S:-570}
t0=$SECONDS
work=$(mktemp -d /tmp/tcc-session.XXXXXX)
log() { echo "[session ${1}: $((SECONDS - t0)) s] ${*:2}" | tee -a "$OUT/session.log"; }
pack() { # NAME DIR...: one archive in $OUT, weights left out (they come back apart)
  local name=$1
  shift
  tar -czf "$OUT/$name.tar.gz" -C "$work" --exclude='diffusion_pytorch_model-*.safetensors' "$@" 2>/dev/null
}
mkdir -p "$work/study"

tcc="$work/tcc"
python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
  target/cuda/tcc.xz "$tcc" && chmod +x "$tcc"
# check.sh finds the CUDA libraries the same way, and says so in its report.
libs=$(python3 -c 'import glob, os, site
hits = [h for r in site.getsitepackages() for h in glob.glob(os.path.join(r, "nvidia", "**", "libcublas.so.13"), recursive=True)]
print(os.path.dirname(hits[0]) if hits else "/usr/local/cuda/lib64")')
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

log A "start: training, check steps 1-3, study"
TRAIN_MINUTES=${TRAIN_MINUTES:-4.5} bash tools/train/shapes160_gpu.sh "$work/train" \
  > "$work/train.out" 2>&1 &
train=$!
(
  for n in 3 2; do
    scheds=(schedules/fora$n.sched schedules/fora$n-validated.sched
      schedules/study/fora$n-{validated-window,affine,diagonal,lowrank}.sched)
    "$tcc" eval "${scheds[@]}" --device cuda --plot "$work/study/fora$n.png" --json \
      > "$work/study/fora$n.json" 2> "$work/study/fora$n.log"
    echo "fora$n: exit $? at $((SECONDS - t0)) s" >> "$work/study/status"
  done
) &
study=$!
CHECK_STEPS=123 OUT="$work/check-a" TCC_BIN="$tcc" timeout 300 bash tools/cuda/check.sh \
  > "$work/check-a.out" 2>&1
log A "check steps 1-3 done (exit $?)"
wait $train
log A "training done (exit $?)"
if kill -0 $study 2>/dev/null; then
  kids=$(pgrep -P $study)
  kill $study 2>/dev/null
  kill $kids 2>/dev/null
  wait $study 2>/dev/null
  echo "stopped at $((SECONDS - t0)) s for phase B" >> "$work/study/status"
fi
log A "study: $(tr '\n' ' ' < "$work/study/status")"
cp "$work"/train/dit/diffusion_pytorch_model-*.safetensors "$OUT/" 2>/dev/null
pack A train train.out check-a check-a.out study

left=$((deadline - (SECONDS - t0)))
log B "start: check steps 4-5, ${left} s left"
CHECK_STEPS=45 CHECK_BUDGET_S=$((left - 20)) OUT="$work/check-b" TCC_BIN="$tcc" \
  timeout "$((left - 10))" bash tools/cuda/check.sh > "$work/check-b.out" 2>&1
log B "done (exit $?)"
pack B check-b check-b.out

# Phase C: a first look at TCC on shapes160 with the weights just trained,
# at a tenth of the preset's calibration samples (10 per class), 3 seed
# sets of one sample per class.
left=$((deadline - (SECONDS - t0)))
if [[ -f $work/train/dit/config.json ]] && (( left > 60 )); then
  log C "start: shapes160 eval, ${left} s left"
  mkdir -p "$work/shapes160"
  sed -e "s|^name = \"shapes160\"|&\nweights = \"$work/train/dit\"|" -e 's/^samples = 16000/samples = 1600/' \
    schedules/shapes160-fora3.sched > "$work/shapes160/fora3.sched"
  timeout "$((left - 10))" "$tcc" eval "$work/shapes160/fora3.sched" --device cuda --n 160 \
    --seeds 101,102,103 --plot "$work/shapes160/fora3.png" --json \
    > "$work/shapes160/fora3.json" 2> "$work/shapes160/fora3.log"
  log C "done (exit $?)"
  pack C shapes160
fi
rm -rf "$work"
