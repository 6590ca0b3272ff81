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

import numpy as np
import torch
import torch.nn.functional as F
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
    """A family of action distributions parameterised by one flat tensor per sample.

    Each family writes its log-density and entropy once (`log_prob`, `entropy`: closed forms,
    differentiable in the parameters); every rlgeom update and the rollout use them. `distribution()`
    gives the equivalent torch Distribution for users and for torch's KL registry (rlgeom.geometry.fisher.policy_kl).
    """

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
    def log_prob(self, params: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log π(actions) per sample [B]."""

    @abc.abstractmethod
    def entropy(self, params: torch.Tensor) -> torch.Tensor:
        """H[π] per sample [B]."""

    @abc.abstractmethod
    def sample(self, params: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Actions drawn from π (its mode when deterministic), shaped [B, *action_shape]."""

    @abc.abstractmethod
    def fisher_product(self, params: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Per-sample F_dist(params) @ v, both of shape [B, param_dim]."""

    def fisher_matrix(self, params: torch.Tensor) -> torch.Tensor:
        """Per-sample explicit Fisher [B, P, P] (slow; for tests and small analyses)."""
        eye = torch.eye(self.param_dim, dtype=params.dtype, device=params.device)
        cols = [self.fisher_product(params, eye[i].expand_as(params)) for i in range(self.param_dim)]
        return torch.stack(cols, dim=-1)


def _categorical_fisher_product(logits: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits, dim=-1)
    return p * v - p * (p * v).sum(-1, keepdim=True)


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    # clamp: a logit at -inf would make p·log p = 0·(-inf) = NaN in the entropy (torch's Categorical does the same)
    return torch.log_softmax(logits, dim=-1).clamp_min(torch.finfo(logits.dtype).min)


def _categorical_sample(logits: torch.Tensor, deterministic: bool) -> torch.Tensor:
    if deterministic:
        return logits.argmax(-1)
    # Gumbel-max: argmax(log p - log E), E ~ Exp(1), is a draw from Categorical(softmax(logits))
    return (torch.log_softmax(logits, dim=-1) - torch.empty_like(logits).exponential_().log()).argmax(-1)


class CategoricalFamily(ActionDistribution):
    def __init__(self, n: int):
        self.n = int(n)
        self.param_dim = self.n
        self.action_shape = ()
        self.action_dtype = torch.long

    def distribution(self, params):
        return D.Categorical(logits=params, validate_args=False)

    def log_prob(self, params, actions):
        return _log_softmax(params).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self, params):
        log_p = _log_softmax(params)
        return -(log_p.exp() * log_p).sum(-1)

    def sample(self, params, deterministic=False):
        return _categorical_sample(params, deterministic)

    def fisher_product(self, params, v):
        return _categorical_fisher_product(params, v)


class MultiCategoricalFamily(ActionDistribution):
    def __init__(self, nvec):
        self.nvec = tuple(int(n) for n in nvec)
        self.param_dim = sum(self.nvec)
        self.action_shape = (len(self.nvec),)
        self.action_dtype = torch.long
        self._parts = [CategoricalFamily(n) for n in self.nvec]

    def _split(self, params):
        return torch.split(params, self.nvec, dim=-1)

    def distribution(self, params):
        return MultiCategorical(params, self.nvec)

    def log_prob(self, params, actions):
        return sum(f.log_prob(p, actions[..., i]) for i, (f, p) in enumerate(zip(self._parts, self._split(params))))

    def entropy(self, params):
        return sum(f.entropy(p) for f, p in zip(self._parts, self._split(params)))

    def sample(self, params, deterministic=False):
        return torch.stack([_categorical_sample(p, deterministic) for p in self._split(params)], dim=-1)

    def fisher_product(self, params, v):
        blocks = zip(self._split(params), torch.split(v, self.nvec, -1))
        return torch.cat([_categorical_fisher_product(lg, vb) for lg, vb in blocks], dim=-1)


class BernoulliFamily(ActionDistribution):
    """Independent Bernoulli actions (MultiBinary), parameterised by their logits l; Fisher diag(p(1-p))."""

    def __init__(self, n: int, shape: tuple[int, ...] | None = None):
        self.param_dim = int(n)
        self.action_shape = tuple(shape) if shape is not None else (self.param_dim,)
        self.action_dtype = torch.float32

    def _flat(self, actions, dtype):
        return actions.reshape(actions.shape[0], self.param_dim).to(dtype)

    def distribution(self, params):
        return D.Independent(D.Bernoulli(logits=params, validate_args=False), 1, validate_args=False)

    def log_prob(self, params, actions):
        # log σ(l) a + log σ(-l) (1 - a) = a l - softplus(l)
        return (self._flat(actions, params.dtype) * params - F.softplus(params)).sum(-1)

    def entropy(self, params):
        return (F.softplus(params) - params * torch.sigmoid(params)).sum(-1)

    def sample(self, params, deterministic=False):
        draw = (params > 0) if deterministic else (torch.rand_like(params) < torch.sigmoid(params))
        return draw.to(torch.float32).reshape(params.shape[0], *self.action_shape)

    def fisher_product(self, params, v):
        p = torch.sigmoid(params)
        return p * (1 - p) * v


class DiagGaussianFamily(ActionDistribution):
    """Diagonal Gaussian; parameters are [mean, log σ] so its Fisher is diag(1/σ², 2). A Box of any
    shape is one flat vector of action_dim dimensions here; actions keep the space's shape."""

    def __init__(self, action_dim: int, shape: tuple[int, ...] | None = None):
        self.action_dim = int(action_dim)
        self.param_dim = 2 * self.action_dim
        self.action_shape = tuple(shape) if shape is not None else (self.action_dim,)
        self.action_dtype = torch.float32
        self._flat_actions = self.action_shape != (self.action_dim,)

    def _flat(self, actions):
        return actions.reshape(actions.shape[0], self.action_dim) if self._flat_actions else actions

    def _shaped(self, actions):
        return actions.reshape(actions.shape[0], *self.action_shape) if self._flat_actions else actions

    def split(self, params):
        return params[..., : self.action_dim], params[..., self.action_dim :]

    def distribution(self, params):
        mean, log_std = self.split(params)
        return D.Independent(D.Normal(mean, log_std.exp(), validate_args=False), 1, validate_args=False)

    def log_prob(self, params, actions):
        """log N(a; μ, σ) summed over the action dimensions: with z = (a - μ)/σ, the one density
        -Σ (½ z² + log σ) - d/2 log 2π (as one fused multiply-add, a sum and a subtraction)."""
        mean, log_std = self.split(params)
        z = (self._flat(actions) - mean) * torch.exp(-log_std)
        return torch.rsub(torch.addcmul(log_std, z, z, value=0.5).sum(-1), -self.action_dim * _HALF_LOG_2PI)

    def entropy(self, params):
        return self.split(params)[1].sum(-1) + self.action_dim * (0.5 + _HALF_LOG_2PI)

    def sample(self, params, deterministic=False):
        mean, log_std = self.split(params)
        return self._shaped(mean if deterministic else torch.addcmul(mean, torch.randn_like(mean), log_std.exp()))

    def fisher_product(self, params, v):
        _, log_std = self.split(params)
        v_mean, v_log_std = self.split(v)
        return torch.cat([v_mean * torch.exp(-2.0 * log_std), 2.0 * v_log_std], dim=-1)


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def family_for_space(action_space) -> ActionDistribution:
    """The distribution family for a Gymnasium action space (Discrete, MultiDiscrete, MultiBinary, Box).
    A `start` of Discrete / MultiDiscrete is the env's business: the family counts from 0 and the agent
    adds the start at the env boundary."""
    from gymnasium import spaces

    if isinstance(action_space, spaces.Discrete):
        return CategoricalFamily(action_space.n)
    if isinstance(action_space, spaces.MultiDiscrete):
        if action_space.nvec.ndim != 1:
            raise ValueError(f"MultiDiscrete action spaces must be 1-D, got nvec shape {action_space.nvec.shape}")
        return MultiCategoricalFamily(action_space.nvec.tolist())
    if isinstance(action_space, spaces.MultiBinary):
        return BernoulliFamily(int(np.prod(action_space.shape)), tuple(action_space.shape))
    if isinstance(action_space, spaces.Box):
        if not np.issubdtype(action_space.dtype, np.floating):
            raise ValueError(f"Box action spaces must have a float dtype, got {action_space.dtype} "
                             "(for integer actions use Discrete or MultiDiscrete)")
        return DiagGaussianFamily(int(np.prod(action_space.shape)), tuple(action_space.shape))
    raise ValueError(
        f"unsupported action space {action_space!r}; accepted: Discrete, MultiDiscrete, MultiBinary, float Box"
    )

