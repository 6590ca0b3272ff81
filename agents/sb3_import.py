"""Import a Stable-Baselines3 PPO / A2C or sb3-contrib TRPO `.zip` into the matching rlgeom agent, unpickling nothing.

An SB3 `.zip` holds `policy.pth` (a state dict, read with `torch.load(weights_only=True)`: tensors only) and
`data`, a JSON file whose non-JSON entries are cloudpickle blobs, never opened here: only their readable
fields are (a space's dtype, shape and bounds; `policy_kwargs`' activation name; a constant schedule's
value). The network's widths come from the weights themselves. What cannot be read so (a space whose bounds
SB3 wrote truncated, an image's) comes from `env=`.

Supported: MlpPolicy and CnnPolicy (NatureCNN) policies of SB3 PPO (-> PPO), A2C (-> VPG) and sb3-contrib
TRPO (-> TRPO), without gSDE. SB3's optimiser state is not carried over (its Adam or RMSprop is not rlgeom's
update); the hyperparameters rlgeom shares with SB3 are.
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile

import numpy as np
import torch
from gymnasium import spaces

from rlgeom.persistence.serialization import ModelFileError

#: rlgeom's agent for each SB3 algorithm (recognised by the hyperparameters its `data` holds)
MATCHING = {"PPO": "ppo", "A2C": "vpg", "TRPO": "trpo"}
#: hyperparameters carried over, per SB3 algorithm (those with the same meaning in the rlgeom agent)
CARRIED = {
    "PPO": ("gamma", "gae_lambda", "n_steps", "batch_size", "n_epochs", "ent_coef", "vf_coef", "max_grad_norm",
            "learning_rate", "clip_range", "normalize_advantage", "target_kl"),
    "A2C": ("gamma", "gae_lambda", "ent_coef", "normalize_advantage"),
    "TRPO": ("gamma", "gae_lambda", "n_steps", "batch_size", "normalize_advantage", "cg_max_steps", "cg_damping",
             "n_critic_updates", "learning_rate"),
}


def read_sb3_zip(path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(the `data` JSON, the policy's state dict) of an SB3 `.zip`, with no pickle opened."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if not {"data", "policy.pth"} <= names:
                raise ModelFileError(f"{path}: not a Stable-Baselines3 model (a .zip needs 'data' and 'policy.pth'; "
                                     f"it has {sorted(names)})")
            data = json.loads(archive.read("data"))
            weights = torch.load(io.BytesIO(archive.read("policy.pth")), map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError, RuntimeError) as err:
        raise ModelFileError(f"{path}: not a readable Stable-Baselines3 .zip: {err}") from None
    return data, weights


def sb3_algorithm(data: dict) -> str:
    if "cg_max_steps" in data:
        return "TRPO"
    if "clip_range" in data:
        return "PPO"
    if "n_steps" in data and "gae_lambda" in data:
        return "A2C"
    raise ModelFileError("the SB3 model is none of PPO, A2C or TRPO (the on-policy algorithms rlgeom implements)")


def _array(text, dtype) -> np.ndarray | None:
    """A numpy array from the repr SB3 wrote for it (None when numpy elided part of it with '...')."""
    if not isinstance(text, str) or "..." in text:
        return None
    return np.array(text.replace("[", " ").replace("]", " ").split(), dtype=dtype)


def space_from_data(entry) -> spaces.Space:
    """A Box / Discrete / MultiDiscrete / MultiBinary from the readable fields SB3 writes beside its pickle."""
    kind = entry.get(":type:", "") if isinstance(entry, dict) else ""
    if kind.endswith("box.Box'>"):
        shape = tuple(json.loads(entry["_shape"]) if isinstance(entry["_shape"], str) else entry["_shape"])
        dtype = np.dtype(entry["dtype"])
        low, high = _array(entry.get("low"), np.float64), _array(entry.get("high"), np.float64)
        if low is None or high is None:
            raise ValueError("its bounds were written elided")
        return spaces.Box(low.reshape(shape).astype(dtype), high.reshape(shape).astype(dtype), shape, dtype)
    if kind.endswith("discrete.Discrete'>"):
        return spaces.Discrete(int(entry["n"]), start=int(entry.get("start", 0)))
    if kind.endswith("multi_discrete.MultiDiscrete'>"):
        nvec = _array(entry.get("nvec"), np.int64)
        if nvec is None:
            raise ValueError("its nvec was written elided")
        return spaces.MultiDiscrete(nvec)
    if kind.endswith("multi_binary.MultiBinary'>"):
        return spaces.MultiBinary(int(entry["n"]) if str(entry["n"]).isdigit() else json.loads(entry["n"]))
    raise ValueError(f"the space type {kind or entry!r} is not read from SB3's JSON")


def _constant(value):
    """A number from SB3's data: a plain number, or a FloatSchedule of a ConstantSchedule (its readable repr)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, dict):
        found = re.fullmatch(r"ConstantSchedule\(val=([-+0-9.eE]+)\)", str(value.get("value_schedule", "")))
        if found:
            return float(found.group(1))
    return None


