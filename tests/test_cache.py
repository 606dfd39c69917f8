"""The soft-label cache: exact replay, values, fingerprints, crash safety, and process-count independence."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from conftest import ROOT, cache_overrides, config_from, random_teacher, run_here, tiny_dataset
from distill import config, data, files
from distill.data import transforms, views
from distill.store import artifacts, fingerprints, softlabels
from distill.store.records import Normalization
from distill.training import models
from distill.config import DataCfg
from distill.errors import DataError
from distill.stages import cache


def _views(item: dict) -> data.Views:
    """A ViewItems item (the V views of one image) as the batch of views ToInput reads."""
    mixed = item.get("mixed")
    return data.Views(image=item["image"], mixed=None if mixed is None else data.MixedView(**mixed))


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


def _tiny_data(shared, **cache):
    cfg = config.validate({"data": {"source": "auto", "path": str(shared.data), "val_size": 12, "image_size": 12,
                                    "mean": [0.5] * 3, "std": [0.25] * 3, "flip": True, "padding": 2},
                           "cache": cache})
    return cfg, data.load(cfg.data), transforms.ToInput(cfg.data, [0.5] * 3, [0.25] * 3)


def _teacher(shared):
    teacher = models.create("resnet8", 3)
    teacher.load_state_dict(artifacts.load_weights(shared.teacher_dir))
    return teacher.eval()


def test_dense_cache_reproduces_teacher_logits_on_replayed_views(shared):
    folder = shared.cache(cache__topk=99)
    labels = softlabels.SoftLabels(folder, verify=True)
    assert labels.manifest.kept.dense and labels.topk == 3 and len(labels) == 48 and labels.temperature == 1.0
    cfg, bundle, to_input = _tiny_data(shared)
    images = bundle.images["train"]
    items = cache.ViewItems(images, cfg.data, num_views=3, eval_view=True, seed=0)
    teacher = _teacher(shared)
    idx = np.array([0, 17, 33, 47])
    rows = labels.rows(idx)
    for v in range(3):
        replayed = to_input(data.Views(image=torch.stack([views.apply(images.image(i), rows["view"][j, v], cfg.data)
                                                          for j, i in enumerate(idx)])))  # the stored views re-applied
        at_cache_time = to_input(data.Views(image=torch.stack([items[i]["image"][v] for i in idx])))
        assert torch.equal(replayed, at_cache_time)  # bitwise the pixels the teacher labelled
        with torch.no_grad():
            live = teacher(replayed)
        classes = torch.from_numpy(rows["classes"][:, v].astype(np.int64))
        stored = torch.zeros_like(live).scatter_(1, classes, torch.from_numpy(rows["logits"][:, v].astype(np.float32)))
        assert torch.allclose(stored, live, rtol=1e-3, atol=1e-3)  # fp16 rounding
        lse = torch.from_numpy(rows["lse"][:, v].copy())
        assert torch.allclose(lse, torch.logsumexp(live, 1), atol=1e-5)  # a dense cache stores it at T = 1
    rows = labels.rows(np.arange(48))
    assert (rows["view"][:, 0, 0] == views.EVAL).all() and (rows["view"][:, 1:, 0] == views.TRAIN).all()
    assert len({tuple(r) for r in rows["view"][:, 1, 1:3]}) > 5  # random crops differ across images


def test_a_sparse_cache_stores_the_logsumexp_at_the_kd_temperature(shared):
    folder = shared.cache(cache__topk=2)
    labels = softlabels.SoftLabels(folder)
    assert not labels.dense and labels.temperature == 4.0
    cfg, bundle, to_input = _tiny_data(shared)
    images = bundle.images["train"]
    rows = labels.rows(np.arange(6))
    x = to_input(data.Views(image=torch.stack([views.apply(images.image(i), rows["view"][i, 1], cfg.data)
                                               for i in range(6)])))
    with torch.no_grad():
        live = _teacher(shared)(x)
    assert torch.allclose(torch.from_numpy(rows["lse"][:, 1].copy()), torch.logsumexp(live / 4.0, 1), atol=1e-5)
    tails = 0
    for i in range(6):  # the tail: the classes outside the top 2 and the image's own, its logsumexp at T stored
        tail = sorted(set(range(3)) - set(rows["classes"][i, 1].tolist()) - {int(images.labels[i])})
        want = torch.logsumexp(live[i, tail] / 4.0, 0).item() if tail else float("-inf")
        assert rows["lse_rest"][i, 1] == pytest.approx(want, abs=1e-5)
        tails += bool(tail)
    assert 0 < tails < 6  # both kinds of record: with a tail class, and with every class stored


def test_fingerprint_changes_with_what_the_bytes_depend_on(shared):
    base = {"data": {"source": "auto", "path": str(shared.data), "val_size": 12, "mean": [0.5] * 3,
                     "std": [0.25] * 3}}
    bundle = data.load(config.validate(base).data)
    norm = Normalization((0.5,) * 3, (0.25,) * 3)

    def fp(raw=base, digest="a", b=bundle):
        c = config.validate(raw)
        return fingerprints.cache_identity(c, b.identity, norm, b.num_classes, digest).folder_name()

    ref = fp()
    changed = [fp(digest="b"), fp(base | {"cache": {"topk": 2}}), fp(base | {"cache": {"topk": 2},
                                                                         "kd": {"temperature": 2.0}}),
               fp(base | {"cache": {"views": 2}}), fp(base | {"seed": 1}),
               fp(b=data.load(config.validate(base | {"data": base["data"] | {"split_seed": 1}}).data)),
               fp(base | {"data": base["data"] | {"image_size": 16}})]
    assert ref not in changed and len(set(changed)) == len(changed)
    same = [fp(base | {"teacher": {"label_smoothing": 0.2, "epochs": 3}}), fp(base | {"name": "other"}),
            fp(base | {"run_root": "elsewhere"}), fp(base | {"data": base["data"] | {"num_workers": 0}}),
            fp(base | {"kd": {"temperature": 2.0, "alpha": 0.5}}),  # a cache of every logit serves any T
            fp(base | {"cache": {"topk": 50}})]  # top-50 of 3 classes is every logit, as top-10 is
    assert set(same) == {ref}


DATA = data.DataIdentity("parquet", None, None, "c0ffee", {"split": "train", "rows": 48, "rows_sha256": "ab"},
                         {"split": "train", "rows": 12, "rows_sha256": "cd"}, ["red", "green", "blue"])
NORM = {"per_image": False, "mean": [0.5] * 3, "std": [0.25] * 3}


@pytest.mark.parametrize("raw", [{}, {"cache": {"topk": 2}}, {"cache": {"topk": 2}, "kd": {"temperature": 2.0}},
                                 {"kd": {"temperature": 2.0}, "precision": "fp16"}])
def test_the_cache_identity_is_the_dict_every_cache_folder_was_named_by(raw):
    """The identity's JSON, whose hash names the folder, is the dict distill always hashed: the settings tagged
    `cache` (config's own precision among them), top-k and label temperature as the bytes use them, the teacher's
    weights, the data's identity and the normalization; and the manifest holds it."""
    cfg = config.validate(raw)
    identity = fingerprints.cache_identity(cfg, DATA, NORM, 3, "feed")
    dense = cfg.cache.topk >= 3
    legacy = {"format_version": softlabels.FORMAT_VERSION, "teacher_sha256": "feed", "data": DATA.to_json(),
              "normalization": NORM, **fingerprints.settings(cfg, "cache"), "cache.topk": min(cfg.cache.topk, 3),
              "kd.temperature": 1.0 if dense else cfg.kd.temperature}
    assert identity.to_json() == legacy and identity.folder_name() == files.fingerprint(legacy)
    assert (identity.kept.dense, identity.kept.k, identity.kept.temperature) == (dense, legacy["cache.topk"],
                                                                                  legacy["kd.temperature"])


@pytest.mark.parametrize("topk, temperature, name", [(10, 1.0, "7cbc8f4eb0e92096"), (2, 4.0, "5d58713874a92b6c")])
def test_a_cache_folder_keeps_its_name(topk, temperature, name):
    """Folder names pinned (hashed by the code before the identity was a record): a cache of these inputs keeps
    its folder, so existing caches are reused."""
    settings = {"precision": "no", "seed": 0, "cache.views": 4}
    identity = softlabels.CacheIdentity("feed", DATA, NORM, softlabels.LogitsKept(topk, 3, temperature), settings)
    assert identity.folder_name() == name and files.fingerprint(identity) == name  # a record hashes as its JSON


def test_two_recipes_with_one_teacher_share_the_cache(shared):
    folder = shared.cache()
    r = run_here(*shared.args(), "name=another")
    assert r.returncode == 0, r.stderr
    assert json.loads((shared.root / "runs" / "another" / "cache.json").read_text()) == files.seal({
        "folder": str(folder), "reused": True, "skipped_images": 0})


def test_corrupted_shard_is_detected_and_recomputed(shared, tmp_path):
    folder = shared.copy_cache(tmp_path)
    clean = _files(folder)
    shard = folder / "shard-00001.npy"
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0xFF
    shard.write_bytes(bytes(raw))
    r = run_here(*cache_overrides(shared.data, tmp_path, shared.teacher_file))
    assert r.returncode == 0, r.stderr
    assert "shard-00001.npy fails its checksum; recomputing it" in r.stderr
    assert _files(folder) == clean
    assert json.loads((tmp_path / "runs" / "tiny" / "cache.json").read_text())["images"] == 16  # that shard only


def test_swapped_cache_folders_are_recomputed_never_adopted(shared, tmp_path):
    """Two caches whose folders swapped names: each shard's sealed sidecar names its own cache and record layout,
    so the other cache's shards (whose checksums hold) are recomputed, and the student's reader refuses the folder."""
    two, three = shared.copy_cache(tmp_path, cache__topk=2), shared.copy_cache(tmp_path, cache__topk=3)
    clean = _files(two)
    two.rename(tmp_path / "cache" / "swap")
    three.rename(two)
    (tmp_path / "cache" / "swap").rename(three)
    with pytest.raises(DataError, match=f"cache: {two} holds the cache {three.name}, not {two.name} "):
        softlabels.SoftLabels(two, fingerprint=two.name)
    r = run_here(*cache_overrides(shared.data, tmp_path, shared.teacher_file, cache__topk=2))
    assert r.returncode == 0, r.stderr
    assert f"{two}: shard-00000.json, shard-00001.json, shard-00002.json belong to another cache" in r.stderr
    assert _files(two) == clean  # the clean top-2 cache bit for bit: a student trained from it is a clean run's


@pytest.mark.parametrize("edited", ["manifest.json", "shard-00001.json"])
def test_a_sealed_cache_file_changed_by_hand_is_refused_in_one_line(shared, tmp_path, edited):
    folder = shared.copy_cache(tmp_path)
    path = folder / edited
    if edited != "manifest.json":
        (folder / "manifest.json").unlink()  # a cache being labelled: its shards' sidecars are what a rerun reads
    changed = json.loads(path.read_text()) | ({"teacher_view_top1": 99.0} if edited == "manifest.json" else
                                              {"skipped": [20]})
    path.write_text(json.dumps(changed))
    r = run_here(*cache_overrides(shared.data, tmp_path, shared.teacher_file))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == f"error: cache: {path} was changed after it was written; restore " \
                                                f"it, or delete {folder} to recompute the cache"


def test_inspect_cache_reports_a_shard_of_another_cache(shared, tmp_path):
    folder, other = shared.copy_cache(tmp_path, cache__topk=2), shared.cache(cache__topk=3)
    for name in ("shard-00001.npy", "shard-00001.json"):
        (folder / name).write_bytes((other / name).read_bytes())
    manifest = json.loads((folder / "manifest.json").read_text())  # listing the other cache's shard, checksum too
    manifest["shards"][1]["sha256"] = files.sha256(folder / "shard-00001.npy")
    files.write_sealed(folder / "manifest.json", manifest)
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "inspect_cache.py"), str(folder), "--verify"],
                       capture_output=True, text=True, timeout=1800, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: cache: {folder / 'shard-00001.json'} is missing or belongs to another " \
                               f"cache, format or record layout than {folder / 'manifest.json'}; rerun stage=cache " \
                               "to recompute it"


