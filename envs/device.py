"""Where env tensors change device: once per step, at the env boundary, never inside the policy.

A host backend (Gymnasium, SB3) builds its step's tensors on the CPU and hands them to a `HostTransfer`
for the agent's device: on the CPU nothing happens; on an accelerator every field of the step is packed
into one pinned host buffer and sent with one non-blocking copy, and actions come back through one
pinned buffer (LeanRL's pattern: a copy per field costs a launch and, from pageable memory, a sync each).
`OnDevice` puts any VecEnv on another device the same way, for an env the user built on one device and
gave to an agent on another.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from rlgeom.envs.base import StepResult, VecEnv

#: StepResult's tensor fields, in the order they are packed
FIELDS = tuple(f.name for f in dataclasses.fields(StepResult))
#: byte alignment of each field in the packed buffer (a view as int64 or float64 needs 8)
ALIGN = 8


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class _Packed:
    """One pinned host buffer and its device twin, with a typed view of each field in both."""

    def __init__(self, layout, device: torch.device):
        offsets, total = [], 0
        for dtype, shape in layout:
            offsets.append(total)
            total += _aligned(int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size())
        pin = device.type == "cuda" and torch.cuda.is_available()  # pinning needs the CUDA runtime
        self.host = torch.empty(max(total, ALIGN), dtype=torch.uint8, pin_memory=pin)
        self.device = torch.empty(max(total, ALIGN), dtype=torch.uint8, device=device)
        self.host_views = [self._view(self.host, o, d, s) for o, (d, s) in zip(offsets, layout)]
        self.device_views = [self._view(self.device, o, d, s) for o, (d, s) in zip(offsets, layout)]
        # when the last copy out of `host` was issued: the host waits on it before writing `host` again
        self.copied = torch.cuda.Event() if pin else None

    @staticmethod
    def _view(buffer: torch.Tensor, offset: int, dtype: torch.dtype, shape) -> torch.Tensor:
        n = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
        return buffer[offset:offset + n].view(dtype).view(shape)

    def send(self, tensors) -> list[torch.Tensor]:
        if self.copied is not None:
            self.copied.synchronize()  # the previous copy out of this host buffer has been read
        for view, t in zip(self.host_views, tensors):
            if t is not None:
                view.copy_(t)
        self.device.copy_(self.host, non_blocking=True)
        if self.copied is not None:
            self.copied.record()
        return self.device_views


class HostTransfer:
    """CPU tensors of one env step to `device` and the agent's actions back, one copy each way.

    Two packed buffers alternate, so a step's tensors stay valid while the next step is taken (the
    agent keeps the last observation across one step); clone a step's tensors to keep them longer.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self._layout = None
        self._buffers: list[_Packed] = []
        self._turn = 0
        self._actions: torch.Tensor | None = None

    @property
    def moves(self) -> bool:
        return self.device.type != "cpu"

    def step(self, result: StepResult) -> StepResult:
        """The step's tensors (on the CPU) on `device`: unchanged on the CPU."""
        if not self.moves:
            return result
        tensors = [getattr(result, name) for name in FIELDS]
        layout = tuple((t.dtype, tuple(t.shape)) for t in tensors)
        if layout != self._layout:  # first step, or a backend changed shapes: repack
            self._layout, self._buffers = layout, [_Packed(layout, self.device) for _ in range(2)]
        buffer, self._turn = self._buffers[self._turn], 1 - self._turn
        shared = result.final_obs is result.obs  # no episode ended: the final observation is the observation
        moved = buffer.send([None if shared and name == "final_obs" else t for name, t in zip(FIELDS, tensors)])
        out = dict(zip(FIELDS, moved))
        if shared:
            out["final_obs"] = out["obs"]
        return StepResult(**out)

    def tensor(self, t: torch.Tensor) -> torch.Tensor:
        """One tensor (a reset's observations) on `device`, in its own storage."""
        return t.to(self.device) if self.moves else t

    def actions_to_host(self, actions: torch.Tensor) -> torch.Tensor:
        """The agent's actions on the CPU: through one pinned buffer and one copy from an accelerator."""
        actions = actions.detach()
        if actions.device.type == "cpu":
            return actions
        if not (actions.device.type == "cuda" and torch.cuda.is_available()):
            return actions.cpu()
        if self._actions is None or self._actions.shape != actions.shape or self._actions.dtype != actions.dtype:
            self._actions = torch.empty(actions.shape, dtype=actions.dtype, pin_memory=True)
        self._actions.copy_(actions, non_blocking=True)
        torch.cuda.current_stream(actions.device).synchronize()  # the env reads them next, on the host
        return self._actions


class OnDevice(VecEnv):
    """Any VecEnv seen from `device`: observations and step results moved there, actions moved back.

    From a CPU env to an accelerator it takes the pinned path of `HostTransfer`; between two
    accelerators (a torch-native env on another GPU) each tensor is moved by `.to`.
    """

    def __init__(self, env: VecEnv, device: torch.device | str):
        self.env = env
        self.device = torch.device(device)
        self.num_envs = env.num_envs
        self.single_observation_space = env.single_observation_space
        self.single_action_space = env.single_action_space
        self.env_id = env.env_id
        self._host = HostTransfer(self.device) if env.device.type == "cpu" else None

    @property
    def backend(self):
        return self.env.backend

    def reset(self, seed: int | None = None) -> torch.Tensor:
        return self.env.reset(seed=seed).to(self.device)

    def step(self, actions: torch.Tensor) -> StepResult:
        if self._host is not None:
            return self._host.step(self.env.step(self._host.actions_to_host(actions)))
        result = self.env.step(actions.to(self.env.device))
        # non-blocking only towards an accelerator: a copy to the host must be complete before the host reads it
        async_copy = self.device.type != "cpu"
        return StepResult(**{name: getattr(result, name).to(self.device, non_blocking=async_copy) for name in FIELDS})

    def close(self) -> None:
        self.env.close()

    def __getattr__(self, name):
        # what a backend offers beyond VecEnv (state_dict, load_state_dict, ...) stays reachable
        if name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)


def on_device(env: VecEnv, device: torch.device | str) -> VecEnv:
    """`env` itself when it is on `device` already, else `env` seen from `device` (OnDevice)."""
    device = torch.device(device)
    if _same_device(env.device, device):
        return env
    if isinstance(env, OnDevice):
        return on_device(env.env, device)
    return OnDevice(env, device)


def _same_device(a: torch.device, b: torch.device) -> bool:
    """cuda and cuda:N are one device when N is the current one; cpu is cpu."""
    return a.type == b.type and _index(a) == _index(b)


def _index(device: torch.device) -> int:
    if device.index is not None:
        return device.index
    return torch.cuda.current_device() if device.type == "cuda" and torch.cuda.is_available() else 0
