"""Gymnasium vector envs behind rlgeom's tensor interface."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv as GymVectorEnv

from rlgeom.envs.base import StepResult, VecEnv
from rlgeom.envs.boundary import EpisodeTracker, ObservationPacker, check_finite, to_action_array, to_obs_tensor, to_tensor
from rlgeom.envs.device import HostTransfer


class GymnasiumVecEnv(VecEnv):
    """Wraps a `gymnasium.vector.VectorEnv` that autoresets on the same step (SAME_STEP)."""

    def __init__(self, vec_env: GymVectorEnv, device: torch.device | str = "cpu", env_id: str | None = None):
        mode = vec_env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        if mode != AutoresetMode.SAME_STEP:
            raise ValueError(
                f"the gymnasium vector env autoresets with {mode}; rlgeom needs same-step autoreset so no step is "
                "wasted and time-limit bootstraps see the final observation. Build it with "
                "vector_kwargs={'autoreset_mode': gymnasium.vector.AutoresetMode.SAME_STEP} "
                "(or pass the env id / a single gymnasium.Env and rlgeom builds it)"
            )
        self._env = vec_env
        self.num_envs = vec_env.num_envs
        self.device = torch.device(device)
        self._transfer = HostTransfer(self.device)  # tensors are built on the CPU, then moved once per step
        self.single_observation_space = vec_env.single_observation_space
        self.single_action_space = vec_env.single_action_space
        self.env_id = env_id
        self._discrete = isinstance(self.single_action_space, (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary))
        self._episodes = EpisodeTracker(self.num_envs)
        self._pack = ObservationPacker(self.single_observation_space)  # Dict observations as rows
        self._t = 0

    @property
    def backend(self):
        return self._env

    def reset(self, seed: int | None = None) -> torch.Tensor:
        obs, _ = self._env.reset(seed=seed)
        obs = self._pack.batch(obs)
        self._episodes.reset()
        check_finite(obs, "observation", self._t, self.env_id)
        return self._transfer.tensor(to_obs_tensor(obs))

    def step(self, actions: torch.Tensor) -> StepResult:
        self._t += 1
        actions = to_action_array(self._transfer.actions_to_host(actions), self._discrete)
        obs, reward, terminated, truncated, info = self._env.step(actions)
        obs = self._pack.batch(obs)
        done = terminated | truncated
        final_obs = obs
        if done.any():  # host-side numpy: the env lives on the host anyway
            final_obs = obs.copy()
            for i in np.flatnonzero(info["_final_obs"]):
                final_obs[i] = self._pack.one(info["final_obs"][i])
            check_finite(final_obs, "final observation", self._t, self.env_id)
        check_finite(obs, "observation", self._t, self.env_id)
        check_finite(reward, "reward", self._t, self.env_id)
        ep_return, ep_length = self._episodes.step(reward, done, _recorded_episodes(info, done))
        # The arrays below are fresh copies owned by this step (gymnasium copies rewards and flags, the
        # tracker returns copies), so from_numpy's zero-copy view is safe; observations, which a vector env
        # built with copy=False overwrites at its next step, are copied by to_obs_tensor.
        obs_t = to_obs_tensor(obs)
        return self._transfer.step(StepResult(
            obs=obs_t,
            reward=to_tensor(reward, np.float32),
            terminated=to_tensor(terminated, np.bool_),
            truncated=to_tensor(truncated & ~terminated, np.bool_),
            final_obs=obs_t if final_obs is obs else to_obs_tensor(final_obs),
            episode_return=to_tensor(ep_return, np.float32),
            episode_length=to_tensor(ep_length, np.int64),
            done=to_tensor(done, np.bool_),
        ))

    def close(self) -> None:
        self._env.close()


class EpisodeInfoOnly(gym.Wrapper):
    """Passes on only the `"episode"` entry of each step's info (RecordEpisodeStatistics' record).

    rlgeom reads nothing else from a step's info, and a gymnasium vector env merges every key of
    every sub-env's info into arrays on every step: for MuJoCo tasks (six reward terms per step)
    that costs about 6% of Hopper-v5's own stepping time. `make_vec_env` puts this wrapper
    outermost on the in-process (sync) envs it builds from an id; envs the user builds, and
    subprocess (async) envs, keep their infos.
    """

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, _episode_entry(info)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, _episode_entry(info)


def _episode_entry(info: dict) -> dict:
    return {"episode": info["episode"]} if "episode" in info else {}


def _recorded_episodes(info: dict, done: np.ndarray):
    """Episode returns recorded by a RecordEpisodeStatistics wrapper (Atari: the unclipped score)."""
    final = info.get("final_info", {})
    if not done.any() or "episode" not in final:
        return None
    return final["episode"]["r"], final["episode"]["l"], final["_episode"]


class OptionalResetOptions(gym.Wrapper):
    """An env whose `reset(seed=None)` takes no `options` (older gymnasium code): gymnasium's vector envs
    always pass `options=`, SB3's DummyVecEnv only when given; this wrapper drops it when None, as SB3."""

    @classmethod
    def wrap_if_needed(cls, env: gym.Env) -> gym.Env:
        import inspect

        try:
            parameters = inspect.signature(env.reset).parameters
        except (TypeError, ValueError):  # a builtin or C-implemented reset: assume gymnasium's signature
            return env
        takes = "options" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
        return env if takes else cls(env)

    def reset(self, *, seed=None, options=None):
        if options is not None:
            raise TypeError(f"{type(self.env).__name__}.reset() takes no options, but options={options!r} were given")
        return self.env.reset(seed=seed)
