"""The distillation methods, one file each, registered by name: `kd.loss=NAME` picks one.

Each method file (named as its method: kd.py is kd.loss=kd) holds the method's pure loss function (also public as
`distill.losses.NAME`), its settings section (a dataclass of distill.fields.setting fields, set as
`kd.NAME.KEY`) and one `Method` subclass, registered by name with `@METHODS.register(NAME)` (distill/registry.py,
the idiom of every extension point): its help line and citation (kd.loss's `--help` and choices are built from
these), the settings checks it needs, its model-card line and how the student's objective calls it. The schema's
`kd` section is composed from the registered methods' settings (config.py, through the registry: it imports no
method). Adding a method is one new file here (found by name, nothing else to edit) and its test; a method defined
elsewhere (a user's file, a test) registers the same way. The shared pieces (common/) are a package, never a method.

A method is of one kind (`Method.kind`): a logit method (kd, dkd, dist, hard) is handed the student's logits and
the teacher's log-probabilities at T; a feature method (FitNets, attention transfer, ...) the student's pooled
pre-logit feature, through a learned projection to the teacher's width, and the teacher's pooled feature. Every logit
method works in log space: the teacher's soft target arrives as log-probabilities at T (`log_q`), never as
probabilities that a loss subtracts from 1, so a confident teacher gives the exact loss (common/logspace.py).

May import: torch, distill.errors, distill.fields, distill.registry, and the other modules of this folder. Nothing
here reads config files, data or the cache: the objective (distill/training/objectives.py) hands each method what
its kind reads of the student and of the teacher.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from distill.errors import ConfigError
from distill.registry import METHODS

if TYPE_CHECKING:  # the schema's types, for hints only: the schema imports no method (it reads distill.registry)
    import torch

    from distill.config import Config, KDCfg
    from distill.data.batch import ViewBatch

# what a method may read of the teacher's target: its distribution at T, or only its top-1 class
TARGETS = ("distribution", "class")
# what a method distils: the logits (the teacher's log-probabilities at T), or the pooled pre-logit features
KINDS = ("logit", "feature")


class Method:
    """A distillation method. A subclass is registered by name (`@METHODS.register`, which keeps its one instance),
    with its help line, citation, settings section and flags as class keywords:

        @dataclass
        class MineSettings:  # set as kd.<name>.<field>; fields made with distill.fields.setting
            weight: float = setting(1.0, doc="weight of the term", ge=0, changes=STUDENT)

        @METHODS.register("mine")
        class Mine(Method, help="what it computes", cite="who proposed it", settings=MineSettings,
                   needs_labels=True):
            def __call__(self, student_logits, log_q, batch, kd_cfg, epoch): ...  # kd_cfg.mine.weight

    A feature method says `kind="feature"` and is called with features instead of logits:

        @METHODS.register("pooled")
        class Pooled(Method, kind="feature", help="...", cite="..."):
            def __call__(self, student_feature, teacher_feature, batch, kd_cfg, epoch): ...

    Flags: `kind` ("logit", the default, or "feature": what the objective hands it, see `__call__`; a feature
    method's student is trained with a projection to the teacher's feature width and its teacher answers its pooled
    feature, from the cache with cache.features=true), `standardizable` (kd.logit_standardization may z-score the
    logits before it; a feature method, which reads no logits, is not unless it says so), `needs_labels` (needs each
    sample's own class, so no mixup/cutmix on the student side), `balanceable` (kd.balance=scale may balance its term
    against CE), `target` (what it reads of the teacher's target: "distribution", its log-probabilities at T, or
    "class", only its top-1 class, exact from a cache of any cache.topk), `token` (the kd.token value under which
    this method teaches a distillation head, whatever kd.loss is).
    """

    name: str = ""  # set by METHODS.register
    help: str = ""  # one line: what it computes (kd.loss's help)
    cite: str = ""  # who proposed it (kd.loss's help and the model card)
    settings: type | None = None  # its section kd.NAME (a dataclass), or None: no settings of its own
    standardizable: bool = True
    needs_labels: bool = False
    balanceable: bool = False
    target: str = "distribution"
    token: str | None = None
    kind: str = "logit"

    def __init_subclass__(cls, *, help: str, cite: str = "", settings: type | None = None, **flags):
        super().__init_subclass__()
        unknown = set(flags) - {"standardizable", "needs_labels", "balanceable", "target", "token", "kind"}
        if unknown:
            raise TypeError(f"distill.methods: {cls.__name__} sets unknown flags {sorted(unknown)}")
        if flags.get("target", cls.target) not in TARGETS:
            raise TypeError(f"distill.methods: {cls.__name__}'s target is one of {', '.join(TARGETS)}")
        if flags.get("kind", cls.kind) not in KINDS:
            raise TypeError(f"distill.methods: {cls.__name__}'s kind is one of {', '.join(KINDS)}")
        if flags.get("kind") == "feature":  # it reads no logits: kd.logit_standardization has nothing to z-score
            flags.setdefault("standardizable", False)
        if settings is not None and not dataclasses.is_dataclass(settings):
            raise TypeError(f"distill.methods: {cls.__name__}'s settings must be a dataclass")
        cls.help, cls.cite, cls.settings = help, cite or cls.cite, settings
        for flag, value in flags.items():
            setattr(cls, flag, value)

    def own(self, kd: "KDCfg"):
        """This method's settings section of `kd` (kd.NAME), or None when it has none."""
        return getattr(kd, self.name) if self.settings is not None else None

    def card_line(self, kd: "KDCfg") -> str:
        """The method as the model card names it: its name, citation and own settings."""
        own = self.own(kd)
        values = [f"{f.name} {getattr(own, f.name)}" for f in dataclasses.fields(own)] if own is not None else []
        return ", ".join([f"{self.name} ({self.cite})" if self.cite else self.name, *values])

    def describe(self) -> str:
        """Its line in kd.loss's --help (the registry's listing): what it computes, its citation and, when it reads
        less than the teacher's distribution, what it reads."""
        read = {"distribution": "", "class": "; reads only the teacher's top-1 class"}
        return self.help + (f" ({self.cite})" if self.cite else "") + read[self.target]

    def ignored(self, cfg: "Config") -> list[str]:
        """One line for each of this method's settings given a value that this run never reads (another method
        trains the student)."""
        if self.settings is None or chosen(cfg.kd) is self:
            return []
        own, default = self.own(cfg.kd), self.settings()
        return [f"kd.{self.name}.{f.name}={getattr(own, f.name)} is read by kd.loss={self.name} only; this run "
                f"(kd.loss={cfg.kd.loss}) ignores it"
                for f in dataclasses.fields(own) if getattr(own, f.name) != getattr(default, f.name)]

    def active(self, kd: "KDCfg") -> bool:
        """Whether the method adds anything with these settings (False: CE alone, the teacher is not asked)."""
        return True

    def warnings(self, cfg: "Config") -> list[str]:
        """Lines the student stage logs once before training: settings that act less than they seem to."""
        return []

    def ce_weight(self, kd: "KDCfg") -> float:
        """The CE term's weight when kd.ce_weight is null (the paper's)."""
        return 1.0

    def check(self, kd: "KDCfg") -> None:
        """Refuse, in one line naming the key, settings of the kd section this method cannot honour (before any
        work). The rules between the method and other sections (the student's mixing, the teacher's features) are
        the schema's (config.validate), read from the flags."""
        if kd.logit_standardization and not self.standardizable:
            able = ", ".join(m.name for m in all_methods() if m.standardizable)
            raise ConfigError(f"kd.logit_standardization: applies to kd.loss={able}, not {self.name}")
        if kd.token is not None and self.kind != "logit":
            raise ConfigError(f"kd.token: the distillation head learns the teacher's logits; kd.loss={self.name} "
                              f"distils {self.kind}s")
        if kd.balance == "scale" and not self.balanceable:
            raise ConfigError(f"kd.balance: scale balances kd.loss=kd's two terms; kd.loss={self.name} has its own "
                              "weights")

    def __call__(self, student: "torch.Tensor", teacher: "torch.Tensor", batch: "ViewBatch", kd: "KDCfg",
                 epoch: int) -> dict[str, "torch.Tensor"]:
        """The method's terms (batch means; T^2 applied by a logit method) and `loss`: their weighted sum, the part
        of the student's objective this method adds to the CE term. What `student` and `teacher` are is the
        method's kind: a logit method gets the logits of the head it teaches (z-scored with
        kd.logit_standardization) and `log_q`, the teacher's log-probabilities at kd.temperature (standardised and
        mixed as the student's input); a feature method gets the student's pooled pre-logit feature through its
        projection to the teacher's width and the teacher's pooled feature (mixed as the student's input), [batch,
        width] each. `batch`: the typed batch (its labels, a cached mixed view's partner); `epoch`: 0-based (for
        warm-ups)."""
        raise NotImplementedError


def all_methods() -> list[Method]:
    """Every registered method (the built-in ones loaded first), the default first, then by name."""
    return list(METHODS.entries().values())


def chosen(kd: "KDCfg") -> Method:
    """The method that trains the student: the one that teaches kd.token's distillation head, if a method is bound to
    that token, else kd.loss's."""
    bound = [m for m in all_methods() if kd.token is not None and m.token == kd.token]
    return bound[0] if bound else METHODS.lookup(kd.loss)


def reads_features(kd: "KDCfg") -> bool:
    """Whether the student learns the teacher's pooled feature: kd.feature_weight > 0 (the feature term added to
    any method), or the method that trains the student is a feature method. Its student then answers its projected
    feature too, and its teacher its pooled feature."""
    return kd.feature_weight > 0 or chosen(kd).kind == "feature"
