"""What SB3 code expects of a model beyond learn/predict/save: its VecEnv back (`get_env`,
`get_vec_normalize_env`), callbacks (SB3's BaseCallback or a list of them) and the `infos` they read."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import envs


class SB3Compat:
    """Mixin of OnPolicyAgent (agents/base.py)."""

    def __getattr__(self, name: str):
        """Hyperparameters read as SB3 exposes them: `model.gamma`, `model.n_steps`, ...; schedules
        (`learning_rate`, `clip_range`) as SB3's callables of the remaining progress (1 → 0)."""
        config = self.__dict__.get("config")
        if config is None or name.startswith("_") or name not in type(config).__dataclass_fields__:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        value = getattr(config, name)
        if name in ("learning_rate", "clip_range", "clip_range_vf") and value is not None:
            from rlgeom.training.schedules import schedule_value

            return lambda progress_remaining: schedule_value(value, progress_remaining)
        return value

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
            result = self.policy.load_state_dict(params["policy"], strict=exact_match)
            for name, optimizer in self._optimizers().items():
                if name in params:
                    optimizer.load_state_dict(params[name])
                elif exact_match:
                    raise ValueError(f"set_parameters: no state for the optimiser {name!r} (pass exact_match=False)")
            return result
        from rlgeom.persistence.serialization import read_model

        tensors, _ = read_model(load_path_or_dict)
        if exact_match:
            self._load_tensors(load_path_or_dict, tensors)
        else:
            policy = {k[len("policy."):]: v for k, v in tensors.items() if k.startswith("policy.")}
            self.policy.load_state_dict(policy, strict=False)

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


def step_locals(actions, step) -> dict:
    """What SB3's collect_rollouts leaves in a callback's `self.locals` per step, as numpy arrays (on the
    CPU the arrays share the tensors' memory; on a GPU this is the one transfer a callback costs)."""
    def numpy(t):
        return t.detach().cpu().numpy()

    return {"actions": numpy(actions), "rewards": numpy(step.reward), "dones": numpy(step.done),
            "new_obs": numpy(step.obs), "infos": StepInfos(step)}


def wrap_callback(callback):
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


def make_progress_bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr)
