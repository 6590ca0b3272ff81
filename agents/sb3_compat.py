"""What SB3 code expects of a model beyond learn/predict/save: its VecEnv back (`get_env`,
`get_vec_normalize_env`), callbacks (SB3's BaseCallback or a list of them) and the `infos` they read."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import envs


class SB3Compat:
    """Mixin of OnPolicyAgent (agents/base.py)."""

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
