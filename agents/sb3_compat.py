"""What SB3 code expects of a model beyond learn/predict/save: its VecEnv back (`get_env`,
`get_vec_normalize_env`), callbacks (SB3's BaseCallback or a list of them) and the `infos` they read."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rlgeom import envs
from rlgeom.persistence.serialization import ModelFileError
from rlgeom.training.schedules import is_unstored, schedule_to_json

#: what SB3's save leaves out by default (never pickled by rlgeom either): accepted in `exclude` and ignored
SB3_NEVER_SAVED = frozenset({"env", "device", "replay_buffer", "rollout_buffer", "_vec_normalize_env",
                             "_episode_storage", "_logger", "_custom_logger", "ep_info_buffer", "ep_success_buffer",
                             # SB3 attributes rlgeom keeps only while running, or rebuilds from the hyperparameters
                             "policy", "policy_class", "lr_schedule", "_last_obs", "_last_episode_starts",
                             "_last_original_obs", "_episode_num", "_current_progress_remaining", "_n_updates",
                             "_total_timesteps", "_num_timesteps_at_start", "start_time", "action_noise",
                             "_stats_window_size", "use_sde_at_warmup"})
#: description entries without which load() cannot rebuild the model (weights are always saved)
NEEDED_TO_LOAD = frozenset({"algo", "rlgeom", "policy", "policy_kwargs", "observation_space", "action_space",
                            "extra_state"})


class SB3Compat:
    """Mixin of OnPolicyAgent (agents/base.py)."""

    def __getattr__(self, name: str):
        """Hyperparameters read as SB3 exposes them: `model.gamma`, `model.n_steps`, ...; schedules
        (`learning_rate`, `clip_range`) as SB3's callables of the remaining progress (1 → 0)."""
        config = self.__dict__.get("config")
        if config is None or name.startswith("_") or name not in type(config).__dataclass_fields__:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        value = getattr(config, name)
        if name in ("clip_range", "clip_range_vf") and value is not None:
            return as_float_schedule(value)  # SB3 holds both as FloatSchedule after _setup_model
        if name == "learning_rate" and value is not None and not callable(value) and not isinstance(value, (int, float)):
            return as_float_schedule(value)  # rlgeom's schedule dicts as SB3's callable; a number stays a number
        return value

    @property
    def lr_schedule(self):
        """SB3's `model.lr_schedule`: the learning rate as a FloatSchedule of the remaining progress (1 -> 0)."""
        return as_float_schedule(self.config.learning_rate)

    def set_logger(self, logger) -> None:
        """SB3's set_logger: learn() writes to this logger (an SB3 Logger from
        stable_baselines3.common.logger.configure, or rlgeom's RunLogger) instead of opening its own run."""
        for method in ("record", "dump"):
            if not callable(getattr(logger, method, None)):
                raise TypeError(f"set_logger needs a logger with record() and dump() (an SB3 Logger), got {logger!r}")
        self.logger, self._custom_logger = logger, True

    @property
    def rollout_buffer(self):
        """The last rollout as SB3's RolloutBuffer fields (agents/sb3_buffer.py); None before the first reset."""
        buffer = self.__dict__.get("buffer")
        if buffer is None:
            return None
        from rlgeom.agents.sb3_buffer import RolloutBufferView

        return RolloutBufferView(buffer, self.observation_space, self.action_space, self.policy.dict_layout,
                                 self.config.gamma, self.config.gae_lambda, self.__dict__.get("_rollout_trained", False))

    def get_parameters(self) -> dict:
        """SB3's form: {"policy": state dict, "<optimizer attribute>": its state dict, ...}."""
        return {"policy": self.policy.state_dict(),
                **{name: opt.state_dict() for name, opt in self._optimizers().items()}}

    def set_parameters(self, load_path_or_dict, exact_match: bool = True, device="auto") -> None:
        """SB3's set_parameters: a dict as get_parameters returns it, or a saved model file (its weights
        only, checked against this policy as load() checks them). exact_match=False loads what matches."""
        if isinstance(load_path_or_dict, dict):
            params = load_path_or_dict
            if "policy" not in params:
                raise ValueError(f"set_parameters needs a 'policy' entry (as get_parameters gives); got {sorted(params)}")
            known = ["policy", *self._optimizers()]
            unknown = sorted(set(params) - set(known))
            if unknown:  # as SB3: a name that is none of the model's objects is refused before anything is loaded
                raise ValueError(f"set_parameters: {unknown} are not objects of this model; accepted: {known}")
            import torch

            from rlgeom.persistence.statecheck import check_tensors

            # the statistics a state dict carries (normaliser variance, counts) checked as a file's are
            check_tensors("set_parameters", {k: v for k, v in params["policy"].items() if isinstance(v, torch.Tensor)})
            result = self.policy.load_state_dict(params["policy"], strict=exact_match)
            for name, optimizer in self._optimizers().items():
                if name in params:
                    optimizer.load_state_dict(params[name])
                elif exact_match:
                    raise ValueError(f"set_parameters: no state for the optimiser {name!r} (pass exact_match=False)")
            return result
        from rlgeom.persistence.serialization import open_model

        # the header first; the tensors only if they fit this model's size (as load() reads them)
        tensors = self._read_tensors(open_model(load_path_or_dict))
        if exact_match:
            self._load_tensors(load_path_or_dict, tensors)
        else:
            policy = {k[len("policy."):]: v for k, v in tensors.items() if k.startswith("policy.")}
            self.policy.load_state_dict(policy, strict=False)

    def get_env(self):
        """The env being trained on as an SB3 VecEnv (numpy in and out, SB3's infos): the SB3 VecEnv if one
        was given, else a DummyVecEnv view of rlgeom's env (agents/sb3_view.py), the same object each call."""
        if self.env is None:
            return None
        backend = self.env.backend
        if envs.make.is_sb3_vec_env(backend):
            return transposed_view(backend, self.observation_space)
        cached = self.__dict__.get("_sb3_view")
        if cached is None or cached.rlgeom_env is not self.env:
            from rlgeom.agents.sb3_view import RlgeomVecEnvView

            cached = self._sb3_view = RlgeomVecEnvView(self.env)
        return transposed_view(cached, self.observation_space)

    def get_vec_normalize_env(self):
        env = self.get_env()
        while env is not None and envs.make.is_sb3_vec_env(env):
            if type(env).__name__ == "VecNormalize":
                return env
            env = getattr(env, "venv", None)
        return None


