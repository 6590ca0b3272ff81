"""Fitting the value function V_φ to the λ-returns: shared by VPG, NPG and TRPO."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from rlgeom.data.buffer import RolloutBuffer
from rlgeom.training import distributed
from rlgeom.training.compiled import Compiler, eager
from rlgeom.training.optim import make_optimizer


def critic_optimizer(policy, learning_rate: float, default_eps: float | None = None) -> torch.optim.Optimizer:
    """Adam (eps `default_eps`, else torch's), or the policy_kwargs' optimizer_class, over the critic's parameters
    only (the actor is moved by its own rule)."""
    return make_optimizer(policy.critic_parameters(), learning_rate, policy.optimizer_class, policy.optimizer_kwargs,
                          default_eps=default_eps)


def value_loss(policy, obs: torch.Tensor, returns: torch.Tensor, written_out: bool | None = None) -> torch.Tensor:
    """The critic's regression loss E[(V(s) − R)²] on a minibatch (the function the compiled path compiles)."""
    return F.mse_loss(policy.outputs(obs, actor=False, written_out=written_out).values, returns)


def fit_value_function(
    policy, optimizer: torch.optim.Optimizer, buffer: RolloutBuffer, n_epochs: int, batch_size: int,
    generator: torch.Generator, compiler: Compiler | None = None,
) -> torch.Tensor:
    """n_epochs of minibatch regression of V(s) on the returns; the mean loss of the last epoch (NaN if any
    minibatch loss was not finite). `compiler`: the agent's (rlgeom.training.compiled), which compiles
    `value_loss` when compile is on.

    The optimiser holds only critic parameters, so this never moves the policy.
    """
    compiler = compiler or eager()
    make = lambda: functools.partial(value_loss, policy, written_out=compiler.written_out)  # noqa: E731
    losses = []
    for _ in range(n_epochs):
        for batch in buffer.minibatches(batch_size, generator):
            optimizer.zero_grad(set_to_none=True)
            loss = compiler.call(f"value_loss{id(policy)}", make, batch.obs, batch.returns)
            loss.backward()
            distributed.average_gradients(policy.critic_parameters())  # torchrun: every rank's minibatch
            optimizer.step()
            losses.append(compiler.keep(loss.detach()))
    losses = torch.stack(losses)
    last_epoch = losses[-(len(losses) // n_epochs):].mean()
    # a non-finite loss in any epoch makes the result NaN, so the caller's guard rolls the update back
    return torch.where(losses.isfinite().all(), last_epoch, torch.nan)


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """1 - Var[returns - values] / Var[returns] (SB3's train/explained_variance)."""
    var = returns.var(correction=0)  # population variances, as SB3's np.var (the ratio is the same either way)
    return torch.where(var > 0, 1 - (returns - values).var(correction=0) / var, torch.full_like(var, float("nan")))
