#!/usr/bin/env bash
# The GPU work this project can only do on a lent GPU, prepared as one command that fits one device call
# (at most 10 minutes; a session gets 15 minutes of device time in all, machine start included):
#
#   1. purifier throughput on the GPU: the shipped 32 px prior (fp32, bf16) and the paper's 256x256
#      architecture (552M parameters, random weights: speed does not depend on them), bf16;
#   2. the five CIFAR-10 classifiers (BadNet, Blended, PhysicalBA, WaNet, clean) and the baseline defenses;
#   3. a wider CIFAR-10 prior (64 channels, 6.9M parameters, ≤ 14 MB in fp16: within the 20 MB the repo
#      ships), trained with bf16 autocast for whatever time is left before the deadline minus a reserve;
#   4. the full CIFAR-10 evaluation with the new prior at k = 4 and k = 2, and with the shipped prior at k = 4,
#      all on the same classifiers and test subset, so the priors compare like for like.
#
# Each result is packed into $OUT as soon as it exists (a run cut short still brings back what it finished):
# bench.md, baselines.tgz, prior.pt, prior.train_log.jsonl, eval-k4.tgz, eval-k2.tgz, eval-k4-shipped.tgz, session.log.
#
# The device machine has no ../shared: copy CIFAR-10 into an ignored folder of the repo and carry it:
#     echo /.carry/ >> .git/info/exclude
#     mkdir -p .carry/shared/data/cifar10 && cp ../shared/data/cifar10/*.tar.gz .carry/shared/data/cifar10/
#     device run, carry [".carry"], timeout_s 590:  ZIP_SHARED_DIR=.carry/shared bash bench/device_session.sh
# (the device tool sets OUT; BUDGET_S=540 keeps the script inside that timeout, machine start not included)
# A smoke test of the whole script on a CPU (tiny settings, a few minutes):
#     SMOKE=1 OUT=/tmp/device-smoke bash bench/device_session.sh
# The device image has PyTorch, numpy, pyarrow, pillow, fsspec and tqdm but no Ray and no s3fs, and nothing installs
# there: nothing this script runs may need them (tests/test_device_image_imports.py). On 2026-12-05 the smoke test
# passed with Ray made unimportable (a folder holding ray/__init__.py that raises ImportError, first on PYTHONPATH):
# 247 s on the 2-core CPU machine, every file above packed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
OUT=${OUT:?set OUT to the folder that receives the results}
BUDGET_S=${BUDGET_S:-540}       # this script's own deadline, inside the device call's timeout
RESERVE_S=${RESERVE_S:-150}     # kept after prior training for the three ZIP evaluations
WORK=${WORK:-$(mktemp -d)}
export PYTHONUNBUFFERED=1 ZIP_CACHE_DIR=${ZIP_CACHE_DIR:-$WORK/cache}
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/session.log") 2>&1

if [[ ${SMOKE:-0} == 1 ]]; then
  DEVICE=cpu; ATTACKS=badnet,none; SUBSET=20; EPOCHS=1; STEPS=2; BUDGET_S=${SMOKE_BUDGET_S:-900}
  PRIOR=(--channels 32 --channel-mult 1,2 --res-blocks 1 --attention "" --batch 8 --max-steps 3 --log-every 1)
  BENCH_PRESET=(--preset cifar10_prior_small --sizes 32 --devices cpu --images 16 --steps 2 --batch 8,16)
  BENCH_SHIPPED=(--sizes 32 --devices cpu --images 16 --steps 2)
else
  DEVICE=cuda; ATTACKS=badnet,blended,physicalba,wanet,none; SUBSET=500; EPOCHS=10; STEPS=20
  PRIOR=(--channels 64 --channel-mult 1,2,2 --res-blocks 2 --attention 16 --batch 256 --lr 3e-4
         --warmup-steps 500 --precision bf16 --log-every 200 --save-every-min 1)
  # 2048 images: 32 canvases of 256 px, timed in batches of 4 (the default) and 32 (with the peak GPU memory of each)
  BENCH_PRESET=(--preset 256x256_diffusion_uncond --sizes 256 --devices cuda --precision bf16 --images 2048 --batch 4,32)
  BENCH_SHIPPED=(--sizes 32 --devices cuda --images 4096)
