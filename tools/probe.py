"""Bad-input probe (not a test): runs `python distill/run.py` on bad inputs to the ensemble, feature, token and
hard-label features, on odd data, odd settings of every section and odd folders, and on files a run trusts edited,
swapped or touched between runs (the `v_` cases), and says what each gave.

A bad input must give one line, `error: ...` naming the setting key or the file it is about, with exit status 2 and
no traceback (verdict `good`); a traceback is `traceback`; anything else is `check`: most often exit 0 on an input
that should have been refused, which may be a silent wrong result. A few cases are legitimate inputs, declared so
(`accepted`: exit 0, and the warning named with it when the input cannot act; where a case can tell a right result
from a wrong one, such as a resumed student's weights against an uninterrupted run's, a wrong one is `check`).
A case whose right answer is a rerun that makes nothing anew expects `reused`: exit 0, some stage says it reuses
its output and none trains, labels, saves or writes one. Multi-step cases first run their `before` steps in their
folder (earlier runs, killed ones included; hand edits; swapped folders; a touch), then the judged run; a few run
another program (`python -m distill.predict`, `tools/sweep_table.py`). The probe writes its own tiny, learnable
data set (12 px images, 3 classes, 60 images) and its variants, and seeded random teacher checkpoint files, so no
teacher trains unless a case asks for it; then runs each case as its own processes, one at a time, in a folder of
its own, with HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 and a timeout per process.

    python tools/probe.py                         # every case; the table on stdout, probe.json in --out
    python tools/probe.py -k ensemble             # the cases whose name holds 'ensemble'
    python tools/probe.py -k v_                   # the files-a-run-trusts, odd-data and odd-settings cases
    python tools/probe.py --data my.parquet --out /tmp/probe   # another base data set (square images)

Prints a markdown table (case, its overrides with the probe's paths as @NAMES@ and the steps before it, exit
status, whether stderr holds a traceback, what the run left on disk, the last stderr line, the verdict) and writes
it as JSON to <out>/probe.json, with each case's full command and stderr tail; then lists the unexpected verdicts,
and the refusals that came after some work (a teacher or cache already on disk, in a case with no steps before).
Exits 1 when a case's verdict is `traceback` or not one it expects. Each case's folder stays under
<out>/cases/NAME for a look.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TRACEBACK = "Traceback (most recent call last)"
REUSE = re.compile(r"\w: reusing ")  # a stage that reused what it had made
STEP_FAILED = "FAILED"
WORK = re.compile(r"saved /\S*|labelled \d+ images|export: wrote")  # a stage that made it anew
CLASSES = ["red", "green", "blue"]
VIT = "student.model_args={img_size: @SIZE@, patch_size: 4, depth: 1, embed_dim: 24, num_heads: 2}"
DEIT = ["student.model=deit_tiny_distilled_patch16_224", VIT, "student.init=timm", "student.zero_gamma=false",
        "student.optim.name=adamw", "student.optim.lr=0.001"]
TWO = "teachers=[{name: a}, {name: b, checkpoint: '@TEACHER2@'}]"


@dataclass
class Case:
    """One run: `args` added to (and replacing the same keys of) the base overrides, `drop` taken from them.
    `expect`: the verdicts that are right for it; `names`: a regex the error line must match (a key or a file;
    @NAMES@ are literal paths); `warns`: a regex stderr (or stdout) must match when the run is accepted; `note`: why
    the expectation is what it is. `before`: steps run first in the case's folder (Prior runs, or callables given the
    folder and the placeholders' values: to write odd data, edit or swap what a run wrote); `after`: given the
    case's folder after an exit 0, why the result is wrong ("" when it is right); `program`: run this instead of
    distill/run.py (a script under the repository or `-m module`), given `args` alone."""
    name: str
    args: list[str]
    names: str = ""
    expect: tuple[str, ...] = ("good",)
    warns: str = ""
    drop: tuple[str, ...] = ()
    env: dict = field(default_factory=dict)
    note: str = ""
    before: tuple = ()
    after: Callable[[Path], str] | None = None
    program: tuple[str, ...] = ()


@dataclass
class Prior:
    """A step of a case's `before`: a run of distill/run.py in the case's folder, before the judged run, with the
    case's command (the base overrides less `drop`, and the case's own args unless it runs another `program`) and
    `args` added, under the case's env and `env`. Its exit status is shown, not judged (a kill is meant to stop it).
    The other steps of `before` are callables given the case's folder and the placeholders' values."""
    args: list[str] = field(default_factory=list)
    env: dict = field(default_factory=dict)


def _accepted_or_said(key: str, regex: str | None = None) -> dict:
    """A setting that cannot act with the rest: refused, or accepted with a line naming it (`regex`: how)."""
    regex = regex or re.escape(key)
    return dict(names=regex, expect=("good", "accepted"), warns=regex,
                note=f"{key} cannot act here: refused, or said once (README: a setting that cannot act is said once)")


# ---------------------------------------------------------------------------- steps of multi-step cases

STUDENT = Path("tiny") / "student" / "model.safetensors"
KILLED = Prior(["student.epochs=2"], {"DISTILL_FAULT": "student:4:KILL"})  # killed in its 2nd epoch (3 steps each)


def clean(*args: str, env: dict | None = None) -> Prior:
    """The case's own settings (and `args`), uninterrupted, in <case>/clean (its cache in <case>/clean/cache)."""
    return Prior(["run_root=@CASE@/clean", "cache.root=@CASE@/clean/cache", *args], env or {})


