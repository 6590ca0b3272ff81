"""The argument checks every part of rlgeom shares: one function per rule, one wording per error.

Each raises ValueError naming the argument, the rule it broke (what is accepted) and the value it got,
and returns the value (converted to a plain int or float) so a caller can check and assign at once.
Booleans are refused where a number is asked for (True is an int to Python, not to a user).
"""

from __future__ import annotations

import math
import numbers


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def positive_int(name: str, value, *, allow_none: bool = False, meaning: str = "a positive integer"):
    """An integer ≥ 1 (numpy integers included), or None where allowed."""
    if value is None and allow_none:
        return None
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be {meaning}{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def non_negative_int(name: str, value, *, allow_none: bool = False):
    """An integer ≥ 0, or None where allowed."""
    if value is None and allow_none:
        return None
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def positive(name: str, value, *, allow_none: bool = False, finite: bool = False):
    """A number > 0 (and finite when asked), or None where allowed."""
    if value is None and allow_none:
        return None
    if not _is_number(value) or not value > 0 or (finite and not math.isfinite(value)):
        kind = "a finite number > 0" if finite else "> 0"
        raise ValueError(f"{name} must be {kind}{' or None' if allow_none else ''}, got {value!r}")
    return value


def non_negative(name: str, value):
    """A finite number ≥ 0 (a coefficient: an infinite one makes every loss inf, so every update a skip)."""
    if not _is_number(value) or not value >= 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be >= 0 (and finite), got {value!r}")
    return value


def in_range(name: str, value, low: float, high: float, *, high_open: bool = False):
    """A number in [low, high], or [low, high) with high_open."""
    inside = _is_number(value) and low <= value and (value < high if high_open else value <= high)
    if not inside:
        raise ValueError(f"{name} must be a number in [{low}, {high}{')' if high_open else ']'}, got {value!r}")
    return value


def boolean(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


#: the most weights a policy's hidden layers may hold (2**28 float32 weights are 1 GiB, per copy: Adam
#: keeps two more); a wider network is almost surely a typo, refused before anything is allocated
MAX_HIDDEN_WEIGHTS = 2**28


def hidden_weights(widths) -> int:
    """Weights between consecutive hidden layers of the given widths (a lower bound on an MLP's size,
    whatever its input and output)."""
    widths = [w for w in widths if _is_int(w) and w > 0] if isinstance(widths, (list, tuple)) else []
    return sum(int(a) * int(b) for a, b in zip(widths, widths[1:]))


def net_arch_size(name: str, net_arch):
    """SB3's net_arch (a list of widths, or dict(pi=[...], vf=[...])) whose hidden layers hold at most
    MAX_HIDDEN_WEIGHTS weights; returns it unchanged (its form is checked by the policy)."""
    towers = [net_arch.get("pi"), net_arch.get("vf")] if isinstance(net_arch, dict) else [net_arch, net_arch]
    total = sum(hidden_weights(t) for t in towers)
    if total > MAX_HIDDEN_WEIGHTS:
        raise ValueError(f"{name} {net_arch!r} asks for {total:,} weights between hidden layers; accepted: at most "
                         f"{MAX_HIDDEN_WEIGHTS:,} (about {MAX_HIDDEN_WEIGHTS * 4 // 2**30} GiB of float32)")
    return net_arch
