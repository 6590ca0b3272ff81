"""Fault injection (issue 30): paths into another run's folders (a checkpoint folder given twice, a symlinked
run directory, a log folder, tensorboard_log or --save inside another run, hard-linked copies), two grids on
one log directory, Ctrl-C on a grid.

A checkpoint folder belongs to one run; a run writes only into folders it created or that hold its own files,
symlinks resolved. Each test asserts that the other run's files are byte-identical (SHA-256) and that the
refusal is a clear error (CLI: exit 2, no traceback). The table is experiments/RESULTS_faults.md, "Issue 30"."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from agents import PPO
from rlgeom.persistence import checkpoint as ckpt
from rlgeom.persistence.outputs import DirectoryInUseError, OutputError
from rlgeom.tools.train import main as train_main
from test_faults import CLI_SMALL, ENV, REPO, _cli, _digests  # tests/ is on sys.path (pytest prepends it)

SMALL = dict(n_steps=32, batch_size=32, n_epochs=1)


@pytest.fixture(scope="module")
def other_run(tmp_path_factory):
    """Another user's finished CLI run: <logdir>/CartPole-v1/ppo/seed0 with checkpoints at 64 and 128 and its model."""
    logdir = tmp_path_factory.mktemp("other")
    assert train_main([*CLI_SMALL, "--timesteps", "128", "--checkpoint-every", "64", "--logdir", str(logdir)]) == 0
    return logdir / "CartPole-v1" / "ppo" / "seed0"


# ----------------------------------------------------------------------------- item 1: a checkpoint folder twice
def test_cli_checkpoint_dir_naming_another_runs_checkpoints_is_refused_and_leaves_them_intact(other_run, tmp_path, capsys):
    before = _digests(other_run)
    code, err = _cli([*CLI_SMALL, "--seed", "1", "--timesteps", "128", "--checkpoint-every", "64", "--logdir",
                      str(tmp_path), "--checkpoint-dir", str(other_run / "checkpoints")], capsys)
    assert code == 2 and f"lies inside the run directory {other_run} of another run (ppo on CartPole-v1, seed 0)" in err
    assert _digests(other_run) == before
    assert not list(tmp_path.rglob("*tfevents*"))  # refused before the new run made anything


def test_api_checkpoint_dir_used_by_two_runs_keeps_the_first_runs_checkpoints(tmp_path, capsys):
    shared = tmp_path / "ckpts"
    PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu", **SMALL).learn(96, checkpoint_every=32, checkpoint_dir=shared)
    before = _digests(shared)
    second = PPO("MlpPolicy", "CartPole-v1", seed=1, device="cpu", **SMALL)
    with pytest.raises(OutputError, match=r"holds the checkpoints of another run \(ppo on CartPole-v1, seed 0, at step 96\)"):
        second.learn(96, checkpoint_every=32, checkpoint_dir=shared)
    assert _digests(shared) == before
    # the CLI says the same, exit 2, for a plain folder of another run's checkpoints
    code, err = _cli([*CLI_SMALL, "--seed", "1", "--timesteps", "64", "--checkpoint-every", "32", "--logdir",
                      str(tmp_path / "logs"), "--checkpoint-dir", str(shared)], capsys)
    assert code == 2 and "holds the checkpoints of another run" in err and _digests(shared) == before


def test_a_new_run_of_the_same_agent_does_not_overwrite_its_previous_runs_checkpoints(tmp_path):
    agent = PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu", **SMALL)
    agent.learn(64, checkpoint_every=32, checkpoint_dir=tmp_path)
    before = _digests(tmp_path)
    agent.learn(32, reset_num_timesteps=False, checkpoint_every=32, checkpoint_dir=tmp_path)  # the same run goes on
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [32, 64, 96]
    with pytest.raises(OutputError, match="holds the checkpoints of another run"):  # a new run would rewrite step 32
        agent.learn(64, checkpoint_every=32, checkpoint_dir=tmp_path)
    assert {k: v for k, v in _digests(tmp_path).items() if k in before} == before


