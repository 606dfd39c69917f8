"""Stage 4, export: the student as a deliverable, in <run>/export/ (after the report, whose numbers it carries).

    config.json, model.safetensors   timm's Hugging Face layout: timm.create_model("local-dir:<run>/export",
                                     pretrained=True) loads it with its preprocessing (input size, mean/std, crop)
    model.onnx                       opset `export.opset`, dynamic batch axis; checked against PyTorch with
                                     onnxruntime on real validation images (needs pip install -e ".[export]")
    README.md                        the model card: what was distilled from what, settings, top-1, how to load
    export.json                      this stage's fingerprint and checks (what a rerun compares to reuse it)

Written to a temporary folder and renamed, so a crash never leaves half an export. `export.hub_repo` then pushes
the folder with huggingface_hub.
"""
from __future__ import annotations

import dataclasses
import logging
import shlex
import shutil
import string
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill import data, faults, files, methods
from distill.config import Config, teacher_sections
from distill.data import transforms
from distill.errors import DataError
from distill.registry import STAGES
from distill.store import hub, layout
from distill.store.records import ExportChecks, ExportRecord, Meta, Normalization, Row, Summary
from distill.store.hub import hub_problem  # noqa: F401  (preflight asks export.hub_problem)
from distill.training import models
from distill.training.context import RunContext

log = logging.getLogger("distill")

CIFAR_RESNETS = ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
                 "resnet32x4")


@dataclass(frozen=True)
class Preprocessing:
    """The evaluation view as timm's pretrained_cfg states it (`pretrained_cfg()`, in config.json): the square
    input size, how it is resized and cropped, and the normalization."""
    size: int
    crop_pct: float
    crop_mode: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"

    def pretrained_cfg(self) -> dict[str, Any]:
        """timm's keys, in the order the export has always written them (and its fingerprint hashes)."""
        return {"input_size": (3, self.size, self.size), "interpolation": self.interpolation,
                "crop_pct": self.crop_pct, "crop_mode": self.crop_mode, "mean": self.mean, "std": self.std}


def preprocessing(cfg: Config, norm: Normalization) -> Preprocessing:
    """The evaluation view: `cifar` views resize the image to the input size (timm's `squash`), `imagenet` views
    resize to size / crop_pct and crop the centre."""
    data_cfg = cfg.data  # data.per_image_norm has none: refused by config (Config.check) for a run that exports
    cifar = data_cfg.transform == "cifar"
    return Preprocessing(data_cfg.image_size, 1.0 if cifar else data_cfg.crop_pct, "squash" if cifar else "center",
                         tuple(norm.mean), tuple(norm.std))


def _have_onnx() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _val_batch(cfg: Config, bundle: data.DataBundle, norm: Normalization, n: int = 64) -> torch.Tensor:
    """Up to n real validation images, as the network sees them."""
    ds = data.ImageDataset(bundle.images["val"], cfg.data, train=False, skip_bad=True, pixels=True)
    items = [it for it in (ds[i] for i in range(min(n, len(ds)))) if it is not None]
    to_input = transforms.ToInput(cfg.data, norm.mean, norm.std)
    return to_input(data.Views(image=torch.stack([it["image"] for it in items])))


def _onnx(model: torch.nn.Module, x: torch.Tensor, path: Path, opset: int) -> float:
    """Export with a dynamic batch axis and return the largest |ONNX - PyTorch| on x (run with onnxruntime)."""
    import inspect

    import onnxruntime

    kwargs = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings():  # the TorchScript exporter: no onnxscript needed, deprecated but supported
        warnings.simplefilter("ignore")
        torch.onnx.export(model, x[:1], str(path), opset_version=opset, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          **kwargs)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    return float(np.abs(got - want).max())


def _throughput(model: torch.nn.Module, x: torch.Tensor, seconds: float = 1.0) -> float:
    """Images per second of the PyTorch model on this machine's CPU (fp32, batch of x), after one warm-up pass."""
    with torch.inference_mode():
        model(x)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(x)
            n += len(x)
    return n / (time.perf_counter() - start)


CARD = Path(__file__).with_name("model_card.md")  # the model card's text; `_card` fills in its ${fields}


def _origin_line(summary: Summary, members: list[str], which: str | None, rule: str) -> str:
    """What the student was distilled from: an ensemble, a teacher, or a published cache (named with its teacher)."""
    published = [c.published for c in summary.caches.values() if c.published]
    if published:
        return " and ".join(p.line for p in published)
    if which == "ensemble":
        return f"an ensemble of {', '.join(f'`{m}`' for m in members)} ({rule.replace('_', ' ')})"
    return summary.models[which].model if which else "a teacher"


