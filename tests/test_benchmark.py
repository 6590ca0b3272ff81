"""The grid runner (rlgeom.tools.benchmark through `python -m rlgeom.train`): parallel runs, a failing run,
skip-on-rerun, an SB3 baseline in the same log directory, and the report over it."""

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from packaging.version import Version

from rlgeom.tools import benchmark
from rlgeom.persistence.runlogs import read_run
from rlgeom.tools.train import main

TINY_PPO = ["--timesteps", "256", "--eval-episodes", "2", "--hp", "n_steps=32", "batch_size=32", "n_epochs=1"]

# A task registered by a module the workers import (--gym-packages): it fails at its first reset,
# as a broken environment would, after the agent and its env have been built.
FAILING_ENV_MODULE = textwrap.dedent(
    """
    import gymnasium as gym
    import numpy as np


    class ResetFails(gym.Env):
        observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        action_space = gym.spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            raise RuntimeError("simulated env failure in reset")

        def step(self, action):
            raise RuntimeError("simulated env failure in step")


    gym.register("BenchResetFails-v0", entry_point=ResetFails, max_episode_steps=10)
    """
)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The first grid run (a good run and a failing one) and its rerun, on one log directory."""
    root = tmp_path_factory.mktemp("grid")
    (root / "bench_failing_env.py").write_text(FAILING_ENV_MODULE)
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(root))  # the spawned workers inherit sys.path
    logdir = root / "runs"
    argv = ["--algo", "ppo", "--env", "CartPole-v1,BenchResetFails-v0", "--seeds", "0", "--workers", "2",
            "--logdir", str(logdir), "--gym-packages", "bench_failing_env", *TINY_PPO]
    yield root, logdir, argv
    mp.undo()


def run_cli(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_grid_reports_failure_and_rerun_skips(grid, capsys):
    root, logdir, argv = grid
    good = logdir / "CartPole-v1" / "ppo" / "seed0"
    bad = logdir / "BenchResetFails-v0" / "ppo" / "seed0"

    code, out, _ = run_cli(argv, capsys)
    assert code == 1, out
    done = json.loads((good / "done.json").read_text())
    assert done["status"] == "done" and done["timesteps"] == 256 and done["env"] == "CartPole-v1"
    import rlgeom

    assert done["code"]["rlgeom"] == rlgeom.__version__
    # the distribution's version ("2.11.0") against the module's ("2.11.0+cu130" on a CUDA build): same release
    assert Version(done["code"]["torch"]).release == Version(torch.__version__).release
    if (Path(rlgeom.__file__).parent.parent / ".git").exists():  # a checkout (CI's is): the commit that ran
        head = subprocess.run(["git", "-C", str(Path(rlgeom.__file__).parent.parent), "rev-parse", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        assert done["code"]["git_commit"] == head
    assert json.loads((good / "run.json").read_text())["algo"] == "ppo"
    assert (good / "model.safetensors").is_file()
    assert not (bad / "done.json").exists()
    log = bad / "error.log"
    assert "Traceback" in log.read_text() and "simulated env failure in reset" in log.read_text()
    assert "FAILED: RuntimeError: simulated env failure in reset" in out and str(log) in out
    table = out[out.index("agent"):]
    assert "done" in table and "failed" in table and "256" in table and "FPS" in table

    stamp = (good / "done.json").stat().st_mtime_ns
    code, out, _ = run_cli(argv, capsys)
    assert code == 1
    assert "skipped (done)" in out
    assert (good / "done.json").stat().st_mtime_ns == stamp  # not rerun
    aside = sorted(p for p in bad.parent.iterdir() if p.name.startswith("seed0.incomplete-"))
    assert len(aside) == 1 and (aside[0] / "error.log").is_file()  # the failed run's dir kept, moved aside
    assert (bad / "error.log").is_file()  # ... and the run tried again
    assert "another preset" not in out and "other overrides" not in out

    # the command's overrides are recorded beside the preset; a resume under other ones keeps the run and names it.
    # From here on the grid is the good run's alone: the failing one would only start a worker each time to fail again
    argv = [a if a != "CartPole-v1,BenchResetFails-v0" else "CartPole-v1" for a in argv]
    assert done["overrides"] == {"hp": {"n_steps": "32", "batch_size": "32", "n_epochs": "1"}, "n_envs": None,
                                 "policy_kwargs": None}
    other = [a if a != "n_epochs=1" else "n_epochs=2" for a in argv]
    code, out, _ = run_cli(other, capsys)
    assert "ppo on CartPole-v1 (seed 0): finished with other overrides than this command's" in out
    assert "'n_epochs': '1'" in out and "'n_epochs': '2'" in out
    assert (good / "done.json").stat().st_mtime_ns == stamp  # kept, not rerun

    from agents.presets import preset

    original = (good / "done.json").read_text()  # restored below: later tests share this log directory
    assert done["preset"] == {k: v for k, v in preset("ppo", "CartPole-v1").items() if k != "source"}
    # a run finished under a preset that has since changed is kept, and named: by the values it recorded ...
    done["preset"]["hyperparameters"]["n_epochs"] = 99
    (good / "done.json").write_text(json.dumps(done))
    code, out, _ = run_cli(argv, capsys)
    assert "ppo on CartPole-v1 (seed 0): finished with another preset" in out
    assert json.loads((good / "done.json").read_text())["preset"]["hyperparameters"]["n_epochs"] == 99  # not rerun
    # ... or, where done.json predates that record, by the preset's source
    del done["preset"]
    done["preset_source"] = "an older preset"
    (good / "done.json").write_text(json.dumps(done))
    code, out, _ = run_cli(argv, capsys)
    assert "finished with another preset (then: 'an older preset'" in out
    (good / "done.json").write_text(original)


def test_sb3_baseline_lands_in_the_same_logdir_and_report_works(grid, capsys):
    root, logdir, _ = grid
    code, out, _ = run_cli(["--algo", "sb3:ppo", "--env", "CartPole-v1", "--seeds", "0", "--logdir", str(logdir),
                            *TINY_PPO], capsys)
    assert code == 0, out
    run_dir = logdir / "CartPole-v1" / "sb3-ppo" / "seed0"
    info = json.loads((run_dir / "run.json").read_text())
    assert (info["env_id"], info["algo"], info["seed"]) == ("CartPole-v1", "sb3-ppo", 0)
    assert info["hyperparameters"]["n_steps"] == 32 and info["preset_source"].startswith("rl-zoo ppo.yml")
    assert json.loads((run_dir / "done.json").read_text())["timesteps"] == 256
    scalars, _ = read_run(run_dir)
    assert "rollout/ep_rew_mean" in scalars and "time/fps" in scalars

    from rlgeom.tools.compare import write_report

    if not (logdir / "CartPole-v1" / "ppo" / "seed0" / "done.json").exists():
        pytest.skip("needs the grid of test_grid_reports_failure_and_rerun_skips")
    paths = write_report(logdir, root / "report")
    report = (root / "report" / "report.md").read_text()
    assert "| ppo | 1 |" in report and "| sb3-ppo | 1 |" in report  # one row per agent, one seed each
    assert any(p.name == "CartPole-v1_return_vs_steps.png" for p in paths)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--algo", "ppo,nope", "--seeds", "0"], "unknown algorithm 'nope'"),
        (["--algo", "ppo", "--env", "CartPole-v1,NoSuchEnv-v0", "--seeds", "0"], "unknown env id 'NoSuchEnv-v0'"),
        (["--algo", "ppo", "--seeds", "0,a"], "--seeds expects non-negative integers"),
        (["--algo", "ppo", "--seeds", "1,1"], "--seeds lists 1 more than once"),
        (["--algo", "ppo,vpg", "--seeds", "0", "--hp", "no_such_hp=1"], "no agent in --algo"),
        (["--algo", "ppo,vpg", "--seeds", "0", "--hp", "learning_rate=-1"], "learning_rate must be > 0"),
    ],
)
def test_bad_input_exits_2_before_anything_runs(tmp_path, capsys, args, message):
    code, out, err = run_cli([*args, "--logdir", str(tmp_path / "runs")], capsys)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_seed_and_seeds_are_exclusive(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--algo", "ppo", "--seeds", "0,1", "--seed", "2"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_plan_layout_budgets_and_hp_routing(tmp_path):
    from rlgeom.tools.train import build_parser

    args = build_parser().parse_args([
        "--algo", "ppo,vpg,sb3:a2c,sb3contrib:trpo", "--env", "CartPole-v1,Pendulum-v1", "--seeds", "0,1",
        "--max-timesteps", "50000", "--logdir", str(tmp_path), "--hp", "vf_learning_rate=0.002",
    ])
    specs = benchmark.plan(args)
    assert len(specs) == 16
    dirs = {(s["algo"], s["env"], s["seed"]): s["run_dir"] for s in specs}
    assert dirs[("sb3:a2c", "Pendulum-v1", 1)] == os.path.join(str(tmp_path), "Pendulum-v1", "sb3-a2c", "seed1")
    assert dirs[("ppo", "CartPole-v1", 0)] == os.path.join(str(tmp_path), "CartPole-v1", "ppo", "seed0")
    assert all(s["timesteps"] <= 50000 for s in specs)
    assert {s["algo"]: s["hp"] for s in specs}["vpg"] == ["vf_learning_rate=0.002"]
    assert {s["algo"]: s["hp"] for s in specs}["ppo"] == []  # not a PPO hyperparameter: not passed to it
    assert benchmark.algo_preset("sb3:a2c", "Hopper-v5")["source"].startswith("rl-zoo a2c.yml mujoco")
    assert benchmark.algo_preset("sb3contrib:trpo", "CartPole-v1") == benchmark.algo_preset("trpo", "CartPole-v1")

    args = build_parser().parse_args(["--algo", "ppo,trpo", "--seeds", "0", "--checkpoint-every", "1000",
                                      "--logdir", str(tmp_path)])
    assert benchmark.plan(args)[0]["train_options"] == ["--checkpoint-every", "1000", "--keep-checkpoints", "3"]
    args = build_parser().parse_args(["--algo", "ppo,trpo", "--seeds", "0", "--resume", "--logdir", str(tmp_path)])
    with pytest.raises(benchmark.GridUsageError, match="--resume applies to one run"):
        benchmark.plan(args)


def test_set_aside_keeps_unfinished_dirs(tmp_path):
    run_dir = tmp_path / "Task-v0" / "ppo" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "events.out.tfevents.1").write_text("partial")
    moved = Path(benchmark.set_aside(str(run_dir)))
    assert not run_dir.exists() and (moved / "events.out.tfevents.1").read_text() == "partial"
    assert moved.name.startswith("seed0.incomplete-")
    run_dir.mkdir()
    assert benchmark.set_aside(str(run_dir)) is None and not run_dir.exists()  # empty: nothing to keep
    benchmark.write_done(str(moved), {"status": "done"})
    assert benchmark.read_done(str(moved)) == {"status": "done"}
    assert [p.name for p in moved.iterdir() if "tmp" in p.name] == []


def test_sb3_hyperparameter_lists_match_the_installed_constructors():
    import sb3_contrib
    import stable_baselines3

    classes = {"sb3:ppo": stable_baselines3.PPO, "sb3:a2c": stable_baselines3.A2C, "sb3contrib:trpo": sb3_contrib.TRPO}
    for algo, cls in classes.items():
        assert benchmark.SB3_HYPERPARAMETERS[algo] == benchmark._sb3_constructor_names(cls), algo


def test_sb3contrib_trpo_gets_the_kl_radius_in_its_own_convention():
    """sb3-contrib averages KL over action dimensions: the same step needs δ/k and λ/k there."""
    from gymnasium import spaces

    from agents.presets import preset
    from rlgeom.tools.benchmark import sb3contrib_kl_convention

    hopper = preset("trpo", "Hopper-v5")["hyperparameters"]
    assert (hopper["max_kl"], hopper["cg_damping"]) == (0.03, 0.3)  # the zoo's 0.01 and 0.1, × 3
    converted = sb3contrib_kl_convention({"target_kl": hopper["max_kl"], "cg_damping": hopper["cg_damping"]},
                                          spaces.Box(-1, 1, (3,)))
    assert converted["target_kl"] == pytest.approx(0.01) and converted["cg_damping"] == pytest.approx(0.1)
    assert sb3contrib_kl_convention({"target_kl": 0.02}, spaces.Discrete(2)) == {"target_kl": 0.02, "cg_damping": 0.1}


def test_the_commit_is_always_recorded(monkeypatch):
    """Outside a git checkout (git missing here), done.json's code names the commit from $RLGEOM_GIT_COMMIT,
    or records None and says why; never leaves the key out."""
    from rlgeom.tools import benchmark

    def no_git(*args, **kwargs):
        raise OSError("git: not found")

    monkeypatch.setattr(benchmark.subprocess, "run", no_git)
    monkeypatch.delenv("RLGEOM_GIT_COMMIT", raising=False)
    identity = benchmark.code_identity()
    assert identity["git_commit"] is None and "RLGEOM_GIT_COMMIT unset" in identity["git_commit_note"]
    monkeypatch.setenv("RLGEOM_GIT_COMMIT", "0123abc")
    identity = benchmark.code_identity()
    assert identity["git_commit"] == "0123abc" and "git_commit_note" not in identity


def test_an_interrupted_grid_run_continues_from_its_checkpoint(tmp_path, capsys):
    """A grid run with --checkpoint-every that stopped short of its budget is continued from its newest
    checkpoint by the next invocation (as --resume continues one run: tests/test_checkpoint.py checks that it is
    exact where the env's state is saved too); parts.json and done.json name both starts. A run that failed, or
    was started with other hyperparameters, or whose checkpoint lies past a smaller budget, is not continued,
    and the grid says why when it moves it aside."""
    from safetensors.torch import load_file

    from rlgeom.persistence.checkpoint import list_checkpoints
    from rlgeom.tools.train import build_parser

    def grid(*extra, timesteps="256"):
        return ["--algo", "ppo", "--env", "CartPole-v1", "--seeds", "0", "--workers", "1", "--n-envs", "1",
                "--logdir", str(tmp_path), "--timesteps", timesteps, "--eval-episodes", "2", "--checkpoint-every", "64",
                "--hp", "n_steps=32", "batch_size=32", "n_epochs=1", *extra]

    def spec(*extra, timesteps="256"):
        return benchmark.plan(build_parser().parse_args(grid(*extra, timesteps=timesteps)))[0]

    run_dir = tmp_path / "CartPole-v1" / "ppo" / "seed0"
    assert run_cli(grid(), capsys)[0] == 0
    # as if killed after the checkpoint at step 128: what was written after it goes
    for name in ("done.json", "model.safetensors"):
        (run_dir / name).unlink()
    steps = dict(list_checkpoints(str(run_dir / "checkpoints")))
    assert 128 in steps and max(steps) == 256
    for step, path in steps.items():
        if step > 128:
            os.remove(path)
    code, out, _ = run_cli(grid(), capsys)
    assert code == 0 and "ppo on CartPole-v1 (seed 0): continuing its unfinished run from" in out
    assert not list(run_dir.parent.glob("seed0.incomplete-*"))
    done = json.loads((run_dir / "done.json").read_text())
    assert done["resumed_at"] == 128 and done["trained_steps"] == 128 and done["timesteps"] == 256
    assert [part["resumed_from"] for part in done["parts"]] == [None, str(steps[128])]
    assert all(part["code"]["rlgeom"] for part in done["parts"])
    at_128, final = load_file(str(steps[128])), load_file(str(run_dir / "model.safetensors"))
    assert [k for k in final if k in at_128 and not torch.equal(final[k], at_128[k])]  # it trained on from there

    # unfinished again (checkpoint at 256 = the budget): continued by the same command, not by another one
    (run_dir / "done.json").unlink()
    assert benchmark.resumable_checkpoint(spec())[0] is not None
    assert benchmark.resumable_checkpoint(spec("gamma=0.9")) == (
        None, "it was started with another hyperparameters than this command's")
    assert benchmark.resumable_checkpoint(spec(timesteps="128"))[1] == (
        "its checkpoint is at step 256, past this command's budget of 128")
    # a run that failed (error.log) starts again, rather than continuing into the same failure
    (run_dir / "error.log").write_text("RuntimeError: simulated")
    code, out, _ = run_cli(grid(), capsys)
    assert code == 0 and "moved aside" in out and "not continued from its checkpoint: it failed" in out
    assert len(list(run_dir.parent.glob("seed0.incomplete-*"))) == 1
    assert json.loads((run_dir / "done.json").read_text())["resumed_at"] is None
