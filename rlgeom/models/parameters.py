"""Flat parameter vectors: θ as one 1-D tensor and back, and ∇_θ of a loss in that layout.

Shared by the geometry (natural steps, line searches, spectra) and the optimisers (rlgeom.training.optim),
so it lives with the networks rather than in either of them.
"""

from __future__ import annotations

from typing import Sequence

import torch


def flat_parameters(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """θ as one detached 1-D tensor (a copy), in the order of `params`."""
    return torch.cat([p.detach().reshape(-1) for p in params])


def assign_flat_parameters(params: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    """Copy the 1-D `flat` into `params` in place (the inverse of `flat_parameters`)."""
    total = sum(p.numel() for p in params)
    if flat.dim() != 1 or flat.numel() != total:
        raise ValueError(f"flat parameter vector must be 1-D with {total} entries, got shape {tuple(flat.shape)}")
    with torch.no_grad():
        for p, chunk in zip(params, torch.split(flat, [p.numel() for p in params])):
            p.copy_(chunk.view_as(p))


def unflatten(flat: torch.Tensor, params: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """A flat vector split into tensors shaped like `params` (views, no copy)."""
    total = sum(p.numel() for p in params)
    if flat.dim() != 1 or flat.numel() != total:
        raise ValueError(f"vector must be 1-D with {total} entries (one per parameter), got shape {tuple(flat.shape)}")
    return tuple(c.view_as(p) for p, c in zip(params, torch.split(flat, [p.numel() for p in params])))


def flat_gradient(
    loss_or_grads: torch.Tensor | Sequence[torch.Tensor | None],
    params: Sequence[torch.Tensor],
    retain_graph: bool = False,
    create_graph: bool = False,
) -> torch.Tensor:
    """∇_θ loss as one 1-D tensor; parameters the loss does not depend on get zeros.

    `loss_or_grads` is a scalar loss, or already-computed per-parameter gradients (None allowed).
    """
    if isinstance(loss_or_grads, torch.Tensor):
        grads = torch.autograd.grad(
            loss_or_grads,
            list(params),
            retain_graph=retain_graph or create_graph,  # a graph differentiated again must be kept
            create_graph=create_graph,
            allow_unused=True,
        )
    else:
        grads = list(loss_or_grads)
        if len(grads) != len(params):
            raise ValueError(f"got {len(grads)} gradients for {len(params)} parameters")
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])