fi
DEADLINE=$((SECONDS + BUDGET_S))
SHIPPED=pipeline/assets/cifar10_prior.pt
EVAL=("$PYTHON" jobs/evaluate.py --datasets cifar10 --attacks "$ATTACKS" --subset "$SUBSET" --epochs "$EPOCHS"
      --steps "$STEPS" --device "$DEVICE" --cache-dir "$ZIP_CACHE_DIR")
stamp() { echo "== $(date -u +%H:%M:%S) (+${SECONDS}s) $*"; }
failed() { stamp "FAILED: $* (going on with the rest)"; }
pack() { tar czf "$OUT/$1.tgz" -C "$WORK" "$1"; stamp "packed $OUT/$1.tgz"; }

stamp "start: device $DEVICE, budget ${BUDGET_S}s, work folder $WORK"
[[ $DEVICE == cuda ]] && { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true; }
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

stamp "1. purifier throughput"
# Throughput is a side result: a failure here must not cost the evaluation.
{
  "$PYTHON" bench/purifier_bench.py --checkpoint "$SHIPPED" "${BENCH_SHIPPED[@]}" || failed "shipped prior, fp32"
  # the job's noise: one generator per canvas, so a batch of 256 canvases draws 256 times per step
  "$PYTHON" bench/purifier_bench.py --checkpoint "$SHIPPED" "${BENCH_SHIPPED[@]}" --per-canvas-seeds \
    || failed "shipped prior, fp32, per-canvas seeds"
  if [[ $DEVICE == cuda ]]; then
    "$PYTHON" bench/purifier_bench.py --checkpoint "$SHIPPED" "${BENCH_SHIPPED[@]}" --precision bf16 \
      || failed "shipped prior, bf16"
  fi
  "$PYTHON" bench/purifier_bench.py "${BENCH_PRESET[@]}" || failed "preset architecture"
} | tee "$OUT/bench.md"

stamp "2. classifiers and baselines (trains and caches the classifiers)"
# A failure here must not cost the prior training (step 4 then trains the classifiers it needs itself).
{ "${EVAL[@]}" --defenses none,shrinkpad,naive --out "$WORK/baselines" && pack baselines; } || failed "classifiers and baselines"

minutes=$(( (DEADLINE - SECONDS - RESERVE_S) / 60 ))
(( minutes >= 1 )) || minutes=1
stamp "3. prior training for ${minutes} min"
"$PYTHON" jobs/train_prior.py --device "$DEVICE" --minutes "$minutes" --out "$WORK/prior" --export "$OUT/prior.pt" \
  "${PRIOR[@]}" || failed "prior training"
cp "$WORK/prior/train_log.jsonl" "$OUT/prior.train_log.jsonl" || true

stamp "4. evaluation with the new prior (k = 4, k = 2) and the shipped one (k = 4)"
if [[ -f $OUT/prior.pt ]]; then
  { "${EVAL[@]}" --checkpoint "$OUT/prior.pt" --pool 4 --out "$WORK/eval-k4" && pack eval-k4; } || failed "eval k=4"
  { "${EVAL[@]}" --checkpoint "$OUT/prior.pt" --pool 2 --out "$WORK/eval-k2" && pack eval-k2; } || failed "eval k=2"
fi
{ "${EVAL[@]}" --checkpoint "$SHIPPED" --pool 4 --defenses zip,zip-authors --out "$WORK/eval-k4-shipped" \
  && pack eval-k4-shipped; } || failed "eval k=4, shipped prior"
stamp "done"
exec >&- 2>&-
wait  # for the tee into session.log to write its last lines