def _card(cfg: Config, meta: Meta, summary: Summary, checks: ExportChecks, pre: Preprocessing) -> str:
    """The model card (README.md of the export folder): model_card.md with this run's numbers."""
    models_, kd, c = summary.models, cfg.kd, cfg.cache
    teachers = [layout.named("teacher", key.removeprefix("teachers.")) for key in teacher_sections(cfg)]
    shown = [n for n in teachers + ["ensemble", "student", "baseline"] if n in models_]
    recipe, command = _origin(cfg)
    members, which = [models_[n].model for n in teachers if n in models_], summary.distilled
    names = meta.class_names
    return string.Template(CARD.read_text()).substitute(
        model=meta.model, classes=len(names), method=_method_line(cfg), temperature=kd.temperature,
        origin=_origin_line(summary, members, which, kd.ensemble),
        source=(f"soft labels from a cache of {c.views} recorded views per image (top-{c.topk} logits)"
                if kd.teacher == "cached" else "the teacher run live every step (online KD)"),
        data=cfg.data.path or "the demo digits (scikit-learn)", recipe=recipe, command=command,
        seed=meta.seed, epochs=cfg.student.epochs, height=pre.size, width=pre.size,
        mean=list(pre.mean), std=list(pre.std), crop_mode=pre.crop_mode, crop_pct=pre.crop_pct,
        interpolation=pre.interpolation, params=f"{meta.params:,}",
        throughput=f"{checks.cpu_images_per_s:.0f}", batch=checks.batch, table=_scores(models_, shown),
        register="import distill  # registers the CIFAR ResNets with timm\n" if meta.model in CIFAR_RESNETS else "",
        onnx=(f"`model.onnx`: opset {checks.opset}, input `input` [batch, 3, {pre.size}, "
              f"{pre.size}] (dynamic batch axis), output `logits`; largest difference from PyTorch on "
              f"{checks.onnx_images} validation images: {checks.onnx_max_abs_diff:.2e}."
              if checks.onnx_max_abs_diff is not None else
              "No ONNX file: `pip install -e \".[export]\"` (onnx, onnxruntime) and rerun `stage=export` to add it."),
        class_names=", ".join(names[:20]) + (", ..." if len(names) > 20 else ""))


def _method_line(cfg: Config) -> str:
    """The distillation method with its paper and settings, as the card names it."""
    kd = cfg.kd
    return methods.chosen(kd).card_line(kd) + (", logit standardization" if kd.logit_standardization else "")


def _scores(models_: dict[str, Row], shown: list[str]) -> str:
    """The card's table: each model's architecture, size and top-1 (test top-1 when a test split was scored)."""
    test = any(r.test for r in models_.values())
    rows = ["| model | architecture | params | val top-1 |" + (" test top-1 |" if test else ""),
            "| --- | --- | --- | --- |" + (" --- |" if test else "")]
    for name in shown:
        r = models_[name]
        rows.append(f"| {name} | `{r.model}` | {r.params / 1e6:.3f} M | {r.top1:.2f}% "
                    f"({r.val_count or '?'} images) |"
                    + (f" {r.test.top1:.2f}% ({r.test.count} images) |" if r.test else " - |" if test else ""))
    return "\n".join(rows)


def _origin(cfg: Config) -> tuple[str, str]:
    """The recipe Hydra composed and the command line of this process, when it is distill's entry point."""
    recipe = cfg.name
    try:
        from hydra.core.hydra_config import HydraConfig
        recipe = HydraConfig.get().runtime.choices.get("recipe", recipe)
    except (ImportError, ValueError):  # not under Hydra's main (a run from Python)
        pass
    if sys.argv and sys.argv[0].endswith(("run.py", "distill.run")):
        return recipe, "python distill/run.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return recipe, f"python distill/run.py recipe={recipe} ..."


def opset_problem(opset: int) -> str | None:
    """Why the exporter _onnx uses (TorchScript's) cannot write ONNX opset `opset` with this PyTorch, or None:
    checked before any work (preflight); PyTorch states its newest opset in torch.onnx._constants only."""
    try:
        from torch.onnx import _constants
    except ImportError:  # not stated: the export itself says
        return None
    newest = getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", getattr(_constants, "ONNX_MAX_OPSET", None))
    if newest is None or opset <= newest:
        return None
    return f"PyTorch {torch.__version__} writes ONNX opsets up to {newest}, not {opset}"