def same_student(case_dir: Path) -> str:
    """After: the student's weights are those the uninterrupted run (`clean`) trained."""
    ours, theirs = case_dir / "runs" / STUDENT, case_dir / "clean" / STUDENT
    missing = [str(p) for p in (ours, theirs) if not p.is_file()]
    if missing:
        return f"no {missing[0]}"
    return "" if ours.read_bytes() == theirs.read_bytes() else "the student differs from an uninterrupted run's"


def holds(pattern: str, count: int = 1) -> Callable[[Path], str]:
    """After: at least `count` files under the case's folder match `pattern` (a glob)."""
    def after(case_dir: Path) -> str:
        found = len(list(case_dir.glob(pattern)))
        return "" if found >= count else f"{found} file(s) match {pattern}, not {count}"
    return after


def named(step: Callable, name: str) -> Callable:
    step.__name__ = name  # what the table shows of the step
    return step


def edit_json(pattern: str, **changes) -> Callable:
    """A step: set `changes` in the last file (by name) matching `pattern` under the case's folder, as by hand."""
    def edit(case_dir: Path, values: dict) -> None:
        path = sorted(case_dir.glob(pattern))[-1]
        path.write_text(json.dumps(json.loads(path.read_text()) | changes, indent=2))
    return named(edit, f"edit {pattern}: {changes}")


def swap_folders(root: str) -> Callable:
    """A step: the two folders under <case>/root trade names (two caches swapped)."""
    def swap(case_dir: Path, values: dict) -> None:
        a, b = sorted(p for p in (case_dir / root).iterdir() if p.is_dir())
        a.rename(a.with_name("swapping"))
        b.rename(a)
        a.with_name("swapping").rename(b)
    return named(swap, f"swap the two folders in {root}/")


def touch(name: str) -> Callable:
    """A step: <case>/name's mtime an hour later, its bytes kept."""
    def later(case_dir: Path, values: dict) -> None:
        stat = (case_dir / name).stat()
        os.utime(case_dir / name, (stat.st_atime, stat.st_mtime + 3600))
    return named(later, f"touch {name}")


def spoil(name: str) -> Callable:
    """A step: <case>/name cut to half its bytes."""
    def cut(case_dir: Path, values: dict) -> None:
        path = case_dir / name
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    return named(cut, f"cut {name} in half")


def data_file(name: str, image: Callable | None = None, label: Callable | None = None, n: int = 60) -> Callable:
    """A step: the tiny data as <case>/name, each image through image(img, i), each label through label(y, i)."""
    def write(case_dir: Path, values: dict) -> None:
        images, labels = tiny_images(n)
        (case_dir / name).parent.mkdir(parents=True, exist_ok=True)
        save_parquet(case_dir / name, [image(x, i) if image else x for i, x in enumerate(images)],
                     [label(y, i) if label else y for i, y in enumerate(labels)])
    return named(write, f"write {name}")


