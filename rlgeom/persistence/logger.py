"""TensorBoard logging with SB3's tag names and SB3's logger surface (record / dump).

SB3 callbacks (EvalCallback, ...) call `model.logger.record(...)` and `model.logger.dump(step)`;
they work unchanged against this logger, and their figures land in the same TensorBoard run.
One run directory per (task, agent, seed): <tensorboard_log>/<task>/<tb_log_name>/seed<k>, never
overwritten (a second run with the same name gets a suffix), with run.json naming the run.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections import defaultdict

import numpy as np

from rlgeom.persistence.outputs import (check_outside_other_runs, lock_directory, try_lock_fresh_directory,
                                        write_atomically, write_error)


def run_directory(root: str, env_id: str | None, name: str, seed: int | None) -> str:
    """A fresh run directory, locked for this process: `<root>/<task>/<name>/seed<k>`, or with a suffix
    when that one holds files or another process claimed it first (two runs started at once never share
    one). The RunLogger opened on it takes the lock over."""
    check_outside_other_runs(root, "log directory (tensorboard_log / --logdir)")
    base = run_directory_base(root, env_id, name, seed)
    path, k = base, 1
    while True:
        if os.path.abspath(path) in _claimed:  # claimed for this run beforehand (a grid's worker)
            return path
        lock = try_lock_fresh_directory(path)
        if lock is not None:
            _claimed[os.path.abspath(path)] = lock
            return path
        k += 1
        path = f"{base}_{k}"


def run_directory_base(root: str, env_id: str | None, name: str, seed: int | None) -> str:
    task = (env_id or "unknown-env").replace("/", "-")
    return os.path.join(root, task, name, f"seed{seed}" if seed is not None else "run")


def latest_run_directory(root: str, env_id: str | None, name: str, seed: int | None) -> str | None:
    """The newest existing run directory run_directory() made for (task, name, seed) that really lies under
    `root`, or None. A folder reached through a link to elsewhere (another run's directory) is never the one a
    run continues in: symlinks are resolved before the comparison (issue 30)."""
    base = run_directory_base(root, env_id, name, seed)
    runs = [base] if os.path.isdir(base) else []
    k = 2
    while os.path.isdir(f"{base}_{k}"):
        runs.append(f"{base}_{k}")
        k += 1
    return runs[-1] if runs and resolves_under(runs[-1], root) else None


def resolves_under(path: str, root: str) -> bool:
    """Whether `path`, symlinks resolved, lies inside `root` (also resolved)."""
    real_root = os.path.realpath(root)
    return os.path.commonpath([os.path.realpath(path), real_root]) == real_root


def sb3_run_directory(root: str, name: str, new_run: bool = True) -> str:
    """SB3's run folder `<root>/<name>_<N>`: N one past the highest existing (SB3's get_latest_run_id), or
    the highest itself when continuing a run (learn(reset_num_timesteps=False), as SB3 does)."""
    import glob
    import re

    pattern = re.compile(re.escape(name) + r"_(\d+)$")
    ids = [int(m.group(1)) for path in glob.glob(os.path.join(glob.escape(root), f"{glob.escape(name)}_*"))
           if (m := pattern.match(os.path.basename(path))) and os.path.isdir(path)]
    latest = max(ids, default=0)
    if not new_run and latest and resolves_under(os.path.join(root, f"{name}_{latest}"), root):
        return os.path.join(root, f"{name}_{latest}")
    return os.path.join(root, f"{name}_{latest + 1}")  # a new run, or the latest is a link to elsewhere


#: run directories chosen by run_directory whose lock the RunLogger opened on them takes over
_claimed: dict = {}


class RunLogger:
    """Collects key/value pairs and writes them to TensorBoard at `dump(step)`."""

    def __init__(self, run_dir: str | None = None, verbose: int = 0):
        self.run_dir, self.verbose = run_dir, verbose
        self.name_to_value: dict[str, float] = {}
        self._means: dict[str, list[float]] = defaultdict(list)
        self._excluded: set[str] = set()
        self.writer = None
        self._lock = None
        #: where this run's checkpoints go (a disk-full error suggests resuming only when it holds some)
        self.checkpoint_dir = os.path.join(run_dir, "checkpoints") if run_dir is not None else None
        if run_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            # the run directory is this process's while the logger is open (a second writer is refused)
            self._lock = _claimed.pop(os.path.abspath(run_dir), None) or lock_directory(run_dir, "run directory")
            _quiet_event_writer_threads()
            self.writer = SummaryWriter(run_dir)

    def record(self, key: str, value, exclude=None) -> None:
        self.name_to_value[key] = value
        if exclude is not None and "tensorboard" in (exclude if isinstance(exclude, (tuple, list)) else (exclude,)):
            self._excluded.add(key)

    def record_mean(self, key: str, value, exclude=None) -> None:
        self._means[key].append(float(value))
        self.name_to_value[key] = float(np.mean(self._means[key]))

    def dump(self, step: int = 0) -> None:
        if self.verbose:
            self._print(step)
        if self.writer is not None:
            try:
                for key, value in self.name_to_value.items():
                    if key in self._excluded or not _is_scalar(value):
                        continue
                    self.writer.add_scalar(key, float(value), step)
                self.writer.flush()
            except OSError as err:  # raised again here from TensorBoard's writer thread (disk full)
                from rlgeom.persistence.checkpoint import resumable

                raise write_error(f"the TensorBoard events of {self.run_dir}", err,
                                  kept="the events and checkpoints written before are kept",
                                  resume_from=resumable(self.checkpoint_dir)) from None
        self.name_to_value.clear()
        self._means.clear()
        self._excluded.clear()

    def write_run_info(self, info: dict) -> None:
        """run.json (task, agent, seed, hyperparameters) and the same as TensorBoard text."""
        if self.writer is None:
            return
        # a new file renamed into place: never written through a hard link into another run's copy
        write_atomically(os.path.join(self.run_dir, "run.json"), json.dumps(info, indent=2, default=str).encode())
        rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(info.get("hyperparameters", {}).items()))
        self.writer.add_text("hyperparameters", "| name | value |\n|---|---|\n" + rows, 0)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _print(self, step: int) -> None:
        width = max((len(k) for k in self.name_to_value), default=10)
        lines = [f"| {k:<{width}} | {_fmt(v):>12} |" for k, v in sorted(self.name_to_value.items())]
        print("\n".join([f"--- step {step} ---", *lines]))


def _quiet_event_writer_threads() -> None:
    """TensorBoard writes events in a thread; a write that fails there (disk full) is printed by the thread
    as a traceback and raised again by the next write in the main thread, where dump() turns it into a
    clear error. Only that thread's OSErrors are silenced (once, process-wide); anything else prints."""
    from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread

    previous = threading.excepthook
    if getattr(previous, "_rlgeom_quiet", False):
        return

    def hook(args) -> None:
        if not (isinstance(args.thread, _AsyncWriterThread) and isinstance(args.exc_value, OSError)):
            previous(args)

    hook._rlgeom_quiet = True
    threading.excepthook = hook


