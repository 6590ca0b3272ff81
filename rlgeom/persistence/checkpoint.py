"""Checkpoints: everything a run needs to continue as if it had never stopped, without pickle.

A checkpoint is a model file (`rlgeom.persistence.serialization`: safetensors + JSON in the header, written
atomically: temporary file, fsync, rename) whose description also holds a `"checkpoint"` record.
Nested state (a torch optimizer's `state_dict()`, a K-FAC `state_dict()`, RNG states) is split by
`pack_state` into tensors, stored by safetensors, and a JSON skeleton in which each tensor is a
`{"__tensor__": key}` reference; `unpack_state` rebuilds it. Only JSON types, tuples, int-keyed
dicts and tensors are accepted: there is no way to smuggle an object (or code) into a checkpoint.

Checkpoints of a run live in one directory as `checkpoint_<steps>.safetensors` (zero-padded, so
names sort by step); a temporary file being written has another name (`....safetensors.tmp<pid>-<random>-<host>`)
and is never listed, so a process killed mid-write leaves at most a stray temporary (removed by the
next process that locks the folder) and the previous checkpoints intact. `latest_checkpoint` picks the
newest complete one. A run prunes only the checkpoints it wrote itself (and the one it resumed from).
A checkpoint folder belongs to one run (`check_checkpoint_dir`): a run writes only into a folder that holds
no checkpoint, or one that holds a file it wrote or resumed from, and never inside another run's directory.
"""

from __future__ import annotations

import os
import random
import re
import sys

import numpy as np
import torch

from rlgeom.persistence.serialization import SUFFIX, ModelFileError, open_model

PREFIX = "checkpoint_"
_NAME = re.compile(rf"^{PREFIX}(\d+){re.escape(SUFFIX)}$")
#: temporary files of checkpoints being written (rlgeom.persistence.outputs.temp_name), never listed as checkpoints
TEMP_PATTERN = f"{PREFIX}*{SUFFIX}.tmp*"
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


# ----------------------------------------------------------------------------- nested state
def pack_state(prefix: str, obj) -> tuple[dict[str, torch.Tensor], object]:
    """(tensors keyed `prefix/path`, JSON skeleton) of a nested dict/list/tuple of tensors and JSON values."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(x, path: str):
        if isinstance(x, torch.Tensor):
            if path in tensors:
                raise ValueError(f"state key {path!r} occurs twice")
            tensors[path] = x.detach()
            return {_TENSOR: path}
        if isinstance(x, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in x):
                return {k: walk(v, f"{path}/{k}") for k, v in x.items()}
            if not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in x):
                raise TypeError(f"state at {path!r} has keys that are neither str nor int: {list(x)[:4]}")
            return {_ITEMS: [[k, walk(v, f"{path}/{k}")] for k, v in x.items()]}
        if isinstance(x, tuple):
            return {_TUPLE: [walk(v, f"{path}/{i}") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(x)]
        if isinstance(x, np.ndarray):
            return walk(torch.from_numpy(np.ascontiguousarray(x)), path)
        if isinstance(x, np.generic):
            return x.item()
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"cannot store {type(x).__name__} at {path!r} in a checkpoint (tensors and JSON values only)")

    return tensors, walk(obj, prefix)


def unpack_state(skeleton, tensors: dict[str, torch.Tensor], where: str = "checkpoint"):
    """Inverse of `pack_state`; ModelFileError if a tensor reference names a missing tensor."""

    def walk(x):
        if isinstance(x, dict):
            if set(x) == {_TENSOR}:
                if x[_TENSOR] not in tensors:
                    raise ModelFileError(f"{where}: the tensor {x[_TENSOR]!r} named in the description is missing")
                return tensors[x[_TENSOR]]
            if set(x) == {_TUPLE}:
                return tuple(walk(v) for v in x[_TUPLE])
            if set(x) == {_ITEMS}:
                return {k: walk(v) for k, v in x[_ITEMS]}
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    try:
        return walk(skeleton)
    except (TypeError, ValueError) as err:
        if isinstance(err, ModelFileError):
            raise
        raise ModelFileError(f"{where}: malformed state description: {err}") from None


# ----------------------------------------------------------------------------- random states
def rng_state() -> dict:
    """Global RNG states: torch CPU (and CUDA, when initialised) as uint8 tensors, numpy and random as JSON."""
    np_state = np.random.get_state()
    state = {
        "torch_cpu": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict, where: str = "checkpoint") -> None:
    """Restore what `rng_state()` returned. CUDA states are restored only where CUDA is available."""
    try:
        torch.set_rng_state(state["torch_cpu"].to(torch.uint8).cpu())
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
        cuda = state.get("torch_cuda")
        if cuda and torch.cuda.is_available():
            for i, s in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s.to(torch.uint8).cpu(), i)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ModelFileError(f"{where}: the saved random-number-generator state is unusable: {err}") from None


# ----------------------------------------------------------------------------- files of a run
def checkpoint_path(directory: str, step: int) -> str:
    return os.path.join(directory, f"{PREFIX}{int(step):012d}{SUFFIX}")


def list_checkpoints(directory: str) -> list[tuple[int, str]]:
    """Complete checkpoints in `directory` as (step, path), oldest first; temporaries are never listed."""
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        m = _NAME.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(directory, name)))
    return sorted(found)


def prune_checkpoints(directory: str, keep: int, owned: set[str]) -> list[str]:
    """Keep the newest `keep` of the checkpoints in `directory` that are in `owned` (real paths, symlinks
    resolved, of the files this run wrote or resumed from); no other file is ever removed. Returns the removed paths."""
    mine = [path for _, path in list_checkpoints(directory) if os.path.realpath(path) in owned]
    removed = mine[:-keep] if keep > 0 else []
    for path in removed:
        owned.discard(os.path.realpath(path))
        os.remove(path)
    return removed


def resumable(directory: str | None) -> str | None:
    """`directory` when it holds a checkpoint to resume from, else None (what a disk-full error may suggest)."""
    return directory if directory and list_checkpoints(directory) else None


def check_checkpoint_dir(directory: str, run_dir: str | None, owned: set[str]) -> None:
    """A checkpoint folder belongs to one run. OutputError (naming the owner) for a folder inside the run
    directory of another run than `run_dir`, or one that holds checkpoints while holding none of the files
    this run wrote or resumed from (`owned`, real paths): writing there would replace that run's checkpoints."""
    from rlgeom.persistence.outputs import OutputError, check_outside_other_runs

    check_outside_other_runs(directory, "checkpoint directory", run_dir)
    real = os.path.realpath(os.fspath(directory))
    found = list_checkpoints(real)
    if found and not any(os.path.dirname(path) == real for path in owned):
        raise OutputError(
            f"the checkpoint directory {directory} holds the checkpoints of another run ({_owner(found[-1][1])}); "
            "a checkpoint folder belongs to one run: choose a new or empty one (--checkpoint-dir / checkpoint_dir=), "
            f"or continue that run (--resume {directory})")