def imagefolder(splits: dict[str, list[str]], suffix: str = "png") -> Callable:
    """A step: an imagefolder at <case>/folder, each split (train/, test/: images of their own) holding 10 tiny
    images per class folder."""
    def write(case_dir: Path, values: dict) -> None:
        for seed, (split, classes) in enumerate(splits.items()):
            images, _ = tiny_images(10 * len(classes), seed)
            for i, img in enumerate(images):
                folder = case_dir / "folder" / split / classes[i % len(classes)]
                folder.mkdir(parents=True, exist_ok=True)
                img.save(folder / f"{i}.{suffix}")
    return named(write, f"write an imagefolder {splits}")


def images(*names: str) -> Callable:
    """A step: tiny images as <case>/imgs/NAME (an empty file where NAME starts with 'empty')."""
    def write(case_dir: Path, values: dict) -> None:
        (case_dir / "imgs").mkdir(exist_ok=True)
        for name, img in zip(names, tiny_images(len(names))[0]):
            if name.startswith("empty"):
                (case_dir / "imgs" / name).write_bytes(b"")
            else:
                img.save(case_dir / "imgs" / name)
    return named(write, f"write imgs/{', '.join(names)}")


def sixteen_bit(img, i: int):
    """A 16-bit greyscale PNG's image (mode I;16) of the same picture."""
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257)


def translucent(img, i: int):
    rgba = img.convert("RGBA")
    rgba.putalpha(128)
    return rgba


