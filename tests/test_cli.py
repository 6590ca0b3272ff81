"""`python -m rlgeom.train`: a smoke run of every --algo, and bad input exiting 2 without a traceback.

The command's own process is started once (`test_the_documented_command_runs_in_its_own_process`); the other
tests call its main() in this process, which prints, exits and writes the same (an uncaught exception, which
the command would print as a traceback, fails them), without paying an interpreter and torch import each."""

import subprocess
import sys

import pytest

from agents import AGENTS
from rlgeom.tools.train import main

TINY_HP = {
    "vpg": ["n_steps=32", "batch_size=32"],
    "npg": ["n_steps=32", "batch_size=32"],
    "trpo": ["n_steps=32", "batch_size=32"],
    "ppo": ["n_steps=32", "batch_size=32", "n_epochs=1"],
    "acktr": ["n_steps=8"],
}


def train(*args, cwd, capsys, monkeypatch) -> subprocess.CompletedProcess:
    """main(args) run in `cwd` as the command would be: its exit status (argparse's exit included) and output."""
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["python", "-m", "rlgeom.train", *args], code, out, err)


def test_the_documented_command_runs_in_its_own_process(tmp_path):
    """`python -m rlgeom.train` itself: trains, reports, exits 0; bad input exits 2 without a traceback."""
    out = subprocess.run([sys.executable, "-m", "rlgeom.train", "--algo", "ppo", "--timesteps", "64", "--no-progress",
                          "--eval-episodes", "1", "--n-envs", "1", "--hp", *TINY_HP["ppo"]], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "ppo on CartPole-v1 (seed 0): eval return" in out.stdout
    assert (tmp_path / "runs" / "CartPole-v1" / "ppo" / "seed0" / "model.safetensors").exists()
    out = subprocess.run([sys.executable, "-m", "rlgeom.train", "--hp", "oops"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2 and "--hp expects KEY=VALUE" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("algo", sorted(AGENTS))
def test_every_algo_trains_saves_and_logs(algo, tmp_path, capsys, monkeypatch):
    out = train("--algo", algo, "--timesteps", "256", "--no-progress", "--eval-episodes", "1", "--n-envs", "2",
                "--hp", *TINY_HP[algo], cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert out.returncode == 0, out.stderr
    assert f"{algo} on CartPole-v1 (seed 0): eval return" in out.stdout
    run_dir = tmp_path / "runs" / "CartPole-v1" / algo / "seed0"
    assert (run_dir / "model.safetensors").exists() and (run_dir / "run.json").exists()
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()


@pytest.mark.parametrize("args,message", [
    (["--algo", "dqn"], "unknown algorithm 'dqn'; accepted: "),
    (["--env", "NoSuchEnv-v0"], "unknown env id 'NoSuchEnv-v0'"),
    (["--hp", "learning_rate=-1"], "learning_rate must be > 0"),
    (["--hp", "batch_size=7"], "batch_size=7 does not divide the rollout size"),
    (["--hp", "not_a_field=3"], "unknown hyperparameter(s) not_a_field"),
    (["--hp", "oops"], "--hp expects KEY=VALUE"),
    (["--algo", "trpo", "--hp", "max_kl=0"], "max_kl must be > 0"),
    (["--algo", "trpo", "--hp", "cg_damping=-0.1"], "cg_damping must be >= 0"),
    (["--algo", "npg", "--hp", "cg_max_steps=0"], "cg_max_steps must be a positive integer"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--timesteps", "0"], "--timesteps must be positive"),
    (["--policy-kwargs", "{bad json"], "--policy-kwargs is not valid JSON"),
    (["--env", "ALE/Pong-v5", "--algo", "trpo", "--policy-kwargs", '{"share_features_extractor": true}'],
     "cannot share a feature extractor"),
])
def test_bad_input_exits_2_with_a_message_and_no_traceback(args, message, tmp_path, capsys, monkeypatch):
    out = train(*args, "--timesteps" if "--timesteps" not in args else "--seed", "64" if "--timesteps" not in args else "0",
                "--no-progress", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_help_hp_lists_documented_fields(tmp_path, capsys, monkeypatch):
    out = train("--algo", "trpo", "--help-hp", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert out.returncode == 0
    assert "max_kl" in out.stdout and "KL(π_old‖π_new) radius" in out.stdout


def test_mujoco_tasks_leave_no_log_file_in_the_working_directory(tmp_path, monkeypatch):
    """HalfCheetah's model triggers a MuJoCo deprecation warning on recent mujoco releases."""
    pytest.importorskip("mujoco")
    from envs import make_vec_env

    monkeypatch.chdir(tmp_path)
    env = make_vec_env("HalfCheetah-v5", 1, seed=0)
    env.reset(seed=0)
    env.close()
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
