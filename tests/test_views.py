"""The batched view renderer (views.render) against the per-image one (views.apply): bit for bit where the
operations are gathers (CIFAR crop, pad, flip, resize of a whole split), bounded where they resample."""
from pathlib import Path

import numpy as np
import pytest
import torch

from distill import data
from distill.data import views
from distill.config import DataCfg


def _params(cfg, n, hw, seed=0):
    rows = [views.EVAL_VIEW if i % 4 == 0 else views.draw(cfg, views.rng_for(seed, i, 1), hw) for i in range(n)]
    return torch.from_numpy(np.stack(rows))


@pytest.mark.parametrize("hw", [(12, 12), (10, 14)])  # the network's size, and one that needs a resize first
def test_cifar_views_render_bit_for_bit(hw):
    cfg = DataCfg(image_size=12, padding=3, flip=True)
    pixels = torch.randint(0, 256, (20, *hw, 3), dtype=torch.uint8)
    index = torch.tensor([3, 0, 19, 7, 7, 12, 5, 1])
    params = _params(cfg, len(index), hw)
    want = torch.stack([views.apply(pixels[i].permute(2, 0, 1), p, cfg) for i, p in zip(index, params.numpy())])
    got = views.render(pixels, index, params, cfg)
    assert got.dtype == torch.uint8 and torch.equal(got, want)
    assert params[:, 5].any() and (params[:, 0] == views.EVAL).any()  # flips and the eval view both exercised


def test_random_resized_crops_render_close_to_the_antialiased_resize():
    cfg = DataCfg(image_size=16, transform="imagenet", flip=True)
    torch.manual_seed(0)  # smooth images, as photographs are: noise would measure the resampler's worst case only
    small = torch.randint(0, 256, (6, 3, 10, 15), dtype=torch.float)
    pixels = torch.nn.functional.interpolate(small, size=(40, 60), mode="bicubic").clamp(0, 255).round()
    pixels = pixels.to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    index = torch.arange(6).repeat(2)
    params = _params(cfg, len(index), (40, 60), seed=1)
    want = torch.stack([views.apply(pixels[i].permute(2, 0, 1), p, cfg) for i, p in zip(index, params.numpy())])
    diff = (views.render(pixels, index, params, cfg).float() - want.float()).abs()
    assert diff.mean() < 4.0 and diff.max() < 32  # measured 2.85 and 19: roi_align vs antialiased bilinear


def test_device_views_render_the_partner_of_a_mixed_view():
    cfg = DataCfg(image_size=8, padding=2)
    pixels = torch.randint(0, 256, (5, 8, 8, 3), dtype=torch.uint8)
    params = _params(cfg, 3, (8, 8))
    mixed = data.MixedView(index=torch.tensor([4, -1, 3]), view=params.flip(0), lam=torch.ones(3),
                           box=torch.zeros(3, 4))
    batch = data.Views(index=torch.tensor([0, 1, 2]), view=params, split=torch.zeros(3), mixed=mixed)
    out = views.DeviceViews(pixels.numpy(), cfg, "cpu")(batch)
    assert torch.equal(out.mixed.image[0], views.apply(pixels[4].permute(2, 0, 1), params[2].numpy(), cfg))
    assert not out.mixed.image[1].any()  # unmixed: blank, as the per-image path leaves it
    assert torch.equal(out.image[2], views.apply(pixels[2].permute(2, 0, 1), params[2].numpy(), cfg))


@pytest.mark.parametrize("mix", [{}, {"cache__mix__mixup_alpha": 1.0, "cache__mix__cutmix_alpha": 1.0}])
def test_the_device_renderer_trains_and_caches_the_very_bits_of_the_cpu_one(shared, tmp_path, mix):
    """CIFAR views on the device (CPU tensors here): the same cache bytes, the same student and baseline weights;
    the cache records the renderer, so each has its own folder."""
    import json

    from conftest import cache_overrides, run_here
    from distill.store import artifacts
    runs = {}
    for renderer in ("cpu", "device"):
        where = tmp_path / renderer
        r = run_here(*cache_overrides(shared.data, where, shared.teacher_file, **mix), "stage=student",
                     "student.epochs=1", "student.batch_size=16", "student.baseline=true", f"data.renderer={renderer}")
        assert r.returncode == 0, r.stderr
        runs[renderer] = where / "runs" / "tiny"
    folders = {k: Path(json.loads((run / "cache.json").read_text())["folder"]) for k, run in runs.items()}
    assert folders["cpu"].name != folders["device"].name
    shards = sorted(p.name for p in folders["cpu"].glob("shard-*.npy"))
    assert shards and all((folders["cpu"] / n).read_bytes() == (folders["device"] / n).read_bytes() for n in shards)
    for stage in ("student", "baseline"):
        a, b = (artifacts.load_weights(run / stage) for run in runs.values())
        assert all(torch.equal(a[k], b[k]) for k in a), stage