COPY = named(lambda case_dir, values: shutil.copy2(values["DATA"], case_dir / "data.parquet"), "copy @DATA@ here")
EXPORTED = Prior(["stage=export", "export.onnx=false"])
PREDICT = ("-m", "distill.predict")


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
    # ---------------------------------------------------------------- reliability V: files a run trusts, names,
    # odd data, every section's settings, stages, resume, predict, export, sweeps (v_: select them with -k v_)
    Case("v_resume_progress_epoch_edited", ["student.epochs=2"], r"progress\.json",
         before=(KILLED, edit_json("runs/tiny/student/checkpoints/step-*/progress.json", epoch=0)),
         note="a sealed checkpoint file edited by hand is refused, naming it (today: one epoch trained twice)"),
    Case("v_resume_progress_step_edited", ["student.epochs=2"], r"progress\.json",
         before=(KILLED, edit_json("runs/tiny/student/checkpoints/step-*/progress.json", step=1, seen=16))),
    Case("v_resume_never_after_kill", ["student.epochs=2", "resume=never"], expect=("accepted",),
         before=(clean(), KILLED), after=same_student,
         note="legitimate: the stage starts over and trains what an uninterrupted run trains"),
    Case("v_resume_threads_changed", ["student.epochs=2"], "OMP_NUM_THREADS|thread", expect=("good", "accepted"),
         env={"OMP_NUM_THREADS": "2"}, after=same_student,
         before=(clean(env={"OMP_NUM_THREADS": "1"}), Prior(KILLED.args, KILLED.env | {"OMP_NUM_THREADS": "1"})),
         note="killed under 1 thread, resumed under 2: the thread count restored (the uninterrupted run's bytes) or "
              "the resume refused in one line"),
    Case("v_resume_bogus_value", ["resume=yes"], "resume"),
    Case("v_cache_topk_folders_swapped", ["cache.topk=2"], r"shard|manifest", expect=("good", "accepted"),
         before=(clean(), Prior(["stage=cache"]), Prior(["stage=cache", "cache.topk=3"]), swap_folders("cache")),
         after=same_student, note="a shard of another cache is never adopted: recomputed, or refused naming it"),
    Case("v_cache_views_folders_swapped", ["cache.views=2"], r"shard|manifest", expect=("good", "accepted"),
         before=(clean(), Prior(["stage=cache"]), Prior(["stage=cache", "cache.views=3"]), swap_folders("cache")),
         after=same_student),
    Case("v_cache_sidecar_edited_after_kill", [], r"shard-00000\.json", expect=("good", "accepted"),
         before=(clean(), Prior(["stage=cache"], {"DISTILL_FAULT": "cache:2:KILL"}),
                 edit_json("cache/*/shard-00000.json", skipped=[3])), after=same_student,
         note="a finished shard's sidecar says image 3 was left out: refused naming it, or the shard recomputed"),
    Case("v_cache_manifest_edited", [], r"manifest\.json", expect=("good", "accepted"),
         before=(clean(), Prior(["stage=cache"]), edit_json("cache/*/manifest.json", skipped=[3])), after=same_student,
         note="a finished cache's manifest says image 3 was left out: refused naming it, or the cache recomputed"),
    Case("v_meta_class_names_edited", [], r"meta\.json", expect=("good", "accepted"), warns=r"meta\.json",
         before=(Prior(), edit_json("runs/tiny/student/meta.json", class_names=["blue", "green", "red"]))),
    Case("v_rerun_reuses_every_stage", [], expect=("reused",), before=(Prior(),),
         note="the same command twice: the second reuses every stage"),
    Case("v_parquet_touched_reuses_every_stage", ["data.path=@CASE@/data.parquet"], expect=("reused",),
         before=(COPY, Prior(), touch("data.parquet")), note="same bytes, later mtime: the data's identity holds"),
    Case("v_imagefolder_touched_reuses_every_stage", ["data.path=@CASE@/folder"], expect=("reused",),
         before=(imagefolder({"train": CLASSES}), Prior(), touch("folder/train/red/0.png"))),
    Case("v_stage_student_after_export_reuses", [], expect=("reused",), before=(EXPORTED,)),
    Case("v_teacher_checkpoint_replaced_retrains", ["teacher.checkpoint=@CASE@/teacher.safetensors"],
         expect=("accepted",), warns=r"teacher: loaded", after=holds("cache/*/manifest.json", 2),
         before=(named(lambda d, v: shutil.copy(v["TEACHER"], d / "teacher.safetensors"), "copy @TEACHER@ here"),
                 Prior(), named(lambda d, v: shutil.copy(v["TEACHER2"], d / "teacher.safetensors"),
                                "copy @TEACHER2@ over it")),
         note="legitimate: another teacher file under the same name is loaded anew"),
    Case("v_name_escapes_run_root", ["name=../../escape"], r"\bname\b"),
    Case("v_name_absolute", ["name=/tmp/distill-probe-escape"], r"\bname\b"),
    Case("v_name_empty", ["name=''"], r"\bname\b"),
    Case("v_name_dotdot", ["name=.."], r"\bname\b"),
    Case("v_test_class_only_in_test", ["data.path=@CASE@/folder", "data.test_split=test", "teacher.source=train",
                                       "teacher.checkpoint=null"], r"purple|test",
         before=(imagefolder({"train": CLASSES, "test": [*CLASSES, "purple"]}),),
         note="the test split's class 'purple' has no training image: refused (docs: other classes are refused); "
              "a teacher trained on the data, so that no checkpoint's class count refuses it first"),
    Case("v_imagefolder_truncated_jpeg", ["data.path=@CASE@/folder"], r"0\.jpg",
         before=(imagefolder({"train": CLASSES}, "jpg"), spoil("folder/train/red/0.jpg"))),
    Case("v_imagefolder_one_class", ["data.path=@CASE@/folder", "data.val_size=2"], r"class|@CASE@/folder",
         before=(imagefolder({"train": ["red"]}),)),
    Case("v_parquet_one_shard_named", ["data.path=@CASE@/shards/train-00000-of-00002.parquet"], expect=("accepted",),
         warns=r"\b18 train", before=(data_file("shards/train-00000-of-00002.parquet", n=30),
                                      data_file("shards/train-00001-of-00002.parquet", n=30)),
         note="legitimate: the one file named is the data (30 images: 18 train, 12 validation)"),
    Case("v_parquet_empty_validation_split", ["data.path=@CASE@/split", "data.val_split=validation"],
         r"validation|data\.val_split",
         before=(data_file("split/train.parquet"), data_file("split/validation.parquet", n=0))),
    Case("v_data_grayscale", ["data.path=@CASE@/data.parquet"], expect=("accepted",),
         before=(data_file("data.parquet", lambda x, i: x.convert("L")),)),
    Case("v_data_rgba", ["data.path=@CASE@/data.parquet"], expect=("accepted",),
         before=(data_file("data.parquet", translucent),)),
    Case("v_data_16bit_png", ["data.path=@CASE@/data.parquet"], "data.parquet", expect=("good", "accepted"),
         before=(data_file("data.parquet", sixteen_bit),),
         note="16-bit greyscale: read to 8 bits as its picture (PIL's convert('RGB') clips it white), or refused"),
    Case("v_data_mixed_sizes", ["data.path=@CASE@/data.parquet"], expect=("accepted",),
         before=(data_file("data.parquet", lambda x, i: x.resize((20, 20)) if i % 2 else x),)),
    Case("v_data_labels_are_strings", ["data.path=@CASE@/data.parquet"], "label", expect=("good", "accepted"),
         before=(data_file("data.parquet", label=lambda y, i: CLASSES[y]),)),
    Case("v_data_label_minus_one", ["data.path=@CASE@/data.parquet"], "data.parquet|label",
         before=(data_file("data.parquet", label=lambda y, i: -1 if i == 7 else y),),
         note="-1 is the hub's 'no label'; a training image without one is refused"),
    Case("v_data_path_missing", ["data.path=@CASE@/missing.parquet"], "data.path"),
    Case("v_data_path_empty_folder", ["data.path=@CASE@/nothing"],
         before=(named(lambda d, v: (d / "nothing").mkdir(), "mkdir nothing"),), names=r"data\.path|nothing"),
    Case("v_data_source_contradicts_path", ["data.source=imagefolder"], "data.source|data.path"),
    Case("v_data_val_split_missing", ["data.val_split=nope"], "data.val_split"),
    Case("v_data_test_split_missing", ["data.test_split=nope"], "data.test_split"),
    Case("v_data_val_size_all_rows", ["data.val_size=60"], "data.val_size"),
    Case("v_data_val_size_negative", ["data.val_size=-0.1"], "data.val_size"),
    Case("v_data_train_size_zero", ["data.train_size=0"], "data.train_size"),
    Case("v_data_train_size_beyond_rows", ["data.train_size=1000"], **_accepted_or_said("data.train_size")),
    Case("v_data_label_column_missing", ["data.label_column=lbl"], "data.label_column"),
    Case("v_data_image_column_is_the_label", ["data.image_column=label"], "data.image_column"),
    Case("v_data_image_size_zero", ["data.image_size=0"], "data.image_size"),
    Case("v_data_image_size_fraction", ["data.image_size=12.5"], "data.image_size"),
    Case("v_data_mean_two_values", ["data.mean=[0.5,0.5]"], "data.mean"),
    Case("v_data_std_zero", ["data.std=[0,0.25,0.25]"], "data.std"),
    Case("v_data_crop_pct_above_one", ["data.transform=imagenet", "data.crop_pct=1.5"], "data.crop_pct"),
    Case("v_data_scale_reversed", ["data.transform=imagenet", "data.scale=[1.0,0.08]"], "data.scale"),
    Case("v_data_scale_three_values", ["data.transform=imagenet", "data.scale=[0.1,0.5,1.0]"], "data.scale"),
    Case("v_data_num_workers_negative", ["data.num_workers=-1"], "data.num_workers"),
    Case("v_seed_string", ["seed=abc"], r"\bseed\b"),
    Case("v_seed_fraction", ["seed=1.5"], r"\bseed\b"),
    Case("v_precision_fp8", ["precision=fp8"], "precision"),
    Case("v_max_nonfinite_negative", ["max_nonfinite=-1"], "max_nonfinite"),
    Case("v_checkpoint_keep_zero", ["checkpoint.keep=0"], "checkpoint.keep"),
    Case("v_checkpoint_every_word", ["checkpoint.every=often"], "checkpoint.every"),
    Case("v_log_with_unknown", ["log_with=nosuchtracker"], "log_with"),
    Case("v_teacher_batch_size_zero", ["teacher.batch_size=0"], "teacher.batch_size"),
    Case("v_teacher_momentum_one", ["teacher.optim.momentum=1.0"], "teacher.optim.momentum"),
    Case("v_student_sched_unknown", ["student.sched.name=linear"], "student.sched.name"),
    Case("v_student_betas_one", ["student.optim.name=adamw", "student.optim.betas=[0.9,1.0]"],
         "student.optim.betas"),
    Case("v_student_mix_prob_above_one", ["student.mix.prob=2"], "student.mix.prob"),
    Case("v_student_label_smoothing_one", ["student.label_smoothing=1"], "student.label_smoothing"),
    Case("v_student_model_unknown", ["student.model=resnet9"], "student.model"),
    Case("v_student_batch_beyond_data", ["student.batch_size=1000"], **_accepted_or_said("student.batch_size")),
    Case("v_student_warmup_beyond_epochs", ["student.sched.warmup_epochs=5"],
         **_accepted_or_said("student.sched.warmup_epochs")),
    Case("v_cache_views_zero", ["cache.views=0"], "cache.views"),
    Case("v_cache_topk_zero", ["cache.topk=0"], "cache.topk"),
    Case("v_cache_topk_beyond_classes", ["cache.topk=100"], expect=("accepted",),
         note="legitimate: k at least the class count keeps every logit"),
    Case("v_cache_shard_size_word", ["cache.shard_size=big"], "cache.shard_size"),
    Case("v_kd_temperature_zero", ["kd.temperature=0"], "kd.temperature"),
    Case("v_kd_alpha_negative", ["kd.alpha=-0.5"], "kd.alpha"),
    Case("v_kd_loss_unknown", ["kd.loss=crd"], "kd.loss"),
    Case("v_kd_focal_alpha_count", ["kd.ce=focal", "kd.focal_alpha=[0.5]"], "kd.focal_alpha"),
    Case("v_kd_dkd_warmup_negative", ["kd.loss=dkd", "kd.dkd.warmup=-1"], "kd.dkd.warmup"),
    Case("v_kd_dkd_section_with_unknown_key", ["kd.loss=dkd", "kd.dkd={alpha: 2, gamma: 4}"], r"kd\.dkd"),
    Case("v_kd_dkd_section_is_a_number", ["kd.loss=dkd", "kd.dkd=5"], r"kd\.dkd"),
    Case("v_stage_unknown", ["stage=distil"], r"\bstage\b"),
    Case("v_stage_list", ["stage=[teacher,student]"], r"\bstage\b"),
    Case("v_stage_teacher_then_student", [], expect=("accepted",), warns=r"teacher: reusing",
         before=(Prior(["stage=teacher"]),), note="legitimate: the teacher of the first run is reused"),
    Case("v_recipe_unknown", ["recipe=cifar10_resnet20_to_resnet9"], "recipe"),
    Case("v_recipe_outside_recipes", ["recipe=../data/demo"], "recipe",
         note="a recipe name that leaves recipes/recipe/ (a data file read as a recipe)"),
    Case("v_run_root_is_a_file", ["run_root=@DATA@"], "run_root|@DATA@"),
    Case("v_run_root_unwritable", ["run_root=/proc/distill-probe"], "run_root|/proc"),
    Case("v_cache_root_is_a_file", ["cache.root=@DATA@"], "cache.root|@DATA@"),
    Case("v_cache_root_under_a_file", ["cache.root=@DATA@/cache"], "cache.root|@DATA@"),
    Case("v_teacher_dir_is_a_file", ["teacher.dir=@DATA@"], "teacher.dir|@DATA@"),
    Case("v_fault_signal_unknown", [], "DISTILL_FAULT", env={"DISTILL_FAULT": "student:1:BOOM"}),
    Case("v_export_opset_too_new", ["stage=export", "export.opset=99"], "export.opset",
         note="refused before any work, not after training"),
    Case("v_export_opset_word", ["stage=export", "export.opset=latest"], "export.opset"),
    Case("v_export_hub_repo_malformed", ["stage=export", "export.onnx=false", "export.hub_repo='my model'"],
         "export.hub_repo", note="offline: a repo name the Hub would refuse, refused before any work"),
    Case("v_export_weights_damaged_rebuilt", ["stage=export", "export.onnx=false"], expect=("accepted",),
         warns=r"export/model\.safetensors", before=(EXPORTED, spoil("runs/tiny/export/model.safetensors"))),
    Case("v_predict_missing_export", ["@CASE@/nope", "@DATA@"], "@CASE@/nope", program=PREDICT),
    Case("v_predict_on_a_folder", ["@CASE@/runs/tiny/export", "@CASE@/imgs"], "imgs", expect=("good", "accepted"),
         warns=r"imgs/1\.png", program=PREDICT, before=(EXPORTED, images("0.png", "1.png"))),
    Case("v_predict_empty_image_file", ["@CASE@/runs/tiny/export", "@CASE@/imgs/empty.png"], r"empty\.png",
         program=PREDICT, before=(EXPORTED, images("empty.png"))),
    Case("v_predict_on_the_run_folder", ["@CASE@/runs/tiny", "@CASE@/imgs/0.png"], "runs/tiny",
         program=PREDICT, before=(EXPORTED, images("0.png"))),
    Case("v_sweep_table_missing_folder", ["@CASE@/nope"], "@CASE@/nope", program=("tools/sweep_table.py",)),
    Case("v_hydra_sweep_dir", ["kd.alpha=0.5", "hydra.sweep.dir=@CASE@/X", "-m"], "hydra.sweep.dir",
         expect=("good", "accepted"), after=holds("X/**/summary.json"),
         note="Hydra's sweep folder: honoured, or refused in one line (today: silently ignored)"),
    Case("v_hydra_run_dir", ["hydra.run.dir=@CASE@/Y"], "hydra.run.dir", expect=("good", "accepted"),
         after=holds("Y/**/summary.json")),
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


