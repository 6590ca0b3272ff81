"""Optimiser plumbing tuned for small policy networks (the update's per-minibatch overhead).

- `adam(params, ...)`: torch.optim.Adam with the fused kernel where torch has one for the device
  (CPU and CUDA): one kernel per step instead of ~6 per parameter tensor; same algorithm.
- `clip_grad_norm_(params, max_norm)`: the global-norm clip of torch.nn.utils.clip_grad_norm_
  in three multi-tensor kernels (per-tensor norms, their norm, one in-place scale), returning the
  total norm as a tensor (no host sync).
"""

from __future__ import annotations

from typing import Iterable

import torch


def adam(params: Iterable[torch.nn.Parameter], lr: float, **kwargs) -> torch.optim.Adam:
    params = list(params)
    device = params[0].device if params else torch.device("cpu")
    fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() and p.device == device for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused or None, **kwargs)


def clip_grad_norm_(params: list[torch.Tensor], max_norm: float, eps: float = 1e-6) -> torch.Tensor:
    """Scale the gradients in place so their global L2 norm is at most max_norm; returns that norm."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, torch.clamp(max_norm / (total + eps), max=1.0))
    return total
