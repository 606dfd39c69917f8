"""The typed configuration schema, and its validation: the only place that reads raw (Hydra) config.

Recipes are YAML composed by Hydra; `validate` merges the composed tree onto these dataclasses, which rejects
unknown keys and wrong types, then checks ranges and choices (the fields' rules) and each section's own rules (its
`check`), then the rules across sections (`Config.check`). Every failure is one line naming the key.

The `kd` section is composed from the methods' registry (distill/registry.py: this module imports no method): the
generic keys (KDBase) and one section per method with settings of its own (kd.dkd.alpha: distill/methods/dkd.py).
`KDCfg` and `Config` are those composed classes, made when first asked for (`schema()`); method files import torch,
so `validate` checks every other setting first. The extension points' choices (kd.loss, data.source, stage,
teacher.source) are their registries' names, read from the file names without importing them.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from distill import faults, files
from distill.errors import ConfigError
from distill.fields import MAX_WEIGHT, OUTPUTS, OWNER, setting as _f
from distill.registry import METHODS, SOURCES, STAGES, TEACHER_SOURCES

ALL = OUTPUTS
NONE = ()
TRAINED = ("teacher", "student", "baseline")
# Settings renamed since they were introduced: the old key stops in one line naming the new one.
RENAMED = {"kd.dkd_alpha": "kd.dkd.alpha", "kd.dkd_beta": "kd.dkd.beta", "kd.dkd_warmup": "kd.dkd.warmup",
           "kd.dist_beta": "kd.dist.beta", "kd.dist_gamma": "kd.dist.gamma", "kd.hard_smoothing": "kd.hard.smoothing"}


@dataclass
class OptimCfg:
    name: str = _f("sgd", doc="sgd | adamw | adam", choices=("sgd", "adamw", "adam"), changes=OWNER)
    lr: float = _f(0.1, doc="learning rate per 256 images; scaled linearly with the global batch", gt=0, changes=OWNER)
    momentum: float = _f(0.9, doc="SGD momentum", ge=0, lt=1, changes=OWNER)
    nesterov: bool = _f(True, doc="Nesterov momentum for SGD", changes=OWNER)
    betas: List[float] = _f(factory=lambda: [0.9, 0.999], doc="Adam/AdamW betas: two values in [0, 1)", count=2, ge=0,
                            lt=1, changes=OWNER)
    weight_decay: float = _f(5e-4, doc="weight decay", ge=0, changes=OWNER)
    decay_bias_norm: bool = _f(False, doc="also decay biases and norm parameters (off: no decay on them)",
                               changes=OWNER)
    switch_to_sgd_epoch: Optional[int] = _f(None, doc="Adam/AdamW only: switch to SGD from this epoch on", ge=1,
                                            changes=OWNER)
    switch_lr: float = _f(0.1, doc="SGD lr per 256 images after the switch", gt=0, changes=OWNER)

    def check(self, key: str) -> None:
        """The switch to SGD is for Adam/AdamW only. `key`: this section's (teacher.optim, student.optim...)."""
        if self.switch_to_sgd_epoch is not None and self.name == "sgd":
            raise ConfigError(f"{key}.switch_to_sgd_epoch: only for adam/adamw")


@dataclass
class SchedCfg:
    name: str = _f("cosine", doc="cosine | step | exponential | constant",
                   choices=("cosine", "step", "exponential", "constant"), changes=OWNER)
    warmup_epochs: float = _f(0.0, doc="linear warmup length in epochs (may be fractional)", ge=0, changes=OWNER)
    warmup_lr: float = _f(0.0, doc="lr at the first warmup step (absolute)", ge=0, changes=OWNER)
    min_lr: float = _f(0.0, doc="cosine floor (absolute)", ge=0, changes=OWNER)
    decay_epochs: float = _f(30.0, doc="step: epochs between decays", gt=0, changes=OWNER)
    decay_rate: float = _f(0.1, doc="step: factor per decay; exponential: factor per epoch", gt=0, le=1, changes=OWNER)


