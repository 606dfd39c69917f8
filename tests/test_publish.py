"""stage=publish and teacher.source=published: a cache published as a Hugging Face dataset folder, read back with
`datasets` and pyarrow alone, offline through huggingface_hub's cache, and trained from with bit-identical results."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import cache_overrides, run_here
from distill.store import published

MIXED = {"cache__mix__mixup_alpha": 1.0, "cache__mix__cutmix_alpha": 1.0, "cache__mix__prob": 0.8}
IMAGENET = {"data__transform": "imagenet", "data__scale": "[0.25,1.0]", "data__crop_pct": 0.8}
STUDENT = ["stage=student", "student.epochs=1", "student.batch_size=16"]


def _published_args(args: list[str], where: Path, path) -> list[str]:
    """The same recipe, with no teacher of its own: the published cache at `path` is the teacher."""
    kept = [a for a in args if not a.startswith(("teacher.", "run_root=", "cache.root=", "stage="))]
    return kept + [f"run_root={where / 'runs'}", f"cache.root={where / 'cache'}", "teacher.source=published",
                   f"teacher.path={path}"]


def _publish(shared, tmp: Path, **kw) -> tuple[list[str], Path]:
    """A private native cache (and teacher) in tmp, the student trained from it, then stage=publish: the args and
    the published folder."""
    args = cache_overrides(shared.data, tmp, shared.teacher_file, **kw)
    r = run_here(*args, *STUDENT)
    assert r.returncode == 0, r.stderr
    r = run_here(*args, "stage=publish")
    assert r.returncode == 0, r.stderr
    assert "B/view published" in r.stderr
    return args, tmp / "runs" / "tiny" / "published"


def _same_student(native: Path, again: Path) -> None:
    """The two students' weights are equal, bit for bit."""
    a, b = (load_file(str(run / "student" / "model.safetensors")) for run in (native, again))
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a)


@pytest.mark.parametrize("kw", [{}, MIXED, IMAGENET], ids=["plain", "mixed", "imagenet"])
def test_student_from_published_is_bit_identical(shared, tmp_path, kw):
    args, folder = _publish(shared, tmp_path / "a", **kw)
    native = shutil.copytree(tmp_path / "a" / "runs" / "tiny" / "student", tmp_path / "native" / "student")
    moved = shutil.copytree(folder, tmp_path / "pub")
    shutil.rmtree(tmp_path / "a")  # the teacher's folder and the native cache: gone
    r = run_here(*_published_args(args, tmp_path / "b", moved), *STUDENT)
    assert r.returncode == 0, r.stderr
    _same_student(native.parent, tmp_path / "b" / "runs" / "tiny")
    if kw is IMAGENET:  # the card states the transform and the parameters its replay reads
        card = published.read_card(moved)
        assert (card.transform, card.transform_params["crop_pct"], card.transform_params["scale"]) == \
            ("imagenet", 0.8, [0.25, 1.0])


def test_an_ensemble_publishes_each_teachers_own_cache_and_a_member_trains_its_own_student(shared, tmp_path):
    """publish.teacher=a publishes teacher a of the ensemble alone (its own distribution, named as a member); a
    student from it equals, bit for bit, one trained from a's native cache by a run with a as its one teacher."""
    from test_ensemble import _teachers

    base = cache_overrides(shared.data, tmp_path / "e", shared.teacher_file)
    ensemble = _teachers(tmp_path, {"a": 1, "b": 2})
    r = run_here(*base, ensemble, "publish.teacher=c", "stage=publish")
    assert r.returncode == 2 and "error: publish.teacher: no teacher 'c' among this run's teachers (a, b)" in r.stderr
    r = run_here(*base, "publish.teacher=a", "stage=publish")
    assert r.returncode == 2 and "error: publish.teacher: this run has one teacher" in r.stderr
    assert run_here(*base, ensemble).returncode == 0
    r = run_here(*base, ensemble, "publish.teacher=a", "stage=publish")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "e" / "runs" / "tiny"
    assert (run / "published-a" / "README.md").exists() and not (run / "published-b").exists()
    card = published.read_card(run / "published-a")
    assert card.ensemble_member == "a"
    text = (run / "published-a" / "README.md").read_text()
    assert "teacher `a` of an ensemble: its own distribution, not the ensemble's combination" in text
    assert " teachers=[] teacher.source=published teacher.path=FOLDER stage=student" in text
    assert run_here(*base, ensemble, "stage=publish").returncode == 0  # null: each teacher, into published-NAME
    assert published.read_card(run / "published-b").ensemble_member == "b"
    assert published.read_card(run / "published-a") == card  # the same publish of a's cache, replaced alike

    single = [a for a in cache_overrides(shared.data, tmp_path / "n", shared.teacher_file)
              if not a.startswith("teacher.checkpoint=")] + [f"teacher.checkpoint={tmp_path / 'teacher-a.safetensors'}"]
    r = run_here(*single, *STUDENT)  # a alone, labelling its own cache
    assert r.returncode == 0, r.stderr
    moved = shutil.copytree(run / "published-a", tmp_path / "pub")
    shutil.rmtree(tmp_path / "e")
    r = run_here(*_published_args(single, tmp_path / "b", moved), *STUDENT)
    assert r.returncode == 0, r.stderr
    _same_student(tmp_path / "n" / "runs" / "tiny", tmp_path / "b" / "runs" / "tiny")


