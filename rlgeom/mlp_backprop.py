"""Backpropagation written out for plain MLPs: the first-order updates' hot path on small networks.

On a CPU a minibatch step of PPO's 64-64 actor and critic costs far more in per-operation overhead
than in arithmetic, and autograd's graph (about sixty nodes: two MLPs, the log-probability, the
clipped loss) is most of that overhead. For the plain stack Linear → tanh/ReLU → … → Linear the
backward pass is a handful of matrix products per layer, so it is written here once:

    forward:   h_0 = x,  h_k = act(h_{k-1} W_kᵀ + b_k)  (k < L),   out = h_{L-1} W_Lᵀ + b_L
    backward:  given g = ∂loss/∂out, for k = L..1:
                   ∂W_k += gᵀ h_{k-1},   ∂b_k += Σ_rows g,   g ← act'(h_{k-1}) ⊙ (g W_k)   (k > 1)

`PlainMLP.backward` adds the gradients into each Linear's `.grad` in place, so an optimiser that
keeps its gradients in one buffer (rlgeom.optim.ContiguousAdam) receives them there, exactly as
`loss.backward()` would put them. Equality with autograd is tested in tests/test_mlp_backprop.py.
Networks that are not such a stack (CNN features, other activations) keep using autograd: the
policy offers this path only where it applies (ActorCriticPolicy.evaluate_actions_with_vjp).
"""

from __future__ import annotations

import torch
from torch import nn

#: activations whose derivative is written out below, by the name of their nn.Module type
ACTIVATION_BACKWARD = {
    nn.Tanh: (torch.tanh, torch.ops.aten.tanh_backward),  # act'(h) from the output: 1 - h²
    nn.ReLU: (torch.relu, lambda grad, out: torch.ops.aten.threshold_backward(grad, out, 0)),  # 1[h > 0]
}


class PlainMLP:
    """Linear layers with one tanh or ReLU between them (none after the last): forward and backward
    without autograd. Holds the modules, not copies, so it always sees the current weights."""

    def __init__(self, linears: list[nn.Linear], activation: type[nn.Module]):
        if not linears or activation not in ACTIVATION_BACKWARD:
            raise ValueError(f"PlainMLP needs Linear layers and one of {[a.__name__ for a in ACTIVATION_BACKWARD]}")
        self.linears = linears
        self._act, self._act_backward = ACTIVATION_BACKWARD[activation]

    @classmethod
    def of(cls, layers: list[nn.Module]) -> "PlainMLP | None":
        """The PlainMLP of `layers` (alternating Linear and activation, ending with a Linear), or None
        when they are not such a stack."""
        linears = [m for m in layers if isinstance(m, nn.Linear)]
        activations = {type(m) for m in layers if not isinstance(m, nn.Linear)}
        alternating = all(isinstance(m, nn.Linear) == (i % 2 == 0) for i, m in enumerate(layers))
        if not linears or not alternating or not isinstance(layers[-1], nn.Linear) or len(activations) > 1:
            return None
        if any(layer.bias is None for layer in linears):
            return None
        activation = activations.pop() if activations else nn.Tanh  # a single Linear has no activation
        return cls(linears, activation) if activation in ACTIVATION_BACKWARD else None

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(output, inputs of every layer): the second is what `backward` needs."""
        inputs = []
        last = len(self.linears) - 1
        for k, layer in enumerate(self.linears):
            inputs.append(x)
            x = torch.addmm(layer.bias, x, layer.weight.t())
            if k < last:
                x = self._act(x)
        return x, inputs

    @torch.no_grad()
    def backward(self, inputs: list[torch.Tensor], grad_output: torch.Tensor) -> None:
        """Add ∂loss/∂W and ∂loss/∂b of every layer into its `.grad`, given ∂loss/∂output."""
        g = grad_output
        for k in range(len(self.linears) - 1, -1, -1):
            layer = self.linears[k]
            _grad_of(layer.weight).addmm_(g.t(), inputs[k])
            _grad_of(layer.bias).add_(g.sum(0))
            if k > 0:  # the network's input needs no gradient
                g = self._act_backward(g.mm(layer.weight), inputs[k])


def _grad_of(parameter: torch.Tensor) -> torch.Tensor:
    """The parameter's gradient tensor, created as zeros if it has none yet (as autograd does)."""
    if parameter.grad is None:
        parameter.grad = torch.zeros_like(parameter)
    return parameter.grad
