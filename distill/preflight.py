"""Checks that need the libraries but no work: run before the first stage, so that a bad model name or tracker, or
a model that cannot take the data's images, stops the run in one line instead of after the teacher trained and the
cache was built."""
from __future__ import annotations

import difflib
import os
import tempfile
from pathlib import Path

import timm

from distill.training import models  # also registers the CIFAR ResNets, so their names are timm names
from distill import methods
from distill.config import Config, teacher_sections
from distill.errors import ConfigError


def check_model(name: str, key: str, pretrained: bool = False) -> None:
    """`name` must be a timm model; with `pretrained`, one that timm has hub weights for (nothing is fetched).
    Names timm resolves when loading (`hf-hub:...`, `local-dir:...`) are left to the load."""
    if name.startswith(("hf-hub:", "local-dir:")):
        return
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else "; see timm.list_models()"
        raise ConfigError(f"{key}: '{name}' is not a timm model name{hint}")
    if pretrained and not timm.list_pretrained(name if "." in name else name + ".*"):
        raise ConfigError(f"{key}: timm has no pretrained weights for '{name}'; set teacher.checkpoint=FILE, or "
                          "teacher.source=train")


def check_tracker(name: str | None) -> None:
    """A tracker asked for must be installed: accelerate would otherwise warn once and log nothing."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    if name is None or name == "all":
        return
    if name not in LOGGER_TYPE_TO_CLASS:
        raise ConfigError(f"log_with: '{name}' is not an accelerate tracker ({', '.join(LOGGER_TYPE_TO_CLASS)})")
    if name not in get_available_trackers():
        extra = " (or pip install -e '.[tensorboard]')" if name == "tensorboard" else ""
        raise ConfigError(f"log_with: the {name} tracker is not installed; pip install {name}{extra}")


def before_data(cfg: Config) -> None:
    for key, teacher in teacher_sections(cfg).items():  # the teacher, or each of an ensemble
        hub_weights = teacher.source == "timm" and teacher.pretrained and not teacher.checkpoint
        check_model(teacher.model, f"{key}.model", hub_weights)
        if teacher.checkpoint:  # read and fitted to its model before any teacher is built
            if not Path(teacher.checkpoint).is_file():
                what = "is a folder, not a checkpoint file" if Path(teacher.checkpoint).is_dir() else "no such file"
                raise ConfigError(f"{key}.checkpoint: {teacher.checkpoint}: {what}")
            if not teacher.model.startswith(("hf-hub:", "local-dir:")):
                models.check_file(teacher.model, teacher.checkpoint, f"{key}.checkpoint")
    check_model(cfg.student.model, "student.model")
    if cfg.student.model_args:  # timm turns down an argument when it builds: one line here, not a traceback below
        _build("student", cfg.student.model, 2, cfg.student.model_args)
    if cfg.kd.token and not models.has_distillation_head(cfg.student.model, cfg.student.model_args):
        raise ConfigError(f"kd.token: student.model={cfg.student.model} has no distillation head; timm's models "
                          f"with one: {', '.join(models.distilled_models())}")
    check_features(cfg)
    check_tracker(cfg.log_with)
    if cfg.stage in ("export", "all"):  # found before the pipeline, not after it
        check_export(cfg)
    check_publish(cfg)


def check_export(cfg: Config) -> None:
    """What the export stage would refuse after all the training: an ONNX opset this PyTorch cannot write
    (export.opset), a Hub push that cannot happen (export.hub_repo)."""
    from distill.stages import export

    if cfg.export.onnx:
        problem = export.opset_problem(cfg.export.opset)
        if problem:
            raise ConfigError(f"export.opset: {problem}; set export.opset lower, or export.onnx=false")
    if cfg.export.hub_repo:
        problem = export.hub_problem()
        if problem:
            raise ConfigError(f"export.hub_repo: {problem}; fix that, or drop export.hub_repo (checked before any "
                              "work)")


def check_publish(cfg: Config) -> None:
    """A push of the published cache that cannot happen (publish.hub_repo), refused before any work."""
    from distill.store import hub

    problem = hub.hub_problem() if cfg.stage == "publish" and cfg.publish.hub_repo else None
    if problem:
        raise ConfigError(f"publish.hub_repo: {problem}; fix that, or drop publish.hub_repo (checked before any work)")


def makes_cache(cfg: Config) -> bool:
    """Whether this run goes through the cache stage (kd.teacher=online makes none, unless stage=cache asks)."""
    return "cache" in cfg.stages() and (cfg.kd.teacher != "online" or cfg.stage == "cache")


def check_folder(key: str, folder: Path) -> None:
    """`folder` (the setting `key`'s) is a folder, or can be made, and takes new files (tried with an empty temporary
    folder, removed at once); else ConfigError naming `key`. A permission, a read-only or a full disk gives the line a
    stage would give on meeting it (cli.file_problem)."""
    from distill import cli

    folder = Path(os.path.expanduser(folder)).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    fix = f"give {key}= a folder this user can write (checked before any work)"
    if not existing.is_dir():
        what = "is a file, not a folder" if existing == folder else f"is a file, so {folder} cannot be a folder"
        raise ConfigError(f"{key}: {existing} {what}; {fix}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".distill-write-check-", dir=existing))
    except OSError as e:
        made = existing / folder.relative_to(existing).parts[0] if existing != folder else folder
        line = cli.file_problem(OSError(e.errno, e.strerror, str(made)), key=key)
        raise ConfigError(line or f"{key}: cannot make {made} ({existing}: {e.strerror}); {fix}") from None


def check_folders(cfg: Config, run_dir: Path) -> None:
    """Every folder this run writes into passes check_folder: the run's (under run_root; a sweep point's under
    hydra.sweep.dir), the cache root when a cache is made (cache.root), each teacher's own folder when the teacher
    stage runs (teacher.dir, teachers.NAME.dir). Before any work."""
    inside = Path(cfg.run_root).absolute() in (run_dir.absolute(), *run_dir.absolute().parents)
    places = {"run_root" if inside else "hydra.sweep.dir": run_dir}
    if "teacher" in cfg.stages():
        places |= {f"{key}.dir": Path(t.dir) for key, t in teacher_sections(cfg).items() if t.dir}
    if makes_cache(cfg):
        places["cache.root"] = Path(cfg.cache.root)
    for key, folder in places.items():
        check_folder(key, folder)


def check_batches(cfg: Config, num_images: int, num_processes: int) -> None:
    """Each model this run trains takes at least one step an epoch: its batch_size x processes x grad_accum images at
    most the training split's (the student, and each teacher trained or fine-tuned here)."""
    trains = {}
    if "teacher" in cfg.stages():
        trains = {key: t for key, t in teacher_sections(cfg).items() if t.source == "train" or t.finetune.epochs}
    if "student" in cfg.stages():
        trains["student"] = cfg.student
    for key, section in trains.items():
        if section.batch_size * num_processes * section.grad_accum > num_images:
            raise ConfigError(f"{key}.batch_size: {section.batch_size} x {num_processes} process(es) x grad_accum "
                              f"{section.grad_accum} is more than the {num_images} training images (no step an "
                              f"epoch); lower {key}.batch_size (checked before any work)")


