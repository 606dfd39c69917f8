"""Bad-input probe (not a test): runs `python distill/run.py` on bad inputs to the ensemble, feature, token and
hard-label features, and a few general ones, and says what each gave.

A bad input must give one line, `error: ...` naming the setting key or the file it is about, with exit status 2 and
no traceback (verdict `good`); a traceback is `traceback`; anything else is `check`: most often exit 0 on an input
that should have been refused, which may be a silent wrong result. A few cases are legitimate inputs, declared so
(`accepted`: exit 0, and the warning named with it when the input cannot act). The probe writes its own tiny,
learnable data set (12 px images, 3 classes, 60 images) and its variants, and seeded random teacher checkpoint
files, so no teacher trains unless a case asks for it; then runs each case as its own process, one at a time, in a
folder of its own, with HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 and a timeout.

    python tools/probe.py                         # every case; the table on stdout, probe.json in --out
    python tools/probe.py -k ensemble             # the cases whose name holds 'ensemble'
    python tools/probe.py --data my.parquet --out /tmp/probe   # another base data set (square images)

Prints a markdown table (case, its overrides with the probe's paths as @NAMES@, exit status, whether stderr holds a
traceback, what the run left on disk, the last stderr line, the verdict) and writes it as JSON to
<out>/probe.json, with each case's full command and stderr tail; then lists the unexpected verdicts, and the
refusals that came after some work (a teacher or cache already on disk). Exits 1 when a case's verdict is
`traceback` or not one it expects. Each case's folder stays under <out>/cases/NAME for a look.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TRACEBACK = "Traceback (most recent call last)"
CLASSES = ["red", "green", "blue"]
VIT = "student.model_args={img_size: @SIZE@, patch_size: 4, depth: 1, embed_dim: 24, num_heads: 2}"
DEIT = ["student.model=deit_tiny_distilled_patch16_224", VIT, "student.init=timm", "student.zero_gamma=false",
        "student.optim.name=adamw", "student.optim.lr=0.001"]
TWO = "teachers=[{name: a}, {name: b, checkpoint: '@TEACHER2@'}]"


@dataclass
class Case:
    """One run: `args` added to (and replacing the same keys of) the base overrides, `drop` taken from them.
    `expect`: the verdicts that are right for it; `names`: a regex the error line must match (a key or a file;
    @NAMES@ are literal paths); `warns`: a regex stderr must match when the run is accepted; `note`: why the
    expectation is what it is."""
    name: str
    args: list[str]
    names: str = ""
    expect: tuple[str, ...] = ("good",)
    warns: str = ""
    drop: tuple[str, ...] = ()
    env: dict = field(default_factory=dict)
    note: str = ""


def _accepted_or_said(key: str, regex: str | None = None) -> dict:
    """A setting that cannot act with the rest: refused, or accepted with a line naming it (`regex`: how)."""
    regex = regex or re.escape(key)
    return dict(names=regex, expect=("good", "accepted"), warns=regex,
                note=f"{key} cannot act here: refused, or said once (README: a setting that cannot act is said once)")


CASES = [
    # ---------------------------------------------------------------- ensembles
    Case("ensemble_duplicate_names", ["teachers=[{name: a}, {name: a, seed: 1}]"], "teachers.a"),
    Case("ensemble_weights_count", [TWO, "kd.teacher_weights=[1.0]"], "kd.teacher_weights"),
    Case("ensemble_weights_negative", [TWO, "kd.teacher_weights=[1.0,-1.0]"], "kd.teacher_weights"),
    Case("ensemble_weights_nan", [TWO, "kd.teacher_weights=[nan,1.0]"], "kd.teacher_weights"),
    Case("ensemble_weights_all_zero", [TWO, "kd.teacher_weights=[0.0,0.0]"], "kd.teacher_weights"),
    Case("ensemble_weights_without_teachers", ["kd.teacher_weights=[1.0,2.0]"], "kd.teacher_weights"),
    Case("ensemble_entry_without_name", ["teachers=[{model: resnet8}]"], r"teachers\[0\]"),
    Case("ensemble_entry_not_a_section", ["teachers=[a, b]"], "teachers"),
    Case("ensemble_not_a_list", ["teachers=resnet8"], "teachers"),
    Case("ensemble_name_teacher", ["teachers=[{name: teacher}]"], "teachers.teacher"),
    Case("ensemble_name_is_a_path", ["teachers=[{name: '../up'}]"], "teachers."),
    Case("ensemble_unknown_key", ["teachers=[{name: a, lr: 0.1}]"], "teachers.a"),
    Case("ensemble_model_typo", ["teachers=[{name: a}, {name: b, model: resnet2O}]"], "teachers.b.model"),
    Case("ensemble_model_cannot_take_images", ["teachers=[{name: a}, {name: b, model: vit_tiny_patch16_224, "
                                               "checkpoint: null}]"], "teachers.b.model"),
    Case("ensemble_lr_inf", ["teachers=[{name: a, optim: {lr: inf}}]"], "teachers.a.optim.lr"),
    Case("ensemble_epochs_negative", ["teachers=[{name: a, epochs: -1}]"], "teachers.a.epochs"),
    Case("ensemble_train_zero_epochs", ["teachers=[{name: a, source: train, epochs: 0}]"], "teachers.a.epochs"),
    Case("ensemble_one_dir_for_two", ["teachers=[{name: a, dir: '@CASE@/t'}, {name: b, dir: '@CASE@/t'}]"],
         "teachers"),
    Case("ensemble_rule_unknown", [TWO, "kd.ensemble=median"], "kd.ensemble"),
    Case("ensemble_checkpoint_missing", ["teachers=[{name: a}, {name: b, checkpoint: '@CASE@/missing.safetensors'}]"],
         "@CASE@/missing.safetensors"),
    Case("ensemble_checkpoint_other_architecture", ["teachers=[{name: a}, {name: b, model: resnet14}]"],
         "@TEACHER@", note="teacher b's model is resnet14, its checkpoint (the teacher section's) a resnet8"),
    Case("ensemble_checkpoint_with_source_train", ["teachers=[{name: a, checkpoint: '@TEACHER@'}, "
                                                   "{name: b, checkpoint: '@TEACHER2@'}]"],
         drop=("teacher.source", "teacher.checkpoint"),
         **_accepted_or_said("teachers.a.checkpoint", r"teachers\.a\.(checkpoint|source)")),
    Case("ensemble_rule_with_one_teacher", ["kd.ensemble=mean_logits"], **_accepted_or_said("kd.ensemble")),
    Case("ensemble_checkpoint_missing_after_training",
         ["teachers=[{name: a, source: train, checkpoint: null}, {name: b, checkpoint: '@CASE@/missing.safetensors'}]"],
         "@CASE@/missing.safetensors", note="teacher b's file is missing; teacher a trains from scratch first"),
    Case("ensemble_cache_over_max_gb", [TWO, "cache.max_gb=0.0000001"], "cache.max_gb"),
    # ---------------------------------------------------------------- feature distillation
    Case("feature_cached_without_cache_features", ["kd.feature_weight=1"], "cache.features"),
    Case("feature_weight_negative", ["kd.feature_weight=-1", "cache.features=true"], "kd.feature_weight"),
    Case("feature_weight_inf", ["kd.feature_weight=inf", "cache.features=true"], "kd.feature_weight"),
    Case("feature_weight_huge", ["kd.feature_weight=1e38", "cache.features=true"], "kd.feature_weight"),
    Case("feature_weight_string", ["kd.feature_weight=high", "cache.features=true"], "kd.feature_weight"),
    Case("feature_loss_unknown", ["kd.feature_weight=1", "cache.features=true", "kd.feature_loss=l1"],
         "kd.feature_loss"),
    Case("feature_cache_features_not_bool", ["cache.features=maybe"], "cache.features"),
    Case("feature_with_two_teachers", [TWO, "kd.feature_weight=1", "cache.features=true"], "kd.feature_weight"),
    Case("feature_cache_over_max_gb", ["kd.feature_weight=1", "cache.features=true", "cache.max_gb=0.00001"],
         "cache.max_gb"),
    Case("feature_max_gb_zero", ["cache.max_gb=0"], "cache.max_gb"),
    Case("feature_loss_without_weight", ["kd.feature_loss=cosine"], **_accepted_or_said("kd.feature_loss")),
    Case("feature_cache_features_online", ["kd.teacher=online", "cache.features=true"],
         **_accepted_or_said("cache.features")),
    # ---------------------------------------------------------------- token distillation
    Case("token_without_distillation_head", ["kd.token=soft"], "kd.token"),
    Case("token_hard_with_dkd", ["kd.token=hard", "kd.loss=dkd", *DEIT], "kd.token"),
    Case("token_hard_with_dist", ["kd.token=hard", "kd.loss=dist", *DEIT], "kd.token"),
    Case("token_unknown_value", ["kd.token=medium", *DEIT], "kd.token"),
    Case("token_deit_at_224_on_12px", ["kd.token=soft", "student.model=deit_tiny_distilled_patch16_224"],
         "student.model_args.img_size"),
    Case("token_heads_do_not_divide_width", ["kd.token=soft", *DEIT,
                                             "student.model_args={img_size: @SIZE@, patch_size: 4, depth: 1, "
                                             "embed_dim: 24, num_heads: 5}"], "student.model_args"),
    Case("token_model_args_unknown_key", ["kd.token=soft", *DEIT, "student.model_args={img_size: @SIZE@, bogus: 1}"],
         "student.model_args"),
    Case("token_model_args_not_a_dict", ["kd.token=soft", *DEIT, "student.model_args=12"], "student.model_args"),
    Case("token_model_args_on_a_resnet", ["student.model_args={img_size: @SIZE@}"], "student.model_args"),
    Case("token_without_head_online", ["kd.token=hard", "kd.loss=hard", "kd.teacher=online"], "kd.token"),
    Case("token_recipe_model_args_unknown_key",
         ["recipe=cifar10_resnet20_to_deit_token", "data.test_split=null",
          "student.model_args={img_size: @SIZE@, patch_size: 4, depth: 1, embed_dim: 24, num_heads: 2, bogus: 1}"],
         "student.model_args", note="the recipe sets student.model_args; the override adds a key timm does not take"),
    Case("token_recipe_model_args_timm_key",
         ["recipe=cifar10_resnet20_to_deit_token", "data.test_split=null", "data.image_column=image",
          "student.model_args={img_size: @SIZE@, patch_size: 4, depth: 1, embed_dim: 24, num_heads: 2, "
          "drop_path_rate: 0.1}"], expect=("accepted",),
         note="legitimate: a timm argument (drop_path_rate) the recipe's student.model_args does not set"),
    Case("token_soft_with_dkd", ["kd.token=soft", "kd.loss=dkd", *DEIT], expect=("accepted",),
         note="legitimate: the distillation head learns with DKD"),
    Case("token_with_feature_online", ["kd.token=soft", "kd.feature_weight=1", "kd.teacher=online", *DEIT],
         expect=("good", "accepted"), names="kd.feature_weight",
         note="a distilled ViT's pooled feature with token distillation: run, or refused in one line"),
    # ---------------------------------------------------------------- hard-label distillation
    Case("hard_smoothing_one", ["kd.loss=hard", "kd.hard.smoothing=1.0"], "kd.hard.smoothing"),
    Case("hard_smoothing_negative", ["kd.loss=hard", "kd.hard.smoothing=-0.1"], "kd.hard.smoothing"),
    Case("hard_smoothing_nan", ["kd.loss=hard", "kd.hard.smoothing=nan"], "kd.hard.smoothing"),
    Case("hard_smoothing_string", ["kd.loss=hard", "kd.hard.smoothing=some"], "kd.hard.smoothing"),
    Case("hard_logit_standardization", ["kd.loss=hard", "kd.logit_standardization=true"],
         "kd.logit_standardization"),
    Case("hard_alpha_above_one", ["kd.loss=hard", "kd.alpha=2"], "kd.ce_weight"),
    Case("hard_loss_name_case", ["kd.loss=HARD"], "kd.loss"),
    Case("hard_smoothing_without_hard", ["kd.loss=kd", "kd.hard.smoothing=0.1"],
         **_accepted_or_said("kd.hard.smoothing")),
    # ---------------------------------------------------------------- general
    Case("checkpoint_missing", ["teacher.checkpoint=@CASE@/missing.safetensors"], "@CASE@/missing.safetensors"),
    Case("checkpoint_garbage", ["teacher.checkpoint=@GARBAGE@"], "@GARBAGE@"),
    Case("checkpoint_empty_pth", ["teacher.checkpoint=@EMPTY@"], "@EMPTY@"),
    Case("checkpoint_unsafe_pickle", ["teacher.checkpoint=@PICKLE@"], "@PICKLE@"),
    Case("checkpoint_is_a_folder", ["teacher.checkpoint=@CASE@"], "@CASE@"),
    Case("checkpoint_other_architecture", ["teacher.checkpoint=@WIDE@"], "@WIDE@"),
    Case("checkpoint_other_class_count", ["teacher.checkpoint=@TEN@"], "teacher.finetune.epochs"),
    Case("checkpoint_with_source_train", [], drop=("teacher.source",),
         **_accepted_or_said("teacher.checkpoint", r"teacher\.(checkpoint|source)")),
    Case("finetune_with_source_train", ["teacher.finetune.epochs=1"], drop=("teacher.source",),
         **_accepted_or_said("teacher.finetune.epochs", r"teacher\.(finetune|source)")),
    Case("timm_teacher_without_weights", ["teacher.pretrained=false"], drop=("teacher.checkpoint",),
         names=r"teacher\.(pretrained|checkpoint|source|finetune)",
         note="a timm teacher with neither hub weights nor a checkpoint nor training: random weights"),
    Case("timm_teacher_without_weights_10_classes", ["data.path=@TENDATA@", "teacher.pretrained=false"],
         drop=("teacher.checkpoint",), **_accepted_or_said("teacher.pretrained", r"teacher\.(pretrained|source)")),
    Case("temperature_inf", ["kd.temperature=inf"], "kd.temperature"),
    Case("alpha_nan", ["kd.alpha=nan"], "kd.alpha"),
    Case("val_size_inf", ["data.val_size=inf"], "data.val_size"),
    Case("student_lr_nan", ["student.optim.lr=nan"], "student.optim.lr"),
    Case("student_epochs_zero", ["student.epochs=0"], "student.epochs"),
    Case("fault_at_zero", [], "DISTILL_FAULT", env={"DISTILL_FAULT": "student:0:KILL"}),
    Case("fault_misspelt_stage", [], "DISTILL_FAULT", env={"DISTILL_FAULT": "studnet:1:KILL"}),
    Case("path_with_a_space_unquoted", ["data.path=@SPACED_HEAD@", "@SPACED_TAIL@"], "data.path"),
    Case("label_out_of_range", ["data.path=@BADLABEL@"], "@BADLABEL@"),
    Case("parquet_with_no_rows", ["data.path=@EMPTYDATA@"], "@EMPTYDATA@"),
    Case("parquet_that_is_text", ["data.path=@TEXTDATA@"], "@TEXTDATA@"),
    Case("test_split_is_the_training_file", ["data.test_split=@DATA@"], "@DATA@"),
    Case("setting_misspelt", ["kd.tokens=soft"], "kd.tokens"),
]


def base_overrides() -> list[str]:
    """tests/conftest.py's tiny recipe: the tiny data, a resnet8 teacher loaded from a seeded random checkpoint, a
    small cache, a 1-epoch resnet8 student without baseline, stage=student (no export)."""
    return ["data.path=@DATA@", "data.source=auto", "data.val_size=12", "data.image_size=@SIZE@",
            "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]", "data.num_workers=0", "run_root=@CASE@/runs",
            "name=tiny", "precision=no", "teacher.model=resnet8", "teacher.epochs=1", "teacher.batch_size=16",
            "teacher.optim.lr=0.4", "teacher.source=timm", "teacher.checkpoint=@TEACHER@",
            "cache.root=@CASE@/cache", "cache.shard_size=16", "cache.batch_size=24", "cache.views=2", "cache.topk=3",
            "student.epochs=1", "student.batch_size=16", "student.baseline=false", "checkpoint.every=0",
            "stage=student"]


def last_wins(args: list[str]) -> list[str]:
    """`args` with each key's last value only (Hydra would merge a dict given twice)."""
    last = {a.split("=", 1)[0]: i for i, a in enumerate(args) if "=" in a}
    return [a for i, a in enumerate(args) if "=" not in a or last[a.split("=", 1)[0]] == i]


