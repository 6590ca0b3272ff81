"""An SB3 `ActorCriticPolicy` subclass (SB3's custom-policy pattern) as rlgeom's policy.

SB3's documentation customises a policy by subclassing `stable_baselines3.common.policies.ActorCriticPolicy`
and overriding `_build_mlp_extractor` (a module with `latent_dim_pi`, `latent_dim_vf`, `forward_actor`,
`forward_critic`), or by passing `features_extractor_class` and `net_arch`. rlgeom builds that SB3 policy and
puts its modules into rlgeom's policy contract (rlgeom.models.policies): the actor is SB3's features
extractor -> `forward_actor` -> `action_net` (and `log_std`), the critic the same with `forward_critic` and
`value_net`. Observations are preprocessed by rlgeom's Preprocess, which is SB3's preprocess_obs (images
transposed to channel-first and scaled, discrete spaces one-hot). Every update then differentiates through
autograd: the written-out MLP derivatives apply to rlgeom's own MLPs only, and the agent says so once.
"""

from __future__ import annotations

import warnings

from gymnasium import spaces
from torch import nn


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
#: SB3 methods whose override changes what the policy computes, beyond its modules (rlgeom calls none of them)
COMPUTING_METHODS = ("forward", "_predict", "evaluate_actions", "predict_values", "get_distribution",
                     "extract_features", "_get_action_dist_from_latent")


def unused_overrides(policy_class) -> list[str]:
    from stable_baselines3.common.policies import ActorCriticPolicy as SB3ActorCriticPolicy

    return [name for name in COMPUTING_METHODS
            if getattr(policy_class, name, None) is not getattr(SB3ActorCriticPolicy, name, None)]


def policy_from_sb3_class(policy_class, observation_space, action_space, lr_schedule, *, normalize_observations,
                          use_sde, needs_separate_networks: bool, **policy_kwargs):
    """rlgeom's ActorCriticPolicy running the modules of `policy_class(...)` (see the module's docstring)."""
    from rlgeom.models.policies import ActorCriticPolicy, Preprocess, channel_first_space

    if use_sde:
        raise ValueError(f"gSDE (use_sde=True) is not available with an SB3 policy class ({policy_class.__name__}); "
                         "use policy='MlpPolicy' for gSDE")
    dict_obs = isinstance(observation_space, spaces.Dict)
    sb3_policy = policy_class(channel_first_space(observation_space), action_space, lr_schedule, **policy_kwargs)
    if not all(hasattr(sb3_policy, name) for name in ("mlp_extractor", "action_net", "value_net")):
        raise ValueError(f"{policy_class.__name__} does not build SB3's mlp_extractor, action_net and value_net; "
                         "accepted: a stable_baselines3 ActorCriticPolicy subclass")
    optimizer = {k: policy_kwargs[k] for k in ("optimizer_class", "optimizer_kwargs") if k in policy_kwargs}
    policy = ActorCriticPolicy(observation_space, action_space, "MultiInputPolicy" if dict_obs else "MlpPolicy",
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
    if policy_class not in _announced:
        _announced.add(policy_class)
        unused = unused_overrides(policy_class)
        warnings.warn(f"{policy_class.__name__} (an SB3 policy class) trains through autograd; rlgeom's written-out "
                      "MLP derivatives apply to its own MlpPolicy only"
                      + (f". It overrides {', '.join(unused)}, which rlgeom does not call: it runs the policy's "
                         "modules (features extractor, mlp_extractor, action_net, value_net, log_std)"
                         if unused else ""), UserWarning, stacklevel=4)
    return policy
