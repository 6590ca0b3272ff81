"""Trust region policy optimisation (Schulman et al. 2015).

    for iteration = 1, 2, ...
        collect n_steps × n_envs transitions with π_old; compute GAE advantages Â and returns R
        g = ∇_θ L(θ_old),  L(θ) = E[π_θ(a|s) / π_old(a|s) Â]
        x ≈ (F + λI)⁻¹ g by conjugate gradient on Fisher-vector products      (NPG's direction)
        s = √(2δ / xᵀFx) · x
        for j = 0, 1, ..., line_search_max_iter:                             (backtracking line search)
            θ = θ_old + βʲ s;  accept if L(θ) > L(θ_old) and mean KL(π_old ‖ π_θ) ≤ δ
        if nothing was accepted: θ = θ_old
        fit V_φ to R: n_critic_updates epochs of minibatch regression

The loop around the step (direction, critic fit, telemetry) is agents.natural.NaturalGradientAgent;
this file is the step rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlgeom.agents import config as c
from rlgeom.agents.config import hp
from rlgeom.agents.natural import NaturalDirection, NaturalGradientAgent, NaturalGradientConfig
from rlgeom.geometry.fisher import backtracking_line_search


@dataclass
class TRPOConfig(NaturalGradientConfig):
    """TRPO's hyperparameters (sb3-contrib's names and defaults; δ = 0.01, backtracking × 0.8 ≤ 10)."""

    line_search_shrinking_factor: float = hp(0.8, "β: each backtrack multiplies the step by this")
    line_search_max_iter: int = hp(10, "backtracks before the step is rejected")

    def validate(self, n_envs: int) -> None:
        super().validate(n_envs)
        c.in_range(self, "line_search_shrinking_factor", 1e-6, 1 - 1e-6)
        c.positive_int(self, "line_search_max_iter")


class TRPO(NaturalGradientAgent):
    Config = TRPOConfig
    algo = "trpo"

    def take_step(self, direction: NaturalDirection) -> tuple[float, dict]:
        """θ = θ_old + βʲ s for the first j whose surrogate improves within the KL radius, else θ_old."""
        cfg = self.config
        valid = direction.step.valid
        backtracks, accepted, fraction = 0, False, 0.0
        # syncless (the compiled path): `valid` is a device tensor, not read; an invalid step is zeros, whose
        # trials improve nothing and are rejected, so θ_old stays
        if self.compiler.syncless or valid:
            search = backtracking_line_search(
                direction.fisher.parameters, direction.step.step, direction.improvement_and_kl,
                max_kl=cfg.max_kl, expected_improvement=direction.step.expected_improvement,
                backtrack_coef=cfg.line_search_shrinking_factor, max_backtracks=cfg.line_search_max_iter,
                syncless=self.compiler.syncless,
            )
            backtracks, accepted, fraction = search.backtracks, search.accepted, search.step_fraction
        if isinstance(accepted, torch.Tensor):
            return fraction, {
                "geometry/line_search_backtracks": torch.where(valid, backtracks, 0),
                "geometry/line_search_accepted": accepted.float(),
                "geometry/line_search_rejected": (valid & ~accepted).float(),
            }
        return fraction, {
            "geometry/line_search_backtracks": backtracks,
            "geometry/line_search_accepted": float(accepted),
            "geometry/line_search_rejected": float(valid and not accepted),
        }