def _is_scalar(value) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)


# ----------------------------------------------------------------------------- resumed runs
KEPT_MARK = ".kept-to-step-"
ARCHIVE_PREFIX = "events-before-resume-at-step-"
_EVENTS_TMP = ".rlgeom-events-*.tmp"


def keep_events_up_to(run_dir: str, step: int) -> str | None:
    """Make `run_dir` hold one value per (tag, step) up to `step` and nothing after it, before a resumed
    run logs from `step` on. The caller holds the run directory's lock.

    A killed run logged past its last checkpoint; the resumed one logs those steps again. TensorBoard
    hides the repeats through a purge event, but tbparse and other plain readers see every copy. So the
    events kept (each (tag, step) once, its latest copy, step <= `step`) are rewritten into one fresh event
    file that sorts before the resumed writer's, the old event files are archived into
    `events-before-resume-at-step-<step>-<time>.tar` in the run directory (no reader treats a tar as a
    run; nothing of the user's is deleted) and removed. Every stage leaves either the old or the new set
    (a kill between the rename and the removal leaves copies that the next resume folds into one).
    Returns the archive's path (None when there was nothing to rewrite)."""
    from rlgeom.persistence.outputs import remove_stale_temps

    remove_stale_temps(run_dir, _EVENTS_TMP)  # partial rewrites of a killed resume
    originals = sorted(n for n in os.listdir(run_dir) if "tfevents" in n and os.path.isfile(os.path.join(run_dir, n)))
    if not originals:
        return None
    records = _kept_records([os.path.join(run_dir, n) for n in originals], int(step))
    stamp = min([_name_time(n) for n in originals] + [int(time.time())]) - 1  # sorts before the next writer's file
    kept_name = f"events.out.tfevents.{stamp}.{socket.gethostname()}.{os.getpid()}{KEPT_MARK}{int(step)}"
    kept_tmp = os.path.join(run_dir, f".rlgeom-events-{os.getpid()}-kept.tmp")
    try:
        _write_records(kept_tmp, records)
        archive = _archive(run_dir, originals, f"{ARCHIVE_PREFIX}{int(step)}-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(kept_tmp, os.path.join(run_dir, kept_name))
    except OSError:  # a full disk: the partial rewrite goes, the run's event files are as they were
        remove_stale_temps(run_dir, _EVENTS_TMP)
        raise
    for name in originals:
        if name != kept_name:
            os.remove(os.path.join(run_dir, name))
    return archive


def _kept_records(paths: list[str], step: int) -> list[bytes]:
    """Raw event records with step <= `step`, each (tag, step) once (its last copy, in file order)."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2

    events = []
    for path in paths:
        try:
            for raw in RawEventFileLoader(path).Load():  # a record truncated by a kill ends the file
                event = event_pb2.Event.FromString(raw)
                if event.HasField("summary") and event.step <= step:
                    events.append((raw, [(v.tag, event.step) for v in event.summary.value]))
        except Exception as err:  # the reader raises varied errors on damaged files; keep what was read
            print(f"rlgeom: {path}: stopped reading a damaged event file: {err}", file=sys.stderr)
    kept, seen = [], set()
    for raw, keys in reversed(events):
        if keys and all(k in seen for k in keys):
            continue
        seen.update(keys)
        kept.append(raw)
    return kept[::-1]


def _write_records(path: str, records: list[bytes]) -> None:
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    with open(path, "wb") as f:
        writer = RecordWriter(f)
        writer.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        for raw in records:
            writer.write(raw)
        f.flush()
        os.fsync(f.fileno())


def _archive(run_dir: str, names: list[str], stem: str) -> str:
    """The files `names` of `run_dir` in an uncompressed tar next to them (temporary name, fsync, rename)."""
    import tarfile

    path, tmp = os.path.join(run_dir, f"{stem}.tar"), os.path.join(run_dir, f".rlgeom-events-{os.getpid()}-tar.tmp")
    with open(tmp, "wb") as f:
        with tarfile.open(fileobj=f, mode="w") as tar:
            for name in names:
                tar.add(os.path.join(run_dir, name), arcname=name)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _name_time(name: str) -> int:
    """The creation second in an event file's name (events.out.tfevents.<seconds>.<host>...)."""
    part = name.split("tfevents.", 1)[-1].split(".", 1)[0]
    return int(part) if part.isdigit() else int(time.time())