def unused(cfg: Config, num_images: int) -> list[str]:
    """Settings that cannot act on this data, one line each (said once, not refused)."""
    size = cfg.data.train_size
    if size is not None and size > num_images:
        return [f"data.train_size={size}: the training split has {num_images} images; this run uses all of them"]
    return []


def _pooled_problem(name: str, model_args: dict | None = None) -> str | None:
    """Why timm cannot give the pooled pre-logit feature of model `name` (None: it can, or the name is one timm
    resolves only when loading, which the cache stage checks)."""
    if name.startswith(("hf-hub:", "local-dir:")):
        return None
    return models.feature_problem(models.architecture(name, 2, model_args))


def check_features(cfg: Config) -> None:
    """Feature distillation needs the pooled feature of the student and of the teacher (timm's forward_features
    and forward_head(pre_logits=True)); a feature cache, the teacher's."""
    wanted = {}
    asks = "kd.feature_weight" if cfg.kd.feature_weight > 0 else "kd.loss" if methods.reads_features(cfg.kd) else None
    if asks:  # the student learns the teacher's feature (the feature term, or a feature method)
        wanted[asks] = [("student.model", cfg.student.model, cfg.student.model_args)]
    if asks or cfg.cache.features:
        key = asks or "cache.features"
        wanted.setdefault(key, []).extend((f"{k}.model", t.model, None) for k, t in teacher_sections(cfg).items())
    for key, found in wanted.items():
        for which, name, args in found:
            problem = _pooled_problem(name, args)
            if problem:
                raise ConfigError(f"{key}: timm cannot give the pooled pre-logit feature of {which}={name} "
                                  f"({problem}); feature distillation needs forward_features and "
                                  "forward_head(pre_logits=True)")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0].rstrip('.')}" if text else type(e).__name__


