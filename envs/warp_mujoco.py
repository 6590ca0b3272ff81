"""Gymnasium's MuJoCo v5 locomotion tasks, N worlds stepped together by MuJoCo Warp on the agent's device.

`warp/Hopper-v5`, `warp/Walker2d-v5`, `warp/HalfCheetah-v5`, `warp/Swimmer-v5`: the XML file Gymnasium's
v5 class loads, put once into one `mujoco_warp` model with `num_envs` worlds; the task's observation,
reward, termination and reset noise come from `envs.mujoco_tasks` (torch, on batched qpos/qvel).
Seeding, same-step autoreset, the time limit (truncation only where the episode did not terminate,
`final_obs` for the bootstrap) and episode statistics are `envs.torch_native.TorchNativeVecEnv`'s, so
they behave exactly as the torch-native tasks do: the env's state is (qpos, qvel), written into the
Warp data before each step and read back after it (zero-copy views, `wp.to_torch`).

Physics runs in float32 (MuJoCo Warp's precision; Gymnasium's CPU MuJoCo runs float64): see
experiments/RESULTS_warp.md for how far one step differs. On CUDA the `frame_skip` physics steps
are captured once in a CUDA graph; on the CPU Warp launches its kernels one by one.
"""

from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces

from rlgeom.envs.mujoco_tasks import TASKS, MujocoTask, gymnasium_asset
from rlgeom.envs.torch_native import TorchNativeVecEnv

__all__ = ["WARP_PREFIX", "WARP_IDS", "WarpMujocoVecEnv", "make_warp_mujoco", "import_mujoco_warp", "MissingExtraError"]

WARP_PREFIX = "warp/"
WARP_IDS: tuple[str, ...] = tuple(WARP_PREFIX + gym_id for gym_id in TASKS)
INSTALL_HINT = "pip install 'rlgeom[warp]' (mujoco-warp and warp-lang, for the mujoco version rlgeom[mujoco] pins)"


class MissingExtraError(ImportError):
    """An optional dependency the user asked for (through an env id) is not installed: a usage error, named
    apart from ImportError so that a broken import inside rlgeom is never mistaken for one."""


def import_mujoco_warp():
    """(warp, mujoco_warp), or MissingExtraError saying which extra brings them."""
    try:
        import mujoco_warp
        import warp
    except ImportError as err:
        raise MissingExtraError(f"the warp/ env ids need MuJoCo Warp, which is not installed ({err}); {INSTALL_HINT}") from err
    warp.init()  # idempotent; device_from_torch needs the runtime
    return warp, mujoco_warp


