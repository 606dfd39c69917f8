#!/usr/bin/env bash
# Feature and token distillation, measured (issue 26). The cifar10_resnet20_to_resnet8 setting (15 epochs each, T 4,
# 3 cached views), sized down by images (IMAGES training images of the recipe's 20,000): one resnet20 teacher and one
# cache with features (cache.features=true: the logit-only students read the same cache's records); then for each
# seed in SEEDS, resnet8 students: KD (with its CE baseline), hard-label (kd.loss=hard, DeiT's kd.alpha 0.5),
# KD + feature (kd.feature_weight 1, timm's default, MSE on the pooled features) from the cache; KD + feature online
# for the first seed only (it should equal the cached run within seed noise); and the recipe
# cifar10_resnet20_to_deit_token's distilled ViT (32 px, patch 4, 6 blocks of width 96) with soft token
# distillation (kd.loss=kd on the distillation head; its CE baseline is the same ViT trained with CE) and hard.
# Scored on the validation carve and on a held-out test split (the shared file's last TEST images, written once
# beside the runs; the repo holds neither). Every run keeps its folder under RUNS; a rerun reuses every finished
# stage, so the script can be rerun to resume or to redraw the table (RUNS/feature_token.md).
#   bash tools/feature_token_experiment.sh [path/to/cifar10/train.parquet]   # about 100 min on 2 CPU cores
# Settings (environment): IMAGES=10000 TEST=10000 SEEDS="0 1" RUNS=runs/feature_token; EXTRA="key=value ..." is added
# to every run (a smoke run: EXTRA="teacher.epochs=1 student.epochs=1 data.val_size=200" IMAGES=500 TEST=500).
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-../shared/data/cifar10/train.parquet}
IMAGES=${IMAGES:-10000}
TEST=${TEST:-10000}
SEEDS=${SEEDS:-0 1}
RUNS=${RUNS:-runs/feature_token}
source tools/experiment_run.sh  # run NAME [key=value ...]: one run folder, timed; split_test SRC DIR TEST
split_test "$D" "$RUNS/data" "$TEST"  # DIR/train.parquet and DIR/test.parquet (its last TEST images), once
common=(data.path="$RUNS/data/train.parquet" data.train_size="$IMAGES" run_root="$RUNS" cache.root="$RUNS/cache"
        teacher.dir="$RUNS/teacher" cache.features=true stage=report ${EXTRA:-})
resnet=(recipe=cifar10_resnet20_to_resnet8)
vit=(recipe=cifar10_resnet20_to_deit_token)
feature=(kd.feature_weight=1 kd.feature_loss=mse)
first=${SEEDS%% *}
start=$SECONDS
for s in $SEEDS; do  # seed by seed, so that a stopped experiment already holds whole seeds
  run "kd-s$s" "${resnet[@]}" student.seed="$s" student.baseline=true  # the first also trains the teacher, labels the cache
  run "hard-s$s" "${resnet[@]}" kd.loss=hard kd.alpha=0.5 student.seed="$s" student.baseline=false
  run "kd-feature-s$s" "${resnet[@]}" "${feature[@]}" student.seed="$s" student.baseline=false
  if [ "$s" = "$first" ]; then
    run "kd-feature-online-s$s" "${resnet[@]}" "${feature[@]}" kd.teacher=online student.seed="$s" student.baseline=false
  fi
  run "vit-soft-s$s" "${vit[@]}" kd.token=soft kd.loss=kd student.seed="$s" student.baseline=true
  run "vit-hard-s$s" "${vit[@]}" kd.token=hard kd.loss=hard student.seed="$s" student.baseline=false
done
echo "feature/token experiment: $((SECONDS - start)) s wall"
python tools/feature_token_table.py "$RUNS" --seeds $SEEDS | tee "$RUNS/feature_token.md"
