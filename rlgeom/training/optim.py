"""Optimiser plumbing tuned for small policy networks (the update's per-minibatch overhead).

On a CPU, a minibatch step of a 64-64 MLP costs far more in per-tensor kernel launches than in
arithmetic. `adam(params, ...)` therefore returns a `ContiguousAdam`: torch.optim.Adam(fused=True), run
on ONE tensor. The parameters are re-homed (Tensor.set_) as views into a single contiguous buffer, and
their gradients as views into a second one, so that:
- backward accumulates every gradient in place into that buffer (autograd adds into an existing
  `.grad`), and `zero_grad()` zeroes it at once;
- the Adam step is one fused kernel over the buffer instead of one per parameter tensor;
- `clip_grad_norm_()` is a norm and a scale of the buffer: a few kernels, no host sync.
Same algorithm, same numbers as torch.optim.Adam on the separate tensors (tests/test_optim.py).

Rules that keep the views intact (all of rlgeom follows them): build the optimiser after the module
is on its device (`module.to()` would move the parameters out of the buffer); never assign to
`p.data` or replace `p.grad` afterwards (a replaced gradient is copied back into the buffer at the
next step, so it is not lost, only slower). All parameters must share one device and float dtype
(rlgeom's policies do). An optimiser state saved per parameter (torch.optim.Adam's, or rlgeom's
checkpoints written before this class existed) loads: its moments are concatenated into the buffer.
"""

from __future__ import annotations

from typing import Iterable

import torch

from rlgeom.models.parameters import flat_parameters


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
        self.flat = torch.nn.Parameter(flat_parameters(self.params))
        self.flat.grad = torch.zeros_like(self.flat)
        self._slices, self._grad_views, self._data_ptrs = [], [], []
        offset, values = 0, self.flat.detach()
        for p in self.params:
            n = p.numel()
            with torch.no_grad():  # the parameter object stays (modules and hooks keep it), its storage moves
                p.set_(values[offset:offset + n].view_as(p))
            p.grad = self.flat.grad[offset:offset + n].view_as(p)
            # kept to check cheaply, per step, that nothing moved: identity of the gradient view, address of the data
            self._slices.append((offset, n))
            self._grad_views.append(p.grad)
            self._data_ptrs.append(p.data_ptr())
            offset += n
        fused = self.flat.device.type in ("cpu", "cuda")
        super().__init__([self.flat], lr=lr, fused=fused or None, **kwargs)

    def zero_grad(self, set_to_none: bool = True) -> None:  # noqa: ARG002 - the buffer is always kept
        """Zero the gradient buffer in place (`set_to_none` is ignored: the views must stay); a
        gradient that outside code replaced is pointed back at its view, so it cannot go stale."""
        for p, view in zip(self.params, self._grad_views):
            if p.grad is not view:
                p.grad = view
        self.flat.grad.zero_()

    def load_state_dict(self, state_dict: dict) -> None:
        """Load this optimiser's own state, or a per-parameter Adam state over the same parameters in
        the same order (torch.optim.Adam's layout; rlgeom checkpoints before ContiguousAdam)."""
        groups = state_dict.get("param_groups", [])
        if len(groups) == 1 and len(groups[0]["params"]) == len(self.params) != 1:
            state_dict = self._flattened(state_dict)
        super().load_state_dict(state_dict)

    def _flattened(self, state_dict: dict) -> dict:
        """A per-parameter Adam state as the state of one Adam over the flat buffer."""
        group = state_dict["param_groups"][0]
        per_param = [state_dict["state"].get(i, state_dict["state"].get(str(i), {})) for i in group["params"]]
        for key in ("exp_avg_sq", "exp_avg"):
            if any(key in s and s[key].numel() != p.numel() for s, p in zip(per_param, self.params)):
                raise ValueError("the saved Adam state does not fit these parameters (a moment has the wrong "
                                 "size); it was saved for a different network")
        state = {}
        if any(per_param):
            zeros = torch.zeros_like(self.flat)
            steps = [s["step"] for s in per_param if "step" in s]
            state = {
                "step": torch.as_tensor(max(float(t) for t in steps), dtype=torch.float32, device=self.flat.device),
                **{key: torch.cat([s[key].reshape(-1).to(zeros) if key in s else zeros[o:o + n]
                                   for s, (o, n) in zip(per_param, self._slices)])
                   for key in ("exp_avg", "exp_avg_sq")},
            }
        own = {k: self.param_groups[0][k] for k in ("fused", "foreach") if k in self.param_groups[0]}
        return {"state": {0: state} if state else {}, "param_groups": [{**group, **own, "params": [0]}]}

    def _reattach_gradients(self) -> None:
        """Check the parameters still live in the buffer; copy back any gradient that code outside
        rlgeom replaced or set to None (rare; a cheap pointer check per parameter)."""
        for p, view, address in zip(self.params, self._grad_views, self._data_ptrs):
            if p.data_ptr() != address:
                raise RuntimeError(
                    "a parameter was moved out of ContiguousAdam's buffer (module.to(), .cuda() or an assignment "
                    "to p.data after the optimiser was built), so steps would no longer reach it; build the "
                    "agent on its device (device=...) instead of moving its policy")
            grad = p.grad
            if grad is view:
                continue
            if grad is None:
                view.zero_()
            elif grad.data_ptr() != view.data_ptr() or grad.shape != view.shape:
                view.copy_(grad.reshape(view.shape))
            p.grad = view

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


def make_optimizer(params: Iterable[torch.nn.Parameter], lr: float, optimizer_class=None,
                   optimizer_kwargs: dict | None = None, default_eps: float | None = None) -> torch.optim.Optimizer:
    """A first-order optimiser as SB3's policy_kwargs ask for it (`optimizer_class`, `optimizer_kwargs`).

    Adam (the default, or torch.optim.Adam named) is rlgeom's ContiguousAdam: the same algorithm, one
    fused step over one buffer. `default_eps` is the agent's Adam eps when `optimizer_kwargs` is
    not given (SB3 sets 1e-5 for its policies' Adam the same way). Any other class is built as it is:
    `optimizer_class(params, lr=lr, **optimizer_kwargs)`.
    """
    params = list(params)
    kwargs = dict(optimizer_kwargs) if optimizer_kwargs is not None else {}
    if optimizer_kwargs is None and default_eps is not None and optimizer_class in (None, torch.optim.Adam):
        kwargs["eps"] = default_eps
    if optimizer_class in (None, torch.optim.Adam) and not {"fused", "foreach", "capturable", "differentiable"} & set(kwargs):
        return ContiguousAdam(params, lr=lr, **kwargs)
    try:
        return (optimizer_class or torch.optim.Adam)(params, lr=lr, **kwargs)
    except TypeError as err:
        raise ValueError(f"optimizer_kwargs {kwargs!r} do not fit {optimizer_class.__name__}: {err}") from None


def clip_gradient_norm(optimizer: torch.optim.Optimizer, max_norm: float) -> torch.Tensor:
    """Scale the gradients of the optimiser's parameters to global norm ≤ max_norm; the norm before
    (ContiguousAdam's one-buffer form, else torch's clip_grad_norm_)."""
    if isinstance(optimizer, ContiguousAdam):
        return optimizer.clip_grad_norm_(max_norm)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return torch.nn.utils.clip_grad_norm_(params, max_norm)
