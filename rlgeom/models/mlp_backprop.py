"""Backpropagation written out for plain MLPs: the first-order updates' hot path on small networks.

On a CPU a minibatch step of PPO's 64-64 actor and critic costs far more in per-operation overhead
than in arithmetic, and autograd's graph (about sixty nodes: two MLPs, the log-probability, the
clipped loss) is most of that overhead. For the plain stack Linear → tanh/ReLU → … → Linear the
backward pass is a handful of matrix products per layer, so it is written here once:

    forward:   h_0 = x,  h_k = act(h_{k-1} W_kᵀ + b_k)  (k < L),   out = h_{L-1} W_Lᵀ + b_L
    backward:  given g = ∂loss/∂out, for k = L..1:
                   ∂W_k = gᵀ h_{k-1},   ∂b_k = Σ_rows g,   g ← act'(h_{k-1}) ⊙ (g W_k)   (k > 1)

    jvp:       given tangents (dW_k, db_k), t_1 = x dW_1ᵀ + db_1,
                   t_k = (act'(h_{k-1}) ⊙ t_{k-1}) W_kᵀ + h_{k-1} dW_kᵀ + db_k;  t_L is ∂out along them

`PlainMLP.gradients` returns ∂loss/∂θ (and ∂loss/∂x) given ∂loss/∂out; rlgeom.models.networks runs forward
and gradients as one node of autograd's graph (a torch.autograd.Function), so autograd accumulates them
into `.grad` and any loss built on the outputs backpropagates as it would through the modules.
`PlainMLP.jvp` with `gradients` gives the policy Fisher's Gauss–Newton products Jᵀ F_dist J v
(rlgeom.geometry.fisher) without a graph. Equality with autograd is tested in tests/test_networks.py, the
Fisher products against an explicit Fisher in tests/test_fisher.py. rlgeom.models.networks is the one place
that decides when this applies (a module offering `written_out_form()`, e.g. rlgeom.models.policies.Actor);
everything else uses autograd. Only public torch operators are used.
"""

from __future__ import annotations

import torch
from torch import nn

#: from this many elements on, the sigmoid form is the faster (CPU, one thread: 64 x 64 = 4096 elements
#: took ~11 µs either way, 128 x 64 = 8192 took 11 µs against torch.tanh's 20 µs)
_SIGMOID_TANH_MIN_NUMEL = 8192


def tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh, as 2·sigmoid(2x) − 1 for large CPU tensors outside autograd.

    torch's CPU tanh kernel is several times slower than its sigmoid (torch 2.13: 310 µs against 63 µs
    for the sigmoid form on 2048 x 64, 20 µs against 11 µs on 128 x 64; one core), and a critic or
    actor forward on a minibatch spends most of its elementwise time there. The sigmoid form agrees
    with tanh to 2e-7 in absolute terms in float32 (not in half precision, which keeps torch.tanh).
    Small tensors, GPU tensors and tensors autograd must differentiate take torch.tanh too.
    """
    if (x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64)
            or x.numel() < _SIGMOID_TANH_MIN_NUMEL or (x.requires_grad and torch.is_grad_enabled())):
        return torch.tanh(x)
    return x.mul(2).sigmoid_().mul_(2).sub_(1)  # x itself is left as it was


def _tanh_backward(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """grad ⊙ tanh'(h) from the output h = tanh(·): grad − grad ⊙ h² (two kernels)."""
    return torch.addcmul(grad, grad, out * out, value=-1)


