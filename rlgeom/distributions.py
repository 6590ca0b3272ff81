"""Action distributions and their Fisher information on the distribution parameters.

The actor network outputs one flat tensor of *distribution parameters* per observation; a family
object turns it into a `torch.distributions.Distribution` and knows the analytic Fisher of the
distribution with respect to those parameters (what the Gauss-Newton Fisher-vector product needs).

| family            | parameters per sample (last dim)          | Fisher on those parameters            |
|-------------------|-------------------------------------------|---------------------------------------|
| Categorical(n)    | logits [n]                                | diag(p) - p pᵀ                        |
| MultiCategorical  | logits of every sub-space, concatenated   | block-diagonal, one block per space   |
| DiagGaussian(d)   | [mean (d), log σ (d)]                     | diag(1/σ², 2)                         |
"""

from __future__ import annotations

import abc
import math

import torch
from torch import distributions as D
from torch.distributions.kl import register_kl


class MultiCategorical(D.Distribution):
    """Independent categoricals, one per sub-space of a `MultiDiscrete` action space."""

    arg_constraints: dict = {}
    has_enumerate_support = False

    def __init__(self, logits: torch.Tensor, nvec: tuple[int, ...], validate_args=None):
        self.nvec = tuple(int(n) for n in nvec)
        self.logits = logits
        self.parts = [
            D.Categorical(logits=chunk, validate_args=False) for chunk in torch.split(logits, self.nvec, dim=-1)
        ]
        super().__init__(batch_shape=logits.shape[:-1], event_shape=(len(self.nvec),), validate_args=False)

    def sample(self, sample_shape=torch.Size()):
        return torch.stack([p.sample(sample_shape) for p in self.parts], dim=-1)

    def log_prob(self, value):
        return sum(p.log_prob(value[..., i]) for i, p in enumerate(self.parts))

    def entropy(self):
        return sum(p.entropy() for p in self.parts)

    @property
    def mode(self):
        return torch.stack([p.probs.argmax(-1) for p in self.parts], dim=-1)

    @property
    def mean(self):  # pragma: no cover - not meaningful for categorical actions, kept for the API
        return self.mode.float()


@register_kl(MultiCategorical, MultiCategorical)
def _kl_multicategorical(p: MultiCategorical, q: MultiCategorical) -> torch.Tensor:
    return sum(D.kl_divergence(a, b) for a, b in zip(p.parts, q.parts))


