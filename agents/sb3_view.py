"""rlgeom's env as SB3 code sees a model's env: `model.get_env()` for envs given as an id or a gymnasium env.

SB3's recipe `obs = env.reset(); action, _ = model.predict(obs); obs, rewards, dones, infos = env.step(action)`
needs numpy in and numpy out and SB3's `infos`; EvalCallback warns unless the training env and the eval env
are of one VecEnv type, and SB3 builds a DummyVecEnv for an env id. So the view is a DummyVecEnv: its
`envs` are the very gymnasium sub-envs rlgeom steps (in-process backends), so get_attr / env_method /
render act on them, while reset and step go through rlgeom's env, whose autoreset and episode
statistics training sees too. As with SB3, stepping the view moves the training env.

Imported only when get_env() is called (it imports SB3).
"""

from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv as SB3VecEnv

from rlgeom.agents.sb3_compat import StepInfos
from rlgeom.data.dict_obs import layout_for


class RlgeomVecEnvView(DummyVecEnv):
    """An rlgeom `envs.base.VecEnv` behind SB3's VecEnv interface (numpy arrays, a list of info dicts)."""

    def __init__(self, env):
        self.rlgeom_env = env
        # a gymnasium SyncVectorEnv's sub-envs; subprocess and torch-native envs have none in this process
        self.envs = list(getattr(env.backend, "envs", ()))
        SB3VecEnv.__init__(self, env.num_envs, env.single_observation_space, env.single_action_space)
        self.actions = None
        self._dict_layout = layout_for(env.single_observation_space)  # rlgeom packs Dict observations into rows

    def reset(self):
        seed = self._seeds[0]  # VecEnv.seed(s) asks for seeds s, s+1, ...: rlgeom's reset(seed=s) gives them
        obs = self.rlgeom_env.reset(seed=seed)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return self._numpy_obs(obs)

    def step_async(self, actions) -> None:
        self.actions = actions

    def step_wait(self):
        env = self.rlgeom_env
        step = env.step(torch.as_tensor(np.asarray(self.actions), device=env.device))
        infos = [dict(info) for info in StepInfos(step)]
        for info in infos:  # the terminal observation in the space's dtype, as SB3's VecEnvs give it
            if "terminal_observation" in info:
                info["terminal_observation"] = self._as_space_dtype(info["terminal_observation"])
        return (self._numpy_obs(step.obs), step.reward.cpu().numpy().copy(), step.done.cpu().numpy().copy(),
                infos)

    def close(self) -> None:
        self.rlgeom_env.close()

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        """The infos carry Monitor's `episode` record (the unclipped return), so evaluate_policy reads it."""
        n = len(self._get_indices(indices))
        if wrapper_class is Monitor:
            return [True] * n
        return super().env_is_wrapped(wrapper_class, indices) if self.envs else [False] * n

    def get_attr(self, attr_name: str, indices=None) -> list:
        if self.envs:
            return super().get_attr(attr_name, indices)
        if attr_name == "render_mode":  # asked by VecEnv.__init__; these envs do not render
            return [None] * len(self._get_indices(indices))
        raise AttributeError(self._no_envs(f"get_attr({attr_name!r})"))

    def set_attr(self, attr_name: str, value, indices=None) -> None:
        if not self.envs:
            raise AttributeError(self._no_envs(f"set_attr({attr_name!r})"))
        super().set_attr(attr_name, value, indices)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list:
        if not self.envs:
            raise AttributeError(self._no_envs(f"env_method({method_name!r})"))
        return super().env_method(method_name, *method_args, indices=indices, **method_kwargs)

    def _no_envs(self, what: str) -> str:
        return (f"{what}: the envs of {type(self.rlgeom_env.backend).__name__} are not in this process; it works "
                "for in-process envs (vectorization='sync' or an SB3 DummyVecEnv)")

    def _numpy_obs(self, obs):
        return self._as_space_dtype(obs.detach().cpu().numpy().copy())

    def _as_space_dtype(self, array: np.ndarray):
        space = self.observation_space
        if self._dict_layout is not None:  # rlgeom's packed rows back to SB3's dict of arrays
            rows = array if array.ndim == 2 else array[None]
            unpacked = self._dict_layout.unpack_numpy(rows)
            return unpacked if array.ndim == 2 else {k: v[0] for k, v in unpacked.items()}
        return array.astype(space.dtype, copy=False) if isinstance(space, spaces.Box) else array
