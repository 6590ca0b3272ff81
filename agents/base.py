"""The one base level every agent shares: Stable-Baselines3's surface over rlgeom's core.

learn / predict / save / load / get_env / set_env / num_timesteps / logger, SB3 callbacks, and
the rollout loop. A concrete agent adds only its `Config` and its `update(buffer, progress)`.

What an agent author hooks into (reliability: checkpoints, resume, numerical guards):

- Optimisers: every `torch.optim.Optimizer` attribute of the agent (`self.optimizer`,
  `self.critic_optimizer`, ...) is found by `_optimizers()` and saved in checkpoints and in the
  update snapshot; override `_optimizers()` only to hide or rename one.
- Other state (a K-FAC preconditioner, running statistics): override `_extra_state()` to return a
  nested dict of tensors and JSON values (`{**super()._extra_state(), "kfac": self.kfac.state_dict()}`)
  and `_load_extra_state(state)` to take the same dict back (call super for the base's keys). It is
  stored without pickle (tensors in safetensors, the rest in JSON) and must round-trip at any time,
  also before the first update: it is used for checkpoints and for rolling back a skipped update.
- Numerical guards: inside `update()`, call `guard_finite(name=tensor, ...)` on what you are about
  to apply (loss, gradient norm, Fisher-vector product, CG solution, K-FAC step); one host sync
  checks them all, and a NaN/inf raises `SkippedUpdate`. `learn()` snapshots the parameters,
  optimisers and extra state before each update and restores them on a skip (so a skip may be
  raised after some optimiser steps, e.g. at the end of PPO's epochs), also when any parameter is
  non-finite after the update. Skips are counted in `train/skipped_updates`; after
  `max_consecutive_skips` in a row, learn() writes a final checkpoint and raises
  `TrainingDivergedError`.

        def update(self, buffer, progress_remaining):
            g = ...; x = conjugate_gradient(...)
            guard_finite(policy_gradient=g, cg_solution=x)   # before the parameters move
            ...apply the step...
"""

from __future__ import annotations

import abc
import copy
import os
import random
import sys
import time
from collections import deque
from collections.abc import Sequence

import numpy as np
import torch
from gymnasium import spaces

import envs
from rlgeom import __version__, validation
from rlgeom import checkpoint as ckpt
from rlgeom.buffer import RolloutBuffer
from rlgeom.guards import SkippedUpdate, TrainingDivergedError, guard_finite
from rlgeom.logger import RunLogger, run_directory
from rlgeom.normalization import RewardScaler
from rlgeom.policies import ActorCriticPolicy
from rlgeom.serialization import (
    ModelFileError, policy_kwargs_from_json, policy_kwargs_to_json, read_model, space_from_json, space_to_json,
    spaces_equal, write_model,
)
from agents.config import OnPolicyConfig
from envs.boundary import NonFiniteCounter, nonfinite_policy