# ----------------------------------------------------------------------------- item 2: a symlinked run directory
def test_resume_latest_through_a_symlinked_run_directory_leaves_the_linked_run_untouched(other_run, tmp_path, capsys):
    before = _digests(other_run)
    link = tmp_path / "L" / "CartPole-v1" / "ppo" / "seed0"
    link.parent.mkdir(parents=True)
    os.symlink(other_run, link)
    code, err = _cli([*CLI_SMALL, "--timesteps", "192", "--checkpoint-every", "64", "--resume", "latest",
                      "--logdir", str(tmp_path / "L")], capsys)
    assert code == 0, err
    assert _digests(other_run) == before  # A's model, checkpoints, events and run.json: not one byte changed
    new_run = tmp_path / "L" / "CartPole-v1" / "ppo" / "seed0_2"  # the resumed run continues in L, beside the link
    assert [s for s, _ in ckpt.list_checkpoints(new_run / "checkpoints")] == [192]
    assert PPO.load(new_run / "model.safetensors").num_timesteps == 192


# ----------------------------------------------------------------------------- neighbours: other paths in
def test_a_logdir_or_tensorboard_log_inside_another_run_is_refused(other_run, tmp_path, capsys):
    before = _digests(other_run)
    code, err = _cli([*CLI_SMALL, "--timesteps", "64", "--logdir", str(other_run / "nested")], capsys)
    assert code == 2 and f"lies inside the run directory {other_run} of another run" in err
    with pytest.raises(OutputError, match="lies inside the run directory"):
        PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu", tensorboard_log=str(other_run), **SMALL).learn(32)
    code, err = _cli(["--algo", "ppo,vpg", "--env", "CartPole-v1", "--timesteps", "64", "--logdir", str(other_run)],
                     capsys)  # a grid: refused before any run starts
    assert code == 2 and "lies inside the run directory" in err
    assert _digests(other_run) == before


def test_only_a_run_json_that_names_a_run_marks_a_run_directory(tmp_path):
    from rlgeom.persistence.outputs import check_outside_other_runs, enclosing_run_dir

    (tmp_path / "run.json").write_text('{"name": "another tool\'s file"}')
    check_outside_other_runs(tmp_path / "logs", "log directory")  # not a run: no error
    (tmp_path / "run.json").write_text('{"algo": "ppo", "env_id": "CartPole-v1", "seed": 3}')
    link = tmp_path.parent / f"{tmp_path.name}-link"
    os.symlink(tmp_path, link)
    assert enclosing_run_dir(link / "a" / "b") == str(tmp_path)  # symlinks resolved
    with pytest.raises(OutputError, match=r"of another run \(ppo on CartPole-v1, seed 3\)"):
        check_outside_other_runs(link / "logs", "log directory")


def test_save_onto_another_runs_model_is_refused_before_training(other_run, tmp_path, capsys):
    before = _digests(other_run)
    start = time.perf_counter()
    code, err = _cli([*CLI_SMALL, "--timesteps", "100000", "--logdir", str(tmp_path), "--save",
                      str(other_run / "model")], capsys)
    assert code == 2 and "model file (--save)" in err and "of another run (ppo on CartPole-v1, seed 0)" in err
    assert time.perf_counter() - start < 10 and _digests(other_run) == before


def test_saving_into_a_live_runs_folder_is_refused(tmp_path):
    """The API: a folder another process is writing (it holds the run's lock) is not saved into."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from rlgeom.persistence.outputs import lock_directory
        held = lock_directory({str(tmp_path)!r}, "run directory")
        print("locked", flush=True)
        time.sleep(60)
    """)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DirectoryInUseError, match="another process is writing"):
            PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu", **SMALL).save(tmp_path / "model")
        assert not (tmp_path / "model.safetensors").exists()
    finally:
        holder.kill()
        holder.wait()


