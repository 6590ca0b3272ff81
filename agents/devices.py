"""Devices and seeds: what `device=` and `seed=` accept, and what `device="auto"` picks."""

from __future__ import annotations

import random
import warnings

import numpy as np
import torch

#: policy parameters × envs stepped at once (the multiply-adds of one vector step's forward pass) from
#: which `auto` takes CUDA with a host env. Below it a step is launch- and transfer-bound on a GPU: on an
#: H200 at 8 envs a 64×64 MLP (≈ 9k parameters with its critic, ≈ 7e4 here) ran at 0.35–0.70× the CPU's
#: steps/s on CartPole-v1 and Hopper-v5 (issue 27). The crossover above it is an estimate that
#: experiments/gpu_check.sh measures (RESULTS_speed.md).
CUDA_MIN_WORK = 1 << 20
#: an MLP's hidden widths when policy_kwargs name none (rlgeom's and SB3's default)
DEFAULT_NET_ARCH = (64, 64)


class DeviceChoice(UserWarning):
    """What `device="auto"` chose on a machine with CUDA, and why (said once per reason)."""


_SAID: set[str] = set()


def resolve_device(device, auto=None) -> torch.device:
    """`device` as a torch.device. "auto" (or None): `auto()` when given (an agent passes its
    `auto_device` inputs), else CUDA when available. An explicit device is always obeyed."""
    if device == "auto" or device is None:
        if auto is not None:
            return auto()
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; accepted: auto, cpu, cuda, cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; accepted here: auto, cpu")
    return dev


def choose_device(*, cuda: bool, env_on_cuda: bool, images: bool, n_envs: int, parameters: int) -> tuple[torch.device, str]:
    """(device, reason): the device estimated faster for an agent. cuda: CUDA is available; env_on_cuda:
    the env steps on a GPU (a torch-native task), so the CPU would copy every step across; images: a
    CNN policy (convolutions); n_envs × parameters: the work of one vector step's forward pass."""
    if not cuda:
        return torch.device("cpu"), "CUDA is not available"
    if env_on_cuda:
        return torch.device("cuda"), "the env steps on the GPU"
    if images:
        return torch.device("cuda"), "a CNN policy on image observations"
    work = n_envs * parameters
    if work >= CUDA_MIN_WORK:
        return torch.device("cuda"), f"{n_envs} envs × {parameters} policy parameters ≥ {CUDA_MIN_WORK} per step"
    return torch.device("cpu"), (
        f"a host env with {n_envs} env(s) × {parameters} policy parameters < {CUDA_MIN_WORK} per step: launch- and "
        "transfer-bound on a GPU (measured 0.35-0.70x the CPU at 8 envs, issue 27); pass device='cuda' to override")


def auto_device(env, n_envs: int, policy: str, policy_kwargs: dict | None) -> torch.device:
    """`choose_device` for an agent about to be built on `env`, saying once (a DeviceChoice warning)
    what it chose and why when CUDA is available."""
    cuda = torch.cuda.is_available()
    device, reason = choose_device(
        cuda=cuda, env_on_cuda=_env_on_cuda(env), images=policy == "CnnPolicy",
        n_envs=int(getattr(env, "num_envs", None) or n_envs), parameters=mlp_parameters(policy_kwargs),
    )
    if cuda and reason not in _SAID:
        _SAID.add(reason)
        # stacklevel: the user's line that built the agent
        warnings.warn(f"device='auto' chose {device.type}: {reason}", DeviceChoice, stacklevel=5)
    return device


def mlp_parameters(policy_kwargs: dict | None) -> int:
    """Actor and critic weights of the hidden layers policy_kwargs' net_arch gives (its shape as
    rlgeom.models.policies reads it: a list, or dict(pi=..., vf=...)): the policy's size before
    the env's dimensions are known."""
    arch = (policy_kwargs or {}).get("net_arch", DEFAULT_NET_ARCH)
    if isinstance(arch, (list, tuple)) and arch and isinstance(arch[0], dict):  # SB3's older [dict(pi=, vf=)]
        arch = arch[0]
    heads = [arch.get("pi", DEFAULT_NET_ARCH), arch.get("vf", DEFAULT_NET_ARCH)] if isinstance(arch, dict) else [arch, arch]
    total = 0
    for widths in heads:
        widths = [int(w) for w in widths]
        total += sum(a * b for a, b in zip(widths, widths[1:])) + sum(widths)
    return max(total, 1)


def _env_on_cuda(env) -> bool:
    if isinstance(env, str):
        # torch-native and MuJoCo Warp tasks step on the agent's device (envs.make: TORCH_NATIVE_PREFIX, WARP_PREFIX)
        return env.startswith(("torch/", "warp/")) and torch.cuda.is_available()
    device = getattr(env, "device", None)
    return isinstance(device, torch.device) and device.type == "cuda"


def set_global_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
