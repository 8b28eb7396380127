#!/usr/bin/env bash
# The GPU checks and benchmarks, as one run on a machine with CUDA (DVC not needed there):
#   the CUDA tests, benchmarks/train_step.py on the GPU, ResNet-50's training step in bfloat16, and every
#   preset in float32 and bfloat16.
# Preset params are read from .scratch/presets (write them first, where DVC is installed:
#   python benchmarks/presets.py --write-params .scratch/presets).
# Logs go to $OUT (default .scratch/cuda).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-.scratch/cuda}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PY:-python3}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } 2>&1 | tee "$OUT/gpu.txt"
$PY -m pytest -q -p no:cacheprovider tests/test_training.py tests/test_models.py 2>&1 | tee "$OUT/tests.txt"
for fast in "" --fast-cudnn; do  # ResNet-50 (imagenet-resnet50): bfloat16, channels-last, deterministic or not
  $PY benchmarks/resnet50.py --device cuda --precision bfloat16 --batch 256 --image-size 224 --steps 30 --warmup 5 \
    $fast 2>&1 | tee -a "$OUT/resnet50.txt"
done
$PY benchmarks/train_step.py --device cuda --iterations "${ITERATIONS:-3000}" 2>&1 | tee "$OUT/train_step.txt"
for precision in float32 tf32 bfloat16; do
  $PY benchmarks/presets.py --device cuda --params-dir .scratch/presets --precision $precision \
    --iterations "${PRESET_ITERATIONS:-200}" 2>&1 | tee "$OUT/presets-$precision.txt"
done
