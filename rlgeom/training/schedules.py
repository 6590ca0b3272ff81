"""Schedules as data: a float (constant) or {"kind": "linear", "start": a, "end": b}.

`progress_remaining` goes from 1 at the start of training to 0 at the end (SB3's convention).
Being plain data, a schedule is saved as JSON and never pickled. SB3's callables
(`lambda progress_remaining: ...`) are accepted for training, but never stored: a saved model records
`{"kind": "callable", "name": ...}` in their place and `load(path, custom_objects={name: ...})`
supplies them again.
"""

from __future__ import annotations

import math

KINDS = ("constant", "linear")
#: the kind a saved model records for a callable schedule that could not be stored
UNSTORED = "callable"


def validate_schedule(name: str, spec) -> None:
    """Raise ValueError naming `name` unless `spec` is a schedule whose start is > 0 and end >= 0
    (a callable is checked at the start of training, progress_remaining = 1)."""
    values = [spec(1.0)] if callable(spec) else _values(name, spec)
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number or a schedule dict, got {spec!r}")
    if values[0] <= 0 or min(values) < 0:
        raise ValueError(f"{name} must be > 0 (a linear schedule may end at 0), got {spec!r}")


def schedule_value(spec, progress_remaining: float) -> float:
    if callable(spec):
        return float(spec(progress_remaining))
    if isinstance(spec, dict):
        kind = spec.get("kind", "constant")
        if kind == "linear":
            return spec["end"] + (spec["start"] - spec["end"]) * progress_remaining
        return spec["value"]
    return float(spec)


def schedule_to_json(spec):
    """A schedule as a saved model stores it: data as is; a callable only as a record that it was one."""
    if callable(spec):
        return {"kind": UNSTORED, "name": getattr(spec, "__qualname__", type(spec).__name__)}
    return spec


def is_unstored(spec) -> bool:
    return isinstance(spec, dict) and spec.get("kind") == UNSTORED


def _values(name: str, spec) -> list:
    if not isinstance(spec, dict):
        return [spec]
    kind = spec.get("kind")
    if kind == "linear" and set(spec) == {"kind", "start", "end"}:
        return [spec["start"], spec["end"]]
    if kind == "constant" and set(spec) == {"kind", "value"}:
        return [spec["value"]]
    raise ValueError(
        f"invalid schedule for {name}: {spec!r}; accepted: a number, "
        '{"kind": "linear", "start": a, "end": b}, {"kind": "constant", "value": a} '
        "or a function of progress_remaining (1 -> 0)"
    )
