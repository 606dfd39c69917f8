#!/usr/bin/env bash
# GPU benchmark (under 8 minutes on one H100-class card): resnet50 -> resnet18 at 224 px on synthetic ImageNet-shaped
# data (random JPEGs, 1000 classes): teacher inference vs cache generation, and student training images/s for
# CE-only, cached KD, our online KD and timm's LogitDistillationTask, plus the synthetic 1.28M-image cache's memory.
#   bash tools/gpu_bench.sh [extra tools/bench.py arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python tools/bench.py --synthetic "${IMAGES:-6000}" --image-size 224 --teacher resnet50 --student resnet18 \
  --batch 256 --views 4 --workers "${WORKERS:-12}" --val 500 --json "${OUT:-gpu_bench.json}" "$@"
