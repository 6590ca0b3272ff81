"""SB3's ActorCriticPolicy surface over rlgeom's policy (a mixin of rlgeom.models.policies.ActorCriticPolicy).

SB3 code reads `policy.mlp_extractor`, `policy.action_net`, `policy.value_net`, the features extractors,
and calls `evaluate_actions`, `predict_values`, `get_distribution`, `obs_to_tensor`, `set_training_mode`,
`save` / `load`. These are names for rlgeom's own modules (actor.features, actor.body, actor.head, ...),
never copies: the state dict keeps rlgeom's keys, and every number comes from the policy's one forward
(`outputs`, the one differentiable evaluation every update uses) and its action family's one density.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from gymnasium import spaces
from torch import nn


def legacy_net_arch(net_arch):
    """SB3 before 1.8 took `net_arch=[dict(pi=..., vf=...)]`; SB3 2.x converts it with this warning."""
    if isinstance(net_arch, list) and len(net_arch) > 0 and isinstance(net_arch[0], dict):
        warnings.warn(
            "As shared layers in the mlp_extractor are removed since SB3 v1.8.0, you should now pass directly a "
            "dictionary and not a list (net_arch=dict(pi=..., vf=...) instead of net_arch=[dict(pi=..., vf=...)])",
            stacklevel=4)  # a UserWarning, as SB3 issues it (shown by default)
        return net_arch[0]
    return net_arch


class MlpExtractorView(nn.Module):
    """SB3's `policy.mlp_extractor`: the actor's and the critic's hidden layers (the policy's own modules,
    not copies), with SB3's latent_dim_pi / latent_dim_vf and forward_actor / forward_critic."""

    def __init__(self, policy_net: nn.Module, value_net: nn.Module, latent_dim_pi: int, latent_dim_vf: int):
        super().__init__()
        self.policy_net, self.value_net = policy_net, value_net
        self.latent_dim_pi, self.latent_dim_vf = latent_dim_pi, latent_dim_vf

    def forward(self, features):
        if isinstance(features, tuple):  # SB3 passes (pi_features, vf_features) when extractors are separate
            return self.forward_actor(features[0]), self.forward_critic(features[1])
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        return self.policy_net(features)

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        return self.value_net(features)


class Distribution:
    """SB3's Distribution methods over one batch of the policy's distribution parameters: log_prob,
    entropy, sample, mode, get_actions(deterministic); `.distribution` is the torch distribution, and
    other attributes (probs, mean, stddev) are read from it. log_prob and entropy are the torch
    distribution's (an independent check of the action family's closed forms); sample and mode are the
    family's, the rollout's draw."""

    def __init__(self, family, params: torch.Tensor):
        self.family, self.params = family, params
        self.distribution = family.distribution(params)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        flat = getattr(self.family, "_flat", None)
        return self.distribution.log_prob(flat(actions) if flat is not None else actions)

    def entropy(self) -> torch.Tensor:
        return self.distribution.entropy()

    def sample(self) -> torch.Tensor:
        return self.family.sample(self.params, deterministic=False)

    def mode(self) -> torch.Tensor:
        return self.family.sample(self.params, deterministic=True)

    def get_actions(self, deterministic: bool = False) -> torch.Tensor:
        return self.mode() if deterministic else self.sample()

    def __getattr__(self, name: str):
        if name.startswith("_") or name in ("family", "params", "distribution"):
            raise AttributeError(name)
        return getattr(self.distribution, name)


def _extractor(features: nn.Module) -> nn.Module:
    """The features extractor SB3 code knows (the user's features_extractor_class instance, SB3's
    CombinedExtractor) without the Preprocess module rlgeom runs before it (SB3 preprocesses in the policy)."""
    from rlgeom.models.policies import Preprocess

    if isinstance(features, nn.Sequential) and len(features) == 2 and isinstance(features[0], Preprocess):
        return features[1]
    return features


def _linear_widths(body: nn.Module) -> list[int]:
    return [m.out_features for m in body.modules() if isinstance(m, nn.Linear)]