@dataclass
class MixCfg:
    mixup_alpha: float = _f(0.0, doc="Beta(alpha, alpha) for mixup; 0 disables mixup", ge=0, changes=OWNER)
    cutmix_alpha: float = _f(0.0, doc="Beta(alpha, alpha) for cutmix; 0 disables cutmix", ge=0, changes=OWNER)
    prob: float = _f(1.0, doc="probability that a batch (a cached view) is mixed at all", ge=0, le=1, changes=OWNER)
    switch_prob: float = _f(0.5, doc="with both enabled, probability of cutmix instead of mixup", ge=0, le=1,
                            changes=OWNER)

    @property
    def on(self) -> bool:
        """Whether these settings mix at all (mixup or cutmix enabled)."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


@dataclass
class TrainCfg:
    """The trick set; every training stage has one."""
    epochs: int = _f(10, doc="training epochs", ge=0, changes=OWNER)
    batch_size: int = _f(128, doc="images per process per step", ge=1, changes=OWNER)
    grad_accum: int = _f(1, doc="gradient accumulation steps", ge=1, changes=OWNER)
    optim: OptimCfg = _f(factory=OptimCfg, changes=OWNER)
    sched: SchedCfg = _f(factory=SchedCfg, changes=OWNER)
    label_smoothing: float = _f(0.0, doc="label smoothing epsilon", ge=0, lt=1, changes=OWNER)
    mix: MixCfg = _f(factory=MixCfg, changes=OWNER)
    clip_grad: Optional[float] = _f(None, doc="clip the gradient norm to this value", gt=0, changes=OWNER)
    drop_rate: float = _f(0.0, doc="dropout before the classifier", ge=0, lt=1, changes=OWNER)
    init: str = _f("kaiming", doc="kaiming | xavier | orthogonal | timm (the model's own)",
                   choices=("kaiming", "xavier", "orthogonal", "timm"), changes=OWNER)
    zero_gamma: bool = _f(True, doc="zero the last BN gamma of each residual block", changes=OWNER)
    channels_last: bool = _f(True, doc="channels_last memory format", changes=OWNER)
    log_every: int = _f(50, doc="steps between progress-bar loss updates", ge=1, changes=NONE)
    compile: bool = _f(False, doc="torch.compile the training forward and backward (inductor, its default mode; "
                                  "validation stays eager). The first steps compile: counted in the stage's time. "
                                  "Weights equal eager training's within float rounding, not bit for bit: in the "
                                  "fingerprint when true (docs/stages.md, Compiling)", changes=OWNER, when_set=True)


@dataclass
class FinetuneCfg:
    epochs: int = _f(0, doc="fine-tune a loaded teacher on the recipe's data for this many epochs", ge=0, changes=OWNER)
    lr: float = _f(0.01, doc="fine-tuning lr per 256 images", gt=0, changes=OWNER)


@dataclass
class TeacherCfg(TrainCfg):
    source: str = _f("train", doc=lambda: "where the teacher comes from: " + TEACHER_SOURCES.listing(),
                     choices=lambda: TEACHER_SOURCES.names(), changes=OWNER)
    model: str = _f("resnet20", doc="timm model name (CIFAR ResNets: resnet8 ... resnet110, resnet8x4, resnet32x4)",
                    changes=OWNER)
    pretrained: bool = _f(True, doc="source=timm without checkpoint: load the hub weights", changes=OWNER)
    checkpoint: Optional[str] = _f(None, doc="source=timm: local .safetensors/.pth/.pth.tar/.bin file", changes=OWNER)
    path: Optional[str] = _f(None, doc="source=published: the published cache, a Hub dataset id (ORG/NAME, or "
                                       "ORG/NAME@REVISION) or a local folder (docs/published.md); what it holds is in "
                                       "the identity of the cache made of it, not its name; in an ensemble, the "
                                       "local teachers label its views", changes=NONE)
    covered_only: bool = _f(False, doc="source=published: train on the training images the published cache "
                                       "covers (matched by content), leaving the others out (of every teacher's cache "
                                       "in an ensemble); false: refuse uncovered images (held in the identity of the "
                                       "cache made of it)", changes=NONE)
    dir: Optional[str] = _f(None, doc="the teacher stage's folder; null: <run>/teacher. Runs that name one folder "
                                      "share one teacher (and so one cache); a run with other teacher settings or "
                                      "data is refused there, never trained over it", changes=NONE)
    finetune: FinetuneCfg = _f(factory=FinetuneCfg, changes=OWNER)
    seed: Optional[int] = _f(None, doc="teacher seed (init, data order, mixing); null: the global seed (which also "
                                       "draws the cached views, shared by every teacher; an ensemble with a published "
                                       "cache labels its views instead)", changes=OWNER)

    def check(self, key: str) -> None:
        """A teacher's settings that its source would ignore, or that leave it untrained, stop in one line: a file or
        a fine-tuning given to a teacher trained from scratch, a timm teacher with no weights to load. `key`: this
        teacher's section (teacher, or teachers.NAME)."""
        if self.source == "train":
            if self.epochs < 1:
                raise ConfigError(f"{key}.epochs: must be >= 1 when {key}.source=train")
            if self.checkpoint:
                raise ConfigError(f"{key}.checkpoint: read only with {key}.source=timm (source=train trains the "
                                  f"teacher from scratch and would ignore {self.checkpoint}); set {key}.source=timm, "
                                  f"or drop {key}.checkpoint")
            if self.finetune.epochs > 0:
                raise ConfigError(f"{key}.finetune.epochs: fine-tunes a loaded teacher ({key}.source=timm); a teacher "
                                  f"trained from scratch takes {key}.epochs")
        elif self.source == "published" and not self.path:
            raise ConfigError(f"{key}.path: {key}.source=published needs the published cache (a Hub dataset id "
                              "ORG/NAME or a local folder)")
        elif self.source == "timm" and not self.checkpoint and not self.pretrained and self.finetune.epochs == 0:
            raise ConfigError(f"{key}.pretrained: false with no {key}.checkpoint loads no weights, so the teacher "
                              f"would be untrained; set {key}.checkpoint=FILE, {key}.pretrained=true, or "
                              f"{key}.source=train")