def _relu_backward(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """grad ⊙ relu'(h) from the output h = relu(·): grad where h > 0, else 0."""
    return torch.where(out > 0, grad, 0.0)


#: activations whose derivative is written out, by their nn.Module type: (forward, grad ↦ grad ⊙ act'(h))
ACTIVATION_BACKWARD = {
    nn.Tanh: (tanh, _tanh_backward),
    nn.ReLU: (torch.relu, _relu_backward),
}


class PlainMLP:
    """Linear layers with one tanh or ReLU between them (none after the last): forward and backward
    without autograd. Holds the modules, not copies, so it always sees the current weights."""

    def __init__(self, layers: list[nn.Module], activation: type[nn.Module]):
        linears = [m for m in layers if isinstance(m, nn.Linear)]
        if not linears or activation not in ACTIVATION_BACKWARD:
            raise ValueError(f"PlainMLP needs Linear layers and one of {[a.__name__ for a in ACTIVATION_BACKWARD]}")
        self.layers, self.linears = layers, linears  # layers: the modules themselves, for `module_forward`
        self._act, self._act_backward = ACTIVATION_BACKWARD[activation]

    def parameters(self) -> list[nn.Parameter]:
        """[W_1, b_1, …, W_L, b_L]: the order `gradients` returns and `jvp`'s tangents pair them in."""
        return [p for layer in self.linears for p in (layer.weight, layer.bias)]

    def module_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layers called as modules, on autograd's graph (what a double backward differentiates)."""
        for layer in self.layers:
            x = layer(x)
        return x

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
        return cls(list(layers), activation) if activation in ACTIVATION_BACKWARD else None

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(output, inputs of every layer): the second is what `gradients` and `jvp` need."""
        inputs = []
        last = len(self.linears) - 1
        for k, layer in enumerate(self.linears):
            inputs.append(x)
            x = torch.addmm(layer.bias, x, layer.weight.t())
            if k < last:
                x = self._act(x)
        return x, inputs

    def frozen_forward(self):
        """x ↦ output with the weights as they are now, transposed once (call under no_grad or
        inference_mode; for a rollout, during which the weights do not change)."""
        layers = [(layer.bias.detach(), layer.weight.detach().t()) for layer in self.linears]
        act, last = self._act, len(layers) - 1

        def forward(x: torch.Tensor) -> torch.Tensor:
            for k, (bias, weight_t) in enumerate(layers):
                x = torch.addmm(bias, x, weight_t)
                if k < last:
                    x = act(x)
            return x

        return forward

    @staticmethod
    def frozen_pair_forward(first: "PlainMLP", second: "PlainMLP"):
        """x ↦ (first(x), second(x)) in one batched pass per layer, with the weights as they are now
        stacked once, or None unless the two have the same input, hidden widths and activation (an
        actor and a critic of one net_arch: the rollout's per-step forward costs half the kernels)."""
        a, b = first.linears, second.linears
        if (len(a) != len(b) or len(a) < 2 or first._act is not second._act
                or any(x.weight.shape != y.weight.shape for x, y in zip(a[:-1], b[:-1]))):
            return None
        width, outs = a[0].out_features, (a[-1].out_features, b[-1].out_features)
        with torch.no_grad():
            w_in = torch.cat([a[0].weight, b[0].weight]).t().contiguous()  # [in, 2H]
            b_in = torch.cat([a[0].bias, b[0].bias])
            hidden = [(torch.stack([x.bias, y.bias]).unsqueeze(1), torch.stack([x.weight.t(), y.weight.t()]).contiguous())
                      for x, y in zip(a[1:-1], b[1:-1])]
            w_out = a[-1].weight.new_zeros(2, a[-1].in_features, max(outs))  # heads padded to one width
            b_out = a[-1].bias.new_zeros(2, 1, max(outs))
            for k, layer in enumerate((a[-1], b[-1])):
                w_out[k, :, : outs[k]] = layer.weight.t()
                b_out[k, 0, : outs[k]] = layer.bias
        act = first._act

        def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = act(torch.addmm(b_in, x, w_in)).view(x.shape[0], 2, width).transpose(0, 1)  # [2, B, H]
            for bias, weight_t in hidden:
                h = act(torch.baddbmm(bias, h, weight_t))
            out = torch.baddbmm(b_out, h, w_out)
            return out[0, :, : outs[0]], out[1, :, : outs[1]]

        return forward

    @torch.no_grad()
    def gradients(self, inputs: list[torch.Tensor], grad_output: torch.Tensor,
                  input_gradient: bool = False) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """([∂W_1, ∂b_1, …, ∂W_L, ∂b_L], ∂x or None), given ∂loss/∂output and the layer inputs `forward`
        returned: a vector-Jacobian product. ∂x only when `input_gradient` (a network's input seldom needs one)."""
        g, grads = grad_output, [None] * (2 * len(self.linears))
        for k in range(len(self.linears) - 1, -1, -1):
            weight = self.linears[k].weight
            grads[2 * k], grads[2 * k + 1] = _weight_gradient(g, inputs[k]), g.sum(0)
            if k > 0:
                g = self._act_backward(g.mm(weight), inputs[k])
            elif input_gradient:
                return grads, g.mm(weight)
        return grads, None

    @torch.no_grad()
    def jvp(self, inputs: list[torch.Tensor], tangents: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The output's derivative along weight and bias tangents `tangents[k]` = (dW_k, db_k), at the
        point whose layer inputs `forward` returned: a Jacobian-vector product (forward mode),

            t_1 = x dW_1ᵀ + db_1,   t_k = (a_{k-1} ⊙ t_{k-1}) W_kᵀ + h_{k-1} dW_kᵀ + db_k,

        where a_{k-1} is the activation's derivative at layer k-1, read from its output h_{k-1} as
        `gradients` reads it.
        """
        t = None
        for k, (layer, (d_weight, d_bias)) in enumerate(zip(self.linears, tangents)):
            pre = torch.addmm(d_bias, inputs[k], d_weight.t())
            if t is not None:
                pre.addmm_(self._act_backward(t, inputs[k]), layer.weight.t())
            t = pre
        return t


def _weight_gradient(g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """gᵀ h; for a layer input h much narrower than its output as (hᵀ g)ᵀ: the same sum, and MKL's CPU
    kernels were 1.8–3× faster in that orientation for such shapes (2048 x 11 inputs to 64 units: 60 µs
    against 195 µs), while for square or narrow-output layers gᵀ h is as fast or faster."""
    if h.shape[1] * 2 <= g.shape[1] and g.device.type == "cpu":
        return torch.mm(h.t(), g).t()
    return torch.mm(g.t(), h)
