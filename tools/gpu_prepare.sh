#!/usr/bin/env bash
# Before tools/gpu_check.sh, on this machine (it needs the package registries, which a GPU machine cannot reach):
# fills .gpu/ (git-ignored; the device run carries it: run(command="bash tools/gpu_check.sh", carry=[".gpu"])) with
#   .gpu/wheels-pyX.Y/   the wheels a bare GPU machine lacks, at the versions installed here: datasets, dill,
#                        multiprocess (datasets' needs), hydra-core, omegaconf, antlr4 (built here: no wheel on PyPI);
#                        EXTRA="name==version ..." adds more (torchcodec, for a machine whose torch it was built for)
#   .gpu/cifar10.parquet the first 21,000 rows of CIFAR-10's training split, for tools/gpu_bench.sh (7 MB: the whole
#                        file, 46 MB, would crowd the 64 MiB a device run may carry)
#   GPU_PY=3.12 bash tools/gpu_prepare.sh [path/to/cifar10/train.parquet]   # GPU_PY: the GPU machine's python3
#   GPU_PY=3.11 bash tools/gpu_prepare.sh                                    # for GPU_CHECK_DRY=1 on this machine
set -euo pipefail
cd "$(dirname "$0")/.."
py=${GPU_PY:-3.12}
wheels=.gpu/wheels-py$py
mkdir -p "$wheels"
version() { python3 -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }
specs=()
for name in datasets dill multiprocess hydra-core omegaconf; do
  v=$(version "$name"); [ -n "$v" ] || { echo "gpu_prepare: $name is not installed here (pip install -e '.[dev]')"; exit 2; }
  specs+=("$name==$v")
done
pip_quiet() { python3 -m pip "$@" 2>&1 | grep -v -e '^WARNING' -e 'is ignored' || true; }
pip_quiet download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$wheels" "${specs[@]}" ${EXTRA:-}
pip_quiet wheel -q --no-deps -w "$wheels" "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
n=$(ls "$wheels"/*.whl | wc -l)
[ "$n" -ge 6 ] || { echo "gpu_prepare: only $n wheels in $wheels (expected 6 or more)"; exit 1; }
src=${1:-../shared/data/cifar10/train.parquet}
if [ -f "$src" ]; then
  python3 -c "
import pyarrow.parquet as pq, sys
pq.write_table(pq.read_table(sys.argv[1]).slice(0, 21000), '.gpu/cifar10.parquet')" "$src"
else
  echo "gpu_prepare: $src not found: tools/gpu_bench.sh will need its data given another way"
fi
du -sh .gpu | sed "s/^/  /"
echo "gpu_prepare: ready (.gpu/ is carried by run(..., carry=[\".gpu\"]))"
