"""Every saved state checked on load, not only the policy's weights (issue 30, item 6).

A model file or checkpoint holds, beside the weights, running statistics (observation normaliser, reward
scaler), optimiser moments, K-FAC factors and their eigendecompositions, counters and the optimisers'
settings. A value none of them can take in a run (a variance of -1, a NaN Adam moment, a negative
`exp_avg_sq`, an infinite running return, a negative count) would load silently and then make every
action 0 or every update a skip. Each is refused here with a ModelFileError naming the tensor (or the JSON
entry), the rule it breaks and the value found.
"""

from __future__ import annotations

import math

import torch

from rlgeom.persistence.serialization import ModelFileError

#: state entries (the last part of a tensor's name) that are never negative: variances, counts, Adam's second
#: moments and step counts, K-FAC's eigenvalues (clamped at 0 when computed)
NON_NEGATIVE = frozenset({"var", "count", "exp_avg_sq", "max_exp_avg_sq", "step", "d_A", "d_G"})
#: entries that are > 0: K-FAC's π (the ratio of the factors' mean eigenvalues), ACKTR's adaptive learning-rate
#: multiplier (0 would stop learning, a negative one ascend the loss)
POSITIVE = frozenset({"pi", "lr_multiplier"})
#: K-FAC's Kronecker factors: covariances, so symmetric with a non-negative diagonal
COVARIANCES = frozenset({"A", "G"})
#: counters in the JSON state (K-FAC's, ACKTR's trust-region count): non-negative integers
COUNTERS = frozenset({"statistics_calls", "statistics_updates", "steps", "inverse_updates", "trust_region_bound"})


#: the largest float32: a float64 statistic beyond it is inf where the policy uses it (rsqrt(var) becomes 0, so
#: every observation normalises to 0)
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _entry(key: str) -> str:
    return key.replace("/", ".").rsplit(".", 1)[-1]


def check_tensors(name: str, tensors: dict[str, torch.Tensor]) -> None:
    """Every floating-point tensor finite; the entries above within their ranges."""
    for key, t in tensors.items():
        if not t.is_floating_point() or t.numel() == 0:
            continue
        if not bool(torch.isfinite(t).all()):
            raise ModelFileError(f"{name}: non-finite (NaN or inf) values in the saved tensor {key!r}; rlgeom never "
                                 "loads or resumes from such state")
        if t.dtype == torch.float64 and bool((t.abs() > FLOAT32_MAX).any()):  # statistics kept in float64
            _fail(name, key, "is used in float32 by the policy, beyond whose range (±3.4e38) it lies", t.abs().max())
        entry = _entry(key)
        if entry in NON_NEGATIVE and bool((t < 0).any()):
            _fail(name, key, "is never negative", t.min())
        if entry in POSITIVE and bool((t <= 0).any()):
            _fail(name, key, "is always > 0", t.min())
        if entry in COVARIANCES and "kfac" in key:
            if t.ndim != 2 or t.shape[0] != t.shape[1] or bool((torch.diagonal(t) < 0).any()):
                _fail(name, key, "is a covariance (square, non-negative diagonal)", torch.diagonal(t).min()
                      if t.ndim == 2 else t.shape)
            if not torch.allclose(t, t.T, rtol=1e-4, atol=1e-6 * float(t.abs().max())):
                _fail(name, key, "is a covariance (symmetric)", (t - t.T).abs().max())


def _fail(name: str, key: str, rule: str, found) -> None:
    found = found.item() if isinstance(found, torch.Tensor) else found
    raise ModelFileError(f"{name}: the saved tensor {key!r} {rule}, but holds {found!r}; the file is corrupted or "
                         "was edited")


def check_json_state(name: str, description: dict) -> None:
    """The JSON parts of the saved state: every number finite; K-FAC's counters non-negative integers; the
    optimisers' settings (lr, betas, eps, momentum, weight_decay, ...) non-negative numbers."""
    roots = {"extra_state": description.get("extra_state")}
    record = description.get("checkpoint")
    if isinstance(record, dict):
        roots["checkpoint.state"] = record.get("state")
    for root, value in roots.items():
        _walk(name, value, root, in_param_groups=False)


def _walk(name: str, value, path: str, in_param_groups: bool) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ModelFileError(f"{name}: the saved state entry {path} is {value!r}, not a finite number")
        # lr is exempt from the sign rule: it is set from the schedule before every step, and checkpoints written
        # before learn() clamped the progress at 0 may hold a slightly negative one from an overshooting last rollout
        if in_param_groups and value < 0 and _entry(path) != "lr":
            raise ModelFileError(f"{name}: the optimiser setting {path} is {value!r}; accepted: >= 0")
        if _entry(path) in COUNTERS and (not isinstance(value, int) or value < 0):
            raise ModelFileError(f"{name}: the counter {path} is {value!r}; accepted: a non-negative integer")
        if _entry(path) in POSITIVE and not value > 0:
            raise ModelFileError(f"{name}: the saved state entry {path} is {value!r}; accepted: a number > 0")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _walk(name, item, f"{path}.{key}", in_param_groups or key == "param_groups")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _walk(name, item, f"{path}.{i}", in_param_groups)


__all__ = ["check_tensors", "check_json_state"]
