"""One entry point from whatever the user has to rlgeom's `VecEnv`."""

from __future__ import annotations

import importlib.util
import logging
import sys

import gymnasium as gym
import torch
from gymnasium.vector import AutoresetMode

from rlgeom import validation
from rlgeom.envs.atari import atari_env_kwargs, atari_wrappers, is_atari_id, register_atari
from rlgeom.envs.base import VecEnv
from rlgeom.envs.device import on_device
from rlgeom.envs.gymnasium_backend import EpisodeInfoOnly, GymnasiumVecEnv, OptionalResetOptions
from rlgeom.envs.sb3_backend import SB3VecEnvAdapter, is_sb3_vec_env
from rlgeom.envs.warp_mujoco import WARP_PREFIX

VECTORIZATION_MODES = ("sync", "async")
TORCH_NATIVE_PREFIX = "torch/"


def make_vec_env(
    env,
    n_envs: int = 1,
    seed: int | None = None,
    device: torch.device | str | None = None,
    vectorization: str = "sync",
    env_kwargs: dict | None = None,
) -> VecEnv:
    """Build rlgeom's vectorised env from an env id, a gymnasium Env or VectorEnv, an SB3 VecEnv
    (VecNormalize included) or an rlgeom VecEnv. `seed` is applied at the first reset.

    Every tensor the env gives is on `device` (an agent passes its own), and actions may come on it:
    an rlgeom VecEnv on another device is seen through envs.device.OnDevice. None: an rlgeom VecEnv
    stays where it is, anything else is built on the CPU."""
    validation.positive_int("n_envs", n_envs)
    if vectorization not in VECTORIZATION_MODES:
        raise ValueError(f"unknown vectorization {vectorization!r}; accepted: {', '.join(VECTORIZATION_MODES)}")
    if isinstance(env, VecEnv):
        return env if device is None else on_device(env, device)
    device = torch.device("cpu") if device is None else device
    if isinstance(env, str):
        return _from_id(env, n_envs, device, vectorization, env_kwargs or {})
    if isinstance(env, gym.vector.VectorEnv):
        return GymnasiumVecEnv(env, device, env_id=_spec_id(env))
    if isinstance(env, gym.Env):
        if n_envs != 1:
            raise ValueError(
                f"a single gymnasium.Env instance cannot be copied into n_envs={n_envs} envs; "
                "pass the env id (or a gymnasium vector env) instead"
            )
        env = OptionalResetOptions.wrap_if_needed(env)
        vec = gym.vector.SyncVectorEnv([lambda: env], autoreset_mode=AutoresetMode.SAME_STEP)
        return GymnasiumVecEnv(vec, device, env_id=_spec_id(env))
    if is_sb3_vec_env(env):
        return SB3VecEnvAdapter(env, device)
    raise TypeError(
        f"unsupported env type {type(env).__name__}; accepted: an env id string, a gymnasium.Env, a "
        "gymnasium.vector.VectorEnv, a stable_baselines3 VecEnv or an envs.base.VecEnv"
    )


def _from_id(env_id: str, n_envs: int, device, vectorization: str, env_kwargs: dict) -> VecEnv:
    if env_id.startswith(TORCH_NATIVE_PREFIX):
        from rlgeom.envs.torch_native import make_torch_native

        return make_torch_native(env_id, n_envs, device=device)
    if env_id.startswith(WARP_PREFIX):
        from rlgeom.envs.warp_mujoco import make_warp_mujoco

        return make_warp_mujoco(env_id, n_envs, device=device)
    wrappers = []
    if is_atari_id(env_id):
        register_atari()
        env_kwargs = {**atari_env_kwargs(env_id), **env_kwargs}
        wrappers = atari_wrappers()
    try:
        spec = gym.spec(env_id)
    except gym.error.Error as err:
        raise ValueError(f"unknown env id {env_id!r}: {err}") from None
    if is_mujoco_spec(spec):  # only then: `import mujoco` fails outright where MUJOCO_GL names a missing backend
        route_mujoco_warnings_to_logging()
    vec = gym.make_vec(
        env_id,
        num_envs=n_envs,
        vectorization_mode=vectorization,
        # copy=False: the env boundary copies each observation batch once (envs.boundary.to_obs_tensor)
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP, "copy": False},
        # outermost, in-process envs only: the per-step infos rlgeom never reads are dropped before the
        # vector env merges them (subprocess workers would have to import rlgeom, and torch, to unpickle it)
        wrappers=[*wrappers, EpisodeInfoOnly] if vectorization == "sync" else wrappers,
        **env_kwargs,
    )
    return GymnasiumVecEnv(vec, device, env_id=env_id)


def is_mujoco_spec(spec) -> bool:
    """Whether a registered env is a MuJoCo task (gymnasium's, or any whose entry point names mujoco)."""
    entry = spec.entry_point
    name = entry if isinstance(entry, str) else f"{getattr(entry, '__module__', '')}.{getattr(entry, '__qualname__', '')}"
    return "mujoco" in name.lower()


def route_mujoco_warnings_to_logging() -> None:
    """MuJoCo's default warning handler appends to MUJOCO_LOG.TXT in the working directory (e.g.
    HalfCheetah's deprecated `settotalmass` under mujoco >= 3.16); send its warnings to the
    `mujoco` logger instead so users' folders stay clean. In-process envs only: subprocess envs
    (vectorization="async") rely on the pinned mujoco version of rlgeom[mujoco]."""
    if "mujoco" not in sys.modules and importlib.util.find_spec("mujoco") is None:
        return
    import mujoco

    if mujoco.get_mju_user_warning() is None:
        mujoco.set_mju_user_warning(_log_mujoco_warning)


def _log_mujoco_warning(message: str) -> None:
    logging.getLogger("mujoco").warning(message.strip())


def _spec_id(env) -> str | None:
    spec = getattr(env, "spec", None)
    return spec.id if spec is not None else None
