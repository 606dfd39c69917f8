# Sourced by the *_experiment.sh scripts: `run NAME [key=value ...]` runs python distill/run.py with the script's
# `common` array of settings and name=NAME, echoing the command and its wall time; `split_test` writes the splits.
# `split_test SRC DIR TEST` writes SRC's last TEST images as DIR/test.parquet and the rest as DIR/train.parquet,
# once (each written beside, then renamed): a held-out test split outside the repo.
split_test() {
  mkdir -p "$2"
  [ -f "$2/test.parquet" ] && return
  python - "$1" "$2" "$3" <<'PY'
import os, sys
import pyarrow.parquet as pq
table, out, test = pq.read_table(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for name, part in (("train", table.slice(0, table.num_rows - test)), ("test", table.slice(table.num_rows - test))):
    pq.write_table(part, f"{out}/{name}.parquet.tmp")
os.replace(f"{out}/train.parquet.tmp", f"{out}/train.parquet")
os.replace(f"{out}/test.parquet.tmp", f"{out}/test.parquet")
PY
}

run() {
  local name=$1 t=$SECONDS
  shift
  echo "== $name: python distill/run.py ${common[*]} name=$name $*"
  python distill/run.py "${common[@]}" name="$name" "$@"
  echo "== $name: $((SECONDS - t)) s wall"
}
