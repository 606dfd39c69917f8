"""The student as a deliverable: the held-out test split, the export folder (timm, ONNX, model card), the hub push
and `python -m distill.predict`."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, cache_overrides, run_here, tiny_dataset
from distill import config, data, files
from distill.data import transforms, views
from distill.store import artifacts
from distill.training import models
from distill.stages import export


@pytest.fixture(scope="module")
def tested(shared, tmp_path_factory):
    """A tiny run through stage=export with a held-out test split: the sibling test.parquet of the data file."""
    tmp = tmp_path_factory.mktemp("tested")
    tiny_dataset(30, seed=7).to_parquet(str(shared.data.with_name("test.parquet")))
    shared.copy_cache(tmp)
    args = cache_overrides(shared.data, tmp, shared.teacher_file) + [
        "stage=export", "student.epochs=1", "student.batch_size=16", "student.baseline=true",
        "data.test_split=test"]
    r = run_here(*args)
    assert r.returncode == 0, r.stderr
    return tmp / "runs" / "tiny", args, r


def test_every_model_is_scored_on_the_test_split_which_trains_nothing(tested, shared):
    run, args, _ = tested
    summary = json.loads((run / "summary.json").read_text())
    for name in ("teacher", "student", "baseline"):
        m = summary["models"][name]
        assert m["test_count"] == 30 and 0 <= m["test_top1"] <= 100 and m["val_count"] == 12, name
    assert "kd_gain_test_top1" in summary
    assert json.loads((run / "cache.json").read_text())["reused"]  # the same cache as without a test split
    metas = {name: (run / name / "meta.json").read_bytes() for name in ("student", "baseline")}
    again = run_here(*[a for a in args if not a.startswith("data.test_split")])  # no test split at all
    assert again.returncode == 0, again.stderr
    assert {name: (run / name / "meta.json").read_bytes() for name in metas} == metas  # nothing retrained
    assert "test_top1" not in json.loads((run / "summary.json").read_text())["models"]["student"]
    scored = {name: (run / name / "test.json").read_bytes() for name in ("student", "baseline")}
    assert run_here(*args).returncode == 0
    assert {name: (run / name / "test.json").read_bytes() for name in scored} == scored  # read back, not redone
    assert "test_top1" in json.loads((run / "summary.json").read_text())["models"]["student"]
    files.write_sealed(run / "student" / "test.json", {"key": {}, "metrics": {}})  # another weights' score
    assert run_here(*args).returncode == 0
    assert (run / "student" / "test.json").read_bytes() == scored["student"]  # scored again: the same number


@pytest.mark.parametrize("record, field, line", [
    ("student/test.json", "metrics", "student: {path} was changed after it was written; restore it, or delete it to "
                                     "score the student again"),
    ("cache.json", "wall_s", "cache: {path} was changed after it was written; restore it, or delete it and run "
                             "stage=cache to write it again")])
def test_a_record_beside_the_run_changed_by_hand_is_refused_in_one_line(tested, record, field, line):
    """A number the report would show as measured (sealed, as meta.json is): never shown once changed by hand."""
    run, args, _ = tested
    path = run / record
    kept = path.read_bytes()
    edited = json.loads(kept)
    edited[field] = {"top1": 99.0} if field == "metrics" else 0.5
    path.write_text(json.dumps(edited))
    try:
        r = run_here(*args)
    finally:
        path.write_bytes(kept)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == "error: " + line.format(path=path)


def test_a_test_split_that_is_the_training_split_is_refused(shared, tmp_path):
    r = run_here(*cache_overrides(shared.data, tmp_path, shared.teacher_file), "data.test_split=train")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == "error: data.test_split: 'train' is also data.train_split; the test " \
                                                "split must be held out"
    r = run_here(*cache_overrides(shared.data, tmp_path, shared.teacher_file), "data.test_split=nosuch")
    assert r.returncode == 2 and "data.test_split: no split 'nosuch'" in r.stderr.strip().splitlines()[-1]


def _student(run):
    meta = json.loads((run / "student" / "meta.json").read_text())
    net = models.create(meta["model"], meta["num_classes"])
    net.load_state_dict(artifacts.load_weights(run / "student"))
    return net.eval(), meta


def test_the_export_loads_with_plain_timm_and_gives_the_students_logits(tested):
    import timm

    import distill  # noqa: F401  (what the card tells a user to import: registers the CIFAR ResNets)
    run, _, _ = tested
    loaded = timm.create_model(f"local-dir:{run / 'export'}", pretrained=True).eval()
    net, meta = _student(run)
    x = torch.randn(5, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    cfg = timm.data.resolve_data_config({}, model=loaded)
    assert cfg["input_size"] == (3, 12, 12) and list(cfg["mean"]) == [0.5] * 3 and list(cfg["std"]) == [0.25] * 3
    assert json.loads((run / "export" / "config.json").read_text())["label_names"] == meta["class_names"]


def test_onnx_matches_pytorch_on_a_batch_of_images(tested, shared):
    onnxruntime = pytest.importorskip("onnxruntime")
    run, _, _ = tested
    cfg = config.DataCfg(path=str(shared.data), val_size=12, image_size=12)
    images = data.load(cfg).images["val"]
    x = transforms.ToInput(cfg, [0.5] * 3, [0.25] * 3)(
        data.Views(image=torch.stack([images.image(i) for i in range(12)])))
    got = onnxruntime.InferenceSession(str(run / "export" / "model.onnx")).run(None, {"input": x.numpy()})[0]
    net, _ = _student(run)
    with torch.no_grad():
        assert np.abs(got - net(x).numpy()).max() < 1e-4
    assert json.loads((run / "export" / "export.json").read_text())["checks"]["onnx_max_abs_diff"] < 1e-4


def test_the_documented_onnxruntime_example_runs_as_written(tested, tmp_path, monkeypatch, capsys):
    """The stages page's onnxruntime example, run as written (its export folder and image stand in), prints the
    class that `python -m distill.predict` ranks first."""
    pytest.importorskip("onnxruntime")
    from distill import predict
    from test_docs import FENCE

    page = (ROOT / "docs" / "stages.md").read_text()
    code = next(m.group(2) for m in FENCE.finditer(page) if m.group(1) == "python" and "onnxruntime" in m.group(2))
    run, _, _ = tested
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "export").symlink_to(run / "export")
    pixels = np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "digit.png")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "stages.md", "exec"), {})
    assert capsys.readouterr().out.strip() == predict.predict(run / "export", [tmp_path / "digit.png"], top=1)[0][0][0]


def test_the_model_card_shows_the_runs_numbers(tested):
    run, _, _ = tested
    card = (run / "export" / "README.md").read_text()
    summary = json.loads((run / "summary.json").read_text())
    for name, m in summary["models"].items():
        assert f"| {name} | `{m['model']}` |" in card
        assert f"{m['top1']:.2f}% ({m['val_count']} images)" in card and f"{m['test_top1']:.2f}% (30 images)" in card
    assert "import distill  # registers the CIFAR ResNets" in card
    assert "model.onnx" in card  # named either way: as a file, or how to add it (pip install -e ".[export]")


def test_export_is_reused_when_up_to_date_and_redone_when_the_student_changes(tested):
    run, args, _ = tested
    before = (run / "export" / "export.json").read_bytes()
    assert run_here(*args).returncode == 0
    assert (run / "export" / "export.json").read_bytes() == before
    assert run_here(*args, "student.optim.lr=0.05").returncode == 0  # another student: another export
    assert json.loads((run / "export" / "export.json").read_text())["student_weights_sha256"] == \
        json.loads((run / "student" / "meta.json").read_text())["weights_sha256"]
    assert (run / "export" / "export.json").read_bytes() != before


def test_without_onnx_the_rest_is_exported_and_the_card_says_how(shared, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "_have_onnx", lambda: False)
    shared.copy_cache(tmp_path)
    r = run_here(*cache_overrides(shared.data, tmp_path, shared.teacher_file), "stage=export", "student.epochs=1",
                 "student.batch_size=16")
    assert r.returncode == 0, r.stderr
    folder = tmp_path / "runs" / "tiny" / "export"
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md", "export.json"}
    assert 'pip install -e ".[export]"' in (folder / "README.md").read_text() and ".[export]" in r.stderr


def test_a_push_while_offline_says_what_to_do_in_one_line(tested, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    run, args, _ = tested
    r = run_here(*args, "export.hub_repo=someone/tiny")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: export.hub_repo: offline (HF_HUB_OFFLINE=1), nothing pushed; fix "
                                             "that, or drop export.hub_repo (checked before any work)"]  # no work


def test_the_demo_ends_with_its_export_and_predict_gives_the_students_top1(demo, tmp_path):
    from distill import predict
    where, r = demo
    folder = where / "runs" / "demo" / "export"
    assert f"export: {folder} (load it with timm.create_model" in r.stderr
    assert (folder / "model.onnx").exists() or not export._have_onnx()
    from conftest import compose_recipe
    from distill import config
    cfg = config.validate(compose_recipe("demo"))
    bundle = data.load(cfg.data)
    net, meta = _student(where / "runs" / "demo")
    norm = meta["normalization"]
    images = bundle.images["val"]
    for i in range(3):  # a few validation digits, as PNG files a user would pass
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(images.image(i).permute(1, 2, 0).numpy()).save(path)
        view = views.apply(images.image(i), views.EVAL_VIEW, cfg.data)  # the student's own evaluation view
        x = transforms.ToInput(cfg.data, norm["mean"], norm["std"])(data.Views(image=view[None]))
        with torch.no_grad():
            want = meta["class_names"][int(net(x).argmax())]
        (ranked,) = predict.predict(folder, [path])
        assert len(ranked) == 5 and ranked[0][0] == want and ranked[0][1] >= ranked[1][1]
        assert sum(p for _, p in ranked) <= 1.0 + 1e-6
    assert predict.main([str(folder), str(tmp_path / "digit0.png")]) == 0


def test_import_distill_is_light_and_registers_the_cifar_resnets_once_timm_loads():
    """What the card tells a user: `import distill`, then timm finds resnet8; and importing distill alone (as
    `--help` and config errors do) loads neither torch nor timm."""
    import os
    import subprocess
    import sys

    from conftest import ROOT
    code = ("import sys, distill; assert 'torch' not in sys.modules and 'timm' not in sys.modules; "
            "import timm; assert timm.is_model('resnet8') and timm.is_model('resnet32x4')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr


def _exported(shared, tmp_path) -> tuple[list[str], Path]:
    """A tiny student exported (one epoch, from the shared cache): the run's settings and its export folder."""
    shared.copy_cache(tmp_path)
    args = [*cache_overrides(shared.data, tmp_path, shared.teacher_file), "stage=export", "student.epochs=1",
            "student.batch_size=16", "student.baseline=false"]
    assert run_here(*args).returncode == 0
    return args, tmp_path / "runs" / "tiny" / "export"