def _build(key: str, name: str, num_classes: int, model_args: dict | None):
    """Model `name` on the meta device (models.architecture); a failure to build it stops in one line naming
    `key`.model_args when they were given (timm turns them down), else `key`.model."""
    try:
        return models.architecture(name, num_classes, model_args)
    except Exception as e:  # noqa: BLE001 - timm's builders fail in many ways; each is this one line
        if model_args:
            raise ConfigError(f"{key}.model_args: {name} cannot be built with {model_args} ({_first_line(e)}); fix "
                              f"or drop {key}.model_args") from None
        raise ConfigError(f"{key}.model: {name} cannot be built ({_first_line(e)})") from None


def _meta_problem(model, image_size: int):
    """(the forward's answer, None) of `model` on 2 images of `image_size` px on the meta device, or (None, why it
    failed); (None, None) when the meta device cannot run it (an op without a meta kernel, a data-dependent one)."""
    try:
        return models.meta_logits(model, image_size), None
    except NotImplementedError:
        return None, None
    except Exception as e:  # noqa: BLE001 - a size the model cannot take surfaces as whatever its layers raise
        return None, (None if "meta" in str(e).lower() else _first_line(e))


def check_input(key: str, name: str, model_args: dict | None, image_size: int, num_classes: int) -> None:
    """Model `name` (the section `key`'s) takes the data's images and answers one score per class: built on the meta
    device and run once on [2, 3, S, S] (shapes only: no memory, no arithmetic). A failure is one line naming what
    to set. Names timm resolves only when loading (`hf-hub:`, `local-dir:`) are left to the load, and a forward the
    meta device cannot run to the training."""
    if name.startswith(("hf-hub:", "local-dir:")):
        return
    model = _build(key, name, num_classes, model_args)
    out, problem = _meta_problem(model, image_size)
    if problem:
        built = (model_args or {}).get("img_size") or (model.pretrained_cfg.get("input_size") or [None])[-1]
        if isinstance(built, int) and built != image_size and _meta_problem(model, built)[1] is None:
            fixes = [f"{key}.model_args.img_size={image_size}"] if key == "student" and models.takes_img_size(
                model) else []
            raise ConfigError(f"{key}.model: {name} cannot take {image_size} px images ({problem}); set "
                              f"{' or '.join(fixes + [f'data.image_size={built}'])}")
        what = f"{key}.model_args" if model_args else f"{key}.model"
        raise ConfigError(f"{what}: {name}{f' with {model_args}' if model_args else ''} fails on 2 images of "
                          f"{image_size} px ({problem}); choose another {what} or data.image_size")
    shape = tuple(getattr(out, "shape", ())) if out is not None else (2, num_classes)
    if shape != (2, num_classes):
        what = f"{key}.model_args" if model_args else f"{key}.model"
        raise ConfigError(f"{what}: {name} answers {shape or type(out).__name__} for 2 images of {image_size} px, "
                          f"not (2, {num_classes}): one score per class of the data; keep timm's classifier head")


def check_models(cfg: Config, num_classes: int) -> None:
    """The student and every teacher take the data's images (data.image_size) and answer its class count."""
    check_input("student", cfg.student.model, cfg.student.model_args, cfg.data.image_size, num_classes)
    for key, teacher in teacher_sections(cfg).items():
        check_input(key, teacher.model, None, cfg.data.image_size, num_classes)


