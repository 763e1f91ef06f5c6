#!/usr/bin/env bash
# Everything a session's GPU time is for, in one device call of under ten
# minutes (a session gets 15 minutes of device time, start-up included, so
# two calls rarely fit):
#
#   tools/cuda/build.sh                  # here: target/cuda/tcc.xz, .whl/
#   tools/train/shapes160_prepare.sh     # here: .gpu/export_shapes160, .whl/
#   run(command="bash tools/cuda/session.sh", carry=["target/cuda/tcc.xz", ".gpu", ".whl"])
#
# Phase A, at once (sharing the machine does not change their results):
#   - tools/train/shapes160_gpu.sh on the GPU (TRAIN_MINUTES, default 6.5);
#   - tools/cuda/check.sh steps CHECK_STEPS_A (default 123: refusals,
#     golden, CUDA vs CPU; empty to skip);
#   - the calibration study of docs/eval.md (`tcc eval` of the FORA N=3 and
#     N=2 schedules and their prior families, 5 seed sets x 100) as four
#     processes on STUDY_DEVICE (default cuda: on 12 of the H200 machine's
#     16 CPU cores the four had fitted their priors but not finished their
#     evals after 550 s), until SESSION_DEADLINE_S or until phase B needs
#     the machine; STUDY= (empty) skips it, leaving the GPU to the trainer.
#     The checks are stopped after CHECK_A_LIMIT_S (default 300).
# Phase B, alone on the machine, what is timed: check.sh steps CHECK_STEPS_B
# (default 45: tcc bench vs PyTorch eager, calibration throughput; empty to
# skip, and then the study runs on).
# Phase C, on the GPU until SESSION_DEADLINE_S (default 570 s): TCC on
# shapes160 with the weights phase A trained, the preset schedules (paper
# protocol, but a tenth of its calibration samples: 10 per class, not 100,
# to fit the time) and their validated variants, 5 seed sets of one sample
# per class, no one-shot variants.
#
# The device tool brings back at most 8 files of at most 16 MiB from $OUT,
# and a call stopped at its limit takes its processes with it. So every
# phase works in a scratch folder, is time-boxed, and leaves one archive in
# $OUT when it ends: A.tar.gz (train/, check-a/), study.tar.gz, B.tar.gz
# (check-b/), C.tar.gz (shapes160/), the trained weights' two shards
# (<16 MiB each, as shapes160_install.py reads them back with the rest of
# train/dit/ from A.tar.gz) and session.log: 7 files.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:?"set OUT to the output folder"}
deadline=${SESSION_DEADLINE_S:-570}
checks_a=${CHECK_STEPS_A-123}
checks_b=${CHECK_STEPS_B-45}
study_device=${STUDY_DEVICE:-cuda}
study=${STUDY-1}
t0=$SECONDS
work=$(mktemp -d /tmp/tcc-session.XXXXXX)
log() { echo "[session ${1}: $((SECONDS - t0)) s] ${*:2}" | tee -a "$OUT/session.log"; }
left() { echo $((deadline - (SECONDS - t0))); }
pack() { # NAME DIR...: one archive in $OUT, weights left out (they come back apart)
  local name=$1
  shift
  tar -czf "$OUT/$name.tar.gz" -C "$work" --exclude='diffusion_pytorch_model-*.safetensors' "$@" 2>/dev/null
}
mkdir -p "$work/study"

# A dry run on a CPU machine sets TCC_BIN (a binary to use instead of the
# carried one), TRAIN_SCRIPT (a stand-in for the training call that writes
# weights into its argument's dit/), STUDY_DEVICE=cpu, C_DEVICE=cpu and empty
# CHECK_STEPS_*.
tcc=${TCC_BIN:-$work/tcc}
[[ -n ${TCC_BIN:-} ]] ||
  { python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    target/cuda/tcc.xz "$tcc" && chmod +x "$tcc"; }
