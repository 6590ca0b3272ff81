"""Actor-critic policies: "MlpPolicy" (vector observations) and "CnnPolicy" (Nature CNN, images).

The policy contract, once:

| member                    | maps                                   | shape                        |
|---------------------------|----------------------------------------|------------------------------|
| actor_inputs(obs)         | raw obs -> network input (normalised)  | [B, *obs] -> [B, *obs]       |
| actor(x)                  | network input -> distribution params   | [B, *obs] -> [B, P]          |
| critic(x)                 | network input -> state value           | [B, *obs] -> [B, 1]          |
| outputs(obs)              | raw obs -> params, V(s) for a loss, and its `backward(loss)` | [B, P], [B] |
| draw(obs)                 | raw obs -> actions (the rollout's step, no graph)            | [B, ...]           |
| rollout_terms(obs, a)     | raw obs, actions -> log π(a|s), V(s) (once per rollout)      | [B], [B]           |
| loss_terms(obs, a)        | raw obs, actions -> outputs, log π(a|s), H (a first-order loss's, differentiable) | -, [B], [B] |
| get_distribution(obs)     | raw obs -> torch Distribution          | batch shape [B]              |
| value(obs)                | raw obs -> V(s)                        | [B]                          |
| family                    | rlgeom.models.distributions.ActionDistribution (log π, H, sampling, its Fisher) |

Every update differentiates through `outputs` (losses by autograd; a plain MLP's own backward and
Jacobian products written out behind one switch, `written_out_derivatives`: see rlgeom.models.networks).

Actor and critic are separate modules (the critic's optimiser never sees actor parameters); a CNN
feature extractor may be shared between them (`share_features_extractor`, the default for
"CnnPolicy", as SB3 does), which only the joint-loss agents (PPO, ACKTR) accept.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np
import torch
from gymnasium import spaces
import torch.nn.functional as F
from torch import nn

from rlgeom import validation
from rlgeom.models.distributions import ActionDistribution, DiagGaussianFamily, family_for_space
from rlgeom.models import networks
from rlgeom.models.inputs import checked_observation
from rlgeom.models.mlp_backprop import PlainMLP
from rlgeom.models.sde import StateDependentScale
from rlgeom.models.sb3_surface import SB3PolicySurface, legacy_net_arch
from rlgeom.data.dict_obs import layout_for
from rlgeom.data.normalization import RunningNormalizer

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU}
POLICY_NAMES = ("MlpPolicy", "CnnPolicy", "MultiInputPolicy")
#: how the Gaussian's state-independent scale is parameterised (the reparameterisation experiments)
SCALE_PARAMETERISATIONS = ("log_std", "std", "var")


def is_image_space(space) -> bool:
    """A uint8 Box of 3 dimensions with bounds 0..255, channel-first or channel-last (SB3's test, without
    its channel-count check)."""
    return (isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3
            and bool(np.all(space.low == 0)) and bool(np.all(space.high == 255)))


def channels_last(space) -> bool:
    """An image whose smallest dimension is the last (SB3's VecTransposeImage would transpose it)."""
    from stable_baselines3.common.preprocessing import is_image_space_channels_first

    return is_image_space(space) and not is_image_space_channels_first(space)


def channel_first_space(space):
    """The space as the network sees it: images [C, H, W] (channel-last ones transposed), a Dict's
    images likewise, key by key."""
    if isinstance(space, spaces.Dict):
        # pairs keep the space's key order (a plain dict would be sorted by gymnasium)
        return spaces.Dict([(key, channel_first_space(sub)) for key, sub in space.spaces.items()])
    if not channels_last(space):
        return space
    h, w, c = space.shape
    return spaces.Box(0, 255, (c, h, w), np.uint8)


class NotAnImageError(ValueError, AssertionError):
    """CnnPolicy given observations that are not images: a ValueError naming what is accepted, and also the
    AssertionError SB3's NatureCNN raises for them, so SB3 code that expects that error keeps working."""


OBSERVATION_SPACES = ("Box (vectors, any shape, uint8 images channel-first or -last), Discrete, MultiDiscrete, "
                      "MultiBinary, and Dict of those (MultiInputPolicy)")


class Preprocess(nn.Module):
    """SB3's observation preprocessing as a module, before a features extractor: float vectors as they
    are, images transposed to channel-first (as VecTransposeImage) and scaled by 1/255 when
    `normalize_images`, Discrete and MultiDiscrete one-hot (from their `start`), MultiBinary as floats.
    A Dict observation arrives packed (rlgeom.data.dict_obs) and leaves as a dict of its keys, each
    preprocessed so (what SB3's CombinedExtractor takes)."""

    def __init__(self, space, normalize_images: bool = True):
        super().__init__()
        self.layout = layout_for(space)
        for sub in (space.spaces.values() if self.layout is not None else (space,)):
            if not isinstance(sub, (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
                raise ValueError(f"unsupported observation space {space!r}; accepted: {OBSERVATION_SPACES}")
        self.space, self.normalize_images = space, normalize_images

    def forward(self, obs: torch.Tensor):
        if self.layout is None:
            return preprocess(self.space, obs, self.normalize_images)
        return {key: preprocess(self.space[key], value, self.normalize_images)
                for key, value in self.layout.unpack(obs).items()}


def preprocess(space, obs: torch.Tensor, normalize_images: bool) -> torch.Tensor:
    """One (non-Dict) space's preprocessing; see Preprocess."""
    if isinstance(space, spaces.Discrete):
        return F.one_hot(obs.long() - int(space.start), int(space.n)).float()
    if isinstance(space, spaces.MultiDiscrete):
        starts = torch.as_tensor(space.start.reshape(-1), device=obs.device)
        shifted = obs.long().reshape(obs.shape[0], -1) - starts
        return torch.cat([F.one_hot(shifted[:, i], int(n)).float() for i, n in enumerate(space.nvec.reshape(-1))], -1)
    if channels_last(space):
        obs = obs.permute(0, 3, 1, 2)
    if is_image_space(space) and normalize_images:
        return obs.float() / 255.0
    return obs.float()


def preprocessed_dim(space) -> int:
    """Width of the flattened preprocessed observation (one-hot widths for the discrete spaces)."""
    if isinstance(space, spaces.Dict):
        return sum(preprocessed_dim(sub) for sub in space.spaces.values())
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.MultiDiscrete):
        return int(space.nvec.sum())
    return int(np.prod(space.shape))


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
    """Mnih et al. 2015's torso: uint8 [B, C, 84, 84] frames -> 512 features (channel-last frames
    [B, H, W, C] are transposed first, as SB3's VecTransposeImage does; `scale`: divide by 255)."""

    def __init__(self, obs_shape: tuple[int, int, int], features_dim: int = 512, channels_last: bool = False,
                 scale: bool = True):
        super().__init__()
        if channels_last:
            obs_shape = (obs_shape[2], obs_shape[0], obs_shape[1])
        self.channels_last, self.scale = channels_last, scale
        c = obs_shape[0]
        if min(obs_shape[1:]) < 36:
            raise ValueError(f"CnnPolicy's NatureCNN needs images of at least 36x36 pixels, got {obs_shape[1:]} "
                             "(channel-first); use MlpPolicy or a features_extractor_class for small images")
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
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        x = x.float()
        return self.linear(self.convs(x / 255.0 if self.scale else x))


class GaussianScale(nn.Module):
    """The state-independent scale σ of a diagonal Gaussian, stored as log σ, σ or σ².

    forward() always returns log σ, so the distribution parameters (and their Fisher
    diag(1/σ², 2)) are the same whichever parameterisation is trained.
    """

    state_dependent = False

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


class Actor(nn.Module):
    """features -> hidden layers -> distribution parameters (a flat tensor [B, P]).

    A Gaussian's scale is state-independent (GaussianScale) or, with gSDE, a function of the last
    hidden features (rlgeom.models.sde.StateDependentScale)."""

    def __init__(self, features: nn.Module, body: nn.Module, body_out: int, family: ActionDistribution,
                 use_sde: bool = False, **gauss):
        super().__init__()
        self.features, self.body = features, body
        if isinstance(family, DiagGaussianFamily):
            self.head = nn.Linear(body_out, family.action_dim)
            if use_sde:
                self.scale = StateDependentScale(body_out, family.action_dim, gauss["log_std_init"],
                                                 gauss["full_std"], gauss["use_expln"])
            else:
                self.scale = GaussianScale(family.action_dim, gauss["log_std_init"], gauss["scale_parameterisation"])
        else:
            self.head = nn.Linear(body_out, family.param_dim)
            self.scale = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_features(self.features(x))

    def from_features(self, h: torch.Tensor) -> torch.Tensor:
        """The distribution parameters from the features extractor's output (the actor's one forward)."""
        return self.from_latent(self.body(h))

    def from_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """The distribution parameters from the last hidden layer's output."""
        out = self.head(latent)
        if self.scale is None:
            return out
        log_std = self.scale(latent) if self.scale.state_dependent else self.scale().expand_as(out)
        return torch.cat([out, log_std], dim=-1)

    def written_out_form(self):
        """(PlainMLP of body and head, the Gaussian scale or None) for rlgeom.models.networks' written-out
        derivatives, or None where the actor is not such an MLP (CNN features, other layers or
        activations, a state-dependent scale, a subclass computing something else from the same layers)."""
        if any(getattr(type(self), name) is not getattr(Actor, name) for name in ("forward", "from_features",
                                                                                 "from_latent")):
            return None
        if not isinstance(self.features, nn.Flatten) or (self.scale is not None and self.scale.state_dependent):
            return None
        mlp = _cached_plain_mlp(self)
        return None if mlp is None else (mlp, self.scale)


class Critic(nn.Module):
    """features -> hidden layers -> V(s) as a column [B, 1] (SB3's value_net shape)."""

    def __init__(self, features: nn.Module, body: nn.Module, body_out: int):
        super().__init__()
        self.features, self.body, self.head = features, body, nn.Linear(body_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_features(self.features(x))

    def from_features(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(h))

    def written_out_form(self):
        """(PlainMLP of body and head, None) for rlgeom.models.networks, or None (see Actor.written_out_form)."""
        if type(self).forward is not Critic.forward or type(self).from_features is not Critic.from_features:
            return None
        if not isinstance(self.features, nn.Flatten):
            return None
        mlp = _cached_plain_mlp(self)
        return None if mlp is None else (mlp, None)


def _cached_plain_mlp(network: nn.Module) -> PlainMLP | None:
    """PlainMLP.of(body + head), cached on the module and rebuilt when a layer was replaced since
    (the cache is keyed by the layer objects themselves)."""
    layers = [*network.body._modules.values(), network.head]
    cached = network.__dict__.get("_plain_mlp_cache")
    if cached is None or len(cached[0]) != len(layers) or any(a is not b for a, b in zip(cached[0], layers)):
        cached = network.__dict__["_plain_mlp_cache"] = (layers, PlainMLP.of(layers))
    return cached[1]


@dataclass
class PolicyOutputs:
    """A minibatch's distribution parameters [B, P] and values [B] on autograd's graph, ready for any
    loss (the plain-MLP part may be one written-out node: see rlgeom.models.networks); `backward(loss)`
    is `loss.backward()`, which puts ∂loss/∂θ into the parameters' `.grad`."""

    dist_params: torch.Tensor | None
    values: torch.Tensor | None

    def backward(self, loss: torch.Tensor, retain_graph: bool = False) -> None:
        loss.backward(retain_graph=retain_graph)


class ActorCriticPolicy(SB3PolicySurface, nn.Module):
    """Separate actor and critic networks over optionally normalised observations."""

    def __init__(
        self,
        observation_space,
        action_space,
        policy: str = "MlpPolicy",
        net_arch: dict | list | None = None,
        activation_fn: str | type[nn.Module] = "tanh",
        ortho_init: bool = True,
        log_std_init: float = 0.0,
        scale_parameterisation: str = "log_std",
        share_features_extractor: bool | None = None,
        features_dim: int = 512,
        normalize_observations: bool = False,
        features_extractor_class: type[nn.Module] | None = None,
        features_extractor_kwargs: dict | None = None,
        normalize_images: bool = True,
        use_sde: bool = False,
        full_std: bool = True,
        use_expln: bool = False,
        squash_output: bool = False,
        optimizer_class: type[torch.optim.Optimizer] | None = None,
        optimizer_kwargs: dict | None = None,
    ):
        init_args = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        super().__init__()
        self._init_args = init_args  # what policy.save() writes (rlgeom.models.sb3_surface)
        net_arch = legacy_net_arch(net_arch)
        if policy not in POLICY_NAMES:
            raise ValueError(f"unknown policy {policy!r}; accepted: {', '.join(POLICY_NAMES)}")
        act = activation_class(activation_fn)
        self.family = family_for_space(action_space)
        _check_log_std_init(log_std_init)
        self.use_sde, self.squash_output = _check_sde(self.family, action_space, use_sde, squash_output)
        #: the first-order optimiser SB3's policy_kwargs ask for (None: rlgeom's fused Adam); the agents build it
        self.optimizer_class, self.optimizer_kwargs = _check_optimizer(optimizer_class, optimizer_kwargs)
        self.observation_space, self.action_space = observation_space, action_space
        self.policy_name = policy
        self.dict_layout = layout_for(observation_space)  # Dict observations arrive packed (rlgeom.data.dict_obs)
        self._register_action_bounds(action_space)
        Preprocess(observation_space)  # refuses an unsupported space, naming the accepted ones
        image, dict_obs = is_image_space(observation_space), isinstance(observation_space, spaces.Dict)
        # as SB3: with normalize_images=False a float Box of 3 dimensions is an image the user already scaled
        prescaled = not normalize_images and isinstance(observation_space, spaces.Box) and len(observation_space.shape) == 3
        if policy == "CnnPolicy" and not image and not prescaled and features_extractor_class is None:
            raise NotAnImageError(f"CnnPolicy needs uint8 image observations ([C, H, W] or [H, W, C]), or float "
                                  "ones already scaled with policy_kwargs=dict(normalize_images=False), got "
                                  f"{observation_space}; use MlpPolicy or pass a features_extractor_class")
        if dict_obs != (policy == "MultiInputPolicy"):
            raise ValueError("Dict observations need policy='MultiInputPolicy', and MultiInputPolicy needs Dict "
                             f"observations (SB3's rule); got {policy} for {observation_space}")
        if dict_obs and features_extractor_class is None:
            from stable_baselines3.common.torch_layers import CombinedExtractor

            features_extractor_class = CombinedExtractor  # SB3's MultiInputPolicy default: NatureCNN per image key
            if not normalize_images:  # as SB3: images the user already scaled are not checked as uint8 images
                features_extractor_kwargs = {"normalized_image": True, **(features_extractor_kwargs or {})}
            small = [key for key, sub in channel_first_space(observation_space).spaces.items()
                     if is_image_space(sub) and min(sub.shape[1:]) < 36]
            if small:
                raise ValueError(f"the image key(s) {small} of this Dict are smaller than 36x36, too small for the "
                                 "NatureCNN of SB3's CombinedExtractor; pass a features_extractor_class for them")
        pi_sizes, vf_sizes = _split_net_arch(net_arch, default=[] if policy == "CnnPolicy" else [64, 64])
        has_extractor = policy == "CnnPolicy" or features_extractor_class is not None
        share = has_extractor if share_features_extractor is None else share_features_extractor
        self.share_features_extractor = share
        #: plain MLPs use rlgeom.models.networks' written-out derivatives (the agents set it from their config)
        self.written_out_derivatives = True
        # running statistics for float vectors only (images are scaled by 1/255, discrete spaces one-hot;
        # of a Dict, its float Box keys only: SB3's VecNormalize would normalise every key, images included)
        vector = isinstance(observation_space, spaces.Box) and not image
        if dict_obs:
            mask = self.dict_layout.float_mask()
            self.obs_normalizer = RunningNormalizer((mask.numel(),), enabled=normalize_observations and bool(mask.any()),
                                                    mask=mask)
        else:
            self.obs_normalizer = RunningNormalizer(tuple(observation_space.shape),
                                                    enabled=normalize_observations and vector)
        plain_vector = vector and len(observation_space.shape) == 1

        def features() -> nn.Module:
            if features_extractor_class is not None:  # an SB3 BaseFeaturesExtractor (or alike) on preprocessed obs
                extractor = features_extractor_class(channel_first_space(observation_space),
                                                     **(features_extractor_kwargs or {}))
                return nn.Sequential(Preprocess(observation_space, normalize_images), extractor)
            if policy == "CnnPolicy":
                return NatureCNN(tuple(observation_space.shape), features_dim, channels_last(observation_space),
                                 normalize_images)
            if plain_vector:
                return nn.Flatten()
            return nn.Sequential(Preprocess(observation_space, normalize_images), nn.Flatten())

        actor_features = features()
        critic_features = actor_features if share else features()
        in_dim = _features_dim(actor_features, observation_space)
        self.actor = Actor(
            actor_features, mlp([in_dim] + pi_sizes, act), ([in_dim] + pi_sizes)[-1], self.family, use_sde,
            log_std_init=log_std_init, scale_parameterisation=scale_parameterisation, full_std=full_std,
            use_expln=use_expln,
        )
        self.critic = Critic(critic_features, mlp([in_dim] + vf_sizes, act), ([in_dim] + vf_sizes)[-1])
        if ortho_init:  # SB3 / Baselines gains: sqrt(2) hidden, 0.01 policy head, 1 value head
            for module in (self.actor.features, self.actor.body, self.critic.features, self.critic.body):
                orthogonal_init(module, math.sqrt(2))
            orthogonal_init(self.actor.head, 0.01)
            orthogonal_init(self.critic.head, 1.0)

    def _register_action_bounds(self, action_space) -> None:
        """The action space as tensors that move with the policy (not saved: the space is)."""
        start = None
        if isinstance(action_space, (spaces.Discrete, spaces.MultiDiscrete)) and np.any(np.asarray(action_space.start)):
            start = torch.as_tensor(np.asarray(action_space.start), dtype=torch.long)
        self.register_buffer("action_start", start, persistent=False)  # None: actions count from 0 already
        if isinstance(action_space, spaces.Box):
            self.register_buffer("action_low", torch.as_tensor(action_space.low, dtype=torch.float32), persistent=False)
            self.register_buffer("action_high", torch.as_tensor(action_space.high, dtype=torch.float32), persistent=False)

    def actor_parameters(self) -> list[nn.Parameter]:
        return list(self.actor.parameters())

    def critic_parameters(self) -> list[nn.Parameter]:
        return list(self.critic.parameters())

    def actor_inputs(self, obs: torch.Tensor) -> torch.Tensor:
        check_device(obs, self.device)
        return self.obs_normalizer(obs)

    def dist_params(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(self.actor_inputs(obs))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(self.actor_inputs(obs)).squeeze(-1)

    def outputs(self, obs: torch.Tensor, actor: bool = True, critic: bool = True,
                written_out: bool | None = None) -> PolicyOutputs:
        """Distribution parameters and values of a minibatch for a loss, and its backward: the one
        differentiable evaluation every update uses (PPO's joint loss, a critic regression, ACKTR).

        With a shared features extractor the features are computed once for both heads, so that the
        torso's gradient (and K-FAC's statistics) see the sum of the actor's and the critic's.
        Plain MLPs take rlgeom.models.networks' written-out derivatives when `written_out_derivatives` is on
        (`written_out` overrides it for this call: False calls every layer as a module, as K-FAC's hooks need).
        """
        written_out = self.written_out_derivatives if written_out is None else written_out
        x = self.actor_inputs(obs)
        if self.share_features_extractor and actor and critic:
            h = self.actor.features(x)
            return PolicyOutputs(self.actor.from_features(h), self.critic.from_features(h).squeeze(-1))
        wanted = [m for m, on in ((self.actor, actor), (self.critic, critic)) if on]
        outs = iter(networks.differentiable_outputs(wanted, x, written_out))  # one written-out node for both
        dist_params = next(outs) if actor else None
        values = next(outs).squeeze(-1) if critic else None
        return PolicyOutputs(dist_params, values)

    def loss_terms(self, obs: torch.Tensor, actions: torch.Tensor, critic: bool = True, written_out: bool | None = None):
        """(outputs, log π(actions|obs), entropy) of a minibatch on autograd's graph: what a first-order loss
        (PPO's) takes, and `outputs.backward(loss)` differentiates it (`written_out` as in `outputs`)."""
        out = self.outputs(obs, critic=critic, written_out=written_out)
        return out, self.family.log_prob(out.dist_params, actions), self.family.entropy(out.dist_params)

    #: True where the rollout's log π_old and V_old come from each step's `act` (an SB3 policy class whose
    #: overridden methods rlgeom calls: rlgeom.models.sb3_policy) rather than from `rollout_terms` afterwards
    terms_at_each_step = False

    def forward(self, obs: torch.Tensor, deterministic: bool = False):
        """(actions, values, log_probs) for a batch of raw observations."""
        dist_params = self.dist_params(obs)
        actions = self.family.sample(dist_params, deterministic)
        return actions, self.value(obs), self.family.log_prob(dist_params, actions)

    # ----------------------------------------------------------------- the rollout's path
    @torch.inference_mode()
    def draw(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Actions for a batch of raw observations, without autograd: the rollout's one call per step.

        Only the actor runs here; log π_old(a|s) and V_old(s) of a whole rollout are evaluated after it in
        one batch (`rollout_terms`), with the same parameters. Between `start_rollout()` and
        `end_rollout()` (parameters and normalisation statistics are fixed during a rollout) the networks'
        inference functions are built once (rlgeom.models.networks.inference_function: PlainMLP's forward
        for plain MLPs when `written_out_derivatives` is on); elsewhere per call. The result is an
        inference tensor: copy it (the rollout buffer does) before any autograd use.
        """
        plan = self._rollout_plan or self._make_rollout_plan()
        check_device(obs, plan.device)
        x = plan.normalize(obs)
        if self.use_sde:
            return self._draw_sde(x, deterministic)
        return self.family.sample(plan.actor(x), deterministic)

    def _draw_sde(self, x: torch.Tensor, deterministic: bool) -> torch.Tensor:
        """gSDE's draw: a = μ(s) + φ(s) E with the current exploration matrices (rlgeom.models.sde); its
        log π(a) is the family's Gaussian N(μ(s), σ(s)²). With `squash_output` the buffer keeps this
        Gaussian action; tanh and the bounds apply at the env boundary (`env_actions`)."""
        actor = self.actor
        latent = actor.body(actor.features(x))
        mean = self.family.split(actor.from_latent(latent))[0]
        actions = mean if deterministic else mean + actor.scale.noise(latent)
        return actions.reshape(actions.shape[0], *self.family.action_shape)

    @torch.inference_mode()
    def rollout_terms(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log π(actions|obs), V(obs)) without autograd, for a batch of a rollout's transitions: the
        family's one log-density and the critic, in one pass of both networks."""
        plan = self._rollout_plan or self._make_rollout_plan()
        check_device(obs, plan.device)
        dist_params, values = plan.actor_and_critic(plan.normalize(obs))
        return self.family.log_prob(dist_params, actions), values.squeeze(-1)

    def act(self, obs: torch.Tensor, deterministic: bool = False):
        """(actions, values, log_probs) without autograd: `draw`, then `rollout_terms` of what it drew
        (inference tensors)."""
        actions = self.draw(obs, deterministic)
        log_probs, values = self.rollout_terms(obs, actions)
        return actions, values, log_probs

    def reset_noise(self, n_envs: int = 1) -> None:
        """gSDE: draw new exploration matrices, one per env (SB3's `policy.reset_noise`)."""
        if not self.use_sde:
            raise ValueError("reset_noise() is only for gSDE policies (use_sde=True)")
        self.actor.scale.reset_noise(n_envs)

    def env_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """The policy's actions as the env takes them: Box actions clipped to the bounds, or with
        `squash_output` (gSDE) squashed by tanh onto them (SB3's unscale_action); Discrete and
        MultiDiscrete ones shifted by the space's `start` (the family counts from 0). The rollout
        buffer keeps the policy's own."""
        if isinstance(self.action_space, spaces.Box):
            low, high = self.action_low, self.action_high
            if self.squash_output:
                return low + 0.5 * (torch.tanh(actions) + 1.0) * (high - low)
            return torch.clamp(actions, low, high)
        if self.action_start is not None:
            return actions + self.action_start
        return actions

    @property
    def device(self) -> torch.device:
        """Where the policy's parameters live (SB3's `policy.device`)."""
        return next(self.parameters()).device

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = False):
        """SB3's policy.predict: (actions as the env takes them, state) for one observation or a batch
        (numpy; a Dict observation as a dict of arrays, batched along their first dimension)."""
        # checked and cast as the env boundary stores them: uint8 for uint8 Boxes (images) and image-only Dicts,
        # float32 for everything else (rlgeom.models.inputs)
        obs, batched = self._observation_rows(observation)
        self.set_training_mode(False)  # as SB3's predict: no dropout, batch norm's running statistics
        with torch.no_grad():
            tensor = torch.as_tensor(obs, device=self.device)
            actions = self.env_actions(self.draw(tensor, deterministic)).cpu().numpy()
        if isinstance(self.action_space, spaces.Box):  # the space's dtype, as SB3 returns (float64 Box: float64)
            actions = actions.astype(self.action_space.dtype, copy=False)
        return (actions if batched else actions.squeeze(axis=0)), state  # an array, 0-d for one Discrete action (SB3)

    def _observation_rows(self, observation) -> tuple[np.ndarray, bool]:
        """(observations as the policy takes them [N, ...], whether the caller passed a batch)."""
        if isinstance(observation, tuple) and len(observation) == 2 and isinstance(observation[1], dict):
            raise ValueError("predict() got a tuple (observation, info): gymnasium's env.reset() returns "
                             "(obs, info), SB3's VecEnv.reset() returns obs alone; pass obs, e.g. "
                             "obs, info = env.reset(); model.predict(obs)")
        layout = self.dict_layout
        if layout is not None:
            if not isinstance(observation, dict):
                raise ValueError(f"this model takes Dict observations (a dict with keys "
                                 f"{[e.key for e in layout.entries]}), got {type(observation).__name__}")
            observation = {key: checked_observation(value, layout.space.spaces.get(key), f"observation[{key!r}]")
                           for key, value in observation.items()}
            n = layout.batch_size(observation)
            rows = layout.pack(observation, batched=True) if n is not None else layout.pack(observation, batched=False)[None]
            return rows, n is not None
        obs = checked_observation(observation, self.observation_space)  # numbers only, before shapes are compared
        shape = tuple(self.observation_space.shape)
        if obs.shape == shape:
            return obs[None], False
        if obs.shape[1:] == shape:
            return obs, True
        if channels_last(self.observation_space) and obs.shape[-3:] == (shape[2], shape[0], shape[1]):
            # channel-first images, as SB3's VecTransposeImage (model.get_env()) hands them out
            obs = np.moveaxis(obs, -3, -1)
            return (obs, True) if obs.ndim == 4 else (obs[None], False)
        raise ValueError(
            f"observation of shape {obs.shape} does not match the model's observation space {shape} "
            f"(accepted: {shape} or (n_envs, {', '.join(map(str, shape))}))"
        )

    _rollout_plan = None

    def start_rollout(self) -> None:
        """Freeze the inference functions until `end_rollout()`; the parameters must not change in
        between (the agents update only after a rollout)."""
        self._rollout_plan = self._make_rollout_plan()

    def end_rollout(self) -> None:
        self._rollout_plan = None

    @torch.no_grad()
    def _make_rollout_plan(self) -> "RolloutPlan":
        return RolloutPlan(self)


class RolloutPlan:
    """The inference functions of one rollout, each built on first use (a `predict` outside a rollout
    builds only the actor's) and kept while the parameters stay as they are."""

    def __init__(self, policy: "ActorCriticPolicy"):
        self._policy = policy
        self.device = policy.device
        self.normalize: Callable[[torch.Tensor], torch.Tensor] = policy.obs_normalizer.frozen()

    @cached_property
    def actor(self) -> Callable[[torch.Tensor], torch.Tensor]:
        with torch.no_grad():
            return networks.inference_function(self._policy.actor, self._policy.written_out_derivatives)

    @cached_property
    def actor_and_critic(self) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        policy = self._policy
        with torch.no_grad():
            return networks.paired_inference_function(policy.actor, policy.critic, policy.written_out_derivatives)


def check_device(obs: torch.Tensor, device: torch.device) -> None:
    """Observations must already be where the policy is: the env boundary moves them (envs.device), once."""
    if obs.device != device:
        raise ValueError(f"observations on {obs.device} given to a policy on {device}; move them to {device} first "
                         "(an agent's env and evaluate() do: agent.env_on_device(env))")


def activation_class(activation_fn) -> type[nn.Module]:
    """SB3's activation_fn (a torch.nn Module class) or its name as the CLI and model files give it."""
    if isinstance(activation_fn, str):
        if activation_fn in ACTIVATIONS:
            return ACTIVATIONS[activation_fn]
        by_class_name = {cls.__name__: cls for cls in ACTIVATIONS.values()}
        if activation_fn in by_class_name:
            return by_class_name[activation_fn]
    elif isinstance(activation_fn, type) and issubclass(activation_fn, nn.Module):
        return activation_fn
    raise ValueError(f"unknown activation_fn {activation_fn!r}; accepted: a torch.nn Module class such as "
                     f"torch.nn.Tanh, or one of the names {', '.join(ACTIVATIONS)}")


def _check_log_std_init(log_std_init) -> None:
    """σ = exp(log_std_init) must be a usable float32 scale (1e9 would make every action inf)."""
    if isinstance(log_std_init, bool) or not isinstance(log_std_init, numbers.Real) or not math.isfinite(log_std_init) \
            or abs(log_std_init) > 20:
        raise ValueError(f"log_std_init must be a number in [-20, 20] (σ = exp(log_std_init)), got {log_std_init!r}")


def _check_sde(family, action_space, use_sde: bool, squash_output: bool) -> tuple[bool, bool]:
    """SB3's rules: gSDE needs a continuous (Box) action space, and squash_output needs gSDE and
    finite bounds to squash onto."""
    if not isinstance(use_sde, bool) or not isinstance(squash_output, bool):
        raise ValueError(f"use_sde and squash_output must be True or False, got {use_sde!r}, {squash_output!r}")
    if use_sde and not isinstance(family, DiagGaussianFamily):
        raise ValueError(f"gSDE (use_sde=True) needs a float Box action space, got {action_space}")
    if squash_output and not use_sde:
        raise ValueError("squash_output=True is only available with gSDE (use_sde=True), as in SB3")
    if squash_output and not (np.isfinite(action_space.low).all() and np.isfinite(action_space.high).all()):
        raise ValueError(f"squash_output=True needs finite action bounds to squash onto, got {action_space}")
    return use_sde, squash_output


def _check_optimizer(optimizer_class, optimizer_kwargs) -> tuple:
    if optimizer_class is not None and not (isinstance(optimizer_class, type)
                                            and issubclass(optimizer_class, torch.optim.Optimizer)):
        raise ValueError(f"optimizer_class must be a torch.optim.Optimizer subclass such as torch.optim.Adam, "
                         f"got {optimizer_class!r}")
    if optimizer_kwargs is not None and not isinstance(optimizer_kwargs, dict):
        raise ValueError(f"optimizer_kwargs must be a dict of the optimiser's keyword arguments, got {optimizer_kwargs!r}")
    return optimizer_class, dict(optimizer_kwargs) if optimizer_kwargs is not None else None


def _features_dim(features: nn.Module, observation_space) -> int:
    """Width of a features module's output: its `features_dim` (SB3's extractors, NatureCNN), or the
    flattened preprocessed observation."""
    for module in (features, *(features.children() if isinstance(features, nn.Sequential) else ())):
        if isinstance(getattr(module, "features_dim", None), int):
            return module.features_dim
    return preprocessed_dim(observation_space)


def _split_net_arch(net_arch, default: list[int]) -> tuple[list[int], list[int]]:
    """SB3's net_arch: a list (same sizes for both) or dict(pi=[...], vf=[...])."""
    if net_arch is None:
        return list(default), list(default)
    def width(n) -> bool:
        return isinstance(n, int) and not isinstance(n, bool) and 0 < n <= MAX_LAYER_WIDTH

    if isinstance(net_arch, (list, tuple)) and all(width(n) for n in net_arch):
        validation.net_arch_size("net_arch", list(net_arch))  # the total too, before anything is allocated
        return list(net_arch), list(net_arch)
    if isinstance(net_arch, dict) and set(net_arch) <= {"pi", "vf"}:
        sizes = [net_arch.get(k, default) for k in ("pi", "vf")]
        if all(isinstance(s, (list, tuple)) and all(width(n) for n in s) for s in sizes):
            validation.net_arch_size("net_arch", {"pi": list(sizes[0]), "vf": list(sizes[1])})
            return list(sizes[0]), list(sizes[1])
    raise ValueError(f"invalid net_arch {net_arch!r}; accepted: a list of layer widths (ints from 1 to "
                     f"{MAX_LAYER_WIDTH}) or dict(pi=[...], vf=[...])")


#: the widest hidden layer accepted: checked before anything is allocated (a typo of 10**9 units would
#: otherwise ask for gigabytes, or be killed by the OS, rather than say what is wrong)
MAX_LAYER_WIDTH = 2**16
