"""Actor-critic policies: "MlpPolicy" (vector observations) and "CnnPolicy" (Nature CNN, images).

The policy contract, once:

| member                    | maps                                   | shape                        |
|---------------------------|----------------------------------------|------------------------------|
| actor_inputs(obs)         | raw obs -> network input (normalised)  | [B, *obs] -> [B, *obs]       |
| actor(x)                  | network input -> distribution params   | [B, *obs] -> [B, P]          |
| critic(x)                 | network input -> state value           | [B, *obs] -> [B]             |
| get_distribution(obs)     | raw obs -> torch Distribution          | batch shape [B]              |
| value(obs)                | raw obs -> V(s)                        | [B]                          |
| family                    | rlgeom.distributions.ActionDistribution (params -> distribution, its Fisher) |

Actor and critic are separate modules (the critic's optimiser never sees actor parameters); a CNN
feature extractor may be shared between them (`share_features_extractor`, the default for
"CnnPolicy", as SB3 does), which only the joint-loss agents (PPO, ACKTR) accept.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from rlgeom.distributions import ActionDistribution, DiagGaussianFamily, family_for_space
from rlgeom.mlp_backprop import ACTIVATION_BACKWARD, PlainMLP
from rlgeom.normalization import RunningNormalizer

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU}
POLICY_NAMES = ("MlpPolicy", "CnnPolicy")
#: how the Gaussian's state-independent scale is parameterised (the reparameterisation experiments)
SCALE_PARAMETERISATIONS = ("log_std", "std", "var")


def is_image_space(space) -> bool:
    return isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3


def mlp(sizes: list[int], activation: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), activation()]
    return nn.Sequential(*layers)


def orthogonal_init(module: nn.Module, gain: float) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.orthogonal_(m.weight, gain=gain)
            nn.init.zeros_(m.bias)


class NatureCNN(nn.Module):
    """Mnih et al. 2015's torso: uint8 [B, C, 84, 84] frames -> 512 features."""

    def __init__(self, obs_shape: tuple[int, int, int], features_dim: int = 512):
        super().__init__()
        c = obs_shape[0]
        self.convs = nn.Sequential(
            nn.Conv2d(c, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            n_flat = self.convs(torch.zeros(1, *obs_shape)).shape[1]
        self.linear = nn.Sequential(nn.Linear(n_flat, features_dim), nn.ReLU())
        self.features_dim = features_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x.float() / 255.0))


class GaussianScale(nn.Module):
    """The state-independent scale σ of a diagonal Gaussian, stored as log σ, σ or σ².

    forward() always returns log σ, so the distribution parameters (and their Fisher
    diag(1/σ², 2)) are the same whichever parameterisation is trained.
    """

    def __init__(self, action_dim: int, log_std_init: float, parameterisation: str):
        super().__init__()
        if parameterisation not in SCALE_PARAMETERISATIONS:
            raise ValueError(
                f"unknown scale parameterisation {parameterisation!r}; accepted: {', '.join(SCALE_PARAMETERISATIONS)}"
            )
        self.parameterisation = parameterisation
        init = {"log_std": log_std_init, "std": math.exp(log_std_init), "var": math.exp(2 * log_std_init)}
        self.raw = nn.Parameter(torch.full((action_dim,), float(init[parameterisation])))

    def forward(self) -> torch.Tensor:
        if self.parameterisation == "log_std":
            return self.raw
        if self.parameterisation == "std":
            return torch.log(self.raw.clamp_min(1e-8))
        return 0.5 * torch.log(self.raw.clamp_min(1e-16))

    @torch.no_grad()
    def log_std_derivative(self) -> torch.Tensor | None:
        """∂ log σ / ∂raw, elementwise (forward's Jacobian is diagonal); None for log σ itself (the identity)."""
        if self.parameterisation == "log_std":
            return None
        # log σ = log raw (σ) or ½ log raw (σ²); zero below the clamp, as autograd's clamp gives
        floor, factor = (1e-8, 1.0) if self.parameterisation == "std" else (1e-16, 0.5)
        return torch.where(self.raw >= floor, factor / self.raw.clamp_min(floor), 0.0)

    @torch.no_grad()
    def backward(self, grad_log_std: torch.Tensor) -> None:
        """Add ∂loss/∂raw into raw.grad given ∂loss/∂ log σ (forward's derivative, written out)."""
        derivative = self.log_std_derivative()
        grad = grad_log_std if derivative is None else grad_log_std * derivative
        if self.raw.grad is None:
            self.raw.grad = torch.zeros_like(self.raw)
        self.raw.grad.add_(grad)