def command_args(case: Case) -> list[str]:
    """The base overrides less `drop`, then the case's own; a key set twice keeps its last value."""
    return last_wins([a for a in base_overrides() if a.split("=", 1)[0] not in case.drop] + case.args)


# ---------------------------------------------------------------------------- the data and the teacher files

def tiny_images(n: int):
    """tests/conftest.py's tiny images (the dominant colour is the class): the probe's data is the tests' data."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import tiny_images as images

    return images(n)


def write_parquet(path: Path, n: int = 60, labels: list[int] | None = None, classes: int = 3) -> Path:
    """The tiny data set as parquet (`classes` > 3: the images cycle over them, named c0, c1, ...); `labels`
    written over the label column as they are (unchecked)."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    images, own = tiny_images(n)
    names = CLASSES if classes == 3 else [f"c{i}" for i in range(classes)]
    own = own if classes == 3 else [i % classes for i in range(n)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    datasets.Dataset.from_dict({"image": images, "label": own}, features=features).to_parquet(str(path))
    if labels is not None:
        table = pq.read_table(path)
        i = table.schema.get_field_index("label")
        pq.write_table(table.set_column(i, table.schema.field(i), pa.array(labels, table.schema.field(i).type)), path)
    return path


def data_shape(path: Path) -> tuple[int, int]:
    """(image side, class count) of a parquet file in the hub's layout (ClassLabel names, else the largest label)."""
    import datasets

    ds = datasets.Dataset.from_parquet(str(path))
    label = ds.features["label"]
    classes = len(label.names) if hasattr(label, "names") else max(ds["label"]) + 1
    return ds[0]["image"].size[0], classes


def random_teacher(path: Path, model: str, classes: int, seed: int) -> Path:
    """A timm checkpoint file with seeded random weights: a teacher without training time."""
    import timm
    import torch
    from safetensors.torch import save_file

    import distill.training.models  # noqa: F401  (registers the CIFAR ResNets)

    torch.manual_seed(seed)
    save_file(timm.create_model(model, num_classes=classes).state_dict(), str(path))
    return path


def prepare(work: Path, data: Path | None) -> dict[str, str]:
    """Write the data sets and teacher files; return the placeholders' values."""
    import torch

    import datasets

    datasets.disable_progress_bars()
    work.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = write_parquet(work / "tiny.parquet")
    size, classes = data_shape(data)
    bad = [i % 3 for i in range(60)]
    bad[7] = 5
    spaced = work / "my data"
    spaced.mkdir(exist_ok=True)
    spaced_file = write_parquet(spaced / "tiny.parquet")
    (work / "text.parquet").write_text("image,label\nnot an image,0\n")
    (work / "garbage.safetensors").write_bytes(b"this is not a safetensors file\n" * 10)
    (work / "empty.pth").write_bytes(b"")
    torch.save({"fc.weight": os.system}, work / "pickle.pth")  # a function reference: only unsafe unpickling loads it
    paths = {
        "DATA": data, "BADLABEL": write_parquet(work / "badlabel.parquet", labels=bad),
        "EMPTYDATA": write_parquet(work / "empty.parquet", n=0), "TEXTDATA": work / "text.parquet",
        "TENDATA": write_parquet(work / "ten.parquet", n=100, classes=10),
        "TEACHER": random_teacher(work / "teacher.safetensors", "resnet8", classes, 0),
        "TEACHER2": random_teacher(work / "teacher2.safetensors", "resnet8", classes, 1),
        "WIDE": random_teacher(work / "wide.safetensors", "resnet8x4", classes, 0),
        "TEN": random_teacher(work / "ten.safetensors", "resnet8", classes + 7, 0),
        "GARBAGE": work / "garbage.safetensors", "EMPTY": work / "empty.pth", "PICKLE": work / "pickle.pth",
        "SPACED_HEAD": str(spaced_file).split(" ", 1)[0], "SPACED_TAIL": str(spaced_file).split(" ", 1)[1],
    }
    return {k: str(v) for k, v in paths.items()} | {"SIZE": str(size)}


def fill(text: str, values: dict[str, str]) -> str:
    return re.sub(r"@([A-Z0-9_]+)@", lambda m: values.get(m.group(1), m.group(0)), text)


def pattern(regex: str, values: dict[str, str]) -> str:
    """A case's `names`/`warns` regex with its @NAMES@ filled in as literal paths."""
    return fill(regex, {k: re.escape(v) for k, v in values.items()})


# ---------------------------------------------------------------------------- running and judging

def schema_keys() -> set[str]:
    from distill import config

    keys = {key for key, _, _ in config.leaves()}
    return keys | {k.rsplit(".", i)[0] for k in keys for i in range(1, k.count(".") + 1)}


def names_a_key_or_file(line: str, keys: set[str], args: list[str]) -> bool:
    """The error line starts with a setting key (an ensemble teacher's included, or the unknown key the command
    gave) or DISTILL_FAULT, or holds a path."""
    head = line.removeprefix("error: ").split(":", 1)[0]
    key = re.sub(r"^teachers(\.[^.]+|\[\d+\])", "teacher", head)
    given = re.split(r"[.\[\]]", head)[-1] or head
    return (head in keys or key in keys or head in ("teachers", "DISTILL_FAULT") or "/" in line
            or any(re.search(rf"\b{re.escape(given)}\b", a.split("=", 1)[0] if "{" not in a else a) for a in args))


def left_on_disk(case_dir: Path) -> str:
    """What the run wrote: each folder holding model weights, and the caches with a manifest."""
    found = [str(p.parent.relative_to(case_dir / "runs" / "tiny")) for p in
             (case_dir / "runs" / "tiny").rglob("model.safetensors")] if (case_dir / "runs" / "tiny").is_dir() else []
    if (case_dir / "cache").is_dir():
        found += ["cache"] * len(list((case_dir / "cache").glob("*/manifest.json")))
    return ",".join(sorted(found)) or "-"


def judge(case: Case, rc: int | None, stderr: str, values: dict[str, str], keys: set[str],
          args: list[str]) -> tuple[str, str]:
    """(verdict, why) of one finished run."""
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    if rc is None:
        return "timeout", "killed at the timeout"
    if TRACEBACK in stderr:
        return "traceback", "stderr holds a traceback"
    if rc == 2 and len(errors) == 1:
        if not names_a_key_or_file(errors[0], keys, args):
            return "check", "the error line names neither a setting key nor a file"
        if not re.search(pattern(case.names, values), errors[0]):
            return "check", f"the error line does not name {case.names}"
        return "good", ""
    if rc == 0:
        if "accepted" not in case.expect:
            return "check", "exit 0: the bad input was accepted"
        if not re.search(pattern(case.warns, values), stderr):
            return "check", f"exit 0 and no line names {case.warns}"
        return "accepted", ""
    return "check", f"exit {rc} with {len(errors)} error line(s)"


def run_case(case: Case, values: dict[str, str], cases_dir: Path, timeout: float, keys: set[str]) -> dict:
    case_dir = cases_dir / case.name
    case_dir.mkdir(parents=True, exist_ok=True)
    here = values | {"CASE": str(case_dir)}
    args = [fill(a, here) for a in command_args(case)]
    env = {k: v for k, v in os.environ.items() if k != "DISTILL_FAULT"}
    env |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)} | case.env
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(ROOT / "distill" / "run.py"), *args], cwd=case_dir, env=env,
                              capture_output=True, text=True, timeout=timeout)
        rc, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, stderr = None, (e.stderr.decode() if isinstance(e.stderr, bytes) else e.stderr) or ""
    seconds = time.perf_counter() - start
    verdict, why = judge(case, rc, stderr, here, keys, args)
    lines = stderr.strip().splitlines()
    return {"case": case.name, "overrides": last_wins(case.args), "env": case.env, "drop": list(case.drop),
            "exit": rc, "traceback": TRACEBACK in stderr, "on_disk": left_on_disk(case_dir),
            "last_line": lines[-1] if lines else "", "verdict": verdict, "expected": list(case.expect),
            "why": why, "note": case.note, "seconds": round(seconds, 1), "command": args,
            "stderr_tail": lines[-15:]}


