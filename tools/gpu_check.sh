#!/usr/bin/env bash
# The GPU check, in one call on a bare GPU machine, every figure in one JSON file ($OUT/gpu_check.json):
#   1. install  the wheels of .gpu/wheels-pyX.Y (tools/gpu_prepare.sh, run here first) into a private folder;
#   2. card     nvidia-smi, torch and its CUDA, the JPEG decoders that load (distill/data/jpeg.py);
#   3. tests    pytest -m cuda (tests/test_cuda.py: renderer, decoder, bf16 step, the whole demo), their figures;
#   4. decode   tools/bench_decode.py: each JPEG decoder on the device against PIL on one core;
#   5. bench    tools/gpu_bench.sh on .gpu/cifar10.parquet: the input pipeline's targets (README), and in its CIFAR
#               run CE-only and cached KD eager and compiled side by side, with the compile time (BENCH_COMPILE);
#   6. ensemble tools/bench_ensemble.py: a student from one teacher's cache and from five's, beside CE-only, in one
#               run (the five read at one teacher's speed: issue 43).
# A part that fails is recorded and the next one runs; the script exits 1 if any failed. GPU_CHECK_PARTS="bench
# ensemble" runs only the parts named (install and card always run): a rerun of what failed.
#
#   bash tools/gpu_prepare.sh                         # here: wheels for python 3.12 and the CIFAR rows, into .gpu/
#   run(command="bash tools/gpu_check.sh", carry=[".gpu"], timeout_s=600)      # the device tool, 15 minutes in all
#   GPU_PY=3.11 bash tools/gpu_prepare.sh && GPU_CHECK_DRY=1 bash tools/gpu_check.sh     # dry run on this CPU
#
# GPU_CHECK_DRY=1 runs the same parts on the CPU: the install into a scratch folder from the local wheels, the CUDA
# tests on the CPU (DISTILL_CUDA_TEST_DEVICE=cpu), the benches at a tiny size (compiled too when tools/bench.py has
# BENCH_COMPILE; a dry run whose tools/bench.py lacks it says so and passes, a GPU run fails the bench part).
# Dry run on the 2-core CPU, shared with other work (2026-12-07; the bench part without its compiled runs): install
# 4 s, card 8 s, tests 345 s, decode 11 s, bench 193 s, ensemble 72 s (docs/benchmarks.md, "The GPU check").
# Estimate for an H100 or H200, from the last GPU figures (docs/benchmarks.md: the H100 sections) and each part's
# work, the part's time limit after it: install 5 s (40), card 10 s (30), tests 95 s (the demo test took 46 to 73 s
# on an H100; 140), decode 15 s (40), bench 210 s (photographs 90 s: 8,000 JPEGs made on one core, 30,000 resnet50
# views labelled at about 7,500/s, four 2-epoch trainings of 7,500 images at 3,800 to 7,000 img/s and their
# start-ups; CIFAR 120 s, 90 s of it the cold compile of resnet20's training and evaluation graphs; 240), ensemble
# 55 s (five resnet20 caches of 20,000 images x 2 views, three 1-epoch students; 90): about 390 s, 6.5 minutes.
# The limits add up to 580 s, so one call stays within 10 minutes; with a machine's start (1 to 2 minutes) a whole
# rerun still fits the 15 minutes if the first run keeps near its estimate; otherwise rerun only the parts that
# failed (GPU_CHECK_PARTS).
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check}  # what comes back from the device: gpu_check.json and gpu_check.log, nothing else
DRY=${GPU_CHECK_DRY:-0}
ONLY=${GPU_CHECK_PARTS:-}  # the parts to run (install and card always run); empty: every part
# The tools/bench.py argument that trains CE-only and cached KD compiled beside eager (student.compile=true; its
# compile time counted in start-up): helper C's `--compile`; adjust here if it is named otherwise.
BENCH_COMPILE=${BENCH_COMPILE:---compile}
work=${GPU_CHECK_WORK:-/tmp/gpu_check_work}  # each part's files; the installed wheels under site/
rm -rf "$work" && mkdir -p "$OUT" "$work"
exec > >(tee "$OUT/gpu_check.log") 2>&1
py=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
site=$work/site
failed=0
export work site py

part() {  # part NAME SECONDS COMMAND...: run it (a function of this file too) under a time limit, timed
  local name=$1 limit=$2 start rc; shift 2
  if [ -n "$ONLY" ] && [[ " install card $ONLY " != *" $name "* ]]; then
    echo "=== $name skipped (GPU_CHECK_PARTS)"; return 0
  fi
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

bench_all() {  # bench_all COMMAND...: gpu_bench.sh's, its CIFAR run compiled too when bench.py takes $BENCH_COMPILE
  local compiled=$BENCH_COMPILE rc
  if ! python3 tools/bench.py --help 2>/dev/null | grep -qF -- "$BENCH_COMPILE"; then
    echo "gpu_check: tools/bench.py has no $BENCH_COMPILE (BENCH_COMPILE): no compiled figures"
    compiled=
  fi
  CIFAR_EXTRA=$compiled "$@"; rc=$?
  [ "$rc" != 0 ] || [ -n "$compiled" ] || [ "$DRY" = 1 ] || rc=2  # on the GPU, eager against compiled is a figure
  return $rc
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
  ensemble=(python3 tools/bench_ensemble.py --images 300 --val 100 --views 2 --batch 32 --workers 2)
  limits=(120 60 900 120 900 600)  # install card tests decode bench ensemble: a shared 2-core CPU is far slower
else
  decode=(python3 tools/bench_decode.py --device cuda --images 2048 --batch 256)
  bench=(env PHOTOS=8000 CIFAR_IMAGES=20000 JSON="$work/bench" bash tools/gpu_bench.sh .gpu/cifar10.parquet)
  ensemble=(python3 tools/bench_ensemble.py --images 20000 --val 500 --views 2 --batch 256 --workers 8)
  limits=(40 30 140 40 240 90)  # 580 s: one 10-minute call (the estimate above: about 390 s)
fi
export BENCH_COMPILE DRY
export -f install_wheels show_card cuda_tests bench_all
part install "${limits[0]}" install_wheels
part card "${limits[1]}" show_card
part tests "${limits[2]}" cuda_tests
part decode "${limits[3]}" "${decode[@]}" --json "$work/decode.json"
part bench "${limits[4]}" bench_all "${bench[@]}"
part ensemble "${limits[5]}" "${ensemble[@]}" --data .gpu/cifar10.parquet --teachers 1 5 --rounds 1 \
  --json "$work/ensemble.json"

python3 - "$work" "$OUT" "$DRY" <<'EOF'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path
out, dest, dry = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
def read(name):
    p = out / name
    return json.loads(p.read_text()) if p.exists() else None
result = {"dry_run": dry, "card": read("card.json"), "parts": {}, "tests": {}, "figures": [],
          "decode": read("decode.json"), "bench": {"photos": read("bench_photos.json"), "cifar": read("bench_cifar.json")},
          "ensemble": read("ensemble.json")}
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
