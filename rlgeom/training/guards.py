"""Numerical guards: a non-finite quantity never reaches the parameters.

An agent's `update()` calls `guard_finite(name=tensor, ...)` on the quantities it is about to apply
(loss, gradient norm, Fisher-vector product, CG solution, K-FAC step, ...). The check costs one
host sync for all the tensors together. If any is NaN/inf it raises `SkippedUpdate`; the base agent
then restores the parameters and optimiser state it snapshotted before the update, counts the skip
(`train/skipped_updates`) and, after `max_consecutive_skips` skips in a row, stops training with
`TrainingDivergedError` after writing a final checkpoint.
"""

from __future__ import annotations

import torch


class SkippedUpdate(ArithmeticError):
    """Raised inside an update when a quantity about to be applied is NaN or inf."""

    def __init__(self, names: list[str]):
        self.names = list(names)
        super().__init__(f"non-finite {', '.join(self.names)}")


class SkippedUpdateWarning(RuntimeWarning):
    """An update was skipped (non-finite values): its parameters, optimiser and agent state were put back."""


class NonFinitePolicyError(RuntimeError):
    """The policy's parameters hold NaN or inf before a rollout (set from outside training: the update
    itself never leaves them so), so its actions would be NaN."""


class TrainingDivergedError(RuntimeError):
    """Too many consecutive updates were skipped because of non-finite values."""


def guard_finite(**named) -> None:
    """Raise SkippedUpdate naming every argument that holds a NaN or inf (one host sync in all).

    Arguments are tensors (any shape), Python numbers, or iterables of tensors (e.g. gradients):
    `guard_finite(loss=loss, grad_norm=norm, cg_solution=x)`.
    """
    flags, names = [], []
    for name, value in named.items():
        if value is None:
            continue
        if isinstance(value, (int, float)):
            value = torch.tensor(float(value))
        tensors = [value] if isinstance(value, torch.Tensor) else [t for t in value if t is not None]
        if tensors:
            flags.append(torch.stack([torch.isfinite(t).all().to(tensors[0].device) for t in tensors]).all())
            names.append(name)
    if not flags:
        return
    device = flags[0].device
    ok = torch.stack([f.to(device) for f in flags]).tolist()  # the one host sync
    bad = [n for n, good in zip(names, ok) if not good]
    if bad:
        raise SkippedUpdate(bad)


def read_stats(stats: dict) -> dict:
    """An update's statistics as Python numbers, the tensors among them read in one host transfer
    (a `.item()` each would wait for the device once per statistic)."""
    keys = [k for k, v in stats.items() if isinstance(v, torch.Tensor)]
    if not keys:
        return dict(stats)
    values = torch.stack([stats[k].detach().reshape(()).double() for k in keys]).tolist()  # float32 → float64: exact
    return {**stats, **dict(zip(keys, values))}


__all__ = ["SkippedUpdate", "SkippedUpdateWarning", "TrainingDivergedError", "guard_finite", "read_stats"]
