#!/usr/bin/env bash
# Does an ensemble of cached teachers teach better than its best member (issue 25)? The cifar10_resnet20_to_resnet8
# setting (15 epochs each, T 4), sized down by images (IMAGES training images of the recipe's 20,000): three
# resnet20 teachers that differ only in their seed (so the ensemble's gain is the ensemble's, not an architecture's,
# and each costs what the recipe's teacher costs), each labelling its own 3-view cache of the same views; then resnet8
# students for each seed in SEEDS: KD from the best single teacher (by validation top-1), KD from the ensemble
# (mean of the three distributions at T), DIST from the ensemble, and the CE baseline. Scored on the validation carve
# and on a held-out test split: the shared file's last TEST images, written once beside the runs as test.parquet
# (the first 50,000 - TEST as train.parquet; the data identity is their bytes, the repo holds neither). Every run
# keeps its folder under RUNS; a rerun reuses every finished stage, so the script can be rerun to resume or to
# redraw the table (RUNS/ensemble.md).
#   bash tools/ensemble_experiment.sh [path/to/cifar10/train.parquet]     # about an hour on 2 CPU cores
# Settings (environment): IMAGES=10000 TEST=10000 SEEDS="0 1" RUNS=runs/ensemble; EXTRA="key=value ..." is added
# to every run (a smoke run: EXTRA="teacher.epochs=1 student.epochs=1 data.val_size=200" IMAGES=500 TEST=500).
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-../shared/data/cifar10/train.parquet}
IMAGES=${IMAGES:-10000}
TEST=${TEST:-10000}
SEEDS=${SEEDS:-0 1}
RUNS=${RUNS:-runs/ensemble}
source tools/experiment_run.sh  # run NAME [key=value ...]: one run folder, timed; split_test SRC DIR TEST
split_test "$D" "$RUNS/data" "$TEST"  # DIR/train.parquet and DIR/test.parquet (its last TEST images), once
common=(recipe=cifar10_resnet20_to_resnet8 data.path="$RUNS/data/train.parquet" data.train_size="$IMAGES"
        run_root="$RUNS" cache.root="$RUNS/cache" stage=report ${EXTRA:-})
teacher() { echo "{name: s$1, seed: $1, dir: '$RUNS/teachers/s$1'}"; }
all="teachers=[$(teacher 0), $(teacher 1), $(teacher 2)]"
start=$SECONDS
run teachers "$all" stage=cache  # the three teachers and their caches, once; the report scores them and the ensemble
best=$(python -c "import json, sys; m = json.load(open('$RUNS/teachers/summary.json'))['models']; \
print(max((r['top1'], n) for n, r in m.items() if n.startswith('teacher-'))[1].split('-')[1][1:])")
echo "best single teacher by validation top-1: s$best"
for s in $SEEDS; do  # seed by seed, so that a stopped experiment already holds whole seeds
  run "kd-best-s$s" "teachers=[$(teacher "$best")]" student.seed="$s" student.baseline=true
  run "kd-ensemble-s$s" "$all" student.seed="$s" student.baseline=false
  run "dist-ensemble-s$s" "$all" kd.loss=dist student.seed="$s" student.baseline=false
done
echo "ensemble experiment: $((SECONDS - start)) s wall"
python tools/ensemble_table.py "$RUNS" --seeds $SEEDS | tee "$RUNS/ensemble.md"
