"""Model creation through timm, weight initialisation, and loading of checkpoint files."""
from __future__ import annotations

import inspect
import logging
import math
from pathlib import Path

import timm
import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

from distill.training import cifar_resnet  # noqa: F401  (registers the CIFAR ResNets in timm's registry)
from distill.errors import CheckpointError
from distill.store import artifacts, layout
from distill.store.records import Meta

log = logging.getLogger("distill")


def create(name: str, num_classes: int, drop_rate: float = 0.0, pretrained: bool = False,
           model_args: dict | None = None) -> nn.Module:
    """timm's model `name` with this class count; `model_args` go to timm.create_model (a ViT's img_size, ...)."""
    if name not in timm.list_models() and not pretrained:
        raise CheckpointError(f"model '{name}' is not a timm model name (see timm.list_models())")
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, drop_rate=drop_rate,
                                 **(model_args or {}))
    except (OSError, RuntimeError, ValueError) as e:
        if not pretrained:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"could not fetch the hub weights of '{name}' ({first}); offline, point teacher.checkpoint "
            "at a local .safetensors/.pth file") from None


def compiled(model: nn.Module, on: bool) -> nn.Module:
    """`model` through torch.compile (inductor, its default mode) when `on`, else `model` itself. The compiled module
    shares the model's parameters and buffers, and compiles at its first calls (in the caller's time). torch.compile
    directly, not accelerate's dynamo_backend: accelerate compiles whatever `prepare` is given, for every stage of
    the run alike, while each stage chooses its own (teacher.compile, student.compile, cache.compile,
    kd.compile_teacher) and the teacher that labels the cache or runs online never goes through `prepare`."""
    return torch.compile(model) if on else model


def frozen(model: nn.Module, device: torch.device | str) -> nn.Module:
    """A model for inference only (the teacher that labels the cache, or runs online): eval mode, channels_last on
    `device`, and each Conv2d -> BatchNorm2d pair folded into one convolution by torch.fx (the same function up to
    float rounding, and faster: docs/benchmarks.md). timm's fused
    BatchNormAct2d (MobileNetV3, EfficientNet) stays as it is, and so does a model fx cannot trace."""
    model.eval()
    try:
        model = fuse(model)
    except Exception as e:  # noqa: BLE001 - tracing fails in many ways; the unfolded model is still correct
        log.info(f"teacher: BatchNorm left unfolded (torch.fx could not trace the model: {type(e).__name__})")
    return model.to(device, memory_format=torch.channels_last).eval()


def init_weights(model: nn.Module, scheme: str, zero_gamma: bool) -> None:
    """Re-initialise a model trained from scratch. `timm` keeps the model's own init."""
    if scheme != "timm":
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if scheme == "kaiming":
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif scheme == "xavier":
                    nn.init.xavier_normal_(m.weight)
                elif scheme == "orthogonal":
                    nn.init.orthogonal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if scheme == "kaiming":  # the classifier sees no ReLU after it: a small normal keeps logits near 0
            head = model.get_classifier() if hasattr(model, "get_classifier") else None
            if isinstance(head, nn.Linear):
                nn.init.normal_(head.weight, std=1.0 / math.sqrt(head.in_features))
    if zero_gamma:  # timm's residual blocks and ours expose zero_init_last()
        for m in model.modules():
            if hasattr(m, "zero_init_last"):
                m.zero_init_last()


def _classifier_rows(model: nn.Module, state: dict) -> int | None:
    name = model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
    names = name if isinstance(name, (list, tuple)) else [name]
    for n in names:
        w = state.get(f"{n}.weight")
        if w is not None:
            return int(w.shape[0])
    return None