# check.sh finds the CUDA libraries the same way, and says so in its report.
libs=$(python3 -c 'import glob, os, site
hits = [h for r in site.getsitepackages() for h in glob.glob(os.path.join(r, "nvidia", "**", "libcublas.so.13"), recursive=True)]
print(os.path.dirname(hits[0]) if hits else "/usr/local/cuda/lib64")')
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

log A "start: training, check steps '${checks_a}', study on ${study_device} ($(nproc) cores)"
TRAIN_MINUTES=${TRAIN_MINUTES:-6.5} bash "${TRAIN_SCRIPT:-tools/train/shapes160_gpu.sh}" "$work/train" \
  > "$work/train.out" 2>&1 &
train=$!

# The study: per N, the paper's protocol with validation (fora$n,
# fora$n-validated) and the prior families (window, affine, diagonal,
# lowrank), each group one `tcc eval` with its own full-computation run.
# Three threads each leave the trainer's Python process a core of its own.
study_pids=()
[[ -n $study ]] || echo "skipped (STUDY empty)" > "$work/study/status"
for n in $([[ -n $study ]] && echo 3 2); do
  groups=("fora$n fora$n-validated" "study/fora$n-validated-window study/fora$n-affine study/fora$n-diagonal study/fora$n-lowrank")
  for g in 0 1; do
    scheds=()
    for s in ${groups[$g]}; do scheds+=("schedules/$s.sched"); done
    name="fora$n-$g"
    (
      RAYON_NUM_THREADS=3 "$tcc" eval "${scheds[@]}" --device "$study_device" \
        --plot "$work/study/$name.png" --json > "$work/study/$name.json" 2> "$work/study/$name.log"
      echo "$name: exit $? at $((SECONDS - t0)) s" >> "$work/study/status"
    ) &
    study_pids+=($!)
  done
done
stop_study() {
  local pid kids
  for pid in "${study_pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kids=$(pgrep -P "$pid")
      kill "$pid" $kids 2>/dev/null
      echo "stopped at $((SECONDS - t0)) s: $1" >> "$work/study/status"
    fi
  done
  wait "${study_pids[@]}" 2>/dev/null
  log S "$(tr '\n' ' ' < "$work/study/status")"
  pack study study
}

if [[ -n $checks_a ]]; then
  CHECK_STEPS=$checks_a OUT="$work/check-a" TCC_BIN="$tcc" timeout "${CHECK_A_LIMIT_S:-300}" bash tools/cuda/check.sh \
    > "$work/check-a.out" 2>&1
  log A "check steps ${checks_a} done (exit $?)"
fi
wait $train
log A "training done (exit $?)"
cp "$work"/train/dit/diffusion_pytorch_model-*.safetensors "$OUT/" 2>/dev/null
pack A train train.out $( [[ -n $checks_a ]] && echo check-a check-a.out)

if [[ -n $checks_b ]]; then
  stop_study "phase B needs the machine alone"
  log B "start: check steps ${checks_b}, $(left) s left"
  CHECK_STEPS=$checks_b CHECK_BUDGET_S=$(($(left) - 20)) OUT="$work/check-b" TCC_BIN="$tcc" \
    timeout "$(($(left) - 10))" bash tools/cuda/check.sh > "$work/check-b.out" 2>&1
  log B "done (exit $?)"
  pack B check-b check-b.out
fi

# Phase C: TCC on shapes160 with the weights just trained, each eval one
# process with its time limit, so that those that finish come back.
if [[ -f $work/train/dit/config.json ]] && (($(left) > 60)); then
  log C "start: shapes160 evals, $(left) s left"
  mkdir -p "$work/shapes160"
  for n in 3 2; do
    for s in shapes160-fora$n shapes160-fora$n-validated; do
      sed -e "s|^name = \"shapes160\"|&\nweights = \"$work/train/dit\"|" -e 's/^samples = 16000/samples = 1600/' \
        "schedules/$s.sched" > "$work/shapes160/$s.sched"
    done
  done
  for n in 3 2; do
    (($(left) > 40)) || break
    timeout "$(($(left) - 25))" "$tcc" eval "$work/shapes160/shapes160-fora$n.sched" \
      "$work/shapes160/shapes160-fora$n-validated.sched" --device "${C_DEVICE:-cuda}" --n 160 --no-one-shot \
      --plot "$work/shapes160/fora$n.png" --json \
      > "$work/shapes160/fora$n.json" 2> "$work/shapes160/fora$n.log"
    log C "fora$n done (exit $?)"
  done
  pack C shapes160
fi

# The study, until the deadline.
while (($(left) > 15)) && pgrep -f "$tcc eval" >/dev/null; do sleep 2; done
stop_study "session deadline"
rm -rf "$work"
