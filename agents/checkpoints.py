"""Checkpoints and resume: everything needed to continue a run as if it had not stopped (weights,
optimisers, agent state, normalisation statistics, counters, RNG states, the env's state where it
offers one, the TensorBoard run), written atomically as a normal model file plus a `checkpoint` record.
"""

from __future__ import annotations

import os

import torch

from rlgeom.persistence import checkpoint as ckpt
from rlgeom.persistence import outputs
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
        """Where this learn() writes checkpoints: `directory` if given, else the folder this run already
        writes to (a resumed checkpoint's own folder), else `<run dir>/checkpoints`; never a folder read
        from a file. The folder is created, probed and locked now, before any training."""
        self._checkpoint_every, self._keep_checkpoints = (int(every) if every is not None else None), int(keep)
        if new_run:
            self._checkpoint_dir = None
        if directory is not None:
            self._checkpoint_dir = os.fspath(directory)
        elif every is not None and self._checkpoint_dir is None:
            self._checkpoint_dir = os.path.join(self._run_dir, "checkpoints")
        if self._checkpoint_dir is not None:
            self.logger.checkpoint_dir = self._checkpoint_dir
        if self._checkpoint_every is not None:
            self._hold_checkpoint_dir(self._checkpoint_dir)

    def _check_checkpoint_owner(self, directory, new_run: bool) -> None:
        """Before anything of a run is created: refuse a checkpoint folder that belongs to another run
        (rlgeom.persistence.checkpoint.check_checkpoint_dir). A new run owns no file yet."""
        if new_run:
            self._own_checkpoints.clear()
        if directory is not None:
            ckpt.check_checkpoint_dir(os.fspath(directory), None if new_run else self._run_dir, self._own_checkpoints)

    def _hold_checkpoint_dir(self, directory: str) -> None:
        """Lock `directory` for this agent (releasing a folder it held before), check that it is this run's
        (it holds no other run's checkpoints), and clear the temporaries a killed writer left there: with
        the lock held no live rlgeom process is writing in it."""
        held = getattr(self, "_checkpoint_lock", None)
        if held is None or held[0] != os.path.realpath(directory):
            lock = outputs.lock_directory(directory, "checkpoint directory")
            try:
                ckpt.check_checkpoint_dir(directory, self._run_dir, self._own_checkpoints)
            except outputs.OutputError:
                lock.release()
                raise
            if held is not None:
                held[1].release()
            self._checkpoint_lock = (os.path.realpath(directory), lock)
        outputs.remove_stale_temps(directory, ckpt.TEMP_PATTERN)

    def _write_checkpoint(self, directory: str | None = None) -> str:
        """A checkpoint now; then the oldest of the checkpoints this agent wrote in that folder (and the one
        it was resumed from) beyond keep_checkpoints are removed: no other file is ever deleted."""
        directory = directory or self._checkpoint_dir
        self._hold_checkpoint_dir(directory)
        self._last_checkpoint_step = self.num_timesteps
        path = self.save_checkpoint(ckpt.checkpoint_path(directory, self.num_timesteps))
        self._own_checkpoints.add(os.path.realpath(path))
        ckpt.prune_checkpoints(directory, self._keep_checkpoints, self._own_checkpoints)
        if self.num_timesteps >= self._target_timesteps:  # learn()'s last checkpoint: the folder is free again
            self._release_checkpoint_dir()
        return path

    def _release_checkpoint_dir(self) -> None:
        held, self._checkpoint_lock = getattr(self, "_checkpoint_lock", None), None
        if held is not None:
            held[1].release()

    @property
    def _own_checkpoints(self) -> set[str]:
        """Real paths (symlinks resolved) of the checkpoints this run may prune: those this agent wrote, plus the
        one it was loaded from; a folder holding one of them is this run's to write in."""
        if "_own_checkpoint_paths" not in vars(self):
            self._own_checkpoint_paths = set()
        return self._own_checkpoint_paths

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
            "last_checkpoint_step": self._last_checkpoint_step,
            "checkpoint_every": self._checkpoint_every, "keep_checkpoints": self._keep_checkpoints,
            "ep_info_buffer": [{"r": float(e["r"]), "l": int(e["l"])} for e in self.ep_info_buffer],
        }
        return write_model(path, tensors, description,
                           resume_from=ckpt.resumable(os.path.dirname(os.path.abspath(os.fspath(path))))
                           if isinstance(path, (str, os.PathLike)) else None)

    def _restore_checkpoint(self, path, tensors: dict, record: dict) -> dict:
        """Take back what save_checkpoint() wrote; returns the RNG states (restored last, by load)."""
        state = ckpt.unpack_state(record["state"], tensors, str(path))
        if not (isinstance(state.get("optimizers"), dict) and isinstance(state.get("generator"), torch.Tensor)
                and isinstance(state.get("rng"), dict)):
            raise ModelFileError(f"{path}: the checkpoint's training state lacks its optimisers, generator or RNG states")
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
        self._continue_where_the_checkpoint_lies(path)
        self._checkpoint_every = record.get("checkpoint_every")
        self._keep_checkpoints = int(record.get("keep_checkpoints") or 3)
        self.ep_info_buffer.extend(record.get("ep_info_buffer", []))
        return state["rng"]

    def _continue_where_the_checkpoint_lies(self, path) -> None:
        """A loaded checkpoint continues in its own folder, wherever that folder is now (a moved or copied
        run included); the folders recorded inside older checkpoint files are ignored: nothing read from a
        file decides where to write or what to delete. `<run>/checkpoints/<file>` continues the TensorBoard
        run `<run>` when it is one (it holds run.json or event files)."""
        self._run_dir = self.tensorboard_log = self._checkpoint_dir = None
        if not isinstance(path, (str, os.PathLike)):  # a file object: no folder of its own
            return
        # symlinks resolved: a run reached through a link is the run it links to, whatever path named it
        self._checkpoint_dir = os.path.dirname(os.path.realpath(os.fspath(path)))
        self._own_checkpoints.add(os.path.realpath(os.fspath(path)))
        run_dir = os.path.dirname(self._checkpoint_dir)
        if os.path.basename(self._checkpoint_dir) == "checkpoints" and _is_run_dir(run_dir):
            self._run_dir = run_dir
            # <tensorboard_log>/<task>/<algo>/seed<k>: a new run started later by this agent goes beside it
            self.tensorboard_log = os.path.dirname(os.path.dirname(os.path.dirname(run_dir)))


def _is_run_dir(path: str) -> bool:
    return os.path.isdir(path) and any(n == "run.json" or "tfevents" in n for n in os.listdir(path))
