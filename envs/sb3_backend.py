"""Stable-Baselines3 VecEnvs (DummyVecEnv, SubprocVecEnv, VecNormalize, ...) behind rlgeom's interface.

SB3 VecEnvs also reset on the step an episode ends; the final observation is in
info["terminal_observation"] and a time-limit cut is flagged by info["TimeLimit.truncated"].
"""

from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces

from rlgeom.envs.base import StepResult, VecEnv
from rlgeom.envs.boundary import EpisodeTracker, ObservationPacker, check_finite, to_action_array, to_obs_tensor, to_tensor
from rlgeom.envs.device import HostTransfer


def is_sb3_vec_env(env) -> bool:
    """Without importing SB3 unless the object could be one of its VecEnvs."""
    if not any(c.__module__.startswith("stable_baselines3") for c in type(env).__mro__):
        return False
    from stable_baselines3.common.vec_env import VecEnv as SB3VecEnv

    return isinstance(env, SB3VecEnv)


class SB3VecEnvAdapter(VecEnv):
    def __init__(self, venv, device: torch.device | str = "cpu", env_id: str | None = None):
        self._env = venv
        self.num_envs = venv.num_envs
        self.device = torch.device(device)
        self._transfer = HostTransfer(self.device)  # tensors are built on the CPU, then moved once per step
        self.single_observation_space = venv.observation_space
        self.single_action_space = venv.action_space
        self.env_id = env_id or _spec_id(venv)
        self._discrete = isinstance(self.single_action_space, (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary))
        self._episodes = EpisodeTracker(self.num_envs)
        self._pack = ObservationPacker(self.single_observation_space)  # Dict observations as rows
        self._t = 0

    @property
    def backend(self):
        return self._env

    def reset(self, seed: int | None = None) -> torch.Tensor:
        if seed is not None:
            self._env.seed(seed)
        obs = self._pack.batch(self._env.reset())
        self._episodes.reset()
        check_finite(obs, "observation", self._t, self.env_id)  # as the gymnasium backend's reset
        return self._transfer.tensor(to_obs_tensor(obs))

    def step(self, actions: torch.Tensor) -> StepResult:
        self._t += 1
        obs, reward, done, infos = self._env.step(
            to_action_array(self._transfer.actions_to_host(actions), self._discrete))
        obs = self._pack.batch(obs)
        done = np.asarray(done, dtype=np.bool_)
        # a VecEnv may return fewer infos than envs while none is done (SB3 reads infos of done envs only)
        infos = list(infos) + [{}] * (len(done) - len(infos))
        truncated = np.array([bool(i.get("TimeLimit.truncated", False)) for i in infos], dtype=np.bool_) & done
        terminated = done & ~truncated
        final_obs = obs
        if done.any():
            final_obs = obs.copy()
            for i in np.flatnonzero(done):
                final_obs[i] = self._pack.one(infos[i]["terminal_observation"])
            check_finite(final_obs, "final observation", self._t, self.env_id)  # as the gymnasium backend
        check_finite(obs, "observation", self._t, self.env_id)
        check_finite(np.asarray(reward), "reward", self._t, self.env_id)
        # Monitor-recorded episodes carry the unnormalised return (VecNormalize scales rewards).
        monitor = [i.get("episode") for i in infos]
        recorded = None
        if any(m is not None for m in monitor):
            mask = np.array([m is not None for m in monitor])
            r = np.array([m["r"] if m else 0.0 for m in monitor])
            l = np.array([m["l"] if m else 0 for m in monitor])
            recorded = (r, l, mask)
        ep_return, ep_length = self._episodes.step(np.asarray(reward, dtype=np.float64), done, recorded)
        return self._transfer.step(StepResult(
            obs=to_obs_tensor(obs),
            reward=to_tensor(reward, np.float32),
            terminated=to_tensor(terminated, np.bool_),
            truncated=to_tensor(truncated, np.bool_),
            final_obs=to_obs_tensor(final_obs),
            episode_return=to_tensor(ep_return, np.float32),
            episode_length=to_tensor(ep_length, np.int64),
            done=to_tensor(np.array(done, dtype=np.bool_), np.bool_),  # own copy: it outlives the next step
        ))

    def close(self) -> None:
        self._env.close()


def _spec_id(venv) -> str | None:
    try:
        spec = venv.get_attr("spec", indices=[0])[0]
        return spec.id if spec is not None else None
    except Exception:  # an env without a spec attribute: the id is only used for logs
        return None