def as_float_schedule(value):
    """A hyperparameter (number, rlgeom schedule dict or callable) as SB3's FloatSchedule."""
    from stable_baselines3.common.utils import ConstantSchedule, FloatSchedule

    from rlgeom.training.schedules import schedule_value

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return FloatSchedule(ConstantSchedule(float(value)))  # SB3's own form of a constant
    return FloatSchedule(value if callable(value) else lambda progress_remaining: schedule_value(value, progress_remaining))


def transposed_view(venv, observation_space):
    """SB3 wraps a channel-last image env in VecTransposeImage (its model sees channel-first images);
    rlgeom transposes inside the network, and get_env() hands the env out as SB3 would (the policy's
    predict takes both layouts). The one wrapper per env is kept on it."""
    from rlgeom.models.policies import channels_last

    if not channels_last(observation_space):
        return venv
    from stable_baselines3.common.vec_env import VecTransposeImage

    if type(venv).__name__ == "VecTransposeImage":
        return venv
    wrapper = getattr(venv, "_rlgeom_transposed", None)
    if wrapper is None:
        wrapper = VecTransposeImage(venv)
        venv._rlgeom_transposed = wrapper
    return wrapper


def hyperparameters_to_json(config) -> dict:
    """The config as a saved model stores it: a callable schedule becomes a record that it was one."""
    return {k: schedule_to_json(v) for k, v in config.to_dict().items()}


def hyperparameters_from_saved(saved: dict, custom_objects: dict | None, where: str) -> dict:
    """The saved hyperparameters with SB3's `custom_objects` in place of theirs (keys that are not
    hyperparameters, e.g. SB3's "lr_schedule", are ignored as SB3 ignores them); a callable schedule
    that was not stored must be supplied."""
    custom = {k: v for k, v in (custom_objects or {}).items() if k in saved}
    merged = {**saved, **custom}
    missing = sorted(k for k, v in merged.items() if is_unstored(v))
    if missing:
        given = ", ".join(f"{k!r}: {merged[k]['name']}" for k in missing)
        raise ModelFileError(
            f"{where}: the model was trained with callable schedule(s) for {', '.join(missing)}, which a saved "
            f"model cannot store; supply them again: load(path, custom_objects={{{given}}}) (a function of "
            "progress_remaining, 1 -> 0, a number, or a schedule dict)")
    return merged