class Actor(nn.Module):
    """features -> hidden layers -> distribution parameters (a flat tensor [B, P])."""

    def __init__(self, features: nn.Module, body: nn.Module, body_out: int, family: ActionDistribution, **gauss):
        super().__init__()
        self.features, self.body = features, body
        if isinstance(family, DiagGaussianFamily):
            self.head = nn.Linear(body_out, family.action_dim)
            self.scale = GaussianScale(family.action_dim, gauss["log_std_init"], gauss["scale_parameterisation"])
        else:
            self.head = nn.Linear(body_out, family.param_dim)
            self.scale = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.body(self.features(x)))
        if self.scale is None:
            return out
        return torch.cat([out, self.scale().expand_as(out)], dim=-1)

    def plain_mlp(self) -> PlainMLP | None:
        """body and head as a rlgeom.mlp_backprop.PlainMLP (whose derivatives are written out), or None:
        for CNN features, other layers or activations, a frozen parameter or one with a gradient hook,
        and for a subclass whose forward computes something else from the same layers."""
        if type(self).forward is not Actor.forward:
            return None
        if not isinstance(self.features, nn.Flatten) or not _plain_backward_applies(self.parameters()):
            return None
        return PlainMLP.of(_body_and_head(self))


class Critic(nn.Module):
    def __init__(self, features: nn.Module, body: nn.Module, body_out: int):
        super().__init__()
        self.features, self.body, self.head = features, body, nn.Linear(body_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.features(x))).squeeze(-1)


