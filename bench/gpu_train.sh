#!/usr/bin/env bash
# Training throughput on one GPU (written for an H100/H200): clipkit vs open_clip_train, samples/s and
# model FLOPs utilisation (MFU) against 989 TFLOP/s dense bf16, with synthetic inputs.
#   1. the GPU tests of the training loop (bf16 and fp16 on CUDA)
#   2. ViT-B-32 at 224 px, bf16, batch $BATCH: clipkit (--data noise) vs open_clip (--dataset-type synthetic)
#   3. the tiny default (clipkit-tiny, 48 px), bf16, batch 256: the same pair
#   4. (COMPILE=1, the default) ViT-B-32 with clipkit --compile (first interval = compilation, dropped)
# About 4-6 minutes in all; every step has its own time limit. Results: $OUT/results.jsonl + logs.
#
#   bash bench/gpu_train.sh                     # from the repo root; PYTHON=python3 by default
#   PYTHON=.venv/bin/python OUT=/tmp/gpu BATCH=512 COMPILE=0 bash bench/gpu_train.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-bench/out/gpu}
BATCH=${BATCH:-256}
WORKERS=${WORKERS:-12}
COMPILE=${COMPILE:-1}
QUICK=${QUICK:-0}        # 1: fewer steps, no tests, no compile (about 3 minutes)
if [ "$QUICK" = 1 ]; then COMPILE=0; B32=(40 10); TINY=(100 25); else B32=(60 20); TINY=(150 50); fi
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 CLIPKIT_OFFLINE=1 HF_HUB_OFFLINE=1

step() { echo; echo "=== $* ($(date +%T))"; }
fail=0

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
$PY -c "import torch, open_clip; assert torch.cuda.is_available(), 'no CUDA device'; \
print('torch', torch.__version__, 'open_clip', open_clip.__version__, torch.cuda.get_device_name())" || exit 1

if [ "$QUICK" != 1 ]; then
  step "GPU tests of the training loop"
  timeout 120 $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_train.py 2>&1 | tail -3 || fail=1
fi

bench() {  # model batch steps log_every [extra args]
  local model=$1 batch=$2 steps=$3 every=$4; shift 4
  step "$model batch $batch bf16 $* "
  timeout 240 $PY bench/train_bench.py gpu --model "$model" --batch-size "$batch" --precision bf16 \
    --workers "$WORKERS" --steps "$steps" --log-every "$every" --skip "$every" --repeats 1 --out "$OUT" "$@" \
    || fail=1
}
bench ViT-B-32 "$BATCH" "${B32[@]}"
bench clipkit-tiny 256 "${TINY[@]}"
if [ "$COMPILE" = 1 ]; then
  bench ViT-B-32 "$BATCH" 80 20 --compile --trainers clipkit
fi

step "summary ($OUT/results.jsonl)"
cat "$OUT/results.jsonl"
exit $fail
