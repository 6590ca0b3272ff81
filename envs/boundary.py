"""What crosses the host/agent boundary: observations in, actions out, episode bookkeeping."""

from __future__ import annotations

import contextlib
import contextvars
from collections import Counter

import numpy as np
import torch

#: what to do with a NaN/inf coming out of an env: stop with NonFiniteEnvError, or replace it by 0 and count it
NONFINITE_MODES = ("raise", "sanitize")


class NonFiniteEnvError(RuntimeError):
    """An environment produced NaN or inf in an observation or reward."""


class NonFiniteCounter:
    """The policy for non-finite env output, and how many values were sanitised, per kind (obs, reward)."""

    def __init__(self, mode: str = "raise"):
        if mode not in NONFINITE_MODES:
            raise ValueError(f"nonfinite={mode!r} is not a mode; accepted: {', '.join(map(repr, NONFINITE_MODES))}")
        self.mode = mode
        self.counts: Counter = Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())


_POLICY: contextvars.ContextVar[NonFiniteCounter | None] = contextvars.ContextVar("rlgeom_nonfinite", default=None)


@contextlib.contextmanager
def nonfinite_policy(counter: NonFiniteCounter):
    """Within this block, host backends apply `counter.mode` to non-finite env output (default: raise).

    The agent sets it around its rollouts, so the backends stay unaware of the agent's option.
    """
    token = _POLICY.set(counter)
    try:
        yield counter
    finally:
        _POLICY.reset(token)


#: the largest float32: a wider float beyond it becomes inf when the boundary casts it (float64 1e300 does)
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _finite_as_float32(x: np.ndarray) -> np.ndarray:
    """Where `x` stays finite once cast to float32, as the agent stores it."""
    finite = np.isfinite(x)
    if x.dtype.itemsize > 4:
        finite &= np.abs(np.where(finite, x, 0)) <= FLOAT32_MAX
    return finite


def check_finite(x: np.ndarray, what: str, step: int, env_id: str | None) -> None:
    """Raise NonFiniteEnvError naming env indices and step, or (mode "sanitize") zero them in place; a value
    finite in float64 but beyond float32's range counts as non-finite (it is inf after the cast)."""
    if x.dtype.kind == "f" and not (finite := _finite_as_float32(x)).all():
        policy = _POLICY.get()
        if policy is not None and policy.mode == "sanitize" and x.flags.writeable:
            policy.counts[what] += int((~finite).sum())
            x[~finite] = 0
            return
        bad = np.argwhere(~finite.reshape(len(x), -1))[:, 0]
        raise NonFiniteEnvError(
            f"non-finite {what} (NaN, inf, or beyond float32's ±3.4e38) from env {env_id or '(unnamed)'} at vector "
            f"step {step}, env index(es) "
            f"{sorted(set(bad.tolist()))}; check the environment (rlgeom never trains on NaN/inf), or pass "
            "nonfinite='sanitize' to the agent to replace such values by 0 and count them"
        )


def to_tensor(array, dtype) -> torch.Tensor:
    """A host array as a CPU tensor of numpy `dtype`: converted by numpy (cheaper per call than a torch
    cast at these sizes), shared with torch without a copy. envs.device moves a step's tensors off the CPU."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))


def to_obs_tensor(obs: np.ndarray) -> torch.Tensor:
    """uint8 images stay uint8; everything else becomes float32. Always a copy: a vector env may return
    its own observation buffer and overwrite it at the next step (gymnasium's `copy=False`, which the
    vector envs rlgeom builds from an id use: one copy here instead of gymnasium's deepcopy)."""
    return torch.from_numpy(np.array(obs, dtype=np.uint8 if obs.dtype == np.uint8 else np.float32, copy=True))


class ObservationPacker:
    """Dict observations as one row per observation (rlgeom.data.dict_obs), every other space as it is:
    what a host backend applies to each observation batch before it becomes a tensor."""

    def __init__(self, space):
        from rlgeom.data.dict_obs import layout_for

        self.layout = layout_for(space)

    def batch(self, obs):
        return obs if self.layout is None else self.layout.pack(obs, batched=True)

    def one(self, obs):
        return obs if self.layout is None else self.layout.pack(obs, batched=False)


def to_action_array(actions: torch.Tensor, discrete: bool) -> np.ndarray:
    a = actions.detach().cpu().numpy()  # the env only reads it: no extra copy when the dtype already fits
    return a.astype(np.int64, copy=False) if discrete else a.astype(np.float32, copy=False)


class EpisodeTracker:
    """Running undiscounted return and length per env, on the host (numpy rewards come from there).

    A backend that records episodes itself (gymnasium's RecordEpisodeStatistics, SB3's Monitor)
    overrides the tracked values, so wrappers like reward clipping don't distort reported scores.
    """

    def __init__(self, num_envs: int):
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.lengths = np.zeros(num_envs, dtype=np.int64)

    def reset(self) -> None:
        self.returns[:] = 0
        self.lengths[:] = 0

    def step(self, reward: np.ndarray, done: np.ndarray, recorded=None) -> tuple[np.ndarray, np.ndarray]:
        self.returns += reward
        self.lengths += 1
        ep_return, ep_length = self.returns.copy(), self.lengths.copy()
        if recorded is not None:
            r, l, mask = recorded
            ep_return[mask], ep_length[mask] = np.asarray(r)[mask], np.asarray(l)[mask]
        if done.any():
            self.returns[done] = 0
            self.lengths[done] = 0
        return ep_return, ep_length
