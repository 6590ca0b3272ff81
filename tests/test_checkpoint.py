"""Checkpoints and resume: exact continuation, rotation, TensorBoard continuity, SIGKILL mid-write."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from agents import PPO, VPG
from envs.torch_native import CartPoleTorch
from rlgeom.persistence import checkpoint as ckpt
from rlgeom.persistence.serialization import ModelFileError
from rlgeom.tools.train import main as train_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {
    PPO: dict(n_steps=32, batch_size=32, n_epochs=2),
    VPG: dict(n_steps=32, batch_size=32, n_critic_updates=2),
}



class ResumableCartPole(CartPoleTorch):
    """The torch-native CartPole plus the optional env-state protocol (state_dict / load_state_dict)
    that lets a checkpoint continue an env exactly instead of resetting it."""

    def state_dict(self) -> dict:
        return {"state": self._state.clone(), "elapsed": self._elapsed.clone(),
                "episode_return": self._episode_return.clone(), "generator": self._generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self._state.copy_(state["state"])
        self._elapsed.copy_(state["elapsed"])
        self._episode_return.copy_(state["episode_return"])
        self._generator.set_state(state["generator"])
        self._has_state = True


def _params(agent) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in agent.policy.state_dict().items()}


@pytest.mark.parametrize("cls", [PPO, VPG], ids=lambda c: c.__name__)
def test_resume_from_checkpoint_is_exact(cls, tmp_path):
    """Training 8 rollouts straight equals 4 rollouts, a checkpoint, a fresh process state, 4 more."""
    kwargs = dict(seed=3, device="cpu", normalize_observations=True, normalize_reward=True, **SMALL[cls])
    straight = cls("MlpPolicy", ResumableCartPole(2), **kwargs)
    straight.learn(8 * 64, checkpoint_every=4 * 64, checkpoint_dir=tmp_path, keep_checkpoints=5)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [256, 512]

    torch.manual_seed(12345)  # whatever the process did in between must not matter
    np.random.seed(999)
    resumed = cls.load(ckpt.checkpoint_path(tmp_path, 256), env=ResumableCartPole(2), device="cpu")
    assert resumed.num_timesteps == 256 and resumed._target_timesteps == 512
    resumed.learn(512 - resumed.num_timesteps, reset_num_timesteps=False)

    assert resumed.num_timesteps == straight.num_timesteps and resumed.n_updates == straight.n_updates
    for key, value in _params(straight).items():
        assert torch.equal(value, _params(resumed)[key]), key
    for name, opt in straight._optimizers().items():
        for a, b in zip(opt.state_dict()["state"].values(), resumed._optimizers()[name].state_dict()["state"].values()):
            assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(straight.reward_scaler.return_stats.var, resumed.reward_scaler.return_stats.var)
    assert [e["r"] for e in straight.ep_info_buffer] == [e["r"] for e in resumed.ep_info_buffer]


def test_checkpoints_are_rotated_and_never_half_named(tmp_path):
    agent = PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu", **SMALL[PPO])
    agent.learn(6 * 32, checkpoint_every=32, checkpoint_dir=tmp_path, keep_checkpoints=2)
    assert sorted(os.listdir(tmp_path)) == [".rlgeom.lock"] + [  # the lock held while the run writes there
        os.path.basename(ckpt.checkpoint_path(tmp_path, s)) for s in (160, 192)]
    # a stray temporary from a killed writer is ignored by every reader and cleaned at the next write
    stray = ckpt.checkpoint_path(tmp_path, 224) + ".tmp99999"
    with open(stray, "wb") as f:
        f.write(b"\x00" * 10)
    assert ckpt.latest_checkpoint(tmp_path).endswith("checkpoint_000000000192.safetensors")
    agent.learn(32, reset_num_timesteps=False, checkpoint_every=32, checkpoint_dir=tmp_path, keep_checkpoints=2)
    assert not os.path.exists(stray)


def test_latest_skips_a_damaged_newest_checkpoint_and_truncated_files_never_load(tmp_path, capsys):
    agent = PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu", **SMALL[PPO])
    agent.learn(2 * 32, checkpoint_every=32, checkpoint_dir=tmp_path)
    newest = ckpt.checkpoint_path(tmp_path, 64)
    data = open(newest, "rb").read()
    with open(newest, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="checkpoint_000000000064"):
        PPO.load(newest)
    assert ckpt.latest_checkpoint(tmp_path) == ckpt.checkpoint_path(tmp_path, 32)
    assert "skipping unreadable checkpoint" in capsys.readouterr().err


def test_pack_state_round_trip_without_pickle():
    state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2)}},
             "param_groups": [{"betas": (0.9, 0.999), "lr": float("nan"), "params": [0], "foreach": None}],
             "kfac": {"tensors": {"a.A": torch.eye(2)}, "meta": {"steps": 4}}}
    tensors, skeleton = ckpt.pack_state("x", state)
    import json

    back = ckpt.unpack_state(json.loads(json.dumps(skeleton)), tensors)
    assert back["param_groups"][0]["betas"] == (0.9, 0.999) and 0 in back["state"]
    assert torch.equal(back["kfac"]["tensors"]["a.A"], torch.eye(2)) and back["kfac"]["meta"] == {"steps": 4}
    with pytest.raises(TypeError, match="tensors and JSON values only"):
        ckpt.pack_state("x", {"f": lambda: 0})
    with pytest.raises(ModelFileError, match="missing"):
        ckpt.unpack_state({"__tensor__": "nope"}, {})


def _scalar_steps(run_dir: str, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def test_tensorboard_curves_continue_in_the_same_run_without_duplicates(tmp_path, capsys):
    """TensorBoard, tbparse (which ignores purge events) and rlgeom.compare's reader each see one value per
    step after a resume, and the event files written before it are archived whole (issue 17, item 12)."""
    import tarfile
    from pathlib import Path

    import tbparse

    from rlgeom.persistence.runlogs import read_run

    agent = PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu", tensorboard_log=str(tmp_path), **SMALL[PPO])
    agent.learn(6 * 32, checkpoint_every=3 * 32, keep_checkpoints=5)  # logs up to 192: as if killed after 96
    run_dir = agent._run_dir
    agent.logger.close()
    resumed = PPO.load(ckpt.checkpoint_path(os.path.join(run_dir, "checkpoints"), 96), env="CartPole-v1")
    resumed.learn(8 * 32 - 96, reset_num_timesteps=False)
    resumed.logger.close()
    assert resumed._run_dir == run_dir and sorted(os.listdir(os.path.dirname(run_dir))) == ["seed0"]
    expected = [32 * k for k in range(1, 9)]
    assert _scalar_steps(run_dir, "train/n_updates") == expected
    scalars = tbparse.SummaryReader(run_dir).scalars
    assert scalars.groupby(["tag", "step"]).size().max() == 1
    assert sorted(scalars[scalars.tag == "train/n_updates"].step) == expected
    assert list(read_run(Path(run_dir))[0]["train/n_updates"].steps) == expected
    archives = [n for n in os.listdir(run_dir) if n.startswith("events-before-resume-at-step-96")]
    assert len(archives) == 1 and "archived in" in capsys.readouterr().err
    with tarfile.open(os.path.join(run_dir, archives[0])) as tar:
        assert tar.getmembers() and all("tfevents" in m.name for m in tar.getmembers())


def _cli_script(fsync_delay: float) -> str:
    """The CLI with fsync slowed down, so a kill lands while a checkpoint is being written."""
    return textwrap.dedent(f"""
        import os, sys, time
        _fsync = os.fsync
        def slow_fsync(fd):
            time.sleep({fsync_delay})
            _fsync(fd)
        os.fsync = slow_fsync
        from rlgeom.tools.train import main
        sys.exit(main(sys.argv[1:]))
    """)


def test_sigkill_during_checkpoint_writes_then_resume_reaches_the_total(tmp_path, capsys):
    total = 12 * 32
    args = ["--algo", "ppo", "--env", "CartPole-v1", "--seed", "1", "--n-envs", "1", "--timesteps", str(total),
            "--hp", "n_steps=32", "batch_size=32", "n_epochs=1", "--logdir", str(tmp_path), "--no-progress",
            "--eval-episodes", "1", "--checkpoint-every", "32", "--keep-checkpoints", "2"]
    ckpt_dir = tmp_path / "CartPole-v1" / "ppo" / "seed1" / "checkpoints"
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    script = _cli_script(0.15)
    kills, steps_at_kill = 0, []
    for attempt in range(2):
        extra = [] if attempt == 0 else ["--resume", "latest"]
        proc = subprocess.Popen([sys.executable, "-c", script, *args, *extra], env=env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline, seen = time.time() + 60, set()
        while time.time() < deadline and proc.poll() is None:
            temps = [n for n in os.listdir(ckpt_dir) if ".tmp" in n] if ckpt_dir.exists() else []
            seen.update(temps)
            if temps and len(seen) >= attempt + 2:  # a write in progress, after one or more complete ones
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                steps_at_kill.append(max(s for s, _ in ckpt.list_checkpoints(ckpt_dir)))
                break
            time.sleep(0.02)
        else:
            proc.kill()
            pytest.fail(f"no checkpoint write was caught in progress: {proc.communicate()[1].decode()[-2000:]}")
    assert kills == 2 and any(".tmp" in n for n in os.listdir(ckpt_dir))  # partial files carry a temp name
    listed = {os.path.basename(p) for _, p in ckpt.list_checkpoints(ckpt_dir)}
    assert not any(".tmp" in name for name in listed)  # only renamed, complete files are ever candidates
    # the resume that finishes: the CLI in this process (its own interpreter is not what is tested here)
    capsys.readouterr()
    code = train_main([*args, "--resume", "latest"])
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    assert f"({total} in all)" in out
    assert f"at step {steps_at_kill[-1]}" in err
    final = PPO.load(ckpt.latest_checkpoint(ckpt_dir))
    assert final.num_timesteps == total
    assert not any(".tmp" in n for n in os.listdir(ckpt_dir))
    steps = _scalar_steps(str(ckpt_dir.parent), "train/n_updates")
    assert steps == sorted(set(steps)) and steps[-1] == total


def test_cli_resume_latest_without_checkpoints_is_a_clear_error(tmp_path, capsys):
    from rlgeom.tools.train import main

    assert main(["--algo", "ppo", "--logdir", str(tmp_path), "--resume", "--no-progress"]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err


def test_cli_resume_of_a_finished_run_trains_no_more(tmp_path):
    src = tmp_path / "c"
    agent = PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu", **SMALL[PPO])
    agent.learn(64, checkpoint_every=64, checkpoint_dir=src)
    from rlgeom.tools.train import build_parser, run

    args = build_parser().parse_args(["--resume", str(src), "--timesteps", "64", "--logdir", str(tmp_path),
                                      "--no-progress", "--eval-episodes", "1", "--seed", "0"])
    assert run(args)["timesteps"] == 64
    shutil.rmtree(src)


@pytest.mark.parametrize("algo", ["ppo", "acktr"])
def test_models_with_a_shared_features_extractor_save_load_and_checkpoint(tmp_path, algo):
    """CnnPolicy's torso belongs to actor and critic at once: stored once, shared again after loading."""
    from agents import ACKTR
    from test_acktr import TinyImageEnv  # tests/ is on sys.path (pytest prepends it)

    cls = {"ppo": PPO, "acktr": ACKTR}[algo]
    agent = cls("CnnPolicy", TinyImageEnv(), n_steps=8, seed=0, device="cpu", **({"batch_size": 8} if algo == "ppo" else {}))
    agent.learn(16)
    obs = torch.as_tensor(np.random.default_rng(0).integers(0, 256, (3, 4, 36, 36), dtype=np.uint8))
    for path in (agent.save(tmp_path / "model"), agent.save_checkpoint(tmp_path / "checkpoint")):
        loaded = cls.load(path, env=TinyImageEnv())  # on the test device
        assert loaded.policy.actor.features is loaded.policy.critic.features
        on_device = obs.to(loaded.device)
        torch.testing.assert_close(loaded.policy.dist_params(on_device).cpu(), agent.policy.dist_params(obs))
        torch.testing.assert_close(loaded.policy.value(on_device).cpu(), agent.policy.value(obs))
