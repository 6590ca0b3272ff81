"""What NPG and TRPO share: their hyperparameters, the natural-gradient direction on the policy
surrogate, its geometry telemetry, and the update around the step (`NaturalGradientAgent`). Each
agent file then adds only its step rule, `take_step`."""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch

from rlgeom.agents import config as c
from rlgeom.agents.base import OnPolicyAgent
from rlgeom.agents.config import OnPolicyConfig, hp
from rlgeom.agents.critic import critic_optimizer, explained_variance, fit_value_function
from rlgeom.data.buffer import Batch
from rlgeom.geometry.fisher import FVP_METHODS, NaturalStep, PolicyFisher, natural_step, predicted_kl, surrogate_advantage
from rlgeom.models.parameters import flat_gradient
from rlgeom.training import distributed
from rlgeom.training.guards import guard_finite, read_stats
from rlgeom.training.schedules import schedule_value


@dataclass
class NaturalGradientConfig(OnPolicyConfig):
    """Hyperparameters of the natural-gradient agents (sb3-contrib TRPO's names and defaults)."""

    max_kl: float = hp(0.01, "δ: the KL(π_old‖π_new) radius of each policy step")
    cg_max_steps: int = hp(15, "conjugate-gradient iterations for F⁻¹g")
    cg_damping: float = hp(0.1, "λ in (F + λI): keeps CG well conditioned")
    cg_tolerance: float = hp(1e-10, "CG stops when the squared residual falls below this")
    fisher_method: str = hp("gauss_newton", "Fisher-vector products: gauss_newton (JᵀF_dist J) or kl_hessian")
    sub_sampling_factor: int = hp(1, "use 1/k of the batch for Fisher-vector products (TRPO paper: 10)")
    learning_rate: float | dict = hp(1e-3, "the critic's Adam step size (the policy step is set by max_kl)")
    n_critic_updates: int = hp(10, "epochs of critic regression per update")
    batch_size: int = hp(128, "critic minibatch size; must divide n_steps * n_envs")

    def validate(self, n_envs: int) -> None:
        super().validate(n_envs)
        c.positive(self, "max_kl")
        c.positive_int(self, "cg_max_steps")
        c.non_negative(self, "cg_damping")
        c.positive(self, "cg_tolerance")
        if self.fisher_method not in FVP_METHODS:
            raise ValueError(f"fisher_method must be one of {', '.join(FVP_METHODS)}, got {self.fisher_method!r}")
        c.positive_int(self, "sub_sampling_factor")
        c.schedule(self, "learning_rate")
        c.positive_int(self, "n_critic_updates")
        c.divides(self, "batch_size", self.n_steps * n_envs, "the rollout size n_steps * n_envs")


def surrogate(fisher: PolicyFisher, batch: Batch, current_dist_params: torch.Tensor | None = None) -> torch.Tensor:
    """L(θ) = E[π_θ(a|s) / π_old(a|s) Â] at the actor's current parameters (pass `current_dist_params`
    = actor(inputs) to reuse a forward pass). On this rank's batch: under torchrun, reduce it with
    rlgeom.training.distributed.mean (its gradient likewise)."""
    params = fisher.actor(fisher.inputs) if current_dist_params is None else current_dist_params
    return surrogate_advantage(fisher.family.log_prob(params, batch.actions), batch.old_log_probs, batch.advantages)


