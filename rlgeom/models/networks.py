"""How a network's derivatives are computed: the one switchable layer between autograd and the
derivatives written out for plain MLPs.

Every update in rlgeom differentiates through a network in exactly two ways:

| need                                  | function                    | gives                                         |
|---------------------------------------|-----------------------------|-----------------------------------------------|
| a first-order loss L(outputs)         | `differentiable_outputs`    | outputs y = f(x), and `backward(L)` adding ∂L/∂θ into `.grad` |
| Fisher products Jᵀ F_dist J v         | `linearise`                 | y, the trainable parameters, `jvp(v) = J v`, `vjp(u) = Jᵀ u`  |

The losses (PPO's, the critic's MSE, the log-densities of rlgeom.models.distributions) are always
differentiated by autograd: they are written once, in the agent and the family, and nowhere else.
What may be written out is only the network's own part, for a module that declares itself a plain
MLP (`written_out_form()`, see below): rlgeom.models.mlp_backprop.PlainMLP's forward, backward and jvp, a
few matrix products per layer and no graph, about twice as fast per minibatch on a CPU. The loss is
then differentiated by autograd down to the network's outputs (made leaves), and PlainMLP carries
∂L/∂y the rest of the way. Everything else (CNNs, features extractors, any custom module) takes
autograd and torch.func: `differentiable_outputs` is then just `f(x)` with `L.backward()`, and
`linearise` builds y's pullback once with torch.func.vjp and J v as the pullback's own transpose.

The switch is the `written_out` argument, which the agents take from their config
(`written_out_derivatives`, default True); both forms give the same numbers to float rounding
(tests/test_networks.py checks each against autograd and torch.func).

A module offers the written-out form by a method `written_out_form()` returning
`(PlainMLP, tail)` or None, meaning: `module(x) == cat([mlp(x), tail().expand(B, -1)], -1)` when
`tail` is a callable module (a state-independent block, such as a Gaussian's log σ) or
`module(x) == mlp(x)` when `tail` is None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, vjp

from rlgeom.models.mlp_backprop import PlainMLP


def trainable_parameters(module: nn.Module) -> tuple[list[str], list[nn.Parameter]]:
    """(names, parameters) of the module's parameters that require a gradient, in module order."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    return [n for n, _ in named], [p for _, p in named]


def _written_out(module: nn.Module, x: torch.Tensor | None, enabled: bool, for_gradients: bool = True):
    """(PlainMLP, tail) if the written-out form applies to `module` on input `x` (None: any 2-D input),
    else None. The one place that decides it, for gradients, Jacobian products and inference alike.

    For gradients it must also give what autograd would: every parameter trained, no gradient hook
    on a parameter and no module hook on a layer (K-FAC's statistics hooks, a user's), since only
    module calls and autograd run those.
    """
    form = getattr(module, "written_out_form", None)
    if not enabled or not callable(form) or (x is not None and x.dim() != 2):
        return None
    found = form()
    if found is None:
        return None
    mlp, tail = found
    # what does not change while the form's objects stay the same, checked once per form (the module's
    # parameters are exactly the form's: its output could otherwise depend on more than the form covers)
    cached = module.__dict__.get("_written_out_check")
    if cached is None or cached[0] is not mlp or cached[1] is not tail:
        expected = mlp.parameters() + (list(tail.parameters()) if tail is not None else [])
        covers = {id(p) for p in module.parameters()} == {id(p) for p in expected}
        cached = module.__dict__["_written_out_check"] = (mlp, tail, covers, expected, list(module.modules()))
    _, _, covers, expected, modules = cached
    if not covers:
        return None
    if for_gradients:
        if not all(p.requires_grad and not p._backward_hooks and not getattr(p, "_post_accumulate_grad_hooks", None)
                   for p in expected):
            return None
        if any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in modules):
            return None
    return mlp, tail