def shown(text: str, values: dict[str, str], limit: int | None = None) -> str:
    """`text` with the probe's paths written back as @NAMES@ (longest first), cut to `limit` characters."""
    for name, value in sorted(values.items(), key=lambda kv: -len(kv[1])):
        if name not in ("SIZE", "SPACED_HEAD", "SPACED_TAIL"):
            text = text.replace(value, f"@{name}@")
    text = text.replace("|", "\\|")
    return text if limit is None or len(text) <= limit else text[:limit - 3] + "..."


def table(rows: list[dict], values: dict[str, str]) -> str:
    out = ["| case | overrides | exit | traceback | on disk | last stderr line | verdict |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        over = " ".join(r["overrides"] + [f"(env {k}={v})" for k, v in r["env"].items()] +
                        [f"(no {k})" for k in r["drop"]])
        here = values | {"CASE": str(Path(values["WORK"]) / "cases" / r["case"])}
        verdict = r["verdict"] + ("" if r["verdict"] in r["expected"] else " (unexpected)")
        out.append(f"| {r['case']} | `{shown(over, here)}` | {r['exit']} | {'yes' if r['traceback'] else 'no'} | "
                   f"{r['on_disk']} | {shown(r['last_line'], here, 160)} | {verdict} |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="base data set: a parquet file (square images); default: the "
                                                  "probe's own tiny one")
    parser.add_argument("--out", type=Path, help="folder for the data, each case's folder and probe.json "
                                                 "(default: a new folder under the system's temp folder)")
    parser.add_argument("-k", dest="select", default="", help="run only the cases whose name holds this")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a case may run (a hang guard)")
    opts = parser.parse_args()
    cases = [c for c in CASES if opts.select in c.name]
    if not cases:
        print(f"error: -k {opts.select}: no case name holds it", file=sys.stderr)
        return 2
    if opts.data and not opts.data.is_file():
        print(f"error: --data {opts.data}: no such file", file=sys.stderr)
        return 2
    out = (opts.out or Path(tempfile.mkdtemp(prefix="distill-probe-"))).resolve()
    values = prepare(out / "data", opts.data.resolve() if opts.data else None) | {"WORK": str(out)}
    keys = schema_keys()
    rows, start = [], time.perf_counter()
    for i, case in enumerate(cases, 1):
        row = run_case(case, values, out / "cases", opts.timeout, keys)
        rows.append(row)
        print(f"[{i}/{len(cases)}] {case.name}: {row['verdict']} ({row['seconds']} s)", file=sys.stderr, flush=True)
    wall = time.perf_counter() - start
    print(table(rows, values))
    bad = [r for r in rows if r["verdict"] == "traceback" or r["verdict"] not in r["expected"]]
    counts = {v: sum(r["verdict"] == v for r in rows) for v in dict.fromkeys(r["verdict"] for r in rows)}
    print(f"\n{len(rows)} cases in {wall:.0f} s: " + ", ".join(f"{n} {v}" for v, n in counts.items()) +
          f"; {len(bad)} unexpected")
    for r in bad:
        print(f"- {r['case']}: {r['verdict']} ({r['why']}): {shown(r['last_line'], values)}")
    late = [r for r in rows if r["exit"] == 2 and r["on_disk"] != "-"]
    if late:
        print("refused after some work (on disk): " + ", ".join(f"{r['case']} ({r['on_disk']})" for r in late))
    (out / "probe.json").write_text(json.dumps({"wall_s": round(wall, 1), "cases": rows}, indent=1))
    print(f"JSON: {out / 'probe.json'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
