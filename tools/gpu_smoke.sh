#!/usr/bin/env bash
# GPU smoke test (not part of CI): the tiny recipe end to end with CUDA and bf16 autocast: teacher, cache, cache
# inspection, then the demo. Needs torch with CUDA, timm, accelerate, datasets, hydra-core. Under 5 minutes.
#   bash tools/gpu_smoke.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/distill_gpu_smoke}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('device:', torch.cuda.get_device_name(), '| torch', torch.__version__, '| bf16:', torch.cuda.is_bf16_supported())"
PYTHONPATH="tests:${PYTHONPATH:-}" python3 -c "
from conftest import tiny_dataset
tiny_dataset(600, size=32).to_parquet('$out/tiny.parquet')"
start=$(date +%s)
python3 distill/run.py data.path="$out/tiny.parquet" data.source=auto data.val_size=100 data.image_size=32 \
  data.mean=[0.5,0.5,0.5] data.std=[0.25,0.25,0.25] data.num_workers=4 run_root="$out/runs" name=tiny \
  precision=bf16 teacher.model=resnet20 teacher.epochs=3 teacher.batch_size=64 cache.root="$out/cache" \
  cache.views=4 cache.topk=2 cache.shard_size=128 stage=cache 2>&1 | tr '\r' '\n' | grep -v -e '%|' -e '^ *$'
python3 tools/inspect_cache.py "$out"/cache/* --verify
python3 distill/run.py run_root="$out/runs" cache.root="$out/cache" precision=auto 2>&1 | tr '\r' '\n' | grep -v -e '%|' -e '^ *$'
echo "gpu_smoke: ok in $(( $(date +%s) - start )) s"
