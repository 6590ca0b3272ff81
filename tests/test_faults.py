"""Fault injection (issue 17): where a resumed run writes, two writers, full and read-only disks, hostile
model files (crafted and fuzzed, in bounded memory), bad CLI input, a killed grid parent, resumed logs.

One test per case; the table with the outcome of each is experiments/RESULTS_faults.md. Real processes
where the fault is between processes (locks, kill -9), a patched write for ENOSPC (and a real tiny tmpfs
where the machine lets us mount one)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from agents import PPO
from rlgeom.persistence import checkpoint as ckpt
from rlgeom.persistence import outputs
from rlgeom.persistence.outputs import DirectoryInUseError, DiskFullError
from rlgeom.tools.train import main as train_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(n_steps=32, batch_size=32, n_epochs=1)
CLI_SMALL = ["--algo", "ppo", "--env", "CartPole-v1", "--n-envs", "1", "--hp", "n_steps=32", "batch_size=32",
             "n_epochs=1", "--no-progress", "--eval-episodes", "1"]
ENV = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


def _agent(**kw) -> PPO:
    return PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu", **SMALL, **kw)


def _digests(folder) -> dict[str, str]:
    """Every file under `folder` (but lock files) by relative path -> SHA-256 of its bytes."""
    out = {}
    for root, _, names in os.walk(folder):
        for n in names:
            if n != outputs.LOCK_NAME:
                p = os.path.join(root, n)
                out[os.path.relpath(p, folder)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def _cli(argv, capsys) -> tuple[int, str]:
    code = train_main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A CLI run of 128 steps with checkpoints at 64 and 128 in <logdir>/CartPole-v1/ppo/seed0."""
    logdir = tmp_path_factory.mktemp("run")
    assert train_main([*CLI_SMALL, "--timesteps", "128", "--checkpoint-every", "64", "--logdir", str(logdir)]) == 0
    return logdir / "CartPole-v1" / "ppo" / "seed0"


# ----------------------------------------------------------------------------- 1. where a resumed run writes
def test_resuming_a_copied_checkpoint_with_a_new_logdir_leaves_the_original_untouched(trained_run, tmp_path, capsys):
    original = _digests(trained_run)
    copy = tmp_path / "copy.safetensors"
    shutil.copy(ckpt.checkpoint_path(trained_run / "checkpoints", 64), copy)
    code, _ = _cli([*CLI_SMALL, "--timesteps", "192", "--checkpoint-every", "64", "--resume", str(copy),
                    "--logdir", str(tmp_path / "new")], capsys)
    assert code == 0
    assert _digests(trained_run) == original  # not one byte of the original run changed
    new_run = tmp_path / "new" / "CartPole-v1" / "ppo" / "seed0"
    assert [s for s, _ in ckpt.list_checkpoints(new_run / "checkpoints")] == [128, 192]
    assert (new_run / "model.safetensors").is_file() and copy.is_file()


def test_resuming_after_the_logdir_moved_writes_in_the_new_place_only(tmp_path):
    agent = _agent(tensorboard_log=str(tmp_path / "old"))
    agent.learn(64, checkpoint_every=32)
    agent.logger.close()
    os.rename(tmp_path / "old", tmp_path / "moved")
    run = tmp_path / "moved" / "CartPole-v1" / "ppo" / "seed0"
    resumed = PPO.load(ckpt.checkpoint_path(run / "checkpoints", 64), env="CartPole-v1")
    resumed.learn(64, reset_num_timesteps=False, checkpoint_every=32, keep_checkpoints=2)
    resumed.logger.close()
    assert not (tmp_path / "old").exists()
    # kept: 32 (written before the resume), 96 and 128; the 64 it resumed from is its own to prune
    assert resumed._run_dir == str(run) and [s for s, _ in ckpt.list_checkpoints(run / "checkpoints")] == [32, 96, 128]


