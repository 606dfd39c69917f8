"""The soft-label cache: exact replay, values, fingerprints, crash safety, and process-count independence."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from conftest import ROOT, cache_overrides, config_from, random_teacher, run_cli, tiny_dataset
from distill import artifacts, cache, config, data, models, views
from distill.config import DataCfg


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _only_cache(root: Path) -> Path:
    (folder,) = [p for p in root.iterdir() if p.is_dir()]
    return folder


@pytest.fixture
def teacher_file(tmp_path):
    return random_teacher(tmp_path / "teacher.safetensors")


def test_cifar_view_is_pad_crop_flip():
    cfg = DataCfg(image_size=12, padding=2, flip=True)
    img = v2.ToImage()(tiny_dataset(1)["image"][0])
    for view in range(1, 30):
        p = views.draw(cfg, views.rng_for(3, 5, view), (12, 12))
        kind, top, left, h, w, flip = p.tolist()
        assert kind == views.TRAIN and 0 <= top <= 4 and 0 <= left <= 4
        padded = np.pad(img.numpy(), ((0, 0), (2, 2), (2, 2)))
        want = padded[:, top:top + 12, left:left + 12]
        want = want[:, :, ::-1] if flip else want
        assert np.array_equal(views.apply(img, p, cfg).numpy(), want)
    assert np.array_equal(views.draw(cfg, views.rng_for(3, 5, 1), (12, 12)),
                          views.draw(cfg, views.rng_for(3, 5, 1), (12, 12)))


def test_imagenet_view_replays_a_resized_crop():
    cfg = DataCfg(image_size=8, transform="imagenet", flip=True)
    img = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    boxes = {tuple(views.draw(cfg, views.rng_for(0, i, 1), (20, 30))[1:5]) for i in range(20)}
    assert len(boxes) > 10  # really random
    for top, left, h, w in boxes:
        assert 0 <= top and top + h <= 20 and 0 <= left and left + w <= 30
    p = views.draw(cfg, views.rng_for(0, 7, 1), (20, 30))
    assert views.apply(img, p, cfg).shape == (3, 8, 8)
    assert torch.equal(views.apply(img, p, cfg), views.apply(img, p, cfg))


def test_dense_cache_reproduces_teacher_logits_on_replayed_views(parquet_file, tmp_path, teacher_file):
    r = run_cli(*cache_overrides(parquet_file, tmp_path, teacher_file, cache__topk=99), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    folder = _only_cache(tmp_path / "cache")
    labels = cache.SoftLabels(folder, verify=True)
    assert labels.manifest["dense"] and labels.topk == 3 and len(labels) == 48
    cfg = config.validate({"data": {"source": "auto", "path": str(parquet_file), "val_size": 12, "image_size": 12,
                                    "mean": [0.5] * 3, "std": [0.25] * 3, "flip": True, "padding": 2}})
    bundle = data.load(cfg.data)
    norm = artifacts.read_json(tmp_path / "runs" / "tiny" / "teacher" / "meta.json")["normalization"]
    items = cache.ViewItems(bundle, cfg.data, norm, num_views=3, eval_view=True, seed=0)
    teacher = models.create("resnet8", 3)
    teacher.load_state_dict(artifacts.load_weights(tmp_path / "runs" / "tiny" / "teacher"))
    teacher.eval()
    idx = np.array([0, 17, 33, 47])
    for v in range(3):
        got = labels.gather(idx, np.full(4, v))
        replayed = torch.stack([items.render(items.image(i), {"view": got["view"][j:j + 1].numpy()}, 0)
                                for j, i in enumerate(idx)])  # the stored parameters, re-applied
        at_cache_time = items.to_input(torch.stack([items[i]["images"][v] for i in idx]))
        assert torch.equal(replayed, at_cache_time)  # bitwise the pixels the teacher labelled
        with torch.no_grad():
            live = teacher(replayed)
        stored = torch.zeros_like(live).scatter_(1, got["classes"], got["logits"])
        assert torch.allclose(stored, live, rtol=1e-3, atol=1e-3)  # fp16 rounding
        assert torch.allclose(got["lse"], torch.logsumexp(live / 4.0, 1), atol=1e-5)
    rows = labels.rows(np.arange(48))
    assert (rows["view"][:, 0, 0] == views.EVAL).all() and (rows["view"][:, 1:, 0] == views.TRAIN).all()
    assert len({tuple(r) for r in rows["view"][:, 1, 1:3]}) > 5  # random crops differ across images


def test_fingerprint_changes_with_what_the_bytes_depend_on(parquet_file):
    base = {"data": {"source": "auto", "path": str(parquet_file), "val_size": 12, "mean": [0.5] * 3,
                     "std": [0.25] * 3}}
    cfg = config.validate(base)
    bundle = data.load(cfg.data)
    norm = {"per_image": False, "mean": [0.5] * 3, "std": [0.25] * 3}

    def fp(raw=base, digest="a", b=bundle):
        c = config.validate(raw)
        return artifacts.fingerprint(cache.fingerprint_inputs(c, b, norm, digest, "no"))

    ref = fp()
    changed = [fp(digest="b"), fp(base | {"cache": {"temperature": 2.0}}), fp(base | {"cache": {"topk": 2}}),
               fp(base | {"cache": {"views": 2}}), fp(base | {"seed": 1}),
               fp(b=data.load(config.validate(base | {"data": base["data"] | {"split_seed": 1}}).data)),
               fp(base | {"data": base["data"] | {"image_size": 16}})]
    assert ref not in changed and len(set(changed)) == len(changed)
    same = [fp(base | {"teacher": {"label_smoothing": 0.2, "epochs": 3}}), fp(base | {"name": "other"}),
            fp(base | {"run_root": "elsewhere"}), fp(base | {"data": base["data"] | {"num_workers": 0}})]
    assert set(same) == {ref}


def test_two_recipes_with_one_teacher_share_the_cache(parquet_file, tmp_path, teacher_file):
    first = run_cli(*cache_overrides(parquet_file, tmp_path, teacher_file), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    second = run_cli(*cache_overrides(parquet_file, tmp_path, teacher_file), "name=another", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert f"cache: reusing {_only_cache(tmp_path / 'cache')}" in second.stderr


def test_corrupted_shard_is_detected_and_recomputed(parquet_file, tmp_path, teacher_file):
    args = cache_overrides(parquet_file, tmp_path, teacher_file)
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    folder = _only_cache(tmp_path / "cache")
    clean = _files(folder)
    shard = folder / "shard-00001.npy"
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0xFF
    shard.write_bytes(bytes(raw))
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "shard-00001.npy fails its checksum; recomputing it" in r.stderr
    assert _files(folder) == clean


@pytest.mark.parametrize("mix", [{}, {"cache__mix__mixup_alpha": 1.0, "cache__mix__cutmix_alpha": 1.0}])
def test_a_grown_cache_equals_a_fresh_one_and_labels_only_the_new_views(parquet_file, tmp_path, teacher_file,
                                                                         monkeypatch, mix):
    from distill import run
    forwards, frozen = [], models.frozen

    def counting(model, device):  # the teacher as the cache stage gets it, counting the views it labels
        m = frozen(model, device)
        m.register_forward_hook(lambda mod, inputs, out: forwards.append(len(inputs[0])))
        return m
    monkeypatch.setattr(models, "frozen", counting)

    def build(root: Path, v: int) -> int:
        forwards.clear()  # 48 images in shards of 16; forwards of 5 images, so runs end inside and at shard ends
        run.execute(config_from(cache_overrides(parquet_file, root, teacher_file, cache__views=v,
                                                cache__batch_size=5, **mix)))
        return sum(forwards)
    assert build(tmp_path / "grown", 2) == 48 * 2
    assert build(tmp_path / "grown", 5) == 48 * 3  # grown from the 2-view cache: only views 2, 3, 4 labelled
    assert build(tmp_path / "fresh", 5) == 48 * 5
    grown = [f for f in (tmp_path / "grown" / "cache").iterdir()
             if json.loads((f / "manifest.json").read_text())["views"] == 5]
    assert len(grown) == 1 and _files(grown[0]) == _files(_only_cache(tmp_path / "fresh" / "cache"))


def test_incomplete_cache_is_never_read(tmp_path):
    (tmp_path / "c").mkdir()
    with pytest.raises(Exception, match="no manifest.json: it is incomplete"):
        cache.SoftLabels(tmp_path / "c")


def test_killed_cache_run_resumes_to_identical_bytes(tmp_path):
    path = tmp_path / "big.parquet"
    tiny_dataset(1200, size=32).to_parquet(str(path))
    teacher_file = random_teacher(tmp_path / "t.safetensors", model="resnet20")
    extra = ["data.image_size=32", "teacher.model=resnet20", "cache.shard_size=100", "cache.views=4",
             "data.val_size=100"]
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    r = run_cli(*cache_overrides(path, ref_dir, teacher_file), *extra, cwd=ref_dir)
    assert r.returncode == 0, r.stderr
    reference = _files(_only_cache(ref_dir / "cache"))
    assert len([n for n in reference if n.endswith(".npy")]) == 11

    args = cache_overrides(path, tmp_path, teacher_file) + extra
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(ROOT / "distill" / "run.py"), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list((tmp_path / "cache").glob("*/shard-00002.json")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    folder = _only_cache(tmp_path / "cache")
    assert not (folder / "manifest.json").exists(), "killed too late: the run had finished"
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "already done" in r.stderr and "(0 of this process's" not in r.stderr
    assert _files(folder) == reference


def test_inspect_cache_tool(parquet_file, tmp_path, teacher_file):
    assert run_cli(*cache_overrides(parquet_file, tmp_path, teacher_file, cache__topk=2), cwd=tmp_path).returncode == 0
    folder = _only_cache(tmp_path / "cache")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "inspect_cache.py"), str(folder), "--verify"],
                       capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    for field in ("images", "views", "top-k", "temperature", "classes", "size on disk", "bytes per view",
                  "teacher top-1 on cached views", "mean entropy", "mean top-k mass", "all 3 shards ok"):
        assert field in r.stdout, field
    manifest = json.loads((folder / "manifest.json").read_text())
    assert f"{manifest['teacher_view_top1']:.2f}%" in r.stdout


def test_mixed_views_label_the_mixed_image(parquet_file, tmp_path, teacher_file):
    r = run_cli(*cache_overrides(parquet_file, tmp_path, teacher_file, cache__topk=99, cache__mix__mixup_alpha=1.0,
                                 cache__mix__cutmix_alpha=1.0, cache__mix__prob=0.8), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    labels = cache.SoftLabels(_only_cache(tmp_path / "cache"))
    rows = labels.rows(np.arange(48))
    assert (rows["partner"][:, 0] == -1).all()  # the eval view is never mixed
    mixed = rows["partner"][:, 1:] >= 0
    cut = rows["box"][:, 1:, 2] * rows["box"][:, 1:, 3] > 0
    assert 0.5 < mixed.mean() < 1.0 and (mixed & cut).any() and (mixed & ~cut).any()
    assert np.allclose(rows["lam"][~(rows["partner"] >= 0)], 1.0)
    cfg = config.validate({"data": {"source": "auto", "path": str(parquet_file), "val_size": 12, "image_size": 12,
                                    "mean": [0.5] * 3, "std": [0.25] * 3, "flip": True, "padding": 2},
                           "cache": {"mix": {"mixup_alpha": 1.0, "cutmix_alpha": 1.0, "prob": 0.8}}})
    bundle = data.load(cfg.data)
    items = cache.ViewItems(bundle, cfg.data, {"mean": [0.5] * 3, "std": [0.25] * 3}, 3, True, 0, cfg.cache.mix)
    teacher = models.create("resnet8", 3)
    teacher.load_state_dict(artifacts.load_weights(tmp_path / "runs" / "tiny" / "teacher"))
    teacher.eval()
    for i in range(0, 48, 5):
        rec = rows[i]
        for v in range(1, 3):
            p = int(rec["partner"][v])
            x = items.render(items.image(i), rec, v, items.image(p) if p >= 0 else None)
            item = items[i]
            at_cache_time = items.to_input(item["images"], item["partner_images"], item["lam"], item["box"])[v]
            assert torch.equal(x, at_cache_time)  # replayed from the stored partner, view, lambda, box
            with torch.no_grad():
                live = teacher(x[None])[0]
            assert torch.allclose(torch.from_numpy(rec["logits"][v].astype(np.float32)),
                                  live[torch.from_numpy(rec["classes"][v].astype(np.int64))], atol=1e-3, rtol=1e-3)