def after_data(cfg: Config, num_images: int, num_classes: int) -> None:
    """Checks that need the data but no work: every model takes its images and class count, kd.focal_alpha has one
    weight per class, and a cache over cache.max_gb stops before the teacher trains."""
    from distill.stages import cache

    check_models(cfg, num_classes)
    alpha = cfg.kd.focal_alpha
    if alpha is not None and len(alpha) != num_classes:
        raise ConfigError(f"kd.focal_alpha: {len(alpha)} weights for {num_classes} classes; give one per class, in "
                          "the order of the data's class ids")
    if not uses_cache(cfg):
        return
    dtype = cache.record_dtype(cfg, num_classes)
    for key, teacher in teacher_sections(cfg).items():
        width = None
        if cfg.cache.features:
            if teacher.model.startswith(("hf-hub:", "local-dir:")):
                continue  # its width is known once loaded: the cache stage checks it then
            width = models.feature_width(models.architecture(teacher.model, num_classes))
        problem = cache.too_big(cfg, num_images, dtype, width, key.split(".", 1)[-1])
        if problem:
            raise ConfigError(problem)


def uses_cache(cfg: Config) -> bool:
    """Whether this run makes or reads the cache (no: stage=teacher, or kd.teacher=online without stage=cache)."""
    return not (cfg.stage == "teacher" or (cfg.kd.teacher == "online" and cfg.stage != "cache"))


def check_shared(acc, cfg: Config, run_dir: Path) -> None:
    """With several machines, each folder where one process reads what another wrote must be one folder that every
    process sees (a shared filesystem): the run folder, then cache.root when the run uses the cache. ConfigError on
    every process, naming the setting, the folder and the first process that does not see it, before any data is
    read."""
    if acc.num_processes == 1:
        return
    folders = [("run_root", run_dir, "run folder")]
    if uses_cache(cfg):
        folders.append(("cache.root", Path(cfg.cache.root), "cache root"))
    for key, folder, what in folders:
        blind = _blind(acc, folder)
        if blind:
            raise ConfigError(f"{key}: {folder} is not shared between the machines: process {blind[0]} does not see "
                              f"the file process 0 wrote there; the {what} must be shared (give every machine the "
                              f"same {key} on a shared filesystem)")


def _blind(acc, folder: Path) -> list[int]:
    """The processes that do not see the token file the main process writes in `folder` (and then removes)."""
    import uuid

    from accelerate.utils import broadcast_object_list, gather_object

    token = [uuid.uuid4().hex if acc.is_main_process else None]
    broadcast_object_list(token)
    probe = folder / f".shared-{token[0]}"
    if acc.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_text(token[0])
    acc.wait_for_everyone()
    seen = gather_object([(acc.process_index, probe.is_file() and probe.read_text() == token[0])])
    acc.wait_for_everyone()
    if acc.is_main_process:
        probe.unlink()
    return [rank for rank, ok in seen if not ok]


def fewer_processes(num_processes: int, environ: dict) -> str | None:
    """The warning line when `accelerate launch` was asked for several processes and started one (None: it was
    not, or the run was not started by it). Its plain launcher (no --multi_gpu) starts one process however many
    --num_processes asks for, and sets MASTER_ADDR only when asked for more than one; the launchers that start
    several (torchrun, behind --multi_gpu) set WORLD_SIZE. Read from accelerate 1.x's launch code: its environment
    is all that says what was asked for."""
    launched = "ACCELERATE_MIXED_PRECISION" in environ  # set by every `accelerate launch`
    if num_processes > 1 or not launched or "MASTER_ADDR" not in environ or "WORLD_SIZE" in environ:
        return None
    threads = environ.get("OMP_NUM_THREADS")
    return ("accelerate launch was asked for several processes but started one (--num_processes without "
            "--multi_gpu)" + (f", under OMP_NUM_THREADS={threads}" if threads else "") + "; for several, add "
            "--multi_gpu (with --cpu: CPU processes over gloo; on a GPU machine: one process per GPU)")
