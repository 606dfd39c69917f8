"""tools/bench.py --quick runs end to end and prints every field (the figures themselves are benchmarks, not tests)."""
import json
import subprocess
import sys

import datasets
import numpy as np
from PIL import Image

from conftest import HAS_CXX, ROOT


def _cifar_like(tmp_path):
    rng = np.random.default_rng(0)
    labels = [i % 10 for i in range(300)]
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in labels]
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    ds = datasets.Dataset.from_dict({"img": images, "label": labels}, features=features)
    ds.to_parquet(str(tmp_path / "d.parquet"))


def test_bench_quick_prints_every_field(tmp_path):
    _cifar_like(tmp_path)
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "bench.py"), "--data", str(tmp_path / "d.parquet"),
                        "--quick", "--val", "50", "--teacher", "resnet8", "--student", "resnet8", "--batch", "32",
                        "--memory-images", "20000", "--epochs", "2", *(["--compile"] if HAS_CXX else []),
                        "--json", str(out)],
                       capture_output=True, text=True, timeout=1800)  # a hang guard
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    fields = ["cached_kd_images_per_s", "timm_logit_distillation_images_per_s", "ce_only_images_per_s",
              "loader_images_per_s", "teacher_inference_images_per_s", "cache_generation_views_per_s",
              "ideal_speedup", "cached_kd_vs_timm_of_ideal", "cached_kd_vs_ce_only", "loader_vs_cached_kd",
              "cache_generation_vs_inference_per_forward", "peak_rss_growth_gb"]
    for field in fields:
        assert result[field] is not None and f"{field}  " in r.stdout, field
    assert all(result[f] > 0 for f in fields[:7])
    assert result["epochs"] == 2  # the last of two epochs is the one timed
    compiled = ("ce_only", "cached_kd") if HAS_CXX else ()  # without a C++ compiler inductor cannot build: no (g)
    for kind in compiled:  # (g): eager and compiled side by side, the compile time apart
        assert result[f"{kind}_compiled_images_per_s"] > 0 and result[f"{kind}_compiled_vs_eager"] > 0, kind
        for field in ("startup_s", "compiled_startup_s", "compile_s"):
            assert isinstance(result[f"{kind}_{field}"], float) and f"{kind}_{field}  " in r.stdout, field


def test_the_ensemble_bench_prints_each_teacher_counts_rate_and_ratio(tmp_path):
    _cifar_like(tmp_path)
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_ensemble.py"), "--data", str(tmp_path / "d.parquet"),
                        "--images", "200", "--val", "50", "--teacher", "resnet8", "--teachers", "1", "2",
                        "--rounds", "1", "--batch", "32", "--views", "2", "--workers", "0"],
                       capture_output=True, text=True, timeout=1800)  # a hang guard
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    for field in ("ce_only_images_per_s", "teachers_1_images_per_s", "teachers_2_images_per_s", "teachers_2_vs_1"):
        assert result[field] > 0 and f"{field}  " in r.stdout, field
    assert result["images"] == 200


def test_the_feature_bench_prints_each_rate_and_ratio(tmp_path):
    _cifar_like(tmp_path)
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_feature.py"), "--data", str(tmp_path / "d.parquet"),
                        "--images", "200", "--val", "50", "--teacher", "resnet8", "--student", "resnet8x4",
                        "--batch", "32", "--views", "2", "--workers", "0"],
                       capture_output=True, text=True, timeout=1800)  # a hang guard
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    for field in ("ce_only_images_per_s", "cached_kd_images_per_s", "cached_feature_kd_images_per_s",
                  "online_feature_kd_images_per_s", "timm_feature_task_images_per_s",
                  "cached_feature_kd_vs_ce_only", "cached_feature_kd_vs_timm_feature_task"):
        assert result[field] > 0 and f"{field}  " in r.stdout, field
    assert result["images"] == 200