def command_args(case: Case, prior: Prior | None = None) -> list[str]:
    """The base overrides less `drop`, then the case's own, then a prior run's; a key set twice keeps its last
    value. A case of another program: its own args alone (its prior runs: the base overrides and their own)."""
    if case.program and prior is None:
        return list(case.args)
    own = [] if case.program else case.args
    return last_wins([a for a in base_overrides() if a.split("=", 1)[0] not in case.drop] + own +
                     (prior.args if prior else []))


# ---------------------------------------------------------------------------- the data and the teacher files

def tiny_images(n: int, seed: int = 0):
    """tests/conftest.py's tiny images (the dominant colour is the class): the probe's data is the tests' data."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import tiny_images as images

    return images(n, seed=seed)


def save_parquet(path: Path, images: list, labels: list, names: list[str] = CLASSES) -> Path:
    """Images and labels as a parquet file in the hub's layout: a ClassLabel column of `names`, or a plain string
    column when the labels are strings."""
    import datasets

    kind = datasets.Value("string") if labels and isinstance(labels[0], str) else datasets.ClassLabel(names=names)
    features = datasets.Features({"image": datasets.Image(), "label": kind})
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(str(path))
    return path


def write_parquet(path: Path, n: int = 60, labels: list[int] | None = None, classes: int = 3) -> Path:
    """The tiny data set as parquet (`classes` > 3: the images cycle over them, named c0, c1, ...); `labels`
    written over the label column as they are (unchecked)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images, own = tiny_images(n)
    names = CLASSES if classes == 3 else [f"c{i}" for i in range(classes)]
    save_parquet(path, images, own if classes == 3 else [i % classes for i in range(n)], names)
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
          args: list[str], stdout: str = "") -> tuple[str, str]:
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
        return judge_success(case, stderr + "\n" + stdout, values)
    return "check", f"exit {rc} with {len(errors)} error line(s)"


