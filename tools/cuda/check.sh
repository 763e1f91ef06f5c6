#!/usr/bin/env bash
# The GPU check of tcc's CUDA build, to run unattended on an H100/H200
# machine (no Rust, no network) in under 8 minutes:
#
#   tools/cuda/build.sh                     # here: target/cuda/tcc.xz, .whl/
#   tools/cuda/check.sh                     # there, from the repository root,
#                                           # with target/cuda/tcc.xz and .whl
#                                           # carried along
#
# Writes $OUT/gpu-check.md (the report: every number, each step's verdict)
# and $OUT/gpu-check.log (every command's full output), plus
# $OUT/gpu-check-data.tar.gz (the JSON and safetensors the report was made
# from). OUT defaults to ./gpu-check-out. Steps, in order (docs/gpu.md):
#
#  0. the machine: GPU, driver; the CUDA libraries the binary needs, found
#     in PyTorch's site-packages (nvidia/cu13/lib), else /usr/local/cuda.
#  1. refusals and the default device: `--device cuda` with no GPU visible
#     (CUDA_VISIBLE_DEVICES=) must exit 2 with one line; without --device
#     the GPU must be chosen and named on stderr.
#  2. golden: `tcc golden --device cuda`: DiT and PixArt-α forward passes
#     against the committed diffusers fixtures, f32 (max abs <= 1e-4),
#     f16 and bf16 (relative bounds, see crates/tcc-cli/src/golden.rs),
#     each run twice (identical bytes).
#  3. the embedded model on CUDA against the CPU: priors fitted by
#     `tcc calibrate` on each device (compared); `tcc sample --priors`
#     with the CPU's priors, f32, on both devices: rel. L2 of the samples
#     <= 1e-4 (target); bf16 on CUDA against that (reported); `tcc eval`
#     on both devices, side by side.
#  4. speed: `tcc bench` of DiT-XL/2 (schedules/dit-xl2-fora3.sched) and
#     PixArt-α 256 (schedules/pixart-fora3-tcc.sched, FORA N=3) with random
#     weights, batch 2x8 with CFG, f32 and bf16: seconds per step of full
#     computation and of FORA N=3, measured vs predicted speedup; the same
#     models in diffusers, PyTorch eager (tools/cuda/torch_bench.py), and
#     the ratio tcc / PyTorch per step.
#  5. calibration throughput: `tcc calibrate` of the DiT-XL/2 FORA preset
#     (schedules/dit-xl2-fora2-tcc.sched) on random weights, bf16: the
#     walk's samples per second with shift priors (the walk is the same for
#     every prior kind), then the preset's Procrustes fit on 64 samples for
#     the fitting time (224 SVDs of 1152 x 1152), last and time-boxed.
#  6. ToCa and first-block cache on CUDA against the CPU (embedded model,
#     schedules/toca3.sched and fbcache.sched, 100 samples, f32): both
#     devices sample, the steps each batch computed are compared, and the
#     rel. L2 between the devices' samples is reported (ToCa's token choice
#     and the first-block decision depend on the data, so a rounding
#     difference can change a choice: reported, not held to 1e-4).
#  7. ToCa's speed on CUDA: `tcc bench` of schedules/dit-xl2-toca.sched
#     (DDIM 50, N = 2, fresh ratio 0.07) with random weights, f32 and bf16:
#     measured against predicted speedup (gather, merge and scoring are
#     in the prediction's MACs but are launch-bound on a GPU).
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
OUT=${OUT:-$root/gpu-check-out}
mkdir -p "$OUT"
report="$OUT/gpu-check.md"
log="$OUT/gpu-check.log"
# What the report is made from (archived into $OUT), and what is too big to
# bring back (priors files: a DiT-XL/2 one holds 224 D x D matrices).
work=$(mktemp -d /tmp/tcc-gpu-check.XXXXXX)
scratch=$(mktemp -d /tmp/tcc-gpu-scratch.XXXXXX)
tcc="${TCC_BIN:-$root/target/cuda/release/tcc}"
if [[ ! -x $tcc && -f $root/target/cuda/tcc.xz ]]; then
  # The compressed binary that travels (tools/cuda/build.sh).
  tcc="$work/tcc"
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    "$root/target/cuda/tcc.xz" "$tcc"
  chmod +x "$tcc"
fi
: > "$report"
: > "$log"
start=$SECONDS
# CHECK_STEPS picks steps 1-7 (default all; step 0 always runs), so that a
# device call can run the correctness steps while something else uses the
# GPU and the speed steps alone (tools/cuda/session.sh). CHECK_BUDGET_S:
# seconds from the start within which step 5's Procrustes fit may run.
steps=${CHECK_STEPS:-1234567}
budget=${CHECK_BUDGET_S:-470}
want() { [[ $steps == *"$1"* ]]; }
failures=0