@pytest.mark.parametrize("mix", [{}, {"cache__mix__mixup_alpha": 1.0, "cache__mix__cutmix_alpha": 1.0}])
def test_a_grown_cache_equals_a_fresh_one_and_labels_only_the_new_views(shared, tmp_path, monkeypatch, mix):
    from distill import run
    forwards, frozen = [], models.frozen

    def counting(model, device):  # the teacher as the cache stage gets it, counting the views it labels
        m = frozen(model, device)
        m.register_forward_hook(lambda mod, inputs, out: forwards.append(len(inputs[0])))
        return m
    monkeypatch.setattr(models, "frozen", counting)

    def build(root: Path, v: int) -> int:
        forwards.clear()  # 48 images in shards of 16; forwards of 5 images, so runs end inside and at shard ends
        run.execute(config_from(cache_overrides(shared.data, root, shared.teacher_file, cache__views=v,
                                                cache__batch_size=5, **mix)))
        return sum(forwards)
    assert build(tmp_path / "grown", 2) == 48 * 2
    assert build(tmp_path / "grown", 5) == 48 * 3  # grown from the 2-view cache: only views 2, 3, 4 labelled
    assert build(tmp_path / "fresh", 5) == 48 * 5
    grown = [f for f in (tmp_path / "grown" / "cache").iterdir()
             if f.is_dir() and json.loads((f / "manifest.json").read_text())["views"] == 5]
    assert len(grown) == 1 and _files(grown[0]) == _files(_only_cache(tmp_path / "fresh" / "cache"))