def judge_success(case: Case, output: str, values: dict[str, str]) -> tuple[str, str]:
    """(verdict, why) of a run that exited 0: `output` is its stderr and stdout."""
    wrong = case.after(Path(values["CASE"])) if case.after else ""
    if wrong:
        return "check", f"exit 0, but {wrong}"
    if "reused" in case.expect:
        work = WORK.search(output)
        if work or not REUSE.search(output):
            return "check", f"exit 0, but not every stage was reused ({work.group(0) if work else 'none said so'})"
        return "reused", ""
    if "accepted" not in case.expect:
        return "check", "exit 0: the bad input was accepted"
    if not re.search(pattern(case.warns, values), output):
        return "check", f"exit 0 and no line names {case.warns}"
    return "accepted", ""


def launch(args: list[str], program: tuple[str, ...], case_dir: Path, env: dict, timeout: float
           ) -> tuple[int | None, str, str]:
    """(exit status or None at the timeout, stderr, stdout) of distill/run.py, or `program`, run with `args`."""
    head = [str(ROOT / p) if (ROOT / p).is_file() else p for p in program] or [str(ROOT / "distill" / "run.py")]
    try:
        proc = subprocess.run([sys.executable, *head, *args], cwd=case_dir, env=env, capture_output=True, text=True,
                              timeout=timeout)
        return proc.returncode, proc.stderr, proc.stdout
    except subprocess.TimeoutExpired as e:
        return None, (e.stderr.decode() if isinstance(e.stderr, bytes) else e.stderr) or "", ""