@dataclass
class DataCfg:
    source: str = _f("auto", doc=lambda: "auto (from data.path; the demo digits when no path is given) | "
                     + SOURCES.listing(), choices=lambda: ("auto", *SOURCES.names()), changes=ALL)
    path: Optional[str] = _f(None, doc="hub name, or a local parquet file/folder, imagefolder or save_to_disk folder",
                             changes=ALL)
    hub_config: Optional[str] = _f(None, doc="hub data set configuration name", changes=ALL)
    train_split: str = _f("train", doc="split to train on", changes=ALL)
    val_split: Optional[str] = _f(None, doc="validation split; null carves one from train", changes=ALL)
    test_split: Optional[str] = _f(None, doc="held-out test split (a split name, a sibling <name>.parquet of a parquet "
                                             "data.path, or a path to local data): every trained model is scored on "
                                             "it once, at the end; never trained, validated or cached on",
                                   changes=NONE)
    val_size: float = _f(0.1, doc="carved validation size: a fraction (<1) or a count", gt=0, changes=ALL)
    split_seed: int = _f(0, doc="seed of the validation carve", changes=ALL)
    train_size: Optional[int] = _f(None, doc="use only the first N training images (after the carve)", ge=1,
                                   changes=ALL)
    image_column: str = _f("image", doc="image column", changes=ALL)
    label_column: str = _f("label", doc="label column (ClassLabel gives the class names)", changes=ALL)
    image_size: int = _f(32, doc="side of the square network input", ge=1, changes=ALL)
    transform: str = _f("cifar", doc="cifar (pad-crop + flip) | imagenet (random-resized-crop + flip)",
                        choices=("cifar", "imagenet"), changes=ALL)
    padding: int = _f(4, doc="cifar: pad before the random crop", ge=0, changes=ALL)
    flip: bool = _f(True, doc="random horizontal flip", changes=ALL)
    scale: List[float] = _f(factory=lambda: [0.08, 1.0], doc="imagenet: RandomResizedCrop area range", changes=ALL)
    crop_pct: float = _f(0.875, doc="imagenet eval: center crop fraction", gt=0, le=1, changes=ALL)
    mean: Optional[List[float]] = _f(None, doc="per-channel mean (R, G, B) of pixels scaled to [0, 1], each in [0, 1]; "
                                     "null computes it from the training split", count=3, ge=0, le=1, changes=ALL)
    std: Optional[List[float]] = _f(None, doc="per-channel std (R, G, B) of pixels scaled to [0, 1], each in (0, 1]; "
                                    "null computes it from the training split", count=3, gt=0, le=1, changes=ALL)
    per_image_norm: bool = _f(False, doc="standardise each image's channels instead of mean/std", changes=ALL)
    stats_images: int = _f(5000, doc="images used to compute mean/std", ge=1, changes=ALL)
    num_workers: int = _f(2, doc="DataLoader workers per process", ge=0, changes=NONE)
    decode_mb: float = _f(4096, doc="decode a split once into memory when its images share one size and fit in "
                          "this many MB (0: decode per sample, every epoch)", ge=0, changes=NONE)
    renderer: str = _f("cpu", doc="where views are rendered: cpu (per image, in the loader workers) | device (each "
                                  "split decoded once into memory and kept on the training device, each batch's "
                                  "views rendered there; no workers). Teacher, cache and student use the one chosen, "
                                  "and the cache records it", choices=("cpu", "device"), changes=ALL)
    on_bad_image: str = _f("error", doc="error | skip (count and report) an image that fails to decode",
                           choices=("error", "skip"), changes=ALL)

    def check(self, key: str) -> None:
        """Statistics given whole, a valid crop scale and size, and a source that has what it reads."""
        if (self.mean is None) != (self.std is None):
            raise ConfigError(f"{key}.mean/{key}.std: give both or neither")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ConfigError(f"{key}.scale: needs [min, max] with 0 < min <= max <= 1, got {self.scale}")
        if self.source == "demo" and self.path:
            raise ConfigError(f"{key}.path: {self.path} is given but {key}.source=demo trains on the built-in digits; "
                              f"set {key}.source=auto to use the path, or drop {key}.path")
        if self.source not in ("demo", "auto") and not self.path:
            raise ConfigError(f"{key}.path: required for {key}.source={self.source}")
        if self.val_size >= 1 and self.val_size != int(self.val_size):
            raise ConfigError(f"{key}.val_size: {self.val_size} is neither a fraction < 1 nor a whole count")


@dataclass
class CacheCfg:
    root: str = _f("cache", doc="cache root; each cache lives in <root>/<fingerprint>/", changes=NONE)
    views: int = _f(4, doc="views per training image (V); keep student epochs / V <= 5 (docs/cache.md, The views "
                           "rule); a larger V grows an existing cache", ge=1, changes=("cache",))
    eval_view: bool = _f(True, doc="view 0 is the deterministic eval view; the others are random train views",
                         changes=("cache",))
    topk: int = _f(10, doc="teacher logits kept per view; >= classes keeps all (then the student may change T); "
                           "the fewer kept, the further the student's gradient from the full teacher's, the more so "
                           "at higher T (docs/benchmarks.md)", ge=1, changes=("cache",))
    shard_size: int = _f(10000, doc="images per shard file (fixed index ranges, independent of process count)",
                         ge=1, changes=("cache",))
    batch_size: int = _f(256, doc="teacher batch: each forward labels one view of this many images", ge=1,
                         changes=("cache",))
    mix: MixCfg = _f(factory=MixCfg,
                     changes=("cache",))  # mixed views: partner, its view, lambda/box drawn and stored per view
    features: bool = _f(False, doc="also store each view's pooled pre-logit teacher feature (fp16, its own shard "
                                   "files: 2 bytes x the teacher's feature width per view), for kd.feature_weight",
                        changes=("cache",))
    max_gb: float = _f(20.0, doc="refuse, before any work, a cache whose files would exceed this many GB", gt=0,
                       changes=NONE)
    compile: bool = _f(False, doc="torch.compile the teacher's forward that labels the cache; its logits equal "
                                  "eager's within float rounding, not bit for bit, so a compiled cache has an "
                                  "identity (folder) of its own (docs/stages.md, Compiling)", changes=("cache",),
                       when_set=True)


@dataclass
class StudentCfg(TrainCfg):
    epochs: int = _f(10, doc="training epochs (at least 1: the student stage always trains)", ge=1, changes=OWNER)
    model: str = _f("resnet8", doc="timm model name of the student", changes=OWNER)
    model_args: Optional[Dict[str, Any]] = _f(None, doc="keyword arguments for timm.create_model of the student, "
                                              "e.g. {img_size: 32, patch_size: 4} for a ViT at CIFAR's size",
                                              changes=OWNER)
    seed: Optional[int] = _f(None, doc="student seed (init, data order, mixing); null: the global seed", changes=OWNER)
    baseline: bool = _f(False, doc="also train the same student with CE only (same recipe, budget and seed)",
                        changes=NONE)


