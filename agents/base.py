"""The one base level every agent shares: Stable-Baselines3's surface over rlgeom's core.

learn / predict / save / load / get_env / set_env / num_timesteps / logger, SB3 callbacks, and
the rollout loop. A concrete agent adds only its `Config` and its `update(buffer, progress)`.
"""

from __future__ import annotations

import abc
import random
import sys
import time
from collections import deque

import numpy as np
import torch
from gymnasium import spaces

import envs
from rlgeom import __version__
from rlgeom.buffer import RolloutBuffer
from rlgeom.logger import RunLogger, run_directory
from rlgeom.normalization import RewardScaler
from rlgeom.policies import ActorCriticPolicy
from rlgeom.serialization import (
    ModelFileError, read_model, space_from_json, space_to_json, spaces_equal, write_model,
)
from agents.config import OnPolicyConfig


def resolve_device(device) -> torch.device:
    if device == "auto" or device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; accepted: auto, cpu, cuda, cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; accepted here: auto, cpu")
    return dev


def set_global_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class OnPolicyAgent(abc.ABC):
    """SB3-style on-policy agent: `Agent(policy, env, **hyperparameters).learn(n)`."""

    Config: type[OnPolicyConfig] = OnPolicyConfig
    algo: str = "base"
    #: agents with separate actor and critic steps cannot train a shared feature extractor
    needs_separate_networks: bool = False

    def __init__(
        self,
        policy: str,
        env,
        *,
        policy_kwargs: dict | None = None,
        n_envs: int = 1,
        tensorboard_log: str | None = None,
        seed: int | None = None,
        device="auto",
        verbose: int = 0,
        vectorization: str = "sync",
        env_kwargs: dict | None = None,
        _spaces=None,
        **hyperparameters,
    ):
        self.config = self.Config.build(hyperparameters)
        self.device = resolve_device(device)
        self.seed, self.verbose, self.tensorboard_log = seed, verbose, tensorboard_log
        self.policy_name, self.policy_kwargs = policy, dict(policy_kwargs or {})
        if seed is not None:
            set_global_seeds(seed)
        self.generator = torch.Generator().manual_seed(seed if seed is not None else int(torch.seed() % 2**63))
        if env is None and _spaces is None:
            raise ValueError(f"{type(self).__name__} needs an env (an env id, gymnasium env or VecEnv)")
        self.env = None
        if env is not None:
            self.env = envs.make_vec_env(env, n_envs, seed, self.device, vectorization, env_kwargs)
            obs_space, act_space = self.env.single_observation_space, self.env.single_action_space
        else:
            obs_space, act_space = _spaces
        self.observation_space, self.action_space = obs_space, act_space
        self.n_envs = self.env.num_envs if self.env is not None else n_envs
        self.env_id = getattr(self.env, "env_id", None)
        self.config.validate(self.n_envs)
        self.policy = self._make_policy().to(self.device)
        if isinstance(act_space, spaces.Box):
            self._action_low = torch.as_tensor(act_space.low, dtype=torch.float32, device=self.device)
            self._action_high = torch.as_tensor(act_space.high, dtype=torch.float32, device=self.device)
        self.reward_scaler = RewardScaler(self.config.gamma) if self.config.normalize_reward else None
        self.num_timesteps = 0
        self.n_updates = 0
        self.logger = RunLogger(None, verbose)
        self._run_dir: str | None = None
        self._last_obs = None
        self._last_episode_starts = None
        self.ep_info_buffer: deque = deque(maxlen=100)
        self._setup()

    # ----------------------------------------------------------------- construction
    def _make_policy(self) -> ActorCriticPolicy:
        kwargs = dict(self.policy_kwargs)
        if self.needs_separate_networks:
            if kwargs.get("share_features_extractor"):
                raise ValueError(
                    f"{type(self).__name__} steps the actor and the critic separately and cannot share a feature "
                    "extractor; use policy_kwargs=dict(share_features_extractor=False)"
                )
            kwargs["share_features_extractor"] = False
        try:
            return ActorCriticPolicy(
                self.observation_space, self.action_space, self.policy_name,
                normalize_observations=self.config.normalize_observations, **kwargs,
            )
        except TypeError as err:
            raise ValueError(f"invalid policy_kwargs {self.policy_kwargs!r}: {err}") from None

    def _setup(self) -> None:
        """Create the agent's optimisers and helpers (after the policy exists)."""

    @abc.abstractmethod
    def update(self, buffer: RolloutBuffer, progress_remaining: float) -> dict:
        """One policy/value update from a full rollout; returns {tag: value} for the logger."""

    # ----------------------------------------------------------------- environment
    def get_env(self):
        """The env being trained on: the SB3 VecEnv if one was given, else rlgeom's VecEnv."""
        if self.env is None:
            return None
        backend = self.env.backend
        return backend if envs.make.is_sb3_vec_env(backend) else self.env

    def get_vec_normalize_env(self):
        env = self.get_env()
        while env is not None and envs.make.is_sb3_vec_env(env):
            if type(env).__name__ == "VecNormalize":
                return env
            env = getattr(env, "venv", None)
        return None

    def set_env(self, env, n_envs: int = 1, vectorization: str = "sync") -> None:
        new = envs.make_vec_env(env, n_envs, self.seed, self.device, vectorization)
        for what, have, got in (
            ("observation", self.observation_space, new.single_observation_space),
            ("action", self.action_space, new.single_action_space),
        ):
            if not spaces_equal(have, got):
                raise ValueError(f"the new env's {what} space {got} differs from the model's {have}")
        self.env, self.n_envs, self._last_obs = new, new.num_envs, None
        self.env_id = new.env_id or self.env_id
        self.config.validate(self.n_envs)

    # ----------------------------------------------------------------- training
    def learn(
        self,
        total_timesteps: int,
        callback=None,
        log_interval: int = 1,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ):
        if self.env is None:
            raise ValueError("this model has no env: pass env= to load() or call set_env(env) before learn()")
        if isinstance(total_timesteps, bool) or not isinstance(total_timesteps, (int, np.integer)) or total_timesteps < 1:
            raise ValueError(f"total_timesteps must be a positive integer, got {total_timesteps!r}")
        if reset_num_timesteps or self._last_obs is None:
            self._reset_env()
        if reset_num_timesteps:
            self.num_timesteps = 0
        self._open_run(tb_log_name or self.algo, new_run=reset_num_timesteps or self._run_dir is None)
        self._target_timesteps = self.num_timesteps + int(total_timesteps)
        callback = _wrap_callback(callback)
        if callback is not None:
            callback.init_callback(self)
            callback.on_training_start(locals(), globals())
        bar = _progress_bar(total_timesteps) if progress_bar else None
        start_time, start_steps = time.perf_counter(), self.num_timesteps
        while self.num_timesteps < self._target_timesteps:
            if not self.collect_rollout(callback):
                break
            progress_remaining = 1.0 - self.num_timesteps / self._target_timesteps
            stats = self.update(self.buffer, progress_remaining)
            self.n_updates += 1
            self.policy.obs_normalizer.update(self.buffer.obs)
            if bar is not None:
                bar.update(self.n_envs * self.config.n_steps)
            if log_interval and self.n_updates % log_interval == 0:
                self._log(stats, start_time, start_steps)
        if bar is not None:
            bar.close()
        if callback is not None:
            callback.on_training_end()
        return self

    def _reset_env(self) -> None:
        self._last_obs = self.env.reset(seed=self.seed)
        self._last_episode_starts = torch.ones(self.n_envs, dtype=torch.bool, device=self.device)
        cfg = self.config
        self.buffer = RolloutBuffer(
            cfg.n_steps, self.n_envs, tuple(self.observation_space.shape), self._last_obs.dtype,
            self.policy.family.action_shape, self.policy.family.action_dtype, self.device,
        )

    def _env_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Box actions are clipped to the bounds for the env; the buffer keeps them unclipped."""
        if isinstance(self.action_space, spaces.Box):
            return torch.clamp(actions, self._action_low, self._action_high)
        return actions

    def collect_rollout(self, callback=None) -> bool:
        """Fill the buffer with n_steps vector steps; False if a callback asked to stop."""
        buffer = self.buffer
        buffer.reset()
        if callback is not None:
            callback.on_rollout_start()
        for _ in range(self.config.n_steps):
            with torch.no_grad():
                actions, values, log_probs = self.policy(self._last_obs)
            step = self.env.step(self._env_actions(actions))
            buffer.add(self._last_obs, actions, log_probs, values, self._last_episode_starts, step)
            self._last_obs, self._last_episode_starts = step.obs, step.done
            self.num_timesteps += self.n_envs
            if callback is not None:
                callback.update_locals({"actions": actions, "rewards": step.reward, "dones": step.done, "infos": []})
                if not callback.on_step():
                    return False
        returns, lengths = buffer.finished_episodes()
        self.ep_info_buffer.extend({"r": r, "l": l} for r, l in zip(returns, lengths))
        if self.reward_scaler is not None:
            buffer.rewards = self.reward_scaler.scale_rollout(buffer.rewards, buffer.dones)
        buffer.compute_advantages(self.policy.value, self.config.gamma, self.config.gae_lambda)
        if callback is not None:
            callback.on_rollout_end()
        return True

    # ----------------------------------------------------------------- logging
    def _open_run(self, name: str, new_run: bool) -> None:
        if not new_run or self.tensorboard_log is None:
            if self.logger.writer is None and self.tensorboard_log is None:
                self.logger = RunLogger(None, self.verbose)
            return
        self.logger.close()
        self._run_dir = run_directory(self.tensorboard_log, self.env_id, name, self.seed)
        self.logger = RunLogger(self._run_dir, self.verbose)
        self.logger.write_run_info(
            {
                "env_id": self.env_id, "algo": self.algo, "seed": self.seed, "rlgeom": __version__,
                "n_envs": self.n_envs, "policy": self.policy_name, "policy_kwargs": self.policy_kwargs,
                "hyperparameters": self.config.to_dict(), "device": str(self.device),
            }
        )

    def _log(self, stats: dict, start_time: float, start_steps: int) -> None:
        log = self.logger
        if self.ep_info_buffer:
            log.record("rollout/ep_rew_mean", float(np.mean([e["r"] for e in self.ep_info_buffer])))
            log.record("rollout/ep_len_mean", float(np.mean([e["l"] for e in self.ep_info_buffer])))
        elapsed = max(time.perf_counter() - start_time, 1e-9)
        log.record("time/fps", int((self.num_timesteps - start_steps) / elapsed))
        log.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        log.record("train/n_updates", self.n_updates)
        for key, value in stats.items():
            log.record(key, float(value))
        log.dump(self.num_timesteps)

    def dump_logs(self) -> None:
        self.logger.dump(self.num_timesteps)

    # ----------------------------------------------------------------- inference
    def predict(self, observation, state=None, episode_start=None, deterministic: bool = False):
        """SB3's predict: (actions, None); batched observations give batched actions."""
        obs = np.asarray(observation)
        shape = tuple(self.observation_space.shape)
        if obs.shape == shape:
            batched = False
            obs = obs[None]
        elif obs.shape[1:] == shape:
            batched = True
        else:
            raise ValueError(
                f"observation of shape {obs.shape} does not match the model's observation space {shape} "
                f"(accepted: {shape} or (n_envs, {', '.join(map(str, shape))}))"
            )
        dtype = torch.uint8 if obs.dtype == np.uint8 else torch.float32
        with torch.no_grad():
            dist = self.policy.get_distribution(torch.as_tensor(obs, dtype=dtype, device=self.device))
            actions = (dist.mode if deterministic else dist.sample()).cpu().numpy()
        if isinstance(self.action_space, spaces.Box):
            actions = np.clip(actions, self.action_space.low, self.action_space.high)
        return (actions if batched else actions[0]), state

    # ----------------------------------------------------------------- persistence
    def _extra_state(self) -> dict[str, torch.Tensor]:
        """Tensors beyond the policy's that an agent wants saved (e.g. reward statistics)."""
        if self.reward_scaler is None:
            return {}
        return {f"reward_scaler.{k}": v for k, v in self.reward_scaler.state_dict().items()}

    def save(self, path) -> str:
        """Write safetensors weights + JSON description; returns the path written."""
        tensors = {f"policy.{k}": v for k, v in self.policy.state_dict().items()}
        tensors.update(self._extra_state())
        description = {
            "algo": self.algo, "rlgeom": __version__, "policy": self.policy_name,
            "policy_kwargs": self.policy_kwargs, "hyperparameters": self.config.to_dict(),
            "observation_space": space_to_json(self.observation_space),
            "action_space": space_to_json(self.action_space),
            "num_timesteps": self.num_timesteps, "n_updates": self.n_updates,
            "env_id": self.env_id, "n_envs": self.n_envs, "seed": self.seed,
        }
        return write_model(path, tensors, description)

    @classmethod
    def load(cls, path, env=None, device="auto", **overrides):
        """Rebuild a saved agent (no unpickling); `env` must match the saved spaces."""
        tensors, d = read_model(path)
        if d.get("algo") != cls.algo:
            raise ModelFileError(
                f"{path}: holds a {str(d.get('algo')).upper()} model, not {cls.algo.upper()}; "
                f"load it with {str(d.get('algo')).upper()}.load"
            )
        try:
            obs_space = space_from_json(d["observation_space"])
            act_space = space_from_json(d["action_space"])
            hyperparameters = {**d["hyperparameters"], **overrides}
            agent = cls(
                d["policy"], None, policy_kwargs=d.get("policy_kwargs"), n_envs=d.get("n_envs", 1),
                seed=d.get("seed"), device=device, _spaces=(obs_space, act_space), **hyperparameters,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ModelFileError(f"{path}: the model description is incomplete or inconsistent: {err}") from None
        agent._load_tensors(path, tensors)
        agent.num_timesteps, agent.n_updates = int(d.get("num_timesteps", 0)), int(d.get("n_updates", 0))
        agent.env_id = d.get("env_id")
        if env is not None:
            agent.set_env(env, n_envs=d.get("n_envs", 1) if isinstance(env, str) else 1)
        return agent

    def _load_tensors(self, path, tensors: dict[str, torch.Tensor]) -> None:
        policy_state = {k[len("policy."):]: v for k, v in tensors.items() if k.startswith("policy.")}
        expected = self.policy.state_dict()
        missing = sorted(set(expected) - set(policy_state))
        unexpected = sorted(set(policy_state) - set(expected))
        wrong = [k for k in expected if k in policy_state and policy_state[k].shape != expected[k].shape]
        if missing or unexpected or wrong:
            raise ModelFileError(
                f"{path}: weights do not fit the described policy (missing {missing[:4]}, unexpected "
                f"{unexpected[:4]}, wrong shape {wrong[:4]})"
            )
        self.policy.load_state_dict(policy_state)
        if self.reward_scaler is not None:
            prefix = "reward_scaler."
            state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if state:
                self.reward_scaler.load_state_dict(state)

    def get_parameters(self) -> dict:
        return {"policy": self.policy.state_dict()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.policy_name}, env={self.env_id}, device={self.device})"


def _wrap_callback(callback):
    """SB3 callbacks (or a list of them); imports SB3 only when a list must be combined."""
    if callback is None:
        return None
    if isinstance(callback, (list, tuple)):
        from stable_baselines3.common.callbacks import CallbackList

        return CallbackList(list(callback))
    for method in ("init_callback", "on_step", "on_training_start", "on_rollout_start"):
        if not hasattr(callback, method):
            raise TypeError(
                f"callback {callback!r} lacks {method}(); accepted: a stable_baselines3 BaseCallback or a list of them"
            )
    return callback


def _progress_bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr)


__all__ = ["OnPolicyAgent", "resolve_device", "set_global_seeds"]