def test_a_checkpoint_naming_another_folder_neither_writes_nor_deletes_there(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    for step in (32, 64, 96):
        (victim / os.path.basename(ckpt.checkpoint_path(victim, step))).write_bytes(b"someone else's")
    agent = _agent()
    agent.learn(64, checkpoint_every=32, checkpoint_dir=tmp_path / "mine")
    edited = _edit_description(ckpt.checkpoint_path(tmp_path / "mine", 64), tmp_path / "mine" / "edited.safetensors",
                               lambda d: d["checkpoint"].update(run_dir=str(victim), checkpoint_dir=str(victim),
                                                                tensorboard_log=str(victim)))
    resumed = PPO.load(edited, env="CartPole-v1")
    resumed.learn(96, reset_num_timesteps=False, keep_checkpoints=1)
    assert sorted(os.listdir(victim)) == sorted(os.path.basename(ckpt.checkpoint_path(victim, s)) for s in (32, 64, 96))
    assert os.path.dirname(resumed._checkpoint_dir) == str(tmp_path) and resumed._run_dir is None


def test_pruning_removes_only_the_checkpoints_this_run_wrote(tmp_path):
    foreign = [ckpt.checkpoint_path(tmp_path, s) for s in (1, 10_000)]
    for path in foreign:
        open(path, "wb").write(b"another run's")
    _agent().learn(5 * 32, checkpoint_every=32, checkpoint_dir=tmp_path, keep_checkpoints=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [1, 128, 160, 10_000]


# ----------------------------------------------------------------------------- 2. two writers
def _hold_lock(directory) -> subprocess.Popen:
    """Another process that holds `directory` as a writer does (and keeps a temporary file there)."""
    code = textwrap.dedent(f"""
        import sys, time
        from rlgeom.persistence.outputs import lock_directory
        held = lock_directory({str(directory)!r}, "checkpoint directory")
        open({str(directory)!r} + "/checkpoint_000000000064.safetensors.tmp1-abcd", "wb").write(b"half")
        print("locked", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_to_a_checkpoint_directory_gets_a_clear_error(tmp_path, capsys):
    holder = _hold_lock(tmp_path)
    try:
        with pytest.raises(DirectoryInUseError, match="in use by another process"):
            _agent().learn(64, checkpoint_every=32, checkpoint_dir=tmp_path)
        code, err = _cli([*CLI_SMALL, "--timesteps", "64", "--checkpoint-every", "32", "--checkpoint-dir", str(tmp_path),
                          "--logdir", str(tmp_path / "logs")], capsys)
        assert code == 2 and "in use by another process" in err
        assert os.path.exists(tmp_path / "checkpoint_000000000064.safetensors.tmp1-abcd")  # the other's temp: untouched
        assert ckpt.list_checkpoints(tmp_path) == []
    finally:
        holder.kill()
        holder.wait()
    _agent().learn(64, checkpoint_every=32, checkpoint_dir=tmp_path)  # once it is gone its leftovers are cleared
    assert not any(".tmp" in n for n in os.listdir(tmp_path))


def test_runs_started_at_the_same_moment_each_get_their_own_run_directory(tmp_path):
    code = textwrap.dedent(f"""
        import time
        from rlgeom.persistence.logger import run_directory
        while time.time() < float(__import__("sys").argv[1]):
            pass
        print(run_directory({str(tmp_path)!r}, "CartPole-v1", "ppo", 0), flush=True)  # claimed and locked
        time.sleep(2)
    """)
    start = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", code, str(start)], env=ENV, stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    dirs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs) and len(set(dirs)) == 4, dirs


def test_resuming_a_run_another_process_is_writing_is_refused(trained_run, tmp_path):
    holder = _hold_lock(trained_run)
    try:
        resumed = PPO.load(ckpt.checkpoint_path(trained_run / "checkpoints", 64), env="CartPole-v1")
        with pytest.raises(DirectoryInUseError, match="run directory .* in use by another process"):
            resumed.learn(32, reset_num_timesteps=False)
    finally:
        holder.kill()
        holder.wait()
    os.remove(trained_run / "checkpoint_000000000064.safetensors.tmp1-abcd")


def test_temporary_names_are_unique_per_process_and_call(tmp_path):
    names = {outputs.temp_name(str(tmp_path / "m.safetensors")) for _ in range(100)}
    assert len(names) == 100 and all(f".tmp{os.getpid()}-" in n for n in names)


# ----------------------------------------------------------------------------- 3. full or read-only disk
def _fail_fsync_after(monkeypatch, n_ok: int, err=errno.ENOSPC):
    """os.fsync as a full disk does it: the first `n_ok` writes succeed, then every one fails."""
    calls = {"n": 0}
    real = os.fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > n_ok:
            raise OSError(err, os.strerror(err))
        real(fd)

    monkeypatch.setattr(outputs.os, "fsync", fsync)


def test_disk_full_keeps_earlier_checkpoints_removes_the_partial_file_and_resume_works(tmp_path, monkeypatch):
    agent = _agent()
    _fail_fsync_after(monkeypatch, 2)
    with pytest.raises(DiskFullError, match="no space left to write .*checkpoint_000000000096.*--resume"):
        agent.learn(128, checkpoint_every=32, checkpoint_dir=tmp_path)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [32, 64]
    assert not any(".tmp" in n for n in os.listdir(tmp_path))
    monkeypatch.undo()  # space is free again
    resumed = PPO.load(ckpt.latest_checkpoint(tmp_path), env="CartPole-v1")
    resumed.learn(128 - 64, reset_num_timesteps=False, checkpoint_every=32)
    assert resumed.num_timesteps == 128 and ckpt.list_checkpoints(tmp_path)[-1][0] == 128


def test_cli_on_a_full_disk_exits_1_with_a_clear_error(tmp_path, monkeypatch, capsys):
    _fail_fsync_after(monkeypatch, 1)
    code, err = _cli([*CLI_SMALL, "--timesteps", "96", "--checkpoint-every", "32", "--logdir", str(tmp_path)], capsys)
    assert code == 1 and "no space left to write" in err and "every file written before is kept" in err


def test_a_stale_partial_temporary_never_blocks_resume(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    stale = ckpt.checkpoint_path(run / "checkpoints", 192) + ".tmp4242-deadbeef"
    open(stale, "wb").write(b"\0" * 1000)  # as a writer killed by ENOSPC or SIGKILL leaves it
    assert ckpt.latest_checkpoint(run).endswith("checkpoint_000000000128.safetensors")
    resumed = PPO.load(ckpt.latest_checkpoint(run), env="CartPole-v1")
    resumed.learn(32, reset_num_timesteps=False, checkpoint_every=32)
    resumed.logger.close()
    assert not os.path.exists(stale) and ckpt.list_checkpoints(run / "checkpoints")[-1][0] == 160


@pytest.mark.parametrize("flag", ["--logdir", "--checkpoint-dir", "--save"])
@pytest.mark.parametrize("where", ["inside-a-file", "under-dev-null"])
def test_cli_refuses_an_output_path_that_cannot_be_written_before_training(flag, where, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    bad = str(tmp_path / "afile" / "out") if where == "inside-a-file" else "/dev/null/out"
    extra = ["--logdir", str(tmp_path / "logs")] if flag != "--logdir" else []
    start = time.perf_counter()
    code, err = _cli([*CLI_SMALL, "--timesteps", "100000", flag, bad, *extra], capsys)
    assert code == 2 and "cannot be written: a part of the path is a file, not a folder" in err
    assert time.perf_counter() - start < 10  # refused before 100k steps of training


def _mount_tmpfs(path, options: str) -> bool:
    path.mkdir(exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode == 0


def test_real_read_only_and_tiny_file_systems(tmp_path, capsys):
    """A real read-only mount (exit 2 before training) and a real 300 kB tmpfs (ENOSPC mid-run: exit 1,
    earlier checkpoints kept, no partial file). Skipped where the machine does not let us mount."""
    ro, tiny = tmp_path / "ro", tmp_path / "tiny"
    if not (_mount_tmpfs(ro, "size=1m,ro") and _mount_tmpfs(tiny, "size=300k")):
        pytest.skip("cannot mount a tmpfs here")
    try:
        code, err = _cli([*CLI_SMALL, "--timesteps", "64", "--logdir", str(ro)], capsys)
        assert code == 2 and "read-only" in err
        code, err = _cli([*CLI_SMALL, "--timesteps", "6400", "--checkpoint-every", "32", "--keep-checkpoints", "1000",
                          "--logdir", str(tmp_path / "logs"), "--checkpoint-dir", str(tiny)], capsys)
        assert code == 1 and "no space left to write" in err
        kept = ckpt.list_checkpoints(tiny)
        assert kept and not any(".tmp" in n for n in os.listdir(tiny))
        PPO.load(kept[-1][1])  # every checkpoint left is complete
    finally:
        subprocess.run(["umount", str(ro)])
        subprocess.run(["umount", str(tiny)])


def test_a_save_path_that_fails_after_training_falls_back_to_the_run_directory(tmp_path, monkeypatch, capsys):
    target = tmp_path / "models" / "final"
    real = outputs.write_atomically

    def write(path, data):
        if path.startswith(str(target)):  # the disk filled up during training
            raise outputs.write_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        return real(path, data)

    monkeypatch.setattr("rlgeom.persistence.serialization.write_atomically", write)
    code, err = _cli([*CLI_SMALL, "--timesteps", "64", "--logdir", str(tmp_path / "logs"), "--save", str(target)], capsys)
    fallback = tmp_path / "logs" / "CartPole-v1" / "ppo" / "seed0" / "model.safetensors"
    assert code == 0 and f"the model was saved to {fallback} instead" in err
    assert PPO.load(fallback).num_timesteps == 64


def _edit_description(src, dst, edit) -> str:
    """The model file `src` with its JSON description edited (as a user with a text editor would)."""
    raw = open(src, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    description = json.loads(header["__metadata__"]["description"])
    edit(description)
    header["__metadata__"]["description"] = json.dumps(description)
    return _write_raw(dst, json.dumps(header).encode(), raw[8 + n:])


def _write_raw(dst, header: bytes, body: bytes) -> str:
    with open(dst, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header + body)
    return str(dst)