def test_incomplete_cache_is_never_read(tmp_path):
    (tmp_path / "c").mkdir()
    with pytest.raises(Exception, match="is incomplete \\(no manifest.json\\)"):
        softlabels.SoftLabels(tmp_path / "c")


def test_killed_cache_run_resumes_to_identical_bytes(tmp_path):
    path = tmp_path / "big.parquet"
    tiny_dataset(1200, size=32).to_parquet(str(path))
    teacher_file = random_teacher(tmp_path / "t.safetensors", model="resnet20")
    extra = ["data.image_size=32", "teacher.model=resnet20", "cache.shard_size=100", "cache.views=4",
             "data.val_size=100"]
    ref_dir = tmp_path / "ref"
    r = run_here(*cache_overrides(path, ref_dir, teacher_file), *extra)
    assert r.returncode == 0, r.stderr
    reference = _files(_only_cache(ref_dir / "cache"))
    assert len([n for n in reference if n.endswith(".npy")]) == 11

    args = cache_overrides(path, tmp_path, teacher_file) + extra
    env = dict(os.environ, PYTHONPATH=str(ROOT), DISTILL_FAULT="cache:3:KILL")  # killed after its third shard
    proc = subprocess.run([sys.executable, str(ROOT / "distill" / "run.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, timeout=1800)  # a hang guard, not a budget
    assert proc.returncode == -signal.SIGKILL
    folder = _only_cache(tmp_path / "cache")
    assert not (folder / "manifest.json").exists(), "killed too late: the run had finished"
    r = run_here(*args)
    assert r.returncode == 0, r.stderr
    assert 0 < json.loads((tmp_path / "runs" / "tiny" / "cache.json").read_text())["images"] < 1100  # resumed
    assert _files(folder) == reference


def test_inspect_cache_tool(shared):
    folder = shared.cache(cache__topk=2)
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "inspect_cache.py"), str(folder), "--verify"],
                       capture_output=True, text=True, timeout=1800, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    for field in ("images", "views", "top-k", "temperature", "classes", "size on disk", "bytes per view",
                  "teacher top-1 on cached views", "mean entropy", "mean top-k mass", "all 3 shards ok"):
        assert field in r.stdout, field
    manifest = json.loads((folder / "manifest.json").read_text())
    assert f"{manifest['teacher_view_top1']:.2f}%" in r.stdout


MIXED = {"cache__topk": 99, "cache__mix__mixup_alpha": 1.0, "cache__mix__cutmix_alpha": 1.0, "cache__mix__prob": 0.8}


def test_mixed_views_label_the_mixed_image(shared):
    labels = softlabels.SoftLabels(shared.cache(**MIXED))
    rows = labels.rows(np.arange(48))
    assert (rows["partner"][:, 0] == -1).all()  # the eval view is never mixed
    mixed = rows["partner"][:, 1:] >= 0
    cut = rows["box"][:, 1:, 2] * rows["box"][:, 1:, 3] > 0
    assert 0.5 < mixed.mean() < 1.0 and (mixed & cut).any() and (mixed & ~cut).any()
    assert np.allclose(rows["lam"][~(rows["partner"] >= 0)], 1.0)
    cfg, bundle, to_input = _tiny_data(shared, mix={"mixup_alpha": 1.0, "cutmix_alpha": 1.0, "prob": 0.8})
    images = bundle.images["train"]
    items = cache.ViewItems(images, cfg.data, 3, True, 0, cfg.cache.mix)
    teacher = _teacher(shared)
    for i in range(0, 48, 5):
        rec, item = rows[i], items[i]
        for v in range(1, 3):
            p = int(rec["partner"][v])
            partner = (views.apply(images.image(p), rec["partner_view"][v], cfg.data)[None] if p >= 0
                       else torch.zeros(1, 3, 12, 12, dtype=torch.uint8))
            replay = data.Views(image=views.apply(images.image(i), rec["view"][v], cfg.data)[None],
                                mixed=data.MixedView(image=partner, lam=rec["lam"][v:v + 1], box=rec["box"][v:v + 1]))
            x = to_input(replay)[0]
            at_cache_time = to_input(_views(item))[v]
            assert torch.equal(x, at_cache_time)  # replayed from the stored partner, view, lambda, box
            with torch.no_grad():
                live = teacher(x[None])[0]
            assert torch.allclose(torch.from_numpy(rec["logits"][v].astype(np.float32)),
                                  live[torch.from_numpy(rec["classes"][v].astype(np.int64))], atol=1e-3, rtol=1e-3)


def test_a_cache_of_an_older_format_is_refused_in_one_line(shared, tmp_path):
    folder = shared.copy_cache(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(manifest | {"format_version": 2}))
    with pytest.raises(Exception) as e:
        softlabels.SoftLabels(folder)
    assert str(e.value) == f"cache: {folder} is format 2, this distill reads {softlabels.FORMAT_VERSION}; rerun " \
                           "stage=cache to rebuild it"


def test_the_cache_holds_what_dkd_and_logit_standardization_need(shared):
    labels = softlabels.SoftLabels(shared.cache(**MIXED))
    cfg, bundle, to_input = _tiny_data(shared, mix={"mixup_alpha": 1.0, "cutmix_alpha": 1.0, "prob": 0.8})
    images, teacher = bundle.images["train"], _teacher(shared)
    items = cache.ViewItems(images, cfg.data, 3, True, 0, cfg.cache.mix)
    rows = labels.rows(np.arange(10))
    for i in range(10):
        with torch.no_grad():
            z = teacher(to_input(_views(items[i])))  # every view of image i, as the teacher saw it
        y = int(images.labels[i])
        partner = [int(images.labels[p]) if p >= 0 else y for p in rows["partner"][i]]
        want = {"target": z[:, y], "partner_target": z[range(3), partner], "mean": z.mean(1), "std": z.std(1),
                "lse": torch.logsumexp(z, 1)}
        for name, value in want.items():  # a dense cache: the logsumexps are at T = 1
            assert np.allclose(rows[name][i], value.numpy(), atol=1e-4), name
        assert np.isneginf(rows["lse_rest"][i]).all() and np.isneginf(rows["lse_std_rest"][i]).all()  # no tail
