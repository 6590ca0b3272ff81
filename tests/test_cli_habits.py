"""The CLI as a new user meets it: --help-hp shows the run's values and their origin, the progress bar and the
summary line agree (also after --resume), a grid rerun numbers its skipped runs, SB3 baselines save models."""

import importlib
import json
import re

import pytest

from rlgeom.tools.train import main

TINY = ["--n-envs", "1", "--hp", "n_steps=64", "batch_size=32", "n_epochs=1", "--eval-episodes", "1"]


def run_cli(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def rows(out: str) -> dict[str, tuple[str, str]]:
    """{name: (value, origin)} from a --help-hp table."""
    found = {}
    for line in out.splitlines():
        m = re.match(r"  (\w+)\s+(\S+)\s+(default|preset|--hp|--n-envs|--timesteps|--policy-kwargs)\b", line)
        if m:
            found[m.group(1)] = (m.group(2), m.group(3))
    return found


def test_help_hp_shows_the_values_the_run_uses_and_where_they_come_from(capsys):
    code, out, _ = run_cli(["--algo", "ppo", "--env", "Pendulum-v1", "--hp", "gamma=0.95", "--n-envs", "2",
                            "--help-hp"], capsys)
    assert code == 0 and "preset: rl-zoo ppo.yml Pendulum-v1" in out
    table = rows(out)
    assert table["gamma"] == ("0.95", "--hp")
    assert table["learning_rate"] == ("0.001", "preset")  # the zoo's Pendulum value, not PPO's default 3e-4
    assert table["max_grad_norm"] == ("0.5", "default")
    assert table["n_envs"] == ("2", "--n-envs") and table["n_steps"] == ("1024", "preset")

    code, out, _ = run_cli(["--algo", "sb3:a2c", "--env", "CartPole-v1", "--help-hp"], capsys)
    assert code == 0 and rows(out)["n_envs"] == ("8", "preset") and rows(out)["use_rms_prop"] == ("True", "default")
    code, _, err = run_cli(["--algo", "ppo", "--hp", "gama=0.9", "--help-hp"], capsys)
    assert code == 2 and "unknown hyperparameter(s) gama" in err


def test_progress_bar_reaches_100_percent_and_resume_counts_its_own_part(tmp_path, capsys):
    importlib.import_module("torch.utils.tensorboard")  # once per process: not part of what the rates compare

    logdir = str(tmp_path / "runs")
    # 2000 steps in rollouts of 64: the run takes 2048, and the bar must say 2048/2048, 100%
    code, out, err = run_cli(["--timesteps", "2000", "--logdir", logdir, "--checkpoint-every", "1024", *TINY], capsys)
    assert code == 0, err
    lines = err.replace("\r", "\n").strip().splitlines()
    final = [line for line in lines if "step/s" in line][-1]  # the training bar's last state
    assert "100%" in final and "2048/2048" in final, final
    assert "evaluation: 100%" in lines[-1] and "episode" in lines[-1], lines[-1]  # then the evaluation's own bar
    bar_rate = float(re.search(r"([\d.]+)step/s", final).group(1))
    summary_rate = float(re.search(r"\((\d+) steps/s\)", out).group(1))
    # the same average over the run, not a recent-window estimate; the summary's clock also covers learn()'s
    # set-up (env reset, run directory) and the final checkpoint, a fixed cost
    assert bar_rate == pytest.approx(summary_rate, rel=0.3)
    assert "2048 steps in" in out and "resumed" not in out

    code, out, err = run_cli(["--timesteps", "2100", "--logdir", logdir, "--resume", "--no-progress", *TINY], capsys)
    assert code == 0, err
    assert "| 64 steps in" in out and "resumed at step 2048 (2112 in all)" in out, out


def test_make_progress_bar_counts_whole_rollouts():
    from agents.sb3_compat import make_progress_bar

    bar = make_progress_bar(1000, 384)
    assert bar.total == 1152  # three rollouts of 384
    bar.close()
    assert make_progress_bar(768, 384).total == 768


def test_grid_rerun_numbers_skipped_runs_and_sb3_runs_save_their_model(tmp_path, capsys):
    logdir = tmp_path / "runs"
    argv = ["--algo", "ppo,sb3:ppo", "--env", "CartPole-v1", "--seeds", "0", "--timesteps", "64", "--workers", "2",
            "--logdir", str(logdir), *TINY]
    code, out, _ = run_cli(argv, capsys)
    assert code == 0, out
    sb3_dir = logdir / "CartPole-v1" / "sb3-ppo" / "seed0"
    assert (sb3_dir / "model.zip").is_file()
    assert json.loads((sb3_dir / "done.json").read_text())["model"] == str(sb3_dir / "model.zip")
    from stable_baselines3 import PPO as SB3PPO

    SB3PPO.load(sb3_dir / "model.zip")  # SB3's own format, loadable by SB3
    code, out, _ = run_cli(argv, capsys)
    assert code == 0
    assert re.search(r"\[1/2\] ppo on CartPole-v1 \(seed 0\): skipped", out), out
    assert re.search(r"\[2/2\] sb3:ppo on CartPole-v1 \(seed 0\): skipped", out), out