@dataclass
class KDBase:
    """The generic kd keys; each method's own section (kd.NAME) is added by `schema()` (KDCfg)."""
    loss: str = _f("kd", doc=lambda: "the distillation method (one file each in distill/methods/): "
                   + METHODS.listing() + ". w_ce is kd.ce_weight (null: 1 - kd.alpha for kd and hard, 1 for dkd "
                   "and dist). On a top-k cache the teacher's tail (classes outside the top k and the "
                   "view's own) is spread evenly: exact for what the cache stores (cache.topk >= classes: exact)",
                   choices=lambda: METHODS.names(), changes=("student",))
    alpha: float = _f(0.9, doc="kd and hard: weight of the distillation term (the CE term gets kd.ce_weight, by "
                               "default 1 - alpha); at most 1e6, as every loss weight", ge=0, le=MAX_WEIGHT,
                      changes=("student",))
    ce_weight: Optional[float] = _f(None, doc="weight of the CE term; null: 1 - kd.alpha for kd and hard, 1 for dkd "
                                              "and dist (the papers'); at most 1e6", ge=0, le=MAX_WEIGHT,
                                    changes=("student",))
    temperature: float = _f(4.0, doc="KD temperature T. A cache keeping the top k of more classes stores its soft "
                                     "labels at this T (one cache per T); one keeping every logit serves any T. At "
                                     "most 1000: the KD term is scaled by T^2 (a loss weight's bound, 1e6), and its "
                                     "soft labels are near uniform long before",
                            gt=0, le=math.sqrt(MAX_WEIGHT), changes=("student", "cache"))
    teacher: str = _f("cached", doc="cached (soft labels from the cache) | online (teacher run every step)",
                      choices=("cached", "online"), changes=("student",))
    views: str = _f("cycle", doc="which cached view sample i trains on at epoch e: cycle | random",
                    choices=("cycle", "random"), changes=("student",))
    balance: str = _f("fixed", doc="fixed (alpha) | scale (each term divided by its own detached value)",
                      choices=("fixed", "scale"), changes=("student",))
    ce: str = _f("ce", doc="the hard-label term: ce | focal", choices=("ce", "focal"), changes=("student",))
    focal_gamma: float = _f(2.0, doc="focal loss gamma", ge=0, changes=("student",))
    focal_alpha: Optional[List[float]] = _f(None, doc="focal loss per-class weights (one per class, each in [0, 1e6])",
                                            ge=0, le=MAX_WEIGHT, changes=("student",))
    logit_standardization: bool = _f(False, doc=lambda: "z-score teacher and student logits before the softmax (Sun "
                                     f"et al. 2024; {_standardizable()}); T is then the base temperature (the "
                                     "paper's CIFAR KD: 2, with kd.alpha=9 and kd.ce_weight=0.1)",
                                     changes=("student",))
    token: Optional[str] = _f(None, doc="a student with a distillation head (timm's *_distilled_* models, DeiT): "
                                        "the class head learns from the labels (CE), the distillation head from the "
                                        "teacher: soft (kd.loss) | hard (the teacher's top-1 class, kd.loss=hard); "
                                        "evaluated and exported as the two heads' average, as timm does. null: off",
                              choices=("soft", "hard"), changes=("student",))
    feature_weight: float = _f(0.0, doc="feature distillation: weight of the loss between the student's pooled "
                                         "pre-logit feature, through a learned linear projection when the widths "
                                         "differ (not exported), and the teacher's (timm's feature task); added to "
                                         "any kd.loss; cached needs cache.features=true. 0: off; at most 1e6", ge=0,
                               le=MAX_WEIGHT, changes=("student",))
    feature_loss: str = _f("mse", doc="feature distillation's loss: mse (timm's) | cosine (1 - cosine similarity)",
                           choices=("mse", "cosine"), changes=("student",))
    ensemble: str = _f("mean_probs", doc="several teachers (teachers=[...]): their targets combined per view, "
                                         "mean_probs (the average of their distributions at T) | mean_logits (of "
                                         "their logits); exact on caches that keep every logit, on each top-k "
                                         "cache's reconstruction (the tail spread evenly) otherwise",
                       choices=("mean_probs", "mean_logits"), changes=("student",))
    teacher_weights: Optional[List[float]] = _f(None, doc="several teachers: one weight each, in the order of "
                                                          "`teachers` (normalised to sum 1; each at most 1e6); "
                                                          "null: equal", le=MAX_WEIGHT, changes=("student",))
    compile_teacher: bool = _f(False, doc="kd.teacher=online: torch.compile the teacher's forward run every step "
                                          "(student.compile compiles the student's); the student's weights then "
                                          "equal eager's within float rounding: in its fingerprint when true "
                                          "(docs/stages.md, Compiling)", changes=("student",), when_set=True)

    def check(self, key: str) -> None:
        """kd.token=hard is hard-label distillation's; teacher weights that weigh something."""
        if self.token == "hard" and self.loss not in ("kd", "hard"):
            raise ConfigError(f"{key}.token: hard teaches the distillation head the teacher's class ({key}.loss=hard); "
                              f"{key}.loss={self.loss} teaches it with {key}.token=soft")
        weights = self.teacher_weights
        if weights is not None and (min(weights) < 0 or sum(weights) <= 0):
            raise ConfigError(f"{key}.teacher_weights: {list(weights)} must be >= 0 and not all 0")


@dataclass
class CheckpointCfg:
    every: int = _f(500, doc="save a checkpoint every N optimizer steps (0: only at epoch ends); always at epoch ends",
                    ge=0, changes=NONE)
    keep: int = _f(2, doc="complete checkpoints kept per stage (the newest)", ge=1, changes=NONE)


@dataclass
class ExportCfg:
    onnx: bool = _f(True, doc="also write model.onnx, checked against PyTorch (needs pip install -e '.[export]')",
                    changes=NONE)
    opset: int = _f(17, doc="ONNX opset", ge=9, changes=NONE)
    hub_repo: Optional[str] = _f(None, doc="push the export folder to this Hugging Face Hub repo (user/name)",
                                 changes=NONE)


@dataclass
class PublishCfg:
    hub_repo: Optional[str] = _f(None, doc="stage=publish: push the published cache folder to this Hugging Face Hub "
                                           "dataset repo (user/name; an ensemble's teacher NAME to user/name-NAME)",
                                 changes=NONE)
    teacher: Optional[str] = _f(None, doc="stage=publish of an ensemble (teachers=[...]): publish only its teacher "
                                          "NAME (null: each teacher, into <run>/published-NAME); each is that "
                                          "teacher's own distribution, never the ensemble's combination "
                                          "(docs/published.md)", changes=NONE)
    license: Optional[str] = _f(None, doc="stage=publish: the licence written into the dataset card's YAML `license` "
                                          "(a Hub licence id: cc-by-4.0, mit, apache-2.0, other, ...); null: the card "
                                          "states none", changes=NONE)


def _standardizable() -> str:
    """Which methods kd.logit_standardization applies to, and which it does not (their `standardizable` flag)."""
    able = [name for name, m in METHODS.entries().items() if m.standardizable]
    other = [name for name in METHODS.names() if name not in able]
    return "for kd.loss=" + " or ".join(able) + (f", not {' or '.join(other)}" if other else "")


