"""Fault injection at a named point, for tests and chaos runs: with DISTILL_FAULT=WHERE:N:SIGNAL in the environment,
the process sends itself SIGNAL (KILL or TERM) when WHERE reaches N: a training stage ("teacher", "student",
"baseline") after its optimizer step N, "cache" after writing its N-th shard, "cache_features" with shard N - 1's
features file written and its records not yet, "test" after scoring its N-th model
on the test split, "export" with the export written and not yet renamed into place (N = 1). An interruption then
lands at a chosen step whatever the machine's speed, never after a delay. Unset, a point costs one environment
lookup. Imports nothing of distill's."""
from __future__ import annotations

import os
import signal


def point(where: str, reached: int) -> None:
    """Send this process DISTILL_FAULT's signal when `where` has reached its N (see the module docstring)."""
    spec = os.environ.get("DISTILL_FAULT")
    if not spec:
        return
    name, at, sig = spec.split(":")
    if name == where and reached == int(at):
        os.kill(os.getpid(), getattr(signal, f"SIG{sig}"))
