"""How a network's derivatives are computed: the one switchable layer between autograd and the
derivatives written out for plain MLPs.

Every update in rlgeom differentiates through a network in exactly two ways:

| need                                  | function                    | gives                                         |
|---------------------------------------|-----------------------------|-----------------------------------------------|
| a first-order loss L(outputs)         | `differentiable_outputs`    | outputs y = f(x) on autograd's graph: `L.backward()` as usual |
| Fisher products Jᵀ F_dist J v         | `linearise`                 | y, the trainable parameters, `jvp(v) = J v`, `vjp(u) = Jᵀ u`  |

The losses (PPO's, the critic's MSE, the log-densities of rlgeom.models.distributions) are always
differentiated by autograd: they are written once, in the agent and the family, and nowhere else.
What may be written out is only the network's own part, for a module that declares itself a plain
MLP (`written_out_form()`, see below): rlgeom.models.mlp_backprop.PlainMLP's forward, backward and jvp, a
few matrix products per layer and no per-layer graph nodes, about twice as fast per minibatch on a CPU.
For losses the written-out forward and backward are ONE node of autograd's graph (`WrittenOutMLP`, a
torch.autograd.Function): autograd differentiates the loss down to the network's outputs, the node
carries ∂L/∂y through the network, and autograd accumulates ∂L/∂θ into `.grad` (running gradient hooks;
a network with a frozen parameter takes its modules). So any loss a user builds on the outputs backpropagates exactly as through
the modules; a double backward (create_graph=True) recomputes the layers on autograd's graph. Everything
else (CNNs, features extractors, any custom module) takes autograd and torch.func: `differentiable_outputs`
is then just `f(x)`, and `linearise` builds y's pullback once with torch.func.vjp and J v as the
pullback's own transpose.

What the written-out form does not do: call the layers as modules, so forward hooks registered on the
MLP's own Linear layers do not run on the update's evaluation (rlgeom's K-FAC asks for `written_out=False`;
a user's hooks need the agent's `written_out_derivatives=False`). torch keeps no public way to ask a
module whether it has hooks, so this is a documented rule, not a check.

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


def _written_out(module: nn.Module, x: torch.Tensor | None, enabled: bool):
    """(PlainMLP, tail) if the written-out form applies to `module` on input `x` (None: any 2-D input),
    else None. The one place that decides it, for gradients, Jacobian products and inference alike.
    Every parameter must be trained (the Jacobian products are over all of them, as torch.func's over
    the trainable ones)."""
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
        cached = module.__dict__["_written_out_check"] = (mlp, tail, covers, expected)
    _, _, covers, expected = cached
    if not covers or not all(p.requires_grad for p in expected):
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
    found = _written_out(module, None, written_out)
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
    found = [_written_out(m, None, written_out) for m in (first, second)]
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


class WrittenOutMLP(torch.autograd.Function):
    """(mlp(x) for mlp in mlps) by PlainMLP's forward, with PlainMLP's gradients as the backward: ONE graph node
    for all the networks on one input (PPO's actor and critic) in place of a node per layer.
    `apply(mlps, x, *params)`, params being every mlp's `parameters()` in turn; returns a tuple of outputs."""

    @staticmethod
    def forward(ctx, mlps: tuple[PlainMLP, ...], x: torch.Tensor, *params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        results = [mlp.forward(x) for mlp in mlps]
        ctx.mlps, ctx.inputs = mlps, [inputs for _, inputs in results]
        ctx.save_for_backward(x, *params)  # autograd's check that nothing changed them in place before backward
        ctx.set_materialize_grads(False)  # an output the loss does not use gives its parameters no gradient
        return tuple(out for out, _ in results)

    @staticmethod
    def backward(ctx, *grad_outputs: torch.Tensor | None):
        x, *params = ctx.saved_tensors
        needs_x, needs = ctx.needs_input_grad[1], ctx.needs_input_grad[2:]
        used = [(k, g) for k, g in enumerate(grad_outputs) if g is not None]
        if torch.is_grad_enabled():  # create_graph=True: differentiate the layers' own graph, so it can be again
            wanted = [t for t, n in zip([x, *params], (needs_x, *needs)) if n]
            outs = [ctx.mlps[k].module_forward(x) for k, _ in used]
            found = iter(torch.autograd.grad(outs, wanted, [g for _, g in used], create_graph=True, allow_unused=True))
            return (None, *(next(found) if n else None for n in (needs_x, *needs)))
        grads: list[torch.Tensor | None] = []
        grad_x = None
        for k, mlp in enumerate(ctx.mlps):
            if grad_outputs[k] is None:
                grads += [None] * (2 * len(mlp.linears))
                continue
            mine, mine_x = mlp.gradients(ctx.inputs[k], grad_outputs[k], input_gradient=needs_x)
            grads += mine
            grad_x = mine_x if grad_x is None else grad_x + mine_x
        return (None, grad_x, *(g if n else None for g, n in zip(grads, needs)))


def differentiable_outputs(modules: Sequence[nn.Module], x: torch.Tensor, written_out: bool = True) -> list[torch.Tensor]:
    """[module(x) for module in modules] on autograd's graph, ready for any loss: each module itself, or for
    those where the written-out form applies, their MLPs as one `WrittenOutMLP` node (and a state-independent
    tail, a handful of elements, on autograd's graph as it is). `loss.backward()` then fills every
    parameter's `.grad`."""
    forms = [_written_out(module, x, written_out) for module in modules]
    fast = [k for k, form in enumerate(forms) if form is not None]
    outputs = [module(x) if form is None else None for module, form in zip(modules, forms)]
    if fast:
        mlps = tuple(forms[k][0] for k in fast)
        for k, out in zip(fast, WrittenOutMLP.apply(mlps, x, *(p for mlp in mlps for p in mlp.parameters()))):
            tail = forms[k][1]
            outputs[k] = out if tail is None else _with_tail(out, tail())
    return outputs


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
        grads, _ = mlp.gradients(inputs, u[:, :n_out])
        if tail is not None:
            grads += [g.detach() for g in tail_pullback(u[:, n_out:].sum(0))]
        return tuple(grads)

    return Linearisation(y, mlp_params + tail_params, jvp, vjp_)