class ActionDistribution(abc.ABC):
    """A family of action distributions parameterised by one flat tensor per sample."""

    #: width of the parameter vector the actor must output per observation
    param_dim: int
    #: shape of one action as stored in the rollout buffer
    action_shape: tuple[int, ...]
    #: dtype of actions in the rollout buffer
    action_dtype: torch.dtype

    @abc.abstractmethod
    def distribution(self, params: torch.Tensor) -> D.Distribution:
        """The torch distribution for a batch of parameters [B, param_dim]."""

    @abc.abstractmethod
    def fisher_product(self, params: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Per-sample F_dist(params) @ v, both of shape [B, param_dim]."""

    def sample_with_log_prob(self, params: torch.Tensor, deterministic: bool = False):
        """(actions, log π(actions)) for a batch of parameters: the rollout's fast path.

        Same distribution as `distribution(params).sample()` / `.log_prob()`; families override it
        to skip building a torch Distribution object per environment step.
        """
        dist = self.distribution(params)
        actions = dist.mode if deterministic else dist.sample()
        return actions, dist.log_prob(actions)

    def log_prob_and_entropy(self, params: torch.Tensor, actions: torch.Tensor):
        """(log π(actions), H[π]) per sample, differentiable in params: the update's fast path.

        Same values as `distribution(params).log_prob(actions)` / `.entropy()`; families override it
        with the closed forms, skipping the Distribution object per minibatch.
        """
        dist = self.distribution(params)
        return dist.log_prob(actions), dist.entropy()

    def log_prob_and_entropy_vjp(self, params: torch.Tensor, actions: torch.Tensor):
        """(log π(actions), H[π], vjp) without autograd, where vjp(d_log_prob, d_entropy) is
        ∂loss/∂params [B, param_dim] given ∂loss/∂log π and ∂loss/∂H (tensors [B] or numbers).

        The update's hand-written backward (rlgeom.mlp_backprop); None for a family that does not
        write its derivative out (the caller then uses autograd).
        """
        return None

    def fisher_matrix(self, params: torch.Tensor) -> torch.Tensor:
        """Per-sample explicit Fisher [B, P, P] (slow; for tests and small analyses)."""
        eye = torch.eye(self.param_dim, dtype=params.dtype, device=params.device)
        cols = [self.fisher_product(params, eye[i].expand_as(params)) for i in range(self.param_dim)]
        return torch.stack(cols, dim=-1)


def _categorical_fisher_product(logits: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits, dim=-1)
    return p * v - p * (p * v).sum(-1, keepdim=True)


class CategoricalFamily(ActionDistribution):
    def __init__(self, n: int):
        self.n = int(n)
        self.param_dim = self.n
        self.action_shape = ()
        self.action_dtype = torch.long

    def distribution(self, params):
        return D.Categorical(logits=params, validate_args=False)

    def fisher_product(self, params, v):
        return _categorical_fisher_product(params, v)

    def sample_with_log_prob(self, params, deterministic=False):
        log_p = torch.log_softmax(params, dim=-1)
        if deterministic:
            actions = log_p.argmax(-1)
        else:  # Gumbel-max: argmax(log p - log E), E ~ Exp(1), is a draw from Categorical(p)
            actions = (log_p - torch.empty_like(log_p).exponential_().log()).argmax(-1)
        return actions, log_p.gather(-1, actions.unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def _log_p_and_entropy(params):
        """(log p over all actions, H): the closed forms both evaluation paths use."""
        # clamp: a logit at -inf would make p·log p = 0·(-inf) = NaN (torch's Categorical does the same)
        log_p = torch.log_softmax(params, dim=-1).clamp_min(torch.finfo(params.dtype).min)
        return log_p, -(log_p.exp() * log_p).sum(-1)

    def log_prob_and_entropy(self, params, actions):
        log_p, entropy = self._log_p_and_entropy(params)
        return log_p.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1), entropy

    @torch.no_grad()
    def log_prob_and_entropy_vjp(self, params, actions):
        log_p, entropy = self._log_p_and_entropy(params)
        p = log_p.exp()
        index = actions.long().unsqueeze(-1)

        def vjp(d_log_prob, d_entropy):
            # ∂ log p_a / ∂ logits = onehot(a) - p;   ∂H / ∂ logits_j = -p_j (log p_j + H)
            d_lp, d_h = _column(d_log_prob), _column(d_entropy)
            grad = -(d_lp * p) - d_h * p * (log_p + entropy.unsqueeze(-1))
            return grad.scatter_add_(-1, index, torch.as_tensor(d_lp, dtype=grad.dtype, device=grad.device)
                                     .expand_as(index))

        return log_p.gather(-1, index).squeeze(-1), entropy, vjp


def _column(d):
    """A per-sample derivative [B] as a column [B, 1] (numbers stay numbers) for broadcasting."""
    return d.unsqueeze(-1) if isinstance(d, torch.Tensor) and d.dim() == 1 else d


class MultiCategoricalFamily(ActionDistribution):
    def __init__(self, nvec):
        self.nvec = tuple(int(n) for n in nvec)
        self.param_dim = sum(self.nvec)
        self.action_shape = (len(self.nvec),)
        self.action_dtype = torch.long

    def distribution(self, params):
        return MultiCategorical(params, self.nvec)

    def fisher_product(self, params, v):
        blocks = zip(torch.split(params, self.nvec, -1), torch.split(v, self.nvec, -1))
        return torch.cat([_categorical_fisher_product(lg, vb) for lg, vb in blocks], dim=-1)


class DiagGaussianFamily(ActionDistribution):
    """Diagonal Gaussian; parameters are [mean, log σ] so its Fisher is diag(1/σ², 2)."""

    def __init__(self, action_dim: int):
        self.action_dim = int(action_dim)
        self.param_dim = 2 * self.action_dim
        self.action_shape = (self.action_dim,)
        self.action_dtype = torch.float32

    def split(self, params):
        return params[..., : self.action_dim], params[..., self.action_dim :]

    def distribution(self, params):
        mean, log_std = self.split(params)
        return D.Independent(D.Normal(mean, log_std.exp(), validate_args=False), 1, validate_args=False)

    def sample_with_log_prob(self, params, deterministic=False):
        mean, log_std = self.split(params)
        if deterministic:
            noise = torch.zeros_like(mean)
            actions = mean
        else:
            noise = torch.randn_like(mean)
            actions = mean + noise * log_std.exp()
        # log N(a; μ, σ) with (a - μ)/σ = noise, summed over the action dimensions
        log_prob = -(0.5 * noise.square() + log_std).sum(-1) - self.action_dim * _HALF_LOG_2PI
        return actions, log_prob

    def fixed_scale_sampler(self, log_std: torch.Tensor):
        """`sample_with_log_prob` for means [B, d] under one state-independent log σ [d], with σ and the
        log-density's constant computed here once: the rollout's per-step path (σ is fixed within a rollout)."""
        std = log_std.exp()
        constant = log_std.sum() + self.action_dim * _HALF_LOG_2PI

        def sample(mean: torch.Tensor, deterministic: bool = False):
            if deterministic:
                return mean, (-constant).expand(mean.shape[0]).clone()
            noise = torch.randn_like(mean)  # the same draw as sample_with_log_prob's
            return torch.addcmul(mean, noise, std), -0.5 * noise.square().sum(-1) - constant

        return sample

    def _standardised(self, params, actions):
        """(z = (a - μ)/σ, 1/σ, log π(a), H): the closed forms both evaluation paths use."""
        mean, log_std = self.split(params)
        inv_std = torch.exp(-log_std)
        z = (actions - mean) * inv_std
        log_prob = -(0.5 * z.square() + log_std).sum(-1) - self.action_dim * _HALF_LOG_2PI
        entropy = log_std.sum(-1) + self.action_dim * (0.5 + _HALF_LOG_2PI)
        return z, inv_std, log_prob, entropy

    def log_prob_and_entropy(self, params, actions):
        return self._standardised(params, actions)[2:]

    @torch.no_grad()
    def log_prob_and_entropy_vjp(self, params, actions):
        z, inv_std, log_prob, entropy = self._standardised(params, actions)

        def vjp(d_log_prob, d_entropy):
            # ∂ log π / ∂μ = z / σ,  ∂ log π / ∂ log σ = z² - 1,  ∂H / ∂ log σ = 1
            d_lp = _column(d_log_prob)
            return torch.cat([d_lp * z * inv_std, d_lp * (z.square() - 1) + _column(d_entropy)], dim=-1)

        return log_prob, entropy, vjp

    def fisher_product(self, params, v):
        _, log_std = self.split(params)
        v_mean, v_log_std = self.split(v)
        return torch.cat([v_mean * torch.exp(-2.0 * log_std), 2.0 * v_log_std], dim=-1)


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def family_for_space(action_space) -> ActionDistribution:
    """The distribution family for a Gymnasium action space (Discrete, MultiDiscrete, Box)."""
    from gymnasium import spaces

    if isinstance(action_space, spaces.Discrete):
        return CategoricalFamily(action_space.n)
    if isinstance(action_space, spaces.MultiDiscrete):
        if action_space.nvec.ndim != 1:
            raise ValueError(f"MultiDiscrete action spaces must be 1-D, got nvec shape {action_space.nvec.shape}")
        return MultiCategoricalFamily(action_space.nvec.tolist())
    if isinstance(action_space, spaces.Box):
        if len(action_space.shape) != 1:
            raise ValueError(f"Box action spaces must be 1-D, got shape {action_space.shape}")
        return DiagGaussianFamily(action_space.shape[0])
    raise ValueError(
        f"unsupported action space {action_space!r}; accepted: Discrete, MultiDiscrete, 1-D Box"
    )