def test_an_image_skipped_as_undecodable_has_no_row_and_is_listed_on_the_card(tmp_path):
    """data.on_bad_image=skip: the cache records the image that fails to decode; the published folder has no row
    of it and the card lists its key, so that a student from the folder (the same data) leaves it out as the native
    cache did, with no teacher.covered_only, and equals the native cache's student bit for bit."""
    from conftest import config_from, parquet_with_a_broken_image, random_teacher
    from distill import data
    from distill.data import content

    path = tmp_path / "broken.parquet"
    teacher = random_teacher(tmp_path / "t.safetensors")
    args = cache_overrides(path, tmp_path / "a", teacher) + ["data.on_bad_image=skip"]
    index = 3  # the training sample whose source row breaks
    parquet_with_a_broken_image(path, args, index)
    r = run_here(*args, *STUDENT)
    assert r.returncode == 0, r.stderr
    r = run_here(*args, "stage=publish")
    assert r.returncode == 0, r.stderr
    assert "1 image(s) that failed to decode left out (the card lists them)" in r.stderr
    folder = tmp_path / "a" / "runs" / "tiny" / "published"
    card = published.read_card(folder)
    bundle = data.load(config_from(args).data)
    bad = content.image_digests(bundle.train, bundle.image_column)[index].hex()
    assert card.rows == 47 and card.skipped_keys == [bad]
    assert bad not in pq_keys(folder)
    r = run_here(*_published_args(args, tmp_path / "b", folder), *STUDENT)
    assert r.returncode == 0, r.stderr
    assert "covered_only" not in r.stderr
    _same_student(tmp_path / "a" / "runs" / "tiny", tmp_path / "b" / "runs" / "tiny")


def pq_keys(folder: Path) -> list[str]:
    """Every row's key, read with pyarrow alone."""
    import pyarrow.parquet as pq

    return pq.read_table(sorted((folder / "data").glob("train-*.parquet")), columns=["key"]).column("key").to_pylist()


def test_published_folder_reads_with_datasets_and_pyarrow(shared, tmp_path):
    import datasets
    import pyarrow.parquet as pq

    _, folder = _publish(shared, tmp_path, **MIXED)
    ds = datasets.load_dataset(str(folder), split="train")
    assert len(ds) == 48 and {"key", "label", "kind", "top", "logits", "lse_rest", "partner_key"} <= set(ds.features)
    table = pq.read_table(sorted((folder / "data").glob("train-*.parquet")))
    assert table.num_rows == 48 and table.column("key").to_pylist() == ds["key"]
    logits = "fixed_size_list<element: fixed_size_list<element: halffloat>[3]>[3]"
    assert str(table.schema.field("logits").type) == logits
    card = (folder / "README.md").read_text()
    meta = json.loads(json.dumps(__import__("yaml").safe_load(card.split("---")[1])))["distill"]
    assert meta["rows"] == 48 and meta["teacher_model"] == "resnet8" and len(meta["shards"]) == 3