@dataclass
class NaturalDirection:
    """The pieces of one natural-gradient step on the surrogate L."""

    fisher: PolicyFisher
    batch: Batch
    gradient: torch.Tensor  # g = ∇_θ L at θ_old
    step: NaturalStep  # x = F⁻¹g by CG, scaled to the KL radius
    surrogate_before: torch.Tensor  # L(θ_old)

    def guard(self) -> None:
        """Raise SkippedUpdate (the base agent rolls back and counts it) on a non-finite g, x or xᵀFx."""
        guard_finite(policy_gradient=self.gradient, cg_solution=self.step.direction,
                     fisher_quadratic_form=self.step.quadratic_form)

    def improvement_and_kl(self, current_dist_params: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(L(θ) - L(θ_old), mean KL(π_old ‖ π_θ)) at the current parameters, from one forward pass:
        the line search's test."""
        current = self.fisher.actor(self.fisher.inputs) if current_dist_params is None else current_dist_params
        improvement = distributed.mean(surrogate(self.fisher, self.batch, current)) - self.surrogate_before
        return improvement, self.fisher.mean_kl(current)


def natural_direction(policy, batch: Batch, cfg: NaturalGradientConfig, generator: torch.Generator,
                      syncless: bool = False) -> NaturalDirection:
    """g = ∇L(θ_old); x = CG(F + λI, g); step = √(2δ / xᵀFx)·x (rlgeom.geometry.fisher does the maths;
    `syncless`: CG without host syncs, the compiled path's)."""
    fisher = PolicyFisher(
        policy.actor, policy.family, policy.actor_inputs(batch.obs), damping=cfg.cg_damping,
        method=cfg.fisher_method, subsample=1.0 / cfg.sub_sampling_factor, generator=generator,
        written_out=cfg.written_out_derivatives,
    )
    objective = surrogate(fisher, batch)
    gradient = distributed.mean(flat_gradient(objective, fisher.parameters))  # every rank's batch (torchrun)
    with fisher.linearised():  # θ is fixed during CG: every product reuses one forward pass
        step = natural_step(gradient, fisher.fvp, cfg.max_kl, cfg.cg_max_steps, cfg.cg_tolerance, syncless=syncless)
    return NaturalDirection(fisher, batch, gradient, step, distributed.mean(objective.detach()))


@torch.no_grad()
def geometry_telemetry(direction: NaturalDirection, step_fraction: float, damping: float,
                       current_dist_params: torch.Tensor) -> dict[str, float]:
    """geometry/ tags for the step θ_old + step_fraction · s actually taken (`current_dist_params`:
    the actor's output at the parameters after the step).

    The quadratic model predicts KL ≈ ½ (f s)ᵀ F(θ_old) (f s); F at θ_old comes for free from CG:
    sᵀFs = scale² (xᵀ(F+λI)x − λ‖x‖²), since s = scale · x and q = xᵀ(F+λI)x was already computed.
    """
    fisher, g, x, ns = direction.fisher, direction.gradient, direction.step.direction, direction.step
    kl = fisher.mean_kl(current_dist_params)
    scale = step_fraction * ns.step.norm() / x.norm().clamp_min(1e-30)
    predicted = predicted_kl(ns.quadratic_form - damping * x.dot(x), scale)
    cosine = torch.dot(g, x) / (g.norm() * x.norm()).clamp_min(1e-30)
    return {
        "geometry/kl": kl,
        "geometry/kl_max_sample": fisher.max_kl(current_dist_params),  # not δ (the hyperparameter max_kl)
        "geometry/quadratic_model_ratio": torch.where(predicted > 0, kl / predicted, torch.full_like(kl, float("nan"))),
        "geometry/cg_iterations": ns.cg.iterations,
        "geometry/cg_residual": ns.cg.residual_norm,
        "geometry/step_norm": step_fraction * ns.step.norm(),
        "geometry/gradient_norm": g.norm(),
        "geometry/natural_vanilla_cosine": cosine,
    }


def fit_critic(agent, buffer, progress_remaining: float) -> dict:
    """Fit V_φ to the returns (n_critic_updates epochs, critic optimiser only); its train/ tags."""
    cfg = agent.config
    lr = schedule_value(cfg.learning_rate, progress_remaining)
    for group in agent.critic_optimizer.param_groups:
        group["lr"] = lr
    value_loss = fit_value_function(
        agent.policy, agent.critic_optimizer, buffer, cfg.n_critic_updates, cfg.batch_size, agent.generator,
        agent.compiler,
    )
    guard_finite(value_loss=value_loss)
    return {"train/value_loss": value_loss, "train/learning_rate": lr}


@torch.no_grad()
def surrogate_stats(direction: NaturalDirection, buffer, current_dist_params: torch.Tensor) -> dict:
    """train/ tags of the policy step: surrogate improvement, entropy, the critic's explained variance."""
    improvement, _ = direction.improvement_and_kl(current_dist_params)
    return {
        "train/policy_improvement": improvement,
        "train/entropy_loss": -direction.fisher.entropy(current_dist_params),
        "train/explained_variance": explained_variance(buffer.values.flatten(), buffer.returns.flatten()),
    }


class NaturalGradientAgent(OnPolicyAgent):
    """NPG and TRPO: natural direction on the surrogate, the agent's step rule, then fit V_φ.

        g, x, s = natural_direction(...)       (guarded: nothing non-finite reaches θ)
        θ ← take_step(...)                     (NPG: θ_old + s; TRPO: the line search along s)
        fit V_φ to R
    """

    needs_separate_networks = True

    def _setup(self) -> None:
        # sb3-contrib's TRPO (the peer) fits its critic with SB3's policy Adam, eps 1e-5 (issue 29: with torch's
        # 1e-8 the critic's step differed from the peer's by 0.6-1.7% per update; experiments/trpo_adam_eps.py)
        self.critic_optimizer = critic_optimizer(self.policy, schedule_value(self.config.learning_rate, 1.0),
                                                 default_eps=1e-5)

    def update(self, buffer, progress_remaining: float) -> dict:
        cfg = self.config
        batch = buffer.full_batch(cfg.normalize_advantage)
        direction = natural_direction(self.policy, batch, cfg, self.generator, syncless=self.compiler.syncless)
        direction.guard()  # a non-finite gradient, FVP or CG result never reaches the parameters
        step_fraction, step_stats = self.take_step(direction)
        stats = fit_critic(self, buffer, progress_remaining)  # fit V_φ to R
        with torch.no_grad():  # the policy after its step, one forward pass for all its statistics
            after = direction.fisher.actor(direction.fisher.inputs)
        stats.update(surrogate_stats(direction, buffer, after))
        stats.update(geometry_telemetry(direction, step_fraction, cfg.cg_damping, after))
        stats.update(step_stats)
        return read_stats(stats)  # one host transfer for every statistic

    @abc.abstractmethod
    def take_step(self, direction: NaturalDirection) -> tuple[float, dict]:
        """Move θ along `direction.step.step`; returns (fraction of the step taken, extra train/ tags)."""
