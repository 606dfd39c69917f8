"""The run context: what every stage is handed, built once per run (run.py) instead of five loose values, with the
run's identities (each teacher's weights and fingerprint inputs, its cache's identity) computed once."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from accelerate import Accelerator

from distill import config, data, files
from distill.config import Config
from distill.data import transforms
from distill.store import fingerprints, layout
from distill.store.softlabels import CacheIdentity
from distill.store.records import Normalization
from distill.training.teachers import published as published_teacher


@dataclass
class RunContext:
    """The validated config, accelerate's Accelerator, the data, its normalization, the run folder, and the one
    batch -> network input transform every stage and the test scoring use."""
    cfg: Config
    acc: Accelerator
    data: data.DataBundle
    norm: Normalization
    run_dir: Path
    to_input: transforms.ToInput
    teacher_name: str = layout.ONE_TEACHER  # a teacher's context (teachers()): its name, "teacher" or an ensemble's
    teacher_key: str = "teacher"  # its config section: teacher, or teachers.NAME
    shares_teacher_dir: bool = False  # its folder is one the user named (other runs may use it)
    # a local teacher of an ensemble that holds a published cache: that teacher's context, whose views it labels
    views_of: RunContext | None = field(default=None, repr=False, compare=False)
    _teachers: list[RunContext] | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def make(cls, cfg: Config, acc: Accelerator, bundle: data.DataBundle, norm: Normalization,
             run_dir: Path) -> "RunContext":
        """The context, with the batch -> input transform built once (on the device views when rendered there)."""
        views = data.device_views(cfg.data, bundle, acc.device)
        to_input = transforms.ToInput(cfg.data, norm.mean, norm.std, views)
        return cls(cfg, acc, bundle, norm, run_dir, to_input)

    def teachers(self) -> list[RunContext]:
        """One context per teacher, in the config's order (the one `teacher` section, or each entry of `teachers`):
        its `teacher_name` and `teacher_key`, `cfg.teacher` its full section (config.teacher_sections) with `dir`
        its folder (the one named, else layout.default_teacher_dir), and `cfg.teachers` empty. Built once: every
        stage gets the same contexts, so each teacher's identities are computed once a run. When the ensemble holds
        a published cache, every local teacher's `views_of` is the first published teacher's context."""
        if self._teachers is None:
            self._teachers = []
            for key, section in config.teacher_sections(self.cfg).items():
                name = key.removeprefix("teachers.")
                folder = section.dir or str(layout.default_teacher_dir(self.run_dir, name))
                cfg = dataclasses.replace(self.cfg, teacher=dataclasses.replace(section, dir=folder), teachers=[])
                self._teachers.append(dataclasses.replace(self, cfg=cfg, teacher_name=name, teacher_key=key,
                                                          shares_teacher_dir=section.dir is not None))
            published = [t for t in self._teachers if t.cfg.teacher.source == "published"]
            for teacher_ctx in self._teachers if published else []:
                if teacher_ctx.cfg.teacher.source != "published":
                    teacher_ctx.views_of = published[0]
        return self._teachers

    @property
    def teacher_dir(self) -> Path:
        """A teacher's context: its folder; the run's: <run>/teacher, or the shared teacher.dir."""
        return layout.teacher_dir(self.cfg, self.run_dir)

    @property
    def num_classes(self) -> int:
        """The data's class count."""
        return self.data.num_classes

    @cached_property
    def teacher_inputs(self) -> dict:
        """A teacher's context: what its fingerprint hashes (fingerprints.teacher_inputs; a teacher.checkpoint file
        is hashed here, once)."""
        return fingerprints.teacher_inputs(self.cfg, self.data.identity, self.norm)

    @cached_property
    def teacher_sha256(self) -> str:
        """A teacher's context: its weights' sha256, once a run: the one the teacher stage verified or wrote
        (`weights_checked`), else the file's, hashed on first use (the teacher must be trained by then)."""
        if self.cfg.teacher.source == "published":  # no weights here: the card's word on them
            return published_teacher.card_of(self.cfg.teacher.path).teacher_sha256
        return files.sha256(self.teacher_dir / "model.safetensors")

    def weights_checked(self, sha256: str) -> None:
        """The teacher stage's word on a teacher's weights: their sha256 as it just verified or wrote them (its
        meta.json's), which every identity of the run then takes instead of hashing the file again."""
        setattr(self, "teacher_sha256", sha256)  # a cached_property is set as an attribute: later reads get this

    @cached_property
    def cache_identity(self) -> CacheIdentity:
        """A teacher's context: the identity of the cache these settings make of it (its hash names the folder); a
        published cache's: the native cache made of it for this data (teachers/published.py); a local teacher's
        beside a published one (`views_of`) also names the native cache whose views it labels (only then: every
        other identity hashes as it always has)."""
        if self.cfg.teacher.source == "published":
            return published_teacher.identity(self.cfg, self.data.identity, self.norm, self.num_classes)
        identity = fingerprints.cache_identity(self.cfg, self.data.identity, self.norm, self.num_classes,
                                               self.teacher_sha256)
        if self.views_of is None:
            return identity
        return dataclasses.replace(identity, settings=identity.settings | {
            published_teacher.VIEWS_FROM: self.views_of.cache_dir.name})

    @property
    def cache_dir(self) -> Path:
        """A teacher's context: the folder of its cache for these settings (whether or not it exists yet)."""
        return layout.cache_dir(self.cfg, self.cache_identity)
