"""Grids on Ray (--launcher ray): a small grid end to end on a local Ray instance, its skip/resume
semantics kept, and the flag's errors."""

from __future__ import annotations

import json
import os
import sys

import pytest

from rlgeom.tools import train

ray = pytest.importorskip("ray")

GRID = ["--algo", "ppo,vpg", "--env", "CartPole-v1", "--seeds", "0", "--timesteps", "256", "--hp", "n_steps=128",
        "--eval-episodes", "1", "--launcher", "ray"]


def test_a_small_grid_runs_as_ray_tasks_and_a_rerun_skips_it(tmp_path, capsys):
    logdir = str(tmp_path / "runs")
    assert train.main([*GRID, "--logdir", logdir]) == 0
    first = capsys.readouterr().out
    assert "[2/2]" in first and "FAILED" not in first
    for algo in ("ppo", "vpg"):
        record = json.load(open(os.path.join(logdir, "CartPole-v1", algo, "seed0", "done.json")))
        assert record["status"] == "done" and record["timesteps"] >= 256
        assert not record["worker"].endswith(f":{os.getpid()}")  # trained in a Ray worker, not here
    assert not ray.is_initialized()  # the grid's own local instance was shut down
    assert train.main([*GRID, "--logdir", logdir]) == 0  # finished runs are skipped: no Ray needed
    assert "grid: 2 runs (2 already done)" in capsys.readouterr().out


def test_the_launcher_flags_say_what_is_wrong(tmp_path, capsys, monkeypatch):
    logdir = str(tmp_path / "runs")
    assert train.main([*GRID[:-2], "--address", "auto", "--logdir", logdir]) == 2
    assert "--launcher ray" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert train.main([*GRID, "--logdir", logdir]) == 2
    assert "pip install 'rlgeom[ray]'" in capsys.readouterr().err
    assert not os.path.exists(logdir) or not os.listdir(logdir)  # nothing planned or moved before the error
