"""Saving and loading models: safetensors weights + a JSON description, nothing pickled or executed.

What an agent author hooks into: every `torch.optim.Optimizer` attribute is found by `_optimizers()`;
other state (a K-FAC preconditioner, running statistics) round-trips through `_extra_state()` /
`_load_extra_state(state)` (nested dicts of tensors and JSON values).
"""

from __future__ import annotations

import os

import torch

from rlgeom import __version__
from rlgeom.persistence import checkpoint as ckpt
from rlgeom.persistence import outputs
from rlgeom.persistence.serialization import (
    ModelFileError, class_from_json, class_to_json, is_file_object, model_path, policy_kwargs_from_json, policy_kwargs_to_json, space_from_json,
    space_to_json, state_aliases, write_model,
)
from rlgeom.persistence.statecheck import check_json_state, check_tensors
from rlgeom.persistence.modelfile import (
    EXTRA_STATE_BYTES, EXTRA_STATE_FACTOR, check_description, check_envs_to_build, open_model,
)
from rlgeom.agents import devices
from rlgeom.agents.devices import resolve_device, set_global_seeds
from rlgeom.envs.make import TORCH_NATIVE_PREFIX
from rlgeom.training import distributed
from rlgeom.agents.sb3_compat import filter_description, hyperparameters_from_saved, hyperparameters_to_json

#: constructor options saved with the model that are not hyperparameters of the algorithm
AGENT_OPTIONS = ("nonfinite", "max_consecutive_skips", "geometry_every", "stats_window_size", "tensorboard_log",
                 "verbose")
#: agent options load() takes from its caller and save() does not write (rlgeom.training.compiled)
RUN_OPTIONS = ("compile",)


