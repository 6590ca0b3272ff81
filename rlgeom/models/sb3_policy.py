"""An SB3 `ActorCriticPolicy` subclass (SB3's custom-policy pattern) as rlgeom's policy.

SB3's documentation customises a policy by subclassing `stable_baselines3.common.policies.ActorCriticPolicy`
and overriding `_build_mlp_extractor` (a module with `latent_dim_pi`, `latent_dim_vf`, `forward_actor`,
`forward_critic`), or by passing `features_extractor_class` and `net_arch`. rlgeom builds that SB3 policy and
puts its modules into rlgeom's policy contract (rlgeom.models.policies): the actor is SB3's features
extractor -> `forward_actor` -> `action_net` (and `log_std`), the critic the same with `forward_critic` and
`value_net`. Observations are preprocessed by rlgeom's Preprocess, which is SB3's preprocess_obs (images
transposed to channel-first and scaled, discrete spaces one-hot). Every update then differentiates through
autograd: the written-out MLP derivatives apply to rlgeom's own MLPs only, and the agent says so once.

A class that overrides one of SB3's computing methods (COMPUTING_METHODS: SB3's test_gae.py overrides
`forward` to make V a constant) computes something its modules alone do not. Then rlgeom calls the user's
policy object where SB3 calls it: `forward` at each rollout step (actions, V_old, log π_old), `predict_values`
for the values GAE bootstraps from, `_predict` in predict() and evaluation, and `evaluate_actions` in the
update of an agent whose loss takes log π, V and entropy alone (PPO). The other agents' updates
differentiate the modules (KL, Fisher products, separate critic regression), so they refuse an override
that changes what those compute.
"""

from __future__ import annotations

import warnings

import torch
from gymnasium import spaces
from torch import nn

from rlgeom.models.policies import ActorCriticPolicy, PolicyOutputs, Preprocess, channel_first_space, channels_last


def is_sb3_policy_class(policy) -> bool:
    if not isinstance(policy, type):
        return False
    try:
        from stable_baselines3.common.policies import ActorCriticPolicy as SB3ActorCriticPolicy
    except ImportError:  # SB3 absent: nothing can be its subclass
        return False
    return issubclass(policy, SB3ActorCriticPolicy)


class _Latent(nn.Module):
    """One side of SB3's mlp_extractor: `forward_actor` or `forward_critic`. The side's own network
    (`policy_net` / `value_net`, as SB3's MlpExtractor and its documented custom extractor hold them) is
    this module's child, so the actor's optimiser sees the actor's parameters only; an extractor without
    them is owned whole by both sides (then only the joint-loss agents, PPO and ACKTR, can train it)."""

    def __init__(self, extractor: nn.Module, side: str):
        super().__init__()
        own = getattr(extractor, "policy_net" if side == "actor" else "value_net", None)
        split = isinstance(getattr(extractor, "policy_net", None), nn.Module) and \
            isinstance(getattr(extractor, "value_net", None), nn.Module)
        self.net = own if split else extractor
        self.split = split
        object.__setattr__(self, "_forward", extractor.forward_actor if side == "actor" else extractor.forward_critic)

    def forward(self, features):
        return self._forward(features)


_announced: set = set()
#: SB3 methods whose override changes what the policy computes beyond its modules
COMPUTING_METHODS = ("forward", "_predict", "evaluate_actions", "predict_values", "get_distribution",
                     "extract_features", "_get_action_dist_from_latent")
#: those an update that differentiates the policy's modules (every agent but PPO) would bypass
UPDATE_METHODS = ("evaluate_actions", "get_distribution", "extract_features", "_get_action_dist_from_latent")


def overridden_methods(policy_class) -> list[str]:
    """The COMPUTING_METHODS `policy_class` defines differently from SB3's ActorCriticPolicy."""
    from stable_baselines3.common.policies import ActorCriticPolicy as SB3ActorCriticPolicy

    return [name for name in COMPUTING_METHODS
            if getattr(policy_class, name, None) is not getattr(SB3ActorCriticPolicy, name, None)]


def _channel_first(space, obs: torch.Tensor) -> torch.Tensor:
    return obs.permute(0, 3, 1, 2) if channels_last(space) else obs


