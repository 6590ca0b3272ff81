"""Natural policy gradient (Kakade 2001; with GAE and CG as in Schulman et al. 2015/2016).

    for iteration = 1, 2, ...
        collect n_steps × n_envs transitions with π_old; compute GAE advantages Â and returns R
        g = ∇_θ L(θ_old),  L(θ) = E[π_θ(a|s) / π_old(a|s) Â]
        x ≈ (F + λI)⁻¹ g by conjugate gradient on Fisher-vector products
        θ ← θ_old + √(2δ / xᵀFx) · x                     (a fixed KL radius δ, no line search)
        fit V_φ to R: n_critic_updates epochs of minibatch regression
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.base import OnPolicyAgent
from agents.critic import critic_optimizer
from agents.natural import (
    NaturalGradientConfig, fit_critic, geometry_telemetry, natural_direction, surrogate_stats,
)
from rlgeom.fisher import assign_flat_parameters, flat_parameters
from rlgeom.schedules import schedule_value


@dataclass
class NPGConfig(NaturalGradientConfig):
    """NPG's hyperparameters: those of TRPO without the line search."""


class NPG(OnPolicyAgent):
    Config = NPGConfig
    algo = "npg"
    needs_separate_networks = True

    def _setup(self) -> None:
        self.critic_optimizer = critic_optimizer(self.policy, schedule_value(self.config.learning_rate, 1.0))

    def update(self, buffer, progress_remaining: float) -> dict:
        cfg = self.config
        batch = buffer.full_batch(cfg.normalize_advantage)
        direction = natural_direction(self.policy, batch, cfg, self.generator)
        direction.guard()  # a non-finite gradient, FVP or CG result never reaches the parameters
        params = direction.fisher.parameters
        if direction.step.valid:  # invalid only for zero curvature (e.g. g = 0): then stay put
            assign_flat_parameters(params, flat_parameters(params) + direction.step.step)
        stats = fit_critic(self, buffer, progress_remaining)  # fit V_φ to R
        stats.update(surrogate_stats(direction, buffer))
        stats.update(geometry_telemetry(direction, float(direction.step.valid), cfg.cg_damping))
        return stats