say() { printf '%s\n' "$*" | tee -a "$report"; }
# run LIMIT_S CMD...: run with a time limit, output to the log; returns its status.
run() {
  local limit=$1
  shift
  echo "\$ $*" >> "$log"
  timeout --kill-after=10 "$limit" "$@" > "$log.step" 2>&1
  local rc=$?
  cat "$log.step" >> "$log"
  echo "[exit $rc, ${SECONDS}s into the check]" >> "$log"
  return $rc
}
# run_json FILE LIMIT CMD...: as run, with stdout (the JSON) into FILE.
run_json() {
  local file=$1 limit=$2
  shift 2
  echo "\$ $* > $file" >> "$log"
  timeout --kill-after=10 "$limit" "$@" > "$file" 2> "$log.step"
  local rc=$?
  cat "$log.step" "$file" >> "$log"
  echo "[exit $rc, ${SECONDS}s into the check]" >> "$log"
  return $rc
}
verdict() { # NAME STATUS
  if [[ $2 == 0 ]]; then say "- $1: ok"; else say "- $1: FAILED (exit $2)"; failures=$((failures + 1)); fi
}
finish() {
  say ""
  say "finished in $((SECONDS - start)) s, $failures step(s) failed"
  tar -czf "$OUT/gpu-check-data.tar.gz" -C "$work" --exclude=tcc --exclude=site . 2>/dev/null
  rm -rf "$log.step" "$scratch"
}
trap finish EXIT

say "# tcc GPU check ($(date -u +%Y-%m-%dT%H:%MZ))"
say ""
say "## 0. machine"
say '```'
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader 2>&1 | tee -a "$report"
say "tree: $(git rev-parse --short HEAD 2>/dev/null || echo '?') $(git status --porcelain 2>/dev/null | grep -qv '^??' && echo '(modified)')"
say "cpu cores: $(nproc)"
libdirs=$(python3 - <<'EOF'
import glob, os, site, sys
want = ["libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libnvrtc.so.13"]
roots = [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(p)]
dirs = []
for w in want:
    hits = [h for r in roots for h in glob.glob(os.path.join(r, "nvidia", "**", w), recursive=True)]
    hits += glob.glob(os.path.join("/usr/local/cuda*/lib64", w))
    if not hits:
        print(f"not found: {w}", file=sys.stderr)
    elif os.path.dirname(hits[0]) not in dirs:
        dirs.append(os.path.dirname(hits[0]))
print(":".join(dirs))
EOF
)
export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
say "CUDA libraries from: $libdirs"
chmod +x "$tcc" 2>/dev/null
missing=$(ldd "$tcc" 2>&1 | grep -E 'not found|No such file' || true)
[[ -n $missing ]] && say "MISSING: $missing"
say "$("$tcc" --version 2>&1)"
say '```'
if ! "$tcc" --version > /dev/null 2>&1; then
  say "the binary does not start: nothing else can run"
  failures=$((failures + 1))
  exit 1
fi

if want 1; then
say ""
say "## 1. refusals and the default device"
CUDA_VISIBLE_DEVICES= run 60 "$tcc" sample schedules/fora3.sched --n 1 --device cuda
rc=$?
line=$(tail -n 1 "$log.step")
say "- \`CUDA_VISIBLE_DEVICES= tcc sample ... --device cuda\`: exit $rc: \`$line\`"
[[ $rc == 2 && $(wc -l < "$log.step") == 1 ]]; verdict "no GPU visible: one line, exit 2" $?
run 120 "$tcc" sample schedules/fora3.sched --n 2 --out "$work/default"
rc=$?
line=$(grep -m1 '^running on' "$log.step")
say "- default device: \`$line\`"
[[ $rc == 0 && $line == "running on cuda:0"* ]]; verdict "the default is the GPU" $?

fi
if want 2; then
say ""
say "## 2. golden checks on CUDA (DiT, PixArt-α vs diffusers)"
run 180 "$tcc" golden --device cuda
rc=$?
say '```'
tee -a "$report" < "$log.step"
say '```'
verdict "golden" $rc

fi
if want 3; then
say ""
say "## 3. the embedded model: CUDA against the CPU"
run 300 "$tcc" calibrate schedules/fora3.sched --device cpu --out "$scratch/cpu.priors.safetensors"
verdict "calibrate on the CPU" $?
run 300 "$tcc" calibrate schedules/fora3.sched --device cuda --out "$scratch/cuda.priors.safetensors"
verdict "calibrate on CUDA" $?
say "- priors fitted on CUDA vs on the CPU: $(python3 tools/cuda/compare.py priors "$scratch/cuda.priors.safetensors" "$scratch/cpu.priors.safetensors" 2>&1)"
for dev in cpu cuda; do
  run 300 "$tcc" sample schedules/fora3.sched --n 100 --device "$dev" \
    --priors "$scratch/cpu.priors.safetensors" --latents "$work/$dev.f32.safetensors"
  verdict "sample --priors on $dev, f32" $?
done
run 300 "$tcc" sample schedules/fora3.sched --n 100 --device cuda --dtype bf16 \
  --priors "$scratch/cpu.priors.safetensors" --latents "$work/cuda.bf16.safetensors"