def _push(folder: Path, repo: str) -> None:
    """Upload the folder with huggingface_hub; one line saying what to do when that cannot work."""
    then = f"the export is in {folder}; rerun stage=export export.hub_repo={repo} once that is fixed"
    hub.push(folder, repo, "export.hub_repo", then)


@STAGES.register("export", help="the student as a timm model folder (safetensors, ONNX, model card), pushed to the "
                                 "Hub if asked")
def run(ctx: RunContext) -> ExportRecord:
    """The student's export folder, rebuilt when the student, its numbers or the export settings changed."""
    cfg, acc, run_dir = ctx.cfg, ctx.acc, ctx.run_dir
    out = run_dir / "export"
    meta = layout.require_trained(layout.student_dir(run_dir), "export", "student")
    summary = Summary.read(run_dir / "summary.json")
    if summary is None:
        raise DataError(f"export: no report in {run_dir} (summary.json); run stage=export (or stage=all)")
    pre = preprocessing(cfg, ctx.norm)
    onnx = cfg.export.onnx and _have_onnx()
    rows = {name: row.to_json() for name, row in summary.models.items()}  # as summary.json holds them
    fp = files.fingerprint({"weights": meta.weights_sha256, "summary": rows, "pre": pre.pretrained_cfg(),
                            "onnx": onnx, "opset": cfg.export.opset, "kd": meta.config, "name": cfg.name})
    done = ExportRecord.read(out / "export.json")
    if done and done.fingerprint == fp and _intact(out, done):
        log.info(f"export: reusing {out}")
    elif acc.is_main_process:
        done = _write(ctx, summary, pre, onnx, fp)
    acc.wait_for_everyone()
    done = done or ExportRecord.read(out / "export.json")
    if cfg.export.onnx and not onnx:
        log.warning("export: no model.onnx; pip install -e \".[export]\" (onnx, onnxruntime) and rerun stage=export")
    if cfg.export.hub_repo and acc.is_main_process:
        _push(out, cfg.export.hub_repo)
    log.info(f"export: {out} (load it with timm.create_model(\"local-dir:{out}\", pretrained=True); "
             f"python -m distill.predict {out} IMAGE)")
    return done


def _intact(out: Path, record: ExportRecord) -> bool:
    """Every file export.json lists is there with the bytes it recorded; otherwise say which is not (rebuilt)."""
    for name, digest in record.sha256.items():
        if not (out / name).is_file() or digest is None or files.sha256(out / name) != digest:
            log.warning(f"export: {out / name} is missing or fails its checksum; rebuilding the export")
            return False
    return True


def _write(ctx: RunContext, summary: Summary, pre: Preprocessing, onnx: bool, fp: str) -> ExportRecord:
    """The export written to a temporary folder, checked, then renamed into place; its record."""
    cfg, bundle, run_dir = ctx.cfg, ctx.data, ctx.run_dir
    out, tmp = run_dir / "export", run_dir / "export.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    from timm.models import save_for_hf

    model, meta = models.load_trained(layout.student_dir(run_dir), bundle.num_classes, "export", "student")
    model.eval()
    model.pretrained_cfg = dict(model.pretrained_cfg, num_classes=bundle.num_classes, **pre.pretrained_cfg())
    save_for_hf(model, str(tmp), model_config={"label_names": list(bundle.class_names)},
                model_args=meta.model_args or None, safe_serialization=True)  # timm rebuilds it with them
    x = _val_batch(cfg, bundle, ctx.norm)  # on the host: checked on the CPU, as it is exported
    checks = ExportChecks(cfg.export.opset, len(x), _throughput(model, x))
    if onnx:
        diff = _onnx(model, x, tmp / "model.onnx", cfg.export.opset)
        checks = dataclasses.replace(checks, onnx_max_abs_diff=diff, onnx_images=len(x))
        log.info(f"export: model.onnx (opset {cfg.export.opset}, dynamic batch) matches PyTorch on {len(x)} "
                 f"validation images to {diff:.2e} (largest absolute difference)")
        if diff > 1e-3:
            raise DataError(f"export: model.onnx differs from the PyTorch model by {diff:.2e} on validation images; "
                            "not exported")
    (tmp / "README.md").write_text(_card(cfg, meta, summary, checks, pre))
    record = ExportRecord(fp, meta.weights_sha256, checks, {p.name: files.sha256(p) for p in sorted(tmp.iterdir())})
    files.write_json(tmp / "export.json", record.to_json())
    faults.point("export", 1)  # tests and chaos runs: an interruption with the export written but not yet renamed
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log.info(f"export: wrote {', '.join(record.files)}")
    return record