@dataclass
class ConfigBase:
    """Every setting but the methods' own sections (Config adds them: `schema()`)."""
    name: str = _f("demo", doc="run name: outputs go to <run_root>/<name>/ (default: the recipe's name)", changes=NONE)
    stage: str = _f("all", doc=lambda: STAGES.listing() + " | all: runs that stage and the ones before it, in this "
                    "order (each reused when up to date; publish runs alone, only when named); every run ends with "
                    "the report (test-split scores, table, summary.json, curves.png)",
                    choices=lambda: (*STAGES.names(), "all"), changes=NONE)
    seed: int = _f(0, doc="global seed", changes=ALL)
    run_root: str = _f("runs", doc="root folder of run outputs", changes=NONE)
    log_with: Optional[str] = _f(None, doc="also log metrics through accelerate's trackers: tensorboard | wandb | ...",
                                 changes=NONE)
    precision: str = _f("auto", doc="mixed precision: auto (bf16 on a GPU that has it) | no | bf16 | fp16",
                        choices=("auto", "no", "bf16", "fp16"), changes=ALL)
    resume: str = _f("auto", doc="auto: continue an interrupted stage from its newest complete checkpoint | never: "
                                 "delete its checkpoints and start the stage over", choices=("auto", "never"),
                     changes=NONE)
    on_nonfinite: str = _f("abort", doc="NaN/inf loss: abort (stop, naming the step; the last good checkpoint stays) | "
                                        "skip (skip that step's update and count it; costs one host sync per step)",
                           choices=("abort", "skip"), changes=TRAINED)
    max_nonfinite: int = _f(10, doc="on_nonfinite=skip: abort after this many skipped steps in a stage", ge=0,
                            changes=TRAINED)
    sweep_on_error: str = _f("continue", doc="-m sweeps: a point that fails is recorded in its folder (failed.json) "
                                             "and the sweep goes on to the next point (continue) or ends there (stop); "
                                             "a sweep with a failed point exits non-zero, naming them",
                             choices=("continue", "stop"), changes=NONE)
    checkpoint: CheckpointCfg = _f(factory=CheckpointCfg, changes=NONE)
    data: DataCfg = _f(factory=DataCfg, changes=ALL)
    teacher: TeacherCfg = _f(factory=TeacherCfg, changes=("teacher",))
    teachers: List[Any] = _f(factory=list, doc="an ensemble: a list of teacher sections, each {name: NAME, ...} "
                                               "with the teacher keys that differ from the `teacher` section (which "
                                               "gives the rest; `dir` excepted: <run>/teachers/NAME unless given). "
                                               "Each labels its own cache over the same views; the student learns "
                                               "from their combination (kd.ensemble). Empty: the one `teacher`",
                             changes=NONE)
    cache: CacheCfg = _f(factory=CacheCfg, changes=("cache",))
    student: StudentCfg = _f(factory=StudentCfg, changes=("student", "baseline"))
    kd: KDBase = _f(factory=KDBase, changes=("student",))
    export: ExportCfg = _f(factory=ExportCfg, changes=NONE)
    publish: PublishCfg = _f(factory=PublishCfg, changes=NONE)

    def check_features(self, key: str, off: str) -> None:
        """Feature distillation's rules across sections, `key` naming what asks for it and `off` how to drop it:
        one teacher, and with cached KD a cache that holds its features."""
        if self.teachers:
            raise ConfigError(f"{key}: feature distillation learns one teacher's feature; an ensemble's teachers' "
                              f"features differ in meaning and width (drop teachers, or {off})")
        if self.kd.teacher == "cached" and not self.cache.features:
            raise ConfigError(f"{key}: with kd.teacher=cached the teacher's features come from the cache; set "
                              "cache.features=true (or kd.teacher=online)")

    def stages(self) -> tuple[str, ...]:
        """The stages this run goes through, in order (stage=X runs X and the ones before it, and the report)."""
        if self.stage in STAGES.on_request:  # a stage run only when asked, alone: it reads what the others wrote
            return (self.stage, "report")
        pipeline = tuple(n for n in STAGES.names() if n not in STAGES.on_request)  # `stage=all`'s order (registry)
        chosen = pipeline if self.stage == "all" else pipeline[:pipeline.index(self.stage) + 1]
        return chosen if "report" in chosen else chosen + ("report",)

    def check(self) -> None:
        """The rules across sections: a run name that stays inside run_root, mixing in one place, feature
        distillation's source, one weight per teacher, and an export that can state its preprocessing."""
        check_folder_name("name", self.name, "the run's name", "; the run writes to <run_root>/<name> (to write "
                          "elsewhere, set run_root=)")
        if self.cache.mix.on and self.kd.teacher == "cached" and self.student.mix.on:
            raise ConfigError("student.mix: the cache already holds mixed views (cache.mix); mix in one place only")
        if self.kd.feature_weight > 0:
            self.check_features("kd.feature_weight", "kd.feature_weight=0")
        for key, t in teacher_sections(self).items():
            if t.source == "published" and (self.kd.teacher != "cached" or self.kd.feature_weight > 0):
                raise ConfigError(f"{key}.source=published: a published cache serves cached logit KD only; set "
                                  "kd.teacher=cached and kd.feature_weight=0")
        names = [key.removeprefix("teachers.") for key in teacher_sections(self)] if self.teachers else []
        if self.publish.teacher is not None and self.publish.teacher not in names:
            raise ConfigError(f"publish.teacher: no teacher '{self.publish.teacher}' among this run's teachers "
                              f"({', '.join(names)})" if names else "publish.teacher: this run has one teacher (the "
                              "`teacher` section), which stage=publish publishes; drop publish.teacher")
        count = max(len(self.teachers), 1)
        if self.kd.teacher_weights is not None and len(self.kd.teacher_weights) != count:
            raise ConfigError(f"kd.teacher_weights: {len(self.kd.teacher_weights)} weights for {count} teacher(s)")
        if "export" in self.stages() and self.data.per_image_norm:
            raise ConfigError("data.per_image_norm: timm's preprocessing has no per-image standardisation; export "
                              "needs a recipe with mean/std")