class SB3ClassPolicy(ActorCriticPolicy):
    """rlgeom's policy over the modules of an SB3 policy object (`sb3_policy`); when its class overrides a
    computing method (`calls_sb3_methods`), the rollout, the bootstrap values, predict and PPO's loss call
    that object's methods, as SB3 does (the module's docstring). Attributes of the user's class that
    rlgeom's policy does not have (`policy.constant_value` in SB3's test_gae.py) are read and set on it."""

    calls_sb3_methods = False

    @property
    def terms_at_each_step(self) -> bool:
        return self.calls_sb3_methods

    def sb3_observation(self, obs: torch.Tensor):
        """Observations as rlgeom stores them -> as SB3's policy takes them (normalised where rlgeom's
        normalize_observations is on, a Dict's rows unpacked into keys, channel-last images transposed)."""
        x = self.actor_inputs(obs)
        if self.dict_layout is None:
            return _channel_first(self.observation_space, x)
        return {key: _channel_first(self.observation_space[key], value)
                for key, value in self.dict_layout.unpack(x).items()}

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False):
        if not self.calls_sb3_methods:
            return super().act(obs, deterministic)
        actions, values, log_probs = self.sb3_policy(self.sb3_observation(obs), deterministic)
        return actions.reshape(obs.shape[0], *self.family.action_shape), values.reshape(-1), log_probs.reshape(-1)

    def draw(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        if not self.calls_sb3_methods:
            return super().draw(obs, deterministic)
        with torch.no_grad():
            return self.sb3_policy._predict(self.sb3_observation(obs), deterministic).reshape(
                obs.shape[0], *self.family.action_shape)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        if not self.calls_sb3_methods:
            return super().value(obs)
        return self.sb3_policy.predict_values(self.sb3_observation(obs)).reshape(-1)

    def loss_terms(self, obs: torch.Tensor, actions: torch.Tensor, critic: bool = True, written_out: bool | None = None):
        if not self.calls_sb3_methods:
            return super().loss_terms(obs, actions, critic, written_out)
        values, log_probs, entropy = self.sb3_policy.evaluate_actions(self.sb3_observation(obs), actions)
        if entropy is None:  # a distribution without a closed form: SB3's PPO takes -log π as its estimate
            entropy = -log_probs
        return PolicyOutputs(None, values.reshape(-1)), log_probs, entropy

    @torch.no_grad()
    def rollout_terms(self, obs: torch.Tensor, actions: torch.Tensor):
        if not self.calls_sb3_methods:
            return super().rollout_terms(obs, actions)
        _, log_probs, _ = self.loss_terms(obs, actions)
        return log_probs, self.value(obs)

    # SB3's surface called by the user: the user's methods, on observations as SB3 code passes them
    def forward(self, obs, deterministic: bool = False):
        if not self.calls_sb3_methods:
            return super().forward(obs, deterministic)
        return self.sb3_policy(self.sb3_observation(self._as_rows(obs)), deterministic)

    def evaluate_actions(self, obs, actions):
        if not self.calls_sb3_methods:
            return super().evaluate_actions(obs, actions)
        return self.sb3_policy.evaluate_actions(self.sb3_observation(self._as_rows(obs)),
                                                self._as_family_actions(actions))

    def predict_values(self, obs) -> torch.Tensor:
        if not self.calls_sb3_methods:
            return super().predict_values(obs)
        return self.sb3_policy.predict_values(self.sb3_observation(self._as_rows(obs)))

    def get_distribution(self, obs):
        if not self.calls_sb3_methods:
            return super().get_distribution(obs)
        return self.sb3_policy.get_distribution(self.sb3_observation(self._as_rows(obs)))

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)  # nn.Module's parameters, buffers and submodules
        except AttributeError:
            sb3_policy = self.__dict__.get("sb3_policy")
            if sb3_policy is None or name.startswith("__"):
                raise
            return getattr(sb3_policy, name)

    def __setattr__(self, name: str, value) -> None:
        sb3_policy = self.__dict__.get("sb3_policy")
        if (sb3_policy is not None and name in vars(sb3_policy) and name not in self.__dict__
                and not hasattr(type(self), name) and not isinstance(value, (nn.Module, torch.Tensor))):
            setattr(sb3_policy, name, value)  # the user's own attribute, which its overridden methods read
        else:
            super().__setattr__(name, value)