def run_before(case: Case, here: dict[str, str], case_dir: Path, env: dict, timeout: float) -> list[str]:
    """Run the case's `before` steps in order; what each was (a prior run's with its exit status)."""
    done = []
    for step in case.before:
        if isinstance(step, Prior):
            rc, _, _ = launch([fill(a, here) for a in command_args(case, step)], (), case_dir, env | step.env, timeout)
            what = " ".join(step.args + [f"{k}={v}" for k, v in step.env.items()]) or "the same"
            done.append(f"run {what}: exit {rc}")
            continue
        try:
            step(case_dir, here)
            done.append(step.__name__)
        except Exception as e:  # noqa: BLE001 - a step that found nothing to edit: said in the row, not a crash
            done.append(f"{step.__name__}: {STEP_FAILED} ({type(e).__name__}: {e})")
    return done


def run_case(case: Case, values: dict[str, str], cases_dir: Path, timeout: float, keys: set[str]) -> dict:
    case_dir = cases_dir / case.name
    case_dir.mkdir(parents=True, exist_ok=True)
    here = values | {"CASE": str(case_dir)}
    args = [fill(a, here) for a in command_args(case)]
    env = {k: v for k, v in os.environ.items() if k != "DISTILL_FAULT"}
    env |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)} | case.env
    start = time.perf_counter()
    before = run_before(case, here, case_dir, env, timeout)
    rc, stderr, stdout = launch(args, case.program, case_dir, env, timeout)
    seconds = time.perf_counter() - start
    verdict, why = judge(case, rc, stderr, here, keys, args, stdout)
    if any(STEP_FAILED in step for step in before):
        verdict, why = "check", f"a step before the run failed: {next(s for s in before if STEP_FAILED in s)}"
    lines = stderr.strip().splitlines()
    return {"case": case.name, "overrides": last_wins(case.args), "env": case.env, "drop": list(case.drop),
            "before": before,
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
                        [f"(no {k})" for k in r["drop"]] + [f"(before: {'; '.join(r['before'])})"] * bool(r["before"]))
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
    late = [r for r in rows if r["exit"] == 2 and r["on_disk"] != "-" and not r["before"]]
    if late:
        print("refused after some work (on disk): " + ", ".join(f"{r['case']} ({r['on_disk']})" for r in late))
    (out / "probe.json").write_text(json.dumps({"wall_s": round(wall, 1), "cases": rows}, indent=1))
    print(f"JSON: {out / 'probe.json'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