class ActorCriticPolicy(nn.Module):
    """Separate actor and critic networks over optionally normalised observations."""

    def __init__(
        self,
        observation_space,
        action_space,
        policy: str = "MlpPolicy",
        net_arch: dict | list | None = None,
        activation_fn: str = "tanh",
        ortho_init: bool = True,
        log_std_init: float = 0.0,
        scale_parameterisation: str = "log_std",
        share_features_extractor: bool | None = None,
        features_dim: int = 512,
        normalize_observations: bool = False,
    ):
        super().__init__()
        if policy not in POLICY_NAMES:
            raise ValueError(f"unknown policy {policy!r}; accepted: {', '.join(POLICY_NAMES)}")
        if activation_fn not in ACTIVATIONS:
            raise ValueError(f"unknown activation_fn {activation_fn!r}; accepted: {', '.join(ACTIVATIONS)}")
        self.family = family_for_space(action_space)
        self.observation_space, self.action_space = observation_space, action_space
        self.policy_name = policy
        obs_shape = tuple(observation_space.shape)
        image = is_image_space(observation_space)
        if policy == "CnnPolicy" and not image:
            raise ValueError(
                f"CnnPolicy needs uint8 image observations [C, H, W], got {observation_space}; use MlpPolicy"
            )
        if policy == "MlpPolicy" and (image or len(obs_shape) != 1):
            raise ValueError(
                f"MlpPolicy needs 1-D vector observations, got shape {obs_shape}; use CnnPolicy for images"
            )
        pi_sizes, vf_sizes = _split_net_arch(net_arch, default=[64, 64] if policy == "MlpPolicy" else [])
        act = ACTIVATIONS[activation_fn]
        share = (policy == "CnnPolicy") if share_features_extractor is None else share_features_extractor
        self.share_features_extractor = share
        # Images are not normalised by running statistics (the CNN scales uint8 by 1/255).
        self.obs_normalizer = RunningNormalizer(obs_shape, enabled=normalize_observations and not image)

        def features():
            return NatureCNN(obs_shape, features_dim) if policy == "CnnPolicy" else nn.Flatten()

        in_dim = features_dim if policy == "CnnPolicy" else obs_shape[0]
        actor_features = features()
        critic_features = actor_features if share else features()
        self.actor = Actor(
            actor_features, mlp([in_dim] + pi_sizes, act), ([in_dim] + pi_sizes)[-1], self.family,
            log_std_init=log_std_init, scale_parameterisation=scale_parameterisation,
        )
        self.critic = Critic(critic_features, mlp([in_dim] + vf_sizes, act), ([in_dim] + vf_sizes)[-1])
        if ortho_init:  # SB3 / Baselines gains: sqrt(2) hidden, 0.01 policy head, 1 value head
            for module in (self.actor.features, self.actor.body, self.critic.features, self.critic.body):
                orthogonal_init(module, math.sqrt(2))
            orthogonal_init(self.actor.head, 0.01)
            orthogonal_init(self.critic.head, 1.0)

    def actor_parameters(self) -> list[nn.Parameter]:
        return list(self.actor.parameters())

    def critic_parameters(self) -> list[nn.Parameter]:
        return list(self.critic.parameters())

    def actor_inputs(self, obs: torch.Tensor) -> torch.Tensor:
        return self.obs_normalizer(obs)

    def dist_params(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(self.actor_inputs(obs))

    def get_distribution(self, obs: torch.Tensor):
        return self.family.distribution(self.dist_params(obs))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return _functional_critic(self.critic, self.actor_inputs(obs))  # = self.critic(...), fewer dispatches

    def evaluate_actions(self, obs: torch.Tensor, actions: torch.Tensor):
        """(log π(a|s), H[π(·|s)], V(s)) for a minibatch, differentiable: the joint-loss update's path.

        The same numbers as get_distribution / value, with the observation normalised once, MLP
        layers called functionally and the family's closed-form log-prob and entropy.
        """
        x = self.actor_inputs(obs)
        log_prob, entropy = self.family.log_prob_and_entropy(_functional_actor(self.actor, x), actions)
        return log_prob, entropy, _functional_critic(self.critic, x)

    # ----------------------------------------------------------------- the update's hand-written backward
    def evaluate_actions_with_vjp(self, obs: torch.Tensor, actions: torch.Tensor):
        """(log π(a|s), H[π(·|s)], V(s), vjp) without autograd, or None where it does not apply.

        `vjp(d_log_prob, d_entropy, d_value)` adds the parameters' gradient of a loss into their
        `.grad`, given the loss's derivatives with respect to the three outputs (tensors [B] or
        numbers): what `loss.backward()` would add after `evaluate_actions`. Written out for MLP
        actors and critics (rlgeom.mlp_backprop) with Categorical or diagonal-Gaussian actions;
        None otherwise (CNNs, other activations, MultiDiscrete, a frozen parameter, or a gradient hook
        on a parameter, which only autograd would call), and the caller uses autograd.
        """
        networks = self._plain_networks()
        if networks is None or not _plain_backward_applies(networks[2]):
            return None
        actor, critic = networks[:2]
        scale = self.actor.scale
        with torch.no_grad():
            x = self.actor_inputs(obs)
            head, actor_inputs = actor.forward(x)
            values, critic_inputs = critic.forward(x)
            params = head if scale is None else torch.cat([head, scale().expand_as(head)], dim=-1)
        evaluated = self.family.log_prob_and_entropy_vjp(params, actions)
        if evaluated is None:
            return None
        log_prob, entropy, family_vjp = evaluated

        def vjp(d_log_prob, d_entropy, d_value) -> None:
            d_params = family_vjp(d_log_prob, d_entropy)
            if scale is not None:
                d_params, d_log_std = d_params[:, : head.shape[1]], d_params[:, head.shape[1]:]
                scale.backward(d_log_std.sum(0))  # σ is shared by every sample
            actor.backward(actor_inputs, d_params)
            critic.backward(critic_inputs, _as_column(d_value, values))

        return log_prob, entropy, values.squeeze(-1), vjp

    def value_with_vjp(self, obs: torch.Tensor):
        """(V(s), vjp) without autograd for an MLP critic, or None: vjp(d_value) adds the critic's
        gradient into its parameters' `.grad` (the critic regressions of VPG, NPG and TRPO)."""
        networks = self._plain_networks()
        if networks is None or not _plain_backward_applies(networks[3]):
            return None
        critic = networks[1]
        with torch.no_grad():
            values, inputs = critic.forward(self.actor_inputs(obs))
        return values.squeeze(-1), lambda d_value: critic.backward(inputs, _as_column(d_value, values))

    def _plain_networks(self):
        """(actor, critic, all their parameters, the critic's) with actor and critic as
        rlgeom.mlp_backprop.PlainMLP when both are plain MLPs, else None. Cached, and rebuilt when a
        layer was replaced since (the cache is keyed by the layer objects themselves)."""
        if self.policy_name != "MlpPolicy" or self.share_features_extractor:
            return None
        actor_layers, critic_layers = _body_and_head(self.actor), _body_and_head(self.critic)
        layers = actor_layers + critic_layers
        cached = self.__dict__.get("_plain_cache")
        if cached is None or len(cached[0]) != len(layers) or any(a is not b for a, b in zip(cached[0], layers)):
            actor, critic = PlainMLP.of(actor_layers), PlainMLP.of(critic_layers)
            networks = None
            if actor is not None and critic is not None:
                scale = [self.actor.scale.raw] if self.actor.scale is not None else []
                networks = (actor, critic, actor.parameters() + scale + critic.parameters(), critic.parameters())
            cached = self.__dict__["_plain_cache"] = (layers, networks)
        return cached[1]

    def forward(self, obs: torch.Tensor, deterministic: bool = False):
        """(actions, values, log_probs) for a batch of raw observations."""
        dist = self.get_distribution(obs)
        actions = dist.mode if deterministic else dist.sample()
        return actions, self.value(obs), dist.log_prob(actions)

    # ----------------------------------------------------------------- the rollout's fast path
    @torch.inference_mode()
    def act(self, obs: torch.Tensor, deterministic: bool = False):
        """(actions, values, log_probs) without autograd: what the rollout calls once per step.

        Same distribution as `forward`, computed with fewer kernels: the observation is normalised
        once for both networks, the layers are called functionally (no nn.Module dispatch), a
        separate MLP actor and critic of equal widths run as one batched matmul per layer, and the
        action is drawn by the family's `sample_with_log_prob` (no torch Distribution object; for a
        Gaussian, `fixed_scale_sampler` with σ computed once).
        Between `start_rollout()` and `end_rollout()` the stacked weights and normalisation
        constants are built once (the parameters do not change during a rollout); elsewhere they
        are rebuilt per call. Results are inference tensors: copy them (the rollout buffer does)
        before any autograd use.
        """
        cache = self._rollout_cache if self._rollout_cache is not None else self._build_rollout_cache()
        fused, norm, sample = cache
        x = obs if norm is None else torch.clamp((obs - norm[0]) * norm[1], -norm[2], norm[2])
        if fused is None:
            params, values = _functional_actor(self.actor, x), self.critic(x)
            actions, log_probs = self.family.sample_with_log_prob(params, deterministic)
        else:  # the actor head's output: logits, or the Gaussian mean (σ is in `sample`)
            head, values = self._fused_forward(fused, x)
            actions, log_probs = sample(head, deterministic)
        return actions, values, log_probs

    _rollout_cache = None

    @torch.inference_mode()
    def start_rollout(self) -> None:
        """Freeze the rollout constants (stacked weights, normalisation) until `end_rollout()`.

        Parameters must not change in between (the agents update only after the rollout);
        optimisers such as fused Adam do not bump tensor versions, so no automatic check is made.
        """
        self._rollout_cache = self._build_rollout_cache()

    def end_rollout(self) -> None:
        self._rollout_cache = None

    def _build_rollout_cache(self):
        norm = self.obs_normalizer
        constants = None
        if norm.enabled:
            dtype = self.actor.head.weight.dtype
            constants = (norm.mean.to(dtype), torch.rsqrt(norm.var + norm.eps).to(dtype), norm.clip)
        scale = self.actor.scale
        sample = self.family.sample_with_log_prob if scale is None else self.family.fixed_scale_sampler(scale())
        return self._fused_weights(), constants, sample

    def _fused_weights(self):
        """Stacked actor/critic weights (layer 1: [in, 2H]; then [2, in, out] per layer), or None."""
        if getattr(self, "_fusable", None) is None:
            self._fusable = _can_fuse(self)
        if not self._fusable:
            return None
        a_lin = [m for m in self.actor.body if isinstance(m, nn.Linear)]
        c_lin = [m for m in self.critic.body if isinstance(m, nn.Linear)]
        first = (torch.cat([a_lin[0].weight, c_lin[0].weight]).t().contiguous(),
                 torch.cat([a_lin[0].bias, c_lin[0].bias]))
        hidden = [
            (torch.stack([a.weight.t(), c.weight.t()]).contiguous(), torch.stack([a.bias, c.bias]).unsqueeze(1))
            for a, c in zip(a_lin[1:], c_lin[1:])
        ]
        ah, ch = self.actor.head, self.critic.head
        head_w = torch.zeros(2, ah.in_features, ah.out_features, dtype=ah.weight.dtype, device=ah.weight.device)
        head_b = torch.zeros(2, 1, ah.out_features, dtype=ah.bias.dtype, device=ah.bias.device)
        head_w[0] = ah.weight.t()
        head_w[1, :, 0] = ch.weight[0]
        head_b[0, 0] = ah.bias
        head_b[1, 0, 0] = ch.bias[0]
        activation = _activation_fn(next(m for m in self.actor.body if not isinstance(m, nn.Linear)))
        return first, hidden, (head_w, head_b), activation

    def _fused_forward(self, fused, x: torch.Tensor):
        (w1, b1), hidden, (head_w, head_b), act = fused
        h = act(torch.addmm(b1, x, w1))  # [B, 2H]: both networks' first layer in one matmul
        h = h.view(x.shape[0], 2, -1).transpose(0, 1)  # [2, B, H]
        for w, b in hidden:
            h = act(torch.baddbmm(b, h, w))
        out = torch.baddbmm(head_b, h, head_w)  # [2, B, P]
        return out[0], out[1, :, 0]  # the actor head's output, the values


def _body_and_head(network: nn.Module) -> list[nn.Module]:
    """An actor's or critic's layers after its features, in order: what PlainMLP.of reads."""
    return [*network.body._modules.values(), network.head]


def _plain_backward_applies(parameters) -> bool:
    """Whether the hand-written backward gives what autograd would for these parameters: every one is
    trained (a frozen one, requires_grad=False, must keep no gradient) and none has a gradient hook
    (Tensor.register_hook / register_post_accumulate_grad_hook, which only autograd calls)."""
    return all(p.requires_grad and not p._backward_hooks and not getattr(p, "_post_accumulate_grad_hooks", None)
               for p in parameters)


def _as_column(d_value, values: torch.Tensor) -> torch.Tensor:
    """∂loss/∂V [B] (or a number) as the critic head's output gradient [B, 1]."""
    if isinstance(d_value, torch.Tensor):
        return d_value.reshape(values.shape)
    return torch.full_like(values, float(d_value))


def _activation_fn(module: nn.Module):
    """The activation as a plain function (skips nn.Module dispatch in the rollout): tanh and ReLU from
    rlgeom.mlp_backprop's table, any other module's own forward."""
    plain = ACTIVATION_BACKWARD.get(type(module))
    return plain[0] if plain is not None else module.forward


def _functional_actor(actor: Actor, x: torch.Tensor) -> torch.Tensor:
    """Actor.forward for MLP actors without per-module dispatch (CNN actors: the module call)."""
    if not isinstance(actor.features, nn.Flatten) or x.dim() != 2:
        return actor(x)
    for m in actor.body:
        x = torch.nn.functional.linear(x, m.weight, m.bias) if isinstance(m, nn.Linear) else _activation_fn(m)(x)
    out = torch.nn.functional.linear(x, actor.head.weight, actor.head.bias)
    if actor.scale is None:
        return out
    return torch.cat([out, actor.scale().expand_as(out)], dim=-1)


def _functional_critic(critic: Critic, x: torch.Tensor) -> torch.Tensor:
    """Critic.forward for MLP critics without per-module dispatch (CNN critics: the module call)."""
    if not isinstance(critic.features, nn.Flatten) or x.dim() != 2:
        return critic(x)
    for m in critic.body:
        x = torch.nn.functional.linear(x, m.weight, m.bias) if isinstance(m, nn.Linear) else _activation_fn(m)(x)
    return torch.nn.functional.linear(x, critic.head.weight, critic.head.bias).squeeze(-1)


def _can_fuse(policy: "ActorCriticPolicy") -> bool:
    """Separate MLP actor and critic with the same layer widths and activation: one batched forward."""
    if policy.share_features_extractor or policy.policy_name != "MlpPolicy":
        return False
    a_body, c_body = list(policy.actor.body), list(policy.critic.body)
    if len(a_body) != len(c_body) or not a_body:
        return False
    for a, c in zip(a_body, c_body):
        if type(a) is not type(c):
            return False
        if isinstance(a, nn.Linear) and (a.weight.shape != c.weight.shape):
            return False
        if not isinstance(a, nn.Linear) and type(a) not in (nn.Tanh, nn.ReLU):
            return False
    return True


def _split_net_arch(net_arch, default: list[int]) -> tuple[list[int], list[int]]:
    """SB3's net_arch: a list (same sizes for both) or dict(pi=[...], vf=[...])."""
    if net_arch is None:
        return list(default), list(default)
    if isinstance(net_arch, (list, tuple)) and all(isinstance(n, int) and n > 0 for n in net_arch):
        return list(net_arch), list(net_arch)
    if isinstance(net_arch, dict) and set(net_arch) <= {"pi", "vf"}:
        sizes = [list(net_arch.get(k, default)) for k in ("pi", "vf")]
        if all(isinstance(n, int) and n > 0 for s in sizes for n in s):
            return sizes[0], sizes[1]
    raise ValueError(f"invalid net_arch {net_arch!r}; accepted: a list of positive ints or dict(pi=[...], vf=[...])")
