"""What crosses the host/agent boundary: observations in, actions out, episode bookkeeping."""

from __future__ import annotations

import numpy as np
import torch


class NonFiniteEnvError(RuntimeError):
    """An environment produced NaN or inf in an observation or reward."""


def check_finite(x: np.ndarray, what: str, step: int, env_id: str | None) -> None:
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x.reshape(len(x), -1)))[:, 0]
        raise NonFiniteEnvError(
            f"non-finite {what} from env {env_id or '(unnamed)'} at vector step {step}, env index(es) "
            f"{sorted(set(bad.tolist()))}; check the environment (rlgeom never trains on NaN/inf)"
        )


def to_obs_tensor(obs: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 images stay uint8; everything else becomes float32."""
    t = torch.from_numpy(np.ascontiguousarray(obs))
    t = t if t.dtype == torch.uint8 else t.to(torch.float32)
    return t.to(device, non_blocking=True)


def to_action_array(actions: torch.Tensor, discrete: bool) -> np.ndarray:
    a = actions.detach().cpu().numpy()
    return a.astype(np.int64) if discrete else a.astype(np.float32)


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
        self.returns[done] = 0
        self.lengths[done] = 0
        return ep_return, ep_length
