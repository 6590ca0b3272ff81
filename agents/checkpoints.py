"""Checkpoints and resume: everything needed to continue a run as if it had not stopped (weights,
optimisers, agent state, normalisation statistics, counters, RNG states, the env's state where it
offers one, the TensorBoard run), written atomically as a normal model file plus a `checkpoint` record.
"""

from __future__ import annotations

import os

import torch

from rlgeom.persistence import checkpoint as ckpt
from rlgeom import validation
from rlgeom.persistence.serialization import ModelFileError, write_model


class Checkpoints:
    """Mixin of OnPolicyAgent (agents/base.py): periodic checkpoints in learn(), save_checkpoint, and
    taking a checkpoint's training state back in load()."""

    def _check_checkpoint_args(self, every, directory, keep) -> None:
        validation.positive_int("checkpoint_every", every, allow_none=True,
                                meaning="a positive number of environment steps")
        validation.positive_int("keep_checkpoints", keep)
        if every is not None and directory is None and not self.tensorboard_log and not self._checkpoint_dir:
            raise ValueError(
                "checkpoint_every needs a place to write: pass checkpoint_dir=... to learn(), or tensorboard_log=... "
                "to the agent (checkpoints then go to <run dir>/checkpoints)"
            )

    def _setup_checkpoints(self, every, directory, keep, new_run: bool) -> None:
        self._checkpoint_every, self._keep_checkpoints = (int(every) if every is not None else None), int(keep)
        if new_run:
            self._checkpoint_dir = None
        if directory is not None:
            self._checkpoint_dir = os.fspath(directory)
        elif every is not None and self._checkpoint_dir is None:
            self._checkpoint_dir = os.path.join(self._run_dir, "checkpoints")

    def _write_checkpoint(self, directory: str | None = None) -> str:
        directory = directory or self._checkpoint_dir
        self._last_checkpoint_step = self.num_timesteps
        path = self.save_checkpoint(ckpt.checkpoint_path(directory, self.num_timesteps))
        ckpt.prune_checkpoints(directory, self._keep_checkpoints)
        return path

    def save_checkpoint(self, path) -> str:
        """Everything needed to continue this run as if uninterrupted: weights, optimiser states,
        extra agent state, normalisation statistics, counters, RNG states (global torch/CUDA, numpy,
        random and the agent's generator), the env state where the env offers `state_dict()`, and the
        TensorBoard run. Written atomically; loadable with `Agent.load` like any saved model."""
        tensors, description = self._model_state()
        env_state = None
        if hasattr(self.env, "state_dict") and self._last_obs is not None:
            env_state = {"env": self.env.state_dict(), "last_obs": self._last_obs,
                         "episode_starts": self._last_episode_starts}
        training = {
            "optimizers": {name: o.state_dict() for name, o in self._optimizers().items()},
            "rng": ckpt.rng_state(), "generator": self.generator.get_state(), "env": env_state,
        }
        more, skeleton = ckpt.pack_state("training", training)
        tensors.update(more)
        description["checkpoint"] = {
            "state": skeleton, "target_timesteps": int(self._target_timesteps),
            "skipped_updates": self.skipped_updates, "consecutive_skips": self._consecutive_skips,
            "last_checkpoint_step": self._last_checkpoint_step, "run_dir": self._run_dir,
            "tensorboard_log": self.tensorboard_log, "checkpoint_dir": self._checkpoint_dir,
            "checkpoint_every": self._checkpoint_every, "keep_checkpoints": self._keep_checkpoints,
            "ep_info_buffer": [{"r": float(e["r"]), "l": int(e["l"])} for e in self.ep_info_buffer],
        }
        return write_model(path, tensors, description)

    def _restore_checkpoint(self, path, tensors: dict, record: dict) -> dict:
        """Take back what save_checkpoint() wrote; returns the RNG states (restored last, by load)."""
        state = ckpt.unpack_state(record["state"], tensors, str(path))
        for name, optimizer in self._optimizers().items():
            saved = state["optimizers"].get(name)
            if saved is None:
                raise ModelFileError(f"{path}: the checkpoint has no state for the optimiser {name!r}")
            try:
                optimizer.load_state_dict(saved)
            except (ValueError, KeyError, TypeError, RuntimeError) as err:
                raise ModelFileError(f"{path}: the state of optimiser {name!r} does not fit this agent: {err}") from None
        try:
            self.generator.set_state(state["generator"].to(torch.uint8))
        except (RuntimeError, TypeError) as err:
            raise ModelFileError(f"{path}: the agent's generator state is unusable: {err}") from None
        self._pending_env_state = state.get("env")
        self._target_timesteps = int(record.get("target_timesteps") or 0)
        self.skipped_updates = int(record.get("skipped_updates", 0))
        self._consecutive_skips = int(record.get("consecutive_skips", 0))
        self._last_checkpoint_step = record.get("last_checkpoint_step")
        self._run_dir, self.tensorboard_log = record.get("run_dir"), record.get("tensorboard_log")
        self._checkpoint_dir = record.get("checkpoint_dir")
        self._checkpoint_every = record.get("checkpoint_every")
        self._keep_checkpoints = int(record.get("keep_checkpoints") or 3)
        self.ep_info_buffer.extend(record.get("ep_info_buffer", []))
        return state["rng"]