def filter_description(description: dict, exclude=None, include=None) -> dict:
    """SB3's save(path, exclude=..., include=...) on rlgeom's description: `exclude` leaves out entries
    or hyperparameters (load() then uses the defaults, as SB3 does); the weights and what rebuilds the
    model cannot be left out. `include` takes names back from `exclude`; it cannot add what rlgeom never
    saves (the env, buffers, the logger: nothing is pickled)."""
    exclude, include = set(exclude or ()), set(include or ())
    unsaved = sorted(include & SB3_NEVER_SAVED)
    if unsaved:
        raise ValueError(f"save(include={unsaved}): rlgeom never saves these (nothing is pickled); pass the env "
                         "to load(path, env=...)")
    exclude = exclude - include - SB3_NEVER_SAVED
    needed = sorted(exclude & NEEDED_TO_LOAD)
    if needed:
        raise ValueError(f"save(exclude={needed}): load() needs these to rebuild the model")
    hyperparameters = description["hyperparameters"]
    known = (set(description) | set(hyperparameters)) - NEEDED_TO_LOAD
    unknown = sorted(exclude - known)
    if unknown:
        raise ValueError(f"save(exclude={unknown}): no such saved entries; accepted: {', '.join(sorted(known))}")
    kept = {k: v for k, v in description.items() if k not in exclude}
    kept["hyperparameters"] = {k: v for k, v in hyperparameters.items() if k not in exclude}
    return kept


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


def policy_std(policy) -> float | None:
    """SB3's train/std: the mean of exp(log σ) over a Gaussian policy's scale parameters (gSDE's included,
    as SB3 averages its log_std matrix); None for other action distributions."""
    import torch

    scale = getattr(policy.actor, "scale", None)
    if scale is None:
        return None
    log_std = scale.log_std if getattr(scale, "state_dependent", False) else scale()
    with torch.no_grad():
        return float(log_std.exp().mean())


def step_locals(actions, step, dict_layout=None) -> dict:
    """What SB3's collect_rollouts leaves in a callback's `self.locals` per step, as numpy arrays (on the
    CPU the arrays share the tensors' memory; on a GPU this is the one transfer a callback costs).
    Dict observations are handed back as SB3 does, a dict of arrays (`dict_layout` unpacks the rows)."""
    def numpy(t):
        return t.detach().cpu().numpy()

    new_obs = numpy(step.obs) if dict_layout is None else dict_layout.unpack_numpy(numpy(step.obs))
    return {"actions": numpy(actions), "rewards": numpy(step.reward), "dones": numpy(step.done),
            "new_obs": new_obs, "infos": StepInfos(step)}


def wrap_callback(callback):
    """SB3 callbacks (or a list of them, or SB3's old-style function of (locals, globals)); imports SB3 only when
    a list or a function must be wrapped."""
    if callback is None:
        return None
    if isinstance(callback, (list, tuple)):
        from stable_baselines3.common.callbacks import CallbackList

        return CallbackList(list(callback))
    if callable(callback) and not hasattr(callback, "init_callback"):  # SB3's old form: fn(locals, globals) -> bool
        from stable_baselines3.common.callbacks import ConvertCallback

        return ConvertCallback(callback)
    for method in ("init_callback", "on_step", "on_training_start", "on_rollout_start"):
        if not hasattr(callback, method):
            raise TypeError(
                f"callback {callback!r} lacks {method}(); accepted: a stable_baselines3 BaseCallback, a list of them, or a function (locals, globals) -> bool"
            )
    return callback


class RoundedBudgetWarning(UserWarning):
    """learn(n) runs whole rollouts: more steps than n when n is not a multiple of the rollout size."""


def warn_rounded_budget(total_timesteps: int, per_rollout: int, n_envs: int, n_steps: int) -> None:
    """Say (once per budget and rollout size, as Python shows a warning once per place) when learn() will
    run materially more steps than asked (1% or more: learn(4096) running 8000 steps, not the CLI's 100,000
    running 100,096): SB3 does so silently, ending after the rollout that crosses the budget."""
    total = int(total_timesteps)
    rounded = -(-total // per_rollout) * per_rollout
    if rounded - total >= 0.01 * total and rounded != total:
        import warnings

        warnings.warn(RoundedBudgetWarning(
            f"learn({total}) runs {rounded} steps: whole rollouts of n_steps={n_steps} x n_envs={n_envs}"
            f"{' x ranks' if per_rollout != n_steps * n_envs else ''} = {per_rollout} steps each (as SB3, which "
            f"does not say so); pass a multiple of {per_rollout} to run exactly that many"), stacklevel=3)


def make_progress_bar(total_timesteps: int, per_rollout: int):
    """tqdm over the steps learn() will take: whole rollouts, so the last one may overshoot the budget and
    the bar still ends at 100%; smoothing=0 shows the average rate since the start, the rate the CLI's
    summary line reports, rather than a recent-window estimate."""
    from tqdm.auto import tqdm

    total = -(-int(total_timesteps) // per_rollout) * per_rollout
    return tqdm(total=total, unit="step", smoothing=0, dynamic_ncols=True, file=sys.stderr)