def schema() -> type:
    """The full schema, `Config`: ConfigBase with its `kd` section composed from the methods' registry (`KDCfg`: the
    generic keys and one section per method with settings, kd.NAME). Loads the method files (and torch)."""
    return _composed(tuple((name, m.settings) for name, m in METHODS.entries().items() if m.settings is not None))


@functools.cache
def _composed(sections: tuple[tuple[str, type], ...]) -> type:
    """Config for these (method name, settings dataclass) pairs; one class per registry state. TypeError for a
    method whose name is a generic kd key's."""
    clash = {name for name, _ in sections} & ({f.name for f in dataclasses.fields(KDBase)} | {"check"})
    if clash:
        raise TypeError(f"distill.methods: a method named {sorted(clash)[0]} would hide the kd key of that name")
    kd = dataclasses.make_dataclass("KDCfg", [(name, cls, _f(factory=cls, changes=("student",)))
                                              for name, cls in sections], bases=(KDBase,))
    kd.__doc__ = "The kd section: the generic keys (KDBase) and each method's own settings (kd.NAME)."
    cfg = dataclasses.make_dataclass("Config", [("kd", kd, _f(factory=kd, changes=("student",)))], bases=(ConfigBase,))
    cfg.__doc__ = "Every setting: ConfigBase and the methods' sections."
    kd.__module__ = cfg.__module__ = __name__  # pickled by name: this module's KDCfg and Config
    return cfg


def __getattr__(name: str) -> type:
    """`config.Config` and `config.KDCfg`: the schema composed from the methods' registry (`schema()`)."""
    if name == "Config":
        return schema()
    if name == "KDCfg":
        return _field_type(schema(), "kd")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _field_type(cls: type, name: str) -> type:
    return next(f.type for f in dataclasses.fields(cls) if f.name == name)


def validate(raw: DictConfig | dict) -> ConfigBase:
    """Merge raw config onto the schema and check every rule; raise ConfigError naming the key. Every setting but
    the methods' own sections is checked before the method files (and torch) load."""
    if isinstance(raw, DictConfig):
        try:
            raw = OmegaConf.to_container(raw, resolve=True)
        except OmegaConfBaseException as e:
            raise ConfigError(_one_line(e)) from None
    for key in _flat(raw):
        if key in RENAMED:
            raise ConfigError(f"{key}: renamed to {RENAMED[key]}")
    kd = raw.get("kd")
    if isinstance(kd, dict):  # first without the methods' sections: their files import torch
        _checked(ConfigBase, {**raw, "kd": {k: v for k, v in kd.items() if k not in METHODS.names()}})
    cfg = _checked(schema(), raw)
    _check_method(cfg)  # each method's own checks, last
    return cfg


def _check_method(cfg: ConfigBase) -> None:
    """kd.loss's rules: what its flags ask of the other sections (each sample's class: no mixing on the student's
    side; a feature method: the teacher's features), then its own checks of the kd section."""
    method = METHODS.lookup(cfg.kd.loss)
    if method.needs_labels and cfg.student.mix.on:
        raise ConfigError(f"student.mix: kd.loss={method.name} needs each sample's class; mix in the cache "
                          "(cache.mix), where each mixed view keeps both classes")
    if method.kind == "feature":
        cfg.check_features("kd.loss", "a kd.loss that distils logits")
    method.check(cfg.kd)


def _checked(cls: type, raw: dict):
    """`raw` merged onto the schema `cls` and checked: each field's rules, each section's `check`, then the rules
    across sections (`check` of the whole)."""
    keys = [key for key, _, _ in leaves(cls)]
    for key, value in raw.items():  # a section given a value that is no section, or a key it lacks: one line
        check_given(str(key), value, keys)
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), raw))
    except OmegaConfBaseException as e:
        raise ConfigError(_one_line(e)) from None
    _check_rules(cfg, "")
    for f in dataclasses.fields(cfg):  # an ensemble's teachers each as its full section
        sections = teacher_sections(cfg) if f.name == "teacher" else {f.name: getattr(cfg, f.name)}
        for key, section in sections.items():
            _check_section(section, key)
    cfg.check()
    faults.check()  # DISTILL_FAULT, read by the stages only at their fault points: checked here, before any work
    return cfg


def _check_section(section: Any, key: str) -> None:
    """A section's subsections' `check`, then its own (a section without one has no rules beyond its fields')."""
    if not dataclasses.is_dataclass(section):
        return
    for f in dataclasses.fields(section):
        _check_section(getattr(section, f.name), f"{key}.{f.name}")
    if hasattr(section, "check"):
        section.check(key)


def _one_line(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None)
    msg = str(getattr(e, "msg", None) or e).strip().splitlines()[0]
    return f"{key}: {msg}" if key else msg


RANGES = (("gt", lambda v, b: v > b, ">"), ("ge", lambda v, b: v >= b, ">="), ("lt", lambda v, b: v < b, "<"),
          ("le", lambda v, b: v <= b, "<="))


def _check_rules(obj: Any, prefix: str) -> None:
    """Each field of the section `obj` (and its subsections) against its schema rules (see `_f`): a non-finite
    float, a list of the wrong length, a value out of range or not among the choices stops in one line naming the
    key."""
    for f in dataclasses.fields(obj):
        key, value = prefix + f.name, getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_rules(value, key + ".")
            continue
        if value is None:
            continue
        rules = f.metadata
        if isinstance(value, list):
            if rules.get("count") is not None and len(value) != rules["count"]:
                raise ConfigError(f"{key}: needs {rules['count']} values, got {len(value)} ({value})")
            for v in value:
                if isinstance(v, float) and not math.isfinite(v):
                    raise ConfigError(f"{key}: {value} holds {v}; every value must be a finite number")
                if (problem := _out_of_range(v, rules)) is not None:
                    raise ConfigError(f"{key}: every value must be {problem}, got {value}")
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: {value} is not a finite number")
        choices = rules["choices"]() if callable(rules.get("choices")) else rules.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{key}: '{value}' is not one of {', '.join(choices)}")
        if (problem := _out_of_range(value, rules)) is not None:
            raise ConfigError(f"{key}: {value} must be {problem}")