def _widths(weights: dict, prefix: str) -> list[int]:
    keys = sorted((int(k[len(prefix):].split(".")[0]), k) for k in weights
                  if k.startswith(prefix) and k.endswith(".weight"))
    return [int(weights[k].shape[0]) for _, k in keys]


def _policy_kwargs(data: dict, weights: dict, policy_name: str) -> dict:
    kwargs: dict = {"net_arch": {"pi": _widths(weights, "mlp_extractor.policy_net."),
                                 "vf": _widths(weights, "mlp_extractor.value_net.")}}
    saved = data.get("policy_kwargs") or {}
    activation = str(saved.get("activation_fn", "")) if isinstance(saved, dict) else ""
    found = re.search(r"torch\.nn\.modules\.activation\.(\w+)'", activation)
    kwargs["activation_fn"] = found.group(1) if found else "Tanh"  # SB3's default for actor-critic policies
    if policy_name == "CnnPolicy":
        linear = next(v for k, v in weights.items() if k.endswith("features_extractor.linear.0.weight"))
        kwargs["features_dim"] = int(linear.shape[0])
        # SB3's state dict names the extractor three times (features_, pi_features_, vf_features_extractor); one
        # shared extractor has equal tensors under all three, two separately initialised ones never do
        vf = {k[len("vf_"):]: v for k, v in weights.items() if k.startswith("vf_features_extractor.")}
        kwargs["share_features_extractor"] = all(torch.equal(v, weights.get(k, v + 1)) for k, v in vf.items())
        if isinstance(saved, dict) and str(saved.get("normalize_images", "True")) == "False":
            kwargs["normalize_images"] = False
    return kwargs


