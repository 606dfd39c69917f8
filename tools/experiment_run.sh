# Sourced by the *_experiment.sh scripts: `run NAME [key=value ...]` runs python distill/run.py with the script's
# `common` array of settings and name=NAME, echoing the command and its wall time.
run() {
  local name=$1 t=$SECONDS
  shift
  echo "== $name: python distill/run.py ${common[*]} name=$name $*"
  python distill/run.py "${common[@]}" name="$name" "$@"
  echo "== $name: $((SECONDS - t)) s wall"
}