def _out_of_range(value: Any, rules: dict) -> str | None:
    """The first range rule (gt, ge, lt, le) that `value` breaks, as words ("> 0"); None when it keeps them all."""
    for rule, ok, word in RANGES:
        if rule in rules and not ok(value, rules[rule]):
            bound = rules[rule]
            return f"{word} {int(bound) if float(bound).is_integer() else bound}"
    return None


def inert(cfg: ConfigBase) -> list[str]:
    """The settings given a value this run never reads, or that cannot act in it, one line each (said once at the
    start, not refused: a recipe may set them for the runs that do read them). Each method says which of its own
    settings this run ignores."""
    kd, default = cfg.kd, KDBase()
    out = [line for method in METHODS.entries().values() for line in method.ignored(cfg)]
    trained = {k: t for k, t in teacher_sections(cfg).items() if t.source == "train"} | {"student": cfg.student}
    for key, section in trained.items():
        if 0 < section.epochs < section.sched.warmup_epochs:
            out.append(f"{key}.sched.warmup_epochs={section.sched.warmup_epochs} is longer than {key}.epochs="
                       f"{section.epochs}: the learning rate never reaches its peak, and {key}.sched.name="
                       f"{section.sched.name} never acts")
    if kd.ce != "focal" and (kd.focal_gamma != default.focal_gamma or kd.focal_alpha is not None):
        out.append(f"kd.focal_gamma / kd.focal_alpha are read by kd.ce=focal only; this run (kd.ce={kd.ce}) ignores "
                   "them")
    if kd.feature_weight == 0 and kd.feature_loss != default.feature_loss:
        out.append(f"kd.feature_loss={kd.feature_loss} is read only with kd.feature_weight > 0; this run ignores it")
    if cfg.cache.features and kd.teacher == "online" and cfg.stage != "cache":
        out.append("cache.features=true: kd.teacher=online builds no cache; this run ignores it")
    for key, t in teacher_sections(cfg).items():
        if t.compile and t.source != "train" and not (t.source == "timm" and t.finetune.epochs > 0):
            out.append(f"{key}.compile=true compiles the teacher's training; {key}.source={t.source} without "
                       "fine-tuning trains nothing, and this run ignores it (cache.compile compiles its inference)")
    if cfg.cache.compile and kd.teacher == "online" and cfg.stage != "cache":
        out.append("cache.compile=true: kd.teacher=online builds no cache; this run ignores it (kd.compile_teacher "
                   "compiles the online teacher)")
    if kd.compile_teacher and kd.teacher == "cached":
        out.append("kd.compile_teacher=true is read with kd.teacher=online only; this run ignores it (cache.compile "
                   "compiles the teacher that labels the cache)")
    if len(cfg.teachers) < 2 and kd.ensemble != default.ensemble:
        out.append(f"kd.ensemble={kd.ensemble} combines several teachers (teachers=[...]); this run has one and "
                   "ignores it")
    return out


FOLDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_folder_name(key: str, value: Any, what: str, why: str = "", reserved: str | None = None) -> None:
    """A name given by the user that the run makes a folder of (the run's `name`, an ensemble teacher's) is one plain
    folder name, so that the folder stays inside the one that holds it: letters, digits, _ . -, first a letter or a
    digit (no /, no .., no ~), and not `reserved`. Else ConfigError "KEY: WHAT is a folder name (letters, digits,
    _ . -)[, other than 'RESERVED' ...]WHY"."""
    if isinstance(value, str) and FOLDER_NAME.match(value) and value != reserved:
        return
    got = "" if value == reserved else f", not {value!r}"
    raise ConfigError(f"{key}: {what} is a folder name (letters, digits, _ . -){got}{why}")


def teacher_sections(cfg: ConfigBase) -> dict[str, TeacherCfg]:
    """Each teacher's full section by its config key: {"teacher": cfg.teacher} for one teacher; for an ensemble
    {"teachers.NAME": ...}, each entry of `teachers` merged over the `teacher` section (its `dir` excepted: a named
    teacher's folder is its own). ConfigError naming the entry for a bad or repeated name or a bad value."""
    if not cfg.teachers:
        return {"teacher": cfg.teacher}
    base = OmegaConf.to_container(OmegaConf.structured(cfg.teacher)) | {"dir": None}
    out: dict[str, TeacherCfg] = {}
    for i, entry in enumerate(cfg.teachers):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ConfigError(f"teachers[{i}]: needs a name, e.g. {{name: big, model: resnet56}}; got {entry!r}")
        name = entry["name"]
        key = f"teachers.{name}"
        check_folder_name(key, name, "a teacher's name", ", other than 'teacher' (the one teacher's)", "teacher")
        if key in out:
            raise ConfigError(f"{key}: the name is used by two teachers")
        known = [k for k, _, _ in leaves(TeacherCfg)]
        for given in _flat({k: v for k, v in entry.items() if k != "name"}):
            if given not in known and not any(k.startswith(given + ".") for k in known):
                raise no_such_setting(given, known, f"{key}.")
        try:
            merged = OmegaConf.merge(OmegaConf.structured(TeacherCfg), base,
                                     {k: v for k, v in entry.items() if k != "name"})
            out[key] = OmegaConf.to_object(merged)
        except OmegaConfBaseException as e:
            raise ConfigError(f"{key}.{_one_line(e)}") from None
        _check_rules(out[key], key + ".")
    dirs = [t.dir for t in out.values() if t.dir]
    if len(set(dirs)) != len(dirs):
        raise ConfigError(f"teachers: two teachers name one dir ({sorted(d for d in dirs if dirs.count(d) > 1)[0]})")
    return out


def _flat(tree: dict, prefix: str = "") -> list[str]:
    """The dotted keys of a nested dict's leaves."""
    return [k for key, v in tree.items()
            for k in (_flat(v, f"{prefix}{key}.") if isinstance(v, dict) else [f"{prefix}{key}"])]


