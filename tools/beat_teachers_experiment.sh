#!/usr/bin/env bash
# Can a resnet8 student clearly beat every resnet20 teacher it learned from, and close on their ensemble (issue 44)?
# The cifar10_resnet20_to_resnet8 setting (the recipe's 20,000 training images, 15 epochs each, T 4): three resnet20
# teachers (seeds 0, 1, 2) and their 3-view caches, made once; resnet8 students for each seed in SEEDS, scored on the
# validation carve and on the held-out test split (the shared file's last TEST images, never trained on). Rows:
#   dist-s0          DIST from teacher s0 alone (the control: how much of the rest is the ensemble's)
#   dist-ens         DIST from the ensemble's mean distribution (kd.ensemble=mean_probs)
#   dist-ens-logits  the same from the mean of the logits (kd.ensemble=mean_logits)
#   kd-ens           KD from the ensemble
#   dist-ens-v15     DIST from the ensemble with 15 cached views (one use per view). "Trained longer" is capped by
#                    the budget (the student's images x epochs at most one teacher's: 20,000 x 15), so 15 epochs stay
#   dist-ens-mix     DIST from the ensemble on a mixed-view cache (cache.mix: cutmix), the student replaying the
#                    teachers' own mixed views
# then each lever as one change to the best row so far (by mean validation top-1; the test split chooses nothing):
#   .t2 (kd.temperature=2), .bg1 (DIST's ImageNet beta = gamma = 1). Logit standardization does not apply to DIST.
# Every run keeps its folder under RUNS and a rerun reuses every finished stage: rerun to resume or to redraw the
# table (RUNS/beat_teachers.md, written by tools/beat_teachers_table.py from the runs' summary.json files).
#   bash tools/beat_teachers_experiment.sh [path/to/cifar10/train.parquet]   # about 2.5 hours alone on 2 CPU cores
# Settings (environment): IMAGES=20000 TEST=10000 SEEDS="0 1 2" RUNS=runs/beat_teachers; EXTRA="key=value ..." is
# added to every run (a smoke run: EXTRA="teacher.epochs=1 student.epochs=1 data.val_size=200" IMAGES=500 TEST=500).
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-../shared/data/cifar10/train.parquet}
IMAGES=${IMAGES:-20000}
TEST=${TEST:-10000}
SEEDS=${SEEDS:-0 1 2}
RUNS=${RUNS:-runs/beat_teachers}
source tools/experiment_run.sh  # run NAME [key=value ...]: one run folder, timed; split_test SRC DIR TEST
split_test "$D" "$RUNS/data" "$TEST"
common=(recipe=cifar10_resnet20_to_resnet8 data.path="$RUNS/data/train.parquet" data.train_size="$IMAGES"
        run_root="$RUNS" cache.root="$RUNS/cache" student.baseline=false stage=report ${EXTRA:-})
teacher() { echo "{name: s$1, seed: $1, dir: '$RUNS/teachers/s$1'}"; }
all="teachers=[$(teacher 0), $(teacher 1), $(teacher 2)]"
one="teachers=[$(teacher 0)]"
declare -A ROW=(  # each row: its teachers (s0: teacher s0 alone; all: the three), then its settings
  [dist-s0]="s0 kd.loss=dist"
  [dist-ens]="all kd.loss=dist kd.ensemble=mean_probs"
  [dist-ens-logits]="all kd.loss=dist kd.ensemble=mean_logits"
  [kd-ens]="all kd.loss=kd"
  [dist-ens-v15]="all kd.loss=dist cache.views=15"
  [dist-ens-mix]="all kd.loss=dist cache.mix.cutmix_alpha=1.0 cache.mix.prob=0.5"
)
table() { python tools/beat_teachers_table.py "$RUNS" --seeds $SEEDS "$@"; }
row() {  # row NAME "TEACHERS SETTINGS...": the row's run for every seed, listed once in RUNS/rows.tsv
  grep -q "^$1	" "$RUNS/rows.tsv" 2>/dev/null || printf '%s\t%s\n' "$1" "$2" >> "$RUNS/rows.tsv"
  local s words
  read -ra words <<< "$2"
  local teachers=$all
  [ "${words[0]}" = s0 ] && teachers=$one
  for s in $SEEDS; do run "$1-s$s" "$teachers" "${words[@]:1}" student.seed="$s"; done
}
start=$SECONDS
run teachers "$all" stage=cache  # the three teachers and their caches, once; the report scores them and the ensemble
for name in dist-s0 dist-ens dist-ens-logits kd-ens dist-ens-v15 dist-ens-mix; do row "$name" "${ROW[$name]}"; done
for lever in "t2:kd.temperature=2" "bg1:kd.dist.beta=1 kd.dist.gamma=1"; do
  tag=${lever%%:*}  # a rerun resumes the lever's row as first chosen (RUNS/rows.tsv), never a lever on a lever
  chosen=$(awk -F'\t' -v t=".$tag" 'substr($1, length($1) - length(t) + 1) == t' "$RUNS/rows.tsv" | head -1)
  if [ -n "$chosen" ]; then row "${chosen%%	*}" "${chosen#*	}"; continue; fi
  best=$(table --best)  # the best row so far by mean validation top-1, and its settings
  row "${best%%	*}.$tag" "${best#*	} ${lever#*:}"
done
echo "beat-teachers experiment: $((SECONDS - start)) s wall"
table | tee "$RUNS/beat_teachers.md"
