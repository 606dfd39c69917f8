#!/usr/bin/env bash
# How many cached views keep online KD's accuracy (issue 12): one resnet20 teacher, trained longer than the
# students so that it clearly beats their CE baseline, then resnet8 students for EPOCHS epochs each: cached KD with
# V views for each V in VIEWS (each view replayed EPOCHS / V times), online KD (teacher live every step) and the CE
# baseline, for each seed in SEEDS. Every run keeps its folder under RUNS (the models are the evidence); a rerun
# reuses every finished stage and resumes an interrupted one, so the whole script can be rerun to resume or to
# redraw the table. It ends with the table (RUNS/views.md) and the plot (RUNS/views.png).
#   bash tools/views_experiment.sh [path/to/cifar10/train.parquet]     # about two hours on 2 CPU cores
# Settings (environment): IMAGES=16000 EPOCHS=40 TEACHER_EPOCHS=60 VIEWS="2 8 32" SEEDS="0 1" RUNS=runs/views
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-../shared/data/cifar10/train.parquet}
IMAGES=${IMAGES:-16000}
EPOCHS=${EPOCHS:-40}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-60}
VIEWS=${VIEWS:-2 8 32}
SEEDS=${SEEDS:-0 1}
RUNS=${RUNS:-runs/views}
common=(recipe=cifar10_resnet20_to_resnet8 data.path="$D" data.test_split=null data.train_size="$IMAGES" run_root="$RUNS"
        teacher.dir="$RUNS/teacher" teacher.epochs="$TEACHER_EPOCHS" student.epochs="$EPOCHS"
        cache.root="$RUNS/cache")
start=$SECONDS
source tools/experiment_run.sh  # run NAME [key=value ...]: one run folder, timed
for s in $SEEDS; do  # seed by seed, so that a stopped experiment already holds whole seeds
  for v in $VIEWS; do
    run "v$v-s$s" cache.views="$v" student.seed="$s" student.baseline=false
  done
  run "online-s$s" kd.teacher=online student.seed="$s" student.baseline=true
done
echo "views experiment: $((SECONDS - start)) s wall"
python tools/views_table.py "$RUNS" --views $VIEWS --seeds $SEEDS --epochs "$EPOCHS"
