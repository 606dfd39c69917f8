"""The run context: what every stage is handed, built once per run (run.py) instead of five loose values."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator

from distill import data
from distill.config import Config
from distill.data import transforms
from distill.store import layout


@dataclass
class RunContext:
    """The validated config, accelerate's Accelerator, the data, its normalization, the run folder, and the one
    batch -> network input transform every stage and the test scoring use."""
    cfg: Config
    acc: Accelerator
    data: data.DataBundle
    norm: dict
    run_dir: Path
    to_input: transforms.ToInput

    @classmethod
    def make(cls, cfg: Config, acc: Accelerator, bundle: data.DataBundle, norm: dict, run_dir: Path) -> "RunContext":
        """The context, with the batch -> input transform built once (on the device views when rendered there)."""
        to_input = transforms.ToInput(cfg.data, norm, data.device_views(cfg.data, bundle, acc.device))
        return cls(cfg, acc, bundle, norm, run_dir, to_input)

    @property
    def teacher_dir(self) -> Path:
        """<run>/teacher, or the shared teacher.dir."""
        return layout.teacher_dir(self.cfg, self.run_dir)

    @property
    def num_classes(self) -> int:
        """The data's class count."""
        return self.data.num_classes