def leaves(cls: type | None = None, prefix: str = ""):
    """(dotted key, its field, the section fields it sits in, innermost first) for every settable key of `cls`
    (default: the full schema, which loads the method files; ConfigBase: every key but the methods' own)."""
    for f in dataclasses.fields(cls or schema()):
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            yield from ((key, leaf, (*above, f)) for key, leaf, above in leaves(sub, prefix + f.name + "."))
        else:
            yield prefix + f.name, f, ()


def schema_keys() -> dict[str, str]:
    """Every settable key with its help line, for `--help` text."""
    return {key: _doc(f) for key, f, _ in leaves()}


def _doc(f: dataclasses.Field) -> str:
    doc = f.metadata.get("doc", "")
    return doc() if callable(doc) else doc


def no_such_setting(key: str, keys: list[str], prefix: str = "") -> ConfigError:
    """The one line for an unknown `key` (shown as prefix + key), with the keys of the same name or near spelling."""
    leaf = key.rsplit(".", 1)[-1]
    close = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]  # same name elsewhere, then near spellings
    close += [k for k in difflib.get_close_matches(key, keys, n=3, cutoff=0.8) if k not in close]
    hint = f" (did you mean {', '.join(prefix + k for k in close[:3])}?)" if close else ""
    return ConfigError(f"{prefix}{key}: no such setting{hint}")


def check_given(key: str, value: Any, keys: list[str]) -> None:
    """`value` given to `key` fits the schema whose settable keys are `keys` (leaves()): a section (kd.dkd,
    student.optim) is given a dict of its own keys, each checked the same way; a key the schema lacks, or a section
    given anything but a dict, stops in one line naming the key (kd.dkd={gamma: 4} gives "... no such setting",
    "kd.dkd: must be a section such as {alpha: 1.0}"). A leaf's value is left to the rules."""
    inner = [k for k in keys if k.startswith(key + ".")]
    if key in keys:
        return
    if not inner:
        raise no_such_setting(key, keys)
    if isinstance(value, dict):
        for sub, v in value.items():
            check_given(f"{key}.{sub}", v, keys)
        return
    first = next(f for k, f, _ in leaves(None if key.startswith("kd.") else ConfigBase) if k == inner[0])
    default = first.default_factory() if first.default_factory is not dataclasses.MISSING else first.default
    example = f"{{{inner[0][len(key) + 1:]}: {_shown(default)}}}"
    raise ConfigError(f"{key}: must be a section such as {example}, not {_shown(value)} (or set one key: "
                      f"{inner[0]}=...)")


def _shown(value: Any) -> str:
    """A value as one writes it on the command line (sgd, 1.0, null, [1, 2])."""
    return value if isinstance(value, str) else json.dumps(value)


def names_section(arg: str, method: str) -> bool:
    """Whether a command-line override sets the method's section kd.METHOD (a key in it, or the whole section)."""
    key = arg.lstrip("~+").split("=", 1)[0]
    return key == f"kd.{method}" or key.startswith(f"kd.{method}.")


def register_schema(args: list[str] | None = None) -> None:
    """Give Hydra every key with its default (untyped: `validate` does the type checks, in one line), so that any
    key can be overridden on the command line without a `+`. recipes/config.yaml lists it first in its defaults.
    With `args` (the command line), a method's section (kd.NAME) is given only when an override names it, so that a
    run that sets none answers a bad setting before the method files (and torch) load; without, every section."""
    from hydra.core.config_store import ConfigStore

    tree = OmegaConf.to_container(OmegaConf.structured(ConfigBase))
    named = [name for name in METHODS.names() if args is None or any(names_section(a, name) for a in args)]
    if named:
        full = OmegaConf.to_container(OmegaConf.structured(schema()))["kd"]
        tree["kd"].update({name: full[name] for name in named if name in full})
    ConfigStore.instance().store(name="distill_schema", node=tree)
    if not OmegaConf.has_resolver("distill_settings"):  # `--help` lists every key with its help line
        OmegaConf.register_new_resolver("distill_settings", settings_help)
    if not OmegaConf.has_resolver("distill_recipes"):  # ... and every recipe with its first comment line
        OmegaConf.register_new_resolver("distill_recipes", recipes_help)
    if not OmegaConf.has_resolver("distill_sweep"):  # hydra.sweep.dir: each multirun its own folder
        OmegaConf.register_new_resolver("distill_sweep", sweep_id)
    if not OmegaConf.has_resolver("distill_recipe"):  # the default name, also while a multirun names its folder
        OmegaConf.register_new_resolver("distill_recipe", recipe_name)


def recipe_name(*, _root_: DictConfig) -> str:
    """The recipe the run composed (recipe=NAME; the run's default `name`): from the config's own hydra section
    while it has one (a multirun's sweep folder is named then, before Hydra's `hydra:` resolver works), else from
    Hydra's record of the run."""
    if "hydra" in _root_:
        return str(_root_.hydra.runtime.choices.recipe)
    from hydra.core.hydra_config import HydraConfig

    return str(HydraConfig.get().runtime.choices.recipe)


def sweep_id() -> str:
    """A multirun's folder name: a hash of its command-line overrides, so that a second sweep never writes over the
    first and the same sweep run again finds its points (every process of a launch computes the same name)."""
    import sys

    return "sweep-" + files.fingerprint(sorted(a for a in sys.argv[1:] if a not in ("-m", "--multirun")))[:8]


def recipe_lines(folder) -> dict[str, str]:
    """recipe name -> the first comment line of recipes/recipe/NAME.yaml (its one-line description)."""
    out = {}
    for path in sorted(Path(folder).glob("*.yaml")):
        lines = [line[1:].strip() for line in path.read_text().splitlines()
                 if line.startswith("#") and "@package" not in line]
        out[path.stem] = lines[0] if lines else ""
    return out


def recipes_help() -> str:
    lines = recipe_lines(Path(__file__).resolve().parent.parent / "recipes" / "recipe")
    width = max(map(len, lines))
    return "\n".join(f"  {name.ljust(width)}  {line}" for name, line in lines.items())


def settings_help() -> str:
    keys = schema_keys()
    width = max(map(len, keys))
    return "\n".join(f"  {k.ljust(width)}  {doc}" for k, doc in keys.items())
