"""On a CUDA device: the device renderer, the JPEG decoder, a bf16 student step and the whole demo, each against
the CPU path. Skipped without CUDA (CI has none); `DISTILL_CUDA_TEST_DEVICE=cpu` runs them on the CPU, where every
bound holds trivially, to check the tests themselves before GPU time is spent (tools/gpu_check.sh's dry run).

Bounds, stated before any was measured on a GPU (tools/gpu_check.sh records the measured figures):
  - CIFAR views (pad, crop, flip: gathers of pixels resized once on the host): bit for bit;
  - RandomResizedCrop views (roi_align on the device): within 1 grey level of the same op on the CPU;
  - nvJPEG against libjpeg-turbo: mean |difference| <= 1.5 grey levels, 99th percentile <= 8 (chroma upsampling
    and the IDCT differ at sharp colour edges);
  - a bf16-autocast step: every loss term within 5 % (+ 0.01) of the fp32 step's (bf16 keeps 8 bits of mantissa).
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import photo_jpegs, run_cli
from distill import config, data
from distill.config import DataCfg, KDCfg
from distill.data import jpeg, transforms, views
from distill.stages import student
from distill.store import softlabels
from distill.training import models, objectives, targets

DEVICE = os.environ.get("DISTILL_CUDA_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else None)
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(DEVICE is None, reason="needs a CUDA device")]
MEASURED = Path(os.environ.get("DISTILL_CUDA_TEST_FIGURES", os.devnull))  # gpu_check.sh collects the figures


def _record(name: str, **figures) -> None:
    """Append one test's measured figures (a JSON line) for tools/gpu_check.sh's report."""
    with open(MEASURED, "a") as f:
        f.write(json.dumps({"test": name, "device": DEVICE, **figures}) + "\n")


def _params(cfg, n, hw, seed=0):
    rows = [views.EVAL_VIEW if i % 4 == 0 else views.draw(cfg, views.rng_for(seed, i, 1), hw) for i in range(n)]
    return torch.from_numpy(np.stack(rows))


@pytest.mark.parametrize("hw", [(16, 16), (10, 14)])
def test_cifar_views_on_the_device_are_the_cpu_paths_bit_for_bit(hw):
    cfg = DataCfg(image_size=16, padding=4, flip=True)
    pixels = torch.randint(0, 256, (64, *hw, 3), dtype=torch.uint8)
    index = torch.randint(0, 64, (256,))
    params = _params(cfg, len(index), hw)
    want = torch.stack([views.apply(pixels[i].permute(2, 0, 1), p, cfg) for i, p in zip(index, params.numpy())])
    batch = data.Views(index=index, view=params, split=torch.zeros(len(index), dtype=torch.long))
    rendered = views.DeviceViews(pixels.numpy(), cfg, DEVICE)(batch).image
    assert rendered.device.type == torch.device(DEVICE).type and torch.equal(rendered.cpu(), want)


def test_random_resized_crops_on_the_device_are_within_a_grey_level_of_the_cpus():
    cfg = DataCfg(image_size=64, transform="imagenet", flip=True)
    torch.manual_seed(0)
    small = torch.randint(0, 256, (16, 3, 30, 40), dtype=torch.float)
    pixels = torch.nn.functional.interpolate(small, size=(150, 200), mode="bicubic").clamp(0, 255).round()
    pixels = pixels.to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    index = torch.arange(16).repeat(8)
    params = _params(cfg, len(index), (150, 200), seed=1)
    cpu = views.render(pixels, index, params, cfg)
    dev = views.render(pixels.to(DEVICE), index, params, cfg).cpu()
    diff = (dev.int() - cpu.int()).abs()
    _record("rrc_render", max_abs_diff=diff.max().item(), share_differing=(diff > 0).float().mean().item())
    assert diff.max() <= 1


@pytest.mark.parametrize("backend", jpeg.BACKENDS)
@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")  # torchvision's, expected
def test_jpeg_decoded_on_the_device_is_close_to_libjpeg_turbo(backend):
    if backend not in jpeg.available():
        pytest.skip(f"{backend} is not installed here")
    from test_jpeg import _pil
    files = photo_jpegs(24)
    got = jpeg.decode([torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in files], DEVICE, backend)
    diffs = []
    for i, (image, file) in enumerate(zip(got, files)):
        want = _pil(file)
        assert image.device.type == torch.device(DEVICE).type and image.shape == want.shape, i
        diffs.append((image.cpu().int() - want.int()).abs().flatten().float())
    diff = torch.cat(diffs)
    mean, p99 = diff.mean().item(), diff.quantile(0.99).item() if diff.numel() < 2 ** 24 else diff.max().item()
    _record(f"decode_{backend}", mean_abs_diff=mean, p99_abs_diff=p99, max_abs_diff=diff.max().item())
    assert mean <= 1.5 and p99 <= 8


def test_a_bf16_student_step_from_the_cache_is_finite_and_close_to_fp32(shared):
    folder = shared.cache(cache__topk=2)
    cfg = config.validate({"data": {"source": "auto", "path": str(shared.data), "val_size": 12, "image_size": 12,
                                    "mean": [0.5] * 3, "std": [0.25] * 3, "padding": 2}})
    bundle = data.load(cfg.data)
    replay = student.ReplayItems(bundle.images["train"], cfg.data, [folder], "cycle", seed=0)
    batch = data.collate_replay([replay[i] for i in range(32)]).to(DEVICE)
    labels = softlabels.SoftLabels(folder)
    x = transforms.ToInput(cfg.data, [0.5] * 3, [0.25] * 3)(batch)
    torch.manual_seed(0)
    net = models.create("resnet8", 3).to(DEVICE)
    for kd in (KDCfg(alpha=0.9, temperature=labels.temperature), KDCfg(loss="dkd", temperature=labels.temperature)):
        objective = objectives.objective_for(kd, 3, 0.1, targets.CachedTeacher(3, labels.dense, labels.temperature))
        terms = {}
        for precision in ("fp32", "bf16"):
            net.zero_grad()
            with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = objective(net(x), batch, None, x, objectives.Progress(epoch=0, step=0))
            out["loss"].backward()
            grads = [p.grad for p in net.parameters() if p.grad is not None]
            assert grads and all(torch.isfinite(g).all() for g in grads), precision
            terms[precision] = {k: v.float().item() for k, v in out.items()}
        _record(f"bf16_step_{kd.loss}", fp32=terms["fp32"], bf16=terms["bf16"])
        for name, value in terms["fp32"].items():
            assert np.isfinite(terms["bf16"][name]), name
            assert abs(terms["bf16"][name] - value) <= 0.05 * abs(value) + 0.01, (kd.loss, name, terms)


def test_the_demo_on_the_device_caches_the_cpu_renderers_bytes_and_exports_for_timm_and_onnx(tmp_path):
    """Every stage of the demo with views rendered on the device; then the same cache made by the CPU renderer
    from the demo's own teacher: the same bytes. The export loads in timm and ONNX and answers like the student."""
    import timm

    first = run_cli(f"run_root={tmp_path / 'runs'}", f"cache.root={tmp_path / 'cache'}", "data.renderer=device",
                    "student.baseline=true", "stage=export", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run = tmp_path / "runs" / "demo"
    summary = json.loads((run / "summary.json").read_text())
    assert {"teacher", "student", "baseline"} <= set(summary["models"]), summary
    second = run_cli(f"run_root={tmp_path / 'cpu'}", f"cache.root={tmp_path / 'cpu-cache'}", "data.renderer=cpu",
                     "teacher.source=timm", f"teacher.checkpoint={run / 'teacher' / 'model.safetensors'}",
                     "stage=cache", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    folders = [Path(json.loads((r / "cache.json").read_text())["folder"]) for r in (run, tmp_path / "cpu" / "demo")]
    shards = sorted(p.name for p in folders[0].glob("shard-*.npy"))
    assert shards and [p.name for p in sorted(folders[1].glob("shard-*.npy"))] == shards
    same = [(folders[0] / n).read_bytes() == (folders[1] / n).read_bytes() for n in shards]
    _record("demo", top1={k: m["top1"] for k, m in summary["models"].items()}, shards=len(shards), equal=sum(same))
    assert all(same)

    import distill  # noqa: F401  (registers the CIFAR ResNets with timm, as the model card says)
    export = run / "export"
    loaded = timm.create_model(f"local-dir:{export}", pretrained=True).eval()
    x = torch.randn(4, 3, 16, 16)
    onnxruntime = pytest.importorskip("onnxruntime")
    got = onnxruntime.InferenceSession(str(export / "model.onnx")).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - loaded(x).numpy()).max() < 1e-4
