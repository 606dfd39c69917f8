#!/usr/bin/env bash
# The logit-distillation methods from one cache: the setting of cifar10_resnet20_to_resnet8 (CIFAR-10, 20,000
# training images, resnet20 teacher -> resnet8 students, 15 epochs, 3 cached views of all 10 logits), one teacher
# and one cache shared by every run (teacher.dir), students trained with each method for two seeds, the CE
# baseline and online KD beside them. Every run keeps its folder under $RUNS; a rerun reuses what is finished.
#   bash tools/kd_methods_experiment.sh [path/to/cifar10/train.parquet]
# Method settings: the papers' CIFAR defaults, except DKD's warm-up, scaled from 20 of 240 epochs to 1 of 15.
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-../shared/data/cifar10/train.parquet}
RUNS=${RUNS:-runs/kd_methods}
SEEDS=${SEEDS:-"0 1"}
R=cifar10_resnet20_to_resnet8
T=$RUNS/teacher
declare -A METHOD=(
  [kd]="kd.loss=kd"
  [dkd]="kd.loss=dkd kd.dkd.warmup=1"
  [dist]="kd.loss=dist"
  [kd_ls]="kd.loss=kd kd.logit_standardization=true kd.temperature=2 kd.alpha=9 kd.ce_weight=0.1"
  [dkd_ls]="kd.loss=dkd kd.dkd.warmup=1 kd.logit_standardization=true kd.temperature=2"
)
run() {  # name, then overrides
  local name=$1; shift
  local start=$SECONDS
  python distill/run.py recipe=$R data.path="$D" data.test_split=null run_root="$RUNS" cache.root="$RUNS/cache" \
    teacher.dir="$T" name="$name" "$@"
  echo "$name: $((SECONDS - start)) s wall" | tee -a "$RUNS/wall.txt"
}
mkdir -p "$RUNS"
start=$SECONDS
for s in $SEEDS; do
  run kd-s$s student.seed=$s ${METHOD[kd]} student.baseline=true   # the first also trains the teacher and the cache
  for m in dkd dist kd_ls dkd_ls; do
    run $m-s$s student.seed=$s ${METHOD[$m]} student.baseline=false
  done
  run online-s$s student.seed=$s kd.teacher=online student.baseline=false
done
echo "all runs: $((SECONDS - start)) s wall" | tee -a "$RUNS/wall.txt"
python tools/kd_methods_table.py "$RUNS" --seeds $SEEDS | tee "$RUNS/table.md"
