"""TensorBoard logging with SB3's tag names and SB3's logger surface (record / dump).

SB3 callbacks (EvalCallback, ...) call `model.logger.record(...)` and `model.logger.dump(step)`;
they work unchanged against this logger, and their figures land in the same TensorBoard run.
One run directory per (task, agent, seed): <tensorboard_log>/<task>/<tb_log_name>/seed<k>, never
overwritten (a second run with the same name gets a suffix), with run.json naming the run.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

import numpy as np


def run_directory(root: str, env_id: str | None, name: str, seed: int | None) -> str:
    task = (env_id or "unknown-env").replace("/", "-")
    base = os.path.join(root, task, name, f"seed{seed}" if seed is not None else "run")
    path, k = base, 1
    while os.path.exists(path) and os.listdir(path):
        k += 1
        path = f"{base}_{k}"
    return path


class RunLogger:
    """Collects key/value pairs and writes them to TensorBoard at `dump(step)`."""

    def __init__(self, run_dir: str | None = None, verbose: int = 0):
        self.run_dir, self.verbose = run_dir, verbose
        self.name_to_value: dict[str, float] = {}
        self._means: dict[str, list[float]] = defaultdict(list)
        self._excluded: set[str] = set()
        self.writer = None
        if run_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            os.makedirs(run_dir, exist_ok=True)
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
            for key, value in self.name_to_value.items():
                if key in self._excluded or not _is_scalar(value):
                    continue
                self.writer.add_scalar(key, float(value), step)
            self.writer.flush()
        self.name_to_value.clear()
        self._means.clear()
        self._excluded.clear()

    def write_run_info(self, info: dict) -> None:
        """run.json (task, agent, seed, hyperparameters) and the same as TensorBoard text."""
        if self.writer is None:
            return
        with open(os.path.join(self.run_dir, "run.json"), "w") as f:
            json.dump(info, f, indent=2, default=str)
        rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(info.get("hyperparameters", {}).items()))
        self.writer.add_text("hyperparameters", "| name | value |\n|---|---|\n" + rows, 0)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _print(self, step: int) -> None:
        width = max((len(k) for k in self.name_to_value), default=10)
        lines = [f"| {k:<{width}} | {_fmt(v):>12} |" for k, v in sorted(self.name_to_value.items())]
        print("\n".join([f"--- step {step} ---", *lines]))


def _is_scalar(value) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)