@pytest.fixture(scope="module")
def topk(shared, tmp_path_factory):
    """A top-2 cache (at T=4) published once: (its args, its folder); tests work on copies."""
    tmp = tmp_path_factory.mktemp("topk")
    args = cache_overrides(shared.data, tmp, shared.teacher_file, cache__topk=2)
    r = run_here(*args, "stage=cache")
    assert r.returncode == 0, r.stderr
    r = run_here(*args, "stage=publish")
    assert r.returncode == 0, r.stderr
    return args, tmp / "runs" / "tiny" / "published"


def test_hub_id_offline_through_snapshot_download(topk, tmp_path, monkeypatch):
    """The folder placed in huggingface_hub's cache layout, read by its Hub id with HF_HUB_OFFLINE=1."""
    from huggingface_hub import constants

    args, folder = topk
    repo = tmp_path / "hub" / "datasets--someone--tiny-soft-labels"
    shutil.copytree(folder, repo / "snapshots" / ("a" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert constants.HF_HUB_OFFLINE
    r = run_here(*_published_args(args, tmp_path, "someone/tiny-soft-labels"), "stage=cache")
    assert r.returncode == 0, r.stderr
    assert "from the published cache someone/tiny-soft-labels" in r.stderr
    r = run_here(*_published_args(args, tmp_path, f"someone/tiny-soft-labels@{'a' * 40}"), "stage=cache")
    assert r.returncode == 0, r.stderr
    assert f"someone/tiny-soft-labels@{'a' * 40}" in r.stderr and f"@{'a' * 12} (teacher resnet8" in r.stderr
    r = run_here(*_published_args(args, tmp_path, "someone/other"), "stage=cache")
    assert r.returncode == 2 and "teacher.path: someone/other is no local folder" in r.stderr


def _shard(folder: Path) -> Path:
    return sorted((folder / "data").glob("train-*.parquet"))[1]


def _card_yaml(folder: Path, change) -> None:
    import yaml

    text = (folder / "README.md").read_text()
    _, head, body = text.split("---", 2)
    meta = yaml.safe_load(head)
    change(meta["distill"])
    (folder / "README.md").write_text(f"---\n{yaml.safe_dump(meta)}---{body}")


def _other_data(tmp: Path, seed: int = 1, names=None) -> Path:
    import datasets

    from conftest import tiny_dataset

    ds = tiny_dataset(seed=seed)
    if names:
        ds = ds.cast_column("label", datasets.ClassLabel(names=names))
    path = tmp / "other.parquet"
    ds.to_parquet(str(path))
    return path


BAD = {
    "shard missing": (lambda f, t: _shard(f).unlink(), [], "is missing (the card"),
    "shard truncated": (lambda f, t: _shard(f).write_bytes(_shard(f).read_bytes()[:-100]), [], "truncated or edited"),
    "shard edited": (lambda f, t: _shard(f).write_bytes(_shard(f).read_bytes()[:-9] + b"x" +
                                                        _shard(f).read_bytes()[-8:]), [], "truncated or edited"),
    "card lacks a field": (lambda f, t: _card_yaml(f, lambda m: m.pop("data_checksum")), [],
                           "lacks the required field distill.data_checksum"),
    "card of a newer format": (lambda f, t: _card_yaml(f, lambda m: m.update(format_version=99)), [],
                               "is format 99, this distill reads up to 2"),
    "other images": (lambda f, t: None, lambda t: [f"data.path={_other_data(t)}"], "covers 0 of the 48"),
    "other classes": (lambda f, t: None, lambda t: [f"data.path={_other_data(t, 0, ['a', 'b', 'c'])}"],
                      "classes (3: red, green, blue...) are not the data's (3: a, b, c...)"),
    "other views": (lambda f, t: None, ["data.padding=3"], "data.padding: 3 renders other views than the published "
                                                           "cache's 2"),
    "other temperature": (lambda f, t: None, ["kd.temperature=2"], "kd.temperature: 2, but the published cache keeps "
                                                                    "the top 2 logits at T=4"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_published_cache_is_one_line(topk, tmp_path, case):
    damage, extra, line = BAD[case]
    args, folder = topk
    copy = shutil.copytree(folder, tmp_path / "pub")
    damage(copy, tmp_path)
    extra = extra(tmp_path) if callable(extra) else extra
    r = run_here(*_published_args(args, tmp_path, copy), *extra, *STUDENT)
    assert r.returncode == 2, r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and line in errors[0], r.stderr
    assert not (tmp_path / "runs" / "tiny" / "student").exists()  # before any work
    assert not list((tmp_path / "cache").glob("*/manifest.json"))


def test_publish_refuses_without_cache_and_into_a_foreign_folder(shared, tmp_path):
    args = cache_overrides(shared.data, tmp_path, shared.teacher_file)
    assert run_here(*args, "stage=teacher").returncode == 0
    r = run_here(*args, "stage=publish")
    assert r.returncode == 2 and "publish: no complete cache for these settings" in r.stderr, r.stderr
    assert run_here(*args, "stage=cache").returncode == 0
    out = tmp_path / "runs" / "tiny" / "published"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = run_here(*args, "stage=publish")
    assert r.returncode == 2 and "holds other files, not of this cache" in r.stderr, r.stderr
    (out / "notes.txt").unlink()
    assert run_here(*args, "stage=publish").returncode == 0
    assert run_here(*args, "stage=publish").returncode == 0  # a previous publish of the same cache: replaced
    r = run_here(*args, "cache.topk=2", "stage=cache")
    assert r.returncode == 0
    r = run_here(*args, "cache.topk=2", "stage=publish")
    assert r.returncode == 2 and "holds a publish of the cache" in r.stderr, r.stderr


def test_push_offline_refused_then_pushed_with_a_test_double(topk, monkeypatch):
    """No offline route exists for an upload: refused in one line offline (before any work); with a test double of
    huggingface_hub.HfApi (and a token), the folder goes to create_repo and upload_folder as a dataset repo."""
    import huggingface_hub

    from distill.store import hub

    args, folder = topk
    r = run_here(*args, "stage=publish", "publish.hub_repo=someone/tiny")
    assert r.returncode == 2 and "error: publish.hub_repo: offline (HF_HUB_OFFLINE=1)" in r.stderr, r.stderr
    calls = []

    class Api:
        def create_repo(self, repo, **kw):
            calls.append(("create_repo", repo, kw))

        def upload_folder(self, **kw):
            calls.append(("upload_folder", kw))

    monkeypatch.setattr(hub, "hub_problem", lambda: None)
    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    r = run_here(*args, "stage=publish", "publish.hub_repo=someone/tiny")
    assert r.returncode == 0, r.stderr
    assert calls[0] == ("create_repo", "someone/tiny", {"repo_type": "dataset", "exist_ok": True})
    assert calls[1][1]["folder_path"] == str(folder) and calls[1][1]["repo_type"] == "dataset"


def _docs_replay():
    """The `replay` function of docs/published.md's plain-PyTorch snippet, as written there."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "published.md").read_text()
    code = text.split("## The replay rule in plain PyTorch")[1].split("```python\n")[1].split("```")[0]
    scope: dict = {}
    exec(code, scope)
    return scope["replay"]


@pytest.mark.parametrize("transform", ["cifar", "imagenet"])
def test_the_docs_replay_snippet_gives_distills_pixels(transform):
    import numpy as np
    import torch

    from distill.config import DataCfg
    from distill.data import views

    replay = _docs_replay()
    cfg = DataCfg(image_size=16, transform=transform, padding=3, flip=True)
    rng = np.random.default_rng(0)
    for size in [(16, 16), (23, 31), (40, 17)]:
        image = torch.from_numpy(rng.integers(0, 256, (3, *size), dtype=np.uint8))
        for v in range(8):
            params = views.draw(cfg, views.rng_for(0, v, v), size) if v else views.EVAL_VIEW
            mine = replay(image, *params.tolist(), image_size=16, transform=transform, padding=3,
                          crop_pct=cfg.crop_pct)
            assert torch.equal(mine, views.apply(image, params, cfg)), (size, params)


def test_the_report_names_the_published_cache_as_the_teacher(topk, tmp_path):
    args, folder = topk
    copy = shutil.copytree(folder, tmp_path / "pub")
    r = run_here(*_published_args(args, tmp_path, copy), "kd.temperature=4", *STUDENT)
    assert r.returncode == 0, r.stderr
    assert f"from the published cache {copy} (teacher resnet8, top-1" in r.stderr
    assert "stale" not in r.stderr
    summary = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())
    assert summary["caches"]["teacher"]["published"]["teacher_model"] == "resnet8"
    assert "student" in summary["models"]
    r = run_here(*_published_args(args, tmp_path, copy), "kd.temperature=4", *STUDENT[1:], "stage=export",
                 "export.onnx=false")
    assert r.returncode == 0, r.stderr
    card = (tmp_path / "runs" / "tiny" / "export" / "README.md").read_text()
    assert f"the published cache {copy} (teacher resnet8, top-1" in card


def test_a_dense_published_cache_serves_any_temperature(topk):
    import dataclasses

    from conftest import CLASSES, config_from
    from distill.errors import ConfigError
    from distill.store import published
    from distill.training.teachers import published as published_teacher
    from distill.store.records import Normalization

    args, folder = topk
    card = published.read_card(folder)
    cfg = config_from(_published_args(args, folder.parent, folder) + ["kd.temperature=2"])
    dense = dataclasses.replace(card, topk=3, dense=True, temperature=1.0)
    published_teacher.check_settings(dense, cfg, Normalization.from_json(card.normalization), CLASSES)  # any T
    with pytest.raises(ConfigError, match="kd.temperature: 2, but the published cache keeps the top 2"):
        published_teacher.check_settings(card, cfg, Normalization.from_json(card.normalization), CLASSES)
    with pytest.raises(ConfigError, match="data.mean/data.std: the normalization"):
        published_teacher.check_settings(dense, cfg, Normalization.from_json({**card.normalization, "mean": [0.4] * 3}),
                                         CLASSES)


def test_covered_only_trains_on_the_covered_images_and_says_how_many(topk, tmp_path):
    from conftest import tiny_dataset

    args, folder = topk
    more = tmp_path / "more.parquet"
    tiny_dataset(n=72).to_parquet(str(more))  # the published images and 12 more (carved anew: some in val)
    base = _published_args(args, tmp_path, folder) + [f"data.path={more}", "kd.temperature=4"]
    r = run_here(*base, *STUDENT)
    assert r.returncode == 2 and "training images (" in r.stderr and "teacher.covered_only=true" in r.stderr, r.stderr
    r = run_here(*base, "teacher.covered_only=true", *STUDENT)
    assert r.returncode == 0, r.stderr
    assert "teacher.covered_only: training on the " in r.stderr
    assert " of 60 images the published cache covers" in r.stderr


@pytest.fixture(scope="module")
def from_cli(shared, tmp_path_factory):
    """A top-2 cache published by `python distill/run.py` (Hydra records the recipe and the overrides): (the run's
    args, the temporary folder, the published folder)."""
    from conftest import run_cli

    tmp = tmp_path_factory.mktemp("cli")
    args = cache_overrides(shared.data, tmp, shared.teacher_file, cache__topk=2)
    r = run_here(*args)
    assert r.returncode == 0, r.stderr
    r = run_cli(*args, "stage=publish", cwd=tmp)
    assert r.returncode == 0, r.stderr
    return args, tmp, tmp / "runs" / "tiny" / "published"


def test_the_cards_command_names_the_recipe_and_the_keys_and_trains_a_student(from_cli, tmp_path):
    args, _, folder = from_cli
    text = (folder / "README.md").read_text()
    (command,) = [line.strip() for line in text.splitlines() if line.strip().startswith("python distill/run.py")]
    given = [a for a in args if a.startswith("data.")]
    assert command == " ".join(["python distill/run.py", "recipe=demo", *given, "data.transform=cifar",
                                "kd.temperature=4", "teacher.source=published", "teacher.path=FOLDER", "stage=student",
                                "name=from_published"])
    keys = [a.replace("teacher.path=FOLDER", f"teacher.path={folder}") for a in command.split()[2:]]
    r = run_here(*keys, f"run_root={tmp_path / 'runs'}", f"cache.root={tmp_path / 'cache'}", "student.epochs=1",
                 "student.batch_size=16", "student.baseline=false")
    assert r.returncode == 0, r.stderr
    assert f"from the published cache {folder}" in r.stderr
    assert (tmp_path / "runs" / "from_published" / "student" / "model.safetensors").exists()


def test_two_processes_publish_the_one_process_bytes(from_cli, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` (two CPU processes on gloo): the main process writes, the
    other waits; the shards and the card are byte for byte those of one process."""
    from test_multiprocess import _files, _finish, _launch

    args, tmp, folder = from_cli
    two = [a for a in args if not a.startswith("run_root=")] + [
        f"run_root={tmp_path / 'runs'}", f"teacher.dir={tmp / 'runs' / 'tiny' / 'teacher'}", "stage=publish"]
    (r,) = _finish(_launch(tmp_path, two))
    assert r.returncode == 0, r.stderr
    again = tmp_path / "runs" / "tiny" / "published"
    assert _files(again / "data") == _files(folder / "data") and len(_files(folder / "data")) == 3
    assert (again / "README.md").read_bytes() == (folder / "README.md").read_bytes()


def test_the_card_states_the_test_split_score_where_the_run_has_one_and_the_licence(shared, tmp_path):
    """With data.test_split the teacher's score is its top-1 on that split (its test.json), named as such; without,
    the validation split's. publish.license is the card's YAML `license`; without it the card states none."""
    from huggingface_hub import DatasetCard

    from conftest import tiny_dataset

    path = tmp_path / "tiny.parquet"
    tiny_dataset().to_parquet(str(path))
    tiny_dataset(n=15, seed=5).to_parquet(str(tmp_path / "test.parquet"))  # its sibling: the test split
    args = cache_overrides(path, tmp_path, shared.teacher_file) + ["data.test_split=test"]
    assert run_here(*args).returncode == 0  # the report scores the teacher on the test split
    test = json.loads((tmp_path / "runs" / "tiny" / "teacher" / "test.json").read_text())["metrics"]
    r = run_here(*args, "stage=publish", "publish.license=cc-by-4.0")
    assert r.returncode == 0, r.stderr
    folder = tmp_path / "runs" / "tiny" / "published"
    card = published.read_card(folder)
    assert (card.teacher_top1, card.teacher_split, card.license) == (test["top1"], "test", "cc-by-4.0")
    assert card.teacher_scored_on == "held-out test split 'test' (15 images)"
    assert DatasetCard.load(folder / "README.md").data.license == "cc-by-4.0"
    text = (folder / "README.md").read_text()
    assert f"top-1 {test['top1']:.2f}%\n  on the held-out test split 'test' (15 images) (`teacher_split`: test)" in text
    assert "- **Licence**: `cc-by-4.0`" in text

    (tmp_path / "runs" / "tiny" / "teacher" / "test.json").unlink()  # a score no longer there: refused, not guessed
    r = run_here(*args, "stage=publish")
    assert r.returncode == 2 and "has no score on the test split 'test' for its weights; run stage=teacher" in r.stderr
    assert published.read_card(folder) == card  # nothing lost

    meta = json.loads((tmp_path / "runs" / "tiny" / "teacher" / "meta.json").read_text())["metrics"]
    r = run_here(*[a for a in args if not a.startswith("data.test_split")], "stage=publish")
    assert r.returncode == 0, r.stderr
    card = published.read_card(folder)
    assert (card.teacher_top1, card.teacher_split, card.license) == (meta["top1"], "validation", None)
    assert card.teacher_scored_on == "validation split (12 images, not trained on)"
    assert "license" not in DatasetCard.load(folder / "README.md").data.to_dict()
    assert "- **Licence**: not stated by the publisher." in (folder / "README.md").read_text()


def test_partner_keys_are_gathered_as_the_per_image_conversion_wrote_them():
    """The vectorized partner-index -> content-key column: the values, nulls and parquet bytes of the per-image
    Python conversion it replaced (keys with zero bytes at either end included)."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    keys = [rng.bytes(16) for _ in range(30)] + [b"\x00" * 15 + b"\x01", b"ab" + b"\x00" * 14]
    for unmixed in (0.0, 0.3, 1.0):
        partners = rng.integers(0, len(keys), (len(keys), 4)).astype(np.int32)
        partners[rng.random(partners.shape) < unmixed] = published.NO_PARTNER
        per_image = pa.array([None if p == published.NO_PARTNER else keys[p] for p in partners.reshape(-1).tolist()],
                             pa.binary(16))
        got = published._partner_keys(partners.reshape(-1), keys)
        assert got.equals(per_image) and got.null_count == per_image.null_count
        written = []
        for column in (per_image, got):
            buf = io.BytesIO()
            pq.write_table(pa.table({"partner_key": column}), buf, compression="zstd", write_statistics=False)
            written.append(buf.getvalue())
        assert written[0] == written[1]
