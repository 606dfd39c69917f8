#!/usr/bin/env bash
# GPU benchmark: resnet50 -> resnet18 at 224 px on synthetic data of ImageNet's shape (18,000 random JPEGs, 1000
# classes, 17,500 trained on, so that loader worker start-up is a small part of an epoch): teacher inference vs cache
# generation, and student training images/s for CE-only, cached KD, our online KD and timm's LogitDistillationTask
# (2 epochs each, the second timed; 3 rounds, medians), plus the synthetic 1.28M-image cache's memory. About
# 5 minutes on one H100 (estimated from the phase times of a 1-round run). Needs torch with CUDA, timm, accelerate,
# datasets, hydra-core.
#   bash tools/gpu_bench.sh [extra tools/bench.py arguments]     # IMAGES, WORKERS, JSON override the defaults
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
start=$(date +%s)
python3 tools/bench.py --synthetic "${IMAGES:-18000}" --image-size 224 --teacher resnet50 --student resnet18 \
  --batch 256 --views 4 --epochs 2 --workers "${WORKERS:-12}" --val 500 --json "${JSON:-gpu_bench.json}" "$@" \
  2>&1 | tr '\r' '\n' | grep -v -e '%|' -e '^ *$'
echo "gpu_bench: done in $(( $(date +%s) - start )) s"
