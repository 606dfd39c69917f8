#!/usr/bin/env bash
# The measured KD result of the README: the CPU-sized CIFAR-10 recipe, 2 student seeds, cached KD with its CE
# baseline, and online KD with the same budget; one teacher and one cache shared by all runs (teacher.dir).
# Seed 0 is the plain recipe command, all stages from scratch, timed.
#   bash tools/cifar_kd_experiment.sh [path/to/cifar10/train.parquet]
set -euo pipefail
cd "$(dirname "$0")/.."
R=cifar10_resnet20_to_resnet8
D=${1:-../shared/data/cifar10/train.parquet}
T=runs/$R/teacher
start=$SECONDS
python distill/run.py recipe=$R data.path="$D" data.test_split=null
echo "recipe $R, all stages (teacher, cache, student, baseline): $((SECONDS - start)) s wall"
python distill/run.py recipe=$R data.path="$D" data.test_split=null teacher.dir=$T name=$R-s1 student.seed=1
for s in 0 1; do
  python distill/run.py recipe=$R data.path="$D" data.test_split=null teacher.dir=$T name=$R-online-s$s student.seed=$s \
    kd.teacher=online student.baseline=false
done
python tools/kd_table.py --cached runs/$R runs/$R-s1 --online runs/$R-online-s0 runs/$R-online-s1
