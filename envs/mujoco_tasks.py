"""Gymnasium's MuJoCo v5 locomotion tasks as data plus one set of batched torch formulas.

Each task is Gymnasium 1.x's v5 class with its default arguments: the XML file it loads, its frame
skip, observation (qpos without the leading x (Swimmer: x, y) positions, then qvel, clipped to ±10 for
Hopper and Walker2d), reward (forward velocity of qpos[0] over dt, plus the healthy reward, minus the
control cost of the action as given), termination (unhealthy, strict inequalities) and reset noise
(uniform on qpos; uniform or, for HalfCheetah, normal on qvel). The formulas below are Gymnasium's,
written once on batched qpos [N, nq] / qvel [N, nv]; a task only supplies its numbers. A test checks
the numbers against the defaults of Gymnasium's own constructors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["MujocoTask", "TASKS", "gymnasium_asset"]


def gymnasium_asset(xml_file: str) -> str:
    """Path of one of the XML files shipped with Gymnasium's MuJoCo envs (the file its v5 class loads)."""
    import gymnasium.envs.mujoco

    return os.path.join(os.path.dirname(gymnasium.envs.mujoco.__file__), "assets", xml_file)


@dataclass(frozen=True)
class MujocoTask:
    """One v5 task: Gymnasium's constructor defaults for it (names as in its `__init__`)."""

    gym_id: str
    xml_file: str
    frame_skip: int
    ctrl_cost_weight: float
    reset_noise_scale: float
    forward_reward_weight: float = 1.0
    #: leading qpos entries left out of the observation (exclude_current_positions_from_observation)
    skipped_qpos: int = 1
    #: observation clips qvel to ±this (Hopper, Walker2d); None: unclipped
    qvel_clip: float | None = None
    #: qvel's reset noise: "uniform" in ±scale, or "normal" with standard deviation scale (HalfCheetah)
    qvel_noise: str = "uniform"
    #: None: the task never terminates (HalfCheetah, Swimmer)
    healthy_reward: float | None = None
    healthy_z_range: tuple[float, float] | None = None
    healthy_angle_range: tuple[float, float] | None = None
    #: Hopper only: every entry of state_vector()[2:] must lie in this open interval
    healthy_state_range: tuple[float, float] | None = None
    max_episode_steps: int = 1000

    # --------------------------------------------------------------------------- formulas
    def observe(self, qpos: torch.Tensor, qvel: torch.Tensor) -> torch.Tensor:
        velocity = qvel if self.qvel_clip is None else qvel.clamp(-self.qvel_clip, self.qvel_clip)
        return torch.cat((qpos[:, self.skipped_qpos:], velocity), dim=-1)

    def is_healthy(self, qpos: torch.Tensor, qvel: torch.Tensor) -> torch.Tensor:
        z, angle = qpos[:, 1], qpos[:, 2]
        healthy = _inside(z, self.healthy_z_range) & _inside(angle, self.healthy_angle_range)
        if self.healthy_state_range is not None:
            state = torch.cat((qpos, qvel), dim=-1)[:, 2:]
            healthy = healthy & _inside(state, self.healthy_state_range).all(dim=-1)
        return healthy

    def terminated(self, qpos: torch.Tensor, qvel: torch.Tensor) -> torch.Tensor:
        if self.healthy_reward is None:
            return torch.zeros(qpos.shape[0], dtype=torch.bool, device=qpos.device)
        return ~self.is_healthy(qpos, qvel)

    def reward(self, x_before: torch.Tensor, qpos: torch.Tensor, qvel: torch.Tensor, action: torch.Tensor,
               dt: float) -> torch.Tensor:
        """Forward velocity of qpos[0] over the step, plus the healthy reward, minus the control cost
        of the action as the agent sent it (before MuJoCo clamps it to the control range)."""
        x_velocity = (qpos[:, 0] - x_before) / dt
        reward = self.forward_reward_weight * x_velocity - self.ctrl_cost_weight * action.square().sum(dim=-1)
        if self.healthy_reward is not None:
            reward = reward + self.healthy_reward * self.is_healthy(qpos, qvel).to(reward.dtype)
        return reward

    def initial_state(self, init_qpos: torch.Tensor, init_qvel: torch.Tensor, n: int,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n reset states (qpos [n, nq], qvel [n, nv]): the model's initial state plus Gymnasium's noise."""
        s = self.reset_noise_scale
        device, dtype = init_qpos.device, init_qpos.dtype
        u = torch.rand(n, init_qpos.numel(), generator=generator, device=device, dtype=dtype)
        qpos = init_qpos + (2 * u - 1) * s
        if self.qvel_noise == "normal":
            noise = s * torch.randn(n, init_qvel.numel(), generator=generator, device=device, dtype=dtype)
        else:
            noise = (2 * torch.rand(n, init_qvel.numel(), generator=generator, device=device, dtype=dtype) - 1) * s
        return qpos, init_qvel + noise


def _inside(x: torch.Tensor, bounds: tuple[float, float] | None) -> torch.Tensor:
    if bounds is None:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    return (bounds[0] < x) & (x < bounds[1])


TASKS: dict[str, MujocoTask] = {
    task.gym_id: task
    for task in (
        MujocoTask("Hopper-v5", "hopper.xml", frame_skip=4, ctrl_cost_weight=1e-3, reset_noise_scale=5e-3,
                   qvel_clip=10.0, healthy_reward=1.0, healthy_z_range=(0.7, float("inf")),
                   healthy_angle_range=(-0.2, 0.2), healthy_state_range=(-100.0, 100.0)),
        MujocoTask("Walker2d-v5", "walker2d_v5.xml", frame_skip=4, ctrl_cost_weight=1e-3, reset_noise_scale=5e-3,
                   qvel_clip=10.0, healthy_reward=1.0, healthy_z_range=(0.8, 2.0), healthy_angle_range=(-1.0, 1.0)),
        MujocoTask("HalfCheetah-v5", "half_cheetah.xml", frame_skip=5, ctrl_cost_weight=0.1, reset_noise_scale=0.1,
                   qvel_noise="normal"),
        MujocoTask("Swimmer-v5", "swimmer.xml", frame_skip=4, ctrl_cost_weight=1e-4, reset_noise_scale=0.1,
                   skipped_qpos=2),
    )
}
