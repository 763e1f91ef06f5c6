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
#   - tools/train/shapes160_gpu.sh into $OUT/train (TRAIN_MINUTES, default 4.5);
#   - tools/cuda/check.sh steps 1-3 (refusals, golden, CUDA vs CPU) into $OUT/check-a;
#   - the calibration study of docs/eval.md (`tcc eval` of the FORA N=3 and
#     N=2 schedules and their prior families) into $OUT/study, stopped when
#     phase A's other two jobs are done.
# Phase B, alone on the machine, what is timed: check.sh steps 4-5 (tcc bench
# vs PyTorch eager, calibration throughput) into $OUT/check-b.
# Phase C, if time is left before SESSION_DEADLINE_S (default 570 s): TCC on
# shapes160 with the weights phase A trained, into $OUT/shapes160.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:?"set OUT to the output folder"}
t0=$SECONDS
log() { echo "[session ${1}: $((SECONDS - t0)) s] ${*:2}" | tee -a "$OUT/session.log"; }
mkdir -p "$OUT/study"

log A "start: training, check steps 1-3, study"
TRAIN_MINUTES=${TRAIN_MINUTES:-4.5} OUT="$OUT/train" bash tools/train/shapes160_gpu.sh \
  > "$OUT/train.out" 2>&1 &
train=$!

# The study binary is check.sh's (unpacked once here).
tcc="$(mktemp -d)/tcc"
python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
  target/cuda/tcc.xz "$tcc" && chmod +x "$tcc"
# check.sh finds the CUDA libraries the same way, and says so in its report.
libs=$(python3 -c 'import glob, os, site
hits = [h for r in site.getsitepackages() for h in glob.glob(os.path.join(r, "nvidia", "**", "libcublas.so.13"), recursive=True)]
print(os.path.dirname(hits[0]) if hits else "/usr/local/cuda/lib64")')
(
  export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  for n in 3 2; do
    scheds=(schedules/fora$n.sched schedules/fora$n-validated.sched
      schedules/study/fora$n-{validated-window,affine,diagonal,lowrank}.sched)
    "$tcc" eval "${scheds[@]}" --device cuda --plot "$OUT/study/fora$n.png" --json \
      > "$OUT/study/fora$n.json" 2> "$OUT/study/fora$n.log"
    echo "fora$n: exit $?" >> "$OUT/study/status"
  done
) &
study=$!

CHECK_STEPS=123 OUT="$OUT/check-a" timeout 360 bash tools/cuda/check.sh > "$OUT/check-a.out" 2>&1
log A "check steps 1-3 done (exit $?)"
wait $train
log A "training done (exit $?)"
if kill -0 $study 2>/dev/null; then
  kids=$(pgrep -P $study)
  kill $study 2>/dev/null
  kill $kids 2>/dev/null
  wait $study 2>/dev/null
  echo "stopped at $((SECONDS - t0)) s for phase B" >> "$OUT/study/status"
fi
log A "study: $(tr '\n' ' ' < "$OUT/study/status")"
rm -f "$tcc"

log B "start: check steps 4-5"
CHECK_STEPS=45 CHECK_BUDGET_S=${CHECK_B_BUDGET_S:-220} OUT="$OUT/check-b" bash tools/cuda/check.sh \
  > "$OUT/check-b.out" 2>&1
log B "done"

# Phase C, only with time to spare (the device call's limit is 600 s): a
# first look at TCC on shapes160 with the weights just trained, at a tenth
# of the preset's calibration samples (10 per class), 3 seed sets of one
# sample per class.
left=$((${SESSION_DEADLINE_S:-570} - (SECONDS - t0)))
if [[ -f $OUT/train/dit/config.json ]] && (( left > 60 )); then
  log C "start: shapes160 eval, ${left} s left"
  mkdir -p "$OUT/shapes160"
  dir=$(mktemp -d)
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    target/cuda/tcc.xz "$dir/tcc" && chmod +x "$dir/tcc"
  sed -e "s|^name = \"shapes160\"|&\nweights = \"$OUT/train/dit\"|" -e 's/^samples = 16000/samples = 1600/' \
    schedules/shapes160-fora3.sched > "$dir/shapes160-fora3.sched"
  LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" timeout "$((left - 5))" \
    "$dir/tcc" eval "$dir/shapes160-fora3.sched" --device cuda --n 160 --seeds 101,102,103 \
    --plot "$OUT/shapes160/fora3.png" --json > "$OUT/shapes160/fora3.json" 2> "$OUT/shapes160/fora3.log"
  log C "done (exit $?)"
  rm -rf "$dir"
fi
