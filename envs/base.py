"""The one vectorised environment interface every rlgeom agent speaks.

Every backend (a Gymnasium vector env, an SB3 VecEnv, a torch-native batched task) is seen by the
agents through `VecEnv`: batched torch tensors on the agent's device in and out.

| field            | shape / dtype                   | meaning                                                     |
|------------------|---------------------------------|-------------------------------------------------------------|
| obs              | [N, *obs_shape], float32/uint8  | observation to act on next (first of a new episode if done) |
| reward           | [N] float32                     | reward of this transition                                   |
| terminated       | [N] bool                        | the MDP ended: no bootstrap                                 |
| truncated        | [N] bool                        | cut by a time limit: bootstrap from V(final_obs)            |
| final_obs        | [N, *obs_shape]                 | last observation of the finished episode where done, else obs |
| episode_return   | [N] float32                     | undiscounted return of the episode that ended here (valid where done) |
| episode_length   | [N] int64                       | its length in steps (valid where done)                      |
| done             | [N] bool                        | terminated or truncated (a backend may pass it; else computed) |

Episodes reset on the same step they end (SB3's convention, Gymnasium's SAME_STEP autoreset), so
no step is wasted and the truncation bootstrap has its observation.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch


@dataclass
class StepResult:
    obs: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    final_obs: torch.Tensor
    episode_return: torch.Tensor
    episode_length: torch.Tensor
    #: terminated | truncated: a backend that has it already passes it (a host backend, from numpy: one
    #: conversion costs less than a torch kernel per step), else it is computed here
    done: torch.Tensor | None = None

    def __post_init__(self):
        if self.done is None:
            self.done = self.terminated | self.truncated


class VecEnv(abc.ABC):
    """Batched environments speaking torch tensors on `device`."""

    num_envs: int
    device: torch.device
    #: gymnasium spaces of ONE environment
    single_observation_space: object
    single_action_space: object
    #: the id the env was made from, when known (for logs and saved models)
    env_id: str | None = None

    @abc.abstractmethod
    def reset(self, seed: int | None = None) -> torch.Tensor:
        """Reset every env; returns obs [N, *obs_shape] on `device`."""

    @abc.abstractmethod
    def step(self, actions: torch.Tensor) -> StepResult:
        """Step every env with actions [N, *action_shape] (already clipped to the action bounds)."""

    def close(self) -> None:
        """Release processes or resources held by the backend."""

    @property
    def observation_space(self):
        """One env's observation space under SB3's VecEnv name (`model.env.observation_space`)."""
        return self.single_observation_space

    @property
    def action_space(self):
        """One env's action space under SB3's VecEnv name."""
        return self.single_action_space

    @property
    def backend(self):
        """The object this interface wraps (a gymnasium or SB3 vector env), or self."""
        return self
