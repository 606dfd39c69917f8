"""Fault injection at a named point, for tests and chaos runs: with DISTILL_FAULT=WHERE:N:SIGNAL in the environment,
the process sends itself SIGNAL (a signal name with or without its SIG prefix: KILL, SIGKILL, TERM, SIGTERM) when
WHERE reaches N: a training stage ("teacher", an ensemble's "teacher NAME", "student", "baseline") after its
optimizer step N, "cache" after writing its N-th shard, "cache_features" with shard N - 1's features file written
and its records not yet, "test" after scoring its N-th model on the test split, "export" with the export written
and not yet renamed into place (N = 1). An interruption then lands at a chosen step whatever the machine's speed,
never after a delay. `check` validates the setting once, before any work; unset, a point costs one environment
lookup. Imports nothing of distill's at import time."""
from __future__ import annotations

import os
import signal

POINTS = ("teacher", "student", "baseline", "cache", "cache_features", "test", "export")


def _parse(spec: str) -> tuple[str, int, signal.Signals] | None:
    """(WHERE, N, signal) of a DISTILL_FAULT value; None when it is not one (see the module docstring)."""
    parts = spec.split(":")
    if len(parts) != 3:
        return None
    where, at, sig = parts
    name = sig.strip().upper()
    name = name if name.startswith("SIG") else "SIG" + name
    known = where in POINTS or (where.startswith("teacher ") and len(where) > len("teacher "))
    if not known or not at.isdigit() or int(at) < 1 or name not in signal.Signals.__members__:
        return None
    return where, int(at), signal.Signals[name]


def check() -> None:
    """Raise distill.errors.ConfigError (one line naming DISTILL_FAULT) when the variable is set to no valid
    WHERE:N:SIGNAL; unset or empty passes."""
    spec = os.environ.get("DISTILL_FAULT")
    if spec and _parse(spec) is None:
        from distill.errors import ConfigError

        raise ConfigError(f"DISTILL_FAULT: '{spec}' is not WHERE:N:SIGNAL with WHERE one of {', '.join(POINTS)} (or "
                          "'teacher NAME' of an ensemble), N a whole number >= 1 and SIGNAL a signal name such as "
                          "KILL or SIGTERM; fix it or unset DISTILL_FAULT")


def point(where: str, reached: int) -> None:
    """Send this process DISTILL_FAULT's signal when `where` has reached its N (see the module docstring)."""
    spec = os.environ.get("DISTILL_FAULT")
    if not spec:
        return
    fault = _parse(spec)
    if fault is not None and fault[0] == where and fault[1] == reached:
        os.kill(os.getpid(), fault[2])
