"""Running observation normalisation, kept as module buffers so it is saved with the weights."""

from __future__ import annotations

import torch
from torch import nn

from rlgeom.data.buffer import reverse_linear_scan
from rlgeom.training import distributed


class RunningNormalizer(nn.Module):
    """(x - mean) / sqrt(var + eps), clipped; statistics merged batch-wise (Chan et al.).

    Statistics change only through `update` (the agent calls it once per rollout, after the
    update), so log-probabilities stored during a rollout and recomputed in the update agree.
    """

    def __init__(self, shape: tuple[int, ...], clip: float = 10.0, eps: float = 1e-8, enabled: bool = True,
                 mask: torch.Tensor | None = None):
        super().__init__()
        self.clip, self.eps, self.enabled = clip, eps, enabled
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(0.0, dtype=torch.float64))
        # entries to normalise (None: all); others pass through unchanged (a Dict's images and discrete keys).
        # Derived from the space, so not saved with the weights.
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.frozen()(x)

    def frozen(self, dtype: torch.dtype = torch.float32):
        """x ↦ the normalised x with the current statistics taken once (for a rollout, during which
        they do not change): the one normalisation formula, `forward` included."""
        if not self.enabled:
            return _identity
        mean, inv_std = self.mean.to(dtype), torch.rsqrt(self.var + self.eps).to(dtype)
        clip, mask = self.clip, self.mask
        if mask is not None:
            return lambda x: torch.where(mask, torch.clamp((x - mean) * inv_std, -clip, clip), x.to(dtype))
        return lambda x: torch.clamp((x - mean) * inv_std, -clip, clip)

    @torch.no_grad()
    def update(self, batch: torch.Tensor) -> None:
        if not self.enabled:
            return
        batch = batch.reshape(-1, *self.mean.shape).to(torch.float64)
        b_mean, b_var, n = distributed.moments(batch)  # every rank's rollout under torchrun
        total = self.count + n
        delta = b_mean - self.mean
        m2 = self.var * self.count + b_var * n + delta.pow(2) * self.count * n / total
        self.mean.add_(delta * n / total)
        self.var.copy_(m2 / total)
        self.count.copy_(total)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class RewardScaler(nn.Module):
    """Divide rewards by the running std of the discounted return (what SB3's VecNormalize does).

    Applied to a whole rollout at once before GAE; the logged episode returns stay unscaled.
    """

    def __init__(self, gamma: float, clip: float = 10.0, eps: float = 1e-8):
        super().__init__()
        self.gamma, self.clip, self.eps = gamma, clip, eps
        self.return_stats = RunningNormalizer(())
        self._discounted: torch.Tensor | None = None  # per-env running return, carried across rollouts

    @torch.no_grad()
    def scale_rollout(self, rewards: torch.Tensor, dones: torch.Tensor) -> torch.Tensor:
        if self._discounted is None or self._discounted.shape != rewards.shape[1:]:
            self._discounted = torch.zeros_like(rewards[0])
        keep = (~dones).to(rewards.dtype)  # a finished episode's return restarts from 0
        # G_t = r_t + γ keep_{t-1} G_{t-1}, G_{-1} the return carried from the last rollout: the same linear
        # recurrence as GAE's, forward in time, so its scan over the time-reversed rollout
        start = rewards.clone()
        start[0] += self.gamma * self._discounted
        carry = torch.cat([torch.zeros_like(keep[:1]), self.gamma * keep[:-1]])
        seen = reverse_linear_scan(start.flip(0), carry.flip(0)).flip(0)
        self._discounted = seen[-1] * keep[-1]
        self.return_stats.update(seen.reshape(-1))
        std = torch.sqrt(self.return_stats.var + self.eps).to(rewards.dtype)
        return torch.clamp(rewards / std, -self.clip, self.clip)
