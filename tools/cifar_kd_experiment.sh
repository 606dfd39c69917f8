#!/usr/bin/env bash
# The measured KD result of the README: CPU-sized CIFAR-10 recipe, 2 student seeds, cached KD with its CE baseline,
# and online KD with the same budget; one teacher and one cache shared by all runs (teacher.dir).
#   bash tools/cifar_kd_experiment.sh [path/to/cifar10/train.parquet]
set -euo pipefail
cd "$(dirname "$0")/.."
R=cifar10_resnet20_to_resnet8
D=${1:-../shared/data/cifar10/train.parquet}
T=runs/$R/teacher
python distill/run.py recipe=$R data.path="$D" stage=teacher
for s in 0 1; do
  python distill/run.py recipe=$R data.path="$D" teacher.dir=$T name=$R-s$s student.seed=$s
  python distill/run.py recipe=$R data.path="$D" teacher.dir=$T name=$R-online-s$s student.seed=$s \
    kd.teacher=online student.baseline=false
done
python tools/kd_table.py --cached runs/$R-s0 runs/$R-s1 --online runs/$R-online-s0 runs/$R-online-s1