#: constructor options saved with the model that are not hyperparameters of the algorithm
AGENT_OPTIONS = ("nonfinite", "max_consecutive_skips", "geometry_every")


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
        nonfinite: str = "raise",
        max_consecutive_skips: int = 5,
        geometry_every: int | None = None,
        _spaces=None,
        **hyperparameters,
    ):
        self.config = self.Config.build(hyperparameters)
        self._nonfinite = NonFiniteCounter(nonfinite)  # validates the mode
        self.max_consecutive_skips = validation.positive_int("max_consecutive_skips", max_consecutive_skips)
        # log rlgeom.spectrum.training_geometry every k updates (None: off)
        self.geometry_every = validation.positive_int("geometry_every", geometry_every, allow_none=True)
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
        self.policy.written_out_derivatives = self.config.written_out_derivatives
        start = getattr(act_space, "start", None) if isinstance(act_space, (spaces.Discrete, spaces.MultiDiscrete)) else None
        self._action_start = (torch.as_tensor(np.asarray(start), dtype=torch.long, device=self.device)
                              if start is not None and np.any(np.asarray(start) != 0) else None)
        if isinstance(act_space, spaces.Box):
            self._action_low = torch.as_tensor(act_space.low, dtype=torch.float32, device=self.device)
            self._action_high = torch.as_tensor(act_space.high, dtype=torch.float32, device=self.device)
        self.reward_scaler = RewardScaler(self.config.gamma) if self.config.normalize_reward else None
        self.num_timesteps = 0
        self.n_updates = 0
        self.skipped_updates, self._consecutive_skips = 0, 0
        self._target_timesteps = 0
        self._checkpoint_dir: str | None = None
        self._checkpoint_every: int | None = None
        self._keep_checkpoints = 3
        self._last_checkpoint_step: int | None = None
        self._pending_env_state = None  # env state from a checkpoint, applied at the next reset
        self.logger = RunLogger(None, verbose)
        self._run_dir: str | None = None
        self._last_obs = None
        self._last_episode_starts = None
        self.ep_info_buffer: deque = deque(maxlen=100)
        self._setup()

    @property
    def nonfinite(self) -> str:
        """What happens to NaN/inf from the env: "raise" or "sanitize" (saved with the model)."""
        return self._nonfinite.mode

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
        checkpoint_every: int | None = None,
        checkpoint_dir: str | None = None,
        keep_checkpoints: int = 3,
    ):
        """SB3's learn, plus periodic checkpoints: every `checkpoint_every` environment steps (and at
        the end) a checkpoint is written atomically to `checkpoint_dir` (default: `<run dir>/checkpoints`,
        the run dir being the TensorBoard run), keeping the newest `keep_checkpoints`. Continue a run
        with `Agent.load(checkpoint, env=...)` then `learn(remaining, reset_num_timesteps=False)`."""
        if self.env is None:
            raise ValueError("this model has no env: pass env= to load() or call set_env(env) before learn()")
        validation.positive_int("total_timesteps", total_timesteps)
        self._check_checkpoint_args(checkpoint_every, checkpoint_dir, keep_checkpoints)
        if reset_num_timesteps or self._last_obs is None:
            with nonfinite_policy(self._nonfinite):
                self._reset_env(resume=not reset_num_timesteps and self.num_timesteps > 0)
        if reset_num_timesteps:
            self.num_timesteps = 0
            self.n_updates = 0
            self._last_checkpoint_step = None
        self._open_run(tb_log_name or self.algo, new_run=reset_num_timesteps or self._run_dir is None)
        self._target_timesteps = self.num_timesteps + int(total_timesteps)
        self._setup_checkpoints(checkpoint_every, checkpoint_dir, keep_checkpoints, new_run=reset_num_timesteps)
        callback = _wrap_callback(callback)
        if callback is not None:
            callback.init_callback(self)
            callback.on_training_start(locals(), globals())
        bar = _progress_bar(total_timesteps) if progress_bar else None
        start_time, start_steps = time.perf_counter(), self.num_timesteps
        iteration = 0
        while self.num_timesteps < self._target_timesteps:
            with nonfinite_policy(self._nonfinite):
                if not self.collect_rollout(callback):
                    break
            progress_remaining = 1.0 - self.num_timesteps / self._target_timesteps
            stats = self._guarded_update(progress_remaining)
            if self.geometry_every and self.n_updates % self.geometry_every == 0:
                from rlgeom.spectrum import training_geometry  # scipy is imported only when asked for

                stats.update(training_geometry(self.policy, self.buffer, self.config.normalize_advantage))
            self.policy.obs_normalizer.update(self.buffer.obs)
            if bar is not None:
                bar.update(self.n_envs * self.config.n_steps)
            iteration += 1
            if log_interval and iteration % log_interval == 0:
                self._log(stats, start_time, start_steps)
            if self._checkpoint_every and self.num_timesteps - (self._last_checkpoint_step or 0) >= self._checkpoint_every:
                self._write_checkpoint()
        if self._checkpoint_every and self._last_checkpoint_step != self.num_timesteps:
            self._write_checkpoint()
        if bar is not None:
            bar.close()
        if callback is not None:
            callback.on_training_end()
        return self

    def _reset_env(self, resume: bool = False) -> None:
        """Reset the env and (re)build the buffer. Resuming a checkpoint, an env that offers
        `state_dict()` / `load_state_dict()` gets its saved state back and the run continues exactly;
        any other env (gymnasium, SB3) is reset with a seed derived from (seed, num_timesteps), so it
        does not replay the first episodes, and the reward scaler's running return restarts with it."""
        seed = self.seed
        if resume and seed is not None:
            seed = (int(seed) * 1_000_003 + int(self.num_timesteps)) % 2**31
        self._last_obs = self.env.reset(seed=seed)
        self._last_episode_starts = torch.ones(self.n_envs, dtype=torch.bool, device=self.device)
        saved, self._pending_env_state = self._pending_env_state, None
        if resume and saved is not None and hasattr(self.env, "load_state_dict"):
            self.env.load_state_dict(saved["env"])
            self._last_obs = saved["last_obs"].to(self.device)
            self._last_episode_starts = saved["episode_starts"].to(self.device, torch.bool)
        elif resume and self.reward_scaler is not None:
            self.reward_scaler._discounted = None
        cfg = self.config
        self.buffer = RolloutBuffer(
            cfg.n_steps, self.n_envs, tuple(self.observation_space.shape), self._last_obs.dtype,
            self.policy.family.action_shape, self.policy.family.action_dtype, self.device,
        )

    def _env_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """The policy's actions as the env takes them: Box actions clipped to the bounds, Discrete and
        MultiDiscrete ones shifted by the space's `start` (the family counts from 0). The buffer keeps
        the policy's own."""
        if isinstance(self.action_space, spaces.Box):
            return torch.clamp(actions, self._action_low, self._action_high)
        if self._action_start is not None:
            return actions + self._action_start
        return actions

    def collect_rollout(self, callback=None) -> bool:
        """Fill the buffer with n_steps vector steps; False if a callback asked to stop."""
        buffer = self.buffer
        buffer.reset()
        if callback is not None:
            callback.on_rollout_start()
        self.policy.start_rollout()  # parameters are fixed until the update: inference functions built once
        try:
            for _ in range(self.config.n_steps):
                actions, values, log_probs = self.policy.act(self._last_obs)  # inference mode
                step = self.env.step(self._env_actions(actions))
                buffer.add(self._last_obs, actions, log_probs, values, self._last_episode_starts, step)
                self._last_obs, self._last_episode_starts = step.obs, step.done
                self.num_timesteps += self.n_envs
                if callback is not None:
                    callback.update_locals(
                        {"actions": actions, "rewards": step.reward, "dones": step.done, "infos": StepInfos(step)})
                    if not callback.on_step():
                        return False
        finally:
            self.policy.end_rollout()
        returns, lengths = buffer.finished_episodes()
        self.ep_info_buffer.extend({"r": r, "l": l} for r, l in zip(returns, lengths))
        if self.reward_scaler is not None:
            buffer.rewards.copy_(self.reward_scaler.scale_rollout(buffer.rewards, buffer.dones))  # in place: add() keeps views
        buffer.compute_advantages(self.policy.value, self.config.gamma, self.config.gae_lambda)
        if callback is not None:
            callback.on_rollout_end()
        return True

    # ----------------------------------------------------------------- logging
    def _open_run(self, name: str, new_run: bool) -> None:
        if not new_run and self.logger.writer is None and self._run_dir is not None and self.tensorboard_log:
            # continuing (a loaded checkpoint): same run directory, nothing logged after this step is kept
            self.logger = ckpt.open_resumed_logger(self._run_dir, self.num_timesteps, self.verbose)
            return
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
                "n_envs": self.n_envs, "policy": self.policy_name,
                "policy_kwargs": policy_kwargs_to_json(self.policy_kwargs),
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
        if self._nonfinite.mode == "sanitize":
            log.record("rollout/nonfinite_sanitized", self._nonfinite.total)
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
            actions = self.policy.act(torch.as_tensor(obs, dtype=dtype, device=self.device), deterministic)[0]
            actions = actions.cpu().numpy()
        if isinstance(self.action_space, spaces.Box):
            actions = np.clip(actions, self.action_space.low, self.action_space.high)
        elif self._action_start is not None:
            actions = actions + self._action_start.cpu().numpy()
        return (actions if batched else actions[0]), state

    # ----------------------------------------------------------------- numerical guards
    def _guarded_update(self, progress_remaining: float) -> dict:
        """`update()` under the guard: on SkippedUpdate (or non-finite parameters afterwards) the
        parameters, optimisers and extra state go back to their values before the update."""
        snapshot = self._training_snapshot()
        try:
            stats = self.update(self.buffer, progress_remaining)
            guard_finite(parameters=list(self.policy.parameters()))
        except SkippedUpdate as skip:
            self._restore_training_snapshot(snapshot)
            self.skipped_updates += 1
            self._consecutive_skips += 1
            if self.verbose:
                print(f"step {self.num_timesteps}: update skipped ({skip})", file=sys.stderr)
            if self._consecutive_skips >= self.max_consecutive_skips:
                self._stop_diverged(skip)
            stats = {}
        else:
            self.n_updates += 1
            self._consecutive_skips = 0
        stats["train/skipped_updates"] = self.skipped_updates
        return stats

    def _training_snapshot(self) -> dict:
        return _clone_tree({
            "policy": self.policy.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self._optimizers().items()},
            "extra": self._extra_state(),
        })

    def _restore_training_snapshot(self, snapshot: dict) -> None:
        self.policy.load_state_dict(snapshot["policy"])
        for name, optimizer in self._optimizers().items():
            optimizer.load_state_dict(snapshot["optimizers"][name])
        self._load_extra_state(snapshot["extra"])

    def _stop_diverged(self, skip: SkippedUpdate) -> None:
        self._consecutive_skips = 0  # a run resumed from the final checkpoint starts counting afresh
        directory = self._checkpoint_dir or (os.path.join(self._run_dir, "checkpoints") if self._run_dir else None)
        saved = self._write_checkpoint(directory) if directory else None
        self.logger.record("train/skipped_updates", self.skipped_updates)
        self.logger.dump(self.num_timesteps)
        where = (f"final checkpoint: {saved}" if saved else
                 "no checkpoint written (pass checkpoint_dir= to learn() or tensorboard_log= to the agent)")
        raise TrainingDivergedError(
            f"training stopped at step {self.num_timesteps}: {self.max_consecutive_skips} consecutive updates were "
            f"skipped because of non-finite {', '.join(skip.names)}; the parameters are those of the last good "
            f"update ({where}). Try a smaller learning rate or step size (max_kl, kl_clip), observation/reward "
            "normalisation, or check the environment's observations and rewards"
        )

    # ----------------------------------------------------------------- checkpoints
    def _check_checkpoint_args(self, every, directory, keep) -> None:
        validation.positive_int("checkpoint_every", every, allow_none=True,
                                meaning="a positive number of environment steps")
        validation.positive_int("keep_checkpoints", keep)
        if every is not None and directory is None and not self.tensorboard_log and not self._checkpoint_dir:
            raise ValueError(
                "checkpoint_every needs a place to write: pass checkpoint_dir=... to learn(), or tensorboard_log=... "
                "to the agent (checkpoints then go to <run dir>/checkpoints)"
            )

    def _setup_checkpoints(self, every, directory, keep, new_run: bool) -> None:
        self._checkpoint_every, self._keep_checkpoints = (int(every) if every is not None else None), int(keep)
        if new_run:
            self._checkpoint_dir = None
        if directory is not None:
            self._checkpoint_dir = os.fspath(directory)
        elif every is not None and self._checkpoint_dir is None:
            self._checkpoint_dir = os.path.join(self._run_dir, "checkpoints")

    def _write_checkpoint(self, directory: str | None = None) -> str:
        directory = directory or self._checkpoint_dir
        self._last_checkpoint_step = self.num_timesteps
        path = self.save_checkpoint(ckpt.checkpoint_path(directory, self.num_timesteps))
        ckpt.prune_checkpoints(directory, self._keep_checkpoints)
        return path

    def save_checkpoint(self, path) -> str:
        """Everything needed to continue this run as if uninterrupted: weights, optimiser states,
        extra agent state, normalisation statistics, counters, RNG states (global torch/CUDA, numpy,
        random and the agent's generator), the env state where the env offers `state_dict()`, and the
        TensorBoard run. Written atomically; loadable with `Agent.load` like any saved model."""
        tensors, description = self._model_state()
        env_state = None
        if hasattr(self.env, "state_dict") and self._last_obs is not None:
            env_state = {"env": self.env.state_dict(), "last_obs": self._last_obs,
                         "episode_starts": self._last_episode_starts}
        training = {
            "optimizers": {name: o.state_dict() for name, o in self._optimizers().items()},
            "rng": ckpt.rng_state(), "generator": self.generator.get_state(), "env": env_state,
        }
        more, skeleton = ckpt.pack_state("training", training)
        tensors.update(more)
        description["checkpoint"] = {
            "state": skeleton, "target_timesteps": int(self._target_timesteps),
            "skipped_updates": self.skipped_updates, "consecutive_skips": self._consecutive_skips,
            "last_checkpoint_step": self._last_checkpoint_step, "run_dir": self._run_dir,
            "tensorboard_log": self.tensorboard_log, "checkpoint_dir": self._checkpoint_dir,
            "checkpoint_every": self._checkpoint_every, "keep_checkpoints": self._keep_checkpoints,
            "ep_info_buffer": [{"r": float(e["r"]), "l": int(e["l"])} for e in self.ep_info_buffer],
        }
        return write_model(path, tensors, description)

    def _restore_checkpoint(self, path, tensors: dict, record: dict) -> dict:
        """Take back what save_checkpoint() wrote; returns the RNG states (restored last, by load)."""
        state = ckpt.unpack_state(record["state"], tensors, str(path))
        for name, optimizer in self._optimizers().items():
            saved = state["optimizers"].get(name)
            if saved is None:
                raise ModelFileError(f"{path}: the checkpoint has no state for the optimiser {name!r}")
            try:
                optimizer.load_state_dict(saved)
            except (ValueError, KeyError, TypeError, RuntimeError) as err:
                raise ModelFileError(f"{path}: the state of optimiser {name!r} does not fit this agent: {err}") from None
        try:
            self.generator.set_state(state["generator"].to(torch.uint8))
        except (RuntimeError, TypeError) as err:
            raise ModelFileError(f"{path}: the agent's generator state is unusable: {err}") from None
        self._pending_env_state = state.get("env")
        self._target_timesteps = int(record.get("target_timesteps") or 0)
        self.skipped_updates = int(record.get("skipped_updates", 0))
        self._consecutive_skips = int(record.get("consecutive_skips", 0))
        self._last_checkpoint_step = record.get("last_checkpoint_step")
        self._run_dir, self.tensorboard_log = record.get("run_dir"), record.get("tensorboard_log")
        self._checkpoint_dir = record.get("checkpoint_dir")
        self._checkpoint_every = record.get("checkpoint_every")
        self._keep_checkpoints = int(record.get("keep_checkpoints") or 3)
        self.ep_info_buffer.extend(record.get("ep_info_buffer", []))
        return state["rng"]

    # ----------------------------------------------------------------- persistence
    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The agent's optimisers by attribute name: saved in checkpoints, rolled back on a skipped update."""
        return {k: v for k, v in sorted(vars(self).items()) if isinstance(v, torch.optim.Optimizer)}

    def _extra_state(self) -> dict:
        """State beyond the policy's weights and the optimisers, as a nested dict of tensors and JSON
        values (agents extend it: `{**super()._extra_state(), "kfac": self.kfac.state_dict()}`)."""
        state: dict = {}
        if self.reward_scaler is not None:
            state["reward_scaler"] = dict(self.reward_scaler.state_dict())
            if self.reward_scaler._discounted is not None:
                state["reward_scaler_running_return"] = self.reward_scaler._discounted
        return state

    def _load_extra_state(self, state: dict) -> None:
        """Take back what `_extra_state()` returned (agents: call super() for the base's keys)."""
        if self.reward_scaler is not None and "reward_scaler" in state:
            self.reward_scaler.load_state_dict(state["reward_scaler"])
            running = state.get("reward_scaler_running_return")
            self.reward_scaler._discounted = running.to(self.device).clone() if running is not None else None

    def _model_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        aliases = _state_aliases(self.policy)  # a shared features extractor is stored once
        tensors = {f"policy.{k}": v for k, v in self.policy.state_dict().items() if k not in aliases}
        extra, extra_skeleton = ckpt.pack_state("extra", self._extra_state())
        tensors.update(extra)
        description = {
            "algo": self.algo, "rlgeom": __version__, "policy": self.policy_name,
            "policy_kwargs": policy_kwargs_to_json(self.policy_kwargs), "hyperparameters": self.config.to_dict(),
            "observation_space": space_to_json(self.observation_space),
            "action_space": space_to_json(self.action_space),
            "num_timesteps": self.num_timesteps, "n_updates": self.n_updates,
            "env_id": self.env_id, "n_envs": self.n_envs, "seed": self.seed,
            "extra_state": extra_skeleton,
            **{k: getattr(self, k) for k in AGENT_OPTIONS},
        }
        return tensors, description

    def save(self, path) -> str:
        """Write safetensors weights + JSON description; returns the path written.
        (`save_checkpoint` adds what is needed to continue training exactly.)"""
        return write_model(path, *self._model_state())

    @classmethod
    def load(cls, path, env=None, device="auto", custom_objects: dict | None = None, **overrides):
        """Rebuild a saved agent (no unpickling); `env` must match the saved spaces. A checkpoint also
        restores optimisers, counters, RNG states and the TensorBoard run: continue it with
        `learn(remaining, reset_num_timesteps=False)`. A class the file names that is not rlgeom's,
        SB3's or torch's (a features extractor) is never imported: pass it in `custom_objects`
        (`{"features_extractor_class": MyExtractor}`, or SB3's `{"policy_kwargs": {...}}`)."""
        tensors, d = read_model(path)
        if d.get("algo") != cls.algo:
            raise ModelFileError(
                f"{path}: holds a {str(d.get('algo')).upper()} model, not {cls.algo.upper()}; "
                f"load it with {str(d.get('algo')).upper()}.load"
            )
        options = {k: overrides.pop(k) if k in overrides else d[k] for k in AGENT_OPTIONS if k in overrides or k in d}
        device = resolve_device(device)  # an unavailable device is the caller's problem, not the file's
        try:
            obs_space = space_from_json(d["observation_space"])
            act_space = space_from_json(d["action_space"])
            hyperparameters = {**d["hyperparameters"], **overrides}
            policy_kwargs = policy_kwargs_from_json(d.get("policy_kwargs") or {}, custom_objects, str(path))
            agent = cls(
                d["policy"], None, policy_kwargs=policy_kwargs, n_envs=d.get("n_envs", 1),
                seed=d.get("seed"), device=device, _spaces=(obs_space, act_space), **options, **hyperparameters,
            )
        except ModelFileError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ModelFileError(f"{path}: the model description is incomplete or inconsistent: {err}") from None
        agent._load_tensors(path, tensors)
        if "extra_state" in d:
            extra = ckpt.unpack_state(d["extra_state"], tensors, str(path))
        else:  # files written before extra state was nested
            extra = {"reward_scaler": {k[len("reward_scaler."):]: v for k, v in tensors.items()
                                       if k.startswith("reward_scaler.")}}
        try:
            agent._load_extra_state(extra)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise ModelFileError(f"{path}: the saved agent state does not fit {cls.__name__}: {err}") from None
        try:
            agent.num_timesteps, agent.n_updates = int(d.get("num_timesteps", 0)), int(d.get("n_updates", 0))
        except (TypeError, ValueError) as err:
            raise ModelFileError(f"{path}: bad step counters in the description: {err}") from None
        agent.env_id = d.get("env_id")
        rng = agent._restore_checkpoint(path, tensors, d["checkpoint"]) if isinstance(d.get("checkpoint"), dict) else None
        if env is not None:
            try:
                agent.set_env(env, n_envs=d.get("n_envs", 1) if isinstance(env, str) else 1)
            except ValueError as err:
                if "differs from the model" in str(err):
                    raise ModelFileError(f"{path}: does not fit this env: {err}") from None
                raise
        if rng is not None:
            ckpt.set_rng_state(rng, str(path))
        return agent

    def _load_tensors(self, path, tensors: dict[str, torch.Tensor]) -> None:
        policy_state = {k[len("policy."):]: v for k, v in tensors.items() if k.startswith("policy.")}
        for alias, original in _state_aliases(self.policy).items():  # stored once, under its first name
            if alias not in policy_state and original in policy_state:
                policy_state[alias] = policy_state[original]
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

    def get_parameters(self) -> dict:
        return {"policy": self.policy.state_dict()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.policy_name}, env={self.env_id}, device={self.device})"