def _read_state(path: Path, setting: str) -> dict:
    """A local checkpoint's tensors, read with timm's loader (safetensors, or torch files with weights_only=True;
    unsafe pickles are refused); CheckpointError naming `setting` and the file otherwise."""
    if not path.is_file():
        raise CheckpointError(f"{setting}: no such file: {path}")
    try:
        return timm.models.load_state_dict(str(path), use_ema=False, weights_only=True)
    except RuntimeError as e:
        if "weights_only" in str(e):
            raise CheckpointError(f"{setting}: {path} was refused: loading it needs unsafe unpickling "
                                  "(it could run code); save its state_dict with torch.save or as .safetensors"
                                  ) from None
        raise CheckpointError(f"{setting}: {path} could not be read: {str(e).splitlines()[0]}") from None
    except Exception as e:  # a torn or foreign file: say which file, not a 40-line traceback
        why = f"{type(e).__name__}: {e}" if str(e) else f"{type(e).__name__}: empty or truncated"
        raise CheckpointError(f"{setting}: {path} could not be read ({why})") from None


def _fitted(name: str, path: Path, state: dict, setting: str, classes: int | None = None) -> int | None:
    """The class count of checkpoint `state` for model `name` (its classifier's rows; `classes` when timm does not
    name the model's classifier), when every tensor fits the model built with it (on the meta device);
    CheckpointError naming the first that does not, or the keys missing or left over. None, checking nothing, when
    the class count is known neither way."""
    classes = _classifier_rows(architecture(name, 1), state) or classes
    if classes is None:
        return None
    own = {k: tuple(v.shape) for k, v in architecture(name, classes).state_dict().items()}
    for key, value in state.items():
        if key in own and tuple(value.shape) != own[key]:
            raise CheckpointError(f"{setting}: {path} does not fit {name}: {key} is {tuple(value.shape)} "
                                  f"in the file, {own[key]} in the model")
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    if missing or unexpected:
        def show(keys):
            return "[" + ", ".join(keys[:5]) + (f", ... +{len(keys) - 5}" if len(keys) > 5 else "") + "]"
        raise CheckpointError(f"{setting}: {path} does not fit {name}: missing keys {show(missing)}, unexpected "
                              f"keys {show(unexpected)}")
    return classes


def check_file(name: str, path: str | Path, setting: str = "teacher.checkpoint") -> None:
    """A checkpoint file that cannot be read, or does not fit model `name`, stops in one line naming `setting`:
    checked before any work (the file is read once more when the teacher is loaded; a model whose classifier timm
    does not name is fitted then, with the data's class count)."""
    path = Path(path)
    _fitted(name, path, _read_state(path, setting), setting)


def load_file(name: str, path: str | Path, num_classes: int, drop_rate: float = 0.0,
              setting: str = "teacher.checkpoint") -> tuple[nn.Module, bool]:
    """Build `name` and load a local checkpoint with timm's loader (safetensors, or torch files with
    weights_only=True; unsafe pickles are refused). Returns (model, head_was_reset): when the checkpoint's class
    count differs from the data's, the classifier is replaced and must be fine-tuned. Errors name `setting`."""
    path = Path(path)
    state = _read_state(path, setting)
    ckpt_classes = _fitted(name, path, state, setting, num_classes)
    model = create(name, num_classes=ckpt_classes, drop_rate=drop_rate)
    model.load_state_dict(state)
    if ckpt_classes != num_classes:
        model.reset_classifier(num_classes)
        return model, True
    return model, False


def has_distillation_head(name: str, model_args: dict | None = None) -> bool:
    """Whether timm's `name` has a distillation token and head (DeiT's VisionTransformerDistilled and kin)."""
    return hasattr(architecture(name, 2, model_args), "set_distilled_training")


def distilled_models() -> list[str]:
    """timm's models with a distillation head (by name: timm marks them *_distilled*)."""
    return timm.list_models("*distilled*")


def feature_width(model: nn.Module) -> int:
    """The width of the model's pooled pre-logit feature, as timm's feature task reads it (head_hidden_size, else
    num_features)."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def feature_problem(model: nn.Module) -> str | None:
    """Why timm cannot give this model's pooled pre-logit feature (None: it can): it needs forward_features,
    forward_head(..., pre_logits=True) and a feature width, as timm's feature task does."""
    head = getattr(model, "forward_head", None)
    if not callable(getattr(model, "forward_features", None)) or not callable(head):
        return "it has no forward_features/forward_head"
    if "pre_logits" not in inspect.signature(head).parameters:
        return "its forward_head takes no pre_logits"
    if not (getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)):
        return "it states no feature width (head_hidden_size or num_features)"
    return None