class Persistence:
    """Mixin of OnPolicyAgent (agents/base.py): save, load, get_parameters and the agent's state."""

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The agent's optimisers by attribute name: saved in checkpoints, rolled back on a skipped update."""
        return {k: v for k, v in sorted(vars(self).items()) if isinstance(v, torch.optim.Optimizer)}

    def _extra_state(self) -> dict:
        """State beyond the policy's weights and the optimisers, as a nested dict of tensors and JSON
        values (agents extend it: `{**super()._extra_state(), "kfac": self.kfac.state_dict()}`)."""
        state: dict = {}
        if self.reward_scaler is not None:
            state["reward_scaler"] = dict(self.reward_scaler.state_dict())
            if self.reward_scaler._discounted is not None:
                state["reward_scaler_running_return"] = self.reward_scaler._discounted
        return state

    def _load_extra_state(self, state: dict) -> None:
        """Take back what `_extra_state()` returned (agents: call super() for the base's keys)."""
        if self.reward_scaler is not None and "reward_scaler" in state:
            self.reward_scaler.load_state_dict(state["reward_scaler"])
            running = state.get("reward_scaler_running_return")
            self.reward_scaler._discounted = running.to(self.device).clone() if running is not None else None

    def _model_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        aliases = state_aliases(self.policy)  # a shared features extractor is stored once
        tensors = {f"policy.{k}": v for k, v in self.policy.state_dict().items() if k not in aliases}
        extra, extra_skeleton = ckpt.pack_state("extra", self._extra_state())
        tensors.update(extra)
        description = {
            "algo": self.algo, "rlgeom": __version__,
            # a policy class (SB3's custom-policy pattern) is saved by name; load() takes it from custom_objects
            "policy": class_to_json(self.policy_name) if isinstance(self.policy_name, type) else self.policy_name,
            "policy_kwargs": policy_kwargs_to_json(self.policy_kwargs),
            "hyperparameters": hyperparameters_to_json(self.config),
            "observation_space": space_to_json(self.observation_space),
            "action_space": space_to_json(self.action_space),
            "num_timesteps": self.num_timesteps, "n_updates": self.n_updates, "sb3_n_updates": self.sb3_n_updates,
            "env_id": self.env_id, "n_envs": self.n_envs, "seed": self.seed,
            "extra_state": extra_skeleton,
            **{k: getattr(self, k) for k in AGENT_OPTIONS},
        }
        return tensors, description

    def save(self, path, exclude=None, include=None) -> str:
        """Write safetensors weights + JSON description to a path (SB3's `.zip` becomes `.safetensors`)
        or an open binary file object; returns the path written. `exclude` / `include`: as SB3's
        (agents.sb3_compat.filter_description). (`save_checkpoint` adds what continues training exactly.)"""
        # under torchrun rank 0 writes the one model; no collective here, since a callback may save on rank 0 only
        if not distributed.is_main():
            return getattr(path, "name", repr(path)) if is_file_object(path) else model_path(path)
        if not is_file_object(path):  # a live run's folder is not written into (it would overwrite this file)
            outputs.check_not_in_use(os.path.dirname(os.path.abspath(model_path(path))), "model file")
        tensors, description = self._model_state()
        return write_model(path, tensors, filter_description(description, exclude, include),
                           resume_from=ckpt.resumable(self._checkpoint_dir))

    @classmethod
    def load(cls, path, env=None, device="auto", custom_objects: dict | None = None, print_system_info: bool = False,
             force_reset: bool = True, **overrides):
        """Rebuild a saved agent (no unpickling); `env` must match the saved spaces. A checkpoint also
        restores optimisers, counters, RNG states and the TensorBoard run: continue it with
        `learn(remaining, reset_num_timesteps=False)`. A class the file names that is not rlgeom's,
        SB3's or torch's (a features extractor) is never imported: pass it in `custom_objects`
        (`{"features_extractor_class": MyExtractor}`, or SB3's `{"policy_kwargs": {...}}`), and so is a
        callable schedule the model was trained with (`{"learning_rate": lambda progress_remaining: ...}`).
        `path` may be an open binary file object (io.BytesIO)."""
        model = open_model(path)  # the header only: checked against the description before any tensor is read
        d = model.description
        check_description(model)
        check_envs_to_build(model, env, TORCH_NATIVE_PREFIX)
        check_json_state(str(path), d)  # optimiser settings, K-FAC counters: before anything is built
        if d.get("algo") != cls.algo:
            raise ModelFileError(
                f"{path}: holds a {str(d.get('algo')).upper()} model, not {cls.algo.upper()}; "
                f"load it with {str(d.get('algo')).upper()}.load"
            )
        options = {k: overrides.pop(k) if k in overrides else d[k] for k in AGENT_OPTIONS if k in overrides or k in d}
        # how to run, not what was trained: never saved, taken only from the caller
        options.update({k: overrides.pop(k) for k in RUN_OPTIONS if k in overrides})
        if device not in ("auto", None):  # "auto" is decided by the agent, for its policy and env
            device = resolve_device(device)  # an unavailable device is the caller's problem, not the file's
        try:
            obs_space = space_from_json(d["observation_space"])
            act_space = space_from_json(d["action_space"])
            hyperparameters = {**hyperparameters_from_saved(d["hyperparameters"], custom_objects, str(path)), **overrides}
            policy_kwargs = policy_kwargs_from_json(d.get("policy_kwargs") or {}, custom_objects, str(path))
            policy = d["policy"]
            if isinstance(policy, dict):
                policy = class_from_json(policy, "policy", custom_objects, str(path))
            if device in ("auto", None):  # as a new agent would choose: for this policy and the env it will run on
                task = env if env is not None else d.get("env_id")
                device = resolve_device(device, lambda: devices.auto_device(task, _n_envs(env, d), policy, policy_kwargs))
            agent = cls(
                policy, None, policy_kwargs=policy_kwargs, n_envs=_n_envs(env, d),
                seed=d.get("seed"), device=device, _spaces=(obs_space, act_space), **options, **hyperparameters,
            )
        except ModelFileError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            what = ("does not load with the hyperparameters given (" + ", ".join(sorted(overrides)) + ")"
                    if overrides else "the model description is incomplete or inconsistent")
            raise ModelFileError(f"{path}: {what}: {err}") from None
        tensors = agent._read_tensors(model)
        agent._load_tensors(path, tensors)
        if "extra_state" in d:
            extra = ckpt.unpack_state(d["extra_state"], tensors, str(path))
        else:  # files written before extra state was nested
            extra = {"reward_scaler": {k[len("reward_scaler."):]: v for k, v in tensors.items()
                                       if k.startswith("reward_scaler.")}}
        try:
            agent._load_extra_state(extra)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise ModelFileError(f"{path}: the saved agent state does not fit {cls.__name__}: {err}") from None
        try:
            agent.num_timesteps, agent.n_updates = int(d.get("num_timesteps", 0)), int(d.get("n_updates", 0))
            agent.sb3_n_updates = int(d.get("sb3_n_updates", agent.n_updates))
        except (TypeError, ValueError) as err:
            raise ModelFileError(f"{path}: bad step counters in the description: {err}") from None
        agent.env_id = d.get("env_id")
        rng = agent._restore_checkpoint(path, tensors, d["checkpoint"]) if isinstance(d.get("checkpoint"), dict) else None
        if env is not None:
            try:
                agent.set_env(env, n_envs=d.get("n_envs", 1) if isinstance(env, str) else 1, force_reset=force_reset)
            except ValueError as err:
                if "differs from the model" in str(err):
                    raise ModelFileError(f"{path}: does not fit this env: {err}") from None
                raise
        if rng is not None:
            ckpt.set_rng_state(rng, str(path))
            if distributed.rank() > 0:  # the checkpoint holds rank 0's streams: the other ranks branch off them
                branch = int(torch.randint(2**62, (1,)).item()) + distributed.rank() * 1_000_003
                set_global_seeds(branch)
                agent.generator.manual_seed(branch)
        return agent

    @classmethod
    def load_sb3(cls, path, env=None, device="auto", **overrides):
        """A Stable-Baselines3 `.zip` (PPO -> PPO, A2C -> VPG, sb3-contrib TRPO -> TRPO) as this agent: its
        weights via torch.load(weights_only=True) and its JSON `data`, never its pickles (agents/sb3_import.py).
        `env` is needed where SB3's JSON does not hold a space readably; `overrides` replace hyperparameters."""
        from rlgeom.agents.sb3_import import load_sb3

        return load_sb3(cls, path, env=env, device=device, **overrides)

    def _read_tensors(self, model) -> dict[str, torch.Tensor]:
        """The file's tensors, read only when they add up to no more than this model can use: its policy
        (built from the checked description) plus a bounded multiple for optimiser and agent state."""
        policy_bytes = sum(v.numel() * v.element_size() for v in self.policy.state_dict().values())
        model.check_tensor_budget(EXTRA_STATE_FACTOR * policy_bytes + EXTRA_STATE_BYTES, "this model")
        tensors = model.tensors()
        check_tensors(model.name, tensors)  # every saved state, not only the weights, within its range
        return tensors

    def _load_tensors(self, path, tensors: dict[str, torch.Tensor]) -> None:
        policy_state = {k[len("policy."):]: v for k, v in tensors.items() if k.startswith("policy.")}
        for alias, original in state_aliases(self.policy).items():  # stored once, under its first name
            if alias not in policy_state and original in policy_state:
                policy_state[alias] = policy_state[original]
        expected = self.policy.state_dict()
        missing = sorted(set(expected) - set(policy_state))
        unexpected = sorted(set(policy_state) - set(expected))
        wrong = [k for k in expected if k in policy_state and policy_state[k].shape != expected[k].shape]
        if missing or unexpected or wrong:
            raise ModelFileError(
                f"{path}: weights do not fit the described policy (missing {missing[:4]}, unexpected "
                f"{unexpected[:4]}, wrong shape {wrong[:4]})"
            )
        dtypes = [f"{k} ({policy_state[k].dtype}, expected {v.dtype})" for k, v in expected.items()
                  if policy_state[k].dtype != v.dtype]
        if dtypes:
            raise ModelFileError(f"{path}: tensors of another dtype than the policy's: {', '.join(dtypes[:4])}")
        nonfinite = [k for k, v in policy_state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if nonfinite:
            raise ModelFileError(f"{path}: non-finite (NaN or inf) values in {', '.join(nonfinite[:4])}; "
                                 "rlgeom never loads or resumes from such weights")
        self.policy.load_state_dict(policy_state)


def _n_envs(env, description: dict) -> int:
    """The number of envs the loaded model is built for: an env object's own (as SB3's load takes the VecEnv
    it is given), else the saved one (an env id is built with it)."""
    if env is not None and not isinstance(env, str):
        return int(getattr(env, "num_envs", 1))
    return description.get("n_envs", 1)