def _state_aliases(module: torch.nn.Module) -> dict[str, str]:
    """{key: first key} for state-dict entries that are the same tensor as an earlier entry (a features
    extractor shared by actor and critic appears under both names; safetensors stores a tensor once)."""
    first: dict[int, str] = {}
    aliases = {}
    for key, tensor in module.state_dict(keep_vars=True).items():
        if id(tensor) in first:
            aliases[key] = first[id(tensor)]
        else:
            first[id(tensor)] = key
    return aliases


def _clone_tree(x):
    """Nested dicts/lists/tuples with every tensor cloned (other leaves shared): a cheap deepcopy."""
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, dict):
        return type(x)((k, _clone_tree(v)) for k, v in x.items())
    if isinstance(x, (list, tuple)):
        return type(x)(_clone_tree(v) for v in x)
    return copy.copy(x)


class StepInfos(Sequence):
    """SB3's per-env `infos` for callbacks, built only if a callback reads them (one host transfer):
    `{"episode": {"r": return, "l": length}}` for envs whose episode ended, plus
    `"TimeLimit.truncated"` and `"terminal_observation"` as SB3's VecEnvs report them."""

    def __init__(self, step):
        self._step, self._infos = step, None

    def _build(self) -> list[dict]:
        if self._infos is None:
            s = self._step
            done, truncated = s.done.cpu().numpy(), s.truncated.cpu().numpy()
            returns, lengths = s.episode_return.cpu().numpy(), s.episode_length.cpu().numpy()
            final_obs = s.final_obs.cpu().numpy()
            self._infos = [
                {"episode": {"r": float(returns[i]), "l": int(lengths[i])}, "TimeLimit.truncated": bool(truncated[i]),
                 "terminal_observation": final_obs[i]} if done[i] else {}
                for i in range(len(done))
            ]
        return self._infos

    def __getitem__(self, index):
        return self._build()[index]

    def __len__(self) -> int:
        return self._step.reward.shape[0]


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


__all__ = ["OnPolicyAgent", "resolve_device", "set_global_seeds", "SkippedUpdate", "TrainingDivergedError", "guard_finite"]
