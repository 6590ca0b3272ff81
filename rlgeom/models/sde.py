"""Generalized state-dependent exploration, gSDE (Raffin et al. 2021, "Smooth Exploration for Robotic
Reinforcement Learning"), as SB3's `use_sde` offers it.

The action noise is a linear function of the actor's last hidden features φ(s) (taken without their
gradient, SB3's `learn_features=False`) through an exploration matrix E drawn every
`sde_sample_freq` steps (and at each rollout's start), one per env:

    a = μ(s) + φ(s) E,   E_ij ~ N(0, σ_ij²),   σ = exp(log_std)  (or expln(log_std), `use_expln`)

For a fixed E the noise is a smooth function of s (no per-step jitter); over E, a given s sees
a ~ N(μ(s), diag(σ(s)²)) with σ_j(s)² = Σ_i φ_i(s)² σ_ij² (+ 1e-6, SB3's ε). That Gaussian is the
policy every update differentiates: its parameters [μ(s), log σ(s)] go to DiagGaussianFamily, so its
log-density, entropy, KL and Fisher diag(1/σ², 2) are the family's, written once; only the scale is
state-dependent (so a gSDE actor takes the autograd / torch.func path, never the written-out MLP one).

`full_std=False` shares one σ_i per feature across the action dimensions (log_std [latent, 1]).
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: added to σ(s)² (SB3's StateDependentNoiseDistribution.epsilon): keeps log σ finite when φ(s) = 0
VARIANCE_EPSILON = 1e-6


class StateDependentScale(nn.Module):
    """log σ(s) of gSDE from the features φ(s), and the exploration matrices that draw its noise."""

    state_dependent = True

    def __init__(self, latent_dim: int, action_dim: int, log_std_init: float = 0.0, full_std: bool = True,
                 use_expln: bool = False):
        super().__init__()
        if not math.isfinite(log_std_init):
            raise ValueError(f"log_std_init must be finite, got {log_std_init}")
        self.latent_dim, self.action_dim = int(latent_dim), int(action_dim)
        self.full_std, self.use_expln = bool(full_std), bool(use_expln)
        self.log_std = nn.Parameter(torch.full((self.latent_dim, self.action_dim if full_std else 1),
                                               float(log_std_init)))
        # drawn by reset_noise: one matrix for a single observation, one per env for a batch of n_envs
        self.exploration_matrix: torch.Tensor | None = None
        self.exploration_matrices: torch.Tensor | None = None

    def std(self) -> torch.Tensor:
        """σ [latent, action_dim]: exp(log_std), or expln (exp below 0, log1p(x) + 1 above: grows slowly)."""
        log_std = self.log_std
        if self.use_expln:
            below = torch.exp(log_std.clamp_max(0.0))
            above = torch.log1p(log_std.clamp_min(0.0) + VARIANCE_EPSILON) + 1.0  # SB3's expln adds its ε here too
            std = torch.where(log_std <= 0, below, above)
        else:
            std = log_std.exp()
        return std if self.full_std else std.expand(self.latent_dim, self.action_dim)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """log σ(s) [B, action_dim] from the features φ(s) [B, latent] (their gradient stopped)."""
        variance = (latent.detach() ** 2) @ (self.std() ** 2)
        return 0.5 * torch.log(variance + VARIANCE_EPSILON)

    @torch.no_grad()
    def reset_noise(self, n_envs: int = 1) -> None:
        """Draw new exploration matrices E ~ N(0, σ²): one, and one per env (the rollout's)."""
        std = self.std()
        self.exploration_matrix = torch.randn_like(std) * std
        self.exploration_matrices = torch.randn((n_envs, *std.shape), dtype=std.dtype, device=std.device) * std

    def noise(self, latent: torch.Tensor) -> torch.Tensor:
        """φ(s) E [B, action_dim]: row b uses env b's matrix when the batch is the rollout's n_envs,
        else the single matrix (a user's predict on any batch)."""
        if self.exploration_matrix is None or self.exploration_matrix.device != latent.device:
            self.reset_noise(latent.shape[0])
        latent = latent.detach()
        matrices = self.exploration_matrices
        if latent.shape[0] != 1 and latent.shape[0] == matrices.shape[0]:
            return torch.bmm(latent.unsqueeze(1), matrices).squeeze(1)
        return latent @ self.exploration_matrix