def _owner(path: str) -> str:
    """'ppo on CartPole-v1, seed 0, at step 128' from a checkpoint's header (its tensors are not read)."""
    try:
        d = open_model(path).description
    except (ModelFileError, OSError):
        return f"its newest checkpoint {os.path.basename(path)} unreadable"
    return f"{d.get('algo', '?')} on {d.get('env_id', '?')}, seed {d.get('seed', '?')}, at step {d.get('num_timesteps', '?')}"


def latest_checkpoint(path: str) -> str:
    """The newest complete, readable checkpoint for `path`: a checkpoint file itself, a checkpoint
    directory, or a run directory (its `checkpoints/`). An unreadable newest file (e.g. damaged on
    disk) is reported on stderr and the one before it is used."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    candidates = list_checkpoints(path) or list_checkpoints(os.path.join(path, "checkpoints"))
    if not candidates:
        raise ModelFileError(
            f"{path}: no checkpoint found (looked for {PREFIX}<steps>{SUFFIX} in it and in its checkpoints/)"
        )
    for _, candidate in reversed(candidates):
        try:
            with open_model(candidate) as model:
                model.verify()  # header and checksum, streamed: bounded memory whatever the file
        except ModelFileError as err:
            print(f"rlgeom: skipping unreadable checkpoint: {err}", file=sys.stderr)
            continue
        return candidate
    raise ModelFileError(f"{path}: every checkpoint in it is unreadable")


def find_run_checkpoint(run_roots: list[str]) -> str:
    """The newest checkpoint (by step, then modification time) across several run directories."""
    best = None
    for root in run_roots:
        for step, path in list_checkpoints(os.path.join(root, "checkpoints")):
            key = (step, os.path.getmtime(path))
            if best is None or key > best[0]:
                best = (key, root)
    if best is None:
        raise ModelFileError(f"no checkpoint to resume from in {', '.join(run_roots) or '(no run directory)'}")
    return latest_checkpoint(best[1])


def open_resumed_logger(run_dir: str, step: int, verbose: int = 0):
    """A RunLogger continuing `run_dir` from `step`: the directory is locked, the events it holds are cut
    to one per (tag, step) up to `step` (rlgeom.persistence.logger.keep_events_up_to: what an interrupted
    process logged after its last checkpoint is archived, not shown twice), then logging resumes."""
    from rlgeom.persistence import logger as runlog
    from rlgeom.persistence.outputs import lock_directory, write_error

    lock = lock_directory(run_dir, "run directory")
    try:
        archive = runlog.keep_events_up_to(run_dir, step)
    except OSError as err:  # a full disk: its partial files are removed, the run is as it was
        lock.release()
        raise write_error(f"the TensorBoard events of {run_dir} (kept up to step {step} before resuming)", err,
                          kept="the run's files are as they were",
                          resume_from=resumable(os.path.join(run_dir, "checkpoints"))) from None
    if archive is not None:
        print(f"rlgeom: resuming {run_dir} at step {step}: its TensorBoard events up to that step were kept, the "
              f"previous event files are archived in {os.path.basename(archive)}", file=sys.stderr)
    runlog._claimed[os.path.abspath(run_dir)] = lock
    return runlog.RunLogger(run_dir, verbose)


__all__ = [
    "pack_state", "unpack_state", "rng_state", "set_rng_state", "checkpoint_path", "list_checkpoints",
    "prune_checkpoints", "resumable", "check_checkpoint_dir", "latest_checkpoint", "find_run_checkpoint", "open_resumed_logger",
]
