"""Optimiser plumbing tuned for small policy networks (the update's per-minibatch overhead).

On a CPU, a minibatch step of a 64-64 MLP costs far more in per-tensor kernel launches than in
arithmetic. `adam(params, ...)` therefore returns a `ContiguousAdam`: torch's own fused Adam, run on
ONE tensor. The parameters are re-homed as views into a single contiguous buffer, and their
gradients as views into a second one, so that:
- backward accumulates every gradient in place into that buffer (autograd adds into an existing
  `.grad`), and `zero_grad()` is one `zero_()`;
- the Adam step is one fused kernel over the buffer instead of one per parameter tensor;
- `clip_grad_norm_()` is a norm and a scale of the buffer: two kernels, no host sync.
Same algorithm, same numbers as torch.optim.Adam on the separate tensors (tests/test_optim.py).

Rules that keep the views intact (all of rlgeom follows them): build the optimiser after the module
is on its device (`module.to()` would move the parameters out of the buffer); never assign to
`p.data` or replace `p.grad` afterwards (a replaced gradient is copied back into the buffer at the
next step, so it is not lost, only slower). All parameters must share one device and float dtype
(rlgeom's policies do).
"""

from __future__ import annotations

from typing import Iterable

import torch


class ContiguousAdam(torch.optim.Adam):
    """torch.optim.Adam over `params` stored as views of one flat buffer (see the module docstring).

    `param_groups` / `state_dict()` are those of an Adam over the single flat tensor `self.flat`; the
    learning rate is set through `param_groups[0]["lr"]` as for any torch optimiser.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, **kwargs):
        self.params = list(params)
        if not self.params:
            raise ValueError("ContiguousAdam got no parameters")
        first = self.params[0]
        if any(not p.is_floating_point() or p.device != first.device or p.dtype != first.dtype for p in self.params):
            found = sorted({f"{p.dtype} on {p.device}" for p in self.params})
            raise ValueError(f"ContiguousAdam needs floating-point parameters of one dtype on one device, got {found}")
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1) for p in self.params])
        self.flat = torch.nn.Parameter(flat)
        self.flat.grad = torch.zeros_like(flat)
        self._slices = []
        offset = 0
        for p in self.params:
            n = p.numel()
            p.data = self.flat.data[offset:offset + n].view_as(p)
            p.grad = self.flat.grad[offset:offset + n].view_as(p)
            self._slices.append((offset, n))
            offset += n
        fused = flat.device.type in ("cpu", "cuda")
        super().__init__([self.flat], lr=lr, fused=fused or None, **kwargs)

    def zero_grad(self, set_to_none: bool = True) -> None:  # noqa: ARG002 - the buffer is always kept
        """Zero the gradient buffer in place (`set_to_none` is ignored: the views must stay)."""
        self.flat.grad.zero_()

    def _reattach_gradients(self) -> None:
        """Check the parameters still live in the buffer; copy back any gradient that code outside
        rlgeom replaced or set to None (rare; a cheap pointer check per parameter)."""
        grad, values = self.flat.grad, self.flat.data
        for p, (offset, n) in zip(self.params, self._slices):
            if p.data_ptr() != values[offset:offset + n].data_ptr():
                raise RuntimeError(
                    "a parameter was moved out of ContiguousAdam's buffer (module.to(), .cuda() or an assignment "
                    "to p.data after the optimiser was built), so steps would no longer reach it; build the "
                    "agent on its device (device=...) instead of moving its policy")
            view = grad[offset:offset + n]
            if p.grad is None:
                view.zero_()
            elif p.grad.data_ptr() != view.data_ptr():
                view.copy_(p.grad.reshape(-1))
            else:
                continue
            p.grad = view.view_as(p)

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Scale the gradient to global norm ≤ max_norm (as torch.nn.utils.clip_grad_norm_); the norm before."""
        self._reattach_gradients()
        norm = torch.linalg.vector_norm(self.flat.grad)
        self.flat.grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))
        return norm

    def step(self, closure=None):
        self._reattach_gradients()
        return super().step(closure)


def adam(params: Iterable[torch.nn.Parameter], lr: float, **kwargs) -> ContiguousAdam:
    """Adam for a small network, as one fused step over one buffer (`ContiguousAdam`)."""
    return ContiguousAdam(params, lr=lr, **kwargs)
