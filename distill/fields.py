"""The schema's field helper, shared by distill/config.py and the methods' settings sections (distill/methods/).

A setting is a dataclass field whose metadata holds its help line, the outputs it changes and its rules; config's
`validate` reads them (ranges, choices, counts), `--help` prints the help lines and the fingerprints take the
`changes` tags. May import nothing of distill.
"""
from __future__ import annotations

from dataclasses import field
from typing import Any

# The outputs a setting can change; every field says which (`changes`), and each output's fingerprint is built
# from exactly the fields that name it (fingerprints.py), so a new setting cannot leave a stale output in use.
OUTPUTS = ("teacher", "cache", "student", "baseline")
OWNER = "owner"  # a field of a shared section (TrainCfg, MixCfg): changes whatever the section it sits in changes
STUDENT = ("student",)
# The largest loss weight accepted: a weight above it swamps every other term by a million times or more (and an
# fp16/bf16 gradient overflows first), so it is a typo, never a setting. KD's T^2 scaling gets the same bound.
MAX_WEIGHT = 1e6


def setting(default: Any = None, *, factory: Any = None, doc: Any = "", changes: Any = None, **rules: Any) -> Any:
    """A schema field with a help line, the outputs it changes (`changes`: names from OUTPUTS, or OWNER; a section
    field names its section's outputs) and rules: gt, ge, lt, le, choices (on a list: each value's) and count (a
    list's length). Every float, and every float of a list, must be finite. `doc` and `choices` may be functions,
    called when needed (kd.loss's come from the methods' registry, which loads torch). `when_set=True`: the setting
    enters the fingerprints only when not at its default, so that the outputs made before it existed (with its
    default's behaviour) keep their fingerprints and folders (student.compile)."""
    meta = dict(rules, doc=doc, changes=changes)
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)