def architecture(name: str, num_classes: int, model_args: dict | None = None) -> nn.Module:
    """timm's model `name` (a hub tag such as `resnet50.a1_in1k` allowed) built on the meta device, without memory
    or weights: for checks of its shape before any work."""
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **(model_args or {}))


def meta_logits(model: nn.Module, image_size: int) -> torch.Tensor:
    """What `model` (built by `architecture`) answers in eval mode for a batch of 2 RGB images of `image_size` px,
    on the meta device: shapes only, no arithmetic. A tuple answer (a distilled model's two heads) gives its first.
    Raises what the forward raises (timm's ViTs: AssertionError on another image size)."""
    model.eval()
    with torch.no_grad():
        out = model(torch.empty(2, 3, image_size, image_size, device="meta"))
    return out[0] if isinstance(out, (tuple, list)) else out


def takes_img_size(model: nn.Module) -> bool:
    """Whether the model's class is built for one image size given as `img_size` (timm's ViTs, Swin, ...)."""
    for cls in type(model).__mro__:
        try:
            if "__init__" in vars(cls) and "img_size" in inspect.signature(cls.__init__).parameters:
                return True
        except (TypeError, ValueError):  # an __init__ without a signature (written in C)
            continue
    return False


class PooledTeacher(nn.Module):
    """A teacher that answers (logits, pooled pre-logit feature) in one forward: timm's forward_features, then
    forward_head for the logits (the model's own forward) and forward_head(pre_logits=True) for the feature."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.model.forward_features(x)
        return self.model.forward_head(f), self.model.forward_head(f, pre_logits=True)


class FeatureStudent(nn.Module):
    """The student during feature distillation: in training its output is {"logits": the model's training output,
    "feature": its pooled pre-logit feature through `project`} (a Linear to the teacher's width when the widths
    differ, as timm's feature task; trained with the student); in eval mode the model's own logits. The stage
    publishes `.model`, so the projection never enters the exported student."""

    def __init__(self, model: nn.Module, teacher_width: int):
        super().__init__()
        self.model, width = model, feature_width(model)
        self.project = nn.Linear(width, teacher_width) if width != teacher_width else nn.Identity()

    def forward(self, x: torch.Tensor):
        if not self.training:
            return self.model(x)
        f = self.model.forward_features(x)
        return {"logits": self.model.forward_head(f),
                "feature": self.project(self.model.forward_head(f, pre_logits=True))}


def load_trained(folder: Path, num_classes: int, needed_by: str, what: str) -> tuple[nn.Module, Meta]:
    """The model that stage `what` trained into `folder` (its meta.json names the architecture) and its meta; a
    missing one stops the run in one line naming the stage that makes it."""
    meta = layout.require_trained(folder, needed_by, what)
    model = create(meta.model, num_classes, model_args=meta.model_args)
    model.load_state_dict(artifacts.load_weights(folder))
    return model, meta


class Ensemble(nn.Module):
    """Several classifiers as one, combined as the student's target is (common.logspace.ensemble: mean_probs or
    mean_logits, weighted, at temperature T, on z-scored logits with kd.logit_standardization): the output is the
    combined log-probabilities, so its argmax is the ensemble's prediction."""

    def __init__(self, nets: list[nn.Module], weights: list[float] | None, rule: str, temperature: float,
                 standardized: bool = False):
        super().__init__()
        self.nets, self.rule, self.temperature, self.standardized = nn.ModuleList(nets), rule, temperature, standardized
        self.register_buffer("weights", torch.tensor(weights or [1.0] * len(nets), dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from distill.methods.common.logspace import ensemble, log_softmax_at
        from distill.methods.common.standardize import standardize

        outs = [net(x).float() for net in self.nets]
        return ensemble(torch.stack([log_softmax_at(standardize(z) if self.standardized else z, self.temperature)
                                     for z in outs]), self.weights, self.rule)
