"""The run context: what every stage is handed, built once per run (run.py) instead of five loose values."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator

from distill import config, data
from distill.config import Config
from distill.data import transforms
from distill.store import layout
from distill.store.records import Normalization


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

    @classmethod
    def make(cls, cfg: Config, acc: Accelerator, bundle: data.DataBundle, norm: Normalization,
             run_dir: Path) -> "RunContext":
        """The context, with the batch -> input transform built once (on the device views when rendered there)."""
        views = data.device_views(cfg.data, bundle, acc.device)
        to_input = transforms.ToInput(cfg.data, norm.mean, norm.std, views)
        return cls(cfg, acc, bundle, norm, run_dir, to_input)

    def teachers(self) -> list["RunContext"]:
        """One context per teacher, in the config's order (the one `teacher` section, or each entry of `teachers`):
        its `teacher_name` and `teacher_key`, `cfg.teacher` its full section (config.teacher_sections) with `dir`
        its folder (the one named, else layout.default_teacher_dir), and `cfg.teachers` empty."""
        out = []
        for key, section in config.teacher_sections(self.cfg).items():
            name = key.removeprefix("teachers.")
            folder = section.dir or str(layout.default_teacher_dir(self.run_dir, name))
            cfg = dataclasses.replace(self.cfg, teacher=dataclasses.replace(section, dir=folder), teachers=[])
            out.append(dataclasses.replace(self, cfg=cfg, teacher_name=name, teacher_key=key,
                                           shares_teacher_dir=section.dir is not None))
        return out

    @property
    def teacher_dir(self) -> Path:
        """A teacher's context: its folder; the run's: <run>/teacher, or the shared teacher.dir."""
        return layout.teacher_dir(self.cfg, self.run_dir)

    @property
    def num_classes(self) -> int:
        """The data's class count."""
        return self.data.num_classes
