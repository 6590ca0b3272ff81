"""Natural policy gradient (Kakade 2001; with GAE and CG as in Schulman et al. 2015/2016).

    for iteration = 1, 2, ...
        collect n_steps × n_envs transitions with π_old; compute GAE advantages Â and returns R
        g = ∇_θ L(θ_old),  L(θ) = E[π_θ(a|s) / π_old(a|s) Â]
        x ≈ (F + λI)⁻¹ g by conjugate gradient on Fisher-vector products
        θ ← θ_old + √(2δ / xᵀFx) · x                     (a fixed KL radius δ, no line search)
        fit V_φ to R: n_critic_updates epochs of minibatch regression

The loop around the step (direction, critic fit, telemetry) is agents.natural.NaturalGradientAgent;
this file is the step rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlgeom.agents.natural import NaturalDirection, NaturalGradientAgent, NaturalGradientConfig
from rlgeom.models.parameters import assign_flat_parameters, flat_parameters


@dataclass
class NPGConfig(NaturalGradientConfig):
    """NPG's hyperparameters: those of TRPO without the line search."""


class NPG(NaturalGradientAgent):
    Config = NPGConfig
    algo = "npg"

    def take_step(self, direction: NaturalDirection) -> tuple[float, dict]:
        """θ ← θ_old + s, the whole natural step (invalid only for zero curvature, e.g. g = 0: stay put)."""
        valid = direction.step.valid
        # syncless (the compiled path, as TRPO's): `valid` is a device tensor, not read; an invalid step is zeros
        if not self.compiler.syncless and not valid:
            return 0.0, {}
        params = direction.fisher.parameters
        assign_flat_parameters(params, flat_parameters(params) + direction.step.step)
        return (valid.float() if self.compiler.syncless else 1.0), {}
