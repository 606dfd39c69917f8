#!/usr/bin/env bash
# The GPU check, in one call on a bare GPU machine, every figure in one JSON file ($OUT/gpu_check.json):
#   1. install  the wheels of .gpu/wheels-pyX.Y (tools/gpu_prepare.sh, run here first) into a private folder;
#   2. card     nvidia-smi, torch and its CUDA, the JPEG decoders that load (distill/data/jpeg.py);
#   3. tests    pytest -m cuda (tests/test_cuda.py: renderer, decoder, bf16 step, the whole demo), their figures;
#   4. decode   tools/bench_decode.py: each JPEG decoder on the device against PIL on one core;
#   5. bench    tools/gpu_bench.sh on .gpu/cifar10.parquet: the input pipeline's targets (README).
# A part that fails is recorded and the next one runs; the script exits 1 if any failed.
#
#   bash tools/gpu_prepare.sh                         # here: wheels for python 3.12 and the CIFAR rows, into .gpu/
#   run(command="bash tools/gpu_check.sh", carry=[".gpu"], timeout_s=540)      # the device tool, 15 minutes in all
#   GPU_PY=3.11 bash tools/gpu_prepare.sh && GPU_CHECK_DRY=1 bash tools/gpu_check.sh     # dry run on this CPU
#
# GPU_CHECK_DRY=1 runs the same parts on the CPU: the install into a scratch folder from the local wheels, the CUDA
# tests on the CPU (DISTILL_CUDA_TEST_DEVICE=cpu), the decode bench and gpu_bench.sh at a tiny size.
# Wall time per part, dry run on the 2-core CPU (2026-12-03): install 5 s, card 10 s, tests 97 s, decode 14 s,
# bench 65 s; 3.2 minutes in all. Estimate for an H200: install 5 s, card 10 s, tests 90 s (two demo runs of the
# CLI: Python start-up and tiny steps dominate), decode 15 s, bench 360 s (gpu_bench.sh's own estimate): about
# 8 minutes; a rerun fits the 15 minutes only if the first run stops early.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check}  # what comes back from the device: gpu_check.json and gpu_check.log, nothing else
DRY=${GPU_CHECK_DRY:-0}
work=${GPU_CHECK_WORK:-/tmp/gpu_check_work}  # each part's files; the installed wheels under site/
rm -rf "$work" && mkdir -p "$OUT" "$work"
exec > >(tee "$OUT/gpu_check.log") 2>&1
py=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
site=$work/site
failed=0
export work site py

part() {  # part NAME SECONDS COMMAND...: run it (a function of this file too) under a time limit, timed
  local name=$1 limit=$2 start rc; shift 2
  echo "=== $name"
  start=$(date +%s.%N)
  timeout "$limit" bash -c '"$@"' _ "$@" 2>&1 | tr '\r' '\n' | grep -v -e '%|' -e '^ *$'
  rc=${PIPESTATUS[0]}
  awk -v n="$name" -v rc="$rc" -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%s\t%s\t%.1f\n", n, rc, e - s }' \
    >> "$work/parts.tsv"
  [ "$rc" = 0 ] || { failed=1; echo "=== $name FAILED (exit $rc)"; }
}

install_wheels() {
  local wheels=.gpu/wheels-py$py
  ls "$wheels"/*.whl >/dev/null 2>&1 || { echo "no wheels in $wheels: run GPU_PY=$py bash tools/gpu_prepare.sh"; return 2; }
  rm -rf "$site"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "$wheels"/*.whl 2>&1 | grep -v -e '^WARNING' -e 'Running pip as'
  PYTHONPATH=$site:$PWD python3 -c "
import datasets, hydra, omegaconf, distill.run
assert datasets.__file__.startswith('$site'), datasets.__file__
print('installed:', 'datasets', datasets.__version__, '| hydra', hydra.__version__, '| omegaconf', omegaconf.__version__)"
}

show_card() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
  python3 -c "
import json, sys, torch, torchvision
from distill.data import jpeg
card = {'python': sys.version.split()[0], 'torch': torch.__version__, 'torchvision': torchvision.__version__,
        'cuda': torch.version.cuda, 'device': torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu',
        'bf16': torch.cuda.is_available() and torch.cuda.is_bf16_supported(), 'jpeg_decoders': jpeg.available(),
        'cpus': __import__('os').cpu_count()}
print(json.dumps(card)); open('$work/card.json', 'w').write(json.dumps(card))"
}

cuda_tests() {
  DISTILL_CUDA_TEST_FIGURES=$work/figures.jsonl python3 -m pytest -q -m cuda -p no:cacheprovider \
    --junitxml="$work/tests.xml" tests/test_cuda.py
}

export PYTHONPATH=$site:$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ "$DRY" = 1 ]; then
  export DISTILL_CUDA_TEST_DEVICE=cpu
  decode=(python3 tools/bench_decode.py --device cpu --images 256 --batch 64 --rounds 1)
  bench=(env PHOTOS=300 SIZE=32 TEACHER=resnet20 STUDENT=resnet8 BATCH=32 VIEWS=2 VAL=100 CIFAR_IMAGES=600
         CIFAR_TEACHER=resnet20 CIFAR_STUDENT=resnet8 JSON="$work/bench" bash tools/gpu_bench.sh .gpu/cifar10.parquet)
else
  decode=(python3 tools/bench_decode.py --device cuda --images 2048 --batch 256)
  bench=(env JSON="$work/bench" bash tools/gpu_bench.sh .gpu/cifar10.parquet)
fi
export -f install_wheels show_card cuda_tests
part install 120 install_wheels
part card 60 show_card
part tests 300 cuda_tests
part decode 120 "${decode[@]}" --json "$work/decode.json"
part bench 420 "${bench[@]}"

python3 - "$work" "$OUT" "$DRY" <<'EOF'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path
out, dest, dry = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
def read(name):
    p = out / name
    return json.loads(p.read_text()) if p.exists() else None
result = {"dry_run": dry, "card": read("card.json"), "parts": {}, "tests": {}, "figures": [],
          "decode": read("decode.json"), "bench": {"photos": read("bench_photos.json"), "cifar": read("bench_cifar.json")}}
for line in (out / "parts.tsv").read_text().splitlines():
    name, rc, seconds = line.split("\t")
    result["parts"][name] = {"exit": int(rc), "seconds": float(seconds)}
if (out / "tests.xml").exists():
    for case in ET.parse(out / "tests.xml").iter("testcase"):
        verdict = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        result["tests"][case.get("name")] = {"verdict": verdict, "seconds": float(case.get("time", 0))}
if (out / "figures.jsonl").exists():
    result["figures"] = [json.loads(line) for line in (out / "figures.jsonl").read_text().splitlines()]
(dest / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
print("gpu_check:", json.dumps(result["parts"]))
print("gpu_check: tests", {k: v["verdict"] for k, v in result["tests"].items()})
EOF
echo "gpu_check: $([ $failed = 0 ] && echo 'every part passed' || echo 'a part FAILED'); figures in $OUT/gpu_check.json"
exit $failed