def _rlgeom_key(key: str) -> str | None:
    """SB3's state-dict key -> rlgeom's (rlgeom.models.policies: actor / critic with features, body, head)."""
    rules = (
        (r"mlp_extractor\.policy_net\.(.*)", r"actor.body.\1"),
        (r"mlp_extractor\.value_net\.(.*)", r"critic.body.\1"),
        (r"action_net\.(.*)", r"actor.head.\1"),
        (r"value_net\.(.*)", r"critic.head.\1"),
        (r"log_std", r"actor.scale.raw"),
        (r"(?:pi_)?features_extractor\.cnn\.(.*)", r"actor.features.convs.\1"),
        (r"(?:pi_)?features_extractor\.linear\.(.*)", r"actor.features.linear.\1"),
        (r"vf_features_extractor\.cnn\.(.*)", r"critic.features.convs.\1"),
        (r"vf_features_extractor\.linear\.(.*)", r"critic.features.linear.\1"),
    )
    for pattern, replacement in rules:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def load_sb3(cls, path, env=None, device="auto", **overrides):
    """The rlgeom agent `cls` with the weights of the SB3 model at `path` (see the module's docstring)."""
    data, weights = read_sb3_zip(path)
    algo = sb3_algorithm(data)
    if MATCHING[algo] != cls.algo:
        raise ModelFileError(f"{path}: an SB3 {algo} model; import it into rlgeom's {MATCHING[algo].upper()}: "
                             f"{MATCHING[algo].upper()}.load_sb3(path)")
    if data.get("use_sde"):
        raise ModelFileError(f"{path}: a gSDE model (use_sde=True); the importer reads MlpPolicy and CnnPolicy "
                             "models without gSDE")
    if isinstance(data.get("observation_space"), dict) and "dict.Dict" in data["observation_space"].get(":type:", ""):
        raise ModelFileError(f"{path}: a MultiInputPolicy (Dict observations); the importer reads MlpPolicy and "
                             "CnnPolicy models")
    policy_name = "CnnPolicy" if any(".cnn." in k for k in weights) else "MlpPolicy"
    unknown = sorted(k for k in weights if _rlgeom_key(k) is None)
    if unknown:
        raise ModelFileError(f"{path}: weights of a custom SB3 policy ({unknown[:4]}); the importer reads SB3's "
                             "MlpPolicy and CnnPolicy (NatureCNN)")
    hyperparameters = {k: _constant(data[k]) for k in CARRIED[algo] if k in data}
    hyperparameters = {k: v for k, v in hyperparameters.items() if v is not None}
    if algo == "TRPO" and _constant(data.get("target_kl")) is not None:
        hyperparameters["max_kl"] = _constant(data["target_kl"])  # sb3-contrib's target_kl is TRPO's radius δ
    rollout = int(hyperparameters.get("n_steps", 0)) * int(data.get("n_envs", 1) or 1)
    if rollout and hyperparameters.get("batch_size") and rollout % int(hyperparameters["batch_size"]):
        # SB3 trains on a truncated last minibatch; rlgeom needs a divisor: the largest one below SB3's size
        hyperparameters["batch_size"] = math.gcd(int(hyperparameters["batch_size"]), rollout)
    hyperparameters.update(overrides)
    spaces_pair = None
    if env is None:
        try:
            spaces_pair = (space_from_data(data["observation_space"]), space_from_data(data["action_space"]))
        except (KeyError, ValueError, TypeError) as err:
            raise ModelFileError(f"{path}: the spaces cannot be read from SB3's JSON ({err}); pass the env: "
                                 f"{cls.__name__}.load_sb3(path, env=...)") from None
    try:
        agent = cls(policy_name, env, n_envs=int(data.get("n_envs", 1)) if isinstance(env, str) else 1,
                    policy_kwargs=_policy_kwargs(data, weights, policy_name), device=device, _spaces=spaces_pair,
                    **hyperparameters)
    except ValueError as err:
        raise ModelFileError(f"{path}: SB3's settings do not build an rlgeom {cls.__name__}: {err} (override them: "
                             f"{cls.__name__}.load_sb3(path, name=value))") from None
    state = {_rlgeom_key(k): v for k, v in weights.items()}
    own = agent.policy.state_dict()
    if agent.policy.share_features_extractor:  # one extractor: stored under the actor's names only
        state.update({k: state[k.replace("critic.", "actor.", 1)] for k in own
                      if k.startswith("critic.features.") and k.replace("critic.", "actor.", 1) in state})
    state.update({k: v for k, v in own.items() if k.startswith("obs_normalizer.")})  # SB3 has none: off, as built
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise ModelFileError(f"{path}: SB3's weights do not fit the rebuilt {policy_name} (missing {missing[:4]}, "
                             f"unexpected {extra[:4]})")
    agent.policy.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    agent.num_timesteps = int(data.get("num_timesteps", 0) or 0)
    return agent