class WarpMujocoVecEnv(TorchNativeVecEnv):
    """`num_envs` copies of one Gymnasium v5 MuJoCo task in one MuJoCo Warp model (see the module doc).

    `state` / `set_state` speak Gymnasium's `state_vector()`: qpos then qvel, [num_envs, nq + nv].
    """

    # the reset distribution is the task's noise around the model's initial state (_sample_initial)
    reset_low: tuple[float, ...] = ()
    reset_high: tuple[float, ...] = ()

    def __init__(
        self,
        task: MujocoTask,
        num_envs: int,
        device: str | torch.device = "cpu",
        seed: int | None = None,
        dtype: torch.dtype = torch.float32,
        *,
        max_episode_steps: int | None = None,
    ) -> None:
        if dtype != torch.float32:
            raise ValueError(f"warp/ envs simulate in float32 (MuJoCo Warp's precision); got dtype={dtype!r}")
        wp, mjw = import_mujoco_warp()
        import mujoco

        self.task = task
        self.env_id = WARP_PREFIX + task.gym_id
        self.default_max_episode_steps = task.max_episode_steps
        mj_model = mujoco.MjModel.from_xml_path(gymnasium_asset(task.xml_file))
        mj_data = mujoco.MjData(mj_model)
        self.nq, self.nv, self.nu = mj_model.nq, mj_model.nv, mj_model.nu
        self.state_dim = self.nq + self.nv
        self.dt = float(mj_model.opt.timestep) * task.frame_skip
        super().__init__(num_envs, device=device, seed=seed, dtype=dtype, max_episode_steps=max_episode_steps)
        # Gymnasium's MujocoEnv: init_qpos = qpos0 of a fresh MjData, init_qvel = 0
        self._init_qpos = torch.as_tensor(mj_data.qpos.copy(), dtype=dtype, device=self.device)
        self._init_qvel = torch.as_tensor(mj_data.qvel.copy(), dtype=dtype, device=self.device)
        self._wp, self._mjw = wp, mjw
        self._wp_device = wp.device_from_torch(self.device)
        with wp.ScopedDevice(self._wp_device):
            mujoco.mj_forward(mj_model, mj_data)
            self._model = mjw.put_model(mj_model)
            self._data = mjw.put_data(mj_model, mj_data, nworld=num_envs)
        wp.synchronize_device(self._wp_device)  # the copies above ran on Warp's stream; torch reads the buffers next
        # zero-copy torch views of the Warp buffers (same memory, updated in place)
        self._qpos = wp.to_torch(self._data.qpos)
        self._qvel = wp.to_torch(self._data.qvel)
        self._ctrl = wp.to_torch(self._data.ctrl)
        self._warmstart = wp.to_torch(self._data.qacc_warmstart)
        self._graph = self._capture() if self._wp_device.is_cuda else None

        obs_size = self.nq - task.skipped_qpos + self.nv
        # Gymnasium's spaces exactly (float64 observations, float32 actions from the control range),
        # so a model trained here loads on Gymnasium's env and back
        self.single_observation_space = spaces.Box(-np.inf, np.inf, shape=(obs_size,), dtype=np.float64)
        low, high = mj_model.actuator_ctrlrange.copy().astype(np.float32).T
        self.single_action_space = spaces.Box(low=low, high=high, dtype=np.float32)

    # ----------------------------------------------------------------------- physics
    def _physics_steps(self) -> None:
        for _ in range(self.task.frame_skip):
            self._mjw.step(self._model, self._data)

    def _capture(self):
        """The frame_skip physics steps as one CUDA graph, on a Warp stream of its own (a graph cannot be
        captured on torch's default stream); run once first so that every kernel is loaded."""
        wp = self._wp
        self._stream = wp.Stream(self._wp_device)
        with wp.ScopedDevice(self._wp_device), wp.ScopedStream(self._stream):
            self._physics_steps()
            with wp.ScopedCapture() as capture:
                self._physics_steps()
        wp.synchronize_device(self._wp_device)
        return capture.graph

    def _simulate(self) -> None:
        wp = self._wp
        if self._graph is None:
            with wp.ScopedDevice(self._wp_device):
                self._physics_steps()
            return
        torch_stream = wp.stream_from_torch(torch.cuda.current_stream(self.device))
        self._stream.wait_stream(torch_stream)  # the state written by torch first
        wp.capture_launch(self._graph, stream=self._stream)
        torch_stream.wait_stream(self._stream)  # torch reads the result after

    # ----------------------------------------------------------------------- TorchNativeVecEnv hooks
    def _sample_initial(self, n: int) -> torch.Tensor:
        qpos, qvel = self.task.initial_state(self._init_qpos, self._init_qvel, n, self._generator)
        return torch.cat((qpos, qvel), dim=-1)

    def _observe(self, states):
        qpos, qvel = states.split((self.nq, self.nv), dim=-1)
        return self.task.observe(qpos, qvel)

    def _prepare_actions(self, actions):
        actions = torch.as_tensor(actions, device=self.device)
        if actions.shape != (self.num_envs, self.nu):
            raise ValueError(
                f"{self.env_id}: expected actions of shape [{self.num_envs}, {self.nu}], got {tuple(actions.shape)}"
            )
        if not actions.is_floating_point():
            raise ValueError(f"{self.env_id}: actions must be a float tensor, got {actions.dtype}")
        return actions.to(self.dtype)

    def _transition(self, states, actions):
        qpos_before, qvel_before = states.split((self.nq, self.nv), dim=-1)
        self._qpos.copy_(qpos_before)
        self._qvel.copy_(qvel_before)
        self._ctrl.copy_(actions)  # MuJoCo clamps to the control range; the cost charges the action as sent
        self._simulate()
        qpos, qvel = self._qpos.clone(), self._qvel.clone()
        reward = self.task.reward(qpos_before[:, 0], qpos, qvel, actions, self.dt)
        return torch.cat((qpos, qvel), dim=-1), reward, self.task.terminated(qpos, qvel)

    # ----------------------------------------------------------------------- fresh episodes start cold
    # Gymnasium resets through mj_resetData, which zeroes the constraint solver's warm start; the rest of
    # what MuJoCo carries between steps (act, mocap, applied forces, plugin state) these models do not use.
    def reset(self, seed: int | None = None) -> torch.Tensor:
        obs = super().reset(seed)
        self._warmstart.zero_()
        return obs

    def step(self, actions):
        result = super().step(actions)
        self._warmstart.masked_fill_(result.done.unsqueeze(-1), 0.0)
        return result

    def set_state(self, states: torch.Tensor) -> torch.Tensor:
        """Gymnasium's `reset()` then `set_state(qpos, qvel)` for every env: states are [num_envs, nq + nv]
        (qpos then qvel, or one such row for all); the solver's warm start is cleared as a reset clears it."""
        obs = super().set_state(states)
        self._warmstart.zero_()
        return obs


def make_warp_mujoco(
    env_id: str,
    num_envs: int,
    device: str | torch.device = "cpu",
    seed: int | None = None,
    *,
    max_episode_steps: int | None = None,
) -> WarpMujocoVecEnv:
    """`num_envs` worlds of a `warp/` task on `device` (time limit: Gymnasium's 1000 unless given)."""
    gym_id = env_id[len(WARP_PREFIX):] if isinstance(env_id, str) and env_id.startswith(WARP_PREFIX) else None
    if gym_id not in TASKS:
        raise ValueError(f"unknown MuJoCo Warp env id {env_id!r}; accepted ids: {', '.join(WARP_IDS)}")
    return WarpMujocoVecEnv(TASKS[gym_id], num_envs, device=device, seed=seed, max_episode_steps=max_episode_steps)