def test_a_damaged_export_is_rebuilt_not_reused_and_predict_answers_bad_input_in_one_line(shared, tmp_path, capsys):
    from distill import predict
    args, out = _exported(shared, tmp_path)
    weights = out / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:len(good) // 2])  # truncated
    capsys.readouterr()
    assert predict.main([str(out), "x.png"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {weights} fails the checksum export.json recorded; rerun stage=export to rebuild it"]
    r = run_here(*args)
    assert r.returncode == 0 and f"export: {weights} is missing or fails its checksum; rebuilding" in r.stderr
    assert weights.read_bytes() == good  # rebuilt: the same student, the same file
    for argv, line in (([str(out), "x.png", "--top", "-3"], "error: --top: -3 classes; give at least 1"),):
        assert predict.main(argv) == 2 and capsys.readouterr().err.strip().splitlines() == [line]
    weights.unlink()
    assert predict.main([str(out), "x.png"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {out}: no model.safetensors; give the export folder of a run (<run>/export)"]


def test_predict_takes_a_folder_for_the_image_files_under_it(shared, tmp_path, capsys):
    """A folder: every image file under it, subfolders too, sorted by path (other files left out); a folder with
    none is one line (a folder was "not a readable image")."""
    from distill import predict
    _, out = _exported(shared, tmp_path)
    images = tmp_path / "images"
    (images / "b").mkdir(parents=True)
    for i, name in enumerate(("b/2.png", "1.JPG", "a.png")):
        Image.fromarray(np.full((12, 12, 3), 60 * i, np.uint8)).save(images / name, format="PNG" if i != 1 else "JPEG")
    (images / "notes.txt").write_text("not an image")
    capsys.readouterr()
    assert predict.main([str(out), str(images), "--top", "1"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[::2] == [str(images / "1.JPG"), str(images / "a.png"), str(images / "b" / "2.png")]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("")
    assert predict.main([str(out), str(empty)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {empty}: no image files in this folder or its subfolders (files with a suffix Pillow reads, such as "
        ".png or .jpg)"]