def test_resuming_a_hard_linked_copy_of_a_run_leaves_the_original_untouched(other_run, tmp_path, capsys):
    """`cp -al A B` then resuming B in place: every write is a new file renamed into place (run.json included),
    never a write through a link into A's inode."""
    before = _digests(other_run)
    copy = tmp_path / "B" / "CartPole-v1" / "ppo" / "seed0"
    copy.parent.mkdir(parents=True)
    assert subprocess.run(["cp", "-al", str(other_run), str(copy)]).returncode == 0
    os.remove(copy / ".rlgeom.lock")  # the copy's own lock file, not A's
    code, err = _cli([*CLI_SMALL, "--timesteps", "192", "--checkpoint-every", "64", "--resume", str(copy)], capsys)
    assert code == 0, err
    assert _digests(other_run) == before
    assert ckpt.list_checkpoints(copy / "checkpoints")[-1][0] == 192


# ----------------------------------------------------------------------------- items 12-13: grids
GRID = [sys.executable, "-m", "rlgeom.train", "--algo", "ppo,vpg", "--env", "CartPole-v1", "--workers", "2",
        "--eval-episodes", "1", "--hp", "n_steps=32"]


def _start_grid(argv, logdir) -> subprocess.Popen:
    return subprocess.Popen([*argv, "--logdir", str(logdir)], env=ENV, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_for_events(logdir, n: int, proc, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while len(list(logdir.rglob("*tfevents*"))) < n:
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else "slow"
        time.sleep(0.2)


def _stop(proc) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_ctrl_c_stops_a_grid_a_second_grid_leaves_its_live_runs_alone_and_a_rerun_finishes(tmp_path, capsys):
    """Two grids started at once (each pays its interpreter and worker starts; two cores):
    - `group` (2 runs): a second grid on the same --logdir finds both runs in use and moves nothing; Ctrl-C
      (SIGINT to the grid's process group) then stops it within seconds, with no done.json written;
    - `parent` (4 runs, two workers: two wait in the queue): SIGINT to the grid's process alone stops it and
      launches nothing more; a rerun of one interrupted run sets it aside, runs it again and finishes it."""
    group_dir, parent_dir = tmp_path / "group", tmp_path / "parent"
    group = _start_grid([*GRID, "--timesteps", "10000000"], group_dir)
    parent = _start_grid([*GRID, "--seeds", "0,1", "--timesteps", "10000000"], parent_dir)
    try:
        _wait_for_events(group_dir, 2, group)
        # the second grid's own process is not what is tested: in this one (it starts no worker)
        code, out, err = (train_main([*GRID[3:], "--timesteps", "10000000", "--logdir", str(group_dir)]),
                          *capsys.readouterr())
        assert code == 1 and out.count("in use by another process") >= 2, out
        assert "Traceback" not in out + err
        assert not [p for p in group_dir.rglob("*") if ".incomplete-" in p.name]  # nothing moved aside
        assert group.poll() is None  # the first grid trains on
        start = time.perf_counter()
        os.killpg(group.pid, signal.SIGINT)
        out, _ = group.communicate(timeout=30)
        assert group.returncode == 130 and "interrupted" in out and time.perf_counter() - start < 20

        _wait_for_events(parent_dir, 2, parent)
        start = time.perf_counter()
        parent.send_signal(signal.SIGINT)  # the parent only, not its workers
        out, _ = parent.communicate(timeout=30)
        assert parent.returncode == 130 and time.perf_counter() - start < 20, out
    finally:
        _stop(group)
        _stop(parent)
    assert not list(group_dir.rglob("done.json"))
    for algo in ("ppo", "vpg"):  # still where they were, unfinished: the next run of the grid starts them again
        assert list((group_dir / "CartPole-v1" / algo / "seed0").glob("*tfevents*"))
    assert not list(parent_dir.rglob("done.json")) and len(list(parent_dir.rglob("*tfevents*"))) == 2  # none after
    # one interrupted run, rerun (the whole grid's rerun does the same for each): set aside, run again, finished;
    # the grid's process here, its worker a real process
    code, out, err = (train_main([*GRID[3:4], "ppo", *GRID[5:], "--seeds", "0", "--timesteps", "64", "--logdir",
                                  str(parent_dir)]), *capsys.readouterr())
    assert code == 0, out + err
    assert "unfinished run directory moved aside" in out
    assert (parent_dir / "CartPole-v1" / "ppo" / "seed0" / "done.json").is_file()


# ----------------------------------------------------------------------------- neighbours: other signals
@pytest.mark.slow
def test_sigterm_or_sighup_stops_a_run_with_its_status_and_it_resumes(tmp_path, capsys):
    """One run per signal, both started at once (each pays its own interpreter start; two cores)."""
    signals = (signal.SIGTERM, signal.SIGHUP)
    runs = {signum: subprocess.Popen([sys.executable, "-m", "rlgeom.train", *CLI_SMALL, "--timesteps", "10000000",
                                      "--checkpoint-every", "64", "--logdir", str(tmp_path / signum.name)], env=ENV,
                                     cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for signum in signals}
    checkpoints = {signum: tmp_path / signum.name / "CartPole-v1" / "ppo" / "seed0" / "checkpoints" for signum in signals}
    errors, stop_s = {}, {}
    try:
        deadline = time.time() + 120
        for signum, run in runs.items():
            while not ckpt.list_checkpoints(checkpoints[signum]):
                assert run.poll() is None and time.time() < deadline
                time.sleep(0.1)
            start = time.perf_counter()
            run.send_signal(signum)
            errors[signum] = run.communicate(timeout=30)[1]
            stop_s[signum] = time.perf_counter() - start
    finally:
        for run in runs.values():
            if run.poll() is None:
                run.kill()
                run.wait()
    for signum, run in runs.items():
        err = errors[signum]
        assert run.returncode == 128 + signum and f"interrupted by {signum.name}" in err, err
        assert "Traceback" not in err and stop_s[signum] < 10
        assert not [n for n in os.listdir(checkpoints[signum]) if ".tmp" in n]  # no temporary left, even mid-write
        last = ckpt.list_checkpoints(checkpoints[signum])[-1][0]
        code, err = _cli([*CLI_SMALL, "--timesteps", str(last + 32), "--resume", "latest", "--logdir",
                          str(tmp_path / signum.name)], capsys)
        assert code == 0 and PPO.load(checkpoints[signum].parent / "model.safetensors").num_timesteps == last + 32


def test_continuing_a_run_never_follows_a_link_to_another_runs_folder(tmp_path):
    """learn(reset_num_timesteps=False) after load continues the latest run folder, as SB3 does, but not one
    that is a link out of the log directory (a resumed run through a symlink must leave the linked run alone)."""
    from rlgeom.persistence.logger import latest_run_directory, sb3_run_directory

    elsewhere = tmp_path / "A"
    elsewhere.mkdir()
    root = tmp_path / "logs"
    (root / "CartPole-v1" / "ppo").mkdir(parents=True)
    os.symlink(elsewhere, root / "CartPole-v1" / "ppo" / "seed0")
    assert latest_run_directory(str(root), "CartPole-v1", "ppo", 0) is None
    os.symlink(elsewhere, root / "PPO_1")
    assert sb3_run_directory(str(root), "PPO", new_run=False) == str(root / "PPO_2")
    (root / "PPO_2").mkdir()  # a real folder of this log directory is continued
    assert sb3_run_directory(str(root), "PPO", new_run=False) == str(root / "PPO_2")
    assert latest_run_directory(str(root), "CartPole-v1", "ppo", 1) is None
