"""Read TensorBoard run directories into plain numpy curves.

A run is a directory that directly holds event files. Its (task, agent, seed) come from a
``run.json`` (keys ``env_id``, ``algo``, ``seed``) or, key by key when absent, from its path
relative to the log directory: ``<task>/<agent>/seed<k>`` (rlgeom), ``<task>/<AGENT>_<k>``
(SB3's tb_log_name) or ``<AGENT>_<k>`` (task "unknown").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RUN_JSON = "run.json"
EVENT_MARK = "tfevents"
LAYOUTS = (
    "run.json with keys env_id, algo, seed; or a path <task>/<agent>/seed<k> (rlgeom), "
    "<task>/<AGENT>_<k> or <AGENT>_<k> (SB3's tb_log_name)"
)


class CompareError(ValueError):
    """Bad input to rlgeom.tools.compare: the message names the problem and what is accepted."""


@dataclass
class Curve:
    """One scalar tag of one run, sorted by step: steps, values and wall times (seconds)."""

    steps: np.ndarray
    values: np.ndarray
    wall: np.ndarray


@dataclass
class Run:
    """One run directory with its identity and its scalar curves by tag."""

    path: Path
    task: str
    agent: str
    seed: int | str
    scalars: dict[str, Curve] = field(default_factory=dict)
    start_time: float = 0.0

    @property
    def name(self) -> str:
        """Readable name used in messages and notes."""
        return f"{self.path} ({self.task}, {self.agent}, seed {self.seed})"

    def last_step(self) -> int:
        """Largest environment step logged under any tag (0 when nothing is logged)."""
        return int(max((c.steps[-1] for c in self.scalars.values() if len(c.steps)), default=0))


def is_event_file(path: Path) -> bool:
    """True for a TensorBoard event file (its name holds 'tfevents')."""
    return path.is_file() and EVENT_MARK in path.name


def find_run_dirs(logdir: Path) -> list[Path]:
    """Every directory under (and including) logdir that directly holds event files, sorted.

    Left out: runs the grid runner set aside as unfinished (`<run>.incomplete-<time>`, kept so
    nothing is lost) and runs that failed (an error.log and no done.json): neither is a seed.
    """
    dirs = {p.parent for p in logdir.rglob(f"*{EVENT_MARK}*") if is_event_file(p)}
    return sorted(d for d in dirs if not _set_aside(d, logdir))


def _set_aside(run_dir: Path, logdir: Path) -> bool:
    if any(".incomplete-" in part for part in run_dir.relative_to(logdir).parts):
        return True
    return (run_dir / "error.log").is_file() and not (run_dir / "done.json").is_file()


def _read_run_json(run_dir: Path) -> dict:
    """The run.json of a run directory as a dict ({} when there is none)."""
    path = run_dir / RUN_JSON
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CompareError(f"cannot read {path}: {exc}; expected a JSON object with keys env_id, algo, seed") from exc
    if not isinstance(meta, dict):
        raise CompareError(f"{path} holds {type(meta).__name__}; expected a JSON object with keys env_id, algo, seed")
    return meta


def _int_or_str(text) -> int | str:
    """A seed as an int where it is one, else as given."""
    try:
        return int(text)
    except (TypeError, ValueError):
        return str(text)


def parse_run_path(parts: tuple[str, ...]) -> dict:
    """(task, agent, seed) from path parts relative to the log dir; {} when no layout matches."""
    if len(parts) >= 3 and (m := re.fullmatch(r"seed(\d+)", parts[-1])):
        return {"env_id": "/".join(parts[:-2]), "algo": parts[-2], "seed": int(m.group(1))}
    if parts and (m := re.fullmatch(r"(.+)_(\d+)", parts[-1])):
        task = "/".join(parts[:-1]) or "unknown"
        return {"env_id": task, "algo": m.group(1), "seed": int(m.group(2))}
    return {}


def identify(run_dir: Path, logdir: Path) -> tuple[str, str, int | str]:
    """(task, agent, seed) of a run: run.json first, then the directory layout, key by key."""
    rel = run_dir.relative_to(logdir)
    parts = rel.parts or (logdir.resolve().name,)
    meta = {k: v for k, v in _read_run_json(run_dir).items() if v is not None}
    guess = parse_run_path(parts)
    missing = [k for k in ("env_id", "algo", "seed") if k not in meta and k not in guess]
    if missing:
        raise CompareError(f"cannot tell {', '.join(missing)} of run {run_dir}; accepted: {LAYOUTS}")
    merged = {**guess, **meta}
    return str(merged["env_id"]), str(merged["algo"]), _int_or_str(merged["seed"])


def _accumulate(path: Path):
    """A loaded EventAccumulator for one event file (all scalar events kept)."""
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(path), size_guidance={ea.SCALARS: 0})
    try:
        acc.Reload()
    except Exception as exc:  # the reader raises varied errors on damaged files
        raise CompareError(f"cannot read event file {path}: {exc}; expected a TensorBoard event file") from exc
    return acc


def read_event_file(path: Path) -> tuple[dict[str, list], float | None]:
    """Scalar events by tag, (step, value, wall) triples, and the first event time of one file."""
    if path.stat().st_size == 0:
        return {}, None
    acc = _accumulate(path)
    try:
        first = acc.FirstEventTimestamp()
    except ValueError as exc:
        raise CompareError(
            f"cannot read event file {path}: no TensorBoard event could be decoded "
            "(damaged, or not an event file); expected a file written by a TensorBoard SummaryWriter"
        ) from exc
    tags = acc.Tags().get("scalars", [])
    return {t: [(e.step, e.value, e.wall_time) for e in acc.Scalars(t)] for t in tags}, first


def _to_curve(events: list) -> Curve:
    """Sorted curve from (step, value, wall) triples; a repeated step keeps its latest value."""
    events = sorted(events, key=lambda e: (e[0], e[2]))
    last = {e[0]: e for e in events}
    rows = np.array([last[s] for s in sorted(last)], dtype=float).reshape(-1, 3)
    return Curve(steps=rows[:, 0], values=rows[:, 1], wall=rows[:, 2])


def merge_curves(curves: list[Curve]) -> Curve:
    """One curve from several of the same tag (a run and its continuation): by step, a step logged
    twice keeping its latest value."""
    return _to_curve([e for c in curves for e in zip(c.steps.tolist(), c.values.tolist(), c.wall.tolist())])


def read_run(run_dir: Path) -> tuple[dict[str, Curve], float]:
    """All scalar curves of a run directory (every event file in it) and its start time."""
    merged: dict[str, list] = {}
    starts = []
    for path in sorted(p for p in run_dir.iterdir() if is_event_file(p)):
        scalars, first = read_event_file(path)
        starts += [first] if first is not None else []
        for tag, events in scalars.items():
            merged.setdefault(tag, []).extend(events)
            starts += [min(e[2] for e in events)] if events else []
    return {tag: _to_curve(ev) for tag, ev in merged.items()}, min(starts, default=0.0)


def load_runs(logdir) -> list[Run]:
    """Every run under logdir with its identity and scalar curves; CompareError on bad input."""
    logdir = Path(logdir)
    if not logdir.is_dir():
        raise CompareError(f"log directory {logdir} does not exist; expected a directory of TensorBoard runs")
    run_dirs = find_run_dirs(logdir)
    if not run_dirs:
        raise CompareError(
            f"no TensorBoard event files (events.out.tfevents.*) under {logdir}; "
            f"expected run directories laid out as {LAYOUTS}"
        )
    runs = []
    for run_dir in run_dirs:
        task, agent, seed = identify(run_dir, logdir)
        scalars, start = read_run(run_dir)
        runs.append(Run(run_dir, task, agent, seed, scalars, start))
    return runs