def policy_from_sb3_class(policy_class, observation_space, action_space, lr_schedule, *, normalize_observations,
                          use_sde, needs_separate_networks: bool, agent: str, update_calls_evaluate_actions: bool,
                          **policy_kwargs):
    """rlgeom's policy running the modules of `policy_class(...)`, and its overridden methods (see the module's
    docstring)."""
    overridden = overridden_methods(policy_class)
    bypassed = [name for name in overridden if name in UPDATE_METHODS and not update_calls_evaluate_actions]
    if bypassed:
        raise ValueError(f"{policy_class.__name__} overrides {', '.join(bypassed)}; {agent}'s update differentiates "
                         "the policy's modules (not SB3's evaluate_actions), so it would not train what that computes. "
                         "Use PPO, which calls the overridden methods, or override only forward, predict_values or "
                         "_predict (every agent calls those)")
    if use_sde:
        raise ValueError(f"gSDE (use_sde=True) is not available with an SB3 policy class ({policy_class.__name__}); "
                         "use policy='MlpPolicy' for gSDE")
    dict_obs = isinstance(observation_space, spaces.Dict)
    sb3_policy = policy_class(channel_first_space(observation_space), action_space, lr_schedule, **policy_kwargs)
    if not all(hasattr(sb3_policy, name) for name in ("mlp_extractor", "action_net", "value_net")):
        raise ValueError(f"{policy_class.__name__} does not build SB3's mlp_extractor, action_net and value_net; "
                         "accepted: a stable_baselines3 ActorCriticPolicy subclass")
    optimizer = {k: policy_kwargs[k] for k in ("optimizer_class", "optimizer_kwargs") if k in policy_kwargs}
    policy = SB3ClassPolicy(observation_space, action_space, "MultiInputPolicy" if dict_obs else "MlpPolicy",
                               net_arch=[], share_features_extractor=False, ortho_init=False,
                               normalize_observations=normalize_observations, **optimizer)
    preprocess = Preprocess(observation_space, getattr(sb3_policy, "normalize_images", True))
    actor, critic = policy.actor, policy.critic
    actor.features = nn.Sequential(preprocess, sb3_policy.pi_features_extractor)
    shared = bool(sb3_policy.share_features_extractor)
    critic.features = actor.features if shared else nn.Sequential(preprocess, sb3_policy.vf_features_extractor)
    actor.body, critic.body = _Latent(sb3_policy.mlp_extractor, "actor"), _Latent(sb3_policy.mlp_extractor, "critic")
    actor.head, critic.head = sb3_policy.action_net, sb3_policy.value_net
    if actor.scale is not None:  # a Gaussian: SB3's state-independent log σ is the scale's parameter
        actor.scale.raw = sb3_policy.log_std
    if needs_separate_networks and (shared or not actor.body.split):
        raise ValueError(
            f"{policy_class.__name__} shares modules between the actor and the critic (a shared features extractor, or "
            "an mlp_extractor without separate policy_net and value_net); this agent steps them separately: pass "
            "policy_kwargs=dict(share_features_extractor=False) and give the extractor policy_net and value_net, "
            "or use PPO or ACKTR")
    policy.share_features_extractor = shared
    policy.policy_name, policy.sb3_policy_class = policy_class.__name__, policy_class
    object.__setattr__(policy, "sb3_policy", sb3_policy)  # SB3's view of the same modules (not registered twice)
    policy.calls_sb3_methods = bool(overridden)
    if policy_class not in _announced:
        _announced.add(policy_class)
        warnings.warn(f"{policy_class.__name__} (an SB3 policy class) trains through autograd; rlgeom's written-out "
                      "MLP derivatives apply to its own MlpPolicy only"
                      + (f". It overrides {', '.join(overridden)}: rlgeom calls its forward at each rollout step, "
                         "predict_values for bootstrap values, _predict in predict"
                         + (" and evaluate_actions in the update" if update_calls_evaluate_actions else "")
                         + ", as SB3 does" if overridden else ""), UserWarning, stacklevel=4)
    return policy
