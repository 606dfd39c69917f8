#!/usr/bin/env bash
# GPU benchmark of the input pipeline (issue: the cache's saving must reach the user), in two runs of tools/bench.py
# with views rendered on the device (data.renderer=device), one round each, no memory check:
#   1. photographs: PHOTOS CIFAR-10 images resized to 500 x 375 and saved as JPEG quality 90 (they decode like
#      photographs; random noise decodes far slower), resnet50 -> resnet18 at 224 px, batch 256, bf16: the student
#      step on fixed tensors, CE-only training, cached KD, timm's LogitDistillationTask, the ideal speed-up, raw
#      teacher inference and cache generation;
#   2. CIFAR-sized data kept on the device: resnet56 -> resnet20 at 32 px, batch 256: CE-only training against the
#      fixed-tensor step; CIFAR_EXTRA adds tools/bench.py arguments to this run only (tools/gpu_check.sh: the flag
#      that trains CE-only and cached KD compiled beside eager).
# Targets (README): CE-only >= 0.9 x the student step; cached KD >= 0.95 x CE-only and >= 0.9 of the ideal over
# timm; cache generation >= 0.9 x raw inference; CIFAR resnet20 CE-only >= 0.9 x its step. Written to fit 6 minutes
# of an H100/H200, not yet run on one (estimate from the CPU phases and the earlier H100 run's rates).
#   bash tools/gpu_bench.sh path/to/cifar10/train.parquet
# Environment: JSON (the output files' prefix), and each size and model, for a dry run on a CPU (tools/gpu_check.sh):
# PHOTOS SIZE TEACHER STUDENT BATCH VIEWS EPOCHS VAL DECODE_MB; CIFAR_IMAGES CIFAR_TEACHER CIFAR_STUDENT CIFAR_EXTRA.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
D=${1:-../shared/data/cifar10/train.parquet}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
start=$(date +%s)
quiet() { "$@" 2>&1 | tr '\r' '\n' | grep -v -e '%|' -e '^ *$'; }
common=(--batch "${BATCH:-256}" --views "${VIEWS:-4}" --epochs "${EPOCHS:-2}" --rounds 1 --val "${VAL:-500}"
        --renderer device --no-memory)
quiet python3 tools/bench.py --data "$D" --photos "${PHOTOS:-8000}" --image-size "${SIZE:-224}" \
  --teacher "${TEACHER:-resnet50}" --student "${STUDENT:-resnet18}" --decode-mb "${DECODE_MB:-8192}" "${common[@]}" \
  --json "${JSON:-gpu_bench}_photos.json"
echo "gpu_bench: photographs done at $(( $(date +%s) - start )) s"
quiet python3 tools/bench.py --data "$D" --images "${CIFAR_IMAGES:-20000}" --image-size 32 \
  --teacher "${CIFAR_TEACHER:-resnet56}" --student "${CIFAR_STUDENT:-resnet20}" "${common[@]}" ${CIFAR_EXTRA:-} \
  --json "${JSON:-gpu_bench}_cifar.json"
echo "gpu_bench: done in $(( $(date +%s) - start )) s"