def test_jpeg_files_decoded_on_the_device_train_and_cache_the_very_bits_of_the_cpu_path(shared, tmp_path):
    """A split not kept decoded (data.decode_mb=0, images of two sizes): its JPEG files are decoded per batch on
    the device (torchvision's decoder; libjpeg-turbo on the CPU, as PIL's), so the cache and the weights are the
    CPU path's, bit for bit."""
    import io
    import json

    import datasets

    from conftest import CLASSES, random_teacher, run_here, tiny_images, tiny_overrides
    from distill.store import artifacts
    images, labels = tiny_images(60, size=14)
    rows = []
    for i, img in enumerate(images):
        buf = io.BytesIO()
        img.resize((14, 14) if i % 2 else (18, 14)).save(buf, format="JPEG", quality=90)
        rows.append({"bytes": buf.getvalue(), "path": None})
    path = tmp_path / "jpeg.parquet"
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    datasets.Dataset.from_dict({"image": rows, "label": labels}, features=features).to_parquet(str(path))
    teacher = random_teacher(tmp_path / "t.safetensors")
    runs = {}
    for renderer in ("cpu", "device"):
        where = tmp_path / renderer
        args = tiny_overrides(path, where / "runs", epochs=1) + [
            "teacher.source=timm", f"teacher.checkpoint={teacher}", f"cache.root={where / 'cache'}", "cache.views=3",
            "cache.topk=3", "data.image_size=12", "data.decode_mb=0", "stage=student", "student.epochs=1",
            "student.batch_size=16", f"data.renderer={renderer}"]
        r = run_here(*args)
        assert r.returncode == 0, r.stderr
        runs[renderer] = where / "runs" / "tiny"
    folders = [Path(json.loads((run / "cache.json").read_text())["folder"]) for run in runs.values()]
    shards = sorted(p.name for p in folders[0].glob("shard-*.npy"))
    assert shards and all((folders[0] / n).read_bytes() == (folders[1] / n).read_bytes() for n in shards)
    a, b = (artifacts.load_weights(run / "student") for run in runs.values())
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cached_mixing_is_tricks_blend_row_by_row_bit_for_bit():
    """ToInput mixes a batch of cached mixed views at once on the device; each row is what tricks.blend gives."""
    from distill.data import transforms
    from distill.training import tricks
    torch.manual_seed(0)
    image, partner = (torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8) for _ in range(2))
    lam = torch.tensor([1.0, 0.3, 0.75, 0.6])
    box = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [2, 1, 4, 4], [5, 0, 3, 8]])  # unmixed, mixup, two cutmix
    to_input = transforms.ToInput(DataCfg(), [0.5] * 3, [0.25] * 3)
    got = to_input(data.Views(image=image, mixed=data.MixedView(image=partner, lam=lam, box=box)))
    x, y = to_input(data.Views(image=image)), to_input(data.Views(image=partner))
    for r in range(4):
        b = tuple(box[r].tolist())
        assert torch.equal(got[r], tricks.blend(x[r], y[r], float(lam[r]), b if b[2] * b[3] else None)), r


def test_png_files_on_the_device_path_stop_in_one_line_even_when_bad_images_are_skipped(shared, tmp_path):
    """PNG cannot be decoded on the device: a setting to change, never images to leave out silently."""
    from conftest import run_here, tiny_overrides
    r = run_here(*tiny_overrides(shared.data, tmp_path / "runs", epochs=1), "stage=teacher", "data.decode_mb=0",
                 "data.renderer=device", "data.on_bad_image=skip")
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: data.renderer: device decodes JPEG on the device, and the image at row ")
    assert not (tmp_path / "runs" / "tiny" / "teacher" / "meta.json").exists()