verdict "sample --priors on cuda, bf16" $?
cmp=$(python3 tools/cuda/compare.py latents "$work/cuda.f32.safetensors" "$work/cpu.f32.safetensors" --max 1e-4 2>&1)
rc=$?
say "- samples, CUDA f32 vs CPU f32 (target <= 1e-4): $cmp"
verdict "CUDA f32 samples match the CPU's" $rc
say "- samples, CUDA bf16 vs CPU f32 (reported): $(python3 tools/cuda/compare.py latents "$work/cuda.bf16.safetensors" "$work/cpu.f32.safetensors" 2>&1)"
for dev in cpu cuda; do
  run_json "$work/eval-$dev.json" 420 "$tcc" eval schedules/fora3.sched --device "$dev" \
    --n 50 --seeds 101 --no-one-shot --no-oracle --plot "$work/eval-$dev.png" --json
  verdict "eval on $dev" $?
done
say '```'
python3 tools/cuda/compare.py eval "$work/eval-cuda.json" "$work/eval-cpu.json" 2>&1 | tee -a "$report"
say '```'

fi
if want 4; then
say ""
say "## 4. speed: tcc bench vs PyTorch eager (random weights, batch 2x8)"
for sched in dit-xl2-fora3 pixart-fora3-tcc; do
  for dt in f32 bf16; do
    run_json "$work/bench-$sched-$dt.json" 240 "$tcc" bench "schedules/$sched.sched" \
      --random-weights 0 --device cuda --dtype "$dt" --batch-size 8 --rounds 3 --json
    verdict "tcc bench $sched $dt" $?
  done
done
if [[ -d .whl ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$work/site" .whl/*.whl >> "$log" 2>&1
  PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}" \
    run_json "$work/torch.jsonl" 300 python3 tools/cuda/torch_bench.py --batch-size 8
  verdict "PyTorch eager (diffusers)" $?
else
  say "- PyTorch eager: skipped, no .whl/ (tools/cuda/build.sh downloads the diffusers wheel)"
fi
say ""
python3 tools/cuda/compare.py speed "$work" 2>&1 | tee -a "$report"
say ""
say "targets: tcc / PyTorch <= 1.2 (bf16, DiT-XL/2); measured / predicted FORA speedup >= 0.9"

fi
if want 5; then
say ""
say "## 5. calibration throughput, DiT-XL/2 FORA preset, random weights, bf16"
sed 's/prior = "procrustes"/prior = "shift"/' schedules/dit-xl2-fora2-tcc.sched > "$work/dit-xl2-fora2-shift.sched"
run 240 "$tcc" calibrate "$work/dit-xl2-fora2-shift.sched" --random-weights 0 --device cuda --dtype bf16 \
  --samples 256 --batch-size 32 --out "$scratch/shift.priors.safetensors"
rc=$?
say "- shift priors, 256 samples, batch 32: $(grep '^wrote' "$log.step")"
verdict "calibrate (walk throughput)" $rc
left=$((budget - (SECONDS - start)))
if (( left > 60 )); then
  run "$left" "$tcc" calibrate schedules/dit-xl2-fora2-tcc.sched --random-weights 0 --device cuda --dtype bf16 \
    --samples 64 --batch-size 32 --out "$scratch/procrustes.priors.safetensors"
  rc=$?
  say "- Procrustes (the preset), 64 samples: $(grep '^wrote' "$log.step" || echo "stopped after ${left}s")"
  verdict "calibrate (Procrustes fitting time)" $rc
else
  say "- Procrustes fitting time: skipped, ${left}s left of the ${budget} s budget"
fi
fi
if want 6; then
say ""
say "## 6. ToCa and first-block cache: CUDA against the CPU (embedded model, f32)"
for s in toca3 fbcache; do
  for dev in cpu cuda; do
    run 300 "$tcc" sample "schedules/$s.sched" --n 100 --device "$dev" --latents "$work/$s-$dev.safetensors"
    verdict "sample $s on $dev" $?
    grep -E 'samples [0-9]+\.\.[0-9]+: computed' "$log.step" | sed 's/^ *//' > "$work/$s-$dev.steps"
  done
  if [[ -s $work/$s-cpu.steps ]]; then
    cmp -s "$work/$s-cpu.steps" "$work/$s-cuda.steps"
    verdict "$s: the same steps computed on both devices ($(wc -l < "$work/$s-cpu.steps") batches)" $?
  fi
  say "- $s samples, CUDA vs CPU (reported): $(python3 tools/cuda/compare.py latents "$work/$s-cuda.safetensors" "$work/$s-cpu.safetensors" 2>&1)"
done

fi
if want 7; then
say ""
say "## 7. ToCa's speed on CUDA: DiT-XL/2, DDIM 50, N = 2, fresh ratio 0.07 (random weights, batch 2x8)"
mkdir -p "$work/toca"
for dt in f32 bf16; do
  run_json "$work/toca/bench-dit-xl2-toca-$dt.json" 240 "$tcc" bench schedules/dit-xl2-toca.sched \
    --random-weights 0 --device cuda --dtype "$dt" --batch-size 8 --rounds 2 --json
  verdict "tcc bench dit-xl2-toca $dt" $?
done
say ""
python3 tools/cuda/compare.py speed "$work/toca" 2>&1 | sed 's/FORA N=3/ToCa/' | tee -a "$report"
fi