class SB3PolicySurface:
    """Mixin: SB3's names and methods on rlgeom's ActorCriticPolicy (see the module's docstring)."""

    # ------------------------------------------------------------------ modules under SB3's names
    @property
    def features_extractor(self) -> nn.Module:
        return _extractor(self.actor.features)

    @property
    def pi_features_extractor(self) -> nn.Module:
        return _extractor(self.actor.features)

    @property
    def vf_features_extractor(self) -> nn.Module:
        return _extractor(self.critic.features)

    @property
    def action_net(self) -> nn.Module:
        return self.actor.head

    @property
    def value_net(self) -> nn.Module:
        return self.critic.head

    @property
    def log_std(self):
        """SB3's `policy.log_std` of a Gaussian policy stored as log σ (gSDE: its log_std matrix)."""
        scale = getattr(self.actor, "scale", None)
        if scale is None:
            raise AttributeError("log_std exists for Box action spaces (a Gaussian policy) only")
        if getattr(scale, "state_dependent", False) or scale.parameterisation == "log_std":
            return scale.log_std if getattr(scale, "state_dependent", False) else scale.raw
        raise AttributeError(f"this policy stores its scale as {scale.parameterisation!r}, not log σ; "
                             "read policy.actor.scale() for log σ")

    @property
    def net_arch(self) -> dict:
        """dict(pi=[...], vf=[...]): the hidden layer widths, as SB3's policy holds them."""
        return {"pi": _linear_widths(self.actor.body), "vf": _linear_widths(self.critic.body)}

    @property
    def mlp_extractor(self) -> nn.Module:
        sb3_policy = self.__dict__.get("sb3_policy")  # an SB3 policy class's own (rlgeom.models.sb3_policy)
        if sb3_policy is not None:
            return sb3_policy.mlp_extractor
        return MlpExtractorView(self.actor.body, self.critic.body, self.actor.head.in_features,
                                self.critic.head.in_features)

    @property
    def features_dim(self) -> int:
        sb3_policy = self.__dict__.get("sb3_policy")
        if sb3_policy is not None:
            return sb3_policy.features_dim
        first = next((m for m in self.actor.body.modules() if isinstance(m, nn.Linear)), self.actor.head)
        return first.in_features

    # ------------------------------------------------------------------ SB3's methods
    def set_training_mode(self, mode: bool) -> None:
        self.train(mode)

    def obs_to_tensor(self, observation) -> tuple[torch.Tensor, bool]:
        """SB3's obs_to_tensor: (the observation(s) as the policy takes them [N, ...], whether a batch was given)."""
        rows, batched = self._observation_rows(observation)
        stored = self.dict_layout.dtype if self.dict_layout is not None else getattr(self.observation_space, "dtype", None)
        tensor = torch.as_tensor(np.asarray(rows).astype(np.uint8 if stored == np.uint8 else np.float32, copy=False),
                                 device=self.device)
        return tensor, batched

    def _as_rows(self, obs) -> torch.Tensor:
        """A batch of observations as a tensor on the policy's device (a Dict's as packed rows)."""
        if isinstance(obs, dict):
            return self.obs_to_tensor({k: v.detach().cpu().numpy() if torch.is_tensor(v) else v
                                       for k, v in obs.items()})[0]
        return torch.as_tensor(obs, device=self.device)

    def _as_family_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """SB3's buffer keeps Discrete actions as [B, 1] floats; the family takes [B] integers."""
        actions = torch.as_tensor(actions, device=self.device)
        if isinstance(self.action_space, spaces.Discrete):
            return actions.reshape(-1).long()
        if isinstance(self.action_space, (spaces.MultiDiscrete, spaces.MultiBinary)):
            return actions.long() if isinstance(self.action_space, spaces.MultiDiscrete) else actions
        return actions.float()

    def evaluate_actions(self, obs, actions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SB3's evaluate_actions: (values [B, 1], log π(a|s) [B], entropy [B]), differentiable, through
        the policy's one differentiable forward (`outputs`)."""
        out = self.outputs(self._as_rows(obs))
        actions = self._as_family_actions(actions)
        return (out.values.unsqueeze(-1), self.family.log_prob(out.dist_params, actions),
                self.family.entropy(out.dist_params))

    def predict_values(self, obs) -> torch.Tensor:
        """SB3's predict_values: V(s) as a column [B, 1]."""
        return self.outputs(self._as_rows(obs), actor=False).values.unsqueeze(-1)

    def get_distribution(self, obs) -> Distribution:
        """SB3's get_distribution: an object with SB3's Distribution methods (see Distribution)."""
        return Distribution(self.family, self.dist_params(self._as_rows(obs)))

    # ------------------------------------------------------------------ policy-only files
    def save(self, path) -> str:
        """The policy alone, as SB3's `policy.save(path)`: safetensors weights + its constructor arguments as
        JSON (no pickle); `ActorCriticPolicy.load(path)` rebuilds it. Returns the path written."""
        from rlgeom.persistence.serialization import policy_kwargs_to_json, space_to_json, write_model

        if hasattr(self, "sb3_policy_class"):
            raise ValueError(f"policy.save() writes rlgeom's own policies; this one runs the SB3 class "
                             f"{self.policy_name}: save the model (model.save(path)) and load it with "
                             f"custom_objects={{'policy': {self.policy_name}}}")
        args = dict(self._init_args)
        description = {"kind": "policy", "policy": args.pop("policy"),
                       "observation_space": space_to_json(args.pop("observation_space")),
                       "action_space": space_to_json(args.pop("action_space")),
                       "policy_kwargs": policy_kwargs_to_json(args)}
        tensors = {k: v.detach().contiguous() for k, v in _unique_state(self).items()}
        return write_model(path, tensors, description)

    @classmethod
    def load(cls, path, device="auto", custom_objects: dict | None = None):
        """A policy `save` wrote (classes outside rlgeom, SB3 and torch come from `custom_objects`)."""
        from rlgeom.persistence.serialization import (ModelFileError, open_model, policy_kwargs_from_json,
                                                      space_from_json, state_aliases)

        model = open_model(path)
        d = model.description
        if d.get("kind") != "policy":
            raise ModelFileError(f"{path}: not a policy file (it holds a {d.get('algo', 'unknown')} model); load a "
                                 "model with its agent class, e.g. PPO.load(path), and read model.policy")
        kwargs = policy_kwargs_from_json(d.get("policy_kwargs") or {}, custom_objects, str(path))
        policy = cls(space_from_json(d["observation_space"]), space_from_json(d["action_space"]), d["policy"],
                     **kwargs)
        tensors = model.tensors()
        state = policy.state_dict()
        for key, original in state_aliases(policy).items():
            tensors.setdefault(key, tensors.get(original))
        try:
            policy.load_state_dict({k: tensors[k] for k in state})
        except (KeyError, RuntimeError) as err:
            raise ModelFileError(f"{path}: weights do not fit the described policy: {err}") from None
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return policy.to(device)


def _unique_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with a shared features extractor stored once (safetensors stores a tensor once)."""
    from rlgeom.persistence.serialization import state_aliases

    aliases = state_aliases(module)
    return {k: v for k, v in module.state_dict().items() if k not in aliases}


__all__ = ["Distribution", "MlpExtractorView", "SB3PolicySurface", "legacy_net_arch"]
