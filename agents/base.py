"""The one base level every agent shares: Stable-Baselines3's surface over rlgeom's core.

learn / predict / save / load / get_env / set_env / num_timesteps / logger, SB3 callbacks, and
the rollout loop. A concrete agent adds only its `Config` and its `update(buffer, progress)`.

This file holds construction, learn() with the rollout, logging and predict. The rest of the base
is split by concern, one mixin each, all on this one class level: agents/persistence.py (save,
load, the agent's state), agents/checkpoints.py (checkpoints and resume), agents/guard.py (the
rollback guard around update()) and agents/sb3_compat.py (get_env, callbacks and their infos).

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
import functools
import time
from collections import deque

import numpy as np
import torch

from rlgeom import envs
from rlgeom import __version__, validation
from rlgeom.persistence import checkpoint as ckpt
from rlgeom.data.buffer import RolloutBuffer
from rlgeom.training import distributed
from rlgeom.training.guards import NonFinitePolicyError, SkippedUpdate, TrainingDivergedError, guard_finite
from rlgeom.training.compiled import Compiler, compile_options, draw_function
from rlgeom.training.threads import learning_threads
from rlgeom.persistence.logger import RunLogger, latest_run_directory, run_directory, sb3_run_directory
from rlgeom.data.normalization import RewardScaler
from rlgeom.models.policies import ActorCriticPolicy
from rlgeom.models.sb3_policy import is_sb3_policy_class
from rlgeom.persistence.serialization import policy_kwargs_to_json, spaces_equal
from rlgeom.agents.checkpoints import Checkpoints
from rlgeom.agents.config import HyperparameterError, OnPolicyConfig
from rlgeom.agents import devices
from rlgeom.agents.devices import resolve_device, set_global_seeds
from rlgeom.agents.guard import RollbackGuard
from rlgeom.agents.persistence import Persistence
from rlgeom.agents.sb3_compat import SB3Compat, make_progress_bar, policy_std, step_locals, warn_rounded_budget, wrap_callback
from rlgeom.envs.boundary import NonFiniteCounter, nonfinite_policy


def _in_learning_threads(learn):
    """Run `learn` with the CPU thread count of rlgeom.training.threads (the agent's `threads`, the user's
    torch.set_num_threads, else measured for the policy), restoring the previous count afterwards."""
    @functools.wraps(learn)
    def wrapped(self, *args, **kwargs):
        batch = getattr(self.config, "batch_size", None) or self.config.n_steps * self.n_envs
        say = print if self.verbose >= 1 else (lambda message: None)
        with learning_threads(self.policy, self.n_envs, self.config.n_steps, batch, self.threads, say) as chosen:
            self.threads_used = chosen
            return learn(self, *args, **kwargs)
    return wrapped


class OnPolicyAgent(RollbackGuard, Checkpoints, Persistence, SB3Compat, abc.ABC):
    """SB3-style on-policy agent: `Agent(policy, env, **hyperparameters).learn(n)`."""

    Config: type[OnPolicyConfig] = OnPolicyConfig
    algo: str = "base"
    #: agents with separate actor and critic steps cannot train a shared feature extractor
    needs_separate_networks: bool = False
    #: whether the agent takes gSDE (use_sde=True)
    supports_sde: bool = True
    #: whether update() takes log π, V and entropy from `policy.loss_terms` alone, so that an SB3 policy class's
    #: evaluate_actions (and what it calls) is honoured; the others' updates differentiate the policy's modules
    update_calls_evaluate_actions: bool = False

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
        stats_window_size: int = 100,
        threads: int | None = None,
        compile=None,
        _spaces=None,
        **hyperparameters,
    ):
        self.config = self.Config.build(hyperparameters)
        self._nonfinite = NonFiniteCounter(nonfinite)  # validates the mode
        self.max_consecutive_skips = validation.positive_int("max_consecutive_skips", max_consecutive_skips)
        # log rlgeom.geometry.spectrum.training_geometry every k updates (None: off)
        self.geometry_every = validation.positive_int("geometry_every", geometry_every, allow_none=True)
        # intra-op CPU threads while learning (None: the user's torch.set_num_threads, else measured; see
        # rlgeom.training.threads); `threads_used` is what the last learn() ran with
        self.threads = validation.positive_int("threads", threads, allow_none=True)
        self.threads_used: int | None = None
        # auto: the device estimated faster for this policy and env (agents.devices.choose_device)
        self.device = resolve_device(device, lambda: devices.auto_device(env, n_envs, policy, policy_kwargs))
        # under torchrun: join the ranks (every rank steps its own envs; updates combine all ranks' batches)
        if distributed.init_from_environment(self.device) and self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU (LOCAL_RANK)
        seed = validation.non_negative_int("seed", seed, allow_none=True)
        if seed is not None and seed >= 2**63:
            raise ValueError(f"seed must be below 2**63 (torch's generators take 64-bit seeds), got {seed}")
        self.seed, self.verbose, self.tensorboard_log = seed, verbose, tensorboard_log
        self.policy_name, self.policy_kwargs = policy, dict(policy_kwargs or {})
        if seed is not None:
            set_global_seeds(seed)
        self.generator = torch.Generator().manual_seed(seed if seed is not None else int(torch.seed() % 2**63))
        if env is None and _spaces is None:
            raise ValueError(f"{type(self).__name__} needs an env (an env id, gymnasium env or VecEnv)")
        self.env = None
        if env is not None:
            self.env = envs.make_vec_env(env, n_envs, _rank_seed(seed, n_envs), self.device, vectorization, env_kwargs)
            obs_space, act_space = self.env.single_observation_space, self.env.single_action_space
        else:
            obs_space, act_space = _spaces
        self.observation_space, self.action_space = obs_space, act_space
        self.n_envs = self.env.num_envs if self.env is not None else n_envs
        self.env_id = getattr(self.env, "env_id", None)
        try:
            self.config.validate(self.n_envs)
        except ValueError as err:  # the same message, as the HyperparameterError that is also SB3's AssertionError
            raise HyperparameterError(str(err)) from None
        self.policy = self._make_policy().to(self.device)
        self.policy.written_out_derivatives = self.config.written_out_derivatives
        # torch.compile around the rollout's step and the update's losses (rlgeom.training.compiled; None: off)
        self.compile = compile
        self.compiler = Compiler(compile_options(compile, self.device), self.device)
        self._check_rollout_memory()
        if distributed.active():  # one start on every rank; then each rank samples its own actions
            distributed.broadcast_module(self.policy)
            if seed is not None:
                set_global_seeds(_rank_seed(seed, 1_000_003))
                self.generator.manual_seed(_rank_seed(seed, 1_000_003))
        self.reward_scaler = RewardScaler(self.config.gamma) if self.config.normalize_reward else None
        self.num_timesteps = 0
        self.n_updates = 0
        self.sb3_n_updates = 0  # train/n_updates as SB3 counts it (PPO: epochs; see _sb3_updates_counted)
        self.skipped_updates, self._consecutive_skips = 0, 0
        self.untrained_reason: str | None = None  # set by learn() when every one of its updates was skipped
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
        # SB3's stats_window_size: episodes averaged in rollout/ep_rew_mean and ep_len_mean
        self.stats_window_size = validation.positive_int("stats_window_size", stats_window_size)
        self.ep_info_buffer: deque = deque(maxlen=self.stats_window_size)
        self._setup()

    @property
    def nonfinite(self) -> str:
        """What happens to NaN/inf from the env: "raise" or "sanitize" (saved with the model)."""
        return self._nonfinite.mode

    def nonfinite_scope(self):
        """A context in which the env backends apply this agent's `nonfinite` option (learn() steps its envs
        in one; rlgeom.training.evaluation.evaluate enters it for an evaluation env)."""
        return nonfinite_policy(self._nonfinite)

    # ----------------------------------------------------------------- construction
    def _make_policy(self) -> ActorCriticPolicy:
        kwargs = dict(self.policy_kwargs)
        if "use_sde" in kwargs:
            raise ValueError("use_sde is an argument of the agent, as in SB3: PPO(..., use_sde=True), not a policy_kwargs entry")
        if self.config.use_sde and not self.supports_sde:
            raise ValueError(f"{type(self).__name__} does not take gSDE (use_sde=True); PPO, VPG, NPG and TRPO do")
        if self.needs_separate_networks:
            if kwargs.get("share_features_extractor"):
                raise ValueError(
                    f"{type(self).__name__} steps the actor and the critic separately and cannot share a feature "
                    "extractor; use policy_kwargs=dict(share_features_extractor=False)"
                )
            kwargs["share_features_extractor"] = False
        if is_sb3_policy_class(self.policy_name):  # SB3's custom-policy pattern (rlgeom/models/sb3_policy.py)
            from rlgeom.agents.sb3_compat import as_float_schedule
            from rlgeom.models.sb3_policy import policy_from_sb3_class

            try:
                return policy_from_sb3_class(
                    self.policy_name, self.observation_space, self.action_space,
                    as_float_schedule(getattr(self.config, "learning_rate", 3e-4)),
                    normalize_observations=self.config.normalize_observations, use_sde=self.config.use_sde,
                    needs_separate_networks=self.needs_separate_networks, agent=type(self).__name__,
                    update_calls_evaluate_actions=self.update_calls_evaluate_actions, **kwargs)
            except TypeError as err:
                raise ValueError(f"invalid policy_kwargs {self.policy_kwargs!r} for {self.policy_name.__name__}: "
                                 f"{err}") from None
        try:
            return ActorCriticPolicy(
                self.observation_space, self.action_space, self.policy_name,
                normalize_observations=self.config.normalize_observations, use_sde=self.config.use_sde, **kwargs,
            )
        except TypeError as err:
            raise ValueError(f"invalid policy_kwargs {self.policy_kwargs!r}: {err}") from None

    def _setup(self) -> None:
        """Create the agent's optimisers and helpers (after the policy exists)."""

    @abc.abstractmethod
    def update(self, buffer: RolloutBuffer, progress_remaining: float) -> dict:
        """One policy/value update from a full rollout; returns {tag: value} for the logger."""

    def set_env(self, env, n_envs: int = 1, vectorization: str = "sync", force_reset: bool = True) -> None:
        """SB3's set_env: the new env must have the model's spaces. force_reset=False keeps the current
        observation, so learn(reset_num_timesteps=False) goes on without a reset (SB3 issue #1380 explains
        why resetting is the default); with another number of envs it resets anyway."""
        new = envs.make_vec_env(env, n_envs, self.seed, self.device, vectorization)
        for what, have, got in (
            ("observation", self.observation_space, new.single_observation_space),
            ("action", self.action_space, new.single_action_space),
        ):
            if not spaces_equal(have, got):
                raise ValueError(f"the new env's {what} space {got} differs from the model's {have}")
        if force_reset or new.num_envs != self.n_envs:
            self._last_obs = None
        if new.num_envs != self.n_envs:  # a checkpoint's env state is that of its own number of envs
            self._pending_env_state = None
        self.env, self.n_envs = new, new.num_envs
        self.env_id = new.env_id or self.env_id
        self.config.validate(self.n_envs)
        self._check_rollout_memory()

    def _check_rollout_memory(self) -> None:
        """Refuse, before anything is allocated, a rollout buffer larger than the memory available (its
        observations as the env boundary stores them: uint8 images, Dicts packed into rows, else float32)."""
        layout, space = self.policy.dict_layout, self.observation_space
        if layout is not None:
            shape, dtype = (layout.width,), layout.dtype
        else:
            shape, dtype = tuple(space.shape or ()), space.dtype
        obs_dtype = torch.uint8 if dtype == np.uint8 else torch.float32
        RolloutBuffer.check_fits(self.config.n_steps, self.n_envs, shape, obs_dtype, self.policy.family.action_shape,
                                 self.policy.family.action_dtype, self.device)

    # ----------------------------------------------------------------- training
    @_in_learning_threads
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
            self.n_updates = self.sb3_n_updates = 0
            self._last_checkpoint_step = None
        if distributed.is_main():  # a folder of another run's checkpoints is refused before this run makes any
            self._check_checkpoint_owner(checkpoint_dir, new_run=reset_num_timesteps)
        self._open_run(tb_log_name or self.algo, new_run=reset_num_timesteps, sb3_layout=tb_log_name is not None)
        self._target_timesteps = self.num_timesteps + int(total_timesteps)
        if distributed.is_main():
            self._setup_checkpoints(checkpoint_every, checkpoint_dir, keep_checkpoints, new_run=reset_num_timesteps)
        else:  # rank 0 writes every checkpoint; the others keep its cadence (the same num_timesteps) and write nothing
            self._checkpoint_every = int(checkpoint_every) if checkpoint_every is not None else None
        callback = wrap_callback(callback)
        if callback is not None:
            callback.init_callback(self)
            callback.on_training_start(locals(), globals())
        steps_per_rollout = self.n_envs * self.config.n_steps * distributed.world_size()
        warn_rounded_budget(total_timesteps, steps_per_rollout, self.n_envs, self.config.n_steps)
        bar = make_progress_bar(total_timesteps, steps_per_rollout) if progress_bar and distributed.is_main() else None
        start_time, start_steps = time.perf_counter(), self.num_timesteps
        iteration, updates_before, skips_before = 0, self.n_updates, self.skipped_updates
        while self.num_timesteps < self._target_timesteps:
            self._check_policy_finite()
            with nonfinite_policy(self._nonfinite):
                if not self.collect_rollout(callback):
                    break
            # at most 0: the last rollout may pass the target, and a linear schedule must not go below its end
            # (a negative learning rate would ascend the loss)
            progress_remaining = max(0.0, 1.0 - self.num_timesteps / self._target_timesteps)
            self.policy.set_training_mode(True)  # as SB3's train(): dropout on, batch norm's statistics updated
            stats = self._guarded_update(progress_remaining)
            self._rollout_trained = True
            if self.geometry_every and self.n_updates % self.geometry_every == 0:
                from rlgeom.geometry.spectrum import training_geometry  # scipy is imported only when asked for

                stats.update(training_geometry(self.policy, self.buffer, self.config.normalize_advantage))
            self.policy.obs_normalizer.update(self.buffer.obs)
            if bar is not None:
                bar.update(steps_per_rollout)
            iteration += 1
            if log_interval and iteration % log_interval == 0:
                self._log(stats, start_time, start_steps, iteration)
            if self._checkpoint_every and self.num_timesteps - (self._last_checkpoint_step or 0) >= self._checkpoint_every:
                self._checkpoint()
        self._check_some_update_applied(updates_before, skips_before)
        if self._checkpoint_every and self._last_checkpoint_step != self.num_timesteps:
            self._checkpoint()
        if bar is not None:
            bar.close()
        if callback is not None:
            callback.on_training_end()
        return self

    def _sb3_updates_counted(self, stats: dict) -> int:
        """How many of SB3's `_n_updates` one update counts: one per update (A2C, TRPO); PPO counts epochs."""
        return 1

    def _checkpoint(self) -> None:
        if distributed.is_main():
            self._write_checkpoint()
        else:
            self._last_checkpoint_step = self.num_timesteps

    def _check_policy_finite(self) -> None:
        """Before each rollout (one host read): a NaN/inf weight would send NaN actions to the env, which
        would then be blamed. Updates never leave one (they are rolled back), so it was set from outside."""
        named = list(self.policy.named_parameters())
        finite = torch.stack([torch.isfinite(p).all() for _, p in named]).tolist()
        bad = [name for (name, _), ok in zip(named, finite) if not ok]
        if bad:
            raise NonFinitePolicyError(
                f"the policy's parameters {', '.join(bad[:4])} hold NaN or inf, so its actions would too; they "
                "were set outside training (updates are rolled back before that happens): reload a checkpoint")

    def _reset_env(self, resume: bool = False) -> None:
        """Reset the env and (re)build the buffer. Resuming a checkpoint, an env that offers
        `state_dict()` / `load_state_dict()` gets its saved state back and the run continues exactly;
        any other env (gymnasium, SB3) is reset with a seed derived from (seed, num_timesteps), so it
        does not replay the first episodes, and the reward scaler's running return restarts with it."""
        seed = self.seed
        if resume and seed is not None:
            seed = (int(seed) * 1_000_003 + int(self.num_timesteps)) % 2**31
        self._last_obs = self.env.reset(seed=_rank_seed(seed, self.n_envs))
        self._last_episode_starts = torch.ones(self.n_envs, dtype=torch.bool, device=self.device)
        saved, self._pending_env_state = self._pending_env_state, None
        # a checkpoint holds rank 0's env state: the other ranks start from their own reset
        if resume and saved is not None and hasattr(self.env, "load_state_dict") and distributed.is_main():
            self.env.load_state_dict(saved["env"])
            self._last_obs = saved["last_obs"].to(self.device)
            self._last_episode_starts = saved["episode_starts"].to(self.device, torch.bool)
        elif resume and self.reward_scaler is not None:
            self.reward_scaler._discounted = None
        cfg = self.config
        self.buffer = RolloutBuffer(  # observations as the env boundary gives them (a Dict's packed into rows)
            cfg.n_steps, self.n_envs, tuple(self._last_obs.shape[1:]), self._last_obs.dtype,
            self.policy.family.action_shape, self.policy.family.action_dtype, self.device,
        )

    def env_on_device(self, env, n_envs: int = 1):
        """`env` (an env id, gymnasium env, SB3 VecEnv or rlgeom VecEnv on any device) as rlgeom's VecEnv
        whose tensors are on this agent's device: observations cross to it once per step, at the env
        boundary, and actions cross back (envs.device); never a tensor on another device in the policy."""
        return envs.make_vec_env(env, n_envs, device=self.device)

    def _env_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """The policy's actions as the env takes them (ActorCriticPolicy.env_actions)."""
        return self.policy.env_actions(actions)

    def _rollout_draw(self):
        """The rollout's step, obs ↦ actions: `policy.draw`, or its compiled form where the compiler compiles the
        rollout (rlgeom.training.compiled; gSDE's draw, whose exploration matrices are redrawn within a rollout,
        stays eager)."""
        compiler, policy = self.compiler, self.policy
        if not compiler.rollout or policy.use_sde:
            return policy.draw

        def draw(obs: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():  # not inference_mode: a CUDA graph's output must stay a normal tensor
                return compiler.call(f"draw{id(policy)}", lambda: draw_function(policy), obs)
        return draw

    def collect_rollout(self, callback=None) -> bool:
        """Fill the buffer with n_steps vector steps; False if a callback asked to stop."""
        buffer = self.buffer
        buffer.reset()
        self.policy.set_training_mode(False)  # as SB3's collect_rollouts: no dropout, batch norm's statistics fixed
        self._rollout_trained = False  # model.rollout_buffer's layout (agents/sb3_buffer.py), as SB3's get() sets it
        if callback is not None:
            callback.on_rollout_start()
        self.policy.start_rollout()  # parameters are fixed until the update: inference functions built once
        use_sde, sample_freq, stopped = self.config.use_sde, self.config.sde_sample_freq, False
        draw = self._rollout_draw()
        # an SB3 policy class whose methods rlgeom calls: its forward gives (a, V, log π) at each step, as in SB3
        each_step = self.policy.terms_at_each_step
        steps_per_step = self.n_envs * distributed.world_size()  # every rank's envs count in num_timesteps
        try:
            for step_index in range(self.config.n_steps):
                if use_sde and (step_index == 0 or sample_freq > 0 and step_index % sample_freq == 0):
                    self.policy.reset_noise(self.n_envs)  # gSDE: new exploration matrices, one per env
                if each_step:
                    actions, values, log_probs = self.policy.act(self._last_obs)
                else:
                    actions = draw(self._last_obs)  # inference mode, the actor alone
                step = self.env.step(self._env_actions(actions))
                buffer.add(self._last_obs, actions, self._last_episode_starts, step)
                if each_step:
                    buffer.add_terms(log_probs, values)
                self._last_obs, self._last_episode_starts = step.obs, step.done
                self.num_timesteps += steps_per_step
                if callback is not None:
                    callback.update_locals(step_locals(actions, step, self.policy.dict_layout))  # numpy, as SB3 passes them
                    if not callback.on_step():
                        stopped = True
                        break
            if not stopped and not each_step:  # log π_old and V_old of the whole rollout, in one batch with the same parameters
                buffer.evaluate_policy_terms(self.policy.rollout_terms)
        finally:
            self.policy.end_rollout()
        if distributed.agree(stopped):  # under torchrun a callback stopping one rank stops every rank here
            return False
        returns, lengths = buffer.finished_episodes()
        if distributed.active():  # every rank's episodes, on every rank (rank 0 logs them)
            gathered = distributed.gather((returns, lengths))
            returns, lengths = [r for g in gathered for r in g[0]], [n for g in gathered for n in g[1]]
        self.ep_info_buffer.extend({"r": r, "l": l} for r, l in zip(returns, lengths))
        if self.reward_scaler is not None:
            buffer.rewards.copy_(self.reward_scaler.scale_rollout(buffer.rewards, buffer.dones))  # in place: add() keeps views
        buffer.compute_advantages(self.policy.value, self.config.gamma, self.config.gae_lambda, logged_successors=each_step)
        if callback is not None:
            callback.on_rollout_end()
        return True

    # ----------------------------------------------------------------- logging
    def _open_run(self, name: str, new_run: bool, sb3_layout: bool = False) -> None:
        """Open the TensorBoard run learn() writes to. rlgeom's layout `<tensorboard_log>/<task>/<algo>/seed<k>`
        by default; SB3's `<tensorboard_log>/<tb_log_name>_<N>` when learn() is given a tb_log_name
        (rlgeom.persistence.logger.sb3_run_directory). A logger from set_logger() is kept as it is."""
        if self.__dict__.get("_custom_logger"):
            return
        if not distributed.is_main():  # rank 0 logs (the episodes of every rank)
            self.logger = RunLogger(None, 0)
            return
        if not new_run and self.logger.writer is None and self._run_dir is not None and self.tensorboard_log:
            # continuing (a loaded checkpoint): same run directory, nothing logged after this step is kept
            self.logger = ckpt.open_resumed_logger(self._run_dir, self.num_timesteps, self.verbose)
            return
        continuing = not new_run and self.logger.writer is not None
        if continuing or self.tensorboard_log is None:
            if self.logger.writer is None and self.tensorboard_log is None:
                self.logger = RunLogger(None, self.verbose)
            return
        self.logger.close()
        if sb3_layout:  # SB3 continues its latest <name>_<N> when not resetting the step count (a loaded model)
            self._run_dir = sb3_run_directory(self.tensorboard_log, name, new_run=new_run)
        else:  # continuing (reset_num_timesteps=False after load): the latest run of this task, agent and seed
            latest = None if new_run else latest_run_directory(self.tensorboard_log, self.env_id, name, self.seed)
            self._run_dir = latest or run_directory(self.tensorboard_log, self.env_id, name, self.seed)
        self.logger = RunLogger(self._run_dir, self.verbose)
        self.logger.write_run_info(
            {
                "env_id": self.env_id, "algo": self.algo, "seed": self.seed, "rlgeom": __version__,
                "n_envs": self.n_envs, "policy": self.policy_name,
                "policy_kwargs": policy_kwargs_to_json(self.policy_kwargs),
                "hyperparameters": self.config.to_dict(), "device": str(self.device),
            }
        )

    def _log(self, stats: dict, start_time: float, start_steps: int, iteration: int = 0) -> None:
        """SB3's tags for SB3's quantities (time/iterations, time/time_elapsed and time/total_timesteps go to
        the console only, as in SB3), then the agent's update statistics."""
        log = self.logger
        if self.ep_info_buffer:
            log.record("rollout/ep_rew_mean", float(np.mean([e["r"] for e in self.ep_info_buffer])))
            log.record("rollout/ep_len_mean", float(np.mean([e["l"] for e in self.ep_info_buffer])))
        elapsed = max(time.perf_counter() - start_time, 1e-9)
        log.record("time/fps", int((self.num_timesteps - start_steps) / elapsed))
        log.record("time/iterations", iteration, exclude="tensorboard")
        log.record("time/time_elapsed", int(elapsed), exclude="tensorboard")
        log.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        std = policy_std(self.policy)
        if std is not None:
            log.record("train/std", std)
        log.record("train/n_updates", self.sb3_n_updates)
        if self._nonfinite.mode == "sanitize":
            log.record("rollout/nonfinite_sanitized", self._nonfinite.total)
        for key, value in stats.items():
            log.record(key, float(value))
        log.dump(self.num_timesteps)

    def dump_logs(self) -> None:
        self.logger.dump(self.num_timesteps)

    # ----------------------------------------------------------------- inference
    def predict(self, observation, state=None, episode_start=None, deterministic: bool = False):
        """SB3's predict: (actions, None); batched observations give batched actions (a Dict observation
        is a dict of arrays, batched along their first dimension). The policy's predict does it."""
        return self.policy.predict(observation, state, episode_start, deterministic)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.policy_name}, env={self.env_id}, device={self.device})"


def _rank_seed(seed: int | None, stride: int) -> int | None:
    """This rank's seed under torchrun: seed + rank·stride (rank 0, and a plain run, keep `seed`). With
    stride n_envs, env seeds over the ranks are those of one process with every rank's envs."""
    if seed is None:
        return None
    return (seed + distributed.rank() * stride) % 2**63


__all__ = ["OnPolicyAgent", "resolve_device", "set_global_seeds", "SkippedUpdate", "TrainingDivergedError", "guard_finite"]