def written_out_applies(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether gradients and Jacobian products of `module` on `x` take the written-out form."""
    return _written_out(module, x, True) is not None


def inference_function(module: nn.Module, written_out: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """x ↦ module(x) for use without a graph (call it under torch.no_grad or inference_mode) while the
    parameters stay fixed, e.g. for one rollout: PlainMLP's forward with the state-independent tail
    evaluated once, where the written-out form applies (no module dispatch, which is most of a small
    network's per-step cost; module hooks are not called), else the module itself."""
    found = _written_out(module, None, written_out, for_gradients=False)
    if found is None:
        return module
    mlp, tail = found
    forward = mlp.frozen_forward()
    if tail is None:
        return forward
    with torch.no_grad():
        tail_value = tail()
    return lambda x: _with_tail(forward(x), tail_value)


def paired_inference_function(first: nn.Module, second: nn.Module, written_out: bool = True):
    """x ↦ (first(x), second(x)) for use without a graph while the parameters stay fixed: one batched
    pass per layer for two plain MLPs of the same widths (an actor and a critic of one net_arch;
    PlainMLP.frozen_pair_forward), else the two `inference_function`s."""
    found = [_written_out(m, None, written_out, for_gradients=False) for m in (first, second)]
    pair = PlainMLP.frozen_pair_forward(found[0][0], found[1][0]) if None not in found else None
    if pair is None:
        one, two = inference_function(first, written_out), inference_function(second, written_out)
        return lambda x: (one(x), two(x))
    with torch.no_grad():
        tails = [tail() if tail is not None else None for _, tail in found]

    def forward(x):
        outs = pair(x)
        return tuple(out if t is None else _with_tail(out, t) for out, t in zip(outs, tails))

    return forward


def _with_tail(out: torch.Tensor, tail_value: torch.Tensor) -> torch.Tensor:
    return torch.cat([out, tail_value.expand(out.shape[0], -1)], dim=-1)


# ---------------------------------------------------------------------------------------------
# first-order losses
# ---------------------------------------------------------------------------------------------


def differentiable_outputs(module: nn.Module, x: torch.Tensor, written_out: bool = True):
    """(y, push): y = module(x) ready for a loss, and push() to call after `loss.backward()`.

    Autograd form: y carries the graph, push does nothing. Written-out form: the MLP's output is a
    leaf tensor (computed without a graph) whose `.grad` the loss's backward fills, and push()
    carries that gradient through the network into its parameters' `.grad` (PlainMLP.backward);
    a state-independent tail (a handful of elements) stays on autograd's graph, so the loss's
    backward reaches it directly.
    """
    form = _written_out(module, x, written_out)
    if form is None:
        return module(x), _nothing
    mlp, tail = form
    with torch.no_grad():
        out, inputs = mlp.forward(x)
    out.requires_grad_(True)
    y = out if tail is None else _with_tail(out, tail())

    def push() -> None:
        if out.grad is not None:  # None: the loss did not depend on the MLP's output
            mlp.backward(inputs, out.grad)
            out.grad = None  # a second loss on the same outputs (retain_graph) starts from zero, as autograd's does

    return y, push


def _nothing() -> None:
    return None


def backward(loss: torch.Tensor, *pushes: Callable[[], None], retain_graph: bool = False) -> None:
    """loss.backward(), then every written-out network's push (see `differentiable_outputs`)."""
    loss.backward(retain_graph=retain_graph)
    for push in pushes:
        push()


# ---------------------------------------------------------------------------------------------
# Jacobian products (the Fisher's Gauss–Newton form)
# ---------------------------------------------------------------------------------------------


@dataclass
class Linearisation:
    """A network linearised at its current parameters on one batch of inputs.

    output: y = f(x) [B, P], detached. parameters: the trainable parameters θ the products refer to.
    jvp(tangents) = J v for `tangents` shaped like `parameters` ([B, P]); vjp(u) = Jᵀ u for u [B, P],
    as one gradient per parameter. Both are linear maps fixed at construction: the parameters must not
    change while it is used (a CG solve only reads them).
    """

    output: torch.Tensor
    parameters: list[nn.Parameter]
    jvp: Callable[[Sequence[torch.Tensor]], torch.Tensor]
    vjp: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]


def linearise(module: nn.Module, x: torch.Tensor, written_out: bool = True) -> Linearisation:
    """The module's Jacobian products at its current parameters on inputs x, by the written-out
    form where it applies, else by torch.func (one forward pass, reused by every product)."""
    form = _written_out(module, x, written_out)
    if form is not None:
        return _written_out_linearisation(*form, x)
    names, params = trainable_parameters(module)
    if not params:
        with torch.no_grad():
            y = module(x)
        return Linearisation(y.detach(), [], lambda tangents: torch.zeros_like(y), lambda u: ())

    def f(*theta):
        return functional_call(module, dict(zip(names, theta)), (x,))

    with torch.enable_grad():
        y, pullback = vjp(f, *(p.detach() for p in params))
        # pullback is linear in its cotangent, u ↦ Jᵀu; its own transpose is v ↦ J v
        _, transpose = vjp(pullback, torch.zeros_like(y))
    return Linearisation(y.detach(), params, lambda tangents: transpose(tuple(tangents))[0],
                         lambda u: tuple(g.detach() for g in pullback(u)))


def _written_out_linearisation(mlp: PlainMLP, tail: nn.Module | None, x: torch.Tensor) -> Linearisation:
    with torch.no_grad():
        out, inputs = mlp.forward(x)
    mlp_params = mlp.parameters()
    n_layers, n_out, batch = len(mlp.linears), out.shape[1], out.shape[0]
    tail_params = list(tail.parameters()) if tail is not None else []
    if tail is not None:
        tail_names = [n for n, _ in tail.named_parameters()]
        with torch.enable_grad():
            tail_value, tail_pullback = vjp(lambda *t: functional_call(tail, dict(zip(tail_names, t)), ()),
                                            *(p.detach() for p in tail_params))
            _, tail_transpose = vjp(tail_pullback, torch.zeros_like(tail_value))
        y = torch.cat([out, tail_value.detach().expand(batch, -1)], dim=-1)
    else:
        y = out

    def jvp(tangents):
        jv = mlp.jvp(inputs, list(zip(tangents[0:2 * n_layers:2], tangents[1:2 * n_layers:2])))
        if tail is None:
            return jv
        t_tail = tail_transpose(tuple(tangents[2 * n_layers:]))[0]
        return torch.cat([jv, t_tail.expand(batch, -1)], dim=-1)

    def vjp_(u):
        grads = [torch.zeros_like(p) for p in mlp_params]
        mlp.backward(inputs, u[:, :n_out], into=list(zip(grads[0::2], grads[1::2])))
        if tail is not None:
            grads += [g.detach() for g in tail_pullback(u[:, n_out:].sum(0))]
        return tuple(grads)

    return Linearisation(y, mlp_params + tail_params, jvp, vjp_)
